//! Locating and verifying the OCI runtime of a tier.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Result, SandboxError};
use crate::{Isolation, Limits, Sandbox, SandboxSpec};

/// Base of kiln's private runtime state dirs (`--root`), one per tier.
pub const STATE_BASE: &str = "/run/kiln";

/// A located OCI runtime binary for one isolation tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    isolation: Isolation,
    binary: PathBuf,
    state_root: PathBuf,
    /// gVisor's platform (how the sentry intercepts a step's system calls);
    /// `None`: runsc's default (systrap).
    platform: Option<GvisorPlatform>,
}

/// How gVisor's sentry intercepts the system calls of what runs in a
/// sandbox (`runsc --platform`). Every platform keeps the same boundary:
/// the step's calls are served by the sentry, never by the host kernel.
/// They differ in cost per call, per fork and per page fault, which is
/// what `kiln bench --profile` measures (docs/sandbox.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GvisorPlatform {
    /// seccomp traps and a stub process per address space (runsc's default).
    Systrap,
    /// ptrace: slower system calls, cheaper forks on some hosts.
    Ptrace,
    /// hardware virtualisation (`/dev/kvm`): the cheapest system calls, on
    /// bare metal; needs nested virtualisation inside a VM.
    Kvm,
}

impl GvisorPlatform {
    pub const ALL: [GvisorPlatform; 3] =
        [GvisorPlatform::Systrap, GvisorPlatform::Ptrace, GvisorPlatform::Kvm];

    /// The name runsc takes.
    pub fn name(self) -> &'static str {
        match self {
            GvisorPlatform::Systrap => "systrap",
            GvisorPlatform::Ptrace => "ptrace",
            GvisorPlatform::Kvm => "kvm",
        }
    }
}

impl std::str::FromStr for GvisorPlatform {
    type Err = SandboxError;

    fn from_str(s: &str) -> Result<GvisorPlatform> {
        GvisorPlatform::ALL.into_iter().find(|p| p.name() == s.trim()).ok_or_else(|| SandboxError::Config {
            what: PLATFORM_ENV,
            reason: format!("`{s}` is not a gVisor platform: one of systrap, ptrace, kvm"),
        })
    }
}

/// How long the probe sandbox of [`Runtime::verify`] may take.
const VERIFY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// The gVisor platform every sandbox of this process uses (unset: runsc's
/// default, systrap).
pub const PLATFORM_ENV: &str = "KILN_RUNSC_PLATFORM";

/// What [`Runtime::verify`] found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub isolation: Isolation,
    pub binary: PathBuf,
    /// First line of `<runtime> --version`, e.g. `runsc version 0.0~20240729.0`.
    pub version: String,
    /// What the probe sandbox reported about its kernel.
    pub kernel: String,
}

impl Isolation {
    /// The runtime binary name of the tier.
    pub fn binary_name(self) -> &'static str {
        match self {
            Isolation::Gvisor => "runsc",
            Isolation::Container => "runc",
        }
    }

    /// How to install the tier's runtime on Debian.
    pub fn install_hint(self) -> &'static str {
        match self {
            Isolation::Gvisor => "apt-get install -t bookworm-backports runsc",
            Isolation::Container => "apt-get install runc",
        }
    }
}

/// Environment variables that name a runtime binary explicitly (for hosts
/// where it lives off the usual paths). When set, nothing else is searched.
pub const RUNSC_ENV: &str = "KILN_RUNSC";
pub const RUNC_ENV: &str = "KILN_RUNC";

fn find_binary(name: &str) -> Option<PathBuf> {
    let explicit = match name {
        "runsc" => std::env::var_os(RUNSC_ENV),
        "runc" => std::env::var_os(RUNC_ENV),
        _ => None,
    };
    if let Some(p) = explicit {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Runs a command to completion, mapping failure to [`SandboxError::Runtime`].
pub(crate) fn run_checked(cmd: &mut Command) -> Result<String> {
    let desc = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SandboxError::Runtime { command: desc.clone(), stderr: e.to_string() })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(SandboxError::Runtime {
            command: desc,
            stderr: format!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status),
        })
    }
}

impl Runtime {
    /// Finds the runtime binary of `isolation`. Never falls back to another tier.
    pub fn locate(isolation: Isolation) -> Result<Runtime> {
        let name = isolation.binary_name();
        let binary = find_binary(name).ok_or(SandboxError::RuntimeMissing {
            tier: isolation,
            binary: name,
            hint: isolation.install_hint(),
        })?;
        let mut rt = Runtime::with_binary(isolation, binary);
        if isolation == Isolation::Gvisor {
            if let Some(p) = std::env::var_os(PLATFORM_ENV).filter(|v| !v.is_empty()) {
                rt.platform = Some(p.to_string_lossy().parse()?);
            }
        }
        Ok(rt)
    }

    /// A runtime with an explicit binary (no lookup).
    pub fn with_binary(isolation: Isolation, binary: PathBuf) -> Runtime {
        Runtime {
            isolation,
            binary,
            state_root: Path::new(STATE_BASE).join(isolation.binary_name()),
            platform: None,
        }
    }

    /// The same runtime on gVisor platform `p` (no effect on runc).
    pub fn with_platform(mut self, p: GvisorPlatform) -> Runtime {
        if self.isolation == Isolation::Gvisor {
            self.platform = Some(p);
        }
        self
    }

    /// The gVisor platform asked for, if any (`None`: runsc's default).
    pub fn platform(&self) -> Option<GvisorPlatform> {
        self.platform
    }

    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// kiln's private `--root` state directory for this runtime.
    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// `<runtime> --root <state> [tier flags]`: the prefix of every invocation.
    pub(crate) fn base_command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.state_root);
        if self.isolation == Isolation::Gvisor {
            // Loopback only (runsc refuses to run in the host netns otherwise),
            // and no rootfs overlay: the read-only root must really be read-only.
            // --oci-seccomp: enforce the spec's seccomp profile inside the sentry.
            cmd.arg("--network=none").arg("--overlay2=none").arg("--oci-seccomp");
            if let Some(p) = self.platform {
                cmd.arg(format!("--platform={}", p.name()));
            }
        }
        cmd
    }

    /// First line of `<runtime> --version`.
    pub fn version(&self) -> Result<String> {
        let out = run_checked(Command::new(&self.binary).arg("--version"))?;
        Ok(out.lines().next().unwrap_or("").trim().to_string())
    }

    /// Ids of the containers in kiln's state dir.
    pub fn list(&self) -> Result<Vec<String>> {
        if !self.state_root.exists() {
            return Ok(Vec::new());
        }
        let out = run_checked(self.base_command().arg("list"))?;
        Ok(out.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
    }

    /// Runs a tiny probe sandbox and checks that the tier is what it claims.
    ///
    /// gVisor: the sandbox kernel log must say "Starting gVisor".
    /// Container: it must not, `/proc/version` must equal the host's, and
    /// `runc --version` must answer.
    pub fn verify(&self, scratch: &Path) -> Result<RuntimeInfo> {
        self.verify_within(scratch, VERIFY_DEADLINE)
    }

    /// [`Runtime::verify`] with a deadline of its own for the probe sandbox.
    pub fn verify_within(&self, scratch: &Path, deadline: std::time::Duration) -> Result<RuntimeInfo> {
        let version = self.version()?;
        let id = format!("kiln-verify-{}-{}", std::process::id(), unique());
        let ws = scratch.join(format!("{id}.ws"));
        std::fs::create_dir_all(&ws).map_err(crate::error::io_err("create", &ws))?;
        let spec = SandboxSpec {
            id,
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "cat /proc/version; dmesg 2>/dev/null | head -n 3; echo kiln-probe-ok".into(),
            ],
            env: vec![],
            cwd: "/".into(),
            workspace: ws.clone(),
            binds: vec![],
            limits: Limits { memory_bytes: 256 << 20, pids: 64, cpus: 1.0, tmp_bytes: 1 << 20 },
            uid: 0,
            gid: 0,
            init: None,
            root: None,
        };
        let sb = Sandbox::prepare_with(self, &spec, scratch, false)?;
        let runtime_err = |e: std::io::Error| SandboxError::Runtime {
            command: format!("{:?}", sb.command()),
            stderr: e.to_string(),
        };
        let mut child =
            sb.command().stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(runtime_err)?;
        // A runtime that cannot start a sandbox here may hang rather than
        // fail (the kvm platform inside a VM without nested virtualisation
        // spins): the probe has a deadline, and the tier is refused past it.
        let until = std::time::Instant::now() + deadline;
        let timed_out = loop {
            match child.try_wait().map_err(runtime_err)? {
                Some(_) => break false,
                None if std::time::Instant::now() >= until => {
                    let _ = child.kill();
                    break true;
                }
                None => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        let out = child.wait_with_output().map_err(runtime_err)?;
        let _ = sb.finish(out.status);
        let _ = std::fs::remove_dir_all(&ws);
        if timed_out {
            let platform = self.platform.map(|p| format!(" on platform {}", p.name())).unwrap_or_default();
            return Err(SandboxError::Verify {
                tier: self.isolation,
                reason: format!(
                    "the probe sandbox did not finish within {:?}{platform}: this runtime cannot run sandboxes here",
                    deadline
                ),
            });
        }
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let fail = |reason: String| SandboxError::Verify { tier: self.isolation, reason };
        if !out.status.success() || !stdout.contains("kiln-probe-ok") {
            return Err(fail(format!(
                "probe sandbox failed ({}): stdout={stdout:?} stderr={:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let gvisor = stdout.contains("gVisor");
        let kernel = stdout.lines().next().unwrap_or("").to_string();
        match self.isolation {
            Isolation::Gvisor if !gvisor => {
                return Err(fail(format!("sandbox kernel does not identify as gVisor: {stdout:?}")))
            }
            Isolation::Container => {
                let host = std::fs::read_to_string("/proc/version").unwrap_or_default();
                if gvisor || host.trim() != kernel.trim() {
                    return Err(fail(format!(
                        "expected the shared host kernel {:?}, sandbox reported {stdout:?}",
                        host.trim()
                    )));
                }
                if !version.starts_with("runc") {
                    return Err(fail(format!("unexpected runc version output {version:?}")));
                }
            }
            Isolation::Gvisor => {}
        }
        Ok(RuntimeInfo { isolation: self.isolation, binary: self.binary.clone(), version, kernel })
    }

    /// [`Runtime::verify`], once per runtime binary and boot: the proof is
    /// kept in kiln's runtime state dir (a tmpfs under `/run`, so a reboot
    /// proves again), keyed by the binary's identity (device, inode, size,
    /// modification and change times, resolved through links), kiln's
    /// version and the gVisor platform. A replaced or touched binary,
    /// another kiln or another platform proves again. Saves a probe sandbox (~0.3 s under gVisor) per `kiln run`.
    pub fn verify_cached(&self, scratch: &Path) -> Result<RuntimeInfo> {
        // A platform is part of what was proven: another one proves again.
        let platform = self.platform.map(GvisorPlatform::name).unwrap_or("default");
        let key = binary_identity(&self.binary).map(|k| format!("{k} platform={platform}"));
        let file = self.state_root.join("verified");
        if let (Some(key), Ok(kept)) = (&key, std::fs::read_to_string(&file)) {
            let mut lines = kept.lines();
            if lines.next() == Some(key.as_str()) {
                let version = lines.next().unwrap_or_default().to_string();
                let kernel = lines.next().unwrap_or_default().to_string();
                return Ok(RuntimeInfo {
                    isolation: self.isolation,
                    binary: self.binary.clone(),
                    version,
                    kernel,
                });
            }
        }
        let info = self.verify(scratch)?;
        if let Some(key) = key {
            let single = |s: &str| s.replace(['\n', '\r'], " ");
            let text = format!("{key}\n{}\n{}\n", single(&info.version), single(&info.kernel));
            // Best effort: without the file the next run proves again.
            let tmp = self.state_root.join(format!(".verified-{}", std::process::id()));
            let written = std::fs::create_dir_all(&self.state_root)
                .and_then(|_| std::fs::write(&tmp, text))
                .and_then(|_| std::fs::rename(&tmp, &file));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(info)
    }
}

/// What identifies a runtime binary's file: if any of it changes, the file
/// is not the one that was proven.
fn binary_identity(binary: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(binary).ok()?;
    Some(format!(
        "kiln {} {} dev={} ino={} size={} mtime={}.{} ctime={}.{}",
        env!("CARGO_PKG_VERSION"),
        binary.display(),
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// A process-unique counter for generated ids.
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_platform_reaches_runsc_and_only_runsc() {
        let args = |rt: &Runtime| -> Vec<String> {
            rt.base_command().get_args().map(|a| a.to_string_lossy().into_owned()).collect()
        };
        let runsc = Runtime::with_binary(Isolation::Gvisor, "/usr/bin/runsc".into());
        assert!(!args(&runsc).iter().any(|a| a.starts_with("--platform")), "runsc's default unless asked");
        let ptrace = runsc.clone().with_platform(GvisorPlatform::Ptrace);
        assert!(args(&ptrace).contains(&"--platform=ptrace".to_string()));
        // The boundary flags stay whatever the platform.
        for flag in ["--network=none", "--overlay2=none", "--oci-seccomp"] {
            assert!(args(&ptrace).contains(&flag.to_string()), "{flag}");
        }
        let runc = Runtime::with_binary(Isolation::Container, "/usr/bin/runc".into())
            .with_platform(GvisorPlatform::Kvm);
        assert_eq!(runc.platform(), None);
        assert!(!args(&runc).iter().any(|a| a.starts_with("--platform")));
    }

    #[test]
    fn an_unknown_platform_is_refused_by_name() {
        assert_eq!("kvm".parse::<GvisorPlatform>().unwrap(), GvisorPlatform::Kvm);
        let e = "hypervisor".parse::<GvisorPlatform>().unwrap_err().to_string();
        assert!(e.contains(PLATFORM_ENV) && e.contains("`hypervisor`") && e.contains("systrap"), "{e}");
    }

    #[test]
    fn a_replaced_or_touched_binary_is_proven_again() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("runsc");
        std::fs::write(&bin, "one").unwrap();
        let first = binary_identity(&bin).unwrap();
        assert_eq!(binary_identity(&bin).unwrap(), first);
        // Same size, new content: the times differ.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&bin, "two").unwrap();
        assert_ne!(binary_identity(&bin).unwrap(), first);
        // Replaced by another file (another inode).
        let other = d.path().join("other");
        std::fs::write(&other, "two").unwrap();
        let before = binary_identity(&bin).unwrap();
        std::fs::rename(&other, &bin).unwrap();
        assert_ne!(binary_identity(&bin).unwrap(), before);
        assert!(binary_identity(&d.path().join("missing")).is_none());
    }
}
