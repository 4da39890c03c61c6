//! Photos over the field ladder's links: `cargo bench -p outpost-node --bench link`
//!
//! For each profile, an ambulance (a real node on disk) attaches three 2 MB photos to a session
//! and syncs once with a hub daemon through the user-space link emulator (`linkem`, the same
//! the field tests use, outages off): the QUIC connection with mutual TLS, the engine, the
//! stores, all as shipped. Each row is one congestion controller; the time is from the end of
//! the handshake to the end of the sync (all three photos stored whole at the hub), against
//! the ideal: the bytes of the photos over the uplink's rate, less its mean loss.
//!
//! `LINK_PROFILES=rural-a-road,cell-edge` picks profiles (default: all six),
//! `LINK_CONTROLLERS=radio,cubic` picks controllers (default: all), `LINK_SEED=N` the
//! emulator's seed (default 7), `LINK_PHOTOS=N` the number of photos (default 3),
//! `LINK_AQM=codel` gives every link's bottleneck CoDel (RFC 8289, marking ECN-capable
//! datagrams) and `LINK_AQM=step:<ms>` a step threshold (as an L4S cell marks), rather than a
//! drop-tail queue alone.
//! Goal (issue 17): >= 90% of the ideal on every profile with the default controller.
//!
//! Each row also shows the simulator's time for the same upload (`outpost_sim`'s
//! `World::photo_upload`: the same engine and chunk window over its link model) and its ratio
//! to the real one (issue 17: within 20%).
//!
//! Then the fairness run: on the rural link, a photo upload with the default controller and a
//! bulk QUIC upload with Cubic (quinn's default, as any other application would use) share the
//! emulator's bottleneck; each flow's rate while both run is printed, with each flow's rate
//! alone. `LINK_FAIRNESS_PROFILE=urban-4g` runs it on another link, `LINK_FAIRNESS_PHOTOS=N`
//! with N photos (default 3; a longer upload shows what the photos' queue does over time),
//! `LINK_FAIRNESS_CONTROLLER=bbr` with the photos on another controller than the default.
//! The baseline follows in the same run: the same photos sent with Cubic beside the same bulk
//! flow, and the ratio of what the bulk flow keeps beside each (`LINK_FAIRNESS_BASELINE=0`
//! leaves it out). The harm a controller does is the share of the bulk flow's rate alone that
//! it takes away; Cubic's harm to Cubic is the bar. Below each table, the queue at the
//! emulator's bottleneck while both ran (what the bulk flow's packets waited behind).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::make_node;
use outpost_node::config::NodeDir;
use outpost_node::linkem::{Aqm, EmulatorOptions, LinkEmulator};
use outpost_node::net::{self, Congestion, Daemon, RunOptions};
use outpost_node::node::{Node, PhotoRequest, SessionRequest, now_ms};
use outpost_node::tls::CaDir;
use sync_protocol::links::{self, LinkProfile};
use sync_protocol::session::{Patient, Requester, Service};
use sync_protocol::vocab::{CareSetting, Channel, ConsentKind, ConsentScope, PhotoView, Priority, Role, ServiceLine};

const PROFILES: [&str; 6] = ["urban-4g", "rural-a-road", "remote-moor", "cell-edge", "3g-fallback", "satellite"];
const PHOTO_BYTES: usize = 2_000_000;

/// A JPEG of about `bytes` bytes (the field tests' recipe: 1920x1440 at quality 90 is ~2.7 MB).
fn photo(seed: u64, bytes: usize) -> outpost_node::photo::Photo {
    let scale = (bytes as f64 / 2_700_000.0).sqrt();
    let (w, h) = (((1920.0 * scale) as u32).max(64), ((1440.0 * scale) as u32).max(48));
    outpost_node::photo::synthetic_jpeg(w, h, seed).expect("photo")
}

struct Run {
    secs: f64,
    payload: u64,
    wire_up: u64,
    lost: u64,
    queue_drops: u64,
    ce_marked: u64,
    chunks: u64,
}

/// `LINK_AQM=codel` (or `step:<ms>`): every emulated link's bottleneck manages its queue so,
/// instead of dropping at a full buffer only.
fn aqm() -> Aqm {
    match std::env::var("LINK_AQM") {
        Ok(v) => Aqm::parse(&v).unwrap_or_else(|| panic!("LINK_AQM={v}: droptail, codel or step:<ms>")),
        Err(_) => Aqm::DropTail,
    }
}

/// The bottleneck's kind, for the tables' titles.
fn bottleneck() -> String {
    format!("a {} bottleneck", aqm())
}

/// An ambulance with `photos` photos attached, a hub daemon, and the emulated link between.
struct Rig {
    _tmp: tempfile::TempDir,
    edge: NodeDir,
    hub: Daemon,
    link: LinkEmulator,
    payload: u64,
}

fn rig(rt: &tokio::runtime::Runtime, profile: &LinkProfile, photos: usize, seed: u64) -> Rig {
    let tmp = tempfile::Builder::new().prefix("outpost-link-bench-").tempdir().expect("tempdir");
    let ca = CaDir::new(tmp.path().join("ca"));
    ca.init("bench").expect("ca");
    let edge = make_node(tmp.path(), &ca, "amb-07", Role::Edge);
    let hub_dir = make_node(tmp.path(), &ca, "hub-qhm", Role::Hub);
    let payload = attach(&edge, photos, seed);
    let hub = rt
        .block_on(Daemon::start(
            Node::open(&hub_dir).expect("hub"),
            RunOptions { listen: Some("127.0.0.1:0".parse().expect("addr")), ..RunOptions::default() },
        ))
        .expect("hub daemon");
    let hub_addr: SocketAddr = hub.local_addr.expect("listening");
    let link = rt
        .block_on(LinkEmulator::start(
            "127.0.0.1:0".parse().expect("addr"),
            hub_addr,
            profile.clone(),
            EmulatorOptions { seed, aqm: aqm(), ..EmulatorOptions::default() },
        ))
        .expect("link");
    Rig { _tmp: tmp, edge, hub, link, payload }
}

/// One upload of `photos` photos over `profile` with controller `cc`.
fn upload(rt: &tokio::runtime::Runtime, profile: &LinkProfile, cc: Congestion, photos: usize, seed: u64) -> Run {
    net::set_congestion(cc);
    let Rig { _tmp, edge, hub, link, payload } = rig(rt, profile, photos, seed);
    let report = rt
        .block_on(net::sync_once(Node::open(&edge).expect("open"), link.local_addr, Duration::from_secs(1800)))
        .expect("sync");
    assert!(
        report.stats.chunks_sent >= payload / sync_protocol::blob::CHUNK_SIZE as u64,
        "every chunk of the photos went up ({} sent)",
        report.stats.chunks_sent
    );
    let st = link.stats();
    rt.block_on(hub.stop());
    Run {
        secs: report.sync_ms / 1e3,
        payload,
        wire_up: st.up_bytes_out,
        lost: st.lost,
        queue_drops: st.queue_drops,
        ce_marked: st.ce_marked,
        chunks: report.stats.chunks_sent,
    }
}

/// A self-signed pair for the competing flow (an unrelated application, Cubic): one
/// certificate for the whole run, so that every client trusts every sink.
fn competing_configs() -> (quinn::ClientConfig, quinn::ServerConfig) {
    static CERT: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    let (cert_der, key_der) = CERT.get_or_init(|| {
        let cert = rcgen::generate_simple_self_signed(vec!["sink".into()]).expect("cert");
        (cert.cert.der().to_vec(), cert.signing_key.serialize_der())
    });
    let der = rustls::pki_types::CertificateDer::from(cert_der.clone());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.clone().into());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).expect("root");
    let mut transport = quinn::TransportConfig::default();
    transport.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()));
    let transport = Arc::new(transport);
    let mut client = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
    client.transport_config(transport.clone());
    let mut server = quinn::ServerConfig::with_single_cert(vec![der], key).expect("server config");
    server.transport_config(transport);
    (client, server)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let list =
        |var: &str| std::env::var(var).ok().map(|v| v.split(',').map(|s| s.trim().to_string()).collect::<Vec<_>>());
    // `LINK_PROFILES=none`: the fairness run alone.
    let profiles: Vec<String> = list("LINK_PROFILES")
        .unwrap_or_else(|| PROFILES.iter().map(|s| s.to_string()).collect())
        .into_iter()
        .filter(|p| p != "none")
        .collect();
    let controllers: Vec<Congestion> = match list("LINK_CONTROLLERS") {
        Some(names) => {
            names.iter().map(|n| Congestion::parse(n).unwrap_or_else(|| panic!("unknown controller {n}"))).collect()
        }
        None => Congestion::ALL.to_vec(),
    };
    let seed: u64 = std::env::var("LINK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let photos: usize = std::env::var("LINK_PHOTOS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);

    let mut rows = Vec::new();
    for name in &profiles {
        let profile = links::profile(name).unwrap_or_else(|| panic!("unknown profile {name}"));
        for &cc in &controllers {
            eprintln!("{name}, {}...", cc.as_str());
            let run = upload(&rt, &profile, cc, photos, seed);
            eprintln!("  {:.1} s", run.secs);
            rows.push((profile.clone(), cc, run));
        }
    }
    println!();
    println!(
        "photos over emulated links: {photos} JPEGs of ~2 MB, one sync edge -> hub, QUIC + mutual TLS, seed {seed}, {}",
        bottleneck()
    );
    println!();
    println!(
        "| profile | uplink | mean loss | controller | ideal | time | share of the link | wire / payload | datagrams lost | queue drops | CE marks | chunks sent | goal (>= 90%) | simulator | simulator / real |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (p, cc, r) in &rows {
        let loss = p.loss.mean_loss();
        let ideal = r.payload as f64 * 8.0 / p.uplink_bps as f64 / (1.0 - loss);
        let share = ideal / r.secs;
        let sizes = vec![(r.payload / photos.max(1) as u64) as usize; photos];
        let sim = outpost_sim::world::World::photo_upload(&p.name, &sizes, seed).ok().and_then(|u| u.seconds);
        println!(
            "| {} | {:.2} Mbit/s | {:.1}% | {} | {:.1} s | {:.1} s | {:.0}% | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            p.uplink_bps as f64 / 1e6,
            loss * 100.0,
            cc.as_str(),
            ideal,
            r.secs,
            share * 100.0,
            r.wire_up as f64 / r.payload as f64,
            r.lost,
            r.queue_drops,
            r.ce_marked,
            r.chunks,
            if *cc != net::congestion::Congestion::Radio {
                ""
            } else if share >= 0.9 {
                "met"
            } else {
                "MISSED"
            },
            sim.map_or("did not finish".into(), |t| format!("{t:.1} s")),
            sim.map_or("-".into(), |t| format!("{:.2}", t / r.secs)),
        );
    }

    if std::env::var("LINK_FAIRNESS").map_or(true, |v| v != "0") {
        fairness(&rt, seed);
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

/// The photo upload (default controller) and a Cubic bulk flow share the rural link; then, as
/// the baseline, the same photos on Cubic beside the same bulk flow.
fn fairness(rt: &tokio::runtime::Runtime, seed: u64) {
    // `LINK_FAIRNESS_PROFILE` runs it on another profile.
    let name = std::env::var("LINK_FAIRNESS_PROFILE").unwrap_or_else(|_| "rural-a-road".to_string());
    let profile = links::profile(&name).unwrap_or_else(|| panic!("unknown profile {name}"));
    eprintln!("fairness: a Cubic bulk flow alone on {}...", profile.name);
    let cubic_alone = rt.block_on(async {
        let (_, server_cfg) = competing_configs();
        let sink = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().expect("addr")).expect("sink");
        let link = LinkEmulator::start(
            "127.0.0.1:0".parse().expect("addr"),
            sink.local_addr().expect("addr"),
            profile.clone(),
            EmulatorOptions { seed, aqm: aqm(), ..EmulatorOptions::default() },
        )
        .await
        .expect("link");
        // Measured from 5 s (past its slow start) to 25 s.
        let window = Arc::new(std::sync::Mutex::new((5.0, 25.0)));
        let arrivals = competing_flow_timed(link.local_addr, sink, 60.0, Instant::now(), window).await;
        eprintln!("  {} arrivals, last at {:?} s", arrivals.len(), arrivals.last().map(|a| a.0));
        arrivals.iter().filter(|(t, _)| (5.0..=25.0).contains(t)).map(|(_, n)| n).sum::<u64>() as f64 / 20.0
    });
    eprintln!("fairness: photos alone...");
    let photos: usize = std::env::var("LINK_FAIRNESS_PHOTOS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let cc = std::env::var("LINK_FAIRNESS_CONTROLLER")
        .ok()
        .map(|v| Congestion::parse(&v).unwrap_or_else(|| panic!("LINK_FAIRNESS_CONTROLLER={v}: radio, cubic or bbr")))
        .unwrap_or(Congestion::Radio);
    let alone = upload(rt, &profile, cc, photos, seed);
    let photos_alone = alone.payload as f64 / alone.secs;
    eprintln!("fairness: both at once...");
    let (cubic_shared, photos_shared, queue_shared) = shared_link(rt, &profile, cc, photos, seed);
    // The baseline: the same photos sent with Cubic, as any other application's upload would
    // be. A controller is no worse a neighbour than Cubic if it harms the bulk flow no more
    // than Cubic itself does (Ware et al., "Beyond Jain's fairness index", HotNets 2019).
    let baseline = std::env::var("LINK_FAIRNESS_BASELINE").map_or(true, |v| v != "0");
    let cubic_beside_cubic = baseline.then(|| {
        eprintln!("fairness: both at once, the photos on Cubic (the baseline)...");
        shared_link(rt, &profile, Congestion::Cubic, photos, seed)
    });
    println!();
    println!(
        "fairness on {} ({:.1} Mbit/s up, one bottleneck queue, {}, {photos} photos, seed {seed}): rates in kbit/s",
        profile.name,
        profile.uplink_bps as f64 / 1e6,
        bottleneck()
    );
    println!();
    println!("| flow | alone | beside the photos on {} | share of the link | harm (rate lost) |", cc.as_str());
    println!("|---|---|---|---|---|");
    let kbit = |b: f64| b * 8.0 / 1e3;
    let link = profile.uplink_bps as f64 / 8.0;
    let harm = |shared: f64| (1.0 - shared / cubic_alone).max(0.0) * 100.0;
    println!(
        "| another application's bulk upload (QUIC, Cubic) | {:.0} | {:.0} | {:.0}% | {:.0}% |",
        kbit(cubic_alone),
        kbit(cubic_shared),
        cubic_shared / link * 100.0,
        harm(cubic_shared)
    );
    println!(
        "| outpost photos ({}) | {:.0} | {:.0} | {:.0}% | |",
        cc.as_str(),
        kbit(photos_alone),
        kbit(photos_shared),
        photos_shared / link * 100.0
    );
    let queue_line = |q: Queue, cc: Congestion| {
        println!();
        println!(
            "the queue at the bottleneck while both ran, the photos on {} (sampled every 20 ms): mean {:.0} ms, 90th percentile {:.0} ms",
            cc.as_str(),
            q.mean_ms,
            q.p90_ms
        );
    };
    queue_line(queue_shared, cc);
    if let Some((bulk, photos_cubic, queue_cubic)) = cubic_beside_cubic {
        println!();
        println!("baseline: the same photos on Cubic beside the same bulk flow");
        println!();
        println!("| flow | beside the photos on cubic | share of the link | harm (rate lost) |");
        println!("|---|---|---|---|");
        println!(
            "| another application's bulk upload (QUIC, Cubic) | {:.0} | {:.0}% | {:.0}% |",
            kbit(bulk),
            bulk / link * 100.0,
            harm(bulk)
        );
        println!("| outpost photos (cubic) | {:.0} | {:.0}% | |", kbit(photos_cubic), photos_cubic / link * 100.0);
        queue_line(queue_cubic, Congestion::Cubic);
        println!();
        println!(
            "the bulk flow beside the photos on {} keeps {:.2}x what it keeps beside the photos on Cubic",
            cc.as_str(),
            cubic_shared / bulk.max(1.0)
        );
    }
}

/// Both flows through one emulator (two entrances, one bottleneck): the photo upload (with
/// `cc`) starts once the Cubic flow has run for 5 s, and the Cubic flow is measured while the
/// photos go up.
/// Returns Cubic's rate and the photos' rate in bytes per second, and the queue at the
/// bottleneck meanwhile.
fn shared_link(
    rt: &tokio::runtime::Runtime,
    profile: &LinkProfile,
    cc: Congestion,
    photos: usize,
    seed: u64,
) -> (f64, f64, Queue) {
    net::set_congestion(cc);
    let Rig { _tmp, edge, hub, mut link, payload } = rig(rt, profile, photos, seed);
    let (_, server_cfg) = competing_configs();
    let sink =
        rt.block_on(async { quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().expect("addr")) }).expect("sink");
    let sink_addr = sink.local_addr().expect("addr");
    let cubic_entrance =
        rt.block_on(link.add_entrance("127.0.0.1:0".parse().expect("addr"), sink_addr)).expect("entrance");
    // The photos take 2-60 s (Cubic's on the A-road the longest); the Cubic flow runs 5 s
    // before and past them.
    let start = Instant::now();
    let window = Arc::new(std::sync::Mutex::new((f64::MAX, 0.0f64)));
    let cubic = rt.spawn({
        let window = window.clone();
        async move {
            // Measured afterwards over the photos' window: bytes counted per arrival time.
            competing_flow_timed(cubic_entrance, sink, 1800.0, start, window).await
        }
    });
    std::thread::sleep(Duration::from_secs(5));
    let t0 = start.elapsed().as_secs_f64();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let gauge = link.uplink_queue();
        let sampling = sampling.clone();
        move || {
            let mut samples = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push(gauge.delay());
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        }
    });
    let report = rt
        .block_on(net::sync_once(Node::open(&edge).expect("open"), link.local_addr, Duration::from_secs(1800)))
        .expect("sync");
    let t1 = start.elapsed().as_secs_f64();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let queue = Queue::of(sampler.join().expect("sampler"));
    if let Ok(mut w) = window.lock() {
        *w = (t0, t1);
    }
    let arrivals = rt.block_on(cubic).expect("cubic flow");
    rt.block_on(hub.stop());
    let inside: u64 = arrivals.iter().filter(|(t, _)| *t >= t0 && *t <= t1).map(|(_, n)| n).sum();
    let _ = report;
    (inside as f64 / (t1 - t0), payload as f64 / (t1 - t0), queue)
}

/// The uplink's queue at the bottleneck, sampled every 20 ms while the photos went up: what
/// every flow on the link waited behind.
#[derive(Debug, Clone, Copy)]
struct Queue {
    mean_ms: f64,
    p90_ms: f64,
}

impl Queue {
    fn of(mut samples: Vec<Duration>) -> Queue {
        if samples.is_empty() {
            return Queue { mean_ms: 0.0, p90_ms: 0.0 };
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mean_ms = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
        let p90_ms = ms(samples[(samples.len() * 9 / 10).min(samples.len() - 1)]);
        Queue { mean_ms, p90_ms }
    }
}

/// A Cubic bulk upload through `relay` until `stop` (set once the photos are up, with the
/// window to measure) says so, or `limit` seconds; returns every arrival (seconds since
/// `start`, bytes).
async fn competing_flow_timed(
    relay: SocketAddr,
    sink: quinn::Endpoint,
    limit: f64,
    start: Instant,
    stop: Arc<std::sync::Mutex<(f64, f64)>>,
) -> Vec<(f64, u64)> {
    let arrivals: Arc<std::sync::Mutex<Vec<(f64, u64)>>> = Arc::default();
    let server = tokio::spawn({
        let arrivals = arrivals.clone();
        async move {
            let Some(incoming) = sink.accept().await else { return };
            let Ok(conn) = incoming.await else { return };
            let Ok(mut recv) = conn.accept_uni().await else { return };
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(Some(n)) = recv.read(&mut buf).await {
                if let Ok(mut a) = arrivals.lock() {
                    a.push((start.elapsed().as_secs_f64(), n as u64));
                }
            }
        }
    });
    let (client_cfg, _) = competing_configs();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    ep.set_default_client_config(client_cfg);
    let conn = ep.connect(relay, "sink").expect("connect").await.expect("handshake");
    let mut send = conn.open_uni().await.expect("stream");
    let chunk = vec![0x5au8; 16 * 1024];
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        let done = stop.lock().map(|w| w.1 > 0.0 && elapsed > w.1 + 1.0).unwrap_or(true);
        if done || elapsed > limit || send.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = send.reset(0u32.into());
    conn.close(0u32.into(), b"done");
    // The sink keeps what arrived; a close lost on the lossy link would keep it waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.abort();
    arrivals.lock().map(|a| a.clone()).unwrap_or_default()
}

/// Attaches `photos` photos to a new session on `edge`; returns their bytes.
fn attach(edge: &NodeDir, photos: usize, seed: u64) -> u64 {
    let mut payload = 0u64;
    let mut node = Node::open(edge).expect("open");
    let req = SessionRequest {
        care_setting: CareSetting::AmbulanceOnScene,
        requester: Requester::default(),
        patient: Patient::default(),
        service: Service { line: ServiceLine::Dermatology, channel: Channel::Photo, priority: Priority::Urgent },
        summary: "Spreading rash, left forearm".into(),
        draft: false,
    };
    let id = node.new_session(req, now_ms()).expect("session").id;
    let views = [PhotoView::Site, PhotoView::CloseUp, PhotoView::Dermoscopic];
    for i in 0..photos {
        let p = photo(seed * 10 + i as u64, PHOTO_BYTES);
        payload += p.bytes.len() as u64;
        let req = PhotoRequest {
            view: views[i % views.len()],
            body_site: "left forearm".into(),
            consent: ConsentKind::Verbal,
            scope: ConsentScope::RecordOnly,
        };
        node.attach_photo(id, &p, &req, now_ms()).expect("attach");
    }
    payload
}
