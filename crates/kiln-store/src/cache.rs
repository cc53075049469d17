//! Build cache entries with trust scopes.
//!
//! Layout: `<tenant>/cache/<trusted|untrusted>/<ref>/<sha256(key)>.json` holding a
//! [`CacheEntry`] (key, tree, sizes, LRU time). The tree itself is an ordinary tree.

use std::path::Path as FsPath;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, TreeDigest};
use crate::error::{Result, StoreError, StoreEvent};
use crate::store::{check_name, Store};
use crate::tree::RestoreLimits;

/// Whether a build runs trusted code (default branch / maintainers) or not (forks, PRs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Trusted build.
    Trusted,
    /// Untrusted build.
    Untrusted,
}

impl Trust {
    fn dir(self) -> &'static str {
        match self {
            Trust::Trusted => "trusted",
            Trust::Untrusted => "untrusted",
        }
    }
}

/// A cache namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    /// Tenant.
    pub tenant: String,
    /// Trust level.
    pub trust: Trust,
    /// Ref (branch) name.
    pub ref_name: String,
}

/// Scopes a build of `scope` may read, in order: its own, then the *trusted* scope of the
/// default branch. Untrusted builds can thus read trusted default-branch entries, but no
/// trusted build ever reads an untrusted scope.
pub fn read_scopes(scope: &Scope, default_branch: &str) -> Vec<Scope> {
    let mut v = vec![scope.clone()];
    let default =
        Scope { tenant: scope.tenant.clone(), trust: Trust::Trusted, ref_name: default_branch.to_string() };
    if default != *scope {
        v.push(default);
    }
    v
}

/// The only scope a build of `scope` may write: its own (so untrusted builds write only
/// to their own untrusted scope).
pub fn write_scope(scope: &Scope) -> Scope {
    scope.clone()
}

/// A stored cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Cache key.
    pub key: String,
    /// Tree.
    pub tree: TreeDigest,
    /// Sum of file sizes of the tree (used for the gc size cap).
    pub bytes: u64,
    /// Creation time, ns since the Unix epoch.
    pub created_ns: u64,
    /// Last hit, ns since the Unix epoch (LRU).
    pub last_used_ns: u64,
}

/// Result of a cache lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLookup {
    /// Found (exact key or a restore-key prefix match).
    Hit {
        /// The key that matched.
        key: String,
        /// Its tree.
        tree: TreeDigest,
        /// Scope it was found in.
        scope: Scope,
    },
    /// Nothing usable.
    Miss,
}

pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) fn scope_dir(scope: &Scope) -> String {
    format!("cache/{}/{}", scope.trust.dir(), scope.ref_name)
}

fn entry_rel(scope: &Scope, key: &str) -> String {
    format!("{}/{}.json", scope_dir(scope), Digest::of(key.as_bytes()).hex())
}

impl Store {
    fn for_scope(&self, scope: &Scope) -> Result<Store> {
        check_name(&scope.ref_name, true)?;
        self.tenant(&scope.tenant)
    }

    /// Record `tree` under `key` in `scope` (pass [`write_scope`]`(&build_scope)`).
    pub async fn cache_put(&self, scope: &Scope, key: &str, tree: &TreeDigest) -> Result<()> {
        let s = self.for_scope(scope)?;
        let m = s.get_manifest(tree).await?;
        let now = now_ns();
        let e = CacheEntry {
            key: key.to_string(),
            tree: *tree,
            bytes: m.total_bytes(),
            created_ns: now,
            last_used_ns: now,
        };
        s.put_json(&entry_rel(scope, key), &e).await
    }

    /// Cache entries of a scope.
    pub async fn cache_entries(&self, scope: &Scope) -> Result<Vec<CacheEntry>> {
        let s = self.for_scope(scope)?;
        let dir = format!("{}/", scope_dir(scope));
        let mut out = Vec::new();
        for (rel, _) in s.list_rel(&scope_dir(scope)).await? {
            // Only direct children (a ref like `a` must not see entries of `a/b`).
            let Some(name) = rel.strip_prefix(&dir) else {
                continue;
            };
            if name.contains('/') || !name.ends_with(".json") {
                continue;
            }
            if let Some(e) = s.get_json::<CacheEntry>(&rel).await? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Is the entry's tree usable? Manifest verified; every blob present with the right
    /// size. A corrupt manifest is quarantined (event) and reported as unusable.
    async fn cache_usable(&self, s: &Store, tree: &TreeDigest) -> Result<bool> {
        let m = match s.get_manifest(tree).await {
            Ok(m) => m,
            Err(StoreError::Corrupt { .. } | StoreError::NotFound(_) | StoreError::Tree(_)) => {
                return Ok(false)
            }
            Err(e) => return Err(e),
        };
        for (_, size, d) in m.files() {
            match s.blob_size(&d).await? {
                Some(n) if n == size => {}
                // A blob under a digest cannot change size unless someone
                // wrote to the store behind kiln's back: quarantine and report.
                Some(_) => {
                    let _ = s.quarantine(&d).await;
                    return Ok(false);
                }
                None => {
                    self.emit(StoreEvent::Unrestorable {
                        tenant: s.tenant_name().to_string(),
                        tree: tree.to_string(),
                        reason: format!("blob {d} is missing"),
                    });
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Look `key` up in `scopes` in order; in each scope the exact key first, then each
    /// restore-key prefix (newest matching entry). Unusable entries are skipped. A hit
    /// bumps the entry's LRU time. Content is fully verified only on restore
    /// ([`Store::cache_restore`]).
    pub async fn cache_get(&self, scopes: &[Scope], key: &str, restore_keys: &[&str]) -> Result<CacheLookup> {
        for scope in scopes {
            let s = self.for_scope(scope)?;
            let mut candidates: Vec<CacheEntry> = Vec::new();
            if let Some(e) = s.get_json::<CacheEntry>(&entry_rel(scope, key)).await? {
                candidates.push(e);
            }
            if !restore_keys.is_empty() {
                let mut all = self.cache_entries(scope).await?;
                all.sort_by_key(|e| std::cmp::Reverse(e.created_ns));
                for p in restore_keys {
                    candidates.extend(all.iter().filter(|e| e.key.starts_with(p)).cloned());
                }
            }
            for mut e in candidates {
                if self.cache_usable(&s, &e.tree).await? {
                    e.last_used_ns = now_ns().max(e.last_used_ns + 1);
                    s.put_json(&entry_rel(scope, &e.key), &e).await?;
                    return Ok(CacheLookup::Hit { key: e.key, tree: e.tree, scope: scope.clone() });
                }
            }
        }
        Ok(CacheLookup::Miss)
    }

    /// [`Store::cache_get`] then restore into `target`. If any blob fails verification
    /// during restore, the blob is quarantined (event), everything written is removed and
    /// the result is [`CacheLookup::Miss`]; tampered content is never left restored.
    pub async fn cache_restore(
        &self,
        scopes: &[Scope],
        key: &str,
        restore_keys: &[&str],
        target: impl AsRef<FsPath>,
        limits: &RestoreLimits,
    ) -> Result<CacheLookup> {
        let hit = self.cache_get(scopes, key, restore_keys).await?;
        let CacheLookup::Hit { scope, tree, .. } = &hit else {
            return Ok(hit);
        };
        let s = self.for_scope(scope)?;
        match s.restore_tree(tree, target, limits).await {
            Ok(_) => Ok(hit),
            // Quarantine already reported the corrupt blob.
            Err(StoreError::Corrupt { .. }) => Ok(CacheLookup::Miss),
            Err(e @ (StoreError::NotFound(_) | StoreError::SizeMismatch { .. })) => {
                self.emit(StoreEvent::Unrestorable {
                    tenant: scope.tenant.clone(),
                    tree: tree.to_string(),
                    reason: e.to_string(),
                });
                Ok(CacheLookup::Miss)
            }
            Err(e) => Err(e),
        }
    }
}
