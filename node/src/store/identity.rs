//! The node's author key, its signatures and the fleet roster.

use std::ops::{Deref, DerefMut};

use super::*;

/// Who this node is: its author key and signatures, the fleet members it knows, its TLS
/// identity and revocation lists (`credentials.rs`), and small metadata.
/// Reached through [`Store::identity`] and [`Store::identity_mut`].
#[derive(Debug)]
pub struct Identity<S>(pub(super) S);

impl<S: Deref<Target = Store>> Identity<S> {
    /// The public half of this node's author key, for the fleet CA to certify.
    pub fn author_public(&self) -> PublicKey {
        self.0.author.public()
    }

    /// The actor id this node writes under.
    pub fn actor(&self) -> &ActorId {
        &self.0.actor
    }

    /// Signs a change hash with this node's author key (what every local write does; exposed for
    /// tools and for the adversarial tests, which play a stolen tablet).
    pub fn sign(&self, hash: &ChangeHash) -> Signature {
        self.0.author.sign(hash)
    }

    /// The name and credential of the member whose changes carry this actor prefix.
    pub fn credential(&self, prefix: &authorship::ActorPrefix) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.0
            .conn
            .row("SELECT name, credential FROM members WHERE prefix = ?1", [prefix.to_vec()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(sql("reading fleet members"))
    }

    /// The signature held for a change.
    pub fn signature(&self, hash: &ChangeHash) -> Result<Option<Signature>, StoreError> {
        let sig: Option<Vec<u8>> = self
            .0
            .conn
            .prepare_cached("SELECT sig FROM change_sigs WHERE hash = ?1")
            .and_then(|mut s| s.query_row([hash.0.to_vec()], |r| r.get(0)).optional())
            .map_err(sql("reading signatures"))?;
        Ok(sig.and_then(|s| s.try_into().ok()))
    }
}

impl<S: DerefMut<Target = Store>> Identity<S> {
    /// Records a fleet member whose credential was checked (its certificate came over TLS, or
    /// was verified against the fleet CA).
    pub fn add_member(&mut self, member: Member, credential: &[u8]) -> Result<(), StoreError> {
        if self.0.roster.get(&member.prefix()).is_some_and(|m| *m == member) {
            return Ok(());
        }
        self.0
            .conn
            .exec(
                "INSERT OR REPLACE INTO members (prefix, name, credential) VALUES (?1, ?2, ?3)",
                params![member.prefix().to_vec(), member.info.name, credential],
            )
            .map_err(sql("recording a fleet member"))?;
        self.0.roster.insert(member);
        Ok(())
    }
}

pub(super) const AUTHOR_AAD: &[u8] = b"outpost/author-key/v1";

/// The node's author key: made on first open (a seed sealed under the node key). The actor id
/// it writes under takes a fresh random instance at every open: a store restored from an older
/// copy (a backup, a re-imaged desk) must never reuse a sequence number of the changes it lost,
/// which its peers still hold and would refuse to merge with a different change of the same
/// number.
pub(super) fn author_key(conn: &Connection, sealer: &Sealer) -> Result<AuthorKey, StoreError> {
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

pub(super) fn load_roster(conn: &Connection) -> Result<Roster, StoreError> {
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
pub(super) fn put_sigs(
    tx: &Transaction<'_>,
    sigs: impl IntoIterator<Item = (ChangeHash, Signature)>,
) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached("INSERT OR IGNORE INTO change_sigs (hash, sig) VALUES (?1, ?2)")
        .map_err(sql("recording signatures"))?;
    for (h, sig) in sigs {
        stmt.execute(params![h.0.to_vec(), sig.to_vec()]).map_err(sql("recording signatures"))?;
    }
    Ok(())
}
