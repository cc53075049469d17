//! The sandboxes steps run in. A job's steps run in the sandbox of their
//! phase, one after another by exec ([`PhaseBox`]): what a step starts in
//! the background lives until the phase ends, as on a CI machine. A step
//! handed secrets runs in a sandbox of its own ([`run_sandbox`]). Either way
//! the step's pipes are framed into scrubbed log lines as they arrive, the
//! step is stopped at a limit (wall time, log bytes) or on cancellation, and
//! its accounting is read from the sandbox's cgroups.

use crate::log::Stream;
use crate::runner::env::*;
use crate::runner::host::AgentSandbox;
use crate::runner::job::{sanitize_id, JobRun, StepError};
use crate::runner::sandbox::{TierKey, EGRESS_PORT};
use crate::runner::script::{SocketDir, StepProxy, SOCKET_ROOT};
use kiln_sandbox::{Bind, Runtime, SandboxSpec};
use kiln_workflow::PlannedJob;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Notify};

/// Why kiln stopped a step before it ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Timeout,
    Cancelled,
    Log,
}

/// Turns a step's output into log entries, and counts it against the limit.
#[derive(Debug, Clone)]
pub(crate) struct StepLogger {
    pub(crate) emitter: super::Emitter,
    pub(crate) job: String,
    pub(crate) step: String,
    pub(crate) bytes: Arc<AtomicU64>,
    pub(crate) limit: u64,
    pub(crate) over: Arc<Notify>,
    pub(crate) tripped: Arc<AtomicBool>,
    pub(crate) phase: String,
    pub(crate) scrubber: Arc<kiln_secrets::Scrubber>,
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

    /// A line kiln composed (scrubbed on its way out, like everything).
    pub(crate) fn line(&self, stream: Stream, text: String) {
        self.emitter.log(&self.job, &self.step, &self.phase, stream, text);
    }

    /// A line of the step's own output, already through the stream
    /// scrubber (which sees across line and pipe boundaries).
    fn scrubbed_line(&self, stream: Stream, text: String) {
        self.emitter.log_scrubbed(&self.job, &self.step, &self.phase, stream, text);
    }
}

pub(crate) async fn pump(
    out: impl tokio::io::AsyncRead + Unpin,
    err: impl tokio::io::AsyncRead + Unpin,
    logger: StepLogger,
) -> u64 {
    // The scrubber is the boundary: nothing upstream of it is stored or shown. Both pipes go
    // through one, so that a secret split between them is caught (see `log::pump_pipes`).
    let scrubber = logger.scrubber.clone();
    crate::log::pump_pipes(out, err, &scrubber, |n| logger.count(n), |s, l| logger.scrubbed_line(s, l)).await
}

pub(crate) async fn wait_cancel(cancel: &mut watch::Receiver<bool>) {
    loop {
        if *cancel.borrow() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The sandbox of the current phase of a job: its steps run in it by exec,
/// so what one starts in the background lives until the phase ends.
#[derive(Debug)]
pub(crate) struct PhaseBox {
    /// Phase and network: a step with another key ends this sandbox.
    pub(crate) key: String,
    /// Host directory: `steps/<n>` (scripts, read-only inside) and
    /// `files/<n>` (the `$GITHUB_*` files), and the bundle.
    pub(crate) dir: PathBuf,
    /// The sandbox, its PID 1 serving the step agent.
    pub(crate) sandbox: Option<Arc<dyn AgentSandbox>>,
    /// The phase's egress proxy, when it has a network.
    pub(crate) proxy: Option<StepProxy>,
    pub(crate) egress_dir: Option<SocketDir>,
    /// The agent's (now empty) socket directory, removed with the box.
    pub(crate) agent_dir: Option<SocketDir>,
    pub(crate) network: bool,
    /// Pumps still reading what background processes print (logged as the
    /// step that started them); they end with the sandbox.
    pub(crate) leftovers: Vec<tokio::task::JoinHandle<u64>>,
}

/// What a phase sandbox's own process does: nothing, under kiln-init, which
/// reaps every orphan the steps leave, until the phase ends.
const HOLD_ARGV: [&str; 2] = ["sleep", "infinity"];

impl JobRun<'_> {
    /// The verified runtime of the job's tier.
    pub(crate) fn runtime(&self) -> Result<Runtime, String> {
        self.runner
            .cfg
            .runtimes
            .get(&TierKey::of(self.isolation))
            .cloned()
            .ok_or_else(|| format!("no verified runtime for tier {:?}", self.isolation))
    }

    /// Starts the sandbox of `phase` over the job's disk.
    pub(crate) async fn open_phase(
        &mut self,
        job: &PlannedJob,
        step_name: &str,
        phase: kiln_workflow::Phase,
        network: &kiln_workflow::NetworkSpec,
        key: String,
    ) -> Result<(), StepError> {
        let n = self.runner.next_id.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!("phase-{n}"));
        let infra =
            |e: std::io::Error| StepError::Infrastructure(format!("preparing the phase sandbox: {e}"));
        for d in ["steps", "files", "bundle"] {
            std::fs::create_dir_all(dir.join(d)).map_err(infra)?;
        }
        let mut egress_dir = None;
        let mut proxy = None;
        if !matches!(network, kiln_workflow::NetworkSpec::None) {
            let ed = SocketDir(Path::new(SOCKET_ROOT).join(format!(
                "{}-{}-{n}",
                sanitize_id(&self.req.build),
                self.req.job
            )));
            proxy = Some(self.start_proxy(job, step_name, phase, network, &ed.0).await?);
            egress_dir = Some(ed);
        }
        // The agent's socket directory: under the short root-owned
        // directory of the egress sockets (a socket path has at most 107
        // bytes; the state dir can be deep), named after the build so a
        // crash's leftovers are found.
        let agent_dir = SocketDir(Path::new(SOCKET_ROOT).join(format!(
            "{}-{}-a{n}",
            sanitize_id(&self.req.build),
            self.req.job
        )));
        let disk = self.workspace.as_ref().ok_or(StepError::Infrastructure("no workspace".into()))?;
        let (service_binds, forwards) = self.service_reach();
        let spec = SandboxSpec {
            id: format!("kiln-{}-{}-{n}", sanitize_id(&self.req.build), self.req.job),
            argv: HOLD_ARGV.iter().map(|s| s.to_string()).collect(),
            env: vec![("HOME".into(), HOME.into())],
            cwd: WORKSPACE.into(),
            workspace: disk.path(),
            binds: vec![
                Bind { source: dir.join("steps"), destination: PHASE_STEPS_DIR.into(), writable: false },
                Bind { source: dir.join("files"), destination: PHASE_FILES_DIR.into(), writable: true },
                Bind { source: disk.home(), destination: HOME.into(), writable: true },
                Bind { source: disk.tool_cache(), destination: TOOL_CACHE.into(), writable: true },
            ]
            .into_iter()
            .chain(self.tool_binds.iter().cloned())
            .chain(service_binds)
            .collect(),
            limits: self.limits.sandbox_limits(),
            uid: STEP_UID,
            gid: STEP_GID,
            root: disk.root(),
            init: Some(kiln_sandbox::InitSpec {
                binary: self.runner.cfg.init.clone(),
                secrets: false,
                egress: egress_dir.as_ref().map(|d| (d.0.clone(), EGRESS_PORT)),
                agent: Some(agent_dir.0.clone()),
                forwards,
                dial: None,
            }),
        };
        let runtime = self.runtime().map_err(StepError::Infrastructure)?;
        let booted = self.runner.host.boot(runtime, spec, dir.join("bundle"), &agent_dir).await;
        let sandbox = match booted {
            Ok(booted) => booted,
            Err(e) => {
                if let Some(p) = proxy {
                    p.stop().await;
                }
                let _ = std::fs::remove_dir_all(&dir);
                return Err(StepError::Infrastructure(format!(
                    "starting the {} sandbox: {e}",
                    phase.as_str()
                )));
            }
        };
        self.phase_box = Some(PhaseBox {
            key,
            dir,
            sandbox: Some(sandbox),
            proxy,
            egress_dir,
            agent_dir: Some(agent_dir),
            network: !matches!(network, kiln_workflow::NetworkSpec::None),
            leftovers: Vec::new(),
        });
        Ok(())
    }

    /// Ends the current phase sandbox, and every process in it; `why`
    /// (when not empty) is said in the log of `step_name`.
    pub(crate) async fn close_phase(&mut self, job: &PlannedJob, step_name: &str, why: &str) {
        let Some(mut pb) = self.phase_box.take() else { return };
        // Hanging up on the agent ends PID 1, and with it every process of
        // the sandbox: the runtime then has a stopped sandbox to delete,
        // much faster under gVisor than killing a running one.
        if let Some(sb) = pb.sandbox.take() {
            sb.end().await;
        }
        // The sandbox is gone, so are the writers of these pipes.
        for h in pb.leftovers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
        if let Some(p) = pb.proxy.take() {
            p.stop().await;
        }
        drop(pb.egress_dir.take());
        drop(pb.agent_dir.take());
        let _ = std::fs::remove_dir_all(&pb.dir);
        if !why.is_empty() {
            self.req.emitter.log(
                &job.id,
                step_name,
                "",
                Stream::System,
                format!("phase sandbox ended (its background processes with it): {why}"),
            );
        }
    }

    /// Runs one step in the phase sandbox (started by its agent) and waits
    /// for it, stopping it at its deadline, on cancellation or when its log
    /// is over the limit (the phase sandbox ends then: what a stopped step
    /// left running is not kept).
    pub(crate) async fn exec_in_phase(
        &mut self,
        job: &PlannedJob,
        step_name: &str,
        request: kiln_sandbox::agent::RunRequest,
        logger: StepLogger,
        deadline: Instant,
    ) -> Result<(kiln_sandbox::Outcome, Option<Stop>, u64), String> {
        let seq = self.runner.next_id.fetch_add(1, Ordering::Relaxed) as u32;
        let pb = self.phase_box.as_ref().ok_or("no phase sandbox")?;
        let sb = pb.sandbox.clone().ok_or("no phase sandbox")?;
        let t0 = Instant::now();
        let before = sb.usage();
        sb.reset_peak_memory();
        let (exit_rx, pumps) = sb.start(seq, &request, Some(&logger)).await?;
        let mut pipes = pumps.ok_or("no pipes")?;
        let over = logger.over.clone();
        let mut cancel = self.req.cancel.clone();
        let (status, stopped) = tokio::select! {
            s = exit_rx => (Some(s.unwrap_or_else(|_| Err("the phase sandbox ended".into()))), None),
            _ = tokio::time::sleep_until(deadline.into()) => (None, Some(Stop::Timeout)),
            _ = wait_cancel(&mut cancel) => (None, Some(Stop::Cancelled)),
            _ = over.notified() => (None, Some(Stop::Log)),
        };
        if stopped.is_some() {
            sb.kill().await;
        }
        let exit_code = match status {
            Some(Ok(code)) => Some(code),
            Some(Err(msg)) => {
                logger.line(Stream::Stderr, format!("kiln: {msg}"));
                Some(127)
            }
            None => None,
        };
        // The step's own output ends with it; a background process it
        // started may still hold its pipes: those lines are still read (and
        // logged as this step's) until the phase ends.
        let mut redactions = 0;
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(200), &mut pipes).await {
            redactions += r;
        }
        let after = sb.usage();
        drop(sb);
        if !pipes.is_finished() {
            if let Some(pb) = self.phase_box.as_mut() {
                pb.leftovers.push(pipes);
            }
        }
        let limit = if after.oom_kills > before.oom_kills {
            Some(kiln_sandbox::LimitHit::Memory { limit_bytes: self.limits.memory_bytes })
        } else if after.pids_limit_events > before.pids_limit_events {
            Some(kiln_sandbox::LimitHit::Pids { limit: self.limits.pids })
        } else {
            None
        };
        let outcome = kiln_sandbox::Outcome {
            exit_code,
            signal: exit_code.is_none().then_some(9),
            limit,
            cpu_seconds: (after.cpu_seconds - before.cpu_seconds).max(0.0),
            peak_memory_bytes: after.peak_memory_bytes,
            wall: t0.elapsed(),
        };
        if stopped.is_some() {
            self.close_phase(job, step_name, "").await;
        }
        Ok((outcome, stopped, redactions))
    }
}

/// How a started step's exit status arrives (or why it could not start).
pub(crate) type ExitRx = tokio::sync::oneshot::Receiver<Result<i32, String>>;
/// A task pumping one pipe into the log; its result is the redaction count.
pub(crate) type Pump = tokio::task::JoinHandle<u64>;

/// Where one step's output and exit go as the agent reports them.
#[derive(Debug)]
pub(crate) struct StepPipes {
    out: Option<tokio::io::DuplexStream>,
    err: Option<tokio::io::DuplexStream>,
    exit: Option<tokio::sync::oneshot::Sender<Result<i32, String>>>,
}

/// kiln's end of a phase sandbox's agent connection: requests go out, a
/// reader task routes the agent's frames to each step's pipes.
#[derive(Debug)]
pub(crate) struct AgentConn {
    writer: tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>,
    pub(crate) steps: Arc<std::sync::Mutex<HashMap<u32, StepPipes>>>,
    pub(crate) reader: tokio::task::JoinHandle<()>,
}

impl AgentConn {
    pub(crate) fn new(conn: tokio::net::UnixStream) -> AgentConn {
        let (read, write) = conn.into_split();
        let steps: Arc<std::sync::Mutex<HashMap<u32, StepPipes>>> = Default::default();
        let reader = tokio::spawn(route_frames(read, steps.clone()));
        AgentConn { writer: tokio::sync::Mutex::new(write), steps, reader }
    }

    /// Starts `request` as step `seq`; its output goes to `logger` (pumped
    /// by the task returned) or, without one, nowhere. The receiver
    /// gets its exit status.
    pub(crate) async fn start(
        &self,
        seq: u32,
        request: &kiln_sandbox::agent::RunRequest,
        logger: Option<&StepLogger>,
    ) -> Result<(ExitRx, Option<Pump>), String> {
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
        let (pipes, pumps) = match logger {
            Some(logger) => {
                let (out_w, out_r) = tokio::io::duplex(64 * 1024);
                let (err_w, err_r) = tokio::io::duplex(64 * 1024);
                let pipes = tokio::spawn(pump(out_r, err_r, logger.clone()));
                (StepPipes { out: Some(out_w), err: Some(err_w), exit: Some(exit_tx) }, Some(pipes))
            }
            None => (StepPipes { out: None, err: None, exit: Some(exit_tx) }, None),
        };
        self.steps.lock().unwrap_or_else(|e| e.into_inner()).insert(seq, pipes);
        let payload = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        self.send(b'R', seq, &payload).await.map_err(|e| format!("starting the step: {e}"))?;
        Ok((exit_rx, pumps))
    }

    async fn send(&self, kind: u8, seq: u32, payload: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut frame = Vec::with_capacity(payload.len() + 9);
        kiln_sandbox::agent::write_frame(&mut frame, kind, seq, payload)?;
        self.writer.lock().await.write_all(&frame).await
    }
}

impl Drop for AgentConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads the agent's frames until the sandbox hangs up; then every pipe
/// closes and every step still waiting learns that the sandbox ended.
async fn route_frames(
    mut read: tokio::net::unix::OwnedReadHalf,
    steps: Arc<std::sync::Mutex<HashMap<u32, StepPipes>>>,
) {
    use tokio::io::AsyncWriteExt;
    loop {
        let mut head = [0u8; 9];
        if read.read_exact(&mut head).await.is_err() {
            break;
        }
        let Ok((kind, seq, len)) = kiln_sandbox::agent::parse_header(&head) else { break };
        let mut payload = vec![0u8; len];
        if read.read_exact(&mut payload).await.is_err() {
            break;
        }
        let lock = || steps.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            b'O' | b'E' => {
                // Taken out while writing: the lock is never held across an await.
                let pipe =
                    lock().get_mut(&seq).and_then(|p| if kind == b'O' { p.out.take() } else { p.err.take() });
                if let Some(mut pipe) = pipe {
                    if pipe.write_all(&payload).await.is_ok() {
                        if let Some(p) = lock().get_mut(&seq) {
                            if kind == b'O' {
                                p.out = Some(pipe);
                            } else {
                                p.err = Some(pipe);
                            }
                        }
                    }
                }
            }
            b'o' | b'e' => {
                if let Some(p) = lock().get_mut(&seq) {
                    if kind == b'o' {
                        p.out = None;
                    } else {
                        p.err = None;
                    }
                }
            }
            b'X' | b'F' => {
                let result = if kind == b'X' {
                    let code =
                        payload.get(..4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(-1);
                    Ok(code)
                } else {
                    Err(String::from_utf8_lossy(&payload).into_owned())
                };
                if let Some(tx) = lock().get_mut(&seq).and_then(|p| p.exit.take()) {
                    let _ = tx.send(result);
                }
            }
            _ => {}
        }
    }
    // Dropping the writers ends the pumps; dropping the senders wakes the waiters.
    lock_clear(&steps);
}

fn lock_clear(steps: &std::sync::Mutex<HashMap<u32, StepPipes>>) {
    steps.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
