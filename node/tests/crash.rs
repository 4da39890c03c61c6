//! Durability: a writer killed with SIGKILL at random moments loses nothing it acknowledged,
//! and the database stays intact.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{init_edge, json, new_session, ok};
use rand::{Rng, SeedableRng};

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    init_edge(&dir);
    let id = new_session(&dir);
    let dir_s = dir.to_str().unwrap();

    let mut acked: Vec<String> = Vec::new();
    const KILLS: usize = 20;
    for round in 0..KILLS {
        let mut child = Command::new(common::BIN)
            .args(["debug", "write-loop", "--dir", dir_s, &id])
            .env_remove("OUTPOST_NODE_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.strip_prefix("ack ").map(str::to_string))
                .collect::<Vec<_>>()
        });
        // Let it start and write for a random while, then kill it mid-flight.
        std::thread::sleep(Duration::from_millis(rng.random_range(30..400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let got = reader.join().unwrap();
        acked.extend(got);

        // After every kill: the database is intact and every acknowledged write is there.
        let conn = rusqlite::Connection::open(dir.join("outpost.db")).unwrap();
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok", "seed {seed}, round {round}");
        drop(conn);
        let view = json(&ok(&["session", "export", "--dir", dir_s, &id, "--format", "json"]));
        let present: std::collections::HashSet<String> = view["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .chain(view["media"].as_array().unwrap().iter().map(|m| m["hash"].as_str().unwrap().to_string()))
            .collect();
        for a in &acked {
            assert!(present.contains(a), "seed {seed}, round {round}: acknowledged write {a} was lost");
        }
        for m in view["media"].as_array().unwrap() {
            let hash = m["hash"].as_str().unwrap();
            let out = tmp.path().join("photo.out");
            ok(&["photo", "get", "--dir", dir_s, hash, "--out", out.to_str().unwrap()]);
        }
        ok(&["audit", "verify", "--dir", dir_s]);
    }
    eprintln!("{KILLS} kills, {} acknowledged writes checked after every kill", acked.len());
    assert!(acked.len() >= KILLS, "seed {seed}: too few writes to mean anything ({})", acked.len());
}
