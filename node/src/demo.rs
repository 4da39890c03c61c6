//! `outpost demo`: a day's offline work on one ambulance tablet, in a temporary directory.
//!
//! Everything goes through the same node operations as the CLI: real SQLite files, real
//! encryption, real durability. The day's clock is simulated (07:00 to 19:00 of today, UTC) so
//! that the timeline reads like a shift; durable write latency is measured on the real clock.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sync_protocol::NhsNumber;
use sync_protocol::session::{Patient, Requester, Service, SessionId, SessionView};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, Role, ServiceLine,
    Side, Status,
};

use crate::config::NodeDir;
use crate::node::{InitParams, Node, NodeError, PhotoRequest, SessionRequest, now_ms};
use crate::photo;
use crate::render::{bytes, render_session, time};
use crate::store::{ListFilter, wal_path};

mod fleet;

/// Counts where each needle occurs in the given files (the plaintext check).
pub fn scan_files(paths: &[PathBuf], needles: &[&[u8]]) -> std::io::Result<Vec<usize>> {
    let mut counts = vec![0; needles.len()];
    for p in paths {
        let data = match std::fs::read(p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for (i, n) in needles.iter().enumerate() {
            counts[i] += data.windows(n.len()).filter(|w| w == n).count();
        }
    }
    Ok(counts)
}

struct Day {
    node: Node,
    clock: i64,
    latencies: Vec<f64>,
    texts: Vec<String>,
    nhs_numbers: Vec<String>,
}

impl Day {
    fn at(&mut self, hh: i64, mm: i64) -> i64 {
        let midnight = now_ms() / 86_400_000 * 86_400_000;
        self.clock = midnight + (hh * 60 + mm) * 60_000;
        self.clock
    }

    fn timed<T>(&mut self, f: impl FnOnce(&mut Node, i64) -> Result<T, NodeError>) -> Result<T, NodeError> {
        let start = Instant::now();
        let out = f(&mut self.node, self.clock)?;
        self.latencies.push(start.elapsed().as_secs_f64() * 1e3);
        Ok(out)
    }

    fn session(&mut self, req: SessionRequest) -> anyhow::Result<SessionView> {
        if let Some(n) = &req.patient.nhs_number {
            self.nhs_numbers.push(n.digits());
        }
        self.texts.push(req.summary.clone());
        let view = self.timed(|n, now| n.new_session(req, now))?;
        println!(
            "{}  new session {}  {} / {} / {}{}",
            clock(self.clock),
            short(view.id),
            view.service.line,
            view.service.priority,
            view.identity.care_setting,
            view.patient
                .nhs_number
                .as_deref()
                .and_then(|n| NhsNumber::parse(n).ok())
                .map(|n| format!("  NHS {}", n.grouped()))
                .unwrap_or_default()
        );
        Ok(view)
    }

    fn message(&mut self, id: SessionId, text: &str) -> anyhow::Result<()> {
        self.texts.push(text.to_string());
        self.timed(|n, now| n.send_message(id, text, None, now))?;
        println!("{}    message ({} B) → on this device only: \"{}\"", clock(self.clock), text.len(), trim(text, 56));
        Ok(())
    }

    fn photo(&mut self, id: SessionId, view: PhotoView, site: &str, seed: u64) -> anyhow::Result<()> {
        let photo = photo::synthetic_jpeg(1920, 1440, seed).map_err(NodeError::from)?;
        let req = PhotoRequest {
            view,
            body_site: site.into(),
            consent: ConsentKind::Verbal,
            scope: ConsentScope::RecordOnly,
        };
        let info = self.timed(|n, now| n.attach_photo(id, &photo, &req, now))?;
        println!(
            "{}    photo {view}, {site}: {} in {} sealed chunks, blake3 {}…",
            clock(self.clock),
            bytes(info.size),
            info.chunks,
            &info.hash[..12]
        );
        Ok(())
    }

    fn outcome(&mut self, id: SessionId, outcome: Outcome) -> anyhow::Result<()> {
        self.timed(|n, now| n.set_outcome(id, Side::Requester, outcome, now))?;
        println!("{}    outcome (requester): {outcome}", clock(self.clock));
        Ok(())
    }
}

fn clock(ms: i64) -> String {
    time(ms)[11..16].to_string()
}

fn short(id: SessionId) -> String {
    id.to_string()[..10].to_string()
}

fn trim(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { format!("{}…", s.chars().take(n).collect::<String>()) }
}

fn patient(nhs: &str) -> anyhow::Result<Patient> {
    Ok(Patient {
        nhs_number: Some(NhsNumber::parse(nhs)?),
        verification: NhsVerification::Verified,
        ..Patient::default()
    })
}

fn crew() -> Requester {
    Requester {
        registration: Some("PA123456".into()),
        role: Some("paramedic".into()),
        org_ods: None,
        call_sign: Some("NY-RRV-07".into()),
        incident: None,
        callback: Some("07700 900123".into()),
    }
}

/// Runs the demo; with `keep`, the node directory is left there for inspection; with `serve`,
/// the fleet and its apps stay up until Ctrl-C.
pub fn run(keep: Option<&Path>, serve: bool) -> anyhow::Result<()> {
    let temp;
    let base = match keep {
        Some(p) => p.to_path_buf(),
        None => {
            temp = tempfile::Builder::new().prefix("outpost-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    offline_day(&base.join("offline").join("amb-07"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(fleet::run(&base.join("fleet"), serve))
}

/// Part one: a day's work on one tablet with no network at all.
fn offline_day(root: &Path) -> anyhow::Result<()> {
    let dir = NodeDir::new(root);
    let params = InitParams {
        name: "amb-07".into(),
        role: Role::Edge,
        org: Some("RX6".into()),
        icb: Some("QHM".into()),
        lines: vec![],
    };
    let cfg = Node::init(&dir, &params, now_ms())?;
    println!("outpost demo\n\npart 1: a day's offline work on one ambulance tablet (no network all day)\n");
    println!("node {} ({} node, organisation RX6, ICB QHM) in {}", cfg.name, cfg.role, root.display());
    println!("key id {} in node.key (mode 600); store outpost.db: SQLite, WAL, synchronous=FULL\n", cfg.key_id);

    let node = Node::open(&dir)?;
    let mut day = Day { node, clock: 0, latencies: Vec::new(), texts: Vec::new(), nhs_numbers: Vec::new() };

    day.at(7, 12);
    let chest = day.session(SessionRequest {
        care_setting: CareSetting::AmbulanceOnScene,
        requester: Requester { incident: Some("INC-2611-0412".into()), ..crew() },
        patient: patient("9434765919")?,
        service: Service { line: ServiceLine::EmergencyMedicine, channel: Channel::Call, priority: Priority::Urgent },
        summary: "72M central chest pain 40 min, settled with GTN; ECG no acute ST change. Convey or treat at home?"
            .into(),
        draft: false,
    })?;
    day.at(7, 14);
    day.message(
        chest.id,
        "Obs: HR 88 reg, BP 148/90, SpO2 96% RA, RR 18, temp 36.8. Pain-free now. PMH angina, on bisoprolol.",
    )?;
    day.at(7, 31);
    day.message(
        chest.id,
        "Still no link out here. Pt wants to stay home; wife present. Troponin not available on scene.",
    )?;
    day.at(7, 55);
    day.outcome(chest.id, Outcome::ConveyedEd)?;
    day.node.set_status(chest.id, Status::Closed, day.clock)?;
    println!("{}    closed", clock(day.clock));

    day.at(9, 40);
    let skin = day.session(SessionRequest {
        care_setting: CareSetting::AmbulanceOnScene,
        requester: Requester { incident: Some("INC-2611-0533".into()), ..crew() },
        patient: patient("9000000009")?,
        service: Service { line: ServiceLine::Dermatology, channel: Channel::Photo, priority: Priority::TwoWeekWait },
        summary: "81F care home resident, enlarging pigmented lesion left forearm, bleeds on contact. Please advise."
            .into(),
        draft: false,
    })?;
    day.at(9, 43);
    day.photo(skin.id, PhotoView::Site, "left forearm", 1)?;
    day.at(9, 44);
    day.photo(skin.id, PhotoView::CloseUp, "left forearm", 2)?;
    day.at(9, 45);
    day.photo(skin.id, PhotoView::Dermoscopic, "left forearm", 3)?;
    day.at(9, 47);
    day.message(
        skin.id,
        "Lesion 14 mm, irregular border, two colours. Noticed by carers 6 weeks ago. No other lesions.",
    )?;

    day.at(11, 5);
    let child = day.session(SessionRequest {
        care_setting: CareSetting::AmbulanceOnScene,
        requester: crew(),
        patient: patient("4010232137")?,
        service: Service { line: ServiceLine::Paediatrics, channel: Channel::Message, priority: Priority::Urgent },
        summary: "3y febrile 39.2, non-blanching? rash on legs, alert and drinking. Parents anxious.".into(),
        draft: false,
    })?;
    day.at(11, 7);
    day.message(child.id, "Glass test: rash blanches fully on recheck. CRT <2s, HR 130. Safety-netting given.")?;
    day.at(11, 20);
    day.outcome(child.id, Outcome::ConveyanceAvoided)?;

    day.at(13, 30);
    println!("{}  new session refused: NHS number 9434765918", clock(day.clock));
    match NhsNumber::parse("9434765918") {
        Err(e) => println!("          error: {e}; nothing was written"),
        Ok(_) => anyhow::bail!("the demo's invalid NHS number was accepted"),
    }

    day.at(15, 10);
    let draft = day.session(SessionRequest {
        care_setting: CareSetting::AmbulanceOnScene,
        requester: crew(),
        patient: Patient { name: Some("unknown male, approx 50".into()), ..Patient::default() },
        service: Service { line: ServiceLine::Cardiology, channel: Channel::Message, priority: Priority::Routine },
        summary: "Intermittent palpitations for 3 weeks, ECG strip attached later; no NHS number available on scene."
            .into(),
        draft: true,
    })?;
    day.at(15, 25);
    day.node.set_status(draft.id, Status::Queued, day.clock)?;
    println!("{}    draft submitted (queued)", clock(day.clock));

    day.at(18, 40);
    let cancelled = day.session(SessionRequest {
        care_setting: CareSetting::AmbulanceOnScene,
        requester: crew(),
        patient: patient("9434765870")?,
        service: Service {
            line: ServiceLine::Gastroenterology,
            channel: Channel::Message,
            priority: Priority::Routine,
        },
        summary: "Known Crohn's, 2 days diarrhoea, tolerating fluids. Advice on steroids?".into(),
        draft: false,
    })?;
    day.at(18, 52);
    day.node.set_status(cancelled.id, Status::Cancelled, day.clock)?;
    println!("{}    cancelled (patient's own GP took over)", clock(day.clock));

    println!("\nsessions on this tablet (outpost session list):");
    for c in day.node.list(&ListFilter::default())? {
        println!(
            "  {}  {:<16} {:<19} {} msg, {} photo, {} on this device only",
            short(c.id),
            c.status.as_str(),
            c.service_line.as_str(),
            c.messages,
            c.photos,
            c.on_device_only
        );
    }

    println!("\nthe photo session (outpost session show):");
    let view = day.node.show(skin.id, day.clock)?;
    for line in render_session(&view, &cfg.name).lines() {
        println!("  {line}");
    }

    let stats = day.node.stats()?;
    let files = [dir.db_path(), wal_path(&dir.db_path())];
    let mut needles: Vec<Vec<u8>> = day.nhs_numbers.iter().map(|n| n.as_bytes().to_vec()).collect();
    needles.extend(day.texts.iter().map(|t| t.as_bytes()[..t.len().min(24)].to_vec()));
    let refs: Vec<&[u8]> = needles.iter().map(Vec::as_slice).collect();
    let found: usize = scan_files(&files, &refs)?.iter().sum();
    let audit = day.node.verify_audit()?;
    let automerge = day.node.export(skin.id, crate::node::ExportFormat::Automerge, now_ms())?;
    let json = serde_json::to_vec(&day.node.view(skin.id)?)?;

    let mut lat = day.latencies.clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];

    println!("\nwhat is stored, and how big:");
    println!("  {} sessions, {} photos ({} of image data)", stats.sessions, stats.blobs, bytes(stats.blob_bytes));
    println!(
        "  documents: {} snapshots ({}) + {} logged changes ({}), all sealed with XChaCha20-Poly1305",
        stats.snapshots,
        bytes(stats.snapshot_bytes),
        stats.log_changes,
        bytes(stats.log_bytes)
    );
    println!("  files: outpost.db {} + outpost.db-wal {}", bytes(stats.db_file_bytes), bytes(stats.wal_file_bytes));
    println!(
        "  the photo session exports as {} of Automerge (readable by automerge-js) or {} of JSON",
        bytes(automerge.len() as u64),
        bytes(json.len() as u64)
    );
    println!(
        "  plaintext check: {} NHS numbers and {} message texts searched in the database and WAL: {} found",
        day.nhs_numbers.len(),
        day.texts.len(),
        found
    );
    println!(
        "  audit chain: {} entries, {}",
        audit.entries,
        if audit.broken_at.is_none() { "intact" } else { "BROKEN" }
    );
    println!(
        "  {} durable writes (each fsynced before it was acknowledged): p50 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(0.5),
        pct(1.0)
    );
    println!(
        "\nnothing has left the tablet: every message and photo says \"on this device only\" until a hub confirms it."
    );
    if found != 0 {
        anyhow::bail!("patient data was found in the clear on disk");
    }
    Ok(())
}
