//! `actions/checkout`: the job's workspace gets a copy of the source.
//!
//! The source is the operator's directory, so it is trusted; the copy is
//! what the job's steps may change. Symlinks are copied as symlinks (never
//! followed), special files are skipped, and everything is owned by the
//! step's uid. In a git work tree only the files git would show (tracked and
//! untracked-but-not-ignored) are copied, plus `.git` itself, so build
//! outputs and kiln's own state are left behind.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::EngineError;

/// Copies `src` into `dst` (which exists), owned by `uid:gid`. Returns the
/// number of files copied. `dst` may hold what earlier steps wrote (a
/// second checkout): it is written by descriptor (see
/// [`crate::runner::beneath`]), so a link planted there is replaced, never
/// written through, and a link where a directory goes is an error.
pub fn copy_source(src: &Path, dst: &Path, uid: u32, gid: u32, skip: &[PathBuf]) -> Result<u64, EngineError> {
    let listed = git_listed_files(src);
    let mut count = 0;
    let root = crate::runner::beneath::Beneath::open(dst)
        .and_then(|b| b.dir(Path::new(""), (uid, gid)))
        .map_err(|e| EngineError::io("opening", dst, e))?;
    copy_dir(src, &root, Path::new(""), (uid, gid), skip, listed.as_ref(), &mut count)?;
    Ok(count)
}

fn copy_dir(
    src: &Path,
    dst: &std::os::fd::OwnedFd,
    rel: &Path,
    owner: (u32, u32),
    skip: &[PathBuf],
    listed: Option<&BTreeSet<PathBuf>>,
    count: &mut u64,
) -> Result<(), EngineError> {
    use crate::runner::beneath::{replace_entry, subdir};
    let dir = src.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|e| EngineError::io("reading source dir", &dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io("reading source dir", &dir, e))?;
        let name = entry.file_name();
        let rel_path = rel.join(&name);
        let from = src.join(&rel_path);
        if skip.iter().any(|s| s == &from) {
            continue;
        }
        let in_git_dir = rel_path.components().next().map(|c| c.as_os_str() == ".git").unwrap_or(false);
        let meta = std::fs::symlink_metadata(&from).map_err(|e| EngineError::io("reading", &from, e))?;
        let ft = meta.file_type();
        let at = Path::new(crate::runner::env::WORKSPACE).join(&rel_path);
        if ft.is_dir() {
            if let Some(listed) = listed {
                if !in_git_dir && !listed.iter().any(|p| p.starts_with(&rel_path)) {
                    continue;
                }
            }
            let sub = subdir(dst, &name, meta.permissions().mode() & 0o777, owner)
                .map_err(|e| EngineError::io("creating", &at, e))?;
            copy_dir(src, &sub, &rel_path, owner, skip, listed, count)?;
        } else if ft.is_file() || ft.is_symlink() {
            if let Some(listed) = listed {
                if !in_git_dir && !listed.contains(&rel_path) {
                    continue;
                }
            }
            replace_entry(&from, &ft, dst, &name, owner).map_err(|e| EngineError::io("writing", &at, e))?;
            *count += 1;
        }
    }
    Ok(())
}

/// Copies a file or a directory tree (links as links, nothing followed) to
/// `dst`, owned by root: the staging copy of an upload. Never consults git,
/// since `src` is a workspace a step has written.
pub fn copy_path(src: &Path, dst: &Path) -> Result<u64, EngineError> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| EngineError::io("reading", src, e))?;
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|e| EngineError::io("creating", parent, e))?;
    }
    if meta.is_dir() {
        std::fs::create_dir_all(dst).map_err(|e| EngineError::io("creating", dst, e))?;
        let mut count = 0;
        let root = crate::runner::beneath::Beneath::open(dst)
            .and_then(|b| b.dir(Path::new(""), (0, 0)))
            .map_err(|e| EngineError::io("opening", dst, e))?;
        copy_dir(src, &root, Path::new(""), (0, 0), &[], None, &mut count)?;
        Ok(count)
    } else if meta.is_file() {
        std::fs::copy(src, dst).map_err(|e| EngineError::io("copying", src, e))?;
        Ok(1)
    } else {
        Ok(0)
    }
}

/// The files git would show under `src`, relative to it, or `None` when `src`
/// is not in a git work tree. git runs with every hook and fsmonitor off.
fn git_listed_files(src: &Path) -> Option<BTreeSet<PathBuf>> {
    let out = crate::git::hardened_git(src)
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut set = BTreeSet::new();
    for name in out.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        set.insert(PathBuf::from(String::from_utf8_lossy(name).into_owned()));
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_and_links_without_following() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", src.path().join("evil")).unwrap();
        std::fs::create_dir(src.path().join(".kiln")).unwrap();
        std::fs::write(src.path().join(".kiln/state.db"), "x").unwrap();
        let (uid, gid) = (std::fs::metadata(src.path()).unwrap().uid(), 0);
        use std::os::unix::fs::MetadataExt;
        let n = copy_source(src.path(), dst.path(), uid, gid, &[src.path().join(".kiln")]).unwrap();
        assert_eq!(n, 2);
        assert_eq!(std::fs::read_to_string(dst.path().join("sub/a.txt")).unwrap(), "a");
        assert!(std::fs::symlink_metadata(dst.path().join("evil")).unwrap().file_type().is_symlink());
        assert!(!dst.path().join(".kiln").exists());
    }
}
