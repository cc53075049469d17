//! Images: `kiln image build` makes a root filesystem from Debian packages
//! with mmdebstrap, and a job whose `runs-on` maps to it runs on it, on
//! both tiers: the image's own `/usr` (not the host's), a writable root
//! whose files stay from one sandbox of the job to the next, and the
//! image's digest in the artifact's provenance.
//!
//! The image is built once per machine: the store the tests share lives in
//! `/var/tmp/kiln-test-images`, and a recipe already built there is found
//! by its digest.

mod common;

use std::process::Command;

use common::{Project, Run};
use serde_json::Value;

const IMAGE: &str = "test/small";

fn kiln(p: &Project) -> Command {
    p.kiln_with_images()
}

/// `kiln image build test/small --packages bash --json`, parsed.
fn build_image(p: &Project) -> Value {
    p.shared_image(IMAGE, &["--suite", "trixie", "--packages", "bash"])
}

fn run(p: &Project, tier: &str, extra: &[&str]) -> Run {
    let out = kiln(p)
        .args(["run", "ci.yml", "--json", "--isolation", tier, "--image", &format!("ubuntu-*={IMAGE}")])
        .args(extra)
        .output()
        .expect("run kiln");
    Run::parse(out)
}

const ON_IMAGE: &str = r#"
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - name: the image's system, not the host's
        run: |
          . /etc/os-release; echo "codename $VERSION_CODENAME"
          echo "user $(id -un) $(id -u)"
      - name: write outside the workspace
        run: |
          echo kept > /var/tmp/from-an-earlier-sandbox
          if touch /usr/bin/planted 2>/dev/null; then echo "BROKEN: /usr is writable"; exit 1; fi
          echo "usr is not the user's"
      - name: read it in another sandbox
        run: cat /var/tmp/from-an-earlier-sandbox
      - run: mkdir -p out && echo artifact > out/a.txt
      - uses: actions/upload-artifact@v4
        with: { name: out, path: out/ }
"#;

per_tier!(a_job_runs_on_its_image_with_a_writable_root, |tier| {
    let p = Project::new(ON_IMAGE);
    let built = build_image(&p);
    let digest = built["digest"].as_str().expect("digest").to_string();
    assert!(digest.starts_with("sha256:"), "{built}");
    let pkgs = built["packages"].as_array().expect("packages");
    assert!(pkgs.iter().any(|p| p["name"] == "bash"), "every package is recorded: {built}");
    // Every step in a sandbox of its own: the file must cross sandboxes.
    let r = run(&p, tier, &["--sandbox-per-step"]);
    r.expect_code(0);
    let lines = r.lines("build");
    assert!(
        lines.iter().any(|l| l == "codename trixie"),
        "the host is bookworm; the image trixie: {lines:?}"
    );
    assert!(lines.iter().any(|l| l == "user runner 10001"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "usr is not the user's"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "kept"), "the root is the job's machine: {lines:?}");
    assert!(
        r.system_lines("build").iter().any(|l| l.contains(&format!("runs on image {IMAGE}@{digest}"))),
        "{:?}",
        r.system_lines("build")
    );
    // The image is named in what the build says it was built with.
    let build_id = r.summary["build"].as_str().expect("build id");
    let out = kiln(&p).args(["reproduce", build_id, "--json"]).output().expect("kiln reproduce");
    let rep: Value = serde_json::from_slice(&out.stdout).expect("reproduce JSON");
    assert_eq!(rep["image"], format!("{IMAGE}@{digest}"), "{rep}");
    // And in the signed provenance.
    let art = p.first_json_row(&["artifacts", build_id, "--json"]);
    let id = art["id"].as_str().expect("artifact id");
    let out = kiln(&p).args(["verify", id]).output().expect("kiln verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(digest.trim_start_matches("sha256:")), "provenance names the image: {text}");
});

#[test]
fn an_image_is_built_once_listed_kept_by_gc_and_removed() {
    let p = Project::new(ON_IMAGE);
    let first = build_image(&p);
    let again = build_image(&p);
    assert_eq!(again["built"], false, "the same recipe is not built twice: {again}");
    assert_eq!(first["digest"], again["digest"]);
    let ls = kiln(&p).args(["image", "ls", "--json"]).output().expect("kiln image ls");
    let list: Value = serde_json::from_slice(&ls.stdout).expect("ls JSON");
    assert!(list.as_array().unwrap().iter().any(|i| i["name"] == IMAGE), "{list}");
    // gc keeps a named image's layers (no image build meanwhile: a layer
    // stored but not yet named is fair game at grace 0).
    let gc = {
        let _no_build = common::IMAGE_BUILD.lock().unwrap_or_else(|e| e.into_inner());
        kiln(&p).args(["gc", "--grace", "0"]).output().expect("kiln gc")
    };
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    let inspect = kiln(&p).args(["image", "inspect", IMAGE, "--json"]).output().expect("inspect");
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    let r = run(&p, "container", &[]);
    r.expect_code(0);
    // A second name for the same recipe costs nothing; removing it leaves
    // the first name (and its extracted tree) alone.
    let out = kiln(&p)
        .args(["image", "build", "test/alias", "--packages", "bash", "--json"])
        .output()
        .expect("build alias");
    let alias: Value = serde_json::from_slice(&out.stdout).expect("alias JSON");
    assert_eq!(alias["built"], false);
    assert_eq!(alias["digest"], first["digest"]);
    let out = kiln(&p).args(["image", "rm", "test/alias"]).output().expect("rm");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ls = kiln(&p).args(["image", "ls", "--json"]).output().expect("kiln image ls");
    let list: Value = serde_json::from_slice(&ls.stdout).expect("ls JSON");
    let names: Vec<&str> = list.as_array().unwrap().iter().filter_map(|i| i["name"].as_str()).collect();
    assert!(names.contains(&IMAGE) && !names.contains(&"test/alias"), "{names:?}");
    run(&p, "container", &[]).expect_code(0);
    let out = kiln(&p).args(["image", "rm", "test/alias"]).output().expect("rm");
    assert!(!out.status.success(), "removing a name twice is an error");
    // A name that is not there: a clear error, and jobs fall back to the
    // host's /usr with a notice.
    let out = kiln(&p).args(["image", "inspect", "no/such"]).output().expect("inspect");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image `no/such`"));
    let out = kiln(&p)
        .args(["run", "ci.yml", "--json", "--isolation", "container", "--image", "ubuntu-*=no/such"])
        .output()
        .expect("run");
    let r = Run::parse(out);
    assert!(
        r.system_lines("build").iter().any(|l| l.contains("image no/such is not built here")),
        "{:?}",
        r.system_lines("build")
    );
    for bad in ["Bad/Name", "../x", "a//b"] {
        let out = kiln(&p).args(["image", "build", bad]).output().expect("build");
        assert!(!out.status.success(), "{bad} accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid"), "{bad}");
    }
    let out = kiln(&p).args(["image", "build", "x/y", "--packages=--hook=evil"]).output().expect("build");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Debian package name"));
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// An OCI archive made with umoci from the small image's tree: a layer
/// with a file and an env, then a layer that deletes the file (a whiteout).
fn oci_archive(p: &Project, built: &Value) -> std::path::PathBuf {
    let found = Command::new("sh").arg("-c").arg("command -v umoci").output().map(|o| o.status.success());
    assert!(found.unwrap_or(false), "`umoci` is not installed: run scripts/install.sh");
    let hex = built["digest"].as_str().expect("digest").trim_start_matches("sha256:").to_string();
    let tree = p.state_dir().join("images").join(hex);
    assert!(tree.is_dir(), "kiln image build extracts the image: {}", tree.display());
    let dir = p.path().join("oci");
    let (l, b) = (dir.join("L"), dir.join("B"));
    std::fs::create_dir_all(&dir).unwrap();
    let (l, b, tree) = (l.display(), b.display(), tree.display());
    sh(&format!(
        "umoci init --layout {l} && umoci new --image {l}:t && umoci unpack --image {l}:t {b} >/dev/null \
         && cp -a {tree}/. {b}/rootfs/ && echo gone > {b}/rootfs/etc/deleted-later && umoci repack --image {l}:t {b} \
         && umoci config --image {l}:t --config.env GREETING=from-the-image \
            --config.env PATH=/opt/tool/bin:/usr/local/bin:/usr/bin:/bin \
         && rm -rf {b} && umoci unpack --image {l}:t {b} >/dev/null && rm {b}/rootfs/etc/deleted-later \
         && umoci repack --image {l}:t {b} && tar -C {l} -cf {}/img.tar .",
        dir.display()
    ));
    dir.join("img.tar")
}

const IN_CONTAINER: &str = r#"
jobs:
  in-container:
    runs-on: ubuntu-latest
    container:
      image: test/oci:1
      env: { FROM_WORKFLOW: "yes" }
    steps:
      - run: |
          echo "greeting $GREETING from-workflow $FROM_WORKFLOW"
          case ":$PATH:" in *:/opt/tool/bin:*) echo "image path" ;; esac
          test -e /etc/deleted-later && echo "BROKEN: whiteout ignored" || echo "whiteout applied"
  missing:
    container: no/such:1
    steps: [{ run: echo never }]
  flags:
    container: { image: test/oci:1, options: --privileged }
    steps: [{ run: echo never }]
"#;

per_tier!(an_imported_oci_image_runs_jobs_with_container, |tier| {
    let p = Project::new(IN_CONTAINER);
    let built = build_image(&p);
    let archive = oci_archive(&p, &built);
    let out =
        kiln(&p).args(["image", "import"]).arg(&archive).args(["test/oci:1", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let imported: Value = serde_json::from_slice(&out.stdout).expect("import JSON");
    assert_eq!(imported["source"]["type"], "oci", "{imported}");
    assert_eq!(imported["layers"].as_array().map(Vec::len), Some(2), "{imported}");
    let r = Run::parse(
        kiln(&p).args(["run", "ci.yml", "--json", "--isolation", tier]).output().expect("run kiln"),
    );
    r.expect_code(0);
    r.assert_lines(
        "in-container",
        &["greeting from-the-image from-workflow yes", "image path", "whiteout applied"],
    );
    assert!(r.system_lines("in-container").iter().any(|l| l.contains("runs on image test/oci:1@sha256:")));
    assert_eq!(r.status("missing"), "skipped");
    assert!(r.job("missing")["reason"].as_str().unwrap_or("").contains("no image `no/such:1` here"));
    assert_eq!(r.status("flags"), "skipped");
    assert!(r.job("flags")["reason"].as_str().unwrap_or("").contains("`container.options` is not supported"));
});

/// Writes an OCI layout whose one layer is `layer` (plain tar) into `dir`,
/// every digest right unless `lie` (then the layer's bytes differ from the
/// digest its manifest names).
fn hostile_layout(dir: &std::path::Path, layer: &[u8], lie: bool) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let d = kiln_store::Digest::of(bytes).to_string();
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).unwrap();
        d
    };
    let layer_digest = put(layer);
    if lie {
        let hex = layer_digest.trim_start_matches("sha256:");
        std::fs::write(blobs.join(hex), b"not the layer the manifest names").unwrap();
    }
    let config = put(br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=b"]}}"#);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    });
    let m = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m, "size": 1}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn hostile_oci_layouts_are_refused_and_touch_nothing_outside() {
    let p = Project::new("jobs:\n  a:\n    steps: [{run: echo}]\n");
    let outside = p.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = outside.display().to_string();
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "traversal",
            kiln_store::tar::RawTarBuilder::new().file("../../escape", 0o644, b"x").finish(),
            false,
            "refused",
        ),
        (
            "symlink parent",
            kiln_store::tar::RawTarBuilder::new()
                .symlink("esc", &target)
                .file("esc/pwned", 0o644, b"x")
                .finish(),
            false,
            "refused",
        ),
        (
            "hard link out",
            kiln_store::tar::RawTarBuilder::new().hardlink("h", "/etc/shadow").finish(),
            false,
            "refused",
        ),
        (
            "whiteout through a link",
            kiln_store::tar::RawTarBuilder::new()
                .symlink("esc", &target)
                .file("esc/.wh..wh..opq", 0o644, b"")
                .finish(),
            false,
            "refused",
        ),
        (
            "lying digest",
            kiln_store::tar::RawTarBuilder::new().file("a", 0o644, b"x").finish(),
            true,
            "does not match",
        ),
    ];
    std::fs::write(outside.join("keep"), b"k").unwrap();
    for (i, (what, layer, lie, want)) in cases.into_iter().enumerate() {
        let dir = p.path().join(format!("layout-{i}"));
        hostile_layout(&dir, &layer, lie);
        let out =
            kiln(&p).args(["image", "import"]).arg(&dir).arg(format!("hostile/case:{i}")).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: imported");
        assert!(err.contains(want), "{what}: {err}");
        let ls = kiln(&p).args(["image", "inspect", &format!("hostile/case:{i}")]).output().unwrap();
        assert!(!ls.status.success(), "{what}: a refused image is never named");
    }
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"k", "nothing outside changed");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "nothing was created outside");
    assert!(!p.path().join("escape").exists() && !p.path().parent().unwrap().join("escape").exists());
}

/// Debian's `docker-registry` on a free loopback port, in `dir`.
struct Registry {
    child: std::process::Child,
    port: u16,
    data: std::path::PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry(dir: &std::path::Path) -> Registry {
    registry_with(dir, None)
}

/// A registry on loopback; with a login, every request needs it (`Basic`).
fn registry_with(dir: &std::path::Path, login: Option<(&str, &str)>) -> Registry {
    let found = Command::new("sh").arg("-c").arg("command -v docker-registry && command -v skopeo").output();
    assert!(
        found.map(|o| o.status.success()).unwrap_or(false),
        "`docker-registry` and `skopeo` are not installed: run scripts/install.sh"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data = dir.join("registry-data");
    std::fs::create_dir_all(&data).unwrap();
    let config = dir.join("registry.yml");
    let mut text = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        data.display()
    );
    if let Some((user, password)) = login {
        // A bcrypt entry, as htpasswd -B makes (glibc's crypt does bcrypt).
        let out = Command::new("python3")
            .args([
                "-W",
                "ignore",
                "-c",
                "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
                password,
            ])
            .output()
            .expect("python3");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{}", String::from_utf8_lossy(&out.stdout))).unwrap();
        text.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            htpasswd.display()
        ));
    }
    std::fs::write(&config, text).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start docker-registry");
    // From here the child is killed and waited for on every path.
    let reg = Registry { child, port, data };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return reg;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(reg);
    panic!("docker-registry did not listen on 127.0.0.1:{port}");
}

const FROM_REGISTRY: &str = r#"
jobs:
  pulled:
    container: team/pulled:1
    steps:
      - run: echo "greeting $GREETING"
"#;

/// An image pushed with skopeo to a registry on loopback is pulled through
/// the distribution API: refused until the operator opens the address, its
/// blobs checked against their digests (a tampered layer in the registry's
/// storage is refused), and a job runs on it.
#[test]
fn an_image_is_pulled_from_a_registry_checked_and_run() {
    let p = Project::new(FROM_REGISTRY);
    let built = build_image(&p);
    let archive = oci_archive(&p, &built);
    let reg = registry(p.path());
    let at = format!("127.0.0.1:{}", reg.port);
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false oci-archive:{} docker://{at}/team/pulled:1",
        archive.display()
    ));
    let pull = |extra: &[&str]| {
        kiln(&p)
            .args(["image", "pull", &format!("{at}/team/pulled:1"), "--json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = pull(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback") && err.contains("--allow-private"), "{err}");
    let out = pull(&["--allow-private", &at, "--plain-http"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pulled: Value = serde_json::from_slice(&out.stdout).expect("pull JSON");
    assert_eq!(pulled["name"], "team/pulled:1");
    assert_eq!(pulled["source"]["reference"], format!("{at}/team/pulled:1"));
    let r =
        Run::parse(kiln(&p).args(["run", "ci.yml", "--json", "--isolation", "container"]).output().unwrap());
    r.expect_code(0);
    r.assert_lines("pulled", &["greeting from-the-image"]);
    // Tamper with the biggest layer in the registry's storage: the pull is
    // refused by digest, and the earlier image is untouched.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("find {} -name data -type f -size +1M | head -n1", reg.data.display()))
        .output()
        .unwrap();
    let blob = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!blob.is_empty(), "no layer found in the registry's storage");
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = kiln(&p)
        .args(["image", "pull", &format!("{at}/team/pulled:1"), "--name", "team/tampered:1"])
        .args(["--allow-private", &at, "--plain-http"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a tampered layer was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not sha256:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect = kiln(&p).args(["image", "inspect", "team/tampered:1"]).output().unwrap();
    assert!(!inspect.status.success(), "a refused pull names nothing");
}

/// A registry that wants a login: refused without one (saying how to give
/// it) and with a wrong one; pulled with the login read from stdin, which
/// appears in nothing kiln prints.
#[test]
fn a_registry_login_is_read_from_stdin_and_never_shown() {
    let p = Project::new(FROM_REGISTRY);
    let built = build_image(&p);
    let archive = oci_archive(&p, &built);
    let password = "s3cret-registry-pass";
    let reg = registry_with(p.path(), Some(("kiln", password)));
    let at = format!("127.0.0.1:{}", reg.port);
    sh(&format!(
        "skopeo copy --quiet --dest-tls-verify=false --dest-creds kiln:{password} oci-archive:{} docker://{at}/team/private:1",
        archive.display()
    ));
    let pull = |extra: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = kiln(&p)
            .args(["image", "pull", &format!("{at}/team/private:1"), "--allow-private", &at, "--plain-http"])
            .args(extra)
            .env_remove("KILN_REGISTRY_PASSWORD")
            .env_remove("KILN_REGISTRY_USERNAME")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = pull(&[], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wants a login") && err.contains("--password-stdin"), "{err}");
    let out = pull(&["--username", "kiln", "--password-stdin"], "wrong-password\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the login"), "{err}");
    let out = pull(&["--username", "kiln", "--password-stdin", "--json"], &format!("{password}\n"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains(password) && !stderr.contains(password), "{stdout}{stderr}");
    let pulled: Value = serde_json::from_slice(&out.stdout).expect("pull JSON");
    assert_eq!(pulled["name"], "team/private:1");
}
