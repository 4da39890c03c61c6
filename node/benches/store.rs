//! Store benchmark: `cargo bench -p outpost-node --bench store`
//!
//! Writes N sessions (default 10,000; `BENCH_SESSIONS` to change) with 5 messages each through
//! the node's real durable path (one fsynced SQLite transaction per acknowledged write,
//! Automerge change, XChaCha20-Poly1305 seal, audit entry), and beside it, in the same run, a
//! baseline that appends the same plaintext to a bare SQLite table with the same durability
//! (WAL, synchronous=FULL, one transaction per write) and nothing else. Then it lists the
//! sessions, measures the files, and runs the `outpost` binary on the full store to read its
//! peak memory (VmHWM, which the process reports on exit when OUTPOST_PEAK_MEMORY_FILE is set).
//!
//! Targets (issue 2): p99 durable write < 10 ms; peak memory < 64 MiB; store < 3x raw text.
//! And the memory of `status`, `session show` and `message send` measured again at a tenth of
//! the sessions: it must not grow with the store (ARCHITECTURE.md).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use outpost_node::config::NodeDir;
use outpost_node::node::{InitParams, Node, SessionRequest};
use outpost_node::store::{ListFilter, wal_path};
use sync_protocol::NhsNumber;
use sync_protocol::session::{Patient, Requester, Service};
use sync_protocol::vocab::{CareSetting, Channel, NhsVerification, Priority, Role, ServiceLine};

const OPENINGS: &[&str] = &[
    "Obs on arrival: HR 96 regular, BP 142/88, SpO2 95% on air, RR 20, temp 37.9.",
    "Lesion has grown over six weeks per daughter; no bleeding, mild itch at night.",
    "Pain started at rest 40 minutes ago, central, radiating to left arm, now 3/10 after GTN.",
    "Child alert, drinking, wet nappies today; rash blanches on glass test.",
    "Known Crohn's on azathioprine, three days of loose stool, no blood, tolerating fluids.",
    "ECG: sinus rhythm 78, no acute ST changes, QTc 430; troponin not available on scene.",
];
const FOLLOW: &[&str] = &[
    " Family happy to manage at home if safe.",
    " Lives alone, independent, next of kin aware.",
    " Allergies: penicillin (rash). Regular meds reviewed with the patient.",
    " Safety-netting advice given and documented; GP to review within 48 h.",
    " Please advise whether conveyance is needed or community follow-up is appropriate.",
    " Photos taken with verbal consent, three views as per protocol.",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

fn message(rng: &mut Rng, i: usize) -> String {
    let mut s = format!("{}{}", rng.pick(OPENINGS), rng.pick(FOLLOW));
    if rng.next().is_multiple_of(2) {
        s.push_str(rng.pick(FOLLOW));
    }
    s.push_str(&format!(" (#{i})"));
    s
}

fn nhs_number(rng: &mut Rng) -> NhsNumber {
    loop {
        let n = format!("{:010}", rng.next() % 10_000_000_000);
        if let Ok(v) = NhsNumber::parse(&n) {
            return v;
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Runs `outpost ARGS` and returns its peak resident memory in KiB, as the process itself
/// reads it from /proc/self/status (VmHWM) on exit. (A child's rusage would not do: Linux
/// carries the parent's high-water mark across fork and exec.)
fn peak_rss_kib(args: &[&str], report: &Path) -> u64 {
    let status = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .env(outpost_node::cli::PEAK_MEMORY_ENV, report)
        .stdout(Stdio::null())
        .status()
        .expect("run outpost");
    assert!(status.success(), "outpost {args:?} failed");
    std::fs::read_to_string(report).expect("peak memory report").trim().parse().expect("a number of KiB")
}

fn main() {
    let n: usize = std::env::var("BENCH_SESSIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    const MSGS: usize = 5;
    let tmp = tempfile::Builder::new().prefix("outpost-bench-").tempdir().expect("tempdir");
    let dir = NodeDir::new(tmp.path().join("node"));
    let params = InitParams {
        name: "bench-edge".into(),
        role: Role::Edge,
        org: Some("RX6".into()),
        icb: Some("QHM".into()),
        lines: vec![],
    };
    Node::init(&dir, &params, 1_790_000_000_000).expect("init");
    let mut node = Node::open(&dir).expect("open");

    let base_path = tmp.path().join("baseline.db");
    let base = rusqlite::Connection::open(&base_path).expect("baseline db");
    base.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE log (id INTEGER PRIMARY KEY, session TEXT NOT NULL, body BLOB NOT NULL);
         CREATE INDEX log_by_session ON log (session);",
    )
    .expect("baseline schema");

    let mut rng = Rng(0x05EE_D0F1_u64);
    let mut raw_text = 0usize;
    let (mut ours, mut theirs) = (Vec::with_capacity(n * 6), Vec::with_capacity(n * 6));
    let base_insert = |session: &str, body: &str, lat: &mut Vec<f64>| {
        let t = Instant::now();
        base.execute("INSERT INTO log (session, body) VALUES (?1, ?2)", rusqlite::params![session, body.as_bytes()])
            .expect("baseline insert");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    };
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    let mut early: Option<(usize, [u64; 3])> = None;
    for i in 0..n {
        let now = 1_790_000_000_000 + (i as i64) * 60_000;
        let summary = format!("{} Please advise. (session {i})", rng.pick(OPENINGS));
        let nhs = nhs_number(&mut rng);
        raw_text += summary.len() + 10;
        let req = SessionRequest {
            care_setting: CareSetting::GpUrgent,
            requester: Requester::default(),
            patient: Patient { nhs_number: Some(nhs), verification: NhsVerification::NotTraced, ..Patient::default() },
            service: Service { line: ServiceLine::ALL[i % 7], channel: Channel::Message, priority: Priority::Urgent },
            summary: summary.clone(),
            draft: false,
        };
        let t = Instant::now();
        let id = node.new_session(req, now).expect("create").id;
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        let sid = id.to_string();
        base_insert(&sid, &format!("{} {summary}", nhs.digits()), &mut theirs);
        for m in 0..MSGS {
            let text = message(&mut rng, m);
            raw_text += text.len();
            let t = Instant::now();
            node.send_message(id, &text, None, now + 1 + m as i64).expect("send");
            ours.push(t.elapsed().as_secs_f64() * 1e3);
            base_insert(&sid, &text, &mut theirs);
        }
        ids.push(id);
        if i + 1 == n / 10 {
            // The same commands on a tenth of the store: memory must not grow with the
            // sessions stored (ARCHITECTURE's invariant), beyond what a command prints.
            let d = dir.root().to_str().expect("utf-8 path");
            let one = ids[i / 2].to_string();
            let report = tmp.path().join("peak-early.txt");
            early = Some((
                i + 1,
                [
                    peak_rss_kib(&["status", "--dir", d], &report),
                    peak_rss_kib(&["session", "show", "--dir", d, &one], &report),
                    peak_rss_kib(&["message", "send", "--dir", d, &one, "benchmark write"], &report),
                ],
            ));
        }
        if (i + 1) % 1000 == 0 {
            eprintln!("  {} sessions written ({:.0} s)", i + 1, started.elapsed().as_secs_f64());
        }
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);

    // Listing: every session's card, decrypted. Three rounds, best kept.
    let mut list_rate = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let cards = node.list(&ListFilter::default()).expect("list");
        assert_eq!(cards.len(), n);
        list_rate = list_rate.max(n as f64 / t.elapsed().as_secs_f64());
    }
    let mut base_rate = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut stmt = base.prepare("SELECT session, body FROM log").expect("baseline list");
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .expect("baseline list")
            .count();
        assert_eq!(rows, n * (MSGS + 1));
        base_rate = base_rate.max(n as f64 / t.elapsed().as_secs_f64());
    }

    let db = dir.db_path();
    let as_written = file_size(&db) + file_size(&wal_path(&db));
    let base_written = file_size(&base_path) + file_size(&wal_path(&base_path));
    node.raw_store().checkpoint().expect("checkpoint");
    if std::env::var_os("BENCH_DBSTAT").is_some() {
        let conn = rusqlite::Connection::open(&db).expect("open for dbstat");
        let mut stmt = conn
            .prepare("SELECT name, sum(pgsize), sum(payload), count(*) FROM dbstat GROUP BY name ORDER BY 2 DESC")
            .expect("dbstat");
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
            })
            .expect("dbstat");
        for row in rows {
            let (name, pages, payload, count) = row.expect("dbstat row");
            eprintln!(
                "  {name:<28} {:>8.1} KiB in pages, {:>8.1} KiB payload, {count} pages",
                pages as f64 / 1024.0,
                payload as f64 / 1024.0
            );
        }
    }
    let checkpointed = file_size(&db) + file_size(&wal_path(&db));
    drop(node);

    let d = dir.root().to_str().expect("utf-8 path");
    let one = ids[n / 2].to_string();
    let report = tmp.path().join("peak.txt");
    let peaks = [
        ("session list --json (all)", peak_rss_kib(&["session", "list", "--dir", d, "--json"], &report)),
        ("status", peak_rss_kib(&["status", "--dir", d], &report)),
        ("session show", peak_rss_kib(&["session", "show", "--dir", d, &one], &report)),
        ("message send", peak_rss_kib(&["message", "send", "--dir", d, &one, "benchmark write"], &report)),
    ];
    let peak = peaks.iter().map(|p| p.1).max().unwrap_or(0);

    let mib = |b: u64| b as f64 / 1048576.0;
    println!();
    println!("outpost store benchmark: {n} sessions x {MSGS} messages, {} durable writes each side", ours.len());
    println!("write time {:.0} s in all, on this machine", started.elapsed().as_secs_f64());
    println!();
    println!("| measure | outpost | baseline (bare SQLite, same durability) | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| durable write p50 | {:.3} ms | {:.3} ms | {:.1}x | |",
        pct(&ours, 0.5),
        pct(&theirs, 0.5),
        pct(&ours, 0.5) / pct(&theirs, 0.5)
    );
    println!(
        "| durable write p99 | {:.3} ms | {:.3} ms | {:.1}x | < 10 ms: {} |",
        pct(&ours, 0.99),
        pct(&theirs, 0.99),
        pct(&ours, 0.99) / pct(&theirs, 0.99),
        if pct(&ours, 0.99) < 10.0 { "met" } else { "MISSED" }
    );
    println!("| durable write max | {:.3} ms | {:.3} ms | | |", pct(&ours, 1.0), pct(&theirs, 1.0));
    println!(
        "| sessions listed per second | {:.0} | {:.0} (rows read, no decryption) | {:.2}x | |",
        list_rate,
        base_rate,
        list_rate / base_rate
    );
    println!(
        "| store on disk, as written (db + WAL) | {:.1} MiB | {:.1} MiB | {:.1}x | |",
        mib(as_written),
        mib(base_written),
        as_written as f64 / base_written as f64
    );
    println!(
        "| store on disk, checkpointed | {:.1} MiB | | {:.2}x raw text ({:.1} MiB) | < 3x: {} |",
        mib(checkpointed),
        checkpointed as f64 / raw_text as f64,
        mib(raw_text as u64),
        if (checkpointed as f64) < 3.0 * raw_text as f64 { "met" } else { "MISSED" }
    );
    for (what, kib) in &peaks {
        println!("| peak memory, `outpost {what}` | {:.1} MiB | | | |", *kib as f64 / 1024.0);
    }
    println!(
        "| peak memory, worst of the above | {:.1} MiB | | | < 64 MiB: {} |",
        peak as f64 / 1024.0,
        if peak < 64 * 1024 { "met" } else { "MISSED" }
    );
    if let Some((small, kib)) = early {
        println!();
        println!("| peak memory by sessions stored | {small} sessions | {n} sessions | ratio | target |");
        println!("|---|---|---|---|---|");
        for (what, small_kib, k) in [("status", kib[0], 1), ("session show", kib[1], 2), ("message send", kib[2], 3)] {
            let large_kib = peaks[k].1;
            let ratio = large_kib as f64 / small_kib.max(1) as f64;
            println!(
                "| `outpost {what}` | {:.1} MiB | {:.1} MiB | {ratio:.2} | does not grow with the store (< 1.25x for 10x the sessions): {} |",
                small_kib as f64 / 1024.0,
                large_kib as f64 / 1024.0,
                if ratio < 1.25 { "met" } else { "MISSED" }
            );
        }
    }
}
