//! Helpers for tests that run the real `kiln` binary against real sandboxes.
//!
//! These tests need root and both runtimes. When either is missing they fail
//! with the reason: they never skip silently.
#![allow(dead_code)]

pub mod objstore;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The two isolation tiers every behaviour is checked on.
pub const TIERS: [&str; 2] = ["gvisor", "container"];

/// Panics with the reason when this machine cannot run sandboxes.
pub fn require_sandboxes() {
    // SAFETY-free check: uid from /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    assert_eq!(
        uid, "0",
        "these tests run real sandboxes and need root (uid is {uid}); run scripts/test.sh as root"
    );
    for bin in ["runsc", "runc"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .output()
            .map(|o| o.status.success());
        assert!(
            found.unwrap_or(false),
            "`{bin}` is not installed: run scripts/install.sh (runsc comes from bookworm-backports)"
        );
    }
}

/// A scratch project: a directory with a workflow file and a state dir.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new(workflow: &str) -> Project {
        require_sandboxes();
        let dir = tempfile::Builder::new().prefix("kiln-test-").tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ci.yml"), workflow).expect("write workflow");
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".kiln")
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// `kiln <args>` in the project dir with its own state dir.
    pub fn kiln(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.current_dir(self.dir.path()).env("KILN_STATE_DIR", self.state_dir()).env("NO_COLOR", "1");
        cmd
    }

    /// The first JSON line `kiln <args>` prints (e.g. the newest build, the
    /// first artifact).
    pub fn first_json_row(&self, args: &[&str]) -> Value {
        let out = self.kiln().args(args).output().expect("run kiln");
        let line = out.stdout.split(|&c| c == b'\n').next().unwrap_or_default();
        serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!("`kiln {args:?}` printed no JSON row ({e}): {}", String::from_utf8_lossy(&out.stderr))
        })
    }

    /// Whether `kiln artifact get ID --out <project>/<dir>` succeeds.
    pub fn restores(&self, id: &str, dir: &str) -> bool {
        self.kiln()
            .args(["artifact", "get", id, "--out"])
            .arg(self.path().join(dir))
            .status()
            .unwrap()
            .success()
    }

    /// `kiln run ci.yml --json --isolation <tier>`, parsed.
    pub fn run(&self, tier: &str, extra: &[&str]) -> Run {
        let out = self
            .kiln()
            .args(["run", "ci.yml", "--json", "--isolation", tier])
            .args(extra)
            .output()
            .expect("run kiln");
        Run::parse(out)
    }
}

/// The parsed result of `kiln run --json`.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub entries: Vec<Value>,
    pub summary: Value,
    pub stderr: String,
    pub stdout: String,
}

impl Run {
    pub fn parse(out: Output) -> Run {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut entries = Vec::new();
        let mut summary = Value::Null;
        for line in stdout.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}\nstderr: {stderr}"));
            if v["type"] == "summary" {
                summary = v;
            } else {
                entries.push(v);
            }
        }
        Run { code: out.status.code().unwrap_or(-1), entries, summary, stderr, stdout }
    }

    pub fn job(&self, id: &str) -> &Value {
        self.summary["jobs"]
            .as_array()
            .and_then(|a| a.iter().find(|j| j["id"] == id))
            .unwrap_or_else(|| panic!("no job `{id}` in summary: {}\nstderr: {}", self.summary, self.stderr))
    }

    pub fn status(&self, id: &str) -> String {
        self.job(id)["status"].as_str().unwrap_or("").to_string()
    }

    /// Output lines (stdout+stderr streams) of one job.
    pub fn lines(&self, job: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e["job"] == job && e["stream"] != "system")
            .map(|e| e["text"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Asserts that every one of `want` is an output line of `job`.
    pub fn assert_lines(&self, job: &str, want: &[&str]) {
        let lines = self.lines(job);
        for w in want {
            assert!(lines.iter().any(|l| l == w), "missing {w:?} in the output of {job}: {lines:?}");
        }
    }

    pub fn system_lines(&self, job: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e["job"] == job && e["stream"] == "system")
            .map(|e| e["text"].as_str().unwrap_or("").to_string())
            .collect()
    }

    pub fn all_text(&self) -> String {
        self.entries.iter().map(|e| e["text"].as_str().unwrap_or("")).collect::<Vec<_>>().join("\n")
    }

    /// Asserts the exit code, printing the whole run when it differs.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            code,
            "exit code\nsummary: {}\nlog:\n{}\nstderr: {}",
            self.summary,
            self.all_text(),
            self.stderr
        );
        self
    }
}

/// Runs `cmd args` with `input` on stdin and returns its stdout.
pub fn pipe(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap().stdout
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
pub fn ms(ts: &Value) -> i64 {
    let s = ts.as_str().unwrap_or_else(|| panic!("not a timestamp: {ts}"));
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("bad timestamp {s}: {e}"));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Generates one test per tier from a body taking the tier name.
#[macro_export]
macro_rules! per_tier {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn gvisor() {
                ($body)("gvisor");
            }
            #[test]
            fn container() {
                ($body)("container");
            }
        }
    };
}

/// A static file server on 127.0.0.2 (dumb HTTP, enough for curl and git).
pub struct Origin {
    pub port: u16,
    pub root: tempfile::TempDir,
}

impl Origin {
    pub fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
        let port = listener.local_addr().unwrap().port();
        let root = tempfile::tempdir().unwrap();
        let dir: PathBuf = root.path().to_path_buf();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut first = String::new();
                    if reader.read_line(&mut first).is_err() {
                        return;
                    }
                    loop {
                        let mut l = String::new();
                        if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                            break;
                        }
                    }
                    let path =
                        first.split_whitespace().nth(1).unwrap_or("/").split('?').next().unwrap_or("/");
                    let mut file = dir.join(path.trim_start_matches('/'));
                    if file.is_dir() {
                        file = if file.join("index.html").exists() {
                            file.join("index.html")
                        } else {
                            file.join("index.json")
                        };
                    }
                    let kind = match file.extension().and_then(|e| e.to_str()) {
                        Some("html") => "text/html",
                        Some("json") => "application/json",
                        _ => "application/octet-stream",
                    };
                    let mut conn = conn;
                    match std::fs::read(&file) {
                        Ok(body) if !path.contains("..") => {
                            let _ = write!(
                                conn,
                                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = conn.write_all(&body);
                        }
                        _ => {
                            let _ = conn.write_all(
                                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            );
                        }
                    }
                });
            }
        });
        Origin { port, root }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.2:{}", self.port)
    }

    pub fn put(&self, rel: &str, body: &[u8]) {
        let p = self.root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

/// Requests a receiver saw: (head, body).
pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A webhook receiver: answers 503 `fails` times, then 200; keeps every request.
/// The value of header `name` in a request head `head` (empty if none).
pub fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

pub fn receiver(fails: usize) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/deploy", listener.local_addr().unwrap());
    let seen: Seen = std::sync::Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().flatten().enumerate() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&l);
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            log.lock().unwrap().push((head, body));
            let status = if n < fails { "503 Service Unavailable" } else { "200 OK" };
            let mut conn = conn;
            let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, seen)
}

/// `git ARGS` in `dir` as a fixed test identity, ignoring the host's config.
pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A bare repository `name` served over dumb HTTP by `origin`, holding
/// `files` in one commit; returns its URL.
pub fn served_repo(origin: &Origin, name: &str, files: &[(&str, &str)]) -> String {
    let work = tempfile::tempdir().unwrap();
    for (rel, body) in files {
        let f = work.path().join(rel);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, body).unwrap();
    }
    git(work.path(), &["init", "-q"]);
    git(work.path(), &["add", "."]);
    git(work.path(), &["commit", "-qm", "init"]);
    let bare = origin.root.path().join(name);
    git(work.path(), &["clone", "-q", "--bare", ".", bare.to_str().unwrap()]);
    git(&bare, &["update-server-info"]);
    format!("http://{}/{name}", origin.addr())
}

/// Bytes of a hex string (a key file, a digest).
pub fn hex_decode(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// The image store the tests of every binary share: an image is built there
/// once per machine, and a recipe already built is found by its digest.
pub const SHARED_IMAGE_STORE: &str = "/var/tmp/kiln-test-images";

/// One image build at a time within a test binary (the first builds, the
/// rest find it; across binaries the store's own lock holds).
pub static IMAGE_BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Project {
    /// `kiln` with the shared image store.
    pub fn kiln_with_images(&self) -> Command {
        std::fs::create_dir_all(SHARED_IMAGE_STORE).expect("create the shared image store");
        let mut cmd = self.kiln();
        cmd.env("KILN_IMAGE_STORE", format!("file://{SHARED_IMAGE_STORE}"));
        cmd
    }

    /// `kiln image build NAME ARGS... --json` in the shared store, parsed.
    pub fn shared_image(&self, name: &str, args: &[&str]) -> Value {
        let found =
            Command::new("sh").arg("-c").arg("command -v mmdebstrap").output().map(|o| o.status.success());
        assert!(found.unwrap_or(false), "`mmdebstrap` is not installed: run scripts/install.sh");
        let _one = IMAGE_BUILD.lock().unwrap_or_else(|e| e.into_inner());
        let out = self
            .kiln_with_images()
            .args(["image", "build", name])
            .args(args)
            .arg("--json")
            .output()
            .expect("run kiln image build");
        assert!(
            out.status.success(),
            "kiln image build {name} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("image build prints JSON")
    }
}

/// Overwrite, in place and keeping its length, every stored copy of the
/// blob `hex` in the local store under `state` (any tenant): its own file
/// or its range of a pack. Returns how many copies it changed.
pub fn tamper_blob(state: &Path, hex: &str, evil: &[u8]) -> usize {
    use std::os::unix::fs::FileExt;
    let digest: kiln_store::Digest = format!("sha256:{hex}").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let root = kiln_store::Store::open_local(state.join("store")).unwrap();
    let mut changed = 0;
    for tenant in std::fs::read_dir(state.join("store")).unwrap().flatten() {
        let name = tenant.file_name().to_string_lossy().to_string();
        let Ok(store) = root.tenant(&name) else { continue };
        if let Some(place) = rt.block_on(store.locate_blob(&digest)).unwrap() {
            assert_eq!(place.size, evil.len() as u64, "same-size tamper");
            let f = std::fs::OpenOptions::new().write(true).open(&place.file).unwrap();
            f.write_all_at(evil, place.offset).unwrap();
            changed += 1;
        }
    }
    changed
}
