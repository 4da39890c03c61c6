//! A small fleet of real `outpost` processes on loopback: a CA, nodes, daemons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{BIN, json, ok};

/// A daemon process, killed when dropped; its log is kept in its node directory.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `outpost run` for the node in `dir` with extra arguments and environment.
pub fn daemon(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let log = dir.join("daemon.log");
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--dir", dir.to_str().unwrap()])
        .args(args)
        .env_remove("OUTPOST_NODE_KEY")
        .env("OUTPOST_LOG", std::env::var("OUTPOST_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::null())
        .stderr(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon { child: cmd.spawn().unwrap(), log }
}

/// `outpost user add`, the secret on standard input.
pub fn add_user(dir: &Path, name: &str, role: &str, registration: &str, secret: &str) {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(["user", "add", "--dir", dir.to_str().unwrap(), "--name", name, "--role", role])
        .args(["--registration", registration])
        .env_remove("OUTPOST_NODE_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{secret}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "user add: {}", String::from_utf8_lossy(&out.stderr));
}

/// Polls `check` every 50 ms until it holds, or panics after `limit` with `what`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fleet directory: a CA and helpers to make nodes.
pub struct Fleet {
    pub root: PathBuf,
    pub ca: PathBuf,
}

impl Fleet {
    pub fn new(root: &Path) -> Fleet {
        let ca = root.join("ca");
        ok(&["ca", "init", "--dir", ca.to_str().unwrap()]);
        Fleet { root: root.to_path_buf(), ca }
    }

    /// Initialises a node and issues its certificate. `extra` goes to `outpost init`.
    pub fn node(&self, name: &str, role: &str, extra: &[&str]) -> PathBuf {
        let dir = self.root.join(name);
        let mut args = vec!["init", "--dir", dir.to_str().unwrap(), "--name", name, "--role", role, "--icb", "QHM"];
        args.extend_from_slice(extra);
        ok(&args);
        ok(&["ca", "issue", "--ca", self.ca.to_str().unwrap(), "--node", dir.to_str().unwrap()]);
        dir
    }

    /// The three most tests need, initialised and certified: the hub `hub-qhm`, the
    /// ambulance `amb-07` and the dermatology desk `desk-derm-1` (their directories).
    pub fn hub_amb_derm_desk(&self) -> (PathBuf, PathBuf, PathBuf) {
        let hub = self.node("hub-qhm", "hub", &[]);
        let amb = self.node("amb-07", "edge", &[]);
        let desk = self.node("desk-derm-1", "desk", &["--service-line", "dermatology"]);
        (hub, amb, desk)
    }
}

/// The session as JSON.
pub fn view(dir: &Path, id: &str) -> serde_json::Value {
    json(&ok(&["session", "export", "--dir", dir.to_str().unwrap(), id, "--format", "json"]))
}

/// The message texts of a session, in order, or none if the node lacks it.
pub fn texts(dir: &Path, id: &str) -> Option<Vec<String>> {
    let out = super::run(&["session", "export", "--dir", dir.to_str().unwrap(), id, "--format", "json"]);
    if !out.status.success() {
        return None;
    }
    let v = json(&String::from_utf8_lossy(&out.stdout));
    Some(v["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().to_string()).collect())
}

/// `outpost sync` to a peer, returning its JSON report.
pub fn sync(dir: &Path, peer: &str) -> serde_json::Value {
    json(&ok(&["sync", "--dir", dir.to_str().unwrap(), "--peer", peer, "--json", "--timeout", "60"]))
}
