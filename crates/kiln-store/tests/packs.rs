//! Small files packed per tree: round trip, per-file dedup, and attacks on
//! the packs and their index files, which must never make a read hand out
//! bytes other than the blob's own.

mod common;

use common::*;
use kiln_store::{Digest, RestoreLimits, Store, StoreError, StoreEvent};

fn small_tree(dir: &std::path::Path, files: usize, changed: &[usize]) {
    for i in 0..files {
        let v = if changed.contains(&i) { 1_000_000 + i } else { i };
        write(
            &dir.join(format!("pkg-{}/lib/file-{i}.js", i % 7)),
            format!("module {v}\n").repeat(i % 50 + 1).as_bytes(),
        );
    }
    write(&dir.join("LICENSE"), b"same text");
    write(&dir.join("pkg-0/LICENSE"), b"same text");
    write(&dir.join("empty"), b"");
}

/// Every file under `dir` with its bytes, sorted.
fn contents(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = listing(dir)
        .into_iter()
        .filter(|p| dir.join(p).is_file())
        .map(|p| {
            let data = std::fs::read(dir.join(&p)).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    out
}

fn own_blob_files(td: &tempfile::TempDir) -> usize {
    listing(&td.path().join("store/default/blobs")).iter().filter(|p| p.len() > 70).count()
}

fn index_files(td: &tempfile::TempDir) -> Vec<std::path::PathBuf> {
    listing(&td.path().join("store/default/packs"))
        .into_iter()
        .filter(|p| p.ends_with(".idx"))
        .map(|p| td.path().join("store/default/packs").join(p))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn small_files_are_packed_restored_byte_for_byte_and_deduplicated_per_file() {
    let (td, s) = new_store();
    let src = td.path().join("src");
    small_tree(&src, 300, &[]);
    let st = s.put_tree_stats(&src).await.unwrap();
    // 300 files, a LICENSE twice and an empty file: 302 distinct blobs.
    assert_eq!((st.files, st.new_blobs), (303, 302));
    // One object of its own (the manifest); the files are in one pack.
    assert_eq!(own_blob_files(&td), 1);
    assert_eq!(index_files(&td).len(), 1);
    let out = td.path().join("out");
    s.restore_tree(&st.digest, &out, &RestoreLimits::default()).await.unwrap();
    assert_eq!(contents(&out), contents(&src));

    // The same tree again, through another handle: nothing new.
    let again = Store::open_local(td.path().join("store")).unwrap();
    assert_eq!(again.put_tree_stats(&src).await.unwrap().new_blobs, 0);
    // A tree sharing all but 10 files stores just those 10.
    let src2 = td.path().join("src2");
    small_tree(&src2, 300, &(0..300).step_by(30).collect::<Vec<_>>());
    let st2 = again.put_tree_stats(&src2).await.unwrap();
    assert_eq!(st2.new_blobs, 10);
    let out2 = td.path().join("out2");
    s.restore_tree(&st2.digest, &out2, &RestoreLimits::default()).await.unwrap();
    assert_eq!(contents(&out2), contents(&src2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_pack_index_cannot_serve_another_blobs_bytes() {
    let (td, s) = new_store();
    let src = td.path().join("src");
    write(&src.join("a"), b"AAAA");
    write(&src.join("b"), b"BBBB");
    let t = s.put_tree(&src).await.unwrap();
    // Point `a` at `b`'s bytes (same size), as someone with write access to
    // the store's index files might.
    let idx = &index_files(&td)[0];
    let text = std::fs::read_to_string(idx).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let members = v["members"].as_array_mut().unwrap();
    let b_off = members.iter().find(|m| m[0] == Digest::of(b"BBBB").to_string()).unwrap()[1].clone();
    for m in members.iter_mut() {
        if m[0] == Digest::of(b"AAAA").to_string() {
            m[1] = b_off.clone();
        }
    }
    std::fs::write(idx, serde_json::to_vec(&v).unwrap()).unwrap();
    let fresh = Store::open_local(td.path().join("store")).unwrap();
    let out = td.path().join("out");
    let err = fresh.restore_tree(&t, &out, &RestoreLimits::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(!out.exists(), "nothing restored");
    assert!(matches!(&fresh.take_events()[..], [StoreEvent::Quarantined { .. }]));
    // Taken out of the index: storing the tree again stores `a` anew, and it restores.
    assert_eq!(fresh.put_tree_stats(&src).await.unwrap().new_blobs, 1);
    fresh.restore_tree(&t, &out, &RestoreLimits::default()).await.unwrap();
    assert_eq!(std::fs::read(out.join("a")).unwrap(), b"AAAA");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_index_reaching_past_its_pack_is_not_trusted() {
    let (td, s) = new_store();
    let src = td.path().join("src");
    write(&src.join("a"), b"AAAA");
    let t = s.put_tree(&src).await.unwrap();
    // A huge size or an offset past the end: never read, never allocated.
    for (off, size) in [(0u64, u64::MAX), (u64::MAX - 1, 4), (1 << 40, 4)] {
        let idx = &index_files(&td)[0];
        let d = Digest::of(b"AAAA").to_string();
        std::fs::write(idx, format!(r#"{{"version":1,"members":[["{d}",{off},{size}]]}}"#)).unwrap();
        let fresh = Store::open_local(td.path().join("store")).unwrap();
        assert_eq!(fresh.blob_size(&Digest::of(b"AAAA")).await.unwrap(), None);
        let err = fresh.get_bytes(&Digest::of(b"AAAA"), None).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        let out = td.path().join("out");
        assert!(fresh.restore_tree(&t, &out, &RestoreLimits::default()).await.is_err());
        assert!(!out.exists());
    }
    // An index that is not JSON at all is ignored the same way.
    std::fs::write(&index_files(&td)[0], b"\xff\xfe not json").unwrap();
    let fresh = Store::open_local(td.path().join("store")).unwrap();
    assert_eq!(fresh.blob_size(&Digest::of(b"AAAA")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_or_vanished_pack_reads_as_missing_never_as_short_bytes() {
    let (td, s) = new_store();
    let src = td.path().join("src");
    write(&src.join("a"), b"AAAA");
    write(&src.join("b"), b"BBBB");
    s.put_tree(&src).await.unwrap();
    let place = s.locate_blob(&Digest::of(b"BBBB")).await.unwrap().unwrap();
    let (pack, off) = (place.file, place.offset);
    let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
    f.set_len(off + 2).unwrap();
    // The handle that wrote it still has the index in memory.
    assert_eq!(s.blob_size(&Digest::of(b"BBBB")).await.unwrap(), None);
    assert!(matches!(&s.take_events()[..], [StoreEvent::Quarantined { .. }]));
    assert!(s.get_bytes(&Digest::of(b"BBBB"), None).await.is_err());
    std::fs::remove_file(&pack).unwrap();
    let err = s.get_bytes(&Digest::of(b"AAAA"), Some(4)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(s.blob_size(&Digest::of(b"AAAA")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_swapped_for_a_symlink_is_not_followed() {
    let (td, s) = new_store();
    let src = td.path().join("src");
    write(&src.join("a"), b"AAAA");
    let t = s.put_tree(&src).await.unwrap();
    let pack = s.locate_blob(&Digest::of(b"AAAA")).await.unwrap().unwrap().file;
    let elsewhere = td.path().join("elsewhere");
    std::fs::rename(&pack, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &pack).unwrap();
    let out = td.path().join("out");
    assert!(s.restore_tree(&t, &out, &RestoreLimits::default()).await.is_err());
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_whose_blobs_are_all_unreferenced_goes_with_gc_and_a_shared_one_stays() {
    let (td, s) = new_store();
    let one = td.path().join("one");
    write(&one.join("shared"), b"shared");
    write(&one.join("only-one"), b"one");
    let t1 = s.put_tree(&one).await.unwrap();
    let two = td.path().join("two");
    write(&two.join("only-two"), b"two");
    s.put_tree(&two).await.unwrap();
    s.cache_put(&kiln_store::write_scope(&scope()), "k", &t1).await.unwrap();
    let policy = kiln_store::GcPolicy { grace: std::time::Duration::ZERO, ..Default::default() };
    let report = s.gc(&policy, false).await.unwrap();
    assert_eq!(report.deleted_packs.len(), 1, "{report:?}");
    assert_eq!(index_files(&td).len(), 1);
    let out = td.path().join("out");
    s.restore_tree(&t1, &out, &RestoreLimits::default()).await.unwrap();
    assert_eq!(std::fs::read(out.join("shared")).unwrap(), b"shared");
}

fn scope() -> kiln_store::Scope {
    kiln_store::Scope { tenant: "default".into(), trust: kiln_store::Trust::Trusted, ref_name: "main".into() }
}

#[tokio::test(flavor = "multi_thread")]
async fn bug_a_put_counted_blobs_in_a_pack_another_process_had_deleted() {
    let (td, s) = new_store();
    let src = td.path().join("src");
    write(&src.join("a"), b"AAAA");
    write(&src.join("b"), b"BBBB");
    // This handle knows the pack; another one (another process: `kiln gc`
    // beside `kiln serve`) deletes it, nothing referencing it.
    s.put_tree(&src).await.unwrap();
    let other = Store::open_local(td.path().join("store")).unwrap();
    let policy = kiln_store::GcPolicy { grace: std::time::Duration::ZERO, ..Default::default() };
    assert_eq!(other.gc(&policy, false).await.unwrap().deleted_packs.len(), 1);
    // Storing the same files again through the first handle writes them
    // again instead of pointing at the pack that went.
    let st = s.put_tree_stats(&src).await.unwrap();
    assert_eq!(st.new_blobs, 2);
    let out = td.path().join("out");
    s.restore_tree(&st.digest, &out, &RestoreLimits::default()).await.unwrap();
    assert_eq!(std::fs::read(out.join("b")).unwrap(), b"BBBB");
}
