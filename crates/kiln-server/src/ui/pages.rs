//! The UI's pages: builds, one build (DAG, jobs, steps), its log, its
//! security events, its artifacts, one artifact with its provenance,
//! usage, and the operators' queue. Each looks data up exactly as the API
//! does, within the caller's tenant.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::render::{self, ansi_to_html, bytes, seconds, state_badge, trusted, DagNode};
use super::{page, AppState, UiError, UiResult, UiUser};
use crate::api::{log_lines, log_text, tenant_artifact, tenant_build, LogItem};
use crate::core::{is_terminal, Core};
use crate::db::{AuditRow, BuildRecord};
use crate::statedb::LogLine;

/// The build states a list can be filtered by.
const STATES: &[&str] =
    &["queued", "provisioning", "running", "extracting", "succeeded", "failed", "cancelled"];

/// The most log lines a log page renders before its stream takes over.
const LOG_PAGE_LINES: i64 = 20_000;

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    state: Option<String>,
    fragment: Option<String>,
}

fn ms_between(a: Option<i64>, z: Option<i64>) -> Option<f64> {
    Some((z? - a?).max(0) as f64 / 1000.0)
}

fn opt_secs(s: Option<f64>) -> String {
    s.map(seconds).unwrap_or_else(|| "—".into())
}

/// `?state=` as a filter: one of [`STATES`] or none.
fn state_filter(q: Option<&str>) -> UiResult<Option<&str>> {
    match q.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => STATES
            .iter()
            .find(|k| **k == s)
            .map(|k| Some(*k))
            .ok_or_else(|| UiError::Page(StatusCode::BAD_REQUEST, format!("no build state `{s}`"))),
    }
}

fn builds_table(rows: &[BuildRecord]) -> Markup {
    html! {
        @if rows.is_empty() {
            p class="empty" { "No builds." }
        } @else {
            div class="scroll" {
                table class="builds" {
                    caption class="sr" { "Builds, newest first" }
                    thead { tr {
                        th scope="col" { "Build" } th scope="col" { "State" } th scope="col" { "Pipeline" }
                        th scope="col" { "Ref" } th scope="col" { "Priority" } th scope="col" { "Submitted" }
                        th scope="col" { "Queue wait" } th scope="col" { "Run time" } th scope="col" { "Attempts" }
                    } }
                    tbody {
                        @for b in rows {
                            tr data-build=(b.id) data-state=(b.state) {
                                td { a href={ "/ui/builds/" (b.id) } { code { (b.id) } } }
                                td { (state_badge(&b.state))
                                    @if let Some(f) = &b.failure { " " span class="tag" { (f) } } }
                                td { (b.pipeline) }
                                td { @if b.git_ref.is_empty() { "—" } @else { code { (b.git_ref) } } }
                                td { (b.priority) }
                                td { (b.created_at) }
                                td { (opt_secs(ms_between(Some(b.enqueued_ms), b.started_ms))) }
                                td { (opt_secs(ms_between(b.started_ms, b.finished_ms))) }
                                td { (b.attempt) @if b.retries > 0 { " (" (b.retries) " retried)" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The caller's builds, newest first, filtered by state; live.
pub(super) async fn builds(
    State(core): State<AppState>,
    user: UiUser,
    Query(q): Query<ListQuery>,
) -> UiResult<Html<String>> {
    let tenant = user.tenant()?;
    let state = state_filter(q.state.as_deref())?;
    let rows = core.read().builds(Some(tenant), state, 200)?;
    let table = builds_table(&rows);
    if q.fragment.is_some() {
        return Ok(Html(table.into_string()));
    }
    let qs = state.map(|s| format!("state={s}")).unwrap_or_default();
    let body = html! {
        h1 { "Builds" }
        form method="get" action="/ui/builds" class="filter" {
            label for="state" { "State" }
            select id="state" name="state" {
                option value="" selected[state.is_none()] { "any" }
                @for s in STATES { option value=(s) selected[state == Some(*s)] { (s) } }
            }
            button type="submit" { "Filter" }
        }
        div id="live" aria-live="polite" data-live={ "/ui/live?" (qs) }
            data-fragment={ "/ui/builds?fragment=1&" (qs) } { (table) }
    };
    Ok(page(&user, "Builds", "builds", body))
}

/// An anchor id for a step's first marker in the log (job ids and step
/// names are free text: hashed into a safe id).
pub(super) fn step_anchor(job: &str, step: &str) -> String {
    let h = Sha256::digest(format!("{job}\0{step}").as_bytes());
    format!("step-{}", &hex::encode(h)[..12])
}

fn parse_ts(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

fn duration_of(v: &Value) -> String {
    let a = v["started_at"].as_str().and_then(parse_ts);
    let z = v["finished_at"].as_str().and_then(parse_ts);
    match (a, z) {
        (Some(a), Some(z)) => seconds((z - a).as_seconds_f64()),
        (Some(_), None) => "running".into(),
        _ => "—".into(),
    }
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// The jobs of a build as DAG nodes: the plan's jobs and `needs` (from
/// its workflow), each with the state the engine recorded. A workflow the
/// server cannot plan again (it calls another file) is drawn as its jobs
/// without edges.
fn dag_nodes(b: &BuildRecord, jobs: &[Value]) -> Vec<DagNode> {
    let status: HashMap<&str, &str> =
        jobs.iter().filter_map(|j| Some((j["id"].as_str()?, j["status"].as_str()?))).collect();
    let default = if is_terminal(&b.state) { "skipped" } else { "queued" };
    match kiln_workflow::load("workflow.yml", &b.workflow) {
        Ok(plan) => plan
            .jobs
            .iter()
            .map(|j| DagNode {
                id: j.id.clone(),
                state: status.get(j.id.as_str()).copied().unwrap_or(default).to_string(),
                needs: j.needs.clone(),
                group: j.group.map(|_| j.key.clone()),
            })
            .collect(),
        Err(_) => jobs
            .iter()
            .map(|j| DagNode {
                id: j["id"].as_str().unwrap_or("").to_string(),
                state: j["status"].as_str().unwrap_or("").to_string(),
                needs: Vec::new(),
                group: None,
            })
            .collect(),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct FragmentQuery {
    fragment: Option<String>,
}

/// One build: summary, DAG, jobs and their steps; live.
pub(super) async fn build(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
    Query(q): Query<FragmentQuery>,
) -> UiResult<Html<String>> {
    let b = tenant_build(&core, &user.auth(), &id)?;
    let detail = build_detail(&core, &b)?;
    if q.fragment.is_some() {
        return Ok(Html(detail.into_string()));
    }
    let body = html! {
        h1 { "Build " code { (b.id) } }
        (build_nav(&b.id, "build"))
        div id="live" aria-live="polite" data-live={ "/ui/live?build=" (b.id) }
            data-fragment={ "/ui/builds/" (b.id) "?fragment=1" } { (detail) }
    };
    Ok(page(&user, &format!("Build {}", b.id), "builds", body))
}

fn build_nav(id: &str, active: &str) -> Markup {
    let item = |href: String, label: &str, key: &str| {
        html! { li { a href=(href) aria-current=[(active == key).then_some("page")] { (label) } } }
    };
    html! {
        nav class="tabs" aria-label="this build" {
            ul {
                (item(format!("/ui/builds/{id}"), "Jobs", "build"))
                (item(format!("/ui/builds/{id}/logs"), "Log", "logs"))
                (item(format!("/ui/builds/{id}/artifacts"), "Artifacts", "artifacts"))
                (item(format!("/ui/builds/{id}/security"), "Security", "security"))
            }
        }
    }
}

fn build_detail(core: &Core, b: &BuildRecord) -> UiResult<Markup> {
    let (attempts, transitions, usage) = {
        let db = core.read();
        (db.attempts(&b.id)?, db.transitions(&b.id)?, db.usage_of(&b.tenant, &b.id)?)
    };
    let (jobs, phases) = match attempts.last() {
        Some(a) => core.with_state(|s| Ok((s.jobs(&a.engine_id)?, s.step_phases(&a.engine_id)?)))?,
        None => (Vec::new(), Vec::new()),
    };
    let phase_of: HashMap<(&str, &str), &str> =
        phases.iter().map(|(j, s, p)| ((j.as_str(), s.as_str()), p.as_str())).collect();
    let nodes = dag_nodes(b, &jobs);
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    let queue_wait = attempts.first().map(|a| (a.started_ms - b.enqueued_ms).max(0) as f64 / 1000.0);
    Ok(html! {
        dl class="summary" {
            div { dt { "State" } dd id="build-state" data-state=(b.state) { (state_badge(&b.state)) } }
            @if let Some(f) = &b.failure {
                div { dt { "Failure class" } dd { span class="tag" { (f) } " "
                    (if f == "infrastructure" { "(kiln's side: retried)" } else { "(the workflow's)" }) } }
            }
            @if let Some(r) = &b.reason { div { dt { "Reason" } dd { (r) } } }
            div { dt { "Pipeline" } dd { (b.pipeline) } }
            div { dt { "Ref" } dd { @if b.git_ref.is_empty() { "—" } @else { code { (b.git_ref) } } } }
            div { dt { "Priority" } dd { (b.priority) } }
            div { dt { "Submitted" } dd { (b.created_at) } }
            div { dt { "Queue wait" } dd { (opt_secs(queue_wait)) } }
            div { dt { "Run time" } dd { (opt_secs(ms_between(b.started_ms, b.finished_ms))) } }
            div { dt { "Attempts" } dd { (attempts.len()) @if b.retries > 0 { " (" (b.retries) " retried)" } } }
            @if let Some(u) = &usage {
                div { dt { "CPU" } dd { (seconds(u.cpu_seconds)) } }
                div { dt { "Peak memory" } dd { (bytes(u.peak_memory_bytes)) } }
                div { dt { "Egress" } dd { (bytes(u.egress_bytes)) } }
            }
        }
        h2 { "Jobs" }
        @if nodes.is_empty() { p class="empty" { "No jobs yet." } }
        @else { div class="scroll" { (render::dag_svg(&nodes)) } }
        @for j in &jobs {
            @let jid = j["id"].as_str().unwrap_or("");
            @let anchor = index.get(jid).map(|i| format!("job-{i}")).unwrap_or_else(|| step_anchor(jid, "job"));
            section class="job" id=(anchor) aria-labelledby={ (anchor) "-h" } {
                h3 id={ (anchor) "-h" } { (jid) " " (state_badge(j["status"].as_str().unwrap_or(""))) }
                p class="meta" {
                    "Duration " (duration_of(j)) " · exit " (num(&j["exit_code"]))
                    " · CPU " (j["cpu_seconds"].as_f64().map(seconds).unwrap_or_else(|| "—".into()))
                    " · peak memory " (j["peak_memory_bytes"].as_i64().map(bytes).unwrap_or_else(|| "—".into()))
                    @if j["redactions"].as_i64().unwrap_or(0) > 0 { " · " (j["redactions"]) " secret(s) scrubbed" }
                }
                @if let Some(r) = j["reason"].as_str() { p class="reason" role="note" { (r) } }
                @if j["steps"].as_array().is_none_or(|s| s.is_empty()) { p class="empty" { "No steps have run yet." } }
                @else { div class="scroll" {
                    table class="steps" {
                        thead { tr {
                            th scope="col" { "Step" } th scope="col" { "Phase" } th scope="col" { "State" }
                            th scope="col" { "Duration" } th scope="col" { "Exit" } th scope="col" { "CPU" }
                            th scope="col" { "Peak memory" } th scope="col" { "Limit or reason" } th scope="col" { "Log" }
                        } }
                        tbody {
                            @for s in j["steps"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                                @let name = s["name"].as_str().unwrap_or("");
                                @let st = s["conclusion"].as_str().filter(|c| !c.is_empty()).or(s["outcome"].as_str()).unwrap_or("");
                                tr data-step=(name) data-state=(st) {
                                    th scope="row" { (name) }
                                    td { (phase_of.get(&(jid, name)).copied().unwrap_or("—")) }
                                    td { (state_badge(st)) }
                                    td { (duration_of(s)) }
                                    td { (num(&s["exit_code"])) }
                                    td { (s["cpu_seconds"].as_f64().map(seconds).unwrap_or_else(|| "—".into())) }
                                    td { (s["peak_memory_bytes"].as_i64().map(bytes).unwrap_or_else(|| "—".into())) }
                                    td { (s["reason"].as_str().unwrap_or("")) }
                                    td { a class="steplog" href={ "/ui/builds/" (b.id) "/logs#" (step_anchor(jid, name)) } {
                                        "log" span class="sr" { " of " (name) } } }
                                }
                            }
                        }
                    }
                } }
            }
        }
        details class="transitions" {
            summary { "State changes (" (transitions.len()) ")" }
            ol { @for t in &transitions { li { (t.ts) ": " strong { (t.state) } " — " (t.event)
                @if !t.detail.is_empty() { " (" (t.detail) ")" } } } }
        }
    })
}

/// What a live page shows, reduced to a string: a change of it is a
/// reason to re-fetch the page's fragment.
pub(super) fn fingerprint(
    core: &Core,
    tenant: &str,
    build: Option<&str>,
    state: Option<&str>,
) -> Result<String, UiError> {
    match build {
        Some(id) => {
            let b = core.read().build(id)?.filter(|b| b.tenant == tenant);
            let Some(b) = b else { return Err(UiError::Page(StatusCode::NOT_FOUND, "no such build".into())) };
            let attempts = core.read().attempts(&b.id)?;
            let jobs = match attempts.last() {
                Some(a) => core.with_state(|s| s.jobs(&a.engine_id))?,
                None => Vec::new(),
            };
            Ok(format!("{}|{}|{}", b.state, attempts.len(), Value::Array(jobs)))
        }
        None => {
            let state = state_filter(state)?;
            let rows = core.read().builds(Some(tenant), state, 200)?;
            Ok(rows
                .iter()
                .map(|b| format!("{}={}/{}", b.id, b.state, b.attempt))
                .collect::<Vec<_>>()
                .join(","))
        }
    }
}

// ---- logs ----

fn line_key(l: &LogLine) -> String {
    format!("{}\0{}\0{}\0{}", l.attempt, l.job, l.step, l.phase)
}

fn marker_html(l: &LogLine, id: Option<&str>) -> String {
    html! {
        div class="marker" id=[id] {
            span aria-hidden="true" { "▸ " }
            @if l.attempt > 1 { "attempt " (l.attempt) " · " }
            (l.job) @if !l.step.is_empty() { " / " (l.step) } @if !l.phase.is_empty() { " · phase " (l.phase) }
        }
    }
    .into_string()
}

fn line_html(l: &LogLine) -> String {
    let class = if l.stream == "stderr" { "line err" } else { "line" };
    format!(
        "<div class=\"{class}\" id=\"L{id}\"><a class=\"ln\" href=\"#L{id}\" aria-label=\"line {id}\">{id}</a><span class=\"tx\">{}</span></div>",
        ansi_to_html(&l.text),
        id = l.id,
    )
}

/// The build's log: every line so far, then live from the stream.
pub(super) async fn logs(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
) -> UiResult<Html<String>> {
    let b = tenant_build(&core, &user.auth(), &id)?;
    let lines = log_lines(&core, &b.id, 0, LOG_PAGE_LINES)?;
    let mut out = String::new();
    let mut last_key = String::new();
    let mut anchors = HashSet::new();
    for l in &lines {
        let key = line_key(l);
        if key != last_key {
            let anchor = step_anchor(&l.job, &l.step);
            let id = anchors.insert(anchor.clone()).then_some(anchor);
            out.push_str(&marker_html(l, id.as_deref()));
            last_key = key;
        }
        out.push_str(&line_html(l));
    }
    let last = lines.last().map(|l| l.id).unwrap_or(0);
    let truncated = lines.len() as i64 >= LOG_PAGE_LINES;
    let body = html! {
        h1 { "Log of build " code { (b.id) } }
        (build_nav(&b.id, "logs"))
        div class="toolbar" {
            label for="log-search" { "Search" }
            input id="log-search" type="search" autocomplete="off" aria-controls="log";
            span id="log-matches" aria-live="polite" {}
            a href={ "/ui/builds/" (b.id) "/logs.txt" } download={ (b.id) ".log" } { "Download as text" }
            span id="log-status" class="status" role="status" data-state=(b.state) {
                @if is_terminal(&b.state) { "Build " (b.state) "." } @else { "Live: the build is " (b.state) "." }
            }
        }
        @if truncated { p class="hint" { "The first " (LOG_PAGE_LINES) " lines are shown; download the log for all of it." } }
        div id="log" class="log" role="log" aria-label="build log" data-last-key=(last_key)
            data-stream=[(!truncated).then(|| format!("/ui/builds/{}/logs/stream?after={last}", b.id))] {
            (trusted(out))
        }
    };
    Ok(page(&user, &format!("Log of {}", b.id), "builds", body))
}

pub(super) async fn logs_text(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
) -> UiResult<Response> {
    let b = tenant_build(&core, &user.auth(), &id)?;
    let text = log_text(&core, &b.id)?;
    let disposition = format!("attachment; filename=\"{}.log\"", b.id);
    let mut resp = ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
pub(super) struct StreamQuery {
    after: Option<i64>,
}

/// The live log for the page: each line rendered here (escaped, ANSI to
/// classes) as `{key, anchor, marker, line}`; `Last-Event-ID` (sent by the
/// browser when it reconnects) wins over `?after=`, so a dropped
/// connection resumes with neither a lost nor a repeated line.
pub(super) async fn live_log(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> UiResult<Response> {
    let b = tenant_build(&core, &user.auth(), &id)?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<i64>().ok())
        .or(q.after)
        .unwrap_or(0)
        .max(0);
    let events =
        futures::StreamExt::map(crate::api::log_stream(Arc::clone(&core), b.id.clone(), after), |item| {
            let ev = match item {
                LogItem::Line(l) => {
                    let data = json!({
                        "key": line_key(&l),
                        "anchor": step_anchor(&l.job, &l.step),
                        "marker": marker_html(&l, None),
                        "line": line_html(&l),
                    });
                    SseEvent::default().id(l.id.to_string()).event("line").data(data.to_string())
                }
                LogItem::End(end) => {
                    let state = end["state"].as_str().unwrap_or("").to_string();
                    SseEvent::default().event("end").data(json!({"state": state}).to_string())
                }
            };
            Ok::<_, std::convert::Infallible>(ev)
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

// ---- security ----

/// Every audit event of the caller's tenant about build `id`.
fn build_audit(core: &Core, tenant: &str, id: &str) -> UiResult<Vec<AuditRow>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let rows = core.read().audit_events(Some(tenant), after, 10_000)?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        let n = rows.len();
        out.extend(rows.into_iter().filter(|r| r.build.as_deref() == Some(id)));
        if n < 10_000 || out.len() > 100_000 {
            break;
        }
    }
    Ok(out)
}

/// Egress refusals and the secrets handed out (names only), from the audit.
pub(super) async fn security(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
) -> UiResult<Html<String>> {
    let b = tenant_build(&core, &user.auth(), &id)?;
    let rows = build_audit(&core, &b.tenant, &b.id)?;
    let egress: Vec<&AuditRow> = rows.iter().filter(|r| r.kind.starts_with("egress")).collect();
    let secrets: Vec<&AuditRow> = rows.iter().filter(|r| r.kind.starts_with("secret")).collect();
    let table = |rows: &[&AuditRow], caption: &str| {
        html! {
            @if rows.is_empty() { p class="empty" { "None." } } @else {
                div class="scroll" { table class="audit" {
                    caption class="sr" { (caption) }
                    thead { tr { th scope="col" { "Time" } th scope="col" { "Kind" } th scope="col" { "By" } th scope="col" { "Detail" } } }
                    tbody { @for r in rows { tr { td { (r.ts) } td { (r.kind) } td { (r.actor) } td { (r.detail) } } } }
                } }
            }
        }
    };
    let all: Vec<&AuditRow> = rows.iter().collect();
    let body = html! {
        h1 { "Security of build " code { (b.id) } }
        (build_nav(&b.id, "security"))
        section id="egress" aria-labelledby="egress-h" {
            h2 id="egress-h" { "Egress refused or capped (" (egress.len()) ")" }
            (table(&egress, "egress events"))
        }
        section id="secrets" aria-labelledby="secrets-h" {
            h2 id="secrets-h" { "Secrets handed out (" (secrets.len()) ")" }
            p class="hint" { "The variable or file each secret was handed to a step as; a secret's value is never stored in the audit log or shown." }
            (table(&secrets, "secrets handed out"))
        }
        h2 { "Every audit event of this build (" (all.len()) ")" }
        (table(&all, "audit events"))
    };
    Ok(page(&user, &format!("Security of {}", b.id), "builds", body))
}

// ---- artifacts ----

pub(super) async fn artifacts(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
) -> UiResult<Html<String>> {
    let b = tenant_build(&core, &user.auth(), &id)?;
    let attempts = core.read().attempts(&b.id)?;
    let mut list = Vec::new();
    for a in &attempts {
        list.extend(core.with_state(|s| s.artifacts(&a.engine_id))?);
    }
    let body = html! {
        h1 { "Artifacts of build " code { (b.id) } }
        (build_nav(&b.id, "artifacts"))
        @if list.is_empty() { p class="empty" { "No artifacts." } } @else {
            div class="scroll" { table class="artifacts" {
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Job" } th scope="col" { "Output type" }
                    th scope="col" { "Files" } th scope="col" { "Size" } th scope="col" { "Scan verdict" }
                    th scope="col" { "Digest" } th scope="col" { "Actions" }
                } }
                tbody { @for a in &list {
                    @let aid = a["id"].as_str().unwrap_or("");
                    @let status = a["status"].as_str().unwrap_or("");
                    tr data-artifact=(a["name"].as_str().unwrap_or("")) data-status=(status) {
                        th scope="row" { (a["name"].as_str().unwrap_or("")) }
                        td { (a["job"].as_str().unwrap_or("")) }
                        td { (a["output_type"].as_str().unwrap_or("")) }
                        td { (num(&a["files"])) }
                        td { (bytes(a["bytes"].as_i64().unwrap_or(0))) }
                        td { (state_badge(status))
                            @if let Some(s) = a["scan"].as_str().filter(|s| !s.is_empty()) {
                                div class="scan" { (s.lines().next().unwrap_or("")) } } }
                        td { code class="digest" { (aid) } }
                        td class="actions" {
                            a href={ "/ui/artifacts/" (aid) } { "Files and provenance" span class="sr" { " of " (a["name"].as_str().unwrap_or("")) } }
                            " "
                            @if status == "quarantined" {
                                span class="refused" { "✗ quarantined: not downloadable" }
                            } @else {
                                a class="download" href={ "/ui/artifacts/" (aid) "/download" } download { "Download (.tar)" }
                            }
                        }
                    }
                } }
            } }
        }
    };
    Ok(page(&user, &format!("Artifacts of {}", b.id), "builds", body))
}

/// The scan verdict of an artifact as the engine recorded it.
fn scan_of(core: &Core, id: &str) -> UiResult<Option<(String, Option<String>)>> {
    Ok(core.with_state(|s| s.scan_of(id))?)
}

fn copyable(id: &str, text: &str) -> Markup {
    html! {
        div class="copy" {
            pre { code id=(id) { (text) } }
            button type="button" class="copy-btn" data-copy=(id) { "Copy" span class="sr" { " command" } }
        }
    }
}

/// One artifact: its files with sizes and digests, the scan's verdict,
/// its provenance and whether the signature checks out, and the commands
/// that verify or reproduce it.
pub(super) async fn artifact(
    State(core): State<AppState>,
    user: UiUser,
    Path(artifact): Path<String>,
) -> UiResult<Html<String>> {
    let (store, digest) = tenant_artifact(&core, &user.auth(), &artifact).await?;
    let id = digest.to_string();
    let manifest = store
        .get_manifest(&digest)
        .await
        .map_err(|_| UiError::Page(StatusCode::NOT_FOUND, "no such artifact".into()))?;
    let scan = scan_of(&core, &id)?;
    let envelope = crate::api::provenance_bytes(&core, &store, &digest).await?;
    let (statement, verdict) = match envelope {
        None => (None, Err("no provenance recorded".to_string())),
        Some(bytes) => match serde_json::from_slice::<kiln_store::Envelope>(&bytes) {
            Err(e) => (None, Err(format!("the provenance is not a DSSE envelope: {e}"))),
            Ok(env) => match kiln_store::verify(&env, &core.keys.public_key(), &store, &digest).await {
                Ok(st) => (Some(st), Ok(())),
                Err(e) => {
                    use base64::Engine as _;
                    let st = base64::engine::general_purpose::STANDARD
                        .decode(&env.payload)
                        .ok()
                        .and_then(|p| serde_json::from_slice::<kiln_store::Statement>(&p).ok());
                    (st, Err(e.to_string()))
                }
            },
        },
    };
    let quarantined = scan.as_ref().is_some_and(|(s, _)| s == "quarantined");
    let engine_build = statement.as_ref().map(|s| s.predicate.run_details.metadata.invocation_id.clone());
    let body = html! {
        h1 { "Artifact" }
        p { code class="digest" { (id) } }
        h2 { "Scan verdict" }
        @match &scan {
            Some((status, findings)) => {
                p { (state_badge(status)) }
                @if let Some(f) = findings.as_deref().filter(|f| !f.is_empty()) { pre class="findings" { (f) } }
            }
            None => p { "No scan verdict recorded." }
        }
        p {
            @if quarantined {
                span class="refused" { "✗ Quarantined: the page does not offer it for download." }
            } @else {
                a class="download" href={ "/ui/artifacts/" (id) "/download" } download { "Download (.tar)" }
            }
        }
        h2 { "Provenance" }
        @match &verdict {
            Ok(()) => p class="verdict ok" { span aria-hidden="true" { "✓ " } "Signature valid (key " code { (core.keys.keyid()) } "); the subject and every file's digest match." }
            Err(e) => p class="verdict bad" role="alert" { span aria-hidden="true" { "✗ " } "Not verified: " (e) }
        }
        @if let Some(st) = &statement {
            dl class="summary" {
                div { dt { "Builder" } dd { (st.predicate.run_details.builder.id) } }
                div { dt { "Build" } dd { code { (st.predicate.run_details.metadata.invocation_id) } } }
                div { dt { "Started" } dd { (st.predicate.run_details.metadata.started_on) } }
                div { dt { "Finished" } dd { (st.predicate.run_details.metadata.finished_on) } }
                div { dt { "Hermetic" } dd { (if st.predicate.hermetic { "yes" } else { "no" }) } }
                div { dt { "Source" } dd { (st.predicate.build_definition.external_parameters.source.repository) " "
                    code { (st.predicate.build_definition.external_parameters.source.commit) } } }
            }
            h3 { "Materials (image, tools, source)" }
            @if st.predicate.build_definition.resolved_dependencies.is_empty() { p class="empty" { "None recorded (the host's /usr)." } }
            ul class="materials" { @for d in &st.predicate.build_definition.resolved_dependencies {
                li { (d.name.as_deref().unwrap_or("")) " " @if let Some(u) = &d.uri { code { (u) } } " " code class="digest" { "sha256:" (d.digest.sha256) } }
            } }
        }
        h2 { "Check it yourself" }
        p { "With " code { "KILN_SERVER" } " and " code { "KILN_TOKEN" } " set, fetch it:" }
        (copyable("cmd-get", &format!("kiln artifact get {id} --out ./artifact")))
        p { "On the server's host (its state directory), verify its signature, digests and scan verdict, and see how to rebuild it:" }
        (copyable("cmd-verify", &format!("kiln verify {id} --key {}", core.keys.public_key_hex())))
        @if let Some(e) = &engine_build { (copyable("cmd-reproduce", &format!("kiln reproduce {e}"))) }
        h2 { "Files (" (manifest.entries.len()) ")" }
        div class="scroll" { table class="files" {
            thead { tr { th scope="col" { "Path" } th scope="col" { "Size" } th scope="col" { "Digest" } } }
            tbody { @for e in &manifest.entries {
                @match e {
                    kiln_store::tree::Entry::File { path, size, digest, .. } => tr { td { (path) } td { (bytes(*size as i64)) } td { code class="digest" { (digest.to_string()) } } },
                    other => tr { td { (other.path()) } td { "—" } td { "—" } },
                }
            } }
        } }
    };
    Ok(page(&user, "Artifact", "builds", body))
}

/// The artifact as a tar, unless the scan quarantined it.
pub(super) async fn download(
    State(core): State<AppState>,
    user: UiUser,
    Path(artifact): Path<String>,
) -> UiResult<Response> {
    let (store, digest) = tenant_artifact(&core, &user.auth(), &artifact).await?;
    if let Some((status, scan)) = scan_of(&core, &digest.to_string())? {
        if status == "quarantined" {
            return Err(UiError::Page(
                StatusCode::FORBIDDEN,
                format!(
                    "{digest} is quarantined by the artifact scan ({}): it is not offered for download",
                    scan.unwrap_or_default().lines().next().unwrap_or("no findings recorded")
                ),
            ));
        }
    }
    let manifest = store
        .get_manifest(&digest)
        .await
        .map_err(|_| UiError::Page(StatusCode::NOT_FOUND, "no such artifact".into()))?;
    let tar = crate::tarout::tree_tar(&store, &manifest).await?;
    let disposition = format!("attachment; filename=\"{}.tar\"", digest.hex());
    let mut resp = ([(header::CONTENT_TYPE, "application/x-tar")], tar).into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

// ---- usage and queue ----

pub(super) async fn usage(State(core): State<AppState>, user: UiUser) -> UiResult<Html<String>> {
    let tenant = user.tenant()?;
    let rows = core.read().usage(tenant)?;
    let plan = core.read().tenant_plan(tenant)?.unwrap_or_else(|| "free".into());
    let sum = |f: fn(&crate::db::UsageRow) -> f64| rows.iter().map(f).sum::<f64>();
    let recent: Vec<&crate::db::UsageRow> = rows.iter().rev().take(20).collect();
    let cpu: Vec<(String, f64, String)> =
        recent.iter().map(|u| (u.build.clone(), u.cpu_seconds, seconds(u.cpu_seconds))).collect();
    let mem: Vec<(String, f64, String)> = recent
        .iter()
        .map(|u| (u.build.clone(), u.peak_memory_bytes as f64, bytes(u.peak_memory_bytes)))
        .collect();
    let body = html! {
        h1 { "Usage of " (tenant) }
        p { "Plan: " strong { (plan) } " · " (rows.len()) " finished build(s)." }
        dl class="summary" {
            div { dt { "CPU" } dd { (seconds(sum(|u| u.cpu_seconds))) } }
            div { dt { "Wall time" } dd { (seconds(sum(|u| u.wall_seconds))) } }
            div { dt { "Highest peak memory" } dd { (bytes(rows.iter().map(|u| u.peak_memory_bytes).max().unwrap_or(0))) } }
            div { dt { "Egress" } dd { (bytes(sum(|u| u.egress_bytes as f64) as i64)) } }
            div { dt { "Cache read / written" } dd { (bytes(sum(|u| u.cache_read_bytes as f64) as i64)) " / " (bytes(sum(|u| u.cache_write_bytes as f64) as i64)) } }
            div { dt { "Artifacts" } dd { (bytes(sum(|u| u.artifact_bytes as f64) as i64)) } }
            div { dt { "Logs" } dd { (bytes(sum(|u| u.log_bytes as f64) as i64)) } }
        }
        @if !rows.is_empty() {
            h2 { "CPU per build (latest 20)" }
            div class="scroll" { (render::bar_chart("CPU seconds per build", &cpu)) }
            h2 { "Peak memory per build (latest 20)" }
            div class="scroll" { (render::bar_chart("Peak memory per build", &mem)) }
            h2 { "Every build" }
            div class="scroll" { table class="usage" {
                thead { tr {
                    th scope="col" { "Build" } th scope="col" { "Result" } th scope="col" { "Queue wait" }
                    th scope="col" { "Wall" } th scope="col" { "CPU" } th scope="col" { "Peak memory" }
                    th scope="col" { "Egress" } th scope="col" { "Artifacts" } th scope="col" { "Cache read / written" }
                } }
                tbody { @for u in rows.iter().rev() { tr {
                    td { a href={ "/ui/builds/" (u.build) } { code { (u.build) } } }
                    td { (state_badge(&u.status)) }
                    td { (seconds(u.queue_wait_seconds)) } td { (seconds(u.wall_seconds)) } td { (seconds(u.cpu_seconds)) }
                    td { (bytes(u.peak_memory_bytes)) } td { (bytes(u.egress_bytes)) } td { (bytes(u.artifact_bytes)) }
                    td { (bytes(u.cache_read_bytes)) " / " (bytes(u.cache_write_bytes)) }
                } } }
            } }
        } @else { p class="empty" { "No finished builds yet." } }
    };
    Ok(page(&user, "Usage", "usage", body))
}

/// The `p`-th percentile (0..=100) of `v` (sorted here), nearest rank.
pub(super) fn percentile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// Operators: what waits, per priority and tenant, and how long builds
/// waited (p50, p99 of the latest 1000).
pub(super) async fn queue(State(core): State<AppState>, user: UiUser) -> UiResult<Html<String>> {
    if !user.0.operator {
        return Err(UiError::Page(StatusCode::FORBIDDEN, "the queue is for operators".into()));
    }
    let now = core.cfg.clock.now_ms();
    let queued = core.read().builds(None, Some("queued"), 10_000)?;
    let running: usize = ["provisioning", "running", "extracting"]
        .iter()
        .map(|s| core.read().builds(None, Some(s), 10_000).map(|r| r.len()))
        .sum::<Result<usize, _>>()?;
    let mut depth: BTreeMap<(String, String), (usize, i64)> = BTreeMap::new();
    for b in &queued {
        let e = depth.entry((b.priority.clone(), b.tenant.clone())).or_insert((0, now));
        e.0 += 1;
        e.1 = e.1.min(b.enqueued_ms);
    }
    let recent = core.read().builds(None, None, 1000)?;
    let mut waits: Vec<f64> =
        recent.iter().filter_map(|b| ms_between(Some(b.enqueued_ms), b.started_ms)).collect();
    let p50 = percentile(&mut waits, 50.0);
    let p99 = percentile(&mut waits, 99.0);
    let body = html! {
        h1 { "Queue" }
        dl class="summary" {
            div { dt { "Queued" } dd { (queued.len()) } }
            div { dt { "Running" } dd { (running) } }
            div { dt { "Wait p50" } dd { (opt_secs(p50)) } }
            div { dt { "Wait p99" } dd { (opt_secs(p99)) } }
        }
        p class="hint" { "Waits of the latest " (waits.len()) " builds that started." }
        h2 { "Depth per priority and tenant" }
        @if depth.is_empty() { p class="empty" { "Nothing is waiting." } } @else {
            div class="scroll" { table class="queue" {
                thead { tr { th scope="col" { "Priority" } th scope="col" { "Tenant" } th scope="col" { "Queued" } th scope="col" { "Oldest waits" } } }
                tbody { @for ((prio, tenant), (n, oldest)) in &depth { tr {
                    td { (prio) } td { (tenant) } td { (n) } td { (seconds((now - oldest).max(0) as f64 / 1000.0)) }
                } } }
            } }
        }
    };
    Ok(page(&user, "Queue", "queue", body))
}
