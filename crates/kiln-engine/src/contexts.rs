//! The expression contexts kiln provides locally (`github`, `runner`, ...).

use serde_json::{json, Value};

/// What kiln knows about the source of a build, for the `github` context.
#[derive(Debug, Clone, Default)]
pub struct SourceInfo {
    pub repository: String,
    pub sha: String,
    pub git_ref: String,
    pub event_name: String,
}

/// The `github` context of a local build.
pub fn github(build: &str, workflow: &str, src: &SourceInfo) -> Value {
    json!({
        "workspace": crate::runner::sandbox::WORKSPACE,
        "sha": src.sha,
        "ref": src.git_ref,
        "ref_name": src.git_ref.rsplit('/').next().unwrap_or(""),
        "repository": src.repository,
        "repository_owner": src.repository.split('/').next().unwrap_or(""),
        "event_name": src.event_name,
        "run_id": build,
        "run_number": "1",
        "run_attempt": "1",
        "workflow": workflow,
        "actor": "kiln",
        "server_url": "",
        "action": "",
        "job": "",
    })
}

/// The `runner` context.
pub fn runner(isolation: &str) -> Value {
    json!({
        "os": "Linux",
        "arch": std::env::consts::ARCH.replace("x86_64", "X64").replace("aarch64", "ARM64"),
        "name": format!("kiln-{isolation}"),
        "temp": "/tmp",
        "tool_cache": "/tmp/toolcache",
        "environment": "self-hosted",
        "debug": "",
    })
}
