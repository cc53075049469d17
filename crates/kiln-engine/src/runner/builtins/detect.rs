//! `kiln/detect`: what the zero-config build reads from the workspace.

use crate::log::Stream;
use crate::runner::job::*;
use crate::runner::StepStatus;
use kiln_workflow::{PlannedJob, StepSpec};
use serde_json::{json, Value};

impl JobRun<'_> {
    /// `kiln/detect`: reads the workspace on the host (nothing runs) and
    /// sets the outputs the zero-config build's next steps use.
    pub(crate) async fn detect(
        &mut self,
        job: &PlannedJob,
        step: &StepSpec,
        step_name: &str,
        ignore_scripts: bool,
    ) -> Result<StepResult, StepError> {
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf();
        let registries = self.runner.cfg.egress.registries.clone();
        let d = tokio::task::spawn_blocking(move || {
            crate::runner::zeroconfig::detect(&ws, ignore_scripts, &registries)
        })
        .await
        .map_err(|e| e.to_string())??;
        let say =
            |s: &Self, m: String| s.req.emitter.log(&job.id, step_name, "source-fetch", Stream::System, m);
        for n in &d.notes {
            say(self, n.clone());
        }
        for (k, v) in &d.outputs {
            if let Value::String(v) = v {
                if !v.is_empty() && !v.contains('\n') {
                    say(self, format!("{k}: {v}"));
                }
            }
        }
        if !d.violations.is_empty() {
            for v in &d.violations {
                say(self, format!("refused: {v}"));
            }
            return Err(format!(
                "{} entr{} would reach outside the allowed registries or widen the policy (first: {})",
                d.violations.len(),
                if d.violations.len() == 1 { "y" } else { "ies" },
                d.violations[0]
            )
            .into());
        }
        for (k, v) in d.env {
            self.env.insert(k, Value::String(v));
        }
        self.detected_commands = Some(d.commands);
        if let Some(id) = &step.id {
            self.steps_ctx.insert(id.clone(), json!({ "outputs": Value::Object(d.outputs) }));
        }
        Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
    }
}

/// `kiln/detect`: what the workspace is and how it builds.
pub(super) struct Detect {
    pub(super) ignore_scripts: bool,
}

impl super::Builtin for Detect {
    fn title(&self) -> String {
        "Detect".into()
    }

    fn on_host(&self) -> bool {
        true
    }

    fn run<'s>(&'s self, run: &'s mut JobRun<'_>, at: super::StepAt<'s>) -> super::StepFut<'s> {
        Box::pin(run.detect(at.job, at.step, at.name, self.ignore_scripts))
    }
}
