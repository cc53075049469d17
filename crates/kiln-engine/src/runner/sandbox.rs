//! The real job runner: jobs on OCI sandboxes.
//!
//! [`SandboxRunner`] takes a job from the build loop and runs it: the
//! job loop is in [`super::job`], a `run:` step in [`super::script`],
//! the sandbox around a step in [`super::phase`], its environment in
//! [`super::env`], the built-in actions in [`super::builtins`]. What
//! stays here is what the front ends configure: the runner's settings,
//! egress, the runtimes by tier, and cleanup after a crash.

use crate::limits::StepLimits;
pub use crate::runner::env::{HOME, STEP_GID, STEP_UID, TOOL_CACHE, WORKSPACE};
use crate::runner::job::{sanitize_id, JobRun};
pub use crate::runner::script::SOCKET_ROOT;
use crate::runner::{JobOutcome, JobRequest, JobRunner};
use kiln_sandbox::{Isolation, Runtime};
use kiln_workflow::IsolationTier;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Settings of the sandbox runner for one build.
#[derive(Debug)]
pub struct SandboxRunnerConfig {
    /// This build's scratch directory (workspaces, bundles, step files).
    pub build_dir: PathBuf,
    /// The source `actions/checkout` copies, if any.
    pub source: Option<PathBuf>,
    /// Paths inside `source` never copied (kiln's own state).
    pub source_skip: Vec<PathBuf>,
    /// The operator's tier: jobs may ask for a stronger one, never a weaker.
    pub isolation: Isolation,
    /// Verified runtimes by tier.
    pub runtimes: HashMap<TierKey, Runtime>,
    pub limits: StepLimits,
    /// Host path of `kiln-init`, PID 1 of every sandbox.
    pub init: PathBuf,
    /// The build's secrets, by name (handed only to steps bound to them).
    pub secrets: Arc<Vec<kiln_secrets::Secret>>,
    /// Scrubs every secret of the build (and known token shapes) from output.
    pub scrubber: Arc<kiln_secrets::Scrubber>,
    /// Egress through kiln's proxy for steps whose `network` allows hosts.
    pub egress: EgressConfig,
    /// The content-addressed store for `actions/upload-artifact` and
    /// `actions/download-artifact` (none: those steps fail with a reason).
    pub artifacts: Option<Arc<super::artifacts::ArtifactSink>>,
    /// The network of steps whose workflow names none (`kiln:` wins).
    pub default_network: kiln_workflow::NetworkSpec,
    /// Coverage uploaders refuse their job (the build loop skips it before
    /// it gets here) instead of being skipped with a notice.
    pub refuse_uploaders: bool,
    /// The steps of a phase share one sandbox (the default). Off: every
    /// step gets a sandbox of its own (for comparison in `kiln bench`).
    pub phase_sandboxes: bool,
    /// The images `runs-on` labels map to, in the operator's order.
    pub images: Vec<ImageChoice>,
    /// Tools fetched for setup actions (Node.js from the npm registry): the
    /// store they are kept in and the directory they are extracted to.
    pub tools: Option<(kiln_store::Store, PathBuf)>,
    /// Where `container:` images are found (the image store) and
    /// materialized.
    pub image_store: Option<(kiln_store::Store, PathBuf)>,
}

/// One entry of the operator's `runs-on` → image map, as found in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageChoice {
    /// A label pattern (`ubuntu-*`).
    pub pattern: String,
    /// The image's name (`kiln/runner`).
    pub name: String,
    /// The image's digest and its materialized directory; `None` when the
    /// store has no image of that name (the job runs on the host's `/usr`,
    /// and says so).
    pub found: Option<(kiln_store::Digest, PathBuf)>,
    /// `NAME=value` pairs the image's config sets (OCI images).
    pub env: Vec<String>,
}

/// What the egress proxy of every step of a build shares.
#[derive(Clone)]
pub struct EgressConfig {
    /// Private `ip:port` the operator opened explicitly (a registry mirror).
    pub open: Vec<std::net::SocketAddr>,
    /// Bytes in and out, capped per build.
    pub counters: Arc<kiln_egress::BuildCounters>,
    pub resolver: Arc<dyn kiln_egress::Resolver>,
    /// Host rules the operator added to `network: registries` (a mirror).
    pub registries: Vec<String>,
}

impl std::fmt::Debug for EgressConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressConfig").field("open", &self.open).field("counters", &self.counters).finish()
    }
}

impl EgressConfig {
    /// No operator openings, the system resolver, a 2 GiB cap.
    pub fn new(open: Vec<std::net::SocketAddr>, cap_bytes: u64) -> EgressConfig {
        EgressConfig {
            open,
            counters: kiln_egress::BuildCounters::new(cap_bytes),
            resolver: Arc::new(kiln_egress::SystemResolver),
            registries: Vec::new(),
        }
    }
}

/// The port kiln-init's egress relay listens on inside the sandbox.
pub const EGRESS_PORT: u16 = 3128;

/// Finds `kiln-init` next to the running binary (or at `$KILN_INIT`).
pub fn locate_init() -> Result<PathBuf, String> {
    let path = match std::env::var_os("KILN_INIT") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .map_err(|e| format!("locating kiln's own binary: {e}"))?
            .with_file_name("kiln-init"),
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        _ => Err(format!(
            "kiln-init not found at {} (it is built with kiln: `cargo build -p kiln`; or set KILN_INIT)",
            path.display()
        )),
    }
}

/// A hashable tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TierKey {
    Gvisor,
    Container,
}

impl TierKey {
    pub fn of(i: Isolation) -> TierKey {
        match i {
            Isolation::Gvisor => TierKey::Gvisor,
            Isolation::Container => TierKey::Container,
        }
    }
}

/// The tier a job runs on: the job may raise the operator's tier, not lower it.
pub fn effective_isolation(operator: Isolation, job: Option<IsolationTier>) -> (Isolation, bool) {
    match (operator, job) {
        (Isolation::Container, Some(IsolationTier::Gvisor)) => (Isolation::Gvisor, false),
        (Isolation::Gvisor, Some(IsolationTier::Container)) => (Isolation::Gvisor, true),
        (op, _) => (op, false),
    }
}

/// Runs jobs in sandboxes.
#[derive(Debug)]
pub struct SandboxRunner {
    pub(crate) cfg: SandboxRunnerConfig,
    pub(crate) next_id: AtomicU64,
    /// What starts the sandboxes (the OCI runtime; a recording fake in
    /// the unit tests).
    pub(crate) host: Arc<dyn super::host::SandboxHost>,
}

impl SandboxRunner {
    pub fn new(cfg: SandboxRunnerConfig) -> SandboxRunner {
        SandboxRunner { cfg, next_id: AtomicU64::new(0), host: Arc::new(super::host::RuntimeHost) }
    }
}

impl JobRunner for SandboxRunner {
    async fn run_job(&self, req: JobRequest) -> JobOutcome {
        let job = &req.plan.jobs[req.job];
        let mut run = JobRun::new(self, &req);
        let outcome = run.run(job).await;
        run.teardown().await;
        outcome
    }
}

/// Build directories under `state_dir` whose build is not running any more
/// (its process died before it could clean up).
pub fn leftover_builds(state_dir: &Path, store: &crate::store::Store) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(state_dir.join("builds")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| !matches!(store.build_status(id), Ok(Some(s)) if s == "running"))
        .collect()
}

/// Removes what interrupted builds left behind: their sandboxes, the
/// workspace mounts and the build directories.
pub fn cleanup_interrupted(state_dir: &Path, builds: &[String]) {
    for build in builds {
        let _ = kiln_sandbox::cleanup_stale(&format!("kiln-{}-", sanitize_id(build)), None);
        let prefix = format!("{}-", sanitize_id(build));
        if let Ok(rd) = std::fs::read_dir(SOCKET_ROOT) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = state_dir.join("builds").join(build);
        unmount_below(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Unmounts every mount point at or below `dir` (deepest first).
fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = std::process::Command::new("umount").arg("-l").arg(&p).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_cannot_lower_the_operators_tier() {
        assert_eq!(
            effective_isolation(Isolation::Gvisor, Some(IsolationTier::Container)),
            (Isolation::Gvisor, true)
        );
        assert_eq!(
            effective_isolation(Isolation::Container, Some(IsolationTier::Gvisor)),
            (Isolation::Gvisor, false)
        );
        assert_eq!(effective_isolation(Isolation::Container, None), (Isolation::Container, false));
    }
}
