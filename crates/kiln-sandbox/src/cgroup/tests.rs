//! Both drivers against recorded fakes of a v1 and a v2 host (`fake.rs`:
//! what a plain directory cannot imitate is listed there), and the v2
//! teardown path against this host's real cgroup2 hierarchy.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::cgfs::CgFs;
use super::fake::{self, Kernel};
use super::v1::V1;
use super::v2::V2;
use super::*;

fn limits() -> CgroupLimits {
    // Not the recordings' values (32 MiB / 20 / 50000): a test must see
    // kiln's writes, not what the recording held.
    CgroupLimits { memory_bytes: 64 << 20, pids_max: 100, cpu: Some((150_000, 100_000)) }
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A child that sleeps until killed.
fn sleeper() -> Child {
    Command::new("sleep").arg("1000").spawn().expect("spawn sleep")
}

fn killed_by_sigkill(mut c: Child) -> bool {
    c.wait().expect("wait").signal() == Some(libc::SIGKILL)
}

// ---------------------------------------------------------------- detection

#[test]
fn classify_by_statfs_magic() {
    assert_eq!(classify(CGROUP2_SUPER_MAGIC, None), Some(CgroupMode::V2));
    assert_eq!(classify(CGROUP2_SUPER_MAGIC, Some(TMPFS_MAGIC)), Some(CgroupMode::V2));
    assert_eq!(classify(TMPFS_MAGIC, None), Some(CgroupMode::V1));
    // systemd's hybrid layout: tmpfs + v1 controllers + cgroup2 at unified/.
    assert_eq!(classify(TMPFS_MAGIC, Some(CGROUP2_SUPER_MAGIC)), Some(CgroupMode::Hybrid));
    assert_eq!(classify(TMPFS_MAGIC, Some(CGROUP_SUPER_MAGIC)), Some(CgroupMode::V1));
    assert_eq!(classify(CGROUP_SUPER_MAGIC, None), Some(CgroupMode::V1));
    // ext4: not a cgroup layout.
    assert_eq!(classify(0xef53, None), None);
}

/// What /proc/self/mountinfo says is mounted at `path` (fs type).
fn mounted_fs_type(path: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().rev().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (pre.split(' ').nth(4)? == path).then(|| post.split(' ').next().unwrap_or("").to_string())
    })
}

/// Detection on this machine agrees with its mount table.
#[test]
fn detect_agrees_with_mountinfo() {
    let root_fs = mounted_fs_type(CGROUP_ROOT).expect("nothing is mounted at /sys/fs/cgroup");
    let unified_fs = mounted_fs_type("/sys/fs/cgroup/unified");
    let expected = match (root_fs.as_str(), unified_fs.as_deref()) {
        ("cgroup2", _) => CgroupMode::V2,
        (_, Some("cgroup2")) => CgroupMode::Hybrid,
        _ => CgroupMode::V1,
    };
    assert_eq!(detect(Path::new(CGROUP_ROOT)).unwrap(), expected);
    let probe = probe_cgroups().unwrap();
    assert_eq!(probe.mode, expected);
    if expected == CgroupMode::Hybrid {
        assert!(probe.v2_controllers.is_some(), "{probe:?}");
    }
}

#[test]
fn detect_refuses_what_is_not_a_cgroup_mount() {
    // /proc is procfs: neither layout.
    let err = detect(Path::new("/proc")).unwrap_err().to_string();
    assert!(err.contains("/proc") && err.contains("neither"), "{err}");
    let err = detect(Path::new("/nonexistent/cgroup")).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/cgroup"), "{err}");
}

// ----------------------------------------------------------------------- v1

/// Today's v1 behaviour, pinned: which files, in which order, what values.
#[test]
fn v1_create_writes_the_limits_to_the_parents() {
    let (dir, fs) = fake::v1_host();
    let d = V1::new(fs);
    d.check().unwrap();
    let state = d.create("kiln-t1", &limits()).unwrap();
    assert!(matches!(state, StepState::V1(_)));
    let mut journal = d.fs().journal();
    // The eventfd registration names descriptor numbers.
    let efd = journal
        .iter()
        .position(|l| l.starts_with("write memory/kiln/kiln-t1/cgroup.event_control "))
        .unwrap();
    let fds: Vec<u32> = journal[efd].rsplitn(3, ' ').take(2).map(|n| n.parse().unwrap()).collect();
    assert_eq!(fds.len(), 2, "{}", journal[efd]);
    journal[efd] = "write memory/kiln/kiln-t1/cgroup.event_control <eventfd> <oom_control fd>".into();
    assert_eq!(
        journal,
        [
            "mkdir memory/kiln",
            "mkdir memory/kiln/kiln-t1",
            "mkdir pids/kiln",
            "mkdir pids/kiln/kiln-t1",
            "mkdir cpu/kiln",
            "mkdir cpu/kiln/kiln-t1",
            "mkdir cpuacct/kiln",
            "mkdir cpuacct/kiln/kiln-t1",
            "write memory/kiln/kiln-t1/memory.limit_in_bytes 67108864",
            "write memory/kiln/kiln-t1/memory.memsw.limit_in_bytes 67108864",
            "write memory/kiln/kiln-t1/memory.swappiness 0",
            "write memory/kiln/kiln-t1/cgroup.event_control <eventfd> <oom_control fd>",
            "write pids/kiln/kiln-t1/pids.max 100",
            "write cpu/kiln/kiln-t1/cpu.cfs_period_us 100000",
            "write cpu/kiln/kiln-t1/cpu.cfs_quota_us 150000",
        ]
    );
    let root = dir.path();
    assert_eq!(read(root, "memory/kiln/kiln-t1/memory.limit_in_bytes"), "67108864");
    assert_eq!(read(root, "pids/kiln/kiln-t1/pids.max"), "100");
    assert_eq!(read(root, "cpu/kiln/kiln-t1/cpu.cfs_quota_us"), "150000");
    assert_eq!(d.dir("kiln-t1", "memory"), root.join("memory/kiln/kiln-t1"));
}

#[test]
fn v1_without_cpu_quota_leaves_the_cpu_files_alone() {
    let (dir, fs) = fake::v1_host();
    let d = V1::new(fs);
    d.create("kiln-t1", &CgroupLimits { cpu: None, ..limits() }).unwrap();
    assert!(!d.fs().journal().iter().any(|l| l.contains("cpu.cfs")));
    assert_eq!(read(dir.path(), "cpu/kiln/kiln-t1/cpu.cfs_quota_us"), "-1\n");
}

/// The recorded counters of a parent whose step was OOM-killed, hit its
/// pids limit and burnt CPU (v1 counts the events in the leaf).
#[test]
fn v1_accounting_from_recorded_counters() {
    let (dir, fs) = fake::v1_host();
    let d = V1::new(fs);
    let state = d.create("kiln-t1", &limits()).unwrap();
    for c in ["memory", "pids"] {
        d.fs().mkdir_all(format!("{c}/kiln/kiln-t1/step")).unwrap();
    }
    let root = dir.path();
    for c in ["memory", "pids", "cpu", "cpuacct"] {
        fake::load(root, format!("{c}/kiln/kiln-t1"), &format!("v1-{c}-used"));
    }
    fake::load(root, "memory/kiln/kiln-t1/step", "v1-memory-leaf-used");
    fake::load(root, "pids/kiln/kiln-t1/step", "v1-pids-leaf-used");
    let a = d.accounting("kiln-t1", &state);
    assert_eq!(
        a,
        Accounting {
            cpu_ns: 363_350_600,
            peak_memory: 33_554_432,
            mem_failcnt: 0,
            oom_kills: 1,
            pids_max_events: 1,
            pids_peak: 20,
            pids_max: Some(20),
        }
    );
    // Once the runtime removed the leaf, the pids hit is still visible as
    // peak >= max (what Sandbox::finish classifies with).
    d.fs().rmdir("pids/kiln/kiln-t1/step").unwrap();
    let a = d.accounting("kiln-t1", &state);
    assert_eq!((a.pids_max_events, a.pids_peak, a.pids_max), (0, 20, Some(20)));
}

#[test]
fn v1_reset_peak_writes_zero() {
    let (_dir, fs) = fake::v1_host();
    let d = V1::new(fs);
    let state = d.create("kiln-t1", &limits()).unwrap();
    d.reset_peak_memory("kiln-t1", &state);
    assert_eq!(d.fs().journal().last().unwrap(), "write memory/kiln/kiln-t1/memory.max_usage_in_bytes 0");
}

/// Tasks are killed before anything is removed; in every hierarchy (the
/// runtime's leaf also exists in named and unified ones) the leaf goes
/// before the parent.
#[test]
fn v1_teardown_kills_then_removes_leaf_first() {
    let (dir, fs) = fake::v1_host();
    let d = V1::new(fs);
    d.create("kiln-t1", &limits()).unwrap();
    for h in fake::V1_HIERARCHIES {
        d.fs().mkdir_all(format!("{h}/kiln/kiln-t1/step")).unwrap();
    }
    let child = sleeper();
    let pid = child.id() as i32;
    std::fs::write(dir.path().join("memory/kiln/kiln-t1/step/cgroup.procs"), format!("{pid}\n")).unwrap();
    std::fs::write(dir.path().join("unified/kiln/kiln-t1/step/cgroup.procs"), format!("{pid}\n")).unwrap();
    assert_eq!(d.pids("kiln-t1"), [pid]);
    let before = d.fs().journal().len();
    d.remove("kiln-t1", Duration::from_secs(5)).unwrap();
    assert!(killed_by_sigkill(child));
    let journal = d.fs().journal()[before..].to_vec();
    assert_eq!(journal[0], format!("kill {pid}"));
    for h in fake::V1_HIERARCHIES {
        let leaf = journal.iter().position(|l| *l == format!("rmdir {h}/kiln/kiln-t1/step")).unwrap();
        let parent = journal.iter().position(|l| *l == format!("rmdir {h}/kiln/kiln-t1")).unwrap();
        assert!(leaf < parent, "{journal:?}");
        assert!(!dir.path().join(h).join("kiln/kiln-t1").exists());
        // kiln's own directory stays.
        assert!(
            dir.path().join(h).join("kiln").exists() || !["memory", "pids", "cpu", "cpuacct"].contains(&h)
        );
    }
}

#[test]
fn v1_stale_cgroups_by_prefix() {
    let (_dir, fs) = fake::v1_host();
    let d = V1::new(fs);
    for id in ["kiln-a-1", "kiln-a-2", "kiln-b-1"] {
        d.create(id, &limits()).unwrap();
    }
    // Left only in a hierarchy the runtime made it in.
    d.fs().mkdir_all("systemd/kiln/kiln-a-3/step").unwrap();
    assert_eq!(d.stale("kiln-a-"), ["kiln-a-1", "kiln-a-2", "kiln-a-3"]);
    assert_eq!(d.stale("kiln-c-"), Vec::<String>::new());
}

#[test]
fn v1_check_names_the_missing_controller() {
    let (dir, fs) = fake::v1_host();
    std::fs::remove_file(dir.path().join("pids/tasks")).unwrap();
    let d = V1::new(fs);
    let err = d.check().unwrap_err().to_string();
    assert!(err.contains("`pids`") && err.contains(&dir.path().join("pids").display().to_string()), "{err}");
    let err = d.create("kiln-t1", &limits()).unwrap_err().to_string();
    assert!(err.contains("`pids`"), "{err}");
}

// ----------------------------------------------------------------------- v2

fn v2(lacks: &[&'static str]) -> (tempfile::TempDir, V2) {
    let (dir, fs) = fake::v2_host(lacks);
    (dir, V2::new(fs))
}

/// Controllers are enabled in each parent before its child is made (so
/// the child has memory.max & co.), then the limits are written.
#[test]
fn v2_create_enables_controllers_top_down_then_writes_limits() {
    let (dir, d) = v2(&[]);
    d.check().unwrap();
    let state = d.create("kiln-t2", &limits()).unwrap();
    assert!(matches!(state, StepState::V2(_)));
    assert_eq!(
        d.fs().journal(),
        [
            "write cgroup.subtree_control +memory +pids +cpu",
            "mkdir kiln",
            "write kiln/cgroup.subtree_control +memory +pids +cpu",
            "mkdir kiln/kiln-t2",
            "write kiln/kiln-t2/memory.max 67108864",
            "write kiln/kiln-t2/memory.swap.max 0",
            "write kiln/kiln-t2/pids.max 100",
            "write kiln/kiln-t2/cpu.max 150000 100000",
            "write kiln/kiln-t2/cgroup.subtree_control +memory +pids +cpu",
        ]
    );
    let root = dir.path();
    assert_eq!(read(root, "kiln/kiln-t2/memory.max"), "67108864");
    assert_eq!(read(root, "kiln/kiln-t2/cpu.max"), "150000 100000");
    assert_eq!(d.dir("kiln-t2", "memory"), root.join("kiln/kiln-t2"));
    assert_eq!(d.dir("kiln-t2", "pids"), root.join("kiln/kiln-t2"));
}

#[test]
fn v2_no_limit_is_max() {
    let (dir, d) = v2(&[]);
    d.create("kiln-t2", &CgroupLimits { memory_bytes: u64::MAX, pids_max: u64::MAX, cpu: None }).unwrap();
    let root = dir.path();
    assert_eq!(read(root, "kiln/kiln-t2/memory.max"), "max");
    assert_eq!(read(root, "kiln/kiln-t2/pids.max"), "max");
    assert_eq!(read(root, "kiln/kiln-t2/cpu.max"), "max");
}

/// A systemd host has the controllers on at the root already: kiln does
/// not write there; nor in `kiln` for the second step.
#[test]
fn v2_enables_only_what_is_off() {
    let (dir, d) = v2(&[]);
    std::fs::write(dir.path().join("cgroup.subtree_control"), "cpuset cpu io memory pids\n").unwrap();
    d.create("kiln-t2", &limits()).unwrap();
    d.create("kiln-t3", &limits()).unwrap();
    let subtree: Vec<String> =
        d.fs().journal().into_iter().filter(|l| l.contains("cgroup.subtree_control")).collect();
    assert_eq!(
        subtree,
        [
            "write kiln/cgroup.subtree_control +memory +pids +cpu",
            "write kiln/kiln-t2/cgroup.subtree_control +memory +pids +cpu",
            "write kiln/kiln-t3/cgroup.subtree_control +memory +pids +cpu",
        ]
    );
}

/// Without memory enabled in the parent, the child has no memory.max: the
/// write fails and the error names the file.
#[test]
fn v2_errors_name_the_file() {
    let (dir, d) = v2(&["memory.max"]);
    let err = d.create("kiln-t2", &limits()).unwrap_err();
    match &err {
        SandboxError::Cgroup { path, source } => {
            assert_eq!(path, &dir.path().join("kiln/kiln-t2/memory.max"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("kiln/kiln-t2/memory.max"), "{err}");
}

#[test]
fn v2_check_names_missing_controllers() {
    let (dir, d) = v2(&[]);
    // As on a hybrid host's unified hierarchy: controllers bound to v1.
    std::fs::write(dir.path().join("cgroup.controllers"), "hugetlb\n").unwrap();
    let err = d.check().unwrap_err().to_string();
    assert!(err.contains("memory, pids, cpu") && err.contains("cgroup.controllers"), "{err}");
    assert!(d.create("kiln-t2", &limits()).is_err());
    assert!(d.fs().journal().is_empty(), "nothing may be written after a failed check");
    let probe = probe_cgroups_at(dir.path());
    // A temp dir is no cgroup2 mount: detection says so.
    assert!(probe.is_err() || probe.unwrap().mode != CgroupMode::V2);
}

/// The recorded counters of a parent whose step was OOM-killed, hit its
/// pids limit (counted in the leaf on 6.1) and was CPU-throttled.
#[test]
fn v2_accounting_from_recorded_counters() {
    let (dir, d) = v2(&[]);
    let state = d.create("kiln-t2", &limits()).unwrap();
    d.fs().mkdir_all("kiln/kiln-t2/step").unwrap();
    fake::load(dir.path(), "kiln/kiln-t2", "v2-parent-used");
    fake::load(dir.path(), "kiln/kiln-t2/step", "v2-leaf-used");
    let a = d.accounting("kiln-t2", &state);
    assert_eq!(
        a,
        Accounting {
            cpu_ns: 1_170_000_000,
            peak_memory: 33_554_432,
            mem_failcnt: 69,
            oom_kills: 1,
            pids_max_events: 1,
            pids_peak: 20,
            pids_max: Some(20),
        }
    );
    // The runtime removed its leaf: the OOM kill is still counted
    // (memory.events is hierarchical), the pids hit is peak >= max.
    d.fs().rmdir("kiln/kiln-t2/step").unwrap();
    let a = d.accounting("kiln-t2", &state);
    assert_eq!((a.oom_kills, a.pids_max_events, a.pids_peak, a.pids_max), (1, 0, 20, Some(20)));
}

/// A kernel without memory.peak (before 5.19): the peak of memory.current
/// as sampled.
#[test]
fn v2_peak_memory_sampled_without_memory_peak() {
    let (dir, d) = v2(&["memory.peak"]);
    let current = dir.path().join("kiln/kiln-t2/memory.current");
    let state = d.create("kiln-t2", &limits()).unwrap();
    std::fs::write(&current, "5000000\n").unwrap();
    let seen = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        d.accounting("kiln-t2", &state).peak_memory == 5_000_000
    });
    assert!(seen);
    // Back down: the peak stays.
    std::fs::write(&current, "4096\n").unwrap();
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(d.accounting("kiln-t2", &state).peak_memory, 5_000_000);
    // A reset starts from what is in use now.
    d.reset_peak_memory("kiln-t2", &state);
    assert_eq!(d.accounting("kiln-t2", &state).peak_memory, 4096);
    assert_eq!(d.fs().journal().last().unwrap(), "reset kiln/kiln-t2/memory.current (sampled)");
}

/// With memory.peak, reads go through the descriptor opened at creation
/// and a reset is a write to it (the kernel's per-descriptor reset,
/// Linux 6.12+, is not something a fake file can show).
#[test]
fn v2_peak_memory_read_through_one_descriptor() {
    let (dir, d) = v2(&[]);
    let state = d.create("kiln-t2", &limits()).unwrap();
    std::fs::write(dir.path().join("kiln/kiln-t2/memory.peak"), "7340032\n").unwrap();
    assert_eq!(d.accounting("kiln-t2", &state).peak_memory, 7_340_032);
    d.reset_peak_memory("kiln-t2", &state);
    assert_eq!(d.fs().journal().last().unwrap(), "reset kiln/kiln-t2/memory.peak");
}

/// cgroup.kill (5.14+) first, then the directories, deepest first.
#[test]
fn v2_teardown_by_cgroup_kill_then_rmdir_leaf_first() {
    let (dir, d) = v2(&[]);
    d.create("kiln-t2", &limits()).unwrap();
    d.fs().mkdir_all("kiln/kiln-t2/step/sub").unwrap();
    // A fake cgroup.kill kills nothing: the pid listed is our own child,
    // killed by the test afterwards.
    let mut child = sleeper();
    std::fs::write(dir.path().join("kiln/kiln-t2/step/cgroup.procs"), format!("{}\n", child.id())).unwrap();
    let before = d.fs().journal().len();
    d.remove("kiln-t2", Duration::from_secs(5)).unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(
        d.fs().journal()[before..],
        [
            "write kiln/kiln-t2/cgroup.kill 1",
            "rmdir kiln/kiln-t2/step/sub",
            "rmdir kiln/kiln-t2/step",
            "rmdir kiln/kiln-t2",
        ]
    );
    assert!(!dir.path().join("kiln/kiln-t2").exists());
    assert!(dir.path().join("kiln").exists());
}

/// Before 5.14 there is no cgroup.kill: every pid listed is SIGKILLed.
#[test]
fn v2_teardown_without_cgroup_kill_signals_each_pid() {
    let (dir, d) = v2(&["cgroup.kill"]);
    d.create("kiln-t2", &limits()).unwrap();
    d.fs().mkdir_all("kiln/kiln-t2/step/sub").unwrap();
    let (a, b) = (sleeper(), sleeper());
    let (pa, pb) = (a.id() as i32, b.id() as i32);
    std::fs::write(dir.path().join("kiln/kiln-t2/step/cgroup.procs"), format!("{pa}\n")).unwrap();
    std::fs::write(dir.path().join("kiln/kiln-t2/step/sub/cgroup.procs"), format!("{pb}\n")).unwrap();
    let mut pids = vec![pa, pb];
    pids.sort_unstable();
    assert_eq!(d.pids("kiln-t2"), pids);
    let before = d.fs().journal().len();
    d.remove("kiln-t2", Duration::from_secs(5)).unwrap();
    assert!(killed_by_sigkill(a) && killed_by_sigkill(b));
    let journal = d.fs().journal()[before..].to_vec();
    assert_eq!(
        journal,
        [
            format!("kill {}", pids[0]),
            format!("kill {}", pids[1]),
            "rmdir kiln/kiln-t2/step/sub".into(),
            "rmdir kiln/kiln-t2/step".into(),
            "rmdir kiln/kiln-t2".into(),
        ]
    );
}

#[test]
fn v2_stale_cgroups_by_prefix() {
    let (_dir, d) = v2(&[]);
    for id in ["kiln-a-1", "kiln-b-1", "kiln-a-2"] {
        d.create(id, &limits()).unwrap();
    }
    assert_eq!(d.stale("kiln-a-"), ["kiln-a-1", "kiln-a-2"]);
    d.remove("kiln-a-1", Duration::from_secs(1)).unwrap();
    assert_eq!(d.stale("kiln-a-"), ["kiln-a-2"]);
}

#[test]
fn cgroups_path_is_the_same_on_both() {
    let (_d1, fs1) = fake::v1_host();
    let (_d2, fs2) = fake::v2_host(&[]);
    let drivers: [Arc<dyn CgroupDriver>; 2] = [Arc::new(V1::new(fs1)), Arc::new(V2::new(fs2))];
    for d in drivers {
        assert_eq!(StepCgroups::new(d, "kiln-x").cgroups_path(), "/kiln/kiln-x/step");
    }
}

#[test]
fn recordings_parse() {
    let r = fake::recording("v2-parent-used");
    assert_eq!(r.get("memory.events").unwrap().lines().count(), 6);
    assert_eq!(r.get("cgroup.kill"), None, "write-only");
    assert!(r.0.iter().any(|(n, _)| n == "cgroup.kill"));
    let r = fake::recording("v1-memory-leaf-used");
    assert_eq!(parse_key(r.get("memory.oom_control").unwrap(), "oom_kill"), Some(1));
    let _ = Kernel::V1;
}

// --------------------------------------------- the real cgroup2 of this host

fn require_root() {
    assert_eq!(
        crate::sys::euid(),
        0,
        "this test moves processes between real cgroups and needs root (euid 0); run it as root"
    );
}

/// The first cgroup2 mount point (/sys/fs/cgroup on a v2 host,
/// /sys/fs/cgroup/unified on a hybrid one).
fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            post.starts_with("cgroup2 ").then(|| PathBuf::from(pre.split(' ').nth(4).unwrap()))
        })
        .expect(
            "no cgroup2 hierarchy is mounted on this host (neither /sys/fs/cgroup nor \
             /sys/fs/cgroup/unified); this test needs one: mount -t cgroup2 none /sys/fs/cgroup/unified",
        )
}

fn move_into(d: &V2, rel: &str, child: &Child) {
    d.fs().write(Path::new(rel).join("cgroup.procs"), &child.id().to_string()).unwrap();
}

/// The v2 teardown path on this host's real cgroup2 hierarchy (on a
/// hybrid host it has no memory/pids/cpu controller, but cgroup.procs,
/// cgroup.events, cgroup.kill, rmdir's EBUSY and cpu.stat are the
/// kernel's own): tasks below kiln's parent are found, rmdir of a
/// populated cgroup fails, cgroup.kill (and, without it, SIGKILL per pid)
/// ends them, and the tree goes leaf first.
#[test]
fn real_v2_teardown_on_this_hosts_cgroup2() {
    require_root();
    let root = cgroup2_mount();
    let have = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap();
    for (n, kill_file) in [(1, true), (2, false)] {
        let id = format!("kiln-cgtest-{}-{n}", std::process::id());
        let mut d = V2::new(CgFs::new(&root).with_journal());
        if !kill_file {
            d = d.without_kill_file();
        }
        let all = CONTROLLERS_V2.iter().all(|c| have.split_whitespace().any(|h| h == *c));
        assert_eq!(d.check().is_ok(), all, "check() vs cgroup.controllers {have:?}");
        let p = format!("kiln/{id}");
        d.fs().mkdir_all(format!("{p}/step/sub")).unwrap();
        let (a, b, spin) =
            (sleeper(), sleeper(), Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap());
        move_into(&d, &format!("{p}/step"), &a);
        move_into(&d, &format!("{p}/step/sub"), &b);
        move_into(&d, &format!("{p}/step"), &spin);
        let mut pids = vec![a.id() as i32, b.id() as i32, spin.id() as i32];
        pids.sort_unstable();
        assert_eq!(d.pids(&id), pids);
        assert_eq!(d.fs().read_key(format!("{p}/cgroup.events"), "populated"), Some(1));
        // The kernel refuses to remove a populated cgroup (a fake cannot).
        let busy = d.fs().rmdir(format!("{p}/step/sub")).unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(libc::EBUSY), "{busy}");
        // cpu.stat's usage_usec is core (no cpu controller needed) and
        // hierarchical: the spinning shell shows up in kiln's parent.
        let used = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            d.accounting(&id, &StepState::None).cpu_ns >= 50_000_000
        });
        assert!(used, "cpu.stat of {p}: {:?}", d.fs().read(format!("{p}/cpu.stat")));
        let before = d.fs().journal().len();
        d.remove(&id, Duration::from_secs(10)).unwrap();
        assert!(killed_by_sigkill(a) && killed_by_sigkill(b) && killed_by_sigkill(spin));
        assert!(!root.join(&p).exists());
        let journal = d.fs().journal()[before..].to_vec();
        let first_rmdir = journal.iter().position(|l| l.starts_with("rmdir")).unwrap();
        if kill_file && root.join("kiln").join("cgroup.kill").exists() {
            assert_eq!(journal[0], format!("write {p}/cgroup.kill 1"), "{journal:?}");
        } else {
            let kills: Vec<String> = pids.iter().map(|p| format!("kill {p}")).collect();
            assert_eq!(journal[..3], kills[..], "{journal:?}");
        }
        assert_eq!(
            journal[first_rmdir..].iter().filter(|l| l.starts_with("rmdir")).cloned().collect::<Vec<_>>(),
            [format!("rmdir {p}/step/sub"), format!("rmdir {p}/step"), format!("rmdir {p}")],
            "{journal:?}"
        );
    }
}

use super::v2::CONTROLLERS as CONTROLLERS_V2;
