//! What the world makes of a node's changed sessions: the scope facts a hub's share widens,
//! when each write first reached the hub and a desk, and the desks' replies. Each changed view
//! is also handed to the checkers ([`Observed::View`]).

use super::checks::Observed;
use super::*;

impl World {
    /// A node's copies of `changed` sessions changed (a local write or a sync).
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
            self.check(Observed::View { node: owner, view: &view });
            // Delivery: first time the hub, or a desk of the line, holds each write.
            let desk_line = self.nodes[owner].info.lines.first().copied();
            let of_the_line =
                desk_line == Some(view.service.line) || view.shared_with.contains(&self.nodes[owner].name);
            if kind == Kind::Hub || (kind == Kind::Desk && of_the_line) {
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
        }
    }
}
