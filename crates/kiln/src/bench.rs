//! `kiln bench`: step start latency per tier against the raw runtime, the
//! start of a step in a running phase sandbox, a multi-step job with phase
//! sandboxes against one sandbox per step, and the scheduler's own overhead
//! per job.
//!
//! Step start latency is measured from the moment the build loop decides to
//! run a step (its `StepStarted` event) to the moment the first byte of the
//! step's output reaches the front end, through the real engine and a real
//! sandbox. The raw runtime is measured on an equivalent bundle (same spec,
//! written by the same code) from `runsc run`/`runc run` being spawned to its
//! first byte of output. The two are interleaved one for one so that machine
//! noise falls on both alike; the table reports medians, p99s and the ratio.

use crate::exit::Exit;
use std::collections::HashMap;
use std::io::Read;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context};
use kiln_engine::runner::sandbox::{SandboxRunner, SandboxRunnerConfig, TierKey, STEP_GID, STEP_UID};
use kiln_engine::runner::{Emitter, JobOutcome, JobRequest, JobRunner};
use kiln_engine::{BuildOptions, Event, Stream};
use kiln_sandbox::{Isolation, Runtime, Sandbox, SandboxSpec, Workspace};
use kiln_workflow::JobResult;
use tokio::sync::{mpsc, watch};

use crate::cli::BenchArgs;
use crate::run::isolation;

mod profile;

/// One measured tier.
#[derive(Debug)]
struct TierResult {
    tier: &'static str,
    kiln: Vec<f64>,
    raw: Vec<f64>,
    /// Start latency of a step in an already running phase sandbox.
    in_phase: Vec<f64>,
    /// Wall time of a job of [`JOB_STEPS`] steps: phase sandboxes, and one
    /// sandbox per step (interleaved).
    job_phase: Vec<f64>,
    job_per_step: Vec<f64>,
}

/// Steps of the job whose wall time is compared.
const JOB_STEPS: usize = 8;
/// Runs of that job per mode.
const JOB_RUNS: usize = 3;

pub fn bench(args: BenchArgs) -> Exit {
    match bench_inner(args) {
        Ok(()) => Exit::Ok,
        Err(e) => crate::run::report_error(&e),
    }
}

fn bench_inner(args: BenchArgs) -> anyhow::Result<()> {
    if args.scheduler_only {
        print!("{}", render_scheduler(&scheduler_overhead(args.jobs)?));
        return Ok(());
    }
    std::fs::create_dir_all(&args.state.state_dir)?;
    let state_dir = std::fs::canonicalize(&args.state.state_dir)?.join("bench");
    std::fs::create_dir_all(&state_dir)?;
    if args.profile {
        let (table, versions) = profile::profile(&args, &state_dir)?;
        let _ = std::fs::remove_dir_all(&state_dir);
        print!("{table}");
        if let Some(path) = &args.markdown {
            write_section(path, "profile", &profile_section(&table, &versions, &args))?;
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut tiers = Vec::new();
    let mut versions = Vec::new();
    for t in &args.tiers {
        let iso = isolation(*t);
        let name = match iso {
            Isolation::Gvisor => "gvisor (runsc)",
            Isolation::Container => "container (runc)",
        };
        eprintln!("measuring {name}: {} steps through kiln, {} raw runs ...", args.steps, args.steps);
        let runtime = Runtime::locate(iso).map_err(|e| anyhow!("{e}"))?;
        let info = runtime.verify(&state_dir.join("probe")).map_err(|e| anyhow!("{e}"))?;
        versions.push(format!("{name}: {}", info.version.lines().next().unwrap_or("").trim()));
        tiers.push(measure_tier(&rt, name, iso, &runtime, args.steps, &state_dir)?);
    }
    if let Some(name) = &args.image {
        let section = rt.block_on(image_bench(name, &args, &state_dir))?;
        print!("{section}");
        if let Some(path) = &args.markdown {
            write_section(path, "images", &section)?;
        }
    }
    eprintln!("measuring the scheduler on a {}-job graph ...", args.jobs);
    drop(rt);
    let sched = scheduler_overhead(args.jobs)?;
    let _ = std::fs::remove_dir_all(&state_dir);

    let table = render(&tiers, &sched, &args);
    print!("{table}");
    if let Some(path) = &args.markdown {
        let section = markdown_section(&table, &versions, &args);
        write_section(path, "engine", &section)?;
    }
    Ok(())
}

fn measure_tier(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    iso: Isolation,
    runtime: &Runtime,
    steps: usize,
    dir: &std::path::Path,
) -> anyhow::Result<TierResult> {
    let ws =
        Workspace::create(&dir.join("raw-ws"), 64 << 20, STEP_UID, STEP_GID).map_err(|e| anyhow!("{e}"))?;
    let plan = Arc::new(
        kiln_workflow::load(
            "bench.yml",
            "jobs:\n  bench:\n    steps:\n      - run: echo ready\n        shell: sh\n",
        )
        .map_err(|e| anyhow!("{e}"))?,
    );
    let mut result = TierResult {
        tier: name,
        kiln: Vec::new(),
        raw: Vec::new(),
        in_phase: Vec::new(),
        job_phase: Vec::new(),
        job_per_step: Vec::new(),
    };
    // One warm-up of each, not counted (page cache, runtime binaries).
    for i in 0..=steps {
        let raw = raw_start(runtime, &ws, dir, i)?;
        let kiln = rt.block_on(kiln_start(plan.clone(), iso, runtime.clone(), dir, i, true, Vec::new()))?;
        if i > 0 {
            result.raw.push(raw);
            result.kiln.push(kiln[0]);
        }
    }
    // Steps after the first of one job: each starts in the running phase
    // sandbox the first one opened.
    let many =
        Arc::new(kiln_workflow::load("bench.yml", &steps_workflow(steps + 1)).map_err(|e| anyhow!("{e}"))?);
    let lat = rt.block_on(kiln_start(many, iso, runtime.clone(), dir, steps + 1, true, Vec::new()))?;
    result.in_phase = lat.into_iter().skip(1).collect();
    // A job of several steps end to end, both ways, interleaved.
    let job =
        Arc::new(kiln_workflow::load("bench.yml", &steps_workflow(JOB_STEPS)).map_err(|e| anyhow!("{e}"))?);
    for i in 0..=JOB_RUNS {
        for phase in [true, false] {
            let t0 = Instant::now();
            rt.block_on(kiln_start(
                job.clone(),
                iso,
                runtime.clone(),
                dir,
                steps + 2 + 2 * i + phase as usize,
                phase,
                Vec::new(),
            ))?;
            let secs = t0.elapsed().as_secs_f64();
            if i > 0 {
                if phase { &mut result.job_phase } else { &mut result.job_per_step }.push(secs);
            }
        }
    }
    ws.destroy().map_err(|e| anyhow!("{e}"))?;
    Ok(result)
}

/// Seconds from spawning the runtime on a ready bundle to its first byte.
fn raw_start(runtime: &Runtime, ws: &Workspace, dir: &std::path::Path, i: usize) -> anyhow::Result<f64> {
    let spec = SandboxSpec {
        id: format!("kiln-bench-raw-{}-{i}", std::process::id()),
        argv: vec!["sh".into(), "-c".into(), "echo ready".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/workspace".into(),
        workspace: ws.path().to_path_buf(),
        binds: vec![],
        limits: kiln_engine::limits::StepLimits::default().sandbox_limits(),
        uid: STEP_UID,
        gid: STEP_GID,
        init: None,
        root: None,
    };
    let bundle = dir.join(format!("raw-{i}"));
    std::fs::create_dir_all(&bundle)?;
    let sb = Sandbox::prepare(runtime, &spec, &bundle).map_err(|e| anyhow!("{e}"))?;
    let mut cmd = sb.command();
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    let mut byte = [0u8; 1];
    let mut stdout = child.stdout.take().expect("piped");
    let n = stdout.read(&mut byte)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let status = child.wait()?;
    sb.finish(status).map_err(|e| anyhow!("{e}"))?;
    let _ = std::fs::remove_dir_all(&bundle);
    if n == 0 {
        return Err(anyhow!("the raw runtime printed nothing"));
    }
    Ok(elapsed)
}

/// A job of `n` steps that each print one line.
fn steps_workflow(n: usize) -> String {
    let mut y = String::from("jobs:\n  bench:\n    runs-on: ubuntu-latest\n    steps:\n");
    for i in 0..n {
        y.push_str(&format!("      - run: echo ready {i}\n        shell: sh\n"));
    }
    y
}

/// Per step of the plan's one job, seconds from the engine's step decision
/// to the step's first output line.
async fn kiln_start(
    plan: Arc<kiln_workflow::Plan>,
    iso: Isolation,
    runtime: Runtime,
    dir: &std::path::Path,
    i: usize,
    phase_sandboxes: bool,
    images: Vec<kiln_engine::runner::sandbox::ImageChoice>,
) -> anyhow::Result<Vec<f64>> {
    let build = format!("bench-{}-{i}", std::process::id());
    let cfg = runner_config(&build, iso, runtime, dir, phase_sandboxes, images)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let emitter = Emitter::new(&build, Some(tx), None);
    let (_cancel_tx, cancel_rx) = watch::channel(false);
    let opts = BuildOptions::new(build.clone(), 1, serde_json::json!({}), serde_json::json!({}));
    let watcher = tokio::spawn(async move {
        let mut started = None;
        let mut latencies = Vec::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::StepStarted { .. } => started = Some(Instant::now()),
                Event::Log(e) if e.stream == Stream::Stdout => {
                    if let Some(a) = started.take() {
                        latencies.push(a.elapsed().as_secs_f64());
                    }
                }
                _ => {}
            }
        }
        latencies
    });
    let summary =
        kiln_engine::run_build(plan, Arc::new(SandboxRunner::new(cfg)), opts, emitter, cancel_rx).await;
    let latency = watcher.await?;
    if summary.status != "succeeded" {
        return Err(anyhow!("bench step failed: {:?}", summary.jobs.first().and_then(|j| j.reason.clone())));
    }
    if latency.is_empty() {
        return Err(anyhow!("no output seen from the bench steps"));
    }
    Ok(latency)
}

/// The engine's sandbox runner for bench build `build` on one tier: no
/// secrets, no network, no source, a 64 MiB job disk.
pub(crate) fn runner_config(
    build: &str,
    iso: Isolation,
    runtime: Runtime,
    dir: &std::path::Path,
    phase_sandboxes: bool,
    images: Vec<kiln_engine::runner::sandbox::ImageChoice>,
) -> anyhow::Result<SandboxRunnerConfig> {
    let mut runtimes = HashMap::new();
    runtimes.insert(TierKey::of(iso), runtime);
    let limits = kiln_engine::limits::StepLimits { disk_bytes: 64 << 20, ..Default::default() };
    Ok(SandboxRunnerConfig {
        build_dir: dir.join(build),
        source: None,
        source_skip: vec![],
        isolation: iso,
        runtimes,
        limits,
        init: kiln_engine::runner::sandbox::locate_init().map_err(|e| anyhow!(e))?,
        secrets: Arc::new(Vec::new()),
        scrubber: Arc::new(kiln_secrets::Scrubber::new(&[], &kiln_secrets::PatternSet::builtin())),
        egress: kiln_engine::runner::sandbox::EgressConfig::new(Vec::new(), 1 << 30),
        artifacts: None,
        default_network: kiln_workflow::NetworkSpec::None,
        refuse_uploaders: false,
        phase_sandboxes,
        images,
        tools: None,
        image_store: None,
    })
}

/// Jobs on an image against jobs on the host's `/usr`, per tier, and what
/// extracting the image costs.
async fn image_bench(name: &str, args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<String> {
    let store = crate::image::store(&args.state)?;
    let image = kiln_image::resolve(&store, name).await?;
    let size: u64 = image.manifest.layers.iter().map(|l| l.size).sum();
    eprintln!("measuring image {name}: extracting it, then jobs on it ...");
    let images_dir = dir.join("images");
    let t0 = Instant::now();
    let root = kiln_image::materialize(&store, &image, &images_dir).await?;
    let extract = t0.elapsed().as_secs_f64();
    let choice = kiln_engine::runner::sandbox::ImageChoice {
        pattern: "ubuntu-*".into(),
        name: name.into(),
        found: Some((image.digest, root)),
        env: image.manifest.source.env().to_vec(),
    };
    let job =
        Arc::new(kiln_workflow::load("bench.yml", &steps_workflow(JOB_STEPS)).map_err(|e| anyhow!("{e}"))?);
    let mut rows = String::new();
    for t in &args.tiers {
        let iso = isolation(*t);
        let runtime = Runtime::locate(iso).map_err(|e| anyhow!("{e}"))?;
        let (mut host, mut on_image) = (Vec::new(), Vec::new());
        for i in 0..=JOB_RUNS {
            for with_image in [false, true] {
                let images = if with_image { vec![choice.clone()] } else { Vec::new() };
                let t0 = Instant::now();
                kiln_start(
                    job.clone(),
                    iso,
                    runtime.clone(),
                    dir,
                    10_000 + 2 * i + with_image as usize,
                    true,
                    images,
                )
                .await?;
                if i > 0 {
                    if with_image { &mut on_image } else { &mut host }.push(t0.elapsed().as_secs_f64());
                }
            }
        }
        let (h, m) = (percentile(&host, 0.5), percentile(&on_image, 0.5));
        let tier = match iso {
            Isolation::Gvisor => "gvisor (runsc)",
            Isolation::Container => "container (runc)",
        };
        rows.push_str(&format!(
            "| {tier} | {} | {} | {:.2}x |\n",
            ms(h),
            ms(m),
            if h > 0.0 { m / h } else { 0.0 }
        ));
    }
    let _ = std::fs::remove_dir_all(&images_dir);
    Ok(format!(
        "## Images: a job on an image against the host's /usr\n\n\
         Produced by (as root, after `scripts/install.sh`, which builds `{name}`):\n\n\
         ```sh\n./target/release/kiln bench --steps {} --image {name} --markdown docs/benchmarks.md\n```\n\n\
         Image {name} ({}, one {:.0} MiB layer, {} packages): read back verified from the store and \
         extracted beneath a fresh directory in {:.1} s (once per state dir).\n\n\
         A job of {JOB_STEPS} steps end to end ({JOB_RUNS} runs each, interleaved; median wall time). On \
         the image the job also mounts its writable root (an overlay over the image on its disk) and \
         prepares it.\n\n\
         | tier | host /usr | on the image | ratio |\n| --- | ---: | ---: | ---: |\n{rows}",
        args.steps,
        image.digest,
        size as f64 / (1 << 20) as f64,
        image.manifest.packages.len(),
        extract,
    ))
}

/// A runner that does nothing: the loop's own cost.
#[derive(Debug)]
struct NoopRunner;

impl JobRunner for NoopRunner {
    async fn run_job(&self, _req: JobRequest) -> JobOutcome {
        JobOutcome::new(JobResult::Success)
    }
}

#[derive(Debug)]
struct SchedResult {
    jobs: usize,
    edges: usize,
    load_secs: f64,
    /// The loop on the multi-threaded runtime `kiln run` uses: each job is
    /// a task a worker thread runs, so every job costs a hand-off between
    /// threads and back.
    run_secs: f64,
    /// The same loop on one thread: its own work, without the hand-offs.
    one_thread_secs: f64,
}

/// A layered graph: 100 jobs a layer, each needing two of the layer before.
pub fn layered_workflow(jobs: usize) -> (String, usize) {
    let width = 100.min(jobs.max(1));
    let mut y = String::from("name: scheduler-bench\njobs:\n");
    let mut edges = 0;
    for j in 0..jobs {
        y.push_str(&format!("  j{j}:\n"));
        if j >= width {
            let layer_start = (j / width - 1) * width;
            let a = layer_start + (j % width);
            let b = layer_start + ((j + 1) % width);
            y.push_str(&format!("    needs: [j{a}, j{b}]\n"));
            edges += 2;
        }
        y.push_str("    steps:\n      - run: \"true\"\n");
    }
    (y, edges)
}

/// Parses and plans the layered graph, then runs it with a runner that
/// does nothing, on the multi-threaded runtime and on one thread.
fn scheduler_overhead(jobs: usize) -> anyhow::Result<SchedResult> {
    let (yaml, edges) = layered_workflow(jobs);
    let t0 = Instant::now();
    let plan = Arc::new(kiln_workflow::load("bench.yml", &yaml).map_err(|e| anyhow!("{e}"))?);
    let load_secs = t0.elapsed().as_secs_f64();
    let multi = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Awaited from `block_on`, as `kiln run` awaits a build.
    let run_secs = multi.block_on(run_graph(plan.clone(), jobs))?;
    drop(multi);
    let one = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let one_thread_secs = one.block_on(run_graph(plan, jobs))?;
    Ok(SchedResult { jobs, edges, load_secs, run_secs, one_thread_secs })
}

async fn run_graph(plan: Arc<kiln_workflow::Plan>, jobs: usize) -> anyhow::Result<f64> {
    let emitter = Emitter::new("bench", None, None);
    let (_tx, rx) = watch::channel(false);
    let opts = BuildOptions::new(
        "bench".into(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        serde_json::json!({}),
        serde_json::json!({}),
    );
    let t1 = Instant::now();
    let summary = kiln_engine::run_build(plan, Arc::new(NoopRunner), opts, emitter, rx).await;
    let secs = t1.elapsed().as_secs_f64();
    if summary.status != "succeeded" || summary.jobs.len() != jobs {
        return Err(anyhow!(
            "scheduler bench: {} of {jobs} jobs, status {}",
            summary.jobs.len(),
            summary.status
        ));
    }
    Ok(secs)
}

/// Replaces the `name` section of a Markdown results page (between
/// `<!-- bench:name -->` markers), creating the page or the section if needed,
/// so each benchmark updates its own part of `docs/benchmarks.md`.
pub fn write_section(path: &std::path::Path, name: &str, body: &str) -> anyhow::Result<()> {
    let (open, close) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let block = format!("{open}\n{}\n{close}", body.trim_end());
    let page = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let page = match (page.find(&open), page.find(&close)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &page[..a], &page[b + close.len()..]),
        _ => format!("{}\n{block}\n", page.trim_end()),
    };
    std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))
}

/// The engine's results: how they were produced, on what, and the tables.
fn markdown_section(table: &str, versions: &[String], args: &BenchArgs) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let tiers: Vec<&str> = args
        .tiers
        .iter()
        .map(|t| match t {
            crate::cli::IsolationArg::Gvisor => "gvisor",
            crate::cli::IsolationArg::Container => "container",
        })
        .collect();
    format!(
        "## Engine: step start latency and scheduler overhead\n\nProduced by (as root, from the repository root, after `scripts/install.sh`):\n\n\
         ```sh\n./target/release/kiln bench --steps {} --jobs {} --tiers {} --markdown docs/benchmarks.md\n```\n\n\
         Machine: {cpus} CPUs, {:.0} GiB memory, Linux {}; {}; kiln {} (release build).\n\n\
         Each tier's kiln and raw-runtime measurements alternate one for one in the same run, so the \
         ratio compares numbers taken under the same load. The scheduler figure uses a runner that \
         does nothing, so it is the build loop's own cost per job (ready-set upkeep, `if` evaluation, \
         contexts, events).\n\n{table}",
        args.steps,
        args.jobs,
        tiers.join(","),
        mem_kib as f64 / (1024.0 * 1024.0),
        kernel.trim(),
        versions.join("; "),
        env!("CARGO_PKG_VERSION"),
    )
}

/// The profile's results: how they were produced, on what, and the table.
fn profile_section(table: &str, versions: &[String], args: &BenchArgs) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let platforms: Vec<&str> =
        args.platforms.iter().map(|p| kiln_sandbox::GvisorPlatform::from(*p).name()).collect();
    format!(
        "## Sandboxes: where a step's time goes\n\nProduced by (as root, from the repository root, after `scripts/install.sh`):\n\n\
         ```sh\n./target/release/kiln bench --profile --rounds {} --platforms {} --markdown docs/benchmarks.md\n```\n\n\
         Machine: {cpus} CPUs, Linux {}; {}. One step (a Python probe, on the host's `/usr`) through the \
         engine per configuration and round, the configurations alternating; each cell is the median of the \
         rounds' medians. Fork, spawn and Node rows are per process started, the page-fault row per MiB of \
         fresh memory touched.\n\n{table}",
        args.rounds,
        platforms.join(","),
        kernel.trim(),
        versions.join("; "),
    )
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if s.is_empty() {
        return 0.0;
    }
    let idx = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[idx]
}

fn ms(s: f64) -> String {
    format!("{:.1} ms", s * 1000.0)
}

fn render(tiers: &[TierResult], s: &SchedResult, args: &BenchArgs) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "Step start latency ({} steps per tier; scheduler decision -> first output byte)\n\n",
        args.steps
    ));
    t.push_str("| tier | kiln median | kiln p99 | raw runtime median | raw runtime p99 | median ratio | kiln adds |\n");
    t.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in tiers {
        let (km, kp) = (percentile(&r.kiln, 0.5), percentile(&r.kiln, 0.99));
        let (rm, rp) = (percentile(&r.raw, 0.5), percentile(&r.raw, 0.99));
        let ratio = if rm > 0.0 { km / rm } else { 0.0 };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2}x | {:+.0}% |\n",
            r.tier,
            ms(km),
            ms(kp),
            ms(rm),
            ms(rp),
            ratio,
            (ratio - 1.0) * 100.0
        ));
    }
    t.push_str(
        "\nA step in a running phase sandbox (the job's later steps: started by the sandbox's agent, no new sandbox)\n\n",
    );
    t.push_str(
        "| tier | median | p99 | vs a step in a new sandbox (median) |\n| --- | ---: | ---: | ---: |\n",
    );
    for r in tiers {
        let (m, p) = (percentile(&r.in_phase, 0.5), percentile(&r.in_phase, 0.99));
        let km = percentile(&r.kiln, 0.5);
        t.push_str(&format!(
            "| {} | {} | {} | {:.2}x |\n",
            r.tier,
            ms(m),
            ms(p),
            if km > 0.0 { m / km } else { 0.0 }
        ));
    }
    t.push_str(&format!(
        "\nA job of {JOB_STEPS} steps end to end ({JOB_RUNS} runs each, interleaved; median wall time)\n\n"
    ));
    t.push_str(
        "| tier | one sandbox per phase | one sandbox per step | ratio |\n| --- | ---: | ---: | ---: |\n",
    );
    for r in tiers {
        let (ph, ps) = (percentile(&r.job_phase, 0.5), percentile(&r.job_per_step, 0.5));
        t.push_str(&format!(
            "| {} | {} | {} | {:.2}x |\n",
            r.tier,
            ms(ph),
            ms(ps),
            if ps > 0.0 { ph / ps } else { 0.0 }
        ));
    }
    t.push('\n');
    t.push_str(&render_scheduler(s));
    t
}

fn render_scheduler(s: &SchedResult) -> String {
    let mut t =
        format!("Scheduler overhead ({} jobs, {} edges, a runner that does nothing)\n\n", s.jobs, s.edges);
    t.push_str("| measure | total | per job |\n| --- | ---: | ---: |\n");
    let per = |x: f64| format!("{:.1} µs", x * 1e6 / s.jobs as f64);
    t.push_str(&format!("| parse + validate + plan | {} | {} |\n", ms(s.load_secs), per(s.load_secs)));
    t.push_str(&format!(
        "| Kahn loop (schedule, start, finish), multi-threaded runtime | {} | {} |\n",
        ms(s.run_secs),
        per(s.run_secs)
    ));
    t.push_str(&format!(
        "| Kahn loop, one thread (the loop's own work) | {} | {} |\n",
        ms(s.one_thread_secs),
        per(s.one_thread_secs)
    ));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.md");
        write_section(&p, "a", "first").unwrap();
        write_section(&p, "b", "other").unwrap();
        write_section(&p, "a", "second").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("# Benchmarks"));
        assert!(text.contains("second") && text.contains("other") && !text.contains("first"));
        assert!(text.find("second").unwrap() < text.find("other").unwrap());
    }

    #[test]
    fn layered_graph_has_expected_edges() {
        let (_, edges) = layered_workflow(300);
        assert_eq!(edges, 400);
    }
}
