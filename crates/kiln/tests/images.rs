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
use std::sync::Mutex;

use common::{Project, Run};
use serde_json::Value;

const SHARED_STORE: &str = "/var/tmp/kiln-test-images";
const IMAGE: &str = "test/small";

/// One image build at a time (the first one builds, the rest find it).
static BUILD: Mutex<()> = Mutex::new(());

fn store_url() -> String {
    std::fs::create_dir_all(SHARED_STORE).expect("create the shared image store");
    format!("file://{SHARED_STORE}")
}

fn kiln(p: &Project) -> Command {
    let mut cmd = p.kiln();
    cmd.env("KILN_IMAGE_STORE", store_url());
    cmd
}

fn require_mmdebstrap() {
    let found =
        Command::new("sh").arg("-c").arg("command -v mmdebstrap").output().map(|o| o.status.success());
    assert!(found.unwrap_or(false), "`mmdebstrap` is not installed: run scripts/install.sh");
}

/// `kiln image build test/small --packages bash --json`, parsed.
fn build_image(p: &Project) -> Value {
    require_mmdebstrap();
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let out = kiln(p)
        .args(["image", "build", IMAGE, "--suite", "trixie", "--packages", "bash", "--json"])
        .output()
        .expect("run kiln image build");
    assert!(
        out.status.success(),
        "kiln image build failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("image build prints JSON")
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
        let _no_build = BUILD.lock().unwrap_or_else(|e| e.into_inner());
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
