//! The store on object storage, against real servers on loopback: moto's
//! S3-compatible server (PyPI) and Microsoft's Azurite (npm), both installed
//! by `scripts/test-deps.sh`. The same checks run on each: verified reads,
//! conditional (dedup) writes, trees and large blobs, a blob changed behind
//! kiln's back, and `kiln run --store URL` keeping artifacts and the
//! dependency cache there.

mod common;

use common::objstore::Backend;
use common::*;
use kiln_store::{Digest, StoreError};
use object_store::ObjectStoreExt;

/// What the store promises, on one backend.
async fn contract(b: &Backend) {
    let s = b.store().tenant("t1").unwrap();
    let name = b.name;
    // Writes are content-addressed and conditional: the second is a dedup.
    let a = s.put_bytes(&b"hello object storage"[..]).await.unwrap();
    assert!(a.new, "{name}");
    let again = s.put_bytes(&b"hello object storage"[..]).await.unwrap();
    assert!(!again.new, "{name}: the second write of the same bytes must find the first");
    assert_eq!(&s.get_bytes(&a.digest, Some(20)).await.unwrap()[..], b"hello object storage");
    assert!(matches!(s.get_bytes(&a.digest, Some(21)).await, Err(StoreError::SizeMismatch { .. })), "{name}");
    assert!(
        matches!(s.get_bytes(&Digest::of(b"absent"), None).await, Err(StoreError::NotFound(_))),
        "{name}"
    );

    // A large blob goes up in parts and comes back whole.
    let big: Vec<u8> = (0..12 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let o = s.put_reader(&big[..]).await.unwrap_or_else(|e| panic!("{name}: large put: {e}"));
    assert_eq!(o.digest, Digest::of(&big));
    assert_eq!(s.get_bytes(&o.digest, Some(big.len() as u64)).await.unwrap().len(), big.len());

    // A tree round trips, byte for byte, with its modes.
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("a/b")).unwrap();
    std::fs::write(src.path().join("a/b/c.txt"), "deep").unwrap();
    std::fs::write(src.path().join("top.sh"), "#!/bin/sh\necho hi\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.path().join("top.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tree = s.put_tree(src.path()).await.unwrap();
    let dst = tempfile::tempdir().unwrap();
    let out = dst.path().join("out");
    s.restore_tree(&tree, &out, &Default::default()).await.unwrap_or_else(|e| panic!("{name}: restore: {e}"));
    assert_eq!(std::fs::read_to_string(out.join("a/b/c.txt")).unwrap(), "deep");
    let mode = std::fs::metadata(out.join("top.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "{name}: the executable bit is kept");

    // A blob changed in the bucket behind kiln's back is refused on read.
    let path = s.blob_path(&a.digest);
    s.backend().put(&path, object_store::PutPayload::from_static(b"hello object storagE")).await.unwrap();
    match s.get_bytes(&a.digest, None).await {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("{name}: a tampered blob must be refused, got {other:?}"),
    }

    // Tenants do not see each other's blobs.
    let other = b.store().tenant("t2").unwrap();
    assert!(matches!(other.get_bytes(&o.digest, None).await, Err(StoreError::NotFound(_))), "{name}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_keeps_its_promises_on_s3() {
    contract(&Backend::s3()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_keeps_its_promises_on_azure() {
    contract(&Backend::azure()).await;
}

const WORKFLOW: &str = r#"
jobs:
  build:
    steps:
      - uses: actions/cache@v4
        id: deps
        with:
          path: deps
          key: deps-v1
      - run: |
          if [ "${{ steps.deps.outputs.cache-hit }}" = "true" ]; then echo "restored: $(cat deps/lib.txt)"; else mkdir -p deps && echo fetched > deps/lib.txt; fi
          mkdir -p dist && echo "site" > dist/index.html
      - uses: actions/upload-artifact@v4
        with:
          name: site
          path: dist
"#;

/// `kiln run --store URL`: the build's artifacts and its dependency cache
/// live in the bucket; a second build restores the cache from it and the
/// artifact comes back from it, verified.
fn run_with_store(b: &Backend) {
    let p = Project::new(WORKFLOW);
    let run = |p: &Project| {
        let mut cmd = p.kiln();
        cmd.args(["run", "ci.yml", "--json", "--isolation", "container", "--store", &b.url]);
        for (k, v) in &b.env {
            cmd.env(k, v);
        }
        Run::parse(cmd.output().unwrap())
    };
    let first = run(&p);
    assert_eq!(first.code, 0, "{}: {}\n{}", b.name, first.stdout, first.stderr);
    let second = run(&p);
    assert_eq!(second.code, 0, "{}: {}\n{}", b.name, second.stdout, second.stderr);
    assert!(
        second.stdout.contains("restored: fetched"),
        "{}: the cache is restored from the bucket: {}",
        b.name,
        second.stdout
    );
    // Nothing of the store is on the local disk: the bucket has it.
    let local = p.state_dir().join("store");
    assert!(!local.join("default/blobs").exists(), "{}: blobs were written locally", b.name);
    let build = second.summary["build"].as_str().unwrap().to_string();
    let row = p.first_json_row(&["artifacts", &build, "--json"]);
    let id = row["id"].as_str().expect("an artifact id").to_string();
    let mut get = p.kiln();
    get.args(["artifact", "get", &id, "--store", &b.url, "--out"]).arg(p.path().join("got"));
    for (k, v) in &b.env {
        get.env(k, v);
    }
    let out = get.output().unwrap();
    assert!(out.status.success(), "{}: {}", b.name, String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(p.path().join("got/index.html")).unwrap();
    assert_eq!(page, "site\n", "{}", b.name);
}

#[test]
fn kiln_run_keeps_artifacts_and_cache_in_s3() {
    run_with_store(&Backend::s3());
}

#[test]
fn kiln_run_keeps_artifacts_and_cache_in_azure() {
    run_with_store(&Backend::azure());
}
