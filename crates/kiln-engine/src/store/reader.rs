//! Every query that reads `state.db`, in one place: [`Store`]'s reads (the
//! CLI, the engine) and [`StateReader`]'s (a server answering for builds
//! its workers ran) run the same statements, so the schema is read only
//! here and in [`super::writer`].
//!
//! [`StateReader`] opens its own read-only connection instead of going
//! through [`Store::open`], which also runs crash recovery: a reader must
//! never change what it reads.
//!
//! [`Store`]: super::Store
//! [`Store::open`]: super::Store::open

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::{ArtifactRow, AuditRow, DeliveryRow, JobRow};
use crate::error::EngineError;
use crate::log::{LogEntry, Stream};

/// A read-only connection to `state.db`.
#[derive(Debug)]
pub struct StateReader {
    conn: Connection,
}

/// A step of a job, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    pub name: String,
    pub outcome: String,
    pub conclusion: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub cpu_seconds: Option<f64>,
    pub peak_memory_bytes: Option<i64>,
}

/// A job with its steps.
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobRow,
    pub steps: Vec<StepRow>,
}

impl StateReader {
    /// Opens `state.db` under `state_dir` read-only (made first, with its
    /// schema, by the engine if there is none yet).
    pub fn open(state_dir: &Path) -> Result<StateReader, EngineError> {
        let path = state_dir.join("state.db");
        if !path.exists() {
            drop(super::Store::open(state_dir)?);
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(StateReader { conn })
    }

    /// The highest `seq` of a build's log (0 when it has none).
    pub fn max_seq(&self, build: &str) -> Result<i64, EngineError> {
        max_seq(&self.conn, build)
    }

    /// Log entries of a build with `seq > after_seq`, at most `limit`.
    pub fn logs_after(&self, build: &str, after_seq: i64, limit: i64) -> Result<Vec<LogEntry>, EngineError> {
        logs_after(&self.conn, build, after_seq, limit)
    }

    /// The phase each step of a build ran in, as its log recorded it:
    /// `(job, step, phase)`, in order of first appearance.
    pub fn step_phases(&self, build: &str) -> Result<Vec<(String, String, String)>, EngineError> {
        step_phases(&self.conn, build)
    }

    /// Bytes of log text of a build.
    pub fn log_bytes(&self, build: &str) -> Result<i64, EngineError> {
        log_bytes(&self.conn, build)
    }

    /// Bytes a build restored from and saved to the build cache.
    pub fn cache_bytes(&self, build: &str) -> Result<(u64, u64), EngineError> {
        cache_bytes(&self.conn, build)
    }

    /// Jobs of a build with their steps.
    pub fn jobs_with_steps(&self, build: &str) -> Result<Vec<JobDetail>, EngineError> {
        jobs_with_steps(&self.conn, build)
    }

    pub fn artifacts(&self, build: &str) -> Result<Vec<ArtifactRow>, EngineError> {
        artifacts(&self.conn, build)
    }

    /// The scan verdict recorded for an artifact id (newest), and its findings.
    pub fn scan_of(&self, artifact: &str) -> Result<Option<(String, Option<String>)>, EngineError> {
        scan_of(&self.conn, artifact)
    }

    /// Provenance envelope digests recorded for an artifact id, newest first.
    pub fn provenances(&self, artifact: &str) -> Result<Vec<String>, EngineError> {
        provenances(&self.conn, artifact)
    }
}

pub(super) fn max_seq(conn: &Connection, build: &str) -> Result<i64, EngineError> {
    Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM logs WHERE build_id = ?1", [build], |r| r.get(0))?)
}

fn log_entry(build: &str, r: &rusqlite::Row<'_>) -> rusqlite::Result<LogEntry> {
    Ok(LogEntry {
        ts: r.get(0)?,
        build: build.to_string(),
        job: r.get(1)?,
        step: r.get(2)?,
        phase: r.get(3)?,
        stream: Stream::parse(&r.get::<_, String>(4)?),
        seq: r.get::<_, i64>(5)? as u64,
        text: r.get(6)?,
    })
}

pub(super) fn logs_after(
    conn: &Connection,
    build: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<LogEntry>, EngineError> {
    let mut stmt = conn.prepare_cached(
        "SELECT ts, job, step, phase, stream, seq, text FROM logs WHERE build_id = ?1 AND seq > ?2 \
         ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![build, after_seq, limit], |r| log_entry(build, r))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn step_phases(
    conn: &Connection,
    build: &str,
) -> Result<Vec<(String, String, String)>, EngineError> {
    let mut stmt = conn.prepare_cached(
        "SELECT job, step, phase FROM logs WHERE build_id = ?1 AND phase != '' \
         GROUP BY job, step, phase ORDER BY MIN(seq)",
    )?;
    let rows =
        stmt.query_map([build], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn log_bytes(conn: &Connection, build: &str) -> Result<i64, EngineError> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM logs WHERE build_id = ?1",
        [build],
        |r| r.get(0),
    )?)
}

/// A state.db from before the cache was counted has no table: zero.
pub(super) fn cache_bytes(conn: &Connection, build: &str) -> Result<(u64, u64), EngineError> {
    let r = conn.query_row(
        "SELECT COALESCE(SUM(CASE WHEN op = 'restore' THEN bytes END), 0), \
                COALESCE(SUM(CASE WHEN op = 'save' THEN bytes END), 0) FROM cache_ops WHERE build_id = ?1",
        [build],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    );
    match r {
        Ok(v) => Ok(v),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => Ok((0, 0)),
        Err(e) => Err(e.into()),
    }
}

/// Jobs with their index (for their steps).
fn jobs_indexed(conn: &Connection, build: &str) -> Result<Vec<(i64, JobRow)>, EngineError> {
    let mut stmt = conn.prepare_cached(
        "SELECT idx, id, name, status, started_at, finished_at, exit_code, reason, cpu_seconds, \
         peak_memory_bytes, redactions FROM jobs WHERE build_id = ?1 ORDER BY idx",
    )?;
    let rows = stmt
        .query_map([build], |r| {
            Ok((
                r.get(0)?,
                JobRow {
                    id: r.get(1)?,
                    name: r.get(2)?,
                    status: r.get(3)?,
                    started_at: r.get(4)?,
                    finished_at: r.get(5)?,
                    exit_code: r.get(6)?,
                    reason: r.get(7)?,
                    cpu_seconds: r.get(8)?,
                    peak_memory_bytes: r.get(9)?,
                    redactions: r.get(10)?,
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn jobs(conn: &Connection, build: &str) -> Result<Vec<JobRow>, EngineError> {
    Ok(jobs_indexed(conn, build)?.into_iter().map(|(_, j)| j).collect())
}

pub(super) fn jobs_with_steps(conn: &Connection, build: &str) -> Result<Vec<JobDetail>, EngineError> {
    let mut steps = conn.prepare_cached(
        "SELECT name, outcome, conclusion, started_at, finished_at, exit_code, reason, cpu_seconds, \
         peak_memory_bytes FROM steps WHERE build_id = ?1 AND job_idx = ?2 ORDER BY idx",
    )?;
    let mut out = Vec::new();
    for (idx, job) in jobs_indexed(conn, build)? {
        let steps = steps
            .query_map(params![build, idx], |r| {
                Ok(StepRow {
                    name: r.get(0)?,
                    outcome: r.get(1)?,
                    conclusion: r.get(2)?,
                    started_at: r.get(3)?,
                    finished_at: r.get(4)?,
                    exit_code: r.get(5)?,
                    reason: r.get(6)?,
                    cpu_seconds: r.get(7)?,
                    peak_memory_bytes: r.get(8)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        out.push(JobDetail { job, steps });
    }
    Ok(out)
}

pub(super) fn logs(conn: &Connection, build: &str) -> Result<Vec<LogEntry>, EngineError> {
    logs_after(conn, build, -1, i64::MAX)
}

pub(super) fn artifacts(conn: &Connection, build: &str) -> Result<Vec<ArtifactRow>, EngineError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, id, job, files, bytes, created_at, provenance, output_type, status, scan \
         FROM artifacts WHERE build_id = ?1 ORDER BY rowid",
    )?;
    let rows = stmt
        .query_map([build], |r| {
            Ok(ArtifactRow {
                name: r.get(0)?,
                id: r.get(1)?,
                job: r.get(2)?,
                files: r.get(3)?,
                bytes: r.get(4)?,
                created_at: r.get(5)?,
                provenance: r.get(6)?,
                output_type: r.get(7)?,
                status: r.get(8)?,
                scan: r.get(9)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn scan_of(
    conn: &Connection,
    artifact: &str,
) -> Result<Option<(String, Option<String>)>, EngineError> {
    Ok(conn
        .query_row(
            "SELECT status, scan FROM artifacts WHERE id = ?1 ORDER BY rowid DESC LIMIT 1",
            [artifact],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

pub(super) fn provenances(conn: &Connection, artifact: &str) -> Result<Vec<String>, EngineError> {
    let mut stmt = conn.prepare_cached(
        "SELECT provenance FROM artifacts WHERE id = ?1 AND provenance IS NOT NULL ORDER BY rowid DESC",
    )?;
    let rows = stmt.query_map([artifact], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn deliveries(conn: &Connection, build: &str) -> Result<Vec<DeliveryRow>, EngineError> {
    let mut stmt = conn.prepare_cached(
        "SELECT url, artifact, delivered, attempts, at FROM deliveries WHERE build_id = ?1 ORDER BY rowid",
    )?;
    let rows = stmt
        .query_map([build], |r| {
            Ok(DeliveryRow {
                url: r.get(0)?,
                artifact: r.get(1)?,
                delivered: r.get(2)?,
                attempts: r.get(3)?,
                at: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(super) fn audit(conn: &Connection, build: &str) -> Result<Vec<AuditRow>, EngineError> {
    let mut stmt = conn
        .prepare_cached("SELECT ts, kind, job, step, detail FROM audit WHERE build_id = ?1 ORDER BY rowid")?;
    let rows = stmt
        .query_map([build], |r| {
            Ok(AuditRow {
                ts: r.get(0)?,
                kind: r.get(1)?,
                job: r.get(2)?,
                step: r.get(3)?,
                detail: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
