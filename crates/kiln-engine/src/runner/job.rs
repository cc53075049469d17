//! The job loop: one job's state while its steps run, each step's `if`,
//! what it does (a script, a built-in action, a composite action), and how
//! its result is recorded and read by the steps after it.

use crate::event::Event;
use crate::limits::{StepLimits, StopReason};
use crate::log::Stream;
use crate::runner::env::*;
use crate::runner::sandbox::*;
use crate::runner::{JobOutcome, JobRequest, StepRecord, StepStatus};
use kiln_sandbox::{Isolation, Workspace};
use kiln_workflow::{BoolOrExpr, Contexts, JobResult, PlannedJob, StatusFns, StepSpec, Template};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The state of one job while it runs.
pub(crate) struct JobRun<'a> {
    pub(crate) runner: &'a SandboxRunner,
    pub(crate) req: &'a JobRequest,
    pub(crate) dir: PathBuf,
    pub(crate) workspace: Option<Workspace>,
    /// `hashFiles()` over the workspace.
    pub(crate) hasher: Option<super::globs::WorkspaceHasher>,
    /// The commands `kiln/detect` chose, for the provenance of the package.
    pub(crate) detected_commands: Option<Vec<String>>,
    /// A build-phase step of this job ran with a network.
    pub(crate) network_in_build: bool,
    pub(crate) limits: StepLimits,
    pub(crate) isolation: Isolation,
    /// The job's `env` plus everything `$GITHUB_ENV` added.
    pub(crate) env: Map<String, Value>,
    /// `$GITHUB_PATH` entries, newest first.
    pub(crate) path_prefix: Vec<String>,
    pub(crate) steps_ctx: Map<String, Value>,
    pub(crate) failed: bool,
    pub(crate) exit_code: Option<i32>,
    pub(crate) reason: Option<String>,
    pub(crate) cpu_seconds: f64,
    pub(crate) peak_memory: u64,
    pub(crate) deadline: Instant,
    pub(crate) job_timeout: Duration,
    /// Redactions in this job's output so far, and in its last step's.
    pub(crate) redactions: u64,
    pub(crate) last_redactions: u64,
    /// Caches to save when the job succeeds: (key, paths).
    pub(crate) cache_saves: Vec<(String, Vec<String>)>,
    /// Inside a composite action: its `inputs` and its directory
    /// (`GITHUB_ACTION_PATH`), and how deep the actions nest.
    pub(crate) inputs: Option<Value>,
    pub(crate) action_path: Option<String>,
    pub(crate) composite_depth: usize,
    /// The sandbox of the phase the job's steps are in now.
    pub(crate) phase_box: Option<crate::runner::phase::PhaseBox>,
    /// The image the job runs on, `NAME@sha256:HEX` (none: the host's `/usr`).
    pub(crate) image: Option<String>,
    /// Read-only binds every later sandbox of the job gets (tools a setup
    /// action fetched).
    pub(crate) tool_binds: Vec<kiln_sandbox::Bind>,
    /// What those tools are, for the provenance of the job's artifacts.
    pub(crate) tools: Vec<kiln_store::ToolInfo>,
    /// The job's `services:`, running while its steps do.
    pub(crate) services: super::services::Services,
}

/// Writes kiln's commands into `dir` (root-owned, read-only to steps).
fn write_shims(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let rustup = dir.join("rustup");
    std::fs::write(&rustup, super::builtins::RUSTUP_SHIM)?;
    std::fs::set_permissions(&rustup, std::fs::Permissions::from_mode(0o755))?;
    if let Some(parent) = dir.parent() {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

/// Why a step could not do its work (a step that ran and exited non-zero
/// is not an error: it is a [`StepResult`] with its exit code).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// The workflow, the workspace or the step's inputs: the user's to fix.
    #[error("{0}")]
    User(String),
    /// kiln or the host failed; the build may be retried.
    #[error("infrastructure error: {0}")]
    Infrastructure(String),
}

impl From<String> for StepError {
    fn from(s: String) -> StepError {
        StepError::User(s)
    }
}

impl From<&str> for StepError {
    fn from(s: &str) -> StepError {
        StepError::User(s.to_string())
    }
}

/// (outcome, exit code, reason, cpu seconds, peak memory, summary)
pub(crate) type StepResult = (StepStatus, Option<i32>, Option<String>, f64, u64, Option<String>);

/// Checks that `rel` names a directory beneath `root` without passing
/// through a symlink: earlier steps wrote the workspace, so a component may be
/// a link to anywhere on the host, and kiln must not even look through it.
pub(crate) fn check_dir_beneath(root: &Path, rel: &str) -> Result<(), String> {
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

pub(crate) fn sanitize_id(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect()
}

pub(crate) fn cap_text(which: &str, limit: u64) -> String {
    if which == kiln_egress::CAP_BYTES_PER_BUILD {
        crate::limits::human_bytes(limit)
    } else {
        limit.to_string()
    }
}

impl<'a> JobRun<'a> {
    pub(crate) fn new(runner: &'a SandboxRunner, req: &'a JobRequest) -> JobRun<'a> {
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
            phase_box: None,
            image: None,
            tool_binds: Vec::new(),
            tools: Vec::new(),
            services: Default::default(),
        }
    }

    pub(crate) fn sys(&self, step: &str, text: String) {
        let job = &self.req.plan.jobs[self.req.job];
        self.req.emitter.log(&job.id, step, "", Stream::System, text);
    }

    pub(crate) fn contexts(&self) -> Contexts {
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
        if !self.services.context.is_empty() {
            c.job["services"] = Value::Object(self.services.context.clone());
        }
        c
    }

    pub(crate) fn status_fns(&self) -> StatusFns<'_> {
        StatusFns {
            files: self.hasher.as_ref().map(|h| h as &dyn kiln_workflow::FileHasher),
            ..StatusFns::new(!self.failed, self.failed, *self.req.cancel.borrow())
        }
    }

    pub(crate) async fn run(&mut self, job: &PlannedJob) -> JobOutcome {
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
        if let Err(e) = self.start_services(job).await {
            self.sys("", e.to_string());
            let mut o = JobOutcome::new(JobResult::Failure);
            o.reason = Some(match e {
                StepError::User(e) => e,
                StepError::Infrastructure(e) => StopReason::Infrastructure(e).to_string(),
            });
            return o;
        }
        for (k, step) in job.spec.steps.iter().enumerate() {
            self.run_step(job, k, step).await;
        }
        // The job's steps are done: what they left running ends now, before
        // caches are saved from the disk, and so do its services.
        self.close_phase(job, "", "").await;
        self.stop_services().await;
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
                // Outputs reach other jobs, which no binding covers.
                Ok(v) => match self.runner.cfg.scrubber.contains_secret(v.as_bytes()) {
                    Some(secret) => self.sys(
                        "",
                        format!("output `{name}` dropped: it holds the value of secret `{secret}`, and job outputs reach other jobs"),
                    ),
                    None => {
                        outcome.outputs.insert(name.clone(), Value::String(v));
                    }
                },
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

    pub(crate) async fn setup(&mut self, job: &PlannedJob) -> Result<(), crate::EngineError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| crate::EngineError::io("creating", &self.dir, e))?;
        let ws_dir = self.dir.join("disk");
        let disk = self.limits.disk_bytes;
        let host = self.runner.host.clone();
        let ws = tokio::task::spawn_blocking(move || host.job_disk(&ws_dir, disk)).await.map_err(|e| {
            crate::EngineError::io("creating workspace", PathBuf::new(), std::io::Error::other(e))
        })??;
        self.hasher = Some(super::globs::WorkspaceHasher { ws: ws.path(), home: Some(ws.home()) });
        // `RUNNER_TEMP`: GitHub's layout, on the job's disk.
        let temp = ws.home().join(RUNNER_TEMP_REL);
        std::fs::create_dir_all(&temp)
            .and_then(|_| self.runner.host.give_to_step_user(&ws.home()))
            .map_err(|e| crate::EngineError::io("creating", &temp, e))?;
        // kiln's own commands (`rustup` over the image's toolchain), root's,
        // written before any step ran.
        let shims = ws.tool_cache().join(super::env::SHIM_DIR_REL);
        write_shims(&shims).map_err(|e| crate::EngineError::io("writing", &shims, e))?;
        self.workspace = Some(ws);
        self.choose_image().await?;
        // The job's env: rendered once, in order, each value seeing the ones before.
        let status = StatusFns::new(true, false, false);
        for (k, t) in &job.spec.env {
            let v = self.render(t, status).unwrap_or_default();
            self.env.insert(k.clone(), Value::String(v));
        }
        Ok(())
    }

    /// Mounts the job's writable root over the image its `runs-on` labels
    /// map to; without one the job's sandboxes see the host's `/usr`.
    async fn choose_image(&mut self) -> Result<(), crate::EngineError> {
        let (labels, container): (Vec<String>, Option<String>) = {
            let job = &self.req.plan.jobs[self.req.job];
            let status = StatusFns::new(true, false, false);
            let ctx = self.contexts();
            let container = job.spec.container.as_ref().and_then(|t| t.render(&ctx, status).ok());
            let container = container.map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
            (job.spec.runs_on.iter().filter_map(|t| t.render(&ctx, status).ok()).collect(), container)
        };
        let choice =
            match container {
                // `container:` wins over `runs-on`; the build loop refused the job
                // already when the image is not here.
                Some(name) => {
                    let (store, dir) =
                        self.runner.cfg.image_store.clone().ok_or_else(|| {
                            crate::EngineError::Setup("no image store for `container:`".into())
                        })?;
                    let image = kiln_image::resolve(&store, &name)
                        .await
                        .map_err(|e| crate::EngineError::Setup(format!("container {name}: {e}")))?;
                    let path = kiln_image::materialize(&store, &image, &dir)
                        .await
                        .map_err(|e| crate::EngineError::Setup(format!("container {name}: {e}")))?;
                    let env = image.manifest.source.env().to_vec();
                    ImageChoice { pattern: String::new(), name, found: Some((image.digest, path)), env }
                }
                None => {
                    let choice = self
                        .runner
                        .cfg
                        .images
                        .iter()
                        .find(|c| labels.iter().any(|l| kiln_workflow::label_matches(&c.pattern, l)));
                    let Some(choice) = choice.cloned() else { return Ok(()) };
                    choice
                }
            };
        let Some((digest, dir)) = choice.found else {
            self.sys(
                "",
                format!(
                    "runs-on {}: image {} is not built here, so the job sees the host's /usr (build it with `kiln image build {}`)",
                    labels.join(", "),
                    choice.name,
                    choice.name
                ),
            );
            return Ok(());
        };
        let ws = self.workspace.take().ok_or_else(|| crate::EngineError::Setup("no workspace".into()))?;
        let (res, ws) = tokio::task::spawn_blocking(move || {
            let r = ws.mount_root(&dir, STEP_UID, STEP_GID, super::env::HOME);
            (r, ws)
        })
        .await
        .map_err(|e| {
            crate::EngineError::io("mounting the job's root", PathBuf::new(), std::io::Error::other(e))
        })?;
        self.workspace = Some(ws);
        res?;
        let image = format!("{}@{digest}", choice.name);
        self.sys("", format!("runs on image {image}"));
        self.image = Some(image);
        // The image's own environment (OCI config), under the job's.
        for pair in &choice.env {
            let Some((k, v)) = pair.split_once('=') else { continue };
            if k == "PATH" {
                let default: Vec<&str> = super::env::DEFAULT_PATH.split(':').collect();
                for dir in v.split(':').filter(|d| d.starts_with('/') && !default.contains(d)) {
                    if !self.path_prefix.iter().any(|p| p == dir) {
                        self.path_prefix.push(dir.to_string());
                    }
                }
            } else if !super::env::protected_env(k) && !k.is_empty() {
                self.env.insert(k.to_string(), Value::String(v.to_string()));
            }
        }
        Ok(())
    }

    pub(crate) fn render(&self, t: &Template, status: StatusFns) -> Result<String, String> {
        t.render(&self.contexts(), status).map_err(|e| e.to_string())
    }

    pub(crate) async fn teardown(&mut self) {
        if let Some(job) = self.req.plan.jobs.get(self.req.job) {
            self.close_phase(job, "", "").await;
        }
        self.stop_services().await;
        if let Some(ws) = self.workspace.take() {
            let _ = tokio::task::spawn_blocking(move || ws.destroy()).await;
        }
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }

    pub(crate) fn step_name(job: &PlannedJob, step: &StepSpec, ctx: &Contexts, status: StatusFns) -> String {
        if let Some(n) = &step.name {
            if let Ok(s) = n.render(ctx, status) {
                if !s.trim().is_empty() {
                    return s;
                }
            }
        }
        let _ = job;
        super::builtins::of(&step.action).title()
    }

    /// Runs what a step does and returns how it ended (the caller logs and
    /// records it). Boxed: a composite action's steps come back here.
    pub(crate) fn execute<'s>(
        &'s mut self,
        job: &'s PlannedJob,
        k: usize,
        step: &'s StepSpec,
        name: &'s str,
        started_at: &'s str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<StepResult, StepError>> + Send + 's>> {
        Box::pin(async move {
            let builtin = super::builtins::of(&step.action);
            // A built-in that works on the job's disk from the host (reads
            // files to store them, writes restored ones) must not race a
            // process of the phase that could swap a path for a link
            // meanwhile: the phase's processes end first.
            if builtin.on_host() {
                let current = self.phase_box.as_ref().map(|p| p.key.as_str());
                if let crate::runner::placement::Placement::Host { close: Some(why) } =
                    crate::runner::placement::place(current, crate::runner::placement::StepKind::HostBuiltin)
                {
                    self.close_phase(job, name, &why).await;
                }
            }
            let at = super::builtins::StepAt { job, k, step, name, started_at };
            builtin.run(self, at).await
        })
    }

    pub(crate) async fn run_step(&mut self, job: &PlannedJob, k: usize, step: &StepSpec) {
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
            Err(e) => (StepStatus::Failure, None, Some(e.to_string()), 0.0, 0, None),
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

    pub(crate) fn fail(&mut self, exit: Option<i32>, reason: Option<String>) {
        if !self.failed {
            self.exit_code = exit;
            self.reason = reason.or_else(|| exit.map(|c| format!("exit code {c}")));
        }
        self.failed = true;
    }

    pub(crate) fn step_continue_on_error(&self, step: &StepSpec) -> bool {
        match &step.continue_on_error {
            BoolOrExpr::Literal(b) => *b,
            BoolOrExpr::Expr(t) => t
                .eval(&self.contexts(), self.status_fns())
                .map(|v| !matches!(v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0))
                .unwrap_or(false),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_step(
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

    pub(crate) fn finish_step(&mut self, k: usize, step: &StepSpec, record: StepRecord) {
        if let Some(id) = &step.id {
            let outputs = self.steps_ctx.get(id).and_then(|s| s.get("outputs")).cloned().unwrap_or(json!({}));
            self.steps_ctx.insert(
                id.clone(),
                json!({ "outputs": outputs, "outcome": record.outcome.as_str(), "conclusion": record.conclusion.as_str() }),
            );
        }
        self.req.emitter.emit(Event::StepFinished { job: self.req.job, step: k, record });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
