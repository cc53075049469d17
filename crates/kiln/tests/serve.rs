//! `kiln serve` against real sandboxes: tenants, idempotency, live logs,
//! cancellation, scheduling order, plan limits, and recovery after
//! `kill -9` of the server or of a remote worker.
//!
//! Every wait polls with a generous deadline; assertions are on recorded
//! order and state, never on how long something took.
//!
//! The control plane's tests run twice: on SQLite (`control.db` in the
//! state dir) and on a PostgreSQL cluster each test starts itself
//! (`kiln serve --database postgres://...`).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(240);

kiln_server::on_both_databases!(
    tenants_cannot_see_each_others_builds_logs_artifacts_or_secrets,
    submit_is_idempotent_per_tenant,
    log_stream_is_live_and_resumes_without_loss_or_duplicates,
    a_running_build_is_cancelled,
    urgent_first_fifo_within_a_tenant_and_no_tenant_starves,
    plan_limits_cap_concurrency_and_time,
    kill_9_of_the_server_mid_build_loses_nothing,
    kill_9_of_a_remote_worker_moves_the_build_to_another,
    a_cache_filled_on_one_remote_worker_is_hit_on_another,
    a_worker_whose_disk_is_full_fails_the_attempt_not_the_build,
    metrics_and_openapi_are_served,
    a_repository_url_is_built_with_no_configuration,
    usage_records_count_cache_bytes_read_and_written,
    a_succeeded_build_is_handed_to_the_deployment_webhook,
    a_revoked_token_is_refused_at_its_next_request,
);

/// A `kiln serve` process with its own state dir.
struct Server {
    child: Option<Child>,
    url: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// The PostgreSQL cluster of a `postgres` test (after `child`: dropped
    /// once the server has stopped).
    _cluster: Option<kiln_server::pgcluster::LocalCluster>,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[])
    }

    fn start_with_env(extra: &[&str], env: &[(String, String)]) -> Server {
        let mut s = Server::unstarted(extra, env);
        s.spawn();
        s
    }

    /// A server with its state dir (and its own PostgreSQL cluster in a
    /// `postgres` test), not started yet.
    fn unstarted(extra: &[&str], env: &[(String, String)]) -> Server {
        common::require_sandboxes();
        let dir = tempfile::Builder::new().prefix("kiln-serve-test-").tempdir().unwrap();
        let mut env = env.to_vec();
        let cluster = (kiln_server::pgcluster::test_database()
            == kiln_server::pgcluster::TestDatabase::Postgres)
            .then(|| {
                let c = kiln_server::pgcluster::LocalCluster::start()
                    .unwrap_or_else(|e| panic!("the PostgreSQL test cluster: {e}"));
                env.push(("KILN_DATABASE".into(), c.database("kiln").unwrap()));
                c
            });
        let s = Server {
            dir,
            child: None,
            url: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env,
            _cluster: cluster,
        };
        std::fs::create_dir_all(s.state()).unwrap();
        s
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `kiln` with this server's state dir and database (`admin` too).
    fn kiln(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.env("KILN_STATE_DIR", self.state()).env("NO_COLOR", "1").env_remove("KILN_SERVER");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Starts (or restarts, on the same state dir) the server process.
    fn spawn(&mut self) {
        let mut child = self
            .kiln()
            .args(["serve", "--listen", "127.0.0.1:0", "--isolation", "gvisor"])
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(self.dir.path().join("serve.log")).unwrap()))
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("kiln serve: listening on ").unwrap_or_else(|| {
            panic!("kiln serve did not start: {line:?}\n{}", self.log());
        });
        self.url = url.to_string();
        self.child = Some(child);
        if self._cluster.is_some() {
            assert!(
                !self.state().join("control.db").exists(),
                "a server given --database postgres://... made a control.db"
            );
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn admin(&self, args: &[&str]) -> String {
        let out = self.kiln().arg("admin").args(args).output().unwrap();
        assert!(out.status.success(), "kiln admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A tenant on `plan` and a token for it.
    fn tenant(&self, name: &str, plan: &str) -> Api {
        self.admin(&["tenant", "create", name, "--plan", plan]);
        let token = self.admin(&["token", "create", "--tenant", name]);
        Api { url: self.url.clone(), token }
    }

    fn api(&self, token: &str) -> Api {
        Api { url: self.url.clone(), token: token.to_string() }
    }

    /// `kiln <args>` as an API client of this server.
    fn client(&self, api: &Api) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.env("KILN_SERVER", &self.url).env("KILN_TOKEN", &api.token).env("NO_COLOR", "1");
        c
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM first, so the server stops its sandboxes' builds.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Clone)]
struct Api {
    url: String,
    token: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

impl Api {
    fn req(&self, method: &str, path: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {}", self.token);
        let mut resp = match method {
            "GET" => {
                let mut r = agent().get(&url).header("Authorization", &auth);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.call()
            }
            _ => {
                let mut r = match method {
                    "PUT" => agent().put(&url),
                    _ => agent().post(&url),
                }
                .header("Authorization", &auth);
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r.send_json(body.cloned().unwrap_or(json!({})))
            }
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.req("GET", path, None, &[])
    }

    fn submit(&self, workflow: &str, extra: Value) -> String {
        let mut body = json!({ "workflow": workflow });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        let (status, v) = self.req("POST", "/v1/builds", Some(&body), &[]);
        assert_eq!(status, 201, "submit: {v}");
        v["id"].as_str().unwrap().to_string()
    }

    fn build(&self, id: &str) -> Value {
        let (status, v) = self.get(&format!("/v1/builds/{id}"));
        assert_eq!(status, 200, "GET build {id}: {v}");
        v
    }

    /// Waits until the build is in a final state and returns it.
    fn wait_final(&self, id: &str) -> Value {
        poll(&format!("build {id} to finish"), || {
            let b = self.build(id);
            matches!(b["state"].as_str(), Some("succeeded" | "failed" | "cancelled")).then_some(b)
        })
    }

    /// The build's log text (every attempt), as downloaded.
    fn log_text(&self, id: &str) -> String {
        let url = format!("{}/v1/builds/{id}/logs?format=text", self.url);
        let mut resp =
            agent().get(&url).header("Authorization", &format!("Bearer {}", self.token)).call().unwrap();
        resp.body_mut().read_to_string().unwrap()
    }

    /// Waits until a line of the build's output starts with `needle` (not
    /// the step's name, which the script's first line becomes).
    fn wait_log(&self, id: &str, needle: &str) {
        let needle = format!("] {needle}");
        poll(&format!("`{needle}` in the log of {id}"), || self.log_text(id).contains(&needle).then_some(()));
    }
}

fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn states(b: &Value) -> Vec<String> {
    b["transitions"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap().to_string()).collect()
}

const QUICK: &str = "jobs:\n  quick:\n    steps:\n      - run: echo quick\n";

/// A build that blocks its worker until it is cancelled.
const GATE: &str =
    "jobs:\n  gate:\n    steps:\n      - run: |\n          echo gate-up\n          sleep 600\n";

fn tenants_cannot_see_each_others_builds_logs_artifacts_or_secrets() {
    let server = Server::start(&["--workers", "2"]);
    let a = server.tenant("alpha", "team");
    let b = server.tenant("beta", "team");
    let secret = "s3cr3t-value-of-alpha";
    let (status, v) =
        a.req("PUT", "/v1/secrets/DEPLOY_TOKEN", Some(&json!({"value": secret, "phases": ["build"]})), &[]);
    assert_eq!(status, 200, "{v}");
    let (status, v) =
        a.req("PUT", "/v1/secrets/SHORT", Some(&json!({"value": "short", "phases": ["build"]})), &[]);
    assert_eq!(status, 422, "a value under 8 bytes is refused: {v}");
    let wf = "kiln:\n  secrets:\n    DEPLOY_TOKEN: { phases: [build] }\njobs:\n  make:\n    steps:\n      - env:\n          T: ${{ secrets.DEPLOY_TOKEN }}\n        run: |\n          echo \"token is $T\"\n          mkdir -p dist && echo alpha-artifact > dist/out.txt\n      - uses: actions/upload-artifact@v4\n        with:\n          name: site\n          path: dist\n";
    let id = a.submit(wf, json!({}));
    // Who submitted it: the token's id (as `kiln admin token list` shows it) and its tenant.
    let by = a.build(&id)["submitted_by"].as_str().unwrap_or_default().to_string();
    let listed = server.admin(&["token", "list", "--json"]);
    let (tok, who) = by.split_once(' ').unwrap_or_default();
    assert!(tok.len() == 16 && listed.contains(tok) && who == "(tenant alpha)", "{by}\n{listed}");
    let done = a.wait_final(&id);
    assert_eq!(done["state"], "succeeded", "{done}\n{}", a.log_text(&id));
    let log = a.log_text(&id);
    assert!(log.contains("token is ***"), "the secret is scrubbed from the log: {log}");
    assert!(!log.contains(secret));
    let (_, arts) = a.get(&format!("/v1/builds/{id}/artifacts"));
    let art = arts["artifacts"][0]["id"].as_str().expect("an artifact").to_string();

    // The owner sees everything...
    let (status, list) = a.get("/v1/secrets");
    assert_eq!(status, 200);
    assert_eq!(list["secrets"][0]["name"], "DEPLOY_TOKEN");
    assert!(!list.to_string().contains(secret), "values are never listed: {list}");
    // Its provenance is signed with the key the server publishes.
    let (status, env) = a.get(&format!("/v1/artifacts/{art}/provenance"));
    assert_eq!(status, 200, "{env}");
    let (_, key) = a.get("/v1/key");
    assert_eq!(env["signatures"][0]["keyid"], key["keyid"], "{env}");
    let out = server.dir.path().join("restored");
    let got = server.client(&a).args(["artifact", "get", &art, "--out"]).arg(&out).output().unwrap();
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert_eq!(std::fs::read_to_string(out.join("out.txt")).unwrap(), "alpha-artifact\n");

    // ...the other tenant nothing: 404 for every id, empty lists.
    for path in [
        format!("/v1/builds/{id}"),
        format!("/v1/builds/{id}/logs?format=text"),
        format!("/v1/builds/{id}/logs"),
        format!("/v1/builds/{id}/artifacts"),
        format!("/v1/artifacts/{art}"),
        format!("/v1/artifacts/{art}/provenance"),
    ] {
        let (status, v) = b.get(&path);
        assert_eq!(status, 404, "beta GET {path}: {v}");
    }
    assert_eq!(b.req("POST", &format!("/v1/builds/{id}/cancel"), None, &[]).0, 404);
    assert_eq!(b.get("/v1/builds").1["builds"], json!([]));
    assert_eq!(b.get("/v1/secrets").1["secrets"], json!([]));
    assert_eq!(b.get("/v1/usage").1["usage"], json!([]));
    let (_, audit_b) = b.get("/v1/audit");
    assert!(!audit_b.to_string().contains(&id), "{audit_b}");
    // Alpha's audit has the secret handed to its step, and its usage record.
    let (_, audit_a) = a.get("/v1/audit");
    assert!(audit_a.to_string().contains("DEPLOY_TOKEN"), "{audit_a}");
    let (_, usage) = a.get("/v1/usage");
    let u = &usage["usage"][0];
    assert_eq!(u["build"], id.as_str());
    assert!(u["cpu_seconds"].as_f64().unwrap() > 0.0 && u["artifact_bytes"].as_i64().unwrap() > 0, "{u}");
    // The secret is encrypted at rest: not in the database files.
    for f in ["control.db", "control.db-wal", "state.db", "state.db-wal"] {
        let bytes = std::fs::read(server.state().join(f)).unwrap_or_default();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{f} holds the secret");
    }
    // No token: 401, recorded for operators.
    let (status, _) = Api { url: server.url.clone(), token: "wrong".into() }.get("/v1/builds");
    assert_eq!(status, 401);
    let operator = server.api(&server.admin(&["token", "create", "--operator"]));
    let (_, all) = operator.get("/v1/audit");
    assert!(all.to_string().contains("auth failure"), "{all}");
}

fn submit_is_idempotent_per_tenant() {
    let server = Server::start(&["--workers", "1"]);
    let a = server.tenant("alpha", "team");
    let b = server.tenant("beta", "team");
    let body = json!({ "workflow": QUICK });
    let key = [("Idempotency-Key", "deploy-42")];
    let (s1, v1) = a.req("POST", "/v1/builds", Some(&body), &key);
    let (s2, v2) = a.req("POST", "/v1/builds", Some(&body), &key);
    assert_eq!((s1, s2), (201, 200), "{v1} {v2}");
    assert_eq!(v1["id"], v2["id"]);
    let other = json!({ "workflow": QUICK, "priority": "urgent" });
    let (s3, v3) = a.req("POST", "/v1/builds", Some(&other), &key);
    assert_eq!(s3, 409, "same key, different request: {v3}");
    let (s4, v4) = b.req("POST", "/v1/builds", Some(&body), &key);
    assert_eq!(s4, 201, "keys are per tenant: {v4}");
    assert_ne!(v4["id"], v1["id"]);
    // Garbage is a 4xx with a message.
    let (s5, v5) = a.req("POST", "/v1/builds", Some(&json!({"workflow": 3})), &[]);
    assert_eq!(s5, 400, "{v5}");
    assert!(v5["error"].as_str().unwrap().contains("invalid JSON"));
    // The CLI: same key, same build, and --wait exits with the build's status.
    let wf = server.dir.path().join("ci.yml");
    std::fs::write(&wf, QUICK).unwrap();
    let run = |k: &str| {
        let out = server
            .client(&a)
            .args(["submit"])
            .arg(&wf)
            .args(["--idempotency-key", k, "--wait"])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (c1, o1) = run("cli-1");
    let (c2, o2) = run("cli-1");
    assert_eq!((c1, c2), (Some(0), Some(0)), "{o1}\n{o2}");
    assert_eq!(
        o1.lines().next(),
        o2.lines().next().map(|l| l.trim_end_matches(" (already submitted with this key)"))
    );
    assert!(o1.contains("quick"), "{o1}");
    assert_eq!(a.wait_final(v1["id"].as_str().unwrap())["state"], "succeeded");
}

/// Reads SSE `log` events until `stop` says so; returns `(id, text)` pairs
/// and whether the `end` event came.
fn read_sse(
    api: &Api,
    id: &str,
    last: Option<i64>,
    mut stop: impl FnMut(&[(i64, String)]) -> bool,
) -> (Vec<(i64, String)>, bool) {
    let url = format!("{}/v1/builds/{id}/logs", api.url);
    let mut req = agent()
        .get(&url)
        .header("Authorization", &format!("Bearer {}", api.token))
        .header("Accept", "text/event-stream");
    let last_s = last.map(|l| l.to_string());
    if let Some(l) = &last_s {
        req = req.header("Last-Event-ID", l);
    }
    let resp = req.call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut got = Vec::new();
    let (mut ev_id, mut event, mut data) = (None, String::new(), String::new());
    for line in reader.lines() {
        let line = line.unwrap();
        if line.is_empty() {
            if event == "end" {
                return (got, true);
            }
            if event == "log" {
                let v: Value = serde_json::from_str(&data).unwrap();
                got.push((ev_id.take().unwrap(), v["text"].as_str().unwrap().to_string()));
                if stop(&got) {
                    return (got, false);
                }
            }
            event.clear();
            data.clear();
        } else if let Some(v) = line.strip_prefix("id:") {
            ev_id = Some(v.trim().parse::<i64>().unwrap());
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    (got, false)
}

fn log_stream_is_live_and_resumes_without_loss_or_duplicates() {
    let server = Server::start(&["--workers", "1"]);
    let a = server.tenant("alpha", "team");
    let wf = "jobs:\n  count:\n    steps:\n      - run: |\n          for i in $(seq 1 12); do echo \"line-$i\"; sleep 1; done\n";
    let id = a.submit(wf, json!({}));
    // Live: the first line arrives while the build still runs.
    let mut running_when_seen = None;
    let (first, ended) = read_sse(&a, &id, None, |got| {
        if got.iter().any(|(_, t)| t == "line-1") && running_when_seen.is_none() {
            running_when_seen = Some(a.build(&id)["state"].as_str().unwrap().to_string());
        }
        got.iter().any(|(_, t)| t == "line-3")
    });
    assert!(!ended);
    assert_eq!(running_when_seen.as_deref(), Some("running"), "lines stream while the build runs");
    // Disconnected; resume from the last id seen.
    let last = first.last().unwrap().0;
    let (rest, ended) = read_sse(&a, &id, Some(last), |_| false);
    assert!(ended, "the stream ends with an `end` event");
    let all: Vec<(i64, String)> = first.into_iter().chain(rest).collect();
    let ids: Vec<i64> = all.iter().map(|(i, _)| *i).collect();
    let expected: Vec<i64> = (ids[0]..ids[0] + ids.len() as i64).collect();
    assert_eq!(ids, expected, "ids are consecutive: no loss, no duplicates");
    let lines: Vec<&str> = all.iter().map(|(_, t)| t.as_str()).filter(|t| t.starts_with("line-")).collect();
    let want: Vec<String> = (1..=12).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines, want);
    // `kiln logs -f` on a finished build prints it all and exits 0.
    let out = server.client(&a).args(["logs", "-f", &id]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("line-12") && text.contains("succeeded"), "{text}");
}

fn a_running_build_is_cancelled() {
    let server = Server::start(&["--workers", "1"]);
    let a = server.tenant("alpha", "team");
    let id = a.submit(GATE, json!({}));
    a.wait_log(&id, "gate-up");
    assert_eq!(a.build(&id)["state"], "running");
    let out = server.client(&a).args(["cancel", &id]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b = a.wait_final(&id);
    assert_eq!(b["state"], "cancelled", "{b}");
    assert_eq!(b["jobs"][0]["status"], "cancelled", "{b}");
    // The worker is free again.
    let next = a.submit(QUICK, json!({}));
    assert_eq!(a.wait_final(&next)["state"], "succeeded");
    let out = server.client(&a).args(["status", &id]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("cancelled"));
}

fn urgent_first_fifo_within_a_tenant_and_no_tenant_starves() {
    let server = Server::start(&["--workers", "1"]);
    let gate = server.tenant("gate", "team");
    let flood = server.tenant("flood", "team");
    let solo = server.tenant("solo", "team");
    let gate_id = gate.submit(GATE, json!({}));
    gate.wait_log(&gate_id, "gate-up");
    // Everything below queues behind the gate, in this order.
    let floods: Vec<String> = (0..8).map(|_| flood.submit(QUICK, json!({}))).collect();
    let solo_id = solo.submit(QUICK, json!({}));
    let urgent = flood.submit(QUICK, json!({"priority": "urgent"}));
    gate.req("POST", &format!("/v1/builds/{gate_id}/cancel"), None, &[]);
    for id in floods.iter().chain([&solo_id, &urgent]) {
        let api = if *id == solo_id { &solo } else { &flood };
        assert_eq!(api.wait_final(id)["state"], "succeeded");
    }
    // The order in which the worker was handed builds, from their recorded
    // transitions (the control DB numbers them).
    let operator = server.api(&server.admin(&["token", "create", "--operator"]));
    let _ = operator;
    let mut leased: Vec<(i64, String)> = Vec::new();
    for id in floods.iter().chain([&solo_id, &urgent]) {
        let api = if *id == solo_id { &solo } else { &flood };
        let b = api.build(id);
        let t = b["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["state"] == "provisioning")
            .unwrap()
            .clone();
        leased.push((t["at_ms"].as_i64().unwrap(), id.clone()));
    }
    leased.sort();
    let order: Vec<&str> = leased.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(order[0], urgent, "urgent first: {order:?}");
    let solo_pos = order.iter().position(|id| *id == solo_id).unwrap();
    assert!(solo_pos <= 2, "solo's one build runs in the first round, not after 8 floods: {order:?}");
    let flood_order: Vec<&str> = order.iter().copied().filter(|id| floods.iter().any(|f| f == id)).collect();
    assert_eq!(flood_order, floods.iter().map(String::as_str).collect::<Vec<_>>(), "FIFO within a tenant");
}

fn plan_limits_cap_concurrency_and_time() {
    let server = Server::start(&["--workers", "2"]);
    let free = server.tenant("freebie", "free");
    // Free: one build at a time, though two workers are idle.
    let slow = "jobs:\n  slow:\n    steps:\n      - run: |\n          echo slow-start\n          sleep 2\n";
    let first = free.submit(slow, json!({}));
    let second = free.submit(slow, json!({}));
    let b1 = free.wait_final(&first);
    let b2 = free.wait_final(&second);
    assert_eq!((b1["state"].as_str(), b2["state"].as_str()), (Some("succeeded"), Some("succeeded")));
    let end1 = b1["transitions"].as_array().unwrap().last().unwrap()["at_ms"].as_i64().unwrap();
    let lease2 = b2["transitions"].as_array().unwrap().iter().find(|t| t["state"] == "provisioning").unwrap()
        ["at_ms"]
        .as_i64()
        .unwrap();
    assert!(lease2 >= end1, "the second build started only after the first ended: {b1}\n{b2}");
    // The plan's timeout: above it is refused, and a build past its own is failed.
    let (status, v) =
        free.req("POST", "/v1/builds", Some(&json!({"workflow": slow, "timeout_seconds": 601})), &[]);
    assert_eq!(status, 422, "{v}");
    let id = free.submit(GATE, json!({"timeout_seconds": 3}));
    let b = free.wait_final(&id);
    assert_eq!(b["state"], "failed", "{b}");
    assert_eq!(b["failure"], "user");
    assert!(b["reason"].as_str().unwrap().contains("timeout"), "{b}");
    let (_, audit) = free.get("/v1/audit");
    assert!(audit.to_string().contains("quota hit"), "{audit}");
}

fn kill_9_of_the_server_mid_build_loses_nothing() {
    let mut server = Server::start(&["--workers", "1"]);
    let a = server.tenant("alpha", "team");
    let long = "jobs:\n  long:\n    steps:\n      - run: |\n          echo first-half\n          sleep 3\n          echo second-half\n";
    let running = a.submit(long, json!({}));
    let queued = a.submit(QUICK, json!({}));
    a.wait_log(&running, "first-half");
    server.kill9();
    server.spawn();
    let a = server.api(&a.token);
    let b = a.wait_final(&running);
    assert_eq!(b["state"], "succeeded", "{b}\n{}", server.log());
    assert_eq!(b["retries"], 1, "the interrupted attempt counts as a retry: {b}");
    assert_eq!(b["attempt"], 2);
    assert!(states(&b).windows(2).any(|w| w[0] == "running" && w[1] == "queued"), "{:?}", states(&b));
    let log = a.log_text(&running);
    assert!(
        log.matches("] first-half").count() == 2 && log.contains("] second-half"),
        "both attempts' logs: {log}"
    );
    // The live log runs on across the retry: positions only grow.
    let (events, ended) = read_sse(&a, &running, None, |_| false);
    assert!(ended);
    let ids: Vec<i64> = events.iter().map(|(i, _)| *i).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(events.iter().filter(|(_, t)| t == "first-half").count(), 2, "{events:?}");
    let (rest, _) = read_sse(&a, &running, Some(ids[1]), |_| false);
    assert_eq!(rest, events[2..].to_vec(), "resuming inside the first attempt continues into the second");
    assert_eq!(a.wait_final(&queued)["state"], "succeeded");
    // No sandbox of the dead server is left running.
    let state = server.state().canonicalize().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let leftover: Vec<&str> = mounts.lines().filter(|m| m.contains(state.to_str().unwrap())).collect();
    assert!(leftover.is_empty(), "{leftover:?}");
}

/// A `kiln worker` process.
fn worker(server: &Server, token: &str, name: &str, state: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["worker", "--name", name, "--isolation", "gvisor", "--state-dir"])
        .arg(state)
        .env("KILN_SERVER", &server.url)
        .env("KILN_TOKEN", token)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(server.dir.path().join(format!("{name}.log"))).unwrap()))
        .spawn()
        .unwrap()
}

fn kill_9_of_a_remote_worker_moves_the_build_to_another() {
    let server = Server::start(&["--workers", "0", "--lease-timeout-ms", "5000"]);
    let a = server.tenant("alpha", "team");
    let token = server.admin(&["token", "create", "--worker"]);
    let wstate = server.dir.path().join("worker-state");
    let mut w1 = worker(&server, &token, "w1", &wstate);
    let long = "jobs:\n  long:\n    steps:\n      - uses: actions/checkout@v4\n      - run: |\n          cat hello.txt\n          echo first-half\n          sleep 4\n          echo second-half\n          mkdir dist && cp hello.txt dist/\n      - uses: actions/upload-artifact@v4\n        with:\n          name: site\n          path: dist\n";
    let src = server.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "hello from the source\n").unwrap();
    let wf = server.dir.path().join("ci.yml");
    std::fs::write(&wf, long).unwrap();
    let out = server.client(&a).arg("submit").arg(&wf).arg("--source").arg(&src).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    a.wait_log(&id, "first-half");
    assert_eq!(a.build(&id)["worker"], "remote:w1");
    let _ = w1.kill();
    let _ = w1.wait();
    // A second worker on the same host cleans up after the first and takes over.
    let mut w2 = worker(&server, &token, "w2", &wstate);
    let b = a.wait_final(&id);
    let _ = w2.kill();
    let _ = w2.wait();
    let w2_log = std::fs::read_to_string(server.dir.path().join("w2.log")).unwrap_or_default();
    assert_eq!(b["state"], "succeeded", "{b}\n{w2_log}\n{}", server.log());
    assert_eq!(b["retries"], 1, "{b}");
    assert_eq!(b["worker"], "remote:w2");
    let log = a.log_text(&id);
    assert!(log.contains("hello from the source") && log.contains("second-half"), "{log}");
    let (_, audit) = a.get("/v1/audit");
    assert!(audit.to_string().contains("lease expired"), "{audit}");
    // The artifact the remote worker stored is served by the server.
    let (_, arts) = a.get(&format!("/v1/builds/{id}/artifacts"));
    let art = arts["artifacts"][0]["id"].as_str().expect("an artifact").to_string();
    // Its provenance is signed with the deployment's key, not the worker's.
    let (status, env) = a.get(&format!("/v1/artifacts/{art}/provenance"));
    assert_eq!(status, 200, "{env}");
    let (_, key) = a.get("/v1/key");
    let keyids: Vec<&str> =
        env["signatures"].as_array().unwrap().iter().filter_map(|s| s["keyid"].as_str()).collect();
    assert_eq!(keyids, [key["keyid"].as_str().unwrap()], "{env}");
    let worker_key =
        Command::new(env!("CARGO_BIN_EXE_kiln")).args(["key", "--state-dir"]).arg(&wstate).output().unwrap();
    let worker_key = String::from_utf8_lossy(&worker_key.stdout).to_string();
    assert!(
        !worker_key.trim().is_empty() && !worker_key.contains(key["public_key"].as_str().unwrap()),
        "{worker_key}"
    );
    let out = server.dir.path().join("restored");
    let got = server.client(&a).args(["artifact", "get", &art, "--out"]).arg(&out).output().unwrap();
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert_eq!(std::fs::read_to_string(out.join("hello.txt")).unwrap(), "hello from the source\n");
}

fn metrics_and_openapi_are_served() {
    let server = Server::start(&["--workers", "1"]);
    let a = server.tenant("alpha", "team");
    let id = a.submit(QUICK, json!({}));
    a.wait_final(&id);
    let operator = server.api(&server.admin(&["token", "create", "--operator"]));
    let mut resp = agent()
        .get(&format!("{}/metrics", server.url))
        .header("Authorization", &format!("Bearer {}", operator.token))
        .call()
        .unwrap();
    let mut text = String::new();
    resp.body_mut().as_reader().read_to_string(&mut text).unwrap();
    for m in [
        "kiln_queue_wait_seconds_count{priority=\"normal\"} 1",
        "kiln_builds_finished_total{status=\"succeeded\",failure=\"\"} 1",
        "kiln_log_bytes_total",
    ] {
        assert!(text.contains(m), "{m} missing:\n{text}");
    }
    assert_eq!(a.get("/metrics").0, 403, "metrics are for operators");
    let (status, doc) = a.get("/openapi.json");
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/builds/{id}/logs"].is_object());
}

fn a_repository_url_is_built_with_no_configuration() {
    // A Node site in a git repository this test serves on 127.0.0.2.
    let origin = common::Origin::start();
    let files = [
        (
            "package.json",
            r#"{"name":"s","version":"1.0.0","scripts":{"build":"mkdir -p dist && echo served > dist/index.html"}}"#,
        ),
        (
            "package-lock.json",
            r#"{"name":"s","version":"1.0.0","lockfileVersion":3,"requires":true,"packages":{"":{"name":"s","version":"1.0.0"}}}"#,
        ),
    ];
    let url = common::served_repo(&origin, "site.git", &files);

    let server = Server::start(&["--workers", "1", "--allow-private", &origin.addr()]);
    let a = server.tenant("alpha", "team");
    // Dumb HTTP serves whole histories only: depth 0.
    let (status, v) = a.req("POST", "/v1/builds", Some(&json!({ "repository": url, "depth": 0 })), &[]);
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let b = a.wait_final(&id);
    assert_eq!(b["state"], "succeeded", "{b}\n{}", a.log_text(&id));
    let log = a.log_text(&id);
    assert!(log.contains("fetched http://"), "{log}");
    assert!(log.contains("package manager: npm"), "{log}");
    let (_, arts) = a.get(&format!("/v1/builds/{id}/artifacts"));
    let list = arts["artifacts"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{arts}");
    assert_eq!(list[0]["output_type"], "static", "{arts}");
    // Sources the operator did not open, other transports and both kinds of
    // request at once are refused before anything is queued.
    for body in [
        json!({ "repository": "http://example.com/x.git" }),
        json!({ "repository": "ext::sh -c id" }),
        json!({ "repository": "/etc" }),
        json!({ "repository": url, "workflow": "jobs: {}" }),
    ] {
        let (status, v) = a.req("POST", "/v1/builds", Some(&body), &[]);
        assert!(status == 422 || status == 400, "{body}: {status} {v}");
    }
}

/// Remote workers keep no cache of their own: a cache one fills is hit
/// on another (through the server, in the deployment's store), and only in
/// the scopes the build's own branch may read, whatever the worker asks.
fn a_cache_filled_on_one_remote_worker_is_hit_on_another() {
    let server = Server::start(&["--workers", "0"]);
    let a = server.tenant("alpha", "team");
    let token = server.admin(&["token", "create", "--worker"]);
    let wf = |key: &str| {
        format!(
            "jobs:\n  deps:\n    steps:\n      - uses: actions/cache@v4\n        with:\n          key: {key}\n          path: |\n            deps\n            ~/.cache/tool\n      - run: |\n          if [ -f deps/made-by ]; then echo \"restored: $(cat deps/made-by) $(cat ~/.cache/tool/v)\"; exit 0; fi\n          mkdir -p deps ~/.cache/tool\n          echo \"$KILN_WORKER_MARK\" > deps/made-by\n          echo tool-7 > ~/.cache/tool/v\n    env:\n      KILN_WORKER_MARK: first-build\n"
        )
    };
    let run_on = |name: &str, builds: &[(&str, Value)]| -> Vec<String> {
        let state = server.dir.path().join(format!("{name}-state"));
        let mut w = worker(&server, &token, name, &state);
        let ids: Vec<String> = builds
            .iter()
            .map(|(key, extra)| {
                let id = a.submit(&wf(key), extra.clone());
                let b = a.wait_final(&id);
                assert_eq!(b["state"], "succeeded", "{b}\n{}", a.log_text(&id));
                assert_eq!(b["worker"], format!("remote:{name}"), "{b}");
                id
            })
            .collect();
        let _ = w.kill();
        let _ = w.wait();
        ids
    };
    // Worker 1 fills two caches: one on main, one on a feature branch.
    let filled = run_on("w1", &[("deps-1", json!({})), ("feature-1", json!({"ref": "refs/heads/feature"}))]);
    for id in &filled {
        let log = a.log_text(id);
        assert!(log.contains("cache miss") && log.contains("cache saved"), "{log}");
    }
    // Worker 2, with a state directory of its own, hits main's cache; the
    // feature branch's entry stays invisible to a build on main.
    let read = run_on("w2", &[("deps-1", json!({})), ("feature-1", json!({}))]);
    let hit = a.log_text(&read[0]);
    assert!(hit.contains("cache hit: deps-1"), "{hit}");
    assert!(hit.contains("restored: first-build tool-7"), "{hit}");
    let other = a.log_text(&read[1]);
    assert!(other.contains("cache miss: feature-1") && !other.contains("restored: first-build"), "{other}");
    // The worker's own store holds no cache entry: the server's is the one.
    let entries = walk_names(&server.dir.path().join("w2-state"));
    assert!(!entries.iter().any(|p| p.contains("/cache/")), "{entries:?}");
}

/// A tmpfs of `size` mounted on `dir` for the test's life.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "kiln-test-disk"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs needs root: run the tests as root");
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A worker whose disk is full cannot run a build: that is the host's
/// failure, not the build's. The attempt ends as an infrastructure failure
/// and the build is retried on another worker, where it succeeds.
fn a_worker_whose_disk_is_full_fails_the_attempt_not_the_build() {
    let server = Server::start(&["--workers", "0"]);
    let a = server.tenant("alpha", "team");
    let token = server.admin(&["token", "create", "--worker"]);
    let full = server.dir.path().join("full-state");
    let _disk = SmallDisk::mount(&full, "48m");
    // The worker starts (its keys and databases fit), then its disk fills.
    let mut w1 = worker(&server, &token, "w1", &full);
    poll("w1's state", || full.join("state.db").exists().then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    let filler = full.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=100"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    let src = server.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.txt"), "x".repeat(64 << 10)).unwrap();
    let wf = server.dir.path().join("ci.yml");
    std::fs::write(
        &wf,
        "jobs:\n  build:\n    steps:\n      - uses: actions/checkout@v4\n      - run: wc -c data.txt && echo built\n",
    )
    .unwrap();
    let out = server.client(&a).arg("submit").arg(&wf).arg("--source").arg(&src).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // w1 takes it and fails it as an infrastructure failure...
    let failures = |b: &Value| -> Vec<String> {
        b["transitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["event"] == "infra-failure")
            .map(|t| t["detail"].as_str().unwrap_or("").to_string())
            .collect()
    };
    poll("the first attempt to fail", || (!failures(&a.build(&id)).is_empty()).then_some(()));
    // ...and, still running and asking for work, does not take it back:
    // the retry waits for another worker.
    let mut w2 = worker(&server, &token, "w2", &server.dir.path().join("w2-state"));
    let b = a.wait_final(&id);
    for w in [&mut w1, &mut w2] {
        let _ = w.kill();
        let _ = w.wait();
    }
    let w1_log = std::fs::read_to_string(server.dir.path().join("w1.log")).unwrap_or_default();
    assert_eq!(b["state"], "succeeded", "{b}\n{w1_log}\n{}", server.log());
    assert_eq!(b["worker"], "remote:w2", "{b}");
    assert_eq!(b["retries"], 1, "{b}");
    let attempts = b["attempts"].as_array().cloned().unwrap_or_default();
    assert_eq!(attempts.first().map(|a| a["worker"].clone()), Some(json!("remote:w1")), "{b}");
    let why = failures(&b);
    assert!(why.len() == 1 && why[0].contains("No space left on device"), "the failure says why: {why:?}");
    assert!(a.log_text(&id).contains("built"));
}

/// Every path under `dir`.
fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(p.clone());
            }
            out.push(p.display().to_string());
        }
    }
    out
}

fn usage_records_count_cache_bytes_read_and_written() {
    let server = Server::start(&["--workers", "1"]);
    let a = server.tenant("alpha", "team");
    let wf = "jobs:\n  deps:\n    steps:\n      - uses: actions/cache@v4\n        with:\n          key: deps-1\n          path: deps\n      - run: mkdir -p deps && head -c 5000 /dev/zero > deps/blob\n";
    let first = a.submit(wf, json!({}));
    assert_eq!(a.wait_final(&first)["state"], "succeeded");
    let second = a.submit(wf, json!({}));
    assert_eq!(a.wait_final(&second)["state"], "succeeded");
    assert!(a.log_text(&second).contains("cache hit: deps-1"), "{}", a.log_text(&second));
    let usage = poll("both usage records", || {
        let (_, u) = a.get("/v1/usage");
        let rows = u["usage"].as_array().cloned().unwrap_or_default();
        (rows.len() >= 2).then_some(rows)
    });
    let row = |id: &str| {
        usage.iter().find(|u| u["build"] == id).cloned().unwrap_or_else(|| panic!("no usage for {id}"))
    };
    assert_eq!(row(&first)["cache_write_bytes"], 5000, "{usage:?}");
    assert_eq!(row(&first)["cache_read_bytes"], 0, "{usage:?}");
    assert_eq!(row(&second)["cache_read_bytes"], 5000, "{usage:?}");
}

fn a_succeeded_build_is_handed_to_the_deployment_webhook() {
    let (hook, seen) = common::receiver(1);
    let server = Server::start(&["--workers", "1"]);
    let a = server.tenant("alpha", "team");
    let wf = "jobs:\n  site:\n    steps:\n      - run: mkdir -p dist && echo hi > dist/index.html\n      - uses: actions/upload-artifact@v4\n        with: { name: site, path: dist }\n";
    let id = a.submit(wf, json!({ "notify": hook }));
    assert_eq!(a.wait_final(&id)["state"], "succeeded");
    let b = poll("the delivery to be recorded", || {
        let b = a.build(&id);
        (b["notify"]["delivered"] == true).then_some(b)
    });
    assert_eq!(b["notify"]["attempts"].as_array().map(|x| x.len()), Some(2), "one 503, then 200: {b}");
    let seen = seen.lock().unwrap();
    let (head, body) = seen.last().unwrap();
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["build"], id.as_str());
    assert!(payload["artifact"]["id"].as_str().unwrap_or("").starts_with("sha256:"), "{payload}");
    assert!(payload["provenance"]["payload"].is_string(), "{payload}");
    let key = common::hex_decode(&std::fs::read_to_string(server.state().join("notify.key")).unwrap());
    let header = |name: &str| common::header(head, name);
    assert!(kiln_server::notify::verify_signature(
        &key,
        &header("x-kiln-timestamp"),
        body,
        &header("x-kiln-signature")
    ));
    let (_, audit) = a.get("/v1/audit");
    assert!(audit.to_string().contains("notify delivered"), "{audit}");
    // A notify that is not an http(s) URL is refused at submit.
    let (status, _) =
        a.req("POST", "/v1/builds", Some(&json!({ "workflow": wf, "notify": "file:///etc/passwd" })), &[]);
    assert_eq!(status, 400);
}

/// `kiln serve --store s3://...`: the server's builds keep their sources,
/// artifacts and caches in the bucket (moto's S3 server on loopback), and
/// an artifact is served back from it, verified.
#[test]
fn the_server_keeps_its_store_in_s3() {
    let bucket = common::objstore::Backend::s3();
    let server = Server::start_with_env(&["--store", &bucket.url, "--workers", "1"], &bucket.env);
    let api = server.tenant("acme", "team");
    let id = api.submit(
        "jobs:\n  site:\n    steps:\n      - run: mkdir -p dist && echo hello > dist/index.html\n      - uses: actions/upload-artifact@v4\n        with: { name: site, path: dist }\n",
        json!({}),
    );
    let b = api.wait_final(&id);
    assert_eq!(b["state"], "succeeded", "{b}\n{}", server.log());
    let (status, arts) = api.get(&format!("/v1/builds/{id}/artifacts"));
    assert_eq!(status, 200, "{arts}");
    let art =
        arts["artifacts"][0]["id"].as_str().unwrap_or_else(|| panic!("an artifact: {arts}")).to_string();
    let url = format!("{}/v1/artifacts/{art}", api.url);
    let mut resp =
        agent().get(&url).header("Authorization", &format!("Bearer {}", api.token)).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let tar = resp.body_mut().with_config().limit(1 << 20).read_to_vec().unwrap();
    assert!(tar.windows(6).any(|w| w == b"hello\n"), "the artifact's file is in the tar");
    // The bytes are in the bucket, under the tenant; nothing under the state dir.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let blobs = rt.block_on(bucket.store().tenant("acme").unwrap().list_blobs()).unwrap();
    assert!(!blobs.is_empty(), "the tenant's blobs are in the bucket");
    assert!(!server.state().join("store").exists(), "a local store was made next to the bucket");
}

/// `kiln admin token revoke`: a token stops working at its next request,
/// the other tokens go on, and the revocation is in the audit log.
fn a_revoked_token_is_refused_at_its_next_request() {
    let server = Server::start(&["--workers", "0"]);
    let acme = server.tenant("acme", "free");
    let beta = server.tenant("beta", "free");
    assert_eq!(acme.get("/v1/builds").0, 200);
    let list = server.admin(&["token", "list", "--json"]);
    let rows: Vec<Value> = list.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        rows.iter().all(|r| !list.contains(&acme.token) && r["id"].as_str().unwrap().len() == 16),
        "{list}"
    );
    let id = rows
        .iter()
        .find(|r| r["principal"]["tenant"] == "acme")
        .and_then(|r| r["id"].as_str())
        .expect("acme's token is listed")
        .to_string();
    let out = server.kiln().args(["admin", "token", "revoke", "zz"]).output().unwrap();
    assert!(!out.status.success(), "a malformed id is refused");
    assert!(server.admin(&["token", "revoke", &id]).contains("revoked"));
    let (status, body) = acme.get("/v1/builds");
    assert_eq!(status, 401, "{body}");
    assert_eq!(beta.get("/v1/builds").0, 200, "other tokens go on");
    let out = server.kiln().args(["admin", "token", "revoke", &id]).output().unwrap();
    assert!(!out.status.success(), "revoking twice says there is no such token");
}

/// A CA and a server certificate for 127.0.0.1 it signed (openssl, P-256).
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let sh = |script: &str| {
        let out = Command::new("bash").arg("-ec").arg(script).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
        -days 2 -subj /CN=kiln-test-ca 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
        -subj /CN=127.0.0.1 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\nextendedKeyUsage=serverAuth\\n' > ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
        -extfile ext 2>/dev/null");
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// `kiln serve --tls-cert/--tls-key`: a remote worker pinned to the CA
/// (`--ca`) leases and runs a build over HTTPS and a client (`KILN_CA`)
/// follows it; a client that does not trust the certificate is refused,
/// and a worker is refused plain HTTP to an address off this host.
#[test]
fn workers_and_clients_reach_the_server_over_tls() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(pki.path());
    let server = Server::start(&[
        "--workers",
        "0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);
    let acme = server.tenant("acme", "team");
    let token = server.admin(&["token", "create", "--worker"]);

    // Not trusted: the client says why and never sends its token.
    let out = server.client(&acme).args(["status", "nothing"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"), "{err}");

    // Plain HTTP off this host: refused before any connection.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["worker", "--server", "http://192.0.2.10:8420", "--token", &token])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("in the clear"), "{err}");

    // Pinned: a worker runs the build, a client follows it.
    let wstate = server.dir.path().join("worker-state");
    let mut w = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["worker", "--name", "tls", "--isolation", "container", "--state-dir"])
        .arg(&wstate)
        .arg("--ca")
        .arg(&ca)
        .env("KILN_SERVER", &server.url)
        .env("KILN_TOKEN", &token)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(server.dir.path().join("tls-worker.log")).unwrap()))
        .spawn()
        .unwrap();
    let wf = server.dir.path().join("ci.yml");
    std::fs::write(&wf, "jobs:\n  hello:\n    steps:\n      - run: echo over-tls\n").unwrap();
    let out = server.client(&acme).env("KILN_CA", &ca).arg("submit").arg(&wf).arg("--wait").output().unwrap();
    let _ = w.kill();
    let _ = w.wait();
    let worker_log = std::fs::read_to_string(server.dir.path().join("tls-worker.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}{}\n{worker_log}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    // The step's own output line, not its name.
    assert!(said.lines().any(|l| l.trim_end().ends_with("] over-tls")), "{said}");
}

/// PostgreSQL restarts while a build runs: the server reconnects, the build
/// finishes and is recorded, and a build submitted after it runs too.
#[test]
fn a_postgres_restart_mid_build_loses_nothing() {
    kiln_server::pgcluster::TEST_DATABASE.with(|d| d.set(kiln_server::pgcluster::TestDatabase::Postgres));
    let server = Server::start(&["--workers", "1"]);
    let a = server.tenant("alpha", "team");
    let id =
        a.submit("jobs:\n  slow:\n    steps:\n      - run: echo before; sleep 6; echo after\n", json!({}));
    a.wait_log(&id, "before");
    let cluster = server._cluster.as_ref().unwrap();
    cluster.stop().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    cluster.restart().unwrap();
    let b = a.wait_final(&id);
    assert_eq!(b["state"], "succeeded", "{b}\n{}", server.log());
    assert!(a.log_text(&id).contains("] after"), "{}", a.log_text(&id));
    let (_, usage) = a.get("/v1/usage");
    assert_eq!(usage["usage"].as_array().map(|u| u.len()), Some(1), "{usage}");
    let next = a.submit(QUICK, json!({}));
    assert_eq!(a.wait_final(&next)["state"], "succeeded", "{}", server.log());
}

/// Two `kiln serve` replicas on one PostgreSQL database and one store, the
/// second given the first's keys. A build submitted through one and run by
/// the other's worker streams through either, and a stream broken on one
/// resumes on the other without losing or repeating a line. With the first
/// replica killed, a remote worker on the second runs a build with a secret
/// stored through the first; the first, started again, serves its log and
/// records.
#[test]
fn replicas_answer_for_each_others_builds_and_logs() {
    use kiln_server::pgcluster::{TestDatabase, TEST_DATABASE};
    TEST_DATABASE.with(|d| d.set(TestDatabase::Postgres));
    let store = tempfile::Builder::new().prefix("kiln-replicas-store-").tempdir().unwrap();
    let store_url = format!("file://{}", store.path().display());
    let mut a = Server::start(&["--workers", "1", "--store", &store_url]);
    // The second replica: the first's database (no cluster of its own) and keys.
    TEST_DATABASE.with(|d| d.set(TestDatabase::Sqlite));
    let mut b = Server::unstarted(&["--workers", "0", "--store", &store_url], &a.env);
    kiln_server::replicate::copy_shared_keys(&a.state(), &b.state()).unwrap();
    b.spawn();
    let ta = a.tenant("alpha", "team");
    let tb = b.api(&ta.token);

    // Submitted through b, run by a's in-process worker.
    let wf = "jobs:\n  count:\n    steps:\n      - run: |\n          for i in $(seq 1 12); do echo \"line-$i\"; sleep 0.5; done\n";
    let id = tb.submit(wf, json!({}));
    let (first, ended) = read_sse(&tb, &id, None, |got| got.iter().any(|(_, t)| t == "line-3"));
    assert!(!ended, "the stream through b is live");
    let last = first.last().unwrap().0;
    let (rest, ended) = read_sse(&ta, &id, Some(last), |_| false);
    assert!(ended, "the stream resumed on a ends with the build");
    let all: Vec<(i64, String)> = first.into_iter().chain(rest).collect();
    let ids: Vec<i64> = all.iter().map(|(i, _)| *i).collect();
    let expected: Vec<i64> = (ids[0]..ids[0] + ids.len() as i64).collect();
    assert_eq!(ids, expected, "no line lost or repeated across replicas");
    let lines: Vec<&str> = all.iter().map(|(_, t)| t.as_str()).filter(|t| t.starts_with("line-")).collect();
    assert_eq!(lines, (1..=12).map(|i| format!("line-{i}")).collect::<Vec<_>>());
    let on_b = tb.wait_final(&id);
    assert_eq!(on_b["state"], "succeeded", "{on_b}");
    let steps = poll("b to have the build's records", || {
        let jobs = tb.build(&id)["jobs"].clone();
        (jobs[0]["status"] == "succeeded").then_some(jobs)
    });
    assert_eq!(steps, ta.build(&id)["jobs"], "both replicas hold the same records");

    // a is killed; a remote worker talks to b only.
    a.kill9();
    let (status, v) = tb.req(
        "PUT",
        "/v1/secrets/DEPLOY_TOKEN",
        Some(&json!({"value": "replica-secret-1", "phases": ["build"]})),
        &[],
    );
    assert_eq!(status, 200, "{v}");
    let token = b.admin(&["token", "create", "--worker"]);
    let wstate = b.dir.path().join("worker-state");
    let mut w = worker(&b, &token, "w1", &wstate);
    let wf2 = "kiln:\n  secrets:\n    DEPLOY_TOKEN: { phases: [build] }\njobs:\n  remote:\n    steps:\n      - env:\n          T: ${{ secrets.DEPLOY_TOKEN }}\n        run: |\n          test \"${#T}:${T:0:8}\" = 16:replica- && echo secret-ok\n          for i in $(seq 1 4); do echo \"remote-$i\"; sleep 0.5; done\n";
    let id2 = tb.submit(wf2, json!({}));
    let deadline = Instant::now() + DEADLINE;
    while !tb.log_text(&id2).contains("] remote-1") {
        assert!(
            Instant::now() < deadline,
            "no `remote-1` in the log of {id2}: {}\n--- log:\n{}\n--- b:\n{}\n--- worker:\n{}",
            tb.build(&id2)["jobs"],
            tb.log_text(&id2),
            b.log(),
            std::fs::read_to_string(b.dir.path().join("w1.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // a again, without workers: it follows what b stored meanwhile.
    a.extra = ["--workers", "0", "--store", &store_url].iter().map(|s| s.to_string()).collect();
    a.spawn();
    let ta = a.api(&ta.token);
    let (got, ended) = read_sse(&ta, &id2, None, |_| false);
    let _ = w.kill();
    let _ = w.wait();
    assert!(ended, "{}", a.log());
    let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
    assert!(texts.contains(&"secret-ok"), "b opened the secret stored through a: {texts:?}");
    assert!(texts.contains(&"remote-4"), "{texts:?}");
    let done = ta.wait_final(&id2);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["worker"], "remote:w1");
    let jobs = poll("a to have the remote build's records", || {
        let jobs = ta.build(&id2)["jobs"].clone();
        (jobs[0]["status"] == "succeeded").then_some(jobs)
    });
    assert_eq!(jobs, tb.build(&id2)["jobs"]);
}

/// The replica delivering a build's deployment webhook dies between two
/// attempts (the receiver answered 503): the other replica takes the
/// delivery over once its lease runs out, with the same idempotency key
/// and the deployment's signature, and records it once.
#[test]
fn a_webhook_is_delivered_by_the_other_replica_when_its_deliverer_dies() {
    use kiln_server::pgcluster::{TestDatabase, TEST_DATABASE};
    let (hook, seen) = common::receiver(2);
    TEST_DATABASE.with(|d| d.set(TestDatabase::Postgres));
    let store = tempfile::Builder::new().prefix("kiln-replicas-store-").tempdir().unwrap();
    let store_url = format!("file://{}", store.path().display());
    let lease = ["--lease-timeout-ms", "2000"];
    let mut a = Server::start(&[&["--workers", "1", "--store", &store_url][..], &lease[..]].concat());
    TEST_DATABASE.with(|d| d.set(TestDatabase::Sqlite));
    let mut b =
        Server::unstarted(&[&["--workers", "0", "--store", &store_url][..], &lease[..]].concat(), &a.env);
    kiln_server::replicate::copy_shared_keys(&a.state(), &b.state()).unwrap();
    b.spawn();
    let ta = a.tenant("alpha", "team");
    let tb = b.api(&ta.token);
    let wf = "jobs:\n  site:\n    steps:\n      - run: mkdir -p dist && echo hi > dist/index.html\n      - uses: actions/upload-artifact@v4\n        with: { name: site, path: dist }\n";
    let id = ta.submit(wf, json!({ "notify": hook }));
    assert_eq!(ta.wait_final(&id)["state"], "succeeded");
    // a sent the first attempt (503) and waits to send the next: kill it.
    poll("a's first attempt", || (!seen.lock().unwrap().is_empty()).then_some(()));
    a.kill9();
    let after_kill = seen.lock().unwrap().len();
    let done = poll("b to deliver and record it", || {
        let v = tb.build(&id);
        (v["notify"]["delivered"] == true).then_some(v)
    });
    let seen = seen.lock().unwrap();
    assert!(
        seen.len() >= 3 && after_kill < seen.len(),
        "{} requests, {after_kill} before the kill",
        seen.len()
    );
    let header = common::header;
    let keys: Vec<String> = seen.iter().map(|(h, _)| header(h, "idempotency-key")).collect();
    assert!(keys.iter().all(|k| !k.is_empty() && *k == keys[0]), "one idempotency key: {keys:?}");
    let key = common::hex_decode(&std::fs::read_to_string(b.state().join("notify.key")).unwrap());
    let (head, body) = seen.last().unwrap();
    assert!(kiln_server::notify::verify_signature(
        &key,
        &header(head, "x-kiln-timestamp"),
        body,
        &header(head, "x-kiln-signature")
    ));
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["build"], id.as_str());
    // b's record holds only its own attempts: a's were never recorded.
    let attempts = done["notify"]["attempts"].as_array().cloned().unwrap_or_default();
    assert_eq!(attempts.last().map(|a| a["status"].clone()), Some(json!(200)), "{done}");
    let (_, audit) = tb.get("/v1/audit");
    let delivered =
        audit["events"].as_array().into_iter().flatten().filter(|e| e["kind"] == "notify delivered");
    assert_eq!(delivered.count(), 1, "{audit}");
    drop(b);
}
