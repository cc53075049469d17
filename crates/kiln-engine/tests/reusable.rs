//! Called workflows in the build loop, on a runner that only decides
//! success or failure: the calling job ends with what it called, as GitHub
//! sets `needs.<caller>.result` and its outputs; called jobs see `inputs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_engine::runner::{Emitter, JobOutcome, JobRequest, JobRunner};
use kiln_engine::{run_build, BuildOptions, BuildSummary};
use kiln_workflow::JobResult;
use serde_json::{json, Map, Value};

/// What one job saw when it ran.
#[derive(Debug, Clone)]
struct Seen {
    needs: Value,
    inputs: Value,
    env: Value,
    /// `Plan::workflow` of the request: the workflow the job is in.
    workflow: Option<String>,
}

/// Fails the jobs it is told to, gives the outputs it is told to, and
/// remembers what each job (by id) saw.
#[derive(Debug, Default)]
struct Scripted {
    failing: HashSet<String>,
    outputs: HashMap<String, Map<String, Value>>,
    seen: Mutex<BTreeMap<String, Seen>>,
}

impl JobRunner for Scripted {
    async fn run_job(&self, req: JobRequest) -> JobOutcome {
        let id = req.plan.jobs[req.job].id.clone();
        let seen = Seen {
            needs: req.contexts.needs.clone(),
            inputs: req.contexts.inputs.clone(),
            env: req.contexts.env.clone(),
            workflow: req.plan.workflow.name.clone(),
        };
        self.seen.lock().unwrap().insert(id.clone(), seen);
        tokio::task::yield_now().await;
        let mut outcome =
            JobOutcome::new(if self.failing.contains(&id) { JobResult::Failure } else { JobResult::Success });
        outcome.outputs = self.outputs.get(&id).cloned().unwrap_or_default();
        outcome
    }
}

fn run(files: &[(&str, &str)], src: &str, runner: Scripted, github: Value) -> (BuildSummary, Arc<Scripted>) {
    let files: HashMap<String, String> = files.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect();
    let loader = |path: &str| files.get(path).cloned().ok_or_else(|| format!("no `{path}`"));
    let plan = Arc::new(kiln_workflow::load_with("ci.yml", src, &loader).unwrap_or_else(|d| panic!("{d}")));
    let runner = Arc::new(runner);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_tx, cancel) = tokio::sync::watch::channel(false);
    let opts = BuildOptions::new("b".into(), 2, github, json!({}));
    let summary = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(20),
            run_build(plan, runner.clone(), opts, Emitter::new("b", None, None), cancel),
        )
        .await
        .expect("the build never finished")
    });
    (summary, runner)
}

fn status<'a>(summary: &'a BuildSummary, id: &str) -> &'a str {
    let job = summary.jobs.iter().find(|j| j.id == id);
    job.map(|j| j.status.as_str()).unwrap_or_else(|| panic!("no job `{id}` in {summary:?}"))
}

fn seen(runner: &Scripted, id: &str) -> Seen {
    runner.seen.lock().unwrap().get(id).cloned().unwrap_or_else(|| panic!("job `{id}` did not run"))
}

fn ran(runner: &Scripted, id: &str) -> bool {
    runner.seen.lock().unwrap().contains_key(id)
}

fn outputs(pairs: &[(&str, &[(&str, &str)])]) -> HashMap<String, Map<String, Value>> {
    pairs
        .iter()
        .map(|(id, kv)| (id.to_string(), kv.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()))
        .collect()
}

const BUILD: &str = r#"name: build-lib
on:
  workflow_call:
    inputs:
      target: {type: string, required: true}
      release: {type: boolean, default: false}
      jobs: {type: number, default: 2}
    outputs:
      artifact:
        value: ${{ jobs.compile.outputs.file }}
      verdict:
        value: ${{ jobs.test.result }}
env:
  TARGET: for-${{ inputs.target }}
jobs:
  compile:
    outputs:
      file: ${{ steps.c.outputs.file }}
    steps: [{run: x}]
  test:
    needs: compile
    steps: [{run: x}]
  docs:
    if: inputs.release
    steps: [{run: x}]
"#;

const CI: &str = r#"name: ci
on: push
env:
  TOP: top
jobs:
  prepare:
    outputs:
      target: ${{ steps.t.outputs.target }}
    steps: [{run: x}]
  build:
    needs: prepare
    uses: ./.github/workflows/build.yml
    with:
      target: ${{ needs.prepare.outputs.target }}
      jobs: 4
  publish:
    needs: build
    steps: [{run: x}]
  report:
    needs: build
    if: always()
    steps: [{run: x}]
"#;

#[test]
fn the_caller_ends_with_what_it_called() {
    let runner = Scripted {
        outputs: outputs(&[
            ("prepare", &[("target", "linux")]),
            ("build / compile", &[("file", "linux.bin")]),
        ]),
        ..Default::default()
    };
    let (summary, runner) = run(&[(".github/workflows/build.yml", BUILD)], CI, runner, json!({}));
    assert_eq!(summary.status, "succeeded");
    for id in ["prepare", "build", "build / compile", "build / test", "publish", "report"] {
        assert_eq!(status(&summary, id), "succeeded", "{id}");
    }
    // `docs` runs only on release: skipped, and the call still succeeds.
    assert_eq!(status(&summary, "build / docs"), "skipped");
    // The called jobs see the caller's `with:` (from its needs), defaults
    // and types, and their own workflow's env and name.
    let compile = seen(&runner, "build / compile");
    assert_eq!(compile.inputs, json!({"target": "linux", "release": false, "jobs": 4}));
    assert_eq!(compile.env, json!({"TARGET": "for-linux"}));
    assert_eq!(compile.workflow.as_deref(), Some("build-lib"));
    // ... and their own needs, not the caller's.
    assert_eq!(compile.needs, json!({}));
    assert_eq!(seen(&runner, "build / test").needs["compile"]["outputs"]["file"], "linux.bin");
    // A job after the caller sees its result and its declared outputs.
    let publish = seen(&runner, "publish");
    assert_eq!(publish.needs["build"]["result"], "success");
    assert_eq!(publish.needs["build"]["outputs"], json!({"artifact": "linux.bin", "verdict": "success"}));
    assert_eq!(publish.env, json!({"TOP": "top"}));
    assert_eq!(publish.workflow.as_deref(), Some("ci"));
    // The caller ran no job of its own.
    assert!(!ran(&runner, "build"));
    let caller = summary.jobs.iter().find(|j| j.id == "build").unwrap();
    assert!(caller.started_at.is_some() && caller.finished_at.is_some(), "{caller:?}");
}

#[test]
fn a_failed_called_job_fails_the_caller() {
    let runner = Scripted { failing: ["build / compile".to_string()].into(), ..Default::default() };
    let (summary, runner) = run(&[(".github/workflows/build.yml", BUILD)], CI, runner, json!({}));
    assert_eq!(summary.status, "failed");
    assert_eq!(status(&summary, "build / compile"), "failed");
    assert_eq!(status(&summary, "build / test"), "skipped");
    assert_eq!(status(&summary, "build"), "failed");
    assert_eq!(status(&summary, "publish"), "skipped");
    assert_eq!(status(&summary, "report"), "succeeded");
    let report = seen(&runner, "report");
    assert_eq!(report.needs["build"]["result"], "failure");
    assert_eq!(report.needs["build"]["outputs"]["verdict"], "skipped");
}

#[test]
fn a_caller_that_does_not_run_skips_what_it_calls() {
    // Its `if` is false.
    let src = CI.replace(
        "    needs: prepare\n    uses:",
        "    needs: prepare\n    if: github.ref == 'refs/heads/main'\n    uses:",
    );
    let (summary, runner) = run(
        &[(".github/workflows/build.yml", BUILD)],
        &src,
        Scripted::default(),
        json!({"ref": "refs/heads/dev"}),
    );
    for id in ["build", "build / compile", "build / test", "build / docs", "publish"] {
        assert_eq!(status(&summary, id), "skipped", "{id}");
    }
    assert_eq!(seen(&runner, "report").needs["build"]["result"], "skipped");
    assert_eq!(summary.status, "succeeded");
    // ... and true.
    let (summary, _) = run(
        &[(".github/workflows/build.yml", BUILD)],
        &src,
        Scripted::default(),
        json!({"ref": "refs/heads/main"}),
    );
    assert_eq!(status(&summary, "build / compile"), "succeeded");
    // A need failed: nothing is called; with `if: always()` the called jobs
    // run although the caller's need failed.
    let failing = || Scripted { failing: ["prepare".to_string()].into(), ..Default::default() };
    let (summary, _) = run(&[(".github/workflows/build.yml", BUILD)], CI, failing(), json!({}));
    assert_eq!(status(&summary, "build / compile"), "skipped");
    assert_eq!(status(&summary, "build"), "skipped");
    let src = CI.replace("    needs: prepare\n    uses:", "    needs: prepare\n    if: always()\n    uses:");
    let (summary, runner) = run(&[(".github/workflows/build.yml", BUILD)], &src, failing(), json!({}));
    assert_eq!(status(&summary, "build / compile"), "succeeded");
    assert_eq!(status(&summary, "build"), "succeeded");
    assert_eq!(seen(&runner, "build / compile").inputs["target"], "");
    // A `with:` value of the wrong type fails the caller when it is known.
    let src = CI.replace("jobs: 4", "jobs: ${{ needs.prepare.outputs.target }}");
    let runner = Scripted { outputs: outputs(&[("prepare", &[("target", "linux")])]), ..Default::default() };
    let (summary, _) = run(&[(".github/workflows/build.yml", BUILD)], &src, runner, json!({}));
    assert_eq!(status(&summary, "build"), "failed");
    assert_eq!(status(&summary, "build / compile"), "skipped");
    let reason =
        summary.jobs.iter().find(|j| j.id == "build").and_then(|j| j.reason.clone()).unwrap_or_default();
    assert!(reason.contains("input `jobs` of `.github/workflows/build.yml` is a number"), "{reason}");
    assert_eq!(summary.status, "failed");
}

#[test]
fn matrix_legs_and_nested_calls_pass_their_inputs() {
    let outer = r#"on:
  workflow_call:
    inputs:
      os: {type: string, required: true}
    outputs:
      artifact:
        value: ${{ jobs.inner.outputs.artifact }}
jobs:
  inner:
    uses: ./.github/workflows/build.yml
    with:
      target: ${{ inputs.os }}-inner
"#;
    let src = r#"on: push
jobs:
  each:
    strategy:
      matrix:
        os: [linux, mac]
    uses: ./.github/workflows/outer.yml
    with:
      os: ${{ matrix.os }}
  after:
    needs: each
    steps: [{run: x}]
"#;
    let runner = Scripted {
        outputs: outputs(&[("each (os: mac) / inner / compile", &[("file", "mac.bin")])]),
        ..Default::default()
    };
    let files = [(".github/workflows/build.yml", BUILD), (".github/workflows/outer.yml", outer)];
    let (summary, runner) = run(&files, src, runner, json!({}));
    assert_eq!(summary.status, "succeeded");
    assert_eq!(seen(&runner, "each (os: linux) / inner / compile").inputs["target"], "linux-inner");
    assert_eq!(seen(&runner, "each (os: mac) / inner / test").inputs["target"], "mac-inner");
    assert_eq!(status(&summary, "each (os: mac) / inner"), "succeeded");
    // The outputs of a matrix caller's legs merge, as a matrix job's do.
    assert_eq!(seen(&runner, "after").needs["each"]["outputs"]["artifact"], "mac.bin");
    // Display names are `caller / callee`.
    let names: Vec<&str> = summary.jobs.iter().map(|j| j.name.as_str()).collect();
    assert!(names.contains(&"each (os: mac) / inner / compile"), "{names:?}");
}

#[test]
fn fail_fast_stops_the_other_legs_of_a_matrix_caller() {
    let slow = r#"on: workflow_call
jobs:
  one:
    steps: [{run: x}]
  two:
    needs: one
    steps: [{run: x}]
"#;
    let src = r#"on: push
jobs:
  each:
    strategy:
      max-parallel: 1
      matrix:
        n: [1, 2]
    uses: ./.github/workflows/slow.yml
"#;
    let runner = Scripted { failing: ["each (n: 1) / one".to_string()].into(), ..Default::default() };
    let (summary, runner) = run(&[(".github/workflows/slow.yml", slow)], src, runner, json!({}));
    assert_eq!(status(&summary, "each (n: 1)"), "failed");
    assert_eq!(status(&summary, "each (n: 1) / two"), "skipped");
    // The second leg's jobs may have started (max-parallel counts called
    // jobs, not legs) but the leg ends cancelled or with them.
    let second = status(&summary, "each (n: 2)");
    assert!(
        second == "cancelled" || (second == "succeeded" && ran(&runner, "each (n: 2) / two")),
        "{second}"
    );
    assert_eq!(summary.status, "failed");
}
