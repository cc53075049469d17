//! The control plane's core: the queue (the `kiln-queue` state machine,
//! scheduler and leases behind one lock, persisted in `control.db`), the
//! claims workers make, what their reports do, lease expiry, plan timeouts
//! and recovery after a restart.
//!
//! # Durability
//!
//! `control.db` is the truth; the in-memory [`kiln_queue::Scheduler`] and
//! [`kiln_queue::Leases`] are derived from it. Every transition is written
//! (with its time and cause) before its effect on the scheduler, in the same
//! critical section, so a `kill -9` at any point leaves a database from
//! which [`Core::start`] rebuilds the queue: queued builds are queued again
//! in their order, and builds a worker held (provisioning, running,
//! extracting) get the infrastructure-failure transition — a retry counted,
//! or `failed (infrastructure)` when retries are spent.
//!
//! # Attempts
//!
//! Every lease starts an attempt with its own engine build id (`ID`, then
//! `ID.2`, `ID.3`), so the engine's rows of a retried attempt are kept
//! apart; the API stitches the attempts' logs into one log whose positions
//! keep growing across retries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kiln_queue::{
    transition_with, BuildId, BuildState, Effect, Event as QEvent, Leases, Plan, Priority, QueuedBuild,
    SchedStatus, Scheduler, TenantId, WorkerId,
};
use tokio::sync::{watch, Notify};

use crate::db::{now_ms, AttemptRow, BuildRecord, ControlDb, NewBuild, Principal, UsageRow};
use crate::error::ServerError;
use crate::metrics::{Gauges, Metrics};
use crate::statedb::StateReader;
use crate::vault::Vault;

/// Leases of in-process workers never expire: they die with the server.
const IN_PROCESS_TTL_MS: u64 = u64::MAX / 4;

/// How the control plane runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `control.db`, `state.db`, the content store, the keys.
    pub state_dir: PathBuf,
    /// In-process workers (0: only remote `kiln worker`s run builds).
    pub workers: usize,
    pub isolation: kiln_sandbox::Isolation,
    /// A remote worker's lease without a heartbeat for this long is taken back.
    pub lease_ttl_ms: u64,
    /// Infrastructure retries per build.
    pub max_retries: u32,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Egress bytes per build.
    pub egress_cap: u64,
    /// Private `ip:port`s opened for egress.
    pub allow_private: Vec<std::net::SocketAddr>,
    /// The trusted branch whose caches every build reads.
    pub default_branch: String,
    /// The content store (artifacts, caches, sources, provenance) as an
    /// object_store URL; `None`: `store/` under the state dir.
    pub store_url: Option<String>,
    /// The control database (`postgres://...`); `None`: `control.db` in
    /// the state dir.
    pub database: Option<String>,
    /// Where the queue reads the time (leases, timeouts, queue waits).
    pub clock: Arc<dyn Clock>,
}

/// Where the control plane reads the time: the system's, or in tests one
/// moved by hand, so that lease expiry and timeouts are tested without
/// sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// Starts at the system's time now.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock(std::sync::atomic::AtomicI64::new(now_ms())))
    }

    /// Moves it forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl ServerConfig {
    pub fn new(state_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            state_dir,
            workers: 2,
            isolation: kiln_sandbox::Isolation::Gvisor,
            lease_ttl_ms: kiln_queue::DEFAULT_LEASE_TTL_MS,
            max_retries: kiln_queue::DEFAULT_MAX_RETRIES,
            max_body_bytes: 64 << 20,
            egress_cap: 2 << 30,
            allow_private: Vec::new(),
            default_branch: "main".into(),
            store_url: None,
            database: None,
            clock: Arc::new(SystemClock),
        }
    }
}

/// The plans a tenant can be on.
pub const PLANS: &[&str] = &["free", "team"];

/// What a plan allows.
pub fn plan_limits(name: &str) -> Option<Plan> {
    match name {
        // Small on purpose: one build at a time, ten minutes, 256 MiB of cache.
        "free" => Some(Plan { max_concurrent: 1, max_timeout_secs: 600, cache_quota_bytes: 256 << 20 }),
        "team" => Some(Plan { max_concurrent: 4, max_timeout_secs: 3 * 3600, cache_quota_bytes: 10 << 30 }),
        _ => None,
    }
}

pub(crate) fn priority_of(s: &str) -> Priority {
    if s == "urgent" {
        Priority::Urgent
    } else {
        Priority::Normal
    }
}

/// The queue state of a stored build (an unknown stored state is an
/// error, never taken for a failure).
pub(crate) fn parse_state(b: &BuildRecord) -> Result<BuildState, ServerError> {
    BuildState::from_names(&b.state, b.failure.as_deref())
        .map_err(|e| ServerError::Setup(format!("build {}: {e}", b.id)))
}

pub(crate) fn is_terminal(state: &str) -> bool {
    BuildState::is_terminal_name(state)
}

/// A build handed to a worker.
#[derive(Debug, Clone)]
pub struct Claim {
    pub build: BuildRecord,
    pub attempt: AttemptRow,
}

/// How an attempt ended, as its worker reports it.
#[derive(Debug, Clone)]
pub enum AttemptOutcome {
    /// The engine ran the build to its end: `succeeded`, `failed` or `cancelled`.
    Finished { status: String, egress_bytes: u64 },
    /// The build could not run (setup, runtime, source): retried while retries remain.
    Infra(String),
}

/// The worker no longer holds the attempt it reports on (its lease was
/// taken back, or the build was handed to another attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this worker does not hold the build's lease")]
pub struct LeaseLost;

/// What the core tracks of a build a worker holds.
#[derive(Debug)]
struct Held {
    n: u64,
    attempt: i64,
    worker: String,
    leased_ms: i64,
    started_ms: Option<i64>,
    timeout_secs: i64,
    cancel: Option<watch::Sender<bool>>,
    cancel_requested: bool,
    timed_out: bool,
    remote: bool,
}

#[derive(Debug)]
struct Inner {
    db: ControlDb,
    sched: Scheduler,
    leases: Leases,
    /// Scheduler ids (control.db row numbers) to build ids.
    ids: HashMap<u64, String>,
    held: HashMap<String, Held>,
}

/// The control plane's state; shared by the API, the workers and the reaper.
#[derive(Debug)]
pub struct Core {
    pub cfg: ServerConfig,
    /// The canonical state directory.
    pub state_dir: PathBuf,
    inner: Mutex<Inner>,
    /// A second connection for reads, so listing builds never waits on a claim.
    reader: Mutex<ControlDb>,
    state_reader: Mutex<Option<StateReader>>,
    notify: Notify,
    pub metrics: Metrics,
    pub vault: Vault,
    /// The deployment's signing key (the state dir's, which the
    /// in-process engine signs with too): remote workers' provenance is
    /// signed with it, never with a worker's own key.
    pub keys: Arc<kiln_store::Keys>,
    blobs: kiln_store::Store,
    busy: AtomicU64,
    /// Egress bytes of builds that finished, until their usage is recorded.
    egress: Mutex<HashMap<String, u64>>,
    /// When each tenant's cache quota was last checked.
    quota_checked: Mutex<HashMap<String, std::time::Instant>>,
    pub(crate) remote: crate::remote::Sinks,
    /// This core, for work handed to other threads (webhook deliveries).
    me: std::sync::OnceLock<std::sync::Weak<Core>>,
    /// Changes every time a build changes state: live log streams wait on
    /// it (and on their build's log commits) instead of polling.
    changes: watch::Sender<u64>,
}

impl Core {
    /// Opens the databases and rebuilds the queue from `control.db`,
    /// recovering builds that workers held when the server stopped.
    pub fn start(cfg: ServerConfig) -> Result<Arc<Core>, ServerError> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| ServerError::io("creating", &cfg.state_dir, e))?;
        let state_dir = std::fs::canonicalize(&cfg.state_dir)
            .map_err(|e| ServerError::io("resolving", &cfg.state_dir, e))?;
        let db = ControlDb::connect_server(cfg.database.as_deref(), &state_dir)?;
        let reader = ControlDb::connect(cfg.database.as_deref(), &state_dir)?;
        let vault = Vault::load_or_create(&state_dir)?;
        let keys = Arc::new(
            kiln_store::Keys::load_or_create(&state_dir)
                .map_err(|e| ServerError::Key(format!("the provenance signing key: {e}")))?,
        );
        let blobs = match &cfg.store_url {
            Some(url) => kiln_store::Store::open_url(url)?,
            None => {
                let store_dir = state_dir.join("store");
                std::fs::create_dir_all(&store_dir)
                    .map_err(|e| ServerError::io("creating", &store_dir, e))?;
                kiln_store::Store::open_local(&store_dir)?
            }
        };
        let mut sched = Scheduler::new();
        for (tenant, plan) in db.tenants()? {
            if let Some(p) = plan_limits(&plan) {
                sched.set_plan(&TenantId::new(tenant), p);
            }
        }
        let core = Arc::new(Core {
            cfg,
            state_dir,
            inner: Mutex::new(Inner {
                db,
                sched,
                leases: Leases::new(),
                ids: HashMap::new(),
                held: HashMap::new(),
            }),
            reader: Mutex::new(reader),
            state_reader: Mutex::new(None),
            notify: Notify::new(),
            metrics: Metrics::default(),
            vault,
            keys,
            blobs,
            busy: AtomicU64::new(0),
            egress: Mutex::new(HashMap::new()),
            quota_checked: Mutex::new(HashMap::new()),
            remote: Default::default(),
            me: std::sync::OnceLock::new(),
            changes: watch::channel(0).0,
        });
        let _ = core.me.set(Arc::downgrade(&core));
        core.recover()?;
        Ok(core)
    }

    /// A signal that changes whenever a build changes state.
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn state_changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The read connection.
    pub fn read(&self) -> MutexGuard<'_, ControlDb> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a read-only view of `state.db`.
    pub fn with_state<T>(
        &self,
        f: impl FnOnce(&StateReader) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let mut g = self.state_reader.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(StateReader::open(&self.state_dir)?);
        }
        match g.as_ref() {
            Some(r) => f(r),
            None => Err(ServerError::Setup("state.db reader".into())),
        }
    }

    /// The content store namespace of a tenant.
    /// Sets where a build's deployment webhook goes (before it is queued).
    pub fn set_notify(&self, build: &str, url: &str) -> Result<(), ServerError> {
        self.lock().db.set_notify(build, url)
    }

    pub fn tenant_store(&self, tenant: &str) -> Result<kiln_store::Store, ServerError> {
        Ok(self.blobs.tenant(tenant)?)
    }

    fn recover(&self) -> Result<(), ServerError> {
        let queued = self.lock().db.builds_in(&["queued"])?;
        let held = self.lock().db.builds_in(&["provisioning", "running", "extracting"])?;
        for b in &held {
            // Not in the scheduler yet: a retry queues it (ahead of the
            // tenant's queued builds, tracked below), a final state needs
            // nothing more.
            let event = if b.cancel_requested {
                QEvent::Cancel
            } else {
                QEvent::InfraFailure("the server stopped while the build ran".into())
            };
            self.apply(&b.id, event, "the server restarted while a worker held the build")?;
        }
        for b in &queued {
            self.track(b);
        }
        let n = queued.len() + held.len();
        if n > 0 {
            tracing::info!("recovered {} queued and {} interrupted builds", queued.len(), held.len());
        }
        Ok(())
    }

    /// Puts a stored queued build into the scheduler.
    fn track(&self, b: &BuildRecord) {
        let mut g = self.lock();
        let tenant = TenantId::new(b.tenant.clone());
        if let Ok(Some(plan)) = g.db.tenant_plan(&b.tenant) {
            if let Some(p) = plan_limits(&plan) {
                g.sched.set_plan(&tenant, p);
            }
        }
        let id = BuildId(b.n as u64);
        let qb =
            QueuedBuild { id, tenant, priority: priority_of(&b.priority), enqueued_at: b.enqueued_ms as u64 };
        if g.sched.enqueue(qb).is_ok() {
            g.ids.insert(id.0, b.id.clone());
        }
    }

    // ---- submit ----

    /// Queues a new build. With an idempotency key already used by the
    /// tenant, returns the earlier build instead (`false`), or `Err(Some)`
    /// with it when the request differs.
    pub fn submit(&self, b: NewBuild) -> Result<Result<(BuildRecord, bool), BuildRecord>, ServerError> {
        let mut g = self.lock();
        if let Some(key) = &b.idem_key {
            if let Some(existing) = g.db.build_by_key(&b.tenant, key)? {
                return Ok(if existing.body_hash == b.body_hash {
                    Ok((existing, false))
                } else {
                    Err(existing)
                });
            }
        }
        let n = g.db.insert_build(&b)?;
        let tenant = TenantId::new(b.tenant.clone());
        if let Some(p) = g.db.tenant_plan(&b.tenant)?.as_deref().and_then(plan_limits) {
            g.sched.set_plan(&tenant, p);
        }
        let id = BuildId(n as u64);
        let qb =
            QueuedBuild { id, tenant, priority: priority_of(&b.priority), enqueued_at: b.enqueued_ms as u64 };
        if let Err(e) = g.sched.enqueue(qb) {
            return Err(ServerError::Setup(format!("queue: {e}")));
        }
        g.ids.insert(id.0, b.id.clone());
        let row = g.db.build(&b.id)?.ok_or_else(|| ServerError::Setup("build vanished".into()))?;
        drop(g);
        self.notify.notify_waiters();
        Ok(Ok((row, true)))
    }

    // ---- transitions ----

    /// Applies a queue event to a build, persists it and carries out its
    /// effect on the scheduler and leases. Returns the state after it
    /// (`None` for an unknown build or an event not valid in its state:
    /// late and duplicate reports are normal and change nothing).
    pub fn apply(&self, id: &str, event: QEvent, detail: &str) -> Result<Option<BuildState>, ServerError> {
        let mut g = self.lock();
        let Some(row) = g.db.build(id)? else { return Ok(None) };
        let current = parse_state(&row)?;
        let (next, effect) = match transition_with(current, &event, row.retries as u32, self.cfg.max_retries)
        {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(build = id, "ignored: {e}");
                return Ok(None);
            }
        };
        if effect == Effect::None {
            return Ok(Some(next));
        }
        let retries = row.retries + i64::from(effect == Effect::Retry);
        let (state, failure) = next.names();
        let reason = matches!(next, BuildState::Failed(_) | BuildState::Cancelled).then_some(detail);
        let now = self.cfg.clock.now_ms();
        let event_name = match &event {
            QEvent::InfraFailure(_) => "infra-failure",
            e => e.name(),
        };
        g.db.record_transition(id, state, failure, reason, retries, event_name, detail, now)?;
        self.state_changed();
        let bid = BuildId(row.n as u64);
        match effect {
            Effect::Retry | Effect::Finish => {
                if let Some(l) = g.leases.get(bid).cloned() {
                    let _ = g.leases.release(bid, &l.worker);
                }
                let held = g.held.remove(id);
                if effect == Effect::Retry {
                    if g.sched.requeue(bid).is_err() {
                        let qb = QueuedBuild {
                            id: bid,
                            tenant: TenantId::new(row.tenant.clone()),
                            priority: priority_of(&row.priority),
                            enqueued_at: row.enqueued_ms as u64,
                        };
                        let _ = g.sched.enqueue(qb);
                        g.ids.insert(bid.0, id.to_string());
                    }
                    self.metrics.infra_failure();
                } else {
                    match g.sched.status(bid) {
                        Some(SchedStatus::Queued) => {
                            let _ = g.sched.cancel(bid);
                        }
                        Some(_) => {
                            let _ = g.sched.finished(bid);
                        }
                        None => {}
                    }
                    g.ids.remove(&bid.0);
                    if failure == Some("infrastructure") {
                        self.metrics.infra_failure();
                    }
                    let duration = held.map(|h| (now - h.leased_ms) as f64 / 1000.0);
                    self.metrics.build_finished(state, failure, duration);
                }
                drop(g);
                if effect == Effect::Finish {
                    self.record_usage(id);
                    if state == "succeeded" {
                        self.deliver_notification(id);
                    }
                }
                self.notify.notify_waiters();
            }
            _ => {
                if next == BuildState::Running {
                    if let Some(h) = g.held.get_mut(id) {
                        h.started_ms = Some(now);
                        self.metrics.provisioning((now - h.leased_ms) as f64 / 1000.0);
                    }
                }
            }
        }
        Ok(Some(next))
    }

    /// Posts a succeeded build's deployment webhook, if it has one, from a
    /// thread of its own (deliveries retry with backoff for a while): the
    /// artifact, its signed provenance, output type and source, signed with
    /// the server's webhook key (`notify.key` in the state dir).
    fn deliver_notification(&self, id: &str) {
        // Off the caller's thread (an async worker or handler): the store
        // read blocks and deliveries retry with backoff for a while.
        let Some(core) = self.me.get().and_then(std::sync::Weak::upgrade) else { return };
        let id = id.to_string();
        std::thread::spawn(move || {
            let span = tracing::info_span!("notify", build = %id);
            let _enter = span.enter();
            let (url, artifact, body) = match core.notification_payload(&id) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("deployment webhook: {e}");
                    return;
                }
            };
            let delivery = crate::notify::load_or_create_key(&core.state_dir.join("notify.key"))
                .and_then(|key| crate::notify::Notifier::new(&url, key).map_err(|e| e.to_string()))
                .map(|n| {
                    n.deliver(&body, &format!("{id}:{artifact}"), crate::notify::RetryPolicy::default())
                });
            let tenant = body["tenant"].as_str().map(str::to_string);
            match delivery {
                Ok(d) => {
                    let attempts = serde_json::to_string(&d.attempts).unwrap_or_default();
                    if let Err(e) = core.lock().db.record_delivery(&id, d.delivered, &attempts) {
                        tracing::error!("recording the delivery: {e}");
                    }
                    let kind = if d.delivered { "notify delivered" } else { "notify failed" };
                    let detail = format!("{url} after {} attempt(s)", d.attempts.len());
                    core.audit(tenant.as_deref(), Some(&id), kind, "server", &detail);
                }
                Err(e) => core.audit(
                    tenant.as_deref(),
                    Some(&id),
                    "notify failed",
                    "server",
                    &format!("{url}: {e}"),
                ),
            }
        });
    }

    /// The webhook URL, artifact id and body of a succeeded build that has
    /// a webhook not yet delivered and an artifact that is not quarantined.
    fn notification_payload(
        &self,
        id: &str,
    ) -> Result<Option<(String, String, serde_json::Value)>, ServerError> {
        let (row, attempts, url) = {
            let g = self.lock();
            let Some((url, None, _)) = g.db.notification(id)? else { return Ok(None) };
            let Some(row) = g.db.build(id)? else { return Ok(None) };
            (row, g.db.attempts(id)?, url)
        };
        let Some(last) = attempts.last() else { return Ok(None) };
        let arts = self.with_state(|s| s.artifacts(&last.engine_id))?;
        let Some(a) = arts.into_iter().rev().find(|a| a["status"] != "quarantined") else { return Ok(None) };
        let provenance = match a["provenance"].as_str().and_then(|d| d.parse::<kiln_store::Digest>().ok()) {
            Some(d) => {
                let store = self.tenant_store(&row.tenant)?;
                let bytes = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .map_err(|e| ServerError::io("runtime", &self.state_dir, e))?
                    .block_on(store.get_bytes(&d, None))?;
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
            }
            None => serde_json::Value::Null,
        };
        let body = serde_json::json!({
            "build": id,
            "tenant": row.tenant,
            "artifact": { "id": a["id"], "name": a["name"], "files": a["files"], "bytes": a["bytes"], "status": a["status"] },
            "provenance": provenance,
            "output_type": a["output_type"],
            "source": { "ref": row.git_ref, "pipeline": row.pipeline },
        });
        Ok(Some((url, a["id"].as_str().unwrap_or_default().to_string(), body)))
    }

    /// Writes the usage record of a finished build from what the engine
    /// recorded of each attempt (CPU, memory, artifacts, log) and the
    /// control plane's times.
    fn record_usage(&self, id: &str) {
        let result = (|| -> Result<(), ServerError> {
            let (row, attempts) = {
                let g = self.lock();
                let Some(row) = g.db.build(id)? else { return Ok(()) };
                (row, g.db.attempts(id)?)
            };
            let mut u = UsageRow {
                build: row.id.clone(),
                tenant: row.tenant.clone(),
                status: match &row.failure {
                    Some(f) => format!("{} ({f})", row.state),
                    None => row.state.clone(),
                },
                queue_wait_seconds: attempts
                    .first()
                    .map(|a| (a.started_ms - row.enqueued_ms).max(0) as f64 / 1000.0)
                    .unwrap_or(0.0),
                wall_seconds: match (attempts.first(), row.finished_ms) {
                    (Some(a), Some(f)) => (f - a.started_ms).max(0) as f64 / 1000.0,
                    _ => 0.0,
                },
                attempts: attempts.len() as i64,
                finished_at: crate::db::now(),
                egress_bytes: self.take_egress(id),
                ..Default::default()
            };
            self.with_state(|s| {
                for a in &attempts {
                    for job in s.jobs(&a.engine_id)? {
                        u.cpu_seconds += job["cpu_seconds"].as_f64().unwrap_or(0.0);
                        u.peak_memory_bytes =
                            u.peak_memory_bytes.max(job["peak_memory_bytes"].as_i64().unwrap_or(0));
                    }
                    for art in s.artifacts(&a.engine_id)? {
                        u.artifact_bytes += art["bytes"].as_i64().unwrap_or(0);
                    }
                    u.log_bytes += s.log_bytes(&a.engine_id)?;
                    let (read, written) = s.cache_bytes(&a.engine_id)?;
                    u.cache_read_bytes += read as i64;
                    u.cache_write_bytes += written as i64;
                }
                Ok(())
            })?;
            self.lock().db.insert_usage(&u)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(build = id, "usage record: {e}");
        }
    }

    fn take_egress(&self, id: &str) -> i64 {
        self.egress.lock().unwrap_or_else(|e| e.into_inner()).remove(id).unwrap_or(0) as i64
    }

    // ---- claims ----

    /// Hands the next build (fair, by priority, within plan caps) to `worker`.
    pub fn try_claim(&self, worker: &str, remote: bool) -> Result<Option<Claim>, ServerError> {
        loop {
            let mut g = self.lock();
            let now = self.cfg.clock.now_ms();
            let Some(bid) = g.sched.next(now as u64) else { return Ok(None) };
            let Some(id) = g.ids.get(&bid.0).cloned() else {
                let _ = g.sched.cancel(bid);
                continue;
            };
            let Some(row) = g.db.build(&id)? else {
                let _ = g.sched.cancel(bid);
                continue;
            };
            if !matches!(
                transition_with(parse_state(&row)?, &QEvent::Lease, row.retries as u32, self.cfg.max_retries),
                Ok((BuildState::Provisioning, Effect::Advance))
            ) {
                let _ = g.sched.cancel(bid);
                g.ids.remove(&bid.0);
                continue;
            }
            g.db.record_transition(&id, "provisioning", None, None, row.retries, "lease", worker, now)?;
            self.state_changed();
            let ttl = if remote { self.cfg.lease_ttl_ms } else { IN_PROCESS_TTL_MS };
            if let Err(e) = g.leases.grant(bid, WorkerId::new(worker), now as u64, Some(ttl)) {
                tracing::warn!(build = %id, "lease: {e}");
            }
            let prev = g.db.attempts(&id)?.pop();
            let base = match &prev {
                Some(a) => a.log_base + self.with_state(|s| s.max_seq(&a.engine_id)).unwrap_or(0),
                None => 0,
            };
            let attempt = g.db.start_attempt(&id, worker, now, base)?;
            g.held.insert(
                id.clone(),
                Held {
                    n: bid.0,
                    attempt: attempt.attempt,
                    worker: worker.to_string(),
                    leased_ms: now,
                    started_ms: None,
                    timeout_secs: row.timeout_seconds,
                    cancel: None,
                    cancel_requested: row.cancel_requested,
                    timed_out: false,
                    remote,
                },
            );
            let build = g.db.build(&id)?.unwrap_or(row);
            drop(g);
            if attempt.attempt == 1 {
                self.metrics.queue_wait(&build.priority, (now - build.enqueued_ms).max(0) as f64 / 1000.0);
            }
            return Ok(Some(Claim { build, attempt }));
        }
    }

    /// Waits for a claim until `deadline` (forever for `None`).
    pub async fn claim_wait(
        &self,
        worker: &str,
        remote: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<Claim>, ServerError> {
        loop {
            let notified = self.notify.notified();
            if let Some(c) = self.try_claim(worker, remote)? {
                return Ok(Some(c));
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Ok(None);
            }
            // The poll is a safety net only: every event that frees a slot
            // or queues work notifies.
            let poll = tokio::time::sleep(Duration::from_millis(500));
            match deadline {
                Some(d) => tokio::select! {
                    _ = notified => {}
                    _ = poll => {}
                    _ = tokio::time::sleep_until(d) => {}
                },
                None => tokio::select! {
                    _ = notified => {}
                    _ = poll => {}
                },
            }
        }
    }

    /// An in-process worker's cancel switch for the build it runs.
    pub fn attach_cancel(&self, id: &str, tx: watch::Sender<bool>) {
        let mut g = self.lock();
        if let Some(h) = g.held.get_mut(id) {
            if h.cancel_requested || h.timed_out {
                let _ = tx.send(true);
            }
            h.cancel = Some(tx);
        }
    }

    /// Whether the holder of `id` should stop (cancel asked, or timed out);
    /// with `heartbeat`, extends its lease.
    pub fn holder_check(
        &self,
        id: &str,
        worker: &str,
        attempt: i64,
        heartbeat: bool,
    ) -> Result<bool, LeaseLost> {
        let mut g = self.lock();
        let Some(h) = g.held.get(id) else { return Err(LeaseLost) };
        if h.worker != worker || h.attempt != attempt {
            return Err(LeaseLost);
        }
        let stop = h.cancel_requested || h.timed_out;
        let n = h.n;
        if heartbeat
            && g.leases.heartbeat(BuildId(n), &WorkerId::new(worker), self.cfg.clock.now_ms() as u64).is_err()
        {
            return Err(LeaseLost);
        }
        Ok(stop)
    }

    /// The worker's engine started the build (its first event).
    pub fn started(&self, id: &str, attempt: i64) -> Result<(), ServerError> {
        if self.lock().held.get(id).is_some_and(|h| h.attempt == attempt) {
            self.apply(id, QEvent::Started, "")?;
        }
        Ok(())
    }

    /// The end of an attempt, from its worker. Reports about an attempt that
    /// is no longer current (its lease was taken back) change nothing.
    pub fn finish_attempt(&self, id: &str, attempt: i64, outcome: AttemptOutcome) -> Result<(), ServerError> {
        let held = {
            let g = self.lock();
            match g.held.get(id) {
                Some(h) if h.attempt == attempt => (h.cancel_requested, h.timed_out, h.timeout_secs),
                _ => return Ok(()),
            }
        };
        let (cancel_requested, timed_out, timeout_secs) = held;
        match outcome {
            AttemptOutcome::Finished { status, egress_bytes } => {
                self.egress.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), egress_bytes);
                self.apply(id, QEvent::Started, "")?;
                match status.as_str() {
                    "succeeded" => {
                        self.apply(id, QEvent::StepsDone, "")?;
                        self.apply(id, QEvent::Extracted, "")?;
                    }
                    "failed" => {
                        self.apply(id, QEvent::UserFailure, "a job failed")?;
                    }
                    _ if timed_out => {
                        let why = format!("timeout: the build ran longer than its {timeout_secs} s limit");
                        self.apply(id, QEvent::UserFailure, &why)?;
                    }
                    _ if cancel_requested => {
                        self.apply(id, QEvent::Cancel, "cancelled on request")?;
                    }
                    _ => {
                        self.apply(
                            id,
                            QEvent::InfraFailure("the build was stopped".into()),
                            "the build was stopped",
                        )?;
                    }
                }
            }
            AttemptOutcome::Infra(msg) => {
                if cancel_requested {
                    self.apply(id, QEvent::Cancel, "cancelled on request")?;
                } else {
                    self.apply(id, QEvent::InfraFailure(msg.clone()), &msg)?;
                }
            }
        }
        Ok(())
    }

    /// Cancels a build: a queued one at once, a held one by telling its
    /// worker (the build is `cancelled` when the worker reports).
    pub fn cancel(&self, id: &str, actor: &str) -> Result<(), ServerError> {
        let state = {
            let mut g = self.lock();
            let Some(row) = g.db.build(id)? else { return Ok(()) };
            if is_terminal(&row.state) {
                return Ok(());
            }
            if row.state != "queued" {
                g.db.set_cancel_requested(id, Some(&format!("cancelled by {actor}")))?;
                if let Some(h) = g.held.get_mut(id) {
                    h.cancel_requested = true;
                    if let Some(tx) = &h.cancel {
                        let _ = tx.send(true);
                    }
                }
            }
            row.state
        };
        if state == "queued" {
            self.apply(id, QEvent::Cancel, &format!("cancelled by {actor}"))?;
        }
        Ok(())
    }

    /// Takes back leases whose worker went quiet and stops builds that ran
    /// past their timeout. Called periodically.
    pub fn reap(&self) -> Result<(), ServerError> {
        let now = self.cfg.clock.now_ms();
        let (expired, timeouts) = {
            let mut g = self.lock();
            let expired: Vec<(String, bool, String)> = g
                .leases
                .expired(now as u64)
                .into_iter()
                .filter_map(|b| g.ids.get(&b.0).cloned())
                .map(|id| {
                    let h = g.held.get(&id);
                    let cancel = h.is_some_and(|h| h.cancel_requested);
                    let worker = h.map(|h| h.worker.clone()).unwrap_or_default();
                    (id, cancel, worker)
                })
                .collect();
            let mut timeouts = Vec::new();
            for (id, h) in g.held.iter_mut() {
                if let Some(started) = h.started_ms {
                    if !h.timed_out && now - started > h.timeout_secs * 1000 {
                        h.timed_out = true;
                        if let Some(tx) = &h.cancel {
                            let _ = tx.send(true);
                        }
                        timeouts.push((id.clone(), h.timeout_secs));
                    }
                }
            }
            (expired, timeouts)
        };
        for (id, cancel, worker) in expired {
            self.remote.abandon(&id);
            let tenant = self.read().build(&id)?.map(|b| b.tenant);
            self.audit(
                tenant.as_deref(),
                Some(&id),
                "lease expired",
                "server",
                &format!("worker {worker} stopped heartbeating"),
            );
            if cancel {
                self.apply(&id, QEvent::Cancel, "cancelled on request (the worker went away)")?;
            } else {
                self.apply(&id, QEvent::LeaseExpired, &format!("worker {worker} stopped heartbeating"))?;
            }
        }
        for (id, secs) in timeouts {
            let tenant = self.read().build(&id)?.map(|b| b.tenant);
            self.audit(
                tenant.as_deref(),
                Some(&id),
                "quota hit",
                "server",
                &format!("timeout: ran longer than {secs} s"),
            );
        }
        Ok(())
    }

    // ---- cache quota ----

    /// Holds a tenant's build caches to its plan's quota, after its builds
    /// finish (at most every 30 s per tenant): the store's gc evicts the
    /// least recently used cache entries beyond the quota. Only while the
    /// tenant has no queued or running build, because gc also collects
    /// blobs nothing refers to — a queued build's source among them (the
    /// grace period protects only the last hour's writes); while it has
    /// some, going over the quota is recorded and the eviction waits.
    pub async fn enforce_cache_quota(self: Arc<Self>, tenant: String) {
        {
            let mut g = self.quota_checked.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            if g.get(&tenant).is_some_and(|t| now.duration_since(*t) < Duration::from_secs(30)) {
                return;
            }
            g.insert(tenant.clone(), now);
        }
        let result = async {
            let Some(plan) = self.read().tenant_plan(&tenant)?.as_deref().and_then(plan_limits) else {
                return Ok(());
            };
            let store = self.tenant_store(&tenant)?;
            let policy = kiln_store::GcPolicy {
                keep_last_per_branch: usize::MAX,
                cache_max_bytes: plan.cache_quota_bytes,
                grace: Duration::from_secs(3600),
            };
            let over = store.gc(&policy, true).await?.deleted_cache_entries;
            if over.is_empty() {
                return Ok(());
            }
            let busy = {
                let g = self.lock();
                g.sched.active(&TenantId::new(tenant.clone())) > 0
                    || g.sched.queued_for(&TenantId::new(tenant.clone()), Priority::Normal) > 0
                    || g.sched.queued_for(&TenantId::new(tenant.clone()), Priority::Urgent) > 0
            };
            let detail = if busy {
                format!(
                    "cache over its {} byte quota by {} entries; evicted when the tenant is idle",
                    plan.cache_quota_bytes,
                    over.len()
                )
            } else {
                let report = store.gc(&policy, false).await?;
                format!(
                    "cache over its {} byte quota: evicted {} least recently used entries",
                    plan.cache_quota_bytes,
                    report.deleted_cache_entries.len()
                )
            };
            self.audit(Some(&tenant), None, "quota hit", "server", &detail);
            Ok::<(), ServerError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(tenant = %tenant, "cache quota: {e}");
        }
    }

    // ---- misc ----

    pub fn put_secret(
        &self,
        tenant: &str,
        name: &str,
        phases: &[String],
        nonce: &[u8],
        ct: &[u8],
    ) -> Result<(), ServerError> {
        self.lock().db.put_secret(tenant, name, phases, nonce, ct)
    }

    pub fn delete_secret(&self, tenant: &str, name: &str) -> Result<bool, ServerError> {
        self.lock().db.delete_secret(tenant, name)
    }

    pub fn audit(&self, tenant: Option<&str>, build: Option<&str>, kind: &str, actor: &str, detail: &str) {
        if let Err(e) = self.lock().db.audit(tenant, build, kind, actor, detail) {
            tracing::error!("audit event `{kind}` not recorded: {e}");
        }
    }

    /// The tenant's secrets, decrypted, with their phases.
    pub fn secrets_for(&self, tenant: &str) -> Result<Vec<(kiln_secrets::Secret, Vec<String>)>, ServerError> {
        let rows = self.read().secrets(tenant)?;
        rows.into_iter()
            .map(|r| {
                let value = self.vault.open(tenant, &r.name, &r.nonce, &r.ciphertext)?;
                Ok((kiln_secrets::Secret::new(r.name, value), r.phases))
            })
            .collect()
    }

    pub fn busy_inc(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }
    pub fn busy_dec(&self) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn gauges(&self) -> Gauges {
        let g = self.lock();
        Gauges {
            queued: g.sched.queued_len() as u64,
            active_builds: g.held.len() as u64,
            workers_in_process: self.cfg.workers as u64,
            workers_busy: self.busy.load(Ordering::Relaxed),
            remote_leases: g.held.values().filter(|h| h.remote).count() as u64,
        }
    }

    /// Creates a tenant (or changes its plan). For `kiln admin`.
    pub fn admin_tenant(db: &ControlDb, name: &str, plan: &str) -> Result<bool, ServerError> {
        db.upsert_tenant(name, plan)
    }

    /// Creates a token; returns it (shown once).
    pub fn admin_token(db: &ControlDb, p: &Principal) -> Result<String, ServerError> {
        let token = crate::auth::new_token()?;
        db.insert_token(&crate::auth::hash_token(&token), p)?;
        Ok(token)
    }

    /// The per-build source directory of an in-process attempt.
    pub fn source_dir(&self, engine_id: &str) -> PathBuf {
        self.state_dir.join("sources").join(engine_id)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}
