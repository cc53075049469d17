mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use common::*;
use kiln_store::*;

#[tokio::test(flavor = "multi_thread")]
async fn put_get_roundtrip_and_dedup() {
    let (_td, s) = new_store();
    let a = s.put_bytes(&b"hello"[..]).await.unwrap();
    assert!(a.new);
    let b = s.put_bytes(&b"hello"[..]).await.unwrap();
    assert!(!b.new);
    assert_eq!(a.digest, b.digest);
    assert_eq!(&s.get_bytes(&a.digest, Some(5)).await.unwrap()[..], b"hello");
    assert!(matches!(s.get_bytes(&a.digest, Some(6)).await, Err(StoreError::SizeMismatch { .. })));
    assert!(matches!(s.get_bytes(&Digest::of(b"nope"), None).await, Err(StoreError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn large_streaming_put_and_dedup() {
    let (_td, s) = new_store();
    let data: Vec<u8> = (0..(SMALL_BLOB + 3 * 1024 * 1024)).map(|i| (i % 251) as u8).collect();
    let o = s.put_reader(&data[..]).await.unwrap();
    assert!(o.new);
    assert_eq!(o.digest, Digest::of(&data));
    let o2 = s.put_reader(&data[..]).await.unwrap();
    assert!(!o2.new);
    assert_eq!(s.get_bytes(&o.digest, None).await.unwrap().len(), data.len());
    assert_eq!(s.list_blobs().await.unwrap().len(), 1);
    assert!(s.list_rel_public_tmp().await.is_empty());
}

trait TmpList {
    async fn list_rel_public_tmp(&self) -> Vec<String>;
}
impl TmpList for Store {
    async fn list_rel_public_tmp(&self) -> Vec<String> {
        use futures::StreamExt;
        let p = object_store::path::Path::from(format!("{}/tmp", self.tenant_name()));
        let v: Vec<_> = self.backend().list(Some(&p)).collect().await;
        v.into_iter().map(|m| m.unwrap().location.to_string()).collect()
    }
}

/// A reader that fails after `n` bytes (a build killed mid-upload).
struct FailAfter {
    left: usize,
}
impl Read for FailAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("killed"));
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(7);
        self.left -= n;
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_mid_write_leaves_no_blob() {
    let (td, s) = new_store();
    // Small and large failing writes.
    for n in [1000, SMALL_BLOB + 5 * 1024 * 1024] {
        assert!(s.put_reader(FailAfter { left: n }).await.is_err());
    }
    assert!(s.list_blobs().await.unwrap().is_empty());
    assert!(s.list_rel_public_tmp().await.is_empty());
    // A leftover temp file from a real crash, a staging file and junk are never blobs.
    let root = td.path().join("store/default");
    write(&root.join("tmp/deadbeef"), b"partial");
    let d = Digest::of(b"full content");
    let h = d.hex();
    write(&root.join(format!("blobs/sha256/{}/{}#1", &h[..2], h)), b"full");
    write(&root.join(format!("blobs/sha256/{}/{}.tmp", &h[..2], h)), b"full");
    write(&root.join(format!("blobs/sha256/zz/{}", h)), b"full content");
    assert!(s.list_blobs().await.unwrap().is_empty());
    assert!(matches!(s.get_bytes(&d, None).await, Err(StoreError::NotFound(_))));
    // gc removes the stale temp.
    let rep =
        s.gc(&GcPolicy { grace: std::time::Duration::ZERO, ..Default::default() }, false).await.unwrap();
    assert_eq!(rep.deleted_temp, 1);
    assert!(!root.join("tmp/deadbeef").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_blob_is_refused_and_quarantined() {
    let (td, s) = new_store();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    s.set_event_hook(move |e| seen2.lock().unwrap().push(e.clone()));
    let o = s.put_bytes(&b"precious bytes"[..]).await.unwrap();
    std::fs::write(blob_file(&td, "default", &o.digest), b"evil!! bytes!!").unwrap();
    match s.get_bytes(&o.digest, None).await {
        Err(StoreError::Corrupt { digest, .. }) => assert_eq!(digest, o.digest),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let ev = s.events();
    assert!(matches!(&ev[..], [StoreEvent::Quarantined { digest, .. }] if *digest == o.digest));
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Moved away: now simply absent, and a fresh put heals it.
    assert!(matches!(s.get_bytes(&o.digest, None).await, Err(StoreError::NotFound(_))));
    assert!(td.path().join("store/default/quarantine/sha256").join(o.digest.hex()).exists());
    assert!(s.put_bytes(&b"precious bytes"[..]).await.unwrap().new);
    assert_eq!(&s.get_bytes(&o.digest, None).await.unwrap()[..], b"precious bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_are_separate() {
    let (_td, s) = new_store();
    let a = s.tenant("acme").unwrap();
    let b = s.tenant("globex").unwrap();
    let o = a.put_bytes(&b"x"[..]).await.unwrap();
    assert!(a.get_bytes(&o.digest, None).await.is_ok());
    assert!(matches!(b.get_bytes(&o.digest, None).await, Err(StoreError::NotFound(_))));
    assert!(s.tenant("../x").is_err());
    assert!(s.tenant("a/b").is_err());
    assert!(s.tenant("").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_url_backend_works() {
    let s = Store::open_url("memory:///").unwrap();
    let o = s.put_bytes(&b"in memory"[..]).await.unwrap();
    assert!(!s.put_bytes(&b"in memory"[..]).await.unwrap().new);
    assert_eq!(&s.get_bytes(&o.digest, None).await.unwrap()[..], b"in memory");
    let big = vec![3u8; SMALL_BLOB + 1];
    let o = s.put_reader(&big[..]).await.unwrap();
    assert_eq!(s.get_bytes(&o.digest, None).await.unwrap().len(), big.len());
    assert!(Store::open_url("nope://x").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn file_url_backend_works() {
    let td = tempfile::tempdir().unwrap();
    let url = format!("file://{}", td.path().join("s").display());
    let s = Store::open_url(&url).unwrap();
    let o = s.put_bytes(&b"f"[..]).await.unwrap();
    assert!(td.path().join("s/default/blobs/sha256").join(&o.digest.hex()[..2]).exists());
    let _ = std::fs::metadata(td.path()).unwrap().permissions().mode();
}

/// A local store reads blob files itself, in large chunks: a blob of many
/// chunks comes back whole, and a byte changed in a middle chunk is still
/// caught at the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_blob_of_many_chunks_reads_back_whole_and_verified() {
    let (td, s) = new_store();
    let data: Vec<u8> = (0..(3 << 20) + 12345).map(|i| (i * 7 % 253) as u8).collect();
    let o = s.put_reader(&data[..]).await.unwrap();
    assert_eq!(&s.get_bytes(&o.digest, Some(data.len() as u64)).await.unwrap()[..], &data[..]);
    let file = blob_file(&td, "default", &o.digest);
    let mut bad = std::fs::read(&file).unwrap();
    bad[(3 << 20) / 2] ^= 1;
    std::fs::write(&file, bad).unwrap();
    assert!(matches!(s.get_bytes(&o.digest, None).await, Err(StoreError::Corrupt { .. })));
}

/// A blob file replaced by a symbolic link is not followed, even to a file
/// holding the right bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_file_replaced_by_a_link_is_not_followed() {
    let (td, s) = new_store();
    let o = s.put_bytes(&b"linked bytes"[..]).await.unwrap();
    let file = blob_file(&td, "default", &o.digest);
    let elsewhere = td.path().join("elsewhere");
    std::fs::write(&elsewhere, b"linked bytes").unwrap();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
    assert!(s.get_bytes(&o.digest, None).await.is_err(), "the link was followed");
}
