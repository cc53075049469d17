//! One build from a plan and a source directory to a summary, with every part
//! the build needs wired together: the runtimes (found and proven once per
//! process), the state store rows and their writer, the sandbox runner with
//! its egress, secrets, scrubber and artifact sink, and the cleanup after.
//!
//! `kiln run`, `kiln build` and the workers of `kiln serve` all go through
//! [`Executor::execute`], so a build runs the same whichever front end asked
//! for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_sandbox::{Isolation, Runtime};
use kiln_workflow::Plan;
use tokio::sync::{mpsc, watch};

use crate::build::{display_name, run_build, BuildOptions, BuildSummary};
use crate::contexts::SourceInfo;
use crate::error::EngineError;
use crate::event::Event;
use crate::runner::artifacts::ArtifactSink;
use crate::runner::sandbox::{
    effective_isolation, locate_init, EgressConfig, SandboxRunner, SandboxRunnerConfig, TierKey,
};
use crate::runner::Emitter;
use crate::store::{Store, StoreWriter};

/// What stays the same across the builds of one process.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The state directory (created if missing): `state.db`, `store/`,
    /// `builds/`, the signing key.
    pub state_dir: PathBuf,
    /// The operator's isolation tier.
    pub isolation: Isolation,
    /// Jobs of one build running at once, at most.
    pub max_parallel: usize,
    /// Private `ip:port` the operator opened for egress (a registry mirror).
    pub allow_private: Vec<std::net::SocketAddr>,
    /// Egress bytes per build, in and out.
    pub egress_cap: u64,
    /// The trusted branch whose cache entries every build may read.
    pub default_branch: String,
    /// The content store as an `object_store` URL; `None`: `store/` under
    /// the state dir.
    pub store_url: Option<String>,
    /// Registry mirrors the operator named (URLs): `network: registries`
    /// reaches them besides the public registries, and lockfiles may point
    /// at them.
    pub registries: Vec<String>,
    /// The scanning gate of every artifact (none: artifacts are recorded
    /// `ready` unscanned).
    pub scanner: Option<Arc<kiln_scan::Scanner>>,
    /// What the operator decided for workflows brought unchanged: runner
    /// labels, uploaders, the default network.
    pub policy: RunnerPolicy,
}

/// The operator's answers to what an unchanged workflow assumes of GitHub's
/// runners.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerPolicy {
    /// `runs-on` labels the runners here answer to besides GitHub's Linux
    /// labels (patterns with `*`).
    pub extra_labels: Vec<String>,
    /// Refuse jobs with a coverage/report uploader (default: skip the step
    /// with a notice).
    pub refuse_uploaders: bool,
    /// The network of a step whose workflow says nothing (`kiln:` wins).
    pub network: kiln_workflow::NetworkSpec,
    /// Every step in a sandbox of its own, not one sandbox per phase.
    pub sandbox_per_step: bool,
    /// `runs-on` label patterns and the images they run on, first match
    /// wins (default: `ubuntu-*` on [`kiln_image::DEFAULT_IMAGE`]). A job
    /// no pattern matches, or whose image is not built, sees the host's
    /// `/usr`.
    pub images: Vec<(String, String)>,
    /// Where images are kept, as an object_store URL, when not in the
    /// build store (several deployments can share one image store).
    pub image_store: Option<String>,
}

/// The store namespace images live in: one per deployment, whatever
/// tenant a build belongs to.
pub const IMAGE_TENANT: &str = "_images";

/// The store namespace of tools setup actions fetched (Node.js builds).
pub const TOOL_TENANT: &str = "_tools";

impl Default for RunnerPolicy {
    fn default() -> Self {
        RunnerPolicy {
            extra_labels: Vec::new(),
            refuse_uploaders: false,
            network: kiln_workflow::NetworkSpec::None,
            sandbox_per_step: false,
            images: vec![("ubuntu-*".to_string(), kiln_image::DEFAULT_IMAGE.to_string())],
            image_store: None,
        }
    }
}

/// One build to run.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The build id (see [`crate::time::new_build_id`]).
    pub build: String,
    /// The store namespace the build's artifacts and caches live in.
    pub tenant: String,
    pub plan: Arc<Plan>,
    /// The directory copied into each job's workspace.
    pub source: PathBuf,
    /// Where the source came from (repository, commit, ref).
    pub source_info: SourceInfo,
    pub secrets: Arc<Vec<kiln_secrets::Secret>>,
    /// Untrusted builds (a fork's pull request) never write caches that
    /// trusted builds read.
    pub untrusted: bool,
    /// The deployment's shared cache (a remote worker's server), used
    /// instead of this executor's own.
    pub shared_cache: Option<Arc<dyn crate::runner::artifacts::SharedCache>>,
}

/// Runs builds: owns the proven runtimes and the signing key.
#[derive(Debug)]
pub struct Executor {
    cfg: ExecutorConfig,
    state_dir: PathBuf,
    runtimes: std::sync::Mutex<HashMap<TierKey, Runtime>>,
    init: PathBuf,
    keys: Arc<kiln_store::Keys>,
    blob_root: kiln_store::Store,
}

impl Executor {
    /// Prepares the state directory, cleans up what interrupted builds left
    /// behind, finds `kiln-init` and proves the operator's runtime works.
    pub fn new(cfg: ExecutorConfig) -> Result<Executor, EngineError> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| EngineError::io("creating the state dir", &cfg.state_dir, e))?;
        let state_dir = std::fs::canonicalize(&cfg.state_dir)
            .map_err(|e| EngineError::io("resolving the state dir", &cfg.state_dir, e))?;
        let init = locate_init().map_err(EngineError::Setup)?;
        let keys = kiln_store::Keys::load_or_create(&state_dir)
            .map_err(|e| EngineError::Setup(format!("provenance key: {e}")))?;
        let blob_root = match &cfg.store_url {
            Some(url) => kiln_store::Store::open_url(url),
            None => {
                let store_dir = state_dir.join("store");
                std::fs::create_dir_all(&store_dir)
                    .map_err(|e| EngineError::io("creating", &store_dir, e))?;
                kiln_store::Store::open_local(&store_dir)
            }
        }
        .map_err(|e| EngineError::Setup(format!("opening the store: {e}")))?;
        {
            // Sandboxes, mounts and directories of builds whose process died.
            let store = Store::open(&state_dir)?;
            let leftovers = crate::runner::sandbox::leftover_builds(&state_dir, &store);
            crate::runner::sandbox::cleanup_interrupted(&state_dir, &leftovers);
        }
        let exec = Executor {
            cfg: cfg.clone(),
            state_dir,
            runtimes: Default::default(),
            init,
            keys: Arc::new(keys),
            blob_root,
        };
        exec.ensure_tier(cfg.isolation)?;
        Ok(exec)
    }

    /// The canonical state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn config(&self) -> &ExecutorConfig {
        &self.cfg
    }

    /// The signing key pair of this state directory.
    pub fn keys(&self) -> &Arc<kiln_store::Keys> {
        &self.keys
    }

    /// The content store's namespace for `tenant`.
    pub fn blob_store(&self, tenant: &str) -> Result<kiln_store::Store, EngineError> {
        self.blob_root.tenant(tenant).map_err(|e| EngineError::Setup(format!("opening the store: {e}")))
    }

    /// The operator's image map as the store has it: each named image
    /// found is materialized under `<state>/images/` (once; later builds
    /// find it there).
    pub async fn images(&self) -> Result<Vec<crate::runner::sandbox::ImageChoice>, EngineError> {
        let store = self.image_store(IMAGE_TENANT)?;
        let dir = self.state_dir.join("images");
        let mut out = Vec::new();
        for (pattern, name) in &self.cfg.policy.images {
            let (found, env) = match kiln_image::resolve(&store, name).await {
                Ok(image) => {
                    let path = kiln_image::materialize(&store, &image, &dir)
                        .await
                        .map_err(|e| EngineError::Setup(format!("image {name}: {e}")))?;
                    (Some((image.digest, path)), image.manifest.source.env().to_vec())
                }
                Err(kiln_image::ImageError::NotFound(_)) => (None, Vec::new()),
                Err(e) => return Err(EngineError::Setup(format!("image {name}: {e}"))),
            };
            out.push(crate::runner::sandbox::ImageChoice {
                pattern: pattern.clone(),
                name: name.clone(),
                found,
                env,
            });
        }
        Ok(out)
    }

    /// A namespace of the image store (the build store unless the
    /// operator named one).
    fn image_store(&self, tenant: &str) -> Result<kiln_store::Store, EngineError> {
        match &self.cfg.policy.image_store {
            Some(url) => kiln_store::Store::open_url(url).and_then(|s| s.tenant(tenant)),
            None => self.blob_root.tenant(tenant),
        }
        .map_err(|e| EngineError::Setup(format!("opening the image store: {e}")))
    }

    /// Finds and proves the runtime of `tier`, once per process.
    pub fn ensure_tier(&self, tier: Isolation) -> Result<(), EngineError> {
        let key = TierKey::of(tier);
        if self.runtimes.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&key) {
            return Ok(());
        }
        let rt = Runtime::locate(tier).map_err(|e| EngineError::Setup(e.to_string()))?;
        let scratch = self.state_dir.join(format!("probe-{}", std::process::id()));
        let verified = rt.verify_cached(&scratch).map_err(|e| EngineError::Setup(e.to_string()));
        let _ = std::fs::remove_dir_all(&scratch);
        verified?;
        self.runtimes.lock().unwrap_or_else(|e| e.into_inner()).insert(key, rt);
        Ok(())
    }

    /// Runs one build to its end and returns the summary. The build's rows
    /// are in the state store before the first step starts; every event also
    /// goes to `tap` (the terminal, a live log stream). Setting `cancel`
    /// cancels the build.
    pub async fn execute(
        &self,
        req: BuildRequest,
        tap: Option<mpsc::UnboundedSender<Event>>,
        cancel: watch::Receiver<bool>,
    ) -> Result<BuildSummary, EngineError> {
        let plan = req.plan.clone();
        // The runtimes this plan needs, proven before the first step.
        for job in &plan.jobs {
            let (tier, _) = effective_isolation(self.cfg.isolation, job.spec.kiln.isolation);
            self.ensure_tier(tier)?;
        }
        let github = crate::contexts::github(&req.build, &plan.name, &req.source_info);
        // Every string of the build that reaches a terminal or the store
        // passes this scrubber (step output, and kiln's own: names, reasons).
        let scrubber =
            Arc::new(kiln_secrets::Scrubber::new(&req.secrets, &kiln_secrets::PatternSet::builtin()));
        let names = BuildOptions::new(req.build.clone(), 1, github.clone(), serde_json::Value::Null);
        let jobs: Vec<(String, String)> = (0..plan.jobs.len())
            // Ids come from the file alone (keys, literal matrix values) and
            // key every row; display names are rendered.
            .map(|j| (plan.jobs[j].id.clone(), scrubber.scrub_str(&display_name(&plan, j, &names))))
            .collect();
        let _live = crate::store::LiveBuild::new(&req.build);
        let store = Store::open(&self.state_dir)?;
        store.insert_build(&req.build, &plan.name, &req.source.display().to_string(), &jobs)?;
        let writer = StoreWriter::spawn(store, req.build.clone());

        let mut egress = EgressConfig::new(self.cfg.allow_private.clone(), self.cfg.egress_cap);
        egress.registries = self.cfg.registries.clone();
        let sink = {
            let branch = crate::runner::artifacts::branch_of(&req.source_info.git_ref);
            let mut sink = ArtifactSink::new(
                self.blob_store(&req.tenant)?,
                kiln_store::SourceInfo {
                    repository: req.source_info.repository.clone(),
                    commit: req.source_info.sha.clone(),
                    git_ref: req.source_info.git_ref.clone(),
                },
                branch,
            );
            sink.keys = Some(self.keys.clone());
            sink.scanner = self.cfg.scanner.clone();
            sink.default_branch = self.cfg.default_branch.clone();
            sink.cache_scope.tenant = req.tenant.clone();
            if req.untrusted {
                sink.cache_scope.trust = kiln_store::Trust::Untrusted;
            }
            sink.shared_cache = req.shared_cache.clone();
            sink
        };
        let build_dir = self.state_dir.join("builds").join(&req.build);
        let runtimes = self.runtimes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let cfg = SandboxRunnerConfig {
            build_dir: build_dir.clone(),
            source: Some(req.source.clone()),
            source_skip: vec![self.state_dir.clone()],
            isolation: self.cfg.isolation,
            runtimes,
            limits: Default::default(),
            init: self.init.clone(),
            // An untrusted build (a fork's pull request) is handed no secret
            // at all, whatever its workflow binds: the scrubber above still
            // knows them, should one reach the build some other way.
            secrets: if req.untrusted { Arc::new(Vec::new()) } else { req.secrets.clone() },
            scrubber: scrubber.clone(),
            egress: egress.clone(),
            artifacts: Some(Arc::new(sink)),
            default_network: self.cfg.policy.network.clone(),
            refuse_uploaders: self.cfg.policy.refuse_uploaders,
            phase_sandboxes: !self.cfg.policy.sandbox_per_step,
            images: self.images().await?,
            tools: Some((self.image_store(TOOL_TENANT)?, self.state_dir.join("tools"))),
            image_store: Some((self.image_store(IMAGE_TENANT)?, self.state_dir.join("images"))),
        };
        let mut opts = BuildOptions::new(
            req.build.clone(),
            self.cfg.max_parallel.max(1),
            github,
            crate::contexts::runner(match self.cfg.isolation {
                Isolation::Gvisor => "gvisor",
                Isolation::Container => "container",
            }),
        );
        opts.egress = Some(egress.counters.clone());
        opts.runner_labels = kiln_workflow::RunnerLabels::with_extra(self.cfg.policy.extra_labels.clone());
        opts.refuse_uploaders = self.cfg.policy.refuse_uploaders;
        opts.known_images = Some(Arc::new(
            self.image_store(IMAGE_TENANT)?
                .list_image_refs()
                .await
                .map_err(|e| EngineError::Setup(format!("listing images: {e}")))?
                .into_iter()
                .map(|r| r.name)
                .collect(),
        ));
        let emitter = Emitter::new(&req.build, tap, Some(writer.sender())).with_scrubber(scrubber.clone());
        if req.untrusted && !req.secrets.is_empty() {
            emitter.log(
                "",
                "",
                "",
                crate::log::Stream::System,
                format!(
                    "untrusted build: none of the {} secret(s) given is handed to any step",
                    req.secrets.len()
                ),
            );
        }
        let runner = Arc::new(SandboxRunner::new(cfg));
        let summary = run_build(plan, runner, opts, emitter, cancel).await;
        let _ = std::fs::remove_dir_all(&build_dir);
        // The writer's last batch is on disk before the caller reads the rows.
        tokio::task::spawn_blocking(move || writer.close())
            .await
            .map_err(|e| EngineError::Setup(format!("state store writer: {e}")))??;
        Ok(summary)
    }
}
