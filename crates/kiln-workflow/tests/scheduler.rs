//! The Kahn scheduler, driven like the engine drives it.

use kiln_workflow::{load, JobResult, Scheduler};
use proptest::prelude::*;

/// A random DAG: job `j` may need any job before it. Jobs are put in random
/// groups with random limits.
/// Needs, group of each job, limit of each group.
type Graph = (Vec<Vec<usize>>, Vec<Option<usize>>, Vec<Option<u32>>);

fn graph() -> impl Strategy<Value = Graph> {
    (1usize..40, 0usize..4).prop_flat_map(|(n, groups)| {
        let needs =
            (0..n).map(|j| proptest::collection::vec(0..j.max(1), 0..(j.min(4) + 1))).collect::<Vec<_>>();
        let group_of = proptest::collection::vec(proptest::option::weighted(0.6, 0..groups.max(1)), n);
        let limits = proptest::collection::vec(proptest::option::of(1u32..4), groups.max(1));
        (needs, group_of, limits).prop_map(move |(needs, group_of, limits)| {
            // job 0 may have drawn "needs 0": drop self-needs
            let needs = needs
                .into_iter()
                .enumerate()
                .map(|(j, ns)| ns.into_iter().filter(|d| *d < j).collect())
                .collect();
            (needs, group_of, limits)
        })
    })
}

proptest! {
    #[test]
    fn every_job_runs_once_after_its_needs(
        (needs, group_of, limits) in graph(),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 200),
        skips in proptest::collection::vec(any::<bool>(), 200),
    ) {
        let n = needs.len();
        let mut s = Scheduler::from_graph(&needs, &group_of, &limits);
        let mut running: Vec<usize> = Vec::new();
        let mut seen = vec![false; n];
        let mut finished = vec![false; n];
        let mut step = 0;
        while !s.is_finished() {
            for j in s.take_ready() {
                prop_assert!(!seen[j], "job {} returned twice", j);
                prop_assert!(!finished[j]);
                for &d in &needs[j] {
                    prop_assert!(finished[d], "job {} started before its need {}", j, d);
                }
                seen[j] = true;
                running.push(j);
            }
            // max-parallel is never exceeded
            for (g, limit) in limits.iter().enumerate() {
                if let Some(limit) = limit {
                    let in_group = running.iter().filter(|j| group_of[**j] == Some(g)).count();
                    prop_assert!(in_group <= *limit as usize, "group {} runs {} > {}", g, in_group, limit);
                }
            }
            prop_assert!(!running.is_empty(), "stalled with unfinished jobs");
            let i = picks[step % picks.len()].index(running.len());
            let j = running.swap_remove(i);
            let result = if skips[step % skips.len()] { JobResult::Failure } else { JobResult::Success };
            s.finish(j, result);
            prop_assert_eq!(s.result(j), Some(result));
            finished[j] = true;
            step += 1;
        }
        prop_assert!(seen.iter().all(|x| *x), "not every job was returned");
        prop_assert!(s.take_ready().is_empty());
    }

    /// The engine may skip jobs (finish them without taking them) once their
    /// needs are done, or cancel any job at any time.
    #[test]
    fn finishing_untaken_jobs(
        (needs, group_of, limits) in graph(),
        cancel_at in 0usize..20,
        skip_mask in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let n = needs.len();
        let mut s = Scheduler::from_graph(&needs, &group_of, &limits);
        let mut finished = vec![false; n];
        let mut rounds = 0;
        while !s.is_finished() {
            let ready = s.take_ready();
            if rounds == cancel_at {
                for (j, done) in finished.iter_mut().enumerate() {
                    if !*done {
                        s.finish(j, JobResult::Cancelled);
                        *done = true;
                    }
                }
                continue;
            }
            prop_assert!(!ready.is_empty() || (0..n).any(|j| !finished[j] && s.was_taken(j)));
            for j in ready {
                for &d in &needs[j] {
                    prop_assert!(finished[d]);
                }
                let r = if skip_mask[j % skip_mask.len()] { JobResult::Skipped } else { JobResult::Success };
                s.finish(j, r);
                finished[j] = true;
            }
            rounds += 1;
        }
        prop_assert!(finished.iter().all(|x| *x));
    }
}

#[test]
fn plan_driven() {
    let src = "on: push\njobs:\n  a:\n    steps: [{run: x}]\n  b:\n    needs: a\n    strategy:\n      max-parallel: 1\n      matrix: {n: [1, 2, 3]}\n    steps: [{run: x}]\n  c:\n    needs: [a, b]\n    steps: [{run: x}]\n";
    let plan = load("w.yml", src).unwrap();
    let mut s = Scheduler::new(&plan);
    assert_eq!(s.take_ready(), vec![0]);
    assert!(s.take_ready().is_empty());
    s.finish(0, JobResult::Success);
    assert_eq!(s.take_ready(), vec![1]);
    s.finish(1, JobResult::Failure);
    assert_eq!(s.take_ready(), vec![2]);
    // the engine cancels the rest of the group (fail-fast)
    s.finish(3, JobResult::Cancelled);
    assert!(s.take_ready().is_empty());
    s.finish(2, JobResult::Cancelled);
    assert_eq!(s.take_ready(), vec![4]);
    assert!(!s.is_finished());
    s.finish(4, JobResult::Skipped);
    assert!(s.is_finished());
    assert_eq!(s.result(1), Some(JobResult::Failure));
    assert_eq!(JobResult::Cancelled.as_str(), "cancelled");
}

/// 10,000 jobs in layers of 100, each needing every job of the layer before,
/// plus a 10,000-leg group with max-parallel 1: linear, not quadratic.
#[test]
fn large_graphs_are_fast() {
    let n = 10_000;
    let needs: Vec<Vec<usize>> = (0..n)
        .map(|j| if j < 100 { vec![] } else { ((j / 100 - 1) * 100..(j / 100) * 100).collect() })
        .collect();
    let mut s = Scheduler::from_graph(&needs, &vec![None; n], &[]);
    let mut count = 0;
    while !s.is_finished() {
        for j in s.take_ready() {
            s.finish(j, JobResult::Success);
            count += 1;
        }
    }
    assert_eq!(count, n);

    let mut s = Scheduler::from_graph(&vec![vec![]; n], &vec![Some(0); n], &[Some(1)]);
    let mut count = 0;
    while !s.is_finished() {
        let ready = s.take_ready();
        assert_eq!(ready.len(), 1);
        s.finish(ready[0], JobResult::Success);
        count += 1;
    }
    assert_eq!(count, n);
}
