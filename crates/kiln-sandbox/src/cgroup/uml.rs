//! The v2 driver against a real kernel whose cgroup2 hierarchy has the
//! memory, pids and cpu controllers, on a host that has none (cgroup v1,
//! or hybrid with every controller bound to v1): Debian's
//! `user-mode-linux` package is a Linux 6.1 kernel that runs as a process.
//! The test boots it with the host's / as its root (hostfs, read-write),
//! cgroup2 mounted at /sys/fs/cgroup, and this same test binary as the
//! thing it runs; inside, the binary sees `KILN_UML_INSIDE` and runs the
//! checks below against the real kernel, then the kernel powers off. The
//! outcome comes back through a file in a temp dir (hostfs).
//!
//! Outside the kernel the test needs only `linux.uml` (`apt-get install
//! user-mode-linux`; scripts/install.sh installs it); when it is missing
//! the test fails and says so.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::cgfs::CgFs;
use super::v2::V2;
use super::*;

const INSIDE_ENV: &str = "KILN_UML_INSIDE";
const TEST_NAME: &str = "cgroup::uml::v2_driver_in_user_mode_linux";

#[test]
fn v2_driver_in_user_mode_linux() {
    if std::env::var_os(INSIDE_ENV).is_some() {
        inside();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let tmp = tempfile::Builder::new().prefix("kiln-uml-").tempdir().unwrap();
    let dir = tmp.path();
    let commands = format!(
        "export {INSIDE_ENV}=1 RUST_BACKTRACE=1\n\
         cd {dir} && {exe} --exact {TEST_NAME} --nocapture --test-threads=1 >> {dir}/inner.log 2>&1\n\
         echo $? > {dir}/inner.rc",
        dir = dir.display(),
        exe = exe.display(),
    );
    let run = crate::uml::UmlRun {
        commands: &commands,
        mem_mb: 384,
        tmpfs: false,
        timeout: Duration::from_secs(300),
    };
    let outcome = crate::uml::boot(dir, &run).unwrap_or_else(|e| panic!("{e}"));
    let inner = std::fs::read_to_string(dir.join("inner.log")).unwrap_or_default();
    let rc = std::fs::read_to_string(dir.join("inner.rc")).unwrap_or_default();
    let tail = outcome.console_tail;
    println!("{inner}");
    assert!(
        outcome.powered_off,
        "user-mode-linux did not power off within 300 s\ninner:\n{inner}\nconsole:\n{tail}"
    );
    assert_eq!(
        rc.trim(),
        "0",
        "the checks inside user-mode-linux failed (exit {rc:?})\ninner:\n{inner}\nconsole:\n{tail}"
    );
    assert!(inner.contains("uml: all checks passed"), "{inner}");
}

fn step(msg: &str) {
    println!("uml: {msg}");
}

fn sh(script: &str) -> Child {
    Command::new("/bin/sh").arg("-c").arg(script).spawn().expect("spawn sh")
}

/// A shell that first moves itself into `cgroup` (a directory), then runs `then`.
fn sh_in(cgroup: &Path, then: &str) -> Child {
    sh(&format!("echo $$ > {}/cgroup.procs && {then}", cgroup.display()))
}

fn wait_signal(mut c: Child) -> Option<i32> {
    c.wait().unwrap().signal()
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// Runs inside user-mode-linux, as the init's child, against the real
/// cgroup2 hierarchy at /sys/fs/cgroup.
fn inside() {
    let root = Path::new(CGROUP_ROOT);
    step(&format!("kernel {}", read("/proc/sys/kernel/osrelease").trim()));
    assert_eq!(detect(root).unwrap(), CgroupMode::V2);
    let probe = probe_cgroups().unwrap();
    assert!(probe.missing.is_empty(), "{probe:?}");
    step(&format!("detected v2, controllers {:?}", probe.v2_controllers));

    let d = V2::new(CgFs::new(root).with_journal());
    d.check().unwrap();

    // Limits: the kernel takes kiln's formats and shows them back.
    let id = "kiln-uml-1";
    let limits = CgroupLimits { memory_bytes: 32 << 20, pids_max: 16, cpu: Some((50_000, 100_000)) };
    let state = d.create(id, &limits).unwrap();
    let p = root.join("kiln").join(id);
    assert_eq!(read(p.join("memory.max")), "33554432\n");
    assert_eq!(read(p.join("pids.max")), "16\n");
    assert_eq!(read(p.join("cpu.max")), "50000 100000\n");
    if p.join("memory.swap.max").exists() {
        assert_eq!(read(p.join("memory.swap.max")), "0\n");
    }
    for dir in [root.to_path_buf(), root.join("kiln"), p.clone()] {
        let on = read(dir.join("cgroup.subtree_control"));
        for c in ["memory", "pids", "cpu"] {
            assert!(on.split_whitespace().any(|x| x == c), "{}: {on:?}", dir.display());
        }
    }
    assert_eq!(
        d.fs().journal(),
        [
            "write cgroup.subtree_control +memory +pids +cpu",
            "mkdir kiln",
            "write kiln/cgroup.subtree_control +memory +pids +cpu",
            "mkdir kiln/kiln-uml-1",
            "write kiln/kiln-uml-1/memory.max 33554432",
            "write kiln/kiln-uml-1/memory.swap.max 0",
            "write kiln/kiln-uml-1/pids.max 16",
            "write kiln/kiln-uml-1/cpu.max 50000 100000",
            "write kiln/kiln-uml-1/cgroup.subtree_control +memory +pids +cpu",
        ]
    );
    step("limits written and read back; controllers enabled top-down");

    let unlimited = "kiln-uml-max";
    d.create(unlimited, &CgroupLimits { memory_bytes: u64::MAX, pids_max: u64::MAX, cpu: None }).unwrap();
    let u = root.join("kiln").join(unlimited);
    assert_eq!(read(u.join("memory.max")), "max\n");
    assert_eq!(read(u.join("pids.max")), "max\n");
    assert_eq!(read(u.join("cpu.max")), "max 100000\n");
    assert_eq!(d.stale("kiln-uml-"), ["kiln-uml-1", "kiln-uml-max"]);
    d.remove(unlimited, Duration::from_secs(5)).unwrap();
    step("`max` for no limit");

    // Errors name the file: a malformed value, a controller this kernel
    // was built without (rdma).
    let e = d.fs().write(Path::new("kiln").join(id).join("memory.max"), "lots").unwrap_err();
    assert!(e.to_string().contains("kiln-uml-1/memory.max"), "{e}");
    let e = d.enable(Path::new("kiln"), &["rdma"]).unwrap_err();
    assert!(e.to_string().contains("kiln/cgroup.subtree_control"), "{e}");
    step(&format!("errors name the file: {e}"));

    // The runtime's leaf, as runc/runsc make it.
    let leaf = p.join(LEAF);
    d.fs().mkdir_all(Path::new("kiln").join(id).join(LEAF)).unwrap();

    // Memory: the limit OOM-kills; the parent counts it after the leaf is gone.
    let hog = sh_in(&leaf, "exec tail /dev/zero");
    assert_eq!(wait_signal(hog), Some(libc::SIGKILL));
    let a = d.accounting(id, &state);
    assert!(a.oom_kills >= 1 && a.mem_failcnt >= 1, "{a:?}");
    assert!(a.peak_memory > 16 << 20 && a.peak_memory <= (32 << 20) + (1 << 20), "{a:?}");
    // runc removes its leaf when `run` returns: the parent's memory.events
    // (hierarchical) still has the kill.
    d.fs().rmdir(Path::new("kiln").join(id).join(LEAF)).unwrap();
    assert_eq!(d.accounting(id, &state).oom_kills, a.oom_kills);
    d.fs().mkdir_all(Path::new("kiln").join(id).join(LEAF)).unwrap();
    step(&format!("OOM kill counted, also after the leaf is gone: {a:?}"));

    // Peak memory afresh: memory.peak cannot be reset before 6.12, so
    // memory.current is sampled from the reset on.
    let peak_write = std::fs::OpenOptions::new().write(true).open(p.join("memory.peak")).and_then(|mut f| {
        use std::io::Write;
        f.write_all(b"0")
    });
    step(&format!("a write to memory.peak: {peak_write:?}"));
    d.reset_peak_memory(id, &state);
    let reset_line = d.fs().journal().last().unwrap().clone();
    let holder = sh_in(&leaf, "x=$(head -c 4000000 /dev/zero | tr '\\0' a); sleep 1; echo ${#x} > /dev/null");
    assert_eq!(holder.wait_with_output().unwrap().status.code(), Some(0));
    let a = d.accounting(id, &state);
    assert!(a.peak_memory >= 3_000_000 && a.peak_memory < 24 << 20, "peak after reset ({reset_line}): {a:?}");
    step(&format!("peak after reset ({reset_line}): {}", a.peak_memory));

    // Pids: forks beyond pids.max fail; the hit shows as peak >= max on the
    // parent, and in the leaf's pids.events while the leaf exists.
    let forker = sh_in(&leaf, "i=0; while [ $i -lt 40 ]; do sleep 3 & i=$((i+1)); done 2>/dev/null; wait");
    let _ = forker.wait_with_output();
    let a = d.accounting(id, &state);
    assert_eq!(a.pids_max, Some(16), "{a:?}");
    assert!(a.pids_peak >= 16, "{a:?}");
    assert!(a.pids_max_events >= 1, "{a:?}");
    step(&format!(
        "pids limit hit: {a:?}; parent pids.events {:?}, leaf pids.events {:?}",
        read(p.join("pids.events")).trim(),
        read(leaf.join("pids.events")).trim()
    ));
    // The sleeps left running die with cgroup.kill.
    assert!(d.kill_all(id) > 0);

    // CPU: usage_usec in ns, and the quota throttles.
    let spin = sh_in(&leaf, "while :; do :; done");
    let start = d.accounting(id, &state).cpu_ns;
    let t = Instant::now();
    while d.accounting(id, &state).cpu_ns < start + 300_000_000 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = d.accounting(id, &state);
    assert!(a.cpu_ns >= start + 300_000_000, "{a:?}");
    let throttled = parse_key(&read(p.join("cpu.stat")), "nr_throttled").unwrap();
    assert!(throttled > 0, "cpu.max 50000 100000 did not throttle: {}", read(p.join("cpu.stat")));
    step(&format!("cpu {} ns after {:?} wall, throttled {throttled} times", a.cpu_ns - start, t.elapsed()));

    // Teardown: tasks in the leaf and below it; rmdir of a populated cgroup
    // is EBUSY; cgroup.kill, then the tree goes leaf first.
    d.fs().mkdir_all(Path::new("kiln").join(id).join(LEAF).join("sub")).unwrap();
    let (a1, b1) = (sh_in(&leaf, "exec sleep 1000"), sh_in(&leaf.join("sub"), "exec sleep 1000"));
    let t = Instant::now();
    while d.pids(id).len() < 3 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.pids(id).len(), 3, "spinner, two sleeps: {:?}", d.pids(id));
    let busy = d.fs().rmdir(Path::new("kiln").join(id).join(LEAF).join("sub")).unwrap_err();
    assert_eq!(busy.raw_os_error(), Some(libc::EBUSY), "{busy}");
    let before = d.fs().journal().len();
    d.remove(id, Duration::from_secs(10)).unwrap();
    assert_eq!(wait_signal(spin), Some(libc::SIGKILL));
    assert_eq!(wait_signal(a1), Some(libc::SIGKILL));
    assert_eq!(wait_signal(b1), Some(libc::SIGKILL));
    let journal = d.fs().journal()[before..].to_vec();
    assert_eq!(journal[0], "write kiln/kiln-uml-1/cgroup.kill 1", "{journal:?}");
    let rmdirs: Vec<&String> = journal.iter().filter(|l| l.starts_with("rmdir")).collect();
    assert_eq!(
        rmdirs,
        ["rmdir kiln/kiln-uml-1/step/sub", "rmdir kiln/kiln-uml-1/step", "rmdir kiln/kiln-uml-1"],
        "{journal:?}"
    );
    assert!(!p.exists());
    step(&format!("teardown by cgroup.kill: {journal:?}"));

    // The same without cgroup.kill (kernels before 5.14): SIGKILL per pid.
    let d = V2::new(CgFs::new(root).with_journal()).without_kill_file();
    let id = "kiln-uml-2";
    let _state = d.create(id, &limits).unwrap();
    let leaf = root.join("kiln").join(id).join(LEAF);
    d.fs().mkdir_all(Path::new("kiln").join(id).join(LEAF)).unwrap();
    let (a2, b2) = (sh_in(&leaf, "exec sleep 1000"), sh_in(&leaf, "exec sleep 1000"));
    let t = Instant::now();
    while d.pids(id).len() < 2 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = d.fs().journal().len();
    d.remove(id, Duration::from_secs(10)).unwrap();
    assert_eq!(wait_signal(a2), Some(libc::SIGKILL));
    assert_eq!(wait_signal(b2), Some(libc::SIGKILL));
    let journal = d.fs().journal()[before..].to_vec();
    assert!(journal[0].starts_with("kill ") && journal[1].starts_with("kill "), "{journal:?}");
    assert!(!root.join("kiln").join(id).exists());
    step(&format!("teardown by SIGKILL per pid: {journal:?}"));

    assert_eq!(d.stale("kiln-uml-"), Vec::<String>::new());
    step("all checks passed");
}
