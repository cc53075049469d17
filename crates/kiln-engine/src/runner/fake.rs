//! A recording [`SandboxHost`] for the unit tests of the job loop: it
//! starts nothing, writes down every call in order (what was booted with
//! which mounts, what was exec'd into which sandbox, what went on whose
//! stdin, what was killed and ended), and plays each step from its script
//! file: `exit N` ends it with N, `sleep infinity` never ends it. The tests
//! below check the job loop's ordering rules against that record, without
//! a runtime, a loop device or root.

use crate::runner::host::{AgentSandbox, BoxFut, OneShot, SandboxHost, StepRun};
use crate::runner::phase::{ExitRx, Pump, StepLogger};
use crate::runner::script::SocketDir;
use kiln_sandbox::agent::RunRequest;
use kiln_sandbox::{Bind, Outcome, Runtime, SandboxError, SandboxSpec, Usage, Workspace};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One call the job loop made, as the fake saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Call {
    Disk,
    Boot { id: String, spec: SpecSeen },
    Exec { sandbox: String, argv: Vec<String>, env: Vec<(String, String)> },
    RunOnce { id: String, spec: SpecSeen, stdin: Option<Vec<u8>> },
    Kill { sandbox: String },
    End { sandbox: String },
}

/// What of a sandbox spec the tests look at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpecSeen {
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    /// Mount destinations.
    pub(crate) mounts: Vec<String>,
    pub(crate) workspace: PathBuf,
    pub(crate) init_reads_secrets: bool,
    pub(crate) egress: bool,
}

impl SpecSeen {
    fn of(spec: &SandboxSpec) -> SpecSeen {
        SpecSeen {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            mounts: spec.binds.iter().map(|b| b.destination.clone()).collect(),
            workspace: spec.workspace.clone(),
            init_reads_secrets: spec.init.as_ref().is_some_and(|i| i.secrets),
            egress: spec.init.as_ref().is_some_and(|i| i.egress.is_some()),
        }
    }
}

/// The recording host.
#[derive(Debug, Default)]
pub(crate) struct FakeHost {
    pub(crate) calls: Arc<Mutex<Vec<Call>>>,
    /// Every host file the job loop had written when a sandbox started,
    /// checked by the tests (e.g. that no secret was ever on disk).
    pub(crate) watch_dir: Mutex<Option<PathBuf>>,
    pub(crate) disk_snapshots: Mutex<Vec<Vec<u8>>>,
}

impl FakeHost {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    /// Every byte of every file under the watched directory, now.
    fn snapshot(&self) {
        let Some(dir) = self.watch_dir.lock().unwrap().clone() else { return };
        let mut all = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    Ok(t) if t.is_file() => all.extend(std::fs::read(&p).unwrap_or_default()),
                    _ => {}
                }
            }
        }
        self.disk_snapshots.lock().unwrap().push(all);
    }
}

/// How a step's script tells the fake to behave.
enum Play {
    Exit(i32),
    Hang,
}

/// Reads the script a step runs (its host path found through the
/// sandbox's mounts) and what it asks the fake to do.
fn play(argv: &[String], binds: &[Bind]) -> Play {
    let script = argv.last().cloned().unwrap_or_default();
    let host = binds.iter().find_map(|b| {
        script.strip_prefix(&b.destination).map(|rest| b.source.join(rest.trim_start_matches('/')))
    });
    let body = host.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
    for line in body.lines().map(str::trim) {
        if line == "sleep infinity" {
            return Play::Hang;
        }
        if let Some(n) = line.strip_prefix("exit ").and_then(|n| n.trim().parse().ok()) {
            return Play::Exit(n);
        }
    }
    Play::Exit(0)
}

fn outcome(code: Option<i32>) -> Outcome {
    Outcome {
        exit_code: code,
        signal: code.is_none().then_some(9),
        limit: None,
        cpu_seconds: 0.0,
        peak_memory_bytes: 0,
        wall: Duration::ZERO,
    }
}

impl SandboxHost for FakeHost {
    fn boot<'a>(
        &'a self,
        _runtime: Runtime,
        spec: SandboxSpec,
        _bundle: PathBuf,
        _agent_dir: &'a SocketDir,
    ) -> BoxFut<'a, Result<Arc<dyn AgentSandbox>, String>> {
        self.snapshot();
        self.record(Call::Boot { id: spec.id.clone(), spec: SpecSeen::of(&spec) });
        let sandbox: Arc<dyn AgentSandbox> = Arc::new(FakeSandbox {
            id: spec.id.clone(),
            binds: spec.binds.clone(),
            calls: self.calls.clone(),
            hanging: Mutex::new(Vec::new()),
            ended: Mutex::new(false),
        });
        Box::pin(async move { Ok(sandbox) })
    }

    fn run_once(&self, _runtime: Runtime, step: OneShot) -> BoxFut<'_, Result<StepRun, String>> {
        self.snapshot();
        let OneShot { spec, deadline, stdin_secrets, .. } = step;
        self.record(Call::RunOnce { id: spec.id.clone(), spec: SpecSeen::of(&spec), stdin: stdin_secrets });
        let play = play(&spec.argv, &spec.binds);
        Box::pin(async move {
            match play {
                Play::Exit(n) => Ok((outcome(Some(n)), None, 0)),
                Play::Hang => {
                    tokio::time::sleep_until(deadline.into()).await;
                    Ok((outcome(None), Some(crate::runner::phase::Stop::Timeout), 0))
                }
            }
        })
    }

    fn job_disk(&self, dir: &Path, _bytes: u64) -> Result<Workspace, SandboxError> {
        self.record(Call::Disk);
        *self.watch_dir.lock().unwrap() = dir.parent().map(Path::to_path_buf);
        Workspace::plain(dir)
    }

    fn give_to_step_user(&self, _dir: &Path) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct FakeSandbox {
    id: String,
    binds: Vec<Bind>,
    calls: Arc<Mutex<Vec<Call>>>,
    /// Exit senders of steps that never end by themselves: dropped when
    /// the sandbox is killed or ended (their receivers learn it ended).
    hanging: Mutex<Vec<tokio::sync::oneshot::Sender<Result<i32, String>>>>,
    ended: Mutex<bool>,
}

impl AgentSandbox for FakeSandbox {
    fn start<'a>(
        &'a self,
        _seq: u32,
        request: &'a RunRequest,
        _logger: Option<&'a StepLogger>,
    ) -> BoxFut<'a, Result<(ExitRx, Option<Pump>), String>> {
        self.calls.lock().unwrap().push(Call::Exec {
            sandbox: self.id.clone(),
            argv: request.argv.clone(),
            env: request.env.clone(),
        });
        let ended = *self.ended.lock().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        match play(&request.argv, &self.binds) {
            _ if ended => drop(tx),
            Play::Exit(n) => {
                let _ = tx.send(Ok(n));
            }
            Play::Hang => self.hanging.lock().unwrap().push(tx),
        }
        let pump: Pump = tokio::spawn(async { 0 });
        Box::pin(async move { Ok((rx, Some(pump))) })
    }

    fn usage(&self) -> Usage {
        Usage::default()
    }

    fn reset_peak_memory(&self) {}

    fn kill(&self) -> BoxFut<'_, ()> {
        self.calls.lock().unwrap().push(Call::Kill { sandbox: self.id.clone() });
        self.hanging.lock().unwrap().clear();
        Box::pin(async {})
    }

    fn end(&self) -> BoxFut<'_, ()> {
        let mut ended = self.ended.lock().unwrap();
        if !*ended {
            *ended = true;
            self.calls.lock().unwrap().push(Call::End { sandbox: self.id.clone() });
        }
        self.hanging.lock().unwrap().clear();
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::env::{HOME, PHASE_FILES_DIR, PHASE_STEPS_DIR, TOOL_CACHE, WORKSPACE};
    use crate::runner::sandbox::{EgressConfig, SandboxRunner, SandboxRunnerConfig, TierKey};
    use crate::runner::{Emitter, JobOutcome, JobRequest, JobRunner};
    use kiln_sandbox::Isolation;
    use kiln_workflow::JobResult;
    use std::collections::HashMap;

    const SECRET: &str = "s3cr3t-value-0451";

    /// Runs the first job of `yaml` on the fake host; returns the calls
    /// in order, the job's outcome, the build's log lines and the disk
    /// snapshots taken whenever a sandbox started.
    async fn run(yaml: &str) -> (Vec<Call>, JobOutcome, Vec<String>, Vec<Vec<u8>>) {
        let tmp = tempfile::tempdir().unwrap();
        let plan = kiln_workflow::load("ci.yml", yaml).unwrap_or_else(|d| panic!("{d:?}"));
        let secrets = Arc::new(vec![kiln_secrets::Secret::new("TOKEN", SECRET)]);
        let scrubber = Arc::new(kiln_secrets::Scrubber::new(&secrets, &kiln_secrets::PatternSet::builtin()));
        let mut runtimes = HashMap::new();
        runtimes
            .insert(TierKey::Gvisor, Runtime::with_binary(Isolation::Gvisor, "/nonexistent/runsc".into()));
        let cfg = SandboxRunnerConfig {
            build_dir: tmp.path().join("build"),
            source: None,
            source_skip: Vec::new(),
            isolation: Isolation::Gvisor,
            runtimes,
            limits: Default::default(),
            init: "/nonexistent/kiln-init".into(),
            secrets,
            scrubber: scrubber.clone(),
            egress: EgressConfig::new(Vec::new(), 1 << 30),
            artifacts: None,
            default_network: kiln_workflow::NetworkSpec::None,
            refuse_uploaders: false,
            phase_sandboxes: true,
            images: Vec::new(),
            tools: None,
            image_store: None,
        };
        let host = Arc::new(FakeHost::default());
        let mut runner = SandboxRunner::new(cfg);
        runner.host = host.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (_cancel_tx, cancel) = tokio::sync::watch::channel(false);
        let req = JobRequest {
            build: "b1".into(),
            plan: Arc::new(plan),
            job: 0,
            contexts: Default::default(),
            cancel,
            emitter: Emitter::new("b1", Some(tx), None).with_scrubber(scrubber),
        };
        let outcome = runner.run_job(req).await;
        let mut lines = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let crate::event::Event::Log(entry) = ev {
                lines.push(entry.text);
            }
        }
        let calls = host.calls.lock().unwrap().clone();
        let snaps = host.disk_snapshots.lock().unwrap().clone();
        (calls, outcome, lines, snaps)
    }

    fn boots(calls: &[Call]) -> Vec<&String> {
        calls.iter().filter_map(|c| if let Call::Boot { id, .. } = c { Some(id) } else { None }).collect()
    }

    /// Every exec goes into a sandbox booted before it and not ended yet,
    /// and every sandbox booted is ended by the time the job returns.
    fn assert_well_ordered(calls: &[Call]) {
        let mut live: Vec<&String> = Vec::new();
        let mut booted = 0;
        for c in calls {
            match c {
                Call::Boot { id, .. } => {
                    assert!(live.is_empty(), "{id} booted while {live:?} still runs: {calls:#?}");
                    live.push(id);
                    booted += 1;
                }
                Call::Exec { sandbox, .. } | Call::Kill { sandbox } => {
                    assert!(live.contains(&sandbox), "{c:?} into a sandbox not running: {calls:#?}")
                }
                Call::End { sandbox } => live.retain(|l| *l != sandbox),
                Call::Disk | Call::RunOnce { .. } => {}
            }
        }
        assert!(live.is_empty(), "left running after the job: {live:?}");
        assert!(booted > 0 || calls.iter().any(|c| matches!(c, Call::RunOnce { .. })));
    }

    fn has_secret(bytes: &[u8]) -> bool {
        bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes())
    }

    #[tokio::test]
    async fn secrets_reach_a_step_only_on_its_own_sandboxs_stdin() {
        let (calls, outcome, lines, snaps) = run(r#"
on: push
kiln:
  secrets:
    TOKEN: { phases: [build] }
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo before &
      - run: echo "$TOKEN" | wc -c
        env:
          TOKEN: ${{ secrets.TOKEN }}
      - run: echo after
"#)
        .await;
        assert_eq!(outcome.result, JobResult::Success, "{lines:?}");
        assert_well_ordered(&calls);
        let once: Vec<_> = calls.iter().filter(|c| matches!(c, Call::RunOnce { .. })).collect();
        assert_eq!(once.len(), 1, "the step handed a secret runs alone: {calls:#?}");
        let Call::RunOnce { spec, stdin, .. } = once[0] else { unreachable!() };
        assert!(spec.init_reads_secrets, "kiln-init must read them from stdin");
        assert!(has_secret(stdin.as_deref().unwrap_or_default()), "the secret goes on stdin");
        assert!(!spec.env.iter().any(|(k, v)| k == "TOKEN" || has_secret(v.as_bytes())), "{spec:?}");
        assert!(!spec.argv.iter().any(|a| has_secret(a.as_bytes())));
        // No other sandbox, exec or stdin ever saw it.
        for c in &calls {
            match c {
                Call::Boot { spec, .. } => {
                    assert!(!format!("{spec:?}").contains(SECRET));
                    assert!(!spec.init_reads_secrets);
                }
                Call::Exec { env, argv, .. } => {
                    assert!(!format!("{env:?}{argv:?}").contains(SECRET))
                }
                _ => {}
            }
        }
        // The shared phase sandbox ends before the secret's step, so
        // what `echo before &` left running cannot read its environ; the
        // next step gets a new one.
        let pos = |f: &dyn Fn(&Call) -> bool| calls.iter().position(f).unwrap();
        let first_end = pos(&|c| matches!(c, Call::End { .. }));
        let run_once = pos(&|c| matches!(c, Call::RunOnce { .. }));
        assert!(first_end < run_once, "{calls:#?}");
        assert_eq!(boots(&calls).len(), 2, "{calls:#?}");
        // And no file kiln wrote on the host held it when any sandbox started.
        assert!(!snaps.is_empty());
        assert!(snaps.iter().all(|s| !has_secret(s)), "a secret was written to disk");
    }

    #[tokio::test]
    async fn steps_are_execd_into_one_booted_sandbox_with_the_jobs_mounts() {
        let (calls, outcome, lines, _) = run(r#"
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: sleep 1000 &
      - run: echo two
      - run: echo three
"#)
        .await;
        assert_eq!(outcome.result, JobResult::Success, "{lines:?}");
        assert_well_ordered(&calls);
        assert_eq!(calls.first(), Some(&Call::Disk), "the job's disk comes first");
        let ids = boots(&calls);
        assert_eq!(ids.len(), 1, "one phase, one sandbox: {calls:#?}");
        let Some(Call::Boot { spec, .. }) = calls.iter().find(|c| matches!(c, Call::Boot { .. })) else {
            unreachable!()
        };
        for m in [PHASE_STEPS_DIR, PHASE_FILES_DIR, HOME, TOOL_CACHE] {
            assert!(spec.mounts.iter().any(|d| d == m), "{m} not mounted: {spec:?}");
        }
        assert!(spec.workspace.ends_with("workspace"), "{spec:?}");
        let execs: Vec<_> = calls.iter().filter(|c| matches!(c, Call::Exec { .. })).collect();
        assert_eq!(execs.len(), 3);
        for e in execs {
            let Call::Exec { argv, env, .. } = e else { unreachable!() };
            assert!(argv.last().unwrap().starts_with(PHASE_STEPS_DIR), "{argv:?}");
            assert!(env.iter().any(|(k, v)| k == "GITHUB_WORKSPACE" && v == WORKSPACE), "{env:?}");
            assert!(env.iter().any(|(k, v)| k == "HOME" && v == HOME), "{env:?}");
        }
    }

    #[tokio::test]
    async fn a_phase_boundary_ends_the_sandbox_before_the_next_boots() {
        let (calls, outcome, lines, _) = run(r#"
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: sleep 1000 &
      - run: echo still build
      - run: echo deploying
        kiln: { phase: deploy }
"#)
        .await;
        assert_eq!(outcome.result, JobResult::Success, "{lines:?}");
        assert_well_ordered(&calls);
        let ids = boots(&calls);
        assert_eq!(ids.len(), 2, "{calls:#?}");
        assert_ne!(ids[0], ids[1]);
        let end_first = calls.iter().position(|c| matches!(c, Call::End { sandbox } if sandbox == ids[0]));
        let boot_second = calls.iter().position(|c| matches!(c, Call::Boot { id, .. } if id == ids[1]));
        assert!(end_first < boot_second, "{calls:#?}");
        assert!(lines.iter().any(|l| l.contains("phase sandbox ended")), "said in the log: {lines:?}");
    }

    #[tokio::test]
    async fn a_failed_step_leaves_nothing_running_for_the_steps_after_it() {
        let (calls, outcome, lines, _) = run(r#"
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: |
          sleep 1000 &
          exit 3
      - run: echo cleanup
        if: always()
"#)
        .await;
        assert_eq!(outcome.result, JobResult::Failure, "{lines:?}");
        assert_eq!(outcome.exit_code, Some(3));
        assert_well_ordered(&calls);
        assert_eq!(boots(&calls).len(), 2, "the `always()` step gets a fresh sandbox: {calls:#?}");
    }

    #[tokio::test]
    async fn a_step_past_its_deadline_is_killed_and_its_sandbox_ended() {
        let (calls, outcome, lines, _) = run(r#"
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: sleep infinity
        timeout-minutes: 0.002
      - run: echo after
        if: always()
"#)
        .await;
        assert_eq!(outcome.result, JobResult::Failure, "{lines:?}");
        assert!(outcome.reason.as_deref().unwrap_or("").contains("time"), "{outcome:?}");
        assert_well_ordered(&calls);
        let ids = boots(&calls);
        let kill = calls.iter().position(|c| matches!(c, Call::Kill { sandbox } if sandbox == ids[0]));
        let end = calls.iter().position(|c| matches!(c, Call::End { sandbox } if sandbox == ids[0]));
        assert!(kill.is_some() && kill < end, "killed, then ended: {calls:#?}");
        assert_eq!(ids.len(), 2, "{calls:#?}");
    }

    #[tokio::test]
    async fn steps_handed_secrets_each_run_alone_with_their_own_stdin() {
        // The same rules hold for the steps that run alone: secrets or not,
        // nothing is exec'd and nothing outlives its step.
        let (calls, _, _, _) = run(r#"
on: push
kiln:
  secrets:
    TOKEN: { phases: [build] }
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo one
        env:
          TOKEN: ${{ secrets.TOKEN }}
      - run: echo two
        env:
          TOKEN: ${{ secrets.TOKEN }}
"#)
        .await;
        assert_well_ordered(&calls);
        assert!(calls.iter().all(|c| !matches!(c, Call::Exec { .. } | Call::Boot { .. })), "{calls:#?}");
        let stdins: Vec<_> = calls
            .iter()
            .filter_map(|c| if let Call::RunOnce { stdin, .. } = c { stdin.clone() } else { None })
            .collect();
        assert_eq!(stdins.len(), 2, "each step is handed its own copy: {calls:#?}");
    }

    #[tokio::test]
    async fn a_built_in_that_works_on_the_disk_from_the_host_ends_the_phase_first() {
        let (calls, outcome, lines, _) = run(r#"
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: sleep 1000 &
      - uses: actions/cache@v4
        with:
          path: ~/.cache/pip
          key: pip-1
      - run: echo after
        if: always()
"#)
        .await;
        assert_well_ordered(&calls);
        // This job has no store, so the cache step fails, but only after
        // the processes that could race its host-side writes are gone.
        assert_eq!(outcome.result, JobResult::Failure, "{lines:?}");
        let ended = lines.iter().position(|l| l.contains("phase sandbox ended")).expect("said");
        let failed = lines.iter().position(|l| l.contains("no cache store")).expect("cache step failed");
        assert!(ended < failed, "{lines:#?}");
        assert_eq!(boots(&calls).len(), 2, "{calls:#?}");
    }
}
