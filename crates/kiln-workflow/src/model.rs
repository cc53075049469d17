//! The typed workflow: what a file says, after validation, before expansion.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::diagnostic::Location;
use crate::expr::{Expr, Template};

/// A workflow file as kiln understands it.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: Option<String>,
    /// Top-level `env`, in file order.
    pub env: Vec<(String, Template)>,
    pub defaults: RunDefaults,
    /// Jobs in file order. Shared: every planned job (each matrix leg)
    /// points at its spec instead of holding a copy.
    pub jobs: Vec<Arc<JobSpec>>,
    /// Top-level `kiln:` (network and secret bindings for every job).
    pub kiln: KilnStepSettings,
}

/// `defaults.run` at workflow or job level.
#[derive(Debug, Clone, Default)]
pub struct RunDefaults {
    pub shell: Option<ShellSpec>,
    pub working_directory: Option<String>,
}

/// The shell a `run` step runs with (GitHub's `shell:` and its templates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shell {
    /// No `shell:` anywhere: GitHub's `bash -e {0}` (no `pipefail`).
    Default,
    /// `shell: bash`: `bash --noprofile --norc -eo pipefail {0}`.
    Bash,
    /// `sh -e {0}`.
    Sh,
    /// `python {0}`.
    Python,
    /// A custom template such as `bash -eo pipefail -l {0}`: its words, one
    /// of which contains `{0}` (the script's path).
    Custom(Vec<String>),
}

/// Why a `shell:` value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellError {
    /// Not a shell at all (a typo, an empty template): an error in the file.
    Invalid(String),
    /// A real shell that kiln's runners do not have (`pwsh`, `cmd`): the
    /// job is refused, not the file.
    Unavailable(String),
}

impl Shell {
    /// Parses a `shell:` value as GitHub does: a known name, or a template
    /// with `{0}` where the script's path goes.
    pub fn parse(text: &str) -> Result<Shell, ShellError> {
        let t = text.trim();
        match t {
            "bash" => return Ok(Shell::Bash),
            "sh" => return Ok(Shell::Sh),
            "python" => return Ok(Shell::Python),
            "pwsh" | "powershell" | "cmd" => {
                return Err(ShellError::Unavailable(format!(
                    "shell `{t}` is not available on kiln's Linux runners"
                )))
            }
            _ => {}
        }
        let words: Vec<String> = t.split_whitespace().map(str::to_string).collect();
        if !t.contains("{0}") {
            return Err(ShellError::Invalid(format!(
                "unsupported shell `{t}`: use bash, sh, python, or a command with `{{0}}` for the script (e.g. `bash -eo pipefail {{0}}`)"
            )));
        }
        let program = words[0].as_str();
        if program.contains("{0}") {
            return Err(ShellError::Invalid(format!(
                "shell `{t}`: the first word must be the program, not `{{0}}`"
            )));
        }
        let base = program.rsplit('/').next().unwrap_or(program);
        if matches!(base, "pwsh" | "powershell" | "cmd") {
            return Err(ShellError::Unavailable(format!(
                "shell `{t}` is not available on kiln's Linux runners"
            )));
        }
        Ok(Shell::Custom(words))
    }

    /// The argv that runs a script file at `script` (a path inside the sandbox).
    pub fn argv(&self, script: &str) -> Vec<String> {
        let v: &[&str] = match self {
            Shell::Default => &["bash", "-e"],
            Shell::Bash => &["bash", "--noprofile", "--norc", "-eo", "pipefail"],
            Shell::Sh => &["sh", "-e"],
            Shell::Python => &["python3"],
            Shell::Custom(words) => {
                return words
                    .iter()
                    .enumerate()
                    .map(|(i, w)| match (i, w.as_str()) {
                        // `python {0}` is the `python` shell written out;
                        // Debian's interpreter is `python3` only.
                        (0, "python") => "python3".to_string(),
                        _ => w.replace("{0}", script),
                    })
                    .collect();
            }
        };
        v.iter().map(|s| s.to_string()).chain([script.to_string()]).collect()
    }

    /// The file extension GitHub gives the script for this shell.
    pub fn extension(&self) -> &'static str {
        if self.program() == "python" || self.program().starts_with("python3") {
            "py"
        } else {
            "sh"
        }
    }

    /// The program's base name (`bash`, `sh`, `python3`, ...).
    pub fn program(&self) -> &str {
        match self {
            Shell::Default | Shell::Bash => "bash",
            Shell::Sh => "sh",
            Shell::Python => "python",
            Shell::Custom(words) => words[0].rsplit('/').next().unwrap_or(&words[0]),
        }
    }

    /// True when bash runs the script (it then reads kiln's `BASH_ENV`).
    pub fn is_bash(&self) -> bool {
        self.program() == "bash"
    }
}

/// A `shell:` as written: fixed, or an expression decided when the step runs.
#[derive(Debug, Clone)]
pub enum ShellSpec {
    Fixed(Shell),
    Expr(Template),
    /// A shell kiln's runners do not have: refuses the jobs whose steps
    /// would run with it.
    Unavailable(Refusal),
}

/// Something in a job kiln cannot run: the job ends `skipped` with this
/// reason (and its dependents follow GitHub's rules); the rest of the file runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub location: Location,
    pub reason: String,
}

/// `continue-on-error`: a literal or an expression (GitHub allows
/// `${{ matrix.experimental }}`).
#[derive(Debug, Clone)]
pub enum BoolOrExpr {
    Literal(bool),
    Expr(Template),
}

/// The isolation tier a job asks for (`kiln.isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationTier {
    /// gVisor (`runsc`), the default.
    Gvisor,
    /// A plain container runtime (`runc`): shared kernel, faster.
    Container,
}

/// What a step is for: decides which secrets it may see (and, for zero-config
/// builds, which network it gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    SourceFetch,
    DependencyInstall,
    Build,
    ArtifactUpload,
    Deploy,
}

impl Phase {
    pub const ALL: [Phase; 5] =
        [Phase::SourceFetch, Phase::DependencyInstall, Phase::Build, Phase::ArtifactUpload, Phase::Deploy];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::SourceFetch => "source-fetch",
            Phase::DependencyInstall => "dependency-install",
            Phase::Build => "build",
            Phase::ArtifactUpload => "artifact-upload",
            Phase::Deploy => "deploy",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// A step's network: none (loopback only), or egress through kiln's proxy to
/// the listed hosts (`registry.npmjs.org`, `*.pythonhosted.org:443`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkSpec {
    None,
    Allow(Vec<String>),
    /// The package registries (the egress proxy's registry list, plus the
    /// registries the operator added), and these hosts.
    Registries(Vec<String>),
}

/// How a secret reaches a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretAs {
    /// Only through `${{ secrets.NAME }}` in the step's `env:` values.
    Env,
    /// As `/run/secrets/NAME` (mode 0400) on a tmpfs.
    File,
}

/// A secret bound to phases (workflow/job level) or to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretBinding {
    pub name: String,
    /// Phases whose steps may see it; empty for a step-level binding.
    pub phases: Vec<Phase>,
    pub delivery: SecretAs,
    pub location: Location,
}

/// kiln's own per-job settings, under the `kiln:` key (GitHub does not use it).
/// `None` means "the engine's default".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KilnJobSettings {
    pub isolation: Option<IsolationTier>,
    /// Memory limit in bytes (`memory: 512Mi`, `2G`, `1073741824`).
    pub memory_bytes: Option<u64>,
    /// Process/thread count limit.
    pub pids: Option<u64>,
    /// CPU quota in cores (`cpus: 1.5`).
    pub cpus: Option<f64>,
    /// Workspace disk quota in bytes.
    pub disk_bytes: Option<u64>,
    /// Size of the `/tmp` tmpfs in bytes.
    pub tmp_bytes: Option<u64>,
    /// Log bytes a step may print before it is stopped.
    pub log_bytes: Option<u64>,
    /// Phase of the job's steps (default: `build`; checkout: `source-fetch`).
    pub phase: Option<Phase>,
    pub network: Option<NetworkSpec>,
    pub secrets: Vec<SecretBinding>,
}

/// kiln's settings of one step (`kiln:` under a step).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KilnStepSettings {
    pub phase: Option<Phase>,
    pub network: Option<NetworkSpec>,
    pub secrets: Vec<SecretBinding>,
}

/// One job of the file (before matrix expansion).
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The key under `jobs:`.
    pub key: String,
    pub location: Location,
    /// `name:`; may reference `matrix`.
    pub name: Option<Template>,
    /// Keys of the jobs this one needs, as written.
    pub needs: Vec<String>,
    /// `runs-on`: its labels (each may be an expression), rendered when
    /// the job is about to run; a label no runner here has skips the job.
    pub runs_on: Vec<Template>,
    /// `container:` (an image, or an expression; empty means none).
    pub container: Option<Template>,
    /// `services:`, in file order.
    pub services: Vec<ServiceSpec>,
    /// What refuses this job (an action kiln does not have, a docker
    /// option kiln has no meaning for, an unavailable shell), in file
    /// order. Empty: the job can run.
    pub refusals: Vec<Refusal>,
    pub condition: Option<Expr>,
    pub env: Vec<(String, Template)>,
    pub defaults: RunDefaults,
    pub timeout_minutes: Option<f64>,
    pub continue_on_error: BoolOrExpr,
    /// `outputs:` name -> template evaluated after the job's steps.
    pub outputs: Vec<(String, Template)>,
    pub strategy: Option<Strategy>,
    pub steps: Vec<StepSpec>,
    pub kiln: KilnJobSettings,
}

/// One of a job's `services:`: a sandbox on its own image that runs while
/// the job does, reached from the job's steps at `ID:PORT` and, for a
/// mapped port, at `localhost:HOST_PORT`.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// The key under `services:` (also its host name).
    pub id: String,
    pub location: Location,
    /// The image; an expression that renders empty means no service.
    pub image: Template,
    pub env: Vec<(String, Template)>,
    pub ports: Vec<ServicePort>,
    /// `entrypoint:` (or docker's `--entrypoint`): replaces the image's.
    pub entrypoint: Option<Template>,
    /// `command:`: replaces the image's command (split like a shell would).
    pub command: Option<Template>,
    /// docker's `--health-cmd` and its timings, from `options:`.
    pub health: Option<HealthCheck>,
}

/// A port of a service: the port it listens on, and the port on the job's
/// `localhost` it is mapped to (`5432:5432`; none: `- 5432`, reached by
/// the service's name only, as in a container job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePort {
    pub container: u16,
    pub host: Option<u16>,
}

/// How a service says it is ready (docker's health check, which the job
/// waits for before its first step).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Run with `/bin/sh -c` in the service's sandbox; exit 0 is healthy.
    pub command: String,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    pub retries: u32,
    pub start_period: std::time::Duration,
}

impl HealthCheck {
    /// docker's defaults.
    pub fn new(command: String) -> HealthCheck {
        HealthCheck {
            command,
            interval: std::time::Duration::from_secs(30),
            timeout: std::time::Duration::from_secs(30),
            retries: 3,
            start_period: std::time::Duration::ZERO,
        }
    }
}

/// `strategy:` of a job.
#[derive(Debug, Clone)]
pub struct Strategy {
    /// The static matrix: axes in file order, then include, then exclude.
    pub axes: Vec<(String, Vec<serde_json::Value>)>,
    pub include: Vec<BTreeMap<String, serde_json::Value>>,
    pub exclude: Vec<BTreeMap<String, serde_json::Value>>,
    pub fail_fast: bool,
    pub max_parallel: Option<u32>,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum StepAction {
    /// `run:` a script with a shell.
    Run { script: Template, shell: Option<ShellSpec> },
    /// A coverage or report uploader (codecov, coveralls, ...): it needs a
    /// third party's token and host, so it is skipped with a notice (or, if
    /// the operator says so, refuses its job).
    Uploader { uses: String },
    /// `uses: ./path/to/action`: a composite action of the repository (its
    /// `action.yml` is read from the workspace when the step runs).
    LocalAction {
        /// Workspace-relative directory of the action.
        path: String,
        /// `with:` inputs, in name order.
        with: Vec<(String, Template)>,
    },
    /// An action kiln does not have: its job is refused (see
    /// [`JobSpec::refusals`]); kept so listings show every step.
    Unsupported { uses: String },
    /// A setup action kiln has built in (`actions/setup-node`,
    /// `actions/setup-python`, `dtolnay/rust-toolchain`, ...): it reads the
    /// real action's inputs and gives exactly the tool asked for from the
    /// job's image or fails the step saying what there is.
    Setup {
        tool: SetupTool,
        /// As written (`dtolnay/rust-toolchain@stable`).
        uses: String,
        /// `with:` inputs, in name order.
        with: Vec<(String, Template)>,
    },
    /// `uses: actions/checkout@<any>`: the job's workspace gets the source.
    Checkout,
    /// `uses: actions/upload-artifact@<any>`: files of the workspace become an
    /// artifact in the store.
    UploadArtifact {
        name: Template,
        /// One workspace-relative file or directory per line.
        path: Template,
        /// `warn` (default), `error` or `ignore`.
        if_no_files_found: String,
        retention_days: Option<u32>,
        /// kiln's `output-type`: `static` (default), `server`, `function`,
        /// `container-image`.
        output_type: Option<String>,
    },
    /// `uses: actions/download-artifact@<any>`: an artifact of this build
    /// restored into the workspace.
    /// Without `name`: every artifact of the build (or those matching
    /// `pattern`), each into `path/NAME`, or all into `path` with
    /// `merge-multiple`.
    DownloadArtifact {
        name: Option<Template>,
        path: Option<Template>,
        pattern: Option<Template>,
        merge_multiple: bool,
    },
    /// `uses: actions/cache@<any>`: restore `path` from the build cache by
    /// `key` (then `restore-keys` prefixes); saved when the job succeeds.
    Cache {
        key: Template,
        path: Template,
        restore_keys: Option<Template>,
        lookup_only: bool,
        fail_on_miss: bool,
    },
    /// `uses: kiln/detect@v1`: reads the workspace (never runs it) and sets
    /// outputs for the zero-config build: the package manager, its clean
    /// install command, the build command, the dependency cache key and
    /// paths, whether the build is hermetic; refuses lockfiles and
    /// repository configuration that would widen the policy.
    Detect {
        /// Install without lifecycle scripts.
        ignore_scripts: bool,
    },
    /// `uses: kiln/package@v1`: finds the build output (or takes `path`),
    /// stores it as an artifact with its output type, scans and signs it.
    Package {
        name: Template,
        path: Option<Template>,
        output_type: Option<Template>,
        retention_days: Option<u32>,
        /// The source commit, when a step fetched the source.
        commit: Option<Template>,
    },
}

/// The setup actions kiln has built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupTool {
    /// `actions/setup-node`.
    Node,
    /// `actions/setup-python`.
    Python,
    /// `dtolnay/rust-toolchain`, `actions-rs/toolchain`.
    Rust,
    /// `Swatinem/rust-cache`.
    RustCache,
    /// `astral-sh/setup-uv`.
    Uv,
}

impl SetupTool {
    /// The tool of a `uses:` action name (lowercase, without `@ref`), and
    /// the inputs the real action takes.
    pub fn of(action: &str) -> Option<(SetupTool, &'static [&'static str])> {
        Some(match action {
            "actions/setup-node" => (
                SetupTool::Node,
                &[
                    "node-version",
                    "node-version-file",
                    "cache",
                    "cache-dependency-path",
                    "check-latest",
                    "architecture",
                    "registry-url",
                    "scope",
                    "always-auth",
                    "token",
                    "package-manager-cache",
                ],
            ),
            "actions/setup-python" => (
                SetupTool::Python,
                &[
                    "python-version",
                    "python-version-file",
                    "cache",
                    "cache-dependency-path",
                    "architecture",
                    "check-latest",
                    "token",
                    "update-environment",
                    "allow-prereleases",
                    "freethreaded",
                    "pip-version",
                    "pip-install",
                ],
            ),
            "dtolnay/rust-toolchain" | "actions-rs/toolchain" => (
                SetupTool::Rust,
                &[
                    "toolchain",
                    "components",
                    "component",
                    "targets",
                    "target",
                    "profile",
                    "override",
                    "default",
                ],
            ),
            "swatinem/rust-cache" => (
                SetupTool::RustCache,
                &[
                    "prefix-key",
                    "shared-key",
                    "key",
                    "env-vars",
                    "workspaces",
                    "cache-directories",
                    "cache-targets",
                    "cache-on-failure",
                    "cache-all-crates",
                    "cache-workspace-crates",
                    "save-if",
                    "cache-provider",
                    "cache-bin",
                    "lookup-only",
                ],
            ),
            "astral-sh/setup-uv" => (
                SetupTool::Uv,
                &[
                    "version",
                    "version-file",
                    "python-version",
                    "activate-environment",
                    "working-directory",
                    "enable-cache",
                    "cache-dependency-glob",
                    "cache-suffix",
                    "cache-local-path",
                    "restore-cache",
                    "save-cache",
                    "prune-cache",
                    "cache-python",
                    "ignore-nothing-to-cache",
                    "ignore-empty-workdir",
                    "tool-dir",
                    "tool-bin-dir",
                    "github-token",
                    "server-url",
                    "manifest-file",
                    "checksum",
                    "add-problem-matchers",
                ],
            ),
            _ => return None,
        })
    }

    /// What the step is called when it has no `name`.
    pub fn title(self) -> &'static str {
        match self {
            SetupTool::Node => "Set up Node.js",
            SetupTool::Python => "Set up Python",
            SetupTool::Rust => "Set up Rust",
            SetupTool::RustCache => "Cache Rust dependencies",
            SetupTool::Uv => "Set up uv",
        }
    }
}

/// One step of a job.
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub location: Location,
    pub id: Option<String>,
    pub name: Option<Template>,
    pub action: StepAction,
    pub env: Vec<(String, Template)>,
    pub working_directory: Option<Template>,
    pub condition: Option<Expr>,
    pub timeout_minutes: Option<f64>,
    pub continue_on_error: BoolOrExpr,
    pub kiln: KilnStepSettings,
}

impl StepSpec {
    /// The step's phase: its own, its job's, or by what it does.
    pub fn phase(&self, job: &JobSpec) -> Phase {
        self.kiln.phase.or(job.kiln.phase).unwrap_or(match self.action {
            StepAction::Checkout | StepAction::Detect { .. } => Phase::SourceFetch,
            StepAction::UploadArtifact { .. } | StepAction::Package { .. } => Phase::ArtifactUpload,
            StepAction::Run { .. }
            | StepAction::DownloadArtifact { .. }
            | StepAction::Cache { .. }
            | StepAction::Uploader { .. }
            | StepAction::LocalAction { .. }
            | StepAction::Setup { .. }
            | StepAction::Unsupported { .. } => Phase::Build,
        })
    }

    /// The step's network: its own, its job's or the workflow's; `None`
    /// when the file says nothing (the operator's default applies).
    pub fn network<'a>(&'a self, job: &'a JobSpec, workflow: &'a Workflow) -> Option<&'a NetworkSpec> {
        self.kiln.network.as_ref().or(job.kiln.network.as_ref()).or(workflow.kiln.network.as_ref())
    }

    /// The secret bindings that let this step see a secret, by name.
    pub fn allowed_secrets<'a>(&'a self, job: &'a JobSpec, workflow: &'a Workflow) -> Vec<&'a SecretBinding> {
        let phase = self.phase(job);
        let mut out: Vec<&SecretBinding> = self.kiln.secrets.iter().collect();
        for b in job.kiln.secrets.iter().chain(workflow.kiln.secrets.iter()) {
            if b.phases.contains(&phase) && !out.iter().any(|o| o.name == b.name) {
                out.push(b);
            }
        }
        out
    }
}
