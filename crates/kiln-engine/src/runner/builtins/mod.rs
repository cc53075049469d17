//! The actions kiln has built in, one module each, behind one small trait
//! ([`Builtin`]): what a step of that action is called when it has no
//! `name:`, whether it works on the job's disk from the host, and how it
//! runs. [`of`] is the one place that maps a step's
//! [`kiln_workflow::StepAction`] to its built-in; the job loop
//! ([`super::job`]) knows none of them by name.

mod artifact;
mod cache;
mod checkout;
mod composite;
mod detect;
mod node_dist;
mod package;
mod setup;
mod uv_dist;

pub(crate) use artifact::*;
pub(crate) use package::*;
pub(crate) use setup::RUSTUP_SHIM;

use crate::log::Stream;
use crate::runner::host::BoxFut;
use crate::runner::job::{JobRun, StepError, StepResult};
use crate::runner::StepStatus;
use kiln_workflow::{PlannedJob, StepAction, StepSpec};

/// How a built-in's run ends.
pub(crate) type StepFut<'s> = BoxFut<'s, Result<StepResult, StepError>>;

/// The step a built-in runs as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepAt<'s> {
    pub(crate) job: &'s PlannedJob,
    /// Its index in the job.
    pub(crate) k: usize,
    pub(crate) step: &'s StepSpec,
    /// Its display name.
    pub(crate) name: &'s str,
    pub(crate) started_at: &'s str,
}

/// One built-in action.
pub(crate) trait Builtin: Send + Sync {
    /// What the step is called when it has no `name:`.
    fn title(&self) -> String;

    /// It reads or writes the job's disk from the host (stores files,
    /// restores them): the phase's processes end before it runs, so none
    /// can swap a path for a link meanwhile.
    fn on_host(&self) -> bool {
        false
    }

    /// Does the step's work; a step that ran and failed is a result, not
    /// an error.
    fn run<'s>(&'s self, run: &'s mut JobRun<'_>, at: StepAt<'s>) -> StepFut<'s>;
}

/// The built-in that does what `action` says.
pub(crate) fn of(action: &StepAction) -> Box<dyn Builtin + '_> {
    match action {
        StepAction::Run { script, shell } => {
            Box::new(crate::runner::script::Script { script, shell: shell.as_ref() })
        }
        StepAction::Checkout => Box::new(checkout::Checkout),
        StepAction::UploadArtifact { name, path, if_no_files_found, retention_days, output_type } => {
            Box::new(artifact::Upload {
                name,
                path,
                if_no_files_found,
                retention_days: *retention_days,
                output_type: output_type.as_deref(),
            })
        }
        StepAction::DownloadArtifact { name, path, pattern, merge_multiple } => {
            Box::new(artifact::Download(DownloadRequest {
                name: name.as_ref(),
                path: path.as_ref(),
                pattern: pattern.as_ref(),
                merge_multiple: *merge_multiple,
            }))
        }
        StepAction::Detect { ignore_scripts } => Box::new(detect::Detect { ignore_scripts: *ignore_scripts }),
        StepAction::Package { name, path, output_type, retention_days, commit } => {
            Box::new(package::Package(PackageStep {
                name,
                path: path.as_ref(),
                output_type: output_type.as_ref(),
                retention_days: *retention_days,
                commit: commit.as_ref(),
            }))
        }
        StepAction::Cache { key, path, restore_keys, lookup_only, fail_on_miss } => Box::new(cache::Cache {
            key,
            path,
            restore_keys: restore_keys.as_ref(),
            lookup_only: *lookup_only,
            fail_on_miss: *fail_on_miss,
        }),
        StepAction::Setup { tool, uses, with } => Box::new(setup::Setup { tool: *tool, uses, with }),
        StepAction::LocalAction { path, with } => Box::new(composite::Local { path, with }),
        StepAction::Uploader { uses } => Box::new(Uploader { uses }),
        StepAction::Unsupported { uses } => Box::new(Unsupported { uses }),
    }
}

/// A coverage/report uploader: skipped with a notice (the build loop
/// refuses the job first when the operator refuses uploaders).
struct Uploader<'a> {
    uses: &'a str,
}

impl Builtin for Uploader<'_> {
    fn title(&self) -> String {
        format!("Run {}", self.uses)
    }

    fn run<'s>(&'s self, run: &'s mut JobRun<'_>, at: StepAt<'s>) -> StepFut<'s> {
        Box::pin(async move {
            run.req.emitter.log(
                &at.job.id,
                at.name,
                at.step.phase(&at.job.spec).as_str(),
                Stream::System,
                format!(
                    "skipped `{}`: coverage/report uploaders need a third party's token and host",
                    self.uses
                ),
            );
            Ok((StepStatus::Skipped, None, None, 0.0, 0, None))
        })
    }
}

/// An action kiln does not have (the build loop skips its job first; a
/// composite action's nested step can still name one).
struct Unsupported<'a> {
    uses: &'a str,
}

impl Builtin for Unsupported<'_> {
    fn title(&self) -> String {
        format!("Run {}", self.uses)
    }

    fn run<'s>(&'s self, _run: &'s mut JobRun<'_>, _at: StepAt<'s>) -> StepFut<'s> {
        Box::pin(
            async move { Err(StepError::User(format!("`uses: {}` is not an action kiln has", self.uses))) },
        )
    }
}
