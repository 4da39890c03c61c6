//! What the sync engine needs from the store: scoped views of the sessions, per-peer
//! knowledge, integration of received changes (validated, scoped, receipted, durable). Photo
//! transfer is in `transfer.rs`, the TLS identity and revocations in `credentials.rs`.

use std::ops::{Deref, DerefMut};

use automerge::ChangeHash;
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use sync_protocol::accept::{self, Kept, Taken};
use sync_protocol::authorship::{self, Signature};
use sync_protocol::engine::{Applied, Incoming, Knowledge, Outgoing};
use sync_protocol::recon::{self, Fingerprint, Item};
use sync_protocol::rules::{self, Admission};
use sync_protocol::scope::{self, DocMeta, PeerInfo, may_hold};
use sync_protocol::session::{SessionDoc, SessionId, Touched, ViewBasis};
use sync_protocol::vocab::{Role, ServiceLine};
use sync_protocol::wire::{DocId, Hash};

use super::{
    AuditTail, Cached, CachedSql, NewEntry, PeerSync, Store, StoreError, append_change, checkout, doc_heads,
    heads_blob, heads_from_blob, index_doc, insert_session_row, log_tail_since, maybe_compact, put_sigs, reading, sql,
};

/// A session as scope decisions and reconciliation see it (clear index columns only).
#[derive(Debug, Clone)]
pub struct ScopeRow {
    /// Row id.
    pub sid: i64,
    /// Session id.
    pub id: SessionId,
    /// Scope facts.
    pub meta: DocMeta,
    /// Sorted heads.
    pub heads: Vec<Hash>,
    /// Digest of the heads.
    pub digest: [u8; 16],
}

fn to_hashes(h: &[Hash]) -> Vec<ChangeHash> {
    h.iter().map(|x| ChangeHash::from(*x)).collect()
}

/// The scope facts of a row's (origin, ICB, service line) columns from `at` on, without shares.
fn group_meta(r: &rusqlite::Row<'_>, at: usize) -> Result<DocMeta, ()> {
    let line: String = r.get(at + 2).map_err(|_| ())?;
    Ok(DocMeta {
        origin: r.get(at).map_err(|_| ())?,
        icb: r.get(at + 1).map_err(|_| ())?,
        line: ServiceLine::parse(&line).map_err(|_| ())?,
        shares: Vec::new(),
    })
}

/// What decides which sessions a peer may see, as recorded beside its delta mark.
fn scope_key(peer: &PeerInfo) -> String {
    format!("{:?}|{:?}|{:?}", peer.role, peer.icb, peer.lines)
}

/// What the store knows of its peers and exchanges with them: scoped views of the sessions,
/// what each peer holds, the changes sent and received, and how each conversation went.
/// Reached through [`Store::peers`] and [`Store::peers_mut`].
#[derive(Debug)]
pub struct Peers<S>(pub(super) S);

impl<S: Deref<Target = Store>> Peers<S> {
    /// Every session with its scope facts and heads.
    pub fn scope_rows(&self) -> Result<Vec<ScopeRow>, StoreError> {
        let ctx = "reading the session index";
        let mut shares: std::collections::HashMap<i64, Vec<String>> = std::collections::HashMap::new();
        {
            let mut stmt = self.0.conn.prepare_cached("SELECT sid, node FROM session_shares").map_err(sql(ctx))?;
            let mut rows = stmt.query([]).map_err(sql(ctx))?;
            while let Some(r) = rows.next().map_err(sql(ctx))? {
                shares.entry(r.get(0).map_err(sql(ctx))?).or_default().push(r.get(1).map_err(sql(ctx))?);
            }
        }
        let mut stmt = self
            .0
            .conn
            .prepare_cached("SELECT sid, id, origin, icb, service_line, heads, digest FROM sessions ORDER BY id")
            .map_err(sql(ctx))?;
        let mut rows = stmt.query([]).map_err(sql(ctx))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let sid: i64 = r.get(0).map_err(sql(ctx))?;
            let id: String = r.get(1).map_err(sql(ctx))?;
            let line: String = r.get(4).map_err(sql(ctx))?;
            let heads: Vec<u8> = r.get(5).map_err(sql(ctx))?;
            let digest: Vec<u8> = r.get(6).map_err(sql(ctx))?;
            let damaged = || StoreError::Damaged(format!("session {id} has a damaged index row"));
            out.push(ScopeRow {
                sid,
                id: id.parse().map_err(|_| damaged())?,
                meta: DocMeta {
                    origin: r.get(2).map_err(sql(ctx))?,
                    icb: r.get(3).map_err(sql(ctx))?,
                    line: ServiceLine::parse(&line).map_err(|_| damaged())?,
                    shares: shares.remove(&sid).unwrap_or_default(),
                },
                heads: heads_from_blob(&heads),
                digest: digest.try_into().map_err(|_| damaged())?,
            });
        }
        Ok(out)
    }

    /// The scope row of one session.
    pub fn scope_row(&self, id: &DocId) -> Result<Option<ScopeRow>, StoreError> {
        let key = SessionId::from_bytes(*id).to_string();
        let ctx = "reading the session index";
        let row = self
            .0
            .conn
            .row("SELECT sid, origin, icb, service_line, heads, digest FROM sessions WHERE id = ?1", [&key], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                ))
            })
            .optional()
            .map_err(sql(ctx))?;
        let Some((sid, origin, icb, line, heads, digest)) = row else { return Ok(None) };
        let damaged = || StoreError::Damaged(format!("session {key} has a damaged index row"));
        let mut stmt =
            self.0.conn.prepare_cached("SELECT node FROM session_shares WHERE sid = ?1").map_err(sql(ctx))?;
        let shares = stmt
            .query_map([sid], |r| r.get(0))
            .map_err(sql(ctx))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(sql(ctx))?;
        Ok(Some(ScopeRow {
            sid,
            id: SessionId::from_bytes(*id),
            meta: DocMeta { origin, icb, line: ServiceLine::parse(&line).map_err(|_| damaged())?, shares },
            heads: heads_from_blob(&heads),
            digest: digest.try_into().map_err(|_| damaged())?,
        }))
    }

    /// The row id and heads of a session, if held and the peer may see it: one indexed read,
    /// and a look at the shares only when the peer's role does not already give it the session.
    pub fn visible_row(&self, peer: &PeerInfo, id: &DocId) -> Result<Option<(i64, Vec<Hash>)>, StoreError> {
        let key = SessionId::from_bytes(*id).to_string();
        let ctx = "reading the session index";
        let row = self
            .0
            .conn
            .row("SELECT sid, origin, icb, service_line, heads FROM sessions WHERE id = ?1", [&key], |r| {
                Ok((r.get::<_, i64>(0)?, group_meta(r, 1), r.get::<_, Vec<u8>>(4)?))
            })
            .optional()
            .map_err(sql(ctx))?;
        let Some((sid, meta, heads)) = row else { return Ok(None) };
        let meta = meta.map_err(|_| StoreError::Damaged(format!("session {key} has a damaged index row")))?;
        if may_hold(peer, &meta) || self.0.shared_with(sid, &peer.name)? {
            Ok(Some((sid, heads_from_blob(&heads))))
        } else {
            Ok(None)
        }
    }

    /// Items the peer may see, sorted by id.
    pub fn items_for(&self, peer: &PeerInfo) -> Result<Vec<Item>, StoreError> {
        Ok(self
            .scope_rows()?
            .into_iter()
            .filter(|r| may_hold(peer, &r.meta))
            .map(|r| Item { id: r.id.to_bytes(), digest: r.digest })
            .collect())
    }

    /// The number and fingerprint of the sessions the peer may see, from the per-group sums
    /// (origin, ICB, service line) the index keeps up to date, plus the sessions shared with the
    /// peer outside its groups: no session is read that is not shared.
    pub fn summary_for(&self, peer: &PeerInfo) -> Result<(u64, Fingerprint), StoreError> {
        let ctx = "reading the reconciliation sums";
        let damaged = || StoreError::Damaged("a reconciliation sum is damaged".into());
        let mut count = 0u64;
        let mut fp = Fingerprint::default();
        {
            let mut stmt =
                self.0.conn.prepare_cached("SELECT origin, icb, line, n, fp FROM fp_groups").map_err(sql(ctx))?;
            let mut rows = stmt.query([]).map_err(sql(ctx))?;
            while let Some(r) = rows.next().map_err(sql(ctx))? {
                if may_hold(peer, &group_meta(r, 0).map_err(|_| damaged())?) {
                    let n: i64 = r.get(3).map_err(sql(ctx))?;
                    let sum: Vec<u8> = r.get(4).map_err(sql(ctx))?;
                    count = count.wrapping_add(n as u64);
                    fp = fp.add(&Fingerprint::from_bytes(&sum.try_into().map_err(|_| damaged())?));
                }
            }
        }
        let mut stmt = self
            .0
            .conn
            .prepare_cached(
                "SELECT s.id, s.origin, s.icb, s.service_line, s.digest FROM session_shares h
                 JOIN sessions s ON s.sid = h.sid WHERE h.node = ?1 AND length(s.digest) = 16",
            )
            .map_err(sql(ctx))?;
        let mut rows = stmt.query([&peer.name]).map_err(sql(ctx))?;
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let id: String = r.get(0).map_err(sql(ctx))?;
            if may_hold(peer, &group_meta(r, 1).map_err(|_| damaged())?) {
                continue; // counted with its group
            }
            let digest: Vec<u8> = r.get(4).map_err(sql(ctx))?;
            let id: SessionId = id.parse().map_err(|_| damaged())?;
            count += 1;
            fp = fp
                .add(&Fingerprint::of(&Item { id: id.to_bytes(), digest: digest.try_into().map_err(|_| damaged())? }));
        }
        Ok((count, fp))
    }

    /// Whether this node has stored knowledge of the peer.
    pub fn knows_peer(&self, peer: &PeerInfo) -> Result<bool, StoreError> {
        self.0
            .conn
            .row("SELECT EXISTS (SELECT 1 FROM peer_docs WHERE peer = ?1)", [&peer.name], |r| r.get(0))
            .map_err(sql("reading peer state"))
    }

    /// What the peer is known to hold of a document.
    pub fn knowledge(&self, peer: &PeerInfo, id: &DocId) -> Result<Option<Knowledge>, StoreError> {
        let key = SessionId::from_bytes(*id).to_string();
        self.0.conn
            .row(
                "SELECT heads, shared FROM peer_docs WHERE peer = ?1 AND sid = (SELECT sid FROM sessions WHERE id = ?2)",
                params![peer.name, key],
                super::knowledge_row,
            )
            .optional()
            .map_err(sql("reading peer state"))
    }

    /// Peers that have confirmed holding some version of a session (their heads as last told).
    pub fn holders_of(&self, id: &DocId) -> Result<Vec<String>, StoreError> {
        let key = SessionId::from_bytes(*id).to_string();
        let ctx = "reading peer state";
        let mut stmt = self
            .0
            .conn
            .prepare_cached(
                "SELECT peer FROM peer_docs WHERE sid = (SELECT sid FROM sessions WHERE id = ?1) AND length(heads) > 0",
            )
            .map_err(sql(ctx))?;
        stmt.query_map([&key], |r| r.get(0)).map_err(sql(ctx))?.collect::<Result<_, _>>().map_err(sql(ctx))
    }

    /// Our heads of a document, if we hold it.
    pub fn heads_of(&self, id: &DocId) -> Result<Option<Vec<Hash>>, StoreError> {
        Ok(self.scope_row(id)?.map(|r| r.heads))
    }

    /// Sessions whose documents changed after log position `seq`, and the newest position.
    pub fn changed_since(&self, seq: i64) -> Result<(Vec<DocId>, i64), StoreError> {
        let ctx = "reading recent changes";
        let mut stmt =
            self.0.conn.prepare_cached("SELECT id, head_seq FROM sessions WHERE head_seq > ?1").map_err(sql(ctx))?;
        let mut rows = stmt.query([seq]).map_err(sql(ctx))?;
        let mut ids = Vec::new();
        let mut top = seq;
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let id: String = r.get(0).map_err(sql(ctx))?;
            top = top.max(r.get(1).map_err(sql(ctx))?);
            if let Ok(s) = id.parse::<SessionId>() {
                ids.push(s.to_bytes());
            }
        }
        // The ICB directory draws its positions from the same sequence.
        let mut stmt = self.0.conn.prepare_cached("SELECT icb, seq FROM directory WHERE seq > ?1").map_err(sql(ctx))?;
        let mut rows = stmt.query([seq]).map_err(sql(ctx))?;
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let icb: String = r.get(0).map_err(sql(ctx))?;
            top = top.max(r.get(1).map_err(sql(ctx))?);
            ids.push(sync_protocol::directory::directory_id(&icb));
        }
        Ok((ids, top))
    }

    /// SQLite's data version: changes when another connection commits.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.0.conn.row("PRAGMA data_version", [], |r| r.get(0)).map_err(sql("polling for writes"))
    }

    /// What this node last knew of its syncs with each peer, by name.
    pub fn peer_syncs(&self) -> Result<Vec<PeerSync>, StoreError> {
        let ctx = "reading sync history";
        let mut stmt = self
            .0
            .conn
            .prepare_cached("SELECT peer, last_ok_ms, last_error, last_error_ms FROM peer_syncs ORDER BY peer")
            .map_err(sql(ctx))?;
        stmt.query_map([], |r| {
            let error: Option<String> = r.get(2)?;
            let error_ms: Option<i64> = r.get(3)?;
            Ok(PeerSync { peer: r.get(0)?, last_ok_ms: r.get(1)?, last_error: error_ms.zip(error) })
        })
        .map_err(sql(ctx))?
        .collect::<Result<_, _>>()
        .map_err(sql(ctx))
    }
}

impl<S: DerefMut<Target = Store>> Peers<S> {
    /// Documents the peer may see whose heads differ from what it last confirmed.
    ///
    /// Only sessions written after the peer's mark are read: every session the peer may see
    /// and last written at or before the mark was confirmed by the peer at our current heads.
    /// The mark moves up to just before the oldest session still differing; confirmations of
    /// other heads than ours move it back (`set_knowledge`), and a change of the peer's scope
    /// (a desk given another service line) starts it again from zero.
    pub fn delta_for(&mut self, peer: &PeerInfo) -> Result<Vec<(DocId, Vec<Hash>)>, StoreError> {
        let ctx = "reading peer state";
        let scope = scope_key(peer);
        let stored: Option<i64> = self
            .0
            .conn
            .row("SELECT mark FROM peer_marks WHERE peer = ?1 AND scope = ?2", [&peer.name, &scope], |r| r.get(0))
            .optional()
            .map_err(sql(ctx))?;
        let mark = stored.unwrap_or(0);
        let mut out = Vec::new();
        let mut lowest_differing: Option<i64> = None;
        let mut top = mark;
        {
            let mut stmt = self
                .0
                .conn
                .prepare_cached(
                    "SELECT s.sid, s.id, s.origin, s.icb, s.service_line, s.heads, s.digest, s.head_seq, p.digest
                     FROM sessions s LEFT JOIN peer_docs p ON p.peer = ?1 AND p.sid = s.sid
                     WHERE s.head_seq > ?2",
                )
                .map_err(sql(ctx))?;
            let mut rows = stmt.query(params![peer.name, mark]).map_err(sql(ctx))?;
            while let Some(r) = rows.next().map_err(sql(ctx))? {
                let sid: i64 = r.get(0).map_err(sql(ctx))?;
                let id: String = r.get(1).map_err(sql(ctx))?;
                let digest: Vec<u8> = r.get(6).map_err(sql(ctx))?;
                let seq: i64 = r.get(7).map_err(sql(ctx))?;
                let known: Option<Vec<u8>> = r.get(8).map_err(sql(ctx))?;
                top = top.max(seq);
                let damaged = || StoreError::Damaged(format!("session {id} has a damaged index row"));
                let meta = group_meta(r, 2).map_err(|_| damaged())?;
                if !may_hold(peer, &meta) && !self.0.shared_with(sid, &peer.name)? {
                    continue;
                }
                if known.as_deref() == Some(&digest[..]) {
                    continue;
                }
                lowest_differing = Some(lowest_differing.map_or(seq, |l| l.min(seq)));
                let heads: Vec<u8> = r.get(5).map_err(sql(ctx))?;
                out.push((id.parse::<SessionId>().map_err(|_| damaged())?.to_bytes(), heads_from_blob(&heads)));
            }
        }
        let new_mark = lowest_differing.map_or(top, |l| l - 1).max(mark);
        if stored != Some(new_mark) {
            self.0
                .conn
                .exec(
                    "INSERT INTO peer_marks (peer, scope, mark) VALUES (?1, ?2, ?3)
                     ON CONFLICT (peer) DO UPDATE SET scope = excluded.scope, mark = excluded.mark",
                    params![peer.name, scope, new_mark],
                )
                .map_err(sql("recording peer state"))?;
        }
        out.sort_by_key(|e| e.0);
        Ok(out)
    }

    /// Records how a conversation with `peer` went: `Ok` once everything either side may send
    /// has been sent and acknowledged, `Err` with why it failed.
    pub fn record_sync(&mut self, peer: &str, outcome: Result<(), &str>, now: i64) -> Result<(), StoreError> {
        let ctx = "recording a sync";
        bookkeeping(&self.0.conn, ctx, |conn| {
            match outcome {
                Ok(()) => conn.exec(
                    "INSERT INTO peer_syncs (peer, last_ok_ms) VALUES (?1, ?2)
                     ON CONFLICT (peer) DO UPDATE SET last_ok_ms = excluded.last_ok_ms",
                    params![peer, now],
                ),
                Err(why) => conn.exec(
                    "INSERT INTO peer_syncs (peer, last_error, last_error_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (peer) DO UPDATE SET last_error = excluded.last_error, last_error_ms = excluded.last_error_ms",
                    params![peer, why, now],
                ),
            }
            .map_err(sql(ctx))?;
            Ok(())
        })
    }

    /// Forgets what this node knew of a peer: the next conversation reconciles from scratch.
    pub fn forget_peer(&mut self, peer: &str) -> Result<u64, StoreError> {
        let tx = Transaction::new_unchecked(&self.0.conn, TransactionBehavior::Immediate)
            .map_err(sql("starting a write"))?;
        let n = tx.exec("DELETE FROM peer_docs WHERE peer = ?1", [peer]).map_err(sql("forgetting a peer"))?;
        let d = tx.exec("DELETE FROM peer_directory WHERE peer = ?1", [peer]).map_err(sql("forgetting a peer"))?;
        tx.exec("DELETE FROM peer_marks WHERE peer = ?1", [peer]).map_err(sql("forgetting a peer"))?;
        tx.commit().map_err(sql("committing"))?;
        Ok((n + d) as u64)
    }

    /// Records what a peer holds (one transaction for the batch).
    pub fn set_knowledge(&mut self, peer: &PeerInfo, updates: &[(DocId, Knowledge)]) -> Result<(), StoreError> {
        // What a peer says of a session it may not see is not recorded: it would make it look
        // like a holder. The index rows are read in one read transaction, not one per row.
        let rows = {
            let _read = reading(&self.0.conn)?;
            let mut rows = Vec::with_capacity(updates.len());
            for (id, k) in updates {
                if let Some((sid, ours)) = self.visible_row(peer, id)? {
                    rows.push((sid, k, holds_ours(&ours, k)));
                }
            }
            rows
        };
        // That a peer holds exactly what this node holds is bookkeeping: lost to a power cut,
        // the record before it (of no more of this node's history) stands until the next
        // reconnect learns it again. Any other record (a peer holding less than before: a hub
        // restored from an older copy) waits for the disk: a lost write must never leave the
        // node claiming more of the peer than it holds.
        if rows.iter().all(|(_, _, ours)| *ours) {
            bookkeeping(&self.0.conn, "recording peer state", |_| self.write_knowledge(peer, &rows))
        } else {
            self.write_knowledge(peer, &rows)
        }
    }

    fn write_knowledge(&self, peer: &PeerInfo, rows: &[(i64, &Knowledge, bool)]) -> Result<(), StoreError> {
        let tx = Transaction::new_unchecked(&self.0.conn, TransactionBehavior::Immediate)
            .map_err(sql("starting a write"))?;
        for &(sid, k, _) in rows {
            tx.exec(
                "INSERT INTO peer_docs (peer, sid, digest, heads, shared, hub) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (peer, sid) DO UPDATE SET digest = excluded.digest, heads = excluded.heads,
                 shared = excluded.shared, hub = excluded.hub",
                params![
                    peer.name,
                    sid,
                    recon::digest(&k.heads).to_vec(),
                    heads_blob(&k.heads),
                    heads_blob(&k.shared),
                    peer.role == sync_protocol::vocab::Role::Hub
                ],
            )
            .map_err(sql("recording peer state"))?;
            // A confirmation of other heads than ours: the delta must look at this session again.
            tx.exec(
                "UPDATE peer_marks SET mark = min(mark, (SELECT head_seq - 1 FROM sessions WHERE sid = ?2))
                 WHERE peer = ?1 AND (SELECT digest FROM sessions WHERE sid = ?2) IS NOT ?3",
                params![peer.name, sid, recon::digest(&k.heads).to_vec()],
            )
            .map_err(sql("recording peer state"))?;
        }
        tx.commit().map_err(sql("committing"))
    }

    /// Which of `hashes` are changes we hold of a document `peer` may see.
    pub fn known_hashes(&mut self, peer: &PeerInfo, id: &DocId, hashes: &[Hash]) -> Result<Vec<Hash>, StoreError> {
        let row = self.visible_row(peer, id)?;
        self.known_hashes_of(row, id, hashes)
    }

    /// [`Peers::known_hashes`] for a document whose [`Peers::visible_row`] for the peer the
    /// caller has just read (`None`: the peer may not see it).
    pub(crate) fn known_hashes_of(
        &mut self,
        row: Option<(i64, Vec<Hash>)>,
        id: &DocId,
        hashes: &[Hash],
    ) -> Result<Vec<Hash>, StoreError> {
        let sid = SessionId::from_bytes(*id);
        let Some((_, mine)) = row else { return Ok(Vec::new()) };
        // Answered without decoding the document where the index can: our own heads are held,
        // and a change with no signature recorded is held by no session here (every change is
        // stored with its signature, in one transaction). Were one held without, the peer
        // would send it again, and it would be found known on arrival.
        let mut known = Vec::new();
        let mut unsure = false;
        for h in hashes {
            if mine.contains(h) {
                known.push(*h);
            } else if self.0.identity().signature(&ChangeHash::from(*h))?.is_some() {
                unsure = true;
                break;
            }
        }
        if !unsure {
            return Ok(known);
        }
        self.0.with_doc(sid, |d| {
            let am = d.automerge();
            hashes.iter().filter(|h| am.get_change_meta_by_hash(&ChangeHash::from(**h)).is_some()).copied().collect()
        })
    }

    /// Our changes of a document `peer` may see that are not ancestors of `base` (every change
    /// when `base` is empty), with their signatures; `None` if the peer may not see it.
    pub fn changes_since(
        &mut self,
        peer: &PeerInfo,
        id: &DocId,
        base: &[Hash],
    ) -> Result<Option<Outgoing>, StoreError> {
        let visible = self.visible_row(peer, id)?.is_some();
        self.changes_of(visible, id, base)
    }

    /// [`Peers::changes_since`] for a document the caller has just found visible to the peer
    /// (or not) with [`Peers::visible_row`].
    pub(crate) fn changes_of(
        &mut self,
        visible: bool,
        id: &DocId,
        base: &[Hash],
    ) -> Result<Option<Outgoing>, StoreError> {
        if !visible {
            return Ok(None);
        }
        let base = to_hashes(base);
        let sid = SessionId::from_bytes(*id);
        // A document not decoded here (a fresh `outpost sync`) is not loaded only to send its
        // last few changes: they are read from its log when that holds all that is owed.
        let from_log = if self.0.cache.contains(&sid) {
            None
        } else {
            let store = &*self.0;
            let tx = reading(&store.conn)?;
            let changes = log_tail_since(&store.conn, &store.sealer, sid, &base)?;
            drop(tx);
            changes
        };
        let changes = match from_log {
            Some(changes) => changes,
            None => self.0.with_doc(sid, |d| d.changes_after(&base))?,
        };
        let total = changes.len();
        let out = authorship::outgoing(changes, |h| self.0.identity().signature(h))?;
        if out.sigs.len() < total {
            // None should exist: every write signs its changes in its own transaction.
            tracing::warn!(session = %SessionId::from_bytes(*id), "changes without a signature are held back");
        }
        Ok(Some(out))
    }

    /// Integrates received changes from `from`, in one durable transaction: each document's
    /// changes are checked ([`rules::admit`]: bounds, signatures, write rules), then the result
    /// (a session, its own id, in the scope of both sides) is stored with this node's receipts
    /// and the signatures, so that it can be relayed. Returns each document's outcome, and the
    /// documents stored with their index rows and new heads ([`Stored`]).
    pub fn apply_remote(
        &mut self,
        me: &PeerInfo,
        from: &PeerInfo,
        batch: &[Incoming],
        now: i64,
    ) -> Result<(Vec<Applied>, Vec<Stored>), StoreError> {
        let store = &mut *self.0;
        // Every document's changes are decoded first, before the write lock is taken, so that
        // the batch's signatures are checked together (a fifth of the cost of checking each in
        // turn): those of the documents the step's work budget can take, by their operations.
        // A document past it is refused as busy below, or, if documents before it held changes
        // already here (which do not count), has its signatures checked one at a time.
        let decoded: Vec<Result<rules::Decoded, rules::Refusal>> =
            batch.iter().map(|inc| rules::decode(&inc.bytes, &inc.sigs, &store.limits)).collect();
        let mut budget = 0u64;
        let signed: Vec<authorship::SignedHash> = decoded
            .iter()
            .flatten()
            .take_while(|d| {
                let fits = budget < store.limits.max_batch_ops;
                budget = budget.saturating_add(d.ops());
                fits
            })
            .flat_map(|d| d.signed())
            .collect();
        let verified = store.roster.verify_batch(&signed);
        // A revoked member's changes not held here yet may be a thief's, written since: taken
        // only from a hub (a hub refuses them from anyone else once it knows, so what it sends
        // on it held before, or took from another hub; a hub restored from a backup, or a hub
        // of another ICB, takes back the member's earlier changes from its fellow hubs).
        let revoked = if from.role == Role::Hub { Default::default() } else { store.revoked_members()? };
        let tx =
            store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
        let mut out = Vec::new();
        let mut changed = Vec::new();
        // Documents stored by this batch: cached once it is committed, never before (a batch
        // that fails rolls back, and a cached copy would hold changes the disk does not).
        let mut stored: Vec<(SessionId, Cached)> = Vec::new();
        let mut spent = 0u64;
        // Each stored session is audited; the chain's head is sealed once, before the commit.
        let mut audit: Option<AuditTail> = None;
        for (inc, decoded) in batch.iter().zip(decoded) {
            let id = &inc.doc;
            if spent >= store.limits.max_batch_ops {
                out.push(Applied::Refused { reason: rules::Refusal::Busy { spent }.to_string() });
                continue;
            }
            let sid = SessionId::from_bytes(*id);
            let mut existing = match checkout(&mut store.cache, &tx, &store.sealer, &store.actor, sid) {
                Ok(cached) => Some(cached),
                Err(StoreError::NoSuchSession(_)) => None,
                Err(e) => return Err(e),
            };
            let before = existing.as_mut().map(|c| (c.sid, doc_heads(&mut c.doc)));
            // The view the reading that accepted the held version found, with the write rules'
            // facts (if its heads are unchanged since): the rules start from those facts, and
            // only what the new changes write is read again.
            let mut basis = existing.as_mut().and_then(|c| {
                let heads = c.doc.heads();
                c.basis.take().filter(|b| b.heads() == heads)
            });
            let mut touched = Touched::default();
            let admitted = match decoded {
                Err(e) => Err(e),
                Ok(d) => match existing.as_mut() {
                    Some(c) => rules::admit_decoded_with(
                        c.doc.automerge(),
                        d,
                        &store.roster,
                        &store.limits,
                        &verified,
                        basis.as_ref().and_then(ViewBasis::facts),
                        Some(&mut touched),
                    ),
                    None => {
                        let mut empty = automerge::AutoCommit::new();
                        rules::admit_decoded(&mut empty, d, &store.roster, &store.limits, &verified)
                    }
                },
            };
            let admitted = match admitted {
                Ok(Admission::Ready(changes)) if !revoked.is_empty() => {
                    let by_revoked = changes
                        .iter()
                        .find(|(c, _)| authorship::prefix_of(c.actor_id()).is_some_and(|p| revoked.contains(&p)));
                    match by_revoked {
                        Some((c, _)) => Err(rules::Refusal::RevokedAuthor {
                            change: c.hash().to_string().chars().take(12).collect(),
                            author: store
                                .roster
                                .author_of(c.actor_id())
                                .map_or_else(|| c.actor_id().to_hex_string(), |m| m.info.name.clone()),
                        }),
                        None => Ok(Admission::Ready(changes)),
                    }
                }
                other => other,
            };
            let outcome = match admitted {
                Err(e) => Applied::Refused { reason: e.to_string() },
                Ok(Admission::MissingDeps) => Applied::MissingDeps,
                Ok(Admission::Ready(changes)) if changes.is_empty() && before.is_some() => {
                    // Nothing new: the sender is told the heads held only if the session is in
                    // its scope, as a batch with changes would be (`accept::take`); an empty
                    // batch must not tell a peer out of scope that the session exists.
                    let meta = match (basis.as_ref(), existing.as_mut()) {
                        (Some(b), _) => Some(b.view().meta()),
                        (None, Some(c)) => c.doc.view().ok().map(|v| v.meta()),
                        (None, None) => None,
                    };
                    if meta.is_some_and(|m| scope::may_accept(me, from, &m)) {
                        Applied::Stored { heads: before.as_ref().map(|b| b.1.clone()).unwrap_or_default() }
                    } else {
                        let why = accept::Refusal::OutOfScope { me: me.name.clone(), from: from.name.clone() };
                        Applied::Refused { reason: why.to_string() }
                    }
                }
                Ok(Admission::Ready(admitted)) => {
                    let ops = admitted.iter().map(|(c, _)| c.len() as u64).sum::<u64>();
                    store.ops_admitted += ops;
                    spent += ops;
                    let sigs: Vec<(ChangeHash, Signature)> = admitted.iter().map(|(c, sig)| (c.hash(), *sig)).collect();
                    let changes: Vec<automerge::Change> = admitted.into_iter().map(|(c, _)| c).collect();
                    // Applied in place, not to a fork of the whole document: a document that
                    // is refused after this point is dropped from the cache, and read again
                    // from disk (where nothing of this batch is) when next needed.
                    let mut candidate = match existing.take() {
                        Some(c) => c.doc,
                        None => SessionDoc::empty(store.actor.clone()),
                    };
                    match candidate.apply_changes(changes) {
                        Err(e) => Applied::Refused { reason: e.to_string() },
                        Ok(()) => {
                            let prior = basis.take().map(|b| (b, std::mem::take(&mut touched)));
                            let ctx = Integration { me, from, sid, existing: before.clone(), sigs, now, prior };
                            let env = Env {
                                sealer: &store.sealer,
                                opts: &store.opts,
                                node: &store.node,
                                author: &store.author,
                                acting: &store.acting,
                            };
                            let (applied, cached) = integrate(&tx, &env, &mut audit, candidate, ctx)?;
                            if let Some(c) = cached {
                                if let Applied::Stored { heads } = &applied {
                                    changed.push(Stored { doc: *id, sid: c.sid, heads: heads.clone() });
                                }
                                stored.push((sid, c));
                            }
                            applied
                        }
                    }
                }
            };
            if let Some(mut c) = existing {
                // Nothing new was stored: the view read before still holds.
                c.basis = basis;
                store.cache.put(sid, c);
            }
            out.push(outcome);
        }
        if let Some(tail) = audit {
            tail.seal(&tx, &store.sealer)?;
        }
        tx.commit().map_err(sql("committing"))?;
        for (sid, c) in stored {
            store.cache.put(sid, c);
        }
        Ok((out, changed))
    }
}

impl Store {
    /// Whether the peer may hold the session with row id `sid`.
    pub(super) fn sid_visible(&self, sid: i64, peer: &PeerInfo) -> Result<bool, StoreError> {
        let meta = self
            .conn
            .row("SELECT origin, icb, service_line FROM sessions WHERE sid = ?1", [sid], |r| Ok(group_meta(r, 0)))
            .optional()
            .map_err(sql("reading the session index"))?;
        match meta {
            None => Ok(false),
            Some(meta) => {
                let meta =
                    meta.map_err(|_| StoreError::Damaged(format!("session row {sid} has a damaged index row")))?;
                Ok(may_hold(peer, &meta) || self.shared_with(sid, &peer.name)?)
            }
        }
    }

    fn shared_with(&self, sid: i64, node: &str) -> Result<bool, StoreError> {
        self.conn
            .row("SELECT EXISTS (SELECT 1 FROM session_shares WHERE sid = ?1 AND node = ?2)", params![sid, node], |r| {
                r.get(0)
            })
            .map_err(sql("reading the session index"))
    }
}

/// A document [`Peers::apply_remote`] stored: what the peer that sent it may now be told of
/// it without reading the index again (it holds the session, or it could not have sent it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The session.
    pub doc: DocId,
    /// Its index row.
    pub sid: i64,
    /// Its heads now, sorted.
    pub heads: Vec<Hash>,
}

/// Whether a record of what a peer holds says it holds exactly this node's heads `ours`.
fn holds_ours(ours: &[Hash], k: &Knowledge) -> bool {
    let mut theirs = k.heads.clone();
    theirs.sort();
    let mut ours = ours.to_vec();
    ours.sort();
    theirs == ours
}

/// Runs a write of bookkeeping (not a write anyone was told is safe) committed without waiting
/// for the disk: `synchronous=NORMAL` for its commits alone. A killed process keeps it (the
/// operating system has it); a power cut may lose it until the next write's commit, which makes
/// the log durable again, this write with it. Every later write waits for the disk again.
fn bookkeeping<T>(
    conn: &rusqlite::Connection,
    ctx: &'static str,
    write: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("PRAGMA synchronous=NORMAL").map_err(sql(ctx))?;
    let written = write(conn);
    let restored = conn.execute_batch("PRAGMA synchronous=FULL");
    let out = written?;
    restored.map_err(sql(ctx))?;
    Ok(out)
}

/// The audit chain's end for a transaction, read at its first entry.
fn tail<'t>(tx: &Transaction<'_>, audit: &'t mut Option<AuditTail>) -> Result<&'t mut AuditTail, StoreError> {
    let t = match audit.take() {
        Some(t) => t,
        None => AuditTail::read(tx)?,
    };
    Ok(audit.insert(t))
}

/// The parts of the store [`integrate`] uses beside the transaction.
struct Env<'a> {
    sealer: &'a crate::crypto::Sealer,
    opts: &'a super::StoreOptions,
    node: &'a str,
    author: &'a authorship::AuthorKey,
    /// Who the entries name: the account that ran a one-shot `outpost sync`; a daemon's own
    /// work names no one.
    acting: &'a Option<serde_json::Value>,
}

/// What [`integrate`] needs to know of one received document.
struct Integration<'a> {
    me: &'a PeerInfo,
    from: &'a PeerInfo,
    sid: SessionId,
    /// The row id and heads of the version held before, if any.
    existing: Option<(i64, Vec<Hash>)>,
    /// Signatures of the received changes.
    sigs: Vec<(ChangeHash, Signature)>,
    now: i64,
    /// The view of the version held before, and what the received changes write.
    prior: Option<(ViewBasis, Touched)>,
}

/// Checks a received version of a session (whose changes passed the write rules) and stores it
/// (inside the caller's transaction). Returns the outcome and, when stored, the new cached
/// document.
fn integrate(
    tx: &Transaction<'_>,
    env: &Env<'_>,
    audit: &mut Option<AuditTail>,
    mut candidate: SessionDoc,
    ctx: Integration<'_>,
) -> Result<(Applied, Option<Cached>), StoreError> {
    let Integration { me, from, sid, existing, sigs, now, prior } = ctx;
    let (sealer, opts, node) = (env.sealer, env.opts, env.node);
    // The node's acceptance rule, shared with the simulator's replica: this node's receipts
    // first (the document is read into a view once), then whether the result may be kept.
    let complete = |p: sync_protocol::session::PhotoRecord<'_>| {
        super::blobs::holds_photo_for(tx, p.hash, p.added_by, p.vouched).unwrap_or(false)
    };
    let kept = match accept::take_since(me, from, &sid.to_bytes(), &mut candidate, env.author, now, complete, prior) {
        Taken::Kept(kept) => *kept,
        Taken::MissingDeps => return Ok((Applied::MissingDeps, None)),
        Taken::Refused(why) => return Ok((Applied::Refused { reason: why.to_string() }, None)),
    };
    let Kept { mut view, own_sigs, offload, basis } = kept;
    // The receipts are written in the same transaction as what they acknowledge, signed.
    put_sigs(tx, sigs)?;
    put_sigs(tx, own_sigs)?;
    let key = sid.to_string();
    let (row_sid, log) = match existing {
        Some((row_sid, before)) => {
            let bytes = candidate.save_after(&to_hashes(&before));
            (row_sid, append_change(tx, sealer, row_sid, &key, &bytes)?)
        }
        None => {
            let row_sid = insert_session_row(tx, &key, &view, &[], "recording a received session")?;
            (row_sid, append_change(tx, sealer, row_sid, &key, &candidate.save())?)
        }
    };
    let viewer = super::documents::Viewer { hub: opts.hub };
    let counts = index_doc(tx, sealer, viewer, (&key, row_sid), &mut candidate, &mut view, Some(log))?;
    // An edge keeps no copy of a photo a hub has confirmed holding (a thumbnail stays).
    for hash in offload {
        let n = tx
            .exec("UPDATE blobs SET state = 'offloaded' WHERE hash = ?1 AND state = 'complete'", [&hash])
            .map_err(sql("offloading a photo"))?;
        if n > 0 {
            tx.exec("DELETE FROM blob_chunks WHERE hash = ?1", [&hash]).map_err(sql("offloading a photo"))?;
            let detail = super::audit::by(env.acting, Some(serde_json::json!({ "photo": hash })));
            let entry = NewEntry { node, at_ms: now, action: "photo.offload", sid: Some(row_sid), detail };
            tail(tx, audit)?.append(tx, sealer, entry)?;
        }
    }
    let detail = super::audit::by(env.acting, Some(serde_json::json!({ "from": from.name })));
    let entry = NewEntry { node, at_ms: now, action: "sync.receive", sid: Some(row_sid), detail };
    tail(tx, audit)?.append(tx, sealer, entry)?;
    let heads = doc_heads(&mut candidate);
    let mut cached = Cached { doc: candidate, sid: row_sid, upto: log.seq, basis: Some(basis) };
    maybe_compact(tx, sealer, opts, &key, &mut cached, counts)?;
    Ok((Applied::Stored { heads }, Some(cached)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(store: &Store) -> i64 {
        store.conn.row("PRAGMA synchronous", [], |r| r.get(0)).expect("pragma")
    }

    #[test]
    fn what_a_batch_stored_is_what_the_index_shows_its_sender() {
        use sync_protocol::vocab::{Role, Side};
        let (amb, hub_info) = (info("amb-1", Role::Edge, vec![]), info("hub-1", Role::Hub, vec![]));
        let ((_d1, mut edge), (_d2, mut hub)) = two_nodes(&amb, &hub_info);
        let ids: Vec<SessionId> = (1..=3).map(|n| edge.scratch_session(n)).collect();
        let batch: Vec<Incoming> = ids.iter().map(|id| owed(&mut edge, &hub_info, *id, &[])).collect();
        let (_, stored) = hub.peers_mut().apply_remote(&hub_info, &amb, &batch, T).expect("applied");
        assert_eq!(stored.len(), 3);
        for s in stored {
            let row = hub.peers().visible_row(&amb, &s.doc).expect("read");
            assert_eq!(row, Some((s.sid, s.heads)), "the sender sees the new session at its heads");
        }
        // A second batch: new messages in sessions the hub holds.
        let bases: Vec<Vec<Hash>> = ids.iter().map(|id| heads_of(&mut hub, *id)).collect();
        for id in &ids[..2] {
            edge.scratch_message(*id, "amb-1", Side::Requester, T + 1);
        }
        let next: Vec<Incoming> =
            ids[..2].iter().zip(&bases).map(|(id, b)| owed(&mut edge, &hub_info, *id, b)).collect();
        let (_, stored_next) = hub.peers_mut().apply_remote(&hub_info, &amb, &next, T + 1).expect("applied");
        assert_eq!(stored_next.len(), 2);
        for s in stored_next {
            let row = hub.peers().visible_row(&amb, &s.doc).expect("read");
            assert_eq!(row, Some((s.sid, s.heads)), "the sender sees the session at its new heads");
        }
    }

    #[test]
    fn a_batch_with_one_forged_signature_refuses_that_session_and_keeps_the_others() {
        use sync_protocol::vocab::Role;
        let (amb, hub_info) = (info("amb-1", Role::Edge, vec![]), info("hub-1", Role::Hub, vec![]));
        let ((_d1, mut edge), (_d2, mut hub)) = two_nodes(&amb, &hub_info);
        let ids: Vec<SessionId> = (1..=3).map(|n| edge.scratch_session(n)).collect();
        let mut batch: Vec<Incoming> = ids.iter().map(|id| owed(&mut edge, &hub_info, *id, &[])).collect();
        batch[1].sigs[0][40] ^= 1;
        let (applied, changed) = hub.peers_mut().apply_remote(&hub_info, &amb, &batch, T).expect("applied");
        assert!(matches!(applied[0], Applied::Stored { .. }), "{applied:?}");
        assert!(matches!(&applied[1], Applied::Refused { reason } if reason.contains("signature")), "{applied:?}");
        assert!(matches!(applied[2], Applied::Stored { .. }), "{applied:?}");
        assert_eq!(changed.iter().map(|c| c.doc).collect::<Vec<_>>(), vec![batch[0].doc, batch[2].doc]);
        assert_eq!(hub.sessions().session_count().expect("count"), 2);
    }

    const T: i64 = 1_796_360_400_000;

    fn info(name: &str, role: sync_protocol::vocab::Role, lines: Vec<ServiceLine>) -> PeerInfo {
        PeerInfo { name: name.into(), role, org: None, icb: Some("QHM".into()), lines }
    }

    /// Two scratch stores whose nodes know each other as fleet members.
    fn two_nodes(a: &PeerInfo, b: &PeerInfo) -> ((tempfile::TempDir, Store), (tempfile::TempDir, Store)) {
        use sync_protocol::authorship::Member;
        let (da, mut sa) = Store::scratch(&a.name);
        let (db, mut sb) = Store::scratch(&b.name);
        let (ka, kb) = (sa.identity().author_public(), sb.identity().author_public());
        sa.identity_mut().add_member(Member { info: b.clone(), key: kb }, b"c").expect("member");
        sb.identity_mut().add_member(Member { info: a.clone(), key: ka }, b"c").expect("member");
        ((da, sa), (db, sb))
    }

    /// What `from` owes `to` of session `id` past `base`, as one received document.
    fn owed(from: &mut Store, to: &PeerInfo, id: SessionId, base: &[Hash]) -> Incoming {
        let doc = id.to_bytes();
        let out = from.peers_mut().changes_since(to, &doc, base).expect("read").expect("visible");
        Incoming { doc, bytes: out.bytes, sigs: out.sigs }
    }

    fn heads_of(store: &mut Store, id: SessionId) -> Vec<Hash> {
        store.with_doc(id, |d| d.heads()).expect("heads").into_iter().map(Hash::from).collect()
    }

    #[test]
    fn a_stored_session_keeps_its_view_and_the_write_rules_facts_for_its_next_changes() {
        use sync_protocol::vocab::{Role, Side};
        let (amb, hub_info) = (info("amb-1", Role::Edge, vec![]), info("hub-1", Role::Hub, vec![]));
        let ((_d1, mut edge), (_d2, mut hub)) = two_nodes(&amb, &hub_info);
        let id = edge.scratch_session(1);
        let first = owed(&mut edge, &hub_info, id, &[]);
        let (applied, _) = hub.peers_mut().apply_remote(&hub_info, &amb, &[first], T).expect("applied");
        assert!(matches!(applied[0], Applied::Stored { .. }), "{applied:?}");
        // What the cache keeps, beside the document's own heads, facts and view.
        let kept = |hub: &mut Store| {
            let mut c = hub.cache.pop(&id).expect("cached");
            let basis = c.basis.clone().expect("a view kept");
            let truth =
                (c.doc.heads(), sync_protocol::rules::held_facts(c.doc.automerge()), c.doc.view().expect("view"));
            hub.cache.put(id, c);
            ((basis.heads().to_vec(), basis.facts().cloned(), basis.view().clone()), truth)
        };
        let ((heads, facts, view), (doc_heads, truth, doc_view)) = kept(&mut hub);
        assert_eq!((heads, facts), (doc_heads, Some(truth)), "the facts of the stored version, at its heads");
        assert_eq!(view, doc_view, "the view of the stored version");
        // The next messages start from them (test builds check the facts and each view updated
        // from what the changes wrote against the document's own) and keep the new version's.
        for n in 1..=3 {
            let base = heads_of(&mut hub, id);
            edge.scratch_message(id, "amb-1", Side::Requester, T + n);
            let next = owed(&mut edge, &hub_info, id, &base);
            let (applied, _) = hub.peers_mut().apply_remote(&hub_info, &amb, &[next], T + n).expect("applied");
            assert!(matches!(applied[0], Applied::Stored { .. }), "{applied:?}");
            let ((heads, facts, view), (doc_heads, truth, doc_view)) = kept(&mut hub);
            assert_eq!((heads, facts), (doc_heads, Some(truth)));
            assert_eq!(view, doc_view);
            assert_eq!(view.messages.len(), n as usize, "one message a round");
        }
    }

    #[test]
    fn a_batch_that_fails_part_way_leaves_nothing_of_it_in_memory() {
        use sync_protocol::vocab::{Role, Side};
        let (amb, hub_info) = (info("amb-1", Role::Edge, vec![]), info("hub-1", Role::Hub, vec![]));
        let ((_d1, mut edge), (_d2, mut hub)) = two_nodes(&amb, &hub_info);
        let (a, b) = (edge.scratch_session(1), edge.scratch_session(2));
        let first = [owed(&mut edge, &hub_info, a, &[]), owed(&mut edge, &hub_info, b, &[])];
        let (applied, _) = hub.peers_mut().apply_remote(&hub_info, &amb, &first, T).expect("first batch");
        assert!(applied.iter().all(|o| matches!(o, Applied::Stored { .. })), "{applied:?}");
        let (held_a, held_b) = (heads_of(&mut edge, a), heads_of(&mut edge, b));
        assert_eq!(heads_of(&mut hub, a), held_a);
        edge.scratch_message(a, "amb-1", Side::Requester, T + 1);
        edge.scratch_message(b, "amb-1", Side::Requester, T + 2);
        let second = [owed(&mut edge, &hub_info, a, &held_a), owed(&mut edge, &hub_info, b, &held_b)];
        // The hub's copy of the second session is damaged on disk: storing the batch fails
        // after the first session was integrated, and the whole batch rolls back.
        hub.conn
            .execute(
                "UPDATE doc_changes SET sealed = x'00' WHERE sid = (SELECT sid FROM sessions WHERE id = ?1)",
                [b.to_string()],
            )
            .expect("damage");
        hub.cache = super::super::DocCache::new(hub.opts.cache_bytes);
        assert!(
            hub.peers_mut().apply_remote(&hub_info, &amb, &second, T).is_err(),
            "a damaged session fails the batch"
        );
        assert_eq!(
            heads_of(&mut hub, a),
            held_a,
            "the first session as the disk holds it, without the rolled-back change"
        );
        // And a new batch stores it for real.
        let (applied, _) = hub.peers_mut().apply_remote(&hub_info, &amb, &second[..1], T).expect("again");
        assert!(matches!(applied[0], Applied::Stored { .. }), "{applied:?}");
        assert_eq!(heads_of(&mut hub, a), heads_of(&mut edge, a));
    }

    #[test]
    fn changes_owed_after_concurrent_edits_come_from_the_log_exactly_as_the_document_gives_them() {
        use sync_protocol::vocab::{Role, Side};
        let edge_info = info("amb-1", Role::Edge, vec![]);
        let desk_info = info("desk-1", Role::Desk, vec![ServiceLine::Dermatology]);
        let ((_d1, mut edge), (_d2, mut desk)) = two_nodes(&edge_info, &desk_info);
        let id = edge.scratch_session(1);
        let send = |from: &mut Store, to: &mut Store, from_info: &PeerInfo, to_info: &PeerInfo, base: &[Hash]| {
            let inc = owed(from, to_info, id, base);
            let (applied, _) = to.peers_mut().apply_remote(to_info, from_info, &[inc], T).expect("apply");
            assert!(matches!(applied[0], Applied::Stored { .. }), "{applied:?}");
        };
        let say = |store: &mut Store, who: &str, side, n: i64| store.scratch_message(id, who, side, T + n);
        let heads = |store: &mut Store| heads_of(store, id);
        send(&mut edge, &mut desk, &edge_info, &desk_info, &[]);
        let created = heads(&mut edge);
        // Both write at once, offline; the desk's reply reaches the edge; the edge writes again.
        say(&mut edge, "amb-1", Side::Requester, 1);
        say(&mut desk, "desk-1", Side::Responder, 2);
        let desk_heads = heads(&mut desk);
        send(&mut desk, &mut edge, &desk_info, &edge_info, &created);
        let merged = heads(&mut edge);
        say(&mut edge, "amb-1", Side::Requester, 3);
        say(&mut edge, "amb-1", Side::Requester, 4);
        let last = heads(&mut edge);
        let edge_only: Vec<Hash> = merged.iter().filter(|h| !desk_heads.contains(h)).copied().collect();
        let mut answered = Vec::new();
        for base in [created.clone(), desk_heads.clone(), merged.clone(), last.clone(), edge_only, Vec::new()] {
            let base = to_hashes(&base);
            let from_doc: Vec<ChangeHash> =
                edge.with_doc(id, |d| d.changes_after(&base)).expect("doc").iter().map(|c| c.hash()).collect();
            let from_log = log_tail_since(&edge.conn, &edge.sealer, id, &base).expect("read");
            answered.push(from_log.is_some());
            if let Some(changes) = from_log {
                let mut got: Vec<ChangeHash> = changes.iter().map(|c| c.hash()).collect();
                let mut want = from_doc.clone();
                got.sort();
                want.sort();
                assert_eq!(got, want, "base {base:?}");
            }
        }
        // Every base the last four rows account for answers from them (the edge's own first
        // message alone among them: what it owes is the desk's reply and what followed); the
        // empty base needs the creation, five rows back, so the whole document.
        assert_eq!(answered, [true, true, true, true, true, false]);
    }

    #[test]
    fn a_peer_holds_ours_only_with_exactly_our_heads_in_any_order() {
        use sync_protocol::engine::Knowledge;
        let (a, b, c) = (Hash([1; 32]), Hash([2; 32]), Hash([3; 32]));
        let k = |heads: Vec<Hash>| Knowledge { heads, shared: Vec::new() };
        assert!(holds_ours(&[a, b], &k(vec![b, a])));
        assert!(!holds_ours(&[a, b], &k(vec![a])), "less than ours");
        assert!(!holds_ours(&[a], &k(vec![a, c])), "more than ours");
        assert!(!holds_ours(&[a], &k(vec![c])), "other heads");
        assert!(holds_ours(&[], &k(vec![])));
    }

    #[test]
    fn bookkeeping_leaves_every_later_write_waiting_for_the_disk() {
        use sync_protocol::engine::Knowledge;
        use sync_protocol::vocab::Role;
        let (dir, mut store) = Store::scratch("edge-1");
        const FULL: i64 = 2;
        assert_eq!(synchronous(&store), FULL);
        store.peers_mut().record_sync("hub-1", Ok(()), 1_000).expect("ok recorded");
        assert_eq!(synchronous(&store), FULL, "after a sync recorded");
        store.peers_mut().record_sync("hub-1", Err("link down"), 2_000).expect("error recorded");
        assert_eq!(synchronous(&store), FULL, "after a failure recorded");
        // What a peer holds, recorded the same way; a refused record as well.
        let hub = info("hub-1", Role::Hub, vec![]);
        let id = store.scratch_session(1).to_bytes();
        let heads = store.peers().heads_of(&id).expect("read").expect("held");
        let k = Knowledge { heads: heads.clone(), shared: heads.clone() };
        store.peers_mut().set_knowledge(&hub, &[(id, k.clone())]).expect("recorded");
        assert_eq!(synchronous(&store), FULL, "after what the hub holds was recorded");
        assert_eq!(store.peers().knowledge(&hub, &id).expect("read"), Some(k.clone()));
        // A record of less than this node holds (a hub restored from an older copy) is written
        // the same, waiting for the disk.
        let less = Knowledge { heads: Vec::new(), shared: Vec::new() };
        assert!(holds_ours(&heads, &k) && !holds_ours(&heads, &less));
        store.peers_mut().set_knowledge(&hub, &[(id, less.clone())]).expect("recorded");
        assert_eq!(store.peers().knowledge(&hub, &id).expect("read"), Some(less));
        assert_eq!(synchronous(&store), FULL, "after a record of less");
        // Another process holds the write lock, and this one does not wait for it.
        let other = rusqlite::Connection::open(dir.path().join("t.db")).expect("second connection");
        let lock = Transaction::new_unchecked(&other, TransactionBehavior::Immediate).expect("lock");
        store.conn.busy_timeout(std::time::Duration::ZERO).expect("no wait");
        assert!(store.peers_mut().set_knowledge(&hub, &[(id, k)]).is_err(), "the write lock is held elsewhere");
        drop(lock);
        assert_eq!(synchronous(&store), FULL, "after a failed record");
        let syncs = store.peers().peer_syncs().expect("read back");
        assert_eq!(syncs.len(), 1);
        assert_eq!(syncs[0].last_ok_ms, Some(1_000));
        assert_eq!(syncs[0].last_error.as_ref().map(|(ms, why)| (*ms, why.as_str())), Some((2_000, "link down")));
    }
}
