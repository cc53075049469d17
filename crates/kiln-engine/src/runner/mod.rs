//! Running one job: the seam between the build loop and sandboxes.
//!
//! The build loop hands a [`JobRequest`] to a [`JobRunner`] and gets a
//! [`JobOutcome`] back. [`sandbox::SandboxRunner`] is the real runner; the
//! benchmark's no-op runner measures the loop alone.

pub mod artifacts;
mod beneath;
mod builtins;
mod env;
#[cfg(test)]
mod fake;
pub mod globs;
mod host;
mod job;
mod phase;
mod placement;
pub mod sandbox;
mod script;
mod services;
mod stepfiles;
mod workspace_copy;
pub mod zeroconfig;

/// For the fuzz targets (`fuzz/`): the step files' parser. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::stepfiles::{parse_assignments, StepFileError};
}

use std::future::Future;
use std::sync::{Arc, Mutex};

use kiln_workflow::{Contexts, JobResult, Plan};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::event::Event;
use crate::log::{LogEntry, Stream};

/// What a runner is asked to do.
#[derive(Debug)]
pub struct JobRequest {
    pub build: String,
    pub plan: Arc<Plan>,
    /// Index into `plan.jobs`.
    pub job: usize,
    /// `github`, `env` (workflow level), `matrix`, `needs`, `strategy`, `runner`.
    pub contexts: Contexts,
    /// Becomes `true` when the job must stop (build cancelled, or fail-fast).
    pub cancel: watch::Receiver<bool>,
    pub emitter: Emitter,
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub result: JobResult,
    pub outputs: serde_json::Map<String, serde_json::Value>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub cpu_seconds: f64,
    pub peak_memory_bytes: u64,
    /// Secret values and token patterns scrubbed from the job's output.
    pub redactions: u64,
}

impl JobOutcome {
    pub fn new(result: JobResult) -> JobOutcome {
        JobOutcome {
            result,
            outputs: Default::default(),
            exit_code: None,
            reason: None,
            cpu_seconds: 0.0,
            peak_memory_bytes: 0,
            redactions: 0,
        }
    }
}

/// Runs jobs.
pub trait JobRunner: Send + Sync + 'static {
    fn run_job(&self, req: JobRequest) -> impl Future<Output = JobOutcome> + Send;
}

/// A step's `outcome`/`conclusion` (GitHub's strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Success,
    Failure,
    Cancelled,
    Skipped,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Success => "success",
            StepStatus::Failure => "failure",
            StepStatus::Cancelled => "cancelled",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// What is kept of one step.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub outcome: StepStatus,
    pub conclusion: StepStatus,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub cpu_seconds: f64,
    pub peak_memory_bytes: u64,
    /// `$GITHUB_STEP_SUMMARY`, if the step wrote one (scrubbed).
    pub summary: Option<String>,
    /// Secret values and token patterns scrubbed from the step's output.
    pub redactions: u64,
}

/// Sends a build's events, numbering log entries.
///
/// One lock covers numbering and sending, so `seq` order is channel order.
#[derive(Debug, Clone)]
pub struct Emitter {
    inner: Arc<Mutex<EmitterInner>>,
    build: Arc<str>,
    /// Some channel takes the events (else an event is built for nobody).
    listening: bool,
    /// Every string kiln puts into an event (step names, reasons, kiln's
    /// own messages, cache keys, artifact names) passes it: a value that
    /// came from a secret never reaches a terminal, a stream or the store.
    scrubber: Option<Arc<kiln_secrets::Scrubber>>,
}

#[derive(Debug)]
struct EmitterInner {
    seq: u64,
    ui: Option<mpsc::UnboundedSender<Event>>,
    store: Option<std::sync::mpsc::Sender<Event>>,
}

impl Emitter {
    pub fn new(
        build: &str,
        ui: Option<mpsc::UnboundedSender<Event>>,
        store: Option<std::sync::mpsc::Sender<Event>>,
    ) -> Emitter {
        Emitter {
            listening: ui.is_some() || store.is_some(),
            inner: Arc::new(Mutex::new(EmitterInner { seq: 0, ui, store })),
            build: build.into(),
            scrubber: None,
        }
    }

    /// The same emitter, scrubbing every string with the build's scrubber.
    pub fn with_scrubber(mut self, scrubber: Arc<kiln_secrets::Scrubber>) -> Emitter {
        self.scrubber = Some(scrubber);
        self
    }

    pub(crate) fn clean(&self, s: String) -> String {
        match &self.scrubber {
            Some(sc) if !s.is_empty() => sc.scrub_str(&s),
            _ => s,
        }
    }

    fn clean_opt(&self, s: Option<String>) -> Option<String> {
        s.map(|s| self.clean(s))
    }

    /// Scrubs every string field of an event.
    fn clean_event(&self, event: Event) -> Event {
        if self.scrubber.is_none() {
            return event;
        }
        let summary = |s: &Self, mut j: crate::build::JobSummary| {
            j.name = s.clean(j.name);
            j.reason = s.clean_opt(j.reason);
            j
        };
        match event {
            Event::BuildStarted { build, pipeline, jobs } => Event::BuildStarted {
                build,
                pipeline: self.clean(pipeline),
                jobs: jobs.into_iter().map(|(id, name)| (id, self.clean(name))).collect(),
            },
            Event::JobStarted { job, id, started_at } => Event::JobStarted { job, id, started_at },
            Event::StepStarted { job, step, name } => {
                Event::StepStarted { job, step, name: self.clean(name) }
            }
            Event::StepFinished { job, step, mut record } => {
                record.name = self.clean(record.name);
                record.reason = self.clean_opt(record.reason);
                record.summary = self.clean_opt(record.summary);
                Event::StepFinished { job, step, record }
            }
            Event::JobFinished { job, summary: s } => Event::JobFinished { job, summary: summary(self, s) },
            Event::Log(mut e) => {
                e.step = self.clean(e.step);
                e.text = self.clean(e.text);
                Event::Log(e)
            }
            Event::Artifact { job, name, id, files, bytes, provenance, output_type, status, scan } => {
                Event::Artifact {
                    job,
                    name: self.clean(name),
                    id,
                    files,
                    bytes,
                    provenance,
                    output_type,
                    status,
                    scan: self.clean_opt(scan),
                }
            }
            Event::Cache { job, key, write, files, bytes } => {
                Event::Cache { job, key: self.clean(key), write, files, bytes }
            }
            Event::Audit { kind, job, step, detail } => {
                Event::Audit { kind, job, step: self.clean(step), detail: self.clean(detail) }
            }
            Event::BuildFinished(mut b) => {
                b.jobs = b.jobs.into_iter().map(|j| summary(self, j)).collect();
                Event::BuildFinished(b)
            }
        }
    }

    pub fn build(&self) -> &str {
        &self.build
    }

    /// Emits the event `make` builds, building it only when some channel
    /// takes events: for events whose payload costs copies (a job's
    /// summary, the whole job list) on a path every job takes.
    pub fn emit_with(&self, make: impl FnOnce() -> Event) {
        if self.listening {
            self.emit(make());
        }
    }

    pub fn emit(&self, event: Event) {
        let event = self.clean_event(event);
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.send(event);
    }

    /// Emits one log line kiln composed (scrubbed).
    pub fn log(&self, job: &str, step: &str, phase: &str, stream: Stream, text: String) {
        let text = self.clean(text);
        let step = self.clean(step.to_string());
        self.log_scrubbed(job, &step, phase, stream, text);
    }

    /// Emits one line of a step's output that the stream scrubber already
    /// went over (and whose step name was cleaned once, see
    /// [`Emitter::clean`]).
    pub(crate) fn log_scrubbed(&self, job: &str, step: &str, phase: &str, stream: Stream, text: String) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.seq += 1;
        let entry = LogEntry {
            ts: crate::time::now_rfc3339(),
            build: self.build.to_string(),
            job: job.to_string(),
            step: step.to_string(),
            phase: phase.to_string(),
            stream,
            seq: inner.seq,
            text,
        };
        inner.send(Event::Log(entry));
    }
}

impl EmitterInner {
    fn send(&self, event: Event) {
        if let Some(store) = &self.store {
            let _ = store.send(event.clone());
        }
        if let Some(ui) = &self.ui {
            let _ = ui.send(event);
        }
    }
}
