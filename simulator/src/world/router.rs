//! The hub's call router: the node's own [`Router`] (`sync_protocol::router`) driven on virtual
//! time. The simulator tells it of changed sessions, steps what it says is due, measures the
//! requester's path through the link model when it asks, applies its writes to the hub's
//! replica, and keeps its ledger and checks; the policy (rota, ring times, the gate, the
//! directory, federation, callbacks, outcomes not reported) is all the router's.

use super::checks::Observed;
use super::*;

/// A hub's router and when its next wake-up is scheduled.
#[derive(Debug)]
pub(super) struct HubRouter {
    router: Router,
    /// The virtual time of the wake-up event scheduled, if one is.
    wake_at: Option<Micros>,
    /// Set while the router's due steps are being taken (they are taken in one go).
    driving: bool,
}

impl World {
    /// Hub `h`'s router, started (empty) on first use and after each restart.
    fn hub_router(&mut self, h: usize) -> &mut HubRouter {
        let wait = (self.scenario.workload.outcome_wait_hours * 3_600_000.0) as TimeMs;
        let (name, icb, bugs) = (&self.nodes[h].name, self.nodes[h].info.icb.as_deref(), &self.opts.bugs);
        self.routers.entry(h).or_insert_with(|| {
            let mut router = Router::new(name, icb, wait);
            if bugs.gate_hears_one_window {
                router.plant(PlantedBug::GateHearsOneWindow);
            }
            if bugs.flags_outcomes_at_once {
                router.plant(PlantedBug::FlagsOutcomesAtOnce);
            }
            HubRouter { router, wake_at: None, driving: false }
        })
    }

    /// A hub crashed: its router's state (what it follows, what it measured, its deadlines)
    /// is gone, as with a process.
    pub(super) fn router_lost(&mut self, h: usize) {
        self.routers.remove(&h);
        for c in &mut self.calls {
            if c.listening.is_some_and(|(hub, _, _)| hub == h) {
                c.listening = None;
            }
        }
    }

    /// A hub (re)started: as the node's router does at start, it follows every open escalation
    /// its replica holds and awaits the outcomes of every connected call still without them.
    pub(super) fn router_started(&mut self, h: usize) {
        if self.nodes[h].kind != Kind::Hub {
            return;
        }
        let now = self.node_now(h);
        let mut follow = Vec::new();
        let mut await_outcomes = Vec::new();
        for doc in self.nodes[h].replica.ids() {
            let Some(v) = self.nodes[h].replica.view_ref(&doc) else { continue };
            let calls = calls_of(v);
            if Router::wants(&calls) {
                follow.push(doc);
            } else if v.status == Status::Connected && calls.last().is_some_and(|c| c.connected.is_some()) {
                await_outcomes.push((doc, v.clone()));
            }
        }
        let r = &mut self.hub_router(h).router;
        for doc in follow {
            r.follow(doc, now);
        }
        for (doc, view) in await_outcomes {
            r.await_outcomes(doc, &view, now);
        }
        self.wake_router(h);
    }

    /// Hub `h`'s replica changed: its router follows every changed session with an open
    /// escalation (and looks again at those it follows), and the ledger notes when each
    /// escalation first reached the region's hub.
    pub(super) fn router_sees(&mut self, h: usize, changed: &[DocId]) {
        if !self.nodes[h].up {
            return;
        }
        let now = self.node_now(h);
        let mut wanted = Vec::new();
        for doc in changed {
            let follows = self.routers.get(&h).is_some_and(|r| r.router.follows(doc));
            if follows || self.nodes[h].replica.view_ref(doc).is_some_and(|v| Router::wants(&calls_of(v))) {
                wanted.push(*doc);
            }
        }
        if wanted.is_empty() {
            return;
        }
        let r = self.hub_router(h);
        for doc in &wanted {
            r.router.follow(*doc, now);
        }
        if h == self.hub {
            for i in 0..self.calls.len() {
                let e = self.calls[i].esc_index;
                if self.escalations[e].seen_at_hub_s.is_some() || !wanted.contains(&self.calls[i].doc) {
                    continue;
                }
                let (doc, call) = (self.calls[i].doc, &self.calls[i].call);
                if self.nodes[h].replica.view_ref(&doc).is_some_and(|v| calls_of(v).iter().any(|c| &c.call == call)) {
                    self.escalations[e].seen_at_hub_s = Some(secs(self.now));
                }
            }
        }
        if !self.routers.get(&h).is_some_and(|r| r.driving) {
            self.drive_router(h);
        }
    }

    /// Takes every step hub `h`'s router says is due, then schedules its next wake-up.
    pub(super) fn drive_router(&mut self, h: usize) {
        if !self.nodes[h].up {
            return;
        }
        self.hub_router(h).driving = true;
        // Each step that moves a call on makes the next one due at once; a call takes a
        // handful of such steps, so this bound is never reached by a sound router.
        for _ in 0..64 {
            let now = self.node_now(h);
            let due = self.hub_router(h).router.handle_timeout(now);
            if due.is_empty() {
                break;
            }
            for d in due {
                match d {
                    Due::Route(doc) => self.route_step(h, doc),
                    Due::Outcomes(doc) => self.flag_outcomes(h, doc),
                }
            }
        }
        self.hub_router(h).driving = false;
        self.wake_router(h);
    }

    /// Schedules hub `h`'s router's next wake-up, converted from its clock to virtual time.
    fn wake_router(&mut self, h: usize) {
        let hub_now = self.node_now(h);
        let now = self.now;
        let r = self.hub_router(h);
        let Some(t) = r.router.poll_timeout() else { return };
        let at = now + u64::try_from(t - hub_now).unwrap_or(0) * 1000;
        if r.wake_at.is_some_and(|w| w <= at && w >= now) {
            return;
        }
        r.wake_at = Some(at);
        self.at(at, Ev::RouterWake(h));
    }

    /// A router's wake-up event: stale ones (replaced by an earlier one) are ignored.
    pub(super) fn router_wakes(&mut self, h: usize) {
        let Some(r) = self.routers.get_mut(&h) else { return };
        if r.wake_at != Some(self.now) {
            return;
        }
        r.wake_at = None;
        self.drive_router(h);
    }

    /// One step of hub `h`'s router for a session: the node's router reading that hub's copy
    /// of the session and its own directory; its writes applied to the hub's replica.
    fn route_step(&mut self, h: usize, doc: DocId) {
        let Some(view) = self.nodes[h].replica.view(&doc) else {
            self.hub_router(h).router.forget(&doc);
            return;
        };
        let now = self.node_now(h);
        let holders = self.nodes[h].replica.holders(&doc);
        // The hub's own copy of its ICB's directory, as the node's router reads it.
        let line = self.nodes[h].replica.directory_view().and_then(|d| d.lines.get(&view.service.line).cloned());
        let step = self.hub_router(h).router.step(doc, &view, line.as_ref(), &holders, now);
        let Step::Decided(decision) = step else { return };
        if let Some(i) = self.calls.iter().position(|c| c.doc == doc && c.call == decision.call) {
            let e = self.calls[i].esc_index;
            match &decision.action {
                Action::Wait | Action::NoAnswer { .. } => {}
                Action::Federate { hub } => self.escalations[e].handed_to = Some(hub.clone()),
                Action::Measure => {
                    // Home: the requester's path; a federated hub relays the handing hub's
                    // voice, so it measures that path. One window of probes at a time, each
                    // taking as long as the node's would (`gate_window_ms`).
                    self.calls[i].heard.clear();
                    self.next_gate_window(i, h);
                }
                Action::GatePassed(r, _) => self.escalations[e].gate_mos = Some(r.mos),
                Action::Ring { desk, attempt, .. } => {
                    if *attempt == 1 {
                        let refusal = line.as_ref().and_then(|l| l.call_refusal(now));
                        if let Some(d) = self.nodes.iter().position(|n| &n.name == desk) {
                            self.first_ring(i, d);
                        }
                        self.check(Observed::Rang { call: i, desk, refusal });
                    }
                }
                Action::Connected { .. } => self.escalations[e].connected_s = Some(secs(self.now)),
                Action::Callback { cause, rating, .. } => {
                    if let Some((r, _)) = rating {
                        self.check(Observed::GateRefused { call: i, hub: h });
                        self.escalations[e].gate_mos = Some(r.mos);
                    }
                    self.escalations[e].callback = Some(cause.as_str().to_string());
                }
            }
        }
        if decision.writes.is_empty() {
            return;
        }
        for w in &decision.writes {
            let _ = self.nodes[h].replica.edit(&doc, |d| w.apply(d, now));
        }
        self.after_changes(h, None);
    }

    /// A call connected a while ago: hub `h` flags the outcomes still missing in its copy.
    fn flag_outcomes(&mut self, h: usize, doc: DocId) {
        let Some(view) = self.nodes[h].replica.view_ref(&doc) else { return };
        let Some(write) = not_reported(view, &self.nodes[h].name) else { return };
        let now = self.node_now(h);
        if let Write::NotReported { sides, .. } = &write {
            for side in sides {
                self.not_reported += 1;
                self.check(Observed::Flagged { hub: h, doc, side: *side });
            }
        }
        if self.nodes[h].replica.edit(&doc, |d| write.apply(d, now)).is_ok() {
            self.after_changes(h, None);
        }
    }

    /// The gate of hub `h` starts a window of probes for call `i`: measured on the path as it is
    /// now, heard once the node's window would have ended.
    fn next_gate_window(&mut self, i: usize, h: usize) {
        let node = if h == self.hub { self.calls[i].node } else { h };
        let window = self.measure(node);
        self.gate_token += 1;
        self.calls[i].listening = Some((h, window, self.gate_token));
        self.after(gate_window_ms(&window) as Micros * 1000, Ev::GateWindow(i, self.gate_token));
    }

    /// A window of the gate's probes has ended: the router's gate says whether to listen again
    /// or to judge, and the router goes on with the judgement.
    pub(super) fn gate_window_heard(&mut self, i: usize, token: u64) {
        let Some((h, window, t)) = self.calls[i].listening else { return };
        if t != token || !self.nodes[h].up {
            // A window of a gate the hub's crash cut off.
            return;
        }
        self.calls[i].listening = None;
        self.calls[i].heard.push(window);
        let now = self.node_now(h);
        let doc = self.calls[i].doc;
        match self.hub_router(h).router.heard(doc, window, now) {
            Some(Listen::Again(_)) => self.next_gate_window(i, h),
            Some(Listen::Judge(_)) => {
                let e = self.calls[i].esc_index;
                self.escalations[e].gate_judged_s = Some(secs(self.now));
                self.drive_router(h);
            }
            None => {}
        }
    }

    /// The requester's path as the hub's probes would find it: 50 voice-like probes 20 ms
    /// apart through the link's loss process and delay; none if it is not connected.
    pub(super) fn measure(&mut self, node: usize) -> PathQuality {
        let Some(l) = self.nodes[node].link else { return quality_from_probes(&[]) };
        if self.links[l].conn.is_none() || !self.links[l].up() || !self.nodes[node].up {
            return PathQuality { rtt_ms: f64::INFINITY, jitter_ms: 0.0, loss: 1.0, burst_ratio: 1.0, probes: 0 };
        }
        let p = self.links[l].profile.clone();
        let rtt = 2.0 * self.links[l].delay_us as f64 / 1000.0;
        let spread = (p.rtt_ms.1 - p.rtt_ms.0) / 2.0;
        let mut ge = LinkState::default();
        let mut probes = Vec::with_capacity(GATE_PROBES);
        for _ in 0..GATE_PROBES {
            let lost_up = ge.lose(&p.loss, &mut U(&mut self.rng));
            let lost_down = ge.lose(&p.loss, &mut U(&mut self.rng));
            let jitter = spread * 0.05 * self.rng.random::<f64>();
            probes.push((!lost_up && !lost_down).then_some(rtt + jitter));
        }
        quality_from_probes(&probes)
    }

    /// Records the first ring of an escalation, and whether the desk's own store held the
    /// session whole (the checkers judge it: [`Observed::Rang`]).
    pub(super) fn first_ring(&mut self, i: usize, desk: usize) {
        let truly_held = self.holds_whole(i, desk);
        let e = self.calls[i].esc_index;
        self.escalations[e].rung_s = Some(secs(self.now));
        self.escalations[e].desk = Some(self.nodes[desk].name.clone());
        self.escalations[e].desk_held_whole = truly_held;
    }

    /// Whether a desk's own store holds call `i`'s session whole: every message and photo the
    /// session had when the call was asked for, photos with their bytes.
    pub(super) fn holds_whole(&self, i: usize, desk: usize) -> bool {
        let (msgs, media) = &self.calls[i].items;
        self.nodes[desk].replica.view_ref(&self.calls[i].doc).is_some_and(|v| {
            msgs.iter().all(|m| v.messages.iter().any(|x| &x.id == m))
                && media.iter().all(|h| {
                    v.media.iter().any(|x| &x.hash == h)
                        && Hash::from_hex(h).is_some_and(|hh| self.nodes[desk].replica.holds_blob(&hh))
                })
        })
    }

    /// A desk that holds a session ringing for it answers after a while, unless it is away.
    pub(super) fn desk_hears_rings(&mut self, desk: usize, changed: &[DocId]) {
        let name = self.nodes[desk].name.clone();
        for doc in changed {
            let Some(v) = self.nodes[desk].replica.view_ref(doc) else { continue };
            let ringing: Vec<(String, u32)> = calls_of(v)
                .into_iter()
                .filter(|c| c.is_open())
                .filter_map(|c| {
                    let r = c.ring_unanswered()?;
                    (r.0 == name).then(|| (c.call.clone(), r.1))
                })
                .collect();
            for (call, attempt) in ringing {
                if !self.heard.insert((desk, call.clone(), attempt)) {
                    continue;
                }
                let wl = &self.scenario.workload;
                if self.rng.random::<f64>() < wl.desk_away {
                    continue;
                }
                let (lo, hi) = wl.answer_s;
                let delay = (lo + (hi - lo) * self.rng.random::<f64>()) * SECOND as f64;
                self.after(delay as Micros, Ev::Work(Work::Answer { desk, doc: *doc, call, attempt }));
            }
        }
    }
}
