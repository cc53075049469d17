//! Quota'd workspaces (loop-mounted ext4) and stale cleanup.
mod common;
use std::path::Path;
use std::time::Duration;

use common::*;
use kiln_sandbox::{cleanup_stale, Isolation, Sandbox, Workspace};

fn mounted(dir: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy();
    m.lines().any(|l| l.split(' ').nth(4) == Some(&d))
}

fn quota(tier: Isolation) {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("job");
    let ws = Workspace::create(&dir, 16 << 20, STEP_UID, STEP_GID).expect("create workspace");
    assert!(mounted(&dir));
    assert!(ws.usage().unwrap().total_bytes > 8 << 20);
    assert!(!ws.is_full());
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let mut spec = spec("quota", tier, "", &ws.path());
    spec.argv = vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo small > /workspace/a && dd if=/dev/zero of=/workspace/big bs=1M count=64".into(),
    ];
    let r = run_spec(tier, &spec, &scratch, Duration::from_secs(60));
    assert_clean(tier, &spec.id);
    assert_ne!(r.outcome.exit_code, Some(0), "{r:?}");
    assert!(r.stderr.contains("No space left on device"), "{r:?}");
    assert!(ws.is_full(), "{:?}", ws.usage());
    assert_eq!(std::fs::read_to_string(ws.path().join("a")).unwrap(), "small\n");
    // The home directory shares the quota: a full workspace leaves it no room.
    assert!(std::fs::write(ws.home().join("more"), vec![0u8; 1 << 20]).is_err());
    let img = ws.image().to_path_buf();
    ws.destroy().unwrap();
    ws.destroy().unwrap(); // idempotent
    assert!(!mounted(&dir));
    assert!(!img.exists());
}

#[test]
fn quota_gvisor() {
    quota(Isolation::Gvisor);
}

#[test]
fn quota_container() {
    quota(Isolation::Container);
}

#[test]
fn drop_unmounts() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("job");
    let ws = Workspace::create(&dir, 8 << 20, 0, 0).unwrap();
    let img = ws.image().to_path_buf();
    assert!(mounted(&dir));
    drop(ws);
    assert!(!mounted(&dir));
    assert!(!img.exists());
}

/// An unfinished Sandbox (engine error) is cleaned up by Drop, and
/// cleanup_stale removes leftovers by prefix.
#[test]
fn drop_and_cleanup_stale() {
    for tier in TIERS {
        let rt = runtime(tier);
        let tmp = tempfile::tempdir().unwrap();
        let ws = workspace_dir(tmp.path());
        let mut spec = spec("dropped", tier, "sleep 600", &ws);
        spec.id = format!("kiln-stale-{}-{}", tag(tier), std::process::id());
        let sb = Sandbox::prepare(&rt, &spec, tmp.path()).unwrap();
        let mut child = sb.command().spawn().unwrap();
        assert!(wait_until(Duration::from_secs(10), || rt.list().unwrap().contains(&spec.id)));
        drop(sb);
        let _ = child.wait();
        assert_clean(tier, &spec.id);
        assert!(!tmp.path().join(&spec.id).exists());

        // Simulate a crash: prepare + start, then forget the Sandbox.
        let sb = Sandbox::prepare(&rt, &spec, tmp.path()).unwrap();
        let mut child = sb.command().spawn().unwrap();
        assert!(wait_until(Duration::from_secs(10), || rt.list().unwrap().contains(&spec.id)));
        std::mem::forget(sb);
        let report = cleanup_stale(&format!("kiln-stale-{}-", tag(tier)), Some(tmp.path())).unwrap();
        let _ = child.wait();
        assert!(report.errors.is_empty(), "{report:?}");
        assert!(report.containers.contains(&spec.id), "{report:?}");
        assert!(report.cgroups.contains(&spec.id), "{report:?}");
        assert_clean(tier, &spec.id);
        assert!(!tmp.path().join(&spec.id).exists());
    }
}
