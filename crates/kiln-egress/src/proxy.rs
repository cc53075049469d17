//! The egress proxy itself: one accept loop per step, one task per
//! connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::http::{self, Request, RequestError, Target, MAX_HEAD_BYTES};
use crate::policy::{self, Decision, Policy};

/// Time a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for resolving a destination name.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the TCP connection to the destination.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default per-build byte cap (in + out).
pub const DEFAULT_BUILD_CAP_BYTES: u64 = 2 * 1024 * 1024 * 1024;

const TUNNEL_BUF: usize = 128 * 1024;
/// Over-cap connections being answered at once; beyond this they are dropped.
const MAX_REFUSING: usize = 64;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Name resolution, injectable for tests.
pub trait Resolver: Send + Sync + 'static {
    /// All addresses for `host` (a normalised name, never an IP literal),
    /// in preference order, with `port` filled in.
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>>;
}

/// The host's resolver (`getaddrinfo` through `tokio::net::lookup_host`),
/// asked the name as the system resolver is asked it: `/etc/hosts` entries
/// are written without a trailing dot, and a name with one never matches
/// them. Whatever a search domain may add, every answer still goes through
/// the address-class checks and the operator's exact openings.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        let name = host.trim_end_matches('.').to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((name.as_str(), port)).await?.collect()) })
    }
}

/// Which step a proxy instance serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct StepScope {
    pub build: String,
    pub job: String,
    pub step: String,
}

/// Byte counters shared by all steps of one build.
#[derive(Debug)]
pub struct BuildCounters {
    /// Bytes received from destinations (downloaded).
    pub bytes_in: AtomicU64,
    /// Bytes sent by steps (uploaded, request heads included).
    pub bytes_out: AtomicU64,
    /// Cap on `bytes_in + bytes_out`.
    pub cap_bytes: u64,
    /// `bytes_in + bytes_out`, kept at most `cap_bytes`: a read that would
    /// cross the cap is withheld, so it is not counted either.
    total: AtomicU64,
    /// A read was withheld at the cap: no new connection starts.
    hit: std::sync::atomic::AtomicBool,
}

impl Default for BuildCounters {
    fn default() -> Self {
        BuildCounters::with_cap(DEFAULT_BUILD_CAP_BYTES)
    }
}

impl BuildCounters {
    pub fn with_cap(cap_bytes: u64) -> BuildCounters {
        BuildCounters {
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            cap_bytes,
            total: AtomicU64::new(0),
            hit: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A fresh shared set of counters.
    pub fn new(cap_bytes: u64) -> Arc<BuildCounters> {
        Arc::new(BuildCounters::with_cap(cap_bytes))
    }

    /// Bytes relayed, in and out (never more than the cap).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The cap was reached: a read was withheld, or nothing is left.
    pub fn exhausted(&self) -> bool {
        self.hit.load(Ordering::Relaxed) || self.total() >= self.cap_bytes
    }

    /// Counts `n` bytes about to be relayed; true (and nothing counted)
    /// when they would take the build past its cap, so the caller withholds
    /// them.
    fn add(&self, dir: Dir, n: u64) -> bool {
        let fits = self.total.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            t.checked_add(n).filter(|s| *s <= self.cap_bytes)
        });
        if fits.is_err() {
            self.hit.store(true, Ordering::Relaxed);
            return true;
        }
        match dir {
            Dir::In => self.bytes_in.fetch_add(n, Ordering::Relaxed),
            Dir::Out => self.bytes_out.fetch_add(n, Ordering::Relaxed),
        };
        false
    }
}

/// What the proxy did, for the build's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EgressEvent {
    /// A connection to `dest` (`host:port` as requested) was made to `addr`.
    Allowed { scope: StepScope, dest: String, addr: SocketAddr },
    /// A request was refused by the policy.
    Blocked { scope: StepScope, dest: String, rule: String },
    /// A cap was hit: `which` is `"bytes per build"` or
    /// `"connections per step"`.
    CapExceeded { scope: StepScope, which: &'static str, limit: u64 },
    /// An allowed connection ended.
    Closed { scope: StepScope, dest: String, bytes_in: u64, bytes_out: u64 },
}

/// Cap names used in [`EgressEvent::CapExceeded`].
pub const CAP_BYTES_PER_BUILD: &str = "bytes per build";
pub const CAP_CONNS_PER_STEP: &str = "connections per step";

struct Ctx {
    scope: StepScope,
    policy: Arc<Policy>,
    resolver: Arc<dyn Resolver>,
    counters: Arc<BuildCounters>,
    events: UnboundedSender<EgressEvent>,
    active: Arc<AtomicUsize>,
    refusing: Arc<AtomicUsize>,
}

impl Ctx {
    fn emit(&self, e: EgressEvent) {
        // The receiver going away must not stop the proxy.
        let _ = self.events.send(e);
    }
}

/// Serve one step's egress on a Unix socket until `shutdown` completes; all
/// connection tasks are aborted then.
pub async fn serve_unix(
    listener: UnixListener,
    scope: StepScope,
    policy: Arc<Policy>,
    resolver: Arc<dyn Resolver>,
    counters: Arc<BuildCounters>,
    events: UnboundedSender<EgressEvent>,
    shutdown: impl Future,
) {
    let ctx = new_ctx(scope, policy, resolver, counters, events);
    serve(|| listener.accept(), |(s, _)| (s, String::from("unix")), ctx, shutdown).await
}

/// [`serve_unix`] on a TCP listener (tests and benchmarks).
pub async fn serve_tcp(
    listener: TcpListener,
    scope: StepScope,
    policy: Arc<Policy>,
    resolver: Arc<dyn Resolver>,
    counters: Arc<BuildCounters>,
    events: UnboundedSender<EgressEvent>,
    shutdown: impl Future,
) {
    let ctx = new_ctx(scope, policy, resolver, counters, events);
    serve(
        || listener.accept(),
        |(s, peer): (TcpStream, SocketAddr)| {
            let _ = s.set_nodelay(true);
            (s, peer.to_string())
        },
        ctx,
        shutdown,
    )
    .await
}

fn new_ctx(
    scope: StepScope,
    policy: Arc<Policy>,
    resolver: Arc<dyn Resolver>,
    counters: Arc<BuildCounters>,
    events: UnboundedSender<EgressEvent>,
) -> Arc<Ctx> {
    Arc::new(Ctx {
        scope,
        policy,
        resolver,
        counters,
        events,
        active: Arc::new(AtomicUsize::new(0)),
        refusing: Arc::new(AtomicUsize::new(0)),
    })
}

async fn serve<A, Fut, T, S, F>(accept: A, split: F, ctx: Arc<Ctx>, shutdown: impl Future)
where
    A: Fn() -> Fut,
    Fut: Future<Output = io::Result<T>>,
    F: Fn(T) -> (S, String),
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let span = tracing::info_span!(
        "egress",
        build = %ctx.scope.build,
        job = %ctx.scope.job,
        step = %ctx.scope.step
    );
    async move {
        tokio::pin!(shutdown);
        let mut tasks = JoinSet::new();
        let mut next_id: u64 = 0;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = accept() => {
                    let (stream, peer) = match accepted {
                        Ok(t) => split(t),
                        Err(e) => {
                            // EMFILE and friends: back off rather than spin.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    next_id += 1;
                    let span = tracing::info_span!("egress_conn", id = next_id, peer = %peer);
                    let max = ctx.policy.max_conns_per_step;
                    if ctx.active.load(Ordering::Relaxed) >= max {
                        if ctx.refusing.load(Ordering::Relaxed) >= MAX_REFUSING {
                            // A flood: no answer, just close.
                            drop(stream);
                            continue;
                        }
                        let guard = ActiveGuard::new(ctx.refusing.clone());
                        tasks.spawn(refuse_over_cap(ctx.clone(), stream, guard).instrument(span));
                        continue;
                    }
                    let guard = ActiveGuard::new(ctx.active.clone());
                    tasks.spawn(handle(ctx.clone(), stream, guard).instrument(span));
                }
            }
        }
        tracing::debug!(open = tasks.len(), "shutting down; aborting connections");
        tasks.shutdown().await;
    }
    .instrument(span)
    .await
}

struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(a: Arc<AtomicUsize>) -> ActiveGuard {
        a.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(a)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn refuse_over_cap<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: Arc<Ctx>,
    mut stream: S,
    _guard: ActiveGuard,
) {
    let limit = ctx.policy.max_conns_per_step;
    ctx.emit(EgressEvent::CapExceeded {
        scope: ctx.scope.clone(),
        which: CAP_CONNS_PER_STEP,
        limit: limit as u64,
    });
    tracing::info!(limit, "connection cap reached");
    // Read the head first (briefly) so the answer is not lost to a reset.
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), read_head(&mut stream, &mut buf)).await;
    let body = format!("kiln egress: too many connections (limit {limit} per step)");
    respond(&mut stream, 429, "Too Many Requests", "limited", &body).await;
}

async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<(Request, usize)>, RequestError> {
    let mut chunk = [0u8; 4096];
    loop {
        let want = (MAX_HEAD_BYTES + 1 - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await.map_err(|e| RequestError::Malformed(e.to_string()))?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(RequestError::Malformed("connection closed mid-head".into()))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(parsed) = http::parse_request(buf)? {
            return Ok(Some(parsed));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(RequestError::TooLarge);
        }
    }
}

/// What a request that did not parse asked for, for the log: the request
/// line's target, printable and short (`(none)` when there is none).
fn head_target(buf: &[u8]) -> String {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let target = line.split(|&b| b == b' ').filter(|t| !t.is_empty()).nth(1).unwrap_or_default();
    let shown: String = String::from_utf8_lossy(target)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(200)
        .collect();
    if shown.is_empty() {
        "(none)".into()
    } else {
        shown
    }
}

/// Write a short response, then drain what the client still sends for a
/// moment so closing does not reset the connection under the response.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    code: u16,
    reason: &str,
    marker: &str,
    body_line: &str,
) {
    let resp = http::simple_response(code, reason, marker, body_line);
    if stream.write_all(&resp).await.is_err() {
        return;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        while total < 1 << 20 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(ctx: Arc<Ctx>, mut client: S, guard: ActiveGuard) {
    let mut buf = Vec::with_capacity(4096);
    let parsed = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client, &mut buf)).await {
        Err(_) => {
            // Every refusal is logged and audited, whatever stage refuses it.
            ctx.emit(EgressEvent::Blocked {
                scope: ctx.scope.clone(),
                dest: head_target(&buf),
                rule: "request head timed out".into(),
            });
            respond(&mut client, 408, "Request Timeout", "error", "kiln egress: request head timed out")
                .await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "bad request");
            ctx.emit(EgressEvent::Blocked {
                scope: ctx.scope.clone(),
                dest: head_target(&buf),
                rule: format!("malformed request: {e}"),
            });
            let (code, reason) = e.status();
            respond(&mut client, code, reason, "error", &format!("kiln egress: {e}")).await;
            return;
        }
        Ok(Ok(Some(p))) => p,
    };
    let (request, head_len) = parsed;
    let target = request.target().clone();
    let dest = dest_string(&target);

    if ctx.counters.exhausted() {
        refuse_bytes_cap(&ctx, &mut client).await;
        return;
    }

    let addr = match decide(&ctx, &target, &dest).await {
        Ok(addr) => addr,
        Err(Refusal::Blocked(rule)) => {
            tracing::info!(%dest, %rule, "blocked");
            ctx.emit(EgressEvent::Blocked {
                scope: ctx.scope.clone(),
                dest: dest.clone(),
                rule: rule.clone(),
            });
            let line = format!("kiln egress: blocked {dest} ({rule})");
            respond(&mut client, 403, "Forbidden", "blocked", &line).await;
            return;
        }
        Err(Refusal::Failed(why)) => {
            tracing::info!(%dest, %why, "upstream failure");
            let line = format!("kiln egress: {dest}: {why}");
            respond(&mut client, 502, "Bad Gateway", "error", &line).await;
            return;
        }
    };

    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let line = format!("kiln egress: connect to {dest} ({addr}) failed: {e}");
            respond(&mut client, 502, "Bad Gateway", "error", &line).await;
            return;
        }
        Err(_) => {
            let line = format!("kiln egress: connect to {dest} ({addr}) timed out");
            respond(&mut client, 504, "Gateway Timeout", "error", &line).await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    tracing::info!(%dest, %addr, "allowed");
    ctx.emit(EgressEvent::Allowed { scope: ctx.scope.clone(), dest: dest.clone(), addr });

    let mut client = Metered::new(client, ctx.counters.clone(), Dir::Out);
    let mut upstream = Metered::new(upstream, ctx.counters.clone(), Dir::In);
    let leftover = &buf[head_len..];
    let result = async {
        match &request {
            Request::Connect { .. } => {
                client.inner.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
                client.inner.flush().await?;
                if !leftover.is_empty() {
                    client.count(leftover.len())?;
                    upstream.inner.write_all(leftover).await?;
                }
            }
            Request::Forward { head, .. } => {
                client.count(head.len() + leftover.len())?;
                upstream.inner.write_all(head).await?;
                if !leftover.is_empty() {
                    upstream.inner.write_all(leftover).await?;
                }
            }
        }
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, TUNNEL_BUF, TUNNEL_BUF)
            .await
            .map(|_| ())
    }
    .await;

    if let Err(e) = &result {
        if is_cap_error(e) {
            tracing::info!(%dest, cap = ctx.counters.cap_bytes, "byte cap exceeded; cutting connection");
            ctx.emit(EgressEvent::CapExceeded {
                scope: ctx.scope.clone(),
                which: CAP_BYTES_PER_BUILD,
                limit: ctx.counters.cap_bytes,
            });
        } else {
            tracing::debug!(%dest, error = %e, "connection ended with error");
        }
    }
    let (bytes_in, bytes_out) = (upstream.bytes, client.bytes);
    drop(client);
    drop(upstream);
    // The slot is free before anyone hears the connection closed.
    drop(guard);
    tracing::info!(%dest, bytes_in, bytes_out, "closed");
    ctx.emit(EgressEvent::Closed { scope: ctx.scope.clone(), dest, bytes_in, bytes_out });
}

async fn refuse_bytes_cap<S: AsyncRead + AsyncWrite + Unpin>(ctx: &Ctx, client: &mut S) {
    let limit = ctx.counters.cap_bytes;
    ctx.emit(EgressEvent::CapExceeded { scope: ctx.scope.clone(), which: CAP_BYTES_PER_BUILD, limit });
    let line = format!("kiln egress: build byte cap of {limit} bytes exhausted");
    respond(client, 429, "Too Many Requests", "limited", &line).await;
}

/// `host:port` for events and messages: the host normalised when it can be.
fn dest_string(t: &Target) -> String {
    match policy::normalize_host(&t.host) {
        Ok(policy::Host::Name(n)) => format!("{n}:{}", t.port),
        Ok(policy::Host::Ip(ip)) => SocketAddr::new(ip, t.port).to_string(),
        Err(_) => t.to_string(),
    }
}

enum Refusal {
    Blocked(String),
    Failed(String),
}

async fn decide(ctx: &Ctx, target: &Target, dest: &str) -> Result<SocketAddr, Refusal> {
    match policy::check(&ctx.policy, &target.host, target.port) {
        Decision::Refuse { rule } => Err(Refusal::Blocked(rule)),
        Decision::Connect(addr) => Ok(addr),
        Decision::Resolve { host, port } => {
            let answers = match tokio::time::timeout(RESOLVE_TIMEOUT, ctx.resolver.resolve(&host, port)).await
            {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => return Err(Refusal::Failed(format!("resolving {host} failed: {e}"))),
                Err(_) => return Err(Refusal::Failed(format!("resolving {host} timed out"))),
            };
            tracing::debug!(%dest, ?answers, "resolved");
            // The resolver's ports are not trusted: the requested one is used.
            let answers: Vec<SocketAddr> =
                answers.into_iter().map(|a| SocketAddr::new(a.ip(), port)).collect();
            policy::select_address(&ctx.policy, &host, &answers).map_err(Refusal::Blocked)
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Dir {
    In,
    Out,
}

#[derive(Debug)]
struct CapHit;

impl std::fmt::Display for CapHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("build byte cap exceeded")
    }
}

impl std::error::Error for CapHit {}

fn cap_error() -> io::Error {
    io::Error::other(CapHit)
}

fn is_cap_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<CapHit>())
}

/// A stream whose reads are counted against the build's byte cap. A read
/// that crosses the cap is withheld and turned into an error, which ends the
/// tunnel.
struct Metered<S> {
    inner: S,
    counters: Arc<BuildCounters>,
    dir: Dir,
    bytes: u64,
}

impl<S> Metered<S> {
    fn new(inner: S, counters: Arc<BuildCounters>, dir: Dir) -> Metered<S> {
        Metered { inner, counters, dir, bytes: 0 }
    }

    /// Counts a read about to be relayed; a read past the cap is withheld
    /// and counted nowhere.
    fn count(&mut self, n: usize) -> io::Result<()> {
        if self.counters.add(self.dir, n as u64) {
            Err(cap_error())
        } else {
            self.bytes += n as u64;
            Ok(())
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 && this.count(n).is_err() {
            buf.set_filled(before);
            return Poll::Ready(Err(cap_error()));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/etc/hosts` says `localhost`, not `localhost.`: looked up with a
    /// trailing dot the name never matched an entry there.
    #[tokio::test]
    async fn bug_names_were_looked_up_with_a_trailing_dot_and_missed_etc_hosts() {
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        assert!(
            hosts.lines().any(|l| l.split_whitespace().skip(1).any(|n| n == "localhost")),
            "this test needs the standard `localhost` entry in /etc/hosts"
        );
        for name in ["localhost", "localhost."] {
            let got = SystemResolver.resolve(name, 80).await.expect("resolves");
            assert!(got.iter().any(|a| a.ip().is_loopback()), "{name}: {got:?}");
        }
    }

    #[test]
    fn bug_egress_bytes_counted_past_the_cap_were_never_relayed() {
        let c = BuildCounters::new(100);
        assert!(!c.add(Dir::In, 60));
        assert!(!c.exhausted());
        assert!(c.add(Dir::Out, 41), "41 more would cross the cap: withheld");
        assert_eq!(c.total(), 60, "a withheld read is not counted");
        assert!(c.exhausted(), "no new connection after a withheld read");
        assert!(!c.add(Dir::Out, 40), "what still fits is relayed");
        assert_eq!(
            (c.total(), c.bytes_in.load(Ordering::Relaxed), c.bytes_out.load(Ordering::Relaxed)),
            (100, 60, 40)
        );
        assert!(c.add(Dir::In, 1));
        assert_eq!(c.total(), 100, "usage never exceeds the cap");
        assert_eq!(BuildCounters::default().cap_bytes, 2 << 30);
    }

    #[test]
    fn dest_strings() {
        let t = |h: &str, p| Target { host: h.into(), port: p };
        assert_eq!(dest_string(&t("Crates.IO.", 443)), "crates.io:443");
        assert_eq!(dest_string(&t("0xA9FEA9FE", 80)), "169.254.169.254:80");
        assert_eq!(dest_string(&t("[::1]", 80)), "[::1]:80");
        assert_eq!(dest_string(&t("bad host", 80)), "bad host:80");
    }

    #[test]
    fn events_serialize() {
        let e = EgressEvent::Blocked {
            scope: StepScope { build: "b".into(), job: "j".into(), step: "s".into() },
            dest: "x:1".into(),
            rule: "not on the allow-list".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "blocked");
        assert_eq!(v["scope"]["step"], "s");
    }
}
