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

fn baseline(dir: &Path) -> Duration {
    let t = Instant::now();
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("tar -cf - -C '{}' . | sha256sum > /dev/null", dir.display()))
        .status()
        .unwrap();
    assert!(st.success());
    t.elapsed()
}

fn drop_caches_hint() {
    // Not dropping page caches (needs root + affects others); all runs are warm-cache.
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let files = env_u64("KILN_BENCH_FILES", 5000);
    let tree_mb = env_u64("KILN_BENCH_TREE_MB", 60);
    let large_mb = env_u64("KILN_BENCH_LARGE_MB", 512);
    let base = std::env::var("KILN_BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let td = tempfile::tempdir_in(base).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    drop_caches_hint();

    let mut rows = Vec::new();
    let lim = RestoreLimits::default();

    // Small-file tree.
    let tree = td.path().join("tree");
    let bytes = make_tree(&tree, files, tree_mb << 20, |_| false);
    let base_t = baseline(&tree);
    let store = Store::open_local(td.path().join("store1")).unwrap();
    let t = Instant::now();
    let id = rt.block_on(store.put_tree(&tree)).unwrap();
    let put_t = t.elapsed();
    let t = Instant::now();
    let again = rt.block_on(store.put_tree_stats(&tree)).unwrap();
    let put2_t = t.elapsed();
    assert_eq!(again.new_blobs, 0);
    let t = Instant::now();
    rt.block_on(store.restore_tree(&id, td.path().join("out1"), &lim)).unwrap();
    let rest_t = t.elapsed();
    let label = format!("{files} files, {:.0} MiB", bytes as f64 / (1 << 20) as f64);
    rows.push((format!("store tree ({label})"), bytes, put_t, base_t));
    rows.push((format!("store tree again, all dedup ({label})"), bytes, put2_t, base_t));
    rows.push((format!("restore tree ({label})"), bytes, rest_t, base_t));

    // Dedup: second build shares 90% of files.
    let tree_b = td.path().join("tree_b");
    make_tree(&tree_b, files, tree_mb << 20, |i| i % 10 == 0);
    let sb = rt.block_on(store.put_tree_stats(&tree_b)).unwrap();
    let dedup_ratio = (bytes + sb.bytes) as f64 / (bytes + sb.new_bytes) as f64;
    std::fs::remove_dir_all(&tree_b).unwrap();
    std::fs::remove_dir_all(td.path().join("out1")).unwrap();

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
    let base_l = baseline(&big);
    let store2 = Store::open_local(td.path().join("store2")).unwrap();
    let t = Instant::now();
    let lid = rt.block_on(store2.put_tree(&big)).unwrap();
    let lput = t.elapsed();
    let t = Instant::now();
    rt.block_on(store2.restore_tree(&lid, td.path().join("out2"), &lim)).unwrap();
    let lrest = t.elapsed();
    rows.push((format!("store 1 file ({large_mb} MiB)"), lbytes, lput, base_l));
    rows.push((format!("restore 1 file ({large_mb} MiB)"), lbytes, lrest, base_l));

    println!("| operation | kiln-store | MiB/s | `tar -cf - DIR \\| sha256sum` | ratio (kiln/tar) |");
    println!("|---|---:|---:|---:|---:|");
    for (name, b, d, bl) in rows {
        println!(
            "| {name} | {:.2} s | {:.0} | {:.2} s | {:.2}x |",
            d.as_secs_f64(),
            mbps(b, d),
            bl.as_secs_f64(),
            d.as_secs_f64() / bl.as_secs_f64()
        );
    }
    println!(
        "| dedup: 2nd build sharing 90% of files | stored {:.1} MiB new of {:.1} MiB | | | dedup ratio {:.2}x |",
        sb.new_bytes as f64 / (1 << 20) as f64,
        sb.bytes as f64 / (1 << 20) as f64,
        dedup_ratio
    );
}
