//! The node's store as the sync engine's [`Replica`].

use std::collections::HashMap;

use rustls::pki_types::CertificateDer;
use sync_protocol::TimeMs;
use sync_protocol::audit;
use sync_protocol::authorship::ActorPrefix;
use sync_protocol::directory::is_directory_id;
use sync_protocol::engine::{Applied, AuditHeads, BlobNeed, Incoming, Knowledge, Outgoing, Replica};
use sync_protocol::recon::{Fingerprint, Item};
use sync_protocol::scope::PeerInfo;
use sync_protocol::wire::{BlobManifest, DocId, Hash};

use crate::store::{Store, StoreError};
use crate::tls;

/// A borrowed store seen through the engine's eyes, collecting the documents it changes.
#[derive(Debug)]
pub struct NodeReplica<'a> {
    store: &'a mut Store,
    me: &'a PeerInfo,
    ca: Option<&'a CertificateDer<'static>>,
    /// What the borrow collects, handed over by [`NodeReplica::finish`].
    collected: Collected,
    /// What [`Peers::visible_row`](crate::store::Peers::visible_row) said of documents for the
    /// peer during this borrow, since its last write: the engine asks of one document its heads,
    /// then what the peer knows of it, then its changes.
    visible: HashMap<DocId, Option<(i64, Vec<Hash>)>>,
    /// The peer `visible` is about.
    visible_to: String,
}

impl<'a> NodeReplica<'a> {
    /// Wraps `store` for node `me`; `ca` checks revocation lists offered by peers.
    pub fn new(store: &'a mut Store, me: &'a PeerInfo, ca: Option<&'a CertificateDer<'static>>) -> Self {
        NodeReplica {
            store,
            me,
            ca,
            collected: Collected::default(),
            visible: HashMap::new(),
            visible_to: String::new(),
        }
    }

    /// [`Peers::visible_row`](crate::store::Peers::visible_row), read once per document until
    /// the next write.
    fn visible_row(&mut self, peer: &PeerInfo, id: &DocId) -> Result<Option<(i64, Vec<Hash>)>, StoreError> {
        if self.visible_to != peer.name {
            self.visible.clear();
            self.visible_to.clone_from(&peer.name);
        }
        if let Some(row) = self.visible.get(id) {
            return Ok(row.clone());
        }
        self.store.hold_reads()?;
        let row = self.store.peers().visible_row(peer, id)?;
        if self.visible.len() >= MAX_REMEMBERED {
            self.visible.clear();
        }
        self.visible.insert(*id, row.clone());
        Ok(row)
    }

    /// Notes the sessions `peer` just sent and this node stored: changed, and visible to that
    /// peer at their new heads (it may hold each, or it could not have sent it), so the pushes
    /// and acknowledgements that follow need not read their index rows again (as with rows
    /// read, a write by another process meanwhile is seen at the next step). The store's test
    /// `what_a_batch_stored_is_what_the_index_shows_its_sender` holds the note to the index.
    fn stored(&mut self, peer: &PeerInfo, stored: Vec<crate::store::Stored>) -> Result<(), StoreError> {
        if self.visible_to != peer.name {
            self.visible.clear();
            self.visible_to.clone_from(&peer.name);
        }
        for s in stored {
            self.collected.changed.push(s.doc);
            if self.visible.len() >= MAX_REMEMBERED {
                self.visible.clear();
            }
            self.visible.insert(s.doc, Some((s.sid, s.heads)));
        }
        Ok(())
    }

    /// Forgets what was read of the index and ends the borrow's read transaction: the store
    /// is about to change.
    fn writing(&mut self) -> Result<(), StoreError> {
        self.visible.clear();
        self.store.release_reads()
    }

    /// The reads of this borrow share one read transaction until its next write (each read on
    /// its own would take and release the database's locks).
    fn reading(&mut self) -> Result<&mut Store, StoreError> {
        self.store.hold_reads()?;
        Ok(self.store)
    }
}

/// What a borrow of the store collected for the daemon.
#[derive(Debug, Default)]
pub struct Collected {
    /// Documents written during the borrow (to be pushed to other peers).
    pub changed: Vec<DocId>,
    /// Sessions a hub has confirmed holding during the borrow (what it holds of this node's
    /// messages may have changed: an app's cards say so).
    pub held: Vec<DocId>,
    /// Set when a newer revocation list was installed during the borrow.
    pub revocations_updated: bool,
}

impl NodeReplica<'_> {
    /// Ends the borrow (and its read transaction): what it collected.
    pub fn finish(mut self) -> Collected {
        std::mem::take(&mut self.collected)
    }
}

impl Drop for NodeReplica<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.store.release_reads() {
            tracing::warn!("cannot end a read transaction: {e}");
        }
    }
}

/// Documents whose index rows a borrow remembers at most.
const MAX_REMEMBERED: usize = 4096;

impl Replica for NodeReplica<'_> {
    type Error = StoreError;

    fn me(&self) -> &PeerInfo {
        self.me
    }

    fn items(&mut self, peer: &PeerInfo) -> Result<Vec<Item>, StoreError> {
        let mut items = self.store.peers().items_for(peer)?;
        if let Some(dir) = self.store.directory().directory_item(self.me, peer)? {
            items.push(dir);
            items.sort_by_key(|i| i.id);
        }
        Ok(items)
    }

    fn summary(&mut self, peer: &PeerInfo) -> Result<(u64, Fingerprint), StoreError> {
        let (mut count, mut fp) = self.store.peers().summary_for(peer)?;
        if let Some(dir) = self.store.directory().directory_item(self.me, peer)? {
            count += 1;
            fp = fp.add(&Fingerprint::of(&dir));
        }
        Ok((count, fp))
    }

    fn delta(&mut self, peer: &PeerInfo) -> Result<Vec<(DocId, Vec<Hash>)>, StoreError> {
        // It moves the peer's delta mark: a write.
        self.writing()?;
        let mut delta = self.store.peers_mut().delta_for(peer)?;
        delta.extend(self.store.directory().directory_delta(self.me, peer)?);
        Ok(delta)
    }

    fn knows_peer(&mut self, peer: &PeerInfo) -> Result<bool, StoreError> {
        self.store.peers().knows_peer(peer)
    }

    fn heads_for(&mut self, peer: &PeerInfo, id: &DocId) -> Result<Option<Vec<Hash>>, StoreError> {
        if is_directory_id(id) {
            return self.store.directory().directory_heads_for(self.me, peer, id);
        }
        Ok(self.visible_row(peer, id)?.map(|(_, heads)| heads))
    }

    fn known_hashes(&mut self, peer: &PeerInfo, id: &DocId, hashes: &[Hash]) -> Result<Vec<Hash>, StoreError> {
        if is_directory_id(id) {
            if self.store.directory().directory_heads_for(self.me, peer, id)?.is_none() {
                return Ok(Vec::new());
            }
            return self.store.directory().directory_known_hashes(self.me, id, hashes);
        }
        let row = self.visible_row(peer, id)?;
        self.reading()?.peers_mut().known_hashes_of(row, id, hashes)
    }

    fn knowledge(&mut self, peer: &PeerInfo, id: &DocId) -> Result<Option<Knowledge>, StoreError> {
        if is_directory_id(id) {
            return self.store.directory().directory_knowledge(self.me, peer, id);
        }
        self.reading()?.peers().knowledge(peer, id)
    }

    fn set_knowledge(&mut self, peer: &PeerInfo, updates: &[(DocId, Knowledge)]) -> Result<(), StoreError> {
        self.writing()?;
        for (id, k) in updates.iter().filter(|(id, _)| is_directory_id(id)) {
            self.store.directory_mut().set_directory_knowledge(self.me, peer, id, k)?;
        }
        self.store.peers_mut().set_knowledge(peer, updates)?;
        if peer.role == sync_protocol::vocab::Role::Hub {
            self.collected.held.extend(updates.iter().map(|(id, _)| *id).filter(|id| !is_directory_id(id)));
        }
        Ok(())
    }

    fn changes_since(&mut self, peer: &PeerInfo, id: &DocId, base: &[Hash]) -> Result<Option<Outgoing>, StoreError> {
        if is_directory_id(id) {
            // The directory goes only to the ICB's own edges and desks, from its hub, over the
            // authenticated connection: it carries no signatures.
            if self.store.directory().directory_heads_for(self.me, peer, id)?.is_none() {
                return Ok(None);
            }
            let bytes = self.store.directory().directory_changes_since(self.me, id, base)?;
            return Ok(Some(Outgoing { bytes, sigs: Vec::new(), authors: Vec::new() }));
        }
        let visible = self.visible_row(peer, id)?.is_some();
        self.reading()?.peers_mut().changes_of(visible, id, base)
    }

    fn apply(&mut self, peer: &PeerInfo, batch: &[Incoming], now: TimeMs) -> Result<Vec<Applied>, StoreError> {
        self.writing()?;
        if !batch.iter().any(|inc| is_directory_id(&inc.doc)) {
            let (out, stored) = self.store.peers_mut().apply_remote(self.me, peer, batch, now)?;
            self.stored(peer, stored)?;
            return Ok(out);
        }
        // The directory goes its own way; the sessions of the batch still share one transaction.
        let mut out: Vec<Option<Applied>> = vec![None; batch.len()];
        let mut sessions = Vec::new();
        for (i, inc) in batch.iter().enumerate() {
            if is_directory_id(&inc.doc) {
                let (applied, changed) =
                    self.store.directory_mut().apply_directory(self.me, peer, &inc.doc, &inc.bytes, now)?;
                if changed {
                    self.collected.changed.push(inc.doc);
                }
                out[i] = Some(applied);
            } else {
                sessions.push((i, inc.clone()));
            }
        }
        let session_batch: Vec<Incoming> = sessions.iter().map(|(_, d)| d.clone()).collect();
        let (applied, stored) = self.store.peers_mut().apply_remote(self.me, peer, &session_batch, now)?;
        self.stored(peer, stored)?;
        for ((i, _), a) in sessions.iter().zip(applied) {
            out[*i] = Some(a);
        }
        Ok(out.into_iter().map(|a| a.unwrap_or(Applied::MissingDeps)).collect())
    }

    fn credential(&mut self, peer: &PeerInfo, author: &ActorPrefix) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .store
            .identity()
            .credential(author)?
            .filter(|(name, _)| *name != peer.name && *name != self.me.name)
            .map(|(_, c)| c))
    }

    fn offer_credential(&mut self, credential: &[u8]) -> Result<bool, StoreError> {
        self.writing()?;
        let Some(ca) = self.ca else { return Ok(false) };
        // A revoked member is recorded too: the changes it signed before its device was lost
        // stay verifiable (a desk that joins later still gets those sessions from its hub),
        // and the revocation is applied to its changes instead (`Store::revoked_members`: a
        // change of it not held yet is taken only from a hub, by a node that is none).
        match tls::verify_member(ca, None, credential) {
            Ok(member) => {
                let name = member.info.name.clone();
                if !self.store.identity_mut().add_member(member, credential)? {
                    tracing::info!("kept a newer certificate of {name}'s author key over an older one offered");
                }
                Ok(true)
            }
            Err(e) => {
                tracing::warn!("refused a member credential: {e}");
                Ok(false)
            }
        }
    }

    fn blobs_wanted(&mut self, peer: &PeerInfo) -> Result<Vec<BlobNeed>, StoreError> {
        self.store.blobs().blobs_wanted(self.me, peer)
    }

    fn blob_manifest(&mut self, peer: &PeerInfo, hash: &Hash) -> Result<Option<BlobManifest>, StoreError> {
        self.store.blobs().blob_manifest_for(peer, hash)
    }

    fn blob_chunk(&mut self, hash: &Hash, index: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.blobs().blob_chunk(hash, index)
    }

    fn store_manifest(&mut self, manifest: &BlobManifest, now: i64) -> Result<(), StoreError> {
        self.writing()?;
        self.store.blobs_mut().store_manifest(manifest, now)
    }

    fn store_chunks(
        &mut self,
        from: &PeerInfo,
        chunks: &[(Hash, u32, Vec<u8>)],
        now: TimeMs,
    ) -> Result<Vec<DocId>, StoreError> {
        self.writing()?;
        let mut out = Vec::new();
        for hash in self.store.blobs_mut().store_chunks(from, chunks)? {
            let changed = self.store.blobs_mut().acknowledge_blob(self.me, &hash, now)?;
            self.collected.changed.extend(changed.iter().copied());
            out.extend(changed);
        }
        Ok(out)
    }

    fn revocations(&mut self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.store.identity().revocations()
    }

    fn offer_revocations(&mut self, der: &[u8]) -> Result<bool, StoreError> {
        self.writing()?;
        let Some(ca) = self.ca else { return Ok(false) };
        let Ok(number) = tls::verify_crl(ca, der) else {
            tracing::warn!("refused a revocation list not signed by this fleet's CA");
            return Ok(false);
        };
        let current = self.store.identity().revocations()?.map_or(0, |(n, _)| n);
        if number <= current {
            return Ok(false);
        }
        self.store.identity_mut().put_revocations(number, der)?;
        self.collected.revocations_updated = true;
        Ok(true)
    }

    fn audit_heads(&mut self, peer: &PeerInfo, proof_at: Option<u64>) -> Result<Option<AuditHeads>, StoreError> {
        // Told between a hub and its own ICB's members only: another edge or desk, or another
        // ICB's hub, has no use for how much this node has audited.
        if !audit::partners(self.me, peer) {
            return Ok(None);
        }
        let store = self.reading()?;
        Ok(Some(store.audit().audit_heads_for(&peer.name, proof_at)?))
    }

    fn offer_audit_head(&mut self, peer: &PeerInfo, heads: AuditHeads, now: TimeMs) -> Result<(), StoreError> {
        if !audit::partners(self.me, peer) {
            return Ok(());
        }
        self.writing()?;
        let believed = audit::believed(self.me, peer);
        // Advisory: a failure to record an anchor (a busy or full disk) must not end the sync
        // that would free the disk.
        let found = match self.store.audit_mut().note_audit_head(&peer.name, heads, believed, now) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("could not record {}'s audit head: {e}", peer.name);
                return Ok(());
            }
        };
        if found.ours_cut {
            tracing::warn!(
                "{} had seen this node's audit chain up to entry {}, and it is shorter now: entries were lost \
                 since (restored from a backup, or cut back); recorded in the chain as audit.behind",
                peer.name,
                heads.seen
            );
        }
        if found.theirs_cut {
            tracing::warn!(
                "{}'s audit chain ends at entry {}, before where it had told us it reached: entries were lost \
                 there (restored from a backup, or cut back); recorded here as peer.audit_behind",
                peer.name,
                heads.head
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_protocol::vocab::Role;

    fn node(name: &str, role: Role) -> PeerInfo {
        PeerInfo { name: name.into(), role, org: None, icb: Some("QHM".into()), lines: Vec::new() }
    }

    #[test]
    fn a_borrow_holds_one_read_transaction_until_it_writes_or_ends() {
        let (_dir, mut store) = Store::scratch("hub-1");
        let (me, peer) = (node("hub-1", Role::Hub), node("amb-1", Role::Edge));
        let doc = [7u8; 16];
        {
            let mut r = NodeReplica::new(&mut store, &me, None);
            assert_eq!(r.heads_for(&peer, &doc).expect("read"), None);
            assert!(r.store.in_transaction(), "the read keeps its transaction for the next");
            assert_eq!(r.knowledge(&peer, &doc).expect("read"), None);
            let k = Knowledge { heads: Vec::new(), shared: Vec::new() };
            r.set_knowledge(&peer, &[(doc, k)]).expect("a write after reads");
            assert!(!r.store.in_transaction(), "the write committed and nothing stays open");
            r.heads_for(&peer, &doc).expect("read again");
            assert!(r.store.in_transaction());
            let collected = r.finish();
            assert!(collected.changed.is_empty());
        }
        assert!(!store.in_transaction(), "the borrow's end ends its reads");
        store.peers_mut().record_sync("amb-1", Ok(()), 5).expect("a write after the borrow");
        {
            let mut r = NodeReplica::new(&mut store, &me, None);
            r.heads_for(&peer, &doc).expect("read");
        }
        assert!(!store.in_transaction(), "dropped without finish, the same");
    }
}
