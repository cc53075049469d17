//! kiln's own cgroups for one step, on cgroup v1 or v2.
//!
//! Layout (absolute paths in the hierarchy, independent of where the engine
//! process itself lives):
//!
//! ```text
//! v1: /sys/fs/cgroup/<ctrl>/kiln/<id>        kiln's parent: limits + accounting
//!     /sys/fs/cgroup/<ctrl>/kiln/<id>/step   linux.cgroupsPath = "/kiln/<id>/step"
//! v2: /sys/fs/cgroup/kiln/<id>               the same, one directory for every controller
//!     /sys/fs/cgroup/kiln/<id>/step          linux.cgroupsPath = "/kiln/<id>/step"
//! ```
//!
//! Both runc and runsc interpret an absolute `cgroupsPath` relative to the
//! hierarchy root and put every host task of the sandbox there; on v2 runsc
//! (`runsc/cgroup/cgroup.go`: an absolute path is not made relative to the
//! caller's cgroup, and `IsOnlyV2` is a statfs of /sys/fs/cgroup, as here)
//! joins it to /sys/fs/cgroup and enables every controller of the root's
//! `cgroup.controllers` in each ancestor's `cgroup.subtree_control`, as
//! runc does. The limits are written to the parent, so the runtime deleting
//! (runc) or keeping (runsc) `step` does not lose them, and the parent's
//! hierarchical counters survive until `remove`.
//!
//! Which driver runs is decided by the host ([`detect`]): `/sys/fs/cgroup`
//! a cgroup2 mount is v2 ([`v2`]); a tmpfs with v1 controller mounts is v1
//! ([`v1`]), also when a v2 hierarchy is mounted beside them at
//! `/sys/fs/cgroup/unified` ("hybrid": the controllers are v1's there).
//! Each driver reaches the hierarchy only through a root directory
//! ([`cgfs::CgFs`]), so unit tests run them against recorded fakes of both
//! layouts (`testdata/`, [`fake`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Result, SandboxError};

pub(crate) mod cgfs;
pub(crate) mod v1;
pub(crate) mod v2;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod uml;

pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Name of the runtime-owned child below kiln's parent.
pub(crate) const LEAF: &str = "step";
/// kiln's directory below the hierarchy root.
pub(crate) const KILN: &str = "kiln";

/// `statfs(2)` magic numbers (linux/magic.h).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Only cgroup v1 controller hierarchies (a tmpfs at /sys/fs/cgroup).
    V1,
    /// v1 controller hierarchies plus a v2 hierarchy at
    /// /sys/fs/cgroup/unified (systemd's "hybrid"): the controllers kiln
    /// needs are v1's, so the v1 driver runs.
    Hybrid,
    /// The unified hierarchy only: /sys/fs/cgroup is a cgroup2 mount.
    V2,
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupMode::V1 => "v1",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::V2 => "v2",
        })
    }
}

/// The mode of a hierarchy root from the `statfs` magic of the root and of
/// `<root>/unified` (if that exists). `None`: not a cgroup mount layout.
pub(crate) fn classify(root_magic: u64, unified_magic: Option<u64>) -> Option<CgroupMode> {
    match root_magic {
        CGROUP2_SUPER_MAGIC => Some(CgroupMode::V2),
        // A v1 host mounts a tmpfs with one cgroup mount per controller; a
        // single v1 hierarchy mounted at the root directly is v1 too.
        TMPFS_MAGIC | CGROUP_SUPER_MAGIC => Some(match unified_magic {
            Some(CGROUP2_SUPER_MAGIC) => CgroupMode::Hybrid,
            _ => CgroupMode::V1,
        }),
        _ => None,
    }
}

fn fs_magic(path: &Path) -> std::io::Result<u64> {
    // `f_type` is a signed word on some ABIs; the magic numbers fit 32 bits.
    Ok(rustix::fs::statfs(path)?.f_type as u64 & 0xffff_ffff)
}

/// Detects how `root` (normally /sys/fs/cgroup) is mounted.
pub(crate) fn detect(root: &Path) -> Result<CgroupMode> {
    let magic = fs_magic(root).map_err(|source| SandboxError::Cgroup { path: root.to_path_buf(), source })?;
    let unified = fs_magic(&root.join("unified")).ok();
    classify(magic, unified).ok_or_else(|| {
        SandboxError::Host(format!(
            "{} is neither a cgroup2 mount nor a tmpfs of cgroup v1 mounts (statfs magic {magic:#x}); mount cgroups there",
            root.display()
        ))
    })
}

/// Limits as written to kiln's parent cgroups. v2 writes `u64::MAX` as
/// `max` (no limit); v1 writes the numbers as they are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids_max: u64,
    /// (quota, period) in microseconds; `None`: no CPU quota.
    pub cpu: Option<(u64, u64)>,
}

/// Counters read back from the parent (and the leaf if it still exists).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Accounting {
    pub cpu_ns: u64,
    pub peak_memory: u64,
    /// Times the memory limit was hit (v1 `memory.failcnt`, v2
    /// `memory.events: max`).
    pub mem_failcnt: u64,
    pub oom_kills: u64,
    pub pids_max_events: u64,
    pub pids_peak: u64,
    pub pids_max: Option<u64>,
}

/// What a driver keeps for one step between `create` and `remove`.
#[derive(Debug, Default)]
pub(crate) enum StepState {
    #[default]
    None,
    V1(v1::State),
    V2(v2::State),
}

/// One implementation of kiln's cgroup layout (v1 or v2). Every path it
/// touches is below [`CgroupDriver::root`].
pub(crate) trait CgroupDriver: fmt::Debug + Send + Sync {
    /// Checks that the controllers kiln needs are there.
    fn check(&self) -> Result<()>;
    /// kiln's parent directory of `id` in one controller's hierarchy (v2:
    /// the same directory for every controller).
    fn dir(&self, id: &str, controller: &str) -> PathBuf;
    /// Creates kiln's parent(s) of `id` and writes the limits.
    fn create(&self, id: &str, limits: &CgroupLimits) -> Result<StepState>;
    /// Reads the parent's (and surviving leaf's) counters.
    fn accounting(&self, id: &str, state: &StepState) -> Accounting;
    /// Starts measuring peak memory afresh; best effort.
    fn reset_peak_memory(&self, id: &str, state: &StepState);
    /// Host pids of every task below kiln's parent(s) of `id`.
    fn pids(&self, id: &str) -> Vec<i32>;
    /// Kills every task below kiln's parent(s) of `id`; returns how many
    /// tasks there were (0: nothing left to kill).
    fn kill_all(&self, id: &str) -> usize;
    /// Kills remaining tasks and removes `kiln/<id>` and everything below
    /// it, leaf first, retrying for up to `timeout`.
    fn remove(&self, id: &str, timeout: Duration) -> Result<()>;
    /// Names of kiln cgroups starting with `prefix`.
    fn stale(&self, prefix: &str) -> Vec<String>;
}

/// The driver for a hierarchy mounted at `root` in `mode`.
pub(crate) fn driver_for(root: &Path, mode: CgroupMode) -> Arc<dyn CgroupDriver> {
    let fs = cgfs::CgFs::new(root);
    match mode {
        CgroupMode::V2 => Arc::new(v2::V2::new(fs)),
        CgroupMode::V1 | CgroupMode::Hybrid => Arc::new(v1::V1::new(fs)),
    }
}

/// The driver for this host's /sys/fs/cgroup (detected once per process).
pub(crate) fn host() -> Result<Arc<dyn CgroupDriver>> {
    static HOST: Mutex<Option<Arc<dyn CgroupDriver>>> = Mutex::new(None);
    let mut cached = HOST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = cached.as_ref() {
        return Ok(Arc::clone(d));
    }
    let root = Path::new(CGROUP_ROOT);
    let d = driver_for(root, detect(root)?);
    *cached = Some(Arc::clone(&d));
    Ok(d)
}

/// The host's driver, after checking that the controllers kiln needs are there.
pub(crate) fn check_host() -> Result<Arc<dyn CgroupDriver>> {
    let d = host()?;
    d.check()?;
    Ok(d)
}

/// What `kiln doctor` reports about the host's cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupHost {
    pub mode: CgroupMode,
    pub root: PathBuf,
    /// The controllers kiln needs in this mode.
    pub needed: Vec<&'static str>,
    /// Those of them that are not available.
    pub missing: Vec<&'static str>,
    /// v2 (or the hybrid's unified hierarchy): the controllers the root's
    /// `cgroup.controllers` lists.
    pub v2_controllers: Option<Vec<String>>,
}

/// Probes the host's cgroups at /sys/fs/cgroup.
pub fn probe_cgroups() -> Result<CgroupHost> {
    probe_cgroups_at(Path::new(CGROUP_ROOT))
}

/// Probes a cgroup hierarchy root.
pub fn probe_cgroups_at(root: &Path) -> Result<CgroupHost> {
    let mode = detect(root)?;
    let list = |p: PathBuf| -> Option<Vec<String>> {
        Some(std::fs::read_to_string(&p).ok()?.split_whitespace().map(str::to_string).collect())
    };
    Ok(match mode {
        CgroupMode::V2 => {
            let have = list(root.join("cgroup.controllers")).unwrap_or_default();
            CgroupHost {
                mode,
                root: root.to_path_buf(),
                needed: v2::CONTROLLERS.to_vec(),
                missing: v2::CONTROLLERS.iter().copied().filter(|c| !have.iter().any(|h| h == c)).collect(),
                v2_controllers: Some(have),
            }
        }
        CgroupMode::V1 | CgroupMode::Hybrid => CgroupHost {
            mode,
            root: root.to_path_buf(),
            needed: v1::CONTROLLERS.to_vec(),
            missing: v1::CONTROLLERS
                .iter()
                .copied()
                .filter(|c| !root.join(c).join("tasks").exists())
                .collect(),
            v2_controllers: (mode == CgroupMode::Hybrid)
                .then(|| list(root.join("unified").join("cgroup.controllers")))
                .flatten(),
        },
    })
}

/// kiln's cgroup parents for one sandbox id.
#[derive(Debug)]
pub(crate) struct StepCgroups {
    id: String,
    driver: Arc<dyn CgroupDriver>,
    state: StepState,
}

impl StepCgroups {
    pub(crate) fn new(driver: Arc<dyn CgroupDriver>, id: &str) -> Self {
        StepCgroups { id: id.to_string(), driver, state: StepState::None }
    }

    /// `linux.cgroupsPath` for the runtime (the same on v1 and v2).
    pub(crate) fn cgroups_path(&self) -> String {
        format!("/{KILN}/{}/{LEAF}", self.id)
    }

    /// kiln's parent directory in one hierarchy (v2: the one directory).
    pub(crate) fn dir(&self, controller: &str) -> PathBuf {
        self.driver.dir(&self.id, controller)
    }

    /// Creates the parents and writes the limits.
    pub(crate) fn create(&mut self, limits: &CgroupLimits) -> Result<()> {
        self.state = self.driver.create(&self.id, limits)?;
        Ok(())
    }

    pub(crate) fn accounting(&self) -> Accounting {
        self.driver.accounting(&self.id, &self.state)
    }

    pub(crate) fn reset_peak_memory(&self) {
        self.driver.reset_peak_memory(&self.id, &self.state)
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        self.driver.pids(&self.id)
    }

    /// Kills every task in the cgroups; returns how many there were.
    pub(crate) fn kill_all(&self) -> usize {
        self.driver.kill_all(&self.id)
    }

    /// Kills remaining tasks and removes kiln's cgroups (and anything the
    /// runtime left below them), retrying for a while.
    pub(crate) fn remove(&self) -> Result<()> {
        self.driver.remove(&self.id, Duration::from_secs(5))
    }
}

/// Removes `kiln/<name>` (every hierarchy on v1), killing its tasks first.
pub(crate) fn remove_tree(name: &str, timeout: Duration) -> Result<()> {
    host()?.remove(name, timeout)
}

/// Names of kiln cgroups starting with `prefix`.
pub(crate) fn stale(prefix: &str) -> Vec<String> {
    host().map(|d| d.stale(prefix)).unwrap_or_default()
}

/// Parses `key value` lines (flat-keyed cgroup files: `memory.events`,
/// `cpu.stat`, `pids.events`, v1 `memory.oom_control`).
pub(crate) fn parse_key(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Removes every directory at and below `dir` deepest first; ENOENT is
/// success. Returns the last failure.
pub(crate) fn rmdir_tree(fs: &cgfs::CgFs, dir: &Path) -> Option<(PathBuf, std::io::Error)> {
    let mut last = None;
    for d in fs.subtree(dir) {
        if let Err(e) = fs.rmdir(&d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                last = Some((fs.path(&d), e));
            }
        }
    }
    last
}
