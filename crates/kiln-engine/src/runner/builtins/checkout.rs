//! `actions/checkout`: the build's source into the job's workspace.

use crate::log::Stream;
use crate::runner::env::*;
use crate::runner::job::*;
use crate::runner::StepStatus;

impl JobRun<'_> {
    pub(crate) async fn checkout(&mut self) -> Result<StepResult, StepError> {
        let Some(src) = self.runner.cfg.source.clone() else {
            return Err("actions/checkout: this build has no source directory".into());
        };
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf();
        let skip = self.runner.cfg.source_skip.clone();
        let n = tokio::task::spawn_blocking(move || {
            crate::runner::workspace_copy::copy_source(&src, &ws, STEP_UID, STEP_GID, &skip)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let job = &self.req.plan.jobs[self.req.job];
        self.req.emitter.log(
            &job.id,
            "Checkout",
            "source-fetch",
            Stream::System,
            format!("checked out {n} files into {WORKSPACE}"),
        );
        Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
    }
}

/// `actions/checkout`: the build's source into the workspace.
pub(super) struct Checkout;

impl super::Builtin for Checkout {
    fn title(&self) -> String {
        "Checkout".into()
    }

    fn on_host(&self) -> bool {
        true
    }

    fn run<'s>(&'s self, run: &'s mut JobRun<'_>, _at: super::StepAt<'s>) -> super::StepFut<'s> {
        Box::pin(run.checkout())
    }
}
