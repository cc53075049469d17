//! `kiln doctor`: every required check passes on this host (root, runsc and
//! runc, cgroups, loop devices, overlayfs, the egress socket directory),
//! a missing runtime is a failure with a fix, `--probe` runs a sandbox per
//! runtime, and on a cgroup v2 kernel (user-mode-linux) the cgroup check
//! reports v2 and its controllers.

mod common;

use std::time::Duration;

use common::Project;
use serde_json::Value;

struct Doctor {
    code: i32,
    report: Value,
    stderr: String,
}

impl Doctor {
    fn check(&self, name: &str) -> &Value {
        let checks = self.report["checks"].as_array().expect("checks");
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {}", self.report))
    }

    fn status(&self, name: &str) -> &str {
        self.check(name)["status"].as_str().unwrap()
    }
}

fn doctor(p: &Project, args: &[&str], env: &[(&str, &str)]) -> Doctor {
    let out = p.kiln().arg("doctor").arg("--json").args(args).envs(env.iter().copied()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    Doctor {
        code: out.status.code().unwrap_or(-1),
        report: serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr))),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The cgroup mode this host's mount table says.
fn cgroup_mode() -> &'static str {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let fs_at = |path: &str| {
        text.lines().rev().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (pre.split(' ').nth(4)? == path).then(|| post.split(' ').next().unwrap_or("").to_string())
        })
    };
    match (fs_at("/sys/fs/cgroup").as_deref(), fs_at("/sys/fs/cgroup/unified").as_deref()) {
        (Some("cgroup2"), _) => "v2",
        (_, Some("cgroup2")) => "hybrid",
        _ => "v1",
    }
}

#[test]
fn every_required_check_passes_on_this_host() {
    let p = Project::new("jobs: {}\n");
    let d = doctor(&p, &[], &[]);
    assert_eq!(d.code, 0, "{:#}\n{}", d.report, d.stderr);
    assert_eq!(d.report["ok"], true);
    for name in [
        "root",
        "runsc",
        "runc",
        "cgroups",
        "kiln-init",
        "loop devices",
        "mkfs.ext4",
        "overlayfs",
        "egress sockets",
    ] {
        assert_eq!(d.status(name), "ok", "{name}: {}", d.check(name));
    }
    assert_ne!(d.status("state dir disk"), "fail", "{}", d.check("state dir disk"));
    assert!(
        d.check("runsc")["detail"].as_str().unwrap().starts_with("runsc version"),
        "{}",
        d.check("runsc")
    );
    let cgroups = d.check("cgroups")["detail"].as_str().unwrap();
    assert!(cgroups.starts_with(cgroup_mode()), "{cgroups}");

    // The table: one line per check, and the verdict.
    let out = p.kiln().arg("doctor").output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}");
    assert!(table.lines().any(|l| l.starts_with("ok") && l.contains("cgroups")), "{table}");
    assert!(table.contains("this host can run kiln's sandboxes"), "{table}");
}

#[test]
fn a_missing_runtime_fails_with_a_fix() {
    let p = Project::new("jobs: {}\n");
    let d = doctor(&p, &[], &[("KILN_RUNSC", "/nonexistent/runsc")]);
    assert_eq!(d.code, 1, "{:#}", d.report);
    assert_eq!(d.report["ok"], false);
    let runsc = d.check("runsc");
    assert_eq!(runsc["status"], "fail", "{runsc}");
    assert!(runsc["detail"].as_str().unwrap().contains("/nonexistent/runsc"), "{runsc}");
    let fix = runsc["fix"].as_str().unwrap();
    assert!(fix.contains("apt-get install") && fix.contains("KILN_RUNSC"), "{fix}");
    assert_eq!(d.status("runc"), "ok");

    // Under --isolation container only jobs asking for gvisor need runsc.
    let d = doctor(&p, &["--isolation", "container"], &[("KILN_RUNSC", "/nonexistent/runsc")]);
    assert_eq!(d.status("runsc"), "warn", "{}", d.check("runsc"));
    assert_eq!(d.code, 0, "{:#}", d.report);
    // And the table says what to do.
    let out = p
        .kiln()
        .args(["doctor", "--isolation", "container"])
        .env("KILN_RUNC", "/nonexistent/runc")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(table.contains("fail  runc") && table.contains("fix: apt-get install runc"), "{table}");
    assert!(table.contains("1 required check(s) failed"), "{table}");
}

#[test]
fn probe_runs_a_sandbox_with_each_runtime() {
    let p = Project::new("jobs: {}\n");
    let d = doctor(&p, &["--probe"], &[]);
    assert_eq!(d.code, 0, "{:#}", d.report);
    assert!(d.check("probe runsc")["detail"].as_str().unwrap().contains("Linux version"));
    assert_eq!(d.status("probe runc"), "ok");
}

/// `kiln doctor` inside Debian's user-mode-linux kernel (6.1, cgroup2 with
/// cpu, io, memory and pids at /sys/fs/cgroup, the host's / as its root):
/// the cgroup check reports v2; under the gvisor tier it warns that runsc
/// also wants cpuset, which this kernel lacks.
#[test]
fn cgroup_check_on_a_v2_kernel() {
    let p = Project::new("jobs: {}\n");
    // Not under /tmp: the kernel mounts its own tmpfs there.
    let dir = tempfile::Builder::new().prefix("kiln-uml-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = dir.path();
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let state = p.state_dir();
    let commands = format!(
        "{kiln} doctor --json --isolation container --state-dir {state} > {dir}/container.json 2> {dir}/err.log\n\
         {kiln} doctor --json --isolation gvisor --state-dir {state} > {dir}/gvisor.json 2>> {dir}/err.log\n\
         echo done > {dir}/done",
        dir = dir.display(),
        state = state.display(),
    );
    let run = kiln_sandbox::uml::UmlRun {
        commands: &commands,
        mem_mb: 256,
        tmpfs: true,
        timeout: Duration::from_secs(120),
    };
    kiln_sandbox::uml::boot(dir, &run).unwrap_or_else(|e| panic!("{e}"));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert_eq!(
        read("done").trim(),
        "done",
        "user-mode-linux did not finish\n{}\n{}",
        read("err.log"),
        read("console.log")
    );
    let parse = |f: &str| -> Value {
        serde_json::from_str(&read(f))
            .unwrap_or_else(|e| panic!("{f}: {e}: {}\n{}", read(f), read("err.log")))
    };
    let row = |v: &Value, name: &str| -> Value {
        v["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap()
    };
    let container = parse("container.json");
    let cg = row(&container, "cgroups");
    assert_eq!(cg["status"], "ok", "{cg}");
    assert_eq!(cg["detail"], "v2 (unified) at /sys/fs/cgroup: controllers cpu io memory pids", "{cg}");
    assert_eq!(row(&container, "runc")["status"], "ok");
    let gvisor = parse("gvisor.json");
    let cg = row(&gvisor, "cgroups");
    assert_eq!(cg["status"], "warn", "{cg}");
    assert!(cg["detail"].as_str().unwrap().contains("runsc also wants cpuset"), "{cg}");
}
