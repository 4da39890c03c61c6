//! Sampling, settling and convergence, and the end of the run.

use super::checks::Observed;
use super::*;

impl World {
    pub(super) fn sample(&mut self) {
        let mut up: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for l in &self.links {
            let k = self.nodes[l.node].kind.as_str().to_string();
            let e = up.entry(k).or_default();
            e.1 += 1;
            if l.up() {
                e.0 += 1;
            }
        }
        let mut backlog: BTreeMap<String, u64> = BTreeMap::new();
        for e in &self.ledger.entries {
            if e.at_hub.is_none() {
                *backlog.entry(e.kind.as_str().to_string()).or_default() += 1;
            }
        }
        self.samples.push(Sample {
            hour: hours_of(self.now),
            wire_bytes: std::mem::take(&mut self.wire_bucket),
            payload_bytes: std::mem::take(&mut self.payload_bucket),
            links_up: up.into_iter().map(|(k, (a, b))| (k, a as f64 / b.max(1) as f64)).collect(),
            backlog,
        });
    }

    /// The end of the scenario: faults end, links heal, and the region runs until it converges.
    pub(super) fn settle(&mut self) {
        self.settling = Some(self.now);
        for l in 0..self.links.len() {
            let was = self.links[l].up();
            self.links[l].natural_up = true;
            self.links[l].forced_down = 0;
            self.links[l].clog = 1.0;
            self.links[l].corrupt = 0.0;
            self.links[l].duplicate = 0.0;
            self.link_changed(l, was);
        }
        for n in 0..self.nodes.len() {
            self.restart(n);
        }
        self.last_heal = self.now;
        let limit = (self.scenario.settle_minutes * MINUTE as f64) as Micros;
        self.after(SECOND, Ev::Converge);
        self.after(limit, Ev::End);
    }

    /// Whether every replica holds exactly what the hub holds of its scope, and every photo is
    /// whole at the hub and at every desk that holds its session.
    pub fn converged(&mut self) -> bool {
        let hub = self.hub;
        let mut hub_heads: BTreeMap<DocId, Vec<Hash>> = BTreeMap::new();
        for id in self.nodes[hub].replica.ids() {
            if let Some(h) = self.nodes[hub].replica.heads(&id) {
                hub_heads.insert(id, h);
            }
        }
        if self.metas.keys().any(|id| !hub_heads.contains_key(id)) {
            return false;
        }
        for n in 0..self.nodes.len() {
            if n == hub {
                continue;
            }
            for (id, heads) in &hub_heads {
                let Some(meta) = self.metas.get(id) else { continue };
                if !may_hold(&self.nodes[n].info, meta) {
                    continue;
                }
                if self.nodes[n].replica.heads(id).as_ref() != Some(heads) {
                    return false;
                }
            }
        }
        if self.directory_divergence().is_some() {
            return false;
        }
        for e in self.ledger.entries.iter().filter(|e| e.what == What::Photo && !self.lost_in_restore.contains(&e.key))
        {
            let Some(h) = Hash::from_hex(&e.key) else { continue };
            if !self.nodes[hub].replica.holds_blob(&h) {
                return false;
            }
            let Some(meta) = self.metas.get(&e.doc) else { continue };
            for n in &self.nodes {
                if n.kind == Kind::Desk && may_hold(&n.info, meta) && !n.replica.holds_blob(&h) {
                    return false;
                }
            }
        }
        true
    }

    /// Final checks after the run.
    pub fn finish(&mut self) {
        for n in 0..self.nodes.len() {
            self.check(Observed::Started { node: n });
        }
        self.check(Observed::Sweep);
        // What a restored node lost and a peer still held is back by now: every receipt is
        // checked again, but for items lost for good (reported, not hidden).
        self.unvouched.retain(|_, for_good| *for_good);
        for n in 0..self.nodes.len() {
            for id in self.nodes[n].replica.ids() {
                if let Some(view) = self.nodes[n].replica.view(&id) {
                    self.check(Observed::Final { node: n, view: &view });
                }
            }
        }
        if self.converged_at.is_none() {
            if self.converged() {
                self.converged_at = Some(self.now);
            } else {
                let detail = self.divergence();
                self.check(Observed::Diverged { detail });
            }
        }
        self.check(Observed::Ended);
    }

    /// A node whose copy of its ICB's directory differs from its hub's, if any.
    pub(super) fn directory_divergence(&self) -> Option<String> {
        for h in (0..self.nodes.len()).filter(|h| self.nodes[*h].kind == Kind::Hub) {
            let Some(heads) = self.nodes[h].replica.directory_heads() else { continue };
            let icb = self.nodes[h].info.icb.clone();
            for n in &self.nodes {
                if n.kind != Kind::Hub && n.info.icb == icb && n.replica.directory_heads().as_ref() != Some(&heads) {
                    return Some(format!("{} does not hold {}'s directory as it is", n.name, self.nodes[h].name));
                }
            }
        }
        None
    }

    pub(super) fn divergence(&mut self) -> String {
        if let Some(d) = self.directory_divergence() {
            return d;
        }
        let hub = self.hub;
        let hub_ids = self.nodes[hub].replica.ids();
        for id in self.metas.keys() {
            if !hub_ids.contains(id) {
                return format!("the hub never received session {}", SessionId::from_bytes(*id));
            }
        }
        for n in 0..self.nodes.len() {
            if n == hub {
                continue;
            }
            for id in &hub_ids {
                let Some(meta) = self.metas.get(id).cloned() else { continue };
                let theirs = self.nodes[hub].replica.heads(id);
                if may_hold(&self.nodes[n].info, &meta) && self.nodes[n].replica.heads(id) != theirs {
                    return format!(
                        "{} and the hub still differ on session {}",
                        self.nodes[n].name,
                        SessionId::from_bytes(*id)
                    );
                }
            }
        }
        for e in self.ledger.entries.iter().filter(|e| e.what == What::Photo && !self.lost_in_restore.contains(&e.key))
        {
            let Some(h) = Hash::from_hex(&e.key) else { continue };
            let Some(meta) = self.metas.get(&e.doc) else { continue };
            let short = &e.key[..12];
            let describe = |n: &Node| {
                let b = n.replica.blobs.get(&h);
                format!(
                    "{} holds {} chunks{}{}",
                    n.name,
                    b.map_or(0, |b| b.chunks.len()),
                    if b.is_some_and(|b| b.manifest.is_some()) { " and the manifest" } else { "" },
                    if b.is_some_and(|b| b.offloaded) { " (offloaded)" } else { "" }
                )
            };
            if !self.nodes[hub].replica.holds_blob(&h) {
                let origin = self.nodes.iter().find(|n| n.name == meta.origin).map(describe).unwrap_or_default();
                return format!(
                    "photo {short} of {} never reached the hub whole: {}; {origin}",
                    SessionId::from_bytes(e.doc),
                    describe(&self.nodes[hub])
                );
            }
            for n in &self.nodes {
                if n.kind == Kind::Desk && may_hold(&n.info, meta) && !n.replica.holds_blob(&h) {
                    return format!(
                        "photo {short} of {} never reached {} whole: {}",
                        SessionId::from_bytes(e.doc),
                        n.name,
                        describe(n)
                    );
                }
            }
        }
        "a photo never reached the hub, or a desk, whole".into()
    }

    /// Simulated seconds of the settle phase until convergence.
    pub fn convergence_seconds(&self) -> Option<f64> {
        Some(secs(self.converged_at?.saturating_sub(self.settling?)))
    }

    /// When the scenario (before settling) ended, hours.
    pub fn scenario_hours(&self) -> f64 {
        self.opts.hours.unwrap_or(self.scenario.hours)
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Nodes of each kind.
    pub fn count(&self, kind: Kind) -> usize {
        self.nodes.iter().filter(|n| n.kind == kind).count()
    }

    /// Photo bytes generated.
    pub fn photo_bytes(&self) -> u64 {
        self.photos.values().map(|p| p.len() as u64).sum()
    }

    /// Drops memory no longer needed once the run is over.
    pub fn release(&mut self) {
        self.photos.clear();
        let _ = &self.pool;
    }
}
