//! What the node's own machinery reaches through `Node` (the sync daemon, the transport, the
//! metrics page, backups, the demo's narration): nothing here is a clinical operation, and none
//! of it gives a person more than the clinical operations do. `Node::raw_store` is the one way
//! past the node to its store, for the store's own tests, benchmarks and attack tests; nothing in
//! this crate outside `node` calls it but the demo's stolen-tablet scene (held by
//! `node/tests/invariants.rs`).

use std::path::Path;

use rustls::pki_types::CertificateDer;
use sync_protocol::authorship::Member;
use sync_protocol::scope::PeerInfo;
use sync_protocol::session::{SessionId, SessionView};
use sync_protocol::wire::DocId;

use super::Node;
use crate::config::{NodeConfig, NodeDir};
use crate::replica::NodeReplica;
use crate::store::{Backlog, BlobInfo, PeerSync, Store, StoreError, StoreStats};

impl Node {
    /// Its directory.
    pub fn dir(&self) -> &NodeDir {
        &self.dir
    }

    /// Its configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The store itself, past every role check of the node: for the store's own tests,
    /// benchmarks and attack tests only.
    #[doc(hidden)]
    pub fn raw_store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// [`Node::raw_store`], to read.
    #[doc(hidden)]
    pub fn raw_store_ref(&self) -> &Store {
        &self.store
    }

    /// A session's view without an audit entry, for the node's own machinery (the daemon's call
    /// loops, the demo's narration). What a person is shown goes through [`Node::show`] or
    /// [`Node::export`].
    pub fn view(&mut self, id: SessionId) -> Result<SessionView, StoreError> {
        self.store.sessions_mut().view(id)
    }

    /// What the store holds, in numbers.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        self.store.stats()
    }

    /// A photo's state here.
    pub fn blob_info(&self, hash: &str) -> Result<BlobInfo, StoreError> {
        self.store.blobs().blob_info(hash)
    }

    /// The node's certificate, key and CA certificate (PEM), once installed.
    pub fn tls_identity(&self) -> Result<Option<(String, String, String)>, StoreError> {
        self.store.identity().tls_identity()
    }

    /// The fleet's revocation list (its number and DER), once installed.
    pub fn revocations(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.store.identity().revocations()
    }

    /// SQLite's integrity check of the store file.
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        self.store.integrity_check()
    }

    /// A consistent copy of the store file at `path`.
    pub fn backup_into(&self, path: &Path) -> Result<(), StoreError> {
        self.store.backup_into(path)
    }

    /// The store file's size in bytes (with its WAL).
    pub fn file_bytes(&self) -> u64 {
        self.store.file_bytes()
    }

    /// What this node wrote that has not left it yet.
    pub fn backlog(&self) -> Result<Backlog, StoreError> {
        self.store.backlog(&self.config.name)
    }

    /// Each peer's last sync.
    pub fn peer_syncs(&self) -> Result<Vec<PeerSync>, StoreError> {
        self.store.peers().peer_syncs()
    }

    /// Records how a sync with a peer ended.
    pub(crate) fn record_sync(&mut self, peer: &str, outcome: Result<(), &str>, now: i64) -> Result<(), StoreError> {
        self.store.peers_mut().record_sync(peer, outcome, now)
    }

    /// SQLite's data version (changes when another connection commits).
    pub(crate) fn data_version(&self) -> Result<i64, StoreError> {
        self.store.peers().data_version()
    }

    /// Sessions changed after log position `seq`, and the newest position.
    pub(crate) fn changed_since(&self, seq: i64) -> Result<(Vec<DocId>, i64), StoreError> {
        self.store.peers().changed_since(seq)
    }

    /// Stores a fleet member's credential (a peer's author key, certified); `false` when a newer
    /// certificate of the same author key states another identity (see
    /// [`crate::store::Identity::add_member`]).
    pub(crate) fn add_member(&mut self, member: Member, credential: &[u8]) -> Result<bool, StoreError> {
        self.store.identity_mut().add_member(member, credential)
    }

    /// Operations admitted from peers so far (the cost meter of a conversation).
    pub(crate) fn ops_admitted(&self) -> u64 {
        self.store.ops_admitted()
    }

    /// The sync engine's view of this node, for one conversation with a peer.
    pub(crate) fn replica<'a>(
        &'a mut self,
        me: &'a PeerInfo,
        ca: Option<&'a CertificateDer<'static>>,
    ) -> NodeReplica<'a> {
        NodeReplica::new(&mut self.store, me, ca)
    }
}
