//! A node directory and its configuration file (`node.toml`).
//!
//! ```text
//! D/node.toml    name, role, organisation, ICB, Automerge actor id, key id (no secrets)
//! D/node.key     the data key, mode 0600 (absent when the key comes from OUTPOST_NODE_KEY)
//! D/outpost.db   the SQLite store (with outpost.db-wal and outpost.db-shm beside it)
//! D/outpost.toml how the daemon runs (the deployer's; see `settings`)
//! D/node.key.new the next key, only while `outpost key rotate` runs or after it was killed
//! D/outpost.reserve  8 MiB kept back for reading and syncing on a full disk (`store::space`)
//! D/daemon.lock  held by the daemon (and key rotation, restore): one per directory (`service`)
//! D/store.lock   held shared by every process with the store open, alone by a key rotation
//! D/tls/         copies of the node's and the CA's certificates (public)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sync_protocol::scope::PeerInfo;
use sync_protocol::vocab::{Role, ServiceLine};

/// Version of the `node.toml` format.
pub const CONFIG_FORMAT: u32 = 1;
const CONFIG_FILE: &str = "node.toml";
const KEY_FILE: &str = "node.key";
const DB_FILE: &str = "outpost.db";
const NEW_KEY_FILE: &str = "node.key.new";

/// Why a node directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No `node.toml` in the directory.
    #[error(
        "{dir} is not an outpost node directory (no {CONFIG_FILE}); create one with `outpost init --dir {dir} --name NAME --role edge|hub|desk`"
    )]
    NotANode {
        /// The directory given.
        dir: PathBuf,
    },
    /// `outpost init` on a directory that already holds a node.
    #[error("{dir} already holds an outpost node ({CONFIG_FILE} exists); choose another directory")]
    AlreadyANode {
        /// The directory given.
        dir: PathBuf,
    },
    /// The configuration file cannot be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration file is not valid.
    #[error("{path} is not a valid node configuration: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// `node.toml` is there but the store is not: a disk restored without it, a file deleted.
    /// The node refuses to start an empty store in its place (it would take new sessions into
    /// it while its real data is missing).
    #[error(
        "the store {db} of node {name} is missing: this node's sessions are not on this disk. Restore them from \
         the latest backup: `outpost restore --from BACKUP --dir {dir}` (the node's key and identity are kept), \
         then run the node and it syncs back what the backup lacks"
    )]
    StoreMissing {
        /// The node's name.
        name: String,
        /// The directory.
        dir: PathBuf,
        /// The missing database file.
        db: PathBuf,
    },
    /// A node name with characters that cannot appear in receipts, certificates and file names.
    #[error("node name {0:?} must be 1 to 64 characters of a-z, 0-9, '-' and '.', starting with a letter or digit")]
    BadName(String),
    /// An ODS or ICB code that is not plausible.
    #[error("{field} {value:?} must be 2 to 10 letters and digits")]
    BadCode {
        /// Which code.
        field: &'static str,
        /// What was given.
        value: String,
    },
}

/// What `node.toml` holds.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Format version of this file.
    pub format: u32,
    /// The node's name, unique in the fleet (it appears in receipts and certificates).
    pub name: String,
    /// Edge, hub or desk.
    pub role: Role,
    /// ODS code of the organisation running the node.
    pub org: Option<String>,
    /// ICB the node belongs to.
    pub icb: Option<String>,
    /// For a desk: the service lines it answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<ServiceLine>,
    /// The node's Automerge actor id (hex): one writer identity for every document it edits.
    pub actor: String,
    /// Id of the data key (not the key): detects a wrong key before anything is written.
    pub key_id: String,
    /// Where the key is kept: "file" or "env".
    pub key_source: String,
    /// When the node was initialised (ms since the epoch).
    pub created_ms: i64,
}

impl NodeConfig {
    /// The identity a certificate for this node states.
    pub fn peer_info(&self) -> PeerInfo {
        PeerInfo {
            name: self.name.clone(),
            role: self.role,
            org: self.org.clone(),
            icb: self.icb.clone(),
            lines: self.lines.clone(),
        }
    }
}

/// Paths of a node directory.
#[derive(Debug, Clone)]
pub struct NodeDir {
    root: PathBuf,
}

impl NodeDir {
    /// The directory at `root` (not checked).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        NodeDir { root: root.into() }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `node.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    /// `node.key`.
    pub fn key_path(&self) -> PathBuf {
        self.root.join(KEY_FILE)
    }
    /// `node.key.new`: the next key while `outpost key rotate` runs (or after it was killed).
    pub fn new_key_path(&self) -> PathBuf {
        self.root.join(NEW_KEY_FILE)
    }
    /// `outpost.db`.
    pub fn db_path(&self) -> PathBuf {
        self.root.join(DB_FILE)
    }

    /// Reads `node.toml`, or says clearly that this is not a node directory.
    pub fn read_config(&self) -> Result<NodeConfig, ConfigError> {
        let path = self.config_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotANode { dir: self.root.clone() });
            }
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        let cfg: NodeConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Invalid { path: path.clone(), problem: e.to_string() })?;
        if cfg.format > CONFIG_FORMAT {
            return Err(ConfigError::Invalid {
                path,
                problem: format!("format {} is newer than this outpost understands ({CONFIG_FORMAT})", cfg.format),
            });
        }
        Ok(cfg)
    }

    /// Writes `node.toml` atomically (temporary file, fsync, rename).
    pub fn write_config(&self, cfg: &NodeConfig) -> Result<(), ConfigError> {
        let path = self.config_path();
        let text = toml::to_string_pretty(cfg)
            .map_err(|e| ConfigError::Invalid { path: path.clone(), problem: e.to_string() })?;
        let tmp = self.root.join(".node.toml.tmp");
        let io = |source| ConfigError::Io { path: path.clone(), source };
        fs::write(&tmp, text).map_err(io)?;
        fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        fs::File::open(&self.root).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

/// Checks a node name: it ends up in receipt keys, certificate names and file names.
pub fn check_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok { Ok(()) } else { Err(ConfigError::BadName(name.to_string())) }
}

/// Checks an ODS or ICB code.
pub fn check_code(field: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = (2..=10).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(ConfigError::BadCode { field, value: value.to_string() }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted_to_safe_characters() {
        assert!(check_name("amb-07.nyas").is_ok());
        for bad in ["", "Amb", "a/b", "-x", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_directory_without_config_is_not_a_node() {
        let dir = tempfile::tempdir().unwrap();
        let err = NodeDir::new(dir.path()).read_config().unwrap_err();
        assert!(matches!(err, ConfigError::NotANode { .. }));
        assert!(err.to_string().contains("outpost init"), "{err}");
    }
}
