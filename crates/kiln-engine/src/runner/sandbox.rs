//! The real job runner: every step in a fresh sandbox over the job's
//! workspace.
//!
//! Per job: a quota'd workspace (loop-mounted image, owned by the step uid).
//! Per step: the script and the step files are prepared on the host, the
//! sandbox is started, its pipes are framed into log entries as they arrive,
//! and the step is stopped when it hits a limit (wall time, log bytes) or the
//! job is cancelled; memory and process limits are enforced by the sandbox's
//! cgroups and classified from its accounting.
//!
//! Seams for later rings: the step's environment is assembled in one place
//! ([`step_env`]) where secrets will be bound by phase, and every output line
//! passes through [`StepLogger::line`], where the scrubber will sit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_sandbox::{Bind, Isolation, Runtime, Sandbox, SandboxSpec, Workspace};
use kiln_workflow::{
    BoolOrExpr, Contexts, IsolationTier, JobResult, PlannedJob, Shell, ShellError, ShellSpec, StatusFns,
    StepAction, StepSpec, Template,
};
use serde_json::{json, Map, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Notify};

use super::stepfiles::{parse_assignments, read_bounded};
use super::{JobOutcome, JobRequest, JobRunner, StepRecord, StepStatus};
use crate::event::Event;
use crate::limits::{StepLimits, StopReason};
use crate::log::{LineFramer, Stream};

/// Where the job's workspace is mounted inside every sandbox.
pub const WORKSPACE: &str = "/workspace";
/// The job's home directory inside its sandboxes (GitHub's path), on the
/// job's disk: what a step leaves there the next step finds.
pub const HOME: &str = "/home/runner";
/// `RUNNER_TOOL_CACHE` inside the sandboxes, on the job's disk.
pub const TOOL_CACHE: &str = "/opt/hostedtoolcache";
/// `RUNNER_TEMP`, relative to the home directory.
const RUNNER_TEMP_REL: &str = "work/_temp";
/// Read-only directory with the step's script.
const STEP_DIR: &str = "/kiln/step";
/// Writable directory with the step files.
const FILES_DIR: &str = "/kiln/files";
/// Sourced by bash (`BASH_ENV`) before a step's script; writes the marker.
const STARTED_SCRIPT: &str = "started.sh";
/// Present once a bash step's script began: a failed step without it never
/// started, which is the runtime's failure, not the user's.
const STARTED_MARKER: &str = "started";
/// The unprivileged uid/gid steps run as.
pub const STEP_UID: u32 = 10001;
pub const STEP_GID: u32 = 10001;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// A step's running egress proxy.
struct StepProxy {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    serve: tokio::task::JoinHandle<()>,
    events: tokio::task::JoinHandle<()>,
}

impl StepProxy {
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.serve).await;
        self.serve.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.events).await;
    }
}

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
    cfg: SandboxRunnerConfig,
    next_id: AtomicU64,
}

impl SandboxRunner {
    pub fn new(cfg: SandboxRunnerConfig) -> SandboxRunner {
        SandboxRunner { cfg, next_id: AtomicU64::new(0) }
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

/// The state of one job while it runs.
struct JobRun<'a> {
    runner: &'a SandboxRunner,
    req: &'a JobRequest,
    dir: PathBuf,
    workspace: Option<Workspace>,
    /// `hashFiles()` over the workspace.
    hasher: Option<super::globs::WorkspaceHasher>,
    /// The commands `kiln/detect` chose, for the provenance of the package.
    detected_commands: Option<Vec<String>>,
    /// A build-phase step of this job ran with a network.
    network_in_build: bool,
    limits: StepLimits,
    isolation: Isolation,
    /// The job's `env` plus everything `$GITHUB_ENV` added.
    env: Map<String, Value>,
    /// `$GITHUB_PATH` entries, newest first.
    path_prefix: Vec<String>,
    steps_ctx: Map<String, Value>,
    failed: bool,
    exit_code: Option<i32>,
    reason: Option<String>,
    cpu_seconds: f64,
    peak_memory: u64,
    deadline: Instant,
    job_timeout: Duration,
    /// Redactions in this job's output so far, and in its last step's.
    redactions: u64,
    last_redactions: u64,
    /// Caches to save when the job succeeds: (key, paths).
    cache_saves: Vec<(String, Vec<String>)>,
    /// Inside a composite action: its `inputs` and its directory
    /// (`GITHUB_ACTION_PATH`), and how deep the actions nest.
    inputs: Option<Value>,
    action_path: Option<String>,
    composite_depth: usize,
}

impl<'a> JobRun<'a> {
    fn new(runner: &'a SandboxRunner, req: &'a JobRequest) -> JobRun<'a> {
        let job = &req.plan.jobs[req.job];
        let limits = runner.cfg.limits.with_overrides(&job.spec.kiln);
        let job_timeout =
            job.spec.timeout_minutes.map(|m| Duration::from_secs_f64(m * 60.0)).unwrap_or(limits.job_timeout);
        let (isolation, _) = effective_isolation(runner.cfg.isolation, job.spec.kiln.isolation);
        JobRun {
            runner,
            req,
            dir: runner.cfg.build_dir.join(format!("job-{}", req.job)),
            workspace: None,
            hasher: None,
            detected_commands: None,
            network_in_build: false,
            limits,
            isolation,
            env: Map::new(),
            path_prefix: Vec::new(),
            steps_ctx: Map::new(),
            failed: false,
            exit_code: None,
            reason: None,
            cpu_seconds: 0.0,
            peak_memory: 0,
            deadline: Instant::now() + job_timeout,
            job_timeout,
            redactions: 0,
            last_redactions: 0,
            cache_saves: Vec::new(),
            inputs: None,
            action_path: None,
            composite_depth: 0,
        }
    }

    fn sys(&self, step: &str, text: String) {
        let job = &self.req.plan.jobs[self.req.job];
        self.req.emitter.log(&job.id, step, "", Stream::System, text);
    }

    fn contexts(&self) -> Contexts {
        let mut c = self.req.contexts.clone();
        let mut env = c.env.as_object().cloned().unwrap_or_default();
        env.extend(self.env.clone());
        c.env = Value::Object(env);
        c.steps = Value::Object(self.steps_ctx.clone());
        if let Some(inputs) = &self.inputs {
            c.inputs = inputs.clone();
        }
        let status = if self.failed { "failure" } else { "success" };
        c.job = json!({ "status": status });
        c
    }

    fn status_fns(&self) -> StatusFns<'_> {
        StatusFns {
            files: self.hasher.as_ref().map(|h| h as &dyn kiln_workflow::FileHasher),
            ..StatusFns::new(!self.failed, self.failed, *self.req.cancel.borrow())
        }
    }

    async fn run(&mut self, job: &PlannedJob) -> JobOutcome {
        let (_, lowered) = effective_isolation(self.runner.cfg.isolation, job.spec.kiln.isolation);
        if lowered {
            self.sys("", "kiln.isolation: container ignored: the operator chose gvisor (a job may not lower its isolation)".into());
        }
        if let Err(e) = self.setup(job).await {
            let reason = StopReason::Infrastructure(e.to_string());
            self.sys("", format!("job setup failed: {e}"));
            let mut o = JobOutcome::new(JobResult::Failure);
            o.reason = Some(reason.to_string());
            return o;
        }
        for (k, step) in job.spec.steps.iter().enumerate() {
            self.run_step(job, k, step).await;
        }
        let cancelled = *self.req.cancel.borrow();
        if !cancelled && !self.failed {
            self.save_caches(job).await;
        }
        let mut outcome = JobOutcome::new(if cancelled {
            JobResult::Cancelled
        } else if self.failed {
            JobResult::Failure
        } else {
            JobResult::Success
        });
        // Outputs: evaluated after the steps, with their results.
        let ctx = self.contexts();
        for (name, t) in &job.spec.outputs {
            match t.render(&ctx, self.status_fns()) {
                Ok(v) => {
                    outcome.outputs.insert(name.clone(), Value::String(v));
                }
                Err(e) => self.sys("", format!("output `{name}`: {e}")),
            }
        }
        outcome.exit_code = self.exit_code;
        outcome.reason = if cancelled { Some("cancelled".into()) } else { self.reason.clone() };
        outcome.cpu_seconds = self.cpu_seconds;
        outcome.peak_memory_bytes = self.peak_memory;
        outcome.redactions = self.redactions;
        outcome
    }

    async fn setup(&mut self, job: &PlannedJob) -> Result<(), crate::EngineError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| crate::EngineError::io("creating", &self.dir, e))?;
        let ws_dir = self.dir.join("disk");
        let disk = self.limits.disk_bytes;
        let ws = tokio::task::spawn_blocking(move || Workspace::create(&ws_dir, disk, STEP_UID, STEP_GID))
            .await
            .map_err(|e| {
                crate::EngineError::io("creating workspace", PathBuf::new(), std::io::Error::other(e))
            })??;
        self.hasher = Some(super::globs::WorkspaceHasher { ws: ws.path().to_path_buf() });
        // `RUNNER_TEMP`: GitHub's layout, on the job's disk.
        let temp = ws.home().join(RUNNER_TEMP_REL);
        std::fs::create_dir_all(&temp)
            .and_then(|_| super::artifacts::chown_tree(&ws.home(), STEP_UID, STEP_GID))
            .map_err(|e| crate::EngineError::io("creating", &temp, e))?;
        self.workspace = Some(ws);
        // The job's env: rendered once, in order, each value seeing the ones before.
        let status = StatusFns::new(true, false, false);
        for (k, t) in &job.spec.env {
            let v = self.render(t, status).unwrap_or_default();
            self.env.insert(k.clone(), Value::String(v));
        }
        Ok(())
    }

    fn render(&self, t: &Template, status: StatusFns) -> Result<String, String> {
        t.render(&self.contexts(), status).map_err(|e| e.to_string())
    }

    async fn teardown(&mut self) {
        if let Some(ws) = self.workspace.take() {
            let _ = tokio::task::spawn_blocking(move || ws.destroy()).await;
        }
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }

    fn step_name(job: &PlannedJob, step: &StepSpec, ctx: &Contexts, status: StatusFns) -> String {
        if let Some(n) = &step.name {
            if let Ok(s) = n.render(ctx, status) {
                if !s.trim().is_empty() {
                    return s;
                }
            }
        }
        let _ = job;
        match &step.action {
            StepAction::Checkout => "Checkout".to_string(),
            StepAction::UploadArtifact { name, .. } => format!("Upload artifact {}", name.source()),
            StepAction::Cache { key, .. } => format!("Cache {}", key.source()),
            StepAction::DownloadArtifact { name: Some(name), .. } => {
                format!("Download artifact {}", name.source())
            }
            StepAction::DownloadArtifact { name: None, .. } => "Download artifacts".to_string(),
            StepAction::Uploader { uses } | StepAction::Unsupported { uses } => format!("Run {uses}"),
            StepAction::LocalAction { path, .. } => format!("Run ./{path}"),
            StepAction::Detect { .. } => "Detect".to_string(),
            StepAction::Package { name, .. } => format!("Package {}", name.source()),
            StepAction::Run { script, .. } => {
                let first = script.source().lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                let first: String = first.chars().take(60).collect();
                format!("Run {first}")
            }
        }
    }

    /// Runs what a step does and returns how it ended (the caller logs and
    /// records it). Boxed: a composite action's steps come back here.
    fn execute<'s>(
        &'s mut self,
        job: &'s PlannedJob,
        k: usize,
        step: &'s StepSpec,
        name: &'s str,
        started_at: &'s str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<StepResult, String>> + Send + 's>> {
        Box::pin(async move {
            let phase = step.phase(&job.spec).as_str();
            match &step.action {
                StepAction::Checkout => self.checkout().await,
                StepAction::Run { script, shell } => {
                    self.run_script(job, k, step, name, script, shell.as_ref()).await
                }
                StepAction::UploadArtifact {
                    name: art,
                    path,
                    if_no_files_found,
                    retention_days,
                    output_type,
                } => {
                    let keep = ArtifactKeep {
                        output_type: output_type
                            .as_deref()
                            .map(output_type_of)
                            .unwrap_or(kiln_store::OutputType::Static),
                        retention_days: *retention_days,
                        commands: None,
                        commit: None,
                    };
                    self.upload_artifact(job, k, name, art, path, if_no_files_found, keep, started_at).await
                }
                StepAction::Detect { ignore_scripts } => self.detect(job, step, name, *ignore_scripts).await,
                StepAction::Package { name: art, path, output_type, retention_days, commit } => {
                    let pkg = PackageStep {
                        name: art,
                        path: path.as_ref(),
                        output_type: output_type.as_ref(),
                        retention_days: *retention_days,
                        commit: commit.as_ref(),
                    };
                    self.package(job, k, name, pkg, started_at).await
                }
                StepAction::DownloadArtifact { name: art, path, pattern, merge_multiple } => {
                    let request = DownloadRequest {
                        name: art.as_ref(),
                        path: path.as_ref(),
                        pattern: pattern.as_ref(),
                        merge_multiple: *merge_multiple,
                    };
                    self.download_artifact(job, k, name, request).await
                }
                StepAction::Uploader { uses } => {
                    // The build loop refuses the job first when the operator
                    // refuses uploaders; here the step is skipped with a notice.
                    self.req.emitter.log(
                        &job.id,
                        name,
                        phase,
                        Stream::System,
                        format!(
                            "skipped `{uses}`: coverage/report uploaders need a third party's token and host"
                        ),
                    );
                    Ok((StepStatus::Skipped, None, None, 0.0, 0, None))
                }
                StepAction::Unsupported { uses } => Err(format!("`uses: {uses}` is not an action kiln has")),
                StepAction::LocalAction { path, with } => {
                    self.composite(job, k, step, name, started_at, path, with).await
                }
                StepAction::Cache { key, path, restore_keys, lookup_only, fail_on_miss } => {
                    self.cache_step(
                        job,
                        k,
                        step,
                        name,
                        key,
                        path,
                        restore_keys.as_ref(),
                        *lookup_only,
                        *fail_on_miss,
                    )
                    .await
                }
            }
        })
    }

    async fn run_step(&mut self, job: &PlannedJob, k: usize, step: &StepSpec) {
        let status = self.status_fns();
        let ctx = self.contexts();
        let name = Self::step_name(job, step, &ctx, status);
        let cancelled = status.cancelled;
        // `if`: default success(); on cancellation only `always()`/`cancelled()` steps run.
        let run = match &step.condition {
            None => status.success && !cancelled,
            Some(c) => match c.eval_condition(&ctx, status) {
                Ok(b) => b,
                Err(e) => {
                    self.sys(&name, format!("if: {e}"));
                    self.fail(None, Some(format!("if: {e}")));
                    false
                }
            },
        };
        let record_skip = |s: &mut Self| {
            s.record_step(k, step, &name, StepStatus::Skipped, None, None, None, 0.0, 0, None);
        };
        if !run {
            record_skip(self);
            return;
        }
        self.req.emitter.emit(Event::StepStarted { job: self.req.job, step: k, name: name.clone() });
        let started_at = crate::time::now_rfc3339();
        let t0 = Instant::now();
        let phase = step.phase(&job.spec).as_str();
        self.req.emitter.log(&job.id, &name, phase, Stream::System, "step started".into());
        let result = self.execute(job, k, step, &name, &started_at).await;
        let secs = t0.elapsed().as_secs_f64();
        let (outcome, exit, reason, cpu, mem, summary) = match result {
            Ok(r) => r,
            Err(msg) => (StepStatus::Failure, None, Some(msg), 0.0, 0, None),
        };
        let mut line = format!("step finished in {}", crate::time::human_duration(secs));
        match (exit, &reason) {
            (_, Some(r)) => line.push_str(&format!(" ({r})")),
            (Some(c), None) => line.push_str(&format!(" (exit {c})")),
            (None, None) => {}
        }
        self.req.emitter.log(&job.id, &name, phase, Stream::System, line);
        let conclusion = if outcome == StepStatus::Failure && self.step_continue_on_error(step) {
            StepStatus::Success
        } else {
            outcome
        };
        if conclusion == StepStatus::Failure {
            self.fail(exit, reason.clone());
        } else if conclusion == StepStatus::Cancelled {
            self.reason.get_or_insert_with(|| "cancelled".into());
        }
        self.cpu_seconds += cpu;
        self.peak_memory = self.peak_memory.max(mem);
        let finished_at = Some(crate::time::now_rfc3339());
        let record = StepRecord {
            name: name.clone(),
            outcome,
            conclusion,
            started_at: Some(started_at),
            finished_at,
            exit_code: exit,
            reason,
            cpu_seconds: cpu,
            peak_memory_bytes: mem,
            summary,
            redactions: std::mem::take(&mut self.last_redactions),
        };
        self.finish_step(k, step, record);
    }

    fn fail(&mut self, exit: Option<i32>, reason: Option<String>) {
        if !self.failed {
            self.exit_code = exit;
            self.reason = reason.or_else(|| exit.map(|c| format!("exit code {c}")));
        }
        self.failed = true;
    }

    fn step_continue_on_error(&self, step: &StepSpec) -> bool {
        match &step.continue_on_error {
            BoolOrExpr::Literal(b) => *b,
            BoolOrExpr::Expr(t) => t
                .eval(&self.contexts(), self.status_fns())
                .map(|v| !matches!(v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0))
                .unwrap_or(false),
        }
    }

    /// `uses: ./path`: a composite action of the repository. Its steps run
    /// one after another as parts of this step (their lines carry this
    /// step's name), with the action's `inputs` and a `steps` context of
    /// their own; the first failing one fails this step; the action's
    /// outputs become this step's.
    #[allow(clippy::too_many_arguments)]
    async fn composite(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step: &StepSpec,
        name: &str,
        started_at: &str,
        path: &str,
        with: &[(String, Template)],
    ) -> Result<StepResult, String> {
        const MAX_DEPTH: usize = 9;
        const MAX_FILE: u64 = 1 << 20;
        if self.composite_depth >= MAX_DEPTH {
            return Err(format!("`./{path}`: composite actions nest deeper than {MAX_DEPTH} levels"));
        }
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path();
        let file = ["action.yml", "action.yaml"].iter().find_map(|f| {
            super::artifacts::resolve_beneath(&ws, &format!("{path}/{f}")).ok().map(|p| (f, p))
        });
        let Some((file_name, file)) = file else {
            return Err(format!(
                "`uses: ./{path}`: no action.yml or action.yaml there in the workspace (did a checkout step run first?)"
            ));
        };
        let meta = std::fs::symlink_metadata(&file).map_err(|e| e.to_string())?;
        if !meta.is_file() || meta.len() > MAX_FILE {
            return Err(format!("`./{path}/{file_name}` is not a regular file of at most 1 MiB"));
        }
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("reading `./{path}/{file_name}`: {e}"))?;
        let action = kiln_workflow::parse_action(&format!("./{path}/{file_name}"), &text)
            .map_err(|d| d.to_string())?;
        // Inputs: given, else the default (both evaluated here, with the
        // caller's contexts), else empty; a required one must be given.
        let ctx = self.contexts();
        let status = self.status_fns();
        let mut inputs = Map::new();
        for input in &action.inputs {
            let given = with.iter().find(|(k, _)| k.eq_ignore_ascii_case(&input.name)).map(|(_, t)| t);
            let value = match (given, &input.default) {
                (Some(t), _) | (None, Some(t)) => {
                    t.render(&ctx, status).map_err(|e| format!("input `{}`: {e}", input.name))?
                }
                (None, None) if input.required => {
                    return Err(format!("`./{path}`: input `{}` is required and was not given", input.name))
                }
                (None, None) => String::new(),
            };
            inputs.insert(input.name.clone(), Value::String(value));
        }
        let unexpected: Vec<&str> = with
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !action.inputs.iter().any(|i| i.name.eq_ignore_ascii_case(k)))
            .collect();
        if !unexpected.is_empty() {
            self.sys(name, format!("`./{path}` has no input(s) {}: ignored", unexpected.join(", ")));
        }
        let saved_steps = std::mem::take(&mut self.steps_ctx);
        let saved_inputs = self.inputs.replace(Value::Object(inputs));
        let saved_path = self.action_path.replace(format!("{WORKSPACE}/{path}"));
        let saved_failed = std::mem::replace(&mut self.failed, false);
        self.composite_depth += 1;
        let mut result: StepResult = (StepStatus::Success, Some(0), None, 0.0, 0, None);
        for nested in &action.steps {
            let status = self.status_fns();
            let ctx = self.contexts();
            let nested_name = format!("{name} › {}", Self::step_name(job, nested, &ctx, status));
            let run = match &nested.condition {
                None => status.success && !status.cancelled,
                Some(c) => c.eval_condition(&ctx, status).unwrap_or_else(|e| {
                    self.sys(&nested_name, format!("if: {e}"));
                    false
                }),
            };
            let outcome = if !run {
                StepStatus::Skipped
            } else {
                self.sys(name, format!("▶ {nested_name}"));
                let r = self.execute(job, k, nested, &nested_name, started_at).await;
                let (outcome, exit, reason, cpu, mem, _) =
                    r.unwrap_or_else(|msg| (StepStatus::Failure, None, Some(msg), 0.0, 0, None));
                result.3 += cpu;
                result.4 = result.4.max(mem);
                if outcome == StepStatus::Failure && !self.step_continue_on_error(nested) {
                    self.failed = true;
                    if result.0 == StepStatus::Success {
                        let why = reason.clone().unwrap_or_else(|| {
                            format!("exit code {}", exit.map(|c| c.to_string()).unwrap_or_else(|| "?".into()))
                        });
                        result = (
                            StepStatus::Failure,
                            exit,
                            Some(format!("{nested_name}: {why}")),
                            result.3,
                            result.4,
                            None,
                        );
                    }
                } else if outcome == StepStatus::Cancelled {
                    result.0 = StepStatus::Cancelled;
                }
                outcome
            };
            if let Some(id) = &nested.id {
                let outputs =
                    self.steps_ctx.get(id).and_then(|s| s.get("outputs")).cloned().unwrap_or(json!({}));
                self.steps_ctx
                    .insert(id.clone(), json!({ "outputs": outputs, "outcome": outcome.as_str(), "conclusion": outcome.as_str() }));
            }
        }
        // The action's outputs, over its own steps.
        let ctx = self.contexts();
        let mut outputs = Map::new();
        for (out, t) in &action.outputs {
            match t.render(&ctx, self.status_fns()) {
                Ok(v) => {
                    outputs.insert(out.clone(), Value::String(v));
                }
                Err(e) => self.sys(name, format!("output `{out}`: {e}")),
            }
        }
        self.composite_depth -= 1;
        self.steps_ctx = saved_steps;
        self.inputs = saved_inputs;
        self.action_path = saved_path;
        self.failed = saved_failed;
        if let Some(id) = &step.id {
            self.steps_ctx.insert(id.clone(), json!({ "outputs": outputs }));
        }
        Ok(result)
    }

    #[allow(clippy::too_many_arguments)]
    fn record_step(
        &mut self,
        k: usize,
        step: &StepSpec,
        name: &str,
        status: StepStatus,
        exit: Option<i32>,
        reason: Option<String>,
        summary: Option<String>,
        cpu: f64,
        mem: u64,
        started_at: Option<String>,
    ) {
        let record = StepRecord {
            name: name.to_string(),
            outcome: status,
            conclusion: status,
            started_at,
            finished_at: None,
            exit_code: exit,
            reason,
            cpu_seconds: cpu,
            peak_memory_bytes: mem,
            summary,
            redactions: 0,
        };
        self.finish_step(k, step, record);
    }

    fn finish_step(&mut self, k: usize, step: &StepSpec, record: StepRecord) {
        if let Some(id) = &step.id {
            let outputs = self.steps_ctx.get(id).and_then(|s| s.get("outputs")).cloned().unwrap_or(json!({}));
            self.steps_ctx.insert(
                id.clone(),
                json!({ "outputs": outputs, "outcome": record.outcome.as_str(), "conclusion": record.conclusion.as_str() }),
            );
        }
        self.req.emitter.emit(Event::StepFinished { job: self.req.job, step: k, record });
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_artifact(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step_name: &str,
        name: &Template,
        path: &Template,
        if_no_files_found: &str,
        keep: ArtifactKeep,
        started_at: &str,
    ) -> Result<StepResult, String> {
        let ctx = self.contexts();
        let name = name.render(&ctx, self.status_fns()).map_err(|e| e.to_string())?;
        let paths = path.render(&ctx, self.status_fns()).map_err(|e| e.to_string())?;
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf();
        let staging = self.dir.join(format!("upload-{k}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
        let mut found = 0u64;
        let patterns = super::globs::Patterns::parse(paths.lines()).map_err(|e| format!("path: {e}"))?;
        if patterns.has_globs {
            // As on GitHub: files are stored relative to the least common
            // ancestor of the patterns' literal directories.
            let roots: Vec<(String, PathBuf)> =
                patterns.roots.iter().map(|r| (r.clone(), ws.join(r))).collect();
            let base = super::artifacts::common_ancestor(&roots);
            let selected = patterns.select(&ws).map_err(|e| format!("path {e}"))?;
            for (rel, src) in &selected {
                let stored = Path::new(rel).strip_prefix(&base).unwrap_or(Path::new(rel));
                found += super::workspace_copy::copy_path(src, &staging.join(stored))
                    .map_err(|e| e.to_string())?;
            }
        } else {
            let mut present = Vec::new();
            for rel in paths.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let rel = rel.trim_start_matches("./").trim_end_matches('/');
                match super::artifacts::resolve_beneath(&ws, rel) {
                    Ok(src) => present.push((rel.to_string(), src)),
                    Err(e) if e.ends_with("does not exist") => {}
                    Err(e) => return Err(format!("path {e}")),
                }
            }
            // As on GitHub: paths are stored relative to their least common
            // ancestor (a single directory uploads its contents).
            let base = super::artifacts::common_ancestor(&present);
            for (rel, src) in &present {
                let stored = Path::new(rel).strip_prefix(&base).unwrap_or(Path::new(rel));
                let dst = if stored.as_os_str().is_empty() { staging.clone() } else { staging.join(stored) };
                found += super::workspace_copy::copy_path(src, &dst).map_err(|e| e.to_string())?;
            }
        }
        let say =
            |s: &Self, m: String| s.req.emitter.log(&job.id, step_name, "artifact-upload", Stream::System, m);
        if found == 0 {
            let msg =
                format!("no files found for artifact `{name}` (path: {})", paths.trim().replace('\n', ", "));
            return match if_no_files_found {
                "error" => Err(msg),
                "ignore" => Ok((StepStatus::Success, Some(0), None, 0.0, 0, None)),
                _ => {
                    say(self, format!("warning: {msg}"));
                    Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
                }
            };
        }
        let stored = self.store_staged(job, step_name, &name, &staging, keep, started_at).await;
        let _ = std::fs::remove_dir_all(&staging);
        stored
    }

    /// Stores a staged tree as artifact `name`: refused if it holds a
    /// secret value; scanned; signed; recorded with its verdict.
    async fn store_staged(
        &mut self,
        job: &PlannedJob,
        step_name: &str,
        name: &str,
        staging: &Path,
        keep: ArtifactKeep,
        started_at: &str,
    ) -> Result<StepResult, String> {
        let sink = self.runner.cfg.artifacts.clone().ok_or("this build has no artifact store")?;
        // A tree holding a secret value never reaches the store.
        if let Err(e) = kiln_secrets::check_tree(staging, &self.runner.cfg.scrubber) {
            return Err(format!("artifact `{name}` refused: {e}"));
        }
        // Hermetic: no step of the build phase that ran had a network (the
        // install may fetch; the build itself works from what is there).
        let wf = &self.req.plan.workflow;
        let hermetic = !self.network_in_build;
        let meta = super::artifacts::UploadMeta {
            started_at: started_at.to_string(),
            hermetic,
            output_type: keep.output_type,
            commands: keep.commands.unwrap_or_else(|| {
                job.spec
                    .steps
                    .iter()
                    .filter_map(|s| match &s.action {
                        StepAction::Run { script, .. } => Some(script.source().to_string()),
                        _ => None,
                    })
                    .collect()
            }),
            environment_digest: environment_digest(wf, &job.spec),
            retention_days: keep.retention_days,
            commit: keep.commit,
        };
        let up = sink.upload(&self.req.build, name, staging, &meta).await?;
        let say =
            |s: &Self, m: String| s.req.emitter.log(&job.id, step_name, "artifact-upload", Stream::System, m);
        for f in &up.findings {
            say(self, format!("scan: {f}"));
        }
        say(
            self,
            format!(
                "artifact `{name}` stored: {} ({}, {} files, {}): {}",
                up.id,
                output_type_name(keep.output_type),
                up.files,
                crate::limits::human_bytes(up.bytes),
                up.status
            ),
        );
        if up.status == "quarantined" {
            self.req.emitter.emit(Event::Audit {
                kind: "artifact-quarantined".into(),
                job: job.id.clone(),
                step: step_name.to_string(),
                detail: format!("{name} {}: {}", up.id, up.findings.join("; ")),
            });
        }
        self.req.emitter.emit(Event::Artifact {
            job: job.id.clone(),
            name: name.to_string(),
            id: up.id.to_string(),
            files: up.files,
            bytes: up.bytes,
            provenance: up.provenance.map(|d| d.to_string()),
            output_type: output_type_name(keep.output_type).to_string(),
            status: up.status.clone(),
            scan: (!up.findings.is_empty()).then(|| up.findings.join("\n")),
        });
        if up.status == "quarantined" {
            // Kept in the store for inspection, never handed on.
            return Err(format!("artifact `{name}` quarantined by the scan"));
        }
        Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
    }

    /// `kiln/detect`: reads the workspace on the host (nothing runs) and
    /// sets the outputs the zero-config build's next steps use.
    async fn detect(
        &mut self,
        job: &PlannedJob,
        step: &StepSpec,
        step_name: &str,
        ignore_scripts: bool,
    ) -> Result<StepResult, String> {
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf();
        let registries = self.runner.cfg.egress.registries.clone();
        let d =
            tokio::task::spawn_blocking(move || super::zeroconfig::detect(&ws, ignore_scripts, &registries))
                .await
                .map_err(|e| e.to_string())??;
        let say =
            |s: &Self, m: String| s.req.emitter.log(&job.id, step_name, "source-fetch", Stream::System, m);
        for n in &d.notes {
            say(self, n.clone());
        }
        for (k, v) in &d.outputs {
            if let Value::String(v) = v {
                if !v.is_empty() && !v.contains('\n') {
                    say(self, format!("{k}: {v}"));
                }
            }
        }
        if !d.violations.is_empty() {
            for v in &d.violations {
                say(self, format!("refused: {v}"));
            }
            return Err(format!(
                "{} entr{} would reach outside the allowed registries or widen the policy (first: {})",
                d.violations.len(),
                if d.violations.len() == 1 { "y" } else { "ies" },
                d.violations[0]
            ));
        }
        for (k, v) in d.env {
            self.env.insert(k, Value::String(v));
        }
        self.detected_commands = Some(d.commands);
        if let Some(id) = &step.id {
            self.steps_ctx.insert(id.clone(), json!({ "outputs": Value::Object(d.outputs) }));
        }
        Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
    }

    /// `kiln/package`: the build output (found, or `path`) stored as an
    /// artifact with its output type, scanned and signed.
    async fn package(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step_name: &str,
        pkg: PackageStep<'_>,
        started_at: &str,
    ) -> Result<StepResult, String> {
        let ctx = self.contexts();
        let render = |t: Option<&Template>| -> Result<Option<String>, String> {
            t.map(|t| t.render(&ctx, self.status_fns()).map_err(|e| e.to_string()))
                .transpose()
                .map(|v| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        };
        let name = render(Some(pkg.name))?.unwrap_or_else(|| "output".into());
        let path = render(pkg.path)?;
        let declared = render(pkg.output_type)?;
        let commit = render(pkg.commit)?;
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf();
        let (rel, found_type) = match path {
            Some(p) => {
                (p.trim_start_matches("./").trim_end_matches('/').to_string(), kiln_store::OutputType::Static)
            }
            None => {
                let ws = ws.clone();
                tokio::task::spawn_blocking(move || super::zeroconfig::locate(&ws))
                    .await
                    .map_err(|e| e.to_string())??
            }
        };
        let output_type = match declared {
            Some(t) if kiln_workflow::OUTPUT_TYPES.contains(&t.as_str()) => output_type_of(&t),
            Some(t) => {
                return Err(format!(
                    "output-type must be one of {}, not `{t}`",
                    kiln_workflow::OUTPUT_TYPES.join(", ")
                ))
            }
            None => found_type,
        };
        let src = super::artifacts::resolve_beneath(&ws, &rel).map_err(|e| format!("output {e}"))?;
        self.req.emitter.log(
            &job.id,
            step_name,
            "artifact-upload",
            Stream::System,
            format!("output: {rel} ({})", output_type_name(output_type)),
        );
        let staging = self.dir.join(format!("upload-{k}"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
        let dst = if src.is_dir() {
            staging.clone()
        } else {
            staging.join(Path::new(&rel).file_name().unwrap_or_default())
        };
        let copied = super::workspace_copy::copy_path(&src, &dst).map_err(|e| e.to_string());
        let stored = match copied {
            Ok(0) => Err(format!("output `{rel}` has no files")),
            Ok(_) => {
                let keep = ArtifactKeep {
                    output_type,
                    retention_days: pkg.retention_days,
                    commands: self.detected_commands.clone(),
                    commit,
                };
                self.store_staged(job, step_name, &name, &staging, keep, started_at).await
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&staging);
        stored
    }

    /// `actions/download-artifact`: one artifact by `name` into `path`, or
    /// every artifact of the build (those matching `pattern`) each into
    /// `path/NAME`, or all into `path` with `merge-multiple`. Into an
    /// existing directory the files merge, as on GitHub.
    async fn download_artifact(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step_name: &str,
        request: DownloadRequest<'_>,
    ) -> Result<StepResult, String> {
        let sink = self.runner.cfg.artifacts.clone().ok_or("this build has no artifact store")?;
        let ctx = self.contexts();
        let render = |t: Option<&Template>| -> Result<Option<String>, String> {
            t.map(|t| t.render(&ctx, self.status_fns()).map_err(|e| e.to_string())).transpose()
        };
        let name = render(request.name)?.filter(|n| !n.trim().is_empty());
        let rel = render(request.path)?.unwrap_or_default();
        let pattern = render(request.pattern)?.filter(|p| !p.trim().is_empty());
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf();
        let rel = rel.trim().trim_start_matches("./").trim_end_matches('/');
        let base = if rel.is_empty() || rel == "." {
            ws.clone()
        } else {
            kiln_workflow::check_relative_path(rel).map_err(|e| format!("path: {e}"))?;
            // Every existing component must be a real directory (no planted links).
            let mut existing = PathBuf::new();
            for part in Path::new(rel).components() {
                existing.push(part);
                match std::fs::symlink_metadata(ws.join(&existing)) {
                    Ok(_) => check_dir_beneath(&ws, &existing.to_string_lossy())
                        .map_err(|e| format!("path `{rel}`: {e}"))?,
                    Err(_) => break,
                }
            }
            ws.join(rel)
        };
        let names: Vec<String> = match &name {
            Some(n) => vec![n.clone()],
            None => {
                let all = sink.names().await;
                match &pattern {
                    None => all,
                    Some(p) => {
                        let glob = globset::Glob::new(p)
                            .map_err(|e| format!("pattern `{p}`: {e}"))?
                            .compile_matcher();
                        all.into_iter().filter(|n| glob.is_match(n)).collect()
                    }
                }
            }
        };
        if names.is_empty() {
            self.req.emitter.log(
                &job.id,
                step_name,
                "build",
                Stream::System,
                "no artifacts to download (nothing matched)".into(),
            );
        }
        // One artifact by name, or merge-multiple: into `path` itself;
        // otherwise each into a directory named after it.
        let into_base = name.is_some() || request.merge_multiple;
        for (i, n) in names.iter().enumerate() {
            let staging = self.dir.join(format!("download-{k}-{i}"));
            let _ = std::fs::remove_dir_all(&staging);
            let got = sink.download(n, &staging, STEP_UID, STEP_GID).await?;
            if !into_base && (n.is_empty() || n == "." || n == ".." || n.contains(['/', '\\', '\0'])) {
                return Err(format!("artifact name `{n}` cannot be a directory name"));
            }
            let target = if into_base { base.clone() } else { base.join(n) };
            let (from, to) = (staging.clone(), target.clone());
            let merged = tokio::task::spawn_blocking(move || {
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                super::artifacts::merge_tree(&from, &to, STEP_UID, STEP_GID)
            })
            .await
            .map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&staging);
            merged.map_err(|e| format!("artifact `{n}`: {e}"))?;
            self.req.emitter.log(
                &job.id,
                step_name,
                "build",
                Stream::System,
                format!(
                    "artifact `{n}` restored: {} ({} files, {})",
                    got.id,
                    got.files,
                    crate::limits::human_bytes(got.bytes)
                ),
            );
        }
        Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
    }

    #[allow(clippy::too_many_arguments)]
    async fn cache_step(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step: &StepSpec,
        step_name: &str,
        key: &Template,
        path: &Template,
        restore_keys: Option<&Template>,
        lookup_only: bool,
        fail_on_miss: bool,
    ) -> Result<StepResult, String> {
        use super::artifacts::CacheResult;
        let sink = self.runner.cfg.artifacts.clone().ok_or("this build has no cache store")?;
        let ctx = self.contexts();
        let status = self.status_fns();
        let key = key.render(&ctx, status).map_err(|e| e.to_string())?.trim().to_string();
        if key.is_empty() {
            return Err("actions/cache: the key is empty".into());
        }
        let mut paths: Vec<String> = Vec::new();
        for line in path.render(&ctx, status).map_err(|e| e.to_string())?.lines() {
            if let Some(p) = cache_path_key(line).map_err(|e| format!("path: {e}"))? {
                paths.push(p);
            }
        }
        let rks: Vec<String> = match restore_keys {
            Some(t) => t
                .render(&ctx, status)
                .map_err(|e| e.to_string())?
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
            None => Vec::new(),
        };
        let disk = self.workspace.as_ref().ok_or("no workspace")?;
        let (ws, home) = (disk.path(), disk.home());
        let staging = self.dir.join(format!("cache-{k}"));
        let _ = std::fs::remove_dir_all(&staging);
        let t0 = Instant::now();
        let found = sink.cache_restore(&key, &rks, &staging, lookup_only).await?;
        let say = |s: &Self, m: String| s.req.emitter.log(&job.id, step_name, "build", Stream::System, m);
        let ms = t0.elapsed().as_millis();
        let mut exact = false;
        if let CacheResult::Hit { files, bytes } | CacheResult::Partial { files, bytes, .. } = &found {
            if !lookup_only {
                self.req.emitter.emit(Event::Cache {
                    job: job.id.clone(),
                    key: key.clone(),
                    write: false,
                    files: *files,
                    bytes: *bytes,
                });
            }
        }
        match &found {
            CacheResult::Hit { files, bytes } => {
                exact = true;
                say(
                    self,
                    format!(
                        "cache hit: {key} ({files} files, {}, {ms} ms)",
                        crate::limits::human_bytes(*bytes)
                    ),
                );
            }
            CacheResult::Partial { key: got, files, bytes } => say(
                self,
                format!(
                    "cache restored from restore-key: {got} ({files} files, {}, {ms} ms)",
                    crate::limits::human_bytes(*bytes)
                ),
            ),
            CacheResult::Miss => say(self, format!("cache miss: {key}")),
            CacheResult::Tampered(what) => {
                say(
                    self,
                    format!("cache miss: {key} (an entry failed verification and was not restored: {what})"),
                );
                self.req.emitter.emit(Event::Audit {
                    kind: "cache-quarantined".into(),
                    job: job.id.clone(),
                    step: step_name.to_string(),
                    detail: what.clone(),
                });
            }
        }
        if !lookup_only && matches!(found, CacheResult::Hit { .. } | CacheResult::Partial { .. }) {
            // Into the workspace (or the job's home): each cached path not
            // already there.
            for p in &paths {
                let from = staging.join(p);
                if std::fs::symlink_metadata(&from).is_err() {
                    continue;
                }
                let (root, rel) = cache_path_root(p, &ws, &home);
                if let Some(parent) = Path::new(rel).parent().filter(|x| !x.as_os_str().is_empty()) {
                    // Component by component, never through a link a step planted.
                    let mut here = PathBuf::new();
                    for part in parent.components() {
                        here.push(part);
                        let at = root.join(&here);
                        if std::fs::symlink_metadata(&at).is_err() {
                            std::fs::create_dir(&at).map_err(|e| e.to_string())?;
                            std::os::unix::fs::lchown(&at, Some(STEP_UID), Some(STEP_GID))
                                .map_err(|e| e.to_string())?;
                        }
                        check_dir_beneath(root, &here.to_string_lossy()).map_err(|e| format!("path: {e}"))?;
                    }
                }
                let to = root.join(rel);
                if std::fs::symlink_metadata(&to).is_ok() {
                    say(self, format!("cache: `{p}` already exists; kept as is"));
                    continue;
                }
                // The workspace is its own filesystem: copy (links stay links).
                super::workspace_copy::copy_path(&from, &to).map_err(|e| format!("restoring `{p}`: {e}"))?;
                super::artifacts::chown_tree_or_file(&to, STEP_UID, STEP_GID).map_err(|e| e.to_string())?;
            }
        }
        let _ = std::fs::remove_dir_all(&staging);
        if !exact && !lookup_only {
            self.cache_saves.push((key.clone(), paths.clone()));
        }
        if let Some(id) = &step.id {
            self.steps_ctx.insert(
                id.clone(),
                json!({ "outputs": { "cache-hit": if exact { "true" } else { "false" } } }),
            );
        }
        if fail_on_miss && matches!(found, CacheResult::Miss | CacheResult::Tampered(_)) {
            return Err(format!("cache miss for `{key}` and fail-on-cache-miss is set"));
        }
        Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
    }

    /// After a successful job: saves each cache that missed (from the build
    /// that produced the files, into its own scope only).
    async fn save_caches(&mut self, job: &PlannedJob) {
        let Some(sink) = self.runner.cfg.artifacts.clone() else { return };
        let Some((ws, home)) = self.workspace.as_ref().map(|w| (w.path(), w.home())) else { return };
        for (i, (key, paths)) in std::mem::take(&mut self.cache_saves).into_iter().enumerate() {
            let staging = self.dir.join(format!("cache-save-{i}"));
            let _ = std::fs::remove_dir_all(&staging);
            let _ = std::fs::create_dir_all(&staging);
            let mut found = 0;
            let mut refused = None;
            for p in &paths {
                let (root, rel) = cache_path_root(p, &ws, &home);
                match super::artifacts::resolve_beneath(root, rel) {
                    Ok(src) => match super::workspace_copy::copy_path(&src, &staging.join(p)) {
                        Ok(n) => found += n,
                        Err(e) => refused = Some(e.to_string()),
                    },
                    Err(e) if e.ends_with("does not exist") => {}
                    Err(e) => refused = Some(format!("path {e}")),
                }
            }
            let msg = if let Some(r) = refused {
                format!("cache not saved: {key}: {r}")
            } else if found == 0 {
                format!("cache not saved: {key}: no files at {}", paths.join(", "))
            } else if let Err(e) = kiln_secrets::check_tree(&staging, &self.runner.cfg.scrubber) {
                format!("cache not saved: {key}: {e}")
            } else {
                match sink.cache_save(&key, &staging).await {
                    Ok(up) => {
                        self.req.emitter.emit(Event::Cache {
                            job: job.id.clone(),
                            key: key.clone(),
                            write: true,
                            files: up.files,
                            bytes: up.bytes,
                        });
                        format!(
                            "cache saved: {key} ({} files, {})",
                            up.files,
                            crate::limits::human_bytes(up.bytes)
                        )
                    }
                    Err(e) => format!("cache not saved: {key}: {e}"),
                }
            };
            let _ = std::fs::remove_dir_all(&staging);
            self.req.emitter.log(&job.id, "Post cache", "build", Stream::System, msg);
        }
    }

    async fn checkout(&mut self) -> Result<StepResult, String> {
        let Some(src) = self.runner.cfg.source.clone() else {
            return Err("actions/checkout: this build has no source directory".into());
        };
        let ws = self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf();
        let skip = self.runner.cfg.source_skip.clone();
        let n = tokio::task::spawn_blocking(move || {
            super::workspace_copy::copy_source(&src, &ws, STEP_UID, STEP_GID, &skip)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let job = &self.req.plan.jobs[self.req.job];
        self.req.emitter.log(
            &job.id,
            "Checkout",
            "source-fetch",
            Stream::System,
            format!("checked out {n} files into {WORKSPACE}"),
        );
        Ok((StepStatus::Success, Some(0), None, 0.0, 0, None))
    }

    async fn run_script(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step: &StepSpec,
        name: &str,
        script: &Template,
        shell: Option<&ShellSpec>,
    ) -> Result<StepResult, String> {
        let status = self.status_fns();
        // The secrets this step is bound to (validation already refused reads
        // of any other): visible to its `env:` expressions only.
        let workflow = &self.req.plan.workflow;
        let bindings = step.allowed_secrets(&job.spec, workflow);
        let mut secret_ctx = Map::new();
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for b in &bindings {
            match self.runner.cfg.secrets.iter().find(|s| s.name == b.name) {
                Some(secret) => {
                    let value = secret.value.expose();
                    secret_ctx
                        .insert(b.name.clone(), Value::String(String::from_utf8_lossy(value).into_owned()));
                    if b.delivery == kiln_workflow::SecretAs::File {
                        files.push((b.name.clone(), value.to_vec()));
                    }
                }
                None => self.sys(name, format!("secret `{}` is not set for this build", b.name)),
            }
        }
        // Environment: workflow < job < $GITHUB_ENV < step.
        let mut env = self.contexts().env.as_object().cloned().unwrap_or_default();
        let mut secret_keys = std::collections::HashSet::new();
        for (key, t) in &step.env {
            let mut ctx = self.contexts();
            ctx.env = Value::Object(env.clone());
            let refs = t.secret_refs();
            if !refs.is_empty() {
                ctx.secrets = Value::Object(secret_ctx.clone());
                secret_keys.insert(key.clone());
            }
            let v = t.render(&ctx, status).map_err(|e| format!("env {key}: {e}"))?;
            env.insert(key.clone(), Value::String(v));
        }
        let mut ctx = self.contexts();
        ctx.env = Value::Object(env.clone());
        let body = script.render(&ctx, status).map_err(|e| format!("run: {e}"))?;
        let defaults = &job.spec.defaults;
        let wf_defaults = &self.req.plan.workflow.defaults;
        let shell = match shell.or(defaults.shell.as_ref()).or(wf_defaults.shell.as_ref()) {
            None => Shell::Default,
            Some(ShellSpec::Fixed(s)) => s.clone(),
            Some(ShellSpec::Expr(t)) => {
                let text = t.render(&ctx, status).map_err(|e| format!("shell: {e}"))?;
                match Shell::parse(&text) {
                    Ok(s) => s,
                    Err(ShellError::Invalid(m) | ShellError::Unavailable(m)) => return Err(m),
                }
            }
            Some(ShellSpec::Unavailable(r)) => return Err(r.reason.clone()),
        };
        let wd = match &step.working_directory {
            Some(t) => Some(t.render(&ctx, status).map_err(|e| format!("working-directory: {e}"))?),
            None => defaults.working_directory.clone().or_else(|| wf_defaults.working_directory.clone()),
        };
        let cwd = match wd {
            Some(wd) => {
                kiln_workflow::check_relative_path(&wd)
                    .map_err(|e| format!("working-directory `{wd}`: {e}"))?;
                let ws = self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf();
                check_dir_beneath(&ws, &wd).map_err(|e| format!("working-directory `{wd}`: {e}"))?;
                format!("{WORKSPACE}/{}", wd.trim_start_matches("./"))
            }
            None => WORKSPACE.to_string(),
        };

        // Host side: the script (read-only to the step) and the step files.
        let n = self.runner.next_id.fetch_add(1, Ordering::Relaxed);
        let step_dir = self.dir.join(format!("step-{k}"));
        let script_dir = step_dir.join("script");
        let files_dir = step_dir.join("files");
        let bundle_dir = step_dir.join("bundle");
        prepare_step_dirs(&script_dir, &files_dir, &bundle_dir, &body, &shell).map_err(|e| e.to_string())?;
        let script_path = format!("{STEP_DIR}/script.{}", shell.extension());

        let mut full_env = step_env(&self.req.contexts.github, job, step, k, env, &self.path_prefix);
        if let Some(p) = &self.action_path {
            full_env.push(("GITHUB_ACTION_PATH".into(), p.clone()));
        }
        if shell.is_bash() {
            full_env.retain(|(k, _)| k != "BASH_ENV");
            full_env.push(("BASH_ENV".into(), format!("{STEP_DIR}/{STARTED_SCRIPT}")));
        }
        // Network: loopback only, or kiln's proxy through kiln-init's relay.
        let phase = step.phase(&job.spec);
        // The proxy's socket lives under a short root-owned path: a Unix
        // socket path has at most 107 bytes, and the state dir can be deep.
        let egress_dir = EgressDir(Path::new(EGRESS_ROOT).join(format!(
            "{}-{}-{n}",
            sanitize_id(&self.req.build),
            self.req.job
        )));
        let network =
            step.network(&job.spec, &self.req.plan.workflow).unwrap_or(&self.runner.cfg.default_network);
        if phase == kiln_workflow::Phase::Build && !matches!(network, kiln_workflow::NetworkSpec::None) {
            self.network_in_build = true;
        }
        let proxy = match network {
            kiln_workflow::NetworkSpec::None => None,
            spec @ (kiln_workflow::NetworkSpec::Allow(_) | kiln_workflow::NetworkSpec::Registries(_)) => {
                let proxy = self.start_proxy(job, name, phase, spec, &egress_dir.0).await?;
                let url = format!("http://127.0.0.1:{EGRESS_PORT}");
                for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                    full_env.push((var.to_string(), url.clone()));
                }
                full_env.push(("NO_PROXY".into(), "localhost,127.0.0.1".into()));
                full_env.push(("no_proxy".into(), "localhost,127.0.0.1".into()));
                Some(proxy)
            }
        };
        // Anything secret goes to kiln-init on stdin, never into the spec on
        // disk: env values that read a secret, or that contain one (e.g. one
        // a step put into $GITHUB_ENV), and file secrets.
        let scrubber = self.runner.cfg.scrubber.clone();
        let (secret_env, full_env): (Vec<_>, Vec<_>) = full_env
            .into_iter()
            .partition(|(k, v)| secret_keys.contains(k) || scrubber.contains_secret(v.as_bytes()).is_some());
        let mut handed: Vec<String> = secret_env.iter().map(|(k, _)| k.clone()).collect();
        handed.extend(files.iter().map(|(n, _)| format!("/run/secrets/{n}")));
        let mut records: Vec<(String, kiln_sandbox::init::SecretMode, &[u8])> = secret_env
            .iter()
            .map(|(k, v)| (k.clone(), kiln_sandbox::init::SecretMode::Env, v.as_bytes()))
            .collect();
        records.extend(
            files.iter().map(|(n, v)| (n.clone(), kiln_sandbox::init::SecretMode::File, v.as_slice())),
        );
        let stdin_secrets = (!records.is_empty()).then(|| kiln_sandbox::init::encode_secrets(&records));
        drop(records);
        for what in &handed {
            self.req.emitter.emit(Event::Audit {
                kind: "secret-handed".into(),
                job: job.id.clone(),
                step: name.to_string(),
                detail: format!("{what} (phase {})", step.phase(&job.spec).as_str()),
            });
        }
        let id = format!("kiln-{}-{}-{}", sanitize_id(&self.req.build), self.req.job, n);
        let spec = SandboxSpec {
            id,
            argv: shell.argv(&script_path),
            env: full_env,
            cwd,
            workspace: self.workspace.as_ref().ok_or("no workspace")?.path().to_path_buf(),
            binds: vec![
                Bind { source: script_dir.clone(), destination: STEP_DIR.into(), writable: false },
                Bind { source: files_dir.clone(), destination: FILES_DIR.into(), writable: true },
                // The job's home and tool cache persist across its steps.
                Bind {
                    source: self.workspace.as_ref().ok_or("no workspace")?.home(),
                    destination: HOME.into(),
                    writable: true,
                },
                Bind {
                    source: self.workspace.as_ref().ok_or("no workspace")?.tool_cache(),
                    destination: TOOL_CACHE.into(),
                    writable: true,
                },
            ],
            limits: self.limits.sandbox_limits(),
            uid: STEP_UID,
            gid: STEP_GID,
            // kiln-init is PID 1 only where it has work (secrets on stdin,
            // the egress relay): under gVisor its extra exec costs ~35 ms per
            // step. Without it the shell is PID 1 and the runtime's teardown
            // still ends every process the step left behind.
            init: (stdin_secrets.is_some() || proxy.is_some()).then(|| kiln_sandbox::InitSpec {
                binary: self.runner.cfg.init.clone(),
                secrets: stdin_secrets.is_some(),
                egress: proxy.as_ref().map(|_| (egress_dir.0.clone(), EGRESS_PORT)),
            }),
        };
        let step_timeout = step.timeout_minutes.map(|m| Duration::from_secs_f64(m * 60.0));
        let (deadline, timeout_len) = match step_timeout {
            Some(t) if Instant::now() + t < self.deadline => (Instant::now() + t, t),
            _ => (self.deadline, self.job_timeout),
        };
        let runtime = self
            .runner
            .cfg
            .runtimes
            .get(&TierKey::of(self.isolation))
            .cloned()
            .ok_or_else(|| format!("no verified runtime for tier {:?}", self.isolation))?;
        let logger = StepLogger {
            emitter: self.req.emitter.clone(),
            job: job.id.clone(),
            step: name.to_string(),
            bytes: Arc::new(AtomicU64::new(0)),
            limit: self.limits.log_bytes,
            over: Arc::new(Notify::new()),
            tripped: Arc::new(AtomicBool::new(false)),
            phase: step.phase(&job.spec).as_str().to_string(),
            scrubber: self.runner.cfg.scrubber.clone(),
        };
        let run = run_sandbox(
            runtime,
            spec,
            bundle_dir,
            logger.clone(),
            deadline,
            self.req.cancel.clone(),
            stdin_secrets,
        )
        .await;
        if let Some(proxy) = proxy {
            proxy.stop().await;
        }
        let (outcome, stopped) = match run {
            Ok((o, s, r)) => {
                if r > 0 {
                    self.req.emitter.log(
                        &job.id,
                        name,
                        step.phase(&job.spec).as_str(),
                        Stream::System,
                        format!("{r} secret value(s) redacted from this step's output"),
                    );
                }
                self.last_redactions = r;
                self.redactions += r;
                (o, s)
            }
            Err(e) => return Err(StopReason::Infrastructure(e).to_string()),
        };

        // Classify: cancellation first, then the limits the sandbox's cgroups
        // enforced (a fork bomb that also ran out the clock is a process-limit
        // problem), then kiln's own stops.
        let limit = match outcome.limit {
            Some(kiln_sandbox::LimitHit::Memory { limit_bytes }) => Some(StopReason::Memory { limit_bytes }),
            Some(kiln_sandbox::LimitHit::Pids { limit }) => Some(StopReason::Pids { limit }),
            None => None,
        };
        let mut reason = match stopped {
            Some(Stop::Cancelled) => Some(StopReason::Cancelled),
            _ if limit.is_some() => limit,
            Some(Stop::Timeout) => Some(StopReason::Timeout { after: timeout_len }),
            Some(Stop::Log) => Some(StopReason::Log { limit_bytes: self.limits.log_bytes }),
            None => None,
        };
        let exit = outcome.exit_code.or(outcome.signal.map(|s| 128 + s));
        if reason.is_none() && exit != Some(0) {
            if let Some(ws) = &self.workspace {
                if ws.is_full() {
                    reason = Some(StopReason::Disk { limit_bytes: self.limits.disk_bytes });
                }
            }
        }
        if reason.is_none() && exit != Some(0) && shell.is_bash() && !files_dir.join(STARTED_MARKER).exists()
        {
            reason = Some(StopReason::Infrastructure(format!(
                "the {} runtime did not start the step (exit {})",
                match self.isolation {
                    Isolation::Gvisor => "gvisor",
                    Isolation::Container => "container",
                },
                exit.map(|c| c.to_string()).unwrap_or_else(|| "?".into())
            )));
        }
        if let Some(r) = &reason {
            if !matches!(r, StopReason::Cancelled) {
                self.req.emitter.log(&job.id, name, "build", Stream::System, format!("step stopped: {r}"));
            }
        }
        let status = match (&reason, exit) {
            (Some(StopReason::Cancelled), _) => StepStatus::Cancelled,
            (Some(_), _) => StepStatus::Failure,
            (None, Some(0)) => StepStatus::Success,
            _ => StepStatus::Failure,
        };

        // The step files: outputs, env and path for later steps, the summary.
        let mut summary = None;
        if status != StepStatus::Cancelled {
            self.read_step_files(job, name, step, &files_dir, &mut summary);
        }
        let _ = std::fs::remove_dir_all(&step_dir);
        Ok((
            status,
            exit,
            reason.map(|r| r.to_string()),
            outcome.cpu_seconds,
            outcome.peak_memory_bytes,
            summary,
        ))
    }

    /// Starts this step's egress proxy on a Unix socket in `dir` (bound into
    /// the sandbox at `/kiln/egress`); refusals and cap hits become log
    /// lines the user sees and audit events.
    async fn start_proxy(
        &self,
        job: &PlannedJob,
        name: &str,
        phase: kiln_workflow::Phase,
        network: &kiln_workflow::NetworkSpec,
        dir: &Path,
    ) -> Result<StepProxy, String> {
        use std::os::unix::fs::PermissionsExt;
        let cfg = &self.runner.cfg.egress;
        let mut policy = match network {
            kiln_workflow::NetworkSpec::Registries(extra) => {
                // Operator mirrors are URLs: their `host:port` is let through.
                // (A mirror on an IP address is reached through the
                // operator's opened addresses instead.)
                let mirrors = cfg.registries.iter().filter_map(|r| {
                    let u = url::Url::parse(r).ok()?;
                    let url::Host::Domain(host) = u.host()? else { return None };
                    Some(format!("{host}:{}", u.port_or_known_default()?))
                });
                let hosts: Vec<String> = extra.iter().cloned().chain(mirrors).collect();
                kiln_egress::Policy::registries()
                    .merge(&kiln_egress::Policy::allowing(&hosts).map_err(|e| format!("kiln.network: {e}"))?)
            }
            kiln_workflow::NetworkSpec::Allow(hosts) => {
                kiln_egress::Policy::allowing(hosts).map_err(|e| format!("kiln.network: {e}"))?
            }
            kiln_workflow::NetworkSpec::None => kiln_egress::Policy::none(),
        };
        for addr in &cfg.open {
            policy = policy.with_open(*addr);
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("egress dir: {e}"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        let sock = dir.join(kiln_sandbox::init::EGRESS_SOCKET);
        let listener = tokio::net::UnixListener::bind(&sock).map_err(|e| format!("egress socket: {e}"))?;
        // The step's uid connects; the directory stays root's, so it can
        // neither replace the socket nor add files.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).map_err(|e| e.to_string())?;
        let scope = kiln_egress::StepScope {
            build: self.req.build.clone(),
            job: job.id.clone(),
            step: name.to_string(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = tokio::spawn(kiln_egress::serve_unix(
            listener,
            scope,
            Arc::new(policy),
            cfg.resolver.clone(),
            cfg.counters.clone(),
            tx,
            async move {
                let _ = shutdown_rx.await;
            },
        ));
        let emitter = self.req.emitter.clone();
        let (job_id, step_name, phase) = (job.id.clone(), name.to_string(), phase.as_str().to_string());
        let events = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let (kind, text) = match event {
                    kiln_egress::EgressEvent::Blocked { dest, rule, .. } => {
                        ("egress-blocked", format!("egress blocked: {dest} ({rule})"))
                    }
                    kiln_egress::EgressEvent::CapExceeded { which, limit, .. } => (
                        "egress-cap",
                        format!("egress stopped: {which} limit reached ({})", cap_text(which, limit)),
                    ),
                    _ => continue,
                };
                emitter.log(&job_id, &step_name, &phase, Stream::System, text.clone());
                emitter.emit(Event::Audit {
                    kind: kind.into(),
                    job: job_id.clone(),
                    step: step_name.clone(),
                    detail: text,
                });
            }
        });
        Ok(StepProxy { shutdown: Some(shutdown), serve, events })
    }

    fn read_step_files(
        &mut self,
        job: &PlannedJob,
        name: &str,
        step: &StepSpec,
        dir: &Path,
        summary: &mut Option<String>,
    ) {
        let warn = |s: &Self, m: String| s.req.emitter.log(&job.id, name, "build", Stream::System, m);
        match read_bounded(&dir.join("output"), "GITHUB_OUTPUT")
            .and_then(|t| parse_assignments(&t, "GITHUB_OUTPUT"))
        {
            Ok(pairs) => {
                if let Some(id) = &step.id {
                    let mut outputs = Map::new();
                    for (k, v) in pairs {
                        if self.runner.cfg.scrubber.contains_secret(v.as_bytes()).is_some() {
                            warn(self, format!("output `{k}` dropped: it contains a secret"));
                            continue;
                        }
                        outputs.insert(k, Value::String(v));
                    }
                    self.steps_ctx.insert(id.clone(), json!({ "outputs": outputs }));
                }
            }
            Err(e) => warn(self, format!("ignored {e}")),
        }
        match read_bounded(&dir.join("env"), "GITHUB_ENV").and_then(|t| parse_assignments(&t, "GITHUB_ENV")) {
            Ok(pairs) => {
                for (k, v) in pairs {
                    if protected_env(&k) {
                        warn(self, format!("GITHUB_ENV: `{k}` cannot be overridden"));
                        continue;
                    }
                    self.env.insert(k, Value::String(v));
                }
            }
            Err(e) => warn(self, format!("ignored {e}")),
        }
        match read_bounded(&dir.join("path"), "GITHUB_PATH") {
            Ok(t) => {
                for line in t.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    if line.contains(':') || !line.starts_with('/') {
                        warn(
                            self,
                            format!("GITHUB_PATH: ignored `{line}` (absolute paths without `:` only)"),
                        );
                        continue;
                    }
                    self.path_prefix.insert(0, line.to_string());
                }
            }
            Err(e) => warn(self, format!("ignored {e}")),
        }
        match read_bounded(&dir.join("summary"), "GITHUB_STEP_SUMMARY") {
            Ok(t) if !t.is_empty() => *summary = Some(self.runner.cfg.scrubber.scrub_str(&t)),
            Ok(_) => {}
            Err(e) => warn(self, format!("ignored {e}")),
        }
    }
}

fn cap_text(which: &str, limit: u64) -> String {
    if which == kiln_egress::CAP_BYTES_PER_BUILD {
        crate::limits::human_bytes(limit)
    } else {
        limit.to_string()
    }
}

/// A cache path as the store keeps it: workspace-relative (`target`), or
/// `~/...` for the job's home (`~/.cache/pip`, `~/.cargo/registry`, also
/// written `$HOME/...` or `/home/runner/...`). `None` for a blank line.
fn cache_path_key(line: &str) -> Result<Option<String>, String> {
    let p = line.trim().trim_end_matches('/');
    if p.is_empty() {
        return Ok(None);
    }
    let home_rel = p
        .strip_prefix("~/")
        .or_else(|| p.strip_prefix("$HOME/"))
        .or_else(|| p.strip_prefix("${HOME}/"))
        .or_else(|| p.strip_prefix(HOME).and_then(|r| r.strip_prefix('/')));
    if let Some(rel) = home_rel {
        let rel = rel.trim_start_matches("./");
        kiln_workflow::check_relative_path(rel).map_err(|e| format!("`{p}`: {e}"))?;
        if rel.is_empty() {
            return Err(format!(
                "`{p}`: caching the whole home directory is not supported; name what is in it"
            ));
        }
        return Ok(Some(format!("~/{rel}")));
    }
    let rel = p.strip_prefix(WORKSPACE).map(|r| r.trim_start_matches('/')).unwrap_or(p);
    let rel = rel.trim_start_matches("./");
    kiln_workflow::check_relative_path(rel)?;
    Ok((!rel.is_empty()).then(|| rel.to_string()))
}

/// The directory a cache path key lives under and its path there.
fn cache_path_root<'a>(key: &'a str, ws: &'a Path, home: &'a Path) -> (&'a Path, &'a str) {
    match key.strip_prefix("~/") {
        Some(rel) => (home, rel),
        None => (ws, key),
    }
}

/// (outcome, exit code, reason, cpu seconds, peak memory, summary)
type StepResult = (StepStatus, Option<i32>, Option<String>, f64, u64, Option<String>);

/// Checks that `rel` names a directory beneath `root` without passing
/// through a symlink: earlier steps wrote the workspace, so a component may be
/// a link to anywhere on the host, and kiln must not even look through it.
fn check_dir_beneath(root: &Path, rel: &str) -> Result<(), String> {
    let mut here = root.to_path_buf();
    for part in Path::new(rel).components() {
        match part {
            std::path::Component::Normal(name) => here.push(name),
            std::path::Component::CurDir => continue,
            _ => return Err("must stay inside the workspace".into()),
        }
        let meta =
            std::fs::symlink_metadata(&here).map_err(|_| "does not exist in the workspace".to_string())?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "`{}` is a symbolic link",
                here.strip_prefix(root).unwrap_or(&here).display()
            ));
        }
        if !meta.is_dir() {
            return Err("is not a directory".into());
        }
    }
    Ok(())
}

/// Variables a step may not change through `$GITHUB_ENV`.
fn protected_env(name: &str) -> bool {
    name.starts_with("GITHUB_")
        || name.starts_with("RUNNER_")
        || name.starts_with("LD_")
        || matches!(name, "CI" | "PATH" | "HOME")
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

/// Where steps' egress sockets live (one directory per step, root's).
const EGRESS_ROOT: &str = "/run/kiln/egress";

/// A step's egress socket directory, removed when the step is done (or
/// its run ends early).
#[derive(Debug)]
struct EgressDir(PathBuf);

impl Drop for EgressDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `kiln/package` step's inputs.
#[derive(Debug, Clone, Copy)]
/// The inputs of one `actions/download-artifact` step.
struct DownloadRequest<'a> {
    name: Option<&'a Template>,
    path: Option<&'a Template>,
    pattern: Option<&'a Template>,
    merge_multiple: bool,
}

struct PackageStep<'a> {
    name: &'a Template,
    path: Option<&'a Template>,
    output_type: Option<&'a Template>,
    retention_days: Option<u32>,
    commit: Option<&'a Template>,
}

/// How an artifact is kept: what the record says beyond its files.
#[derive(Debug, Clone)]
struct ArtifactKeep {
    output_type: kiln_store::OutputType,
    retention_days: Option<u32>,
    /// The commands that made it, when the job's `run:` scripts are not
    /// them (the zero-config build's detected commands).
    commands: Option<Vec<String>>,
    /// The source commit, when known only after the fetch.
    commit: Option<String>,
}

/// `static`, `server`, ... (validated when the workflow was loaded).
fn output_type_of(s: &str) -> kiln_store::OutputType {
    match s {
        "server" => kiln_store::OutputType::Server,
        "function" => kiln_store::OutputType::Function,
        "container-image" => kiln_store::OutputType::ContainerImage,
        _ => kiln_store::OutputType::Static,
    }
}

fn output_type_name(t: kiln_store::OutputType) -> &'static str {
    match t {
        kiln_store::OutputType::Static => "static",
        kiln_store::OutputType::Server => "server",
        kiln_store::OutputType::Function => "function",
        kiln_store::OutputType::ContainerImage => "container-image",
    }
}

/// Digest of the environment a job declares, as written: names and the
/// unexpanded templates, so no secret value can enter it.
fn environment_digest(wf: &kiln_workflow::Workflow, job: &kiln_workflow::JobSpec) -> String {
    let mut lines: Vec<String> = Vec::new();
    for (scope, env) in [("workflow", &wf.env), ("job", &job.env)] {
        for (k, v) in env {
            lines.push(format!("{scope}\t{k}\t{}", v.source()));
        }
    }
    lines.sort();
    kiln_store::Digest::of(lines.join("\n").as_bytes()).to_string()
}

/// Removes what interrupted builds left behind: their sandboxes, the
/// workspace mounts and the build directories.
pub fn cleanup_interrupted(state_dir: &Path, builds: &[String]) {
    for build in builds {
        let _ = kiln_sandbox::cleanup_stale(&format!("kiln-{}-", sanitize_id(build)), None);
        let prefix = format!("{}-", sanitize_id(build));
        if let Ok(rd) = std::fs::read_dir(EGRESS_ROOT) {
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

fn sanitize_id(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect()
}

fn prepare_step_dirs(
    script_dir: &Path,
    files_dir: &Path,
    bundle_dir: &Path,
    body: &str,
    shell: &Shell,
) -> std::io::Result<()> {
    use std::os::unix::fs::{chown, PermissionsExt};
    std::fs::create_dir_all(script_dir)?;
    std::fs::create_dir_all(files_dir)?;
    std::fs::create_dir_all(bundle_dir)?;
    let script = script_dir.join(format!("script.{}", shell.extension()));
    std::fs::write(&script, body)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644))?;
    // bash reads $BASH_ENV before the script: the marker that the step's own
    // code was reached (no extra process; the script's line numbers stay).
    let marker = script_dir.join(STARTED_SCRIPT);
    std::fs::write(
        &marker,
        format!("{{ : > {FILES_DIR}/{STARTED_MARKER}; }} 2>/dev/null\nunset BASH_ENV\n"),
    )?;
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o644))?;
    std::fs::set_permissions(script_dir, std::fs::Permissions::from_mode(0o755))?;
    for f in ["output", "env", "path", "summary"] {
        let p = files_dir.join(f);
        std::fs::write(&p, "")?;
        chown(&p, Some(STEP_UID), Some(STEP_GID))?;
    }
    chown(files_dir, Some(STEP_UID), Some(STEP_GID))?;
    std::fs::set_permissions(files_dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// The step's whole environment: kiln's variables, then the user's.
fn step_env(
    github: &Value,
    job: &PlannedJob,
    step: &StepSpec,
    k: usize,
    user: Map<String, Value>,
    path_prefix: &[String],
) -> Vec<(String, String)> {
    let g = |k: &str| github.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut path = path_prefix.to_vec();
    path.push(format!("{HOME}/.local/bin:{HOME}/.cargo/bin"));
    path.push(DEFAULT_PATH.to_string());
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in user {
        if protected_env(&k) && k != "PATH" {
            continue;
        }
        let v = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if k == "PATH" {
            continue;
        }
        env.push((k, v));
    }
    let fixed = [
        ("CI", "true".to_string()),
        ("HOME", HOME.to_string()),
        ("LANG", "C.UTF-8".to_string()),
        ("PATH", path.join(":")),
        ("GITHUB_ACTIONS", "true".to_string()),
        ("GITHUB_WORKSPACE", WORKSPACE.to_string()),
        ("GITHUB_SHA", g("sha")),
        ("GITHUB_REF", g("ref")),
        ("GITHUB_REF_NAME", g("ref_name")),
        ("GITHUB_REPOSITORY", g("repository")),
        ("GITHUB_REPOSITORY_OWNER", g("repository_owner")),
        ("GITHUB_EVENT_NAME", g("event_name")),
        ("GITHUB_RUN_ID", g("run_id")),
        ("GITHUB_RUN_NUMBER", g("run_number")),
        ("GITHUB_RUN_ATTEMPT", g("run_attempt")),
        ("GITHUB_WORKFLOW", g("workflow")),
        ("GITHUB_ACTOR", g("actor")),
        ("GITHUB_JOB", job.key.clone()),
        ("GITHUB_ACTION", step.id.clone().unwrap_or_else(|| format!("__run_{k}"))),
        ("GITHUB_OUTPUT", format!("{FILES_DIR}/output")),
        ("GITHUB_ENV", format!("{FILES_DIR}/env")),
        ("GITHUB_PATH", format!("{FILES_DIR}/path")),
        ("GITHUB_STEP_SUMMARY", format!("{FILES_DIR}/summary")),
        ("RUNNER_OS", "Linux".to_string()),
        ("RUNNER_ARCH", if cfg!(target_arch = "aarch64") { "ARM64" } else { "X64" }.to_string()),
        ("RUNNER_NAME", "kiln".to_string()),
        ("RUNNER_TEMP", format!("{HOME}/{RUNNER_TEMP_REL}")),
        ("RUNNER_TOOL_CACHE", TOOL_CACHE.to_string()),
        // `npm i -g` and `pip install --user` land in the job's home, whose
        // bin directories are on PATH (as on GitHub's Ubuntu runners).
        ("NPM_CONFIG_PREFIX", format!("{HOME}/.local")),
        ("RUNNER_ENVIRONMENT", "self-hosted".to_string()),
    ];
    for (k, v) in fixed {
        env.push((k.to_string(), v));
    }
    env
}

/// Why kiln stopped a step before it ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Cancelled,
    Log,
}

/// Turns a step's output into log entries, and counts it against the limit.
#[derive(Debug, Clone)]
struct StepLogger {
    emitter: super::Emitter,
    job: String,
    step: String,
    bytes: Arc<AtomicU64>,
    limit: u64,
    over: Arc<Notify>,
    tripped: Arc<AtomicBool>,
    phase: String,
    scrubber: Arc<kiln_secrets::Scrubber>,
}

impl StepLogger {
    /// Counts `n` raw bytes; false once the log limit is passed.
    fn count(&self, n: usize) -> bool {
        let total = self.bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > self.limit {
            if !self.tripped.swap(true, Ordering::Relaxed) {
                self.over.notify_one();
            }
            return false;
        }
        true
    }

    fn line(&self, stream: Stream, text: String) {
        self.emitter.log(&self.job, &self.step, &self.phase, stream, text);
    }
}

async fn pump(mut pipe: impl tokio::io::AsyncRead + Unpin, stream: Stream, logger: StepLogger) -> u64 {
    let mut framer = LineFramer::default();
    // The scrubber is the boundary: nothing upstream of it is stored or shown.
    let mut scrub = logger.scrubber.stream();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !logger.count(n) {
            // Keep draining so the sandbox never blocks on a full pipe, but drop the bytes.
            continue;
        }
        for line in framer.push(&scrub.push(&buf[..n])) {
            logger.line(stream, line);
        }
    }
    let tail = scrub.finish();
    if !logger.tripped.load(Ordering::Relaxed) {
        for line in framer.push(&tail) {
            logger.line(stream, line);
        }
        if let Some(rest) = framer.finish() {
            logger.line(stream, rest);
        }
    }
    scrub.counts().total()
}

/// Starts the sandbox, streams its output, enforces the deadline, the log
/// limit and cancellation, and tears it down.
async fn run_sandbox(
    runtime: Runtime,
    spec: SandboxSpec,
    bundle_dir: PathBuf,
    logger: StepLogger,
    deadline: Instant,
    mut cancel: watch::Receiver<bool>,
    stdin_secrets: Option<Vec<u8>>,
) -> Result<(kiln_sandbox::Outcome, Option<Stop>, u64), String> {
    let sandbox = tokio::task::spawn_blocking(move || Sandbox::prepare(&runtime, &spec, &bundle_dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let sandbox = Arc::new(sandbox);
    let mut cmd = tokio::process::Command::from(sandbox.command());
    let stdin = if stdin_secrets.is_some() { Stdio::piped() } else { Stdio::null() };
    cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let sb = sandbox.clone();
            let _ = tokio::task::spawn_blocking(move || sb.kill()).await;
            return Err(format!("starting the sandbox runtime: {e}"));
        }
    };
    if let (Some(mut secrets), Some(mut stdin)) = (stdin_secrets, child.stdin.take()) {
        // kiln-init reads to EOF, then starts the step; the pipe is closed here.
        use tokio::io::AsyncWriteExt;
        let written = stdin.write_all(&secrets).await;
        secrets.fill(0);
        drop(stdin);
        if let Err(e) = written {
            tracing::warn!("handing secrets to the sandbox: {e}");
        }
    }
    let out = tokio::spawn(pump(child.stdout.take().expect("piped"), Stream::Stdout, logger.clone()));
    let err = tokio::spawn(pump(child.stderr.take().expect("piped"), Stream::Stderr, logger.clone()));
    let over = logger.over.clone();
    let (status, stopped) = tokio::select! {
        s = child.wait() => (Some(s), None),
        _ = tokio::time::sleep_until(deadline.into()) => (None, Some(Stop::Timeout)),
        _ = wait_cancel(&mut cancel) => (None, Some(Stop::Cancelled)),
        _ = over.notified() => (None, Some(Stop::Log)),
    };
    let status = match status {
        Some(s) => s.map_err(|e| e.to_string())?,
        None => {
            let sb = sandbox.clone();
            let _ = tokio::task::spawn_blocking(move || sb.kill()).await;
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(s) => s.map_err(|e| e.to_string())?,
                Err(_) => {
                    let _ = child.start_kill();
                    child.wait().await.map_err(|e| e.to_string())?
                }
            }
        }
    };
    // The pipes close when the sandbox is gone; don't wait forever if not.
    let redactions = tokio::time::timeout(Duration::from_secs(5), async {
        out.await.unwrap_or(0) + err.await.unwrap_or(0)
    })
    .await
    .unwrap_or(0);
    let sandbox = Arc::try_unwrap(sandbox).map_err(|_| "sandbox still shared".to_string())?;
    let outcome = tokio::task::spawn_blocking(move || sandbox.finish(status))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((outcome, stopped, redactions))
}

async fn wait_cancel(cancel: &mut watch::Receiver<bool>) {
    loop {
        if *cancel.borrow() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
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

    #[test]
    fn working_directories_never_pass_through_symlinks() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ws.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.path().join("a/escape")).unwrap();
        assert!(check_dir_beneath(ws.path(), "a/b").is_ok());
        assert!(check_dir_beneath(ws.path(), "./a").is_ok());
        assert!(check_dir_beneath(ws.path(), "a/escape").unwrap_err().contains("symbolic link"));
        assert!(check_dir_beneath(ws.path(), "a/escape/ssl").is_err());
        assert!(check_dir_beneath(ws.path(), "../a").is_err());
        assert!(check_dir_beneath(ws.path(), "missing").is_err());
    }

    #[test]
    fn cache_paths_name_the_workspace_or_the_home() {
        assert_eq!(cache_path_key("~/.cache/pip").unwrap().as_deref(), Some("~/.cache/pip"));
        assert_eq!(cache_path_key("$HOME/.npm/").unwrap().as_deref(), Some("~/.npm"));
        assert_eq!(
            cache_path_key("/home/runner/.cargo/registry").unwrap().as_deref(),
            Some("~/.cargo/registry")
        );
        assert_eq!(cache_path_key("./node_modules").unwrap().as_deref(), Some("node_modules"));
        assert_eq!(cache_path_key("/workspace/target").unwrap().as_deref(), Some("target"));
        assert_eq!(cache_path_key("  ").unwrap(), None);
        for bad in ["~/../../etc", "/etc/passwd", "../x", "~/", "/home/runnerx/a", "~root/x"] {
            assert!(cache_path_key(bad).is_err(), "{bad}");
        }
        let (ws, home) = (Path::new("/w"), Path::new("/h"));
        assert_eq!(cache_path_root("~/.npm", ws, home), (home, ".npm"));
        assert_eq!(cache_path_root("target", ws, home), (ws, "target"));
    }

    #[test]
    fn protected_variables_cannot_be_set_through_github_env() {
        assert!(protected_env("GITHUB_OUTPUT"));
        assert!(protected_env("PATH"));
        assert!(protected_env("LD_PRELOAD"));
        assert!(!protected_env("NODE_ENV"));
    }
}
