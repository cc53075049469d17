//! kiln-store's strict tar reader (`TarReader`), which every archive a step,
//! a worker or an API client hands kiln goes through.
//!
//! Invariants: never panics; never reads past the input; the end marker is
//! only accepted at the end of the input; a file's data is exactly its size;
//! the entries of a fully accepted archive convert to a manifest the way
//! `Store::put_tar` converts them, and those that fit a plain ustar header
//! survive a rebuild with `RawTarBuilder` and a re-read unchanged.
#![no_main]

use std::io::Read;

use kiln_store::tar::{RawTarBuilder, TarEntry, TarKind, TarReader};
use kiln_store::{validate_manifest, Digest, Entry, Manifest, RestoreLimits};
use libfuzzer_sys::fuzz_target;

/// Reads every entry (and its data); `Ok` when the whole archive was accepted.
fn read_all(data: &[u8]) -> Result<Vec<(TarEntry, Vec<u8>)>, ()> {
    let mut tr = TarReader::new(data);
    let mut out = Vec::new();
    loop {
        let before = tr.offset();
        let next = tr.next_entry();
        assert!(tr.offset() <= data.len() as u64, "offset {} past the input ({})", tr.offset(), data.len());
        assert!(tr.offset() >= before, "offset went backwards");
        match next {
            Ok(None) => {
                assert_eq!(tr.offset(), data.len() as u64, "end marker accepted before the end of the input");
                // After the end, the reader stays at the end.
                assert!(matches!(tr.next_entry(), Ok(None)));
                return Ok(out);
            }
            Err(_) => return Err(()),
            Ok(Some(e)) => {
                let mut body = Vec::new();
                let read = tr.data().read_to_end(&mut body);
                if let TarKind::File { size } = e.kind {
                    match read {
                        Ok(n) => assert_eq!(n as u64, size, "file data is not its size"),
                        Err(_) => {
                            assert!((body.len() as u64) < size);
                            return Err(());
                        }
                    }
                } else {
                    assert!(read.is_ok() && body.is_empty(), "a non-file entry has data");
                }
                assert!(!e.path.ends_with('/'), "path keeps a trailing slash: {:?}", e.path);
                assert!(e.mode <= 0o7777);
                out.push((e, body));
            }
        }
    }
}

/// `Store::put_tar`'s conversion, without a store.
fn to_manifest(entries: &[(TarEntry, Vec<u8>)]) -> Option<Manifest> {
    let limits = RestoreLimits::default();
    let mut files = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (e, body) in entries {
        if e.path.is_empty() {
            if matches!(e.kind, TarKind::Dir) {
                continue;
            }
            return None;
        }
        kiln_store::tree::validate_path(&e.path, &limits).ok()?;
        let mode = e.mode & 0o777;
        match &e.kind {
            TarKind::Dir => out.push(Entry::Dir { path: e.path.clone(), mode }),
            TarKind::Symlink { target } => {
                out.push(Entry::Symlink { path: e.path.clone(), symlink: target.clone() })
            }
            TarKind::HardLink { target } => {
                let &(size, digest) = files.get(target)?;
                files.insert(e.path.clone(), (size, digest));
                out.push(Entry::File { path: e.path.clone(), size, mode, digest });
            }
            TarKind::File { size } => {
                let digest = Digest::of(body);
                files.insert(e.path.clone(), (*size, digest));
                out.push(Entry::File { path: e.path.clone(), size: *size, mode, digest });
            }
        }
    }
    let m = Manifest::new(out);
    validate_manifest(&m, &limits).ok()?;
    Some(m)
}

fn fits_ustar(s: &str) -> bool {
    s.len() <= 100 && !s.contains('\0')
}

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = read_all(data) else {
        return;
    };
    if let Some(m) = to_manifest(&entries) {
        // The canonical form is stable.
        assert_eq!(m.to_canonical_json(), Manifest::new(m.entries.clone()).to_canonical_json());
    }

    // Rebuild what fits a plain ustar header and read it back.
    let fits = entries.iter().all(|(e, _)| {
        fits_ustar(&e.path)
            && match &e.kind {
                TarKind::Symlink { target } | TarKind::HardLink { target } => fits_ustar(target),
                _ => true,
            }
    });
    if !fits {
        return;
    }
    let mut b = RawTarBuilder::new();
    for (e, body) in &entries {
        match &e.kind {
            TarKind::File { .. } => b.raw(b'0', &e.path, "", e.mode, body.len() as u64, body),
            TarKind::Dir => b.raw(b'5', &e.path, "", e.mode, 0, &[]),
            TarKind::Symlink { target } => b.raw(b'2', &e.path, target, e.mode, 0, &[]),
            TarKind::HardLink { target } => b.raw(b'1', &e.path, target, e.mode, 0, &[]),
        };
    }
    let rebuilt = b.finish();
    let again = read_all(&rebuilt).expect("a rebuilt archive is refused");
    assert_eq!(again.len(), entries.len());
    for ((a, da), (b, db)) in entries.iter().zip(&again) {
        assert_eq!((&a.path, a.mode, &a.kind, da), (&b.path, b.mode, &b.kind, db));
    }
});
