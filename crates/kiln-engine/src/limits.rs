//! Resource limits of a step: defaults, per-job overrides, and the reasons a
//! step was stopped, classified so that the log, the summary and the exit code
//! all say the same thing.

use std::time::Duration;

use kiln_workflow::KilnJobSettings;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// The limits one step runs under.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLimits {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpus: f64,
    pub tmp_bytes: u64,
    pub disk_bytes: u64,
    pub log_bytes: u64,
    /// Wall-clock limit of a job when it says nothing (`timeout-minutes`).
    pub job_timeout: Duration,
}

impl Default for StepLimits {
    /// Documented in `docs/workflows.md`.
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        StepLimits {
            memory_bytes: 2 * GIB,
            pids: 512,
            cpus,
            tmp_bytes: 512 * MIB,
            disk_bytes: 4 * GIB,
            log_bytes: 64 * MIB,
            job_timeout: Duration::from_secs(360 * 60),
        }
    }
}

impl StepLimits {
    /// These limits with a job's `kiln:` overrides applied.
    pub fn with_overrides(&self, k: &KilnJobSettings) -> StepLimits {
        StepLimits {
            memory_bytes: k.memory_bytes.unwrap_or(self.memory_bytes),
            pids: k.pids.unwrap_or(self.pids),
            cpus: k.cpus.unwrap_or(self.cpus),
            tmp_bytes: k.tmp_bytes.unwrap_or(self.tmp_bytes),
            disk_bytes: k.disk_bytes.unwrap_or(self.disk_bytes),
            log_bytes: k.log_bytes.unwrap_or(self.log_bytes),
            job_timeout: self.job_timeout,
        }
    }

    pub fn sandbox_limits(&self) -> kiln_sandbox::Limits {
        kiln_sandbox::Limits {
            memory_bytes: self.memory_bytes,
            pids: self.pids,
            cpus: self.cpus,
            tmp_bytes: self.tmp_bytes,
        }
    }
}

/// Why a step (and so its job) ended other than by its own exit.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    Memory {
        limit_bytes: u64,
    },
    Pids {
        limit: u64,
    },
    Timeout {
        after: Duration,
    },
    Disk {
        limit_bytes: u64,
    },
    Log {
        limit_bytes: u64,
    },
    Cancelled,
    /// kiln itself failed to run the step (not the user's fault).
    Infrastructure(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Memory { limit_bytes } => {
                write!(f, "memory limit exceeded ({})", human_bytes(*limit_bytes))
            }
            StopReason::Pids { limit } => write!(f, "process limit exceeded ({limit})"),
            StopReason::Timeout { after } => write!(f, "timed out after {}", human_secs(*after)),
            StopReason::Disk { limit_bytes } => {
                write!(f, "disk quota exceeded ({})", human_bytes(*limit_bytes))
            }
            StopReason::Log { limit_bytes } => {
                write!(f, "log limit exceeded ({})", human_bytes(*limit_bytes))
            }
            StopReason::Cancelled => f.write_str("cancelled"),
            StopReason::Infrastructure(m) => write!(f, "infrastructure error: {m}"),
        }
    }
}

/// Bytes in binary units, as limits are written (`512 MiB`, `1 GiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", GIB), ("MiB", MIB), ("KiB", 1024)];
    for (name, size) in UNITS {
        if b >= size {
            return if b.is_multiple_of(size) {
                format!("{} {name}", b / size)
            } else {
                format!("{:.1} {name}", b as f64 / size as f64)
            };
        }
    }
    format!("{b} B")
}

/// A limit's duration: `30s`, `5m`, `1h30m`, `1.5s`.
pub fn human_secs(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) && ms < 60_000 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_documented() {
        assert_eq!(
            StopReason::Memory { limit_bytes: 512 * MIB }.to_string(),
            "memory limit exceeded (512 MiB)"
        );
        assert_eq!(StopReason::Pids { limit: 256 }.to_string(), "process limit exceeded (256)");
        assert_eq!(StopReason::Timeout { after: Duration::from_secs(30) }.to_string(), "timed out after 30s");
        assert_eq!(StopReason::Disk { limit_bytes: GIB }.to_string(), "disk quota exceeded (1 GiB)");
        assert_eq!(StopReason::Log { limit_bytes: 64 * MIB }.to_string(), "log limit exceeded (64 MiB)");
        assert_eq!(human_secs(Duration::from_secs(90)), "1m30s");
        assert_eq!(human_secs(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn overrides_apply_only_where_given() {
        let base = StepLimits::default();
        let k = KilnJobSettings { memory_bytes: Some(MIB), ..Default::default() };
        let l = base.with_overrides(&k);
        assert_eq!(l.memory_bytes, MIB);
        assert_eq!(l.pids, base.pids);
    }
}
