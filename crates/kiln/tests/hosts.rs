//! `kiln serve` replicas and `kiln worker`s each on a host of its own: a
//! network namespace with its own address on a bridge this test makes (and
//! removes), PostgreSQL on the bridge's address, HTTPS between workers and
//! servers (a CA made for the test, pinned by the workers). A "host" is
//! killed by killing every process in its namespace with SIGKILL, and cut
//! off by taking its link down.
//!
//! Needs root, runsc and runc (as every real-sandbox test), `ip` (iproute2)
//! and `nsenter`; fails with the reason when one is missing.

mod common;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(240);
/// Short, so that a host cut off loses its lease within the test.
const LEASE_MS: &str = "4000";

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A bridge in this (the test's) namespace with hosts on it.
struct Lan {
    tag: String,
    bridge: String,
    /// `10.X.Y`: the bridge is `.1`, hosts from `.2`.
    prefix: String,
    hosts: Vec<String>,
}

impl Lan {
    fn new() -> Lan {
        common::require_sandboxes();
        for tool in ["ip", "nsenter"] {
            let found =
                Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status);
            assert!(found.is_ok_and(|s| s.success()), "`{tool}` is needed (iproute2, util-linux)");
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let n = std::process::id() % 200 + 20 * N.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:x}", n % 4000);
        let lan = Lan {
            bridge: format!("kb{tag}"),
            prefix: format!("10.{}.{}", 200 + (n / 250) % 50, n % 250),
            tag,
            hosts: Vec::new(),
        };
        let _ = Command::new("ip").args(["link", "del", &lan.bridge]).output();
        sh(&format!(
            "ip link add {b} type bridge && ip addr add {p}.1/24 dev {b} && ip link set {b} up",
            b = lan.bridge,
            p = lan.prefix
        ));
        lan
    }

    fn gateway(&self) -> Ipv4Addr {
        format!("{}.1", self.prefix).parse().unwrap()
    }

    fn network(&self) -> String {
        format!("{}.0/24", self.prefix)
    }

    /// A new host: its namespace, a veth into the bridge, its address.
    fn host(&mut self, name: &str) -> Host {
        let i = self.hosts.len() + 2;
        let ns = format!("kiln-{}-{name}", self.tag);
        let veth = format!("kv{}-{i}", self.tag);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(&format!(
            "ip netns add {ns} && ip link add {veth} type veth peer name eth0 netns {ns} && \
             ip link set {veth} master {b} && ip link set {veth} up && \
             ip -n {ns} addr add {p}.{i}/24 dev eth0 && ip -n {ns} link set eth0 up && \
             ip -n {ns} link set lo up",
            b = self.bridge,
            p = self.prefix
        ));
        self.hosts.push(ns.clone());
        Host { ns, veth, ip: format!("{}.{i}", self.prefix).parse().unwrap() }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.hosts {
            kill_namespace(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

/// SIGKILL to every process in a network namespace.
fn kill_namespace(ns: &str) {
    let out = Command::new("ip").args(["netns", "pids", ns]).output().unwrap();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).output();
    }
}

#[derive(Clone)]
struct Host {
    ns: String,
    veth: String,
    ip: Ipv4Addr,
}

impl Host {
    /// `kiln ARGS` on this host (only its network namespace differs: the
    /// sandboxes' cgroups and mounts are the machine's).
    fn kiln(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns)).arg("--").arg(env!("CARGO_BIN_EXE_kiln"));
        c.env("NO_COLOR", "1").env("KILN_LOG", "warn").env_remove("KILN_SERVER").env_remove("KILN_DATABASE");
        c
    }

    /// Every process on the host, killed at once.
    fn kill(&self) {
        kill_namespace(&self.ns);
    }

    fn cut_off(&self) {
        sh(&format!("ip link set {} down", self.veth));
    }

    fn reconnect(&self) {
        sh(&format!("ip link set {} up", self.veth));
    }
}

/// A CA and a certificate for the servers' addresses.
fn pki(dir: &Path, ips: &[Ipv4Addr]) -> (PathBuf, PathBuf, PathBuf) {
    let san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
    let script = format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
         -days 2 -subj /CN=kiln-hosts-ca 2>/dev/null
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
         -subj /CN=kiln-server 2>/dev/null
         printf 'subjectAltName={}\\nbasicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\nextendedKeyUsage=serverAuth\\n' > ext
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
         -extfile ext 2>/dev/null",
        san.join(",")
    );
    let out = Command::new("bash").arg("-ec").arg(&script).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// The deployment: PostgreSQL on the bridge, server replicas and workers
/// on hosts of their own, one content store every server reaches.
struct Site {
    dir: tempfile::TempDir,
    cluster: kiln_server::pgcluster::LocalCluster,
    db_url: String,
    servers: Vec<(Host, Option<Child>)>,
    workers: Vec<(Host, Option<Child>)>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Removed last: its hosts outlive every process above.
    _lan: Lan,
}

impl Site {
    fn new(replicas: usize, workers: usize) -> Site {
        let mut lan = Lan::new();
        let dir = tempfile::Builder::new().prefix("kiln-hosts-test-").tempdir().unwrap();
        let cluster = kiln_server::pgcluster::LocalCluster::start_on(lan.gateway(), &lan.network())
            .unwrap_or_else(|e| panic!("the PostgreSQL test cluster: {e}"));
        cluster.database("kiln").unwrap();
        let db_url = cluster.url_on_network("kiln").unwrap();
        let server_hosts: Vec<Host> = (0..replicas).map(|i| lan.host(&format!("s{i}"))).collect();
        let worker_hosts: Vec<Host> = (0..workers).map(|i| lan.host(&format!("w{i}"))).collect();
        let ips: Vec<Ipv4Addr> = server_hosts.iter().map(|h| h.ip).collect();
        let (ca, cert, key) = pki(dir.path(), &ips);
        let mut site = Site {
            dir,
            cluster,
            db_url,
            servers: server_hosts.into_iter().map(|h| (h, None)).collect(),
            workers: worker_hosts.into_iter().map(|h| (h, None)).collect(),
            ca,
            cert,
            key,
            _lan: lan,
        };
        for i in 0..replicas {
            if i > 0 {
                kiln_server::replicate::copy_shared_keys(&site.state(0), &site.state(i)).unwrap();
            }
            site.start_server(i);
        }
        site
    }

    fn state(&self, server: usize) -> PathBuf {
        self.dir.path().join(format!("server-{server}"))
    }

    fn url(&self, server: usize) -> String {
        format!("https://{}:8420", self.servers[server].0.ip)
    }

    fn start_server(&mut self, i: usize) {
        let store = format!("file://{}", self.dir.path().join("store").display());
        let mut child = self.servers[i]
            .0
            .kiln()
            .args(["serve", "--listen", &format!("{}:8420", self.servers[i].0.ip), "--workers", "0"])
            .args(["--isolation", "gvisor", "--lease-timeout-ms", LEASE_MS, "--store", &store])
            .arg("--database")
            .arg(&self.db_url)
            .arg("--tls-cert")
            .arg(&self.cert)
            .arg("--tls-key")
            .arg(&self.key)
            .arg("--state-dir")
            .arg(self.state(i))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.path().join(format!("server-{i}.log"))).unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("kiln serve: listening on https://"),
            "server {i}: {line:?}\n{}",
            self.log(i)
        );
        self.servers[i].1 = Some(child);
    }

    fn log(&self, server: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("server-{server}.log"))).unwrap_or_default()
    }

    fn worker_log(&self, w: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("worker-{w}.log"))).unwrap_or_default()
    }

    /// `kiln admin ARGS` against the deployment's database.
    fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("admin")
            .args(args)
            .env("KILN_STATE_DIR", self.state(0))
            .env("KILN_DATABASE", self.cluster.url("kiln"))
            .output()
            .unwrap();
        assert!(out.status.success(), "kiln admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts worker `w`, talking to every replica (the first it can reach).
    fn start_worker(&mut self, w: usize, token: &str) {
        let servers: Vec<String> = (0..self.servers.len()).map(|i| self.url(i)).collect();
        let child = self.workers[w]
            .0
            .kiln()
            .args([
                "worker",
                "--name",
                &format!("w{w}"),
                "--isolation",
                "gvisor",
                "--server",
                &servers.join(","),
            ])
            .arg("--ca")
            .arg(&self.ca)
            .arg("--state-dir")
            .arg(self.dir.path().join(format!("worker-{w}")))
            .env("KILN_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.path().join(format!("worker-{w}.log"))).unwrap(),
            ))
            .spawn()
            .unwrap();
        self.workers[w].1 = Some(child);
    }

    fn kill_worker_host(&mut self, w: usize) {
        self.workers[w].0.kill();
        if let Some(mut c) = self.workers[w].1.take() {
            let _ = c.wait();
        }
    }

    fn kill_server_host(&mut self, i: usize) {
        self.servers[i].0.kill();
        if let Some(mut c) = self.servers[i].1.take() {
            let _ = c.wait();
        }
    }

    fn api(&self, server: usize, token: &str) -> Api {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .tls_config(kiln_server::tls::client_tls(Some(&self.ca)).unwrap())
            .build()
            .into();
        Api { agent, url: self.url(server), token: token.to_string() }
    }

    /// A tenant and its token.
    fn tenant(&self, name: &str) -> String {
        self.admin(&["tenant", "create", name, "--plan", "team"]);
        self.admin(&["token", "create", "--tenant", name])
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.servers.len() {
            out += &format!("--- server {i}:\n{}\n", self.log(i));
        }
        for w in 0..self.workers.len() {
            out += &format!("--- worker {w}:\n{}\n", self.worker_log(w));
        }
        out
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for (h, c) in self.workers.iter_mut().chain(self.servers.iter_mut()) {
            h.kill();
            if let Some(mut c) = c.take() {
                let _ = c.wait();
            }
        }
    }
}

struct Api {
    agent: ureq::Agent,
    url: String,
    token: String,
}

impl Api {
    fn req(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let resp = match method {
            "GET" => self.agent.get(&url).header("Authorization", &auth).call(),
            _ => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(body.cloned().unwrap_or(json!({}))),
        };
        let mut resp = resp.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    fn submit(&self, workflow: &str) -> String {
        let (status, v) = self.req("POST", "/v1/builds", Some(&json!({ "workflow": workflow }))).unwrap();
        assert_eq!(status, 201, "submit: {v}");
        v["id"].as_str().unwrap().to_string()
    }

    fn build(&self, id: &str) -> Value {
        let (status, v) = self.req("GET", &format!("/v1/builds/{id}"), None).unwrap();
        assert_eq!(status, 200, "GET build {id}: {v}");
        v
    }

    fn log_text(&self, id: &str) -> String {
        let url = format!("{}/v1/builds/{id}/logs?format=text", self.url);
        let mut resp =
            self.agent.get(&url).header("Authorization", &format!("Bearer {}", self.token)).call().unwrap();
        resp.body_mut().read_to_string().unwrap_or_default()
    }
}

/// Polls `f` until it gives a value; panics with `what` and `context()`.
fn wait<T>(what: &str, context: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn is_final(b: &Value) -> bool {
    matches!(b["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
}

fn count(b: &Value, state: &str) -> usize {
    b["transitions"].as_array().map_or(0, |t| t.iter().filter(|t| t["state"] == state).count())
}

const SLOW: &str = "jobs:\n  slow:\n    steps:\n      - run: |\n          echo first-half\n          sleep 8\n          echo second-half\n";

/// One server, two worker hosts, w0 alone running [`SLOW`] (past its
/// first half); returns the site, the tenant's API, the worker token and
/// the build.
fn slow_build_on_w0() -> (Site, Api, String, String) {
    let mut site = Site::new(1, 2);
    let api = site.api(0, &site.tenant("alpha"));
    let token = site.admin(&["token", "create", "--worker"]);
    site.start_worker(0, &token);
    let id = api.submit(SLOW);
    wait("the first half on w0", || site.logs(), || api.log_text(&id).contains("] first-half").then_some(()));
    (site, api, token, id)
}

/// A worker host killed mid-build: its lease runs out, the build is
/// retried on another host and finishes there.
#[test]
fn a_worker_host_killed_mid_build_is_retried_on_another_host() {
    let (mut site, api, token, id) = slow_build_on_w0();
    assert_eq!(api.build(&id)["worker"], "remote:w0");
    site.kill_worker_host(0);
    site.start_worker(1, &token);
    let b = wait("the build to finish", || site.logs(), || Some(api.build(&id)).filter(is_final));
    assert_eq!(b["state"], "succeeded", "{b}\n{}", site.logs());
    assert_eq!((b["worker"].as_str(), b["retries"].as_i64()), (Some("remote:w1"), Some(1)), "{b}");
    assert_eq!(count(&b, "succeeded"), 1);
    assert!(api.log_text(&id).contains("] second-half"));
}

/// A worker host cut off from the network for longer than its lease: the
/// build is retried on another host; when the first comes back, its late
/// reports are refused and exactly one attempt's result counts.
#[test]
fn a_worker_host_cut_off_past_its_lease_counts_once() {
    let (mut site, api, token, id) = slow_build_on_w0();
    site.workers[0].0.cut_off();
    // The lease runs out; the build goes back to the queue.
    wait(
        "the lease to be taken back",
        || site.logs(),
        || (api.build(&id)["state"] == "queued").then_some(()),
    );
    site.start_worker(1, &token);
    wait("w1 to take the build", || site.logs(), || (api.build(&id)["worker"] == "remote:w1").then_some(()));
    site.workers[0].0.reconnect();
    let b = wait("the build to finish", || site.logs(), || Some(api.build(&id)).filter(is_final));
    assert_eq!(b["state"], "succeeded", "{b}\n{}", site.logs());
    assert_eq!(b["worker"], "remote:w1");
    assert_eq!(count(&b, "succeeded"), 1, "{b}");
    assert_eq!(b["attempt"], 2, "{b}");
    // w0 came back while its sandbox still ran: it was told its lease was
    // gone and stopped, and nothing it sent after counted.
    wait(
        "w0 to hear it lost the lease",
        || site.logs(),
        || site.worker_log(0).contains("the lease was taken back").then_some(()),
    );
    let (_, usage) = api.req("GET", "/v1/usage", None).unwrap();
    assert_eq!(usage["usage"].as_array().map(Vec::len), Some(1), "{usage}");
}

/// Two replicas and two workers under a stream of builds: one replica's
/// host is killed, then PostgreSQL restarts. Clients go on with the other
/// replica, workers move to it, and every build runs exactly once.
#[test]
fn a_replica_host_killed_and_a_database_restart_lose_nothing() {
    let mut site = Site::new(2, 2);
    let token = site.tenant("alpha");
    let apis = [site.api(0, &token), site.api(1, &token)];
    let wtoken = site.admin(&["token", "create", "--worker"]);
    site.start_worker(0, &wtoken);
    site.start_worker(1, &wtoken);
    let quick = "jobs:\n  quick:\n    steps:\n      - run: echo quick; sleep 1\n";
    let mut ids: Vec<String> = (0..8).map(|i| apis[i % 2].submit(quick)).collect();
    wait(
        "some builds to finish",
        || site.logs(),
        || {
            let done = ids.iter().filter(|id| is_final(&apis[1].build(id))).count();
            (done >= 2).then_some(())
        },
    );
    site.kill_server_host(0);
    // Clients carry on with the other replica.
    ids.extend((0..6).map(|_| apis[1].submit(quick)));
    site.cluster.stop().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    site.cluster.restart().unwrap();
    ids.extend((0..4).map(|_| apis[1].submit(quick)));
    for id in &ids {
        let b = wait(&format!("{id} to finish"), || site.logs(), || Some(apis[1].build(id)).filter(is_final));
        assert_eq!(b["state"], "succeeded", "{b}\n{}", site.logs());
        assert_eq!(count(&b, "succeeded"), 1, "{b}");
    }
    let (_, usage) = apis[1].req("GET", "/v1/usage", None).unwrap();
    let mut recorded: Vec<String> =
        usage["usage"].as_array().unwrap().iter().map(|u| u["build"].as_str().unwrap().to_string()).collect();
    recorded.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(recorded, want, "one usage record per build");
}
