//! `kiln build`: the zero-config pipeline. It is an ordinary workflow that
//! kiln writes (print it with `--print-workflow`): fetch → detect → the
//! dependency cache → install → build → package, one job whose steps each run
//! in their own sandbox with their phase's network. The host side of detect
//! and package reads files; it never runs what the repository contains.

use crate::exit::Exit;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use kiln_engine::{BuildRequest, Executor};
use serde_json::{json, Value};

use kiln_build::pipeline::{parse_source, workflow_text, PipelineOptions, Registry, Source, Submodules};

use crate::cli::{BuildArgs, LfsArg, SubmodulesArg};
use crate::run::{EngineSetup, LOCAL_TENANT};

pub fn build(args: BuildArgs) -> Exit {
    match build_inner(args) {
        Ok(code) => code,
        Err(e) => crate::run::report_error(&e),
    }
}

fn build_inner(args: BuildArgs) -> anyhow::Result<Exit> {
    let source = match parse_source(&args.source) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Exit::Invalid);
        }
    };
    // A local source that is not a directory is the user's input to fix:
    // one line, exit 2, nothing recorded.
    if let Source::Local(dir) = &source {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                eprintln!("error: {}: not a directory (give a repository URL or a directory)", dir.display());
                return Ok(Exit::Invalid);
            }
            Err(e) => {
                eprintln!("error: {}: {e}", dir.display());
                return Ok(Exit::Invalid);
            }
        }
        // Refused before anything is cloned.
        if args.submodules != SubmodulesArg::None {
            eprintln!(
                "error: --submodules with a local directory: build from the repository's https URL so submodules are fetched in a sandbox"
            );
            return Ok(Exit::Invalid);
        }
    }
    let mut registries = Vec::new();
    for spec in &args.registries {
        match Registry::parse(spec) {
            Ok(r) => registries.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(Exit::Invalid);
            }
        }
    }
    for p in &args.sparse {
        if let Err(e) = kiln_workflow::check_relative_path(p) {
            eprintln!("error: --sparse {p}: {e}");
            return Ok(Exit::Invalid);
        }
        if p.contains(char::is_whitespace) {
            eprintln!("error: --sparse {p}: paths with spaces are not supported");
            return Ok(Exit::Invalid);
        }
    }
    let opts = PipelineOptions {
        name: args.source.clone(),
        git_ref: args.git_ref.clone(),
        depth: (!args.full).then_some(args.depth),
        sparse: args.sparse.clone(),
        submodules: match args.submodules {
            SubmodulesArg::None => Submodules::None,
            SubmodulesArg::Shallow => Submodules::Shallow,
            SubmodulesArg::Recursive => Submodules::Recursive,
        },
        lfs_fetch: args.lfs == LfsArg::Fetch,
        ignore_scripts: args.ignore_scripts,
        registries: registries.clone(),
    };
    let text = workflow_text(&opts, &source);
    if args.print_workflow {
        print!("{text}");
        return Ok(Exit::Ok);
    }
    let plan = match kiln_workflow::load("kiln-build.yml", &text) {
        Ok(p) => Arc::new(p),
        Err(diags) => {
            // The pipeline is kiln's own: failing to load it is kiln's bug.
            for d in &diags.0 {
                eprintln!("error: {d}");
            }
            return Ok(Exit::Infra);
        }
    };
    let mut setup = match EngineSetup::from_args(&args.engine) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    for r in &registries {
        setup.config.registries.push(r.url.to_string());
        // A mirror the operator names is opened even on a private address.
        if let Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) = r.url.host() {
            if let Ok(addrs) = r.url.socket_addrs(|| None) {
                setup.config.allow_private.extend(addrs);
            }
        }
    }
    if let Source::Remote { host, port, plain_http: true, .. } = &source {
        // Plain http only to a private address the operator opened.
        let opened =
            setup.config.allow_private.iter().any(|a| a.port() == *port && a.ip().to_string() == *host);
        if !opened {
            eprintln!(
                "error: {}: plain http is fetched only from an address opened with --allow-private",
                args.source
            );
            return Ok(Exit::Invalid);
        }
    }
    let mut scanner = kiln_scan::Scanner::builtin();
    if let Some(sock) = &args.clamd {
        scanner =
            scanner.with_clamd(kiln_scan::Clamd::unix(sock), std::time::Duration::from_secs(args.scan_wait));
    }
    setup.config.scanner = Some(Arc::new(scanner));

    std::fs::create_dir_all(&args.engine.state.state_dir)
        .with_context(|| format!("creating {}", args.engine.state.state_dir.display()))?;
    let executor = Executor::new(setup.config.clone())?;
    // A local git repository becomes kiln's own clone first.
    let scratch = tempfile::Builder::new().prefix("source-").tempdir_in(executor.state_dir())?;
    let (source_dir, source_info) = match &source {
        Source::Local(dir) => {
            let dir =
                std::fs::canonicalize(dir).with_context(|| format!("source directory {}", dir.display()))?;
            local_source(&dir, &args, scratch.path())?
        }
        Source::Remote { url, .. } => {
            let info = kiln_engine::contexts::SourceInfo {
                repository: url.clone(),
                sha: "0".repeat(40),
                git_ref: args.git_ref.clone().unwrap_or_default(),
                event_name: "push".into(),
            };
            (scratch.path().to_path_buf(), info)
        }
    };

    let attempts = args.retries + 1;
    let mut attempt = 1;
    let (build, summary) = loop {
        let build = kiln_engine::time::new_build_id();
        let request = BuildRequest {
            build: build.clone(),
            tenant: LOCAL_TENANT.into(),
            plan: plan.clone(),
            source: source_dir.clone(),
            source_info: source_info.clone(),
            secrets: setup.secrets.clone(),
            untrusted: args.engine.untrusted,
            shared_cache: None,
        };
        let summary = crate::run::execute_with_terminal(&executor, request, args.engine.json)?;
        let infra = summary.status == "failed"
            && summary
                .jobs
                .iter()
                .any(|j| j.reason.as_deref().is_some_and(|r| r.starts_with("infrastructure")));
        if infra && attempt < attempts {
            eprintln!(
                "kiln: build {build} failed for an infrastructure reason; retrying ({}/{})",
                attempt + 1,
                attempts
            );
            attempt += 1;
            continue;
        }
        break (build, summary);
    };
    let result = finish(&args, &executor, &build, &summary, attempt)?;
    if args.engine.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        eprint!("{}", render_result(&result));
    }
    Ok(Exit::of_build(&summary.status))
}

/// The result block for a human.
fn render_result(r: &Value) -> String {
    let mut out = String::new();
    if r["attempts"].as_u64().unwrap_or(1) > 1 {
        out.push_str(&format!("attempts: {} (infrastructure failures retried)\n", r["attempts"]));
    }
    if let Some(f) = r["failure"].as_str() {
        out.push_str(&format!(
            "build {} {}: {f}\n",
            r["build"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or("")
        ));
    }
    let a = &r["artifact"];
    if a.is_object() {
        out.push_str(&format!(
            "artifact {} ({}, {} files, {} bytes): {}\n",
            a["id"].as_str().unwrap_or(""),
            a["output_type"].as_str().unwrap_or(""),
            a["files"],
            a["bytes"],
            a["status"].as_str().unwrap_or("")
        ));
        for line in a["scan"].as_array().into_iter().flatten() {
            out.push_str(&format!("  {}\n", line.as_str().unwrap_or("")));
        }
        if let Some(p) = a["provenance"].as_str() {
            out.push_str(&format!("provenance {p}\n"));
        }
    }
    let d = &r["delivery"];
    if d.is_object() {
        out.push_str(&format!(
            "notify {}: {} after {} attempt(s)\n",
            d["url"].as_str().unwrap_or(""),
            if d["delivered"] == true { "delivered" } else { "NOT delivered" },
            d["attempts"].as_array().map(|a| a.len()).unwrap_or(0)
        ));
    }
    out
}

/// Clones a local git repository (kiln's own copy: no hard links, no
/// shared objects, hardened git over the operator's directory, before any
/// step runs); a directory outside git is used as it is.
fn local_source(
    dir: &Path,
    args: &BuildArgs,
    scratch: &Path,
) -> anyhow::Result<(PathBuf, kiln_engine::contexts::SourceInfo)> {
    // Only the top of a repository is cloned; a directory inside one (an
    // example in a monorepo) is copied as it is.
    let top = kiln_engine::git::hardened_git(dir)
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let is_repo = top.and_then(|t| std::fs::canonicalize(t).ok()).is_some_and(|t| t == dir);
    if !is_repo {
        return Ok((dir.to_path_buf(), kiln_engine::git::source_info(dir)));
    }
    let target = scratch.join("src");
    let url = url::Url::from_directory_path(dir)
        .map_err(|_| anyhow!("{} is not an absolute path", dir.display()))?;
    let mut cmd = kiln_engine::git::hardened_git(scratch);
    cmd.args([
        "-c",
        "protocol.file.allow=always",
        "clone",
        "--quiet",
        "--no-local",
        "--no-hardlinks",
        "--no-tags",
    ]);
    if !args.full {
        cmd.arg(format!("--depth={}", args.depth.max(1)));
    }
    if let Some(r) = &args.git_ref {
        cmd.args(["--branch", r]);
    }
    cmd.arg("--").arg(url.as_str()).arg(&target);
    cmd.stderr(std::process::Stdio::piped());
    let out = cmd.output().context("running git")?;
    if !out.status.success() {
        return Err(anyhow!("cloning {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    let mut info = kiln_engine::git::source_info(&target);
    info.repository = format!("file://{}", dir.display());
    Ok((target, info))
}

/// What the build produced (for the terminal or `--json`), after the
/// deployment webhook when there is one.
fn finish(
    args: &BuildArgs,
    executor: &Executor,
    build: &str,
    summary: &kiln_engine::BuildSummary,
    attempts: u32,
) -> anyhow::Result<Value> {
    let store = kiln_engine::store::Store::open(executor.state_dir())?;
    let artifacts = store.artifacts(build)?;
    let mut result = json!({
        "type": "result",
        "build": build,
        "status": summary.status,
        "attempts": attempts,
    });
    if summary.status != "succeeded" {
        let logs = store.logs(build)?;
        let why = summary.jobs.iter().find(|j| j.status == "failed").map(|j| classify(j, &logs));
        result["failure"] = json!(why.unwrap_or_else(|| summary.status.clone()));
    }
    let Some(a) = artifacts.last() else {
        return Ok(result);
    };
    result["artifact"] = json!({
        "id": a.id,
        "name": a.name,
        "output_type": a.output_type,
        "files": a.files,
        "bytes": a.bytes,
        "status": a.status,
        "scan": a.scan.as_deref().map(|s| s.lines().collect::<Vec<_>>()).unwrap_or_default(),
        "provenance": a.provenance,
    });
    if let Some(url) = &args.notify {
        if summary.status == "succeeded" && a.status != "quarantined" {
            let d = notify(args, executor, build, a, url)?;
            let attempts = serde_json::to_value(&d.attempts)?;
            store.insert_delivery(
                build,
                &kiln_engine::store::DeliveryRow {
                    url: url.clone(),
                    artifact: a.id.clone(),
                    delivered: d.delivered,
                    attempts: attempts.to_string(),
                    at: kiln_engine::time::now_rfc3339(),
                },
            )?;
            result["delivery"] = json!({ "url": url, "delivered": d.delivered, "attempts": attempts });
        }
    }
    Ok(result)
}

/// `build command exited with 1` (the user's) or `infrastructure: ...`
/// (the platform's).
fn classify(j: &kiln_engine::JobSummary, logs: &[kiln_engine::LogEntry]) -> String {
    if let Some(r) = &j.reason {
        if let Some(rest) = r.strip_prefix("infrastructure error: ") {
            return format!("infrastructure: {rest}");
        }
    }
    // The step that failed: the last one whose finish line carries a
    // non-zero exit.
    let failed = logs.iter().rev().find(|l| {
        l.stream == kiln_engine::Stream::System
            && l.text.starts_with("step finished")
            && !l.text.ends_with("(exit 0)")
            && !l.step.is_empty()
    });
    match (failed, j.exit_code) {
        (Some(l), Some(c)) => format!("{} command exited with {c}", l.step),
        (Some(l), None) => format!("{}: {}", l.step, j.reason.clone().unwrap_or_else(|| "failed".into())),
        (None, _) => j.reason.clone().unwrap_or_else(|| "failed".into()),
    }
}

fn notify(
    args: &BuildArgs,
    executor: &Executor,
    build: &str,
    a: &kiln_engine::store::ArtifactRow,
    url: &str,
) -> anyhow::Result<kiln_server::notify::Delivery> {
    let key_path = args.notify_key_file.clone().unwrap_or_else(|| executor.state_dir().join("notify.key"));
    let key = kiln_server::notify::load_or_create_key(&key_path).map_err(|e| anyhow!(e))?;
    let provenance = match &a.provenance {
        Some(d) => {
            let store = executor.blob_store(LOCAL_TENANT)?;
            let digest: kiln_store::Digest = d.parse().map_err(|_| anyhow!("bad provenance digest {d}"))?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let bytes = rt.block_on(store.get_bytes(&digest, None)).map_err(|e| anyhow!("{e}"))?;
            serde_json::from_slice::<Value>(&bytes)?
        }
        None => Value::Null,
    };
    let payload = json!({
        "build": build,
        "artifact": { "id": a.id, "name": a.name, "files": a.files, "bytes": a.bytes, "status": a.status },
        "output_type": a.output_type,
        "provenance": provenance,
        "source": args.source,
    });
    let notifier = kiln_server::notify::Notifier::new(url, key).map_err(|e| anyhow!("--notify: {e}"))?;
    Ok(notifier.deliver(&payload, &format!("{build}:{}", a.id), kiln_server::notify::RetryPolicy::default()))
}

/// `kiln reproduce BUILD`: the builder, environment, commands and source a
/// user needs to rebuild by hand.
pub fn reproduce(args: crate::cli::LogsArgs) -> Exit {
    let result = (|| -> anyhow::Result<()> {
        let store = kiln_engine::store::Store::open(&args.state.state_dir)?;
        let b = store.resolve_build(&args.build)?;
        let artifacts = store.artifacts(&b.id)?;
        let blob = crate::run::open_store(&args.state)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut out = json!({ "build": b.id, "pipeline": b.pipeline, "status": b.status });
        if let Some(a) = artifacts.last() {
            let id: kiln_store::TreeDigest = a.id.parse().map_err(|_| anyhow!("bad artifact id {}", a.id))?;
            let rec = rt.block_on(blob.get_artifact_of(&id, &b.id)).map_err(|e| anyhow!("{e}"))?;
            out["builder"] = json!({ "id": kiln_engine::runner::artifacts::BUILDER_ID, "version": rec.build.builder_version });
            out["source"] = json!({ "repository": rec.source.repository, "commit": rec.source.commit, "ref": rec.source.git_ref });
            out["commands"] = json!(rec.build.commands);
            out["environment_digest"] = json!(rec.build.environment_digest);
            out["image"] = json!(rec.build.image);
            out["tools"] = json!(rec
                .build
                .tools
                .iter()
                .map(|t| json!({ "name": t.name, "uri": t.uri, "digest": t.digest.to_string() }))
                .collect::<Vec<_>>());
            out["artifact"] = json!({ "id": a.id, "output_type": a.output_type, "status": a.status });
        }
        let logs = store.logs(&b.id)?;
        let env: Vec<String> = logs
            .iter()
            .filter(|l| l.step == "detect" && l.stream == kiln_engine::Stream::System)
            .map(|l| l.text.clone())
            .collect();
        out["detected"] = json!(env);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        println!("# Rebuild {} by hand", b.id);
        if let Some(s) = out.get("source") {
            println!(
                "git clone {} src && cd src && git checkout {}",
                s["repository"].as_str().unwrap_or(""),
                s["commit"].as_str().unwrap_or("")
            );
        }
        if let Some(image) = out.get("image").and_then(Value::as_str) {
            println!("# image: {image} (`kiln image inspect {image}` lists every package)");
        }
        for t in out.get("tools").and_then(Value::as_array).into_iter().flatten() {
            println!("# tool: {} ({})", t["name"].as_str().unwrap_or(""), t["digest"].as_str().unwrap_or(""));
        }
        if let Some(bld) = out.get("builder") {
            println!(
                "# builder: {} {}",
                bld["id"].as_str().unwrap_or(""),
                bld["version"].as_str().unwrap_or("")
            );
        }
        for line in out["detected"].as_array().into_iter().flatten() {
            println!("# {}", line.as_str().unwrap_or(""));
        }
        for c in out.get("commands").and_then(Value::as_array).into_iter().flatten() {
            println!("{}", c.as_str().unwrap_or(""));
        }
        if let Some(d) = out.get("environment_digest") {
            println!("# environment digest (secrets excluded): {}", d.as_str().unwrap_or(""));
        }
        Ok(())
    })();
    crate::run::exit_status(result)
}
