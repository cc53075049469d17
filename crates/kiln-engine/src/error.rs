//! Errors of the engine itself (not of the user's steps: those are results).

use std::path::PathBuf;

/// Something went wrong in kiln, not in the build's own commands.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("state store at {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] kiln_sandbox::SandboxError),
    /// The build could not be set up (runtime, init, key, store).
    #[error("{0}")]
    Setup(String),
    #[error("no build `{0}` in the state store")]
    UnknownBuild(String),
}

impl EngineError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io { what, path: path.into(), source }
    }
}
