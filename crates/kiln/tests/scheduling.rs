//! The build loop on real sandboxes: order, parallelism, outputs, `if`,
//! matrix legs and `continue-on-error`, on both tiers.

mod common;

use common::{ms, Project};

const DIAMOND: &str = r#"
name: diamond
jobs:
  a:
    outputs:
      greeting: ${{ steps.say.outputs.word }}
    steps:
      - id: say
        run: |
          echo "word=hello" >> "$GITHUB_OUTPUT"
          echo "FROM_A_ENV=set-by-env-file" >> "$GITHUB_ENV"
      - run: echo "env is $FROM_A_ENV"
  b:
    needs: a
    steps:
      - run: sleep 1.5; echo "b got ${{ needs.a.outputs.greeting }}"
  c:
    needs: [a]
    steps:
      - run: sleep 1.5; echo "c sees result ${{ needs.a.result }}"
  d:
    needs: [b, c]
    steps:
      - run: echo d done
"#;

per_tier!(order_parallelism_and_outputs, |tier| {
    let p = Project::new(DIAMOND);
    let run = p.run(tier, &["--max-parallel", "2"]);
    run.expect_code(0);
    assert_eq!(run.summary["status"], "succeeded");
    for j in ["a", "b", "c", "d"] {
        assert_eq!(run.status(j), "succeeded", "{j}");
    }
    assert!(run.lines("a").contains(&"env is set-by-env-file".to_string()), "{:?}", run.lines("a"));
    assert!(run.lines("b").contains(&"b got hello".to_string()), "{:?}", run.lines("b"));
    assert!(run.lines("c").contains(&"c sees result success".to_string()));
    let (a, b, c, d) = (run.job("a"), run.job("b"), run.job("c"), run.job("d"));
    // Dependents start after their needs finish.
    assert!(ms(&b["started_at"]) >= ms(&a["finished_at"]));
    assert!(ms(&c["started_at"]) >= ms(&a["finished_at"]));
    assert!(ms(&d["started_at"]) >= ms(&b["finished_at"]).max(ms(&c["finished_at"])));
    // Independent jobs overlap.
    assert!(
        ms(&b["started_at"]) < ms(&c["finished_at"]) && ms(&c["started_at"]) < ms(&b["finished_at"]),
        "b and c did not overlap: {b} {c}"
    );
    // Accounting is kept per job.
    assert!(b["cpu_seconds"].as_f64().is_some());
    assert!(b["peak_memory_bytes"].as_u64().unwrap_or(0) > 0, "{b}");
});

per_tier!(max_parallel_one_serialises, |tier| {
    let p = Project::new(DIAMOND);
    let run = p.run(tier, &["--max-parallel", "1"]);
    run.expect_code(0);
    let (b, c) = (run.job("b"), run.job("c"));
    assert!(ms(&b["finished_at"]) <= ms(&c["started_at"]) || ms(&c["finished_at"]) <= ms(&b["started_at"]));
});

const FAILURES: &str = r#"
jobs:
  broken:
    steps:
      - run: echo about to fail; exit 3
      - run: echo never runs
      - name: cleanup
        if: always()
        run: echo cleanup ran
      - name: on failure
        if: failure()
        run: echo failure handler ran
  dependent:
    needs: broken
    steps:
      - run: echo should be skipped
  reporter:
    needs: broken
    if: always()
    steps:
      - run: echo "broken was ${{ needs.broken.result }}"
  on-fail:
    needs: broken
    if: failure()
    steps:
      - run: echo failure path
  flaky:
    continue-on-error: true
    steps:
      - run: exit 1
  after-flaky:
    needs: flaky
    steps:
      - id: soft
        continue-on-error: true
        run: exit 4
      - run: echo "soft outcome=${{ steps.soft.outcome }} conclusion=${{ steps.soft.conclusion }}"
"#;

per_tier!(failure_skips_dependents_unless_if_says_otherwise, |tier| {
    let p = Project::new(FAILURES);
    let run = p.run(tier, &[]);
    run.expect_code(1);
    assert_eq!(run.summary["status"], "failed");
    assert_eq!(run.status("broken"), "failed");
    assert_eq!(run.job("broken")["exit_code"], 3);
    let lines = run.lines("broken");
    assert!(!lines.contains(&"never runs".to_string()));
    assert!(lines.contains(&"cleanup ran".to_string()), "{lines:?}");
    assert!(lines.contains(&"failure handler ran".to_string()));
    assert_eq!(run.status("dependent"), "skipped");
    assert_eq!(run.status("reporter"), "succeeded");
    assert!(run.lines("reporter").contains(&"broken was failure".to_string()));
    assert_eq!(run.status("on-fail"), "succeeded");
    // continue-on-error: the job failed but its dependents ran.
    assert_eq!(run.status("flaky"), "failed");
    assert!(run.job("flaky")["reason"].as_str().unwrap_or("").contains("continue-on-error"));
    assert_eq!(run.status("after-flaky"), "succeeded");
    assert!(
        run.lines("after-flaky").contains(&"soft outcome=failure conclusion=success".to_string()),
        "{:?}",
        run.lines("after-flaky")
    );
});

const MATRIX: &str = r#"
jobs:
  test:
    name: Unit tests ${{ matrix.shard }}
    strategy:
      fail-fast: false
      matrix:
        shard: [1, 2, 3]
        include:
          - shard: 2
            slow: true
    steps:
      - run: |
          echo "shard ${{ matrix.shard }} of ${{ strategy.job-total }} slow=${{ matrix.slow }}"
          test "${{ matrix.shard }}" != 3
  fast-fail:
    strategy:
      matrix:
        n: [1, 2]
    steps:
      - run: |
          if [ "${{ matrix.n }}" = 1 ]; then exit 1; fi
          sleep 30
  summary:
    needs: test
    if: always()
    steps:
      - run: echo "test result ${{ needs.test.result }}"
"#;

per_tier!(matrix_legs_have_stable_ids_and_fail_fast_cancels, |tier| {
    let p = Project::new(MATRIX);
    let run = p.run(tier, &["--max-parallel", "4"]);
    run.expect_code(1);
    assert_eq!(run.status("test (shard: 1)"), "succeeded");
    assert_eq!(run.job("test (shard: 1)")["name"], "Unit tests 1");
    // `include` merged `slow` into the shard-2 leg, so it is part of the leg's id.
    let leg2 = "test (shard: 2, slow: true)";
    assert!(run.lines(leg2).contains(&"shard 2 of 3 slow=true".to_string()), "{:?}", run.lines(leg2));
    assert_eq!(run.status("test (shard: 3)"), "failed");
    assert!(run.lines("summary").contains(&"test result failure".to_string()));
    assert_eq!(run.status("fast-fail (n: 1)"), "failed");
    // fail-fast (the default) stopped the other leg long before its 30 s sleep ended.
    assert_eq!(run.status("fast-fail (n: 2)"), "cancelled");
    let leg = run.job("fast-fail (n: 2)");
    if leg["started_at"].is_string() {
        assert!(ms(&leg["finished_at"]) - ms(&leg["started_at"]) < 25_000, "{leg}");
    }
});

per_tier!(step_files_and_expressions, |tier| {
    let p = Project::new(
        r##"
env:
  GREETING: hello
jobs:
  files:
    env:
      WHO: world
    steps:
      - run: |
          mkdir -p "$RUNNER_TEMP/bin"
          echo "/workspace/bin" >> "$GITHUB_PATH"
          mkdir -p bin && printf '#!/bin/sh\necho tool on path\n' > bin/mytool && chmod +x bin/mytool
          echo "MULTI<<EOF" >> "$GITHUB_ENV"
          printf 'line one\nline two\n' >> "$GITHUB_ENV"
          echo "EOF" >> "$GITHUB_ENV"
          echo "# Summary" >> "$GITHUB_STEP_SUMMARY"
      - run: |
          mytool
          echo "$MULTI" | wc -l
          echo "$GREETING $WHO ci=$CI ws=$GITHUB_WORKSPACE pwd=$(pwd)"
          echo "${{ format('{0}-{1}', 'a', 'b') }} ${{ contains('Hello', 'ELL') }} ${{ toJSON(fromJSON('[1,2]')) == '[1,2]' }}"
      - shell: python
        run: |
          import os
          print("python sees", os.environ["GREETING"])
      - shell: sh
        working-directory: bin
        run: echo "in $(pwd)"
"##,
    );
    let run = p.run(tier, &[]);
    run.expect_code(0);
    let lines = run.lines("files");
    for want in [
        "tool on path",
        "2",
        "hello world ci=true ws=/workspace pwd=/workspace",
        "python sees hello",
        "in /workspace/bin",
    ] {
        assert!(lines.contains(&want.to_string()), "missing `{want}` in {lines:?}");
    }
    assert!(lines.iter().any(|l| l.starts_with("a-b true")), "{lines:?}");
});

per_tier!(logs_stream_while_the_step_runs, |tier| {
    use std::io::{BufRead, BufReader};
    // The first line must reach kiln's stdout while the step is still running
    // (it waits for a file that the test creates only after seeing the line).
    let p = Project::new(
        "jobs:\n  live:\n    steps:\n      - run: |\n          echo first\n          for i in $(seq 600); do [ -e /workspace/go ] && break; sleep 0.1; done\n          echo second\n",
    );
    let mut child = p
        .kiln()
        .args(["run", "ci.yml", "--json", "--isolation", tier])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut saw_first = false;
    while reader.read_line(&mut line).unwrap() > 0 {
        if line.contains("\"text\":\"first\"") {
            saw_first = true;
            break;
        }
        assert!(!line.contains("\"type\":\"summary\""), "the build ended before `first` was shown");
        line.clear();
    }
    assert!(saw_first, "`first` never arrived");
    // The step is still waiting: nothing but `first` has been printed yet.
    // Let it finish by creating the file in its workspace.
    let build_dir = p.state_dir().join("builds");
    let ws =
        std::fs::read_dir(&build_dir).unwrap().next().unwrap().unwrap().path().join("job-0/disk/workspace");
    std::fs::write(ws.join("go"), "").unwrap();
    let rest: Vec<String> = reader.lines().map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success());
    assert!(rest.iter().any(|l| l.contains("\"text\":\"second\"")), "{rest:?}");
});

per_tier!(working_directory_through_a_planted_symlink_is_refused, |tier| {
    let p = Project::new(
        "jobs:\n  wd:\n    steps:\n      - run: ln -s /etc escape\n      - run: echo inside\n        working-directory: escape\n",
    );
    let run = p.run(tier, &[]);
    run.expect_code(1);
    let reason = run.job("wd")["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.contains("symbolic link"), "{reason}");
    assert!(!run.lines("wd").contains(&"inside".to_string()));
});
