//! The workload: clinicians' sessions, messages, photos, escalations, replies and outcomes.

use super::checks::Observed;
use super::*;

impl World {
    pub(super) fn open(&self, n: usize) -> bool {
        match self.nodes[n].open_hours {
            None => true,
            Some((from, to)) => {
                let h = (self.scenario.start_hour + hours_of(self.now)) % 24.0;
                h >= from && h < to
            }
        }
    }

    pub(super) fn pick_line(&mut self, kind: Kind) -> ServiceLine {
        let weights = match kind {
            Kind::Ambulance => self.scenario.workload.ambulance_lines.clone(),
            _ => self.scenario.workload.surgery_lines.clone(),
        };
        let total: f64 = weights.iter().map(|w| w.1).sum();
        let mut x = self.rng.random::<f64>() * total;
        for (line, w) in &weights {
            if x < *w {
                return *line;
            }
            x -= w;
        }
        weights.first().map_or(ServiceLine::Dermatology, |w| w.0)
    }

    pub(super) fn local_write<T>(
        &mut self,
        n: usize,
        doc: &DocId,
        f: impl FnOnce(&mut SessionDoc) -> Result<T, sync_protocol::ModelError>,
    ) -> Option<T> {
        if !self.nodes[n].up {
            return None;
        }
        if self.opts.bugs.lose_acked_writes_on_crash {
            let before = self.nodes[n].replica.copy_doc(doc);
            self.nodes[n].undo_last = Some((*doc, before));
        }
        let out = self.nodes[n].replica.edit(doc, f).ok();
        self.after_changes(n, None);
        out
    }

    pub(super) fn work(&mut self, w: Work) {
        match w {
            Work::NextSession(n) => {
                let rate = self.nodes[n].rate;
                let dt = self.exp((HOUR as f64 / rate.max(1e-9)) as Micros);
                self.after(dt, Ev::Work(Work::NextSession(n)));
                if self.settling.is_none() && self.nodes[n].up && self.open(n) {
                    self.new_session(n);
                }
            }
            Work::Message { node, doc } => {
                let now = self.node_now(node);
                let id = self.next_id(node, now);
                let name = self.nodes[node].name.clone();
                let msg = NewMessage {
                    clinician: None,
                    id: id.clone(),
                    author: name,
                    side: Side::Requester,
                    text: format!(
                        "Update from the {}: obs stable, findings as described ({id}).",
                        self.nodes[node].kind.as_str()
                    ),
                    reply_to: None,
                };
                if self.local_write(node, &doc, |d| d.add_message(&msg, now)).is_some() {
                    self.track(node, doc, id, What::Message);
                }
            }
            Work::Photo { node, doc, view, kb } => {
                let now = self.node_now(node);
                let size = (kb * 1024.0) as usize;
                let seed: u64 = self.rng.random();
                let bytes = photo_bytes(size, seed);
                let hash = Hash(*blake3::hash(&bytes).as_bytes());
                let hex_hash = hash.to_hex();
                if !self.nodes[node].up {
                    return;
                }
                self.photos.insert(hash, bytes.clone());
                self.nodes[node].replica.put_blob(&bytes);
                let name = self.nodes[node].name.clone();
                let consent = format!("consent-{}", SessionId::from_bytes(doc));
                let media = NewMedia {
                    hash: hex_hash.clone(),
                    mime: "image/jpeg".into(),
                    size: size as u64,
                    dimensions: None,
                    view,
                    body_site: "left forearm".into(),
                    consent_id: consent.clone(),
                    added_by: name.clone(),
                    clinician: None,
                };
                let done = self.local_write(node, &doc, |d| {
                    if !d.view()?.consents.iter().any(|c| c.id == consent) {
                        d.add_consent(
                            &NewConsent {
                                id: consent.clone(),
                                kind: ConsentKind::Verbal,
                                scope: ConsentScope::RecordOnly,
                                by: name.clone(),
                            },
                            now,
                        )?;
                    }
                    d.add_media(&media, now)
                });
                if done.is_some() {
                    self.track(node, doc, hex_hash, What::Photo);
                }
            }
            Work::Escalate { node, doc } => {
                let now = self.node_now(node);
                let name = self.nodes[node].name.clone();
                let Some(view) = self.nodes[node].replica.view(&doc) else { return };
                let items = (
                    view.messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
                    view.media.iter().map(|m| m.hash.clone()).collect::<Vec<_>>(),
                );
                let call = format!("call-{}", self.calls.len() + 1);
                let escalate = RoutingEntry::Escalate { call: call.clone(), by: name.clone() };
                let ok = self.local_write(node, &doc, |d| d.append_routing(&escalate, now));
                if ok.is_some() {
                    self.escalations.push(Escalation { node: name, asked_s: secs(self.now), ..Escalation::default() });
                    self.calls.push(SimCall {
                        doc,
                        call,
                        node,
                        items,
                        heard: Vec::new(),
                        listening: None,
                        esc_index: self.escalations.len() - 1,
                    });
                }
            }
            Work::Answer { desk, doc, call, attempt } => {
                // Still ringing here? (The hub may have moved on after the ring time.)
                let name = self.nodes[desk].name.clone();
                let ringing = self.nodes[desk].replica.view_ref(&doc).is_some_and(|v| {
                    calls_of(v).iter().any(|c| {
                        c.call == call && c.is_open() && c.ringing().is_some_and(|r| r.0 == name && r.1 == attempt)
                    })
                });
                if ringing {
                    let now = self.node_now(desk);
                    let answer = RoutingEntry::Answer { call, desk: name, attempt };
                    self.local_write(desk, &doc, |d| d.append_routing(&answer, now));
                }
            }
            Work::Reply { desk, doc } => {
                let now = self.node_now(desk);
                let id = self.next_id(desk, now);
                let name = self.nodes[desk].name.clone();
                let msg = NewMessage {
                    clinician: None,
                    id,
                    author: name.clone(),
                    side: Side::Responder,
                    text: "Consultant's advice: as discussed, plan agreed.".into(),
                    reply_to: None,
                };
                let outcome =
                    if self.rng.random::<f64>() < 0.6 { Outcome::AdviceOnly } else { Outcome::ReferralAvoided };
                let replied = self.local_write(desk, &doc, |d| {
                    d.add_message(&msg, now)?;
                    d.set_outcome(Side::Responder, outcome, &name, now)
                });
                if replied.is_some() {
                    self.check(Observed::Recorded { doc, side: Side::Responder });
                }
                if replied.is_some() && self.rng.random::<f64>() < self.scenario.workload.outcome_share {
                    let origin = self.metas.get(&doc).map(|m| m.origin.clone());
                    if let Some(node) = origin.and_then(|o| self.nodes.iter().position(|n| n.name == o)) {
                        let gap = self.uniform_minutes(self.scenario.workload.write_gap_minutes) * 10;
                        self.after(gap, Ev::Work(Work::Outcome { node, doc }));
                    }
                }
            }
            Work::Outcome { node, doc } => {
                let now = self.node_now(node);
                let name = self.nodes[node].name.clone();
                let outcome = if self.nodes[node].kind == Kind::Ambulance {
                    Outcome::ConveyanceAvoided
                } else {
                    Outcome::ReferralAvoided
                };
                // Only once the reply has reached the requester.
                let replied = self.nodes[node]
                    .replica
                    .view(&doc)
                    .is_some_and(|v| v.messages.iter().any(|m| m.side == Side::Responder));
                if replied {
                    if self.local_write(node, &doc, |d| d.set_outcome(Side::Requester, outcome, &name, now)).is_some() {
                        self.check(Observed::Recorded { doc, side: Side::Requester });
                    }
                } else if self.settling.is_none() {
                    self.after(30 * MINUTE, Ev::Work(Work::Outcome { node, doc }));
                }
            }
        }
    }

    pub(super) fn uniform_minutes(&mut self, (lo, hi): (f64, f64)) -> Micros {
        ((lo + (hi - lo) * self.rng.random::<f64>()) * MINUTE as f64) as Micros
    }

    pub(super) fn next_id(&mut self, node: usize, now: TimeMs) -> String {
        self.nodes[node].seq += 1;
        let r: u128 = self.rng.random();
        SessionId::from_parts(now, r).to_string()
    }

    pub(super) fn track(&mut self, node: usize, doc: DocId, key: String, what: What) {
        // The planted bug loses the last write the ledger can miss, not a receipt after it.
        if what != What::Session
            && let Some(u) = self.nodes[node].undo_last.take()
        {
            self.nodes[node].undo = Some(u);
        }
        self.ledger.write(Entry {
            node,
            kind: self.nodes[node].kind,
            doc,
            key,
            what,
            written: self.now,
            at_hub: None,
            at_desk: None,
        });
    }

    pub(super) fn new_session(&mut self, n: usize) {
        let kind = self.nodes[n].kind;
        let line = self.pick_line(kind);
        let urgent = kind == Kind::Ambulance || self.rng.random::<f64>() < 0.3;
        let Some(doc_id) = self.create_session(n, line, urgent) else { return };
        // What follows: messages, photos, perhaps a call.
        let wl = self.scenario.workload.clone();
        let mut t = self.uniform_minutes(wl.write_gap_minutes);
        let first_msgs = 1 + self.rng.random_range(wl.follow_ups.0..=wl.follow_ups.1.max(wl.follow_ups.0));
        for _ in 0..first_msgs {
            self.after(t, Ev::Work(Work::Message { node: n, doc: doc_id }));
            t += self.uniform_minutes(wl.write_gap_minutes);
        }
        if line == ServiceLine::Dermatology {
            let lesions = self.rng.random_range(wl.lesions.0..=wl.lesions.1.max(wl.lesions.0));
            for _ in 0..lesions {
                for view in [PhotoView::Site, PhotoView::CloseUp, PhotoView::Dermoscopic]
                    .into_iter()
                    .take(wl.photos_per_lesion as usize)
                {
                    let (lo, hi) = wl.photo_kb;
                    let kb = (lo.ln() + (hi.ln() - lo.ln()) * self.rng.random::<f64>()).exp();
                    self.after(t, Ev::Work(Work::Photo { node: n, doc: doc_id, view, kb }));
                    t += SECOND * 20;
                }
            }
        }
        let share = if kind == Kind::Ambulance {
            wl.ambulance_escalations
        } else if urgent {
            wl.surgery_escalations
        } else {
            0.0
        };
        if self.rng.random::<f64>() < share {
            self.after(t + MINUTE, Ev::Work(Work::Escalate { node: n, doc: doc_id }));
        }
    }

    /// A new session written at node `n` now, tracked and pushed to its connections.
    pub(super) fn create_session(&mut self, n: usize, line: ServiceLine, urgent: bool) -> Option<DocId> {
        let kind = self.nodes[n].kind;
        let now = self.node_now(n);
        let channel = if line == ServiceLine::Dermatology {
            Channel::Photo
        } else if urgent {
            Channel::Call
        } else {
            Channel::Message
        };
        let r: u128 = self.rng.random();
        let id = SessionId::from_parts(now, r);
        let new = NewSession {
            id,
            origin: self.nodes[n].name.clone(),
            icb: self.scenario.icb.clone(),
            care_setting: if kind == Kind::Ambulance { CareSetting::AmbulanceOnScene } else { CareSetting::GpUrgent },
            requester: Requester::default(),
            patient: Patient { nhs_number: None, verification: NhsVerification::NotPresent, ..Patient::default() },
            service: Service { line, channel, priority: if urgent { Priority::Urgent } else { Priority::Routine } },
            summary: format!("A question for {} from {}", line, self.nodes[n].name),
            draft: false,
        };
        let actor = self.nodes[n].replica.actor().clone();
        let doc = SessionDoc::create(&new, actor, now).ok()?;
        let view = doc.view().ok()?;
        let doc_id = id.to_bytes();
        self.metas.insert(doc_id, view.meta());
        if self.opts.bugs.lose_acked_writes_on_crash {
            self.nodes[n].undo = Some((doc_id, None));
        }
        self.nodes[n].replica.put(doc).ok()?;
        self.track(n, doc_id, id.to_string(), What::Session);
        self.after_changes(n, None);
        Some(doc_id)
    }
}

/// Bytes of a synthetic photo: deterministic noise (what matters is the size and the hash).
fn photo_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; size];
    rng.fill(&mut v[..]);
    v
}
