//! Concurrent edits of two replicas of one session merge by the rules of `docs/schema.md`:
//! status only moves forward, receipts only move forward, a consent withdrawal always wins,
//! and the message, media and consent collections only grow.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use automerge::{ActorId, ReadDoc};
use proptest::prelude::*;
use sync_protocol::routing::RoutingEntry;
use sync_protocol::session::{
    NewConsent, NewMedia, NewMessage, NewSession, Patient, Requester, Service, SessionDoc, Touched,
};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, ReceiptLevel,
    ServiceLine, Side, Status,
};
use sync_protocol::{NhsNumber, SessionId, SessionView};

const T0: i64 = 1_790_000_000_000;

fn actor(n: u8) -> ActorId {
    ActorId::from([n; 16])
}

fn new_session() -> SessionDoc {
    let new = NewSession {
        id: SessionId::from_parts(T0, 42),
        origin: "amb-07".into(),
        icb: "QOX".into(),
        care_setting: CareSetting::AmbulanceOnScene,
        requester: Requester { role: Some("paramedic".into()), ..Requester::default() },
        patient: Patient {
            nhs_number: Some(NhsNumber::parse("9434765919").unwrap()),
            verification: NhsVerification::NotTraced,
            ..Patient::default()
        },
        service: Service { line: ServiceLine::Dermatology, channel: Channel::Photo, priority: Priority::Urgent },
        summary: "Spreading rash on left forearm, 2 days".into(),
        draft: false,
    };
    let mut doc = SessionDoc::create(&new, actor(1), T0).unwrap();
    doc.add_consent(
        &NewConsent {
            id: "c0".into(),
            kind: ConsentKind::Verbal,
            scope: ConsentScope::RecordOnly,
            by: "amb-07".into(),
        },
        T0,
    )
    .unwrap();
    doc.add_message(&msg("m0", Side::Requester, "first"), T0).unwrap();
    doc
}

fn msg(id: &str, side: Side, text: &str) -> NewMessage {
    NewMessage { clinician: None, id: id.into(), author: "amb-07".into(), side, text: text.into(), reply_to: None }
}

fn merged(a: &mut SessionDoc, b: &mut SessionDoc) -> (SessionView, SessionView) {
    let mut ab = a.fork_as(actor(9));
    ab.merge(b).unwrap();
    let mut ba = b.fork_as(actor(10));
    ba.merge(a).unwrap();
    (ab.view().unwrap(), ba.view().unwrap())
}

#[test]
fn concurrent_status_moves_keep_the_furthest() {
    let mut base = new_session();
    let mut a = base.fork_as(actor(2));
    let mut b = base.fork_as(actor(3));
    a.set_status(Status::Responded, T0 + 10).unwrap();
    b.set_status(Status::Routing, T0 + 20).unwrap();
    let (ab, ba) = merged(&mut a, &mut b);
    assert_eq!(ab.status, Status::Responded);
    assert_eq!(ab, ba);
}

#[test]
fn a_step_or_receipt_both_replicas_recorded_keeps_the_earliest_time_whichever_write_wins() {
    let mut base = new_session();
    // The later write comes from the lower actor and the earlier from the higher one, and
    // the other way round: Automerge's winner differs, the time shown must not.
    for (early, late) in [(actor(2), actor(3)), (actor(3), actor(2))] {
        let mut a = base.fork_as(early);
        let mut b = base.fork_as(late);
        a.set_status(Status::Routing, T0 + 10).unwrap();
        b.set_status(Status::Routing, T0 + 90).unwrap();
        a.add_receipt("m0", ReceiptLevel::Hub, "hub-qox", T0 + 15).unwrap();
        b.add_receipt("m0", ReceiptLevel::Hub, "hub-qox", T0 + 95).unwrap();
        let (ab, ba) = merged(&mut a, &mut b);
        assert_eq!(ab, ba);
        let step = ab.status_history.iter().find(|s| s.status == Status::Routing).unwrap();
        assert_eq!(step.at_ms, T0 + 10);
        let r = ab.messages[0].receipts.iter().find(|r| r.level == ReceiptLevel::Hub).unwrap();
        assert_eq!((r.node.as_str(), r.at_ms), ("hub-qox", T0 + 15));
    }
}

#[test]
fn an_explicit_backward_move_is_refused() {
    let mut doc = new_session();
    doc.set_status(Status::Responded, T0 + 1).unwrap();
    let err = doc.set_status(Status::Queued, T0 + 2).unwrap_err();
    assert!(err.to_string().contains("cannot move back from responded to queued"), "{err}");
    assert_eq!(doc.view().unwrap().status, Status::Responded);
}

#[test]
fn a_reopen_starts_a_new_epoch_that_outranks_a_concurrent_close() {
    let mut base = new_session();
    base.set_status(Status::Closed, T0 + 1).unwrap();
    let mut a = base.fork_as(actor(2));
    let mut b = base.fork_as(actor(3));
    a.reopen(T0 + 5).unwrap();
    b.set_status(Status::Cancelled, T0 + 6).unwrap();
    let (ab, ba) = merged(&mut a, &mut b);
    assert_eq!(ab.status, Status::AwaitingReply);
    assert_eq!(ab.reopened, 1);
    assert_eq!(ab, ba);
}

#[test]
fn receipts_from_both_replicas_survive_and_the_level_is_the_highest() {
    let mut base = new_session();
    let mut hub = base.fork_as(actor(2));
    let mut desk = base.fork_as(actor(3));
    hub.add_receipt("m0", ReceiptLevel::Hub, "hub-qox", T0 + 5).unwrap();
    desk.add_receipt("m0", ReceiptLevel::Desk, "desk-derm-1", T0 + 6).unwrap();
    desk.add_receipt("m0", ReceiptLevel::Read, "desk-derm-1", T0 + 7).unwrap();
    let (ab, ba) = merged(&mut hub, &mut desk);
    assert_eq!(ab.messages[0].receipt, ReceiptLevel::Read);
    assert_eq!(ab.messages[0].receipts.len(), 3);
    assert_eq!(ab, ba);
}

#[test]
fn a_withdrawal_wins_over_concurrent_edits_of_the_same_consent() {
    let mut base = new_session();
    let mut a = base.fork_as(actor(2));
    let mut b = base.fork_as(actor(3));
    a.withdraw_consent("c0", "amb-07", T0 + 5).unwrap();
    // The other replica attaches a photo under the same consent meanwhile.
    b.add_media(&media("ab"), T0 + 6).unwrap();
    let (ab, ba) = merged(&mut a, &mut b);
    assert!(ab.consents[0].withdrawn.is_some());
    assert!(ab.media[0].consent_withdrawn, "the photo must show its consent as withdrawn");
    assert_eq!(ab, ba);
}

#[test]
fn two_concurrent_withdrawals_of_one_consent_keep_the_earlier() {
    let mut base = new_session();
    let mut a = base.fork_as(actor(2));
    let mut b = base.fork_as(actor(3));
    // The later withdrawal is written by the actor whose write wins the key.
    a.withdraw_consent("c0", "amb-07", T0 + 9).unwrap();
    b.withdraw_consent("c0", "desk-derm-1", T0 + 5).unwrap();
    let (ab, ba) = merged(&mut a, &mut b);
    assert_eq!(ab.consents[0].withdrawn.as_ref().map(|w| w.at_ms), Some(T0 + 5));
    assert_eq!(ab, ba);
    // And the other way round.
    let mut a = base.fork_as(actor(2));
    let mut b = base.fork_as(actor(3));
    a.withdraw_consent("c0", "amb-07", T0 + 5).unwrap();
    b.withdraw_consent("c0", "desk-derm-1", T0 + 9).unwrap();
    let (ab, _) = merged(&mut a, &mut b);
    assert_eq!(ab.consents[0].withdrawn.as_ref().map(|w| w.at_ms), Some(T0 + 5));
}

#[test]
fn concurrent_messages_both_appear_in_one_agreed_order() {
    let mut base = new_session();
    let mut a = base.fork_as(actor(2));
    let mut b = base.fork_as(actor(3));
    a.add_message(&msg("ma", Side::Requester, "from the ambulance"), T0 + 5).unwrap();
    b.add_message(&msg("mb", Side::Responder, "from the consultant"), T0 + 5).unwrap();
    let (ab, ba) = merged(&mut a, &mut b);
    let ids: Vec<_> = ab.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&"ma") && ids.contains(&"mb"));
    assert_eq!(ab, ba);
    assert_eq!(ab.status, Status::Responded);
}

#[test]
fn outcomes_are_kept_apart_per_side() {
    let mut base = new_session();
    let mut a = base.fork_as(actor(2));
    let mut b = base.fork_as(actor(3));
    a.set_outcome(Side::Requester, Outcome::ConveyanceAvoided, "amb-07", T0 + 5).unwrap();
    b.set_outcome(Side::Responder, Outcome::AdviceOnly, "desk-1", T0 + 5).unwrap();
    let (ab, _) = merged(&mut a, &mut b);
    assert_eq!(ab.outcome.requester.unwrap().value, Outcome::ConveyanceAvoided);
    assert_eq!(ab.outcome.responder.unwrap().value, Outcome::AdviceOnly);
    assert_eq!(ab.status, Status::OutcomeRecorded);
}

#[test]
fn concurrent_outcomes_of_one_side_keep_the_winners_person_with_its_value() {
    use sync_protocol::session::Clinician;
    let ada =
        Clinician { name: "Dr Ada Okafor".into(), role: "consultant".into(), registration: Some("GMC-7012345".into()) };
    let ben = Clinician { name: "Dr Ben Ito".into(), role: "consultant".into(), registration: None };
    // Every order of actors, and a writer who names no person against one who does.
    for (x, y) in [(2, 3), (3, 2), (4, 7), (7, 4)] {
        for b_person in [Some(&ben), None] {
            let mut base = new_session();
            let mut a = base.fork_as(actor(x));
            let mut b = base.fork_as(actor(y));
            a.set_outcome_as(Side::Responder, Outcome::AdviceOnly, "desk-1", Some(&ada), T0 + 5).unwrap();
            b.set_outcome_as(Side::Responder, Outcome::ReferralMade, "desk-2", b_person, T0 + 5).unwrap();
            let (ab, ba) = merged(&mut a, &mut b);
            assert_eq!(ab, ba);
            let won = ab.outcome.responder.unwrap();
            match won.value {
                Outcome::AdviceOnly => assert_eq!((won.by.as_str(), won.clinician.as_ref()), ("desk-1", Some(&ada))),
                _ => assert_eq!((won.by.as_str(), won.clinician.as_ref()), ("desk-2", b_person)),
            }
        }
    }
}

#[test]
fn a_closed_session_refuses_new_messages() {
    let mut doc = new_session();
    doc.set_status(Status::Closed, T0 + 1).unwrap();
    let err = doc.add_message(&msg("m1", Side::Requester, "late"), T0 + 2).unwrap_err();
    assert!(err.to_string().contains("reopen"), "{err}");
}

#[test]
fn a_closed_or_cancelled_session_is_not_escalated_until_reopened() {
    use sync_protocol::routing::RoutingEntry;
    for end in [Status::Closed, Status::Cancelled] {
        let mut doc = new_session();
        doc.set_status(end, T0 + 1).unwrap();
        let ask = RoutingEntry::Escalate { call: "c1".into(), by: "amb-07".into() };
        let err = doc.append_routing(&ask, T0 + 2).unwrap_err();
        assert!(err.to_string().contains("reopen"), "{err}");
        doc.reopen(T0 + 3).unwrap();
        doc.append_routing(&ask, T0 + 4).unwrap();
    }
}

#[test]
fn a_message_body_is_a_plain_string_not_text() {
    let mut doc = new_session();
    let ops = doc.automerge().stats().num_ops;
    // One op per message body (a text object would hold one per character).
    let long = "x".repeat(4000);
    doc.add_message(&msg("m1", Side::Requester, &long), T0 + 1).unwrap();
    let grown = doc.automerge().stats().num_ops - ops;
    assert!(grown < 30, "a 4000-byte body added {grown} operations");
    let short = doc.automerge().stats().num_ops;
    doc.add_message(&msg("m2", Side::Requester, "x"), T0 + 2).unwrap();
    assert_eq!(doc.automerge().stats().num_ops - short, grown, "a long body costs the ops a short one does");
}

fn media(hash_byte: &str) -> NewMedia {
    NewMedia {
        hash: hash_byte.repeat(32),
        mime: "image/jpeg".into(),
        size: 2_000_000,
        dimensions: Some((1920, 1440)),
        view: PhotoView::CloseUp,
        body_site: "left forearm".into(),
        consent_id: "c0".into(),
        added_by: "amb-07".into(),
        clinician: None,
    }
}

/// One edit a replica may make.
#[derive(Debug, Clone)]
enum Edit {
    Message(bool),
    Receipt(usize, ReceiptLevel),
    Status(Status),
    Reopen,
    AddConsent,
    Withdraw(usize),
    Outcome(bool, Outcome),
    Media(u8),
    Share(u8),
    Requester(u8),
    Escalate(u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<bool>().prop_map(Edit::Message),
        (0usize..8, prop::sample::select(ReceiptLevel::ALL.to_vec())).prop_map(|(i, l)| Edit::Receipt(i, l)),
        prop::sample::select(Status::ALL.to_vec()).prop_map(Edit::Status),
        Just(Edit::Reopen),
        Just(Edit::AddConsent),
        (0usize..4).prop_map(Edit::Withdraw),
        (any::<bool>(), prop::sample::select(Outcome::ALL.to_vec())).prop_map(|(s, o)| Edit::Outcome(s, o)),
        (0u8..6).prop_map(Edit::Media),
        (0u8..3).prop_map(Edit::Share),
        (0u8..3).prop_map(Edit::Requester),
        (0u8..2).prop_map(Edit::Escalate),
    ]
}

/// Applies an edit; refusals (a backwards status, an edit of a closed session) are part of the model.
fn apply(doc: &mut SessionDoc, who: &str, n: usize, e: &Edit, now: i64) {
    let view = doc.view().unwrap();
    let _ = match e {
        Edit::Message(responder) => {
            let side = if *responder { Side::Responder } else { Side::Requester };
            doc.add_message(&msg(&format!("{who}-m{n}"), side, "text"), now).map(|_| ())
        }
        Edit::Receipt(i, level) => match view.messages.get(i % view.messages.len().max(1)) {
            Some(m) => doc.add_receipt(&m.id, *level, who, now).map(|_| ()),
            None => Ok(()),
        },
        Edit::Status(s) => doc.set_status(*s, now).map(|_| ()),
        Edit::Reopen => doc.reopen(now).map(|_| ()),
        Edit::AddConsent => doc.add_consent(
            &NewConsent {
                id: format!("{who}-c{n}"),
                kind: ConsentKind::Written,
                scope: ConsentScope::Teaching,
                by: who.into(),
            },
            now,
        ),
        Edit::Withdraw(i) => match view.consents.get(i % view.consents.len().max(1)) {
            Some(c) => doc.withdraw_consent(&c.id, who, now),
            None => Ok(()),
        },
        Edit::Outcome(responder, o) => {
            let side = if *responder { Side::Responder } else { Side::Requester };
            doc.set_outcome(side, *o, who, now)
        }
        Edit::Media(h) => doc.add_media(&media(&format!("{h:02x}")), now).map(|_| ()),
        Edit::Share(d) => doc.share_with(&format!("desk-derm-{d}"), now),
        Edit::Requester(r) => {
            let requester = Requester { role: Some(format!("role {r} of {who}")), ..Requester::default() };
            doc.set_requester(&requester, now)
        }
        Edit::Escalate(c) => {
            let entry = RoutingEntry::Escalate { call: format!("call-{c}"), by: who.into() };
            doc.append_routing(&entry, now)
        }
    };
}

fn check_dominates(merged: &SessionView, fork: &SessionView) -> Result<(), TestCaseError> {
    prop_assert!((merged.reopened, merged.status) >= (fork.reopened, fork.status), "status went back");
    for m in &fork.messages {
        let Some(mm) = merged.messages.iter().find(|x| x.id == m.id) else {
            return Err(TestCaseError::fail(format!("message {} lost", m.id)));
        };
        prop_assert!(mm.receipt >= m.receipt, "receipt of {} went back", m.id);
        for r in &m.receipts {
            let found = mm.receipts.iter().find(|x| (x.level, &x.node) == (r.level, &r.node));
            prop_assert!(found.is_some_and(|x| x.at_ms <= r.at_ms), "receipt {r:?} lost");
        }
    }
    for c in &fork.consents {
        let Some(mc) = merged.consents.iter().find(|x| x.id == c.id) else {
            return Err(TestCaseError::fail(format!("consent {} lost", c.id)));
        };
        if c.withdrawn.is_some() {
            prop_assert!(mc.withdrawn.is_some(), "withdrawal of {} lost", c.id);
        }
    }
    for m in &fork.media {
        prop_assert!(merged.media.iter().any(|x| x.hash == m.hash), "media lost");
    }
    for step in fork.status_history.iter() {
        let found = merged.status_history.iter().find(|m| (m.epoch, m.status) == (step.epoch, step.status));
        prop_assert!(found.is_some_and(|m| m.at_ms <= step.at_ms), "status step {step:?} lost");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn merging_random_concurrent_edits_obeys_every_rule(
        shared in prop::collection::vec(edit(), 0..6),
        left in prop::collection::vec(edit(), 0..12),
        right in prop::collection::vec(edit(), 0..12),
    ) {
        let mut base = new_session();
        for (n, e) in shared.iter().enumerate() {
            apply(&mut base, "base", n, e, T0 + n as i64);
        }
        let mut a = base.fork_as(actor(2));
        let mut b = base.fork_as(actor(3));
        // A view kept and updated from what each edit wrote reads as the whole document does.
        let mut basis = a.read_basis().unwrap();
        for (n, e) in left.iter().enumerate() {
            apply(&mut a, "a", n, e, T0 + 100 + n as i64);
            let touched = Touched::of_changes(&a.changes_after(basis.heads()));
            basis = a.read_basis_since(basis, &touched).unwrap();
            prop_assert_eq!(&basis, &a.read_basis().unwrap(), "after edit {} ({:?})", n, e);
        }
        for (n, e) in right.iter().enumerate() {
            apply(&mut b, "b", n, e, T0 + 100 + n as i64);
        }
        let va = a.view().unwrap();
        let vb = b.view().unwrap();
        let (ab, ba) = merged(&mut a, &mut b);
        prop_assert_eq!(&ab, &ba, "replicas did not converge");
        // The view read in one pass over the document is the one read object by object.
        let mut m = a.fork_as(actor(13));
        m.merge(&mut b).unwrap();
        // And so does a's view updated from what b's concurrent edits wrote.
        let touched = Touched::of_changes(&m.changes_after(basis.heads()));
        let merged_basis = m.read_basis_since(basis.clone(), &touched).unwrap();
        prop_assert_eq!(&merged_basis, &m.read_basis().unwrap(), "a's view after the merge");
        for doc in [&mut a, &mut b, &mut m] {
            prop_assert_eq!(doc.view().unwrap(), doc.view_object_by_object().unwrap());
            // And the write rules' facts found in that reading are those the rules read.
            let (view, facts) = doc.view_and_facts();
            prop_assert_eq!(view.unwrap(), doc.view().unwrap());
            prop_assert_eq!(facts, Some(sync_protocol::rules::held_facts(doc.automerge())));
        }
        check_dominates(&ab, &va)?;
        check_dominates(&ab, &vb)?;
        prop_assert_eq!(ab.messages.len(), {
            let mut ids: Vec<_> = va.messages.iter().chain(vb.messages.iter()).map(|m| m.id.clone()).collect();
            ids.sort();
            ids.dedup();
            ids.len()
        });
        // A saved and reloaded merge reads the same.
        let mut reloaded = a.fork_as(actor(11));
        reloaded.merge(&mut b).unwrap();
        let bytes = reloaded.save();
        let again = SessionDoc::load(&bytes, actor(12)).unwrap().view().unwrap();
        prop_assert_eq!(&again, &ab);
    }
}

/// A receipt counts for the side it speaks for: a second desk opening a reply does not make it
/// "read by the requester", and the crew's own read of their message is not the consultant's.
#[test]
fn a_receipt_counts_only_from_the_side_it_speaks_for() {
    let mut doc = new_session();
    let mut reply = msg("r1", Side::Responder, "stop the amoxicillin");
    reply.author = "desk-derm-1".into();
    doc.add_message(&reply, T0 + 10).unwrap();
    let level = |doc: &SessionDoc, id: &str| doc.view().unwrap().messages.iter().find(|m| m.id == id).unwrap().receipt;

    doc.add_receipt("r1", ReceiptLevel::Hub, "hub-qox", T0 + 11).unwrap();
    doc.add_receipt("r1", ReceiptLevel::Read, "desk-derm-2", T0 + 12).unwrap();
    assert_eq!(level(&doc, "r1"), ReceiptLevel::Hub, "another desk's read is not the crew's");
    doc.add_receipt("r1", ReceiptLevel::Requester, "amb-07", T0 + 13).unwrap();
    assert_eq!(level(&doc, "r1"), ReceiptLevel::Requester);
    doc.add_receipt("r1", ReceiptLevel::Read, "amb-07", T0 + 14).unwrap();
    assert_eq!(level(&doc, "r1"), ReceiptLevel::Read);

    doc.add_receipt("m0", ReceiptLevel::Read, "amb-07", T0 + 15).unwrap();
    assert_eq!(level(&doc, "m0"), ReceiptLevel::Device, "the crew reading their own message is no receipt");
    doc.add_receipt("m0", ReceiptLevel::Desk, "desk-derm-1", T0 + 16).unwrap();
    doc.add_receipt("m0", ReceiptLevel::Read, "desk-derm-1", T0 + 17).unwrap();
    assert_eq!(level(&doc, "m0"), ReceiptLevel::Read);
    // Every receipt is still listed, counted or not.
    assert_eq!(doc.view().unwrap().messages[1].receipts.len(), 4);
}

/// A message is "at hub" only when the hub holds that message: another member's message that
/// reuses its id does not count. A tablet that synced with the crew directly knows the id of
/// a message still on its way to the hub; it can write one of its own under that id on a
/// history without the crew's, and send it to the hub first. The crew's device must not then
/// show its message at the hub from the hub's heads.
#[test]
fn a_message_is_at_hub_only_when_the_hub_holds_that_message_not_one_reusing_its_id() {
    let mut crew = new_session();
    let mut tablet = crew.fork_as(actor(4));
    // The crew's message, still on its way to the hub.
    crew.add_message(&msg("m1", Side::Requester, "BP 82/50 after fluids: transfer or treat here?"), T0 + 10).unwrap();
    // The tablet's message under the same id, on the history the hub holds.
    let mut forged = msg("m1", Side::Requester, "Stable now, no advice needed");
    forged.author = "amb-99".into();
    tablet.add_message(&forged, T0 + 11).unwrap();
    let hub_heads: Vec<sync_protocol::wire::Hash> =
        tablet.heads().into_iter().map(sync_protocol::wire::Hash::from).collect();
    // The crew's device holds the tablet's message too (it came back through a sync).
    crew.merge(&mut tablet).unwrap();

    let mut view = crew.view().unwrap();
    sync_protocol::session::localize::<sync_protocol::ModelError>(&mut crew, &mut view, false, || {
        Ok(vec![hub_heads.clone()])
    })
    .unwrap();
    let level = |author: &str| view.messages.iter().find(|m| m.id == "m1" && m.author == author).unwrap().receipt;
    assert_eq!(level("amb-99"), ReceiptLevel::Hub, "the hub holds the tablet's message");
    assert_eq!(level("amb-07"), ReceiptLevel::Device, "the hub does not hold the crew's message");
}

/// A birth date is a real calendar date written YYYY-MM-DD, from 1870 and no later than the
/// day it is entered (UTC): the slips a form on a moving tablet invites are refused with what to
/// write instead, whether the session is being made or its patient corrected.
#[test]
fn a_birth_date_is_a_real_calendar_date_no_later_than_today() {
    use sync_protocol::session::check_birth_date;
    // 2026-12-04T05:00:00.123Z
    let now = 1_796_360_400_123;
    for good in ["1944-03-09", "2024-02-29", "2000-02-29", "1870-01-01", "2026-12-04", "2026-01-31"] {
        assert!(check_birth_date(good, now).is_ok(), "{good}");
    }
    for bad in [
        "09/03/1944",
        "1944-3-9",
        "1944-02-30",
        "2023-02-29",
        "1900-02-29",
        "1944-13-01",
        "1944-00-10",
        "1944-04-31",
        "2026-12-05",
        "2031-01-01",
        "1869-12-31",
        "",
        "１９４４-03-09",
    ] {
        let err = check_birth_date(bad, now).expect_err(bad);
        assert!(err.to_string().contains("YYYY-MM-DD"), "{bad}: {err}");
    }
    // The first day of the epoch and a leap day are counted out right.
    assert!(check_birth_date("1970-01-01", 0).is_ok());
    assert!(check_birth_date("1970-01-02", 0).is_err());
    assert!(check_birth_date("2000-02-29", 951_782_400_000).is_ok());
    assert!(check_birth_date("2000-03-01", 951_782_400_000).is_err());

    let mut doc = new_session();
    let patient = Patient { birth_date: Some("31/02/1950".into()), ..Patient::default() };
    assert!(doc.set_patient(&patient, T0 + 1).is_err());
    assert_eq!(doc.view().unwrap().patient.birth_date, None, "nothing written");
    let patient = Patient { birth_date: Some("1950-02-28".into()), ..Patient::default() };
    doc.set_patient(&patient, T0 + 2).unwrap();
    assert_eq!(doc.view().unwrap().patient.birth_date.as_deref(), Some("1950-02-28"));
}
