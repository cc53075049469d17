//! The blob layer: content-addressed, verified on every read, per tenant.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use crate::digest::{Digest, Hasher};
use crate::error::{Result, StoreError, StoreEvent};
use crate::local::{read_file, LocalDir};
use crate::pack::{PackBuilder, PackIndex, PACK_MEMBER_MAX};

/// Blobs up to this size are hashed in memory and written with one conditional put.
/// Larger ones stream through a temporary object that is renamed into place.
pub const SMALL_BLOB: usize = 8 << 20;
const CHUNK: usize = 1 << 20;

type Hook = Arc<dyn Fn(&StoreEvent) + Send + Sync>;

pub(crate) struct Inner {
    os: Arc<dyn ObjectStore>,
    /// The directory of a store on the local filesystem: blobs are read
    /// and written as files directly (see [`Store::local_file`] and
    /// [`crate::local`]).
    local: Option<LocalDir>,
    prefix: String,
    events: Mutex<Vec<StoreEvent>>,
    hook: Mutex<Option<Hook>>,
    /// Packed blobs this process knows of (see [`crate::pack`]).
    pub(crate) packs: Mutex<PackIndex>,
}

/// A handle on the store, bound to one tenant namespace. Cheap to clone;
/// clones and [`Store::tenant`] handles share the backend and the event log.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    tenant: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.os.to_string())
            .field("prefix", &self.inner.prefix)
            .field("tenant", &self.tenant)
            .finish()
    }
}

/// A file read to be stored.
enum FileRead {
    /// Stored, or found present.
    Done(PutOutcome),
    /// Small and new: for a pack.
    Pack(Digest, Vec<u8>),
    /// Its bytes, for a put (a store that is not local).
    Bytes(Bytes),
    /// Too large to hold: streamed.
    Large,
}

/// Outcome of storing one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// False when identical content was already present (nothing rewritten).
    pub new: bool,
}

/// Checks a tenant / branch-ish name: 1..=128 bytes of `[A-Za-z0-9._-]`, not `.`/`..`.
pub(crate) fn check_name(name: &str, allow_slash: bool) -> Result<()> {
    let bad = |reason| Err(StoreError::InvalidName { name: name.to_string(), reason });
    if name.is_empty() || name.len() > 200 {
        return bad("must be 1..=200 bytes");
    }
    for comp in name.split('/') {
        if !allow_slash && comp.len() != name.len() {
            return bad("must not contain `/`");
        }
        if comp.is_empty() || comp == "." || comp == ".." {
            return bad("empty, `.` or `..` component");
        }
        if !comp.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'@')) {
            return bad("only [A-Za-z0-9._+@-] (and `/` between components for refs) allowed");
        }
    }
    Ok(())
}

fn is_exists(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::AlreadyExists { .. })
}
fn is_unsupported(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. })
}
pub(crate) fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl Store {
    /// Open (creating if needed) a store on the local filesystem at `dir`, tenant `default`.
    pub fn open_local(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::open_local_with_fsync(dir, false)
    }

    /// Like [`Store::open_local`], optionally fsyncing every write (durable, slower).
    pub fn open_local_with_fsync(dir: impl AsRef<std::path::Path>, fsync: bool) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir.display(), e))?;
        let fs = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true).with_fsync(fsync);
        let mut store = Self::from_object_store(Arc::new(fs), "");
        let root = std::fs::canonicalize(dir).map_err(|e| StoreError::io(dir.display(), e))?;
        if let Some(inner) = Arc::get_mut(&mut store.inner) {
            inner.local = Some(LocalDir { root, fsync });
        }
        Ok(store)
    }

    /// Open any `object_store` URL: `file:///...`, `memory:///`, and the cloud
    /// schemes compiled in (`s3://BUCKET/PREFIX`, `az://CONTAINER/PREFIX`,
    /// `gs://BUCKET/PREFIX`; kiln's binary has them by default, this crate's
    /// `s3`/`azure`/`gcs` features). A cloud backend takes its settings from
    /// the environment, under the names its own tools use: `AWS_*` for S3
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL` for an S3-compatible server, `AWS_ALLOW_HTTP`),
    /// `AZURE_*` for Azure (`AZURE_STORAGE_ACCOUNT_NAME`,
    /// `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_USE_EMULATOR` with
    /// `AZURITE_BLOB_STORAGE_URL`), `GOOGLE_*` for GCS.
    pub fn open_url(url: &str) -> Result<Self> {
        let env = std::env::vars()
            .filter(|(k, _)| ["AWS_", "AZURE_", "GOOGLE_", "OBJECT_STORE_"].iter().any(|p| k.starts_with(p)));
        Self::open_url_with(url, env)
    }

    /// [`Store::open_url`] with the backend's settings given as
    /// (key, value) pairs (`aws_endpoint`, `azure_storage_account_key`, ...)
    /// instead of read from the environment.
    pub fn open_url_with(url: &str, options: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let parsed = url::Url::parse(url)
            .map_err(|e| StoreError::BadUrl { url: url.to_string(), reason: e.to_string() })?;
        if parsed.scheme() == "file" {
            let p = parsed.to_file_path().map_err(|_| StoreError::BadUrl {
                url: url.to_string(),
                reason: "not a local path".into(),
            })?;
            return Self::open_local(p);
        }
        let (os, path) = object_store::parse_url_opts(&parsed, options)
            .map_err(|e| StoreError::BadUrl { url: url.to_string(), reason: e.to_string() })?;
        Ok(Self::from_object_store(Arc::from(os), path.as_ref()))
    }

    /// Wrap an existing backend; all keys go under `prefix` (may be empty).
    pub fn from_object_store(os: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Store {
            inner: Arc::new(Inner {
                os,
                local: None,
                prefix: prefix.trim_matches('/').to_string(),
                events: Mutex::new(Vec::new()),
                hook: Mutex::new(None),
                packs: Mutex::new(PackIndex::default()),
            }),
            tenant: "default".into(),
        }
    }

    /// The same store, namespaced to `name` (`[A-Za-z0-9._+@-]`, no `/`).
    pub fn tenant(&self, name: &str) -> Result<Self> {
        check_name(name, false)?;
        Ok(Store { inner: self.inner.clone(), tenant: name.to_string() })
    }

    /// Current tenant name.
    pub fn tenant_name(&self) -> &str {
        &self.tenant
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// The underlying backend.
    pub fn backend(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.os
    }

    /// Install a callback invoked for every [`StoreEvent`] (in addition to the log).
    pub fn set_event_hook(&self, hook: impl Fn(&StoreEvent) + Send + Sync + 'static) {
        *self.inner.hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(hook));
    }

    /// All events so far.
    pub fn events(&self) -> Vec<StoreEvent> {
        self.inner.events.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drain the event log.
    pub fn take_events(&self) -> Vec<StoreEvent> {
        std::mem::take(&mut *self.inner.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn emit(&self, ev: StoreEvent) {
        let hook = self.inner.hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = hook {
            h(&ev);
        }
        self.inner.events.lock().unwrap_or_else(|e| e.into_inner()).push(ev);
    }

    /// Object key `<prefix>/<tenant>/<rest>`.
    pub(crate) fn key(&self, rest: &str) -> Path {
        if self.inner.prefix.is_empty() {
            Path::from(format!("{}/{}", self.tenant, rest))
        } else {
            Path::from(format!("{}/{}/{}", self.inner.prefix, self.tenant, rest))
        }
    }

    /// Object key of a blob: `<tenant>/blobs/sha256/<aa>/<hex>`.
    pub fn blob_path(&self, d: &Digest) -> Path {
        let h = d.hex();
        self.key(&format!("blobs/sha256/{}/{}", &h[..2], h))
    }

    fn tmp_path(&self) -> Path {
        let mut r = [0u8; 16];
        let _ = getrandom::fill(&mut r);
        self.key(&format!("tmp/{}", hex::encode(r)))
    }

    // ---------- writes ----------

    /// Store bytes. Dedups: identical content already present is not rewritten.
    pub async fn put_bytes(&self, data: impl Into<Bytes>) -> Result<PutOutcome> {
        let data: Bytes = data.into();
        let digest = Digest::of(&data);
        let size = data.len() as u64;
        let new = self.put_object_bytes(&self.blob_path(&digest), data).await?;
        Ok(PutOutcome { digest, size, new })
    }

    /// Write content-addressed bytes under `path` unless something is there
    /// already (then false: identical content, nothing rewritten).
    pub(crate) async fn put_object_bytes(&self, path: &Path, data: Bytes) -> Result<bool> {
        if let Some((local, dest, tmp)) = self.local_put(path) {
            return blocking(path, move || local.put_blob(&dest, &tmp, &data))
                .await?
                .map_err(|e| StoreError::io(path, e));
        }
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.inner.os.put_opts(path, PutPayload::from_bytes(data.clone()), opts).await {
            Ok(_) => Ok(true),
            Err(e) if is_exists(&e) => Ok(false),
            Err(e) if is_unsupported(&e) => {
                match self.inner.os.head(path).await {
                    Ok(_) => return Ok(false),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
                // Content-addressed: an overwrite race can only write identical bytes.
                self.inner.os.put(path, PutPayload::from_bytes(data)).await?;
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Store the contents of a reader, hashing while streaming. Small inputs go
    /// through [`Store::put_bytes`]; large ones are written to `<tenant>/tmp/<random>`
    /// and renamed to the blob path only after the whole input was read and hashed, so a
    /// reader error (or a crash) never leaves anything under a real digest.
    pub async fn put_reader<R: Read>(&self, mut r: R) -> Result<PutOutcome> {
        let mut buf = Vec::with_capacity(64 << 10);
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let n = read_some(&mut r, &mut chunk)?;
            if n == 0 {
                return self.put_bytes(buf).await;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > SMALL_BLOB {
                break;
            }
        }
        // Large: stream to a temporary object.
        let tmp = self.tmp_path();
        let upload = self.inner.os.put_multipart(&tmp).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        let mut hasher = Hasher::new();
        hasher.update(&buf);
        w.put(Bytes::from(buf));
        let res: Result<()> = async {
            loop {
                let n = read_some(&mut r, &mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                hasher.update(&chunk[..n]);
                w.wait_for_capacity(4).await?;
                w.write(&chunk[..n]);
            }
        }
        .await;
        if let Err(e) = res {
            let _ = w.abort().await;
            let _ = self.inner.os.delete(&tmp).await;
            return Err(e);
        }
        if let Err(e) = w.finish().await {
            let _ = self.inner.os.delete(&tmp).await;
            return Err(e.into());
        }
        let size = hasher.len();
        let digest = hasher.finish();
        let new = self.publish_tmp(&tmp, &digest).await?;
        Ok(PutOutcome { digest, size, new })
    }

    /// For a local store: how to write the blob at object key `path` as a
    /// file (the store's settings, the blob's file, a fresh temporary name).
    pub(crate) fn local_put(
        &self,
        path: &Path,
    ) -> Option<(LocalDir, std::path::PathBuf, std::path::PathBuf)> {
        let local = self.inner.local.clone()?;
        Some((local, self.local_file(path)?, self.local_file(&self.tmp_path())?))
    }

    /// Store a local file read into `buf` (see [`read_file`]), on a
    /// blocking thread. With `pack`, a file of at most [`PACK_MEMBER_MAX`]
    /// bytes that is not stored yet is handed back for a pack.
    fn put_read_file(
        &self,
        path: &std::path::Path,
        buf: &mut Vec<u8>,
        pack: bool,
    ) -> Result<(FileRead, u32)> {
        let rf = read_file(path, SMALL_BLOB as u64, buf).map_err(|e| StoreError::io(path.display(), e))?;
        if !rf.whole {
            return Ok((FileRead::Large, rf.mode));
        }
        let digest = Digest::of(buf);
        let key = self.blob_path(&digest);
        let local = self.local_put(&key);
        let present = PutOutcome { digest, size: rf.size, new: false };
        if pack && rf.size <= PACK_MEMBER_MAX {
            let stored = self.packed_known(&digest).is_some()
                || local.as_ref().is_some_and(|(_, dest, _)| std::fs::symlink_metadata(dest).is_ok());
            if stored {
                return Ok((FileRead::Done(present), rf.mode));
            }
            // Handed over whole (the worker's next read allocates anew).
            return Ok((FileRead::Pack(digest, std::mem::take(buf)), rf.mode));
        }
        match local {
            Some((local, dest, tmp)) => {
                let new = local.put_blob(&dest, &tmp, buf).map_err(|e| StoreError::io(&key, e))?;
                Ok((FileRead::Done(PutOutcome { new, ..present }), rf.mode))
            }
            None => Ok((FileRead::Bytes(Bytes::copy_from_slice(buf)), rf.mode)),
        }
    }

    /// Store many local files (read with `O_NOFOLLOW`, regular files only):
    /// each one's blob and permission bits, in order. Files are read and
    /// hashed by a few blocking workers, a batch at a time; the small new
    /// ones go into packs ([`crate::pack`]), a local store writes the others
    /// there and then, and larger ones are streamed afterwards.
    pub(crate) async fn put_files(&self, files: Vec<std::path::PathBuf>) -> Result<Vec<(PutOutcome, u32)>> {
        /// Files read per batch: bounds the bytes held for packing to
        /// `BATCH * PACK_MEMBER_MAX`.
        const BATCH: usize = 1024;
        self.refresh_packs().await?;
        let mut out = Vec::with_capacity(files.len());
        /// Packs being written while the next files are read.
        const PACKS_IN_FLIGHT: usize = 2;
        let mut pack = PackBuilder::default();
        let mut writing = tokio::task::JoinSet::new();
        for batch in files.chunks(BATCH) {
            let batch = Arc::new(batch.to_vec());
            let store = self.clone();
            let read = crate::local::for_each_blocking(batch.clone(), move |path, buf| {
                store.put_read_file(path, buf, true).map_err(std::io::Error::other)
            })
            .await
            .map_err(|(i, e)| match e.downcast::<StoreError>() {
                Ok(e) => e,
                Err(e) => StoreError::io(batch[i].display(), e),
            })?;
            let mut later = Vec::new();
            for (i, (r, mode)) in read.into_iter().enumerate() {
                let put = match r {
                    FileRead::Done(put) => put,
                    FileRead::Pack(digest, bytes) => {
                        let size = bytes.len() as u64;
                        let new = pack.add(digest, bytes);
                        if pack.full() {
                            writing.spawn(self.clone().put_pack(std::mem::take(&mut pack)));
                            while writing.len() > PACKS_IN_FLIGHT {
                                join_pack(&mut writing).await?;
                            }
                        }
                        PutOutcome { digest, size, new }
                    }
                    other => {
                        later.push((out.len(), other, batch[i].clone()));
                        PutOutcome { digest: Digest::of(b""), size: 0, new: false }
                    }
                };
                out.push((put, mode));
            }
            // Not stored yet: large files (streamed) and, for a store that
            // is not local, the other files' bytes (one put each, 16 at a time).
            let mut pending = futures::stream::iter(later.into_iter().map(|(at, r, path)| {
                let store = self.clone();
                async move {
                    let put = match r {
                        FileRead::Bytes(bytes) => store.put_bytes(bytes).await?,
                        _ => store.put_file(&path).await?,
                    };
                    Ok::<_, StoreError>((at, put))
                }
            }))
            .buffer_unordered(16);
            while let Some(r) = pending.next().await {
                let (at, put) = r?;
                out[at].0 = put;
            }
        }
        writing.spawn(self.clone().put_pack(pack));
        while !writing.is_empty() {
            join_pack(&mut writing).await?;
        }
        Ok(out)
    }

    /// Move a fully written temporary object to its blob path without clobbering.
    async fn publish_tmp(&self, tmp: &Path, digest: &Digest) -> Result<bool> {
        let dst = self.blob_path(digest);
        let r = match self.inner.os.rename_if_not_exists(tmp, &dst).await {
            Ok(()) => Ok(true),
            Err(e) if is_exists(&e) => Ok(false),
            Err(e) if is_unsupported(&e) => {
                if self.inner.os.head(&dst).await.is_ok() {
                    Ok(false)
                } else {
                    self.inner.os.copy(tmp, &dst).await?;
                    Ok(true)
                }
            }
            Err(e) => Err(e.into()),
        };
        // rename_if_not_exists may be copy+delete; make sure tmp is gone either way.
        let _ = self.inner.os.delete(tmp).await;
        r
    }

    /// Store a local file (read with `O_NOFOLLOW`). Large files are hashed first so
    /// already-present content costs no write.
    pub async fn put_file(&self, path: &std::path::Path) -> Result<PutOutcome> {
        let (store, p) = (self.clone(), path.to_path_buf());
        let (read, _) =
            blocking(path.display(), move || store.put_read_file(&p, &mut Vec::new(), false)).await??;
        match read {
            FileRead::Done(put) => return Ok(put),
            FileRead::Bytes(bytes) => return self.put_bytes(bytes).await,
            FileRead::Pack(_, bytes) => return self.put_bytes(bytes).await,
            FileRead::Large => {}
        }
        // Large: hashed first so already-present content costs no write.
        let (p, open) = (path.to_path_buf(), || open_nofollow(path));
        let (digest, size) = blocking(path.display(), move || {
            let f = open_nofollow(&p)?;
            let mut h = Hasher::new();
            let mut chunk = vec![0u8; CHUNK];
            let mut rf = &f;
            loop {
                let n = rf.read(&mut chunk).map_err(|e| StoreError::io(p.display(), e))?;
                if n == 0 {
                    break;
                }
                h.update(&chunk[..n]);
            }
            let size = h.len();
            Ok::<_, StoreError>((h.finish(), size))
        })
        .await??;
        // (Files this large are never packed: only their own object counts.)
        match self.inner.os.head(&self.blob_path(&digest)).await {
            Ok(m) if m.size == size => return Ok(PutOutcome { digest, size, new: false }),
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some((local, _, tmp)) = self.local_put(&self.blob_path(&digest)) {
            // Copied to a temporary file while hashed again: the blob is
            // named after the bytes written, even if the file changed.
            let (store, src) = (self.clone(), open()?);
            return blocking(path.display(), move || {
                let (digest, size) =
                    local.copy_hashing(src, &tmp).map_err(|e| StoreError::io(tmp.display(), e))?;
                let key = store.blob_path(&digest);
                let dest = store
                    .local_file(&key)
                    .ok_or_else(|| StoreError::io(&key, std::io::Error::other("no file name")))?;
                let new = local.publish_tmp(&tmp, &dest).map_err(|e| StoreError::io(&key, e))?;
                Ok(PutOutcome { digest, size, new })
            })
            .await?;
        }
        self.put_reader(open()?).await
    }

    // ---------- reads ----------

    /// Size of a stored blob, if present (not verified): its own object's,
    /// or its size in a pack.
    pub async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        match self.inner.os.head(&self.blob_path(d)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(e) if is_not_found(&e) => self.packed_size(d).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Quarantine a blob that failed verification and report it.
    pub(crate) async fn quarantine(&self, d: &Digest) -> StoreError {
        let src = self.blob_path(d);
        let dst = self.key(&format!("quarantine/sha256/{}", d.hex()));
        let _ = self.inner.os.rename(&src, &dst).await;
        self.emit(StoreEvent::Quarantined { tenant: self.tenant.clone(), digest: *d, path: src.to_string() });
        StoreError::Corrupt { digest: *d, path: src.to_string() }
    }

    /// Read a blob fully, verifying digest (and `expected_size` if given).
    pub async fn get_bytes(&self, d: &Digest, expected_size: Option<u64>) -> Result<Bytes> {
        let mut out = Vec::new();
        self.read_verified(d, expected_size, |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .await?;
        Ok(Bytes::from(out))
    }

    /// Stream a blob into `w`, verifying at the end. On `Err`, whatever was written must be
    /// discarded by the caller (restore does this).
    pub async fn copy_blob_to<W: Write>(
        &self,
        d: &Digest,
        expected_size: Option<u64>,
        w: &mut W,
    ) -> Result<u64> {
        self.read_verified(d, expected_size, |b| w.write_all(b).map_err(|e| StoreError::io(d, e))).await
    }

    /// [`Store::copy_blob_to`] a file, written on a blocking thread while
    /// the next chunks are read and hashed. Returns the file. What was
    /// written before a failed verification stays in it: the caller
    /// removes the file on error.
    pub async fn copy_blob_to_file(
        &self,
        d: &Digest,
        expected_size: Option<u64>,
        file: std::fs::File,
    ) -> Result<std::fs::File> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(4);
        let writer = tokio::task::spawn_blocking(move || {
            let mut f = file;
            for chunk in rx {
                f.write_all(&chunk)?;
            }
            Ok::<_, std::io::Error>(f)
        });
        let read = self
            .read_verified(d, expected_size, |b| {
                // The writer only goes away after an error of its own, reported below.
                let _ = tx.send(b.clone());
                Ok(())
            })
            .await;
        drop(tx);
        let written = writer.await.map_err(|e| StoreError::io(d, std::io::Error::other(e)))?;
        read?;
        written.map_err(|e| StoreError::io(d, e))
    }

    /// Read and hash a blob without keeping it.
    pub async fn verify_blob(&self, d: &Digest, expected_size: Option<u64>) -> Result<u64> {
        self.read_verified(d, expected_size, |_| Ok(())).await
    }

    /// The file behind object `key` of a local store, when the key is one
    /// the local backend stores under its own name (no character it would
    /// encode): blob keys always are.
    pub(crate) fn local_file(&self, key: &Path) -> Option<std::path::PathBuf> {
        let root = &self.inner.local.as_ref()?.root;
        let k: &str = key.as_ref();
        let plain = k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
        (plain && !k.split('/').any(|c| c.is_empty() || c == "." || c == "..")).then(|| root.join(k))
    }

    async fn read_verified(
        &self,
        d: &Digest,
        expected_size: Option<u64>,
        mut sink: impl FnMut(&Bytes) -> Result<()>,
    ) -> Result<u64> {
        let path = self.blob_path(d);
        let opened = match self.local_file(&path) {
            Some(file) => match read_local(file).await {
                Ok(r) => Some(r),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(StoreError::io(&path, e)),
            },
            None => match self.inner.os.get(&path).await {
                Ok(g) => Some((g.meta.size, g.into_stream())),
                Err(e) if is_not_found(&e) => None,
                Err(e) => return Err(e.into()),
            },
        };
        let Some((actual, mut stream)) = opened else {
            // No object of its own: a packed blob, verified as it is read.
            let Some(m) = self.packed(d, true).await? else {
                return Err(StoreError::NotFound(format!("blob {d}")));
            };
            let data = self.read_member(d, m).await?;
            if let Some(expected) = expected_size.filter(|e| *e != m.size) {
                return Err(StoreError::SizeMismatch { digest: *d, expected, actual: m.size });
            }
            sink(&data)?;
            return Ok(m.size);
        };
        // If the referenced size is wrong we still hash the content (without handing it
        // out) to tell a corrupt blob from a wrong reference.
        let size_bad = expected_size.is_some_and(|e| e != actual);
        let mut h = Hasher::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            h.update(&chunk);
            if !size_bad {
                sink(&chunk)?;
            }
        }
        let n = h.len();
        if h.finish() != *d || n != actual {
            return Err(self.quarantine(d).await);
        }
        if let (true, Some(expected)) = (size_bad, expected_size) {
            return Err(StoreError::SizeMismatch { digest: *d, expected, actual });
        }
        Ok(n)
    }

    /// Delete a blob (used by gc).
    pub(crate) async fn delete_key(&self, p: &Path) -> Result<()> {
        match self.inner.os.delete(p).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// List `(digest, size)` of every blob in this tenant. Objects whose name is not a
    /// well-formed digest in the right fan-out directory (e.g. stray temp files) are ignored.
    pub async fn list_blobs(&self) -> Result<Vec<(Digest, u64)>> {
        Ok(self.list_blobs_with_time().await?.into_iter().map(|(d, size, _)| (d, size)).collect())
    }

    /// Every blob of the tenant with its size and last-modified time (ns):
    /// objects under `blobs/sha256/<aa>/<hex>` only, anything else ignored.
    pub(crate) async fn list_blobs_with_time(&self) -> Result<Vec<(Digest, u64, u64)>> {
        let prefix = self.key("blobs/sha256");
        let mut out = Vec::new();
        let mut s = self.inner.os.list(Some(&prefix));
        while let Some(m) = s.next().await {
            let m = m?;
            let parts: Vec<_> = m.location.parts().collect();
            let n = parts.len();
            if n < 2 {
                continue;
            }
            let (fan, name) = (parts[n - 2].as_ref(), parts[n - 1].as_ref());
            if let Ok(d) = Digest::from_hex(name) {
                if fan == &name[..2] {
                    let t = m.last_modified.timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
                    out.push((d, m.size, t));
                }
            }
        }
        Ok(out)
    }

    /// List `(key-relative-to-tenant, size)` of objects under `rel`.
    pub(crate) async fn list_rel(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        Ok(self.list_rel_with_time(rel).await?.into_iter().map(|(k, size, _)| (k, size)).collect())
    }

    /// List `(key-relative-to-tenant, size, last_modified_ns)` of objects under `rel`.
    pub(crate) async fn list_rel_with_time(&self, rel: &str) -> Result<Vec<(String, u64, u64)>> {
        let base = self.key("");
        let base = base.as_ref().trim_end_matches('/').to_string();
        let prefix = self.key(rel);
        let mut out = Vec::new();
        let mut s = self.inner.os.list(Some(&prefix));
        while let Some(m) = s.next().await {
            let m = m?;
            let full = m.location.as_ref();
            if let Some(r) = full.strip_prefix(&base) {
                let t = m.last_modified.timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
                out.push((r.trim_start_matches('/').to_string(), m.size, t));
            }
        }
        Ok(out)
    }

    // ---------- small JSON records (index objects, not content-addressed) ----------

    pub(crate) async fn put_json<T: serde::Serialize>(&self, rel: &str, v: &T) -> Result<()> {
        let data =
            serde_json::to_vec(v).map_err(|source| StoreError::Json { what: rel.to_string(), source })?;
        self.inner.os.put(&self.key(rel), PutPayload::from(data)).await?;
        Ok(())
    }

    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(&self, rel: &str) -> Result<Option<T>> {
        let data = match self.inner.os.get(&self.key(rel)).await {
            Ok(g) => g.bytes().await?,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| StoreError::Json { what: rel.to_string(), source })
    }

    pub(crate) async fn delete_rel(&self, rel: &str) -> Result<()> {
        self.delete_key(&self.key(rel)).await
    }
}

/// Runs `f` on the blocking pool; a panic in it becomes an I/O error on `what`.
pub(crate) async fn blocking<T: Send + 'static>(
    what: impl std::fmt::Display,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| StoreError::io(what, std::io::Error::other(e)))
}

/// Wait for one pack write of `put_files`.
async fn join_pack(writing: &mut tokio::task::JoinSet<Result<()>>) -> Result<()> {
    match writing.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(StoreError::io("pack write", std::io::Error::other(e))),
        None => Ok(()),
    }
}

fn read_some<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::Input { source: e }),
        }
    }
}

/// A blob's bytes from its file in a local store: its size, then its
/// contents in [`CHUNK`]s read on the blocking pool. The object store's own
/// local reads go 8 KiB at a time, each a task of the pool: a large blob
/// restored that way ran at a fifth of what the disk gives.
async fn read_local(
    file: std::path::PathBuf,
) -> std::io::Result<(u64, futures::stream::BoxStream<'static, object_store::Result<Bytes>>)> {
    // Opened, and a blob of one chunk read whole, in one task of the pool.
    let opened = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&file)?;
        let len = f.metadata()?.len();
        if len <= CHUNK as u64 {
            let mut whole = Vec::with_capacity(len as usize);
            f.read_to_end(&mut whole)?;
            return Ok::<_, std::io::Error>((len, Err(Bytes::from(whole))));
        }
        Ok((len, Ok(f)))
    })
    .await
    .map_err(std::io::Error::other)??;
    let (len, mut f) = match opened {
        (len, Err(whole)) => return Ok((len, futures::stream::once(async { Ok(whole) }).boxed())),
        (len, Ok(f)) => (len, f),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<object_store::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || loop {
        let mut buf = vec![0u8; CHUNK];
        let chunk = match read_some(&mut f, &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                Ok(Bytes::from(buf))
            }
            Err(e) => Err(object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(e) }),
        };
        let failed = chunk.is_err();
        if tx.blocking_send(chunk).is_err() || failed {
            return;
        }
    });
    Ok((len, tokio_stream_of(rx)))
}

/// A receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> futures::stream::BoxStream<'static, T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

/// Open a file for reading without following a final symlink.
pub(crate) fn open_nofollow(path: &std::path::Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| StoreError::io(path.display(), e))
}
