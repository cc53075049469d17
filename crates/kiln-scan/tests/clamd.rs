//! The clamd client against the real daemon (Debian's `clamav-daemon`), with a signature
//! database this test writes: no network, no official signatures.
//!
//! The daemon is required: without it the test fails and says how to install it, because a
//! scanning gate whose ClamAV path was never exercised is not a gate.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use kiln_scan::{Clamd, ClamdVerdict, OutputKind, ScanError, ScanInput, Scanner, Verdict};

/// How long clamd may take to load two signatures and open its socket on a busy machine. A
/// bound on waiting, not a performance assertion.
const STARTUP: Duration = Duration::from_secs(120);
const MARKER: &str = "kiln-scan clamd integration marker 7f3a";

fn find_clamd() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("clamd")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin/clamd", "/usr/local/sbin/clamd"].map(PathBuf::from))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "clamd is not installed: run scripts/install.sh (Debian package clamav-daemon); \
                 the ClamAV scanning gate cannot be tested without it"
            )
        })
}

/// The EICAR test string, assembled at run time so this source does not contain it whole.
fn eicar() -> String {
    let tail: String = "*H+H$!ELIF-TSET-SURIVITNA-DRADNATS-RACIE$".chars().rev().collect();
    format!("X5O!P%@AP[4\\PZX54(P^)7CC)7}}{tail}")
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A clamd child that is killed (by its own pid) when the test ends, pass or fail.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start(dir: &Path) -> (Daemon, Clamd) {
    let db = dir.join("db");
    fs::create_dir(&db).unwrap();
    // `.ndb` body signatures: Name:TargetType(0 = any file):Offset(* = anywhere):hex bytes.
    fs::write(
        db.join("kiln-test.ndb"),
        format!("Kiln.Test.Eicar:0:*:{}\nKiln.Test.Marker:0:*:{}\n", hex(&eicar()), hex(MARKER)),
    )
    .unwrap();
    let socket = dir.join("clamd.sock");
    let log = dir.join("clamd.log");
    let config = dir.join("clamd.conf");
    fs::create_dir(dir.join("tmp")).unwrap();
    fs::write(
        &config,
        format!(
            "LocalSocket {}\nForeground yes\nDatabaseDirectory {}\nTemporaryDirectory {}\nLogFile {}\n\
             Bytecode no\nMaxThreads 2\nStreamMaxLength 1M\n",
            socket.display(),
            db.display(),
            dir.join("tmp").display(),
            log.display()
        ),
    )
    .unwrap();
    let child = Command::new(find_clamd())
        .arg(format!("--config-file={}", config.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start clamd");
    let mut daemon = Daemon { child, log };
    let clamd = Clamd::unix(&socket);
    let started = Instant::now();
    loop {
        match clamd.ping() {
            Ok(()) => break,
            Err(e) => {
                if let Some(status) = daemon.child.try_wait().unwrap() {
                    panic!("clamd exited ({status}) before answering PING: {e}\n{}", daemon.log());
                }
                assert!(
                    started.elapsed() < STARTUP,
                    "clamd did not answer PING in {STARTUP:?}: {e}\n{}",
                    daemon.log()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    (daemon, clamd)
}

fn input(path: &str, data: impl Into<Vec<u8>>) -> ScanInput {
    ScanInput { path: path.into(), mode: 0o100_644, symlink_target: None, data: data.into() }
}

#[test]
fn real_clamd_scans_clean_and_infected_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, clamd) = start(dir.path());

    assert!(clamd.version().unwrap().starts_with("ClamAV "), "{}", daemon.log());
    assert_eq!(clamd.scan(b"<!doctype html><p>hello</p>").unwrap(), ClamdVerdict::Clean);
    match clamd.scan(format!("header\n{MARKER}\ntrailer").as_bytes()).unwrap() {
        // clamd names signatures from unofficial databases `<name>.UNOFFICIAL`.
        ClamdVerdict::Found(name) => assert!(name.starts_with("Kiln.Test.Marker"), "{name}"),
        ClamdVerdict::Clean => panic!("marker not found\n{}", daemon.log()),
    }

    // Through the scanner: the marker is only ClamAV's; EICAR is both a built-in rule and a
    // signature.
    let scanner = Scanner::builtin().with_clamd(clamd.clone(), Duration::from_secs(60));
    let report = scanner
        .scan(
            OutputKind::Static,
            &mut vec![
                input("index.html", "<p>fine</p>"),
                input("assets/m.txt", MARKER),
                input("eicar.com", eicar()),
            ]
            .into_iter(),
        )
        .unwrap();
    assert_eq!(report.verdict, Verdict::Quarantined);
    let found: Vec<(String, String)> =
        report.findings.iter().map(|f| (f.path.clone(), f.rule.clone())).collect();
    assert_eq!(
        found,
        [
            ("assets/m.txt".to_string(), "clamav".to_string()),
            ("eicar.com".to_string(), "eicar".to_string()),
            ("eicar.com".to_string(), "clamav".to_string()),
        ]
    );
    let line = report.findings[0].to_string();
    assert!(line.starts_with("quarantined: assets/m.txt: clamav (Kiln.Test.Marker"), "{line}");

    let clean =
        scanner.scan(OutputKind::Static, &mut vec![input("a.css", "body{margin:0}")].into_iter()).unwrap();
    assert_eq!(clean.verdict, Verdict::Clean);

    // A stream over StreamMaxLength is clamd's ERROR, and a scan error: never a pass.
    let err = scanner.scan(OutputKind::Server, &mut vec![input("big.bin", vec![b'a'; 2 << 20])].into_iter());
    match err {
        Err(ScanError::Scanner { scanner, path, message }) => {
            assert_eq!((scanner.as_str(), path.as_str()), ("clamd", "big.bin"));
            assert!(message.contains("ERROR"), "{message}");
        }
        other => panic!("expected a clamd error for an oversized stream, got {other:?}"),
    }

    // Once the daemon is gone, the scan fails after the wait instead of passing.
    drop(daemon);
    let gone = Scanner::builtin().with_clamd(clamd, Duration::from_millis(300));
    let err = gone.scan(OutputKind::Static, &mut vec![input("a.txt", "x")].into_iter()).unwrap_err();
    assert!(matches!(err, ScanError::Unavailable { .. }), "{err}");
}
