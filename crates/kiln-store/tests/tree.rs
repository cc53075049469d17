mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use kiln_store::*;

fn file(path: &str, d: Digest, size: u64) -> Entry {
    Entry::File { path: path.into(), size, mode: 0o644, digest: d }
}
fn link(path: &str, t: &str) -> Entry {
    Entry::Symlink { path: path.into(), symlink: t.into() }
}

#[tokio::test(flavor = "multi_thread")]
async fn put_and_restore_roundtrip_with_dedup() {
    let (td, s) = new_store();
    let a = td.path().join("a");
    write(&a.join("shared/one.js"), b"one");
    write(&a.join("shared/two.js"), b"two");
    write(&a.join("only-a.txt"), b"a");
    write(&a.join("dup.txt"), b"one"); // same content as shared/one.js
    std::fs::create_dir_all(a.join("empty")).unwrap();
    std::os::unix::fs::symlink("shared/one.js", a.join("link")).unwrap();
    std::fs::set_permissions(a.join("only-a.txt"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let sa = s.put_tree_stats(&a).await.unwrap();
    assert_eq!(sa.files, 4);
    assert_eq!(sa.new_blobs, 3, "identical files stored once");

    let b = td.path().join("b");
    write(&b.join("shared/one.js"), b"one");
    write(&b.join("shared/two.js"), b"two");
    write(&b.join("only-b.txt"), b"b");
    let sb = s.put_tree_stats(&b).await.unwrap();
    assert_eq!(sb.new_blobs, 1, "only the new file is stored");
    assert_ne!(sa.digest, sb.digest);
    // Stable id.
    assert_eq!(s.put_tree(&a).await.unwrap(), sa.digest);

    let out = td.path().join("out");
    s.restore_tree(&sa.digest, &out, &RestoreLimits::default()).await.unwrap();
    assert_eq!(std::fs::read(out.join("dup.txt")).unwrap(), b"one");
    assert_eq!(std::fs::read_link(out.join("link")).unwrap().to_str(), Some("shared/one.js"));
    assert!(out.join("empty").is_dir());
    let mode = std::fs::metadata(out.join("only-a.txt")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid stripped");
    let m = s.get_manifest(&sa.digest).await.unwrap();
    assert!(m
        .entries
        .iter()
        .any(|e| matches!(e, Entry::File { path, mode: 0o755, .. } if path == "only-a.txt")));
    // Non-empty target refused.
    assert!(matches!(
        s.restore_tree(&sa.digest, &out, &RestoreLimits::default()).await,
        Err(StoreError::Tree(TreeError::TargetNotEmpty { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn put_tree_refuses_special_files() {
    let (td, s) = new_store();
    let a = td.path().join("a");
    write(&a.join("ok"), b"x");
    let sock = a.join("sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    match s.put_tree(&a).await {
        Err(StoreError::Tree(TreeError::SpecialFile { path, kind })) => {
            assert!(path.ends_with("sock"));
            assert_eq!(kind, "socket");
        }
        other => panic!("{other:?}"),
    }
}

async fn restore_hostile(
    entries: Vec<Entry>,
    limits: RestoreLimits,
) -> (tempfile::TempDir, Result<TreeStats>) {
    let (td, s) = new_store();
    let data = s.put_bytes(&b"pwned"[..]).await.unwrap().digest;
    let entries = entries
        .into_iter()
        .map(|e| match e {
            Entry::File { path, size, mode, .. } => Entry::File { path, size, mode, digest: data },
            e => e,
        })
        .collect();
    // Keep order as given (a hostile manifest need not be sorted).
    let m = Manifest { version: 1, entries };
    let id = s.put_manifest(&m).await.unwrap();
    std::fs::create_dir_all(td.path().join("outside/target/inner")).unwrap();
    let r = s.restore_tree(&id, td.path().join("outside/target/inner/t"), &limits).await;
    (td, r)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_manifests_are_refused() {
    let d = Digest::of(b"pwned");
    let lim = RestoreLimits::default();
    type Case = (Vec<Entry>, RestoreLimits, fn(&TreeError) -> bool);
    let cases: Vec<Case> = vec![
        (
            vec![file("/etc/passwd", d, 5)],
            lim,
            |e| matches!(e, TreeError::AbsolutePath { path } if path == "/etc/passwd"),
        ),
        (vec![file("../x", d, 5)], lim, |e| matches!(e, TreeError::DotDot { .. })),
        (vec![file("a/../../x", d, 5)], lim, |e| matches!(e, TreeError::DotDot { .. })),
        (vec![file("a//x", d, 5)], lim, |e| matches!(e, TreeError::EmptyComponent { .. })),
        (vec![file("./x", d, 5)], lim, |e| matches!(e, TreeError::EmptyComponent { .. })),
        (vec![file("", d, 5)], lim, |e| matches!(e, TreeError::EmptyComponent { .. })),
        (vec![file("a\0b", d, 5)], lim, |e| matches!(e, TreeError::NulByte { .. })),
        (
            vec![file("x", d, 5), file("x", d, 5)],
            lim,
            |e| matches!(e, TreeError::DuplicatePath { path } if path == "x"),
        ),
        (
            vec![link("l", "sub"), file("l/x", d, 5)],
            lim,
            |e| matches!(e, TreeError::UnderSymlink { path, symlink } if path == "l/x" && symlink == "l"),
        ),
        (vec![file("f", d, 5), file("f/x", d, 5)], lim, |e| matches!(e, TreeError::UnderNonDirectory { .. })),
        (vec![link("l", "/etc")], lim, |e| matches!(e, TreeError::SymlinkAbsolute { .. })),
        (vec![link("l", "../../..")], lim, |e| matches!(e, TreeError::SymlinkEscapes { .. })),
        (vec![link("a/l", "../b/../..")], lim, |e| matches!(e, TreeError::SymlinkEscapes { .. })),
        // Each link stays inside lexically, but chained resolution escapes.
        (
            vec![link("a/b/s", "../.."), link("l", "a/b/s/..")],
            lim,
            |e| matches!(e, TreeError::SymlinkEscapes { path, .. } if path == "l"),
        ),
        (vec![link("x", "y"), link("y", "x")], lim, |e| matches!(e, TreeError::SymlinkInvalid { .. })),
        (vec![link("e", "")], lim, |e| matches!(e, TreeError::SymlinkInvalid { .. })),
        (vec![file(&"a".repeat(300), d, 5)], lim, |e| matches!(e, TreeError::PathTooLong { .. })),
        (vec![file(&vec!["d"; 200].join("/"), d, 5)], lim, |e| matches!(e, TreeError::TooDeep { .. })),
        (
            vec![file("a", d, 5), file("b", d, 5), file("c", d, 5)],
            RestoreLimits { max_entries: 2, ..lim },
            |e| matches!(e, TreeError::TooManyEntries { path, limit: 2 } if path == "c"),
        ),
        (
            vec![file("a", d, 5), file("b", d, 5)],
            RestoreLimits { max_bytes: 9, ..lim },
            |e| matches!(e, TreeError::TooManyBytes { path, .. } if path == "b"),
        ),
        (vec![file("a", d, u64::MAX), file("b", d, 5)], lim, |e| matches!(e, TreeError::TooManyBytes { .. })),
    ];
    for (i, (entries, limits, check)) in cases.into_iter().enumerate() {
        let (td, r) = restore_hostile(entries.clone(), limits).await;
        match r {
            Err(StoreError::Tree(e)) => assert!(check(&e), "case {i}: unexpected {e:?}"),
            other => panic!("case {i} {entries:?}: expected refusal, got {other:?}"),
        }
        // Nothing written anywhere: not outside, and the target is not left behind.
        assert_eq!(listing(&td.path().join("outside")), vec!["target", "target/inner"], "case {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_lying_about_size_fails_and_cleans_up() {
    let (td, r) = restore_hostile(
        vec![file("ok", Digest::of(b""), 5), file("z", Digest::of(b""), 3)],
        RestoreLimits::default(),
    )
    .await;
    assert!(matches!(r, Err(StoreError::SizeMismatch { .. })), "{r:?}");
    assert_eq!(listing(&td.path().join("outside")), vec!["target", "target/inner"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_blob_during_restore_leaves_nothing() {
    let (td, s) = new_store();
    let a = td.path().join("a");
    write(&a.join("x/1"), b"aaaa");
    write(&a.join("x/2"), b"bbbb");
    let t = s.put_tree(&a).await.unwrap();
    tamper(&s, &Digest::of(b"bbbb"), b"evil").await;
    let out = td.path().join("out");
    assert!(matches!(
        s.restore_tree(&t, &out, &RestoreLimits::default()).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(!out.exists());
    assert_eq!(s.events().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_inner_symlinks_restore() {
    let d = Digest::of(b"pwned");
    let (td, r) = restore_hostile(
        vec![
            Entry::Dir { path: "a".into(), mode: 0o555 },
            file("a/b/f", d, 5),
            link("a/l", "b/f"),
            link("a/up", "../a/b"),
            link("dangling", "nowhere/x"),
        ],
        RestoreLimits::default(),
    )
    .await;
    r.unwrap();
    let t = td.path().join("outside/target/inner/t");
    assert_eq!(std::fs::read(t.join("a/l")).unwrap(), b"pwned");
    let mode = std::fs::metadata(t.join("a")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o555);
    std::fs::set_permissions(t.join("a"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_file_streamed_into_place_is_verified_and_removed_when_tampered() {
    let (td, s) = new_store();
    let a = td.path().join("a");
    // Past the prefetch size: written while it is read, on a thread of its own.
    let big: Vec<u8> = (0..5u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    write(&a.join("big.bin"), &big);
    write(&a.join("small"), b"s");
    let t = s.put_tree(&a).await.unwrap();
    let out = td.path().join("out");
    s.restore_tree(&t, &out, &RestoreLimits::default()).await.unwrap();
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), big);
    // One byte in its fourth MiB changed: nothing of it is left behind.
    let d = Digest::of(&big);
    let place = s.locate_blob(&d).await.unwrap().unwrap();
    let mut bad = std::fs::read(&place.file).unwrap();
    bad[(3 << 20) + 7] ^= 1;
    std::fs::write(&place.file, bad).unwrap();
    let out2 = td.path().join("out2");
    let err = s.restore_tree(&t, &out2, &RestoreLimits::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(!out2.exists(), "nothing restored");
}
