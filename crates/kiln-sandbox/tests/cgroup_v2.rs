//! The `container` tier (runc) on a cgroup v2 host, for real: this host
//! mounts cgroup v1, so the test boots Debian's user-mode-linux kernel
//! (Linux 6.1 as a process; the host's / as its root through hostfs;
//! cgroup2 with memory, pids and cpu at /sys/fs/cgroup; tmpfs on /run and
//! /tmp so no runtime state reaches the host's) and runs this same test
//! binary in it. Inside, kiln-sandbox detects v2 and runs real runc
//! sandboxes: output and CPU accounting, a memory limit and a fork bomb
//! classified, nothing left in /sys/fs/cgroup/kiln.
//!
//! gVisor is not run there: runsc 20240729 panics at start in
//! user-mode-linux ("None of the address space sizes could be successfully
//! mmaped": the UML process's address space is too small for the sentry),
//! and runsc treats cpuset as a mandatory v2 controller, which this UML
//! kernel is built without.
//!
//! Needs `linux.uml` (`apt-get install user-mode-linux`; scripts/install.sh
//! installs it); fails with that reason when it is missing.

mod common;

use std::path::PathBuf;

use std::time::Duration;

use common::*;
use kiln_sandbox::{uml, CgroupMode, Isolation, LimitHit};

const INSIDE_ENV: &str = "KILN_UML_INSIDE";

#[test]
fn runc_on_cgroup_v2_in_user_mode_linux() {
    if std::env::var_os(INSIDE_ENV).is_some() {
        inside();
        return;
    }
    let inner = boot_uml("runc_on_cgroup_v2_in_user_mode_linux");
    assert!(inner.contains("uml: all checks passed"), "{inner}");
}

/// Boots user-mode-linux with this test binary running `test` inside;
/// returns what it printed. Panics with the reason when it fails.
fn boot_uml(test: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    // Not under /tmp: the kernel mounts its own tmpfs there.
    let tmp = tempfile::Builder::new().prefix("kiln-uml-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path();
    let commands = format!(
        "export {INSIDE_ENV}=1 RUST_BACKTRACE=1\n\
         {exe} --exact {test} --nocapture --test-threads=1 >> {dir}/inner.log 2>&1\n\
         echo $? > {dir}/inner.rc",
        dir = dir.display(),
        exe = exe.display(),
    );
    let run =
        uml::UmlRun { commands: &commands, mem_mb: 768, tmpfs: true, timeout: Duration::from_secs(600) };
    let outcome = uml::boot(dir, &run).unwrap_or_else(|e| panic!("{e}"));
    let inner = std::fs::read_to_string(dir.join("inner.log")).unwrap_or_default();
    let rc = std::fs::read_to_string(dir.join("inner.rc")).unwrap_or_default();
    let tail = outcome.console_tail;
    println!("{inner}");
    assert!(
        outcome.powered_off,
        "user-mode-linux did not power off within 600 s\ninner:\n{inner}\nconsole:\n{tail}"
    );
    assert_eq!(
        rc.trim(),
        "0",
        "the test inside user-mode-linux failed ({rc:?})\ninner:\n{inner}\nconsole:\n{tail}"
    );
    inner
}

fn step(msg: &str) {
    println!("uml: {msg}");
}

fn kiln_cgroups() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup/kiln") else { return Vec::new() };
    rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect()
}

fn inside() {
    let probe = kiln_sandbox::probe_cgroups().unwrap();
    assert_eq!(probe.mode, CgroupMode::V2, "{probe:?}");
    assert!(probe.missing.is_empty(), "{probe:?}");
    let tier = Isolation::Container;
    step(&format!("cgroup {probe:?}; {}", runtime(tier).version().unwrap()));

    let r = run(
        "echo",
        tier,
        "echo hello from $(id -un); i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; exit 7",
    );
    assert_eq!(r.stdout.trim(), "hello from kiln", "{r:?}");
    assert_eq!(r.outcome.exit_code, Some(7), "{r:?}");
    assert_eq!(r.outcome.limit, None, "{r:?}");
    assert!(r.outcome.cpu_seconds > 0.05, "{r:?}");
    assert!(r.outcome.peak_memory_bytes > 0, "{r:?}");
    step(&format!("runc step: {:?}", r.outcome));

    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace_dir(tmp.path());
    let mut oom = spec("oom", tier, "tail /dev/zero", &ws);
    oom.limits.memory_bytes = 48 << 20;
    let r = run_spec(tier, &oom, tmp.path(), Duration::from_secs(120));
    assert_ne!(r.outcome.exit_code, Some(0), "{r:?}");
    assert_eq!(r.outcome.limit, Some(LimitHit::Memory { limit_bytes: 48 << 20 }), "{r:?}");
    step(&format!("memory limit: {:?}", r.outcome));

    let mut bomb = spec("forkbomb", tier, "f(){ f | f & }; f; sleep 20", &ws);
    bomb.limits.pids = 32;
    let r = run_spec(tier, &bomb, tmp.path(), Duration::from_secs(8));
    assert_eq!(r.outcome.limit, Some(LimitHit::Pids { limit: 32 }), "{r:?}");
    step(&format!("fork bomb: {:?}", r.outcome));

    let left = kiln_cgroups();
    assert!(left.is_empty(), "left in /sys/fs/cgroup/kiln: {left:?}");
    step("all checks passed");
}
