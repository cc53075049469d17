//! One step's sandbox: bundle + cgroups, the foreground run command, kill,
//! accounting/classification and teardown.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cgroup::{self, CgroupLimits, StepCgroups};
use crate::error::{io_err, Result, SandboxError};
use crate::runtime::Runtime;
use crate::spec::{build_spec, write_rootfs};
use crate::{sys, Isolation, LimitHit, Outcome, SandboxSpec};

/// Extra memory allowed on the gVisor tier for the sentry itself (its Go heap
/// and page tables are charged to the same cgroup as the step's memory).
pub const GVISOR_MEMORY_OVERHEAD: u64 = 48 << 20;

/// Host pids budget of kiln's parent pids cgroup for a step limit of `pids`.
///
/// runc: the step's tasks are host tasks, so the limit is exact.
///
/// gVisor (found by experiment, runsc 20240729, systrap platform): the sentry
/// does NOT apply `linux.resources.pids` inside the sandbox, and its own host
/// footprint is ~20-25 Go threads at idle. Threads of the step cost almost
/// no host tasks (200 python threads: 23 host tasks), but every step
/// *process* (address space) gets a systrap stub process: 300 sleeping
/// processes = ~700 host tasks (≈2.3 per process). When the host pids limit
/// is hit the sentry cannot create a stub ("creating stub process: resource
/// temporarily unavailable") and panics: the whole sandbox dies at once (runsc
/// exits 2/128+n), nothing escapes, and the parent's `pids.peak` reaches
/// `pids.max`, which is how the hit is classified. So on gVisor a pids limit of
/// `n` step processes is enforced as `3n + headroom` host tasks, and the step
/// is killed (not throttled with EAGAIN) when it exceeds it.
pub fn host_pids_max(isolation: Isolation, pids: u64) -> u64 {
    match isolation {
        Isolation::Container => pids.max(1),
        Isolation::Gvisor => {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
            pids.max(1).saturating_mul(3) + 64 + 4 * cpus
        }
    }
}

fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(SandboxError::Invalid(format!("sandbox id {id:?} must be 1-128 chars of [A-Za-z0-9_.-]")))
    }
}

/// Shared state of a sandbox, also held by [`Killer`] handles.
#[derive(Debug)]
struct Inner {
    id: String,
    runtime: Runtime,
    bundle: PathBuf,
    cgroups: StepCgroups,
    /// The step's memory limit as asked for: what a hit is reported as (the
    /// cgroup's limit also holds the gVisor sentry's headroom).
    memory_requested: u64,
    /// The sandbox connects to a host Unix socket (egress relay).
    host_uds: bool,
    pids_limit: u64,
    started: OnceLock<Instant>,
    /// Every process of the sandbox is known to be gone (its PID 1 ended
    /// and the runtime's own processes with it): nothing to signal.
    exited: std::sync::atomic::AtomicBool,
    /// Serializes kill/teardown; true once torn down.
    torn_down: Mutex<bool>,
}

impl Inner {
    fn kill(&self) -> Result<()> {
        if self.exited.load(std::sync::atomic::Ordering::Acquire) {
            // Asking runsc to signal a sandbox that is gone costs it seconds.
            self.cgroups.kill_all();
            return Ok(());
        }
        // The runtime's own view first: every process of the container.
        let res = cgroup_kill_via_runtime(&self.runtime, &self.id);
        // Backstop: SIGKILL every host task in kiln's cgroups, a few rounds to
        // catch tasks forked while we were killing.
        for _ in 0..5 {
            if self.cgroups.kill_all() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        res
    }

    /// Force-deletes the container, removes cgroups and the bundle. Idempotent.
    fn teardown(&self) -> Result<()> {
        let mut done = self.torn_down.lock().unwrap_or_else(|e| e.into_inner());
        if *done {
            return Ok(());
        }
        if !self.exited.load(std::sync::atomic::Ordering::Acquire) {
            let _ = cgroup_kill_via_runtime(&self.runtime, &self.id);
        }
        self.cgroups.kill_all();
        let del = delete_container(
            &self.runtime,
            &self.id,
            !self.exited.load(std::sync::atomic::Ordering::Acquire),
        );
        let cg = self.cgroups.remove();
        let bundle = match fs::remove_dir_all(&self.bundle) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err("remove bundle", &self.bundle)(e))
            }
            _ => Ok(()),
        };
        *done = true;
        del.and(cg).and(bundle)
    }
}

/// `<rt> kill --all <id> KILL`; "not running / does not exist" is success.
fn cgroup_kill_via_runtime(rt: &Runtime, id: &str) -> Result<()> {
    let mut cmd = rt.base_command();
    cmd.args(["kill", "--all", id, "KILL"]);
    match crate::runtime::run_checked(&mut cmd) {
        Ok(_) => Ok(()),
        Err(SandboxError::Runtime { stderr, .. }) if is_gone(&stderr) => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_gone(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("does not exist")
        || s.contains("not exist")
        || s.contains("not running")
        || s.contains("no such")
        || s.contains("not found")
        || s.contains("container is stopped")
        || s.contains("cannot be signaled")
}

/// `<rt> delete [--force] <id>`; "does not exist" is success. Without
/// `--force` for a sandbox whose processes are all gone: runsc's forced
/// delete first tries to stop the (dead) sandbox and waits for it. The
/// runtime may not have noticed the stop ("not stopped": runsc only learns
/// it by waiting up to ~1.5 s for a sandbox that is gone): then the forced
/// delete runs in the background (see [`delete_in_background`]), so no
/// ended sandbox stays in the runtime's state directory and nobody waits
/// for it.
fn delete_container(rt: &Runtime, id: &str, force: bool) -> Result<()> {
    if !rt.state_root().exists() {
        return Ok(());
    }
    let mut cmd = rt.base_command();
    cmd.arg("delete");
    if force {
        cmd.arg("--force");
    }
    cmd.arg(id);
    match crate::runtime::run_checked(&mut cmd) {
        Ok(_) => Ok(()),
        Err(SandboxError::Runtime { stderr, .. }) if is_gone(&stderr) => Ok(()),
        Err(SandboxError::Runtime { stderr, .. }) if !force && is_not_stopped(&stderr) => {
            delete_in_background(rt, id)
        }
        Err(e) => Err(e),
    }
}

/// `<rt> delete --force <id>` as a process of its own that kiln does not
/// wait for: it outlives a `kiln run` that ends first (and is then reaped
/// by init). Only for a sandbox none of whose processes is left.
fn delete_in_background(rt: &Runtime, id: &str) -> Result<()> {
    let mut cmd = rt.base_command();
    cmd.args(["delete", "--force", id]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let desc = format!("{cmd:?}");
    let mut child =
        cmd.spawn().map_err(|e| SandboxError::Runtime { command: desc, stderr: e.to_string() })?;
    // Reaped here while this process lives.
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// The runtime refused a plain delete because it still counts the
/// container as running.
fn is_not_stopped(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("not stopped") || s.contains("is running") || s.contains("without --force")
}

/// A prepared sandbox for one step.
///
/// `Sandbox` is `Send + Sync`: [`Sandbox::kill`] takes `&self`. Since
/// [`Sandbox::finish`] consumes the sandbox, a task that owns it while another
/// one waits for the timeout should hand out a [`Killer`] (cheap, cloneable,
/// `Send + Sync + 'static`) instead of sharing the `Sandbox`.
#[derive(Debug)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

/// A cloneable handle that kills a sandbox's processes from any thread.
/// Killing after the sandbox finished is a harmless no-op.
#[derive(Debug, Clone)]
pub struct Killer {
    inner: Arc<Inner>,
}

impl Killer {
    /// Kills every process of the sandbox now (see [`Sandbox::kill`]).
    pub fn kill(&self) -> Result<()> {
        if *self.inner.torn_down.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(());
        }
        self.inner.kill()
    }
}

impl Sandbox {
    /// Writes the bundle under `scratch_dir/<id>/` and creates kiln's cgroups.
    pub fn prepare(runtime: &Runtime, spec: &SandboxSpec, scratch_dir: &Path) -> Result<Sandbox> {
        Self::prepare_with(runtime, spec, scratch_dir, true)
    }

    /// `seccomp: false` is only for kiln's own trusted probe (verify needs
    /// `syslog` to read the gVisor banner).
    pub(crate) fn prepare_with(
        runtime: &Runtime,
        spec: &SandboxSpec,
        scratch_dir: &Path,
        seccomp: bool,
    ) -> Result<Sandbox> {
        check_id(&spec.id)?;
        if sys::euid() != 0 {
            return Err(SandboxError::Host("kiln-sandbox must run as root (OCI runtimes + cgroups)".into()));
        }
        let driver = cgroup::check_host()?;
        let mut cgroups = StepCgroups::new(driver, &spec.id);
        let mut oci = build_spec(runtime.isolation(), spec, &cgroups.cgroups_path())?;
        if !seccomp {
            if let Some(linux) = oci.linux_mut() {
                linux.set_seccomp(None);
            }
        }
        let bundle = scratch_dir.join(&spec.id);
        if bundle.exists() {
            return Err(SandboxError::Invalid(format!(
                "bundle {} already exists (id reused?)",
                bundle.display()
            )));
        }
        let memory_limit = match runtime.isolation() {
            Isolation::Container => spec.limits.memory_bytes,
            Isolation::Gvisor => spec.limits.memory_bytes.saturating_add(GVISOR_MEMORY_OVERHEAD),
        };
        let pids_limit = host_pids_max(runtime.isolation(), spec.limits.pids);
        let cpu = (spec.limits.cpus > 0.0).then(|| {
            let period = 100_000u64;
            (((spec.limits.cpus * period as f64) as u64).max(1000), period)
        });
        // Create the cgroups first (and tear them down on any later error).
        let created = cgroups.create(&CgroupLimits { memory_bytes: memory_limit, pids_max: pids_limit, cpu });
        let inner = Arc::new(Inner {
            id: spec.id.clone(),
            runtime: runtime.clone(),
            bundle: bundle.clone(),
            cgroups,
            memory_requested: spec.limits.memory_bytes,
            host_uds: spec.init.as_ref().is_some_and(|i| {
                i.egress.is_some() || i.agent.is_some() || i.forwards.is_some() || i.dial.is_some()
            }),
            pids_limit: spec.limits.pids,
            started: OnceLock::new(),
            exited: std::sync::atomic::AtomicBool::new(false),
            torn_down: Mutex::new(false),
        });
        // From here on, Drop of `sb` cleans up whatever was created.
        let sb = Sandbox { inner };
        fs::create_dir_all(&bundle).map_err(io_err("create", &bundle))?;
        match &spec.root {
            Some(root) => crate::rootfs::mount_points(root, &oci)?,
            None => write_rootfs(&bundle.join("rootfs"), spec, &oci)?,
        }
        oci.save(bundle.join("config.json"))?;
        created?;
        fs::create_dir_all(runtime.state_root()).map_err(io_err("create", runtime.state_root()))?;
        Ok(sb)
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The bundle directory (config.json + rootfs).
    pub fn bundle(&self) -> &Path {
        &self.inner.bundle
    }

    /// kiln's parent cgroup directory of this sandbox in `controller`'s
    /// hierarchy (cgroup v2: the one directory of every controller).
    pub fn cgroup_dir(&self, controller: &str) -> PathBuf {
        self.inner.cgroups.dir(controller)
    }

    /// The foreground command running the sandbox (`<rt> --root <state> ...
    /// run --bundle <b> <id>`), stdin null, no terminal. The caller sets
    /// stdout/stderr and spawns it. Wall time is measured from this call.
    pub fn command(&self) -> Command {
        let _ = self.inner.started.get_or_init(Instant::now);
        let mut cmd = self.inner.runtime.base_command();
        if self.inner.host_uds && self.inner.runtime.isolation() == Isolation::Gvisor {
            // The egress relay connects to the proxy's socket on the host.
            cmd.arg("--host-uds=open");
        }
        cmd.arg("run").arg("--bundle").arg(&self.inner.bundle).arg(&self.inner.id);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Starts the sandbox's own process in the background (`run --detach`)
    /// and returns once it runs: a sandbox that several commands are then
    /// started in (the steps of one phase, by its agent: see
    /// [`crate::agent`]).
    /// What the runtime or the sandbox's process print goes to a file in the
    /// bundle, quoted in the error if the start fails.
    pub fn start(&self) -> Result<()> {
        let _ = self.inner.started.get_or_init(Instant::now);
        let log_path = self.inner.bundle.join("start.log");
        let log = fs::File::create(&log_path).map_err(io_err("create", &log_path))?;
        let log2 = log.try_clone().map_err(io_err("dup", &log_path))?;
        let mut cmd = self.inner.runtime.base_command();
        if self.inner.host_uds && self.inner.runtime.isolation() == Isolation::Gvisor {
            cmd.arg("--host-uds=open");
        }
        cmd.arg("run").arg("--detach").arg("--bundle").arg(&self.inner.bundle).arg(&self.inner.id);
        // The sandbox's process inherits these: never a pipe kiln would
        // wait on for EOF.
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let desc = format!("{cmd:?}");
        let status = cmd
            .status()
            .map_err(|e| SandboxError::Runtime { command: desc.clone(), stderr: e.to_string() })?;
        if status.success() {
            Ok(())
        } else {
            let said = fs::read_to_string(&log_path).unwrap_or_default();
            Err(SandboxError::Runtime { command: desc, stderr: format!("{} ({status})", said.trim()) })
        }
    }

    /// The counters so far (CPU since the start, peak memory since the last
    /// reset, limit events since the start).
    pub fn usage(&self) -> crate::Usage {
        let acct = self.inner.cgroups.accounting();
        crate::Usage {
            cpu_seconds: acct.cpu_ns as f64 / 1e9,
            peak_memory_bytes: acct.peak_memory,
            oom_kills: acct.oom_kills,
            pids_limit_events: acct.pids_max_events,
        }
    }

    /// Starts measuring peak memory afresh (per step in a shared sandbox).
    pub fn reset_peak_memory(&self) {
        self.inner.cgroups.reset_peak_memory();
    }

    /// Waits up to `timeout` for every process of the sandbox (the
    /// runtime's own included) to be gone, as after its PID 1 exited; true
    /// if they are. Ending a sandbox this way is much cheaper under gVisor
    /// than killing a running one.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self.inner.cgroups.pids().is_empty() {
                self.inner.exited.store(true, std::sync::atomic::Ordering::Release);
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Ends a started sandbox: every process in it is killed, the last
    /// counters are read, and everything is torn down.
    pub fn stop(self) -> Result<Outcome> {
        let wall = self.inner.started.get().map_or(Duration::ZERO, |t| t.elapsed());
        let _ = self.inner.kill();
        let acct = self.inner.cgroups.accounting();
        self.inner.teardown()?;
        Ok(Outcome {
            exit_code: None,
            signal: None,
            limit: None,
            cpu_seconds: acct.cpu_ns as f64 / 1e9,
            peak_memory_bytes: acct.peak_memory,
            wall,
        })
    }

    /// A cloneable handle to [`Sandbox::kill`] usable from other threads/tasks.
    pub fn killer(&self) -> Killer {
        Killer { inner: Arc::clone(&self.inner) }
    }

    /// Kills every process of the sandbox now: `<rt> kill --all <id> KILL`,
    /// then SIGKILL of every host task left in kiln's cgroups. The foreground
    /// `run` command then exits; call [`Sandbox::finish`] with its status.
    pub fn kill(&self) -> Result<()> {
        self.inner.kill()
    }

    /// Reads accounting, classifies limit hits and tears everything down.
    pub fn finish(self, status: ExitStatus) -> Result<Outcome> {
        let wall = self.inner.started.get().map_or(Duration::ZERO, |t| t.elapsed());
        // Make sure nothing is still running before the counters are final.
        let _ = self.inner.kill();
        let acct = self.inner.cgroups.accounting();
        let exit_code = status.code();
        let signal =
            status.signal().or_else(|| exit_code.filter(|c| (129..=128 + 64).contains(c)).map(|c| c - 128));
        let killed = signal == Some(libc::SIGKILL);
        let limit = if acct.oom_kills > 0 || (acct.mem_failcnt > 0 && killed) {
            Some(LimitHit::Memory { limit_bytes: self.inner.memory_requested })
        } else if acct.pids_max_events > 0 || acct.pids_max.is_some_and(|m| acct.pids_peak >= m) {
            Some(LimitHit::Pids { limit: self.inner.pids_limit })
        } else {
            None
        };
        self.inner.teardown()?;
        Ok(Outcome {
            exit_code,
            signal,
            limit,
            cpu_seconds: acct.cpu_ns as f64 / 1e9,
            peak_memory_bytes: acct.peak_memory,
            wall,
        })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Unfinished (engine error, panic...): kill + delete best-effort.
        if *self.inner.torn_down.lock().unwrap_or_else(|e| e.into_inner()) {
            return;
        }
        let _ = self.inner.kill();
        let _ = self.inner.teardown();
    }
}

/// What [`cleanup_stale`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    pub containers: Vec<String>,
    pub cgroups: Vec<String>,
    pub bundles: Vec<PathBuf>,
    /// What could not be removed (cleanup goes on past each failure).
    pub errors: Vec<String>,
}

/// Removes leftovers of a crashed engine whose id starts with `prefix`:
/// containers in kiln's runc/runsc state dirs, kiln cgroups, and bundle
/// directories in `scratch_dir` (if given).
pub fn cleanup_stale(prefix: &str, scratch_dir: Option<&Path>) -> Result<CleanupReport> {
    if prefix.is_empty() {
        return Err(SandboxError::Invalid("empty cleanup prefix".into()));
    }
    let mut report = CleanupReport::default();
    for iso in [Isolation::Gvisor, Isolation::Container] {
        let Ok(rt) = Runtime::locate(iso) else {
            continue;
        };
        for id in rt.list().unwrap_or_default() {
            if id.starts_with(prefix) {
                // A container caught mid-creation may refuse a first delete.
                let mut last = None;
                for attempt in 0..5 {
                    let _ = cgroup_kill_via_runtime(&rt, &id);
                    match delete_container(&rt, &id, true) {
                        Ok(()) => {
                            last = None;
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                    std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
                }
                match last {
                    None => report.containers.push(id),
                    Some(e) => report.errors.push(format!("container {id}: {e}")),
                }
            }
        }
    }
    for name in cgroup::stale(prefix) {
        match cgroup::remove_tree(&name, Duration::from_secs(5)) {
            Ok(()) => report.cgroups.push(name),
            Err(e) => report.errors.push(format!("cgroup {name}: {e}")),
        }
    }
    if let Some(dir) = scratch_dir {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix)
                    && e.path().join("config.json").exists()
                {
                    match fs::remove_dir_all(e.path()) {
                        Ok(()) => report.bundles.push(e.path()),
                        Err(err) => report.errors.push(format!("bundle {}: {err}", e.path().display())),
                    }
                }
            }
        }
    }
    Ok(report)
}
