//! The thundering herd: many edge processes, each with new sessions written while a mast was
//! down, reconnect to one hub at once when it comes back. Everything must reach the hub and
//! every edge must learn that it has; the time it takes and the hub's peak memory go into
//! `target/field-results/herd-N.json`.
//!
//! Fast tier: 20 edges. Full tier (`--include-ignored`, in release): 200 edges.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use field_tests::{Daemon, Field, Link, free_addr, s};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-field-node");

/// Runs `work(i)` for i in 0..n on a few threads.
fn parallel(n: usize, work: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    work(i);
                }
            });
        }
    });
}

fn herd(edges: usize) {
    let mut f = Field::new(BIN, &format!("herd-{edges}"));
    let ca = f.ca();
    let hub = f.node("hub-qhm", "hub", &[]);
    let hub_addr = free_addr();
    // The mast the edges reach the hub through is down.
    let link = Link::start("urban-4g", &hub_addr, f.seed);
    link.set_up(false);
    let hubd = f.daemon(&hub, &["--listen", &hub_addr]);
    f.wait(Duration::from_secs(60), Duration::from_millis(100), "the hub to listen", || {
        hubd.log_text().contains("outpost daemon started")
    });

    let dirs: Vec<PathBuf> = (0..edges).map(|i| f.dir.join(format!("edge-{i:03}"))).collect();
    let written: Mutex<Vec<(usize, String, String)>> = Mutex::new(Vec::new());
    let setup = Instant::now();
    parallel(edges, |i| {
        let d = &dirs[i];
        let name = format!("edge-{i:03}");
        f.ok(&[
            "init",
            "--dir",
            s(d),
            "--name",
            &name,
            "--role",
            "edge",
            "--icb",
            "QHM",
            "--org",
            &format!("B8{i:04}"),
        ]);
        f.ok(&["ca", "issue", "--ca", s(&ca), "--node", s(d)]);
    });
    let daemons: Vec<Daemon> = dirs.iter().map(|d| f.daemon(d, &["--peer", &link.addr])).collect();
    let outage = Instant::now();
    // Offline work on every edge while the mast is down.
    parallel(edges, |i| {
        let id = f.new_session(&dirs[i], "cardiology", "gp_urgent", &format!("palpitations, edge {i}"));
        let m = f.message(&dirs[i], &id, "ECG attached to the record; advice please");
        written.lock().unwrap().push((i, id, m));
    });
    let setup_s = setup.elapsed().as_secs_f64();
    let written = written.into_inner().unwrap();
    assert_eq!(written.len(), edges);
    assert!(f.session_ids(&hub).is_empty(), "nothing reached the hub through a dead mast");
    // The outage lasts at least 20 s: long enough for the edges' dial backoff to have grown.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(outage.elapsed()));
    let hub_rss_before = hubd.rss_kib().unwrap_or(0);
    let edge_rss: u64 = daemons.iter().filter_map(Daemon::rss_kib).sum();

    // The mast comes back: every edge's backoff ends within its 30 s cap, all close together.
    let t0 = Instant::now();
    link.set_up(true);
    let mut peak = 0u64;
    let to_hub =
        f.wait(Duration::from_secs(600), Duration::from_millis(500), "every edge's session at the hub", || {
            peak = peak.max(hubd.rss_kib().unwrap_or(0));
            f.session_ids(&hub).len() == edges
        });
    // Every message at the hub, and every edge told so (its receipt says "at hub").
    for (i, id, m) in &written {
        let v = f.export(&hub, id).unwrap_or_else(|| f.fail(format!("the hub lacks edge {i}'s session")));
        assert!(
            v["messages"].as_array().unwrap().iter().any(|x| x["id"] == m.as_str()),
            "the hub lacks edge {i}'s message"
        );
    }
    let acked = Mutex::new(0usize);
    parallel(edges, |k| {
        let (i, id, _) = &written[k];
        f.wait(
            Duration::from_secs(600),
            Duration::from_millis(500),
            &format!("edge {i} to learn its message is at the hub"),
            || f.export(&dirs[*i], id).is_some_and(|v| v["messages"][0]["receipt"] == "hub"),
        );
        *acked.lock().unwrap() += 1;
    });
    let all_acked = t0.elapsed();
    let hub_peak = hubd.peak_rss_kib().unwrap_or(0).max(peak);
    let connected = hubd.log_text().matches("connected peer=edge-").count();
    let summary = json!({
        "seed": f.seed,
        "edges": edges,
        "sessions": edges,
        "setup_s": setup_s,
        "all_at_hub_s": to_hub.as_secs_f64(),
        "all_edges_acknowledged_s": all_acked.as_secs_f64(),
        "hub_rss_before_mib": hub_rss_before as f64 / 1024.0,
        "hub_peak_rss_mib": hub_peak as f64 / 1024.0,
        "hub_peak_per_edge_kib": hub_peak.saturating_sub(hub_rss_before) as f64 / edges as f64,
        "edges_rss_total_mib": edge_rss as f64 / 1024.0,
        "connections_logged_at_hub": connected,
        "wire_bytes": link.wire_bytes(),
    });
    eprintln!("{summary}");
    f.record(&summary);
    assert_eq!(*acked.lock().unwrap(), edges);
    drop(daemons);
}

#[test]
fn twenty_edges_reconnecting_at_once_all_reach_the_hub() {
    herd(20);
}

#[test]
#[ignore = "full tier: cargo test --release -p field-tests -- --include-ignored"]
fn two_hundred_edges_reconnecting_at_once_all_reach_the_hub() {
    herd(200);
}
