//! Running git on the host, over the operator's own source directory only.
//!
//! kiln reads the commit and the file list of the directory it was pointed
//! at, before any step has run, and never over a workspace a step could have
//! changed. Even so, every repository-config hook that could run a program is
//! switched off on the command line (fsmonitor, hooks, pager, filters are not
//! involved in the read-only commands used here), and git never prompts.

use std::path::Path;
use std::process::Command;

use crate::contexts::SourceInfo;

/// A `git -C dir` command with the settings that could run code disabled.
pub fn hardened_git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(["-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", "-c", "core.pager=cat"])
        .args(["-c", "protocol.allow=never", "-c", "safe.directory="])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        // The operator's own config can define filter drivers or a hooks
        // path that a repository's `.gitattributes` would then trigger.
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

fn git_out(dir: &Path, args: &[&str]) -> Option<String> {
    let out = hardened_git(dir).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What the `github` context says about a local source directory.
pub fn source_info(dir: &Path) -> SourceInfo {
    let sha = git_out(dir, &["rev-parse", "HEAD"]).unwrap_or_else(|| "0".repeat(40));
    let git_ref = git_out(dir, &["symbolic-ref", "-q", "HEAD"]).unwrap_or_default();
    let top = git_out(dir, &["rev-parse", "--show-toplevel"]).map(std::path::PathBuf::from);
    let base = top.as_deref().unwrap_or(dir);
    let name = base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "local".into());
    SourceInfo { repository: format!("local/{name}"), sha, git_ref, event_name: "push".into() }
}
