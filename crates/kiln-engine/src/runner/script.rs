//! A `run:` step: its script and step files on the host, its environment
//! and secrets (handed to kiln-init on stdin, never written), its egress
//! proxy, the sandbox, and what it left in `$GITHUB_OUTPUT`/`ENV`/`PATH`.

use crate::event::Event;
use crate::limits::StopReason;
use crate::log::Stream;
use crate::runner::env::*;
use crate::runner::host::{OneShot, SandboxHost};
use crate::runner::job::*;
use crate::runner::phase::*;
use crate::runner::sandbox::*;
use crate::runner::stepfiles::{parse_assignments, read_bounded};
use crate::runner::StepStatus;
use kiln_sandbox::{Bind, Isolation, SandboxSpec};
use kiln_workflow::{PlannedJob, Shell, ShellError, ShellSpec, StepSpec, Template};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A step's (or a phase's) running egress proxy.
#[derive(Debug)]
pub(crate) struct StepProxy {
    pub(crate) shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) serve: tokio::task::JoinHandle<()>,
    pub(crate) events: tokio::task::JoinHandle<()>,
}

impl StepProxy {
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.serve).await;
        self.serve.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.events).await;
    }
}

/// Where kiln's Unix sockets into sandboxes live (the egress proxy's, the
/// step agent's): one root-owned directory each, named after the build,
/// under a short path (a socket path has at most 107 bytes).
pub const SOCKET_ROOT: &str = "/run/kiln/egress";

/// A socket directory under [`SOCKET_ROOT`], removed when its step or
/// phase is done (or its run ends early).
#[derive(Debug)]
pub(crate) struct SocketDir(pub(crate) PathBuf);

/// Listens on `dir/name` for a sandbox's processes (the step user): the
/// directory is root's and 0755, so they can neither replace the socket
/// nor add files; the socket is 0666, so they can connect.
pub(crate) fn listen_for_sandbox(dir: &Path, name: &str) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let sock = dir.join(name);
    let listener = tokio::net::UnixListener::bind(&sock)?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a step's script (read-only to it) and its empty step files
/// (owned by the step user) on the host; `files_inside` is where the files
/// directory is inside the sandbox.
/// The variables that send HTTP(S) through kiln-init's relay to the proxy.
pub(crate) fn proxy_env() -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{EGRESS_PORT}");
    let mut out: Vec<(String, String)> = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
        .iter()
        .map(|v| (v.to_string(), url.clone()))
        .collect();
    out.push(("NO_PROXY".into(), "localhost,127.0.0.1".into()));
    out.push(("no_proxy".into(), "localhost,127.0.0.1".into()));
    out
}

pub(crate) fn prepare_step_dirs(
    script_dir: &Path,
    files_dir: &Path,
    files_inside: &str,
    body: &str,
    shell: &Shell,
    host: &dyn SandboxHost,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(script_dir)?;
    std::fs::create_dir_all(files_dir)?;
    let script = script_dir.join(format!("script.{}", shell.extension()));
    std::fs::write(&script, body)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644))?;
    // bash reads $BASH_ENV before the script: the marker that the step's own
    // code was reached (no extra process; the script's line numbers stay).
    let marker = script_dir.join(STARTED_SCRIPT);
    std::fs::write(
        &marker,
        format!("{{ : > {files_inside}/{STARTED_MARKER}; }} 2>/dev/null\nunset BASH_ENV\n"),
    )?;
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o644))?;
    std::fs::set_permissions(script_dir, std::fs::Permissions::from_mode(0o755))?;
    for f in ["output", "env", "path", "summary"] {
        std::fs::write(files_dir.join(f), "")?;
    }
    host.give_to_step_user(files_dir)?;
    std::fs::set_permissions(files_dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// A `run:` step: its script in the phase's sandbox (or, handed secrets,
/// in one of its own).
pub(crate) struct Script<'a> {
    pub(crate) script: &'a Template,
    pub(crate) shell: Option<&'a ShellSpec>,
}

impl crate::runner::builtins::Builtin for Script<'_> {
    fn title(&self) -> String {
        let first = self.script.source().lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        let first: String = first.chars().take(60).collect();
        format!("Run {first}")
    }

    fn run<'s>(
        &'s self,
        run: &'s mut JobRun<'_>,
        at: crate::runner::builtins::StepAt<'s>,
    ) -> crate::runner::builtins::StepFut<'s> {
        Box::pin(run.run_script(at.job, at.k, at.step, at.name, self.script, self.shell))
    }
}

impl JobRun<'_> {
    pub(crate) async fn run_script(
        &mut self,
        job: &PlannedJob,
        k: usize,
        step: &StepSpec,
        name: &str,
        script: &Template,
        shell: Option<&ShellSpec>,
    ) -> Result<StepResult, StepError> {
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
        // A value holding a secret (put into $GITHUB_ENV by an earlier step)
        // reaches this step only if this step is bound to that secret.
        {
            let bound: std::collections::HashSet<&str> = bindings.iter().map(|b| b.name.as_str()).collect();
            let sc = self.runner.cfg.scrubber.clone();
            let mut dropped = Vec::new();
            env.retain(|k, v| {
                if secret_keys.contains(k) {
                    return true;
                }
                match v.as_str().and_then(|s| sc.contains_secret(s.as_bytes())) {
                    Some(secret) if !bound.contains(secret) => {
                        dropped.push((k.clone(), secret.to_string()));
                        false
                    }
                    _ => true,
                }
            });
            for (k, secret) in dropped {
                self.sys(
                    name,
                    format!("env {k} not passed to this step: it holds the value of secret `{secret}`, which this step is not bound to"),
                );
            }
        }
        let mut ctx = self.contexts();
        ctx.env = Value::Object(env.clone());
        let body = script.render(&ctx, status).map_err(|e| format!("run: {e}"))?;
        // The script is a file on disk: a secret must never be rendered
        // into it (`${{ env.X }}` where X holds one). The variable itself is
        // in the step's environment, handed over without touching disk.
        if let Some(secret) = self.runner.cfg.scrubber.contains_secret(body.as_bytes()) {
            return Err(StepError::User(format!(
                "the script would contain the value of secret `{secret}` (an expression in `run:` expands to it); \
                 kiln never writes secrets to disk: read it from the environment instead (`$NAME`, not `${{{{ env.NAME }}}}`)"
            )));
        }
        let defaults = &job.spec.defaults;
        let wf_defaults = &self.req.plan.workflow.defaults;
        let shell = match shell.or(defaults.shell.as_ref()).or(wf_defaults.shell.as_ref()) {
            None => Shell::Default,
            Some(ShellSpec::Fixed(s)) => s.clone(),
            Some(ShellSpec::Expr(t)) => {
                let text = t.render(&ctx, status).map_err(|e| format!("shell: {e}"))?;
                match Shell::parse(&text) {
                    Ok(s) => s,
                    Err(ShellError::Invalid(m) | ShellError::Unavailable(m)) => return Err(m.into()),
                }
            }
            Some(ShellSpec::Unavailable(r)) => return Err(r.reason.clone().into()),
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

        // Where the step runs: its phase's sandbox, shared with the steps
        // around it (background processes live until the phase ends), or a
        // sandbox of its own when it is handed secrets: in a shared one
        // another step's process could read them from /proc/<pid>/environ.
        let scrubber = self.runner.cfg.scrubber.clone();
        let secrets = !files.is_empty()
            || !secret_keys.is_empty()
            || env
                .values()
                .any(|v| v.as_str().is_some_and(|v| scrubber.contains_secret(v.as_bytes()).is_some()));
        let phase = step.phase(&job.spec);
        let network = step
            .network(&job.spec, &self.req.plan.workflow)
            .unwrap_or(&self.runner.cfg.default_network)
            .clone();
        if phase == kiln_workflow::Phase::Build && !matches!(network, kiln_workflow::NetworkSpec::None) {
            self.network_in_build = true;
        }
        let n = self.runner.next_id.fetch_add(1, Ordering::Relaxed);
        let key = format!("{}|{network:?}", phase.as_str());
        let placement = crate::runner::placement::place(
            self.phase_box.as_ref().map(|p| p.key.as_str()),
            crate::runner::placement::StepKind::Script {
                key: &key,
                phase: phase.as_str(),
                secrets,
                per_step: !self.runner.cfg.phase_sandboxes,
            },
        );
        let alone = matches!(placement, crate::runner::placement::Placement::Alone { .. });
        match &placement {
            crate::runner::placement::Placement::Alone { close: Some(why) }
            | crate::runner::placement::Placement::Open { close: Some(why), .. } => {
                self.close_phase(job, name, why).await
            }
            _ => {}
        }
        if let crate::runner::placement::Placement::Open { key, .. } = placement {
            self.open_phase(job, name, phase, &network, key).await?;
        }
        let (step_dir, script_dir, files_dir, script_inside, files_inside) = if alone {
            let d = self.dir.join(format!("step-{k}"));
            (d.clone(), d.join("script"), d.join("files"), STEP_DIR.to_string(), FILES_DIR.to_string())
        } else {
            let dir = self.phase_box.as_ref().map(|p| p.dir.clone()).ok_or("no phase sandbox")?;
            let (script_dir, files_dir) =
                (dir.join("steps").join(n.to_string()), dir.join("files").join(n.to_string()));
            (
                script_dir.clone(),
                script_dir,
                files_dir,
                format!("{PHASE_STEPS_DIR}/{n}"),
                format!("{PHASE_FILES_DIR}/{n}"),
            )
        };
        prepare_step_dirs(&script_dir, &files_dir, &files_inside, &body, &shell, &*self.runner.host)
            .map_err(|e| e.to_string())?;
        let script_path = format!("{script_inside}/script.{}", shell.extension());

        let mut full_env =
            step_env(&self.req.contexts.github, job, step, k, env, &self.path_prefix, &files_inside);
        if let Some(p) = &self.action_path {
            full_env.push(("GITHUB_ACTION_PATH".into(), p.clone()));
        }
        if shell.is_bash() {
            full_env.retain(|(k, _)| k != "BASH_ENV");
            full_env.push(("BASH_ENV".into(), format!("{script_inside}/{STARTED_SCRIPT}")));
        }
        if !alone {
            if self.phase_box.as_ref().is_some_and(|p| p.network) {
                full_env.extend(proxy_env());
            }
            let step_timeout = step.timeout_minutes.map(|m| Duration::from_secs_f64(m * 60.0));
            let (deadline, timeout_len) = match step_timeout {
                Some(t) if Instant::now() + t < self.deadline => (Instant::now() + t, t),
                _ => (self.deadline, self.job_timeout),
            };
            let exec = kiln_sandbox::agent::RunRequest { argv: shell.argv(&script_path), env: full_env, cwd };
            let logger = self.step_logger(job, step, name);
            let run = self.exec_in_phase(job, name, exec, logger, deadline).await;
            let run = run.map_err(StepError::Infrastructure)?;
            let result = self.finish_script(job, step, name, &shell, run, timeout_len, &files_dir);
            let _ = std::fs::remove_dir_all(&script_dir);
            let _ = std::fs::remove_dir_all(&files_dir);
            if result.0 != StepStatus::Success {
                // What a failed step leaves running is not trusted to be
                // sane: the steps after it get a fresh sandbox.
                self.close_phase(job, name, "").await;
            }
            return Ok(result);
        }
        let bundle_dir = step_dir.join("bundle");
        std::fs::create_dir_all(&bundle_dir).map_err(|e| e.to_string())?;
        // Network: loopback only, or kiln's proxy through kiln-init's relay.
        // The proxy's socket lives under a short root-owned path: a Unix
        // socket path has at most 107 bytes, and the state dir can be deep.
        let egress_dir = SocketDir(Path::new(SOCKET_ROOT).join(format!(
            "{}-{}-{n}",
            sanitize_id(&self.req.build),
            self.req.job
        )));
        let proxy = match &network {
            kiln_workflow::NetworkSpec::None => None,
            spec @ (kiln_workflow::NetworkSpec::Allow(_) | kiln_workflow::NetworkSpec::Registries(_)) => {
                let proxy = self.start_proxy(job, name, phase, spec, &egress_dir.0).await?;
                full_env.extend(proxy_env());
                Some(proxy)
            }
        };
        // Anything secret goes to kiln-init on stdin, never into the spec on
        // disk: env values that read a secret, or that contain one (e.g. one
        // a step put into $GITHUB_ENV), and file secrets.
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
        let (service_binds, forwards) = self.service_reach();
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
            ]
            .into_iter()
            .chain(self.tool_binds.iter().cloned())
            .chain(service_binds)
            .collect(),
            limits: self.limits.sandbox_limits(),
            uid: STEP_UID,
            gid: STEP_GID,
            root: self.workspace.as_ref().and_then(|w| w.root()),
            // kiln-init is PID 1 only where it has work (secrets on stdin,
            // the egress relay, the services' forwards): under gVisor its
            // extra exec costs ~35 ms per step. Without it the shell is
            // PID 1 and the runtime's teardown still ends every process the
            // step left behind.
            init: (stdin_secrets.is_some() || proxy.is_some() || forwards.is_some()).then(|| {
                kiln_sandbox::InitSpec {
                    binary: self.runner.cfg.init.clone(),
                    secrets: stdin_secrets.is_some(),
                    egress: proxy.as_ref().map(|_| (egress_dir.0.clone(), EGRESS_PORT)),
                    agent: None,
                    forwards: forwards.clone(),
                    dial: None,
                }
            }),
        };
        let step_timeout = step.timeout_minutes.map(|m| Duration::from_secs_f64(m * 60.0));
        let (deadline, timeout_len) = match step_timeout {
            Some(t) if Instant::now() + t < self.deadline => (Instant::now() + t, t),
            _ => (self.deadline, self.job_timeout),
        };
        let runtime = self.runtime()?;
        let logger = self.step_logger(job, step, name);
        let one = OneShot {
            spec,
            bundle: bundle_dir,
            logger,
            deadline,
            cancel: self.req.cancel.clone(),
            stdin_secrets,
        };
        let run = self.runner.host.run_once(runtime, one).await;
        if let Some(proxy) = proxy {
            proxy.stop().await;
        }
        let run = run.map_err(StepError::Infrastructure)?;
        let result = self.finish_script(job, step, name, &shell, run, timeout_len, &files_dir);
        let _ = std::fs::remove_dir_all(&step_dir);
        Ok(result)
    }

    /// The logger of one step's output (scrubbed, counted against its log limit).
    pub(crate) fn step_logger(&self, job: &PlannedJob, step: &StepSpec, name: &str) -> StepLogger {
        StepLogger {
            emitter: self.req.emitter.clone(),
            job: job.id.clone(),
            step: self.req.emitter.clean(name.to_string()),
            bytes: Arc::new(AtomicU64::new(0)),
            limit: self.limits.log_bytes,
            over: Arc::new(Notify::new()),
            tripped: Arc::new(AtomicBool::new(false)),
            phase: step.phase(&job.spec).as_str().to_string(),
            scrubber: self.runner.cfg.scrubber.clone(),
        }
    }

    /// How a script step ended, from its sandbox's outcome: the redactions,
    /// the stop reason (cancellation, a limit, kiln's own stops), its status,
    /// and what it left in its step files.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_script(
        &mut self,
        job: &PlannedJob,
        step: &StepSpec,
        name: &str,
        shell: &Shell,
        run: (kiln_sandbox::Outcome, Option<Stop>, u64),
        timeout_len: Duration,
        files_dir: &Path,
    ) -> StepResult {
        let (outcome, stopped, r) = run;
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
            self.read_step_files(job, name, step, files_dir, &mut summary);
        }
        (status, exit, reason.map(|r| r.to_string()), outcome.cpu_seconds, outcome.peak_memory_bytes, summary)
    }

    /// Starts this step's egress proxy on a Unix socket in `dir` (bound into
    /// the sandbox at `/kiln/egress`); refusals and cap hits become log
    /// lines the user sees and audit events.
    pub(crate) async fn start_proxy(
        &self,
        job: &PlannedJob,
        name: &str,
        phase: kiln_workflow::Phase,
        network: &kiln_workflow::NetworkSpec,
        dir: &Path,
    ) -> Result<StepProxy, String> {
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
        let listener = listen_for_sandbox(dir, kiln_sandbox::init::EGRESS_SOCKET)
            .map_err(|e| format!("egress socket: {e}"))?;
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

    pub(crate) fn read_step_files(
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
