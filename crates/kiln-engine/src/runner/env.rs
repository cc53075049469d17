//! The environment of a step: the paths kiln lays out inside a sandbox
//! (workspace, home, tool cache, step files) and the variables GitHub's
//! runner sets, assembled in one place.

use kiln_workflow::{PlannedJob, StepSpec};
use serde_json::{Map, Value};

/// Where the job's workspace is mounted inside every sandbox.
pub const WORKSPACE: &str = "/workspace";

/// The job's home directory inside its sandboxes (GitHub's path), on the
/// job's disk: what a step leaves there the next step finds.
pub const HOME: &str = "/home/runner";

/// `RUNNER_TOOL_CACHE` inside the sandboxes, on the job's disk.
pub const TOOL_CACHE: &str = "/opt/hostedtoolcache";

/// `RUNNER_TEMP`, relative to the home directory.
pub(crate) const RUNNER_TEMP_REL: &str = "work/_temp";

/// Read-only directory with the step's script.
pub(crate) const STEP_DIR: &str = "/kiln/step";

/// Writable directory with the step files.
/// Inside a phase sandbox: every step's script directory, by step.
pub(crate) const PHASE_STEPS_DIR: &str = "/kiln/steps";
/// Inside a phase sandbox: every step's files directory, by step.
pub(crate) const PHASE_FILES_DIR: &str = "/kiln/stepfiles";
pub(crate) const FILES_DIR: &str = "/kiln/files";

/// Sourced by bash (`BASH_ENV`) before a step's script; writes the marker.
pub(crate) const STARTED_SCRIPT: &str = "started.sh";

/// Present once a bash step's script began: a failed step without it never
/// started, which is the runtime's failure, not the user's.
pub(crate) const STARTED_MARKER: &str = "started";

/// The unprivileged uid/gid steps run as.
pub const STEP_UID: u32 = 10001;

pub const STEP_GID: u32 = 10001;

/// kiln's own commands, under the tool cache (see [`crate::runner::builtins::RUSTUP_SHIM`]).
pub(crate) const SHIM_DIR_REL: &str = "kiln/bin";

pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables a step may not change through `$GITHUB_ENV`.
pub(crate) fn protected_env(name: &str) -> bool {
    name.starts_with("GITHUB_")
        || name.starts_with("RUNNER_")
        || name.starts_with("LD_")
        || matches!(name, "CI" | "PATH" | "HOME")
}

/// The step's whole environment: kiln's variables, then the user's.
pub(crate) fn step_env(
    github: &Value,
    job: &PlannedJob,
    step: &StepSpec,
    k: usize,
    user: Map<String, Value>,
    path_prefix: &[String],
    files: &str,
) -> Vec<(String, String)> {
    let g = |k: &str| github.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut path = path_prefix.to_vec();
    path.push(format!("{HOME}/.local/bin:{HOME}/.cargo/bin"));
    path.push(DEFAULT_PATH.to_string());
    // Last: kiln's stand-ins (`rustup`) lose to anything real.
    path.push(format!("{TOOL_CACHE}/{SHIM_DIR_REL}"));
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in user {
        if protected_env(&k) && k != "PATH" {
            continue;
        }
        let v = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if k == "PATH" {
            continue;
        }
        env.push((k, v));
    }
    let fixed = [
        ("CI", "true".to_string()),
        ("HOME", HOME.to_string()),
        ("LANG", "C.UTF-8".to_string()),
        ("PATH", path.join(":")),
        ("GITHUB_ACTIONS", "true".to_string()),
        ("GITHUB_WORKSPACE", WORKSPACE.to_string()),
        ("GITHUB_SHA", g("sha")),
        ("GITHUB_REF", g("ref")),
        ("GITHUB_REF_NAME", g("ref_name")),
        ("GITHUB_REPOSITORY", g("repository")),
        ("GITHUB_REPOSITORY_OWNER", g("repository_owner")),
        ("GITHUB_EVENT_NAME", g("event_name")),
        ("GITHUB_RUN_ID", g("run_id")),
        ("GITHUB_RUN_NUMBER", g("run_number")),
        ("GITHUB_RUN_ATTEMPT", g("run_attempt")),
        ("GITHUB_WORKFLOW", g("workflow")),
        ("GITHUB_ACTOR", g("actor")),
        ("GITHUB_JOB", job.key.clone()),
        ("GITHUB_ACTION", step.id.clone().unwrap_or_else(|| format!("__run_{k}"))),
        ("GITHUB_OUTPUT", format!("{files}/output")),
        ("GITHUB_ENV", format!("{files}/env")),
        ("GITHUB_PATH", format!("{files}/path")),
        ("GITHUB_STEP_SUMMARY", format!("{files}/summary")),
        ("RUNNER_OS", "Linux".to_string()),
        ("RUNNER_ARCH", if cfg!(target_arch = "aarch64") { "ARM64" } else { "X64" }.to_string()),
        ("RUNNER_NAME", "kiln".to_string()),
        ("RUNNER_TEMP", format!("{HOME}/{RUNNER_TEMP_REL}")),
        ("RUNNER_TOOL_CACHE", TOOL_CACHE.to_string()),
        // `npm i -g` and `pip install --user` land in the job's home, whose
        // bin directories are on PATH (as on GitHub's Ubuntu runners).
        ("NPM_CONFIG_PREFIX", format!("{HOME}/.local")),
        // crates.io's sparse index (the registry's own host) rather than
        // the git index on a code host the egress policy does not open.
        ("CARGO_REGISTRIES_CRATES_IO_PROTOCOL", "sparse".to_string()),
        ("RUNNER_ENVIRONMENT", "self-hosted".to_string()),
    ];
    for (k, v) in fixed {
        env.push((k.to_string(), v));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_variables_cannot_be_set_through_github_env() {
        assert!(protected_env("GITHUB_OUTPUT"));
        assert!(protected_env("PATH"));
        assert!(protected_env("LD_PRELOAD"));
        assert!(!protected_env("NODE_ENV"));
    }
}
