//! `kiln serve`: the multi-tenant control plane.
//!
//! * [`api`]: the HTTP API (axum) and its OpenAPI document ([`openapi`]).
//! * [`core`]: the queue — `kiln-queue`'s state machine, fair scheduler
//!   and leases — persisted in [`db`] (`control.db`), with claims, reports,
//!   lease expiry, plan timeouts and restart recovery.
//! * [`worker`]: in-process workers; [`remote`]: `kiln worker` and the
//!   server's side of it.
//! * [`vault`]: tenant secrets encrypted at rest; [`auth`]: bearer tokens.
//! * [`metrics`]: Prometheus exposition.
//! * [`ui`]: the web UI under `/ui/` (server-rendered pages, a little
//!   JavaScript for the live parts, all embedded in the binary).
//!
//! Embedded defaults: SQLite files and a local content store in one state
//! directory, workers inside the server process. Each has its seam for
//! scale-out: the control database is one module of named queries, the
//! content store is `kiln-store`'s object-store API, and a worker is
//! anything that speaks the worker API (in-process workers use the same
//! claim/report functions the HTTP endpoints do).

pub mod api;
pub mod auth;
pub mod blocking;
pub mod core;
pub mod db;
pub mod error;
pub mod metrics;
pub mod notify;
pub mod openapi;
pub mod pg;
pub mod pgcluster;
pub mod policy;
pub mod remote;
pub mod replicate;
pub mod statedb;
pub mod tarout;
pub mod tls;
pub mod ui;
pub mod vault;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use crate::core::{Core, ServerConfig};
pub use error::{ApiError, ServerError};

/// Everything `kiln serve` answers: the API and, beside it, the web UI.
pub fn app(core: Arc<Core>) -> axum::Router {
    ui::router(core.clone()).merge(api::router(core))
}

/// Runs the server on `listener` until `shutdown` resolves: recovers the
/// queue, starts the in-process workers and the reaper, calls `ready` (the
/// databases are open, the keys made: a caller announces the server then),
/// serves the API.
pub async fn serve<L>(
    cfg: ServerConfig,
    listener: L,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), ServerError>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let workers = cfg.workers;
    let exec_cfg = kiln_engine::ExecutorConfig {
        state_dir: cfg.state_dir.clone(),
        isolation: cfg.isolation,
        max_parallel: 1,
        allow_private: cfg.allow_private.clone(),
        egress_cap: cfg.egress_cap,
        default_branch: cfg.default_branch.clone(),
        store_url: cfg.store_url.clone(),
        registries: Vec::new(),
        // Every artifact passes the scanning gate before it is recorded.
        scanner: Some(Arc::new(kiln_scan::Scanner::builtin())),
        policy: Default::default(),
    };
    // The executor first: it cleans up what builds interrupted by a crash
    // left behind (sandboxes, mounts) before the queue hands them out again.
    let exec = if workers > 0 {
        Some(Arc::new(
            tokio::task::spawn_blocking(move || kiln_engine::Executor::new(exec_cfg))
                .await
                .map_err(|e| ServerError::Setup(format!("starting the engine: {e}")))??,
        ))
    } else {
        None
    };
    // Opening the databases and recovering the queue block: off the async
    // threads, like every database call (see [`blocking`]).
    let core = blocking::run(move || Core::start(cfg)).await?;
    if let Some(exec) = exec {
        worker::spawn_workers(core.clone(), exec, workers);
    }
    {
        let core = core.clone();
        let every = Duration::from_millis((core.cfg.lease_ttl_ms / 4).clamp(50, 1000));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = core.blocking(|core| core.reap()).await {
                    tracing::error!("reaper: {e}");
                }
            }
        });
    }
    let app = app(core);
    tracing::info!("listening on {:?}", listener.local_addr().ok());
    ready();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ServerError::Setup(format!("serving: {e}")))
}
