use std::fs;

use kiln_secrets::{check_tree, PatternSet, Scrubber, Secret, TreeError};

fn sc() -> Scrubber {
    Scrubber::new(
        &[Secret::new("API_TOKEN", "tok-1234567890-abcdef"), Secret::new("OTHER", "other-secret-value")],
        &PatternSet::builtin(),
    )
}

fn found(r: Result<(), TreeError>) -> (String, String) {
    match r {
        Err(TreeError::SecretFound { path, secret_name }) => {
            (path.to_string_lossy().into_owned(), secret_name)
        }
        other => panic!("expected SecretFound, got {other:?}"),
    }
}

#[test]
fn clean_tree_passes() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("a/b")).unwrap();
    fs::write(d.path().join("a/b/c.txt"), "nothing to see\n").unwrap();
    fs::write(d.path().join("top.bin"), vec![0u8; 1000]).unwrap();
    check_tree(d.path(), &sc()).unwrap();
}

#[test]
fn finds_value_in_nested_file() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("out/deep")).unwrap();
    fs::write(d.path().join("out/a.txt"), "fine\n").unwrap();
    fs::write(d.path().join("out/deep/log.txt"), "x=tok-1234567890-abcdef\n").unwrap();
    let (p, n) = found(check_tree(d.path(), &sc()));
    assert_eq!((p.as_str(), n.as_str()), ("out/deep/log.txt", "API_TOKEN"));
    let msg = check_tree(d.path(), &sc()).unwrap_err().to_string();
    assert!(msg.contains("out/deep/log.txt") && msg.contains("API_TOKEN"));
    assert!(!msg.contains("tok-1234567890"));
}

#[test]
fn finds_base64_and_across_chunk_boundary_in_large_file() {
    let d = tempfile::tempdir().unwrap();
    // base64 of "prefix" + value, in the middle of a 3 MiB file, straddling a 256 KiB boundary.
    let mut content = vec![b'.'; 3 << 20];
    let enc = b"eHh4b3RoZXItc2VjcmV0LXZhbHVleHh4"; // base64("xxxother-secret-valuexxx")
    let at = (256 << 10) - 10;
    content[at..at + enc.len()].copy_from_slice(enc);
    fs::write(d.path().join("big.dat"), &content).unwrap();
    let (p, n) = found(check_tree(d.path(), &sc()));
    assert_eq!((p.as_str(), n.as_str()), ("big.dat", "OTHER"));
}

#[test]
fn value_split_by_newline_in_file() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("f"), "tok-12345\n67890-abcdef\n").unwrap();
    assert_eq!(found(check_tree(d.path(), &sc())).1, "API_TOKEN");
}

#[cfg(unix)]
#[test]
fn symlinks_not_followed_but_targets_checked() {
    let d = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("s.txt"), "tok-1234567890-abcdef").unwrap();
    std::os::unix::fs::symlink(outside.path().join("s.txt"), d.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), d.path().join("dirlink")).unwrap();
    check_tree(d.path(), &sc()).unwrap();
    std::os::unix::fs::symlink("/tmp/other-secret-value", d.path().join("bad")).unwrap();
    assert_eq!(found(check_tree(d.path(), &sc())), ("bad".into(), "OTHER".into()));
}

#[test]
fn file_names_checked_and_io_errors() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("other-secret-value.txt"), "").unwrap();
    assert_eq!(found(check_tree(d.path(), &sc())).1, "OTHER");
    let missing = d.path().join("nope");
    assert!(matches!(check_tree(&missing, &sc()), Err(TreeError::Io { .. })));
}
