//! The control database on PostgreSQL (`kiln serve --database
//! postgres://...`): the statements of [`ControlStore`] in PostgreSQL's
//! dialect, and the schema's migrations.
//!
//! One connection per [`PgControl`], owned by a thread of its own: the
//! `postgres` client drives its connection with a runtime of its own, which
//! must not run inside the server's tokio runtime, and the control plane's
//! calls are synchronous (as they are on SQLite). A call sends its
//! statements to that thread and waits for the answer. A connection the
//! server lost (PostgreSQL restarted) is made again at the next call.
//!
//! Migrations (`migrations/postgres/NNNN_*.sql`) are applied at start-up in
//! order, each in its own transaction, under an advisory lock so that two
//! servers starting at once do not both apply one; a database whose schema
//! is newer than this binary knows is refused.

use std::sync::mpsc;
use std::sync::Mutex;

use postgres::{Client, NoTls, Row};

use std::sync::Arc;

use crate::db::{
    engine_id, not_just_failed_by, now, AttemptRow, AuditRow, BuildRecord, ClaimRequest, ControlStore,
    Expect, LogBase, NewBuild, Notification, Principal, QueueCounts, SecretRow, TokenRow, TransitionRow,
    UsageRow, BUILD_COLS, CLAIM_ORDER, DUE_NOTIFICATIONS, RETRY_ELSEWHERE_MS, TOKEN_ID_LEN, WAITING_TENANTS,
};
use crate::error::ServerError;

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_control.sql")),
    (2, include_str!("../migrations/postgres/0002_shared_queue.sql")),
    (3, include_str!("../migrations/postgres/0003_shared_events.sql")),
    (4, include_str!("../migrations/postgres/0004_submitted_by.sql")),
    (5, include_str!("../migrations/postgres/0005_notify_lease.sql")),
];

/// The channel on which a commit of shared events is announced.
const EVENTS_CHANNEL: &str = "kiln_events";

/// One engine event of an attempt, as replicas share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEvent {
    /// The server that has it already (its in-process worker made it);
    /// empty for a remote worker's event, which every server applies.
    pub origin: String,
    pub build: String,
    pub attempt: i64,
    pub engine_id: String,
    /// A log line's position in its attempt's log.
    pub seq: Option<i64>,
    /// The engine's event as JSON.
    pub event: String,
}

/// How far a follower has read the shared events: the last row's
/// transaction id (decimal) and number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPosition {
    pub xid: String,
    pub n: i64,
}

impl Default for EventPosition {
    fn default() -> Self {
        EventPosition { xid: "0".into(), n: 0 }
    }
}

/// The first key of the advisory locks that serialise the claims of one
/// tenant (the second is the tenant's hash), so that servers sharing the
/// database never hand a tenant more builds than its plan allows.
const TENANT_CLAIM_LOCK: i32 = 0x6b69_6c6e;

/// The advisory lock key under which migrations run ("kiln" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_6c6e;

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// The thread's connection, made (again) when it is needed.
struct Conn {
    url: String,
    shown: String,
    client: Option<Client>,
}

impl Conn {
    /// The connection, made anew when there is none or the server closed it.
    fn get(&mut self) -> Result<&mut Client, String> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            let c = Client::connect(&self.url, NoTls)
                .map_err(|e| format!("cannot connect to {}: {e}", self.shown))?;
            self.client = Some(c);
        }
        self.client.as_mut().ok_or_else(|| "no connection".to_string())
    }

    /// Whether the last statement found the connection gone.
    fn lost(&self) -> bool {
        self.client.as_ref().is_some_and(|c| c.is_closed())
    }
}

/// The control database on PostgreSQL.
pub struct PgControl {
    url: String,
    /// `None` once dropped.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for PgControl {
    /// Ends the connection (and the locks it holds) before returning.
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for PgControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgControl").field("url", &kiln_build::pipeline::redacted(&self.url)).finish()
    }
}

fn pg_err(e: postgres::Error) -> ServerError {
    ServerError::Postgres(e.to_string())
}

impl PgControl {
    /// Connects, and brings the schema up to date (or refuses a newer one).
    pub fn connect(url: &str) -> Result<PgControl, ServerError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let mut conn =
            Conn { url: url.to_string(), shown: kiln_build::pipeline::redacted(url), client: None };
        let thread = std::thread::Builder::new()
            .name("kiln-postgres".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| ServerError::Setup(format!("starting the database thread: {e}")))?;
        let pg = PgControl { url: url.to_string(), jobs: Mutex::new(Some(tx)), thread: Some(thread) };
        pg.call(migrate)?;
        Ok(pg)
    }

    /// Runs `f` on the connection's thread and waits for it.
    fn call<T: Send + 'static>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<T, ServerError> + Send + 'static,
    ) -> Result<T, ServerError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn| {
            let mut attempt = |conn: &mut Conn| match conn.get() {
                Ok(c) => f(c),
                Err(why) => Err(ServerError::Postgres(why)),
            };
            // A connection PostgreSQL closed (a restart) is found closed
            // only by the statement that tries it: that statement runs
            // again, once, on a new connection. Its transaction, if any,
            // did not commit: the server ended the session first.
            let mut r = attempt(conn);
            if r.is_err() && conn.lost() {
                r = attempt(conn);
            }
            let _ = tx.send(r);
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .ok_or_else(|| ServerError::Postgres("the connection is closed".into()))?
            .send(job)
            .map_err(|_| ServerError::Postgres("the database thread has stopped".into()))?;
        rx.recv().map_err(|_| ServerError::Postgres("the database thread has stopped".into()))?
    }
}

impl PgControl {
    /// Records the fingerprint of a deployment key the first time a server
    /// gives one; returns the fingerprint recorded.
    pub fn deployment_key(&self, name: &str, fingerprint: &str) -> Result<String, ServerError> {
        let (name, fingerprint) = (owned(name), owned(fingerprint));
        self.call(move |c| {
            c.execute(
                "INSERT INTO deployment_keys (name, fingerprint) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                &[&name, &fingerprint],
            )
            .map_err(pg_err)?;
            Ok(c.query_one("SELECT fingerprint FROM deployment_keys WHERE name = $1", &[&name])
                .map_err(pg_err)?
                .get(0))
        })
    }

    /// Appends events in one transaction and announces the commit.
    pub fn append_events(&self, rows: Vec<SharedEvent>) -> Result<(), ServerError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.call(move |c| {
            let mut tx = c.transaction().map_err(pg_err)?;
            let insert = tx
                .prepare(
                    "INSERT INTO attempt_events (origin, build_id, attempt, engine_id, seq, event) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .map_err(pg_err)?;
            for r in &rows {
                tx.execute(&insert, &[&r.origin, &r.build, &r.attempt, &r.engine_id, &r.seq, &r.event])
                    .map_err(pg_err)?;
            }
            tx.batch_execute(&format!("NOTIFY {EVENTS_CHANNEL}")).map_err(pg_err)?;
            tx.commit().map_err(pg_err)
        })
    }

    /// Up to `limit` events after `pos`, in commit order: only those of
    /// transactions older than every transaction still running, so that a
    /// row committed later is never numbered before one already read.
    pub fn events_after(
        &self,
        pos: &EventPosition,
        limit: i64,
    ) -> Result<Vec<(EventPosition, SharedEvent)>, ServerError> {
        let pos = pos.clone();
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT xid::text, n, origin, build_id, attempt, engine_id, seq, event FROM attempt_events \
                     WHERE xid < pg_snapshot_xmin(pg_current_snapshot()) AND (xid, n) > ($1::text::xid8, $2) \
                     ORDER BY xid, n LIMIT $3",
                    &[&pos.xid, &pos.n, &limit],
                )
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        EventPosition { xid: r.get(0), n: r.get(1) },
                        SharedEvent {
                            origin: r.get(2),
                            build: r.get(3),
                            attempt: r.get(4),
                            engine_id: r.get(5),
                            seq: r.get(6),
                            event: r.get(7),
                        },
                    )
                })
                .collect())
        })
    }

    /// Waits up to `timeout` for a commit of shared events to be announced
    /// (this connection listens from its first call on).
    pub fn wait_for_events(&self, timeout: std::time::Duration) -> Result<(), ServerError> {
        self.call(move |c| {
            c.batch_execute(&format!("LISTEN {EVENTS_CHANNEL}")).map_err(pg_err)?;
            let mut n = c.notifications();
            use postgres::fallible_iterator::FallibleIterator;
            let _ = n.timeout_iter(timeout).next().map_err(pg_err)?;
            // Several commits may have been announced: one catch-up reads them all.
            while n.iter().next().map_err(pg_err)?.is_some() {}
            Ok(())
        })
    }
}

/// Applies the migrations this database lacks, or refuses a newer schema.
fn migrate(c: &mut Client) -> Result<(), ServerError> {
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    let mut tx = c.transaction().map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS kiln_schema (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)",
    )
    .map_err(pg_err)?;
    let have: i64 =
        tx.query_one("SELECT COALESCE(MAX(version), 0) FROM kiln_schema", &[]).map_err(pg_err)?.get(0);
    if have > known {
        return Err(ServerError::Setup(format!(
            "the control database's schema is version {have}, newer than this kiln understands ({known}): \
             run a kiln at least as new as the one that migrated it"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > have) {
        tx.batch_execute(sql).map_err(|e| ServerError::Postgres(format!("migration {version}: {e}")))?;
        tx.execute("INSERT INTO kiln_schema (version, applied_at) VALUES ($1, $2)", &[version, &now()])
            .map_err(pg_err)?;
    }
    tx.commit().map_err(pg_err)
}

fn build_row(r: &Row) -> BuildRecord {
    BuildRecord {
        n: r.get(0),
        id: r.get(1),
        tenant: r.get(2),
        priority: r.get(3),
        state: r.get(4),
        failure: r.get(5),
        reason: r.get(6),
        retries: r.get(7),
        attempt: r.get(8),
        cancel_requested: r.get(9),
        timeout_seconds: r.get(10),
        pipeline: r.get(11),
        workflow: r.get(12),
        git_ref: r.get(13),
        source_tree: r.get(14),
        source_tar: r.get(15),
        body_hash: r.get(16),
        worker: r.get(17),
        created_at: r.get(18),
        enqueued_ms: r.get(19),
        started_ms: r.get(20),
        finished_ms: r.get(21),
        lease_until_ms: r.get(22),
        attempt_started_ms: r.get(23),
        timed_out: r.get(24),
        server: r.get(25),
        submitted_by: r.get(26),
    }
}

fn attempt_row(r: &Row) -> AttemptRow {
    AttemptRow {
        attempt: r.get(0),
        engine_id: r.get(1),
        log_base: r.get(2),
        worker: r.get(3),
        started_ms: r.get(4),
    }
}

fn one_build(
    c: &mut Client,
    filter: &str,
    arg: &(dyn postgres::types::ToSql + Sync),
) -> Result<Option<BuildRecord>, ServerError> {
    let sql = format!("SELECT {BUILD_COLS} FROM builds WHERE {filter}");
    Ok(c.query_opt(&sql, &[arg]).map_err(pg_err)?.as_ref().map(build_row))
}

fn owned(s: &str) -> String {
    s.to_string()
}

/// One try at a claim (see [`ControlStore::claim`]): `Ok(None)` when the
/// tenant picked reached its cap meanwhile (another server claimed for it),
/// `Ok(Some(None))` when nothing can be claimed.
#[allow(clippy::type_complexity)]
fn claim_once(
    c: &mut Client,
    req: &ClaimRequest,
    log_base: &Arc<LogBase>,
) -> Result<Option<Option<(BuildRecord, AttemptRow)>>, ServerError> {
    let mut tx = c.transaction().map_err(pg_err)?;
    let eligible: Vec<String> = tx
        .query(WAITING_TENANTS, &[])
        .map_err(pg_err)?
        .iter()
        .filter(|r| r.get::<_, i64>(2) < req.cap(r.get::<_, Option<&str>>(1)))
        .map(|r| r.get(0))
        .collect();
    if eligible.is_empty() {
        return Ok(Some(None));
    }
    // SKIP LOCKED: a build another server is claiming right now is passed
    // over, not waited for.
    let sql = format!(
        "SELECT b.id, b.tenant FROM builds b LEFT JOIN tenant_turns tt ON tt.tenant = b.tenant \
         WHERE b.state = 'queued' AND b.tenant = ANY($1) AND {} \
         {CLAIM_ORDER} LIMIT 1 FOR UPDATE OF b SKIP LOCKED",
        not_just_failed_by("$2", "$3")
    );
    let since = req.now_ms - RETRY_ELSEWHERE_MS;
    let Some(pick) = tx.query_opt(&sql, &[&eligible, &req.worker, &since]).map_err(pg_err)? else {
        return Ok(Some(None));
    };
    let (id, tenant): (String, String) = (pick.get(0), pick.get(1));
    // The tenant's claims one at a time, counted again under the lock: two
    // servers each picking one of its builds cannot both take its last slot.
    tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&TENANT_CLAIM_LOCK, &tenant])
        .map_err(pg_err)?;
    let plan: Option<String> = tx
        .query_opt("SELECT plan FROM tenants WHERE name = $1", &[&tenant])
        .map_err(pg_err)?
        .map(|r| r.get(0));
    let held: i64 = tx
        .query_one(
            "SELECT COUNT(*) FROM builds WHERE tenant = $1 AND state IN ('provisioning', 'running', 'extracting')",
            &[&tenant],
        )
        .map_err(pg_err)?
        .get(0);
    if held >= req.cap(plan.as_deref()) {
        return Ok(None);
    }
    // `state = 'queued'` again: the row lock makes this true, and says so.
    let Some(updated) = tx
        .query_opt(
            "UPDATE builds SET state = 'provisioning', worker = $2, attempt = attempt + 1, lease_until_ms = $3, \
             attempt_started_ms = NULL, timed_out = FALSE, server = $4 WHERE id = $1 AND state = 'queued' \
             RETURNING attempt",
            &[&id, &req.worker, &req.lease_until_ms, &req.server],
        )
        .map_err(pg_err)?
    else {
        return Ok(None);
    };
    let attempt: i64 = updated.get(0);
    tx.execute(
        "INSERT INTO transitions (build_id, at_ms, ts, state, event, detail) \
         VALUES ($1, $2, $3, 'provisioning', 'lease', $4)",
        &[&id, &req.now_ms, &now(), &req.worker],
    )
    .map_err(pg_err)?;
    let prev = tx
        .query_opt(
            "SELECT attempt, engine_id, log_base, worker, started_ms FROM attempts WHERE build_id = $1 \
             ORDER BY attempt DESC LIMIT 1",
            &[&id],
        )
        .map_err(pg_err)?
        .map(|r| attempt_row(&r));
    // The previous attempt's log is in the shared events: every replica
    // numbers the new attempt's lines alike.
    let log_base = match &prev {
        None => 0,
        Some(p) => {
            let shared: Option<i64> = tx
                .query_one("SELECT MAX(seq) FROM attempt_events WHERE engine_id = $1", &[&p.engine_id])
                .map_err(pg_err)?
                .get(0);
            match shared {
                Some(max) => p.log_base + max,
                None => log_base(p),
            }
        }
    };
    let row = AttemptRow {
        attempt,
        engine_id: engine_id(&id, attempt),
        log_base,
        worker: req.worker.clone(),
        started_ms: req.now_ms,
    };
    tx.execute(
        "INSERT INTO attempts (build_id, attempt, engine_id, log_base, worker, started_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&id, &row.attempt, &row.engine_id, &row.log_base, &row.worker, &row.started_ms],
    )
    .map_err(pg_err)?;
    tx.execute(
        "INSERT INTO tenant_turns (tenant, turn) VALUES ($1, nextval('kiln_turns')) \
         ON CONFLICT (tenant) DO UPDATE SET turn = EXCLUDED.turn",
        &[&tenant],
    )
    .map_err(pg_err)?;
    let build = tx
        .query_one(&format!("SELECT {BUILD_COLS} FROM builds WHERE id = $1"), &[&id])
        .map(|r| build_row(&r))
        .map_err(pg_err)?;
    tx.commit().map_err(pg_err)?;
    Ok(Some(Some((build, row))))
}

impl ControlStore for PgControl {
    fn upsert_tenant(&self, name: &str, plan: &str) -> Result<bool, ServerError> {
        let (name, plan) = (owned(name), owned(plan));
        self.call(move |c| {
            // `xmax = 0`: the row was inserted, not updated.
            let row = c
                .query_one(
                    "INSERT INTO tenants (name, plan, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET plan = EXCLUDED.plan RETURNING (xmax = 0)",
                    &[&name, &plan, &now()],
                )
                .map_err(pg_err)?;
            Ok(row.get(0))
        })
    }

    fn tenant_plan(&self, name: &str) -> Result<Option<String>, ServerError> {
        let name = owned(name);
        self.call(move |c| {
            Ok(c.query_opt("SELECT plan FROM tenants WHERE name = $1", &[&name])
                .map_err(pg_err)?
                .map(|r| r.get(0)))
        })
    }

    fn tenants(&self) -> Result<Vec<(String, String)>, ServerError> {
        self.call(|c| {
            let rows = c.query("SELECT name, plan FROM tenants ORDER BY name", &[]).map_err(pg_err)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn insert_token(&self, hash: &str, p: &Principal) -> Result<(), ServerError> {
        let (hash, p) = (owned(hash), p.clone());
        self.call(move |c| {
            c.execute(
                "INSERT INTO tokens (hash, tenant, operator, worker, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&hash, &p.tenant, &p.operator, &p.worker, &now()],
            )
            .map_err(pg_err)?;
            Ok(())
        })
    }

    fn principal(&self, hash: &str) -> Result<Option<Principal>, ServerError> {
        let hash = owned(hash);
        self.call(move |c| {
            let row = c
                .query_opt("SELECT tenant, operator, worker FROM tokens WHERE hash = $1", &[&hash])
                .map_err(pg_err)?;
            Ok(row.map(|r| Principal { tenant: r.get(0), operator: r.get(1), worker: r.get(2) }))
        })
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, ServerError> {
        self.call(|c| {
            let rows = c
                .query(
                    "SELECT hash, tenant, operator, worker, created_at FROM tokens ORDER BY created_at, hash",
                    &[],
                )
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let hash: String = r.get(0);
                    TokenRow {
                        id: hash.chars().take(TOKEN_ID_LEN).collect(),
                        principal: Principal { tenant: r.get(1), operator: r.get(2), worker: r.get(3) },
                        created_at: r.get(4),
                    }
                })
                .collect())
        })
    }

    fn revoke_tokens(&self, id: &str) -> Result<usize, ServerError> {
        let id = owned(id);
        self.call(move |c| {
            let n = c
                .execute("DELETE FROM tokens WHERE substr(hash, 1, $2) = $1", &[&id, &(id.len() as i32)])
                .map_err(pg_err)?;
            Ok(n as usize)
        })
    }

    fn insert_build(&self, b: &NewBuild) -> Result<i64, ServerError> {
        let b = b.clone();
        self.call(move |c| {
            let mut tx = c.transaction().map_err(pg_err)?;
            let n: i64 = tx
                .query_one(
                    "INSERT INTO builds (id, tenant, priority, state, timeout_secs, pipeline, workflow, git_ref, \
                     source_tar, source_tree, idem_key, body_hash, created_at, enqueued_ms, submitted_by) \
                     VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING n",
                    &[
                        &b.id,
                        &b.tenant,
                        &b.priority,
                        &b.timeout_secs,
                        &b.pipeline,
                        &b.workflow,
                        &b.git_ref,
                        &b.source_tar,
                        &b.source_tree,
                        &b.idem_key,
                        &b.body_hash,
                        &now(),
                        &b.enqueued_ms,
                        &b.submitted_by,
                    ],
                )
                .map_err(pg_err)?
                .get(0);
            tx.execute(
                "INSERT INTO transitions (build_id, at_ms, ts, state, event, detail) \
                 VALUES ($1, $2, $3, 'queued', 'submit', '')",
                &[&b.id, &b.enqueued_ms, &now()],
            )
            .map_err(pg_err)?;
            tx.commit().map_err(pg_err)?;
            Ok(n)
        })
    }

    fn build_by_key(&self, tenant: &str, key: &str) -> Result<Option<BuildRecord>, ServerError> {
        let (tenant, key) = (owned(tenant), owned(key));
        self.call(move |c| {
            let sql = format!("SELECT {BUILD_COLS} FROM builds WHERE tenant = $1 AND idem_key = $2");
            Ok(c.query_opt(&sql, &[&tenant, &key]).map_err(pg_err)?.as_ref().map(build_row))
        })
    }

    fn build(&self, id: &str) -> Result<Option<BuildRecord>, ServerError> {
        let id = owned(id);
        self.call(move |c| one_build(c, "id = $1", &id))
    }

    fn build_by_n(&self, n: i64) -> Result<Option<BuildRecord>, ServerError> {
        self.call(move |c| one_build(c, "n = $1", &n))
    }

    fn builds(
        &self,
        tenant: Option<&str>,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<BuildRecord>, ServerError> {
        let (tenant, state) = (tenant.map(owned), state.map(owned));
        self.call(move |c| {
            let sql = format!(
                "SELECT {BUILD_COLS} FROM builds WHERE ($1::text IS NULL OR tenant = $1) \
                 AND ($2::text IS NULL OR state = $2) ORDER BY n DESC LIMIT $3"
            );
            Ok(c.query(&sql, &[&tenant, &state, &limit]).map_err(pg_err)?.iter().map(build_row).collect())
        })
    }

    fn builds_in(&self, states: &[&str]) -> Result<Vec<BuildRecord>, ServerError> {
        let states: Vec<String> = states.iter().map(|s| owned(s)).collect();
        self.call(move |c| {
            let sql = format!("SELECT {BUILD_COLS} FROM builds WHERE state = ANY($1) ORDER BY n");
            Ok(c.query(&sql, &[&states]).map_err(pg_err)?.iter().map(build_row).collect())
        })
    }

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
        let (id, state, failure, reason, event, detail) =
            (owned(id), owned(state), failure.map(owned), reason.map(owned), owned(event), owned(detail));
        let (from, attempt, ended_by) = (owned(expect.state), expect.attempt, expect.lease_ended_by);
        self.call(move |c| {
            let terminal = kiln_queue::BuildState::is_terminal_name(&state);
            let mut tx = c.transaction().map_err(pg_err)?;
            let changed = tx
                .execute(
                    "UPDATE builds SET state = $2, failure = $3, reason = COALESCE($4, reason), retries = $5, \
                     finished_ms = CASE WHEN $6 THEN $7 ELSE finished_ms END, \
                     started_ms = CASE WHEN $2 = 'running' AND started_ms IS NULL THEN $7 ELSE started_ms END, \
                     attempt_started_ms = CASE WHEN $2 = 'running' THEN $7 \
                         WHEN $2 = 'queued' THEN NULL ELSE attempt_started_ms END, \
                     worker = CASE WHEN $2 = 'queued' THEN NULL ELSE worker END, \
                     server = CASE WHEN $6 OR $2 = 'queued' THEN NULL ELSE server END, \
                     lease_until_ms = CASE WHEN $6 OR $2 = 'queued' THEN NULL ELSE lease_until_ms END, \
                     timed_out = CASE WHEN $2 = 'queued' THEN FALSE ELSE timed_out END \
                     WHERE id = $1 AND state = $8 AND attempt = $9 \
                     AND ($10::BIGINT IS NULL OR COALESCE(lease_until_ms, 0) < $10)",
                    &[&id, &state, &failure, &reason, &retries, &terminal, &at_ms, &from, &attempt, &ended_by],
                )
                .map_err(pg_err)?;
            if changed == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO transitions (build_id, at_ms, ts, state, event, detail) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&id, &at_ms, &now(), &state, &event, &detail],
            )
            .map_err(pg_err)?;
            tx.commit().map_err(pg_err)?;
            Ok(true)
        })
    }

    fn claim(
        &self,
        req: &ClaimRequest,
        log_base: Arc<LogBase>,
    ) -> Result<Option<(BuildRecord, AttemptRow)>, ServerError> {
        let req = req.clone();
        self.call(move |c| {
            // A lost race for a tenant's last slot is tried again with the
            // queue as it is then.
            for _ in 0..8 {
                if let Some(claimed) = claim_once(c, &req, &log_base)? {
                    return Ok(claimed);
                }
            }
            Ok(None)
        })
    }

    fn renew_lease(&self, id: &str, worker: &str, attempt: i64, until_ms: i64) -> Result<bool, ServerError> {
        let (id, worker) = (owned(id), owned(worker));
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE builds SET lease_until_ms = GREATEST(COALESCE(lease_until_ms, 0), $4) \
                 WHERE id = $1 AND worker = $2 AND attempt = $3 \
                 AND state IN ('provisioning', 'running', 'extracting')",
                &[&id, &worker, &attempt, &until_ms],
            )
            .map_err(pg_err)?
                == 1)
        })
    }

    fn expired_leases(&self, now_ms: i64) -> Result<Vec<BuildRecord>, ServerError> {
        self.call(move |c| {
            let sql = format!(
                "SELECT {BUILD_COLS} FROM builds WHERE state IN ('provisioning', 'running', 'extracting') \
                 AND COALESCE(lease_until_ms, 0) < $1 ORDER BY n"
            );
            Ok(c.query(&sql, &[&now_ms]).map_err(pg_err)?.iter().map(build_row).collect())
        })
    }

    fn mark_timed_out(&self, now_ms: i64) -> Result<Vec<(String, String, i64)>, ServerError> {
        self.call(move |c| {
            let rows = c
                .query(
                    "UPDATE builds SET timed_out = TRUE WHERE state = 'running' AND NOT timed_out \
                     AND attempt_started_ms IS NOT NULL AND attempt_started_ms + timeout_secs * 1000 < $1 \
                     RETURNING id, tenant, timeout_secs",
                    &[&now_ms],
                )
                .map_err(pg_err)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        })
    }

    fn queue_counts(&self) -> Result<QueueCounts, ServerError> {
        self.call(move |c| {
            let r = c
                .query_one(
                    "SELECT COUNT(*) FILTER (WHERE state = 'queued'), \
                     COUNT(*) FILTER (WHERE state <> 'queued'), \
                     COUNT(*) FILTER (WHERE state <> 'queued' AND worker LIKE 'remote:%') \
                     FROM builds WHERE state IN ('queued', 'provisioning', 'running', 'extracting')",
                    &[],
                )
                .map_err(pg_err)?;
            Ok(QueueCounts { queued: r.get(0), held: r.get(1), held_remote: r.get(2) })
        })
    }

    fn attempts(&self, id: &str) -> Result<Vec<AttemptRow>, ServerError> {
        let id = owned(id);
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT attempt, engine_id, log_base, worker, started_ms FROM attempts WHERE build_id = $1 \
                     ORDER BY attempt",
                    &[&id],
                )
                .map_err(pg_err)?;
            Ok(rows.iter().map(attempt_row).collect())
        })
    }

    fn set_cancel_requested(&self, id: &str, reason: Option<&str>) -> Result<(), ServerError> {
        let (id, reason) = (owned(id), reason.map(owned));
        self.call(move |c| {
            c.execute(
                "UPDATE builds SET cancel_requested = TRUE, reason = COALESCE($2, reason) WHERE id = $1",
                &[&id, &reason],
            )
            .map_err(pg_err)?;
            Ok(())
        })
    }

    fn transitions(&self, id: &str) -> Result<Vec<TransitionRow>, ServerError> {
        let id = owned(id);
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT ts, at_ms, state, event, detail FROM transitions WHERE build_id = $1 ORDER BY n",
                    &[&id],
                )
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| TransitionRow {
                    ts: r.get(0),
                    at_ms: r.get(1),
                    state: r.get(2),
                    event: r.get(3),
                    detail: r.get(4),
                })
                .collect())
        })
    }

    fn lease_order(&self, tenant: Option<&str>) -> Result<Vec<(String, String, String)>, ServerError> {
        let tenant = tenant.map(owned);
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT t.build_id, b.tenant, b.priority FROM transitions t JOIN builds b ON b.id = t.build_id \
                     WHERE t.state = 'provisioning' AND ($1::text IS NULL OR b.tenant = $1) ORDER BY t.n",
                    &[&tenant],
                )
                .map_err(pg_err)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        })
    }

    fn put_secret(
        &self,
        tenant: &str,
        name: &str,
        phases: &[String],
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<(), ServerError> {
        let (tenant, name, phases, nonce, ciphertext) =
            (owned(tenant), owned(name), phases.join(","), nonce.to_vec(), ciphertext.to_vec());
        self.call(move |c| {
            c.execute(
                "INSERT INTO secrets (tenant, name, phases, nonce, ciphertext, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, name) DO UPDATE SET \
                 phases = EXCLUDED.phases, nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, \
                 updated_at = EXCLUDED.updated_at",
                &[&tenant, &name, &phases, &nonce, &ciphertext, &now()],
            )
            .map_err(pg_err)?;
            Ok(())
        })
    }

    fn delete_secret(&self, tenant: &str, name: &str) -> Result<bool, ServerError> {
        let (tenant, name) = (owned(tenant), owned(name));
        self.call(move |c| {
            Ok(c.execute("DELETE FROM secrets WHERE tenant = $1 AND name = $2", &[&tenant, &name])
                .map_err(pg_err)?
                > 0)
        })
    }

    fn secrets(&self, tenant: &str) -> Result<Vec<SecretRow>, ServerError> {
        let tenant = owned(tenant);
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT name, phases, nonce, ciphertext, updated_at FROM secrets WHERE tenant = $1 ORDER BY name",
                    &[&tenant],
                )
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let phases: String = r.get(1);
                    SecretRow {
                        name: r.get(0),
                        phases: phases.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect(),
                        nonce: r.get(2),
                        ciphertext: r.get(3),
                        updated_at: r.get(4),
                    }
                })
                .collect())
        })
    }

    fn insert_usage(&self, u: &UsageRow) -> Result<(), ServerError> {
        let u = u.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO usage (build_id, tenant, status, queue_wait_seconds, wall_seconds, cpu_seconds, \
                 peak_memory_bytes, egress_bytes, artifact_bytes, cache_read_bytes, cache_write_bytes, log_bytes, \
                 attempts, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (build_id) DO UPDATE SET tenant = EXCLUDED.tenant, status = EXCLUDED.status, \
                 queue_wait_seconds = EXCLUDED.queue_wait_seconds, wall_seconds = EXCLUDED.wall_seconds, \
                 cpu_seconds = EXCLUDED.cpu_seconds, peak_memory_bytes = EXCLUDED.peak_memory_bytes, \
                 egress_bytes = EXCLUDED.egress_bytes, artifact_bytes = EXCLUDED.artifact_bytes, \
                 cache_read_bytes = EXCLUDED.cache_read_bytes, cache_write_bytes = EXCLUDED.cache_write_bytes, \
                 log_bytes = EXCLUDED.log_bytes, attempts = EXCLUDED.attempts, finished_at = EXCLUDED.finished_at",
                &[
                    &u.build,
                    &u.tenant,
                    &u.status,
                    &u.queue_wait_seconds,
                    &u.wall_seconds,
                    &u.cpu_seconds,
                    &u.peak_memory_bytes,
                    &u.egress_bytes,
                    &u.artifact_bytes,
                    &u.cache_read_bytes,
                    &u.cache_write_bytes,
                    &u.log_bytes,
                    &u.attempts,
                    &u.finished_at,
                ],
            )
            .map_err(pg_err)?;
            Ok(())
        })
    }

    fn usage_rows(&self, tenant: &str, build: Option<&str>) -> Result<Vec<UsageRow>, ServerError> {
        let (tenant, build) = (owned(tenant), build.map(owned));
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT build_id, tenant, status, queue_wait_seconds, wall_seconds, cpu_seconds, \
                     peak_memory_bytes, egress_bytes, artifact_bytes, cache_read_bytes, cache_write_bytes, log_bytes, \
                     attempts, finished_at FROM usage WHERE tenant = $1 AND ($2::text IS NULL OR build_id = $2) \
                     ORDER BY finished_at, build_id",
                    &[&tenant, &build],
                )
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| UsageRow {
                    build: r.get(0),
                    tenant: r.get(1),
                    status: r.get(2),
                    queue_wait_seconds: r.get(3),
                    wall_seconds: r.get(4),
                    cpu_seconds: r.get(5),
                    peak_memory_bytes: r.get(6),
                    egress_bytes: r.get(7),
                    artifact_bytes: r.get(8),
                    cache_read_bytes: r.get(9),
                    cache_write_bytes: r.get(10),
                    log_bytes: r.get(11),
                    attempts: r.get(12),
                    finished_at: r.get(13),
                })
                .collect())
        })
    }

    fn set_notify(&self, build: &str, url: &str) -> Result<(), ServerError> {
        let (build, url) = (owned(build), owned(url));
        self.call(move |c| {
            c.execute(
                "INSERT INTO notifications (build_id, url) VALUES ($1, $2) \
                 ON CONFLICT (build_id) DO UPDATE SET url = EXCLUDED.url, delivered = NULL, attempts = NULL, at = NULL",
                &[&build, &url],
            )
            .map_err(pg_err)?;
            Ok(())
        })
    }

    fn notification(&self, build: &str) -> Result<Option<Notification>, ServerError> {
        let build = owned(build);
        self.call(move |c| {
            let row = c
                .query_opt(
                    "SELECT url, delivered, attempts FROM notifications WHERE build_id = $1",
                    &[&build],
                )
                .map_err(pg_err)?;
            Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
        })
    }

    fn claim_notification(
        &self,
        build: &str,
        server: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, ServerError> {
        let (build, server) = (owned(build), owned(server));
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE notifications SET server = $2, lease_until_ms = $4 WHERE build_id = $1 \
                 AND delivered IS NULL AND COALESCE(lease_until_ms, 0) < $3",
                &[&build, &server, &now_ms, &until_ms],
            )
            .map_err(pg_err)?
                == 1)
        })
    }

    fn renew_notification(&self, build: &str, server: &str, until_ms: i64) -> Result<bool, ServerError> {
        let (build, server) = (owned(build), owned(server));
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE notifications SET lease_until_ms = GREATEST(COALESCE(lease_until_ms, 0), $3) \
                 WHERE build_id = $1 AND server = $2 AND delivered IS NULL",
                &[&build, &server, &until_ms],
            )
            .map_err(pg_err)?
                == 1)
        })
    }

    fn due_notifications(&self, now_ms: i64) -> Result<Vec<String>, ServerError> {
        self.call(move |c| {
            Ok(c.query(DUE_NOTIFICATIONS, &[&now_ms]).map_err(pg_err)?.iter().map(|r| r.get(0)).collect())
        })
    }

    fn record_delivery(
        &self,
        build: &str,
        server: &str,
        delivered: bool,
        attempts: &str,
    ) -> Result<bool, ServerError> {
        let (build, server, attempts) = (owned(build), owned(server), owned(attempts));
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE notifications SET delivered = $3, attempts = $4, at = $5 \
                 WHERE build_id = $1 AND server = $2 AND delivered IS NULL",
                &[&build, &server, &delivered, &attempts, &now()],
            )
            .map_err(pg_err)?
                == 1)
        })
    }

    fn audit(
        &self,
        tenant: Option<&str>,
        build: Option<&str>,
        kind: &str,
        actor: &str,
        detail: &str,
    ) -> Result<(), ServerError> {
        let (tenant, build, kind, actor, detail) =
            (tenant.map(owned), build.map(owned), owned(kind), owned(actor), owned(detail));
        self.call(move |c| {
            c.execute(
                "INSERT INTO audit (ts, tenant, build_id, kind, actor, detail) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&now(), &tenant, &build, &kind, &actor, &detail],
            )
            .map_err(pg_err)?;
            Ok(())
        })
    }

    fn audit_events(
        &self,
        tenant: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditRow>, ServerError> {
        let tenant = tenant.map(owned);
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT n, ts, tenant, build_id, kind, actor, detail FROM audit \
                     WHERE ($1::text IS NULL OR tenant = $1) AND n > $2 ORDER BY n LIMIT $3",
                    &[&tenant, &after, &limit],
                )
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| AuditRow {
                    seq: r.get(0),
                    ts: r.get(1),
                    tenant: r.get(2),
                    build: r.get(3),
                    kind: r.get(4),
                    actor: r.get(5),
                    detail: r.get(6),
                })
                .collect())
        })
    }
}
