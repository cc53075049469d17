//! The embedded state store: builds, jobs, steps and logs in SQLite (WAL).
//!
//! The same schema serves `kiln run` (one process, one build) and, later, the
//! server. Writes go through one writer thread ([`StoreWriter`]) that commits
//! in small batches, so a crash or `kill -9` loses at most the last batch and
//! never leaves a half-written row: SQLite's journal makes every batch atomic.
//! Builds left `running` by a process that no longer exists are marked
//! `interrupted` when a store is next opened.

mod reader;
mod writer;

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

pub use reader::{JobDetail, StateReader, StepRow};
pub use writer::StoreWriter;

use crate::error::EngineError;
use crate::log::LogEntry;

const SCHEMA_VERSION: i64 = 2;

/// Builds this process is running right now. A process that runs several
/// builds at once (`kiln serve`, `kiln worker`) opens the store for each
/// one; a `running` row of this very pid is interrupted only when it is not
/// in this set (a dead process whose pid was reused by this one).
static LIVE: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Marks a build as running in this process until the guard is dropped.
#[derive(Debug)]
pub struct LiveBuild(String);

impl LiveBuild {
    pub fn new(id: &str) -> LiveBuild {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string());
        LiveBuild(id.to_string())
    }
}

impl Drop for LiveBuild {
    fn drop(&mut self) {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// Commit signals, per build: a reader of a build's log in this process
/// (a live log stream) waits on its build's signal instead of polling.
/// Entries whose readers are all gone are dropped at the next commit.
static COMMITS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, tokio::sync::watch::Sender<u64>>>,
> = std::sync::LazyLock::new(Default::default);

/// A signal that changes every time this process's writer commits
/// events of `build` (its log lines among them).
pub fn watch_commits(build: &str) -> tokio::sync::watch::Receiver<u64> {
    let mut g = COMMITS.lock().unwrap_or_else(|e| e.into_inner());
    if g.len() > 4096 {
        g.retain(|_, tx| tx.receiver_count() > 0);
    }
    g.entry(build.to_string()).or_insert_with(|| tokio::sync::watch::channel(0).0).subscribe()
}

/// Wakes the readers of `build` after a commit.
pub(crate) fn signal_commit(build: &str) {
    let mut g = COMMITS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = g.get(build) {
        if tx.receiver_count() == 0 {
            g.remove(build);
        } else {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

fn is_live(id: &str) -> bool {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).contains(id)
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS builds (
    id          TEXT PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    source      TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    finished_at TEXT,
    pid         INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    build_id    TEXT NOT NULL REFERENCES builds(id),
    idx         INTEGER NOT NULL,
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    exit_code   INTEGER,
    reason      TEXT,
    cpu_seconds REAL,
    peak_memory_bytes INTEGER,
    redactions INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (build_id, idx)
);
CREATE TABLE IF NOT EXISTS steps (
    build_id    TEXT NOT NULL,
    job_idx     INTEGER NOT NULL,
    idx         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    conclusion  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    exit_code   INTEGER,
    reason      TEXT,
    cpu_seconds REAL,
    peak_memory_bytes INTEGER,
    summary     TEXT,
    redactions  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (build_id, job_idx, idx)
);
CREATE TABLE IF NOT EXISTS artifacts (
    build_id   TEXT NOT NULL,
    name       TEXT NOT NULL,
    id         TEXT NOT NULL,
    job        TEXT NOT NULL,
    files      INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    provenance TEXT,
    output_type TEXT NOT NULL DEFAULT 'static',
    status     TEXT NOT NULL DEFAULT 'ready',
    scan       TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    build_id TEXT NOT NULL,
    ts       TEXT NOT NULL,
    kind     TEXT NOT NULL,
    job      TEXT NOT NULL,
    step     TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cache_ops (
    build_id TEXT NOT NULL,
    job      TEXT NOT NULL,
    key      TEXT NOT NULL,
    op       TEXT NOT NULL,
    files    INTEGER NOT NULL,
    bytes    INTEGER NOT NULL,
    ts       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    build_id  TEXT NOT NULL,
    url       TEXT NOT NULL,
    artifact  TEXT NOT NULL,
    delivered INTEGER NOT NULL,
    attempts  TEXT NOT NULL,
    at        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS logs (
    build_id TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    ts       TEXT NOT NULL,
    job      TEXT NOT NULL,
    step     TEXT NOT NULL,
    phase    TEXT NOT NULL,
    stream   TEXT NOT NULL,
    text     TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
) WITHOUT ROWID;
"#;

/// A build as `kiln builds` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct BuildRow {
    pub id: String,
    pub pipeline: String,
    pub source: String,
    pub status: String,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// A job row of a stored build.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: String,
    pub name: String,
    pub status: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub cpu_seconds: Option<f64>,
    pub peak_memory_bytes: Option<i64>,
    pub redactions: i64,
}

/// An artifact a build stored.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactRow {
    pub name: String,
    pub id: String,
    pub job: String,
    pub files: i64,
    pub bytes: i64,
    pub created_at: String,
    /// Digest of the signed provenance envelope in the blob store.
    pub provenance: Option<String>,
    /// `static`, `server`, `function` or `container-image`.
    pub output_type: String,
    /// `ready` (deployable), `flagged` (deployable, a low-confidence scan
    /// finding) or `quarantined` (kept, not deployable).
    pub status: String,
    /// The scan's findings, one per line.
    pub scan: Option<String>,
}

/// A deployment webhook delivery of a build.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    pub url: String,
    pub artifact: String,
    pub delivered: bool,
    /// JSON list of attempts.
    pub attempts: String,
    pub at: String,
}

/// An audit event of a stored build.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub ts: String,
    pub kind: String,
    pub job: String,
    pub step: String,
    pub detail: String,
}

/// A connection to the state store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Builds this open marked as interrupted (their sandboxes need cleaning).
    interrupted: Vec<String>,
}

impl Store {
    /// Opens (creating if needed) `state.db` under `dir`, and marks builds whose
    /// process is gone as interrupted.
    pub fn open(dir: &Path) -> Result<Store, EngineError> {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io("creating state dir", dir, e))?;
        let path = dir.join("state.db");
        let wrap = |source| EngineError::Store { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(wrap)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(wrap)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(wrap)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(wrap)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(wrap)?;
        if version > SCHEMA_VERSION {
            return Err(EngineError::Store {
                path: path.clone(),
                source: rusqlite::Error::InvalidParameterName(format!(
                    "schema version {version} is newer than this kiln understands ({SCHEMA_VERSION})"
                )),
            });
        }
        if version == 1 {
            // v2: artifacts carry their output type and scan verdict.
            conn.execute_batch(
                "ALTER TABLE artifacts ADD COLUMN output_type TEXT NOT NULL DEFAULT 'static';
                 ALTER TABLE artifacts ADD COLUMN status TEXT NOT NULL DEFAULT 'ready';
                 ALTER TABLE artifacts ADD COLUMN scan TEXT;",
            )
            .map_err(wrap)?;
        }
        conn.execute_batch(SCHEMA).map_err(wrap)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(wrap)?;
        let mut store = Store { conn, path, interrupted: Vec::new() };
        store.interrupted = store.mark_interrupted()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Builds found interrupted when this store was opened.
    pub fn interrupted(&self) -> &[String] {
        &self.interrupted
    }

    /// Builds (and their jobs) still `running` whose process no longer exists.
    fn mark_interrupted(&self) -> Result<Vec<String>, EngineError> {
        let mut stmt = self.conn.prepare("SELECT id, pid FROM builds WHERE status = 'running'")?;
        let rows: Vec<(String, i64)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        let mut marked = Vec::new();
        for (id, pid) in rows {
            let ours = pid as u32 == std::process::id();
            if (ours && is_live(&id)) || (!ours && Path::new(&format!("/proc/{pid}")).exists()) {
                continue;
            }
            let now = crate::time::now_rfc3339();
            self.conn.execute(
                "UPDATE builds SET status = 'interrupted', finished_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            self.conn.execute(
                "UPDATE jobs SET status = 'interrupted', finished_at = ?2 \
                 WHERE build_id = ?1 AND status IN ('running', 'pending')",
                params![id, now],
            )?;
            marked.push(id);
        }
        Ok(marked)
    }

    pub fn insert_build(
        &self,
        id: &str,
        pipeline: &str,
        source: &str,
        jobs: &[(String, String)],
    ) -> Result<(), EngineError> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO builds (id, pipeline, source, status, created_at, pid) VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
            params![id, pipeline, source, crate::time::now_rfc3339(), std::process::id()],
        )?;
        for (i, (job_id, name)) in jobs.iter().enumerate() {
            tx.execute(
                "INSERT INTO jobs (build_id, idx, id, name, status) VALUES (?1, ?2, ?3, ?4, 'pending')",
                params![id, i as i64, job_id, name],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn builds(&self, limit: usize) -> Result<Vec<BuildRow>, EngineError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, pipeline, source, status, created_at, finished_at FROM builds ORDER BY created_at DESC, id DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(BuildRow {
                    id: r.get(0)?,
                    pipeline: r.get(1)?,
                    source: r.get(2)?,
                    status: r.get(3)?,
                    created_at: r.get(4)?,
                    finished_at: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Resolves a build id or a unique prefix of one (`latest` is the newest).
    pub fn resolve_build(&self, id: &str) -> Result<BuildRow, EngineError> {
        let all = if id == "latest" { self.builds(1)? } else { self.builds(usize::MAX >> 1)? };
        let mut found = all.into_iter().filter(|b| id == "latest" || b.id == id || b.id.starts_with(id));
        match (found.next(), found.next()) {
            (Some(b), None) => Ok(b),
            _ => Err(EngineError::UnknownBuild(id.to_string())),
        }
    }

    pub fn jobs(&self, build: &str) -> Result<Vec<JobRow>, EngineError> {
        reader::jobs(&self.conn, build)
    }

    pub fn logs(&self, build: &str) -> Result<Vec<LogEntry>, EngineError> {
        reader::logs(&self.conn, build)
    }

    pub fn artifacts(&self, build: &str) -> Result<Vec<ArtifactRow>, EngineError> {
        reader::artifacts(&self.conn, build)
    }

    /// Bytes a build restored from and saved to the build cache.
    pub fn cache_bytes(&self, build: &str) -> Result<(u64, u64), EngineError> {
        reader::cache_bytes(&self.conn, build)
    }

    /// Records a deployment webhook delivery.
    pub fn insert_delivery(&self, build: &str, d: &DeliveryRow) -> Result<(), EngineError> {
        self.conn.execute(
            "INSERT INTO deliveries (build_id, url, artifact, delivered, attempts, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![build, d.url, d.artifact, d.delivered, d.attempts, d.at],
        )?;
        Ok(())
    }

    pub fn deliveries(&self, build: &str) -> Result<Vec<DeliveryRow>, EngineError> {
        reader::deliveries(&self.conn, build)
    }

    /// The scan verdict recorded for an artifact id (newest), and its findings.
    pub fn scan_of(&self, artifact: &str) -> Result<Option<(String, Option<String>)>, EngineError> {
        reader::scan_of(&self.conn, artifact)
    }

    /// The newest provenance envelope digest recorded for an artifact id.
    pub fn provenance_of(&self, artifact: &str) -> Result<Option<String>, EngineError> {
        Ok(reader::provenances(&self.conn, artifact)?.into_iter().next())
    }

    pub fn audit(&self, build: &str) -> Result<Vec<AuditRow>, EngineError> {
        reader::audit(&self.conn, build)
    }

    /// The status of one build, if it exists.
    pub fn build_status(&self, build: &str) -> Result<Option<String>, EngineError> {
        Ok(self
            .conn
            .query_row("SELECT status FROM builds WHERE id = ?1", [build], |r| r.get(0))
            .optional()?)
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_build_of_a_dead_process_is_interrupted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert_build("b1", "ci", "/src", &[("build".into(), "build".into())]).unwrap();
        // Pretend the build belongs to a process that is gone.
        store.conn.execute("UPDATE builds SET pid = 999999999", []).unwrap();
        store.conn.execute("UPDATE jobs SET status = 'running'", []).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.build_status("b1").unwrap().as_deref(), Some("interrupted"));
        assert_eq!(store.jobs("b1").unwrap()[0].status, "interrupted");
    }

    #[test]
    fn prefixes_resolve_uniquely() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert_build("abc1", "ci", "/src", &[]).unwrap();
        store.insert_build("abd2", "ci", "/src", &[]).unwrap();
        assert_eq!(store.resolve_build("abc").unwrap().id, "abc1");
        assert!(store.resolve_build("ab").is_err());
        assert!(store.resolve_build("zz").is_err());
    }
}
