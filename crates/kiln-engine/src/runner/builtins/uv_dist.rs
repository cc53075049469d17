//! uv from PyPI, for `astral-sh/setup-uv`.
//!
//! PyPI publishes uv as wheels whose `*.data/scripts/` hold the `uv` and
//! `uvx` executables. kiln takes the `musllinux` x86-64 wheel (statically
//! linked: it runs on any image), checks it against PyPI's SHA-256, keeps
//! it in the store as a tool (`tools/uv/VERSION`, `_tools` namespace) and
//! unpacks the two executables once per state dir, root-owned; jobs get them
//! read-only like the Node.js builds (see [`super::node_dist`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// Where requests go unless `KILN_PYPI` says otherwise.
const PYPI: &str = "https://pypi.org";

/// Largest wheel accepted (uv's is ~20 MB).
const MAX_WHEEL: u64 = 256 << 20;

/// The largest executable taken out of a wheel.
const MAX_BINARY: u64 = 256 << 20;

/// One published wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wheel {
    pub version: semver::Version,
    pub url: String,
    pub sha256: String,
    pub filename: String,
}

fn pypi() -> String {
    std::env::var("KILN_PYPI").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| PYPI.to_string())
}

/// The statically linked x86-64 Linux wheel of every release, oldest
/// first. Relative URLs (a mirror's) are resolved against `base`.
pub(crate) fn wheels(json: &[u8], base: &str) -> Result<Vec<Wheel>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("PyPI's answer is not JSON: {e}"))?;
    let base = url::Url::parse(base).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (ver, files) in v["releases"].as_object().into_iter().flatten() {
        let Ok(version) = semver::Version::parse(ver) else { continue };
        if !version.pre.is_empty() {
            continue;
        }
        for f in files.as_array().into_iter().flatten() {
            let name = f["filename"].as_str().unwrap_or("");
            if !(name.ends_with(".whl") && name.contains("musllinux") && name.contains("x86_64")) {
                continue;
            }
            let (Some(u), Some(sha)) = (f["url"].as_str(), f["digests"]["sha256"].as_str()) else { continue };
            if f["yanked"].as_bool() == Some(true) || sha.len() != 64 {
                continue;
            }
            let Ok(url) = base.join(u) else { continue };
            if url.scheme() != "https" {
                continue;
            }
            out.push(Wheel {
                version: version.clone(),
                url: url.to_string(),
                sha256: sha.to_string(),
                filename: name.into(),
            });
            break;
        }
    }
    out.sort_by(|a, b| a.version.cmp(&b.version));
    Ok(out)
}

/// The newest wheel matching `spec` (`latest`, `0.13.9`, `0.13`, `>=0.12`).
pub(crate) fn choose<'a>(wheels: &'a [Wheel], spec: &str) -> Result<Option<&'a Wheel>, String> {
    let s = spec.trim();
    if matches!(s, "" | "latest" | "*" | "x") {
        return Ok(wheels.last());
    }
    let reqs = super::node_dist::npm_range(s)?;
    Ok(wheels.iter().rev().find(|w| reqs.iter().any(|r| r.matches(&w.version))))
}

/// PyPI's list of uv releases.
pub(crate) async fn list(scratch: &Path) -> Result<Vec<Wheel>, String> {
    let url = format!("{}/pypi/uv/json", pypi().trim_end_matches('/'));
    let file = scratch.join("uv.json");
    super::node_dist::fetch(&url, &file, 64 << 20).await?;
    let bytes = std::fs::read(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    wheels(&bytes, &url)
}

fn sha256_hex(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Takes `uv` and `uvx` out of the wheel into `bin` (0755). Only those
/// two names are read; nothing else of the archive touches the disk.
fn unpack(wheel: &Path, version: &str, bin: &Path) -> Result<(), String> {
    let f = std::fs::File::open(wheel).map_err(|e| e.to_string())?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| format!("the wheel is not a zip archive: {e}"))?;
    std::fs::create_dir_all(bin).map_err(|e| e.to_string())?;
    for exe in ["uv", "uvx"] {
        let name = format!("uv-{version}.data/scripts/{exe}");
        let mut entry = z.by_name(&name).map_err(|_| format!("the wheel holds no {name}"))?;
        if entry.size() > MAX_BINARY {
            return Err(format!("{name} is larger than {MAX_BINARY} bytes"));
        }
        let out = bin.join(exe);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&out)
            .map_err(|e| format!("creating {}: {e}", out.display()))?;
        let n =
            std::io::copy(&mut (&mut entry).take(MAX_BINARY + 1), &mut file).map_err(|e| e.to_string())?;
        if n > MAX_BINARY {
            return Err(format!("{name} is larger than {MAX_BINARY} bytes"));
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The directory (with `bin/uv`, `bin/uvx`) of `wheel`'s release under
/// `tools_dir`: from the store when it holds it, else downloaded,
/// verified and stored. The flag says whether it was downloaded.
pub(crate) async fn provide(
    store: &kiln_store::Store,
    wheel: &Wheel,
    tools_dir: &Path,
    scratch: &Path,
) -> Result<(PathBuf, bool, kiln_store::Digest), String> {
    let version = wheel.version.to_string();
    let dir = tools_dir.join(format!("uv-{version}"));
    let name = format!("tools/uv/{version}");
    let stored = store.image_ref(&name).await.map_err(|e| e.to_string())?;
    if let (true, Some(r)) = (dir.join("bin/uv").is_file(), &stored) {
        return Ok((dir, false, r.manifest));
    }
    std::fs::create_dir_all(tools_dir).map_err(|e| e.to_string())?;
    let file = scratch.join(&wheel.filename);
    let mut downloaded = false;
    match stored {
        Some(r) => {
            let mut f = std::fs::File::create(&file).map_err(|e| e.to_string())?;
            store.copy_blob_to(&r.manifest, None, &mut f).await.map_err(|e| e.to_string())?;
        }
        None => {
            super::node_dist::fetch(&wheel.url, &file, MAX_WHEEL).await?;
            downloaded = true;
        }
    }
    if sha256_hex(&file).map_err(|e| e.to_string())? != wheel.sha256 {
        return Err(format!("uv {version}: the wheel does not match PyPI's SHA-256; refused"));
    }
    let digest: kiln_store::Digest =
        format!("sha256:{}", wheel.sha256).parse().map_err(|_| "PyPI's SHA-256 is malformed".to_string())?;
    if downloaded {
        super::node_dist::keep(store, &name, &file).await?;
    }
    if dir.join("bin/uv").is_file() {
        let _ = std::fs::remove_file(&file);
        return Ok((dir, downloaded, digest));
    }
    // One staging directory per call: parallel jobs may fetch the same tool.
    let staging = tools_dir.join(format!(".staging-uv-{version}-{}", uuid::Uuid::new_v4().simple()));
    let _ = std::fs::remove_dir_all(&staging);
    let (w, v, b) = (file.clone(), version.clone(), staging.join("bin"));
    let unpacked =
        tokio::task::spawn_blocking(move || unpack(&w, &v, &b)).await.map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&file);
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    super::node_dist::place(&staging, &dir, &dir.join("bin/uv"))?;
    Ok((dir, downloaded, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_wheel_of_each_release_is_found_and_chosen() {
        let doc = serde_json::json!({"releases": {
            "0.12.0": [{"filename": "uv-0.12.0-py3-none-musllinux_1_1_x86_64.whl", "url": "../../p/a.whl",
                        "digests": {"sha256": "a".repeat(64)}}],
            "0.13.9": [{"filename": "uv-0.13.9-py3-none-manylinux_2_17_x86_64.whl", "url": "https://f/m.whl",
                        "digests": {"sha256": "b".repeat(64)}},
                       {"filename": "uv-0.13.9-py3-none-musllinux_1_1_x86_64.whl", "url": "https://f/s.whl",
                        "digests": {"sha256": "c".repeat(64)}}],
            "0.14.0rc1": [{"filename": "uv-0.14.0rc1-py3-none-musllinux_1_1_x86_64.whl", "url": "https://f/r.whl",
                        "digests": {"sha256": "d".repeat(64)}}],
            "0.11.0": [{"filename": "uv-0.11.0-py3-none-musllinux_1_1_x86_64.whl", "url": "http://f/insecure.whl",
                        "digests": {"sha256": "e".repeat(64)}}]
        }});
        let w = wheels(&serde_json::to_vec(&doc).unwrap(), "https://pypi.example/pypi/uv/json").unwrap();
        assert_eq!(w.len(), 2, "pre-releases and plain-http URLs are left out: {w:?}");
        assert_eq!(w[0].url, "https://pypi.example/p/a.whl", "a mirror's relative URL is resolved");
        assert_eq!(w[1].url, "https://f/s.whl", "the static (musl) wheel");
        assert_eq!(choose(&w, "latest").unwrap().unwrap().version.to_string(), "0.13.9");
        assert_eq!(choose(&w, "0.12").unwrap().unwrap().version.to_string(), "0.12.0");
        assert_eq!(choose(&w, ">=0.13").unwrap().unwrap().version.to_string(), "0.13.9");
        assert!(choose(&w, "0.9").unwrap().is_none());
    }
}
