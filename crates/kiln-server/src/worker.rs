//! In-process workers: tasks of `kiln serve` that claim builds from the
//! [`Core`] and run them with the engine's [`Executor`], exactly as a
//! remote `kiln worker` would, minus the HTTP in between.

use std::sync::Arc;
use std::time::Duration;

use kiln_engine::{BuildRequest, Event, Executor};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::core::{AttemptOutcome, Claim, Core};

/// Starts `n` worker tasks.
pub fn spawn_workers(core: Arc<Core>, exec: Arc<Executor>, n: usize) {
    for i in 0..n {
        // Named after their server: replicas' workers stay apart in the records.
        let name = format!("{}/in-process-{}", core.server_id, i + 1);
        tokio::spawn(worker_loop(core.clone(), exec.clone(), name));
    }
}

async fn worker_loop(core: Arc<Core>, exec: Arc<Executor>, name: String) {
    loop {
        let claim = match core.claim_wait(&name, false, None).await {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(worker = %name, "claiming a build: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let span = tracing::info_span!("build", build = %claim.build.id, attempt = claim.attempt.attempt, worker = %name);
        let (id, attempt) = (claim.build.id.clone(), claim.attempt.attempt);
        core.busy_inc();
        // On a task of its own: a panic in the engine fails the attempt as
        // an infrastructure failure (retried) instead of stranding the
        // build and this worker.
        let run = tokio::spawn({
            let (core, exec) = (core.clone(), exec.clone());
            async move { run_claim(&core, &exec, claim).await }.instrument(span)
        });
        if let Err(e) = run.await {
            tracing::error!(build = %id, "the worker task failed: {e}");
            let outcome = AttemptOutcome::Infra(format!("the worker failed: {e}"));
            let build = id.clone();
            let recorded = core.blocking(move |core| core.finish_attempt(&build, attempt, outcome)).await;
            if let Err(e) = recorded {
                tracing::error!(build = %id, "recording the failure: {e}");
            }
        }
        core.busy_dec();
    }
}

/// What a worker needs to hand a claim to the engine.
pub(crate) struct Prepared {
    pub plan: Arc<kiln_workflow::Plan>,
    pub secrets: Arc<Vec<kiln_secrets::Secret>>,
    pub source_info: kiln_engine::contexts::SourceInfo,
}

/// Parses the workflow again and picks the secrets it may have: a secret
/// whose allowed phases no longer cover the workflow's uses (changed since
/// submit) is withheld.
pub(crate) fn prepare(
    claim: &Claim,
    secrets: Vec<(kiln_secrets::Secret, Vec<String>)>,
) -> Result<Prepared, String> {
    let b = &claim.build;
    let plan = kiln_workflow::load(&b.pipeline, &b.workflow)
        .map_err(|d| format!("the workflow no longer loads: {d}"))?;
    let allowed: Vec<kiln_secrets::Secret> = secrets
        .into_iter()
        .filter(|(s, phases)| crate::policy::secret_phase_violations(&plan, &s.name, phases).is_empty())
        .map(|(s, _)| s)
        .collect();
    let source_info = kiln_engine::contexts::SourceInfo {
        repository: format!("{}/{}", b.tenant, b.pipeline),
        sha: b
            .source_tree
            .as_deref()
            .and_then(|t| t.strip_prefix("sha256:"))
            .map(|h| h[..40.min(h.len())].to_string())
            .unwrap_or_else(|| "0".repeat(40)),
        git_ref: b.git_ref.clone(),
        event_name: "push".into(),
    };
    Ok(Prepared { plan: Arc::new(plan), secrets: Arc::new(allowed), source_info })
}

/// What every worker does with the engine's events of an attempt: the
/// control plane learns the build started, audit events are recorded.
pub(crate) fn observe(core: &Core, tenant: &str, id: &str, attempt: i64, ev: &Event) {
    match ev {
        Event::BuildStarted { .. } => {
            if let Err(e) = core.started(id, attempt) {
                tracing::error!("recording the start: {e}");
            }
        }
        Event::Log(l) => core.metrics.log_bytes(l.text.len() as u64),
        Event::Audit { kind, job, step, detail } => {
            core.audit(Some(tenant), Some(id), kind, "engine", &format!("[{job} / {step}] {detail}"))
        }
        _ => {}
    }
}

async fn run_claim(core: &Arc<Core>, exec: &Arc<Executor>, claim: Claim) {
    let id = claim.build.id.clone();
    let tenant = claim.build.tenant.clone();
    let attempt = claim.attempt.attempt;
    let source = core.source_dir(&claim.attempt.engine_id);
    let outcome = match setup(core, &claim, &source).await {
        Err(msg) => AttemptOutcome::Infra(msg),
        Ok(p) => {
            let (cancel_tx, cancel_rx) = watch::channel(false);
            {
                let id = id.clone();
                let attached = core.blocking(move |core| {
                    core.attach_cancel(&id, cancel_tx);
                    Ok::<_, crate::error::ServerError>(())
                });
                let _ = attached.await;
            }
            let (tap, mut rx) = mpsc::unbounded_channel::<Event>();
            let consumer = {
                let (core, id, tenant) = (core.clone(), id.clone(), tenant.clone());
                let engine_id = claim.attempt.engine_id.clone();
                tokio::spawn(async move {
                    while let Some(ev) = rx.recv().await {
                        // What arrived meanwhile goes with it: one shared
                        // commit per batch, off the engine's path.
                        let mut batch = vec![ev];
                        while batch.len() < 512 {
                            match rx.try_recv() {
                                Ok(ev) => batch.push(ev),
                                Err(_) => break,
                            }
                        }
                        let (tenant, id, engine_id) = (tenant.clone(), id.clone(), engine_id.clone());
                        let shared = core
                            .blocking(move |core| {
                                for ev in &batch {
                                    observe(core, &tenant, &id, attempt, ev);
                                }
                                core.publish(true, &id, attempt, &engine_id, &batch)
                            })
                            .await;
                        if let Err(e) = shared {
                            tracing::error!("sharing the build's events: {e}");
                        }
                    }
                })
            };
            let req = BuildRequest {
                build: claim.attempt.engine_id.clone(),
                tenant: tenant.clone(),
                plan: p.plan,
                source: source.clone(),
                source_info: p.source_info,
                secrets: p.secrets,
                untrusted: false,
                shared_cache: None,
            };
            let result = exec.execute(req, Some(tap), cancel_rx).await;
            // Every event is observed (the start above all) before the end.
            let _ = tokio::time::timeout(Duration::from_secs(30), consumer).await;
            match result {
                Ok(s) => AttemptOutcome::Finished {
                    status: s.status.clone(),
                    egress_bytes: s.egress_bytes_in + s.egress_bytes_out,
                },
                Err(e) => AttemptOutcome::Infra(e.to_string()),
            }
        }
    };
    let _ = std::fs::remove_dir_all(&source);
    let recorded = {
        let id = id.clone();
        core.blocking(move |core| core.finish_attempt(&id, attempt, outcome)).await
    };
    if let Err(e) = recorded {
        tracing::error!("recording the end of the build: {e}");
    }
    tokio::spawn(core.clone().enforce_cache_quota(tenant));
}

/// Restores the build's source into its directory and loads what it needs.
async fn setup(core: &Arc<Core>, claim: &Claim, source: &std::path::Path) -> Result<Prepared, String> {
    let _ = std::fs::remove_dir_all(source);
    match &claim.build.source_tree {
        Some(tree) => {
            let digest: kiln_store::TreeDigest =
                tree.parse().map_err(|_| format!("bad source tree id {tree}"))?;
            let store = core.tenant_store(&claim.build.tenant).map_err(|e| e.to_string())?;
            if let Some(parent) = source.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            store
                .restore_tree(&digest, source, &crate::api::source_limits())
                .await
                .map_err(|e| format!("restoring the source: {e}"))?;
        }
        None => std::fs::create_dir_all(source).map_err(|e| format!("creating {}: {e}", source.display()))?,
    }
    let tenant = claim.build.tenant.clone();
    let secrets = core.blocking(move |core| core.secrets_for(&tenant)).await.map_err(|e| e.to_string())?;
    prepare(claim, secrets)
}
