//! The ICB directory in the store: one sealed Automerge document per ICB (this node holds at
//! most its own ICB's), what each peer is known to hold of it, and its integration when it
//! arrives from the hub. The document is small (a few KiB), so it is kept whole, never as a log.

use std::ops::{Deref, DerefMut};

use automerge::{ActorId, ChangeHash};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use sync_protocol::directory::{self, DirectoryDoc, DirectoryError, DirectoryView};
use sync_protocol::engine::{Applied, Knowledge};
use sync_protocol::recon::{self, Item};
use sync_protocol::scope::PeerInfo;
use sync_protocol::wire::{DocId, Hash};

use crate::crypto::Sealer;

use super::{CachedSql, Store, StoreError, append_audit, by, heads_blob, heads_from_blob, knowledge_row, sql};

pub(super) fn aad(icb: &str) -> Vec<u8> {
    format!("outpost/directory/v1/{icb}").into_bytes()
}

fn sorted_heads(doc: &mut DirectoryDoc) -> Vec<Hash> {
    let mut h: Vec<Hash> = doc.heads().into_iter().map(Hash::from).collect();
    h.sort();
    h
}

/// The directory row of this node's ICB, as reconciliation sees it.
struct DirRow {
    id: DocId,
    icb: String,
    heads: Vec<Hash>,
    digest: [u8; 16],
}

/// The ICB directory this node holds, and what each peer holds of it.
/// Reached through [`Store::directory`] and [`Store::directory_mut`].
#[derive(Debug)]
pub struct Directory<S>(pub(super) S);

impl<S: Deref<Target = Store>> Directory<S> {
    fn dir_row(&self, icb: &str) -> Result<Option<DirRow>, StoreError> {
        let ctx = "reading the ICB directory";
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .0
            .conn
            .row("SELECT heads, digest FROM directory WHERE icb = ?1", [icb], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(sql(ctx))?;
        let Some((heads, digest)) = row else { return Ok(None) };
        Ok(Some(DirRow {
            id: directory::directory_id(icb),
            icb: icb.to_string(),
            heads: heads_from_blob(&heads),
            digest: digest.try_into().map_err(|_| StoreError::Damaged("the directory's digest".into()))?,
        }))
    }

    /// The directory this node exchanges with `peer`, if it holds one and they exchange it.
    fn dir_row_for(&self, me: &PeerInfo, peer: &PeerInfo) -> Result<Option<DirRow>, StoreError> {
        let Some(icb) = me.icb.as_deref() else { return Ok(None) };
        if !directory::may_exchange(me, peer, icb) {
            return Ok(None);
        }
        self.dir_row(icb)
    }

    fn load_directory(
        conn: &rusqlite::Connection,
        sealer: &Sealer,
        actor: &ActorId,
        icb: &str,
    ) -> Result<Option<DirectoryDoc>, StoreError> {
        let sealed: Option<Vec<u8>> = conn
            .row("SELECT sealed FROM directory WHERE icb = ?1", [icb], |r| r.get(0))
            .optional()
            .map_err(sql("reading the ICB directory"))?;
        let Some(sealed) = sealed else { return Ok(None) };
        let bytes = sealer.open("ICB directory", &aad(icb), &sealed)?;
        Ok(Some(DirectoryDoc::load(&bytes, actor.clone())?))
    }

    /// The directory of `icb`, if this node holds it.
    pub fn directory(&self, icb: &str) -> Result<Option<DirectoryView>, StoreError> {
        match Self::load_directory(&self.0.conn, &self.0.sealer, &self.0.actor, icb)? {
            Some(d) => Ok(Some(d.view()?)),
            None => Ok(None),
        }
    }

    /// The directory item for a peer's reconciliation, if any.
    pub fn directory_item(&self, me: &PeerInfo, peer: &PeerInfo) -> Result<Option<Item>, StoreError> {
        Ok(self.dir_row_for(me, peer)?.map(|r| Item { id: r.id, digest: r.digest }))
    }

    /// The directory, if the peer has not confirmed our heads of it.
    pub fn directory_delta(&self, me: &PeerInfo, peer: &PeerInfo) -> Result<Option<(DocId, Vec<Hash>)>, StoreError> {
        let Some(row) = self.dir_row_for(me, peer)? else { return Ok(None) };
        let known: Option<Vec<u8>> = self
            .0
            .conn
            .row("SELECT digest FROM peer_directory WHERE peer = ?1 AND icb = ?2", [&peer.name, &row.icb], |r| r.get(0))
            .optional()
            .map_err(sql("reading peer state"))?;
        Ok((known.as_deref() != Some(&row.digest[..])).then_some((row.id, row.heads)))
    }

    /// Our heads of the directory `id`, if we hold it and exchange it with the peer.
    pub fn directory_heads_for(
        &self,
        me: &PeerInfo,
        peer: &PeerInfo,
        id: &DocId,
    ) -> Result<Option<Vec<Hash>>, StoreError> {
        Ok(self.dir_row_for(me, peer)?.filter(|r| &r.id == id).map(|r| r.heads))
    }

    fn own_icb_of(me: &PeerInfo, id: &DocId) -> Option<String> {
        me.icb.clone().filter(|icb| &directory::directory_id(icb) == id)
    }

    /// The directory document `id`, if it is this node's ICB's and this node holds it.
    fn own_directory(&self, me: &PeerInfo, id: &DocId) -> Result<Option<DirectoryDoc>, StoreError> {
        match Self::own_icb_of(me, id) {
            Some(icb) => Self::load_directory(&self.0.conn, &self.0.sealer, &self.0.actor, &icb),
            None => Ok(None),
        }
    }

    /// Which of `hashes` are changes of the directory that we hold.
    pub fn directory_known_hashes(&self, me: &PeerInfo, id: &DocId, hashes: &[Hash]) -> Result<Vec<Hash>, StoreError> {
        let Some(mut doc) = self.own_directory(me, id)? else { return Ok(Vec::new()) };
        let am = doc.automerge();
        Ok(hashes.iter().filter(|h| am.get_change_meta_by_hash(&ChangeHash::from(**h)).is_some()).copied().collect())
    }

    /// Our directory changes that are not ancestors of `base` (all of it when `base` is empty).
    pub fn directory_changes_since(&self, me: &PeerInfo, id: &DocId, base: &[Hash]) -> Result<Vec<u8>, StoreError> {
        let Some(mut doc) = self.own_directory(me, id)? else { return Ok(Vec::new()) };
        if base.is_empty() {
            return Ok(doc.save());
        }
        let base: Vec<ChangeHash> = base.iter().map(|h| ChangeHash::from(*h)).collect();
        Ok(doc.save_after(&base))
    }

    /// What the peer is known to hold of the directory.
    pub fn directory_knowledge(
        &self,
        me: &PeerInfo,
        peer: &PeerInfo,
        id: &DocId,
    ) -> Result<Option<Knowledge>, StoreError> {
        let Some(icb) = Self::own_icb_of(me, id) else { return Ok(None) };
        self.0
            .conn
            .row(
                "SELECT heads, shared FROM peer_directory WHERE peer = ?1 AND icb = ?2",
                [&peer.name, &icb],
                knowledge_row,
            )
            .optional()
            .map_err(sql("reading peer state"))
    }
}

impl<S: DerefMut<Target = Store>> Directory<S> {
    /// Records what the peer holds of the directory.
    pub fn set_directory_knowledge(
        &mut self,
        me: &PeerInfo,
        peer: &PeerInfo,
        id: &DocId,
        k: &Knowledge,
    ) -> Result<(), StoreError> {
        let Some(icb) = Self::own_icb_of(me, id) else { return Ok(()) };
        self.0.conn
            .exec(
                "INSERT INTO peer_directory (peer, icb, digest, heads, shared) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (peer, icb) DO UPDATE SET digest = excluded.digest, heads = excluded.heads, shared = excluded.shared",
                params![peer.name, icb, recon::digest(&k.heads).to_vec(), heads_blob(&k.heads), heads_blob(&k.shared)],
            )
            .map_err(sql("recording peer state"))?;
        Ok(())
    }

    /// Edits the directory of `icb` (creating it if this node has none) in one durable
    /// transaction; returns what `edit` returned and the directory after it.
    pub fn edit_directory<T>(
        &mut self,
        icb: &str,
        action: &str,
        now: i64,
        edit: impl FnOnce(&mut DirectoryDoc) -> Result<T, DirectoryError>,
    ) -> Result<(T, DirectoryView), StoreError> {
        let store = &mut *self.0;
        let tx =
            store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
        let mut doc = match Self::load_directory(&tx, &store.sealer, &store.actor, icb)? {
            Some(d) => d,
            None => DirectoryDoc::create(icb, store.actor.clone(), now)?,
        };
        let out = edit(&mut doc)?;
        let view = doc.view()?;
        write_directory(&tx, &store.sealer, icb, &mut doc, now)?;
        let detail = by(&store.acting, Some(serde_json::json!({ "icb": icb })));
        append_audit(&tx, &store.sealer, &store.node, now, action, None, detail)?;
        tx.commit().map_err(sql("committing"))?;
        Ok((out, view))
    }

    /// Integrates directory bytes received from `from`: only this node's ICB's directory, only
    /// from its hub, only a well-formed directory of that ICB. Returns the outcome and whether
    /// the stored directory changed.
    pub fn apply_directory(
        &mut self,
        me: &PeerInfo,
        from: &PeerInfo,
        id: &DocId,
        bytes: &[u8],
        now: i64,
    ) -> Result<(Applied, bool), StoreError> {
        self.receive_directory(me, from, id, now, |doc| doc.apply_bytes(bytes).map_err(|e| e.to_string()))
    }

    fn receive_directory(
        &mut self,
        me: &PeerInfo,
        from: &PeerInfo,
        id: &DocId,
        now: i64,
        receive: impl FnOnce(&mut DirectoryDoc) -> Result<(), String>,
    ) -> Result<(Applied, bool), StoreError> {
        let store = &mut *self.0;
        let refused = |reason: String| Ok((Applied::Refused { reason }, false));
        let Some(icb) = Self::own_icb_of(me, id) else {
            return refused("a directory of another ICB".into());
        };
        if !directory::may_accept(me, from, &icb) {
            return refused(format!("only {icb}'s hub may send its directory, and only to its edges and desks"));
        }
        let tx =
            store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
        // Loaded fresh inside the transaction: a refused candidate is simply dropped.
        let mut doc = Self::load_directory(&tx, &store.sealer, &store.actor, &icb)?
            .unwrap_or_else(|| DirectoryDoc::empty(store.actor.clone()));
        let before = sorted_heads(&mut doc);
        if let Err(e) = receive(&mut doc) {
            return refused(e);
        }
        if !doc.automerge().get_missing_deps(&[]).is_empty() {
            return Ok((Applied::MissingDeps, false));
        }
        let after = sorted_heads(&mut doc);
        if after.is_empty() {
            return Ok((Applied::MissingDeps, false));
        }
        if after == before {
            return Ok((Applied::Stored { heads: after }, false));
        }
        match doc.view() {
            Ok(v) if v.icb == icb => {}
            Ok(v) => return refused(format!("a directory claiming ICB {} under {icb}'s id", v.icb)),
            Err(e) => return refused(e.to_string()),
        }
        write_directory(&tx, &store.sealer, &icb, &mut doc, now)?;
        append_audit(
            &tx,
            &store.sealer,
            &store.node,
            now,
            "directory.receive",
            None,
            by(&store.acting, Some(serde_json::json!({ "icb": icb, "from": from.name }))),
        )?;
        tx.commit().map_err(sql("committing"))?;
        Ok((Applied::Stored { heads: after }, true))
    }
}

/// Writes the whole directory, sealed, and gives it the next position of the change sequence
/// (shared with session changes, so that a watcher of `changed_since` sees it).
fn write_directory(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    icb: &str,
    doc: &mut DirectoryDoc,
    now: i64,
) -> Result<(), StoreError> {
    let ctx = "writing the ICB directory";
    let heads = sorted_heads(doc);
    let sealed = sealer.seal(&aad(icb), &doc.save())?;
    let current: Option<i64> = tx
        .row("SELECT seq FROM sqlite_sequence WHERE name = 'doc_changes'", [], |r| r.get(0))
        .optional()
        .map_err(sql(ctx))?;
    let floor: i64 = tx.row("SELECT coalesce(max(seq), 0) FROM doc_changes", [], |r| r.get(0)).map_err(sql(ctx))?;
    let seq = current.unwrap_or(0).max(floor) + 1;
    match current {
        Some(_) => tx.exec("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'doc_changes'", [seq]),
        None => tx.exec("INSERT INTO sqlite_sequence (name, seq) VALUES ('doc_changes', ?1)", [seq]),
    }
    .map_err(sql(ctx))?;
    tx.exec(
        "INSERT INTO directory (icb, sealed, heads, digest, seq, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (icb) DO UPDATE SET sealed = excluded.sealed, heads = excluded.heads,
             digest = excluded.digest, seq = excluded.seq, updated_ms = excluded.updated_ms",
        params![icb, sealed, heads_blob(&heads), recon::digest(&heads).to_vec(), seq, now],
    )
    .map_err(sql(ctx))?;
    Ok(())
}
