//! The repository files the zero-config build reads before it installs
//! anything: the package managers' settings that `check_repo_config` checks
//! (.npmrc, bunfig.toml, .yarnrc, .yarnrc.yml, pip.conf, uv.toml,
//! pyproject.toml, .cargo/config.toml) and the manifests `detect` reads
//! (package.json, pyproject.toml, Cargo.toml, yarn.lock's head).
//!
//! The first byte picks the file, the rest is its text, written into a
//! scratch directory under `$TMPDIR` (the readers take a repository root).
//!
//! Invariants: never panics; every violation names a file and a 1-based line
//! within it (or just past its end) when it has one.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_build::policy::check_repo_config;
use kiln_build::{detect, Manager};
use libfuzzer_sys::fuzz_target;

const FILES: &[&str] = &[
    ".npmrc",
    "bunfig.toml",
    ".yarnrc",
    ".yarnrc.yml",
    "pip.conf",
    "uv.toml",
    "pyproject.toml",
    ".cargo/config.toml",
    "package.json",
    "Cargo.toml",
    "yarn.lock",
];

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("kiln-fuzz-repo-{}", std::process::id()));
        std::fs::create_dir_all(d.join(".cargo")).expect("scratch directory");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let file = FILES[sel as usize % FILES.len()];
    let root = scratch();
    for f in FILES {
        let _ = std::fs::remove_file(root.join(f));
    }
    std::fs::write(root.join(file), body).expect("write the file");
    // YAML counts a lone `\r` as a line break too: the bound counts both.
    let lines = body.iter().filter(|&&b| b == b'\n' || b == b'\r').count() + 1;
    let allowed = vec!["registry.npmjs.org".to_string(), "pypi.org".into(), "index.crates.io".into()];
    for v in check_repo_config(root, Manager::Unknown, &allowed) {
        assert!(!v.file.is_empty());
        if let Some(line) = v.line {
            assert!(line >= 1, "line 0 in {v}");
            if v.file == file {
                // An error at the end of the file may name the line after the last.
                assert!(line <= lines + 1, "line {line} of a {lines}-line file: {v}");
            }
        }
    }
    if let Ok(d) = detect(root) {
        let _ = format!("{d:?}");
    }
});
