//! Artifacts between jobs, through the content-addressed store.

mod common;

use common::{tamper_blob, Project};

const PIPELINE: &str = r#"
jobs:
  build:
    steps:
      - run: |
          mkdir -p dist/assets
          echo "<h1>shop</h1>" > dist/index.html
          head -c 100000 /dev/urandom > dist/assets/app.bin
          ln -s index.html dist/home.html
          sha256sum dist/index.html dist/assets/app.bin > sums.txt
      - uses: actions/upload-artifact@v4
        with:
          name: site
          path: |
            dist
            sums.txt
  deploy:
    needs: build
    steps:
      - uses: actions/download-artifact@v4
        with:
          name: site
          path: out
      - run: |
          cd out && sha256sum -c sums.txt
          readlink dist/home.html
          stat -c '%u' dist/index.html
  missing:
    needs: build
    steps:
      - uses: actions/download-artifact@v4
        with:
          name: nope
"#;

per_tier!(artifacts_flow_between_jobs, |tier| {
    let p = Project::new(PIPELINE);
    let run = p.run(tier, &[]);
    run.expect_code(1);
    assert_eq!(run.status("build"), "succeeded");
    assert_eq!(run.status("deploy"), "succeeded", "{:?}", run.system_lines("deploy"));
    let lines = run.lines("deploy");
    assert!(lines.contains(&"dist/index.html: OK".to_string()), "{lines:?}");
    assert!(lines.contains(&"dist/assets/app.bin: OK".to_string()), "{lines:?}");
    assert!(lines.contains(&"index.html".to_string()), "the symlink was not kept: {lines:?}");
    assert!(lines.contains(&"10001".to_string()), "restored files are not the step user's: {lines:?}");
    assert_eq!(run.status("missing"), "failed");
    assert!(run.job("missing")["reason"].as_str().unwrap_or("").contains("no artifact `nope`"));

    // Listed after the build, and restorable (verified) by id.
    let build = run.summary["build"].as_str().unwrap();
    let row = p.first_json_row(&["artifacts", build, "--json"]);
    assert_eq!(row["name"], "site");
    assert_eq!(row["files"], 3, "{row}"); // regular files; the symlink is an entry of its own
    let id = row["id"].as_str().unwrap().to_string();
    let out = p.path().join("restored");
    let got = p.kiln().args(["artifact", "get", &id, "--out"]).arg(&out).output().unwrap();
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert_eq!(std::fs::read_to_string(out.join("dist/index.html")).unwrap(), "<h1>shop</h1>\n");
    assert!(std::fs::symlink_metadata(out.join("dist/home.html")).unwrap().file_type().is_symlink());
    let again = p.kiln().args(["artifact", "get", &id, "--out"]).arg(&out).output().unwrap();
    assert_eq!(again.status.code(), Some(2), "restoring over an existing directory must be refused");
});

#[test]
fn hostile_uploads_are_refused() {
    let p = Project::new(
        "jobs:\n  leak:\n    steps:\n      - env:\n          T: ${{ secrets.TOKEN }}\n        run: mkdir -p dist && echo \"$T\" > dist/config.txt\n      - uses: actions/upload-artifact@v4\n        with:\n          name: leaky\n          path: dist\n    kiln:\n      secrets:\n        TOKEN: { phases: [build] }\n  escape:\n    steps:\n      - run: ln -s /etc planted\n      - uses: actions/upload-artifact@v4\n        with:\n          name: etc\n          path: planted/passwd\n",
    );
    let run = p.run("container", &["--secret", "TOKEN=s3cr3t-value-123"]);
    run.expect_code(1);
    let leak = run.job("leak")["reason"].as_str().unwrap_or("").to_string();
    assert!(leak.contains("refused") && leak.contains("config.txt") && leak.contains("TOKEN"), "{leak}");
    assert!(!leak.contains("s3cr3t"));
    let escape = run.job("escape")["reason"].as_str().unwrap_or("").to_string();
    assert!(escape.contains("symbolic link"), "{escape}");
    let list = p.kiln().args(["artifacts", run.summary["build"].as_str().unwrap()]).output().unwrap();
    assert!(list.stdout.is_empty(), "{}", String::from_utf8_lossy(&list.stdout));
}

#[test]
fn provenance_is_signed_and_verified() {
    let p = Project::new(
        "jobs:\n  build:\n    steps:\n      - run: mkdir -p dist && echo hello > dist/app.js && echo world > dist/b.txt\n      - uses: actions/upload-artifact@v4\n        with:\n          name: app\n          path: dist\n",
    );
    let run = p.run("container", &[]);
    run.expect_code(0);
    let row = p.first_json_row(&["artifacts", run.summary["build"].as_str().unwrap(), "--json"]);
    let id = row["id"].as_str().unwrap().to_string();
    assert!(row["provenance"].as_str().unwrap_or("").starts_with("sha256:"), "{row}");

    // Good artifact: verified with this state dir's key, and with the key given explicitly.
    let ok = p.kiln().args(["verify", &id]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("hermetic: true"));
    let key = String::from_utf8_lossy(&p.kiln().args(["key"]).output().unwrap().stdout).trim().to_string();
    assert!(p.kiln().args(["verify", &id, "--key", &key]).status().unwrap().success());

    // The envelope is an in-toto statement about exactly this tree.
    let env = p.kiln().args(["artifact", "provenance", &id]).output().unwrap();
    let env: serde_json::Value = serde_json::from_slice(&env.stdout).unwrap();
    assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
    let payload = common::pipe("base64", &["-d"], env["payload"].as_str().unwrap().as_bytes());
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(statement["subject"][0]["digest"]["sha256"], id.trim_start_matches("sha256:"));
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");

    // A wrong key.
    let other = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let wrong = p.kiln().args(["verify", &id, "--key", other]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("wrong key"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    // A modified statement: same envelope, payload changed.
    let mut forged: serde_json::Value = env.clone();
    let mut st = statement.clone();
    st["predicate"]["hermetic"] = serde_json::Value::Bool(false);
    let enc = common::pipe("base64", &["-w0"], st.to_string().as_bytes());
    forged["payload"] = serde_json::Value::String(String::from_utf8(enc).unwrap());
    let forged_path = p.path().join("forged.json");
    std::fs::write(&forged_path, forged.to_string()).unwrap();
    let bad = p.kiln().args(["verify", &id, "--provenance"]).arg(&forged_path).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bad signature"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // A modified file: tamper with the blob of dist/app.js on disk.
    let sum =
        std::process::Command::new("sh").arg("-c").arg("printf 'hello\\n' | sha256sum").output().unwrap();
    let hex = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap().to_string();
    assert_eq!(tamper_blob(&p.state_dir(), &hex, b"HELLO\n"), 1, "no blob {hex}");
    let tampered = p.kiln().args(["verify", &id]).output().unwrap();
    let err = String::from_utf8_lossy(&tampered.stderr).to_string();
    assert_ne!(tampered.status.code(), Some(0));
    assert!(err.contains("app.js") || err.contains(&hex), "{err}");
    // And a restore refuses the tampered blob instead of handing it out.
    let out = p.path().join("restored");
    let got = p.kiln().args(["artifact", "get", &id, "--out"]).arg(&out).output().unwrap();
    assert!(!got.status.success());
    assert!(
        !out.join("app.js").exists() || std::fs::read_to_string(out.join("app.js")).unwrap() != "HELLO\n"
    );
}

#[test]
fn gc_keeps_the_newest_artifacts_and_dry_runs_change_nothing() {
    let p = Project::new(
        "jobs:\n  build:\n    steps:\n      - run: mkdir -p dist && date +%s%N > dist/stamp\n      - uses: actions/upload-artifact@v4\n        with:\n          name: app\n          path: dist\n",
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        let run = p.run("container", &[]);
        run.expect_code(0);
        let row = p.first_json_row(&["artifacts", run.summary["build"].as_str().unwrap(), "--json"]);
        ids.push(row["id"].as_str().unwrap().to_string());
    }
    let dry = p.kiln().args(["gc", "--dry-run", "--keep", "1", "--grace", "0"]).output().unwrap();
    let text = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    assert!(text.contains("would delete 2 artifacts"), "{text}");
    assert!(text.contains(&ids[0]) && text.contains(&ids[1]) && !text.contains(&ids[2]), "{text}");
    // Nothing went: the oldest still restores.
    assert!(p.restores(&ids[0], "a"));
    let real = p.kiln().args(["gc", "--keep", "1", "--grace", "0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&real.stdout).contains("deleted 2 artifacts"));
    assert!(!p.restores(&ids[0], "b"));
    assert!(p.restores(&ids[2], "c"));
    // bug: gc deleted the provenance envelopes of the artifacts it kept.
    let verify = p.kiln().args(["verify", &ids[2]]).output().unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

const GLOBS: &str = r#"
jobs:
  build:
    steps:
      - run: |
          mkdir -p app/dist/js app/dist/maps deps
          echo one > app/dist/js/a.js
          echo two > app/dist/js/b.js
          echo map > app/dist/maps/a.js.map
          echo css > app/dist/site.css
          echo v1 > deps/lock.txt
      - run: echo "key=${{ hashFiles('**/lock.txt') }} none=[${{ hashFiles('nothing/**') }}]"
      - uses: actions/upload-artifact@v4
        with:
          name: js
          retention-days: 3
          path: |
            app/dist/**/*.js
            app/dist/*.css
            !app/dist/js/b.js
  use:
    needs: build
    steps:
      - uses: actions/download-artifact@v4
        with:
          name: js
          path: got
      - run: cd got && find . -type f | sort
"#;

#[test]
fn upload_globs_exclusions_and_hash_files() {
    let p = Project::new(GLOBS);
    let run = p.run("container", &[]);
    run.expect_code(0);
    let out = run.lines("build");
    let key = out.iter().find(|l| l.starts_with("key=")).expect("hashFiles line");
    let want = {
        let inner = common::pipe("sha256sum", &[], b"v1\n");
        let raw = common::hex_decode(std::str::from_utf8(&inner).unwrap().split_whitespace().next().unwrap());
        let outer = common::pipe("sha256sum", &[], &raw);
        String::from_utf8(outer).unwrap().split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(key, &format!("key={want} none=[]"), "{out:?}");
    // Stored relative to the patterns' common directory (app/dist); the
    // excluded file and the unmatched map are not there.
    assert_eq!(run.lines("use"), ["./js/a.js", "./site.css"], "{:?}", run.system_lines("use"));
}

#[test]
fn artifacts_pass_the_scanning_gate() {
    // An executable inside a static output is a high-confidence hit: the
    // artifact is kept but quarantined and the step fails. The same file as
    // a server output is what servers are made of.
    let p = Project::new(
        r#"
jobs:
  site:
    steps:
      - run: mkdir -p dist && cp /bin/true dist/tool && echo '<p>hi</p>' > dist/index.html
      - uses: actions/upload-artifact@v4
        with: { name: site, path: dist }
  server:
    steps:
      - run: mkdir -p out && cp /bin/true out/server
      - uses: actions/upload-artifact@v4
        with: { name: server, path: out, output-type: server }
"#,
    );
    let run = p.run("container", &[]);
    run.expect_code(1);
    assert_eq!(run.status("site"), "failed");
    assert!(run.job("site")["reason"].as_str().unwrap_or("").contains("quarantined"), "{}", run.summary);
    assert_eq!(run.status("server"), "succeeded");
    let build = run.summary["build"].as_str().unwrap();
    let out = p.kiln().args(["artifacts", build, "--json"]).output().unwrap();
    let rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let row = |n: &str| rows.iter().find(|r| r["name"] == n).cloned().unwrap_or_default();
    assert_eq!(row("site")["status"], "quarantined", "{rows:?}");
    assert!(row("site")["scan"].as_str().unwrap_or("").contains("tool"), "the file is named: {rows:?}");
    assert_eq!(row("server")["status"], "ready", "{rows:?}");
    assert_eq!(row("server")["output_type"], "server", "{rows:?}");
    // bug: `kiln verify` said `verified` for a quarantined artifact.
    let site = row("site")["id"].as_str().unwrap().to_string();
    let v = p.kiln().args(["verify", &site]).output().unwrap();
    let err = String::from_utf8_lossy(&v.stderr).to_string();
    assert_eq!(v.status.code(), Some(1), "{err}");
    assert!(err.contains("quarantined by the artifact scan") && err.contains("tool"), "{err}");
    let server = row("server")["id"].as_str().unwrap().to_string();
    assert!(p.kiln().args(["verify", &server]).status().unwrap().success());
    // bug: a quarantined artifact could be restored like any other.
    let get = p.kiln().args(["artifact", "get", &site, "--out"]).arg(p.path().join("q1")).output().unwrap();
    let err = String::from_utf8_lossy(&get.stderr).to_string();
    assert_eq!(get.status.code(), Some(1), "{err}");
    assert!(err.contains("quarantined by the artifact scan") && err.contains("--quarantined"), "{err}");
    assert!(!p.path().join("q1").exists());
    let get = p
        .kiln()
        .args(["artifact", "get", &site, "--quarantined", "--out"])
        .arg(p.path().join("q2"))
        .output()
        .unwrap();
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stderr));
    assert!(p.path().join("q2/tool").exists());
}

#[test]
fn bug_verify_exited_3_for_a_missing_or_edited_envelope() {
    let p = Project::new(
        "jobs:\n  b:\n    steps:\n      - run: mkdir -p dist && echo hi > dist/a.txt\n      - uses: actions/upload-artifact@v4\n        with: { name: a, path: dist }\n",
    );
    let run = p.run("container", &[]);
    run.expect_code(0);
    let row = p.first_json_row(&["artifacts", run.summary["build"].as_str().unwrap(), "--json"]);
    let id = row["id"].as_str().unwrap().to_string();
    let prov = row["provenance"].as_str().unwrap().to_string();
    // An edited envelope that is not JSON any more: verification failed (1).
    let junk = p.path().join("junk.json");
    std::fs::write(&junk, "{not json").unwrap();
    let out = p.kiln().args(["verify", &id, "--provenance"]).arg(&junk).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    // The recorded envelope's blob gone: verification failed (1), not a kiln failure.
    let hex = prov.trim_start_matches("sha256:");
    let blob = p.state_dir().join("store/local/blobs/sha256").join(&hex[..2]).join(hex);
    std::fs::remove_file(&blob).unwrap();
    let out = p.kiln().args(["verify", &id]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("verification failed:"), "{err}");
}
