//! The file: its SQLite settings, migrations and key check.

use super::*;
use rusqlite::config::DbConfig;

/// The migrations, in order; entry `i` takes the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE sessions (
    sid            INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    origin         TEXT NOT NULL,
    icb            TEXT NOT NULL,
    status         TEXT NOT NULL,
    service_line   TEXT NOT NULL,
    priority       TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL,
    head_seq       INTEGER NOT NULL,
    snapshot_upto  INTEGER NOT NULL DEFAULT 0,
    snapshot_bytes INTEGER NOT NULL DEFAULT 0,
    log_count      INTEGER NOT NULL DEFAULT 0,
    log_bytes      INTEGER NOT NULL DEFAULT 0,
    card           BLOB NOT NULL
);
CREATE INDEX sessions_by_updated ON sessions (updated_ms);
CREATE INDEX sessions_by_status ON sessions (status, service_line);
CREATE TABLE doc_changes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    sid    INTEGER NOT NULL REFERENCES sessions (sid),
    sealed BLOB NOT NULL
);
CREATE INDEX doc_changes_by_session ON doc_changes (sid, seq);
CREATE TABLE doc_snapshots (
    sid    INTEGER PRIMARY KEY REFERENCES sessions (sid),
    upto   INTEGER NOT NULL,
    sealed BLOB NOT NULL
);
CREATE TABLE blobs (
    hash       TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    mime       TEXT NOT NULL,
    chunk_size INTEGER NOT NULL,
    chunks     INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE blob_chunks (
    hash   TEXT NOT NULL,
    idx    INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (hash, idx)
);
CREATE TABLE audit (
    seq    INTEGER PRIMARY KEY,
    at_ms  INTEGER NOT NULL,
    node   TEXT NOT NULL,
    action TEXT NOT NULL,
    sid    INTEGER REFERENCES sessions (sid),
    detail BLOB,
    hash   BLOB NOT NULL
);
"#,
    r#"
ALTER TABLE sessions ADD COLUMN heads BLOB NOT NULL DEFAULT x'';
ALTER TABLE sessions ADD COLUMN digest BLOB NOT NULL DEFAULT x'';
CREATE INDEX sessions_by_head ON sessions (head_seq);
CREATE TABLE session_shares (
    sid  INTEGER NOT NULL REFERENCES sessions (sid),
    node TEXT NOT NULL,
    PRIMARY KEY (sid, node)
) WITHOUT ROWID;
CREATE TABLE session_media (
    sid       INTEGER NOT NULL REFERENCES sessions (sid),
    hash      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    mime      TEXT NOT NULL,
    added_by  TEXT NOT NULL,
    holders   TEXT NOT NULL,
    withdrawn INTEGER NOT NULL,
    PRIMARY KEY (sid, hash)
) WITHOUT ROWID;
CREATE INDEX session_media_by_hash ON session_media (hash);
CREATE TABLE peer_docs (
    peer   TEXT NOT NULL,
    sid    INTEGER NOT NULL REFERENCES sessions (sid),
    digest BLOB NOT NULL,
    heads  BLOB NOT NULL,
    shared BLOB NOT NULL,
    PRIMARY KEY (peer, sid)
) WITHOUT ROWID;
ALTER TABLE blobs ADD COLUMN manifest BLOB;
ALTER TABLE blobs ADD COLUMN state TEXT NOT NULL DEFAULT 'complete';
ALTER TABLE blobs ADD COLUMN thumbnail BLOB;
"#,
    r#"
CREATE TABLE directory (
    icb        TEXT PRIMARY KEY,
    sealed     BLOB NOT NULL,
    heads      BLOB NOT NULL,
    digest     BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE peer_directory (
    peer   TEXT NOT NULL,
    icb    TEXT NOT NULL,
    digest BLOB NOT NULL,
    heads  BLOB NOT NULL,
    shared BLOB NOT NULL,
    PRIMARY KEY (peer, icb)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE change_sigs (
    hash BLOB PRIMARY KEY,
    sig  BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE members (
    prefix     BLOB PRIMARY KEY,
    name       TEXT NOT NULL,
    credential BLOB NOT NULL
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE fp_groups (
    origin TEXT NOT NULL,
    icb    TEXT NOT NULL,
    line   TEXT NOT NULL,
    n      INTEGER NOT NULL,
    fp     BLOB NOT NULL,
    PRIMARY KEY (origin, icb, line)
) WITHOUT ROWID;
CREATE TABLE peer_marks (
    peer  TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    mark  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX session_shares_by_node ON session_shares (node);
CREATE INDEX peer_docs_by_sid ON peer_docs (sid);
"#,
    r#"
CREATE TABLE peer_syncs (
    peer          TEXT PRIMARY KEY,
    last_ok_ms    INTEGER,
    last_error    TEXT,
    last_error_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE users (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL,
    registration TEXT,
    secret       TEXT,
    token_hash   BLOB UNIQUE,
    created_ms   INTEGER NOT NULL,
    disabled     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE api_sessions (
    token_hash BLOB PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE client_keys (
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    request BLOB NOT NULL,
    result  TEXT NOT NULL,
    at_ms   INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
"#,
    // Which peers are hubs: a hub's acknowledged heads say which of this node's messages are at
    // a hub (hubs write no receipt on messages).
    r#"
ALTER TABLE peer_docs ADD COLUMN hub INTEGER NOT NULL DEFAULT 0;
UPDATE peer_docs SET hub = 1 WHERE peer IN (SELECT peer FROM peer_marks WHERE scope LIKE 'Hub|%');
"#,
    // Schema 8: the audit chain's head is kept sealed (`meta.audit_head`). A chain written
    // before gets its head in this step's transaction (`audit::seal_existing_chain`), and an
    // earlier outpost, which would append entries without moving the head, refuses the store.
    "-- the audit chain's sealed head",
    // Schema 9: whether a session holds an open escalation, kept with each version indexed, so
    // that a hub's call router does not read every changed session to find out. NULL (a row
    // indexed before) is not known: the router reads the session. Should what counts as open
    // change (`Router::wants`), a later step sets the column to NULL again.
    r#"
ALTER TABLE sessions ADD COLUMN escalating INTEGER;
"#,
    // Schema 10: who is known to have had a photo's bytes (this node when it attached it, a
    // peer that sent a whole chunk of it), and whether a hub or desk has said it holds a photo
    // for a record. A photo is served, acknowledged and exported for a record only when its
    // writer had the bytes or a hub or desk vouches for it: a hash alone opens nothing. What
    // was held before is trusted as it stood: every record of a photo held whole (or handed
    // on) counts as its writer's. A record is vouched for where a known hub or desk is among
    // its holders (the index is brought up to date whenever its session changes).
    r#"
CREATE TABLE blob_possessors (
    hash TEXT NOT NULL,
    node TEXT NOT NULL,
    PRIMARY KEY (hash, node)
) WITHOUT ROWID;
INSERT OR IGNORE INTO blob_possessors (hash, node)
    SELECT m.hash, m.added_by FROM session_media m JOIN blobs b ON b.hash = m.hash
    WHERE b.state IN ('complete', 'offloaded');
ALTER TABLE session_media ADD COLUMN vouched INTEGER NOT NULL DEFAULT 0;
UPDATE session_media SET vouched = 1 WHERE holders != '' AND EXISTS (
    SELECT 1 FROM peer_docs d WHERE d.hub = 1 AND (',' || session_media.holders || ',') LIKE ('%,' || d.peer || ',%'));
"#,
    // Schema 11: the staff's PIN hashes are sealed under the node's key, bound to whose they
    // are (`people::seal_clear_secrets`, in this step's transaction): a copied store gives no
    // hash to search offline. An earlier outpost, which reads them in the clear, refuses it.
    "-- the staff's secrets sealed",
    // Schema 12: this store's audit chain id (`meta.audit_chain`, made in this step and kept
    // by backups) and each entry's anchor (`audit.anchor`, keyed by a key derived from the
    // node's author seed, made in this step); for each peer its chain, the furthest end of it told and that
    // entry's anchor (`Frame::AuditHead`), the end of theirs found cut back or rewritten
    // (`their_lost`), the end of ours a hub had seen that ours was found short of or different
    // at (`lost`), and the end of ours it last said it had seen (`told`).
    r#"
ALTER TABLE audit ADD COLUMN anchor BLOB;
CREATE TABLE audit_anchors (
    peer         TEXT PRIMARY KEY,
    their_chain  INTEGER NOT NULL,
    their_head   INTEGER NOT NULL,
    their_anchor BLOB NOT NULL,
    their_lost   INTEGER NOT NULL DEFAULT 0,
    lost         INTEGER NOT NULL DEFAULT 0,
    told         INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"#,
    // Schema 13: the audit chain's entries found by action and time (the people flagged for
    // unusual access in the last day, read at every status and metrics scrape). `IF NOT
    // EXISTS`: a store whose user_version was wound back (the migration tests in at_rest.rs,
    // cli.rs and store.rs do) keeps the index, and the step must not fail on it.
    r#"
CREATE INDEX IF NOT EXISTS audit_by_action ON audit (action, at_ms);
"#,
];

/// The schema from which the staff's secrets are sealed.
const SEALED_SECRETS_SCHEMA: i64 = 11;
/// The schema from which a store has an audit chain id.
const AUDIT_CHAIN_SCHEMA: i64 = 12;

/// The schema from which the audit chain's head is sealed.
const AUDIT_HEAD_SCHEMA: i64 = 8;

pub(super) const KEY_CHECK: &[u8] = b"outpost key check";

/// How long a statement waits for another process's lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens and configures the database connection; `alone`: exclusive locking, so that SQLite
/// keeps the WAL index in this process's memory rather than in the `-shm` file beside the
/// database (which a full disk cannot hold).
pub(super) fn configure(path: &Path, alone: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(sql("opening the database"))?;
    conn.set_prepared_statement_cache_capacity(256);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql("setting the busy timeout"))?;
    // One plan per statement, whatever values are bound to it. Without this, SQLite (built with
    // STAT4, as rusqlite's bundled copy is) plans a cached statement such as "a session's log
    // past N, in order" again each time new values are bound: a fresh `outpost sync` planned
    // that query again for every document it loaded, 5% of its CPU. Our statements' plans do
    // not depend on the values (the database holds no statistics to choose between plans by).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(sql("fixing query plans"))?;
    if alone {
        conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE").map_err(sql("opening the store alone"))?;
    }
    // Takes effect only on a new, empty database; freed pages (folded logs, photos deleted
    // once the hub holds them) can then be returned to the file system.
    // (Each is set only when it is not already: setting either takes a lock that another
    // process's long write holds, and a reading command must not wait for it.)
    let pages: i64 = conn.row("PRAGMA page_count", [], |r| r.get(0)).map_err(sql("configuring the database"))?;
    if !alone && pages == 0 {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL").map_err(sql("configuring the database"))?;
    }
    let mut mode: String = conn.row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(sql("enabling WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        mode = conn.row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(sql("enabling WAL"))?;
    }
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Damaged(format!("journal mode is {mode}, WAL is required")));
    }
    // FULL: the WAL is fsynced at every commit, so a returned write survives power loss.
    // The WAL file is cut back to 8 MiB after each checkpoint, so it does not keep the
    // high-water size of a burst of photos.
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA journal_size_limit=8388608;")
        .map_err(sql("setting durability"))?;
    // Up to 16 MiB of pages kept in this process (SQLite's default is 2 MiB): a hub's index
    // and recent logs for ten thousand sessions stay in memory across a sync that touches a
    // thousand of them, instead of being read again from the operating system page by page.
    // The cache grows only as pages are read: a tablet's small database never fills it.
    conn.execute_batch("PRAGMA cache_size=-16384;").map_err(sql("sizing the page cache"))?;
    Ok(conn)
}

/// Brings the database to [`DB_SCHEMA_VERSION`], in one transaction. `sealer` and `node` seal
/// the head of an audit chain written before schema 8 (checked against the store's key first,
/// so a wrong key migrates nothing).
pub(super) fn migrate(
    conn: &mut Connection,
    path: &Path,
    sealer: &Sealer,
    node: &str,
    now: i64,
) -> Result<(), StoreError> {
    // Read first: an open of a current store takes no write lock (it would wait behind a
    // daemon's long write only to find nothing to do), nor does one of a newer store.
    let current: i64 = conn.row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql("reading the schema"))?;
    if current == DB_SCHEMA_VERSION {
        return Ok(());
    }
    if current > DB_SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { path: path.to_path_buf(), found: current });
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a migration"))?;
    let version: i64 = tx.row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql("reading the schema"))?;
    if version > DB_SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { path: path.to_path_buf(), found: version });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(step).map_err(sql("migrating the schema"))?;
        let reached = i as i64 + 1;
        if reached == AUDIT_HEAD_SCHEMA {
            check_key(&tx, sealer)?;
            super::audit::seal_existing_chain(&tx, sealer, node, now)?;
        }
        if reached == SEALED_SECRETS_SCHEMA {
            check_key(&tx, sealer)?;
            // The hashes in the clear are overwritten where they lay, not only freed (a freed
            // cell keeps its bytes in the file until the page is reused).
            tx.execute_batch("PRAGMA secure_delete = ON").map_err(sql("migrating the schema"))?;
            super::people::seal_clear_secrets(&tx, sealer)?;
            // Remembered in the same transaction: a process killed before the rebuild below (or
            // a rebuild stopped by another process) is finished at the next open, not forgotten.
            // Any user row at all may have left a hash in free space (a disabled user's).
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) SELECT 'scrub_pending', X'01' WHERE EXISTS (SELECT 1 FROM users)",
                [],
            )
            .map_err(sql("migrating the schema"))?;
        }
        if reached == AUDIT_CHAIN_SCHEMA {
            check_key(&tx, sealer)?;
            super::audit::anchor_existing_chain(&tx, sealer)?;
            // A chain written before has an id every copy of it derives alike (its first
            // entry's time and this node's name, which no key rotation changes): a pre-upgrade
            // backup restored later is then the same chain, not "a node set up anew" whose cut
            // the hub would not see. A new store's chain gets a random id.
            let first: Option<i64> = tx
                .row("SELECT at_ms FROM audit WHERE seq = 1", [], |r| r.get(0))
                .optional()
                .map_err(sql("migrating the schema"))?;
            let mut id = [0u8; 8];
            match first {
                Some(at) => {
                    let mut h = blake3::Hasher::new();
                    h.update(b"outpost audit chain id v1");
                    h.update(&(node.len() as u64).to_be_bytes());
                    h.update(node.as_bytes());
                    h.update(&at.to_be_bytes());
                    id.copy_from_slice(&h.finalize().as_bytes()[..8]);
                }
                None => crate::crypto::random_bytes(&mut id)
                    .map_err(|e| StoreError::Damaged(format!("no randomness: {e}")))?,
            }
            tx.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('audit_chain', ?1)", [id.to_vec()])
                .map_err(sql("migrating the schema"))?;
        }
        tx.execute_batch(&format!("PRAGMA user_version = {reached}")).map_err(sql("migrating the schema"))?;
    }
    tx.commit().map_err(sql("migrating the schema"))?;
    conn.execute_batch("PRAGMA secure_delete = OFF").map_err(sql("migrating the schema"))?;
    Ok(())
}

/// Runs [`scrub_rebuild`] and [`scrub_checkpoint`] while `meta.scrub_pending` says the staff's old hashes may still
/// lie in free space (`01`: the rebuild is owed) or only in the log (`02`: the rebuild was made,
/// the checkpoint is owed), and clears it once both are done. Called by [`Store::open`] after
/// the key check (a wrong key rebuilds nothing), and not when the store was opened alone on a
/// full disk (a rebuild needs as much room again as the store). A rebuild made once is not made
/// again: beside a daemon that holds reads, only the checkpoint is retried, at each open.
pub(super) fn scrub_if_pending(conn: &Connection) {
    let pending: Option<Vec<u8>> =
        conn.row("SELECT value FROM meta WHERE key = 'scrub_pending'", [], |r| r.get(0)).optional().ok().flatten();
    let Some(pending) = pending else { return };
    let _ = conn.busy_timeout(std::time::Duration::ZERO);
    let rebuilt = pending.as_slice() == [2] || scrub_rebuild(conn);
    let emptied = rebuilt && scrub_checkpoint(conn);
    let _ = match (rebuilt, emptied) {
        (true, true) => conn.execute("DELETE FROM meta WHERE key = 'scrub_pending'", []),
        (true, false) => conn.execute("UPDATE meta SET value = X'02' WHERE key = 'scrub_pending'", []),
        (false, _) => Ok(0),
    };
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
}

/// After the staff's hashes were sealed, the file is rebuilt (`VACUUM`), so that no piece of a
/// hash freed before (a disabled user's, a row moved when a page split) is left in its free
/// space. Another process with the store open (an older daemon) can stop it.
fn scrub_rebuild(conn: &Connection) -> bool {
    match conn.execute_batch("VACUUM") {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "the staff's PIN hashes are sealed, but the store could not be rebuilt ({e}): pieces of the old \
                 hashes may stay in its free space; tried again at the next open"
            );
            false
        }
    }
}

/// The log, which held the pages with the hashes, written back and emptied. A reader in another
/// process stops it (retried at each open, quietly).
fn scrub_checkpoint(conn: &Connection) -> bool {
    let done = conn.row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    match done {
        Ok((0, log, written)) if log == written => true,
        Ok(_) | Err(_) => {
            tracing::debug!("the store's log still holds pages written before the PIN hashes were sealed");
            false
        }
    }
}

pub(super) fn check_key(conn: &Connection, sealer: &Sealer) -> Result<(), StoreError> {
    let stored: Option<Vec<u8>> = conn
        .row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| r.get(0))
        .optional()
        .map_err(sql("checking the node key"))?;
    match stored {
        Some(sealed) => {
            sealer.open("key check", b"meta", &sealed)?;
        }
        None => {
            let sealed = sealer.seal(b"meta", KEY_CHECK)?;
            conn.exec("INSERT INTO meta (key, value) VALUES ('key_check', ?1)", [sealed])
                .map_err(sql("recording the key check"))?;
        }
    }
    Ok(())
}
