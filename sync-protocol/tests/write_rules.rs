//! The write rules and authorship checks, attacked the way a stolen tablet with a valid fleet
//! certificate would: every forged change is refused whole and the receiver keeps what it held.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc, ScalarValue, Value, legacy};
use proptest::prelude::*;
use sync_protocol::authorship::{AuthorKey, Member, SharedRoster, sign_new};
use sync_protocol::engine::{Applied, Engine, EngineConfig, Incoming, Replica};
use sync_protocol::mem::MemReplica;
use sync_protocol::scope::PeerInfo;
use sync_protocol::session::{NewMedia, NewMessage, NewSession, Patient, Requester, Service, SessionDoc};
use sync_protocol::vocab::{CareSetting, Channel, PhotoView, Priority, ReceiptLevel, Role, ServiceLine, Side, Status};
use sync_protocol::wire::{DocId, Frame, Hash, Hello, MAX_VERSION, MIN_VERSION, Range, RangeMode};
use sync_protocol::{SessionId, TimeMs};

const T: TimeMs = 1_790_000_000_000;

fn info(name: &str, role: Role, icb: &str, lines: &[ServiceLine]) -> PeerInfo {
    PeerInfo { name: name.into(), role, org: None, icb: Some(icb.into()), lines: lines.to_vec() }
}

/// A small fleet: the victim's ambulance, a stolen tablet of the same ICB, a dermatology desk,
/// the ICB's hub and another ICB's hub.
struct Fleet {
    roster: SharedRoster,
    keys: Vec<(PeerInfo, AuthorKey)>,
}

impl Fleet {
    fn new() -> Fleet {
        let members = [
            info("amb-07", Role::Edge, "QHM", &[]),
            info("amb-66", Role::Edge, "QHM", &[]),
            info("desk-derm-1", Role::Desk, "QHM", &[ServiceLine::Dermatology]),
            info("hub-qhm", Role::Hub, "QHM", &[]),
            info("hub-qox", Role::Hub, "QOX", &[]),
        ];
        let roster = SharedRoster::default();
        let mut keys = Vec::new();
        for (i, p) in members.into_iter().enumerate() {
            let key = AuthorKey::from_seed(&[i as u8 + 1; 32], [i as u8; 8]);
            roster.write().unwrap().insert(Member { info: p.clone(), key: key.public() });
            keys.push((p, key));
        }
        Fleet { roster, keys }
    }

    fn who(&self, name: &str) -> (PeerInfo, AuthorKey) {
        self.keys.iter().find(|(p, _)| p.name == name).cloned().unwrap()
    }

    fn replica(&self, name: &str) -> MemReplica {
        let (p, k) = self.who(name);
        MemReplica::new(p, k, self.roster.clone())
    }
}

/// The victim's dermatology session with a message and a photo, held by the hub.
fn victim_session(fleet: &Fleet, hub: &mut MemReplica) -> (DocId, SessionDoc) {
    victim_session_at(fleet, hub, T)
}

/// [`victim_session`], created at `created` (its later writes as at `T`).
fn victim_session_at(fleet: &Fleet, hub: &mut MemReplica, created: TimeMs) -> (DocId, SessionDoc) {
    let mut amb = fleet.replica("amb-07");
    let new = NewSession {
        id: SessionId::from_parts(created, 77),
        origin: "amb-07".into(),
        icb: "QHM".into(),
        care_setting: CareSetting::AmbulanceOnScene,
        requester: Requester::default(),
        patient: Patient { nhs_number: Some("9434765919".parse().unwrap()), ..Patient::default() },
        service: Service { line: ServiceLine::Dermatology, channel: Channel::Photo, priority: Priority::Urgent },
        summary: "spreading rash".into(),
        draft: false,
    };
    let doc = SessionDoc::create(&new, amb.actor().clone(), created).unwrap();
    let id = amb.put(doc).unwrap();
    amb.edit(&id, |d| {
        d.add_consent(
            &sync_protocol::session::NewConsent {
                id: "c1".into(),
                kind: sync_protocol::vocab::ConsentKind::Verbal,
                scope: sync_protocol::vocab::ConsentScope::RecordOnly,
                by: "amb-07".into(),
            },
            T + 1,
        )?;
        d.add_media(
            &NewMedia {
                hash: "ab".repeat(32),
                mime: "image/jpeg".into(),
                size: 3_000_000,
                dimensions: None,
                view: PhotoView::CloseUp,
                body_site: "left forearm".into(),
                consent_id: "c1".into(),
                added_by: "amb-07".into(),
                // The paramedic who took it is named in the record, and the hub takes it.
                clinician: Some(sync_protocol::session::Clinician {
                    name: "Sam Patel".into(),
                    role: "paramedic".into(),
                    registration: Some("HCPC-PA123456".into()),
                }),
            },
            T + 1,
        )?;
        d.add_message(
            &NewMessage {
                clinician: None,
                id: "m1".into(),
                author: "amb-07".into(),
                side: Side::Requester,
                text: "rash since this morning".into(),
                reply_to: None,
            },
            T + 2,
        )
    })
    .unwrap();
    let hub_info = hub.me().clone();
    let out = amb.changes_since(&hub_info, &id, &[]).unwrap().unwrap();
    let applied =
        hub.apply(&amb.me().clone(), &[Incoming { doc: id, bytes: out.bytes, sigs: out.sigs }], T + 3).unwrap();
    assert!(matches!(applied[0], Applied::Stored { .. }), "{applied:?}");
    let copy = amb.copy_doc(&id).unwrap();
    (id, copy)
}

/// `who` edits its copy of the session with `f` and signs the result with `signer`'s key.
fn forged(
    doc: &mut SessionDoc,
    writer: &AuthorKey,
    signer: &AuthorKey,
    f: impl FnOnce(&mut automerge::AutoCommit),
) -> (Vec<u8>, Vec<[u8; 64]>) {
    let mut mine = doc.fork_as(writer.actor().clone());
    let before = mine.heads();
    f(mine.automerge());
    mine.automerge().commit();
    let am = mine.automerge();
    let bytes: Vec<u8> = am.get_changes(&before).iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
    let sigs: Vec<[u8; 64]> = am.get_changes(&before).iter().map(|c| signer.sign(&c.hash())).collect();
    (bytes, sigs)
}

/// A change built by hand from raw operations on top of `doc`, as a tampered client could send
/// one (Automerge's own API never writes these), by a fresh actor of `writer`'s key, signed.
/// Operation `i` has the id `CRAFTED_START + i` of that actor.
fn crafted(doc: &mut SessionDoc, writer: &AuthorKey, ops: Vec<legacy::Op>) -> (Vec<u8>, Vec<[u8; 64]>) {
    let author = writer.with_instance([0xee; 8]);
    let change = automerge::ExpandedChange {
        operations: ops,
        actor_id: author.actor().clone(),
        hash: None,
        seq: 1,
        start_op: std::num::NonZeroU64::new(CRAFTED_START).unwrap(),
        time: 0,
        message: None,
        deps: doc.heads(),
        extra_bytes: Vec::new(),
        author: None,
    };
    let change = automerge::Change::from(change);
    (change.raw_bytes().to_vec(), vec![writer.sign(&change.hash())])
}

const CRAFTED_START: u64 = 10_000;

/// The id of operation `i` of a [`crafted`] change by `writer`.
fn crafted_id(writer: &AuthorKey, i: u64) -> legacy::OpId {
    legacy::OpId(CRAFTED_START + i, writer.with_instance([0xee; 8]).actor().clone())
}

fn legacy_id(id: &automerge::ObjId) -> legacy::OpId {
    match id {
        automerge::ObjId::Id(counter, actor, _) => legacy::OpId(*counter, actor.clone()),
        automerge::ObjId::Root => panic!("the root has no op id"),
    }
}

/// A raw operation on object `on`.
fn raw_op(on: legacy::OpId, key: legacy::Key, action: legacy::OpType, pred: Vec<legacy::OpId>) -> legacy::Op {
    let insert = matches!(key, legacy::Key::Seq(_));
    legacy::Op { action, obj: legacy::ObjectId::Id(on), key, pred: pred.into_iter().collect(), insert }
}

/// A new message's map, inserted into `list` after `after`, with the fields a message needs,
/// by `who`: operations `at` to `at + 5` of a [`crafted`] change (its map is operation `at`).
fn raw_message(
    list: &automerge::ObjId,
    after: legacy::ElementId,
    writer: &AuthorKey,
    who: &str,
    at: u64,
) -> Vec<legacy::Op> {
    let text = |t: &str| legacy::OpType::Put(ScalarValue::Str(t.into()));
    let m = crafted_id(writer, at);
    vec![
        raw_op(legacy_id(list), legacy::Key::Seq(after), legacy::OpType::Make(ObjType::Map), vec![]),
        raw_op(m.clone(), legacy::Key::Map("id".into()), text("m-crafted"), vec![]),
        raw_op(m.clone(), legacy::Key::Map("author".into()), text(who), vec![]),
        raw_op(m.clone(), legacy::Key::Map("side".into()), text("requester"), vec![]),
        raw_op(m.clone(), legacy::Key::Map("text".into()), text("hello"), vec![]),
        raw_op(m, legacy::Key::Map("receipts".into()), legacy::OpType::Make(ObjType::Map), vec![]),
    ]
}

fn obj(doc: &automerge::AutoCommit, parent: &automerge::ObjId, key: &str) -> automerge::ObjId {
    match doc.get(parent, key).unwrap() {
        Some((Value::Object(_), id)) => id,
        other => panic!("{key}: {other:?}"),
    }
}

/// Sends forged bytes to the hub as `sender`; asserts the hub refused them and kept its copy.
fn refused_at_hub(hub: &mut MemReplica, sender: &PeerInfo, id: DocId, bytes: Vec<u8>, sigs: Vec<[u8; 64]>) -> String {
    let before = hub.heads(&id);
    let out = hub.apply(sender, &[Incoming { doc: id, bytes, sigs }], T + 10).unwrap();
    assert_eq!(hub.heads(&id), before, "the hub's copy changed");
    match &out[0] {
        Applied::Refused { reason } => reason.clone(),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_change_that_shares_a_session_with_its_own_sender_is_refused() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, mut doc) = victim_session(&fleet, &mut hub);
    let (thief, key) = fleet.who("amb-66");
    let (bytes, sigs) = forged(&mut doc, &key, &key, |d| {
        let shares = obj(d, &ROOT, "shares");
        d.put(&shares, "amb-66", T).unwrap();
    });
    let reason = refused_at_hub(&mut hub, &thief, id, bytes, sigs);
    assert!(reason.contains("may not hold") || reason.contains("shared only"), "{reason}");
    assert!(!hub.view(&id).unwrap().shared_with.contains(&"amb-66".to_string()));
}

#[test]
fn a_message_forged_in_a_consultants_name_is_refused() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, mut doc) = victim_session(&fleet, &mut hub);
    // The origin's own tablet, stolen: it may write the session, but not as the consultant.
    let (amb, key) = fleet.who("amb-07");
    let mut reply = doc.fork_as(key.actor().clone());
    let before = reply.heads();
    reply
        .add_message(
            &NewMessage {
                clinician: None,
                id: "m2".into(),
                author: "desk-derm-1".into(),
                side: Side::Responder,
                text: "benign, discharge".into(),
                reply_to: Some("m1".into()),
            },
            T + 5,
        )
        .unwrap();
    let sigs = sign_new(&key, reply.automerge(), &before).into_iter().map(|(_, s)| s).collect();
    let bytes = reply.save_after(&before);
    let reason = refused_at_hub(&mut hub, &amb, id, bytes, sigs);
    assert!(reason.contains("author"), "{reason}");
    assert_eq!(hub.view(&id).unwrap().status, sync_protocol::vocab::Status::Queued);
}

#[test]
fn a_tablet_cannot_sign_its_own_message_or_outcome_as_a_consultant() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, mut doc) = victim_session(&fleet, &mut hub);
    let (amb, key) = fleet.who("amb-07");
    let consultant = sync_protocol::session::Clinician {
        name: "Dr Ada Okafor".into(),
        role: "consultant".into(),
        registration: Some("GMC-7012345".into()),
    };
    // Its own message, in its own name, but claiming a consultant wrote it.
    let mut edit = doc.fork_as(key.actor().clone());
    let before = edit.heads();
    let msg = NewMessage {
        clinician: Some(consultant.clone()),
        id: "m2".into(),
        author: "amb-07".into(),
        side: Side::Requester,
        text: "consultant says: discharge".into(),
        reply_to: None,
    };
    edit.add_message(&msg, T + 5).unwrap();
    let sigs = sign_new(&key, edit.automerge(), &before).into_iter().map(|(_, s)| s).collect();
    let reason = refused_at_hub(&mut hub, &amb, id, edit.save_after(&before), sigs);
    assert!(reason.contains("writer is no"), "{reason}");
    // Its own side's outcome, recorded "by a consultant".
    let mut edit = doc.fork_as(key.actor().clone());
    let before = edit.heads();
    edit.set_outcome_as(Side::Requester, sync_protocol::vocab::Outcome::AdviceOnly, "amb-07", Some(&consultant), T + 6)
        .unwrap();
    let sigs = sign_new(&key, edit.automerge(), &before).into_iter().map(|(_, s)| s).collect();
    let reason = refused_at_hub(&mut hub, &amb, id, edit.save_after(&before), sigs);
    assert!(reason.contains("writer is no"), "{reason}");
    // A paramedic's name on the same outcome is the tablet's to state.
    let paramedic = sync_protocol::session::Clinician { role: "paramedic".into(), ..consultant };
    let mut edit = doc.fork_as(key.actor().clone());
    let before = edit.heads();
    edit.set_outcome_as(Side::Requester, sync_protocol::vocab::Outcome::AdviceOnly, "amb-07", Some(&paramedic), T + 6)
        .unwrap();
    let sigs = sign_new(&key, edit.automerge(), &before).into_iter().map(|(_, s)| s).collect();
    let out = hub.apply(&amb, &[Incoming { doc: id, bytes: edit.save_after(&before), sigs }], T + 10).unwrap();
    assert!(matches!(out[0], Applied::Stored { .. }), "{out:?}");
}

#[test]
fn a_change_under_another_members_actor_without_its_signature_is_refused() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, mut doc) = victim_session(&fleet, &mut hub);
    let (thief, thief_key) = fleet.who("amb-66");
    let (_, desk_key) = fleet.who("desk-derm-1");
    // Written under the desk's actor id, signed with the thief's own key.
    let (bytes, sigs) = forged(&mut doc, &desk_key, &thief_key, |d| {
        let msgs = obj(d, &ROOT, "messages");
        let m = d.insert_object(&msgs, 1, ObjType::Map).unwrap();
        d.put(&m, "author", "desk-derm-1").unwrap();
    });
    let reason = refused_at_hub(&mut hub, &thief, id, bytes.clone(), sigs);
    assert!(reason.contains("signature"), "{reason}");
    // With no signatures at all.
    let reason = refused_at_hub(&mut hub, &thief, id, bytes, Vec::new());
    assert!(reason.contains("signatures"), "{reason}");
    // By a key the fleet CA never certified.
    let stranger = AuthorKey::from_seed(&[99; 32], [0; 8]);
    let (bytes, sigs) = forged(&mut doc, &stranger, &stranger, |d| {
        let status = obj(d, &ROOT, "status");
        d.put(&status, "0/closed", T).unwrap();
    });
    let reason = refused_at_hub(&mut hub, &thief, id, bytes, sigs);
    assert!(reason.contains("unknown author"), "{reason}");
}

#[test]
fn a_forged_hub_receipt_is_refused_and_the_edge_keeps_its_photo() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, mut doc) = victim_session(&fleet, &mut hub);
    let (desk, desk_key) = fleet.who("desk-derm-1");
    let hash = "ab".repeat(32);
    let (bytes, sigs) = forged(&mut doc, &desk_key, &desk_key, |d| {
        let media = obj(d, &ROOT, "media");
        let photo = obj(d, &media, &hash);
        let receipts = obj(d, &photo, "receipts");
        d.put(&receipts, "hub/hub-qhm", T).unwrap();
    });
    // The victim's tablet receives it (relayed as if by its hub).
    let mut amb = fleet.replica("amb-07");
    let amb_info = amb.me().clone();
    let hub_info = hub.me().clone();
    let out = hub.changes_since(&amb_info, &id, &[]).unwrap().unwrap();
    amb.apply(&hub_info, &[Incoming { doc: id, bytes: out.bytes, sigs: out.sigs }], T).unwrap();
    let photo: Vec<u8> = vec![7; 40_000];
    let blob = amb.put_blob(&photo);
    let before = amb.heads(&id);
    let got = amb.apply(&hub_info, &[Incoming { doc: id, bytes, sigs }], T + 20).unwrap();
    assert!(matches!(&got[0], Applied::Refused { reason } if reason.contains("receipt")), "{got:?}");
    assert_eq!(amb.heads(&id), before);
    assert!(amb.holds_blob(&blob), "the photo was deleted on a forged receipt");
    let _ = desk;
}

/// One raw edit an attacker makes to its copy.
type Forgery = dyn FnOnce(&mut automerge::AutoCommit);

#[test]
fn an_edge_cannot_rewrite_identity_claim_a_connected_call_or_write_the_consultants_outcome() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, mut doc) = victim_session(&fleet, &mut hub);
    let (amb, key) = fleet.who("amb-07");
    let attempts: Vec<(&str, Box<Forgery>)> = vec![
        (
            "identity",
            Box::new(|d: &mut automerge::AutoCommit| {
                let identity = obj(d, &ROOT, "identity");
                d.put(&identity, "icb", "QOX").unwrap();
            }),
        ),
        (
            "status",
            Box::new(|d: &mut automerge::AutoCommit| {
                let status = obj(d, &ROOT, "status");
                d.put(&status, "0/connected", T).unwrap();
            }),
        ),
        (
            "outcome",
            Box::new(|d: &mut automerge::AutoCommit| {
                let outcome = obj(d, &ROOT, "outcome");
                let responder = obj(d, &outcome, "responder");
                d.put(&responder, "value", "referral_avoided").unwrap();
                d.put(&responder, "by", "amb-07").unwrap();
            }),
        ),
        (
            "top level",
            Box::new(|d: &mut automerge::AutoCommit| {
                d.put(ROOT, "extra", 1).unwrap();
            }),
        ),
        (
            "photo record replaced",
            Box::new(|d: &mut automerge::AutoCommit| {
                let media = obj(d, &ROOT, "media");
                let hash = "ab".repeat(32);
                let m = d.put_object(&media, hash.as_str(), ObjType::Map).unwrap();
                d.put(&m, "added_by", "amb-07").unwrap();
            }),
        ),
        (
            "consent withdrawn in another's name",
            Box::new(|d: &mut automerge::AutoCommit| {
                let consents = obj(d, &ROOT, "consents");
                let c = obj(d, &consents, "c1");
                d.put(&c, "withdrawn_at", T).unwrap();
                d.put(&c, "withdrawn_by", "desk-derm-1").unwrap();
            }),
        ),
        (
            "counter",
            Box::new(|d: &mut automerge::AutoCommit| {
                let request = obj(d, &ROOT, "request");
                d.put(&request, "n", ScalarValue::counter(1)).unwrap();
                d.increment(&request, "n", 5).unwrap();
            }),
        ),
    ];
    for (what, f) in attempts {
        let (bytes, sigs) = forged(&mut doc, &key, &key, f);
        let reason = refused_at_hub(&mut hub, &amb, id, bytes, sigs);
        assert!(reason.contains("write rule"), "{what}: {reason}");
    }
}

#[test]
fn an_op_bomb_is_refused_before_it_is_expanded() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, mut doc) = victim_session(&fleet, &mut hub);
    let (amb, key) = fleet.who("amb-07");
    let (bytes, sigs) = forged(&mut doc, &key, &key, |d| {
        let msgs = obj(d, &ROOT, "messages");
        d.splice(&msgs, 1, 0, std::iter::repeat_n(ScalarValue::Null, 3_000_000)).unwrap();
    });
    assert!(bytes.len() < 2_000, "a small change: {} bytes", bytes.len());
    let reason = refused_at_hub(&mut hub, &amb, id, bytes, sigs);
    assert!(reason.contains("operations"), "{reason}");
}

#[test]
fn a_consultants_real_reply_is_accepted_by_the_hub_and_relayed_to_the_ambulance() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, _) = victim_session(&fleet, &mut hub);
    let mut desk = fleet.replica("desk-derm-1");
    let (desk_info, hub_info) = (desk.me().clone(), hub.me().clone());
    let out = hub.changes_since(&desk_info, &id, &[]).unwrap().unwrap();
    desk.apply(&hub_info, &[Incoming { doc: id, bytes: out.bytes, sigs: out.sigs }], T + 20).unwrap();
    let before = hub.heads(&id).unwrap();
    desk.edit(&id, |d| {
        d.add_message(
            &NewMessage {
                clinician: None,
                id: "m2".into(),
                author: "desk-derm-1".into(),
                side: Side::Responder,
                text: "benign; safety-net advice".into(),
                reply_to: Some("m1".into()),
            },
            T + 30,
        )
    })
    .unwrap();
    let out = desk.changes_since(&hub_info, &id, &before).unwrap().unwrap();
    let got = hub.apply(&desk_info, &[Incoming { doc: id, bytes: out.bytes, sigs: out.sigs }], T + 31).unwrap();
    assert!(matches!(got[0], Applied::Stored { .. }), "{got:?}");
    let view = hub.view(&id).unwrap();
    assert_eq!(view.messages.len(), 2);
    // The hub writes no receipt on messages; it holds the reply, and shows it at a hub.
    assert!(view.messages[1].receipts.iter().all(|r| r.level != ReceiptLevel::Hub), "{:?}", view.messages[1]);
    assert_eq!(hub.view_seen(&id).unwrap().messages[1].receipt, ReceiptLevel::Hub);
    // Relayed to the ambulance by the hub, the desk's reply still checks out.
    let mut amb = fleet.replica("amb-07");
    let amb_info = amb.me().clone();
    let out = hub.changes_since(&amb_info, &id, &[]).unwrap().unwrap();
    let got = amb.apply(&hub_info, &[Incoming { doc: id, bytes: out.bytes, sigs: out.sigs }], T + 40).unwrap();
    assert!(matches!(got[0], Applied::Stored { .. }), "{got:?}");
    assert_eq!(amb.view(&id).unwrap().messages[1].author, "desk-derm-1");
}

/// A peer speaks to the hub's engine directly, asking by id, by range and by `Need` for a
/// session outside its scope; returns every frame the hub sent.
fn probe(hub: &mut MemReplica, attacker: &PeerInfo, frames: Vec<Frame>) -> Vec<Frame> {
    let mut e = Engine::new(attacker.clone(), EngineConfig::new(false));
    e.start(hub, T).unwrap();
    let hello = Frame::Hello(Hello {
        min_version: MIN_VERSION,
        max_version: MAX_VERSION,
        node: attacker.name.clone(),
        crl_number: 0,
    });
    let mut all = vec![hello];
    all.extend(frames);
    let _ = e.handle(hub, all, T);
    std::iter::from_fn(|| e.poll_frame().map(|x| x.1)).collect()
}

#[test]
fn a_desk_of_another_line_and_an_edge_of_another_icb_are_sent_nothing_of_a_session() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, _) = victim_session(&fleet, &mut hub);
    let heads = hub.heads(&id).unwrap();
    let outsiders = [
        info("amb-66", Role::Edge, "QHM", &[]),
        info("desk-cardio-1", Role::Desk, "QHM", &[ServiceLine::Cardiology]),
        info("amb-99", Role::Edge, "QOX", &[]),
    ];
    for who in outsiders {
        let asks = vec![
            Frame::Need { doc: id },
            Frame::Heads { doc: id, heads: Vec::new() },
            Frame::Heads { doc: id, heads: vec![Hash([1; 32])] },
            Frame::Ack { doc: id, heads: Vec::new() },
            Frame::Ranges(vec![Range {
                upper: None,
                mode: RangeMode::Items { reply: false, items: vec![(id, [0; 16])] },
            }]),
            Frame::BlobWant { hash: Hash([0xab; 32]), manifest: true, chunks: vec![0] },
        ];
        for f in probe(&mut hub, &who, asks) {
            let bytes = f.to_bytes();
            assert!(
                !matches!(f, Frame::Changes(_) | Frame::BlobManifest(_) | Frame::BlobChunk { .. }),
                "{who:?} got {f}"
            );
            for h in &heads {
                assert!(
                    !bytes.windows(32).any(|w| w == h.as_bytes()),
                    "{} was told the session's heads in {f}",
                    who.name
                );
            }
            if let Frame::Ranges(r) = &f {
                // The id the prober named may come back only as "not held" (a zero digest), the
                // answer for a session that does not exist.
                let told = r.iter().any(|r| {
                    matches!(&r.mode, RangeMode::Items { items, .. } if items.iter().any(|i| i.0 == id && i.1 != [0; 16]))
                });
                assert!(!told, "{} was sent the session's digest in a range", who.name);
            }
        }
    }
}

/// What a random writer may try: one raw edit of the session.
#[derive(Debug, Clone)]
enum Edit {
    Share(String),
    Status(String),
    Message { author: String, side: String },
    Receipt { level: String, node: String },
    Identity(String),
    Outcome { side: String, by: String },
    Routing(String),
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    let name = prop::sample::select(vec!["amb-07", "amb-66", "desk-derm-1", "hub-qhm", "hub-qox"]);
    prop_oneof![
        name.clone().prop_map(|n| Edit::Share(n.to_string())),
        prop::sample::select(vec![
            "0/queued",
            "0/routing",
            "0/connected",
            "0/responded",
            "0/closed",
            "1/awaiting_reply",
            "5/closed"
        ])
        .prop_map(|s| Edit::Status(s.to_string())),
        (name.clone(), prop::sample::select(vec!["requester", "responder"]))
            .prop_map(|(a, s)| Edit::Message { author: a.to_string(), side: s.to_string() }),
        (prop::sample::select(vec!["hub", "desk", "read"]), name.clone())
            .prop_map(|(l, n)| Edit::Receipt { level: l.to_string(), node: n.to_string() }),
        prop::sample::select(vec!["amb-66", "QOX"]).prop_map(|v| Edit::Identity(v.to_string())),
        (prop::sample::select(vec!["requester", "responder"]), name)
            .prop_map(|(s, b)| Edit::Outcome { side: s.to_string(), by: b.to_string() }),
        prop::sample::select(vec!["escalate", "ring", "answer", "connected", "callback"])
            .prop_map(|k| Edit::Routing(k.to_string())),
    ]
}

fn apply_edit(d: &mut automerge::AutoCommit, e: &Edit) {
    match e {
        Edit::Share(n) => {
            let shares = obj(d, &ROOT, "shares");
            d.put(&shares, n.as_str(), T).unwrap();
        }
        Edit::Status(k) => {
            let status = obj(d, &ROOT, "status");
            d.put(&status, k.as_str(), T).unwrap();
        }
        Edit::Message { author, side } => {
            let msgs = obj(d, &ROOT, "messages");
            let at = d.length(&msgs);
            let m = d.insert_object(&msgs, at, ObjType::Map).unwrap();
            for (k, v) in [("id", "mx"), ("author", author.as_str()), ("side", side.as_str()), ("text", "x")] {
                d.put(&m, k, v).unwrap();
            }
            d.put(&m, "at_ms", T).unwrap();
            d.put(&m, "reply_to", ()).unwrap();
            d.put_object(&m, "receipts", ObjType::Map).unwrap();
        }
        Edit::Receipt { level, node } => {
            let msgs = obj(d, &ROOT, "messages");
            let Some((Value::Object(_), m)) = d.get(&msgs, 0).unwrap() else { panic!("no message") };
            let receipts = obj(d, &m, "receipts");
            d.put(&receipts, format!("{level}/{node}"), T).unwrap();
        }
        Edit::Identity(v) => {
            let identity = obj(d, &ROOT, "identity");
            d.put(&identity, if v == "QOX" { "icb" } else { "origin" }, v.as_str()).unwrap();
        }
        Edit::Outcome { side, by } => {
            let outcome = obj(d, &ROOT, "outcome");
            let s = obj(d, &outcome, side);
            d.put(&s, "value", "advice_only").unwrap();
            d.put(&s, "by", by.as_str()).unwrap();
            d.put(&s, "at_ms", T).unwrap();
        }
        Edit::Routing(kind) => {
            let routing = obj(d, &ROOT, "routing");
            let at = d.length(&routing);
            let e = d.insert_object(&routing, at, ObjType::Map).unwrap();
            d.put(&e, "kind", kind.as_str()).unwrap();
            d.put(&e, "call", "c1").unwrap();
            d.put(&e, "at_ms", T).unwrap();
        }
    }
}

fn role_of(fleet: &Fleet, name: &str) -> Option<Role> {
    fleet.keys.iter().find(|(p, _)| p.name == name).map(|(p, _)| p.role)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    /// Random edits by random fleet members: each change is either refused, leaving the hub's
    /// copy as it was, or accepted, and then the session still satisfies every rule.
    #[test]
    fn random_changes_by_random_authors_are_refused_whole_or_keep_every_rule(
        writer in 0usize..5,
        edits in prop::collection::vec(edit_strategy(), 1..4),
    ) {
        let fleet = Fleet::new();
        let mut hub = fleet.replica("hub-qhm");
        let (id, mut doc) = victim_session(&fleet, &mut hub);
        let (who, key) = fleet.keys[writer].clone();
        let base = hub.view(&id).unwrap();
        let (bytes, sigs) = forged(&mut doc, &key, &key, |d| {
            for e in &edits {
                apply_edit(d, e);
            }
        });
        let before = hub.heads(&id);
        let out = hub.apply(&who, &[Incoming { doc: id, bytes, sigs }], T + 10).unwrap();
        match &out[0] {
            Applied::Refused { .. } | Applied::MissingDeps => prop_assert_eq!(hub.heads(&id), before),
            Applied::Stored { .. } => {
                let v = hub.view(&id).unwrap();
                prop_assert_eq!(&v.identity, &base.identity);
                for m in &v.messages {
                    let role = role_of(&fleet, &m.author);
                    prop_assert!(role.is_some(), "a message by a stranger {}", m.author);
                    prop_assert_eq!(m.side, sync_protocol::session::side_of(role.unwrap()));
                    for r in &m.receipts {
                        match r.level {
                            ReceiptLevel::Hub => prop_assert_eq!(role_of(&fleet, &r.node), Some(Role::Hub)),
                            ReceiptLevel::Desk => prop_assert_eq!(role_of(&fleet, &r.node), Some(Role::Desk)),
                            _ => {}
                        }
                    }
                }
                if who.role == Role::Edge && who.name != "amb-07" {
                    prop_assert!(false, "a stranger edge changed the session: {:?}", edits);
                }
                if who.role != Role::Hub && who.name != "amb-07" {
                    prop_assert_eq!(&v.shared_with, &base.shared_with);
                }
                if who.role != Role::Hub {
                    let connected = v.status_history.iter().any(|s| s.status == sync_protocol::vocab::Status::Connected);
                    prop_assert!(!connected, "a {} set the status connected", who.role);
                }
                if who.role == Role::Desk {
                    prop_assert_eq!(&v.outcome.requester, &base.outcome.requester);
                }
            }
        }
    }
}

/// Reported by a review: a change whose operation names as its predecessor an operation in
/// another object deleted that operation there (Automerge applies a predecessor wherever it
/// is). The origin's own stolen tablet, writing a field it may write, made the first message
/// vanish and left a document whose saved form no longer loads.
#[test]
fn an_operation_that_overwrites_a_value_in_another_object_is_refused() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, mut doc) = victim_session(&fleet, &mut hub);
    let (amb, key) = fleet.who("amb-07");
    let am = doc.automerge();
    let list = obj(am, &ROOT, "messages");
    let first = match am.get(&list, 0).unwrap() {
        Some((_, m1)) => m1,
        None => panic!("the victim's message"),
    };
    let requester = obj(am, &ROOT, "requester");
    let mut ops = vec![raw_op(
        legacy_id(&requester),
        legacy::Key::Map("callback".into()),
        legacy::OpType::Put(ScalarValue::Str("01632 960000".into())),
        vec![legacy_id(&first)],
    )];
    ops.extend(raw_message(&list, legacy::ElementId::Head, &key, "amb-07", 1));
    let (bytes, sigs) = crafted(&mut doc, &key, ops);
    let why = refused_at_hub(&mut hub, &amb, id, bytes, sigs);
    assert!(why.contains("overwrites"), "{why}");
    assert_eq!(hub.view(&id).unwrap().messages.len(), 1, "the first message is still there");
}

/// Reported by a review: an entry inserted after an element the list does not hold passed the
/// rules and made Automerge panic as it applied the change (no panic on input from a peer).
#[test]
fn an_entry_inserted_after_an_element_the_list_does_not_hold_is_refused_without_a_panic() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, mut doc) = victim_session(&fleet, &mut hub);
    let (amb, key) = fleet.who("amb-07");
    let list = obj(doc.automerge(), &ROOT, "messages");
    let ghost = legacy::ElementId::Id(legacy::OpId(9_999, key.actor().clone()));
    let (bytes, sigs) = crafted(&mut doc, &key, raw_message(&list, ghost, &key, "amb-07", 0));
    let why = refused_at_hub(&mut hub, &amb, id, bytes, sigs);
    assert!(why.contains("inserted after"), "{why}");
    // The same entry after the list's head is a plain new message, and is kept.
    let (bytes, sigs) = crafted(&mut doc, &key, raw_message(&list, legacy::ElementId::Head, &key, "amb-07", 0));
    let out = hub.apply(&amb, &[Incoming { doc: id, bytes, sigs }], T + 11).unwrap();
    assert!(matches!(out[0], Applied::Stored { .. }), "{out:?}");
    assert_eq!(hub.view(&id).unwrap().messages.len(), 2);
}

/// A field written over a value that a concurrent write has already replaced here names a
/// predecessor the receiver no longer shows: it is found where its writer saw it (at the
/// change's dependencies), and the write is kept.
#[test]
fn a_write_over_a_value_a_concurrent_write_replaced_here_is_kept() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, mut doc) = victim_session(&fleet, &mut hub);
    let (amb, key) = fleet.who("amb-07");
    let callback = |n: &str| Requester { callback: Some(n.into()), ..Requester::default() };
    let send = |hub: &mut MemReplica, doc: &mut SessionDoc, at: TimeMs| {
        let held: Vec<automerge::ChangeHash> =
            hub.heads(&id).unwrap().into_iter().map(automerge::ChangeHash::from).collect();
        let known: Vec<automerge::ChangeHash> =
            held.into_iter().filter(|h| doc.automerge().get_change_by_hash(h).is_some()).collect();
        let changes = doc.automerge().get_changes(&known);
        let bytes: Vec<u8> = changes.iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
        let sigs: Vec<[u8; 64]> = changes.iter().map(|c| key.sign(&c.hash())).collect();
        hub.apply(&amb, &[Incoming { doc: id, bytes, sigs }], at).unwrap()
    };
    doc.set_requester(&callback("01632 960001"), T + 5).unwrap();
    let out = send(&mut hub, &mut doc, T + 5);
    assert!(matches!(out[0], Applied::Stored { .. }), "{out:?}");
    // The hub writes the field; the crew, not having seen that, writes it too.
    hub.edit(&id, |d| d.set_requester(&callback("01632 960002"), T + 6)).unwrap();
    doc.set_requester(&callback("01632 960003"), T + 7).unwrap();
    let out = send(&mut hub, &mut doc, T + 7);
    assert!(matches!(out[0], Applied::Stored { .. }), "{out:?}");
}

#[test]
fn a_creation_that_writes_its_identity_twice_is_refused() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (thief, key) = fleet.who("amb-66");
    let mut d = automerge::AutoCommit::new().with_actor(key.actor().clone());
    let id = SessionId::from_parts(T, 99);
    d.put(ROOT, "schema", 1).unwrap();
    for (origin, icb) in [("amb-07", "QOX"), ("amb-66", "QHM")] {
        let identity = d.put_object(ROOT, "identity", ObjType::Map).unwrap();
        d.put(&identity, "id", id.to_string()).unwrap();
        d.put(&identity, "origin", origin).unwrap();
        d.put(&identity, "icb", icb).unwrap();
    }
    let service = d.put_object(ROOT, "service", ObjType::Map).unwrap();
    d.put(&service, "line", "dermatology").unwrap();
    d.commit();
    let changes = d.get_changes(&[]);
    let bytes = changes.iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
    let sigs = changes.iter().map(|c| key.sign(&c.hash())).collect();
    let out = hub.apply(&thief, &[Incoming { doc: id.to_bytes(), bytes, sigs }], T).unwrap();
    assert!(matches!(&out[0], Applied::Refused { reason } if reason.contains("twice")), "{out:?}");
    assert!(hub.view(&id.to_bytes()).is_none());
}

/// A change made by hand that makes a second record at the key of a consent or a photo, with
/// no predecessor, as a tablet the session is shared with could send: with a higher operation
/// id it would be the record every reader sees (the withdrawal of a consent hidden, another
/// node's photo record replaced). Refused, and the hub keeps what it held.
#[test]
fn a_second_record_at_a_consents_or_a_photos_key_is_refused() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, _) = victim_session(&fleet, &mut hub);
    hub.edit(&id, |d| {
        d.withdraw_consent("c1", "hub-qhm", T + 4)?;
        d.share_with("amb-66", T + 4)
    })
    .unwrap();
    let (thief, key) = fleet.who("amb-66");
    let text = |t: &str| legacy::OpType::Put(ScalarValue::Str(t.into()));
    let field =
        |on: &legacy::OpId, k: &str, v: legacy::OpType| raw_op(on.clone(), legacy::Key::Map(k.into()), v, vec![]);
    let make = legacy::OpType::Make(ObjType::Map);

    let mut doc = hub.copy_doc(&id).unwrap();
    let consents = legacy_id(&obj(doc.automerge(), &ROOT, "consents"));
    let c = crafted_id(&key, 0);
    let ops = vec![
        raw_op(consents, legacy::Key::Map("c1".into()), make.clone(), vec![]),
        field(&c, "kind", text("written")),
        field(&c, "scope", text("teaching")),
        field(&c, "by", text("amb-66")),
        field(&c, "at_ms", legacy::OpType::Put(ScalarValue::Int(T))),
    ];
    let (bytes, sigs) = crafted(&mut doc, &key, ops);
    let reason = refused_at_hub(&mut hub, &thief, id, bytes, sigs);
    assert!(reason.contains("already made"), "{reason}");
    assert!(hub.view(&id).unwrap().media[0].consent_withdrawn, "the withdrawal still wins");

    let photo = "ab".repeat(32);
    let media = legacy_id(&obj(doc.automerge(), &ROOT, "media"));
    let m = crafted_id(&key, 0);
    let mut ops = vec![raw_op(media, legacy::Key::Map(photo.as_str().into()), make.clone(), vec![])];
    for (k, v) in [("hash", photo.as_str()), ("mime", "image/jpeg"), ("view", "site"), ("body_site", "right foot")] {
        ops.push(field(&m, k, text(v)));
    }
    ops.push(field(&m, "added_by", text("amb-66")));
    let (bytes, sigs) = crafted(&mut doc, &key, ops);
    let reason = refused_at_hub(&mut hub, &thief, id, bytes, sigs);
    assert!(reason.contains("already made"), "{reason}");
    assert_eq!(hub.view(&id).unwrap().media[0].added_by, "amb-07");

    // Two records at one new key in one change are refused too.
    let fresh = "cd".repeat(32);
    let media = legacy_id(&obj(doc.automerge(), &ROOT, "media"));
    let ops = vec![
        raw_op(media.clone(), legacy::Key::Map(fresh.as_str().into()), make.clone(), vec![]),
        raw_op(media, legacy::Key::Map(fresh.as_str().into()), make, vec![]),
    ];
    let (bytes, sigs) = crafted(&mut doc, &key, ops);
    let reason = refused_at_hub(&mut hub, &thief, id, bytes, sigs);
    assert!(reason.contains("already made"), "{reason}");
}

/// A photo's record is kept under the photo's hash and declares a photo's size: a record under
/// other text (which exports cut and show), or declaring a terabyte (which would size the
/// list of chunks a receiver asks for), is refused.
#[test]
fn a_photo_record_is_kept_under_its_hash_and_declares_a_photos_size() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, mut doc) = victim_session(&fleet, &mut hub);
    let (amb, key) = fleet.who("amb-07");
    let cases =
        [("cd".repeat(32), 1u64 << 40, "size"), ("é".repeat(32), 300_000, "hash"), ("CD".repeat(32), 300_000, "hash")];
    for (hash, size, says) in cases {
        let (bytes, sigs) = forged(&mut doc, &key, &key, |d| {
            let media = obj(d, &ROOT, "media");
            let m = d.put_object(&media, hash.as_str(), ObjType::Map).unwrap();
            d.put(&m, "hash", hash.as_str()).unwrap();
            d.put(&m, "size", ScalarValue::Uint(size)).unwrap();
        });
        let reason = refused_at_hub(&mut hub, &amb, id, bytes, sigs);
        assert!(reason.contains(says), "{hash} of {size} bytes: {reason}");
    }
}

/// `name` edits the hub's copy of session `id` with `f` on its own actor, signs it with its
/// own key and sends the change to the hub: what the hub answers.
fn sent_by(fleet: &Fleet, hub: &mut MemReplica, id: DocId, name: &str, f: impl FnOnce(&mut SessionDoc)) -> Applied {
    let (who, key) = fleet.who(name);
    let mut mine = hub.copy_doc(&id).unwrap().fork_as(key.actor().clone());
    let before = mine.heads();
    f(&mut mine);
    let sigs = sign_new(&key, mine.automerge(), &before).into_iter().map(|(_, s)| s).collect();
    hub.apply(&who, &[Incoming { doc: id, bytes: mine.save_after(&before), sigs }], T + 8).unwrap().remove(0)
}

/// Any node holding a session may record that it read an item, but only the consultant's side
/// reading the crew's message makes it "read": a tablet the session is shared with (or a
/// hub) opening it does not, a desk that received it does.
#[test]
fn the_crews_message_shows_read_only_once_a_desk_that_received_it_reads_it() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, _) = victim_session(&fleet, &mut hub);
    hub.edit(&id, |d| d.share_with("amb-66", T + 4)).unwrap();
    let level = |hub: &MemReplica| hub.view(&id).unwrap().messages.into_iter().find(|m| m.id == "m1").unwrap().receipt;
    let read_by = |hub: &mut MemReplica, name: &str, levels: &[ReceiptLevel]| {
        let got = sent_by(&fleet, hub, id, name, |mine| {
            for l in levels {
                mine.add_receipt("m1", *l, name, T + 7).unwrap();
            }
        });
        assert!(matches!(got, Applied::Stored { .. }), "{name}: {got:?}");
    };
    let start = level(&hub);
    assert!(start < ReceiptLevel::Desk, "{start:?}");
    read_by(&mut hub, "amb-66", &[ReceiptLevel::Read]);
    assert_eq!(level(&hub), start, "a shared tablet's read shown as the consultant's");
    read_by(&mut hub, "desk-derm-1", &[ReceiptLevel::Desk, ReceiptLevel::Read]);
    assert_eq!(level(&hub), ReceiptLevel::Read);
}

/// A crew's session is withdrawn (cancelled) by the crew or its hub, never by a consultant's
/// desk: the node's own API and command line refuse a desk's cancel, and a desk running
/// altered software that writes `cancelled` itself is refused at the hub.
#[test]
fn a_desk_cannot_cancel_a_crews_session_the_crew_can() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    // Created on 1 January 2027: after the builds whose desks could cancel.
    let (id, _) = victim_session_at(&fleet, &mut hub, 1_798_761_600_000);
    let by_desk = sent_by(&fleet, &mut hub, id, "desk-derm-1", |mine| {
        mine.set_status(Status::Cancelled, T + 7).unwrap();
    });
    match &by_desk {
        Applied::Refused { reason } => assert!(reason.contains("may not set the status cancelled"), "{reason}"),
        other => panic!("a desk's cancel was not refused: {other:?}"),
    }
    assert_ne!(hub.view(&id).unwrap().status, Status::Cancelled);
    let by_crew = sent_by(&fleet, &mut hub, id, "amb-07", |mine| {
        mine.set_status(Status::Cancelled, T + 7).unwrap();
    });
    assert!(matches!(by_crew, Applied::Stored { .. }), "{by_crew:?}");
    assert_eq!(hub.view(&id).unwrap().status, Status::Cancelled);
}

/// Reported by a review: desks could cancel until 8 December 2026 (the command line, and the
/// API for a while), and such a change is in the documents of any fleet that ran those builds.
/// Refused, it would keep the session, and everything written to it after, from every node
/// that does not hold it yet (a new desk of the line, a replacement tablet): a session created
/// before then keeps a desk's cancel.
#[test]
fn a_desks_cancel_of_a_session_made_before_the_rule_still_travels() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    // Created in September 2026.
    let (id, _) = victim_session(&fleet, &mut hub);
    let by_desk = sent_by(&fleet, &mut hub, id, "desk-derm-1", |mine| {
        mine.set_status(Status::Cancelled, T + 7).unwrap();
    });
    assert!(matches!(by_desk, Applied::Stored { .. }), "{by_desk:?}");
    assert_eq!(hub.view(&id).unwrap().status, Status::Cancelled);
}

/// Reported by a review: any edge holding a session could write a `callback` routing entry
/// for a call it did not ask for, which ends the requester's escalation (the hub stops routing
/// it). A callback is asked for only by a party to the call.
#[test]
fn a_callback_is_asked_for_only_by_a_party_to_its_call() {
    use sync_protocol::routing::RoutingEntry;
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, _) = victim_session(&fleet, &mut hub);
    hub.edit(&id, |d| d.share_with("amb-66", T + 4)).unwrap();
    let write = |hub: &mut MemReplica, name: &str, entry: RoutingEntry| {
        sent_by(&fleet, hub, id, name, |mine| {
            mine.append_routing(&entry, T + 7).unwrap();
        })
    };
    let callback = |by: &str| RoutingEntry::Callback {
        call: "k1".into(),
        reason: "no signal".into(),
        mos: None,
        by: Some(by.into()),
    };
    let asked = write(&mut hub, "amb-07", RoutingEntry::Escalate { call: "k1".into(), by: "amb-07".into() });
    assert!(matches!(asked, Applied::Stored { .. }), "{asked:?}");
    let got = write(&mut hub, "amb-66", callback("amb-66"));
    assert!(matches!(&got, Applied::Refused { reason } if reason.contains("party")), "the shared tablet: {got:?}");
    let got = write(&mut hub, "desk-derm-1", callback("desk-derm-1"));
    assert!(matches!(&got, Applied::Refused { .. }), "a desk that was never rung: {got:?}");
    // Naming oneself a party in the same change makes no party: a second escalation of the
    // crew's call by the shared tablet, or an answer by a desk the hub never rang.
    let both = |hub: &mut MemReplica, name: &str, first: RoutingEntry| {
        sent_by(&fleet, hub, id, name, |mine| {
            mine.append_routing(&first, T + 7).unwrap();
            mine.append_routing(&callback(name), T + 8).unwrap();
        })
    };
    let got = both(&mut hub, "amb-66", RoutingEntry::Escalate { call: "k1".into(), by: "amb-66".into() });
    assert!(
        matches!(&got, Applied::Refused { reason } if reason.contains("already asked for")),
        "self-declared requester: {got:?}"
    );
    // Nor does a second escalation placed at the head of the log, where a reader taking the
    // first as the requester's would find it: a call is asked for once. One naming no
    // requester is refused too (read first, it left the call none).
    let at_head = |hub: &mut MemReplica, by: Option<&str>| {
        sent_by(&fleet, hub, id, "amb-66", |mine| {
            let d = mine.automerge();
            let routing = obj(d, &ROOT, "routing");
            let e = d.insert_object(&routing, 0, ObjType::Map).unwrap();
            d.put(&e, "kind", "escalate").unwrap();
            d.put(&e, "call", "k1").unwrap();
            if let Some(by) = by {
                d.put(&e, "by", by).unwrap();
            }
            d.put(&e, "at_ms", T + 7).unwrap();
        })
    };
    for (by, why) in [(Some("amb-66"), "already asked for"), (None, "names its call and its requester")] {
        let got = at_head(&mut hub, by);
        assert!(matches!(&got, Applied::Refused { reason } if reason.contains(why)), "at the head, by {by:?}: {got:?}");
    }
    let answer = || RoutingEntry::Answer { call: "k1".into(), desk: "desk-derm-1".into(), attempt: 1 };
    let got = both(&mut hub, "desk-derm-1", answer());
    assert!(matches!(&got, Applied::Refused { reason } if reason.contains("party")), "self-declared desk: {got:?}");
    let got = write(&mut hub, "desk-derm-1", answer());
    assert!(matches!(got, Applied::Stored { .. }), "an answer alone is taken (the router ignores one not rung)");
    let got = write(&mut hub, "desk-derm-1", callback("desk-derm-1"));
    assert!(matches!(&got, Applied::Refused { .. }), "a desk that answered a ring it never had: {got:?}");
    hub.edit(&id, |d| {
        let ring = RoutingEntry::Ring { call: "k1".into(), desk: "desk-derm-1".into(), attempt: 1, ring_s: 30 };
        d.append_routing(&ring, T + 9)
    })
    .unwrap();
    let got = write(&mut hub, "desk-derm-1", callback("desk-derm-1"));
    assert!(matches!(got, Applied::Stored { .. }), "the desk the hub rang: {got:?}");
    let not_a_number = RoutingEntry::Callback {
        call: "k1".into(),
        reason: "dropped".into(),
        mos: Some(f64::NAN),
        by: Some("amb-07".into()),
    };
    let got = write(&mut hub, "amb-07", not_a_number);
    assert!(matches!(&got, Applied::Refused { reason } if reason.contains("not a number")), "a NaN: {got:?}");
    let got = write(&mut hub, "amb-07", callback("amb-07"));
    assert!(matches!(got, Applied::Stored { .. }), "the crew that asked: {got:?}");
    // Hubs before this version logged the gate of a link that echoed nothing with a NaN MOS:
    // such a change is taken, or the session would never reach a node that lacks it.
    let gate = RoutingEntry::Gate { call: "k1".into(), figures: nan_gate() };
    let got = write(&mut hub, "hub-qhm", gate);
    assert!(matches!(got, Applied::Stored { .. }), "an older hub's gate: {got:?}");
}

fn nan_gate() -> sync_protocol::routing::GateFigures {
    sync_protocol::routing::GateFigures {
        verdict: sync_protocol::routing::Verdict::Callback,
        mos: f64::NAN,
        r: f64::NAN,
        rtt_ms: f64::INFINITY,
        jitter_ms: 0.0,
        loss: 1.0,
        probes: 50,
        reason: "the requester's link carried none of the test packets".into(),
    }
}

/// A birth date travels only as a calendar date: the crew's edge (the origin, which may correct
/// the patient's details) writing free text there, as a tampered client could, is refused; a
/// real date is taken.
#[test]
fn a_birth_date_from_a_peer_is_a_calendar_date_or_refused() {
    let fleet = Fleet::new();
    let mut hub = fleet.replica("hub-qhm");
    let (id, _) = victim_session(&fleet, &mut hub);
    for bad in ["09/03/1944", "1944-02-30", "about 80", ""] {
        let answer = sent_by(&fleet, &mut hub, id, "amb-07", |d| {
            let patient = obj(d.automerge(), &ROOT, "patient");
            d.automerge().put(&patient, "birth_date", bad).unwrap();
        });
        assert!(
            matches!(&answer, Applied::Refused { reason } if reason.contains("calendar date")),
            "{bad:?}: {answer:?}"
        );
    }
    let answer = sent_by(&fleet, &mut hub, id, "amb-07", |d| {
        let patient = obj(d.automerge(), &ROOT, "patient");
        d.automerge().put(&patient, "birth_date", "1944-03-09").unwrap();
    });
    assert!(matches!(answer, Applied::Stored { .. }), "{answer:?}");
    assert_eq!(hub.view(&id).unwrap().patient.birth_date.as_deref(), Some("1944-03-09"));
}
