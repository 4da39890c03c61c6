//! What the engineer who deploys outpost does: certificates the right way round (the node's key
//! never leaves its directory), key rotation, backup and restore, and the storage faults a
//! surgery box meets.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fleet::{Fleet, daemon, free_port, wait_until};
use common::{fails, json, new_session, ok};

fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() { stack.push(path) } else { out.push(path) }
        }
    }
    out
}

/// Whether any file under `dir` holds `needle`.
fn holds(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|f| std::fs::read(f).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
        .collect()
}

#[test]
fn a_node_keeps_its_key_while_an_offline_ca_signs_its_request_and_renewal_is_warned_ahead() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    // The ambulance is initialised on its tablet; only its request travels to the CA.
    let amb = tmp.path().join("amb-07");
    ok(&["init", "--dir", d(&amb), "--name", "amb-07", "--role", "edge", "--org", "RX6", "--icb", "QHM"]);
    let carried = tmp.path().join("usb-stick");
    std::fs::create_dir_all(&carried).unwrap();
    let csr = carried.join("amb-07.csr");
    let said = ok(&["cert", "request", "--dir", d(&amb), "--out", d(&csr)]);
    assert!(said.contains("outpost ca sign"), "{said}");
    assert!(std::fs::read_to_string(&csr).unwrap().contains("BEGIN CERTIFICATE REQUEST"));

    // On the CA's machine: it prints what it certifies. 20 days, to see the renewal warning.
    let signed = ok(&["ca", "sign", "--ca", d(&fleet.ca), d(&csr), "--days", "20"]);
    assert!(signed.contains("amb-07 (edge, organisation RX6, ICB QHM"), "{signed}");
    let pem = carried.join("amb-07.pem");
    assert!(pem.exists(), "{signed}");

    // No private key anywhere but the CA's own and (sealed) the node's store.
    let private = holds(tmp.path(), b"PRIVATE KEY");
    assert_eq!(private, vec![fleet.ca.join("ca.key")], "only the CA's key is in the clear anywhere");

    // A certificate for another node's request is refused; so is a request that was altered.
    let other = tmp.path().join("amb-08");
    ok(&["init", "--dir", d(&other), "--name", "amb-08", "--role", "edge", "--icb", "QHM"]);
    let other_csr = carried.join("amb-08.csr");
    ok(&["cert", "request", "--dir", d(&other), "--out", d(&other_csr)]);
    ok(&["ca", "sign", "--ca", d(&fleet.ca), d(&other_csr)]);
    let err = fails(&["cert", "install", "--dir", d(&amb), d(&carried.join("amb-08.pem"))], 2);
    assert!(err.contains("another key"), "{err}");
    let forged = carried.join("forged.csr");
    let text = std::fs::read_to_string(&other_csr).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mid = lines.len() / 2;
    let flipped: String = lines[mid].chars().rev().collect();
    lines[mid] = flipped;
    std::fs::write(&forged, lines.join("\n")).unwrap();
    let err = fails(&["ca", "sign", "--ca", d(&fleet.ca), d(&forged)], 2);
    assert!(err.contains("certificate request"), "{err}");

    // Installed: the status warns 30 days ahead and says what to do; the node syncs.
    let said = ok(&["cert", "install", "--dir", d(&amb), d(&pem)]);
    assert!(said.contains("certificate installed for amb-07"), "{said}");
    let status = ok(&["status", "--dir", d(&amb)]);
    assert!(status.contains("RENEW SOON") && status.contains("outpost cert request"), "{status}");
    let quic = format!("127.0.0.1:{}", free_port());
    let hubd = daemon(&hub, &["--listen", &quic], &[]);
    wait_until(Duration::from_secs(60), "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    let id = new_session(&amb);
    let report = json(&ok(&["sync", "--dir", d(&amb), "--peer", &quic, "--json"]));
    assert_eq!(report["peer"], "hub-qhm");
    assert!(ok(&["session", "list", "--dir", d(&hub)]).contains(&id));

    // Renewal: a new request leaves the current certificate working until the new one is in.
    ok(&["cert", "request", "--dir", d(&amb), "--out", d(&csr)]);
    ok(&["sync", "--dir", d(&amb), "--peer", &quic]);
    ok(&["ca", "sign", "--ca", d(&fleet.ca), d(&csr)]);
    ok(&["cert", "install", "--dir", d(&amb), d(&pem)]);
    let st = json(&ok(&["status", "--dir", d(&amb), "--json"]));
    let days = (st["certificate_valid_until_ms"].as_i64().unwrap() - now_ms()) / 86_400_000;
    assert!((360..=366).contains(&days), "renewed for a year: {days} days");
    assert!(!ok(&["status", "--dir", d(&amb)]).contains("RENEW SOON"));
    ok(&["sync", "--dir", d(&amb), "--peer", &quic]);
    // A request is used once: installing the same certificate again finds no pending request.
    let err = fails(&["cert", "install", "--dir", d(&amb), d(&pem)], 2);
    assert!(err.contains("no pending certificate request"), "{err}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
