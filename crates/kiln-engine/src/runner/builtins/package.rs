//! `kiln/package`: the build output stored, scanned and signed.

use crate::log::Stream;
use crate::runner::builtins::*;
use crate::runner::job::*;
use kiln_workflow::{PlannedJob, Template};
use std::path::Path;

#[derive(Debug, Clone, Copy)]
pub(crate) struct PackageStep<'a> {
    pub(crate) name: &'a Template,
    pub(crate) path: Option<&'a Template>,
    pub(crate) output_type: Option<&'a Template>,
    pub(crate) retention_days: Option<u32>,
    pub(crate) commit: Option<&'a Template>,
}

/// Digest of the environment a job declares, as written: names and the
/// unexpanded templates, so no secret value can enter it.
pub(crate) fn environment_digest(wf: &kiln_workflow::Workflow, job: &kiln_workflow::JobSpec) -> String {
    let mut lines: Vec<String> = Vec::new();
    for (scope, env) in [("workflow", &wf.env), ("job", &job.env)] {
        for (k, v) in env {
            lines.push(format!("{scope}\t{k}\t{}", v.source()));
        }
    }
    lines.sort();
    kiln_store::Digest::of(lines.join("\n").as_bytes()).to_string()
}

impl JobRun<'_> {
    /// `kiln/package`: the build output (found, or `path`) stored as an
    /// artifact with its output type, scanned and signed.
    pub(crate) async fn package(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step_name: &str,
        pkg: PackageStep<'_>,
        started_at: &str,
    ) -> Result<StepResult, StepError> {
        let ctx = self.contexts();
        let render = |t: Option<&Template>| -> Result<Option<String>, String> {
            t.map(|t| t.render(&ctx, self.status_fns()).map_err(|e| e.to_string()))
                .transpose()
                .map(|v| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        };
        let name = render(Some(pkg.name))?.unwrap_or_else(|| "output".into());
        let path = render(pkg.path)?;
        let declared = render(pkg.output_type)?;
        let commit = render(pkg.commit)?;
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf();
        let (rel, found_type) = match path {
            Some(p) => {
                (p.trim_start_matches("./").trim_end_matches('/').to_string(), kiln_store::OutputType::Static)
            }
            None => {
                let ws = ws.clone();
                tokio::task::spawn_blocking(move || crate::runner::zeroconfig::locate(&ws))
                    .await
                    .map_err(|e| e.to_string())??
            }
        };
        let output_type = match declared {
            Some(t) if kiln_workflow::OUTPUT_TYPES.contains(&t.as_str()) => output_type_of(&t),
            Some(t) => {
                return Err(format!(
                    "output-type must be one of {}, not `{t}`",
                    kiln_workflow::OUTPUT_TYPES.join(", ")
                )
                .into())
            }
            None => found_type,
        };
        let src = crate::runner::artifacts::resolve_beneath(&ws, &rel).map_err(|e| format!("output {e}"))?;
        self.req.emitter.log(
            &job.id,
            step_name,
            "artifact-upload",
            Stream::System,
            format!("output: {rel} ({})", output_type_name(output_type)),
        );
        let staging = self.dir.join(format!("upload-{k}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
        let dst = if src.is_dir() {
            staging.clone()
        } else {
            staging.join(Path::new(&rel).file_name().unwrap_or_default())
        };
        let copied = crate::runner::workspace_copy::copy_path(&src, &dst).map_err(|e| e.to_string());
        let stored = match copied {
            Ok(0) => Err(StepError::User(format!("output `{rel}` has no files"))),
            Ok(_) => {
                let keep = ArtifactKeep {
                    output_type,
                    retention_days: pkg.retention_days,
                    commands: self.detected_commands.clone(),
                    commit,
                };
                self.store_staged(job, step_name, &name, &staging, keep, started_at).await
            }
            Err(e) => Err(e.into()),
        };
        let _ = std::fs::remove_dir_all(&staging);
        stored
    }
}

/// `kiln/package`: the build's output as a deployable artifact.
pub(super) struct Package<'a>(pub(super) PackageStep<'a>);

impl Builtin for Package<'_> {
    fn title(&self) -> String {
        format!("Package {}", self.0.name.source())
    }

    fn on_host(&self) -> bool {
        true
    }

    fn run<'s>(&'s self, run: &'s mut JobRun<'_>, at: StepAt<'s>) -> StepFut<'s> {
        Box::pin(run.package(at.job, at.k, at.name, self.0, at.started_at))
    }
}
