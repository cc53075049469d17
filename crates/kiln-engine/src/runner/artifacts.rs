//! `actions/upload-artifact` and `actions/download-artifact`: files kept
//! between the jobs of a build, in the content-addressed store.
//!
//! Both run on the host over a workspace that steps have written, so every
//! path is resolved beneath the workspace without following links, uploads
//! are staged by copying (links stay links, nothing is followed), a tree that
//! holds a secret value is refused with the file named, and downloads are
//! restored by the store's safe restore (manifest + verified blobs, never an
//! archive) and handed to the step user.

use std::collections::HashMap;
use std::os::unix::fs::lchown;
use std::path::Path;

use tokio::sync::Mutex;

/// The store and what this build has put in it.
#[derive(Debug)]
pub struct ArtifactSink {
    pub store: kiln_store::Store,
    pub source: kiln_store::SourceInfo,
    pub branch: String,
    /// Artifacts of this build by name.
    pub by_name: Mutex<HashMap<String, kiln_store::TreeDigest>>,
    /// Signs each artifact's provenance (none: unsigned).
    pub keys: Option<std::sync::Arc<kiln_store::Keys>>,
    /// This build's cache scope (tenant, trust, ref): it reads its own and the
    /// trusted default branch's, and writes only its own.
    pub cache_scope: kiln_store::Scope,
    pub default_branch: String,
    /// The scanning gate every artifact passes before it is recorded
    /// (none: recorded `ready` unscanned).
    pub scanner: Option<std::sync::Arc<kiln_scan::Scanner>>,
    /// The deployment's cache, when the build runs on a remote worker: it is
    /// looked up and saved there instead of in `store` (which then only
    /// holds the bytes this worker fetched or made).
    pub shared_cache: Option<std::sync::Arc<dyn SharedCache>>,
}

/// A boxed future (the trait below is used as an object).
pub type CacheFut<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

/// A cache kept by someone else for every worker of a deployment (the
/// server of a remote worker): a cache one worker filled is hit on another.
/// The keeper decides the scope from the build it handed out, never from
/// what the worker says.
pub trait SharedCache: Send + Sync + std::fmt::Debug {
    /// Looks `key` up, then the restore-key prefixes. On a hit, unless
    /// `lookup_only`, the entry's tree is put into `store` (every byte
    /// checked against its digest on the way in).
    fn restore<'a>(
        &'a self,
        key: &'a str,
        restore_keys: &'a [String],
        lookup_only: bool,
        store: &'a kiln_store::Store,
    ) -> CacheFut<'a, Option<SharedHit>>;

    /// Saves `tree` (in `store`) under `key`.
    fn save<'a>(
        &'a self,
        key: &'a str,
        tree: &'a kiln_store::TreeDigest,
        store: &'a kiln_store::Store,
    ) -> CacheFut<'a, ()>;
}

/// What a [`SharedCache`] found.
#[derive(Debug, Clone)]
pub struct SharedHit {
    /// The key that matched (`key` itself or a restore-key's match).
    pub key: String,
    /// The entry's tree, now in the worker's store (none when only looked up).
    pub tree: Option<kiln_store::TreeDigest>,
    pub files: u64,
    pub bytes: u64,
}

/// The branch a build's artifacts and cache entries are kept under: the
/// last part of its ref. A source outside git has none: it is `local`'s.
pub fn branch_of(git_ref: &str) -> String {
    Some(git_ref.rsplit('/').next().unwrap_or("")).filter(|b| !b.is_empty()).unwrap_or("local").to_string()
}

/// The builder id written into provenance.
pub const BUILDER_ID: &str = "kiln://builder/local";

/// What a build says about an artifact it uploads (the record's fields a
/// deployment system reads).
#[derive(Debug, Clone)]
pub struct UploadMeta {
    pub started_at: String,
    /// No step of the producing job had a network.
    pub hermetic: bool,
    pub output_type: kiln_store::OutputType,
    /// The producing job's commands, as written (secrets unexpanded).
    pub commands: Vec<String>,
    /// Digest of the job's environment as written (never expanded values).
    pub environment_digest: String,
    /// `retention-days`: `kiln gc` deletes the artifact after that.
    pub retention_days: Option<u32>,
    /// The source commit, when the build learnt it after it started (a
    /// fetch step); else the sink's.
    pub commit: Option<String>,
    /// The image the producing job ran on (`NAME@sha256:HEX`).
    pub image: Option<String>,
    /// Tools its setup actions fetched.
    pub tools: Vec<kiln_store::ToolInfo>,
}

/// What an upload stored.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub id: kiln_store::TreeDigest,
    pub files: u64,
    pub bytes: u64,
    /// Digest of the signed provenance envelope, when signed.
    pub provenance: Option<kiln_store::Digest>,
    /// `ready`, `flagged` or `quarantined`.
    pub status: String,
    /// The scan's findings, one line each.
    pub findings: Vec<String>,
}

impl ArtifactSink {
    pub fn new(store: kiln_store::Store, source: kiln_store::SourceInfo, branch: String) -> ArtifactSink {
        let cache_scope = kiln_store::Scope {
            tenant: "local".into(),
            trust: kiln_store::Trust::Trusted,
            ref_name: branch.clone(),
        };
        ArtifactSink {
            store,
            source,
            branch,
            by_name: Mutex::new(HashMap::new()),
            keys: None,
            cache_scope,
            default_branch: "main".into(),
            scanner: None,
            shared_cache: None,
        }
    }

    /// Stores `staging` as artifact `name` of `build`.
    pub async fn upload(
        &self,
        build: &str,
        name: &str,
        staging: &Path,
        meta: &UploadMeta,
    ) -> Result<Uploaded, String> {
        // The gate runs before anything is stored as this artifact.
        let (status, findings) = match &self.scanner {
            Some(scanner) => {
                let scanner = scanner.clone();
                let dir = staging.to_path_buf();
                let kind = match meta.output_type {
                    kiln_store::OutputType::Static => kiln_scan::OutputKind::Static,
                    kiln_store::OutputType::Function => kiln_scan::OutputKind::Function,
                    _ => kiln_scan::OutputKind::Server,
                };
                let report = tokio::task::spawn_blocking(move || scan_dir(&scanner, kind, &dir))
                    .await
                    .map_err(|e| format!("scan: {e}"))??;
                let status = match report.verdict {
                    kiln_scan::Verdict::Clean => "ready",
                    kiln_scan::Verdict::Flagged => "flagged",
                    kiln_scan::Verdict::Quarantined => "quarantined",
                };
                (status.to_string(), report.findings.iter().map(|f| f.to_string()).collect())
            }
            None => ("ready".to_string(), Vec::new()),
        };
        let stats = self.store.put_tree_stats(staging).await.map_err(|e| e.to_string())?;
        let mut source = self.source.clone();
        if let Some(c) = &meta.commit {
            source.commit = c.clone();
        }
        let record = kiln_store::ArtifactRecord {
            id: stats.digest,
            name: name.to_string(),
            output_type: meta.output_type,
            source,
            build: kiln_store::BuildInfo {
                build_id: build.to_string(),
                commands: meta.commands.clone(),
                started_at: meta.started_at.clone(),
                finished_at: crate::time::now_rfc3339(),
                exit_code: 0,
                builder_version: env!("CARGO_PKG_VERSION").to_string(),
                environment_digest: meta.environment_digest.clone(),
                image: meta.image.clone(),
                tools: meta.tools.clone(),
            },
            files: Vec::new(),
            created_at: kiln_store::now_rfc3339(),
            pinned: false,
            branch: self.branch.clone(),
            expires_at: meta.retention_days.map(kiln_store::days_from_now),
        };
        self.store.put_artifact(&record).await.map_err(|e| e.to_string())?;
        // An in-toto statement about exactly this tree, signed (DSSE) and
        // stored as a blob next to it.
        let provenance = match &self.keys {
            Some(keys) => {
                let statement = kiln_store::statement_for(&record, BUILDER_ID, meta.hermetic, Vec::new());
                let envelope = keys.sign(&statement);
                let json = serde_json::to_vec(&envelope).map_err(|e| e.to_string())?;
                let envelope = self.store.put_bytes(json).await.map_err(|e| e.to_string())?.digest;
                self.store.set_provenance(&stats.digest, build, envelope).await.map_err(|e| e.to_string())?;
                Some(envelope)
            }
            None => None,
        };
        self.by_name.lock().await.insert(name.to_string(), stats.digest);
        Ok(Uploaded {
            id: stats.digest,
            files: stats.files,
            bytes: stats.bytes,
            provenance,
            status,
            findings,
        })
    }

    /// The names of this build's artifacts so far, sorted.
    pub async fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.lock().await.keys().cloned().collect();
        names.sort();
        names
    }

    /// Restores artifact `name` of this build into `target` (created), owned
    /// by `uid:gid`.
    pub async fn download(&self, name: &str, target: &Path, uid: u32, gid: u32) -> Result<Uploaded, String> {
        let id = {
            let map = self.by_name.lock().await;
            match map.get(name) {
                Some(id) => *id,
                None => {
                    let mut known: Vec<&String> = map.keys().collect();
                    known.sort();
                    return Err(format!("no artifact `{name}` in this build (uploaded so far: {known:?})"));
                }
            }
        };
        let stats = self
            .store
            .restore_tree(&id, target, &kiln_store::RestoreLimits::default())
            .await
            .map_err(|e| format!("restoring `{name}`: {e}"))?;
        chown_tree(target, uid, gid).map_err(|e| format!("restoring `{name}`: {e}"))?;
        Ok(Uploaded {
            id,
            files: stats.files,
            bytes: stats.bytes,
            provenance: None,
            status: "ready".into(),
            findings: Vec::new(),
        })
    }
}

/// How a cache lookup ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheResult {
    /// The exact key.
    Hit {
        files: u64,
        bytes: u64,
    },
    /// A restore-key prefix matched this key.
    Partial {
        key: String,
        files: u64,
        bytes: u64,
    },
    Miss,
    /// An entry failed verification: treated as a miss, never restored.
    Tampered(String),
}

impl ArtifactSink {
    /// Restores `key` (or the newest entry matching a restore-key prefix)
    /// into `staging` (a new directory), verifying every blob.
    pub async fn cache_restore(
        &self,
        key: &str,
        restore_keys: &[String],
        staging: &Path,
        lookup_only: bool,
    ) -> Result<CacheResult, String> {
        if let Some(shared) = &self.shared_cache {
            let _ = self.store.take_events();
            let Some(hit) = shared.restore(key, restore_keys, lookup_only, &self.store).await? else {
                return Ok(CacheResult::Miss);
            };
            if let Some(tree) = &hit.tree {
                let restored =
                    self.store.restore_tree(tree, staging, &kiln_store::RestoreLimits::default()).await;
                let tampered: Vec<String> = self.store.take_events().iter().map(|e| e.to_string()).collect();
                if !tampered.is_empty() {
                    return Ok(CacheResult::Tampered(tampered.join("; ")));
                }
                restored.map_err(|e| e.to_string())?;
            }
            let SharedHit { key: got, files, bytes, .. } = hit;
            return Ok(if got == key {
                CacheResult::Hit { files, bytes }
            } else {
                CacheResult::Partial { key: got, files, bytes }
            });
        }
        let scopes = kiln_store::read_scopes(&self.cache_scope, &self.default_branch);
        let rks: Vec<&str> = restore_keys.iter().map(String::as_str).collect();
        let _ = self.store.take_events();
        let found = if lookup_only {
            self.store.cache_get(&scopes, key, &rks).await
        } else {
            self.store.cache_restore(&scopes, key, &rks, staging, &kiln_store::RestoreLimits::default()).await
        }
        .map_err(|e| e.to_string())?;
        let tampered: Vec<String> = self.store.take_events().iter().map(|e| e.to_string()).collect();
        if !tampered.is_empty() {
            return Ok(CacheResult::Tampered(tampered.join("; ")));
        }
        Ok(match found {
            kiln_store::CacheLookup::Miss => CacheResult::Miss,
            kiln_store::CacheLookup::Hit { key: got, tree, .. } => {
                let (files, bytes) = match self.store.get_manifest(&tree).await {
                    Ok(m) => m.entries.iter().fold((0, 0), |(f, b), e| match e {
                        kiln_store::Entry::File { size, .. } => (f + 1, b + size),
                        _ => (f, b),
                    }),
                    Err(_) => (0, 0),
                };
                if got == key {
                    CacheResult::Hit { files, bytes }
                } else {
                    CacheResult::Partial { key: got, files, bytes }
                }
            }
        })
    }

    /// Stores `staging` under `key` in this build's own cache scope.
    pub async fn cache_save(&self, key: &str, staging: &Path) -> Result<Uploaded, String> {
        let stats = self.store.put_tree_stats(staging).await.map_err(|e| e.to_string())?;
        if let Some(shared) = &self.shared_cache {
            shared.save(key, &stats.digest, &self.store).await?;
        } else {
            let scope = kiln_store::write_scope(&self.cache_scope);
            self.store.cache_put(&scope, key, &stats.digest).await.map_err(|e| e.to_string())?;
        }
        Ok(Uploaded {
            id: stats.digest,
            files: stats.files,
            bytes: stats.bytes,
            provenance: None,
            status: "ready".into(),
            findings: Vec::new(),
        })
    }
}

/// Largest file the scanner reads whole; bigger files are scanned by their
/// first and last halves of this (signatures sit at either end).
const SCAN_FILE_CAP: u64 = 64 << 20;

/// Scans a staged tree (kiln's own copy: links are links, never followed).
/// Files are read one at a time, as the scanner asks for them.
fn scan_dir(
    scanner: &kiln_scan::Scanner,
    kind: kiln_scan::OutputKind,
    dir: &Path,
) -> Result<kiln_scan::ScanReport, String> {
    let mut entries = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&abs).map_err(|e| format!("scan: {e}"))? {
            let entry = entry.map_err(|e| format!("scan: {e}"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let meta = entry.path().symlink_metadata().map_err(|e| format!("scan: {child}: {e}"))?;
            if meta.is_dir() {
                stack.push((entry.path(), child));
            } else if meta.is_file() || meta.file_type().is_symlink() {
                entries.push((child, entry.path(), meta));
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut failed = None;
    let mut inputs =
        entries.into_iter().map_while(|(child, abs, meta)| match scan_input(child, &abs, &meta) {
            Ok(i) => Some(i),
            Err(e) => {
                failed = Some(e);
                None
            }
        });
    let report = scanner.scan(kind, &mut inputs);
    drop(inputs);
    if let Some(e) = failed {
        return Err(e);
    }
    report.map_err(|e| format!("scan: {e}"))
}

fn scan_input(path: String, abs: &Path, meta: &std::fs::Metadata) -> Result<kiln_scan::ScanInput, String> {
    use std::io::{Read, Seek};
    use std::os::unix::fs::MetadataExt;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(abs).map_err(|e| format!("scan: {path}: {e}"))?;
        return Ok(kiln_scan::ScanInput {
            path,
            mode: meta.mode(),
            symlink_target: Some(target.to_string_lossy().into_owned()),
            data: Vec::new(),
        });
    }
    let fail = |e: std::io::Error| format!("scan: {}: {e}", abs.display());
    let mut f = std::fs::File::open(abs).map_err(fail)?;
    let mut data = Vec::new();
    if meta.len() <= SCAN_FILE_CAP {
        f.read_to_end(&mut data).map_err(fail)?;
    } else {
        let half = SCAN_FILE_CAP / 2;
        (&mut f).take(half).read_to_end(&mut data).map_err(fail)?;
        f.seek(std::io::SeekFrom::End(-(half as i64))).map_err(fail)?;
        f.read_to_end(&mut data).map_err(fail)?;
    }
    Ok(kiln_scan::ScanInput { path, mode: meta.mode(), symlink_target: None, data })
}

/// Gives a freshly restored tree (no step has run over it yet) to the step user.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    lchown(dir, Some(uid), Some(gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        lchown(entry.path(), Some(uid), Some(gid))?;
        if ft.is_dir() {
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The deepest directory containing every path (a directory counts as
/// containing itself; a file, its parent).
pub fn common_ancestor(paths: &[(String, std::path::PathBuf)]) -> std::path::PathBuf {
    let mut common: Option<Vec<String>> = None;
    for (rel, abs) in paths {
        let mut parts: Vec<String> =
            Path::new(rel).iter().map(|c| c.to_string_lossy().into_owned()).collect();
        if !abs.is_dir() {
            parts.pop();
        }
        common = Some(match common {
            None => parts,
            Some(c) => c.into_iter().zip(parts).take_while(|(a, b)| a == b).map(|(a, _)| a).collect(),
        });
    }
    common.unwrap_or_default().iter().collect()
}

/// Resolves `rel` beneath `root` without passing through a symlink; the
/// last component may be a file or a directory, never a link.
pub fn resolve_beneath(root: &Path, rel: &str) -> Result<std::path::PathBuf, String> {
    kiln_workflow::check_relative_path(rel)?;
    let mut here = root.to_path_buf();
    for part in Path::new(rel).components() {
        match part {
            std::path::Component::Normal(name) => here.push(name),
            std::path::Component::CurDir => continue,
            _ => return Err(format!("`{rel}` must stay inside the workspace")),
        }
        let meta = std::fs::symlink_metadata(&here).map_err(|_| format!("`{rel}` does not exist"))?;
        if meta.file_type().is_symlink() {
            return Err(format!("`{rel}` passes through a symbolic link"));
        }
    }
    Ok(here)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_common_ancestor_like_github() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dist/a")).unwrap();
        std::fs::write(d.path().join("dist/a/x"), "").unwrap();
        std::fs::write(d.path().join("top"), "").unwrap();
        let p = |r: &str| (r.to_string(), d.path().join(r));
        assert_eq!(common_ancestor(&[p("dist")]), Path::new("dist"));
        assert_eq!(common_ancestor(&[p("dist/a/x")]), Path::new("dist/a"));
        assert_eq!(common_ancestor(&[p("dist"), p("top")]), Path::new(""));
        assert_eq!(common_ancestor(&[p("dist/a"), p("dist/a/x")]), Path::new("dist/a"));
    }
}
