//! `kiln image`: the images jobs run on.

use crate::exit::Exit;
use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::StateArgs;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image from Debian packages with mmdebstrap (apt checks the
    /// archive's signatures). `kiln image build kiln/runner` builds the
    /// default image `ubuntu-*` jobs run on. The same recipe is built once.
    Build(BuildArgs),
    /// Import an OCI image layout (a directory, or the tar archive
    /// `skopeo copy ... oci-archive:FILE` or umoci makes) as image NAME
    /// (`container: NAME` runs a job on it).
    Import(ImportArgs),
    /// Pull an image from an OCI registry (the distribution API; anonymous
    /// or with the registry's token challenge) and import it as NAME
    /// (default: its repository and tag, e.g. `node:20`).
    Pull(PullArgs),
    /// List the images.
    Ls(ListArgs),
    /// Show an image: digest, source, layers and every package.
    Inspect(InspectArgs),
    /// Remove an image's name (its layers go at the next `kiln gc`).
    Rm(InspectArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The image's name (`kiln/runner`, `team/python`).
    pub name: String,
    /// Debian suite: bookworm or trixie (the newest toolchains).
    #[arg(long, default_value = kiln_image::DEFAULT_SUITE)]
    pub suite: String,
    /// Packages to install (comma-separated or repeated). Default for
    /// `kiln/runner`: what an `ubuntu-latest` job expects (git, curl, jq,
    /// build-essential, cmake, python3 with venv/pip, Node.js/npm, Rust
    /// with clippy/rustfmt, zip, xz, sudo, ...); for other names, none.
    #[arg(long, value_delimiter = ',')]
    pub packages: Vec<String>,
    /// The Debian archive.
    #[arg(long, default_value = kiln_image::DEFAULT_MIRROR)]
    pub mirror: String,
    /// Build even when the store has this recipe already.
    #[arg(long)]
    pub rebuild: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The OCI layout: a directory or a tar archive of one.
    pub source: std::path::PathBuf,
    /// The image's name (`node:20`, `team/tools`).
    pub name: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// `[registry/]repository[:tag|@sha256:...]` (`node:20` is Docker Hub's).
    pub reference: String,
    /// The image's name here (default: repository and tag, `node:20`).
    #[arg(long)]
    pub name: Option<String>,
    /// An `ip:port` the egress rules would refuse (a private or loopback
    /// registry) that this pull may reach. Repeatable.
    #[arg(long = "allow-private", value_name = "IP:PORT")]
    pub allow_private: Vec<std::net::SocketAddr>,
    /// The registry speaks plain http (only with --allow-private).
    #[arg(long)]
    pub plain_http: bool,
    /// Log in as this user (the password or token is read from stdin with
    /// --password-stdin, or from KILN_REGISTRY_PASSWORD).
    #[arg(long, env = "KILN_REGISTRY_USERNAME")]
    pub username: Option<String>,
    /// Read the password or token from stdin (its first line).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

/// The login of `kiln image pull`: never from the command line, where any
/// process could read it.
fn credentials(args: &PullArgs) -> anyhow::Result<Option<kiln_image::Credentials>> {
    let Some(username) = args.username.clone() else { return Ok(None) };
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        std::env::var("KILN_REGISTRY_PASSWORD").map_err(|_| {
            anyhow::anyhow!("--username {username}: give the password on stdin with --password-stdin, or in KILN_REGISTRY_PASSWORD")
        })?
    };
    if password.is_empty() {
        anyhow::bail!("--username {username}: the password is empty");
    }
    Ok(Some(kiln_image::Credentials { username, password }))
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image name or digest (`sha256:...`).
    pub image: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn store(state: &StateArgs) -> anyhow::Result<kiln_store::Store> {
    match &state.image_store {
        Some(url) => kiln_store::Store::open_url(url)
            .and_then(|s| s.tenant(kiln_engine::IMAGE_TENANT))
            .map_err(|e| anyhow::anyhow!("opening the image store: {e}")),
        None => crate::run::open_store_tenant(state, kiln_engine::IMAGE_TENANT),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn summary(image: &kiln_image::Image) -> serde_json::Value {
    let source = match &image.manifest.source {
        kiln_image::Source::Debian { recipe, source_date_epoch, .. } => json!({
            "type": "debian", "suite": recipe.suite, "mirror": recipe.mirror,
            "requested": recipe.packages, "source_date_epoch": source_date_epoch }),
        kiln_image::Source::Oci { reference, manifest_digest, config } => json!({
            "type": "oci", "reference": reference, "manifest_digest": manifest_digest,
            "env": config.env, "working_dir": config.working_dir, "user": config.user }),
    };
    json!({
        "name": image.name,
        "digest": image.digest.to_string(),
        "created_at": image.created_at,
        "source": source,
        "layers": image.manifest.layers.iter().map(|l| json!({"digest": l.digest.to_string(), "size": l.size})).collect::<Vec<_>>(),
        "size": image.manifest.layers.iter().map(|l| l.size).sum::<u64>(),
        "packages": image.manifest.packages.iter().map(|p| json!({"name": p.name, "version": p.version})).collect::<Vec<_>>(),
    })
}

/// Versions of the tools people look for first.
const HEADLINE: &[&str] = &["rustc", "cargo", "python3", "nodejs", "npm", "git", "gcc", "cmake"];

fn headline(m: &kiln_image::ImageManifest) -> String {
    HEADLINE.iter().filter_map(|p| m.package(p).map(|v| format!("{p} {v}"))).collect::<Vec<_>>().join(", ")
}

pub fn image(cmd: ImageCommand) -> Exit {
    let result = match cmd {
        ImageCommand::Build(args) => build(args),
        ImageCommand::Import(args) => import(args),
        ImageCommand::Pull(args) => pull(args),
        ImageCommand::Ls(args) => list(args),
        ImageCommand::Inspect(args) => inspect(args),
        ImageCommand::Rm(args) => remove(args),
    };
    crate::run::exit_status(result)
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let packages: Vec<String> = if args.packages.is_empty() && args.name == kiln_image::DEFAULT_IMAGE {
        kiln_image::RUNNER_PACKAGES.iter().map(|s| s.to_string()).collect()
    } else {
        args.packages.iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
    };
    let recipe = kiln_image::Recipe::new(&args.suite, &packages, &args.mirror)?;
    let store = store(&args.state)?;
    std::fs::create_dir_all(&args.state.state_dir)?;
    let mut opts = kiln_image::BuildOptions::new(args.state.state_dir.join("tmp"));
    opts.rebuild = args.rebuild;
    if !args.json {
        eprintln!(
            "building image {} from Debian {} ({} packages) with mmdebstrap...",
            args.name,
            recipe.suite,
            recipe.packages.len()
        );
    }
    let rt = runtime()?;
    let report = rt.block_on(kiln_image::build_debian(&store, &args.name, &recipe, &opts))?;
    // Extract it now, so the first job on it does not wait for it.
    let image = rt.block_on(kiln_image::resolve(&store, &args.name))?;
    let dir = std::fs::canonicalize(&args.state.state_dir)?.join("images");
    rt.block_on(kiln_image::materialize(&store, &image, &dir))?;
    if args.json {
        let mut s = summary(&image);
        s["built"] = json!(report.built);
        s["seconds"] = json!(report.elapsed.as_secs_f64());
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let verb = if report.built { "built" } else { "already built (same recipe)" };
    println!("{} {verb}: {}", args.name, report.digest);
    println!("  {} packages; {}", image.manifest.packages.len(), headline(&image.manifest));
    Ok(())
}

fn import(args: ImportArgs) -> anyhow::Result<()> {
    let store = store(&args.state)?;
    std::fs::create_dir_all(&args.state.state_dir)?;
    let scratch = std::fs::canonicalize(&args.state.state_dir)?.join("tmp");
    let rt = runtime()?;
    let dir = std::fs::canonicalize(&args.state.state_dir)?.join("images");
    let reference = args.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (digest, _) =
        rt.block_on(kiln_image::import_oci(&store, &args.source, &args.name, &reference, &scratch, &dir))?;
    let image = rt.block_on(kiln_image::resolve(&store, &args.name))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary(&image))?);
    } else {
        println!("{} imported: {digest} ({} layers)", args.name, image.manifest.layers.len());
    }
    Ok(())
}

fn pull(args: PullArgs) -> anyhow::Result<()> {
    if args.plain_http && args.allow_private.is_empty() {
        anyhow::bail!("--plain-http is only for a registry opened with --allow-private IP:PORT");
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => {
            // `node:20`, `team/img:1` for `127.0.0.1:5000/team/img:1`.
            let r = kiln_image::Reference::parse(&args.reference)?;
            let repo = r.repository.strip_prefix("library/").unwrap_or(&r.repository).to_string();
            if r.reference.starts_with("sha256:") {
                repo
            } else {
                format!("{repo}:{}", r.reference)
            }
        }
    };
    let store = store(&args.state)?;
    std::fs::create_dir_all(&args.state.state_dir)?;
    let state = std::fs::canonicalize(&args.state.state_dir)?;
    let opts = kiln_image::PullOptions {
        open: args.allow_private.clone(),
        plain_http: args.plain_http,
        scratch: state.join("tmp"),
        images_dir: state.join("images"),
        credentials: credentials(&args)?,
    };
    let rt = runtime()?;
    let (digest, _) = rt.block_on(kiln_image::pull(&store, &args.reference, &name, &opts))?;
    let image = rt.block_on(kiln_image::resolve(&store, &name))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary(&image))?);
    } else {
        println!("{name} pulled: {digest} ({} layers)", image.manifest.layers.len());
    }
    Ok(())
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let store = store(&args.state)?;
    let images = runtime()?.block_on(kiln_image::list(&store))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&images.iter().map(summary).collect::<Vec<_>>())?);
        return Ok(());
    }
    if images.is_empty() {
        println!("no images (build the default one with `kiln image build {}`)", kiln_image::DEFAULT_IMAGE);
        return Ok(());
    }
    println!("{:<24} {:<20} {:>10}  {:<20} CREATED", "NAME", "DIGEST", "SIZE", "SOURCE");
    for i in &images {
        let size: u64 = i.manifest.layers.iter().map(|l| l.size).sum();
        let digest = i.digest.to_string();
        println!(
            "{:<24} {:<20} {:>9}M  {:<20} {}",
            i.name,
            &digest[..digest.len().min(19)],
            size >> 20,
            i.manifest.source.describe(),
            i.created_at
        );
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let store = store(&args.state)?;
    let image = runtime()?.block_on(kiln_image::resolve(&store, &args.image))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary(&image))?);
        return Ok(());
    }
    println!("name:    {}", image.name);
    println!("digest:  {}", image.digest);
    match &image.manifest.source {
        kiln_image::Source::Debian { recipe, source_date_epoch, .. } => println!(
            "source:  debian {} from {} (SOURCE_DATE_EPOCH={source_date_epoch})",
            recipe.suite, recipe.mirror
        ),
        kiln_image::Source::Oci { reference, manifest_digest, config } => {
            println!("source:  OCI layout {reference} (manifest {manifest_digest})");
            for e in &config.env {
                println!("env:     {e}");
            }
        }
    }
    for l in &image.manifest.layers {
        println!("layer:   {} ({} bytes)", l.digest, l.size);
    }
    println!("tools:   {}", headline(&image.manifest));
    println!("packages ({}):", image.manifest.packages.len());
    for p in &image.manifest.packages {
        println!("  {} {}", p.name, p.version);
    }
    Ok(())
}

fn remove(args: InspectArgs) -> anyhow::Result<()> {
    let store = store(&args.state)?;
    let dir = args.state.state_dir.join("images");
    let removed = runtime()?.block_on(kiln_image::remove(&store, &args.image, Some(&dir)))?;
    if !removed {
        return Err(anyhow!("no image `{}` here (see `kiln image ls`)", args.image));
    }
    println!("removed {} (its layers go at the next `kiln gc`)", args.image);
    Ok(())
}
