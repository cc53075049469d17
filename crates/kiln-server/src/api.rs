//! The HTTP API (axum): JSON in and out, errors as `{"error": "..."}`,
//! every request authenticated by a bearer token, every build-scoped
//! resource looked up within the caller's tenant (another tenant's ids are
//! 404, exactly like ids that do not exist).

use crate::statedb::AttemptRecords as _;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::core::{is_terminal, plan_limits, Core};
use crate::db::{BuildRecord, NewBuild, Principal};
use crate::error::ApiError;
use crate::statedb::LogLine;

type AppState = Arc<Core>;
type ApiResult<T> = Result<T, ApiError>;

/// Largest workflow file accepted.
const MAX_WORKFLOW_BYTES: usize = 1 << 20;
/// Largest idempotency key.
const MAX_KEY_LEN: usize = 200;

/// Limits on a submitted source archive (and its restore).
pub fn source_limits() -> kiln_store::RestoreLimits {
    kiln_store::RestoreLimits {
        max_entries: 100_000,
        max_bytes: 1 << 30,
        ..kiln_store::RestoreLimits::default()
    }
}

/// Every route: `(method, path)`, as the router serves them and the OpenAPI
/// document lists them (a test holds the two together).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("POST", "/v1/builds"),
    ("GET", "/v1/builds"),
    ("GET", "/v1/builds/{id}"),
    ("POST", "/v1/builds/{id}/cancel"),
    ("GET", "/v1/builds/{id}/logs"),
    ("GET", "/v1/builds/{id}/artifacts"),
    ("GET", "/v1/artifacts/{artifact}"),
    ("GET", "/v1/artifacts/{artifact}/provenance"),
    ("GET", "/v1/key"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/secrets"),
    ("PUT", "/v1/secrets/{name}"),
    ("DELETE", "/v1/secrets/{name}"),
    ("POST", "/v1/worker/lease"),
    ("POST", "/v1/worker/builds/{id}/events"),
    ("POST", "/v1/worker/builds/{id}/artifacts"),
    ("POST", "/v1/worker/builds/{id}/cache/restore"),
    ("POST", "/v1/worker/builds/{id}/cache/save"),
    ("POST", "/v1/worker/builds/{id}/finish"),
];

/// The API router.
pub fn router(core: Arc<Core>) -> Router {
    let limit = core.cfg.max_body_bytes;
    let mut routes: Vec<(&str, &str, MethodRouter<AppState>)> = vec![
        ("GET", "/openapi.json", get(openapi)),
        ("GET", "/metrics", get(metrics)),
        ("POST", "/v1/builds", post(submit)),
        ("GET", "/v1/builds", get(list_builds)),
        ("GET", "/v1/builds/{id}", get(build_detail)),
        ("POST", "/v1/builds/{id}/cancel", post(cancel)),
        ("GET", "/v1/builds/{id}/logs", get(logs)),
        ("GET", "/v1/builds/{id}/artifacts", get(build_artifacts)),
        ("GET", "/v1/artifacts/{artifact}", get(artifact_tar)),
        ("GET", "/v1/artifacts/{artifact}/provenance", get(provenance)),
        ("GET", "/v1/key", get(signing_key)),
        ("GET", "/v1/usage", get(usage)),
        ("GET", "/v1/audit", get(audit)),
        ("GET", "/v1/secrets", get(list_secrets)),
        ("PUT", "/v1/secrets/{name}", axum::routing::put(put_secret)),
        ("DELETE", "/v1/secrets/{name}", axum::routing::delete(delete_secret)),
        ("POST", "/v1/worker/lease", post(worker_lease)),
        ("POST", "/v1/worker/builds/{id}/events", post(worker_events)),
        ("POST", "/v1/worker/builds/{id}/artifacts", post(worker_artifact)),
        ("POST", "/v1/worker/builds/{id}/cache/restore", post(worker_cache_restore)),
        ("POST", "/v1/worker/builds/{id}/cache/save", post(worker_cache_save)),
        ("POST", "/v1/worker/builds/{id}/finish", post(worker_finish)),
    ];
    debug_assert_eq!(routes.iter().map(|(m, p, _)| (*m, *p)).collect::<Vec<_>>(), ROUTES.to_vec());
    let mut by_path: Vec<(&str, MethodRouter<AppState>)> = Vec::new();
    for (_, path, mr) in routes.drain(..) {
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(mr),
            None => by_path.push((path, mr)),
        }
    }
    let mut r = Router::new();
    for (path, mr) in by_path {
        r = r.route(path, mr);
    }
    r.fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(core.clone(), count_requests))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(core)
}

/// Every error is the documented `{"error": ...}` JSON, also those axum's
/// extractors answer by themselves in plain text (a body over the limit:
/// 413; a query string that does not parse: 400; a wrong method: 405).
/// The one place that shapes error bodies besides [`ApiError`].
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/event-stream"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let text = match axum::body::to_bytes(resp.into_body(), 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = match (status, text.is_empty()) {
        (StatusCode::PAYLOAD_TOO_LARGE, _) => "request body too large".to_string(),
        (_, true) => status.canonical_reason().unwrap_or("error").to_ascii_lowercase(),
        (_, false) => text,
    };
    ApiError::new(status, message).into_response()
}

/// Counts every request and runs it in a span naming the method and path
/// (which holds the build id of build routes).
async fn count_requests(State(core): State<AppState>, req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let method = req.method().as_str().to_string();
    let path: String = req.uri().path().chars().take(200).collect();
    let span = tracing::info_span!("request", method = %method, path = %path);
    let resp = next.run(req).instrument(span).await;
    core.metrics.request(&method, resp.status().as_u16());
    resp
}

// ---- authentication ----

/// The caller, authenticated.
#[derive(Debug, Clone)]
/// The caller: what its token may do, and the token's id (the first
/// [`crate::db::TOKEN_ID_LEN`] hex digits of its hash).
pub struct Auth(pub Principal, pub String);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, core: &AppState) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::auth::bearer)
            .map(str::to_string);
        let path: String = parts.uri.path().chars().take(200).collect();
        let method = parts.method.clone();
        core.blocking(move |core| {
            let why = match &token {
                None => "no bearer token",
                Some(t) => match core.read().principal(&crate::auth::hash_token(t)) {
                    Ok(Some(p)) => return Ok(Auth(p, token_id(t))),
                    Ok(None) => "unknown token",
                    Err(e) => return Err(e.into()),
                },
            };
            core.metrics.auth_failure();
            core.audit(None, None, "auth failure", "anonymous", &format!("{why}: {method} {path}"));
            Err(ApiError::new(StatusCode::UNAUTHORIZED, format!("authentication required: {why}")))
        })
        .await
    }
}

impl Auth {
    pub(crate) fn tenant(&self) -> ApiResult<&str> {
        self.0.tenant.as_deref().ok_or_else(|| ApiError::forbidden("this token belongs to no tenant"))
    }
    fn worker(&self) -> ApiResult<()> {
        if self.0.worker {
            Ok(())
        } else {
            Err(ApiError::forbidden("this token is not a worker token"))
        }
    }
    /// Who this is, for the records: the token's id and the actor.
    pub(crate) fn who(&self) -> String {
        format!("{} ({})", self.1, self.actor())
    }

    pub(crate) fn actor(&self) -> String {
        match (&self.0.tenant, self.0.operator, self.0.worker) {
            (_, true, _) => {
                format!("operator{}", self.0.tenant.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())
            }
            (_, _, true) => "worker".into(),
            (Some(t), _, _) => format!("tenant {t}"),
            (None, _, _) => "anonymous".into(),
        }
    }
}

/// A token's id: the start of its hash, as `kiln admin token list` names it.
pub(crate) fn token_id(token: &str) -> String {
    crate::auth::hash_token(token).chars().take(crate::db::TOKEN_ID_LEN).collect()
}

/// Every JSON body of the API is an object: serde would otherwise take an
/// array as a struct's fields by position (`["wf", ...]` as a build).
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    // JSON's own whitespace only; the first value must open an object (the
    // parser then refuses anything after it).
    if body.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')) != Some(&b'{') {
        return Err(ApiError::bad_request("invalid JSON body: expected an object"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// For the fuzz targets (`fuzz/`): every JSON request body, through
/// `parse_json` as its handler parses it. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::remote::{ArtifactUpload, EventsRequest, FinishRequest, LeaseRequest};

    /// Parses `body` as the request of `endpoint` (`submit`, `secret`,
    /// `lease`, `events`, `artifact`, `finish`); `None` for any other.
    pub fn parse_body(endpoint: &str, body: &[u8]) -> Option<Result<(), String>> {
        use super::{parse_json as p, SecretRequest, SubmitRequest};
        let r = match endpoint {
            "submit" => p::<SubmitRequest>(body).map(drop),
            "secret" => p::<SecretRequest>(body).map(drop),
            "lease" => p::<LeaseRequest>(body).map(drop),
            "events" => p::<EventsRequest>(body).map(drop),
            "artifact" => p::<ArtifactUpload>(body).map(drop),
            "finish" => p::<FinishRequest>(body).map(drop),
            _ => return None,
        };
        Some(r.map_err(|e| e.message))
    }
}

#[cfg(test)]
mod body_tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Two {
        a: String,
        b: u32,
    }

    #[test]
    fn bug_a_json_array_body_was_taken_as_fields_by_position() {
        assert!(parse_json::<Two>(br#"["x", 1]"#).is_err());
        assert!(parse_json::<Two>(br#"{"a": "x", "b": 1}"#).is_ok());
        assert!(parse_json::<Two>(b"7").is_err());
    }
}

/// A build of the caller's tenant, or 404.
pub(crate) fn tenant_build(core: &Core, auth: &Auth, id: &str) -> ApiResult<BuildRecord> {
    let tenant = auth.tenant()?;
    if id.len() > 100 {
        return Err(ApiError::not_found("build"));
    }
    match core.read().build(id)? {
        Some(b) if b.tenant == tenant => Ok(b),
        _ => Err(ApiError::not_found("build")),
    }
}

// ---- documents ----

async fn openapi(_auth: Auth) -> Json<Value> {
    Json(crate::openapi::document())
}

async fn metrics(State(core): State<AppState>, auth: Auth) -> ApiResult<Response> {
    if !auth.0.operator {
        return Err(ApiError::forbidden("metrics are for operators"));
    }
    let text = core.blocking(|core| Ok::<_, ApiError>(core.metrics.render(core.gauges()))).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

// ---- builds ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    #[serde(default)]
    workflow: Option<String>,
    /// A repository URL: the zero-config pipeline builds it.
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    ignore_scripts: bool,
    /// With `repository`: commits of history to fetch (default 1; 0: all).
    #[serde(default)]
    depth: Option<u32>,
    /// A deployment webhook: posted (signed, retried) when the build
    /// succeeds with an artifact that is not quarantined.
    #[serde(default)]
    notify: Option<String>,
    #[serde(default)]
    source_tar_base64: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    /// The workflow's file name in diagnostics (default `workflow.yml`).
    #[serde(default)]
    file: Option<String>,
}

/// The zero-config pipeline for a repository URL: only https, or plain
/// http to an address the operator opened (`--allow-private`).
fn repository_workflow(
    core: &Core,
    repo: &str,
    git_ref: Option<&str>,
    ignore_scripts: bool,
    depth: Option<u32>,
) -> ApiResult<String> {
    use kiln_build::pipeline::{parse_source, workflow_text, PipelineOptions, Source};
    let source = parse_source(repo).map_err(|e| ApiError::unprocessable(format!("repository: {e}")))?;
    match &source {
        Source::Local(_) => {
            return Err(ApiError::unprocessable("repository: a URL (https), not a path on the server"));
        }
        Source::Remote { host, port, plain_http: true, .. } => {
            let opened =
                core.cfg.allow_private.iter().any(|a| a.port() == *port && a.ip().to_string() == *host);
            if !opened {
                return Err(ApiError::unprocessable(
                    "repository: plain http only to an address the operator opened (--allow-private)",
                ));
            }
        }
        Source::Remote { .. } => {}
    }
    let opts = PipelineOptions {
        name: repo.to_string(),
        git_ref: git_ref.filter(|r| !r.is_empty()).map(str::to_string),
        depth: match depth {
            Some(0) => None,
            d => Some(d.unwrap_or(1)),
        },
        ignore_scripts,
        ..Default::default()
    };
    Ok(workflow_text(&opts, &source))
}

async fn submit(
    State(core): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let tenant = auth.tenant()?.to_string();
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
            if k.is_empty() || k.len() > MAX_KEY_LEN || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ApiError::bad_request(format!(
                    "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
                )));
            }
            Some(k.to_string())
        }
    };
    let body_hash = hex::encode(Sha256::digest(&body));
    let checked = {
        let (auth, tenant, key, body_hash) = (auth.clone(), tenant.clone(), key.clone(), body_hash.clone());
        core.blocking(move |core| check_submission(core, &auth, &tenant, key.as_deref(), &body_hash, &body))
            .await?
    };
    let accepted = match checked {
        Submission::Replay(resp) => return Ok(resp),
        Submission::New(a) => a,
    };
    let (source_tar, source_tree) = match &accepted.source_tar_base64 {
        None => (None, None),
        Some(b64) => {
            let tar = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ApiError::bad_request(format!("source_tar_base64 is not base64: {e}")))?;
            let store = core.tenant_store(&tenant).map_err(ApiError::from)?;
            let tree = store
                .put_tar(std::io::Cursor::new(&tar), &source_limits())
                .await
                .map_err(|e| ApiError::unprocessable(format!("source archive refused: {e}")))?;
            let blob =
                store.put_bytes(tar).await.map_err(|e| ApiError::from(crate::error::ServerError::from(e)))?;
            (Some(blob.digest.to_string()), Some(tree.digest.to_string()))
        }
    };
    core.blocking(move |core| {
        let new = NewBuild {
            id: kiln_engine::time::new_build_id(),
            tenant: tenant.clone(),
            priority: accepted.priority,
            timeout_secs: accepted.timeout as i64,
            pipeline: accepted.pipeline,
            workflow: accepted.workflow,
            git_ref: accepted.git_ref,
            source_tar,
            source_tree,
            idem_key: key,
            body_hash: body_hash.clone(),
            enqueued_ms: core.cfg.clock.now_ms(),
            submitted_by: Some(auth.who()),
        };
        if let Some(url) = &accepted.notify {
            // Recorded before the build can be claimed, so it cannot finish unseen.
            core.set_notify(&new.id, url)?;
        }
        match core.submit(new)? {
            Ok((b, true)) => {
                tracing::info!(build = %b.id, tenant = %tenant, "queued");
                Ok((StatusCode::CREATED, Json(build_json(core, &b, false)?)).into_response())
            }
            Ok((b, false)) => idempotent(core, b, &body_hash),
            Err(existing) => idempotent(core, existing, &body_hash),
        }
    })
    .await
}

/// What the checks of a submitted build decided.
enum Submission {
    /// The idempotency key was used before: the answer is that build.
    Replay(Response),
    New(Accepted),
}

/// A submitted build that passed its checks, before its source is stored.
struct Accepted {
    priority: String,
    workflow: String,
    pipeline: String,
    git_ref: String,
    timeout: u64,
    notify: Option<String>,
    source_tar_base64: Option<String>,
}

/// Everything a submission is checked against before its bytes are
/// stored: an earlier use of its idempotency key, the request's fields,
/// the workflow, the tenant's plan and its secrets' phases.
fn check_submission(
    core: &Core,
    auth: &Auth,
    tenant: &str,
    key: Option<&str>,
    body_hash: &str,
    body: &[u8],
) -> ApiResult<Submission> {
    if let Some(k) = key {
        if let Some(existing) = core.read().build_by_key(tenant, k)? {
            return idempotent(core, existing, body_hash).map(Submission::Replay);
        }
    }
    let mut req: SubmitRequest = parse_json(body)?;
    let priority = match req.priority.as_deref().unwrap_or("normal") {
        p @ ("urgent" | "normal") => p.to_string(),
        other => {
            return Err(ApiError::bad_request(format!(
                "priority must be `urgent` or `normal`, not `{other}`"
            )))
        }
    };
    let workflow = match (req.workflow.take(), req.repository.take()) {
        (Some(w), None) => w,
        (None, Some(repo)) => {
            if req.source_tar_base64.is_some() {
                return Err(ApiError::bad_request(
                    "a repository build fetches its own source: no source_tar_base64",
                ));
            }
            repository_workflow(core, &repo, req.git_ref.as_deref(), req.ignore_scripts, req.depth)?
        }
        _ => return Err(ApiError::bad_request("give exactly one of `workflow` and `repository`")),
    };
    if workflow.len() > MAX_WORKFLOW_BYTES {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the workflow is larger than 1 MiB"));
    }
    let git_ref = req.git_ref.unwrap_or_default();
    if git_ref.len() > 255 || git_ref.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request("ref must be at most 255 characters without control characters"));
    }
    let file = req.file.unwrap_or_else(|| "workflow.yml".into());
    if file.is_empty() || file.len() > 255 || file.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request("file must be 1 to 255 characters without control characters"));
    }
    let plan = kiln_workflow::load(&file, &workflow).map_err(|d| {
        let list: Vec<Value> =
            d.0.iter()
                .map(|d| json!({"line": d.location.line, "column": d.location.column, "message": d.message}))
                .collect();
        let first = d.0.first().map(|d| d.to_string()).unwrap_or_default();
        ApiError::unprocessable(format!("invalid workflow: {first}")).with(json!({"diagnostics": list}))
    })?;
    let plan_name = core.read().tenant_plan(tenant)?.unwrap_or_else(|| "free".into());
    let limits = plan_limits(&plan_name).unwrap_or_default();
    let timeout = match req.timeout_seconds {
        None => limits.max_timeout_secs,
        Some(0) => return Err(ApiError::bad_request("timeout_seconds must be at least 1")),
        Some(t) if t > limits.max_timeout_secs => {
            core.audit(
                Some(tenant),
                None,
                "quota hit",
                &auth.actor(),
                &format!("timeout {t} s refused: the {plan_name} plan allows {} s", limits.max_timeout_secs),
            );
            return Err(ApiError::unprocessable(format!(
                "timeout_seconds {t} is above the {plan_name} plan's limit of {} s",
                limits.max_timeout_secs
            )));
        }
        Some(t) => t,
    };
    for (secret, phases) in core.secrets_for(tenant)? {
        let bad = crate::policy::secret_phase_violations(&plan, &secret.name, &phases);
        if !bad.is_empty() {
            return Err(ApiError::unprocessable(format!(
                "the workflow hands secret {} to steps of phase {} but it is allowed only in [{}]",
                secret.name,
                bad.join(", "),
                phases.join(", ")
            )));
        }
    }
    let notify = match req.notify.as_deref() {
        None => None,
        Some(u) => {
            let parsed = url::Url::parse(u).map_err(|e| ApiError::bad_request(format!("notify: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(ApiError::bad_request("notify must be an http(s) URL"));
            }
            Some(u.to_string())
        }
    };
    Ok(Submission::New(Accepted {
        priority,
        workflow,
        pipeline: plan.name.clone(),
        git_ref,
        timeout,
        notify,
        source_tar_base64: req.source_tar_base64,
    }))
}

fn idempotent(core: &Core, existing: BuildRecord, body_hash: &str) -> ApiResult<Response> {
    if existing.body_hash != body_hash {
        return Err(ApiError::conflict(format!(
            "Idempotency-Key was already used for build {} with a different request",
            existing.id
        ))
        .with(json!({"build": existing.id})));
    }
    Ok((StatusCode::OK, Json(build_json(core, &existing, false)?)).into_response())
}

/// A build as the API shows it; `detail` adds jobs, steps, transitions and
/// attempts.
fn build_json(core: &Core, b: &BuildRecord, detail: bool) -> ApiResult<Value> {
    let mut v = serde_json::to_value(b)
        .map_err(|e| ApiError::from(crate::error::ServerError::Setup(e.to_string())))?;
    let secs = |a: Option<i64>, z: Option<i64>| match (a, z) {
        (Some(a), Some(z)) => json!((z - a).max(0) as f64 / 1000.0),
        _ => Value::Null,
    };
    v["timings"] = json!({
        "queued_ms": b.enqueued_ms,
        "started_ms": b.started_ms,
        "finished_ms": b.finished_ms,
        "run_seconds": secs(b.started_ms, b.finished_ms),
    });
    if detail {
        let (attempts, transitions, usage) = {
            let db = core.read();
            let usage = db.usage_of(&b.tenant, &b.id)?;
            v["notify"] = match db.notification(&b.id)? {
                Some((url, delivered, attempts)) => json!({
                    "url": url,
                    "delivered": delivered,
                    "attempts": attempts.and_then(|a| serde_json::from_str::<Value>(&a).ok()),
                }),
                None => Value::Null,
            };
            (db.attempts(&b.id)?, db.transitions(&b.id)?, usage)
        };
        let jobs = match attempts.last() {
            Some(a) => core.with_state(|s| s.jobs_json(&a.engine_id))?,
            None => Vec::new(),
        };
        if let Some(first) = attempts.first() {
            v["timings"]["queue_wait_seconds"] =
                json!((first.started_ms - b.enqueued_ms).max(0) as f64 / 1000.0);
        }
        v["jobs"] = json!(jobs);
        v["attempts"] = json!(attempts);
        v["transitions"] = json!(transitions);
        v["usage"] = json!(usage);
    }
    Ok(v)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    state: Option<String>,
}

async fn list_builds(
    State(core): State<AppState>,
    auth: Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let tenant = auth.tenant()?.to_string();
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    core.blocking(move |core| {
        let rows = core.read().builds(Some(&tenant), q.state.as_deref(), limit)?;
        let list = rows.iter().map(|b| build_json(core, b, false)).collect::<ApiResult<Vec<_>>>()?;
        Ok(Json(json!({ "builds": list })))
    })
    .await
}

async fn build_detail(
    State(core): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    core.blocking(move |core| {
        let b = tenant_build(core, &auth, &id)?;
        Ok(Json(build_json(core, &b, true)?))
    })
    .await
}

async fn cancel(State(core): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Response> {
    core.blocking(move |core| {
        let b = tenant_build(core, &auth, &id)?;
        core.cancel(&b.id, &auth.actor())?;
        let b = tenant_build(core, &auth, &id)?;
        Ok((StatusCode::ACCEPTED, Json(build_json(core, &b, false)?)).into_response())
    })
    .await
}

// ---- logs ----

#[derive(Debug, Deserialize)]
struct LogsQuery {
    format: Option<String>,
    /// Resume after this log position (like `Last-Event-ID`).
    after: Option<i64>,
}

/// Log lines of a build after position `after`, across its attempts.
fn read_logs(core: &Core, id: &str, after: i64, limit: i64) -> ApiResult<Vec<LogLine>> {
    let attempts = core.read().attempts(id)?;
    let mut out = Vec::new();
    for a in &attempts {
        if out.len() as i64 >= limit {
            break;
        }
        let after_seq = (after - a.log_base).max(0);
        let lines =
            core.with_state(|s| s.log_lines(&a.engine_id, a.attempt, a.log_base, after_seq, limit))?;
        out.extend(lines.into_iter().filter(|l| l.id > after));
    }
    out.truncate(limit.max(0) as usize);
    Ok(out)
}

async fn logs(
    State(core): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let text = q.format.as_deref() == Some("text");
    let (b, text) = core
        .blocking(move |core| {
            let b = tenant_build(core, &auth, &id)?;
            let text = if text { Some(log_text(core, &b.id)?) } else { None };
            Ok::<_, ApiError>((b, text))
        })
        .await?;
    if let Some(text) = text {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    if let Some(f) = q.format.as_deref().filter(|f| *f != "sse") {
        return Err(ApiError::bad_request(format!("format must be `sse` or `text`, not `{f}`")));
    }
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a log position (a number)"))?,
        None => q.after.unwrap_or(0).max(0),
    };
    let events =
        futures::StreamExt::filter_map(log_stream(core.clone(), b.id.clone(), after), |item| async move {
            let ev = match item {
                LogItem::Line(l) => SseEvent::default().id(l.id.to_string()).event("log").json_data(&l),
                LogItem::End(end) => SseEvent::default().event("end").json_data(end),
            };
            ev.ok().map(Ok::<_, Infallible>)
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// A build's whole log as text, one `[job / step] text` line per entry
/// (every attempt).
pub(crate) fn log_text(core: &Core, id: &str) -> ApiResult<String> {
    let mut text = String::new();
    let mut after = 0;
    loop {
        let lines = read_logs(core, id, after, 5000)?;
        let Some(last) = lines.last() else { break };
        after = last.id;
        for l in &lines {
            let step = if l.step.is_empty() { String::new() } else { format!(" / {}", l.step) };
            text.push_str(&format!("[{}{}] {}\n", l.job, step, l.text));
        }
    }
    Ok(text)
}

/// Log lines of a build after position `after` (at most `limit`), for the UI.
pub(crate) fn log_lines(core: &Core, id: &str, after: i64, limit: i64) -> ApiResult<Vec<LogLine>> {
    read_logs(core, id, after, limit)
}

/// What a live log yields: each line, then the build's end.
#[derive(Debug)]
pub(crate) enum LogItem {
    Line(LogLine),
    /// `{"build", "state", "failure", "reason"}` once the build is over.
    End(Value),
}

/// The live log of build `id` after position `after` (see [`LogStream`]),
/// shared by the API's SSE and the UI's.
pub(crate) fn log_stream(
    core: Arc<Core>,
    id: String,
    after: i64,
) -> impl futures::Stream<Item = LogItem> + Send + 'static {
    futures::stream::unfold(LogStream::new(core, id, after), |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    })
}

/// A live log: the lines stored so far, then each line as it is committed,
/// until the build is over. It waits on this process's signals (a commit
/// of the build's log, a change of a build's state) rather than polling;
/// lines written by another process (a second server on the same state)
/// are still found within [`LOG_FALLBACK`].
struct LogStream {
    core: Arc<Core>,
    build: String,
    after: i64,
    pending: VecDeque<LogItem>,
    done: bool,
    /// Build state changes, and log commits of the build's newest attempt
    /// (by engine id).
    changes: tokio::sync::watch::Receiver<u64>,
    commits: Option<(String, tokio::sync::watch::Receiver<u64>)>,
}

/// How long a live log waits without a signal before it looks anyway.
const LOG_FALLBACK: Duration = Duration::from_secs(1);

impl LogStream {
    fn new(core: Arc<Core>, build: String, after: i64) -> LogStream {
        let changes = core.watch_changes();
        LogStream { core, build, after, pending: VecDeque::new(), done: false, changes, commits: None }
    }

    /// Follows the commits of the build's newest attempt.
    fn follow(&mut self, engine_id: &str) {
        if self.commits.as_ref().is_none_or(|(id, _)| id != engine_id) {
            self.commits = Some((engine_id.to_string(), kiln_engine::store::watch_commits(engine_id)));
        }
    }

    async fn next(&mut self) -> Option<LogItem> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            // Seen before reading: a change after this point wakes the wait below.
            self.changes.borrow_and_update();
            if let Some((_, c)) = self.commits.as_mut() {
                c.borrow_and_update();
            }
            let (build, after) = (self.build.clone(), self.after);
            let read = self
                .core
                .blocking(move |core| {
                    // The state first: lines read after seeing a final state
                    // are all the lines there will be.
                    let Some(row) = core.read().build(&build)? else { return Ok(None) };
                    let finished = is_terminal(&row.state);
                    if finished {
                        // Another replica may have run it: its last lines were
                        // shared before its end was recorded; have them here too.
                        core.catch_up();
                    }
                    let newest = core.read().attempts(&build).ok().and_then(|mut a| a.pop());
                    let lines = read_logs(core, &build, after, 500)?;
                    Ok::<_, ApiError>(Some((row, finished, newest, lines)))
                })
                .await;
            let (row, finished, newest, lines) = match read {
                Ok(Some(r)) => r,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(build = %self.build, "log stream: {}", e.message);
                    return None;
                }
            };
            if let Some(a) = newest {
                self.follow(&a.engine_id);
            }
            for l in lines {
                self.after = l.id;
                self.pending.push_back(LogItem::Line(l));
            }
            if self.pending.is_empty() {
                if finished {
                    self.done = true;
                    let end = json!({"build": row.id, "state": row.state, "failure": row.failure, "reason": row.reason});
                    return Some(LogItem::End(end));
                }
                let commits = async {
                    match self.commits.as_mut() {
                        Some((_, c)) => {
                            if c.changed().await.is_err() {
                                std::future::pending::<()>().await
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = self.changes.changed() => {}
                    _ = commits => {}
                    _ = tokio::time::sleep(LOG_FALLBACK) => {}
                }
            }
        }
    }
}

// ---- artifacts ----

async fn build_artifacts(
    State(core): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    core.blocking(move |core| {
        let b = tenant_build(core, &auth, &id)?;
        let attempts = core.read().attempts(&b.id)?;
        let mut list = Vec::new();
        for a in &attempts {
            list.extend(core.with_state(|s| s.artifacts_json(&a.engine_id))?);
        }
        Ok(Json(json!({ "artifacts": list })))
    })
    .await
}

/// An artifact of the caller's tenant, or 404.
pub(crate) async fn tenant_artifact(
    core: &Core,
    auth: &Auth,
    artifact: &str,
) -> ApiResult<(kiln_store::Store, kiln_store::TreeDigest)> {
    let tenant = auth.tenant()?;
    let digest: kiln_store::TreeDigest =
        artifact.parse().map_err(|_| ApiError::bad_request("an artifact id is sha256:<64 hex digits>"))?;
    let store = core.tenant_store(tenant).map_err(ApiError::from)?;
    match store.artifact_index(&digest).await {
        Ok(Some(_)) => Ok((store, digest)),
        _ => Err(ApiError::not_found("artifact")),
    }
}

async fn artifact_tar(
    State(core): State<AppState>,
    auth: Auth,
    Path(artifact): Path<String>,
) -> ApiResult<Response> {
    let (store, digest) = tenant_artifact(&core, &auth, &artifact).await?;
    let manifest = store.get_manifest(&digest).await.map_err(|_| ApiError::not_found("artifact"))?;
    let tar = crate::tarout::tree_tar(&store, &manifest).await?;
    let disposition = format!("attachment; filename=\"{}.tar\"", digest.hex());
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar")),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment")),
            ),
        ],
        tar,
    )
        .into_response())
}

async fn provenance(
    State(core): State<AppState>,
    auth: Auth,
    Path(artifact): Path<String>,
) -> ApiResult<Response> {
    let (store, digest) = tenant_artifact(&core, &auth, &artifact).await?;
    match provenance_bytes(&core, &store, &digest).await? {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response()),
        None => Err(ApiError::not_found("provenance")),
    }
}

/// The provenance envelope of an artifact of `store`: the store's records
/// first (a remote worker's statement, signed here with the deployment's
/// key), then what the engine recorded.
pub(crate) async fn provenance_bytes(
    core: &Arc<Core>,
    store: &kiln_store::Store,
    digest: &kiln_store::TreeDigest,
) -> ApiResult<Option<Bytes>> {
    let mut candidates: Vec<String> = store
        .artifact_records(digest)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.provenance.map(|d| d.to_string()))
        .collect();
    let subject = digest.to_string();
    candidates.extend(core.blocking(move |core| core.with_state(|s| Ok(s.provenances(&subject)?))).await?);
    for c in candidates {
        let Ok(d) = c.parse::<kiln_store::Digest>() else { continue };
        if let Ok(bytes) = store.get_bytes(&d, None).await {
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

/// The public key every artifact's provenance is signed with (this
/// deployment's, for in-process and remote workers alike).
async fn signing_key(State(core): State<AppState>, _auth: Auth) -> Json<Value> {
    Json(json!({"public_key": core.keys.public_key_hex(), "keyid": core.keys.keyid()}))
}

// ---- usage and audit ----

#[derive(Debug, Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

async fn usage(
    State(core): State<AppState>,
    auth: Auth,
    Query(q): Query<FormatQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let tenant = auth.tenant()?.to_string();
    let rows = core.blocking(move |core| core.read().usage(&tenant)).await?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let csv = match q.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(f) => return Err(ApiError::bad_request(format!("format must be `csv` or `json`, not `{f}`"))),
        None => accept.contains("text/csv"),
    };
    if csv {
        let mut out = String::from(
            "build,tenant,status,queue_wait_seconds,wall_seconds,cpu_seconds,peak_memory_bytes,egress_bytes,\
             artifact_bytes,cache_read_bytes,cache_write_bytes,log_bytes,attempts,finished_at\n",
        );
        for u in rows {
            out.push_str(&format!(
                "{},{},{},{:.3},{:.3},{:.3},{},{},{},{},{},{},{},{}\n",
                u.build,
                u.tenant,
                u.status.replace(',', ";"),
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
            ));
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response());
    }
    Ok(Json(json!({ "usage": rows })).into_response())
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn audit(
    State(core): State<AppState>,
    auth: Auth,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let tenant = if auth.0.operator { None } else { Some(auth.tenant()?.to_string()) };
    let (after, limit) = (q.after.unwrap_or(0), q.limit.unwrap_or(1000).clamp(1, 10_000));
    let rows = core.blocking(move |core| core.read().audit_events(tenant.as_deref(), after, limit)).await?;
    Ok(Json(json!({ "events": rows })))
}

// ---- secrets ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRequest {
    value: String,
    phases: Vec<String>,
}

async fn list_secrets(State(core): State<AppState>, auth: Auth) -> ApiResult<Json<Value>> {
    let tenant = auth.tenant()?.to_string();
    let rows = core.blocking(move |core| core.read().secrets(&tenant)).await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| json!({"name": r.name, "phases": r.phases, "updated_at": r.updated_at}))
        .collect();
    Ok(Json(json!({ "secrets": list })))
}

async fn put_secret(
    State(core): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let tenant = auth.tenant()?.to_string();
    let req: SecretRequest = parse_json(&body)?;
    kiln_secrets::validate(&name, req.value.as_bytes())
        .map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let phases = crate::policy::parse_phases(&req.phases).map_err(ApiError::unprocessable)?;
    let (nonce, ct) = core.vault.seal(&tenant, &name, req.value.as_bytes())?;
    core.blocking(move |core| {
        core.put_secret(&tenant, &name, &phases, &nonce, &ct)?;
        core.audit(
            Some(&tenant),
            None,
            "secret set",
            &auth.actor(),
            &format!("{name} for phases [{}]", phases.join(", ")),
        );
        Ok((StatusCode::OK, Json(json!({"name": name, "phases": phases}))).into_response())
    })
    .await
}

async fn delete_secret(
    State(core): State<AppState>,
    auth: Auth,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let tenant = auth.tenant()?.to_string();
    core.blocking(move |core| {
        if !core.delete_secret(&tenant, &name)? {
            return Err(ApiError::not_found("secret"));
        }
        core.audit(Some(&tenant), None, "secret deleted", &auth.actor(), &name);
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ---- workers ----

async fn worker_lease(State(core): State<AppState>, auth: Auth, body: Bytes) -> ApiResult<Response> {
    auth.worker()?;
    let req: crate::remote::LeaseRequest = parse_json(&body)?;
    if req.worker.is_empty() || req.worker.len() > 100 || !req.worker.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request("worker must be 1 to 100 visible ASCII characters"));
    }
    let worker = format!("remote:{}", req.worker);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.wait_seconds.min(30));
    let Some(claim) = core.claim_wait(&worker, true, Some(deadline)).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let b = &claim.build;
    let reply = async {
        let store = core.tenant_store(&b.tenant)?;
        let source = match &b.source_tar {
            Some(d) => {
                let d: kiln_store::Digest = d
                    .parse()
                    .map_err(|_| crate::error::ServerError::Setup(format!("bad source digest {d}")))?;
                Some(base64::engine::general_purpose::STANDARD.encode(store.get_bytes(&d, None).await?))
            }
            None => None,
        };
        let tenant = b.tenant.clone();
        let secrets = core.blocking(move |core| core.secrets_for(&tenant)).await?;
        let prepared = crate::worker::prepare(&claim, secrets).map_err(crate::error::ServerError::Setup)?;
        let secrets = prepared
            .secrets
            .iter()
            .map(|s| crate::remote::WireSecret {
                name: s.name.clone(),
                value_base64: base64::engine::general_purpose::STANDARD.encode(s.value.expose()),
            })
            .collect();
        Ok::<_, crate::error::ServerError>(crate::remote::LeaseReply {
            build: b.id.clone(),
            tenant: b.tenant.clone(),
            attempt: claim.attempt.attempt,
            engine_id: claim.attempt.engine_id.clone(),
            pipeline: b.pipeline.clone(),
            workflow: b.workflow.clone(),
            git_ref: b.git_ref.clone(),
            source_tree: b.source_tree.clone(),
            source_tar_base64: source,
            secrets,
            heartbeat_ms: (core.cfg.lease_ttl_ms / 3).max(50),
        })
    }
    .await;
    match reply {
        Ok(r) => {
            tracing::info!(build = %b.id, worker = %worker, attempt = r.attempt, "leased to a remote worker");
            Ok(Json(r).into_response())
        }
        Err(e) => {
            let (id, attempt, why) = (b.id.clone(), claim.attempt.attempt, e.to_string());
            core.blocking(move |core| {
                core.finish_attempt(&id, attempt, crate::core::AttemptOutcome::Infra(why))
            })
            .await?;
            Err(e.into())
        }
    }
}

async fn worker_events(
    State(core): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    auth.worker()?;
    let req: crate::remote::EventsRequest = parse_json(&body)?;
    let worker = format!("remote:{}", req.worker);
    core.blocking(move |core| {
        let stop = holds_lease(core, &id, &worker, req.attempt, true)?;
        if !req.events.is_empty() {
            let b = core.read().build(&id)?.ok_or_else(|| ApiError::not_found("build"))?;
            let engine_id = attempt_engine_id(core, &id, req.attempt)?;
            if core.replicated() {
                // Stored for every server before the worker hears back, so
                // its batches keep their order whichever replica each reaches.
                let events: Vec<kiln_engine::Event> =
                    req.events.into_iter().map(|ev| ev.for_build(&engine_id)).collect();
                core.publish(false, &id, req.attempt, &engine_id, &events)?;
                for ev in &events {
                    crate::worker::observe(core, &b.tenant, &id, req.attempt, ev);
                }
            } else {
                core.remote.push(core, &b.tenant, &id, req.attempt, &engine_id, req.events)?;
            }
        }
        Ok(Json(json!({ "stop": stop })))
    })
    .await
}

/// The engine's build id of attempt `attempt` of build `id` (409 if none).
fn attempt_engine_id(core: &Core, id: &str, attempt: i64) -> ApiResult<String> {
    core.read()
        .attempts(id)?
        .into_iter()
        .find(|a| a.attempt == attempt)
        .map(|a| a.engine_id)
        .ok_or_else(|| ApiError::conflict("no such attempt"))
}

/// 409 unless `worker` still holds `id`'s lease for `attempt` (`renew`
/// counts as a heartbeat); `Ok(true)` asks the worker to stop the build.
fn holds_lease(core: &Core, id: &str, worker: &str, attempt: i64, renew: bool) -> ApiResult<bool> {
    core.holder_check(id, worker, attempt, renew)
        .map_err(|_| ApiError::conflict("this worker does not hold the build's lease"))
}

/// The build a worker's request is about, once the worker is found to
/// hold its lease for `attempt` (which counts as a heartbeat).
fn leased_build(core: &Core, id: &str, worker: &str, attempt: i64) -> ApiResult<crate::db::BuildRecord> {
    holds_lease(core, id, &format!("remote:{worker}"), attempt, true)?;
    core.read().build(id)?.ok_or_else(|| ApiError::not_found("build"))
}

/// [`leased_build`] on the blocking pool.
async fn leased_build_off(
    core: &AppState,
    id: String,
    worker: &str,
    attempt: i64,
) -> ApiResult<crate::db::BuildRecord> {
    let worker = worker.to_string();
    core.blocking(move |core| leased_build(core, &id, &worker, attempt)).await
}

async fn worker_artifact(
    State(core): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    auth.worker()?;
    let req: crate::remote::ArtifactUpload = parse_json(&body)?;
    let (worker, attempt) = (req.worker.clone(), req.attempt);
    let (b, engine_id) = core
        .blocking(move |core| {
            let b = leased_build(core, &id, &worker, attempt)?;
            // The engine's id of the leased attempt: the record must be of it.
            Ok::<_, ApiError>((b, attempt_engine_id(core, &id, attempt)?))
        })
        .await?;
    let artifact = req.record.id.to_string();
    crate::remote::store_artifact(&core, &b.tenant, &engine_id, req)
        .await
        .map_err(ApiError::unprocessable)?;
    Ok(Json(json!({ "artifact": artifact })))
}

/// Looks a cache entry up for a remote attempt, in the scope of the build
/// its lease is for: the worker names a key, never a scope.
async fn worker_cache_restore(
    State(core): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<crate::remote::CacheRestoreReply>> {
    auth.worker()?;
    let req: crate::remote::CacheRestoreRequest = parse_json(&body)?;
    crate::remote::check_cache_key(&req.key, &req.restore_keys).map_err(ApiError::bad_request)?;
    let b = leased_build_off(&core, id, &req.worker, req.attempt).await?;
    let reply = crate::remote::cache_restore(&core, &b, &req).await.map_err(ApiError::unprocessable)?;
    Ok(Json(reply))
}

/// Saves a remote attempt's cache entry into the build's own scope.
async fn worker_cache_save(
    State(core): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    auth.worker()?;
    let req: crate::remote::CacheSaveRequest = parse_json(&body)?;
    crate::remote::check_cache_key(&req.key, &[]).map_err(ApiError::bad_request)?;
    let b = leased_build_off(&core, id, &req.worker, req.attempt).await?;
    let tree = crate::remote::cache_save(&core, &b, req).await.map_err(ApiError::unprocessable)?;
    Ok(Json(json!({ "tree": tree })))
}

async fn worker_finish(
    State(core): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    auth.worker()?;
    let req: crate::remote::FinishRequest = parse_json(&body)?;
    let worker = format!("remote:{}", req.worker);
    let b = core
        .blocking(move |core| {
            holds_lease(core, &id, &worker, req.attempt, false)?;
            crate::remote::finish(core, &id, &req)?;
            Ok::<_, ApiError>(core.read().build(&id)?)
        })
        .await?;
    if let Some(b) = &b {
        tokio::spawn(core.clone().enforce_cache_quota(b.tenant.clone()));
    }
    Ok(Json(json!({ "state": b.map(|b| b.state) })))
}
