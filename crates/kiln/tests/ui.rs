//! The web UI in a real browser: the real `kiln serve` binary running real
//! builds in gVisor sandboxes, and Debian's headless Chromium driven
//! through WebDriver (`chromedriver`, started here on a free loopback
//! port). Every page visited is kept as a screenshot under
//! `target/ui-screenshots/`.
//!
//! Every wait polls with a generous deadline; nothing asserts how long
//! something took. Without `chromium` and `chromedriver` these tests fail
//! with what to install: they never skip.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(240);

// ---- the server ----

/// A `kiln serve` process with its own state dir.
struct Server {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        common::require_sandboxes();
        let dir = tempfile::Builder::new().prefix("kiln-ui-test-").tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .env("KILN_STATE_DIR", dir.path().join("state"))
            .env("NO_COLOR", "1")
            .env_remove("KILN_SERVER")
            .env_remove("KILN_DATABASE")
            .args(["serve", "--listen", "127.0.0.1:0", "--isolation", "gvisor", "--workers", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("serve.log")).unwrap()))
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("kiln serve: listening on ").map(str::to_string);
        let Some(url) = url else {
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
            panic!("kiln serve did not start: {line:?}\n{log}");
        };
        Server { child, url, dir }
    }

    fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .env("KILN_STATE_DIR", self.dir.path().join("state"))
            .env_remove("KILN_DATABASE")
            .arg("admin")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "kiln admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A tenant and a token for it.
    fn tenant(&self, name: &str) -> String {
        self.admin(&["tenant", "create", name, "--plan", "team"]);
        self.admin(&["token", "create", "--tenant", name])
    }

    fn api(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("{}{path}", self.url);
        let auth = format!("Bearer {token}");
        let mut resp = match method {
            "GET" => agent.get(&url).header("Authorization", &auth).call(),
            "PUT" => agent.put(&url).header("Authorization", &auth).send_json(body.unwrap_or(json!({}))),
            _ => agent.post(&url).header("Authorization", &auth).send_json(body.unwrap_or(json!({}))),
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn submit(&self, token: &str, workflow: &str) -> String {
        let (status, v) = self.api(token, "POST", "/v1/builds", Some(json!({ "workflow": workflow })));
        assert_eq!(status, 201, "submit: {v}");
        v["id"].as_str().unwrap().to_string()
    }

    fn build(&self, token: &str, id: &str) -> Value {
        self.api(token, "GET", &format!("/v1/builds/{id}"), None).1
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first, so the server stops its sandboxes' builds.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the browser ----

/// `chromedriver` on a free loopback port, killed when dropped, and a
/// fresh Chromium profile and download directory.
struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
    downloads: tempfile::TempDir,
}

fn require_browser() {
    for (bin, package) in [("chromium", "chromium"), ("chromedriver", "chromium-driver")] {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {bin}")).output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "`{bin}` (Debian package {package}) is not installed: the web UI's tests drive a real browser. Run scripts/install.sh \
             (or `apt-get install -y chromium chromium-driver`)"
        );
    }
}

impl Driver {
    fn start() -> Driver {
        require_browser();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let d = Driver {
            child,
            port,
            profile: tempfile::Builder::new().prefix("kiln-ui-chromium-").tempdir().unwrap(),
            downloads: tempfile::Builder::new().prefix("kiln-ui-downloads-").tempdir().unwrap(),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        poll_sync("chromedriver to listen", || {
            agent.get(&format!("http://127.0.0.1:{port}/status")).call().ok().map(drop)
        });
        d
    }

    async fn client(&self) -> Client {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", self.profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": args,
                "prefs": {
                    "download.default_directory": self.downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let caps = caps.as_object().unwrap().clone();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session with headless Chromium")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium outlives chromedriver when a test panicked before
        // ending its session: its processes are the ones started with this
        // driver's own profile directory.
        let needle = format!("--user-data-dir={}", self.profile.path().display());
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).split('\0').any(|a| a == needle) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

fn poll_sync<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `f` (a check in the browser) until it yields a value.
async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn screenshots() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
}

async fn text_of(c: &Client, css: &str) -> String {
    js(c, &format!("var e = document.querySelector({css:?}); return e ? e.textContent : null;"))
        .await
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Signs in through the form, as a person would.
async fn sign_in(c: &Client, url: &str, token: &str) {
    sign_in_to(c, url, token, "/ui/builds").await
}

/// Signs in and waits for the page a sign-in leads to (`/ui/queue` for an
/// operator of no tenant).
async fn sign_in_to(c: &Client, url: &str, token: &str, landing: &str) {
    c.goto(&format!("{url}/ui/login")).await.unwrap();
    shot(c, "login").await;
    c.find(Locator::Id("token")).await.unwrap().send_keys(token).await.unwrap();
    c.find(Locator::Css("form.login button[type=submit]")).await.unwrap().click().await.unwrap();
    poll("the first page after signing in", || async {
        c.current_url().await.ok().filter(|u| u.path() == landing).map(drop)
    })
    .await;
    let cookie = js(c, "return document.cookie").await;
    assert_eq!(cookie, json!(""), "the token cookie is HttpOnly: no script can read it");
}

/// `job=state` of every node of the DAG on the page.
async fn dag(c: &Client) -> Vec<(String, String)> {
    let v = js(
        c,
        "return Array.from(document.querySelectorAll('svg.dag a.node')).map(n => [n.dataset.job, n.dataset.state]);",
    )
    .await;
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|p| (p[0].as_str().unwrap_or("").to_string(), p[1].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The ids of the `line` events of a finished build's UI log stream
/// (read to its end), optionally resuming with `Last-Event-ID`.
fn sse_ids(url: &str, token: &str, path: &str, last: Option<u64>) -> Vec<u64> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut req = agent.get(&format!("{url}{path}")).header("Authorization", &format!("Bearer {token}"));
    if let Some(l) = last {
        req = req.header("Last-Event-ID", &l.to_string());
    }
    let mut resp = req.call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.body_mut().read_to_string().unwrap();
    let mut ids = Vec::new();
    let mut id: Option<u64> = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if line.starts_with("event:") && line.contains("line") {
            ids.extend(id.take());
        }
    }
    assert!(
        text.contains("event: end") || text.contains("event:end"),
        "the stream ends with the build: {text}"
    );
    ids
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

// ---- the tests ----

/// Jobs in a chain, the middle one a matrix of two legs that each print a
/// line, wait, and print another.
const CHAIN: &str = r#"jobs:
  build:
    steps:
      - run: |
          echo "compiling"
          printf '\033[32mbuild ok\033[0m\n'
  test:
    needs: build
    strategy:
      matrix:
        shard: [1, 2]
    steps:
      - run: |
          echo "test-started"
          sleep 20
          echo "live-line-after-the-wait"
  package:
    needs: test
    steps:
      - run: mkdir -p dist && echo alpha-artifact > dist/out.txt
      - uses: actions/upload-artifact@v4
        with:
          name: site
          path: dist
"#;

#[test]
fn a_running_build_is_watched_live_from_sign_in_to_its_artifact() {
    require_browser();
    let server = Server::start();
    let token = server.tenant("alpha");
    let driver = Driver::start();
    rt().block_on(async {
        let c = driver.client().await;
        sign_in(&c, &server.url, &token).await;
        let id = server.submit(&token, CHAIN);

        // The list shows it (live: it was submitted after the page loaded).
        poll("the new build in the list", || async {
            text_of(&c, "#live").await.contains(&id).then_some(())
        })
        .await;
        shot(&c, "builds").await;

        // Its DAG, live: not all green at first, then green on the same
        // page load (a global set now survives: no reload).
        c.find(Locator::Css(&format!("a[href='/ui/builds/{id}']"))).await.unwrap().click().await.unwrap();
        let first = poll("the DAG", || async { Some(dag(&c).await).filter(|d| d.len() == 4) }).await;
        assert!(first.iter().any(|(_, s)| s != "succeeded"), "not green before it ran: {first:?}");
        js(&c, "window.kilnSamePage = true; return null;").await;
        // A keyboard user on a job's node keeps the focus through updates.
        js(&c, "document.querySelector(\"svg.dag a.node[data-job='package']\").focus(); return null;").await;
        poll("the build job to turn green", || async {
            dag(&c).await.iter().any(|(j, s)| j == "build" && s == "succeeded").then_some(())
        })
        .await;
        assert_eq!(js(&c, "return window.kilnSamePage === true").await, json!(true));
        let focused = js(&c, "return document.activeElement.dataset ? document.activeElement.dataset.job : null").await;
        assert_eq!(focused, json!("package"), "the focus survived the live update");
        let labels = text_of(&c, "svg.dag").await;
        assert!(labels.contains("succeeded"), "the state is a word too: {labels}");
        shot(&c, "build-running").await;

        // The log: a line printed after the page loaded appears in it.
        c.find(Locator::Css("nav.tabs a[href$='/logs']")).await.unwrap().click().await.unwrap();
        poll("the test job's first line", || async {
            text_of(&c, "#log").await.contains("test-started").then_some(())
        })
        .await;
        let initial = text_of(&c, "#log").await;
        assert!(
            !initial.contains("live-line-after-the-wait"),
            "the log page loaded after the step's 20 s wait ended: this run cannot show a line arriving live"
        );
        js(&c, "window.kilnSamePage = true; return null;").await;
        poll("a live line in the log", || async {
            text_of(&c, "#log").await.contains("live-line-after-the-wait").then_some(())
        })
        .await;
        assert_eq!(js(&c, "return window.kilnSamePage === true").await, json!(true));
        // Colours as classes, lines with anchors, phase markers.
        assert_eq!(text_of(&c, "#log span.fg2").await, "build ok", "ANSI green is a class");
        let anchors =
            js(&c, "return document.querySelectorAll('#log .line a.ln[href^=\"#L\"]').length").await;
        assert!(anchors.as_u64().unwrap_or(0) >= 3, "{anchors}");
        assert!(text_of(&c, "#log .marker").await.contains("build"), "a marker names the job and step");
        // Search hides what does not match.
        c.find(Locator::Id("log-search")).await.unwrap().send_keys("live-line").await.unwrap();
        let shown = js(
            &c,
            "return Array.from(document.querySelectorAll('#log .line')).filter(l => l.getClientRects().length > 0).length",
        )
        .await;
        let matching = js(&c, "return Array.from(document.querySelectorAll('#log .line')).filter(l => l.textContent.includes('live-line')).length").await;
        let total = js(&c, "return document.querySelectorAll('#log .line').length").await;
        assert_eq!(shown, matching, "the matching lines are displayed, the others are not");
        assert!(shown.as_u64().unwrap_or(0) >= 1 && shown.as_u64() < total.as_u64(), "{shown} of {total}");
        shot(&c, "log-search").await;
        c.find(Locator::Id("log-search")).await.unwrap().clear().await.unwrap();
        js(&c, "document.getElementById('log-search').dispatchEvent(new Event('input')); return null;").await;
        shot(&c, "log").await;
        poll("the end of the log", || async {
            text_of(&c, "#log-status").await.contains("succeeded").then_some(())
        })
        .await;

        // Back to the build: every job green.
        c.goto(&format!("{}/ui/builds/{id}", server.url)).await.unwrap();
        poll("every job green", || async {
            let d = dag(&c).await;
            (d.len() == 4 && d.iter().all(|(_, s)| s == "succeeded")).then_some(())
        })
        .await;
        assert!(text_of(&c, "#build-state").await.contains("succeeded"));
        let boxes = js(&c, "return document.querySelectorAll('svg.dag rect.group').length").await;
        assert_eq!(boxes, json!(1), "the matrix's legs are drawn together");
        shot(&c, "build").await;

        // At 200 % zoom (half the width in CSS pixels) the page still fits
        // its window: text wraps, wide tables and the graph scroll inside
        // their own boxes.
        c.set_window_size(640, 500).await.unwrap();
        c.refresh().await.unwrap();
        // (What sticks out, for the message: elements beyond the window's
        // right edge that no scrolling box of their own holds.)
        let fits = js(&c, "return document.documentElement.scrollWidth <= window.innerWidth + 1").await;
        let wide = js(
            &c,
            "return [document.documentElement.scrollWidth, window.innerWidth].concat(\
               Array.from(document.querySelectorAll('body *'))\
                 .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)\
                 .filter(e => !(e.parentElement && e.parentElement.closest('.scroll')))\
                 .map(e => e.tagName + '.' + e.className).slice(0, 10));",
        )
        .await;
        assert_eq!(fits, json!(true), "no page-wide horizontal scrolling at 200 % zoom: {wide}");
        shot(&c, "build-zoom-200").await;
        c.set_window_size(1280, 1000).await.unwrap();
        // Keyboard: the first Tab reaches the skip link, then the navigation.
        c.refresh().await.unwrap();
        js(&c, "document.activeElement.blur(); return null;").await;
        c.find(Locator::Css("body")).await.unwrap().send_keys("\u{E004}").await.unwrap();
        let focused = js(&c, "return document.activeElement.className").await;
        assert_eq!(focused, json!("skip"), "Tab first reaches the skip link");

        // The artifact: listed, downloadable, with its provenance verified.
        c.goto(&format!("{}/ui/builds/{id}/artifacts", server.url)).await.unwrap();
        shot(&c, "artifacts").await;
        c.find(Locator::Css("tr[data-artifact='site'] a.download")).await.unwrap().click().await.unwrap();
        let tar = poll("the downloaded artifact", || async {
            std::fs::read_dir(driver.downloads.path())
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "tar"))
                .and_then(|p| std::fs::read(p).ok())
                .filter(|b| !b.is_empty())
        })
        .await;
        assert!(tar.windows(14).any(|w| w == b"alpha-artifact"), "the tar holds the file");
        c.find(Locator::Css("tr[data-artifact='site'] a[href^='/ui/artifacts/']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        poll("the provenance verdict", || async {
            text_of(&c, ".verdict").await.contains("Signature valid").then_some(())
        })
        .await;
        assert!(text_of(&c, "#cmd-verify").await.starts_with("kiln verify sha256:"));
        shot(&c, "artifact").await;

        // Usage, with its chart, once the build is counted.
        c.goto(&format!("{}/ui/usage", server.url)).await.unwrap();
        assert!(c.find(Locator::Css("svg.chart")).await.is_ok(), "{}", server.log());
        shot(&c, "usage").await;
        c.close().await.unwrap();
    });
}

/// A step whose name and output are HTML, a failure, a quarantined
/// artifact, a secret handed out and egress refused.
const HOSTILE: &str = r#"kiln:
  secrets:
    DEPLOY_TOKEN: { phases: [build] }
jobs:
  bad:
    steps:
      - name: "<script>document.title='pwned'</script>"
        run: |
          echo '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
          printf '\033[31mred-failure\033[0m\n'
          exit 3
  site:
    steps:
      - run: mkdir -p dist && cp /bin/true dist/tool && echo '<p>hi</p>' > dist/index.html
      - uses: actions/upload-artifact@v4
        with: { name: site, path: dist }
  net:
    kiln:
      network: { allow: ["registry.npmjs.org"] }
    steps:
      - env:
          DEPLOY_TOKEN: ${{ secrets.DEPLOY_TOKEN }}
        run: |
          echo "token is $DEPLOY_TOKEN"
          curl -fsS --max-time 10 -o /dev/null http://example.com/ || echo "refused as expected"
"#;

/// The value of the secret the hostile build is handed.
const SECRET: &str = "s3cr3t-value-of-alpha";

#[test]
fn a_failure_is_followed_to_its_step_hostile_names_stay_text_and_other_tenants_see_nothing() {
    require_browser();
    let server = Server::start();
    let alpha = server.tenant("alpha");
    let beta = server.tenant("beta");
    let (status, v) = server.api(
        &alpha,
        "PUT",
        "/v1/secrets/DEPLOY_TOKEN",
        Some(json!({"value": SECRET, "phases": ["build"]})),
    );
    assert_eq!(status, 200, "{v}");
    let id = server.submit(&alpha, HOSTILE);
    poll_sync("the build to finish", || {
        let b = server.build(&alpha, &id);
        matches!(b["state"].as_str(), Some("succeeded" | "failed" | "cancelled")).then_some(b)
    });
    let driver = Driver::start();
    rt().block_on(async {
        let c = driver.client().await;
        sign_in(&c, &server.url, &alpha).await;
        let title = js(&c, "return document.title").await;

        // From the list to the failed job, to its failed step, to its log.
        c.goto(&format!("{}/ui/builds?state=failed", server.url)).await.unwrap();
        c.find(Locator::Css(&format!("a[href='/ui/builds/{id}']"))).await.unwrap().click().await.unwrap();
        let d = poll("the DAG", || async { Some(dag(&c).await).filter(|d| d.len() == 3) }).await;
        assert!(d.contains(&("bad".into(), "failed".into())), "{d:?}");
        shot(&c, "build-failed").await;
        c.find(Locator::Css("svg.dag a.node[data-job='bad']")).await.unwrap().click().await.unwrap();
        let hash = c.current_url().await.unwrap().fragment().unwrap_or("").to_string();
        assert!(hash.starts_with("job-"), "the node links to its job: {hash}");
        let step = c
            .find(Locator::Css(&format!("#{hash} tr[data-state='failure'], #{hash} tr[data-state='failed']")))
            .await;
        let step = step.unwrap_or_else(|_| panic!("a failed step in the job's section"));
        let name = step.attr("data-step").await.unwrap().unwrap_or_default();
        assert!(name.contains("<script>"), "the step's name, as text: {name}");
        let exit = text_of(&c, &format!("#{hash} tr[data-state] td:nth-of-type(4)")).await;
        assert_eq!(exit, "3", "its exit code");
        step.find(Locator::Css("a.steplog")).await.unwrap().click().await.unwrap();
        let url = c.current_url().await.unwrap();
        let anchor = url.fragment().unwrap_or("").to_string();
        assert!(url.path().ends_with("/logs") && anchor.starts_with("step-"), "{url}");
        let marker = text_of(&c, &format!("#{anchor}")).await;
        assert!(
            marker.contains("<script>document.title='pwned'</script>"),
            "the marker names the step: {marker}"
        );
        let log = text_of(&c, "#log").await;
        assert!(log.contains("<script>window.pwned = 1</script>"), "the line as text: {log}");
        assert_eq!(text_of(&c, "#log span.fg1").await, "red-failure");
        shot(&c, "log-failed").await;

        // The scrubbed secret is marked as such in the log.
        assert_eq!(text_of(&c, "#log mark.redacted").await, "***");
        assert!(!text_of(&c, "body").await.contains(SECRET));

        // Nothing the payloads carried ran.
        assert_eq!(js(&c, "return typeof window.pwned").await, json!("undefined"));
        assert_eq!(js(&c, "return document.title.includes('pwned')").await, json!(false), "{title}");
        assert_eq!(
            js(&c, "return document.querySelectorAll('#log script, #log img').length").await,
            json!(0)
        );

        // The quarantined artifact: marked, no link, and refused if asked.
        c.goto(&format!("{}/ui/builds/{id}/artifacts", server.url)).await.unwrap();
        let row = text_of(&c, "tr[data-artifact='site']").await;
        assert!(row.contains("quarantined") && row.contains("not downloadable"), "{row}");
        assert!(
            c.find(Locator::Css("tr[data-artifact='site'] a.download")).await.is_err(),
            "no download link"
        );
        let art = text_of(&c, "tr[data-artifact='site'] code.digest").await;
        let status = c
            .execute_async(
                "var done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => done(r.status));",
                vec![json!(format!("/ui/artifacts/{art}/download"))],
            )
            .await
            .unwrap();
        assert_eq!(status, json!(403), "a quarantined artifact is refused");
        shot(&c, "artifacts-quarantined").await;

        // The log's stream resumes after the last line the browser got
        // (Last-Event-ID), with neither a loss nor a repeat.
        let ids = sse_ids(&server.url, &alpha, &format!("/ui/builds/{id}/logs/stream"), None);
        assert!(ids.len() >= 3 && ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
        let resumed = sse_ids(&server.url, &alpha, &format!("/ui/builds/{id}/logs/stream"), Some(ids[1]));
        assert_eq!(resumed, ids[2..].to_vec(), "resumed after line {}", ids[1]);

        // The security view: the refused destination and the secret's name.
        c.goto(&format!("{}/ui/builds/{id}/security", server.url)).await.unwrap();
        assert!(text_of(&c, "h1").await.contains(&id));
        let egress = text_of(&c, "#egress").await;
        assert!(egress.contains("example.com"), "{egress}");
        let secrets = text_of(&c, "#secrets").await;
        assert!(secrets.contains("DEPLOY_TOKEN") && !secrets.contains(SECRET), "{secrets}");
        shot(&c, "security").await;

        // Signed out, then in as beta: none of alpha's pages.
        c.find(Locator::Css("header form button[type=submit]")).await.unwrap().click().await.unwrap();
        poll("the sign-in page", || async {
            c.current_url().await.ok().filter(|u| u.path() == "/ui/login").map(drop)
        })
        .await;
        c.goto(&format!("{}/ui/builds/{id}", server.url)).await.unwrap();
        assert_eq!(c.current_url().await.unwrap().path(), "/ui/login", "signed out: no page");
        sign_in(&c, &server.url, &beta).await;
        assert!(!text_of(&c, "main").await.contains(&id), "beta's list has none of alpha's builds");
        for path in [
            format!("/ui/builds/{id}"),
            format!("/ui/builds/{id}/logs"),
            format!("/ui/builds/{id}/artifacts"),
            format!("/ui/builds/{id}/security"),
            format!("/ui/artifacts/{art}"),
            format!("/ui/artifacts/{art}/download"),
        ] {
            c.goto(&format!("{}{path}", server.url)).await.unwrap();
            let h1 = text_of(&c, "h1").await;
            assert!(h1.starts_with("404"), "beta at {path}: {h1}");
            assert!(!text_of(&c, "body").await.contains("red-failure"), "{path}");
        }
        shot(&c, "other-tenant-404").await;

        // An operator sees the queue; a tenant does not.
        c.goto(&format!("{}/ui/queue", server.url)).await.unwrap();
        assert!(text_of(&c, "h1").await.starts_with("403"));
        c.goto(&format!("{}/ui/builds", server.url)).await.unwrap();
        c.find(Locator::Css("header form button[type=submit]")).await.unwrap().click().await.unwrap();
        let operator = server.admin(&["token", "create", "--operator"]);
        sign_in_to(&c, &server.url, &operator, "/ui/queue").await;
        assert!(text_of(&c, "main").await.contains("Wait p99"));
        shot(&c, "queue").await;
        c.close().await.unwrap();
    });
}
