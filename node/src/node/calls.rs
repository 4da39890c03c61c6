//! Calls and routing: escalating, answering, what a desk sees ringing, callbacks owed, the
//! ICB directory's lines, the hub's routing decision (`route_call`) and each party's legs.

use super::*;
use sync_protocol::leg::{LEG_KIND, Leg, LegEnd, legs_in, legs_of};

/// What the hub's router did in one step for one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// The escalation.
    pub call: String,
    /// The node whose voice this hub relays to the desk: the requester (whose path is
    /// measured), or for a call handed over from another ICB, the hub that handed it.
    pub requester: String,
    /// The step taken.
    pub action: Action,
    /// Whether this step wrote to the session (so that it is pushed to peers).
    pub wrote: bool,
}

impl Node {
    /// Escalates a session to a live call: records the request in the session's routing log
    /// (the hub's router takes it from there). Returns the call's id once it is durable.
    pub fn escalate(&mut self, id: SessionId, now: i64) -> Result<String, NodeError> {
        self.require("escalating a session to a call", "edge", &[Role::Edge])?;
        // Asking again while a call is still open (waiting, ringing) is the same request: a
        // double tap, or an app that did not hear the answer, makes one call.
        if let Some(open) = calls_in(&self.store.routing_log(id)?).into_iter().rev().find(CallState::is_open) {
            return Ok(open.call);
        }
        let call = new_id(now)?;
        let by = self.config.name.clone();
        let detail = Some(serde_json::json!({ "call": call }));
        self.store.edit(id, "call.escalate", detail, now, |_, doc| {
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
        let view = self.store.view(id)?;
        let Some((call, attempt)) = calls_of(&view).into_iter().find_map(|c| {
            let (desk, attempt, _, _) = c.ringing()?.clone();
            let answered = c.answers.iter().any(|a| a.0 == attempt && a.1 == me);
            (c.is_open() && desk == me && !answered).then_some((c.call.clone(), attempt))
        }) else {
            return Ok(None);
        };
        let detail = Some(serde_json::json!({ "call": call, "attempt": attempt }));
        self.store.edit(id, "call.answer", detail, now, |_, doc| {
            let answer = RoutingEntry::Answer { call: call.clone(), desk: me.clone(), attempt };
            doc.append_routing(&answer, now).map_err(crate::store::model(id))
        })?;
        Ok(Some((call, attempt)))
    }

    /// Where the latest call of each of these sessions stands (sessions with no call are left
    /// out). Reads only the routing logs.
    pub fn calls_now(&mut self, ids: &[SessionId]) -> Result<Vec<CallNow>, NodeError> {
        let me = self.config.name.clone();
        let mut out = Vec::new();
        for id in ids {
            let Ok(routing) = self.store.routing_log(*id) else { continue };
            let Some(c) = calls_in(&routing).pop() else { continue };
            let ringing = c.ringing().filter(|r| c.is_open() && !c.answers.iter().any(|a| a.0 == r.1)).cloned();
            // A connected call has ended once either party (the requester's node or the desk
            // connected) has written the record of its leg; no other node's record counts.
            let ended = c.connected.as_ref().is_some_and(|(desk, _)| {
                self.store.call_log(*id).is_ok_and(|log| {
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
        // call leaves it connected.
        for status in [Status::Routing, Status::Connected, Status::AwaitingReply, Status::Responded] {
            let filter = ListFilter { status: Some(status), limit: Some(CALLBACK_CANDIDATES), ..Default::default() };
            candidates.extend(self.store.list(&filter)?);
        }
        let mut out = Vec::new();
        for card in candidates {
            let Ok(routing) = self.store.routing_log(card.id) else { continue };
            let Some(c) = calls_in(&routing).pop() else { continue };
            let Some((reason, since_ms)) = c.callback.clone() else { continue };
            let view = self.store.view(card.id)?;
            if view.outcome.responder.is_some() {
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
        Ok(self.store.directory(icb)?)
    }

    /// Sets one service line of the ICB's directory (its hours, channels and rota), durably;
    /// it reaches the ICB's edges and desks at their next sync. Only the hub keeps the directory.
    pub fn set_line(&mut self, entry: LineEntry, now: i64) -> Result<DirectoryView, NodeError> {
        self.require("setting a service line or rota", "hub", &[Role::Hub])?;
        let icb = self.icb()?;
        let (_, view) = self.store.edit_directory(&icb, "directory.set", now, |d| d.set_line(&entry, now))?;
        Ok(view)
    }

    /// Removes a service line from the ICB's directory; escalations on it then end in a callback.
    pub fn remove_line(&mut self, line: ServiceLine, now: i64) -> Result<(bool, DirectoryView), NodeError> {
        self.require("removing a service line", "hub", &[Role::Hub])?;
        let icb = self.icb()?;
        Ok(self.store.edit_directory(&icb, "directory.remove", now, |d| d.remove_line(line, now))?)
    }

    pub(super) fn icb(&self) -> Result<String, NodeError> {
        self.config.icb.clone().ok_or_else(|| {
            NodeError::Invalid(format!("node {} belongs to no ICB: it keeps no directory", self.config.name))
        })
    }

    /// Sessions whose routing log holds an escalation still open.
    pub fn open_escalations(&mut self, candidates: &[SessionId]) -> Result<Vec<SessionId>, NodeError> {
        let mut out = Vec::new();
        for id in candidates {
            let Ok(routing) = self.store.routing_log(*id) else { continue };
            if calls_in(&routing).iter().any(CallState::is_open) {
                out.push(*id);
            }
        }
        Ok(out)
    }

    /// One step of the hub's router for a session's first open escalation: decides with
    /// the shared router (`sync_protocol::router::route`) and records what it decided in the routing log (durably) before
    /// returning it. `quality` is the requester's path as just measured, `seen_ms` when this
    /// hub first saw the escalation.
    pub fn route_call(
        &mut self,
        id: SessionId,
        quality: Option<&PathQuality>,
        seen_ms: i64,
        now: i64,
    ) -> Result<Option<Routed>, NodeError> {
        self.require("routing calls", "hub", &[Role::Hub])?;
        let view = self.store.view(id)?;
        // Only this hub's directory decides who is rung.
        let line = self.directory()?.and_then(|d| d.lines.get(&view.service.line).cloned());
        let holders = self.store.holders_of(&id.to_bytes())?;
        let hub = Hub { name: &self.config.name, icb: self.config.icb.as_deref() };
        let Some(decision) = route(hub, &view, line.as_ref(), &holders, quality, seen_ms, now) else {
            return Ok(None);
        };
        for w in &decision.writes {
            let detail = match w {
                Write::ShareWithRota { desks } => serde_json::json!({ "call": decision.call, "shared_with": desks }),
                Write::Federate { hub, .. } => serde_json::json!({ "call": decision.call, "federated_to": hub }),
                Write::Gate { .. } => serde_json::Value::Null,
                Write::Step { entry, .. } => {
                    serde_json::json!({ "call": decision.call, "step": entry.kind().as_str() })
                }
            };
            let detail = (!detail.is_null()).then_some(detail);
            self.store
                .edit(id, w.audit_action(), detail, now, |_, doc| w.apply(doc, now).map_err(crate::store::model(id)))?;
        }
        let wrote = !decision.writes.is_empty();
        Ok(Some(Routed { call: decision.call, requester: decision.requester, action: decision.action, wrote }))
    }

    /// For a session whose latest escalation this hub handed to a federated hub, and which
    /// that hub has since connected: (call, requester, federated hub), so that this hub relays
    /// the requester's voice to the federated hub.
    pub fn federated_connection(&mut self, id: SessionId) -> Result<Option<(String, String, String)>, NodeError> {
        let view = self.store.view(id)?;
        let me = self.config.name.as_str();
        Ok(calls_of(&view).into_iter().rev().find_map(|c| {
            let fed = c.federated.as_ref().filter(|f| f.from == me)?;
            c.connected.as_ref().map(|_| (c.call.clone(), c.by.clone(), fed.hub.clone()))
        }))
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
            let Ok(view) = self.store.view(*id) else { continue };
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
                    Side::Requester => match self.store.meta_get(&crate::media::plan_key(&c.call))? {
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
        let bytes = serde_json::to_vec(plan).map_err(|e| NodeError::Invalid(e.to_string()))?;
        self.store.meta_put(&crate::media::plan_key(call), &bytes)?;
        Ok(())
    }

    /// How the other party's leg of `call` ended, if its record has reached this node: the
    /// reliable word that it hung up, for when its hang-up datagram was lost.
    pub fn other_leg_end(&mut self, id: SessionId, call: &str) -> Result<Option<LegEnd>, NodeError> {
        let me = self.config.name.as_str();
        let view = self.store.view(id)?;
        Ok(legs_of(&view).into_iter().find(|l| l.call == call && l.node != me).map(|l| l.end))
    }

    /// Writes this party's record of a call leg into the session's call log (durably).
    pub fn record_call_leg(&mut self, id: SessionId, leg: &Leg, now: i64) -> Result<(), NodeError> {
        self.require("recording a call", "edge or desk", &[Role::Edge, Role::Desk])?;
        let fields = leg.fields();
        self.store.edit(id, "call.leg", None, now, |_, doc| {
            doc.append_log(LogName::Calls, LEG_KIND, &fields, now).map_err(crate::store::model(id))
        })?;
        Ok(())
    }
}

impl Node {
    /// After a call, a side that has recorded no outcome in time is flagged `not_reported`
    /// (by the hub). Returns the sides flagged.
    pub fn flag_unreported(&mut self, id: SessionId, now: i64) -> Result<Vec<Side>, NodeError> {
        self.require("flagging unreported outcomes", "hub", &[Role::Hub])?;
        let view = self.store.view(id)?;
        let mut missing = Vec::new();
        if view.outcome.requester.is_none() {
            missing.push(Side::Requester);
        }
        if view.outcome.responder.is_none() {
            missing.push(Side::Responder);
        }
        if missing.is_empty() {
            return Ok(missing);
        }
        let by = self.config.name.clone();
        let sides = missing.clone();
        self.store.edit(id, "outcome.not_reported", None, now, |_, doc| {
            for side in &sides {
                doc.set_outcome(*side, Outcome::NotReported, &by, now).map_err(crate::store::model(id))?;
            }
            Ok(())
        })?;
        Ok(missing)
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
        self.store.edit(id, "call.callback", None, now, |_, doc| {
            doc.append_routing(&callback, now).map_err(crate::store::model(id))
        })?;
        Ok(())
    }
}
