//! Escape attempts that must fail, on both tiers.
mod common;
use common::*;
use kiln_sandbox::Isolation;

const SCRIPT: &str = include_str!("attacks.py");

fn attacks(tier: Isolation, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace_dir(tmp.path());
    std::fs::write(ws.join("attacks.py"), SCRIPT).unwrap();
    let mut spec = spec("attacks", tier, "", &ws);
    spec.argv = vec!["/usr/bin/python3".into(), "/workspace/attacks.py".into()];
    let r = run_spec(tier, &spec, tmp.path(), std::time::Duration::from_secs(120));
    assert_clean(tier, &spec.id);
    eprintln!("{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("attacks-done"), "script did not finish: {r:?}");
    let failed: Vec<&str> = r.stdout.lines().filter(|l| l.contains(": FAIL")).collect();
    assert!(failed.is_empty(), "{tier:?}: attacks that succeeded: {failed:#?}");
    for name in extra {
        assert!(r.stdout.contains(&format!("{name}: PASS")), "{name} missing");
    }
    assert_eq!(std::fs::read_to_string(ws.join("ok")).unwrap(), "ok");
}

#[test]
fn attacks_fail_gvisor() {
    attacks(Isolation::Gvisor, &["read_shadow", "tmp_enospc", "raw_socket"]);
}

#[test]
fn attacks_fail_container() {
    attacks(Isolation::Container, &["read_shadow", "tmp_enospc", "raw_socket", "ptrace_attach_child"]);
}
