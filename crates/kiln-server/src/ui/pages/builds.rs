//! The builds list and one build: its summary, DAG, jobs and steps.

use super::*;
use crate::statedb::AttemptRecords as _;

/// How long a build ran, or has run so far (at `now_ms`).
fn run_time(b: &BuildRecord, now_ms: i64) -> String {
    match (b.started_ms, b.finished_ms) {
        (Some(a), Some(z)) => seconds((z - a).max(0) as f64 / 1000.0),
        (Some(a), None) if !is_terminal(&b.state) => {
            format!("{} so far", seconds((now_ms - a).max(0) as f64 / 1000.0))
        }
        _ => "—".into(),
    }
}

fn builds_table(rows: &[BuildRecord], now_ms: i64) -> Markup {
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
                        th scope="col" { "By" }
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
                                td { (b.submitted_by.as_deref().unwrap_or("—")) }
                                td { (opt_secs(ms_between(Some(b.enqueued_ms), b.started_ms))) }
                                td { (run_time(b, now_ms)) }
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
pub(crate) async fn builds(
    State(core): State<AppState>,
    user: UiUser,
    Query(q): Query<ListQuery>,
) -> UiResult<Html<String>> {
    core.blocking(move |core| {
        let tenant = user.tenant()?;
        let state = state_filter(q.state.as_deref())?;
        let rows = core.read().builds(Some(tenant), state, 200)?;
        let table = builds_table(&rows, core.cfg.clock.now_ms());
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
            p id="live-status" class="sr" role="status" {}
            div id="live" data-live={ "/ui/live?" (qs) }
                data-fragment={ "/ui/builds?fragment=1&" (qs) } { (table) }
        };
        Ok(page(&user, "Builds", "builds", body))
    })
    .await
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
pub(crate) struct FragmentQuery {
    fragment: Option<String>,
}

/// One build: summary, DAG, jobs and their steps; live.
pub(crate) async fn build(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
    Query(q): Query<FragmentQuery>,
) -> UiResult<Html<String>> {
    core.blocking(move |core| {
        let b = tenant_build(core, &user.auth(), &id)?;
        let detail = build_detail(core, &b)?;
        if q.fragment.is_some() {
            return Ok(Html(detail.into_string()));
        }
        let body = html! {
            h1 { "Build " code { (b.id) } }
            (build_nav(&b.id, "build"))
            p id="live-status" class="sr" role="status" {}
            div id="live" data-live={ "/ui/live?build=" (b.id) }
                data-fragment={ "/ui/builds/" (b.id) "?fragment=1" } { (detail) }
        };
        Ok(page(&user, &format!("Build {}", b.id), "builds", body))
    })
    .await
}

fn build_detail(core: &Core, b: &BuildRecord) -> UiResult<Markup> {
    let (attempts, transitions, usage) = {
        let db = core.read();
        (db.attempts(&b.id)?, db.transitions(&b.id)?, db.usage_of(&b.tenant, &b.id)?)
    };
    let (jobs, phases) = match attempts.last() {
        Some(a) => core.with_state(|s| Ok((s.jobs_json(&a.engine_id)?, s.step_phases(&a.engine_id)?)))?,
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
            div { dt { "Source" } dd {
                @match &b.source_tree {
                    Some(t) => { "uploaded tree " code { (t.get(..19).unwrap_or(t)) "…" } }
                    None => { "none uploaded (the workflow fetches its own)" }
                }
            } }
            div { dt { "Ref" } dd { @if b.git_ref.is_empty() { "—" } @else { code { (b.git_ref) } } } }
            div { dt { "Priority" } dd { (b.priority) } }
            div { dt { "Submitted" } dd { (b.created_at) } }
            div { dt { "By" } dd { (b.submitted_by.as_deref().unwrap_or("—")) } }
            div { dt { "Queue wait" } dd { (opt_secs(queue_wait)) } }
            div { dt { "Run time" } dd { (run_time(b, core.cfg.clock.now_ms())) } }
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
pub(crate) fn fingerprint(
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
                Some(a) => core.with_state(|s| s.jobs_json(&a.engine_id))?,
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
