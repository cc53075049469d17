//! Blob files of a store on the local filesystem, written by kiln itself.
//!
//! The object store's local backend makes every put a staging file, a
//! write, a hard link and an unlink, each a task of the blocking pool, and
//! it writes the staging file even when the blob is already there. For a
//! tree of thousands of small files that per-call cost is most of the time
//! a store takes, so a local store writes small blobs here instead: one
//! existence check, a temporary file under the tenant's `tmp/` (which gc
//! sweeps), and one `renameat2(RENAME_NOREPLACE)` that publishes the blob
//! under its digest only once every byte is written. Many files are put by
//! a few blocking workers, each handling whole files, instead of one task
//! per step per file.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{OFlags, RenameFlags, CWD};
use rustix::io::Errno;

use crate::digest::{Digest, Hasher};

/// Where a local store keeps its files and whether it syncs them.
#[derive(Debug, Clone)]
pub(crate) struct LocalDir {
    /// The store's directory (canonical).
    pub root: PathBuf,
    /// `fsync` every blob file and its directory before calling it stored.
    pub fsync: bool,
}

/// A local file read for storing: its bytes are in the caller's buffer.
pub(crate) struct ReadFile {
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`& 0o777`).
    pub mode: u32,
    /// False when the file is larger than the limit it was read with and
    /// nothing was read (it is streamed instead).
    pub whole: bool,
}

/// Open `path` for reading without following a final symlink or blocking on
/// a FIFO put there after the walk, and read it into `buf` when it is at
/// most `max` bytes. Anything but a regular file is refused.
pub(crate) fn read_file(path: &Path, max: u64, buf: &mut Vec<u8>) -> std::io::Result<ReadFile> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(path)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::other("not a regular file (it changed while the tree was read)"));
    }
    let (size, mode) = (md.len(), md.mode() & 0o777);
    if size > max {
        return Ok(ReadFile { size, mode, whole: false });
    }
    buf.clear();
    buf.reserve(size as usize);
    f.read_to_end(buf)?;
    // The file may have grown or shrunk since fstat: what was read is what is stored.
    Ok(ReadFile { size: buf.len() as u64, mode, whole: true })
}

impl LocalDir {
    /// Store `data`, whose digest is `digest`, as the file `dest`, going
    /// through `tmp` (a fresh name in the tenant's temporary directory).
    /// Returns false when the blob was already present (nothing written).
    pub fn put_blob(&self, dest: &Path, tmp: &Path, data: &[u8]) -> std::io::Result<bool> {
        self.put_parts(dest, tmp, &[data])
    }

    /// [`LocalDir::put_blob`] of the concatenation of `parts`, written
    /// one after the other (a pack's blobs, without copying them together).
    pub fn put_parts<P: AsRef<[u8]>>(&self, dest: &Path, tmp: &Path, parts: &[P]) -> std::io::Result<bool> {
        if std::fs::symlink_metadata(dest).is_ok() {
            return Ok(false);
        }
        let mut f = create_tmp(tmp)?;
        let written = parts.iter().try_for_each(|p| f.write_all(p.as_ref())).and_then(|()| {
            if self.fsync {
                f.sync_all()
            } else {
                Ok(())
            }
        });
        drop(f);
        if let Err(e) = written {
            let _ = std::fs::remove_file(tmp);
            return Err(e);
        }
        self.publish_tmp(tmp, dest)
    }
}

impl LocalDir {
    /// Copy `src` to the new file `tmp` in 1 MiB chunks, hashing what is
    /// written. The caller publishes it with [`LocalDir::publish_tmp`].
    pub fn copy_hashing(&self, mut src: std::fs::File, tmp: &Path) -> std::io::Result<(Digest, u64)> {
        let mut f = create_tmp(tmp)?;
        let res = (|| {
            let mut h = Hasher::new();
            let mut chunk = vec![0u8; 1 << 20];
            loop {
                let n = match src.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                h.update(&chunk[..n]);
                f.write_all(&chunk[..n])?;
            }
            if self.fsync {
                f.sync_all()?;
            }
            let size = h.len();
            Ok((h.finish(), size))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        res
    }

    /// Publish the fully written `tmp` as the blob file `dest` (see
    /// [`LocalDir::put_blob`]); `tmp` is gone afterwards either way.
    pub fn publish_tmp(&self, tmp: &Path, dest: &Path) -> std::io::Result<bool> {
        let published = publish(tmp, dest);
        if !matches!(published, Ok(true)) {
            let _ = std::fs::remove_file(tmp);
        }
        if self.fsync && matches!(published, Ok(true)) {
            std::fs::File::open(parent(dest)?)?.sync_all()?;
        }
        published
    }
}

fn parent(p: &Path) -> std::io::Result<&Path> {
    p.parent().ok_or_else(|| std::io::Error::other(format!("{} has no parent", p.display())))
}

/// Creates the new temporary file `tmp`, and its directory if missing.
fn create_tmp(tmp: &Path) -> std::io::Result<std::fs::File> {
    match create_new(tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(parent(tmp)?)?;
            create_new(tmp)
        }
        r => r,
    }
}

fn create_new(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(p)
}

/// Move the fully written `tmp` to `dest` unless `dest` exists. Returns
/// whether it moved; `tmp` is left for the caller to remove otherwise.
fn publish(tmp: &Path, dest: &Path) -> std::io::Result<bool> {
    let mut made_parent = false;
    loop {
        match rustix::fs::renameat_with(CWD, tmp, CWD, dest, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(true),
            Err(Errno::EXIST) => return Ok(false),
            Err(Errno::NOENT) if !made_parent => {
                std::fs::create_dir_all(parent(dest)?)?;
                made_parent = true;
            }
            // A filesystem without RENAME_NOREPLACE: a hard link also refuses
            // to replace, then the temporary name goes.
            Err(Errno::INVAL | Errno::NOSYS) => {
                return match std::fs::hard_link(tmp, dest) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(tmp);
                        Ok(true)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Run `work` on every item with a few blocking workers, each reusing one
/// read buffer. Stops at the first error, which it returns with the item's
/// index; results come back in item order.
pub(crate) async fn for_each_blocking<T, R, F>(
    items: Arc<Vec<T>>,
    work: F,
) -> Result<Vec<R>, (usize, std::io::Error)>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(&T, &mut Vec<u8>) -> std::io::Result<R> + Send + Sync + 'static,
{
    let n = items.len();
    // I/O waits overlap with hashing, so at least two workers even on one core.
    let workers = std::thread::available_parallelism().map_or(2, |p| p.get()).clamp(2, 8).min(n.max(1));
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let failed: Arc<Mutex<Option<(usize, std::io::Error)>>> = Arc::new(Mutex::new(None));
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (items, work, next, failed) = (items.clone(), work.clone(), next.clone(), failed.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    return out;
                }
                match work(&items[i], &mut buf) {
                    Ok(r) => out.push((i, r)),
                    Err(e) => {
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                        let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                        if f.as_ref().is_none_or(|(j, _)| i < *j) {
                            *f = Some((i, e));
                        }
                        return out;
                    }
                }
                // Do not keep a large buffer around for the small files after it.
                if buf.capacity() > 4 << 20 {
                    buf = Vec::new();
                }
            }
        }));
    }
    let mut slots: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for t in tasks {
        let done = t.await.map_err(|e| (0, std::io::Error::other(e)))?;
        for (i, r) in done {
            slots[i] = Some(r);
        }
    }
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| (i, std::io::Error::other("not processed"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_already_present_is_not_rewritten_and_no_temporary_is_left() {
        let d = tempfile::tempdir().unwrap();
        let local = LocalDir { root: d.path().to_path_buf(), fsync: true };
        let dest = d.path().join("t/blobs/sha256/ab/abcd");
        let tmp = d.path().join("t/tmp/one");
        assert!(local.put_blob(&dest, &tmp, b"first").unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
        let tmp2 = d.path().join("t/tmp/two");
        assert!(!local.put_blob(&dest, &tmp2, b"other").unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"first");
        assert_eq!(std::fs::read_dir(d.path().join("t/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn losing_the_race_to_publish_keeps_the_winner_and_removes_the_loser() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("blob");
        let tmp = d.path().join("tmp");
        std::fs::write(&tmp, b"mine").unwrap();
        std::fs::write(&dest, b"theirs").unwrap();
        assert!(!publish(&tmp, &dest).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"theirs");
    }

    #[test]
    fn a_fifo_swapped_in_for_a_file_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        rustix::fs::mknodat(CWD, &p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
            .unwrap();
        let mut buf = Vec::new();
        assert!(read_file(&p, 1 << 20, &mut buf).is_err());
    }

    #[test]
    fn results_come_back_in_order_and_the_first_error_wins() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let items: Vec<u32> = (0..500).collect();
        let out = rt.block_on(for_each_blocking(Arc::new(items), |i, _| Ok(*i * 2))).unwrap();
        assert_eq!(out, (0..500).map(|i| i * 2).collect::<Vec<_>>());
        let items: Vec<u32> = (0..500).collect();
        let err = rt
            .block_on(for_each_blocking(Arc::new(items), |i, _| {
                if *i >= 100 {
                    Err(std::io::Error::other(format!("item {i}")))
                } else {
                    Ok(())
                }
            }))
            .unwrap_err();
        assert!(err.0 >= 100);
    }
}
