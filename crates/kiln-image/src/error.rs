//! Errors of image building, lookup and extraction.

use std::path::PathBuf;

/// Why an image could not be built, found or extracted.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A recipe field is not acceptable (suite, package, mirror, name).
    #[error("invalid image recipe: {0}")]
    Recipe(String),
    /// No image by that name or digest.
    #[error("no image `{0}` here (build it with `kiln image build {0}` or list them with `kiln image ls`)")]
    NotFound(String),
    /// A tool the build needs is not installed.
    #[error("`{tool}` is not installed: {hint}")]
    MissingTool { tool: &'static str, hint: &'static str },
    /// mmdebstrap (or another tool) failed.
    #[error("{tool} failed ({status}): {tail}")]
    Tool { tool: &'static str, status: String, tail: String },
    /// A layer holds an entry that extraction refuses.
    #[error("layer {layer}: entry `{path}` refused: {reason}")]
    Refused { layer: String, path: String, reason: String },
    /// A layer exceeds an extraction limit.
    #[error("layer {layer}: {what} exceeds the limit of {limit}")]
    Limit { layer: String, what: &'static str, limit: u64 },
    /// A pull from a registry failed or was refused.
    #[error("pull: {0}")]
    Pull(String),
    /// The image manifest does not parse or is inconsistent.
    #[error("image manifest {digest}: {reason}")]
    Manifest { digest: String, reason: String },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    /// The tar stream is malformed.
    #[error("layer {layer}: {source}")]
    Archive { layer: String, source: kiln_store::ArchiveError },
    /// Local file system I/O.
    #[error("{op} `{path}`: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
}

/// Result alias.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { op, path, source }
}
