//! The hub's call router as a pure policy: the link gate first, then the first desk of the
//! rota that holds the whole session, each desk for its ring time, then the next, then a
//! callback; and never a desk that lacks a photo.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use automerge::ActorId;
use sync_protocol::call::{Action, CallbackCause, PathQuality, RotaDesk, calls_of, desk_holds_whole, next_action};
use sync_protocol::session::{
    LogName, LogValue, NewConsent, NewMedia, NewMessage, NewSession, Patient, Requester, Service, SessionDoc,
};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, PhotoView, Priority, ReceiptLevel, ServiceLine, Side,
};
use sync_protocol::{SessionId, SessionView};

const T0: i64 = 1_790_000_000_000;
const GOOD: PathQuality = PathQuality { rtt_ms: 40.0, jitter_ms: 3.0, loss: 0.0, burst_ratio: 1.0, probes: 50 };
const BAD: PathQuality = PathQuality { rtt_ms: 450.0, jitter_ms: 60.0, loss: 0.15, burst_ratio: 2.0, probes: 50 };

fn rota() -> Vec<RotaDesk> {
    vec![RotaDesk { desk: "desk-a".into(), ring_s: 20 }, RotaDesk { desk: "desk-b".into(), ring_s: 20 }]
}

/// An ambulance's urgent dermatology session with nothing but its summary.
fn bare_session(random: u128, summary: &str) -> SessionDoc {
    let new = NewSession {
        id: SessionId::from_parts(T0, random),
        origin: "amb-07".into(),
        icb: "QHM".into(),
        care_setting: CareSetting::AmbulanceOnScene,
        requester: Requester::default(),
        patient: Patient::default(),
        service: Service { line: ServiceLine::Dermatology, channel: Channel::Call, priority: Priority::Urgent },
        summary: summary.into(),
        draft: false,
    };
    SessionDoc::create(&new, ActorId::from([1u8; 16]), T0).unwrap()
}

fn session_with_photo() -> SessionDoc {
    let mut doc = bare_session(7, "rash");
    doc.add_message(
        &NewMessage {
            clinician: None,
            id: "m1".into(),
            author: "amb-07".into(),
            side: Side::Requester,
            text: "hello".into(),
            reply_to: None,
        },
        T0,
    )
    .unwrap();
    doc.add_consent(
        &NewConsent {
            id: "c1".into(),
            kind: ConsentKind::Verbal,
            scope: ConsentScope::RecordOnly,
            by: "amb-07".into(),
        },
        T0,
    )
    .unwrap();
    let media = NewMedia {
        hash: "ab".repeat(32),
        mime: "image/jpeg".into(),
        size: 2_000_000,
        dimensions: None,
        view: PhotoView::CloseUp,
        body_site: "arm".into(),
        consent_id: "c1".into(),
        added_by: "amb-07".into(),
        clinician: None,
    };
    doc.add_media(&media, T0).unwrap();
    doc.append_log(
        LogName::Routing,
        "escalate",
        &[("call", LogValue::Str("call-1".into())), ("by", LogValue::Str("amb-07".into()))],
        T0,
    )
    .unwrap();
    doc
}

fn log(doc: &mut SessionDoc, kind: &str, fields: &[(&str, LogValue)], at: i64) {
    let mut all = vec![("call", LogValue::Str("call-1".into()))];
    all.extend(fields.iter().map(|(k, v)| (*k, v.clone())));
    doc.append_log(LogName::Routing, kind, &all, at).unwrap();
}

fn gate_passed(doc: &mut SessionDoc, at: i64) {
    log(doc, "gate", &[("verdict", LogValue::Str("call".into()))], at);
}

fn ring(doc: &mut SessionDoc, desk: &str, attempt: i64, at: i64) {
    log(
        doc,
        "ring",
        &[("desk", LogValue::Str(desk.into())), ("attempt", LogValue::Int(attempt)), ("ring_s", LogValue::Int(20))],
        at,
    );
}

fn desk_step(doc: &mut SessionDoc, kind: &str, desk: &str, attempt: i64, at: i64) {
    log(doc, kind, &[("desk", LogValue::Str(desk.into())), ("attempt", LogValue::Int(attempt))], at);
}

fn step(doc: &SessionDoc, q: Option<&PathQuality>, now: i64) -> Action {
    let view: SessionView = doc.view().unwrap();
    let calls = calls_of(&view);
    assert_eq!(calls.len(), 1);
    next_action(&calls[0], &rota(), &view, &holders(), None, q, T0, now)
}

/// Both desks of the rota hold some version of the session (as their sync confirmed).
fn holders() -> Vec<String> {
    vec!["desk-a".into(), "desk-b".into()]
}

/// Desk `desk` acknowledges what it holds: the message always, the photo if `photo`.
fn desk_receives(doc: &mut SessionDoc, desk: &str, photo: bool, at: i64) {
    doc.acknowledge(ReceiptLevel::Desk, desk, at, |_| photo).unwrap();
}

#[test]
fn the_link_is_judged_once_a_desk_holds_the_case_and_before_any_desk_is_rung() {
    let mut doc = session_with_photo();
    assert_eq!(step(&doc, None, T0 + 1), Action::Wait, "no desk holds the case: nothing to measure for yet");
    desk_receives(&mut doc, "desk-a", true, T0 + 1);
    assert_eq!(step(&doc, None, T0 + 2), Action::Measure);
    match step(&doc, Some(&BAD), T0 + 2) {
        Action::Callback { reason, rating: Some((r, _)), cause } => {
            assert_eq!(cause, CallbackCause::Link);
            assert!(r.mos < 3.6);
            assert!(reason.contains("cannot carry a call"), "{reason}");
        }
        other => panic!("a bad link must give a callback, not {other:?}"),
    }
    assert!(matches!(step(&doc, Some(&GOOD), T0 + 2), Action::GatePassed(..)));
}

#[test]
fn no_desk_is_rung_before_it_holds_every_photo() {
    let mut doc = session_with_photo();
    gate_passed(&mut doc, T0 + 1);
    // Both desks have the message, neither the photo.
    desk_receives(&mut doc, "desk-a", false, T0 + 2);
    desk_receives(&mut doc, "desk-b", false, T0 + 2);
    let view = doc.view().unwrap();
    assert!(!desk_holds_whole(&view, "desk-a"));
    assert_eq!(step(&doc, Some(&GOOD), T0 + 3), Action::Wait);
    // The second desk gets the photo first: it is the one rung.
    desk_receives(&mut doc, "desk-b", true, T0 + 4);
    assert_eq!(step(&doc, Some(&GOOD), T0 + 5), Action::Ring { desk: "desk-b".into(), attempt: 1, ring_s: 20 });
}

#[test]
fn an_unanswered_desk_falls_to_the_next_after_its_ring_time_then_to_a_callback() {
    let mut doc = session_with_photo();
    gate_passed(&mut doc, T0 + 1);
    desk_receives(&mut doc, "desk-a", true, T0 + 2);
    desk_receives(&mut doc, "desk-b", true, T0 + 2);
    assert_eq!(step(&doc, Some(&GOOD), T0 + 3), Action::Ring { desk: "desk-a".into(), attempt: 1, ring_s: 20 });
    ring(&mut doc, "desk-a", 1, T0 + 3);
    assert_eq!(step(&doc, Some(&GOOD), T0 + 3 + 19_999), Action::Wait, "still within its ring time");
    assert_eq!(step(&doc, Some(&GOOD), T0 + 3 + 20_000), Action::NoAnswer { desk: "desk-a".into(), attempt: 1 });
    desk_step(&mut doc, "no_answer", "desk-a", 1, T0 + 20_003);
    assert_eq!(step(&doc, Some(&GOOD), T0 + 20_004), Action::Ring { desk: "desk-b".into(), attempt: 2, ring_s: 20 });
    ring(&mut doc, "desk-b", 2, T0 + 20_004);
    desk_step(&mut doc, "no_answer", "desk-b", 2, T0 + 40_004);
    match step(&doc, Some(&GOOD), T0 + 40_005) {
        Action::Callback { reason, rating: None, cause } => {
            assert!(reason.contains("no consultant"));
            assert_eq!(cause, CallbackCause::NoAnswer);
        }
        other => panic!("expected a callback, got {other:?}"),
    }
}

#[test]
fn an_answer_connects_the_call_and_closes_the_escalation() {
    let mut doc = session_with_photo();
    gate_passed(&mut doc, T0 + 1);
    desk_receives(&mut doc, "desk-a", true, T0 + 2);
    ring(&mut doc, "desk-a", 1, T0 + 3);
    desk_step(&mut doc, "answer", "desk-a", 1, T0 + 4_000);
    assert_eq!(
        step(&doc, Some(&GOOD), T0 + 4_100),
        Action::Connected { desk: "desk-a".into(), attempt: 1, rung_ms: T0 + 3 }
    );
    desk_step(&mut doc, "connected", "desk-a", 1, T0 + 4_100);
    let view = doc.view().unwrap();
    assert!(!calls_of(&view)[0].is_open());
    assert_eq!(step(&doc, Some(&GOOD), T0 + 60_000), Action::Wait);
}

#[test]
fn an_answer_from_a_desk_that_was_not_rung_connects_nothing() {
    let mut doc = session_with_photo();
    gate_passed(&mut doc, T0 + 1);
    desk_receives(&mut doc, "desk-a", true, T0 + 2);
    ring(&mut doc, "desk-a", 1, T0 + 3);
    desk_step(&mut doc, "answer", "desk-b", 1, T0 + 4_000);
    assert_eq!(step(&doc, Some(&GOOD), T0 + 4_100), Action::Wait);
}

#[test]
fn a_desk_that_lacks_a_session_without_messages_or_photos_is_never_rung() {
    // Nothing but the summary: receipts cannot show who holds it, the hub's sync knowledge must.
    let mut doc = bare_session(8, "chest pain, ST elevation on the 12-lead");
    log(&mut doc, "escalate", &[("by", LogValue::Str("amb-07".into()))], T0);
    gate_passed(&mut doc, T0 + 1);
    let view = doc.view().unwrap();
    let call = calls_of(&view).remove(0);
    assert!(desk_holds_whole(&view, "desk-a"), "no item to be missing");
    let now = T0 + 2;
    assert_eq!(next_action(&call, &rota(), &view, &[], None, Some(&GOOD), T0, now), Action::Wait);
    // desk-b confirmed holding the session: it is rung, desk-a (no confirmation) is passed over for now.
    let held = vec!["desk-b".to_string()];
    assert_eq!(
        next_action(&call, &rota(), &view, &held, None, Some(&GOOD), T0, now),
        Action::Ring { desk: "desk-b".into(), attempt: 1, ring_s: 20 }
    );
}

#[test]
fn when_every_desk_of_the_rota_was_tried_the_call_goes_to_the_federated_hubs_line() {
    let mut doc = session_with_photo();
    gate_passed(&mut doc, T0 + 1);
    for (i, desk) in ["desk-a", "desk-b"].into_iter().enumerate() {
        desk_receives(&mut doc, desk, true, T0 + 1);
        ring(&mut doc, desk, i as i64 + 1, T0 + 2 + i as i64 * 20_000);
        desk_step(&mut doc, "no_answer", desk, i as i64 + 1, T0 + 22_000 + i as i64 * 20_000);
    }
    let view = doc.view().unwrap();
    let call = calls_of(&view).remove(0);
    let now = T0 + 60_000;
    // Without a federated hub: a callback. With one: handed over.
    assert!(matches!(next_action(&call, &rota(), &view, &holders(), None, None, T0, now), Action::Callback { .. }));
    let fed = next_action(&call, &rota(), &view, &holders(), Some("hub-qox"), None, T0, now);
    assert_eq!(fed, Action::Federate { hub: "hub-qox".into() });

    log(
        &mut doc,
        "federate",
        &[("hub", LogValue::Str("hub-qox".into())), ("from", LogValue::Str("hub-qhm".into()))],
        now,
    );
    let view = doc.view().unwrap();
    let call = calls_of(&view).remove(0);
    assert_eq!(call.federated.as_ref().map(|f| f.hub.as_str()), Some("hub-qox"));
    // The session's hub waits for the other hub, and gives up only after FEDERATE_WAIT_MS.
    assert_eq!(next_action(&call, &rota(), &view, &holders(), Some("hub-qox"), None, T0, now + 1), Action::Wait);
    let late = now + sync_protocol::call::FEDERATE_WAIT_MS;
    assert!(matches!(
        next_action(&call, &rota(), &view, &holders(), Some("hub-qox"), None, T0, late),
        Action::Callback { reason, cause: CallbackCause::OutOfAreaSilent, .. } if reason.contains("hub-qox")
    ));
    // The federated hub routes it on its own rota once its desk holds the whole case.
    let mut theirs = call.clone();
    theirs.federated = None;
    let their_rota = vec![RotaDesk { desk: "desk-x".into(), ring_s: 20 }];
    let held = vec!["desk-x".to_string()];
    assert_eq!(next_action(&theirs, &their_rota, &view, &held, None, None, now, now + 2), Action::Wait);
    desk_receives(&mut doc, "desk-x", true, now + 3);
    let view = doc.view().unwrap();
    assert_eq!(
        next_action(&theirs, &their_rota, &view, &held, None, None, now, now + 4),
        Action::Ring { desk: "desk-x".into(), attempt: 3, ring_s: 20 }
    );
}

#[test]
fn an_out_of_area_handover_is_still_judged_by_the_link_gate_first() {
    let mut doc = session_with_photo();
    let view = doc.view().unwrap();
    let call = calls_of(&view).remove(0);
    // No rota at all, a federated hub configured: measure, then refuse a bad link.
    assert_eq!(next_action(&call, &[], &view, &[], Some("hub-qox"), None, T0, T0 + 1), Action::Measure);
    assert!(matches!(
        next_action(&call, &[], &view, &[], Some("hub-qox"), Some(&BAD), T0, T0 + 1),
        Action::Callback { rating: Some(_), .. }
    ));
    gate_passed(&mut doc, T0 + 2);
    let view = doc.view().unwrap();
    let call = calls_of(&view).remove(0);
    assert_eq!(
        next_action(&call, &[], &view, &[], Some("hub-qox"), Some(&GOOD), T0, T0 + 3),
        Action::Federate { hub: "hub-qox".into() }
    );
}
