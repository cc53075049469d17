//! Where secrets may appear, and which steps may see them.
//!
//! A secret may be read only through `${{ secrets.NAME }}` in a step's `env:`
//! values: kiln expands those inside the sandbox's environment and never into
//! a file on disk (a `run:` script is a file), a record or a log. And a step
//! may read only the secrets bound to its phase (workflow or job `kiln.secrets`
//! with `phases:`) or to the step itself (a step's `kiln.secrets`).

use crate::diagnostic::{Diagnostic, Location};
use crate::expr::Template;
use crate::model::{JobSpec, StepAction, Workflow};

fn diag(file: &str, location: Location, message: String) -> Diagnostic {
    Diagnostic { file: file.to_string(), location, message }
}

const ELSEWHERE: &str = "secrets may only be used in a step's `env:` values (kiln never writes them into a script, a record or a log)";

/// An error when template `t` reads a secret. `what` names the place; it is
/// only composed when there is an error to report.
fn forbid(
    file: &str,
    t: &Template,
    loc: Location,
    what: impl FnOnce() -> String,
    errors: &mut Vec<Diagnostic>,
) {
    if !t.secret_refs().is_empty() {
        errors.push(diag(file, loc, format!("{} uses a secret: {ELSEWHERE}", what())));
    }
}

/// Checks every use of `secrets` in the workflow.
pub(crate) fn check(file: &str, wf: &Workflow, errors: &mut Vec<Diagnostic>) {
    for (k, t) in &wf.env {
        forbid(file, t, Location::default(), || format!("workflow `env.{k}`"), errors);
    }
    for job in &wf.jobs {
        for (k, t) in &job.env {
            forbid(file, t, job.location, || format!("`env.{k}` of job `{}`", job.key), errors);
        }
        for (k, t) in &job.outputs {
            forbid(file, t, job.location, || format!("output `{k}` of job `{}`", job.key), errors);
        }
        if let Some(t) = &job.name {
            forbid(file, t, job.location, || format!("the name of job `{}`", job.key), errors);
        }
        if job.condition.as_ref().is_some_and(|c| !c.secret_refs().is_empty()) {
            errors.push(diag(
                file,
                job.location,
                format!("the `if` of job `{}` uses a secret: {ELSEWHERE}", job.key),
            ));
        }
        for (i, step) in job.steps.iter().enumerate() {
            check_step(file, wf, job, i + 1, step, errors);
        }
    }
}

fn check_step(
    file: &str,
    wf: &Workflow,
    job: &JobSpec,
    index: usize,
    step: &crate::model::StepSpec,
    errors: &mut Vec<Diagnostic>,
) {
    let label = || match &step.name {
        Some(n) => format!("step {index} (`{}`) of job `{}`", n.source(), job.key),
        None => format!("step {index} of job `{}`", job.key),
    };
    let loc = step.location;
    let forbid_here = |t: &Template, what: &str, errors: &mut Vec<Diagnostic>| {
        forbid(file, t, loc, || format!("{what} {}", label()), errors)
    };
    match &step.action {
        StepAction::Run { script, .. } => forbid_here(script, "the `run:` script of", errors),
        StepAction::UploadArtifact { name, path, .. } => {
            forbid_here(name, "the artifact name of", errors);
            forbid_here(path, "the artifact path of", errors);
        }
        StepAction::DownloadArtifact { name, path, pattern, .. } => {
            for t in [name, path, pattern].into_iter().flatten() {
                forbid_here(t, "the download settings of", errors);
            }
        }
        StepAction::Cache { key, path, restore_keys, .. } => {
            for t in [Some(key), Some(path), restore_keys.as_ref()].into_iter().flatten() {
                forbid_here(t, "the cache settings of", errors);
            }
        }
        StepAction::Package { name, path, output_type, commit, .. } => {
            for t in [Some(name), path.as_ref(), output_type.as_ref(), commit.as_ref()].into_iter().flatten()
            {
                forbid_here(t, "the package settings of", errors);
            }
        }
        StepAction::LocalAction { with, .. } => {
            for (_, t) in with {
                forbid_here(t, "the `with:` of", errors);
            }
        }
        StepAction::Setup { with, .. } => {
            // `token` is never rendered: kiln's setup actions download nothing
            // with it.
            for (_, t) in with.iter().filter(|(k, _)| k != "token") {
                forbid_here(t, "the `with:` of", errors);
            }
        }
        StepAction::Checkout
        | StepAction::Detect { .. }
        | StepAction::Uploader { .. }
        | StepAction::Unsupported { .. } => {}
    }
    if let Some(t) = &step.name {
        forbid_here(t, "the name of", errors);
    }
    if let Some(t) = &step.working_directory {
        forbid_here(t, "the working-directory of", errors);
    }
    if step.condition.as_ref().is_some_and(|c| !c.secret_refs().is_empty()) {
        errors.push(diag(file, step.location, format!("the `if` of {} uses a secret", label())));
    }
    if step.env.is_empty() {
        return;
    }
    let phase = step.phase(job);
    let allowed = step.allowed_secrets(job, wf);
    for (var, t) in &step.env {
        for r in t.secret_refs() {
            let Some(name) = r else {
                errors.push(diag(
                    file,
                    step.location,
                    format!(
                        "`env.{var}` of {} reads `secrets` without a literal name (use `secrets.NAME`)",
                        label()
                    ),
                ));
                continue;
            };
            if allowed.iter().any(|b| b.name == name) {
                continue;
            }
            let bound: Vec<String> = job
                .kiln
                .secrets
                .iter()
                .chain(wf.kiln.secrets.iter())
                .filter(|b| b.name == name)
                .flat_map(|b| b.phases.iter().map(|p| p.as_str().to_string()))
                .collect();
            let why = if bound.is_empty() {
                format!(
                    "it is not bound to any phase (bind it under `kiln.secrets` with `phases: [{}]`)",
                    phase.as_str()
                )
            } else {
                format!(
                    "the step's phase `{}` is not among its phases [{}]",
                    phase.as_str(),
                    bound.join(", ")
                )
            };
            errors.push(diag(
                file,
                step.location,
                format!("{} reads secret `{name}` in `env.{var}`, but {why}", label()),
            ));
        }
    }
}
