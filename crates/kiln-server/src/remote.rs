//! Remote workers: the wire format of the worker API, the server's side
//! that writes a remote attempt's events into `state.db` with the engine's
//! [`StoreWriter`], and `kiln worker` itself, which leases builds over HTTP,
//! runs them with its own [`Executor`] and never touches the server's
//! databases.
//!
//! Protocol (all `POST`, worker token):
//!
//! * `/v1/worker/lease` `{worker, wait_seconds}` → 200 [`LeaseReply`] or 204.
//! * `/v1/worker/builds/{id}/events` `{worker, attempt, events}` → `{stop}`;
//!   also the heartbeat (with no events). 409 when the lease was taken
//!   back: the worker abandons the build without reporting.
//! * `/v1/worker/builds/{id}/artifacts` [`ArtifactUpload`]: each artifact
//!   the attempt stored, before `finish`.
//! * `/v1/worker/builds/{id}/finish` `{worker, attempt, status | infra}`.
//!
//! Log entries arrive already scrubbed: the worker's engine scrubs every
//! line before it becomes an event.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use kiln_engine::store::{LiveBuild, Store, StoreWriter};
use kiln_engine::{BuildSummary, Event};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::core::{AttemptOutcome, Core};
use crate::error::ServerError;

/// A claimed build, as a worker receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseReply {
    pub build: String,
    pub tenant: String,
    pub attempt: i64,
    pub engine_id: String,
    pub pipeline: String,
    pub workflow: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub source_tree: Option<String>,
    /// The submitted source archive (a tar), base64.
    pub source_tar_base64: Option<String>,
    /// The secrets the build may have, base64 values.
    pub secrets: Vec<WireSecret>,
    /// Heartbeat at least this often.
    pub heartbeat_ms: u64,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct WireSecret {
    pub name: String,
    pub value_base64: String,
}

impl std::fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=***", self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub worker: String,
    #[serde(default)]
    pub wait_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsRequest {
    pub worker: String,
    pub attempt: i64,
    #[serde(default)]
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsReply {
    /// Stop the build (cancelled, or past its timeout).
    pub stop: bool,
}

/// An artifact a remote attempt stored in the worker's store, copied into
/// the tenant's namespace on the server: its tree (as a tar, read back
/// through the strict reader), its record and its provenance envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactUpload {
    pub worker: String,
    pub attempt: i64,
    pub record: kiln_store::ArtifactRecord,
    pub tree_tar_base64: String,
    pub provenance_base64: Option<String>,
}

/// A remote attempt asks for a cache entry (see [`cache_restore`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheRestoreRequest {
    pub worker: String,
    pub attempt: i64,
    pub key: String,
    #[serde(default)]
    pub restore_keys: Vec<String>,
    /// Only say whether there is one (no archive).
    #[serde(default)]
    pub lookup_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheRestoreReply {
    pub hit: Option<CacheHit>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheHit {
    /// The key that matched.
    pub key: String,
    /// The entry's tree digest: the archive must hash to it.
    pub tree: String,
    pub files: u64,
    pub bytes: u64,
    pub tree_tar_base64: Option<String>,
}

/// A remote attempt saves a cache entry (see [`cache_save`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheSaveRequest {
    pub worker: String,
    pub attempt: i64,
    pub key: String,
    pub tree: String,
    pub tree_tar_base64: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishRequest {
    pub worker: String,
    pub attempt: i64,
    /// `succeeded`, `failed` or `cancelled` when the engine ran the build.
    pub status: Option<String>,
    #[serde(default)]
    pub egress_bytes: u64,
    /// Why the build could not run (an infrastructure failure).
    pub infra: Option<String>,
}

// ---- the server's side ----

#[derive(Debug)]
struct Sink {
    attempt: i64,
    engine_id: String,
    writer: Option<StoreWriter>,
    _live: Option<LiveBuild>,
}

/// The state.db writers of remote attempts, by build id.
#[derive(Debug, Default)]
pub struct Sinks {
    inner: Mutex<HashMap<String, Sink>>,
}

impl Sinks {
    fn take(&self, id: &str) -> Option<Sink> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).remove(id)
    }

    /// Flushes and drops the writer of a build (its attempt ended or was
    /// taken back), on a thread: closing waits for the last batch.
    pub fn abandon(&self, id: &str) {
        if let Some(mut sink) = self.take(id) {
            if let Some(w) = sink.writer.take() {
                // The attempt's rows say it was interrupted, as the engine's
                // own recovery would after a crash.
                let _ = w.sender().send(Event::BuildFinished(BuildSummary {
                    build: sink.engine_id.clone(),
                    status: "interrupted".into(),
                    jobs: Vec::new(),
                    egress_bytes_in: 0,
                    egress_bytes_out: 0,
                }));
                std::thread::spawn(move || {
                    if let Err(e) = w.close() {
                        tracing::error!("state store writer: {e}");
                    }
                    drop(sink);
                });
            }
        }
    }

    /// Flushes and drops the writer of a build, waiting for it.
    pub fn close(&self, id: &str) {
        if let Some(mut sink) = self.take(id) {
            if let Some(w) = sink.writer.take() {
                if let Err(e) = w.close() {
                    tracing::error!("state store writer: {e}");
                }
            }
        }
    }

    /// Records events of a remote attempt (the caller checked the lease).
    pub fn push(
        &self,
        core: &Core,
        tenant: &str,
        id: &str,
        attempt: i64,
        engine_id: &str,
        events: Vec<Event>,
    ) -> Result<(), ServerError> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let sink = g.entry(id.to_string()).or_insert_with(|| Sink {
            attempt,
            engine_id: engine_id.to_string(),
            writer: None,
            _live: None,
        });
        if sink.attempt != attempt {
            // A new attempt replaces the old one's writer.
            if let Some(w) = sink.writer.take() {
                let _ = w.close();
            }
            *sink = Sink { attempt, engine_id: engine_id.to_string(), writer: None, _live: None };
        }
        for ev in events {
            let ev = ev.for_build(&sink.engine_id);
            if let Event::BuildStarted { pipeline, jobs, .. } = &ev {
                if sink.writer.is_none() {
                    let (writer, live) = open_writer(
                        &core.state_dir,
                        &sink.engine_id,
                        pipeline,
                        &format!("remote attempt {attempt}"),
                        jobs,
                    )?;
                    sink.writer = Some(writer);
                    sink._live = Some(live);
                }
            }
            crate::worker::observe(core, tenant, id, attempt, &ev);
            if let Some(w) = &sink.writer {
                let _ = w.sender().send(ev);
            }
        }
        Ok(())
    }
}

/// The `state.db` writer of an attempt this server did not run itself (a
/// remote worker's, or another replica's), from its `BuildStarted` event;
/// log streams of the attempt wait while the returned [`LiveBuild`] lives.
pub(crate) fn open_writer(
    state_dir: &std::path::Path,
    engine_id: &str,
    pipeline: &str,
    trigger: &str,
    jobs: &[(String, String)],
) -> Result<(StoreWriter, LiveBuild), ServerError> {
    let live = LiveBuild::new(engine_id);
    let store = Store::open(state_dir)?;
    store.insert_build(engine_id, pipeline, trigger, jobs)?;
    Ok((StoreWriter::spawn(store, engine_id.to_string()), live))
}

// ---- `kiln worker` ----

/// How a remote worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `https://host:port` of `kiln serve` (`http://` on loopback); several,
    /// comma-separated, for replicas: the worker moves to the next when one
    /// cannot be reached.
    pub server: String,
    /// The only certificate trusted for an https server (PEM), if given.
    pub ca: Option<PathBuf>,
    pub token: String,
    /// This worker's name (in leases and logs).
    pub name: String,
    /// The worker's own state directory (its engine store, sandboxes).
    pub state_dir: PathBuf,
    pub isolation: kiln_sandbox::Isolation,
    /// Builds at once.
    pub slots: usize,
    pub egress_cap: u64,
    pub allow_private: Vec<std::net::SocketAddr>,
}

#[derive(Debug, Clone)]
struct Api {
    agent: ureq::Agent,
    /// The servers (replicas) this worker may talk to, and which one it
    /// talks to now: it moves on to the next when one cannot be reached.
    bases: Arc<Vec<String>>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    auth: String,
}

#[derive(Debug)]
enum CallError {
    /// The server says the lease is gone.
    LeaseLost,
    Other(String),
}

impl Api {
    fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Option<T>, CallError> {
        use std::sync::atomic::Ordering;
        // A server that cannot be reached (killed, cut off) is passed over
        // for the next; one that answers, whatever it answers, is kept.
        let mut tries = 0;
        let (url, mut resp) = loop {
            let i = self.current.load(Ordering::Relaxed);
            let url = format!("{}{path}", self.bases[i % self.bases.len()]);
            match self.agent.post(&url).header("Authorization", &self.auth).send_json(body) {
                Ok(r) => break (url, r),
                Err(e) => {
                    tries += 1;
                    if tries >= self.bases.len() {
                        return Err(CallError::Other(format!("POST {url}: {e}")));
                    }
                    let _ = self.current.compare_exchange(i, i + 1, Ordering::Relaxed, Ordering::Relaxed);
                    tracing::warn!("{url}: {e}; trying the next server");
                }
            }
        };
        match resp.status().as_u16() {
            204 => Ok(None),
            409 => Err(CallError::LeaseLost),
            s if (200..300).contains(&s) => resp
                .body_mut()
                .with_config()
                .limit(1 << 30)
                .read_json::<T>()
                .map(Some)
                .map_err(|e| CallError::Other(format!("POST {url}: {e}"))),
            s => {
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                Err(CallError::Other(format!("POST {url}: {s} {text}")))
            }
        }
    }

    async fn call<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        path: String,
        body: serde_json::Value,
    ) -> Result<Option<T>, CallError> {
        let api = self.clone();
        tokio::task::spawn_blocking(move || api.post::<T>(&path, &body))
            .await
            .unwrap_or_else(|e| Err(CallError::Other(e.to_string())))
    }
}

/// Runs `kiln worker` until the process is stopped.
pub async fn run_worker(cfg: WorkerConfig) -> Result<(), ServerError> {
    let exec = Arc::new(kiln_engine::Executor::new(kiln_engine::ExecutorConfig {
        state_dir: cfg.state_dir.clone(),
        isolation: cfg.isolation,
        max_parallel: 1,
        allow_private: cfg.allow_private.clone(),
        egress_cap: cfg.egress_cap,
        default_branch: "main".into(),
        store_url: None,
        registries: Vec::new(),
        scanner: Some(Arc::new(kiln_scan::Scanner::builtin())),
        policy: Default::default(),
    })?);
    let bases: Vec<String> = cfg
        .server
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if bases.is_empty() {
        return Err(ServerError::Setup("no server URL given".into()));
    }
    for b in &bases {
        crate::tls::check_server_url(b)?;
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .tls_config(crate::tls::client_tls(cfg.ca.as_deref())?)
        .build()
        .into();
    let api = Api {
        agent,
        bases: Arc::new(bases),
        current: Default::default(),
        auth: format!("Bearer {}", cfg.token),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for slot in 0..cfg.slots.max(1) {
        let name = if cfg.slots > 1 { format!("{}-{}", cfg.name, slot + 1) } else { cfg.name.clone() };
        tasks.spawn(slot_loop(api.clone(), exec.clone(), name, exec.state_dir().to_path_buf()));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn slot_loop(api: Api, exec: Arc<kiln_engine::Executor>, name: String, state_dir: PathBuf) {
    loop {
        let lease = api
            .call::<LeaseReply>(
                "/v1/worker/lease".into(),
                serde_json::json!({"worker": name, "wait_seconds": 20}),
            )
            .await;
        match lease {
            Ok(Some(l)) => {
                use tracing::Instrument;
                let span =
                    tracing::info_span!("build", build = %l.build, attempt = l.attempt, worker = %name);
                run_lease(&api, &exec, &name, &state_dir, l).instrument(span).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(worker = %name, "leasing: {e:?}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn run_lease(
    api: &Api,
    exec: &Arc<kiln_engine::Executor>,
    name: &str,
    state_dir: &std::path::Path,
    l: LeaseReply,
) {
    let events_path = format!("/v1/worker/builds/{}/events", l.build);
    let finish_path = format!("/v1/worker/builds/{}/finish", l.build);
    let source = state_dir.join("sources").join(&l.engine_id);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let artifacts: Arc<Mutex<Vec<StoredArtifact>>> = Arc::default();
    let (tap, mut rx) = mpsc::unbounded_channel::<Event>();
    tracing::info!("leased");

    // Forwards events in batches; every post (empty or not) is a heartbeat.
    let forwarder = {
        let (api, name, lost, artifacts) = (api.clone(), name.to_string(), lost.clone(), artifacts.clone());
        let attempt = l.attempt;
        let beat = Duration::from_millis(l.heartbeat_ms.max(50));
        tokio::spawn(async move {
            let mut open = true;
            while open {
                let mut batch = Vec::new();
                let deadline = tokio::time::sleep(beat.min(Duration::from_millis(200)));
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        ev = rx.recv() => match ev {
                            Some(ev) => {
                                if let Event::Artifact { id, provenance, .. } = &ev {
                                    artifacts.lock().unwrap_or_else(|e| e.into_inner()).push((id.clone(), provenance.clone()));
                                }
                                batch.push(ev);
                                if batch.len() >= 500 { break }
                            }
                            None => { open = false; break }
                        },
                        _ = &mut deadline => break,
                    }
                }
                let body = serde_json::json!({"worker": name, "attempt": attempt, "events": batch});
                match api.call::<EventsReply>(events_path.clone(), body).await {
                    Ok(Some(r)) if r.stop => {
                        let _ = cancel_tx.send(true);
                    }
                    Ok(_) => {}
                    Err(CallError::LeaseLost) => {
                        lost.store(true, std::sync::atomic::Ordering::SeqCst);
                        let _ = cancel_tx.send(true);
                    }
                    Err(CallError::Other(e)) => tracing::warn!("posting events: {e}"),
                }
            }
        })
    };

    let result = async {
        let _ = std::fs::remove_dir_all(&source);
        std::fs::create_dir_all(&source).map_err(|e| format!("creating {}: {e}", source.display()))?;
        if let Some(b64) = &l.source_tar_base64 {
            let tar =
                base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("source: {e}"))?;
            let store = exec.blob_store(&l.tenant).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&source);
            store
                .extract_tar(std::io::Cursor::new(tar), &source, &crate::api::source_limits())
                .await
                .map_err(|e| format!("extracting the source: {e}"))?;
        }
        let plan = kiln_workflow::load(&l.pipeline, &l.workflow).map_err(|d| format!("workflow: {d}"))?;
        let mut secrets = Vec::new();
        for s in &l.secrets {
            let v = base64::engine::general_purpose::STANDARD
                .decode(&s.value_base64)
                .map_err(|e| e.to_string())?;
            secrets.push(kiln_secrets::Secret::new(s.name.clone(), v));
        }
        let req = kiln_engine::BuildRequest {
            build: l.engine_id.clone(),
            tenant: l.tenant.clone(),
            plan: Arc::new(plan),
            source: source.clone(),
            source_info: kiln_engine::contexts::SourceInfo {
                repository: format!("{}/{}", l.tenant, l.pipeline),
                sha: "0".repeat(40),
                git_ref: l.git_ref.clone(),
                event_name: "push".into(),
            },
            secrets: Arc::new(secrets),
            untrusted: false,
            shared_cache: Some(Arc::new(ServerCache {
                api: api.clone(),
                build: l.build.clone(),
                worker: name.to_string(),
                attempt: l.attempt,
            })),
        };
        exec.execute(req, Some(tap), cancel_rx).await.map_err(|e| e.to_string())
    }
    .await;
    let _ = forwarder.await;
    let _ = std::fs::remove_dir_all(&source);
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::warn!(build = %l.build, "the lease was taken back; abandoning the build");
        return;
    }
    let uploads = artifacts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (id, provenance) in uploads {
        if let Err(e) = upload_artifact(api, exec, name, &l, &id, provenance.as_deref()).await {
            tracing::warn!(build = %l.build, "uploading artifact {id}: {e}");
        }
    }
    let body = match result {
        Ok(s) => serde_json::json!({
            "worker": name, "attempt": l.attempt, "status": s.status,
            "egress_bytes": s.egress_bytes_in + s.egress_bytes_out,
        }),
        Err(e) => serde_json::json!({"worker": name, "attempt": l.attempt, "infra": e}),
    };
    if let Err(e) = api.call::<serde_json::Value>(finish_path, body).await {
        tracing::warn!(build = %l.build, "reporting the result: {e:?}");
    }
}

/// An artifact id and its provenance envelope's digest, as the engine
/// reported them.
type StoredArtifact = (String, Option<String>);

/// Copies one artifact of the worker's store to the server.
async fn upload_artifact(
    api: &Api,
    exec: &kiln_engine::Executor,
    name: &str,
    l: &LeaseReply,
    id: &str,
    provenance: Option<&str>,
) -> Result<(), String> {
    let store = exec.blob_store(&l.tenant).map_err(|e| e.to_string())?;
    let digest: kiln_store::TreeDigest = id.parse().map_err(|_| format!("bad artifact id {id}"))?;
    let record = store.get_artifact_of(&digest, &l.engine_id).await.map_err(|e| e.to_string())?;
    let manifest = store.get_manifest(&digest).await.map_err(|e| e.to_string())?;
    let tar = crate::tarout::tree_tar(&store, &manifest).await.map_err(|e| e.to_string())?;
    let provenance = match provenance {
        Some(p) => {
            let d: kiln_store::Digest = p.parse().map_err(|_| format!("bad provenance digest {p}"))?;
            Some(store.get_bytes(&d, None).await.map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let b64 = &base64::engine::general_purpose::STANDARD;
    let body = serde_json::to_value(ArtifactUpload {
        worker: name.to_string(),
        attempt: l.attempt,
        record,
        tree_tar_base64: b64.encode(tar),
        provenance_base64: provenance.map(|p| b64.encode(p)),
    })
    .map_err(|e| e.to_string())?;
    api.call::<serde_json::Value>(format!("/v1/worker/builds/{}/artifacts", l.build), body)
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// The server's side of an artifact upload: the tree through the strict
/// tar reader (its digest must be the artifact id), then the record (of
/// the leased build, never another's) and the provenance envelope, all in
/// the build's tenant namespace; the envelope is indexed with the record,
/// so gc keeps it as long as the record.
pub(crate) async fn store_artifact(
    core: &Core,
    tenant: &str,
    build: &str,
    up: ArtifactUpload,
) -> Result<(), String> {
    if up.record.build.build_id != build {
        return Err(format!(
            "the record is of build {}, not of build {build}, whose lease this is",
            up.record.build.build_id
        ));
    }
    let b64 = &base64::engine::general_purpose::STANDARD;
    let store = core.tenant_store(tenant).map_err(|e| e.to_string())?;
    let tar = b64.decode(&up.tree_tar_base64).map_err(|e| format!("tree_tar_base64: {e}"))?;
    let stats = store
        .put_tar(std::io::Cursor::new(tar), &kiln_store::RestoreLimits::default())
        .await
        .map_err(|e| format!("the artifact's archive was refused: {e}"))?;
    if stats.digest != up.record.id {
        return Err(format!("the archive is tree {}, not artifact {}", stats.digest, up.record.id));
    }
    store.put_artifact(&up.record).await.map_err(|e| e.to_string())?;
    if let Some(p) = &up.provenance_base64 {
        let bytes = b64.decode(p).map_err(|e| format!("provenance_base64: {e}"))?;
        let signed = sign_for_deployment(&core.keys, &bytes, &stats.digest)?;
        let envelope = store.put_bytes(signed).await.map_err(|e| e.to_string())?.digest;
        store.set_provenance(&stats.digest, build, envelope).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// GitHub's bounds on a cache key and on restore keys.
const CACHE_KEY_MAX: usize = 512;
const RESTORE_KEYS_MAX: usize = 10;

/// A cache key (and restore keys) a worker may ask for.
pub(crate) fn check_cache_key(key: &str, restore_keys: &[String]) -> Result<(), String> {
    if restore_keys.len() > RESTORE_KEYS_MAX {
        return Err(format!("at most {RESTORE_KEYS_MAX} restore keys"));
    }
    for k in std::iter::once(key).chain(restore_keys.iter().map(String::as_str)) {
        if k.trim().is_empty() || k.len() > CACHE_KEY_MAX || k.contains(',') {
            return Err(format!("a cache key must be 1 to {CACHE_KEY_MAX} bytes with no comma"));
        }
    }
    Ok(())
}

/// The cache scope of a build run for the server: its tenant and branch.
/// Builds the server runs are trusted (it has no fork builds).
fn cache_scope(b: &crate::db::BuildRecord) -> kiln_store::Scope {
    kiln_store::Scope {
        tenant: b.tenant.clone(),
        trust: kiln_store::Trust::Trusted,
        ref_name: kiln_engine::runner::artifacts::branch_of(&b.git_ref),
    }
}

/// Looks a remote attempt's cache key up in the scopes its build reads
/// (its own branch, then the default branch), in the deployment's store:
/// a cache one worker filled is hit on every other.
pub(crate) async fn cache_restore(
    core: &Core,
    b: &crate::db::BuildRecord,
    req: &CacheRestoreRequest,
) -> Result<CacheRestoreReply, String> {
    let store = core.tenant_store(&b.tenant).map_err(|e| e.to_string())?;
    let scopes = kiln_store::read_scopes(&cache_scope(b), &core.cfg.default_branch);
    let rks: Vec<&str> = req.restore_keys.iter().map(String::as_str).collect();
    let kiln_store::CacheLookup::Hit { key, tree, .. } =
        store.cache_get(&scopes, &req.key, &rks).await.map_err(|e| e.to_string())?
    else {
        return Ok(CacheRestoreReply { hit: None });
    };
    let manifest = store.get_manifest(&tree).await.map_err(|e| e.to_string())?;
    let (files, bytes) = manifest.entries.iter().fold((0, 0), |(f, n), e| match e {
        kiln_store::Entry::File { size, .. } => (f + 1, n + size),
        _ => (f, n),
    });
    let tree_tar_base64 = if req.lookup_only {
        None
    } else {
        // Every byte read through the store, checked against its digest.
        let tar = crate::tarout::tree_tar(&store, &manifest).await.map_err(|e| e.to_string())?;
        Some(base64::engine::general_purpose::STANDARD.encode(tar))
    };
    Ok(CacheRestoreReply {
        hit: Some(CacheHit { key, tree: tree.to_string(), files, bytes, tree_tar_base64 }),
    })
}

/// Saves a remote attempt's cache entry into its build's own scope (never
/// one the worker names), read back through the strict archive reader.
pub(crate) async fn cache_save(
    core: &Core,
    b: &crate::db::BuildRecord,
    req: CacheSaveRequest,
) -> Result<String, String> {
    let store = core.tenant_store(&b.tenant).map_err(|e| e.to_string())?;
    let tar = base64::engine::general_purpose::STANDARD
        .decode(&req.tree_tar_base64)
        .map_err(|e| format!("tree_tar_base64: {e}"))?;
    let stats = store
        .put_tar(std::io::Cursor::new(tar), &kiln_store::RestoreLimits::default())
        .await
        .map_err(|e| format!("the cache entry's archive was refused: {e}"))?;
    if stats.digest.to_string() != req.tree {
        return Err(format!("the archive is tree {}, not {}", stats.digest, req.tree));
    }
    let scope = kiln_store::write_scope(&cache_scope(b));
    store.cache_put(&scope, &req.key, &stats.digest).await.map_err(|e| e.to_string())?;
    Ok(stats.digest.to_string())
}

/// The worker's side of the deployment's cache: every lookup and save goes
/// to the server, for the build whose lease this worker holds.
#[derive(Debug)]
struct ServerCache {
    api: Api,
    build: String,
    worker: String,
    attempt: i64,
}

impl ServerCache {
    async fn post<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        what: &str,
        body: serde_json::Value,
    ) -> Result<T, String> {
        let path = format!("/v1/worker/builds/{}/cache/{what}", self.build);
        match self.api.call::<T>(path, body).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err("the server's cache gave no answer".into()),
            Err(CallError::LeaseLost) => Err("the build's lease was taken back".into()),
            Err(CallError::Other(e)) => Err(format!("the server's cache: {e}")),
        }
    }
}

impl kiln_engine::runner::artifacts::SharedCache for ServerCache {
    fn restore<'a>(
        &'a self,
        key: &'a str,
        restore_keys: &'a [String],
        lookup_only: bool,
        store: &'a kiln_store::Store,
    ) -> kiln_engine::runner::artifacts::CacheFut<'a, Option<kiln_engine::runner::artifacts::SharedHit>> {
        Box::pin(async move {
            let body = serde_json::json!({
                "worker": self.worker, "attempt": self.attempt, "key": key,
                "restore_keys": restore_keys, "lookup_only": lookup_only,
            });
            let reply: CacheRestoreReply = self.post("restore", body).await?;
            let Some(hit) = reply.hit else { return Ok(None) };
            let tree = match &hit.tree_tar_base64 {
                Some(b64) => {
                    let tar = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| format!("the server's cache entry: {e}"))?;
                    let stats = store
                        .put_tar(std::io::Cursor::new(tar), &kiln_store::RestoreLimits::default())
                        .await
                        .map_err(|e| format!("the server's cache entry was refused: {e}"))?;
                    if stats.digest.to_string() != hit.tree {
                        return Err(format!(
                            "the server's cache entry is tree {}, not {}",
                            stats.digest, hit.tree
                        ));
                    }
                    Some(stats.digest)
                }
                None => None,
            };
            Ok(Some(kiln_engine::runner::artifacts::SharedHit {
                key: hit.key,
                tree,
                files: hit.files,
                bytes: hit.bytes,
            }))
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a str,
        tree: &'a kiln_store::TreeDigest,
        store: &'a kiln_store::Store,
    ) -> kiln_engine::runner::artifacts::CacheFut<'a, ()> {
        Box::pin(async move {
            let manifest = store.get_manifest(tree).await.map_err(|e| e.to_string())?;
            let tar = crate::tarout::tree_tar(store, &manifest).await.map_err(|e| e.to_string())?;
            let body = serde_json::json!({
                "worker": self.worker, "attempt": self.attempt, "key": key, "tree": tree.to_string(),
                "tree_tar_base64": base64::engine::general_purpose::STANDARD.encode(tar),
            });
            let _: serde_json::Value = self.post("save", body).await?;
            Ok(())
        })
    }
}

/// A remote worker's provenance, signed with the deployment's key instead
/// of the worker's: its statement must be of kiln's types and about the
/// artifact the worker uploaded (its subject is the tree's digest); the
/// worker's own signature, by a key nobody verifies against, is dropped.
/// What the statement says of the build is the worker's word, as it is for
/// any build: the server signs it only for the build whose lease it holds.
fn sign_for_deployment(
    keys: &kiln_store::Keys,
    envelope: &[u8],
    tree: &kiln_store::TreeDigest,
) -> Result<Vec<u8>, String> {
    use kiln_store::provenance::{Envelope, Statement, PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE};
    let env: Envelope =
        serde_json::from_slice(envelope).map_err(|e| format!("the provenance envelope: {e}"))?;
    if env.payload_type != PAYLOAD_TYPE {
        return Err(format!("the provenance envelope's payloadType is `{}`", env.payload_type));
    }
    let b64 = &base64::engine::general_purpose::STANDARD;
    let payload = b64.decode(&env.payload).map_err(|e| format!("the provenance payload: {e}"))?;
    let st: Statement =
        serde_json::from_slice(&payload).map_err(|e| format!("the provenance statement: {e}"))?;
    if st.type_ != STATEMENT_TYPE || st.predicate_type != PREDICATE_TYPE {
        return Err("the provenance statement is not kiln's".into());
    }
    if st.subject.len() != 1 || st.subject[0].digest.sha256 != tree.hex() {
        return Err(format!("the provenance statement is not about artifact {tree}"));
    }
    serde_json::to_vec(&keys.sign(&st)).map_err(|e| e.to_string())
}

/// The server's side of `finish`.
pub(crate) fn finish(core: &Core, id: &str, req: &FinishRequest) -> Result<(), ServerError> {
    core.remote.close(id);
    // The attempt's last events are in this server's records before its end
    // is (its usage record reads them).
    core.catch_up();
    let outcome = match (&req.status, &req.infra) {
        (Some(status), _) => {
            AttemptOutcome::Finished { status: status.clone(), egress_bytes: req.egress_bytes }
        }
        (None, Some(msg)) => AttemptOutcome::Infra(msg.clone()),
        (None, None) => AttemptOutcome::Infra("the worker reported no result".into()),
    };
    core.finish_attempt(id, req.attempt, outcome)
}
