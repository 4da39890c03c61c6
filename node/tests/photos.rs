//! Photos between real processes: verified chunks, receipts, offload, resume, priority.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fleet::{Fleet, daemon, free_port, sync, view, wait_until};
use common::{fails, json, ok, run};
use outpost_node::linkem::{EmulatorOptions, LinkEmulator};

const LIMIT: Duration = Duration::from_secs(60);

fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn new_session(dir: &Path) -> String {
    ok(&[
        "session",
        "new",
        "--dir",
        d(dir),
        "--service-line",
        "dermatology",
        "--care-setting",
        "ambulance_on_scene",
        "--nhs-number",
        "9434765919",
        "--summary",
        "Lesion on the forearm",
    ])
    .trim()
    .to_string()
}

fn attach(dir: &Path, id: &str, file: &Path, w: u32, h: u32, seed: u64) -> (String, Vec<u8>) {
    let photo = outpost_node::photo::synthetic_jpeg(w, h, seed).unwrap();
    std::fs::write(file, &photo.bytes).unwrap();
    let out = json(&ok(&[
        "photo",
        "attach",
        "--dir",
        d(dir),
        id,
        d(file),
        "--view",
        "close-up",
        "--body-site",
        "left forearm",
        "--consent",
        "verbal",
        "--json",
    ]));
    (out["hash"].as_str().unwrap().to_string(), photo.bytes)
}

/// Chunks of a blob stored at a node (read from its database, as the daemon writes it).
fn chunks_at(dir: &Path, hash: &str) -> i64 {
    let Ok(conn) = rusqlite::Connection::open(dir.join("outpost.db")) else { return 0 };
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row("SELECT count(*) FROM blob_chunks WHERE hash = ?1", [hash], |r| r.get(0)).unwrap_or(0)
}

fn slow_link(rt: &tokio::runtime::Runtime, to: &str, bps: u64) -> LinkEmulator {
    let mut p = sync_protocol::links::profile("urban-4g").unwrap();
    p.loss = sync_protocol::links::GilbertElliott::NONE;
    p.rtt_ms = (20.0, 30.0);
    p.uplink_bps = bps;
    p.downlink_bps = bps;
    rt.block_on(LinkEmulator::start("127.0.0.1:0".parse().unwrap(), to.parse().unwrap(), p, EmulatorOptions::default()))
        .unwrap()
}

/// A hub daemon, an ambulance with one photo of `w`x`h` attached, and a 4 Mbit/s link between.
struct SlowUpload {
    tmp: tempfile::TempDir,
    hub: std::path::PathBuf,
    amb: std::path::PathBuf,
    hub_addr: String,
    hubd: common::fleet::Daemon,
    link: LinkEmulator,
    /// Runs the link: keep it bound for the whole test.
    _rt: tokio::runtime::Runtime,
    hash: String,
    bytes: Vec<u8>,
    /// The photo's chunks.
    total: i64,
}

fn slow_upload(w: u32, h: u32, seed: u64) -> SlowUpload {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let hub_addr = format!("127.0.0.1:{}", free_port());
    let hubd = daemon(&hub, &["--listen", &hub_addr], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let link = slow_link(&rt, &hub_addr, 4_000_000);
    let id = new_session(&amb);
    let (hash, bytes) = attach(&amb, &id, &tmp.path().join("p.jpg"), w, h, seed);
    let total = i64::try_from(view(&amb, &id)["media"][0]["size"].as_u64().unwrap().div_ceil(16 * 1024)).unwrap();
    assert!(total > 30, "a photo of {total} chunks");
    wait_until(LIMIT, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    SlowUpload { tmp, hub, amb, hub_addr, hubd, link, _rt: rt, hash, bytes, total }
}

#[test]
fn photos_reach_hub_and_desk_verified_and_the_edge_keeps_only_a_thumbnail() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let (hub, amb, desk) = fleet.hub_amb_derm_desk();
    let addr = format!("127.0.0.1:{}", free_port());
    let _hub = daemon(&hub, &["--listen", &addr], &[]);
    let id = new_session(&amb);
    let (hash, bytes) = attach(&amb, &id, &tmp.path().join("p.jpg"), 800, 600, 5);
    assert_eq!(view(&amb, &id)["media"][0]["receipt"], "device");
    wait_until(LIMIT, "a sync", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());

    // At the hub: the photo, whole and verified, and its receipt back at the ambulance.
    let at_hub = tmp.path().join("at-hub.jpg");
    ok(&["photo", "get", "--dir", d(&hub), &hash, "--out", d(&at_hub)]);
    assert_eq!(std::fs::read(&at_hub).unwrap(), bytes);
    assert_eq!(view(&amb, &id)["media"][0]["receipt"], "hub");
    // The ambulance no longer holds the photo, only its thumbnail.
    let err = fails(&["photo", "get", "--dir", d(&amb), &hash, "--out", d(&tmp.path().join("x.jpg"))], 4);
    assert!(err.contains("held at the hub"), "{err}");
    let thumb = tmp.path().join("thumb.jpg");
    ok(&["photo", "get", "--dir", d(&amb), &hash, "--out", d(&thumb), "--thumbnail"]);
    let t = outpost_node::photo::load_photo(&thumb).unwrap();
    assert!(t.dimensions.0 <= 256 && t.dimensions.1 <= 256 && t.bytes.len() < bytes.len() / 4);

    // The desk fetches it from the hub; the consultant opens it; the ambulance learns both.
    let report = sync(&desk, &addr);
    assert_eq!(report["blobs_received"], 1, "{report}");
    let at_desk = tmp.path().join("at-desk.jpg");
    ok(&["photo", "get", "--dir", d(&desk), &hash, "--out", d(&at_desk)]);
    assert_eq!(std::fs::read(&at_desk).unwrap(), bytes);
    // A download is not a person looking: only `--read` says the consultant opened it.
    sync(&desk, &addr);
    sync(&amb, &addr);
    assert_eq!(view(&amb, &id)["media"][0]["receipt"], "desk");
    ok(&["photo", "get", "--dir", d(&desk), &hash, "--out", d(&at_desk), "--read"]);
    sync(&desk, &addr);
    sync(&amb, &addr);
    assert_eq!(view(&amb, &id)["media"][0]["receipt"], "read");
}

#[test]
fn a_photo_resumes_after_the_sender_or_the_receiver_restarts_mid_transfer() {
    let SlowUpload { tmp, hub, amb, hub_addr, mut hubd, link, _rt, hash, total, .. } = slow_upload(1280, 960, 9);
    let relay = link.local_addr.to_string();

    // 1. The sender is killed a third of the way.
    let mut sender = Command::new(common::BIN)
        .args(["sync", "--dir", d(&amb), "--peer", &relay])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(LIMIT, "a third of the photo at the hub", || chunks_at(&hub, &hash) >= total / 3);
    sender.kill().unwrap();
    sender.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after_sender_kill = chunks_at(&hub, &hash);
    assert!(after_sender_kill < total, "cut mid-transfer");

    // 2. The receiver is killed two thirds of the way.
    let mut sender = Command::new(common::BIN)
        .args(["sync", "--dir", d(&amb), "--peer", &relay, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(LIMIT, "two thirds of the photo at the hub", || chunks_at(&hub, &hash) >= 2 * total / 3);
    hubd.child.kill().unwrap();
    hubd.child.wait().unwrap();
    // The sender would wait for the connection's idle timeout; the link is gone, stop it.
    sender.kill().unwrap();
    sender.wait().unwrap();
    let after_receiver_kill = chunks_at(&hub, &hash);
    assert!(after_receiver_kill > after_sender_kill && after_receiver_kill < total, "{after_receiver_kill}/{total}");

    // 3. Everything back: the transfer resumes where the hub's store left it.
    let _hubd = daemon(&hub, &["--listen", &hub_addr], &[]);
    let mut report = serde_json::Value::Null;
    wait_until(LIMIT, "the resumed sync", || {
        let out = run(&["sync", "--dir", d(&amb), "--peer", &relay, "--json"]);
        if out.status.success() {
            report = json(&String::from_utf8_lossy(&out.stdout));
        }
        out.status.success()
    });
    assert_eq!(chunks_at(&hub, &hash), total);
    assert_eq!(
        report["chunks_sent"].as_i64().unwrap(),
        total - after_receiver_kill,
        "only the missing chunks were sent: {report}"
    );
    let got = tmp.path().join("got.jpg");
    ok(&["photo", "get", "--dir", d(&hub), &hash, "--out", d(&got)]);
    let _ = link.stats();
}

#[test]
fn a_nat_rebinding_mid_photo_moves_the_connection_and_sends_no_chunk_twice() {
    let SlowUpload { tmp, hub, amb, hubd, link, _rt, hash, bytes, total, .. } = slow_upload(1280, 960, 11);
    let relay = link.local_addr.to_string();

    let sender = Command::new(common::BIN)
        .args(["sync", "--dir", d(&amb), "--peer", &relay, "--json", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(LIMIT, "a third of the photo at the hub", || chunks_at(&hub, &hash) >= total / 3);
    // The carrier's NAT gives the tablet a new outside port mid-transfer.
    link.rebind();
    let out = sender.wait_with_output().unwrap();
    assert!(out.status.success(), "the one sync carried on: {}", String::from_utf8_lossy(&out.stderr));
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(chunks_at(&hub, &hash), total, "the whole photo at the hub");
    let sent = report["chunks_sent"].as_i64().unwrap();
    assert!(sent <= total + 1, "at most one chunk sent twice: {sent} sent for {total}");
    let got = tmp.path().join("got.jpg");
    ok(&["photo", "get", "--dir", d(&hub), &hash, "--out", d(&got)]);
    assert_eq!(std::fs::read(&got).unwrap(), bytes);
    assert_eq!(link.stats().mappings, 2, "the tablet was seen from a second outside address");
    // The hub saw the same connection from a second address: one conversation, not two.
    assert_eq!(hubd.log_text().matches("connected peer=amb-07").count(), 1, "{}", hubd.log_text());
}

#[test]
fn a_message_typed_during_a_photo_upload_arrives_before_the_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let hub_addr = format!("127.0.0.1:{}", free_port());
    let hubd = daemon(&hub, &["--listen", &hub_addr], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let link = slow_link(&rt, &hub_addr, 3_000_000);
    let relay = link.local_addr.to_string();
    let id = new_session(&amb);
    wait_until(LIMIT, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    wait_until(LIMIT, "a first sync", || run(&["sync", "--dir", d(&amb), "--peer", &relay]).status.success());
    let _ambd = daemon(&amb, &["--peer", &relay], &[]);
    let (hash, _) = attach(&amb, &id, &tmp.path().join("p.jpg"), 1920, 1440, 3);
    let total = i64::try_from(view(&amb, &id)["media"][0]["size"].as_u64().unwrap().div_ceil(16 * 1024)).unwrap();
    wait_until(LIMIT, "the upload to be under way", || chunks_at(&hub, &hash) >= total / 10);
    ok(&["message", "send", "--dir", d(&amb), &id, "typed while the photo goes up"]);
    let mut chunks_when_message_arrived = 0;
    wait_until(LIMIT, "the message at the hub", || {
        let here =
            common::fleet::texts(&hub, &id).is_some_and(|t| t.contains(&"typed while the photo goes up".to_string()));
        if here {
            chunks_when_message_arrived = chunks_at(&hub, &hash);
        }
        here
    });
    assert!(
        chunks_when_message_arrived < total,
        "the message waited for the whole photo ({chunks_when_message_arrived}/{total} chunks)"
    );
}

#[test]
fn status_tells_the_crew_what_has_not_left_the_device_and_when_it_last_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let status = |dir: &Path| json(&ok(&["status", "--dir", d(dir), "--json"]));
    let id = new_session(&amb);
    ok(&["message", "send", "--dir", d(&amb), &id, "Lesion 14 mm"]);
    let (_, bytes) = attach(&amb, &id, &tmp.path().join("p.jpg"), 800, 600, 9);
    let before = status(&amb);
    let left = &before["not_yet_left_this_device"];
    assert_eq!(left["items"], 2, "a message and a photo: {before}");
    assert_eq!(left["sessions"], 1);
    assert_eq!(left["photo_bytes"], bytes.len() as u64);
    assert_eq!(before["photos"]["held"][0], 1);
    assert_eq!(before["peers"].as_array().unwrap().len(), 0, "never synced");
    let until = before["certificate_valid_until_ms"].as_i64().unwrap();
    assert!(until > outpost_node::node::now_ms() + 20 * 86_400_000, "{before}");
    let text = ok(&["status", "--dir", d(&amb)]);
    assert!(text.contains("not yet left this device: 2 messages and photos in 1 sessions"), "{text}");

    let addr = format!("127.0.0.1:{}", free_port());
    let _hub = daemon(&hub, &["--listen", &addr], &[]);
    let t0 = outpost_node::node::now_ms();
    wait_until(LIMIT, "a sync", || run(&["sync", "--dir", d(&amb), "--peer", &addr]).status.success());
    sync(&amb, &addr);
    let after = status(&amb);
    let left = &after["not_yet_left_this_device"];
    assert_eq!((left["items"].as_u64(), left["photo_bytes"].as_u64()), (Some(0), Some(0)), "{after}");
    // The photo itself went to the hub: the tablet no longer counts it as held.
    assert_eq!(after["photos"]["held"][0], 0, "{after}");
    assert_eq!(after["photos"]["offloaded"][0], 1, "{after}");
    let peers = after["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["peer"], "hub-qhm");
    assert!(peers[0]["last_ok_ms"].as_i64().unwrap() >= t0, "{after}");
    let text = ok(&["status", "--dir", d(&amb)]);
    assert!(text.contains("peer hub-qhm: last complete sync"), "{text}");
    assert!(text.contains("0 held here") && text.contains("1 handed to the hub"), "{text}");
}
