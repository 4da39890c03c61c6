//! The ICB directory in the store: who may send it, who may hold it, and that only the hub's
//! copy decides who is rung.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use outpost_node::config::NodeDir;
use outpost_node::node::{InitParams, Node, NodeError, SessionRequest};
use sync_protocol::authorship::Member;
use sync_protocol::call::{Action, Listen, PathQuality, RotaDesk};
use sync_protocol::directory::{DirectoryDoc, Hours, LineEntry, directory_id};
use sync_protocol::engine::{Applied, Incoming, Knowledge};
use sync_protocol::router::Router;
use sync_protocol::session::{LogValue, Patient, Requester, Service, SessionId};
use sync_protocol::vocab::{CareSetting, Channel, Priority, Role, ServiceLine};

/// Wednesday 2026-07-15 12:00 UTC (13:00 BST).
const T: i64 = 1_784_116_800_000;

fn node(tmp: &tempfile::TempDir, name: &str, role: Role, icb: &str, lines: Vec<ServiceLine>) -> Node {
    let dir = NodeDir::new(tmp.path().join(name));
    let params = InitParams { name: name.into(), role, org: Some("RX6".into()), icb: Some(icb.into()), lines };
    Node::init(&dir, &params, T).unwrap();
    Node::open(&dir).unwrap()
}

fn dermatology(hours: &str, desks: &[&str]) -> LineEntry {
    LineEntry {
        line: ServiceLine::Dermatology,
        hours: Hours::parse(hours).unwrap(),
        channels: vec![Channel::Call, Channel::Photo, Channel::Message],
        rota: desks.iter().map(|d| RotaDesk { desk: (*d).into(), ring_s: 20 }).collect(),
        fallback_hub: None,
        updated_ms: T,
    }
}

fn whole_directory(hub: &mut Node) -> Vec<u8> {
    let me = hub.config().peer_info();
    hub.raw_store().directory().directory_changes_since(&me, &directory_id("QHM"), &[]).unwrap()
}

#[test]
fn an_edge_and_a_desk_take_the_directory_from_their_hub_and_keep_it_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = node(&tmp, "hub-qhm", Role::Hub, "QHM", vec![]);
    let mut amb = node(&tmp, "amb-07", Role::Edge, "QHM", vec![]);
    let mut desk = node(&tmp, "desk-derm-1", Role::Desk, "QHM", vec![ServiceLine::Dermatology]);
    hub.set_line(dermatology("mon-fri 08:00-18:30", &["desk-derm-1", "desk-derm-2"]), T).unwrap();
    let bytes = whole_directory(&mut hub);
    let id = directory_id("QHM");
    let from = hub.config().peer_info();
    for n in [&mut amb, &mut desk] {
        let me = n.config().peer_info();
        let (applied, changed) = n.raw_store().directory_mut().apply_directory(&me, &from, &id, &bytes, T).unwrap();
        assert!(matches!(applied, Applied::Stored { .. }) && changed, "{applied:?}");
        // The same bytes again change nothing.
        let (_, changed) = n.raw_store().directory_mut().apply_directory(&me, &from, &id, &bytes, T).unwrap();
        assert!(!changed);
    }
    drop(amb);
    let amb = Node::open(&NodeDir::new(tmp.path().join("amb-07"))).unwrap();
    let line = amb.directory().unwrap().unwrap().lines[&ServiceLine::Dermatology].clone();
    assert_eq!(line.rota.iter().map(|d| d.desk.as_str()).collect::<Vec<_>>(), ["desk-derm-1", "desk-derm-2"]);
    assert_eq!(line.hours.to_string(), "mon-fri 08:00-18:30");
}

#[test]
fn a_directory_from_anyone_but_the_icbs_hub_is_refused_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = node(&tmp, "hub-qhm", Role::Hub, "QHM", vec![]);
    let mut amb = node(&tmp, "amb-07", Role::Edge, "QHM", vec![]);
    let mut desk = node(&tmp, "desk-derm-1", Role::Desk, "QHM", vec![ServiceLine::Dermatology]);
    let mut far_edge = node(&tmp, "amb-99", Role::Edge, "QOX", vec![]);
    let far_hub = node(&tmp, "hub-qox", Role::Hub, "QOX", vec![]);
    hub.set_line(dermatology("24/7", &["desk-derm-1"]), T).unwrap();
    let bytes = whole_directory(&mut hub);
    let id = directory_id("QHM");
    let refused = |a: &Applied| matches!(a, Applied::Refused { .. });

    // An edge relaying (or forging) the directory to a desk.
    let info_desk = desk.config().peer_info();
    let info_amb = amb.config().peer_info();
    let (a, _) = desk.raw_store().directory_mut().apply_directory(&info_desk, &info_amb, &id, &bytes, T).unwrap();
    assert!(refused(&a), "{a:?}");
    // Anyone sending it to the hub: the hub is its only author.
    let hub_me = hub.config().peer_info();
    let (a, _) =
        hub.raw_store().directory_mut().apply_directory(&hub_me, &amb.config().peer_info(), &id, &bytes, T).unwrap();
    assert!(refused(&a), "{a:?}");
    // Another ICB's hub, or QHM's directory at an edge of another ICB.
    let info_amb = amb.config().peer_info();
    let info_far_hub = far_hub.config().peer_info();
    let (a, _) = amb.raw_store().directory_mut().apply_directory(&info_amb, &info_far_hub, &id, &bytes, T).unwrap();
    assert!(refused(&a), "{a:?}");
    let info_far_edge = far_edge.config().peer_info();
    let (a, _) = far_edge.raw_store().directory_mut().apply_directory(&info_far_edge, &hub_me, &id, &bytes, T).unwrap();
    assert!(refused(&a), "{a:?}");
    // A directory claiming another ICB under QHM's id.
    let mut forged = DirectoryDoc::create("QOX", automerge::ActorId::from(vec![9u8; 16]), T).unwrap();
    forged.set_line(&dermatology("24/7", &["desk-evil"]), T).unwrap();
    let info_amb = amb.config().peer_info();
    let (a, _) = amb.raw_store().directory_mut().apply_directory(&info_amb, &hub_me, &id, &forged.save(), T).unwrap();
    assert!(refused(&a), "{a:?}");
    // Garbage.
    let info_amb = amb.config().peer_info();
    let (a, _) = amb
        .raw_store()
        .directory_mut()
        .apply_directory(&info_amb, &hub_me, &id, b"\x85o\x4a\x83 not automerge", T)
        .unwrap();
    assert!(refused(&a), "{a:?}");
    assert!(desk.directory().unwrap().is_none());
    assert!(amb.directory().unwrap().is_none());
    assert!(far_edge.directory().unwrap().is_none());
    assert_eq!(hub.directory().unwrap().unwrap().lines[&ServiceLine::Dermatology].rota[0].desk, "desk-derm-1");
}

#[test]
fn only_the_hub_edits_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut amb = node(&tmp, "amb-07", Role::Edge, "QHM", vec![]);
    let err = amb.set_line(dermatology("24/7", &["desk-derm-1"]), T).unwrap_err();
    assert!(matches!(err, NodeError::Role { .. }), "{err}");
    let mut hub = node(&tmp, "hub-qhm", Role::Hub, "QHM", vec![]);
    let mut twice = dermatology("24/7", &["desk-a", "desk-a"]);
    let err = hub.set_line(twice.clone(), T).unwrap_err();
    assert!(err.to_string().contains("named twice"), "{err}");
    twice.rota.pop();
    hub.set_line(twice, T).unwrap();
    let (removed, view) = hub.remove_line(ServiceLine::Dermatology, T + 1).unwrap();
    assert!(removed && view.lines.is_empty());
}

/// An ambulance's escalated dermatology session, as the hub receives it.
fn escalated_at_hub(amb: &mut Node, hub: &mut Node) -> sync_protocol::SessionId {
    received_at_hub(amb, hub, true)
}

/// An ambulance's dermatology session, escalated or not, as the hub receives it.
fn received_at_hub(amb: &mut Node, hub: &mut Node, escalated: bool) -> sync_protocol::SessionId {
    let req = SessionRequest {
        care_setting: CareSetting::AmbulanceOnScene,
        requester: Requester::default(),
        patient: Patient::default(),
        service: Service { line: ServiceLine::Dermatology, channel: Channel::Call, priority: Priority::Urgent },
        summary: "Spreading rash with fever".into(),
        draft: false,
    };
    let id = amb.new_session(req, T).unwrap().id;
    if escalated {
        amb.escalate(id, T + 1).unwrap();
    }
    let (me, from) = (hub.config().peer_info(), amb.config().peer_info());
    let out = amb.raw_store().peers_mut().changes_since(&me, &id.to_bytes(), &[]).unwrap().unwrap();
    // The hub knows the ambulance as a fleet member (here without a certificate).
    let member = Member { info: from.clone(), key: amb.raw_store().identity().author_public() };
    hub.raw_store().identity_mut().add_member(member, b"test member").unwrap();
    let inc = Incoming { doc: id.to_bytes(), bytes: out.bytes, sigs: out.sigs };
    let (applied, _) = hub.raw_store().peers_mut().apply_remote(&me, &from, &[inc], T + 2).unwrap();
    assert!(matches!(applied[0], Applied::Stored { .. }), "{applied:?}");
    id
}

/// The hub's router, following the session's escalation from `now`, as `outpost run` does.
fn following(hub: &mut Node, id: SessionId, now: i64) -> Router {
    let mut router = hub.call_router(24 * 3_600_000).unwrap();
    assert_eq!(hub.follow_escalations(&mut router, &[id], false, now).unwrap(), 1, "an open escalation is followed");
    router
}

#[test]
fn the_router_follows_open_escalations_by_the_index_and_reads_sessions_indexed_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = node(&tmp, "hub-qhm", Role::Hub, "QHM", vec![]);
    let mut amb = node(&tmp, "amb-07", Role::Edge, "QHM", vec![]);
    hub.set_line(dermatology("sat,sun 09:00-17:00", &["desk-derm-1"]), T - 5_000).unwrap();
    let open = escalated_at_hub(&mut amb, &mut hub);
    let quiet = received_at_hub(&mut amb, &mut hub, false);
    let followed = |hub: &mut Node, ids: &[SessionId]| {
        let mut router = hub.call_router(24 * 3_600_000).unwrap();
        hub.follow_escalations(&mut router, ids, false, T + 2).unwrap()
    };
    assert_eq!(followed(&mut hub, &[open, quiet]), 1, "the escalated session alone");
    // The line is closed: the router offers a callback, and the escalation is answered.
    let mut router = following(&mut hub, open, T + 2);
    let routed = hub.route_call(&mut router, open, T + 3).unwrap();
    assert!(matches!(routed.action(), Some(Action::Callback { .. })), "{routed:?}");
    assert_eq!(followed(&mut hub, &[open, quiet]), 0, "an answered escalation is not followed again");

    // A session indexed before the index said (schema 8): read from its document.
    let reopened = received_at_hub(&mut amb, &mut hub, true);
    let dir = NodeDir::new(tmp.path().join("hub-qhm"));
    drop(hub);
    let db = rusqlite::Connection::open(dir.db_path()).unwrap();
    assert_eq!(db.execute("UPDATE sessions SET escalating = NULL", []).unwrap(), 3);
    drop(db);
    let mut hub = Node::open(&dir).unwrap();
    assert_eq!(followed(&mut hub, &[open, quiet, reopened]), 1, "the open escalation, read from its document");
}

#[test]
fn the_router_offers_a_callback_when_the_hubs_directory_says_the_line_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = node(&tmp, "hub-qhm", Role::Hub, "QHM", vec![]);
    let mut amb = node(&tmp, "amb-07", Role::Edge, "QHM", vec![]);
    // The ambulance's copy says the line is open around the clock (stale): it does not count.
    hub.set_line(dermatology("24/7", &["desk-derm-1"]), T - 10_000).unwrap();
    let bytes = whole_directory(&mut hub);
    let me = amb.config().peer_info();
    amb.raw_store()
        .directory_mut()
        .apply_directory(&me, &hub.config().peer_info(), &directory_id("QHM"), &bytes, T)
        .unwrap();
    // Since then the hub has closed the line at weekends and evenings; now is 13:00 BST Wednesday.
    hub.set_line(dermatology("sat,sun 09:00-17:00", &["desk-derm-1"]), T - 5_000).unwrap();
    let id = escalated_at_hub(&mut amb, &mut hub);
    let mut router = following(&mut hub, id, T + 2);
    let routed = hub.route_call(&mut router, id, T + 3).unwrap();
    match routed.action().cloned() {
        Some(Action::Callback { reason, rating: None, .. }) => {
            assert!(reason.contains("closed") && reason.contains("sat-sun 09:00-17:00"), "{reason}")
        }
        other => panic!("expected a callback, got {other:?}"),
    }
    let log = hub.view(id).unwrap().routing;
    assert!(log.iter().any(|e| e.get("kind") == Some(&LogValue::Str("callback".into()))), "{log:?}");
}

#[test]
fn the_router_waits_for_a_desk_when_the_hubs_directory_has_the_line_open() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = node(&tmp, "hub-qhm", Role::Hub, "QHM", vec![]);
    let mut amb = node(&tmp, "amb-07", Role::Edge, "QHM", vec![]);
    hub.set_line(dermatology("mon-fri 08:00-18:30", &["desk-derm-1"]), T).unwrap();
    let id = escalated_at_hub(&mut amb, &mut hub);
    // No desk holds the session yet: the router waits rather than refusing.
    let mut router = following(&mut hub, id, T + 2);
    let routed = hub.route_call(&mut router, id, T + 3).unwrap();
    assert_eq!(routed.action(), Some(&Action::Wait));
    // With no line in the directory at all, a callback that says so.
    hub.remove_line(ServiceLine::Dermatology, T + 4).unwrap();
    let routed = hub.route_call(&mut router, id, T + 5).unwrap();
    assert!(
        matches!(routed.action(), Some(Action::Callback { reason, .. }) if reason.contains("no rota")),
        "{routed:?}"
    );
}

#[test]
fn a_line_closed_here_hands_the_call_to_its_federated_hub_after_the_link_gate() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = node(&tmp, "hub-qhm", Role::Hub, "QHM", vec![]);
    let mut amb = node(&tmp, "amb-07", Role::Edge, "QHM", vec![]);
    let mut closed = dermatology("sat,sun 09:00-17:00", &["desk-derm-1"]);
    closed.fallback_hub = Some("hub-qox".into());
    hub.set_line(closed, T).unwrap();
    let id = escalated_at_hub(&mut amb, &mut hub);
    let mut router = following(&mut hub, id, T + 2);
    let routed = hub.route_call(&mut router, id, T + 3).unwrap();
    assert_eq!(routed.action(), Some(&Action::Measure), "the link is judged before any hand-over");
    let good = PathQuality { rtt_ms: 40.0, jitter_ms: 3.0, loss: 0.0, burst_ratio: 1.0, probes: 50 };
    assert_eq!(router.heard(id.to_bytes(), good, T + 4), Some(Listen::Judge(good)));
    let routed = hub.route_call(&mut router, id, T + 4).unwrap();
    assert!(matches!(routed.action(), Some(Action::GatePassed(..))), "{routed:?}");
    let routed = hub.route_call(&mut router, id, T + 5).unwrap();
    assert_eq!(routed.action(), Some(&Action::Federate { hub: "hub-qox".into() }));
    assert!(routed.wrote);
    let view = hub.view(id).unwrap();
    assert!(view.shared_with.contains(&"hub-qox".to_string()), "shared with the federated hub in the same write");
    assert!(view.routing.iter().any(|e| e.get("kind") == Some(&LogValue::Str("federate".into()))));
    // From now on the other hub routes it; this one waits.
    let routed = hub.route_call(&mut router, id, T + 6).unwrap();
    assert_eq!(routed.action(), Some(&Action::Wait));
    assert!(!routed.wrote);
}

#[test]
fn one_step_of_a_peers_frames_is_bounded_and_what_is_left_is_taken_in_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let mut amb = node(&tmp, "amb-07", Role::Edge, "QHM", vec![]);
    let dir = NodeDir::new(tmp.path().join("hub-qhm"));
    let params =
        InitParams { name: "hub-qhm".into(), role: Role::Hub, org: None, icb: Some("QHM".into()), lines: vec![] };
    Node::init(&dir, &params, T).unwrap();
    let limits = sync_protocol::rules::Limits { max_batch_ops: 100, ..Default::default() };
    let opts = outpost_node::store::StoreOptions { limits, ..Default::default() };
    let mut hub = Node::open_with(&dir, opts).unwrap();
    let (me, from) = (hub.config().peer_info(), amb.config().peer_info());
    hub.raw_store()
        .identity_mut()
        .add_member(Member { info: from.clone(), key: amb.raw_store().identity().author_public() }, b"test member")
        .unwrap();
    let mut batch = Vec::new();
    for i in 0..6 {
        let req = SessionRequest {
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester::default(),
            patient: Patient::default(),
            service: Service { line: ServiceLine::Dermatology, channel: Channel::Message, priority: Priority::Urgent },
            summary: format!("session {i}"),
            draft: false,
        };
        let id = amb.new_session(req, T + i).unwrap().id;
        let out = amb.raw_store().peers_mut().changes_since(&me, &id.to_bytes(), &[]).unwrap().unwrap();
        batch.push(Incoming { doc: id.to_bytes(), bytes: out.bytes, sigs: out.sigs });
    }
    let (applied, _) = hub.raw_store().peers_mut().apply_remote(&me, &from, &batch, T + 10).unwrap();
    let stored = applied.iter().filter(|a| matches!(a, Applied::Stored { .. })).count();
    let busy: Vec<&Incoming> = batch
        .iter()
        .zip(&applied)
        .filter(|(_, a)| matches!(a, Applied::Refused { reason } if reason.contains("budget")))
        .map(|(b, _)| b)
        .collect();
    assert!(stored >= 1 && !busy.is_empty() && stored + busy.len() == 6, "{applied:?}");
    // The next step takes the rest.
    let rest: Vec<Incoming> = busy.into_iter().cloned().collect();
    let (again, _) = hub.raw_store().peers_mut().apply_remote(&me, &from, &rest, T + 20).unwrap();
    assert!(again.iter().any(|a| matches!(a, Applied::Stored { .. })), "{again:?}");
}

/// A session as `sender` holds it, taken by `to` (which learns `sender` and `authors` as fleet
/// members, here without certificates).
fn carried(sender: &mut Node, to: &mut Node, authors: &[&mut Node], id: SessionId, now: i64) {
    let (me, from) = (to.config().peer_info(), sender.config().peer_info());
    for a in authors.iter().map(|n| &**n).chain([&*sender]) {
        let member = Member { info: a.config().peer_info(), key: a.author_public() };
        to.raw_store().identity_mut().add_member(member, b"test member").unwrap();
    }
    let out = sender.raw_store().peers_mut().changes_since(&me, &id.to_bytes(), &[]).unwrap().unwrap();
    let inc = Incoming { doc: id.to_bytes(), bytes: out.bytes, sigs: out.sigs };
    let (applied, _) = to.raw_store().peers_mut().apply_remote(&me, &from, &[inc], now).unwrap();
    assert!(matches!(applied[0], Applied::Stored { .. }), "{applied:?}");
}

#[test]
fn a_desk_rung_by_two_crews_at_the_same_moment_answers_one_and_the_other_ring_passes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = node(&tmp, "hub-qhm", Role::Hub, "QHM", vec![]);
    let mut first = node(&tmp, "amb-07", Role::Edge, "QHM", vec![]);
    let mut second = node(&tmp, "amb-08", Role::Edge, "QHM", vec![]);
    let mut desk = node(&tmp, "desk-derm-1", Role::Desk, "QHM", vec![ServiceLine::Dermatology]);
    hub.set_line(dermatology("mon-fri 08:00-18:30", &["desk-derm-1", "desk-derm-2"]), T).unwrap();
    let ids = [escalated_at_hub(&mut first, &mut hub), escalated_at_hub(&mut second, &mut hub)];
    // Both cases are at the desk (as far as the hub knows), both crews' links pass the gate,
    // and the desk is rung for both before it has answered either.
    let desk_info = desk.config().peer_info();
    let good = PathQuality { rtt_ms: 40.0, jitter_ms: 3.0, loss: 0.0, burst_ratio: 1.0, probes: 50 };
    let mut router = hub.call_router(24 * 3_600_000).unwrap();
    assert_eq!(hub.follow_escalations(&mut router, &ids, false, T + 2).unwrap(), 2);
    for id in ids {
        let heads = hub.raw_store().peers().heads_of(&id.to_bytes()).unwrap().unwrap();
        let known = Knowledge { heads: heads.clone(), shared: heads };
        hub.raw_store().peers_mut().set_knowledge(&desk_info, &[(id.to_bytes(), known)]).unwrap();
        assert_eq!(hub.route_call(&mut router, id, T + 3).unwrap().action(), Some(&Action::Measure));
        router.heard(id.to_bytes(), good, T + 4);
        assert!(matches!(hub.route_call(&mut router, id, T + 4).unwrap().action(), Some(Action::GatePassed(..))));
        let routed = hub.route_call(&mut router, id, T + 5).unwrap();
        assert!(matches!(routed.action(), Some(Action::Ring { desk, .. }) if desk == "desk-derm-1"), "{routed:?}");
    }
    for id in ids {
        carried(&mut hub, &mut desk, &[&mut first, &mut second], id, T + 6);
    }
    // The consultant answers both rings in the same moment (the app's two cards, or two
    // taps): the desk carries one call's voice, so only the first is answered.
    assert!(desk.answer_call(ids[0], T + 7).unwrap().is_some(), "the first ring is answered");
    match desk.answer_call(ids[1], T + 7) {
        Err(NodeError::OnACall { session }) => assert_eq!(session, ids[0]),
        other => panic!("the second ring must be refused while the first call connects, got {other:?}"),
    }
    // The hub connects the first crew, and the second crew's ring passes to the next desk
    // once its ring time is over, rather than to a desk that answered and carries no voice.
    carried(&mut desk, &mut hub, &[&mut first, &mut second], ids[0], T + 8);
    let routed = hub.route_call(&mut router, ids[0], T + 8).unwrap();
    assert!(matches!(routed.action(), Some(Action::Connected { desk, .. }) if desk == "desk-derm-1"), "{routed:?}");
    // The desk's copy of the second crew's session, carried back, holds no answer to connect.
    carried(&mut desk, &mut hub, &[&mut first, &mut second], ids[1], T + 8);
    let routed = hub.route_call(&mut router, ids[1], T + 9).unwrap();
    assert_eq!(routed.action(), Some(&Action::Wait), "still ringing, not connected");
    let routed = hub.route_call(&mut router, ids[1], T + 5 + 20_000).unwrap();
    assert!(matches!(routed.action(), Some(Action::NoAnswer { desk, .. }) if desk == "desk-derm-1"), "{routed:?}");
}
