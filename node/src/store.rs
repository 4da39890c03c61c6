//! The durable store: session documents, blobs and the audit chain in one SQLite file.
//!
//! - Every write is one `BEGIN IMMEDIATE` transaction committed with `synchronous=FULL` in WAL
//!   mode: when a write method returns `Ok`, its bytes are in the WAL on disk. Nothing is
//!   acknowledged earlier. Two processes writing one node (the daemon and the CLI) are
//!   serialised by SQLite's write lock, and each refreshes its cached document from the log
//!   inside the transaction before editing it, so their changes never conflict.
//! - A session is a snapshot (`doc_snapshots`) plus the changes appended since (`doc_changes`).
//!   When the log outgrows half the snapshot (or holds [`StoreOptions::compact_after`] changes),
//!   the write that grew it also folds it into a new snapshot, in the same transaction: the log
//!   never costs more than the document, and compaction work is amortised over the writes.
//! - Patient data never reaches the file in the clear: changes, snapshots, list cards, blob
//!   chunks and audit details are sealed (see [`crate::crypto`]). Index columns hold only
//!   what the node must query and no patient data: session id, origin node, ICB, status,
//!   service line, priority, times.
//! - Documents are loaded lazily into a cache bounded in bytes (`DocCache`); listing reads the
//!   small sealed cards, never the documents.
//! - Blobs (photos) live outside the documents, content-addressed by BLAKE3, in fixed-size
//!   sealed chunks, so a transfer can resume at any chunk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use automerge::{ActorId, ChangeHash};
use lru::LruCache;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use sync_protocol::authorship::{self, AuthorKey, Member, PublicKey, Roster, Signature};
use sync_protocol::blob;
use sync_protocol::recon::{self, Fingerprint, Item};
use sync_protocol::rules::Limits;
use sync_protocol::session::{ModelError, NewSession, SessionDoc, SessionId, SessionView};
use sync_protocol::vocab::{Channel, Priority, ReceiptLevel, ServiceLine, Side, Status};
use sync_protocol::wire::{DocId, Hash};

use crate::crypto::{CryptoError, Sealer};

mod directory;
pub mod people;
mod rekey;
pub mod space;
mod sync;

pub use rekey::{Resealed, sealed_under};
pub use sync::ScopeRow;

/// `execute` and `query_row` through the connection's prepared-statement cache: the store runs
/// the same few dozen statements for every document it writes, and parsing them again each
/// time cost more than running them.
trait CachedSql {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl CachedSql for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// The environment variable that caps the database at a number of 4 KiB pages: what a full
/// disk looks like, for tests and for deployments that must bound the store.
pub const MAX_PAGES_ENV: &str = "OUTPOST_MAX_DB_PAGES";

/// Database schema version this build writes (`PRAGMA user_version`).
pub const DB_SCHEMA_VERSION: i64 = 6;

/// Tunables of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// How much memory the documents kept decoded may take, in bytes (estimated per document
    /// from its operations: see [`DocCache`]).
    pub cache_bytes: usize,
    /// A session's log is folded into a snapshot once it holds this many changes, even if small.
    pub compact_after: u32,
    /// ... or once it holds this many bytes and at least half as many as the snapshot.
    pub compact_min_bytes: u64,
    /// Bounds on what a peer may make this store check and apply.
    pub limits: Limits,
}

impl Default for StoreOptions {
    fn default() -> Self {
        // 256 MiB of decoded documents: every session of a hub holding ten thousand short ones
        // (about 16 KiB each decoded, measured), so a reconnect finds what it touches decoded; a
        // session with many messages takes more and leaves room for fewer. A log is folded once
        // it holds 64 changes or 8 KiB and half the snapshot: folding re-encodes and compresses
        // the whole document, so it must not follow every message.
        StoreOptions { cache_bytes: 256 << 20, compact_after: 64, compact_min_bytes: 8192, limits: Limits::default() }
    }
}

/// Why a store operation failed. Nothing is acknowledged when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("storage failed while {context}: {source}")]
    Sqlite {
        /// What the store was doing.
        context: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The disk (or the database's size limit) is full.
    #[error("the disk is full while {context}; nothing was written: free some space and try again")]
    DiskFull {
        /// What the store was doing.
        context: &'static str,
    },
    /// No such session.
    #[error("no session {0} on this node; `outpost session list` shows the sessions it holds")]
    NoSuchSession(String),
    /// A prefix that matches several sessions.
    #[error("{0:?} matches more than one session; give more characters of the id")]
    Ambiguous(String),
    /// No such blob.
    #[error("no photo {0} on this node")]
    NoSuchBlob(String),
    /// A photo this edge deleted once the hub confirmed holding it.
    #[error(
        "photo {0} is held at the hub; this device deleted its copy once the hub confirmed it (a thumbnail may remain: --thumbnail)"
    )]
    BlobOffloaded(String),
    /// A blob that is not whole yet.
    #[error("photo {hash} is incomplete on this node: {have} of {total} chunks")]
    BlobIncomplete {
        /// The blob.
        hash: String,
        /// Chunks present.
        have: u64,
        /// Chunks needed.
        total: u64,
    },
    /// Stored bytes that do not match their hash.
    #[error("photo {0} is damaged: its stored bytes do not match its hash")]
    BlobCorrupt(String),
    /// Sealing or opening failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The session model refused an edit, or a stored document is not a session.
    #[error("session {id}: {source}")]
    Model {
        /// The session.
        id: String,
        /// What the model said.
        source: ModelError,
    },
    /// The database was written by a newer outpost.
    #[error(
        "{path} has database schema {found}, newer than this outpost understands ({DB_SCHEMA_VERSION}); upgrade outpost"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
    },
    /// The ICB directory refused an edit, or a stored directory is damaged.
    #[error("the ICB directory: {0}")]
    Directory(#[from] sync_protocol::directory::DirectoryError),
    /// No user of that name.
    #[error("no user {0:?} on this node; `outpost user list` shows them")]
    NoSuchUser(String),
    /// Something that must be unique already exists.
    #[error("{0} already exists")]
    Duplicate(String),
    /// A client key sent again with another request.
    #[error("client key {key:?} was already used for a different {kind}; a new request needs a new key")]
    ClientKeyReused {
        /// What was being created.
        kind: &'static str,
        /// The key.
        key: String,
    },
    /// The database or its contents are not what this build wrote.
    #[error("the store is damaged: {0}")]
    Damaged(String),
    /// SQLite found a corrupt page (a disk fault, a torn copy).
    #[error(
        "the store is damaged: SQLite found a corrupt page while {context}. Keep this directory as it is (it \
         is evidence), and restore the node from its latest backup into a new directory: `outpost restore --from \
         BACKUP --dir NEW_DIR --key-file KEY`; then sync, and the hub sends back what the backup lacks"
    )]
    Corrupt {
        /// What the store was doing.
        context: &'static str,
    },
}

fn sql(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| match source.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::DiskFull { context },
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt { context },
        _ => StoreError::Sqlite { context, source },
    }
}

fn model(id: SessionId) -> impl Fn(ModelError) -> StoreError {
    move |source| StoreError::Model { id: id.to_string(), source }
}

/// The migrations, in order; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
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
];

const KEY_CHECK: &[u8] = b"outpost key check";

/// What a session list shows without loading the document. The index columns give the id,
/// status, service line, priority, origin and times; the rest is sealed in the row's card.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCard {
    /// Session id.
    pub id: SessionId,
    /// Current status.
    pub status: Status,
    /// Specialty.
    pub service_line: ServiceLine,
    /// Priority.
    pub priority: Priority,
    /// Channel.
    pub channel: Channel,
    /// The question.
    pub summary: String,
    /// NHS number, when known.
    pub nhs_number: Option<String>,
    /// Node that created it.
    pub origin: String,
    /// Creation time.
    pub created_ms: i64,
    /// Latest event.
    pub updated_ms: i64,
    /// Number of messages.
    pub messages: usize,
    /// Number of photos.
    pub photos: usize,
    /// Messages and photos that have not yet reached the hub.
    pub on_device_only: usize,
    /// How far the latest message has gone (a reply read by the crew shows `read`).
    pub last_message_receipt: Option<ReceiptLevel>,
    /// Which side wrote the latest message (so an app words its receipt: "at consultant" for
    /// the crew's own message, "reply received" for the consultant's).
    pub last_message_side: Option<Side>,
}

/// The sealed part of a card: what the index columns must not hold.
#[derive(Debug, Serialize, Deserialize)]
struct CardSecret {
    #[serde(rename = "s")]
    summary: String,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    nhs_number: Option<String>,
    #[serde(rename = "c")]
    channel: Channel,
    #[serde(rename = "m")]
    messages: usize,
    #[serde(rename = "p")]
    photos: usize,
    #[serde(rename = "d")]
    on_device_only: usize,
    /// Cards written before schema 6 lack it; it is filled at the session's next write.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    last_message_receipt: Option<ReceiptLevel>,
    /// Cards written before it was kept lack it; it is filled at the session's next write.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    last_message_side: Option<Side>,
}

impl CardSecret {
    fn from_view(v: &SessionView) -> Self {
        CardSecret {
            summary: v.summary.clone(),
            nhs_number: v.patient.nhs_number.clone(),
            channel: v.service.channel,
            messages: v.messages.len(),
            photos: v.media.len(),
            on_device_only: v.messages.iter().filter(|m| m.receipt == ReceiptLevel::Device).count()
                + v.media.iter().filter(|m| m.receipt == ReceiptLevel::Device).count(),
            last_message_receipt: v.messages.last().map(|m| m.receipt),
            last_message_side: v.messages.last().map(|m| m.side),
        }
    }
}

/// A stored blob's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// BLAKE3 hash (hex).
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type.
    pub mime: String,
    /// Chunks it is cut into.
    pub chunks: u64,
    /// Chunks present here.
    pub chunks_present: u64,
    /// `complete`, `partial` (being received) or `offloaded` (deleted here once a hub held it).
    pub state: String,
}

/// Filters for [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this service line.
    pub service_line: Option<ServiceLine>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

/// Counts and sizes for `outpost status`.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Sessions stored.
    pub sessions: u64,
    /// Sessions per status.
    pub by_status: Vec<(String, u64)>,
    /// Document changes not yet folded into snapshots.
    pub log_changes: u64,
    /// Bytes of those changes (sealed).
    pub log_bytes: u64,
    /// Snapshots.
    pub snapshots: u64,
    /// Bytes of snapshots (sealed).
    pub snapshot_bytes: u64,
    /// Blobs (photos).
    pub blobs: u64,
    /// Bytes of blob content.
    pub blob_bytes: u64,
    /// Audit entries.
    pub audit_entries: u64,
    /// Size of the database file.
    pub db_file_bytes: u64,
    /// Size of its write-ahead log.
    pub wal_file_bytes: u64,
    /// Schema version.
    pub schema_version: i64,
}

/// Photos by what this node holds of them.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoHoldings {
    /// Held whole here: count and bytes.
    pub held: (u64, u64),
    /// Being received: count, and bytes of the whole photos.
    pub partial: (u64, u64),
    /// Handed to the hub and deleted here (a thumbnail kept): count and bytes.
    pub offloaded: (u64, u64),
}

/// What has not yet left this device: the crew's main question.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    /// Messages and photos that no other node has confirmed holding.
    pub items: u64,
    /// Sessions holding them.
    pub sessions: u64,
    /// Bytes of this node's photos that no hub has confirmed holding yet.
    pub photo_bytes: u64,
}

/// What this node last knew of its syncs with a peer.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSync {
    /// The peer's name.
    pub peer: String,
    /// When a conversation last reached the point where everything either side may send had
    /// been sent and acknowledged (ms since the epoch).
    pub last_ok_ms: Option<i64>,
    /// The last failure, and when.
    pub last_error: Option<(i64, String)>,
}

/// The result of checking the audit chain.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheck {
    /// Entries checked.
    pub entries: u64,
    /// The first entry whose hash does not follow from its predecessor, if any.
    pub broken_at: Option<u64>,
}

/// One audit entry, opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain.
    pub seq: u64,
    /// When.
    pub at_ms: i64,
    /// Which node (device).
    pub node: String,
    /// What was done.
    pub action: String,
    /// To which session.
    pub session: Option<String>,
    /// Details (ids and codes, never patient data), when the action has any.
    pub detail: Option<serde_json::Value>,
}

struct Cached {
    doc: SessionDoc,
    sid: i64,
    upto: i64,
}

/// Decoded documents kept in memory, least recently used dropped first, within a byte budget.
///
/// A document's memory is estimated from its operations: about 16 KiB for the columns and
/// indexes of even the smallest session, and 64 bytes per operation (both measured on
/// sessions of 1 to 40 messages with glibc's allocator statistics).
pub(crate) struct DocCache {
    docs: LruCache<SessionId, (Cached, usize)>,
    bytes: usize,
    budget: usize,
}

impl DocCache {
    const BASE: usize = 16 << 10;
    const PER_OP: usize = 64;

    fn new(budget: usize) -> Self {
        DocCache { docs: LruCache::unbounded(), bytes: 0, budget }
    }

    fn estimate(c: &Cached) -> usize {
        let ops = usize::try_from(c.doc.ops()).unwrap_or(usize::MAX);
        Self::BASE.saturating_add(ops.saturating_mul(Self::PER_OP))
    }

    /// Takes a document out (to change it; [`DocCache::put`] it back).
    fn pop(&mut self, id: &SessionId) -> Option<Cached> {
        let (c, size) = self.docs.pop(id)?;
        self.bytes -= size;
        Some(c)
    }

    /// Keeps a document, dropping the least recently used beyond the budget (the newest stays).
    fn put(&mut self, id: SessionId, c: Cached) {
        let size = Self::estimate(&c);
        if let Some((_, old)) = self.docs.put(id, (c, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > self.budget && self.docs.len() > 1 {
            match self.docs.pop_lru() {
                Some((_, (_, s))) => self.bytes -= s,
                None => break,
            }
        }
    }
}

/// The index row of a session.
struct Row {
    sid: i64,
    head: i64,
    snapshot_upto: i64,
}

/// The store of one node.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    sealer: Sealer,
    author: AuthorKey,
    actor: ActorId,
    node: String,
    opts: StoreOptions,
    cache: DocCache,
    /// The person acting through the local API, for the audit chain.
    acting: Option<serde_json::Value>,
    /// The fleet members this node knows (from certificates), by actor prefix.
    roster: Roster,
    limits: Limits,
    /// Operations of received changes checked and stored, since the store was opened.
    ops_admitted: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).field("node", &self.node).finish_non_exhaustive()
    }
}

/// Access to the write transaction for work that must commit together with a document edit.
pub struct WriteCtx<'a> {
    tx: &'a Transaction<'a>,
    sealer: &'a Sealer,
    now: i64,
}

impl std::fmt::Debug for WriteCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteCtx").field("now", &self.now).finish_non_exhaustive()
    }
}

/// A caller's key for one create operation (a session, a message), so that a repeat of the
/// request (a retry after a lost response, a double tap on a slow tablet) returns the first
/// result and writes nothing. `request` is a digest of what was asked: the same key with
/// another request is refused, not silently answered with the first result.
#[derive(Debug, Clone, Copy)]
pub struct ClientKey<'a> {
    /// What is created (`session`, `message`).
    pub kind: &'static str,
    /// The caller's key.
    pub key: &'a str,
    /// Digest of the request.
    pub request: [u8; 32],
}

impl ClientKey<'_> {
    /// The result of the first request with this key, if there was one.
    fn recall(&self, tx: &Transaction<'_>) -> Result<Option<String>, StoreError> {
        let row: Option<(Vec<u8>, String)> = tx
            .row(
                "SELECT request, result FROM client_keys WHERE kind = ?1 AND key = ?2",
                params![self.kind, self.key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("reading a client key"))?;
        match row {
            Some((request, result)) if request == self.request => Ok(Some(result)),
            Some(_) => Err(StoreError::ClientKeyReused { kind: self.kind, key: self.key.to_string() }),
            None => Ok(None),
        }
    }

    /// Records the result, in the transaction of the write it names.
    fn remember(&self, tx: &Transaction<'_>, result: &str, now: i64) -> Result<(), StoreError> {
        tx.exec(
            "INSERT INTO client_keys (kind, key, request, result, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![self.kind, self.key, self.request.to_vec(), result, now],
        )
        .map_err(sql("recording a client key"))?;
        Ok(())
    }
}

impl WriteCtx<'_> {
    /// The result of an earlier request with this client key (see [`ClientKey`]); the edit
    /// then changes nothing and returns it.
    pub fn recall(&self, key: &ClientKey<'_>) -> Result<Option<String>, StoreError> {
        key.recall(self.tx)
    }

    /// Records what this edit created under the client key, durable with the edit.
    pub fn remember(&self, key: &ClientKey<'_>, result: &str) -> Result<(), StoreError> {
        key.remember(self.tx, result, self.now)
    }

    /// Stores a blob (if not already stored) in the same transaction as the edit.
    pub fn put_blob(&self, bytes: &[u8], mime: &str) -> Result<BlobInfo, StoreError> {
        put_blob(self.tx, self.sealer, bytes, mime, self.now)
    }

    /// Stores a photo's thumbnail (sealed), kept after the photo itself is offloaded.
    pub fn put_thumbnail(&self, hash: &str, jpeg: &[u8]) -> Result<(), StoreError> {
        let sealed = self.sealer.seal(&thumb_aad(hash), jpeg)?;
        self.tx
            .exec("UPDATE blobs SET thumbnail = ?2 WHERE hash = ?1", params![hash, sealed])
            .map_err(sql("storing a thumbnail"))?;
        Ok(())
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`, migrating it to the current schema and
    /// checking that `sealer` holds this node's key.
    pub fn open(path: &Path, sealer: Sealer, node: &str, opts: StoreOptions) -> Result<Store, StoreError> {
        let low_space = path.exists() && space::release_if_low(path);
        let mut conn = match configure(path, false) {
            Ok(conn) => conn,
            // A full disk: the shared-memory index beside the database cannot be made, so this
            // process keeps it in its own memory instead and holds the database alone while it
            // runs. Reads (and a sync's sending) keep working; a write says the disk is full.
            Err(e)
                if path.exists()
                    && is_full_disk(&e)
                    && space::free_bytes(path).is_some_and(|f| f < space::LOW_SPACE_BYTES) =>
            {
                tracing::warn!("the disk is full: opening the store for this process alone ({e})");
                configure(path, true)?
            }
            Err(e) => return Err(e),
        };
        migrate(&mut conn, path)?;
        rebuild_fp_groups(&mut conn)?;
        check_key(&conn, &sealer)?;
        let author = author_key(&conn, &sealer)?;
        let roster = load_roster(&conn)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            sealer,
            actor: author.actor().clone(),
            author,
            node: node.to_string(),
            opts,
            cache: DocCache::new(opts.cache_bytes),
            acting: None,
            roster,
            limits: opts.limits,
            ops_admitted: 0,
        };
        store.backfill_index()?;
        if let Some(pages) = std::env::var(MAX_PAGES_ENV).ok().and_then(|v| v.parse::<u64>().ok()) {
            store.limit_pages(pages)?;
        }
        if !low_space {
            space::keep_reserve(path);
        }
        Ok(store)
    }

    /// Fills the index columns added by schema 2 (heads, digest, shares, photos) for sessions
    /// written by schema 1. Runs once: afterwards no row has an empty digest.
    fn backfill_index(&mut self) -> Result<(), StoreError> {
        // Once done, never again: the scan reads every session row, at every open.
        if self.meta_get("index_filled")?.is_some() {
            return Ok(());
        }
        let ids: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id FROM sessions WHERE length(digest) = 0")
                .map_err(sql("finding sessions to index"))?;
            stmt.query_map([], |r| r.get(0))
                .map_err(sql("finding sessions to index"))?
                .collect::<Result<_, _>>()
                .map_err(sql("finding sessions to index"))?
        };
        for key in ids {
            let id: SessionId = key.parse().map_err(|_| StoreError::Damaged(format!("session id {key:?}")))?;
            let tx =
                self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
            let mut cached = checkout(&mut self.cache, &tx, &self.sealer, &self.actor, id)?;
            let view = cached.doc.view().map_err(model(id))?;
            index_doc(&tx, &self.sealer, &key, cached.sid, &mut cached.doc, &view)?;
            tx.commit().map_err(sql("committing"))?;
            self.cache.put(id, cached);
        }
        self.meta_put("index_filled", b"1")
    }

    /// The public half of this node's author key, for the fleet CA to certify.
    pub fn author_public(&self) -> PublicKey {
        self.author.public()
    }

    /// The actor id this node writes under.
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    /// Signs a change hash with this node's author key (what every local write does; exposed for
    /// tools and for the adversarial tests, which play a stolen tablet).
    pub fn sign(&self, hash: &ChangeHash) -> Signature {
        self.author.sign(hash)
    }

    /// Records a fleet member whose credential was checked (its certificate came over TLS, or
    /// was verified against the fleet CA).
    pub fn add_member(&mut self, member: Member, credential: &[u8]) -> Result<(), StoreError> {
        if self.roster.get(&member.prefix()).is_some_and(|m| *m == member) {
            return Ok(());
        }
        self.conn
            .exec(
                "INSERT OR REPLACE INTO members (prefix, name, credential) VALUES (?1, ?2, ?3)",
                params![member.prefix().to_vec(), member.info.name, credential],
            )
            .map_err(sql("recording a fleet member"))?;
        self.roster.insert(member);
        Ok(())
    }

    /// The name and credential of the member whose changes carry this actor prefix.
    pub fn credential(&self, prefix: &authorship::ActorPrefix) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.conn
            .row("SELECT name, credential FROM members WHERE prefix = ?1", [prefix.to_vec()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(sql("reading fleet members"))
    }

    /// Operations of received changes checked and stored since the store was opened: what peers
    /// made this node work for (the daemon budgets it per peer).
    pub fn ops_admitted(&self) -> u64 {
        self.ops_admitted
    }

    /// The signature held for a change.
    pub fn signature(&self, hash: &ChangeHash) -> Result<Option<Signature>, StoreError> {
        let sig: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT sig FROM change_sigs WHERE hash = ?1")
            .and_then(|mut s| s.query_row([hash.0.to_vec()], |r| r.get(0)).optional())
            .map_err(sql("reading signatures"))?;
        Ok(sig.and_then(|s| s.try_into().ok()))
    }

    /// Caps the database at `pages` pages (of 4 KiB), so a test can make the disk "full".
    pub fn limit_pages(&self, pages: u64) -> Result<(), StoreError> {
        self.conn
            .row(&format!("PRAGMA max_page_count={pages}"), [], |_| Ok(()))
            .map_err(sql("limiting the database size"))
    }

    /// Creates a session; returns once it is durable.
    pub fn create_session(
        &mut self,
        new: &NewSession,
        once: Option<&ClientKey<'_>>,
        now: i64,
    ) -> Result<SessionView, StoreError> {
        self.check_space()?;
        let mut doc = SessionDoc::create(new, self.actor.clone(), now).map_err(model(new.id))?;
        let view = doc.view().map_err(model(new.id))?;
        let id = new.id.to_string();
        let card = seal_card(&self.sealer, &id, &view)?;
        let bytes = doc.save_after(&[]);
        let tx =
            self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
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
        tx.exec(
            "INSERT INTO sessions (id, origin, icb, status, service_line, priority, created_ms, updated_ms, head_seq, card)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9)",
            params![
                id,
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
        .map_err(sql("recording the session"))?;
        let sid = tx.last_insert_rowid();
        let seq = append_change(&tx, &self.sealer, sid, &id, &bytes)?;
        put_sigs(&tx, authorship::sign_new(&self.author, doc.automerge(), &[]))?;
        index_doc(&tx, &self.sealer, &id, sid, &mut doc, &view)?;
        append_audit(&tx, &self.sealer, &self.node, now, "session.create", Some(sid), by(&self.acting, None))?;
        tx.commit().map_err(sql("committing"))?;
        self.cache.put(new.id, Cached { doc, sid, upto: seq });
        Ok(view)
    }

    /// Finds the session whose id is `text` or starts with it.
    pub fn resolve(&self, text: &str) -> Result<SessionId, StoreError> {
        let prefix = text.trim().to_ascii_uppercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(StoreError::NoSuchSession(text.to_string()));
        }
        let mut stmt = self
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
        // New content waits for space; small control writes (receipts, call steps, outcomes)
        // go on within the space kept for reading and syncing.
        if space::GROWING_ACTIONS.contains(&action) {
            self.check_space()?;
        }
        let key = id.to_string();
        let tx =
            self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
        let mut cached = checkout(&mut self.cache, &tx, &self.sealer, &self.actor, id)?;
        let before = cached.doc.heads();
        let mut ctx = WriteCtx { tx: &tx, sealer: &self.sealer, now };
        // On any error the checked-out copy is dropped (it may hold the failed edit), and the
        // transaction rolls back when `tx` is dropped.
        let out = f(&mut ctx, &mut cached.doc)?;
        if cached.doc.heads() != before {
            let bytes = cached.doc.save_after(&before);
            let view = cached.doc.view().map_err(model(id))?;
            let seq = append_change(&tx, &self.sealer, cached.sid, &key, &bytes)?;
            put_sigs(&tx, authorship::sign_new(&self.author, cached.doc.automerge(), &before))?;
            index_doc(&tx, &self.sealer, &key, cached.sid, &mut cached.doc, &view)?;
            let counts = log_counts(&tx, cached.sid)?;
            cached.upto = seq;
            maybe_compact(&tx, &self.sealer, &self.opts, &key, &mut cached, counts)?;
            append_audit(&tx, &self.sealer, &self.node, now, action, Some(cached.sid), by(&self.acting, detail))?;
        }
        tx.commit().map_err(sql("committing"))?;
        self.cache.put(id, cached);
        Ok(out)
    }

    /// The person acting through this store until cleared (the local API sets it around each
    /// request): named, with role and registration, in every audit entry written meanwhile.
    pub fn set_acting(&mut self, who: Option<&people::Person>) {
        self.acting = who.map(people::person_json);
    }

    /// Records in the audit chain that a session was viewed or exported.
    pub fn audit_access(&mut self, id: SessionId, action: &'static str, now: i64) -> Result<(), StoreError> {
        let tx =
            self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
        let row = session_row(&tx, &id.to_string())?;
        append_audit(&tx, &self.sealer, &self.node, now, action, Some(row.sid), by(&self.acting, None))?;
        tx.commit().map_err(sql("committing"))
    }

    /// A session's routing log, read without building its whole view.
    pub fn routing_log(
        &mut self,
        id: SessionId,
    ) -> Result<Vec<std::collections::BTreeMap<String, sync_protocol::session::LogValue>>, StoreError> {
        self.with_doc(id, |d| d.routing_log())?.map_err(model(id))
    }

    /// The session's call log (each party's record of its legs).
    pub fn call_log(
        &mut self,
        id: SessionId,
    ) -> Result<Vec<std::collections::BTreeMap<String, sync_protocol::session::LogValue>>, StoreError> {
        self.with_doc(id, |d| d.call_log())?.map_err(model(id))
    }

    fn with_doc<T>(&mut self, id: SessionId, f: impl FnOnce(&mut SessionDoc) -> T) -> Result<T, StoreError> {
        let tx = self.conn.transaction().map_err(sql("starting a read"))?;
        let mut cached = checkout(&mut self.cache, &tx, &self.sealer, &self.actor, id)?;
        drop(tx);
        let out = f(&mut cached.doc);
        self.cache.put(id, cached);
        Ok(out)
    }

    /// The current view of a session.
    pub fn view(&mut self, id: SessionId) -> Result<SessionView, StoreError> {
        self.with_doc(id, |d| d.view())?.map_err(model(id))
    }

    /// The whole document as Automerge bytes.
    pub fn export_automerge(&mut self, id: SessionId) -> Result<Vec<u8>, StoreError> {
        self.with_doc(id, |d| d.save())
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
            "SELECT id, status, service_line, priority, origin, created_ms, updated_ms, card FROM sessions {} {}
             ORDER BY updated_ms DESC, id DESC LIMIT {limit}",
            if wheres.is_empty() { "" } else { "WHERE" },
            wheres.join(" AND "),
        );
        let mut stmt = self.conn.prepare_cached(&query).map_err(sql(ctx))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter())).map_err(sql(ctx))?;
        let damaged = |what: &str, value: String| StoreError::Damaged(format!("a session's {what} reads {value:?}"));
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql(ctx))? {
            let id: String = row.get(0).map_err(sql(ctx))?;
            let text = |i: usize| row.get::<_, String>(i).map_err(sql(ctx));
            let sealed: Vec<u8> = row.get(7).map_err(sql(ctx))?;
            let secret: CardSecret =
                serde_json::from_slice(&self.sealer.open("session card", &card_aad(&id), &sealed)?).map_err(json)?;
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
            });
        }
        Ok(out)
    }

    /// Number of sessions stored.
    pub fn session_count(&self) -> Result<u64, StoreError> {
        self.conn
            .row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(sql("counting sessions"))
    }

    /// Describes a stored blob.
    pub fn blob_info(&self, hash: &str) -> Result<BlobInfo, StoreError> {
        blob_info(&self.conn, hash)
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
            .conn
            .prepare_cached("SELECT idx, sealed FROM blob_chunks WHERE hash = ?1 ORDER BY idx")
            .map_err(sql("reading a photo"))?;
        let mut rows = stmt.query([hash]).map_err(sql("reading a photo"))?;
        let mut out = Vec::with_capacity(info.size as usize);
        while let Some(row) = rows.next().map_err(sql("reading a photo"))? {
            let idx = row.get::<_, i64>(0).map_err(sql("reading a photo"))? as u64;
            let sealed: Vec<u8> = row.get(1).map_err(sql("reading a photo"))?;
            out.extend_from_slice(&self.sealer.open("photo chunk", &chunk_aad(hash, idx), &sealed)?);
        }
        if blake3::hash(&out).to_hex().as_str() != hash {
            return Err(StoreError::BlobCorrupt(hash.to_string()));
        }
        Ok(out)
    }

    /// A photo's thumbnail, if one was kept.
    pub fn read_thumbnail(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .row("SELECT thumbnail FROM blobs WHERE hash = ?1", [hash], |r| r.get(0))
            .optional()
            .map_err(sql("reading a thumbnail"))?
            .flatten();
        let sealed = sealed.ok_or_else(|| StoreError::NoSuchBlob(format!("{hash} (thumbnail)")))?;
        Ok(self.sealer.open("thumbnail", &thumb_aad(hash), &sealed)?)
    }

    /// Sessions that reference a photo.
    pub fn sessions_with_photo(&self, hash: &str) -> Result<Vec<SessionId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT s.id FROM session_media m JOIN sessions s ON s.sid = m.sid WHERE m.hash = ?1")
            .map_err(sql("finding a photo's sessions"))?;
        let ids: Vec<String> = stmt
            .query_map([hash], |r| r.get(0))
            .map_err(sql("finding a photo's sessions"))?
            .collect::<Result<_, _>>()
            .map_err(sql("finding a photo's sessions"))?;
        Ok(ids.iter().filter_map(|i| i.parse().ok()).collect())
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let q = |sql_text: &str| -> Result<(u64, u64), StoreError> {
            self.conn
                .row(sql_text, [], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64))
                })
                .map_err(sql("measuring the store"))
        };
        let (sessions, _) = q("SELECT count(*), 0 FROM sessions")?;
        let (log_changes, log_bytes) = q("SELECT count(*), sum(length(sealed)) FROM doc_changes")?;
        let (snapshots, snapshot_bytes) = q("SELECT count(*), sum(length(sealed)) FROM doc_snapshots")?;
        let (blobs, blob_bytes) = q("SELECT count(*), sum(size) FROM blobs")?;
        let (audit_entries, _) = q("SELECT count(*), 0 FROM audit")?;
        let mut stmt = self
            .conn
            .prepare("SELECT status, count(*) FROM sessions GROUP BY status ORDER BY status")
            .map_err(sql("measuring the store"))?;
        let by_status = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(sql("measuring the store"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("measuring the store"))?;
        let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        Ok(StoreStats {
            sessions,
            by_status,
            log_changes,
            log_bytes,
            snapshots,
            snapshot_bytes,
            blobs,
            blob_bytes,
            audit_entries,
            db_file_bytes: size(self.path.clone()),
            wal_file_bytes: size(wal_path(&self.path)),
            schema_version: DB_SCHEMA_VERSION,
        })
    }

    /// Photos by what this node holds of them.
    pub fn photo_holdings(&self) -> Result<PhotoHoldings, StoreError> {
        let mut out = PhotoHoldings::default();
        let mut stmt = self
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

    /// What has not yet left this device (`me` is this node's name): items counted from the
    /// sessions' cards, bytes from this node's photos still held whole (an edge deletes a
    /// photo once a hub confirms holding it).
    pub fn backlog(&self, me: &str) -> Result<Backlog, StoreError> {
        let mut out = Backlog::default();
        for card in self.list(&ListFilter::default())? {
            if card.on_device_only > 0 {
                out.items += card.on_device_only as u64;
                out.sessions += 1;
            }
        }
        out.photo_bytes = self
            .conn
            .row(
                "SELECT coalesce(sum(b.size), 0) FROM blobs b WHERE b.state = 'complete' AND EXISTS
                 (SELECT 1 FROM session_media m WHERE m.hash = b.hash AND m.added_by = ?1 AND m.withdrawn = 0
                  AND m.holders = '')",
                [me],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql("measuring the backlog"))? as u64;
        Ok(out)
    }

    /// Records how a conversation with `peer` went: `Ok` once everything either side may send
    /// has been sent and acknowledged, `Err` with why it failed.
    pub fn record_sync(&self, peer: &str, outcome: Result<(), &str>, now: i64) -> Result<(), StoreError> {
        let ctx = "recording a sync";
        match outcome {
            Ok(()) => self.conn.exec(
                "INSERT INTO peer_syncs (peer, last_ok_ms) VALUES (?1, ?2)
                 ON CONFLICT (peer) DO UPDATE SET last_ok_ms = excluded.last_ok_ms",
                params![peer, now],
            ),
            Err(why) => self.conn.exec(
                "INSERT INTO peer_syncs (peer, last_error, last_error_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (peer) DO UPDATE SET last_error = excluded.last_error, last_error_ms = excluded.last_error_ms",
                params![peer, why, now],
            ),
        }
        .map_err(sql(ctx))?;
        Ok(())
    }

    /// What this node last knew of its syncs with each peer, by name.
    pub fn peer_syncs(&self) -> Result<Vec<PeerSync>, StoreError> {
        let ctx = "reading sync history";
        let mut stmt = self
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

    /// Walks the audit chain and reports the first broken link.
    pub fn verify_audit(&self) -> Result<AuditCheck, StoreError> {
        let ctx = "reading the audit chain";
        let mut stmt = self
            .conn
            .prepare("SELECT seq, at_ms, node, action, sid, detail, hash FROM audit ORDER BY seq")
            .map_err(sql(ctx))?;
        let mut rows = stmt.query([]).map_err(sql(ctx))?;
        let mut prev = [0u8; 32].to_vec();
        let mut entries = 0;
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
            prev = hash;
        }
        Ok(AuditCheck { entries, broken_at: None })
    }

    /// The latest `limit` audit entries, opened, oldest first.
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let ctx = "reading the audit chain";
        let mut stmt = self
            .conn
            .prepare(
                "SELECT a.seq, a.at_ms, a.node, a.action, s.id, a.detail FROM audit a
                 LEFT JOIN sessions s ON s.sid = a.sid ORDER BY a.seq DESC LIMIT ?1",
            )
            .map_err(sql(ctx))?;
        let mut rows = stmt.query([limit as i64]).map_err(sql(ctx))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(sql(ctx))? {
            let seq = r.get::<_, i64>(0).map_err(sql(ctx))? as u64;
            let sealed: Option<Vec<u8>> = r.get(5).map_err(sql(ctx))?;
            let detail = match sealed {
                Some(s) => Some(
                    serde_json::from_slice(&self.sealer.open("audit detail", &audit_aad(seq), &s)?).map_err(json)?,
                ),
                None => None,
            };
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

    /// Folds every session's log into a snapshot, checkpoints the WAL into the database file
    /// and returns free pages to the file system. Returns the number of sessions folded.
    pub fn compact_all(&mut self) -> Result<u64, StoreError> {
        let ids: Vec<String> = {
            let mut stmt =
                self.conn.prepare("SELECT id FROM sessions WHERE log_count > 0").map_err(sql("listing logs"))?;
            stmt.query_map([], |r| r.get(0))
                .map_err(sql("listing logs"))?
                .collect::<Result<_, _>>()
                .map_err(sql("listing logs"))?
        };
        let mut n = 0;
        for key in ids {
            let id: SessionId = key.parse().map_err(|_| StoreError::Damaged(format!("session id {key:?}")))?;
            let tx =
                self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a write"))?;
            let mut cached = checkout(&mut self.cache, &tx, &self.sealer, &self.actor, id)?;
            compact(&tx, &self.sealer, &key, &mut cached)?;
            tx.commit().map_err(sql("committing"))?;
            self.cache.put(id, cached);
            n += 1;
        }
        self.conn.execute_batch("PRAGMA incremental_vacuum").map_err(sql("returning free pages"))?;
        self.checkpoint()?;
        Ok(n)
    }

    /// Copies the WAL into the database file and truncates it.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn.row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(sql("checkpointing the WAL"))
    }

    /// Bytes of the database file and its write-ahead log on disk.
    pub fn file_bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        size(&self.path) + size(Path::new(&wal))
    }

    /// Runs SQLite's integrity check; `Ok(())` when it reports "ok".
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        let ctx = "checking integrity";
        let mut stmt = self.conn.prepare("PRAGMA integrity_check(20)").map_err(sql(ctx))?;
        let lines: Vec<String> =
            stmt.query_map([], |r| r.get(0)).map_err(sql(ctx))?.collect::<Result<_, _>>().map_err(sql(ctx))?;
        if lines.len() == 1 && lines[0] == "ok" {
            return Ok(());
        }
        Err(StoreError::Damaged(format!(
            "SQLite's integrity check found {}{}: {}. Keep this directory as it is, and restore the node from its \
             latest backup into a new directory: `outpost restore --from BACKUP --dir NEW_DIR --key-file KEY`",
            lines.len(),
            if lines.len() >= 20 { " or more problems" } else { " problem(s)" },
            lines.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        )))
    }

    /// A consistent, still-sealed copy of the store in a new file (`VACUUM INTO`): one read
    /// transaction, so a daemon writing meanwhile neither waits long nor tears the copy.
    pub fn backup_into(&self, path: &Path) -> Result<(), StoreError> {
        let target = path.to_str().ok_or_else(|| StoreError::Damaged(format!("{} is not UTF-8", path.display())))?;
        self.conn.execute("VACUUM INTO ?1", [target]).map_err(sql("copying the store"))?;
        Ok(())
    }
}

fn json(e: serde_json::Error) -> StoreError {
    StoreError::Damaged(format!("a stored record is not valid JSON: {e}"))
}

/// The WAL beside a database file.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Opens and configures the database connection; `alone`: exclusive locking, so that SQLite
/// keeps the WAL index in this process's memory rather than in the `-shm` file beside the
/// database (which a full disk cannot hold).
fn configure(path: &Path, alone: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(sql("opening the database"))?;
    conn.set_prepared_statement_cache_capacity(256);
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(sql("setting the busy timeout"))?;
    if alone {
        conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE").map_err(sql("opening the store alone"))?;
    }
    // Takes effect only on a new, empty database; freed pages (folded logs, photos deleted
    // once the hub holds them) can then be returned to the file system.
    if !alone {
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL").map_err(sql("configuring the database"))?;
    }
    let mode: String = conn.row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(sql("enabling WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Damaged(format!("journal mode is {mode}, WAL is required")));
    }
    // FULL: the WAL is fsynced at every commit, so a returned write survives power loss.
    // The WAL file is cut back to 8 MiB after each checkpoint, so it does not keep the
    // high-water size of a burst of photos.
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA journal_size_limit=8388608;")
        .map_err(sql("setting durability"))?;
    Ok(conn)
}

/// Whether an error is the file system refusing space (directly, or as SQLite's failure to
/// size its shared-memory index or write its log).
fn is_full_disk(e: &StoreError) -> bool {
    match e {
        StoreError::DiskFull { .. } => true,
        StoreError::Sqlite { source, .. } => matches!(
            source,
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == ErrorCode::SystemIoFailure || f.code == ErrorCode::CannotOpen
        ),
        _ => false,
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql("starting a migration"))?;
    let version: i64 = tx.row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql("reading the schema"))?;
    if version > DB_SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { path: path.to_path_buf(), found: version });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(step).map_err(sql("migrating the schema"))?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1)).map_err(sql("migrating the schema"))?;
    }
    tx.commit().map_err(sql("migrating the schema"))
}

fn check_key(conn: &Connection, sealer: &Sealer) -> Result<(), StoreError> {
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

const AUTHOR_AAD: &[u8] = b"outpost/author-key/v1";

/// The node's author key: made on first open (a seed sealed under the node key). The actor id
/// it writes under takes a fresh random instance at every open: a store restored from an older
/// copy (a backup, a re-imaged desk) must never reuse a sequence number of the changes it lost,
/// which its peers still hold and would refuse to merge with a different change of the same
/// number.
fn author_key(conn: &Connection, sealer: &Sealer) -> Result<AuthorKey, StoreError> {
    let sealed: Option<Vec<u8>> = conn
        .row("SELECT value FROM meta WHERE key = 'author_seed'", [], |r| r.get(0))
        .optional()
        .map_err(sql("reading the author key"))?;
    let seed = match sealed {
        Some(sealed) => {
            let seed = sealer.open("author key", AUTHOR_AAD, &sealed)?;
            seed.try_into().map_err(|_| StoreError::Damaged("the author key has the wrong length".into()))?
        }
        None => {
            let mut seed = [0u8; 32];
            crate::crypto::random_bytes(&mut seed)?;
            let sealed = sealer.seal(AUTHOR_AAD, &seed)?;
            conn.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('author_seed', ?1)", params![sealed])
                .map_err(sql("recording the author key"))?;
            seed
        }
    };
    let mut instance = [0u8; 8];
    crate::crypto::random_bytes(&mut instance)?;
    Ok(AuthorKey::from_seed(&seed, instance))
}

fn load_roster(conn: &Connection) -> Result<Roster, StoreError> {
    let mut roster = Roster::new();
    let mut stmt = conn.prepare("SELECT credential FROM members").map_err(sql("reading fleet members"))?;
    let creds: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .map_err(sql("reading fleet members"))?
        .collect::<Result<_, _>>()
        .map_err(sql("reading fleet members"))?;
    for der in creds {
        // Stored only after it was checked; a damaged row is skipped, not trusted.
        if let Ok(m) = crate::tls::member_of(&rustls::pki_types::CertificateDer::from(der)) {
            roster.insert(m);
        }
    }
    Ok(roster)
}

/// Records signatures of changes (this node's own, or received and checked).
fn put_sigs(tx: &Transaction<'_>, sigs: impl IntoIterator<Item = (ChangeHash, Signature)>) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached("INSERT OR IGNORE INTO change_sigs (hash, sig) VALUES (?1, ?2)")
        .map_err(sql("recording signatures"))?;
    for (h, sig) in sigs {
        stmt.execute(params![h.0.to_vec(), sig.to_vec()]).map_err(sql("recording signatures"))?;
    }
    Ok(())
}

fn change_aad(id: &str) -> Vec<u8> {
    [b"outpost/change/v1/".as_slice(), id.as_bytes()].concat()
}
fn snapshot_aad(id: &str) -> Vec<u8> {
    [b"outpost/snapshot/v1/".as_slice(), id.as_bytes()].concat()
}
fn card_aad(id: &str) -> Vec<u8> {
    [b"outpost/card/v1/".as_slice(), id.as_bytes()].concat()
}
fn chunk_aad(hash: &str, idx: u64) -> Vec<u8> {
    [b"outpost/chunk/v1/".as_slice(), hash.as_bytes(), b"/", &idx.to_be_bytes()].concat()
}
fn thumb_aad(hash: &str) -> Vec<u8> {
    [b"outpost/thumbnail/v1/".as_slice(), hash.as_bytes()].concat()
}
fn audit_aad(seq: u64) -> Vec<u8> {
    [b"outpost/audit/v1/".as_slice(), &seq.to_be_bytes()].concat()
}

fn seal_card(sealer: &Sealer, id: &str, view: &SessionView) -> Result<Vec<u8>, StoreError> {
    let plain = serde_json::to_vec(&CardSecret::from_view(view)).map_err(json)?;
    Ok(sealer.seal(&card_aad(id), &plain)?)
}

/// Heads as stored: sorted 32-byte hashes, concatenated.
fn heads_blob(heads: &[Hash]) -> Vec<u8> {
    let mut sorted = heads.to_vec();
    sorted.sort();
    sorted.concat()
}

/// What a peer holds, from a row of `heads, shared` (per-peer knowledge of a document).
fn knowledge_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<sync_protocol::engine::Knowledge> {
    Ok(sync_protocol::engine::Knowledge {
        heads: heads_from_blob(&r.get::<_, Vec<u8>>(0)?),
        shared: heads_from_blob(&r.get::<_, Vec<u8>>(1)?),
    })
}

/// Heads from their stored form.
fn heads_from_blob(b: &[u8]) -> Vec<Hash> {
    b.chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect()
}

fn doc_heads(doc: &mut SessionDoc) -> Vec<Hash> {
    let mut h: Vec<Hash> = doc.heads().into_iter().map(|c| c.0).collect();
    h.sort();
    h
}

/// Brings a session's clear index columns and side tables up to date with its document:
/// status, line, priority, times, the sealed card, heads and their digest, shares, media.
fn index_doc(
    tx: &Transaction<'_>,
    sealer: &Sealer,
    key: &str,
    sid: i64,
    doc: &mut SessionDoc,
    view: &SessionView,
) -> Result<(), StoreError> {
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
        if let Ok(old) = <[u8; 16]>::try_from(&old_digest[..]) {
            fp_group_change(
                tx,
                (&origin, &icb, &old_line),
                -1,
                &Fingerprint::of(&Item { id: id.to_bytes(), digest: old }),
            )?;
        }
        fp_group_change(tx, (&origin, &icb, line), 1, &Fingerprint::of(&Item { id: id.to_bytes(), digest }))?;
    }
    tx.exec(
        "UPDATE sessions SET status = ?2, service_line = ?3, priority = ?4, updated_ms = ?5, card = ?6,
         heads = ?7, digest = ?8 WHERE sid = ?1",
        params![
            sid,
            view.status.as_str(),
            view.service.line.as_str(),
            view.service.priority.as_str(),
            view.updated_ms(),
            card,
            heads_blob(&heads),
            digest.to_vec()
        ],
    )
    .map_err(sql("updating the session index"))?;
    for node in &view.shared_with {
        tx.exec("INSERT OR IGNORE INTO session_shares (sid, node) VALUES (?1, ?2)", params![sid, node])
            .map_err(sql("indexing shares"))?;
    }
    for m in &view.media {
        let holders: Vec<&str> =
            m.receipts.iter().filter(|r| r.level >= ReceiptLevel::Hub).map(|r| r.node.as_str()).collect();
        tx.exec(
            "INSERT INTO session_media (sid, hash, size, mime, added_by, holders, withdrawn) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (sid, hash) DO UPDATE SET holders = excluded.holders, withdrawn = excluded.withdrawn",
            params![sid, m.hash, m.size as i64, m.mime, m.added_by, holders.join(","), m.consent_withdrawn],
        )
        .map_err(sql("indexing photos"))?;
    }
    Ok(())
}

fn sid_bytes(key: &str) -> Result<DocId, StoreError> {
    key.parse::<SessionId>().map(|s| s.to_bytes()).map_err(|_| StoreError::Damaged(format!("session id {key:?}")))
}

/// Adds (`n` = 1) or takes away (`n` = -1) one session's item in the fingerprint of its scope
/// group (origin, ICB, service line): the sums a Summary needs, kept up to date per write.
fn fp_group_change(
    tx: &Transaction<'_>,
    (origin, icb, line): (&str, &str, &str),
    n: i64,
    item: &Fingerprint,
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
    let fp = if n > 0 { fp.add(item) } else { fp.sub(item) };
    tx.exec(
        "INSERT INTO fp_groups (origin, icb, line, n, fp) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (origin, icb, line) DO UPDATE SET n = excluded.n, fp = excluded.fp",
        params![origin, icb, line, count + n, fp.to_bytes().to_vec()],
    )
    .map_err(sql(ctx))?;
    Ok(())
}

/// Rebuilds the per-group fingerprints from the index (once, when the table is new).
fn rebuild_fp_groups(conn: &mut Connection) -> Result<(), StoreError> {
    let ctx = "building the reconciliation sums";
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql(ctx))?;
    let built: bool =
        tx.row("SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'fp_groups')", [], |r| r.get(0)).map_err(sql(ctx))?;
    if built {
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

fn log_counts(tx: &Transaction<'_>, sid: i64) -> Result<(i64, i64, i64), StoreError> {
    tx.row("SELECT log_count, log_bytes, snapshot_bytes FROM sessions WHERE sid = ?1", [sid], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .map_err(sql("reading the session log size"))
}

/// Folds the log into a snapshot when it outgrows half the snapshot or holds too many changes.
fn maybe_compact(
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

fn session_row(tx: &Transaction<'_>, id: &str) -> Result<Row, StoreError> {
    tx.row("SELECT sid, head_seq, snapshot_upto FROM sessions WHERE id = ?1", [id], |r| {
        Ok(Row { sid: r.get(0)?, head: r.get(1)?, snapshot_upto: r.get(2)? })
    })
    .optional()
    .map_err(sql("loading a session"))?
    .ok_or_else(|| StoreError::NoSuchSession(id.to_string()))
}

/// Takes a session's document out of the cache (or loads it) and brings it up to date with
/// what other processes have committed: their new changes, or the snapshot that folded them.
fn checkout(
    cache: &mut DocCache,
    tx: &Transaction<'_>,
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
    let mut stmt = tx
        .prepare_cached("SELECT sealed FROM doc_changes WHERE sid = ?1 AND seq > ?2 ORDER BY seq")
        .map_err(sql("loading changes"))?;
    let mut rows = stmt.query(params![row.sid, upto]).map_err(sql("loading changes"))?;
    while let Some(r) = rows.next().map_err(sql("loading changes"))? {
        let sealed: Vec<u8> = r.get(0).map_err(sql("loading changes"))?;
        bytes.extend(sealer.open("document change", &change_aad(&key), &sealed)?);
    }
    match cached.as_mut() {
        Some(c) => c.doc.apply_bytes(&bytes).map_err(model(id))?,
        None => {
            cached =
                Some(Cached { doc: SessionDoc::load(&bytes, actor.clone()).map_err(model(id))?, sid: row.sid, upto: 0 })
        }
    }
    let mut c = cached.ok_or_else(|| StoreError::Damaged(format!("session {key} has no document")))?;
    c.upto = row.head;
    Ok(c)
}

fn append_change(tx: &Transaction<'_>, sealer: &Sealer, sid: i64, key: &str, bytes: &[u8]) -> Result<i64, StoreError> {
    let sealed = sealer.seal(&change_aad(key), bytes)?;
    tx.exec("INSERT INTO doc_changes (sid, sealed) VALUES (?1, ?2)", params![sid, sealed])
        .map_err(sql("appending a change"))?;
    let seq = tx.last_insert_rowid();
    tx.exec(
        "UPDATE sessions SET head_seq = ?2, log_count = log_count + 1, log_bytes = log_bytes + ?3 WHERE sid = ?1",
        params![sid, seq, sealed.len() as i64],
    )
    .map_err(sql("appending a change"))?;
    Ok(seq)
}

/// Replaces a session's log with a snapshot of the whole document.
fn compact(tx: &Transaction<'_>, sealer: &Sealer, key: &str, cached: &mut Cached) -> Result<(), StoreError> {
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

fn blob_info(conn: &Connection, hash: &str) -> Result<BlobInfo, StoreError> {
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

fn put_blob(tx: &Transaction<'_>, sealer: &Sealer, bytes: &[u8], mime: &str, now: i64) -> Result<BlobInfo, StoreError> {
    let hash = blake3::hash(bytes).to_hex().to_string();
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

/// The fields of an audit entry that its hash covers.
struct AuditRow {
    seq: u64,
    at_ms: i64,
    node: String,
    action: String,
    sid: Option<i64>,
    detail: Option<Vec<u8>>,
}

impl AuditRow {
    /// `hash = BLAKE3(domain || prev || seq || at || len-prefixed node, action || sid || sealed detail)`.
    fn hash(&self, prev: &[u8]) -> Vec<u8> {
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
    let last: Option<(i64, Vec<u8>)> = tx
        .row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(sql("reading the audit chain"))?;
    let (seq, prev) = match last {
        Some((s, h)) => (s as u64 + 1, h),
        None => (1, [0u8; 32].to_vec()),
    };
    let detail = match detail {
        Some(d) => Some(sealer.seal(&audit_aad(seq), &serde_json::to_vec(&d).map_err(json)?)?),
        None => None,
    };
    let row = AuditRow { seq, at_ms: now, node: node.to_string(), action: action.to_string(), sid, detail };
    let hash = row.hash(&prev);
    tx.exec(
        "INSERT INTO audit (seq, at_ms, node, action, sid, detail, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![row.seq as i64, row.at_ms, row.node, row.action, row.sid, row.detail, hash],
    )
    .map_err(sql("appending to the audit chain"))?;
    Ok(())
}
