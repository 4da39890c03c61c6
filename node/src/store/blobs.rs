//! Photos: content-addressed sealed chunks, thumbnails, and what the node holds.

use std::ops::Deref;

use super::*;

/// What the store keeps of photos: their sealed chunks and thumbnails, what this node holds of
/// them, and their transfer between peers (`transfer.rs`).
/// Reached through [`Store::blobs`] and [`Store::blobs_mut`].
#[derive(Debug)]
pub struct Blobs<S>(pub(super) S);

impl<S: Deref<Target = Store>> Blobs<S> {
    /// Describes a stored blob.
    pub fn blob_info(&self, hash: &str) -> Result<BlobInfo, StoreError> {
        blob_info(&self.0.conn, hash)
    }

    /// Whether a session held here says the patient withdrew the consent this photo was
    /// taken under (a withdrawal wins every merge, so one such session is enough).
    pub fn photo_withdrawn(&self, hash: &str) -> Result<bool, StoreError> {
        let ctx = "reading a photo's consent";
        self.0
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM session_media WHERE hash = ?1 AND withdrawn)", [hash], |r| {
                r.get(0)
            })
            .map_err(sql(ctx))
    }

    /// Whether this node holds a photo whole for a record of it written by `added_by`, with a
    /// hub's or desk's receipt on it or not (see [`holds_photo_for`]).
    pub fn holds_photo_for(&self, hash: &str, added_by: &str, vouched: bool) -> Result<bool, StoreError> {
        holds_photo_for(&self.0.conn, hash, added_by, vouched)
    }

    /// Whether a record of a photo written by `added_by` is one this node keeps the photo for,
    /// held whole yet or not: its writer is known to have had the bytes, or a hub vouches for
    /// it (`vouched`: a hub's or desk's receipt is on the record).
    pub fn vouched_for(&self, hash: &str, added_by: &str, vouched: bool) -> Result<bool, StoreError> {
        if vouched {
            return Ok(true);
        }
        self.0
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM blob_possessors WHERE hash = ?1 AND node = ?2)")
            .and_then(|mut s| s.query_row(params![hash, added_by], |r| r.get(0)))
            .map_err(sql("reading who had a photo"))
    }

    /// Reads a whole blob, checking it against its hash.
    pub fn read_blob(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let info = self.blob_info(hash)?;
        if info.state == "offloaded" {
            return Err(StoreError::BlobOffloaded(hash.to_string()));
        }
        if info.chunks_present < info.chunks {
            return Err(StoreError::BlobIncomplete {
                hash: hash.to_string(),
                have: info.chunks_present,
                total: info.chunks,
            });
        }
        let mut stmt = self
            .0
            .conn
            .prepare_cached("SELECT idx, sealed FROM blob_chunks WHERE hash = ?1 ORDER BY idx")
            .map_err(sql("reading a photo"))?;
        let mut rows = stmt.query([hash]).map_err(sql("reading a photo"))?;
        // The size is the index's word, not the sealed bytes': a damaged one (negative, or
        // beyond any photo) must not size the buffer (a capacity overflow panicked).
        let mut out = Vec::with_capacity(usize::try_from(info.size).unwrap_or(0).min(crate::photo::MAX_PHOTO_BYTES));
        while let Some(row) = rows.next().map_err(sql("reading a photo"))? {
            let idx = row.get::<_, i64>(0).map_err(sql("reading a photo"))? as u64;
            let sealed: Vec<u8> = row.get(1).map_err(sql("reading a photo"))?;
            out.extend_from_slice(&self.0.sealer.open("photo chunk", &chunk_aad(hash, idx), &sealed)?);
        }
        if blake3::hash(&out).to_hex().as_str() != hash {
            return Err(StoreError::BlobCorrupt(hash.to_string()));
        }
        Ok(out)
    }

    /// A photo's thumbnail, if one was kept.
    pub fn read_thumbnail(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let sealed: Option<Vec<u8>> = self
            .0
            .conn
            .row("SELECT thumbnail FROM blobs WHERE hash = ?1", [hash], |r| r.get(0))
            .optional()
            .map_err(sql("reading a thumbnail"))?
            .flatten();
        let sealed = sealed.ok_or_else(|| StoreError::NoSuchBlob(format!("{hash} (thumbnail)")))?;
        Ok(self.0.sealer.open("thumbnail", &thumb_aad(hash), &sealed)?)
    }

    /// Sessions whose record of a photo is one this node keeps the photo for: its writer had
    /// the bytes, or a hub or desk vouches for the record.
    pub fn sessions_holding_photo(&self, hash: &str) -> Result<Vec<SessionId>, StoreError> {
        let ctx = "finding a photo's sessions";
        let mut stmt = self
            .0
            .conn
            .prepare_cached(
                "SELECT s.id FROM session_media m JOIN sessions s ON s.sid = m.sid WHERE m.hash = ?1
                 AND (m.vouched OR EXISTS (SELECT 1 FROM blob_possessors p WHERE p.hash = m.hash AND p.node = m.added_by))",
            )
            .map_err(sql(ctx))?;
        let ids: Vec<String> =
            stmt.query_map([hash], |r| r.get(0)).map_err(sql(ctx))?.collect::<Result<_, _>>().map_err(sql(ctx))?;
        Ok(ids.iter().filter_map(|i| i.parse().ok()).collect())
    }

    /// Sessions whose record names a photo, whether or not this node keeps the photo for it.
    pub fn sessions_naming_photo(&self, hash: &str) -> Result<Vec<SessionId>, StoreError> {
        let ctx = "finding a photo's sessions";
        let mut stmt = self
            .0
            .conn
            .prepare_cached(
                "SELECT DISTINCT s.id FROM session_media m JOIN sessions s ON s.sid = m.sid WHERE m.hash = ?1",
            )
            .map_err(sql(ctx))?;
        let ids: Vec<String> =
            stmt.query_map([hash], |r| r.get(0)).map_err(sql(ctx))?.collect::<Result<_, _>>().map_err(sql(ctx))?;
        Ok(ids.iter().filter_map(|i| i.parse().ok()).collect())
    }

    /// Photos by what this node holds of them.
    pub fn photo_holdings(&self) -> Result<PhotoHoldings, StoreError> {
        let mut out = PhotoHoldings::default();
        let mut stmt = self
            .0
            .conn
            .prepare_cached("SELECT state, count(*), coalesce(sum(size), 0) FROM blobs GROUP BY state")
            .map_err(sql("counting photos"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)))
            .map_err(sql("counting photos"))?;
        for row in rows {
            let (state, n, bytes) = row.map_err(sql("counting photos"))?;
            match state.as_str() {
                "complete" => out.held = (n, bytes),
                "partial" => out.partial = (n, bytes),
                "offloaded" => out.offloaded = (n, bytes),
                other => return Err(StoreError::Damaged(format!("a photo in an unknown state {other:?}"))),
            }
        }
        Ok(out)
    }
}

/// Records that `node` is known to have had a photo's bytes (it attached them here, or sent
/// them whole).
pub(super) fn add_possessor(conn: &Connection, hash: &str, node: &str) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO blob_possessors (hash, node) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![hash, node]))
        .map_err(sql("recording who had a photo"))?;
    Ok(())
}

/// Whether this node holds a photo whole for a record of it written by `added_by`: the bytes
/// are here, and the record's writer is known to have had them (it attached them here or sent
/// them), or a hub or desk has written that it holds them for this record (`vouched`). A record made
/// from a hash alone (another patient's photo, its hash read off an export) is held for by no
/// one: its bytes are not sent, acknowledged or exported for it.
pub(super) fn holds_photo_for(
    conn: &Connection,
    hash: &str,
    added_by: &str,
    vouched: bool,
) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM blobs WHERE hash = ?1 AND state = 'complete')
            AND (?3 OR EXISTS (SELECT 1 FROM blob_possessors WHERE hash = ?1 AND node = ?2))",
    )
    .and_then(|mut s| s.query_row(params![hash, added_by, vouched], |r| r.get(0)))
    .map_err(sql("reading who had a photo"))
}

pub(super) fn chunk_aad(hash: &str, idx: u64) -> Vec<u8> {
    [b"outpost/chunk/v1/".as_slice(), hash.as_bytes(), b"/", &idx.to_be_bytes()].concat()
}

pub(super) fn thumb_aad(hash: &str) -> Vec<u8> {
    [b"outpost/thumbnail/v1/".as_slice(), hash.as_bytes()].concat()
}

pub(super) fn blob_info(conn: &Connection, hash: &str) -> Result<BlobInfo, StoreError> {
    conn.row(
        "SELECT size, mime, chunks, (SELECT count(*) FROM blob_chunks c WHERE c.hash = b.hash), state FROM blobs b WHERE hash = ?1",
        [hash],
        |r| {
            Ok(BlobInfo {
                hash: hash.to_string(),
                size: r.get::<_, i64>(0)? as u64,
                mime: r.get(1)?,
                chunks: r.get::<_, i64>(2)? as u64,
                chunks_present: r.get::<_, i64>(3)? as u64,
                state: r.get(4)?,
            })
        },
    )
    .optional()
    .map_err(sql("reading a photo"))?
    .ok_or_else(|| StoreError::NoSuchBlob(hash.to_string()))
}

pub(super) fn put_blob(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    bytes: &[u8],
    mime: &str,
    now: i64,
    holder: &str,
) -> Result<BlobInfo, StoreError> {
    let hash = blake3::hash(bytes).to_hex().to_string();
    add_possessor(tx, &hash, holder)?;
    let chunk_size = blob::CHUNK_SIZE as usize;
    let chunks = blob::chunk_count(bytes.len() as u64, blob::CHUNK_SIZE);
    let manifest = blob::manifest(bytes, blob::CHUNK_SIZE)
        .map_err(|e| StoreError::Damaged(format!("cannot describe a photo: {e}")))?;
    tx.exec(
        "INSERT INTO blobs (hash, size, mime, chunk_size, chunks, created_ms, manifest, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'complete')
         ON CONFLICT (hash) DO UPDATE SET manifest = excluded.manifest, state = 'complete'",
        params![hash, bytes.len() as i64, mime, chunk_size as i64, chunks as i64, now, manifest.cvs.concat()],
    )
    .map_err(sql("recording a photo"))?;
    let mut insert = tx
        .prepare_cached("INSERT INTO blob_chunks (hash, idx, sealed) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")
        .map_err(sql("storing a photo"))?;
    for (idx, chunk) in bytes.chunks(chunk_size).enumerate() {
        let idx = idx as u64;
        insert
            .execute(params![hash, idx as i64, sealer.seal(&chunk_aad(&hash, idx), chunk)?])
            .map_err(sql("storing a photo"))?;
    }
    Ok(BlobInfo {
        hash,
        size: bytes.len() as u64,
        mime: mime.to_string(),
        chunks,
        chunks_present: chunks,
        state: "complete".into(),
    })
}

/// Whether a hub or a desk has written its receipt on a photo record: it holds the photo for
/// that record, which it says only when the record's writer had the bytes.
pub fn vouched(m: &sync_protocol::session::MediaView) -> bool {
    use sync_protocol::vocab::ReceiptLevel;
    m.receipts.iter().any(|r| matches!(r.level, ReceiptLevel::Hub | ReceiptLevel::Desk))
}
