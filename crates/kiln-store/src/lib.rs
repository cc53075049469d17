//! # kiln-store
//!
//! Content-addressed store for kiln artifacts and the build cache, with safe tree restore,
//! a strict tar reader for uploads, and signed SLSA provenance.
//!
//! ## Layout (per tenant, inside any `object_store` backend)
//! ```text
//! <tenant>/blobs/sha256/<aa>/<hex>          content blobs (files, manifests, records)
//! <tenant>/packs/<aa>/<hex>                 small files of trees, concatenated (see `pack`)
//! <tenant>/packs/<aa>/<hex>.idx             a pack's index: (blob digest, offset, size)
//! <tenant>/tmp/<random>                     in-flight writes (never read as blobs)
//! <tenant>/quarantine/sha256/<hex>          blobs that failed verification
//! <tenant>/artifacts/<tree-hex>.json        artifact index {record, name, branch, created_at, pinned}
//! <tenant>/refs/branches/<branch>/latest.json   {id} of the newest artifact of a branch
//! <tenant>/cache/<trusted|untrusted>/<ref>/<sha256(key)>.json   cache entries (LRU time inside)
//! <tenant>/images/<name>.json               image reference {name, manifest, blobs, created_at}
//! ```
//!
//! ## Guarantees
//! * **Writes**: blobs are addressed by `sha256:<hex>` computed while streaming. Small blobs
//!   (≤ [`SMALL_BLOB`]) are written with `PutMode::Create` (an existing identical blob is
//!   not rewritten); large ones stream to `tmp/` and are renamed with
//!   `rename_if_not_exists` only after the whole input was hashed. A local store writes its
//!   files itself: a temporary file under `tmp/`, published with
//!   `renameat2(RENAME_NOREPLACE)`. A reader error or crash leaves at most a `tmp/` object,
//!   which is never listed or read as a blob; gc removes it.
//! * **Packs**: [`Store::put_tree`] writes the small files it finds new
//!   (≤ [`PACK_MEMBER_MAX`]) into packs of about [`PACK_TARGET`] bytes with an index, not a
//!   blob each; a blob without an object of its own is read from its pack, verified against
//!   its own digest like any blob. Dedup stays per file. The index only says where to look:
//!   a forged or broken one can make a blob read as missing or corrupt, never as other
//!   bytes.
//! * **Reads**: every read re-hashes the content and checks the size. A mismatch is
//!   [`StoreError::Corrupt`], the object is moved to `quarantine/` and a
//!   [`StoreEvent::Quarantined`] is logged ([`Store::events`], [`Store::set_event_hook`]).
//!   Streamed reads (restore) write before the digest is known; restore then deletes
//!   everything it wrote, so corrupt content is never left materialised.
//! * **Trees**: manifest = canonical JSON `{"version":1,"entries":[...]}`, entries sorted by
//!   path bytes, one of `{"type":"file",path,size,mode,digest}`, `{"type":"dir",path,mode}`,
//!   `{"type":"symlink",path,symlink}`. Directories are explicit (empty dirs and modes kept),
//!   but missing parents are created (0o755) on restore. Modes are `& 0o777`. The tree id is
//!   the manifest blob digest. [`Store::put_tree`] never follows symlinks and refuses
//!   devices/FIFOs/sockets and non-UTF-8 names; it validates the manifest too, so a tree
//!   that could not be restored (e.g. absolute symlink) is refused at store time.
//! * **Restore** ([`Store::restore_tree`]): [`validate_manifest`] rejects absolute paths,
//!   `..`, empty/`.` components, NUL, duplicates, entries under a symlink or a file, over-long
//!   or over-deep paths, symlinks that are absolute or whose resolution (through other
//!   symlinks of the tree) climbs above the root, and entry/byte limits ([`RestoreLimits`]).
//!   Then files are created with `openat(O_CREAT|O_EXCL|O_NOFOLLOW)` under directory fds
//!   opened component by component with `O_NOFOLLOW|O_DIRECTORY`.
//! * **Tar**: own strict ustar+PAX reader ([`tar`] module docs), not the `tar` crate
//!   (RUSTSEC-2026-0068, RUSTSEC-2026-0067). Archives become manifests and go through the same validation.
//! * **Cache scopes**: [`read_scopes`] = own scope, then the trusted default-branch scope;
//!   [`write_scope`] = own scope. Trusted builds therefore never read untrusted entries.
//!
//! ## Known limits
//! * The API is async; `put_tree` reads and writes files on the blocking pool, but
//!   `restore_tree` still creates and writes files on the calling task (run it on a
//!   multi-thread runtime).
//! * A pack is deleted only when none of its blobs is referenced any more; until then the
//!   unreferenced blobs in it keep their space.
//! * Non-UTF-8 file names, hard links inside `put_tree` sources (stored as separate files,
//!   deduplicated by content), xattrs/ACLs, ownership and timestamps are not recorded.
//! * `cache_get` checks manifest integrity and blob presence/size only; full content
//!   verification happens in `cache_restore`/`restore_tree`.
//! * gc is per tenant, not coordinated with concurrent writers except via `grace`; the cache
//!   size cap counts shared blobs once per entry.
//! * Index objects (`artifacts/`, `refs/`, `cache/`) are plain last-writer-wins JSON.
//! * Cloud backends need the corresponding `object_store` features (not enabled here).

pub mod artifact;
pub mod cache;
pub mod digest;
pub mod error;
pub mod gc;
pub mod image;
mod local;
mod pack;
pub mod provenance;
pub mod store;
pub mod tar;
pub mod tree;

pub use artifact::{
    days_from_now, now_rfc3339, ArtifactFile, ArtifactIndex, ArtifactRecord, BuildInfo, OutputType,
    SourceInfo, ToolInfo,
};
pub use cache::{read_scopes, write_scope, CacheEntry, CacheLookup, Scope, Trust};
pub use digest::{Digest, TreeDigest};
pub use error::{ArchiveError, Result, StoreError, StoreEvent, TreeError};
pub use gc::{GcPolicy, GcReport};
pub use image::{check_image_name, ImageRef};
pub use pack::{BlobPlace, PACK_MEMBER_MAX, PACK_TARGET};
pub use provenance::{statement_for, verify, Envelope, Keys, Statement, VerifyError};
pub use store::{PutOutcome, Store, SMALL_BLOB};
pub use tree::{validate_manifest, Entry, Manifest, RestoreLimits, TreeStats};
