#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kiln_store::{Digest, Store};

pub fn new_store() -> (tempfile::TempDir, Store) {
    let td = tempfile::tempdir().unwrap();
    let s = Store::open_local(td.path().join("store")).unwrap();
    (td, s)
}

pub fn blob_file(td: &tempfile::TempDir, tenant: &str, d: &Digest) -> PathBuf {
    let h = d.hex();
    td.path().join("store").join(tenant).join("blobs/sha256").join(&h[..2]).join(&h)
}

/// Overwrite blob `d`'s stored bytes in place with `evil` (same length):
/// its own file or its range of a pack.
pub async fn tamper(s: &Store, d: &Digest, evil: &[u8]) {
    use std::os::unix::fs::FileExt;
    let place = s.locate_blob(d).await.unwrap().unwrap_or_else(|| panic!("blob {d} is not in the store"));
    assert_eq!(place.size, evil.len() as u64, "same-size tamper");
    let f = std::fs::OpenOptions::new().write(true).open(&place.file).unwrap();
    f.write_all_at(evil, place.offset).unwrap();
}

pub fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Every path (relative) under `dir`, sorted, without following symlinks.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn rec(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                rec(base, &p, out);
            }
        }
    }
    rec(dir, dir, &mut out);
    out.sort();
    out
}
