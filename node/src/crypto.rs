//! Encryption at rest: one 256-bit key per node, XChaCha20-Poly1305 for every sealed value.
//!
//! A sealed value is `version (1 byte) || nonce (24 bytes) || ciphertext || tag (16 bytes)`.
//! The nonce is random (192 bits, so random nonces never collide in practice). Every seal
//! carries associated data naming what the value is and where it belongs (for example the
//! session id of a document change), so a row copied into another place fails to open.
//!
//! The key comes from `OUTPOST_NODE_KEY` (64 hex characters) when that is set, for deployments
//! with a key store; otherwise from the node's key file, which must be readable only by its owner.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The environment variable that supplies the node key instead of the key file.
pub const KEY_ENV: &str = "OUTPOST_NODE_KEY";

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// Bytes a seal adds to its plaintext.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// Why a key could not be loaded or a value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key file is missing or unreadable.
    #[error("cannot read the node key {path}: {source}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file can be read by other users.
    #[error(
        "the node key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` and keep it private"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key text is not 64 hex characters.
    #[error("the node key from {origin} is not 64 hexadecimal characters")]
    KeyFormat {
        /// Where it came from.
        origin: String,
    },
    /// The key does not match the one this node was initialised with.
    #[error(
        "the node key from {origin} is not this node's key (key id {found}, node expects {expected}); check {KEY_ENV} or the key file"
    )]
    WrongKey {
        /// Where it came from.
        origin: String,
        /// Id of the key supplied.
        found: String,
        /// Id recorded in the node's configuration.
        expected: String,
    },
    /// A sealed value failed authentication: wrong key, or the bytes were altered or moved.
    #[error("a sealed {what} failed to decrypt: the data was altered, moved, or sealed under another key")]
    Open {
        /// What was being opened.
        what: &'static str,
    },
    /// The operating system's random generator failed.
    #[error("the system random generator failed: {0}")]
    Random(String),
}

/// A node's data key. Its bytes never leave this type except through [`NodeKey::to_hex`] at init.
#[derive(Clone)]
pub struct NodeKey([u8; 32]);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey(id {})", self.id())
    }
}

impl NodeKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = [0u8; 32];
        random_bytes(&mut k)?;
        Ok(NodeKey(k))
    }

    /// Parses 64 hex characters (surrounding white space ignored).
    pub fn from_hex(text: &str, origin: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(text.trim()).map_err(|_| CryptoError::KeyFormat { origin: origin.to_string() })?;
        let k: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::KeyFormat { origin: origin.to_string() })?;
        Ok(NodeKey(k))
    }

    /// Hex form, for writing the key file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A public identifier of the key (a keyed hash of a constant): tells a wrong key from the right one
    /// without revealing anything about it.
    pub fn id(&self) -> String {
        let h = blake3::keyed_hash(&self.0, b"outpost node key id v1");
        hex::encode(&h.as_bytes()[..8])
    }

    /// Loads the key from the environment if set, else from `path`, refusing a key file that others can read.
    pub fn load(path: &Path) -> Result<(Self, String), CryptoError> {
        if let Ok(text) = std::env::var(KEY_ENV) {
            return Ok((NodeKey::from_hex(&text, KEY_ENV)?, KEY_ENV.to_string()));
        }
        NodeKey::load_file(path)
    }

    /// Loads a key file (never the environment), refusing one that others can read.
    pub fn load_file(path: &Path) -> Result<(Self, String), CryptoError> {
        let meta = fs::metadata(path).map_err(|source| CryptoError::KeyFile { path: path.to_path_buf(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::KeyPermissions { path: path.to_path_buf(), mode });
        }
        let text =
            fs::read_to_string(path).map_err(|source| CryptoError::KeyFile { path: path.to_path_buf(), source })?;
        let origin = path.display().to_string();
        Ok((NodeKey::from_hex(&text, &origin)?, origin))
    }

    /// Writes the key file, readable and writable by the owner only; fails if it exists.
    pub fn write_new(&self, path: &Path) -> Result<(), CryptoError> {
        let io = |source| CryptoError::KeyFile { path: path.to_path_buf(), source };
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
        f.write_all(format!("{}\n", self.to_hex()).as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(())
    }
}

/// Seals and opens values under a node key.
pub struct Sealer {
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

impl Sealer {
    /// A sealer for `key`.
    pub fn new(key: &NodeKey) -> Self {
        Sealer { aead: XChaCha20Poly1305::new((&key.0).into()) }
    }

    /// Encrypts and authenticates `plain`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        let ct = self
            .aead
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| CryptoError::Random("encryption failed".into()))?;
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plain.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Checks and decrypts a sealed value; `what` names it in the error.
    pub fn open(&self, what: &'static str, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < SEAL_OVERHEAD || sealed[0] != SEAL_VERSION {
            return Err(CryptoError::Open { what });
        }
        let nonce = XNonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        self.aead.decrypt(nonce, Payload { msg: &sealed[1 + NONCE_LEN..], aad }).map_err(|_| CryptoError::Open { what })
    }
}

/// Fills `buf` from the operating system's random generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_context() {
        let k = NodeKey::generate().unwrap();
        let s = Sealer::new(&k);
        let sealed = s.seal(b"session A", b"NHS 9434765919").unwrap();
        assert_eq!(s.open("test", b"session A", &sealed).unwrap(), b"NHS 9434765919");
        assert!(s.open("test", b"session B", &sealed).is_err(), "moved to another context");
        let other = Sealer::new(&NodeKey::generate().unwrap());
        assert!(other.open("test", b"session A", &sealed).is_err(), "another key");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(s.open("test", b"session A", &tampered).is_err(), "altered");
        assert!(s.open("test", b"session A", &sealed[..10]).is_err(), "truncated");
    }

    #[test]
    fn key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let k = NodeKey::generate().unwrap();
        k.write_new(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (loaded, _) = NodeKey::load(&path).unwrap();
        assert_eq!(loaded.id(), k.id());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKey::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
