//! Parsing, validation and expansion of whole workflow files.

use kiln_workflow::*;
use serde_json::json;

const CI: &str = r#"name: CI
on: [push, pull_request]
permissions:
  contents: read
env:
  CARGO_TERM_COLOR: always
  RETRIES: 3
defaults:
  run:
    shell: bash
jobs:
  build:
    runs-on: ubuntu-latest
    outputs:
      version: ${{ steps.ver.outputs.version }}
    kiln:
      isolation: container
      memory: 2Gi
      cpus: 1.5
      pids: 512
      disk: 10G
      tmp: 512Mi
      log: 1024k
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
      - id: ver
        name: Version
        run: echo "version=1.2.3" >> "$GITHUB_OUTPUT"
      - run: cargo build --release
        working-directory: ./src/..
        timeout-minutes: 30
  lint:
    needs: build
    runs-on: ubuntu-latest
    steps:
      - run: cargo clippy
        continue-on-error: true
  test:
    needs: [build]
    runs-on: ${{ matrix.os }}
    strategy:
      fail-fast: false
      max-parallel: 2
      matrix:
        os: [linux, mac]
        node: [18, 20]
        exclude:
          - os: mac
            node: 18
        include:
          - os: linux
            experimental: true
    continue-on-error: ${{ matrix.experimental == true }}
    steps:
      - run: echo ${{ matrix.os }} ${{ matrix.node }}
        shell: sh
        env:
          NODE: ${{ matrix.node }}
  deploy-staging:
    needs: [lint, test]
    if: github.ref == 'refs/heads/main'
    environment: staging
    steps:
      - run: ./deploy staging ${{ needs.build.outputs.version }}
  deploy-production:
    needs: deploy-staging
    if: ${{ success() && github.event_name == 'push' }}
    timeout-minutes: 10
    steps:
      - name: Deploy
        run: |
          ./deploy production
          echo done
        shell: python
"#;

fn errors(src: &str) -> Vec<Diagnostic> {
    match load("ci.yml", src) {
        Ok(_) => panic!("expected errors"),
        Err(Diagnostics(d)) => d,
    }
}

/// Asserts that one diagnostic contains `text` at `line:col`.
#[track_caller]
fn assert_error(src: &str, line: usize, column: usize, text: &str) {
    let ds = errors(src);
    assert!(
        ds.iter().any(|d| d.message.contains(text) && d.location == Location { line, column }),
        "no `{text}` at {line}:{column} in:\n{}",
        Diagnostics(ds.clone())
    );
}

fn wf(jobs: &str) -> String {
    format!("on: push\njobs:\n{jobs}")
}

#[test]
fn realistic_workflow() {
    let plan = load("ci.yml", CI).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(plan.name, "CI");
    let ids: Vec<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "build",
            "lint",
            "test (os: linux, node: 18, experimental: true)",
            "test (os: linux, node: 20, experimental: true)",
            "test (os: mac, node: 20)",
            "deploy-staging",
            "deploy-production",
        ]
    );
    assert_eq!(plan.jobs[1].needs, vec![0]);
    assert_eq!(plan.jobs[2].needs, vec![0]);
    assert_eq!(plan.jobs[5].needs, vec![1, 2, 3, 4]);
    assert_eq!(plan.jobs[6].needs, vec![5]);
    assert_eq!(plan.groups.len(), 1);
    let g = &plan.groups[0];
    assert_eq!((g.key.as_str(), g.legs.clone()), ("test", vec![2, 3, 4]));
    assert!(!g.fail_fast);
    assert_eq!(g.max_parallel, Some(2));
    assert_eq!(plan.jobs[4].group, Some(0));
    assert_eq!(plan.jobs[4].matrix, json!({"os": "mac", "node": 20}));
    assert_eq!(plan.jobs[0].matrix, json!(null));

    let w = &plan.workflow;
    assert_eq!(w.env[0].0, "CARGO_TERM_COLOR");
    assert_eq!(w.env[1].1.source(), "3");
    assert!(matches!(w.defaults.shell, Some(ShellSpec::Fixed(Shell::Bash))));
    let build = &w.jobs[0];
    assert_eq!(build.location, Location { line: 12, column: 3 });
    assert_eq!(
        build.kiln,
        KilnJobSettings {
            isolation: Some(IsolationTier::Container),
            memory_bytes: Some(2 << 30),
            pids: Some(512),
            cpus: Some(1.5),
            disk_bytes: Some(10_000_000_000),
            tmp_bytes: Some(512 << 20),
            log_bytes: Some(1_024_000),
            ..Default::default()
        }
    );
    assert_eq!(build.outputs[0].0, "version");
    assert!(matches!(build.steps[0].action, StepAction::Checkout));
    assert_eq!(build.steps[0].location, Location { line: 25, column: 9 });
    assert_eq!(build.steps[1].id.as_deref(), Some("ver"));
    assert_eq!(build.steps[2].timeout_minutes, Some(30.0));
    assert_eq!(build.steps[2].working_directory.as_ref().unwrap().source(), "./src/..");
    assert!(matches!(w.jobs[1].steps[0].continue_on_error, BoolOrExpr::Literal(true)));
    let test = &w.jobs[2];
    assert!(matches!(test.continue_on_error, BoolOrExpr::Expr(_)));
    assert_eq!(test.runs_on[0].source(), "${{ matrix.os }}");
    match &test.steps[0].action {
        StepAction::Run { script, shell } => {
            assert_eq!(script.source(), "echo ${{ matrix.os }} ${{ matrix.node }}");
            assert!(matches!(shell, Some(ShellSpec::Fixed(Shell::Sh))));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.jobs[3].condition.as_ref().unwrap().source(), "github.ref == 'refs/heads/main'");
    assert_eq!(w.jobs[4].condition.as_ref().unwrap().source(), "success() && github.event_name == 'push'");
    assert_eq!(w.jobs[4].timeout_minutes, Some(10.0));
    match &w.jobs[4].steps[0].action {
        StepAction::Run { script, shell } => {
            assert_eq!(script.source(), "./deploy production\necho done\n");
            assert!(matches!(shell, Some(ShellSpec::Fixed(Shell::Python))));
        }
        other => panic!("{other:?}"),
    }
    let notices: Vec<String> = plan.notices.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        notices,
        [
            "ci.yml:3:1: `permissions` is accepted but has no effect in a local run",
            "ci.yml:64:5: `environment` is accepted but has no effect in a local run",
        ]
    );
}

#[test]
fn plan_name_defaults_to_file() {
    let plan = load("x.yml", &wf("  a:\n    steps:\n      - run: true\n")).unwrap();
    assert_eq!(plan.name, "x.yml");
    assert_eq!(plan.jobs[0].id, "a");
}

#[test]
fn unknown_keys_suggest() {
    assert_error(
        &wf("  a:\n    steps:\n      - run: x\n  b:\n    neds: a\n    steps:\n      - run: x\n"),
        7,
        5,
        "unknown key `neds` in job `b`; did you mean `needs`?",
    );
    assert_error("on: push\njbos:\n  a:\n    steps: [{run: x}]\n", 2, 1, "did you mean `jobs`?");
    assert_error(
        &wf("  a:\n    steps:\n      - run: x\n        shel: sh\n"),
        6,
        9,
        "unknown key `shel` in step 1 of job `a`; did you mean `shell`?",
    );
    assert_error(
        &wf("  a:\n    kiln:\n      memroy: 1G\n    steps: [{run: x}]\n"),
        5,
        7,
        "did you mean `memory`?",
    );
}

#[test]
fn needs_errors() {
    assert_error(
        &wf("  build:\n    steps: [{run: x}]\n  test:\n    needs: [biuld]\n    steps: [{run: x}]\n"),
        6,
        13,
        "job `test` needs `biuld`, which is not a job of this workflow; did you mean `build`?",
    );
    assert_error(&wf("  a:\n    needs: a\n    steps: [{run: x}]\n"), 4, 12, "job `a` needs itself");
}

#[test]
fn cycles_print_their_path() {
    let src = wf(concat!(
        "  a:\n    needs: b\n    steps: [{run: x}]\n",
        "  b:\n    needs: c\n    steps: [{run: x}]\n",
        "  c:\n    needs: [a]\n    steps: [{run: x}]\n",
        "  d:\n    needs: [a]\n    steps: [{run: x}]\n",
    ));
    let ds = errors(&src);
    assert_eq!(ds.len(), 1, "{}", Diagnostics(ds.clone()));
    assert_eq!(ds[0].message, "dependency cycle: a -> b -> c -> a");
    assert_eq!(ds[0].location, Location { line: 3, column: 3 });
}

#[test]
fn duplicate_jobs() {
    assert_error(
        &wf("  a:\n    steps: [{run: x}]\n  a:\n    steps: [{run: y}]\n"),
        5,
        3,
        "duplicate key `a`",
    );
}

/// The first refusal of the only job of `src`, as `line:column: reason`.
fn refusal(src: &str) -> String {
    let plan = load("w.yml", src).unwrap_or_else(|d| panic!("{d}"));
    let r = plan.workflow.jobs[0].refusals.first().expect("a refusal");
    format!("{}:{}: {}", r.location.line, r.location.column, r.reason)
}

#[test]
fn what_kiln_cannot_run_refuses_its_job_not_the_file() {
    assert_eq!(
        refusal(&wf("  a:\n    container:\n      image: node:20\n      options: --privileged\n    steps: [{run: x}]\n")),
        "6:7: `container.options` is not supported: the job runs in kiln's sandbox, not with docker's flags or host volumes"
    );
    assert_eq!(
        refusal(&wf("  a:\n    services:\n      db:\n        image: postgres\n        options: --health-cmd pg_isready --network-alias x\n    steps: [{run: x}]\n")),
        "7:18: service `db`: option `--network-alias` is not supported (a service runs in kiln's sandbox, not with docker's flags; kiln keeps --health-*, -e/--env and --entrypoint)"
    );
    assert_eq!(
        refusal(&wf("  a:\n    services:\n      db:\n        image: postgres\n        volumes: [/data:/data]\n    steps: [{run: x}]\n")),
        "7:9: `services.db.volumes` is not supported: a service runs in kiln's sandbox, not with host volumes"
    );
    assert!(refusal(&wf("  a:\n    uses: org/repo/.github/workflows/x.yml@main\n"))
        .starts_with("4:11: `uses: org/repo/.github/workflows/x.yml@main`: a reusable workflow in another repository is not supported"));
    assert_eq!(
        refusal(&wf("  build:\n    steps:\n      - uses: actions/checkout@v4\n      - run: make\n      - name: Setup\n        uses: actions/github-script@v7\n")),
        "7:9: `uses: actions/github-script@v7` is not an action kiln has"
    );
    assert_eq!(
        refusal(&wf("  a:\n    steps:\n      - run: x\n        shell: pwsh\n")),
        "5:9: shell `pwsh` is not available on kiln's Linux runners"
    );
    // A workflow-level default shell refuses every job that uses it.
    assert_eq!(
        refusal(
            "on: push\ndefaults:\n  run:\n    shell: powershell\njobs:\n  a:\n    steps:\n      - run: x\n"
        ),
        "8:9: shell `powershell` is not available on kiln's Linux runners"
    );
    // An empty container (a matrix leg without one) is no container.
    let plan = load("w.yml", &wf("  a:\n    container: ''\n    steps: [{run: x}]\n")).unwrap();
    assert!(plan.workflow.jobs[0].refusals.is_empty() && plan.workflow.jobs[0].container.is_none());
    let plan = load("w.yml", &wf("  a:\n    container: ${{ matrix.c }}\n    steps: [{run: x}]\n")).unwrap();
    assert!(plan.workflow.jobs[0].refusals.is_empty() && plan.workflow.jobs[0].container.is_some());
    // Coverage uploaders are steps of their own kind, not refusals.
    let plan = load(
        "w.yml",
        &wf("  a:\n    steps:\n      - uses: codecov/codecov-action@v5\n        with: {token: x}\n"),
    )
    .unwrap();
    assert!(plan.workflow.jobs[0].refusals.is_empty());
    assert!(matches!(plan.workflow.jobs[0].steps[0].action, StepAction::Uploader { .. }));
}

#[test]
fn shells_follow_githubs_rules() {
    assert_eq!(
        Shell::parse("bash").unwrap().argv("/s.sh"),
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "/s.sh"]
    );
    assert_eq!(Shell::Default.argv("/s.sh"), ["bash", "-e", "/s.sh"]);
    assert_eq!(Shell::parse("sh").unwrap().argv("/s.sh"), ["sh", "-e", "/s.sh"]);
    let custom = Shell::parse("bash -eo pipefail -l {0}").unwrap();
    assert_eq!(custom.argv("/s.sh"), ["bash", "-eo", "pipefail", "-l", "/s.sh"]);
    assert!(custom.is_bash());
    let py = Shell::parse("python {0}").unwrap();
    assert_eq!((py.argv("/s.py"), py.extension()), (vec!["python3".to_string(), "/s.py".to_string()], "py"));
    assert!(matches!(Shell::parse("pwsh"), Err(ShellError::Unavailable(_))));
    assert!(matches!(Shell::parse("perl"), Err(ShellError::Invalid(_))));
    assert!(matches!(Shell::parse("{0} x"), Err(ShellError::Invalid(_))));
    assert_error(
        &wf("  a:\n    steps:\n      - run: x\n        shell: bsah\n"),
        6,
        16,
        "unsupported shell `bsah`",
    );
}

#[test]
fn runs_on_takes_every_form() {
    let plan = load(
        "w.yml",
        &wf("  a:\n    runs-on: [self-hosted, linux]\n    steps: [{run: x}]\n  b:\n    runs-on: {group: big, labels: [ubuntu-latest]}\n    steps: [{run: x}]\n"),
    )
    .unwrap();
    let labels: Vec<Vec<&str>> =
        plan.workflow.jobs.iter().map(|j| j.runs_on.iter().map(|t| t.source()).collect()).collect();
    assert_eq!(labels, [vec!["self-hosted", "linux"], vec!["ubuntu-latest"]]);
}

#[test]
fn select_keeps_a_job_and_what_it_needs() {
    let src = wf("  a:\n    steps: [{run: x}]\n  b:\n    needs: a\n    strategy: {matrix: {n: [1, 2]}}\n    steps: [{run: x}]\n  c:\n    needs: b\n    steps: [{run: x}]\n  d:\n    steps: [{run: x}]\n");
    let plan = load("w.yml", &src).unwrap();
    let sel = plan.select(&["c".to_string()]).unwrap();
    let ids: Vec<&str> = sel.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["a", "b (n: 1)", "b (n: 2)", "c"]);
    assert_eq!(sel.jobs[3].needs, [1, 2]);
    assert_eq!(sel.jobs[1].needs, [0]);
    assert_eq!(sel.groups[0].legs, [1, 2]);
    assert_eq!(sel.jobs[2].group, Some(0));
    let err = plan.select(&["cc".to_string()]).unwrap_err();
    assert!(err.contains("did you mean `c`"), "{err}");
}

#[test]
fn step_errors() {
    assert_error(
        &wf("  a:\n    steps:\n      - run: x\n        uses: actions/checkout@v4\n"),
        6,
        15,
        "either `run` or `uses`",
    );
    assert_error(
        &wf("  a:\n    steps:\n      - name: nothing\n"),
        5,
        9,
        "step 1 (`nothing`) of job `a`: a step needs `run` or `uses`",
    );
    assert_error(
        &wf("  a:\n    steps:\n      - id: x\n        run: a\n      - id: x\n        run: b\n"),
        7,
        13,
        "duplicate step id `x`",
    );
    assert_error(&wf("  a:\n    steps:\n      - id: 1x\n        run: a\n"), 5, 13, "invalid step id `1x`");
    assert_error(&wf("  a:\n    steps: []\n"), 4, 12, "non-empty list");
    assert_error(&wf("  a:\n    runs-on: x\n"), 3, 3, "job `a` has no `steps`");
    assert_error(&wf("  9a:\n    steps: [{run: x}]\n"), 3, 3, "invalid job key `9a`");
}

#[test]
fn value_errors() {
    assert_error(
        &wf("  a:\n    timeout-minutes: 0\n    steps: [{run: x}]\n"),
        4,
        22,
        "`timeout-minutes` must be a positive number",
    );
    assert_error(
        &wf("  a:\n    kiln:\n      memory: lots\n    steps: [{run: x}]\n"),
        5,
        15,
        "invalid size `lots`",
    );
    assert_error(
        &wf("  a:\n    kiln:\n      isolation: vm\n    steps: [{run: x}]\n"),
        5,
        18,
        "unknown isolation `vm`",
    );
    assert_error(
        &wf("  a:\n    steps:\n      - run: x\n        working-directory: /proc/self\n"),
        6,
        28,
        "not inside the workspace",
    );
    assert_error(
        &wf("  a:\n    steps:\n      - run: x\n        working-directory: a/../../b\n"),
        6,
        28,
        "escapes the workspace",
    );
    assert_error(
        &wf("  a:\n    env:\n      BAD-NAME: x\n    steps: [{run: x}]\n"),
        5,
        7,
        "invalid environment variable name `BAD-NAME`",
    );
    assert_error(
        &wf("  a:\n    continue-on-error: maybe\n    steps: [{run: x}]\n"),
        4,
        24,
        "`continue-on-error` must be",
    );
}

#[test]
fn expression_errors_in_the_file() {
    assert_error(
        &wf("  a:\n    steps:\n      - run: echo ${{ matirx.os }}\n"),
        5,
        23,
        "unknown context `matirx`; did you mean `matrix`?",
    );
    assert_error(&wf("  a:\n    steps:\n      - run: 'echo ${{ matrix.os'\n"), 5, 20, "unterminated `${{`");
    assert_error(&wf("  a:\n    if: github.ref ==\n    steps: [{run: x}]\n"), 4, 22, "expected a value");
}

#[test]
fn matrix_errors() {
    assert_error(
        &wf("  a:\n    strategy:\n      matrix: ${{ fromJSON(needs.x.outputs.m) }}\n    steps: [{run: x}]\n"),
        5,
        15,
        "dynamic matrices are not supported",
    );
    assert_error(
        &wf(
            "  a:\n    strategy:\n      matrix:\n        os: ${{ fromJSON('[1]') }}\n    steps: [{run: x}]\n",
        ),
        6,
        13,
        "dynamic matrices are not supported",
    );
    assert_error(
        &wf("  a:\n    strategy:\n      matrix: {}\n    steps: [{run: x}]\n"),
        5,
        15,
        "the matrix is empty",
    );
    let values: Vec<String> = (0..257).map(|i| i.to_string()).collect();
    assert_error(
        &wf(&format!(
            "  a:\n    strategy:\n      matrix:\n        n: [{}]\n    steps: [{{run: x}}]\n",
            values.join(", ")
        )),
        6,
        9,
        "257 combinations",
    );
    assert_error(
        &wf("  a:\n    strategy:\n      matrix:\n        n: [1]\n        exclude: [{n: 1}]\n    steps: [{run: x}]\n"),
        6,
        9,
        "no combinations left",
    );
}

#[test]
fn yaml_errors() {
    assert_error("on: push\njobs:\n  a: [\n", 4, 1, "YAML syntax error");
    assert_error("", 1, 1, "empty");
    assert_error("- a\n", 1, 1, "must be a mapping");
    let ds = errors("on: push\njobs:\n  a:\n   steps:\n  - run: x\n     y: 2\n");
    assert!(ds[0].message.starts_with("YAML syntax error"), "{}", ds[0]);
}

#[test]
fn matrix_ids() {
    let plan = load(
        "w.yml",
        &wf(concat!(
            "  test:\n    strategy:\n      matrix:\n        shard: [1, 2]\n",
            "        cfg: [{a: 1}]\n        name: ['x y']\n    steps: [{run: x}]\n",
        )),
    )
    .unwrap();
    let ids: Vec<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        ["test (shard: 1, cfg: {\"a\":1}, name: x y)", "test (shard: 2, cfg: {\"a\":1}, name: x y)"]
    );
}

#[test]
fn helpers() {
    assert_eq!(parse_size("512Mi"), Ok(512 << 20));
    assert_eq!(parse_size("1Gi"), Ok(1 << 30));
    assert_eq!(parse_size("2G"), Ok(2_000_000_000));
    assert_eq!(parse_size("64M"), Ok(64_000_000));
    assert_eq!(parse_size("1024k"), Ok(1_024_000));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("12Q").is_err());
    assert!(parse_size("").is_err());
    assert!(parse_size("0").is_err());
    assert!(parse_size("-1G").is_err());
    assert!(check_relative_path("a/b/../c").is_ok());
    assert!(check_relative_path(".").is_ok());
    assert!(check_relative_path("/etc").is_err());
    assert!(check_relative_path("/proc/1").is_err());
    assert!(check_relative_path("..").is_err());
    assert!(check_relative_path("a/../..").is_err());
}

#[test]
fn block_scalar_locations() {
    assert_error(
        &wf("  a:\n    steps:\n      - run: |\n          echo ok\n          echo ${{ matirx.os }}\n"),
        7,
        20,
        "unknown context `matirx`",
    );
}

#[test]
fn yaml_anchors_and_merge_keys() {
    let plan = load(
        "w.yml",
        &wf("  a:\n    env: &e {A: '1'}\n    steps: [{run: x}]\n  b:\n    env: *e\n    steps: [{run: x}]\n"),
    )
    .unwrap();
    assert_eq!(plan.workflow.jobs[1].env[0].0, "A");
    assert_error(&wf("  a: &j\n    steps: [{run: x}]\n  b:\n    <<: *j\n"), 6, 5, "merge keys");
}

#[test]
fn secrets_are_bound_to_phases_and_only_read_in_step_env() {
    let ok = "kiln:\n  secrets:\n    DEPLOY_TOKEN: { phases: [deploy] }\njobs:\n  ship:\n    kiln: { phase: deploy }\n    steps:\n      - run: ./deploy\n        env:\n          TOKEN: ${{ secrets.DEPLOY_TOKEN }}\n      - run: cat /run/secrets/KEY\n        kiln:\n          secrets:\n            KEY: { as: file }\n";
    let plan = kiln_workflow::load("w.yml", ok).unwrap();
    let job = &plan.workflow.jobs[0];
    assert_eq!(job.steps[0].phase(job), kiln_workflow::Phase::Deploy);
    assert_eq!(job.steps[1].allowed_secrets(job, &plan.workflow).len(), 2);

    let wrong_phase = "kiln:\n  secrets:\n    DEPLOY_TOKEN: { phases: [deploy] }\njobs:\n  build:\n    steps:\n      - run: make\n        env:\n          TOKEN: ${{ secrets.DEPLOY_TOKEN }}\n";
    let e = kiln_workflow::load("w.yml", wrong_phase).unwrap_err().to_string();
    assert!(
        e.contains("w.yml:7:9")
            && e.contains("DEPLOY_TOKEN")
            && e.contains("`build` is not among its phases [deploy]"),
        "{e}"
    );

    let unbound = "jobs:\n  build:\n    steps:\n      - run: make\n        env:\n          TOKEN: ${{ secrets.NPM_TOKEN }}\n";
    let e = kiln_workflow::load("w.yml", unbound).unwrap_err().to_string();
    assert!(e.contains("not bound to any phase"), "{e}");

    let in_script = "kiln:\n  secrets:\n    T: { phases: [build] }\njobs:\n  build:\n    steps:\n      - run: echo ${{ secrets.T }}\n";
    let e = kiln_workflow::load("w.yml", in_script).unwrap_err().to_string();
    assert!(e.contains("`run:` script") && e.contains("only be used in a step's `env:`"), "{e}");

    let no_phases = "kiln:\n  secrets:\n    T: { as: env }\njobs:\n  a:\n    steps: [{run: x}]\n";
    assert!(kiln_workflow::load("w.yml", no_phases).unwrap_err().to_string().contains("bound to no phase"));

    let bad_net =
        "jobs:\n  a:\n    kiln: { network: { allow: [\"https://evil/x\"] } }\n    steps: [{run: x}]\n";
    assert!(kiln_workflow::load("w.yml", bad_net).unwrap_err().to_string().contains("not a URL"));
}

#[test]
fn flow_sequence_closed_at_the_keys_indentation() {
    let src = "on: push\njobs:\n  a:\n    strategy:\n      matrix:\n        os: [\n          ubuntu-latest,\n          ubuntu-22.04\n        ]\n    runs-on: ${{ matrix.os }}\n    steps:\n      - run: echo hi\n";
    let plan = load("w.yml", src).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(plan.jobs.len(), 2);
    assert_eq!(plan.workflow.jobs[0].steps[0].location, Location { line: 12, column: 9 });
    let src = "on: push\njobs:\n  a:\n    needs: [\n    ]\n    steps:\n      - run: x\n";
    load("w.yml", src).unwrap_or_else(|d| panic!("{d}"));
}
