//! The seam between the job loop and the sandbox runtime.
//!
//! Everything the job loop, the services and the built-ins ask of a
//! sandbox goes through [`SandboxHost`]: boot one whose PID 1 serves the
//! step agent (a phase's sandbox, a service), or run one step in a sandbox
//! of its own (a step handed secrets). [`RuntimeHost`] does it with the
//! verified OCI runtime; the unit tests put a recording fake in its place
//! (`super::fake`) to check the ordering rules of the job loop — secrets
//! reach a step only on its own sandbox's stdin, a step is exec'd only
//! into a booted sandbox with the job's mounts, a phase boundary ends the
//! sandbox before the next boots — without a runtime or a mounted disk.

use crate::runner::env::{STEP_GID, STEP_UID};
use crate::runner::phase::{pump, wait_cancel, AgentConn, ExitRx, Pump, StepLogger, Stop};
use crate::runner::script::SocketDir;
use kiln_sandbox::agent::RunRequest;
use kiln_sandbox::{Outcome, Runtime, Sandbox, SandboxError, SandboxSpec, Usage, Workspace};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A boxed future: the traits here are used as objects.
pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a step ran: its outcome, why kiln stopped it (if it did) and the
/// redactions in its output.
pub(crate) type StepRun = (Outcome, Option<Stop>, u64);

/// One step in a sandbox of its own.
pub(crate) struct OneShot {
    pub(crate) spec: SandboxSpec,
    pub(crate) bundle: PathBuf,
    pub(crate) logger: StepLogger,
    pub(crate) deadline: Instant,
    pub(crate) cancel: watch::Receiver<bool>,
    /// What kiln-init reads on stdin before it starts the step (the
    /// step's secrets, encoded); never written to disk.
    pub(crate) stdin_secrets: Option<Vec<u8>>,
}

/// Starts sandboxes.
pub(crate) trait SandboxHost: Send + Sync + std::fmt::Debug {
    /// Starts `spec`, whose init serves the step agent through a socket in
    /// `agent_dir`, and returns once the agent has connected. On an error
    /// nothing is left running.
    fn boot<'a>(
        &'a self,
        runtime: Runtime,
        spec: SandboxSpec,
        bundle: PathBuf,
        agent_dir: &'a SocketDir,
    ) -> BoxFut<'a, Result<Arc<dyn AgentSandbox>, String>>;

    /// Runs one step in a sandbox of its own: streams its output, enforces
    /// the deadline, the log limit and cancellation, and tears it down.
    fn run_once(&self, runtime: Runtime, step: OneShot) -> BoxFut<'_, Result<StepRun, String>>;

    /// Creates the job's disk at `dir` (blocking: call it off the runtime).
    fn job_disk(&self, dir: &Path, bytes: u64) -> Result<Workspace, SandboxError>;

    /// Gives `dir` and everything below it to the step user: what the
    /// job's steps are to write.
    fn give_to_step_user(&self, dir: &Path) -> std::io::Result<()>;
}

/// A running sandbox whose PID 1 serves the step agent.
pub(crate) trait AgentSandbox: Send + Sync + std::fmt::Debug {
    /// Starts `request` as step `seq`; its output goes to `logger` (pumped
    /// by the task returned) or, without one, nowhere. The receiver gets
    /// its exit status.
    fn start<'a>(
        &'a self,
        seq: u32,
        request: &'a RunRequest,
        logger: Option<&'a StepLogger>,
    ) -> BoxFut<'a, Result<(ExitRx, Option<Pump>), String>>;
    /// Its counters so far.
    fn usage(&self) -> Usage;
    /// Starts the peak-memory counter over (one step's peak).
    fn reset_peak_memory(&self);
    /// Kills every process in it now; the sandbox is still to be ended.
    fn kill(&self) -> BoxFut<'_, ()>;
    /// Ends it and every process in it. Idempotent.
    fn end(&self) -> BoxFut<'_, ()>;
}

/// Sandboxes on the verified OCI runtime.
#[derive(Debug, Default)]
pub(crate) struct RuntimeHost;

impl SandboxHost for RuntimeHost {
    fn boot<'a>(
        &'a self,
        runtime: Runtime,
        spec: SandboxSpec,
        bundle: PathBuf,
        agent_dir: &'a SocketDir,
    ) -> BoxFut<'a, Result<Arc<dyn AgentSandbox>, String>> {
        Box::pin(async move {
            let (sandbox, conn) = boot_with_agent(runtime, spec, bundle, agent_dir).await?;
            let booted: Arc<dyn AgentSandbox> = Arc::new(RuntimeSandbox {
                sandbox: Mutex::new(Some(Arc::new(sandbox))),
                agent: Mutex::new(Some(Arc::new(conn))),
            });
            Ok(booted)
        })
    }

    fn run_once(&self, runtime: Runtime, step: OneShot) -> BoxFut<'_, Result<StepRun, String>> {
        Box::pin(run_sandbox(runtime, step))
    }

    fn job_disk(&self, dir: &Path, bytes: u64) -> Result<Workspace, SandboxError> {
        Workspace::create(dir, bytes, STEP_UID, STEP_GID)
    }

    fn give_to_step_user(&self, dir: &Path) -> std::io::Result<()> {
        super::artifacts::chown_tree(dir, STEP_UID, STEP_GID)
    }
}

/// A sandbox of the OCI runtime and kiln's connection to its agent.
#[derive(Debug)]
struct RuntimeSandbox {
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    agent: Mutex<Option<Arc<AgentConn>>>,
}

impl RuntimeSandbox {
    fn sandbox(&self) -> Option<Arc<Sandbox>> {
        self.sandbox.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl AgentSandbox for RuntimeSandbox {
    fn start<'a>(
        &'a self,
        seq: u32,
        request: &'a RunRequest,
        logger: Option<&'a StepLogger>,
    ) -> BoxFut<'a, Result<(ExitRx, Option<Pump>), String>> {
        Box::pin(async move {
            let agent = self.agent.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let agent = agent.ok_or("the sandbox has ended")?;
            agent.start(seq, request, logger).await
        })
    }

    fn usage(&self) -> Usage {
        self.sandbox().map(|s| s.usage()).unwrap_or_default()
    }

    fn reset_peak_memory(&self) {
        if let Some(s) = self.sandbox() {
            s.reset_peak_memory();
        }
    }

    fn kill(&self) -> BoxFut<'_, ()> {
        let killer = self.sandbox().map(|s| s.killer());
        Box::pin(async move {
            if let Some(killer) = killer {
                let _ = tokio::task::spawn_blocking(move || killer.kill()).await;
            }
        })
    }

    fn end(&self) -> BoxFut<'_, ()> {
        let agent = self.agent.lock().unwrap_or_else(|e| e.into_inner()).take();
        let sandbox = self.sandbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        Box::pin(end_sandbox(agent, sandbox))
    }
}

/// Starts `spec`, whose init serves the step agent (see
/// [`kiln_sandbox::agent`]) through a socket in `agent_dir`, and returns
/// once the agent has connected. kiln listens there, the sandbox's PID 1
/// connects once, then the socket is gone: no process of the sandbox can
/// reach it later. On an error nothing is left running.
async fn boot_with_agent(
    runtime: Runtime,
    spec: SandboxSpec,
    bundle: PathBuf,
    agent_dir: &SocketDir,
) -> Result<(Sandbox, AgentConn), String> {
    let listener = crate::runner::script::listen_for_sandbox(&agent_dir.0, kiln_sandbox::agent::AGENT_SOCKET)
        .map_err(|e| format!("preparing the step agent: {e}"))?;
    let agent_sock = agent_dir.0.join(kiln_sandbox::agent::AGENT_SOCKET);
    let sandbox = tokio::task::spawn_blocking(move || {
        let sb = Sandbox::prepare(&runtime, &spec, &bundle)?;
        sb.start()?;
        Ok::<_, kiln_sandbox::SandboxError>(sb)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let accepted = tokio::time::timeout(Duration::from_secs(30), listener.accept()).await;
    drop(listener);
    let _ = std::fs::remove_file(&agent_sock);
    match accepted {
        Ok(Ok((conn, _))) => Ok((sandbox, AgentConn::new(conn))),
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "no connection within 30 s".to_string(),
            };
            let said = std::fs::read_to_string(sandbox.bundle().join("start.log")).unwrap_or_default();
            let _ = tokio::task::spawn_blocking(move || sandbox.stop()).await;
            Err(format!("its step agent did not start: {why} {}", said.trim()))
        }
    }
}

/// Ends a sandbox whose PID 1 serves the step agent, and every process in
/// it. Hanging up on the agent ends PID 1: the runtime then has a stopped
/// sandbox to delete, much faster under gVisor than killing a running one.
async fn end_sandbox(agent: Option<Arc<AgentConn>>, sandbox: Option<Arc<Sandbox>>) {
    let hung_up = agent.is_some();
    drop(agent);
    if let Some(sb) = sandbox {
        let _ = tokio::task::spawn_blocking(move || {
            if hung_up {
                sb.wait_stopped(Duration::from_millis(1500));
            }
            match Arc::try_unwrap(sb) {
                Ok(sb) => sb.stop().map(|_| ()),
                Err(shared) => shared.kill(),
            }
        })
        .await;
    }
}

/// A step in a sandbox of its own (see [`SandboxHost::run_once`]).
async fn run_sandbox(runtime: Runtime, step: OneShot) -> Result<StepRun, String> {
    let OneShot { spec, bundle, logger, deadline, mut cancel, stdin_secrets } = step;
    let sandbox = tokio::task::spawn_blocking(move || Sandbox::prepare(&runtime, &spec, &bundle))
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
    let pipes = tokio::spawn(pump(
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
        logger.clone(),
    ));
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
    let redactions =
        tokio::time::timeout(Duration::from_secs(5), async { pipes.await.unwrap_or(0) }).await.unwrap_or(0);
    let sandbox = Arc::try_unwrap(sandbox).map_err(|_| "sandbox still shared".to_string())?;
    let outcome = tokio::task::spawn_blocking(move || sandbox.finish(status))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((outcome, stopped, redactions))
}
