//! Recorded fakes of a v1 and a v2 cgroup host for unit tests.
//!
//! `testdata/` holds what real kernels showed (see each file's header): the
//! control files of a fresh kiln parent and of a used parent and leaf, as
//! read with `cat`. A fake host is a temp dir laid out like /sys/fs/cgroup
//! with those files. A plain directory does none of the kernel's work, so
//! the little a test needs is imitated here, from the recordings:
//!
//! - mkdir fills the new cgroup with a fresh cgroup's control files (v2:
//!   only the files of the controllers its parent's
//!   `cgroup.subtree_control` enables, and `cgroup.controllers` lists
//!   them), limits at the kernel's defaults;
//! - rmdir first deletes those files (a real cgroup is removed with them).
//!
//! Not imitated, so not tested on a fake: rmdir of a populated cgroup
//! (EBUSY), limits being enforced, counters moving, `cgroup.kill` killing,
//! `cgroup.procs` following processes, a write of an unknown controller or
//! a malformed value being refused. `uml.rs` and `tests::real_*` run those
//! against real kernels.

use std::fs;
use std::path::{Path, PathBuf};

use super::cgfs::CgFs;

/// One recording: (file name, contents; `None`: write-only, unreadable).
#[derive(Debug, Clone)]
pub(crate) struct Recording(pub(crate) Vec<(String, Option<String>)>);

pub(crate) fn recording(name: &str) -> Recording {
    let text = match name {
        "v1-memory-fresh" => include_str!("testdata/v1-memory-fresh.txt"),
        "v1-memory-used" => include_str!("testdata/v1-memory-used.txt"),
        "v1-memory-leaf-used" => include_str!("testdata/v1-memory-leaf-used.txt"),
        "v1-pids-fresh" => include_str!("testdata/v1-pids-fresh.txt"),
        "v1-pids-used" => include_str!("testdata/v1-pids-used.txt"),
        "v1-pids-leaf-used" => include_str!("testdata/v1-pids-leaf-used.txt"),
        "v1-cpu-fresh" => include_str!("testdata/v1-cpu-fresh.txt"),
        "v1-cpu-used" => include_str!("testdata/v1-cpu-used.txt"),
        "v1-cpuacct-fresh" => include_str!("testdata/v1-cpuacct-fresh.txt"),
        "v1-cpuacct-used" => include_str!("testdata/v1-cpuacct-used.txt"),
        "v2-root" => include_str!("testdata/v2-root.txt"),
        "v2-fresh" => include_str!("testdata/v2-fresh.txt"),
        "v2-parent-used" => include_str!("testdata/v2-parent-used.txt"),
        "v2-leaf-used" => include_str!("testdata/v2-leaf-used.txt"),
        other => panic!("no recording {other}"),
    };
    parse(text)
}

fn parse(text: &str) -> Recording {
    let mut files: Vec<(String, Option<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(head) = line.strip_prefix("== ") {
            let (name, write_only) = match head.strip_suffix(" (write-only)") {
                Some(n) => (n, true),
                None => (head, false),
            };
            files.push((name.to_string(), (!write_only).then(String::new)));
        } else if let Some((_, Some(body))) = files.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
        // Lines before the first `==` are the header comment.
    }
    Recording(files)
}

impl Recording {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).and_then(|(_, b)| b.as_deref())
    }

    /// Writes the files into `dir`, replacing what is there (in place, so
    /// descriptors open on them see the new contents, as on cgroupfs).
    pub(crate) fn write_into(&self, dir: &Path, keep: impl Fn(&str) -> bool) {
        for (name, body) in &self.0 {
            if keep(name) {
                fs::write(dir.join(name), body.as_deref().unwrap_or("")).unwrap();
            }
        }
    }
}

/// Which kernel a fake host imitates.
#[derive(Debug, Clone)]
pub(crate) enum Kernel {
    V1,
    /// `lacks`: control files this (older) kernel does not have, e.g.
    /// `memory.peak` (before 5.19) or `cgroup.kill` (before 5.14).
    V2 {
        lacks: Vec<&'static str>,
    },
}

/// Limits of a fresh cgroup (the recordings were taken after kiln's
/// limits were written).
const V1_DEFAULTS: [(&str, &str); 5] = [
    ("memory.limit_in_bytes", "9223372036854771712\n"),
    ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
    ("pids.max", "max\n"),
    ("cpu.cfs_quota_us", "-1\n"),
    ("cpu.cfs_period_us", "100000\n"),
];
const V2_DEFAULTS: [(&str, &str); 9] = [
    ("memory.max", "max\n"),
    ("memory.swap.max", "max\n"),
    ("pids.max", "max\n"),
    ("cpu.max", "max 100000\n"),
    ("cgroup.subtree_control", ""),
    ("cgroup.events", "populated 0\nfrozen 0\n"),
    ("memory.peak", "0\n"),
    ("pids.peak", "0\n"),
    ("memory.current", "0\n"),
];

/// The controller a v2 interface file belongs to (`None`: core file,
/// present in every cgroup; `cpu.stat` is core).
fn v2_controller(file: &str) -> Option<&str> {
    let (prefix, _) = file.split_once('.')?;
    (prefix != "cgroup" && file != "cpu.stat").then_some(prefix)
}

impl Kernel {
    /// What the kernel does when `rel` is created below `fs`'s root.
    pub(crate) fn on_mkdir(&self, fs: &CgFs, rel: &Path) {
        let dir = fs.path(rel);
        match self {
            Kernel::V1 => {
                let hierarchy = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
                populate_v1(&dir, &hierarchy);
            }
            Kernel::V2 { lacks } => {
                let parent = rel.parent().unwrap_or(Path::new(""));
                let enabled: Vec<String> = fs
                    .read(parent.join("cgroup.subtree_control"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(|c| c.trim_start_matches('+').to_string())
                    .collect();
                let fresh = recording("v2-fresh");
                fresh.write_into(&dir, |name| {
                    !lacks.contains(&name)
                        && match v2_controller(name) {
                            None => true,
                            Some(c) => enabled.iter().any(|e| e == c),
                        }
                });
                for (name, value) in V2_DEFAULTS {
                    if dir.join(name).exists() {
                        fs::write(dir.join(name), value).unwrap();
                    }
                }
                fs::write(dir.join("cgroup.controllers"), format!("{}\n", enabled.join(" "))).unwrap();
            }
        }
    }

    /// What the kernel does on rmdir of a cgroup: its files go with it.
    pub(crate) fn on_rmdir(&self, dir: &Path) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

fn populate_v1(dir: &Path, hierarchy: &str) {
    match hierarchy {
        "memory" | "pids" | "cpu" | "cpuacct" => {
            recording(&format!("v1-{hierarchy}-fresh")).write_into(dir, |_| true);
            for (name, value) in V1_DEFAULTS {
                if dir.join(name).exists() {
                    fs::write(dir.join(name), value).unwrap();
                }
            }
        }
        // The other hierarchies: only the core files kiln reads.
        _ => {
            for f in ["cgroup.procs", "tasks", "notify_on_release", "cgroup.clone_children"] {
                fs::write(dir.join(f), "").unwrap();
            }
        }
    }
}

/// The hierarchies of this project's CI host (cgroup v1 + a unified v2 at
/// `unified`, see /proc/self/mountinfo there).
pub(crate) const V1_HIERARCHIES: [&str; 10] =
    ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd", "unified"];

/// A fake v1 (hybrid) host in a temp dir, with a journal.
pub(crate) fn v1_host() -> (tempfile::TempDir, CgFs) {
    let dir = tempfile::tempdir().unwrap();
    for h in V1_HIERARCHIES {
        let d = dir.path().join(h);
        fs::create_dir(&d).unwrap();
        populate_v1(&d, h);
    }
    let mut fs = CgFs::new(dir.path()).with_journal();
    fs.fake = Some(Kernel::V1);
    (dir, fs)
}

/// A fake v2 host in a temp dir, with a journal; `lacks`: files the
/// imitated kernel does not have.
pub(crate) fn v2_host(lacks: &[&'static str]) -> (tempfile::TempDir, CgFs) {
    let dir = tempfile::tempdir().unwrap();
    recording("v2-root").write_into(dir.path(), |_| true);
    let mut fs = CgFs::new(dir.path()).with_journal();
    fs.fake = Some(Kernel::V2 { lacks: lacks.to_vec() });
    (dir, fs)
}

/// Overwrites the files of `rel` (below the fake root) with a recording.
pub(crate) fn load(root: &Path, rel: impl AsRef<Path>, name: &str) -> PathBuf {
    let dir = root.join(rel);
    recording(name).write_into(&dir, |_| true);
    dir
}
