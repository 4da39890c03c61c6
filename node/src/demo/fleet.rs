//! Part two of the demo: a hub, an ambulance, a surgery and a consultant's desk on loopback,
//! each a real node (its own SQLite store, its own key, its own certificate from a fleet CA)
//! served by the same daemon code as `outpost run`, talking QUIC with mutual TLS. Every node
//! reaches the hub through the link emulator: the ambulance over rural A-road 4G, the surgery
//! over its rural fixed line, the desk over the hospital network.

use std::path::Path;
use std::time::{Duration, Instant};

use sync_protocol::NhsNumber;
use sync_protocol::call::{RotaDesk, calls_of};
use sync_protocol::directory::{Hours, LineEntry};
use sync_protocol::engine::{Applied, Incoming};
use sync_protocol::leg::legs_of;
use sync_protocol::routing::{RoutingEntry, Verdict};
use sync_protocol::session::{Patient, Requester, Service, SessionId, SessionView};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, ReceiptLevel, Role,
    ServiceLine, Side,
};

use crate::config::NodeDir;
use crate::linkem::{EmulatorOptions, LinkEmulator};
use crate::net::{Daemon, RunOptions};
use crate::node::{AccessLimits, InitParams, Node, PhotoRequest, RecordLimits, SessionRequest, now_ms};
use crate::photo;
use crate::render::bytes;
use crate::settings::Limits;
use crate::store::people::{Credential, NewPerson, PersonRole};
use crate::tls::CaDir;

const WAIT: Duration = Duration::from_secs(60);
/// The demo consultant's and paramedic's PINs (users of their own nodes' local APIs).
const DESK_PIN: &str = "derm-desk-4471";
const AMB_PIN: &str = "amb-pin-8302";

struct Clock(Instant, i64);

impl Clock {
    fn say(&self, who: &str, what: impl AsRef<str>) {
        println!("  t={:>6.2}s  {:<12} {}", self.0.elapsed().as_secs_f64(), who, what.as_ref());
    }

    /// Seconds since the start of the timeline at a wall-clock time (ms) written in a document.
    fn at(&self, ms: i64) -> f64 {
        (ms - self.1) as f64 / 1000.0
    }
}

fn make_node(
    root: &Path,
    ca: &CaDir,
    name: &str,
    role: Role,
    org: &str,
    lines: Vec<ServiceLine>,
) -> anyhow::Result<Node> {
    let dir = NodeDir::new(root.join(name));
    let params = InitParams { name: name.into(), role, org: Some(org.into()), icb: Some("QHM".into()), lines };
    Node::init(&dir, &params, now_ms())?;
    let mut node = Node::open(&dir)?;
    let issued = ca.issue(&node.config().peer_info(), &node.author_public(), 365, false)?;
    node.install_certificate(&issued.cert_pem, &issued.key_pem, &issued.ca_pem)?;
    let (n, der) = ca.crl()?;
    node.install_revocations(n, &der)?;
    Ok(node)
}

async fn view(d: &Daemon, id: SessionId) -> Option<SessionView> {
    d.with_node(move |n| n.view(id).ok()).await.ok().flatten()
}

/// Polls until `check` holds on the daemon's view of the session.
async fn until(
    d: &Daemon,
    id: SessionId,
    what: &str,
    check: impl Fn(&SessionView) -> bool,
) -> anyhow::Result<SessionView> {
    let start = Instant::now();
    loop {
        if let Some(v) = view(d, id).await
            && check(&v)
        {
            return Ok(v);
        }
        if start.elapsed() > WAIT {
            anyhow::bail!("the demo waited {WAIT:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs part two in `root`; with `serve`, leaves the fleet and its apps up until Ctrl-C.
pub async fn run(root: &Path, serve: bool) -> anyhow::Result<()> {
    println!("\npart 2: a hub, an ambulance, a surgery and a consultant's desk (real QUIC, mutual TLS, loopback)\n");
    let ca = CaDir::new(root.join("ca"));
    ca.init("demo")?;
    let mut hub = make_node(root, &ca, "hub-qhm", Role::Hub, "QHM", vec![])?;
    // The hub's dermatology rota: the desk is rung for 20 s.
    hub.set_line(
        LineEntry {
            line: ServiceLine::Dermatology,
            hours: Hours::Always,
            channels: vec![Channel::Call, Channel::Photo, Channel::Message],
            rota: vec![RotaDesk { desk: "desk-derm-1".into(), ring_s: 20 }],
            fallback_hub: None,
            updated_ms: now_ms(),
        },
        now_ms(),
    )?;
    let mut amb = make_node(root, &ca, "amb-07", Role::Edge, "RX6", vec![])?;
    let surgery = make_node(root, &ca, "surgery-12", Role::Edge, "B82005", vec![])?;
    let mut desk = make_node(root, &ca, "desk-derm-1", Role::Desk, "RTH", vec![ServiceLine::Dermatology])?;
    // Each app's user, as `outpost user add` makes them (the PIN kept only as an argon2id hash).
    let person = |name: &str, role, reg: &str| NewPerson { name: name.into(), role, registration: Some(reg.into()) };
    let ada = person("Dr Ada Okafor", PersonRole::Consultant, "GMC-7012345");
    desk.add_person(&ada, &Credential::Secret(DESK_PIN.into()), now_ms())?;
    let sam = person("Sam Patel", PersonRole::Paramedic, "HCPC-PA123456");
    amb.add_person(&sam, &Credential::Secret(AMB_PIN.into()), now_ms())?;

    let hub = Daemon::start(
        hub,
        RunOptions {
            listen: Some("127.0.0.1:0".parse()?),
            metrics: Some("127.0.0.1:0".parse()?),
            ..RunOptions::default()
        },
    )
    .await?;
    let hub_addr = hub.local_addr.ok_or_else(|| anyhow::anyhow!("the hub is not listening"))?;
    let profile = sync_protocol::links::profile("rural-a-road").ok_or_else(|| anyhow::anyhow!("no profile"))?;
    let link =
        LinkEmulator::start("127.0.0.1:0".parse()?, hub_addr, profile.clone(), EmulatorOptions::default()).await?;
    // The surgery and the desk reach the hub through emulated links of their own.
    let emulate = |name: &str| sync_protocol::links::profile(name).ok_or_else(|| anyhow::anyhow!("no profile {name}"));
    let surgery_link =
        LinkEmulator::start("127.0.0.1:0".parse()?, hub_addr, emulate("rural-surgery")?, EmulatorOptions::default())
            .await?;
    let desk_link =
        LinkEmulator::start("127.0.0.1:0".parse()?, hub_addr, emulate("hospital")?, EmulatorOptions::default()).await?;
    println!(
        "  fleet CA in {}; hub-qhm on {hub_addr}; every node reaches it through the link emulator:",
        ca_dir_name(root)
    );
    for (who, p) in [
        ("amb-07", &profile),
        ("surgery-12", &emulate("rural-surgery")?),
        ("desk-derm-1 (dermatology)", &emulate("hospital")?),
    ] {
        println!(
            "    {who:<26} {:<14} {:>6} kbit/s up, {:.0}-{:.0} ms RTT, {:.2}% burst loss",
            p.name,
            p.uplink_bps / 1000,
            p.rtt_ms.0,
            p.rtt_ms.1,
            p.loss.mean_loss() * 100.0
        );
    }
    println!();

    let clock = Clock(Instant::now(), now_ms());
    link.set_up(false);
    clock.say("amb-07", "on the moor road, in a not-spot: no link");
    let loopback = Some("127.0.0.1:0".parse()?);
    // The tablet flags a person who opens the 3rd different record in an hour and refuses one
    // past the 5th, so that the demo can show it (a deployed node: 60 and 200).
    let records = AccessLimits {
        person: RecordLimits { alarm: 3, limit: 5, cards_alarm: 2_000, day_alarm: 300 },
        ..AccessLimits::default()
    };
    let amb_opts = RunOptions {
        peers: vec![link.local_addr.into()],
        api: loopback,
        limits: Limits { records, ..Limits::default() },
        ..RunOptions::default()
    };
    let amb = Daemon::start(amb, amb_opts).await?;
    // The consultant's desk answers calls by itself in the demo (`outpost run --auto-answer`).
    // It says a few words into the call and records what it hears.
    let desk_voice = root.join("consultant.wav");
    crate::media::write_wav(&desk_voice, &crate::media::synthetic_speech(4.0))?;
    let desk_opts = RunOptions {
        peers: vec![desk_link.local_addr.into()],
        auto_answer: true,
        play: Some(desk_voice),
        record: Some(root.join("heard-at-desk.wav")),
        api: loopback,
        ..RunOptions::default()
    };
    let desk = Daemon::start(desk, desk_opts).await?;
    let desk_api = desk.api_addr.ok_or_else(|| anyhow::anyhow!("the desk serves no API"))?;
    let ada = App::sign_in("desk-derm-1", desk_api, "Dr Ada Okafor", DESK_PIN).await?;
    let desk_events = ada.events().await?;
    clock.say(
        ada.who,
        format!("Dr Ada Okafor signs in to the desk app (local API http://{desk_api}/api; its event stream open)"),
    );
    let surgery =
        Daemon::start(surgery, RunOptions { peers: vec![surgery_link.local_addr.into()], ..RunOptions::default() })
            .await?;

    // The surgery's cardiology question: the dermatology desk must never see it.
    let cardio = surgery
        .with_node(|n| {
            n.new_session(
                SessionRequest {
                    care_setting: CareSetting::GpElective,
                    requester: Requester { role: Some("GP".into()), ..Requester::default() },
                    patient: Patient {
                        nhs_number: NhsNumber::parse("4010232137").ok(),
                        verification: NhsVerification::Verified,
                        ..Patient::default()
                    },
                    service: Service {
                        line: ServiceLine::Cardiology,
                        channel: Channel::Message,
                        priority: Priority::Routine,
                    },
                    summary: "Intermittent palpitations, Holter arranged; is a cardiology referral needed?".into(),
                    draft: false,
                },
                now_ms(),
            )
        })
        .await??
        .id;
    surgery.announce(vec![cardio.to_bytes()]);
    clock.say("surgery-12", format!("cardiology session {} (a GP's question)", short(cardio)));

    // The paramedic writes up the case and takes three photos, offline.
    let id = amb
        .with_node(|n| {
            n.new_session(
                SessionRequest {
                    care_setting: CareSetting::AmbulanceOnScene,
                    requester: Requester {
                        role: Some("paramedic".into()),
                        call_sign: Some("NY-RRV-07".into()),
                        ..Requester::default()
                    },
                    patient: Patient {
                        nhs_number: NhsNumber::parse("9000000009").ok(),
                        verification: NhsVerification::Verified,
                        ..Patient::default()
                    },
                    service: Service {
                        line: ServiceLine::Dermatology,
                        channel: Channel::Photo,
                        priority: Priority::TwoWeekWait,
                    },
                    summary: "81F, enlarging pigmented lesion left forearm, bleeds on contact".into(),
                    draft: false,
                },
                now_ms(),
            )
        })
        .await??
        .id;
    clock.say("amb-07", format!("dermatology session {} created", short(id)));
    let text = "Lesion 14 mm, irregular border, two colours; noticed by carers 6 weeks ago.";
    amb.with_node(move |n| n.send_message(id, text, None, now_ms())).await??;
    clock.say("amb-07", "message written: on this device only");
    let mut photo_bytes = 0u64;
    for (seed, view) in [(11, PhotoView::Site), (12, PhotoView::CloseUp), (13, PhotoView::Dermoscopic)] {
        // Photos resized before sending, as the brief says clinical apps do (200-500 KB).
        let p = photo::synthetic_jpeg(800, 600, seed)?;
        photo_bytes += p.bytes.len() as u64;
        let req = PhotoRequest {
            view,
            body_site: "left forearm".into(),
            consent: ConsentKind::Verbal,
            scope: ConsentScope::RecordOnly,
        };
        let info = amb.with_node(move |n| n.attach_photo(id, &p, &req, now_ms())).await??;
        clock.say("amb-07", format!("photo {view} ({}) taken: on this device only", bytes(info.size)));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let v = view(&amb, id).await.ok_or_else(|| anyhow::anyhow!("session missing"))?;
    let local: Vec<&str> =
        v.messages.iter().map(|m| m.receipt.describe()).chain(v.media.iter().map(|m| m.receipt.describe())).collect();
    clock.say("amb-07", format!("still no link; the app shows: {}", local.join(", ")));

    link.set_up(true);
    clock.say("amb-07", "back in coverage: link up, daemon reconnects");
    // The paramedic wants a consultant's voice: escalate now, while the photos are still uploading.
    let amb_voice = root.join("paramedic.wav");
    crate::media::write_wav(&amb_voice, &crate::media::synthetic_speech(4.0))?;
    let plan = crate::media::MediaPlan { play: Some(amb_voice), record: Some(root.join("heard-at-ambulance.wav")) };
    let call = amb
        .with_node(move |n| -> Result<String, crate::node::NodeError> {
            let call = n.escalate(id, now_ms())?;
            n.set_media_plan(&call, &plan)?;
            Ok(call)
        })
        .await??;
    amb.announce(vec![id.to_bytes()]);
    clock.say("amb-07", "asks for a call with a dermatology consultant (escalation recorded in the session)");
    let start = Instant::now();
    let directory = loop {
        if let Some(d) = amb.with_node(|n| n.directory()).await?? {
            break d;
        }
        if start.elapsed() > WAIT {
            anyhow::bail!("the demo waited {WAIT:?} for the ICB directory to reach the ambulance");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rota: Vec<String> = directory
        .lines
        .get(&ServiceLine::Dermatology)
        .map(|l| l.rota.iter().map(|d| format!("{} ({} s)", d.desk, d.ring_s)).collect())
        .unwrap_or_default();
    clock.say(
        "amb-07",
        format!(
            "ICB directory received from the hub: {} line(s); dermatology rota {} (the hub's copy decides)",
            directory.lines.len(),
            rota.join(" -> ")
        ),
    );
    until(&amb, id, "the message at the hub", |v| v.messages[0].receipt >= ReceiptLevel::Hub).await?;
    clock.say("amb-07", "message → at hub (stored durably there before it said so)");
    until(&desk, id, "the session at the desk", |_| true).await?;
    clock.say("desk-derm-1", "holds the session (pushed by the hub: dermatology, ICB QHM)");
    let sid = id.to_string();
    let (card, _) = event(&desk_events, "the case", |n, v| n == "session" && v["card"]["id"] == sid.as_str()).await?;
    clock.say(
        ada.who,
        format!(
            "app: the case is on the consultant's screen, no polling (a `session` event): {}",
            card["card"]["summary"]
        ),
    );
    until(&amb, id, "the message at the consultant", |v| v.messages[0].receipt >= ReceiptLevel::Desk).await?;
    clock.say("amb-07", "message → at consultant");
    for i in 0..3 {
        let v = until(&amb, id, "a photo at the hub", move |v| {
            v.media.len() == 3 && v.media[i].receipt >= ReceiptLevel::Hub
        })
        .await?;
        clock.say(
            "amb-07",
            format!("photo {} → at hub (every 16 KiB chunk verified against its BLAKE3 hash)", v.media[i].view),
        );
    }
    let offloaded = amb
        .with_node(move |n| -> Result<Vec<String>, crate::store::StoreError> {
            let v = n.view(id)?;
            v.media.iter().map(|m| n.blob_info(&m.hash).map(|b| b.state)).collect()
        })
        .await??;
    clock.say(
        "amb-07",
        format!("photos deleted from the tablet once the hub held them: {} (thumbnails kept)", offloaded.join(", ")),
    );
    until(&amb, id, "the photos at the consultant", |v| v.media.iter().all(|m| m.receipt >= ReceiptLevel::Desk))
        .await?;
    clock.say("amb-07", "all three photos → at consultant");

    // The call: the hub rang only once the desk held the whole case, after checking the link.
    let call_id = call.clone();
    let v =
        until(&amb, id, "the call connected", move |v| calls_of(v).iter().any(|c| c.call == call_id && !c.is_open()))
            .await?;
    let steps: Vec<_> =
        v.routing.iter().filter_map(RoutingEntry::read).filter(|(e, _)| e.call() == Some(call.as_str())).collect();
    println!();
    for (e, at_ms) in &steps {
        let at = clock.at(*at_ms);
        let (who, what) = match e {
            RoutingEntry::Escalate { .. } => ("amb-07", "escalation asked".to_string()),
            RoutingEntry::Gate { figures: g, .. } => (
                "hub-qhm",
                format!(
                    "link to amb-07 measured with voice-like probes: round trip {:.2} ms, jitter {:.2} ms, loss {:.2}: E-model MOS {:.2} -> {}",
                    g.rtt_ms,
                    g.jitter_ms,
                    g.loss,
                    g.mos,
                    if g.verdict == Verdict::Call { "a call is possible" } else { "callback" }
                ),
            ),
            RoutingEntry::Ring { desk, .. } => ("hub-qhm", format!("rings {desk} (it holds every message and photo)")),
            RoutingEntry::Answer { .. } => ("desk-derm-1", "answers".to_string()),
            RoutingEntry::Connected { seen, ms_from_ring, .. } => (
                "hub-qhm",
                format!(
                    "call connected: {} ms from the request reaching the hub, {} ms from the ring",
                    seen.map(|(_, ms)| ms.to_string()).unwrap_or_default(),
                    ms_from_ring.map(|ms| ms.to_string()).unwrap_or_default()
                ),
            ),
            RoutingEntry::Callback { reason, .. } => ("hub-qhm", format!("callback arranged: {reason}")),
            other => ("hub-qhm", other.kind().as_str().to_string()),
        };
        println!("  t={at:>6.2}s  {who:<12} {what}");
    }
    // Four seconds of (synthetic) speech each way, relayed by the hub in QUIC datagrams; or,
    // if the link measured too poor at that moment, the callback the paramedic was told of.
    let connected = calls_of(&v).iter().any(|c| c.call == call && c.connected.is_some());
    if !connected {
        println!("  (no call over this link just now: the paramedic's app shows the reason above)\n");
    } else {
        // The demo desk answers by itself (`--auto-answer`), often before its app hears the
        // ring: the stream tells the call as it is when it looks, ringing or already connected.
        let (news, heard) = event(&desk_events, "the call", |n, v| {
            let c = &v["call"];
            n == "call" && c["session"] == sid.as_str() && (c["ringing_here"] == true || c["state"] == "connected")
        })
        .await?;
        let heard_ms = now_ms() - heard.elapsed().as_millis() as i64;
        let rung = v.routing.iter().rev().filter_map(RoutingEntry::read).find_map(|(e, at)| match e {
            RoutingEntry::Ring { .. } => Some(at),
            _ => None,
        });
        println!(
            "  t={:>6.2}s  {:<12} app: `call` event, {}: {} ms after the hub rang (the case already on screen)",
            clock.at(heard_ms),
            ada.who,
            if news["call"]["ringing_here"] == true { "ringing here" } else { "connected here" },
            rung.map(|r| heard_ms - r).unwrap_or(0)
        );
    }
    let call_id = call.clone();
    let both = move |v: &SessionView| !connected || legs_of(v).iter().filter(|l| l.call == call_id).count() >= 2;
    let v = until(&amb, id, "both legs' call records", both).await?;
    for l in legs_of(&v).into_iter().filter(|l| l.call == call) {
        println!(
            "  t={:>6.2}s  {:<12} call ended ({}): {:.1} s of audio, {} of {} frames heard (loss {:.1}%), jitter {} ms, \
             round trip {} ms, estimated MOS {} [{}]",
            clock.at(l.at_ms),
            l.node,
            l.end.as_str(),
            l.duration_ms as f64 / 1000.0,
            l.frames_received,
            l.frames_received + l.frames_concealed,
            l.loss * 100.0,
            l.jitter_ms,
            l.rtt_ms,
            l.mos,
            l.codec,
        );
    }
    println!();

    // The consultant reads, looks at the photos, replies and records an outcome, in the desk
    // app: every act a call to the desk's own API, named in its audit chain.
    let (_, shown) = ada.call("GET", &format!("/api/sessions/{id}"), None).await?;
    ok(ada.call("POST", &format!("/api/sessions/{id}/read"), None).await?, 200, "reading the case")?;
    for m in shown["media"].as_array().into_iter().flatten() {
        let hash = m["hash"].as_str().unwrap_or_default();
        ok(ada.call("GET", &format!("/api/photos/{hash}?session={id}"), None).await?, 200, "opening a photo").ok();
        ok(ada.call("POST", &format!("/api/photos/{hash}/read"), None).await?, 204, "a photo read")?;
    }
    clock.say(ada.who, "app: reads the case and opens the three photos (explicit reads: receipts written only now)");
    until(&amb, id, "the read receipts", |v| {
        v.messages[0].receipt == ReceiptLevel::Read && v.media.iter().all(|m| m.receipt == ReceiptLevel::Read)
    })
    .await?;
    clock.say("amb-07", "message and photos → read by the consultant");
    let reply = "Likely nodular melanoma: refer on the two-week-wait pathway today; no need to convey.";
    let body = serde_json::json!({ "text": reply, "client_key": "demo-reply-1" });
    ok(ada.call("POST", &format!("/api/sessions/{id}/messages"), Some(body)).await?, 201, "the reply")?;
    let outcome = serde_json::json!({ "side": Side::Responder, "outcome": Outcome::ReferralMade });
    ok(ada.call("POST", &format!("/api/sessions/{id}/outcome"), Some(outcome)).await?, 204, "the outcome")?;
    clock.say(ada.who, format!("app: replies \"{reply}\""));
    let v = until(&amb, id, "the reply at the ambulance", |v| v.messages.len() == 2).await?;
    let signed = v.messages[1]
        .clinician
        .as_ref()
        .map(|c| format!("{} ({}, {})", c.name, c.role, c.registration.as_deref().unwrap_or("no registration")));
    clock.say(
        "amb-07",
        format!("reply received, signed {}; session now {}", signed.unwrap_or_else(|| "by the desk".into()), v.status),
    );
    // The crew's app: Sam Patel opens the advice and records the crew's outcome.
    let amb_api = amb.api_addr.ok_or_else(|| anyhow::anyhow!("the ambulance serves no API"))?;
    let sam = App::sign_in("amb-07", amb_api, "Sam Patel", AMB_PIN).await?;
    ok(sam.call("POST", &format!("/api/sessions/{id}/read"), None).await?, 200, "the crew reading the advice")?;
    let outcome = serde_json::json!({ "side": Side::Requester, "outcome": Outcome::ConveyanceAvoided });
    ok(sam.call("POST", &format!("/api/sessions/{id}/outcome"), Some(outcome)).await?, 204, "the crew's outcome")?;
    clock.say(sam.who, "app: Sam Patel opens the advice and records the crew's outcome");
    // The reply is the session's second message: only its receipt says the crew read it.
    event(&desk_events, "the crew's read receipt", |n, v| {
        let card = &v["card"];
        n == "session" && card["id"] == sid.as_str() && card["messages"] == 2 && card["last_message_receipt"] == "read"
    })
    .await?;
    clock.say(ada.who, "app: the advice → read by the crew (a `session` event: the consultant knows it landed)");
    until(&desk, id, "both outcomes at the desk", |v| v.outcome.requester.is_some() && v.outcome.responder.is_some())
        .await?;
    clock.say("desk-derm-1", "both outcomes recorded: requester conveyance_avoided, responder referral_made");

    // The record travels: the consultant's app exports the case for the GP record (FHIR R4,
    // UK Core), the crew's app for the ambulance service's ePR. The desk holds the photos, so
    // its bundle carries them; the tablet handed them to the hub, so its bundle refers to them.
    let text = ada.text(&format!("/api/sessions/{id}/export?format=fhir")).await?;
    let bundle: serde_json::Value = serde_json::from_str(&text)?;
    let fhir_file = root.join("dermatology-session.fhir.json");
    std::fs::write(&fhir_file, &text)?;
    let (inline, referenced) = photo_forms(&bundle);
    clock.say(
        ada.who,
        format!(
            "app: exports the case for the GP record: a FHIR R4 bundle (UK Core), {}; {inline} photos inline ({})",
            resource_counts(&bundle),
            bytes(text.len() as u64)
        ),
    );
    println!("{:>22}-> {}", "", fhir_file.display());
    let crew =
        serde_json::from_str::<serde_json::Value>(&sam.text(&format!("/api/sessions/{id}/export?format=fhir")).await?)?;
    let (crew_inline, crew_refs) = photo_forms(&crew);
    clock.say(
        sam.who,
        format!(
            "app: exports it for the ambulance ePR: {} resources, its {crew_refs} photos as references to the \
             hub's record ({crew_inline} inline: the tablet deleted them once the hub held them)",
            crew["entry"].as_array().map_or(0, Vec::len)
        ),
    );
    if referenced != 0 || crew_refs != 3 {
        anyhow::bail!(
            "the exports do not match what each node holds: desk {inline}/{referenced}, crew {crew_inline}/{crew_refs}"
        );
    }
    let letter = ada.text(&format!("/api/sessions/{id}/export?format=letter")).await?;
    clock.say(ada.who, "app: and as a letter for the practice (`--format letter`), its advice:");
    for line in letter.lines().skip_while(|l| *l != "ADVICE GIVEN").skip(1).take_while(|l| !l.is_empty()) {
        println!("{:>22}{line}", "");
    }

    // Scope: the cardiology question reached the hub, never the dermatology desk.
    let hub_has = view(&hub, cardio).await.is_some();
    let desk_has = view(&desk, cardio).await.is_some();
    let amb_has = view(&amb, cardio).await.is_some();
    clock.say(
        "scope",
        format!(
            "surgery-12's cardiology session: at hub {}, at desk-derm-1 {}, at amb-07 {}",
            yes(hub_has),
            yes(desk_has),
            yes(amb_has)
        ),
    );
    if !hub_has || desk_has || amb_has {
        anyhow::bail!("scope was not respected");
    }

    // A stolen tablet: the ambulance's own key signs a reply written in the consultant's name.
    // The hub checks what the change does against its signer before storing it. (The attacker
    // and the wire are played here by reaching past both nodes to their stores.)
    let forged = amb
        .with_node(move |n| -> anyhow::Result<(Incoming, sync_protocol::scope::PeerInfo)> {
            let store = n.raw_store();
            let bytes = store.sessions_mut().export_automerge(id)?;
            let mut doc = sync_protocol::SessionDoc::load(&bytes, store.identity().actor().clone())?;
            let before = doc.heads();
            let reply = sync_protocol::session::NewMessage {
                clinician: None,
                id: "forged".into(),
                author: "desk-derm-1".into(),
                side: Side::Responder,
                text: "benign, discharge".into(),
                reply_to: None,
            };
            doc.add_message(&reply, now_ms())?;
            let changes = doc.automerge().get_changes(&before);
            let inc = Incoming {
                doc: id.to_bytes(),
                bytes: changes.iter().flat_map(|c| c.raw_bytes().to_vec()).collect(),
                sigs: changes.iter().map(|c| store.identity().sign(&c.hash())).collect(),
            };
            Ok((inc, n.config().peer_info()))
        })
        .await??;
    let answer = hub
        .with_node(move |n| {
            let me = n.config().peer_info();
            n.raw_store().peers_mut().apply_remote(&me, &forged.1, &[forged.0], now_ms()).map(|(a, _)| a)
        })
        .await??;
    match answer.first() {
        Some(Applied::Refused { reason }) => {
            clock.say("hub-qhm", format!("refused a reply forged on amb-07: {reason}"))
        }
        other => anyhow::bail!("the hub did not refuse a forged reply: {other:?}"),
    }

    // A shift's PIN in the wrong hands: someone who saw Sam type it reads case after case on
    // the tablet. The other cases were written earlier in the shift by the tablet's other crew.
    for n in 0..5u8 {
        let req = SessionRequest {
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester { role: Some("paramedic".into()), ..Requester::default() },
            patient: Patient::default(),
            service: Service { line: ServiceLine::Cardiology, channel: Channel::Message, priority: Priority::Urgent },
            summary: format!("Earlier job {}: chest pain, ECG sent", n + 1),
            draft: false,
        };
        amb.with_node(move |node| node.new_session(req, now_ms())).await??;
    }
    let cases = amb.with_node(|n| n.list(&crate::store::ListFilter::default())).await??;
    let prying = App::sign_in("amb-07", amb_api, "Sam Patel", AMB_PIN).await?;
    let (mut opened, mut refusal) = (0, None);
    for card in &cases {
        match prying.call("GET", &format!("/api/sessions/{}", card.id), None).await? {
            (200, _) => opened += 1,
            (429, body) => {
                refusal = body["error"].as_str().map(str::to_string);
                break;
            }
            (status, body) => anyhow::bail!("opening case after case: the API answered {status}: {body}"),
        }
    }
    let flagged = amb.with_node(|n| n.unusual_access(now_ms())).await??;
    let Some(refusal) = refusal else { anyhow::bail!("{opened} cases opened one after another, none refused") };
    if flagged.first().is_none_or(|u| u.person != "Sam Patel" || !u.refused) {
        anyhow::bail!("the tablet did not flag the reading: {flagged:?}");
    }
    clock.say(
        "amb-07",
        format!(
            "someone with Sam Patel's PIN opens case after case ({} on the tablet): {opened} open, the person's 3rd \
             different record this hour flagged (access.unusual), the next refused (429, access.refused): \"{}\"",
            cases.len(),
            refusal.split(';').next().unwrap_or_default()
        ),
    );
    clock.say("amb-07", "`outpost status` and outpost_unusual_access show the deployer who");

    let s = link.stats();
    println!(
        "\n  the ambulance's emulated link carried {} up and {} down for {} of photos and a few hundred bytes of text",
        bytes(s.up_bytes_out),
        bytes(s.down_bytes_out),
        bytes(photo_bytes)
    );
    println!("  ({} datagrams lost to the profile's burst loss, recovered by QUIC)", s.lost);
    // What the ICB's IT team sees of the hub, and the ambulance's nightly backup.
    if let Some(addr) = hub.metrics_addr {
        let text = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            Ok(ureq::get(&format!("http://{addr}/metrics")).call()?.body_mut().read_to_string()?)
        })
        .await??;
        println!("\n  the hub's monitoring (http://{addr}/metrics, Prometheus):");
        for name in [
            "outpost_peers_connected ",
            "outpost_refusals_total",
            "outpost_photo_chunks_total",
            "outpost_certificate_days_left",
            "outpost_store_bytes",
        ] {
            for line in text.lines().filter(|l| l.starts_with(name)) {
                println!("    {line}");
            }
        }
    }
    let amb_dir = root.join("amb-07");
    let backup_file = root.join("amb-07.backup");
    let backed = crate::backup::backup(&NodeDir::new(&amb_dir), &backup_file, now_ms())?;
    let sealed = std::fs::read(&backup_file)?;
    let clear = b"enlarging pigmented lesion";
    let shows = sealed.windows(clear.len()).any(|w| w == clear);
    println!(
        "  amb-07 backed up while running: {} session{} in {} (sealed: the case text {} in it; restore with `outpost restore`)",
        backed.sessions,
        if backed.sessions == 1 { "" } else { "s" },
        bytes(backed.bytes),
        if shows { "APPEARS" } else { "does not appear" }
    );
    if shows {
        anyhow::bail!("the backup holds a case's text in the clear");
    }
    // The apps the two people used, in a browser.
    println!("\n  the clinicians' apps (open in a browser on this machine):");
    for (who, d, name, pin) in
        [("ambulance tablet", &amb, "Sam Patel", AMB_PIN), ("consultant's desk", &desk, "Dr Ada Okafor", DESK_PIN)]
    {
        if let Some(api) = d.api_addr {
            println!("    {who:<18} http://{api}/app/   sign in as {name:?}, PIN {pin}");
        }
    }
    if serve {
        println!("  (the fleet stays up; the desk answers calls by itself, or from its app; Ctrl-C ends it)");
        tokio::signal::ctrl_c().await?;
    } else {
        println!("  (`outpost demo --serve` keeps them up until Ctrl-C)");
    }
    for (name, d) in [("amb-07", amb), ("surgery-12", surgery), ("desk-derm-1", desk), ("hub-qhm", hub)] {
        d.stop().await;
        let _ = name;
    }
    Ok(())
}

/// "27 resources: Patient 1, ..." for a bundle.
fn resource_counts(bundle: &serde_json::Value) -> String {
    let mut counts = std::collections::BTreeMap::new();
    let entries = bundle["entry"].as_array().map(Vec::as_slice).unwrap_or_default();
    for e in entries {
        *counts.entry(e["resource"]["resourceType"].as_str().unwrap_or("?")).or_insert(0) += 1;
    }
    let each: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{} resources ({})", entries.len(), each.join(", "))
}

/// How many of a bundle's photos carry their image, and how many refer to it elsewhere.
fn photo_forms(bundle: &serde_json::Value) -> (usize, usize) {
    let media: Vec<&serde_json::Value> = bundle["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Media")
        .collect();
    let inline = media.iter().filter(|m| m["content"]["data"].is_string()).count();
    let referenced = media.iter().filter(|m| m["content"]["url"].is_string()).count();
    (inline, referenced)
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn short(id: SessionId) -> String {
    id.to_string()[..10].to_string()
}

fn ca_dir_name(root: &Path) -> String {
    root.join("ca").display().to_string()
}

/// A clinician's app as the demo plays it: signed in to its own node's local API over HTTP,
/// its event stream read on a thread of its own.
struct App {
    who: &'static str,
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl App {
    async fn sign_in(who: &'static str, addr: std::net::SocketAddr, name: &str, secret: &str) -> anyhow::Result<App> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut app = App { who, base: format!("http://{addr}"), token: String::new(), agent };
        let body = serde_json::json!({ "name": name, "secret": secret });
        let (status, out) = app.call("POST", "/api/login", Some(body)).await?;
        if status != 200 {
            anyhow::bail!("{who}: signing in failed ({status}): {out}");
        }
        app.token = out["token"].as_str().unwrap_or_default().to_string();
        Ok(app)
    }

    /// One API call, off the runtime's threads (the node it talks to is served by them).
    async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let (agent, url, auth) = (self.agent.clone(), format!("{}{path}", self.base), format!("Bearer {}", self.token));
        tokio::task::spawn_blocking(move || -> anyhow::Result<(u16, serde_json::Value)> {
            let mut resp = match method {
                "GET" => agent.get(&url).header("Authorization", &auth).call()?,
                _ => {
                    let req = agent.post(&url).header("Authorization", &auth);
                    match body {
                        Some(b) => req.send_json(b)?,
                        None => req.send_empty()?,
                    }
                }
            };
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)))
        })
        .await?
    }

    /// A GET whose answer is not JSON (a letter), or is kept as text (an export).
    async fn text(&self, path: &str) -> anyhow::Result<String> {
        let (agent, url, auth) = (self.agent.clone(), format!("{}{path}", self.base), format!("Bearer {}", self.token));
        let who = self.who;
        tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let mut resp = agent.get(&url).header("Authorization", &auth).call()?;
            let status = resp.status().as_u16();
            let text = resp.body_mut().with_config().limit(64 << 20).read_to_string()?;
            if status != 200 {
                anyhow::bail!("{who}: GET {url} answered {status}: {text}");
            }
            Ok(text)
        })
        .await?
    }

    /// Opens the event stream: (event name, data, when it arrived) on the receiver.
    async fn events(&self) -> anyhow::Result<std::sync::mpsc::Receiver<(String, serde_json::Value, Instant)>> {
        let (agent, url, auth) =
            (self.agent.clone(), format!("{}/api/events", self.base), format!("Bearer {}", self.token));
        let (tx, rx) = std::sync::mpsc::channel();
        let resp = tokio::task::spawn_blocking(move || {
            agent.get(&url).header("Authorization", &auth).config().timeout_global(None).build().call()
        })
        .await??;
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        std::thread::spawn(move || {
            crate::net::read_events(reader, |name, data| tx.send((name, data, Instant::now())).is_ok());
        });
        Ok(rx)
    }
}

/// Waits for an event that satisfies `check`, skipping the others.
async fn event(
    events: &std::sync::mpsc::Receiver<(String, serde_json::Value, Instant)>,
    what: &str,
    check: impl Fn(&str, &serde_json::Value) -> bool,
) -> anyhow::Result<(serde_json::Value, Instant)> {
    let start = Instant::now();
    loop {
        match events.try_recv() {
            Ok((name, data, at)) if check(&name, &data) => return Ok((data, at)),
            Ok(_) => continue,
            Err(std::sync::mpsc::TryRecvError::Empty) if start.elapsed() < WAIT => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => anyhow::bail!("the demo waited {WAIT:?} for {what} on an app's event stream"),
        }
    }
}

/// An app's call answered as expected, or the demo stops saying what failed.
fn ok((status, body): (u16, serde_json::Value), want: u16, what: &str) -> anyhow::Result<serde_json::Value> {
    if status == want { Ok(body) } else { anyhow::bail!("{what}: the API answered {status}: {body}") }
}
