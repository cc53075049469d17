//! Each resource limit is hit, and the step ends with a classified reason
//! that the log, the summary and the exit code all carry.

mod common;

use common::Project;

fn hits(tier: &str, kiln: &str, script: &str, reason: &str) {
    let wf = format!(
        "jobs:\n  hog:\n    kiln: {{ {kiln} }}\n    steps:\n      - shell: bash\n        run: |\n{}\n",
        indent(script)
    );
    let p = Project::new(&wf);
    let run = p.run(tier, &[]);
    run.expect_code(1);
    let job = run.job("hog");
    assert_eq!(job["status"], "failed");
    assert_eq!(job["reason"].as_str(), Some(reason), "summary: {job}\nlog:\n{}", run.all_text());
    assert!(
        run.system_lines("hog").iter().any(|l| l.contains(reason)),
        "the log does not say `{reason}`: {:?}",
        run.system_lines("hog")
    );
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("          {l}")).collect::<Vec<_>>().join("\n")
}

per_tier!(memory, |tier| hits(
    tier,
    "memory: 128Mi",
    "python3 -c 'x = bytearray(512 * 1024 * 1024); print(len(x))'",
    "memory limit exceeded (128 MiB)"
));

per_tier!(processes, |tier| hits(
    tier,
    "pids: 64",
    "for i in $(seq 200); do sleep 5 & done; wait",
    "process limit exceeded (64)"
));

per_tier!(wall_time, |tier| {
    let wf = "jobs:\n  hog:\n    steps:\n      - timeout-minutes: 0.05\n        run: sleep 60\n";
    let p = Project::new(wf);
    let run = p.run(tier, &[]);
    run.expect_code(1);
    assert_eq!(run.job("hog")["reason"], "timed out after 3s");
});

per_tier!(disk, |tier| hits(
    tier,
    "disk: 32Mi",
    "dd if=/dev/zero of=big bs=1M count=100",
    "disk quota exceeded (32 MiB)"
));

per_tier!(log_bytes, |tier| hits(
    tier,
    "log: 64Ki",
    "yes 'flood' | head -c 10000000; sleep 20",
    "log limit exceeded (64 KiB)"
));

per_tier!(tmp_is_bounded, |tier| {
    let wf = "jobs:\n  t:\n    kiln: { tmp: 8Mi }\n    steps:\n      - run: |\n          if dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>/dev/null; then echo FILLED; exit 1; fi\n          echo tmp held\n";
    let p = Project::new(wf);
    let run = p.run(tier, &[]);
    run.expect_code(0);
    assert!(run.lines("t").contains(&"tmp held".to_string()));
});
