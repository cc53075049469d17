//! `kiln build` wall time, cold and warm, against the same commands run
//! directly on the host.
//!
//! Two projects: the `examples/static-site` example (Node, no dependencies)
//! and a generated Node project whose lockfile holds a few hundred packages
//! served by an npm registry this bench runs on 127.0.0.2 (real tarballs,
//! packuments with `integrity` and `shasum`). Each repetition builds each
//! project cold (a fresh state dir: empty store, empty dependency cache) and
//! then warm (the same state dir: the dependency cache hits and the install
//! is skipped) on every tier, then runs `npm ci && npm run build` on the host
//! in a fresh copy, cold (an empty npm cache) and warm (the npm cache the
//! cold run filled). Medians are reported; nothing is asserted about time.
//!
//! Needs root, runsc, runc, node/npm, tar, sha1sum and sha512sum. Env:
//! `KILN_BENCH_REPS` (3), `KILN_BENCH_DEPS` (300), `KILN_BENCH_TIERS`
//! (`gvisor,container`), `KILN_BENCH_DIR` (parent of the temp dir; keep it short: the
//! engine's egress sockets live deep under the state dirs made there). Prints a
//! Markdown table and writes the `bench:build` section of docs/benchmarks.md.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

/// The repository root.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd`, panicking with its stderr when it fails; returns stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// First line of `cmd args`' output, or `unknown`.
fn version_of(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

fn copy_dir(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

// ---------------------------------------------------------------------------
// The registry: a static file server on 127.0.0.2, one thread per connection.

/// Serves `root` on 127.0.0.2 until [`Registry::stop`]: `/NAME` is the
/// packument `NAME/index.json`, anything else the file at that path.
struct Registry {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: std::thread::JoinHandle<()>,
}

impl Registry {
    fn start(root: PathBuf) -> Registry {
        let listener = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2 (loopback /8)");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let root = root.clone();
                std::thread::spawn(move || answer(conn, &root));
            }
            // The listener is dropped here: the port is closed.
        });
        Registry { port, stop, accept }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.2:{}/", self.port)
    }

    /// Closes the listener: the accept loop sees the flag on its next
    /// connection, which this makes.
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.2", self.port));
        let _ = self.accept.join();
    }
}

/// One request, one response, then the connection closes.
fn answer(conn: TcpStream, root: &Path) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").split('?').next().unwrap_or("/");
    // npm asks for scoped names as `@scope%2fname`; this registry has none.
    let mut file = root.join(path.trim_start_matches('/'));
    if file.is_dir() {
        file = file.join("index.json");
    }
    let mut conn = conn;
    match std::fs::read(&file) {
        Ok(body) if !path.contains("..") => {
            let kind = if file.extension().is_some_and(|e| e == "json") {
                "application/json"
            } else {
                "application/octet-stream"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
        _ => {
            let _ =
                conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    }
}

// ---------------------------------------------------------------------------
// The generated project: packages, packuments, a lockfile.

/// Standard base64 with padding (npm's `integrity` is `sha512-<base64>`).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// `file -> hex digest` from `tool FILE...` (sha1sum, sha512sum).
fn digests(tool: &str, files: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for batch in files.chunks(200) {
        let text = run_ok(Command::new(tool).args(batch));
        for line in text.lines() {
            let (hex, file) = line.split_once("  ").expect("`HEX  FILE`");
            out.insert(PathBuf::from(file), hex.to_string());
        }
    }
    out
}

/// `n` packages in the registry at `root`: a fifth of them (`kiln-bench-a-*`)
/// are the project's direct dependencies, each depending on its share of the
/// rest (`kiln-bench-b-*`), so the lockfile holds all `n`. Returns the direct
/// ones' names.
fn make_packages(root: &Path, work: &Path, n: usize, base: &str) -> Vec<String> {
    let direct = (n / 5).max(1);
    let leaves = n - direct;
    let per = leaves.div_ceil(direct);
    let name = |i: usize| {
        if i < direct {
            format!("kiln-bench-a-{i:03}")
        } else {
            format!("kiln-bench-b-{:03}", i - direct)
        }
    };
    let deps_of = |i: usize| -> Vec<String> {
        if i >= direct {
            return Vec::new();
        }
        (i * per..((i + 1) * per).min(leaves)).map(|k| name(direct + k)).collect()
    };
    let mut tarballs = Vec::new();
    for i in 0..n {
        let pkg = name(i);
        let deps = deps_of(i);
        let src = work.join("pkgs").join(&pkg);
        std::fs::create_dir_all(src.join("package")).unwrap();
        let dependencies: serde_json::Map<String, Value> =
            deps.iter().map(|d| (d.clone(), json!("1.0.0"))).collect();
        let manifest = json!({
            "name": pkg, "version": "1.0.0", "main": "index.js", "license": "MIT",
            "dependencies": dependencies,
        });
        std::fs::write(src.join("package/package.json"), serde_json::to_string_pretty(&manifest).unwrap())
            .unwrap();
        let body = if deps.is_empty() {
            format!("'use strict';\nmodule.exports = () => '{pkg}';\n")
        } else {
            let requires: Vec<String> = deps.iter().map(|d| format!("require('{d}')")).collect();
            format!(
                "'use strict';\nconst deps = [{}];\nmodule.exports = () => '{pkg}(' + deps.map((d) => d()).join(', ') + ')';\n",
                requires.join(", ")
            )
        };
        std::fs::write(src.join("package/index.js"), body).unwrap();
        let dir = root.join(&pkg).join("-");
        std::fs::create_dir_all(&dir).unwrap();
        let tgz = dir.join(format!("{pkg}-1.0.0.tgz"));
        run_ok(
            Command::new("tar")
                .args(["-czf"])
                .arg(&tgz)
                .args(["--owner=0", "--group=0", "--numeric-owner", "--mtime=1985-10-26 08:15Z", "-C"])
                .arg(&src)
                .arg("package"),
        );
        tarballs.push(tgz);
    }
    let sha1 = digests("sha1sum", &tarballs);
    let sha512 = digests("sha512sum", &tarballs);
    for (i, tgz) in tarballs.iter().enumerate() {
        let pkg = name(i);
        let dependencies: serde_json::Map<String, Value> =
            deps_of(i).into_iter().map(|d| (d, json!("1.0.0"))).collect();
        let packument = json!({
            "name": pkg,
            "dist-tags": { "latest": "1.0.0" },
            "versions": { "1.0.0": {
                "name": pkg, "version": "1.0.0", "main": "index.js", "license": "MIT",
                "dependencies": dependencies,
                "dist": {
                    "tarball": format!("{base}{pkg}/-/{pkg}-1.0.0.tgz"),
                    "shasum": sha1[tgz],
                    "integrity": format!("sha512-{}", base64(&hex_bytes(&sha512[tgz]))),
                },
            } },
        });
        std::fs::write(root.join(&pkg).join("index.json"), packument.to_string()).unwrap();
    }
    (0..direct).map(name).collect()
}

/// The project: every direct package as a dependency, a build script that
/// requires a few of them, and a lockfile made by the host's npm.
fn make_project(dir: &Path, direct: &[String], registry: &str, npm_cache: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let dependencies: serde_json::Map<String, Value> =
        direct.iter().map(|d| (d.clone(), json!("1.0.0"))).collect();
    let manifest = json!({
        "name": "deps-app", "version": "1.0.0", "private": true,
        "dependencies": dependencies,
        "scripts": { "build": "node build.js" },
    });
    std::fs::write(dir.join("package.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    let used: Vec<&String> = [0, direct.len() / 2, direct.len() - 1].map(|i| &direct[i]).to_vec();
    let requires: Vec<String> = used.iter().map(|d| format!("require('{d}')")).collect();
    std::fs::write(
        dir.join("build.js"),
        format!(
            "const fs = require('fs');\nconst parts = [{}].map((f) => f());\n\
             fs.rmSync('dist', {{ recursive: true, force: true }});\nfs.mkdirSync('dist', {{ recursive: true }});\n\
             fs.writeFileSync('dist/index.html', `<!doctype html>\\n<ul>${{parts.map((p) => `<li>${{p}}</li>`).join('')}}</ul>\\n`);\n\
             console.log(`built dist/index.html from ${{parts.length}} packages`);\n",
            requires.join(", ")
        ),
    )
    .unwrap();
    run_ok(
        Command::new("npm")
            .args(["install", "--package-lock-only", "--no-audit", "--no-fund", "--registry", registry])
            .current_dir(dir)
            .env("npm_config_cache", npm_cache)
            .env("npm_config_userconfig", npm_cache.join("no-npmrc"))
            .env("npm_config_update_notifier", "false"),
    );
}

// ---------------------------------------------------------------------------
// Runs.

/// What one timed `kiln build` said about itself.
#[derive(Debug, Default)]
struct KilnRun {
    secs: f64,
    /// `hit`, `miss` or `none` (no cache step ran).
    cache: &'static str,
    /// Whether the install step printed anything (it ran).
    installed: bool,
    /// Seconds per step, from its `step finished in ...` line (the sandbox's
    /// start included); `Post cache` (the cache save) from the log's times.
    steps: BTreeMap<String, f64>,
}

/// `kiln build <copy of src> --json --isolation <tier> [--registry npm=URL]`
/// with `state` as the state dir, timed from spawn to exit.
fn kiln_build(src: &Path, scratch: &Path, state: &Path, tier: &str, registry: Option<&str>) -> KilnRun {
    let copy = scratch.join("src");
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(src, &copy);
    let mut cmd = Command::new(KILN);
    cmd.arg("build").arg(&copy).args(["--json", "--isolation", tier]);
    if let Some(r) = registry {
        cmd.args(["--registry", &format!("npm={r}")]);
    }
    cmd.current_dir(scratch).env("KILN_STATE_DIR", state).env("NO_COLOR", "1");
    let t = Instant::now();
    let out = cmd.output().expect("run kiln");
    let secs = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&copy).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let result = lines.iter().find(|v| v["type"] == "result");
    let ok = out.status.success() && result.is_some_and(|r| r["status"] == "succeeded");
    assert!(
        ok,
        "kiln build {} ({tier}) failed ({}):\n{stdout}\n{}",
        src.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut run = KilnRun { secs, cache: "none", ..KilnRun::default() };
    let mut prev: Option<i128> = None;
    for v in lines.iter().filter(|v| v["ts"].is_string()) {
        let text = v["text"].as_str().unwrap_or("");
        let step = v["step"].as_str().unwrap_or("");
        if text.starts_with("cache hit:") {
            run.cache = "hit";
        } else if text.starts_with("cache miss:") {
            run.cache = "miss";
        }
        if step == "install" && v["stream"] != "system" {
            run.installed = true;
        }
        let at = time::OffsetDateTime::parse(
            v["ts"].as_str().unwrap_or(""),
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| t.unix_timestamp_nanos())
        .ok();
        if let Some(d) = text.strip_prefix("step finished in ").and_then(step_secs) {
            *run.steps.entry(step.to_string()).or_default() += d;
        } else if step == "Post cache" {
            // The save has no finished line: the gap before its line.
            if let (Some(p), Some(a)) = (prev, at) {
                *run.steps.entry(step.to_string()).or_default() += (a - p) as f64 / 1e9;
            }
        }
        prev = at.or(prev);
    }
    run
}

/// `3 ms`, `1.05 s`, `2m 05s` (the engine's step durations) in seconds.
fn step_secs(text: &str) -> Option<f64> {
    let d = text.split(" (").next()?.trim();
    if let Some(ms) = d.strip_suffix(" ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    if let Some(s) = d.strip_suffix(" s") {
        return s.parse().ok();
    }
    let (m, s) = d.strip_suffix('s')?.split_once("m ")?;
    Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// `npm ci && npm run build` in a fresh copy of `src` on the host, with
/// `npm_cache` as npm's cache, timed from spawn to exit.
fn direct_build(src: &Path, scratch: &Path, npm_cache: &Path, registry: Option<&str>) -> f64 {
    let copy = scratch.join("direct");
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(src, &copy);
    let reg = registry.map(|r| format!(" --registry {r}")).unwrap_or_default();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("npm ci{reg} && npm run build")])
        .current_dir(&copy)
        .env("npm_config_cache", npm_cache)
        // Not the operator's ~/.npmrc: kiln's install does not read it either.
        .env("npm_config_userconfig", scratch.join("no-npmrc"))
        .env("npm_config_audit", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_update_notifier", "false");
    let t = Instant::now();
    run_ok(&mut cmd);
    let secs = t.elapsed().as_secs_f64();
    assert!(copy.join("dist/index.html").exists(), "the direct build wrote no dist/index.html");
    std::fs::remove_dir_all(&copy).unwrap();
    secs
}

// ---------------------------------------------------------------------------
// Results.

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn secs_cell(v: &[f64]) -> String {
    let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    if v.len() > 1 {
        format!("{:.2} s ({lo:.2}–{hi:.2})", median(v))
    } else {
        format!("{:.2} s", median(v))
    }
}

/// Samples of one project.
#[derive(Debug, Default)]
struct Samples {
    /// tier -> (cold runs, warm runs)
    kiln: BTreeMap<String, (Vec<KilnRun>, Vec<KilnRun>)>,
    direct_cold: Vec<f64>,
    direct_warm: Vec<f64>,
}

fn secs(runs: &[KilnRun]) -> Vec<f64> {
    runs.iter().map(|r| r.secs).collect()
}

fn tier_label(tier: &str) -> &str {
    match tier {
        "gvisor" => "kiln build, gvisor (runsc)",
        "container" => "kiln build, container (runc)",
        other => other,
    }
}

/// The main table: wall time per project and runner, and kiln/direct.
fn table(projects: &[(String, Samples)], tiers: &[String]) -> String {
    let mut t = String::from(
        "| project | runner | cold | warm | warm install | kiln/direct cold | kiln/direct warm |\n\
         | --- | --- | ---: | ---: | --- | ---: | ---: |\n",
    );
    for (name, s) in projects {
        let (dc, dw) = (median(&s.direct_cold), median(&s.direct_warm));
        for tier in tiers {
            let (cold, warm) = &s.kiln[tier];
            let install = if warm.iter().all(|r| r.cache == "hit" && !r.installed) {
                "skipped (cache hit)".to_string()
            } else if warm.iter().all(|r| !r.installed) {
                "none (nothing to install)".to_string()
            } else {
                let hits = warm.iter().filter(|r| r.cache == "hit").count();
                format!("ran ({hits}/{} cache hits)", warm.len())
            };
            t.push_str(&format!(
                "| {name} | {} | {} | {} | {install} | {:.1}x | {:.1}x |\n",
                tier_label(tier),
                secs_cell(&secs(cold)),
                secs_cell(&secs(warm)),
                median(&secs(cold)) / dc,
                median(&secs(warm)) / dw,
            ));
        }
        t.push_str(&format!(
            "| {name} | host: `npm ci && npm run build` | {} | {} | ran (npm cache warm) | | |\n",
            secs_cell(&s.direct_cold),
            secs_cell(&s.direct_warm),
        ));
    }
    t
}

/// The steps of the pipeline, in order, as the log names them.
const STEPS: [&str; 7] = ["fetch", "detect", "dependency cache", "install", "build", "package", "Post cache"];

/// Median seconds per step, cold and warm, and the rest of the wall time.
fn step_table(projects: &[(String, Samples)], tiers: &[String]) -> String {
    let mut t = String::from("| project | tier | run |");
    let mut sep = String::from("| --- | --- | --- |");
    for s in STEPS {
        t.push_str(&format!(" {s} |"));
        sep.push_str(" ---: |");
    }
    t.push_str(" outside steps | wall |\n");
    sep.push_str(" ---: | ---: |\n");
    t.push_str(&sep);
    for (name, s) in projects {
        for tier in tiers {
            let (cold, warm) = &s.kiln[tier];
            for (label, runs) in [("cold", cold), ("warm", warm)] {
                t.push_str(&format!("| {name} | {tier} | {label} |"));
                for step in STEPS {
                    let v: Vec<f64> =
                        runs.iter().map(|r| r.steps.get(step).copied().unwrap_or(0.0)).collect();
                    t.push_str(&format!(" {:.2} |", median(&v)));
                }
                let rest: Vec<f64> = runs.iter().map(|r| r.secs - r.steps.values().sum::<f64>()).collect();
                t.push_str(&format!(" {:.2} | {:.2} |\n", median(&rest), median(&secs(runs))));
            }
        }
    }
    t
}

/// Replaces (or appends) the `<!-- bench:NAME -->` section of `path`,
/// leaving the rest of the page as it is.
fn write_section(path: &Path, name: &str, body: &str) -> std::io::Result<()> {
    let (open, close) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let block = format!("{open}\n{}\n{close}", body.trim_end());
    let page = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let page = match (page.find(&open), page.find(&close)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &page[..a], &page[b + close.len()..]),
        _ => format!("{}\n{block}\n", page.trim_end()),
    };
    std::fs::write(path, page)
}

fn main() {
    let reps = env_usize("KILN_BENCH_REPS", 3).max(1);
    let n_deps = env_usize("KILN_BENCH_DEPS", 300).max(2);
    let tiers: Vec<String> = std::env::var("KILN_BENCH_TIERS")
        .unwrap_or_else(|_| "gvisor,container".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let parent = std::env::var("KILN_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    let tmp = tempfile::Builder::new().prefix("kb-").tempdir_in(parent).unwrap();
    let work = tmp.path();

    // The registry and the generated project.
    let t = Instant::now();
    let reg_root = work.join("registry");
    std::fs::create_dir_all(&reg_root).unwrap();
    let registry = Registry::start(reg_root.clone());
    let url = registry.url();
    let direct = make_packages(&reg_root, work, n_deps, &url);
    let app = work.join("deps-app");
    make_project(&app, &direct, &url, &work.join("npm-cache-lock"));
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(app.join("package-lock.json")).unwrap()).unwrap();
    let locked = lock["packages"].as_object().map_or(0, |p| p.len().saturating_sub(1));
    assert_eq!(locked, n_deps, "the lockfile holds every generated package");
    eprintln!("registry on {url}: {n_deps} packages and the lockfile in {:.1} s", t.elapsed().as_secs_f64());

    let site = repo_root().join("examples/static-site");
    let deps_name = format!("{n_deps} deps ({} direct)", direct.len());
    let cases: Vec<(String, PathBuf, Option<&str>)> = vec![
        ("static-site (0 deps)".to_string(), site.clone(), None),
        (deps_name, app.clone(), Some(url.as_str())),
    ];

    // One warm-up of each runner, not counted (page cache, runtime binaries).
    for tier in &tiers {
        let state = work.join("sw");
        kiln_build(&site, work, &state, tier, None);
        let _ = std::fs::remove_dir_all(&state);
    }
    direct_build(&site, work, &work.join("warmup-npm"), None);

    let mut samples: Vec<Samples> = cases.iter().map(|_| Samples::default()).collect();
    for rep in 0..reps {
        for ((name, src, reg), s) in cases.iter().zip(samples.iter_mut()) {
            for (t, tier) in tiers.iter().enumerate() {
                // Short: the engine's egress socket lives deep under it, and a
                // Unix socket path must fit in 108 bytes.
                let state = work.join(format!("s{rep}{t}"));
                let cold = kiln_build(src, work, &state, tier, *reg);
                let warm = kiln_build(src, work, &state, tier, *reg);
                eprintln!(
                    "[{}/{reps}] {name} {tier}: cold {:.2} s (cache {}), warm {:.2} s (cache {})",
                    rep + 1,
                    cold.secs,
                    cold.cache,
                    warm.secs,
                    warm.cache
                );
                std::fs::remove_dir_all(&state).unwrap();
                let e = s.kiln.entry(tier.clone()).or_default();
                e.0.push(cold);
                e.1.push(warm);
            }
            let npm_cache = work.join(format!("npm-cache-{rep}"));
            let cold = direct_build(src, work, &npm_cache, *reg);
            let warm = direct_build(src, work, &npm_cache, *reg);
            std::fs::remove_dir_all(&npm_cache).unwrap();
            eprintln!("[{}/{reps}] {name} host npm: cold {cold:.2} s, warm {warm:.2} s", rep + 1);
            s.direct_cold.push(cold);
            s.direct_warm.push(warm);
        }
    }
    registry.stop();

    let projects: Vec<(String, Samples)> = cases.into_iter().map(|c| c.0).zip(samples).collect();
    let main_table = table(&projects, &tiers);
    let steps = step_table(&projects, &tiers);
    println!("{main_table}\nMedian seconds per step (log timestamps)\n\n{steps}");

    let cpus = run_ok(&mut Command::new("nproc")).trim().to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let section = format!(
        "## kiln build: cold and warm builds, against npm on the host\n\n\
         Produced by (as root, from the repository root, after `scripts/install.sh`):\n\n\
         ```sh\ncargo bench -p kiln --bench build\n```\n\n\
         Machine: `nproc` {cpus}, Linux {}; {}; {}; node {}, npm {}; {} (release build).\n\n\
         Wall time of `kiln build <copy> --json --isolation <tier>` from spawn to exit, median of {reps} \
         (min–max in brackets), for `examples/static-site` (Node, no dependencies) and for a generated \
         Node project whose `package-lock.json` holds {n_deps} packages ({} direct, each with its share \
         of the rest as dependencies; every package a real tarball of `package.json` and `index.js`) \
         served by an npm registry the bench runs on 127.0.0.2 and passes with `--registry npm=URL`. \
         **Cold**: a fresh state dir (empty store, empty dependency cache), so `npm ci` runs in the \
         install sandbox through the egress proxy and `node_modules`, when there is one, is saved to \
         the cache. **Warm**: \
         the same state dir again: when the cold build saved a `node_modules`, the dependency cache \
         hits, restores it and the install step is skipped (the `warm install` column says what \
         happened). Every run also fetches (copies) the source, builds with no network \
         and stores, scans and signs the output. **Host**: `npm ci && npm run build` in a fresh copy \
         on the host with no sandbox (and, like kiln's install, without the operator's `~/.npmrc`), \
         cold with an empty npm cache and warm with the cache the cold run filled (npm still \
         installs). Runs of one repetition are interleaved, so the ratios \
         compare numbers taken under the same load; the machine is shared with other work, so \
         compare rows of one run.\n\n{main_table}\n\
         Where the time goes: median seconds per step, from each step's `step finished in` log \
         line (a sandboxed step's time includes its sandbox's start); `Post cache` is the dependency \
         cache's save after a miss (from the log's timestamps); `outside steps` is the rest of the \
         wall time: starting kiln, opening the state dir, the job's workspace and its teardown, and \
         the result.\n\n{steps}",
        kernel.trim(),
        format_args!("gvisor: {}", version_of("runsc", &["--version"])),
        format_args!("container: {}", version_of("runc", &["--version"])),
        version_of("node", &["--version"]),
        version_of("npm", &["--version"]),
        version_of(KILN, &["--version"]),
        direct.len(),
    );
    let docs = repo_root().join("docs/benchmarks.md");
    let docs = docs.canonicalize().unwrap_or(docs);
    write_section(&docs, "build", &section).unwrap_or_else(|e| panic!("writing {}: {e}", docs.display()));
    eprintln!("wrote the bench:build section of {}", docs.display());
    drop(tmp);
}
