//! Terminal and `--json` output of a running build.
//!
//! Human output: one prefix per job (coloured on a terminal), step output as
//! it arrives, a status line of the running jobs that is redrawn in place
//! (terminal only), and a summary table at the end. `--json`: one JSON object
//! per log entry, then the summary object. Step output was sanitised by the
//! engine; here SGR colour is kept on a terminal and stripped elsewhere.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Instant;

use kiln_engine::log::strip_sgr;
use kiln_engine::{BuildSummary, Event, LogEntry, Stream};
use kiln_workflow::Plan;
use tokio::sync::mpsc;

const COLOURS: [u8; 6] = [36, 35, 34, 33, 32, 96];

#[derive(Debug)]
pub struct Renderer {
    json: bool,
    colour: bool,
    status_line: bool,
    width: usize,
    running: BTreeMap<usize, (String, Instant)>,
    total: usize,
    done: usize,
    drawn: bool,
    /// Per phase, in first-seen order: steps that ran and their summed time.
    phases: Vec<(String, usize, f64)>,
    /// The phase of each running step, by (job id, step name).
    step_phase: BTreeMap<(String, String), String>,
}

impl Renderer {
    pub fn new(json: bool, plan: Arc<Plan>) -> Renderer {
        let tty = std::io::stdout().is_terminal();
        let colour = tty && std::env::var_os("NO_COLOR").is_none();
        let width = plan.jobs.iter().map(|j| j.id.chars().count()).max().unwrap_or(4).min(28);
        Renderer {
            json,
            colour,
            status_line: tty && !json,
            width,
            running: BTreeMap::new(),
            total: plan.jobs.len(),
            done: 0,
            drawn: false,
            phases: Vec::new(),
            step_phase: BTreeMap::new(),
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        while let Some(event) = rx.recv().await {
            let last = matches!(event, Event::BuildFinished(_));
            self.handle(event);
            if last {
                break;
            }
        }
    }

    fn handle(&mut self, event: Event) {
        let mut out = std::io::stdout().lock();
        match event {
            Event::Log(entry) => {
                if entry.stream == Stream::System && entry.text == "step started" {
                    self.step_phase.insert((entry.job.clone(), entry.step.clone()), entry.phase.clone());
                }
                if self.json {
                    let _ = writeln!(out, "{}", serde_json::to_string(&entry).unwrap_or_default());
                } else {
                    self.clear(&mut out);
                    let line = self.human_line(&entry);
                    let _ = writeln!(out, "{line}");
                    self.draw(&mut out);
                }
            }
            Event::JobStarted { job, id, .. } => {
                self.running.insert(job, (id, Instant::now()));
                if !self.json {
                    self.clear(&mut out);
                    self.draw(&mut out);
                }
            }
            Event::JobFinished { job, summary } => {
                self.running.remove(&job);
                self.done += 1;
                if !self.json {
                    self.clear(&mut out);
                    let mark = match summary.status.as_str() {
                        "succeeded" => self.paint("32", "✓"),
                        "failed" => self.paint("31", "✗"),
                        "skipped" => self.paint("2", "-"),
                        _ => self.paint("33", "⊘"),
                    };
                    let reason = summary.reason.map(|r| format!(": {r}")).unwrap_or_default();
                    let prefix = self.prefix(job, &summary.id);
                    let _ = writeln!(out, "{prefix} {mark} job {}{reason}", summary.status);
                    self.draw(&mut out);
                }
            }
            Event::BuildFinished(summary) => {
                if self.json {
                    // The summary line of `--json` output, marked as such.
                    let mut line = serde_json::json!({"type": "summary"});
                    if let (Some(obj), Ok(serde_json::Value::Object(fields))) =
                        (line.as_object_mut(), serde_json::to_value(&summary))
                    {
                        obj.extend(fields);
                    }
                    let _ = writeln!(out, "{line}");
                } else {
                    self.clear(&mut out);
                    let _ = write!(out, "{}", self.table(&summary));
                }
            }
            Event::BuildStarted { build, pipeline, .. } => {
                if !self.json {
                    let _ = writeln!(out, "{} {pipeline} (build {build})", self.paint("1", "kiln:"));
                }
            }
            Event::StepFinished { job, record, .. } => {
                let id = self.running.get(&job).map(|(id, _)| id.clone()).unwrap_or_default();
                let ran = record.outcome != kiln_engine::runner::StepStatus::Skipped;
                if let (Some(phase), true) = (self.step_phase.remove(&(id, record.name.clone())), ran) {
                    let secs = match (&record.started_at, &record.finished_at) {
                        (Some(a), Some(b)) => duration_between(a, b).unwrap_or(0.0),
                        _ => 0.0,
                    };
                    match self.phases.iter_mut().find(|(p, _, _)| *p == phase) {
                        Some(entry) => {
                            entry.1 += 1;
                            entry.2 += secs;
                        }
                        None => self.phases.push((phase, 1, secs)),
                    }
                }
            }
            Event::StepStarted { .. }
            | Event::Audit { .. }
            | Event::Artifact { .. }
            | Event::Cache { .. } => {}
        }
        let _ = out.flush();
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn prefix(&self, job: usize, id: &str) -> String {
        let mut shown: String = id.chars().take(self.width).collect();
        while shown.chars().count() < self.width {
            shown.push(' ');
        }
        let code = COLOURS[job % COLOURS.len()].to_string();
        format!("{} │", self.paint(&code, &shown))
    }

    fn human_line(&self, e: &LogEntry) -> String {
        let job = self.running.iter().find(|(_, (id, _))| *id == e.job).map(|(j, _)| *j).unwrap_or(0);
        let prefix = if e.job.is_empty() { self.paint("1", "kiln") } else { self.prefix(job, &e.job) };
        let text = if self.colour { format!("{}\x1b[0m", e.text) } else { strip_sgr(&e.text) };
        match e.stream {
            Stream::System if e.step.is_empty() => {
                format!("{prefix} {}", self.paint("2", &format!("▸ {text}")))
            }
            Stream::System if e.text == "step started" => {
                format!(
                    "{prefix} {} {}",
                    self.paint("1", &format!("▶ {}", e.step)),
                    self.paint("2", &format!("· {}", e.phase))
                )
            }
            Stream::System => format!("{prefix} {}", self.paint("2", &format!("▸ {text}"))),
            Stream::Stderr | Stream::Stdout => format!("{prefix} {text}"),
        }
    }

    fn clear(&mut self, out: &mut impl Write) {
        if self.drawn {
            let _ = write!(out, "\r\x1b[2K");
            self.drawn = false;
        }
    }

    fn draw(&mut self, out: &mut impl Write) {
        if !self.status_line || self.running.is_empty() {
            return;
        }
        let names: Vec<String> =
            self.running.values().map(|(id, t)| format!("{id} {}s", t.elapsed().as_secs())).collect();
        let line = format!("[{}/{}] running: {}", self.done, self.total, names.join(", "));
        let line: String = line.chars().take(160).collect();
        let _ = write!(out, "{}", self.paint("2", &line));
        self.drawn = true;
    }

    fn table(&self, s: &BuildSummary) -> String {
        let w = s.jobs.iter().map(|j| j.id.chars().count()).max().unwrap_or(3).max(3);
        let mut t =
            format!("\n{:<w$}  {:<10}  {:>9}  {:>8}  REASON\n", "JOB", "STATUS", "DURATION", "REDACTED");
        for j in &s.jobs {
            let dur = match (&j.started_at, &j.finished_at) {
                (Some(a), Some(b)) => {
                    duration_between(a, b).map(kiln_engine::time::human_duration).unwrap_or_default()
                }
                _ => "-".into(),
            };
            t.push_str(&format!(
                "{:<w$}  {:<10}  {:>9}  {:>8}  {}\n",
                j.id,
                j.status,
                dur,
                j.redactions,
                j.reason.clone().unwrap_or_default()
            ));
        }
        if !self.phases.is_empty() {
            let pw = self.phases.iter().map(|(p, _, _)| p.len()).max().unwrap_or(5).max(5);
            t.push_str(&format!("\n{:<pw$}  {:>5}  {:>9}\n", "PHASE", "STEPS", "TIME"));
            for (phase, n, secs) in &self.phases {
                t.push_str(&format!(
                    "{:<pw$}  {:>5}  {:>9}\n",
                    phase,
                    n,
                    kiln_engine::time::human_duration(*secs)
                ));
            }
        }
        let status = match s.status.as_str() {
            "succeeded" => self.paint("32;1", "succeeded"),
            "failed" => self.paint("31;1", "failed"),
            other => self.paint("33;1", other),
        };
        t.push_str(&format!("\nbuild {} {status}\n", s.build));
        t
    }
}

fn duration_between(a: &str, b: &str) -> Option<f64> {
    use time::format_description::well_known::Rfc3339;
    let a = time::OffsetDateTime::parse(a, &Rfc3339).ok()?;
    let b = time::OffsetDateTime::parse(b, &Rfc3339).ok()?;
    Some((b - a).as_seconds_f64())
}

/// A stored log entry as one plain line (`kiln logs`).
pub fn plain_line(e: &LogEntry) -> String {
    let who = match (e.job.is_empty(), e.step.is_empty()) {
        (true, _) => "kiln".to_string(),
        (false, true) => e.job.clone(),
        (false, false) => format!("{} / {}", e.job, e.step),
    };
    let mark = if e.stream == Stream::System { "▸ " } else { "" };
    format!("{} [{who}] {mark}{}", e.ts, strip_sgr(&e.text))
}
