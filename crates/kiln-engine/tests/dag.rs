//! The build loop over random DAGs: every build terminates, every job ends in
//! a terminal state, and each state is the one GitHub's runner would give.
//!
//! Jobs run on a runner that only decides success or failure, so thousands
//! of graphs run in a few seconds; the semantics under test are the loop's.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_engine::runner::{Emitter, JobOutcome, JobRequest, JobRunner};
use kiln_engine::{run_build, BuildOptions};
use kiln_workflow::JobResult;
use proptest::prelude::*;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cond {
    None,
    False,
    Always,
    Failure,
    Success,
}

#[derive(Debug, Clone)]
struct JobGen {
    needs: Vec<usize>,
    cond: Cond,
    fails: bool,
    continue_on_error: bool,
}

/// A runner that fails the jobs it is told to, and remembers the `needs`
/// context each job saw.
#[derive(Debug, Default)]
struct Scripted {
    failing: HashSet<String>,
    seen: Mutex<BTreeMap<String, Value>>,
}

impl JobRunner for Scripted {
    async fn run_job(&self, req: JobRequest) -> JobOutcome {
        let key = req.plan.jobs[req.job].key.clone();
        self.seen.lock().unwrap().insert(key.clone(), req.contexts.needs.clone());
        tokio::task::yield_now().await;
        JobOutcome::new(if self.failing.contains(&key) { JobResult::Failure } else { JobResult::Success })
    }
}

fn workflow(jobs: &[JobGen]) -> String {
    let mut y = String::from("name: dag\non: push\njobs:\n");
    for (i, j) in jobs.iter().enumerate() {
        y.push_str(&format!("  j{i}:\n    runs-on: ubuntu-latest\n"));
        if !j.needs.is_empty() {
            let needs: Vec<String> = j.needs.iter().map(|d| format!("j{d}")).collect();
            y.push_str(&format!("    needs: [{}]\n", needs.join(", ")));
        }
        match j.cond {
            Cond::None => {}
            Cond::False => y.push_str("    if: false\n"),
            Cond::Always => y.push_str("    if: always()\n"),
            Cond::Failure => y.push_str("    if: failure()\n"),
            Cond::Success => y.push_str("    if: ${{ success() }}\n"),
        }
        if j.continue_on_error {
            y.push_str("    continue-on-error: true\n");
        }
        y.push_str("    steps:\n      - run: 'true'\n");
    }
    y
}

/// What GitHub's runner does, job by job in file order (every need of a job
/// comes before it): `(status word, result dependents see)`.
fn expected(jobs: &[JobGen]) -> Vec<(&'static str, JobResult)> {
    let mut out: Vec<(&'static str, JobResult)> = Vec::new();
    // An ancestor failed (and did not continue on error): `failure()`.
    let mut failed_lineage = vec![false; jobs.len()];
    for (i, j) in jobs.iter().enumerate() {
        let all_ok = j.needs.iter().all(|&d| out[d].1 == JobResult::Success);
        let lineage = j.needs.iter().any(|&d| failed_lineage[d]);
        let runs = match j.cond {
            Cond::None | Cond::Success => all_ok,
            Cond::False => false,
            Cond::Always => true,
            Cond::Failure => lineage,
        };
        failed_lineage[i] = lineage;
        out.push(if !runs {
            ("skipped", JobResult::Skipped)
        } else if j.fails && j.continue_on_error {
            ("failed", JobResult::Success)
        } else if j.fails {
            failed_lineage[i] = true;
            ("failed", JobResult::Failure)
        } else {
            ("succeeded", JobResult::Success)
        });
    }
    out
}

fn dag() -> impl Strategy<Value = Vec<JobGen>> {
    let cond = prop_oneof![
        4 => Just(Cond::None),
        1 => Just(Cond::False),
        1 => Just(Cond::Always),
        1 => Just(Cond::Failure),
        1 => Just(Cond::Success),
    ];
    let job = (
        proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
        cond,
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.2),
    );
    proptest::collection::vec(job, 1..12).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (needs, cond, fails, continue_on_error))| {
                let mut needs: Vec<usize> =
                    if i == 0 { Vec::new() } else { needs.iter().map(|n| n.index(i)).collect() };
                needs.sort_unstable();
                needs.dedup();
                JobGen { needs, cond, fails, continue_on_error }
            })
            .collect()
    })
}

fn run(jobs: &[JobGen], max_parallel: usize) -> (kiln_engine::BuildSummary, Arc<Scripted>) {
    let text = workflow(jobs);
    let plan = Arc::new(kiln_workflow::load("dag.yml", &text).expect("generated workflow is valid"));
    let runner = Arc::new(Scripted {
        failing: jobs.iter().enumerate().filter(|(_, j)| j.fails).map(|(i, _)| format!("j{i}")).collect(),
        seen: Default::default(),
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_tx, cancel) = tokio::sync::watch::channel(false);
    let opts = BuildOptions::new("b".into(), max_parallel, serde_json::json!({}), serde_json::json!({}));
    let summary = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(20),
            run_build(plan, runner.clone(), opts, Emitter::new("b", None, None), cancel),
        )
        .await
        .expect("the build never finished: a job was left waiting")
    });
    (summary, runner)
}

fn check(jobs: &[JobGen], max_parallel: usize) -> Result<(), TestCaseError> {
    let (summary, runner) = run(jobs, max_parallel);
    let want = expected(jobs);
    prop_assert_eq!(summary.jobs.len(), jobs.len(), "every job ends in a terminal state");
    for (i, (status, _)) in want.iter().enumerate() {
        let got = summary.jobs.iter().find(|s| s.id == format!("j{i}")).expect("job in summary");
        prop_assert_eq!(&got.status, status, "job j{} of\n{}", i, workflow(jobs));
    }
    // Every job that ran saw `needs.<job>.result` as GitHub sets it.
    let seen = runner.seen.lock().unwrap();
    for (key, needs) in seen.iter() {
        let i: usize = key[1..].parse().unwrap();
        for &d in &jobs[i].needs {
            let result = needs[format!("j{d}")]["result"].as_str().unwrap_or("");
            prop_assert_eq!(result, want[d].1.as_str(), "needs.j{}.result in j{}", d, i);
        }
    }
    let any_failed = want.iter().any(|(_, r)| *r == JobResult::Failure);
    prop_assert_eq!(&summary.status, if any_failed { "failed" } else { "succeeded" });
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn every_random_dag_finishes_with_githubs_states(jobs in dag(), max_parallel in 1usize..4) {
        check(&jobs, max_parallel)?;
    }
}

fn chain(first: Cond, first_fails: bool) -> Vec<JobGen> {
    vec![
        JobGen { needs: vec![], cond: first, fails: first_fails, continue_on_error: false },
        JobGen { needs: vec![0], cond: Cond::None, fails: false, continue_on_error: false },
        JobGen { needs: vec![1], cond: Cond::None, fails: false, continue_on_error: false },
    ]
}

#[test]
fn bug_skipped_chain_after_a_failure_never_finished() {
    check(&chain(Cond::None, true), 1).unwrap();
}

#[test]
fn bug_skipped_chain_after_if_false_never_finished() {
    check(&chain(Cond::False, false), 2).unwrap();
}

#[test]
fn always_jobs_run_after_a_skipped_chain() {
    let mut jobs = chain(Cond::None, true);
    jobs.push(JobGen { needs: vec![2], cond: Cond::Always, fails: false, continue_on_error: false });
    let (summary, _) = run(&jobs, 1);
    let statuses: Vec<&str> = summary.jobs.iter().map(|j| j.status.as_str()).collect();
    assert_eq!(statuses, ["failed", "skipped", "skipped", "succeeded"]);
}
