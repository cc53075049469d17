//! The control plane's core: the queue (the `kiln-queue` state machine over
//! the control database), the claims workers make, what their reports do,
//! lease expiry, plan timeouts and recovery after a restart.
//!
//! # Decided in the database
//!
//! Every decision about a build is a statement on the control database
//! that applies only if the build is still as it was read: a claim takes a
//! queued build in one transaction (on PostgreSQL with `FOR UPDATE SKIP
//! LOCKED`, the tenant's plan cap counted again under a per-tenant lock),
//! and a transition names the state and attempt it changes. Servers
//! sharing a database (replicas on PostgreSQL) therefore never hand one
//! build out twice, never both take a lease back, and never both finish a
//! build; nothing in a server's memory decides anything another could.
//! What a server keeps in memory is its own: the cancel switches of the
//! builds its in-process workers run.
//!
//! # Leases and recovery
//!
//! Every holder has a lease in the database. A remote worker renews it
//! with its heartbeats, a server renews those of its in-process workers
//! every reaper tick; whichever server's reaper finds a lease run out
//! takes the build back (a retry counted, or `failed (infrastructure)`
//! when retries are spent). A server that starts again at once gives the
//! builds its own in-process workers held the same transition, without
//! waiting for their leases.
//!
//! # Attempts
//!
//! Every lease starts an attempt with its own engine build id (`ID`, then
//! `ID.2`, `ID.3`), so the engine's rows of a retried attempt are kept
//! apart; the API stitches the attempts' logs into one log whose positions
//! keep growing across retries.

use crate::statedb::AttemptRecords as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kiln_queue::{transition_with, BuildState, Effect, Event as QEvent, Plan};
use tokio::sync::{watch, Notify};

use crate::db::{
    now_ms, AttemptRow, BuildRecord, ClaimRequest, ControlDb, Expect, LogBase, NewBuild, Principal, UsageRow,
    HELD_STATES,
};
use crate::error::ServerError;
use crate::metrics::{Gauges, Metrics};
use crate::statedb::StateReader;
use crate::vault::Vault;

/// How the control plane runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `control.db`, `state.db`, the content store, the keys.
    pub state_dir: PathBuf,
    /// In-process workers (0: only remote `kiln worker`s run builds).
    pub workers: usize,
    pub isolation: kiln_sandbox::Isolation,
    /// A lease not renewed for this long is taken back: a remote worker's
    /// (its heartbeats renew it) or an in-process worker's (its server's
    /// reaper renews it while the server runs).
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

/// Why a build this server's worker held when the server stopped is
/// retried (see [`Core::recover`]).
const SERVER_STOPPED: &str = "the server stopped while the build ran";

/// What a plan allows.
pub fn plan_limits(name: &str) -> Option<Plan> {
    match name {
        // Small on purpose: one build at a time, ten minutes, 256 MiB of cache.
        "free" => Some(Plan { max_concurrent: 1, max_timeout_secs: 600, cache_quota_bytes: 256 << 20 }),
        "team" => Some(Plan { max_concurrent: 4, max_timeout_secs: 3 * 3600, cache_quota_bytes: 10 << 30 }),
        _ => None,
    }
}

/// This server's id: made once, kept in `server-id` in its state dir.
fn server_id(state_dir: &Path) -> Result<String, ServerError> {
    let path = state_dir.join("server-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Ok(_) | Err(_) => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| ServerError::Setup(format!("randomness: {e}")))?;
            let id = format!("server-{}", hex::encode(b));
            let tmp = state_dir.join("server-id.tmp");
            std::fs::write(&tmp, &id).map_err(|e| ServerError::io("writing", &tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| ServerError::io("writing", &path, e))?;
            Ok(id)
        }
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

/// What this server keeps of a build one of its workers holds (or that it
/// leased to a remote worker): nothing the queue decides by.
#[derive(Debug)]
struct Local {
    attempt: i64,
    worker: String,
    leased_ms: i64,
    /// An in-process worker's switch that stops the build.
    cancel: Option<watch::Sender<bool>>,
    remote: bool,
}

#[derive(Debug)]
struct Inner {
    db: ControlDb,
    local: HashMap<String, Local>,
}

/// The control plane's state; shared by the API, the workers and the reaper.
#[derive(Debug)]
pub struct Core {
    pub cfg: ServerConfig,
    /// The canonical state directory.
    pub state_dir: PathBuf,
    /// This server's id (kept in its state dir), recorded on the builds its
    /// in-process workers hold.
    pub server_id: String,
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
    /// On PostgreSQL: the build records and logs shared with other servers.
    replication: Option<crate::replicate::Replication>,
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
        let server_id = server_id(&state_dir)?;
        let changes = watch::channel(0).0;
        let replication = match cfg.database.as_deref() {
            Some(url) if crate::db::is_postgres(url) => {
                let r = crate::replicate::Replication::start(url, &server_id, &state_dir, changes.clone())?;
                let notify = crate::notify::load_or_create_key(&state_dir.join("notify.key"))
                    .map_err(|e| ServerError::Key(format!("the webhook key: {e}")))?;
                r.check_keys(&[
                    ("secrets.key", vault.fingerprint().to_string()),
                    (kiln_store::provenance::PRIVATE_KEY_FILE, keys.keyid()),
                    ("notify.key", crate::vault::fingerprint(&notify)),
                ])?;
                Some(r)
            }
            _ => None,
        };
        let core = Arc::new(Core {
            cfg,
            state_dir,
            server_id,
            inner: Mutex::new(Inner { db, local: HashMap::new() }),
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
            changes,
            replication,
        });
        let _ = core.me.set(Arc::downgrade(&core));
        core.recover()?;
        Ok(core)
    }

    /// Whether build records and logs are shared with other servers (on
    /// PostgreSQL): events then go through [`Core::publish`].
    pub fn replicated(&self) -> bool {
        self.replication.is_some()
    }

    /// Shares an attempt's events with every server (see
    /// [`crate::replicate`]); `own`: this server's in-process worker made
    /// them (its `state.db` has them). Blocks until committed.
    pub fn publish(
        &self,
        own: bool,
        id: &str,
        attempt: i64,
        engine_id: &str,
        events: &[kiln_engine::Event],
    ) -> Result<(), ServerError> {
        match &self.replication {
            Some(r) => r.publish(own, id, attempt, engine_id, events),
            None => Ok(()),
        }
    }

    /// Brings this server's `state.db` up to the shared events committed so
    /// far (nothing to do unless replicated).
    pub fn catch_up(&self) {
        if let Some(r) = &self.replication {
            if let Err(e) = r.catch_up() {
                tracing::warn!("catching up with shared events: {e}");
            }
        }
    }

    /// Runs `f` (database work) on tokio's blocking pool: see
    /// [`crate::blocking`].
    pub async fn blocking<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        F: FnOnce(&Core) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<ServerError> + Send + 'static,
    {
        let core = self.clone();
        crate::blocking::run(move || f(&core)).await
    }

    /// A signal that changes whenever a build changes state.
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn state_changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::blocking::check("the control database");
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The read connection.
    pub fn read(&self) -> MutexGuard<'_, ControlDb> {
        crate::blocking::check("the control database");
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a read-only view of `state.db`.
    pub fn with_state<T>(
        &self,
        f: impl FnOnce(&StateReader) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        crate::blocking::check("state.db");
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

    /// Builds this server's in-process workers held when it stopped get an
    /// infrastructure failure at once, recorded as `server-restart` (their
    /// workers are gone, but no worker failed them: any may retry them at
    /// once); builds other servers or remote workers hold are left to their
    /// leases.
    fn recover(&self) -> Result<(), ServerError> {
        let held = self.lock().db.builds_in(HELD_STATES)?;
        let mine: Vec<&BuildRecord> =
            held.iter().filter(|b| b.server.as_deref() == Some(self.server_id.as_str())).collect();
        for b in &mine {
            let event =
                if b.cancel_requested { QEvent::Cancel } else { QEvent::InfraFailure(SERVER_STOPPED.into()) };
            self.apply_to(
                &b.id,
                Some(b.attempt),
                None,
                event,
                "the server restarted while a worker held the build",
            )?;
        }
        if !mine.is_empty() {
            tracing::info!("recovered {} builds this server's workers held", mine.len());
        }
        Ok(())
    }

    // ---- submit ----

    /// Queues a new build. With an idempotency key already used by the
    /// tenant, returns the earlier build instead (`false`), or `Err(Some)`
    /// with it when the request differs.
    pub fn submit(&self, b: NewBuild) -> Result<Result<(BuildRecord, bool), BuildRecord>, ServerError> {
        let g = self.lock();
        if let Some(key) = &b.idem_key {
            if let Some(existing) = g.db.build_by_key(&b.tenant, key)? {
                return Ok(if existing.body_hash == b.body_hash {
                    Ok((existing, false))
                } else {
                    Err(existing)
                });
            }
        }
        g.db.insert_build(&b)?;
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
        self.apply_to(id, None, None, event, detail)
    }

    /// [`Core::apply`] to attempt `attempt` only (a report about an attempt
    /// that is no longer current changes nothing), and with
    /// `lease_ended_by`, only if the holder's lease ran out before then.
    /// The transition is written only if the build is still as it was read;
    /// if another server changed it first, the event is decided again on
    /// what the build is now.
    fn apply_to(
        &self,
        id: &str,
        attempt: Option<i64>,
        lease_ended_by: Option<i64>,
        event: QEvent,
        detail: &str,
    ) -> Result<Option<BuildState>, ServerError> {
        for _ in 0..8 {
            let mut g = self.lock();
            let Some(row) = g.db.build(id)? else { return Ok(None) };
            if attempt.is_some_and(|a| a != row.attempt)
                || lease_ended_by.is_some_and(|t| row.lease_until_ms.unwrap_or(0) >= t)
            {
                return Ok(None);
            }
            let current = parse_state(&row)?;
            let (next, effect) =
                match transition_with(current, &event, row.retries as u32, self.cfg.max_retries) {
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
                // Not the worker's failure: it may take the retry at once.
                QEvent::InfraFailure(m) if m == SERVER_STOPPED => "server-restart",
                QEvent::InfraFailure(_) => "infra-failure",
                e => e.name(),
            };
            let expect = Expect { state: &row.state, attempt: row.attempt, lease_ended_by };
            if !g
                .db
                .record_transition(id, expect, state, failure, reason, retries, event_name, detail, now)?
            {
                continue;
            }
            self.state_changed();
            match effect {
                Effect::Retry | Effect::Finish => {
                    let local = g.local.remove(id);
                    drop(g);
                    if effect == Effect::Retry {
                        self.metrics.infra_failure();
                    } else {
                        if failure == Some("infrastructure") {
                            self.metrics.infra_failure();
                        }
                        let duration = local.map(|h| (now - h.leased_ms) as f64 / 1000.0);
                        self.metrics.build_finished(state, failure, duration);
                        self.record_usage(id);
                        if state == "succeeded" {
                            self.deliver_notification(id);
                        }
                    }
                    self.notify.notify_waiters();
                }
                _ => {
                    if next == BuildState::Running {
                        if let Some(h) = g.local.get(id) {
                            self.metrics.provisioning((now - h.leased_ms) as f64 / 1000.0);
                        }
                    }
                }
            }
            return Ok(Some(next));
        }
        tracing::warn!(build = id, "the build kept changing under this server; event dropped");
        Ok(None)
    }

    /// Posts a succeeded build's deployment webhook, if it has one and no
    /// other server is delivering it, from a thread of its own (deliveries
    /// retry with backoff for a while): the artifact, its signed provenance,
    /// output type and source, signed with the deployment's webhook key
    /// (`notify.key` in the state dir). The delivery is leased like a build:
    /// renewed while it runs; when this server dies, another server's
    /// reaper finds it due and delivers it (with the same idempotency key).
    fn deliver_notification(&self, id: &str) {
        let now = self.cfg.clock.now_ms();
        let until = now.saturating_add(self.cfg.lease_ttl_ms as i64);
        match self.lock().db.claim_notification(id, &self.server_id, now, until) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(build = id, "taking the deployment webhook's delivery: {e}");
                return;
            }
        }
        // Off the caller's thread (an async worker or handler): the store
        // read blocks and deliveries retry with backoff for a while.
        let Some(core) = self.me.get().and_then(std::sync::Weak::upgrade) else { return };
        let id = id.to_string();
        std::thread::spawn(move || {
            let span = tracing::info_span!("notify", build = %id);
            let _enter = span.enter();
            let give_up = |why: String| {
                tracing::warn!("deployment webhook: {why}");
                let attempts = serde_json::json!([{ "status": null, "error": why }]).to_string();
                let _ = core.lock().db.record_delivery(&id, &core.server_id, false, &attempts);
            };
            let (url, artifact, body) = match core.notification_payload(&id) {
                Ok(Some(p)) => p,
                Ok(None) => return give_up("no deployable artifact to hand over".into()),
                Err(e) => return give_up(e.to_string()),
            };
            let mut keep = || {
                let until = core.cfg.clock.now_ms().saturating_add(core.cfg.lease_ttl_ms as i64);
                core.lock().db.renew_notification(&id, &core.server_id, until).unwrap_or(false)
            };
            let delivery = crate::notify::load_or_create_key(&core.state_dir.join("notify.key"))
                .and_then(|key| crate::notify::Notifier::new(&url, key).map_err(|e| e.to_string()))
                .map(|n| {
                    let key = format!("{id}:{artifact}");
                    n.deliver_while(&body, &key, crate::notify::RetryPolicy::default(), &mut keep)
                });
            let tenant = body["tenant"].as_str().map(str::to_string);
            match delivery {
                Ok(d) if d.handed_over => {
                    tracing::info!("the webhook's delivery was taken over by another server");
                }
                Ok(d) => {
                    let attempts = serde_json::to_string(&d.attempts).unwrap_or_default();
                    let recorded =
                        core.lock().db.record_delivery(&id, &core.server_id, d.delivered, &attempts);
                    match recorded {
                        Ok(true) => {
                            let kind = if d.delivered { "notify delivered" } else { "notify failed" };
                            let detail = format!("{url} after {} attempt(s)", d.attempts.len());
                            core.audit(tenant.as_deref(), Some(&id), kind, "server", &detail);
                        }
                        Ok(false) => tracing::info!("the webhook's delivery was taken over before it ended"),
                        Err(e) => tracing::error!("recording the delivery: {e}"),
                    }
                }
                Err(e) => {
                    let why = format!("{url}: {e}");
                    core.audit(tenant.as_deref(), Some(&id), "notify failed", "server", &why);
                    give_up(why);
                }
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
        let arts = self.with_state(|s| s.artifacts_json(&last.engine_id))?;
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
                    for job in s.jobs_json(&a.engine_id)? {
                        u.cpu_seconds += job["cpu_seconds"].as_f64().unwrap_or(0.0);
                        u.peak_memory_bytes =
                            u.peak_memory_bytes.max(job["peak_memory_bytes"].as_i64().unwrap_or(0));
                    }
                    for art in s.artifacts_json(&a.engine_id)? {
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

    /// Hands the next build (by priority, tenants in turn, within plan
    /// caps) to `worker`: decided by the database in one transaction.
    pub fn try_claim(&self, worker: &str, remote: bool) -> Result<Option<Claim>, ServerError> {
        let now = self.cfg.clock.now_ms();
        let req = ClaimRequest {
            worker: worker.to_string(),
            server: (!remote).then(|| self.server_id.clone()),
            now_ms: now,
            lease_until_ms: now.saturating_add(self.cfg.lease_ttl_ms as i64),
            caps: PLANS
                .iter()
                .filter_map(|p| plan_limits(p).map(|l| (p.to_string(), i64::from(l.max_concurrent))))
                .collect(),
            default_cap: i64::from(Plan::free().max_concurrent),
        };
        let mut g = self.lock();
        let Some((build, attempt)) = g.db.claim(&req, self.log_base())? else { return Ok(None) };
        g.local.insert(
            build.id.clone(),
            Local {
                attempt: attempt.attempt,
                worker: worker.to_string(),
                leased_ms: now,
                cancel: None,
                remote,
            },
        );
        drop(g);
        self.state_changed();
        if attempt.attempt == 1 {
            self.metrics.queue_wait(&build.priority, (now - build.enqueued_ms).max(0) as f64 / 1000.0);
        }
        Ok(Some(Claim { build, attempt }))
    }

    /// Where a new attempt's log starts: after the attempt before it (whose
    /// length is in `state.db`).
    fn log_base(&self) -> Arc<LogBase> {
        let me = self.me.get().cloned().unwrap_or_default();
        Arc::new(move |prev: &AttemptRow| {
            let len = me
                .upgrade()
                .and_then(|core| core.with_state(|s| Ok(s.max_seq(&prev.engine_id)?)).ok())
                .unwrap_or(0);
            prev.log_base + len
        })
    }

    /// Waits for a claim until `deadline` (forever for `None`).
    pub async fn claim_wait(
        self: &Arc<Self>,
        worker: &str,
        remote: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<Claim>, ServerError> {
        loop {
            let notified = self.notify.notified();
            let who = worker.to_string();
            if let Some(c) = self.blocking(move |core| core.try_claim(&who, remote)).await? {
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
        let stop = self.read().build(id).ok().flatten().is_some_and(|b| b.cancel_requested || b.timed_out);
        let mut g = self.lock();
        if let Some(h) = g.local.get_mut(id) {
            if stop {
                let _ = tx.send(true);
            }
            h.cancel = Some(tx);
        }
    }

    /// Whether the holder of `id` should stop (cancel asked, or timed out);
    /// with `heartbeat`, renews its lease. Read from the database: the
    /// cancel may have been asked of another server.
    pub fn holder_check(
        &self,
        id: &str,
        worker: &str,
        attempt: i64,
        heartbeat: bool,
    ) -> Result<bool, LeaseLost> {
        let g = self.lock();
        let row = match g.db.build(id) {
            Ok(Some(row)) if row.held_by(worker, attempt) => row,
            _ => return Err(LeaseLost),
        };
        if heartbeat {
            let until = self.cfg.clock.now_ms().saturating_add(self.cfg.lease_ttl_ms as i64);
            if !g.db.renew_lease(id, worker, attempt, until).unwrap_or(false) {
                return Err(LeaseLost);
            }
        }
        Ok(row.cancel_requested || row.timed_out)
    }

    /// The worker's engine started the build (its first event).
    pub fn started(&self, id: &str, attempt: i64) -> Result<(), ServerError> {
        self.apply_to(id, Some(attempt), None, QEvent::Started, "")?;
        Ok(())
    }

    /// The end of an attempt, from its worker. Reports about an attempt that
    /// is no longer current (its lease was taken back) change nothing.
    pub fn finish_attempt(&self, id: &str, attempt: i64, outcome: AttemptOutcome) -> Result<(), ServerError> {
        let row = match self.read().build(id)? {
            Some(row) if row.attempt == attempt && HELD_STATES.contains(&row.state.as_str()) => row,
            _ => return Ok(()),
        };
        let (cancel_requested, timed_out, timeout_secs) =
            (row.cancel_requested, row.timed_out, row.timeout_seconds);
        let apply = |event: QEvent, detail: &str| self.apply_to(id, Some(attempt), None, event, detail);
        match outcome {
            AttemptOutcome::Finished { status, egress_bytes } => {
                self.egress.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), egress_bytes);
                apply(QEvent::Started, "")?;
                match status.as_str() {
                    "succeeded" => {
                        apply(QEvent::StepsDone, "")?;
                        apply(QEvent::Extracted, "")?;
                    }
                    "failed" => {
                        apply(QEvent::UserFailure, "a job failed")?;
                    }
                    _ if timed_out => {
                        let why = format!("timeout: the build ran longer than its {timeout_secs} s limit");
                        apply(QEvent::UserFailure, &why)?;
                    }
                    _ if cancel_requested => {
                        apply(QEvent::Cancel, "cancelled on request")?;
                    }
                    _ => {
                        apply(QEvent::InfraFailure("the build was stopped".into()), "the build was stopped")?;
                    }
                }
            }
            AttemptOutcome::Infra(msg) => {
                if cancel_requested {
                    apply(QEvent::Cancel, "cancelled on request")?;
                } else {
                    apply(QEvent::InfraFailure(msg.clone()), &msg)?;
                }
            }
        }
        Ok(())
    }

    /// Cancels a build: a queued one at once, a held one by telling its
    /// worker (the build is `cancelled` when the worker reports).
    pub fn cancel(&self, id: &str, actor: &str) -> Result<(), ServerError> {
        let row = {
            let mut g = self.lock();
            let Some(row) = g.db.build(id)? else { return Ok(()) };
            if is_terminal(&row.state) {
                return Ok(());
            }
            if row.state != "queued" {
                g.db.set_cancel_requested(id, Some(&format!("cancelled by {actor}")))?;
                if let Some(tx) = g.local.get_mut(id).and_then(|h| h.cancel.as_ref()) {
                    let _ = tx.send(true);
                }
            }
            row
        };
        if row.state == "queued" {
            // A worker claimed it between the read and the transition: ask
            // its holder instead.
            if self
                .apply_to(id, Some(row.attempt), None, QEvent::Cancel, &format!("cancelled by {actor}"))?
                .is_none()
            {
                return self.cancel(id, actor);
            }
        }
        Ok(())
    }

    /// Renews the leases of this server's in-process workers, stops those
    /// whose build was cancelled or timed out (wherever that was asked),
    /// takes back leases that ran out (whichever server or worker held
    /// them) and marks builds that ran past their timeout. Called
    /// periodically by every server; each build is taken back once.
    pub fn reap(&self) -> Result<(), ServerError> {
        let now = self.cfg.clock.now_ms();
        let until = now.saturating_add(self.cfg.lease_ttl_ms as i64);
        let timeouts = self.lock().db.mark_timed_out(now)?;
        // This server's in-process builds: renew, and pass on a stop.
        let local: Vec<(String, String, i64)> = self
            .lock()
            .local
            .iter()
            .filter(|(_, h)| !h.remote)
            .map(|(id, h)| (id.clone(), h.worker.clone(), h.attempt))
            .collect();
        for (id, worker, attempt) in local {
            let (row, renewed) = {
                let g = self.lock();
                (g.db.build(&id)?, g.db.renew_lease(&id, &worker, attempt, until)?)
            };
            let stop = !renewed || row.is_some_and(|b| b.cancel_requested || b.timed_out);
            if stop {
                if let Some(tx) = self.lock().local.get(&id).and_then(|h| h.cancel.as_ref()) {
                    let _ = tx.send(true);
                }
            }
        }
        // Webhooks whose deliverer died (or never began) are taken over.
        let due = self.lock().db.due_notifications(now)?;
        for id in due {
            self.deliver_notification(&id);
        }
        let expired = self.lock().db.expired_leases(now)?;
        for b in expired {
            let worker = b.worker.clone().unwrap_or_default();
            let applied = if b.cancel_requested {
                self.apply_to(
                    &b.id,
                    Some(b.attempt),
                    Some(now),
                    QEvent::Cancel,
                    "cancelled on request (the worker went away)",
                )?
            } else {
                self.apply_to(
                    &b.id,
                    Some(b.attempt),
                    Some(now),
                    QEvent::LeaseExpired,
                    &format!("worker {worker} stopped heartbeating"),
                )?
            };
            if applied.is_some() {
                self.abandon_attempt(&b);
                self.audit(
                    Some(&b.tenant),
                    Some(&b.id),
                    "lease expired",
                    "server",
                    &format!("worker {worker} stopped heartbeating"),
                );
            }
        }
        for (id, tenant, secs) in timeouts {
            self.audit(
                Some(&tenant),
                Some(&id),
                "quota hit",
                "server",
                &format!("timeout: ran longer than {secs} s"),
            );
        }
        Ok(())
    }

    /// The records of an attempt whose lease was taken back say it was
    /// interrupted, as the engine's own recovery says after a crash: in
    /// this server's `state.db`, and when replicated, in every server's.
    fn abandon_attempt(&self, b: &BuildRecord) {
        self.remote.abandon(&b.id);
        if self.replicated() {
            let engine_id = crate::db::engine_id(&b.id, b.attempt);
            let end = kiln_engine::Event::BuildFinished(kiln_engine::BuildSummary {
                build: engine_id.clone(),
                status: "interrupted".into(),
                jobs: Vec::new(),
                egress_bytes_in: 0,
                egress_bytes_out: 0,
            });
            if let Err(e) = self.publish(false, &b.id, b.attempt, &engine_id, &[end]) {
                tracing::warn!(build = %b.id, "sharing the end of an abandoned attempt: {e}");
            }
        }
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
            let t = tenant.clone();
            let plan = self.blocking(move |core| core.read().tenant_plan(&t)).await?;
            let Some(plan) = plan.as_deref().and_then(plan_limits) else {
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
            let t = tenant.clone();
            let busy = self
                .blocking(move |core| {
                    let db = core.read();
                    let mut busy = false;
                    for state in std::iter::once("queued").chain(HELD_STATES.iter().copied()) {
                        busy |= !db.builds(Some(&t), Some(state), 1)?.is_empty();
                    }
                    Ok::<_, ServerError>(busy)
                })
                .await?;
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
            let t = tenant.clone();
            self.blocking(move |core| {
                core.audit(Some(&t), None, "quota hit", "server", &detail);
                Ok::<(), ServerError>(())
            })
            .await
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
        let counts = self.read().queue_counts().unwrap_or_default();
        Gauges {
            queued: counts.queued as u64,
            active_builds: counts.held as u64,
            workers_in_process: self.cfg.workers as u64,
            workers_busy: self.busy.load(Ordering::Relaxed),
            remote_leases: counts.held_remote as u64,
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
