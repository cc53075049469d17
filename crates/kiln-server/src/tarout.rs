//! Writes a stored tree as a ustar archive (PAX `path`/`linkpath` records
//! for long names), for artifact downloads. Every file's bytes are read
//! through the store, which verifies them against their digest.

use kiln_store::{Entry, Manifest, Store};

use crate::error::ServerError;

const BLOCK: usize = 512;

fn header(name: &str, link: &str, typeflag: u8, mode: u32, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let long = name.len() > 100 || link.len() > 100;
    if long {
        let mut records = Vec::new();
        for (k, v) in [("path", name), ("linkpath", link)] {
            if v.is_empty() {
                continue;
            }
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while format!("{len}").len() + body.len() != len {
                len += 1;
            }
            records.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        out.extend(raw_header("PaxHeader", "", b'x', 0o644, records.len() as u64));
        let pad = (BLOCK - records.len() % BLOCK) % BLOCK;
        out.extend_from_slice(&records);
        out.resize(out.len() + pad, 0);
    }
    let short = |s: &str| -> String {
        if s.len() <= 100 {
            s.to_string()
        } else {
            // Cut at a character boundary; the PAX record holds the full name.
            let mut end = 100;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        }
    };
    out.extend(raw_header(&short(name), &short(link), typeflag, mode, size));
    out
}

fn raw_header(name: &str, link: &str, typeflag: u8, mode: u32, size: u64) -> Vec<u8> {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let put_oct = |h: &mut [u8; BLOCK], at: usize, len: usize, v: u64| {
        let s = format!("{:0width$o}\0", v, width = len - 1);
        h[at..at + len].copy_from_slice(&s.as_bytes()[s.len() - len..]);
    };
    put_oct(&mut h, 100, 8, u64::from(mode));
    put_oct(&mut h, 108, 8, 0);
    put_oct(&mut h, 116, 8, 0);
    put_oct(&mut h, 124, 12, size);
    put_oct(&mut h, 136, 12, 0);
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h.to_vec()
}

/// The archive of `manifest`'s tree.
pub async fn tree_tar(store: &Store, manifest: &Manifest) -> Result<Vec<u8>, ServerError> {
    let mut out = Vec::new();
    for e in &manifest.entries {
        match e {
            Entry::Dir { path, mode } => out.extend(header(&format!("{path}/"), "", b'5', *mode, 0)),
            Entry::Symlink { path, symlink } => out.extend(header(path, symlink, b'2', 0o777, 0)),
            Entry::File { path, size, mode, digest } => {
                let data = store.get_bytes(digest, Some(*size)).await?;
                out.extend(header(path, "", b'0', *mode, data.len() as u64));
                out.extend_from_slice(&data);
                out.resize(out.len() + (BLOCK - data.len() % BLOCK) % BLOCK, 0);
            }
        }
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}
