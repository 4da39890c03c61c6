//! The sync engine between in-memory replicas: convergence, cost, scope, blobs, fallbacks.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use sync_protocol::authorship::{AuthorKey, Member, SharedRoster};
use sync_protocol::engine::{AuditHeads, Engine, EngineConfig, Incoming, Replica};
use sync_protocol::mem::MemReplica;
use sync_protocol::scope::PeerInfo;
use sync_protocol::session::{NewConsent, NewMedia, NewMessage, NewSession, Patient, Requester, Service, SessionDoc};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, PhotoView, Priority, ReceiptLevel, Role, ServiceLine, Side,
};
use sync_protocol::wire::{DocId, Frame, Hello};
use sync_protocol::{SessionId, TimeMs};

const T: TimeMs = 1_790_000_000_000;

fn info(name: &str, role: Role, lines: &[ServiceLine]) -> PeerInfo {
    PeerInfo { name: name.into(), role, org: None, icb: Some("QHM".into()), lines: lines.to_vec() }
}

thread_local! {
    /// The fleet of each test: every replica created is a member the others can verify.
    static FLEET: SharedRoster = SharedRoster::default();
}

fn replica(p: &PeerInfo, n: u8) -> MemReplica {
    let key = AuthorKey::from_seed(&[n; 32], [n; 8]);
    FLEET.with(|f| {
        f.write().unwrap().insert(Member { info: p.clone(), key: key.public() });
        MemReplica::new(p.clone(), key, f.clone())
    })
}

fn new_session(r: &mut MemReplica, seq: u64, line: ServiceLine) -> DocId {
    let me = r.me().clone();
    let new = NewSession {
        id: SessionId::from_parts(T + seq as i64, u128::from(seq) * 7919 + 1),
        origin: me.name.clone(),
        icb: "QHM".into(),
        care_setting: CareSetting::GpUrgent,
        requester: Requester::default(),
        patient: Patient::default(),
        service: Service { line, channel: Channel::Message, priority: Priority::Routine },
        summary: format!("session {seq}"),
        draft: false,
    };
    let doc = SessionDoc::create(&new, r.actor().clone(), T).unwrap();
    r.put(doc).unwrap()
}

fn message(r: &mut MemReplica, id: &DocId, text: &str, now: TimeMs) {
    let me = r.me().clone();
    let side = if me.role == Role::Desk { Side::Responder } else { Side::Requester };
    let mid = SessionId::from_parts(now, now as u128).to_string();
    r.edit(id, |d| {
        d.add_message(
            &NewMessage { clinician: None, id: mid, author: me.name.clone(), side, text: text.into(), reply_to: None },
            now,
        )
    })
    .unwrap();
}

/// Copies a whole session from one replica to another, as restoring a backup would.
fn copy_doc(src: &mut MemReplica, dst: &mut MemReplica, id: &DocId) {
    let (from, to) = (src.me().clone(), dst.me().clone());
    let out = src.changes_since(&to, id, &[]).unwrap().unwrap();
    let applied = dst.apply(&from, &[Incoming { doc: *id, bytes: out.bytes, sigs: out.sigs }], T).unwrap();
    assert!(matches!(applied[0], sync_protocol::engine::Applied::Stored { .. }), "{applied:?}");
}

mod common;
use common::Pair;

struct Link {
    a_to_b: Vec<Vec<u8>>,
    b_to_a: Vec<Vec<u8>>,
}

/// Runs a conversation to its end over a perfect link (the shared [`Pair`] on a virtual
/// clock); returns the engines and the frames each way (encoded), for inspection.
fn converse(a: &mut MemReplica, b: &mut MemReplica, now: TimeMs) -> (Engine, Engine, Link) {
    let mut p = Pair::new(a, b, now);
    p.start(a, b);
    p.run_to_end(a, b, 600_000);
    let side = |from_a: bool| p.wire.iter().filter(|(f, _)| *f == from_a).map(|(_, b)| b.clone()).collect();
    let link = Link { a_to_b: side(true), b_to_a: side(false) };
    (p.a, p.b, link)
}

fn same_heads(a: &mut MemReplica, b: &mut MemReplica, ids: &[DocId]) {
    for id in ids {
        assert_eq!(a.heads(id), b.heads(id), "document {:?} differs", &id[..4]);
    }
}

#[test]
fn an_edge_and_a_hub_converge_and_the_hub_acknowledges_what_it_stored() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let ids: Vec<DocId> = (0..3).map(|i| new_session(&mut edge, i, ServiceLine::Dermatology)).collect();
    message(&mut edge, &ids[0], "first words", T + 5);
    let (ea, _, _) = converse(&mut edge, &mut hub, T + 10);
    same_heads(&mut edge, &mut hub, &ids);
    let v = edge.view_seen(&ids[0]).unwrap();
    assert_eq!(v.messages[0].receipt, ReceiptLevel::Hub, "the hub acknowledged the message in the same conversation");
    assert!(v.messages[0].receipts.is_empty(), "hubs write no receipt on messages: {:?}", v.messages[0].receipts);
    assert_eq!(edge.view(&ids[0]).unwrap().messages[0].receipt, ReceiptLevel::Device, "the document alone says less");
    eprintln!("first contact: {:?}", ea.stats());
    assert!(ea.stats().round_trips <= 2, "first contact, no receipt round: {:?}", ea.stats());
}

#[test]
fn a_reconnect_with_nothing_changed_is_one_round_trip_of_a_few_hundred_bytes() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    for i in 0..1000 {
        new_session(&mut edge, i, ServiceLine::Cardiology);
    }
    converse(&mut edge, &mut hub, T + 10);
    let (ea, _, link) = converse(&mut edge, &mut hub, T + 20);
    let bytes: usize = link.a_to_b.iter().chain(&link.b_to_a).map(Vec::len).sum();
    assert_eq!(ea.stats().round_trips, 1, "{:?}", ea.stats());
    assert!(bytes < 300, "{bytes} bytes");
}

#[test]
fn k_changed_documents_cost_their_changes_and_a_little_more() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let ids: Vec<DocId> = (0..2000).map(|i| new_session(&mut edge, i, ServiceLine::Cardiology)).collect();
    converse(&mut edge, &mut hub, T + 10);
    for (k, id) in ids.iter().step_by(200).enumerate() {
        message(&mut edge, id, &format!("an update to session {k}, written offline"), T + 100 + k as i64);
    }
    let (ea, eb, link) = converse(&mut edge, &mut hub, T + 200);
    same_heads(&mut edge, &mut hub, &ids);
    let bytes: usize = link.a_to_b.iter().chain(&link.b_to_a).map(Vec::len).sum();
    let changes = ea.stats().change_bytes_sent + eb.stats().change_bytes_sent;
    assert_eq!(ea.stats().docs_sent, 10);
    assert!((bytes as u64) < changes * 12 / 10 + 2048, "{bytes} bytes on the wire for {changes} bytes of changes");
    assert_eq!(ea.stats().range_differences + eb.stats().range_differences, 0, "no range reconciliation needed");
}

#[test]
fn concurrent_edits_on_both_sides_merge() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let id = new_session(&mut edge, 1, ServiceLine::Dermatology);
    converse(&mut edge, &mut hub, T + 10);
    message(&mut edge, &id, "from the ambulance", T + 20);
    hub.edit(&id, |d| d.share_with("desk-derm-1", T + 21)).unwrap();
    converse(&mut edge, &mut hub, T + 30);
    same_heads(&mut edge, &mut hub, &[id]);
    let v = hub.view(&id).unwrap();
    assert_eq!(v.messages.len(), 1);
    assert_eq!(v.shared_with, vec!["desk-derm-1".to_string()]);
}

#[test]
fn lost_peer_state_falls_back_to_range_reconciliation_and_still_converges() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let ids: Vec<DocId> = (0..500).map(|i| new_session(&mut edge, i, ServiceLine::Cardiology)).collect();
    converse(&mut edge, &mut hub, T + 10);
    // The edge is restored from an old backup: its knowledge of the hub is gone, and it
    // meanwhile made new changes.
    let mut restored = replica(&edge_i, 1);
    for id in &ids {
        copy_doc(&mut edge, &mut restored, id);
    }
    message(&mut restored, &ids[7], "after the restore", T + 40);
    let (ea, eb, _) = converse(&mut restored, &mut hub, T + 50);
    same_heads(&mut restored, &mut hub, &ids);
    assert!(ea.stats().range_differences + eb.stats().range_differences >= 1);
}

#[test]
fn the_hub_gives_a_desk_only_its_service_lines_and_an_edge_only_its_own_sessions() {
    let hub_i = info("hub-qhm", Role::Hub, &[]);
    let (a_i, b_i) = (info("surgery-a", Role::Edge, &[]), info("surgery-b", Role::Edge, &[]));
    let desk_i = info("desk-derm-1", Role::Desk, &[ServiceLine::Dermatology]);
    let mut hub = replica(&hub_i, 1);
    let mut a = replica(&a_i, 2);
    let mut b = replica(&b_i, 3);
    let mut desk = replica(&desk_i, 4);
    let a_derm = new_session(&mut a, 1, ServiceLine::Dermatology);
    let a_cardio = new_session(&mut a, 2, ServiceLine::Cardiology);
    let b_own = new_session(&mut b, 3, ServiceLine::Dermatology);
    converse(&mut a, &mut hub, T + 10);
    converse(&mut b, &mut hub, T + 11);
    let (_, _, link_b) = converse(&mut b, &mut hub, T + 12);
    let (_, _, link_desk) = converse(&mut desk, &mut hub, T + 13);
    assert_eq!(desk.ids().len(), 2, "the dermatology desk holds both dermatology sessions");
    assert!(desk.view(&a_derm).is_some() && desk.view(&b_own).is_some() && desk.view(&a_cardio).is_none());
    assert_eq!(b.ids(), vec![b_own]);
    for frame in link_b.b_to_a.iter().chain(&link_b.a_to_b) {
        for other in [a_derm, a_cardio] {
            assert!(!frame.windows(16).any(|w| w == other), "surgery B was sent the id of surgery A's session");
        }
    }
    for frame in &link_desk.b_to_a {
        assert!(!frame.windows(16).any(|w| w == a_cardio), "the desk was sent a cardiology session id");
    }
}

#[test]
fn a_forged_session_from_an_edge_is_refused() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let mut edge = replica(&edge_i, 1);
    let mut hub = replica(&hub_i, 2);
    // A session that claims to come from another ambulance.
    let mut other = replica(&info("amb-99", Role::Edge, &[]), 3);
    let forged = new_session(&mut other, 5, ServiceLine::Dermatology);
    let out = other.changes_since(&hub_i, &forged, &[]).unwrap().unwrap();
    let outcome = hub.apply(&edge_i, &[Incoming { doc: forged, bytes: out.bytes, sigs: out.sigs }], T).unwrap();
    assert!(matches!(outcome[0], sync_protocol::engine::Applied::Refused { .. }), "{outcome:?}");
    assert!(hub.ids().is_empty());
    let _ = &mut edge;
}

#[test]
fn photos_reach_the_hub_verified_and_the_edge_then_drops_its_copy() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let id = new_session(&mut edge, 1, ServiceLine::Dermatology);
    let photo: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let hash = edge.put_blob(&photo);
    let hex = hash.to_hex();
    edge.edit(&id, |d| {
        d.add_consent(
            &NewConsent {
                id: "c1".into(),
                kind: ConsentKind::Verbal,
                scope: ConsentScope::RecordOnly,
                by: "amb-07".into(),
            },
            T,
        )?;
        d.add_media(
            &NewMedia {
                hash: hex.clone(),
                mime: "image/jpeg".into(),
                size: photo.len() as u64,
                dimensions: None,
                view: PhotoView::CloseUp,
                body_site: "arm".into(),
                consent_id: "c1".into(),
                added_by: "amb-07".into(),
                clinician: None,
            },
            T,
        )
        .map(|_| ())
    })
    .unwrap();
    let (_, eb, _) = converse(&mut edge, &mut hub, T + 10);
    assert!(hub.holds_blob(&hash), "{:?}", eb.stats());
    assert_eq!(eb.stats().chunks_received, 13);
    assert_eq!(edge.view(&id).unwrap().media[0].receipt, ReceiptLevel::Hub);
    assert!(edge.blobs[&hash].offloaded, "the edge deleted its copy once the hub held it");
}

/// A dermatology session on `edge` with one photo of `size` bytes; returns the photo's hash.
fn session_with_photo(edge: &mut MemReplica, size: u32) -> sync_protocol::wire::Hash {
    session_with_photo_in(edge, 1, size)
}

/// [`session_with_photo`] as the session numbered `seq`.
fn session_with_photo_in(edge: &mut MemReplica, seq: u64, size: u32) -> sync_protocol::wire::Hash {
    let id = new_session(edge, seq, ServiceLine::Dermatology);
    let photo: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(40503) >> 7) as u8).collect();
    let hash = edge.put_blob(&photo);
    let hex = hash.to_hex();
    edge.edit(&id, |d| {
        d.add_consent(
            &NewConsent {
                id: "c1".into(),
                kind: ConsentKind::Verbal,
                scope: ConsentScope::RecordOnly,
                by: "amb-07".into(),
            },
            T,
        )?;
        d.add_media(
            &NewMedia {
                hash: hex.clone(),
                mime: "image/jpeg".into(),
                size: photo.len() as u64,
                dimensions: None,
                view: PhotoView::Site,
                body_site: "leg".into(),
                consent_id: "c1".into(),
                added_by: "amb-07".into(),
                clinician: None,
            },
            T,
        )
        .map(|_| ())
    })
    .unwrap();
    hash
}

#[test]
fn a_photo_request_lost_on_the_way_is_asked_again_once_the_transfer_stalls() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let hash = session_with_photo(&mut edge, 100_000);
    let mut ea = Engine::new(hub_i.clone(), EngineConfig::new(true));
    let mut eb = Engine::new(edge_i.clone(), EngineConfig::new(false));
    ea.start(&mut edge, T).unwrap();
    eb.start(&mut hub, T).unwrap();
    // The hub's requests for chunks are lost on the way, once (a damaged frame the edge refused).
    let dropped = std::cell::Cell::new(0usize);
    let pump = |ea: &mut Engine, eb: &mut Engine, edge: &mut MemReplica, hub: &mut MemReplica, drop_wants: bool| {
        for _ in 0..50 {
            let f: Vec<Frame> = std::iter::from_fn(|| ea.poll_frame().map(|x| x.1)).collect();
            if !f.is_empty() {
                eb.handle(hub, f, T).unwrap();
            }
            let f: Vec<Frame> = std::iter::from_fn(|| eb.poll_frame().map(|x| x.1))
                .filter(|f| {
                    let lose = drop_wants && matches!(f, Frame::BlobWant { chunks, .. } if !chunks.is_empty());
                    dropped.set(dropped.get() + usize::from(lose));
                    !lose
                })
                .collect();
            if !f.is_empty() {
                ea.handle(edge, f, T).unwrap();
            }
        }
    };
    pump(&mut ea, &mut eb, &mut edge, &mut hub, true);
    assert!(dropped.get() > 0, "the test lost a request");
    assert!(!hub.holds_blob(&hash), "the transfer stalled");
    // Less than the stall limit of silence may just be a slow link: however often the driver
    // calls, nothing is asked again before it.
    assert_eq!(eb.poll_timeout(), Some(T + 5_000), "the first nudge is due after the nudge period");
    for ms in (100..10_000).step_by(100) {
        eb.handle_timeout(&mut hub, T + ms).unwrap();
        let again: Vec<Frame> = std::iter::from_fn(|| eb.poll_frame().map(|x| x.1))
            .filter(|f| matches!(f, Frame::BlobWant { chunks, .. } if !chunks.is_empty()))
            .collect();
        assert!(again.is_empty(), "chunks asked again after only {ms} ms: {again:?}");
    }
    assert!(!hub.holds_blob(&hash));
    // Ten seconds without a chunk (the stall limit) ask again.
    eb.handle_timeout(&mut hub, T + 10_000).unwrap();
    pump(&mut ea, &mut eb, &mut edge, &mut hub, false);
    assert!(hub.holds_blob(&hash), "the photo completed once its requests were repeated");
}

#[test]
fn a_photo_waiting_behind_another_on_a_slow_link_is_not_asked_for_again() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let hashes = [session_with_photo_in(&mut edge, 1, 300_000), session_with_photo_in(&mut edge, 2, 300_001)];
    let mut ea = Engine::new(hub_i.clone(), EngineConfig::new(true));
    let mut eb = Engine::new(edge_i.clone(), EngineConfig::new(false));
    // A window sized to a long, slow link: both photos requested at once.
    eb.set_blob_window(64);
    ea.start(&mut edge, T).unwrap();
    eb.start(&mut hub, T).unwrap();
    // The one blob lane delivers three frames per 5 s nudge: the second photo's chunks wait
    // behind the first's for several nudges.
    let mut lane: std::collections::VecDeque<Frame> = std::collections::VecDeque::new();
    let mut requested: std::collections::HashMap<(sync_protocol::wire::Hash, u32), u32> = Default::default();
    for step in 0..200u32 {
        let now = T + i64::from(step) * 5_000;
        let wants: Vec<Frame> = std::iter::from_fn(|| eb.poll_frame().map(|x| x.1)).collect();
        for f in &wants {
            if let Frame::BlobWant { hash, chunks, .. } = f {
                for c in chunks {
                    *requested.entry((*hash, *c)).or_default() += 1;
                }
            }
        }
        if !wants.is_empty() {
            ea.handle(&mut edge, wants, now).unwrap();
        }
        lane.extend(std::iter::from_fn(|| ea.poll_frame().map(|x| x.1)));
        let arriving: Vec<Frame> = (0..3).filter_map(|_| lane.pop_front()).collect();
        if !arriving.is_empty() {
            eb.handle(&mut hub, arriving, now).unwrap();
        }
        eb.handle_timeout(&mut hub, now).unwrap();
        if hashes.iter().all(|h| hub.holds_blob(h)) {
            break;
        }
    }
    assert!(hashes.iter().all(|h| hub.holds_blob(h)), "both photos arrived: {:?}", eb.stats());
    let twice: Vec<_> = requested.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "chunks asked for again while the lane was moving: {twice:?}");
    assert_eq!(ea.stats().chunks_sent, requested.len() as u64, "no chunk served twice");
}

#[test]
fn an_interrupted_photo_resumes_without_fetching_stored_chunks_again() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let hash = session_with_photo(&mut edge, 300_000);
    // First conversation: cut after the hub stored a few chunks.
    let mut ea = Engine::new(hub_i.clone(), EngineConfig::new(true));
    let mut eb = Engine::new(edge_i.clone(), EngineConfig::new(false));
    ea.start(&mut edge, T).unwrap();
    eb.start(&mut hub, T).unwrap();
    for _ in 0..6 {
        let f: Vec<Frame> = std::iter::from_fn(|| ea.poll_frame().map(|x| x.1)).collect();
        if !f.is_empty() {
            eb.handle(&mut hub, f, T).unwrap();
        }
        let f: Vec<Frame> = std::iter::from_fn(|| eb.poll_frame().map(|x| x.1)).collect();
        if !f.is_empty() {
            ea.handle(&mut edge, f, T).unwrap();
        }
    }
    let stored_before = hub.blobs.get(&hash).map_or(0, |b| b.chunks.len());
    assert!(stored_before > 0 && stored_before < 19, "cut mid-transfer: {stored_before} chunks");
    // The link drops: both engines are gone. A new conversation resumes.
    let (_, eb2, _) = converse(&mut edge, &mut hub, T + 60);
    assert!(hub.holds_blob(&hash));
    assert_eq!(eb2.stats().chunks_received as usize, 19 - stored_before, "only the missing chunks were fetched");
}

#[test]
fn peers_without_a_common_version_part_with_a_clear_reason() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let mut hub = replica(&hub_i, 2);
    let mut eb = Engine::new(edge_i, EngineConfig::new(false));
    eb.start(&mut hub, T).unwrap();
    let future = Frame::Hello(Hello { min_version: 7, max_version: 9, node: "amb-07".into(), crl_number: 0 });
    let err = eb.handle(&mut hub, vec![future], T).unwrap_err();
    assert!(err.to_string().contains("no protocol version in common"), "{err}");
    let frames: Vec<Frame> = std::iter::from_fn(|| eb.poll_frame().map(|x| x.1)).collect();
    assert!(matches!(frames.last(), Some(Frame::Close { code: 1, .. })), "{frames:?}");
}

#[test]
fn a_peer_speaking_a_range_of_versions_is_met_at_the_highest_common_one() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let mut hub = replica(&hub_i, 2);
    let mut eb = Engine::new(edge_i, EngineConfig::new(false));
    eb.start(&mut hub, T).unwrap();
    let newer = Frame::Hello(Hello { min_version: 1, max_version: 4, node: "amb-07".into(), crl_number: 0 });
    eb.handle(&mut hub, vec![newer], T).unwrap();
    assert_eq!(eb.version(), Some(sync_protocol::wire::MAX_VERSION));
}

#[test]
fn an_audit_head_is_refused_in_version_2_and_a_second_one_in_version_3() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let head = Frame::AuditHead(AuditHeads { chain: 1, head: 12, seen_chain: 2, seen: 40, ..Default::default() });
    for max_version in [2, 3] {
        let mut hub = replica(&hub_i, 2);
        let mut eb = Engine::new(edge_i.clone(), EngineConfig::new(false));
        eb.start(&mut hub, T).unwrap();
        let hello = Frame::Hello(Hello { min_version: 2, max_version, node: "amb-07".into(), crl_number: 0 });
        eb.handle(&mut hub, vec![hello], T).unwrap();
        if max_version == 3 {
            // The first is taken (a refusal of every audit head would otherwise pass this test).
            eb.handle(&mut hub, vec![head.clone()], T).unwrap();
            assert!(!eb.is_closed());
        }
        let err = eb.handle(&mut hub, vec![head.clone()], T).unwrap_err();
        assert!(err.to_string().contains("audit-head not expected"), "version {max_version}: {err}");
    }
}

/// The responder tells its audit head after the Hellos; the initiator answers it once,
/// vouching for the end of its chain the responder said it had seen, and neither costs a
/// round trip.
#[test]
fn the_initiator_answers_the_responders_audit_head_once_vouching_for_the_end_it_was_told() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    new_session(&mut edge, 1, ServiceLine::Cardiology);
    converse(&mut edge, &mut hub, T + 10);
    edge.audit_heads = Some(AuditHeads { chain: 7, head: 120, anchor: [7; 32], proof: 3, ..Default::default() });
    hub.audit_heads =
        Some(AuditHeads { chain: 9, head: 800, seen_chain: 7, seen: 110, seen_anchor: [1; 32], ..Default::default() });
    let (ea, _, link) = converse(&mut edge, &mut hub, T + 20);
    assert_eq!(ea.stats().round_trips, 1, "{:?}", ea.stats());
    let heads_in = |frames: &[Vec<u8>]| -> Vec<AuditHeads> {
        let mut decoder = sync_protocol::wire::FrameDecoder::new();
        let mut found = Vec::new();
        for bytes in frames {
            decoder.feed(bytes);
            while let Some(frame) = decoder.next_frame().unwrap() {
                if let Frame::AuditHead(h) = frame {
                    found.push(h);
                }
            }
        }
        found
    };
    let (from_edge, from_hub) = (heads_in(&link.a_to_b), heads_in(&link.b_to_a));
    assert_eq!(from_hub.len(), 1, "the responder tells once");
    assert_eq!(from_edge.len(), 1, "the initiator answers once");
    assert_eq!(from_edge[0].proof, 110, "vouching for the end the hub had seen, not its own record (3)");
    assert_eq!(hub.audit_heads_told, vec![("amb-07".to_string(), from_edge[0])]);
    assert_eq!(edge.audit_heads_told, vec![("hub-qhm".to_string(), from_hub[0])]);
}

/// The in-memory replicas keep audit chains as nodes do (`MemReplica::with_audit`), judged by
/// the same rule (`sync_protocol::audit::judge`): conversations between a hub and its member
/// find nothing while nothing is lost; the member restored from an older backup is found by
/// its hub, and finds it itself, at their next conversation, once; then a restore written past
/// where the hub had seen is found too.
#[test]
fn a_member_restored_from_an_older_backup_is_found_by_its_hub_and_finds_it_itself() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let mut edge = replica(&edge_i, 1).with_audit(7, [1; 32]);
    let mut hub = replica(&hub_i, 2).with_audit(9, [2; 32]);
    let found = |r: &MemReplica, what: &str| r.audit.as_ref().unwrap().found(what, 1);
    let id = new_session(&mut edge, 1, ServiceLine::Cardiology);
    converse(&mut edge, &mut hub, T + 10);
    let mut backup = edge.backup();
    for i in 0..5 {
        message(&mut edge, &id, &format!("after the backup {i}"), T + 20 + i);
    }
    converse(&mut edge, &mut hub, T + 30);
    converse(&mut edge, &mut hub, T + 31);
    for what in ["peer.audit_behind", "audit.behind", "peer.audit_chain_changed"] {
        assert!(found(&hub, what).is_empty() && found(&edge, what).is_empty(), "nothing lost, yet {what}");
    }
    let seen = hub.audit.as_ref().unwrap().kept("amb-07").unwrap().head;
    assert!(seen > backup.audit.as_ref().unwrap().head(), "the hub saw past the backup");

    edge.restore(&mut backup, [9; 8]);
    converse(&mut edge, &mut hub, T + 40);
    assert_eq!(found(&hub, "peer.audit_behind"), vec![Some("amb-07".to_string())]);
    assert_eq!(found(&edge, "audit.behind"), vec![Some("hub-qhm".to_string())]);
    converse(&mut edge, &mut hub, T + 41);
    assert_eq!(found(&hub, "peer.audit_behind").len(), 1, "once for each end reached");

    // The crew works on past the end lost and syncs twice (the hub keeps the end it had seen
    // until the chain passes it, and takes the new end once it is vouched for), then the
    // tablet is put back to the same backup and written past that end before they speak: the
    // entry the hub kept is another now, and both sides find it again.
    let (lost_end, now_at) =
        (hub.audit.as_ref().unwrap().kept("amb-07").unwrap().head, edge.audit.as_ref().unwrap().head());
    for i in 0..(lost_end - now_at + 2) {
        message(&mut edge, &id, &format!("after the restore {i}"), T + 50 + i as i64);
    }
    converse(&mut edge, &mut hub, T + 60);
    converse(&mut edge, &mut hub, T + 61);
    let seen = hub.audit.as_ref().unwrap().kept("amb-07").unwrap().head;
    assert_eq!(seen, edge.audit.as_ref().unwrap().head(), "the hub follows the chain again");
    edge.restore(&mut backup, [10; 8]);
    for i in 0..(seen + 3) {
        message(&mut edge, &id, &format!("past the end seen {i}"), T + 70 + i as i64);
    }
    assert!(edge.audit.as_ref().unwrap().head() > seen);
    converse(&mut edge, &mut hub, T + 200);
    assert_eq!(found(&hub, "peer.audit_behind").len(), 2);
    // The tablet's first finding went with the chain it was written to: the backup is older.
    assert_eq!(found(&edge, "audit.behind").len(), 1);
    assert!(found(&hub, "peer.audit_chain_changed").is_empty());
}

#[test]
fn changes_with_missing_dependencies_are_answered_with_the_whole_document() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let id = new_session(&mut edge, 1, ServiceLine::Dermatology);
    converse(&mut edge, &mut hub, T + 10);
    message(&mut edge, &id, "one", T + 20);
    let after_one = edge.heads(&id).unwrap();
    message(&mut edge, &id, "two", T + 21);
    // A wrong belief (as after the hub was restored from a backup): the edge thinks the hub
    // holds "one", so it pushes only "two", which the hub cannot integrate.
    let wrong = sync_protocol::engine::Knowledge { heads: after_one.clone(), shared: after_one };
    edge.set_knowledge(&hub_i, &[(id, wrong)]).unwrap();
    let (ea, eb, _) = converse(&mut edge, &mut hub, T + 30);
    assert!(ea.stats().full_resends + eb.stats().full_resends >= 1);
    let texts: Vec<String> = hub.view(&id).unwrap().messages.into_iter().map(|m| m.text).collect();
    assert_eq!(texts, ["one", "two"]);
    assert_eq!(edge.view_seen(&id).unwrap().messages[1].receipt, ReceiptLevel::Hub);
}

#[test]
fn two_empty_nodes_meeting_for_the_first_time_finish_at_once() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let (ea, _, _) = converse(&mut edge, &mut hub, T);
    assert_eq!(ea.stats().round_trips, 1);
}

#[test]
fn equal_sets_without_peer_state_finish_in_one_round_trip() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    for i in 0..50 {
        new_session(&mut edge, i, ServiceLine::Cardiology);
    }
    converse(&mut edge, &mut hub, T + 1);
    // Both forget what they know of each other (as after restoring both from backups).
    let mut edge2 = replica(&edge_i, 1);
    let mut hub2 = replica(&hub_i, 2);
    for id in edge.ids() {
        copy_doc(&mut edge, &mut edge2, &id);
        copy_doc(&mut hub, &mut hub2, &id);
    }
    let (ea, _, _) = converse(&mut edge2, &mut hub2, T + 2);
    assert_eq!(ea.stats().round_trips, 1, "{:?}", ea.stats());
}

#[test]
fn a_blob_frame_that_overtakes_the_hello_on_the_other_lane_waits_for_it() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let mut edge = replica(&edge_i, 1);
    let mut ea = Engine::new(hub_i, EngineConfig::new(true));
    ea.start(&mut edge, T).unwrap();
    let want = Frame::BlobWant { hash: sync_protocol::wire::Hash([9; 32]), manifest: true, chunks: vec![0] };
    let hello = Frame::Hello(Hello { min_version: 2, max_version: 2, node: "hub-qhm".into(), crl_number: 0 });
    ea.handle(&mut edge, vec![want], T).unwrap();
    ea.handle(&mut edge, vec![hello], T).unwrap();
    let out: Vec<Frame> = std::iter::from_fn(|| ea.poll_frame().map(|x| x.1)).collect();
    assert!(out.iter().any(|f| matches!(f, Frame::BlobMissing { .. })), "the early want was answered: {out:?}");
}

#[test]
fn after_range_reconciliation_a_reconnect_needs_no_new_reconciliation() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let ids: Vec<DocId> = (0..300).map(|i| new_session(&mut edge, i, ServiceLine::Cardiology)).collect();
    converse(&mut edge, &mut hub, T + 1);
    // Knowledge lost on both sides: reconciled by ranges, which finds nothing to send...
    let mut edge2 = replica(&edge_i, 1);
    let mut hub2 = replica(&hub_i, 2);
    for id in &ids {
        copy_doc(&mut edge, &mut edge2, id);
        copy_doc(&mut hub, &mut hub2, id);
    }
    let (ea, _, _) = converse(&mut edge2, &mut hub2, T + 2);
    assert_eq!(ea.stats().docs_sent, 0);
    // ... and leaves both knowing it: one new session later, only that one crosses.
    let fresh = new_session(&mut edge2, 999, ServiceLine::Cardiology);
    let (ea, eb, link) = converse(&mut edge2, &mut hub2, T + 3);
    assert_eq!(ea.stats().docs_sent, 1, "{:?}", ea.stats());
    assert_eq!(ea.stats().range_differences + eb.stats().range_differences, 0);
    let bytes: usize = link.a_to_b.iter().chain(&link.b_to_a).map(Vec::len).sum();
    assert!(bytes < 4096, "{bytes} bytes for one new session");
    assert!(hub2.view(&fresh).is_some());
}

#[test]
fn over_a_slow_lossy_link_a_lost_photo_request_is_made_again_at_the_stall_limit_by_the_engines_own_timer() {
    for seed in 1..=5u64 {
        let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
        let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
        let hash = session_with_photo(&mut edge, 100_000);
        // 60 ms each way, 5% of frames lost once and sent again (QUIC's recovery).
        let mut p = Pair::new(&edge, &hub, T).link(60, 0.05, seed);
        p.start(&mut edge, &mut hub);
        // The hub's first requests for chunks are damaged on the way and refused (dropped).
        let drop_wants =
            |from_a: bool, f: &Frame| !from_a && matches!(f, Frame::BlobWant { chunks, .. } if !chunks.is_empty());
        let done = p.run(&mut edge, &mut hub, 2_000, Some(&drop_wants), |_, _, hub| hub.holds_blob(&hash));
        assert!(!done && p.dropped > 0, "seed {seed}: the requests were lost ({} dropped)", p.dropped);
        let lost_at = p.now;
        // From here the link delivers; only the engine's own timer can ask again.
        let done = p.run(&mut edge, &mut hub, 60_000, None, |_, _, hub| hub.holds_blob(&hash));
        assert!(done, "seed {seed}: the photo never completed ({} resent, stats {:?})", p.resent, p.b.stats());
        let waited = p.now - T;
        assert!(
            (sync_protocol::engine::STALL_MS as i64..sync_protocol::engine::STALL_MS as i64 + 8_000).contains(&waited),
            "seed {seed}: completed {waited} ms after the start (lost at {} ms); expected just after the stall limit",
            lost_at - T
        );
    }
}

#[test]
fn the_timer_moves_on_while_a_peer_stays_silent_so_a_driver_never_spins() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let mut hub = replica(&hub_i, 2);
    // The hub's side of a connection whose peer never says Hello.
    let mut eb = Engine::new(edge_i, EngineConfig::new(false));
    eb.start(&mut hub, T).unwrap();
    let first = eb.poll_timeout().expect("a timer once started");
    assert_eq!(first, T + sync_protocol::engine::NUDGE_MS as i64);
    eb.handle_timeout(&mut hub, first).unwrap();
    let next = eb.poll_timeout().expect("still armed");
    assert!(next > first, "the deadline stayed at {next} after it passed: a driver would wake at once, forever");
}

/// The ICB directory in the in-memory replica travels as the node's does: from the hub to its
/// ICB's edges and desks in an ordinary conversation, and nobody but the hub is believed (an edge relaying it to a desk, anyone sending it to a hub).
#[test]
fn the_hubs_directory_reaches_its_edges_and_desks_and_is_taken_from_no_one_else() {
    use sync_protocol::directory::{DirectoryDoc, Hours, LineEntry, directory_id};
    let (edge_i, hub_i, desk_i) = (
        info("amb-07", Role::Edge, &[]),
        info("hub-qhm", Role::Hub, &[]),
        info("desk-derm-1", Role::Desk, &[ServiceLine::Dermatology]),
    );
    let (mut edge, mut hub, mut desk) = (replica(&edge_i, 1), replica(&hub_i, 2), replica(&desk_i, 3));
    let entry = |hours: Hours| LineEntry {
        line: ServiceLine::Dermatology,
        hours,
        channels: vec![Channel::Message, Channel::Call],
        rota: vec![sync_protocol::call::RotaDesk { desk: "desk-derm-1".into(), ring_s: 20 }],
        fallback_hub: None,
        updated_ms: T,
    };
    let mut doc = DirectoryDoc::create("QHM", hub.actor().clone(), T).unwrap();
    doc.set_line(&entry(Hours::Always), T).unwrap();
    hub.set_directory(doc);
    converse(&mut edge, &mut hub, T + 10);
    converse(&mut desk, &mut hub, T + 20);
    let want = hub.directory_heads();
    assert!(want.is_some());
    assert_eq!(edge.directory_heads(), want, "the edge holds the hub's directory");
    assert_eq!(desk.directory_heads(), want, "the desk holds the hub's directory");
    assert_eq!(desk.directory_view().unwrap().lines[&ServiceLine::Dermatology].rota[0].desk, "desk-derm-1");

    // An edge's copy offered to a desk or to the hub: refused, whatever it holds.
    let id = directory_id("QHM");
    let out = edge.changes_since(&hub_i, &id, &[]).unwrap().unwrap();
    let inc = Incoming { doc: id, bytes: out.bytes, sigs: vec![] };
    for (to, from) in [(&mut desk, &edge_i), (&mut hub, &edge_i)] {
        let applied = to.apply(from, std::slice::from_ref(&inc), T + 30).unwrap();
        assert!(matches!(applied[0], sync_protocol::engine::Applied::Refused { .. }), "{applied:?}");
    }
    assert_eq!(edge.changes_since(&desk_i, &id, &[]).unwrap(), None, "an edge gives the directory to no desk");
    assert_eq!(desk.heads_for(&edge_i, &id).unwrap(), None, "nor does a desk to an edge");
}

/// Every frame the engine has to send, taken.
fn drain(e: &mut Engine) -> Vec<Frame> {
    std::iter::from_fn(|| e.poll_frame()).map(|(_, f)| f).collect()
}

/// The two engines of a conversation run to its end, with nothing left to send: the tests go
/// on by hand from there.
fn settled(a: &mut MemReplica, b: &mut MemReplica) -> (Engine, Engine) {
    let mut p = Pair::new(a, b, T);
    p.start(a, b);
    p.run_to_end(a, b, 600_000);
    let (mut ea, mut eb) = (p.a, p.b);
    drain(&mut ea);
    drain(&mut eb);
    (ea, eb)
}

/// Two pushes of one session in flight: the hub stores the first and acknowledges it without
/// heads ("I hold what you sent"); the second is lost with the link. The ack is of the first
/// push only: the edge must not take it for the second, and so must not show the second
/// message "at hub" (hubs write no receipt on messages: what they acknowledged is the proof).
#[test]
fn an_ack_without_heads_acknowledges_the_push_it_answers_not_a_later_one_still_in_flight() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let id = new_session(&mut edge, 1, ServiceLine::Dermatology);
    let (mut ea, mut eb) = settled(&mut edge, &mut hub);
    message(&mut edge, &id, "first", T + 1_000);
    ea.notify(&mut edge, &[id], T + 1_000).unwrap();
    let first = drain(&mut ea);
    message(&mut edge, &id, "second", T + 1_100);
    ea.notify(&mut edge, &[id], T + 1_100).unwrap();
    let second = drain(&mut ea);
    assert!(second.iter().any(|f| matches!(f, Frame::Changes(_))), "the second push is on its way: {second:?}");
    eb.handle(&mut hub, first, T + 1_200).unwrap();
    let acks = drain(&mut eb);
    assert!(acks.iter().any(|f| matches!(f, Frame::Ack { heads, .. } if heads.is_empty())), "{acks:?}");
    ea.handle(&mut edge, acks, T + 1_300).unwrap();
    // The link drops: the second push never arrives.
    drop(second);
    let v = edge.view_seen(&id).unwrap();
    let level = |text: &str| v.messages.iter().find(|m| m.text == text).map(|m| m.receipt);
    assert_eq!(level("first"), Some(ReceiptLevel::Hub), "the hub stored and acknowledged the first");
    assert_eq!(level("second"), Some(ReceiptLevel::Device), "the hub never received the second");
    assert!(!ea.is_quiescent(), "the second push is still unanswered");
}

/// A driver whose peer has much of its output still unread pauses pushes: changes the peer
/// sends to a session this side holds more of are still stored and acknowledged with a small
/// frame, and this side's own changes wait, to go once output is let go (a notify with no
/// documents). Two nodes each answering the other's changes with more of their own would
/// otherwise both stop reading.
#[test]
fn while_output_is_paused_changes_are_acknowledged_and_the_push_back_waits_for_the_release() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let id = new_session(&mut edge, 1, ServiceLine::Dermatology);
    let (mut ea, mut eb) = settled(&mut edge, &mut hub);
    // Both sides write to the session: the crew a message, the hub a share.
    message(&mut edge, &id, "from the ambulance", T + 1_000);
    ea.notify(&mut edge, &[id], T + 1_000).unwrap();
    let pushed = drain(&mut ea);
    hub.edit(&id, |d| d.share_with("desk-derm-1", T + 1_001)).unwrap();

    eb.set_output_paused(true);
    eb.handle(&mut hub, pushed, T + 1_100).unwrap();
    let answer = drain(&mut eb);
    assert!(answer.iter().any(|f| matches!(f, Frame::Ack { doc, .. } if *doc == id)), "acknowledged: {answer:?}");
    assert!(!answer.iter().any(|f| matches!(f, Frame::Changes(_))), "nothing pushed while paused: {answer:?}");
    assert!(eb.has_deferred() && !eb.is_quiescent(), "the share waits to be pushed");
    assert_eq!(hub.view(&id).unwrap().messages.len(), 1, "the crew's message is stored at the hub all the same");
    eb.notify(&mut hub, &[], T + 1_150).unwrap();
    assert!(drain(&mut eb).iter().all(|f| !matches!(f, Frame::Changes(_))), "still paused");

    eb.set_output_paused(false);
    eb.notify(&mut hub, &[], T + 1_200).unwrap();
    let released = drain(&mut eb);
    assert!(released.iter().any(|f| matches!(f, Frame::Changes(c) if c.doc == id)), "{released:?}");
    assert!(!eb.has_deferred());
    ea.handle(&mut edge, released, T + 1_300).unwrap();
    same_heads(&mut edge, &mut hub, &[id]);
    assert_eq!(edge.view(&id).unwrap().shared_with, vec!["desk-derm-1".to_string()]);
}

/// Range reconciliation that finds every range equal records the peer as holding each
/// session at our heads: not a session written here while the ranges were being compared
/// (the peer matched the heads it had before). A message written in that window must not show
/// "at hub".
#[test]
fn a_message_written_while_ranges_are_compared_is_not_taken_as_held_by_the_hub() {
    let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
    let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
    let steady = new_session(&mut edge, 1, ServiceLine::Dermatology);
    message(&mut edge, &steady, "steady", T + 4);
    let id = new_session(&mut edge, 2, ServiceLine::Dermatology);
    message(&mut edge, &id, "before", T + 5);
    converse(&mut edge, &mut hub, T + 10);
    // Both forget each other (restored, say): the next conversation compares ranges.
    edge.forget_peers();
    hub.forget_peers();
    let mut p = Pair::new(&edge, &hub, T + 1_000).link(50, 0.0, 1);
    p.start(&mut edge, &mut hub);
    let mut written = false;
    p.run(&mut edge, &mut hub, 600_000, None, |p, e, _| {
        // The hub has answered the edge's ranges; its answer is still on the way.
        if !written && p.now > T + 1_000 {
            message(e, &id, "during", p.now);
            written = true;
        }
        p.a.is_done() && p.quiet()
    });
    assert!(written);
    assert!(p.a.stats().range_differences == 0, "{:?}", p.a.stats());
    let level = |e: &mut MemReplica, id: &DocId, text: &str| {
        e.view_seen(id).unwrap().messages.iter().find(|m| m.text == text).map(|m| m.receipt)
    };
    assert_eq!(level(&mut edge, &steady, "steady"), Some(ReceiptLevel::Hub), "the ranges matched on it");
    assert_eq!(level(&mut edge, &id, "during"), Some(ReceiptLevel::Device), "the hub never received it");
}

/// What one peer's frames may cost this side: each is bounded whatever the peer sends (a
/// stolen tablet speaks the protocol by hand).
mod a_peers_frames_cost_bounded_work {
    use super::*;
    use sync_protocol::engine::{EngineError, Violation};
    use sync_protocol::wire::Hash;

    fn hello(name: &str) -> Frame {
        Frame::Hello(Hello { min_version: 2, max_version: 2, node: name.into(), crl_number: 0 })
    }

    fn drain(e: &mut Engine) -> Vec<Frame> {
        std::iter::from_fn(|| e.poll_frame().map(|x| x.1)).collect()
    }

    /// A hub holding the edge's session with a 100 kB photo, and the edge's conversation with
    /// it, past the Hellos.
    fn hub_with_photo() -> (MemReplica, Engine, Hash) {
        let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
        let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
        let hash = session_with_photo(&mut edge, 100_000);
        converse(&mut edge, &mut hub, T);
        assert!(hub.holds_blob(&hash));
        let mut e = Engine::new(edge_i, EngineConfig::new(false));
        e.start(&mut hub, T).unwrap();
        e.handle(&mut hub, vec![hello("amb-07")], T).unwrap();
        drain(&mut e);
        (hub, e, hash)
    }

    fn violation<E: std::error::Error>(r: Result<(), EngineError<E>>) -> Violation {
        match r {
            Err(EngineError::Protocol { detail, .. }) => detail,
            Err(other) => panic!("not a protocol violation: {other}"),
            Ok(()) => panic!("accepted"),
        }
    }

    #[test]
    fn a_request_for_one_photo_chunk_many_times_over_is_a_violation_and_serves_nothing() {
        let (mut hub, mut e, hash) = hub_with_photo();
        // Each chunk once, as a receiver asks: served.
        let want = Frame::BlobWant { hash, manifest: false, chunks: (0..7).collect() };
        e.handle(&mut hub, vec![want], T + 1).unwrap();
        assert_eq!(drain(&mut e).iter().filter(|f| matches!(f, Frame::BlobChunk { .. })).count(), 7);
        // One index four thousand times: 4 kB asking for 64 MB.
        let want = Frame::BlobWant { hash, manifest: false, chunks: vec![0; 4_000] };
        let why = violation(e.handle(&mut hub, vec![want], T + 2));
        assert!(matches!(why, Violation::TooManyChunks { .. }), "{why}");
        assert!(!drain(&mut e).iter().any(|f| matches!(f, Frame::BlobChunk { .. })));

        // Requests of distinct chunks, each within a window, but more of them in one step
        // than two windows.
        let (mut hub, mut e, hash) = hub_with_photo();
        let wants: Vec<Frame> =
            (0..40).map(|_| Frame::BlobWant { hash, manifest: false, chunks: (0..7).collect() }).collect();
        let why = violation(e.handle(&mut hub, wants, T + 1));
        assert!(matches!(why, Violation::TooManyChunks { .. }), "{why}");
    }

    #[test]
    fn a_document_asked_for_again_and_again_in_one_step_is_sent_once() {
        let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
        let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
        let id = new_session(&mut edge, 1, ServiceLine::Cardiology);
        let out = edge.changes_since(&hub_i, &id, &[]).unwrap().unwrap();
        hub.apply(&edge_i, &[Incoming { doc: id, bytes: out.bytes, sigs: out.sigs }], T).unwrap();
        let mut e = Engine::new(edge_i, EngineConfig::new(false));
        e.start(&mut hub, T).unwrap();
        e.handle(&mut hub, vec![hello("amb-07")], T).unwrap();
        drain(&mut e);
        e.handle(&mut hub, (0..256).map(|_| Frame::Need { doc: id }).collect(), T + 1).unwrap();
        assert_eq!(drain(&mut e).iter().filter(|f| matches!(f, Frame::Changes(_))).count(), 1);
    }

    #[test]
    fn answers_about_documents_never_sent_leave_no_state() {
        let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
        let mut hub = replica(&hub_i, 2);
        let mut e = Engine::new(edge_i, EngineConfig::new(false));
        e.start(&mut hub, T).unwrap();
        e.handle(&mut hub, vec![hello("amb-07")], T).unwrap();
        drain(&mut e);
        let tracked = e.docs_tracked();
        let doc = |n: u64| -> DocId {
            let mut id = [0xEE; 16];
            id[..8].copy_from_slice(&n.to_be_bytes());
            id
        };
        for round in 0..20u64 {
            let frames = (0..256u64)
                .flat_map(|k| {
                    let d = doc(round * 256 + k);
                    [
                        Frame::Refused { doc: d },
                        Frame::Ack { doc: d, heads: vec![Hash([1; 32])] },
                        Frame::Need { doc: d },
                    ]
                })
                .collect();
            e.handle(&mut hub, frames, T + 1 + round as i64).unwrap();
            drain(&mut e);
        }
        assert_eq!(e.docs_tracked(), tracked, "state kept for documents this side never sent");
    }

    /// What a peer says it holds of a document is kept for the next conversation: a version of
    /// a quarter of a million heads (8 MB, within one frame) is refused, not stored.
    #[test]
    fn a_version_with_more_heads_than_any_session_has_is_refused() {
        let (mut hub, mut e, _) = hub_with_photo();
        let doc = hub.items(&info("amb-07", Role::Edge, &[])).unwrap()[0].id;
        let heads = |n: usize| (0..n).map(|i| Hash(*blake3::hash(&i.to_le_bytes()).as_bytes())).collect::<Vec<_>>();
        e.handle(&mut hub, vec![Frame::Heads { doc, heads: heads(3) }], T + 1).unwrap();
        let why = violation(e.handle(&mut hub, vec![Frame::Ack { doc, heads: heads(262_000) }], T + 2));
        assert!(matches!(why, Violation::TooManyHeads { heads: 262_000 }), "{why}");
    }

    #[test]
    fn photo_frames_that_overtake_the_hello_are_bounded_by_a_window() {
        let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
        let mut hub = replica(&hub_i, 2);
        let mut e = Engine::new(edge_i, EngineConfig::new(false));
        e.start(&mut hub, T).unwrap();
        drain(&mut e);
        // A window of chunks is held for the Hello ...
        for k in 0..8u32 {
            let f = Frame::BlobChunk { hash: Hash([1; 32]), index: k, data: vec![0xAB; 16 * 1024] };
            e.handle(&mut hub, vec![f], T + 1).unwrap();
        }
        // ... but not megabytes of them.
        let mut last = Ok(());
        for k in 0..4u32 {
            let f = Frame::BlobChunk { hash: Hash([1; 32]), index: 100 + k, data: vec![0xAB; 2 << 20] };
            last = e.handle(&mut hub, vec![f], T + 2);
            if last.is_err() {
                break;
            }
        }
        let why = violation(last);
        assert!(matches!(why, Violation::EarlyBytes { .. }), "{why}");
    }

    #[test]
    fn voice_frames_far_ahead_of_playout_are_not_kept() {
        use sync_protocol::voice::{FRAME_SAMPLES, JitterBuffer};
        let mut jb = JitterBuffer::new(60);
        for s in 0..5 {
            jb.push(s, vec![1; FRAME_SAMPLES], f64::from(s) * 20.0);
            let _ = jb.pop();
        }
        for k in 0..100_000u32 {
            jb.push(1_000_000 + k, vec![0; FRAME_SAMPLES], 100.0 + f64::from(k) * 0.01);
        }
        assert!(jb.buffered() <= 3_000, "{} frames held", jb.buffered());
        // The call's own next frames still play.
        jb.push(5, vec![7; FRAME_SAMPLES], 100.0);
        jb.push(6, vec![7; FRAME_SAMPLES], 120.0);
        assert!(std::iter::from_fn(|| jb.pop()).take(3).any(|pcm| pcm[0] == 7));
    }
}

mod reconciliation_rounds {
    use super::*;
    use sync_protocol::engine::{EngineError, Violation};
    use sync_protocol::wire::{Range, RangeMode};

    /// Each round reads every document the peer may see: a batch of them, tiny on the wire, is
    /// refused rather than answered round by round.
    #[test]
    fn a_burst_of_reconciliation_rounds_is_refused() {
        let (edge_i, hub_i) = (info("amb-07", Role::Edge, &[]), info("hub-qhm", Role::Hub, &[]));
        let (mut edge, mut hub) = (replica(&edge_i, 1), replica(&hub_i, 2));
        for s in 0..20 {
            let id = new_session(&mut edge, s, ServiceLine::Cardiology);
            let out = edge.changes_since(&hub_i, &id, &[]).unwrap().unwrap();
            hub.apply(&edge_i, &[Incoming { doc: id, bytes: out.bytes, sigs: out.sigs }], T).unwrap();
        }
        let mut e = Engine::new(edge_i, EngineConfig::new(false));
        e.start(&mut hub, T).unwrap();
        let hello = Frame::Hello(Hello { min_version: 2, max_version: 2, node: "amb-07".into(), crl_number: 0 });
        e.handle(&mut hub, vec![hello], T).unwrap();
        let round = || {
            Frame::Ranges(vec![Range { upper: None, mode: RangeMode::Fingerprint { count: 0, fingerprint: [0; 32] } }])
        };
        // One round, as a peer sends it: answered.
        e.handle(&mut hub, vec![round()], T + 1).unwrap();
        assert!(std::iter::from_fn(|| e.poll_frame()).any(|(_, f)| matches!(f, Frame::Ranges(_))));
        match e.handle(&mut hub, (0..256).map(|_| round()).collect(), T + 2) {
            Err(EngineError::Protocol { detail: Violation::TooManyRounds { .. }, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
