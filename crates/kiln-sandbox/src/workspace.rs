//! Per-job workspace with a real disk quota: a sparse ext4 image,
//! loop-mounted at the workspace directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::error::{io_err, Result, SandboxError};
use crate::runtime::run_checked;
use crate::sys;

/// Usage of a workspace filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceUsage {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

/// Below this many free bytes (or 1% of the size, if more) the workspace
/// counts as full. ext4 keeps room back for delayed-allocation metadata, so a
/// writer sees ENOSPC while statvfs still reports a few hundred KiB free.
pub const FULL_THRESHOLD: u64 = 2 << 20;

const WORKSPACE_DIR: &str = "workspace";
const HOME_DIR: &str = "home";
const TOOL_DIR: &str = "tool";

/// A job's disk: a quota'd ext4 image `<dir>.img` loop-mounted at `<dir>`,
/// holding the job's workspace (`<dir>/workspace`), its home directory
/// (`<dir>/home`) and its tool cache (`<dir>/tool`), all owned by the step
/// user. One quota covers all three, so a step cannot fill the host by
/// writing to `$HOME` instead of the workspace. Dropping it unmounts and
/// deletes the image best-effort.
#[derive(Debug)]
pub struct Workspace {
    dir: PathBuf,
    image: PathBuf,
    /// The job's writable root, when it runs on an image.
    root: Mutex<Option<PathBuf>>,
    destroyed: Mutex<bool>,
}

/// Where the overlay's upper and work directories live on the job's disk
/// (never bound into a sandbox).
const ROOT_DIR: &str = "root";
/// kiln's scratch space on the job's disk (never bound into a sandbox).
const SCRATCH_DIR: &str = "kiln";

fn is_mountpoint(dir: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(dir) else {
        return false;
    };
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    text.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

impl Workspace {
    /// Creates `host_dir` backed by a `disk_bytes` sparse ext4 image at
    /// `host_dir.img`, mounted nosuid,nodev, root dir owned by `uid:gid`.
    pub fn create(host_dir: &Path, disk_bytes: u64, uid: u32, gid: u32) -> Result<Workspace> {
        let ws_err = |reason: String| SandboxError::Workspace { path: host_dir.to_path_buf(), reason };
        if sys::euid() != 0 {
            return Err(ws_err("creating a loop-mounted workspace needs root".into()));
        }
        if disk_bytes < (2 << 20) {
            return Err(ws_err(format!("disk quota {disk_bytes} bytes is below 2 MiB")));
        }
        if is_mountpoint(host_dir) {
            return Err(ws_err("already a mount point".into()));
        }
        let mut image = host_dir.as_os_str().to_owned();
        image.push(".img");
        let image = PathBuf::from(image);
        fs::create_dir_all(host_dir).map_err(io_err("create", host_dir))?;
        let ws = Workspace {
            dir: host_dir.to_path_buf(),
            image: image.clone(),
            root: Mutex::new(None),
            destroyed: Mutex::new(false),
        };
        // From here, Drop of `ws` cleans up on error.
        let f = fs::File::create(&image).map_err(io_err("create", &image))?;
        f.set_len(disk_bytes).map_err(io_err("truncate", &image))?;
        drop(f);
        run_checked(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-E"])
                .arg(format!("root_owner={uid}:{gid},lazy_itable_init=1,nodiscard"))
                .arg(&image),
        )?;
        run_checked(
            Command::new("mount")
                .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
                .arg(&image)
                .arg(host_dir),
        )?;
        let lf = host_dir.join("lost+found");
        let _ = fs::remove_dir(&lf);
        for sub in [WORKSPACE_DIR, HOME_DIR, TOOL_DIR] {
            let d = host_dir.join(sub);
            fs::create_dir(&d).map_err(io_err("create", &d))?;
            std::os::unix::fs::chown(&d, Some(uid), Some(gid)).map_err(io_err("chown", &d))?;
        }
        Ok(ws)
    }

    /// A job's disk on a plain directory: no image, no quota, nothing
    /// mounted, owned by whoever runs it. Only for tests that drive the job
    /// loop against a fake sandbox host without root; kiln's runners always
    /// use [`Workspace::create`].
    #[doc(hidden)]
    pub fn plain(host_dir: &Path) -> Result<Workspace> {
        for sub in [WORKSPACE_DIR, HOME_DIR, TOOL_DIR] {
            let d = host_dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        }
        let mut image = host_dir.as_os_str().to_owned();
        image.push(".img");
        Ok(Workspace {
            dir: host_dir.to_path_buf(),
            image: PathBuf::from(image),
            root: Mutex::new(None),
            destroyed: Mutex::new(false),
        })
    }

    /// The workspace directory (on the job's disk).
    pub fn path(&self) -> PathBuf {
        self.dir.join(WORKSPACE_DIR)
    }

    /// The job's home directory (on the job's disk): files in it persist
    /// from one step to the next, as on a CI machine.
    pub fn home(&self) -> PathBuf {
        self.dir.join(HOME_DIR)
    }

    /// A directory `name` for kiln's own use on the job's disk, beside the
    /// workspace and never bound into a sandbox (created if missing). What
    /// kiln stages here (a restored cache) moves into the workspace or the
    /// home by a rename, not a copy, and counts against the job's quota.
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let base = self.dir.join(SCRATCH_DIR);
        fs::create_dir_all(&base).map_err(io_err("create", &base))?;
        Ok(base.join(name))
    }

    /// The job's tool cache (`RUNNER_TOOL_CACHE`), on the job's disk.
    pub fn tool_cache(&self) -> PathBuf {
        self.dir.join(TOOL_DIR)
    }

    /// Mounts the job's writable root: an overlay whose lower layer is
    /// `image` (a materialized image, read-only, shared by every job on
    /// it) and whose upper layer is on the job's disk, so what steps write
    /// to the root counts against the job's quota, stays for the job's
    /// later sandboxes and goes with the job. Prepared for the step user
    /// (`uid:gid`, home `home`) before any step runs. Mounted at
    /// `<dir>.root`, beside the disk; returns that path.
    pub fn mount_root(&self, image: &Path, uid: u32, gid: u32, home: &str) -> Result<PathBuf> {
        let mut root = self.root.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = root.as_ref() {
            return Ok(r.clone());
        }
        let ws_err = |reason: String| SandboxError::Workspace { path: self.dir.clone(), reason };
        let base = self.dir.join(ROOT_DIR);
        let (upper, work) = (base.join("upper"), base.join("work"));
        let mut merged = self.dir.as_os_str().to_owned();
        merged.push(".root");
        let merged = PathBuf::from(merged);
        // The overlay's option syntax has no quoting for these.
        for p in [image, upper.as_path(), work.as_path()] {
            let s = p.to_string_lossy();
            if s.contains([',', ':', '\\']) || s.chars().any(char::is_whitespace) {
                return Err(ws_err(format!(
                    "path {} cannot be an overlay layer (`,`, `:`, `\\` or space)",
                    s
                )));
            }
        }
        if !image.is_dir() {
            return Err(ws_err(format!("image directory {} is missing", image.display())));
        }
        for d in [&base, &upper, &work, &merged] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        {
            // Only root reaches the layers: the merged view is what steps see.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", &base))?;
        }
        let opts =
            format!("lowerdir={},upperdir={},workdir={}", image.display(), upper.display(), work.display());
        run_checked(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!("{opts},nodev"))
                .arg(&merged),
        )?;
        *root = Some(merged.clone());
        drop(root);
        crate::rootfs::prepare_job_root(&merged, uid, gid, home)?;
        Ok(merged)
    }

    /// The job's writable root, once mounted.
    pub fn root(&self) -> Option<PathBuf> {
        self.root.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The backing image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Current usage of the workspace filesystem.
    pub fn usage(&self) -> Result<WorkspaceUsage> {
        let (total, used, free) = sys::fs_usage(&self.dir).map_err(io_err("statvfs", &self.dir))?;
        Ok(WorkspaceUsage { total_bytes: total, used_bytes: used, free_bytes: free })
    }

    /// True when (almost) no space is left: use it to classify a failed step's
    /// ENOSPC as "disk quota exceeded".
    pub fn is_full(&self) -> bool {
        self.usage().is_ok_and(|u| u.free_bytes < FULL_THRESHOLD.max(u.total_bytes / 100))
    }

    /// Unmounts and deletes the image. Idempotent.
    pub fn destroy(&self) -> Result<()> {
        let mut destroyed = self.destroyed.lock().unwrap_or_else(|e| e.into_inner());
        if *destroyed {
            return Ok(());
        }
        if let Some(root) = self.root.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if is_mountpoint(&root) {
                if let Err(e) = run_checked(Command::new("umount").arg(&root)) {
                    run_checked(Command::new("umount").arg("-l").arg(&root)).map_err(|_| e)?;
                }
            }
            let _ = fs::remove_dir(&root);
        }
        if is_mountpoint(&self.dir) {
            if let Err(e) = run_checked(Command::new("umount").arg(&self.dir)) {
                // Busy (e.g. a leaked process): detach lazily so it vanishes
                // from the namespace now and is freed when the last user goes.
                run_checked(Command::new("umount").arg("-l").arg(&self.dir)).map_err(|_| e)?;
            }
        }
        match fs::remove_file(&self.image) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("remove", &self.image)(e))
            }
            _ => {}
        }
        let _ = fs::remove_dir(&self.dir);
        *destroyed = true;
        Ok(())
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = self.destroy();
    }
}
