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
    /// was verified against the fleet CA). An author key speaks for the identity of its newest
    /// certificate (the latest `notBefore`): a credential older than the one held for its key,
    /// stating another identity, is not recorded, and this returns `false` (superseded). A
    /// tablet that once held a desk's certificate, or an expired one of another role, cannot
    /// choose which identity its changes are judged under by presenting the older one.
    pub fn add_member(&mut self, member: Member, credential: &[u8]) -> Result<bool, StoreError> {
        let prefix = member.prefix();
        if let Some(held) = self.0.roster.get(&prefix) {
            if *held == member {
                return Ok(true);
            }
            // Two certificates of one second are ordered by their bytes, so that every node
            // keeps the same one.
            let stored = self.credential(&prefix)?.map(|(_, c)| c);
            if let Some(stored) = stored
                && let (Some(new), Some(old)) = (not_before(credential), not_before(&stored))
                && (new, credential) <= (old, stored.as_slice())
            {
                return Ok(false);
            }
        }
        self.0
            .conn
            .exec(
                "INSERT OR REPLACE INTO members (prefix, name, credential) VALUES (?1, ?2, ?3)",
                params![prefix.to_vec(), member.info.name, credential],
            )
            .map_err(sql("recording a fleet member"))?;
        self.0.roster.insert(member);
        self.0.roster_gen += 1;
        Ok(true)
    }
}

/// When a certificate (DER) began to be valid, in seconds since the epoch.
fn not_before(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der).ok().map(|(_, c)| c.validity().not_before.timestamp())
}

pub(super) const AUTHOR_AAD: &[u8] = b"outpost/author-key/v1";

/// The node's author key: made on first open (a seed sealed under the node key). The actor id
/// it writes under takes a fresh random instance at every open: a store restored from an older
/// copy (a backup, a re-imaged desk) must never reuse a sequence number of the changes it lost,
/// which its peers still hold and would refuse to merge with a different change of the same
/// number.
pub(super) fn author_key(conn: &Connection, sealer: &Sealer) -> Result<AuthorKey, StoreError> {
    let seed = author_seed(conn, sealer)?;
    let mut instance = [0u8; 8];
    crate::crypto::random_bytes(&mut instance)?;
    Ok(AuthorKey::from_seed(&seed, instance))
}

/// This node's author seed, made (and sealed) at its first use.
pub(super) fn author_seed(conn: &Connection, sealer: &Sealer) -> Result<[u8; 32], StoreError> {
    let sealed: Option<Vec<u8>> = conn
        .row("SELECT value FROM meta WHERE key = 'author_seed'", [], |r| r.get(0))
        .optional()
        .map_err(sql("reading the author key"))?;
    match sealed {
        Some(sealed) => {
            let seed = sealer.open("author key", AUTHOR_AAD, &sealed)?;
            seed.try_into().map_err(|_| StoreError::Damaged("the author key has the wrong length".into()))
        }
        None => {
            let mut seed = [0u8; 32];
            crate::crypto::random_bytes(&mut seed)?;
            let sealed = sealer.seal(AUTHOR_AAD, &seed)?;
            conn.exec("INSERT OR REPLACE INTO meta (key, value) VALUES ('author_seed', ?1)", params![sealed])
                .map_err(sql("recording the author key"))?;
            Ok(seed)
        }
    }
}

/// Every member's certificate held (DER).
fn member_credentials(conn: &Connection) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut stmt = conn.prepare("SELECT credential FROM members").map_err(sql("reading fleet members"))?;
    let creds = stmt
        .query_map([], |r| r.get(0))
        .map_err(sql("reading fleet members"))?
        .collect::<Result<_, _>>()
        .map_err(sql("reading fleet members"))?;
    Ok(creds)
}

pub(super) fn load_roster(conn: &Connection) -> Result<Roster, StoreError> {
    let mut roster = Roster::new();
    let creds = member_credentials(conn)?;
    for der in creds {
        // Stored only after it was checked; a damaged row is skipped, not trusted.
        if let Ok(m) = crate::tls::member_of(&rustls::pki_types::CertificateDer::from(der)) {
            roster.insert(m);
        }
    }
    Ok(roster)
}

/// The members whose certificate (the newest held for each author key) the revocation list
/// `crl` names: their keys may be in a thief's hands.
pub(super) fn revoked_authors(
    conn: &Connection,
    crl: &[u8],
) -> Result<std::collections::HashSet<authorship::ActorPrefix>, StoreError> {
    let mut out = std::collections::HashSet::new();
    let Ok((_, list)) = x509_parser::parse_x509_crl(crl) else { return Ok(out) };
    let serials: std::collections::HashSet<&[u8]> = list.iter_revoked_certificates().map(|r| r.raw_serial()).collect();
    if serials.is_empty() {
        return Ok(out);
    }
    let creds = member_credentials(conn)?;
    for der in creds {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else { continue };
        if serials.contains(cert.raw_serial())
            && let Ok(m) = crate::tls::member_of(&rustls::pki_types::CertificateDer::from(der.clone()))
        {
            out.insert(m.prefix());
        }
    }
    Ok(out)
}

impl Store {
    /// The members whose certificate is revoked, found again if the revocation list or the
    /// roster changed since they were last found (a certificate recorded or replaced). Each
    /// received batch asks: it reads the list's number alone, and the list only when that moved.
    pub(super) fn revoked_members(
        &mut self,
    ) -> Result<std::sync::Arc<std::collections::HashSet<authorship::ActorPrefix>>, StoreError> {
        let number = match Identity(&*self).meta_get("crl_number")? {
            Some(n) => u64::from_be_bytes(n.try_into().map_err(|_| StoreError::Damaged("crl_number".into()))?),
            None => 0,
        };
        let generation = self.roster_gen;
        if let Some((n, g, set)) = &self.revoked
            && *n == number
            && *g == generation
        {
            return Ok(set.clone());
        }
        let set = match Identity(&*self).revocations()? {
            Some((_, der)) => revoked_authors(&self.conn, &der)?,
            None => Default::default(),
        };
        let set = std::sync::Arc::new(set);
        self.revoked = Some((number, generation, set.clone()));
        Ok(set)
    }
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

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use sync_protocol::vocab::{Role, ServiceLine};

    use super::*;
    use crate::tls::{CaDir, verify_member};

    /// A consultant's desk answered dermatology and paediatrics; its certificate was renewed
    /// for dermatology alone. Whichever certificate the desk presents afterwards (the old one has
    /// since expired, and an expired credential still verifies, for the changes it signed), and
    /// in whichever order a node learns of them, the key is the renewed desk's: the old one
    /// cannot bring paediatrics back.
    #[test]
    fn an_author_key_is_the_identity_of_its_newest_certificate() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = CaDir::new(tmp.path().join("ca"));
        ca.init("test").expect("ca");
        let key = [7u8; 32];
        let both = PeerInfo {
            name: "desk-derm-1".into(),
            role: Role::Desk,
            org: None,
            icb: Some("QHM".into()),
            lines: vec![ServiceLine::Dermatology, ServiceLine::Paediatrics],
        };
        let derm = PeerInfo { lines: vec![ServiceLine::Dermatology], ..both.clone() };
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem").as_ref().to_vec();
        let older = der(&ca.issue(&both, &key, 30, true).expect("both lines").cert_pem);
        let newer = der(&ca.issue(&derm, &key, 30, false).expect("renewed").cert_pem);
        let ca_cert = ca.cert().expect("ca cert");
        let (as_before, as_renewed) = (
            verify_member(&ca_cert, None, &older).expect("an expired credential still verifies"),
            verify_member(&ca_cert, None, &newer).expect("verifies"),
        );
        let prefix = as_renewed.prefix();

        let (_d1, mut hub) = Store::scratch("hub-1");
        assert!(hub.identity_mut().add_member(as_renewed.clone(), &newer).expect("newer"));
        assert!(!hub.identity_mut().add_member(as_before.clone(), &older).expect("older"), "superseded");
        assert_eq!(hub.roster.get(&prefix), Some(&as_renewed));
        assert_eq!(hub.identity().credential(&prefix).expect("read").map(|(_, c)| c), Some(newer.clone()));

        let (_d2, mut other) = Store::scratch("hub-2");
        assert!(other.identity_mut().add_member(as_before, &older).expect("older first"));
        assert!(other.identity_mut().add_member(as_renewed.clone(), &newer).expect("newer replaces"));
        assert_eq!(other.roster.get(&prefix), Some(&as_renewed));
        // The same identity again is current.
        assert!(other.identity_mut().add_member(as_renewed, &newer).expect("again"));
    }
}
