//! Prometheus metrics, in the text exposition format.
//!
//! Hand-written rather than `prometheus-client`: the server has a dozen
//! series with fixed label sets, so a mutex-guarded struct and one render
//! function (~150 lines, no dependency, no registry or global state) is
//! smaller than the glue the crate would need, and the format is stable.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histograms.
const BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    queue_wait: BTreeMap<String, Histogram>,
    duration: Histogram,
    provisioning: Histogram,
    finished: BTreeMap<(String, String), u64>,
    infra_failures: u64,
    log_bytes: u64,
    auth_failures: u64,
    requests: BTreeMap<(String, u16), u64>,
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Point-in-time values read when rendering.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub queued: u64,
    pub active_builds: u64,
    pub workers_in_process: u64,
    pub workers_busy: u64,
    pub remote_leases: u64,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn queue_wait(&self, priority: &str, secs: f64) {
        self.with(|m| m.queue_wait.entry(priority.to_string()).or_default().observe(secs));
    }
    pub fn build_finished(&self, status: &str, failure: Option<&str>, duration: Option<f64>) {
        self.with(|m| {
            *m.finished.entry((status.to_string(), failure.unwrap_or("").to_string())).or_default() += 1;
            if let Some(d) = duration {
                m.duration.observe(d);
            }
        });
    }
    pub fn provisioning(&self, secs: f64) {
        self.with(|m| m.provisioning.observe(secs));
    }
    pub fn infra_failure(&self) {
        self.with(|m| m.infra_failures += 1);
    }
    pub fn log_bytes(&self, n: u64) {
        self.with(|m| m.log_bytes += n);
    }
    pub fn auth_failure(&self) {
        self.with(|m| m.auth_failures += 1);
    }
    pub fn request(&self, method: &str, status: u16) {
        self.with(|m| *m.requests.entry((method.to_string(), status)).or_default() += 1);
    }

    /// The exposition text.
    pub fn render(&self, g: Gauges) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(&mut out, "kiln_queue_wait_seconds", "histogram", "Time from submit to a worker's lease.");
        for (p, h) in &m.queue_wait {
            h.render(&mut out, "kiln_queue_wait_seconds", &format!("priority=\"{p}\""));
        }
        head(&mut out, "kiln_build_duration_seconds", "histogram", "Time from a build's lease to its end.");
        m.duration.render(&mut out, "kiln_build_duration_seconds", "");
        head(
            &mut out,
            "kiln_build_start_seconds",
            "histogram",
            "Time from a worker's lease to the engine starting the build (source, runtimes, first sandbox prepared).",
        );
        m.provisioning.render(&mut out, "kiln_build_start_seconds", "");
        head(&mut out, "kiln_builds_finished_total", "counter", "Builds that reached a final status.");
        for ((s, f), c) in &m.finished {
            let _ = writeln!(out, "kiln_builds_finished_total{{status=\"{s}\",failure=\"{f}\"}} {c}");
        }
        head(
            &mut out,
            "kiln_infra_failures_total",
            "counter",
            "Attempts that ended in an infrastructure failure.",
        );
        let _ = writeln!(out, "kiln_infra_failures_total {}", m.infra_failures);
        head(&mut out, "kiln_log_bytes_total", "counter", "Bytes of build log text recorded.");
        let _ = writeln!(out, "kiln_log_bytes_total {}", m.log_bytes);
        head(
            &mut out,
            "kiln_auth_failures_total",
            "counter",
            "Requests refused for a missing or unknown token.",
        );
        let _ = writeln!(out, "kiln_auth_failures_total {}", m.auth_failures);
        head(&mut out, "kiln_http_requests_total", "counter", "API requests by method and status.");
        for ((method, status), c) in &m.requests {
            let _ = writeln!(out, "kiln_http_requests_total{{method=\"{method}\",status=\"{status}\"}} {c}");
        }
        head(&mut out, "kiln_builds_queued", "gauge", "Builds waiting for a worker.");
        let _ = writeln!(out, "kiln_builds_queued {}", g.queued);
        head(&mut out, "kiln_builds_active", "gauge", "Builds leased to a worker.");
        let _ = writeln!(out, "kiln_builds_active {}", g.active_builds);
        head(&mut out, "kiln_workers", "gauge", "In-process workers.");
        let _ = writeln!(out, "kiln_workers{{kind=\"in-process\"}} {}", g.workers_in_process);
        head(&mut out, "kiln_workers_active", "gauge", "Workers running a build (remote: leases held).");
        let _ = writeln!(out, "kiln_workers_active{{kind=\"in-process\"}} {}", g.workers_busy);
        let _ = writeln!(out, "kiln_workers_active{{kind=\"remote\"}} {}", g.remote_leases);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_and_counters() {
        let m = Metrics::default();
        m.queue_wait("urgent", 0.2);
        m.queue_wait("normal", 3.0);
        m.build_finished("failed", Some("user"), Some(1.0));
        let text = m.render(Gauges { queued: 2, ..Default::default() });
        assert!(text.contains("kiln_queue_wait_seconds_bucket{priority=\"urgent\",le=\"0.25\"} 1"), "{text}");
        assert!(text.contains("kiln_queue_wait_seconds_count{priority=\"normal\"} 1"), "{text}");
        assert!(text.contains("kiln_builds_finished_total{status=\"failed\",failure=\"user\"} 1"), "{text}");
        assert!(text.contains("kiln_builds_queued 2"), "{text}");
    }
}
