//! A minimal, strict ustar + PAX (+ GNU long name) reader, and tar ingest through the
//! same validation as [`Store::restore_tree`].
//!
//! We do not use the `tar` crate: its PAX/ustar size confusion (RUSTSEC-2026-0068, a
//! nonzero ustar size silently winning over the PAX `size` record, letting two parsers
//! see different entries) is exactly the class of bug a tiny strict reader can rule out:
//! here a well-formed PAX `size` overrides the ustar field only when the ustar field is
//! zero or equal; any disagreement is [`ArchiveError::SizeMismatch`]. (Its
//! `unpack_in` following a planted symlink to chmod outside the root,
//! RUSTSEC-2026-0067, is the other class extraction here rules out: nothing
//! is ever resolved through a link.)
//!
//! Accepted: typeflags `0`/NUL (file), `5` (dir), `2` (symlink), `1` (hard link, only to an
//! earlier regular file of the same archive; materialised as a copy), `x` (PAX, keys
//! `path`, `linkpath`, `size` honoured, others ignored, `GNU.sparse.*` refused), `g`
//! (global PAX, ignored unless it sets path/linkpath/size, then refused), `L`/`K` (GNU
//! long name / link name). Refused: devices, FIFOs, sparse, contiguous, v7 headers
//! without `ustar` magic, bad checksums, malformed numbers, data after the end marker.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path as FsPath;

use crate::digest::Digest;
use crate::error::{ArchiveError, Result, StoreError, TreeError};
use crate::store::Store;
use crate::tree::{validate_manifest, Entry, Manifest, RestoreLimits, TreeStats};

const BLOCK: usize = 512;
const MAX_EXT_HEADER: u64 = 1 << 20;

/// Kind of a tar entry after extension headers were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarKind {
    /// Regular file; its data follows (read with [`TarReader::data`]).
    File {
        /// Size in bytes.
        size: u64,
    },
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink {
        /// Link target.
        target: String,
    },
    /// Hard link.
    HardLink {
        /// Linked path.
        target: String,
    },
}

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Path as stored, with leading `./` and trailing `/` removed (not yet validated).
    pub path: String,
    /// Header mode bits & 0o7777 (callers mask further).
    pub mode: u32,
    /// What it is.
    pub kind: TarKind,
    /// Owner's numeric user id (PAX `uid` if present, else the header's).
    pub uid: u64,
    /// Owner's numeric group id (PAX `gid` if present, else the header's).
    pub gid: u64,
}

/// Streaming strict tar reader.
#[derive(Debug)]
pub struct TarReader<R> {
    r: R,
    offset: u64,
    remaining: u64,
    pad: u64,
    finished: bool,
}

#[derive(Default)]
struct Ext {
    path: Option<String>,
    linkpath: Option<String>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    pax_seen: bool,
    long_name_seen: bool,
    long_link_seen: bool,
}

fn parse_octal(field: &[u8], offset: u64, name: &'static str) -> Result<u64, ArchiveError> {
    let bad = || ArchiveError::BadNumber { offset, field: name };
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256: only non-negative values that fit in u64.
        if field[0] != 0x80 {
            return Err(bad());
        }
        let mut v: u64 = 0;
        for &b in &field[1..] {
            if v >> 56 != 0 {
                return Err(bad());
            }
            v = (v << 8) | b as u64;
        }
        return Ok(v);
    }
    let mut i = 0;
    while i < field.len() && field[i] == b' ' {
        i += 1;
    }
    let mut v: u64 = 0;
    let start = i;
    while i < field.len() && (b'0'..=b'7').contains(&field[i]) {
        v = v.checked_mul(8).and_then(|v| v.checked_add((field[i] - b'0') as u64)).ok_or_else(bad)?;
        i += 1;
    }
    let _ = start;
    if !field[i..].iter().all(|&b| b == 0 || b == b' ') {
        return Err(bad());
    }
    Ok(v)
}

fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

fn utf8(b: &[u8], offset: u64) -> Result<String, ArchiveError> {
    String::from_utf8(b.to_vec()).map_err(|_| ArchiveError::NonUtf8 { offset })
}

/// Strip leading `./` (and lone `.`) and trailing `/`.
fn normalize(p: &str) -> String {
    let mut s = p;
    while let Some(r) = s.strip_prefix("./") {
        s = r;
    }
    if s == "." {
        s = "";
    }
    s.trim_end_matches('/').to_string()
}

fn parse_pax(data: &[u8], offset: u64, ext: &mut Ext, global: bool) -> Result<(), ArchiveError> {
    let bad = |r: &str| ArchiveError::BadPax { offset, reason: r.to_string() };
    let mut rest = data;
    let mut seen: HashMap<String, ()> = HashMap::new();
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ').ok_or_else(|| bad("record without length"))?;
        let len_s = &rest[..sp];
        if len_s.is_empty() || len_s.len() > 10 || !len_s.iter().all(u8::is_ascii_digit) || (len_s[0] == b'0')
        {
            return Err(bad("malformed record length"));
        }
        let len: usize = std::str::from_utf8(len_s)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("malformed record length"))?;
        if len <= sp + 1 || len > rest.len() {
            return Err(bad("record length out of range"));
        }
        let rec = &rest[sp + 1..len];
        rest = &rest[len..];
        let rec = rec.strip_suffix(b"\n").ok_or_else(|| bad("record not newline-terminated"))?;
        let eq = rec.iter().position(|&b| b == b'=').ok_or_else(|| bad("record without `=`"))?;
        let key = std::str::from_utf8(&rec[..eq]).map_err(|_| bad("non-UTF-8 key"))?;
        let val = &rec[eq + 1..];
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        if seen.insert(key.to_string(), ()).is_some() {
            return Err(bad(&format!("duplicate key `{key}`")));
        }
        if key.starts_with("GNU.sparse") {
            return Err(bad("sparse files are not supported"));
        }
        match key {
            "path" | "linkpath" | "size" if global => {
                return Err(bad(&format!("global header sets `{key}`")))
            }
            "path" | "linkpath" => {
                let v = String::from_utf8(val.to_vec()).map_err(|_| bad("non-UTF-8 path"))?;
                if v.is_empty() {
                    return Err(bad(&format!("empty `{key}`")));
                }
                if key == "path" {
                    ext.path = Some(v);
                } else {
                    ext.linkpath = Some(v);
                }
            }
            "size" | "uid" | "gid" => {
                if val.is_empty() || val.len() > 20 || !val.iter().all(u8::is_ascii_digit) {
                    return Err(bad(&format!("malformed `{key}`")));
                }
                let v: u64 = std::str::from_utf8(val)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(&format!("`{key}` out of range")))?;
                match key {
                    // A global header's owner applies to nobody here.
                    _ if global => {}
                    "size" => ext.size = Some(v),
                    "uid" => ext.uid = Some(v),
                    _ => ext.gid = Some(v),
                }
            }
            _ => {}
        }
    }
    Ok(())
}

impl<R: Read> TarReader<R> {
    /// Wrap a reader positioned at the start of a tar stream.
    pub fn new(r: R) -> Self {
        TarReader { r, offset: 0, remaining: 0, pad: 0, finished: false }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, ArchiveError> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ArchiveError::Io(e.to_string())),
            }
        }
        self.offset += n as u64;
        Ok(n)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), ArchiveError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            let got = self.read_full(&mut buf[..k])?;
            if got < k {
                return Err(ArchiveError::Truncated { offset: self.offset });
            }
            n -= k as u64;
        }
        Ok(())
    }

    fn read_ext(&mut self, size: u64, offset: u64) -> Result<Vec<u8>, ArchiveError> {
        if size > MAX_EXT_HEADER {
            return Err(ArchiveError::HeaderTooLarge { offset, size });
        }
        let mut v = vec![0u8; size as usize];
        if self.read_full(&mut v)? < v.len() {
            return Err(ArchiveError::Truncated { offset: self.offset });
        }
        self.skip(pad_of(size))?;
        Ok(v)
    }

    /// Next entry, or `None` at the end-of-archive marker. Unread data of the previous
    /// entry is skipped.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, ArchiveError> {
        if self.finished {
            return Ok(None);
        }
        let (rem, pad) = (self.remaining, self.pad);
        self.remaining = 0;
        self.pad = 0;
        self.skip(rem + pad)?;
        let mut ext = Ext::default();
        loop {
            let hoff = self.offset;
            let mut h = [0u8; BLOCK];
            let n = self.read_full(&mut h)?;
            if n < BLOCK {
                return Err(ArchiveError::Truncated { offset: hoff });
            }
            if h.iter().all(|&b| b == 0) {
                if ext.pax_seen || ext.long_name_seen || ext.long_link_seen {
                    return Err(ArchiveError::Garbage {
                        offset: hoff,
                        reason: "extension header without a following entry".into(),
                    });
                }
                // End of archive: everything after must be zero.
                let mut buf = [0u8; 8192];
                loop {
                    let k = self.read_full(&mut buf)?;
                    if k == 0 {
                        break;
                    }
                    if buf[..k].iter().any(|&b| b != 0) {
                        return Err(ArchiveError::Garbage {
                            offset: self.offset,
                            reason: "non-zero data after end-of-archive marker".into(),
                        });
                    }
                }
                self.finished = true;
                return Ok(None);
            }
            // Checksum.
            let want = parse_octal(&h[148..156], hoff, "chksum")?;
            let sum: u64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| if (148..156).contains(&i) { b' ' as u64 } else { b as u64 })
                .sum();
            if sum != want {
                return Err(ArchiveError::BadChecksum { offset: hoff });
            }
            let magic = &h[257..265];
            let gnu = magic == b"ustar  \0";
            if !(gnu || &magic[..6] == b"ustar\0") {
                return Err(ArchiveError::BadMagic {
                    offset: hoff,
                    magic: String::from_utf8_lossy(&h[257..263]).into_owned(),
                });
            }
            let ustar_size = parse_octal(&h[124..136], hoff, "size")?;
            let mode = parse_octal(&h[100..108], hoff, "mode")? as u32 & 0o7777;
            let typeflag = h[156];
            match typeflag {
                b'x' | b'g' => {
                    if typeflag == b'x' {
                        if ext.pax_seen {
                            return Err(ArchiveError::BadPax {
                                offset: hoff,
                                reason: "two consecutive PAX headers".into(),
                            });
                        }
                        ext.pax_seen = true;
                    }
                    let data = self.read_ext(ustar_size, hoff)?;
                    parse_pax(&data, hoff, &mut ext, typeflag == b'g')?;
                    continue;
                }
                b'L' | b'K' => {
                    let seen =
                        if typeflag == b'L' { &mut ext.long_name_seen } else { &mut ext.long_link_seen };
                    if *seen {
                        return Err(ArchiveError::Garbage {
                            offset: hoff,
                            reason: "two consecutive GNU long-name headers".into(),
                        });
                    }
                    *seen = true;
                    let data = self.read_ext(ustar_size, hoff)?;
                    let v = utf8(cstr(&data), hoff)?;
                    // PAX records take precedence over GNU long names.
                    if typeflag == b'L' {
                        if ext.path.is_none() {
                            ext.path = Some(v);
                        }
                    } else if ext.linkpath.is_none() {
                        ext.linkpath = Some(v);
                    }
                    continue;
                }
                _ => {}
            }
            // A real entry.
            let uid = match ext.uid.take() {
                Some(v) => v,
                None => parse_octal(&h[108..116], hoff, "uid")?,
            };
            let gid = match ext.gid.take() {
                Some(v) => v,
                None => parse_octal(&h[116..124], hoff, "gid")?,
            };
            let name = match ext.path.take() {
                Some(p) => p,
                None => {
                    let base = cstr(&h[0..100]);
                    let prefix = if gnu { &[][..] } else { cstr(&h[345..500]) };
                    let mut full = Vec::new();
                    if !prefix.is_empty() {
                        full.extend_from_slice(prefix);
                        full.push(b'/');
                    }
                    full.extend_from_slice(base);
                    utf8(&full, hoff)?
                }
            };
            let path = normalize(&name);
            let size = match ext.size {
                Some(p) => {
                    if ustar_size != 0 && ustar_size != p {
                        return Err(ArchiveError::SizeMismatch { path: name, pax: p, ustar: ustar_size });
                    }
                    p
                }
                None => ustar_size,
            };
            let link = match ext.linkpath.take() {
                Some(l) => l,
                None => utf8(cstr(&h[157..257]), hoff)?,
            };
            let no_data = |kind: &str| -> Result<(), ArchiveError> {
                if size != 0 {
                    return Err(ArchiveError::UnexpectedData { path: name.clone(), kind: kind.into(), size });
                }
                Ok(())
            };
            let kind = match typeflag {
                b'0' | 0 => {
                    if name.ends_with('/') {
                        return Err(ArchiveError::Unsupported { path: name, kind: typeflag as char });
                    }
                    TarKind::File { size }
                }
                b'5' => {
                    no_data("directory")?;
                    TarKind::Dir
                }
                b'2' => {
                    no_data("symlink")?;
                    TarKind::Symlink { target: link }
                }
                b'1' => {
                    no_data("hard link")?;
                    TarKind::HardLink { target: normalize(&link) }
                }
                other => return Err(ArchiveError::Unsupported { path: name, kind: other as char }),
            };
            if let TarKind::File { size } = kind {
                self.remaining = size;
                self.pad = pad_of(size);
            }
            return Ok(Some(TarEntry { path, mode, kind, uid, gid }));
        }
    }

    /// Reader over the current file entry's data (exactly its size, then EOF).
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { tr: self }
    }
}

fn pad_of(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Reader over one entry's data; a short archive yields `UnexpectedEof`.
#[derive(Debug)]
pub struct EntryData<'a, R> {
    tr: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.tr.remaining == 0 {
            return Ok(0);
        }
        let k = (buf.len() as u64).min(self.tr.remaining) as usize;
        let n = self.tr.r.read(&mut buf[..k])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "archive truncated inside file data",
            ));
        }
        self.tr.remaining -= n as u64;
        self.tr.offset += n as u64;
        Ok(n)
    }
}

impl Store {
    /// Ingest a tar stream as a tree: entries are converted to manifest entries (modes
    /// masked to 0o777, hard links to earlier files become copies), limits are enforced
    /// while reading (before data is stored), and the finished manifest goes through
    /// [`validate_manifest`]: the same checks as [`Store::restore_tree`].
    pub async fn put_tar<R: Read>(&self, r: R, limits: &RestoreLimits) -> Result<TreeStats> {
        let mut tr = TarReader::new(r);
        let mut entries: Vec<Entry> = Vec::new();
        let mut files: HashMap<String, (u64, Digest)> = HashMap::new();
        let mut total: u64 = 0;
        let mut stats =
            TreeStats { digest: Digest::of(b""), entries: 0, files: 0, bytes: 0, new_blobs: 0, new_bytes: 0 };
        while let Some(e) = tr.next_entry()? {
            if e.path.is_empty() {
                if matches!(e.kind, TarKind::Dir) {
                    continue; // "./" itself
                }
                return Err(TreeError::EmptyComponent { path: e.path }.into());
            }
            crate::tree::validate_path(&e.path, limits)?;
            if entries.len() as u64 >= limits.max_entries {
                return Err(TreeError::TooManyEntries { path: e.path, limit: limits.max_entries }.into());
            }
            let mode = e.mode & 0o777;
            match e.kind {
                TarKind::Dir => entries.push(Entry::Dir { path: e.path, mode }),
                TarKind::Symlink { target } => entries.push(Entry::Symlink { path: e.path, symlink: target }),
                TarKind::HardLink { target } => {
                    let Some(&(size, digest)) = files.get(&target) else {
                        return Err(TreeError::HardLinkOutside { path: e.path, target }.into());
                    };
                    total = total.saturating_add(size);
                    if total > limits.max_bytes {
                        return Err(TreeError::TooManyBytes { path: e.path, limit: limits.max_bytes }.into());
                    }
                    files.insert(e.path.clone(), (size, digest));
                    stats.files += 1;
                    stats.bytes += size;
                    entries.push(Entry::File { path: e.path, size, mode, digest });
                }
                TarKind::File { size } => {
                    total = total.saturating_add(size);
                    if total > limits.max_bytes {
                        return Err(TreeError::TooManyBytes { path: e.path, limit: limits.max_bytes }.into());
                    }
                    let out = match self.put_reader(tr.data()).await {
                        Ok(o) => o,
                        // The archive ended inside the file; the store's own
                        // write errors (a full disk) are reported as they are.
                        Err(StoreError::Input { .. }) => {
                            return Err(ArchiveError::Truncated { offset: tr.offset() }.into())
                        }
                        Err(e) => return Err(e),
                    };
                    if out.size != size {
                        return Err(ArchiveError::Truncated { offset: tr.offset() }.into());
                    }
                    if out.new {
                        stats.new_blobs += 1;
                        stats.new_bytes += size;
                    }
                    stats.files += 1;
                    stats.bytes += size;
                    files.insert(e.path.clone(), (size, out.digest));
                    entries.push(Entry::File { path: e.path, size, mode, digest: out.digest });
                }
            }
        }
        let m = Manifest::new(entries);
        validate_manifest(&m, limits)?;
        stats.entries = m.entries.len() as u64;
        stats.digest = self.put_manifest(&m).await?;
        Ok(stats)
    }

    /// [`Store::put_tar`] then [`Store::restore_tree`] into `target`.
    pub async fn extract_tar<R: Read>(
        &self,
        r: R,
        target: impl AsRef<FsPath>,
        limits: &RestoreLimits,
    ) -> Result<TreeStats> {
        let s = self.put_tar(r, limits).await?;
        self.restore_tree(&s.digest, target, limits).await
    }
}

/// Builds raw tar archives byte by byte (for tests and benchmarks: it will happily
/// write hostile archives).
#[derive(Debug, Default, Clone)]
pub struct RawTarBuilder {
    buf: Vec<u8>,
}

impl RawTarBuilder {
    /// Empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a header with arbitrary fields (name must fit in 100 bytes) and data.
    pub fn raw(
        &mut self,
        typeflag: u8,
        name: &str,
        link: &str,
        mode: u32,
        size_field: u64,
        data: &[u8],
    ) -> &mut Self {
        let mut h = [0u8; BLOCK];
        let nb = name.as_bytes();
        h[..nb.len().min(100)].copy_from_slice(&nb[..nb.len().min(100)]);
        let put_oct = |h: &mut [u8; BLOCK], at: usize, len: usize, v: u64| {
            let s = format!("{:0width$o}\0", v, width = len - 1);
            h[at..at + len].copy_from_slice(&s.as_bytes()[s.len() - len..]);
        };
        put_oct(&mut h, 100, 8, mode as u64);
        put_oct(&mut h, 108, 8, 0);
        put_oct(&mut h, 116, 8, 0);
        put_oct(&mut h, 124, 12, size_field);
        put_oct(&mut h, 136, 12, 0);
        h[156] = typeflag;
        let lb = link.as_bytes();
        h[157..157 + lb.len().min(100)].copy_from_slice(&lb[..lb.len().min(100)]);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len() + pad_of(data.len() as u64) as usize, 0);
        self
    }

    /// Regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw(b'0', name, "", mode, data.len() as u64, data)
    }
    /// Directory.
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(b'5', name, "", 0o755, 0, &[])
    }
    /// Symlink.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(b'2', name, target, 0o777, 0, &[])
    }
    /// Hard link.
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(b'1', name, target, 0o644, 0, &[])
    }
    /// PAX extended header with the given records.
    pub fn pax(&mut self, records: &[(&str, &str)]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body = format!(" {k}={v}\n");
            let mut len = body.len() + 1;
            while format!("{len}").len() + body.len() != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        let n = data.len() as u64;
        self.raw(b'x', "PaxHeader", "", 0o644, n, &data)
    }
    /// Append raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// Finish with two zero blocks.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut b = self.buf.clone();
        b.resize(b.len() + 2 * BLOCK, 0);
        b
    }
}
