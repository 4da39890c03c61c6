//! The node's TLS identity (and a pending key awaiting its certificate), revocation lists,
//! and small metadata.

use std::ops::{Deref, DerefMut};

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use rustls::pki_types::pem::PemObject;

use super::{CachedSql, Identity, Store, StoreError, sql};

/// Associated data of a pending certificate request's sealed private key.
pub(crate) const PENDING_KEY_AAD: &[u8] = b"outpost/tls-key-pending/v1";
/// Associated data of the node's sealed TLS private key.
pub(crate) const TLS_KEY_AAD: &[u8] = b"outpost/tls-key/v1";
/// Associated data of the node's sealed TLS private key since 7 December 2026, followed by
/// the digest of its certificate and fleet CA ([`tls_key_aad`]).
const TLS_KEY_AAD_V2: &[u8] = b"outpost/tls-key/v2/";

/// The associated data the node's TLS private key is sealed with: it names the certificate and
/// the fleet CA stored beside it. They are public, so they are kept in the clear; but whoever
/// could write the database (or a backup) could otherwise put a CA of their own there, with a
/// certificate it issued for this node's key, and the node would trust an impostor hub with its
/// sessions. Bound to them, the key no longer opens once either is changed, and no one without
/// the node key can seal it again.
pub(crate) fn tls_key_aad(cert: &[u8], ca: &[u8]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&(cert.len() as u64).to_le_bytes());
    h.update(cert);
    h.update(ca);
    [TLS_KEY_AAD_V2, h.finalize().as_bytes()].concat()
}

impl<S: Deref<Target = Store>> Identity<S> {
    /// Reads a value of the meta table.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0
            .conn
            .row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(sql("reading node metadata"))
    }

    /// The private key of the pending certificate request, if any.
    pub fn pending_tls_key(&self) -> Result<Option<String>, StoreError> {
        let Some(sealed) = self.meta_get("tls_key_pending")? else { return Ok(None) };
        let key = self.0.sealer.open("pending TLS private key", PENDING_KEY_AAD, &sealed)?;
        String::from_utf8(key).map(Some).map_err(|_| StoreError::Damaged("the pending key is not text".into()))
    }

    /// The node's TLS identity as PEM texts (certificate, private key, CA), if issued.
    pub fn tls_identity(&self) -> Result<Option<(String, String, String)>, StoreError> {
        let (Some(cert), Some(key), Some(ca)) =
            (self.meta_get("tls_cert")?, self.meta_get("tls_key")?, self.meta_get("tls_ca")?)
        else {
            return Ok(None);
        };
        // Or, in a store whose key was sealed before it was bound, the old way (bound at its next
        // open).
        let opened = self
            .0
            .sealer
            .open("TLS private key", &tls_key_aad(&cert, &ca), &key)
            .or_else(|_| self.0.sealer.open("TLS private key", TLS_KEY_AAD, &key));
        let key = match opened {
            Ok(key) => key,
            Err(_) => {
                return Err(StoreError::Damaged(
                    "the node's certificate or the fleet CA it trusts was changed outside outpost (its private key \
                     no longer opens with them). Keep this directory as evidence, and restore the node from its \
                     latest backup into a new directory (`outpost restore`)"
                        .into(),
                ));
            }
        };
        let text =
            |b: Vec<u8>| String::from_utf8(b).map_err(|_| StoreError::Damaged("a stored PEM is not text".into()));
        Ok(Some((text(cert)?, text(key)?, text(ca)?)))
    }

    /// The revocation list held, with its number.
    pub fn revocations(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let (Some(n), Some(der)) = (self.meta_get("crl_number")?, self.meta_get("crl_der")?) else { return Ok(None) };
        let n = u64::from_be_bytes(n.try_into().map_err(|_| StoreError::Damaged("crl_number".into()))?);
        Ok(Some((n, der)))
    }
}

impl<S: DerefMut<Target = Store>> Identity<S> {
    /// Stores a revocation list (the caller has verified it).
    pub fn put_revocations(&mut self, number: u64, der: &[u8]) -> Result<(), StoreError> {
        let tx = Transaction::new_unchecked(&self.0.conn, TransactionBehavior::Immediate)
            .map_err(sql("starting a write"))?;
        tx.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('crl_der', ?1)", [der])
            .map_err(sql("storing revocations"))?;
        tx.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('crl_number', ?1)", [number.to_be_bytes().to_vec()])
            .map_err(sql("storing revocations"))?;
        tx.commit().map_err(sql("committing"))
    }

    /// Writes a value of the meta table (durably).
    pub fn meta_put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0
            .conn
            .exec(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(sql("writing node metadata"))?;
        Ok(())
    }

    /// Stores the node's TLS identity; the private key is sealed under the node key.
    pub fn set_tls_identity(&mut self, cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<(), StoreError> {
        let tx = Transaction::new_unchecked(&self.0.conn, TransactionBehavior::Immediate)
            .map_err(sql("starting a write"))?;
        for (k, v) in [("tls_cert", cert_pem.as_bytes().to_vec()), ("tls_ca", ca_pem.as_bytes().to_vec())] {
            tx.exec(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )
            .map_err(sql("storing the certificate"))?;
        }
        let sealed = self.0.sealer.seal(&tls_key_aad(cert_pem.as_bytes(), ca_pem.as_bytes()), key_pem.as_bytes())?;
        tx.exec(
            "INSERT INTO meta (key, value) VALUES ('tls_key', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [sealed],
        )
        .map_err(sql("storing the private key"))?;
        tx.commit().map_err(sql("committing"))?;
        // This node is a member of its own roster: its changes may come back to it (a restore).
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| StoreError::Damaged(format!("the node certificate does not parse: {e}")))?;
        if let Ok(member) = crate::tls::member_of(&der) {
            self.add_member(member, der.as_ref())?;
        }
        Ok(())
    }

    /// Keeps the private key of a certificate request (`outpost cert request`), sealed, until
    /// its certificate is installed; a newer request replaces it.
    pub fn set_pending_tls_key(&mut self, key_pem: &str) -> Result<(), StoreError> {
        let sealed = self.0.sealer.seal(PENDING_KEY_AAD, key_pem.as_bytes())?;
        self.0
            .conn
            .exec(
                "INSERT INTO meta (key, value) VALUES ('tls_key_pending', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [sealed],
            )
            .map_err(sql("storing the request's private key"))?;
        Ok(())
    }

    /// Installs the certificate signed for the pending request, with its key, then forgets the
    /// request (a crash between the two leaves the same key pending, which is harmless: a new
    /// request replaces it).
    pub fn install_pending(&mut self, cert_pem: &str, ca_pem: &str) -> Result<(), StoreError> {
        let key = self.pending_tls_key()?.ok_or_else(|| StoreError::Damaged("no pending request".into()))?;
        self.set_tls_identity(cert_pem, &key, ca_pem)?;
        self.0
            .conn
            .exec("DELETE FROM meta WHERE key = 'tls_key_pending'", [])
            .map_err(sql("forgetting the request"))?;
        Ok(())
    }
}

impl Store {
    /// Binds the TLS private key of a store sealed before keys were bound to their certificate
    /// and CA (trusting what it holds when this version first opens it). Best effort: a store
    /// opened on a full disk tries again at its next open.
    pub(super) fn bind_tls_key(&self) {
        let id = self.identity();
        let (Ok(Some(cert)), Ok(Some(ca)), Ok(Some(sealed))) =
            (id.meta_get("tls_cert"), id.meta_get("tls_ca"), id.meta_get("tls_key"))
        else {
            return;
        };
        let aad = tls_key_aad(&cert, &ca);
        if self.sealer.open("TLS private key", &aad, &sealed).is_ok() {
            return;
        }
        let Ok(key) = self.sealer.open("TLS private key", TLS_KEY_AAD, &sealed) else { return };
        let Ok(bound) = self.sealer.seal(&aad, &key) else { return };
        if let Err(e) = self.conn.exec("UPDATE meta SET value = ?1 WHERE key = 'tls_key'", [bound]) {
            tracing::warn!("cannot bind the TLS key to its certificate yet: {e}");
        }
    }
}
