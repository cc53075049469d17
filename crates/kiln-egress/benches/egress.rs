//! Egress proxy overhead: download throughput and per-connection latency,
//! direct (TCP to the origin) vs proxied (Unix socket -> proxy -> origin via
//! CONNECT). Everything runs on loopback.
//!
//! `KILN_BENCH_MIB` sets the download size (default 512);
//! `KILN_BENCH_CONNS` the latency sample count (default 200).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_egress::{serve_unix, BuildCounters, Policy, StepScope, SystemResolver};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

const BLOCK: usize = 256 * 1024;

/// Origin protocol: one command byte. `B`: send the bulk payload and close;
/// `P`: send one byte and close.
async fn origin(bulk_bytes: u64) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let addr = l.local_addr().expect("origin addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut cmd = [0u8; 1];
                if s.read_exact(&mut cmd).await.is_err() {
                    return;
                }
                if cmd[0] == b'B' {
                    let block = vec![0x5au8; BLOCK];
                    let mut left = bulk_bytes;
                    while left > 0 {
                        let k = left.min(BLOCK as u64) as usize;
                        if s.write_all(&block[..k]).await.is_err() {
                            return;
                        }
                        left -= k as u64;
                    }
                } else {
                    let _ = s.write_all(b"x").await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

async fn connect_via_proxy(sock: &Path, origin: SocketAddr) -> UnixStream {
    let mut s = UnixStream::connect(sock).await.expect("connect proxy");
    s.write_all(format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes())
        .await
        .expect("write CONNECT");
    let mut head = Vec::with_capacity(64);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).await.expect("read CONNECT answer");
        assert!(n == 1, "proxy closed during CONNECT");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200 "), "CONNECT refused");
    s
}

async fn drain<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> u64 {
    s.write_all(b"B").await.expect("send command");
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).await.expect("read payload");
        if n == 0 {
            return total;
        }
        total += n as u64;
    }
}

async fn ping<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    s.write_all(b"P").await.expect("send ping");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("read pong");
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not and
    // should stay quick.
    let benching = std::env::args().any(|a| a == "--bench");
    let mib = env_u64("KILN_BENCH_MIB", if benching { 512 } else { 8 });
    let conns = env_u64("KILN_BENCH_CONNS", if benching { 200 } else { 20 }) as usize;
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run(mib, conns));
}

async fn run(mib: u64, conns: usize) {
    let bytes = mib << 20;
    let origin = origin(bytes).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let sock: PathBuf = dir.path().join("egress.sock");
    let listener = UnixListener::bind(&sock).expect("bind proxy socket");
    let mut policy = Policy::none().with_open(origin);
    policy.max_conns_per_step = 1024;
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(serve_unix(
        listener,
        StepScope { build: "bench".into(), job: "bench".into(), step: "bench".into() },
        Arc::new(policy),
        Arc::new(SystemResolver),
        BuildCounters::new(u64::MAX),
        events_tx,
        async move {
            let _ = stop_rx.await;
        },
    ));

    // Warm-up.
    ping(TcpStream::connect(origin).await.expect("connect origin")).await;
    ping(connect_via_proxy(&sock, origin).await).await;

    // Alternate the two paths and keep the best of three rounds each, so
    // neither pays alone for first-touch costs or a noisy neighbour.
    let mut direct = Duration::MAX;
    let mut proxied = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let got = drain(TcpStream::connect(origin).await.expect("connect origin")).await;
        direct = direct.min(t.elapsed());
        assert_eq!(got, bytes);
        let t = Instant::now();
        let got = drain(connect_via_proxy(&sock, origin).await).await;
        proxied = proxied.min(t.elapsed());
        assert_eq!(got, bytes);
    }
    let direct_mbs = bytes as f64 / 1e6 / direct.as_secs_f64();
    let proxied_mbs = bytes as f64 / 1e6 / proxied.as_secs_f64();

    let mut lat_direct = Vec::with_capacity(conns);
    let mut lat_proxied = Vec::with_capacity(conns);
    for _ in 0..conns {
        let t = Instant::now();
        let s = TcpStream::connect(origin).await.expect("connect origin");
        let _ = s.set_nodelay(true);
        ping(s).await;
        lat_direct.push(t.elapsed());
        let t = Instant::now();
        ping(connect_via_proxy(&sock, origin).await).await;
        lat_proxied.push(t.elapsed());
    }
    lat_direct.sort();
    lat_proxied.sort();

    let _ = stop_tx.send(());
    let _ = proxy.await;

    println!("### kiln-egress: {mib} MiB download (best of 3), {conns} connections (loopback, 2 workers)\n");
    println!("| path | throughput | median connect+first byte | p99 connect+first byte |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| direct TCP | {direct_mbs:.0} MB/s | {} | {} |",
        us(pct(&lat_direct, 0.5)),
        us(pct(&lat_direct, 0.99))
    );
    println!(
        "| Unix socket → proxy (CONNECT) → TCP | {proxied_mbs:.0} MB/s | {} | {} |",
        us(pct(&lat_proxied, 0.5)),
        us(pct(&lat_proxied, 0.99))
    );
    println!(
        "| proxied / direct | {:.2}× | +{} | +{} |",
        proxied_mbs / direct_mbs,
        us(pct(&lat_proxied, 0.5).saturating_sub(pct(&lat_direct, 0.5))),
        us(pct(&lat_proxied, 0.99).saturating_sub(pct(&lat_direct, 0.99)))
    );
}
