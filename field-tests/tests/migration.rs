//! A tablet's address changes in the middle of a photo upload (a carrier-grade NAT drops its
//! mapping, or the ambulance moves to another cell): QUIC's connection migration must carry
//! the connection over, so that the upload goes on where it was and nothing already sent is
//! sent again. Figures go into `target/field-results/nat-rebinding.json`.
//!
//! "Sent again" is measured twice: on the wire (what the link carried beyond a steady upload of
//! the same photos) and as photo chunks, counted by the ambulance's own metrics
//! (`outpost_photo_chunks_total{event="sent"}`) against the chunks the photos are made of.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use field_tests::{Field, Link, free_addr, has_receipt, photo_file, sample, scrape};
use serde_json::json;
use sync_protocol::blob;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-field-node");
const PHOTO_BYTES: usize = 2_000_000;
const LIMIT: Duration = Duration::from_secs(180);

/// Attaches three photos to a new session on the ambulance and waits until the hub holds each
/// whole; `during` runs once the first photo is on its way. Returns the link's bytes both ways
/// for the upload, the photos' bytes, the seconds it took and the chunks the photos are made of.
fn upload(f: &Field, amb: &Path, hub: &Path, link: &Link, round: u64, during: impl FnOnce()) -> (u64, u64, f64, u64) {
    let id = f.new_session(amb, "dermatology", "ambulance_on_scene", "Spreading rash, left forearm");
    let files: Vec<_> = (0..3)
        .map(|i| {
            let p = f.dir.join(format!("photo-{round}-{i}.jpg"));
            let size = photo_file(&p, f.seed + 10 * round + i, PHOTO_BYTES);
            (p, size)
        })
        .collect();
    let before = link.wire_bytes();
    let t0 = Instant::now();
    let mut hashes = Vec::new();
    let mut during = Some(during);
    for ((file, _), view) in files.iter().zip(["site", "close-up", "dermoscopic"]) {
        hashes.push(f.photo(amb, &id, file, view));
        if let Some(d) = during.take() {
            d();
        }
    }
    f.wait(LIMIT, Duration::from_millis(200), &format!("round {round}: every photo whole at the hub"), || {
        f.export(hub, &id).is_some_and(|v| {
            let media = v["media"].as_array().cloned().unwrap_or_default();
            hashes.iter().all(|h| media.iter().any(|m| m["hash"] == h.as_str() && has_receipt(m, "hub", "hub-qhm")))
        })
    });
    let secs = t0.elapsed().as_secs_f64();
    let chunks = files.iter().map(|(_, b)| blob::chunk_count(*b, blob::CHUNK_SIZE)).sum();
    (link.wire_bytes() - before, files.iter().map(|(_, b)| b).sum(), secs, chunks)
}

/// Photo chunks the daemon whose metrics are at `addr` has sent so far. A scrape reads the
/// store at most once a second, so this waits that long first: the figure is then current.
fn chunks_sent(f: &Field, addr: &str) -> u64 {
    std::thread::sleep(Duration::from_millis(1_100));
    let text = scrape(addr).unwrap_or_else(|| f.fail(format!("no metrics at {addr}")));
    sample(&text, "outpost_photo_chunks_total{event=\"sent\"}").map_or(0, |v| v as u64)
}

/// How many connections the ambulance's daemon made to the hub so far.
fn connections(log: &str) -> usize {
    log.lines().filter(|l| l.contains(" connected") && l.contains("peer=hub-qhm")).count()
}

#[test]
fn a_nat_rebinding_mid_upload_keeps_the_connection_and_sends_nothing_twice() {
    let mut f = Field::new(BIN, "nat-rebinding");
    let hub = f.node("hub-qhm", "hub", &[]);
    let amb = f.node("amb-07", "edge", &["--org", "RX6"]);
    let hub_addr = free_addr();
    let hubd = f.daemon(&hub, &["--listen", &hub_addr]);
    f.wait(Duration::from_secs(60), Duration::from_millis(100), "the hub to listen", || {
        hubd.log_text().contains("outpost daemon started")
    });
    let link = Link::start("urban-4g", &hub_addr, f.seed);
    let amb_metrics = free_addr();
    let ambd = f.daemon(&amb, &["--peer", &link.addr, "--metrics", &amb_metrics]);
    f.wait(Duration::from_secs(60), Duration::from_millis(100), "the ambulance to connect", || {
        connections(&ambd.log_text()) == 1
    });
    // The same upload three times: once to bring the connection's window up to the link (not
    // counted), then on a steady address, then with the address changed while the photos are
    // on their way.
    upload(&f, &amb, &hub, &link, 0, || {});
    let sent0 = chunks_sent(&f, &amb_metrics);
    let (steady, payload_a, steady_s, chunks_a) = upload(&f, &amb, &hub, &link, 1, || {});
    let sent1 = chunks_sent(&f, &amb_metrics);
    let mappings = link.stats().mappings;
    let (rebound, payload_b, rebound_s, chunks_b) = upload(&f, &amb, &hub, &link, 2, || {
        std::thread::sleep(Duration::from_millis(800));
        link.rebind();
    });
    let sent2 = chunks_sent(&f, &amb_metrics);
    let stats = link.stats();
    let log = ambd.log_text();
    let summary = json!({
        "profile": "urban-4g",
        "seed": f.seed,
        "steady": { "payload_bytes": payload_a, "wire_bytes": steady, "wire_over_payload": steady as f64 / payload_a as f64, "seconds": steady_s, "chunks": chunks_a, "chunks_sent": sent1 - sent0 },
        "rebound": { "payload_bytes": payload_b, "wire_bytes": rebound, "wire_over_payload": rebound as f64 / payload_b as f64, "seconds": rebound_s, "chunks": chunks_b, "chunks_sent": sent2 - sent1 },
        "extra_bytes": rebound as i64 - steady as i64 - (payload_b as i64 - payload_a as i64),
        "outside_addresses": stats.mappings,
        "connections": connections(&log),
    });
    eprintln!("{summary}");
    f.record(&summary);
    assert_eq!(stats.mappings, mappings + 1, "the emulator gave the tablet a new outside address mid-upload");
    // One connection throughout: migrated, not dropped and dialled again (a new conversation
    // would offer the photos again and resend what the hub had not acknowledged).
    assert_eq!(connections(&log), 1, "the ambulance dialled again instead of migrating:\n{log}");
    assert!(!log.contains("link down"), "the link was reported down:\n{log}");
    let hub_log = hubd.log_text();
    assert_eq!(
        hub_log.lines().filter(|l| l.contains(" connected") && l.contains("peer=amb-07")).count(),
        1,
        "the hub saw one connection from the ambulance:\n{hub_log}"
    );
    // Every chunk went once: the ambulance sent the photos' chunks and no more, steady or moved
    // (the bound is one chunk).
    assert!(sent0 > 0, "the warm-up's chunks were counted\n{summary}");
    assert_eq!(sent1 - sent0, chunks_a, "the steady upload sent each chunk once\n{summary}");
    assert!(sent2 - sent1 >= chunks_b, "the moved upload's chunks were all counted\n{summary}");
    assert!(
        sent2 - sent1 <= chunks_b + 1,
        "the rebinding made the ambulance send {} chunks twice\n{summary}",
        sent2 - sent1 - chunks_b
    );
    // What the move cost on the wire: at most one 16 KiB chunk (and the path's validation)
    // beyond what the same upload cost on a steady address, give or take the link's own
    // random loss (0.2% of the photos' bytes, retransmitted either way).
    let allowance = 16 * 1024 + payload_b / 100;
    let extra = rebound.saturating_sub(steady + payload_b.saturating_sub(payload_a));
    assert!(
        extra <= allowance,
        "the rebinding cost {extra} bytes more than a steady upload (allowed {allowance})\n{summary}"
    );
}
