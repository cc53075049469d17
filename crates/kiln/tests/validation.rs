//! Invalid input is reported with file, line and column, exits 2, and never
//! starts a sandbox (no build is recorded).

mod common;

use common::Project;

fn invalid(workflow: &str, expect: &[&str]) {
    let p = Project::new(workflow);
    let out = p.kiln().args(["run", "ci.yml", "--isolation", "container"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for e in expect {
        assert!(stderr.contains(e), "expected `{e}` in:\n{stderr}");
    }
    // Nothing ran: no build was recorded.
    let db = p.state_dir().join("state.db");
    if db.exists() {
        let list = p.kiln().args(["builds", "--json"]).output().unwrap();
        assert!(list.stdout.is_empty(), "a build was recorded: {}", String::from_utf8_lossy(&list.stdout));
    }
}

#[test]
fn yaml_syntax_error_names_line() {
    invalid("jobs:\n  a:\n    steps:\n      - run: [unclosed\n", &["ci.yml:"]);
}

#[test]
fn unknown_key_has_did_you_mean() {
    invalid(
        "jobs:\n  a:\n    neds: b\n    steps:\n      - run: echo\n",
        &["ci.yml:3:5", "did you mean `needs`"],
    );
}

#[test]
fn needs_naming_no_job() {
    invalid("jobs:\n  a:\n    needs: nope\n    steps:\n      - run: echo\n", &["ci.yml:3:", "nope"]);
}

#[test]
fn cycle_is_printed() {
    invalid(
        "jobs:\n  a:\n    needs: c\n    steps: [{run: echo}]\n  b:\n    needs: a\n    steps: [{run: echo}]\n  c:\n    needs: b\n    steps: [{run: echo}]\n",
        &["a -> c -> b -> a"],
    );
}

/// What kiln cannot run (an action it does not have, a container, service
/// containers) is valid input: the job is skipped with the reason and its
/// line, and the rest of the file runs.
fn refused_job(workflow: &str, job: &str, expect: &str) {
    let p = Project::new(workflow);
    let run = p.run("container", &[]);
    run.expect_code(0);
    assert_eq!(run.status(job), "skipped");
    let reason = run.job(job)["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.contains(expect), "expected `{expect}` in the reason `{reason}`");
    assert_eq!(run.status("other"), "succeeded");
}

#[test]
fn unsupported_uses_refuses_its_job_with_the_line() {
    refused_job(
        "jobs:\n  build:\n    steps:\n      - uses: actions/checkout@v4\n      - name: Cache\n        uses: actions/github-script@v7\n  other:\n    steps: [{run: echo}]\n",
        "build",
        "`uses: actions/github-script@v7` is not an action kiln has (line 5:9)",
    );
}

#[test]
fn a_missing_container_image_and_services_refuse_their_job() {
    refused_job(
        "jobs:\n  a:\n    container: node:20\n    steps: [{run: echo}]\n  other:\n    steps: [{run: echo}]\n",
        "a",
        "container: no image `node:20` here (import it with `kiln image import FILE node:20`",
    );
    refused_job(
        "jobs:\n  a:\n    services:\n      db: {image: postgres}\n    steps: [{run: echo}]\n  other:\n    steps: [{run: echo}]\n",
        "a",
        "service db: no image `postgres` here (import it with `kiln image import FILE postgres`",
    );
}

#[test]
fn bad_expression() {
    invalid("jobs:\n  a:\n    steps:\n      - run: echo ${{ matirx.os }}\n", &["ci.yml:4:", "matirx"]);
}

#[test]
fn matrix_too_large() {
    invalid(
        "jobs:\n  a:\n    strategy:\n      matrix:\n        x: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]\n        y: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]\n    steps: [{run: echo}]\n",
        &["ci.yml:", "256"],
    );
}

#[test]
fn escaping_working_directory() {
    invalid(
        "jobs:\n  a:\n    steps:\n      - run: echo\n        working-directory: ../../etc\n",
        &["ci.yml:5:"],
    );
    invalid(
        "jobs:\n  a:\n    steps:\n      - run: echo\n        working-directory: /proc/self/fd/3\n",
        &["ci.yml:5:"],
    );
}

#[test]
fn notices_for_keys_without_local_effect() {
    let p = Project::new("permissions: read-all\njobs:\n  a:\n    steps: [{run: echo hi}]\n");
    let out = p.kiln().args(["validate", "ci.yml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permissions"));
}
