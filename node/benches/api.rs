//! Local API benchmark: `cargo bench -p outpost-node --bench api`
//!
//! An edge node holding 10,000 sessions (BENCH_SESSIONS to change) runs its daemon with the
//! local API on loopback; an integrating system's token calls it over real HTTP. Measured, each
//! beside the same operation done in-process through `Node` (the baseline: what HTTP, JSON
//! and the store thread add):
//!   - listing every session (the whole list as JSON), and the first screen of 50;
//!   - creating messages, one after another, each durable before it is answered;
//!   - the latency from a message's POST to its `session` event on the event stream, p50/p99;
//!   - another person's first screen of 50 while one token loops the expensive reads (every
//!     session, the callbacks owed) on eight connections, beside the same reads made quiet:
//!     what one stolen or runaway token can do to everyone else's pages (and to sync, which
//!     shares the store thread).

use std::io::BufReader;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use outpost_node::config::NodeDir;
use outpost_node::net::{Daemon, RunOptions};
use outpost_node::node::{InitParams, Node, SessionRequest, now_ms};
use outpost_node::store::ListFilter;
use outpost_node::store::people::{Credential, NewPerson, PersonRole};
use sync_protocol::session::{Patient, Requester, Service, SessionId};
use sync_protocol::vocab::{CareSetting, Channel, Priority, Role, ServiceLine};

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let n: usize = std::env::var("BENCH_SESSIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let tmp = tempfile::Builder::new().prefix("outpost-api-bench-").tempdir().expect("tempdir");
    let dir = NodeDir::new(tmp.path().join("surgery-12"));
    let params =
        InitParams { name: "surgery-12".into(), role: Role::Edge, org: None, icb: Some("QHM".into()), lines: vec![] };
    Node::init(&dir, &params, now_ms()).expect("init");
    {
        // The daemon needs its fleet certificate even when it only serves its API.
        let ca = outpost_node::tls::CaDir::new(tmp.path().join("ca"));
        ca.init("bench").expect("ca");
        let mut node = Node::open(&dir).expect("open");
        let issued = ca
            .issue(&node.config().peer_info(), &node.raw_store().identity().author_public(), 30, false)
            .expect("issue");
        node.raw_store()
            .identity_mut()
            .set_tls_identity(&issued.cert_pem, &issued.key_pem, &issued.ca_pem)
            .expect("identity");
    }
    eprintln!("writing {n} sessions...");
    let mut ids: Vec<SessionId> = Vec::with_capacity(n);
    let (token, other) = {
        let mut node = Node::open(&dir).expect("open");
        for i in 0..n {
            let req = SessionRequest {
                care_setting: CareSetting::GpUrgent,
                requester: Requester::default(),
                patient: Patient::default(),
                service: Service {
                    line: ServiceLine::ALL[i % 7],
                    channel: Channel::Message,
                    priority: Priority::Urgent,
                },
                summary: format!("Session {i}: breathless on exertion, ankle swelling; advice on diuretics"),
                draft: false,
            };
            ids.push(node.new_session(req, now_ms()).expect("session").id);
        }
        let who = NewPerson { name: "EMIS bridge".into(), role: PersonRole::System, registration: None };
        let token = node
            .raw_store()
            .people_mut()
            .add_person(&who, &Credential::Token, now_ms())
            .expect("user")
            .1
            .expect("token");
        let them = NewPerson { name: "Audit dashboard".into(), role: PersonRole::System, registration: None };
        let other = node
            .raw_store()
            .people_mut()
            .add_person(&them, &Credential::Token, now_ms())
            .expect("user")
            .1
            .expect("token");
        (token, other)
    };

    // ---------------------------------------------------------------- baseline: in-process
    let mut node = Node::open(&dir).expect("open");
    let t = Instant::now();
    let rounds = 10;
    for _ in 0..rounds {
        assert_eq!(node.list(&ListFilter::default()).expect("list").len(), n);
    }
    let base_list_all = rounds as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..200 {
        node.list(&ListFilter { limit: Some(50), ..ListFilter::default() }).expect("list");
    }
    let base_list_50 = 200.0 / t.elapsed().as_secs_f64();
    let writes = 300;
    let t = Instant::now();
    for i in 0..writes {
        node.send_message(ids[i % n], &format!("in-process message {i}"), None, now_ms()).expect("message");
    }
    let base_create = writes as f64 / t.elapsed().as_secs_f64();
    drop(node);

    // ---------------------------------------------------------------- the API
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let daemon = rt
        .block_on(Daemon::start(
            Node::open(&dir).expect("open"),
            RunOptions { api: Some("127.0.0.1:0".parse().expect("addr")), ..RunOptions::default() },
        ))
        .expect("daemon");
    let base = format!("http://{}", daemon.api_addr.expect("api"));
    let auth = format!("Bearer {token}");
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(60))).build().into();
    let get = |path: &str| -> Vec<u8> {
        agent
            .get(&format!("{base}{path}"))
            .header("Authorization", &auth)
            .call()
            .expect("get")
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .expect("body")
    };
    let all_bytes = get("/api/sessions?limit=10000").len();
    let t = Instant::now();
    for _ in 0..rounds {
        get("/api/sessions?limit=10000");
    }
    let api_list_all = rounds as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..200 {
        get("/api/sessions?limit=50");
    }
    let api_list_50 = 200.0 / t.elapsed().as_secs_f64();

    // The event stream, read on its own thread: each session event with its arrival time.
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    {
        let resp = agent
            .get(&format!("{base}/api/events"))
            .header("Authorization", &auth)
            .config()
            .timeout_global(None)
            .build()
            .call()
            .expect("events");
        let reader = BufReader::new(resp.into_body().into_reader());
        std::thread::spawn(move || {
            outpost_node::net::read_events(reader, |_, v| match v["card"]["id"].as_str() {
                Some(id) => tx.send((id.to_string(), Instant::now())).is_ok(),
                None => true,
            })
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    let post = |id: &SessionId, i: usize| {
        let resp = agent
            .post(&format!("{base}/api/sessions/{id}/messages"))
            .header("Authorization", &auth)
            .send_json(serde_json::json!({ "text": format!("API message {i}"), "client_key": format!("bench-{i}") }))
            .expect("post");
        assert_eq!(resp.status().as_u16(), 201);
    };
    let t = Instant::now();
    for i in 0..writes {
        post(&ids[i % n], i);
    }
    let api_create = writes as f64 / t.elapsed().as_secs_f64();
    // Let the stream catch up, then time each write to its event, one at a time.
    std::thread::sleep(Duration::from_secs(1));
    while rx.try_recv().is_ok() {}
    let mut latencies = Vec::with_capacity(writes);
    for (k, id) in ids.iter().skip(writes.min(n / 2)).take(writes).enumerate() {
        let i = writes + k;
        let sent = Instant::now();
        post(id, i);
        let want = id.to_string();
        loop {
            let (got, at) = rx.recv_timeout(Duration::from_secs(10)).expect("an event for the message");
            if got == want {
                latencies.push(at.duration_since(sent).as_secs_f64() * 1e3);
                break;
            }
        }
    }
    latencies.sort_by(f64::total_cmp);

    // Another person's first screen, quiet and then while one token floods the expensive reads.
    let other_auth = format!("Bearer {other}");
    let screen = |agent: &ureq::Agent| -> f64 {
        let t = Instant::now();
        let resp = agent.get(&format!("{base}/api/sessions?limit=50")).header("Authorization", &other_auth).call();
        let mut resp = resp.expect("first screen");
        resp.body_mut().read_to_vec().expect("body");
        t.elapsed().as_secs_f64() * 1e3
    };
    let screens = 60;
    let mut quiet: Vec<f64> = (0..screens).map(|_| screen(&agent)).collect();
    quiet.sort_by(f64::total_cmp);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood_reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flood_refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flooders: Vec<_> = (0..8)
        .map(|k| {
            let (stop, reads, refused) = (stop.clone(), flood_reads.clone(), flood_refused.clone());
            let (base, auth) = (base.clone(), auth.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(120)))
                    .http_status_as_error(false)
                    .build()
                    .into();
                let paths = ["/api/sessions?limit=10000", "/api/callbacks"];
                let mut i = k;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut resp = agent
                        .get(&format!("{base}{}", paths[i % 2]))
                        .header("Authorization", &auth)
                        .call()
                        .expect("flood");
                    let _ = resp.body_mut().with_config().limit(1 << 30).read_to_vec();
                    if resp.status().as_u16() == 200 {
                        reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let flood_start = Instant::now();
    let mut flooded: Vec<f64> = (0..screens).map(|_| screen(&agent)).collect();
    let flood_secs = flood_start.elapsed().as_secs_f64();
    let reads_done = flood_reads.load(std::sync::atomic::Ordering::Relaxed);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        let _ = f.join();
    }
    flooded.sort_by(f64::total_cmp);
    rt.block_on(daemon.stop());

    println!();
    println!("outpost local API benchmark: an edge holding {n} sessions, HTTP/1.1 on loopback, one client");
    println!();
    println!("| operation | API | in-process (`Node`) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| list all {n} sessions ({:.1} MiB of JSON) | {api_list_all:.1} req/s | {base_list_all:.1} /s | {:.2} |",
        all_bytes as f64 / (1 << 20) as f64,
        api_list_all / base_list_all
    );
    println!(
        "| list the first 50 | {api_list_50:.0} req/s | {base_list_50:.0} /s | {:.2} |",
        api_list_50 / base_list_50
    );
    println!(
        "| create a message (durable before the answer) | {api_create:.0} req/s | {base_create:.0} /s | {:.2} |",
        api_create / base_create
    );
    println!(
        "| from a message's POST to its event | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events) | | |",
        pct(&latencies, 0.5),
        pct(&latencies, 0.99),
        pct(&latencies, 1.0),
        latencies.len()
    );
    println!(
        "| another person's first 50, while one token loops every session and the callbacks on 8 connections ({} reads answered, {} refused, in {flood_secs:.1} s) | p50 {:.1} ms, p99 {:.1} ms | quiet: p50 {:.1} ms, p99 {:.1} ms | p99 {:.1}x |",
        reads_done,
        flood_refused.load(std::sync::atomic::Ordering::Relaxed),
        pct(&flooded, 0.5),
        pct(&flooded, 0.99),
        pct(&quiet, 0.5),
        pct(&quiet, 0.99),
        pct(&flooded, 0.99) / pct(&quiet, 0.99)
    );
}
