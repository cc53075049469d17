//! `kiln doctor`: whether this host can run kiln's sandboxes, one check per
//! line (ok / warn / fail) and what to do about each that is not ok.
//!
//! Exit status 0 when no check failed (warnings allowed), 1 when one did.

use crate::exit::Exit;
use std::path::{Path, PathBuf};

use clap::Args;
use kiln_sandbox::{CgroupMode, Isolation, Runtime};
use serde_json::json;

use crate::cli::IsolationArg;
use kiln_engine::runner::sandbox::SOCKET_ROOT;

/// A job's disk is a sparse 4 GiB image by default (docs/workflows.md):
/// below two of those free the state dir is a warning, below 1 GiB a failure.
const DISK_WARN: u64 = 8 << 30;
const DISK_FAIL: u64 = 1 << 30;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The tier `kiln run` will use: its runtime is required, the other
    /// one only warned about.
    #[arg(long, value_enum, default_value = "gvisor", env = "KILN_ISOLATION")]
    pub isolation: IsolationArg,
    /// The state dir whose free disk is checked.
    #[arg(long, env = "KILN_STATE_DIR", default_value = ".kiln")]
    pub state_dir: PathBuf,
    /// Also run a probe sandbox with each runtime found (as `kiln run`
    /// does before its first step).
    #[arg(long)]
    pub probe: bool,
    /// One JSON object: `{"ok": bool, "checks": [{name, status, detail, fix}]}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

#[derive(Debug)]
struct Check {
    name: String,
    status: Status,
    detail: String,
    fix: Option<String>,
}

fn ok(name: &str, detail: impl Into<String>) -> Check {
    Check { name: name.into(), status: Status::Ok, detail: detail.into(), fix: None }
}

fn bad(name: &str, status: Status, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name: name.into(), status, detail: detail.into(), fix: Some(fix.into()) }
}

pub fn doctor(args: DoctorArgs) -> Exit {
    let chosen = match args.isolation {
        IsolationArg::Gvisor => Isolation::Gvisor,
        IsolationArg::Container => Isolation::Container,
    };
    let root = root();
    let root_ok = root.status == Status::Ok;
    let mut checks = vec![kernel(), root];
    let mut runtimes = Vec::new();
    for tier in [Isolation::Gvisor, Isolation::Container] {
        let (check, rt) = runtime(tier, tier == chosen);
        checks.push(check);
        runtimes.extend(rt);
    }
    let cgroups = cgroups(chosen);
    let cgroups_ok = cgroups.status != Status::Fail;
    checks.push(cgroups);
    checks.push(kiln_init());
    checks.push(loop_devices());
    checks.push(mkfs());
    checks.push(overlayfs());
    checks.push(socket_dir());
    checks.push(disk(&args.state_dir));
    if args.probe {
        for rt in &runtimes {
            checks.push(probe(rt, root_ok && cgroups_ok));
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if args.json {
        let rows: Vec<_> = checks
            .iter()
            .map(|c| json!({"name": c.name, "status": c.status.as_str(), "detail": c.detail, "fix": c.fix}))
            .collect();
        println!("{}", json!({"ok": failed == 0, "checks": rows}));
    } else {
        print_table(&checks);
    }
    if failed > 0 {
        Exit::Failed
    } else {
        Exit::Ok
    }
}

fn print_table(checks: &[Check]) {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in checks {
        println!("{:<4}  {:<width$}  {}", c.status.as_str(), c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("{:<4}  {:<width$}  fix: {fix}", "", "");
        }
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    println!();
    match (failed, warned) {
        (0, 0) => println!("kiln doctor: this host can run kiln's sandboxes"),
        (0, w) => println!("kiln doctor: this host can run kiln's sandboxes ({w} warning(s))"),
        (f, _) => println!("kiln doctor: {f} required check(s) failed"),
    }
}

fn kernel() -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    ok("kernel", format!("Linux {}", release.trim()))
}

fn root() -> Check {
    match kiln_sandbox::effective_uid() {
        0 => ok("root", "running as root"),
        uid => bad(
            "root",
            Status::Fail,
            format!("running as uid {uid}; sandboxes need root (OCI runtimes, cgroups, loop mounts)"),
            "run kiln as root",
        ),
    }
}

/// The date in a runsc version (`runsc version 0.0~20240729.0`,
/// `runsc version release-20240729.0`).
fn runsc_date(version: &str) -> Option<u32> {
    let bytes = version.as_bytes();
    (0..bytes.len().saturating_sub(7)).find_map(|i| {
        let run = &bytes[i..i + 8];
        let starts = i == 0 || !bytes[i - 1].is_ascii_digit();
        if !starts || !run.starts_with(b"20") || !run.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(run).ok()?.parse().ok()
    })
}

fn runtime(tier: Isolation, required: bool) -> (Check, Option<Runtime>) {
    let name = tier.binary_name();
    let env = match tier {
        Isolation::Gvisor => kiln_sandbox::RUNSC_ENV,
        Isolation::Container => kiln_sandbox::RUNC_ENV,
    };
    let missing = if required { Status::Fail } else { Status::Warn };
    let why = if required {
        String::new()
    } else {
        match tier {
            Isolation::Gvisor => " (needed by jobs that ask for `isolation: gvisor`)".into(),
            Isolation::Container => " (only needed with --isolation container)".into(),
        }
    };
    let rt = match Runtime::locate(tier) {
        Ok(rt) => rt,
        Err(e @ kiln_sandbox::SandboxError::Config { .. }) => {
            let fix = format!("unset {} or set it to systrap, ptrace or kvm", kiln_sandbox::PLATFORM_ENV);
            return (bad(name, Status::Fail, e.to_string(), fix), None);
        }
        Err(_) => {
            let detail = match std::env::var_os(env) {
                Some(p) => format!("{env}={} is not an executable file{why}", PathBuf::from(p).display()),
                None => format!("`{name}` not found on PATH, /usr/sbin or /usr/bin{why}"),
            };
            let fix = format!("{}, or point {env} at the binary", tier.install_hint());
            return (bad(name, missing, detail, fix), None);
        }
    };
    let version = match rt.version() {
        Ok(v) => v,
        Err(e) => {
            let fix = format!("reinstall it: {}", tier.install_hint());
            return (bad(name, missing, format!("{}: {e}", rt.binary().display()), fix), None);
        }
    };
    if tier == Isolation::Gvisor && runsc_date(&version).is_some_and(|d| d < 20240101) {
        let detail =
            format!("{version} ({}): the 2022 runsc breaks ls/stat inside sandboxes", rt.binary().display());
        return (bad(name, missing, detail, tier.install_hint()), None);
    }
    let platform = match rt.platform() {
        Some(p) => format!(", platform {} ({})", p.name(), kiln_sandbox::PLATFORM_ENV),
        None => String::new(),
    };
    (ok(name, format!("{version} ({}){platform}", rt.binary().display())), Some(rt))
}

fn cgroups(chosen: Isolation) -> Check {
    let host = match kiln_sandbox::probe_cgroups() {
        Ok(h) => h,
        Err(e) => return bad(
            "cgroups",
            Status::Fail,
            e.to_string(),
            "mount cgroup2 at /sys/fs/cgroup (or the v1 memory, pids, cpu and cpuacct controllers below it)",
        ),
    };
    let v2 = host.v2_controllers.as_ref().map(|c| c.join(" "));
    let detail = match host.mode {
        CgroupMode::V2 => {
            format!("v2 (unified) at {}: controllers {}", host.root.display(), v2.unwrap_or_default())
        }
        CgroupMode::Hybrid => format!(
            "hybrid: v1 controllers {} used; v2 at {}/unified has {}",
            host.needed.join(", "),
            host.root.display(),
            v2.map(|c| if c.is_empty() { "no controllers".into() } else { c }).unwrap_or_default()
        ),
        CgroupMode::V1 => format!("v1: controllers {}", host.needed.join(", ")),
    };
    if !host.missing.is_empty() {
        let fix = match host.mode {
            CgroupMode::V2 => format!(
                "make {} available in {}/cgroup.controllers (a controller bound to a v1 hierarchy is not; boot with systemd.unified_cgroup_hierarchy=1)",
                host.missing.join(", "),
                host.root.display()
            ),
            _ => format!(
                "mount the v1 controller(s) {} at {}/<controller>",
                host.missing.join(", "),
                host.root.display()
            ),
        };
        return bad("cgroups", Status::Fail, format!("{detail}; missing {}", host.missing.join(", ")), fix);
    }
    // runsc treats cpu, cpuset, io, memory and pids as mandatory v2
    // controllers (runsc/cgroup/cgroup_v2.go).
    if host.mode == CgroupMode::V2 && chosen == Isolation::Gvisor {
        let have = host.v2_controllers.unwrap_or_default();
        let lacking: Vec<&str> =
            ["cpuset", "io"].into_iter().filter(|c| !have.iter().any(|h| h == c)).collect();
        if !lacking.is_empty() {
            return bad(
                "cgroups",
                Status::Warn,
                format!("{detail}; runsc also wants {}", lacking.join(", ")),
                format!("enable {} in the root's cgroup.subtree_control", lacking.join(", ")),
            );
        }
    }
    ok("cgroups", detail)
}

fn kiln_init() -> Check {
    let path = std::env::current_exe().map(|p| p.with_file_name("kiln-init")).unwrap_or_default();
    if path.is_file() {
        ok("kiln-init", path.display().to_string())
    } else {
        bad(
            "kiln-init",
            Status::Fail,
            format!("{} is missing (PID 1 of every sandbox)", path.display()),
            "cargo build --release -p kiln builds it next to kiln; install both together",
        )
    }
}

fn loop_devices() -> Check {
    use std::os::unix::fs::FileTypeExt;
    let ctl = Path::new("/dev/loop-control");
    match std::fs::metadata(ctl) {
        Ok(m) if m.file_type().is_char_device() => {
            ok("loop devices", "/dev/loop-control (per-job quota disks)")
        }
        _ => bad(
            "loop devices",
            Status::Fail,
            "/dev/loop-control is missing: each job's disk is a loop-mounted ext4 image",
            "modprobe loop (in a container: give it the host's loop devices)",
        ),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn mkfs() -> Check {
    match on_path("mkfs.ext4") {
        Some(p) => ok("mkfs.ext4", p.display().to_string()),
        None => {
            bad("mkfs.ext4", Status::Fail, "mkfs.ext4 not found (job disks)", "apt-get install e2fsprogs")
        }
    }
}

fn overlayfs() -> Check {
    let listed = std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"));
    if listed {
        return ok("overlayfs", "in /proc/filesystems (jobs' writable roots on images)");
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let module = Path::new("/lib/modules").join(release.trim()).join("kernel/fs/overlayfs");
    if module.is_dir() {
        return ok("overlayfs", format!("module in {} (loaded on first mount)", module.display()));
    }
    bad(
        "overlayfs",
        Status::Fail,
        "overlay is not in /proc/filesystems and no module was found: jobs on images cannot get a writable root",
        "modprobe overlay (or run with --no-images)",
    )
}

/// Binds a Unix socket where the engine will (in a directory of its own,
/// removed again), as the engine does for each sandbox's sockets.
fn socket_dir() -> Check {
    let name = "egress sockets";
    let root = Path::new(SOCKET_ROOT);
    if let Ok(m) = std::fs::symlink_metadata(root) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !m.is_dir() {
            return bad(
                name,
                Status::Fail,
                format!("{SOCKET_ROOT} is not a directory"),
                format!("rm {SOCKET_ROOT}"),
            );
        }
        let mode = m.permissions().mode() & 0o777;
        if m.uid() != 0 || mode & 0o022 != 0 {
            return bad(
                name,
                Status::Fail,
                format!("{SOCKET_ROOT} is owned by uid {} with mode {mode:o}: others could replace kiln's sockets", m.uid()),
                format!("chown root:root {SOCKET_ROOT} && chmod 755 {SOCKET_ROOT}"),
            );
        }
    }
    // Where to try: the directory itself, or the nearest one that exists.
    let base = root.ancestors().find(|p| p.is_dir()).unwrap_or(Path::new("/"));
    let dir = base.join(format!(".kiln-doctor-{}", std::process::id()));
    let tried = std::fs::create_dir(&dir)
        .and_then(|_| std::os::unix::net::UnixListener::bind(dir.join("s")).map(drop));
    let _ = std::fs::remove_dir_all(&dir);
    match tried {
        Ok(()) if base == root => ok(name, format!("{SOCKET_ROOT}: a Unix socket can be bound")),
        Ok(()) => ok(
            name,
            format!("{SOCKET_ROOT} will be made in {} (a Unix socket can be bound there)", base.display()),
        ),
        Err(e) => bad(
            name,
            Status::Fail,
            format!("cannot bind a Unix socket in {}: {e}", base.display()),
            "run as root with a writable /run (a tmpfs)",
        ),
    }
}

fn human(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn disk(state_dir: &Path) -> Check {
    let name = "state dir disk";
    let abs = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let Some(existing) = abs.ancestors().find(|p| p.exists()) else {
        return bad(
            name,
            Status::Fail,
            format!("no existing directory above {}", abs.display()),
            "create it",
        );
    };
    match kiln_sandbox::disk_space(existing) {
        Ok(u) => {
            let detail =
                format!("{} free of {} at {}", human(u.free_bytes), human(u.total_bytes), existing.display());
            let fix = "free space there or point --state-dir / KILN_STATE_DIR at a larger disk (each job's disk is a sparse image there, 4 GiB by default)";
            if u.free_bytes < DISK_FAIL {
                bad(name, Status::Fail, detail, fix)
            } else if u.free_bytes < DISK_WARN {
                bad(name, Status::Warn, detail, fix)
            } else {
                ok(name, detail)
            }
        }
        Err(e) => bad(name, Status::Fail, format!("statvfs {}: {e}", existing.display()), "check the path"),
    }
}

fn probe(rt: &Runtime, can_run: bool) -> Check {
    let name = format!("probe {}", rt.isolation().binary_name());
    if !can_run {
        return bad(
            &name,
            Status::Fail,
            "not run: root and cgroups are needed first",
            "fix the checks above",
        );
    }
    let scratch = match tempfile::Builder::new().prefix("kiln-doctor-").tempdir() {
        Ok(d) => d,
        Err(e) => return bad(&name, Status::Fail, format!("scratch dir: {e}"), "check /tmp"),
    };
    match rt.verify(scratch.path()) {
        Ok(info) => ok(&name, format!("a probe sandbox ran: {}", info.kernel)),
        Err(e) => {
            bad(&name, Status::Fail, e.to_string(), "see the error; `kiln run` would fail the same way")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runsc_dates() {
        assert_eq!(runsc_date("runsc version 0.0~20240729.0"), Some(20240729));
        assert_eq!(runsc_date("runsc version release-20221212.0"), Some(20221212));
        assert_eq!(runsc_date("runsc version 0.0~20221219.0"), Some(20221219));
        assert_eq!(runsc_date("runsc version go1.22"), None);
        assert_eq!(runsc_date(""), None);
        assert_eq!(runsc_date("é20240729"), Some(20240729));
    }
}
