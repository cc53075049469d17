mod common;
use common::*;
use kiln_sandbox::Isolation;

fn stdout_and_exit(tier: Isolation) {
    let r = run("echo", tier, "echo hello from $(id -un); echo err >&2; exit 7");
    assert_eq!(r.stdout.trim(), "hello from kiln", "{r:?}");
    assert_eq!(r.stderr.trim(), "err", "{r:?}");
    assert_eq!(r.outcome.exit_code, Some(7));
    assert_eq!(r.outcome.limit, None);
}

#[test]
fn stdout_and_exit_gvisor() {
    stdout_and_exit(Isolation::Gvisor);
}

#[test]
fn stdout_and_exit_container() {
    stdout_and_exit(Isolation::Container);
}

fn mounts_layout(tier: Isolation) {
    let r = run("mounts", tier, "stat -c '%a %U' /tmp /workspace; grep -E ' /(tmp|usr|workspace|etc/alternatives|dev/shm) ' /proc/mounts; touch /tmp/x && echo tmp-writable; hostname");
    eprintln!("{r:?}");
    assert!(r.stdout.contains("1777 root"), "{r:?}");
    assert!(r.stdout.contains("tmp-writable"), "{r:?}");
    assert!(r.stdout.contains("kiln\n"), "{r:?}");
}

#[test]
fn mounts_layout_gvisor() {
    mounts_layout(Isolation::Gvisor);
}

#[test]
fn mounts_layout_container() {
    mounts_layout(Isolation::Container);
}
