//! Session documents: creating, editing, reading, listing; snapshots, change logs, cards and the
//! reconciliation index.

use std::collections::HashSet;
use std::ops::{Deref, DerefMut};

use super::*;

/// A session's log (routing or calls): its entries in order, each a map of its fields.
pub type LogEntries = Vec<std::collections::BTreeMap<String, sync_protocol::session::LogValue>>;

/// What the store keeps of session documents: creating, editing and viewing them, and listing
/// them from their cards.
/// Reached through [`Store::sessions`] and [`Store::sessions_mut`].
#[derive(Debug)]
pub struct Sessions<S>(pub(super) S);

impl<S: Deref<Target = Store>> Sessions<S> {
    /// Whether each session holds an open escalation, as indexed with its current version:
    /// `None` where that is not known (a session indexed before schema 9, or none such).
    pub fn escalating(&self, ids: &[SessionId]) -> Result<Vec<Option<bool>>, StoreError> {
        let ctx = "reading the session index";
        let _tx = reading(&self.0.conn)?;
        let mut stmt = self.0.conn.prepare_cached("SELECT escalating FROM sessions WHERE id = ?1").map_err(sql(ctx))?;
        ids.iter()
            .map(|id| {
                stmt.query_row([id.to_string()], |r| r.get::<_, Option<bool>>(0))
                    .optional()
                    .map(Option::flatten)
                    .map_err(sql(ctx))
            })
            .collect()
    }

    /// Finds the session whose id is `text` or starts with it.
    pub fn resolve(&self, text: &str) -> Result<SessionId, StoreError> {
        let prefix = text.trim().to_ascii_uppercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(StoreError::NoSuchSession(text.to_string()));
        }
        let mut stmt = self
            .0
            .conn
            .prepare_cached("SELECT id FROM sessions WHERE id >= ?1 AND id < ?1 || '~' ORDER BY id LIMIT 2")
            .map_err(sql("finding a session"))?;
        let ids: Vec<String> = stmt
            .query_map([&prefix], |r| r.get(0))
            .map_err(sql("finding a session"))?
            .collect::<Result<_, _>>()
            .map_err(sql("finding a session"))?;
        match ids.as_slice() {
            [one] => one.parse().map_err(|_| StoreError::Damaged(format!("stored session id {one:?} is not a ULID"))),
            [] => Err(StoreError::NoSuchSession(text.to_string())),
            _ => Err(StoreError::Ambiguous(text.to_string())),
        }
    }

    /// Lists sessions newest first, from their index rows and cards (no document is loaded).
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<SessionCard>, StoreError> {
        // Only the filters given appear in the statement, so that SQLite can use the status
        // index (a router asking for the sessions in routing reads those, not every session).
        let mut wheres = Vec::new();
        let mut args: Vec<&str> = Vec::new();
        if let Some(st) = filter.status {
            args.push(st.as_str());
            wheres.push(format!("status = ?{}", args.len()));
        }
        if let Some(line) = filter.service_line {
            args.push(line.as_str());
            wheres.push(format!("service_line = ?{}", args.len()));
        }
        self.cards_where(&wheres, &args, filter.limit.map_or(-1, |l| l as i64))
    }

    /// One session's card (`None` if this node does not hold it).
    pub fn card(&self, id: SessionId) -> Result<Option<SessionCard>, StoreError> {
        let key = id.to_string();
        Ok(self.cards_where(&["id = ?1".to_string()], &[key.as_str()], 1)?.pop())
    }

    fn cards_where(&self, wheres: &[String], args: &[&str], limit: i64) -> Result<Vec<SessionCard>, StoreError> {
        let ctx = "listing sessions";
        let query = format!(
            "SELECT id, status, service_line, priority, origin, created_ms, updated_ms, card,
             EXISTS (SELECT 1 FROM peer_docs p WHERE p.sid = sessions.sid AND p.hub = 1 AND p.digest = sessions.digest)
             FROM sessions {} {}
             ORDER BY updated_ms DESC, id DESC LIMIT {limit}",
            if wheres.is_empty() { "" } else { "WHERE" },
            wheres.join(" AND "),
        );
        let mut stmt = self.0.conn.prepare_cached(&query).map_err(sql(ctx))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter())).map_err(sql(ctx))?;
        let damaged = |what: &str, value: String| StoreError::Damaged(format!("a session's {what} reads {value:?}"));
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql(ctx))? {
            let id: String = row.get(0).map_err(sql(ctx))?;
            let text = |i: usize| row.get::<_, String>(i).map_err(sql(ctx));
            let sealed: Vec<u8> = row.get(7).map_err(sql(ctx))?;
            let mut secret: CardSecret =
                serde_json::from_slice(&self.0.sealer.open("session card", &card_aad(&id), &sealed)?).map_err(json)?;
            // A hub has acknowledged the heads the card was written at: every message is there.
            if row.get::<_, bool>(8).map_err(sql(ctx))? && secret.messages_on_device > 0 {
                secret.on_device_only = secret.on_device_only.saturating_sub(secret.messages_on_device);
                if secret.last_message_receipt == Some(ReceiptLevel::Device) {
                    secret.last_message_receipt = Some(ReceiptLevel::Hub);
                }
            }
            out.push(SessionCard {
                id: id.parse().map_err(|_| damaged("id", id.clone()))?,
                status: Status::parse(&text(1)?).map_err(|e| damaged("status", e.value))?,
                service_line: ServiceLine::parse(&text(2)?).map_err(|e| damaged("service line", e.value))?,
                priority: Priority::parse(&text(3)?).map_err(|e| damaged("priority", e.value))?,
                channel: secret.channel,
                summary: secret.summary,
                nhs_number: secret.nhs_number,
                origin: text(4)?,
                created_ms: row.get(5).map_err(sql(ctx))?,
                updated_ms: row.get(6).map_err(sql(ctx))?,
                messages: secret.messages,
                photos: secret.photos,
                on_device_only: secret.on_device_only,
                last_message_receipt: secret.last_message_receipt,
                last_message_side: secret.last_message_side,
                outcomes: secret.outcomes,
            });
        }
        Ok(out)
    }

    /// Number of sessions stored.
    pub fn session_count(&self) -> Result<u64, StoreError> {
        self.0
            .conn
            .row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(sql("counting sessions"))
    }
}

impl<S: DerefMut<Target = Store>> Sessions<S> {
    /// Creates a session; returns once it is durable.
    pub fn create_session(
        &mut self,
        new: &NewSession,
        once: Option<&ClientKey<'_>>,
        now: i64,
    ) -> Result<SessionView, StoreError> {
        let store = &mut *self.0;
        store.check_space()?;
        let mut doc = SessionDoc::create(new, store.actor.clone(), now).map_err(model(new.id))?;
        let mut view = doc.view().map_err(model(new.id))?;
        let id = new.id.to_string();
        let card = seal_card(&store.sealer, &id, &view)?;
        let bytes = doc.save_after(&[]);
        let tx =
            store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
        if let Some(key) = once {
            if let Some(first) = key.recall(&tx)? {
                drop(tx);
                let first: SessionId = first
                    .parse()
                    .map_err(|_| StoreError::Damaged(format!("client key {:?} names no session", key.key)))?;
                return self.view(first);
            }
            key.remember(&tx, &id, now)?;
        }
        let sid = insert_session_row(&tx, &id, &view, &card, "recording the session")?;
        let log = append_change(&tx, &store.sealer, sid, &id, &bytes)?;
        put_sigs(&tx, authorship::sign_new(&store.author, doc.automerge(), &[]))?;
        let viewer = Viewer { hub: store.opts.hub };
        index_doc(&tx, &store.sealer, viewer, (&id, sid), &mut doc, &mut view, Some(log))?;
        append_audit(&tx, &store.sealer, &store.node, now, "session.create", Some(sid), by(&store.acting, None))?;
        tx.commit().map_err(sql("committing"))?;
        store.cache.put(new.id, Cached { doc, sid, upto: log.seq, basis: None });
        Ok(view)
    }

    /// Edits a session: `f` runs on the current document inside a write transaction, and the
    /// change it makes is durable when this returns `Ok`. On any error nothing is written.
    /// `detail` goes into the audit entry: ids and codes only, never patient data.
    pub fn edit<T>(
        &mut self,
        id: SessionId,
        action: &'static str,
        detail: Option<serde_json::Value>,
        now: i64,
        f: impl FnOnce(&mut WriteCtx<'_>, &mut SessionDoc) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let store = &mut *self.0;
        // New content waits for space; small control writes (receipts, call steps, outcomes)
        // go on within the space kept for reading and syncing.
        if space::GROWING_ACTIONS.contains(&action) {
            store.check_space()?;
        }
        let key = id.to_string();
        let tx =
            store.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
        let mut cached = checkout(&mut store.cache, &tx, &store.sealer, &store.actor, id)?;
        let before = cached.doc.heads();
        // The session as it was, for the write rules to judge the edit from.
        let prior = store.writer.is_some().then(|| cached.doc.automerge().clone());
        let mut ctx = WriteCtx { tx: &tx, sealer: &store.sealer, now };
        // On any error the checked-out copy is dropped (it may hold the failed edit), and the
        // transaction rolls back when `tx` is dropped.
        let out = f(&mut ctx, &mut cached.doc)?;
        if cached.doc.heads() != before {
            if let (Some(me), Some(prior)) = (&store.writer, &prior) {
                let changes = cached.doc.changes_after(&before);
                rules::check_own(prior, &changes, me, store.author.public())
                    .map_err(|e| StoreError::NotYours { id, reason: e.to_string() })?;
            }
            let bytes = cached.doc.save_after(&before);
            let mut view = cached.doc.view().map_err(model(id))?;
            let log = append_change(&tx, &store.sealer, cached.sid, &key, &bytes)?;
            put_sigs(&tx, authorship::sign_new(&store.author, cached.doc.automerge(), &before))?;
            let viewer = Viewer { hub: store.opts.hub };
            let counts =
                index_doc(&tx, &store.sealer, viewer, (&key, cached.sid), &mut cached.doc, &mut view, Some(log))?;
            cached.upto = log.seq;
            maybe_compact(&tx, &store.sealer, &store.opts, &key, &mut cached, counts)?;
            append_audit(&tx, &store.sealer, &store.node, now, action, Some(cached.sid), by(&store.acting, detail))?;
        }
        tx.commit().map_err(sql("committing"))?;
        store.cache.put(id, cached);
        Ok(out)
    }

    /// A session's routing log, read without building its whole view.
    pub fn routing_log(&mut self, id: SessionId) -> Result<LogEntries, StoreError> {
        self.0.with_doc(id, |d| d.routing_log())?.map_err(model(id))
    }

    /// The routing logs of many sessions, read in one transaction (a sync that changed a
    /// thousand sessions asks for all of them): each session's log, or why it could not be read.
    pub fn routing_logs(&mut self, ids: &[SessionId]) -> Result<Vec<Result<LogEntries, StoreError>>, StoreError> {
        self.0.with_docs(ids, |id, d| d.routing_log().map_err(model(id)))
    }

    /// The session's call log (each party's record of its legs).
    pub fn call_log(&mut self, id: SessionId) -> Result<LogEntries, StoreError> {
        self.0.with_doc(id, |d| d.call_log())?.map_err(model(id))
    }

    /// The current view of a session.
    pub fn view(&mut self, id: SessionId) -> Result<SessionView, StoreError> {
        let store = &mut *self.0;
        let tx = reading(&store.conn)?;
        let mut cached = checkout(&mut store.cache, &store.conn, &store.sealer, &store.actor, id)?;
        let viewer = Viewer { hub: store.opts.hub };
        let view = match cached.doc.view() {
            Ok(mut view) => localize_view(&store.conn, viewer, cached.sid, &mut cached.doc, &mut view).map(|()| view),
            Err(e) => Err(model(id)(e)),
        };
        drop(tx);
        store.cache.put(id, cached);
        view
    }

    /// The whole document as Automerge bytes.
    pub fn export_automerge(&mut self, id: SessionId) -> Result<Vec<u8>, StoreError> {
        self.0.with_doc(id, |d| d.save())
    }
}

impl Store {
    /// [`Store::with_doc`] for many sessions in one read transaction: `f`'s answer for each, or
    /// why the session could not be read.
    pub(super) fn with_docs<T>(
        &mut self,
        ids: &[SessionId],
        mut f: impl FnMut(SessionId, &mut SessionDoc) -> Result<T, StoreError>,
    ) -> Result<Vec<Result<T, StoreError>>, StoreError> {
        let tx = reading(&self.conn)?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            match checkout(&mut self.cache, &self.conn, &self.sealer, &self.actor, id) {
                Ok(mut cached) => {
                    out.push(f(id, &mut cached.doc));
                    self.cache.put(id, cached);
                }
                Err(e) => out.push(Err(e)),
            }
        }
        drop(tx);
        Ok(out)
    }

    pub(super) fn with_doc<T>(&mut self, id: SessionId, f: impl FnOnce(&mut SessionDoc) -> T) -> Result<T, StoreError> {
        let tx = reading(&self.conn)?;
        let mut cached = checkout(&mut self.cache, &self.conn, &self.sealer, &self.actor, id)?;
        drop(tx);
        let out = f(&mut cached.doc);
        self.cache.put(id, cached);
        Ok(out)
    }
}

pub(super) fn change_aad(id: &str) -> Vec<u8> {
    [b"outpost/change/v1/".as_slice(), id.as_bytes()].concat()
}

pub(super) fn snapshot_aad(id: &str) -> Vec<u8> {
    [b"outpost/snapshot/v1/".as_slice(), id.as_bytes()].concat()
}

pub(super) fn card_aad(id: &str) -> Vec<u8> {
    [b"outpost/card/v1/".as_slice(), id.as_bytes()].concat()
}

pub(super) fn seal_card(sealer: &Sealer, id: &str, view: &SessionView) -> Result<Vec<u8>, StoreError> {
    let plain = serde_json::to_vec(&CardSecret::from_view(view)).map_err(json)?;
    Ok(sealer.seal(&card_aad(id), &plain)?)
}

/// Heads as stored: sorted 32-byte hashes, concatenated.
pub(super) fn heads_blob(heads: &[Hash]) -> Vec<u8> {
    let mut sorted = heads.to_vec();
    sorted.sort();
    sorted.iter().flat_map(|h| h.0).collect()
}

/// What a peer holds, from a row of `heads, shared` (per-peer knowledge of a document).
pub(super) fn knowledge_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<sync_protocol::engine::Knowledge> {
    Ok(sync_protocol::engine::Knowledge {
        heads: heads_from_blob(&r.get::<_, Vec<u8>>(0)?),
        shared: heads_from_blob(&r.get::<_, Vec<u8>>(1)?),
    })
}

/// Heads from their stored form.
pub(super) fn heads_from_blob(b: &[u8]) -> Vec<Hash> {
    b.chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            Hash(h)
        })
        .collect()
}

pub(super) fn doc_heads(doc: &mut SessionDoc) -> Vec<Hash> {
    let mut h: Vec<Hash> = doc.heads().into_iter().map(Hash::from).collect();
    h.sort();
    h
}

/// Brings a session's clear index columns and side tables up to date with its document:
/// status, line, priority, times, the sealed card, heads and their digest, shares, media. A
/// change just appended (`log`) is counted in the same statement as the rest of the row.
/// Returns the log's count, its bytes and the snapshot's bytes after it.
pub(super) fn index_doc(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    viewer: Viewer,
    (key, sid): (&str, i64),
    doc: &mut SessionDoc,
    view: &mut SessionView,
    log: Option<Appended>,
) -> Result<(i64, i64, i64), StoreError> {
    // The card keeps what the document itself says (and a hub's own view): whether a hub holds
    // the session's current heads is read beside the card when it is listed, so a hub restored
    // from an older copy lowers it at once instead of at the session's next write.
    view.raise_held(viewer.hub);
    let heads = doc_heads(doc);
    let digest = recon::digest(&heads);
    let card = seal_card(sealer, key, view)?;
    let (origin, icb, old_line, old_digest): (String, String, String, Vec<u8>) = tx
        .row("SELECT origin, icb, service_line, digest FROM sessions WHERE sid = ?1", [sid], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .map_err(sql("reading the session index"))?;
    let line = view.service.line.as_str();
    if old_line != line || old_digest[..] != digest[..] {
        let id = SessionId::from_bytes(sid_bytes(key)?);
        let new = Fingerprint::of(&Item { id: id.to_bytes(), digest });
        let old =
            <[u8; 16]>::try_from(&old_digest[..]).ok().map(|d| Fingerprint::of(&Item { id: id.to_bytes(), digest: d }));
        match old {
            // The usual case, a new version in the same group: one read and one write of its sum.
            Some(old) if old_line == line => fp_group_change(tx, (&origin, &icb, line), Some(&old), Some(&new))?,
            old => {
                if let Some(old) = old {
                    fp_group_change(tx, (&origin, &icb, &old_line), Some(&old), None)?;
                }
                fp_group_change(tx, (&origin, &icb, line), None, Some(&new))?;
            }
        }
    }
    let (status, line, priority) = (view.status.as_str(), view.service.line.as_str(), view.service.priority.as_str());
    let (updated, heads) = (view.updated_ms(), heads_blob(&heads));
    let escalating = sync_protocol::router::Router::wants(&sync_protocol::call::calls_in(&view.routing));
    // Without a new change, the log's columns stay as they are (NULL keeps `head_seq`).
    let (seq, added, sealed_len) = log.map_or((None, 0, 0), |l| (Some(l.seq), 1, l.sealed_len));
    let counts = tx
        .row(
            "UPDATE sessions SET status = ?2, service_line = ?3, priority = ?4, updated_ms = ?5, card = ?6,
             heads = ?7, digest = ?8, head_seq = coalesce(?9, head_seq), log_count = log_count + ?10,
             log_bytes = log_bytes + ?11, escalating = ?12 WHERE sid = ?1
             RETURNING log_count, log_bytes, snapshot_bytes",
            params![
                sid,
                status,
                line,
                priority,
                updated,
                card,
                heads,
                digest.to_vec(),
                seq,
                added,
                sealed_len,
                escalating
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(sql("updating the session index"))?;
    for node in &view.shared_with {
        tx.exec("INSERT OR IGNORE INTO session_shares (sid, node) VALUES (?1, ?2)", params![sid, node])
            .map_err(sql("indexing shares"))?;
    }
    for m in &view.media {
        let holders: Vec<&str> =
            m.receipts.iter().filter(|r| r.level >= ReceiptLevel::Hub).map(|r| r.node.as_str()).collect();
        let vouched = super::vouched(m);
        tx.exec(
            "INSERT INTO session_media (sid, hash, size, mime, added_by, holders, withdrawn, vouched)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (sid, hash) DO UPDATE SET holders = excluded.holders, withdrawn = excluded.withdrawn,
                 vouched = excluded.vouched",
            params![sid, m.hash, m.size as i64, m.mime, m.added_by, holders.join(","), m.consent_withdrawn, vouched],
        )
        .map_err(sql("indexing photos"))?;
    }
    Ok(counts)
}

/// The node a store belongs to, as the one viewing its sessions: whether it is a hub.
#[derive(Debug, Clone, Copy)]
pub(super) struct Viewer {
    pub(super) hub: bool,
}

/// A session's view as this node sees it: receipts raised by what it knows without one, and
/// its own messages "at hub" once a hub has acknowledged heads that hold them (the hubs'
/// acknowledged heads are read only when an own message needs them).
pub(super) fn localize_view(
    conn: &rusqlite::Connection,
    viewer: Viewer,
    sid: i64,
    doc: &mut SessionDoc,
    view: &mut SessionView,
) -> Result<(), StoreError> {
    enum Failed {
        Doc(ModelError),
        Store(StoreError),
    }
    impl From<ModelError> for Failed {
        fn from(e: ModelError) -> Self {
            Failed::Doc(e)
        }
    }
    let ctx = "reading what the hubs hold";
    let done = sync_protocol::session::localize(doc, view, viewer.hub, || {
        let mut stmt = conn
            .prepare_cached("SELECT heads FROM peer_docs WHERE sid = ?1 AND hub = 1")
            .map_err(|e| Failed::Store(sql(ctx)(e)))?;
        let rows = stmt.query_map([sid], |r| r.get::<_, Vec<u8>>(0)).map_err(|e| Failed::Store(sql(ctx)(e)))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(heads_from_blob(&r.map_err(|e| Failed::Store(sql(ctx)(e)))?));
        }
        Ok(out)
    });
    match done {
        Ok(()) => Ok(()),
        Err(Failed::Store(e)) => Err(e),
        Err(Failed::Doc(e)) => Err(model(view.id)(e)),
    }
}

pub(super) fn sid_bytes(key: &str) -> Result<DocId, StoreError> {
    key.parse::<SessionId>().map(|s| s.to_bytes()).map_err(|_| StoreError::Damaged(format!("session id {key:?}")))
}

/// Takes away one session's old item (`remove`) and adds its new one (`add`) in the fingerprint
/// of its scope group (origin, ICB, service line): the sums a Summary needs, kept up to date
/// per write.
pub(super) fn fp_group_change(
    tx: &Transaction<'_>,
    (origin, icb, line): (&str, &str, &str),
    remove: Option<&Fingerprint>,
    add: Option<&Fingerprint>,
) -> Result<(), StoreError> {
    let ctx = "updating the reconciliation sums";
    let old: Option<(i64, Vec<u8>)> = tx
        .row("SELECT n, fp FROM fp_groups WHERE origin = ?1 AND icb = ?2 AND line = ?3", [origin, icb, line], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(sql(ctx))?;
    let (count, fp) = match old {
        Some((count, fp)) => {
            let fp: [u8; 32] =
                fp.try_into().map_err(|_| StoreError::Damaged("a reconciliation sum is damaged".into()))?;
            (count, Fingerprint::from_bytes(&fp))
        }
        None => (0, Fingerprint::default()),
    };
    let mut fp = fp;
    let mut n = 0;
    if let Some(item) = remove {
        fp = fp.sub(item);
        n -= 1;
    }
    if let Some(item) = add {
        fp = fp.add(item);
        n += 1;
    }
    tx.exec(
        "INSERT INTO fp_groups (origin, icb, line, n, fp) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (origin, icb, line) DO UPDATE SET n = excluded.n, fp = excluded.fp",
        params![origin, icb, line, count + n, fp.to_bytes().to_vec()],
    )
    .map_err(sql(ctx))?;
    Ok(())
}

/// Rebuilds the per-group fingerprints from the index (once, when the table is new).
pub(super) fn rebuild_fp_groups(conn: &mut Connection) -> Result<(), StoreError> {
    let ctx = "building the reconciliation sums";
    let built = |c: &Connection| -> Result<bool, StoreError> {
        c.row("SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'fp_groups')", [], |r| r.get(0)).map_err(sql(ctx))
    };
    // Once built, every open only reads that it is (no write lock).
    if built(conn)? {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql(ctx))?;
    if built(&tx)? {
        return Ok(());
    }
    let mut groups: HashMap<(String, String, String), (i64, Fingerprint)> = HashMap::new();
    {
        let mut stmt = tx
            .prepare("SELECT id, origin, icb, service_line, digest FROM sessions WHERE length(digest) = 16")
            .map_err(sql(ctx))?;
        let mut rows = stmt.query([]).map_err(sql(ctx))?;
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let key: String = r.get(0).map_err(sql(ctx))?;
            let digest: Vec<u8> = r.get(4).map_err(sql(ctx))?;
            let Ok(digest) = <[u8; 16]>::try_from(&digest[..]) else { continue };
            let g = groups
                .entry((r.get(1).map_err(sql(ctx))?, r.get(2).map_err(sql(ctx))?, r.get(3).map_err(sql(ctx))?))
                .or_default();
            g.0 += 1;
            g.1 = g.1.add(&Fingerprint::of(&Item { id: sid_bytes(&key)?, digest }));
        }
    }
    tx.exec("DELETE FROM fp_groups", []).map_err(sql(ctx))?;
    for ((origin, icb, line), (n, fp)) in groups {
        tx.exec(
            "INSERT INTO fp_groups (origin, icb, line, n, fp) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![origin, icb, line, n, fp.to_bytes().to_vec()],
        )
        .map_err(sql(ctx))?;
    }
    tx.exec("INSERT INTO meta (key, value) VALUES ('fp_groups', x'01')", []).map_err(sql(ctx))?;
    tx.commit().map_err(sql(ctx))
}

/// Folds the log into a snapshot when it outgrows half the snapshot or holds too many changes.
pub(super) fn maybe_compact(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    opts: &StoreOptions,
    key: &str,
    cached: &mut Cached,
    (log_count, log_bytes, snapshot_bytes): (i64, i64, i64),
) -> Result<(), StoreError> {
    let log_bytes = log_bytes as u64;
    if log_count >= i64::from(opts.compact_after)
        || (log_bytes >= opts.compact_min_bytes && log_bytes >= snapshot_bytes as u64 / 2)
    {
        compact(tx, sealer, key, cached)?;
    }
    Ok(())
}

pub(super) fn session_row(tx: &Connection, id: &str) -> Result<Row, StoreError> {
    tx.row("SELECT sid, head_seq, snapshot_upto, heads FROM sessions WHERE id = ?1", [id], |r| {
        Ok(Row { sid: r.get(0)?, head: r.get(1)?, snapshot_upto: r.get(2)?, heads: r.get(3)? })
    })
    .optional()
    .map_err(sql("loading a session"))?
    .ok_or_else(|| StoreError::NoSuchSession(id.to_string()))
}

/// A session's change log past a sequence number, in order: read for every document loaded.
const LOG_SINCE: &str = "SELECT sealed FROM doc_changes WHERE sid = ?1 AND seq > ?2 ORDER BY seq";

/// Takes a session's document out of the cache (or loads it) and brings it up to date with
/// what other processes have committed: their new changes, or the snapshot that folded them.
pub(super) fn checkout(
    cache: &mut DocCache,
    tx: &Connection,
    sealer: &Sealer,
    actor: &ActorId,
    id: SessionId,
) -> Result<Cached, StoreError> {
    let key = id.to_string();
    let row = session_row(tx, &key)?;
    let mut bytes = Vec::new();
    let mut cached = cache.pop(&id);
    let upto = cached.as_ref().map_or(0, |c| c.upto);
    if row.head <= upto
        && let Some(c) = cached
    {
        return Ok(c);
    }
    if row.snapshot_upto > upto {
        let sealed: Vec<u8> = tx
            .row("SELECT sealed FROM doc_snapshots WHERE sid = ?1", [row.sid], |r| r.get(0))
            .map_err(sql("loading a snapshot"))?;
        bytes.extend(sealer.open("snapshot", &snapshot_aad(&key), &sealed)?);
    }
    let mut stmt = tx.prepare_cached(LOG_SINCE).map_err(sql("loading changes"))?;
    let mut rows = stmt.query(params![row.sid, upto]).map_err(sql("loading changes"))?;
    while let Some(r) = rows.next().map_err(sql("loading changes"))? {
        let sealed: Vec<u8> = r.get(0).map_err(sql("loading changes"))?;
        bytes.extend(sealer.open("document change", &change_aad(&key), &sealed)?);
    }
    match cached.as_mut() {
        Some(c) => c.doc.apply_bytes(&bytes).map_err(model(id))?,
        None => {
            cached = Some(Cached {
                doc: SessionDoc::load(&bytes, actor.clone()).map_err(model(id))?,
                sid: row.sid,
                upto: 0,
                basis: None,
            })
        }
    }
    let mut c = cached.ok_or_else(|| StoreError::Damaged(format!("session {key} has no document")))?;
    c.upto = row.head;
    lacks_nothing_indexed(&mut c.doc, &row.heads, &key)?;
    Ok(c)
}

/// A document read from its log must hold everything its index row says it holds. Automerge
/// loads a log with a row taken out without a word: a change whose dependency is gone waits
/// unapplied, and the newest change gone leaves an older version. Either read as the session
/// (a consent withdrawal gone, a photo exported again), and since the index still named the
/// missing change, no peer would ever send it back. A store never keeps a change whose
/// dependencies it lacks, and writes a session's heads with its log in one transaction, so
/// either is damage. (A document read in the middle of a write may be ahead of its index row,
/// never behind it.)
fn lacks_nothing_indexed(doc: &mut SessionDoc, indexed: &[u8], key: &str) -> Result<(), StoreError> {
    let damaged = |what: &str| {
        Err(StoreError::Damaged(format!(
            "session {key}: {what}: a row of its change log was removed or replaced. Keep this directory as it is, and \
             restore the node from its latest backup into a new directory; the hub sends back what the backup lacks"
        )))
    };
    if !doc.automerge().get_missing_deps(&[]).is_empty() {
        return damaged("a stored change depends on one the log no longer holds");
    }
    let indexed = heads_from_blob(indexed);
    if indexed.is_empty() || doc_heads(doc) == indexed {
        return Ok(());
    }
    let am = doc.automerge();
    if indexed.iter().any(|h| am.get_change_by_hash(&automerge::ChangeHash(h.0)).is_none()) {
        return damaged("its log lacks a change its index says it holds");
    }
    Ok(())
}

/// How many of a session's last log rows [`log_tail_since`] reads before it gives up.
const TAIL_ROWS: i64 = 4;

/// A session's last change-log rows, newest first, past its snapshot.
const LOG_TAIL: &str = "SELECT sealed FROM doc_changes WHERE sid = ?1 AND seq > ?2 ORDER BY seq DESC LIMIT ?3";

/// The changes of a session that are not ancestors of `base`, in causal order, read from the
/// last rows of its change log without loading the document (decoding a document costs
/// several times more than its last few changes): `None` when those rows may not hold all of
/// them, or `base` names changes they do not account for (the caller loads the document).
///
/// The last `k` rows hold the changes `R` written last, so the document before them had heads
/// among its heads now outside `R` and the dependencies of `R` outside `R` (the frontier).
/// When every frontier change is in `base` or an ancestor of it, so is everything older, and
/// the answer is `R` less what `base` already has of it. The last [`TAIL_ROWS`] rows are
/// fetched together, then opened and decoded one at a time, newest first, only as far as needed.
pub(super) fn log_tail_since(
    conn: &Connection,
    sealer: &Sealer,
    id: SessionId,
    base: &[ChangeHash],
) -> Result<Option<Vec<automerge::Change>>, StoreError> {
    let key = id.to_string();
    let ctx = "reading a session's last changes";
    let (sid, upto, heads): (i64, i64, Vec<u8>) = match log_position(conn, &key)? {
        Some(r) => r,
        None => return Ok(None),
    };
    let heads: Vec<ChangeHash> = heads_from_blob(&heads).into_iter().map(ChangeHash::from).collect();
    let base: HashSet<ChangeHash> = base.iter().copied().collect();
    let mut stmt = conn.prepare_cached(LOG_TAIL).map_err(sql(ctx))?;
    let rows: Vec<Vec<u8>> = stmt
        .query_map(params![sid, upto, TAIL_ROWS], |r| r.get(0))
        .map_err(sql(ctx))?
        .collect::<Result<_, _>>()
        .map_err(sql(ctx))?;
    // The changes of the rows read so far, oldest row first.
    let mut tail: Vec<automerge::Change> = Vec::new();
    for sealed in rows {
        let Ok(bytes) = sealer.open("document change", &change_aad(&key), &sealed) else { return Ok(None) };
        let Ok(chunks) = authorship::split_changes(&bytes, usize::MAX) else { return Ok(None) };
        let mut row = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let Ok(c) = automerge::Change::try_from(chunk) else { return Ok(None) };
            row.push(c);
        }
        row.append(&mut tail);
        tail = row;
        let held: HashSet<ChangeHash> = tail.iter().map(|c| c.hash()).collect();
        // The heads must show these rows (an index that did not would be older than them).
        if !heads.iter().any(|h| held.contains(h)) {
            return Ok(None);
        }
        let frontier: HashSet<ChangeHash> = heads
            .iter()
            .copied()
            .chain(tail.iter().flat_map(|c| c.deps().iter().copied()))
            .filter(|h| !held.contains(h))
            .collect();
        // `base` with its ancestors among the tail, and the frontier changes they name.
        let by_hash: HashMap<ChangeHash, &automerge::Change> = tail.iter().map(|c| (c.hash(), c)).collect();
        let mut known: HashSet<ChangeHash> = HashSet::new();
        let mut walk: Vec<ChangeHash> = base.iter().filter(|h| held.contains(h)).copied().collect();
        while let Some(h) = walk.pop() {
            if known.insert(h)
                && let Some(c) = by_hash.get(&h)
            {
                walk.extend(c.deps().iter().copied());
            }
        }
        if !frontier.iter().all(|h| base.contains(h) || known.contains(h)) {
            continue;
        }
        if !base.iter().all(|h| frontier.contains(h) || held.contains(h)) {
            return Ok(None);
        }
        return Ok(Some(tail.into_iter().filter(|c| !known.contains(&c.hash())).collect()));
    }
    Ok(None)
}

/// A session's row id, snapshot point and heads, by its id.
fn log_position(conn: &Connection, key: &str) -> Result<Option<(i64, i64, Vec<u8>)>, StoreError> {
    conn.row("SELECT sid, snapshot_upto, heads FROM sessions WHERE id = ?1", [key], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .optional()
    .map_err(sql("reading a session's last changes"))
}

/// A change sealed and added to a session's log, not yet counted in the session's row:
/// [`index_doc`] does that in the same statement as the rest of the row.
#[derive(Debug, Clone, Copy)]
pub(super) struct Appended {
    pub(super) seq: i64,
    sealed_len: i64,
}

pub(super) fn append_change(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    sid: i64,
    key: &str,
    bytes: &[u8],
) -> Result<Appended, StoreError> {
    let sealed = sealer.seal(&change_aad(key), bytes)?;
    tx.exec("INSERT INTO doc_changes (sid, sealed) VALUES (?1, ?2)", params![sid, sealed])
        .map_err(sql("appending a change"))?;
    Ok(Appended { seq: tx.last_insert_rowid(), sealed_len: sealed.len() as i64 })
}

/// Replaces a session's log with a snapshot of the whole document.
pub(super) fn compact(tx: &Transaction<'_>, sealer: &Sealer, key: &str, cached: &mut Cached) -> Result<(), StoreError> {
    let snapshot = sealer.seal(&snapshot_aad(key), &cached.doc.save())?;
    tx.exec(
        "INSERT INTO doc_snapshots (sid, upto, sealed) VALUES (?1, ?2, ?3)
         ON CONFLICT (sid) DO UPDATE SET upto = excluded.upto, sealed = excluded.sealed",
        params![cached.sid, cached.upto, snapshot],
    )
    .map_err(sql("writing a snapshot"))?;
    tx.exec("DELETE FROM doc_changes WHERE sid = ?1 AND seq <= ?2", params![cached.sid, cached.upto])
        .map_err(sql("folding the log"))?;
    tx.exec(
        "UPDATE sessions SET snapshot_upto = ?2, snapshot_bytes = ?3, log_count = 0, log_bytes = 0 WHERE sid = ?1",
        params![cached.sid, cached.upto, snapshot.len() as i64],
    )
    .map_err(sql("folding the log"))?;
    Ok(())
}

/// A new session's index row (clear columns only; `card` is sealed, or empty until indexed);
/// returns its row id.
pub(super) fn insert_session_row(
    tx: &Transaction<'_>,
    key: &str,
    view: &SessionView,
    card: &[u8],
    ctx: &'static str,
) -> Result<i64, StoreError> {
    tx.exec(
        "INSERT INTO sessions (id, origin, icb, status, service_line, priority, created_ms, updated_ms, head_seq, card)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9)",
        params![
            key,
            view.identity.origin,
            view.identity.icb,
            view.status.as_str(),
            view.service.line.as_str(),
            view.service.priority.as_str(),
            view.identity.created_ms,
            view.updated_ms(),
            card
        ],
    )
    .map_err(sql(ctx))?;
    Ok(tx.last_insert_rowid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_last_changes_come_from_its_log_exactly_as_the_document_gives_them() {
        let (_dir, mut store) = Store::scratch("amb-1");
        let id = store.scratch_session(1);
        let heads = |store: &mut Store| store.with_doc(id, |d| d.heads()).expect("heads");
        let mut states = vec![heads(&mut store)];
        for i in 0..6 {
            store.scratch_message(id, "amb-1", sync_protocol::vocab::Side::Requester, 1_796_360_402_000 + i);
            states.push(heads(&mut store));
        }
        let hashes = |changes: Vec<automerge::Change>| changes.iter().map(|c| c.hash()).collect::<Vec<_>>();
        let mut bases = states.clone();
        bases.push(Vec::new());
        bases.push(vec![ChangeHash([9; 32])]);
        bases.push(vec![states[6][0], ChangeHash([9; 32])]);
        let mut answered = Vec::new();
        for base in &bases {
            let from_doc = hashes(store.with_doc(id, |d| d.changes_after(base)).expect("doc"));
            let from_log = log_tail_since(&store.conn, &store.sealer, id, base).expect("read");
            if let Some(changes) = from_log {
                assert_eq!(hashes(changes), from_doc, "base {base:?}");
                answered.push(true);
            } else {
                answered.push(false);
            }
        }
        // The last four rows (the last four messages) answer from the log; older bases, the
        // empty base (the creation is five rows back) and unknown changes need the document.
        assert_eq!(answered, [false, false, true, true, true, true, true, false, false, false]);
    }

    #[test]
    fn loading_documents_from_disk_plans_the_log_query_once() {
        let (_dir, mut store) = Store::scratch("amb-1");
        let ids: Vec<SessionId> = (1..=20).map(|n| store.scratch_session(n)).collect();
        store.cache = DocCache::new(store.opts.cache_bytes);
        for id in &ids {
            store.sessions_mut().view(*id).expect("read from disk");
        }
        let stmt = store.conn.prepare_cached(LOG_SINCE).expect("cached");
        assert!(stmt.get_status(rusqlite::StatementStatus::Run) >= 20, "every document's log was read");
        // SQLite may plan a statement again when a value bound to it changes (its planner can
        // look at bound values): for this one, each time, which cost more than the read.
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0, "planned again on a new binding");
    }
}
