//! Secrets: bound by phase, handed to one step, and never visible in the
//! live output, the `--json` stream, the terminal output or the stored log.

mod common;

use common::Project;

const TOKEN: &str = "tok_9f3KqZr7VwX2pL8mN4bY";

const LEAKY: &str = r#"
kiln:
  secrets:
    DEPLOY_TOKEN: { phases: [deploy] }
jobs:
  deploy:
    kiln: { phase: deploy }
    steps:
      - name: every way to print it
        id: leak
        env:
          TOKEN: ${{ secrets.DEPLOY_TOKEN }}
          HEADER: "Bearer ${{ secrets.DEPLOY_TOKEN }}"
        run: |
          echo "plain: $TOKEN"
          printenv TOKEN
          env | grep TOKEN
          (tr '\0' '\n' < /proc/self/environ | grep TOKEN) || true
          echo "in-a-word:xx${TOKEN}yy"
          printf '%s' "$TOKEN" | base64
          printf 'pad%s' "$TOKEN" | base64 -w0; echo
          printf '%s' "$TOKEN" | xxd -p
          python3 -c 'import os,urllib.parse;print(urllib.parse.quote(os.environ["TOKEN"]))'
          python3 -c 'import os,json;print(json.dumps({"t": os.environ["TOKEN"]}))'
          half=$(( ${#TOKEN} / 2 ))
          printf '%s' "${TOKEN:0:$half}"; sleep 0.2; printf '%s\n' "${TOKEN:$half}"
          printf '%s\n%s\n' "${TOKEN:0:$half}" "${TOKEN:$half}"
          set -x
          : "$TOKEN"
          set +x
          echo "$HEADER"
          echo "token=$TOKEN" >> "$GITHUB_ENV"
          echo "out=$TOKEN" >> "$GITHUB_OUTPUT"
      - name: a later step with it in GITHUB_ENV
        run: |
          echo "later: $token"
  build:
    steps:
      - name: no binding, no secret
        run: |
          env | grep -c tok_ || true
          ls /run/secrets 2>&1 || true
          grep -rs tok_ /proc/*/environ /workspace /tmp || echo "nothing to find"
"#;

fn assert_clean(what: &str, text: &str) {
    assert!(!text.contains(TOKEN), "{what} leaked the secret:\n{text}");
    let half = &TOKEN[..TOKEN.len() / 2];
    let other = &TOKEN[TOKEN.len() / 2..];
    for line in text.lines() {
        assert!(
            !(line.contains(half) && line.contains(other)),
            "{what} leaked both halves on one line: {line}"
        );
    }
}

per_tier!(no_output_path_leaks_a_secret, |tier| {
    let p = Project::new(LEAKY);
    let run = p.run(tier, &["--secret", &format!("DEPLOY_TOKEN={TOKEN}")]);
    run.expect_code(0);
    assert_clean("--json output", &run.stdout);
    assert_clean("stderr", &run.stderr);
    let lines = run.lines("deploy");
    assert!(lines.iter().any(|l| l == "plain: ***"), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("in-a-word:xx***")), "{lines:?}");
    assert!(run.job("deploy")["redactions"].as_u64().unwrap_or(0) >= 10, "{}", run.job("deploy"));
    // The output that carried the secret was dropped, not passed on.
    assert!(run.system_lines("deploy").iter().any(|l| l.contains("output `out` dropped")));
    // The unbound job saw nothing.
    let build = run.lines("build");
    assert!(build.contains(&"0".to_string()), "{build:?}");
    assert!(build.contains(&"nothing to find".to_string()), "{build:?}");

    // The stored log and the human-readable views are clean too.
    let id = run.summary["build"].as_str().unwrap().to_string();
    // Each hand-over is an audit event that names the secret, never its value.
    let audit = p.kiln().args(["audit", &id]).output().unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout).to_string();
    assert!(audit.contains("secret-handed") && audit.contains("TOKEN (phase deploy)"), "{audit}");
    assert_clean("kiln audit", &audit);
    for args in [vec!["logs", id.as_str()], vec!["logs", id.as_str(), "--json"]] {
        let out = p.kiln().args(&args).output().unwrap();
        assert_clean("kiln logs", &String::from_utf8_lossy(&out.stdout));
    }
    let human = p
        .kiln()
        .args(["run", "ci.yml", "--isolation", tier, "--secret", &format!("DEPLOY_TOKEN={TOKEN}")])
        .output()
        .unwrap();
    assert_clean("terminal output", &String::from_utf8_lossy(&human.stdout));
    // Nothing under the state dir holds the value (database, WAL, leftovers).
    let grep = std::process::Command::new("grep").args(["-rl", TOKEN]).arg(p.state_dir()).output().unwrap();
    assert!(grep.stdout.is_empty(), "secret on disk: {}", String::from_utf8_lossy(&grep.stdout));
});

per_tier!(file_secrets_and_pem_keys, |tier| {
    let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\nAAAAMwAAAAtzc2gtZWQyNTUxOQAAACBxkiln7TEST\n-----END OPENSSH PRIVATE KEY-----\n";
    let p = Project::new(
        "jobs:\n  ship:\n    steps:\n      - kiln:\n          secrets:\n            SSH_KEY: { as: file }\n        run: |\n          stat -c '%a %u' /run/secrets/SSH_KEY\n          cat /run/secrets/SSH_KEY\n          if echo x > /run/secrets/SSH_KEY 2>/dev/null; then echo writable; fi\n      - run: ls /run/secrets 2>&1 | head -1 || true\n",
    );
    p.write("keys.env", &format!("SSH_KEY=\"{}\"\n", key.replace('\n', "\\n")));
    let run = p.run(tier, &["--secrets-file", "keys.env"]);
    run.expect_code(0);
    let lines = run.lines("ship");
    assert!(lines.contains(&"400 10001".to_string()), "{lines:?}");
    assert!(!lines.contains(&"writable".to_string()));
    for body in ["b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ", "AAAAMwAAAAtzc2gtZWQyNTUxOQAAACBxkiln7TEST"] {
        assert!(!run.stdout.contains(body), "a PEM line leaked: {body}");
    }
    // The second step has no binding: no secrets directory at all.
    assert!(lines.iter().any(|l| l.contains("No such file")), "{lines:?}");
});

#[test]
fn a_thousand_secrets_at_once() {
    let names: Vec<String> = (0..1000).map(|i| format!("S{i}")).collect();
    let mut env = String::new();
    for (i, n) in names.iter().enumerate() {
        env.push_str(&format!("{n}=value-{i:04}-{}\n", "q".repeat(12)));
    }
    let p = Project::new(
        "kiln:\n  secrets:\n    S0: { phases: [build] }\n    S999: { phases: [build] }\njobs:\n  a:\n    steps:\n      - env:\n          A: ${{ secrets.S0 }}\n          B: ${{ secrets.S999 }}\n        run: |\n          echo \"$A $B\"\n          for i in 1 500 998; do printf 'value-%04d-qqqqqqqqqqqq\\n' $i; done\n",
    );
    p.write("many.env", &env);
    let run = p.run("container", &["--secrets-file", "many.env"]);
    run.expect_code(0);
    assert_eq!(run.lines("a"), vec!["*** ***", "***", "***", "***"]);
}

#[test]
fn short_secrets_and_forbidden_phases_are_refused() {
    let p = Project::new("jobs:\n  a:\n    steps: [{run: echo}]\n");
    let out = p.kiln().args(["run", "ci.yml", "--secret", "PIN=1234"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("PIN") && !err.contains("1234"), "{err}");

    let p = Project::new(
        "kiln:\n  secrets:\n    DEPLOY_TOKEN: { phases: [deploy] }\njobs:\n  build:\n    steps:\n      - env:\n          T: ${{ secrets.DEPLOY_TOKEN }}\n        run: echo $T\n",
    );
    let out =
        p.kiln().args(["run", "ci.yml", "--secret", &format!("DEPLOY_TOKEN={TOKEN}")]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("ci.yml:7:") && err.contains("DEPLOY_TOKEN") && err.contains("`build`"), "{err}");
    assert!(!err.contains(TOKEN));
}

const BOUND_IN_BUILD: &str = r#"
kiln:
  secrets:
    DEPLOY_TOKEN: { phases: [build] }
jobs:
  a:
    steps:
      - env:
          T: ${{ secrets.DEPLOY_TOKEN }}
        run: |
          if [ -n "$T" ]; then echo "BROKEN: an untrusted build got the secret"; exit 1; fi
          echo "no secret here"
"#;

#[test]
fn bug_untrusted_builds_still_received_secrets() {
    let p = Project::new(BOUND_IN_BUILD);
    let run = p.run("container", &["--untrusted", "--secret", &format!("DEPLOY_TOKEN={TOKEN}")]);
    run.expect_code(0);
    assert_eq!(run.lines("a"), ["no secret here"]);
    assert!(
        run.entries.iter().any(|e| e["text"].as_str().is_some_and(
            |t| t.contains("untrusted build: none of the 1 secret(s) given is handed to any step")
        )),
        "{}",
        run.all_text()
    );
    assert!(!run.stdout.contains(TOKEN));
    // The same build, trusted, gets it (the test above is not vacuous).
    let run = p.run("container", &["--secret", &format!("DEPLOY_TOKEN={TOKEN}")]);
    assert_eq!(run.code, 1, "{}", run.all_text());
}

#[test]
fn bug_secrets_rendered_into_step_scripts_on_disk() {
    // `${{ env.T }}` in `run:` would put the value into the script file
    // kiln writes under the state dir; the step is refused instead.
    let p = Project::new(
        "kiln:\n  secrets:\n    DEPLOY_TOKEN: { phases: [build] }\njobs:\n  a:\n    steps:\n      - env:\n          T: ${{ secrets.DEPLOY_TOKEN }}\n        run: echo \"${{ env.T }}\"\n      - if: always()\n        env:\n          T: ${{ secrets.DEPLOY_TOKEN }}\n        run: test -n \"$T\" && echo \"read from the environment\"\n",
    );
    let run = p.run("gvisor", &["--secret", &format!("DEPLOY_TOKEN={TOKEN}")]);
    run.expect_code(1);
    let reason = run.job("a")["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.contains("the script would contain the value of secret `DEPLOY_TOKEN`"), "{reason}");
    assert!(run.lines("a").contains(&"read from the environment".to_string()), "{:?}", run.lines("a"));
    assert!(!run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN));
}

/// A secret that a step put into `$GITHUB_ENV` reaches strings kiln itself
/// composes: a step's name, a working-directory error, a cache key, an
/// artifact name. None of them may show it, on the terminal, in `--json`,
/// in `kiln logs` or anywhere in the state directory.
const COMPOSED: &str = r#"
kiln:
  secrets:
    DEPLOY_TOKEN: { phases: [build] }
jobs:
  a:
    steps:
      - env:
          T: ${{ secrets.DEPLOY_TOKEN }}
        run: echo "LEAK=$T" >> "$GITHUB_ENV"
      - name: deploy ${{ env.LEAK }}
        continue-on-error: true
        working-directory: ${{ env.LEAK }}
        run: echo never
      - continue-on-error: true
        uses: actions/cache@v4
        with:
          key: k-${{ env.LEAK }}
          path: x
      - continue-on-error: true
        uses: actions/upload-artifact@v4
        with:
          name: a-${{ env.LEAK }}
          path: x
      - run: echo done
"#;

#[test]
fn bug_strings_kiln_composes_were_not_scrubbed() {
    let p = Project::new(COMPOSED);
    let run = p.run("container", &["--secret", &format!("DEPLOY_TOKEN={TOKEN}")]);
    run.expect_code(0);
    assert_clean("--json output", &run.stdout);
    assert_clean("stderr", &run.stderr);
    let names: Vec<&str> = run.entries.iter().filter_map(|e| e["step"].as_str()).collect();
    assert!(names.iter().any(|n| n.starts_with("deploy ***")), "{names:?}");
    let text = run.all_text();
    assert!(text.contains("the key would contain the value of secret `DEPLOY_TOKEN`"), "{text}");
    assert!(text.contains("the artifact name would contain the value of secret `DEPLOY_TOKEN`"), "{text}");
    let logs = p.kiln().args(["logs", "latest", "--json"]).output().unwrap();
    assert_clean("kiln logs", &String::from_utf8_lossy(&logs.stdout));
    // Nothing kiln stored holds it either.
    let out = std::process::Command::new("grep")
        .args(["-r", "-l", "-a", TOKEN])
        .arg(p.state_dir())
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "the secret is stored in {}", String::from_utf8_lossy(&out.stdout));
}

const CROSSING: &str = r#"
kiln:
  secrets:
    DEPLOY_TOKEN: { phases: [deploy] }
jobs:
  a:
    outputs:
      leaked: ${{ steps.s.outputs.v }}
      from-env: ${{ env.LEAK }}
    steps:
      - id: s
        kiln: { phase: deploy }
        env:
          T: ${{ secrets.DEPLOY_TOKEN }}
        run: |
          echo "LEAK=$T" >> "$GITHUB_ENV"
          echo "v=$T" >> "$GITHUB_OUTPUT"
      - kiln: { phase: deploy }
        run: test -n "$LEAK" && echo "a bound step sees it"
      - run: |
          if [ -n "$LEAK" ]; then echo "BROKEN: an unbound step got it"; exit 1; fi
          echo "an unbound step does not"
  b:
    needs: a
    steps:
      - run: echo "got [${{ needs.a.outputs.leaked }}] [${{ needs.a.outputs.from-env }}]"
"#;

#[test]
fn bug_github_env_and_job_outputs_carried_secrets_past_their_binding() {
    let p = Project::new(CROSSING);
    let run = p.run("container", &["--secret", &format!("DEPLOY_TOKEN={TOKEN}")]);
    run.expect_code(0);
    let lines = run.lines("a");
    assert!(lines.contains(&"a bound step sees it".to_string()), "{lines:?}");
    assert!(lines.contains(&"an unbound step does not".to_string()), "{lines:?}");
    assert_eq!(run.lines("b"), ["got [] []"]);
    let sys = run.system_lines("a").join("\n");
    assert!(
        sys.contains("env LEAK not passed to this step: it holds the value of secret `DEPLOY_TOKEN`"),
        "{sys}"
    );
    assert!(sys.contains("output `v` dropped"), "{sys}");
    assert!(sys.contains("output `from-env` dropped: it holds the value of secret `DEPLOY_TOKEN`"), "{sys}");
    assert_clean("--json output", &run.stdout);
}
