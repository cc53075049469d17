//! The store's single writer: applies build events in small transactions.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::params;

use super::Store;
use crate::event::Event;

/// How long the writer lingers for more events after the first of a batch.
/// Group commit: a batch is what arrived while the last one was being
/// committed plus this, so an idle build's line is stored (and shown to
/// its live readers) within a few milliseconds, and a flood is still
/// written in large transactions.
const LINGER: Duration = Duration::from_millis(2);
const BATCH_MAX: usize = 1000;

/// A thread that owns a [`Store`] and records every event sent to it.
#[derive(Debug)]
pub struct StoreWriter {
    tx: Option<mpsc::Sender<Event>>,
    handle: Option<JoinHandle<Result<(), crate::EngineError>>>,
}

impl StoreWriter {
    pub fn spawn(store: Store, build: String) -> StoreWriter {
        let (tx, rx) = mpsc::channel::<Event>();
        let handle = std::thread::Builder::new()
            .name("kiln-store-writer".into())
            .spawn(move || run(store, build, rx))
            .expect("spawning the store writer thread");
        StoreWriter { tx: Some(tx), handle: Some(handle) }
    }

    pub fn sender(&self) -> mpsc::Sender<Event> {
        self.tx.clone().expect("writer is open")
    }

    /// Flushes everything sent so far and stops the thread.
    pub fn close(mut self) -> Result<(), crate::EngineError> {
        self.tx.take();
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Ok(()),
            None => Ok(()),
        }
    }
}

fn run(store: Store, build: String, rx: mpsc::Receiver<Event>) -> Result<(), crate::EngineError> {
    let mut batch = Vec::new();
    loop {
        let first = match rx.recv() {
            Ok(e) => e,
            Err(_) => return Ok(()),
        };
        batch.push(first);
        let deadline = Instant::now() + LINGER;
        while batch.len() < BATCH_MAX {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        apply(&store, &build, &batch)?;
        batch.clear();
        super::signal_commit(&build);
    }
}

fn apply(store: &Store, build: &str, events: &[Event]) -> Result<(), crate::EngineError> {
    let tx = store.conn().unchecked_transaction()?;
    for event in events {
        match event {
            Event::Log(l) => {
                tx.execute(
                    "INSERT OR IGNORE INTO logs (build_id, seq, ts, job, step, phase, stream, text) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![build, l.seq as i64, l.ts, l.job, l.step, l.phase, l.stream.as_str(), l.text],
                )?;
            }
            Event::JobStarted { job, started_at, .. } => {
                tx.execute(
                    "UPDATE jobs SET status = 'running', started_at = ?3 WHERE build_id = ?1 AND idx = ?2",
                    params![build, *job as i64, started_at],
                )?;
            }
            Event::StepFinished { job, step, record } => {
                tx.execute(
                    "INSERT OR REPLACE INTO steps (build_id, job_idx, idx, name, outcome, conclusion, started_at, \
                     finished_at, exit_code, reason, cpu_seconds, peak_memory_bytes, summary, redactions) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    params![
                        build,
                        *job as i64,
                        *step as i64,
                        record.name,
                        record.outcome.as_str(),
                        record.conclusion.as_str(),
                        record.started_at,
                        record.finished_at,
                        record.exit_code,
                        record.reason,
                        record.cpu_seconds,
                        record.peak_memory_bytes as i64,
                        record.summary,
                        record.redactions as i64,
                    ],
                )?;
            }
            Event::JobFinished { job, summary } => {
                tx.execute(
                    "UPDATE jobs SET status = ?3, name = ?4, started_at = ?5, finished_at = ?6, exit_code = ?7, \
                     reason = ?8, cpu_seconds = ?9, peak_memory_bytes = ?10, redactions = ?11 \
                     WHERE build_id = ?1 AND idx = ?2",
                    params![
                        build,
                        *job as i64,
                        summary.status,
                        summary.name,
                        summary.started_at,
                        summary.finished_at,
                        summary.exit_code,
                        summary.reason,
                        summary.cpu_seconds,
                        summary.peak_memory_bytes as i64,
                        summary.redactions as i64,
                    ],
                )?;
            }
            Event::BuildFinished(s) => {
                tx.execute(
                    "UPDATE builds SET status = ?2, finished_at = ?3 WHERE id = ?1",
                    params![build, s.status, crate::time::now_rfc3339()],
                )?;
            }
            Event::Cache { job, key, write, files, bytes } => {
                tx.execute(
                    "INSERT INTO cache_ops (build_id, job, key, op, files, bytes, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        build,
                        job,
                        key,
                        if *write { "save" } else { "restore" },
                        *files as i64,
                        *bytes as i64,
                        crate::time::now_rfc3339()
                    ],
                )?;
            }
            Event::Audit { kind, job, step, detail } => {
                tx.execute(
                    "INSERT INTO audit (build_id, ts, kind, job, step, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![build, crate::time::now_rfc3339(), kind, job, step, detail],
                )?;
            }
            Event::Artifact { job, name, id, files, bytes, provenance, output_type, status, scan } => {
                tx.execute(
                    "INSERT INTO artifacts (build_id, name, id, job, files, bytes, created_at, provenance, output_type, status, scan) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        build,
                        name,
                        id,
                        job,
                        *files as i64,
                        *bytes as i64,
                        crate::time::now_rfc3339(),
                        provenance,
                        output_type,
                        status,
                        scan
                    ],
                )?;
            }
            Event::BuildStarted { .. } | Event::StepStarted { .. } => {}
        }
    }
    tx.commit()?;
    Ok(())
}
