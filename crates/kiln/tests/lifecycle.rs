//! Cancellation, the state store, and recovery after `kill -9`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Project, Run};

/// A long job whose processes are recognisable by `marker` (a sleep length
/// unique to each test, since tests of both tiers run side by side).
fn long(marker: u32) -> String {
    format!(
        "jobs:\n  long:\n    steps:\n      - run: |\n          echo sleeping\n          setsid sleep {marker} &\n          sleep {marker}\n  after:\n    needs: long\n    steps:\n      - run: echo never\n"
    )
}

fn marker(test: u32, tier: &str) -> u32 {
    6100 + test * 10 + u32::from(tier == "gvisor")
}

/// Starts `kiln run --json` and waits until the long step printed `sleeping`.
fn start_long(p: &Project, tier: &str) -> (std::process::Child, Vec<String>) {
    let mut child = p
        .kiln()
        .args(["run", "ci.yml", "--json", "--isolation", tier])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || Instant::now() > deadline {
            panic!("the step never started: {seen:?}");
        }
        let started = line.contains("\"text\":\"sleeping\"");
        seen.push(line);
        if started {
            break;
        }
    }
    // Keep draining stdout in the background so kiln never blocks on it.
    let rest = std::thread::spawn(move || {
        let mut out = Vec::new();
        for l in reader.lines() {
            out.push(l.unwrap_or_default());
        }
        out
    });
    std::mem::forget(rest);
    (child, seen)
}

fn leftovers(p: &Project, marker: u32) -> Vec<String> {
    let mut found = Vec::new();
    let state = p.state_dir().canonicalize().unwrap_or(p.state_dir());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    for m in mounts.lines() {
        if m.contains(state.to_str().unwrap()) {
            found.push(format!("mount: {m}"));
        }
    }
    let procs = Command::new("pgrep").args(["-f", &format!("sleep {marker}")]).output().unwrap();
    if !procs.stdout.is_empty() {
        found.push(format!("processes: {}", String::from_utf8_lossy(&procs.stdout)));
    }
    let builds = state.join("builds");
    if let Ok(rd) = std::fs::read_dir(&builds) {
        for e in rd.flatten() {
            found.push(format!("build dir: {}", e.path().display()));
        }
    }
    found.extend(runtime_containers(&state).into_iter().map(|c| format!("runtime container: {c}")));
    found
}

/// The containers the runtimes' state directories still hold whose bundle
/// lies under `state` (`list` names each container's bundle).
fn runtime_containers(state: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for (binary, root) in [("runsc", "/run/kiln/runsc"), ("runc", "/run/kiln/runc")] {
        if !std::path::Path::new(root).exists() {
            continue;
        }
        let Ok(out) = Command::new(binary).args(["--root", root, "list"]).output() else {
            continue;
        };
        let listed = String::from_utf8_lossy(&out.stdout);
        found.extend(
            listed.lines().filter(|l| l.contains(state.to_str().unwrap())).map(|l| format!("{binary}: {l}")),
        );
    }
    found
}

fn sandbox_cgroups(build: &str) -> Vec<String> {
    let out = Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "6", "-type", "d", "-name", &format!("*{build}*")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn wait_clean(p: &Project, marker: u32) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = leftovers(p, marker);
        if l.is_empty() || Instant::now() > deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

per_tier!(sigint_cancels_and_leaves_nothing, |tier| {
    let m = marker(1, tier);
    let p = Project::new(&long(m));
    let (child, _) = start_long(&p, tier);
    let pid = child.id();
    assert!(Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let b = p.first_json_row(&["builds", "--json"]);
    assert_eq!(b["status"], "cancelled");
    let logs = Run::parse(p.kiln().args(["logs", b["id"].as_str().unwrap(), "--json"]).output().unwrap());
    assert_eq!(logs.status("long"), "cancelled");
    assert_eq!(logs.status("after"), "cancelled");
    assert_eq!(wait_clean(&p, m), Vec::<String>::new());
    assert_eq!(sandbox_cgroups(b["id"].as_str().unwrap()), Vec::<String>::new());
});

per_tier!(sigkill_leaves_a_readable_store_and_an_interrupted_build, |tier| {
    let m = marker(2, tier);
    let p = Project::new(&long(m));
    let (mut child, _) = start_long(&p, tier);
    // The store commits every 100 ms: what is older than that survives kill -9.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    let _ = child.wait();
    // The store is readable and the build is marked interrupted.
    let list = p.kiln().args(["builds", "--json"]).output().unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let b: serde_json::Value =
        serde_json::from_slice(list.stdout.split(|&c| c == b'\n').next().unwrap()).unwrap();
    assert_eq!(b["status"], "interrupted");
    let logs = p.kiln().args(["logs", "latest"]).output().unwrap();
    assert!(String::from_utf8_lossy(&logs.stdout).contains("sleeping"));
    // The next run cleans up what the dead one left.
    p.write("ci.yml", "jobs:\n  quick:\n    steps:\n      - run: echo quick\n");
    let run = p.run(tier, &[]);
    run.expect_code(0);
    assert_eq!(wait_clean(&p, m), Vec::<String>::new());
});

#[test]
fn builds_and_logs_read_back() {
    let p = Project::new(
        "name: readback\njobs:\n  one:\n    steps:\n      - run: echo first line; echo second line >&2\n",
    );
    let run = p.run("container", &[]);
    run.expect_code(0);
    let build = run.summary["build"].as_str().unwrap().to_string();
    let list = p.kiln().args(["builds"]).output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains(&build) && text.contains("succeeded") && text.contains("readback"), "{text}");
    let logs = p.kiln().args(["logs", &build[..12]]).output().unwrap();
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(text.contains("first line") && text.contains("second line"), "{text}");
    let json = Run::parse(p.kiln().args(["logs", &build, "--json"]).output().unwrap());
    let seqs: Vec<u64> = json.entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "log sequence has gaps: {seqs:?}");
    assert_eq!(json.entries.len(), run.entries.len(), "stored log differs from the live one");
    let missing = p.kiln().args(["logs", "nope"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn missing_runtime_is_named_with_the_fix() {
    let p = Project::new("jobs:\n  a:\n    steps: [{run: echo}]\n");
    let out = p.kiln().env("KILN_RUNSC", "/nonexistent/runsc").args(["run", "ci.yml"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("runsc") && err.contains("apt-get"), "{err}");
}

#[test]
fn bug_a_closed_pipe_made_kiln_panic() {
    // `kiln logs latest | head`: the reader goes away while kiln still
    // writes; kiln ends quietly (as a tool killed by SIGPIPE), no panic.
    let p = Project::new("jobs:\n  a:\n    steps:\n      - run: seq 1 20000\n");
    p.run("container", &[]).expect_code(0);
    let kiln = env!("CARGO_BIN_EXE_kiln");
    for cmd in ["logs latest", "logs latest --json", "reproduce latest"] {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; {kiln} {cmd} | head -c 1 > /dev/null; echo \"status=$?\""))
            .env("KILN_STATE_DIR", p.state_dir())
            .current_dir(p.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "kiln {cmd}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("status=0") || stdout.contains("status=141"),
            "kiln {cmd}: {stdout} {stderr}"
        );
    }
}

// Every phase sandbox of a finished run stayed in the runtime's state
// directory: the runtime had not recorded the stop when kiln, having seen
// the sandbox's last process gone, asked for a plain delete, and the
// refusal went unseen. Thousands piled up under /run. (The forced delete
// that fixes it costs runsc ~1.5 s, so it runs in the background.)
per_tier!(bug_ended_phase_sandboxes_stayed_in_the_runtime_state, |tier| {
    let p = Project::new(
        "jobs:\n  a:\n    steps:\n      - run: echo one\n      - run: echo two\n  b:\n    needs: a\n    steps:\n      - run: echo three\n",
    );
    let out = p.kiln().args(["run", "ci.yml", "--isolation", tier]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let state = p.state_dir().canonicalize().unwrap();
    // The last deletes may still be running in the background.
    let deadline = Instant::now() + Duration::from_secs(20);
    let left = loop {
        let left = runtime_containers(&state);
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(left.is_empty(), "ended sandboxes left in the runtime's state: {left:#?}");
});
