//! The audit chain: who did what, hash-linked, and its check.

use std::ops::{Deref, DerefMut};

use sync_protocol::audit::{self, KeptHeads};

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
            .prepare("SELECT seq, at_ms, node, action, sid, detail, hash, anchor FROM audit ORDER BY seq")
            .map_err(sql(ctx))?;
        // Each anchor is checked as it would be told to a hub: computed again from its entry
        // and the anchor before it. An anchor cell needs no key to write over.
        let salt = anchor_salt(&tx, &self.0.sealer).ok();
        let mut prev_anchor = [0u8; 32];
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
            let anchor: Option<Vec<u8>> = r.get(7).map_err(sql(ctx))?;
            entries += 1;
            if row.seq != entries || hash != row.hash(&prev) {
                return Ok(AuditCheck { entries, broken_at: Some(row.seq) });
            }
            if let (Some(salt), Some(stored)) = (salt.as_ref(), anchor.as_ref()) {
                let plain = row
                    .detail
                    .as_ref()
                    .map(|d| self.0.sealer.open("audit detail", &audit_aad(row.seq), d).unwrap_or_else(|_| d.clone()));
                if row.anchor(salt, &prev_anchor, plain.as_deref()).as_slice() != stored.as_slice() {
                    return Ok(AuditCheck { entries, broken_at: Some(row.seq) });
                }
            }
            prev_anchor = as_anchor(anchor);
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
                // An operating-system account (a command's entry) is no person signed in,
                // whatever its fields.
                if detail["by"]["via"] == "command line" {
                    return Ok(None);
                }
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
        Ok(anchor_row(&self.0.conn, peer)?.map_or((0, 0), |k| (k.chain, k.head)))
    }

    /// The peers whose chains were found shorter than they had told this node, or holding
    /// another entry there (`peer.audit_behind`): each with the furthest end it had told.
    pub fn peer_losses(&self) -> Result<Vec<AuditLoss>, StoreError> {
        anchor_losses(&self.0.conn, "SELECT peer, their_lost FROM audit_anchors WHERE their_lost > 0 ORDER BY peer")
    }

    /// The people flagged for unusual access (`access.unusual`, `access.refused`) in entries
    /// written at or after `since_ms` (by their time), newest first, at most `most` entries
    /// read (a few an hour per person at most: the hour's, the cards' and a refusal once an
    /// hour each, the day's once a day).
    pub fn unusual_access(&self, since_ms: i64, most: usize) -> Result<Vec<UnusualAccess>, StoreError> {
        let ctx = "reading the audit chain";
        let mut stmt = self
            .0
            .conn
            .prepare_cached(
                "SELECT seq, at_ms, action, detail FROM audit
                 WHERE action IN ('access.unusual', 'access.refused') AND at_ms >= ?1
                 ORDER BY at_ms DESC, seq DESC LIMIT ?2",
            )
            .map_err(sql(ctx))?;
        let mut rows = stmt.query(rusqlite::params![since_ms, most as i64]).map_err(sql(ctx))?;
        let mut out: Vec<UnusualAccess> = Vec::new();
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let at_ms: i64 = r.get(1).map_err(sql(ctx))?;
            let action: String = r.get(2).map_err(sql(ctx))?;
            let seq = r.get::<_, i64>(0).map_err(sql(ctx))? as u64;
            let Some(sealed) = r.get::<_, Option<Vec<u8>>>(3).map_err(sql(ctx))? else { continue };
            let detail: serde_json::Value =
                serde_json::from_slice(&self.0.sealer.open("audit detail", &audit_aad(seq), &sealed)?).map_err(json)?;
            let by = &detail["by"];
            let person = by["name"].as_str().or(by["account"].as_str()).unwrap_or("someone unnamed").to_string();
            let records = detail["records"].as_u64().unwrap_or(0);
            let cards = detail["cards"].as_u64().unwrap_or(0);
            let records_day = detail["records_day"].as_u64().unwrap_or(0);
            let refused = action == "access.refused";
            match out.iter_mut().find(|u| u.person == person) {
                Some(u) => {
                    u.records = u.records.max(records);
                    u.cards = u.cards.max(cards);
                    u.records_day = u.records_day.max(records_day);
                    u.refused |= refused;
                }
                None => out.push(UnusualAccess {
                    person,
                    role: by["role"].as_str().map(str::to_string),
                    records,
                    cards,
                    records_day,
                    refused,
                    at_ms,
                }),
            }
        }
        Ok(out)
    }

    /// The looks at records through the local API (views, exports, photos opened), the records
    /// made there, and the access watch's findings written between `since_ms` and `until_ms`,
    /// oldest first. Of the looks and records made, only the newest of each person's at each
    /// record (what the watch keeps), and the newest `most` of those: a person opening one
    /// record over and over crowds no one's (nor their own) other records out. The findings
    /// are all kept. At most ten times `most` entries are read. Entries that name no person
    /// (the command line, the node's own work) are left out.
    pub fn access_since(&self, since_ms: i64, until_ms: i64, most: usize) -> Result<Vec<AccessSeen>, StoreError> {
        let ctx = "reading the audit chain";
        let mut stmt = self
            .0
            .conn
            .prepare_cached(
                "SELECT a.seq, a.at_ms, a.action, s.id, a.detail FROM audit a
                 LEFT JOIN sessions s ON s.sid = a.sid
                 WHERE a.action IN ('session.view', 'session.export', 'photo.view', 'session.create',
                                    'access.unusual', 'access.refused')
                   AND a.at_ms >= ?1 AND a.at_ms <= ?2
                 ORDER BY a.at_ms DESC, a.seq DESC LIMIT ?3",
            )
            .map_err(sql(ctx))?;
        let scanned = most.saturating_mul(10).min(i64::MAX as usize) as i64;
        let mut rows = stmt.query(rusqlite::params![since_ms, until_ms, scanned]).map_err(sql(ctx))?;
        let mut out = Vec::new();
        let mut looks = std::collections::HashSet::new();
        let mut unopened = 0usize;
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let seq = r.get::<_, i64>(0).map_err(sql(ctx))? as u64;
            let at_ms: i64 = r.get(1).map_err(sql(ctx))?;
            let action: String = r.get(2).map_err(sql(ctx))?;
            let session = r.get::<_, Option<String>>(3).map_err(sql(ctx))?.and_then(|id| id.parse::<SessionId>().ok());
            let Some(sealed) = r.get::<_, Option<Vec<u8>>>(4).map_err(sql(ctx))? else { continue };
            // An entry that does not open (a damaged row, which `outpost audit verify` reports)
            // is passed over: it must not make the watch forget everyone else's.
            let opened = self.0.sealer.open("audit detail", &audit_aad(seq), &sealed).ok();
            let Some(detail) = opened.and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok()) else {
                unopened += 1;
                continue;
            };
            let by = &detail["by"];
            let Some(id) = by["id"].as_i64() else { continue };
            let system = by["role"] == "system";
            let n = |key: &str| detail[key].as_u64().unwrap_or(0);
            let flagged = (n("records"), n("records_day"), n("cards"));
            if !action.starts_with("access.") {
                // A look (or the record made) older than this person's newest at this record
                // changes nothing the watch keeps; past `most` of them, the older are left.
                let made = action == "session.create";
                if looks.len() >= most || !looks.insert((id, made, session)) {
                    continue;
                }
            }
            out.push(AccessSeen { at_ms, action, person: (id, system), session, flagged });
        }
        if unopened > 0 {
            tracing::warn!(
                "{unopened} audit entries could not be opened (`outpost audit verify` says where); the access watch passed over them"
            );
        }
        out.reverse();
        Ok(out)
    }

    /// The hubs that had seen this node's chain longer than it was when they next spoke.
    pub fn losses(&self) -> Result<Vec<AuditLoss>, StoreError> {
        anchor_losses(&self.0.conn, "SELECT peer, lost FROM audit_anchors WHERE lost > 0 ORDER BY peer")
    }
}

/// The losses an `audit_anchors` query (peer, end) finds.
fn anchor_losses(conn: &rusqlite::Connection, query: &str) -> Result<Vec<AuditLoss>, StoreError> {
    let ctx = "reading audit anchors";
    let mut stmt = conn.prepare_cached(query).map_err(sql(ctx))?;
    stmt.query_map([], |r| Ok(AuditLoss { peer: r.get(0)?, seen: r.get::<_, i64>(1)? as u64 }))
        .map_err(sql(ctx))?
        .collect::<Result<_, _>>()
        .map_err(sql(ctx))
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

pub use sync_protocol::audit::HeadsFound;

impl<S: DerefMut<Target = Store>> Audit<S> {
    /// A peer's [`sync_protocol::wire::Frame::AuditHead`], judged by
    /// [`sync_protocol::audit::judge`] against what was kept of this peer: what it found is
    /// recorded in this chain (`peer.audit_chain_changed`, `peer.audit_behind`, and from a
    /// `believed` hub `audit.behind`, which `outpost status` shows), in the same transaction as
    /// the row kept for the peer. A frame whose numbers no chain reaches is ignored.
    pub fn note_audit_head(
        &mut self,
        peer: &str,
        heads: sync_protocol::engine::AuditHeads,
        believed: bool,
        now: i64,
    ) -> Result<HeadsFound, StoreError> {
        let ctx = "recording an audit anchor";
        // Planned on a read first: a sync in which neither chain moved writes nothing (it
        // would cost each side a durable write; `cargo bench --bench sync`, case (a)).
        let Some((_, _, true)) = plan_audit_head(&self.0.conn, &self.0.sealer, peer, heads, believed)? else {
            return Ok(HeadsFound::default());
        };
        let store = &mut *self.0;
        let tx = store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql(ctx))?;
        let Some((found, row, _)) = plan_audit_head(&tx, &store.sealer, peer, heads, believed)? else {
            return Ok(HeadsFound::default());
        };
        let my_head = head_seq(&tx)?;
        if let Some((chain_was, head_was)) = found.chain_changed {
            let detail = serde_json::json!({ "peer": peer, "chain_was": chain_was, "head_was": head_was,
                "chain": heads.chain, "head": heads.head });
            append_audit(
                &tx,
                &store.sealer,
                &store.node,
                now,
                "peer.audit_chain_changed",
                None,
                by(&store.acting, Some(detail)),
            )?;
        }
        if found.theirs_cut {
            let detail = serde_json::json!({ "peer": peer, "seen": row.their_lost, "head": heads.head });
            append_audit(
                &tx,
                &store.sealer,
                &store.node,
                now,
                "peer.audit_behind",
                None,
                by(&store.acting, Some(detail)),
            )?;
        }
        if found.ours_cut {
            let detail = serde_json::json!({ "peer": peer, "seen": row.lost, "head": my_head });
            append_audit(&tx, &store.sealer, &store.node, now, "audit.behind", None, by(&store.acting, Some(detail)))?;
        }
        tx.execute(
            "INSERT INTO audit_anchors (peer, their_chain, their_head, their_anchor, their_lost, lost, told)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (peer) DO UPDATE SET their_chain = ?2, their_head = ?3, their_anchor = ?4,
                 their_lost = ?5, lost = ?6, told = ?7",
            params![
                peer,
                row.chain as i64,
                row.head as i64,
                row.anchor.to_vec(),
                row.their_lost as i64,
                row.lost as i64,
                row.told as i64
            ],
        )
        .map_err(sql(ctx))?;
        tx.commit().map_err(sql(ctx))?;
        Ok(found)
    }
}

impl<S: Deref<Target = Store>> Audit<S> {
    /// What to tell `peer` in a [`sync_protocol::wire::Frame::AuditHead`]: this chain, its end
    /// and that entry's anchor; the peer's chain and furthest end as last told, with its
    /// anchor; and the end of ours `proof_at` (or, without it, the one the peer last said it
    /// had seen), with our anchor there now.
    pub fn audit_heads_for(
        &self,
        peer: &str,
        proof_at: Option<u64>,
    ) -> Result<sync_protocol::engine::AuditHeads, StoreError> {
        let conn = &self.0.conn;
        let _read = reading(conn)?;
        let kept = anchor_row(conn, peer)?;
        let head = head_seq(conn)?;
        let told = proof_at.unwrap_or_else(|| kept.as_ref().map_or(0, |k| k.told));
        Ok(sync_protocol::engine::AuditHeads {
            chain: chain_id(conn)?,
            head,
            anchor: told_anchor(conn, &self.0.sealer, head)?.unwrap_or_default(),
            seen_chain: kept.as_ref().map_or(0, |k| k.chain),
            seen: kept.as_ref().map_or(0, |k| k.head),
            seen_anchor: kept.as_ref().map_or([0; 32], |k| k.anchor),
            proof: told,
            proof_anchor: if told == 0 {
                [0; 32]
            } else {
                told_anchor(conn, &self.0.sealer, told)?.unwrap_or_default()
            },
        })
    }
}

/// What is kept of `peer`'s audit chain and of ours as it told ([`Audit::note_audit_head`]);
/// numbers are kept as SQLite's signed integers (a chain id bit for bit).
fn anchor_row(conn: &rusqlite::Connection, peer: &str) -> Result<Option<KeptHeads>, StoreError> {
    conn.row(
        "SELECT their_chain, their_head, their_anchor, their_lost, lost, told FROM audit_anchors WHERE peer = ?1",
        [peer],
        |r| {
            Ok(KeptHeads {
                chain: r.get::<_, i64>(0)? as u64,
                head: r.get::<_, i64>(1)? as u64,
                anchor: as_anchor(r.get(2)?),
                their_lost: r.get::<_, i64>(3)? as u64,
                lost: r.get::<_, i64>(4)? as u64,
                told: r.get::<_, i64>(5)? as u64,
            })
        },
    )
    .optional()
    .map_err(sql("reading audit anchors"))
}

/// What [`Audit::note_audit_head`] finds and the row it leaves for the peer, and whether that
/// row differs from the one kept; `None` for a frame whose numbers no chain reaches.
fn plan_audit_head(
    conn: &rusqlite::Connection,
    sealer: &Sealer,
    peer: &str,
    heads: sync_protocol::engine::AuditHeads,
    believed: bool,
) -> Result<Option<(HeadsFound, KeptHeads, bool)>, StoreError> {
    let (my_chain, my_head) = (chain_id(conn)?, head_seq(conn)?);
    let kept = anchor_row(conn, peer)?;
    let judged = audit::judge(kept, &heads, my_chain, my_head, believed, |seq| told_anchor(conn, sealer, seq))?;
    Ok(judged.map(|(found, row)| (found, row, kept != Some(row))))
}

impl<S: DerefMut<Target = Store>> Audit<S> {
    /// The person acting through this store until cleared (the local API sets it around each
    /// request): named, with role and registration, in every audit entry written meanwhile.
    /// Cleared, entries name the account running this command again, if one is named
    /// ([`super::name_operator`]).
    pub fn set_acting(&mut self, who: Option<&people::Person>) {
        self.0.acting = who.map(people::person_json).or_else(super::operator);
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
        self.feed(&mut h, prev);
        h.update(self.detail.as_deref().unwrap_or(&[]));
        h.finalize().as_bytes().to_vec()
    }

    /// What the hash and the anchor share: the one before, then every field but the detail.
    fn feed(&self, h: &mut blake3::Hasher, prev: &[u8]) {
        h.update(prev);
        h.update(&self.seq.to_be_bytes());
        h.update(&self.at_ms.to_be_bytes());
        for field in [self.node.as_bytes(), self.action.as_bytes()] {
            h.update(&(field.len() as u64).to_be_bytes());
            h.update(field);
        }
        h.update(&self.sid.unwrap_or(-1).to_be_bytes());
    }

    /// An entry read by `SELECT seq, at_ms, node, action, sid, detail`.
    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
        Ok(AuditRow {
            seq: r.get::<_, i64>(0)? as u64,
            at_ms: r.get(1)?,
            node: r.get(2)?,
            action: r.get(3)?,
            sid: r.get(4)?,
            detail: r.get(5)?,
        })
    }

    /// The entry's anchor: `BLAKE3-keyed(salt, domain || prev || seq || at || len-prefixed
    /// node, action || sid || detail in the clear)`. Unlike [`AuditRow::hash`] it does not
    /// change when the key is rotated (the details are sealed anew), so a hub can hold it across
    /// rotations; keyed by a salt that never leaves the node, it says nothing of the entry.
    pub(super) fn anchor(&self, salt: &[u8; 32], prev: &[u8; 32], plain_detail: Option<&[u8]>) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(salt);
        h.update(b"outpost audit anchor v1");
        self.feed(&mut h, prev);
        match plain_detail {
            Some(d) => {
                h.update(&[1]);
                h.update(d);
            }
            None => {
                h.update(&[0]);
            }
        }
        *h.finalize().as_bytes()
    }
}

/// An anchor as stored (zeros for none: an empty chain, or a damaged cell).
fn as_anchor(stored: Option<Vec<u8>>) -> [u8; 32] {
    stored.and_then(|a| <[u8; 32]>::try_from(a.as_slice()).ok()).unwrap_or([0; 32])
}

/// The key of this node's audit anchors, derived from its author seed (sealed, kept by
/// backups, never sent, unchanged by a key rotation): every copy of the store, whenever it was
/// migrated, computes the same anchors, and a node set up anew under a known name other ones.
fn anchor_salt(conn: &rusqlite::Connection, sealer: &Sealer) -> Result<[u8; 32], StoreError> {
    let seed = super::identity::author_seed(conn, sealer)?;
    Ok(blake3::derive_key("outpost audit anchor key v1", &seed))
}

/// Schema 12's step: each entry of the chain written before gets
/// its anchor, in order (a detail that does not open is taken as sealed: the anchor still
/// follows the chain).
pub(super) fn anchor_existing_chain(tx: &Transaction<'_>, sealer: &Sealer) -> Result<(), StoreError> {
    let ctx = "anchoring the audit chain";
    let salt = anchor_salt(tx, sealer)?;
    // In pages of the chain, not all of it at once: a hub's chain of millions of entries (a
    // `session.list` detail is kilobytes) would otherwise be held in memory whole.
    let mut prev = [0u8; 32];
    let mut after = 0i64;
    loop {
        let page: Vec<AuditRow> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, at_ms, node, action, sid, detail FROM audit WHERE seq > ?1 ORDER BY seq LIMIT 4096",
                )
                .map_err(sql(ctx))?;
            stmt.query_map([after], AuditRow::from_row)
                .map_err(sql(ctx))?
                .collect::<Result<_, _>>()
                .map_err(sql(ctx))?
        };
        let Some(last) = page.last() else { break };
        after = last.seq as i64;
        for row in page {
            let plain = row
                .detail
                .as_ref()
                .map(|d| sealer.open("audit detail", &audit_aad(row.seq), d).unwrap_or_else(|_| d.clone()));
            prev = row.anchor(&salt, &prev, plain.as_deref());
            tx.execute("UPDATE audit SET anchor = ?2 WHERE seq = ?1", params![row.seq as i64, prev.to_vec()])
                .map_err(sql(ctx))?;
        }
    }
    Ok(())
}

/// The anchor of entry `seq` (`None`: no such entry).
fn anchor_at(conn: &rusqlite::Connection, seq: u64) -> Result<Option<[u8; 32]>, StoreError> {
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let stored: Option<Option<Vec<u8>>> = conn
        .row("SELECT anchor FROM audit WHERE seq = ?1", [seq], |r| r.get(0))
        .optional()
        .map_err(sql("reading the audit chain"))?;
    Ok(stored.map(as_anchor))
}

/// The anchor of entry `seq` as told to a peer: computed again from the entry itself and the
/// anchor before it, not read from its cell. The cell is plain (no key writes it): an older
/// copy put back and written past the end a hub saw could otherwise be given, by hand, the
/// anchor the newer copy held there, and pass. Recomputed, it matches only when the entry is
/// the one the hub was told of (or the hash chain is broken where it was spliced); `outpost
/// audit verify` checks every cell against the same computation. A cell left empty (written
/// beside by an earlier version) is told as before, as zeros.
fn told_anchor(conn: &rusqlite::Connection, sealer: &Sealer, seq: u64) -> Result<Option<[u8; 32]>, StoreError> {
    let ctx = "reading the audit chain";
    let Ok(at) = i64::try_from(seq) else { return Ok(None) };
    let found: Option<(AuditRow, Option<Vec<u8>>)> = conn
        .row("SELECT at_ms, node, action, sid, detail, anchor FROM audit WHERE seq = ?1", [at], |r| {
            Ok((
                AuditRow {
                    seq,
                    at_ms: r.get(0)?,
                    node: r.get(1)?,
                    action: r.get(2)?,
                    sid: r.get(3)?,
                    detail: r.get(4)?,
                },
                r.get(5)?,
            ))
        })
        .optional()
        .map_err(sql(ctx))?;
    let Some((row, stored)) = found else { return Ok(None) };
    let Some(stored) = stored else { return Ok(Some([0; 32])) };
    let prev = if seq > 1 { anchor_at(conn, seq - 1)?.unwrap_or_default() } else { [0; 32] };
    let plain =
        row.detail.as_ref().map(|d| sealer.open("audit detail", &audit_aad(seq), d).unwrap_or_else(|_| d.clone()));
    let again = row.anchor(&anchor_salt(conn, sealer)?, &prev, plain.as_deref());
    if again.as_slice() != stored.as_slice() {
        tracing::warn!("audit entry {seq}'s anchor is not its own: the entry, or its anchor, was altered");
    }
    Ok(Some(again))
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
    anchor: [u8; 32],
    /// The anchors' key, read at the first append.
    salt: Option<[u8; 32]>,
    moved: bool,
    /// Whether the table has its `anchor` column (schema 12): not yet in the schema-8 step of a
    /// store migrated across both, whose entries schema 12's step anchors.
    anchored: bool,
}

impl AuditTail {
    /// The chain's end as the transaction sees it.
    pub(crate) fn read(tx: &Transaction<'_>) -> Result<AuditTail, StoreError> {
        let last: Option<(i64, Vec<u8>, Option<Vec<u8>>)> = tx
            .row("SELECT seq, hash, anchor FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(sql("reading the audit chain"))?;
        Ok(match last {
            Some((s, h, a)) => {
                AuditTail { seq: s as u64, hash: h, anchor: as_anchor(a), salt: None, moved: false, anchored: true }
            }
            None => AuditTail {
                seq: 0,
                hash: [0u8; 32].to_vec(),
                anchor: [0; 32],
                salt: None,
                moved: false,
                anchored: true,
            },
        })
    }

    /// The chain's end before schema 12 added the `anchor` column (the schema-8 step only).
    fn read_unanchored(tx: &Transaction<'_>) -> Result<AuditTail, StoreError> {
        let last: Option<(i64, Vec<u8>)> = tx
            .row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(sql("reading the audit chain"))?;
        let (seq, hash) = last.map_or((0, [0u8; 32].to_vec()), |(s, h)| (s as u64, h));
        Ok(AuditTail { seq, hash, anchor: [0; 32], salt: None, moved: false, anchored: false })
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
        let plain = match detail {
            Some(d) => Some(serde_json::to_vec(&d).map_err(json)?),
            None => None,
        };
        let detail = match &plain {
            Some(p) => Some(sealer.seal(&audit_aad(seq), p)?),
            None => None,
        };
        let row = AuditRow { seq, at_ms, node: node.to_string(), action: action.to_string(), sid, detail };
        let hash = row.hash(&self.hash);
        if !self.anchored {
            tx.exec(
                "INSERT INTO audit (seq, at_ms, node, action, sid, detail, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![row.seq as i64, row.at_ms, row.node, row.action, row.sid, row.detail, hash],
            )
            .map_err(sql("appending to the audit chain"))?;
            (self.seq, self.hash, self.moved) = (seq, hash, true);
            return Ok(());
        }
        let salt = match self.salt {
            Some(salt) => salt,
            None => *self.salt.insert(anchor_salt(tx, sealer)?),
        };
        let anchor = row.anchor(&salt, &self.anchor, plain.as_deref());
        tx.exec(
            "INSERT INTO audit (seq, at_ms, node, action, sid, detail, hash, anchor) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![row.seq as i64, row.at_ms, row.node, row.action, row.sid, row.detail, hash, anchor.to_vec()],
        )
        .map_err(sql("appending to the audit chain"))?;
        self.seq = seq;
        self.hash = hash;
        self.anchor = anchor;
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
    // The `anchor` column comes with schema 12, whose step then anchors this entry too.
    let mut tail = AuditTail::read_unanchored(tx)?;
    let detail = Some(serde_json::json!({ "missing_after": last }));
    tail.append(tx, sealer, NewEntry { node, at_ms: now, action: HEAD_MADE, sid: None, detail })?;
    tail.seal(tx, sealer)
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
