//! What a build tells the outside world while it runs.

use crate::build::{BuildSummary, JobSummary};
use crate::log::LogEntry;

/// One event of a running build, in order, on one channel.
#[derive(Debug, Clone)]
pub enum Event {
    /// The build has an id and a plan; nothing has run yet.
    BuildStarted {
        build: String,
        pipeline: String,
        jobs: Vec<(String, String)>,
    },
    JobStarted {
        job: usize,
        id: String,
        started_at: String,
    },
    StepStarted {
        job: usize,
        step: usize,
        name: String,
    },
    StepFinished {
        job: usize,
        step: usize,
        record: crate::runner::StepRecord,
    },
    JobFinished {
        job: usize,
        summary: JobSummary,
    },
    Log(LogEntry),
    /// An artifact was stored.
    Artifact {
        job: String,
        name: String,
        id: String,
        files: u64,
        bytes: u64,
        /// Digest of the signed provenance envelope, when signed.
        provenance: Option<String>,
        output_type: String,
        /// `ready`, `flagged` or `quarantined` (see the scan).
        status: String,
        /// The scan's findings, one per line.
        scan: Option<String>,
    },
    /// Bytes moved between the build cache and a workspace, for the usage
    /// record: `write` is a save, else a restore.
    Cache {
        job: String,
        key: String,
        write: bool,
        files: u64,
        bytes: u64,
    },
    /// Security-relevant, kept apart from the log: a secret handed to a
    /// step, egress blocked, a quota hit. Never carries a secret value.
    Audit {
        kind: String,
        job: String,
        step: String,
        detail: String,
    },
    BuildFinished(BuildSummary),
}
