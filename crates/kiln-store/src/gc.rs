//! Garbage collection (per tenant).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;

use crate::cache::{now_ns, CacheEntry};
use crate::digest::{Digest, TreeDigest};
use crate::error::{Result, StoreError};
use crate::store::Store;

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Keep the newest N artifacts of every branch (plus all pinned ones).
    pub keep_last_per_branch: usize,
    /// Keep cache entries, most recently used first, while their summed tree sizes stay
    /// within this cap (logical size: blobs shared between entries count for each).
    pub cache_max_bytes: u64,
    /// Blobs and temp objects younger than this are never deleted (protects writes in
    /// flight whose manifest/record is not stored yet).
    pub grace: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy { keep_last_per_branch: 10, cache_max_bytes: 10 << 30, grace: Duration::from_secs(3600) }
    }
}

/// What gc deleted (or would delete, on a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// True if nothing was actually deleted.
    pub dry_run: bool,
    /// Artifact records removed from the index (one per build's record:
    /// a tree whose other records are kept stays, blobs and all).
    pub deleted_artifacts: Vec<TreeDigest>,
    /// Cache entries removed: `(trust/ref, key)`.
    pub deleted_cache_entries: Vec<(String, String)>,
    /// Blobs removed.
    pub deleted_blobs: Vec<Digest>,
    /// Bytes of removed blobs.
    pub deleted_bytes: u64,
    /// Packs removed (none of their blobs referenced any more); their
    /// bytes count in `deleted_bytes`.
    pub deleted_packs: Vec<Digest>,
    /// Leftover temp objects removed.
    pub deleted_temp: u64,
}

impl Store {
    /// Collect garbage in this tenant: keep pinned artifacts, the newest
    /// `keep_last_per_branch` per branch, cache entries by LRU under `cache_max_bytes`,
    /// and every blob referenced by a kept artifact (record, provenance envelope, manifest,
    /// files) or kept cache entry (manifest, files). Everything else older than `grace` goes.
    ///
    /// Not coordinated with concurrent writers beyond the grace period.
    pub async fn gc(&self, policy: &GcPolicy, dry_run: bool) -> Result<GcReport> {
        let mut report = GcReport { dry_run, ..Default::default() };
        let mut live: HashSet<Digest> = HashSet::new();

        // Artifacts.
        // Every build's record on its own: a tree two builds uploaded is
        // kept while either record is.
        let arts = self.list_claims().await?; // newest first
        let now = crate::artifact::now_rfc3339();
        let mut per_branch: HashMap<String, usize> = HashMap::new();
        for (id, rel, idx) in arts {
            // Expired artifacts (`retention-days`) do not count toward the
            // branch's kept ones.
            let expired = idx.expires_at.as_deref().is_some_and(|t| t <= now.as_str());
            let n = per_branch.entry(idx.branch.clone()).or_default();
            if !expired {
                *n += 1;
            }
            if idx.pinned || (!expired && *n <= policy.keep_last_per_branch) {
                live.insert(idx.record);
                if let Some(p) = idx.provenance {
                    live.insert(p);
                }
                self.mark_tree(&id, &mut live).await?;
            } else {
                if !dry_run {
                    self.delete_claim(&id, &rel, &idx.branch).await?;
                }
                report.deleted_artifacts.push(id);
            }
        }

        // Images: a reference keeps its manifest and every blob it lists.
        for r in self.list_image_refs().await? {
            live.insert(r.manifest);
            live.extend(r.blobs);
        }

        // Cache entries.
        let mut entries: Vec<(String, CacheEntry)> = Vec::new();
        for (rel, _) in self.list_rel("cache").await? {
            if !rel.ends_with(".json") {
                continue;
            }
            if let Some(e) = self.get_json::<CacheEntry>(&rel).await? {
                entries.push((rel, e));
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.1.last_used_ns));
        let mut used: u64 = 0;
        for (rel, e) in entries {
            let fits = used.saturating_add(e.bytes) <= policy.cache_max_bytes;
            if fits {
                used += e.bytes;
                self.mark_tree(&e.tree, &mut live).await?;
            } else {
                if !dry_run {
                    self.delete_rel(&rel).await?;
                }
                let scope = rel
                    .strip_prefix("cache/")
                    .and_then(|r| r.rsplit_once('/'))
                    .map(|(s, _)| s.to_string())
                    .unwrap_or_default();
                report.deleted_cache_entries.push((scope, e.key));
            }
        }

        // Blobs.
        let cutoff = now_ns().saturating_sub(policy.grace.as_nanos() as u64);
        for (d, size, modified_ns) in self.list_blobs_with_time().await? {
            if live.contains(&d) || modified_ns > cutoff {
                continue;
            }
            if !dry_run {
                self.delete_key(&self.blob_path(&d)).await?;
            }
            report.deleted_blobs.push(d);
            report.deleted_bytes += size;
        }

        // Packs: one goes when none of its blobs is referenced (a pack with
        // some still referenced is kept whole). A pack left without its
        // index, or an index without its pack, by a crash goes too.
        for p in self.list_packs().await? {
            if p.modified_ns > cutoff || self.pack_members(&p).await?.iter().any(|d| live.contains(d)) {
                continue;
            }
            if !dry_run {
                self.delete_pack(&p.digest).await?;
            }
            report.deleted_packs.push(p.digest);
            report.deleted_bytes += p.size;
        }

        // Temp leftovers.
        let prefix = self.key("tmp");
        let mut s = self.backend().list(Some(&prefix));
        let mut stale = Vec::new();
        while let Some(m) = s.next().await {
            let m = m?;
            let t = m.last_modified.timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
            if t <= cutoff {
                stale.push(m.location);
            }
        }
        for p in stale {
            if !dry_run {
                self.delete_key(&p).await?;
            }
            report.deleted_temp += 1;
        }
        report.deleted_blobs.sort();
        report.deleted_packs.sort();
        Ok(report)
    }

    async fn mark_tree(&self, tree: &TreeDigest, live: &mut HashSet<Digest>) -> Result<()> {
        live.insert(*tree);
        match self.get_manifest(tree).await {
            Ok(m) => {
                live.extend(m.files().map(|(_, _, d)| d));
                Ok(())
            }
            // Unreadable tree: nothing further is reachable through it.
            Err(StoreError::Corrupt { .. } | StoreError::NotFound(_) | StoreError::Tree(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
