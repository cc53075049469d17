//! `kiln run`, `validate`, `builds`, `logs`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use kiln_engine::store::Store;
use kiln_engine::{BuildRequest, Event, Executor, ExecutorConfig};
use kiln_sandbox::Isolation;
use kiln_workflow::{Diagnostics, Plan};
use tokio::sync::{mpsc, watch};

use crate::cli::{BuildsArgs, IsolationArg, LogsArgs, RunArgs, ValidateArgs};
use crate::render::Renderer;

use crate::exit::Exit;

/// Prints kiln's own failure and gives its exit status, except that a
/// reader that went away (a broken pipe anywhere in the chain) ends the
/// command quietly.
pub fn report_error(e: &anyhow::Error) -> Exit {
    let exit = Exit::of_error(e);
    if exit != Exit::BrokenPipe {
        eprintln!("error: {e:#}");
    }
    exit
}

/// The exit status of a command that either worked or could not run
/// (the error goes to stderr).
pub fn exit_status(result: anyhow::Result<()>) -> Exit {
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => crate::run::report_error(&e),
    }
}

/// The store namespace of the local CLI.
pub const LOCAL_TENANT: &str = "local";

pub fn isolation(a: IsolationArg) -> Isolation {
    match a {
        IsolationArg::Gvisor => Isolation::Gvisor,
        IsolationArg::Container => Isolation::Container,
    }
}

/// Finds the workflow file when none is named.
fn default_workflow() -> anyhow::Result<PathBuf> {
    let dir = Path::new(".github/workflows");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(anyhow!("no workflow file given and none found in .github/workflows/")),
        _ => Err(anyhow!(
            "several workflow files in .github/workflows/; name one: {}",
            found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The largest workflow file a job may call.
const MAX_CALLED_FILE: u64 = 1 << 20;

/// Reads `rel`, a path relative to the repository at `root` (a workflow a
/// job calls), refusing paths that leave the repository (`..`, absolute
/// paths, symlinks pointing out of it) and files over 1 MiB.
fn read_in_repository(root: &Path, rel: &str) -> Result<String, String> {
    use std::io::Read;
    let fail = |why: String| format!("reading `{rel}`: {why}");
    kiln_workflow::check_relative_path(rel).map_err(fail)?;
    if rel.split(['/', '\\']).any(|c| c == "..") {
        return Err(fail("`..` is not allowed in a path of the repository".into()));
    }
    let root =
        std::fs::canonicalize(root).map_err(|e| fail(format!("the repository {}: {e}", root.display())))?;
    let path = match std::fs::canonicalize(root.join(rel)) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(format!("no such file in the repository {}", root.display())))
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    if !path.starts_with(&root) {
        return Err(fail(format!("it leads out of the repository (to {})", path.display())));
    }
    let file = std::fs::File::open(&path).map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CALLED_FILE + 1).read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_CALLED_FILE {
        return Err(fail("the file is larger than 1 MiB".into()));
    }
    String::from_utf8(bytes).map_err(|_| fail("the file is not UTF-8 text".into()))
}

/// Reads and loads a workflow, printing diagnostics on failure. The
/// workflows its jobs call are read from the repository at `root`.
fn load_plan(path: &Path, json: bool, root: &Path) -> Result<Plan, Exit> {
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return Err(Exit::Invalid);
        }
    };
    let name = path.display().to_string();
    let loader = |rel: &str| read_in_repository(root, rel);
    match kiln_workflow::load_with(&name, &source, &loader) {
        Ok(plan) => {
            for n in &plan.notices {
                eprintln!("notice: {n}");
            }
            Ok(plan)
        }
        Err(diags) => {
            print_diagnostics(&diags, json);
            Err(Exit::Invalid)
        }
    }
}

fn print_diagnostics(diags: &Diagnostics, json: bool) {
    if json {
        let list: Vec<_> = diags
            .0
            .iter()
            .map(|d| serde_json::json!({"file": d.file, "line": d.location.line, "column": d.location.column, "message": d.message}))
            .collect();
        println!("{}", serde_json::json!({"type": "error", "kind": "invalid-workflow", "diagnostics": list}));
    }
    for d in &diags.0 {
        eprintln!("error: {d}");
    }
}

pub fn validate(args: ValidateArgs) -> Exit {
    let root = default_source(&args.workflow);
    let plan = match load_plan(&args.workflow, args.json, &root) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    // What each job (matrix leg) will do here, decided as far as the file
    // alone decides it: `runs-on` with the leg's matrix, refusals, uploaders.
    let opts = build_options_for(&args.runners);
    let mut rows = Vec::new();
    for (j, job) in plan.jobs.iter().enumerate() {
        let ctx = kiln_workflow::Contexts { matrix: job.matrix.clone(), ..Default::default() };
        let refusal = kiln_engine::build::refusal(&plan, j, &ctx, &opts);
        let skipped_steps: Vec<String> = job
            .spec
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                kiln_workflow::StepAction::Uploader { uses } if refusal.is_none() => {
                    Some(format!("`{uses}` (line {}) is skipped: coverage/report uploader", s.location.line))
                }
                _ => None,
            })
            .collect();
        rows.push((job, refusal, skipped_steps));
    }
    // GitHub's rule for dependents: a job without `if` whose need will not
    // run does not run either (with `if`, the condition decides at run time;
    // for a job of a called workflow, its caller's `if` too). A calling job
    // ends with the jobs it calls, whatever they are.
    let decided_at_run_time = |j: usize| {
        let mut k = Some(j);
        while let Some(x) = k {
            if plan.jobs[x].spec.condition.is_some() {
                return true;
            }
            k = plan.jobs[x].parent;
        }
        plan.jobs[j].call.is_some()
    };
    loop {
        let mut changed = false;
        for j in 0..rows.len() {
            if rows[j].1.is_some() || decided_at_run_time(j) {
                continue;
            }
            if let Some(&d) = plan.jobs[j].needs.iter().find(|&&d| rows[d].1.is_some()) {
                rows[j].1 = Some(format!("needs `{}`, which will be skipped", plan.jobs[d].id));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    if args.json {
        let jobs: Vec<_> = rows
            .iter()
            .map(|(job, refusal, skipped)| {
                serde_json::json!({
                    "id": job.id,
                    "calls": job.call.as_ref().map(|c| c.path.clone()),
                    "steps": job.spec.steps.len(),
                    "runs": refusal.is_none(),
                    "reason": refusal,
                    "skipped_steps": skipped,
                })
            })
            .collect();
        let runnable = rows.iter().filter(|(_, r, _)| r.is_none()).count();
        println!("{}", serde_json::json!({"type": "valid", "jobs": jobs, "runnable": runnable}));
    } else {
        let runnable = rows.iter().filter(|(_, r, _)| r.is_none()).count();
        println!(
            "{}: valid, {} jobs ({runnable} will run here, {} will be skipped)",
            args.workflow.display(),
            plan.jobs.len(),
            plan.jobs.len() - runnable
        );
        for (j, (job, refusal, skipped)) in rows.iter().enumerate() {
            match (refusal, &job.call) {
                (None, Some(call)) => {
                    println!("  call  {} ({}, {} jobs)", job.id, call.path, plan.called_jobs(j).count())
                }
                (None, None) => {
                    let services: Vec<&str> = job.spec.services.iter().map(|s| s.id.as_str()).collect();
                    let services = match services.is_empty() {
                        true => String::new(),
                        false => format!(", services: {}", services.join(", ")),
                    };
                    println!("  run   {} ({} steps{services})", job.id, job.spec.steps.len())
                }
                (Some(r), _) => println!("  skip  {}: {r}", job.id),
            }
            for s in skipped {
                println!("          {s}");
            }
        }
    }
    Exit::Ok
}

/// The build loop's view of the operator's runner flags.
fn build_options_for(args: &crate::cli::RunnerArgs) -> kiln_engine::BuildOptions {
    let mut opts =
        kiln_engine::BuildOptions::new(String::new(), 1, serde_json::Value::Null, serde_json::Value::Null);
    opts.runner_labels = kiln_workflow::RunnerLabels::with_extra(args.runner_labels.clone());
    opts.refuse_uploaders = args.uploaders == crate::cli::UploadersArg::Refuse;
    opts
}

/// The operator's runner policy from the flags.
pub fn runner_policy(args: &crate::cli::EngineArgs) -> kiln_engine::RunnerPolicy {
    kiln_engine::RunnerPolicy {
        extra_labels: args.runners.runner_labels.clone(),
        refuse_uploaders: args.runners.uploaders == crate::cli::UploadersArg::Refuse,
        sandbox_per_step: args.sandbox_per_step,
        image_store: None,
        images: if args.runners.no_images {
            Vec::new()
        } else {
            let mut map: Vec<(String, String)> = args
                .runners
                .images
                .iter()
                .filter_map(|m| m.split_once('=').map(|(p, i)| (p.trim().to_string(), i.trim().to_string())))
                .collect();
            map.extend(kiln_engine::RunnerPolicy::default().images);
            map
        },
        network: match args.network {
            crate::cli::NetworkArg::None => kiln_workflow::NetworkSpec::None,
            crate::cli::NetworkArg::Registries => kiln_workflow::NetworkSpec::Registries(Vec::new()),
        },
    }
}

/// The source directory: the git work tree the workflow is in, or its directory.
fn default_source(workflow: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(workflow).unwrap_or_else(|_| workflow.to_path_buf());
    let dir = abs.parent().unwrap_or(Path::new("/")).to_path_buf();
    // `<src>/.github/workflows/x.yml` -> `<src>`.
    if dir.ends_with(".github/workflows") {
        if let Some(src) = dir.parent().and_then(Path::parent) {
            return src.to_path_buf();
        }
    }
    dir
}

pub fn run(args: RunArgs) -> Exit {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => crate::run::report_error(&e),
    }
}

fn run_inner(args: RunArgs) -> anyhow::Result<Exit> {
    let workflow = match args.workflow.clone() {
        Some(w) => w,
        None => match default_workflow() {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(Exit::Invalid);
            }
        },
    };
    // The repository: what the build gets, and where called workflows are.
    let source = match &args.source {
        Some(s) => std::fs::canonicalize(s).with_context(|| format!("source directory {}", s.display()))?,
        None => default_source(&workflow),
    };
    let plan = match load_plan(&workflow, args.engine.json, &source) {
        Ok(p) if args.jobs.is_empty() => Arc::new(p),
        Ok(p) => match p.select(&args.jobs) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(Exit::Invalid);
            }
        },
        Err(code) => return Ok(code),
    };
    let setup = match EngineSetup::from_args(&args.engine) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let executor = Executor::new(setup.config)?;
    let request = BuildRequest {
        build: kiln_engine::time::new_build_id(),
        tenant: LOCAL_TENANT.into(),
        plan: plan.clone(),
        source_info: kiln_engine::git::source_info(&source),
        source,
        secrets: setup.secrets,
        untrusted: args.engine.untrusted,
        shared_cache: None,
    };
    let summary = execute_with_terminal(&executor, request, args.engine.json)?;
    Ok(Exit::of_build(&summary.status))
}

/// The validated settings of [`EngineArgs`].
pub struct EngineSetup {
    pub config: ExecutorConfig,
    pub secrets: Arc<Vec<kiln_secrets::Secret>>,
}

impl EngineSetup {
    /// Reads secrets and limits; a bad flag is reported and gives the exit
    /// code for invalid input.
    pub fn from_args(args: &crate::cli::EngineArgs) -> Result<EngineSetup, Exit> {
        let secrets = match load_secrets(args) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("error: {e}");
                return Err(Exit::Invalid);
            }
        };
        let egress_cap = match kiln_workflow::parse_size(&args.egress_cap) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("error: --egress-cap: {e}");
                return Err(Exit::Invalid);
            }
        };
        let config = ExecutorConfig {
            state_dir: args.state.state_dir.clone(),
            isolation: isolation(args.isolation),
            max_parallel: args
                .max_parallel
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
            allow_private: args.allow_private.clone(),
            egress_cap,
            default_branch: args.default_branch.clone(),
            store_url: args.state.store.clone(),
            registries: Vec::new(),
            // Every artifact passes the scanning gate before it is recorded.
            scanner: Some(Arc::new(kiln_scan::Scanner::builtin())),
            policy: {
                let mut p = runner_policy(args);
                p.image_store = args.state.image_store.clone();
                p
            },
        };
        Ok(EngineSetup { config, secrets })
    }
}

/// Runs one build with the terminal (or `--json`) rendering its events;
/// Ctrl-C cancels it.
pub fn execute_with_terminal(
    executor: &Executor,
    request: BuildRequest,
    json: bool,
) -> anyhow::Result<kiln_engine::BuildSummary> {
    let plan = request.plan.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let summary = rt.block_on(async {
        let (ui_tx, ui_rx) = mpsc::unbounded_channel::<Event>();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        tokio::spawn(watch_signals(cancel_tx));
        let renderer = Renderer::new(json, plan);
        let ui = tokio::spawn(renderer.run(ui_rx));
        let summary = executor.execute(request, Some(ui_tx), cancel_rx).await;
        let _ = ui.await;
        summary
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(summary?)
}

/// The build's secrets from `--secret` and `--secrets-file`. Errors name the
/// secret, never its value.
fn load_secrets(args: &crate::cli::EngineArgs) -> Result<Vec<kiln_secrets::Secret>, String> {
    let mut out: Vec<kiln_secrets::Secret> = Vec::new();
    let mut add = |name: String, value: Vec<u8>| -> Result<(), String> {
        kiln_secrets::validate(&name, &value).map_err(|e| e.to_string())?;
        out.retain(|s| s.name != name);
        out.push(kiln_secrets::Secret::new(name, value));
        Ok(())
    };
    if let Some(file) = &args.secrets_file {
        let text =
            std::fs::read_to_string(file).map_err(|e| format!("--secrets-file {}: {e}", file.display()))?;
        for (name, value) in kiln_secrets::parse_dotenv(&text)
            .map_err(|e| format!("--secrets-file {}: {e}", file.display()))?
        {
            add(name, value.expose().to_vec())?;
        }
    }
    for spec in &args.secrets {
        match spec.split_once('=') {
            Some((name, value)) => add(name.to_string(), value.as_bytes().to_vec())?,
            None => {
                let value = std::env::var_os(spec).ok_or_else(|| {
                    format!("--secret {spec}: no environment variable `{spec}` to read it from")
                })?;
                use std::os::unix::ffi::OsStringExt;
                add(spec.clone(), value.into_vec())?
            }
        }
    }
    Ok(out)
}

async fn watch_signals(cancel: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = cancel.send(true);
    // Further signals are ignored: kiln is tearing sandboxes down.
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

pub fn builds(args: BuildsArgs) -> Exit {
    let result = (|| -> anyhow::Result<()> {
        let store = Store::open(&args.state.state_dir)?;
        let rows = store.builds(args.limit)?;
        let mut out = std::io::stdout().lock();
        if args.json {
            for b in rows {
                writeln!(out, "{}", serde_json::to_string(&b)?)?;
            }
        } else {
            writeln!(out, "{:<30} {:<12} {:<26} PIPELINE", "BUILD", "STATUS", "CREATED")?;
            for b in rows {
                writeln!(out, "{:<30} {:<12} {:<26} {}", b.id, b.status, b.created_at, b.pipeline)?;
            }
        }
        Ok(())
    })();
    exit_status(result)
}

/// The frame of the commands that read one recorded build: open the state
/// store, resolve the build id (or prefix, or `latest`; unknown: exit 2),
/// print, and map kiln's own errors to exit 3.
fn with_build(
    args: &LogsArgs,
    print: impl FnOnce(&Store, &kiln_engine::store::BuildRow, &mut std::io::StdoutLock<'_>) -> anyhow::Result<()>,
) -> Exit {
    let result = (|| -> anyhow::Result<Exit> {
        let store = Store::open(&args.state.state_dir)?;
        let build = match store.resolve_build(&args.build) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(Exit::Invalid);
            }
        };
        let mut out = std::io::stdout().lock();
        print(&store, &build, &mut out)?;
        Ok(Exit::Ok)
    })();
    match result {
        Ok(c) => c,
        Err(e) => crate::run::report_error(&e),
    }
}

pub fn logs(args: LogsArgs) -> Exit {
    with_build(&args, |store, build, out| {
        let entries = store.logs(&build.id)?;
        for e in &entries {
            if args.json {
                writeln!(out, "{}", serde_json::to_string(e)?)?;
            } else {
                writeln!(out, "{}", crate::render::plain_line(e))?;
            }
        }
        if args.json {
            let jobs = store.jobs(&build.id)?;
            writeln!(
                out,
                "{}",
                serde_json::json!({"type": "summary", "build": build.id, "status": build.status, "jobs": jobs})
            )?;
        } else {
            writeln!(out, "build {} {}", build.id, build.status)?;
        }
        Ok(())
    })
}

pub fn audit(args: LogsArgs) -> Exit {
    with_build(&args, |store, build, out| {
        for a in store.audit(&build.id)? {
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&a)?)?;
            } else {
                writeln!(out, "{} {:<16} [{} / {}] {}", a.ts, a.kind, a.job, a.step, a.detail)?;
            }
        }
        Ok(())
    })
}

pub fn artifacts(args: LogsArgs) -> Exit {
    with_build(&args, |store, build, out| {
        for a in store.artifacts(&build.id)? {
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&a)?)?;
            } else {
                writeln!(
                    out,
                    "{}  {:<20} {:>6} files {:>12} bytes  {:<9} {:<11} ({})",
                    a.id, a.name, a.files, a.bytes, a.output_type, a.status, a.job
                )?;
                for line in a.scan.iter().flat_map(|s| s.lines()) {
                    writeln!(out, "    {line}")?;
                }
            }
        }
        Ok(())
    })
}

/// The content-addressed store of the local CLI (one tenant): `--store`, or
/// `store/` under the state dir.
pub fn open_store(state: &crate::cli::StateArgs) -> anyhow::Result<kiln_store::Store> {
    open_store_tenant(state, LOCAL_TENANT)
}

/// The content store's namespace `tenant`.
pub fn open_store_tenant(state: &crate::cli::StateArgs, tenant: &str) -> anyhow::Result<kiln_store::Store> {
    let store = match &state.store {
        Some(url) => kiln_store::Store::open_url(url).map_err(|e| anyhow!("opening the store: {e}"))?,
        None => {
            let dir = state.state_dir.join("store");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            kiln_store::Store::open_local(&dir).map_err(|e| anyhow!("opening the store: {e}"))?
        }
    };
    store.tenant(tenant).map_err(|e| anyhow!("opening the store: {e}"))
}

fn parse_artifact_id(id: &str) -> Option<kiln_store::TreeDigest> {
    match id.parse() {
        Ok(d) => Some(d),
        Err(_) => {
            eprintln!("error: `{id}` is not an artifact id (expected sha256:<64 hex digits>)");
            None
        }
    }
}

/// The recorded provenance envelope of an artifact, as JSON bytes.
fn recorded_provenance(state_dir: &Path, store: &kiln_store::Store, id: &str) -> anyhow::Result<Vec<u8>> {
    let db = Store::open(state_dir)?;
    let digest = db.provenance_of(id)?.ok_or_else(|| anyhow!("no provenance recorded for {id}"))?;
    let digest: kiln_store::Digest = digest.parse().map_err(|_| anyhow!("bad provenance digest {digest}"))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let bytes = rt.block_on(store.get_bytes(&digest, None)).map_err(|e| anyhow!("{e}"))?;
    Ok(bytes.to_vec())
}

pub fn key(args: crate::cli::StateOnly) -> Exit {
    match kiln_store::Keys::load_or_create(&args.state.state_dir) {
        Ok(k) => {
            println!("{}", k.public_key_hex());
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Infra
        }
    }
}

pub fn verify(args: crate::cli::VerifyArgs) -> Exit {
    let Some(digest) = parse_artifact_id(&args.id) else { return Exit::Invalid };
    // Outer error: kiln could not check (exit 3). Inner error: the check
    // ran and the artifact did not pass (exit 1): a missing, unreadable or
    // edited envelope, a bad signature or digest, a quarantined artifact.
    let result = (|| -> anyhow::Result<Result<kiln_store::Statement, String>> {
        let store = open_store(&args.state)?;
        let envelope = match &args.provenance {
            Some(f) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
            None => match recorded_provenance(&args.state.state_dir, &store, &args.id) {
                Ok(bytes) => bytes,
                Err(e) => return Ok(Err(format!("{e:#}"))),
            },
        };
        let envelope: kiln_store::Envelope = match serde_json::from_slice(&envelope) {
            Ok(e) => e,
            Err(e) => return Ok(Err(format!("the provenance is not a DSSE envelope: {e}"))),
        };
        let key = match &args.key {
            Some(hex) => kiln_store::provenance::parse_public_key(hex)
                .ok_or_else(|| anyhow!("--key: not an Ed25519 public key in hex"))?,
            None => kiln_store::Keys::load_or_create(&args.state.state_dir)
                .map_err(|e| anyhow!("{e}"))?
                .public_key(),
        };
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let st = match rt.block_on(kiln_store::verify(&envelope, &key, &store, &digest)) {
            Ok(st) => st,
            Err(e) => return Ok(Err(e.to_string())),
        };
        // A quarantined artifact is signed and intact, and still must not
        // ship: the scan's verdict is part of the answer.
        if args.provenance.is_none() {
            if let Ok(db) = Store::open(&args.state.state_dir) {
                if let Some((status, scan)) = db.scan_of(&args.id)? {
                    if status == "quarantined" {
                        return Ok(Err(format!(
                            "{} is quarantined by the artifact scan ({}); its signature and digests check out, but it must not be deployed",
                            args.id,
                            scan.unwrap_or_default().lines().next().unwrap_or("no findings recorded")
                        )));
                    }
                }
            }
        }
        Ok(Ok(st))
    })();
    match result {
        Ok(Ok(st)) => {
            let hermetic = st.predicate.hermetic;
            let deps = &st.predicate.build_definition.resolved_dependencies;
            let named = |prefix: &str| -> Vec<String> {
                deps.iter()
                    .filter(|d| d.uri.as_deref().is_some_and(|u| u.starts_with(prefix)))
                    .map(|d| format!("{}@sha256:{}", d.name.as_deref().unwrap_or(""), d.digest.sha256))
                    .collect()
            };
            let images = named("kiln-image:");
            let mut image = match images.is_empty() {
                true => "the host's /usr".to_string(),
                false => format!("image {}", images.join(", ")),
            };
            let tools = named("pkg:");
            if !tools.is_empty() {
                image.push_str(&format!(" with {}", tools.join(", ")));
            }
            println!(
                "verified: {} (signature, subject and every file digest); build {}, hermetic: {hermetic}, built on {image}",
                args.id, st.predicate.run_details.metadata.invocation_id
            );
            Exit::Ok
        }
        Ok(Err(e)) => {
            eprintln!("verification failed: {e}");
            Exit::Failed
        }
        Err(e) => crate::run::report_error(&e),
    }
}

pub fn artifact(cmd: crate::cli::ArtifactCommand) -> Exit {
    let (id, out, quarantined, state) = match cmd {
        crate::cli::ArtifactCommand::Get { id, out, quarantined, state } => (id, out, quarantined, state),
        crate::cli::ArtifactCommand::Provenance { id, state } => {
            if parse_artifact_id(&id).is_none() {
                return Exit::Invalid;
            }
            return match open_store(&state).and_then(|s| recorded_provenance(&state.state_dir, &s, &id)) {
                Ok(bytes) => {
                    println!("{}", String::from_utf8_lossy(&bytes));
                    Exit::Ok
                }
                Err(e) => crate::run::report_error(&e),
            };
        }
    };
    let digest: kiln_store::TreeDigest = match id.parse() {
        Ok(d) => d,
        Err(_) => {
            eprintln!("error: `{id}` is not an artifact id (expected sha256:<64 hex digits>)");
            return Exit::Invalid;
        }
    };
    if std::fs::symlink_metadata(&out).is_ok() {
        eprintln!("error: {} already exists; name a new directory", out.display());
        return Exit::Invalid;
    }
    // The scan's verdict gates a restore as it gates a deployment.
    if let Ok(Some((status, scan))) = Store::open(&state.state_dir).and_then(|db| db.scan_of(&id)) {
        if status == "quarantined" && !quarantined {
            eprintln!(
                "error: {id} is quarantined by the artifact scan ({}); restore it only to inspect it, with --quarantined",
                scan.unwrap_or_default().lines().next().unwrap_or("no findings recorded")
            );
            return Exit::Failed;
        }
    }
    let result = (|| -> anyhow::Result<kiln_store::TreeStats> {
        let store = open_store(&state)?;
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(store.restore_tree(&digest, &out, &kiln_store::RestoreLimits::default()))
            .map_err(|e| anyhow!("{e}"))
    })();
    match result {
        Ok(stats) => {
            println!(
                "restored {} ({} files, {} bytes) into {}",
                digest,
                stats.files,
                stats.bytes,
                out.display()
            );
            Exit::Ok
        }
        Err(e) => crate::run::report_error(&e),
    }
}

pub fn gc(args: crate::cli::GcArgs) -> Exit {
    let cache_max = match kiln_workflow::parse_size(&args.cache_max) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: --cache-max: {e}");
            return Exit::Invalid;
        }
    };
    let result = (|| -> anyhow::Result<kiln_store::GcReport> {
        let store = open_store(&args.state)?;
        let policy = kiln_store::GcPolicy {
            keep_last_per_branch: args.keep,
            cache_max_bytes: cache_max,
            grace: std::time::Duration::from_secs(args.grace),
        };
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let mut report = rt.block_on(store.gc(&policy, args.dry_run)).map_err(|e| anyhow!("{e}"))?;
        // Images: every named image is kept; layers of removed ones go.
        let images = crate::image::store(&args.state)?;
        let r = rt.block_on(images.gc(&policy, args.dry_run)).map_err(|e| anyhow!("{e}"))?;
        report.deleted_blobs.extend(r.deleted_blobs);
        report.deleted_packs.extend(r.deleted_packs);
        report.deleted_bytes += r.deleted_bytes;
        report.deleted_temp += r.deleted_temp;
        Ok(report)
    })();
    match result {
        Ok(r) => {
            let verb = if r.dry_run { "would delete" } else { "deleted" };
            for a in &r.deleted_artifacts {
                println!("{verb} artifact {a}");
            }
            for (scope, key) in &r.deleted_cache_entries {
                println!("{verb} cache entry {key} ({scope})");
            }
            println!(
                "{verb} {} artifacts, {} cache entries, {} blobs and {} packs ({} bytes), {} leftover temporary objects",
                r.deleted_artifacts.len(),
                r.deleted_cache_entries.len(),
                r.deleted_blobs.len(),
                r.deleted_packs.len(),
                r.deleted_bytes,
                r.deleted_temp
            );
            Exit::Ok
        }
        Err(e) => crate::run::report_error(&e),
    }
}
