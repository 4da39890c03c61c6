//! Crashes: the hub and the edges are killed with SIGKILL at random moments while clinicians
//! keep writing and the nodes sync (messages, sessions and photos in flight), then restarted.
//! Nothing a node acknowledged may be lost, and every replica must converge. The seed of the
//! schedule is printed; `FIELD_SEED` reruns it.
//!
//! Fast tier: 8 kills. Full tier (`--include-ignored`): 50 kills.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use field_tests::{Daemon, Field, Link, free_addr, has_receipt, photo_file};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-field-node");

#[derive(Debug, Clone)]
struct Written {
    edge: usize,
    session: String,
    line: &'static str,
    messages: Vec<String>,
    photos: Vec<String>,
}

fn crash_loop(name: &str, kills: u32) {
    let mut f = Field::new(BIN, name);
    let hub = f.node("hub-qhm", "hub", &[]);
    let desk = f.node("desk-derm-1", "desk", &["--org", "RTH", "--service-line", "dermatology"]);
    let edges: Vec<PathBuf> =
        vec![f.node("surgery-12", "edge", &["--org", "B82005"]), f.node("amb-07", "edge", &["--org", "RX6"])];
    let photos: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = f.dir.join(format!("photo-{i}.jpg"));
            photo_file(&p, f.seed + i, 300_000);
            p
        })
        .collect();
    let hub_addr = free_addr();
    let link = Link::start("urban-4g", &hub_addr, f.seed);
    let hubd = f.daemon(&hub, &["--listen", &hub_addr]);
    f.wait(Duration::from_secs(60), Duration::from_millis(100), "the hub to listen", || {
        hubd.log_text().contains("outpost daemon started")
    });
    let _deskd = f.daemon(&desk, &["--peer", &hub_addr]);
    let edge_daemons: Vec<Daemon> = edges.iter().map(|e| f.daemon(e, &["--peer", &link.addr])).collect();
    // Daemons that may be killed: 0 the hub, 1.. the edges.
    let daemons: Vec<Mutex<Daemon>> = std::iter::once(hubd).chain(edge_daemons).map(Mutex::new).collect();

    let written: Mutex<Vec<Written>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let mut kill_log: Vec<(f64, &str)> = Vec::new();
    let names = ["hub-qhm", "surgery-12", "amb-07"];
    let started = Instant::now();
    let failures = std::thread::scope(|scope| {
        // The clinicians: write on either edge whatever the daemons are doing.
        let writer = scope.spawn(|| {
            let mut rng = ChaCha8Rng::seed_from_u64(f.seed ^ 0xC1_1C);
            let mut failures = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let edge = rng.random_range(0..edges.len());
                let dir = &edges[edge];
                let mine: Vec<usize> = written
                    .lock()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.edge == edge)
                    .map(|(i, _)| i)
                    .collect();
                let roll: f64 = rng.random();
                n += 1;
                if mine.is_empty() || roll < 0.3 {
                    let line = if rng.random::<bool>() { "dermatology" } else { "cardiology" };
                    let setting = if edge == 0 { "gp_urgent" } else { "ambulance_on_scene" };
                    let out = f.outpost(&[
                        "session",
                        "new",
                        "--dir",
                        dir.to_str().unwrap(),
                        "--service-line",
                        line,
                        "--priority",
                        "urgent",
                        "--care-setting",
                        setting,
                        "--nhs-number",
                        "9434765919",
                        "--summary",
                        &format!("case {n} of the crash loop"),
                    ]);
                    if out.status.success() {
                        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
                        written.lock().unwrap().push(Written {
                            edge,
                            session: id,
                            line,
                            messages: vec![],
                            photos: vec![],
                        });
                    } else {
                        failures.push(format!("session new: {}", String::from_utf8_lossy(&out.stderr)));
                    }
                } else {
                    let i = mine[rng.random_range(0..mine.len())];
                    let session = written.lock().unwrap()[i].session.clone();
                    if roll < 0.85 {
                        let out = f.outpost(&[
                            "message",
                            "send",
                            "--dir",
                            dir.to_str().unwrap(),
                            &session,
                            &format!("note {n}"),
                            "--json",
                        ]);
                        match out
                            .status
                            .success()
                            .then(|| {
                                field_tests::json(&String::from_utf8_lossy(&out.stdout))["message"]
                                    .as_str()
                                    .map(str::to_string)
                            })
                            .flatten()
                        {
                            Some(m) => written.lock().unwrap()[i].messages.push(m),
                            None => failures.push(format!("message send: {}", String::from_utf8_lossy(&out.stderr))),
                        }
                    } else {
                        let file = &photos[rng.random_range(0..photos.len())];
                        let out = f.outpost(&[
                            "photo",
                            "attach",
                            "--dir",
                            dir.to_str().unwrap(),
                            &session,
                            file.to_str().unwrap(),
                            "--view",
                            "close-up",
                            "--body-site",
                            "back",
                            "--consent",
                            "verbal",
                            "--json",
                        ]);
                        match out
                            .status
                            .success()
                            .then(|| {
                                field_tests::json(&String::from_utf8_lossy(&out.stdout))["hash"]
                                    .as_str()
                                    .map(str::to_string)
                            })
                            .flatten()
                        {
                            Some(h) => {
                                let mut w = written.lock().unwrap();
                                if !w[i].photos.contains(&h) {
                                    w[i].photos.push(h);
                                }
                            }
                            None => failures.push(format!("photo attach: {}", String::from_utf8_lossy(&out.stderr))),
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(rng.random_range(20..250)));
            }
            failures
        });
        // The killer.
        let mut rng = ChaCha8Rng::seed_from_u64(f.seed);
        for k in 0..kills {
            std::thread::sleep(Duration::from_millis(rng.random_range(300..3000)));
            // Every third kill is the hub's; the others hit an edge at random.
            let target = if k % 3 == 1 { 0 } else { rng.random_range(1..daemons.len()) };
            daemons[target].lock().unwrap().kill9();
            kill_log.push((started.elapsed().as_secs_f64(), names[target]));
            std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
            daemons[target].lock().unwrap().start();
        }
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    if !failures.is_empty() {
        f.fail(format!(
            "{} writes were refused while daemons were being killed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        ));
    }
    let written = written.into_inner().unwrap();
    let (sessions, messages, photos_n) = (
        written.len(),
        written.iter().map(|w| w.messages.len()).sum::<usize>(),
        written.iter().map(|w| w.photos.len()).sum::<usize>(),
    );
    assert!(
        sessions >= 3 && messages >= 3,
        "the loop wrote too little to check ({sessions} sessions, {messages} messages)"
    );

    // Everything acknowledged is where it must be.
    let holds = |node: &Path, w: &Written, level: Option<(&str, &str)>| -> Result<(), String> {
        let v = f.export(node, &w.session).ok_or_else(|| format!("{} lacks session {}", node.display(), w.session))?;
        let msgs = v["messages"].as_array().cloned().unwrap_or_default();
        for m in &w.messages {
            let found = msgs
                .iter()
                .find(|x| x["id"] == m.as_str())
                .ok_or_else(|| format!("{} lacks message {m} of {}", node.display(), w.session))?;
            if level.is_none() && !matches!(found["receipt"].as_str(), Some("hub" | "desk" | "read")) {
                return Err(format!("{} does not yet show message {m} at the hub", node.display()));
            }
        }
        let media = v["media"].as_array().cloned().unwrap_or_default();
        for h in &w.photos {
            let found = media
                .iter()
                .find(|x| x["hash"] == h.as_str())
                .ok_or_else(|| format!("{} lacks photo {h}", node.display()))?;
            match level {
                Some((lvl, name)) if !has_receipt(found, lvl, name) => {
                    return Err(format!("{name} does not hold photo {h} whole"));
                }
                None if !matches!(found["receipt"].as_str(), Some("hub" | "desk" | "read")) => {
                    return Err(format!("{} does not yet show photo {h} at the hub", node.display()));
                }
                _ => {}
            }
        }
        Ok(())
    };
    let mut last_problem = String::new();
    let converge = f.wait(
        Duration::from_secs(600),
        Duration::from_secs(1),
        "every replica to converge after the last kill",
        || {
            let check = || -> Result<(), String> {
                for w in &written {
                    holds(&edges[w.edge], w, None)?;
                    holds(&hub, w, Some(("hub", "hub-qhm")))?;
                    if w.line == "dermatology" {
                        holds(&desk, w, Some(("desk", "desk-derm-1")))?;
                    }
                }
                Ok(())
            };
            match check() {
                Ok(()) => true,
                Err(e) => {
                    last_problem = e;
                    false
                }
            }
        },
    );
    // Scope held through it all: each edge holds exactly its own sessions; the desk only dermatology.
    for (i, e) in edges.iter().enumerate() {
        let mut mine: Vec<String> = written.iter().filter(|w| w.edge == i).map(|w| w.session.clone()).collect();
        let mut held = f.session_ids(e);
        mine.sort();
        held.sort();
        assert_eq!(held, mine, "edge {} holds other sessions than its own (seed {})", e.display(), f.seed);
    }
    let derm = written.iter().filter(|w| w.line == "dermatology").count();
    assert_eq!(f.session_ids(&desk).len(), derm, "the desk holds other lines' sessions (seed {})", f.seed);
    assert_eq!(f.session_ids(&hub).len(), sessions, "the hub holds every session (seed {})", f.seed);
    for node in [&hub, &desk, &edges[0], &edges[1]] {
        f.ok(&["audit", "verify", "--dir", node.to_str().unwrap()]);
    }
    let summary = json!({
        "seed": f.seed,
        "kills": kill_log.len(),
        "kills_by_node": names.iter().map(|n| (n.to_string(), kill_log.iter().filter(|k| k.1 == *n).count())).collect::<std::collections::BTreeMap<_, _>>(),
        "kill_times_s": kill_log.iter().map(|k| k.0).collect::<Vec<_>>(),
        "writes_checked": sessions + messages + photos_n,
        "sessions": sessions,
        "messages": messages,
        "photos": photos_n,
        "converged_after_last_restart_s": converge.as_secs_f64(),
        "last_unconverged_state": last_problem,
    });
    eprintln!("{summary}");
    f.record(&summary);
    drop(link);
}

#[test]
fn killed_nodes_lose_nothing_they_acknowledged_and_converge() {
    crash_loop("crash-loop", 8);
}

#[test]
#[ignore = "full tier: cargo test --release -p field-tests -- --include-ignored"]
fn fifty_kills_lose_nothing_acknowledged_and_converge() {
    crash_loop("crash-loop-long", 50);
}
