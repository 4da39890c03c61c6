//! The hub's call router: the node's policy (`sync_protocol::call::next_action`) driven on virtual time.

use super::*;

impl World {
    pub(super) fn route_new_escalations(&mut self, changed: &[DocId]) {
        for i in 0..self.calls.len() {
            if self.calls[i].seen_at_hub.is_some() || !changed.contains(&self.calls[i].doc) {
                continue;
            }
            let doc = self.calls[i].doc;
            let call = self.calls[i].call.clone();
            let seen =
                self.nodes[self.hub].replica.view_ref(&doc).is_some_and(|v| calls_of(v).iter().any(|c| c.call == call));
            if seen {
                let hub_now = self.node_now(self.hub);
                self.calls[i].seen_at_hub = Some((self.now, hub_now));
                let e = self.calls[i].esc_index;
                self.escalations[e].seen_at_hub_s = Some(secs(self.now));
                // The router's longest wait for a desk to hold the case.
                self.after((HOLD_WAIT_MS as Micros) * 1000 + SECOND, Ev::Ring(i));
                self.route(i);
            }
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

    /// A federated hub's router: an escalation handed to it (its `federate` entry names this
    /// hub) is routed here from the moment its copy shows the hand-over.
    pub(super) fn route_handed_over(&mut self, h: usize, changed: &[DocId]) {
        let me = self.nodes[h].name.clone();
        for i in 0..self.calls.len() {
            if self.calls[i].done || !changed.contains(&self.calls[i].doc) {
                continue;
            }
            if self.calls[i].seen_at_fed.is_none() {
                let (doc, call) = (self.calls[i].doc, self.calls[i].call.clone());
                let handed = self.nodes[h].replica.view_ref(&doc).is_some_and(|v| {
                    calls_of(v).iter().any(|c| c.call == call && c.federated.as_ref().is_some_and(|f| f.hub == me))
                });
                if !handed {
                    continue;
                }
                self.calls[i].seen_at_fed = Some((self.now, self.node_now(h)));
                self.after((HOLD_WAIT_MS as Micros) * 1000 + SECOND, Ev::Ring(i));
            }
            self.route_at(i, h);
        }
    }

    /// One or more steps of the home hub's router for an escalation (and of the federated
    /// hub's, once it was handed over).
    pub(super) fn route(&mut self, i: usize) {
        self.route_at(i, self.hub);
        if let Some(h) = self.fed
            && self.calls[i].seen_at_fed.is_some()
        {
            self.route_at(i, h);
        }
    }

    /// One or more steps of hub `h`'s router for an escalation: the node's router
    /// (`sync_protocol::router::route`) reading that hub's directory, its writes applied to the
    /// hub's copy; the simulator only measures the link and keeps its ledger.
    fn route_at(&mut self, i: usize, h: usize) {
        let home = h == self.hub;
        for _ in 0..8 {
            if self.calls[i].done || !self.nodes[h].up {
                return;
            }
            let seen = if home { self.calls[i].seen_at_hub } else { self.calls[i].seen_at_fed };
            let Some((_, seen_ms)) = seen else { return };
            let doc = self.calls[i].doc;
            let Some(view) = self.nodes[h].replica.view(&doc) else { return };
            let now = self.node_now(h);
            let holders = self.nodes[h].replica.holders(&doc);
            // The hub's own copy of its ICB's directory, as the node's router reads it.
            let line = self.nodes[h].replica.directory_view().and_then(|d| d.lines.get(&view.service.line).cloned());
            let line = line.as_ref();
            let hub_name = self.nodes[h].name.clone();
            let icb = self.nodes[h].info.icb.clone();
            let hub = Hub { name: &hub_name, icb: icb.as_deref() };
            let quality = if home { self.calls[i].quality.as_ref() } else { self.calls[i].fed_quality.as_ref() };
            let Some(decision) = route(hub, &view, line, &holders, quality, seen_ms, now) else {
                return;
            };
            if decision.call != self.calls[i].call {
                return;
            }
            // The line's own hours: nobody is rung on a line that is closed or takes no calls.
            let refusal = line.and_then(|l| l.call_refusal(now));
            let e = self.calls[i].esc_index;
            match decision.action {
                // A federated hub waiting for its desk shares the session with it first.
                Action::Wait => {}
                Action::Federate { ref hub } => self.escalations[e].handed_to = Some(hub.clone()),
                Action::Measure => {
                    // Home: the requester's path; a federated hub relays the handing hub's
                    // voice, so it measures that path. The gate listens as the node's does,
                    // through the shared rule, one window of probes at a time, each taking
                    // as long as the node's would (`gate_window_ms`).
                    if self.calls[i].listening.is_none() {
                        self.calls[i].heard.clear();
                        self.next_gate_window(i, h, GateListen::default());
                    }
                    return;
                }
                Action::GatePassed(r, _) => self.escalations[e].gate_mos = Some(r.mos),
                Action::Ring { ref desk, attempt, ring_s } => {
                    let Some(d) = self.nodes.iter().position(|n| &n.name == desk) else { return };
                    if attempt == 1 {
                        if let Some(why) = &refusal {
                            self.violate("routing", format!("the router rang {desk} although {why}"));
                        }
                        self.first_ring(i, d);
                    }
                    self.after(i64::from(ring_s) as Micros * SECOND + SECOND / 10, Ev::Ring(i));
                }
                Action::NoAnswer { .. } => {}
                Action::Connected { .. } => {
                    self.calls[i].done = true;
                    self.escalations[e].connected_s = Some(secs(self.now));
                }
                Action::Callback { cause, ref rating, .. } => {
                    self.calls[i].done = true;
                    if rating.is_some() {
                        self.check_gate_refusal(i, &hub_name);
                    }
                    if let Some((r, _)) = rating {
                        self.escalations[e].gate_mos = Some(r.mos);
                    }
                    self.escalations[e].callback = Some(cause.as_str().to_string());
                }
            }
            for w in &decision.writes {
                let _ = self.nodes[h].replica.edit(&doc, |d| w.apply(d, now));
            }
            self.after_changes(h, None);
            if matches!(decision.action, Action::Wait) {
                return;
            }
        }
    }

    /// The gate of hub `h` starts a window of probes for call `i`: measured on the path as it is
    /// now, heard once the node's window would have ended.
    fn next_gate_window(&mut self, i: usize, h: usize, listen: GateListen) {
        let node = if h == self.hub { self.calls[i].node } else { h };
        let window = self.measure(node);
        self.calls[i].listening = Some((h, listen, window));
        self.after(gate_window_ms(&window) as Micros * 1000, Ev::GateWindow(i));
    }

    /// A window of the gate's probes has ended: the shared rule says whether to listen again or
    /// to judge, and the router goes on with the judgement.
    pub(super) fn gate_window_heard(&mut self, i: usize) {
        let Some((h, mut listen, window)) = self.calls[i].listening.take() else { return };
        if !self.nodes[h].up {
            // The hub went down while it listened: its router measures afresh when it is back.
            return;
        }
        self.calls[i].heard.push(window);
        let q = match listen.heard(window, &ADPCM_32K) {
            Listen::Again(_) if !self.opts.bugs.gate_hears_one_window => {
                self.next_gate_window(i, h, listen);
                return;
            }
            Listen::Again(_) => window,
            Listen::Judge(q) => q,
        };
        let e = self.calls[i].esc_index;
        self.escalations[e].gate_judged_s = Some(secs(self.now));
        if h == self.hub {
            self.calls[i].quality = Some(q);
        } else {
            self.calls[i].fed_quality = Some(q);
        }
        self.route_at(i, h);
    }

    /// A call refused for its link: the gate must have listened to every window it may (unless
    /// the link went away while it listened), and none of them may have been good enough.
    fn check_gate_refusal(&mut self, i: usize, hub: &str) {
        let heard = &self.calls[i].heard;
        let passed = heard.iter().position(|w| gate(w, &ADPCM_32K).is_ok());
        let cut = heard.last().is_some_and(|w| w.probes == 0);
        let n = heard.len();
        if let Some(k) = passed {
            self.violate(
                "routing",
                format!("{hub} refused a call for its link although second {} of {n} passed", k + 1),
            );
        } else if !cut && n < GATE_WINDOWS as usize {
            self.violate(
                "routing",
                format!("{hub} refused a call for its link after listening {n} s of {GATE_WINDOWS}"),
            );
        }
    }

    /// Records the first ring of an escalation, and checks it against the desk's own store.
    pub(super) fn first_ring(&mut self, i: usize, desk: usize) {
        let doc = self.calls[i].doc;
        let (msgs, media) = self.calls[i].items.clone();
        let desk_name = self.nodes[desk].name.clone();
        let truly_held = self.nodes[desk].replica.view_ref(&doc).is_some_and(|v| {
            msgs.iter().all(|m| v.messages.iter().any(|x| &x.id == m))
                && media.iter().all(|h| {
                    v.media.iter().any(|x| &x.hash == h)
                        && Hash::from_hex(h).is_some_and(|hh| self.nodes[desk].replica.holds_blob(&hh))
                })
        });
        let e = self.calls[i].esc_index;
        self.escalations[e].rung_s = Some(secs(self.now));
        self.escalations[e].desk = Some(desk_name.clone());
        self.escalations[e].desk_held_whole = truly_held;
        if !truly_held {
            self.violate("receipts", format!("the router rang {desk_name} for a session its store did not hold whole"));
        }
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
                    let r = c.ringing()?;
                    (r.0 == name && !c.answers.iter().any(|a| a.0 == r.1)).then(|| (c.call.clone(), r.1))
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
