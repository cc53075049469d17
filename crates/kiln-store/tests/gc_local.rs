//! gc on the local filesystem backend (the one `kiln` uses).

#[tokio::test(flavor = "multi_thread")]
async fn gc_sweeps_unreferenced_blobs_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = kiln_store::Store::open_local(dir.path()).unwrap().tenant("local").unwrap();
    let put = store.put_bytes(b"orphan blob".to_vec()).await.unwrap();
    let listed = store.list_blobs().await.unwrap();
    assert!(listed.iter().any(|(d, _)| *d == put.digest), "{listed:?}");
    let policy = kiln_store::GcPolicy { grace: std::time::Duration::ZERO, ..Default::default() };
    let report = store.gc(&policy, true).await.unwrap();
    assert_eq!(report.deleted_blobs, vec![put.digest]);
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_sweeps_the_blobs_of_dropped_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let store = kiln_store::Store::open_local(dir.path().join("store")).unwrap().tenant("local").unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a"), "one").unwrap();
    let tree = store.put_tree(src.path()).await.unwrap();
    let blobs = store.list_blobs().await.unwrap();
    assert!(blobs.iter().any(|(d, _)| *d == tree), "{blobs:?}");
    let policy = kiln_store::GcPolicy {
        keep_last_per_branch: 0,
        grace: std::time::Duration::ZERO,
        ..Default::default()
    };
    let report = store.gc(&policy, true).await.unwrap();
    assert!(report.deleted_blobs.contains(&tree), "{report:?}");
    // The file itself was packed: its pack goes with the tree.
    assert_eq!(report.deleted_packs.len(), 1, "{report:?}");
    let report = store.gc(&policy, false).await.unwrap();
    assert_eq!(report.deleted_packs.len(), 1, "{report:?}");
    // Nothing left under packs/ (the emptied directories may go too).
    let left: Vec<_> = walkdir(&dir.path().join("store/local/packs"));
    assert!(left.is_empty(), "{left:?}");
}

fn walkdir(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(p) else { return Vec::new() };
    rd.flatten().flat_map(|e| if e.path().is_dir() { walkdir(&e.path()) } else { vec![e.path()] }).collect()
}
