//! Store/restore throughput vs `tar -cf - DIR | sha256sum`, plus dedup ratio.
//!
//! Env: `KILN_BENCH_FILES` (default 5000), `KILN_BENCH_TREE_MB` (60),
//! `KILN_BENCH_LARGE_MB` (512), `KILN_BENCH_DIR` (temp dir parent).

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_store::{RestoreLimits, Store};

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// node_modules-like tree; files whose index is in `changed` get different content.
fn make_tree(dir: &Path, files: u64, total: u64, changed: impl Fn(u64) -> bool) -> u64 {
    let avg = total / files;
    let mut sizes = Rng(42);
    let mut bytes = 0;
    for i in 0..files {
        let pkg = i % 400;
        let sub = (i / 400) % 4;
        let p = dir.join(format!("node_modules/pkg-{pkg}/lib/sub{sub}/file-{i}.js"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let size = (sizes.next() % (2 * avg)) as usize;
        let mut data = vec![0u8; size];
        Rng(i + 1 + if changed(i) { 1 << 40 } else { 0 }).fill(&mut data);
        std::fs::write(&p, &data).unwrap();
        bytes += size as u64;
    }
    bytes
}

/// `tar -cf - DIR | sha256sum`: reading and hashing the tree, what storing it
/// must at least do.
fn tar_hash(dir: &Path) -> Duration {
    sh(&format!("tar -cf - -C '{}' . | sha256sum > /dev/null", dir.display()))
}

/// `tar -xf` of the tree's archive into a fresh directory: creating the
/// tree's files, what restoring it must at least do. The archive is made
/// once, untimed.
fn tar_extract(archive: &Path, into: &Path) -> Duration {
    let d = sh(&format!("mkdir '{0}' && tar -xf '{1}' -C '{0}'", into.display(), archive.display()));
    std::fs::remove_dir_all(into).unwrap();
    d
}

fn sh(script: &str) -> Duration {
    let t = Instant::now();
    let st = std::process::Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "{script}");
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// One operation measured against its baseline, `rounds` times each,
/// alternating, so machine noise falls on both alike: the medians.
fn compare(
    rounds: u64,
    mut kiln: impl FnMut() -> Duration,
    mut base: impl FnMut() -> Duration,
) -> (Duration, Duration) {
    let (mut k, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        k.push(kiln());
        b.push(base());
    }
    (median(k), median(b))
}

/// Restores `tree` into `out` (then removed): how long the restore took.
fn timed_restore(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    tree: &kiln_store::TreeDigest,
    out: &Path,
    lim: &RestoreLimits,
) -> Duration {
    let t = Instant::now();
    rt.block_on(store.restore_tree(tree, out, lim)).unwrap();
    let d = t.elapsed();
    std::fs::remove_dir_all(out).unwrap();
    d
}

struct Row {
    name: String,
    bytes: u64,
    kiln: Duration,
    baseline: &'static str,
    base: Duration,
}

fn main() {
    let files = env_u64("KILN_BENCH_FILES", 5000);
    let tree_mb = env_u64("KILN_BENCH_TREE_MB", 60);
    let large_mb = env_u64("KILN_BENCH_LARGE_MB", 512);
    let rounds = env_u64("KILN_BENCH_ROUNDS", 3).max(1);
    let base = std::env::var("KILN_BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let td = tempfile::tempdir_in(base).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let lim = RestoreLimits::default();
    let mut rows = Vec::new();
    let n = std::cell::Cell::new(0);
    let fresh = |what: &str| {
        n.set(n.get() + 1);
        td.path().join(format!("{what}-{}", n.get()))
    };
    const STORE_BASE: &str = "`tar -cf - DIR | sha256sum`";
    const RESTORE_BASE: &str = "`tar -xf` of the same tree";

    // Small-file tree: stored into a fresh store each round (and once
    // more, all deduplicated), restored into a fresh directory each round.
    let tree = td.path().join("tree");
    let bytes = make_tree(&tree, files, tree_mb << 20, |_| false);
    let archive = td.path().join("tree.tar");
    sh(&format!("tar -cf '{}' -C '{}' .", archive.display(), tree.display()));
    let label = format!("{files} files, {:.0} MiB", bytes as f64 / (1 << 20) as f64);
    let stores: std::cell::RefCell<Vec<Store>> = Default::default();
    let (k, b) = compare(
        rounds,
        || {
            let store = Store::open_local(fresh("store")).unwrap();
            let t = Instant::now();
            rt.block_on(store.put_tree(&tree)).unwrap();
            let d = t.elapsed();
            stores.borrow_mut().push(store);
            d
        },
        || tar_hash(&tree),
    );
    rows.push(Row { name: format!("store tree ({label})"), bytes, kiln: k, baseline: STORE_BASE, base: b });
    let store = stores.borrow()[0].clone();
    let id = rt.block_on(store.put_tree(&tree)).unwrap();
    let (k, b) = compare(
        rounds,
        || {
            let t = Instant::now();
            let again = rt.block_on(store.put_tree_stats(&tree)).unwrap();
            assert_eq!(again.new_blobs, 0);
            t.elapsed()
        },
        || tar_hash(&tree),
    );
    rows.push(Row {
        name: format!("store it again, all deduplicated ({label})"),
        bytes,
        kiln: k,
        baseline: STORE_BASE,
        base: b,
    });
    let (k, b) = compare(
        rounds,
        || timed_restore(&rt, &store, &id, &fresh("out"), &lim),
        || tar_extract(&archive, &fresh("tar-out")),
    );
    rows.push(Row {
        name: format!("restore tree ({label})"),
        bytes,
        kiln: k,
        baseline: RESTORE_BASE,
        base: b,
    });

    // Dedup: second build shares 90% of files.
    let tree_b = td.path().join("tree_b");
    make_tree(&tree_b, files, tree_mb << 20, |i| i % 10 == 0);
    let sb = rt.block_on(store.put_tree_stats(&tree_b)).unwrap();
    let dedup_ratio = (bytes + sb.bytes) as f64 / (bytes + sb.new_bytes) as f64;
    std::fs::remove_dir_all(&tree_b).unwrap();
    drop(stores);

    // Large file.
    let big = td.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(big.join("blob.bin")).unwrap());
        let mut r = Rng(7);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..large_mb {
            r.fill(&mut chunk);
            f.write_all(&chunk).unwrap();
        }
    }
    let lbytes = large_mb << 20;
    let big_archive = td.path().join("big.tar");
    sh(&format!("tar -cf '{}' -C '{}' .", big_archive.display(), big.display()));
    let store2 = Store::open_local(td.path().join("store-big")).unwrap();
    let lid = rt.block_on(store2.put_tree(&big)).unwrap();
    let (k, b) = compare(
        rounds,
        || {
            let store = Store::open_local(fresh("store-big")).unwrap();
            let t = Instant::now();
            rt.block_on(store.put_tree(&big)).unwrap();
            let d = t.elapsed();
            drop(store);
            d
        },
        || tar_hash(&big),
    );
    rows.push(Row {
        name: format!("store 1 file ({large_mb} MiB)"),
        bytes: lbytes,
        kiln: k,
        baseline: STORE_BASE,
        base: b,
    });
    let (k, b) = compare(
        rounds,
        || timed_restore(&rt, &store2, &lid, &fresh("big-out"), &lim),
        || tar_extract(&big_archive, &fresh("big-tar-out")),
    );
    rows.push(Row {
        name: format!("restore 1 file ({large_mb} MiB)"),
        bytes: lbytes,
        kiln: k,
        baseline: RESTORE_BASE,
        base: b,
    });

    println!("Medians of {rounds} rounds, kiln and its baseline alternating.\n");
    println!("| operation | kiln-store | MiB/s | baseline | baseline time | ratio (kiln/baseline) |");
    println!("|---|---:|---:|---|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.2} s | {:.0} | {} | {:.2} s | {:.2}x |",
            r.name,
            r.kiln.as_secs_f64(),
            mbps(r.bytes, r.kiln),
            r.baseline,
            r.base.as_secs_f64(),
            r.kiln.as_secs_f64() / r.base.as_secs_f64()
        );
    }
    println!(
        "| dedup: 2nd build sharing 90% of files | stored {:.1} MiB new of {:.1} MiB | | | | dedup ratio {:.2}x |",
        sb.new_bytes as f64 / (1 << 20) as f64,
        sb.bytes as f64 / (1 << 20) as f64,
        dedup_ratio
    );
}
