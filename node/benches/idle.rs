//! Idle benchmark: `cargo bench -p outpost-node --bench idle`
//!
//! What a node costs while nothing happens: a hub daemon and a tablet's daemon connected to
//! it (both in this process, each with its own store on disk, QUIC with mutual TLS on
//! loopback), left alone for `IDLE_SECS` (default 10) once the tablet's one session is at the
//! hub. Counted over that time, for the whole process: the threads' wake-ups (voluntary
//! context switches, from `/proc/self/task/*/status`: each is a sleep that ended, what keeps a
//! tablet's processor from its deep sleep) and CPU time.
//!
//! Baseline, in the same run: the same pair looking at its store for other processes' writes
//! every 50 ms, as every daemon did before the file system's word (inotify) woke it (its
//! watch stays set, so it also looks after each write it is told of, its own "last synced"
//! record every 10 s per connection included).

mod common;

use std::time::{Duration, Instant};

use common::make_node;
use outpost_node::net::{Daemon, RunOptions};
use outpost_node::node::{Node, SessionRequest, now_ms};
use outpost_node::tls::CaDir;
use sync_protocol::session::{Patient, Requester, Service};
use sync_protocol::vocab::{CareSetting, Channel, Priority, Role, ServiceLine};

/// Wake-ups of every thread of this process so far.
fn wakeups() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn cpu_ms() -> f64 {
    cpu_time::ProcessTime::now().as_duration().as_secs_f64() * 1e3
}

struct Idle {
    wakeups_per_s: f64,
    cpu_ms_per_min: f64,
}

fn idle_pair(recheck: Option<Duration>, secs: u64) -> Idle {
    let tmp = tempfile::Builder::new().prefix("outpost-idle-bench-").tempdir().expect("tempdir");
    let ca = CaDir::new(tmp.path().join("ca"));
    ca.init("bench").expect("ca");
    let edge = make_node(tmp.path(), &ca, "amb-07", Role::Edge);
    let hub = make_node(tmp.path(), &ca, "hub-qhm", Role::Hub);
    {
        let mut node = Node::open(&edge).expect("open edge");
        let req = SessionRequest {
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester::default(),
            patient: Patient::default(),
            service: Service { line: ServiceLine::ALL[0], channel: Channel::Message, priority: Priority::Urgent },
            summary: "Chest pain, settled; advice on conveyance".into(),
            draft: false,
        };
        node.new_session(req, now_ms()).expect("session");
    }
    // As `outpost run` has it on a two-core machine: two workers.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let opts = RunOptions { local_write_recheck: recheck, ..RunOptions::default() };
    let hubd = rt
        .block_on(Daemon::start(
            Node::open(&hub).expect("open hub"),
            RunOptions { listen: Some("127.0.0.1:0".parse().expect("addr")), ..opts.clone() },
        ))
        .expect("hub daemon");
    let addr = hubd.local_addr.expect("listening");
    let edged = rt
        .block_on(Daemon::start(Node::open(&edge).expect("open edge"), RunOptions { peers: vec![addr.into()], ..opts }))
        .expect("edge daemon");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = rt.block_on(hubd.with_node(|n| n.list(&Default::default()).map(|l| l.len()).unwrap_or(0)));
        if held.unwrap_or(0) == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the tablet's session never reached the hub");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the sync's aftermath (receipts, checkpoints) pass.
    std::thread::sleep(Duration::from_secs(2));
    let (w0, c0, t0) = (wakeups(), cpu_ms(), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (w1, c1, elapsed) = (wakeups(), cpu_ms(), t0.elapsed().as_secs_f64());
    rt.block_on(edged.stop());
    rt.block_on(hubd.stop());
    Idle { wakeups_per_s: w1.saturating_sub(w0) as f64 / elapsed, cpu_ms_per_min: (c1 - c0) / elapsed * 60.0 }
}

fn main() {
    let secs: u64 = std::env::var("IDLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    eprintln!("as built ({secs} s idle)...");
    let built = idle_pair(None, secs);
    eprintln!("baseline: a look every 50 ms ({secs} s idle)...");
    let base = idle_pair(Some(Duration::from_millis(50)), secs);
    println!();
    println!("outpost idle benchmark: a hub daemon and a tablet's daemon connected to it, {secs} s with nothing to do");
    println!();
    println!(
        "| looking for other processes' writes | wake-ups per second | CPU per minute | wake-ups / baseline | CPU / baseline |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| told by the file system, a look every {} s (as built) | {:.1} | {:.0} ms | {:.3} | {:.2} |",
        outpost_node::net::LOCAL_WRITE_RECHECK.as_secs(),
        built.wakeups_per_s,
        built.cpu_ms_per_min,
        built.wakeups_per_s / base.wakeups_per_s.max(1e-9),
        built.cpu_ms_per_min / base.cpu_ms_per_min.max(1e-9)
    );
    println!(
        "| a look every 50 ms (baseline: before) | {:.1} | {:.0} ms | 1 | 1 |",
        base.wakeups_per_s, base.cpu_ms_per_min
    );
}
