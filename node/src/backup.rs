//! Backup and restore of a node directory.
//!
//! A backup is one SQLite file: a consistent copy of the store (`VACUUM INTO`, safe while the
//! daemon writes), still sealed under the node's data key, with the directory's identity files
//! beside the tables (`node.toml`, `outpost.toml`, the certificates). The data key is not in
//! it: a backup without its key is ciphertext, which is the point. Keep the key apart (a key
//! store, a sealed envelope), and give it to `outpost restore`.
//!
//! A restored node has the sessions the backup had; its peers send back whatever they hold
//! that it lacks. It writes under a fresh Automerge actor (every open does), so it never
//! reuses a sequence number of a change it lost, and it forgets what it knew of its peers, so
//! its first conversation with each compares everything.

use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::config::{ConfigError, NodeConfig, NodeDir};
use crate::crypto::{CryptoError, KEY_ENV, NodeKey};
use crate::node::{Node, NodeError};

/// Format of a backup file.
pub const BACKUP_FORMAT: i64 = 1;

/// Files of a node directory a backup carries (never the key).
const CARRIED: &[&str] = &["node.toml", "outpost.toml", "tls/node.crt", "tls/ca.crt"];

/// Why a backup could not be taken or restored (each says what to do instead).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file is not a backup SQLite can read.
    #[error("{} is not a usable outpost backup: {detail}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        detail: String,
    },
    /// The file lacks something every backup holds.
    #[error("{} is not an outpost backup (no {missing})", path.display())]
    NotABackup {
        /// The file.
        path: PathBuf,
        /// What it lacks.
        missing: String,
    },
    /// A backup of a format this version does not know.
    #[error("{} is a newer backup format ({format}); upgrade outpost", path.display())]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its format.
        format: i64,
    },
    /// The backup's audit chain does not verify.
    #[error(
        "the backup's audit chain is broken at entry {seq} of {entries}: it was changed after it was taken; restore an older backup, and keep this one for investigation"
    )]
    AuditBroken {
        /// The first entry that does not follow.
        seq: u64,
        /// Entries in the chain.
        entries: u64,
    },
    /// The backup's own configuration is missing or broken.
    #[error("the backup's node.toml {0}")]
    Config(String),
    /// The file to write exists.
    #[error("{} exists; give a new file name", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The copy made is damaged.
    #[error("the copy failed its integrity check: {0}")]
    Damaged(String),
    /// The directory already holds a store (a restore never overwrites one).
    #[error("{} {what}; restore into a new directory (a restore never overwrites a store)", dir.display())]
    HoldsStore {
        /// The directory.
        dir: PathBuf,
        /// What it holds.
        what: &'static str,
    },
    /// The directory is another node's.
    #[error("{} holds node {here}, the backup is of {backup}; restore into a new directory", dir.display())]
    OtherNode {
        /// The directory.
        dir: PathBuf,
        /// The node it holds.
        here: String,
        /// The node backed up.
        backup: String,
    },
    /// The node's key was rotated since the backup.
    #[error(
        "the backup is sealed under key {backup}, and this node's key is now {now} (rotated since the backup?): restore into a new directory with --key-file and the key of that time"
    )]
    KeyRotatedSince {
        /// The backup's key id.
        backup: String,
        /// The node's key id now.
        now: String,
    },
    /// No key was given for a restore into a new directory.
    #[error(
        "give the node's data key: --key-file FILE (a copy of its node.key) or {KEY_ENV}; the backup is sealed under key {0}"
    )]
    KeyNeeded(String),
    /// The store in the backup is not sealed under the key given.
    #[error("the backup's store does not open under key {0}: it was sealed under another key")]
    WrongKey(String),
}

/// What a backup holds.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The node.
    pub node: String,
    /// The file written.
    pub file: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Sessions in it.
    pub sessions: u64,
    /// When it was taken (ms since the epoch).
    pub taken_ms: i64,
    /// The id of the key it is sealed under (not the key).
    pub key_id: String,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The node.
    pub node: String,
    /// The directory restored into.
    pub dir: PathBuf,
    /// Sessions restored.
    pub sessions: u64,
    /// When the backup was taken.
    pub taken_ms: i64,
    /// The staff who can sign in as of the backup (integrating systems apart): anyone disabled
    /// since it was taken can sign in again, until disabled anew.
    pub staff: Vec<String>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |source| ConfigError::Io { path: path.to_path_buf(), source }.into()
}

fn db(path: &Path) -> impl Fn(rusqlite::Error) -> NodeError + '_ {
    move |e| BackupError::Unreadable { path: path.to_path_buf(), detail: e.to_string() }.into()
}

fn sync_parent(path: &Path) -> Result<(), NodeError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io(parent))
}

/// Takes a backup of the node in `dir` into `out` (which must not exist).
pub fn backup(dir: &NodeDir, out: &Path, now: i64) -> Result<BackupReport, NodeError> {
    let node = Node::open(dir)?;
    if out.exists() {
        return Err(BackupError::Exists { path: out.to_path_buf() }.into());
    }
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = fs::remove_file(&partial);
    node.backup_into(&partial)?;
    let sessions = node.stats()?.sessions;
    let key_id = node.config().key_id.clone();
    // The node stays open (its store lock shared) until the copy is whole: no key rotation can
    // run meanwhile, so the copy, its key id and the carried node.toml agree.
    let result = (|| {
        let conn = Connection::open(&partial).map_err(db(&partial))?;
        conn.execute_batch(
            "CREATE TABLE backup_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE backup_files (name TEXT PRIMARY KEY, bytes BLOB NOT NULL);",
        )
        .map_err(db(&partial))?;
        let cfg = dir.read_config()?;
        for (k, v) in [
            ("format", BACKUP_FORMAT.to_string()),
            ("node", cfg.name.clone()),
            ("taken_ms", now.to_string()),
            ("key_id", key_id.clone()),
        ] {
            conn.execute("INSERT INTO backup_info (key, value) VALUES (?1, ?2)", params![k, v])
                .map_err(db(&partial))?;
        }
        for name in CARRIED {
            let path = dir.root().join(name);
            if let Ok(bytes) = fs::read(&path) {
                conn.execute("INSERT INTO backup_files (name, bytes) VALUES (?1, ?2)", params![name, bytes])
                    .map_err(db(&partial))?;
            }
        }
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(db(&partial))?;
        if check != "ok" {
            return Err(BackupError::Damaged(check).into());
        }
        drop(conn);
        fs::File::open(&partial).and_then(|f| f.sync_all()).map_err(io(&partial))?;
        fs::rename(&partial, out).map_err(io(out))?;
        sync_parent(out)?;
        Ok(cfg)
    })();
    drop(node);
    let cfg = match result {
        Ok(cfg) => cfg,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    let bytes = fs::metadata(out).map_err(io(out))?.len();
    Ok(BackupReport { node: cfg.name, file: out.to_path_buf(), bytes, sessions, taken_ms: now, key_id })
}

/// Restores the backup `from` into `dir`: a new directory (identity files from the backup,
/// the key from `key_file` or `OUTPOST_NODE_KEY`), or the directory of the same node whose
/// store is missing (its own files and key kept).
pub fn restore(from: &Path, dir: &NodeDir, key_file: Option<&Path>) -> Result<RestoreReport, NodeError> {
    let src = Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db(from))?;
    let info = |k: &str| -> Result<String, NodeError> {
        src.query_row("SELECT value FROM backup_info WHERE key = ?1", [k], |r| r.get::<_, String>(0))
            .optional()
            .map_err(db(from))?
            .ok_or_else(|| BackupError::NotABackup { path: from.to_path_buf(), missing: k.to_string() }.into())
    };
    let format: i64 = info("format")?.parse().unwrap_or(i64::MAX);
    if format > BACKUP_FORMAT {
        return Err(BackupError::NewerFormat { path: from.to_path_buf(), format }.into());
    }
    let taken_ms: i64 = info("taken_ms")?.parse().unwrap_or(0);
    let files: Vec<(String, Vec<u8>)> = {
        let mut stmt = src.prepare("SELECT name, bytes FROM backup_files").map_err(db(from))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db(from))?
            .collect::<Result<_, _>>()
            .map_err(db(from))?
    };
    // A backup is a plain SQLite file: whoever can edit one can list any name here. Only the
    // files a backup carries are written back, each at its own place in the node's directory
    // (a name such as "../../.ssh/authorized_keys" or an absolute path would otherwise be
    // written wherever the operator can write, and removed again if the restore failed).
    if let Some((name, _)) = files.iter().find(|(n, _)| !CARRIED.contains(&n.as_str())) {
        return Err(BackupError::NotABackup {
            path: from.to_path_buf(),
            missing: format!("place for a file named {name:?}: a backup carries only {}", CARRIED.join(", ")),
        }
        .into());
    }
    let file = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone());
    let cfg_text = file("node.toml").ok_or_else(|| BackupError::Config("is missing from it".into()))?;
    let cfg: NodeConfig = toml::from_str(&String::from_utf8_lossy(&cfg_text))
        .map_err(|e| BackupError::Config(format!("does not parse: {e}")))?;
    drop(src);

    let existing = dir.config_path().exists();
    if !existing && dir.db_path().exists() {
        return Err(
            BackupError::HoldsStore { dir: dir.root().to_path_buf(), what: "holds a store but no node.toml" }.into()
        );
    }
    let mut created: Vec<PathBuf> = Vec::new();
    let result = (|| -> Result<(), NodeError> {
        if existing {
            let here = dir.read_config()?;
            if here.name != cfg.name {
                return Err(BackupError::OtherNode {
                    dir: dir.root().to_path_buf(),
                    here: here.name,
                    backup: cfg.name.clone(),
                }
                .into());
            }
            if dir.db_path().exists() {
                return Err(
                    BackupError::HoldsStore { dir: dir.root().to_path_buf(), what: "already has a store" }.into()
                );
            }
            let (key, _) = NodeKey::load(&dir.key_path())?;
            if key.id() != cfg.key_id {
                return Err(BackupError::KeyRotatedSince { backup: cfg.key_id.clone(), now: key.id() }.into());
            }
        } else {
            fs::create_dir_all(dir.root()).map_err(io(dir.root()))?;
            crate::node::owner_only_dir(dir.root())?;
            let key = match (key_file, std::env::var(KEY_ENV)) {
                (Some(path), _) => NodeKey::load_file(path)?.0,
                (None, Ok(text)) => NodeKey::from_hex(&text, KEY_ENV)?,
                (None, Err(_)) => {
                    return Err(BackupError::KeyNeeded(cfg.key_id.clone()).into());
                }
            };
            if key.id() != cfg.key_id {
                return Err(CryptoError::WrongKey {
                    origin: key_file.map_or(KEY_ENV.to_string(), |p| p.display().to_string()),
                    found: key.id(),
                    expected: cfg.key_id.clone(),
                }
                .into());
            }
            if key_file.is_some() {
                key.write_new(&dir.key_path())?;
                created.push(dir.key_path());
            }
            for (name, bytes) in &files {
                let path = dir.root().join(name);
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io(parent))?;
                }
                fs::write(&path, bytes).map_err(io(&path))?;
                created.push(path);
            }
        }
        // The store: copied beside, its backup tables and per-peer memory dropped, then moved in.
        let mut staging = dir.db_path().into_os_string();
        staging.push(".restoring");
        let staging = PathBuf::from(staging);
        fs::copy(from, &staging).map_err(io(&staging))?;
        created.push(staging.clone());
        {
            let conn = Connection::open(&staging).map_err(db(from))?;
            // Per-peer knowledge is what the restored node can no longer vouch for; API
            // sessions signed out since the backup must not come back.
            conn.execute_batch(
                "DROP TABLE backup_info; DROP TABLE backup_files;
                 DELETE FROM peer_docs; DELETE FROM peer_marks; DELETE FROM peer_directory;
                 DELETE FROM peer_syncs; DELETE FROM api_sessions;",
            )
            .map_err(db(from))?;
        }
        fs::File::open(&staging).and_then(|f| f.sync_all()).map_err(io(&staging))?;
        let (key, _) = NodeKey::load(&dir.key_path())?;
        if !crate::store::sealed_under(&staging, &crate::crypto::Sealer::new(&key))? {
            return Err(BackupError::WrongKey(key.id()).into());
        }
        // A log left by the lost store must not be replayed onto the restored one.
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut stale = dir.db_path().into_os_string();
            stale.push(suffix);
            let stale = PathBuf::from(stale);
            if stale.exists() {
                let mut aside = stale.clone().into_os_string();
                aside.push(format!(".stale-{}", crate::node::now_ms()));
                fs::rename(&stale, &aside).map_err(io(&stale))?;
            }
        }
        fs::rename(&staging, dir.db_path()).map_err(io(&staging))?;
        created.retain(|p| p != &staging);
        created.push(dir.db_path());
        sync_parent(&dir.db_path())?;
        let node = Node::open(dir)?;
        node.integrity_check()?;
        // A backup whose audit chain is broken is no record to restore: the chain must be
        // whole in the store brought back, or the break would be laid at the restored node's
        // door.
        let chain = node.verify_audit()?;
        if let Some(seq) = chain.broken_at {
            return Err(BackupError::AuditBroken { seq, entries: chain.entries }.into());
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Leave nothing half made: a directory is either restored whole or left as it was.
        for p in created.iter().rev() {
            let _ = fs::remove_file(p);
        }
        return Err(e);
    }
    let mut node = Node::open(dir)?;
    let sessions = node.stats()?.sessions;
    node.record_restore(from, taken_ms, sessions, crate::node::now_ms())?;
    let staff = node
        .people()?
        .into_iter()
        .filter(|p| p.role != crate::store::people::PersonRole::System)
        .map(|p| p.name)
        .collect();
    Ok(RestoreReport { node: cfg.name, dir: dir.root().to_path_buf(), sessions, taken_ms, staff })
}
