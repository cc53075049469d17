mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use kiln_store::tar::{RawTarBuilder, TarReader};
use kiln_store::*;
use proptest::prelude::*;

async fn ingest(bytes: Vec<u8>, limits: RestoreLimits) -> (tempfile::TempDir, Result<TreeStats>) {
    let (td, s) = new_store();
    std::fs::create_dir_all(td.path().join("outside")).unwrap();
    let r = s.extract_tar(&bytes[..], td.path().join("outside/t"), &limits).await;
    (td, r)
}

fn tree_err(r: Result<TreeStats>) -> TreeError {
    match r {
        Err(StoreError::Tree(e)) => e,
        other => panic!("expected TreeError, got {other:?}"),
    }
}
fn arch_err(r: Result<TreeStats>) -> ArchiveError {
    match r {
        Err(StoreError::Archive(e)) => e,
        other => panic!("expected ArchiveError, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn good_archive_extracts() {
    let tar = RawTarBuilder::new()
        .dir("./")
        .dir("./src/")
        .file("./src/main.rs", 0o4755, b"fn main(){}")
        .symlink("./lib", "src")
        .hardlink("./copy.rs", "./src/main.rs")
        .pax(&[("path", format!("{}f", "long/".repeat(40)).as_str()), ("size", "3")])
        .raw(b'0', "ignored", "", 0o644, 0, b"abc")
        .finish();
    let (td, r) = ingest(tar, RestoreLimits::default()).await;
    let st = r.unwrap();
    let t = td.path().join("outside/t");
    assert_eq!(std::fs::read(t.join("copy.rs")).unwrap(), b"fn main(){}");
    let mode = std::fs::metadata(t.join("src/main.rs")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid stripped");
    assert_eq!(std::fs::read(t.join(format!("{}f", "long/".repeat(40)))).unwrap(), b"abc");
    assert_eq!(st.files, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn real_tar_tool_output_is_accepted() {
    let td = tempfile::tempdir().unwrap();
    let src = td.path().join("src");
    write(&src.join("a/b/c.txt"), b"hello");
    write(&src.join(format!("{}/f", "n".repeat(120))), b"long name");
    std::os::unix::fs::symlink("b/c.txt", src.join("a/l")).unwrap();
    for fmt in ["gnu", "pax", "ustar"] {
        let out = std::process::Command::new("tar")
            .args(["-C", src.to_str().unwrap(), "--format", fmt, "-cf", "-", "."])
            .output()
            .unwrap();
        if fmt == "ustar" {
            // ustar cannot hold the 120-byte component; tar fails. Skip.
            continue;
        }
        assert!(out.status.success(), "{fmt}");
        let (td2, r) = ingest(out.stdout, RestoreLimits::default()).await;
        r.unwrap_or_else(|e| panic!("{fmt}: {e}"));
        let t = td2.path().join("outside/t");
        assert_eq!(std::fs::read(t.join("a/l")).unwrap(), b"hello", "{fmt}");
        assert_eq!(std::fs::read(t.join(format!("{}/f", "n".repeat(120)))).unwrap(), b"long name");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_archives_are_refused() {
    let lim = RestoreLimits::default();
    let clean = |td: &tempfile::TempDir| {
        assert!(listing(&td.path().join("outside")).is_empty(), "nothing written");
        assert!(!td.path().join("etc").exists());
    };
    // Absolute path.
    let (td, r) = ingest(RawTarBuilder::new().file("/etc/passwd", 0o644, b"x").finish(), lim).await;
    assert!(matches!(tree_err(r), TreeError::AbsolutePath { path } if path == "/etc/passwd"));
    clean(&td);
    // `..`.
    let (td, r) = ingest(RawTarBuilder::new().file("a/../../etc/passwd", 0o644, b"x").finish(), lim).await;
    assert!(matches!(tree_err(r), TreeError::DotDot { .. }));
    clean(&td);
    // Symlink escaping, then a file through it.
    let (td, r) =
        ingest(RawTarBuilder::new().symlink("l", "../../etc").file("l/passwd", 0o644, b"x").finish(), lim)
            .await;
    assert!(matches!(tree_err(r), TreeError::SymlinkEscapes { path, .. } if path == "l"));
    clean(&td);
    // Benign symlink, then a file through it.
    let (td, r) =
        ingest(RawTarBuilder::new().dir("sub").symlink("l", "sub").file("l/x", 0o644, b"x").finish(), lim)
            .await;
    assert!(matches!(tree_err(r), TreeError::UnderSymlink { path, .. } if path == "l/x"));
    clean(&td);
    // Hard links outside / to nothing earlier.
    for target in ["/etc/passwd", "../etc/passwd", "later"] {
        let (td, r) =
            ingest(RawTarBuilder::new().hardlink("h", target).file("later", 0o644, b"x").finish(), lim).await;
        assert!(matches!(tree_err(r), TreeError::HardLinkOutside { .. }), "{target}");
        clean(&td);
    }
    // Devices and FIFOs.
    for (flag, name) in [(b'3', "chr"), (b'4', "blk"), (b'6', "fifo"), (b'S', "sparse")] {
        let (td, r) = ingest(RawTarBuilder::new().raw(flag, name, "", 0o644, 0, &[]).finish(), lim).await;
        assert!(matches!(arch_err(r), ArchiveError::Unsupported { path, .. } if path == name));
        clean(&td);
    }
    // Too many entries / bytes (refused while reading).
    let mut b = RawTarBuilder::new();
    for i in 0..10 {
        b.file(&format!("f{i}"), 0o644, b"x");
    }
    let (td, r) = ingest(b.finish(), RestoreLimits { max_entries: 5, ..lim }).await;
    assert!(matches!(tree_err(r), TreeError::TooManyEntries { path, limit: 5 } if path == "f5"));
    clean(&td);
    let (td, r) = ingest(
        RawTarBuilder::new().file("a", 0o644, &[1; 600]).file("b", 0o644, &[2; 600]).finish(),
        RestoreLimits { max_bytes: 1000, ..lim },
    )
    .await;
    assert!(matches!(tree_err(r), TreeError::TooManyBytes { path, .. } if path == "b"));
    clean(&td);
    // Duplicate entries (a later entry would silently overwrite in other extractors).
    let (_td, r) =
        ingest(RawTarBuilder::new().file("a", 0o644, b"1").file("a", 0o644, b"2").finish(), lim).await;
    assert!(matches!(tree_err(r), TreeError::DuplicatePath { .. }));
}

#[tokio::test(flavor = "multi_thread")]
async fn pax_size_confusion_is_refused() {
    let lim = RestoreLimits::default();
    // PAX says 3, ustar says 600: the RUSTSEC-2026-0068 shape.
    let tar =
        RawTarBuilder::new().pax(&[("size", "3")]).raw(b'0', "a", "", 0o644, 600, &[b'x'; 600]).finish();
    let (_td, r) = ingest(tar, lim).await;
    assert!(matches!(arch_err(r), ArchiveError::SizeMismatch { pax: 3, ustar: 600, .. }));
    for bad in ["-1", "3x", "", "0x10", "99999999999999999999999"] {
        let tar = RawTarBuilder::new().pax(&[("size", bad)]).raw(b'0', "a", "", 0o644, 0, &[]).finish();
        let (_td, r) = ingest(tar, lim).await;
        assert!(matches!(arch_err(r), ArchiveError::BadPax { .. }), "{bad:?}");
    }
    // Duplicate key, sparse key, dangling PAX header.
    let tar = RawTarBuilder::new().pax(&[("path", "a"), ("path", "b")]).file("x", 0o644, b"").finish();
    assert!(matches!(arch_err(ingest(tar, lim).await.1), ArchiveError::BadPax { .. }));
    let tar = RawTarBuilder::new().pax(&[("GNU.sparse.size", "1")]).file("x", 0o644, b"").finish();
    assert!(matches!(arch_err(ingest(tar, lim).await.1), ArchiveError::BadPax { .. }));
    let tar = RawTarBuilder::new().pax(&[("path", "a")]).finish();
    assert!(matches!(arch_err(ingest(tar, lim).await.1), ArchiveError::Garbage { .. }));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_archives_are_refused() {
    let lim = RestoreLimits::default();
    let good = RawTarBuilder::new().file("a", 0o644, b"hello").finish();
    let mut bad_sum = good.clone();
    bad_sum[0] = b'b';
    assert!(matches!(arch_err(ingest(bad_sum, lim).await.1), ArchiveError::BadChecksum { .. }));
    let truncated = good[..600].to_vec();
    assert!(matches!(arch_err(ingest(truncated, lim).await.1), ArchiveError::Truncated { .. }));
    let no_end = good[..1024].to_vec();
    assert!(matches!(arch_err(ingest(no_end, lim).await.1), ArchiveError::Truncated { .. }));
    let mut garbage = good.clone();
    garbage.extend_from_slice(b"trailing");
    assert!(matches!(arch_err(ingest(garbage, lim).await.1), ArchiveError::Garbage { .. }));
    let dir_with_data = RawTarBuilder::new().raw(b'5', "d", "", 0o755, 5, b"12345").finish();
    assert!(matches!(arch_err(ingest(dir_with_data, lim).await.1), ArchiveError::UnexpectedData { .. }));
}

fn read_all(bytes: &[u8]) {
    let mut r = TarReader::new(bytes);
    for _ in 0..10_000 {
        match r.next_entry() {
            Ok(Some(e)) => {
                if matches!(e.kind, kiln_store::tar::TarKind::File { .. }) {
                    let _ = std::io::copy(&mut r.data(), &mut std::io::sink());
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn reader_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        read_all(&bytes);
    }

    #[test]
    fn reader_never_panics_on_mutated_archives(
        muts in proptest::collection::vec((0usize..4096, any::<u8>()), 1..16),
        cut in 0usize..5000,
    ) {
        let mut tar = RawTarBuilder::new()
            .pax(&[("path", "p/ax"), ("size", "7")])
            .raw(b'0', "x", "", 0o644, 0, b"1234567")
            .raw(b'L', "././@LongLink", "", 0o644, 4, b"long")
            .file("n", 0o644, b"abc")
            .symlink("s", "n")
            .finish();
        for (i, b) in muts {
            let n = tar.len();
            tar[i % n] = b;
        }
        tar.truncate(cut.min(tar.len()));
        read_all(&tar);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bug_a_store_write_error_was_reported_as_a_truncated_archive() {
    let (td, s) = new_store();
    // The tenant's temporary directory is a file: every blob write fails
    // (as on a full disk), while the archive itself is whole.
    std::fs::create_dir_all(td.path().join("store/default")).unwrap();
    std::fs::write(td.path().join("store/default/tmp"), b"not a directory").unwrap();
    let tar = RawTarBuilder::new().file("./data.txt", 0o644, &[b'x'; 4096]).finish();
    let err = s.put_tar(&tar[..], &RestoreLimits::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("Not a directory"), "{err}");
    // An archive that does end inside a file is still reported as truncated.
    let cut = &tar[..512 + 100];
    let err = s.put_tar(cut, &RestoreLimits::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Archive(ArchiveError::Truncated { .. })), "{err:?}");
}
