//! Artifacts between jobs, through the content-addressed store.

mod common;

use common::Project;

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
    let list = p.kiln().args(["artifacts", build, "--json"]).output().unwrap();
    let row: serde_json::Value =
        serde_json::from_slice(list.stdout.split(|&c| c == b'\n').next().unwrap()).expect("an artifact row");
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
