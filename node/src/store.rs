//! The durable store: session documents, blobs and the audit chain in one SQLite file.
//!
//! - Every write is one `BEGIN IMMEDIATE` transaction committed with `synchronous=FULL` in WAL
//!   mode: when a write method returns `Ok`, its bytes are in the WAL on disk. Nothing is
//!   acknowledged earlier. Two processes writing one node (the daemon and the CLI) are
//!   serialised by SQLite's write lock, and each refreshes its cached document from the log
//!   inside the transaction before editing it, so their changes never conflict. (The one
//!   exception to `FULL` is `record_sync`, bookkeeping of when a sync last ran: see there.)
//!   A sync step's many reads share one read transaction (`Store::hold_reads`), ended before
//!   any write.
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
//!
//! The public API is grouped into facets by what they keep, each a type in its room, reached
//! through two accessors (as [`Store::blobs`] to read and [`Store::blobs_mut`] to write):
//! [`Sessions`] (`documents`), [`Blobs`] (`blobs`, `transfer`), [`Audit`] (`audit`), [`Peers`]
//! (`sync`: what the engine needs), [`Directory`] (`directory`), [`Identity`] (`identity`,
//! `credentials`) and [`People`] (`people`). What concerns the database as a whole stays on
//! `Store`: opening, size, statistics, compaction, integrity, backup, re-keying (`rekey`) and
//! disk space (`space`); `schema` holds the migrations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use automerge::{ActorId, ChangeHash};
use lru::LruCache;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params};
use sync_protocol::authorship::{self, AuthorKey, Member, PublicKey, Roster, Signature};
use sync_protocol::blob;
use sync_protocol::recon::{self, Fingerprint, Item};
use sync_protocol::rules::{self, Limits};
use sync_protocol::scope::PeerInfo;
use sync_protocol::session::{ModelError, NewSession, SessionDoc, SessionId, SessionView};
use sync_protocol::vocab::{Priority, ReceiptLevel, ServiceLine, Status};
use sync_protocol::wire::{DocId, Hash};

use crate::crypto::{CryptoError, Sealer};

mod audit;
mod blobs;
mod credentials;
mod directory;
mod documents;
mod identity;
pub mod people;
mod rekey;
mod schema;
pub mod space;
mod sync;
mod transfer;
mod types;

pub use types::*;

use audit::*;
use blobs::*;
use documents::*;
use identity::*;
use schema::*;

pub use audit::{Audit, HeadsFound};
pub use blobs::{Blobs, vouched};
pub use directory::Directory;
pub use documents::{LogEntries, Sessions};
pub use identity::Identity;
pub use people::People;
pub use rekey::{Resealed, sealed_under};
pub use sync::{Peers, ScopeRow, Stored};

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
pub const DB_SCHEMA_VERSION: i64 = 13;

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
    /// This node is a hub: what it holds is at a hub (see [`sync_protocol::session::localize`]).
    pub hub: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        // 256 MiB of decoded documents: every session of a hub holding ten thousand short ones
        // (about 16 KiB each decoded, measured), so a reconnect finds what it touches decoded; a
        // session with many messages takes more and leaves room for fewer. A log is folded once
        // it holds 64 changes or 8 KiB and half the snapshot: folding re-encodes
        // the whole document, so it must not follow every message.
        StoreOptions {
            cache_bytes: 256 << 20,
            compact_after: 64,
            compact_min_bytes: 8192,
            limits: Limits::default(),
            hub: false,
        }
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
    /// A file of the store could not be kept to its owner alone.
    #[error("cannot make {} readable by its owner alone: {source}", path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
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
    /// A photo whose consent the patient withdrew: it is shown and exported nowhere.
    #[error("photo {0} is withheld: the patient withdrew the consent it was taken under")]
    ConsentWithdrawn(String),
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
    /// An edit that every peer would refuse by the write rules (so would every later change of
    /// this node to the session, which depends on it): not stored.
    #[error("session {id}: this node may not write that ({reason}); nothing was written")]
    NotYours {
        /// The session.
        id: SessionId,
        /// The write rule it breaks.
        reason: String,
    },
    /// The session model refused an edit, or a stored document is not a session.
    #[error("session {id}: {source}")]
    Model {
        /// The session.
        id: SessionId,
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

pub(crate) fn model(id: SessionId) -> impl Fn(ModelError) -> StoreError + Copy {
    move |source| StoreError::Model { id, source }
}

struct Cached {
    doc: SessionDoc,
    sid: i64,
    upto: i64,
    /// The view the reading that accepted the document found, with the write rules' facts,
    /// kept with the heads it was read at (`None`, or other heads than the document's: read
    /// the document again when needed).
    basis: Option<sync_protocol::session::ViewBasis>,
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
        let view = c.basis.as_ref().map_or(0, sync_protocol::session::ViewBasis::approx_bytes);
        Self::BASE
            .saturating_add(ops.saturating_mul(Self::PER_OP))
            .saturating_add(c.doc.kept_bytes())
            .saturating_add(view)
    }

    /// Whether a document is held decoded.
    fn contains(&self, id: &SessionId) -> bool {
        self.docs.contains(id)
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
    /// The heads the index says the session's log holds (`heads_blob`).
    heads: Vec<u8>,
}

/// The operating-system account running this process's `outpost` command (not the daemon's
/// nor the demo's), set once at its start: named (`by`) in every audit entry its stores write
/// while no person acts, so that what was read or changed on the command line says who ran it.
static OPERATOR: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();

/// Names the account running this process's command in the audit entries of every store it
/// opens from now on ([`OPERATOR`]); the first call wins.
pub fn name_operator(who: serde_json::Value) {
    let _ = OPERATOR.set(who);
}

/// The account named by [`name_operator`], if any.
pub(crate) fn operator() -> Option<serde_json::Value> {
    OPERATOR.get().cloned()
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
    /// The person acting through the local API, for the audit chain (otherwise the account
    /// running this process's command, [`name_operator`]).
    acting: Option<serde_json::Value>,
    /// The fleet members this node knows (from certificates), by actor prefix.
    roster: Roster,
    /// The members whose certificate the revocation list held names, with that list's number
    /// and the roster's generation when they were found (found again when either changes).
    revoked: Option<(u64, u64, std::sync::Arc<std::collections::HashSet<sync_protocol::authorship::ActorPrefix>>)>,
    /// Bumped whenever a member's certificate is recorded or replaced: the revoked set is
    /// found again then (a replaced certificate leaves the roster's size as it was).
    roster_gen: u64,
    limits: Limits,
    /// Operations of received changes checked and stored, since the store was opened.
    ops_admitted: u64,
    /// A read transaction is open that [`Store::hold_reads`] began.
    reads_held: bool,
    /// Who this node is to its peers: when known, each edit is checked against the write rules
    /// they will apply to it before it is stored ([`Store::judge_own_writes_as`]).
    writer: Option<PeerInfo>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).field("node", &self.node).finish_non_exhaustive()
    }
}

/// One read transaction across many reads.
impl Store {
    /// Opens a read transaction, if none is open, for the reads that follow: each read on its
    /// own takes and releases the database's locks (a sync step reads the index of a thousand
    /// sessions). It lasts until [`Store::release_reads`], which must come before any write.
    pub(crate) fn hold_reads(&mut self) -> Result<(), StoreError> {
        if !self.reads_held && self.conn.is_autocommit() {
            self.conn.execute_batch("BEGIN DEFERRED").map_err(sql("starting a read"))?;
            self.reads_held = true;
        }
        Ok(())
    }

    /// A store of its own in a temporary directory, for this crate's unit tests.
    #[cfg(test)]
    pub(crate) fn scratch(node: &str) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = Sealer::new(&crate::crypto::NodeKey::generate().expect("key"));
        let store = Store::open(&dir.path().join("t.db"), sealer, node, StoreOptions::default()).expect("open");
        (dir, store)
    }

    /// A new dermatology session of `amb-1` (ICB QHM), numbered `n`: for this crate's unit tests.
    #[cfg(test)]
    pub(crate) fn scratch_session(&mut self, n: u128) -> SessionId {
        use sync_protocol::session::{Patient, Requester, Service};
        use sync_protocol::vocab::{CareSetting, Channel};
        let new = NewSession {
            id: SessionId::from_parts(1_796_360_400_000, n),
            origin: "amb-1".into(),
            icb: "QHM".into(),
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester::default(),
            patient: Patient::default(),
            service: Service { line: ServiceLine::Dermatology, channel: Channel::Message, priority: Priority::Urgent },
            summary: "rash".into(),
            draft: false,
        };
        self.sessions_mut().create_session(&new, None, 1_796_360_400_000).expect("create").id
    }

    /// A message by `who` in session `id` at `now`, written as the app writes one: for unit tests.
    #[cfg(test)]
    pub(crate) fn scratch_message(&mut self, id: SessionId, who: &str, side: sync_protocol::vocab::Side, now: i64) {
        let msg = sync_protocol::session::NewMessage {
            clinician: None,
            id: format!("{who}-{now}"),
            author: who.into(),
            side,
            text: format!("{who} at {now}"),
            reply_to: None,
        };
        self.sessions_mut()
            .edit(id, "message.send", None, now, |_, d| d.add_message(&msg, now).map_err(model(id)))
            .expect("edit");
    }

    /// Whether a transaction is open on the connection.
    #[cfg(test)]
    pub(crate) fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// Ends the read transaction [`Store::hold_reads`] began, if any.
    pub(crate) fn release_reads(&mut self) -> Result<(), StoreError> {
        if std::mem::take(&mut self.reads_held) && !self.conn.is_autocommit() {
            self.conn.execute_batch("COMMIT").map_err(sql("ending a read"))?;
        }
        Ok(())
    }
}

/// A read transaction for the reads that follow, unless one is open already (one a replica's
/// borrow holds: see [`Store::hold_reads`]).
pub(super) fn reading(conn: &Connection) -> Result<Option<Transaction<'_>>, StoreError> {
    if conn.is_autocommit() {
        Ok(Some(conn.unchecked_transaction().map_err(sql("starting a read"))?))
    } else {
        Ok(None)
    }
}

/// The facets: each borrows the store, shared to read (`Blobs<&Store>`) or exclusive to write
/// (`Blobs<&mut Store>`), and offers the methods of what it keeps.
impl Store {
    /// From now on, each edit is checked against the write rules as `me` (this node, as its
    /// peers know it) before it is stored: one they would refuse is refused here
    /// ([`StoreError::NotYours`]).
    pub fn judge_own_writes_as(&mut self, me: PeerInfo) {
        self.writer = Some(me);
    }

    /// Session documents ([`Sessions`]), to read.
    pub fn sessions(&self) -> Sessions<&Store> {
        Sessions(self)
    }

    /// Session documents ([`Sessions`]), to write.
    pub fn sessions_mut(&mut self) -> Sessions<&mut Store> {
        Sessions(self)
    }

    /// Photos ([`Blobs`]), to read.
    pub fn blobs(&self) -> Blobs<&Store> {
        Blobs(self)
    }

    /// Photos ([`Blobs`]), to write.
    pub fn blobs_mut(&mut self) -> Blobs<&mut Store> {
        Blobs(self)
    }

    /// The audit chain ([`Audit`]), to read.
    pub fn audit(&self) -> Audit<&Store> {
        Audit(self)
    }

    /// The audit chain ([`Audit`]), to write.
    pub fn audit_mut(&mut self) -> Audit<&mut Store> {
        Audit(self)
    }

    /// What the store knows of its peers ([`Peers`]), to read.
    pub fn peers(&self) -> Peers<&Store> {
        Peers(self)
    }

    /// What the store knows of its peers ([`Peers`]), to write.
    pub fn peers_mut(&mut self) -> Peers<&mut Store> {
        Peers(self)
    }

    /// The ICB directory ([`Directory`]), to read.
    pub fn directory(&self) -> Directory<&Store> {
        Directory(self)
    }

    /// The ICB directory ([`Directory`]), to write.
    pub fn directory_mut(&mut self) -> Directory<&mut Store> {
        Directory(self)
    }

    /// The node's identity ([`Identity`]), to read.
    pub fn identity(&self) -> Identity<&Store> {
        Identity(self)
    }

    /// The node's identity ([`Identity`]), to write.
    pub fn identity_mut(&mut self) -> Identity<&mut Store> {
        Identity(self)
    }

    /// The node's users ([`People`]), to read.
    pub fn people(&self) -> People<&Store> {
        People(self)
    }

    /// The node's users ([`People`]), to write.
    pub fn people_mut(&mut self) -> People<&mut Store> {
        People(self)
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

    /// Stores a blob (if not already stored) in the same transaction as the edit, with `holder`
    /// (the node attaching it) known to have its bytes.
    pub fn put_blob(&self, bytes: &[u8], mime: &str, holder: &str) -> Result<BlobInfo, StoreError> {
        put_blob(self.tx, self.sealer, bytes, mime, self.now, holder)
    }

    /// Whether this node holds a photo whole for this record of it (see `blobs::holds_photo_for`).
    pub fn holds_photo_for(&self, p: sync_protocol::session::PhotoRecord<'_>) -> Result<bool, StoreError> {
        blobs::holds_photo_for(self.tx, p.hash, p.added_by, p.vouched)
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
        // The database and the log and index SQLite makes beside it (with the database's own
        // mode) are the owner's alone: sealed or not, staff names and PIN hashes are in it.
        owner_only(path)?;
        for beside in [wal_path(path), shm_path(path)] {
            if beside.exists() {
                owner_only(&beside)?;
            }
        }
        let mut alone = false;
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
                alone = true;
                configure(path, true)?
            }
            Err(e) => return Err(e),
        };
        migrate(&mut conn, path, &sealer, node, crate::node::now_ms())?;
        rebuild_fp_groups(&mut conn)?;
        check_key(&conn, &sealer)?;
        if !alone && !low_space {
            scrub_if_pending(&conn);
        }
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
            acting: operator(),
            roster,
            revoked: None,
            roster_gen: 0,
            limits: opts.limits,
            ops_admitted: 0,
            reads_held: false,
            writer: None,
        };
        store.backfill_index()?;
        store.bind_tls_key();
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
        if self.identity().meta_get("index_filled")?.is_some() {
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
            let mut view = cached.doc.view().map_err(model(id))?;
            let viewer = Viewer { hub: self.opts.hub };
            index_doc(&tx, &self.sealer, viewer, (&key, cached.sid), &mut cached.doc, &mut view, None)?;
            tx.commit().map_err(sql("committing"))?;
            self.cache.put(id, cached);
        }
        self.identity_mut().meta_put("index_filled", b"1")
    }

    /// Operations of received changes checked and stored since the store was opened: what peers
    /// made this node work for (the daemon budgets it per peer).
    pub fn ops_admitted(&self) -> u64 {
        self.ops_admitted
    }

    /// Caps the database at `pages` pages (of 4 KiB), so a test can make the disk "full".
    pub fn limit_pages(&self, pages: u64) -> Result<(), StoreError> {
        self.conn
            .row(&format!("PRAGMA max_page_count={pages}"), [], |_| Ok(()))
            .map_err(sql("limiting the database size"))
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

    /// What has not yet left this device (`me` is this node's name): items counted from the
    /// sessions' cards, bytes from this node's photos still held whole (an edge deletes a
    /// photo once a hub confirms holding it).
    pub fn backlog(&self, me: &str) -> Result<Backlog, StoreError> {
        let mut out = Backlog::default();
        for card in self.sessions().list(&ListFilter::default())? {
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
        // Made empty and the owner's alone first: SQLite copies into an empty file as it finds it.
        owner_only(path)?;
        self.conn.execute("VACUUM INTO ?1", [target]).map_err(sql("copying the store"))?;
        Ok(())
    }
}

fn json(e: serde_json::Error) -> StoreError {
    StoreError::Damaged(format!("a stored record is not valid JSON: {e}"))
}

/// Makes `path` readable and writable by its owner alone, creating it empty if it does not
/// exist (SQLite takes an empty file for a new database).
pub(crate) fn owner_only(path: &Path) -> Result<(), StoreError> {
    let fail = |source| StoreError::Permissions { path: path.to_path_buf(), source };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if !path.exists() {
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(fail)?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)
    }
    #[cfg(not(unix))]
    {
        if !path.exists() {
            std::fs::File::create(path).map_err(fail)?;
        }
        Ok(())
    }
}

/// The WAL beside a database file.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// The shared-memory index beside a database file.
fn shm_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-shm");
    PathBuf::from(p)
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
