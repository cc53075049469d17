//! End-to-end tests of the proxy. Every socket here is on loopback or a Unix
//! socket; blocked destinations are never connected to, and names are
//! answered by fake resolvers.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_egress::{
    serve_tcp, serve_unix, BoxFuture, BuildCounters, EgressEvent, Policy, Resolver, StepScope,
    CAP_BYTES_PER_BUILD, CAP_CONNS_PER_STEP,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

const T: Duration = Duration::from_secs(20);

fn scope() -> StepScope {
    StepScope { build: "b1".into(), job: "j1".into(), step: "s1".into() }
}

/// Maps names to fixed answers and counts lookups.
#[derive(Default)]
struct FakeResolver {
    answers: HashMap<String, Vec<SocketAddr>>,
    calls: AtomicUsize,
}

impl FakeResolver {
    fn with(pairs: &[(&str, &[&str])]) -> Arc<FakeResolver> {
        let answers = pairs
            .iter()
            .map(|(n, a)| (n.to_string(), a.iter().map(|s| s.parse().unwrap()).collect()))
            .collect();
        Arc::new(FakeResolver { answers, calls: AtomicUsize::new(0) })
    }
}

impl Resolver for FakeResolver {
    fn resolve(&self, host: &str, _port: u16) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let r = self
            .answers
            .get(host)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no such host {host}")));
        Box::pin(async move { r })
    }
}

/// Answers an allowed address first, the metadata address afterwards.
struct RebindingResolver {
    first: SocketAddr,
    calls: AtomicUsize,
}

impl Resolver for RebindingResolver {
    fn resolve(&self, _host: &str, port: u16) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let a = if n == 0 { self.first } else { SocketAddr::new("169.254.169.254".parse().unwrap(), port) };
        Box::pin(async move { Ok(vec![a]) })
    }
}

struct Proxy {
    path: PathBuf,
    events: mpsc::UnboundedReceiver<EgressEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    async fn start(policy: Policy, resolver: Arc<dyn Resolver>, counters: Arc<BuildCounters>) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_unix(
            listener,
            scope(),
            Arc::new(policy),
            resolver,
            counters,
            tx,
            async move {
                let _ = stopped.await;
            },
        ));
        Proxy { path, events, stop: Some(stop), task, _dir: dir }
    }

    async fn simple(policy: Policy) -> Proxy {
        Proxy::start(policy, FakeResolver::with(&[]), Arc::new(BuildCounters::default())).await
    }

    async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.path).await.unwrap()
    }

    /// Send `raw`, read the whole answer until the proxy closes.
    async fn exchange(&self, raw: &[u8]) -> String {
        let mut s = self.connect().await;
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut out)).await.expect("proxy answered in time").ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn next_event(&mut self) -> EgressEvent {
        tokio::time::timeout(T, self.events.recv()).await.expect("event in time").expect("event channel open")
    }

    /// Wait for an event matching `f`, skipping others.
    async fn wait_for(&mut self, f: impl Fn(&EgressEvent) -> bool) -> EgressEvent {
        loop {
            let e = self.next_event().await;
            if f(&e) {
                return e;
            }
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(T, &mut self.task).await.unwrap().unwrap();
    }
}

/// A tiny HTTP/1.1 origin on loopback. Reports each request head it gets.
/// `GET /big/N` answers N bytes; requests with a Content-Length body get it
/// echoed back; anything else gets `hello from origin`.
async fn http_origin() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let _ = tx.send(head.clone());
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let clen: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if let Some(n) = path.strip_prefix("/big/") {
                    let n: usize = n.parse().unwrap();
                    let hdr = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n");
                    if s.write_all(hdr.as_bytes()).await.is_err() {
                        return;
                    }
                    let block = vec![b'z'; 64 * 1024];
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(block.len());
                        if s.write_all(&block[..k]).await.is_err() {
                            return;
                        }
                        left -= k;
                    }
                    return;
                }
                let mut body = buf[head_end..].to_vec();
                while body.len() < clen {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                let reply = if clen > 0 {
                    format!("got: {}", String::from_utf8_lossy(&body))
                } else {
                    "hello from origin".to_string()
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, rx)
}

/// Echoes bytes until EOF.
async fn echo_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Open a CONNECT tunnel; returns the stream after the 200 line.
async fn tunnel(proxy: &Proxy, dest: &str) -> UnixStream {
    let mut s = proxy.connect().await;
    s.write_all(format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n").as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    s
}

async fn read_head(s: &mut UnixStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(T, s.read(&mut b)).await.unwrap().unwrap();
        assert!(n > 0, "EOF in head: {:?}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

fn assert_blocked(resp: &str, dest: &str, rule: &str) {
    assert!(resp.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{resp}");
    assert!(resp.contains("\r\nX-Kiln-Egress: blocked\r\n"), "{resp}");
    let want = format!("\r\n\r\nkiln egress: blocked {dest} ({rule})\n");
    assert!(resp.ends_with(&want), "want {want:?} in {resp}");
}

#[tokio::test]
async fn absolute_form_get_is_rewritten_and_forwarded() {
    let (origin, mut heads) = http_origin().await;
    let mut p = Proxy::simple(Policy::none().with_open(origin)).await;
    let port = origin.port();
    let req = format!(
        "GET http://127.0.0.1:{port}/hello?x=1#frag HTTP/1.1\r\nHost: bogus.example\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n\
         Connection: keep-alive\r\nKeep-Alive: 300\r\nAccept: */*\r\n\r\n"
    );
    let resp = p.exchange(req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with("hello from origin"), "{resp}");
    let head = heads.recv().await.unwrap();
    assert_eq!(
        head,
        format!(
            "GET /hello?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
    );
    let dest = format!("127.0.0.1:{port}");
    assert_eq!(
        p.next_event().await,
        EgressEvent::Allowed { scope: scope(), dest: dest.clone(), addr: origin }
    );
    match p.next_event().await {
        EgressEvent::Closed { dest: d, bytes_in, bytes_out, .. } => {
            assert_eq!(d, dest);
            assert_eq!(bytes_in, resp.len() as u64);
            assert_eq!(bytes_out, head.len() as u64);
        }
        other => panic!("{other:?}"),
    }
    p.stop().await;
}

#[tokio::test]
async fn request_body_is_relayed() {
    let (origin, _heads) = http_origin().await;
    let p = Proxy::simple(Policy::none().with_open(origin)).await;
    let mut s = p.connect().await;
    let port = origin.port();
    // Head first, body in a later write.
    s.write_all(
        format!("POST http://127.0.0.1:{port}/up HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello").as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b" world").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out)).await.unwrap().unwrap();
    assert!(out.ends_with("got: hello world"), "{out}");
    p.stop().await;
}

#[tokio::test]
async fn connect_tunnel_carries_bytes_both_ways() {
    let origin = echo_origin().await;
    let mut p = Proxy::simple(Policy::none().with_open(origin)).await;
    let mut s = p.connect().await;
    // Bytes pipelined right after the CONNECT head must not be lost.
    s.write_all(format!("CONNECT {origin} HTTP/1.1\r\n\r\nearly|").as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 10];
    tokio::time::timeout(T, s.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"early|ping");
    let big = vec![7u8; 3 << 20];
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&big).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(T, r.read_to_end(&mut back)).await.unwrap().unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), 3 << 20);
    assert!(matches!(p.next_event().await, EgressEvent::Allowed { addr, .. } if addr == origin));
    match p.next_event().await {
        EgressEvent::Closed { bytes_in, bytes_out, .. } => {
            assert_eq!(bytes_in, 10 + (3 << 20));
            assert_eq!(bytes_out, 10 + (3 << 20));
        }
        other => panic!("{other:?}"),
    }
    p.stop().await;
}

#[tokio::test]
async fn name_not_on_the_list_is_blocked() {
    let resolver = FakeResolver::with(&[("evil.example", &["127.0.0.1:80"])]);
    let mut p =
        Proxy::start(Policy::registries(), resolver.clone(), Arc::new(BuildCounters::default())).await;
    let resp = p.exchange(b"GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n").await;
    assert_blocked(&resp, "evil.example:80", "not on the allow-list");
    assert_eq!(
        p.next_event().await,
        EgressEvent::Blocked {
            scope: scope(),
            dest: "evil.example:80".into(),
            rule: "not on the allow-list".into()
        }
    );
    let resp = p.exchange(b"CONNECT registry.npmjs.org:22 HTTP/1.1\r\n\r\n").await;
    assert_blocked(&resp, "registry.npmjs.org:22", "port 22 not allowed");
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 0, "refused names are never resolved");
    p.stop().await;
}

#[tokio::test]
async fn metadata_address_in_every_spelling_is_blocked() {
    let resolver = FakeResolver::with(&[]);
    let mut p =
        Proxy::start(Policy::registries(), resolver.clone(), Arc::new(BuildCounters::default())).await;
    let spellings = [
        "169.254.169.254",
        "2852039166",
        "0xA9FEA9FE",
        "0xa9.0xfe.0xa9.0xfe",
        "0251.0376.0251.0376",
        "169.254.43518",
        "169.16689662",
        "025177524776",
        "169.254.169.254.",
        "[::ffff:169.254.169.254]",
        "[::ffff:a9fe:a9fe]",
        "[64:ff9b::169.254.169.254]",
        "[2002:a9fe:a9fe::1]",
        "[::169.254.169.254]",
    ];
    for host in spellings {
        for raw in [
            format!("GET http://{host}/latest/meta-data/ HTTP/1.1\r\n\r\n"),
            format!("CONNECT {host}:80 HTTP/1.1\r\n\r\n"),
        ] {
            let resp = p.exchange(raw.as_bytes()).await;
            assert!(resp.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{host}: {resp}");
            assert!(resp.contains("(link-local)\n"), "{host}: {resp}");
            match p.next_event().await {
                EgressEvent::Blocked { rule, .. } => assert_eq!(rule, "link-local", "{host}"),
                other => panic!("{other:?}"),
            }
        }
    }
    let resp = p.exchange(b"GET http://0xA9FEA9FE/ HTTP/1.1\r\n\r\n").await;
    assert_blocked(&resp, "169.254.169.254:80", "link-local");
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 0);
    p.stop().await;
}

#[tokio::test]
async fn metadata_host_names_are_blocked_before_resolution() {
    let resolver = FakeResolver::with(&[("metadata.google.internal", &["169.254.169.254:80"])]);
    let policy =
        Policy::allowing(&["metadata.google.internal", "metadata", "instance-data", "metadata.goog"])
            .unwrap();
    let mut p = Proxy::start(policy, resolver.clone(), Arc::new(BuildCounters::default())).await;
    for name in [
        "metadata.google.internal",
        "METADATA.google.internal.",
        "metadata",
        "metadata.goog",
        "instance-data",
    ] {
        let resp =
            p.exchange(format!("GET http://{name}/computeMetadata/v1/ HTTP/1.1\r\n\r\n").as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 403 "), "{resp}");
        assert!(resp.contains("(metadata host name)\n"), "{resp}");
        assert!(
            matches!(p.next_event().await, EgressEvent::Blocked { rule, .. } if rule == "metadata host name")
        );
    }
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 0);
    p.stop().await;
}

#[tokio::test]
async fn names_resolving_to_private_addresses_are_blocked() {
    let resolver = FakeResolver::with(&[
        ("a.example", &["10.0.0.5:1"]),
        ("b.example", &["127.0.0.1:1"]),
        ("c.example", &["[fd00::1]:1"]),
        ("d.example", &["[::ffff:192.168.1.1]:1", "169.254.169.254:1"]),
    ]);
    let policy = Policy::allowing(&["*.example"]).unwrap();
    let mut p = Proxy::start(policy, resolver.clone(), Arc::new(BuildCounters::default())).await;
    for (name, why) in [
        ("a.example", "private"),
        ("b.example", "loopback"),
        ("c.example", "unique-local"),
        ("d.example", "private"),
    ] {
        let resp = p.exchange(format!("CONNECT {name}:443 HTTP/1.1\r\n\r\n").as_bytes()).await;
        let rule = format!("{why} (resolved from {name})");
        assert_blocked(&resp, &format!("{name}:443"), &rule);
        assert_eq!(
            p.next_event().await,
            EgressEvent::Blocked { scope: scope(), dest: format!("{name}:443"), rule }
        );
    }
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 4);
    // Unknown name: 502 with the reason.
    let resp = p.exchange(b"GET http://nope.example/ HTTP/1.1\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{resp}");
    assert!(resp.contains("no such host nope.example"), "{resp}");
    p.stop().await;
}

#[tokio::test]
async fn rebinding_gets_nothing_the_vetted_address_is_used() {
    let (origin, mut heads) = http_origin().await;
    let resolver = Arc::new(RebindingResolver { first: origin, calls: AtomicUsize::new(0) });
    let port = origin.port();
    let policy = Policy::allowing(&[format!("pkg.example:{port}")]).unwrap().with_open(origin);
    let mut p = Proxy::start(policy, resolver.clone(), Arc::new(BuildCounters::default())).await;
    let resp = p.exchange(format!("GET http://pkg.example:{port}/pkg.tgz HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.ends_with("hello from origin"), "{resp}");
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 1, "resolved exactly once");
    let head = heads.recv().await.unwrap();
    assert!(head.starts_with(&format!("GET /pkg.tgz HTTP/1.1\r\nHost: pkg.example:{port}\r\n")), "{head}");
    assert_eq!(
        p.next_event().await,
        EgressEvent::Allowed { scope: scope(), dest: format!("pkg.example:{port}"), addr: origin }
    );
    // A second connection resolves again and now gets the metadata address.
    let resp = p.exchange(format!("CONNECT pkg.example:{port} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.contains("(link-local (resolved from pkg.example))"), "{resp}");
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 2);
    p.stop().await;
}

#[tokio::test]
async fn byte_cap_cuts_a_large_download() {
    let (origin, _heads) = http_origin().await;
    let cap = 1u64 << 20;
    let counters = BuildCounters::new(cap);
    let mut p =
        Proxy::start(Policy::none().with_open(origin), FakeResolver::with(&[]), counters.clone()).await;
    let mut s = p.connect().await;
    s.write_all(format!("GET http://{origin}/big/{} HTTP/1.1\r\n\r\n", 50 << 20).as_bytes()).await.unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    };
    tokio::time::timeout(T, read_all).await.expect("connection cut in time");
    assert!(got as u64 <= cap, "got {got} bytes through a {cap}-byte cap");
    assert!(got > 0);
    let e = p.wait_for(|e| matches!(e, EgressEvent::CapExceeded { .. })).await;
    assert_eq!(e, EgressEvent::CapExceeded { scope: scope(), which: CAP_BYTES_PER_BUILD, limit: cap });
    assert!(matches!(
        p.next_event().await,
        EgressEvent::Closed { bytes_in, bytes_out, .. } if bytes_in + bytes_out <= cap
    ));
    // Only what was relayed is counted: usage never exceeds the cap.
    assert!(counters.total() <= cap && counters.total() >= got as u64, "{} vs {got}", counters.total());
    // The build is out of bytes: new connections are refused outright.
    let resp = p.exchange(format!("GET http://{origin}/ HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 429 "), "{resp}");
    assert!(
        matches!(p.next_event().await, EgressEvent::CapExceeded { which, .. } if which == CAP_BYTES_PER_BUILD)
    );
    p.stop().await;
}

#[tokio::test]
async fn connection_cap_per_step() {
    let origin = echo_origin().await;
    let mut policy = Policy::none().with_open(origin);
    policy.max_conns_per_step = 2;
    let mut p = Proxy::simple(policy).await;
    let dest = origin.to_string();
    let a = tunnel(&p, &dest).await;
    let _b = tunnel(&p, &dest).await;
    let resp = p.exchange(format!("CONNECT {dest} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{resp}");
    assert!(resp.contains("too many connections (limit 2 per step)"), "{resp}");
    let e = p.wait_for(|e| matches!(e, EgressEvent::CapExceeded { .. })).await;
    assert_eq!(e, EgressEvent::CapExceeded { scope: scope(), which: CAP_CONNS_PER_STEP, limit: 2 });
    // Closing one frees a slot.
    drop(a);
    p.wait_for(|e| matches!(e, EgressEvent::Closed { .. })).await;
    let _c = tunnel(&p, &dest).await;
    p.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let p = Proxy::simple(Policy::registries()).await;
    for raw in [
        &b"garbage\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: crates.io\r\n\r\n",
        b"GET https://crates.io/ HTTP/1.1\r\n\r\n",
        b"CONNECT crates.io HTTP/1.1\r\n\r\n",
        b"GET http://crates.io@evil.example/ HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        b"GET http://crates.io/ HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let resp = p.exchange(raw).await;
        assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{raw:?}: {resp}");
    }
    let mut huge = b"GET http://crates.io/ HTTP/1.1\r\n".to_vec();
    huge.extend(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(600));
    let resp = p.exchange(&huge).await;
    assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
    // A client that connects and leaves without a word gets nothing.
    let mut s = p.connect().await;
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut out)).await.unwrap().unwrap();
    assert!(out.is_empty());
    p.stop().await;
}

/// Refused at parsing, a request left no `egress blocked` line and no audit
/// row: every refusal is an event, whatever stage refuses it.
#[tokio::test]
async fn bug_malformed_requests_left_no_blocked_line_or_audit_row() {
    let mut p = Proxy::simple(Policy::registries()).await;
    for (raw, dest) in [
        (&b"GET http://crates.io@evil.example/ HTTP/1.1\r\n\r\n"[..], "http://crates.io@evil.example/"),
        (b"GET http://crates.io:99999/ HTTP/1.1\r\n\r\n", "http://crates.io:99999/"),
        (b"garbage\r\n\r\n", "(none)"),
    ] {
        let resp = p.exchange(raw).await;
        assert!(resp.starts_with("HTTP/1.1 4"), "{raw:?}: {resp}");
        let e = p.wait_for(|e| matches!(e, EgressEvent::Blocked { .. })).await;
        let EgressEvent::Blocked { dest: got, rule, .. } = e else { unreachable!() };
        assert_eq!(got, dest, "{raw:?}");
        assert!(rule.starts_with("malformed request: "), "{rule}");
    }
    // A backslash parses into a name no rule allows: blocked by the policy.
    let resp = p.exchange(b"GET http://evil.example\\crates.io/ HTTP/1.1\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    p.wait_for(|e| matches!(e, EgressEvent::Blocked { .. })).await;
    let mut huge = b"GET http://crates.io/ HTTP/1.1\r\n".to_vec();
    huge.extend(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(600));
    p.exchange(&huge).await;
    let e = p.wait_for(|e| matches!(e, EgressEvent::Blocked { .. })).await;
    assert!(
        matches!(e, EgressEvent::Blocked { ref rule, .. } if rule.starts_with("malformed request: ")),
        "{e:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn silent_client_gets_408_after_the_head_timeout() {
    let p = Proxy::simple(Policy::registries()).await;
    let started = std::time::Instant::now();
    let resp = p.exchange(b"GET http://crates.io/ HTTP/1.1\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{resp}");
    assert!(started.elapsed() >= kiln_egress::HEAD_TIMEOUT);
    p.stop().await;
}

#[test]
fn random_bytes_never_break_the_proxy() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(Proxy::simple(Policy::registries()));
    let mut runner =
        proptest::test_runner::TestRunner::new(ProptestConfig { cases: 48, ..ProptestConfig::default() });
    let strat = prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..300),
        "(GET|CONNECT|POST) [!-~]{0,40} HTTP/1\\.[01]\r\n([A-Za-z-]{1,10}: [ -~]{0,20}\r\n){0,4}\r\n"
            .prop_map(String::into_bytes),
    ];
    runner
        .run(&strat, |bytes| {
            let resp = rt.block_on(async {
                let mut s = p.connect().await;
                let _ = s.write_all(&bytes).await;
                let _ = s.shutdown().await;
                let mut out = Vec::new();
                let _ = tokio::time::timeout(T, s.read_to_end(&mut out)).await;
                String::from_utf8_lossy(&out).into_owned()
            });
            // Nothing here is allowed, so every complete answer is a refusal.
            prop_assert!(
                resp.is_empty()
                    || resp.starts_with("HTTP/1.1 400 ")
                    || resp.starts_with("HTTP/1.1 403 ")
                    || resp.starts_with("HTTP/1.1 431 ")
                    || resp.starts_with("HTTP/1.1 502 "),
                "{:?} -> {}",
                String::from_utf8_lossy(&bytes),
                resp
            );
            Ok(())
        })
        .unwrap();
    // Still serving afterwards.
    let resp = rt.block_on(p.exchange(b"GET http://evil.example/ HTTP/1.1\r\n\r\n"));
    assert!(resp.starts_with("HTTP/1.1 403 "), "{resp}");
    rt.block_on(p.stop());
}

#[tokio::test]
async fn shutdown_aborts_open_tunnels() {
    let origin = echo_origin().await;
    let p = Proxy::simple(Policy::none().with_open(origin)).await;
    let mut s = tunnel(&p, &origin.to_string()).await;
    p.stop().await;
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(T, s.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "tunnel closed at shutdown");
}

#[tokio::test]
async fn tcp_listener_variant_works() {
    let (origin, _heads) = http_origin().await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = l.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_tcp(
        l,
        scope(),
        Arc::new(Policy::none().with_open(origin)),
        FakeResolver::with(&[]),
        Arc::new(BuildCounters::default()),
        tx,
        stopped,
    ));
    let mut s = TcpStream::connect(proxy_addr).await.unwrap();
    s.write_all(format!("GET http://{origin}/ HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out)).await.unwrap().unwrap();
    assert!(out.ends_with("hello from origin"), "{out}");
    assert!(matches!(rx.recv().await, Some(EgressEvent::Allowed { .. })));
    stop.send(()).unwrap();
    task.await.unwrap();
}
