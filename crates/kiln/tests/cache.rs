//! actions/cache on the store's scoped cache.

mod common;

use common::{tamper_blob, Project};

fn wf(key: &str, restore: &str, content: &str) -> String {
    format!(
        "jobs:\n  deps:\n    steps:\n      - id: cache\n        uses: actions/cache@v4\n        with:\n          key: {key}\n          path: deps\n{restore}      - run: |\n          echo \"hit=${{{{ steps.cache.outputs.cache-hit }}}}\"\n          if [ -f deps/lib.txt ]; then echo \"restored: $(cat deps/lib.txt) owner $(stat -c %u deps/lib.txt)\"; else mkdir -p deps && echo {content} > deps/lib.txt; fi\n"
    )
}

#[test]
fn cache_hits_scopes_and_tampering() {
    let p = Project::new(&wf("deps-v1", "", "trusted-build"));
    // Every build here is on the default branch unless marked untrusted.
    let args = ["--default-branch", "local"];
    let first = p.run("container", &args);
    first.expect_code(0);
    let sys = first.system_lines("deps").join("\n");
    assert!(sys.contains("cache miss: deps-v1") && sys.contains("cache saved: deps-v1"), "{sys}");
    assert!(first.lines("deps").contains(&"hit=false".to_string()));

    let second = p.run("container", &args);
    second.expect_code(0);
    assert!(
        second.system_lines("deps").iter().any(|l| l.starts_with("cache hit: deps-v1")),
        "{:?}",
        second.system_lines("deps")
    );
    assert!(second.lines("deps").contains(&"hit=true".to_string()));
    assert!(
        second.lines("deps").contains(&"restored: trusted-build owner 10001".to_string()),
        "{:?}",
        second.lines("deps")
    );

    // A restore-key prefix.
    p.write("ci.yml", &wf("deps-v2", "          restore-keys: |\n            deps-\n", "x"));
    let partial = p.run("container", &args);
    partial.expect_code(0);
    assert!(
        partial
            .system_lines("deps")
            .iter()
            .any(|l| l.starts_with("cache restored from restore-key: deps-v1")),
        "{:?}",
        partial.system_lines("deps")
    );
    assert!(partial.lines("deps").contains(&"hit=false".to_string()));

    // An untrusted build writes only its own scope: a trusted build never sees it.
    p.write("ci.yml", &wf("poison", "", "poisoned"));
    let untrusted = p.run("container", &["--default-branch", "local", "--untrusted"]);
    untrusted.expect_code(0);
    assert!(untrusted.system_lines("deps").iter().any(|l| l.starts_with("cache saved: poison")));
    let trusted = p.run("container", &args);
    trusted.expect_code(0);
    assert!(
        trusted.system_lines("deps").iter().any(|l| l == "cache miss: poison"),
        "{:?}",
        trusted.system_lines("deps")
    );
    assert!(!trusted.lines("deps").iter().any(|l| l.contains("poisoned")));
    // ... while an untrusted build may read the trusted default branch's entries.
    p.write("ci.yml", &wf("deps-v1", "", "x"));
    let reader = p.run("container", &["--default-branch", "local", "--untrusted"]);
    assert!(
        reader.lines("deps").contains(&"restored: trusted-build owner 10001".to_string()),
        "{:?}",
        reader.lines("deps")
    );

    // Tamper with the cached file's blob, keeping its size (a size change is
    // already a miss at lookup): the digest check on restore catches it.
    let sum = std::process::Command::new("sh")
        .arg("-c")
        .arg("printf 'trusted-build\\n' | sha256sum")
        .output()
        .unwrap();
    let hex = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap().to_string();
    assert!(tamper_blob(&p.state_dir(), &hex, b"evil-content!\n") > 0, "no blob {hex}");
    let tampered = p.run("container", &args);
    tampered.expect_code(0);
    let sys = tampered.system_lines("deps").join("\n");
    assert!(sys.contains("cache miss: deps-v1 (an entry failed verification"), "{sys}");
    assert!(!tampered.lines("deps").iter().any(|l| l.contains("evil-content")));
    let audit = p.kiln().args(["audit", tampered.summary["build"].as_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&audit.stdout).contains("cache-quarantined"));
}

/// A step plants a link to a host directory where a cached path (or a
/// downloaded artifact) goes: kiln refuses the restore by descriptor and
/// creates nothing on the host through it.
#[test]
fn bug_cache_restore_created_directories_through_a_planted_link() {
    let host = tempfile::Builder::new().prefix("kiln-planted-").tempdir_in("/var/tmp").unwrap();
    let target = host.path().display().to_string();
    let save = "jobs:\n  save:\n    steps:\n      - run: mkdir -p deps/sub && echo cached > deps/sub/lib.txt && mkdir -p out && echo art > out/a.txt\n      - uses: actions/cache@v4\n        with:\n          key: planted-v1\n          path: deps/sub\n      - uses: actions/upload-artifact@v4\n        with:\n          name: out\n          path: out\n";
    let p = Project::new(save);
    let args = ["--default-branch", "local"];
    p.run("container", &args).expect_code(0);
    let plant = format!(
        "jobs:\n  plant:\n    steps:\n      - run: ln -s {target} deps\n      - uses: actions/cache@v4\n        with:\n          key: planted-v1\n          path: deps/sub\n  download:\n    steps:\n      - run: ln -s {target} dl\n      - uses: actions/download-artifact@v4\n        with:\n          name: out\n          path: dl/inner\n"
    );
    // The artifact of this build: upload it again in a first job.
    let both = format!(
        "{}\n{}",
        save.trim_end(),
        plant
            .trim_start_matches("jobs:\n")
            .replace("  download:\n    steps:", "  download:\n    needs: save\n    steps:")
    );
    p.write("ci.yml", &both);
    let r = p.run("container", &args);
    assert_eq!(r.status("plant"), "failed", "{}", r.all_text());
    assert_eq!(r.status("download"), "failed", "{}", r.all_text());
    let text = r.all_text();
    assert!(text.contains("`deps` is a symbolic link"), "{text}");
    assert!(text.contains("`dl` is a symbolic link"), "{text}");
    let left: Vec<_> = std::fs::read_dir(host.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "created on the host through the link: {left:?}");
}
