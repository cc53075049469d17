//! Building images from Debian packages with `mmdebstrap`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln_store::{check_image_name, Digest, ImageRef, Store};

use crate::error::{io_err, ImageError, Result};
use crate::manifest::{parse_package_list, ImageManifest, Layer, Recipe, Source, DEFAULT_EPOCH, SCHEMA};

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Scratch space for the root filesystem tar (about the image's size).
    pub work_dir: PathBuf,
    /// File times in the image; `SOURCE_DATE_EPOCH` or [`DEFAULT_EPOCH`].
    pub source_date_epoch: u64,
    /// Build even when the store holds this recipe already.
    pub rebuild: bool,
}

impl BuildOptions {
    /// Options with the epoch taken from `SOURCE_DATE_EPOCH` when it is a
    /// number.
    pub fn new(work_dir: impl Into<PathBuf>) -> BuildOptions {
        let epoch = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.trim().parse().ok());
        BuildOptions {
            work_dir: work_dir.into(),
            source_date_epoch: epoch.unwrap_or(DEFAULT_EPOCH),
            rebuild: false,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The image's identity.
    pub digest: Digest,
    pub manifest: ImageManifest,
    /// False when the store already held an image of this recipe.
    pub built: bool,
    pub elapsed: Duration,
}

fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Looks for an image of `recipe` among the store's references: `name`
/// first, then any other name built from the same recipe and epoch.
async fn existing(
    store: &Store,
    name: &str,
    recipe: &Recipe,
    epoch: u64,
) -> Result<Option<(Digest, ImageManifest)>> {
    let want = recipe.digest();
    let mut refs = store.list_image_refs().await?;
    refs.sort_by_key(|r| r.name != name);
    for r in refs {
        let bytes = match store.get_bytes(&r.manifest, None).await {
            Ok(b) => b,
            Err(_) => continue,
        };
        let Ok(m) = ImageManifest::parse(&r.manifest, &bytes) else { continue };
        let Source::Debian { recipe_digest, source_date_epoch, .. } = &m.source else { continue };
        if *recipe_digest == want && *source_date_epoch == epoch {
            return Ok(Some((r.manifest, m)));
        }
    }
    Ok(None)
}

async fn point(store: &Store, name: &str, digest: Digest, m: &ImageManifest) -> Result<()> {
    let created_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let blobs = m.layers.iter().map(|l| l.digest).collect();
    store.put_image_ref(&ImageRef { name: name.into(), manifest: digest, blobs, created_at }).await?;
    Ok(())
}

/// Builds (or finds) the image of `recipe` and names it `name`.
pub async fn build_debian(
    store: &Store,
    name: &str,
    recipe: &Recipe,
    opts: &BuildOptions,
) -> Result<BuildReport> {
    let start = Instant::now();
    check_image_name(name)?;
    if !opts.rebuild {
        if let Some((digest, manifest)) = existing(store, name, recipe, opts.source_date_epoch).await? {
            point(store, name, digest, &manifest).await?;
            return Ok(BuildReport { digest, manifest, built: false, elapsed: start.elapsed() });
        }
    }
    let tool = find_tool("mmdebstrap").ok_or(ImageError::MissingTool {
        tool: "mmdebstrap",
        hint: "install it with `apt-get install mmdebstrap` (scripts/install.sh does)",
    })?;
    std::fs::create_dir_all(&opts.work_dir).map_err(io_err("create", &opts.work_dir))?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&opts.work_dir)
        .map_err(io_err("create", &opts.work_dir))?;
    let result = build_in(&tool, work.path(), store, name, recipe, opts, start).await;
    drop(work);
    result
}

async fn build_in(
    tool: &Path,
    work: &Path,
    store: &Store,
    name: &str,
    recipe: &Recipe,
    opts: &BuildOptions,
    start: Instant,
) -> Result<BuildReport> {
    let tar = work.join("rootfs.tar");
    let pkgs = work.join("packages.txt");
    let log = work.join("mmdebstrap.log");
    // The package list is read from the image's own dpkg database with the
    // host's dpkg-query (no program of the image runs on the host).
    let hook = format!(
        "dpkg-query --admindir=\"$1/var/lib/dpkg\" -W -f '${{Package}}\\t${{Version}}\\n' > '{}'",
        pkgs.display()
    );
    let mut cmd = tokio::process::Command::new(tool);
    cmd.arg("--variant=apt")
        .arg("--format=tar")
        .arg("--skip=output/dev")
        .arg("--aptopt=Acquire::Languages \"none\"")
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .arg(format!("--customize-hook={hook}"));
    if !recipe.packages.is_empty() {
        cmd.arg(format!("--include={}", recipe.packages.join(",")));
    }
    cmd.arg(&recipe.suite).arg(&tar).arg(&recipe.mirror);
    cmd.env("SOURCE_DATE_EPOCH", opts.source_date_epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(io_err("create", &log))?)
        .kill_on_drop(true);
    let status = cmd.status().await.map_err(io_err("run", tool))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().filter(|l| !l.trim().is_empty()).take(6).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(ImageError::Tool { tool: "mmdebstrap", status: status.to_string(), tail });
    }
    let packages = parse_package_list(&std::fs::read_to_string(&pkgs).map_err(io_err("read", &pkgs))?);
    if packages.is_empty() {
        return Err(ImageError::Tool {
            tool: "mmdebstrap",
            status: "no package list".into(),
            tail: "the image's dpkg database lists no package".into(),
        });
    }
    let out = store.put_file(&tar).await?;
    let manifest = ImageManifest {
        schema: SCHEMA.into(),
        source: Source::Debian {
            recipe: recipe.clone(),
            recipe_digest: recipe.digest(),
            source_date_epoch: opts.source_date_epoch,
        },
        layers: vec![Layer { digest: out.digest, size: out.size }],
        packages,
    };
    let digest = store.put_bytes(manifest.to_json()).await?.digest;
    point(store, name, digest, &manifest).await?;
    Ok(BuildReport { digest, manifest, built: true, elapsed: start.elapsed() })
}
