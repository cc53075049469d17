//! Writing into a job's workspace or home from the host, by descriptor.
//!
//! Steps wrote those trees, so any component of a path in them may be a
//! link to anywhere on the host. Every directory kiln writes into is opened
//! beneath the tree's root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
//! | RESOLVE_NO_MAGICLINKS)` (or created there with `mkdirat` and opened
//! the same way), and every entry is then created, replaced or removed
//! relative to that directory's descriptor with `O_NOFOLLOW`/`O_EXCL`: no
//! path is looked up twice, so nothing can be swapped between a check and
//! its use, and no link is ever followed.
//!
//! The sources are kiln's own staging trees, or (an upload's staging copy)
//! the workspace, read with `O_NOFOLLOW`: a file there that became a link
//! or a FIFO is refused, never followed or waited on.

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::ffi::OsStr;
use std::io::{Error, ErrorKind, Result};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

const DIR: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn refused(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::PermissionDenied, what.to_string())
}

/// A tree kiln writes into: its root, opened once.
#[derive(Debug)]
pub(crate) struct Beneath {
    root: OwnedFd,
}

impl Beneath {
    /// Opens `root` (a directory kiln made; not itself written by steps).
    pub(crate) fn open(root: &Path) -> Result<Beneath> {
        let root = rustix::fs::open(root, DIR | OFlags::NOFOLLOW, Mode::empty())?;
        Ok(Beneath { root })
    }

    /// The directory `rel` beneath the root, created (owned by `owner`)
    /// where it is missing. A component that is a link or not a directory
    /// is an error naming it.
    pub(crate) fn dir(&self, rel: &Path, owner: (u32, u32)) -> Result<OwnedFd> {
        let mut cur = rustix::fs::openat(&self.root, ".", DIR, Mode::empty())?;
        let mut walked = std::path::PathBuf::new();
        for part in rel.components() {
            let name = match part {
                Component::Normal(n) => n,
                Component::CurDir => continue,
                _ => return Err(refused(format!("`{}` must stay inside its tree", rel.display()))),
            };
            walked.push(name);
            cur = match open_dir_at(&cur, name) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) => chown_at(&cur, name, owner)?,
                        Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    open_dir_at(&cur, name).map_err(|e| why(&walked, e))?
                }
                Err(e) => return Err(why(&walked, e)),
            };
        }
        Ok(cur)
    }
}

fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(dir, name, DIR, Mode::empty(), resolve())
}

/// Says what a component is when it cannot be opened as a directory.
fn why(walked: &Path, e: rustix::io::Errno) -> Error {
    match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => {
            refused(format!("`{}` is a symbolic link", walked.display()))
        }
        rustix::io::Errno::NOTDIR => {
            Error::new(ErrorKind::AlreadyExists, format!("`{}` is not a directory", walked.display()))
        }
        e => Error::from(e),
    }
}

fn chown_at(dir: &OwnedFd, name: &OsStr, (uid, gid): (u32, u32)) -> Result<()> {
    let (uid, gid) = ids(uid, gid);
    rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn ids(uid: u32, gid: u32) -> (rustix::fs::Uid, rustix::fs::Gid) {
    (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid))
}

/// Does `name` exist in `dir` (as anything, a link included)?
pub(crate) fn exists_at(dir: &OwnedFd, name: &OsStr) -> Result<bool> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Merges kiln's tree `src` into the directory `dst`, as GitHub's download
/// does: directories merge, a file replaces the entry of the same name (a
/// link there is removed, never written through), and a link or a file
/// where a directory must go is an error. Everything created is `owner`'s.
pub(crate) fn merge_into(src: &Path, dst: &OwnedFd, owner: (u32, u32)) -> Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            let sub = subdir(dst, &name, 0o755, owner)?;
            merge_into(&entry.path(), &sub, owner)?;
        } else {
            replace_entry(&entry.path(), &ft, dst, &name, owner)?;
        }
    }
    Ok(())
}

/// The directory `name` in `dst`, made (mode `mode`, owned by `owner`)
/// when missing; a link or a file there is an error naming it.
pub(crate) fn subdir(dst: &OwnedFd, name: &OsStr, mode: u32, owner: (u32, u32)) -> Result<OwnedFd> {
    match open_dir_at(dst, name) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::NOENT) => {
            rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700))?;
            chown_at(dst, name, owner)?;
            let fd = open_dir_at(dst, name)?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777))?;
            Ok(fd)
        }
        Err(e) => Err(why(Path::new(name), e)),
    }
}

/// Puts kiln's file or link `src` at `name` in `dst`, replacing what is
/// there (a link is removed, never written through); a directory there is
/// an error.
pub(crate) fn replace_entry(
    src: &Path,
    ft: &std::fs::FileType,
    dst: &OwnedFd,
    name: &OsStr,
    owner: (u32, u32),
) -> Result<()> {
    match rustix::fs::statat(dst, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("`{}` is a directory; a file goes there", Path::new(name).display()),
            ))
        }
        Ok(_) => rustix::fs::unlinkat(dst, name, AtFlags::empty())?,
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    put_entry(src, ft, dst, name, owner)
}

/// Copies kiln's `src` (a file, a link or a directory tree) to the new
/// entry `name` of `dst`; it must not exist yet.
pub(crate) fn copy_new(src: &Path, dst: &OwnedFd, name: &OsStr, owner: (u32, u32)) -> Result<()> {
    let ft = std::fs::symlink_metadata(src)?.file_type();
    if ft.is_dir() {
        rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o755))?;
        chown_at(dst, name, owner)?;
        let sub = open_dir_at(dst, name)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            copy_new(&entry.path(), &sub, &entry.file_name(), owner)?;
        }
        return Ok(());
    }
    put_entry(src, &ft, dst, name, owner)
}

/// Moves `src`, a tree kiln made in a directory no step can reach, to
/// `name` in `dst`, owned by `owner` throughout: by one rename when both
/// are on one filesystem (a restored cache staged on the job's disk), else
/// by [`copy_new`]. Never replaces anything at `name`.
pub(crate) fn move_new(src: &Path, dst: &OwnedFd, name: &OsStr, owner: (u32, u32)) -> Result<()> {
    chown_tree(src, owner)?;
    match rustix::fs::renameat_with(rustix::fs::CWD, src, dst, name, rustix::fs::RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::XDEV | rustix::io::Errno::INVAL) => copy_new(src, dst, name, owner),
        Err(e) => Err(e.into()),
    }
}

/// Gives every entry of kiln's own tree `p` to `owner`; links are changed
/// themselves, never followed.
fn chown_tree(p: &Path, owner: (u32, u32)) -> Result<()> {
    let (uid, gid) = ids(owner.0, owner.1);
    rustix::fs::chownat(rustix::fs::CWD, p, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
    if std::fs::symlink_metadata(p)?.is_dir() {
        for entry in std::fs::read_dir(p)? {
            chown_tree(&entry?.path(), owner)?;
        }
    }
    Ok(())
}

/// Creates `name` in `dst` as a copy of the file or link `src`.
fn put_entry(
    src: &Path,
    ft: &std::fs::FileType,
    dst: &OwnedFd,
    name: &OsStr,
    owner: (u32, u32),
) -> Result<()> {
    if ft.is_symlink() {
        let target = std::fs::read_link(src)?;
        rustix::fs::symlinkat(target.as_os_str().as_bytes(), dst, name)?;
        return chown_at(dst, name, owner);
    }
    if !ft.is_file() {
        // kiln's staging holds files, links and directories only.
        return Ok(());
    }
    // The source may be a step's file (an upload's staging copy reads the
    // workspace): never followed if it became a link, never blocked on if
    // it became a FIFO.
    let mut from = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(src)?
    };
    if !from.metadata()?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, format!("{} is not a regular file", src.display())));
    }
    let mode = from.metadata()?.permissions().mode() & 0o777;
    let fd = rustix::fs::openat(
        dst,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut to = std::fs::File::from(fd);
    std::io::copy(&mut from, &mut to)?;
    let (uid, gid) = ids(owner.0, owner.1);
    rustix::fs::fchown(&to, Some(uid), Some(gid))?;
    rustix::fs::fchmod(&to, Mode::from_raw_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn me(d: &Path) -> (u32, u32) {
        let m = std::fs::metadata(d).unwrap();
        (m.uid(), m.gid())
    }

    #[test]
    fn a_planted_link_in_the_path_creates_nothing_outside() {
        let d = tempfile::tempdir().unwrap();
        let (ws, outside) = (d.path().join("ws"), d.path().join("outside"));
        std::fs::create_dir(&ws).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("dist")).unwrap();
        let b = Beneath::open(&ws).unwrap();
        let e = b.dir(Path::new("dist/sub/deeper"), me(d.path())).unwrap_err();
        assert!(e.to_string().contains("`dist` is a symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "created through the link");
        // A link further down, and `..`, are refused too.
        std::fs::create_dir(ws.join("real")).unwrap();
        std::os::unix::fs::symlink("/", ws.join("real/up")).unwrap();
        assert!(b.dir(Path::new("real/up/tmp"), me(d.path())).is_err());
        assert!(b.dir(Path::new("real/../../outside"), me(d.path())).is_err());
        // Real directories are made and opened.
        let fd = b.dir(Path::new("real/new/dir"), me(d.path())).unwrap();
        assert!(!exists_at(&fd, OsStr::new("x")).unwrap());
        assert!(ws.join("real/new/dir").is_dir());
    }

    #[test]
    fn merging_never_writes_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let (src, ws, outside) = (d.path().join("src"), d.path().join("ws"), d.path().join("outside"));
        for p in [&src, &ws, &outside] {
            std::fs::create_dir(p).unwrap();
        }
        std::fs::create_dir(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), "new").unwrap();
        std::fs::write(src.join("top"), "new").unwrap();
        std::fs::write(outside.join("top"), "host").unwrap();
        std::fs::write(ws.join("keep"), "old").unwrap();
        std::os::unix::fs::symlink(outside.join("top"), ws.join("top")).unwrap();
        let b = Beneath::open(&ws).unwrap();
        merge_into(&src, &b.dir(Path::new(""), me(d.path())).unwrap(), me(d.path())).unwrap();
        assert_eq!(std::fs::read_to_string(ws.join("keep")).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(ws.join("sub/f")).unwrap(), "new");
        assert!(!std::fs::symlink_metadata(ws.join("top")).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(outside.join("top")).unwrap(), "host", "written through a link");
        // A link where a directory must go is refused, and nothing lands outside.
        let ws2 = d.path().join("ws2");
        std::fs::create_dir(&ws2).unwrap();
        std::os::unix::fs::symlink(&outside, ws2.join("sub")).unwrap();
        let b2 = Beneath::open(&ws2).unwrap();
        assert!(merge_into(&src, &b2.dir(Path::new(""), me(d.path())).unwrap(), me(d.path())).is_err());
        assert!(!outside.join("f").exists());
    }

    #[test]
    fn copying_a_new_entry_keeps_links_as_links_and_refuses_an_existing_one() {
        let d = tempfile::tempdir().unwrap();
        let (src, ws) = (d.path().join("src"), d.path().join("ws"));
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("a/l")).unwrap();
        std::fs::create_dir(&ws).unwrap();
        let b = Beneath::open(&ws).unwrap();
        let root = b.dir(Path::new(""), me(d.path())).unwrap();
        copy_new(&src.join("a"), &root, OsStr::new("a"), me(d.path())).unwrap();
        assert_eq!(std::fs::read_to_string(ws.join("a/b/f")).unwrap(), "x");
        assert!(std::fs::symlink_metadata(ws.join("a/l")).unwrap().file_type().is_symlink());
        assert!(copy_new(&src.join("a/b/f"), &root, OsStr::new("a"), me(d.path())).is_err());
    }
}
