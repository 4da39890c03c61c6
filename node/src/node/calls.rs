//! Calls and routing: escalating, answering, what a desk sees ringing, callbacks owed, the
//! ICB directory's lines, the hub's routing decision (`route_call`) and each party's legs.

use super::*;
use sync_protocol::leg::{LEG_KIND, Leg, LegEnd, legs_in, legs_of};

/// What the hub's router did in one step for one session, its writes durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// The step (a decision, the gate listening, or nothing left to route here).
    pub step: Step,
    /// Whether this step wrote to the session (so that it is pushed to peers).
    pub wrote: bool,
}

impl Routed {
    /// The action decided, if the step decided one.
    pub fn action(&self) -> Option<&Action> {
        match &self.step {
            Step::Decided(d) => Some(&d.action),
            _ => None,
        }
    }
}

/// The longest call a leg carries (it then ends as `LongestCall`).
pub const LONGEST_CALL: std::time::Duration = std::time::Duration::from_secs(3600);

/// How many of the most recently changed sessions in each status a call in progress leaves a
/// session in are looked at for a call under way ([`Node::call_under_way`]).
const CALLS_UNDER_WAY_SCAN: usize = 200;

impl Node {
    /// Escalates a session to a live call: records the request in the session's routing log
    /// (the hub's router takes it from there). Returns the call's id once it is durable.
    pub fn escalate(&mut self, id: SessionId, now: i64) -> Result<String, NodeError> {
        self.require("escalating a session to a call", "edge", &[Role::Edge])?;
        // Asking again while a call is still open (waiting, ringing) is the same request: a
        // double tap, or an app that did not hear the answer, makes one call.
        if let Some(open) =
            calls_in(&self.store.sessions_mut().routing_log(id)?).into_iter().rev().find(CallState::is_open)
        {
            return Ok(open.call);
        }
        if let Some(session) = self.call_under_way(id, now)? {
            return Err(NodeError::OnACall { session });
        }
        let call = new_id(now)?;
        let by = self.config.name.clone();
        let detail = Some(serde_json::json!({ "call": call }));
        self.store.sessions_mut().edit(id, "call.escalate", detail, now, |_, doc| {
            let model = crate::store::model(id);
            doc.append_routing(&RoutingEntry::Escalate { call: call.clone(), by: by.clone() }, now).map_err(model)?;
            if doc.view().map_err(model)?.status < Status::Routing {
                doc.set_status(Status::Routing, now).map_err(model)?;
            }
            Ok(())
        })?;
        Ok(call)
    }

    /// Answers the call ringing at this desk in a session, if one is. Returns the call's id and
    /// the attempt answered.
    pub fn answer_call(&mut self, id: SessionId, now: i64) -> Result<Option<(String, u32)>, NodeError> {
        self.require("answering a call", "desk", &[Role::Desk])?;
        let me = self.config.name.clone();
        let view = self.store.sessions_mut().view(id)?;
        let Some((call, attempt)) = calls_of(&view).into_iter().find_map(|c| {
            let (desk, attempt, _, _) = c.ringing()?.clone();
            let answered = c.answers.iter().any(|a| a.0 == attempt && a.1 == me);
            (c.is_open() && desk == me && !answered).then_some((c.call.clone(), attempt))
        }) else {
            return Ok(None);
        };
        // Checked here, where answers are written one at a time: two rings at once (two crews
        // escalating together), or a ring while an answered call is still connecting, would
        // otherwise both be answered, and one crew connected to a desk that carries no voice
        // for it.
        if let Some(session) = self.call_under_way(id, now)? {
            return Err(NodeError::OnACall { session });
        }
        let detail = Some(serde_json::json!({ "call": call, "attempt": attempt }));
        self.store.sessions_mut().edit(id, "call.answer", detail, now, |_, doc| {
            let answer = RoutingEntry::Answer { call: call.clone(), desk: me.clone(), attempt };
            doc.append_routing(&answer, now).map_err(crate::store::model(id))
        })?;
        Ok(Some((call, attempt)))
    }

    /// The session of a call this node is in, other than in `except`: a call it asked for or
    /// was connected to that has not ended here (no leg record of this node's yet), or one it
    /// answered that is still connecting. A call connected longer ago than the longest call
    /// lasts, or answered over a minute ago and never connected, no longer counts (a leg the
    /// process did not live to record). Looks at the sessions most recently changed in the
    /// statuses a call in progress leaves them in.
    pub fn call_under_way(&mut self, except: SessionId, now: i64) -> Result<Option<SessionId>, NodeError> {
        let longest_ms = i64::try_from(LONGEST_CALL.as_millis()).unwrap_or(i64::MAX);
        const CONNECTING_MS: i64 = 60_000;
        let me = self.config.name.clone();
        let mut candidates = Vec::new();
        for status in [Status::Routing, Status::Connected] {
            let filter = ListFilter { status: Some(status), limit: Some(CALLS_UNDER_WAY_SCAN), ..Default::default() };
            candidates.extend(self.store.sessions().list(&filter)?.into_iter().map(|c| c.id));
        }
        for sid in candidates.into_iter().filter(|s| *s != except) {
            let Ok(routing) = self.store.sessions_mut().routing_log(sid) else { continue };
            let Some(c) = calls_in(&routing).pop() else { continue };
            // A requester carries a call's audio only when it has a plan for it (the app's
            // escalations have one; `call escalate` without --play or --record does not, and
            // writes no leg).
            let carried = c.by != me || self.has_media_plan(&c.call)?;
            let mine_connected = c.connected.as_ref().filter(|(desk, _)| *desk == me || (c.by == me && carried));
            let answered_here = c.is_open() && c.answers.iter().any(|a| a.1 == me && now - a.2 < CONNECTING_MS);
            let live = match mine_connected {
                // A callback after the connection means the call dropped.
                Some((_, at)) => now - at < longest_ms && c.callback.is_none(),
                None => answered_here,
            };
            if !live {
                continue;
            }
            // Over once either party has recorded its leg: this node's, or the other party's
            // (which also ends a call whose audio failed here before a leg was written).
            let ended = self.store.sessions_mut().call_log(sid).is_ok_and(|log| {
                legs_in(&log).iter().any(|l| {
                    l.call == c.call
                        && (l.node == me || l.node == c.by || c.connected.as_ref().is_some_and(|(d, _)| *d == l.node))
                })
            });
            if !ended {
                return Ok(Some(sid));
            }
        }
        Ok(None)
    }

    /// Where the latest call of each of these sessions stands (sessions with no call are left
    /// out). Reads only the routing logs.
    pub fn calls_now(&mut self, ids: &[SessionId]) -> Result<Vec<CallNow>, NodeError> {
        let me = self.config.name.clone();
        let mut out = Vec::new();
        for id in ids {
            let Ok(routing) = self.store.sessions_mut().routing_log(*id) else { continue };
            let Some(c) = calls_in(&routing).pop() else { continue };
            let ringing = c.ring_unanswered().cloned();
            // A connected call has ended once either party (the requester's node or the desk
            // connected) has written the record of its leg; no other node's record counts.
            let ended = c.connected.as_ref().is_some_and(|(desk, _)| {
                self.store.sessions_mut().call_log(*id).is_ok_and(|log| {
                    legs_in(&log).iter().any(|l| l.call == c.call && (l.node == c.by || l.node == *desk))
                })
            });
            let (state, desk) = match (&c.connected, &c.callback, &ringing) {
                // A call that dropped is called back: the callback is the news.
                (Some(_), Some(_), _) if ended => ("callback", None),
                (Some((desk, _)), _, _) if ended => ("ended", Some(desk.clone())),
                (Some((desk, _)), _, _) => ("connected", Some(desk.clone())),
                (None, Some(_), _) => ("callback", None),
                (None, None, Some((desk, ..))) => ("ringing", Some(desk.clone())),
                (None, None, None) => ("waiting", None),
            };
            out.push(CallNow {
                session: *id,
                call: c.call.clone(),
                state,
                ringing_here: state == "ringing" && desk.as_deref() == Some(me.as_str()),
                desk,
                rung: ringing.map(|(_, _, at, secs)| (at, secs)),
                callback_reason: c.callback.map(|(why, _)| why),
            });
        }
        Ok(out)
    }

    /// Before session `id` is closed or cancelled (`status`) here: the routing entry that
    /// withdraws its call still being put through, if this node asked for it (the hub's router
    /// then stops, and the desk rung stops ringing). A call being put through for another
    /// node, or one connected that neither party has ended, is in the way: a closed session
    /// is out of [`Node::call_under_way`]'s sight, and its call would ring on, connect, or go
    /// on with a device free to take a second.
    pub(super) fn call_before_closing(
        &mut self,
        id: SessionId,
        status: Status,
        now: i64,
    ) -> Result<Option<RoutingEntry>, NodeError> {
        let view = self.store.sessions_mut().view(id)?;
        if view.status.is_terminal() {
            // Already over (closed, now cancelled): no call of it is followed any more.
            return Ok(None);
        }
        let Some(c) = calls_of(&view).pop() else { return Ok(None) };
        let me = self.config.name.clone();
        if c.is_open() {
            if c.by != me {
                return Err(NodeError::CallInTheWay { session: id, connected: false });
            }
            let word = if status == Status::Cancelled { "cancelled" } else { "closed" };
            return Ok(Some(RoutingEntry::Callback {
                call: c.call.clone(),
                reason: format!("the session was {word} before the call was put through"),
                mos: None,
                by: Some(me),
            }));
        }
        let longest_ms = i64::try_from(LONGEST_CALL.as_millis()).unwrap_or(i64::MAX);
        if let Some((desk, at)) = &c.connected {
            let ended = legs_of(&view).iter().any(|l| l.call == c.call && (l.node == c.by || l.node == *desk));
            if c.callback.is_none() && !ended && now - at < longest_ms {
                return Err(NodeError::CallInTheWay { session: id, connected: true });
            }
        }
        Ok(None)
    }

    /// The callbacks owed: sessions whose latest escalation ended in a callback (no desk could
    /// take the call, the link could not carry it, or it dropped) and that no later call, no
    /// consultant's outcome and no closing has settled. On a desk, the consultant owes them; on
    /// an edge, the crew waits for them. Oldest first: the longest wait is called back first.
    ///
    /// Bounded: it looks at the [`CALLBACK_CANDIDATES`] most recently changed sessions in each
    /// status a callback can leave a session in (arranging one changes the session, so a
    /// callback still owed is among the recent ones unless that many sessions changed since).
    pub fn callbacks_owed(&mut self) -> Result<Vec<CallbackOwed>, NodeError> {
        let mut candidates = Vec::new();
        // A callback moves a session to awaiting_reply unless it is already beyond; a dropped
        // call leaves it connected. The crew's outcome moves it on to outcome_recorded, and the
        // consultant's call back is still owed then: only the consultant's outcome settles it.
        let owing =
            [Status::Routing, Status::Connected, Status::AwaitingReply, Status::Responded, Status::OutcomeRecorded];
        for status in owing {
            let filter = ListFilter { status: Some(status), limit: Some(CALLBACK_CANDIDATES), ..Default::default() };
            candidates.extend(self.store.sessions().list(&filter)?);
        }
        let mut out = Vec::new();
        for card in candidates {
            let Ok(routing) = self.store.sessions_mut().routing_log(card.id) else { continue };
            let Some(c) = calls_in(&routing).pop() else { continue };
            let Some((reason, since_ms)) = c.callback.clone() else { continue };
            let view = self.store.sessions_mut().view(card.id)?;
            // Settled by the consultant's own outcome recorded since the callback was arranged:
            // not by the hub's "not reported" flag, nor by an outcome of an earlier call.
            let settled = view
                .outcome
                .responder
                .as_ref()
                .is_some_and(|o| o.value != sync_protocol::vocab::Outcome::NotReported && o.at_ms >= since_ms);
            // Or by closing (or cancelling) the session since: a session reopened later does
            // not owe again the callback its closing settled.
            let closed_since = view.status_history.iter().any(|s| s.status.is_terminal() && s.at_ms >= since_ms);
            if settled || closed_since {
                continue;
            }
            out.push(CallbackOwed {
                session: card.id,
                call: c.call,
                service_line: card.service_line,
                priority: card.priority,
                summary: card.summary,
                callback_number: view.requester.callback,
                call_sign: view.requester.call_sign,
                reason,
                since_ms,
            });
        }
        out.sort_by_key(|c| c.since_ms);
        Ok(out)
    }

    /// This node's copy of its ICB's directory (service lines, hours, rotas): the hub's own, or
    /// at an edge or desk what last arrived from the hub. `None` if it holds none yet.
    pub fn directory(&self) -> Result<Option<DirectoryView>, NodeError> {
        let Some(icb) = self.config.icb.as_deref() else { return Ok(None) };
        Ok(self.store.directory().directory(icb)?)
    }

    /// Sets one service line of the ICB's directory (its hours, channels and rota), durably;
    /// it reaches the ICB's edges and desks at their next sync. Only the hub keeps the directory.
    pub fn set_line(&mut self, entry: LineEntry, now: i64) -> Result<DirectoryView, NodeError> {
        self.require("setting a service line or rota", "hub", &[Role::Hub])?;
        let icb = self.icb()?;
        let (_, view) =
            self.store.directory_mut().edit_directory(&icb, "directory.set", now, |d| d.set_line(&entry, now))?;
        Ok(view)
    }

    /// Removes a service line from the ICB's directory; escalations on it then end in a callback.
    pub fn remove_line(&mut self, line: ServiceLine, now: i64) -> Result<(bool, DirectoryView), NodeError> {
        self.require("removing a service line", "hub", &[Role::Hub])?;
        let icb = self.icb()?;
        Ok(self.store.directory_mut().edit_directory(&icb, "directory.remove", now, |d| d.remove_line(line, now))?)
    }

    pub(super) fn icb(&self) -> Result<String, NodeError> {
        self.config.icb.clone().ok_or_else(|| NodeError::NoIcb { node: self.config.name.clone() })
    }

    /// This hub's call router, following nothing yet (see [`Node::follow_escalations`]); it
    /// flags outcomes still missing `outcome_wait_ms` after a call connects.
    pub fn call_router(&self, outcome_wait_ms: i64) -> Result<Router, NodeError> {
        self.require("routing calls", "hub", &[Role::Hub])?;
        Ok(Router::new(&self.config.name, self.config.icb.as_deref(), outcome_wait_ms))
    }

    /// Hands the router every session among `candidates` that it follows already or whose
    /// routing log holds an open escalation (as the session index says, where it says; the
    /// log itself otherwise); with `resume` (a router just started), also
    /// every connected call among them, whose missing outcomes it flags after its wait.
    /// Returns how many it now follows or awaits.
    pub fn follow_escalations(
        &mut self,
        router: &mut Router,
        candidates: &[SessionId],
        resume: bool,
        now: i64,
    ) -> Result<usize, NodeError> {
        let mut n = 0;
        let mut unknown = Vec::new();
        for id in candidates {
            let doc = id.to_bytes();
            if router.follows(&doc) {
                router.follow(doc, now);
                n += 1;
            } else {
                unknown.push(*id);
            }
        }
        // The others: those indexed without an open escalation are left; a router just started
        // also looks for connected calls, and reads them all.
        if !resume {
            let escalating = self.store.sessions().escalating(&unknown)?;
            let mut read = Vec::new();
            for (id, open) in unknown.iter().zip(escalating) {
                match open {
                    Some(true) => {
                        router.follow(id.to_bytes(), now);
                        n += 1;
                    }
                    Some(false) => {}
                    None => read.push(*id),
                }
            }
            unknown = read;
        }
        // The rest's routing logs, read in one transaction.
        let logs = self.store.sessions_mut().routing_logs(&unknown)?;
        for (id, routing) in unknown.iter().zip(logs) {
            let doc = id.to_bytes();
            let Ok(routing) = routing else { continue };
            let calls = calls_in(&routing);
            if Router::wants(&calls) {
                router.follow(doc, now);
                n += 1;
            } else if resume && calls.last().is_some_and(|c| c.connected.is_some()) {
                let Ok(view) = self.store.sessions_mut().view(*id) else { continue };
                router.await_outcomes(doc, &view, now);
                n += 1;
            }
        }
        Ok(n)
    }

    /// One step of the hub's router for a session it follows
    /// ([`sync_protocol::router::Router::step`]), reading this hub's directory line and who
    /// holds the session; what it decided is written to the session (durably, one change per
    /// write, each audited) before it is returned.
    pub fn route_call(&mut self, router: &mut Router, id: SessionId, now: i64) -> Result<Routed, NodeError> {
        self.require("routing calls", "hub", &[Role::Hub])?;
        let view = self.store.sessions_mut().view(id)?;
        // Only this hub's directory decides who is rung.
        let line = self.directory()?.and_then(|d| d.lines.get(&view.service.line).cloned());
        let holders = self.store.peers().holders_of(&id.to_bytes())?;
        let step = router.step(id.to_bytes(), &view, line.as_ref(), &holders, now);
        let Step::Decided(decision) = &step else { return Ok(Routed { step, wrote: false }) };
        for w in &decision.writes {
            self.apply_routing_write(id, &decision.call, w, now)?;
        }
        Ok(Routed { wrote: !decision.writes.is_empty(), step })
    }

    fn apply_routing_write(&mut self, id: SessionId, call: &str, w: &Write, now: i64) -> Result<(), NodeError> {
        let detail = match w {
            Write::ShareWithRota { desks } => Some(serde_json::json!({ "call": call, "shared_with": desks })),
            Write::Federate { hub, .. } => Some(serde_json::json!({ "call": call, "federated_to": hub })),
            Write::Gate { .. } | Write::NotReported { .. } => None,
            Write::Step { entry, .. } => Some(serde_json::json!({ "call": call, "step": entry.kind().as_str() })),
        };
        self.store
            .sessions_mut()
            .edit(id, w.audit_action(), detail, now, |_, doc| w.apply(doc, now).map_err(crate::store::model(id)))?;
        Ok(())
    }
}

impl Node {
    /// Connected calls among `ids` that this node is a party of and has not yet recorded a leg
    /// for, with the media plan of each: the requester's from its meta table (a requester
    /// without one has no audio here), a desk's `default`.
    pub fn calls_to_join(
        &mut self,
        ids: &[SessionId],
        default: &crate::media::MediaPlan,
    ) -> Result<Vec<(SessionId, String, Side, crate::media::MediaPlan)>, NodeError> {
        let me = self.config.name.clone();
        let mut out = Vec::new();
        for id in ids {
            let Ok(view) = self.store.sessions_mut().view(*id) else { continue };
            for c in calls_of(&view) {
                let Some((desk, _)) = &c.connected else { continue };
                let side = if c.by == me {
                    Side::Requester
                } else if *desk == me {
                    Side::Responder
                } else {
                    continue;
                };
                let recorded = legs_of(&view).iter().any(|l| l.call == c.call && l.node == me);
                if recorded {
                    continue;
                }
                let plan = match side {
                    Side::Requester => match self.store.identity().meta_get(&crate::media::plan_key(&c.call))? {
                        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                        None => continue,
                    },
                    Side::Responder => default.clone(),
                };
                out.push((*id, c.call.clone(), side, plan));
            }
        }
        Ok(out)
    }

    /// Keeps what a requester plays into and records from a call (local, never synced).
    pub fn set_media_plan(&mut self, call: &str, plan: &crate::media::MediaPlan) -> Result<(), NodeError> {
        let bytes = serde_json::to_vec(plan).map_err(|source| NodeError::Encode { what: "a media plan", source })?;
        self.store.identity_mut().meta_put(&crate::media::plan_key(call), &bytes)?;
        Ok(())
    }

    /// The person who asked for `call` in the session, or answered it, through this node's API
    /// (from the audit chain: it outlives a restart). `None` if no person did (the command
    /// line, a desk answering by itself).
    pub fn call_person(&self, id: SessionId, call: &str) -> Result<Option<i64>, NodeError> {
        Ok(self.store.audit().call_person(id, call)?)
    }

    /// How the other party's leg of `call` ended, if its record has reached this node: the
    /// reliable word that it hung up, for when its hang-up datagram was lost. Only the other
    /// party's record counts (the requester's node, or the desk connected): another node the
    /// session is shared with could otherwise write a leg "hung up" and end the call here.
    pub fn other_leg_end(&mut self, id: SessionId, call: &str) -> Result<Option<LegEnd>, NodeError> {
        let me = self.config.name.as_str();
        let view = self.store.sessions_mut().view(id)?;
        Ok(sync_protocol::leg::other_party_leg(&view.routing, &view.calls, call, me).map(|l| l.end))
    }

    /// Writes this party's record of a call leg into the session's call log (durably).
    pub fn record_call_leg(&mut self, id: SessionId, leg: &Leg, now: i64) -> Result<(), NodeError> {
        self.require("recording a call", "edge or desk", &[Role::Edge, Role::Desk])?;
        let fields = leg.fields();
        self.store.sessions_mut().edit(id, "call.leg", None, now, |_, doc| {
            doc.append_log(LogName::Calls, LEG_KIND, &fields, now).map_err(crate::store::model(id))
        })?;
        Ok(())
    }
}

impl Node {
    /// After a call, a side that has recorded no outcome in time is flagged `not_reported`
    /// (by the hub, [`sync_protocol::router::not_reported`]). Returns the sides flagged.
    pub fn flag_unreported(&mut self, id: SessionId, now: i64) -> Result<Vec<Side>, NodeError> {
        self.require("flagging unreported outcomes", "hub", &[Role::Hub])?;
        let view = self.store.sessions_mut().view(id)?;
        let Some(write) = not_reported(&view, &self.config.name) else { return Ok(Vec::new()) };
        let Write::NotReported { sides, .. } = &write else { return Ok(Vec::new()) };
        let sides = sides.clone();
        self.store.sessions_mut().edit(id, write.audit_action(), None, now, |_, doc| {
            write.apply(doc, now).map_err(crate::store::model(id))
        })?;
        Ok(sides)
    }

    /// A party's leg ended because the other side fell silent: the call is over, and a
    /// callback is requested in the routing log so that the consultant calls back.
    pub fn request_callback_after_drop(&mut self, id: SessionId, call: &str, now: i64) -> Result<(), NodeError> {
        self.require("requesting a callback", "edge or desk", &[Role::Edge, Role::Desk])?;
        let callback = RoutingEntry::Callback {
            call: call.to_string(),
            reason: "the call dropped (no audio for 10 s); a callback is requested".into(),
            mos: None,
            by: Some(self.config.name.clone()),
        };
        self.store.sessions_mut().edit(id, "call.callback", None, now, |_, doc| {
            doc.append_routing(&callback, now).map_err(crate::store::model(id))
        })?;
        Ok(())
    }
}
