//! What an ICB's IT team watches: an ambulance that worked offline drains its backlog to the
//! hub over an emulated rural link while Prometheus-style scrapes of both daemons' `/metrics`
//! follow it down to zero. Both daemons take their settings from `outpost.toml` and
//! `OUTPOST_*` variables (no flags), and the hub logs JSON. The series goes into
//! `target/field-results/metrics-drain.json`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use field_tests::{Field, Link, free_addr, photo_file, s, sample, scrape};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-field-node");

#[test]
fn metrics_follow_an_ambulances_backlog_down_to_zero_as_it_drains_over_a_rural_link() {
    let mut f = Field::new(BIN, "metrics-drain");
    let hub = f.node("hub-qhm", "hub", &[]);
    let amb = f.node("amb-07", "edge", &["--org", "RX6"]);

    // The shift so far, offline: three sessions, a message each, two photos.
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = f.new_session(&amb, "dermatology", "ambulance_on_scene", &format!("Rash, patient {i}"));
        f.message(&amb, &id, "Photos follow");
        ids.push(id);
    }
    for i in 0..2u64 {
        let p = f.dir.join(format!("photo-{i}.jpg"));
        photo_file(&p, f.seed + i, 600_000);
        f.photo(&amb, &ids[i as usize], &p, "close-up");
    }

    // The hub from its file, logging JSON; the ambulance from the environment.
    let hub_addr = free_addr();
    let hub_metrics = free_addr();
    std::fs::write(
        hub.join("outpost.toml"),
        format!("listen = \"{hub_addr}\"\n[metrics]\nlisten = \"{hub_metrics}\"\n[log]\nformat = \"json\"\n"),
    )
    .unwrap();
    let shown = f.ok(&["config", "show", "--dir", s(&hub)]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("metrics.listen") && l.contains(&hub_metrics) && l.contains("outpost.toml")),
        "config show names the file as the source:\n{shown}"
    );
    let hubd = f.daemon_env(&hub, &[], &[("OUTPOST_LOG", "")]);
    f.wait(Duration::from_secs(60), Duration::from_millis(100), "the hub's metrics", || scrape(&hub_metrics).is_some());

    let link = Link::start("rural-a-road", &hub_addr, f.seed);
    let amb_metrics = free_addr();
    let env = [("OUTPOST_PEERS", link.addr.as_str()), ("OUTPOST_METRICS_LISTEN", amb_metrics.as_str())];
    let shown = f.outpost_env(&["config", "show", "--dir", s(&amb)], &env);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.lines().any(|l| l.starts_with("peers") && l.contains("environment OUTPOST_PEERS")),
        "config show names the variable as the source:\n{shown}"
    );
    link.set_up(false);
    let _ambd = f.daemon_env(&amb, &[], &env);
    f.wait(Duration::from_secs(60), Duration::from_millis(100), "the ambulance's metrics", || {
        scrape(&amb_metrics).is_some()
    });
    let before = scrape(&amb_metrics).unwrap();
    let items0 = sample(&before, "outpost_backlog_items").unwrap();
    let bytes0 = sample(&before, "outpost_backlog_photo_bytes").unwrap();
    assert_eq!(items0, 5.0, "three messages and two photos wait to leave:\n{before}");
    assert!(bytes0 >= 1_000_000.0, "the photos' bytes wait too: {bytes0}");
    assert_eq!(sample(&before, "outpost_peers_connected"), Some(0.0));

    // The link comes up: scrape every half second until nothing is left.
    link.set_up(true);
    let t0 = Instant::now();
    let mut series = Vec::new();
    f.wait(Duration::from_secs(180), Duration::from_millis(500), "the backlog to drain to zero", || {
        let Some(text) = scrape(&amb_metrics) else { return false };
        let items = sample(&text, "outpost_backlog_items").unwrap_or(f64::NAN);
        let bytes = sample(&text, "outpost_backlog_photo_bytes").unwrap_or(f64::NAN);
        let wire = sample(&text, "outpost_wire_bytes_total{direction=\"sent\"}").unwrap_or(0.0);
        series.push((t0.elapsed().as_secs_f64(), items, bytes, wire));
        items == 0.0 && bytes == 0.0
    });
    for w in series.windows(2) {
        assert!(
            w[1].1 <= w[0].1 && w[1].2 <= w[0].2,
            "the backlog only falls while nothing new is written: {series:?}"
        );
        assert!(w[1].3 >= w[0].3, "bytes on the wire only grow: {series:?}");
    }
    let after = scrape(&amb_metrics).unwrap();
    assert!(sample(&after, "outpost_wire_bytes_total{direction=\"sent\"}").unwrap() > bytes0, "{after}");
    assert_eq!(sample(&after, "outpost_peers_connected"), Some(1.0));
    assert_eq!(sample(&after, "outpost_store_watched"), Some(1.0), "the daemon sleeps between writes:\n{after}");
    assert_eq!(sample(&after, "outpost_peer_connected{peer=\"hub-qhm\"}"), Some(1.0), "{after}");
    assert!(sample(&after, "outpost_peer_last_sync_timestamp_seconds{peer=\"hub-qhm\"}").is_some(), "{after}");
    assert!(
        sample(&after, "outpost_certificate_days_left").is_some_and(|d| d > 300.0),
        "a fresh certificate has about a year left:\n{after}"
    );
    assert!(sample(&after, "outpost_store_bytes").is_some_and(|b| b > 1_000_000.0), "{after}");
    assert!(after.contains("outpost_sync_round_seconds_count{peer=\"hub-qhm\"}"), "{after}");
    let hub_text = scrape(&hub_metrics).unwrap();
    assert_eq!(sample(&hub_text, "outpost_peer_connected{peer=\"amb-07\"}"), Some(1.0), "{hub_text}");
    assert!(hub_text.contains("outpost_node{node=\"hub-qhm\",role=\"hub\"} 1"), "{hub_text}");
    // Health without a token on the same listener.
    let ready = ureq::get(&format!("http://{hub_metrics}/readyz")).call().unwrap();
    assert_eq!(ready.status(), 200);

    // The hub's log: every line one JSON object; lines about the ambulance name it as a field.
    let log = hubd.log_text();
    let mut about_amb = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| f.fail(format!("not a JSON log line ({e}): {line}")));
        assert!(v["level"].is_string() && v["timestamp"].is_string() && v["message"].is_string(), "{line}");
        if v["peer"] == "amb-07" {
            about_amb += 1;
        }
        assert!(!line.contains("Rating {") && !line.contains("Some("), "values written for people: {line}");
    }
    assert!(about_amb >= 1, "the hub's lines about the ambulance carry peer=amb-07:\n{log}");
    // Names and fixed words only: no case text in a scrape or a log line.
    for text in [&log, &after, &hub_text] {
        for clear in ["Rash, patient", "Photos follow", "9434765919"] {
            assert!(!text.contains(clear), "{clear:?} leaked into metrics or logs");
        }
    }

    let summary = json!({
        "profile": "rural-a-road",
        "seed": f.seed,
        "backlog_at_start": { "items": items0, "photo_bytes": bytes0 },
        "drained_s": series.last().map(|s| s.0),
        "series": series.iter().map(|(t, i, b, w)| json!({"t_s": t, "items": i, "photo_bytes": b, "wire_sent": w})).collect::<Vec<_>>(),
    });
    eprintln!("{summary}");
    f.record(&summary);
}
