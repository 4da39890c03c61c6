//! The thundering herd: many edge processes, each with new sessions written while a mast was
//! down, reconnect to one hub at once when it comes back. Everything must reach the hub and
//! every edge must learn that it has; the time it takes, the hub's peak memory and the hub's
//! CPU with every edge connected and nothing to send (10 s; 3 s in the fast tier) go into
//! `target/field-results/herd-N.json`.
//!
//! Fast tier: 20 edges. Full tier (`--include-ignored`, in release): 200 edges, each its own
//! `outpost run` process, and 1,000 edges, hosted 125 to a process by `outpost-field-herd`
//! (each still a whole node with its own store, keys and QUIC connection: 1,000 processes of
//! about 25 MiB do not fit this machine). While the herd reconnects, an honest desk beside the
//! hub syncs again and again; its sync times, before and during the herd, are recorded.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use field_tests::{Daemon, Field, Link, free_addr, s};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-field-node");
const HERD_BIN: &str = env!("CARGO_BIN_EXE_outpost-field-herd");
/// Edges per `outpost-field-herd` process.
const PER_HOST: usize = 125;

/// A process hosting many edge daemons; killed when dropped.
struct Host(std::process::Child);

impl Host {
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user and system) a process has used so far, in clock ticks of 10 ms.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in brackets and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields of the line, the 12th and 13th here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// One `outpost sync` of the honest desk with the hub: its wall time in ms, if it succeeded.
fn honest_sync(f: &Field, desk: &std::path::Path, hub_addr: &str) -> Option<f64> {
    let t = Instant::now();
    let out = f.outpost(&["sync", "--dir", s(desk), "--peer", hub_addr, "--timeout", "60"]);
    out.status.success().then(|| t.elapsed().as_secs_f64() * 1e3)
}

struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Runs `work(i)` for i in 0..n on a few threads.
fn parallel(n: usize, work: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    work(i);
                }
            });
        }
    });
}

fn herd(edges: usize, hosted: bool) {
    let mut f = Field::new(BIN, &format!("herd-{edges}"));
    let ca = f.ca();
    let hub = f.node("hub-qhm", "hub", &[]);
    // The honest peer: a desk on the hospital network, beside the hub (another service line:
    // the herd's sessions are not its business).
    let desk = f.node("desk-derm-1", "desk", &["--org", "RTH", "--service-line", "dermatology"]);
    let hub_addr = free_addr();
    // The mast the edges reach the hub through is down.
    let link = Link::start("urban-4g", &hub_addr, f.seed);
    link.set_up(false);
    let hubd = f.daemon(&hub, &["--listen", &hub_addr]);
    f.wait(Duration::from_secs(60), Duration::from_millis(100), "the hub to listen", || {
        hubd.log_text().contains("outpost daemon started")
    });

    let dirs: Vec<PathBuf> = (0..edges).map(|i| f.dir.join(format!("edge-{i:03}"))).collect();
    let written: Mutex<Vec<(usize, String, String)>> = Mutex::new(Vec::new());
    let setup = Instant::now();
    parallel(edges, |i| {
        let d = &dirs[i];
        let name = format!("edge-{i:03}");
        f.ok(&[
            "init",
            "--dir",
            s(d),
            "--name",
            &name,
            "--role",
            "edge",
            "--icb",
            "QHM",
            "--org",
            &format!("B8{i:04}"),
        ]);
        f.ok(&["ca", "issue", "--ca", s(&ca), "--node", s(d)]);
    });
    let (daemons, hosts): (Vec<Daemon>, Vec<Host>) = if hosted {
        let hosts = dirs
            .chunks(PER_HOST)
            .map(|group| {
                let mut cmd = std::process::Command::new(HERD_BIN);
                cmd.arg(&link.addr)
                    .args(group)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::inherit());
                let mut child = cmd.spawn().unwrap_or_else(|e| f.fail(format!("cannot start {HERD_BIN}: {e}")));
                let mut line = String::new();
                let stdout = child.stdout.take().unwrap();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
                assert!(line.starts_with("herd started"), "a herd host failed to start: {line:?}");
                Host(child)
            })
            .collect();
        (Vec::new(), hosts)
    } else {
        (dirs.iter().map(|d| f.daemon(d, &["--peer", &link.addr])).collect(), Vec::new())
    };
    let outage = Instant::now();
    // Offline work on every edge while the mast is down.
    parallel(edges, |i| {
        let id = f.new_session(&dirs[i], "cardiology", "gp_urgent", &format!("palpitations, edge {i}"));
        let m = f.message(&dirs[i], &id, "ECG attached to the record; advice please");
        written.lock().unwrap().push((i, id, m));
    });
    let setup_s = setup.elapsed().as_secs_f64();
    let written = written.into_inner().unwrap();
    assert_eq!(written.len(), edges);
    assert!(f.session_ids(&hub).is_empty(), "nothing reached the hub through a dead mast");
    // The outage lasts at least 20 s: long enough for the edges' dial backoff to have grown.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(outage.elapsed()));
    let hub_rss_before = hubd.rss_kib().unwrap_or(0);
    let edge_rss: u64 =
        daemons.iter().filter_map(Daemon::rss_kib).sum::<u64>() + hosts.iter().filter_map(Host::rss_kib).sum::<u64>();
    // The honest desk's syncs while the mast is down: the yardstick.
    let mut quiet: Vec<f64> = (0..5).filter_map(|_| honest_sync(&f, &desk, &hub_addr)).collect();
    assert_eq!(quiet.len(), 5, "the desk syncs with the hub");
    let herd_on = std::sync::atomic::AtomicBool::new(true);
    let during: Mutex<Vec<f64>> = Mutex::new(Vec::new());

    let (to_hub, all_acked, peak) = std::thread::scope(|scope| {
        // The honest desk keeps syncing while the herd comes in.
        scope.spawn(|| {
            while herd_on.load(Ordering::Relaxed) {
                if let Some(ms) = honest_sync(&f, &desk, &hub_addr) {
                    during.lock().unwrap().push(ms);
                }
            }
        });
        // Stops the desk's loop however this ends (a failed wait panics).
        let _stop = StopOnDrop(&herd_on);
        {
            // The mast comes back: every edge's backoff ends within its 30 s cap, all close together.
            let t0 = Instant::now();
            link.set_up(true);
            let mut peak = 0u64;
            let to_hub =
                f.wait(Duration::from_secs(600), Duration::from_millis(500), "every edge's session at the hub", || {
                    peak = peak.max(hubd.rss_kib().unwrap_or(0));
                    f.session_ids(&hub).len() == edges
                });
            // Every message at the hub, and every edge told so (its receipt says "at hub").
            for (i, id, m) in &written {
                let v = f.export(&hub, id).unwrap_or_else(|| f.fail(format!("the hub lacks edge {i}'s session")));
                assert!(
                    v["messages"].as_array().unwrap().iter().any(|x| x["id"] == m.as_str()),
                    "the hub lacks edge {i}'s message"
                );
            }
            let acked = Mutex::new(0usize);
            parallel(edges, |k| {
                let (i, id, _) = &written[k];
                f.wait(
                    Duration::from_secs(600),
                    Duration::from_millis(500),
                    &format!("edge {i} to learn its message is at the hub"),
                    || f.export(&dirs[*i], id).is_some_and(|v| v["messages"][0]["receipt"] == "hub"),
                );
                *acked.lock().unwrap() += 1;
            });
            assert_eq!(*acked.lock().unwrap(), edges);
            (to_hub, t0.elapsed(), peak)
        }
    });
    let mut during = during.into_inner().unwrap();
    assert!(!during.is_empty(), "the honest desk synced during the herd");
    let hub_peak = hubd.peak_rss_kib().unwrap_or(0).max(peak);
    let connected = hubd.log_text().matches("connected peer=edge-").count();
    // Then every edge connected and nothing to do: what the hub spends on idle connections
    // (and whether any connection is made again meanwhile).
    std::thread::sleep(Duration::from_secs(3));
    // 10 s in the full tier; the fast tier's 20 edges, 3 s.
    let idle_s = if edges >= 200 { 10.0 } else { 3.0 };
    let hub_pid = hubd.pid().expect("the hub runs");
    let idle_before = cpu_ticks(hub_pid).expect("the hub's CPU");
    std::thread::sleep(Duration::from_secs_f64(idle_s));
    let idle_hub_ms = cpu_ticks(hub_pid).expect("the hub's CPU").saturating_sub(idle_before) as f64 * 10.0;
    let still = hubd.log_text().matches("connected peer=edge-").count();
    let summary = json!({
        "seed": f.seed,
        "edges": edges,
        "sessions": edges,
        "setup_s": setup_s,
        "all_at_hub_s": to_hub.as_secs_f64(),
        "all_edges_acknowledged_s": all_acked.as_secs_f64(),
        "hub_rss_before_mib": hub_rss_before as f64 / 1024.0,
        "hub_peak_rss_mib": hub_peak as f64 / 1024.0,
        "hub_peak_per_edge_kib": hub_peak.saturating_sub(hub_rss_before) as f64 / edges as f64,
        "edges_rss_total_mib": edge_rss as f64 / 1024.0,
        "connections_logged_at_hub": connected,
        "hub_idle_cpu_percent": idle_hub_ms / (idle_s * 1000.0) * 100.0,
        "hub_idle_cpu_us_per_edge_per_s": idle_hub_ms * 1000.0 / idle_s / edges as f64,
        "connections_logged_at_hub_after_idle": still,
        "wire_bytes": link.wire_bytes(),
        "edges_hosted_per_process": if hosted { PER_HOST } else { 1 },
        "honest_desk_sync_ms_mast_down_median": percentile(&mut quiet, 0.5),
        "honest_desk_syncs_during_herd": during.len(),
        "honest_desk_sync_ms_during_herd_median": percentile(&mut during, 0.5),
        "honest_desk_sync_ms_during_herd_max": percentile(&mut during, 1.0),
    });
    eprintln!("{summary}");
    f.record(&summary);
    drop(daemons);
    drop(hosts);
}

#[test]
fn twenty_edges_reconnecting_at_once_all_reach_the_hub() {
    herd(20, false);
}

#[test]
#[ignore = "full tier: cargo test --release -p field-tests -- --include-ignored"]
fn two_hundred_edges_reconnecting_at_once_all_reach_the_hub() {
    herd(200, false);
}

#[test]
#[ignore = "full tier: cargo test --release -p field-tests -- --include-ignored"]
fn a_thousand_edges_reconnecting_at_once_all_reach_the_hub_while_a_desk_keeps_syncing() {
    herd(1000, true);
}
