//! Looking images up, listing and removing them, and materializing one as a
//! directory on the host.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_store::{Digest, Store};

use crate::error::{io_err, ImageError, Result};
use crate::extract::{extract_layer, ExtractLimits};
use crate::manifest::ImageManifest;

/// A named image and what it is.
#[derive(Debug, Clone)]
pub struct Image {
    /// The name it was found by (or the digest when looked up by digest).
    pub name: String,
    /// The image's identity: the digest of its manifest blob.
    pub digest: Digest,
    pub manifest: ImageManifest,
    /// When the name was last pointed at it (empty when looked up by digest).
    pub created_at: String,
}

async fn load(store: &Store, name: &str, digest: Digest, created_at: String) -> Result<Image> {
    let bytes = store.get_bytes(&digest, None).await.map_err(|e| match e {
        kiln_store::StoreError::NotFound { .. } => ImageError::NotFound(name.to_string()),
        e => e.into(),
    })?;
    let manifest = ImageManifest::parse(&digest, &bytes)?;
    Ok(Image { name: name.to_string(), digest, manifest, created_at })
}

/// Finds an image by name (`kiln/runner`) or by digest (`sha256:...`).
pub async fn resolve(store: &Store, name_or_digest: &str) -> Result<Image> {
    if name_or_digest.starts_with("sha256:") {
        let d: Digest =
            name_or_digest.parse().map_err(|_| ImageError::NotFound(name_or_digest.to_string()))?;
        return load(store, name_or_digest, d, String::new()).await;
    }
    kiln_store::check_image_name(name_or_digest)?;
    let r = store
        .image_ref(name_or_digest)
        .await?
        .ok_or_else(|| ImageError::NotFound(name_or_digest.to_string()))?;
    load(store, &r.name, r.manifest, r.created_at).await
}

/// Every named image, sorted by name. A reference whose manifest cannot be
/// read is reported as an error, not left out.
pub async fn list(store: &Store) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    for r in store.list_image_refs().await? {
        out.push(load(store, &r.name, r.manifest, r.created_at).await?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes the name `name`; when no other name points at the same image,
/// its materialized directory under `images_dir` goes too. Its blobs stay
/// until `kiln gc`. Returns false when there was no such name.
pub async fn remove(store: &Store, name: &str, images_dir: Option<&Path>) -> Result<bool> {
    kiln_store::check_image_name(name)?;
    let Some(r) = store.image_ref(name).await? else { return Ok(false) };
    store.delete_image_ref(name).await?;
    let still_named = store.list_image_refs().await?.iter().any(|o| o.manifest == r.manifest);
    if let (false, Some(dir)) = (still_named, images_dir) {
        let p = dir.join(r.manifest.hex());
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(io_err("remove", &p))?;
        }
    }
    Ok(true)
}

/// The directory that holds `image` materialized under `images_dir`,
/// extracting it first when it is not there yet. The directory appears only
/// complete: layers are read back verified and extracted into a staging
/// directory that is renamed into place at the end; a failure removes it.
pub async fn materialize(store: &Store, image: &Image, images_dir: &Path) -> Result<PathBuf> {
    let target = images_dir.join(image.digest.hex());
    if target.is_dir() {
        return Ok(target);
    }
    // Only root reads the extracted trees: they hold set-id programs.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(images_dir)
        .map_err(io_err("create", images_dir))?;
    std::fs::set_permissions(images_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("chmod", images_dir))?;
    let mut r = [0u8; 8];
    getrandom::fill(&mut r)
        .map_err(|e| io_err("random", images_dir)(std::io::Error::other(e.to_string())))?;
    let suffix = hex::encode(r);
    let staging = images_dir.join(format!(".staging-{}-{suffix}", image.digest.hex()));
    let layer_file = images_dir.join(format!(".layer-{suffix}"));
    let result = fill(store, image, &staging, &layer_file).await;
    let _ = std::fs::remove_file(&layer_file);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    match std::fs::rename(&staging, &target) {
        Ok(()) => Ok(target),
        // Another job materialized it meanwhile: use theirs.
        Err(_) if target.is_dir() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(target)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(io_err("rename", &target)(e))
        }
    }
}

async fn fill(store: &Store, image: &Image, staging: &Path, layer_file: &Path) -> Result<()> {
    std::fs::DirBuilder::new().mode(0o755).create(staging).map_err(io_err("create", staging))?;
    for layer in &image.manifest.layers {
        {
            let mut f = std::fs::File::create(layer_file).map_err(io_err("create", layer_file))?;
            store.copy_blob_to(&layer.digest, Some(layer.size), &mut f).await?;
        }
        let (root, file, name) = (staging.to_path_buf(), layer_file.to_path_buf(), layer.digest.to_string());
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&file).map_err(io_err("open", &file))?;
            extract_layer(
                &root,
                &name,
                std::io::BufReader::with_capacity(1 << 20, f),
                &ExtractLimits::default(),
            )
        })
        .await
        .map_err(|e| io_err("extract", staging)(std::io::Error::other(e.to_string())))??;
    }
    Ok(())
}
