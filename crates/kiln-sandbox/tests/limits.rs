//! Accounting, limits, kill and cleanup with real runtimes on both tiers.
mod common;
use std::time::Duration;

use common::*;
use kiln_sandbox::{Isolation, LimitHit, Runtime};

macro_rules! both_tiers {
    ($($name:ident),* $(,)?) => {
        mod gvisor { $( #[test] fn $name() { super::$name(kiln_sandbox::Isolation::Gvisor) } )* }
        mod container { $( #[test] fn $name() { super::$name(kiln_sandbox::Isolation::Container) } )* }
    };
}

both_tiers!(
    verify,
    cpu_seconds,
    peak_memory,
    memory_limit,
    fork_bomb,
    background_processes_gone,
    kill_from_thread
);

fn verify(tier: Isolation) {
    let rt = runtime(tier);
    let tmp = tempfile::tempdir().unwrap();
    let info = rt.verify(tmp.path()).expect("verify");
    assert!(info.version.starts_with(tier_bin(tier)), "{info:?}");
    // A runtime claiming the other tier must be rejected.
    let other = match tier {
        Isolation::Gvisor => Isolation::Container,
        Isolation::Container => Isolation::Gvisor,
    };
    let liar = Runtime::with_binary(other, rt.binary().to_path_buf());
    assert!(liar.verify(tmp.path()).is_err(), "{tier:?} binary passed as {other:?}");
}

/// A runtime that hangs instead of failing (the kvm platform inside a VM
/// without nested virtualisation spins) is refused at the probe's
/// deadline, not waited for.
#[test]
fn a_runtime_that_hangs_is_refused_at_the_probe_deadline() {
    use std::os::unix::fs::PermissionsExt;
    common::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("runsc");
    std::fs::write(
        &bin,
        "#!/bin/sh\ncase \" $* \" in\n  *\" --version \"*) echo 'runsc version hangs' ;;\n  *\" run \"*) exec sleep 600 ;;\nesac\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hangs = Runtime::with_binary(Isolation::Gvisor, bin);
    let e = hangs.verify_within(&tmp.path().join("scratch"), Duration::from_secs(2)).unwrap_err().to_string();
    assert!(e.contains("did not finish within 2s"), "{e}");
}

fn tier_bin(tier: Isolation) -> &'static str {
    match tier {
        Isolation::Gvisor => "runsc",
        Isolation::Container => "runc",
    }
}

fn cpu_seconds(tier: Isolation) {
    let r = run("cpu", tier, "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo done");
    assert_eq!(r.outcome.exit_code, Some(0), "{r:?}");
    assert!(r.outcome.cpu_seconds > 0.2, "{r:?}");
    assert!(r.outcome.wall > Duration::ZERO);
}

fn peak_memory(tier: Isolation) {
    let r = run("peak", tier, "python3 -c 'b = b\"x\" * (100 << 20); print(len(b))'");
    assert_eq!(r.outcome.exit_code, Some(0), "{r:?}");
    assert!(r.outcome.peak_memory_bytes >= 100 << 20, "{r:?}");
    assert_eq!(r.outcome.limit, None);
}

fn memory_limit(tier: Isolation) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace_dir(tmp.path());
    let mut spec = spec(
        "oom",
        tier,
        "python3 -c 'import time\nx = []\nfor i in range(400): x.append(b\"y\" * (1 << 20))\nprint(\"survived\")'",
        &ws,
    );
    spec.limits.memory_bytes = 64 << 20;
    let r = run_spec(tier, &spec, tmp.path(), Duration::from_secs(60));
    assert_clean(tier, &spec.id);
    assert!(!r.stdout.contains("survived"), "{r:?}");
    assert_ne!(r.outcome.exit_code, Some(0), "{r:?}");
    assert!(matches!(r.outcome.limit, Some(LimitHit::Memory { .. })), "not classified as memory: {r:?}");
}

fn fork_bomb(tier: Isolation) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace_dir(tmp.path());
    let mut spec = spec("forkbomb", tier, "f(){ f | f & }; f; sleep 20", &ws);
    spec.limits.pids = 64;
    let r = run_spec(tier, &spec, tmp.path(), Duration::from_secs(8));
    assert_clean(tier, &spec.id);
    assert_eq!(r.outcome.limit, Some(LimitHit::Pids { limit: 64 }), "not classified as pids: {r:?}");
    assert_ne!(r.outcome.exit_code, Some(0));
}

fn background_processes_gone(tier: Isolation) {
    // Unique durations per tier so concurrent tests don't see each other.
    let (a, b) = match tier {
        Isolation::Gvisor => (60011, 60012),
        Isolation::Container => (60021, 60022),
    };
    let script = format!(
        "setsid sleep {a} >/dev/null 2>&1 & ( ( sleep {b} >/dev/null 2>&1 & ) & ); sleep 0.5; echo started"
    );
    let r = run("bg", tier, &script);
    assert!(r.stdout.contains("started"), "{r:?}");
    for n in [a, b] {
        let left = std::process::Command::new("pgrep").args(["-f", &format!("sleep {n}")]).output().unwrap();
        assert!(
            !left.status.success(),
            "`sleep {n}` survived the sandbox: {}",
            String::from_utf8_lossy(&left.stdout)
        );
    }
}

fn kill_from_thread(tier: Isolation) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace_dir(tmp.path());
    let spec = spec("kill", tier, "sleep 600 & sleep 600; echo not-killed", &ws);
    let r = run_spec(tier, &spec, tmp.path(), Duration::from_secs(1));
    // Killed, not finished: the 600 s sleep never completed.
    assert!(!r.stdout.contains("not-killed"));
    assert!(r.outcome.signal.is_some() || r.outcome.exit_code != Some(0), "{r:?}");
    assert_ne!(r.outcome.exit_code, Some(0), "{r:?}");
    assert_eq!(r.outcome.limit, None, "{r:?}");
    assert_clean(tier, &spec.id);
    let rt = runtime(tier);
    assert!(!rt.list().unwrap().contains(&spec.id));
}
