//! SLSA v1 provenance in an in-toto Statement v1, wrapped in a DSSE envelope signed with
//! Ed25519 over the DSSE pre-authentication encoding (PAE).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::artifact::ArtifactRecord;
use crate::digest::{Digest, TreeDigest};
use crate::error::StoreError;
use crate::store::Store;

/// in-toto Statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// SLSA provenance predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// DSSE payload type.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// kiln build type id.
pub const BUILD_TYPE: &str = "https://kiln.dev/build/v1";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// `{sha256: hex}` digest set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestSet {
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// in-toto ResourceDescriptor (subset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// URI.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uri: Option<String>,
    /// Digest.
    pub digest: DigestSet,
}

/// Statement subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// Name.
    pub name: String,
    /// Digest.
    pub digest: DigestSet,
}

/// External parameters of the build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalParameters {
    /// Commands run (the workflow).
    pub workflow: Vec<String>,
    /// Source.
    pub source: SourceParam,
}

/// Source repository + commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceParam {
    /// Repository.
    pub repository: String,
    /// Commit.
    pub commit: String,
    /// Ref.
    #[serde(rename = "ref")]
    pub git_ref: String,
}

/// SLSA buildDefinition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// Build type id.
    pub build_type: String,
    /// External parameters.
    pub external_parameters: ExternalParameters,
    /// Resolved dependencies.
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// Builder identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    /// Builder id.
    pub id: String,
    /// Version map.
    pub version: std::collections::BTreeMap<String, String>,
}

/// Build metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMetadata {
    /// Invocation id.
    pub invocation_id: String,
    /// Start (RFC 3339).
    pub started_on: String,
    /// End (RFC 3339).
    pub finished_on: String,
}

/// SLSA runDetails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetails {
    /// Builder.
    pub builder: Builder,
    /// Metadata.
    pub metadata: BuildMetadata,
}

/// SLSA v1 predicate plus the kiln `hermetic` extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Predicate {
    /// Build definition.
    pub build_definition: BuildDefinition,
    /// Run details.
    pub run_details: RunDetails,
    /// kiln extension: the build ran without network egress.
    pub hermetic: bool,
}

/// in-toto Statement v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// Subjects.
    pub subject: Vec<Subject>,
    /// Always [`PREDICATE_TYPE`].
    pub predicate_type: String,
    /// Predicate.
    pub predicate: Predicate,
}

/// DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// Key id (hex SHA-256 of the raw public key).
    pub keyid: String,
    /// Base64 signature.
    pub sig: String,
}

/// DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Always [`PAYLOAD_TYPE`].
    pub payload_type: String,
    /// Base64 of the statement JSON.
    pub payload: String,
    /// Signatures.
    pub signatures: Vec<EnvelopeSignature>,
}

/// DSSE v1 pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    v.extend_from_slice(b"DSSEv1 ");
    v.extend_from_slice(payload_type.len().to_string().as_bytes());
    v.push(b' ');
    v.extend_from_slice(payload_type.as_bytes());
    v.push(b' ');
    v.extend_from_slice(payload.len().to_string().as_bytes());
    v.push(b' ');
    v.extend_from_slice(payload);
    v
}

/// Key id of a public key: hex SHA-256 of its 32 raw bytes.
pub fn keyid(pk: &VerifyingKey) -> String {
    Digest::of(pk.as_bytes()).hex()
}

/// Build a provenance statement for an artifact.
pub fn statement_for(
    record: &ArtifactRecord,
    builder_id: &str,
    hermetic: bool,
    resolved_dependencies: Vec<ResourceDescriptor>,
) -> Statement {
    let mut version = std::collections::BTreeMap::new();
    version.insert("kiln".to_string(), record.build.builder_version.clone());
    let mut resolved_dependencies = resolved_dependencies;
    // The image the job ran on is what it was built with.
    if let Some((name, digest)) = record.build.image.as_deref().and_then(|i| i.split_once("@sha256:")) {
        resolved_dependencies.push(ResourceDescriptor {
            name: Some(name.to_string()),
            uri: Some(format!("kiln-image:{name}")),
            digest: DigestSet { sha256: digest.to_string() },
        });
    }
    // And the tools its setup actions fetched.
    for t in &record.build.tools {
        resolved_dependencies.push(ResourceDescriptor {
            name: Some(t.name.clone()),
            uri: Some(t.uri.clone()),
            digest: DigestSet { sha256: t.digest.hex() },
        });
    }
    Statement {
        type_: STATEMENT_TYPE.into(),
        subject: vec![Subject { name: record.name.clone(), digest: DigestSet { sha256: record.id.hex() } }],
        predicate_type: PREDICATE_TYPE.into(),
        predicate: Predicate {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE.into(),
                external_parameters: ExternalParameters {
                    workflow: record.build.commands.clone(),
                    source: SourceParam {
                        repository: record.source.repository.clone(),
                        commit: record.source.commit.clone(),
                        git_ref: record.source.git_ref.clone(),
                    },
                },
                resolved_dependencies,
            },
            run_details: RunDetails {
                builder: Builder { id: builder_id.into(), version },
                metadata: BuildMetadata {
                    invocation_id: record.build.build_id.clone(),
                    started_on: record.build.started_at.clone(),
                    finished_on: record.build.finished_at.clone(),
                },
            },
            hermetic,
        },
    }
}

/// Errors loading keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// I/O.
    #[error("key file `{path}`: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Private key readable by group/others.
    #[error("private key `{path}` has mode {mode:o}; must not be accessible by group/others (chmod 600)")]
    InsecurePermissions {
        /// Path.
        path: PathBuf,
        /// Mode.
        mode: u32,
    },
    /// Malformed key file.
    #[error("key file `{path}` is malformed")]
    Malformed {
        /// Path.
        path: PathBuf,
    },
    /// No OS randomness.
    #[error("no OS randomness: {0}")]
    Random(String),
}

/// The provenance signing key pair.
pub struct Keys {
    signing: SigningKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("keyid", &self.keyid()).finish_non_exhaustive()
    }
}

/// File name of the private key inside the state dir (hex, mode 0600).
pub const PRIVATE_KEY_FILE: &str = "provenance-ed25519.key";
/// File name of the public key inside the state dir (hex).
pub const PUBLIC_KEY_FILE: &str = "provenance-ed25519.pub";

impl Keys {
    /// Generate a fresh in-memory key pair.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Keys { signing: SigningKey::from_bytes(&seed) })
    }

    /// Load the key pair from `state_dir`, creating it (private key mode 0600) on first use.
    /// Refuses a private key file readable by group/others.
    pub fn load_or_create(state_dir: impl AsRef<Path>) -> Result<Self, KeyError> {
        let dir = state_dir.as_ref();
        let io = |path: &Path, source| KeyError::Io { path: path.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let priv_path = dir.join(PRIVATE_KEY_FILE);
        let pub_path = dir.join(PUBLIC_KEY_FILE);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&priv_path)
        {
            Ok(mut f) => {
                let keys = Self::generate()?;
                f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| io(&priv_path, e))?;
                f.write_all(hex::encode(keys.signing.to_bytes()).as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| io(&priv_path, e))?;
                std::fs::write(&pub_path, keys.public_key_hex() + "\n").map_err(|e| io(&pub_path, e))?;
                Ok(keys)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let f = crate::store::open_nofollow(&priv_path).map_err(|e| match e {
                    StoreError::Io { source, .. } => io(&priv_path, source),
                    other => io(&priv_path, std::io::Error::other(other.to_string())),
                })?;
                let md = f.metadata().map_err(|e| io(&priv_path, e))?;
                let mode = md.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::InsecurePermissions { path: priv_path, mode });
                }
                let text = std::io::read_to_string(f).map_err(|e| io(&priv_path, e))?;
                let mut seed = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut seed)
                    .map_err(|_| KeyError::Malformed { path: priv_path.clone() })?;
                let keys = Keys { signing: SigningKey::from_bytes(&seed) };
                if !pub_path.exists() {
                    std::fs::write(&pub_path, keys.public_key_hex() + "\n").map_err(|e| io(&pub_path, e))?;
                }
                Ok(keys)
            }
            Err(e) => Err(io(&priv_path, e)),
        }
    }

    /// Public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Public key as hex (printable; parse back with [`parse_public_key`]).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key().as_bytes())
    }

    /// Key id.
    pub fn keyid(&self) -> String {
        keyid(&self.public_key())
    }

    /// Sign a statement into a DSSE envelope.
    pub fn sign(&self, st: &Statement) -> Envelope {
        let payload = serde_json::to_vec(st).unwrap_or_default();
        let sig: Signature = self.signing.sign(&pae(PAYLOAD_TYPE, &payload));
        Envelope {
            payload_type: PAYLOAD_TYPE.into(),
            payload: B64.encode(&payload),
            signatures: vec![EnvelopeSignature { keyid: self.keyid(), sig: B64.encode(sig.to_bytes()) }],
        }
    }
}

/// Parse a hex public key.
pub fn parse_public_key(hex_str: &str) -> Option<VerifyingKey> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_str.trim(), &mut b).ok()?;
    VerifyingKey::from_bytes(&b).ok()
}

/// Precisely what failed in [`verify`].
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Envelope/statement structurally wrong.
    #[error("malformed provenance: {0}")]
    Malformed(String),
    /// No signature by the given key.
    #[error("wrong key: no signature with keyid {expected} (found: {found:?})")]
    WrongKey {
        /// Key id of the key we verify with.
        expected: String,
        /// Key ids present.
        found: Vec<String>,
    },
    /// Signature does not verify.
    #[error("bad signature (keyid {keyid}): envelope or statement was modified")]
    BadSignature {
        /// Key id.
        keyid: String,
    },
    /// Subject digest is not the artifact's tree digest.
    #[error("subject mismatch: statement is about {found:?}, artifact is {expected}")]
    SubjectMismatch {
        /// Artifact id.
        expected: TreeDigest,
        /// Subject digests found.
        found: Vec<String>,
    },
    /// A file of the artifact does not hash to its recorded digest.
    #[error("file `{path}` digest mismatch (expected {digest})")]
    FileDigestMismatch {
        /// File path.
        path: String,
        /// Recorded digest.
        digest: Digest,
    },
    /// A file blob is missing.
    #[error("file `{path}` missing from the store ({digest})")]
    FileMissing {
        /// File path.
        path: String,
        /// Recorded digest.
        digest: Digest,
    },
    /// The artifact's record disagrees with its tree.
    #[error("artifact record file list does not match its tree")]
    RecordMismatch,
    /// Store error.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Verify `env` against `pubkey` and the stored artifact `artifact_id`: signature over the
/// PAE, statement/predicate types, subject digest == tree digest, and every file blob
/// re-hashed. Returns the statement.
pub async fn verify(
    env: &Envelope,
    pubkey: &VerifyingKey,
    store: &Store,
    artifact_id: &TreeDigest,
) -> Result<Statement, VerifyError> {
    if env.payload_type != PAYLOAD_TYPE {
        return Err(VerifyError::Malformed(format!("payloadType is `{}`", env.payload_type)));
    }
    let kid = keyid(pubkey);
    let sig = env.signatures.iter().find(|s| s.keyid == kid).ok_or_else(|| VerifyError::WrongKey {
        expected: kid.clone(),
        found: env.signatures.iter().map(|s| s.keyid.clone()).collect(),
    })?;
    let payload =
        B64.decode(&env.payload).map_err(|e| VerifyError::Malformed(format!("payload base64: {e}")))?;
    let sig_bytes =
        B64.decode(&sig.sig).map_err(|e| VerifyError::Malformed(format!("signature base64: {e}")))?;
    let sig_v =
        Signature::from_slice(&sig_bytes).map_err(|_| VerifyError::BadSignature { keyid: kid.clone() })?;
    pubkey
        .verify_strict(&pae(&env.payload_type, &payload), &sig_v)
        .map_err(|_| VerifyError::BadSignature { keyid: kid.clone() })?;
    let st: Statement = serde_json::from_slice(&payload)
        .map_err(|e| VerifyError::Malformed(format!("statement JSON: {e}")))?;
    if st.type_ != STATEMENT_TYPE || st.predicate_type != PREDICATE_TYPE {
        return Err(VerifyError::Malformed(format!(
            "unexpected _type `{}` / predicateType `{}`",
            st.type_, st.predicate_type
        )));
    }
    let want = artifact_id.hex();
    if st.subject.len() != 1 || st.subject[0].digest.sha256 != want {
        return Err(VerifyError::SubjectMismatch {
            expected: *artifact_id,
            found: st.subject.iter().map(|s| s.digest.sha256.clone()).collect(),
        });
    }
    let rec = store.get_artifact(artifact_id).await?;
    let m = store.get_manifest(artifact_id).await?;
    let tree_files: Vec<_> = m.files().map(|(p, s, d)| (p.to_string(), s, d)).collect();
    let rec_files: Vec<_> = rec.files.iter().map(|f| (f.path.clone(), f.size, f.digest)).collect();
    if tree_files != rec_files {
        return Err(VerifyError::RecordMismatch);
    }
    for (path, size, digest) in tree_files {
        match store.verify_blob(&digest, Some(size)).await {
            Ok(_) => {}
            Err(StoreError::Corrupt { .. } | StoreError::SizeMismatch { .. }) => {
                return Err(VerifyError::FileDigestMismatch { path, digest })
            }
            Err(StoreError::NotFound(_)) => return Err(VerifyError::FileMissing { path, digest }),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(st)
}
