//! Read-only queries on the engine's `state.db` (schema version 1, written
//! by `kiln_engine::store`): the logs, jobs, steps, artifacts and audit
//! rows of one attempt, by its engine build id.
//!
//! The server reads with its own read-only connections rather than through
//! `kiln_engine::store::Store::open`, which also runs the engine's crash
//! recovery: a reader must never change what it reads.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ServerError;

/// A read-only connection to `state.db`.
#[derive(Debug)]
pub struct StateReader {
    conn: Connection,
}

/// One log entry of the build's log as the API numbers it.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Position in the build's log (`Last-Event-ID`): the attempt's
    /// `log_base` plus the engine's gap-free `seq`.
    pub id: i64,
    pub ts: String,
    pub attempt: i64,
    pub job: String,
    pub step: String,
    pub phase: String,
    pub stream: String,
    pub text: String,
}

impl StateReader {
    pub fn open(state_dir: &Path) -> Result<StateReader, ServerError> {
        let path: PathBuf = state_dir.join("state.db");
        if !path.exists() {
            // Let the engine create it with its schema first.
            drop(kiln_engine::store::Store::open(state_dir)?);
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(StateReader { conn })
    }

    /// The highest `seq` of an attempt's log (0 when it has none).
    pub fn max_seq(&self, engine_id: &str) -> Result<i64, ServerError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM logs WHERE build_id = ?1",
            [engine_id],
            |r| r.get(0),
        )?)
    }

    /// Log entries of one attempt with `seq > after_seq`, at most `limit`.
    pub fn logs_after(
        &self,
        engine_id: &str,
        attempt: i64,
        log_base: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<LogLine>, ServerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, ts, job, step, phase, stream, text FROM logs WHERE build_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![engine_id, after_seq, limit], |r| {
                Ok(LogLine {
                    id: log_base + r.get::<_, i64>(0)?,
                    ts: r.get(1)?,
                    attempt,
                    job: r.get(2)?,
                    step: r.get(3)?,
                    phase: r.get(4)?,
                    stream: r.get(5)?,
                    text: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The phase each step of an attempt ran in, as its log recorded it:
    /// `(job, step, phase)`, in order of first appearance.
    pub fn step_phases(&self, engine_id: &str) -> Result<Vec<(String, String, String)>, ServerError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT job, step, phase FROM logs WHERE build_id = ?1 AND phase != '' \
             GROUP BY job, step, phase ORDER BY MIN(seq)",
        )?;
        let rows = stmt
            .query_map([engine_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Bytes of log text of one attempt.
    pub fn log_bytes(&self, engine_id: &str) -> Result<i64, ServerError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM logs WHERE build_id = ?1",
            [engine_id],
            |r| r.get(0),
        )?)
    }

    /// Bytes an attempt restored from and saved to the build cache. A
    /// state.db from before the cache was counted has no table: zero.
    pub fn cache_bytes(&self, engine_id: &str) -> Result<(u64, u64), ServerError> {
        let r = self.conn.query_row(
            "SELECT COALESCE(SUM(CASE WHEN op = 'restore' THEN bytes END), 0), \
                    COALESCE(SUM(CASE WHEN op = 'save' THEN bytes END), 0) FROM cache_ops WHERE build_id = ?1",
            [engine_id],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        );
        match r {
            Ok(v) => Ok(v),
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => Ok((0, 0)),
            Err(e) => Err(e.into()),
        }
    }

    /// Jobs of one attempt with their steps, as JSON.
    pub fn jobs(&self, engine_id: &str) -> Result<Vec<Value>, ServerError> {
        let mut jobs_stmt = self.conn.prepare(
            "SELECT idx, id, name, status, started_at, finished_at, exit_code, reason, cpu_seconds, peak_memory_bytes, \
             redactions FROM jobs WHERE build_id = ?1 ORDER BY idx",
        )?;
        let mut steps_stmt = self.conn.prepare(
            "SELECT idx, name, outcome, conclusion, started_at, finished_at, exit_code, reason, cpu_seconds, \
             peak_memory_bytes FROM steps WHERE build_id = ?1 AND job_idx = ?2 ORDER BY idx",
        )?;
        let jobs: Vec<(i64, Value)> = jobs_stmt
            .query_map([engine_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    json!({
                        "id": r.get::<_, String>(1)?,
                        "name": r.get::<_, String>(2)?,
                        "status": r.get::<_, String>(3)?,
                        "started_at": r.get::<_, Option<String>>(4)?,
                        "finished_at": r.get::<_, Option<String>>(5)?,
                        "exit_code": r.get::<_, Option<i64>>(6)?,
                        "reason": r.get::<_, Option<String>>(7)?,
                        "cpu_seconds": r.get::<_, Option<f64>>(8)?,
                        "peak_memory_bytes": r.get::<_, Option<i64>>(9)?,
                        "redactions": r.get::<_, i64>(10)?,
                    }),
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(jobs.len());
        for (idx, mut job) in jobs {
            let steps: Vec<Value> = steps_stmt
                .query_map(params![engine_id, idx], |r| {
                    Ok(json!({
                        "name": r.get::<_, String>(1)?,
                        "outcome": r.get::<_, String>(2)?,
                        "conclusion": r.get::<_, String>(3)?,
                        "started_at": r.get::<_, Option<String>>(4)?,
                        "finished_at": r.get::<_, Option<String>>(5)?,
                        "exit_code": r.get::<_, Option<i64>>(6)?,
                        "reason": r.get::<_, Option<String>>(7)?,
                        "cpu_seconds": r.get::<_, Option<f64>>(8)?,
                        "peak_memory_bytes": r.get::<_, Option<i64>>(9)?,
                    }))
                })?
                .collect::<Result<_, _>>()?;
            job["steps"] = Value::Array(steps);
            out.push(job);
        }
        Ok(out)
    }

    /// Artifacts an attempt stored, with their output type and scan verdict.
    pub fn artifacts(&self, engine_id: &str) -> Result<Vec<Value>, ServerError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, id, job, files, bytes, created_at, provenance, output_type, status, scan \
             FROM artifacts WHERE build_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt
            .query_map([engine_id], |r| {
                Ok(json!({
                    "name": r.get::<_, String>(0)?,
                    "id": r.get::<_, String>(1)?,
                    "job": r.get::<_, String>(2)?,
                    "files": r.get::<_, i64>(3)?,
                    "bytes": r.get::<_, i64>(4)?,
                    "created_at": r.get::<_, String>(5)?,
                    "provenance": r.get::<_, Option<String>>(6)?,
                    "output_type": r.get::<_, String>(7)?,
                    "status": r.get::<_, String>(8)?,
                    "scan": r.get::<_, Option<String>>(9)?,
                }))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The scan's verdict of an artifact id: `(status, findings)`, where
    /// status is `ready` or `quarantined`; `None` if the engine recorded none.
    pub fn scan_of(&self, artifact: &str) -> Result<Option<(String, Option<String>)>, ServerError> {
        use rusqlite::OptionalExtension as _;
        Ok(self
            .conn
            .query_row(
                "SELECT status, scan FROM artifacts WHERE id = ?1 ORDER BY rowid DESC LIMIT 1",
                [artifact],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Provenance envelope digests recorded for an artifact id, newest first.
    pub fn provenances(&self, artifact: &str) -> Result<Vec<String>, ServerError> {
        let mut stmt = self.conn.prepare(
            "SELECT provenance FROM artifacts WHERE id = ?1 AND provenance IS NOT NULL ORDER BY rowid DESC",
        )?;
        let rows = stmt.query_map([artifact], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
