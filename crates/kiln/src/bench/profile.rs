//! `kiln bench --profile`: where a step's time goes inside a sandbox, per
//! tier and per gVisor platform.
//!
//! One job of one step runs `probe.py` through the real engine on each
//! configuration (runc, and runsc on each platform asked for): the cost of
//! a system call, a file lookup, an open, a fork, a spawn, a page fault,
//! and of starting Node and npm when the host has them. Configurations
//! alternate round by round so machine noise falls on all of them alike;
//! the table reports each operation's median over the rounds and its ratio
//! to runc.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::anyhow;
use kiln_engine::runner::sandbox::SandboxRunner;
use kiln_engine::runner::Emitter;
use kiln_engine::{BuildOptions, Event, Stream};
use kiln_sandbox::{GvisorPlatform, Isolation, Runtime};
use tokio::sync::{mpsc, watch};

use super::runner_config;
use crate::cli::BenchArgs;

/// The probe a step runs (Python 3, from the job's `/usr`).
const PROBE: &str = include_str!("probe.py");

/// One configuration measured.
struct Config {
    label: String,
    iso: Isolation,
    runtime: Runtime,
}

/// The probe's results of one configuration: per operation, one median
/// per round.
type Samples = HashMap<String, Vec<f64>>;

/// The probe as a workflow of one job and one step.
fn probe_workflow() -> String {
    let mut y = String::from(
        "jobs:\n  probe:\n    runs-on: ubuntu-latest\n    steps:\n      - shell: python3 {0}\n        run: |\n",
    );
    for line in PROBE.lines() {
        y.push_str("          ");
        y.push_str(line);
        y.push('\n');
    }
    y
}

/// Measures and renders the profile table (Markdown).
pub(super) fn profile(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<(String, Vec<String>)> {
    let mut configs = Vec::new();
    let mut versions = Vec::new();
    for t in &args.tiers {
        let iso = crate::run::isolation(*t);
        let runtime = Runtime::locate(iso).map_err(|e| anyhow!("{e}"))?;
        versions.push(runtime.version().map_err(|e| anyhow!("{e}"))?);
        match iso {
            Isolation::Container => {
                configs.push(Config { label: "container (runc)".into(), iso, runtime });
            }
            Isolation::Gvisor => {
                for p in &args.platforms {
                    let p = GvisorPlatform::from(*p);
                    configs.push(Config {
                        label: format!("gvisor, {}", p.name()),
                        iso,
                        runtime: runtime.clone().with_platform(p),
                    });
                }
            }
        }
    }
    // runc first: every other column is read against it.
    configs.sort_by_key(|c| c.iso != Isolation::Container);
    if configs.is_empty() {
        return Err(anyhow!("nothing to profile: give --tiers (and --platforms for gvisor)"));
    }
    let plan = Arc::new(kiln_workflow::load("probe.yml", &probe_workflow()).map_err(|e| anyhow!("{e}"))?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut samples: Vec<Samples> = configs.iter().map(|_| Samples::new()).collect();
    let mut order: Vec<String> = Vec::new();
    // Round 0 warms the page cache and the runtimes' own files: not counted.
    for round in 0..=args.rounds {
        for (i, c) in configs.iter().enumerate() {
            eprintln!("profile round {round}/{}: {} ...", args.rounds, c.label);
            let build = format!("profile-{}-{round}-{i}", std::process::id());
            let rows = rt
                .block_on(run_probe(plan.clone(), c, dir, &build))
                .map_err(|e| anyhow!("{}: {e}", c.label))?;
            if round == 0 {
                continue;
            }
            for (name, us) in rows {
                if !order.contains(&name) {
                    order.push(name.clone());
                }
                samples[i].entry(name).or_default().push(us);
            }
        }
    }
    Ok((render(&configs, &samples, &order), versions))
}

/// Runs the probe once on `c`; its `(operation, microseconds)` rows.
async fn run_probe(
    plan: Arc<kiln_workflow::Plan>,
    c: &Config,
    dir: &std::path::Path,
    build: &str,
) -> anyhow::Result<Vec<(String, f64)>> {
    let cfg = runner_config(build, c.iso, c.runtime.clone(), dir, true, Vec::new())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let emitter = Emitter::new(build, Some(tx), None);
    let (_cancel_tx, cancel_rx) = watch::channel(false);
    let opts = BuildOptions::new(build.to_string(), 1, serde_json::json!({}), serde_json::json!({}));
    let watcher = tokio::spawn(async move {
        let (mut rows, mut other) = (Vec::new(), Vec::new());
        while let Some(ev) = rx.recv().await {
            if let Event::Log(e) = ev {
                match e.text.strip_prefix("PROBE ").and_then(|r| r.rsplit_once('|')) {
                    Some((name, v)) if e.stream == Stream::Stdout => {
                        if let Ok(us) = v.trim().parse::<f64>() {
                            rows.push((name.to_string(), us));
                        }
                    }
                    _ => other.push(e.text),
                }
            }
        }
        (rows, other)
    });
    let summary =
        kiln_engine::run_build(plan, Arc::new(SandboxRunner::new(cfg)), opts, emitter, cancel_rx).await;
    let (rows, other) = watcher.await?;
    let _ = std::fs::remove_dir_all(dir.join(build));
    if summary.status != "succeeded" || rows.is_empty() {
        let reason = summary.jobs.first().and_then(|j| j.reason.clone()).unwrap_or_default();
        let tail: Vec<&String> = other.iter().rev().take(5).collect();
        return Err(anyhow!("the probe step did not finish ({reason}); its last lines: {tail:?}"));
    }
    Ok(rows)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    s.get(s.len() / 2).copied()
}

/// Microseconds as a readable duration.
fn duration(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

fn render(configs: &[Config], samples: &[Samples], order: &[String]) -> String {
    let base = configs.iter().position(|c| c.iso == Isolation::Container);
    let mut head = String::from("| operation |");
    let mut rule = String::from("| --- |");
    for (i, c) in configs.iter().enumerate() {
        head.push_str(&format!(" {} |", c.label));
        rule.push_str(" ---: |");
        if base.is_some() && Some(i) != base {
            head.push_str(" × runc |");
            rule.push_str(" ---: |");
        }
    }
    let mut t = format!("{head}\n{rule}\n");
    for name in order {
        let base_v = base.and_then(|b| samples[b].get(name)).and_then(|v| median(v));
        t.push_str(&format!("| {name} |"));
        for (i, s) in samples.iter().enumerate() {
            let v = s.get(name).and_then(|v| median(v));
            t.push_str(&format!(" {} |", v.map(duration).unwrap_or_else(|| "—".into())));
            if base.is_some() && Some(i) != base {
                let ratio = match (v, base_v) {
                    (Some(v), Some(b)) if b > 0.0 => format!("{:.1}x", v / b),
                    _ => "—".into(),
                };
                t.push_str(&format!(" {ratio} |"));
            }
        }
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_one_python_step_that_loads() {
        let plan = kiln_workflow::load("probe.yml", &probe_workflow()).unwrap();
        assert_eq!(plan.jobs.len(), 1);
        assert!(PROBE.contains("PROBE {name}|"));
    }

    #[test]
    fn the_table_puts_each_configuration_beside_runc() {
        let rt = Runtime::with_binary(Isolation::Container, "/bin/true".into());
        let configs = vec![
            Config { label: "container (runc)".into(), iso: Isolation::Container, runtime: rt.clone() },
            Config { label: "gvisor, systrap".into(), iso: Isolation::Gvisor, runtime: rt },
        ];
        let mut a = Samples::new();
        a.insert("fork + wait".into(), vec![2000.0, 1000.0, 3000.0]);
        let mut b = Samples::new();
        b.insert("fork + wait".into(), vec![9000.0, 8000.0, 7000.0]);
        let t = render(&configs, &[a, b], &["fork + wait".into()]);
        assert!(t.contains("| fork + wait | 2.0 ms | 8.0 ms | 4.0x |"), "{t}");
    }
}
