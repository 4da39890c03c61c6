//! Photos between peers: which to fetch, manifests and chunks served within scope, chunks
//! stored in group commits, and the hub's receipt once a photo is whole.

use std::ops::{Deref, DerefMut};

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use sync_protocol::blob;
use sync_protocol::engine::BlobNeed;
use sync_protocol::scope::PeerInfo;
use sync_protocol::session::{SessionId, receipt_level};
use sync_protocol::wire::{BlobManifest, DocId, Hash};

use super::{Blobs, CachedSql, Store, StoreError, chunk_aad, sql};

impl<S: Deref<Target = Store>> Blobs<S> {
    /// Blobs of sessions shared with `peer` that this node should fetch from it
    /// ([`blob::should_fetch`]; the query reads only photos not held whole or let go here).
    pub fn blobs_wanted(&self, me: &PeerInfo, peer: &PeerInfo) -> Result<Vec<BlobNeed>, StoreError> {
        let ctx = "listing photos to fetch";
        let mut stmt = self.0
            .conn
            .prepare_cached(
                "SELECT m.sid, m.hash, m.size, m.added_by, m.holders, b.state, b.manifest, m.withdrawn, b.size
                 FROM session_media m LEFT JOIN blobs b ON b.hash = m.hash
                 WHERE b.state IS NULL OR b.state = 'partial'
                    OR (b.state = 'complete' AND m.added_by = ?1 AND NOT m.vouched
                        AND NOT EXISTS (SELECT 1 FROM blob_possessors p WHERE p.hash = m.hash AND p.node = m.added_by))",
            )
            .map_err(sql(ctx))?;
        let mut rows = stmt.query([&peer.name]).map_err(sql(ctx))?;
        let mut out: Vec<BlobNeed> = Vec::new();
        let mut listed: std::collections::HashSet<Hash> = std::collections::HashSet::new();
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let sid: i64 = r.get(0).map_err(sql(ctx))?;
            let hash_hex: String = r.get(1).map_err(sql(ctx))?;
            let size = r.get::<_, i64>(2).map_err(sql(ctx))? as u64;
            let added_by: String = r.get(3).map_err(sql(ctx))?;
            let holders: String = r.get(4).map_err(sql(ctx))?;
            let state: Option<String> = r.get(5).map_err(sql(ctx))?;
            let withdrawn: bool = r.get(7).map_err(sql(ctx))?;
            let manifest: Option<Vec<u8>> = r.get(6).map_err(sql(ctx))?;
            if state.as_deref() == Some("complete") {
                // Held whole here, for another writer's record: the peer wrote one of its own
                // of the same photo (two devices attaching one file). One whole chunk, chosen
                // here at random and checked against the photo's manifest, shows it had the
                // bytes; a record made from the hash alone cannot answer, and stays one this
                // node holds nothing for.
                let held_size = r.get::<_, Option<i64>>(8).map_err(sql(ctx))?.unwrap_or(-1) as u64;
                let Some(hash) = Hash::from_hex(&hash_hex) else { continue };
                if withdrawn
                    || added_by == me.name
                    || held_size != size
                    || listed.contains(&hash)
                    || !self.0.sid_visible(sid, peer)?
                {
                    continue;
                }
                let Some(cvs) = manifest else { continue };
                listed.insert(hash);
                let count = blob::chunk_count(size, blob::CHUNK_SIZE);
                let whole_chunks =
                    if size.is_multiple_of(u64::from(blob::CHUNK_SIZE)) { count } else { count.saturating_sub(1) };
                let mut r = [0u8; 8];
                crate::crypto::random_bytes(&mut r)?;
                let missing = vec![(u64::from_le_bytes(r) % whole_chunks.max(1)) as u32];
                out.push(BlobNeed { hash, size, manifest: Some(stored_manifest(hash, size, &cvs)), missing });
                continue;
            }
            let held = if state.is_some() { blob::Held::Partial } else { blob::Held::Nothing };
            let peer_holds = holders.split(',').any(|h| h == peer.name);
            let wanted = blob::should_fetch(&me.name, &peer.name, &added_by, withdrawn, peer_holds, held);
            let Some(hash) = Hash::from_hex(&hash_hex) else { continue };
            // A size past any photo's (a record written before the rules refused one) is not
            // fetched: it would only size the list of chunks to ask for.
            if !wanted || size > blob::MAX_BLOB_BYTES || listed.contains(&hash) || !self.0.sid_visible(sid, peer)? {
                continue;
            }
            listed.insert(hash);
            let manifest = manifest.map(|cvs| stored_manifest(hash, size, &cvs));
            let present = self.chunks_present(&hash_hex)?;
            let missing =
                (0..blob::chunk_count(size, blob::CHUNK_SIZE) as u32).filter(|i| !present.contains(i)).collect();
            out.push(BlobNeed { hash, size, manifest, missing });
        }
        Ok(out)
    }

    fn chunks_present(&self, hash: &str) -> Result<std::collections::HashSet<u32>, StoreError> {
        let mut stmt = self
            .0
            .conn
            .prepare_cached("SELECT idx FROM blob_chunks WHERE hash = ?1")
            .map_err(sql("reading a photo"))?;
        stmt.query_map([hash], |r| r.get::<_, i64>(0).map(|i| i as u32))
            .map_err(sql("reading a photo"))?
            .collect::<Result<_, _>>()
            .map_err(sql("reading a photo"))
    }

    /// The manifest of a blob held whole, if a session the peer may see references it.
    pub fn blob_manifest_for(&self, peer: &PeerInfo, hash: &Hash) -> Result<Option<BlobManifest>, StoreError> {
        let hex = hash.to_hex();
        let row: Option<(i64, Option<Vec<u8>>)> = self
            .0
            .conn
            .row("SELECT size, manifest FROM blobs WHERE hash = ?1 AND state = 'complete'", [&hex], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(sql("reading a photo"))?;
        let Some((size, Some(cvs))) = row else { return Ok(None) };
        // The sessions whose record of the photo this node holds it for (its writer had the
        // bytes, or a hub says it holds them for that record): a record made from the hash
        // alone, in a session the peer may see, opens nothing.
        let sids: Vec<i64> = {
            let mut stmt = self
                .0
                .conn
                .prepare_cached(
                    "SELECT sid FROM session_media m WHERE hash = ?1
                     AND (vouched OR EXISTS (SELECT 1 FROM blob_possessors p WHERE p.hash = m.hash AND p.node = m.added_by))",
                )
                .map_err(sql("reading a photo"))?;
            stmt.query_map([&hex], |r| r.get(0))
                .map_err(sql("reading a photo"))?
                .collect::<Result<_, _>>()
                .map_err(sql("reading a photo"))?
        };
        let mut visible = false;
        for sid in sids {
            visible |= self.0.sid_visible(sid, peer)?;
        }
        if !visible {
            return Ok(None);
        }
        Ok(Some(stored_manifest(*hash, size as u64, &cvs)))
    }

    /// One chunk of a blob, opened.
    pub fn blob_chunk(&self, hash: &Hash, index: u32) -> Result<Option<Vec<u8>>, StoreError> {
        let hex = hash.to_hex();
        let sealed: Option<Vec<u8>> = self
            .0
            .conn
            .row("SELECT sealed FROM blob_chunks WHERE hash = ?1 AND idx = ?2", params![hex, i64::from(index)], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql("reading a photo"))?;
        match sealed {
            Some(s) => Ok(Some(self.0.sealer.open("photo chunk", &chunk_aad(&hex, u64::from(index)), &s)?)),
            None => Ok(None),
        }
    }
}

impl<S: DerefMut<Target = Store>> Blobs<S> {
    /// Stores verified chunks durably, in one transaction (one fsync for a batch of chunks, not
    /// one per 16 KiB); returns the blobs that became whole.
    pub fn store_chunks(&mut self, from: &PeerInfo, chunks: &[(Hash, u32, Vec<u8>)]) -> Result<Vec<Hash>, StoreError> {
        let tx = Transaction::new_unchecked(&self.0.conn, TransactionBehavior::Immediate)
            .map_err(sql("starting a write"))?;
        // Each blob of the batch, and whether the batch proves its sender had the bytes: a
        // whole 16 KiB chunk (checked against the manifest before it came here) cannot be
        // guessed, where a photo's short last chunk (a JPEG's last two bytes, say) could be,
        // unless it is the whole photo.
        let mut blobs: Vec<(Hash, bool)> = Vec::new();
        for (hash, index, data) in chunks {
            let hex = hash.to_hex();
            let sealed = self.0.sealer.seal(&chunk_aad(&hex, u64::from(*index)), data)?;
            tx.exec(
                "INSERT INTO blob_chunks (hash, idx, sealed) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![hex, i64::from(*index), sealed],
            )
            .map_err(sql("storing a photo"))?;
            let whole_chunk = data.len() == blob::CHUNK_SIZE as usize;
            match blobs.iter_mut().find(|(h, _)| h == hash) {
                Some((_, proved)) => *proved |= whole_chunk,
                None => blobs.push((*hash, whole_chunk)),
            }
        }
        let mut whole = Vec::new();
        for (hash, proved) in blobs {
            let hex = hash.to_hex();
            let single: bool = tx
                .row("SELECT chunks = 1 FROM blobs WHERE hash = ?1", [&hex], |r| r.get(0))
                .optional()
                .map_err(sql("storing a photo"))?
                .unwrap_or(false);
            if proved || single {
                super::blobs::add_possessor(&tx, &hex, &from.name)?;
            }
            let (present, total, state): (i64, i64, String) = tx
                .row(
                    "SELECT (SELECT count(*) FROM blob_chunks WHERE hash = ?1), chunks, state FROM blobs WHERE hash = ?1",
                    [&hex],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(sql("storing a photo"))?;
            if present >= total {
                if state != "complete" {
                    tx.exec("UPDATE blobs SET state = 'complete' WHERE hash = ?1", [&hex])
                        .map_err(sql("storing a photo"))?;
                }
                whole.push(hash);
            }
        }
        tx.commit().map_err(sql("committing"))?;
        Ok(whole)
    }

    /// Records a verified manifest for a blob being received.
    pub fn store_manifest(&mut self, m: &BlobManifest, now: i64) -> Result<(), StoreError> {
        let hex = m.hash.to_hex();
        let mime: String = self
            .0
            .conn
            .row("SELECT mime FROM session_media WHERE hash = ?1 LIMIT 1", [&hex], |r| r.get(0))
            .optional()
            .map_err(sql("recording a photo"))?
            .unwrap_or_else(|| "application/octet-stream".into());
        self.0
            .conn
            .exec(
                "INSERT INTO blobs (hash, size, mime, chunk_size, chunks, created_ms, manifest, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'partial')
                 ON CONFLICT (hash) DO UPDATE SET manifest = excluded.manifest",
                params![
                    hex,
                    m.size as i64,
                    mime,
                    i64::from(m.chunk_size),
                    blob::chunk_count(m.size, m.chunk_size) as i64,
                    now,
                    m.cvs.concat()
                ],
            )
            .map_err(sql("recording a photo"))?;
        Ok(())
    }

    /// After a blob became whole here: this node's receipts in every session that references it.
    pub fn acknowledge_blob(&mut self, me: &PeerInfo, hash: &Hash, now: i64) -> Result<Vec<DocId>, StoreError> {
        let Some(level) = receipt_level(me.role) else { return Ok(Vec::new()) };
        let hex = hash.to_hex();
        let ids: Vec<String> = {
            let mut stmt = self
                .0
                .conn
                .prepare_cached("SELECT s.id FROM session_media m JOIN sessions s ON s.sid = m.sid WHERE m.hash = ?1")
                .map_err(sql("reading a photo"))?;
            stmt.query_map([&hex], |r| r.get(0))
                .map_err(sql("reading a photo"))?
                .collect::<Result<_, _>>()
                .map_err(sql("reading a photo"))?
        };
        let mut changed = Vec::new();
        for key in ids {
            let sid: SessionId = key.parse().map_err(|_| StoreError::Damaged(format!("session id {key:?}")))?;
            let name = me.name.clone();
            let detail = Some(serde_json::json!({ "photo": hex }));
            let added = self.0.sessions_mut().edit(sid, "photo.receive", detail, now, |ctx, doc| {
                let holds = |p: sync_protocol::session::PhotoRecord<'_>| ctx.holds_photo_for(p).unwrap_or(false);
                doc.acknowledge(level, &name, now, holds).map_err(crate::store::model(sid))
            })?;
            if added {
                changed.push(sid.to_bytes());
            }
        }
        Ok(changed)
    }
}

/// A manifest as the `blobs` table keeps it: the chunks' chaining values, 32 bytes each, end
/// to end.
fn stored_manifest(hash: Hash, size: u64, cvs: &[u8]) -> BlobManifest {
    let cvs = cvs
        .chunks_exact(32)
        .map(|c| {
            let mut a = [0u8; 32];
            a.copy_from_slice(c);
            a
        })
        .collect();
    BlobManifest { hash, size, chunk_size: blob::CHUNK_SIZE, cvs }
}

#[cfg(test)]
mod tests {
    use sync_protocol::vocab::Role;

    use super::*;

    /// A photo is held for a record only when the record's writer had the bytes (here: a peer
    /// that sent a whole chunk of it) or a hub or desk vouches for that record; the hash alone
    /// is nothing, and neither is a photo's short last chunk.
    #[test]
    fn a_photo_is_held_for_a_record_whose_writer_had_it_or_that_a_hub_vouches_for() {
        let (_d, mut store) = Store::scratch("desk-1");
        let bytes: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let m = blob::manifest(&bytes, blob::CHUNK_SIZE).expect("manifest");
        let hex = m.hash.to_hex();
        let sender =
            PeerInfo { name: "amb-07".into(), role: Role::Edge, org: None, icb: Some("QHM".into()), lines: vec![] };
        store.blobs_mut().store_manifest(&m, 1).expect("manifest stored");
        let chunks: Vec<(Hash, u32, Vec<u8>)> =
            bytes.chunks(blob::CHUNK_SIZE as usize).enumerate().map(|(i, c)| (m.hash, i as u32, c.to_vec())).collect();
        let (last, first) = chunks.split_last().expect("chunks");
        // The short last chunk (7,232 bytes here), even genuine, proves nothing of its sender.
        let thief = PeerInfo { name: "amb-66".into(), ..sender.clone() };
        assert!(store.blobs_mut().store_chunks(&thief, std::slice::from_ref(last)).expect("stored").is_empty());
        assert!(!store.blobs().vouched_for(&hex, "amb-66", false).expect("read"), "a short chunk is no proof");
        assert_eq!(store.blobs_mut().store_chunks(&sender, first).expect("stored"), vec![m.hash], "now whole");

        let blobs = store.blobs();
        assert!(blobs.vouched_for(&hex, "amb-07", false).expect("read"), "its sender had it");
        assert!(blobs.holds_photo_for(&hex, "amb-07", false).expect("read"));
        assert!(!blobs.vouched_for(&hex, "amb-66", false).expect("read"), "another writer never had it");
        assert!(!blobs.holds_photo_for(&hex, "amb-66", false).expect("read"));
        assert!(blobs.holds_photo_for(&hex, "amb-66", true).expect("read"), "a hub vouches for that record");
        let other = "ab".repeat(32);
        assert!(!blobs.holds_photo_for(&other, "amb-07", true).expect("read"), "not held at all");
    }
}
