//! Importing OCI images: an OCI image layout, as a directory or as the tar
//! archive `skopeo copy ... oci-archive:` and `umoci` make.
//!
//! Everything in the layout is untrusted: the archive is unpacked by the
//! hostile-layer extractor, every blob is checked against the digest it is
//! named by before it is used, JSON documents are size-capped, and each
//! layer (plain, gzip) becomes a plain tar blob in kiln's store, applied in
//! order (with its whiteouts) when the image is materialized.

use std::io::Read;
use std::path::{Path, PathBuf};

use kiln_store::{check_image_name, Digest, ImageRef, Store};
use serde::Deserialize;
use sha2::Digest as _;

use crate::error::{io_err, ImageError, Result};
use crate::extract::{extract_layer, ExtractLimits};
use crate::manifest::{ImageManifest, Layer, Source, SCHEMA};

/// Largest JSON document (index, manifest, config) read from a layout.
const MAX_JSON: u64 = 4 << 20;

/// What an imported image's config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// `NAME=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// What the image runs when started as a service (`Entrypoint` then
    /// `Cmd`); absent from the manifest when the config has none, so
    /// images imported before these were read keep their digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// The TCP ports the config exposes (`ExposedPorts`), sorted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<ContainerConfig>,
}

#[derive(Deserialize, Default)]
struct ContainerConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "ExposedPorts", default)]
    exposed_ports: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// `ExposedPorts` keys (`6379/tcp`, `8080`) as TCP port numbers; other
/// protocols and malformed keys are left out.
fn tcp_ports(exposed: Option<std::collections::BTreeMap<String, serde_json::Value>>) -> Option<Vec<u16>> {
    let mut ports: Vec<u16> = exposed?
        .keys()
        .filter_map(|k| match k.split_once('/') {
            Some((p, "tcp")) => p.parse().ok(),
            Some(_) => None,
            None => k.parse().ok(),
        })
        .filter(|p| *p != 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    (!ports.is_empty()).then_some(ports)
}

fn bad(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Manifest { digest: path.display().to_string(), reason: reason.into() }
}

/// The layout's blob for `digest` (`sha256:HEX`), after checking the name.
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| bad(layout, format!("digest `{digest}` is not sha256")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(bad(layout, format!("digest `{digest}` is malformed")));
    }
    Ok(layout.join("blobs/sha256").join(hex))
}

/// Reads a blob fully (at most `max` bytes), checking its digest.
fn read_blob(layout: &Path, digest: &str, max: u64) -> Result<Vec<u8>> {
    let p = blob_path(layout, digest)?;
    let f = std::fs::File::open(&p).map_err(|_| bad(layout, format!("blob {digest} is missing")))?;
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes).map_err(io_err("read", &p))?;
    if bytes.len() as u64 > max {
        return Err(bad(layout, format!("blob {digest} is larger than {max} bytes")));
    }
    if format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes))) != digest {
        return Err(bad(layout, format!("blob {digest} does not match its digest")));
    }
    Ok(bytes)
}

fn parse<T: serde::de::DeserializeOwned>(layout: &Path, what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| bad(layout, format!("{what}: {e}")))
}

/// The image manifest for linux/amd64 in `index` (following one nested
/// index), as (digest, manifest).
fn pick_manifest(layout: &Path, index: Index, depth: u8) -> Result<(String, OciManifest)> {
    let amd64 =
        |d: &Descriptor| d.platform.as_ref().is_none_or(|p| p.os == "linux" && p.architecture == "amd64");
    let d = index
        .manifests
        .into_iter()
        .find(amd64)
        .ok_or_else(|| bad(layout, "no linux/amd64 image in the layout"))?;
    let bytes = read_blob(layout, &d.digest, MAX_JSON)?;
    let is_index = d.media_type.contains("image.index") || d.media_type.contains("manifest.list");
    if is_index {
        if depth > 0 {
            return Err(bad(layout, "indexes nest too deep"));
        }
        return pick_manifest(layout, parse(layout, "image index", &bytes)?, depth + 1);
    }
    Ok((d.digest, parse(layout, "image manifest", &bytes)?))
}

/// Imports the OCI layout at `source` (a directory, or a tar archive of
/// one) as image `name`. `scratch` holds the unpacked archive and the
/// decompressed layers while they are stored. The image is materialized
/// under `images_dir` before the name points at it: an image whose layers
/// extraction refuses is never named.
pub async fn import_oci(
    store: &Store,
    source: &Path,
    name: &str,
    reference: &str,
    scratch: &Path,
    images_dir: &Path,
) -> Result<(Digest, ImageManifest)> {
    check_image_name(name)?;
    let meta = std::fs::metadata(source).map_err(io_err("read", source))?;
    std::fs::create_dir_all(scratch).map_err(io_err("create", scratch))?;
    let work =
        tempfile::Builder::new().prefix(".import-").tempdir_in(scratch).map_err(io_err("create", scratch))?;
    let layout = if meta.is_dir() {
        source.to_path_buf()
    } else {
        let dir = work.path().join("layout");
        std::fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        let (d, s) = (dir.clone(), source.to_path_buf());
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&s).map_err(io_err("open", &s))?;
            extract_layer(&d, "oci archive", std::io::BufReader::new(f), &ExtractLimits::default())
        })
        .await
        .map_err(|e| io_err("unpack", source)(std::io::Error::other(e.to_string())))??;
        dir
    };
    let index_path = layout.join("index.json");
    let index_bytes = {
        let f = std::fs::File::open(&index_path)
            .map_err(|_| bad(source, "no index.json: not an OCI image layout"))?;
        let mut b = Vec::new();
        f.take(MAX_JSON).read_to_end(&mut b).map_err(io_err("read", &index_path))?;
        b
    };
    let (manifest_digest, m) = pick_manifest(&layout, parse(&layout, "index.json", &index_bytes)?, 0)?;
    let cfg: ConfigFile = parse(&layout, "image config", &read_blob(&layout, &m.config.digest, MAX_JSON)?)?;
    if !(cfg.os.is_empty() || cfg.os == "linux")
        || !(cfg.architecture.is_empty() || cfg.architecture == "amd64")
    {
        return Err(bad(
            source,
            format!("the image is for {}/{}, runners here are linux/amd64", cfg.os, cfg.architecture),
        ));
    }
    if m.layers.is_empty() {
        return Err(bad(source, "the image has no layers"));
    }
    let mut layers = Vec::new();
    for (i, l) in m.layers.iter().enumerate() {
        let compressed = blob_path(&layout, &l.digest)?;
        let plain = work.path().join(format!("layer-{i}.tar"));
        let (c, p, digest, media, size) =
            (compressed.clone(), plain.clone(), l.digest.clone(), l.media_type.clone(), l.size);
        // Decompress while hashing what was read: the layer is used only if
        // its bytes are the ones its digest names.
        tokio::task::spawn_blocking(move || decompress(&c, &p, &digest, &media, size))
            .await
            .map_err(|e| io_err("decompress", &compressed)(std::io::Error::other(e.to_string())))??;
        let out = store.put_file(&plain).await?;
        let _ = std::fs::remove_file(&plain);
        layers.push(Layer { digest: out.digest, size: out.size });
    }
    let run = cfg.config.unwrap_or_default();
    let manifest = ImageManifest {
        schema: SCHEMA.into(),
        source: Source::Oci {
            reference: reference.to_string(),
            manifest_digest,
            config: RunConfig {
                env: run.env.unwrap_or_default(),
                working_dir: run.working_dir,
                user: run.user,
                entrypoint: run.entrypoint.filter(|e| !e.is_empty()),
                cmd: run.cmd.filter(|c| !c.is_empty()),
                ports: tcp_ports(run.exposed_ports),
            },
        },
        layers,
        packages: Vec::new(),
    };
    let digest = store.put_bytes(manifest.to_json()).await?.digest;
    let image =
        crate::Image { name: name.into(), digest, manifest: manifest.clone(), created_at: String::new() };
    crate::materialize(store, &image, images_dir).await?;
    let created_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let blobs = manifest.layers.iter().map(|l| l.digest).collect();
    store.put_image_ref(&ImageRef { name: name.into(), manifest: digest, blobs, created_at }).await?;
    Ok((digest, manifest))
}

/// Writes the plain tar of a layer blob to `out`, checking the blob's
/// digest and size over the bytes read.
fn decompress(blob: &Path, out: &Path, digest: &str, media: &str, size: u64) -> Result<()> {
    struct Hashing<R> {
        r: R,
        h: sha2::Sha256,
        n: u64,
    }
    impl<R: Read> Read for Hashing<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let k = self.r.read(buf)?;
            self.h.update(&buf[..k]);
            self.n += k as u64;
            Ok(k)
        }
    }
    let f = std::fs::File::open(blob).map_err(|_| bad(blob, format!("layer {digest} is missing")))?;
    let mut src = Hashing { r: std::io::BufReader::new(f), h: sha2::Sha256::new(), n: 0 };
    let mut dst = std::fs::File::create(out).map_err(io_err("create", out))?;
    if media.ends_with("+zstd") || media.ends_with(".zstd") {
        return Err(bad(blob, format!("layer {digest}: zstd layers are not supported (convert with skopeo --dest-compress-format gzip)")));
    }
    if media.ends_with("gzip") {
        let mut gz = flate2::read::GzDecoder::new(&mut src);
        std::io::copy(&mut gz, &mut dst).map_err(|e| bad(blob, format!("layer {digest}: {e}")))?;
        // The gzip stream may end before the blob does.
        std::io::copy(&mut src, &mut std::io::sink()).map_err(io_err("read", blob))?;
    } else {
        std::io::copy(&mut src, &mut dst).map_err(io_err("copy", blob))?;
    }
    let got = format!("sha256:{}", hex::encode(src.h.finalize()));
    if got != digest || (size != 0 && src.n != size) {
        return Err(bad(blob, format!("layer {digest} does not match its digest or size")));
    }
    Ok(())
}
