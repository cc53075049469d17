//! `kiln bench-serve`: a load test of the control plane with real builds.
//!
//! Starts `kiln serve` in this process on a scratch state dir (or uses
//! `--state-dir`), creates `--tenants` tenants, and has `--clients` threads
//! submit `--builds` builds of one trivial step, round robin over the
//! tenants, each with its own `Idempotency-Key`. While they run, a probe
//! thread times `GET /v1/builds` (the API under load). At the end it checks
//! that every build finished exactly once (one build per key, one attempt
//! each, one usage record each) and reports queue wait p50/p99, dispatch
//! throughput and API latencies.
//!
//! With `--replicas N` (PostgreSQL only), N servers share the database,
//! each with its own state dir (the first's keys copied to the others, as
//! an operator adds a replica); the in-process workers are spread over
//! them, clients submit to them in turn (as behind a load balancer), and
//! each live log is followed on a replica other than the one submitted to.

use crate::exit::Exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use kiln_server::db::{ControlDb, Principal};
use serde_json::{json, Value};

use crate::cli::IsolationArg;
use crate::run::isolation;

#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// Builds to submit.
    #[arg(long, default_value_t = 1000)]
    pub builds: usize,
    /// Tenants the builds are spread over.
    #[arg(long, default_value_t = 4)]
    pub tenants: usize,
    /// In-process workers (in all: spread over the replicas).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// `kiln serve` replicas sharing the database (more than one needs
    /// `--database`).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Threads submitting at once.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    #[arg(long, value_enum, default_value = "gvisor")]
    pub isolation: IsolationArg,
    /// Write the results as Markdown to this file as well.
    #[arg(long)]
    pub markdown: Option<std::path::PathBuf>,
    /// State dir (default: a fresh scratch dir, removed afterwards).
    #[arg(long)]
    pub state_dir: Option<std::path::PathBuf>,
    /// After the load, builds run one at a time on the idle server while a
    /// client follows each one's live log (SSE): how long from submit to
    /// the first log event, and from a line's engine timestamp to its
    /// arrival at the client.
    #[arg(long, default_value_t = 20)]
    pub live_logs: usize,
    /// The control database: a `postgres://` URL, or `postgres` for a
    /// throwaway cluster this command starts (initdb on loopback). Default:
    /// SQLite in the state dir.
    #[arg(long)]
    pub database: Option<String>,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v
}

struct Client {
    agent: ureq::Agent,
    /// One URL per replica.
    urls: Vec<String>,
}

impl Client {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        self.call_at(0, method, path, token, body, key)
    }

    /// A call to replica `i` (modulo the replicas).
    fn call_at(
        &self,
        i: usize,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.urls[i % self.urls.len()]);
        let auth = format!("Bearer {token}");
        let mut resp = match method {
            "GET" => self.agent.get(&url).header("Authorization", &auth).call(),
            _ => {
                let mut r = self.agent.post(&url).header("Authorization", &auth);
                if let Some(k) = key {
                    r = r.header("Idempotency-Key", k);
                }
                r.send_json(body.cloned().unwrap_or(json!({})))
            }
        }
        .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let v = resp.body_mut().with_config().limit(1 << 30).read_json::<Value>().unwrap_or(Value::Null);
        Ok((status, v))
    }
}

pub fn bench_serve(args: BenchServeArgs) -> Exit {
    match run(args) {
        Ok(()) => Exit::Ok,
        Err(e) => crate::run::report_error(&e),
    }
}

fn run(args: BenchServeArgs) -> anyhow::Result<()> {
    let scratch = args.state_dir.is_none();
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        std::env::temp_dir().join(format!("kiln-bench-serve-{nanos}"))
    });
    let cluster = match args.database.as_deref() {
        Some("postgres") => Some(kiln_server::pgcluster::LocalCluster::start().map_err(|e| anyhow!("{e}"))?),
        _ => None,
    };
    let database = match &cluster {
        Some(c) => Some(c.database("kiln").map_err(|e| anyhow!("{e}"))?),
        None => args.database.clone(),
    };
    let tenants: Vec<(String, String)> = {
        let db = ControlDb::connect(database.as_deref(), &state_dir).map_err(|e| anyhow!("{e}"))?;
        (0..args.tenants.max(1))
            .map(|i| {
                let name = format!("bench-{i}");
                db.upsert_tenant(&name, "team").map_err(|e| anyhow!("{e}"))?;
                let p = Principal { tenant: Some(name.clone()), operator: false, worker: false };
                Ok((name, kiln_server::Core::admin_token(&db, &p).map_err(|e| anyhow!("{e}"))?))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let replicas = args.replicas.max(1);
    if replicas > 1 && database.is_none() {
        bail!("--replicas {replicas} share a PostgreSQL database: give --database");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut servers = Vec::new();
    let mut stops = Vec::new();
    let mut urls = Vec::new();
    for r in 0..replicas {
        // Replica 0 keeps the state dir; the others get their own beside it.
        let dir = if r == 0 { state_dir.clone() } else { state_dir.join(format!("replica-{r}")) };
        if r > 0 {
            kiln_server::replicate::copy_shared_keys(&state_dir, &dir).context("the replica's keys")?;
        }
        let mut cfg = kiln_server::ServerConfig::new(dir);
        cfg.workers = args.workers / replicas + usize::from(r < args.workers % replicas);
        cfg.isolation = isolation(args.isolation);
        cfg.database = database.clone();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        urls.push(format!("http://{}", listener.local_addr()?));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let server = rt.spawn(kiln_server::serve(
            cfg,
            listener,
            async {
                let _ = stop_rx.await;
            },
            move || {
                let _ = ready_tx.send(());
            },
        ));
        // Ready: its databases open and its keys made (the next replica
        // copies them). The engine proves the runtime first.
        if ready_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            let why = if server.is_finished() {
                match rt.block_on(server) {
                    Ok(Err(e)) => e.to_string(),
                    _ => "it stopped".into(),
                }
            } else {
                "not ready in 120 s".into()
            };
            bail!("replica {r} did not come up: {why}");
        }
        servers.push(server);
        stops.push(stop_tx);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let client = Arc::new(Client { agent, urls });

    let workflow = "jobs:\n  noop:\n    steps:\n      - run: \"true\"\n";
    let n = args.builds;
    let next = Arc::new(Mutex::new(0usize));
    let submit_lat = Arc::new(Mutex::new(Vec::new()));
    let ids = Arc::new(Mutex::new(Vec::<(usize, String, String)>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let probe_lat = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let probe = {
        let (client, done, lat, token) =
            (client.clone(), done.clone(), probe_lat.clone(), tenants[0].1.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                if client.call("GET", "/v1/builds?limit=20", &token, None, None).is_ok() {
                    lat.lock().unwrap_or_else(|e| e.into_inner()).push(t.elapsed().as_secs_f64());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let submitters: Vec<_> = (0..args.clients.max(1))
        .map(|_| {
            let (client, next, lat, ids, tenants) =
                (client.clone(), next.clone(), submit_lat.clone(), ids.clone(), tenants.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                loop {
                    let i = {
                        let mut g = next.lock().unwrap_or_else(|e| e.into_inner());
                        if *g >= n {
                            return Ok(());
                        }
                        *g += 1;
                        *g - 1
                    };
                    let (tenant, token) = &tenants[i % tenants.len()];
                    let key = format!("bench-{i}");
                    let t = Instant::now();
                    let (status, v) = client.call_at(
                        i,
                        "POST",
                        "/v1/builds",
                        token,
                        Some(&json!({"workflow": workflow})),
                        Some(&key),
                    )?;
                    lat.lock().unwrap_or_else(|e| e.into_inner()).push(t.elapsed().as_secs_f64());
                    if status != 201 {
                        bail!("submit {i}: {status} {v}");
                    }
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    ids.lock().unwrap_or_else(|e| e.into_inner()).push((i, tenant.clone(), id));
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().map_err(|_| anyhow!("a submitter panicked"))??;
    }
    let submitted_in = t0.elapsed().as_secs_f64();
    eprintln!("submitted {n} builds in {submitted_in:.1} s; waiting for them to finish");

    // Wait until every tenant's builds are final.
    let mut usage: Vec<Value> = Vec::new();
    loop {
        let mut finished = 0;
        usage.clear();
        for (_, token) in &tenants {
            let (_, v) = client.call("GET", "/v1/usage", token, None, None)?;
            let rows = v["usage"].as_array().cloned().unwrap_or_default();
            finished += rows.len();
            usage.extend(rows);
        }
        if finished >= n {
            break;
        }
        eprint!("\r{finished}/{n} finished ({:.0} s)   ", t0.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!();
    let total = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = probe.join();

    // Exactly once: one build per key, every build final and succeeded,
    // one attempt each, one usage record each.
    let ids = ids.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut distinct: Vec<&String> = ids.iter().map(|(_, _, id)| id).collect();
    distinct.sort();
    distinct.dedup();
    let mut usage_ids: Vec<&str> = usage.iter().filter_map(|u| u["build"].as_str()).collect();
    usage_ids.sort();
    let usage_dups = usage_ids.len() - {
        let mut u = usage_ids.clone();
        u.dedup();
        u.len()
    };
    let succeeded = usage.iter().filter(|u| u["status"] == "succeeded").count();
    let retried = usage.iter().filter(|u| u["attempts"].as_i64() != Some(1)).count();
    let lost = distinct.iter().filter(|id| usage_ids.binary_search(&id.as_str()).is_err()).count();
    // Queue waits and the dispatch window from the per-build records.
    let waits = sorted(usage.iter().filter_map(|u| u["queue_wait_seconds"].as_f64()).collect());
    let walls = sorted(usage.iter().filter_map(|u| u["wall_seconds"].as_f64()).collect());
    let submit_lat = sorted(submit_lat.lock().unwrap_or_else(|e| e.into_inner()).clone());
    let probe_lat = sorted(probe_lat.lock().unwrap_or_else(|e| e.into_inner()).clone());
    let throughput = n as f64 / total;
    // The control plane's own dispatch cost: per worker, the gap between
    // the end of one build and the lease of its next one (while builds
    // were waiting, which they were throughout).
    let mut per_worker: std::collections::BTreeMap<String, Vec<(i64, i64)>> = Default::default();
    for (_, tenant, id) in &ids {
        let token =
            &tenants.iter().find(|(t, _)| t == tenant).map(|(_, tok)| tok.clone()).unwrap_or_default();
        let (_, b) = client.call("GET", &format!("/v1/builds/{id}"), token, None, None)?;
        let at = |state: &str| {
            b["transitions"]
                .as_array()
                .and_then(|ts| ts.iter().rev().find(|t| t["state"] == state))
                .and_then(|t| t["at_ms"].as_i64())
        };
        if let (Some(w), Some(lease), Some(end)) =
            (b["worker"].as_str(), at("provisioning"), b["finished_ms"].as_i64())
        {
            per_worker.entry(w.to_string()).or_default().push((lease, end));
        }
    }
    let mut gaps = Vec::new();
    for runs in per_worker.values_mut() {
        runs.sort();
        for w in runs.windows(2) {
            gaps.push((w[1].0 - w[0].1).max(0) as f64 / 1000.0);
        }
    }
    let gaps = sorted(gaps);

    let live = live_logs(&client, &tenants[0].1, args.live_logs)?;

    for stop in stops {
        let _ = stop.send(());
    }
    for server in servers {
        let _ = rt.block_on(server);
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    if scratch {
        let _ = std::fs::remove_dir_all(&state_dir);
    }

    let iso = match args.isolation {
        IsolationArg::Gvisor => "gvisor",
        IsolationArg::Container => "container",
    };
    let ms = |s: f64| format!("{:.1} ms", s * 1000.0);
    let report = format!(
        "`kiln bench-serve --builds {n} --tenants {} --workers {} --clients {} --isolation {iso}{}{}` \
         (one `run: \"true\"` step per build; {}, workers and clients on this machine, {} CPUs; \
         control database: {})\n\n\
         | measure | value |\n| --- | --- |\n\
         | builds submitted / distinct ids / finished / succeeded | {n} / {} / {} / {succeeded} |\n\
         | lost / duplicate usage records / builds retried | {lost} / {usage_dups} / {retried} |\n\
         | wall time, first submit to last finish | {total:.1} s |\n\
         | dispatch throughput (builds finished per second) | {throughput:.2} |\n\
         | dispatch gap p50 / p99 (a worker's build ends → its next build leased) | {} / {} |\n\
         | queue wait p50 / p99 / max | {:.1} s / {:.1} s / {:.1} s |\n\
         | build run time p50 / p99 | {} / {} |\n\
         | submit latency p50 / p99 (POST /v1/builds, {} clients) | {} / {} |\n\
         | list latency under load p50 / p99 (GET /v1/builds) | {} / {} |\n\
         | live log, idle server ({} builds{}): submit → first log event p50 / p99 | {} / {} |\n\
         | live log, idle server: a line's engine timestamp → at the client p50 / p99 | {} / {} |\n",
        args.tenants,
        args.workers,
        args.clients,
        if cluster.is_some() { " --database postgres" } else { "" },
        if replicas > 1 { format!(" --replicas {replicas}") } else { String::new() },
        if replicas > 1 { format!("{replicas} server replicas") } else { "server".to_string() },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        if database.is_some() { "PostgreSQL" } else { "SQLite" },
        distinct.len(),
        usage.len(),
        ms(pct(&gaps, 0.5)),
        ms(pct(&gaps, 0.99)),
        pct(&waits, 0.5),
        pct(&waits, 0.99),
        waits.last().copied().unwrap_or(0.0),
        ms(pct(&walls, 0.5)),
        ms(pct(&walls, 0.99)),
        args.clients,
        ms(pct(&submit_lat, 0.5)),
        ms(pct(&submit_lat, 0.99)),
        ms(pct(&probe_lat, 0.5)),
        ms(pct(&probe_lat, 0.99)),
        live.first.len(),
        if replicas > 1 { ", each followed on a replica other than the one submitted to" } else { "" },
        ms(pct(&live.first, 0.5)),
        ms(pct(&live.first, 0.99)),
        ms(pct(&live.lag, 0.5)),
        ms(pct(&live.lag, 0.99)),
    );
    println!("{report}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    if lost > 0 || usage_dups > 0 || distinct.len() != n || succeeded != n {
        bail!("not every build ran exactly once and succeeded");
    }
    Ok(())
}

/// What following builds' live logs measured (seconds, sorted).
struct LiveLogs {
    /// Submit → the first `log` event at the client.
    first: Vec<f64>,
    /// A line's engine timestamp → its arrival at the client (every line).
    lag: Vec<f64>,
}

/// Runs `n` builds one after another, following each one's log over SSE
/// from right after its submit until its `end` event.
fn live_logs(client: &Client, token: &str, n: usize) -> anyhow::Result<LiveLogs> {
    use std::io::BufRead;
    let workflow = "jobs:\n  live:\n    steps:\n      - run: echo one; sleep 0.3; echo two\n";
    let (mut first, mut lag) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t0 = Instant::now();
        let key = format!("live-{i}");
        let (status, v) = client.call_at(
            i,
            "POST",
            "/v1/builds",
            token,
            Some(&json!({"workflow": workflow})),
            Some(&key),
        )?;
        if status != 201 {
            bail!("submit live-{i}: {status} {v}");
        }
        let id = v["id"].as_str().unwrap_or_default().to_string();
        // Followed on the next replica (the same one when there is one).
        let url = format!("{}/v1/builds/{id}/logs", client.urls[(i + 1) % client.urls.len()]);
        let resp = client
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .header("Accept", "text/event-stream")
            .call()
            .with_context(|| format!("GET {url}"))?;
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        let mut event = String::new();
        let mut seen_first = false;
        for line in reader.lines() {
            let line = line.context("reading the log stream")?;
            let arrived = std::time::SystemTime::now();
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data:") {
                if event == "end" {
                    break;
                }
                if event != "log" {
                    continue;
                }
                if !seen_first {
                    seen_first = true;
                    first.push(t0.elapsed().as_secs_f64());
                }
                let l: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                if let Some(ts) = l["ts"].as_str().and_then(kiln_engine::time::parse_rfc3339) {
                    if let Ok(d) = arrived.duration_since(ts) {
                        lag.push(d.as_secs_f64());
                    }
                }
            }
        }
    }
    Ok(LiveLogs { first: sorted(first), lag: sorted(lag) })
}
