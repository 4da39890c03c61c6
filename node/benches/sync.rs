//! Sync benchmark: `cargo bench -p outpost-node --bench sync`
//!
//! An edge and a hub, each a real node on disk, 10,000 sessions on both sides (BENCH_SESSIONS
//! to change), synced over QUIC with mutual TLS on loopback. Three cases are measured with
//! outpost's protocol, and in the same run with a baseline that syncs every document with its
//! own Automerge sync state over one QUIC stream of the same kind of connection, as
//! automerge-repo and samod do (its states are kept between runs, encoded and decoded as a
//! restart would, which is the baseline's best case):
//!   (a) nothing changed, (b) 10 sessions changed, (c) 1,000 sessions changed (once by a fresh
//!   edge process, once by the edge node that wrote them, as its daemon would), and the hub
//!   restored from a backup taken before 10, then 1,000, sessions changed.
//! CPU time is both sides', over the sync alone, beside wall time: the hub daemon runs in this
//! process; a fresh edge process is this bench started again (`--fresh-sync`), and reports
//! its own; the edge's daemon runs in this process too.
//! Then a 3 MB photo goes up a link (emulated, 8 Mbit/s) that drops halfway; the chunks served
//! twice are counted, and the bytes the tablet sent twice over the air (against the same kind
//! of photo sent undisturbed over the same link just before).
//!
//! Targets (issue 3): (a) one round trip after the handshake and under 1 KB; (b) under 1.2x the
//! bytes of the new changes plus 2 KB; the photo resumes with under 64 KiB sent twice over the air. (The chunk window is sized to the link since issue 17: chunks
//! requested but still in the tablet's buffers when the link drops are served again, but
//! were never sent.)

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::AutoCommit;
use automerge::sync::{self, SyncDoc};
use common::make_node;
use outpost_node::config::NodeDir;
use outpost_node::linkem::{EmulatorOptions, LinkEmulator};
use outpost_node::net::{self, Daemon, RunOptions, SyncReport};
use outpost_node::node::{Node, PhotoRequest, SessionRequest, now_ms};
use outpost_node::tls::{CaDir, Identity, SERVER_NAME};
use sync_protocol::session::{Patient, Requester, Service, SessionId};
use sync_protocol::vocab::{CareSetting, Channel, ConsentKind, ConsentScope, PhotoView, Priority, Role, ServiceLine};
use sync_protocol::wire::{Changes, DocId, Frame, FrameDecoder};

fn message_text(i: usize) -> String {
    format!(
        "Update {i}: obs stable, HR 84 regular, BP 138/82, SpO2 97% on air; pain 2/10 after analgesia; family present."
    )
}

// ---------------------------------------------------------------------------------------------
// The baseline: one Automerge sync state per document, every document offered on every
// connection, lockstep flights over one QUIC stream.

struct Side {
    docs: HashMap<DocId, AutoCommit>,
    states: HashMap<DocId, sync::State>,
}

impl Side {
    fn flight(&mut self, only: Option<&[DocId]>) -> Vec<Frame> {
        let ids: Vec<DocId> = match only {
            Some(o) => o.to_vec(),
            None => self.docs.keys().copied().collect(),
        };
        let mut out = Vec::new();
        for id in ids {
            let (Some(doc), state) = (self.docs.get_mut(&id), self.states.entry(id).or_default()) else { continue };
            if let Some(m) = doc.sync().generate_sync_message(state) {
                // Carried in a Changes frame (three bytes more per message than the
                // Automerge-sync frame that protocol 1 had; about 1.5% of the baseline's bytes).
                out.push(Frame::Changes(Changes {
                    doc: id,
                    ack: false,
                    heads: Vec::new(),
                    bytes: m.encode(),
                    sigs: Vec::new(),
                }));
            }
        }
        out
    }

    fn apply(&mut self, frames: Vec<Frame>) -> (Vec<DocId>, u64) {
        let mut touched = Vec::new();
        let mut change_bytes = 0;
        for f in frames {
            if let Frame::Changes(Changes { doc, bytes: message, .. }) = f {
                let msg = sync::Message::decode(&message).expect("baseline message");
                change_bytes += msg.changes.iter().map(|c| c.len() as u64).sum::<u64>();
                let d = self.docs.entry(doc).or_default();
                d.sync().receive_sync_message(self.states.entry(doc).or_default(), msg).expect("baseline receive");
                touched.push(doc);
            }
        }
        (touched, change_bytes)
    }

    /// As a restart would: only what `State::encode` keeps survives.
    fn persist_states(&mut self) {
        for s in self.states.values_mut() {
            *s = sync::State::decode(&s.encode()).expect("state round trip");
        }
    }
}

async fn send_flight(send: &mut quinn::SendStream, frames: &[Frame]) -> u64 {
    let mut buf = Vec::new();
    for f in frames {
        f.encode(&mut buf);
    }
    Frame::Mark { received: frames.len() as u64, idle: true }.encode(&mut buf);
    send.write_all(&buf).await.expect("baseline write");
    buf.len() as u64
}

async fn read_flight(recv: &mut quinn::RecvStream, dec: &mut FrameDecoder) -> Option<(Vec<Frame>, u64)> {
    let mut frames = Vec::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(f) = dec.next_frame().expect("baseline decode") {
            bytes += f.to_bytes().len() as u64;
            match f {
                Frame::Mark { .. } => return Some((frames, bytes)),
                Frame::Close { .. } => return None,
                other => frames.push(other),
            }
        }
        let n = recv.read(&mut buf).await.ok()??;
        dec.feed(&buf[..n]);
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct BaselineRun {
    round_trips: u64,
    bytes: u64,
    change_bytes: u64,
    ms: f64,
    cpu_ms: f64,
}

/// CPU time of this process (every thread, both sides), in ms.
fn cpu_now() -> f64 {
    cpu_time::ProcessTime::now().as_duration().as_secs_f64() * 1e3
}

async fn baseline(client: &mut Side, server: Side, client_id: &Identity, server_id: &Identity) -> (BaselineRun, Side) {
    let server_ep = quinn::Endpoint::server(
        net::server_config(server_id, None).expect("cfg"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    let addr = server_ep.local_addr().expect("addr");
    let server_task = tokio::spawn(async move {
        let mut side = server;
        let conn = server_ep.accept().await.expect("incoming").await.expect("accept");
        let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
        let mut dec = FrameDecoder::new();
        let mut bytes = 0;
        let mut change_bytes = 0;
        while let Some((frames, n)) = read_flight(&mut recv, &mut dec).await {
            bytes += n;
            let (touched, cb) = side.apply(frames);
            change_bytes += cb;
            let out = side.flight(Some(&touched));
            bytes += send_flight(&mut send, &out).await;
        }
        let _ = send.finish();
        conn.close(0u32.into(), b"done");
        (side, bytes, change_bytes)
    });
    let client_ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    let conn = client_ep
        .connect_with(net::client_config(client_id, None).expect("cfg"), addr, SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    let start = Instant::now();
    let cpu = cpu_now();
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let mut dec = FrameDecoder::new();
    let mut run = BaselineRun::default();
    let first = client.flight(None);
    run.bytes += send_flight(&mut send, &first).await;
    run.round_trips = 1;
    loop {
        let (frames, n) = read_flight(&mut recv, &mut dec).await.expect("server flight");
        run.bytes += n;
        let empty = frames.is_empty();
        let (touched, cb) = client.apply(frames);
        run.change_bytes += cb;
        let out = client.flight(Some(&touched));
        if empty && out.is_empty() {
            let mut b = Vec::new();
            Frame::Close { code: 0, reason: String::new() }.encode(&mut b);
            send.write_all(&b).await.expect("close");
            let _ = send.finish();
            // The server closes the connection once it has read the Close.
            conn.closed().await;
            break;
        }
        run.bytes += send_flight(&mut send, &out).await;
        run.round_trips += 1;
    }
    run.ms = start.elapsed().as_secs_f64() * 1e3;
    let (side, server_bytes, server_change_bytes) = server_task.await.expect("server task");
    run.cpu_ms = cpu_now() - cpu;
    let _ = (server_bytes, server_change_bytes);
    run.change_bytes += server_change_bytes;
    client.persist_states();
    let mut side = side;
    side.persist_states();
    client_ep.wait_idle().await;
    (run, side)
}

fn load_all(dir: &NodeDir) -> HashMap<DocId, AutoCommit> {
    let mut node = Node::open(dir).expect("open");
    let ids: Vec<SessionId> = node.list(&Default::default()).expect("list").into_iter().map(|c| c.id).collect();
    ids.into_iter()
        .map(|id| {
            (
                id.to_bytes(),
                AutoCommit::load(&node.raw_store().sessions_mut().export_automerge(id).expect("export")).expect("load"),
            )
        })
        .collect()
}

fn reload(side: &mut Side, dir: &NodeDir, ids: &[SessionId]) {
    let mut node = Node::open(dir).expect("open");
    for id in ids {
        let bytes = node.raw_store().sessions_mut().export_automerge(*id).expect("export");
        let doc = side.docs.get_mut(&id.to_bytes()).expect("doc");
        doc.load_incremental(&bytes).expect("reload");
    }
}

// ---------------------------------------------------------------------------------------------

struct Row {
    case: String,
    ours: SyncReport,
    cpu_ms: f64,
    base: Option<BaselineRun>,
    new_change_bytes: u64,
}

impl Row {
    /// A case measured against the baseline; new change bytes counted both ways.
    fn against(case: String, ours: SyncReport, cpu_ms: f64, base: BaselineRun) -> Row {
        let new_change_bytes = ours.stats.change_bytes_sent + ours.stats.change_bytes_received;
        Row { case, ours, cpu_ms, base: Some(base), new_change_bytes }
    }
}

/// Milliseconds to a tenth, for the log.
fn tenths(ms: impl Iterator<Item = f64>) -> Vec<f64> {
    ms.map(|c| (c * 10.0).round() / 10.0).collect()
}

/// Rounds of each case with changes (each side's median round is reported).
const CHANGED_ROUNDS: usize = 3;

/// One sync of the edge with the hub, with the CPU time it took (both sides).
/// One sync by a fresh edge process: this bench binary started again as `--fresh-sync DIR
/// ADDR` ([`fresh_sync_child`]), with a heap of its own as `outpost sync` has. The CPU is the
/// child's over the sync (its own measure, the store's opening left out as before) plus this
/// process's over the child's whole life: the hub daemon's side, and the spawn.
fn ours(edge: &NodeDir, hub: SocketAddr) -> (SyncReport, f64) {
    let exe = std::env::current_exe().expect("this bench's path");
    let before = cpu_now();
    let out = std::process::Command::new(exe)
        .arg(FRESH_SYNC)
        .arg(edge.root())
        .arg(hub.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("start a fresh edge process");
    let hub_cpu = cpu_now() - before;
    assert!(out.status.success(), "the fresh edge process failed: {}", out.status);
    let (report, edge_cpu): (SyncReport, f64) =
        serde_json::from_slice(&out.stdout).expect("the fresh process's report");
    (report, edge_cpu + hub_cpu)
}

/// The argument that makes this bench a fresh edge process ([`ours`]).
const FRESH_SYNC: &str = "--fresh-sync";

/// The fresh edge process: opens the edge at `dir`, syncs once with the hub at `addr` on the
/// runtime `outpost sync` uses, and prints its report and its CPU over the sync as JSON.
fn fresh_sync_child(dir: &str, addr: &str) {
    let rt = net::one_shot_runtime().expect("runtime");
    let hub: SocketAddr = addr.parse().expect("hub address");
    let node = Node::open(&NodeDir::new(dir)).expect("open edge");
    let cpu = cpu_now();
    let report = rt.block_on(net::sync_once(node, hub, Duration::from_secs(900))).expect("sync");
    let cpu = cpu_now() - cpu;
    println!("{}", serde_json::to_string(&(report, cpu)).expect("report"));
}

const PERF_CASE_ON: &str = "enable";
const PERF_CASE_OFF: &str = "disable";

/// Profiling one case: with `perf record -D -1 --control fifo:CTL`, `PERF_CTL_FIFO=CTL` and
/// `PERF_CASE=TEXT`, perf samples only the cases whose label contains TEXT.
fn perf_control(cmd: &str) {
    if let Some(fifo) = std::env::var_os("PERF_CTL_FIFO") {
        let _ = std::fs::write(fifo, format!("{cmd}\n"));
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// Bytes in the files under `dir`.
fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_size(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn start_hub(rt: &tokio::runtime::Runtime, dir: &NodeDir) -> (Daemon, SocketAddr) {
    let hub = rt
        .block_on(Daemon::start(
            Node::open(dir).expect("hub"),
            RunOptions { listen: Some("127.0.0.1:0".parse().expect("addr")), ..RunOptions::default() },
        ))
        .expect("hub daemon");
    let addr = hub.local_addr.expect("listening");
    (hub, addr)
}

fn hub_docs(rt: &tokio::runtime::Runtime, hub: &Daemon) -> HashMap<DocId, AutoCommit> {
    rt.block_on(hub.with_node(|n| {
        let ids: Vec<SessionId> = n.list(&Default::default()).expect("list").into_iter().map(|c| c.id).collect();
        ids.into_iter()
            .map(|id| {
                (
                    id.to_bytes(),
                    AutoCommit::load(&n.raw_store().sessions_mut().export_automerge(id).expect("export"))
                        .expect("load"),
                )
            })
            .collect::<HashMap<_, _>>()
    }))
    .expect("hub docs")
}

/// Writes a message in each of `ids` on the edge; returns the node that wrote them.
fn change(edge: &NodeDir, ids: &[SessionId], round: usize) -> Node {
    let mut node = Node::open(edge).expect("open edge");
    for (i, id) in ids.iter().enumerate() {
        node.send_message(*id, &message_text(round * 100_000 + i), None, now_ms()).expect("message");
    }
    node
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir, addr] = &args[..]
        && flag == FRESH_SYNC
    {
        return fresh_sync_child(dir, addr);
    }
    let n: usize = std::env::var("BENCH_SESSIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let tmp = tempfile::Builder::new().prefix("outpost-sync-bench-").tempdir().expect("tempdir");
    let ca = CaDir::new(tmp.path().join("ca"));
    ca.init("bench").expect("ca");
    let edge = make_node(tmp.path(), &ca, "amb-07", Role::Edge);
    let hub_dir = make_node(tmp.path(), &ca, "hub-qhm", Role::Hub);

    eprintln!("writing {n} sessions on the edge...");
    let t = Instant::now();
    let mut ids = Vec::with_capacity(n);
    {
        let mut node = Node::open(&edge).expect("open");
        for i in 0..n {
            let req = SessionRequest {
                care_setting: CareSetting::AmbulanceOnScene,
                requester: Requester::default(),
                patient: Patient::default(),
                service: Service {
                    line: ServiceLine::ALL[i % 7],
                    channel: Channel::Message,
                    priority: Priority::Urgent,
                },
                summary: format!("Session {i}: chest pain, settled; advice on conveyance"),
                draft: false,
            };
            let id = node.new_session(req, now_ms()).expect("session").id;
            node.send_message(id, &message_text(i), None, now_ms()).expect("message");
            ids.push(id);
        }
    }
    eprintln!("  done in {:.0} s", t.elapsed().as_secs_f64());

    let edge_id = net::load_identity(&Node::open(&edge).expect("open")).expect("identity");
    let hub_id = net::load_identity(&Node::open(&hub_dir).expect("open")).expect("identity");
    let (mut hub, mut hub_addr) = start_hub(&rt, &hub_dir);

    let mut rows = Vec::new();
    eprintln!("first sync (no state on either side: range reconciliation, every document sent)...");
    let profiled = std::env::var("PERF_CASE").is_ok_and(|c| "first contact".contains(c.as_str()) && !c.is_empty());
    if profiled {
        perf_control(PERF_CASE_ON);
    }
    let (first, first_cpu) = ours(&edge, hub_addr);
    if profiled {
        perf_control(PERF_CASE_OFF);
    }
    let hub_disk = dir_size(hub_dir.root());
    // The hub's receipts come back in the first sync; a second settles the last acknowledgements.
    ours(&edge, hub_addr);
    let new_bytes = first.stats.change_bytes_sent + first.stats.change_bytes_received;
    rows.push(Row {
        case: format!("first contact, {n} sessions new at the hub"),
        ours: first,
        cpu_ms: first_cpu,
        base: None,
        new_change_bytes: new_bytes,
    });

    eprintln!("loading the baseline's documents...");
    let mut b_edge = Side { docs: load_all(&edge), states: HashMap::new() };
    let mut b_hub = Side { docs: hub_docs(&rt, &hub), states: HashMap::new() };
    eprintln!("baseline first sync (fresh states)...");
    let (bfirst, side) = rt.block_on(baseline(&mut b_edge, b_hub, &edge_id, &hub_id));
    b_hub = side;
    eprintln!("  baseline first sync: {} round trips, {} bytes", bfirst.round_trips, bfirst.bytes);

    // The edge's sync runs in a fresh process (as `outpost sync` does: every document it sends
    // is read from disk), except in the last case: there the node that wrote the messages
    // syncs as the edge's daemon (`outpost run`, where the app writes), its documents still
    // decoded, and it stays open after the sync (its start and stop are outside the timing, as
    // a deployed daemon's are). The baseline holds every document decoded throughout.
    for (label, k, warm) in [
        ("(a) nothing changed", 0usize, false),
        ("(b) 10 changed", 10, false),
        ("(c) 1,000 changed", 1000.min(n), false),
        ("(c) 1,000 changed (edge daemon, documents decoded)", 1000.min(n), true),
    ] {
        eprintln!("{label}...");
        let offset = usize::from(warm) * 2;
        let changed: Vec<SessionId> = ids.iter().skip(offset).step_by((n / k.max(1)).max(1)).take(k).copied().collect();
        // A case with changes runs in rounds, each with new changes to the same sessions, on
        // both sides: the row is each side's median round by CPU (this machine's other load
        // moves one round by 10-20%). Nothing changed is a median of its own (below).
        let rounds = if k == 0 { 1 } else { CHANGED_ROUNDS };
        let mut our_rounds: Vec<(SyncReport, f64)> = Vec::new();
        let mut base_rounds: Vec<BaselineRun> = Vec::new();
        for round in 0..rounds {
            let node = change(&edge, &changed, k + offset + 5_000 * round);
            // The hub daemon runs in this process: let it finish what the last sync left it (its
            // record of the sync, a checkpoint) so that the case measures its own work only.
            std::thread::sleep(Duration::from_millis(500));
            eprintln!("  outpost sync {label}");
            let profiled =
                std::env::var("PERF_CASE").is_ok_and(|c| label.contains(c.as_str()) && (warm || !c.is_empty()));
            if profiled {
                perf_control(PERF_CASE_ON);
            }
            let (report, cpu_ms) = if warm {
                let daemon = rt.block_on(Daemon::start(node, RunOptions::default())).expect("edge daemon");
                let measured = rt.block_on(async {
                    let cpu = cpu_now();
                    let report = daemon.sync_with(hub_addr, Duration::from_secs(900)).await.expect("daemon sync");
                    (report, cpu_now() - cpu)
                });
                if profiled {
                    perf_control(PERF_CASE_OFF);
                }
                rt.block_on(daemon.stop());
                measured
            } else if k == 0 {
                // A few milliseconds of CPU, in a process shared with the hub's daemon: the median
                // of five fresh processes' syncs.
                drop(node);
                let mut runs: Vec<(SyncReport, f64)> = (0..5).map(|_| ours(&edge, hub_addr)).collect();
                runs.sort_by(|a, b| a.1.total_cmp(&b.1));
                eprintln!(
                    "  CPU of the five: {:?} ms",
                    runs.iter().map(|r| (r.1 * 10.0).round() / 10.0).collect::<Vec<_>>()
                );
                runs.swap_remove(2)
            } else {
                drop(node);
                ours(&edge, hub_addr)
            };
            if profiled {
                perf_control(PERF_CASE_OFF);
            }
            eprintln!("  baseline sync {label}");
            reload(&mut b_edge, &edge, &changed);
            let (b, side) = rt.block_on(baseline(&mut b_edge, b_hub, &edge_id, &hub_id));
            b_hub = side;
            our_rounds.push((report, cpu_ms));
            base_rounds.push(b);
            // Settle the hub's last receipts so the next round starts from converged replicas.
            ours(&edge, hub_addr);
        }
        let (report, cpu_ms, b) = if rounds == 1 {
            let (report, cpu_ms) = our_rounds.swap_remove(0);
            (report, cpu_ms, base_rounds.swap_remove(0))
        } else {
            eprintln!(
                "  CPU of the {rounds} rounds: outpost {:?} ms, baseline {:?} ms",
                tenths(our_rounds.iter().map(|r| r.1)),
                tenths(base_rounds.iter().map(|b| b.cpu_ms))
            );
            our_rounds.sort_by(|a, b| a.1.total_cmp(&b.1));
            base_rounds.sort_by(|a, b| a.cpu_ms.total_cmp(&b.cpu_ms));
            let (report, cpu_ms) = our_rounds.swap_remove(rounds / 2);
            (report, cpu_ms, base_rounds.swap_remove(rounds / 2))
        };
        let case = match rounds {
            1 => format!("{label} of {n} (median of 5)"),
            r => format!("{label} of {n} (median of {r} rounds)"),
        };
        rows.push(Row::against(case, report, cpu_ms, b));
    }

    // Nothing changed, with the edge as its daemon (`outpost run`) holds it: its endpoint and
    // store stay open, and a reconnect resumes the TLS session of the dial before (no
    // certificate chains sent or checked again). The first dial is a full handshake.
    let a_base = rows.iter().find(|r| r.case.starts_with("(a)")).and_then(|r| r.base);
    {
        eprintln!("(a) nothing changed, edge daemon...");
        let daemon = rt
            .block_on(Daemon::start(Node::open(&edge).expect("open edge"), RunOptions::default()))
            .expect("edge daemon");
        let dial = || {
            std::thread::sleep(Duration::from_millis(500));
            rt.block_on(async {
                let cpu = cpu_now();
                let report = daemon.sync_with(hub_addr, Duration::from_secs(900)).await.expect("daemon sync");
                (report, cpu_now() - cpu)
            })
        };
        let (first, first_cpu) = dial();
        let mut again: Vec<(SyncReport, f64)> = (0..5).map(|_| dial()).collect();
        again.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (median, median_cpu) = again.swap_remove(2);
        for (case, ours, cpu_ms) in [
            (format!("(a) nothing changed of {n}, edge daemon: first dial"), first, first_cpu),
            (format!("(a) nothing changed of {n}, edge daemon: reconnect (median of 5)"), median, median_cpu),
        ] {
            rows.push(Row { case, ours, cpu_ms, base: a_base, new_change_bytes: 0 });
        }
        rt.block_on(daemon.stop());
    }

    // The hub is restored from a backup taken before k sessions changed (and reached it): the
    // first sync after the restore must bring them back. The baseline's hub side is put back
    // the same way (its documents and sync states as they were at the backup).
    for (label, k) in [
        ("(d) hub restored, 10 changed since its backup", 10usize),
        ("(e) hub restored, 1,000 changed since its backup", 1000.min(n)),
    ] {
        eprintln!("{label}...");
        rt.block_on(hub.stop());
        let backup = NodeDir::new(tmp.path().join(format!("hub-backup-{k}")));
        copy_dir(hub_dir.root(), backup.root());
        (hub, hub_addr) = start_hub(&rt, &hub_dir);
        let b_backup = Side { docs: b_hub.docs.clone(), states: b_hub.states.clone() };
        let changed: Vec<SessionId> = ids.iter().skip(1).step_by((n / k.max(1)).max(1)).take(k).copied().collect();
        drop(change(&edge, &changed, 7 + k));
        ours(&edge, hub_addr);
        ours(&edge, hub_addr);
        reload(&mut b_edge, &edge, &changed);
        let (_, side) = rt.block_on(baseline(&mut b_edge, b_hub, &edge_id, &hub_id));
        drop(side);
        rt.block_on(hub.stop());
        std::fs::remove_dir_all(hub_dir.root()).expect("remove");
        copy_dir(backup.root(), hub_dir.root());
        (hub, hub_addr) = start_hub(&rt, &hub_dir);
        std::thread::sleep(Duration::from_millis(500));
        let (report, cpu_ms) = ours(&edge, hub_addr);
        assert_eq!(
            report.stats.docs_sent,
            changed.len() as u64,
            "{label}: the restored hub got back exactly what it lost"
        );
        let (b, side) = rt.block_on(baseline(&mut b_edge, b_backup, &edge_id, &hub_id));
        b_hub = side;
        rows.push(Row::against(format!("{label} of {n}"), report, cpu_ms, b));
        ours(&edge, hub_addr);
    }

    // Both sides hold every document but have lost what they knew of each other (restored from
    // backups, say): range reconciliation finds that nothing differs.
    eprintln!("no peer state on either side, documents equal...");
    Node::open(&edge).expect("open").raw_store().peers_mut().forget_peer("hub-qhm").expect("forget");
    rt.block_on(hub.with_node(|n| n.raw_store().peers_mut().forget_peer("amb-07"))).expect("hub").expect("forget");
    std::thread::sleep(Duration::from_millis(500));
    let (lost, lost_cpu) = ours(&edge, hub_addr);
    rows.push(Row {
        case: format!("no peer state, {n} equal sessions"),
        ours: lost,
        cpu_ms: lost_cpu,
        base: Some(bfirst),
        new_change_bytes: 0,
    });

    // The photo over a link that drops halfway.
    eprintln!("3 MB photo over an emulated 8 Mbit/s link that drops halfway...");
    let attach = |session: SessionId, seed: u64| {
        let photo = outpost_node::photo::synthetic_jpeg(2048, 1536, seed).expect("photo");
        let mut node = Node::open(&edge).expect("open");
        let req = PhotoRequest {
            view: PhotoView::CloseUp,
            body_site: "back".into(),
            consent: ConsentKind::Verbal,
            scope: ConsentScope::RecordOnly,
        };
        (node.attach_photo(session, &photo, &req, now_ms()).expect("attach").hash, photo.bytes.len() as u64)
    };
    let mut profile = sync_protocol::links::profile("urban-4g").expect("profile");
    profile.loss = sync_protocol::links::GilbertElliott::NONE;
    profile.rtt_ms = (30.0, 40.0);
    profile.uplink_bps = 8_000_000;
    let link = rt
        .block_on(LinkEmulator::start(
            "127.0.0.1:0".parse().expect("addr"),
            hub_addr,
            profile,
            EmulatorOptions::default(),
        ))
        .expect("link");
    let relay = link.local_addr;
    // What a photo of this kind costs over the air when nothing drops (the tablet's bytes into
    // the link, handshake apart): the yardstick for what a drop makes it send twice.
    let (_, calib_size) = attach(ids[1], 78);
    let air_before = link.stats().up_bytes_in;
    let calib = rt
        .block_on(net::sync_once(Node::open(&edge).expect("open"), relay, Duration::from_secs(600)))
        .expect("calibration");
    let calib_air = link.stats().up_bytes_in - air_before;
    let handshake_air = calib_air.saturating_sub(calib.udp_bytes_sent);
    let (hash, size) = attach(ids[0], 77);
    let total_chunks = size.div_ceil(16 * 1024);
    let air_before = link.stats().up_bytes_in;
    let stop = Arc::new(tokio::sync::Notify::new());
    let edge_node = Node::open(&edge).expect("open");
    let first_try = rt.spawn(net::sync_once_with(edge_node, relay, Duration::from_secs(600), stop.clone()));
    let half = total_chunks / 2;
    let h2 = hash.clone();
    loop {
        let h = h2.clone();
        let have =
            rt.block_on(hub.with_node(move |n| n.blob_info(&h).map(|b| b.chunks_present).unwrap_or(0))).expect("hub");
        if have >= half {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    link.set_up(false);
    std::thread::sleep(Duration::from_millis(500));
    stop.notify_one();
    let first_sent = match rt.block_on(first_try).expect("task") {
        Err(net::NetError::Sync { partial: Some(s), .. }) => s.chunks_sent,
        Err(e) => panic!("unexpected: {e}"),
        Ok(r) => r.stats.chunks_sent,
    };
    let h3 = hash.clone();
    let stored_at_drop =
        rt.block_on(hub.with_node(move |n| n.blob_info(&h3).map(|b| b.chunks_present).unwrap_or(0))).expect("hub");
    link.set_up(true);
    let resumed = rt.block_on(async {
        let node = Node::open(&edge).expect("open");
        net::sync_once(node, relay, Duration::from_secs(600)).await.expect("resume")
    });
    let sent_twice_chunks = (first_sent + resumed.stats.chunks_sent).saturating_sub(total_chunks);
    // Over the air: both attempts less their two handshakes, against the undisturbed photo.
    let air = link.stats().up_bytes_in - air_before;
    let air_twice = air
        .saturating_sub(2 * handshake_air)
        .saturating_sub(calib_air.saturating_sub(handshake_air) * size / calib_size);

    rt.block_on(hub.stop());

    // ------------------------------------------------------------------ the table
    let kib = |b: u64| b as f64 / 1024.0;
    println!();
    println!("outpost sync benchmark: {n} sessions on both sides, QUIC + mutual TLS on loopback");
    println!(
        "baseline: per-document Automerge sync (one sync state per document, states kept across runs), same kind of connection"
    );
    println!();
    println!(
        "| case | protocol | round trips | bytes (frames) | UDP bytes after handshake | new change bytes | time | CPU (both sides) | ratio to baseline (bytes) | ratio to baseline (CPU) | target |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let s = &r.ours.stats;
        let bytes = s.bytes_sent + s.bytes_received;
        let udp = r.ours.udp_bytes_sent + r.ours.udp_bytes_received;
        let target = if r.case.starts_with("(a)") {
            format!(
                "1 RT and < 1 KB: {}; < 5 ms CPU: {}",
                if s.round_trips == 1 && bytes < 1024 { "met" } else { "MISSED" },
                if r.cpu_ms < 5.0 { "met" } else { "MISSED" }
            )
        } else if r.case.starts_with("(b)") {
            let limit = r.new_change_bytes as f64 * 1.2 + 2048.0;
            format!(
                "< 1.2x changes + 2 KB ({:.1} KiB): {}",
                limit / 1024.0,
                if (bytes as f64) < limit { "met" } else { "MISSED" }
            )
        } else {
            String::new()
        };
        let ratio = r.base.map(|b| format!("{:.3}", bytes as f64 / b.bytes as f64)).unwrap_or_default();
        let cpu_ratio = r.base.map(|b| format!("{:.2}", r.cpu_ms / b.cpu_ms.max(1e-3))).unwrap_or_default();
        println!(
            "| {} | outpost | {} | {:.1} KiB | {:.1} KiB | {:.1} KiB | {:.0} ms | {:.1} ms | {} | {} | {} |",
            r.case,
            s.round_trips,
            kib(bytes),
            kib(udp),
            kib(r.new_change_bytes),
            r.ours.sync_ms,
            r.cpu_ms,
            ratio,
            cpu_ratio,
            target
        );
        if let Some(b) = r.base {
            println!(
                "| {} | baseline | {} | {:.1} KiB | | {:.1} KiB | {:.0} ms | {:.1} ms | 1 | 1 | |",
                r.case,
                b.round_trips,
                kib(b.bytes),
                kib(b.change_bytes),
                b.ms,
                b.cpu_ms
            );
        }
    }
    println!();
    println!(
        "the hub's directory after first contact: {:.1} MiB for {n} sessions ({:.1} KiB each, sealed at rest)",
        hub_disk as f64 / (1024.0 * 1024.0),
        kib(hub_disk) / n.max(1) as f64
    );
    println!();
    println!("| photo over a link that drops halfway | value | target |");
    println!("|---|---|---|");
    println!("| photo size | {:.1} KiB in {} chunks of 16 KiB | |", kib(size), total_chunks);
    println!("| chunks stored at the hub when the link dropped | {stored_at_drop} | |");
    println!("| chunks sent before the drop / after resuming | {first_sent} / {} | |", resumed.stats.chunks_sent);
    println!(
        "| served twice (requested again after the drop) | {} chunks = {:.0} KiB | |",
        sent_twice_chunks,
        kib(sent_twice_chunks * 16 * 1024)
    );
    println!(
        "| sent twice over the air (the tablet's bytes into the link, less the same photo undisturbed and the handshakes) | {:.0} KiB | < 64 KiB: {} |",
        kib(air_twice),
        if air_twice < 64 * 1024 { "met" } else { "MISSED" }
    );
    println!("| resume: round trips, time | {} RT, {:.0} ms | |", resumed.stats.round_trips, resumed.sync_ms);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}
