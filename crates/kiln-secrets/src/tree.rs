//! Refusing directory trees (artifacts, caches, outputs) that contain a secret value.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Scrubber;

/// Why a tree was refused.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A file (its content, its name, or a symlink's target) contains a secret value or an
    /// encoding of it.
    #[error("refusing {path:?}: it contains the value of secret {secret_name} (or an encoding of it)")]
    SecretFound {
        /// Path relative to the root.
        path: PathBuf,
        /// Name of the secret.
        secret_name: String,
    },
    /// Reading the tree failed.
    #[error("reading {path:?}: {source}")]
    Io {
        /// Path relative to the root.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn os_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        s.as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        s.to_string_lossy().into_owned().into_bytes()
    }
}

/// Walks `root` without following symlinks and refuses the tree if any regular file's content,
/// any entry name, or any symlink's target (as a string) contains a secret value or encoding.
/// Files are streamed (256 KiB at a time), so large files are fine. Entries are visited in
/// sorted order; the first finding is reported. Other file types (fifos, sockets, devices) are
/// not opened. `root` itself may be a regular file.
pub fn check_tree(root: &Path, scrubber: &Scrubber) -> Result<(), TreeError> {
    let Some(vm) = scrubber.value_matcher() else {
        return Ok(());
    };
    let io = |rel: &Path, source| TreeError::Io { path: rel.to_path_buf(), source };
    let found = |rel: &Path, name: &str| TreeError::SecretFound {
        path: rel.to_path_buf(),
        secret_name: name.to_string(),
    };
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = if rel.as_os_str().is_empty() { root.to_path_buf() } else { root.join(&rel) };
        let meta = fs::symlink_metadata(&full).map_err(|e| io(&rel, e))?;
        let ft = meta.file_type();
        if let Some(name) = rel.file_name() {
            if let Some(s) = scrubber.contains_secret(&os_bytes(name)) {
                return Err(found(&rel, s));
            }
        }
        if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(|e| io(&rel, e))?;
            if let Some(s) = scrubber.contains_secret(&os_bytes(target.as_os_str())) {
                return Err(found(&rel, s));
            }
        } else if ft.is_dir() {
            let mut names = Vec::new();
            for entry in fs::read_dir(&full).map_err(|e| io(&rel, e))? {
                names.push(entry.map_err(|e| io(&rel, e))?.file_name());
            }
            names.sort();
            // Reverse so that popping visits in sorted order.
            for name in names.into_iter().rev() {
                stack.push(rel.join(name));
            }
        } else if ft.is_file() {
            let mut f = fs::File::open(&full).map_err(|e| io(&rel, e))?;
            if let Some(s) = vm.find_in_reader(&mut f).map_err(|e| io(&rel, e))? {
                return Err(found(&rel, s));
            }
        }
    }
    Ok(())
}
