//! What reading a session's view costs: `SessionDoc::view` (every field the node shows, checked
//! and typed, the document read in one pass) against the same view read object by object (as
//! before the one pass) and against Automerge's own `hydrate` of the same documents (every
//! value, untyped, unchecked) as the baseline, in the same run. A hub reads the view of every
//! session it receives, so this is a share of the sync benchmark's hub CPU.
//!
//! `cargo bench -p sync-protocol --bench view`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed unwrap is a failed run

use std::time::Instant;

use automerge::{AutoCommit, ROOT, ReadDoc};
use sync_protocol::routing::{GateFigures, RoutingEntry, Verdict};
use sync_protocol::session::{NewMessage, NewSession, Patient, Requester, Service, SessionDoc, SessionId};
use sync_protocol::vocab::{CareSetting, Channel, Priority, ReceiptLevel, ServiceLine, Side};

const T0: i64 = 1_780_000_000_000;

/// A session as a hub holds it after a call: `messages` messages, each with its hub and desk
/// receipts, and a routing log of a connected call.
fn session(seq: u64, messages: usize) -> SessionDoc {
    let new = NewSession {
        id: SessionId::from_parts(T0 + seq as i64, u128::from(seq) * 7919 + 1),
        origin: "amb-07".into(),
        icb: "QHM".into(),
        care_setting: CareSetting::AmbulanceOnScene,
        requester: Requester::default(),
        patient: Patient::default(),
        service: Service { line: ServiceLine::Dermatology, channel: Channel::Call, priority: Priority::Urgent },
        summary: "Spreading rash with fever, 40 minutes".into(),
        draft: false,
    };
    let mut doc = SessionDoc::create(&new, automerge::ActorId::from([1u8; 16]), T0).unwrap();
    for m in 0..messages {
        let id = format!("m{seq}-{m}");
        let msg = NewMessage {
            clinician: None,
            id: id.clone(),
            author: "amb-07".into(),
            side: Side::Requester,
            text: format!("Observation {m}: lesion 14 mm, irregular border, spreading since the last message"),
            reply_to: None,
        };
        doc.add_message(&msg, T0 + m as i64).unwrap();
        doc.add_receipt(&id, ReceiptLevel::Hub, "hub-qhm", T0 + 10).unwrap();
        doc.add_receipt(&id, ReceiptLevel::Desk, "desk-a", T0 + 20).unwrap();
    }
    let call = || format!("c{seq}");
    let figures = GateFigures {
        verdict: Verdict::Call,
        mos: 4.1,
        r: 82.0,
        rtt_ms: 61.5,
        jitter_ms: 4.2,
        loss: 0.0,
        probes: 50,
        reason: String::new(),
    };
    for e in [
        RoutingEntry::Escalate { call: call(), by: "amb-07".into() },
        RoutingEntry::Gate { call: call(), figures },
        RoutingEntry::Ring { call: call(), desk: "desk-a".into(), attempt: 1, ring_s: 20 },
        RoutingEntry::Answer { call: call(), desk: "desk-a".into(), attempt: 1 },
        RoutingEntry::Connected {
            call: call(),
            desk: "desk-a".into(),
            attempt: 1,
            seen: None,
            ms_from_ring: Some(900),
        },
    ] {
        doc.append_routing(&e, T0 + 100).unwrap();
    }
    doc
}

/// The fastest of `rounds` passes over every document, in microseconds per document.
fn per_doc_us(rounds: usize, n: usize, mut pass: impl FnMut() -> usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let t = Instant::now();
        let seen = pass();
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        assert_eq!(seen, n);
        best = best.min(us);
    }
    best
}

fn main() {
    let n = 1_000;
    println!(
        "| session | view, one pass (us per session) | view, object by object (us) | hydrate, the baseline (us) | one pass / by object | one pass / hydrate |"
    );
    println!("|---|---|---|---|---|---|");
    for messages in [1usize, 4, 16] {
        let mut docs: Vec<SessionDoc> = (0..n as u64).map(|i| session(i, messages)).collect();
        let raw: Vec<AutoCommit> = docs.iter_mut().map(|d| AutoCommit::load(&d.save()).unwrap()).collect();
        let view = per_doc_us(5, n, || {
            docs.iter().map(|d| d.view().unwrap()).filter(|v| v.messages.len() == messages).count()
        });
        let by_object = per_doc_us(5, n, || {
            docs.iter().map(|d| d.view_object_by_object().unwrap()).filter(|v| v.messages.len() == messages).count()
        });
        let hydrate = per_doc_us(5, n, || {
            raw.iter()
                .map(|d| d.hydrate(&ROOT, None).unwrap())
                .filter(|v| matches!(v, automerge::hydrate::Value::Map(_)))
                .count()
        });
        println!(
            "| {messages} message(s), a connected call | {view:.1} | {by_object:.1} | {hydrate:.1} | {:.2} | {:.2} |",
            view / by_object,
            view / hydrate
        );
    }
}
