//! Packs: many small blobs in one object, found through an index.
//!
//! A blob is a file of its own, one inode each. For a tree of thousands of
//! small files (a `node_modules`), creating those inodes is most of what
//! storing it costs: on this project's machines a profile of storing 5,000
//! small files is three quarters the filesystem's inode allocation. So
//! [`Store::put_tree`] writes the small files it finds new into packs
//! instead: the concatenation of up to [`PACK_TARGET`] bytes of blobs, stored
//! under `packs/<aa>/<hex>`, with an index object beside it,
//! `packs/<aa>/<hex>.idx`, listing each blob's digest, offset and size. The
//! pack is named by the digest of its index, which fixes its bytes.
//!
//! Packing is invisible above the blob layer: a blob that has no object of
//! its own is looked up in the packs' index and read from its pack, and
//! every read is still verified against the blob's own digest, so the index
//! only says where to look, never what the bytes are. Dedup stays per blob:
//! a file already present in any pack (or as a blob of its own) is not
//! written again, so a second tree sharing most of its files with the first
//! adds only its new files. A blob that fails verification in a pack is
//! taken out of the pack's index (quarantined: the next put stores it
//! again). gc deletes a pack once none of its blobs is referenced.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Result, StoreError, StoreEvent};
use crate::store::{is_not_found, Store};

/// Blobs up to this size are packed by [`Store::put_tree`].
pub const PACK_MEMBER_MAX: u64 = 128 << 10;
/// A pack is closed once it holds this many bytes.
pub const PACK_TARGET: usize = 4 << 20;
const INDEX_VERSION: u32 = 1;

/// Where a packed blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    pub pack: Digest,
    pub offset: u64,
    pub size: u64,
}

/// A pack's index object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    version: u32,
    /// `(blob digest, offset, size)`, in pack order.
    members: Vec<(Digest, u64, u64)>,
}

/// The packs of every tenant this process has seen, by blob.
#[derive(Default)]
pub(crate) struct PackIndex {
    tenants: HashMap<String, TenantPacks>,
}

#[derive(Default)]
struct TenantPacks {
    scanned: Option<Instant>,
    /// Packs whose index was read.
    packs: HashSet<Digest>,
    members: HashMap<Digest, Member>,
}

/// Where a blob's bytes are in a local store: `size` bytes at `offset` of
/// `file` (its own file, offset 0, or its pack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobPlace {
    /// The file holding the bytes.
    pub file: std::path::PathBuf,
    /// Where they start in it.
    pub offset: u64,
    /// How many.
    pub size: u64,
}

/// A pack on the backend, as a listing shows it.
#[derive(Debug, Clone)]
pub(crate) struct ListedPack {
    pub digest: Digest,
    pub size: u64,
    pub modified_ns: u64,
    pub has_data: bool,
    pub has_index: bool,
}

/// Pack being filled by a put: its blobs' bytes, kept apart (they are
/// written one after the other, never copied together on a local store).
#[derive(Default)]
pub(crate) struct PackBuilder {
    parts: Vec<Vec<u8>>,
    len: u64,
    members: Vec<(Digest, u64, u64)>,
    seen: HashSet<Digest>,
}

impl PackBuilder {
    /// Add a blob; false (nothing added) if the pack has it already.
    pub fn add(&mut self, digest: Digest, bytes: Vec<u8>) -> bool {
        if !self.seen.insert(digest) {
            return false;
        }
        let size = bytes.len() as u64;
        self.members.push((digest, self.len, size));
        self.len += size;
        self.parts.push(bytes);
        true
    }

    /// Whether the pack should be written now.
    pub fn full(&self) -> bool {
        self.len >= PACK_TARGET as u64
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

fn parse_pack_name(name: &str) -> Option<(Digest, bool)> {
    match name.strip_suffix(".idx") {
        Some(hex) => Digest::from_hex(hex).ok().map(|d| (d, true)),
        None => Digest::from_hex(name).ok().map(|d| (d, false)),
    }
}

impl Store {
    fn pack_rel(pack: &Digest) -> String {
        let h = pack.hex();
        format!("packs/{}/{}", &h[..2], h)
    }

    /// Object key of a pack's bytes.
    pub(crate) fn pack_key(&self, pack: &Digest) -> Path {
        self.key(&Self::pack_rel(pack))
    }

    fn pack_index_rel(pack: &Digest) -> String {
        format!("{}.idx", Self::pack_rel(pack))
    }

    fn with_packs<T>(&self, f: impl FnOnce(&mut TenantPacks) -> T) -> T {
        let mut all = self.inner().packs.lock().unwrap_or_else(|p| p.into_inner());
        f(all.tenants.entry(self.tenant_name().to_string()).or_default())
    }

    /// The pack holding `d`, from what this process knows (no I/O).
    pub(crate) fn packed_known(&self, d: &Digest) -> Option<Member> {
        self.with_packs(|t| t.members.get(d).copied())
    }

    /// The pack holding `d`. The tenant's packs are listed on first use;
    /// with `rescan`, a miss lists them again to find packs other processes
    /// (or other handles on the same store) wrote since: reads ask for
    /// blobs they expect to exist, so a miss is rare and worth a listing.
    pub(crate) async fn packed(&self, d: &Digest, rescan: bool) -> Result<Option<Member>> {
        let (hit, scanned) = self.with_packs(|t| (t.members.get(d).copied(), t.scanned));
        if hit.is_some() {
            return Ok(hit);
        }
        if scanned.is_some() && !rescan {
            return Ok(None);
        }
        self.scan_packs().await?;
        Ok(self.packed_known(d))
    }

    /// List this tenant's packs again before a put dedups against them:
    /// new ones are read, and ones that went (gc, possibly in another
    /// process) are forgotten, so a put never counts a blob as stored in a
    /// pack deleted before the put began (the same window a blob of its own
    /// has between its existence check and the manifest that references it).
    pub(crate) async fn refresh_packs(&self) -> Result<()> {
        self.scan_packs().await
    }

    /// Every pack object of the tenant (data and index files).
    pub(crate) async fn list_packs(&self) -> Result<Vec<ListedPack>> {
        let mut by: HashMap<Digest, ListedPack> = HashMap::new();
        for (rel, size, modified_ns) in self.list_rel_with_time("packs").await? {
            let Some(name) = rel.rsplit('/').next() else { continue };
            let Some((digest, index)) = parse_pack_name(name) else { continue };
            let e = by.entry(digest).or_insert(ListedPack {
                digest,
                size: 0,
                modified_ns: 0,
                has_data: false,
                has_index: false,
            });
            if index {
                e.has_index = true;
            } else {
                e.has_data = true;
                e.size = size;
            }
            e.modified_ns = e.modified_ns.max(modified_ns);
        }
        Ok(by.into_values().collect())
    }

    /// Read the index of every pack not read yet.
    async fn scan_packs(&self) -> Result<()> {
        let started = Instant::now();
        let listed = self.list_packs().await?;
        let present: HashSet<Digest> =
            listed.iter().filter(|p| p.has_data && p.has_index).map(|p| p.digest).collect();
        let known = self.with_packs(|t| t.packs.clone());
        let mut found = Vec::new();
        for p in listed.into_iter().filter(|p| p.has_data && p.has_index && !known.contains(&p.digest)) {
            if let Some(members) = self.read_pack_index(&p.digest, p.size).await? {
                found.push((p.digest, members));
            }
        }
        self.with_packs(|t| {
            let gone: Vec<Digest> = t.packs.difference(&present).copied().collect();
            if !gone.is_empty() {
                for g in &gone {
                    t.packs.remove(g);
                }
                t.members.retain(|_, m| t.packs.contains(&m.pack));
            }
            for (pack, members) in found {
                // A concurrent scan may have added it first, and a read may
                // since have quarantined one of its blobs: not again.
                if !t.packs.insert(pack) {
                    continue;
                }
                for (d, offset, size) in members {
                    t.members.entry(d).or_insert(Member { pack, offset, size });
                }
            }
            t.scanned = Some(started);
        });
        Ok(())
    }

    /// A pack's index, checked against the pack's size. An index that does
    /// not parse or points outside its pack is ignored (its blobs read as
    /// absent and are stored again by the next put), never trusted.
    async fn read_pack_index(
        &self,
        pack: &Digest,
        pack_size: u64,
    ) -> Result<Option<Vec<(Digest, u64, u64)>>> {
        let idx: IndexFile = match self.get_json(&Self::pack_index_rel(pack)).await {
            Ok(Some(i)) => i,
            Ok(None) | Err(StoreError::Json { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let fits = |&(_, off, size): &(Digest, u64, u64)| {
            size <= PACK_MEMBER_MAX && off.checked_add(size).is_some_and(|end| end <= pack_size)
        };
        if idx.version != INDEX_VERSION || !idx.members.iter().all(fits) {
            return Ok(None);
        }
        Ok(Some(idx.members))
    }

    /// Write `b`'s pack and then its index (so an index never names a pack
    /// that is not there), and make its blobs known.
    pub(crate) async fn put_pack(self, b: PackBuilder) -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let PackBuilder { parts, members, .. } = b;
        let idx = IndexFile { version: INDEX_VERSION, members };
        let json = serde_json::to_vec(&idx)
            .map_err(|source| StoreError::Json { what: "pack index".into(), source })?;
        // Named by the digest of its index: the blobs' digests, offsets and
        // sizes fix every byte of the pack, so the pack needs no hashing of
        // its own (its blobs were hashed as they were read, and each is
        // verified on every read).
        let pack = Digest::of(&json);
        let key = self.pack_key(&pack);
        match self.local_put(&key) {
            Some((local, dest, tmp)) => {
                crate::store::blocking(&key, move || local.put_parts(&dest, &tmp, &parts))
                    .await?
                    .map_err(|e| StoreError::io(&key, e))?;
            }
            None => {
                self.put_object_bytes(&key, Bytes::from(parts.concat())).await?;
            }
        }
        self.backend().put(&self.key(&Self::pack_index_rel(&pack)), PutPayload::from(json)).await?;
        self.with_packs(|t| {
            t.packs.insert(pack);
            for (d, offset, size) in idx.members {
                t.members.entry(d).or_insert(Member { pack, offset, size });
            }
        });
        Ok(())
    }

    /// Size of packed blob `d` if its pack is there and long enough (not
    /// verified). A pack that went is forgotten; a blob past the end of its
    /// pack is quarantined.
    pub(crate) async fn packed_size(&self, d: &Digest) -> Result<Option<u64>> {
        let Some(m) = self.packed(d, true).await? else { return Ok(None) };
        match self.backend().head(&self.pack_key(&m.pack)).await {
            Ok(meta) if meta.size >= m.offset + m.size => Ok(Some(m.size)),
            Ok(_) => {
                let _ = self.quarantine_member(d, m).await;
                Ok(None)
            }
            Err(e) if is_not_found(&e) => {
                self.forget_pack(&m.pack);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Read packed blob `d` and verify it; a blob that fails is quarantined.
    pub(crate) async fn read_member(&self, d: &Digest, m: Member) -> Result<Bytes> {
        let key = self.pack_key(&m.pack);
        let range = m.offset..m.offset + m.size;
        let got = match self.local_file(&key) {
            Some(file) => {
                crate::store::blocking(&key, move || {
                    use std::os::unix::fs::FileExt;
                    let f = crate::store::open_nofollow(&file)?;
                    let mut buf = vec![0u8; m.size as usize];
                    f.read_exact_at(&mut buf, m.offset).map_err(|e| StoreError::io(file.display(), e))?;
                    Ok::<_, StoreError>(Bytes::from(buf))
                })
                .await?
            }
            None => self.backend().get_range(&key, range).await.map_err(StoreError::from),
        };
        let data = match got {
            Ok(data) => data,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(self.quarantine_member(d, m).await)
            }
            // The pack went (gc) after it was indexed here.
            Err(StoreError::Backend(e)) if is_not_found(&e) => {
                self.forget_pack(&m.pack);
                return Err(StoreError::NotFound(format!("blob {d}")));
            }
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                self.forget_pack(&m.pack);
                return Err(StoreError::NotFound(format!("blob {d}")));
            }
            Err(e) => return Err(e),
        };
        if data.len() as u64 != m.size || Digest::of(&data) != *d {
            return Err(self.quarantine_member(d, m).await);
        }
        Ok(data)
    }

    /// Take a blob that failed verification out of its pack's index, so
    /// nothing reads it there again and the next put stores it anew.
    async fn quarantine_member(&self, d: &Digest, m: Member) -> StoreError {
        self.with_packs(|t| {
            if t.members.get(d) == Some(&m) {
                t.members.remove(d);
            }
        });
        let rel = Self::pack_index_rel(&m.pack);
        if let Ok(Some(mut idx)) = self.get_json::<IndexFile>(&rel).await {
            idx.members.retain(|(md, _, _)| md != d);
            if let Ok(json) = serde_json::to_vec(&idx) {
                let _ = self.backend().put(&self.key(&rel), PutPayload::from(json)).await;
            }
        }
        let path = format!("{}@{}", self.pack_key(&m.pack), m.offset);
        self.emit(StoreEvent::Quarantined {
            tenant: self.tenant_name().to_string(),
            digest: *d,
            path: path.clone(),
        });
        StoreError::Corrupt { digest: *d, path }
    }

    /// Where blob `d`'s bytes are on disk, for a local store (`None` for
    /// another backend or a blob that is not there): for inspecting a
    /// store, and for tests that tamper with it.
    pub async fn locate_blob(&self, d: &Digest) -> Result<Option<BlobPlace>> {
        let own = self.blob_path(d);
        let Some(file) = self.local_file(&own) else { return Ok(None) };
        if let Ok(md) = std::fs::symlink_metadata(&file) {
            return Ok(Some(BlobPlace { file, offset: 0, size: md.len() }));
        }
        let Some(m) = self.packed(d, true).await? else { return Ok(None) };
        Ok(self.local_file(&self.pack_key(&m.pack)).map(|file| BlobPlace {
            file,
            offset: m.offset,
            size: m.size,
        }))
    }

    /// Delete a pack (its index first: a pack without one is never read).
    pub(crate) async fn delete_pack(&self, pack: &Digest) -> Result<()> {
        self.delete_rel(&Self::pack_index_rel(pack)).await?;
        self.delete_key(&self.pack_key(pack)).await?;
        self.forget_pack(pack);
        Ok(())
    }

    /// Drop a pack that is gone, and its blobs, from what this process knows.
    fn forget_pack(&self, pack: &Digest) {
        self.with_packs(|t| {
            t.packs.remove(pack);
            t.members.retain(|_, m| m.pack != *pack);
        });
    }

    /// The blobs a pack's index lists (none if it has no usable index).
    pub(crate) async fn pack_members(&self, p: &ListedPack) -> Result<Vec<Digest>> {
        if !(p.has_data && p.has_index) {
            return Ok(Vec::new());
        }
        Ok(self
            .read_pack_index(&p.digest, p.size)
            .await?
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.0)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_holds_each_blob_once() {
        let mut b = PackBuilder::default();
        assert!(b.add(Digest::of(b"a"), b"a".to_vec()));
        assert!(!b.add(Digest::of(b"a"), b"a".to_vec()));
        assert!(b.add(Digest::of(b"bc"), b"bc".to_vec()));
        assert_eq!(b.members.len(), 2);
        assert_eq!(b.members[1].1, 1);
        assert_eq!(b.parts.concat(), b"abc");
    }

    #[test]
    fn pack_names_parse_and_others_are_ignored() {
        let d = Digest::of(b"x");
        assert_eq!(parse_pack_name(&d.hex()), Some((d, false)));
        assert_eq!(parse_pack_name(&format!("{}.idx", d.hex())), Some((d, true)));
        assert_eq!(parse_pack_name("tmpfile#3"), None);
    }
}
