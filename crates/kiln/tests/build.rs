//! `kiln build`: the zero-config pipeline end to end, with real package
//! managers in real sandboxes. Registries and git servers are this test's
//! own, on 127.0.0.2; nothing leaves loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{git, hex_decode, served_repo, Origin, Project, Run};
use serde_json::Value;

/// The repository's examples directory.
fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name)
}

/// `kiln build <source> --json <extra>` with the project's state dir.
fn build(p: &Project, source: &str, extra: &[&str]) -> Run {
    let out = p.kiln().args(["build", source, "--json"]).args(extra).output().expect("run kiln");
    Run::parse(out)
}

/// The `{"type":"result"}` line of `kiln build --json`.
fn result(run: &Run) -> &Value {
    run.entries
        .iter()
        .find(|e| e["type"] == "result")
        .unwrap_or_else(|| panic!("no result line\nstdout: {}\nstderr: {}", run.stdout, run.stderr))
}

fn system(run: &Run) -> String {
    run.system_lines("build").join("\n")
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

#[test]
fn static_site_example_is_built_scanned_signed() {
    let p = Project::new("");
    let site = p.path().join("site");
    copy_dir(&example("static-site"), &site);
    let run = build(&p, site.to_str().unwrap(), &[]);
    run.expect_code(0);
    let r = result(&run);
    let a = &r["artifact"];
    assert_eq!(a["output_type"], "static", "{r}");
    assert_eq!(a["status"], "ready", "{r}");
    assert_eq!(a["files"], 3, "{r}");
    let sys = system(&run);
    assert!(sys.contains("package manager: npm"), "{sys}");
    assert!(sys.contains("nothing to install"), "no packages, no install step: {sys}");
    assert!(sys.contains("output: dist (static)"), "{sys}");
    // Signed, and the signature and every file check out.
    let id = a["id"].as_str().unwrap();
    let ok = p.kiln().args(["verify", id]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // The build step had no network: the provenance says hermetic.
    let prov = p.kiln().args(["artifact", "provenance", id]).output().unwrap();
    let envelope: Value = serde_json::from_slice(&prov.stdout).unwrap();
    let statement = base64_decode(envelope["payload"].as_str().unwrap());
    let statement: Value = serde_json::from_slice(&statement).unwrap();
    let text = statement.to_string();
    assert!(text.contains("\"hermetic\":true"), "{text}");
    assert!(text.contains("npm run build"), "the commands are recorded: {text}");

    // What a user needs to rebuild it by hand.
    let out = p.kiln().args(["reproduce", &r["build"].as_str().unwrap()[..12]]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("npm run build"), "{text}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    common::pipe("base64", &["-d"], s.as_bytes())
}

#[test]
fn python_and_rust_examples_build_offline() {
    let p = Project::new("");
    let py = p.path().join("py");
    copy_dir(&example("python-package"), &py);
    let run = build(&p, py.to_str().unwrap(), &["--isolation", "container"]);
    run.expect_code(0);
    let a = &result(&run)["artifact"];
    assert_eq!(a["output_type"], "function", "{a}");
    assert_eq!(a["files"], 1, "one wheel: {a}");

    let rs = p.path().join("rs");
    copy_dir(&example("rust-crate"), &rs);
    let run = build(&p, rs.to_str().unwrap(), &["--isolation", "container"]);
    run.expect_code(0);
    let a = &result(&run)["artifact"];
    assert_eq!(a["output_type"], "server", "{a}");
    assert_eq!(a["status"], "ready", "an executable is fine in a server output: {a}");
}

/// An npm registry on 127.0.0.2 serving one package made by this test.
fn npm_registry() -> Origin {
    let origin = Origin::start();
    let work = tempfile::tempdir().unwrap();
    let pkg = work.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("package.json"),
        r#"{"name":"kiln-test-greeting","version":"1.0.0","main":"index.js"}"#,
    )
    .unwrap();
    std::fs::write(pkg.join("index.js"), "module.exports = (n) => `hello ${n} from the test registry`;\n")
        .unwrap();
    let out = Command::new("npm").args(["pack", "--silent"]).current_dir(&pkg).output().unwrap();
    assert!(out.status.success(), "npm pack: {}", String::from_utf8_lossy(&out.stderr));
    let tgz = std::fs::read(pkg.join("kiln-test-greeting-1.0.0.tgz")).unwrap();
    let sha1 = String::from_utf8(common::pipe("sha1sum", &[], &tgz)).unwrap();
    let sha512 = common::pipe("openssl", &["dgst", "-sha512", "-binary"], &tgz);
    let integrity =
        format!("sha512-{}", String::from_utf8(common::pipe("base64", &["-w0"], &sha512)).unwrap());
    let base = format!("http://{}", origin.addr());
    let packument = serde_json::json!({
        "name": "kiln-test-greeting",
        "dist-tags": { "latest": "1.0.0" },
        "versions": {
            "1.0.0": {
                "name": "kiln-test-greeting", "version": "1.0.0", "main": "index.js",
                "dist": {
                    "tarball": format!("{base}/kiln-test-greeting/-/kiln-test-greeting-1.0.0.tgz"),
                    "shasum": sha1.split_whitespace().next().unwrap(),
                    "integrity": integrity,
                }
            },
            // A newer version, so a package.json that asks for it is merely
            // out of sync with the lockfile.
            "2.0.0": {
                "name": "kiln-test-greeting", "version": "2.0.0", "main": "index.js",
                "dist": { "tarball": format!("{base}/kiln-test-greeting/-/kiln-test-greeting-2.0.0.tgz") }
            }
        }
    });
    origin.put("kiln-test-greeting/index.json", packument.to_string().as_bytes());
    origin.put("kiln-test-greeting/-/kiln-test-greeting-1.0.0.tgz", &tgz);
    origin
}

/// A Node project that depends on the test registry's package.
fn npm_project(p: &Project, registry: &str) -> PathBuf {
    let dir = p.path().join("app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("package.json"),
        r#"{"name":"app","version":"1.0.0","private":true,
            "dependencies":{"kiln-test-greeting":"1.0.0"},
            "scripts":{"build":"node build.js"}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("build.js"),
        "const g = require('kiln-test-greeting');\nrequire('fs').mkdirSync('dist', {recursive: true});\n\
         require('fs').writeFileSync('dist/index.html', `<p>${g('kiln')}</p>\\n`);\n",
    )
    .unwrap();
    let out = Command::new("npm")
        .args(["install", "--package-lock-only", "--no-audit", "--no-fund", "--registry", registry])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "npm install --package-lock-only: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn npm_install_from_a_registry_then_the_dependency_cache() {
    let origin = npm_registry();
    let registry = format!("http://{}/", origin.addr());
    let p = Project::new("");
    let app = npm_project(&p, &registry);
    let reg_flag = format!("npm={registry}");
    let args = ["--registry", reg_flag.as_str(), "--isolation", "container"];

    let first = build(&p, app.to_str().unwrap(), &args);
    first.expect_code(0);
    let sys = system(&first);
    assert!(sys.contains("cache miss: deps-npm-"), "{sys}");
    assert!(sys.contains("cache saved: deps-npm-"), "{sys}");
    assert!(
        first.all_text().contains("added 1 package"),
        "npm ci installed from the registry:\n{}",
        first.all_text()
    );

    let second = build(&p, app.to_str().unwrap(), &args);
    second.expect_code(0);
    let sys = system(&second);
    assert!(sys.contains("cache hit: deps-npm-"), "{sys}");
    assert!(
        !second.all_text().contains("added 1 package"),
        "the install was skipped:\n{}",
        second.all_text()
    );
    // Same inputs, same output: the artifact id (a tree digest) repeats.
    assert_eq!(result(&first)["artifact"]["id"], result(&second)["artifact"]["id"]);

    // An out-of-sync lockfile fails the install, as the user's failure.
    let pj = app.join("package.json");
    let text = std::fs::read_to_string(&pj)
        .unwrap()
        .replace("\"kiln-test-greeting\":\"1.0.0\"", "\"kiln-test-greeting\":\"2.0.0\"");
    std::fs::write(&pj, text).unwrap();
    let stale = build(&p, app.to_str().unwrap(), &args);
    stale.expect_code(1);
    let failure = result(&stale)["failure"].as_str().unwrap_or("").to_string();
    assert!(!failure.starts_with("infrastructure"), "{failure}");
    assert!(stale.all_text().contains("in sync"), "npm says why:\n{}", stale.all_text());
}

#[test]
fn a_lockfile_entry_outside_the_registries_is_refused() {
    let p = Project::new("");
    let dir = p.path().join("app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("package.json"),
        r#"{"name":"app","version":"1.0.0","dependencies":{"evil":"1.0.0"}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("package-lock.json"),
        r#"{"name":"app","version":"1.0.0","lockfileVersion":3,"requires":true,"packages":{
            "":{"name":"app","version":"1.0.0","dependencies":{"evil":"1.0.0"}},
            "node_modules/evil":{"version":"1.0.0","resolved":"https://evil.example/evil-1.0.0.tgz","integrity":"sha512-AAAA"}}}"#,
    )
    .unwrap();
    let run = build(&p, dir.to_str().unwrap(), &["--isolation", "container"]);
    run.expect_code(1);
    let sys = system(&run);
    assert!(sys.contains("refused:") && sys.contains("evil.example"), "{sys}");
    assert!(sys.contains("node_modules/evil"), "the entry is named: {sys}");
}

#[test]
fn git_filters_and_hooks_from_config_never_run() {
    let p = Project::new("");
    let marker = p.path().join("pwned");
    // The operator's own git config defines a filter driver and a hooks
    // path (as git-lfs or a hook manager would); the repository names the
    // filter in .gitattributes and ships hooks.
    let home = p.path().join("home");
    let hooks = home.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    for hook in ["post-checkout", "post-merge", "pre-commit", "reference-transaction"] {
        let h = hooks.join(hook);
        std::fs::write(&h, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        Command::new("chmod").arg("+x").arg(&h).status().unwrap();
    }
    std::fs::write(
        home.join(".gitconfig"),
        format!(
            "[filter \"evil\"]\n\tsmudge = touch {m}\n\tclean = touch {m}\n\tprocess = touch {m}\n\trequired = true\n[core]\n\thooksPath = {h}\n\tfsmonitor = touch {m}\n",
            m = marker.display(),
            h = hooks.display()
        ),
    )
    .unwrap();
    let repo = p.path().join("repo");
    copy_dir(&example("static-site"), &repo);
    std::fs::write(repo.join(".gitattributes"), "* filter=evil\n").unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "site"]);
    let out = p
        .kiln()
        .env("HOME", &home)
        .args(["build", repo.to_str().unwrap(), "--json", "--isolation", "container"])
        .output()
        .unwrap();
    let run = Run::parse(out);
    run.expect_code(0);
    assert!(!marker.exists(), "a filter, hook or fsmonitor from git config ran on the host");
    assert!(result(&run)["artifact"]["status"] == "ready");
}

#[test]
fn fetch_in_a_sandbox_and_refuse_hostile_submodules() {
    let origin = Origin::start();
    let url = served_repo(
        &origin,
        "repo.git",
        &[
            (
                "package.json",
                r#"{"name":"s","version":"1.0.0","scripts":{"build":"mkdir -p dist && echo ok > dist/index.html"}}"#,
            ),
            (
                "package-lock.json",
                r#"{"name":"s","version":"1.0.0","lockfileVersion":3,"requires":true,"packages":{"":{"name":"s","version":"1.0.0"}}}"#,
            ),
            (".gitmodules", "[submodule \"x\"]\n\tpath = x\n\turl = ext::sh -c touch% /tmp/kiln-ext-pwned\n"),
        ],
    );
    let p = Project::new("");
    let open = origin.addr();
    // Without submodules the fetch (dumb http: full history) succeeds and
    // the commit is recorded in the artifact's source.
    let run = build(&p, &url, &["--full", "--allow-private", &open, "--isolation", "container"]);
    run.expect_code(0);
    assert!(run.all_text().contains("fetched http://"), "{}", run.all_text());
    // With them, the ext:: URL is refused before anything is fetched.
    let run = build(
        &p,
        &url,
        &["--full", "--allow-private", &open, "--submodules", "shallow", "--isolation", "container"],
    );
    run.expect_code(1);
    assert!(run.all_text().contains("refused submodule URL"), "{}", run.all_text());
    assert!(!Path::new("/tmp/kiln-ext-pwned").exists());
    // A file:// submodule is refused the same way.
    let origin2 = Origin::start();
    let url2 = served_repo(
        &origin2,
        "repo.git",
        &[("README", "x"), (".gitmodules", "[submodule \"etc\"]\n\tpath = etc\n\turl = file:///etc\n")],
    );
    let open2 = origin2.addr();
    let run = build(
        &p,
        &url2,
        &["--full", "--allow-private", &open2, "--submodules", "recursive", "--isolation", "container"],
    );
    run.expect_code(1);
    assert!(run.all_text().contains("refused submodule URL"), "{}", run.all_text());
    // A relative URL that climbs past the superproject's host is refused
    // before git resolves it (the superproject is `/repo.git`: one `../`
    // stays on the host, two leave it).
    let origin3 = Origin::start();
    let url3 = served_repo(
        &origin3,
        "repo.git",
        &[
            ("README", "x"),
            (".gitmodules", "[submodule \"e\"]\n\tpath = e\n\turl = ../../evil.example/x.git\n"),
        ],
    );
    let open3 = origin3.addr();
    let run = build(
        &p,
        &url3,
        &["--full", "--allow-private", &open3, "--submodules", "shallow", "--isolation", "container"],
    );
    run.expect_code(1);
    assert!(
        run.all_text().contains("refused submodule URL") && run.all_text().contains("climbs out"),
        "{}",
        run.all_text()
    );
    // Plain http anywhere else, ssh, and ext:: are refused up front.
    for bad in ["http://example.com/x.git", "ssh://git@example.com/x.git", "ext::sh -c id"] {
        let out = p.kiln().args(["build", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn an_eicar_file_in_the_output_is_quarantined() {
    let p = Project::new("");
    let dir = p.path().join("app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("package.json"),
        r#"{"name":"app","version":"1.0.0","scripts":{"build":"node build.js"}}"#,
    )
    .unwrap();
    // The test string is assembled by the build, so this file does not hold it.
    std::fs::write(
        dir.join("build.js"),
        "const fs = require('fs');\nfs.mkdirSync('dist', {recursive: true});\n\
         fs.writeFileSync('dist/index.html', '<p>hi</p>');\n\
         fs.writeFileSync('dist/x.txt', 'X5O!P%@AP[4\\\\PZX54(P^)7CC)7}$EICAR' + '-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*');\n",
    )
    .unwrap();
    let run = build(&p, dir.to_str().unwrap(), &["--isolation", "container"]);
    run.expect_code(1);
    let a = &result(&run)["artifact"];
    assert_eq!(a["status"], "quarantined", "{a}");
    assert!(a["scan"].to_string().contains("dist/x.txt") || a["scan"].to_string().contains("x.txt"), "{a}");
    let audit = p.kiln().args(["audit", "latest", "--json"]).output().unwrap();
    assert!(String::from_utf8_lossy(&audit.stdout).contains("artifact-quarantined"));

    // A configured scanner that cannot be reached fails the build: the scan
    // is never skipped.
    std::fs::write(
        dir.join("build.js"),
        "require('fs').mkdirSync('dist');require('fs').writeFileSync('dist/a.html','ok');\n",
    )
    .unwrap();
    let gone = p.path().join("no-clamd.sock");
    let run = build(
        &p,
        dir.to_str().unwrap(),
        &["--isolation", "container", "--clamd", gone.to_str().unwrap(), "--scan-wait", "1"],
    );
    run.expect_code(1);
    assert!(run.all_text().contains("unavailable") || run.all_text().contains("clamd"), "{}", run.all_text());
    assert!(result(&run).get("artifact").is_none_or(|a| a.is_null()), "nothing recorded unscanned");
}

#[test]
fn the_deployment_webhook_is_retried_until_delivered() {
    let (url, seen) = common::receiver(2);
    let p = Project::new("");
    let site = p.path().join("site");
    copy_dir(&example("static-site"), &site);
    let key = p.path().join("notify.key");
    std::fs::write(&key, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n").unwrap();
    let run = build(
        &p,
        site.to_str().unwrap(),
        &["--isolation", "container", "--notify", &url, "--notify-key-file", key.to_str().unwrap()],
    );
    run.expect_code(0);
    let r = result(&run);
    assert_eq!(r["delivery"]["delivered"], true, "{r}");
    assert_eq!(r["delivery"]["attempts"].as_array().unwrap().len(), 3, "{r}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    // The same idempotency key each time; a signature over the body.
    let header = common::header;
    let keys: Vec<String> = seen.iter().map(|(h, _)| header(h, "idempotency-key")).collect();
    assert!(!keys[0].is_empty() && keys.iter().all(|k| k == &keys[0]), "{keys:?}");
    let (head, body) = &seen[2];
    let sig = header(head, "x-kiln-signature");
    let ts = header(head, "x-kiln-timestamp");
    assert!(
        kiln_server::notify::verify_signature(
            &hex_decode(&std::fs::read_to_string(&key).unwrap()),
            &ts,
            body,
            &sig
        ),
        "signature {sig} does not verify"
    );
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["artifact"]["id"], r["artifact"]["id"]);
    assert_eq!(payload["output_type"], "static");
    assert!(payload["provenance"]["payload"].is_string(), "the signed provenance travels along: {payload}");
}

#[test]
fn pip_install_from_a_package_index() {
    // A PEP 503 index on 127.0.0.2 with one wheel made here.
    let origin = Origin::start();
    let work = tempfile::tempdir().unwrap();
    let pkg = work.path().join("pkg");
    std::fs::create_dir_all(pkg.join("kiln_test_dep")).unwrap();
    std::fs::write(
        pkg.join("pyproject.toml"),
        "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n\
         [project]\nname = \"kiln-test-dep\"\nversion = \"1.0.0\"\n",
    )
    .unwrap();
    std::fs::write(pkg.join("kiln_test_dep/__init__.py"), "def shout(s):\n    return s.upper() + '!'\n")
        .unwrap();
    let out = Command::new("/usr/bin/python3")
        .args(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w"])
        .arg(work.path().join("dist"))
        .arg(&pkg)
        .output()
        .unwrap();
    assert!(out.status.success(), "pip wheel: {}", String::from_utf8_lossy(&out.stderr));
    let wheel_name = "kiln_test_dep-1.0.0-py3-none-any.whl";
    let wheel = std::fs::read(work.path().join("dist").join(wheel_name)).unwrap();
    let sha = String::from_utf8(common::pipe("sha256sum", &[], &wheel)).unwrap();
    let sha = sha.split_whitespace().next().unwrap().to_string();
    origin.put(&format!("files/{wheel_name}"), &wheel);
    origin.put(
        "simple/kiln-test-dep/index.html",
        format!("<html><body><a href=\"/files/{wheel_name}#sha256={sha}\">{wheel_name}</a></body></html>\n")
            .as_bytes(),
    );

    let p = Project::new("");
    let app = p.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("requirements.txt"), format!("kiln-test-dep==1.0.0 --hash=sha256:{sha}\n"))
        .unwrap();
    std::fs::write(
        app.join("kiln.toml"),
        "build = \"mkdir -p site && .venv/bin/python -c 'import kiln_test_dep as d; print(d.shout(\\\"built\\\"))' > site/index.txt\"\n\
         output = \"site\"\noutput_type = \"static\"\n",
    )
    .unwrap();
    let index = format!("pypi=http://{}/simple/", origin.addr());
    let run = build(&p, app.to_str().unwrap(), &["--registry", &index, "--isolation", "container"]);
    run.expect_code(0);
    let sys = system(&run);
    assert!(sys.contains("package manager: pip"), "{sys}");
    assert!(run.all_text().contains("Successfully installed kiln-test-dep-1.0.0"), "{}", run.all_text());
    let a = &result(&run)["artifact"];
    assert_eq!(a["status"], "ready", "{a}");
    // The file the build wrote used the installed package.
    let id = a["id"].as_str().unwrap();
    assert!(p.restores(id, "out"));
    assert_eq!(std::fs::read_to_string(p.path().join("out/index.txt")).unwrap(), "BUILT!\n");
}

#[test]
fn a_runtime_that_fails_to_start_a_step_is_retried() {
    // A runc that cannot start the first step after its probe, as a broken
    // runtime would; every other call goes to the real runc.
    let p = Project::new("");
    let bin = p.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let count = p.path().join("runs");
    let real = ["/usr/sbin/runc", "/usr/bin/runc"].into_iter().find(|r| Path::new(r).exists()).expect("runc");
    let wrapper = bin.join("runc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = run ]; then\n    n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n    \
             if [ \"$n\" = 2 ]; then echo 'runc: cannot start container' >&2; exit 1; fi\n    break\n  fi\ndone\nexec {real} \"$@\"\n",
            c = count.display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&wrapper).status().unwrap();
    let site = p.path().join("site");
    copy_dir(&example("static-site"), &site);
    let out = p
        .kiln()
        .env("KILN_RUNC", &wrapper)
        .args(["build", site.to_str().unwrap(), "--json", "--isolation", "container"])
        .output()
        .unwrap();
    let run = Run::parse(out);
    run.expect_code(0);
    let r = result(&run);
    assert_eq!(r["attempts"], 2, "{r}");
    assert!(run.stderr.contains("infrastructure reason; retrying"), "{}", run.stderr);
    assert!(
        run.all_text().contains("infrastructure error: starting the build sandbox")
            && run.all_text().contains("runc: cannot start container"),
        "{}",
        run.all_text()
    );
    // A step's own failure is never retried.
    let fail = p.path().join("fail");
    copy_dir(&example("static-site"), &fail);
    std::fs::write(fail.join("build.js"), "process.exit(3)\n").unwrap();
    let run = build(&p, fail.to_str().unwrap(), &[]);
    run.expect_code(1);
    let r = result(&run);
    assert_eq!(r["attempts"], 1, "{r}");
    assert_eq!(r["failure"], "build command exited with 3", "{r}");
}

/// A missing path exited 3 (kiln's own failure) and a regular file
/// recorded a failed build: both are bad input — exit 2, one line, nothing
/// recorded.
#[test]
fn bug_a_missing_or_non_directory_source_exited_3_or_recorded_a_build() {
    let p = Project::new("jobs:\n  a:\n    steps: [{run: echo}]\n");
    p.write("a-file", "not a repository\n");
    let file = p.path().join("a-file").display().to_string();
    let missing = p.path().join("no-such-dir").display().to_string();
    for (source, want) in
        [(missing.as_str(), "No such file or directory"), (file.as_str(), "not a directory")]
    {
        let out = p.kiln().args(["build", source]).output().expect("run kiln");
        assert_eq!(out.status.code(), Some(2), "{source}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("error: ") && err.contains(want), "{err}");
    }
    // --submodules with a local directory is refused before any clone.
    let dir = p.path().display().to_string();
    let out = p.kiln().args(["build", &dir, "--submodules", "recursive"]).output().expect("run kiln");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--submodules with a local directory"));
    let out = p.kiln().args(["builds", "--json"]).output().expect("run kiln");
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "nothing recorded");
}
