//! cgroup v2 (the unified hierarchy): kiln's parent `kiln/<id>` holds the
//! limits of every controller, the runtime's leaf `kiln/<id>/step` is
//! below it.
//!
//! - Controllers are enabled top-down before a child is created: memory,
//!   pids and cpu in the root's, `kiln`'s and `kiln/<id>`'s
//!   `cgroup.subtree_control` (only those not enabled yet; a cgroup's
//!   interface files appear when its parent enables the controller).
//! - Limits: `memory.max`, `memory.swap.max` 0 (where swap is accounted),
//!   `pids.max`, `cpu.max` "quota period"; `max` for no limit.
//! - Accounting from the parent: `cpu.stat: usage_usec`, `memory.events:
//!   max, oom_kill` (hierarchical), `pids.peak`/`pids.max`, `pids.events:
//!   max` (counted in the cgroup that forked before Linux 6.13, so the
//!   leaf's is read too while it exists), and peak memory from
//!   `memory.peak` read through one descriptor kept open (a write to it
//!   resets the peak for that descriptor since Linux 6.12). Without
//!   `memory.peak` (before 5.19), or when it cannot be reset, a thread
//!   samples `memory.current`.
//! - Teardown: `cgroup.kill` (5.14+) kills the whole subtree, else every pid
//!   in its `cgroup.procs` files is SIGKILLed; then rmdir, leaf first,
//!   retried while the kernel still says EBUSY.
//!
//! `testdata/v2-*.txt` are recordings from a real 6.1 kernel (see
//! `uml.rs` for the test that runs this driver in one).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cgfs::CgFs;
use super::{Accounting, CgroupDriver, CgroupLimits, StepState, KILN, LEAF};
use crate::error::{Result, SandboxError};

/// Controllers kiln enables and limits.
pub(crate) const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// How often `memory.current` is sampled when there is no usable `memory.peak`.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// A limit as the kernel takes it: `max` for none.
fn limit_value(v: u64) -> String {
    if v == u64::MAX {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// Where peak memory comes from.
#[derive(Debug)]
enum Peak {
    /// `memory.peak`, opened when the cgroup was made; `resettable`: opened
    /// for writing too (a write resets what reads through it see).
    File { file: File, resettable: bool },
    /// The highest `memory.current` a sampling thread saw.
    Sampled(Arc<AtomicU64>),
}

/// What v2 keeps per step.
#[derive(Debug)]
pub(crate) struct State {
    peak: Mutex<Peak>,
}

fn read_file_u64(f: &mut File) -> Option<u64> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Starts a thread that keeps the highest `memory.current` in the returned
/// counter; it ends when the counter is dropped or the file is gone.
fn sample_current(current: PathBuf, initial: u64) -> Arc<AtomicU64> {
    let max = Arc::new(AtomicU64::new(initial));
    let weak = Arc::downgrade(&max);
    let _ = std::thread::Builder::new().name("kiln-memcg-peak".into()).spawn(move || loop {
        let Some(max) = weak.upgrade() else { return };
        match std::fs::read_to_string(&current).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(v) => {
                max.fetch_max(v, Ordering::Relaxed);
            }
            None => return,
        }
        drop(max);
        std::thread::sleep(SAMPLE_EVERY);
    });
    max
}

#[derive(Debug)]
pub(crate) struct V2 {
    fs: CgFs,
    /// Use `cgroup.kill` where the kernel has it (tests turn it off to run
    /// the fallback on a kernel that has it).
    use_kill_file: bool,
}

impl V2 {
    pub(crate) fn new(fs: CgFs) -> V2 {
        V2 { fs, use_kill_file: true }
    }

    #[cfg(test)]
    pub(crate) fn without_kill_file(mut self) -> V2 {
        self.use_kill_file = false;
        self
    }

    #[cfg(test)]
    pub(crate) fn fs(&self) -> &CgFs {
        &self.fs
    }

    /// `kiln/<id>`, relative to the root.
    fn rel(&self, id: &str) -> PathBuf {
        Path::new(KILN).join(id)
    }

    /// Enables `controllers` in `rel/cgroup.subtree_control` (those not
    /// enabled yet), so that `rel`'s children get their interface files.
    pub(crate) fn enable(&self, rel: &Path, controllers: &[&str]) -> Result<()> {
        let file = rel.join("cgroup.subtree_control");
        let on = self.fs.read(&file).ok_or_else(|| SandboxError::Cgroup {
            path: self.fs.path(&file),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let on: Vec<&str> = on.split_whitespace().map(|c| c.trim_start_matches('+')).collect();
        let missing: Vec<String> =
            controllers.iter().filter(|c| !on.contains(c)).map(|c| format!("+{c}")).collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.fs.write(&file, &missing.join(" "))
    }

    fn open_peak(&self, rel: &Path) -> Peak {
        let peak = rel.join("memory.peak");
        if let Ok(file) = self.fs.open(&peak, true) {
            return Peak::File { file, resettable: true };
        }
        if let Ok(file) = self.fs.open(&peak, false) {
            return Peak::File { file, resettable: false };
        }
        let current = self.fs.read_u64(rel.join("memory.current")).unwrap_or(0);
        Peak::Sampled(sample_current(self.fs.path(rel.join("memory.current")), current))
    }
}

impl CgroupDriver for V2 {
    fn check(&self) -> Result<()> {
        let file = Path::new("cgroup.controllers");
        let have = self.fs.read(file).ok_or_else(|| {
            SandboxError::Host(format!(
                "{} is missing: {} is not the root of a cgroup v2 hierarchy",
                self.fs.path(file).display(),
                self.fs.root().display()
            ))
        })?;
        let have: Vec<&str> = have.split_whitespace().collect();
        let missing: Vec<&str> = CONTROLLERS.iter().copied().filter(|c| !have.contains(c)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(SandboxError::Host(format!(
            "cgroup v2 controller(s) {} not available in {} (it lists {:?}); kiln-sandbox needs memory, pids and cpu (a controller bound to a cgroup v1 hierarchy is not available in v2)",
            missing.join(", "),
            self.fs.path(file).display(),
            have.join(" ")
        )))
    }

    fn dir(&self, id: &str, _controller: &str) -> PathBuf {
        self.fs.path(self.rel(id))
    }

    fn create(&self, id: &str, limits: &CgroupLimits) -> Result<StepState> {
        self.check()?;
        let p = self.rel(id);
        self.enable(Path::new(""), &CONTROLLERS)?;
        self.fs.mkdir_all(KILN)?;
        self.enable(Path::new(KILN), &CONTROLLERS)?;
        self.fs.mkdir_all(&p)?;
        self.fs.write(p.join("memory.max"), &limit_value(limits.memory_bytes))?;
        let swap = p.join("memory.swap.max");
        if self.fs.exists(&swap) {
            // No swap, as on v1 (memory+swap limit = memory limit).
            self.fs.write(&swap, "0")?;
        }
        self.fs.write(p.join("pids.max"), &limit_value(limits.pids_max))?;
        let cpu = match limits.cpu {
            Some((quota, period)) => format!("{quota} {period}"),
            None => "max".to_string(),
        };
        self.fs.write(p.join("cpu.max"), &cpu)?;
        // The runtime's leaf gets the controllers' files (its own
        // pids.events, memory.events) from here.
        self.enable(&p, &CONTROLLERS)?;
        Ok(StepState::V2(State { peak: Mutex::new(self.open_peak(&p)) }))
    }

    fn accounting(&self, id: &str, state: &StepState) -> Accounting {
        let fs = &self.fs;
        let p = self.rel(id);
        let leaf = p.join(LEAF);
        // Parent files are hierarchical; the leaf's count where the kernel
        // counts locally (pids.events before 6.13, `memory_localevents`).
        let event = |file: &str, key: &str| {
            let parent = fs.read_key(p.join(file), key).unwrap_or(0);
            parent.max(fs.read_key(leaf.join(file), key).unwrap_or(0))
        };
        let peak_memory = match state {
            StepState::V2(s) => {
                let mut peak = s.peak.lock().unwrap_or_else(|e| e.into_inner());
                match &mut *peak {
                    Peak::File { file, .. } => read_file_u64(file).unwrap_or(0),
                    Peak::Sampled(max) => {
                        if let Some(v) = fs.read_u64(p.join("memory.current")) {
                            max.fetch_max(v, Ordering::Relaxed);
                        }
                        max.load(Ordering::Relaxed)
                    }
                }
            }
            _ => fs.read_u64(p.join("memory.peak")).unwrap_or(0),
        };
        Accounting {
            cpu_ns: fs.read_key(p.join("cpu.stat"), "usage_usec").unwrap_or(0).saturating_mul(1000),
            peak_memory,
            mem_failcnt: event("memory.events", "max"),
            oom_kills: event("memory.events", "oom_kill"),
            pids_max_events: event("pids.events", "max"),
            pids_peak: fs.read_u64(p.join("pids.peak")).unwrap_or(0),
            pids_max: fs.read_u64(p.join("pids.max")),
        }
    }

    fn reset_peak_memory(&self, id: &str, state: &StepState) {
        let StepState::V2(s) = state else { return };
        let p = self.rel(id);
        let mut peak = s.peak.lock().unwrap_or_else(|e| e.into_inner());
        if let Peak::File { file, resettable: true } = &mut *peak {
            if file.rewind().and_then(|_| file.write_all(b"0")).is_ok() {
                self.fs.noted(|| format!("reset {}", p.join("memory.peak").display()));
                return;
            }
        }
        // No resettable memory.peak (before 6.12): track memory.current
        // from now on.
        let current = self.fs.read_u64(p.join("memory.current")).unwrap_or(0);
        match &*peak {
            Peak::Sampled(max) => max.store(current, Ordering::Relaxed),
            Peak::File { .. } => {
                *peak = Peak::Sampled(sample_current(self.fs.path(p.join("memory.current")), current))
            }
        }
        self.fs.noted(|| format!("reset {} (sampled)", p.join("memory.current").display()));
    }

    fn pids(&self, id: &str) -> Vec<i32> {
        let mut out: Vec<i32> = self.fs.subtree(self.rel(id)).iter().flat_map(|d| self.fs.procs(d)).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn kill_all(&self, id: &str) -> usize {
        let pids = self.pids(id);
        if pids.is_empty() {
            return 0;
        }
        let kill_file = self.rel(id).join("cgroup.kill");
        if self.use_kill_file && self.fs.exists(&kill_file) && self.fs.write(&kill_file, "1").is_ok() {
            return pids.len();
        }
        for &p in &pids {
            self.fs.kill(p);
        }
        pids.len()
    }

    fn remove(&self, id: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.kill_all(id);
            match super::rmdir_tree(&self.fs, &self.rel(id)) {
                None => return Ok(()),
                Some((path, source)) if Instant::now() >= deadline => {
                    return Err(SandboxError::Cgroup { path, source })
                }
                // EBUSY while the killed tasks are still exiting.
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn stale(&self, prefix: &str) -> Vec<String> {
        self.fs.subdirs(KILN).into_iter().filter(|n| n.starts_with(prefix)).collect()
    }
}
