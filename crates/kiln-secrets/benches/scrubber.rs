//! StreamScrubber throughput on a synthetic build log.
//!
//! `KILN_BENCH_BYTES` sets the log size (default 1 GiB). Prints a Markdown table. "MB/s" is
//! wall-clock throughput; "CPU MB/s" divides by the CPU time the scrubbing thread got instead
//! (Linux only, from `/proc/thread-self/schedstat`), which other load on a shared machine skews
//! much less.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use kiln_secrets::{PatternSet, Pipe, Scrubber, Secret};

const CHUNK: usize = 64 * 1024;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(n);
        s
    }
}

fn secret_value(i: usize) -> String {
    let mut r = Rng(0x5EC2E7 + i as u64 * 7919);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let len = 24 + (i % 17);
    (0..len).map(|_| alphabet[r.below(64) as usize] as char).collect()
}

fn synthetic_log(size: usize) -> Vec<u8> {
    let crates = [
        "serde",
        "tokio",
        "regex",
        "aho-corasick",
        "memchr",
        "libc",
        "hyper",
        "rustls",
        "kiln-engine",
        "clap",
        "anyhow",
        "thiserror",
        "proc-macro2",
        "syn",
        "quote",
    ];
    let mods = ["engine", "sandbox", "workflow", "scheduler", "log", "cache", "api"];
    let fns = ["runs_step", "parses_yaml", "handles_timeout", "retries", "streams", "caches"];
    let mut r = Rng(0xC0FFEE);
    let mut out = Vec::with_capacity(size + 256);
    let secret0 = secret_value(0);
    let mut n: u64 = 0;
    while out.len() < size {
        n += 1;
        let line = match r.below(12) {
            0 => {
                let c = r.pick(&crates);
                format!(
                    "   Compiling {c} v{}.{}.{} (/home/runner/work/{c}/{c})",
                    r.below(3),
                    r.below(40),
                    r.below(20)
                )
            }
            1 => format!("test {}::{}_{} ... ok", r.pick(&mods), r.pick(&fns), r.below(100)),
            2 => format!(
                "2024-05-{:02}T12:{:02}:{:02}.{:06}Z  INFO {}: request id={} took {}ms",
                1 + r.below(28),
                r.below(60),
                r.below(60),
                r.below(1_000_000),
                r.pick(&mods),
                r.hex(16),
                r.below(5000)
            ),
            3 => format!(
                "npm WARN deprecated {}@{}.{}.{}: this package is no longer supported",
                r.pick(&crates),
                r.below(9),
                r.below(9),
                r.below(9)
            ),
            4 => format!("  Downloaded {} v{}.{}.{}", r.pick(&crates), r.below(3), r.below(40), r.below(9)),
            5 => format!(
                "Get:{} http://deb.debian.org/debian bookworm/main amd64 {} amd64 {}.{} [{} kB]",
                r.below(300),
                r.pick(&crates),
                r.below(9),
                r.below(30),
                r.below(9000)
            ),
            6 => format!(" ---> Using cache\n ---> {}", r.hex(12)),
            7 => format!("#12 writing image sha256:{} done", r.hex(64)),
            8 => format!("warning: unused variable: `{}`", r.pick(&fns)),
            9 => format!(
                "    at {}.{} (/app/src/{}.js:{}:{})",
                r.pick(&mods),
                r.pick(&fns),
                r.pick(&mods),
                r.below(400),
                r.below(80)
            ),
            10 => format!(
                "\x1b[1m\x1b[32m    Finished\x1b[0m `release` profile [optimized] target(s) in {}.{}s",
                r.below(300),
                r.below(100)
            ),
            _ => {
                if n.rem_euclid(100_000) == 0 {
                    format!("export TOKEN={secret0}")
                } else {
                    format!(
                        "Step {}/{} : RUN cargo build --release --locked -p {}",
                        r.below(30),
                        30,
                        r.pick(&crates)
                    )
                }
            }
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// CPU time this thread has run so far, in seconds (Linux).
fn thread_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn baseline(log: &[u8]) -> f64 {
    let t = Instant::now();
    let mut lines = 0usize;
    for chunk in log.chunks(CHUNK) {
        lines += memchr::memchr_iter(b'\n', chunk).count();
    }
    black_box(lines);
    mbps(log.len(), t.elapsed().as_secs_f64())
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let size: usize = std::env::var("KILN_BENCH_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 30);
    let t = Instant::now();
    let log = synthetic_log(size);
    eprintln!("generated {} MiB of log in {:.1}s", log.len() >> 20, t.elapsed().as_secs_f64());
    let patterns = if std::env::var("KILN_BENCH_NO_PATTERNS").is_ok() {
        PatternSet::empty()
    } else {
        PatternSet::builtin()
    };
    let counts: Vec<usize> = std::env::var("KILN_BENCH_SECRETS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 100, 1000]);
    println!(
        "token patterns: {} ({} prefilter literals)\n",
        patterns.names().len(),
        patterns.literal_count()
    );
    println!("| secrets | patterns in automaton | MB/s | CPU MB/s | baseline MB/s | ratio |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for count in counts {
        let secrets: Vec<Secret> =
            (0..count).map(|i| Secret::new(format!("SECRET_{i}"), secret_value(i))).collect();
        let sc = Arc::new(Scrubber::new(&secrets, &patterns));
        let base = baseline(&log);
        let mut s = sc.stream();
        let cpu0 = thread_cpu_secs();
        let t = Instant::now();
        let mut out_bytes = 0usize;
        for chunk in log.chunks(CHUNK) {
            out_bytes += s.push(chunk).len();
        }
        out_bytes += s.finish().len();
        let secs = t.elapsed().as_secs_f64();
        let cpu = match (cpu0, thread_cpu_secs()) {
            (Some(a), Some(b)) if b > a => format!("{:.0}", mbps(log.len(), b - a)),
            _ => "-".to_string(),
        };
        black_box(out_bytes);
        let speed = mbps(log.len(), secs);
        println!(
            "| {count} | {} | {:.0} | {cpu} | {:.0} | {:.3} |",
            sc.value_pattern_count(),
            speed,
            base,
            speed / base
        );
        eprintln!("  redactions: {:?}", s.counts());
        if count == 100 {
            // A step's two streams through one StepScrubber, as the engine reads them: the log on
            // stdout, a short stderr line now and then.
            let mut st = sc.step();
            let cpu0 = thread_cpu_secs();
            let t = Instant::now();
            let mut out_bytes = 0usize;
            for (i, chunk) in log.chunks(CHUNK).enumerate() {
                out_bytes += st.push(Pipe::Stdout, chunk).iter().map(|p| p.1.len()).sum::<usize>();
                if i % 16 == 15 {
                    out_bytes += st
                        .push(Pipe::Stderr, b"warning: something\n")
                        .iter()
                        .map(|p| p.1.len())
                        .sum::<usize>();
                }
            }
            for pipe in [Pipe::Stdout, Pipe::Stderr] {
                out_bytes += st.finish(pipe).iter().map(|p| p.1.len()).sum::<usize>();
            }
            let secs = t.elapsed().as_secs_f64();
            let cpu = match (cpu0, thread_cpu_secs()) {
                (Some(a), Some(b)) if b > a => format!("{:.0}", mbps(log.len(), b - a)),
                _ => "-".to_string(),
            };
            black_box(out_bytes);
            let speed = mbps(log.len(), secs);
            println!(
                "| {count} (step: stdout + stderr) | {} | {:.0} | {cpu} | {:.0} | {:.3} |",
                sc.value_pattern_count(),
                speed,
                base,
                speed / base
            );
        }
    }
}
