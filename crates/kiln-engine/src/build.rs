//! The build loop: Kahn order over the plan's jobs, in parallel, with `if`,
//! `needs`, fail-fast, `continue-on-error` and cancellation.

use std::collections::VecDeque;
use std::sync::Arc;

use kiln_workflow::{BoolOrExpr, Contexts, JobResult, Plan, RunnerLabels, Scheduler, StatusFns, StepAction};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::event::Event;
use crate::log::Stream;
use crate::runner::{Emitter, JobOutcome, JobRequest, JobRunner};

/// How to run one build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub build: String,
    /// Jobs running at once, at most.
    pub max_parallel: usize,
    /// The `github` context.
    pub github: Value,
    /// The `runner` context.
    pub runner: Value,
    /// The build's egress counters, for the usage figures of the summary.
    pub egress: Option<Arc<kiln_egress::BuildCounters>>,
    /// The `runs-on` labels runners here answer to.
    pub runner_labels: RunnerLabels,
    /// Refuse jobs with a coverage/report uploader instead of skipping the
    /// uploader step.
    pub refuse_uploaders: bool,
}

impl BuildOptions {
    /// Options with the defaults: GitHub's Linux labels, uploaders skipped.
    pub fn new(build: String, max_parallel: usize, github: Value, runner: Value) -> BuildOptions {
        BuildOptions {
            build,
            max_parallel,
            github,
            runner,
            egress: None,
            runner_labels: RunnerLabels::default(),
            refuse_uploaders: false,
        }
    }
}

/// One job in the final summary (and in `--json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct JobSummary {
    pub id: String,
    pub name: String,
    /// `succeeded`, `failed`, `skipped` or `cancelled`.
    pub status: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub cpu_seconds: f64,
    pub peak_memory_bytes: u64,
    /// Secret values and token patterns scrubbed from the job's output.
    pub redactions: u64,
}

/// The end of a build.
#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub build: String,
    /// `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub jobs: Vec<JobSummary>,
    /// Bytes the build received and sent through the egress proxy.
    pub egress_bytes_in: u64,
    pub egress_bytes_out: u64,
}

impl BuildSummary {
    /// The process exit status this build means: 0, 1 or 130.
    pub fn exit_code(&self) -> i32 {
        match self.status.as_str() {
            "succeeded" => 0,
            "cancelled" => 130,
            _ => 1,
        }
    }
}

fn status_word(r: JobResult) -> &'static str {
    match r {
        JobResult::Success => "succeeded",
        JobResult::Failure => "failed",
        JobResult::Cancelled => "cancelled",
        JobResult::Skipped => "skipped",
    }
}

/// Per-job bookkeeping of the loop.
struct Slot {
    summary: Option<JobSummary>,
    /// The result dependents see (`continue-on-error` turns failure into success).
    result: Option<JobResult>,
    outputs: Map<String, Value>,
    /// This job or one of its ancestors failed (`failure()` in a job's `if`).
    failed_lineage: bool,
    cancel: Option<watch::Sender<bool>>,
}

/// Runs every job of `plan` with `runner` and returns the summary. Never
/// fails: a job that cannot run is a failed job with a reason.
pub async fn run_build<R: JobRunner>(
    plan: Arc<Plan>,
    runner: Arc<R>,
    opts: BuildOptions,
    emitter: Emitter,
    mut cancel: watch::Receiver<bool>,
) -> BuildSummary {
    let n = plan.jobs.len();
    emitter.emit(Event::BuildStarted {
        build: opts.build.clone(),
        pipeline: plan.name.clone(),
        jobs: (0..n).map(|j| (plan.jobs[j].id.clone(), display_name(&plan, j, &opts))).collect(),
    });
    let mut sched = Scheduler::new(&plan);
    let mut slots: Vec<Slot> = (0..n)
        .map(|_| Slot {
            summary: None,
            result: None,
            outputs: Map::new(),
            failed_lineage: false,
            cancel: None,
        })
        .collect();
    let mut group_tripped = vec![false; plan.groups.len()];
    let mut pending: VecDeque<usize> = VecDeque::new();
    let mut running: JoinSet<(usize, JobOutcome, String)> = JoinSet::new();
    let mut task_jobs: std::collections::HashMap<tokio::task::Id, (usize, String)> = Default::default();
    let mut cancelled = *cancel.borrow();
    let max_parallel = opts.max_parallel.max(1);
    let workflow_env = workflow_env(&plan, &opts);

    loop {
        pending.extend(sched.take_ready());
        while let Some(&j) = pending.front() {
            let job = &plan.jobs[j];
            let group_cancelled = job.group.map(|g| group_tripped[g]).unwrap_or(false);
            let failed_lineage = job.needs.iter().any(|&d| slots[d].failed_lineage);
            slots[j].failed_lineage = failed_lineage;
            let contexts = job_contexts(&plan, j, &slots, &opts, &workflow_env);
            let decision = if cancelled || group_cancelled {
                Err((JobResult::Cancelled, None))
            } else if let Some(reason) = refusal(&plan, j, &contexts, &opts) {
                // Something in the job cannot run here: the job is skipped
                // (its dependents follow GitHub's rules), the rest runs.
                Err((JobResult::Skipped, Some(reason)))
            } else {
                let all_needs_ok = job.needs.iter().all(|&d| slots[d].result == Some(JobResult::Success));
                let status = StatusFns::new(all_needs_ok, failed_lineage, false);
                match &job.spec.condition {
                    None if all_needs_ok => Ok(()),
                    None => Err((JobResult::Skipped, None)),
                    Some(cond) => match cond.eval_condition(&contexts, status) {
                        Ok(true) => Ok(()),
                        Ok(false) => Err((JobResult::Skipped, None)),
                        Err(e) => Err((JobResult::Failure, Some(format!("if: {e}")))),
                    },
                }
            };
            match decision {
                Err((result, reason)) => {
                    pending.pop_front();
                    if let Some(reason) = &reason {
                        let what = if result == JobResult::Skipped { "skipped" } else { "failed" };
                        emitter.log(&job.id, "", "", Stream::System, format!("job {what}: {reason}"));
                    }
                    let mut outcome = JobOutcome::new(result);
                    outcome.reason = reason;
                    let name = display_name(&plan, j, &opts);
                    finish_job(
                        &plan,
                        j,
                        outcome,
                        name,
                        None,
                        &mut slots,
                        &mut sched,
                        &mut group_tripped,
                        &emitter,
                    );
                    // A job that ends without running releases its
                    // dependents now, in this pass: they may end the same
                    // way (a chain of skips), and nothing else would wake
                    // the loop for them.
                    pending.extend(sched.take_ready());
                }
                Ok(()) if running.len() < max_parallel => {
                    pending.pop_front();
                    let (tx, rx) = watch::channel(false);
                    slots[j].cancel = Some(tx);
                    let started_at = crate::time::now_rfc3339();
                    emitter.emit(Event::JobStarted {
                        job: j,
                        id: job.id.clone(),
                        started_at: started_at.clone(),
                    });
                    let req = JobRequest {
                        build: opts.build.clone(),
                        plan: plan.clone(),
                        job: j,
                        contexts,
                        cancel: rx,
                        emitter: emitter.clone(),
                    };
                    let runner = runner.clone();
                    let started = started_at.clone();
                    let handle = running.spawn(async move { (j, runner.run_job(req).await, started) });
                    task_jobs.insert(handle.id(), (j, started_at));
                }
                Ok(()) => break,
            }
        }
        if sched.is_finished() && running.is_empty() {
            break;
        }
        if running.is_empty() && pending.is_empty() {
            // Nothing runs and nothing can start, yet some job has no
            // result: waiting would wait forever. End those jobs instead
            // of hanging (the scheduler's invariants make this unreachable;
            // this keeps a future slip from becoming a build that never
            // returns).
            for j in sched.unfinished() {
                let mut outcome = JobOutcome::new(JobResult::Failure);
                outcome.reason = Some("infrastructure error: the job could never start".into());
                let name = display_name(&plan, j, &opts);
                finish_job(
                    &plan,
                    j,
                    outcome,
                    name,
                    None,
                    &mut slots,
                    &mut sched,
                    &mut group_tripped,
                    &emitter,
                );
            }
            continue;
        }
        tokio::select! {
            joined = running.join_next_with_id(), if !running.is_empty() => {
                let Some(joined) = joined else { continue };
                let (j, outcome, started_at) = match joined {
                    Ok((id, v)) => {
                        task_jobs.remove(&id);
                        v
                    }
                    Err(e) => {
                        // The runner panicked: the job failed, the build goes on.
                        let Some((j, started_at)) = task_jobs.remove(&e.id()) else { continue };
                        let mut outcome = JobOutcome::new(JobResult::Failure);
                        outcome.reason = Some("infrastructure error: the job runner crashed".into());
                        emitter.log(&plan.jobs[j].id, "", "", Stream::System, format!("job runner crashed: {e}"));
                        (j, outcome, started_at)
                    }
                };
                let name = display_name(&plan, j, &opts);
                finish_job(&plan, j, outcome, name, Some(started_at), &mut slots, &mut sched, &mut group_tripped, &emitter);
                // Fail-fast: stop the other legs of a tripped group.
                if let Some(g) = plan.jobs[j].group {
                    if group_tripped[g] {
                        for &leg in &plan.groups[g].legs {
                            if let Some(c) = &slots[leg].cancel {
                                let _ = c.send(true);
                            }
                        }
                    }
                }
            }
            changed = cancel.changed(), if !cancelled => {
                if changed.is_err() || *cancel.borrow() {
                    cancelled = true;
                    emitter.log("", "", "", Stream::System, "build cancelled: stopping running jobs".into());
                    for slot in &slots {
                        if let Some(c) = &slot.cancel {
                            let _ = c.send(true);
                        }
                    }
                }
            }
        }
    }

    let any_failed = slots.iter().any(|s| s.result == Some(JobResult::Failure));
    let any_cancelled = slots.iter().any(|s| s.result == Some(JobResult::Cancelled));
    let jobs: Vec<JobSummary> = slots.into_iter().filter_map(|s| s.summary).collect();
    let status = if cancelled || (any_cancelled && !any_failed) {
        "cancelled"
    } else if any_failed {
        "failed"
    } else {
        "succeeded"
    };
    let (egress_bytes_in, egress_bytes_out) = opts
        .egress
        .as_ref()
        .map(|c| {
            use std::sync::atomic::Ordering::Relaxed;
            (c.bytes_in.load(Relaxed), c.bytes_out.load(Relaxed))
        })
        .unwrap_or((0, 0));
    let summary = BuildSummary {
        kind: "summary",
        build: opts.build.clone(),
        status: status.to_string(),
        jobs,
        egress_bytes_in,
        egress_bytes_out,
    };
    emitter.emit(Event::BuildFinished(summary.clone()));
    summary
}

#[allow(clippy::too_many_arguments)]
fn finish_job(
    plan: &Plan,
    j: usize,
    outcome: JobOutcome,
    display: String,
    started_at: Option<String>,
    slots: &mut [Slot],
    sched: &mut Scheduler,
    group_tripped: &mut [bool],
    emitter: &Emitter,
) {
    let job = &plan.jobs[j];
    let mut reason = outcome.reason.clone();
    let mut visible = outcome.result;
    if outcome.result == JobResult::Failure {
        let allowed = continue_on_error(plan, j);
        if allowed {
            visible = JobResult::Success;
            reason = Some(format!("{} (continue-on-error)", reason.unwrap_or_else(|| "failed".into())));
        } else {
            slots[j].failed_lineage = true;
            if let Some(g) = job.group {
                if plan.groups[g].fail_fast {
                    group_tripped[g] = true;
                }
            }
        }
    }
    let finished_at = started_at.as_ref().map(|_| crate::time::now_rfc3339());
    let summary = JobSummary {
        id: job.id.clone(),
        name: display,
        status: status_word(outcome.result).to_string(),
        started_at,
        finished_at,
        exit_code: outcome.exit_code,
        reason,
        cpu_seconds: outcome.cpu_seconds,
        peak_memory_bytes: outcome.peak_memory_bytes,
        redactions: outcome.redactions,
    };
    emitter.emit(Event::JobFinished { job: j, summary: summary.clone() });
    slots[j].summary = Some(summary);
    slots[j].result = Some(visible);
    slots[j].outputs = outcome.outputs;
    slots[j].cancel = None;
    sched.finish(j, visible);
}

/// Why job `j` cannot run here, if it cannot: the first thing in it kiln
/// does not have (with its line), a `runs-on` label no runner here carries,
/// a container image, or (if the operator says so) a coverage uploader.
pub fn refusal(plan: &Plan, j: usize, contexts: &Contexts, opts: &BuildOptions) -> Option<String> {
    let spec = &plan.jobs[j].spec;
    if let Some(r) = spec.refusals.first() {
        return Some(format!("{} (line {}:{})", r.reason, r.location.line, r.location.column));
    }
    let status = StatusFns::new(true, false, false);
    let mut labels = Vec::new();
    for t in &spec.runs_on {
        match t.render(contexts, status) {
            Ok(l) => labels.push(l),
            Err(e) => return Some(format!("runs-on: {e}")),
        }
    }
    if let Some(reason) = opts.runner_labels.refusal(&labels) {
        return Some(reason);
    }
    if let Some(t) = &spec.container {
        match t.render(contexts, status) {
            Ok(image) if image.trim().is_empty() => {}
            Ok(image) => {
                return Some(format!(
                    "container {image}: running a job in a container image is not supported yet"
                ))
            }
            Err(e) => return Some(format!("container: {e}")),
        }
    }
    if opts.refuse_uploaders {
        for step in &spec.steps {
            if let StepAction::Uploader { uses } = &step.action {
                return Some(format!(
                    "`uses: {uses}`: coverage and report uploaders are refused here (line {}:{})",
                    step.location.line, step.location.column
                ));
            }
        }
    }
    None
}

/// A job's `name:` rendered with its matrix (GitHub's display name), or its id.
pub fn display_name(plan: &Plan, j: usize, opts: &BuildOptions) -> String {
    let job = &plan.jobs[j];
    let Some(t) = &job.spec.name else { return job.id.clone() };
    let ctx = Contexts { matrix: job.matrix.clone(), github: opts.github.clone(), ..Default::default() };
    let status = StatusFns::new(true, false, false);
    match t.render(&ctx, status) {
        Ok(s) if !s.trim().is_empty() => s,
        _ => job.id.clone(),
    }
}

fn continue_on_error(plan: &Plan, j: usize) -> bool {
    let job = &plan.jobs[j];
    match &job.spec.continue_on_error {
        BoolOrExpr::Literal(b) => *b,
        BoolOrExpr::Expr(t) => {
            let ctx = Contexts { matrix: job.matrix.clone(), ..Default::default() };
            let status = StatusFns::new(true, false, false);
            t.eval(&ctx, status).map(|v| truthy(&v)).unwrap_or(false)
        }
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().map(|f| f != 0.0 && !f.is_nan()).unwrap_or(false),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// The workflow-level `env`, rendered once (it may use `github`).
fn workflow_env(plan: &Plan, opts: &BuildOptions) -> Value {
    let mut env = Map::new();
    let status = StatusFns::new(true, false, false);
    for (k, t) in &plan.workflow.env {
        let ctx = Contexts {
            github: opts.github.clone(),
            env: Value::Object(env.clone()),
            runner: opts.runner.clone(),
            ..Default::default()
        };
        let v = t.render(&ctx, status).unwrap_or_default();
        env.insert(k.clone(), Value::String(v));
    }
    Value::Object(env)
}

/// Contexts a job's `if` and its runner see.
fn job_contexts(plan: &Plan, j: usize, slots: &[Slot], opts: &BuildOptions, env: &Value) -> Contexts {
    let job = &plan.jobs[j];
    let mut needs = Map::new();
    for key in &job.spec.needs {
        let legs: Vec<usize> = job.needs.iter().copied().filter(|&d| &plan.jobs[d].key == key).collect();
        let results: Vec<Option<JobResult>> = legs.iter().map(|&d| slots[d].result).collect();
        let result = aggregate(&results);
        let mut outputs = Map::new();
        for &d in &legs {
            for (k, v) in &slots[d].outputs {
                outputs.insert(k.clone(), v.clone());
            }
        }
        needs.insert(
            key.clone(),
            json!({ "result": result.map(|r| r.as_str()).unwrap_or(""), "outputs": outputs }),
        );
    }
    let strategy = match job.group {
        Some(g) => {
            let group = &plan.groups[g];
            json!({
                "fail-fast": group.fail_fast,
                "job-index": group.legs.iter().position(|&l| l == j).unwrap_or(0),
                "job-total": group.legs.len(),
                "max-parallel": group.max_parallel.unwrap_or(group.legs.len() as u32),
            })
        }
        None => Value::Null,
    };
    let mut github = opts.github.clone();
    if let Some(g) = github.as_object_mut() {
        g.insert("job".into(), Value::String(job.key.clone()));
    }
    Contexts {
        github,
        env: env.clone(),
        matrix: job.matrix.clone(),
        needs: Value::Object(needs),
        strategy,
        runner: opts.runner.clone(),
        job: json!({ "status": "success" }),
        ..Default::default()
    }
}

/// The result of a matrix job as its dependents see it.
fn aggregate(results: &[Option<JobResult>]) -> Option<JobResult> {
    if results.iter().any(|r| r.is_none()) {
        return None;
    }
    let rs: Vec<JobResult> = results.iter().flatten().copied().collect();
    Some(if rs.contains(&JobResult::Failure) {
        JobResult::Failure
    } else if rs.contains(&JobResult::Cancelled) {
        JobResult::Cancelled
    } else if !rs.is_empty() && rs.iter().all(|r| *r == JobResult::Skipped) {
        JobResult::Skipped
    } else {
        JobResult::Success
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_results_aggregate_like_github() {
        use JobResult::*;
        assert_eq!(aggregate(&[Some(Success), Some(Failure)]), Some(Failure));
        assert_eq!(aggregate(&[Some(Success), Some(Skipped)]), Some(Success));
        assert_eq!(aggregate(&[Some(Skipped), Some(Skipped)]), Some(Skipped));
        assert_eq!(aggregate(&[Some(Success), None]), None);
    }
}
