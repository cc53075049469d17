#![allow(dead_code)]
//! Helpers for the real-runtime integration tests. No mocks: these need root,
//! cgroups (v1 or v2), and runsc + runc installed, and FAIL (not skip) otherwise.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_sandbox::{Isolation, Limits, Outcome, Runtime, Sandbox, SandboxSpec};

pub const TIERS: [Isolation; 2] = [Isolation::Gvisor, Isolation::Container];
pub const STEP_UID: u32 = 1000;
pub const STEP_GID: u32 = 1000;

pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid =
        status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).unwrap();
    assert_eq!(
        uid, "0",
        "these integration tests run real sandboxes and need root (euid 0); run them as root"
    );
}

pub fn runtime(tier: Isolation) -> Runtime {
    require_root();
    Runtime::locate(tier).unwrap_or_else(|e| panic!("runtime for {tier:?} is required: {e}"))
}

pub fn tag(tier: Isolation) -> &'static str {
    match tier {
        Isolation::Gvisor => "gv",
        Isolation::Container => "rc",
    }
}

pub fn id(name: &str, tier: Isolation) -> String {
    format!("kiln-t-{name}-{}-{}", tag(tier), std::process::id())
}

pub fn limits() -> Limits {
    Limits { memory_bytes: 256 << 20, pids: 128, cpus: 1.0, tmp_bytes: 8 << 20 }
}

/// A plain workspace directory owned by the step user.
pub fn workspace_dir(root: &Path) -> PathBuf {
    let ws = root.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::os::unix::fs::chown(&ws, Some(STEP_UID), Some(STEP_GID)).unwrap();
    ws
}

pub fn spec(name: &str, tier: Isolation, script: &str, workspace: &Path) -> SandboxSpec {
    SandboxSpec {
        id: id(name, tier),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("LANG".into(), "C.UTF-8".into())],
        cwd: "/workspace".into(),
        workspace: workspace.to_path_buf(),
        binds: vec![],
        limits: limits(),
        uid: STEP_UID,
        gid: STEP_GID,
        init: None,
        root: None,
    }
}

#[derive(Debug)]
pub struct Run {
    pub outcome: Outcome,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the spec in a real sandbox; kills it (from another thread, via a
/// `Killer`) after `timeout`.
pub fn run_spec(tier: Isolation, spec: &SandboxSpec, scratch: &Path, timeout: Duration) -> Run {
    let rt = runtime(tier);
    let sb = Sandbox::prepare(&rt, spec, scratch).expect("prepare");
    let child = sb.command().stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn runtime");
    let killer = sb.killer();
    let (tx, rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(timeout).is_err() {
            killer.kill().expect("kill");
        }
    });
    let out = child.wait_with_output().expect("wait");
    let _ = tx.send(());
    watchdog.join().unwrap();
    let outcome = sb.finish(out.status).expect("finish");
    Run {
        outcome,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a shell script as the step user with default limits.
pub fn run(name: &str, tier: Isolation, script: &str) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace_dir(tmp.path());
    let spec = spec(name, tier, script, &ws);
    let r = run_spec(tier, &spec, tmp.path(), Duration::from_secs(60));
    assert_clean(tier, &spec.id);
    r
}

/// No container, cgroup or bundle left for `id`.
pub fn assert_clean(tier: Isolation, id: &str) {
    let rt = runtime(tier);
    let list = rt.list().expect("list");
    assert!(!list.iter().any(|c| c == id), "container {id} still listed: {list:?}");
    // v1 and hybrid hosts: one hierarchy per controller; v2: "" (the root).
    for c in [
        "memory", "pids", "cpu", "cpuacct", "freezer", "devices", "cpuset", "blkio", "systemd", "unified", "",
    ] {
        let p = Path::new("/sys/fs/cgroup").join(c).join("kiln").join(id);
        assert!(!p.exists(), "cgroup {} left behind", p.display());
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}
