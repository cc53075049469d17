//! Safe extraction of image layers onto the host.
//!
//! A layer is untrusted input (an image pulled from a registry was made by
//! someone else), and extraction runs as root on the host, so nothing in a
//! layer may make kiln touch a path outside the directory it extracts into:
//!
//! * paths are checked first: relative, no `..`, no empty or `.` part, no NUL;
//! * the parent directory of every entry is opened with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//!   from the root's descriptor, so a symlink planted by an earlier entry (or
//!   an earlier layer) is never followed, whatever it points at;
//! * files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`; an entry that
//!   replaces an earlier one (a later layer) removes it first, without
//!   following it;
//! * symlink targets are stored as they are (inside the image, `/usr/bin/x`
//!   means the image's own `/usr/bin/x`) and never followed here;
//! * hard links must name an earlier non-directory entry, resolved beneath
//!   the root the same way;
//! * OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) remove what earlier layers
//!   put there;
//! * owner and mode bits (including set-id bits) are applied to the
//!   descriptor that was created, never through a path;
//! * entry and byte limits are checked before anything is written.
//!
//! Written here rather than with the `tar` crate: kiln-store's reader is the
//! strict one the rest of kiln trusts with hostile archives, and no crate
//! does beneath-the-root creation with `openat2`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use kiln_store::tar::{TarEntry, TarKind, TarReader};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{io_err, ImageError, Result};

/// Limits of one extraction.
#[derive(Debug, Clone, Copy)]
pub struct ExtractLimits {
    /// Entries in one layer.
    pub max_entries: u64,
    /// Bytes of file data in one layer.
    pub max_bytes: u64,
    /// Bytes in one path.
    pub max_path: usize,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        // A full Debian toolchain image is ~45,000 entries and ~1.2 GB.
        ExtractLimits { max_entries: 1_000_000, max_bytes: 32 << 30, max_path: 4096 }
    }
}

/// What one layer held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Splits and checks an entry path; `Ok(None)` is the root itself.
fn check_path<'a>(
    path: &'a str,
    limits: &ExtractLimits,
) -> std::result::Result<Option<(&'a str, &'a str)>, String> {
    if path.is_empty() || path == "." {
        return Ok(None);
    }
    if path.len() > limits.max_path {
        return Err(format!("path longer than {} bytes", limits.max_path));
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    if path.contains('\0') {
        return Err("NUL in path".into());
    }
    for part in path.split('/') {
        match part {
            "" | "." => return Err("empty or `.` path component".into()),
            ".." => return Err("`..` path component".into()),
            _ => {}
        }
    }
    Ok(Some(match path.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", path),
    }))
}

/// Extracts one tar layer into `root` (an existing directory). `layer` names
/// the layer in errors.
pub fn extract_layer<R: Read>(
    root: &Path,
    layer: &str,
    r: R,
    limits: &ExtractLimits,
) -> Result<ExtractStats> {
    let root_fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io_err("open", root)(e.into()))?;
    let mut x = Extractor { root: root_fd, layer, limits, stats: ExtractStats::default(), parent: None };
    let mut tr = TarReader::new(r);
    loop {
        let entry =
            tr.next_entry().map_err(|source| ImageError::Archive { layer: layer.to_string(), source })?;
        let Some(entry) = entry else { break };
        x.stats.entries += 1;
        if x.stats.entries > limits.max_entries {
            return Err(ImageError::Limit {
                layer: layer.into(),
                what: "entry count",
                limit: limits.max_entries,
            });
        }
        if let TarKind::File { size } = entry.kind {
            x.stats.bytes = x.stats.bytes.saturating_add(size);
            if x.stats.bytes > limits.max_bytes {
                return Err(ImageError::Limit {
                    layer: layer.into(),
                    what: "file bytes",
                    limit: limits.max_bytes,
                });
            }
        }
        x.apply(&entry, &mut tr)?;
    }
    Ok(x.stats)
}

struct Extractor<'a> {
    root: OwnedFd,
    layer: &'a str,
    limits: &'a ExtractLimits,
    stats: ExtractStats,
    /// The last parent opened: entries come grouped by directory.
    parent: Option<(String, OwnedFd)>,
}

impl Extractor<'_> {
    fn refuse(&self, path: &str, reason: impl Into<String>) -> ImageError {
        ImageError::Refused { layer: self.layer.into(), path: path.into(), reason: reason.into() }
    }

    fn sys(&self, path: &str, op: &'static str) -> impl FnOnce(Errno) -> ImageError + '_ {
        let path = path.to_string();
        move |e| self.refuse(&path, format!("{op}: {}", std::io::Error::from(e)))
    }

    /// Opens a directory beneath the root without following any link.
    fn open_dir(&self, rel: &str) -> std::result::Result<OwnedFd, Errno> {
        if rel.is_empty() {
            return rustix::io::dup(&self.root);
        }
        rustix::fs::openat2(
            &self.root,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            beneath(),
        )
    }

    /// Creates the missing directories of `parent` (0755, root's), one
    /// component at a time beneath the root: archives (npm's among them)
    /// may list files without their directories.
    fn make_parents(&self, parent: &str) -> std::result::Result<(), Errno> {
        let mut cur = String::new();
        for part in parent.split('/') {
            let at = self.open_dir(&cur)?;
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            match self.open_dir(&cur) {
                Ok(_) => continue,
                Err(Errno::NOENT) => match rustix::fs::mkdirat(&at, part, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn parent_fd(&mut self, entry: &str, parent: &str) -> Result<&OwnedFd> {
        let cached = matches!(&self.parent, Some((p, _)) if p == parent);
        if !cached {
            let opened = match self.open_dir(parent) {
                Err(Errno::NOENT) => self.make_parents(parent).and_then(|_| self.open_dir(parent)),
                other => other,
            };
            let fd = opened.map_err(|e| match e {
                Errno::XDEV | Errno::LOOP | Errno::NOTDIR => {
                    self.refuse(entry, "its parent is a link or not a directory")
                }
                e => self.refuse(entry, format!("open parent: {}", std::io::Error::from(e))),
            })?;
            self.parent = Some((parent.to_string(), fd));
        }
        Ok(&self.parent.as_ref().expect("set above").1)
    }

    fn apply<R: Read>(&mut self, e: &TarEntry, tr: &mut TarReader<R>) -> Result<()> {
        let (parent, name) = match check_path(&e.path, self.limits) {
            Ok(Some(pn)) => pn,
            Ok(None) => {
                // The root's own entry: owner and mode of the root.
                if !matches!(e.kind, TarKind::Dir) {
                    return Err(self.refuse(&e.path, "the root must be a directory"));
                }
                let root = rustix::io::dup(&self.root).map_err(self.sys(&e.path, "dup"))?;
                return self.own(&e.path, &root, e);
            }
            Err(reason) => return Err(self.refuse(&e.path, reason)),
        };
        let uid_gid_ok = e.uid <= u32::MAX as u64 && e.gid <= u32::MAX as u64;
        if !uid_gid_ok {
            return Err(self.refuse(&e.path, "owner id out of range"));
        }
        if name == OPAQUE {
            self.stats.whiteouts += 1;
            let dir = self.parent_fd(&e.path, parent)?;
            let dir = rustix::io::dup(dir).map_err(self.sys(&e.path, "dup"))?;
            return clear_dir(&dir).map_err(self.sys(&e.path, "opaque whiteout"));
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            self.stats.whiteouts += 1;
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(self.refuse(&e.path, "whiteout of nothing"));
            }
            let dir = self.parent_fd(&e.path, parent)?;
            return match remove_any(dir, hidden) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(err) => Err(self.sys(&e.path, "whiteout")(err)),
            };
        }
        let path = e.path.clone();
        let dir = self.parent_fd(&path, parent)?;
        let dir = rustix::io::dup(dir).map_err(self.sys(&path, "dup"))?;
        match &e.kind {
            TarKind::Dir => {
                match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        // An earlier layer's directory stays (and its
                        // contents); anything else in the way goes.
                        let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(self.sys(&path, "stat"))?;
                        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory
                        {
                            remove_any(&dir, name).map_err(self.sys(&path, "replace"))?;
                            rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                                .map_err(self.sys(&path, "mkdir"))?;
                        }
                    }
                    Err(err) => return Err(self.sys(&path, "mkdir")(err)),
                }
                let fd = rustix::fs::openat(
                    &dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(self.sys(&path, "open"))?;
                self.own(&path, &fd, e)?;
                // A renamed or replaced directory invalidates the cache.
                self.parent = None;
            }
            TarKind::File { size } => {
                let fd = self.create_file(&dir, &path, name)?;
                let mut out = std::fs::File::from(fd);
                let copied = match std::io::copy(&mut tr.data(), &mut out) {
                    Ok(n) => n,
                    Err(err) => {
                        let _ = rustix::fs::unlinkat(&dir, name, AtFlags::empty());
                        if err.kind() == std::io::ErrorKind::UnexpectedEof {
                            let source = kiln_store::ArchiveError::Truncated { offset: tr.offset() };
                            return Err(ImageError::Archive { layer: self.layer.into(), source });
                        }
                        return Err(io_err("write", &path)(err));
                    }
                };
                if copied != *size {
                    return Err(ImageError::Archive {
                        layer: self.layer.into(),
                        source: kiln_store::ArchiveError::Truncated { offset: tr.offset() },
                    });
                }
                out.flush().map_err(io_err("write", &path))?;
                let fd: OwnedFd = out.into();
                self.own(&path, &fd, e)?;
            }
            TarKind::Symlink { target } => {
                if target.is_empty() || target.contains('\0') {
                    return Err(self.refuse(&path, "empty link target"));
                }
                self.clear_slot(&dir, &path, name)?;
                rustix::fs::symlinkat(target.as_str(), &dir, name).map_err(self.sys(&path, "symlink"))?;
                let (uid, gid) = ids(e);
                rustix::fs::chownat(&dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(self.sys(&path, "chown"))?;
            }
            TarKind::HardLink { target } => {
                let (tparent, tname) = match check_path(target, self.limits) {
                    Ok(Some(pn)) => pn,
                    Ok(None) => return Err(self.refuse(&path, "hard link to the root")),
                    Err(reason) => return Err(self.refuse(&path, format!("hard link target: {reason}"))),
                };
                let tdir = self
                    .open_dir(tparent)
                    .map_err(|_| self.refuse(&path, "hard link target outside the layer"))?;
                let st = rustix::fs::statat(&tdir, tname, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|_| self.refuse(&path, "hard link to an entry not in the layer"))?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
                    return Err(self.refuse(&path, "hard link to a directory"));
                }
                self.clear_slot(&dir, &path, name)?;
                rustix::fs::linkat(&tdir, tname, &dir, name, AtFlags::empty())
                    .map_err(self.sys(&path, "link"))?;
            }
        }
        Ok(())
    }

    /// Removes whatever an earlier layer left at `name` (a later entry
    /// replaces it), without following it.
    fn clear_slot(&self, dir: &OwnedFd, path: &str, name: &str) -> Result<()> {
        match remove_any(dir, name) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(err) => Err(self.sys(path, "replace")(err)),
        }
    }

    fn create_file(&self, dir: &OwnedFd, path: &str, name: &str) -> Result<OwnedFd> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => Ok(fd),
            Err(Errno::EXIST) => {
                self.clear_slot(dir, path, name)?;
                rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
                    .map_err(self.sys(path, "create"))
            }
            Err(err) => Err(self.sys(path, "create")(err)),
        }
    }

    /// Owner, then mode (chown clears set-id bits), on the descriptor.
    fn own(&self, path: &str, fd: &OwnedFd, e: &TarEntry) -> Result<()> {
        let (uid, gid) = ids(e);
        rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(self.sys(path, "chown"))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode & 0o7777)).map_err(self.sys(path, "chmod"))?;
        Ok(())
    }
}

fn ids(e: &TarEntry) -> (rustix::fs::Uid, rustix::fs::Gid) {
    // Checked to fit in u32 before any entry is applied.
    (rustix::fs::Uid::from_raw(e.uid as u32), rustix::fs::Gid::from_raw(e.gid as u32))
}

/// Removes `name` in `dir` whatever it is, a directory with its contents,
/// never following a link.
fn remove_any(dir: impl AsFd, name: &str) -> std::result::Result<(), Errno> {
    let dir = dir.as_fd();
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            let sub = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            clear_dir(&sub)?;
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        }
        Err(e) => Err(e),
    }
}

/// Removes everything inside the directory `dir`.
fn clear_dir(dir: &OwnedFd) -> std::result::Result<(), Errno> {
    let mut names = Vec::new();
    let it = rustix::fs::Dir::read_from(dir)?;
    for ent in it {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        // Names read from the directory itself; a non-UTF-8 one is removed too.
        let c = std::ffi::CString::new(n).map_err(|_| Errno::INVAL)?;
        match rustix::fs::unlinkat(dir, c.as_c_str(), AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::ISDIR) | Err(Errno::PERM) => {
                let sub = rustix::fs::openat(
                    dir,
                    c.as_c_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                clear_dir(&sub)?;
                rustix::fs::unlinkat(dir, c.as_c_str(), AtFlags::REMOVEDIR)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_store::tar::RawTarBuilder;
    use std::os::unix::fs::MetadataExt;

    fn extract(root: &Path, tar: &[u8]) -> Result<ExtractStats> {
        extract_layer(root, "test", tar, &ExtractLimits::default())
    }

    fn outside(tmp: &tempfile::TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
        let root = tmp.path().join("root");
        let out = tmp.path().join("outside");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(&out).unwrap();
        (root, out)
    }

    #[test]
    fn a_layer_extracts_with_links_modes_and_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, _) = outside(&tmp);
        let mut b = RawTarBuilder::new();
        b.dir("usr").dir("usr/bin").file("usr/bin/tool", 0o4755, b"#!/bin/sh\n");
        b.symlink("bin", "usr/bin").symlink("usr/bin/abs", "/usr/bin/tool");
        b.hardlink("usr/bin/tool2", "usr/bin/tool").dir("etc").file("etc/gone", 0o644, b"x");
        let s = extract(&root, &b.finish()).unwrap();
        assert_eq!(s.entries, 8);
        assert_eq!(std::fs::read(root.join("usr/bin/tool2")).unwrap(), b"#!/bin/sh\n");
        let meta = std::fs::metadata(root.join("usr/bin/tool")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o4755, "set-id bits survive");
        assert_eq!(meta.nlink(), 2);
        assert_eq!(std::fs::read_link(root.join("usr/bin/abs")).unwrap(), Path::new("/usr/bin/tool"));
        // A second layer: whiteout, opaque directory, replacement.
        let mut b = RawTarBuilder::new();
        b.file("etc/.wh.gone", 0o644, b"").file("usr/bin/.wh..wh..opq", 0o644, b"");
        b.file("usr/bin/new", 0o755, b"n").file("bin", 0o644, b"now a file");
        let s = extract(&root, &b.finish()).unwrap();
        assert_eq!(s.whiteouts, 2);
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("usr/bin/tool").exists());
        assert!(root.join("usr/bin/new").exists());
        assert_eq!(std::fs::read(root.join("bin")).unwrap(), b"now a file");
        // Files without their directories (npm's tarballs): parents appear.
        let mut b = RawTarBuilder::new();
        b.file("package/share/doc/x", 0o644, b"doc");
        extract(&root, &b.finish()).unwrap();
        assert_eq!(std::fs::read(root.join("package/share/doc/x")).unwrap(), b"doc");
        // ... but never through a link: `bin` is a file now, `etc` a dir.
        let mut b = RawTarBuilder::new();
        b.symlink("lnk", "etc").file("lnk/sub/x", 0o644, b"no");
        assert!(extract(&root, &b.finish()).is_err());
        assert!(!root.join("etc/sub").exists());
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, out) = outside(&tmp);
        for name in ["../outside/x", "a/../../outside/x", "/tmp/x", "a//b", "./../x"] {
            let mut b = RawTarBuilder::new();
            b.file(name, 0o644, b"pwned");
            let err = extract(&root, &b.finish());
            assert!(err.is_err(), "{name} accepted");
        }
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }

    #[test]
    fn symlink_parent_escape_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, out) = outside(&tmp);
        // Relative and absolute links to outside, then a file "through" them.
        for target in [out.to_str().unwrap(), "../outside", "."] {
            let mut b = RawTarBuilder::new();
            b.symlink("esc", target).file("esc/x", 0o644, b"pwned");
            let err = extract(&root, &b.finish()).unwrap_err();
            assert!(err.to_string().contains("link"), "{err}");
            std::fs::remove_file(root.join("esc")).unwrap();
        }
        // A directory entry through a link, and a whiteout through one.
        let mut b = RawTarBuilder::new();
        b.symlink("esc", out.to_str().unwrap()).dir("esc/d");
        assert!(extract(&root, &b.finish()).is_err());
        std::fs::write(out.join("keep"), b"k").unwrap();
        let mut b = RawTarBuilder::new();
        b.file("esc/.wh.keep", 0o644, b"");
        assert!(extract(&root, &b.finish()).is_err());
        let mut b = RawTarBuilder::new();
        b.file("esc/.wh..wh..opq", 0o644, b"");
        assert!(extract(&root, &b.finish()).is_err());
        assert_eq!(std::fs::read(out.join("keep")).unwrap(), b"k", "whiteouts never reach outside");
        assert!(!out.join("x").exists() && !out.join("d").exists());
        // A link replacing a file is replaced itself, never written through.
        let mut b = RawTarBuilder::new();
        b.symlink("f", out.join("keep").to_str().unwrap()).file("f", 0o644, b"pwned");
        extract(&root, &b.finish()).unwrap();
        assert_eq!(std::fs::read(out.join("keep")).unwrap(), b"k");
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"pwned");
    }

    #[test]
    fn hardlink_escape_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, out) = outside(&tmp);
        std::fs::write(out.join("secret"), b"s").unwrap();
        for target in ["../outside/secret", "/etc/passwd", "missing"] {
            let mut b = RawTarBuilder::new();
            b.hardlink("h", target);
            assert!(extract(&root, &b.finish()).is_err(), "{target}");
        }
        let mut b = RawTarBuilder::new();
        b.symlink("l", out.to_str().unwrap()).hardlink("h", "l/secret");
        assert!(extract(&root, &b.finish()).is_err());
        let mut b = RawTarBuilder::new();
        b.dir("d").hardlink("h", "d");
        assert!(extract(&root, &b.finish()).is_err(), "hard link to a directory");
        assert!(!root.join("h").exists());
    }

    #[test]
    fn limits_hold_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, _) = outside(&tmp);
        let mut b = RawTarBuilder::new();
        b.file("a", 0o644, b"1").file("b", 0o644, b"2").file("c", 0o644, b"3");
        let lim = ExtractLimits { max_entries: 2, ..ExtractLimits::default() };
        let err = extract_layer(&root, "t", &b.finish()[..], &lim).unwrap_err();
        assert!(err.to_string().contains("entry count"), "{err}");
        assert!(!root.join("c").exists());
        let mut b = RawTarBuilder::new();
        b.file("big", 0o644, &[0u8; 2048]);
        let lim = ExtractLimits { max_bytes: 1024, ..ExtractLimits::default() };
        let err = extract_layer(&root, "t", &b.finish()[..], &lim).unwrap_err();
        assert!(err.to_string().contains("file bytes"), "{err}");
        assert!(!root.join("big").exists());
    }

    #[test]
    fn truncated_layers_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, _) = outside(&tmp);
        let mut b = RawTarBuilder::new();
        b.file("a", 0o644, &[7u8; 4096]);
        let t = b.finish();
        assert!(extract(&root, &t[..1024]).is_err());
    }
}
