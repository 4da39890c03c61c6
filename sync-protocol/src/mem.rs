//! An in-memory [`Replica`]: the engine's storage for tests and for the simulator.
//!
//! It follows the same rules as the node's SQLite store: a write is "durable" the moment a
//! method returns (the simulator models a crash by keeping a `MemReplica` and dropping the
//! engines around it), scope is checked on every read and write, receipts are written by hubs
//! and desks only after what they acknowledge is stored, and an edge drops its copy of a photo
//! once a hub confirms holding it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use automerge::{ActorId, ChangeHash};

use crate::TimeMs;
use crate::accept::{self, Taken};
use crate::authorship::{self, ActorPrefix, AuthorKey, SharedRoster, Signature};
use crate::blob::{self, CHUNK_SIZE};
use crate::directory::is_directory_id;
use crate::engine::{Applied, AuditHeads, BlobNeed, Incoming, Knowledge, Outgoing, Replica};
use crate::recon::{Item, digest};
use crate::rules::{self, Admission, Limits};
use crate::scope::{DocMeta, PeerInfo, may_hold};
use crate::session::{SessionDoc, SessionId, SessionView, receipt_level};
use crate::wire::{BlobManifest, DocId, Hash};

mod directory;

/// Errors of the in-memory replica.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// The session model refused a document or an edit.
    #[error("in-memory replica: {0}")]
    Model(#[from] crate::ModelError),
    /// No document of that id is held.
    #[error("in-memory replica: no such document")]
    NoSuchDocument,
    /// Another thread panicked while holding the fleet's roster.
    #[error("in-memory replica: the shared roster is poisoned")]
    RosterPoisoned,
}

/// A held session with what is read of it often, recomputed once per write.
#[derive(Debug)]
struct Doc {
    doc: SessionDoc,
    meta: DocMeta,
    view: SessionView,
    heads: Vec<Hash>,
    /// The view's media hashes, decoded (none for one that is not a hash), in the view's order.
    media: Vec<Option<Hash>>,
}

impl Doc {
    fn new(doc: SessionDoc) -> Result<Doc, crate::ModelError> {
        let view = doc.view()?;
        Ok(Doc::with_view(doc, view))
    }

    /// A document whose view was just read.
    fn with_view(mut doc: SessionDoc, view: SessionView) -> Doc {
        let heads = ids(doc.heads());
        let media = media_hashes(&view);
        Doc { meta: view.meta(), view, heads, media, doc }
    }

    fn refresh(&mut self) -> Result<(), crate::ModelError> {
        self.view = self.doc.view()?;
        self.meta = self.view.meta();
        self.heads = ids(self.doc.heads());
        self.media = media_hashes(&self.view);
        Ok(())
    }
}

fn media_hashes(view: &SessionView) -> Vec<Option<Hash>> {
    view.media.iter().map(|m| Hash::from_hex(&m.hash)).collect()
}

/// A blob held in memory.
#[derive(Debug, Default, Clone)]
pub struct MemBlob {
    /// Size from the manifest or the bytes.
    pub size: u64,
    /// Verified manifest, once known.
    pub manifest: Option<BlobManifest>,
    /// Chunks held.
    pub chunks: BTreeMap<u32, Arc<[u8]>>,
    /// Deleted here after a hub confirmed holding it.
    pub offloaded: bool,
}

impl MemBlob {
    fn whole(&self) -> bool {
        !self.offloaded && self.chunks.len() as u64 == blob::chunk_count(self.size, CHUNK_SIZE)
    }
}

/// Chunk bytes shared between replicas of one process, so that a simulated region holding the
/// same photo at the edge, the hub and several desks keeps it in memory once.
#[derive(Debug, Clone, Default)]
pub struct ChunkPool(Arc<Mutex<SharedChunks>>);

type SharedChunks = HashMap<[u8; 32], Arc<[u8]>>;

impl ChunkPool {
    /// The shared copy of these bytes.
    pub fn intern(&self, data: &[u8]) -> Arc<[u8]> {
        let key = *blake3::hash(data).as_bytes();
        let mut map = match self.0.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(key).or_insert_with(|| Arc::from(data)).clone()
    }
}

/// A replica held entirely in memory.
#[derive(Debug)]
pub struct MemReplica {
    me: PeerInfo,
    author: AuthorKey,
    actor: ActorId,
    roster: SharedRoster,
    limits: Limits,
    /// The signature of every change held, by hash.
    sigs: HashMap<Hash, Signature>,
    docs: BTreeMap<DocId, Doc>,
    knowledge: HashMap<String, BTreeMap<DocId, Knowledge>>,
    /// The peers among those that are hubs (their acknowledged heads say which of this node's
    /// messages are at a hub).
    hubs: std::collections::BTreeSet<String>,
    /// Blobs by hash.
    pub blobs: HashMap<Hash, MemBlob>,
    revocations: Option<(u64, Vec<u8>)>,
    /// The ICB directory: written by a hub, received by its edges and desks.
    directory: Option<directory::MemDirectory>,
    /// Every document written by `apply`, `am_receive`, `store_chunk` or a local edit, in order,
    /// since the last [`MemReplica::take_changed`]: what a node pushes to its other peers.
    changed: Vec<DocId>,
    pool: Option<ChunkPool>,
    /// What this replica tells in a [`crate::wire::Frame::AuditHead`] (`None`: it keeps no
    /// audit chain), `proof` set to the end a peer asks it to vouch for.
    pub audit_heads: Option<AuditHeads>,
    /// Every audit head a peer told, in order, with the peer's name (without `audit`).
    pub audit_heads_told: Vec<(String, AuditHeads)>,
    /// An audit chain kept as a node keeps one ([`MemAudit`]): when set, it is what this
    /// replica tells and judges by, in place of `audit_heads`.
    pub audit: Option<MemAudit>,
}

/// An audit chain in memory, a model of a node's: an entry for each local write and each
/// finding only (a node's store also records syncs, views and offloads), each with an anchor
/// (a BLAKE3 chain keyed by a key of the node's), and what was kept of each partner's chain. What a peer's frame shows is decided by
/// [`crate::audit::judge`], as on a node. A backup copies it, so a restore from an older backup
/// cuts the chain back, as it does a node's.
#[derive(Debug, Clone)]
pub struct MemAudit {
    chain: u64,
    key: [u8; 32],
    /// Who writes now (the replica's actor): in every anchor, so that a chain put back and
    /// written again differs from the one lost, as a node's entries differ by time and detail.
    writer: Vec<u8>,
    /// Each entry: what it records and, for a finding, the peer it names; its anchor.
    entries: Vec<(String, Option<String>, [u8; 32])>,
    kept: BTreeMap<String, crate::audit::KeptHeads>,
}

impl MemAudit {
    /// An empty chain with this id, anchored under `key`, written by `writer`.
    pub fn new(chain: u64, key: [u8; 32], writer: &[u8]) -> Self {
        MemAudit { chain, key, writer: writer.to_vec(), entries: Vec::new(), kept: BTreeMap::new() }
    }

    /// This chain's id.
    pub fn chain(&self) -> u64 {
        self.chain
    }

    /// Its newest entry's number (0: none yet).
    pub fn head(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Appends an entry recording `action` (naming `peer` for a finding about one).
    pub fn append(&mut self, action: &str, peer: Option<&str>) {
        let prev = self.entries.last().map_or([0; 32], |e| e.2);
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&prev);
        h.update(&(self.entries.len() as u64 + 1).to_be_bytes());
        h.update(&self.writer);
        h.update(action.as_bytes());
        h.update(peer.unwrap_or("").as_bytes());
        self.entries.push((action.to_string(), peer.map(String::from), *h.finalize().as_bytes()));
    }

    /// The anchor of entry `n` (1-based), if the chain reaches it.
    pub fn anchor(&self, n: u64) -> Option<[u8; 32]> {
        let i = usize::try_from(n).ok()?.checked_sub(1)?;
        self.entries.get(i).map(|e| e.2)
    }

    /// The entries recording `action`, from entry `from` (1-based) on: the peer each names.
    pub fn found(&self, action: &str, from: u64) -> Vec<Option<String>> {
        let skip = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
        self.entries.iter().skip(skip).filter(|e| e.0 == action).map(|e| e.1.clone()).collect()
    }

    /// What is kept of `peer`'s chain.
    pub fn kept(&self, peer: &str) -> Option<crate::audit::KeptHeads> {
        self.kept.get(peer).copied()
    }

    /// What to tell `peer` (as a node's store does): this chain, its end and anchor, the
    /// peer's chain and furthest end as kept, and the end of ours `proof_at` (or the one the
    /// peer last said it had seen) with our anchor there now.
    fn heads_for(&self, peer: &str, proof_at: Option<u64>) -> AuditHeads {
        let kept = self.kept(peer);
        let head = self.head();
        let proof = proof_at.unwrap_or_else(|| kept.map_or(0, |k| k.told));
        AuditHeads {
            chain: self.chain,
            head,
            anchor: self.anchor(head).unwrap_or_default(),
            seen_chain: kept.map_or(0, |k| k.chain),
            seen: kept.map_or(0, |k| k.head),
            seen_anchor: kept.map_or([0; 32], |k| k.anchor),
            proof,
            proof_anchor: self.anchor(proof).unwrap_or_default(),
        }
    }

    /// A peer's frame, judged and recorded as a node records it.
    fn told(&mut self, peer: &str, heads: &AuditHeads, believed: bool) -> crate::audit::HeadsFound {
        let judged = crate::audit::judge::<std::convert::Infallible>(
            self.kept(peer),
            heads,
            self.chain,
            self.head(),
            believed,
            |n| Ok(self.anchor(n)),
        );
        let Ok(Some((found, row))) = judged else { return Default::default() };
        if found.chain_changed.is_some() {
            self.append("peer.audit_chain_changed", Some(peer));
        }
        if found.theirs_cut {
            self.append("peer.audit_behind", Some(peer));
        }
        if found.ours_cut {
            self.append("audit.behind", Some(peer));
        }
        self.kept.insert(peer.to_string(), row);
        found
    }
}

fn ids(heads: Vec<ChangeHash>) -> Vec<Hash> {
    let mut v: Vec<Hash> = heads.into_iter().map(Hash::from).collect();
    v.sort();
    v
}

fn hashes(h: &[Hash]) -> Vec<ChangeHash> {
    h.iter().map(|x| ChangeHash::from(*x)).collect()
}

impl MemReplica {
    /// An empty replica for node `me`, signing with `author`; `roster` holds the fleet's
    /// members (the simulator's stand-in for certificates).
    pub fn new(me: PeerInfo, author: AuthorKey, roster: SharedRoster) -> Self {
        MemReplica {
            me,
            actor: author.actor().clone(),
            author,
            roster,
            limits: Limits::default(),
            sigs: HashMap::new(),
            docs: BTreeMap::new(),
            knowledge: HashMap::new(),
            hubs: Default::default(),
            blobs: HashMap::new(),
            revocations: None,
            directory: None,
            changed: Vec::new(),
            pool: None,
            audit_heads: None,
            audit_heads_told: Vec::new(),
            audit: None,
        }
    }

    /// Keeps an audit chain ([`MemAudit`]) with this id, anchored under `key`.
    pub fn with_audit(mut self, chain: u64, key: [u8; 32]) -> Self {
        self.audit = Some(MemAudit::new(chain, key, self.actor.to_bytes()));
        self
    }

    /// Shares chunk bytes through `pool`.
    pub fn with_pool(mut self, pool: ChunkPool) -> Self {
        self.pool = Some(pool);
        self
    }

    fn chunk(&self, data: &[u8]) -> Arc<[u8]> {
        match &self.pool {
            Some(p) => p.intern(data),
            None => Arc::from(data),
        }
    }

    /// The actor id this replica writes with.
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    /// Signs this node's changes in `doc` not ancestors of `before`.
    fn sign(&mut self, doc: &mut SessionDoc, before: &[ChangeHash]) {
        for (h, sig) in authorship::sign_new(&self.author, doc.automerge(), before) {
            self.sigs.insert(Hash::from(h), sig);
        }
    }

    /// The signature held for a change.
    pub fn signature(&self, hash: &Hash) -> Option<Signature> {
        self.sigs.get(hash).copied()
    }

    /// The signing key (the simulator's model of a stolen tablet uses it).
    pub fn author(&self) -> &AuthorKey {
        &self.author
    }

    /// Adds a session created (or edited) locally.
    pub fn put(&mut self, mut doc: SessionDoc) -> Result<DocId, MemError> {
        self.sign(&mut doc, &[]);
        let d = Doc::new(doc).map_err(MemError::from)?;
        let id = d.view.id.to_bytes();
        self.docs.insert(id, d);
        self.changed.push(id);
        if let Some(a) = self.audit.as_mut() {
            a.append("session.write", None);
        }
        Ok(id)
    }

    /// Edits a held session in place (a local write).
    pub fn edit<T>(
        &mut self,
        id: &DocId,
        f: impl FnOnce(&mut SessionDoc) -> Result<T, crate::ModelError>,
    ) -> Result<T, MemError> {
        let d = self.docs.get_mut(id).ok_or(MemError::NoSuchDocument)?;
        let before = d.doc.heads();
        let out = f(&mut d.doc).map_err(MemError::from)?;
        d.refresh().map_err(MemError::from)?;
        for (h, sig) in authorship::sign_new(&self.author, d.doc.automerge(), &before) {
            self.sigs.insert(Hash::from(h), sig);
        }
        self.changed.push(*id);
        if let Some(a) = self.audit.as_mut() {
            a.append("session.write", None);
        }
        Ok(out)
    }

    /// Stores the bytes of a photo attached locally.
    pub fn put_blob(&mut self, data: &[u8]) -> Hash {
        let hash = Hash(*blake3::hash(data).as_bytes());
        let mut b = MemBlob { size: data.len() as u64, ..MemBlob::default() };
        for (i, c) in data.chunks(CHUNK_SIZE as usize).enumerate() {
            b.chunks.insert(i as u32, self.chunk(c));
        }
        if data.is_empty() {
            b.chunks.insert(0, Arc::from(Vec::new()));
        }
        b.manifest = blob::manifest(data, CHUNK_SIZE).ok();
        self.blobs.insert(hash, b);
        hash
    }

    /// The view of a held session.
    pub fn view(&self, id: &DocId) -> Option<SessionView> {
        self.docs.get(id).map(|d| d.view.clone())
    }

    /// The session as this node sees it, with its own messages "at hub" once a hub has
    /// acknowledged heads that hold them (the node's own rule: [`crate::session::localize`]).
    pub fn view_seen(&mut self, id: &DocId) -> Option<SessionView> {
        let (hubs, knowledge) = (&self.hubs, &self.knowledge);
        let d = self.docs.get_mut(id)?;
        let mut view = d.view.clone();
        let heads = || -> Result<_, crate::ModelError> {
            Ok(hubs.iter().filter_map(|h| knowledge.get(h)?.get(id)).map(|k| k.heads.clone()).collect())
        };
        crate::session::localize(&mut d.doc, &mut view, self.me.role == crate::vocab::Role::Hub, heads).ok()?;
        Some(view)
    }

    /// The messages of a session that this node shows "at hub" without a receipt, each with the
    /// hubs whose acknowledged heads hold it: what a checker holds against the truth.
    pub fn messages_vouched_by_hubs(&mut self, id: &DocId) -> Vec<(crate::session::MessageKey, Vec<String>)> {
        let Some(d) = self.docs.get_mut(id) else { return Vec::new() };
        let mut view = d.view.clone();
        let pending = view.raise_held(self.me.role == crate::vocab::Role::Hub);
        if pending.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<(crate::session::MessageKey, Vec<String>)> =
            pending.iter().filter_map(|&i| view.messages.get(i)).map(|m| (m.key(), Vec::new())).collect();
        for hub in &self.hubs {
            let Some(k) = self.knowledge.get(hub).and_then(|k| k.get(id)) else { continue };
            let Ok(held) = d.doc.message_keys_at(&hashes(&k.heads)) else { continue };
            for (m, by) in &mut out {
                if held.contains(m) {
                    by.push(hub.clone());
                }
            }
        }
        out.retain(|(_, by)| !by.is_empty());
        out
    }

    /// Ids of every held session.
    pub fn ids(&self) -> Vec<DocId> {
        self.docs.keys().copied().collect()
    }

    /// Heads of a held session.
    pub fn heads(&mut self, id: &DocId) -> Option<Vec<Hash>> {
        self.docs.get(id).map(|d| d.heads.clone())
    }

    /// The view of a held session, without copying it.
    pub fn view_ref(&self, id: &DocId) -> Option<&SessionView> {
        self.docs.get(id).map(|d| &d.view)
    }

    /// A copy of a held session (for the simulator's model of a store that loses writes).
    pub fn copy_doc(&mut self, id: &DocId) -> Option<SessionDoc> {
        let actor = self.actor.clone();
        self.docs.get_mut(id).map(|d| d.doc.fork_as(actor))
    }

    /// Puts back an earlier copy of a session, or removes it (`None`): what a store that
    /// acknowledged a write before making it durable shows after a crash. Only the simulator's
    /// planted-bug tests use this.
    pub fn restore_doc(&mut self, id: &DocId, doc: Option<SessionDoc>) {
        match doc {
            Some(d) => {
                if let Ok(d) = Doc::new(d) {
                    self.docs.insert(*id, d);
                }
            }
            None => {
                self.docs.remove(id);
            }
        }
    }

    /// A copy of everything this replica holds, as a backup of its store would be.
    pub fn backup(&mut self) -> MemReplica {
        let actor = self.actor.clone();
        let mut docs = BTreeMap::new();
        for (id, d) in self.docs.iter_mut() {
            if let Ok(copy) = Doc::new(d.doc.fork_as(actor.clone())) {
                docs.insert(*id, copy);
            }
        }
        let directory = self.directory_backup(actor.clone());
        MemReplica {
            me: self.me.clone(),
            author: self.author.clone(),
            actor,
            roster: self.roster.clone(),
            limits: self.limits,
            sigs: self.sigs.clone(),
            docs,
            knowledge: self.knowledge.clone(),
            hubs: self.hubs.clone(),
            blobs: self.blobs.clone(),
            revocations: self.revocations.clone(),
            directory,
            changed: Vec::new(),
            pool: self.pool.clone(),
            audit_heads: self.audit_heads,
            audit_heads_told: self.audit_heads_told.clone(),
            audit: self.audit.clone(),
        }
    }

    /// Replaces everything held by a backup, as a node restored from it and restarted. The
    /// restarted node writes under a fresh actor `instance` (as the node's store does on every
    /// open), so that its new changes never reuse a sequence number of the changes it lost.
    pub fn restore(&mut self, backup: &mut MemReplica, instance: [u8; 8]) {
        let mut restored = backup.backup();
        restored.author = self.author.with_instance(instance);
        restored.actor = restored.author.actor().clone();
        for d in restored.docs.values_mut() {
            d.doc = d.doc.fork_as(restored.actor.clone());
        }
        restored.directory = restored.directory_backup(restored.actor.clone());
        if let Some(a) = restored.audit.as_mut() {
            a.writer = restored.actor.to_bytes().to_vec();
        }
        *self = restored;
    }

    /// Peers that have confirmed holding some version of a document.
    pub fn holders(&self, id: &DocId) -> Vec<String> {
        let mut out: Vec<String> = self
            .knowledge
            .iter()
            .filter(|(_, docs)| docs.get(id).is_some_and(|k| !k.heads.is_empty()))
            .map(|(peer, _)| peer.clone())
            .collect();
        out.sort();
        out
    }

    /// Forgets everything known of every peer (as after restoring a backup).
    pub fn forget_peers(&mut self) {
        self.knowledge.clear();
    }

    /// Documents written since the last call.
    pub fn take_changed(&mut self) -> Vec<DocId> {
        let mut v = std::mem::take(&mut self.changed);
        v.dedup();
        v
    }

    /// Whether the blob is held whole.
    pub fn holds_blob(&self, hash: &Hash) -> bool {
        self.blobs.get(hash).is_some_and(MemBlob::whole)
    }

    fn visible(&self, peer: &PeerInfo, id: &DocId) -> bool {
        if is_directory_id(id) {
            return self.directory_for(peer).is_some_and(|(d, _)| &d == id);
        }
        self.docs.get(id).is_some_and(|d| may_hold(peer, &d.meta))
    }

    /// Writes this node's receipts and, on an edge, drops photos the hub holds.
    fn after_store(&mut self, id: &DocId, now: TimeMs) -> Result<(), MemError> {
        let me = self.me.clone();
        let blobs = &self.blobs;
        let Some(d) = self.docs.get_mut(id) else { return Ok(()) };
        if let Some(level) = receipt_level(me.role) {
            let before = d.doc.heads();
            let added = d
                .doc
                .acknowledge(level, &me.name, now, |p| {
                    Hash::from_hex(p.hash).is_some_and(|h| blobs.get(&h).is_some_and(MemBlob::whole))
                })
                .map_err(MemError::from)?;
            if added {
                d.refresh().map_err(MemError::from)?;
                for (h, sig) in authorship::sign_new(&self.author, d.doc.automerge(), &before) {
                    self.sigs.insert(Hash::from(h), sig);
                }
            }
        }
        let offload = d.view.offloadable_media(&me.name);
        self.offload(&offload);
        Ok(())
    }

    /// Drops the bytes of photos a hub holds whole (this node wrote them).
    fn offload(&mut self, hashes: &[String]) {
        for h in hashes {
            if let Some(b) = Hash::from_hex(h).and_then(|h| self.blobs.get_mut(&h))
                && !b.offloaded
            {
                b.chunks.clear();
                b.offloaded = true;
            }
        }
    }

    /// Checks and stores received changes of one document (the node's own checks:
    /// [`rules::admit`], then [`accept::vet`]).
    fn receive(&mut self, peer: &PeerInfo, inc: &Incoming, now: TimeMs) -> Result<Applied, MemError> {
        if is_directory_id(&inc.doc) {
            return Ok(self.receive_directory(peer, inc));
        }
        let id = &inc.doc;
        let mut candidate = match self.docs.get_mut(id) {
            Some(d) => d.doc.fork_as(self.actor.clone()),
            None => SessionDoc::empty(self.actor.clone()),
        };
        let admitted = match self.roster.read() {
            Ok(roster) => rules::admit(candidate.automerge(), &inc.bytes, &inc.sigs, &roster, &self.limits),
            Err(_) => return Err(MemError::RosterPoisoned),
        };
        let admitted = match admitted {
            Ok(Admission::Ready(c)) => c,
            Ok(Admission::MissingDeps) => return Ok(Applied::MissingDeps),
            Err(e) => return Ok(Applied::Refused { reason: e.to_string() }),
        };
        let sigs: Vec<(Hash, Signature)> = admitted.iter().map(|(c, sig)| (Hash::from(c.hash()), *sig)).collect();
        if let Err(e) = candidate.apply_changes(admitted.into_iter().map(|(c, _)| c).collect()) {
            return Ok(Applied::Refused { reason: e.to_string() });
        }
        // The node's acceptance rule: this node's receipts, the verdict, the photos to drop.
        let blobs = &self.blobs;
        // The simulator's replicas hold a photo for any record of its hash (the node also asks
        // that the record's writer, or a hub, vouched for the bytes: `docs/protocol.md`).
        let holds = |p: crate::session::PhotoRecord<'_>| {
            Hash::from_hex(p.hash).is_some_and(|h| blobs.get(&h).is_some_and(MemBlob::whole))
        };
        let kept = match accept::take(&self.me, peer, id, &mut candidate, &self.author, now, holds) {
            Taken::Kept(kept) => *kept,
            Taken::MissingDeps => return Ok(Applied::MissingDeps),
            Taken::Refused(why) => return Ok(Applied::Refused { reason: why.to_string() }),
        };
        if sigs.is_empty() && self.docs.contains_key(id) {
            let heads = self.heads(id).unwrap_or_default();
            return Ok(Applied::Stored { heads });
        }
        // Keep the signatures: this node may relay the changes.
        self.sigs.extend(sigs);
        self.sigs.extend(kept.own_sigs.into_iter().map(|(h, sig)| (Hash::from(h), sig)));
        self.docs.insert(*id, Doc::with_view(candidate, kept.view));
        self.offload(&kept.offload);
        self.changed.push(*id);
        let heads = self.heads(id).unwrap_or_default();
        Ok(Applied::Stored { heads })
    }
}

impl Replica for MemReplica {
    type Error = MemError;

    fn me(&self) -> &PeerInfo {
        &self.me
    }

    fn items(&mut self, peer: &PeerInfo) -> Result<Vec<Item>, MemError> {
        let mut out = Vec::new();
        for (id, d) in self.docs.iter_mut() {
            if may_hold(peer, &d.meta) {
                out.push(Item { id: *id, digest: digest(&d.heads) });
            }
        }
        out.extend(self.directory_item(peer));
        Ok(out)
    }

    fn delta(&mut self, peer: &PeerInfo) -> Result<Vec<(DocId, Vec<Hash>)>, MemError> {
        let known = self.knowledge.get(&peer.name);
        let mut out = Vec::new();
        for (id, d) in self.docs.iter_mut() {
            if !may_hold(peer, &d.meta) {
                continue;
            }
            let heads = d.heads.clone();
            if known.and_then(|k| k.get(id)).map(|k| &k.heads) != Some(&heads) {
                out.push((*id, heads));
            }
        }
        if let Some((id, heads)) = self.directory_for(peer)
            && known.and_then(|k| k.get(&id)).map(|k| &k.heads) != Some(&heads)
        {
            out.push((id, heads));
        }
        Ok(out)
    }

    fn knows_peer(&mut self, peer: &PeerInfo) -> Result<bool, MemError> {
        Ok(self.knowledge.get(&peer.name).is_some_and(|k| !k.is_empty()))
    }

    fn heads_for(&mut self, peer: &PeerInfo, id: &DocId) -> Result<Option<Vec<Hash>>, MemError> {
        if !self.visible(peer, id) {
            return Ok(None);
        }
        if is_directory_id(id) {
            return Ok(self.directory_for(peer).map(|(_, heads)| heads));
        }
        Ok(self.heads(id))
    }

    fn known_hashes(&mut self, peer: &PeerInfo, id: &DocId, hashes_in: &[Hash]) -> Result<Vec<Hash>, MemError> {
        if !self.visible(peer, id) {
            return Ok(Vec::new());
        }
        if is_directory_id(id) {
            return Ok(self.directory_known_hashes(peer, hashes_in));
        }
        let Some(d) = self.docs.get_mut(id) else { return Ok(Vec::new()) };
        let doc = d.doc.automerge();
        Ok(hashes_in
            .iter()
            .filter(|h| doc.get_change_meta_by_hash(&ChangeHash::from(**h)).is_some())
            .copied()
            .collect())
    }

    fn knowledge(&mut self, peer: &PeerInfo, id: &DocId) -> Result<Option<Knowledge>, MemError> {
        Ok(self.knowledge.get(&peer.name).and_then(|k| k.get(id)).cloned())
    }

    fn set_knowledge(&mut self, peer: &PeerInfo, updates: &[(DocId, Knowledge)]) -> Result<(), MemError> {
        // What a peer says of a session it may not see is not recorded.
        let visible: Vec<bool> = updates.iter().map(|(id, _)| self.visible(peer, id)).collect();
        if peer.role == crate::vocab::Role::Hub {
            self.hubs.insert(peer.name.clone());
        }
        let k = self.knowledge.entry(peer.name.clone()).or_default();
        for ((id, kn), ok) in updates.iter().zip(visible) {
            if ok {
                k.insert(*id, kn.clone());
            }
        }
        Ok(())
    }

    fn changes_since(&mut self, peer: &PeerInfo, id: &DocId, base: &[Hash]) -> Result<Option<Outgoing>, MemError> {
        if !self.visible(peer, id) {
            return Ok(None);
        }
        if is_directory_id(id) {
            return Ok(self.directory_changes_since(peer, base));
        }
        let Some(d) = self.docs.get_mut(id) else { return Ok(None) };
        let sigs = &self.sigs;
        let changes = d.doc.changes_after(&hashes(base));
        authorship::outgoing(changes, |h| Ok(sigs.get(&Hash::from(*h)).copied())).map(Some)
    }

    fn apply(&mut self, peer: &PeerInfo, batch: &[Incoming], now: TimeMs) -> Result<Vec<Applied>, MemError> {
        batch.iter().map(|inc| self.receive(peer, inc, now)).collect()
    }

    fn credential(&mut self, _peer: &PeerInfo, _author: &ActorPrefix) -> Result<Option<Vec<u8>>, MemError> {
        // Every simulated node's roster already holds the whole fleet.
        Ok(None)
    }

    fn offer_credential(&mut self, _credential: &[u8]) -> Result<bool, MemError> {
        Ok(false)
    }

    fn blobs_wanted(&mut self, peer: &PeerInfo) -> Result<Vec<BlobNeed>, MemError> {
        let mut out = Vec::new();
        for d in self.docs.values() {
            if !may_hold(peer, &d.meta) {
                continue;
            }
            for (m, hash) in d.view.media.iter().zip(&d.media) {
                let Some(hash) = *hash else { continue };
                let peer_holds = m.receipts.iter().any(|r| r.node == peer.name);
                let b = self.blobs.get(&hash);
                let held = match b {
                    None => blob::Held::Nothing,
                    Some(b) if b.offloaded => blob::Held::Offloaded,
                    Some(b) if b.whole() => blob::Held::Whole,
                    Some(_) => blob::Held::Partial,
                };
                if !blob::should_fetch(&self.me.name, &peer.name, &m.added_by, m.consent_withdrawn, peer_holds, held)
                    || m.size > blob::MAX_BLOB_BYTES
                {
                    continue;
                }
                let missing = (0..blob::chunk_count(m.size, CHUNK_SIZE) as u32)
                    .filter(|i| !b.is_some_and(|b| b.chunks.contains_key(i)))
                    .collect();
                out.push(BlobNeed { hash, size: m.size, manifest: b.and_then(|b| b.manifest.clone()), missing });
            }
        }
        out.sort_by_key(|n| n.hash);
        out.dedup_by_key(|n| n.hash);
        Ok(out)
    }

    fn blob_manifest(&mut self, peer: &PeerInfo, hash: &Hash) -> Result<Option<BlobManifest>, MemError> {
        let referenced = self.docs.values().any(|d| may_hold(peer, &d.meta) && d.media.contains(&Some(*hash)));
        Ok(match self.blobs.get(hash) {
            Some(b) if referenced && b.whole() => b.manifest.clone(),
            _ => None,
        })
    }

    fn blob_chunk(&mut self, hash: &Hash, index: u32) -> Result<Option<Vec<u8>>, MemError> {
        Ok(self.blobs.get(hash).and_then(|b| b.chunks.get(&index).map(|c| c.to_vec())))
    }

    fn store_manifest(&mut self, manifest: &BlobManifest, _now: TimeMs) -> Result<(), MemError> {
        let b = self.blobs.entry(manifest.hash).or_default();
        b.size = manifest.size;
        b.manifest = Some(manifest.clone());
        Ok(())
    }

    fn store_chunks(
        &mut self,
        _from: &PeerInfo,
        chunks: &[(Hash, u32, Vec<u8>)],
        now: TimeMs,
    ) -> Result<Vec<DocId>, MemError> {
        let mut out = Vec::new();
        for (hash, index, data) in chunks {
            let shared = self.chunk(data);
            let b = self.blobs.entry(*hash).or_default();
            let was_whole = b.whole();
            b.chunks.insert(*index, shared);
            if was_whole || !b.whole() {
                continue;
            }
            let hex = hash.to_hex();
            let referencing: Vec<DocId> = self
                .docs
                .iter()
                .filter(|(_, d)| d.view.media.iter().any(|m| m.hash == hex))
                .map(|(id, _)| *id)
                .collect();
            for id in &referencing {
                self.after_store(id, now)?;
                self.changed.push(*id);
            }
            out.extend(referencing);
        }
        Ok(out)
    }

    fn revocations(&mut self) -> Result<Option<(u64, Vec<u8>)>, MemError> {
        Ok(self.revocations.clone())
    }

    fn offer_revocations(&mut self, _der: &[u8]) -> Result<bool, MemError> {
        // The in-memory replica has no certificate authority to check a list against.
        Ok(false)
    }

    fn audit_heads(&mut self, peer: &PeerInfo, proof_at: Option<u64>) -> Result<Option<AuditHeads>, MemError> {
        if let Some(a) = &self.audit {
            return Ok(crate::audit::partners(&self.me, peer).then(|| a.heads_for(&peer.name, proof_at)));
        }
        Ok(self.audit_heads.map(|h| AuditHeads { proof: proof_at.unwrap_or(h.proof), ..h }))
    }

    fn offer_audit_head(&mut self, peer: &PeerInfo, heads: AuditHeads, _now: TimeMs) -> Result<(), MemError> {
        match self.audit.as_mut() {
            Some(a) => {
                if crate::audit::partners(&self.me, peer) {
                    a.told(&peer.name, &heads, crate::audit::believed(&self.me, peer));
                }
            }
            None => self.audit_heads_told.push((peer.name.clone(), heads)),
        }
        Ok(())
    }
}

/// A session id as a wire id.
pub fn doc_id(id: SessionId) -> DocId {
    id.to_bytes()
}
