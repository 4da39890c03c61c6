//! Re-sealing the whole store under a new data key (`outpost key rotate`), in one SQLite
//! transaction: a process killed at any instant leaves every value under the old key or every
//! value under the new one, never a mix. The audit chain's hashes cover the sealed details, so
//! the chain is checked intact first, its hashes recomputed over the re-sealed details, and a
//! `key.rotate` entry records the old chain's head.

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use super::{
    AUTHOR_AAD, AuditRow, Store, StoreError, append_audit, audit_aad, by, card_aad, change_aad, chunk_aad,
    snapshot_aad, sql, thumb_aad,
};
use crate::crypto::Sealer;

/// What a rotation re-sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Resealed {
    /// Values re-sealed, every kind together.
    pub values: u64,
    /// Their sealed bytes.
    pub bytes: u64,
    /// Audit entries whose chain hash was recomputed.
    pub audit_entries: u64,
    /// People whose PIN was cleared: its sealed hash did not open as theirs (moved, or written
    /// by hand). Each needs `outpost user set-pin`.
    pub pins_cleared: Vec<String>,
}

/// Sealed metadata values and their associated data.
const META: &[(&str, &[u8])] = &[
    ("key_check", b"meta"),
    ("author_seed", AUTHOR_AAD),
    ("tls_key_pending", super::credentials::PENDING_KEY_AAD),
    ("audit_head", super::audit::AUDIT_HEAD_AAD),
];

const CTX: &str = "re-sealing the store";

/// Row ids of `select` (row id first, then what the associated data is made of) with each
/// row's associated data.
fn rows(
    tx: &Transaction<'_>,
    select: &str,
    aad: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<Vec<u8>>,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let mut stmt = tx.prepare(select).map_err(sql(CTX))?;
    stmt.query_map([], |r| Ok((r.get(0)?, aad(r)?))).map_err(sql(CTX))?.collect::<Result<_, _>>().map_err(sql(CTX))
}

/// Opens each row's `table.column` with `old` and seals it again with `new`, one row at a time
/// (a store of photos is re-sealed without holding it in memory).
#[allow(clippy::too_many_arguments)]
fn reseal_column(
    tx: &Transaction<'_>,
    old: &Sealer,
    new: &Sealer,
    what: &'static str,
    table: &str,
    column: &str,
    rows: Vec<(i64, Vec<u8>)>,
    done: &mut Resealed,
) -> Result<(), StoreError> {
    let read = format!("SELECT {column} FROM {table} WHERE rowid = ?1");
    let write = format!("UPDATE {table} SET {column} = ?2 WHERE rowid = ?1");
    for (rowid, aad) in rows {
        let sealed: Option<Vec<u8>> = tx.query_row(&read, [rowid], |r| r.get(0)).map_err(sql(CTX))?;
        let Some(sealed) = sealed else { continue };
        let plain = old.open(what, &aad, &sealed)?;
        let again = new.seal(&aad, &plain)?;
        tx.execute(&write, params![rowid, again]).map_err(sql(CTX))?;
        done.values += 1;
        done.bytes += again.len() as u64;
    }
    Ok(())
}

impl Store {
    /// Re-seals every sealed value under `new` and uses it from then on. `old_id` and `new_id`
    /// (key ids, never keys) go into the `key.rotate` audit entry.
    pub fn reseal(&mut self, new: Sealer, old_id: &str, new_id: &str, now: i64) -> Result<Resealed, StoreError> {
        let check = self.audit().verify_audit()?;
        if let Some(seq) = check.broken_at {
            return Err(StoreError::Damaged(format!(
                "the audit chain is broken at entry {seq}; rotating the key would re-hash it and hide that, so \
                 nothing was changed"
            )));
        }
        let mut done = Resealed::default();
        let tx =
            self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
        let old = &self.sealer;
        for (key, aad) in META {
            let found = rows(&tx, &format!("SELECT rowid FROM meta WHERE key = '{key}'"), |_| Ok(aad.to_vec()))?;
            reseal_column(&tx, old, &new, "metadata", "meta", "value", found, &mut done)?;
        }
        // The TLS private key's associated data names the certificate and CA beside it.
        let pem = |k: &str| -> Result<Vec<u8>, StoreError> {
            tx.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                .optional()
                .map_err(sql(CTX))
                .map(Option::unwrap_or_default)
        };
        let tls_aad = super::credentials::tls_key_aad(&pem("tls_cert")?, &pem("tls_ca")?);
        let found = rows(&tx, "SELECT rowid FROM meta WHERE key = 'tls_key'", |_| Ok(tls_aad.clone()))?;
        reseal_column(&tx, old, &new, "metadata", "meta", "value", found, &mut done)?;
        let id_aad = |f: fn(&str) -> Vec<u8>| move |r: &rusqlite::Row<'_>| Ok(f(&r.get::<_, String>(1)?));
        let cards = rows(&tx, "SELECT sid, id FROM sessions", id_aad(card_aad))?;
        reseal_column(&tx, old, &new, "session card", "sessions", "card", cards, &mut done)?;
        let changes =
            rows(&tx, "SELECT c.seq, s.id FROM doc_changes c JOIN sessions s ON s.sid = c.sid", id_aad(change_aad))?;
        reseal_column(&tx, old, &new, "document change", "doc_changes", "sealed", changes, &mut done)?;
        let snaps = rows(
            &tx,
            "SELECT d.sid, s.id FROM doc_snapshots d JOIN sessions s ON s.sid = d.sid",
            id_aad(snapshot_aad),
        )?;
        reseal_column(&tx, old, &new, "snapshot", "doc_snapshots", "sealed", snaps, &mut done)?;
        let chunks = rows(&tx, "SELECT rowid, hash, idx FROM blob_chunks", |r| {
            Ok(chunk_aad(&r.get::<_, String>(1)?, r.get::<_, i64>(2)? as u64))
        })?;
        reseal_column(&tx, old, &new, "photo chunk", "blob_chunks", "sealed", chunks, &mut done)?;
        let thumbs = rows(&tx, "SELECT rowid, hash FROM blobs WHERE thumbnail IS NOT NULL", id_aad(thumb_aad))?;
        reseal_column(&tx, old, &new, "thumbnail", "blobs", "thumbnail", thumbs, &mut done)?;
        // A secret that does not open as its person's (moved, or written by hand) signs no one
        // in: it is cleared rather than stop the rotation, and named in its entry.
        let mut cleared = Vec::new();
        let all: Vec<(i64, String, Vec<u8>)> = {
            let mut stmt = tx
                .prepare("SELECT id, name, role, registration FROM users WHERE secret IS NOT NULL")
                .map_err(sql(CTX))?;
            stmt.query_map([], |r| {
                let aad = super::people::secret_aad(
                    r.get(0)?,
                    &r.get::<_, String>(1)?,
                    &r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?.as_deref(),
                );
                Ok((r.get(0)?, r.get(1)?, aad))
            })
            .map_err(sql(CTX))?
            .collect::<Result<_, _>>()
            .map_err(sql(CTX))?
        };
        for (id, name, aad) in &all {
            let value: rusqlite::types::Value =
                tx.query_row("SELECT secret FROM users WHERE id = ?1", [id], |r| r.get(0)).map_err(sql(CTX))?;
            let opens = match &value {
                rusqlite::types::Value::Blob(sealed) => old.open("user secret", aad, sealed).is_ok(),
                _ => false,
            };
            if !opens {
                tx.execute("UPDATE users SET secret = NULL WHERE id = ?1", [id]).map_err(sql(CTX))?;
                cleared.push(name.clone());
            }
        }
        let secrets = rows(&tx, "SELECT id, name, role, registration FROM users WHERE typeof(secret) = 'blob'", |r| {
            Ok(super::people::secret_aad(
                r.get(0)?,
                &r.get::<_, String>(1)?,
                &r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?.as_deref(),
            ))
        })?;
        reseal_column(&tx, old, &new, "user secret", "users", "secret", secrets, &mut done)?;
        let dirs = rows(&tx, "SELECT rowid, icb FROM directory", id_aad(super::directory::aad))?;
        reseal_column(&tx, old, &new, "ICB directory", "directory", "sealed", dirs, &mut done)?;
        let details =
            rows(&tx, "SELECT seq FROM audit WHERE detail IS NOT NULL", |r| Ok(audit_aad(r.get::<_, i64>(0)? as u64)))?;
        reseal_column(&tx, old, &new, "audit detail", "audit", "detail", details, &mut done)?;

        // The chain again, over the re-sealed details; the old head goes into the new entry.
        let entries: Vec<AuditRow> = {
            let mut stmt =
                tx.prepare("SELECT seq, at_ms, node, action, sid, detail FROM audit ORDER BY seq").map_err(sql(CTX))?;
            stmt.query_map([], AuditRow::from_row).map_err(sql(CTX))?.collect::<Result<_, _>>().map_err(sql(CTX))?
        };
        let old_head: Option<Vec<u8>> =
            tx.query_row("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).map_err(sql(CTX)).ok();
        let mut prev = [0u8; 32].to_vec();
        for row in &entries {
            let hash = row.hash(&prev);
            tx.execute("UPDATE audit SET hash = ?2 WHERE seq = ?1", params![row.seq as i64, hash]).map_err(sql(CTX))?;
            prev = hash;
            done.audit_entries += 1;
        }
        let detail = serde_json::json!({
            "old_key_id": old_id,
            "new_key_id": new_id,
            "values_resealed": done.values,
            "previous_chain_head": old_head.map(hex::encode),
            "pins_cleared": cleared,
        });
        done.pins_cleared = cleared;
        append_audit(&tx, &new, &self.node, now, "key.rotate", None, by(&self.acting, Some(detail)))?;
        tx.commit().map_err(sql("committing the new key"))?;
        self.sealer = new;
        Ok(done)
    }
}

/// Whether the store at `path` is sealed under `sealer` (its key check opens), without
/// opening it as a store: how a rotation interrupted by a crash finds which key won.
pub fn sealed_under(path: &std::path::Path, sealer: &Sealer) -> Result<bool, StoreError> {
    let conn = rusqlite::Connection::open(path).map_err(sql("opening the database"))?;
    let sealed: Vec<u8> =
        conn.query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| r.get(0)).map_err(sql(CTX))?;
    Ok(sealer.open("key check", b"meta", &sealed).is_ok())
}
