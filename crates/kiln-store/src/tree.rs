//! Trees: a directory snapshot as a canonical JSON manifest of blobs, and safe restore.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path as FsPath, PathBuf};

use futures::StreamExt;
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, TreeDigest};
use crate::error::{Result, StoreError, TreeError};
use crate::store::Store;

/// Files up to this size are prefetched concurrently during restore.
const PREFETCH_MAX: u64 = 1 << 20;

/// Manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// One manifest entry. Paths are `/`-separated, relative, UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Entry {
    /// Regular file.
    File {
        /// Relative path.
        path: String,
        /// Size in bytes.
        size: u64,
        /// Permission bits (`& 0o777`; setuid/setgid/sticky never recorded or restored).
        mode: u32,
        /// Content blob.
        digest: Digest,
    },
    /// Directory (recorded explicitly so empty dirs and modes survive; parents of
    /// entries are also created implicitly with mode 0o755 if missing).
    Dir {
        /// Relative path.
        path: String,
        /// Permission bits (`& 0o777`).
        mode: u32,
    },
    /// Symbolic link (target stored verbatim, must be relative and stay inside the tree).
    Symlink {
        /// Relative path.
        path: String,
        /// Link target.
        symlink: String,
    },
}

impl Entry {
    /// The entry's path.
    pub fn path(&self) -> &str {
        match self {
            Entry::File { path, .. } | Entry::Dir { path, .. } | Entry::Symlink { path, .. } => path,
        }
    }
}

/// A tree manifest: `{"version":1,"entries":[...]}` with entries sorted by path bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_VERSION`].
    pub version: u32,
    /// Entries sorted by path (byte order), unique.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Build a canonical manifest (sorts entries).
    pub fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| a.path().as_bytes().cmp(b.path().as_bytes()));
        Manifest { version: MANIFEST_VERSION, entries }
    }

    /// Canonical bytes (compact JSON, fixed field order).
    pub fn to_canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Total bytes of file entries.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e {
                Entry::File { size, .. } => *size,
                _ => 0,
            })
            .fold(0u64, |a, b| a.saturating_add(b))
    }

    /// `(path, size, digest)` of every file.
    pub fn files(&self) -> impl Iterator<Item = (&str, u64, Digest)> {
        self.entries.iter().filter_map(|e| match e {
            Entry::File { path, size, digest, .. } => Some((path.as_str(), *size, *digest)),
            _ => None,
        })
    }
}

/// Limits applied when validating a manifest (at store time and restore time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreLimits {
    /// Maximum number of entries.
    pub max_entries: u64,
    /// Maximum total file bytes.
    pub max_bytes: u64,
    /// Maximum path length in bytes.
    pub max_path_len: usize,
    /// Maximum component length in bytes.
    pub max_component_len: usize,
    /// Maximum number of path components.
    pub max_depth: usize,
}

impl Default for RestoreLimits {
    fn default() -> Self {
        RestoreLimits {
            max_entries: 1_000_000,
            max_bytes: 64 << 30,
            max_path_len: 4096,
            max_component_len: 255,
            max_depth: 128,
        }
    }
}

/// Statistics from [`Store::put_tree_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeStats {
    /// Tree id.
    pub digest: TreeDigest,
    /// Number of manifest entries.
    pub entries: u64,
    /// Number of file entries.
    pub files: u64,
    /// Sum of file sizes.
    pub bytes: u64,
    /// Blobs that were not already present.
    pub new_blobs: u64,
    /// Bytes of those new blobs.
    pub new_bytes: u64,
}

/// Validate one relative path.
pub fn validate_path(path: &str, limits: &RestoreLimits) -> Result<(), TreeError> {
    let p = || path.to_string();
    if path.contains('\0') {
        return Err(TreeError::NulByte { path: p() });
    }
    if path.starts_with('/') {
        return Err(TreeError::AbsolutePath { path: p() });
    }
    if path.len() > limits.max_path_len {
        return Err(TreeError::PathTooLong { path: p(), limit: limits.max_path_len });
    }
    let mut depth = 0;
    for c in path.split('/') {
        depth += 1;
        match c {
            "" | "." => return Err(TreeError::EmptyComponent { path: p() }),
            ".." => return Err(TreeError::DotDot { path: p() }),
            _ if c.len() > limits.max_component_len => {
                return Err(TreeError::PathTooLong { path: p(), limit: limits.max_component_len })
            }
            _ => {}
        }
    }
    if depth > limits.max_depth {
        return Err(TreeError::TooDeep { path: p(), limit: limits.max_depth });
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind<'a> {
    File,
    Dir,
    Link(&'a str),
}

/// Validate a whole manifest: paths, duplicates, entries under symlinks/files,
/// symlink targets (resolved through other symlinks of the tree), and limits.
pub fn validate_manifest(m: &Manifest, limits: &RestoreLimits) -> Result<(), TreeError> {
    if m.version != MANIFEST_VERSION {
        return Err(TreeError::BadManifest { reason: format!("unsupported version {}", m.version) });
    }
    let mut map: HashMap<&str, Kind<'_>> = HashMap::with_capacity(m.entries.len());
    let mut total: u64 = 0;
    for (i, e) in m.entries.iter().enumerate() {
        let path = e.path();
        if i as u64 >= limits.max_entries {
            return Err(TreeError::TooManyEntries { path: path.to_string(), limit: limits.max_entries });
        }
        validate_path(path, limits)?;
        let kind = match e {
            Entry::File { size, .. } => {
                total = total.saturating_add(*size);
                if total > limits.max_bytes {
                    return Err(TreeError::TooManyBytes { path: path.to_string(), limit: limits.max_bytes });
                }
                Kind::File
            }
            Entry::Dir { .. } => Kind::Dir,
            Entry::Symlink { symlink, .. } => Kind::Link(symlink),
        };
        if map.insert(path, kind).is_some() {
            return Err(TreeError::DuplicatePath { path: path.to_string() });
        }
    }
    for e in &m.entries {
        let path = e.path();
        let mut end = 0;
        while let Some(off) = path[end..].find('/') {
            end += off;
            let prefix = &path[..end];
            match map.get(prefix) {
                Some(Kind::Link(_)) => {
                    return Err(TreeError::UnderSymlink {
                        path: path.to_string(),
                        symlink: prefix.to_string(),
                    })
                }
                Some(Kind::File) => {
                    return Err(TreeError::UnderNonDirectory {
                        path: path.to_string(),
                        parent: prefix.to_string(),
                    })
                }
                _ => {}
            }
            end += 1;
        }
        if let Entry::Symlink { symlink, .. } = e {
            check_symlink(&map, path, symlink)?;
        }
    }
    Ok(())
}

fn check_symlink(map: &HashMap<&str, Kind<'_>>, path: &str, target: &str) -> Result<(), TreeError> {
    let invalid =
        |reason: &str| TreeError::SymlinkInvalid { path: path.to_string(), reason: reason.to_string() };
    if target.is_empty() {
        return Err(invalid("empty target"));
    }
    if target.contains('\0') {
        return Err(invalid("NUL in target"));
    }
    if target.len() > 4096 {
        return Err(invalid("target too long"));
    }
    let mut stack: Vec<&str> = path.split('/').collect();
    stack.pop();
    let mut hops = 0u32;
    resolve(map, &mut stack, target, &mut hops, path, target)
}

/// Resolve `target` relative to directory `stack` within the virtual tree, following
/// symlink entries; error if resolution ever climbs above the root.
fn resolve<'a>(
    map: &HashMap<&'a str, Kind<'a>>,
    stack: &mut Vec<&'a str>,
    target: &'a str,
    hops: &mut u32,
    path: &str,
    orig: &str,
) -> Result<(), TreeError> {
    if target.starts_with('/') {
        return Err(TreeError::SymlinkAbsolute { path: path.to_string(), target: orig.to_string() });
    }
    let comps: Vec<&str> = target.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        match *c {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return Err(TreeError::SymlinkEscapes {
                        path: path.to_string(),
                        target: orig.to_string(),
                    });
                }
            }
            name => {
                stack.push(name);
                let joined = stack.join("/");
                match map.get(joined.as_str()) {
                    Some(Kind::Link(t)) => {
                        *hops += 1;
                        if *hops > 40 {
                            return Err(TreeError::SymlinkInvalid {
                                path: path.to_string(),
                                reason: "too many levels of symbolic links".into(),
                            });
                        }
                        stack.pop();
                        resolve(map, stack, t, hops, path, orig)?;
                    }
                    Some(Kind::File) if comps[i + 1..].iter().any(|c| !c.is_empty() && *c != ".") => {
                        // Traversing a regular file fails with ENOTDIR: cannot escape.
                        return Ok(());
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// put_tree

enum Walked {
    /// A regular file (its mode is taken when it is opened to be stored).
    File {
        path: String,
        abs: PathBuf,
    },
    Other(Entry),
}

fn walk(root: &FsPath) -> Result<Vec<Walked>> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| StoreError::io(root.display(), e))?;
    if !meta.is_dir() {
        return Err(StoreError::io(
            root.display(),
            std::io::Error::other("not a directory (symlinks are not followed)"),
        ));
    }
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| StoreError::io(dir.display(), e))?;
        for ent in rd {
            let ent = ent.map_err(|e| StoreError::io(dir.display(), e))?;
            let abs = ent.path();
            let name = ent.file_name();
            let name =
                name.to_str().ok_or_else(|| TreeError::NonUtf8Path { path: abs.display().to_string() })?;
            let path = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
            // The directory entry's type saves a stat per file; a file's
            // mode comes from the descriptor it is read through.
            let ft = ent.file_type().map_err(|e| StoreError::io(abs.display(), e))?;
            if ft.is_dir() {
                let md = std::fs::symlink_metadata(&abs).map_err(|e| StoreError::io(abs.display(), e))?;
                if !md.is_dir() {
                    return Err(StoreError::io(abs.display(), std::io::Error::other("changed while read")));
                }
                out.push(Walked::Other(Entry::Dir {
                    path: path.clone(),
                    mode: md.permissions().mode() & 0o777,
                }));
                stack.push((abs, path));
            } else if ft.is_file() {
                out.push(Walked::File { path, abs });
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&abs).map_err(|e| StoreError::io(abs.display(), e))?;
                let t = t.to_str().ok_or_else(|| TreeError::NonUtf8Path { path: path.clone() })?;
                out.push(Walked::Other(Entry::Symlink { path, symlink: t.to_string() }));
            } else {
                let kind = if ft.is_fifo() {
                    "fifo"
                } else if ft.is_socket() {
                    "socket"
                } else if ft.is_char_device() {
                    "character device"
                } else if ft.is_block_device() {
                    "block device"
                } else {
                    "unknown"
                };
                return Err(
                    TreeError::SpecialFile { path: abs.display().to_string(), kind: kind.into() }.into()
                );
            }
        }
    }
    Ok(out)
}

impl Store {
    /// Snapshot `dir` (symlinks recorded, never followed) and return the tree id.
    pub async fn put_tree(&self, dir: impl AsRef<FsPath>) -> Result<TreeDigest> {
        Ok(self.put_tree_stats(dir).await?.digest)
    }

    /// [`Store::put_tree`] with statistics (dedup accounting).
    pub async fn put_tree_stats(&self, dir: impl AsRef<FsPath>) -> Result<TreeStats> {
        let dir = dir.as_ref().to_path_buf();
        let walked = crate::store::blocking("tree walk", move || walk(&dir)).await??;
        let mut entries = Vec::with_capacity(walked.len());
        let (mut paths, mut abs) = (Vec::new(), Vec::new());
        for w in walked {
            match w {
                Walked::File { path, abs: a } => {
                    paths.push(path);
                    abs.push(a);
                }
                Walked::Other(e) => entries.push(e),
            }
        }
        let mut stats = TreeStats {
            digest: Digest::of(b""),
            entries: 0,
            files: paths.len() as u64,
            bytes: 0,
            new_blobs: 0,
            new_bytes: 0,
        };
        for (path, (out, mode)) in paths.into_iter().zip(self.put_files(abs).await?) {
            stats.bytes += out.size;
            if out.new {
                stats.new_blobs += 1;
                stats.new_bytes += out.size;
            }
            entries.push(Entry::File { path, size: out.size, mode, digest: out.digest });
        }
        let m = Manifest::new(entries);
        validate_manifest(&m, &RestoreLimits::default())?;
        stats.entries = m.entries.len() as u64;
        stats.digest = self.put_manifest(&m).await?;
        Ok(stats)
    }

    /// Store a manifest as-is (no validation: restore validates). Returns the tree id.
    pub async fn put_manifest(&self, m: &Manifest) -> Result<TreeDigest> {
        Ok(self.put_bytes(m.to_canonical_json()).await?.digest)
    }

    /// Load (and digest-verify) a tree manifest.
    pub async fn get_manifest(&self, tree: &TreeDigest) -> Result<Manifest> {
        let data = self.get_bytes(tree, None).await?;
        serde_json::from_slice(&data)
            .map_err(|e| TreeError::BadManifest { reason: format!("{tree}: {e}") }.into())
    }

    /// Materialise a tree under `target` (created if missing; must otherwise be an empty
    /// directory). The manifest is validated first; files are created with
    /// `O_CREAT|O_EXCL|O_NOFOLLOW` relative to directory fds opened component by component
    /// with `O_NOFOLLOW|O_DIRECTORY`; every blob is verified while written. On any error,
    /// everything created under `target` is removed again.
    pub async fn restore_tree(
        &self,
        tree: &TreeDigest,
        target: impl AsRef<FsPath>,
        limits: &RestoreLimits,
    ) -> Result<TreeStats> {
        let m = self.get_manifest(tree).await?;
        self.restore_manifest(&m, target, limits).await.map(|mut s| {
            s.digest = *tree;
            s
        })
    }

    /// Restore an already-loaded manifest (see [`Store::restore_tree`]).
    pub async fn restore_manifest(
        &self,
        m: &Manifest,
        target: impl AsRef<FsPath>,
        limits: &RestoreLimits,
    ) -> Result<TreeStats> {
        validate_manifest(m, limits)?;
        let target = target.as_ref();
        let created = prepare_target(target)?;
        let root = rustix::fs::open(
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::io(target.display(), e.into()))?;
        let res = self.restore_into(m, &root).await;
        if res.is_err() {
            cleanup(target, created);
        }
        res
    }

    async fn restore_into(&self, m: &Manifest, root: &OwnedFd) -> Result<TreeStats> {
        let mut stats = TreeStats {
            digest: Digest::of(b""),
            entries: m.entries.len() as u64,
            files: 0,
            bytes: 0,
            new_blobs: 0,
            new_bytes: 0,
        };
        let mut dir_modes: Vec<(&str, u32)> = Vec::new();
        let mut cache: Option<(String, OwnedFd)> = None;
        // Small file blobs are fetched (and fully verified) ahead, 16 at a time, while
        // files are written in manifest order; large ones are streamed.
        let wanted: Vec<(u64, Digest)> = m
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::File { size, digest, .. } => Some((*size, *digest)),
                _ => None,
            })
            .collect();
        let store = self.clone();
        let mut prefetch = futures::stream::iter(wanted)
            .map(move |(size, digest)| {
                let store = store.clone();
                async move {
                    if size <= PREFETCH_MAX {
                        store.get_bytes(&digest, Some(size)).await.map(Some)
                    } else {
                        Ok(None)
                    }
                }
            })
            .buffered(16);
        // Directories and symlinks first (validation guarantees nothing lies beneath a
        // symlink), then files.
        let order = m
            .entries
            .iter()
            .filter(|e| !matches!(e, Entry::File { .. }))
            .chain(m.entries.iter().filter(|e| matches!(e, Entry::File { .. })));
        for e in order {
            let path = e.path();
            let (parent, name) = match path.rfind('/') {
                Some(i) => (&path[..i], &path[i + 1..]),
                None => ("", path),
            };
            let stale = !matches!(&cache, Some((p, _)) if p == parent);
            if stale {
                cache = Some((parent.to_string(), open_dir_chain(root, parent)?));
            }
            let Some((_, pfd)) = &cache else { unreachable!("cache was just filled") };
            let pfd = pfd.as_fd();
            match e {
                Entry::Dir { mode, .. } => {
                    match rustix::fs::mkdirat(pfd, name, Mode::from_raw_mode(0o700)) {
                        Ok(()) => {}
                        Err(rustix::io::Errno::EXIST) => {
                            // Only fine if it is a real directory we made implicitly.
                            rustix::fs::openat(
                                pfd,
                                name,
                                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                                Mode::empty(),
                            )
                            .map_err(|er| StoreError::io(path, er.into()))?;
                        }
                        Err(er) => return Err(StoreError::io(path, er.into())),
                    }
                    dir_modes.push((path, mode & 0o777));
                }
                Entry::Symlink { symlink, .. } => {
                    rustix::fs::symlinkat(symlink.as_str(), pfd, name)
                        .map_err(|er| StoreError::io(path, er.into()))?;
                }
                Entry::File { size, mode, digest, .. } => {
                    let pre = prefetch.next().await.ok_or_else(|| {
                        StoreError::io(path, std::io::Error::other("prefetch ended early"))
                    })??;
                    let fd = rustix::fs::openat(
                        pfd,
                        name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(|er| StoreError::io(path, er.into()))?;
                    let mut f = std::fs::File::from(fd);
                    match pre {
                        Some(data) => {
                            use std::io::Write;
                            f.write_all(&data).map_err(|er| StoreError::io(path, er))?;
                        }
                        None => f = self.copy_blob_to_file(digest, Some(*size), f).await?,
                    }
                    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
                        .map_err(|er| StoreError::io(path, er))?;
                    stats.files += 1;
                    stats.bytes += size;
                }
            }
        }
        drop(cache);
        // Apply directory modes last (deepest first) so read-only dirs don't block writes.
        dir_modes.sort_by(|a, b| b.0.cmp(a.0));
        for (path, mode) in dir_modes {
            let fd = open_dir_chain(root, path)?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                .map_err(|er| StoreError::io(path, er.into()))?;
        }
        Ok(stats)
    }
}

/// Open `rel` (a validated relative dir path) beneath `root`, one component at a time with
/// `O_NOFOLLOW|O_DIRECTORY`, creating missing components (mode 0o755).
fn open_dir_chain(root: &OwnedFd, rel: &str) -> Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur =
        rustix::fs::openat(root, ".", flags, Mode::empty()).map_err(|e| StoreError::io(".", e.into()))?;
    if rel.is_empty() {
        return Ok(cur);
    }
    for c in rel.split('/') {
        let next = match rustix::fs::openat(&cur, c, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                match rustix::fs::mkdirat(&cur, c, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(StoreError::io(rel, e.into())),
                }
                rustix::fs::openat(&cur, c, flags, Mode::empty())
                    .map_err(|e| StoreError::io(rel, e.into()))?
            }
            Err(e) => return Err(StoreError::io(rel, e.into())),
        };
        cur = next;
    }
    Ok(cur)
}

/// Ensure `target` is an empty real directory; returns whether we created it.
fn prepare_target(target: &FsPath) -> Result<bool> {
    match std::fs::symlink_metadata(target) {
        Ok(md) => {
            let empty = md.is_dir()
                && std::fs::read_dir(target)
                    .map_err(|e| StoreError::io(target.display(), e))?
                    .next()
                    .is_none();
            if !empty {
                return Err(TreeError::TargetNotEmpty { path: target.display().to_string() }.into());
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(target).map_err(|e| StoreError::io(target.display(), e))?;
            Ok(true)
        }
        Err(e) => Err(StoreError::io(target.display(), e)),
    }
}

/// Remove what a failed restore created (std's remove_dir_all does not follow symlinks).
fn cleanup(target: &FsPath, created: bool) {
    // Make sure dirs we chmod'ed read-only can be emptied.
    fn unlock(p: &FsPath) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if let Ok(ft) = e.file_type() {
                    if ft.is_dir() {
                        let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700));
                        unlock(&e.path());
                    }
                }
            }
        }
    }
    unlock(target);
    if created {
        let _ = std::fs::remove_dir_all(target);
        return;
    }
    if let Ok(rd) = std::fs::read_dir(target) {
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(ft) if ft.is_dir() => {
                    let _ = std::fs::remove_dir_all(&p);
                }
                _ => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }
}

#[allow(dead_code)]
fn _assert_send(s: Store, d: TreeDigest) {
    fn is_send<T: Send>(_: T) {}
    is_send(async move {
        let _ = s.put_tree("/").await;
        let _ = s.restore_tree(&d, "/x", &RestoreLimits::default()).await;
    });
}
