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

/// Where blob `d`'s bytes are on disk: its own file, or its range in a
/// pack (found by reading the packs' index files as they are on disk).
pub fn blob_location(td: &tempfile::TempDir, tenant: &str, d: &Digest) -> (PathBuf, u64, u64) {
    let own = blob_file(td, tenant, d);
    if let Ok(md) = std::fs::metadata(&own) {
        return (own, 0, md.len());
    }
    let packs = td.path().join("store").join(tenant).join("packs");
    for fan in std::fs::read_dir(&packs).unwrap().flatten() {
        for f in std::fs::read_dir(fan.path()).unwrap().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "idx") {
                let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                for m in idx["members"].as_array().unwrap() {
                    if m[0].as_str() == Some(&d.to_string()) {
                        return (p.with_extension(""), m[1].as_u64().unwrap(), m[2].as_u64().unwrap());
                    }
                }
            }
        }
    }
    panic!("blob {d} is nowhere in the store");
}

/// Overwrite blob `d`'s stored bytes in place with `evil` (same length):
/// its own file or its range of a pack.
pub fn tamper(td: &tempfile::TempDir, tenant: &str, d: &Digest, evil: &[u8]) {
    use std::os::unix::fs::FileExt;
    let (file, offset, size) = blob_location(td, tenant, d);
    assert_eq!(size, evil.len() as u64, "same-size tamper");
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(evil, offset).unwrap();
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
