//! The audit chain: who did what, hash-linked, and its check.

use std::ops::{Deref, DerefMut};

use super::*;

/// The audit chain: who is acting, what was viewed, and the chain's check and latest entries.
/// Reached through [`Store::audit`] and [`Store::audit_mut`].
#[derive(Debug)]
pub struct Audit<S>(pub(super) S);

impl<S: Deref<Target = Store>> Audit<S> {
    /// Walks the audit chain and reports the first broken link: an entry edited or taken out
    /// (its hash or position does not follow), a chain that ends short of its sealed head
    /// (entries cut off the end), a chain without its head, or a second `audit.head` entry (the
    /// head is made once, when a store written before it is migrated; another means someone
    /// removed it and wound the schema back to have it made again).
    pub fn verify_audit(&self) -> Result<AuditCheck, StoreError> {
        let ctx = "reading the audit chain";
        // The chain and its head read from one snapshot: a daemon appending meanwhile is no
        // break.
        let tx = self.0.conn.unchecked_transaction().map_err(sql("starting a read"))?;
        let mut stmt = tx
            .prepare("SELECT seq, at_ms, node, action, sid, detail, hash FROM audit ORDER BY seq")
            .map_err(sql(ctx))?;
        let mut rows = stmt.query([]).map_err(sql(ctx))?;
        let mut prev = [0u8; 32].to_vec();
        let mut entries = 0;
        let mut heads_made = 0;
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let row = AuditRow {
                seq: r.get::<_, i64>(0).map_err(sql(ctx))? as u64,
                at_ms: r.get(1).map_err(sql(ctx))?,
                node: r.get(2).map_err(sql(ctx))?,
                action: r.get(3).map_err(sql(ctx))?,
                sid: r.get(4).map_err(sql(ctx))?,
                detail: r.get(5).map_err(sql(ctx))?,
            };
            let hash: Vec<u8> = r.get(6).map_err(sql(ctx))?;
            entries += 1;
            if row.seq != entries || hash != row.hash(&prev) {
                return Ok(AuditCheck { entries, broken_at: Some(row.seq) });
            }
            if row.action == HEAD_MADE {
                heads_made += 1;
                if heads_made > 1 {
                    return Ok(AuditCheck { entries, broken_at: Some(row.seq) });
                }
            }
            prev = hash;
        }
        drop(rows);
        drop(stmt);
        // The chain must end where the sealed head says: entries cut off its end leave a valid
        // chain, but a shorter one than the head vouches for.
        // An empty chain without a head is a store nothing audited has happened in yet. One
        // that holds a user, or a session made here, wrote entries for them (`user.add`,
        // `session.create`): its chain and head were deleted whole.
        let audited_before = || -> Result<bool, StoreError> {
            tx.row(
                "SELECT EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM sessions WHERE origin = ?1)",
                [&self.0.node],
                |r| r.get(0),
            )
            .map_err(sql(ctx))
        };
        let broken_at = match read_head(&tx, &self.0.sealer)? {
            Head::None if entries == 0 && !audited_before()? => None,
            Head::None | Head::Unreadable => Some(entries.max(1)),
            Head::At { seq, .. } if seq > entries => Some(entries + 1),
            Head::At { seq, .. } if seq < entries => Some(seq + 1),
            Head::At { hash, .. } if hash != prev => Some(entries),
            Head::At { .. } => None,
        };
        Ok(AuditCheck { entries, broken_at })
    }

    /// The latest `limit` audit entries, opened, oldest first.
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let ctx = "reading the audit chain";
        let mut stmt = self
            .0
            .conn
            .prepare(
                "SELECT a.seq, a.at_ms, a.node, a.action, s.id, a.detail FROM audit a
                 LEFT JOIN sessions s ON s.sid = a.sid ORDER BY a.seq DESC LIMIT ?1",
            )
            .map_err(sql(ctx))?;
        let mut by_sid = self.0.conn.prepare_cached("SELECT id FROM sessions WHERE sid = ?1").map_err(sql(ctx))?;
        let mut rows = stmt.query([limit as i64]).map_err(sql(ctx))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let seq = r.get::<_, i64>(0).map_err(sql(ctx))? as u64;
            let sealed: Option<Vec<u8>> = r.get(5).map_err(sql(ctx))?;
            let mut detail: Option<serde_json::Value> = match sealed {
                Some(s) => Some(
                    serde_json::from_slice(&self.0.sealer.open("audit detail", &audit_aad(seq), &s)?).map_err(json)?,
                ),
                None => None,
            };
            // Sessions named by row number (a list shown) are shown by id.
            if let Some(serde_json::Value::Object(m)) = detail.as_mut()
                && let Some(serde_json::Value::Array(sids)) = m.remove("sids")
            {
                let mut ids = Vec::with_capacity(sids.len());
                for sid in sids {
                    let id: Option<String> = match sid.as_i64() {
                        Some(sid) => by_sid.query_row([sid], |r| r.get(0)).optional().map_err(sql(ctx))?,
                        None => None,
                    };
                    ids.push(id.map_or(serde_json::Value::Null, serde_json::Value::String));
                }
                m.insert("sessions".into(), serde_json::Value::Array(ids));
            }
            out.push(AuditEntry {
                seq,
                at_ms: r.get(1).map_err(sql(ctx))?,
                node: r.get(2).map_err(sql(ctx))?,
                action: r.get(3).map_err(sql(ctx))?,
                session: r.get(4).map_err(sql(ctx))?,
                detail,
            });
        }
        out.reverse();
        Ok(out)
    }
}

impl<S: Deref<Target = Store>> Audit<S> {
    /// The person who asked for `call` in session `id`, or answered it, through this node's
    /// local API: the person the audit chain names in the escalation or the answer (the newest
    /// such entry among the session's last few). `None` if a node acted with no person (the
    /// command line, a desk answering by itself).
    pub fn call_person(&self, id: SessionId, call: &str) -> Result<Option<i64>, StoreError> {
        let ctx = "reading who is on a call";
        let mut stmt = self
            .0
            .conn
            .prepare(
                "SELECT a.seq, a.detail FROM audit a JOIN sessions s ON s.sid = a.sid
                 WHERE s.id = ?1 AND a.action IN ('call.escalate', 'call.answer')
                 ORDER BY a.seq DESC LIMIT 64",
            )
            .map_err(sql(ctx))?;
        let mut rows = stmt.query([id.to_string()]).map_err(sql(ctx))?;
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let seq = r.get::<_, i64>(0).map_err(sql(ctx))? as u64;
            let Some(sealed) = r.get::<_, Option<Vec<u8>>>(1).map_err(sql(ctx))? else { continue };
            let detail: serde_json::Value =
                serde_json::from_slice(&self.0.sealer.open("audit detail", &audit_aad(seq), &sealed)?).map_err(json)?;
            if detail["call"].as_str() == Some(call) {
                return Ok(detail["by"]["id"].as_i64());
            }
        }
        Ok(None)
    }
}

impl<S: Deref<Target = Store>> Audit<S> {
    /// The newest entry's number (0: none yet).
    pub fn head_seq(&self) -> Result<u64, StoreError> {
        head_seq(&self.0.conn)
    }

    /// This store's audit chain id (made with the store at schema 12, kept by its backups).
    pub fn chain_id(&self) -> Result<u64, StoreError> {
        chain_id(&self.0.conn)
    }

    /// What `peer` last told of its audit chain: the chain, and the furthest end of it told.
    pub fn their_head(&self, peer: &str) -> Result<(u64, u64), StoreError> {
        let row: Option<(i64, i64)> = self
            .0
            .conn
            .row("SELECT their_chain, their_head FROM audit_anchors WHERE peer = ?1", [peer], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(sql("reading audit anchors"))?;
        Ok(row.map_or((0, 0), |(c, h)| (c as u64, h as u64)))
    }

    /// The hubs that had seen this node's chain longer than it was when they next spoke.
    pub fn losses(&self) -> Result<Vec<AuditLoss>, StoreError> {
        let ctx = "reading audit anchors";
        let mut stmt = self
            .0
            .conn
            .prepare_cached("SELECT peer, lost FROM audit_anchors WHERE lost > 0 ORDER BY peer")
            .map_err(sql(ctx))?;
        stmt.query_map([], |r| Ok(AuditLoss { peer: r.get(0)?, seen: r.get::<_, i64>(1)? as u64 }))
            .map_err(sql(ctx))?
            .collect::<Result<_, _>>()
            .map_err(sql(ctx))
    }
}

fn head_seq(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    let seq: i64 = conn
        .row("SELECT COALESCE(MAX(seq), 0) FROM audit", [], |r| r.get(0))
        .map_err(sql("reading the audit chain"))?;
    Ok(seq as u64)
}

fn chain_id(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    let id: Option<Vec<u8>> = conn
        .row("SELECT value FROM meta WHERE key = 'audit_chain'", [], |r| r.get(0))
        .optional()
        .map_err(sql("reading the audit chain id"))?;
    Ok(id.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map_or(0, u64::from_be_bytes))
}

/// What a [`Audit::note_audit_head`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadsFound {
    /// This node's chain is shorter than the hub had seen (recorded as `audit.behind`).
    pub ours_cut: bool,
    /// The peer's chain is shorter than it had told before (recorded as `peer.audit_behind`).
    pub theirs_cut: bool,
}

impl<S: DerefMut<Target = Store>> Audit<S> {
    /// A peer's [`sync_protocol::wire::Frame::AuditHead`].
    /// - Its chain: the furthest end told is kept (never lowered, so that putting an older
    ///   copy back twice is seen twice); an end before it is a loss on the peer, recorded here
    ///   as `peer.audit_behind` once for each end it had reached. Another chain (a node set up
    ///   anew under the name) starts afresh.
    /// - Ours: from a hub (`believed`), an end of this very chain past where it ends now means
    ///   entries were lost here since (a restore from a backup, or a chain cut back): recorded
    ///   as `audit.behind`, once for each end a hub saw, and in `outpost status`.
    pub fn note_audit_head(
        &mut self,
        peer: &str,
        heads: sync_protocol::engine::AuditHeads,
        believed: bool,
        now: i64,
    ) -> Result<HeadsFound, StoreError> {
        let store = &mut *self.0;
        let ctx = "recording an audit anchor";
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql(ctx))?;
        let (my_chain, my_head) = (chain_id(&tx)?, head_seq(&tx)?);
        let row: Option<(i64, i64, i64, i64)> = tx
            .row("SELECT their_chain, their_head, their_lost, lost FROM audit_anchors WHERE peer = ?1", [peer], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .map_err(sql(ctx))?;
        let as_i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (chain, head) = (heads.chain as i64, as_i(heads.head));
        let (mut their_head, mut their_lost, mut lost) = (head, 0, 0);
        let mut found = HeadsFound::default();
        if let Some((c, h, tl, l)) = row {
            lost = l;
            if c == chain {
                their_head = h.max(head);
                their_lost = tl;
                if head < h && tl != h {
                    found.theirs_cut = true;
                    their_lost = h;
                    let detail = serde_json::json!({ "peer": peer, "seen": h, "head": head });
                    append_audit(&tx, &store.sealer, &store.node, now, "peer.audit_behind", None, Some(detail))?;
                }
            }
        }
        let seen = as_i(heads.seen);
        if believed && my_chain != 0 && heads.seen_chain == my_chain && seen > my_head as i64 && seen != lost {
            found.ours_cut = true;
            lost = seen;
            let detail = serde_json::json!({ "peer": peer, "seen": seen, "head": my_head });
            append_audit(&tx, &store.sealer, &store.node, now, "audit.behind", None, Some(detail))?;
        }
        tx.execute(
            "INSERT INTO audit_anchors (peer, their_chain, their_head, their_lost, lost) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (peer) DO UPDATE SET their_chain = ?2, their_head = ?3, their_lost = ?4, lost = ?5",
            params![peer, chain, their_head, their_lost, lost],
        )
        .map_err(sql(ctx))?;
        tx.commit().map_err(sql(ctx))?;
        Ok(found)
    }
}

impl<S: DerefMut<Target = Store>> Audit<S> {
    /// The person acting through this store until cleared (the local API sets it around each
    /// request): named, with role and registration, in every audit entry written meanwhile.
    pub fn set_acting(&mut self, who: Option<&people::Person>) {
        self.0.acting = who.map(people::person_json);
    }

    /// Records an event of the node itself (no session) in the audit chain, with its detail.
    pub fn audit_event(&mut self, action: &'static str, detail: serde_json::Value, now: i64) -> Result<(), StoreError> {
        let store = &mut *self.0;
        let tx =
            store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
        append_audit(&tx, &store.sealer, &store.node, now, action, None, by(&store.acting, Some(detail)))?;
        tx.commit().map_err(sql("committing"))
    }

    /// Records in the audit chain that the person acting was shown these sessions' cards
    /// (`session.list`, with `via`). The sessions are named by their row numbers in this store
    /// (`sids`, as the chain's `sid` column names one session): a list of 500 costs about 3 KB,
    /// not 15 KB of ids; [`Audit::audit_tail`] shows them as ids again.
    pub fn audit_shown(&mut self, ids: &[SessionId], via: &'static str, now: i64) -> Result<(), StoreError> {
        let store = &mut *self.0;
        let tx =
            store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
        let sids =
            ids.iter().map(|id| session_row(&tx, &id.to_string()).map(|r| r.sid)).collect::<Result<Vec<_>, _>>()?;
        let detail = serde_json::json!({ "sids": sids, "via": via });
        append_audit(&tx, &store.sealer, &store.node, now, "session.list", None, by(&store.acting, Some(detail)))?;
        tx.commit().map_err(sql("committing"))
    }

    /// Records in the audit chain that a session was viewed or exported.
    pub fn audit_access(&mut self, id: SessionId, action: &'static str, now: i64) -> Result<(), StoreError> {
        let store = &mut *self.0;
        let tx =
            store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
        let row = session_row(&tx, &id.to_string())?;
        append_audit(&tx, &store.sealer, &store.node, now, action, Some(row.sid), by(&store.acting, None))?;
        tx.commit().map_err(sql("committing"))
    }
}

/// The fields of an audit entry that its hash covers.
pub(super) struct AuditRow {
    pub(super) seq: u64,
    pub(super) at_ms: i64,
    pub(super) node: String,
    pub(super) action: String,
    pub(super) sid: Option<i64>,
    pub(super) detail: Option<Vec<u8>>,
}

impl AuditRow {
    /// `hash = BLAKE3(domain || prev || seq || at || len-prefixed node, action || sid || sealed detail)`.
    pub(super) fn hash(&self, prev: &[u8]) -> Vec<u8> {
        let mut h = blake3::Hasher::new();
        h.update(b"outpost audit v1");
        h.update(prev);
        h.update(&self.seq.to_be_bytes());
        h.update(&self.at_ms.to_be_bytes());
        for field in [self.node.as_bytes(), self.action.as_bytes()] {
            h.update(&(field.len() as u64).to_be_bytes());
            h.update(field);
        }
        h.update(&self.sid.unwrap_or(-1).to_be_bytes());
        h.update(self.detail.as_deref().unwrap_or(&[]));
        h.finalize().as_bytes().to_vec()
    }
}

/// An audit entry's detail with the acting person, if any, as `by`.
pub(crate) fn by(acting: &Option<serde_json::Value>, detail: Option<serde_json::Value>) -> Option<serde_json::Value> {
    let Some(who) = acting else { return detail };
    match detail {
        Some(serde_json::Value::Object(mut m)) => {
            m.insert("by".into(), who.clone());
            Some(serde_json::Value::Object(m))
        }
        Some(other) => Some(serde_json::json!({ "by": who, "detail": other })),
        None => Some(serde_json::json!({ "by": who })),
    }
}

pub(crate) fn append_audit(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    node: &str,
    now: i64,
    action: &str,
    sid: Option<i64>,
    detail: Option<serde_json::Value>,
) -> Result<(), StoreError> {
    let mut tail = AuditTail::read(tx)?;
    tail.append(tx, sealer, NewEntry { node, at_ms: now, action, sid, detail })?;
    tail.seal(tx, sealer)
}

/// An audit entry to append: who wrote it, when, what, about which session, and the detail
/// (sealed when stored).
#[derive(Debug)]
pub(crate) struct NewEntry<'a> {
    pub(crate) node: &'a str,
    pub(crate) at_ms: i64,
    pub(crate) action: &'a str,
    pub(crate) sid: Option<i64>,
    pub(crate) detail: Option<serde_json::Value>,
}

/// The end of the audit chain while a transaction extends it: a transaction that appends many
/// entries (a sync storing a thousand sessions) reads the chain's end once and seals its head
/// once, before it commits ([`AuditTail::seal`]). While a tail is open, every entry of the
/// transaction goes through it: [`append_audit`] beside it would reuse its next number.
#[derive(Debug)]
pub(crate) struct AuditTail {
    seq: u64,
    hash: Vec<u8>,
    moved: bool,
}

impl AuditTail {
    /// The chain's end as the transaction sees it.
    pub(crate) fn read(tx: &Transaction<'_>) -> Result<AuditTail, StoreError> {
        let last: Option<(i64, Vec<u8>)> = tx
            .row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(sql("reading the audit chain"))?;
        Ok(match last {
            Some((s, h)) => AuditTail { seq: s as u64, hash: h, moved: false },
            None => AuditTail { seq: 0, hash: [0u8; 32].to_vec(), moved: false },
        })
    }

    /// Appends one entry after the end (the head is sealed by [`AuditTail::seal`]).
    pub(crate) fn append(
        &mut self,
        tx: &Transaction<'_>,
        sealer: &Sealer,
        entry: NewEntry<'_>,
    ) -> Result<(), StoreError> {
        let NewEntry { node, at_ms, action, sid, detail } = entry;
        let seq = self.seq + 1;
        let detail = match detail {
            Some(d) => Some(sealer.seal(&audit_aad(seq), &serde_json::to_vec(&d).map_err(json)?)?),
            None => None,
        };
        let row = AuditRow { seq, at_ms, node: node.to_string(), action: action.to_string(), sid, detail };
        let hash = row.hash(&self.hash);
        tx.exec(
            "INSERT INTO audit (seq, at_ms, node, action, sid, detail, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![row.seq as i64, row.at_ms, row.node, row.action, row.sid, row.detail, hash],
        )
        .map_err(sql("appending to the audit chain"))?;
        self.seq = seq;
        self.hash = hash;
        self.moved = true;
        Ok(())
    }

    /// Seals the chain's head over the last entry appended (nothing when none was): must come
    /// before the transaction commits.
    pub(crate) fn seal(self, tx: &Transaction<'_>, sealer: &Sealer) -> Result<(), StoreError> {
        if self.moved { write_head(tx, sealer, self.seq, &self.hash) } else { Ok(()) }
    }
}

/// Associated data of the sealed chain head.
pub(super) const AUDIT_HEAD_AAD: &[u8] = b"outpost/audit-head/v1";

/// The action of the entry that gives a chain written before schema 8 its sealed head.
const HEAD_MADE: &str = "audit.head";

/// Schema 8's step: a chain written before the head existed gets one, in an `audit.head` entry
/// naming the last entry it found (so the chain itself records from where the head vouches).
pub(super) fn seal_existing_chain(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    node: &str,
    now: i64,
) -> Result<(), StoreError> {
    if !matches!(read_head(tx, sealer)?, Head::None) {
        return Ok(());
    }
    let last: Option<i64> =
        tx.row("SELECT max(seq) FROM audit", [], |r| r.get(0)).map_err(sql("reading the audit chain"))?;
    let Some(last) = last else { return Ok(()) };
    append_audit(tx, sealer, node, now, HEAD_MADE, None, Some(serde_json::json!({ "missing_after": last })))
}

/// What the sealed head of the audit chain says.
enum Head {
    /// No head is recorded.
    None,
    /// A head that does not open under this node's key: altered.
    Unreadable,
    /// The last entry's position and hash.
    At { seq: u64, hash: Vec<u8> },
}

fn read_head(conn: &rusqlite::Connection, sealer: &Sealer) -> Result<Head, StoreError> {
    let sealed: Option<Vec<u8>> = conn
        .row("SELECT value FROM meta WHERE key = 'audit_head'", [], |r| r.get(0))
        .optional()
        .map_err(sql("reading the audit chain's head"))?;
    let Some(sealed) = sealed else { return Ok(Head::None) };
    let Ok(plain) = sealer.open("audit head", AUDIT_HEAD_AAD, &sealed) else { return Ok(Head::Unreadable) };
    match plain.split_first_chunk::<8>() {
        Some((seq, hash)) => Ok(Head::At { seq: u64::from_be_bytes(*seq), hash: hash.to_vec() }),
        None => Ok(Head::Unreadable),
    }
}

/// Records the chain's last entry, sealed (so that no one without the node key can move it
/// back to vouch for a chain cut short), in the transaction that appends the entry.
fn write_head(tx: &Transaction<'_>, sealer: &Sealer, seq: u64, hash: &[u8]) -> Result<(), StoreError> {
    let sealed = sealer.seal(AUDIT_HEAD_AAD, &[seq.to_be_bytes().as_slice(), hash].concat())?;
    tx.exec(
        "INSERT INTO meta (key, value) VALUES ('audit_head', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [sealed],
    )
    .map_err(sql("recording the audit chain's head"))?;
    Ok(())
}

pub(super) fn audit_aad(seq: u64) -> Vec<u8> {
    [b"outpost/audit/v1/".as_slice(), &seq.to_be_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        Store::scratch("hub-1")
    }

    fn entries(n: u64) -> Vec<(&'static str, Option<serde_json::Value>)> {
        (0..n).map(|i| ("sync.receive", Some(serde_json::json!({ "from": format!("edge-{i}") })))).collect()
    }

    #[test]
    fn entries_appended_in_one_transaction_make_a_chain_that_verifies() {
        let (_d, mut store) = store();
        // One entry the usual way, then three through one tail, then one more the usual way.
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("tx");
        append_audit(&tx, &store.sealer, "hub-1", 7, "session.create", None, None).expect("append");
        tx.commit().expect("commit");
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("tx");
        let mut tail = AuditTail::read(&tx).expect("tail");
        for (action, detail) in entries(3) {
            tail.append(&tx, &store.sealer, NewEntry { node: "hub-1", at_ms: 8, action, sid: None, detail })
                .expect("append");
        }
        tail.seal(&tx, &store.sealer).expect("seal");
        tx.commit().expect("commit");
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("tx");
        append_audit(&tx, &store.sealer, "hub-1", 9, "session.view", None, None).expect("append");
        tx.commit().expect("commit");
        let check = store.audit().verify_audit().expect("verify");
        assert_eq!((check.entries, check.broken_at), (5, None), "the chain and its head hold");
        let tail = store.audit().audit_tail(10).expect("read back");
        let actions: Vec<&str> = tail.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions.iter().filter(|a| **a == "sync.receive").count(), 3, "{actions:?}");
    }

    #[test]
    fn a_chain_extended_without_sealing_its_head_reads_as_broken() {
        let (_d, mut store) = store();
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate).expect("tx");
        let mut tail = AuditTail::read(&tx).expect("tail");
        for (action, detail) in entries(2) {
            tail.append(&tx, &store.sealer, NewEntry { node: "hub-1", at_ms: 7, action, sid: None, detail })
                .expect("append");
        }
        tx.commit().expect("commit");
        let check = store.audit().verify_audit().expect("verify");
        assert!(check.broken_at.is_some(), "the head must vouch for the last entry: {check:?}");
    }
}
