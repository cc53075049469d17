//! Running a sandbox for a step: start it, frame its pipes into scrubbed
//! log lines as they arrive, stop it at a limit (wall time, log bytes) or
//! on cancellation, and read its accounting.

use crate::log::{LineFramer, Stream};
use kiln_sandbox::{Runtime, Sandbox, SandboxSpec};
use std::path::PathBuf;
use std::process::Stdio;
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

    fn line(&self, stream: Stream, text: String) {
        self.emitter.log(&self.job, &self.step, &self.phase, stream, text);
    }
}

pub(crate) async fn pump(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    stream: Stream,
    logger: StepLogger,
) -> u64 {
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
pub(crate) async fn run_sandbox(
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
