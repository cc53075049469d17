//! The UI's pages: builds, one build (DAG, jobs, steps), its log, its
//! security events, its artifacts, one artifact with its provenance,
//! usage, and the operators' queue. Each looks data up exactly as the API
//! does, within the caller's tenant.

mod artifacts;
mod builds;
mod logs;
mod security;
mod usage;

pub(super) use artifacts::{artifact, artifacts, download};
pub(super) use builds::{build, builds, fingerprint};
pub(super) use logs::{live_log, logs, logs_text};
pub(super) use security::security;
#[cfg(test)]
pub(super) use usage::percentile;
pub(super) use usage::{queue, usage};

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
