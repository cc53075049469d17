//! cgroup v1 (and the controllers of a hybrid host): one hierarchy per
//! controller, kiln's parent `<ctrl>/kiln/<id>` in memory, pids, cpu and
//! cpuacct.
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
//! OOM); its counter is read in `accounting`. (`testdata/v1-*.txt` are
//! recordings of such a parent and leaf.)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cgfs::CgFs;
use super::{Accounting, CgroupDriver, CgroupLimits, StepState, KILN, LEAF};
use crate::error::{Result, SandboxError};
use crate::sys;

/// Controllers kiln creates parents in (limits + accounting).
pub(crate) const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];

/// What v1 keeps per step.
#[derive(Debug)]
pub(crate) struct State {
    /// eventfd registered for OOM notifications of kiln's memory parent
    /// (v1 notifies the memcg whose limit triggered the OOM, i.e. the parent,
    /// even though `oom_kill` is counted on the victim's leaf cgroup).
    oom_events: File,
}

#[derive(Debug)]
pub(crate) struct V1 {
    fs: CgFs,
}

impl V1 {
    pub(crate) fn new(fs: CgFs) -> V1 {
        V1 { fs }
    }

    #[cfg(test)]
    pub(crate) fn fs(&self) -> &CgFs {
        &self.fs
    }

    /// `<ctrl>/kiln/<id>`, relative to the root.
    fn rel(&self, id: &str, controller: &str) -> PathBuf {
        Path::new(controller).join(KILN).join(id)
    }

    /// Every mounted hierarchy (v1 controllers, named hierarchies, the
    /// hybrid's unified one): the runtime creates its leaf in all of them.
    fn hierarchies(&self) -> Vec<String> {
        self.fs
            .subdirs("")
            .into_iter()
            .filter(|h| self.fs.exists(Path::new(h).join("cgroup.procs")))
            .collect()
    }

    /// Registers an eventfd on `memory.oom_control` of `mem` via cgroup.event_control.
    fn register_oom_eventfd(&self, mem: &Path) -> Result<File> {
        use std::os::fd::AsRawFd;
        let ctl = mem.join("cgroup.event_control");
        let efd =
            sys::eventfd().map_err(|source| SandboxError::Cgroup { path: self.fs.path(&ctl), source })?;
        let oom = mem.join("memory.oom_control");
        let oom_file = self
            .fs
            .open(&oom, false)
            .map_err(|source| SandboxError::Cgroup { path: self.fs.path(&oom), source })?;
        self.fs.write(&ctl, &format!("{} {}", efd.as_raw_fd(), oom_file.as_raw_fd()))?;
        Ok(File::from(efd))
    }
}

/// Non-blocking read of an eventfd counter (0 when nothing was signalled).
fn read_eventfd(f: &File) -> u64 {
    use std::io::Read;
    let mut buf = [0u8; 8];
    match (&*f).read(&mut buf) {
        Ok(8) => u64::from_ne_bytes(buf),
        _ => 0,
    }
}

impl CgroupDriver for V1 {
    fn check(&self) -> Result<()> {
        for c in CONTROLLERS {
            if !self.fs.exists(Path::new(c).join("tasks")) {
                return Err(SandboxError::Host(format!(
                    "cgroup v1 controller `{c}` is not mounted at {} (kiln-sandbox needs cgroup v1 memory, pids, cpu, cpuacct)",
                    self.fs.path(c).display()
                )));
            }
        }
        Ok(())
    }

    fn dir(&self, id: &str, controller: &str) -> PathBuf {
        self.fs.path(self.rel(id, controller))
    }

    fn create(&self, id: &str, limits: &CgroupLimits) -> Result<StepState> {
        self.check()?;
        for c in CONTROLLERS {
            self.fs.mkdir_all(self.rel(id, c))?;
        }
        let mem = self.rel(id, "memory");
        self.fs.write(mem.join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        if self.fs.exists(&memsw) {
            // No swap: memory+swap limit equals the memory limit.
            self.fs.write(&memsw, &limits.memory_bytes.to_string())?;
        }
        let _ = self.fs.write(mem.join("memory.swappiness"), "0");
        let oom_events = self.register_oom_eventfd(&mem)?;
        let pids = self.rel(id, "pids");
        self.fs.write(pids.join("pids.max"), &limits.pids_max.to_string())?;
        if let Some((quota, period)) = limits.cpu {
            let cpu = self.rel(id, "cpu");
            self.fs.write(cpu.join("cpu.cfs_period_us"), &period.to_string())?;
            self.fs.write(cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        Ok(StepState::V1(State { oom_events }))
    }

    fn accounting(&self, id: &str, state: &StepState) -> Accounting {
        let fs = &self.fs;
        let mem = self.rel(id, "memory");
        let pids = self.rel(id, "pids");
        let leaf_mem = mem.join(LEAF);
        let leaf_pids = pids.join(LEAF);
        let notified = match state {
            StepState::V1(s) => read_eventfd(&s.oom_events),
            _ => 0,
        };
        let failcnt = fs.read_u64(mem.join("memory.failcnt")).unwrap_or(0)
            + fs.read_u64(mem.join("memory.memsw.failcnt")).unwrap_or(0);
        let oom_kills = fs.read_key(mem.join("memory.oom_control"), "oom_kill").unwrap_or(0)
            + notified
            + fs.read_key(leaf_mem.join("memory.oom_control"), "oom_kill").unwrap_or(0);
        let pids_events = fs.read_key(pids.join("pids.events"), "max").unwrap_or(0)
            + fs.read_key(leaf_pids.join("pids.events"), "max").unwrap_or(0);
        Accounting {
            cpu_ns: fs.read_u64(self.rel(id, "cpuacct").join("cpuacct.usage")).unwrap_or(0),
            peak_memory: fs.read_u64(mem.join("memory.max_usage_in_bytes")).unwrap_or(0),
            mem_failcnt: failcnt,
            oom_kills,
            pids_max_events: pids_events,
            pids_peak: fs.read_u64(pids.join("pids.peak")).unwrap_or(0),
            pids_max: fs.read_u64(pids.join("pids.max")),
        }
    }

    /// cgroup v1: writing 0 to `memory.max_usage_in_bytes`; best effort.
    fn reset_peak_memory(&self, id: &str, _state: &StepState) {
        let _ = self.fs.write(self.rel(id, "memory").join("memory.max_usage_in_bytes"), "0");
    }

    fn pids(&self, id: &str) -> Vec<i32> {
        let mut out = Vec::new();
        for h in self.hierarchies() {
            for d in self.fs.subtree(Path::new(&h).join(KILN).join(id)) {
                out.extend(self.fs.procs(&d));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn kill_all(&self, id: &str) -> usize {
        let pids = self.pids(id);
        for &p in &pids {
            self.fs.kill(p);
        }
        pids.len()
    }

    fn remove(&self, id: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.kill_all(id);
            let mut last_err = None;
            for h in self.hierarchies() {
                if let Some(e) = super::rmdir_tree(&self.fs, &Path::new(&h).join(KILN).join(id)) {
                    last_err = Some(e);
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

    fn stale(&self, prefix: &str) -> Vec<String> {
        let mut names = Vec::new();
        for h in self.hierarchies() {
            names.extend(
                self.fs.subdirs(Path::new(&h).join(KILN)).into_iter().filter(|n| n.starts_with(prefix)),
            );
        }
        names.sort();
        names.dedup();
        names
    }
}
