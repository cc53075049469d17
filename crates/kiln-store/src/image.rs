//! Image references: a name (`kiln/runner`) pointing at an image manifest
//! blob, with every blob the image needs listed so that gc keeps them.
//!
//! The store does not interpret image manifests (kiln-image does); a
//! reference carries the digests it keeps alive, so liveness never depends
//! on parsing a format the store does not own.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::store::Store;

/// Longest image name.
pub const MAX_IMAGE_NAME: usize = 128;

/// A named image in a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// The name, e.g. `kiln/runner`.
    pub name: String,
    /// Digest of the image manifest blob: the image's identity.
    pub manifest: Digest,
    /// Every other blob the image needs (its layers).
    pub blobs: Vec<Digest>,
    /// When the reference was written (RFC 3339).
    pub created_at: String,
}

/// Checks an image name: lowercase `[a-z0-9]` segments joined by `.`, `_`,
/// `-` and `/`, no empty segment, at most [`MAX_IMAGE_NAME`] bytes. The name
/// becomes part of an object key, so nothing that could climb or confuse a
/// path is accepted.
pub fn check_image_name(name: &str) -> Result<()> {
    let bad = |reason: &'static str| StoreError::InvalidName { name: name.to_string(), reason };
    if name.is_empty() || name.len() > MAX_IMAGE_NAME {
        return Err(bad("must be 1 to 128 bytes"));
    }
    // An optional `:tag` (`node:20-bookworm`), as image references have.
    let path = match name.rsplit_once(':') {
        Some((path, tag)) => {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            let first_ok = tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            if tag.is_empty() || !tag.chars().all(ok) || !first_ok {
                return Err(bad("a tag after `:` is letters, digits, `.`, `_` and `-`"));
            }
            path
        }
        None => name,
    };
    for seg in path.split('/') {
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
        if seg.is_empty() || !seg.chars().all(ok_char) {
            return Err(bad("use lowercase letters, digits, `.`, `_`, `-` and `/` between non-empty parts"));
        }
        if !seg.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(bad("each part starts with a letter or digit"));
        }
    }
    Ok(())
}

fn ref_key(name: &str) -> String {
    format!("images/{name}.json")
}

impl Store {
    /// Points `r.name` at an image (last writer wins). Every blob must exist.
    pub async fn put_image_ref(&self, r: &ImageRef) -> Result<()> {
        check_image_name(&r.name)?;
        for d in std::iter::once(&r.manifest).chain(&r.blobs) {
            if self.blob_size(d).await?.is_none() {
                return Err(StoreError::NotFound(format!("blob {d} of image {}", r.name)));
            }
        }
        self.put_json(&ref_key(&r.name), r).await
    }

    /// The image called `name`, if any.
    pub async fn image_ref(&self, name: &str) -> Result<Option<ImageRef>> {
        check_image_name(name)?;
        self.get_json(&ref_key(name)).await
    }

    /// Every image reference, sorted by name.
    pub async fn list_image_refs(&self) -> Result<Vec<ImageRef>> {
        let mut out = Vec::new();
        for (rel, _) in self.list_rel("images").await? {
            if !rel.ends_with(".json") {
                continue;
            }
            if let Some(r) = self.get_json::<ImageRef>(&rel).await? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the reference `name` (its blobs go at the next gc unless
    /// another reference holds them). Returns whether it existed.
    pub async fn delete_image_ref(&self, name: &str) -> Result<bool> {
        let existed = self.image_ref(name).await?.is_some();
        if existed {
            self.delete_rel(&ref_key(name)).await?;
        }
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        for ok in ["kiln/runner", "a", "debian.bookworm/x_y-1", "0/1", "node:20-bookworm", "team/py:3.12_A"] {
            check_image_name(ok).unwrap();
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "A",
            "a/../b",
            "../a",
            ".a",
            "a b",
            "a\\b",
            "-x",
            "a/.hidden",
            "a:",
            "a:-x",
            "a:b/c",
            "a:b:c",
            ":x",
            "a:..",
        ] {
            assert!(check_image_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_image_name(&"a".repeat(MAX_IMAGE_NAME + 1)).is_err());
    }

    #[tokio::test]
    async fn refs_round_trip_and_gc_keeps_their_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_local(dir.path()).unwrap().tenant("t").unwrap();
        let manifest = store.put_bytes(&b"{\"image\":1}"[..]).await.unwrap().digest;
        let layer = store.put_bytes(vec![7u8; 5000]).await.unwrap().digest;
        let orphan = store.put_bytes(&b"orphan"[..]).await.unwrap().digest;
        let r = ImageRef {
            name: "kiln/runner".into(),
            manifest,
            blobs: vec![layer],
            created_at: crate::now_rfc3339(),
        };
        store.put_image_ref(&r).await.unwrap();
        assert_eq!(store.image_ref("kiln/runner").await.unwrap(), Some(r.clone()));
        assert_eq!(store.list_image_refs().await.unwrap(), vec![r]);

        let policy = crate::GcPolicy { grace: std::time::Duration::ZERO, ..Default::default() };
        let report = store.gc(&policy, false).await.unwrap();
        assert_eq!(report.deleted_blobs, vec![orphan]);
        store.verify_blob(&manifest, None).await.unwrap();
        store.verify_blob(&layer, None).await.unwrap();

        assert!(store.delete_image_ref("kiln/runner").await.unwrap());
        assert!(!store.delete_image_ref("kiln/runner").await.unwrap());
        let report = store.gc(&policy, false).await.unwrap();
        assert_eq!(report.deleted_blobs.len(), 2);
    }

    #[tokio::test]
    async fn a_ref_to_a_missing_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_local(dir.path()).unwrap().tenant("t").unwrap();
        let r = ImageRef {
            name: "x".into(),
            manifest: crate::Digest::of(b"nope"),
            blobs: vec![],
            created_at: crate::now_rfc3339(),
        };
        assert!(matches!(store.put_image_ref(&r).await, Err(StoreError::NotFound(_))));
    }
}
