//! Which `runs-on` labels this installation can run, and what a job's
//! labels make of it: run here, or skip with a reason.

/// Labels the runners here answer to: patterns with `*`, matched without
/// regard to case (GitHub's labels are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerLabels {
    patterns: Vec<String>,
}

/// Linux x86-64 machines: GitHub's hosted Ubuntu labels and the labels a
/// self-hosted Linux runner carries. Not `*-arm` (another architecture),
/// not macOS or Windows.
const DEFAULT_LABELS: &[&str] =
    &["ubuntu-latest", "ubuntu-*.04", "ubuntu-slim", "linux", "self-hosted", "x64"];

impl Default for RunnerLabels {
    fn default() -> Self {
        RunnerLabels { patterns: DEFAULT_LABELS.iter().map(|s| s.to_string()).collect() }
    }
}

impl RunnerLabels {
    /// The defaults plus the operator's own labels (e.g. `gpu`, `big-*`).
    pub fn with_extra(extra: impl IntoIterator<Item = String>) -> RunnerLabels {
        let mut out = RunnerLabels::default();
        out.patterns.extend(extra.into_iter().map(|s| s.to_ascii_lowercase()));
        out
    }

    /// True when a runner here carries `label`.
    pub fn matches(&self, label: &str) -> bool {
        let label = label.trim().to_ascii_lowercase();
        self.patterns.iter().any(|p| wildcard(p, &label))
    }

    /// Why a job with these (rendered) labels cannot run here: every label
    /// must be one a runner here has, as on GitHub. `None`: it runs.
    pub fn refusal(&self, labels: &[String]) -> Option<String> {
        let missing: Vec<&str> =
            labels.iter().map(|l| l.trim()).filter(|l| !l.is_empty() && !self.matches(l)).collect();
        (!missing.is_empty()).then(|| format!("runs-on {}: no such runner here", missing.join(", ")))
    }
}

/// True when the `runs-on` label `label` matches the operator's `pattern`
/// (`*` for any run of characters, letters compared without case).
pub fn label_matches(pattern: &str, label: &str) -> bool {
    wildcard(&pattern.trim().to_ascii_lowercase(), &label.trim().to_ascii_lowercase())
}

/// `*` matches any run of characters; everything else matches itself.
/// (Labels are short and patterns few: a backtracking match is plenty, and
/// globset's path semantics would be wrong for labels.)
fn wildcard(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else { return false };
            (0..=rest.len()).filter(|i| rest.is_char_boundary(*i)).any(|i| wildcard(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_labels_run_and_others_are_named() {
        let r = RunnerLabels::default();
        for ok in ["ubuntu-latest", "ubuntu-22.04", "Ubuntu-24.04", "self-hosted", "linux", "X64"] {
            assert!(r.matches(ok), "{ok}");
        }
        for no in ["windows-latest", "macos-14", "ubuntu-24.04-arm", "macos-latest-xlarge"] {
            assert!(!r.matches(no), "{no}");
        }
        assert_eq!(
            r.refusal(&["windows-latest".into()]).as_deref(),
            Some("runs-on windows-latest: no such runner here")
        );
        assert_eq!(r.refusal(&["self-hosted".into(), "linux".into()]), None);
        assert_eq!(
            r.refusal(&["self-hosted".into(), "gpu".into()]).as_deref(),
            Some("runs-on gpu: no such runner here")
        );
        assert!(RunnerLabels::with_extra(["GPU".to_string()]).refusal(&["gpu".into()]).is_none());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("ubuntu-*.04", "ubuntu-22.04"));
        assert!(!wildcard("ubuntu-*.04", "ubuntu-22.04-arm"));
        assert!(wildcard("*", ""));
        assert!(wildcard("a*b*c", "axxbyyc"));
        assert!(!wildcard("a*b*c", "axxbyy"));
    }
}
