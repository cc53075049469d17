//! Error and audit-event types.

use crate::digest::Digest;

/// Something noteworthy happened that the caller did not get as an error value
/// (or got only as a miss): reported through [`crate::Store::events`] and the optional hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A blob failed digest/size verification on read. It was moved from
    /// `path` to `<tenant>/quarantine/sha256/<hex>` and its bytes were not returned.
    Quarantined {
        /// Tenant namespace the blob lived in.
        tenant: String,
        /// The digest the blob was stored under (not what it hashes to now).
        digest: Digest,
        /// Object path the blob was found at.
        path: String,
    },
    /// A tree named by a cache entry could not be restored although nothing
    /// failed verification (a blob it lists is gone, or a size disagrees):
    /// the entry is treated as a miss, and reported.
    Unrestorable {
        /// Tenant namespace of the entry.
        tenant: String,
        /// The tree that failed.
        tree: String,
        /// What went wrong.
        reason: String,
    },
}

impl std::fmt::Display for StoreEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreEvent::Quarantined { tenant, digest, .. } => {
                write!(f, "blob {digest} of tenant `{tenant}` failed verification and was quarantined")
            }
            StoreEvent::Unrestorable { tenant, tree, reason } => {
                write!(f, "tree {tree} of tenant `{tenant}` cannot be restored: {reason}")
            }
        }
    }
}

/// Why a tree (manifest or archive) was refused. Every variant names the offending path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// Path is absolute.
    #[error("path `{path}` is absolute")]
    AbsolutePath { path: String },
    /// Path has a `..` component.
    #[error("path `{path}` contains a `..` component")]
    DotDot { path: String },
    /// Path is empty or has an empty or `.` component.
    #[error("path `{path}` has an empty or `.` component")]
    EmptyComponent { path: String },
    /// Path contains a NUL byte.
    #[error("path `{path}` contains a NUL byte")]
    NulByte { path: String },
    /// Path (or one component) is longer than allowed.
    #[error("path `{path}` exceeds the length limit ({limit} bytes)")]
    PathTooLong { path: String, limit: usize },
    /// Path is deeper than allowed.
    #[error("path `{path}` exceeds the depth limit ({limit} components)")]
    TooDeep { path: String, limit: usize },
    /// Same path appears twice.
    #[error("duplicate entry `{path}`")]
    DuplicatePath { path: String },
    /// Path lies beneath a symlink entry.
    #[error("entry `{path}` lies beneath symlink `{symlink}`")]
    UnderSymlink { path: String, symlink: String },
    /// Path lies beneath a regular-file entry.
    #[error("entry `{path}` lies beneath non-directory `{parent}`")]
    UnderNonDirectory { path: String, parent: String },
    /// Symlink target is absolute.
    #[error("symlink `{path}` has absolute target `{target}`")]
    SymlinkAbsolute { path: String, target: String },
    /// Symlink target resolves outside the tree.
    #[error("symlink `{path}` target `{target}` escapes the tree")]
    SymlinkEscapes { path: String, target: String },
    /// Symlink target is empty, contains NUL, or loops.
    #[error("symlink `{path}` has an invalid target: {reason}")]
    SymlinkInvalid { path: String, reason: String },
    /// Hard link to something that is not an earlier regular file of the same archive.
    #[error("hard link `{path}` points to `{target}`, which is not an earlier regular file in the archive")]
    HardLinkOutside { path: String, target: String },
    /// Device, FIFO, socket, or unknown entry type.
    #[error("`{path}` is a special file ({kind}); only regular files, directories and symlinks are allowed")]
    SpecialFile { path: String, kind: String },
    /// Non-UTF-8 file name (the manifest stores UTF-8 paths).
    #[error("`{path}` is not valid UTF-8")]
    NonUtf8Path { path: String },
    /// Entry-count limit exceeded.
    #[error("too many entries: `{path}` would exceed the limit of {limit}")]
    TooManyEntries { path: String, limit: u64 },
    /// Total-bytes limit exceeded.
    #[error("too many bytes: `{path}` would exceed the limit of {limit} bytes")]
    TooManyBytes { path: String, limit: u64 },
    /// Restore target exists and is not an empty directory.
    #[error("restore target `{path}` is not an empty directory")]
    TargetNotEmpty { path: String },
    /// Manifest is structurally wrong (bad JSON, unknown version, size mismatch...).
    #[error("bad manifest: {reason}")]
    BadManifest { reason: String },
}

/// Why a tar archive was refused by the strict reader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// Archive ended inside a header or data.
    #[error("archive truncated at offset {offset}")]
    Truncated { offset: u64 },
    /// Header checksum does not match.
    #[error("header checksum mismatch at offset {offset}")]
    BadChecksum { offset: u64 },
    /// Header is not ustar/GNU.
    #[error("header at offset {offset} is not ustar (magic {magic:?})")]
    BadMagic { offset: u64, magic: String },
    /// A numeric header field is malformed.
    #[error("malformed numeric field `{field}` at offset {offset}")]
    BadNumber { offset: u64, field: &'static str },
    /// A PAX extended header is malformed.
    #[error("malformed PAX header at offset {offset}: {reason}")]
    BadPax { offset: u64, reason: String },
    /// PAX `size` disagrees with the (nonzero) ustar size field.
    #[error("PAX size {pax} disagrees with ustar size {ustar} for `{path}`")]
    SizeMismatch { path: String, pax: u64, ustar: u64 },
    /// Directory/link entry carries data.
    #[error("entry `{path}` of type {kind} carries {size} data bytes")]
    UnexpectedData { path: String, kind: String, size: u64 },
    /// Extension header too large.
    #[error("extension header at offset {offset} is too large ({size} bytes)")]
    HeaderTooLarge { offset: u64, size: u64 },
    /// Non-zero data after the end-of-archive marker, or a dangling extension header.
    #[error("garbage at offset {offset}: {reason}")]
    Garbage { offset: u64, reason: String },
    /// Entry type not supported.
    #[error("unsupported entry type {kind:?} for `{path}`")]
    Unsupported { path: String, kind: char },
    /// A name is not valid UTF-8.
    #[error("entry name at offset {offset} is not valid UTF-8")]
    NonUtf8 { offset: u64 },
    /// I/O error reading the archive.
    #[error("reading archive: {0}")]
    Io(String),
}

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A blob failed verification; it was quarantined and no data was returned.
    #[error("blob {digest} at `{path}` is corrupt (content does not match its digest); quarantined")]
    Corrupt { digest: Digest, path: String },
    /// A blob's size disagrees with what the referencing manifest/record says.
    #[error("blob {digest} is {actual} bytes, expected {expected}")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },
    /// Blob, tree, artifact or cache entry not present.
    #[error("not found: {0}")]
    NotFound(String),
    /// Tenant/branch/scope/key name not acceptable.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// Tree/manifest/archive refused.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Archive refused.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Local I/O while reading a source or writing a restore.
    #[error("I/O on `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// JSON (de)serialisation of a stored record failed.
    /// Reading the caller's input (a reader handed to a put) failed: not
    /// the store's fault, unlike [`StoreError::Io`].
    #[error("reading the input: {source}")]
    Input {
        #[source]
        source: std::io::Error,
    },

    #[error("bad JSON in {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Backend error from `object_store`.
    #[error("object store: {0}")]
    Backend(#[from] object_store::Error),
    /// Could not open the store URL.
    #[error("bad store URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
}

impl StoreError {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        StoreError::Io { path: path.to_string(), source }
    }
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
