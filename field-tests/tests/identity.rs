//! Identity and scope through the link emulator: a node with a certificate of another CA, an
//! expired one or a revoked one is refused in the handshake and learns nothing (not one byte
//! of a frame); an edge never receives a session outside its scope, nor a desk one outside
//! its service lines.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use field_tests::{Field, Link, free_addr, s};

const BIN: &str = env!("CARGO_BIN_EXE_outpost-field-node");
const LIMIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);

fn id_bytes(id: &str) -> [u8; 16] {
    let sid: sync_protocol::SessionId = id.parse().unwrap();
    sid.to_bytes()
}

/// Whether `log` (bytes a node received from peers) mentions the session or the text.
fn mentions(log: &Path, id: &str, text: &str) -> bool {
    let bytes = std::fs::read(log).unwrap_or_default();
    let idb = id_bytes(id);
    bytes.windows(16).any(|w| w == idb) || bytes.windows(text.len()).any(|w| w == text.as_bytes())
}

/// A one-shot sync that must be refused (exit 6) and receive no frame bytes at all.
fn refused(f: &Field, node: &Path, peer: &str, what: &str) -> String {
    let log = f.dir.join(format!("{what}-frames.bin"));
    let out = f
        .outpost_env(&["sync", "--dir", s(node), "--peer", peer, "--timeout", "20"], &[("OUTPOST_FRAME_LOG", s(&log))]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(6), "{what}: a refused sync exits 6 (seed {})\n{stderr}", f.seed);
    let received = std::fs::read(&log).map(|b| b.len()).unwrap_or(0);
    assert_eq!(received, 0, "{what}: the refused node received {received} bytes of frames");
    assert!(f.session_ids(node).len() <= 1, "{what}: the refused node learned sessions");
    stderr
}

#[test]
fn foreign_expired_and_revoked_certificates_are_refused_and_learn_nothing() {
    let mut f = Field::new(BIN, "identity-refusals");
    let hub = f.node("hub-qhm", "hub", &[]);
    let desk = f.node("desk-derm-1", "desk", &["--org", "RTH", "--service-line", "dermatology"]);
    let surgery = f.node("surgery-12", "edge", &["--org", "B82005"]);
    let hub_addr = free_addr();
    let hubd = f.daemon(&hub, &["--listen", &hub_addr]);
    f.wait(LIMIT, POLL, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    let _deskd = f.daemon(&desk, &["--peer", &hub_addr]);
    let link = Link::start("rural-a-road", &hub_addr, f.seed);
    // Something worth stealing at the hub.
    let secret = f.new_session(&surgery, "dermatology", "gp_urgent", "SECRET-CASE pigmented lesion");
    f.message(&surgery, &secret, "SECRET-CASE history");
    f.wait(LIMIT, POLL, "the surgery's first sync", || {
        f.outpost(&["sync", "--dir", s(&surgery), "--peer", &link.addr]).status.success()
    });

    // Another fleet's CA.
    let other_ca = f.dir.join("other-ca");
    f.ok(&["ca", "init", "--dir", s(&other_ca), "--fleet", "elsewhere"]);
    let foreign = f.dir.join("amb-99");
    f.ok(&["init", "--dir", s(&foreign), "--name", "amb-99", "--role", "edge", "--icb", "QHM"]);
    f.ok(&["ca", "issue", "--ca", s(&other_ca), "--node", s(&foreign)]);
    refused(&f, &foreign, &link.addr, "foreign");

    // An expired certificate of our own CA.
    let ca = f.ca();
    let expired = f.dir.join("amb-98");
    f.ok(&["init", "--dir", s(&expired), "--name", "amb-98", "--role", "edge", "--icb", "QHM"]);
    f.ok(&["ca", "issue", "--ca", s(&ca), "--node", s(&expired), "--expired"]);
    refused(&f, &expired, &link.addr, "expired");

    // A tablet that worked, then was reported stolen and revoked.
    let stolen: PathBuf = f.node("amb-13", "edge", &["--org", "RX6"]);
    let own = f.new_session(&stolen, "dermatology", "ambulance_on_scene", "before the theft");
    f.ok(&["sync", "--dir", s(&stolen), "--peer", &link.addr]);
    f.ok(&["ca", "revoke", "--ca", s(&ca), "amb-13", "--publish", s(&hub)]);
    f.wait(LIMIT, POLL, "the hub to load the revocation list", || hubd.log_text().contains("revocation list"));
    // The consultant replies after the revocation: the stolen tablet must not see it.
    f.wait(LIMIT, POLL, "the desk to hold the stolen tablet's session", || f.export(&desk, &own).is_some());
    f.message(&desk, &own, "REPLY-AFTER-REVOCATION");
    f.wait(LIMIT, POLL, "the reply at the hub", || {
        f.export(&hub, &own).is_some_and(|v| v["messages"].as_array().is_some_and(|m| !m.is_empty()))
    });
    refused(&f, &stolen, &link.addr, "revoked");
    let v = f.export(&stolen, &own).unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 0, "the revoked tablet received the reply");
    assert_eq!(f.session_ids(&stolen), vec![own.clone()]);

    // The hub's own refusals are logged with their reason, and cost it nothing. (The foreign
    // node gives up on the hub's certificate first; its farewell may be lost on this link.)
    let log = hubd.log_text();
    assert!(log.contains("certificate expired"), "the hub logs the expired certificate:\n{log}");
    assert!(log.contains("Revoked"), "the hub logs the revoked certificate:\n{log}");
    assert_eq!(f.session_ids(&hub).len(), 2);
    f.ok(&["sync", "--dir", s(&surgery), "--peer", &link.addr]);
}

#[test]
fn edges_and_desks_never_receive_a_session_outside_their_scope() {
    let mut f = Field::new(BIN, "identity-scope");
    let hub = f.node("hub-qhm", "hub", &[]);
    let derm = f.node("desk-derm-1", "desk", &["--org", "RTH", "--service-line", "dermatology"]);
    let cardio = f.node("desk-cardio-1", "desk", &["--org", "RTH", "--service-line", "cardiology"]);
    let a = f.node("surgery-a", "edge", &["--org", "B82005"]);
    let b = f.node("surgery-b", "edge", &["--org", "B82099"]);
    let amb = f.node("amb-07", "edge", &["--org", "RX6"]);
    let hub_addr = free_addr();
    let hubd = f.daemon(&hub, &["--listen", &hub_addr]);
    f.wait(LIMIT, POLL, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    let link = Link::start("rural-a-road", &hub_addr, f.seed);
    let logs: Vec<PathBuf> =
        ["a", "b", "amb", "derm", "cardio"].iter().map(|n| f.dir.join(format!("{n}-frames.bin"))).collect();
    let a_id = f.new_session(&a, "dermatology", "gp_urgent", "SURGERY-A-ONLY rash");
    f.message(&a, &a_id, "SURGERY-A-ONLY history");
    let b_id = f.new_session(&b, "cardiology", "gp_urgent", "SURGERY-B-ONLY palpitations");
    let amb_id = f.new_session(&amb, "emergency_medicine", "ambulance_on_scene", "AMBULANCE-ONLY chest pain");
    let mut daemons = Vec::new();
    for (dir, log, peer) in [
        (&a, &logs[0], &link.addr),
        (&b, &logs[1], &link.addr),
        (&amb, &logs[2], &link.addr),
        (&derm, &logs[3], &hub_addr),
        (&cardio, &logs[4], &hub_addr),
    ] {
        daemons.push(f.daemon_env(dir, &["--peer", peer], &[("OUTPOST_FRAME_LOG", s(log))]));
    }
    f.wait(LIMIT, POLL, "the hub to hold all three sessions", || f.session_ids(&hub).len() == 3);
    f.wait(LIMIT, POLL, "each desk to hold its line's session", || {
        f.export(&derm, &a_id).is_some() && f.export(&cardio, &b_id).is_some()
    });
    // Replies flow back to their own surgery only.
    f.message(&derm, &a_id, "SURGERY-A-ONLY reply");
    f.message(&cardio, &b_id, "SURGERY-B-ONLY reply");
    f.wait(LIMIT, POLL, "the replies back at the surgeries", || {
        let n = |d: &Path, id: &str| f.export(d, id).and_then(|v| v["messages"].as_array().map(Vec::len)).unwrap_or(0);
        n(&a, &a_id) == 2 && n(&b, &b_id) == 1
    });
    // A moment more for anything that should not come to come.
    std::thread::sleep(Duration::from_secs(2));
    drop(daemons);

    assert_eq!(f.session_ids(&a), vec![a_id.clone()]);
    assert_eq!(f.session_ids(&b), vec![b_id.clone()]);
    assert_eq!(f.session_ids(&amb), vec![amb_id.clone()]);
    assert_eq!(f.session_ids(&derm), vec![a_id.clone()]);
    assert_eq!(f.session_ids(&cardio), vec![b_id.clone()]);
    for (who, log, foreign) in [
        ("surgery-a", &logs[0], vec![(&b_id, "SURGERY-B-ONLY"), (&amb_id, "AMBULANCE-ONLY")]),
        ("surgery-b", &logs[1], vec![(&a_id, "SURGERY-A-ONLY"), (&amb_id, "AMBULANCE-ONLY")]),
        ("amb-07", &logs[2], vec![(&a_id, "SURGERY-A-ONLY"), (&b_id, "SURGERY-B-ONLY")]),
        ("desk-derm-1", &logs[3], vec![(&b_id, "SURGERY-B-ONLY"), (&amb_id, "AMBULANCE-ONLY")]),
        ("desk-cardio-1", &logs[4], vec![(&a_id, "SURGERY-A-ONLY"), (&amb_id, "AMBULANCE-ONLY")]),
    ] {
        let size = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "{who} received no bytes: the frame log is the evidence and must hold its traffic");
        for (id, text) in foreign {
            assert!(
                !mentions(log, id, text),
                "{who} received a byte of session {id} ({text}), outside its scope (seed {})",
                f.seed
            );
        }
    }
}
