//! The logic of kiln's zero-config build (`kiln build <repo>`), over a fetched source tree and
//! without sandboxes: the engine runs what this crate decides.
//!
//! * [`detect`](mod@detect): which package manager a repository uses, its lockfiles, the clean
//!   frozen-lockfile install command, the build command and where the output usually is.
//! * [`config`]: the optional `kiln.toml` that overrides any of that.
//! * [`policy`]: repository configuration and lockfile entries that would fetch from anywhere
//!   but an allowed registry, reported before the install runs.
//! * [`output`]: the build's output directory, found and checked to stay inside the tree.
//!
//! # The tree is untrusted
//!
//! It was fetched from a repository kiln does not trust. Every read here goes through one
//! module that opens each path component with `O_NOFOLLOW` from its parent directory's
//! descriptor, reads only regular files, caps sizes (16 MiB for lockfiles, 1 MiB for
//! configuration and manifests) and names the file in every error.
//!
//! # Home, caches and the workspace
//!
//! Sandboxes have a read-only root, and the workspace is the only writable place. Package
//! managers want a writable `$HOME` for their caches and settings, so install and build steps
//! should run with `HOME=<repo>/`[`HOME_DIR`]. The dependency cache then holds what
//! [`Manager::cache_paths`] lists, relative to the repository root: the installed tree the build
//! needs (`node_modules`, `.venv`, `.kiln/home/.cargo/registry`, ...), not the managers'
//! download caches (`~/.npm`, `~/.cache/pip`), which would double the bytes for nothing once the
//! install is skipped. A repository that ships its own `.kiln/` is refused by
//! [`policy::check_repo_config`], so it cannot pre-seed that home with settings (`.npmrc`,
//! `.cargo/config.toml`) the policy checks would not see.
//!
//! Python virtual environments hold absolute paths (`pyvenv.cfg`, script shebangs): a cached
//! `.venv` is only valid when the repository sits at the same absolute path in every build's
//! sandbox (a fixed mount point such as `/workspace`).

pub mod config;
pub mod detect;
mod fsread;
pub mod output;
pub mod pipeline;
pub mod policy;
mod yaml;

pub use config::KilnToml;

/// A text file of the tree, read like every other file here (no links,
/// at most a lockfile's size); `None` if it is absent.
pub fn read_text(root: &std::path::Path, rel: &str) -> Result<Option<String>, BuildError> {
    fsread::read_text(root, rel, fsread::LOCKFILE_CAP)
}

/// SHA-256 (hex) of a file of the tree, read like every other file here:
/// no links followed, at most a lockfile's size; `None` if it is absent.
pub fn file_digest(root: &std::path::Path, rel: &str) -> Result<Option<String>, BuildError> {
    use sha2::Digest as _;
    Ok(fsread::read(root, rel, fsread::LOCKFILE_CAP)?.map(|b| hex::encode(sha2::Sha256::digest(&b))))
}
pub use detect::{detect, Detection, Manager, OutputCandidate};
pub use kiln_scan::OutputKind;
pub use output::{locate, Output};
pub use policy::Violation;

/// Where install and build steps should point `$HOME`, relative to the repository root.
pub const HOME_DIR: &str = ".kiln/home";

/// Where kiln-chosen build outputs go (Go binaries), relative to the repository root.
pub const OUT_DIR: &str = ".kiln/out";

/// Why a decision about the tree could not be made. Every variant names the file or path.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading failed.
    #[error("{file}: {source}")]
    Io {
        /// The file, relative to the repository root.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A symbolic link where kiln reads: it never follows links in a fetched tree.
    #[error("{file}: is a symbolic link; kiln does not follow links in a fetched repository")]
    Symlink {
        /// The link, relative to the repository root.
        file: String,
    },
    /// Not a regular file (a directory, a FIFO, a device).
    #[error("{file}: is not a regular file")]
    NotRegular {
        /// The path, relative to the repository root.
        file: String,
    },
    /// Over the size cap for its kind of file.
    #[error("{file}: larger than {limit} bytes")]
    TooLarge {
        /// The file, relative to the repository root.
        file: String,
        /// The cap.
        limit: u64,
    },
    /// A syntax or validation error at a known position.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        /// The file, relative to the repository root.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A file that cannot be parsed, without a position.
    #[error("{file}: {message}")]
    Parse {
        /// The file, relative to the repository root.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A path that would leave the repository or cross a link.
    #[error("path {path:?}: {reason}")]
    Path {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// The build left no output where kiln looked.
    #[error("no build output found; looked for {}", looked_for.join(", "))]
    OutputMissing {
        /// Every path looked at, relative to the repository root, in order.
        looked_for: Vec<String>,
    },
    /// A webhook URL that cannot be used.
    #[error("webhook URL: {reason}")]
    WebhookUrl {
        /// Why (the URL itself is left out: it may carry a token).
        reason: String,
    },
}

/// What the crate's tests share.
#[cfg(test)]
pub(crate) mod test_support {
    /// A scratch repository holding `files` (`(path, body)`).
    pub(crate) fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, body) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        dir
    }
}
