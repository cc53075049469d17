//! Reusable workflows of the repository (`jobs.<id>.uses: ./.github/workflows/x.yml`):
//! expansion, needs, inputs, secrets, and what refuses a call.

use std::collections::HashMap;

use kiln_workflow::*;
use serde_json::json;

/// A loader over an in-memory repository.
fn repo(files: &[(&str, &str)]) -> HashMap<String, String> {
    files.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect()
}

fn load_in(files: &HashMap<String, String>, src: &str) -> Result<Plan, Diagnostics> {
    let loader = |path: &str| files.get(path).cloned().ok_or_else(|| format!("`{path}` does not exist"));
    load_with(".github/workflows/ci.yml", src, &loader)
}

fn plan_in(files: &HashMap<String, String>, src: &str) -> Plan {
    load_in(files, src).unwrap_or_else(|d| panic!("{d}"))
}

fn ids(plan: &Plan) -> Vec<&str> {
    plan.jobs.iter().map(|j| j.id.as_str()).collect()
}

fn index(plan: &Plan, id: &str) -> usize {
    plan.jobs.iter().position(|j| j.id == id).unwrap_or_else(|| panic!("no job `{id}` in {:?}", ids(plan)))
}

fn needs<'a>(plan: &'a Plan, id: &str) -> Vec<&'a str> {
    plan.jobs[index(plan, id)].needs.iter().map(|&d| plan.jobs[d].id.as_str()).collect()
}

/// The first refusal of job `key` (top level), as `line:column: reason`.
fn refusal(plan: &Plan, key: &str) -> String {
    let job = plan.workflow.jobs.iter().find(|j| j.key == key).expect("job");
    let r = job.refusals.first().unwrap_or_else(|| panic!("job `{key}` is not refused"));
    format!("{}:{}: {}", r.location.line, r.location.column, r.reason)
}

fn error_in(files: &HashMap<String, String>, src: &str) -> String {
    match load_in(files, src) {
        Ok(_) => panic!("expected an error"),
        Err(d) => d.to_string(),
    }
}

const BUILD: &str = r#"
on:
  workflow_call:
    inputs:
      target:
        type: string
        required: true
      release:
        type: boolean
        default: false
      jobs:
        type: number
        default: 2
      label:
        type: string
    outputs:
      artifact:
        description: what was built
        value: ${{ jobs.compile.outputs.file }}
jobs:
  compile:
    outputs:
      file: ${{ steps.c.outputs.file }}
    steps:
      - id: c
        run: echo "file=${{ inputs.target }}.bin" >> "$GITHUB_OUTPUT"
  test:
    needs: compile
    steps:
      - run: echo testing
"#;

const CALLER: &str = r#"on: push
jobs:
  prepare:
    steps:
      - run: echo prepare
  build:
    needs: prepare
    uses: ./.github/workflows/build.yml
    with:
      target: linux
      release: ${{ github.ref == 'refs/heads/main' }}
  publish:
    needs: build
    steps:
      - run: echo ${{ needs.build.outputs.artifact }}
"#;

#[test]
fn a_call_expands_into_the_called_jobs() {
    let files = repo(&[(".github/workflows/build.yml", BUILD)]);
    let plan = plan_in(&files, CALLER);
    assert_eq!(ids(&plan), ["prepare", "build", "build / compile", "build / test", "publish"]);
    // The called workflow's first jobs need what the caller needs; its
    // other jobs need their own; the caller needs every job it calls; a
    // job after the caller needs the caller.
    assert_eq!(needs(&plan, "build / compile"), ["prepare"]);
    assert_eq!(needs(&plan, "build / test"), ["build / compile"]);
    assert_eq!(needs(&plan, "build"), ["prepare", "build / compile", "build / test"]);
    assert_eq!(needs(&plan, "publish"), ["build"]);
    let caller = index(&plan, "build");
    let compile = &plan.jobs[index(&plan, "build / compile")];
    assert_eq!(compile.parent, Some(caller));
    assert_eq!(compile.key, "compile");
    assert!(compile.call.is_none());
    let call = plan.jobs[caller].call.as_ref().expect("the caller's call");
    assert_eq!(call.path, ".github/workflows/build.yml");
    assert!(plan.jobs[caller].spec.steps.is_empty() && plan.jobs[caller].spec.refusals.is_empty());
    // What `needs`/`success()` look at: the job's own workflow only.
    let own: Vec<usize> = plan.own_needs(caller).collect();
    assert_eq!(own, [index(&plan, "prepare")]);
    assert_eq!(plan.own_needs(index(&plan, "build / compile")).count(), 0);
    let called: Vec<usize> = plan.called_jobs(caller).collect();
    assert_eq!(called, [caller + 1, caller + 2]);
    // The called jobs are in the called workflow.
    assert!(std::sync::Arc::ptr_eq(&compile.workflow, &call.workflow));
    assert!(std::sync::Arc::ptr_eq(&plan.jobs[0].workflow, &plan.workflow));
    // `--job build` keeps the call and what it needs.
    let sel = plan.select(&["build".to_string()]).unwrap();
    assert_eq!(ids(&sel), ["prepare", "build", "build / compile", "build / test"]);
    assert_eq!(sel.jobs[2].parent, Some(1));
    // A job of the called workflow is not a job of the file.
    assert!(plan.select(&["compile".to_string()]).is_err());
}

#[test]
fn inputs_get_defaults_and_their_types() {
    let files = repo(&[(".github/workflows/build.yml", BUILD)]);
    let plan = plan_in(&files, CALLER);
    let call = plan.jobs[index(&plan, "build")].call.clone().unwrap();
    let ok = StatusFns::new(true, false, false);
    let ctx = Contexts { github: json!({"ref": "refs/heads/main"}), ..Default::default() };
    assert_eq!(
        call.inputs(&ctx, ok).unwrap(),
        json!({"target": "linux", "release": true, "jobs": 2, "label": ""})
    );
    let ctx = Contexts { github: json!({"ref": "refs/heads/dev"}), ..Default::default() };
    assert_eq!(call.inputs(&ctx, ok).unwrap()["release"], json!(false));

    // A value that is not of the input's type, known only when it runs.
    let src = CALLER.replace("release: ${{ github.ref == 'refs/heads/main' }}", "jobs: ${{ github.ref }}");
    let plan = plan_in(&files, &src);
    let call = plan.jobs[index(&plan, "build")].call.clone().unwrap();
    let e = call.inputs(&ctx, ok).unwrap_err();
    assert!(e.contains("input `jobs` of `.github/workflows/build.yml` is a number: expected a number, not `refs/heads/dev`"), "{e}");

    // The outputs read the called jobs.
    let jobs = json!({"compile": {"result": "success", "outputs": {"file": "linux.bin"}}});
    let out = call.outputs(&Contexts { jobs, ..Default::default() }).unwrap();
    assert_eq!(out.get("artifact"), Some(&json!("linux.bin")));
}

#[test]
fn a_call_that_does_not_match_the_inputs_is_an_error_of_the_caller() {
    let files = repo(&[(".github/workflows/build.yml", BUILD)]);
    // A required input missing: at `with:`.
    let src = CALLER.replace("      target: linux\n", "");
    assert_eq!(
        error_in(&files, &src),
        ".github/workflows/ci.yml:9:5: job `build`: input `target` is required by `.github/workflows/build.yml` and `with:` does not give it"
    );
    // ... at `uses:` when there is no `with:`.
    let src = "on: push\njobs:\n  build:\n    uses: ./.github/workflows/build.yml\n";
    assert!(error_in(&files, src)
        .starts_with(".github/workflows/ci.yml:4:11: job `build`: input `target` is required"));
    // A literal of the wrong type, at the value.
    let src = CALLER.replace("release: ${{ github.ref == 'refs/heads/main' }}", "release: maybe");
    assert_eq!(
        error_in(&files, &src),
        ".github/workflows/ci.yml:11:16: job `build`: input `release` is a boolean: expected a boolean (true or false), not `maybe`"
    );
    let src = CALLER.replace("release: ${{ github.ref == 'refs/heads/main' }}", "jobs: many");
    assert!(error_in(&files, &src)
        .contains("11:13: job `build`: input `jobs` is a number: expected a number, not `many`"));
    // An input the called workflow does not declare.
    let src = CALLER.replace("release: ${{", "relase: ${{");
    assert_eq!(
        error_in(&files, &src),
        ".github/workflows/ci.yml:11:7: job `build`: input `relase` is not defined in `.github/workflows/build.yml`; did you mean `release`?"
    );
    // Secrets do not go through `with:`.
    let src = CALLER.replace("target: linux", "target: ${{ secrets.T }}");
    assert!(error_in(&files, &src).contains("`with.target` of job `build` uses a secret"));
    // A calling job runs no steps of its own.
    let src = CALLER.replace(
        "    needs: prepare\n    uses:",
        "    needs: prepare\n    runs-on: ubuntu-latest\n    uses:",
    );
    assert!(error_in(&files, &src)
        .contains("8:5: job `build` calls a workflow (`uses`), so it cannot have `runs-on`"));
    // Only `./.github/workflows/<file>` is a workflow of the repository.
    let src = "on: push\njobs:\n  b:\n    uses: ./ci/build.yml\n";
    assert!(error_in(&files, src).contains("4:11: `uses: ./ci/build.yml`: a workflow of this repository is called as `./.github/workflows/<file>.yml`"));
}

#[test]
fn a_called_file_that_cannot_run_refuses_the_caller_only() {
    let files = repo(&[
        (".github/workflows/broken.yml", "on: workflow_call\njobs:\n  a:\n    stepz: []\n"),
        (".github/workflows/push-only.yml", "on: push\njobs:\n  a:\n    steps: [{run: x}]\n"),
        (".github/workflows/bad-default.yml", "on:\n  workflow_call:\n    inputs:\n      n: {type: number, default: lots}\njobs:\n  a:\n    steps: [{run: x}]\n"),
    ]);
    let call = |file: &str| {
        format!("on: push\njobs:\n  c:\n    uses: ./.github/workflows/{file}\n  other:\n    steps: [{{run: x}}]\n")
    };
    let plan = plan_in(&files, &call("missing.yml"));
    assert_eq!(
        refusal(&plan, "c"),
        "4:11: `uses: ./.github/workflows/missing.yml`: `.github/workflows/missing.yml` does not exist"
    );
    // The refused caller is one job with no steps; the rest runs.
    assert_eq!(ids(&plan), ["c", "other"]);
    assert!(plan.jobs[0].call.is_none());
    let plan = plan_in(&files, &call("broken.yml"));
    let r = refusal(&plan, "c");
    assert_eq!(
        r,
        "4:11: `uses: ./.github/workflows/broken.yml`: .github/workflows/broken.yml:3:3: job `a` has no `steps` (and 1 more problem)"
    );
    let plan = plan_in(&files, &call("push-only.yml"));
    assert!(refusal(&plan, "c")
        .contains("push-only.yml:1:1: this workflow cannot be called: its `on:` has no `workflow_call`"));
    let plan = plan_in(&files, &call("bad-default.yml"));
    let r = refusal(&plan, "c");
    assert!(
        r.contains("bad-default.yml:4:34: the default of input `n` (number): expected a number, not `lots`"),
        "{r}"
    );
    // Without a loader, the front end says it cannot read the file.
    let plan = load("ci.yml", &call("x.yml")).unwrap();
    assert_eq!(
        refusal(&plan, "c"),
        "4:11: `uses: ./.github/workflows/x.yml`: reading `.github/workflows/x.yml`: this front end cannot read other files of the repository"
    );
    // Another repository's workflow stays refused.
    let plan = plan_in(&files, "on: push\njobs:\n  c:\n    uses: org/repo/.github/workflows/x.yml@v1\n");
    assert!(refusal(&plan, "c").contains("a reusable workflow in another repository is not supported"));
}

fn calls(next: &str) -> String {
    format!("on: workflow_call\njobs:\n  inner:\n    uses: ./.github/workflows/{next}\n  work:\n    steps: [{{run: x}}]\n")
}

#[test]
fn cycles_and_depth_refuse_the_call_that_closes_them() {
    let files =
        repo(&[(".github/workflows/a.yml", &calls("b.yml")), (".github/workflows/b.yml", &calls("a.yml"))]);
    let plan = plan_in(&files, "on: push\njobs:\n  top:\n    uses: ./.github/workflows/a.yml\n");
    assert_eq!(ids(&plan), ["top", "top / inner", "top / inner / inner", "top / inner / work", "top / work"]);
    let inner = &plan.jobs[index(&plan, "top / inner / inner")];
    let r = &inner.spec.refusals[0];
    assert_eq!(
        r.reason,
        "`uses: ./.github/workflows/a.yml`: workflows call each other in a cycle (.github/workflows/ci.yml -> .github/workflows/a.yml -> .github/workflows/b.yml -> .github/workflows/a.yml)"
    );
    assert_eq!((r.location.line, r.location.column), (4, 11));
    // A file calling itself.
    let files = repo(&[(".github/workflows/a.yml", &calls("a.yml"))]);
    let plan = plan_in(&files, "on: push\njobs:\n  top:\n    uses: ./.github/workflows/a.yml\n");
    assert!(plan.jobs[index(&plan, "top / inner")].spec.refusals[0].reason.contains("in a cycle"));

    // Four levels run; a fifth is refused.
    let files = repo(&[
        (".github/workflows/l2.yml", &calls("l3.yml")),
        (".github/workflows/l3.yml", &calls("l4.yml")),
        (".github/workflows/l4.yml", &calls("l5.yml")),
        (".github/workflows/l5.yml", "on: workflow_call\njobs:\n  work:\n    steps: [{run: x}]\n"),
    ]);
    let plan = plan_in(&files, "on: push\njobs:\n  top:\n    uses: ./.github/workflows/l2.yml\n");
    let deepest = &plan.jobs[index(&plan, "top / inner / inner / inner")];
    assert!(deepest.call.is_none());
    assert!(
        deepest.spec.refusals[0].reason.contains("workflows nest at most 4 levels deep"),
        "{:?}",
        deepest.spec.refusals
    );
    assert!(plan.jobs[index(&plan, "top / inner / inner")].call.is_some());
    // Needs across levels: the deepest work needs what `top` needs (nothing),
    // each caller needs all it calls.
    assert_eq!(needs(&plan, "top").len(), plan.jobs.len() - 1);
}

#[test]
fn a_matrix_caller_calls_once_per_leg() {
    let files = repo(&[(".github/workflows/build.yml", BUILD)]);
    let src = r#"on: push
jobs:
  build:
    strategy:
      matrix:
        os: [linux, mac]
    uses: ./.github/workflows/build.yml
    with:
      target: ${{ matrix.os }}
  after:
    needs: build
    steps: [{run: x}]
"#;
    let plan = plan_in(&files, src);
    assert_eq!(
        ids(&plan),
        [
            "build (os: linux)",
            "build (os: linux) / compile",
            "build (os: linux) / test",
            "build (os: mac)",
            "build (os: mac) / compile",
            "build (os: mac) / test",
            "after"
        ]
    );
    assert_eq!(plan.groups.len(), 1);
    assert_eq!(plan.groups[0].legs, [0, 3]);
    assert_eq!(needs(&plan, "after"), ["build (os: linux)", "build (os: mac)"]);
    assert_eq!(plan.jobs[4].parent, Some(3));
    let call = plan.jobs[3].call.clone().unwrap();
    let ctx = Contexts { matrix: plan.jobs[3].matrix.clone(), ..Default::default() };
    assert_eq!(call.inputs(&ctx, StatusFns::new(true, false, false)).unwrap()["target"], json!("mac"));
}

const DEPLOY: &str = r#"on:
  workflow_call:
    secrets:
      TOKEN:
        required: true
jobs:
  push:
    kiln:
      phase: deploy
    steps:
      - run: ./deploy
        env:
          TOKEN: ${{ secrets.TOKEN }}
"#;

#[test]
fn secrets_reach_a_called_workflow_only_as_the_caller_binds_them() {
    let files = repo(&[
        (".github/workflows/deploy.yml", DEPLOY),
        (".github/workflows/binds.yml", "on: workflow_call\nkiln:\n  secrets:\n    TOKEN: { phases: [build] }\njobs:\n  a:\n    steps: [{run: x}]\n"),
    ]);
    let caller = |secrets: &str| {
        format!("on: push\nkiln:\n  secrets:\n    TOKEN: {{ phases: [deploy] }}\n    OTHER: {{ phases: [build] }}\njobs:\n  d:\n    uses: ./.github/workflows/deploy.yml\n{secrets}")
    };
    // inherit: the called jobs see the caller's top-level bindings.
    let plan = plan_in(&files, &caller("    secrets: inherit\n"));
    let push = &plan.jobs[index(&plan, "d / push")];
    let names: Vec<&str> = push.workflow.kiln.secrets.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["TOKEN", "OTHER"]);
    let step = &push.spec.steps[0];
    let allowed: Vec<&str> =
        step.allowed_secrets(&push.spec, &push.workflow).iter().map(|b| b.name.as_str()).collect();
    assert_eq!(allowed, ["TOKEN"]);
    // Named: those only.
    let plan = plan_in(&files, &caller("    secrets:\n      TOKEN: ${{ secrets.TOKEN }}\n"));
    let push = &plan.jobs[index(&plan, "d / push")];
    assert_eq!(push.workflow.kiln.secrets.len(), 1);
    // A required secret not passed is an error of the caller.
    let e = error_in(&files, &caller(""));
    assert!(e.contains("8:11: job `d`: secret `TOKEN` is required by `.github/workflows/deploy.yml`"), "{e}");
    // Under another name: refused, with the reason.
    let plan = plan_in(&files, &caller("    secrets:\n      TOKEN: ${{ secrets.OTHER }}\n"));
    let r = refusal(&plan, "d");
    assert!(r.contains("kiln passes a secret to a called workflow only under its own name"), "{r}");
    // The caller binds TOKEN to builds only: the deploy step cannot read it.
    let src =
        caller("    secrets: inherit\n").replace("TOKEN: { phases: [deploy] }", "TOKEN: { phases: [build] }");
    let r = refusal(&plan_in(&files, &src), "d");
    assert!(r.contains("reads secret `TOKEN` in `env.TOKEN`, but the step's phase `deploy` is not among its phases [build]"), "{r}");
    // A called file cannot bind secrets itself.
    let src = "on: push\njobs:\n  b:\n    uses: ./.github/workflows/binds.yml\n    secrets: inherit\n";
    let r = refusal(&plan_in(&files, src), "b");
    assert!(r.contains("binds.yml:4:5: a called workflow cannot bind secret `TOKEN` itself"), "{r}");
}
