//! The in-memory replica's ICB directory: its hub writes it, and it travels to the ICB's edges
//! and desks by the same engine as sessions, under the node's rules (`directory::may_exchange`,
//! `directory::may_accept`): a hub takes it from no one, an edge or desk only from its own hub.

use automerge::ChangeHash;

use super::{MemReplica, ids};
use crate::directory::{DirectoryDoc, DirectoryError, DirectoryView, directory_id, may_accept, may_exchange};
use crate::engine::{Applied, Incoming, Outgoing};
use crate::recon::{Item, digest};
use crate::scope::PeerInfo;
use crate::wire::{DocId, Hash};

/// The directory held, with its heads.
#[derive(Debug)]
pub(super) struct MemDirectory {
    pub(super) doc: DirectoryDoc,
    pub(super) heads: Vec<Hash>,
}

impl MemDirectory {
    fn new(mut doc: DirectoryDoc) -> MemDirectory {
        let heads = ids(doc.heads());
        MemDirectory { doc, heads }
    }
}

impl MemReplica {
    /// Installs this hub's directory (the hub is its only author), marked changed so that the
    /// engine carries it to the ICB's edges and desks already connected.
    pub fn set_directory(&mut self, doc: DirectoryDoc) {
        self.directory = Some(MemDirectory::new(doc));
        self.mark_directory_changed();
    }

    /// Edits the directory this hub keeps (as `outpost rota set` does on a node): one change,
    /// marked changed so that the engine carries it on. `None` if no directory is held here.
    pub fn edit_directory<T>(
        &mut self,
        f: impl FnOnce(&mut DirectoryDoc) -> Result<T, DirectoryError>,
    ) -> Option<Result<T, DirectoryError>> {
        let d = self.directory.as_mut()?;
        let out = f(&mut d.doc);
        d.heads = ids(d.doc.heads());
        self.mark_directory_changed();
        Some(out)
    }

    fn mark_directory_changed(&mut self) {
        if let Some(icb) = self.me.icb.as_deref() {
            self.changed.push(directory_id(icb));
        }
    }

    /// The directory held here, read (none before it arrives, or if it is malformed).
    pub fn directory_view(&self) -> Option<DirectoryView> {
        self.directory.as_ref().and_then(|d| d.doc.view().ok())
    }

    /// The directory's heads, if one is held.
    pub fn directory_heads(&self) -> Option<Vec<Hash>> {
        self.directory.as_ref().map(|d| d.heads.clone())
    }

    /// The directory's id and heads, if held and exchanged with `peer`.
    pub(super) fn directory_for(&self, peer: &PeerInfo) -> Option<(DocId, Vec<Hash>)> {
        let icb = self.me.icb.as_deref()?;
        let d = self.directory.as_ref()?;
        may_exchange(&self.me, peer, icb).then(|| (directory_id(icb), d.heads.clone()))
    }

    pub(super) fn directory_item(&self, peer: &PeerInfo) -> Option<Item> {
        self.directory_for(peer).map(|(id, heads)| Item { id, digest: digest(&heads) })
    }

    pub(super) fn directory_known_hashes(&mut self, peer: &PeerInfo, hashes: &[Hash]) -> Vec<Hash> {
        if self.directory_for(peer).is_none() {
            return Vec::new();
        }
        let Some(d) = self.directory.as_mut() else { return Vec::new() };
        let am = d.doc.automerge();
        hashes.iter().filter(|h| am.get_change_meta_by_hash(&ChangeHash::from(**h)).is_some()).copied().collect()
    }

    /// The directory goes over the authenticated connection without signatures, as the node's.
    pub(super) fn directory_changes_since(&mut self, peer: &PeerInfo, base: &[Hash]) -> Option<Outgoing> {
        self.directory_for(peer)?;
        let d = self.directory.as_mut()?;
        let bytes = if base.is_empty() { d.doc.save() } else { d.doc.save_after(&super::hashes(base)) };
        Some(Outgoing { bytes, sigs: Vec::new(), authors: Vec::new() })
    }

    /// Receives a directory: only this node's own ICB's, only from its hub.
    pub(super) fn receive_directory(&mut self, from: &PeerInfo, inc: &Incoming) -> Applied {
        let refused = |reason: &str| Applied::Refused { reason: reason.to_string() };
        let Some(icb) = self.me.icb.clone().filter(|icb| directory_id(icb) == inc.doc) else {
            return refused("a directory of another ICB");
        };
        if !may_accept(&self.me, from, &icb) {
            return refused("only the ICB's hub may send its directory, and only to its edges and desks");
        }
        let actor = self.actor.clone();
        let mut candidate = match self.directory.as_mut() {
            Some(d) => match DirectoryDoc::load(&d.doc.save(), actor) {
                Ok(c) => c,
                Err(e) => return Applied::Refused { reason: e.to_string() },
            },
            None => DirectoryDoc::empty(actor),
        };
        if let Err(e) = candidate.apply_bytes(&inc.bytes) {
            return Applied::Refused { reason: e.to_string() };
        }
        if !candidate.automerge().get_missing_deps(&[]).is_empty() || candidate.heads().is_empty() {
            return Applied::MissingDeps;
        }
        match candidate.view() {
            Ok(v) if v.icb == icb => {}
            Ok(_) => return refused("a directory naming another ICB"),
            Err(e) => return Applied::Refused { reason: e.to_string() },
        }
        let d = MemDirectory::new(candidate);
        let heads = d.heads.clone();
        if self.directory.as_ref().map(|x| &x.heads) != Some(&heads) {
            self.changed.push(inc.doc);
        }
        self.directory = Some(d);
        Applied::Stored { heads }
    }

    /// A copy of the directory for a backup, under `actor`.
    pub(super) fn directory_backup(&mut self, actor: automerge::ActorId) -> Option<MemDirectory> {
        let d = self.directory.as_mut()?;
        DirectoryDoc::load(&d.doc.save(), actor).ok().map(MemDirectory::new)
    }
}
