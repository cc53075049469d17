//! The cgroup drivers' only way to a hierarchy: paths relative to one root
//! directory (normally /sys/fs/cgroup; a recorded fake in unit tests).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Result, SandboxError};
use crate::sys;

#[derive(Debug)]
pub(crate) struct CgFs {
    root: PathBuf,
    /// Every change made (mkdir, write, rmdir, kill), in order: what the
    /// unit tests check the order of writes and removals with.
    journal: Option<Mutex<Vec<String>>>,
    /// A fake hierarchy (a plain directory): what the kernel does on mkdir
    /// and rmdir is emulated from a recording.
    #[cfg(test)]
    pub(crate) fake: Option<super::fake::Kernel>,
}

impl CgFs {
    pub(crate) fn new(root: &Path) -> CgFs {
        CgFs {
            root: root.to_path_buf(),
            journal: None,
            #[cfg(test)]
            fake: None,
        }
    }

    /// Records every change from now on (see [`CgFs::journal`]).
    #[cfg(test)]
    pub(crate) fn with_journal(mut self) -> CgFs {
        self.journal = Some(Mutex::new(Vec::new()));
        self
    }

    /// The changes made so far, e.g. `write kiln/x/memory.max 1048576`.
    #[cfg(test)]
    pub(crate) fn journal(&self) -> Vec<String> {
        self.journal.as_ref().map(|j| j.lock().unwrap().clone()).unwrap_or_default()
    }

    fn note(&self, entry: impl FnOnce() -> String) {
        if let Some(j) = &self.journal {
            j.lock().unwrap_or_else(|e| e.into_inner()).push(entry());
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    pub(crate) fn exists(&self, rel: impl AsRef<Path>) -> bool {
        self.path(rel).exists()
    }

    pub(crate) fn read(&self, rel: impl AsRef<Path>) -> Option<String> {
        fs::read_to_string(self.path(rel)).ok()
    }

    /// A single-value file; `max` and unparsable values are `None`.
    pub(crate) fn read_u64(&self, rel: impl AsRef<Path>) -> Option<u64> {
        self.read(rel)?.trim().parse().ok()
    }

    /// One `key value` line of a flat-keyed file.
    pub(crate) fn read_key(&self, rel: impl AsRef<Path>, key: &str) -> Option<u64> {
        super::parse_key(&self.read(rel)?, key)
    }

    /// Writes `value` to an existing control file in one write(2), never
    /// creating it: a missing file (controller not enabled) is ENOENT. The
    /// error names the file.
    pub(crate) fn write(&self, rel: impl AsRef<Path>, value: &str) -> Result<()> {
        let rel = rel.as_ref();
        let path = self.path(rel);
        let res = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()));
        res.map_err(|source| SandboxError::Cgroup { path: path.clone(), source })?;
        self.note(|| format!("write {} {value}", rel.display()));
        Ok(())
    }

    /// Opens a control file (for reads and writes through one descriptor).
    pub(crate) fn open(&self, rel: impl AsRef<Path>, write: bool) -> io::Result<fs::File> {
        fs::OpenOptions::new().read(true).write(write).open(self.path(rel))
    }

    /// Creates `rel` and its missing ancestors, one directory at a time.
    pub(crate) fn mkdir_all(&self, rel: impl AsRef<Path>) -> Result<()> {
        let mut cur = PathBuf::new();
        for c in rel.as_ref().components() {
            cur.push(c);
            let path = self.path(&cur);
            if path.is_dir() {
                continue;
            }
            match fs::create_dir(&path) {
                Ok(()) => {
                    #[cfg(test)]
                    if let Some(k) = &self.fake {
                        k.on_mkdir(self, &cur);
                    }
                    self.note(|| format!("mkdir {}", cur.display()));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(SandboxError::Cgroup { path, source }),
            }
        }
        Ok(())
    }

    /// Removes one cgroup directory.
    pub(crate) fn rmdir(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let rel = rel.as_ref();
        #[cfg(test)]
        if let Some(k) = &self.fake {
            k.on_rmdir(&self.path(rel));
        }
        fs::remove_dir(self.path(rel))?;
        self.note(|| format!("rmdir {}", rel.display()));
        Ok(())
    }

    /// Names of the directories in `rel`.
    pub(crate) fn subdirs(&self, rel: impl AsRef<Path>) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.path(rel)) else {
            return Vec::new();
        };
        let mut out: Vec<String> = rd
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    /// `rel` and every directory below it, deepest first (empty if `rel`
    /// does not exist).
    pub(crate) fn subtree(&self, rel: impl AsRef<Path>) -> Vec<PathBuf> {
        fn walk(fs: &CgFs, rel: &Path, out: &mut Vec<PathBuf>) {
            for name in fs.subdirs(rel) {
                walk(fs, &rel.join(name), out);
            }
            if fs.path(rel).is_dir() {
                out.push(rel.to_path_buf());
            }
        }
        let mut out = Vec::new();
        walk(self, rel.as_ref(), &mut out);
        out
    }

    /// The pids in `rel/cgroup.procs`.
    pub(crate) fn procs(&self, rel: impl AsRef<Path>) -> Vec<i32> {
        self.read(rel.as_ref().join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse::<i32>().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs one host pid (never pid 1 or below).
    pub(crate) fn kill(&self, pid: i32) {
        if sys::sigkill(pid).is_ok() {
            self.note(|| format!("kill {pid}"));
        }
    }

    /// Notes a change made through a descriptor (see [`CgFs::open`]).
    pub(crate) fn noted(&self, entry: impl FnOnce() -> String) {
        self.note(entry)
    }
}
