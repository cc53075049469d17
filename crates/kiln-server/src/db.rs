//! The control database: tenants, tokens, builds and their transitions,
//! attempts, secrets (encrypted), usage and the append-only audit log.
//!
//! Its own SQLite file (`control.db`, WAL) next to the engine's `state.db`:
//! the engine's store holds what a build *did* (jobs, steps, logs,
//! artifacts), this one what the control plane *decided* (who may see it,
//! where it is in the queue, why it was retried). Every SQL statement of
//! the control plane lives in this module, behind methods named after what
//! they mean, so that a PostgreSQL backend is another implementation of the
//! same methods (the claim in [`crate::core`] becomes `SKIP LOCKED`), not a
//! change to the API or the scheduler.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::ServerError;

/// A build's deployment webhook: URL, whether delivered (`None`: not yet),
/// the attempts as JSON.
pub type Notification = (String, Option<bool>, Option<String>);

/// The SQLite migrations, in order: (version, SQL). `PRAGMA user_version`
/// holds the version a database is at.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_control.sql")),
    (2, include_str!("../migrations/sqlite/0002_shared_queue.sql")),
    (3, include_str!("../migrations/sqlite/0003_submitted_by.sql")),
    (4, include_str!("../migrations/sqlite/0004_notify_lease.sql")),
];

/// The states in which a worker holds a build (under a lease).
pub const HELD_STATES: &[&str] = &["provisioning", "running", "extracting"];

/// What a build must still be for a transition to apply: the state and
/// attempt it was read in. Servers sharing a database may decide on the
/// same build at once; only the first decision applies.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub state: &'a str,
    pub attempt: i64,
    /// Only if the holder's lease ran out before this time (taking it back).
    pub lease_ended_by: Option<i64>,
}

/// What a claim needs besides the database: who takes the build, until
/// when, and how many builds each plan may hold at once.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub worker: String,
    /// The server claiming for one of its in-process workers (`None`: for
    /// a remote worker).
    pub server: Option<String>,
    pub now_ms: i64,
    pub lease_until_ms: i64,
    /// (plan, builds held at once); a tenant on another plan (or none) gets
    /// `default_cap`.
    pub caps: Vec<(String, i64)>,
    pub default_cap: i64,
}

impl ClaimRequest {
    /// How many builds a tenant on `plan` may hold at once.
    pub fn cap(&self, plan: Option<&str>) -> i64 {
        plan.and_then(|p| self.caps.iter().find(|(name, _)| name == p)).map_or(self.default_cap, |c| c.1)
    }
}

/// The log offset of a new attempt, given the attempt before it (its logs
/// live outside the control database).
pub type LogBase = dyn Fn(&AttemptRow) -> i64 + Send + Sync;

/// How many builds wait and how many are held (for the metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub queued: i64,
    pub held: i64,
    pub held_remote: i64,
}

/// Who a bearer token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The tenant (`None` for operator or worker tokens made without one).
    pub tenant: Option<String>,
    /// Sees every tenant's audit events and may administer tenants.
    pub operator: bool,
    /// May lease builds and report on them (`kiln worker`).
    pub worker: bool,
}

/// A token as `kiln admin token list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    /// The first 16 hex digits of the token's SHA-256: enough to name it,
    /// nothing to authenticate with.
    pub id: String,
    pub principal: Principal,
    pub created_at: String,
}

/// The length of a token id.
pub const TOKEN_ID_LEN: usize = 16;

/// A build as the control plane knows it.
#[derive(Debug, Clone, Serialize)]
pub struct BuildRecord {
    #[serde(skip)]
    pub n: i64,
    pub id: String,
    pub tenant: String,
    pub priority: String,
    /// `queued`, `provisioning`, `running`, `extracting`, `succeeded`,
    /// `failed` or `cancelled`.
    pub state: String,
    /// For `failed`: `user` or `infrastructure`.
    pub failure: Option<String>,
    /// Why it failed or was cancelled (`timeout`, the infrastructure error).
    pub reason: Option<String>,
    /// Infrastructure retries used.
    pub retries: i64,
    /// Attempts started (a retry starts a new one).
    pub attempt: i64,
    pub cancel_requested: bool,
    pub timeout_seconds: i64,
    pub pipeline: String,
    #[serde(skip)]
    pub workflow: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub source_tree: Option<String>,
    #[serde(skip)]
    pub source_tar: Option<String>,
    #[serde(skip)]
    pub body_hash: String,
    pub worker: Option<String>,
    pub created_at: String,
    pub enqueued_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// The holder's lease runs out then unless renewed.
    #[serde(skip)]
    pub lease_until_ms: Option<i64>,
    /// When the current attempt started running.
    #[serde(skip)]
    pub attempt_started_ms: Option<i64>,
    /// The current attempt ran past the build's timeout.
    #[serde(skip)]
    pub timed_out: bool,
    /// The server whose in-process worker holds the build (`None`: a
    /// remote worker, or not held).
    #[serde(skip)]
    pub server: Option<String>,
    /// Who submitted it: the token's id and what it spoke for
    /// (`3fa2c1d09b7e4455 (tenant acme)`); `None` for builds from before
    /// this was recorded.
    pub submitted_by: Option<String>,
}

impl BuildRecord {
    /// Whether `worker` holds attempt `attempt` of this build.
    pub fn held_by(&self, worker: &str, attempt: i64) -> bool {
        self.attempt == attempt
            && self.worker.as_deref() == Some(worker)
            && HELD_STATES.contains(&self.state.as_str())
    }
}

pub(crate) const BUILD_COLS: &str = "n, id, tenant, priority, state, failure, reason, retries, attempt, \
    cancel_requested, timeout_secs, pipeline, workflow, git_ref, source_tree, source_tar, body_hash, worker, \
    created_at, enqueued_ms, started_ms, finished_ms, lease_until_ms, attempt_started_ms, timed_out, server, \
    submitted_by";

/// Tenants with queued builds: (tenant, plan, builds held now).
pub(crate) const WAITING_TENANTS: &str = "SELECT q.tenant, t.plan, \
    (SELECT COUNT(*) FROM builds a WHERE a.tenant = q.tenant \
     AND a.state IN ('provisioning', 'running', 'extracting')) \
    FROM (SELECT DISTINCT tenant FROM builds WHERE state = 'queued') q LEFT JOIN tenants t ON t.name = q.tenant";

/// The order of claims: urgent first; then the tenant served longest ago;
/// within a tenant, a retried build first, then first come first served.
/// How long a build whose attempt ended in an infrastructure failure waits
/// for another worker before the worker that failed it may take it again:
/// a host that fails once (a full disk, a broken runtime) would otherwise
/// take the build straight back and spend every retry in a moment. After
/// this it may (it may be the only worker there is).
pub const RETRY_ELSEWHERE_MS: i64 = 30_000;

/// The claim's filter for [`RETRY_ELSEWHERE_MS`]: not a build whose last
/// attempt was `worker`'s and failed for the infrastructure since `since`
/// (both are placeholders of the engine's dialect).
pub(crate) fn not_just_failed_by(worker: &str, since: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM attempts a JOIN transitions t ON t.build_id = a.build_id \
         WHERE a.build_id = b.id AND a.attempt = b.attempt AND a.worker = {worker} \
         AND t.event = 'infra-failure' AND t.at_ms >= a.started_ms AND t.at_ms > {since})"
    )
}

/// Succeeded builds whose webhook is due: not delivered (nor given up on)
/// and not leased past `now` (placeholder 1 of either dialect).
pub(crate) const DUE_NOTIFICATIONS: &str = "SELECT n.build_id FROM notifications n \
    JOIN builds b ON b.id = n.build_id WHERE b.state = 'succeeded' AND n.delivered IS NULL \
    AND COALESCE(n.lease_until_ms, 0) < $1 ORDER BY b.n";

pub(crate) const CLAIM_ORDER: &str =
    "ORDER BY (b.priority = 'urgent') DESC, COALESCE(tt.turn, 0), (b.attempt > 0) DESC, b.n";

/// The engine's build id of an attempt.
pub fn engine_id(build: &str, attempt: i64) -> String {
    if attempt == 1 {
        build.to_string()
    } else {
        format!("{build}.{attempt}")
    }
}

fn build_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BuildRecord> {
    Ok(BuildRecord {
        n: r.get(0)?,
        id: r.get(1)?,
        tenant: r.get(2)?,
        priority: r.get(3)?,
        state: r.get(4)?,
        failure: r.get(5)?,
        reason: r.get(6)?,
        retries: r.get(7)?,
        attempt: r.get(8)?,
        cancel_requested: r.get::<_, i64>(9)? != 0,
        timeout_seconds: r.get(10)?,
        pipeline: r.get(11)?,
        workflow: r.get(12)?,
        git_ref: r.get(13)?,
        source_tree: r.get(14)?,
        source_tar: r.get(15)?,
        body_hash: r.get(16)?,
        worker: r.get(17)?,
        created_at: r.get(18)?,
        enqueued_ms: r.get(19)?,
        started_ms: r.get(20)?,
        finished_ms: r.get(21)?,
        lease_until_ms: r.get(22)?,
        attempt_started_ms: r.get(23)?,
        timed_out: r.get::<_, i64>(24)? != 0,
        server: r.get(25)?,
        submitted_by: r.get(26)?,
    })
}

fn attempt_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AttemptRow> {
    Ok(AttemptRow {
        attempt: r.get(0)?,
        engine_id: r.get(1)?,
        log_base: r.get(2)?,
        worker: r.get(3)?,
        started_ms: r.get(4)?,
    })
}

/// A build to insert.
#[derive(Debug, Clone)]
pub struct NewBuild {
    pub id: String,
    pub tenant: String,
    pub priority: String,
    pub timeout_secs: i64,
    pub pipeline: String,
    pub workflow: String,
    pub git_ref: String,
    pub source_tar: Option<String>,
    pub source_tree: Option<String>,
    pub idem_key: Option<String>,
    pub body_hash: String,
    pub enqueued_ms: i64,
    /// Who submitted it (see [`BuildRecord::submitted_by`]).
    pub submitted_by: Option<String>,
}

/// One recorded state change.
#[derive(Debug, Clone, Serialize)]
pub struct TransitionRow {
    pub ts: String,
    pub at_ms: i64,
    pub state: String,
    pub event: String,
    pub detail: String,
}

/// One run of a build on a worker; its engine build id names its rows in
/// `state.db`, and `log_base` is where its log entries start in the build's
/// log as the API numbers it (a retry's log continues the previous one's).
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub attempt: i64,
    pub engine_id: String,
    pub log_base: i64,
    pub worker: String,
    pub started_ms: i64,
}

/// A tenant's secret, still encrypted.
#[derive(Debug, Clone)]
pub struct SecretRow {
    pub name: String,
    pub phases: Vec<String>,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub updated_at: String,
}

/// What a build used, measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default)]
pub struct UsageRow {
    pub build: String,
    pub tenant: String,
    pub status: String,
    pub queue_wait_seconds: f64,
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    pub peak_memory_bytes: i64,
    pub egress_bytes: i64,
    pub artifact_bytes: i64,
    pub cache_read_bytes: i64,
    pub cache_write_bytes: i64,
    pub log_bytes: i64,
    pub attempts: i64,
    pub finished_at: String,
}

/// One audit event.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub seq: i64,
    pub ts: String,
    pub tenant: Option<String>,
    pub build: Option<String>,
    pub kind: String,
    pub actor: String,
    pub detail: String,
}

/// A connection to the control database: SQLite (`control.db` in the
/// state dir, the embedded default) or PostgreSQL (`--database
/// postgres://...`). Its methods are those of [`ControlStore`].
#[derive(Debug)]
pub struct ControlDb(Box<dyn ControlStore>);

impl std::ops::Deref for ControlDb {
    type Target = dyn ControlStore;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl ControlDb {
    /// Opens (creating) `control.db` in `dir`.
    pub fn open(dir: &Path) -> Result<ControlDb, ServerError> {
        Ok(ControlDb(Box::new(SqliteControl::open(dir)?)))
    }

    /// The database `url` names (`postgres://...`), or `control.db` in
    /// `dir` without one.
    pub fn connect(url: Option<&str>, dir: &Path) -> Result<ControlDb, ServerError> {
        ControlDb::connect_as(url, dir)
    }

    /// [`ControlDb::connect`]: any number of servers may share a
    /// PostgreSQL database (claims are decided in it); `control.db` is one
    /// server's.
    pub fn connect_server(url: Option<&str>, dir: &Path) -> Result<ControlDb, ServerError> {
        ControlDb::connect(url, dir)
    }

    fn connect_as(url: Option<&str>, dir: &Path) -> Result<ControlDb, ServerError> {
        match url {
            None => ControlDb::open(dir),
            Some(u) if is_postgres(u) => {
                Ok(ControlDb(Box::new(crate::pg::PgControl::connect(u)?)))
            }
            Some(u) => Err(ServerError::Setup(format!(
                "--database {}: only postgres:// URLs are understood (without one, control.db in the state dir)",
                kiln_build::pipeline::redacted(u)
            ))),
        }
    }
}

/// Whether a `--database` URL names PostgreSQL.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Every statement the control plane makes, named after what it means. One
/// implementation per database; the API, the queue and the workers see
/// only these.
pub trait ControlStore: Send + std::fmt::Debug {
    /// Creates a tenant; `false` if it already existed (its plan is updated).
    fn upsert_tenant(&self, name: &str, plan: &str) -> Result<bool, ServerError>;
    fn tenant_plan(&self, name: &str) -> Result<Option<String>, ServerError>;
    fn tenants(&self) -> Result<Vec<(String, String)>, ServerError>;
    fn insert_token(&self, hash: &str, p: &Principal) -> Result<(), ServerError>;
    fn principal(&self, hash: &str) -> Result<Option<Principal>, ServerError>;
    /// Every token (never the token itself: its id and what it may do).
    fn tokens(&self) -> Result<Vec<TokenRow>, ServerError>;
    /// Deletes the tokens whose hash starts with `id` (see [`TokenRow::id`]);
    /// returns how many. A revoked token is refused at its next request.
    fn revoke_tokens(&self, id: &str) -> Result<usize, ServerError>;
    /// Inserts a queued build and its first transition; returns its queue number.
    fn insert_build(&self, b: &NewBuild) -> Result<i64, ServerError>;
    /// The build a tenant submitted with an idempotency key.
    fn build_by_key(&self, tenant: &str, key: &str) -> Result<Option<BuildRecord>, ServerError>;
    fn build(&self, id: &str) -> Result<Option<BuildRecord>, ServerError>;
    fn build_by_n(&self, n: i64) -> Result<Option<BuildRecord>, ServerError>;
    /// A tenant's builds (every tenant's for `None`), newest first.
    fn builds(
        &self,
        tenant: Option<&str>,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<BuildRecord>, ServerError>;
    /// Builds in the given states, oldest first (recovery at start-up).
    fn builds_in(&self, states: &[&str]) -> Result<Vec<BuildRecord>, ServerError>;
    /// Records a state change (and the fields that go with it) atomically,
    /// if the build is still as `expect` says; returns whether it was.
    #[allow(clippy::too_many_arguments)]
    fn record_transition(
        &self,
        id: &str,
        expect: Expect<'_>,
        state: &str,
        failure: Option<&str>,
        reason: Option<&str>,
        retries: i64,
        event: &str,
        detail: &str,
        at_ms: i64,
    ) -> Result<bool, ServerError>;
    /// Hands the next queued build to `req.worker`, in one transaction:
    /// the build goes to `provisioning` under a lease, with a new attempt.
    /// Decided in the database alone, so servers sharing it never hand out
    /// one build twice nor a tenant more than its plan's builds at once.
    fn claim(
        &self,
        req: &ClaimRequest,
        log_base: Arc<LogBase>,
    ) -> Result<Option<(BuildRecord, AttemptRow)>, ServerError>;
    /// Extends `worker`'s lease on attempt `attempt` to `until_ms`; `false`
    /// if it no longer holds it.
    fn renew_lease(&self, id: &str, worker: &str, attempt: i64, until_ms: i64) -> Result<bool, ServerError>;
    /// Held builds whose lease ran out before `now_ms`.
    fn expired_leases(&self, now_ms: i64) -> Result<Vec<BuildRecord>, ServerError>;
    /// Marks running builds past their timeout; returns those newly marked
    /// as (build, tenant, timeout in seconds).
    fn mark_timed_out(&self, now_ms: i64) -> Result<Vec<(String, String, i64)>, ServerError>;
    fn queue_counts(&self) -> Result<QueueCounts, ServerError>;
    /// The attempts of a build, in order.
    fn attempts(&self, id: &str) -> Result<Vec<AttemptRow>, ServerError>;
    fn set_cancel_requested(&self, id: &str, reason: Option<&str>) -> Result<(), ServerError>;
    fn transitions(&self, id: &str) -> Result<Vec<TransitionRow>, ServerError>;
    /// The order in which builds were handed to workers (every lease,
    /// retries included): `(build, tenant, priority)`.
    fn lease_order(&self, tenant: Option<&str>) -> Result<Vec<(String, String, String)>, ServerError>;
    fn put_secret(
        &self,
        tenant: &str,
        name: &str,
        phases: &[String],
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<(), ServerError>;
    fn delete_secret(&self, tenant: &str, name: &str) -> Result<bool, ServerError>;
    fn secrets(&self, tenant: &str) -> Result<Vec<SecretRow>, ServerError>;
    fn insert_usage(&self, u: &UsageRow) -> Result<(), ServerError>;
    /// Usage records of a tenant's builds, or of one build with `build`.
    fn usage_rows(&self, tenant: &str, build: Option<&str>) -> Result<Vec<UsageRow>, ServerError>;
    fn usage(&self, tenant: &str) -> Result<Vec<UsageRow>, ServerError> {
        self.usage_rows(tenant, None)
    }
    fn usage_of(&self, tenant: &str, build: &str) -> Result<Option<UsageRow>, ServerError> {
        Ok(self.usage_rows(tenant, Some(build))?.pop())
    }
    /// Where a build's deployment webhook goes, set at submit.
    fn set_notify(&self, build: &str, url: &str) -> Result<(), ServerError>;
    /// The webhook of a build (see [`Notification`]).
    fn notification(&self, build: &str) -> Result<Option<Notification>, ServerError>;
    /// Takes the delivery of `build`'s webhook for `server` until
    /// `until_ms`, if it is not delivered and nobody's lease on it runs
    /// past `now_ms`; true if taken.
    fn claim_notification(
        &self,
        build: &str,
        server: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, ServerError>;
    /// Extends `server`'s lease on a delivery; false if it is not its any more.
    fn renew_notification(&self, build: &str, server: &str, until_ms: i64) -> Result<bool, ServerError>;
    /// Succeeded builds whose webhook is not delivered and not leased
    /// past `now_ms` (its deliverer died, or never began).
    fn due_notifications(&self, now_ms: i64) -> Result<Vec<String>, ServerError>;
    /// Records how a delivery ended, if `server` still holds it.
    fn record_delivery(
        &self,
        build: &str,
        server: &str,
        delivered: bool,
        attempts: &str,
    ) -> Result<bool, ServerError>;
    fn audit(
        &self,
        tenant: Option<&str>,
        build: Option<&str>,
        kind: &str,
        actor: &str,
        detail: &str,
    ) -> Result<(), ServerError>;
    /// Audit events of a tenant (every tenant's for `None`), oldest first,
    /// after `after`.
    fn audit_events(
        &self,
        tenant: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, ServerError>;
}

/// `control.db` on SQLite (WAL).
#[derive(Debug)]
struct SqliteControl {
    conn: Connection,
}

impl SqliteControl {
    fn open(dir: &Path) -> Result<SqliteControl, ServerError> {
        std::fs::create_dir_all(dir).map_err(|e| ServerError::io("creating", dir, e))?;
        let conn = Connection::open(dir.join("control.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Switching a new database to WAL needs it to itself, and SQLite
        // answers "locked" at once (no busy wait) while another process
        // opens it too: tried again for as long as the busy timeout.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
                Ok(_) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
        // NORMAL in WAL mode: a committed transaction survives a crash of the
        // process (kill -9); only a power loss may lose the last ones.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if version > known {
            return Err(ServerError::Setup(format!(
                "control.db schema version {version} is newer than this kiln understands ({known})"
            )));
        }
        for (v, sql) in MIGRATIONS.iter().filter(|m| m.0 > version) {
            // Under the write lock, the version read again: another process
            // opening the database at the same time may have applied it.
            let tx = rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)?;
            let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if now < *v {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", v)?;
            }
            tx.commit()?;
        }
        Ok(SqliteControl { conn })
    }
}

impl ControlStore for SqliteControl {
    // ---- tenants and tokens ----

    /// Creates a tenant; `false` if it already existed (its plan is updated).
    fn upsert_tenant(&self, name: &str, plan: &str) -> Result<bool, ServerError> {
        let existed = self.tenant_plan(name)?.is_some();
        self.conn.execute(
            "INSERT INTO tenants (name, plan, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT(name) DO UPDATE SET plan = excluded.plan",
            params![name, plan, now()],
        )?;
        Ok(!existed)
    }

    fn tenant_plan(&self, name: &str) -> Result<Option<String>, ServerError> {
        Ok(self
            .conn
            .query_row("SELECT plan FROM tenants WHERE name = ?1", [name], |r| r.get(0))
            .optional()?)
    }

    fn tenants(&self) -> Result<Vec<(String, String)>, ServerError> {
        let mut stmt = self.conn.prepare("SELECT name, plan FROM tenants ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn insert_token(&self, hash: &str, p: &Principal) -> Result<(), ServerError> {
        self.conn.execute(
            "INSERT INTO tokens (hash, tenant, operator, worker, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash, p.tenant, p.operator as i64, p.worker as i64, now()],
        )?;
        Ok(())
    }

    fn principal(&self, hash: &str) -> Result<Option<Principal>, ServerError> {
        Ok(self
            .conn
            .query_row("SELECT tenant, operator, worker FROM tokens WHERE hash = ?1", [hash], |r| {
                Ok(Principal {
                    tenant: r.get(0)?,
                    operator: r.get::<_, i64>(1)? != 0,
                    worker: r.get::<_, i64>(2)? != 0,
                })
            })
            .optional()?)
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, ServerError> {
        let mut stmt = self.conn.prepare(
            "SELECT hash, tenant, operator, worker, created_at FROM tokens ORDER BY created_at, hash",
        )?;
        let rows = stmt
            .query_map([], |r| {
                let hash: String = r.get(0)?;
                Ok(TokenRow {
                    id: hash.chars().take(TOKEN_ID_LEN).collect(),
                    principal: Principal {
                        tenant: r.get(1)?,
                        operator: r.get::<_, i64>(2)? != 0,
                        worker: r.get::<_, i64>(3)? != 0,
                    },
                    created_at: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn revoke_tokens(&self, id: &str) -> Result<usize, ServerError> {
        // `substr` rather than LIKE: an id is hex, but never a pattern.
        Ok(self
            .conn
            .execute("DELETE FROM tokens WHERE substr(hash, 1, ?2) = ?1", params![id, id.len() as i64])?)
    }

    // ---- builds ----

    /// Inserts a queued build and its first transition; returns its queue number.
    fn insert_build(&self, b: &NewBuild) -> Result<i64, ServerError> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO builds (id, tenant, priority, state, timeout_secs, pipeline, workflow, git_ref, source_tar, \
             source_tree, idem_key, body_hash, created_at, enqueued_ms, submitted_by) \
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                b.id,
                b.tenant,
                b.priority,
                b.timeout_secs,
                b.pipeline,
                b.workflow,
                b.git_ref,
                b.source_tar,
                b.source_tree,
                b.idem_key,
                b.body_hash,
                now(),
                b.enqueued_ms,
                b.submitted_by
            ],
        )?;
        let n = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO transitions (build_id, at_ms, ts, state, event, detail) VALUES (?1, ?2, ?3, 'queued', 'submit', '')",
            params![b.id, b.enqueued_ms, now()],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// The build a tenant submitted with an idempotency key.
    fn build_by_key(&self, tenant: &str, key: &str) -> Result<Option<BuildRecord>, ServerError> {
        let sql = format!("SELECT {BUILD_COLS} FROM builds WHERE tenant = ?1 AND idem_key = ?2");
        Ok(self.conn.query_row(&sql, params![tenant, key], build_row).optional()?)
    }

    fn build(&self, id: &str) -> Result<Option<BuildRecord>, ServerError> {
        let sql = format!("SELECT {BUILD_COLS} FROM builds WHERE id = ?1");
        Ok(self.conn.query_row(&sql, [id], build_row).optional()?)
    }

    fn build_by_n(&self, n: i64) -> Result<Option<BuildRecord>, ServerError> {
        let sql = format!("SELECT {BUILD_COLS} FROM builds WHERE n = ?1");
        Ok(self.conn.query_row(&sql, [n], build_row).optional()?)
    }

    /// A tenant's builds (every tenant's for `None`), newest first.
    fn builds(
        &self,
        tenant: Option<&str>,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<BuildRecord>, ServerError> {
        let sql = format!(
            "SELECT {BUILD_COLS} FROM builds WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR state = ?2) \
             ORDER BY n DESC LIMIT ?3"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![tenant, state, limit], build_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Builds in the given states, oldest first (recovery at start-up).
    fn builds_in(&self, states: &[&str]) -> Result<Vec<BuildRecord>, ServerError> {
        let mut out = Vec::new();
        let sql = format!("SELECT {BUILD_COLS} FROM builds WHERE state = ?1 ORDER BY n");
        let mut stmt = self.conn.prepare(&sql)?;
        for s in states {
            let rows: Vec<BuildRecord> = stmt.query_map([s], build_row)?.collect::<Result<_, _>>()?;
            out.extend(rows);
        }
        out.sort_by_key(|b| b.n);
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn record_transition(
        &self,
        id: &str,
        expect: Expect<'_>,
        state: &str,
        failure: Option<&str>,
        reason: Option<&str>,
        retries: i64,
        event: &str,
        detail: &str,
        at_ms: i64,
    ) -> Result<bool, ServerError> {
        let tx = self.conn.unchecked_transaction()?;
        let terminal = kiln_queue::BuildState::is_terminal_name(state);
        let changed = tx.execute(
            "UPDATE builds SET state = ?2, failure = ?3, reason = COALESCE(?4, reason), retries = ?5, \
             finished_ms = CASE WHEN ?6 THEN ?7 ELSE finished_ms END, \
             started_ms = CASE WHEN ?2 = 'running' AND started_ms IS NULL THEN ?7 ELSE started_ms END, \
             attempt_started_ms = CASE WHEN ?2 = 'running' THEN ?7 \
                 WHEN ?2 = 'queued' THEN NULL ELSE attempt_started_ms END, \
             worker = CASE WHEN ?2 = 'queued' THEN NULL ELSE worker END, \
             server = CASE WHEN ?6 OR ?2 = 'queued' THEN NULL ELSE server END, \
             lease_until_ms = CASE WHEN ?6 OR ?2 = 'queued' THEN NULL ELSE lease_until_ms END, \
             timed_out = CASE WHEN ?2 = 'queued' THEN 0 ELSE timed_out END \
             WHERE id = ?1 AND state = ?8 AND attempt = ?9 \
             AND (?10 IS NULL OR COALESCE(lease_until_ms, 0) < ?10)",
            params![
                id,
                state,
                failure,
                reason,
                retries,
                terminal,
                at_ms,
                expect.state,
                expect.attempt,
                expect.lease_ended_by
            ],
        )?;
        if changed == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO transitions (build_id, at_ms, ts, state, event, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, at_ms, now(), state, event, detail],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn claim(
        &self,
        req: &ClaimRequest,
        log_base: Arc<LogBase>,
    ) -> Result<Option<(BuildRecord, AttemptRow)>, ServerError> {
        // IMMEDIATE: the claim holds the write lock from its first read, so
        // no other connection (another process on this file) decides between.
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)?;
        let mut stmt = tx.prepare(WAITING_TENANTS)?;
        let eligible: Vec<String> = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, i64>(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|(_, plan, held)| *held < req.cap(plan.as_deref()))
            .map(|(t, _, _)| t)
            .collect();
        drop(stmt);
        if eligible.is_empty() {
            return Ok(None);
        }
        let sql = format!(
            "SELECT b.id, b.tenant FROM builds b LEFT JOIN tenant_turns tt ON tt.tenant = b.tenant \
             WHERE b.state = 'queued' AND b.tenant IN (SELECT value FROM json_each(?1)) AND {} \
             {CLAIM_ORDER} LIMIT 1",
            not_just_failed_by("?2", "?3")
        );
        let list = serde_json::to_string(&eligible).map_err(|e| ServerError::Setup(e.to_string()))?;
        let since = req.now_ms - RETRY_ELSEWHERE_MS;
        let Some((id, tenant)) = tx
            .query_row(&sql, params![list, req.worker, since], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?
        else {
            return Ok(None);
        };
        let attempt: i64 = tx.query_row(
            "UPDATE builds SET state = 'provisioning', worker = ?2, attempt = attempt + 1, lease_until_ms = ?3, \
             attempt_started_ms = NULL, timed_out = 0, server = ?4 WHERE id = ?1 AND state = 'queued' \
             RETURNING attempt",
            params![id, req.worker, req.lease_until_ms, req.server],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO transitions (build_id, at_ms, ts, state, event, detail) \
             VALUES (?1, ?2, ?3, 'provisioning', 'lease', ?4)",
            params![id, req.now_ms, now(), req.worker],
        )?;
        let prev = tx
            .query_row(
                "SELECT attempt, engine_id, log_base, worker, started_ms FROM attempts WHERE build_id = ?1 \
                 ORDER BY attempt DESC LIMIT 1",
                [&id],
                attempt_row,
            )
            .optional()?;
        let row = AttemptRow {
            attempt,
            engine_id: engine_id(&id, attempt),
            log_base: prev.as_ref().map_or(0, |p| log_base(p)),
            worker: req.worker.clone(),
            started_ms: req.now_ms,
        };
        tx.execute(
            "INSERT INTO attempts (build_id, attempt, engine_id, log_base, worker, started_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, row.attempt, row.engine_id, row.log_base, row.worker, row.started_ms],
        )?;
        tx.execute(
            "INSERT INTO tenant_turns (tenant, turn) VALUES (?1, (SELECT COALESCE(MAX(turn), 0) + 1 FROM tenant_turns)) \
             ON CONFLICT (tenant) DO UPDATE SET turn = excluded.turn",
            [&tenant],
        )?;
        let build =
            tx.query_row(&format!("SELECT {BUILD_COLS} FROM builds WHERE id = ?1"), [&id], build_row)?;
        tx.commit()?;
        Ok(Some((build, row)))
    }

    fn renew_lease(&self, id: &str, worker: &str, attempt: i64, until_ms: i64) -> Result<bool, ServerError> {
        Ok(self.conn.execute(
            "UPDATE builds SET lease_until_ms = MAX(COALESCE(lease_until_ms, 0), ?4) \
             WHERE id = ?1 AND worker = ?2 AND attempt = ?3 AND state IN ('provisioning', 'running', 'extracting')",
            params![id, worker, attempt, until_ms],
        )? == 1)
    }

    fn expired_leases(&self, now_ms: i64) -> Result<Vec<BuildRecord>, ServerError> {
        let sql = format!(
            "SELECT {BUILD_COLS} FROM builds WHERE state IN ('provisioning', 'running', 'extracting') \
             AND COALESCE(lease_until_ms, 0) < ?1 ORDER BY n"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([now_ms], build_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn mark_timed_out(&self, now_ms: i64) -> Result<Vec<(String, String, i64)>, ServerError> {
        let mut stmt = self.conn.prepare(
            "UPDATE builds SET timed_out = 1 WHERE state = 'running' AND timed_out = 0 \
             AND attempt_started_ms IS NOT NULL AND attempt_started_ms + timeout_secs * 1000 < ?1 \
             RETURNING id, tenant, timeout_secs",
        )?;
        let rows =
            stmt.query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn queue_counts(&self) -> Result<QueueCounts, ServerError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(state = 'queued'), 0), \
             COALESCE(SUM(state IN ('provisioning', 'running', 'extracting')), 0), \
             COALESCE(SUM(state IN ('provisioning', 'running', 'extracting') AND worker LIKE 'remote:%'), 0) \
             FROM builds WHERE state IN ('queued', 'provisioning', 'running', 'extracting')",
            [],
            |r| Ok(QueueCounts { queued: r.get(0)?, held: r.get(1)?, held_remote: r.get(2)? }),
        )?)
    }

    /// The attempts of a build, in order.
    fn attempts(&self, id: &str) -> Result<Vec<AttemptRow>, ServerError> {
        let mut stmt = self.conn.prepare(
            "SELECT attempt, engine_id, log_base, worker, started_ms FROM attempts WHERE build_id = ?1 ORDER BY attempt",
        )?;
        let rows = stmt.query_map([id], attempt_row)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn set_cancel_requested(&self, id: &str, reason: Option<&str>) -> Result<(), ServerError> {
        self.conn.execute(
            "UPDATE builds SET cancel_requested = 1, reason = COALESCE(?2, reason) WHERE id = ?1",
            params![id, reason],
        )?;
        Ok(())
    }

    fn transitions(&self, id: &str) -> Result<Vec<TransitionRow>, ServerError> {
        let mut stmt = self.conn.prepare(
            "SELECT ts, at_ms, state, event, detail FROM transitions WHERE build_id = ?1 ORDER BY n",
        )?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(TransitionRow {
                    ts: r.get(0)?,
                    at_ms: r.get(1)?,
                    state: r.get(2)?,
                    event: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The order in which builds were handed to workers (every lease,
    /// retries included): `(build, tenant, priority)`.
    fn lease_order(&self, tenant: Option<&str>) -> Result<Vec<(String, String, String)>, ServerError> {
        let mut stmt = self.conn.prepare(
            "SELECT t.build_id, b.tenant, b.priority FROM transitions t JOIN builds b ON b.id = t.build_id \
             WHERE t.state = 'provisioning' AND (?1 IS NULL OR b.tenant = ?1) ORDER BY t.n",
        )?;
        let rows =
            stmt.query_map([tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    // ---- secrets ----

    fn put_secret(
        &self,
        tenant: &str,
        name: &str,
        phases: &[String],
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<(), ServerError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO secrets (tenant, name, phases, nonce, ciphertext, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![tenant, name, phases.join(","), nonce, ciphertext, now()],
        )?;
        Ok(())
    }

    fn delete_secret(&self, tenant: &str, name: &str) -> Result<bool, ServerError> {
        Ok(self.conn.execute("DELETE FROM secrets WHERE tenant = ?1 AND name = ?2", params![tenant, name])?
            > 0)
    }

    fn secrets(&self, tenant: &str) -> Result<Vec<SecretRow>, ServerError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, phases, nonce, ciphertext, updated_at FROM secrets WHERE tenant = ?1 ORDER BY name",
        )?;
        let rows = stmt
            .query_map([tenant], |r| {
                let phases: String = r.get(1)?;
                Ok(SecretRow {
                    name: r.get(0)?,
                    phases: phases.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect(),
                    nonce: r.get(2)?,
                    ciphertext: r.get(3)?,
                    updated_at: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    // ---- usage ----

    fn insert_usage(&self, u: &UsageRow) -> Result<(), ServerError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO usage (build_id, tenant, status, queue_wait_seconds, wall_seconds, cpu_seconds, \
             peak_memory_bytes, egress_bytes, artifact_bytes, cache_read_bytes, cache_write_bytes, log_bytes, attempts, \
             finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                u.build,
                u.tenant,
                u.status,
                u.queue_wait_seconds,
                u.wall_seconds,
                u.cpu_seconds,
                u.peak_memory_bytes,
                u.egress_bytes,
                u.artifact_bytes,
                u.cache_read_bytes,
                u.cache_write_bytes,
                u.log_bytes,
                u.attempts,
                u.finished_at
            ],
        )?;
        Ok(())
    }

    fn usage_rows(&self, tenant: &str, build: Option<&str>) -> Result<Vec<UsageRow>, ServerError> {
        let mut stmt = self.conn.prepare(
            "SELECT build_id, tenant, status, queue_wait_seconds, wall_seconds, cpu_seconds, peak_memory_bytes, \
             egress_bytes, artifact_bytes, cache_read_bytes, cache_write_bytes, log_bytes, attempts, finished_at \
             FROM usage WHERE tenant = ?1 \
             AND (?2 IS NULL OR build_id = ?2) ORDER BY finished_at, build_id",
        )?;
        let rows = stmt
            .query_map(params![tenant, build], |r| {
                Ok(UsageRow {
                    build: r.get(0)?,
                    tenant: r.get(1)?,
                    status: r.get(2)?,
                    queue_wait_seconds: r.get(3)?,
                    wall_seconds: r.get(4)?,
                    cpu_seconds: r.get(5)?,
                    peak_memory_bytes: r.get(6)?,
                    egress_bytes: r.get(7)?,
                    artifact_bytes: r.get(8)?,
                    cache_read_bytes: r.get(9)?,
                    cache_write_bytes: r.get(10)?,
                    log_bytes: r.get(11)?,
                    attempts: r.get(12)?,
                    finished_at: r.get(13)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    // ---- audit ----

    /// Where a build's deployment webhook goes, set at submit.
    fn set_notify(&self, build: &str, url: &str) -> Result<(), ServerError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO notifications (build_id, url) VALUES (?1, ?2)",
            params![build, url],
        )?;
        Ok(())
    }

    /// The webhook of a build (see [`Notification`]).
    fn notification(&self, build: &str) -> Result<Option<Notification>, ServerError> {
        Ok(self
            .conn
            .query_row(
                "SELECT url, delivered, attempts FROM notifications WHERE build_id = ?1",
                [build],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    fn claim_notification(
        &self,
        build: &str,
        server: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, ServerError> {
        Ok(self.conn.execute(
            "UPDATE notifications SET server = ?2, lease_until_ms = ?4 WHERE build_id = ?1 \
             AND delivered IS NULL AND COALESCE(lease_until_ms, 0) < ?3",
            params![build, server, now_ms, until_ms],
        )? == 1)
    }

    fn renew_notification(&self, build: &str, server: &str, until_ms: i64) -> Result<bool, ServerError> {
        Ok(self.conn.execute(
            "UPDATE notifications SET lease_until_ms = MAX(COALESCE(lease_until_ms, 0), ?3) \
             WHERE build_id = ?1 AND server = ?2 AND delivered IS NULL",
            params![build, server, until_ms],
        )? == 1)
    }

    fn due_notifications(&self, now_ms: i64) -> Result<Vec<String>, ServerError> {
        let mut stmt = self.conn.prepare(DUE_NOTIFICATIONS)?;
        let rows = stmt.query_map([now_ms], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn record_delivery(
        &self,
        build: &str,
        server: &str,
        delivered: bool,
        attempts: &str,
    ) -> Result<bool, ServerError> {
        Ok(self.conn.execute(
            "UPDATE notifications SET delivered = ?3, attempts = ?4, at = ?5 \
             WHERE build_id = ?1 AND server = ?2 AND delivered IS NULL",
            params![build, server, delivered, attempts, now()],
        )? == 1)
    }

    fn audit(
        &self,
        tenant: Option<&str>,
        build: Option<&str>,
        kind: &str,
        actor: &str,
        detail: &str,
    ) -> Result<(), ServerError> {
        self.conn.execute(
            "INSERT INTO audit (ts, tenant, build_id, kind, actor, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![now(), tenant, build, kind, actor, detail],
        )?;
        Ok(())
    }

    /// Audit events of a tenant (every tenant's for `None`), oldest first,
    /// after `after`.
    fn audit_events(
        &self,
        tenant: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, ServerError> {
        let mut stmt = self.conn.prepare(
            "SELECT n, ts, tenant, build_id, kind, actor, detail FROM audit WHERE (?1 IS NULL OR tenant = ?1) AND n > ?2 \
             ORDER BY n LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![tenant, after, limit], |r| {
                Ok(AuditRow {
                    seq: r.get(0)?,
                    ts: r.get(1)?,
                    tenant: r.get(2)?,
                    build: r.get(3)?,
                    kind: r.get(4)?,
                    actor: r.get(5)?,
                    detail: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

/// Now as RFC 3339 (the engine's format).
pub fn now() -> String {
    kiln_engine::time::now_rfc3339()
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
