//! The FHIR export, checked by an independent FHIR R4 model (`fhirbolt`, strict mode): a
//! session's bundle parses, round-trips with no loss, and every reference resolves inside it;
//! photos appear as data where held, as references where not, never when consent is withdrawn;
//! and only sessions the exporting node may hold leave it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;
mod fhir_check;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use base64::Engine as _;
use common::fleet::{Fleet, daemon, free_port, sync, wait_until};
use common::{fails, json, ok};
use fhir_check::{check_bundle, counts, of_type, strict};
use fhirbolt::model::r4::resources::CodeSystem;
use outpost_node::export::{codes, fhir};
use serde_json::Value;
use sync_protocol::SessionDoc;
use sync_protocol::nhs::NhsNumber;
use sync_protocol::session::{
    Clinician, LogName, LogValue, NewConsent, NewMedia, NewMessage, NewSession, Patient, Requester, Service, SessionId,
};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, ReceiptLevel,
    ServiceLine, Side,
};

const T0: i64 = 1_796_360_400_000;

fn clinician(name: &str, role: &str, reg: &str) -> Clinician {
    Clinician { name: name.into(), role: role.into(), registration: Some(reg.into()) }
}

/// A whole dermatology case as one document: a crew's question and three photos (two under a
/// standing consent, one under a consent later withdrawn), the consultant's reply, a call that
/// rang one desk unanswered then connected to another, both parties' call figures, and both
/// outcomes.
fn whole_case() -> (SessionDoc, BTreeMap<String, Vec<u8>>) {
    let id = SessionId::from_parts(T0, 7);
    let new = NewSession {
        id,
        origin: "amb-07".into(),
        icb: "QHM".into(),
        care_setting: CareSetting::AmbulanceOnScene,
        requester: Requester {
            registration: Some("PA123456".into()),
            role: Some("paramedic".into()),
            org_ods: Some("RX6".into()),
            call_sign: Some("NY-RRV-07".into()),
            incident: Some("INC-2026-0412".into()),
            callback: Some("07700 900123".into()),
        },
        patient: Patient {
            nhs_number: Some(NhsNumber::parse("9000000009").unwrap()),
            verification: NhsVerification::Verified,
            name: Some("Jane Example".into()),
            birth_date: Some("1945-02-11".into()),
            sex: Some("female".into()),
            postcode: Some("YO1 7HH".into()),
        },
        service: Service { line: ServiceLine::Dermatology, channel: Channel::Photo, priority: Priority::TwoWeekWait },
        summary: "81F, enlarging pigmented lesion left forearm, bleeds on contact".into(),
        draft: false,
    };
    let mut doc = SessionDoc::create(&new, automerge::ActorId::from(vec![1u8; 16]), T0).unwrap();
    let sam = clinician("Sam Patel", "paramedic", "HCPC-PA123456");
    let ada = clinician("Dr Ada Okafor", "consultant", "GMC-7012345");
    doc.add_message(
        &NewMessage {
            id: "m1".into(),
            author: "amb-07".into(),
            side: Side::Requester,
            text: "Lesion 14 mm, irregular border, two colours.".into(),
            reply_to: None,
            clinician: Some(sam.clone()),
        },
        T0 + 1_000,
    )
    .unwrap();
    for (cid, kind) in [("c1", ConsentKind::Verbal), ("c2", ConsentKind::Written)] {
        let c = NewConsent { id: cid.into(), kind, scope: ConsentScope::RecordOnly, by: "amb-07".into() };
        doc.add_consent(&c, T0 + 2_000).unwrap();
    }
    let mut photos = BTreeMap::new();
    for (i, (view, consent)) in
        [(PhotoView::Site, "c1"), (PhotoView::CloseUp, "c1"), (PhotoView::Dermoscopic, "c2")].into_iter().enumerate()
    {
        let bytes = format!("jpeg bytes of photo {i}").into_bytes();
        let hash = blake3::hash(&bytes).to_hex().to_string();
        doc.add_media(
            &NewMedia {
                hash: hash.clone(),
                mime: "image/jpeg".into(),
                size: bytes.len() as u64,
                dimensions: Some((800, 600)),
                view,
                body_site: "left forearm".into(),
                consent_id: consent.into(),
                clinician: Some(sam.clone()),
                added_by: "amb-07".into(),
            },
            T0 + 3_000 + i as i64,
        )
        .unwrap();
        photos.insert(hash, bytes);
    }
    doc.add_receipt("m1", ReceiptLevel::Hub, "hub-qhm", T0 + 5_000).unwrap();
    doc.add_receipt("m1", ReceiptLevel::Desk, "desk-derm-1", T0 + 6_000).unwrap();
    let s = |v: &str| LogValue::Str(v.into());
    type Entry<'a> = (&'a str, Vec<(&'a str, LogValue)>, i64);
    let routing: &[Entry] = &[
        ("escalate", vec![("call", s("k1")), ("by", s("amb-07"))], 10_000),
        ("gate", vec![("call", s("k1")), ("verdict", s("call")), ("mos", LogValue::Float(4.1))], 10_500),
        (
            "ring",
            vec![
                ("call", s("k1")),
                ("desk", s("desk-derm-2")),
                ("attempt", LogValue::Int(1)),
                ("ring_s", LogValue::Int(20)),
            ],
            11_000,
        ),
        ("no_answer", vec![("call", s("k1")), ("desk", s("desk-derm-2")), ("attempt", LogValue::Int(1))], 31_000),
        (
            "ring",
            vec![
                ("call", s("k1")),
                ("desk", s("desk-derm-1")),
                ("attempt", LogValue::Int(2)),
                ("ring_s", LogValue::Int(20)),
            ],
            31_100,
        ),
        ("answer", vec![("call", s("k1")), ("desk", s("desk-derm-1")), ("attempt", LogValue::Int(2))], 39_000),
        ("connected", vec![("call", s("k1")), ("desk", s("desk-derm-1")), ("attempt", LogValue::Int(2))], 39_200),
    ];
    for (kind, fields, at) in routing {
        doc.append_log(LogName::Routing, kind, fields, T0 + at).unwrap();
    }
    for (node, side) in [("amb-07", "requester"), ("desk-derm-1", "responder")] {
        let fields = vec![
            ("call", s("k1")),
            ("node", s(node)),
            ("side", s(side)),
            ("started_ms", LogValue::Int(T0 + 39_300)),
            ("duration_ms", LogValue::Int(240_000)),
            ("codec", s("opus")),
            ("loss", LogValue::Float(0.012)),
            ("jitter_ms", LogValue::Float(8.5)),
            ("rtt_ms", LogValue::Int(95)),
            ("mos", LogValue::Float(4.05)),
            ("end", s("hangup")),
        ];
        doc.append_log(LogName::Calls, "leg", &fields, T0 + 280_000).unwrap();
    }
    doc.add_message(
        &NewMessage {
            id: "m2".into(),
            author: "desk-derm-1".into(),
            side: Side::Responder,
            text: "Likely nodular melanoma: refer on the two-week-wait pathway today.".into(),
            reply_to: Some("m1".into()),
            clinician: Some(ada.clone()),
        },
        T0 + 300_000,
    )
    .unwrap();
    doc.set_outcome_as(Side::Responder, Outcome::ReferralMade, "desk-derm-1", Some(&ada), T0 + 301_000).unwrap();
    // The crew's outcome from the CLI: no person named.
    doc.set_outcome(Side::Requester, Outcome::ConveyanceAvoided, "amb-07", T0 + 320_000).unwrap();
    // A second desk opens the reply: that does not deliver it to the crew.
    doc.add_receipt("m2", ReceiptLevel::Read, "desk-derm-2", T0 + 305_000).unwrap();
    // A second escalation the hub could not put through: a callback.
    doc.append_log(LogName::Routing, "escalate", &[("call", s("k2")), ("by", s("amb-07"))], T0 + 310_000).unwrap();
    let reason = s("no consultant on the rota answered");
    doc.append_log(LogName::Routing, "callback", &[("call", s("k2")), ("reason", reason)], T0 + 311_000).unwrap();
    doc.withdraw_consent("c2", "amb-07", T0 + 330_000).unwrap();
    (doc, photos)
}

#[test]
fn a_whole_case_exports_as_a_bundle_that_an_independent_fhir_model_parses_round_trips_and_resolves() {
    let (doc, photos) = whole_case();
    let view = doc.view().unwrap();
    let bundle = fhir::bundle(&view, &photos, "desk-derm-1", T0 + 400_000);
    check_bundle(&bundle);

    let c = counts(&bundle);
    let expect = [
        ("Patient", 1),
        ("ServiceRequest", 1),
        ("Communication", 2),
        ("Media", 3),
        ("Consent", 2),
        // The session, its two escalations and two rings.
        ("Task", 5),
        ("Encounter", 1),
        // Two outcomes and two call legs.
        ("Observation", 4),
        // Sam Patel (known by the requester's registration and by name) and Dr Okafor.
        ("Practitioner", 2),
        ("Organization", 2),
    ];
    for (kind, n) in expect {
        assert_eq!(c.get(kind).copied().unwrap_or(0), n, "{kind} in {c:?}");
    }

    let patient = of_type(&bundle, "Patient")[0];
    let id = &patient["identifier"][0];
    assert_eq!(id["system"], "https://fhir.nhs.uk/Id/nhs-number");
    assert_eq!(id["value"], "9000000009");
    let status = &id["extension"][0];
    assert_eq!(
        status["url"],
        "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
    );
    assert_eq!(status["valueCodeableConcept"]["coding"][0]["code"], "01");

    let sr = of_type(&bundle, "ServiceRequest")[0];
    assert_eq!(
        sr["category"][0]["coding"][0],
        serde_json::json!({ "system": "http://snomed.info/sct", "code": "394582007" })
    );
    assert_eq!(sr["priority"], "urgent");
    assert!(sr["orderDetail"].to_string().contains("two_week_wait"));

    // The reply answers the question; it was delivered (the requester's receipt is missing here,
    // so no `received` is claimed for it), the question reached the desk at T0 + 6 s.
    let comms = of_type(&bundle, "Communication");
    let question = comms.iter().find(|c| c["identifier"][0]["value"] == "m1").unwrap();
    let reply = comms.iter().find(|c| c["identifier"][0]["value"] == "m2").unwrap();
    assert_eq!(question["received"], fhir::instant(T0 + 6_000));
    assert!(reply.get("received").is_none());
    let question_url = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["identifier"][0]["value"] == "m1")
        .unwrap()["fullUrl"]
        .clone();
    assert_eq!(reply["inResponseTo"][0]["reference"], question_url);

    // Both outcomes, coded in outpost's system, the referral also in SNOMED CT.
    let outcomes: Vec<&Value> =
        of_type(&bundle, "Observation").into_iter().filter(|o| o.get("valueCodeableConcept").is_some()).collect();
    assert_eq!(outcomes.len(), 2);
    let referral = outcomes.iter().find(|o| o["valueCodeableConcept"]["text"] == "Referral made").unwrap();
    assert!(referral["valueCodeableConcept"]["coding"].to_string().contains("\"3457005\""));
    assert!(referral["performer"][0]["reference"].is_string());
    // Recorded with no person named: no performer (R4 allows no device there), the node in a note.
    let crew = outcomes.iter().find(|o| o["valueCodeableConcept"]["text"] == "Conveyance avoided").unwrap();
    assert!(crew.get("performer").is_none());
    assert!(crew["note"][0]["text"].as_str().unwrap().contains("amb-07"));

    // Photos: held ones carry their bytes; the withdrawn consent's carries none.
    for m in of_type(&bundle, "Media") {
        let hash = m["identifier"][0]["value"].as_str().unwrap();
        let content = &m["content"];
        if m["view"]["coding"][0]["code"] == "dermoscopic" {
            assert!(content.get("data").is_none() && content.get("url").is_none(), "withdrawn consent: no image");
        } else {
            let data = base64::engine::general_purpose::STANDARD.decode(content["data"].as_str().unwrap()).unwrap();
            assert_eq!(blake3::hash(&data).to_hex().as_str(), hash);
        }
    }
    let withdrawn = of_type(&bundle, "Consent").into_iter().find(|c| c["status"] == "inactive").unwrap();
    assert_eq!(withdrawn["provision"]["data"].as_array().unwrap().len(), 1);

    // The routing story: an unanswered ring failed, the answered one completed, the call connected.
    let tasks = of_type(&bundle, "Task");
    let rings: Vec<_> = tasks.iter().filter(|t| t["code"]["coding"][0]["code"] == "ring").collect();
    assert_eq!(
        rings.iter().map(|t| t["status"].as_str().unwrap()).collect::<BTreeSet<_>>(),
        ["completed", "failed"].into()
    );
    // The escalation that connected completed; the one that became a callback failed, and says why.
    let escalations: Vec<_> = tasks.iter().filter(|t| t["code"]["coding"][0]["code"] == "escalation").collect();
    let status_of =
        |call: &str| escalations.iter().find(|t| t["identifier"][0]["value"] == call).unwrap()["status"].clone();
    assert_eq!(status_of("k1"), "completed");
    assert_eq!(status_of("k2"), "failed");
    let call = of_type(&bundle, "Encounter")[0];
    assert_eq!(call["class"]["code"], "VR");
    assert_eq!(call["length"]["value"], 240.0);
}

/// A telephone consultation is a call that connected, as its two parties recorded it. A node
/// the session was shared with may write a leg record of its own, and a call that never
/// connected may have one (the crew's leg of a call that rang out): neither is an encounter,
/// nor a party's figures.
#[test]
fn only_a_connected_call_is_an_encounter_and_only_its_parties_legs_are_its_figures() {
    let (mut doc, photos) = whole_case();
    let s = |v: &str| LogValue::Str(v.into());
    let leg = |call: &str, node: &str| {
        vec![
            ("call", s(call)),
            ("node", s(node)),
            ("side", s("requester")),
            ("started_ms", LogValue::Int(T0 + 500_000)),
            ("duration_ms", LogValue::Int(60_000)),
            ("codec", s("opus")),
            ("loss", LogValue::Float(0.0)),
            ("jitter_ms", LogValue::Float(1.0)),
            ("rtt_ms", LogValue::Int(40)),
            ("mos", LogValue::Float(4.3)),
            ("end", s("hangup")),
        ]
    };
    // A second call, asked for and never connected, with the crew's leg of it; and a leg of the
    // first call written by a tablet that was no party to it.
    doc.append_log(LogName::Routing, "escalate", &[("call", s("k2")), ("by", s("amb-07"))], T0 + 490_000).unwrap();
    doc.append_log(LogName::Calls, "leg", &leg("k2", "amb-07"), T0 + 560_000).unwrap();
    doc.append_log(LogName::Calls, "leg", &leg("k1", "amb-66"), T0 + 560_000).unwrap();
    let bundle = fhir::bundle(&doc.view().unwrap(), &photos, "desk-derm-1", T0 + 600_000);
    check_bundle(&bundle);
    let c = counts(&bundle);
    assert_eq!(c.get("Encounter").copied(), Some(1), "{c:?}");
    let encounter = of_type(&bundle, "Encounter")[0];
    assert_eq!(encounter["identifier"][0]["value"], "k1");
    assert_eq!(c.get("Observation").copied(), Some(4), "two outcomes and the two parties' legs: {c:?}");
    assert!(!bundle.to_string().contains("amb-66"), "the non-party's leg is in the record");
}

#[test]
fn a_photo_this_node_does_not_hold_is_a_reference_never_missing_and_the_same_export_is_stable() {
    let (doc, _) = whole_case();
    let view = doc.view().unwrap();
    let bundle = fhir::bundle(&view, &BTreeMap::new(), "amb-07", T0 + 400_000);
    check_bundle(&bundle);
    let media = of_type(&bundle, "Media");
    assert_eq!(media.len(), 3, "every photo is in the export");
    for m in media {
        let hash = m["identifier"][0]["value"].as_str().unwrap();
        if m["view"]["coding"][0]["code"] == "dermoscopic" {
            assert!(m["content"].get("url").is_none());
        } else {
            assert_eq!(m["content"]["url"], format!("urn:outpost:photo:blake3:{hash}"));
            assert!(m["content"].get("data").is_none());
        }
    }
    // Exported again later: the same resources under the same ids.
    let later = fhir::bundle(&view, &BTreeMap::new(), "amb-07", T0 + 500_000);
    assert_eq!(bundle["entry"], later["entry"]);
}

#[test]
fn outposts_own_code_systems_are_published_in_docs_and_parse_as_fhir() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/fhir");
    let update = std::env::var_os("OUTPOST_UPDATE_DOCS").is_some();
    for cs in codes::all() {
        let resource = codes::resource(&cs);
        let text = serde_json::to_string_pretty(&resource).unwrap() + "\n";
        let path = dir.join(format!("CodeSystem-outpost-{}.json", cs.name));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            published,
            text,
            "{} differs from the code: run `OUTPOST_UPDATE_DOCS=1 cargo test -p outpost-node --test fhir` and review",
            path.display()
        );
        let parsed: Result<CodeSystem, _> = fhirbolt::json::from_str(&published, strict());
        assert!(parsed.is_ok(), "{}: {:?}", path.display(), parsed.err());
    }
}

/// Real processes: an ambulance, its hub and a dermatology desk; a cardiology session the desk
/// never holds; the ambulance's photos offloaded once the hub holds them.
#[test]
fn each_node_exports_only_what_it_holds_with_offloaded_photos_as_references() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(tmp.path());
    let hub = fleet.node("hub-qhm", "hub", &[]);
    let amb = fleet.node("amb-07", "edge", &["--org", "RX6"]);
    let desk = fleet.node("desk-derm-1", "desk", &["--service-line", "dermatology"]);
    let d = |p: &Path| p.to_str().unwrap().to_string();
    let port = free_port();
    let _hub = daemon(&hub, &["--listen", &format!("127.0.0.1:{port}")], &[]);
    let peer = format!("127.0.0.1:{port}");

    let derm = ok(&[
        "session",
        "new",
        "--dir",
        &d(&amb),
        "--service-line",
        "dermatology",
        "--priority",
        "two-week-wait",
        "--care-setting",
        "ambulance_on_scene",
        "--nhs-number",
        "9434765919",
        "--nhs-verification",
        "01",
        "--summary",
        "Pigmented lesion left forearm",
    ])
    .trim()
    .to_string();
    let cardio = ok(&[
        "session",
        "new",
        "--dir",
        &d(&amb),
        "--service-line",
        "cardiology",
        "--care-setting",
        "ambulance_on_scene",
        "--nhs-number",
        "9434765919",
        "--nhs-verification",
        "01",
        "--summary",
        "Palpitations",
    ])
    .trim()
    .to_string();
    ok(&["message", "send", "--dir", &d(&amb), &derm, "Lesion 14 mm, irregular border."]);
    let mut hashes = Vec::new();
    for (seed, view, consent) in [(1u64, "site", "verbal"), (2, "close-up", "verbal"), (3, "dermoscopic", "written")] {
        let file = tmp.path().join(format!("p{seed}.jpg"));
        std::fs::write(&file, outpost_node::photo::synthetic_jpeg(320, 240, seed).unwrap().bytes).unwrap();
        let h = ok(&[
            "photo",
            "attach",
            "--dir",
            &d(&amb),
            &derm,
            file.to_str().unwrap(),
            "--view",
            view,
            "--body-site",
            "left forearm",
            "--consent",
            consent,
        ]);
        hashes.push(h.trim().to_string());
    }
    // A photo the session does not have: exit 4, as for a session that is not here.
    let out = common::run(&["photo", "withdraw-consent", "--dir", &d(&amb), &derm, "0000000000"]);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    // The patient withdraws the written consent (the dermoscopic photo).
    let said = ok(&["photo", "withdraw-consent", "--dir", &d(&amb), &derm, &hashes[2][..10]]);
    assert!(said.contains("1 photo(s)"), "{said}");

    let scratch = d(&tmp.path().join("got.jpg"));
    // The hub takes the photos whose consent stands (the withdrawn one never leaves the tablet);
    // the ambulance deletes them once the hub holds them.
    wait_until(std::time::Duration::from_secs(60), "the photos offloaded from the ambulance", || {
        sync(&amb, &peer);
        hashes[..2].iter().all(|h| {
            let out = common::run(&["photo", "get", "--dir", &d(&amb), h, "--out", &scratch]);
            String::from_utf8_lossy(&out.stderr).contains("hub")
        })
    });
    wait_until(std::time::Duration::from_secs(60), "the desk holding the photos", || {
        sync(&desk, &peer);
        hashes[..2]
            .iter()
            .all(|h| common::run(&["photo", "get", "--dir", &d(&desk), h, "--out", &scratch]).status.success())
    });

    let export = |dir: &Path, id: &str| json(&ok(&["session", "export", "--dir", &d(dir), id, "--format", "fhir"]));
    let media_content = |b: &Value| -> BTreeMap<String, Value> {
        of_type(b, "Media")
            .into_iter()
            .map(|m| (m["identifier"][0]["value"].as_str().unwrap().to_string(), m["content"].clone()))
            .collect()
    };

    // The ambulance: the photos are references (they live at the hub), the withdrawn one absent.
    let at_amb = export(&amb, &derm);
    check_bundle(&at_amb);
    let content = media_content(&at_amb);
    assert_eq!(content.len(), 3);
    for h in &hashes[..2] {
        assert_eq!(content[h]["url"], format!("urn:outpost:photo:blake3:{h}"), "offloaded: a reference");
        assert!(content[h].get("data").is_none());
    }
    assert!(content[&hashes[2]].get("data").is_none() && content[&hashes[2]].get("url").is_none());

    // The desk: the photos it holds, as data; never the withdrawn one.
    let at_desk = export(&desk, &derm);
    check_bundle(&at_desk);
    let content = media_content(&at_desk);
    for h in &hashes[..2] {
        let data = base64::engine::general_purpose::STANDARD.decode(content[h]["data"].as_str().unwrap()).unwrap();
        assert_eq!(&blake3::hash(&data).to_hex().to_string(), h);
    }
    assert!(content[&hashes[2]].get("data").is_none());
    let bytes = serde_json::to_string(&at_desk).unwrap();
    assert!(!bytes.contains("Palpitations"), "nothing of the cardiology session");

    // Scope: the desk does not hold the cardiology session and cannot export it; the hub can.
    let refused = fails(&["session", "export", "--dir", &d(&desk), &cardio, "--format", "fhir"], 4);
    assert!(refused.contains(&cardio[..10]) || refused.contains("no session"), "{refused}");
    check_bundle(&export(&hub, &cardio));

    // A session held here that this node may no longer hold (its lines changed since) does not
    // leave it, in any format.
    let dir = outpost_node::config::NodeDir::new(&desk);
    let config = std::fs::read_to_string(dir.config_path()).unwrap();
    let moved = config.replace("\"dermatology\"", "\"cardiology\"");
    assert_ne!(config, moved, "the desk's config names its line");
    std::fs::write(dir.config_path(), &moved).unwrap();
    let mut node = outpost_node::node::Node::open(&dir).unwrap();
    assert_eq!(node.config().lines, vec![ServiceLine::Cardiology]);
    let id: SessionId = derm.parse().unwrap();
    for (_, format) in outpost_node::node::ExportFormat::ALL {
        let r = node.export(id, format, T0);
        assert!(matches!(r, Err(outpost_node::node::NodeError::OutOfScope { .. })), "{format:?}: {r:?}");
    }
    drop(node);
    std::fs::write(dir.config_path(), &config).unwrap();

    // A letter for the practice, from the desk.
    let letter = ok(&["session", "export", "--dir", &d(&desk), &derm, "--format", "letter"]);
    assert!(letter.contains("SPECIALIST ADVICE: DERMATOLOGY"), "{letter}");
    assert!(letter.contains("943 476 5919"), "{letter}");
    assert!(letter.contains("consent WITHDRAWN: image withheld"), "{letter}");
}
