//! Generation of the OCI runtime spec (config.json) and the rootfs skeleton.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilities, LinuxDeviceCgroupBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, LinuxSeccomp, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Process,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::error::{io_err, Result, SandboxError};
use crate::{Isolation, SandboxSpec};

/// The container tier's seccomp profile (data, not code).
pub const SECCOMP_PROFILE: &str = include_str!("seccomp.json");

/// Host paths bound read-only into the generated `/etc` when present.
const ETC_BINDS: [&str; 3] = ["/etc/alternatives", "/etc/ssl/certs", "/etc/ld.so.cache"];

/// Docker's default masked paths.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's default read-only paths.
pub const READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Default PATH when the step's env has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Parses the embedded seccomp profile.
pub fn seccomp_profile() -> Result<LinuxSeccomp> {
    Ok(serde_json::from_str(SECCOMP_PROFILE)?)
}

fn mount(dest: &str, typ: &str, source: &str, opts: &[&str]) -> Result<Mount> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn bind(dest: &str, source: &Path, writable: bool) -> Result<Mount> {
    let mut opts = vec!["rbind", "nosuid", "nodev"];
    opts.push(if writable { "rw" } else { "ro" });
    Ok(MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn check_dest(dest: &str) -> Result<()> {
    if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
        return Err(SandboxError::Invalid(format!(
            "mount destination {dest:?} must be absolute without `..`"
        )));
    }
    Ok(())
}

/// The locked-down process of a step: no capabilities in any set,
/// `no_new_privs`, 1024 open files, no core dumps, first to die on OOM.
fn process(argv: Vec<String>, env: Vec<String>, cwd: &str, uid: u32, gid: u32) -> Result<Process> {
    let no_caps = || Some(HashSet::new());
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(no_caps());
    caps.set_effective(no_caps());
    caps.set_inheritable(no_caps());
    caps.set_permitted(no_caps());
    caps.set_ambient(no_caps());
    let rlimit = |typ, v: u64| PosixRlimitBuilder::default().typ(typ).hard(v).soft(v).build();
    Ok(ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(uid).gid(gid).additional_gids(Vec::<u32>::new()).build()?)
        .args(argv)
        .env(env)
        .cwd(cwd)
        .capabilities(caps)
        .rlimits(vec![rlimit(PosixRlimitType::RlimitNofile, 1024)?, rlimit(PosixRlimitType::RlimitCore, 0)?])
        .no_new_privileges(true)
        .oom_score_adj(1000)
        .build()?)
}

/// Builds the OCI spec of one step. `cgroups_path` is kiln's leaf cgroup.
pub fn build_spec(isolation: Isolation, spec: &SandboxSpec, cgroups_path: &str) -> Result<Spec> {
    check_dest(&spec.cwd)?;
    if spec.argv.is_empty() {
        return Err(SandboxError::Invalid("argv is empty".into()));
    }
    if !spec.workspace.is_absolute() {
        return Err(SandboxError::Invalid(format!(
            "workspace {} must be an absolute path",
            spec.workspace.display()
        )));
    }

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        )?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?,
    ];
    if spec.root.is_none() {
        // The host skeleton: the host's /usr and the /etc files it needs.
        mounts.push(bind("/usr", Path::new("/usr"), false)?);
        for etc in ETC_BINDS {
            if Path::new(etc).exists() {
                mounts.push(bind(etc, Path::new(etc), false)?);
            }
        }
    }
    let tmp_size = format!("size={}", spec.limits.tmp_bytes.max(4096));
    mounts.push(mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777", &tmp_size])?);
    mounts.push(bind("/workspace", &spec.workspace, true)?);
    for b in &spec.binds {
        check_dest(&b.destination)?;
        if !b.source.is_absolute() {
            return Err(SandboxError::Invalid(format!(
                "bind source {} must be absolute",
                b.source.display()
            )));
        }
        mounts.push(bind(&b.destination, &b.source, b.writable)?);
    }

    let mut argv = spec.argv.clone();
    if let Some(init) = &spec.init {
        if !init.binary.is_absolute() {
            return Err(SandboxError::Invalid(format!(
                "init binary {} must be absolute",
                init.binary.display()
            )));
        }
        mounts.push(bind(crate::init::INIT_PATH, &init.binary, false)?);
        if init.secrets {
            let (uid, gid) = (format!("uid={}", spec.uid), format!("gid={}", spec.gid));
            mounts.push(mount(
                crate::init::SECRETS_DIR,
                "tmpfs",
                "tmpfs",
                &["nosuid", "nodev", "noexec", "mode=0700", "size=4m", &uid, &gid],
            )?);
        }
        if let Some((dir, _)) = &init.egress {
            mounts.push(bind(crate::init::EGRESS_DIR, dir, true)?);
        }
        if let Some(dir) = &init.agent {
            // Read-only: connecting to a socket needs no write access to
            // its directory, and nothing inside may put files there.
            mounts.push(bind(crate::agent::AGENT_DIR, dir, false)?);
        }
        if let Some((dir, forwards)) = &init.forwards {
            for f in forwards {
                if f.socket.is_empty() || f.socket.contains('/') || f.socket.starts_with('.') {
                    return Err(SandboxError::Invalid(format!("bad service socket name `{}`", f.socket)));
                }
            }
            // Read-only, like the agent's: connecting needs no write access.
            mounts.push(bind(crate::init::SERVICES_DIR, dir, false)?);
        }
        if let Some(dir) = &init.dial {
            mounts.push(bind(crate::init::DIAL_DIR, dir, false)?);
        }
        argv = crate::init::wrap_argv(init, &spec.argv);
    }

    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !spec.env.iter().any(|(k, _)| k == "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !spec.env.iter().any(|(k, _)| k == "HOME") {
        env.push("HOME=/tmp".into());
    }

    let process = process(argv, env, &spec.cwd, spec.uid, spec.gid)?;

    let ns = |t| LinuxNamespaceBuilder::default().typ(t).build();
    let namespaces = vec![
        ns(LinuxNamespaceType::Pid)?,
        ns(LinuxNamespaceType::Ipc)?,
        ns(LinuxNamespaceType::Uts)?,
        ns(LinuxNamespaceType::Mount)?,
        ns(LinuxNamespaceType::Network)?,
        ns(LinuxNamespaceType::Cgroup)?,
    ];
    // Limits live in kiln's parent cgroup; the runtime only gets a device
    // allow-list (deny all; runc adds its default null/zero/tty/... nodes).
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?])
        .build()?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(cgroups_path))
        .masked_paths(MASKED_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .readonly_paths(READONLY_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?;
    // Both tiers get the profile: runc installs it in the host kernel; runsc
    // (started with --oci-seccomp) enforces it inside the sentry, which e.g.
    // makes ptrace fail inside gVisor too.
    let mut profile = seccomp_profile()?;
    if isolation == Isolation::Gvisor {
        // The profile answers clone3 with ENOSYS so that libc falls back to
        // clone, whose flags the filter can see (CLONE_NEWUSER). runsc's
        // seccomp ignores `errnoRet` and answers EPERM, on which glibc's
        // posix_spawn gives up instead of falling back, so every program that
        // spawns with it fails. Inside gVisor clone3 is served by the sentry
        // and a user namespace there is the sentry's, not the host kernel's.
        if let Some(rules) = profile.syscalls().clone() {
            let kept = rules.into_iter().filter(|r| !r.names().iter().any(|n| n == "clone3")).collect();
            profile.set_syscalls(Some(kept));
        }
    }
    linux.set_seccomp(Some(profile));

    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(match &spec.root {
            // The job's writable root (an overlay over its image).
            Some(root) => {
                if !root.is_absolute() {
                    return Err(SandboxError::Invalid(format!("root {} must be absolute", root.display())));
                }
                RootBuilder::default().path(root).readonly(false).build()?
            }
            None => RootBuilder::default().path("rootfs").readonly(true).build()?,
        })
        .hostname("kiln")
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .build()?)
}

/// Writes the rootfs skeleton: empty dirs, merged-/usr symlinks, a minimal
/// generated `/etc`, and mount points for every mount of `oci`.
pub fn write_rootfs(rootfs: &Path, spec: &SandboxSpec, oci: &Spec) -> Result<()> {
    let mkdir = |p: &Path| fs::create_dir_all(p).map_err(io_err("create", p));
    let write = |p: &Path, s: &str| fs::write(p, s).map_err(io_err("write", p));
    mkdir(rootfs)?;
    for d in ["usr", "etc", "proc", "sys", "dev", "tmp", "workspace", "run", "kiln"] {
        mkdir(&rootfs.join(d))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
        ("lib32", "usr/lib32"),
        ("libx32", "usr/libx32"),
    ] {
        if Path::new("/usr").join(target.trim_start_matches("usr/")).exists() {
            let l = rootfs.join(link);
            std::os::unix::fs::symlink(target, &l).map_err(io_err("symlink", &l))?;
        }
    }
    // runc gives a tmpfs the mode of the directory it is mounted on.
    {
        use std::os::unix::fs::PermissionsExt;
        let tmp = rootfs.join("tmp");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).map_err(io_err("chmod", &tmp))?;
    }
    let etc = rootfs.join("etc");
    let mut passwd = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
    let mut group = String::from("root:x:0:\n");
    if spec.uid != 0 {
        let home = spec.env.iter().find(|(k, _)| k == "HOME").map(|(_, v)| v.as_str()).unwrap_or("/tmp");
        passwd.push_str(&format!("kiln:x:{}:{}:kiln:{home}:/bin/bash\n", spec.uid, spec.gid));
    }
    if spec.gid != 0 {
        group.push_str(&format!("kiln:x:{}:\n", spec.gid));
    }
    passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    group.push_str("nogroup:x:65534:\n");
    write(&etc.join("passwd"), &passwd)?;
    write(&etc.join("group"), &group)?;
    write(&etc.join("hosts"), "127.0.0.1\tlocalhost kiln\n::1\tlocalhost ip6-localhost\n")?;
    write(&etc.join("hostname"), "kiln\n")?;
    write(
        &etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\nprotocols: files\nservices: files\n",
    )?;
    // Mount points (directories, or empty files for file binds).
    for m in oci.mounts().iter().flatten() {
        let dest = m.destination().strip_prefix("/").unwrap_or(m.destination());
        let target = rootfs.join(dest);
        if target.exists() || target.symlink_metadata().is_ok() {
            continue;
        }
        let src_is_file =
            m.typ().as_deref() == Some("bind") && m.source().as_ref().map(|s| s.is_file()).unwrap_or(false);
        if src_is_file {
            if let Some(parent) = target.parent() {
                mkdir(parent)?;
            }
            write(&target, "")?;
        } else {
            mkdir(&target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bind, Limits};
    use oci_spec::runtime::LinuxSeccompAction;

    fn sample() -> SandboxSpec {
        SandboxSpec {
            id: "kiln-unit-1".into(),
            argv: vec!["make".into(), "test".into()],
            env: vec![("CI".into(), "1".into())],
            cwd: "/workspace/src".into(),
            workspace: "/srv/kiln/ws/job1".into(),
            binds: vec![Bind {
                source: "/srv/kiln/cache".into(),
                destination: "/cache".into(),
                writable: false,
            }],
            limits: Limits { memory_bytes: 512 << 20, pids: 256, cpus: 2.0, tmp_bytes: 64 << 20 },
            uid: 1000,
            gid: 1001,
            init: None,
            root: None,
        }
    }

    fn find<'a>(spec: &'a Spec, dest: &str) -> Option<&'a Mount> {
        spec.mounts().iter().flatten().find(|m| m.destination() == Path::new(dest))
    }

    fn opts(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    #[test]
    fn spec_is_locked_down() {
        for iso in [Isolation::Gvisor, Isolation::Container] {
            let s = build_spec(iso, &sample(), "/kiln/kiln-unit-1/step").unwrap();
            let root = s.root().as_ref().unwrap();
            assert_eq!(root.readonly(), Some(true));
            let p = s.process().as_ref().unwrap();
            assert_eq!(p.user().uid(), 1000);
            assert_eq!(p.user().gid(), 1001);
            assert_eq!(p.user().additional_gids().as_deref(), Some(&[][..]));
            assert_eq!(p.no_new_privileges(), Some(true));
            assert_eq!(p.oom_score_adj(), Some(1000));
            assert_eq!(p.terminal(), Some(false));
            let caps = p.capabilities().as_ref().unwrap();
            for set in
                [caps.bounding(), caps.effective(), caps.inheritable(), caps.permitted(), caps.ambient()]
            {
                assert_eq!(set.as_ref().map(|s| s.len()), Some(0));
            }
            let env = p.env().clone().unwrap();
            assert!(env.contains(&"CI=1".to_string()));
            assert!(env.iter().any(|e| e.starts_with("PATH=")));
            assert_eq!(env.len(), 3, "{env:?}");
            assert_eq!(p.cwd(), Path::new("/workspace/src"));
            let rl = p.rlimits().clone().unwrap();
            assert!(rl.iter().any(|r| r.typ() == PosixRlimitType::RlimitCore && r.hard() == 0));
            assert!(rl.iter().any(|r| r.typ() == PosixRlimitType::RlimitNofile));

            let ws = find(&s, "/workspace").unwrap();
            assert_eq!(ws.source().as_deref(), Some(Path::new("/srv/kiln/ws/job1")));
            assert!(opts(ws).contains(&"rw".into()));
            let usr = find(&s, "/usr").unwrap();
            assert!(["ro", "nosuid", "nodev"].iter().all(|o| opts(usr).contains(&o.to_string())));
            let cache = find(&s, "/cache").unwrap();
            assert!(opts(cache).contains(&"ro".into()));
            let tmp = find(&s, "/tmp").unwrap();
            assert_eq!(tmp.typ().as_deref(), Some("tmpfs"));
            assert!(opts(tmp).contains(&format!("size={}", 64u64 << 20)));
            assert!(opts(find(&s, "/sys").unwrap()).contains(&"ro".into()));
            // The only writable host binds are the workspace and writable spec binds.
            for m in s.mounts().iter().flatten() {
                if m.typ().as_deref() == Some("bind") && opts(m).contains(&"rw".into()) {
                    assert_eq!(m.destination(), Path::new("/workspace"));
                }
                let src = m.source().clone().unwrap_or_default();
                for bad in ["/root", "/home", "/var/lib", "/work", "/run", "/etc/shadow"] {
                    assert!(!src.starts_with(bad), "host path {bad} mounted: {m:?}");
                }
                if m.typ().as_deref() == Some("bind") {
                    let allowed =
                        ["/usr", "/etc/alternatives", "/etc/ssl/certs", "/etc/ld.so.cache", "/srv/kiln"];
                    assert!(allowed.iter().any(|a| src.starts_with(a)), "unexpected bind {m:?}");
                }
            }

            let linux = s.linux().as_ref().unwrap();
            assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/kiln/kiln-unit-1/step")));
            let ns: Vec<_> = linux.namespaces().clone().unwrap().iter().map(|n| n.typ()).collect();
            for t in [
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Network,
                LinuxNamespaceType::Cgroup,
            ] {
                assert!(ns.contains(&t), "{t:?} missing");
            }
            assert!(!ns.contains(&LinuxNamespaceType::User));
            assert!(linux.namespaces().clone().unwrap().iter().all(|n| n.path().is_none()));
            let masked = linux.masked_paths().clone().unwrap();
            for m in [
                "/proc/kcore",
                "/proc/keys",
                "/proc/timer_list",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/acpi",
                "/proc/scsi",
            ] {
                assert!(masked.contains(&m.to_string()), "{m} not masked");
            }
            let ro = linux.readonly_paths().clone().unwrap();
            for m in ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"] {
                assert!(ro.contains(&m.to_string()), "{m} not read-only");
            }
            assert!(linux.seccomp().is_some());
            assert_eq!(s.hostname().as_deref(), Some("kiln"));
        }
    }

    #[test]
    fn seccomp_profile_denies_dangerous_syscalls() {
        let p = seccomp_profile().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        let rules = p.syscalls().clone().unwrap();
        let denied = |name: &str| {
            rules.iter().any(|r| {
                r.action() == LinuxSeccompAction::ScmpActErrno
                    && r.args().is_none()
                    && r.names().iter().any(|n| n == name)
            })
        };
        for name in [
            "mount",
            "umount2",
            "pivot_root",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "unshare",
            "setns",
            "swapon",
            "swapoff",
            "reboot",
            "open_by_handle_at",
            "name_to_handle_at",
            "userfaultfd",
            "iopl",
            "ioperm",
            "acct",
            "quotactl",
            "settimeofday",
            "clock_settime",
            "adjtimex",
            "syslog",
            "lookup_dcookie",
            "vhangup",
            "fanotify_init",
        ] {
            assert!(denied(name), "{name} not denied");
        }
        let conditional: Vec<_> = rules.iter().filter(|r| r.args().is_some()).collect();
        assert!(conditional
            .iter()
            .any(|r| r.names() == &["socket".to_string()] && r.args().as_ref().unwrap()[0].value() == 17));
        assert!(conditional
            .iter()
            .any(|r| r.names() == &["clone".to_string()]
                && r.args().as_ref().unwrap()[0].value() == 0x1000_0000));
    }

    #[test]
    fn rejects_bad_input() {
        let mut s = sample();
        s.binds[0].destination = "../etc".into();
        assert!(build_spec(Isolation::Container, &s, "/x").is_err());
        let mut s = sample();
        s.workspace = "relative".into();
        assert!(build_spec(Isolation::Container, &s, "/x").is_err());
        let mut s = sample();
        s.argv.clear();
        assert!(build_spec(Isolation::Gvisor, &s, "/x").is_err());
    }

    #[test]
    fn rootfs_skeleton() {
        let dir = std::env::temp_dir().join(format!("kiln-unit-rootfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = sample();
        let oci = build_spec(Isolation::Container, &s, "/x").unwrap();
        write_rootfs(&dir, &s, &oci).unwrap();
        let passwd = fs::read_to_string(dir.join("etc/passwd")).unwrap();
        assert!(passwd.contains("kiln:x:1000:1001:kiln:/tmp:/bin/bash"));
        assert!(fs::read_to_string(dir.join("etc/group")).unwrap().contains("kiln:x:1001:"));
        assert!(fs::read_to_string(dir.join("etc/hosts")).unwrap().contains("localhost"));
        assert!(dir.join("etc/nsswitch.conf").exists());
        assert!(!dir.join("etc/shadow").exists());
        assert_eq!(fs::read_link(dir.join("bin")).unwrap(), Path::new("usr/bin"));
        assert!(dir.join("workspace").is_dir() && dir.join("cache").is_dir());
        fs::remove_dir_all(&dir).unwrap();
    }
}
