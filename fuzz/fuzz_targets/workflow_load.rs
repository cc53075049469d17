//! The workflow loader (`kiln_workflow::load` / `load_with`) and the
//! composite-action loader (`parse_action`): a repository's YAML, as kiln
//! receives it from `kiln run`, `kiln validate` and the API's `submit`.
//!
//! Invariants: never panics; a refusal has at least one diagnostic, each
//! with a 1-based line and column; an accepted plan is a DAG whose needs are
//! in range and that the scheduler drives to the end (every job taken once).
//! `load_with` is given a loader that returns the same text for every called
//! workflow, so calls, their depth limit and recursion are exercised too.
#![no_main]

use kiln_workflow::{Diagnostics, JobResult, Plan, Scheduler};
use libfuzzer_sys::fuzz_target;

fn check_diagnostics(d: &Diagnostics) {
    assert!(!d.0.is_empty(), "refused without a diagnostic");
    for x in &d.0 {
        assert!(x.location.line >= 1 && x.location.column >= 1, "bad location: {x}");
    }
}

fn check_plan(plan: &Plan) {
    let n = plan.jobs.len();
    for (j, job) in plan.jobs.iter().enumerate() {
        for &k in &job.needs {
            assert!(k < n && k != j, "job {} needs {k} (of {n})", job.id);
        }
        if let Some(g) = job.group {
            assert!(g < plan.groups.len());
        }
        if let Some(p) = job.parent {
            assert!(p < n && p != j);
        }
    }
    for g in &plan.groups {
        assert!(g.legs.iter().all(|&l| l < n));
    }
    for d in &plan.notices {
        assert!(d.location.line >= 1 && d.location.column >= 1, "bad location: {d}");
    }
    // A plan is acyclic: Kahn's algorithm finishes it, taking each job once.
    let mut s = Scheduler::new(plan);
    let mut taken = vec![false; n];
    for _ in 0..=n {
        if s.is_finished() {
            break;
        }
        let ready = s.take_ready();
        assert!(!ready.is_empty(), "the scheduler is stuck with unfinished jobs: a cycle was accepted");
        for j in ready {
            assert!(!std::mem::replace(&mut taken[j], true), "job {j} taken twice");
            s.finish(j, JobResult::Success);
        }
    }
    assert!(s.is_finished(), "the scheduler did not finish");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match kiln_workflow::load(".github/workflows/ci.yml", text) {
        Ok(plan) => check_plan(&plan),
        Err(d) => check_diagnostics(&d),
    }
    let same = |_: &str| -> Result<String, String> { Ok(text.to_string()) };
    match kiln_workflow::load_with(".github/workflows/ci.yml", text, &same) {
        Ok(plan) => check_plan(&plan),
        Err(d) => check_diagnostics(&d),
    }
    if let Err(d) = kiln_workflow::parse_action("action.yml", text) {
        check_diagnostics(&d);
    }
});
