//! kiln's own cgroup v1 parents for one step.
//!
//! Layout (absolute paths in every hierarchy, independent of where the engine
//! process itself lives — on this host the engine's memory cgroup is nested
//! under `/process_api/<hash>`, the others are at `/`):
//!
//! ```text
//! /sys/fs/cgroup/<ctrl>/kiln/<id>        kiln's parent: limits + accounting
//! /sys/fs/cgroup/<ctrl>/kiln/<id>/step   linux.cgroupsPath = "/kiln/<id>/step"
//! ```
//!
//! Both runc and runsc interpret an absolute `cgroupsPath` relative to the
//! hierarchy root and put every host task of the sandbox there (checked: for
//! runsc the sentry, its Go threads and the systrap stub processes all land in
//! `.../kiln/<id>/step` of memory, pids, cpu and cpuacct). The limits are written to
//! the parent, so the runtime deleting (runc) or keeping (runsc) `step` does not
//! lose them, and the parent's hierarchical counters (cpuacct.usage,
//! memory.max_usage_in_bytes, memory.failcnt, pids.peak) survive until `remove`.
//!
//! Caveat found by experiment: in cgroup v1 `pids.events` and
//! `memory.oom_control: oom_kill` are counted in the *leaf* cgroup (the one
//! doing the fork / holding the victim), not in the ancestor whose limit was
//! hit; runc deletes that leaf when `runc run` returns. So pids hits are
//! detected from the parent's `pids.peak >= pids.max` (plus leaf events while
//! the leaf still exists). Memory hits: `memory.failcnt` of the parent did
//! not move on this 6.18 kernel even when its limit OOM-killed a task, so an
//! eventfd is registered on the parent's `memory.oom_control` via
//! `cgroup.event_control` (v1 notifies the memcg whose limit triggered the
//! OOM); its counter is read in `accounting`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Result, SandboxError};
use crate::sys;

pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Controllers kiln creates parents in (limits + accounting).
pub(crate) const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];
/// Name of the runtime-owned child below kiln's parent.
pub(crate) const LEAF: &str = "step";

/// Limits as written to kiln's parent cgroups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids_max: u64,
    /// (quota, period) in microseconds.
    pub cpu: Option<(u64, u64)>,
}

/// Counters read back from the parent (and the leaf if it still exists).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Accounting {
    pub cpu_ns: u64,
    pub peak_memory: u64,
    pub mem_failcnt: u64,
    pub oom_kills: u64,
    pub pids_max_events: u64,
    pub pids_peak: u64,
    pub pids_max: Option<u64>,
}

/// kiln's cgroup parents for one sandbox id.
#[derive(Debug)]
pub(crate) struct StepCgroups {
    id: String,
    /// eventfd registered for OOM notifications of kiln's memory parent
    /// (v1 notifies the memcg whose limit triggered the OOM, i.e. the parent,
    /// even though `oom_kill` is counted on the victim's leaf cgroup).
    oom_events: Option<std::fs::File>,
}

fn cg_err(path: &Path) -> impl FnOnce(io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Cgroup { path: path.to_path_buf(), source }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(cg_err(path))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` line of a flat-keyed cgroup file.
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Checks that the cgroup v1 controllers kiln needs are mounted.
pub(crate) fn check_host() -> Result<()> {
    for c in CONTROLLERS {
        let root = Path::new(CGROUP_ROOT).join(c);
        if !root.join("tasks").exists() {
            return Err(SandboxError::Host(format!(
                "cgroup v1 controller `{c}` is not mounted at {} (kiln-sandbox needs cgroup v1 memory, pids, cpu, cpuacct)",
                root.display()
            )));
        }
    }
    Ok(())
}

/// Every mounted hierarchy (v1 controllers, named hierarchies, unified).
fn hierarchies() -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(CGROUP_ROOT) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.join("cgroup.procs").exists()).collect()
}

/// All cgroup directories at and below `dir`, deepest first.
fn subtree(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                subtree(&e.path(), out);
            }
        }
    }
    if dir.is_dir() {
        out.push(dir.to_path_buf());
    }
}

impl StepCgroups {
    pub(crate) fn new(id: &str) -> Self {
        StepCgroups { id: id.to_string(), oom_events: None }
    }

    /// `linux.cgroupsPath` for the runtime.
    pub(crate) fn cgroups_path(&self) -> String {
        format!("/kiln/{}/{LEAF}", self.id)
    }

    /// kiln's parent directory in one hierarchy.
    pub(crate) fn dir(&self, hierarchy: &str) -> PathBuf {
        Path::new(CGROUP_ROOT).join(hierarchy).join("kiln").join(&self.id)
    }

    /// Creates the parents in memory, pids, cpu, cpuacct and writes the limits.
    pub(crate) fn create(&mut self, limits: &CgroupLimits) -> Result<()> {
        check_host()?;
        for c in CONTROLLERS {
            let dir = self.dir(c);
            fs::create_dir_all(&dir).map_err(cg_err(&dir))?;
        }
        let mem = self.dir("memory");
        write(&mem.join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            // No swap: memory+swap limit equals the memory limit.
            write(&memsw, &limits.memory_bytes.to_string())?;
        }
        let _ = fs::write(mem.join("memory.swappiness"), "0");
        self.oom_events = Some(register_oom_eventfd(&mem)?);
        let pids = self.dir("pids");
        write(&pids.join("pids.max"), &limits.pids_max.to_string())?;
        if let Some((quota, period)) = limits.cpu {
            let cpu = self.dir("cpu");
            write(&cpu.join("cpu.cfs_period_us"), &period.to_string())?;
            write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        Ok(())
    }

    /// Reads the parent's (and surviving leaf's) counters.
    pub(crate) fn accounting(&self) -> Accounting {
        let mem = self.dir("memory");
        let pids = self.dir("pids");
        let leaf_mem = mem.join(LEAF);
        let leaf_pids = pids.join(LEAF);
        let notified = self.oom_events.as_ref().map_or(0, read_eventfd);
        let failcnt = read_u64(&mem.join("memory.failcnt")).unwrap_or(0)
            + read_u64(&mem.join("memory.memsw.failcnt")).unwrap_or(0);
        let oom_kills = read_key(&mem.join("memory.oom_control"), "oom_kill").unwrap_or(0)
            + notified
            + read_key(&leaf_mem.join("memory.oom_control"), "oom_kill").unwrap_or(0);
        let pids_events = read_key(&pids.join("pids.events"), "max").unwrap_or(0)
            + read_key(&leaf_pids.join("pids.events"), "max").unwrap_or(0);
        Accounting {
            cpu_ns: read_u64(&self.dir("cpuacct").join("cpuacct.usage")).unwrap_or(0),
            peak_memory: read_u64(&mem.join("memory.max_usage_in_bytes")).unwrap_or(0),
            mem_failcnt: failcnt,
            oom_kills,
            pids_max_events: pids_events,
            pids_peak: read_u64(&pids.join("pids.peak")).unwrap_or(0),
            pids_max: read_u64(&pids.join("pids.max")),
        }
    }

    /// Resets the memory high-water mark (cgroup v1: writing 0 to
    /// `memory.max_usage_in_bytes`); best effort.
    pub(crate) fn reset_peak_memory(&self) {
        let _ = fs::write(self.dir("memory").join("memory.max_usage_in_bytes"), "0");
    }

    /// Host pids of every task below kiln's parents (all hierarchies).
    pub(crate) fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for h in hierarchies() {
            let mut dirs = Vec::new();
            subtree(&h.join("kiln").join(&self.id), &mut dirs);
            for d in dirs {
                if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
                    out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// SIGKILLs every task in the cgroups; returns how many were signalled.
    pub(crate) fn kill_all(&self) -> usize {
        let pids = self.pids();
        for &p in &pids {
            let _ = sys::sigkill(p);
        }
        pids.len()
    }

    /// Kills remaining tasks and removes kiln's cgroups (and anything the
    /// runtime left below them) in every hierarchy, retrying for a while.
    pub(crate) fn remove(&self) -> Result<()> {
        remove_tree(&self.id, Duration::from_secs(5))
    }
}

/// Registers an eventfd on `memory.oom_control` of `mem` via cgroup.event_control.
fn register_oom_eventfd(mem: &Path) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let ctl = mem.join("cgroup.event_control");
    let efd = sys::eventfd().map_err(cg_err(&ctl))?;
    let oom = mem.join("memory.oom_control");
    let oom_file = fs::File::open(&oom).map_err(cg_err(&oom))?;
    write(&ctl, &format!("{} {}", efd.as_raw_fd(), oom_file.as_raw_fd()))?;
    Ok(fs::File::from(efd))
}

/// Non-blocking read of an eventfd counter (0 when nothing was signalled).
fn read_eventfd(f: &fs::File) -> u64 {
    use std::io::Read;
    let mut buf = [0u8; 8];
    match (&*f).read(&mut buf) {
        Ok(8) => u64::from_ne_bytes(buf),
        _ => 0,
    }
}

/// Removes `kiln/<name>` in every hierarchy, killing its tasks first.
pub(crate) fn remove_tree(name: &str, timeout: Duration) -> Result<()> {
    let cg = StepCgroups::new(name);
    let deadline = Instant::now() + timeout;
    loop {
        cg.kill_all();
        let mut last_err = None;
        for h in hierarchies() {
            let mut dirs = Vec::new();
            subtree(&h.join("kiln").join(name), &mut dirs);
            for d in dirs {
                if let Err(e) = fs::remove_dir(&d) {
                    if e.kind() != io::ErrorKind::NotFound {
                        last_err = Some((d, e));
                    }
                }
            }
        }
        match last_err {
            None => return Ok(()),
            Some((path, source)) if Instant::now() >= deadline => {
                return Err(SandboxError::Cgroup { path, source })
            }
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Names of kiln cgroups (in any hierarchy) starting with `prefix`.
pub(crate) fn stale(prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for h in hierarchies() {
        if let Ok(rd) = fs::read_dir(h.join("kiln")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(prefix) && e.path().is_dir() {
                    names.push(n);
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}
