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

use std::collections::{BTreeMap, VecDeque};

use crate::TimeMs;
use crate::call::{
    ADPCM_32K, Action, CallState, CallbackCause, GateListen, Listen, MAX_CALLS_PER_REQUESTER_HOUR,
    MAX_LIVE_CALLS_PER_REQUESTER, PathQuality, calls_of, next_action, waits_until,
};
use crate::directory::LineEntry;
use crate::routing::{GateFigures, RoutingEntry, Since, Verdict};
use crate::session::{ModelError, SessionDoc, SessionView};
use crate::vocab::{Outcome, Side, Status};
use crate::wire::DocId;

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
    /// After a call, the sides that recorded no outcome in time, flagged `not_reported` by the hub.
    NotReported {
        /// The sides.
        sides: Vec<Side>,
        /// The hub that flags them.
        by: String,
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
            Write::NotReported { .. } => "outcome.not_reported",
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
            Write::NotReported { sides, by } => {
                for side in sides {
                    doc.set_outcome(*side, Outcome::NotReported, by, now)?;
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
    /// For a `Wait`: when to look again although the session does not change
    /// ([`waits_until`]).
    pub wait_until: Option<TimeMs>,
}

/// One step of the hub's router for the session's first open escalation. `line` is this hub's
/// own directory entry for the session's service line (only the hub's copy decides who is
/// rung), `holders` the nodes known to hold the session, `quality` the requester's path as just
/// measured, `seen_ms` when this hub first saw the escalation (or the hand-over: the
/// connection's set-up time counts from it, the patient's whole wait), `wait_from_ms` when the
/// wait for a desk to hold the case began (`seen_ms`, or for a call that waited its turn behind
/// its device's others, when it was taken on). `None` when there is nothing for this hub to
/// route.
#[allow(clippy::too_many_arguments)]
pub fn route(
    hub: Hub<'_>,
    view: &SessionView,
    line: Option<&LineEntry>,
    holders: &[String],
    quality: Option<&PathQuality>,
    seen_ms: TimeMs,
    wait_from_ms: TimeMs,
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
        (Some(refusal), None) => {
            Action::Callback { cause: CallbackCause::LineClosed, reason: refusal.to_string(), rating: None }
        }
        // Closed here: straight to the federated hub's line, the link gate first.
        (Some(_), Some(other)) => next_action(&here, &[], view, holders, Some(other), quality, wait_from_ms, now),
        (None, _) => {
            let rota = line.map(|l| l.rota.as_slice()).unwrap_or_default();
            next_action(&here, rota, view, holders, fallback.as_deref(), quality, wait_from_ms, now)
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
                seen: Some((if home { Since::Escalate } else { Since::Handover }, now.saturating_sub(seen_ms))),
                ms_from_ring: Some(now.saturating_sub(*rung_ms)),
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
    let wait_until = if action == Action::Wait { waits_until(&here, wait_from_ms, now) } else { None };
    Some(Decision { call: call.call, requester, action, writes, wait_until })
}

/// A call this hub handed to another ICB's hub, which has since connected it: this hub relays
/// the requester's voice to that hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// The escalation.
    pub call: String,
    /// The requester, whose voice this hub relays.
    pub requester: String,
    /// The federated hub that connected the call.
    pub hub: String,
}

/// What one step of the [`Router`] came to for a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A decision: apply its writes, in order. After [`Action::Measure`] the router listens to
    /// the requester's path: measure window 0 and report it with [`Router::heard`].
    Decided(Decision),
    /// A window of the gate's probes is under way: nothing to do until it is heard.
    Listening,
    /// Nothing left for this hub to route in the session: it is no longer followed. `relay`
    /// names a call this hub handed over that the other hub has connected.
    Done {
        /// The voice this hub now relays, if any.
        relay: Option<Relay>,
    },
    /// The router does not follow this session (see [`Router::follow`]).
    NotFollowed,
}

/// What is due at a [`Router::handle_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Due {
    /// Step the session's escalation ([`Router::step`]).
    Route(DocId),
    /// The call connected long enough ago: flag the outcomes still missing ([`not_reported`]).
    Outcomes(DocId),
}

/// A mistake planted in the router on purpose, to show that the simulator catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// The link gate judges the first window of probes it hears, without listening again
    /// after a lossy second.
    GateHearsOneWindow,
    /// Missing outcomes are flagged as soon as a call connects, not after the wait.
    FlagsOutcomesAtOnce,
}

impl Followed {
    /// Followed from `now`, nothing done for it yet.
    fn from(now: TimeMs) -> Followed {
        Followed {
            seen_ms: now,
            taken_ms: None,
            quality: None,
            listening: None,
            wake_ms: None,
            requester: None,
            waiting: None,
            call: None,
        }
    }
}

/// How often a call waiting behind its device's others is looked at again, ms.
const TURN_POLL_MS: TimeMs = 5_000;

/// What [`Router::take_on`] came to.
enum TakeOn {
    /// Counted: route it.
    Taken,
    /// Past the hour's calls for its device: this callback ends it.
    Refused(Decision),
    /// Its device has as many calls being put through as it may: it waits its turn.
    Wait(Decision),
}

/// One escalation the router follows.
#[derive(Debug, Clone)]
struct Followed {
    /// When this hub first saw it (or, after a restart, saw it again), its clock: the
    /// connection's `ms_from_escalate` counts from it.
    seen_ms: TimeMs,
    /// For a call that waited its turn ([`Router::take_on`]), when it was taken on: the wait for
    /// a desk to hold the case counts from it (from `seen_ms` otherwise).
    taken_ms: Option<TimeMs>,
    /// The requester's path as the gate judged it.
    quality: Option<PathQuality>,
    /// The gate, while it listens.
    listening: Option<GateListen>,
    /// When to step it again without a change to the session.
    wake_ms: Option<TimeMs>,
    /// The device that asked for it, once the call is counted against it
    /// ([`Router::take_on`]).
    requester: Option<String>,
    /// The device whose calls this one waits behind ([`MAX_LIVE_CALLS_PER_REQUESTER`]).
    waiting: Option<String>,
    /// The call counted ([`Router::take_on`]): the session's first open escalation then. Another
    /// call of the session becoming the open one is a call of its own, counted afresh.
    call: Option<String>,
}

/// The hub's call router over time, in the manner of a sans-IO protocol state machine: which
/// escalations it follows, when each first reached it, what the gate measured, and when it
/// must look again (the end of a ring, of the wait for a desk to hold the case, of the wait
/// for a federated hub, of the wait for outcomes after a call). It does no I/O and reads no
/// clock: the driver (the node's `outpost run` on a hub, or the simulator's hub) tells it
/// of changed sessions ([`Router::follow`]), steps what is due ([`Router::handle_timeout`],
/// [`Router::step`]), measures paths when asked ([`Router::heard`]), applies the writes, and
/// sleeps until [`Router::poll_timeout`] or the next change. State lives in memory only: a
/// restarted hub follows every open escalation afresh.
#[derive(Debug, Clone)]
pub struct Router {
    name: String,
    icb: Option<String>,
    outcome_wait_ms: TimeMs,
    followed: BTreeMap<DocId, Followed>,
    outcomes: BTreeMap<DocId, TimeMs>,
    /// When each requesting device's calls were taken on, in the last hour.
    taken: BTreeMap<String, VecDeque<TimeMs>>,
    /// Calls of one device under way at once, and taken on in an hour (0: no limit).
    call_limits: (usize, usize),
    planted: Option<PlantedBug>,
}

impl Router {
    /// The router of hub `name` (of `icb`), which flags outcomes still missing
    /// `outcome_wait_ms` after a call connects.
    pub fn new(name: &str, icb: Option<&str>, outcome_wait_ms: TimeMs) -> Router {
        Router {
            name: name.to_string(),
            icb: icb.map(str::to_string),
            outcome_wait_ms,
            followed: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            taken: BTreeMap::new(),
            call_limits: (MAX_LIVE_CALLS_PER_REQUESTER, MAX_CALLS_PER_REQUESTER_HOUR),
            planted: None,
        }
    }

    /// With other limits than [`MAX_LIVE_CALLS_PER_REQUESTER`] calls of one device under way
    /// at once and [`MAX_CALLS_PER_REQUESTER_HOUR`] taken on in an hour (a deployer's
    /// settings; 0 turns one off).
    pub fn with_call_limits(mut self, at_once: usize, per_hour: usize) -> Router {
        self.call_limits = (at_once, per_hour);
        self
    }

    /// Plants a bug, for the simulator's planted-bug runs.
    pub fn plant(&mut self, bug: PlantedBug) {
        self.planted = Some(bug);
    }

    /// Whether a session with these calls has anything for a router to follow: an open escalation.
    /// A node's session index keeps this answer for each session it holds (its schema 9): a
    /// change to what it answers (here, in [`CallState::is_open`] or in how the calls are read
    /// from the routing log) needs a store migration that forgets the kept answers.
    pub fn wants(calls: &[CallState]) -> bool {
        calls.iter().any(CallState::is_open)
    }

    /// The session changed, or holds an open escalation (see [`Router::wants`]): follow it from
    /// `now` if not yet followed, and step it at once (unless the gate is listening).
    pub fn follow(&mut self, doc: DocId, now: TimeMs) {
        let f = self.followed.entry(doc).or_insert_with(|| Followed::from(now));
        if f.listening.is_none() {
            f.wake_ms = Some(now);
        }
    }

    /// Stops following the session (its steps fail: the driver reported why).
    pub fn forget(&mut self, doc: &DocId) {
        self.followed.remove(doc);
    }

    /// Whether the router follows the session.
    pub fn follows(&self, doc: &DocId) -> bool {
        self.followed.contains_key(doc)
    }

    /// A call connected in the session (found at a restart): flag its missing outcomes after the
    /// wait. Only the session's own hub may write its outcomes (`docs/schema.md`): another ICB's
    /// hub that connected a call handed to it leaves them to the session's hub.
    pub fn await_outcomes(&mut self, doc: DocId, view: &SessionView, now: TimeMs) {
        if self.icb.as_deref() != Some(view.identity.icb.as_str()) {
            return;
        }
        let wait = if self.planted == Some(PlantedBug::FlagsOutcomesAtOnce) { 0 } else { self.outcome_wait_ms };
        self.outcomes.entry(doc).or_insert(now + wait);
    }

    /// Looks again at once at every session followed (unless the gate listens for it): after
    /// change notices were lost, and now and then in case one was.
    pub fn wake_all(&mut self, now: TimeMs) {
        for f in self.followed.values_mut().filter(|f| f.listening.is_none()) {
            f.wake_ms = Some(now);
        }
    }

    /// One step for a followed session's escalation, from this hub's copy of the session, its
    /// own directory line for the session's service line, and the nodes known to hold it.
    pub fn step(
        &mut self,
        doc: DocId,
        view: &SessionView,
        line: Option<&LineEntry>,
        holders: &[String],
        now: TimeMs,
    ) -> Step {
        let open = calls_of(view).into_iter().find(|c| c.is_open()).map(|c| c.call);
        let Some(f) = self.followed.get_mut(&doc) else { return Step::NotFollowed };
        if f.listening.is_some() {
            return Step::Listening;
        }
        if (f.requester.is_some() || f.waiting.is_some()) && f.call != open {
            // The call counted ended without this router deciding it (its requester, or a desk,
            // asked for a callback) and another of the session's escalations is open: a tablet
            // ending each call it asked for, with the next already asked, would otherwise have
            // every one rung on one count. It is counted, measured and waited for afresh.
            *f = Followed::from(now);
        }
        if f.requester.is_none() {
            match self.take_on(doc, view, now) {
                TakeOn::Taken => {}
                TakeOn::Refused(refused) => {
                    self.followed.remove(&doc);
                    return Step::Decided(refused);
                }
                TakeOn::Wait(wait) => {
                    if let Some(f) = self.followed.get_mut(&doc) {
                        f.wake_ms = wait.wait_until;
                    }
                    return Step::Decided(wait);
                }
            }
        }
        let Some(f) = self.followed.get_mut(&doc) else { return Step::NotFollowed };
        let hub = Hub { name: &self.name, icb: self.icb.as_deref() };
        let wait_from = f.taken_ms.unwrap_or(f.seen_ms);
        let Some(decision) = route(hub, view, line, holders, f.quality.as_ref(), f.seen_ms, wait_from, now) else {
            self.followed.remove(&doc);
            let relay = calls_of(view).into_iter().rev().find_map(|c| {
                let fed = c.federated.as_ref().filter(|f| f.from == self.name)?;
                c.connected.as_ref().map(|_| Relay {
                    call: c.call.clone(),
                    requester: c.by.clone(),
                    hub: fed.hub.clone(),
                })
            });
            if relay.is_some() {
                self.await_outcomes(doc, view, now);
            }
            return Step::Done { relay };
        };
        match &decision.action {
            Action::Measure => {
                f.listening = Some(GateListen::default());
                f.wake_ms = None;
            }
            Action::Connected { .. } => {
                self.followed.remove(&doc);
                self.await_outcomes(doc, view, now);
            }
            Action::Callback { .. } => {
                self.followed.remove(&doc);
            }
            // At the end of the ring, of the wait for a desk or for the other hub.
            Action::Wait => f.wake_ms = decision.wait_until.map(|w| w.max(now + 1)),
            // The next step follows at once.
            Action::GatePassed(..) | Action::Ring { .. } | Action::NoAnswer { .. } | Action::Federate { .. } => {
                f.wake_ms = Some(now)
            }
        }
        Step::Decided(decision)
    }

    /// The first step for a followed session's escalation: counted against its requesting
    /// device; refused with a callback that says why when that device has had
    /// [`MAX_CALLS_PER_REQUESTER_HOUR`] calls taken on (or waiting to be) in the last hour;
    /// made to wait its turn, ringing no one, while the device has
    /// [`MAX_LIVE_CALLS_PER_REQUESTER`] calls being put through. Only a call of this hub's own
    /// ICB that nothing has been done for yet is checked: one already measured or rung (found
    /// again after a restart) or handed over by another hub is counted as it stands.
    fn take_on(&mut self, doc: DocId, view: &SessionView, now: TimeMs) -> TakeOn {
        let Some(call) = calls_of(view).into_iter().find(|c| c.is_open()) else { return TakeOn::Taken };
        let home = self.icb.as_deref() == Some(view.identity.icb.as_str());
        let by = call.by.clone();
        let fresh = home && call.rings.is_empty() && call.gate.is_none() && call.gate_refused.is_none();
        if fresh && call.federated.is_none() {
            const HOUR: TimeMs = 3_600_000;
            let mine = |f: &Option<String>| f.as_deref() == Some(by.as_str());
            let live = self.followed.values().filter(|f| mine(&f.requester)).count();
            let waiting = self.followed.iter().filter(|(d, f)| **d != doc && mine(&f.waiting)).count();
            // The device's calls waiting that were asked for before this one go first: a call
            // asked later (stepped at once on its change) must not take a freed place from a
            // waiter looked at again only every TURN_POLL_MS.
            let since = self.followed.get(&doc).map_or(now, |f| f.seen_ms);
            let ahead = self
                .followed
                .iter()
                .filter(|(d, f)| **d != doc && mine(&f.waiting) && (f.seen_ms, **d) < (since, doc))
                .count();
            if self.taken.len() > 4096 {
                self.taken.retain(|_, t| t.back().is_some_and(|last| now - *last < HOUR));
            }
            let taken = self.taken.entry(by.clone()).or_default();
            taken.retain(|t| now - *t < HOUR && *t <= now + HOUR);
            // The hour's calls: those taken on, and those waiting to be.
            let asked = taken.len() + waiting;
            let (at_once, per_hour) = self.call_limits;
            if per_hour > 0 && asked >= per_hour {
                let reason = format!(
                    "{by} has asked for {asked} calls in the last hour, the most one device may: a consultant will \
                     call back"
                );
                let entry =
                    RoutingEntry::Callback { call: call.call.clone(), reason: reason.clone(), mos: None, by: None };
                return TakeOn::Refused(Decision {
                    call: call.call.clone(),
                    requester: by,
                    action: Action::Callback { cause: CallbackCause::TooManyCalls, reason, rating: None },
                    writes: vec![Write::Step { entry, status: Some(Status::AwaitingReply) }],
                    wait_until: None,
                });
            }
            if at_once > 0 && live + ahead >= at_once {
                // Not refused: it waits its turn (a crew back in coverage with calls asked for
                // offline, the newest perhaps the patient in front of them), and rings no one
                // until one of the device's calls connects or ends.
                if let Some(f) = self.followed.get_mut(&doc) {
                    f.waiting = Some(by.clone());
                    f.call = Some(call.call.clone());
                }
                return TakeOn::Wait(Decision {
                    call: call.call.clone(),
                    requester: by,
                    action: Action::Wait,
                    writes: Vec::new(),
                    wait_until: Some(now + TURN_POLL_MS),
                });
            }
            taken.push_back(now);
        }
        if let Some(f) = self.followed.get_mut(&doc) {
            if f.waiting.is_some() {
                // Nothing was done for it while it waited (no desk asked to hold its case):
                // the wait for a desk counts from now; its set-up time still from its request.
                f.taken_ms = Some(now);
            }
            f.requester = Some(by);
            f.waiting = None;
            f.call = Some(call.call.clone());
        }
        TakeOn::Taken
    }

    /// A window of the gate's probes was heard for the session: the shared rule says whether to
    /// listen again (measure that window next) or judge; after a judgement the session is
    /// stepped at once. `None` when the gate was not listening for it.
    pub fn heard(&mut self, doc: DocId, window: PathQuality, now: TimeMs) -> Option<Listen> {
        let f = self.followed.get_mut(&doc)?;
        let listen = f.listening.as_mut()?;
        let verdict = match listen.heard(window, &ADPCM_32K) {
            Listen::Again(_) if self.planted == Some(PlantedBug::GateHearsOneWindow) => Listen::Judge(window),
            v => v,
        };
        if let Listen::Judge(q) = verdict {
            f.quality = Some(q);
            f.listening = None;
            f.wake_ms = Some(now);
        }
        Some(verdict)
    }

    /// When something is next due, if anything is (this hub's clock).
    pub fn poll_timeout(&self) -> Option<TimeMs> {
        let wakes = self.followed.values().filter_map(|f| f.wake_ms);
        wakes.chain(self.outcomes.values().copied()).min()
    }

    /// What is due at `now`, in order: each is handed out once.
    pub fn handle_timeout(&mut self, now: TimeMs) -> Vec<Due> {
        let mut due = Vec::new();
        for (doc, f) in self.followed.iter_mut() {
            if f.wake_ms.is_some_and(|w| w <= now) {
                f.wake_ms = None;
                due.push(Due::Route(*doc));
            }
        }
        let done: Vec<DocId> = self.outcomes.iter().filter(|(_, t)| **t <= now).map(|(d, _)| *d).collect();
        for doc in done {
            self.outcomes.remove(&doc);
            due.push(Due::Outcomes(doc));
        }
        due
    }
}

/// The write that flags each side of the session that has recorded no outcome `not_reported`
/// (by the hub, after the wait that follows a call); `None` if both sides recorded one.
pub fn not_reported(view: &SessionView, by: &str) -> Option<Write> {
    let mut sides = Vec::new();
    if view.outcome.requester.is_none() {
        sides.push(Side::Requester);
    }
    if view.outcome.responder.is_none() {
        sides.push(Side::Responder);
    }
    (!sides.is_empty()).then(|| Write::NotReported { sides, by: by.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{HOLD_WAIT_MS, HOLDERS_POLL_MS, RotaDesk};
    use crate::directory::Hours;
    use crate::session::{LogValue, NewSession, Patient, Requester, Service, SessionId};
    use crate::vocab::{CareSetting, Channel, Priority, ServiceLine};

    const T0: TimeMs = 1_796_360_400_000;

    fn escalated() -> SessionDoc {
        escalated_by(1, "amb-07").0
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
        let d = route(hub, &view, Some(&closed), &["desk-1".into()], None, T0, T0, T0 + 2_000).unwrap();
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
        assert!(route(other, &view, Some(&theirs), &[], None, T0, T0, T0 + 2_000).is_none(), "not handed over yet");
        // The home hub, with no desk of its own, hands the call over (after the link gate).
        let home = Hub { name: "hub-qhm", icb: Some("QHM") };
        let ours = line("24/7", &[], Some("hub-qox"));
        let good = PathQuality { rtt_ms: 60.0, jitter_ms: 5.0, loss: 0.0, burst_ratio: 1.0, probes: 50 };
        let mut now = T0 + 2_000;
        for _ in 0..3 {
            let d = route(home, &doc.view().unwrap(), Some(&ours), &[], Some(&good), T0, T0, now).unwrap();
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
        let d = route(other, &view, Some(&theirs), &[], Some(&good), now, now, now).unwrap();
        assert_eq!(d.requester, "hub-qhm", "the federated hub relays the handing hub's voice");
        assert_eq!(d.writes.first(), Some(&Write::ShareWithRota { desks: vec!["desk-ox-1".into()] }));
    }
    /// Applies a decision's writes to the session, as a driver does.
    fn apply(doc: &mut SessionDoc, step: &Step, now: TimeMs) -> Action {
        let Step::Decided(d) = step else { panic!("no decision: {step:?}") };
        for w in &d.writes {
            w.apply(doc, now).unwrap();
        }
        d.action.clone()
    }

    /// Steps everything due at `now`, applying the writes; the actions taken, in order.
    fn drive(
        router: &mut Router,
        doc: &mut SessionDoc,
        line: &LineEntry,
        holders: &[String],
        now: TimeMs,
    ) -> Vec<Action> {
        let id = doc.view().unwrap().id.to_bytes();
        let mut actions = Vec::new();
        loop {
            let due = router.handle_timeout(now);
            if due.is_empty() {
                return actions;
            }
            for d in due {
                assert_eq!(d, Due::Route(id));
                let step = router.step(id, &doc.view().unwrap(), Some(line), holders, now);
                if matches!(step, Step::Decided(_)) {
                    actions.push(apply(doc, &step, now));
                }
            }
        }
    }

    /// The outcome wait of the tests' routers: an hour.
    const WAIT: TimeMs = 3_600_000;

    /// An escalated session of ICB QHM, and the router of its hub following it from `now`.
    fn escalated_and_followed(now: TimeMs) -> (SessionDoc, DocId, Router) {
        let doc = escalated();
        let id = doc.view().unwrap().id.to_bytes();
        let mut router = Router::new("hub-qhm", Some("QHM"), WAIT);
        router.follow(id, now);
        (doc, id, router)
    }

    /// Drives a followed call from its first step at `t` to connected at `desk` (the gate hears a
    /// good path; the desk answers 5 s in); returns when it connected.
    fn connect(router: &mut Router, doc: &mut SessionDoc, rota: &LineEntry, desk: &str, t: TimeMs) -> TimeMs {
        let id = doc.view().unwrap().id.to_bytes();
        let holders = [desk.to_string()];
        assert_eq!(drive(router, doc, rota, &holders, t), vec![Action::Measure]);
        router.heard(id, GOOD, t + 1_000);
        drive(router, doc, rota, &holders, t + 1_000);
        let answer = RoutingEntry::Answer { call: "k1".into(), desk: desk.into(), attempt: 1 };
        doc.append_routing(&answer, t + 5_000).unwrap();
        router.follow(id, t + 5_000);
        assert!(matches!(drive(router, doc, rota, &holders, t + 5_000)[..], [Action::Connected { .. }]));
        t + 5_000
    }

    const GOOD: PathQuality = PathQuality { rtt_ms: 60.0, jitter_ms: 5.0, loss: 0.0, burst_ratio: 1.0, probes: 50 };

    /// Session `n` of ICB QHM, escalated by device `by`, with its id.
    fn escalated_by(n: u128, by: &str) -> (SessionDoc, DocId) {
        let new = NewSession {
            id: SessionId::from_parts(T0, n),
            origin: by.into(),
            icb: "QHM".into(),
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester::default(),
            patient: Patient::default(),
            service: Service { line: ServiceLine::Cardiology, channel: Channel::Call, priority: Priority::Urgent },
            summary: "chest pain".into(),
            draft: false,
        };
        let mut doc = SessionDoc::create(&new, automerge::ActorId::from(vec![2u8; 16]), T0).unwrap();
        doc.append_routing(&RoutingEntry::Escalate { call: format!("k{n}"), by: by.into() }, T0 + 1_000).unwrap();
        let id = doc.view().unwrap().id.to_bytes();
        (doc, id)
    }

    #[test]
    fn one_device_has_four_calls_put_through_at_once_the_next_waiting_and_twenty_an_hour_the_rest_called_back() {
        let rota = line("24/7", &["desk-1"], None);
        let holders = ["desk-1".to_string()];
        let mut router = Router::new("hub-qhm", Some("QHM"), WAIT);
        let first = |doc: &mut SessionDoc, id: DocId, now: TimeMs, router: &mut Router| {
            router.follow(id, now);
            let step = router.step(id, &doc.view().unwrap(), Some(&rota), &holders, now);
            let Step::Decided(d) = step else { panic!("{step:?}") };
            for w in &d.writes {
                w.apply(doc, now).unwrap();
            }
            d.action
        };
        let t = T0 + 2_000;
        let mut docs: Vec<(SessionDoc, DocId)> = (1..=5).map(|n| escalated_by(n, "amb-07")).collect();
        for (n, (doc, id)) in docs.iter_mut().enumerate().take(4) {
            assert_eq!(first(doc, *id, t, &mut router), Action::Measure, "call {n}");
        }
        // A fifth at once from the same tablet rings no one yet: it waits its turn (it may be
        // the patient in front of the crew: not refused), and nothing is written.
        let (doc, id) = &mut docs[4];
        let before = doc.view().unwrap();
        assert_eq!(first(doc, *id, t, &mut router), Action::Wait);
        assert_eq!(doc.view().unwrap(), before);
        assert!(router.follows(id));
        assert_eq!(router.poll_timeout(), Some(t + 5_000), "looked at again");
        // Another device is not held back by it.
        let (mut other, other_id) = escalated_by(6, "amb-09");
        assert_eq!(first(&mut other, other_id, t, &mut router), Action::Measure);
        // Still four under way: it waits again. One ends: it is taken on.
        let step = router.step(*id, &doc.view().unwrap(), Some(&rota), &holders, t + 5_000);
        assert!(matches!(step, Step::Decided(Decision { action: Action::Wait, .. })), "{step:?}");
        router.forget(&docs[0].1);
        let (doc, id) = &mut docs[4];
        assert_eq!(first(doc, *id, t + 10_000, &mut router), Action::Measure);
        // As calls end, more are taken on, up to twenty in an hour.
        for (_, id) in &docs[1..] {
            router.forget(id);
        }
        for n in 7..=21u128 {
            let (mut doc, id) = escalated_by(n, "amb-07");
            assert_eq!(first(&mut doc, id, t + n as i64, &mut router), Action::Measure, "call {n}");
            router.forget(&id);
        }
        let (mut doc, id) = escalated_by(23, "amb-07");
        let action = first(&mut doc, id, t + 100, &mut router);
        assert!(
            matches!(&action, Action::Callback { cause: CallbackCause::TooManyCalls, reason, .. }
                if reason.contains("asked for 20 calls in the last hour")),
            "{action:?}"
        );
        // An hour on, the tablet may ask again.
        let (mut doc, id) = escalated_by(24, "amb-07");
        assert_eq!(first(&mut doc, id, t + 3_600_000 + 100, &mut router), Action::Measure);
        // A flood at once: four taken on, sixteen waiting, and the rest of the hour's asking
        // called back at once (the waiting count against the hour: a flood cannot pile up).
        let mut flooded = Router::new("hub-qhm", Some("QHM"), WAIT);
        let actions: Vec<Action> = (100..=121u128)
            .map(|n| {
                let (mut doc, id) = escalated_by(n, "amb-07");
                first(&mut doc, id, t, &mut flooded)
            })
            .collect();
        assert!(actions[..4].iter().all(|a| *a == Action::Measure), "{actions:?}");
        assert!(actions[4..20].iter().all(|a| *a == Action::Wait), "{actions:?}");
        assert!(
            actions[20..].iter().all(|a| matches!(a, Action::Callback { cause: CallbackCause::TooManyCalls, .. })),
            "{actions:?}"
        );
        // Waiting its turn means its turn: a place freed goes to the call waiting longest, not
        // to one asked for since (stepped at once on its change).
        let mut queue = Router::new("hub-qhm", Some("QHM"), WAIT);
        let mut calls: Vec<(SessionDoc, DocId)> = (200..=205u128).map(|n| escalated_by(n, "amb-07")).collect();
        for (i, (doc, id)) in calls.iter_mut().enumerate() {
            let at = t + i as i64;
            let want = if i < 4 { Action::Measure } else { Action::Wait };
            assert_eq!(first(doc, *id, at, &mut queue), want, "call {i}");
        }
        queue.forget(&calls[0].1);
        let (mut late, late_id) = escalated_by(199, "amb-07");
        assert_eq!(first(&mut late, late_id, t + 100, &mut queue), Action::Wait, "asked last, it waits");
        let (doc, id) = &mut calls[4];
        assert_eq!(first(doc, *id, t + 5_000, &mut queue), Action::Measure, "the longest waiting goes first");
        // A call found again after a restart, already rung, is counted as it stands.
        let mut restarted = Router::new("hub-qhm", Some("QHM"), WAIT);
        for n in 30..=34u128 {
            let (mut doc, id) = escalated_by(n, "amb-07");
            let ring = RoutingEntry::Ring { call: format!("k{n}"), desk: "desk-1".into(), attempt: 1, ring_s: 20 };
            doc.append_routing(&ring, t).unwrap();
            restarted.follow(id, t);
            let step = restarted.step(id, &doc.view().unwrap(), Some(&rota), &holders, t);
            assert!(matches!(step, Step::Decided(Decision { action: Action::Wait, .. })), "call {n}: {step:?}");
        }
        // ... so a fresh sixth waits its turn, writing nothing.
        let (mut doc, id) = escalated_by(35, "amb-07");
        restarted.follow(id, t);
        let step = restarted.step(id, &doc.view().unwrap(), Some(&rota), &holders, t);
        assert!(
            matches!(&step, Step::Decided(Decision { action: Action::Wait, writes, wait_until: Some(w), .. })
                if writes.is_empty() && *w == t + 5_000),
            "{step:?}"
        );
        // The tablet cancels it: it is no longer followed, nor counted.
        let cancel = RoutingEntry::Callback {
            call: "k35".into(),
            reason: "cancel".into(),
            mos: None,
            by: Some("amb-07".into()),
        };
        doc.append_routing(&cancel, t + 1).unwrap();
        restarted.follow(id, t + 1);
        assert!(matches!(restarted.step(id, &doc.view().unwrap(), Some(&rota), &holders, t + 1), Step::Done { .. }));
        assert!(!restarted.follows(&id));
    }

    #[test]
    fn a_call_that_waited_its_turn_has_the_whole_wait_for_a_desk_to_hold_the_case_once_taken_on() {
        // Four of the tablet's calls wait for a desk to hold their cases; its fifth waits its
        // turn behind them until they end, the hold wait over. No desk was asked to hold the
        // fifth's case while it waited: once taken on, it has the whole hold wait.
        let rota = line("24/7", &["desk-1"], None);
        let mut router = Router::new("hub-qhm", Some("QHM"), WAIT);
        let t = T0 + 2_000;
        let at = |doc: &mut SessionDoc, now: TimeMs, router: &mut Router| {
            let id = doc.view().unwrap().id.to_bytes();
            router.follow(id, now);
            let step = router.step(id, &doc.view().unwrap(), Some(&rota), &[], now);
            apply(doc, &step, now)
        };
        let mut docs: Vec<SessionDoc> = (1..=5).map(|n| escalated_by(n, "amb-07").0).collect();
        for doc in docs.iter_mut() {
            assert_eq!(at(doc, t, &mut router), Action::Wait);
        }
        for doc in docs.iter_mut().take(4) {
            let action = at(doc, t + HOLD_WAIT_MS, &mut router);
            assert!(matches!(action, Action::Callback { cause: CallbackCause::CaseNotDelivered, .. }), "{action:?}");
        }
        let taken = t + HOLD_WAIT_MS + 1;
        let fifth = &mut docs[4];
        assert_eq!(at(fifth, taken, &mut router), Action::Wait, "taken on: its case is not held yet");
        assert_eq!(router.poll_timeout(), Some(taken + HOLDERS_POLL_MS));
        assert_eq!(at(fifth, taken + HOLD_WAIT_MS - 1, &mut router), Action::Wait);
        let action = at(fifth, taken + HOLD_WAIT_MS, &mut router);
        assert!(matches!(action, Action::Callback { cause: CallbackCause::CaseNotDelivered, .. }), "{action:?}");
    }

    #[test]
    fn a_call_that_waited_its_turn_counts_its_set_up_time_from_its_request() {
        // The patient's wait is from the request: the turn waited behind the tablet's other
        // call is part of it.
        let rota = line("24/7", &["desk-1"], None);
        let holders = ["desk-1".to_string()];
        let mut router = Router::new("hub-qhm", Some("QHM"), WAIT).with_call_limits(1, 0);
        let t = T0 + 2_000;
        let (mut ahead, ahead_id) = escalated_by(3, "amb-07");
        router.follow(ahead_id, t);
        assert_eq!(drive(&mut router, &mut ahead, &rota, &holders, t), vec![Action::Measure]);
        let (mut waiting, waiting_id) = escalated_by(1, "amb-07");
        router.follow(waiting_id, t);
        let step = router.step(waiting_id, &waiting.view().unwrap(), Some(&rota), &holders, t);
        assert!(matches!(step, Step::Decided(Decision { action: Action::Wait, .. })), "{step:?}");
        router.forget(&ahead_id);
        let connected = connect(&mut router, &mut waiting, &rota, "desk-1", t + 60_000);
        let log = waiting.routing_log().unwrap();
        let entry = log.iter().find(|e| e.get("kind") == Some(&LogValue::Str("connected".into()))).unwrap();
        assert_eq!(entry.get("ms_from_escalate"), Some(&LogValue::Int(connected - t)), "{entry:?}");
    }

    #[test]
    fn a_deployers_call_limits_replace_the_defaults_and_zero_turns_them_off() {
        let rota = line("24/7", &["desk-1"], None);
        let holders = ["desk-1".to_string()];
        let step = |router: &mut Router, n: u128, now: TimeMs| {
            let (doc, id) = escalated_by(n, "amb-07");
            router.follow(id, now);
            match router.step(id, &doc.view().unwrap(), Some(&rota), &holders, now) {
                Step::Decided(d) => (d.action, id),
                other => panic!("{other:?}"),
            }
        };
        let t = T0 + 2_000;
        let mut strict = Router::new("hub-qhm", Some("QHM"), WAIT).with_call_limits(1, 2);
        let (first, first_id) = step(&mut strict, 1, t);
        assert_eq!(first, Action::Measure);
        assert_eq!(step(&mut strict, 2, t).0, Action::Wait, "one at once");
        assert!(
            matches!(step(&mut strict, 3, t).0, Action::Callback { cause: CallbackCause::TooManyCalls, .. }),
            "two an hour, the waiting one counted"
        );
        strict.forget(&first_id);
        let mut open = Router::new("hub-qhm", Some("QHM"), WAIT).with_call_limits(0, 0);
        for n in 1..=30 {
            assert_eq!(step(&mut open, n, t).0, Action::Measure, "call {n}");
        }
    }

    #[test]
    fn a_tablet_that_ends_each_call_it_asked_for_and_asks_again_in_the_same_session_has_each_counted() {
        let rota = line("24/7", &["desk-1"], None);
        let holders = ["desk-1".to_string()];
        let (mut doc, id) = escalated_by(1, "amb-07");
        let mut router = Router::new("hub-qhm", Some("QHM"), WAIT);
        let mut refused = None;
        for n in 1..=MAX_CALLS_PER_REQUESTER_HOUR as i64 + 1 {
            let now = T0 + 2_000 + n * 60_000;
            router.follow(id, now);
            let actions = drive(&mut router, &mut doc, &rota, &holders, now);
            if matches!(&actions[..], [Action::Callback { cause: CallbackCause::TooManyCalls, .. }]) {
                refused = Some(n);
                break;
            }
            // Each call is measured for itself: none rings on the last one's count.
            assert_eq!(actions, vec![Action::Measure], "call {n}");
            router.heard(id, GOOD, now);
            let actions = drive(&mut router, &mut doc, &rota, &holders, now);
            assert!(matches!(actions[..], [Action::GatePassed(..), Action::Ring { .. }, Action::Wait]), "{actions:?}");
            // The tablet ends the call ringing and asks for the next, in one change.
            let open = calls_of(&doc.view().unwrap()).into_iter().find(|c| c.is_open()).unwrap().call;
            let cancel =
                RoutingEntry::Callback { call: open, reason: "cancel".into(), mos: None, by: Some("amb-07".into()) };
            doc.append_routing(&cancel, now + 1_000).unwrap();
            let next = RoutingEntry::Escalate { call: format!("k{}", n + 1), by: "amb-07".into() };
            doc.append_routing(&next, now + 1_000).unwrap();
        }
        assert_eq!(refused, Some(MAX_CALLS_PER_REQUESTER_HOUR as i64 + 1));
        assert_eq!(doc.view().unwrap().status, Status::AwaitingReply);
    }

    #[test]
    fn the_router_looks_again_at_the_end_of_a_ring_and_not_before() {
        let t = T0 + 2_000;
        let (mut doc, id, mut router) = escalated_and_followed(t);
        let rota = line("24/7", &["desk-1", "desk-2"], None);
        let holders = ["desk-1".to_string(), "desk-2".to_string()];
        assert_eq!(drive(&mut router, &mut doc, &rota, &holders, t), vec![Action::Measure]);
        assert_eq!(router.poll_timeout(), None, "nothing is due while the gate listens");
        assert_eq!(router.step(id, &doc.view().unwrap(), Some(&rota), &holders, t), Step::Listening);
        assert_eq!(router.heard(id, GOOD, t + 1_065), Some(Listen::Judge(GOOD)));
        let t = t + 1_065;
        let actions = drive(&mut router, &mut doc, &rota, &holders, t);
        assert!(
            matches!(actions[..], [Action::GatePassed(..), Action::Ring { attempt: 1, ring_s: 20, .. }, Action::Wait]),
            "{actions:?}"
        );
        assert_eq!(router.poll_timeout(), Some(t + 20_000), "the ring's end");
        assert!(router.handle_timeout(t + 19_999).is_empty());
        let actions = drive(&mut router, &mut doc, &rota, &holders, t + 20_000);
        assert!(
            matches!(&actions[..], [Action::NoAnswer { attempt: 1, .. }, Action::Ring { desk, attempt: 2, .. }, Action::Wait] if desk == "desk-2"),
            "{actions:?}"
        );
        // An answer is a change to the session: the driver says so, and the call connects at once.
        let answer = RoutingEntry::Answer { call: "k1".into(), desk: "desk-2".into(), attempt: 2 };
        doc.append_routing(&answer, t + 25_000).unwrap();
        router.follow(id, t + 25_000);
        let actions = drive(&mut router, &mut doc, &rota, &holders, t + 25_000);
        assert!(matches!(actions[..], [Action::Connected { attempt: 2, .. }]), "{actions:?}");
        assert!(!router.follows(&id), "a connected call is no longer followed");
        assert_eq!(doc.view().unwrap().status, Status::Connected);
    }

    #[test]
    fn a_call_waiting_for_a_desk_to_hold_the_case_is_looked_at_again_until_the_hold_wait_ends() {
        let (mut doc, _, mut router) = escalated_and_followed(T0);
        let rota = line("24/7", &["desk-1"], None);
        assert_eq!(drive(&mut router, &mut doc, &rota, &[], T0), vec![Action::Wait]);
        // Who holds a session changes no session: the router looks again shortly.
        assert_eq!(router.poll_timeout(), Some(T0 + HOLDERS_POLL_MS));
        let last = T0 + HOLD_WAIT_MS - 1;
        assert_eq!(drive(&mut router, &mut doc, &rota, &[], last), vec![Action::Wait]);
        assert_eq!(router.poll_timeout(), Some(T0 + HOLD_WAIT_MS), "never later than the hold wait's end");
        let actions = drive(&mut router, &mut doc, &rota, &[], T0 + HOLD_WAIT_MS);
        assert!(
            matches!(&actions[..], [Action::Callback { cause: CallbackCause::CaseNotDelivered, .. }]),
            "{actions:?}"
        );
        assert_eq!(router.poll_timeout(), None, "a call ended in a callback awaits no outcome here");
    }

    #[test]
    fn missing_outcomes_are_flagged_once_the_wait_after_the_call_is_over_and_recorded_ones_are_kept() {
        let (mut doc, id, mut router) = escalated_and_followed(T0);
        let rota = line("24/7", &["desk-1"], None);
        let wait = WAIT;
        assert_eq!(connect(&mut router, &mut doc, &rota, "desk-1", T0), T0 + 5_000);
        assert_eq!(router.poll_timeout(), Some(T0 + 5_000 + wait));
        // The consultant records an outcome; the requester does not.
        doc.set_outcome(Side::Responder, Outcome::AdviceOnly, "desk-1", T0 + 60_000).unwrap();
        assert!(router.handle_timeout(T0 + 5_000 + wait - 1).is_empty(), "not before the wait is over");
        assert_eq!(router.handle_timeout(T0 + 5_000 + wait), vec![Due::Outcomes(id)]);
        assert!(router.handle_timeout(T0 + 10 * wait).is_empty(), "handed out once");
        let write = not_reported(&doc.view().unwrap(), "hub-qhm").unwrap();
        assert_eq!(write, Write::NotReported { sides: vec![Side::Requester], by: "hub-qhm".into() });
        write.apply(&mut doc, T0 + 5_000 + wait).unwrap();
        let v = doc.view().unwrap();
        assert_eq!(v.outcome.requester.as_ref().map(|o| o.value), Some(Outcome::NotReported));
        assert_eq!(v.outcome.responder.as_ref().map(|o| o.value), Some(Outcome::AdviceOnly));
        assert_eq!(not_reported(&v, "hub-qhm"), None, "nothing left to flag");
    }
    #[test]
    fn an_outcome_recorded_offline_is_kept_over_the_hubs_not_reported_flag_made_meanwhile() {
        // The requester records an outcome with no link; meanwhile the hub, its wait over,
        // flags that side not reported. Whichever order the copies merge in, the clinician's
        // outcome is what every copy shows.
        for hub_first in [true, false] {
            let mut hub = escalated();
            let mut tablet = hub.fork_as(automerge::ActorId::from(vec![9u8; 16]));
            // The hub has written more than the tablet (its counter is ahead), so a plain
            // last-writer-wins would pick its flag.
            for i in 0..20 {
                hub.share_with(&format!("desk-{i}"), T0 + i).unwrap();
            }
            let flag = not_reported(&hub.view().unwrap(), "hub-qhm").unwrap();
            flag.apply(&mut hub, T0 + 3_600_000).unwrap();
            tablet.set_outcome(Side::Requester, Outcome::ConveyanceAvoided, "amb-07", T0 + 3_500_000).unwrap();
            let (a, b) = if hub_first { (&mut hub, &mut tablet) } else { (&mut tablet, &mut hub) };
            a.merge(b).unwrap();
            b.merge(a).unwrap();
            for copy in [&mut hub, &mut tablet] {
                let v = copy.view().unwrap();
                let shown = v.outcome.requester.as_ref().map(|o| (o.value, o.by.clone()));
                assert_eq!(shown, Some((Outcome::ConveyanceAvoided, "amb-07".to_string())), "hub first: {hub_first}");
                assert_eq!(v.outcome.responder.as_ref().map(|o| o.value), Some(Outcome::NotReported));
            }
        }
    }

    #[test]
    fn a_hub_stopped_between_the_gates_refusal_and_its_callback_arranges_the_callback_after_restart() {
        // A call refused for its link is two writes: the gate's figures, then the callback.
        // A hub killed between them restarts with a fresh router; the call must not ring.
        let (mut doc, id, mut router) = escalated_and_followed(T0);
        let rota = line("24/7", &["desk-1"], None);
        let holders = ["desk-1".to_string()];
        drive(&mut router, &mut doc, &rota, &holders, T0);
        let bad = PathQuality { rtt_ms: 420.0, jitter_ms: 40.0, loss: 0.3, burst_ratio: 1.0, probes: 50 };
        for t in 1..=3 {
            router.heard(id, bad, T0 + t * 2_500);
        }
        let now = T0 + 7_500;
        let Step::Decided(d) = router.step(id, &doc.view().unwrap(), Some(&rota), &holders, now) else { panic!() };
        assert!(matches!(d.action, Action::Callback { cause: CallbackCause::Link, .. }), "{:?}", d.action);
        assert!(matches!(d.writes[..], [Write::Gate { .. }, Write::Step { .. }]), "{:?}", d.writes);
        // Only the first write reached the disk.
        d.writes[0].apply(&mut doc, now).unwrap();
        let mut restarted = Router::new("hub-qhm", Some("QHM"), WAIT);
        restarted.follow(id, now + 60_000);
        let actions = drive(&mut restarted, &mut doc, &rota, &holders, now + 60_000);
        assert!(
            matches!(&actions[..], [Action::Callback { cause: CallbackCause::Link, reason, .. }] if reason.contains("MOS")),
            "{actions:?}"
        );
        let calls = calls_of(&doc.view().unwrap());
        assert!(calls[0].rings.is_empty() && calls[0].callback.is_some(), "{calls:?}");
    }
    #[test]
    fn only_the_sessions_own_hub_awaits_its_outcomes_after_a_call_connected_out_of_area() {
        // The session's hub (QHM) handed the call to another ICB's hub, whose desk answers.
        let mut doc = escalated();
        let id = doc.view().unwrap().id.to_bytes();
        let handed = T0 + 1_500;
        doc.share_with("hub-qox", handed).unwrap();
        let federate = RoutingEntry::Federate { call: "k1".into(), hub: "hub-qox".into(), from: "hub-qhm".into() };
        doc.append_routing(&federate, handed).unwrap();
        let theirs = line("24/7", &["desk-ox-1"], None);
        let mut fed = Router::new("hub-qox", Some("QOX"), WAIT);
        fed.follow(id, T0 + 2_000);
        connect(&mut fed, &mut doc, &theirs, "desk-ox-1", T0 + 2_000);
        // Another ICB's hub may not write this session's outcomes: it awaits none.
        assert_eq!(fed.poll_timeout(), None);
        // The session's own hub, told of the connection, relays the voice and awaits them.
        let ours = line("24/7", &[], Some("hub-qox"));
        let mut home = Router::new("hub-qhm", Some("QHM"), WAIT);
        home.follow(id, T0 + 10_000);
        assert_eq!(home.handle_timeout(T0 + 10_000), vec![Due::Route(id)]);
        let step = home.step(id, &doc.view().unwrap(), Some(&ours), &[], T0 + 10_000);
        let relay = Relay { call: "k1".into(), requester: "amb-07".into(), hub: "hub-qox".into() };
        assert_eq!(step, Step::Done { relay: Some(relay) });
        assert_eq!(home.poll_timeout(), Some(T0 + 10_000 + WAIT));
    }
}
