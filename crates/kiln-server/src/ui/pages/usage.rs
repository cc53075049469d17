//! A tenant's usage and the operators' queue.

use super::*;

pub(crate) async fn usage(State(core): State<AppState>, user: UiUser) -> UiResult<Html<String>> {
    core.blocking(move |core| {
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
    })
    .await
}

/// The `p`-th percentile (0..=100) of `v` (sorted here), nearest rank.
pub(crate) fn percentile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// Operators: what waits, per priority and tenant, and how long builds
/// waited (p50, p99 of the latest 1000).
pub(crate) async fn queue(State(core): State<AppState>, user: UiUser) -> UiResult<Html<String>> {
    core.blocking(move |core| {
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
    })
    .await
}
