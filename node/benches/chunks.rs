//! Photo chunk storage benchmark: `cargo bench -p outpost-node --bench chunks`
//!
//! Receives photos (3 MB each, `BENCH_PHOTOS` of them, default 8) into a real node's store the
//! way the sync engine does: each 16 KiB chunk verified against the manifest, sealed, and made
//! durable before the next request goes out. The baseline, in the same run, is the store's
//! earlier path: one fsynced transaction per chunk. Then the batches one received flight
//! brings (the engine stores a batch's chunks in one transaction): 3 chunks (the engine's
//! window), 16 and 64.
//!
//! Target (issue 13): chunks stored at >= 50 MB/s on this machine.

use std::time::Instant;

use outpost_node::config::NodeDir;
use outpost_node::node::{InitParams, Node};
use sync_protocol::blob;
use sync_protocol::vocab::Role;
use sync_protocol::wire::Hash;

fn photo(seed: u64, size: usize) -> Vec<u8> {
    // Incompressible bytes, like a JPEG's.
    let mut x = seed.wrapping_mul(2).wrapping_add(1);
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Stores `photos` chunk by chunk in batches of `batch`; returns MB/s.
fn run(node: &mut Node, photos: &[Vec<u8>], batch: usize) -> f64 {
    let sender = sync_protocol::scope::PeerInfo {
        name: "amb-07".into(),
        role: Role::Edge,
        org: None,
        icb: Some("QHM".into()),
        lines: vec![],
    };
    let started = Instant::now();
    let mut bytes = 0usize;
    for data in photos {
        let m = blob::manifest(data, blob::CHUNK_SIZE).expect("manifest");
        node.raw_store().blobs_mut().store_manifest(&m, 1_790_000_000_000).expect("manifest stored");
        let chunks: Vec<(Hash, u32, Vec<u8>)> =
            data.chunks(blob::CHUNK_SIZE as usize).enumerate().map(|(i, c)| (m.hash, i as u32, c.to_vec())).collect();
        let mut whole = Vec::new();
        for group in chunks.chunks(batch) {
            for (_, i, c) in group {
                blob::verify_chunk(&m, *i, c).expect("chunk verifies");
            }
            whole.extend(node.raw_store().blobs_mut().store_chunks(&sender, group).expect("chunks stored"));
            bytes += group.iter().map(|(_, _, c)| c.len()).sum::<usize>();
        }
        assert_eq!(whole, vec![m.hash], "the photo is whole once, after its last chunk");
    }
    bytes as f64 / 1e6 / started.elapsed().as_secs_f64()
}

fn main() {
    let n: u64 = std::env::var("BENCH_PHOTOS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let tmp = tempfile::Builder::new().prefix("outpost-chunks-bench-").tempdir().expect("tempdir");
    println!(
        "\noutpost photo chunk storage: {n} photos of 3 MB in 16 KiB chunks, sealed, fsynced (SQLite WAL, synchronous=FULL)\n"
    );
    println!("| path | chunks per transaction | MB/s | ratio to one per chunk | target |");
    println!("|---|---|---|---|---|");
    let mut base = 0.0;
    for (label, batch) in [
        ("one transaction per chunk (earlier path)", 1usize),
        ("one received flight", 3),
        ("one received flight", 16),
        ("one received flight", 64),
    ] {
        // A fresh node per row, so no row reads another's pages from the cache.
        let dir = NodeDir::new(tmp.path().join(format!("node-{batch}")));
        let params =
            InitParams { name: "hub-qhm".into(), role: Role::Hub, org: None, icb: Some("QHM".into()), lines: vec![] };
        Node::init(&dir, &params, 1_790_000_000_000).expect("init");
        let mut node = Node::open(&dir).expect("open");
        let photos: Vec<Vec<u8>> = (0..n).map(|i| photo(batch as u64 * 1000 + i, 3_000_000)).collect();
        let rate = run(&mut node, &photos, batch);
        if batch == 1 {
            base = rate;
        }
        let target = if batch == 1 {
            String::new()
        } else if rate >= 50.0 {
            ">= 50 MB/s: met".into()
        } else {
            ">= 50 MB/s: NOT MET".into()
        };
        println!("| {label} | {batch} | {rate:.1} | {:.2} | {target} |", rate / base.max(1e-9));
    }
}
