//! Sync between real `outpost` processes over QUIC with mutual TLS on loopback.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::fleet::{Fleet, daemon, free_port, sync, texts, view, wait_until};
use common::{fails, ok, run};

const LIMIT: Duration = Duration::from_secs(30);

fn d(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

fn new_session(dir: &std::path::Path, line: &str, summary: &str) -> String {
    ok(&[
        "session",
        "new",
        "--dir",
        d(dir),
        "--service-line",
        line,
        "--care-setting",
        "gp_urgent",
        "--nhs-number",
        "9434765919",
        "--summary",
        summary,
    ])
    .trim()
    .to_string()
}

/// A hub daemon listening on loopback, and an edge of its fleet: the daemon (stopped when
/// dropped), the edge's directory and the hub's address.
fn hub_and_edge(root: &std::path::Path) -> (common::fleet::Daemon, std::path::PathBuf, String) {
    let fleet = Fleet::new(root);
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    (daemon(&hub, &["--listen", &addr], &[]), amb, addr)
}

#[test]
fn daemons_converge_after_concurrent_offline_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let (hub, amb, desk) = fleet.hub_amb_derm_desk();
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let id = new_session(&amb, "dermatology", "Pigmented lesion, left forearm");
    {
        let _hub = daemon(&hub, &["--listen", &addr], &[]);
        wait_until(LIMIT, "the hub to listen", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
        sync(&desk, &addr);
    }
    // Offline on both sides: the ambulance adds a message, the consultant replies.
    ok(&["message", "send", "--dir", d(&amb), &id, "written in a not-spot"]);
    ok(&["message", "send", "--dir", d(&desk), &id, "consultant, also offline"]);
    let _hub = daemon(&hub, &["--listen", &addr], &[]);
    let _amb = daemon(&amb, &["--peer", &addr], &[]);
    let _desk = daemon(&desk, &["--peer", &addr], &[]);
    let everyone_has_both = || {
        [&amb, &desk, &hub].iter().all(|n| {
            texts(n, &id).is_some_and(|t| {
                t.len() == 2
                    && t.contains(&"written in a not-spot".to_string())
                    && t.contains(&"consultant, also offline".to_string())
            })
        })
    };
    wait_until(LIMIT, "all three replicas to hold both messages", everyone_has_both);
    // And they agree on everything, including receipts: the ambulance's message reached the consultant.
    wait_until(LIMIT, "identical replicas", || {
        let (a, b, h) = (view(&amb, &id), view(&desk, &id), view(&hub, &id));
        a == b && b == h
    });
    let v = view(&amb, &id);
    let mine = v["messages"].as_array().unwrap().iter().find(|m| m["author"] == "amb-07").unwrap();
    assert_eq!(mine["receipt"], "desk", "{mine}");
    assert_eq!(v["status"], "responded");
}

#[test]
fn a_local_write_reaches_connected_peers_without_a_new_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let id = new_session(&amb, "cardiology", "Palpitations");
    let _hub = daemon(&hub, &["--listen", &addr], &[]);
    let _amb = daemon(&amb, &["--peer", &addr], &[]);
    wait_until(LIMIT, "the session to reach the hub", || texts(&hub, &id).is_some());
    // The CLI writes while the daemon runs: the daemon notices and pushes.
    ok(&["message", "send", "--dir", d(&amb), &id, "pushed by the running daemon"]);
    wait_until(LIMIT, "the message at the hub", || {
        texts(&hub, &id).is_some_and(|t| t == ["pushed by the running daemon"])
    });
    wait_until(LIMIT, "the hub's receipt back at the ambulance", || view(&amb, &id)["messages"][0]["receipt"] == "hub");
}

/// What a one-shot `outpost sync` receives is recorded under the account that ran it, as every
/// other command's entries are; what a daemon receives on its own names no one.
#[test]
fn the_entries_a_one_shot_sync_writes_for_what_it_receives_name_the_account_that_ran_it() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let (hub, amb, desk) = fleet.hub_amb_derm_desk();
    let addr = format!("127.0.0.1:{}", free_port());
    new_session(&amb, "dermatology", "Pigmented lesion, left forearm");
    let _hub = daemon(&hub, &["--listen", &addr], &[]);
    wait_until(LIMIT, "the hub to listen", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
    sync(&desk, &addr);
    let uid = common::my_uid();
    let received = |node: &std::path::Path| {
        let entries = common::json(&ok(&["audit", "show", "--dir", d(node), "--limit", "1000", "--json"]));
        entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "sync.receive")
            .cloned()
            .unwrap_or_else(|| panic!("no sync.receive at {}: {entries}", node.display()))
    };
    // The consultant's desk took the session in by `outpost sync`.
    let at_desk = received(&desk);
    assert_eq!(at_desk["detail"]["from"], "hub-qhm", "{at_desk}");
    assert_eq!(at_desk["detail"]["by"]["via"], "command line", "{at_desk}");
    assert_eq!(at_desk["detail"]["by"]["uid"].as_u64(), Some(uid), "{at_desk}");
    // The hub's daemon took it from the ambulance on its own.
    let at_hub = received(&hub);
    assert_eq!(at_hub["detail"]["from"], "amb-07", "{at_hub}");
    assert!(at_hub["detail"]["by"].is_null(), "a daemon's own work names no one: {at_hub}");
}

#[test]
fn a_node_of_another_fleet_is_refused_during_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let other = Fleet::new(&tmp.path().join("elsewhere"));
    let _ = std::fs::create_dir_all(tmp.path().join("elsewhere"));
    let intruder = other.node("amb-66", "edge", &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let hubd = daemon(&hub, &["--listen", &addr], &[]);
    new_session(&intruder, "dermatology", "should never arrive");
    wait_until(LIMIT, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    let err = fails(&["sync", "--dir", d(&intruder), "--peer", &addr, "--timeout", "10"], 6);
    assert!(err.contains("hub-qhm") || err.contains("certificate") || err.contains("refused"), "{err}");
    wait_until(LIMIT, "the hub to log the refusal", || hubd.log_text().contains("refused a connection"));
    let log = hubd.log_text();
    assert!(
        log.contains("UnknownIssuer") || log.contains("unknown issuer") || log.contains("invalid peer certificate"),
        "{log}"
    );
    let hub_list = ok(&["session", "list", "--dir", d(&hub), "--json"]);
    assert_eq!(hub_list.trim(), "[]", "the hub stored nothing");
}

#[test]
fn an_expired_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    ok(&["ca", "issue", "--ca", d(&fleet.ca), "--node", d(&amb), "--expired"]);
    let addr = format!("127.0.0.1:{}", free_port());
    let hubd = daemon(&hub, &["--listen", &addr], &[]);
    wait_until(LIMIT, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    fails(&["sync", "--dir", d(&amb), "--peer", &addr, "--timeout", "10"], 6);
    wait_until(LIMIT, "the hub to log the refusal", || hubd.log_text().contains("refused a connection"));
    assert!(hubd.log_text().to_lowercase().contains("expired"), "{}", hubd.log_text());
}

/// A consultant's desk answered cardiology and dermatology; its certificate was renewed for
/// cardiology alone (the renewal made from a copy of its directory: the same author key). Once
/// the hub has seen the renewed certificate, the old one is refused: presenting it would bring
/// dermatology's sessions back into the desk's scope.
#[test]
fn an_older_certificate_of_an_author_key_is_refused_once_a_newer_one_is_known() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let desk = fleet.node("desk-cardio-1", "desk", &["--service-line", "cardiology", "--service-line", "dermatology"]);
    let renewed = tmp.path().join("renewed");
    std::fs::create_dir(&renewed).unwrap();
    for entry in std::fs::read_dir(&desk).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), renewed.join(entry.file_name())).unwrap();
        }
    }
    let mut config: toml::Table = std::fs::read_to_string(renewed.join("node.toml")).unwrap().parse().unwrap();
    assert_eq!(config["lines"].as_array().map(Vec::len), Some(2), "{config}");
    config.insert("lines".into(), toml::Value::Array(vec!["cardiology".into()]));
    std::fs::write(renewed.join("node.toml"), toml::to_string(&config).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    ok(&["ca", "issue", "--ca", d(&fleet.ca), "--node", d(&renewed)]);

    let addr = format!("127.0.0.1:{}", free_port());
    let hubd = daemon(&hub, &["--listen", &addr], &[]);
    wait_until(LIMIT, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    sync(&desk, &addr);
    sync(&renewed, &addr);
    let err = fails(&["sync", "--dir", d(&desk), "--peer", &addr, "--timeout", "10"], 6);
    assert!(err.contains("superseded"), "{err}");
    wait_until(LIMIT, "the hub to log the refusal", || hubd.log_text().contains("certificate is superseded"));
    sync(&renewed, &addr);
}

#[test]
fn a_revoked_node_is_refused_and_dropped_if_connected() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let stolen = fleet.node("amb-13", "edge", &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let hubd = daemon(&hub, &["--listen", &addr], &[]);
    let id = new_session(&stolen, "dermatology", "before the tablet was stolen");
    wait_until(LIMIT, "a first sync", || run(&["sync", "--dir", d(&stolen), "--peer", &addr]).status.success());
    let _stolen_daemon = daemon(&stolen, &["--peer", &addr], &[]);
    wait_until(LIMIT, "the stolen tablet's daemon to connect", || {
        hubd.log_text().matches("connected peer=amb-13").count() >= 2
    });
    // The tablet is reported stolen: revoke it and publish the list to the running hub.
    ok(&["ca", "revoke", "--ca", d(&fleet.ca), "amb-13", "--publish", d(&hub)]);
    wait_until(LIMIT, "the hub to drop the revoked tablet", || hubd.log_text().contains("amb-13 has been revoked"));
    let err = fails(&["sync", "--dir", d(&stolen), "--peer", &addr, "--timeout", "10"], 6);
    assert!(!err.is_empty());
    ok(&["message", "send", "--dir", d(&stolen), &id, "after revocation"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(texts(&hub, &id).unwrap(), Vec::<String>::new(), "nothing from a revoked node");
    // Other nodes are unaffected, and learn the list from the hub.
    sync(&amb, &addr);
    let status = common::json(&ok(&["status", "--dir", d(&amb), "--json"]));
    assert_eq!(status["node"]["name"], "amb-07");
    let crl = rusqlite::Connection::open(amb.join("outpost.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM meta WHERE key = 'crl_der'", [], |r| r.get::<_, i64>(0))
        .unwrap();
    assert_eq!(crl, 1);
}

/// Another process's write (`outpost message send`) reaches a connected peer because the file
/// system told the daemon, not because a poll came round.
#[test]
fn a_write_by_another_process_is_pushed_when_the_file_system_tells_not_when_a_poll_comes_round() {
    use outpost_node::config::NodeDir;
    use outpost_node::net::{Daemon, RunOptions};
    use outpost_node::node::Node;

    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let id = new_session(&amb, "cardiology", "Palpitations");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let open = |p: &std::path::Path| Node::open(&NodeDir::new(p.to_path_buf())).unwrap();
    let listen = RunOptions { listen: Some("127.0.0.1:0".parse().unwrap()), ..RunOptions::default() };
    let hubd = rt.block_on(Daemon::start(open(&hub), listen)).unwrap();
    // The ambulance's daemon, connected to the hub, looks for other processes' writes on its
    // own only once an hour: only the file system's word can wake it in this test.
    let ambd = rt
        .block_on(Daemon::start(
            open(&amb),
            RunOptions {
                peers: vec![hubd.local_addr.unwrap().into()],
                local_write_recheck: Some(Duration::from_secs(3600)),
                ..RunOptions::default()
            },
        ))
        .unwrap();
    wait_until(LIMIT, "the session to reach the hub", || texts(&hub, &id).is_some());
    wait_until(LIMIT, "the file system to be telling the daemon of its store's changes", || ambd.store_watched());
    // `outpost message send` is another process writing the ambulance's store.
    ok(&["message", "send", "--dir", d(&amb), &id, "written beside the running daemon"]);
    wait_until(LIMIT, "the message at the hub", || {
        texts(&hub, &id).is_some_and(|t| t == ["written beside the running daemon"])
    });
    // And again, once the daemon has gone back to sleep.
    std::thread::sleep(Duration::from_millis(300));
    ok(&["message", "send", "--dir", d(&amb), &id, "and a second one"]);
    wait_until(LIMIT, "the second message at the hub", || texts(&hub, &id).is_some_and(|t| t.len() == 2));
    rt.block_on(ambd.stop());
    rt.block_on(hubd.stop());
}

/// A daemon keeps its dialling configuration, so a reconnect resumes the TLS session of the
/// dial before: no certificate chain is sent or checked again (less CPU on both sides). A revocation published to the hub still ends such a tablet's syncs.
#[test]
fn a_daemons_reconnect_resumes_its_tls_session_and_a_revoked_tablet_is_still_refused() {
    use outpost_node::config::NodeDir;
    use outpost_node::net::{Daemon, RunOptions};
    use outpost_node::node::Node;

    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-13", "edge", &[]);
    new_session(&amb, "dermatology", "before the tablet was stolen");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let open = |p: &std::path::Path| Node::open(&NodeDir::new(p.to_path_buf())).unwrap();
    let listen = RunOptions { listen: Some("127.0.0.1:0".parse().unwrap()), ..RunOptions::default() };
    let hubd = rt.block_on(Daemon::start(open(&hub), listen)).unwrap();
    let addr = hubd.local_addr.unwrap();
    let ambd = rt.block_on(Daemon::start(open(&amb), RunOptions::default())).unwrap();

    let first = rt.block_on(ambd.sync_with(addr, LIMIT)).unwrap();
    assert_eq!(first.stats.docs_sent, 1, "{first:?}");
    assert_eq!(ambd.chains_checked(), 1, "the first dial is a full handshake");
    for _ in 0..3 {
        rt.block_on(ambd.sync_with(addr, LIMIT)).unwrap();
    }
    assert_eq!(ambd.chains_checked(), 1, "reconnects resume the TLS session: no certificate chain checked again");

    ok(&["ca", "revoke", "--ca", d(&fleet.ca), "amb-13", "--publish", d(&hub)]);
    wait_until(LIMIT, "the hub to refuse the revoked tablet", || {
        rt.block_on(ambd.sync_with(addr, Duration::from_secs(5))).is_err()
    });
    for _ in 0..3 {
        // Refused, whether the dial resumes its TLS session (the hub closes the connection,
        // saying why) or makes a full handshake (the hub's TLS refuses the certificate).
        use outpost_node::net::{ConnectionFailure, DialFailure, NetError, SyncFailure};
        let err = rt.block_on(ambd.sync_with(addr, Duration::from_secs(5))).unwrap_err();
        assert!(
            matches!(
                &err,
                NetError::Connect { failure: DialFailure::Handshake(_), .. }
                    | NetError::Connection { failure: ConnectionFailure::RefusedByPeer(_), .. }
                    | NetError::Sync { failure: SyncFailure::PeerClosed(_) | SyncFailure::PeerEnded(_), .. }
            ),
            "{err:?}"
        );
        assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");
    }
    rt.block_on(ambd.stop());
    rt.block_on(hubd.stop());
}

#[test]
fn a_surgery_never_receives_a_byte_of_another_surgerys_session() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let a = fleet.node("surgery-a", "edge", &[]);
    let b = fleet.node("surgery-b", "edge", &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let _hub = daemon(&hub, &["--listen", &addr], &[]);
    let a_id = new_session(&a, "dermatology", "SURGERY-A-SECRET summary");
    ok(&["message", "send", "--dir", d(&a), &a_id, "SURGERY-A-SECRET message"]);
    let b_id = new_session(&b, "dermatology", "surgery B's own case");
    wait_until(LIMIT, "the hub to listen", || run(&["sync", "--dir", d(&a), "--peer", &addr]).status.success());
    let log = tmp.path().join("b-frames.bin");
    let out = std::process::Command::new(common::BIN)
        .args(["sync", "--dir", d(&b), "--peer", &addr, "--json"])
        .env("OUTPOST_FRAME_LOG", &log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A second sync, now that B has state for the hub.
    ok(&["message", "send", "--dir", d(&b), &b_id, "follow-up"]);
    let out = std::process::Command::new(common::BIN)
        .args(["sync", "--dir", d(&b), "--peer", &addr])
        .env("OUTPOST_FRAME_LOG", &log)
        .output()
        .unwrap();
    assert!(out.status.success());
    let received = std::fs::read(&log).unwrap();
    // The log holds what B received: the hub's acknowledgement names B's own session (hubs
    // write no receipt on messages, so little else comes back).
    let b_bytes: [u8; 16] = *ulid_bytes(&b_id);
    assert!(
        received.windows(16).any(|w| w == b_bytes),
        "the frame log holds what B received ({} bytes)",
        received.len()
    );
    let a_bytes: [u8; 16] = *ulid_bytes(&a_id);
    assert!(!received.windows(16).any(|w| w == a_bytes), "surgery B received surgery A's session id");
    assert!(!received.windows(16).any(|w| w == b"SURGERY-A-SECRET"), "surgery B received surgery A's text");
    assert!(texts(&b, &a_id).is_none());
    assert_eq!(common::json(&ok(&["session", "list", "--dir", d(&b), "--json"])).as_array().unwrap().len(), 1);
}

fn ulid_bytes(id: &str) -> Box<[u8; 16]> {
    let sid: sync_protocol::SessionId = id.parse().unwrap();
    Box::new(sid.to_bytes())
}

#[test]
fn a_message_shows_at_hub_only_once_the_hub_has_stored_it() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let id = new_session(&amb, "emergency_medicine", "Chest pain");
    // Long enough to need new database pages at the hub (a full ECG description).
    let noise: String = (0..200u32).map(|i| blake3::hash(&i.to_le_bytes()).to_hex().to_string()).collect();
    let text = format!("must be durable at the hub. {noise}");
    ok(&["message", "send", "--dir", d(&amb), &id, &text]);
    let receipt = || view(&amb, &id)["messages"][0]["receipt"].as_str().unwrap().to_string();
    // The session list's card says the same (the hub writes no receipt on messages: the card
    // reads the hub's acknowledged heads beside it).
    let card = || {
        let list = common::json(&ok(&["session", "list", "--dir", d(&amb), "--json"]));
        let card = list.as_array().unwrap().iter().find(|c| c["id"] == id.as_str()).cloned().unwrap();
        (card["on_device_only"].as_u64().unwrap(), card["last_message_receipt"].as_str().unwrap().to_string())
    };
    assert_eq!(receipt(), "device");
    assert_eq!(card(), (1, "device".to_string()));
    {
        // The hub's disk is full: it cannot store the session, so it must not acknowledge it.
        // No free pages left inside the file, and no room to grow it.
        let conn = rusqlite::Connection::open(hub.join("outpost.db")).unwrap();
        conn.execute_batch("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0)).unwrap();
        assert_eq!(free, 0);
        let pages = conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0)).unwrap().to_string();
        drop(conn);
        let full = daemon(&hub, &["--listen", &addr], &[("OUTPOST_MAX_DB_PAGES", &pages)]);
        wait_until(LIMIT, "the hub to listen", || full.log_text().contains("outpost daemon started"));
        fails(&["sync", "--dir", d(&amb), "--peer", &addr, "--timeout", "10"], 6);
        assert_eq!(receipt(), "device", "the hub could not store it, so it is not 'at hub'");
        assert_eq!(card(), (1, "device".to_string()));
    }
    let mut hubd = daemon(&hub, &["--listen", &addr], &[]);
    wait_until(LIMIT, "a sync", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
    assert_eq!(receipt(), "hub");
    assert_eq!(card(), (0, "hub".to_string()));
    // Kill the hub without warning: what it acknowledged is on its disk.
    hubd.child.kill().unwrap();
    hubd.child.wait().unwrap();
    assert_eq!(texts(&hub, &id).unwrap(), [text]);
}

#[test]
fn a_one_shot_sync_reports_its_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let (_hub, amb, addr) = hub_and_edge(tmp.path());
    for i in 0..20 {
        new_session(&amb, "paediatrics", &format!("child {i}"));
    }
    wait_until(LIMIT, "a first sync", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
    let again = sync(&amb, &addr);
    assert_eq!(again["round_trips"], 1, "{again}");
    assert_eq!(again["docs_sent"], 0);
    let app_bytes = again["bytes_sent"].as_u64().unwrap() + again["bytes_received"].as_u64().unwrap();
    assert!(app_bytes < 1024, "{again}");
    for key in ["udp_bytes_sent", "udp_bytes_received", "sync_ms", "handshake_ms", "docs_received", "blobs_received"] {
        assert!(again.get(key).is_some(), "missing {key}: {again}");
    }
}

#[test]
fn the_icb_directory_reaches_edges_and_desks_and_stays_readable_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let (hub, amb, desk) = fleet.hub_amb_derm_desk();
    let show = |n: &std::path::Path| common::json(&ok(&["rota", "show", "--dir", d(n), "--json"]));
    assert!(show(&amb).is_null(), "nothing before the first sync");
    ok(&[
        "rota",
        "set",
        "--dir",
        d(&hub),
        "--line",
        "dermatology",
        "--desk",
        "desk-derm-1:30",
        "--desk",
        "desk-derm-2",
        "--hours",
        "mon-fri 08:00-18:30",
        "--channels",
        "call,photo",
    ]);
    // Only the hub keeps the directory: an edge is told where to set it (usage error, exit 2).
    let err = fails(&["rota", "set", "--dir", d(&amb), "--line", "dermatology", "--desk", "desk-x"], 2);
    assert!(err.contains("hub"), "{err}");
    let addr = format!("127.0.0.1:{}", free_port());
    {
        let _hub = daemon(&hub, &["--listen", &addr], &[]);
        wait_until(LIMIT, "the hub to listen", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
        sync(&desk, &addr);
    }
    // The hub is gone: both still know the line, its hours and its rota.
    for n in [&amb, &desk] {
        let v = show(n);
        assert_eq!(v["source"], "hub", "{v}");
        let line = &v["lines"][0];
        assert_eq!(line["line"], "dermatology");
        assert_eq!(line["snomed"], "394582007");
        assert_eq!(line["hours"], "mon-fri 08:00-18:30");
        assert_eq!(line["channels"], serde_json::json!(["call", "photo"]));
        assert_eq!(
            line["rota"],
            serde_json::json!([{"desk": "desk-derm-1", "ring_s": 30}, {"desk": "desk-derm-2", "ring_s": 20}])
        );
    }
    // A change at the hub reaches a connected edge without a new sync.
    let _hub = daemon(&hub, &["--listen", &addr], &[]);
    let _amb = daemon(&amb, &["--peer", &addr], &[]);
    wait_until(LIMIT, "the ambulance to connect", || show(&amb)["lines"][0]["line"] == "dermatology");
    ok(&["rota", "set", "--dir", d(&hub), "--line", "cardiology", "--desk", "desk-card-1"]);
    wait_until(LIMIT, "the cardiology line at the ambulance", || show(&amb)["lines"].as_array().unwrap().len() == 2);
    let v = show(&amb);
    let line = |name: &str| v["lines"].as_array().unwrap().iter().find(|l| l["line"] == name).unwrap().clone();
    assert_eq!(line("cardiology")["hours"], "24/7");
    assert_eq!(line("cardiology")["rota"][0]["desk"], "desk-card-1");
    assert_eq!(line("dermatology")["rota"][0]["desk"], "desk-derm-1", "the dermatology line unchanged");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_hub_restored_from_an_older_backup_gets_back_what_it_lost_in_one_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let desk = fleet.node("desk-paed-1", "desk", &["--service-line", "paediatrics"]);
    let addr = format!("127.0.0.1:{}", free_port());
    let ids: Vec<String> = (0..20).map(|i| new_session(&amb, "paediatrics", &format!("child {i}"))).collect();
    {
        let _hub = daemon(&hub, &["--listen", &addr], &[]);
        wait_until(LIMIT, "a first sync", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
        sync(&desk, &addr);
    }
    // The hub's nightly backup.
    let backup = tmp.path().join("hub-backup");
    copy_dir(&hub, &backup);
    // The receipt of the ambulance's own message (a reply may come first in the conversation:
    // concurrent messages are ordered by Automerge, not by clock).
    let receipt = |id: &str| {
        let v = view(&amb, id);
        let own = v["messages"].as_array().unwrap().iter().find(|m| m["author"] == "amb-07").cloned().unwrap();
        own["receipt"].as_str().unwrap().to_string()
    };
    {
        let _hub = daemon(&hub, &["--listen", &addr], &[]);
        for (k, id) in ids.iter().take(5).enumerate() {
            ok(&["message", "send", "--dir", d(&amb), id, &format!("observation {k} after the backup")]);
        }
        wait_until(LIMIT, "a sync", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
    }
    for id in ids.iter().take(5) {
        assert_eq!(receipt(id), "hub");
    }
    // The hub's disk is replaced by the backup, which lacks the five messages and the hub's own
    // receipts for them.
    std::fs::remove_dir_all(&hub).unwrap();
    copy_dir(&backup, &hub);
    for id in ids.iter().take(5) {
        assert_eq!(texts(&hub, id).unwrap(), Vec::<String>::new(), "the restored hub lacks the message");
    }
    let _hub = daemon(&hub, &["--listen", &addr], &[]);
    wait_until(LIMIT, "the restored hub to listen", || _hub.log_text().contains("outpost daemon started"));
    // The consultant, who had not seen the messages, replies first: the restored hub stores the
    // reply and writes its receipt, concurrently with the receipts it lost.
    ok(&["message", "send", "--dir", d(&desk), &ids[0], "consultant: please send a photo"]);
    sync(&desk, &addr);
    let report = sync(&amb, &addr);
    assert_eq!(report["docs_sent"], 5, "exactly the five sessions the hub lost: {report}");
    assert_eq!(report["refused"], 0, "{report}");
    assert_eq!(report["docs_received"], 1, "the consultant's reply: {report}");
    let again = sync(&amb, &addr);
    assert_eq!(again["docs_sent"], 0, "{again}");
    drop(_hub);
    let mut want = vec!["observation 0 after the backup".to_string(), "consultant: please send a photo".to_string()];
    want.sort();
    let mut got = texts(&hub, &ids[0]).unwrap();
    got.sort();
    assert_eq!(got, want);
    for (k, id) in ids.iter().enumerate().take(5).skip(1) {
        assert_eq!(texts(&hub, id).unwrap(), [format!("observation {k} after the backup")]);
    }
    for id in ids.iter().take(5) {
        assert_eq!(receipt(id), "hub", "true again: the hub holds it");
    }
    assert_eq!(texts(&amb, &ids[0]).unwrap().len(), 2);
}

#[test]
fn reading_is_an_explicit_act_on_both_sides_never_a_side_effect_of_showing() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let (hub, amb, desk) = fleet.hub_amb_derm_desk();
    let addr = format!("127.0.0.1:{}", free_port());
    let _hub = daemon(&hub, &["--listen", &addr], &[]);
    let id = new_session(&amb, "dermatology", "Rash after a new antibiotic");
    ok(&["message", "send", "--dir", d(&amb), &id, "Widespread rash, no mucosal involvement"]);
    wait_until(LIMIT, "a sync", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
    let round = || {
        sync(&desk, &addr);
        sync(&amb, &addr);
        sync(&desk, &addr);
    };
    round();
    let receipt =
        |dir: &std::path::Path, i: usize| view(dir, &id)["messages"][i]["receipt"].as_str().unwrap().to_string();
    assert_eq!(receipt(&amb, 0), "desk");

    // A script polling the desk (text and JSON) tells the ambulance nothing it has not earned.
    for _ in 0..2 {
        ok(&["session", "show", "--dir", d(&desk), &id, "--json"]);
        ok(&["session", "show", "--dir", d(&desk), &id]);
    }
    round();
    assert_eq!(receipt(&amb, 0), "desk", "showing is not reading");

    // The consultant opens it: read. The reply goes back; the crew's device shows it.
    ok(&["session", "show", "--dir", d(&desk), &id, "--read"]);
    ok(&["message", "send", "--dir", d(&desk), &id, "Stop the antibiotic; photos please"]);
    round();
    assert_eq!(receipt(&amb, 0), "read");
    assert_eq!(receipt(&desk, 1), "requester", "the reply is on the crew's tablet; the crew has not read it");
    ok(&["session", "show", "--dir", d(&amb), &id, "--json"]);
    round();
    assert_eq!(receipt(&desk, 1), "requester", "showing on the tablet is not reading either");
    ok(&["session", "show", "--dir", d(&amb), &id, "--read", "--json"]);
    round();
    assert_eq!(receipt(&desk, 1), "read", "the consultant sees the crew read the advice");
    let reply = &view(&desk, &id)["messages"][1]["receipts"];
    assert!(reply.as_array().unwrap().iter().any(|r| r["level"] == "read" && r["node"] == "amb-07"), "{reply}");
}

#[test]
fn peers_are_dialled_by_host_name_and_an_unknown_name_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let surgery = fleet.node("surgery-12", "edge", &[]);
    let port = free_port();
    let _hub = daemon(&hub, &["--listen", &format!("127.0.0.1:{port}")], &[]);
    let by_name = format!("localhost:{port}");
    let id = new_session(&amb, "cardiology", "Palpitations, self-terminating");
    wait_until(LIMIT, "a sync by name", || run(&["sync", "--dir", d(&amb), "--peer", &by_name]).status.success());
    assert!(texts(&hub, &id).is_some(), "the hub holds the session");
    // The daemon dials by name too.
    let other = new_session(&surgery, "cardiology", "Syncope on exertion");
    let _surgery = daemon(&surgery, &["--peer", &by_name], &[]);
    wait_until(LIMIT, "the daemon's session at the hub", || texts(&hub, &other).is_some());

    let err = fails(&["sync", "--dir", d(&amb), "--peer", "no-such-hub.invalid:4433"], 6);
    assert!(err.contains("cannot resolve no-such-hub.invalid:4433"), "{err}");
    let err = fails(&["sync", "--dir", d(&amb), "--peer", "hub_qhm:4433"], 2);
    assert!(err.contains("host:port"), "{err}");
}

#[test]
fn a_one_shot_sync_uses_the_congestion_control_its_settings_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (_hub, amb, addr) = hub_and_edge(tmp.path());
    wait_until(LIMIT, "the hub to listen", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
    assert_eq!(sync(&amb, &addr)["congestion"], "radio", "the default");
    // `outpost.toml` names another controller, as it does for the daemon.
    let settings = amb.join("outpost.toml");
    std::fs::write(&settings, "congestion = \"cubic\"\n").unwrap();
    assert_eq!(sync(&amb, &addr)["congestion"], "cubic");
    // The environment overrides the file.
    let out = std::process::Command::new(common::BIN)
        .args(["sync", "--dir", d(&amb), "--peer", &addr, "--json", "--timeout", "60"])
        .env("OUTPOST_CONGESTION", "bbr")
        .env_remove("OUTPOST_NODE_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(common::json(&String::from_utf8_lossy(&out.stdout))["congestion"], "bbr");
    // A name it does not know is a bad setting (exit 2), not a silent fallback.
    std::fs::write(&settings, "congestion = \"reno\"\n").unwrap();
    let err = fails(&["sync", "--dir", d(&amb), "--peer", &addr, "--timeout", "10"], 2);
    assert!(err.contains("congestion") && err.contains("\"reno\""), "{err}");
}

/// A surgery a crew shared its session with may not record the requester's outcome (the crew's
/// edge or its hub does): every peer would refuse that change, and with it everything the
/// surgery writes to the session after it. The write is refused at once, nothing is written,
/// and the surgery's next message reaches the hub.
#[test]
fn a_write_the_peers_would_refuse_is_refused_at_once_and_the_next_still_travels() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let gp = fleet.node("surgery-12", "edge", &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let hub_daemon = daemon(&hub, &["--listen", &addr], &[]);
    let id = new_session(&amb, "cardiology", "Syncope, handed to the GP");
    ok(&["session", "share", "--dir", d(&amb), &id, "surgery-12"]);
    wait_until(LIMIT, "the hub", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
    ok(&["sync", "--dir", d(&gp), "--peer", &addr, "--timeout", "30"]);
    assert!(texts(&gp, &id).is_some(), "the surgery holds the shared session");

    let out = run(&["outcome", "set", "--dir", d(&gp), &id, "--side", "requester", "referral_avoided"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("may not write") && stderr.contains("nothing was written"), "{stderr}");
    assert!(!view(&gp, &id)["outcome"]["requester"].is_object(), "the surgery kept the refused outcome");
    ok(&["message", "send", "--dir", d(&gp), &id, "Seen in surgery, ECG normal"]);
    ok(&["sync", "--dir", d(&gp), "--peer", &addr, "--timeout", "30"]);
    drop(hub_daemon);
    let at_hub = texts(&hub, &id).unwrap();
    assert!(at_hub.iter().any(|t| t.contains("ECG normal")), "{at_hub:?}");
}

/// The hub's store judging an empty batch, from the origin and from a peer out of scope.
mod an_empty_batch {
    use outpost_node::config::NodeDir;
    use outpost_node::node::{InitParams, Node, SessionRequest};
    use outpost_node::replica::NodeReplica;
    use sync_protocol::authorship::Member;
    use sync_protocol::engine::{Applied, Engine, EngineConfig, Incoming};
    use sync_protocol::scope::PeerInfo;
    use sync_protocol::session::{Patient, Requester, Service, SessionId};
    use sync_protocol::vocab::{CareSetting, Channel, Priority, Role, ServiceLine};
    use sync_protocol::wire::{Changes, Frame, Hello, MAX_VERSION, MIN_VERSION};

    const T: i64 = 1_784_116_800_000;

    fn node(tmp: &tempfile::TempDir, name: &str, role: Role) -> Node {
        let dir = NodeDir::new(tmp.path().join(name));
        let params =
            InitParams { name: name.into(), role, org: Some("RX6".into()), icb: Some("QHM".into()), lines: vec![] };
        Node::init(&dir, &params, T).unwrap();
        Node::open(&dir).unwrap()
    }

    /// What the hub answers `attacker` for these frames.
    fn probe(hub: &mut Node, attacker: &PeerInfo, frames: Vec<Frame>) -> Vec<Frame> {
        let me = hub.config().peer_info();
        let mut replica = NodeReplica::new(hub.raw_store(), &me, None);
        let mut e = Engine::new(attacker.clone(), EngineConfig::new(false));
        e.start(&mut replica, T).unwrap();
        let hello = Frame::Hello(Hello {
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            node: attacker.name.clone(),
            crl_number: 0,
        });
        let mut all = vec![hello];
        all.extend(frames);
        let _ = e.handle(&mut replica, all, T + 5);
        std::iter::from_fn(|| e.poll_frame().map(|x| x.1)).collect()
    }

    fn empty_changes(doc: [u8; 16]) -> Frame {
        Frame::Changes(Changes { doc, ack: false, heads: vec![], bytes: vec![], sigs: vec![] })
    }

    /// A stolen tablet of the same ICB sends an empty batch for another crew's session: the hub
    /// answers it as for a session that does not exist, neither acknowledging it nor telling its
    /// heads (a batch with changes is refused the same way).
    #[test]
    fn an_empty_batch_for_a_session_out_of_the_senders_scope_is_answered_as_for_none() {
        let tmp = tempfile::tempdir().unwrap();
        let mut hub = node(&tmp, "hub-qhm", Role::Hub);
        let mut amb = node(&tmp, "amb-07", Role::Edge);
        let req = SessionRequest {
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester::default(),
            patient: Patient::default(),
            service: Service { line: ServiceLine::Dermatology, channel: Channel::Message, priority: Priority::Urgent },
            summary: "Spreading rash".into(),
            draft: false,
        };
        let id = amb.new_session(req, T).unwrap().id;
        let (me, from) = (hub.config().peer_info(), amb.config().peer_info());
        let out = amb.raw_store().peers_mut().changes_since(&me, &id.to_bytes(), &[]).unwrap().unwrap();
        let member = Member { info: from.clone(), key: amb.raw_store().identity().author_public() };
        hub.raw_store().identity_mut().add_member(member, b"test member").unwrap();
        let inc = Incoming { doc: id.to_bytes(), bytes: out.bytes, sigs: out.sigs };
        let (applied, _) = hub.raw_store().peers_mut().apply_remote(&me, &from, &[inc], T + 2).unwrap();
        assert!(matches!(applied[0], Applied::Stored { .. }), "{applied:?}");
        let empty = |doc: [u8; 16]| Incoming { doc, bytes: vec![], sigs: vec![] };
        // The origin itself is told the heads it already has.
        let (applied, _) =
            hub.raw_store().peers_mut().apply_remote(&me, &from, &[empty(id.to_bytes())], T + 3).unwrap();
        assert!(matches!(&applied[0], Applied::Stored { heads } if !heads.is_empty()), "{applied:?}");

        let thief =
            PeerInfo { name: "amb-66".into(), role: Role::Edge, org: None, icb: Some("QHM".into()), lines: vec![] };
        assert!(hub.raw_store().peers().visible_row(&thief, &id.to_bytes()).unwrap().is_none());
        let (applied, _) =
            hub.raw_store().peers_mut().apply_remote(&me, &thief, &[empty(id.to_bytes())], T + 3).unwrap();
        assert!(matches!(&applied[0], Applied::Refused { .. }), "{applied:?}");

        // Over the protocol, the replies to the held session and to an unknown one are the same.
        let held = probe(&mut hub, &thief, vec![empty_changes(id.to_bytes())]);
        let unknown = probe(&mut hub, &thief, vec![empty_changes(SessionId::from_parts(T, 12345).to_bytes())]);
        let names = |fs: &[Frame]| fs.iter().map(|f| f.name().to_string()).collect::<Vec<_>>();
        assert_eq!(names(&held), names(&unknown));
        assert!(held.iter().any(|f| matches!(f, Frame::Refused { .. })), "{:?}", names(&held));
    }
}

/// A long message (about 2 KB), tagged.
fn long_note(what: &str, i: usize) -> String {
    let note = "Obs on arrival: HR 96 regular, BP 142/88, SpO2 95% on air, RR 20, temp 37.9. ".repeat(25);
    format!("{note}({what} {i})")
}

/// Adds a long message to each of these sessions on the node in `dir`.
fn write_messages(dir: &std::path::Path, ids: &[sync_protocol::SessionId], what: &str) {
    use outpost_node::config::NodeDir;
    use outpost_node::node::{Node, now_ms};
    let mut node = Node::open(&NodeDir::new(dir.to_path_buf())).unwrap();
    for (i, id) in ids.iter().enumerate() {
        node.send_message(*id, &long_note(what, i), None, now_ms()).unwrap();
    }
}

/// Writes `n` sessions of about 2.5 KB each (a long first message) on the node in `dir`.
fn write_sessions(dir: &std::path::Path, n: usize, what: &str) -> Vec<sync_protocol::SessionId> {
    use outpost_node::config::NodeDir;
    use outpost_node::node::{Node, SessionRequest, now_ms};
    use sync_protocol::session::{Patient, Requester, Service};
    use sync_protocol::vocab::{CareSetting, Channel, Priority, ServiceLine};

    let mut node = Node::open(&NodeDir::new(dir.to_path_buf())).unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let req = SessionRequest {
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester::default(),
            patient: Patient::default(),
            service: Service { line: ServiceLine::ALL[i % 7], channel: Channel::Message, priority: Priority::Urgent },
            summary: format!("{what} {i}: chest pain, settled; advice on conveyance"),
            draft: false,
        };
        let id = node.new_session(req, now_ms()).unwrap().id;
        node.send_message(id, &long_note(what, i), None, now_ms()).unwrap();
        ids.push(id);
    }
    ids
}

/// Bounds far below what each side holds for the other in the tests below (megabytes), as a
/// daemon's 32 MiB are below what two hubs or a restored tablet can hold for each other.
fn small_bounds() -> outpost_node::settings::Limits {
    outpost_node::settings::Limits {
        unread_bytes_per_peer: 64 * 1024,
        unsent_bytes_per_peer: 64 * 1024,
        ..Default::default()
    }
}

/// The node in `dir` as a daemon in this process, listening on loopback, with these limits.
fn listening(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    limits: outpost_node::settings::Limits,
) -> outpost_node::net::Daemon {
    use outpost_node::net::{Daemon, RunOptions};
    let node = outpost_node::node::Node::open(&outpost_node::config::NodeDir::new(dir.to_path_buf())).unwrap();
    let opts = RunOptions { listen: Some("127.0.0.1:0".parse().unwrap()), limits, ..RunOptions::default() };
    rt.block_on(Daemon::start(node, opts)).unwrap()
}

/// Each side of a conversation stops taking the other's frames while more than a bound of
/// what it made for the other is unwritten (a peer that asks and never reads). Two honest
/// nodes that each hold megabytes the other lacks (a tablet restored from an old backup that
/// has written since, and its hub holding what the backup lacks) both pass that bound at
/// once: neither may wait for the other to read first, or the sync never ends.
#[test]
fn two_nodes_each_holding_more_for_the_other_than_their_output_bound_finish_their_sync() {
    use outpost_node::config::NodeDir;
    use outpost_node::net::{Daemon, RunOptions};
    use outpost_node::node::Node;

    const N: usize = 1000;
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-13", "edge", &[]);
    let backup = tmp.path().join("amb-backup");
    copy_dir(&amb, &backup);
    let _ = write_sessions(&amb, N, "before the restore");

    let limits = small_bounds();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let open = |p: &std::path::Path| Node::open(&NodeDir::new(p.to_path_buf())).unwrap();
    let hubd = listening(&rt, &hub, limits);
    let addr = hubd.local_addr.unwrap();
    let ambd = rt.block_on(Daemon::start(open(&amb), RunOptions { limits, ..RunOptions::default() })).unwrap();
    let first = rt.block_on(ambd.sync_with(addr, LIMIT)).unwrap();
    assert_eq!(first.stats.docs_sent, N as u64, "{first:?}");
    rt.block_on(ambd.stop());

    // The tablet's disk is replaced by the backup, and it goes on writing.
    std::fs::remove_dir_all(&amb).unwrap();
    copy_dir(&backup, &amb);
    let _ = write_sessions(&amb, N, "after the restore");
    let ambd = rt.block_on(Daemon::start(open(&amb), RunOptions { limits, ..RunOptions::default() })).unwrap();
    let both = rt.block_on(ambd.sync_with(addr, Duration::from_secs(120)));
    let both = both.unwrap_or_else(|e| panic!("the sync did not finish: {e}"));
    assert_eq!(both.stats.docs_sent, N as u64, "{both:?}");
    assert_eq!(both.stats.docs_received, N as u64, "{both:?}");
    rt.block_on(ambd.stop());
    rt.block_on(hubd.stop());
    let listed = |dir: &std::path::Path| {
        common::json(&ok(&["session", "list", "--dir", d(dir), "--json"])).as_array().map(|a| a.len()).unwrap_or(0)
    };
    assert_eq!(listed(&amb), 2 * N, "the tablet holds its sessions from before and after the restore");
    assert_eq!(listed(&hub), 2 * N, "and so does the hub");
}

/// The same, with both sides' changes to the same sessions, and a tablet that knows its hub: a
/// tablet restored from a backup taken after a sync, its hub holding a message in each session
/// written after the backup, the tablet another. The tablet pushes its own at once, before the
/// hub's hello comes (it was taken for an ask and held: the hub's next frames then came before
/// any hello, a protocol error); and each side's answer to the other's changes in a session is
/// more of its own, which must wait rather than stop both sides reading.
#[test]
fn a_restored_tablet_and_its_hub_each_owing_the_other_changes_to_the_same_sessions_converge() {
    use outpost_node::config::NodeDir;
    use outpost_node::net::{Daemon, RunOptions};
    use outpost_node::node::Node;

    const N: usize = 600;
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-13", "edge", &[]);
    let ids = write_sessions(&amb, N, "first");
    let limits = small_bounds();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let open = |p: &std::path::Path| Node::open(&NodeDir::new(p.to_path_buf())).unwrap();
    let hubd = listening(&rt, &hub, limits);
    let addr = hubd.local_addr.unwrap();
    let sync_once = |what: &str| {
        let ambd = rt.block_on(Daemon::start(open(&amb), RunOptions { limits, ..RunOptions::default() })).unwrap();
        let report = rt.block_on(ambd.sync_with(addr, Duration::from_secs(120)));
        rt.block_on(ambd.stop());
        report.unwrap_or_else(|e| panic!("{what}: the sync did not finish: {e}"))
    };
    sync_once("the first sync");
    let backup = tmp.path().join("amb-backup");
    copy_dir(&amb, &backup);
    write_messages(&amb, &ids, "lost");
    sync_once("the sync after the backup");

    std::fs::remove_dir_all(&amb).unwrap();
    copy_dir(&backup, &amb);
    write_messages(&amb, &ids, "after the restore");
    let both = sync_once("the restored tablet's sync");
    assert!(both.stats.docs_sent >= N as u64, "{both:?}");
    assert!(both.stats.docs_received >= N as u64, "{both:?}");
    rt.block_on(hubd.stop());
    for id in [ids[0], ids[N / 2], ids[N - 1]] {
        for (who, dir) in [("the tablet", &amb), ("the hub", &hub)] {
            let texts = texts(dir, &id.to_string()).unwrap();
            assert_eq!(
                texts.len(),
                3,
                "{who} holds the first message, the one lost with the restore and the one after"
            );
        }
    }
}

/// A stolen tablet, revoked at its hub, writes on and syncs with a desk that has not yet heard
/// of the revocation (a desk listening on its LAN). The desk passes the change on to the hub,
/// which refuses it: a revoked member's changes it does not hold yet are taken from hubs alone.
/// A desk that joins after the revocation still gets the session from the hub, with what the
/// tablet wrote before it was lost.
#[test]
fn a_revoked_tablets_new_changes_do_not_reach_the_hub_through_a_peer_that_has_not_heard_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-13", "edge", &[]);
    let desk = fleet.node("desk-cardio-1", "desk", &["--service-line", "cardiology"]);
    let hub_addr = format!("127.0.0.1:{}", free_port());
    let hubd = daemon(&hub, &["--listen", &hub_addr], &[]);
    let id = new_session(&amb, "cardiology", "chest pain at rest");
    ok(&["message", "send", "--dir", d(&amb), &id, "before the theft"]);
    wait_until(LIMIT, "the tablet's first sync", || {
        run(&["sync", "--dir", d(&amb), "--peer", &hub_addr, "--timeout", "5"]).status.success()
    });
    sync(&desk, &hub_addr);
    assert_eq!(texts(&desk, &id).unwrap(), vec!["before the theft"]);

    ok(&["ca", "revoke", "--ca", d(&fleet.ca), "amb-13", "--publish", d(&hub)]);
    wait_until(LIMIT, "the hub to load the revocation list", || hubd.log_text().contains("revocation list"));

    // The thief (offline since, so it has not heard either) writes on, and reaches the desk,
    // which has not heard of the revocation.
    ok(&["message", "send", "--dir", d(&amb), &id, "after the theft"]);
    let desk_addr = format!("127.0.0.1:{}", free_port());
    {
        let _deskd = daemon(&desk, &["--listen", &desk_addr], &[]);
        wait_until(LIMIT, "the desk to take the thief's sync", || {
            run(&["sync", "--dir", d(&amb), "--peer", &desk_addr, "--timeout", "5"]).status.success()
        });
    }
    assert_eq!(texts(&desk, &id).unwrap(), vec!["before the theft", "after the theft"]);
    // The desk passes it on; the hub refuses it.
    let _ = run(&["sync", "--dir", d(&desk), "--peer", &hub_addr, "--timeout", "20"]);
    assert_eq!(texts(&hub, &id).unwrap(), vec!["before the theft"], "the hub took a revoked member's new change");

    // A desk that joins now still gets the session with what the tablet wrote before.
    let late = fleet.node("desk-cardio-2", "desk", &["--service-line", "cardiology"]);
    sync(&late, &hub_addr);
    assert_eq!(texts(&late, &id).unwrap(), vec!["before the theft"]);
}

/// A tablet's store put back to an older copy of itself (a restore, or someone hiding what was
/// looked at: the copy's chain and its sealed head verify on their own) is found out at its
/// next sync: the hub had been told where the chain ended, says so, and the tablet records the
/// loss in its chain and its status, once; the hub records it in its own. The hub never
/// forgets how far the chain reached, so the same copy put back again is found again, and so
/// is the copy written past that point before it syncs.
#[test]
fn a_tablet_whose_audit_chain_was_cut_back_hears_it_from_its_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub_dir = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let _hub = daemon(&hub_dir, &["--listen", &addr, "--metrics", &metrics], &[]);
    let gauge = |name: &str| -> Option<f64> {
        let text = ureq::get(&format!("http://{metrics}/metrics")).call().ok()?.body_mut().read_to_string().ok()?;
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok())
    };
    let id = new_session(&amb, "cardiology", "chest pain on exertion");
    wait_until(LIMIT, "a first sync", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
    let older = tmp.path().join("amb-older");
    copy_dir(&amb, &older);
    // Looks at the patient, the entries someone would rather were not there.
    for _ in 0..3 {
        ok(&["session", "show", "--dir", d(&amb), &id]);
    }
    let status = |dir: &std::path::Path| common::json(&ok(&["status", "--dir", d(dir), "--json"]));
    let seen = status(&amb)["audit"]["entries"].as_u64().unwrap();
    sync(&amb, &addr);

    std::fs::remove_dir_all(&amb).unwrap();
    copy_dir(&older, &amb);
    ok(&["audit", "verify", "--dir", d(&amb)]);
    assert_eq!(status(&amb)["audit_losses"], serde_json::json!([]), "the copy alone looks whole");
    sync(&amb, &addr);
    assert_eq!(status(&amb)["audit_losses"], serde_json::json!([{ "peer": "hub-qhm", "seen": seen }]));
    let text = ok(&["status", "--dir", d(&amb)]);
    assert!(text.contains("SHORTER than hub-qhm had seen (entry"), "{text}");
    let behind = |dir: &std::path::Path| {
        let entries = common::json(&ok(&["audit", "show", "--dir", d(dir), "--limit", "1000", "--json"]));
        entries.as_array().unwrap().iter().filter(|e| e["action"] == "audit.behind").cloned().collect::<Vec<_>>()
    };
    let found = behind(&amb);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["detail"]["seen"], seen);
    assert_eq!(found[0]["detail"]["peer"], "hub-qhm");
    ok(&["audit", "verify", "--dir", d(&amb)]);
    // Once.
    sync(&amb, &addr);
    assert_eq!(behind(&amb).len(), 1);
    let hub = tmp.path().join("hub-qhm");
    let hub_entries = common::json(&ok(&["audit", "show", "--dir", d(&hub), "--limit", "1000", "--json"]));
    let at_hub: Vec<_> =
        hub_entries.as_array().unwrap().iter().filter(|e| e["action"] == "peer.audit_behind").cloned().collect();
    assert_eq!(at_hub.len(), 1, "{at_hub:?}");
    assert_eq!(
        (at_hub[0]["detail"]["peer"].as_str(), at_hub[0]["detail"]["seen"].as_u64()),
        (Some("amb-07"), Some(seen))
    );
    // The hub's deployer sees it without reading the chain: in status, and in its JSON.
    assert_eq!(status(&hub)["audit_peer_losses"], serde_json::json!([{ "peer": "amb-07", "seen": seen }]));
    let text = ok(&["status", "--dir", d(&hub)]);
    assert!(text.contains(&format!("audit chain of amb-07: SHORTER than it had told (entry {seen})")), "{text}");
    // And its monitoring: the scrape is cached for a few seconds, so wait for the new figure.
    wait_until(LIMIT, "the hub's metrics to count the cut chain", || gauge("outpost_audit_peer_losses") == Some(1.0));
    assert_eq!(gauge("outpost_audit_losses"), Some(0.0), "the hub's own chain is whole");
    // The copy put back a second time (which undoes the tablet's own record) is found again.
    std::fs::remove_dir_all(&amb).unwrap();
    copy_dir(&older, &amb);
    sync(&amb, &addr);
    assert_eq!(status(&amb)["audit_losses"], serde_json::json!([{ "peer": "hub-qhm", "seen": seen }]));
    assert_eq!(behind(&amb).len(), 1);
    // And a third time, written past where the hub had seen the chain end before it syncs:
    // longer than the hub saw, but entry `seen` is another one.
    std::fs::remove_dir_all(&amb).unwrap();
    copy_dir(&older, &amb);
    while status(&amb)["audit"]["entries"].as_u64().unwrap() <= seen + 2 {
        ok(&["session", "show", "--dir", d(&amb), &id]);
    }
    sync(&amb, &addr);
    assert_eq!(status(&amb)["audit_losses"], serde_json::json!([{ "peer": "hub-qhm", "seen": seen }]));
    assert_eq!(behind(&amb).len(), 1, "the padded copy's loss recorded");
}
