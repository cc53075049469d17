//! The sandbox launcher: the isolation boundary around a step, or around a
//! phase of a job whose steps kiln-init's agent starts inside it.
//!
//! The engine uses it like this (all calls are synchronous/blocking):
//!
//! ```text
//! let runtime = Runtime::locate(Isolation::Gvisor)?;   // missing => error with install hint
//! runtime.verify(&scratch_dir)?;                       // once per build: probe sandbox proves the tier
//! let ws = Workspace::create(&host_dir, disk_bytes, uid, gid)?; // per job: quota'd disk (workspace, home, tool cache)
//! let sb = Sandbox::prepare(&runtime, &spec, &scratch_dir)?;   // bundle + cgroups
//! // a step of its own:
//! let mut cmd = sb.command();          // caller pipes stdout/stderr, spawns (tokio)
//! ... on timeout/cancel: sb.kill()? or killer.kill()? // killer = sb.killer(), from any thread
//! let outcome = sb.finish(exit_status)?; // accounting + classification + teardown
//! // or a phase: PID 1 is `kiln-init --agent` (see [`agent`])
//! sb.start()?;                          // run --detach; steps go to the agent
//! let usage = sb.usage();               // per-step CPU / peak memory deltas
//! sb.wait_stopped(timeout); sb.stop()?; // after hanging up on the agent
//! ws.destroy()?;                        // unmount, remove
//! ```

use std::path::PathBuf;
use std::time::Duration;

pub mod agent;
mod cgroup;
mod error;
pub mod init;
mod rootfs;
mod runtime;
mod sandbox;
pub mod spec;
mod sys;
pub mod uml;
mod workspace;

pub use cgroup::{probe_cgroups, probe_cgroups_at, CgroupHost, CgroupMode};
pub use error::{Result, SandboxError};
pub use runtime::{GvisorPlatform, Runtime, RuntimeInfo, PLATFORM_ENV, RUNC_ENV, RUNSC_ENV, STATE_BASE};
pub use sandbox::{cleanup_stale, host_pids_max, CleanupReport, Killer, Sandbox, GVISOR_MEMORY_OVERHEAD};
pub use workspace::{Workspace, WorkspaceUsage, FULL_THRESHOLD};

/// The effective uid of this process (sandboxes need 0).
pub fn effective_uid() -> u32 {
    sys::euid()
}

/// Space on the filesystem that holds `path` (free: what an unprivileged
/// writer may still use).
pub fn disk_space(path: &std::path::Path) -> std::io::Result<WorkspaceUsage> {
    let (total_bytes, used_bytes, free_bytes) = sys::fs_usage(path)?;
    Ok(WorkspaceUsage { total_bytes, used_bytes, free_bytes })
}

/// Which OCI runtime runs the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// gVisor's `runsc`: a user-space kernel between the step and the host.
    Gvisor,
    /// `runc`: namespaces + seccomp + cgroups on the shared host kernel.
    Container,
}

/// Resource limits of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpus: f64,
    pub tmp_bytes: u64,
}

/// An extra bind mount (host path -> sandbox path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: String,
    pub writable: bool,
}

/// Everything needed to start one step's sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Unique container id (e.g. `kiln-<build>-<n>`).
    pub id: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// Host directory mounted read-write at `/workspace`.
    pub workspace: PathBuf,
    pub binds: Vec<Bind>,
    pub limits: Limits,
    pub uid: u32,
    pub gid: u32,
    /// Run `argv` under kiln's init (PID 1: secrets, egress relay, reaping).
    pub init: Option<InitSpec>,
    /// The job's writable root: a directory the job mounted over its image
    /// ([`Workspace::mount_root`]); what a step writes there stays for the
    /// job's later sandboxes. `None`: a read-only skeleton over the host's
    /// `/usr`, rebuilt for every sandbox.
    pub root: Option<PathBuf>,
}

/// How kiln's init wraps the step's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitSpec {
    /// Host path of the `kiln-init` binary, mounted read-only at `/kiln/init`.
    pub binary: PathBuf,
    /// The caller writes the step's secrets to the runtime's stdin (see
    /// [`init::encode_secrets`]); a private tmpfs is mounted at `/run/secrets`.
    pub secrets: bool,
    /// Egress relay: the host directory holding the proxy's Unix socket
    /// (mounted at `/kiln/egress`) and the port the relay listens on.
    pub egress: Option<(PathBuf, u16)>,
    /// The step agent (a phase sandbox, see [`agent`]): the host directory
    /// holding the socket kiln listens on, mounted at `/kiln/agent`.
    pub agent: Option<PathBuf>,
    /// The job's services, reached from this sandbox: the host directory
    /// holding kiln's socket per service port (mounted read-only at
    /// `/kiln/services`), and per address the init listens on, the socket
    /// file it relays to (see [`init::Forward`]).
    pub forwards: Option<(PathBuf, Vec<init::Forward>)>,
    /// A service sandbox: the host directory holding the socket kiln
    /// listens on for the service's connections (mounted read-only at
    /// `/kiln/dial`); the init dials it and relays what kiln asks for to a
    /// port on the sandbox's loopback.
    pub dial: Option<PathBuf>,
}

/// A resource limit the step ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Memory { limit_bytes: u64 },
    Pids { limit: u64 },
}

/// A running sandbox's counters so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    /// Peak memory since the last [`Sandbox::reset_peak_memory`].
    pub peak_memory_bytes: u64,
    /// Processes the kernel's OOM killer ended.
    pub oom_kills: u64,
    /// Times a fork failed at the process limit.
    pub pids_limit_events: u64,
}

/// How a sandbox ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub limit: Option<LimitHit>,
    pub cpu_seconds: f64,
    pub peak_memory_bytes: u64,
    pub wall: Duration,
}
