//! `outpost run` as a service: SIGTERM in the middle of a sync and a photo transfer ends it
//! cleanly (exit 0, the peer told why, nothing acknowledged lost), one directory has one
//! daemon, and the health endpoints say what a supervisor needs.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{Fleet, daemon, free_port, wait_until};
use common::{BIN, json, ok};

const LIMIT: Duration = Duration::from_secs(60);

fn d(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn status(dir: &Path) -> serde_json::Value {
    json(&ok(&["status", "--dir", d(dir), "--json"]))
}

#[test]
fn sigterm_during_a_photo_transfer_exits_cleanly_loses_nothing_and_one_directory_has_one_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &[]);
    let quic = format!("127.0.0.1:{}", free_port());
    let mut hubd = daemon(&hub, &["--listen", &quic], &[]);
    wait_until(LIMIT, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));

    // A second daemon on the same directory is refused (exit 7), saying which process holds it.
    let mut second = Command::new(BIN)
        .args(["run", "--dir", d(&hub), "--listen", &format!("127.0.0.1:{}", free_port())])
        .env_remove("OUTPOST_NODE_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let code = loop {
        if let Some(code) = second.try_wait().unwrap() {
            break code;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let _ = second.kill();
            panic!("a second daemon started on the same directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut refused = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut refused).unwrap();
    assert_eq!(code.code(), Some(7), "{refused}");
    assert!(refused.contains("already runs") && refused.contains(&hubd.child.id().to_string()), "{refused}");

    // The crew's session: a message, then a 3 MB photo over a 384 kbit/s link (about a minute).
    let id = common::new_session(&amb);
    ok(&["message", "send", "--dir", d(&amb), &id, "Photo of the left forearm coming"]);
    let photo = outpost_node::photo::synthetic_jpeg(2048, 1536, 5).unwrap();
    let photo_path = tmp.path().join("forearm.jpg");
    std::fs::write(&photo_path, &photo.bytes).unwrap();
    let attach_args = ["photo", "attach", "--dir", d(&amb), &id, d(&photo_path), "--view", "close-up"];
    ok(&[&attach_args[..], &["--body-site", "left forearm", "--consent", "verbal"]].concat());
    let relay = format!("127.0.0.1:{}", free_port());
    let mut link = Command::new(BIN)
        .args(["linkem", "--listen", &relay, "--to", &quic, "--profile", "3g-fallback", "--seed", "7"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sync = Command::new(BIN)
        .args(["sync", "--dir", d(&amb), "--peer", &relay, "--timeout", "300"])
        .env_remove("OUTPOST_NODE_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The message is acknowledged (the tablet holds the hub's receipt) and some of the photo's
    // chunks are stored at the hub.
    wait_until(LIMIT, "the message acknowledged and the photo under way", || {
        let shown = json(&ok(&["session", "show", "--dir", d(&amb), &id, "--json"]));
        shown["messages"][0]["receipt"] == "hub" && status(&hub)["photos"]["partial"][0].as_u64().unwrap_or(0) > 0
    });

    // systemd stops the hub.
    let started = Instant::now();
    let term = Command::new("kill").args(["-TERM", &hubd.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let code = loop {
        if let Some(code) = hubd.child.try_wait().unwrap() {
            break code;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the hub did not stop within 15 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "SIGTERM ends the daemon with exit 0: {code:?}\n{}", hubd.log_text());
    let log = hubd.log_text();
    assert!(log.contains("SIGTERM") && log.contains("stopped cleanly"), "{log}");
    // The crew's sync is told why, and says it did not complete (exit 6, not a success).
    let out = sync.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{said}");
    assert!(said.contains("shutting down"), "the peer closed with its reason: {said}");
    let _ = link.kill();
    let _ = link.wait();

    // Nothing the hub acknowledged is lost: the message is there before any new sync.
    let shown = json(&ok(&["session", "show", "--dir", d(&hub), &id, "--json"]));
    assert_eq!(shown["messages"][0]["text"], "Photo of the left forearm coming");
    // Restarted, the hub takes the rest of the photo and the crew's tablet hands it over.
    let _hubd = daemon(&hub, &["--listen", &quic], &[]);
    wait_until(LIMIT, "the photo whole at the hub", || {
        let _ = common::run(&["sync", "--dir", d(&amb), "--peer", &quic]);
        status(&hub)["photos"]["held"][0].as_u64() == Some(1)
    });
    drop(hubd);
}

#[test]
fn health_and_readiness_answer_without_a_token_and_say_nothing_private() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let amb = fleet.node("amb-07", "edge", &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _amb = daemon(&amb, &["--api", &format!("127.0.0.1:{port}")], &[]);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let get = |path: &str| {
        let mut r = agent.get(&format!("http://127.0.0.1:{port}{path}")).call()?;
        Ok::<_, ureq::Error>((r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()))
    };
    wait_until(LIMIT, "the API", || get("/healthz").is_ok());
    let (status, body) = get("/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"], "ok");
    let (status, body) = get("/readyz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["node"], "amb-07");
    assert!(!body.contains("session"), "{body}");
}
