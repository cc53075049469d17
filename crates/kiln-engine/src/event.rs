//! What a build tells the outside world while it runs.

use serde::{Deserialize, Serialize};

use crate::build::{BuildSummary, JobSummary};
use crate::log::LogEntry;

/// One event of a running build, in order, on one channel. Also the form a
/// remote worker sends its events in and the one replicas share them in
/// (JSON, tagged by `type`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The build has an id and a plan; nothing has run yet.
    BuildStarted {
        #[serde(default)]
        build: String,
        pipeline: String,
        jobs: Vec<(String, String)>,
    },
    JobStarted {
        job: usize,
        id: String,
        started_at: String,
    },
    StepStarted {
        job: usize,
        step: usize,
        name: String,
    },
    StepFinished {
        job: usize,
        step: usize,
        record: crate::runner::StepRecord,
    },
    JobFinished {
        job: usize,
        summary: JobSummary,
    },
    Log(LogEntry),
    /// An artifact was stored.
    Artifact {
        job: String,
        name: String,
        id: String,
        files: u64,
        bytes: u64,
        /// Digest of the signed provenance envelope, when signed.
        provenance: Option<String>,
        #[serde(default = "static_type")]
        output_type: String,
        /// `ready`, `flagged` or `quarantined` (see the scan).
        #[serde(default = "ready_status")]
        status: String,
        /// The scan's findings, one per line.
        #[serde(default)]
        scan: Option<String>,
    },
    /// Bytes moved between the build cache and a workspace, for the usage
    /// record: `write` is a save, else a restore.
    Cache {
        job: String,
        key: String,
        write: bool,
        files: u64,
        bytes: u64,
    },
    /// Security-relevant, kept apart from the log: a secret handed to a
    /// step, egress blocked, a quota hit. Never carries a secret value.
    Audit {
        kind: String,
        job: String,
        step: String,
        detail: String,
    },
    BuildFinished(BuildSummary),
}

fn static_type() -> String {
    "static".into()
}

fn ready_status() -> String {
    "ready".into()
}

impl Event {
    /// The same event, of build `build`: what a server records for an
    /// attempt whatever id its sender put in.
    pub fn for_build(mut self, build: &str) -> Event {
        match &mut self {
            Event::BuildStarted { build: b, .. } => *b = build.to_string(),
            Event::Log(l) => l.build = build.to_string(),
            Event::BuildFinished(s) => s.build = build.to_string(),
            _ => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What older servers and workers wrote (the shared events table keeps
    /// it) still reads: no build ids, no artifact status, a bare summary.
    #[test]
    fn events_in_the_older_wire_shape_still_read() {
        let old = [
            r#"{"type":"build_started","pipeline":"ci","jobs":[["a","a"]]}"#,
            r#"{"type":"log","ts":"t","job":"a","step":"s","phase":"build","stream":"stdout","seq":3,"text":"hi"}"#,
            r#"{"type":"artifact","job":"a","name":"n","id":"i","files":1,"bytes":2,"provenance":null}"#,
            r#"{"type":"build_finished","status":"succeeded","egress_bytes_in":5,"egress_bytes_out":6}"#,
        ];
        let evs: Vec<Event> =
            old.iter().map(|j| serde_json::from_str::<Event>(j).unwrap().for_build("b-1")).collect();
        assert!(matches!(&evs[0], Event::BuildStarted { build, .. } if build == "b-1"));
        assert!(
            matches!(&evs[1], Event::Log(l) if l.build == "b-1" && l.seq == 3 && l.stream == crate::Stream::Stdout)
        );
        assert!(
            matches!(&evs[2], Event::Artifact { status, output_type, .. } if status == "ready" && output_type == "static")
        );
        assert!(matches!(&evs[3], Event::BuildFinished(s) if s.build == "b-1" && s.egress_bytes_out == 6));
    }

    #[test]
    fn an_unknown_stream_or_type_is_an_error_not_a_guess() {
        for bad in [
            r#"{"type":"log","ts":"t","job":"a","step":"s","phase":"build","stream":"tty","seq":3,"text":"hi"}"#,
            r#"{"type":"reboot"}"#,
        ] {
            assert!(serde_json::from_str::<Event>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_event_reads_back_as_written() {
        let ev = Event::Cache { job: "a".into(), key: "k".into(), write: true, files: 1, bytes: 2 };
        let back: Event = serde_json::from_str(&serde_json::to_string(&ev).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{ev:?}"));
    }
}
