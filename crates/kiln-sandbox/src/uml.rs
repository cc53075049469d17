//! A real cgroup v2 kernel on a host that mounts cgroup v1: Debian's
//! `user-mode-linux` package is a Linux kernel that runs as a process.
//! [`boot`] starts it with the host's `/` as its root (hostfs, read-write),
//! cgroup2 mounted at `/sys/fs/cgroup` (and, when asked, tmpfs on `/run`
//! and `/tmp`, so no runtime state reaches the host's), runs a shell
//! snippet as its init, and powers it off. What the snippet writes under
//! the scratch directory is how its results come back.
//!
//! For the tests of the v2 driver, of runc on v2 and of `kiln doctor` on a
//! v2 host (docs/sandbox.md says what was run this way).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What to run in the kernel.
#[derive(Debug, Clone)]
pub struct UmlRun<'a> {
    /// Shell commands, run as root after the mounts.
    pub commands: &'a str,
    /// The kernel's memory.
    pub mem_mb: u32,
    /// Mount tmpfs on `/run` and `/tmp` (then keep the scratch directory
    /// out of `/tmp`).
    pub tmpfs: bool,
    /// How long the commands may take before the kernel is killed.
    pub timeout: Duration,
}

/// How the kernel ended.
#[derive(Debug, Clone)]
pub struct UmlOutcome {
    /// It powered off by itself (else it was killed at the timeout).
    pub powered_off: bool,
    /// The last lines of its console, to say why when something failed.
    pub console_tail: String,
}

/// The kernel's binary, or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    ["/usr/bin/linux.uml", "/usr/bin/linux"].iter().map(PathBuf::from).find(|p| p.exists()).ok_or_else(|| {
        "`linux.uml` is not installed: Debian's user-mode-linux kernel gives these tests a real cgroup v2 \
         hierarchy; apt-get install user-mode-linux (scripts/install.sh does)"
            .to_string()
    })
}

/// Boots the kernel with `run` as its init, its files in `dir`
/// (`init.sh`, `console.log`), and waits until it powers off.
pub fn boot(dir: &Path, run: &UmlRun) -> Result<UmlOutcome, String> {
    let uml = binary()?;
    let mounts = if run.tmpfs {
        "mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t cgroup2 none /sys/fs/cgroup \\\n  \
         && mount -t tmpfs -o mode=755 tmpfs /run && mount -t tmpfs -o mode=1777 tmpfs /tmp"
    } else {
        "mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t cgroup2 none /sys/fs/cgroup"
    };
    let script = dir.join("init.sh");
    let text = format!(
        "#!/bin/sh\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin\n{mounts} \\\n  || echo 'mounting proc, sysfs, cgroup2 or tmpfs failed' > {dir}/mounts.log\n{commands}\necho o > /proc/sysrq-trigger\nsleep 30\n",
        dir = dir.display(),
        commands = run.commands,
    );
    std::fs::write(&script, text).map_err(|e| format!("{}: {e}", script.display()))?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let console_path = dir.join("console.log");
    let console =
        std::fs::File::create(&console_path).map_err(|e| format!("{}: {e}", console_path.display()))?;
    let console_err = console.try_clone().map_err(|e| e.to_string())?;
    let mut kernel = Command::new(&uml)
        .arg(format!("mem={}M", run.mem_mb))
        .args(["rootfstype=hostfs", "rootflags=/", "rw", "con=null", "con0=null,fd:1", "quiet"])
        .arg(format!("init={}", script.display()))
        .arg(format!("uml_dir={}", dir.display()))
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", uml.display()))?;
    let deadline = Instant::now() + run.timeout;
    let powered_off = loop {
        if kernel.try_wait().map_err(|e| e.to_string())?.is_some() {
            break true;
        }
        if Instant::now() >= deadline {
            let _ = kernel.kill();
            let _ = kernel.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&console_path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let console_tail = lines[lines.len().saturating_sub(40)..].join("\n");
    Ok(UmlOutcome { powered_off, console_tail })
}
