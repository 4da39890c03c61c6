//! Faults: outages, partitions, crashes, clogs, skew, corruption, forgetting, restores, hostile nodes.

use super::checks::Observed;
use super::*;

impl World {
    pub(super) fn targets(&self, spec: &str) -> Vec<usize> {
        if spec == "all" {
            return (0..self.nodes.len()).collect();
        }
        if spec == "hub" {
            return vec![self.hub];
        }
        if let Some((kind, which)) = spec.split_once(':') {
            let of_kind: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].kind.as_str() == kind).collect();
            let n = of_kind.len();
            let take = if which == "all" {
                n
            } else if let Some((a, b)) = which.split_once('/') {
                let (a, b): (usize, usize) = (a.parse().unwrap_or(1), b.parse().unwrap_or(1));
                n * a / b.max(1)
            } else {
                which.parse().unwrap_or(0)
            };
            return of_kind.into_iter().take(take).collect();
        }
        self.nodes.iter().position(|n| n.name == spec).into_iter().collect()
    }

    pub(super) fn fault(&mut self, index: usize, start: bool, rep: u32) {
        // Once the scenario ends, no fault starts again.
        if start && self.settling.is_some() {
            return;
        }
        let f: Fault = self.scenario.faults[index].clone();
        let targets = self.targets(&f.targets);
        self.log(30, index as u64, u64::from(start));
        let dur = (f.minutes * MINUTE as f64) as Micros;
        match f.kind {
            FaultKind::Outage | FaultKind::Partition => {
                for n in &targets {
                    let links = self.links_of(*n);
                    for l in links {
                        let was = self.links[l].up();
                        if start {
                            self.links[l].forced_down += 1;
                        } else {
                            self.links[l].forced_down = self.links[l].forced_down.saturating_sub(1);
                        }
                        self.link_changed(l, was);
                    }
                }
            }
            FaultKind::Crash => {
                for n in &targets {
                    if start {
                        self.crash(*n);
                    } else {
                        self.restart(*n);
                    }
                }
            }
            FaultKind::Clog => {
                for n in &targets {
                    if let Some(l) = self.nodes[*n].link {
                        self.links[l].clog = if start { f.factor } else { 1.0 };
                    }
                }
            }
            FaultKind::ClockSkew => {
                if start {
                    for n in &targets {
                        self.nodes[*n].skew_ms = (f.hours * 3_600_000.0) as i64;
                    }
                }
            }
            FaultKind::Corrupt | FaultKind::Duplicate => {
                for n in &targets {
                    if let Some(l) = self.nodes[*n].link {
                        let p = if start { f.probability } else { 0.0 };
                        if f.kind == FaultKind::Corrupt {
                            self.links[l].corrupt = p;
                        } else {
                            self.links[l].duplicate = p;
                        }
                    }
                }
            }
            FaultKind::Forget => {
                if start {
                    for n in &targets {
                        self.nodes[*n].replica.forget_peers();
                    }
                }
            }
            FaultKind::Byzantine => {
                for n in &targets {
                    self.nodes[*n].hostile = start;
                }
            }
            FaultKind::Restore => {
                if start {
                    for n in &targets {
                        self.restore(index, *n);
                    }
                }
            }
        }
        let lasting = !matches!(f.kind, FaultKind::ClockSkew | FaultKind::Forget | FaultKind::Restore);
        if start && lasting {
            self.after(dur, Ev::Fault { index, start: false, rep });
        }
        if (!start || !lasting) && f.every_hours > 0.0 && self.settling.is_none() {
            let period = (f.every_hours * HOUR as f64) as Micros;
            let next = (f.at_hour * HOUR as f64) as Micros + period * u64::from(rep + 1);
            let end = (self.opts.hours.unwrap_or(self.scenario.hours) * HOUR as f64) as Micros;
            if next < end {
                self.at(next, Ev::Fault { index, start: true, rep: rep + 1 });
                self.schedule_backup(index, next);
            }
        }
        if !start {
            self.last_heal = self.now;
        }
    }

    /// A `restore` fault at `t` restores from a backup taken its `hours` before.
    pub(super) fn schedule_backup(&mut self, index: usize, t: Micros) {
        let f = &self.scenario.faults[index];
        if f.kind == FaultKind::Restore {
            let age = if f.hours > 0.0 { f.hours } else { 1.0 };
            let at = t.saturating_sub((age * HOUR as f64) as Micros).max(self.now);
            self.at(at, Ev::Backup { index });
        }
    }

    pub(super) fn backup(&mut self, index: usize) {
        let targets = self.targets(&self.scenario.faults[index].targets.clone());
        for n in targets {
            let copy = self.nodes[n].replica.backup();
            self.backups.insert((index, n), copy);
        }
    }

    /// Node `n` is stopped, its store replaced by the backup, and restarted under a fresh actor
    /// instance. What it lost that another node still holds must come back by sync; the rest
    /// is lost for good and reported.
    pub(super) fn restore(&mut self, index: usize, n: usize) {
        let Some(mut backup) = self.backups.remove(&(index, n)) else { return };
        self.crash(n);
        self.nodes[n].undo = None;
        self.nodes[n].undo_last = None;
        let before = self.holdings(n);
        let instance: [u8; 8] = self.rng.random();
        self.check(Observed::Restoring { node: n });
        self.nodes[n].replica.restore(&mut backup, instance);
        let after = self.holdings(n);
        self.restores.0 += 1;
        self.log(33, n as u64, index as u64);
        for (doc, key, photo) in before.difference(&after) {
            let elsewhere = (0..self.nodes.len()).filter(|o| *o != n).any(|o| {
                let r = &self.nodes[o].replica;
                if *photo {
                    Hash::from_hex(key).is_some_and(|h| r.holds_blob(&h))
                } else if key == &SessionId::from_bytes(*doc).to_string() {
                    r.view_ref(doc).is_some()
                } else {
                    r.view_ref(doc).is_some_and(|v| v.messages.iter().any(|m| &m.id == key))
                }
            });
            self.unvouched.insert((n, key.clone()), !elsewhere);
            if elsewhere {
                self.restores.1 += 1;
            }
            if !elsewhere && self.ledger.get_mut(doc, key).is_some() {
                self.restores.2 += 1;
                self.lost_in_restore.insert(key.clone());
                if key == &SessionId::from_bytes(*doc).to_string() {
                    self.metas.remove(doc);
                }
            }
        }
        self.check(Observed::Restored { node: n });
        self.nodes[n].up = true;
        self.log(32, n as u64, 0);
        self.router_started(n);
        self.reconnect(n);
    }

    /// Sessions, messages and whole photos a node holds: (session, id or hash, is a photo).
    pub(super) fn holdings(&self, n: usize) -> BTreeSet<(DocId, String, bool)> {
        let r = &self.nodes[n].replica;
        let mut out = BTreeSet::new();
        for id in r.ids() {
            let Some(v) = r.view_ref(&id) else { continue };
            out.insert((id, v.id.to_string(), false));
            for m in &v.messages {
                out.insert((id, m.id.clone(), false));
            }
            for m in &v.media {
                if Hash::from_hex(&m.hash).is_some_and(|h| r.holds_blob(&h)) {
                    out.insert((id, m.hash.clone(), true));
                }
            }
        }
        out
    }

    /// The links a node's outage or crash takes down: its own, and a hub's to everyone
    /// dialling it.
    pub(super) fn links_of(&self, n: usize) -> Vec<usize> {
        (0..self.links.len()).filter(|l| self.links[*l].hub == n || self.nodes[n].link == Some(*l)).collect()
    }

    pub(super) fn crash(&mut self, n: usize) {
        if !self.nodes[n].up {
            return;
        }
        self.nodes[n].up = false;
        self.log(31, n as u64, 0);
        self.router_lost(n);
        let links = self.links_of(n);
        for l in links {
            self.drop_conn(l, "crash");
        }
        // The planted bug: a store that acknowledged its last write before making it durable.
        if self.opts.bugs.lose_acked_writes_on_crash
            && let Some((doc, before)) = self.nodes[n].undo.take()
        {
            self.nodes[n].replica.restore_doc(&doc, before);
        }
    }

    pub(super) fn restart(&mut self, n: usize) {
        if self.nodes[n].up {
            return;
        }
        self.nodes[n].up = true;
        self.log(32, n as u64, 0);
        self.check(Observed::Started { node: n });
        self.router_started(n);
        self.reconnect(n);
    }

    pub(super) fn reconnect(&mut self, n: usize) {
        let links = self.links_of(n);
        for l in links {
            if !self.links[l].connect_pending {
                self.links[l].connect_pending = true;
                let jitter = self.rng.random_range(0..2 * SECOND);
                self.after(jitter, Ev::Connect(l));
            }
        }
    }
}

/// A replica that ignores scope when serving its peers: the planted scope bug.
pub(super) struct Blind<'a>(pub(super) &'a mut MemReplica);

fn everyone(p: &PeerInfo) -> PeerInfo {
    PeerInfo { name: p.name.clone(), role: Role::Hub, org: None, icb: p.icb.clone(), lines: vec![] }
}

impl Replica for Blind<'_> {
    type Error = sync_protocol::mem::MemError;
    fn me(&self) -> &PeerInfo {
        self.0.me()
    }
    fn items(&mut self, peer: &PeerInfo) -> Result<Vec<sync_protocol::recon::Item>, Self::Error> {
        self.0.items(&everyone(peer))
    }
    fn delta(&mut self, peer: &PeerInfo) -> Result<Vec<(DocId, Vec<Hash>)>, Self::Error> {
        self.0.delta(&everyone(peer))
    }
    fn knows_peer(&mut self, peer: &PeerInfo) -> Result<bool, Self::Error> {
        self.0.knows_peer(peer)
    }
    fn heads_for(&mut self, peer: &PeerInfo, id: &DocId) -> Result<Option<Vec<Hash>>, Self::Error> {
        self.0.heads_for(&everyone(peer), id)
    }
    fn known_hashes(&mut self, peer: &PeerInfo, id: &DocId, hashes: &[Hash]) -> Result<Vec<Hash>, Self::Error> {
        self.0.known_hashes(&everyone(peer), id, hashes)
    }
    fn knowledge(
        &mut self,
        peer: &PeerInfo,
        id: &DocId,
    ) -> Result<Option<sync_protocol::engine::Knowledge>, Self::Error> {
        self.0.knowledge(peer, id)
    }
    fn set_knowledge(
        &mut self,
        peer: &PeerInfo,
        updates: &[(DocId, sync_protocol::engine::Knowledge)],
    ) -> Result<(), Self::Error> {
        self.0.set_knowledge(peer, updates)
    }
    fn changes_since(
        &mut self,
        peer: &PeerInfo,
        id: &DocId,
        base: &[Hash],
    ) -> Result<Option<sync_protocol::engine::Outgoing>, Self::Error> {
        self.0.changes_since(&everyone(peer), id, base)
    }
    fn apply(
        &mut self,
        peer: &PeerInfo,
        batch: &[sync_protocol::engine::Incoming],
        now: TimeMs,
    ) -> Result<Vec<sync_protocol::engine::Applied>, Self::Error> {
        self.0.apply(peer, batch, now)
    }
    fn credential(
        &mut self,
        peer: &PeerInfo,
        author: &sync_protocol::authorship::ActorPrefix,
    ) -> Result<Option<Vec<u8>>, Self::Error> {
        self.0.credential(peer, author)
    }
    fn offer_credential(&mut self, credential: &[u8]) -> Result<bool, Self::Error> {
        self.0.offer_credential(credential)
    }
    fn blobs_wanted(&mut self, peer: &PeerInfo) -> Result<Vec<sync_protocol::engine::BlobNeed>, Self::Error> {
        self.0.blobs_wanted(peer)
    }
    fn blob_manifest(
        &mut self,
        peer: &PeerInfo,
        hash: &Hash,
    ) -> Result<Option<sync_protocol::wire::BlobManifest>, Self::Error> {
        self.0.blob_manifest(&everyone(peer), hash)
    }
    fn blob_chunk(&mut self, hash: &Hash, index: u32) -> Result<Option<Vec<u8>>, Self::Error> {
        self.0.blob_chunk(hash, index)
    }
    fn store_manifest(&mut self, manifest: &sync_protocol::wire::BlobManifest, now: TimeMs) -> Result<(), Self::Error> {
        self.0.store_manifest(manifest, now)
    }
    fn store_chunks(
        &mut self,
        from: &PeerInfo,
        chunks: &[(Hash, u32, Vec<u8>)],
        now: TimeMs,
    ) -> Result<Vec<DocId>, Self::Error> {
        self.0.store_chunks(from, chunks, now)
    }
    fn revocations(&mut self) -> Result<Option<(u64, Vec<u8>)>, Self::Error> {
        self.0.revocations()
    }
    fn offer_revocations(&mut self, der: &[u8]) -> Result<bool, Self::Error> {
        self.0.offer_revocations(der)
    }
    fn audit_heads(
        &mut self,
        peer: &PeerInfo,
        proof_at: Option<u64>,
    ) -> Result<Option<sync_protocol::engine::AuditHeads>, Self::Error> {
        self.0.audit_heads(peer, proof_at)
    }
    fn offer_audit_head(
        &mut self,
        peer: &PeerInfo,
        heads: sync_protocol::engine::AuditHeads,
        now: TimeMs,
    ) -> Result<(), Self::Error> {
        self.0.offer_audit_head(peer, heads, now)
    }
}
