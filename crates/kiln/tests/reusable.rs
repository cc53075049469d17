//! Reusable workflows of the repository on real sandboxes: the called jobs
//! run with their inputs, the caller ends with their result and outputs, and
//! a call kiln cannot make refuses the calling job only.

mod common;

use common::Project;

const CI: &str = r#"
name: ci
jobs:
  prepare:
    outputs:
      target: ${{ steps.t.outputs.target }}
    steps:
      - id: t
        run: echo "target=linux" >> "$GITHUB_OUTPUT"
  build:
    needs: prepare
    uses: ./.github/workflows/build.yml
    with:
      target: ${{ needs.prepare.outputs.target }}
      jobs: 3
  publish:
    needs: build
    steps:
      - run: echo "publish ${{ needs.build.result }} ${{ needs.build.outputs.artifact }}"
  missing:
    uses: ./.github/workflows/nowhere.yml
"#;

const BUILD: &str = r#"
name: build-lib
on:
  workflow_call:
    inputs:
      target: {type: string, required: true}
      jobs: {type: number, default: 1}
      release: {type: boolean, default: false}
    outputs:
      artifact:
        value: ${{ jobs.compile.outputs.file }}
env:
  TARGET: ${{ inputs.target }}
jobs:
  compile:
    outputs:
      file: ${{ steps.c.outputs.file }}
    steps:
      - id: c
        run: |
          echo "compile $TARGET jobs=${{ inputs.jobs }} release=${{ inputs.release }}"
          echo "file=$TARGET.bin" >> "$GITHUB_OUTPUT"
  test:
    needs: compile
    steps:
      - run: echo "test ${{ needs.compile.outputs.file }}"
"#;

per_tier!(a_called_workflow_runs_with_its_inputs, |tier| {
    let p = Project::new(CI);
    p.write(".github/workflows/build.yml", BUILD);
    let run = p.run(tier, &[]);
    // The missing file refuses its job only; a refused job is skipped.
    run.expect_code(0);
    assert_eq!(run.summary["status"], "succeeded");
    for j in ["prepare", "build", "build / compile", "build / test", "publish"] {
        assert_eq!(run.status(j), "succeeded", "{j}: {}", run.summary);
    }
    assert!(
        run.lines("build / compile").contains(&"compile linux jobs=3 release=false".to_string()),
        "{:?}",
        run.lines("build / compile")
    );
    assert!(
        run.lines("build / test").contains(&"test linux.bin".to_string()),
        "{:?}",
        run.lines("build / test")
    );
    assert!(
        run.lines("publish").contains(&"publish success linux.bin".to_string()),
        "{:?}",
        run.lines("publish")
    );
    assert_eq!(run.status("missing"), "skipped");
    let reason = run.job("missing")["reason"].as_str().unwrap_or("").to_string();
    assert!(
        reason.contains(
            "`uses: ./.github/workflows/nowhere.yml`: reading `.github/workflows/nowhere.yml`: no such file"
        ),
        "{reason}"
    );
});

#[test]
fn validate_lists_the_called_jobs_and_refuses_paths_out_of_the_repository() {
    let p = Project::new(CI);
    p.write(".github/workflows/build.yml", BUILD);
    // A called workflow that is a symlink out of the repository.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("x.yml"), BUILD).unwrap();
    std::os::unix::fs::symlink(outside.path().join("x.yml"), p.path().join(".github/workflows/out.yml"))
        .unwrap();
    let ci = CI.replace("nowhere.yml", "out.yml");
    std::fs::write(p.path().join("ci.yml"), ci).unwrap();
    let out = p.kiln().args(["validate", "ci.yml"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("  call  build (.github/workflows/build.yml, 2 jobs)"), "{stdout}");
    assert!(stdout.contains("  run   build / compile (1 steps)"), "{stdout}");
    assert!(stdout.contains("it leads out of the repository"), "{stdout}");
    // A called file with a required input missing is an error of the caller.
    let ci = CI.replace("      target: ${{ needs.prepare.outputs.target }}\n", "");
    std::fs::write(p.path().join("ci.yml"), ci).unwrap();
    let out = p.kiln().args(["validate", "ci.yml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "ci.yml:13:5: job `build`: input `target` is required by `.github/workflows/build.yml`"
        ),
        "{stderr}"
    );
}

const SECRETS: &str = r#"
kiln:
  secrets:
    DEPLOY_TOKEN: { phases: [deploy], as: file }
jobs:
  ship:
    uses: ./.github/workflows/deploy.yml
    secrets: inherit
  plain:
    uses: ./.github/workflows/plain.yml
"#;

const DEPLOY: &str = r#"
on: workflow_call
jobs:
  push:
    kiln: { phase: deploy }
    steps:
      - env:
          TOKEN: ${{ secrets.DEPLOY_TOKEN }}
        run: |
          echo "length ${#TOKEN}"
          echo "file $(wc -c < /run/secrets/DEPLOY_TOKEN)"
"#;

const PLAIN: &str = r#"
on: workflow_call
jobs:
  look:
    kiln: { phase: deploy }
    steps:
      - run: echo "found $(env | grep -c tok_) $(ls /run/secrets 2>/dev/null | wc -l)"
"#;

per_tier!(secrets_reach_a_called_workflow_only_through_inherit, |tier| {
    let p = Project::new(SECRETS);
    p.write(".github/workflows/deploy.yml", DEPLOY);
    p.write(".github/workflows/plain.yml", PLAIN);
    let run = p.run(tier, &["--secret", "DEPLOY_TOKEN=tok_9f3KqZr7VwX2pL8mN4bY"]);
    run.expect_code(0);
    let push = run.lines("ship / push");
    assert!(push.contains(&"length 24".to_string()) && push.contains(&"file 24".to_string()), "{push:?}");
    // No `secrets:`: no secret, in the environment or as a file.
    assert!(run.lines("plain / look").contains(&"found 0 0".to_string()), "{:?}", run.lines("plain / look"));
    assert!(!run.stdout.contains("tok_9f3KqZr7VwX2pL8mN4bY"));
});
