//! Flags (raw, as typed); `run.rs` turns them into validated settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build and CI engine for code nobody trusts: every step in a fresh sandbox."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a workflow file: every job in Kahn order, every step in a sandbox.
    Run(RunArgs),
    /// Build a repository with no configuration: fetch, install, build,
    /// package; the output is stored, scanned and signed.
    Build(BuildArgs),
    /// Print what it takes to rebuild a recorded build by hand.
    Reproduce(LogsArgs),
    /// Check a workflow file without running anything.
    Validate(ValidateArgs),
    /// List recorded builds.
    Builds(BuildsArgs),
    /// Print a recorded build's log.
    Logs(LogsArgs),
    /// Print a recorded build's audit events (secrets handed out, egress refused).
    Audit(LogsArgs),
    /// List the artifacts a build stored.
    Artifacts(LogsArgs),
    /// Work with one stored artifact.
    #[command(subcommand)]
    Artifact(ArtifactCommand),
    /// Check an artifact's signed provenance: signature, subject digest and
    /// every file's digest.
    Verify(VerifyArgs),
    /// Print the public key that signs this state dir's provenance.
    Key(StateOnly),
    /// Delete what the retention policy does not keep (see --dry-run).
    Gc(GcArgs),
    /// Build, list, inspect and remove the images jobs run on.
    #[command(subcommand)]
    Image(crate::image::ImageCommand),
    /// Measure step start latency per tier and the scheduler's overhead.
    Bench(BenchArgs),
    /// Check that this host can run kiln's sandboxes (runtimes, cgroups,
    /// root, loop devices, overlayfs, sockets, disk) and say what to fix.
    Doctor(crate::doctor::DoctorArgs),

    // `kiln serve` and its clients (serve.rs, client.rs, serve_bench.rs).
    /// Run the multi-tenant control plane: API, queue, in-process workers.
    Serve(crate::serve::ServeArgs),
    /// Run builds for a server: lease, heartbeat, stream logs, report.
    Worker(crate::serve::WorkerArgs),
    /// Administer a server's tenants and tokens (on the server's host).
    #[command(subcommand)]
    Admin(crate::serve::AdminCommand),
    /// Submit a workflow to a server (`KILN_SERVER`, `KILN_TOKEN`).
    Submit(crate::client::SubmitArgs),
    /// Show a build of a server.
    Status(crate::client::BuildArgs),
    /// Cancel a build of a server.
    Cancel(crate::client::BuildArgs),
    /// Load-test `kiln serve`: many small builds from several tenants.
    BenchServe(crate::serve_bench::BenchServeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    /// gVisor (runsc): a user-space kernel between steps and the host.
    Gvisor,
    /// runc: namespaces, seccomp and cgroups on the shared host kernel.
    Container,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// Where builds are recorded (SQLite) and workspaces live.
    #[arg(long, env = "KILN_STATE_DIR", default_value = ".kiln")]
    pub state_dir: PathBuf,
    /// The content store (artifacts, caches, sources) as an object_store
    /// URL: `file:///path`, `s3://BUCKET/PREFIX`, `az://CONTAINER/PREFIX`,
    /// `gs://BUCKET/PREFIX` (settings from the backend's usual environment
    /// variables: AWS_*, AZURE_*, GOOGLE_*; see docs/store.md).
    /// Default: `store/` under the state dir.
    #[arg(long, env = "KILN_STORE")]
    pub store: Option<String>,
    /// Where images are kept (an object_store URL), when not in the
    /// content store: one image store can serve several state dirs.
    #[arg(long, env = "KILN_IMAGE_STORE")]
    pub image_store: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The workflow file (default: the only file in .github/workflows/).
    pub workflow: Option<PathBuf>,
    /// Directory `actions/checkout` copies into the workspace (default: the
    /// repository the workflow file is in).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Run only this job (its key under `jobs:`) and the jobs it needs.
    /// Repeatable.
    #[arg(long = "job", value_name = "ID")]
    pub jobs: Vec<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// How builds run, for `kiln run` and `kiln build`.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Isolation tier for every job; a job may ask for a stronger one.
    #[arg(long, value_enum, default_value = "gvisor", env = "KILN_ISOLATION")]
    pub isolation: IsolationArg,
    /// Jobs running at once (default: number of CPUs).
    #[arg(long)]
    pub max_parallel: Option<usize>,
    /// JSON lines on stdout: every log entry, then a summary object.
    #[arg(long)]
    pub json: bool,
    /// A secret: `NAME=VALUE`, or `NAME` to take the value from the
    /// environment. Repeatable. Steps see it only where a binding allows.
    #[arg(long = "secret", value_name = "NAME[=VALUE]")]
    pub secrets: Vec<String>,
    /// Open a private `IP:PORT` to steps that have network (a registry mirror
    /// on this network). Everything private stays refused otherwise.
    #[arg(long = "allow-private", value_name = "IP:PORT")]
    pub allow_private: Vec<std::net::SocketAddr>,
    /// Mark the build untrusted (e.g. a pull request from a fork): it reads
    /// the trusted default branch's cache but writes only its own scope,
    /// which trusted builds never read.
    #[arg(long)]
    pub untrusted: bool,
    /// The branch whose (trusted) cache every build may read.
    #[arg(long, default_value = "main")]
    pub default_branch: String,
    /// Egress bytes (in + out) a build may move through the proxy.
    #[arg(long, value_name = "BYTES", default_value = "2Gi")]
    pub egress_cap: String,
    /// Secrets from a dotenv file (`NAME=value`, quotes, multi-line values).
    #[arg(long, value_name = "FILE")]
    pub secrets_file: Option<PathBuf>,
    /// The network of steps whose workflow names none (a `kiln:` setting
    /// in the file wins): `none` (loopback only) or `registries` (the
    /// package registries, through kiln's proxy).
    #[arg(long, value_enum, default_value = "none", env = "KILN_NETWORK")]
    pub network: NetworkArg,
    #[command(flatten)]
    pub runners: RunnerArgs,
    /// Run every step in a sandbox of its own instead of one sandbox per
    /// phase of a job (nothing a step starts outlives it; slower).
    #[arg(long)]
    pub sandbox_per_step: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

/// What runners here answer to, for workflows written for GitHub's.
#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// A `runs-on` label the runners here also answer to (besides GitHub's
    /// Linux labels: ubuntu-latest, ubuntu-*.04, linux, self-hosted, x64);
    /// `*` matches anything. Repeatable. A job whose labels are not all
    /// known is skipped with the label named.
    #[arg(long = "runner-label", value_name = "LABEL")]
    pub runner_labels: Vec<String>,
    /// Coverage/report uploaders (codecov, coveralls, ...): `skip` the step
    /// with a notice, or `refuse` the job.
    #[arg(long, value_enum, default_value = "skip")]
    pub uploaders: UploadersArg,
    /// `PATTERN=IMAGE`: jobs whose `runs-on` has a label matching PATTERN
    /// run on image IMAGE (see `kiln image`). Repeatable, first match wins,
    /// before the default `ubuntu-*=kiln/runner`.
    #[arg(long = "image", value_name = "PATTERN=IMAGE")]
    pub images: Vec<String>,
    /// Run every job on the host's /usr, whatever images the store has.
    #[arg(long)]
    pub no_images: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    None,
    Registries,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UploadersArg {
    Skip,
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubmodulesArg {
    None,
    Shallow,
    Recursive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LfsArg {
    Skip,
    Fetch,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// An https git URL, or a local directory (a git repository is cloned
    /// without hard links; any other directory is copied).
    pub source: String,
    /// Branch, tag or commit to build (default: the remote's HEAD).
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// History depth to fetch.
    #[arg(long, default_value_t = 1, conflicts_with = "full")]
    pub depth: u32,
    /// Fetch the whole history.
    #[arg(long)]
    pub full: bool,
    /// Check out only these paths (cone mode). Repeatable.
    #[arg(long, value_name = "PATH")]
    pub sparse: Vec<String>,
    #[arg(long, value_enum, default_value = "none")]
    pub submodules: SubmodulesArg,
    /// Git LFS objects: left as pointers (skip) or fetched with git-lfs.
    #[arg(long, value_enum, default_value = "skip")]
    pub lfs: LfsArg,
    /// Install dependencies without their lifecycle scripts.
    #[arg(long)]
    pub ignore_scripts: bool,
    /// A package registry (mirror) the install may use besides the public
    /// ones, as KIND=URL with KIND npm, pypi or go
    /// (`npm=http://10.0.0.5:4873/`). Private addresses also need
    /// --allow-private. Repeatable.
    #[arg(long = "registry", value_name = "KIND=URL")]
    pub registries: Vec<String>,
    /// POST the result to this deployment webhook (signed, retried).
    #[arg(long, value_name = "URL")]
    pub notify: Option<String>,
    /// The webhook's HMAC key (default: `notify.key` in the state dir, made
    /// on first use).
    #[arg(long, value_name = "FILE", env = "KILN_NOTIFY_KEY_FILE")]
    pub notify_key_file: Option<PathBuf>,
    /// A ClamAV daemon socket every artifact is also scanned with.
    #[arg(long, value_name = "SOCKET")]
    pub clamd: Option<PathBuf>,
    /// How long to wait for an unreachable scanner before failing.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub scan_wait: u64,
    /// Retries after an infrastructure failure (never after a user failure).
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Print the pipeline kiln would run, as a workflow file, and exit.
    #[arg(long)]
    pub print_workflow: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    pub workflow: PathBuf,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runners: RunnerArgs,
}

#[derive(Debug, Args)]
pub struct BuildsArgs {
    #[arg(long)]
    pub json: bool,
    /// How many builds to list.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Build id, a unique prefix of one, or `latest`.
    pub build: String,
    #[arg(long)]
    pub json: bool,
    /// Follow the live log until the build ends (`kiln logs` of a server,
    /// with `KILN_SERVER` set).
    #[arg(short, long)]
    pub follow: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

/// A gVisor platform (`runsc --platform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlatformArg {
    Systrap,
    Ptrace,
    Kvm,
}

impl From<PlatformArg> for kiln_sandbox::GvisorPlatform {
    fn from(p: PlatformArg) -> Self {
        match p {
            PlatformArg::Systrap => kiln_sandbox::GvisorPlatform::Systrap,
            PlatformArg::Ptrace => kiln_sandbox::GvisorPlatform::Ptrace,
            PlatformArg::Kvm => kiln_sandbox::GvisorPlatform::Kvm,
        }
    }
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Steps measured per tier.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Jobs in the scheduler-overhead graph.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Tiers to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["gvisor", "container"])]
    pub tiers: Vec<IsolationArg>,
    /// Write the results as Markdown to this file as well.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Also measure jobs on this image (see `kiln image`) against the
    /// host's /usr, and extracting it.
    #[arg(long)]
    pub image: Option<String>,
    /// Measure only the scheduler's overhead (no sandboxes, no root);
    /// prints its rows and writes nothing.
    #[arg(long)]
    pub scheduler_only: bool,
    /// Measure only where a step's time goes inside a sandbox, per tier
    /// and gVisor platform: system calls, file lookups, forks, page faults,
    /// Node's start (section `profile` of --markdown).
    #[arg(long)]
    pub profile: bool,
    /// Rounds of --profile (after one warm-up round).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// gVisor platforms --profile measures.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["systrap", "ptrace"])]
    pub platforms: Vec<PlatformArg>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct StateOnly {
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Show what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Artifacts kept per branch (newest first; pinned ones always).
    #[arg(long, default_value_t = 10)]
    pub keep: usize,
    /// Cache entries kept, most recently used first, within this size.
    #[arg(long, default_value = "10Gi")]
    pub cache_max: String,
    /// Blobs younger than this many seconds are kept whatever refers to them
    /// (they may belong to a write still in flight).
    #[arg(long, default_value_t = 3600)]
    pub grace: u64,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The artifact id (`sha256:...`).
    pub id: String,
    /// Public key (hex) to verify with (default: this state dir's key).
    #[arg(long)]
    pub key: Option<String>,
    /// A provenance envelope file (default: the one recorded with the artifact).
    #[arg(long)]
    pub provenance: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Print an artifact's signed provenance (a DSSE envelope, JSON).
    Provenance {
        id: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Restore an artifact's files (verified against their digests) into DIR.
    Get {
        /// The artifact id (`sha256:...`).
        id: String,
        /// A directory that does not exist yet.
        #[arg(long)]
        out: PathBuf,
        /// Restore it even though the artifact scan quarantined it (to
        /// inspect it; it must not be deployed).
        #[arg(long)]
        quarantined: bool,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every `--registry` example the help shows is one the parser takes.
    #[test]
    fn bug_build_help_showed_a_registry_example_the_parser_refused() {
        let mut cmd = Cli::command();
        let build = cmd.find_subcommand_mut("build").expect("a build command");
        let help = build.render_long_help().to_string();
        let text = help.split("--registry").nth(1).expect("--registry in the help");
        // Up to the next option.
        let text: String = text
            .lines()
            .skip(1)
            .take_while(|l| !l.trim_start().starts_with('-'))
            .collect::<Vec<_>>()
            .join(" ");
        let examples: Vec<&str> = text.split('`').skip(1).step_by(2).collect();
        assert!(!examples.is_empty(), "no example in: {text}");
        for e in examples {
            kiln_build::pipeline::Registry::parse(e).unwrap_or_else(|err| panic!("help example {e}: {err}"));
        }
    }
}
