//! A stolen tablet against a real hub: a fleet member with a valid certificate scripts the
//! sync protocol by hand and tries to read, forge and stall. Every attempt is refused and
//! logged, nothing it sends is stored, and an honest edge keeps syncing throughout.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc, ScalarValue, Value};
use field_tests::{Field, Intruder, Silent, free_addr, photo_file, s};
use sync_protocol::SessionDoc;
use sync_protocol::wire::{Changes, Frame, Hash, Range, RangeMode};

const BIN: &str = env!("CARGO_BIN_EXE_outpost-field-node");
const LIMIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);

fn doc_id(id: &str) -> [u8; 16] {
    id.parse::<sync_protocol::SessionId>().unwrap().to_bytes()
}

fn obj(d: &automerge::AutoCommit, parent: &automerge::ObjId, key: &str) -> automerge::ObjId {
    match d.get(parent, key).unwrap() {
        Some((Value::Object(_), o)) => o,
        other => panic!("{key}: {other:?}"),
    }
}

/// The victim's session as Automerge bytes (what a leaked copy would be).
fn leaked_copy(f: &Field, dir: &Path, id: &str) -> Vec<u8> {
    let out = f.dir.join(format!("leak-{id}.automerge"));
    f.ok(&["session", "export", "--dir", s(dir), id, "--format", "automerge", "--out", s(&out)]);
    std::fs::read(out).unwrap()
}

/// Sends one forged edit of the leaked session and returns what the hub answered about it.
fn forge(
    intruder: &mut Intruder,
    leaked: &[u8],
    id: &str,
    edit: impl FnOnce(&mut automerge::AutoCommit),
) -> Vec<Frame> {
    let mut doc = SessionDoc::load(leaked, intruder.node.raw_store().identity().actor().clone()).unwrap();
    let before = doc.heads();
    edit(doc.automerge());
    doc.automerge().commit();
    let (bytes, sigs) = intruder.signed(&mut doc, &before);
    let heads = doc.heads().iter().map(|h| Hash::from(*h)).collect();
    send_changes(intruder, id, bytes, sigs, heads)
}

fn send_changes(
    intruder: &mut Intruder,
    id: &str,
    bytes: Vec<u8>,
    sigs: Vec<[u8; 64]>,
    heads: Vec<Hash>,
) -> Vec<Frame> {
    let doc = doc_id(id);
    intruder.exchange(&[Frame::Changes(Changes { doc, ack: false, heads, bytes, sigs })], LIMIT)
}

/// Connects as the node in `dir` and waits for the hub's first answer.
fn join(dir: &Path, addr: &str) -> Intruder {
    let i = Intruder::connect(dir, addr);
    i.wait_for(LIMIT, |f| matches!(f, Frame::Mark { .. }));
    i
}

fn refused(answer: &[Frame], id: &str, what: &str, f: &Field) {
    let doc = doc_id(id);
    if !answer.iter().any(|fr| matches!(fr, Frame::Refused { doc: d } if *d == doc)) {
        f.fail(format!("{what}: the hub did not refuse it: {answer:?}"));
    }
    if answer.iter().any(|fr| matches!(fr, Frame::Ack { doc: d, .. } if *d == doc)) {
        f.fail(format!("{what}: the hub acknowledged it"));
    }
}

/// One raw edit the intruder makes to its leaked copy.
type Forgery = dyn FnOnce(&mut automerge::AutoCommit);

/// What the hub's copy of the session says now.
fn hub_view(f: &Field, hub: &Path, id: &str) -> serde_json::Value {
    f.export(hub, id).unwrap_or_else(|| f.fail("the hub lost the session"))
}

#[test]
fn a_stolen_tablet_can_neither_read_nor_forge_nor_stall_the_hub() {
    let mut f = Field::new(BIN, "attack");
    let hub = f.node("hub-qhm", "hub", &[]);
    let victim = f.node("amb-07", "edge", &[]);
    let thief = f.node("amb-66", "edge", &[]);
    let desk = f.node("desk-derm-1", "desk", &["--org", "RTH", "--service-line", "dermatology"]);
    let cardio = f.node("desk-cardio-1", "desk", &["--org", "RTH", "--service-line", "cardiology"]);
    let foreign = f.node_in("amb-99", "edge", "QOX", &[]);
    let honest = f.node("surgery-12", "edge", &["--org", "B82005"]);
    let addr = free_addr();
    let hubd = f.daemon(&hub, &["--listen", &addr]);
    f.wait(LIMIT, POLL, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));

    // The victim's case, with a photo, at the hub; the dermatology desk holds it too.
    let id = f.new_session(&victim, "dermatology", "ambulance_on_scene", "SECRET-CASE spreading rash");
    f.message(&victim, &id, "SECRET-CASE history: fever since this morning");
    let jpeg = f.dir.join("rash.jpg");
    photo_file(&jpeg, f.seed, 300_000);
    let photo = f.photo(&victim, &id, &jpeg, "close-up");
    f.ok(&["sync", "--dir", s(&victim), "--peer", &addr]);
    f.ok(&["sync", "--dir", s(&desk), "--peer", &addr]);
    let honest_id = f.new_session(&honest, "cardiology", "gp_urgent", "honest question");
    f.ok(&["sync", "--dir", s(&honest), "--peer", &addr]);
    let baseline = hub_view(&f, &hub, &id);
    let mut summary = serde_json::json!({ "seed": f.seed });

    // Reads: by id (Need, Heads, Ack), by range and by photo hash, from a stolen tablet, a desk
    // of another line and an edge of another ICB. Each gets exactly what a session that does
    // not exist gets.
    let nowhere = sync_protocol::SessionId::from_parts(1_790_000_000_000, 12345).to_string();
    let photo_hash = Hash::from_hex(&photo).expect("a photo hash is 64 hex characters");
    let probes = |target: &str| {
        let doc = doc_id(target);
        vec![
            Frame::Need { doc },
            Frame::Heads { doc, heads: Vec::new() },
            Frame::Heads { doc, heads: vec![Hash([7; 32])] },
            Frame::Ack { doc, heads: Vec::new() },
            Frame::Ranges(vec![Range {
                upper: None,
                mode: RangeMode::Items { reply: false, items: vec![(doc, [1; 16])] },
            }]),
        ]
    };
    for who in [&thief, &cardio, &foreign] {
        let mut answers = Vec::new();
        for target in [&id, &nowhere] {
            let mut intruder = join(who, &addr);
            let mut asks = probes(target);
            asks.push(Frame::BlobWant { hash: photo_hash, manifest: true, chunks: vec![0, 1] });
            let start = intruder.settle(Duration::ZERO).len();
            intruder.exchange(&asks, LIMIT);
            // Blob answers travel on the other lane and may trail the last Mark a little.
            let got = intruder.wait_for(LIMIT, |fr| matches!(fr, Frame::BlobMissing { .. })).split_off(start);
            let bytes = intruder.received();
            if bytes.windows(11).any(|w| w == b"SECRET-CASE") {
                f.fail(format!("{} read the victim's text from the hub", who.display()));
            }
            let victim = doc_id(&id);
            let leaked = got.iter().any(|fr| match fr {
                Frame::Changes(c) => c.doc == victim,
                Frame::BlobManifest(m) => m.hash == photo_hash,
                Frame::BlobChunk { hash, .. } => *hash == photo_hash,
                _ => false,
            });
            if leaked {
                f.fail(format!("{} was sent the victim's session or photo: {got:?}", who.display()));
            }
            // Two lanes (two streams) interleave freely: compare what was answered, not the order.
            let mut names: Vec<&str> = got.iter().map(Frame::name).filter(|n| *n != "mark").collect();
            names.sort_unstable();
            answers.push(names.join(" "));
        }
        if answers[0] != answers[1] {
            f.fail(format!(
                "{}: the answers for the victim's session and for no session differ:\n{}\n{}",
                who.display(),
                answers[0],
                answers[1]
            ));
        }
    }

    // Forged writes by the stolen tablet, on a leaked copy of the victim's session, each signed
    // with the tablet's own key: refused, logged, not stored.
    let leaked = leaked_copy(&f, &victim, &id);
    let mut intruder = join(&thief, &addr);
    let attempts: Vec<(&str, Box<Forgery>)> = vec![
        (
            "self-share",
            Box::new(|d: &mut automerge::AutoCommit| {
                let shares = obj(d, &ROOT, "shares");
                d.put(&shares, "amb-66", 1).unwrap();
            }),
        ),
        (
            "consultant's reply",
            Box::new(|d: &mut automerge::AutoCommit| {
                let msgs = obj(d, &ROOT, "messages");
                let at = d.length(&msgs);
                let m = d.insert_object(&msgs, at, ObjType::Map).unwrap();
                for (k, v) in
                    [("id", "forged"), ("author", "desk-derm-1"), ("side", "responder"), ("text", "benign, discharge")]
                {
                    d.put(&m, k, v).unwrap();
                }
                d.put_object(&m, "receipts", ObjType::Map).unwrap();
            }),
        ),
        (
            "hub receipt",
            Box::new(|d: &mut automerge::AutoCommit| {
                let media = obj(d, &ROOT, "media");
                let key = d.keys(&media).next().unwrap();
                let m = obj(d, &media, &key);
                let receipts = obj(d, &m, "receipts");
                d.put(&receipts, "hub/hub-qhm", 1).unwrap();
            }),
        ),
        (
            "status connected",
            Box::new(|d: &mut automerge::AutoCommit| {
                let status = obj(d, &ROOT, "status");
                d.put(&status, "0/connected", 1).unwrap();
            }),
        ),
        (
            "identity",
            Box::new(|d: &mut automerge::AutoCommit| {
                let identity = obj(d, &ROOT, "identity");
                d.put(&identity, "origin", "amb-66").unwrap();
            }),
        ),
    ];
    let mut refusals = Vec::new();
    for (what, edit) in attempts {
        let answer = forge(&mut intruder, &leaked, &id, edit);
        refused(&answer, &id, what, &f);
        refusals.push(what);
    }
    // Unsigned, and signed by the thief under the desk's actor id.
    {
        let mut doc = SessionDoc::load(&leaked, intruder.node.raw_store().identity().actor().clone()).unwrap();
        let before = doc.heads();
        let status = obj(doc.automerge(), &ROOT, "status");
        doc.automerge().put(&status, "0/closed", 1).unwrap();
        doc.automerge().commit();
        let (bytes, _) = intruder.signed(&mut doc, &before);
        let answer = send_changes(&mut intruder, &id, bytes, Vec::new(), Vec::new());
        refused(&answer, &id, "unsigned", &f);
    }
    // A replay: the thief's own, validly signed session sent as the victim's.
    let own = f.new_session(&thief, "dermatology", "ambulance_on_scene", "the thief's own case");
    f.ok(&["sync", "--dir", s(&thief), "--peer", &addr]);
    {
        let mut doc =
            SessionDoc::load(&leaked_copy(&f, &thief, &own), intruder.node.raw_store().identity().actor().clone())
                .unwrap();
        let (bytes, sigs) = intruder.signed(&mut doc, &[]);
        let answer = send_changes(&mut intruder, &id, bytes, sigs, Vec::new());
        refused(&answer, &id, "replayed changes of another session", &f);
    }
    // The desk that holds the session cannot forge a hub's receipt either.
    let mut rogue_desk = join(&desk, &addr);
    let desk_copy = leaked_copy(&f, &desk, &id);
    let answer = forge(&mut rogue_desk, &desk_copy, &id, |d| {
        let media = obj(d, &ROOT, "media");
        let key = d.keys(&media).next().unwrap();
        let m = obj(d, &media, &key);
        let receipts = obj(d, &m, "receipts");
        d.put(&receipts, "hub/hub-qhm", 1).unwrap();
    });
    refused(&answer, &id, "a desk's forged hub receipt", &f);

    let after = hub_view(&f, &hub, &id);
    for field in ["identity", "shared_with", "status", "messages", "status_history"] {
        if after[field] != baseline[field] {
            f.fail(format!("the hub's copy changed at {field}: {} -> {}", baseline[field], after[field]));
        }
    }
    let log = hubd.log_text();
    let logged = log.lines().filter(|l| l.contains("amb-66") && l.contains("refused a document")).count();
    if logged < refusals.len() {
        f.fail(format!("only {logged} refusals of amb-66 in the hub's log:\n{log}"));
    }

    // The op bomb: one small change holding three million list inserts. It is refused before it
    // is expanded, while an honest edge syncs.
    let bomb_answer = {
        let mut doc = SessionDoc::load(&leaked, intruder.node.raw_store().identity().actor().clone()).unwrap();
        let before = doc.heads();
        let msgs = obj(doc.automerge(), &ROOT, "messages");
        doc.automerge().splice(&msgs, 0, 0, std::iter::repeat_n(ScalarValue::Null, 3_000_000)).unwrap();
        doc.automerge().commit();
        let (bytes, sigs) = intruder.signed(&mut doc, &before);
        summary["op_bomb_bytes"] = bytes.len().into();
        let doc = doc_id(&id);
        let start = intruder.settle(Duration::ZERO).len();
        intruder.send(&[Frame::Changes(Changes { doc, ack: false, heads: Vec::new(), bytes, sigs })]);
        f.message(&honest, &honest_id, "written while the bomb lands");
        let t = Instant::now();
        f.ok(&["sync", "--dir", s(&honest), "--peer", &addr]);
        summary["honest_sync_during_bomb_ms"] = (t.elapsed().as_millis() as u64).into();
        intruder.exchange(&[], LIMIT);
        intruder.settle(Duration::ZERO).split_off(start)
    };
    refused(&bomb_answer, &id, "op bomb", &f);

    // Frames of the largest size, full of garbage, one after another: each is refused, and the
    // hub holds at most one connection's queue of them at a time.
    let rss_before = hubd.rss_kib().unwrap_or(0);
    let mut flood = join(&thief, &addr);
    let garbage: Vec<u8> = (0..8 * 1024 * 1024 - 200).map(|i| (i * 7 + 13) as u8).collect();
    let frames: Vec<Frame> = (0..12)
        .map(|_| {
            Frame::Changes(Changes {
                doc: doc_id(&id),
                ack: false,
                heads: Vec::new(),
                bytes: garbage.clone(),
                sigs: Vec::new(),
            })
        })
        .collect();
    let answers = flood.exchange(&frames, LIMIT);
    let flood_refused = answers.iter().filter(|fr| matches!(fr, Frame::Refused { .. })).count();
    if flood_refused != 12 {
        f.fail(format!("{flood_refused} of 12 garbage frames were refused: {answers:?}"));
    }
    summary["hub_rss_kib_before_flood"] = rss_before.into();
    summary["hub_peak_rss_kib_after_flood"] = hubd.peak_rss_kib().unwrap_or(0).into();
    drop(flood);

    // Garbage and an oversized frame: the hub closes that connection with a reason and says so.
    let is_close = |fr: &Frame| matches!(fr, Frame::Close { code: 2, .. });
    let mut garbage = join(&thief, &addr);
    garbage.send_raw(&[0x06, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00]);
    let closed = garbage.wait_for(LIMIT, is_close);
    if !closed.iter().any(|fr| matches!(fr, Frame::Close { code: 2, .. })) {
        f.fail(format!("garbage was not answered with a Close: {closed:?}"));
    }
    let mut huge = join(&thief, &addr);
    huge.send_raw(&[0x06, 0x80, 0x80, 0x80, 0x40]);
    let closed = huge.wait_for(LIMIT, is_close);
    if !closed.iter().any(|fr| matches!(fr, Frame::Close { code: 2, .. })) {
        f.fail(format!("an oversized frame was not answered with a Close: {closed:?}"));
    }
    let log = hubd.log_text();
    if log.lines().filter(|l| l.contains("amb-66") && l.contains("undecodable frame")).count() < 2 {
        f.fail(format!("the hub did not log the undecodable frames:\n{log}"));
    }

    // And the honest edge still syncs afterwards; the victim's session is as it was.
    f.message(&honest, &honest_id, "after the attack");
    let t = Instant::now();
    f.ok(&["sync", "--dir", s(&honest), "--peer", &addr]);
    summary["honest_sync_after_ms"] = (t.elapsed().as_millis() as u64).into();
    let after = hub_view(&f, &hub, &id);
    if after["messages"] != baseline["messages"] || after["shared_with"] != baseline["shared_with"] {
        f.fail("the victim's session changed at the hub");
    }
    summary["refused"] = serde_json::json!(refusals);
    eprintln!("{summary}");
    f.record(&summary);
}

/// A stolen tablet asks for its own session (a few hundred kilobytes) a thousand times a write,
/// for as long as the hub takes the asks, and never reads an answer. The hub stops taking its
/// frames once what it owes that connection passes a bound (so the tablet's writes stall),
/// its memory stays within that bound, and an honest surgery syncs meanwhile.
#[test]
fn a_tablet_that_asks_and_never_reads_holds_no_more_of_the_hub_than_a_bound() {
    let mut f = Field::new(BIN, "deaf");
    let hub = f.node("hub-qhm", "hub", &[]);
    let thief = f.node("amb-66", "edge", &[]);
    let honest = f.node("surgery-12", "edge", &["--org", "B82005"]);
    let addr = free_addr();
    let hubd = f.daemon(&hub, &["--listen", &addr]);
    f.wait(LIMIT, POLL, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    let id = f.new_session(&thief, "cardiology", "ambulance_on_scene", "chest pain at rest");
    let long = "ECG and observations as recorded on scene; ".repeat(350);
    for k in 0..20 {
        f.message(&thief, &id, &format!("{long}({k})"));
    }
    f.ok(&["sync", "--dir", s(&thief), "--peer", &addr]);
    let before = hubd.rss_kib().unwrap_or_else(|| f.fail("no hub RSS"));

    let mut deaf = Intruder::connect_deaf(&thief, &addr);
    let asks: Vec<Frame> = (0..1_000).map(|_| Frame::Need { doc: doc_id(&id) }).collect();
    let started = Instant::now();
    let mut taken = 0u64;
    while started.elapsed() < Duration::from_secs(30) && taken < 2_000 && deaf.try_send(&asks, Duration::from_secs(3)) {
        taken += 1;
    }
    // What the hub took in is answered (or waits to be) by now.
    std::thread::sleep(Duration::from_secs(3));
    let during = hubd.rss_kib().unwrap_or_else(|| f.fail("the hub is gone"));
    let grown_mib = (during.saturating_sub(before)) as f64 / 1024.0;
    eprintln!(
        "{} asks taken in {:?}; hub RSS {before} KiB before, {during} KiB with the tablet not reading (+{grown_mib:.1} MiB)",
        taken * 1_000,
        started.elapsed()
    );
    if taken >= 2_000 {
        f.fail("the hub took two million asks from a tablet that read none of the answers");
    }
    if grown_mib > 96.0 {
        f.fail(format!("the hub grew by {grown_mib:.1} MiB for a tablet that reads nothing"));
    }

    let honest_id = f.new_session(&honest, "dermatology", "gp_urgent", "rash, spreading");
    let t = Instant::now();
    f.ok(&["sync", "--dir", s(&honest), "--peer", &addr]);
    eprintln!("an honest surgery's sync meanwhile: {:?}", t.elapsed());
    if f.export(&hub, &honest_id).is_none() {
        f.fail("the honest surgery's session did not reach the hub");
    }
    f.record(&serde_json::json!({
        "seed": f.seed,
        "asks_taken": taken * 1_000,
        "hub_rss_kib_before": before,
        "hub_rss_kib_during": during,
        "honest_sync_ms": t.elapsed().as_millis() as u64,
    }));
    drop(deaf);
}

/// A tablet completes as many handshakes as one peer may hold connections (four), then opens
/// no lanes and says nothing, keeping each connection alive. The hub closes them once the time
/// a dialler has to open its lanes is up, and the tablet's node syncs again.
#[test]
fn a_tablet_that_connects_and_opens_no_lanes_holds_its_slots_only_for_a_while() {
    let mut f = Field::new(BIN, "silent");
    let hub = f.node("hub-qhm", "hub", &[]);
    let tablet = f.node("amb-66", "edge", &[]);
    let addr = free_addr();
    let hubd = f.daemon(&hub, &["--listen", &addr]);
    f.wait(LIMIT, POLL, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    let silent = Silent::connect(&tablet, &addr, 4);
    // The handshakes are done: the hub is taking their slots.
    std::thread::sleep(Duration::from_millis(500));
    f.fails(&["sync", "--dir", s(&tablet), "--peer", &addr, "--timeout", "10"], 6);
    if !hubd.log_text().contains("already holds 4 connections") {
        f.fail(format!("a fifth connection was refused, but not for the limit: {}", hubd.log_text()));
    }
    f.wait(LIMIT, POLL, "the hub to close the silent connections", || silent.closed() == 4);
    if !hubd.log_text().contains("opened no lanes") {
        f.fail(format!("the hub did not say why it closed them: {}", hubd.log_text()));
    }
    f.ok(&["sync", "--dir", s(&tablet), "--peer", &addr]);
}

/// A photo's hash is no key to its bytes. A stolen tablet that learnt the hash of another
/// patient's photo (an exported record names the photos it does not embed by their hash)
/// records it in a session of its own. The hub stores the record (it is only words), but sends
/// the tablet neither the photo's manifest nor a chunk of it, says in that session that the
/// photo is not at the hub, and the desk of that session's line is not given it either.
#[test]
fn a_photo_hash_recorded_in_a_tablets_own_session_opens_nothing() {
    let mut f = Field::new(BIN, "hash-key");
    let hub = f.node("hub-qhm", "hub", &[]);
    let victim = f.node("amb-07", "edge", &[]);
    let thief = f.node("amb-66", "edge", &[]);
    let desk = f.node("desk-derm-1", "desk", &["--org", "RTH", "--service-line", "dermatology"]);
    let addr = free_addr();
    let hubd = f.daemon(&hub, &["--listen", &addr]);
    f.wait(LIMIT, POLL, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));

    let id = f.new_session(&victim, "dermatology", "ambulance_on_scene", "spreading rash");
    let jpeg = f.dir.join("rash.jpg");
    photo_file(&jpeg, f.seed, 300_000);
    let photo = f.photo(&victim, &id, &jpeg, "close-up");
    f.ok(&["sync", "--dir", s(&victim), "--peer", &addr]);
    let size = hub_view(&f, &hub, &id)["media"][0]["size"].as_u64().unwrap();

    // The tablet's own case, with a photo of its own (and so a consent to point at).
    let own_id = f.new_session(&thief, "dermatology", "ambulance_on_scene", "a case of its own");
    let own_jpeg = f.dir.join("own.jpg");
    photo_file(&own_jpeg, f.seed.wrapping_add(1), 50_000);
    f.photo(&thief, &own_id, &own_jpeg, "close-up");
    f.ok(&["sync", "--dir", s(&thief), "--peer", &addr]);
    let leaked = leaked_copy(&f, &thief, &own_id);
    let mut intruder = join(&thief, &addr);
    let victim_photo = photo.clone();
    let answer = forge(&mut intruder, &leaked, &own_id, move |d| {
        let media = obj(d, &ROOT, "media");
        let own = d.keys(&media).next().unwrap();
        let own = obj(d, &media, &own);
        let keys: Vec<String> = d.keys(&own).collect();
        let mut fields: Vec<(String, ScalarValue)> = Vec::new();
        for k in keys {
            if let Some((Value::Scalar(v), _)) = d.get(&own, k.as_str()).unwrap() {
                fields.push((k, v.into_owned()));
            }
        }
        let m = d.put_object(&media, victim_photo.as_str(), ObjType::Map).unwrap();
        for (k, v) in fields {
            let v = match k.as_str() {
                "hash" => ScalarValue::Str(victim_photo.clone().into()),
                "size" => ScalarValue::Uint(size),
                _ => v,
            };
            d.put(&m, k.as_str(), v).unwrap();
        }
        d.put_object(&m, "receipts", ObjType::Map).unwrap();
    });
    if answer.iter().any(|fr| matches!(fr, Frame::Refused { .. })) {
        f.fail(format!("the hub refused the record itself (the test wants it stored): {answer:?}"));
    }
    f.wait(LIMIT, POLL, "the hub to store the tablet's record", || {
        hub_view(&f, &hub, &own_id)["media"].as_array().is_some_and(|m| m.len() == 2)
    });

    let hash = Hash::from_hex(&photo).unwrap();
    let start = intruder.settle(Duration::ZERO).len();
    intruder.exchange(&[Frame::BlobWant { hash, manifest: true, chunks: vec![0, 1] }], LIMIT);
    let got = intruder.wait_for(LIMIT, |fr| matches!(fr, Frame::BlobMissing { .. })).split_off(start);
    let leaked_photo = got.iter().any(|fr| match fr {
        Frame::BlobManifest(m) => m.hash == hash,
        Frame::BlobChunk { hash: h, .. } => *h == hash,
        _ => false,
    });
    if leaked_photo {
        let names: Vec<&str> = got.iter().map(Frame::name).collect();
        f.fail(format!("the tablet was sent the other patient's photo: {names:?}"));
    }
    drop(intruder);
    let view = hub_view(&f, &hub, &own_id);
    let record = view["media"].as_array().unwrap().iter().find(|m| m["hash"] == photo.as_str()).unwrap().clone();
    if record["receipts"].as_array().is_some_and(|r| !r.is_empty()) {
        f.fail(format!("the hub says the photo is at the hub in the tablet's session: {record}"));
    }
    // An honest surgery attaching the same file in a case of its own proves it has the bytes
    // (the hub asks it for two chunks) and its record is then held at the hub like any other.
    let honest = f.node("surgery-12", "edge", &["--org", "B82005"]);
    let honest_id = f.new_session(&honest, "dermatology", "gp_urgent", "the same photo, sent by the patient");
    f.photo(&honest, &honest_id, &jpeg, "close-up");
    f.ok(&["sync", "--dir", s(&honest), "--peer", &addr]);
    f.wait(LIMIT, POLL, "the hub to hold the surgery's copy", || {
        let v = hub_view(&f, &hub, &honest_id);
        v["media"][0]["receipts"].as_array().is_some_and(|r| r.iter().any(|x| x["level"] == "hub"))
    });
    // The dermatology desk holds both sessions; it is given the photo for the victim's case
    // only, and its record of the tablet's case shows no photo held.
    f.ok(&["sync", "--dir", s(&desk), "--peer", &addr]);
    let at_desk = f.export(&desk, &own_id).unwrap_or_else(|| f.fail("the desk lacks the tablet's case"));
    let record = at_desk["media"].as_array().unwrap().iter().find(|m| m["hash"] == photo.as_str()).unwrap().clone();
    if record["receipts"].as_array().is_some_and(|r| r.iter().any(|x| x["level"] == "desk")) {
        f.fail(format!("the desk says it holds the photo in the tablet's session: {record}"));
    }
}

/// A tablet asks for a call and never echoes the hub's probes of its link, so the gate listens
/// to it for its longest (three windows of a second and a half's wait). Meanwhile a crew
/// escalates another session: its link is measured and its consultant rung while the tablet's
/// gate still listens. One requester's link is no queue for every other call in the ICB.
#[test]
fn a_requester_that_never_echoes_does_not_hold_up_another_crews_call() {
    let mut f = Field::new(BIN, "deaf-requester");
    let hub = f.node("hub-qhm", "hub", &[]);
    let desk = f.node("desk-a", "desk", &["--org", "RTH", "--service-line", "dermatology"]);
    let crew = f.node("amb-07", "edge", &["--org", "RX6"]);
    let thief = f.node("amb-66", "edge", &["--org", "RX6"]);
    f.ok(&["rota", "set", "--dir", s(&hub), "--line", "dermatology", "--desk", "desk-a", "--ring-secs", "20"]);
    let addr = free_addr();
    let hubd = f.daemon(&hub, &["--listen", &addr]);
    f.wait(LIMIT, POLL, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    let _desk = f.daemon(&desk, &["--peer", &addr, "--auto-answer"]);
    let _crew = f.daemon(&crew, &["--peer", &addr]);

    // The tablet's escalation, recorded offline, goes up by hand; nothing echoes its probes.
    let theirs = f.new_session(&thief, "dermatology", "ambulance_on_scene", "rash; asks for a call");
    f.ok(&["call", "escalate", "--dir", s(&thief), &theirs]);
    let copy = leaked_copy(&f, &thief, &theirs);
    let mut intruder = join(&thief, &addr);
    let mut doc = SessionDoc::load(&copy, intruder.node.raw_store().identity().actor().clone()).unwrap();
    let (bytes, sigs) = intruder.signed(&mut doc, &[]);
    let heads = doc.heads().iter().map(|h| Hash::from(*h)).collect();
    let answer = send_changes(&mut intruder, &theirs, bytes, sigs, heads);
    if !answer.iter().any(|fr| matches!(fr, Frame::Ack { doc, .. } if *doc == doc_id(&theirs))) {
        f.fail(format!("the hub did not take the tablet's escalation: {answer:?}"));
    }
    // Once the desk holds that case the hub starts listening to the tablet's link.
    f.wait(LIMIT, POLL, "the desk to hold the tablet's case", || f.export(&desk, &theirs).is_some());
    std::thread::sleep(Duration::from_millis(300));

    let ours = f.new_session(&crew, "dermatology", "ambulance_on_scene", "anaphylaxis; call now");
    let asked = Instant::now();
    let out = f.ok(&["call", "escalate", "--dir", s(&crew), &ours, "--wait", "120", "--json"]);
    let connected_after = asked.elapsed();
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    if result["state"] != "connected" {
        f.fail(format!("the crew's call: {result}"));
    }
    let routing = |id: &str| -> Vec<serde_json::Value> {
        let out = f.ok(&["call", "status", "--dir", s(&hub), id, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["routing"].as_array().cloned().unwrap_or_default()
    };
    let at = |steps: &[serde_json::Value], kind: &str| {
        steps.iter().find(|e| e["kind"] == kind).and_then(|e| e["at_ms"].as_i64())
    };
    let mut their_gate = None;
    f.wait(LIMIT, POLL, "the tablet's gate to be judged", || {
        their_gate = at(&routing(&theirs), "gate");
        their_gate.is_some()
    });
    let (their_gate, our_ring) = (their_gate.unwrap(), at(&routing(&ours), "ring").unwrap());
    eprintln!(
        "the crew's call connected {:.1} s after it was asked for; its desk rung {} ms before the tablet's gate was judged",
        connected_after.as_secs_f64(),
        their_gate - our_ring
    );
    if our_ring >= their_gate {
        f.fail(format!(
            "the crew's consultant was rung {} ms after the tablet's deaf link was judged: the gate held every call",
            our_ring - their_gate
        ));
    }
}
