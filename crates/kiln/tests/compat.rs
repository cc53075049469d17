//! Workflows as projects write them for GitHub's runners, run unchanged:
//! OS matrices, actions kiln does not have, a job's steps sharing one
//! machine, GitHub's shell rules, composite actions, gathering artifacts and
//! caching the home directory. Fixtures in `tests/fixtures/compat/`.

mod common;

use common::{Project, Run};

fn fixture(name: &str) -> &'static str {
    match name {
        "os-matrix" => include_str!("fixtures/compat/os-matrix.yml"),
        "unsupported" => include_str!("fixtures/compat/unsupported.yml"),
        "job-machine" => include_str!("fixtures/compat/job-machine.yml"),
        "shells" => include_str!("fixtures/compat/shells.yml"),
        "composite" => include_str!("fixtures/compat/composite.yml"),
        "artifacts" => include_str!("fixtures/compat/artifacts.yml"),
        "home-cache" => include_str!("fixtures/compat/home-cache.yml"),
        other => panic!("no fixture {other}"),
    }
}

fn reason(run: &Run, id: &str) -> String {
    run.job(id)["reason"].as_str().unwrap_or("").to_string()
}

per_tier!(os_matrix_runs_linux_legs_and_names_the_others, |tier| {
    let p = Project::new(fixture("os-matrix"));
    let run = p.run(tier, &[]);
    run.expect_code(0);
    assert_eq!(run.status("test (os: ubuntu-latest)"), "succeeded");
    assert_eq!(run.status("test (os: ubuntu-22.04)"), "succeeded");
    for (leg, label) in [("windows-latest", "windows-latest"), ("macos-latest", "macos-latest")] {
        let id = format!("test (os: {leg})");
        assert_eq!(run.status(&id), "skipped");
        assert_eq!(reason(&run, &id), format!("runs-on {label}: no such runner here"));
    }
    assert!(run.lines("test (os: ubuntu-22.04)").contains(&"leg on Linux for ubuntu-22.04".to_string()));
    // `if: always()` after skipped legs; the group's result is success.
    assert_eq!(run.status("report"), "succeeded");
    let lines = run.lines("report");
    assert!(lines.contains(&"result success".to_string()), "{lines:?}");
    let json = lines.iter().find(|l| l.starts_with("needs=")).expect("toJson(needs) line");
    let needs: serde_json::Value = serde_json::from_str(&json["needs=".len()..]).expect("toJson is JSON");
    assert_eq!(needs["test"]["result"], "success");
});

#[test]
fn an_unsupported_action_refuses_only_its_job() {
    let p = Project::new(fixture("unsupported"));
    let run = p.run("gvisor", &[]);
    run.expect_code(0);
    assert_eq!(run.status("lint"), "skipped");
    assert_eq!(
        reason(&run, "lint"),
        "`uses: actions/github-script@v7` is not an action kiln has (line 10:9)"
    );
    // GitHub's rule: a job whose need was skipped is skipped.
    assert_eq!(run.status("lint-report"), "skipped");
    assert_eq!(run.status("test"), "succeeded");
    assert!(run.lines("test").contains(&"tests pass".to_string()));
    let notice = run.system_lines("test").into_iter().find(|l| l.contains("codecov/codecov-action@v5"));
    assert!(notice.is_some_and(|l| l.contains("skipped")), "{:?}", run.system_lines("test"));

    // The operator may refuse uploaders instead: then the test job is refused.
    let run = p.run("gvisor", &["--uploaders", "refuse"]);
    run.expect_code(0);
    assert_eq!(run.status("test"), "skipped");
    assert!(reason(&run, "test").contains("codecov/codecov-action@v5"), "{}", reason(&run, "test"));

    // `kiln validate` says the same before anything runs.
    let out = p.kiln().args(["validate", "ci.yml"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 jobs (1 will run here, 2 will be skipped)"), "{text}");
    assert!(
        text.contains("skip  lint: `uses: actions/github-script@v7` is not an action kiln has (line 10:9)"),
        "{text}"
    );
    assert!(text.contains("skip  lint-report: needs `lint`, which will be skipped"), "{text}");
    assert!(text.contains("run   test (3 steps)"), "{text}");

    // `--job` runs one job and what it needs, nothing else.
    let run = p.run("gvisor", &["--job", "test"]);
    run.expect_code(0);
    let ids: Vec<&str> =
        run.summary["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["test"]);
    let bad = p.run("gvisor", &["--job", "tset"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("did you mean `test`"), "{}", bad.stderr);
}

per_tier!(a_jobs_steps_share_its_home_and_tools, |tier| {
    let p = Project::new(fixture("job-machine"));
    p.write(
        "tool/package.json",
        r#"{"name": "kiln-fixture-tool", "version": "1.0.0", "bin": {"fixture-tool": "cli.js"}}"#,
    );
    p.write("tool/cli.js", "#!/usr/bin/env node\nconsole.log('global tool from an earlier step');\n");
    p.write("rtool/Cargo.toml", "[package]\nname = \"rtool\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
    p.write("rtool/src/main.rs", "fn main() { println!(\"cargo-installed tool from an earlier step\"); }\n");
    let run = p.run(tier, &[]);
    run.expect_code(0);
    run.assert_lines(
        "tools",
        &[
            "mytool says hi",
            "state from step 2",
            "home is /home/runner, tool cache is /opt/hostedtoolcache",
            "global tool from an earlier step",
            "cargo-installed tool from an earlier step",
        ],
    );
});

per_tier!(shells_follow_githubs_rules, |tier| {
    let p = Project::new(fixture("shells"));
    let run = p.run(tier, &[]);
    run.expect_code(0);
    run.assert_lines(
        "shells",
        &[
            "default shell kept going",
            "strict outcome failure",
            "custom template, login=yes",
            "python 3",
            "posix sh",
        ],
    );
    let lines = run.lines("shells");
    assert!(!lines.contains(&"not reached".to_string()));
});

per_tier!(composite_actions_of_the_repository_run, |tier| {
    let p = Project::new(fixture("composite"));
    p.write(".github/actions/greet/action.yml", include_str!("fixtures/compat/greet-action.yml"));
    p.write(".github/actions/greet/motd", "files beside the action\n");
    let run = p.run(tier, &[]);
    run.expect_code(0);
    run.assert_lines(
        "use-action",
        &[
            "from greet: files beside the action",
            "after hello use-action",
            "action said 'hello use-action'",
            "failing action outcome failure",
        ],
    );
    let lines = run.lines("use-action");
    // The failing call stopped at its failing step.
    assert!(!lines.contains(&"after hello nobody".to_string()), "{lines:?}");
});

#[test]
fn download_artifact_gathers_every_upload() {
    let p = Project::new(fixture("artifacts"));
    let run = p.run("container", &[]);
    run.expect_code(0);
    run.assert_lines(
        "gather",
        &[
            "all/dist-one/one.txt",
            "all/dist-two/two.txt",
            "merged/existing.txt",
            "merged/one.txt",
            "merged/two.txt",
            "one",
            "two",
            "keep",
        ],
    );
}

#[test]
fn home_directory_caches_are_kept_between_builds() {
    let p = Project::new(fixture("home-cache"));
    let cold = p.run("container", &[]);
    cold.expect_code(0);
    assert!(cold.lines("deps").contains(&"cold".to_string()), "{:?}", cold.lines("deps"));
    assert!(cold.lines("deps").contains(&"hit=false".to_string()));
    let warm = p.run("container", &[]);
    warm.expect_code(0);
    assert!(
        warm.lines("deps").contains(&"restored: downloaded once".to_string()),
        "{:?}",
        warm.lines("deps")
    );
    assert!(warm.lines("deps").contains(&"hit=true".to_string()));
}
