//! Every lockfile format the zero-config build checks
//! (`kiln_build::policy::check_lockfile`): package-lock.json,
//! npm-shrinkwrap.json, yarn.lock (classic and berry), pnpm-lock.yaml,
//! bun.lock, bun.lockb, requirements.txt, poetry.lock, uv.lock, Cargo.lock.
//!
//! The first byte picks the format, the rest is the file. The checker reads
//! from a repository directory (through kiln-build's no-follow reader), so
//! the file is written into a scratch directory under `$TMPDIR` per input.
//!
//! Invariants: never panics; every violation names a file, a 1-based line
//! (when it has one) within the file (or just past its end, for an error at
//! the end), and at most 50 (+1 summary) are reported per file.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_build::policy::check_lockfile;
use kiln_build::Manager;
use libfuzzer_sys::fuzz_target;

const FORMATS: &[(&str, Manager)] = &[
    ("package-lock.json", Manager::Npm),
    ("npm-shrinkwrap.json", Manager::Npm),
    ("yarn.lock", Manager::YarnClassic),
    ("yarn.lock", Manager::YarnBerry),
    ("pnpm-lock.yaml", Manager::Pnpm),
    ("bun.lock", Manager::Bun),
    ("bun.lockb", Manager::Bun),
    ("requirements.txt", Manager::Pip),
    ("poetry.lock", Manager::Poetry),
    ("uv.lock", Manager::Uv),
    ("Cargo.lock", Manager::Cargo),
];

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("kiln-fuzz-lockfile-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch directory");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let (file, manager) = FORMATS[sel as usize % FORMATS.len()];
    let root = scratch();
    for (f, _) in FORMATS {
        let _ = std::fs::remove_file(root.join(f));
    }
    std::fs::write(root.join(file), body).expect("write the lockfile");
    let allowed: Vec<String> = manager.registries().iter().map(|s| s.to_string()).collect();
    let violations = check_lockfile(root, manager, &allowed);
    // YAML counts a lone `\r` as a line break too: the bound counts both.
    let lines = body.iter().filter(|&&b| b == b'\n' || b == b'\r').count() + 1;
    let mut per_file = std::collections::HashMap::new();
    for v in &violations {
        assert!(!v.file.is_empty());
        *per_file.entry(v.file.clone()).or_insert(0usize) += 1;
        if let Some(line) = v.line {
            assert!(line >= 1, "line 0 in {v}");
            if v.file == file {
                // An error at the end of the file may name the line after the last.
                assert!(line <= lines + 1, "line {line} of a {lines}-line file: {v}");
            }
        }
        let _ = v.to_string();
    }
    for (f, n) in per_file {
        assert!(n <= 51, "{n} violations reported for {f}");
    }
});
