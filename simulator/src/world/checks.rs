//! Observation and the invariant checkers: durability, scope, receipts, status, routing, delivery.

use super::*;
use sync_protocol::directory::{directory_id, is_directory_id};

impl World {
    pub(super) fn observe(&mut self, owner: usize, changed: &[DocId]) {
        let kind = self.nodes[owner].kind;
        for doc in changed {
            let Some(view) = self.nodes[owner].replica.view(doc) else { continue };
            // A hub's share widens who may hold the session, when it is one a router makes:
            // to another hub (a hand-over), or to a desk on this hub's own rota for the line.
            // Any other share stays outside the scope checks' truth, and is caught by them.
            let new_shares: Vec<String> = match self.metas.get(doc) {
                Some(meta) if kind == Kind::Hub => {
                    view.shared_with.iter().filter(|n| !meta.shares.contains(n)).cloned().collect()
                }
                _ => Vec::new(),
            };
            if !new_shares.is_empty() {
                let rota: Vec<String> = self.nodes[owner]
                    .replica
                    .directory_view()
                    .and_then(|d| {
                        d.lines.get(&view.service.line).map(|l| l.rota.iter().map(|r| r.desk.clone()).collect())
                    })
                    .unwrap_or_default();
                let hubs: Vec<&str> =
                    self.nodes.iter().filter(|n| n.kind == Kind::Hub).map(|n| n.name.as_str()).collect();
                let justified: Vec<String> =
                    new_shares.into_iter().filter(|n| rota.contains(n) || hubs.contains(&n.as_str())).collect();
                if let Some(meta) = self.metas.get_mut(doc) {
                    meta.shares.extend(justified);
                }
            }
            // Status never moves backwards at any node.
            let key = (owner, *doc);
            let st = (view.reopened, view.status);
            if let Some(prev) = self.statuses.get(&key)
                && st < *prev
            {
                self.violate(
                    "status",
                    format!(
                        "{} saw {} go from {:?} back to {:?}",
                        self.nodes[owner].name,
                        SessionId::from_bytes(*doc),
                        prev,
                        st
                    ),
                );
            }
            self.statuses.insert(key, st);
            // Delivery: first time the hub, or a desk of the line, holds each write.
            if kind == Kind::Hub || kind == Kind::Desk {
                let desk_line = self.nodes[owner].info.lines.first().copied();
                if kind == Kind::Desk
                    && desk_line != Some(view.service.line)
                    && !view.shared_with.contains(&self.nodes[owner].name)
                {
                    continue;
                }
                let now = self.now;
                let mut keys: Vec<(String, bool)> = vec![(view.id.to_string(), true)];
                keys.extend(view.messages.iter().map(|m| (m.id.clone(), true)));
                for m in &view.media {
                    let whole = Hash::from_hex(&m.hash).is_some_and(|h| self.nodes[owner].replica.holds_blob(&h));
                    keys.push((m.hash.clone(), whole));
                }
                for (k, held) in keys {
                    if !held {
                        continue;
                    }
                    if let Some(e) = self.ledger.get_mut(doc, &k) {
                        if owner == self.hub && e.at_hub.is_none() {
                            e.at_hub = Some(now);
                        }
                        if kind == Kind::Desk && e.at_desk.is_none() {
                            e.at_desk = Some(now);
                        }
                    }
                }
                // The first desk of the rota answers once it holds the session.
                if kind == Kind::Desk
                    && !self.replied.contains(doc)
                    && self.rota.get(&view.service.line).and_then(|r| r.first()) == Some(&owner)
                {
                    self.replied.insert(*doc);
                    let urgent = view.service.priority != Priority::Routine || view.service.channel == Channel::Call;
                    let wl = self.scenario.workload.clone();
                    let delay = if urgent {
                        self.uniform_minutes(wl.reply_urgent_minutes)
                    } else {
                        let (lo, hi) = wl.reply_routine_minutes;
                        ((lo.ln() + (hi.ln() - lo.ln()) * self.rng.random::<f64>()).exp() * MINUTE as f64) as Micros
                    };
                    self.after(delay, Ev::Work(Work::Reply { desk: owner, doc: *doc }));
                }
            }
            // Receipts never claim more than is true.
            self.check_receipts(owner, &view);
        }
    }

    pub(super) fn check_receipts(&mut self, owner: usize, view: &SessionView) {
        let mut bad = Vec::new();
        for m in &view.messages {
            for r in &m.receipts {
                if matches!(r.level, ReceiptLevel::Hub | ReceiptLevel::Desk | ReceiptLevel::Requester) {
                    let Some(holder) = self.nodes.iter().position(|n| n.name == r.node) else { continue };
                    if self.unvouched.contains_key(&(holder, m.id.clone())) {
                        continue;
                    }
                    let held = self.nodes[holder]
                        .replica
                        .view(&view.id.to_bytes())
                        .is_some_and(|v| v.messages.iter().any(|x| x.id == m.id));
                    if !held {
                        bad.push(format!(
                            "{} shows message {} {} at {}, which does not hold it",
                            self.nodes[owner].name,
                            m.id,
                            r.level.describe(),
                            r.node
                        ));
                    }
                }
            }
        }
        for m in &view.media {
            for r in &m.receipts {
                if matches!(r.level, ReceiptLevel::Hub | ReceiptLevel::Desk | ReceiptLevel::Requester) {
                    let Some(holder) = self.nodes.iter().position(|n| n.name == r.node) else { continue };
                    if self.unvouched.contains_key(&(holder, m.hash.clone())) {
                        continue;
                    }
                    let held = Hash::from_hex(&m.hash).is_some_and(|h| {
                        let rep = &self.nodes[holder].replica;
                        rep.holds_blob(&h) || rep.blobs.get(&h).is_some_and(|b| b.offloaded)
                    });
                    if !held {
                        bad.push(format!(
                            "{} shows photo {} {} at {}, which does not hold its bytes",
                            self.nodes[owner].name,
                            &m.hash[..12],
                            r.level.describe(),
                            r.node
                        ));
                    }
                }
            }
        }
        // Its own messages shown "at hub" from a hub's acknowledged heads (hubs write no
        // receipt on messages): the hub must hold them.
        let id = view.id.to_bytes();
        for (m, hubs) in self.nodes[owner].replica.messages_vouched_by_hubs(&id) {
            let true_of = |hub: &String| {
                let Some(holder) = self.nodes.iter().position(|n| &n.name == hub) else { return false };
                self.unvouched.contains_key(&(holder, m.clone()))
                    || self.nodes[holder].replica.view(&id).is_some_and(|v| v.messages.iter().any(|x| x.id == m))
            };
            if !hubs.iter().any(true_of) {
                bad.push(format!(
                    "{} shows its message {m} at hub from what {} acknowledged, which does not hold it",
                    self.nodes[owner].name,
                    hubs.join(", ")
                ));
            }
        }
        for b in bad {
            self.violate("receipts", b);
        }
    }

    /// Outcomes: an outcome a clinician recorded is never shown as `not_reported`, whatever
    /// order the clinician's write and the hub's flag reached a replica in.
    pub(super) fn check_outcomes(&mut self, n: usize, view: &SessionView) {
        let doc = view.id.to_bytes();
        for (side, shown) in [(Side::Requester, &view.outcome.requester), (Side::Responder, &view.outcome.responder)] {
            if shown.as_ref().is_some_and(|o| o.value == Outcome::NotReported) && self.recorded.contains(&(doc, side)) {
                let name = self.nodes[n].name.clone();
                self.violate(
                    "outcomes",
                    format!("{name} shows the {side} outcome of {} as not reported, but it was recorded", view.id),
                );
            }
        }
    }

    /// A hub flags a side `not_reported`: only once the outcome wait has passed since the call
    /// connected (the hub's clock runs with virtual time, so the ledger's time is the hub's).
    pub(super) fn check_flag_time(&mut self, h: usize, doc: DocId, side: Side) {
        let wait_s = self.scenario.workload.outcome_wait_hours * 3600.0;
        let connected = self
            .calls
            .iter()
            .filter(|c| c.doc == doc)
            .filter_map(|c| self.escalations[c.esc_index].connected_s)
            .fold(None, |a: Option<f64>, t| Some(a.map_or(t, |a| a.max(t))));
        let now = secs(self.now);
        if let Some(t) = connected
            && now - t < wait_s - 1.0
        {
            let hub = self.nodes[h].name.clone();
            self.violate(
                "outcomes",
                format!(
                    "{hub} flagged the {side} outcome not reported {:.0} s after the call connected (the wait is {:.0} s)",
                    now - t,
                    wait_s
                ),
            );
        }
    }

    pub(super) fn check_frame_scope(&mut self, receiver: usize, f: &Frame) {
        let ids: Vec<DocId> = match f {
            Frame::Summary(s) => s.entries.iter().map(|e| e.0).collect(),
            Frame::SummaryReply(r) => r.entries.iter().map(|e| e.0).collect(),
            Frame::Ranges(rs) => rs
                .iter()
                .flat_map(|r| match &r.mode {
                    sync_protocol::wire::RangeMode::Items { items, .. } => {
                        items.iter().map(|i| i.0).collect::<Vec<_>>()
                    }
                    _ => Vec::new(),
                })
                .collect(),
            Frame::Heads { doc, .. } | Frame::Ack { doc, .. } | Frame::Need { doc } | Frame::Refused { doc } => {
                vec![*doc]
            }
            Frame::Changes(c) => vec![c.doc],
            _ => Vec::new(),
        };
        let info = self.nodes[receiver].info.clone();
        // "I hold nothing of it" and "I will not store it" about an id the receiver itself named
        // (a hostile node probing) say what they would say of a session that does not exist.
        let nothing = matches!(f, Frame::Refused { .. }) || matches!(f, Frame::Heads { heads, .. } if heads.is_empty());
        for id in ids {
            if nothing && self.named.contains(&(receiver, id)) {
                continue;
            }
            // A directory goes only to its own ICB's nodes.
            if is_directory_id(&id) && info.icb.as_deref().map(directory_id) != Some(id) && !nothing {
                let what = f.name();
                self.violate("scope", format!("{} was sent {what} about another ICB's directory", info.name));
                continue;
            }
            // A receiver may be told of documents it asked about; what matters is that nothing
            // outside its scope is sent to it unasked: documents it cannot hold.
            if let Some(meta) = self.metas.get(&id)
                && !may_hold(&info, meta)
                && !self.nodes[receiver].replica.ids().contains(&id)
            {
                let what = f.name();
                self.violate(
                    "scope",
                    format!("{} was sent {what} about {}, outside its scope", info.name, SessionId::from_bytes(id)),
                );
            }
        }
    }

    /// One round of attacks by the hostile node of link `l` on the hub, with the node's own valid
    /// identity and key, on a session of someone else (a leaked copy): a self-share, a reply
    /// forged in a consultant's name, a forged hub receipt, a change under another member's
    /// actor, an operation bomb, and reads by id. Every forged change must be refused (the
    /// hub must not hold it afterwards); what the hub sends back is checked for scope on
    /// arrival like every frame.
    pub(super) fn attack(&mut self, l: usize) {
        let (n, hub) = (self.links[l].node, self.links[l].hub);
        if !self.nodes[hub].up || !self.nodes[n].up {
            return;
        }
        let me = self.nodes[n].info.clone();
        let victim = self.nodes[hub].replica.ids().into_iter().find(|id| {
            self.nodes[hub].replica.view_ref(id).is_some_and(|v| !may_hold(&me, &v.meta()) && !v.messages.is_empty())
        });
        let Some(victim) = victim else { return };
        self.named.insert((n, victim));
        let Some(mut leaked) = self.nodes[hub].replica.copy_doc(&victim) else { return };
        let key = self.nodes[n].replica.author().clone();
        let other = self.nodes.iter().find(|x| x.kind == Kind::Desk).map(|x| x.replica.actor().clone());
        let round = self.attacks.0;
        let mut doc = leaked.fork_as(match (round % 6, other) {
            (3, Some(a)) => a,
            _ => key.actor().clone(),
        });
        let before = doc.heads();
        let am = doc.automerge();
        let obj = |am: &automerge::AutoCommit, parent: &automerge::ObjId, k: &str| match am.get(parent, k) {
            Ok(Some((automerge::Value::Object(_), o))) => Some(o),
            _ => None,
        };
        use automerge::ReadDoc;
        use automerge::transaction::Transactable;
        let forged = match round % 6 {
            0 => obj(am, &automerge::ROOT, "shares").map(|sh| am.put(&sh, me.name.as_str(), 1).is_ok()),
            1 => obj(am, &automerge::ROOT, "messages").map(|m| {
                let at = am.length(&m);
                am.insert_object(&m, at, automerge::ObjType::Map)
                    .and_then(|e| {
                        am.put(&e, "author", "desk-001")?;
                        am.put(&e, "side", "responder")?;
                        am.put(&e, "text", "benign, discharge")
                    })
                    .is_ok()
            }),
            2 | 3 => obj(am, &automerge::ROOT, "messages").and_then(|m| match am.get(&m, 0) {
                Ok(Some((automerge::Value::Object(_), first))) => {
                    obj(am, &first, "receipts").map(|r| am.put(&r, format!("hub/{}", self.nodes[hub].name), 1).is_ok())
                }
                _ => None,
            }),
            4 => obj(am, &automerge::ROOT, "messages")
                .map(|m| am.splice(&m, 0, 0, std::iter::repeat_n(automerge::ScalarValue::Null, 100_000)).is_ok()),
            _ => None,
        };
        let frames = if forged == Some(true) {
            am.commit();
            let changes = am.get_changes(&before);
            let bytes: Vec<u8> = changes.iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
            let sigs = changes.iter().map(|c| key.sign(&c.hash())).collect();
            let hashes: Vec<Hash> = changes.iter().map(|c| Hash::from(c.hash())).collect();
            let heads = doc.heads().iter().map(|h| Hash::from(*h)).collect();
            vec![(hashes, Frame::Changes(sync_protocol::wire::Changes { doc: victim, ack: false, heads, bytes, sigs }))]
        } else {
            vec![
                (Vec::new(), Frame::Need { doc: victim }),
                (Vec::new(), Frame::Heads { doc: victim, heads: vec![Hash([7; 32])] }),
            ]
        };
        let now = self.node_now(hub);
        let hub_info = self.nodes[hub].info.clone();
        for (hashes, frame) in frames {
            self.attacks.0 += 1;
            let Some(c) = self.links[l].conn.as_mut() else { return };
            let result = c.engines[1].handle(&mut self.nodes[hub].replica, vec![frame], now);
            self.flush(l, 1, 0);
            if let Err(e) = result {
                self.drop_conn(l, &e.to_string());
                return;
            }
            let held = self.nodes[hub].replica.known_hashes(&hub_info, &victim, &hashes).unwrap_or_default();
            if held.is_empty() {
                self.attacks.1 += 1;
            } else {
                self.violate("byzantine", format!("the hub stored a change {} forged in {}'s name", me.name, me.name));
            }
        }
        self.after_changes(hub, None);
    }

    pub(super) fn violate(&mut self, check: &str, detail: String) {
        if self.violations.len() < 1000 {
            self.violations.push(Violation { check: check.into(), at_s: secs(self.now), detail });
        }
    }

    /// Periodic checks: scope of what every node holds.
    pub(super) fn sweep(&mut self) {
        let mut bad = Vec::new();
        for n in &self.nodes {
            for id in n.replica.ids() {
                if let Some(meta) = self.metas.get(&id)
                    && !may_hold(&n.info, meta)
                {
                    bad.push(format!("{} holds {}, outside its scope", n.name, SessionId::from_bytes(id)));
                }
            }
        }
        for b in bad {
            self.violate("scope", b);
        }
    }

    /// Every write a node acknowledged is still in its store.
    pub(super) fn check_durability(&mut self, n: usize) {
        let mut bad = Vec::new();
        for e in self.ledger.entries.iter().filter(|e| e.node == n && !self.lost_in_restore.contains(&e.key)) {
            let present = match self.nodes[n].replica.view(&e.doc) {
                None => false,
                Some(v) => match e.what {
                    What::Session => true,
                    What::Message => v.messages.iter().any(|m| m.id == e.key),
                    What::Photo => v.media.iter().any(|m| m.hash == e.key),
                },
            };
            if !present {
                bad.push(format!("{} lost its acknowledged {:?} {} after a crash", self.nodes[n].name, e.what, e.key));
            }
        }
        for b in bad {
            self.violate("durability", b);
        }
    }
}
