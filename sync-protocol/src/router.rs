//! The hub's call router, written once: what one routing step decides for one session, as
//! data. The node's router (`outpost run` on a hub) and the simulator's hub both call [`route`]
//! and apply its [`Write`]s to their copy of the session with [`Write::apply`]; they differ only
//! in how they measure the requester's link, keep time and store the result.
//!
//! A step reads the hub's own directory line for the session's service line (its rota, hours,
//! channels and out-of-area fallback), who holds the session, the requester's path as measured,
//! and decides with [`next_action`]: measure, pass the link gate, ring, give up on a desk,
//! connect, arrange a callback (a closed line, a line with no calls, no answer, a poor link, a
//! case not delivered in time), or hand the call to another ICB's hub. A hub routes a session
//! of another ICB only when the call was handed to it, and then shares the session with its own
//! rota's desks first so that they may hold it.

use crate::TimeMs;
use crate::call::{Action, CallbackCause, PathQuality, calls_of, next_action};
use crate::directory::LineEntry;
use crate::routing::{GateFigures, RoutingEntry, Since, Verdict};
use crate::session::{ModelError, SessionDoc, SessionView};
use crate::vocab::Status;

/// The hub that routes.
#[derive(Debug, Clone, Copy)]
pub struct Hub<'a> {
    /// Its node name.
    pub name: &'a str,
    /// Its ICB.
    pub icb: Option<&'a str>,
}

/// One change a routing step makes to the session, in order. Each is one durable write.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A federated hub shares the session with its rota's desks (outside the session's ICB)
    /// so that they may hold it, before it rings any of them.
    ShareWithRota {
        /// The desks not yet shared with.
        desks: Vec<String>,
    },
    /// The session's hub hands the call to another ICB's hub: the share that lets that hub
    /// hold the session and the `federate` entry, in one change.
    Federate {
        /// The other ICB's hub.
        hub: String,
        /// The `federate` entry.
        entry: RoutingEntry,
    },
    /// The link gate's figures, written before a callback the link was the reason for.
    Gate {
        /// The `gate` entry.
        entry: RoutingEntry,
    },
    /// A routing step, and the status it moves the session to (never backwards).
    Step {
        /// The entry.
        entry: RoutingEntry,
        /// `connected` after a connection, `awaiting_reply` after a callback.
        status: Option<Status>,
    },
}

impl Write {
    /// What the step is, for the audit chain (`call.share`, `call.federate`, `call.gate`,
    /// `call.route`).
    pub fn audit_action(&self) -> &'static str {
        match self {
            Write::ShareWithRota { .. } => "call.share",
            Write::Federate { .. } => "call.federate",
            Write::Gate { .. } => "call.gate",
            Write::Step { .. } => "call.route",
        }
    }

    /// Applies the write to a copy of the session (one change).
    pub fn apply(&self, doc: &mut SessionDoc, now: TimeMs) -> Result<(), ModelError> {
        match self {
            Write::ShareWithRota { desks } => {
                for desk in desks {
                    doc.share_with(desk, now)?;
                }
                Ok(())
            }
            Write::Federate { hub, entry } => {
                doc.share_with(hub, now)?;
                doc.append_routing(entry, now)
            }
            Write::Gate { entry } => doc.append_routing(entry, now),
            Write::Step { entry, status } => {
                doc.append_routing(entry, now)?;
                if let Some(st) = status
                    && doc.view()?.status < *st
                {
                    doc.set_status(*st, now)?;
                }
                Ok(())
            }
        }
    }
}

/// What one routing step decided for one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The escalation.
    pub call: String,
    /// The node whose voice this hub relays to the desk: the requester (whose path is
    /// measured), or for a call handed over from another ICB, the hub that handed it.
    pub requester: String,
    /// The step taken.
    pub action: Action,
    /// What to write to the session, in order (nothing for `Wait` and `Measure`).
    pub writes: Vec<Write>,
}

/// One step of the hub's router for the session's first open escalation. `line` is this hub's
/// own directory entry for the session's service line (only the hub's copy decides who is
/// rung), `holders` the nodes known to hold the session, `quality` the requester's path as just
/// measured, `seen_ms` when this hub first saw the escalation (or the hand-over). `None` when
/// there is nothing for this hub to route.
#[allow(clippy::too_many_arguments)]
pub fn route(
    hub: Hub<'_>,
    view: &SessionView,
    line: Option<&LineEntry>,
    holders: &[String],
    quality: Option<&PathQuality>,
    seen_ms: TimeMs,
    now: TimeMs,
) -> Option<Decision> {
    let call = calls_of(view).into_iter().find(|c| c.is_open())?;
    let home = hub.icb == Some(view.identity.icb.as_str());
    let mut here = call.clone();
    let mut requester = call.by.clone();
    let mut writes = Vec::new();
    let first_ring_here = if home {
        call.rings.is_empty()
    } else {
        // Another ICB's session: this hub routes it only if the call was handed to it.
        let fed = call.federated.clone().filter(|f| f.hub == hub.name)?;
        here.federated = None;
        requester = fed.from.clone();
        // Its desks are outside the session's ICB: share it with them so that they may hold it.
        let desks: Vec<String> = line
            .iter()
            .flat_map(|l| l.rota.iter().map(|d| d.desk.clone()))
            .filter(|d| !view.shared_with.contains(d))
            .collect();
        if !desks.is_empty() {
            writes.push(Write::ShareWithRota { desks });
        }
        !call.rings.iter().any(|r| r.2 >= fed.at)
    };
    let refusal = line.filter(|_| first_ring_here).and_then(|l| l.call_refusal(now));
    let fallback = line.filter(|_| home).and_then(|l| l.fallback_hub.clone());
    let action = match (refusal, &fallback) {
        // Closed here (or no calls here), and no other ICB's line to try.
        (Some(reason), None) => Action::Callback { cause: CallbackCause::LineClosed, reason, rating: None },
        // Closed here: straight to the federated hub's line, the link gate first.
        (Some(_), Some(other)) => next_action(&here, &[], view, holders, Some(other), quality, seen_ms, now),
        (None, _) => {
            let rota = line.map(|l| l.rota.as_slice()).unwrap_or_default();
            next_action(&here, rota, view, holders, fallback.as_deref(), quality, seen_ms, now)
        }
    };
    let c = || call.call.clone();
    let step = |entry, status| Write::Step { entry, status };
    match &action {
        Action::Wait | Action::Measure => {}
        Action::Federate { hub: other } => writes.push(Write::Federate {
            hub: other.clone(),
            entry: RoutingEntry::Federate { call: c(), hub: other.clone(), from: hub.name.into() },
        }),
        Action::GatePassed(r, q) => {
            writes.push(step(RoutingEntry::Gate { call: c(), figures: GateFigures::of(Verdict::Call, r, q, "") }, None))
        }
        Action::Ring { desk, attempt, ring_s } => writes
            .push(step(RoutingEntry::Ring { call: c(), desk: desk.clone(), attempt: *attempt, ring_s: *ring_s }, None)),
        Action::NoAnswer { desk, attempt } => {
            writes.push(step(RoutingEntry::NoAnswer { call: c(), desk: desk.clone(), attempt: *attempt }, None))
        }
        Action::Connected { desk, attempt, rung_ms } => writes.push(step(
            RoutingEntry::Connected {
                call: c(),
                desk: desk.clone(),
                attempt: *attempt,
                // Measured on this hub's clock from when it first saw the call: the request (at
                // the session's hub) or the hand-over (at a federated hub).
                seen: Some((if home { Since::Escalate } else { Since::Handover }, now - seen_ms)),
                ms_from_ring: Some(now - rung_ms),
            },
            Some(Status::Connected),
        )),
        Action::Callback { reason, rating, .. } => {
            if let Some((r, q)) = rating {
                // The gate's figures, so that the clinician sees why.
                writes.push(Write::Gate {
                    entry: RoutingEntry::Gate { call: c(), figures: GateFigures::of(Verdict::Callback, r, q, reason) },
                });
            }
            let mos = rating.as_ref().map(|(r, _)| r.mos);
            writes.push(step(
                RoutingEntry::Callback { call: c(), reason: reason.clone(), mos, by: None },
                Some(Status::AwaitingReply),
            ));
        }
    }
    Some(Decision { call: call.call, requester, action, writes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::RotaDesk;
    use crate::directory::Hours;
    use crate::session::{NewSession, Patient, Requester, Service, SessionId};
    use crate::vocab::{CareSetting, Channel, Priority, ServiceLine};

    const T0: TimeMs = 1_796_360_400_000;

    fn escalated() -> SessionDoc {
        let new = NewSession {
            id: SessionId::from_parts(T0, 1),
            origin: "amb-07".into(),
            icb: "QHM".into(),
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester::default(),
            patient: Patient::default(),
            service: Service { line: ServiceLine::Cardiology, channel: Channel::Call, priority: Priority::Urgent },
            summary: "chest pain".into(),
            draft: false,
        };
        let mut doc = SessionDoc::create(&new, automerge::ActorId::from(vec![2u8; 16]), T0).unwrap();
        let escalate = RoutingEntry::Escalate { call: "k1".into(), by: "amb-07".into() };
        doc.append_routing(&escalate, T0 + 1_000).unwrap();
        doc
    }

    fn line(hours: &str, rota: &[&str], fallback: Option<&str>) -> LineEntry {
        LineEntry {
            line: ServiceLine::Cardiology,
            hours: Hours::parse(hours).unwrap(),
            channels: Channel::ALL.to_vec(),
            rota: rota.iter().map(|d| RotaDesk { desk: d.to_string(), ring_s: 20 }).collect(),
            fallback_hub: fallback.map(str::to_string),
            updated_ms: T0,
        }
    }

    #[test]
    fn a_closed_line_without_a_fallback_ends_the_call_in_a_callback_that_says_so() {
        let mut doc = escalated();
        let view = doc.view().unwrap();
        let hub = Hub { name: "hub-qhm", icb: Some("QHM") };
        // 05:00 UK time on a Friday: a line open 08:00-18:30 on weekdays is closed.
        let closed = line("mon-fri 08:00-18:30", &["desk-1"], None);
        let d = route(hub, &view, Some(&closed), &["desk-1".into()], None, T0, T0 + 2_000).unwrap();
        let Action::Callback { reason, cause, .. } = &d.action else { panic!("{:?}", d.action) };
        assert!(reason.contains("closed"), "{reason}");
        assert_eq!(*cause, CallbackCause::LineClosed);
        assert_eq!(d.writes.len(), 1);
        for w in &d.writes {
            w.apply(&mut doc, T0 + 2_000).unwrap();
        }
        assert_eq!(doc.view().unwrap().status, Status::AwaitingReply);
    }

    #[test]
    fn another_icbs_hub_routes_only_a_call_handed_to_it_sharing_with_its_desks_first() {
        let mut doc = escalated();
        let view = doc.view().unwrap();
        let other = Hub { name: "hub-qox", icb: Some("QOX") };
        let theirs = line("24/7", &["desk-ox-1"], None);
        assert!(route(other, &view, Some(&theirs), &[], None, T0, T0 + 2_000).is_none(), "not handed over yet");
        // The home hub, with no desk of its own, hands the call over (after the link gate).
        let home = Hub { name: "hub-qhm", icb: Some("QHM") };
        let ours = line("24/7", &[], Some("hub-qox"));
        let good = PathQuality { rtt_ms: 60.0, jitter_ms: 5.0, loss: 0.0, burst_ratio: 1.0, probes: 50 };
        let mut now = T0 + 2_000;
        for _ in 0..3 {
            let d = route(home, &doc.view().unwrap(), Some(&ours), &[], Some(&good), T0, now).unwrap();
            for w in &d.writes {
                w.apply(&mut doc, now).unwrap();
            }
            now += 1_000;
            if matches!(d.action, Action::Federate { .. }) {
                break;
            }
        }
        let view = doc.view().unwrap();
        assert!(view.shared_with.contains(&"hub-qox".to_string()));
        let d = route(other, &view, Some(&theirs), &[], Some(&good), now, now).unwrap();
        assert_eq!(d.requester, "hub-qhm", "the federated hub relays the handing hub's voice");
        assert_eq!(d.writes.first(), Some(&Write::ShareWithRota { desks: vec!["desk-ox-1".into()] }));
    }
}
