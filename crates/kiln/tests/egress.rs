//! Egress through kiln's proxy, with real clients inside real sandboxes on
//! both tiers. Origins are this test's own servers on 127.0.0.2, which the
//! operator opens with `--allow-private` (a private registry mirror's role);
//! nothing here sends a packet anywhere but loopback.

mod common;

use common::{Origin, Project};

per_tier!(allowed_refused_and_bypass, |tier| {
    let origin = Origin::start();
    origin.put("index.txt", b"hello from the mirror\n");
    // A git repository served over dumb HTTP.
    common::served_repo(&origin, "repo.git", &[("README", "cloned through the proxy\n")]);

    let a = origin.addr();
    let wf = format!(
        r#"
jobs:
  net:
    kiln:
      network: {{ allow: ["registry.npmjs.org"] }}
    steps:
      - run: |
          curl -fsS --max-time 20 http://{a}/index.txt
          git clone -q http://{a}/repo.git cloned && cat cloned/README
      - name: refused destinations
        run: |
          for url in http://169.254.169.254/latest/meta-data/ http://2852039166/ http://0xA9FEA9FE/ \
                     http://0251.0376.0251.0376/ http://169.254.43518/ 'http://[::ffff:169.254.169.254]/' \
                     http://127.0.0.3:{port}/ http://10.1.2.3/ http://192.168.0.1/ http://100.64.0.1/ \
                     'http://[fd00::1]/' http://ip6-localhost:{port}/ http://metadata.google.internal/ \
                     http://example.com/ https://example.com/; do
            if curl -fsS --max-time 10 -o /dev/null "$url" 2>/dev/null; then echo "BROKEN: reached $url"; exit 1; fi
          done
          echo refused all
      - name: bypassing the proxy
        run: |
          if curl -fsS --noproxy '*' --max-time 5 http://{a}/index.txt; then echo "BROKEN: direct"; exit 1; fi
          echo direct failed
  offline:
    steps:
      - run: |
          env | grep -i _proxy || echo "no proxy variables"
          if curl -fsS --max-time 5 http://{a}/index.txt; then echo "BROKEN: offline step reached the mirror"; exit 1; fi
"#,
        port = origin.port
    );
    let p = Project::new(&wf);
    let run = p.run(tier, &["--allow-private", &a]);
    run.expect_code(0);
    let lines = run.lines("net");
    assert!(lines.contains(&"hello from the mirror".to_string()), "{lines:?}");
    assert!(lines.contains(&"cloned through the proxy".to_string()), "{lines:?}");
    assert!(lines.contains(&"refused all".to_string()), "{lines:?}");
    assert!(lines.contains(&"direct failed".to_string()), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("BROKEN")), "{lines:?}");
    let sys = run.system_lines("net");
    for want in [
        "egress blocked: 169.254.169.254:80 (link-local)",
        "egress blocked: example.com:80 (not on the allow-list)",
        "egress blocked: 10.1.2.3:80",
    ] {
        assert!(sys.iter().any(|l| l.starts_with(want)), "missing `{want}` in {sys:?}");
    }
    assert!(run.lines("offline").contains(&"no proxy variables".to_string()));
    assert!(run.summary["egress_bytes_in"].as_u64().unwrap_or(0) > 0, "{}", run.summary);
    // Every refusal is an audit event in the store.
    let blocked = sys.iter().filter(|l| l.starts_with("egress blocked")).count();
    assert!(blocked >= 14, "{sys:?}");
});

per_tier!(byte_cap_stops_a_large_download, |tier| {
    let origin = Origin::start();
    origin.put("big.bin", &vec![b'x'; 4 << 20]);
    let a = origin.addr();
    let wf = format!(
        "jobs:\n  dl:\n    kiln:\n      network: {{ allow: [\"registry.npmjs.org\"] }}\n    steps:\n      - run: |\n          curl -fsS --max-time 20 -o big.bin http://{a}/big.bin || echo \"download cut\"\n          stat -c %s big.bin 2>/dev/null || echo 0\n"
    );
    let p = Project::new(&wf);
    let run = p.run(tier, &["--allow-private", &a, "--egress-cap", "256Ki"]);
    run.expect_code(0);
    assert!(run.lines("dl").contains(&"download cut".to_string()), "{:?}", run.lines("dl"));
    assert!(
        run.system_lines("dl").iter().any(|l| l.contains("bytes per build limit reached (256 KiB)")),
        "{:?}",
        run.system_lines("dl")
    );
    assert!(run.summary["egress_bytes_in"].as_u64().unwrap() < 2 << 20, "{}", run.summary);
});

per_tier!(npm_installs_from_an_opened_registry, |tier| {
    let origin = Origin::start();
    let a = origin.addr();
    // A one-package registry: packument + tarball.
    let pkg = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(pkg.path().join("package")).unwrap();
    std::fs::write(
        pkg.path().join("package/package.json"),
        r#"{"name":"is-kiln","version":"1.0.0","main":"index.js"}"#,
    )
    .unwrap();
    std::fs::write(pkg.path().join("package/index.js"), "module.exports = () => 'fired';\n").unwrap();
    let tgz = origin.root.path().join("is-kiln/-/is-kiln-1.0.0.tgz");
    std::fs::create_dir_all(tgz.parent().unwrap()).unwrap();
    let ok = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(pkg.path())
        .arg("package")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let sha = std::process::Command::new("sha1sum").arg(&tgz).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout).split_whitespace().next().unwrap().to_string();
    origin.put(
        "is-kiln/index.json",
        format!(
            r#"{{"name":"is-kiln","dist-tags":{{"latest":"1.0.0"}},"versions":{{"1.0.0":{{"name":"is-kiln","version":"1.0.0","main":"index.js","dist":{{"tarball":"http://{a}/is-kiln/-/is-kiln-1.0.0.tgz","shasum":"{sha}"}}}}}}}}"#
        )
        .as_bytes(),
    );
    let wf = format!(
        "jobs:\n  npm:\n    kiln:\n      network: {{ allow: [\"registry.npmjs.org\"] }}\n    steps:\n      - run: |\n          echo '{{\"name\":\"app\",\"version\":\"1.0.0\"}}' > package.json\n          npm install --no-audit --no-fund --registry http://{a}/ is-kiln\n          node -e 'console.log(require(\"is-kiln\")())'\n"
    );
    let p = Project::new(&wf);
    let run = p.run(tier, &["--allow-private", &a]);
    run.expect_code(0);
    assert!(run.lines("npm").contains(&"fired".to_string()), "{:?}", run.lines("npm"));
});

#[test]
fn a_deep_state_dir_still_gets_a_proxy() {
    // A Unix socket path holds at most 107 bytes; the proxy's socket must
    // not live under the (possibly deep) state dir.
    let origin = Origin::start();
    origin.put("index.txt", b"reached through the proxy\n");
    let a = origin.addr();
    let p = Project::new(&format!(
        "jobs:\n  net:\n    kiln:\n      network: {{ allow: [\"registry.npmjs.org\"] }}\n    steps:\n      - run: curl -fsS --max-time 20 http://{a}/index.txt\n"
    ));
    let deep = p.path().join("a-rather-long-directory-name-for-state".repeat(3));
    let out = p
        .kiln()
        .env("KILN_STATE_DIR", &deep)
        .args(["run", "ci.yml", "--json", "--isolation", "container", "--allow-private", &a])
        .output()
        .unwrap();
    let run = common::Run::parse(out);
    run.expect_code(0);
    assert!(run.lines("net").contains(&"reached through the proxy".to_string()), "{:?}", run.lines("net"));
    assert!(deep.to_string_lossy().len() > 108);
}
