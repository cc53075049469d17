//! A build's log: the page, its text download and its live stream.

use super::*;

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
pub(crate) async fn logs(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
) -> UiResult<Html<String>> {
    core.blocking(move |core| {
        let b = tenant_build(core, &user.auth(), &id)?;
        let lines = log_lines(core, &b.id, 0, LOG_PAGE_LINES)?;
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
    })
    .await
}

pub(crate) async fn logs_text(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
) -> UiResult<Response> {
    core.blocking(move |core| {
        let b = tenant_build(core, &user.auth(), &id)?;
        let text = log_text(core, &b.id)?;
        let disposition = format!("attachment; filename=\"{}.log\"", b.id);
        let mut resp = ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response();
        if let Ok(v) = HeaderValue::from_str(&disposition) {
            resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
        Ok(resp)
    })
    .await
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    after: Option<i64>,
}

/// The live log for the page: each line rendered here (escaped, ANSI to
/// classes) as `{key, anchor, marker, line}`; `Last-Event-ID` (sent by the
/// browser when it reconnects) wins over `?after=`, so a dropped
/// connection resumes with neither a lost nor a repeated line.
pub(crate) async fn live_log(
    State(core): State<AppState>,
    user: UiUser,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> UiResult<Response> {
    let auth = user.auth();
    let b = core.blocking(move |core| tenant_build(core, &auth, &id)).await?;
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
