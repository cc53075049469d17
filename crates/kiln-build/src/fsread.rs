//! Reading a fetched, untrusted source tree without following its symbolic links.
//!
//! Every path is walked one component at a time with `openat(O_NOFOLLOW)` from a directory
//! descriptor, so a link anywhere on the way (`a -> /etc`, `package-lock.json -> /dev/zero`)
//! is refused instead of followed, and nothing can be swapped in between a check and the open.
//! Files are opened `O_NONBLOCK` so a FIFO planted under a lockfile's name cannot hang the
//! reader; only regular files are read, and only up to a cap.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{openat, statat, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::BuildError;

/// Cap for lockfiles.
pub(crate) const LOCKFILE_CAP: u64 = 16 << 20;
/// Cap for configuration files and manifests.
pub(crate) const CONFIG_CAP: u64 = 1 << 20;

/// What is at a path, without following a link there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    File,
    Dir,
    Symlink,
    Other,
}

/// Split a `/`-separated relative path into its components, refusing absolute paths, `..`,
/// and empty or `.` components (callers normalise first).
pub(crate) fn components(rel: &str) -> Result<Vec<&str>, String> {
    if rel.is_empty() {
        return Err("empty path".into());
    }
    if rel.starts_with('/') {
        return Err("absolute path".into());
    }
    if rel.contains('\0') {
        return Err("NUL in path".into());
    }
    let parts: Vec<&str> = rel.split('/').collect();
    for p in &parts {
        match *p {
            ".." => return Err("`..` leaves the repository".into()),
            "" | "." => return Err("empty or `.` path component".into()),
            _ => {}
        }
    }
    Ok(parts)
}

fn io_error(file: &str, e: impl Into<io::Error>) -> BuildError {
    BuildError::Io { file: file.to_string(), source: e.into() }
}

/// Open the directory that holds `parts.last()`: `Ok(None)` when some component does not
/// exist or is not a directory.
fn open_parent(root: &Path, rel: &str, parts: &[&str]) -> Result<Option<OwnedFd>, BuildError> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir =
        openat(CWD, root, dir_flags, Mode::empty()).map_err(|e| io_error(&root.display().to_string(), e))?;
    let Some((_, parents)) = parts.split_last() else {
        return Ok(Some(dir));
    };
    for (i, name) in parents.iter().enumerate() {
        match openat(&dir, *name, dir_flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => dir = fd,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => {
                // ENOTDIR is also what O_DIRECTORY|O_NOFOLLOW gives for a link: tell them apart.
                let st = statat(&dir, *name, AtFlags::SYMLINK_NOFOLLOW);
                if let Ok(st) = st {
                    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                        return Err(BuildError::Symlink { file: parts[..=i].join("/") });
                    }
                }
                return Ok(None);
            }
            Err(Errno::LOOP) => return Err(BuildError::Symlink { file: parts[..=i].join("/") }),
            Err(e) => return Err(io_error(rel, e)),
        }
    }
    Ok(Some(dir))
}

/// What is at `rel` beneath `root`; `None` when nothing is. A link on the way is an error.
pub(crate) fn entry(root: &Path, rel: &str) -> Result<Option<Entry>, BuildError> {
    let parts = components(rel).map_err(|reason| BuildError::Path { path: rel.to_string(), reason })?;
    let Some(dir) = open_parent(root, rel, &parts)? else {
        return Ok(None);
    };
    let name = parts.last().copied().unwrap_or(".");
    match statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Entry::File,
            FileType::Directory => Entry::Dir,
            FileType::Symlink => Entry::Symlink,
            _ => Entry::Other,
        })),
        Err(Errno::NOENT) | Err(Errno::NOTDIR) => Ok(None),
        Err(e) => Err(io_error(rel, e)),
    }
}

/// Whether a regular file is at `rel`. A link or a non-file there is an error naming it: kiln
/// decides what to run from these files and will not guess through a link.
pub(crate) fn is_file(root: &Path, rel: &str) -> Result<bool, BuildError> {
    match entry(root, rel)? {
        None => Ok(false),
        Some(Entry::File) => Ok(true),
        Some(Entry::Symlink) => Err(BuildError::Symlink { file: rel.to_string() }),
        Some(Entry::Dir | Entry::Other) => Err(BuildError::NotRegular { file: rel.to_string() }),
    }
}

fn open_file(root: &Path, rel: &str) -> Result<Option<File>, BuildError> {
    let parts = components(rel).map_err(|reason| BuildError::Path { path: rel.to_string(), reason })?;
    let Some(dir) = open_parent(root, rel, &parts)? else {
        return Ok(None);
    };
    let name = parts.last().copied().unwrap_or(".");
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match openat(&dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => return Err(BuildError::Symlink { file: rel.to_string() }),
        Err(e) => return Err(io_error(rel, e)),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| io_error(rel, e))?;
    if !meta.is_file() {
        return Err(BuildError::NotRegular { file: rel.to_string() });
    }
    Ok(Some(file))
}

/// The whole file at `rel`, or `None` when it does not exist; larger than `cap` is an error.
pub(crate) fn read(root: &Path, rel: &str, cap: u64) -> Result<Option<Vec<u8>>, BuildError> {
    let Some(file) = open_file(root, rel)? else {
        return Ok(None);
    };
    let mut data = Vec::new();
    file.take(cap + 1).read_to_end(&mut data).map_err(|e| io_error(rel, e))?;
    if data.len() as u64 > cap {
        return Err(BuildError::TooLarge { file: rel.to_string(), limit: cap });
    }
    Ok(Some(data))
}

/// [`read`] as UTF-8 text.
pub(crate) fn read_text(root: &Path, rel: &str, cap: u64) -> Result<Option<String>, BuildError> {
    match read(root, rel, cap)? {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| BuildError::Parse { file: rel.to_string(), message: "not UTF-8 text".into() }),
    }
}

/// The first `n` bytes of the file at `rel` (fewer if it is shorter).
pub(crate) fn read_prefix(root: &Path, rel: &str, n: u64) -> Result<Option<Vec<u8>>, BuildError> {
    let Some(file) = open_file(root, rel)? else {
        return Ok(None);
    };
    let mut data = Vec::new();
    file.take(n).read_to_end(&mut data).map_err(|e| io_error(rel, e))?;
    Ok(Some(data))
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn reads_regular_files_beneath_root() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/f.txt"), "hello").unwrap();
        assert_eq!(read(dir.path(), "a/b/f.txt", 100).unwrap().unwrap(), b"hello");
        assert_eq!(read_prefix(dir.path(), "a/b/f.txt", 2).unwrap().unwrap(), b"he");
        assert!(read(dir.path(), "a/b/missing", 100).unwrap().is_none());
        assert!(read(dir.path(), "a/b/f.txt/x", 100).unwrap().is_none());
        assert_eq!(entry(dir.path(), "a/b").unwrap(), Some(Entry::Dir));
        assert!(is_file(dir.path(), "a/b/f.txt").unwrap());
        assert!(!is_file(dir.path(), "nope").unwrap());
    }

    #[test]
    fn caps_sizes() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("big"), vec![b'x'; 101]).unwrap();
        let err = read(dir.path(), "big", 100).unwrap_err();
        assert!(matches!(err, BuildError::TooLarge { ref file, limit: 100 } if file == "big"), "{err}");
        assert_eq!(read(dir.path(), "big", 101).unwrap().unwrap().len(), 101);
    }

    #[test]
    fn never_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "s").unwrap();
        symlink(outside.path().join("secret"), dir.path().join("package-lock.json")).unwrap();
        symlink(outside.path(), dir.path().join("sub")).unwrap();
        for rel in ["package-lock.json", "sub/secret"] {
            let err = read(dir.path(), rel, 100).unwrap_err();
            assert!(matches!(err, BuildError::Symlink { .. }), "{rel}: {err}");
        }
        assert!(matches!(is_file(dir.path(), "package-lock.json"), Err(BuildError::Symlink { .. })));
        assert_eq!(entry(dir.path(), "sub").unwrap(), Some(Entry::Symlink));
        let err = entry(dir.path(), "sub/secret").unwrap_err();
        assert!(err.to_string().contains("sub"), "{err}");
    }

    #[test]
    fn refuses_special_files_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(CWD, dir.path().join("fifo"), FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .unwrap();
        let err = read(dir.path(), "fifo", 100).unwrap_err();
        assert!(matches!(err, BuildError::NotRegular { .. }), "{err}");
        fs::create_dir(dir.path().join("d")).unwrap();
        assert!(matches!(read(dir.path(), "d", 100), Err(BuildError::NotRegular { .. })));
    }

    #[test]
    fn refuses_escaping_paths() {
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a"] {
            assert!(components(bad).is_err(), "{bad}");
        }
        assert_eq!(components("a/b.c").unwrap(), ["a", "b.c"]);
    }

    #[test]
    fn line_and_column() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, text.find('f').unwrap()), (3, 1));
        assert_eq!(line_col(text, text.find('é').unwrap()), (2, 3));
    }
}
