//! The kiln engine: runs one build of a [`kiln_workflow::Plan`].
//!
//! It owns the parts of a build that need time, processes and storage:
//! the Kahn-order job loop ([`build`]), the job runner that turns each step
//! into a sandbox ([`runner`]), the log pipeline from a sandbox's pipes to the
//! terminal and the state store ([`log`]), resource limits and how their hits
//! are classified ([`limits`]), and the embedded SQLite state store
//! ([`store`]).
//!
//! Design: the job loop is generic over a [`runner::JobRunner`], so the
//! scheduler's own overhead can be measured with a runner that does nothing,
//! and the seams for egress, secrets and the artifact store are the
//! [`runner::sandbox::SandboxRunner`]'s inputs rather than special cases in
//! the loop. Everything a build emits is an [`event::Event`] on one channel;
//! the front end (terminal, `--json`) and the store writer consume it.

pub mod build;
pub mod contexts;
pub mod error;
pub mod event;
pub mod execute;
pub mod git;
pub mod limits;
pub mod log;
pub mod runner;
pub mod store;
pub mod time;

pub use build::{run_build, BuildOptions, BuildSummary, JobSummary};
pub use error::EngineError;
pub use event::Event;
pub use execute::{BuildRequest, Executor, ExecutorConfig, RunnerPolicy, IMAGE_TENANT};
pub use log::{LogEntry, Stream};
