use std::io;
use std::path::PathBuf;

use crate::Isolation;

/// Everything that can go wrong while preparing, running or tearing down a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The OCI runtime binary of the requested tier is not installed.
    #[error("isolation tier {tier:?} needs `{binary}`, which was not found on PATH, /usr/sbin or /usr/bin; install it with: {hint}")]
    RuntimeMissing { tier: Isolation, binary: &'static str, hint: &'static str },
    /// A setting of the runtime (an environment variable) is not valid.
    #[error("{what}: {reason}")]
    Config { what: &'static str, reason: String },
    /// A runtime (or helper) command failed.
    #[error("command `{command}` failed: {stderr}")]
    Runtime { command: String, stderr: String },
    /// The probe sandbox did not prove the tier it claims.
    #[error("runtime verification of tier {tier:?} failed: {reason}")]
    Verify { tier: Isolation, reason: String },
    /// A cgroup file or directory could not be created, written, read or removed.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The host does not provide what the sandbox needs (root, cgroup controllers...).
    #[error("unsupported host: {0}")]
    Host(String),
    /// Filesystem work on the bundle / workspace failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The OCI spec could not be built or written.
    #[error("OCI spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    /// The embedded seccomp profile is invalid.
    #[error("embedded seccomp profile: {0}")]
    Seccomp(#[from] serde_json::Error),
    /// Invalid input (bad id, relative path...).
    #[error("invalid sandbox spec: {0}")]
    Invalid(String),
    /// Workspace (loop-mounted disk image) management failed.
    #[error("workspace {path}: {reason}")]
    Workspace { path: PathBuf, reason: String },
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> SandboxError {
    let path = path.into();
    move |source| SandboxError::Io { action, path, source }
}
