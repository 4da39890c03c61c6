//! A node: its directory, configuration, key and store, and the clinical operations on them.
//!
//! This is what the CLI and the demo call. Each operation validates everything it is given
//! before it writes anything, and returns only once its write is durable.

use std::time::{SystemTime, UNIX_EPOCH};

use sync_protocol::call::{Action, CallState, calls_in, calls_of};
use sync_protocol::directory::{DirectoryView, LineEntry};
use sync_protocol::router::{Router, Step, Write, not_reported};
use sync_protocol::routing::RoutingEntry;
use sync_protocol::session::{
    LogName, ModelError, NewConsent, NewMedia, NewMessage, NewSession, Patient, Requester, Service, SessionId,
    SessionView, side_of,
};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, ReceiptLevel, Role,
    ServiceLine, Side, Status,
};

use crate::config::{self, CONFIG_FORMAT, ConfigError, NodeConfig, NodeDir};
use crate::crypto::{self, CryptoError, KEY_ENV, NodeKey, Sealer};
use crate::photo::{Photo, PhotoError};
use crate::store::{BlobInfo, ClientKey, ListFilter, Store, StoreError, StoreOptions};

mod access;
mod calls;
mod facade;
mod infra;
mod requests;

pub use access::{AccessLimits, RecordLimits};
pub use calls::{LONGEST_CALL, Routed};
pub use facade::{CallLogs, ExportFormat, SHOWN_AGAIN_AFTER_MS};
pub use requests::*;

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The directory or its configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A photo that cannot be stored.
    #[error(transparent)]
    Photo(#[from] PhotoError),
    /// A person added to a node of a role they do not work on; nothing was written.
    #[error("a {person} does not work on a {node} node; add them where they work")]
    WrongNodeForPerson {
        /// The person's role.
        person: crate::store::people::PersonRole,
        /// The node's role.
        node: Role,
    },
    /// A person's name, role or registration that no record would take (an empty or
    /// over-long registration); nothing was written.
    #[error("{0}; nothing was written")]
    Person(sync_protocol::session::ModelError),
    /// A new PIN that cannot be set: too short, or for an integrating system (which has a
    /// token); nothing was written.
    #[error("{0}; nothing was written")]
    Pin(String),
    /// A client key (for repeat-safe requests) that is not 1 to [`MAX_CLIENT_KEY`] printable
    /// characters; nothing was written.
    #[error("client key {key:?}: 1 to {MAX_CLIENT_KEY} printable ASCII characters, no spaces (a UUID will do)")]
    ClientKey {
        /// The key as given.
        key: String,
    },
    /// A signed certificate that cannot be installed; nothing was written.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// A backup that cannot be taken or restored.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// A key rotation that cannot be made or settled.
    #[error(transparent)]
    Rotation(#[from] RotationError),
    /// A second call on a node already in one (a node carries one call's audio at a time);
    /// nothing was written.
    #[error(
        "this device is on a call in session {session}: end it first (a device carries one call at a time; a ring passes to the next desk on the rota)"
    )]
    OnACall {
        /// The session of the call under way.
        session: SessionId,
    },
    /// A session closed or cancelled while its call is connected, or being put through at
    /// another node's request; nothing was written.
    #[error("session {session} {what}; nothing was written", what = if *connected {
        "has a call connected: hang up first, then close it"
    } else {
        "has a call being put through that this device did not ask for: close it once the call is answered or ends in a callback"
    })]
    CallInTheWay {
        /// The session.
        session: SessionId,
        /// The call is connected (else: being put through).
        connected: bool,
    },
    /// A node outside any ICB asked for what only an ICB's nodes keep.
    #[error("node {node} belongs to no ICB: it keeps no directory")]
    NoIcb {
        /// This node.
        node: String,
    },
    /// A person (or integrating system) has opened as many different records through the
    /// local API in the last hour as this node allows ([`AccessLimits`]); nothing of this one
    /// was shown.
    #[error(
        "you have opened {opened} different records in the last hour, the most this node allows {who}; the records you opened this hour still open, and another may be opened in {minutes} min. If your work needs more, ask the node's deployer (limits.records_per_{kind}_hour)",
        who = if *system { "an integrating system" } else { "one person" },
        kind = if *system { "system" } else { "person" }
    )]
    TooManyRecords {
        /// Different records opened in the hour.
        opened: usize,
        /// Minutes until another may be opened.
        minutes: i64,
        /// The caller is an integrating system.
        system: bool,
    },
    /// A value of this node's own that could not be encoded (a bug, not bad input).
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        source: serde_json::Error,
    },
    /// A session has no photo of that hash (or prefix).
    #[error("session {session} has no photo {photo}: see `outpost session show`")]
    NoSuchPhoto {
        /// The session.
        session: SessionId,
        /// The hash or prefix given.
        photo: String,
    },
    /// A hash prefix that names more than one photo of a session.
    #[error("{photo} names more than one photo of {session}: give more of its hash")]
    AmbiguousPhoto {
        /// The session.
        session: SessionId,
        /// The prefix given.
        photo: String,
    },
    /// The node's certificate.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A session held here that this node may no longer hold (its certificate's role, ICB or
    /// service lines changed since it arrived): it does not leave this node.
    #[error(
        "session {id} is outside what {node} may hold (its role, ICB and service lines); it is not exported: ask the ICB hub, which keeps the record"
    )]
    OutOfScope {
        /// The session.
        id: SessionId,
        /// This node.
        node: String,
    },
    /// An operation this node's role does not perform.
    #[error("{action} is done on {allowed} nodes; this node ({name}) is {} {role} node", if *role == Role::Edge { "an" } else { "a" })]
    Role {
        /// What was attempted.
        action: &'static str,
        /// Which roles may.
        allowed: &'static str,
        /// This node's name.
        name: String,
        /// This node's role.
        role: Role,
    },
}

/// Why a certificate signed for this node's pending request cannot be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The node made no certificate request.
    #[error("node {node} has no pending certificate request; make one with `outpost cert request --dir DIR`")]
    NoRequest {
        /// The node.
        node: String,
    },
    /// The certificate chains to another CA than the one the node trusts.
    #[error(
        "the certificate comes with another CA than the fleet CA this node trusts; a node changes fleets only by a new `outpost init`"
    )]
    ForeignCa,
    /// The file holds no certificate, or a certificate without its CA on a node that has none.
    #[error("the file holds no certificate and CA: give the file `outpost ca sign` wrote")]
    NoCertificate,
}

impl NodeError {
    /// The model's refusal, if that is what this is.
    pub fn model(&self) -> Option<&ModelError> {
        match self {
            NodeError::Store(StoreError::Model { source, .. }) => Some(source),
            _ => None,
        }
    }
}

/// Why a key rotation was refused, or an interrupted one cannot be settled.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The key comes from the environment, not a file this command can replace.
    #[error(
        "this node's key comes from {KEY_ENV}: rotate it in the key store that supplies it (outpost key rotate works on a key file)"
    )]
    KeyFromEnvironment,
    /// Another process has the store open and could go on writing under the old key.
    #[error("another outpost process has {} open ({detail}); let it finish or stop it, then rotate", dir.display())]
    Busy {
        /// The node directory.
        dir: std::path::PathBuf,
        /// The lock's error.
        detail: String,
    },
    /// A rotation was interrupted and neither key can be shown to hold the store.
    #[error(
        "an interrupted key rotation cannot be settled: {why}. Keep {} and {} as they are, and restore from a backup if they cannot be made readable",
        key.display(),
        pending.display()
    )]
    Unsettled {
        /// What was found.
        why: String,
        /// The key file.
        key: std::path::PathBuf,
        /// The new key's file.
        pending: std::path::PathBuf,
    },
}

/// The wall clock in milliseconds since the Unix epoch: the node's only clock.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A new ULID-style id for messages and consents.
pub fn new_id(now: i64) -> Result<String, CryptoError> {
    let mut r = [0u8; 16];
    crypto::random_bytes(&mut r)?;
    Ok(SessionId::from_parts(now, u128::from_le_bytes(r)).to_string())
}

/// How long a person flagged for unusual access is shown in the status.
pub const UNUSUAL_ACCESS_SHOWN_MS: i64 = 24 * 3600 * 1000;
/// The most such entries read (each is written at most once an hour per person).
const UNUSUAL_ACCESS_SCAN: usize = 10_000;
/// The most looks at records (different person and record) a starting daemon reads back into
/// its access watch (the newest of the last day): a busy desk opens a few thousand a day.
/// Repeats of one look are read past, up to ten times as many entries in all (about ten
/// seconds, only after a flood of repeats).
const ACCESS_REPLAYED: usize = 100_000;

/// The store lock in a node directory.
const STORE_LOCK: &str = "store.lock";

/// Opens (making if needed) the store lock file of `dir`, unlocked.
fn store_lock(dir: &NodeDir) -> Result<std::fs::File, NodeError> {
    let path = dir.root().join(STORE_LOCK);
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| ConfigError::Io { path, source }.into())
}

/// Makes a directory's entries (created, renamed, removed files) durable.
fn sync_dir(dir: &NodeDir) -> Result<(), NodeError> {
    std::fs::File::open(dir.root())
        .and_then(|d| d.sync_all())
        .map_err(|source| ConfigError::Io { path: dir.root().to_path_buf(), source }.into())
}

/// An open node.
#[derive(Debug)]
pub struct Node {
    /// Its directory.
    dir: NodeDir,
    /// Its configuration.
    config: NodeConfig,
    /// Its store: reached only through the node's methods (and [`Node::raw_store`], for the
    /// store's own tests, benchmarks and attack tests).
    store: Store,
    /// The person acting through this node now (the local API sets it around each request).
    acting: Option<crate::store::people::Person>,
    /// When each session's card was last recorded in the audit chain as shown to each person
    /// (by person id, `None` for the command line, and how): see [`Node::record_shown`].
    shown: std::collections::HashMap<(Option<i64>, &'static str), std::collections::HashMap<SessionId, i64>>,
    /// When every person's part of `shown` was last pruned.
    shown_pruned_ms: i64,
    /// How many different records each person has opened through the API in the last hour.
    access: access::AccessWatch,
    /// The store lock (`store.lock`), held while the node is open.
    _store_lock: std::fs::File,
}

impl Node {
    /// A client key in the acting person's own namespace (a key of one user is no key of
    /// another's); as given when no one is signed in (the CLI).
    fn scoped_key(&self, key: &str) -> String {
        match &self.acting {
            Some(p) => format!("{key}@user{}", p.id),
            None => key.to_string(),
        }
    }

    /// The person acting, as the session records them (an integrating system is no person:
    /// its writes name the node alone).
    fn clinician(&self) -> Option<sync_protocol::session::Clinician> {
        let who = self.acting.as_ref().filter(|p| p.role != crate::store::people::PersonRole::System)?;
        Some(sync_protocol::session::Clinician {
            name: who.name.clone(),
            role: who.role.as_str().to_string(),
            registration: who.registration.clone(),
        })
    }

    /// Sets (or clears) the person acting: named in the audit chain, and in the document as
    /// the writer of each message, photo and outcome written meanwhile.
    pub fn set_acting(&mut self, who: Option<&crate::store::people::Person>) {
        self.store.audit_mut().set_acting(who);
        self.acting = who.cloned();
    }

    /// Runs `f` with `who` acting, and clears it however `f` ends, a panic included (which is
    /// then passed on).
    pub fn acting_as<T>(&mut self, who: &crate::store::people::Person, f: impl FnOnce(&mut Node) -> T) -> T {
        self.set_acting(Some(who));
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        self.set_acting(None);
        out.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Creates a node directory: configuration, key (unless supplied by `OUTPOST_NODE_KEY`), empty store.
    pub fn init(dir: &NodeDir, params: &InitParams, now: i64) -> Result<NodeConfig, NodeError> {
        config::check_name(&params.name)?;
        if let Some(org) = &params.org {
            config::check_code("organisation (ODS) code", org)?;
        }
        if let Some(icb) = &params.icb {
            config::check_code("ICB code", icb)?;
        }
        if dir.config_path().exists() {
            return Err(ConfigError::AlreadyANode { dir: dir.root().to_path_buf() }.into());
        }
        std::fs::create_dir_all(dir.root())
            .map_err(|source| ConfigError::Io { path: dir.root().to_path_buf(), source })?;
        owner_only_dir(dir.root())?;
        let (key, key_source) = match std::env::var(KEY_ENV) {
            Ok(text) => (NodeKey::from_hex(&text, KEY_ENV)?, "env"),
            Err(_) => {
                let key = NodeKey::generate()?;
                key.write_new(&dir.key_path())?;
                (key, "file")
            }
        };
        let mut actor = [0u8; 16];
        crypto::random_bytes(&mut actor)?;
        let cfg = NodeConfig {
            format: CONFIG_FORMAT,
            name: params.name.clone(),
            role: params.role,
            org: params.org.clone(),
            icb: params.icb.clone(),
            lines: params.lines.clone(),
            actor: hex::encode(actor),
            key_id: key.id(),
            key_source: key_source.to_string(),
            created_ms: now,
        };
        // The store first, so that a node.toml never points at a store that was not created.
        Store::open(&dir.db_path(), Sealer::new(&key), &cfg.name, StoreOptions::default())?;
        // The deployer's settings, every line a comment: what can be set, and how.
        let settings = dir.root().join(crate::settings::SETTINGS_FILE);
        if !settings.exists() {
            std::fs::write(&settings, crate::settings::Settings::template())
                .map_err(|source| ConfigError::Io { path: settings.clone(), source })?;
        }
        dir.write_config(&cfg)?;
        Ok(cfg)
    }

    /// Opens an existing node directory, checking its key.
    pub fn open(dir: &NodeDir) -> Result<Node, NodeError> {
        Node::open_with(dir, StoreOptions::default())
    }

    /// Opens with explicit store options.
    pub fn open_with(dir: &NodeDir, opts: StoreOptions) -> Result<Node, NodeError> {
        // Not a node directory: said before a lock file is made in it. (The file is read, and
        // checked, once, under the lock.)
        if !dir.config_path().exists() {
            return Err(ConfigError::NotANode { dir: dir.root().to_path_buf() }.into());
        }
        // Shared with every other process that has the store open; waits while a key rotation
        // (which holds it alone) runs, so this process reads the key the store is under.
        let lock = store_lock(dir)?;
        lock.lock_shared().map_err(|source| ConfigError::Io { path: dir.root().join(STORE_LOCK), source })?;
        Node::open_locked(dir, opts, lock)
    }

    /// Opens holding `lock` (the store lock, shared or exclusive).
    fn open_locked(dir: &NodeDir, opts: StoreOptions, lock: std::fs::File) -> Result<Node, NodeError> {
        let mut config = dir.read_config()?;
        if !dir.db_path().exists() {
            return Err(ConfigError::StoreMissing {
                name: config.name,
                dir: dir.root().to_path_buf(),
                db: dir.db_path(),
            }
            .into());
        }
        // A key rotation killed part way is finished or rolled back before anything else, unless
        // another process holds the directory (a daemon, which did this when it started, or the
        // rotation itself).
        let pending = dir.new_key_path().exists();
        if pending
            && let Ok(_lock) = crate::service::DaemonLock::acquire(dir.root())
            && let Some(how) = Node::recover_rotation(dir)?
        {
            tracing::warn!("an interrupted key rotation was found and {how}");
        }
        if pending {
            // Finishing the rotation (here, or in a daemon starting meanwhile) names the new
            // key in the file.
            config = dir.read_config()?;
        }
        let (key, origin) = NodeKey::load(&dir.key_path())?;
        if key.id() != config.key_id {
            return Err(CryptoError::WrongKey { origin, found: key.id(), expected: config.key_id.clone() }.into());
        }
        let opts = StoreOptions { hub: config.role == Role::Hub, ..opts };
        let mut store = Store::open(&dir.db_path(), Sealer::new(&key), &config.name, opts)?;
        store.judge_own_writes_as(config.peer_info());
        Ok(Node {
            dir: dir.clone(),
            config,
            store,
            acting: None,
            shown: Default::default(),
            shown_pruned_ms: 0,
            access: access::AccessWatch::default(),
            _store_lock: lock,
        })
    }

    /// Re-seals the whole store under a new data key (`outpost key rotate`). Safe against a
    /// kill at any instant: the new key is written (and synced) to `node.key.new` first; the
    /// store is re-sealed in one transaction; then `node.toml` names the new key and the new
    /// file replaces `node.key`. Whatever step a kill interrupts, the next open finds which
    /// key the store is under and finishes or rolls back ([`Node::recover_rotation`]).
    /// The caller holds the directory's lock.
    pub fn rotate_key(dir: &NodeDir, now: i64) -> Result<(crate::store::Resealed, String, String), NodeError> {
        let mut cfg = dir.read_config()?;
        if cfg.key_source == "env" || std::env::var(KEY_ENV).is_ok() {
            return Err(RotationError::KeyFromEnvironment.into());
        }
        // Alone: no other process may have the store open (it would go on writing under the
        // old key after the rotation committed).
        let lock = store_lock(dir)?;
        if let Err(e) = lock.try_lock() {
            return Err(RotationError::Busy { dir: dir.root().to_path_buf(), detail: e.to_string() }.into());
        }
        Node::recover_rotation(dir)?;
        let mut node = Node::open_locked(dir, StoreOptions::default(), lock)?;
        let (old, _) = NodeKey::load_file(&dir.key_path())?;
        let new = NodeKey::generate()?;
        let pending = dir.new_key_path();
        new.write_new(&pending)?;
        sync_dir(dir)?;
        let done = node.store.reseal(Sealer::new(&new), &old.id(), &new.id(), now)?;
        cfg.key_id = new.id();
        dir.write_config(&cfg)?;
        std::fs::rename(&pending, dir.key_path())
            .map_err(|source| ConfigError::Io { path: pending.clone(), source })?;
        sync_dir(dir)?;
        Ok((done, old.id(), new.id()))
    }

    /// After a rotation was killed: finishes it if the store is already under the new key,
    /// else removes the new key (the store never used it). Returns what it did, if anything.
    /// The caller holds the directory's lock.
    pub fn recover_rotation(dir: &NodeDir) -> Result<Option<&'static str>, NodeError> {
        let pending = dir.new_key_path();
        if !pending.exists() {
            return Ok(None);
        }
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| ConfigError::Io { path, source }
        };
        let damaged = |why: String| -> NodeError {
            RotationError::Unsettled { why, key: dir.key_path(), pending: pending.clone() }.into()
        };
        let old = NodeKey::load_file(&dir.key_path()).ok().map(|(k, _)| k);
        let under = |k: &NodeKey| crate::store::sealed_under(&dir.db_path(), &Sealer::new(k));
        let new = match NodeKey::load_file(&pending) {
            Ok((k, _)) => Some(k),
            // Cut short by the kill (the key is synced before the store's transaction begins,
            // so such a key was never used); anything else (permissions, I/O) is not ours to judge.
            Err(CryptoError::KeyFormat { .. }) => None,
            Err(e) => return Err(damaged(format!("{} cannot be read ({e})", pending.display()))),
        };
        if let Some(new) = &new
            && under(new)?
        {
            let mut cfg = dir.read_config()?;
            if cfg.key_id != new.id() {
                cfg.key_id = new.id();
                dir.write_config(&cfg)?;
            }
            std::fs::rename(&pending, dir.key_path()).map_err(io(&pending))?;
            sync_dir(dir)?;
            return Ok(Some("completed (the store was already under the new key)"));
        }
        // Rolled back only once the store is proven to open under the old key.
        match &old {
            Some(old) if under(old)? => {
                std::fs::remove_file(&pending).map_err(io(&pending))?;
                sync_dir(dir)?;
                Ok(Some("rolled back (the store is still under the old key)"))
            }
            _ => Err(damaged("the store opens under neither the old key nor the new one".into())),
        }
    }

    fn require(&self, action: &'static str, allowed: &'static str, roles: &[Role]) -> Result<(), NodeError> {
        if roles.contains(&self.config.role) {
            Ok(())
        } else {
            Err(NodeError::Role { action, allowed, name: self.config.name.clone(), role: self.config.role })
        }
    }

    /// Creates a session on this edge node.
    pub fn new_session(&mut self, req: SessionRequest, now: i64) -> Result<SessionView, NodeError> {
        self.new_session_once(req, None, now)
    }

    /// [`Node::new_session`] under a client key: a repeat with the same key and request
    /// returns the first session and creates nothing (a double tap makes one session); the
    /// session returned is then a view, audited as one.
    pub fn new_session_once(
        &mut self,
        req: SessionRequest,
        client_key: Option<&str>,
        now: i64,
    ) -> Result<SessionView, NodeError> {
        self.require("creating a session", "edge", &[Role::Edge])?;
        let scoped = client_key.map(|k| self.scoped_key(k));
        let once = scoped.as_deref().map(|k| client_key_of("session", k, &req)).transpose()?;
        let mut r = [0u8; 16];
        crypto::random_bytes(&mut r)?;
        let mut requester = req.requester;
        if requester.org_ods.is_none() {
            requester.org_ods = self.config.org.clone();
        }
        let new = NewSession {
            id: SessionId::from_parts(now, u128::from_le_bytes(r)),
            origin: self.config.name.clone(),
            icb: self.config.icb.clone().unwrap_or_else(|| "UNSET".into()),
            care_setting: req.care_setting,
            requester,
            patient: req.patient,
            service: req.service,
            summary: req.summary,
            draft: req.draft,
        };
        let view = self.store.sessions_mut().create_session(&new, once.as_ref(), now)?;
        // The record is its maker's to open again this hour, past any limit (a repeat's key is
        // this person's own: it names no one else's record).
        if let Some((who, system)) = self.acting_caller() {
            self.access.created(who, system, view.id, now);
        }
        // A repeat of the create (its client key) is answered with the session as it stands
        // now, messages and advice included: a look at the record like any other.
        if view.id != new.id {
            self.open_record(view.id, "session.view", now)?;
        }
        Ok(view)
    }

    /// Sends a message in a session; returns its id once it is durable on this device.
    pub fn send_message(
        &mut self,
        id: SessionId,
        text: &str,
        reply_to: Option<String>,
        now: i64,
    ) -> Result<String, NodeError> {
        self.send_message_once(id, text, reply_to, None, now)
    }

    /// [`Node::send_message`] under a client key: a repeat with the same key and message
    /// returns the first message's id and writes nothing.
    pub fn send_message_once(
        &mut self,
        id: SessionId,
        text: &str,
        reply_to: Option<String>,
        client_key: Option<&str>,
        now: i64,
    ) -> Result<String, NodeError> {
        let scoped = client_key.map(|k| self.scoped_key(k));
        let once = scoped
            .as_deref()
            .map(|k| client_key_of("message", k, &(id.to_string(), text, reply_to.as_deref())))
            .transpose()?;
        let msg = NewMessage {
            clinician: self.clinician(),
            id: new_id(now)?,
            author: self.config.name.clone(),
            side: side_of(self.config.role),
            text: text.to_string(),
            reply_to,
        };
        Ok(self.store.sessions_mut().edit(id, "message.send", None, now, |ctx, doc| {
            if let Some(key) = &once {
                if let Some(first) = ctx.recall(key)? {
                    return Ok(first);
                }
                ctx.remember(key, &msg.id)?;
            }
            doc.add_message(&msg, now).map_err(crate::store::model(id))?;
            Ok(msg.id.clone())
        })?)
    }

    /// The patient withdraws the consent a photo was taken under (given by the photo's hash or
    /// a unique prefix of it). Every photo taken under that consent is then left out of exports
    /// and letters on every node (a withdrawal always wins a merge). On an edge, or the home hub.
    /// Returns the consent's id and how many photos it covered.
    pub fn withdraw_consent(&mut self, id: SessionId, photo: &str, now: i64) -> Result<(String, usize), NodeError> {
        self.require("withdrawing a consent", "edge or hub", &[Role::Edge, Role::Hub])?;
        let view = self.store.sessions_mut().view(id)?;
        let wanted = photo.trim().to_ascii_lowercase();
        let matching: Vec<_> =
            view.media.iter().filter(|m| !wanted.is_empty() && m.hash.starts_with(&wanted)).collect();
        let consent = match matching.as_slice() {
            [m] => m.consent.clone(),
            [] => return Err(NodeError::NoSuchPhoto { session: id, photo: photo.to_string() }),
            _ => return Err(NodeError::AmbiguousPhoto { session: id, photo: photo.to_string() }),
        };
        let covered = view.media.iter().filter(|m| m.consent == consent).count();
        let by = self.config.name.clone();
        let detail = Some(serde_json::json!({ "consent": consent }));
        self.store.sessions_mut().edit(id, "consent.withdraw", detail, now, |_, doc| {
            doc.withdraw_consent(&consent, &by, now).map_err(crate::store::model(id))
        })?;
        Ok((consent, covered))
    }

    /// Attaches a checked photo: its bytes (sealed, chunked) and its record commit together.
    pub fn attach_photo(
        &mut self,
        id: SessionId,
        photo: &Photo,
        req: &PhotoRequest,
        now: i64,
    ) -> Result<BlobInfo, NodeError> {
        self.require("attaching a photo", "edge", &[Role::Edge])?;
        // A small preview stays on the device after the photo itself is handed to the hub.
        let thumbnail = crate::photo::thumbnail(photo);
        self.attach_photo_with_preview(id, photo, thumbnail, req, now)
    }

    /// [`Node::attach_photo`] with its preview already made ([`crate::photo::thumbnail`]), so
    /// that a daemon makes it off its store thread.
    pub fn attach_photo_with_preview(
        &mut self,
        id: SessionId,
        photo: &Photo,
        thumbnail: Option<Vec<u8>>,
        req: &PhotoRequest,
        now: i64,
    ) -> Result<BlobInfo, NodeError> {
        self.require("attaching a photo", "edge", &[Role::Edge])?;
        let consent_id = new_id(now)?;
        let by = self.config.name.clone();
        let me = by.clone();
        let clinician = self.clinician();
        let hash = blake3::hash(&photo.bytes).to_hex().to_string();
        let detail = Some(serde_json::json!({ "photo": hash }));
        let info = self.store.sessions_mut().edit(id, "photo.attach", detail, now, |ctx, doc| {
            let model = crate::store::model(id);
            let view = doc.view().map_err(model)?;
            // Reuse a standing consent of the same kind and scope; record a new one otherwise.
            let consent = match view
                .consents
                .iter()
                .find(|c| c.kind == req.consent && c.scope == req.scope && c.withdrawn.is_none())
            {
                Some(c) => c.id.clone(),
                None => {
                    let c = NewConsent { id: consent_id, kind: req.consent, scope: req.scope, by: by.clone() };
                    doc.add_consent(&c, now).map_err(model)?;
                    c.id
                }
            };
            let media = NewMedia {
                hash: hash.clone(),
                mime: photo.mime.to_string(),
                size: photo.bytes.len() as u64,
                dimensions: Some(photo.dimensions),
                view: req.view,
                body_site: req.body_site.clone(),
                consent_id: consent,
                added_by: by,
                clinician: clinician.clone(),
            };
            doc.add_media(&media, now).map_err(model)?;
            let info = ctx.put_blob(&photo.bytes, photo.mime, &me)?;
            if let Some(t) = &thumbnail {
                ctx.put_thumbnail(&info.hash, t)?;
            }
            Ok(info)
        })?;
        Ok(info)
    }

    /// Records this side's outcome.
    pub fn set_outcome(&mut self, id: SessionId, side: Side, outcome: Outcome, now: i64) -> Result<(), NodeError> {
        self.set_outcome_once(id, side, outcome, None, now)
    }

    /// Records this side's outcome once: a repeat with the same client key (a retry after a
    /// lost response) writes nothing, even if another outcome was recorded meanwhile; and an
    /// outcome that is already the one recorded, by this node and person, is not written again.
    pub fn set_outcome_once(
        &mut self,
        id: SessionId,
        side: Side,
        outcome: Outcome,
        client_key: Option<&str>,
        now: i64,
    ) -> Result<(), NodeError> {
        match side {
            Side::Requester => {
                self.require("recording the requester's outcome", "edge or hub", &[Role::Edge, Role::Hub])?
            }
            Side::Responder => {
                self.require("recording the responder's outcome", "desk or hub", &[Role::Desk, Role::Hub])?
            }
        }
        let by = self.config.name.clone();
        let clinician = self.clinician();
        let scoped = client_key.map(|k| self.scoped_key(k));
        let once =
            scoped.as_deref().map(|k| client_key_of("outcome", k, &(id.to_string(), side, outcome))).transpose()?;
        let detail = Some(serde_json::json!({ "side": side, "outcome": outcome }));
        self.store.sessions_mut().edit(id, "outcome.set", detail, now, |ctx, doc| {
            let model = crate::store::model(id);
            if let Some(key) = &once {
                if ctx.recall(key)?.is_some() {
                    return Ok(());
                }
                ctx.remember(key, outcome.as_str())?;
            }
            let view = doc.view().map_err(model)?;
            // A callback arranged since this side's outcome (a call that dropped after the
            // consultant recorded theirs): only an outcome recorded after it settles it
            // (`callbacks_owed`), so the same outcome recorded again is written again.
            let callback_at = calls_of(&view).pop().and_then(|c| c.callback).map(|(_, at)| at);
            let current = match side {
                Side::Requester => view.outcome.requester,
                Side::Responder => view.outcome.responder,
            };
            let settles_callback = matches!(side, Side::Responder)
                && current.as_ref().zip(callback_at).is_some_and(|(c, at)| c.at_ms < at);
            if !settles_callback
                && current.is_some_and(|c| c.value == outcome && c.by == by && c.clinician == clinician)
            {
                return Ok(());
            }
            doc.set_outcome_as(side, outcome, &by, clinician.as_ref(), now).map_err(model)
        })?;
        Ok(())
    }

    /// Moves a session's status forward (close, cancel, submit a draft). Closing or cancelling
    /// settles its call first (`call_before_closing`): this node's own escalation still
    /// being put through is withdrawn in the same change (no desk rings for a case that is
    /// over); a call connected, or asked for by another node and not yet put through, refuses.
    pub fn set_status(&mut self, id: SessionId, status: Status, now: i64) -> Result<bool, NodeError> {
        if status == Status::Cancelled {
            // A request made by mistake is withdrawn by the side that made it (or its hub). A
            // desk holds every session of its lines, rung for it or not: one cancelled there
            // would take the crew's messages, photos, outcome and calls away and leave the
            // record saying it was never needed. A desk closes a session. The write rules
            // refuse a desk's cancel too (at every peer, and here before it is stored), but
            // this says why in the desk's own words, for the API and the command line alike.
            self.require("cancelling a session", "edge (the side that asked) or hub", &[Role::Edge, Role::Hub])?;
        }
        let withdraw = if status.is_terminal() { self.call_before_closing(id, status, now)? } else { None };
        let detail = Some(serde_json::json!({ "status": status }));
        Ok(self.store.sessions_mut().edit(id, "status.set", detail, now, |_, doc| {
            let model = crate::store::model(id);
            if let Some(entry) = &withdraw {
                doc.append_routing(entry, now).map_err(model)?;
            }
            doc.set_status(status, now).map_err(model)
        })?)
    }

    /// Reopens a closed or cancelled session.
    pub fn reopen(&mut self, id: SessionId, now: i64) -> Result<u32, NodeError> {
        self.reopen_once(id, None, now)
    }

    /// [`Node::reopen`] under a client key: a repeat with the same key (a page's answer lost on
    /// the way back, tried again) reopens nothing more and answers the epoch the first one
    /// opened, where without a key it is refused (the session is open already).
    pub fn reopen_once(&mut self, id: SessionId, client_key: Option<&str>, now: i64) -> Result<u32, NodeError> {
        let scoped = client_key.map(|k| self.scoped_key(k));
        let once = scoped.as_deref().map(|k| client_key_of("reopen", k, &id.to_string())).transpose()?;
        Ok(self.store.sessions_mut().edit(id, "status.reopen", None, now, |ctx, doc| {
            if let Some(key) = &once
                && let Some(epoch) = ctx.recall(key)?
            {
                return Ok(epoch.parse().unwrap_or_default());
            }
            let epoch = doc.reopen(now).map_err(crate::store::model(id))?;
            if let Some(key) = &once {
                ctx.remember(key, &epoch.to_string())?;
            }
            Ok(epoch)
        })?)
    }

    /// The node's state: what it holds, what has not left it, its peers and certificate.
    pub fn status(&self) -> Result<NodeStatus, NodeError> {
        self.status_with(None)
    }

    /// The node's status, the audit chain's check taken from `audit` (a check made at the
    /// time given) instead of made again: a whole-chain check reads every entry, and an app
    /// that asks often must not make the node do that each time.
    pub fn status_with(&self, audit: Option<(crate::store::AuditCheck, i64)>) -> Result<NodeStatus, NodeError> {
        let (audit, audit_checked_ms) = match audit {
            Some(done) => done,
            None => (self.store.audit().verify_audit()?, now_ms()),
        };
        let certificate_valid_until_ms = match self.store.identity().tls_identity()? {
            Some((cert, _, _)) => Some(crate::tls::not_after_ms(&cert)?),
            None => None,
        };
        Ok(NodeStatus {
            node: self.config.clone(),
            store: self.store.stats()?,
            photos: self.store.blobs().photo_holdings()?,
            not_yet_left_this_device: self.store.backlog(&self.config.name)?,
            peers: self.store.peers().peer_syncs()?,
            certificate_valid_until_ms,
            audit,
            audit_checked_ms,
            audit_losses: self.store.audit().losses()?,
            audit_peer_losses: self.store.audit().peer_losses()?,
            unusual_access: self.unusual_access(now_ms())?,
            connected_peers: None,
        })
    }

    /// The session's view, recording the access in the audit chain. Writes no receipt: a
    /// query is not a person reading (see [`Node::mark_read`]).
    pub fn show(&mut self, id: SessionId, now: i64) -> Result<SessionView, NodeError> {
        let view = self.store.sessions_mut().view(id)?;
        self.open_record(id, "session.view", now)?;
        Ok(view)
    }

    /// The people flagged for unusual access in the last day ([`NodeStatus::unusual_access`]).
    pub fn unusual_access(&self, now: i64) -> Result<Vec<crate::store::UnusualAccess>, NodeError> {
        Ok(self.store.audit().unusual_access(now - UNUSUAL_ACCESS_SHOWN_MS, UNUSUAL_ACCESS_SCAN)?)
    }

    /// Sets how many different records a person may open through the API in an hour, and
    /// counts again what the audit chain holds of the last day's looks at records, records made
    /// and findings: a restarted daemon gives no one a fresh hour. (A chain that cannot be read
    /// here is reported, and the count starts afresh: the daemon still starts.)
    pub fn set_record_limits(&mut self, limits: AccessLimits, now: i64) {
        self.access = access::AccessWatch::new(limits);
        let (since, until) = (now - access::DAY_MS, now + access::WINDOW_MS);
        let seen = match self.store.audit().access_since(since, until, ACCESS_REPLAYED) {
            Ok(seen) => seen,
            Err(e) => {
                tracing::warn!(
                    "the last day's looks at records could not be read from the audit chain ({e}): each person's count starts afresh"
                );
                return;
            }
        };
        for s in seen {
            let (who, system) = s.person;
            let what = match (s.action.as_str(), s.session) {
                ("session.create", Some(id)) => access::Replayed::Created(id),
                ("access.unusual", _) => {
                    let (records, day, cards) = s.flagged;
                    access::Replayed::Alarm { hour: records > 0, day: day > 0, cards: cards > 0 }
                }
                ("access.refused", _) => access::Replayed::Refused,
                (_, Some(id)) => access::Replayed::Opened(id),
                (_, None) => continue,
            };
            self.access.replay(who, system, what, s.at_ms, now);
        }
    }

    /// The person acting opens session `id`'s record (`action`: a view, an export, a photo),
    /// recorded in the audit chain; called before anything of it leaves the node. Through the
    /// local API, a person (or system) who has opened as many different records in the last
    /// hour as [`AccessLimits`] allows is refused a new one (`access.refused`, recorded once
    /// an hour), and one who reaches the alarm is recorded (`access.unusual`) for the
    /// deployer, who sees it in the status. The command line and the node's own work are not
    /// counted: an account that runs `outpost` can read the store whole.
    fn open_record(&mut self, id: SessionId, action: &'static str, now: i64) -> Result<(), NodeError> {
        if let Some((who, system)) = self.acting_caller() {
            let limits = self.access.limits();
            let limits = if system { limits.system } else { limits.person };
            let verdict = self.access.open(who, system, id, now);
            // What to record, if anything: one entry at most per record opened.
            let (entry, detail) = match verdict {
                access::Verdict::Open | access::Verdict::Refused { first: false, .. } => {
                    (None, serde_json::Value::Null)
                }
                access::Verdict::Alarm { opened, day } => {
                    let mut detail = serde_json::json!({
                        "records": opened, "alarm": limits.alarm, "limit": limits.limit, "window_s": access::WINDOW_MS / 1000,
                    });
                    if let Some(day) = day {
                        detail["records_day"] = day.into();
                        detail["day_alarm"] = limits.day_alarm.into();
                    }
                    (Some("access.unusual"), detail)
                }
                access::Verdict::DayAlarm { opened } => (
                    Some("access.unusual"),
                    serde_json::json!({
                        "records_day": opened, "day_alarm": limits.day_alarm, "window_s": access::DAY_MS / 1000,
                    }),
                ),
                access::Verdict::Refused { opened, first: true, .. } => (
                    Some("access.refused"),
                    serde_json::json!({
                        "records": opened, "alarm": limits.alarm, "limit": limits.limit,
                        "window_s": access::WINDOW_MS / 1000, "session": id.to_string(),
                    }),
                ),
            };
            if let Some(entry) = entry {
                // Not written (a full disk): owed again at the next record, not lost for an hour.
                if let Err(e) = self.store.audit_mut().audit_event(entry, detail.clone(), now) {
                    self.access.unrecorded(who, Some(verdict));
                    return Err(e.into());
                }
                let name = self.acting.as_ref().map_or("", |p| p.name.as_str());
                tracing::warn!(person = %name, %detail, "{entry}: more different records opened than this node's alarm or limit");
            }
            if let access::Verdict::Refused { opened, until_ms, .. } = verdict {
                return Err(NodeError::TooManyRecords {
                    opened,
                    minutes: access::minutes_until(until_ms, now),
                    system,
                });
            }
        }
        Ok(self.store.audit_mut().audit_access(id, action, now)?)
    }

    /// The person acting through the API, by id, and whether an integrating system.
    fn acting_caller(&self) -> Option<(i64, bool)> {
        self.acting.as_ref().map(|who| (who.id, who.role == crate::store::people::PersonRole::System))
    }

    /// Refuses, as [`Node::open_record`] would, a person past the limit acting on record `id`
    /// they have not opened this hour (a "read" receipt says a person read it: not one that
    /// could not open it; a session's status changed, or asked to change, by one who could not
    /// look at it). Counts nothing and writes nothing.
    pub(crate) fn may_open(&self, id: SessionId, now: i64) -> Result<(), NodeError> {
        let Some((who, system)) = self.acting_caller() else { return Ok(()) };
        match self.access.refuses(who, system, id, now) {
            None => Ok(()),
            Some((opened, until_ms)) => {
                Err(NodeError::TooManyRecords { opened, minutes: access::minutes_until(until_ms, now), system })
            }
        }
    }

    /// A person on this node has read the session: every message written on another node gets
    /// this node's "read" receipt (a consultant reading a request, a crew reading the advice).
    /// Photos are marked read when a person opens them ([`Node::open_photo`] with `read`).
    /// Returns whether any receipt was new.
    pub fn mark_read(&mut self, id: SessionId, now: i64) -> Result<bool, NodeError> {
        self.may_open(id, now)?;
        let name = self.config.name.clone();
        Ok(self.store.sessions_mut().edit(id, "session.read", None, now, |_, doc| {
            doc.acknowledge(ReceiptLevel::Read, &name, now, |_| false).map_err(crate::store::model(id))
        })?)
    }

    /// A photo's bytes. With `read` (a person opens it, not a download by a script), the photo
    /// is then marked read by this node in every session that holds it.
    pub fn open_photo(&mut self, hash: &str, read: bool, now: i64) -> Result<Vec<u8>, NodeError> {
        if self.store.blobs().photo_withdrawn(hash)? {
            return Err(StoreError::ConsentWithdrawn(hash.to_string()).into());
        }
        let bytes = self.store.blobs().read_blob(hash)?;
        if read {
            self.mark_photo_read(hash, now)?;
        }
        Ok(bytes)
    }

    /// A person has opened a photo (held here or not: a thumbnail is enough to look at): this
    /// node's read receipt on it in every session that references it. Returns those sessions.
    pub fn mark_photo_read(&mut self, hash: &str, now: i64) -> Result<Vec<SessionId>, NodeError> {
        let name = self.config.name.clone();
        // Only where this node keeps the photo for the session's record: a record made from
        // the hash alone is told nothing, not even when the photo was opened.
        let ids = self.store.blobs().sessions_holding_photo(hash)?;
        if ids.is_empty() {
            return Err(StoreError::NoSuchBlob(hash.to_string()).into());
        }
        for id in &ids {
            self.may_open(*id, now)?;
        }
        for id in &ids {
            let id = *id;
            self.store.sessions_mut().edit(
                id,
                "photo.read",
                Some(serde_json::json!({ "photo": hash })),
                now,
                |_, doc| doc.add_receipt(hash, ReceiptLevel::Read, &name, now).map_err(crate::store::model(id)),
            )?;
        }
        Ok(ids)
    }
}

/// The longest client key taken.
const MAX_CLIENT_KEY: usize = 128;

/// A client key for `kind`, with the digest of the request it names.
fn client_key_of<'k>(
    kind: &'static str,
    key: &'k str,
    request: &impl serde::Serialize,
) -> Result<ClientKey<'k>, NodeError> {
    if key.is_empty() || key.len() > MAX_CLIENT_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(NodeError::ClientKey { key: key.to_string() });
    }
    let bytes = serde_json::to_vec(request).map_err(|source| NodeError::Encode { what: "a request", source })?;
    Ok(ClientKey { kind, key, request: *blake3::hash(&bytes).as_bytes() })
}

/// Keeps a node's directory to its owner: what it holds (the store, its key, its certificates)
/// is no one else's to list or read.
pub(crate) fn owner_only_dir(path: &std::path::Path) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
