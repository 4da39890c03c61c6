//! The invariant checkers: durability, scope, receipts, status, routing, outcomes, the
//! directory, hostile nodes, audit chains cut back, convergence.
//!
//! The world tells them what happened as [`Observed`] events ([`World::check`]); they judge each
//! against the truth (what every replica really holds, the scope facts of every session, the
//! ledger of acknowledged writes) and keep their own state. They never change the world, and
//! draw nothing from its random generator, so a run's events are the same with or without
//! them.

use super::*;
use sync_protocol::audit;
use sync_protocol::directory::{LineRefusal, directory_id, is_directory_id};

/// Something the checkers judge.
#[derive(Debug)]
pub(super) enum Observed<'a> {
    /// A node's copy of a session changed: it now shows `view`.
    View { node: usize, view: &'a SessionView },
    /// The run is over: what a node shows of a session in the end.
    Final { node: usize, view: &'a SessionView },
    /// A frame reached a node.
    Frame { receiver: usize, frame: &'a Frame },
    /// A node came back after a crash (or the run ended): what it acknowledged must be there.
    Started { node: usize },
    /// A node is about to be put back to an older copy (it still holds what it held).
    Restoring { node: usize },
    /// A node was restored from an older copy: what it showed before is not what it holds.
    Restored { node: usize },
    /// The hourly look at what every node holds.
    Sweep,
    /// A clinician recorded an outcome.
    Recorded { doc: DocId, side: Side },
    /// A hub flagged a side's outcome `not_reported`.
    Flagged { hub: usize, doc: DocId, side: Side },
    /// A hostile node named a session in a probe.
    Probed { node: usize, doc: DocId },
    /// A hostile node sent the hub changes it forged (`hashes`) in a session.
    Forged { hub: usize, by: usize, doc: DocId, hashes: &'a [Hash] },
    /// A router rang a desk for call `call` the first time, on a line whose directory entry said
    /// `refusal` at that moment.
    Rang { call: usize, desk: &'a str, refusal: Option<LineRefusal> },
    /// A hub's router refused call `call` for its link.
    GateRefused { call: usize, hub: usize },
    /// The hub could not write a directory edit.
    DirectoryEditFailed { line: ServiceLine },
    /// The run ended without every replica converging.
    Diverged { detail: String },
    /// `receiver` took an audit head from `sender` (its engine handled it without error).
    AuditHeard { receiver: usize, sender: usize },
    /// A corrupted frame between `a` and `b` decoded as an audit head.
    AuditCorrupted { a: usize, b: usize },
    /// The run is over (after every other final check).
    Ended,
}

/// A finding an audit chain must come to hold: `finder` records `action` naming `about`, in
/// its entry `from` or a later one.
#[derive(Debug)]
struct AuditExpected {
    finder: usize,
    about: usize,
    action: &'static str,
    from: u64,
    /// When the restore that calls for it was made.
    at_s: f64,
    /// The hearings (receiver, sender: a node taking the other's audit head) still to come, in
    /// order, before the finding is due (the settling ends once the replicas converge, which
    /// may come first).
    need: Vec<(usize, usize)>,
}

impl AuditExpected {
    /// Whether the finder's chain holds the finding, in entry `from` or a later one.
    fn made(&self, w: &World) -> bool {
        let about = w.nodes[self.about].name.as_str();
        w.nodes[self.finder]
            .replica
            .audit
            .as_ref()
            .is_some_and(|a| a.found(self.action, self.from).iter().any(|p| p.as_deref() == Some(about)))
    }
}

/// The checkers' own state, and what they found.
#[derive(Debug, Default)]
pub(super) struct Checks {
    /// Status last seen per (node, session).
    statuses: BTreeMap<(usize, DocId), (u32, Status)>,
    /// Outcomes the clinicians recorded: (session, side).
    recorded: BTreeSet<(DocId, Side)>,
    /// Sessions a hostile node named in its probes: (node, session).
    named: BTreeSet<(usize, DocId)>,
    /// Recorded outcomes the node being restored showed just before ([`Observed::Restoring`]).
    restoring: BTreeSet<(DocId, Side)>,
    /// (finder, node whose chain was cut): the finder's chain end when that node was first
    /// restored (lowered to its own restored end if the finder is put back since). A finding
    /// of that cut is justified only in a later entry.
    audit_since: BTreeMap<(usize, usize), u64>,
    /// Pairs of nodes between which a corrupted audit head was delivered (lower index first).
    audit_tainted: BTreeSet<(usize, usize)>,
    /// Findings audit chains must come to hold ([`Checks::audit_restored`]).
    audit_expected: Vec<AuditExpected>,
    /// What they found.
    pub(super) violations: Vec<Violation>,
}

impl World {
    /// Hands an event to the checkers.
    pub(super) fn check(&mut self, ev: Observed<'_>) {
        let mut checks = std::mem::take(&mut self.checks);
        checks.on(self, ev);
        self.checks = checks;
    }

    /// Invariant violations found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.checks.violations
    }

    /// Findings the restores made due (each checked at the end: the finder has heard from
    /// the node since), and findings of a chain cut back or changed held in every chain now.
    pub fn audit_findings(&self) -> (u64, u64) {
        let held = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.audit.as_ref())
            .map(|a| {
                ["peer.audit_behind", "audit.behind", "peer.audit_chain_changed"]
                    .iter()
                    .map(|what| a.found(what, 1).len() as u64)
                    .sum::<u64>()
            })
            .sum();
        let due = self.checks.audit_expected.iter().filter(|e| e.need.is_empty()).count() as u64;
        (due, held)
    }
}

impl Checks {
    /// Judges one event. The world is lent mutably only because reading a replica's past
    /// (a hub's acknowledged heads) closes Automerge's pending transaction; nothing is written.
    fn on(&mut self, w: &mut World, ev: Observed<'_>) {
        match ev {
            Observed::View { node, view } => {
                self.status(w, node, view);
                self.receipts(w, node, view);
            }
            Observed::Final { node, view } => {
                self.receipts(w, node, view);
                self.outcomes(w, node, view);
            }
            Observed::Frame { receiver, frame } => self.frame_scope(w, receiver, frame),
            Observed::Started { node } => self.durability(w, node),
            Observed::Restoring { node } => {
                self.restoring =
                    self.recorded.iter().filter(|(doc, side)| shows_outcome(w, node, doc, *side)).copied().collect();
            }
            Observed::Restored { node } => {
                self.statuses.retain(|(o, _), _| *o != node);
                self.outcomes_lost(w);
                self.audit_restored(w, node);
            }
            Observed::Sweep => self.sweep(w),
            Observed::Recorded { doc, side } => {
                self.recorded.insert((doc, side));
            }
            Observed::Flagged { hub, doc, side } => self.flag_time(w, hub, doc, side),
            Observed::Probed { node, doc } => {
                self.named.insert((node, doc));
            }
            Observed::Forged { hub, by, doc, hashes } => {
                let info = w.nodes[hub].info.clone();
                let held = w.nodes[hub].replica.known_hashes(&info, &doc, hashes).unwrap_or_default();
                if !held.is_empty() {
                    let name = &w.nodes[by].name;
                    self.violate(w, "byzantine", format!("the hub stored a change {name} forged in {name}'s name"));
                }
            }
            Observed::Rang { call, desk, refusal } => {
                // The line's own hours: nobody is rung on a line closed or taking no calls.
                if let Some(why) = refusal {
                    self.violate(w, "routing", format!("the router rang {desk} although {why}"));
                }
                // A desk is rung only once its own store holds the session whole.
                let whole = w.nodes.iter().position(|n| n.name == desk).is_some_and(|d| w.holds_whole(call, d));
                if !whole {
                    self.violate(
                        w,
                        "receipts",
                        format!("the router rang {desk} for a session its store did not hold whole"),
                    );
                }
            }
            Observed::GateRefused { call, hub } => self.gate_refusal(w, call, hub),
            Observed::DirectoryEditFailed { line } => {
                self.violate(w, "directory", format!("the hub could not write its directory edit of {line}"));
            }
            Observed::Diverged { detail } => self.violate(w, "convergence", detail),
            Observed::AuditCorrupted { a, b } => {
                self.audit_tainted.insert((a.min(b), a.max(b)));
            }
            Observed::AuditHeard { receiver, sender } => {
                for e in self.audit_expected.iter_mut() {
                    if e.need.first() == Some(&(receiver, sender)) {
                        e.need.remove(0);
                    }
                }
            }
            Observed::Ended => self.audit_end(w),
        }
    }

    /// A node `x` was restored from a backup (the replica holds it now): each partner that
    /// had kept an end of its chain the restored chain does not hold, and had not found that end
    /// lost already, must find it (`peer.audit_behind`); a member restored, at the hub's next
    /// hearing of it, and told so by its own hub, the member must find it too (`audit.behind`)
    /// at its next hearing of the hub, unless the end is one it had already found; a hub
    /// restored, by each member once the hub has heard the member and the member then the hub
    /// (the first conversation gives the hub the end it must vouch for, the next the proof).
    /// Findings the restored node was to record went with its chain.
    fn audit_restored(&mut self, w: &World, x: usize) {
        for (y, node) in w.nodes.iter().enumerate() {
            if let Some(ya) = node.replica.audit.as_ref() {
                self.audit_since.entry((y, x)).or_insert(ya.head());
            }
        }
        if let Some(xa) = w.nodes[x].replica.audit.as_ref() {
            for ((finder, _), mark) in self.audit_since.iter_mut() {
                if *finder == x {
                    *mark = (*mark).min(xa.head());
                }
            }
        }
        // What x was to find went with its chain; what was to be found of x (or told x by a
        // hub now put back) and is not found yet is judged afresh below from what is kept now.
        self.audit_expected.retain(|e| e.finder != x && (e.about != x || e.made(w)));
        let Some(xa) = w.nodes[x].replica.audit.as_ref() else { return };
        if w.nodes[x].hostile {
            return;
        }
        let hub_restored = w.nodes[x].kind == Kind::Hub;
        for y in 0..w.nodes.len() {
            let (xi, yi) = (&w.nodes[x].info, &w.nodes[y].info);
            if y == x || w.nodes[y].hostile || !audit::partners(xi, yi) {
                continue;
            }
            let Some(ya) = w.nodes[y].replica.audit.as_ref() else { continue };
            let Some(k) = ya.kept(&xi.name) else { continue };
            if k.chain != xa.chain() || k.head == 0 || xa.anchor(k.head) == Some(k.anchor) {
                continue;
            }
            let at_s = secs(w.now);
            if k.their_lost != k.head {
                let from = ya.head() + 1;
                let need = if hub_restored { vec![(x, y), (y, x)] } else { vec![(y, x)] };
                self.audit_expected.push(AuditExpected {
                    finder: y,
                    about: x,
                    action: "peer.audit_behind",
                    from,
                    at_s,
                    need,
                });
            }
            if audit::believed(xi, yi) && xa.kept(&yi.name).map_or(0, |m| m.lost) != k.head {
                let from = xa.head() + 1;
                self.audit_expected.push(AuditExpected {
                    finder: x,
                    about: y,
                    action: "audit.behind",
                    from,
                    at_s,
                    need: vec![(x, y)],
                });
            }
        }
    }

    /// At the end: every finding in every audit chain is of a node restored before it was
    /// written (no false alarm), and every finding a restore made due was made.
    fn audit_end(&mut self, w: &World) {
        let tainted = |a: usize, b: usize| self.audit_tainted.contains(&(a.min(b), a.max(b)));
        let index = |name: &str| w.nodes.iter().position(|n| n.name == name);
        let mut found = Vec::new();
        for (y, node) in w.nodes.iter().enumerate() {
            let Some(ya) = node.replica.audit.as_ref() else { continue };
            for (action, whose) in
                [("peer.audit_behind", false), ("audit.behind", true), ("peer.audit_chain_changed", false)]
            {
                let mut named: BTreeMap<Option<String>, usize> = BTreeMap::new();
                for peer in ya.found(action, 1) {
                    *named.entry(peer).or_default() += 1;
                }
                for (peer, total) in named {
                    let Some(p) = peer.as_deref().and_then(index) else {
                        found.push(format!("{} recorded {action} naming no node of the region ({peer:?})", node.name));
                        continue;
                    };
                    let cut = if whose { y } else { p };
                    // Only entries written after `cut` was first restored may find it cut.
                    let justified = match self.audit_since.get(&(y, cut)) {
                        Some(mark) if action != "peer.audit_chain_changed" => ya
                            .found(action, mark + 1)
                            .iter()
                            .filter(|q| q.as_deref() == Some(w.nodes[p].name.as_str()))
                            .count(),
                        _ => 0,
                    };
                    if justified < total && !tainted(y, p) && !w.nodes[p].hostile {
                        found.push(format!(
                            "{} recorded {action} about {} though {} had not been restored then",
                            node.name, w.nodes[p].name, w.nodes[cut].name
                        ));
                    }
                }
            }
        }
        for e in &self.audit_expected {
            if tainted(e.finder, e.about) || !e.need.is_empty() {
                continue;
            }
            let (finder, about) = (&w.nodes[e.finder], &w.nodes[e.about]);
            if !e.made(w) {
                let restored = if e.action == "audit.behind" { finder } else { about };
                found.push(format!(
                    "{} was restored at {:.0} s from a backup that no longer holds the end of its audit chain {} had kept, and {} never recorded {}",
                    restored.name, e.at_s, if e.action == "audit.behind" { &about.name } else { &finder.name },
                    finder.name, e.action
                ));
            }
        }
        for detail in found {
            self.violate(w, "audit", detail);
        }
    }

    fn violate(&mut self, w: &World, check: &str, detail: String) {
        if self.violations.len() < 1000 {
            self.violations.push(Violation { check: check.into(), at_s: secs(w.now), detail });
        }
    }

    /// Status never moves backwards at any node.
    fn status(&mut self, w: &World, node: usize, view: &SessionView) {
        let key = (node, view.id.to_bytes());
        let st = (view.reopened, view.status);
        if let Some(prev) = self.statuses.get(&key).copied()
            && st < prev
        {
            let detail = format!("{} saw {} go from {:?} back to {:?}", w.nodes[node].name, view.id, prev, st);
            self.violate(w, "status", detail);
        }
        self.statuses.insert(key, st);
    }

    /// Receipts never claim more than is true: a node shown holding a message or a photo holds
    /// it (unless a restore took it and it has not come back yet).
    fn receipts(&mut self, w: &mut World, owner: usize, view: &SessionView) {
        let mut bad = Vec::new();
        for m in &view.messages {
            for r in &m.receipts {
                if matches!(r.level, ReceiptLevel::Hub | ReceiptLevel::Desk | ReceiptLevel::Requester) {
                    let Some(holder) = w.nodes.iter().position(|n| n.name == r.node) else { continue };
                    if w.unvouched.contains_key(&(holder, m.id.clone())) {
                        continue;
                    }
                    let held = w.nodes[holder]
                        .replica
                        .view(&view.id.to_bytes())
                        .is_some_and(|v| v.messages.iter().any(|x| x.id == m.id));
                    if !held {
                        bad.push(format!(
                            "{} shows message {} {} at {}, which does not hold it",
                            w.nodes[owner].name,
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
                    let Some(holder) = w.nodes.iter().position(|n| n.name == r.node) else { continue };
                    if w.unvouched.contains_key(&(holder, m.hash.clone())) {
                        continue;
                    }
                    let held = Hash::from_hex(&m.hash).is_some_and(|h| {
                        let rep = &w.nodes[holder].replica;
                        rep.holds_blob(&h) || rep.blobs.get(&h).is_some_and(|b| b.offloaded)
                    });
                    if !held {
                        bad.push(format!(
                            "{} shows photo {} {} at {}, which does not hold its bytes",
                            w.nodes[owner].name,
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
        for (m, hubs) in w.nodes[owner].replica.messages_vouched_by_hubs(&id) {
            let true_of = |hub: &String| {
                let Some(holder) = w.nodes.iter().position(|n| &n.name == hub) else { return false };
                w.unvouched.contains_key(&(holder, m.1.clone()))
                    || w.nodes[holder].replica.view(&id).is_some_and(|v| v.messages.iter().any(|x| x.key() == m))
            };
            if !hubs.iter().any(true_of) {
                bad.push(format!(
                    "{} shows its message {} at hub from what {} acknowledged, which does not hold it",
                    w.nodes[owner].name,
                    m.1,
                    hubs.join(", ")
                ));
            }
        }
        for b in bad {
            self.violate(w, "receipts", b);
        }
    }

    /// Outcomes: an outcome a clinician recorded is never shown as `not_reported`, whatever
    /// order the clinician's write and the hub's flag reached a replica in.
    fn outcomes(&mut self, w: &World, n: usize, view: &SessionView) {
        let doc = view.id.to_bytes();
        for (side, shown) in [(Side::Requester, &view.outcome.requester), (Side::Responder, &view.outcome.responder)] {
            if shown.as_ref().is_some_and(|o| o.value == Outcome::NotReported) && self.recorded.contains(&(doc, side)) {
                let name = &w.nodes[n].name;
                let detail =
                    format!("{name} shows the {side} outcome of {} as not reported, but it was recorded", view.id);
                self.violate(w, "outcomes", detail);
            }
        }
    }

    /// After a restore: an outcome recorded on the restored node alone, not yet sent anywhere,
    /// is lost for good with the writes after its backup, and a hub then rightly flags that
    /// side not reported. What no replica shows any more is no longer held against the flag.
    /// Only an outcome the restored node showed just before, and no replica shows now: one a
    /// flag overwrote everywhere (the bug the check is for) is still held against it.
    fn outcomes_lost(&mut self, w: &World) {
        let lost = std::mem::take(&mut self.restoring);
        self.recorded.retain(|(doc, side)| {
            !lost.contains(&(*doc, *side)) || (0..w.nodes.len()).any(|n| shows_outcome(w, n, doc, *side))
        });
    }

    /// A hub flags a side `not_reported` only once the outcome wait has passed since the call
    /// connected (the hub's clock runs with virtual time, so the ledger's time is the hub's).
    fn flag_time(&mut self, w: &World, h: usize, doc: DocId, side: Side) {
        let wait_s = w.scenario.workload.outcome_wait_hours * 3600.0;
        let connected = w
            .calls
            .iter()
            .filter(|c| c.doc == doc)
            .filter_map(|c| w.escalations[c.esc_index].connected_s)
            .fold(None, |a: Option<f64>, t| Some(a.map_or(t, |a| a.max(t))));
        let now = secs(w.now);
        if let Some(t) = connected
            && now - t < wait_s - 1.0
        {
            let hub = &w.nodes[h].name;
            let detail = format!(
                "{hub} flagged the {side} outcome not reported {:.0} s after the call connected (the wait is {:.0} s)",
                now - t,
                wait_s
            );
            self.violate(w, "outcomes", detail);
        }
    }

    /// A call refused for its link: the gate must have listened to every window it may (unless
    /// the link went away while it listened), and none of them may have been good enough.
    fn gate_refusal(&mut self, w: &World, i: usize, h: usize) {
        let heard = &w.calls[i].heard;
        let passed = heard.iter().position(|q| gate(q, &ADPCM_32K).is_ok());
        let cut = heard.last().is_some_and(|q| q.probes == 0);
        let n = heard.len();
        let hub = &w.nodes[h].name;
        if let Some(k) = passed {
            let detail = format!("{hub} refused a call for its link although second {} of {n} passed", k + 1);
            self.violate(w, "routing", detail);
        } else if !cut && n < GATE_WINDOWS as usize {
            let detail = format!("{hub} refused a call for its link after listening {n} s of {GATE_WINDOWS}");
            self.violate(w, "routing", detail);
        }
    }

    /// Nothing outside a node's scope is sent to it unasked.
    fn frame_scope(&mut self, w: &World, receiver: usize, f: &Frame) {
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
        let info = &w.nodes[receiver].info;
        // "I hold nothing of it" and "I will not store it" about an id the receiver itself named
        // (a hostile node probing) say what they would say of a session that does not exist.
        let nothing = matches!(f, Frame::Refused { .. }) || matches!(f, Frame::Heads { heads, .. } if heads.is_empty());
        for id in ids {
            if nothing && self.named.contains(&(receiver, id)) {
                continue;
            }
            // A directory goes only to its own ICB's nodes.
            if is_directory_id(&id) && info.icb.as_deref().map(directory_id) != Some(id) && !nothing {
                let detail = format!("{} was sent {} about another ICB's directory", info.name, f.name());
                self.violate(w, "scope", detail);
                continue;
            }
            // A receiver may be told of documents it asked about; what matters is that nothing
            // outside its scope is sent to it unasked: documents it cannot hold.
            if let Some(meta) = w.metas.get(&id)
                && !may_hold(info, meta)
                && !w.nodes[receiver].replica.ids().contains(&id)
            {
                let detail = format!(
                    "{} was sent {} about {}, outside its scope",
                    info.name,
                    f.name(),
                    SessionId::from_bytes(id)
                );
                self.violate(w, "scope", detail);
            }
        }
    }

    /// No node holds a session outside its scope.
    fn sweep(&mut self, w: &World) {
        let mut bad = Vec::new();
        for n in &w.nodes {
            for id in n.replica.ids() {
                if let Some(meta) = w.metas.get(&id)
                    && !may_hold(&n.info, meta)
                {
                    bad.push(format!("{} holds {}, outside its scope", n.name, SessionId::from_bytes(id)));
                }
            }
        }
        for b in bad {
            self.violate(w, "scope", b);
        }
    }

    /// Every write a node acknowledged is still in its store.
    fn durability(&mut self, w: &World, n: usize) {
        let mut bad = Vec::new();
        for e in w.ledger.entries.iter().filter(|e| e.node == n && !w.lost_in_restore.contains(&e.key)) {
            let present = match w.nodes[n].replica.view(&e.doc) {
                None => false,
                Some(v) => match e.what {
                    What::Session => true,
                    What::Message => v.messages.iter().any(|m| m.id == e.key),
                    What::Photo => v.media.iter().any(|m| m.hash == e.key),
                },
            };
            if !present {
                bad.push(format!("{} lost its acknowledged {:?} {} after a crash", w.nodes[n].name, e.what, e.key));
            }
        }
        for b in bad {
            self.violate(w, "durability", b);
        }
    }
}

/// Whether node `n` shows `side`'s outcome of `doc` as recorded (set, and not `not_reported`).
fn shows_outcome(w: &World, n: usize, doc: &DocId, side: Side) -> bool {
    w.nodes[n].replica.view_ref(doc).is_some_and(|v| {
        let o = if side == Side::Requester { &v.outcome.requester } else { &v.outcome.responder };
        o.as_ref().is_some_and(|o| o.value != Outcome::NotReported)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        let scenario = Scenario::load("smoke").unwrap_or_else(|e| panic!("smoke scenario: {e}"));
        World::new(scenario, Options { seed: 1, ..Options::default() })
    }

    #[test]
    fn the_checkers_judge_the_events_they_are_told_of_against_the_truth() {
        let mut w = world();
        let edge = w.nodes.iter().position(|n| n.kind != Kind::Hub && n.kind != Kind::Desk).unwrap_or(1);
        let doc = w.create_session(edge, ServiceLine::Cardiology, false).unwrap_or_else(|| panic!("a session"));
        let mut view = w.nodes[edge].replica.view(&doc).unwrap_or_else(|| panic!("its view"));
        assert!(w.violations().is_empty(), "{:?}", w.violations());

        // The same view again is no news; a status that goes back is.
        w.check(Observed::View { node: edge, view: &view });
        assert!(w.violations().is_empty(), "{:?}", w.violations());
        let seen = view.status;
        view.reopened += 1;
        w.check(Observed::View { node: edge, view: &view });
        view.reopened -= 1;
        w.check(Observed::View { node: edge, view: &view });
        let found: Vec<&str> = w.violations().iter().map(|v| v.check.as_str()).collect();
        assert_eq!(found, ["status"], "{:?} then reopened and back ({seen:?})", w.violations());

        // A restore forgets what the node showed before: the same step back is no longer one.
        w.check(Observed::Restored { node: edge });
        view.reopened += 1;
        w.check(Observed::View { node: edge, view: &view });
        view.reopened -= 1;
        w.check(Observed::Restored { node: edge });
        w.check(Observed::View { node: edge, view: &view });
        assert_eq!(w.violations().len(), 1, "{:?}", w.violations());

        // A frame about this session reaching a desk of another line, unasked, is out of scope;
        // the hub may be told of it.
        let derm = w.nodes.iter().position(|n| n.kind == Kind::Desk && n.info.lines != [ServiceLine::Cardiology]);
        let derm = derm.unwrap_or_else(|| panic!("a desk of another line"));
        let frame = Frame::Need { doc };
        w.check(Observed::Frame { receiver: w.hub, frame: &frame });
        assert_eq!(w.violations().len(), 1, "{:?}", w.violations());
        w.check(Observed::Frame { receiver: derm, frame: &frame });
        assert_eq!(w.violations().last().map(|v| v.check.as_str()), Some("scope"), "{:?}", w.violations());

        // What the node acknowledged is in its store; once it is not, the next start says so.
        w.check(Observed::Started { node: edge });
        assert_eq!(w.violations().len(), 2, "{:?}", w.violations());
        w.nodes[edge].replica = MemReplica::new(
            w.nodes[edge].info.clone(),
            w.nodes[edge].replica.author().clone(),
            SharedRoster::default(),
        );
        w.check(Observed::Started { node: edge });
        assert_eq!(w.violations().last().map(|v| v.check.as_str()), Some("durability"), "{:?}", w.violations());
    }
}
