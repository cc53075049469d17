//! A job is one machine, a phase is one sandbox: a step's background
//! process serves the next steps of its phase and ends at the phase
//! boundary; a step handed secrets runs in a sandbox of its own, so no
//! other step's process can read them. On both tiers.

mod common;

use common::Project;

const SERVER: &str = r#"
jobs:
  test:
    steps:
      - name: start a server in the background
        run: |
          mkdir -p site && echo "served by an earlier step" > site/index.html
          nohup python3 -m http.server 8765 --bind 127.0.0.1 --directory site > /tmp/server.log 2>&1 &
          echo started
      - name: test it
        run: |
          for i in $(seq 1 100); do curl -sf http://127.0.0.1:8765/ && break; sleep 0.1; done
      - name: still there
        run: curl -sf http://127.0.0.1:8765/ > /dev/null && echo "still served"
      - name: after the phase boundary
        kiln: { phase: deploy }
        run: |
          if curl -s -o /dev/null http://127.0.0.1:8765/; then echo "BROKEN: the server outlived its phase"; exit 1; fi
          echo "server ended with its phase"
  other-job:
    needs: test
    steps:
      - run: |
          if curl -s -o /dev/null http://127.0.0.1:8765/; then echo "BROKEN: another job reached it"; exit 1; fi
          echo isolated
"#;

per_tier!(a_background_server_lives_until_its_phase_ends, |tier| {
    let p = Project::new(SERVER);
    let run = p.run(tier, &[]);
    run.expect_code(0);
    run.assert_lines(
        "test",
        &["started", "served by an earlier step", "still served", "server ended with its phase"],
    );
    assert!(
        run.system_lines("test").iter().any(|l| l.contains("phase sandbox ended") && l.contains("deploy")),
        "{:?}",
        run.system_lines("test")
    );
    assert_eq!(run.lines("other-job"), ["isolated"]);
});

const TOKEN: &str = "kiln-phase-secret-7f3a9c2e41";

/// An earlier step leaves a process that keeps scanning every process's
/// environment for the secret; the step handed the secret runs; a later
/// step looks for it too. Neither may ever see it.
const SNOOP: &str = r#"
kiln:
  secrets:
    DEPLOY_TOKEN: { phases: [build] }
jobs:
  snoop:
    steps:
      - name: leave a snooper behind
        run: |
          cat > /tmp/snoop.sh <<'SH'
          while true; do
            for f in /proc/[0-9]*/environ; do
              if tr '\0' '\n' < "$f" 2>/dev/null | grep -q '^T='; then echo "saw T in $f" >> "$GITHUB_WORKSPACE/snooped"; fi
            done
            sleep 0.05
          done
          SH
          nohup bash /tmp/snoop.sh > /dev/null 2>&1 &
          echo snooping
      - name: handed the secret
        env:
          T: ${{ secrets.DEPLOY_TOKEN }}
        run: |
          sleep 1
          nohup sleep 300 > /dev/null 2>&1 &
          test -n "$T" && echo "has its secret"
      - name: after it
        run: |
          for f in /proc/[0-9]*/environ; do
            if tr '\0' '\n' < "$f" 2>/dev/null | grep -q '^T='; then echo "BROKEN: T visible in $f"; exit 1; fi
          done
          if [ -s snooped ]; then echo "BROKEN: $(cat snooped)"; exit 1; fi
          if pgrep -f snoop.sh > /dev/null; then echo "BROKEN: the snooper still runs"; exit 1; fi
          echo "nothing leaked"
"#;

per_tier!(a_step_handed_secrets_runs_alone, |tier| {
    let p = Project::new(SNOOP);
    let run = p.run(tier, &["--secret", &format!("DEPLOY_TOKEN={TOKEN}")]);
    run.expect_code(0);
    run.assert_lines("snoop", &["snooping", "has its secret", "nothing leaked"]);
    assert!(!run.all_text().contains(TOKEN));
    assert!(
        run.system_lines("snoop")
            .iter()
            .any(|l| l.contains("a step handed secrets runs in a sandbox of its own")),
        "{:?}",
        run.system_lines("snoop")
    );
});

/// Output a background process prints after its step ended is still read
/// and logged as that step's; the step itself ends without waiting for it.
const LATE_OUTPUT: &str = r#"
jobs:
  late:
    steps:
      - name: talker
        run: |
          ( sleep 0.5; echo "late line from the background" ) &
          echo "step done"
      - run: sleep 1.5; echo "next step"
"#;

per_tier!(background_output_is_still_logged, |tier| {
    let p = Project::new(LATE_OUTPUT);
    let run = p.run(tier, &[]);
    run.expect_code(0);
    let late = run
        .entries
        .iter()
        .find(|e| e["text"] == "late line from the background")
        .unwrap_or_else(|| panic!("late line missing: {:?}", run.lines("late")));
    assert_eq!(late["step"], "talker");
});

const SURVIVOR: &str = r#"
jobs:
  a:
    steps:
      - run: nohup sleep 300 > /dev/null 2>&1 &
      - run: if pgrep -f "sleep 300" > /dev/null; then echo survived; else echo gone; fi
"#;

#[test]
fn sandbox_per_step_ends_what_a_step_leaves_running() {
    let p = Project::new(SURVIVOR);
    let shared = p.run("container", &[]);
    shared.expect_code(0);
    assert_eq!(shared.lines("a"), ["survived"]);
    let apart = p.run("container", &["--sandbox-per-step"]);
    apart.expect_code(0);
    assert_eq!(apart.lines("a"), ["gone"]);
}

/// A step cannot reach the agent that starts the steps: its socket is gone
/// once PID 1 connected, its directory is read-only, and PID 1's file
/// descriptors cannot be taken (`pidfd_getfd` is refused by seccomp, which
/// every step inherits from PID 1).
const AGENT_PROBE: &str = r#"
jobs:
  probe:
    steps:
      - run: echo first
      - shell: python
        run: |
          import ctypes, os, platform, socket, sys
          left = os.listdir("/kiln/agent")
          if left:
              print("BROKEN: the agent directory holds", left); sys.exit(1)
          try:
              open("/kiln/agent/x", "w")
              print("BROKEN: wrote into the agent directory"); sys.exit(1)
          except OSError:
              pass
          s = socket.socket(socket.AF_UNIX)
          try:
              s.connect("/kiln/agent/agent.sock")
              print("BROKEN: connected to the agent"); sys.exit(1)
          except OSError:
              pass
          if platform.machine() == "x86_64":
              libc = ctypes.CDLL(None, use_errno=True)
              pidfd = libc.syscall(434, 1, 0)  # pidfd_open(1)
              for fd in range(0, 32):
                  if pidfd >= 0 and libc.syscall(438, pidfd, fd, 0) >= 0:  # pidfd_getfd
                      print(f"BROKEN: took PID 1's fd {fd}"); sys.exit(1)
          print("agent unreachable")
"#;

per_tier!(a_step_cannot_reach_the_agent, |tier| {
    let p = Project::new(AGENT_PROBE);
    let run = p.run(tier, &[]);
    run.expect_code(0);
    assert_eq!(run.lines("probe"), ["first", "agent unreachable"]);
});

/// kiln's host-side built-ins (artifact upload and download, cache, checkout)
/// never work on the job's files while a process of the phase runs: it
/// could swap a checked path for a link between the check and the use.
const RACER: &str = r#"
jobs:
  a:
    steps:
      - run: |
          mkdir -p out && echo one > out/a.txt
          nohup sh -c 'while true; do mkdir -p out/churn; rmdir out/churn; done' > /dev/null 2>&1 &
          echo racing
      - uses: actions/upload-artifact@v4
        with: { name: out, path: out }
      - run: |
          if pgrep -f "out/churn" > /dev/null; then echo "BROKEN: the racer survived"; exit 1; fi
          echo "racer gone"
"#;

#[test]
fn host_side_builtins_end_the_phase_first() {
    let p = Project::new(RACER);
    let run = p.run("container", &[]);
    run.expect_code(0);
    assert_eq!(run.lines("a"), ["racing", "racer gone"]);
    assert!(
        run.system_lines("a").iter().any(|l| l.contains("phase sandbox ended")
            && l.contains("a built-in step works on the job's files from the host")),
        "{:?}",
        run.system_lines("a")
    );
}
