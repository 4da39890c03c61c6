//! Fleet identity: a certificate authority, node certificates, revocation, and the rustls
//! configurations that make every QUIC connection mutual TLS within the fleet.
//!
//! A node certificate names the node in a URI subject alternative name,
//! `urn:outpost:node:<name>;role=<role>;org=<ods>;icb=<code>;lines=<line>+<line>`, so that a
//! peer's role, ICB and (for a desk) service lines come from what the fleet CA signed, never
//! from what the peer says. Every certificate also carries the DNS name `outpost-node`, which
//! clients use as the server name: the chain to the fleet CA is what authenticates a node.
//!
//! Files: the CA directory holds `ca.crt`, `ca.key` (mode 0600) and `ca.json` (what was issued
//! and revoked); a node keeps its certificate and the CA's in `tls/` and its private key
//! sealed in its store. Revocation lists are X.509 CRLs signed by the CA; a node accepts one
//! only if the CA's signature checks and its number is higher than the one it holds.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sync_protocol::authorship::{Member, PublicKey};
use sync_protocol::scope::PeerInfo;
use sync_protocol::vocab::{Role, ServiceLine};
use time::OffsetDateTime;

use crate::crypto::random_bytes;

/// The DNS name every node certificate carries and every client asks for.
pub const SERVER_NAME: &str = "outpost-node";
const URN_PREFIX: &str = "urn:outpost:node:";

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a CA directory.
    #[error("{0} is not a fleet CA directory (no ca.json); create one with `outpost ca init --dir DIR`")]
    NotACa(PathBuf),
    /// `ca init` on an existing CA.
    #[error("{0} already holds a fleet CA; choose another directory")]
    AlreadyACa(PathBuf),
    /// The node has no certificate yet.
    #[error("node {0} has no certificate; issue one with `outpost ca issue --ca CA_DIR --node NODE_DIR`")]
    NoCertificate(String),
    /// `ca revoke` of a name the CA never issued.
    #[error("the CA has issued no certificate to {0:?}")]
    UnknownNode(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate, key or list that does not parse.
    #[error("{what} is not valid: {detail}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A revocation list not signed by this fleet's CA.
    #[error("the revocation list is not signed by this fleet's CA")]
    ForeignRevocations,
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A peer certificate without an outpost identity.
    #[error("the peer's certificate names no outpost node ({0})")]
    NoIdentity(String),
    /// A certificate for an author key the CA certified before under another name or role.
    #[error(
        "this author key was certified as {name} ({role}): an author key keeps one name and role, since every change it signed is judged by them; a node under another name or role needs its own directory (`outpost init`)"
    )]
    AuthorKeyTaken {
        /// The name certified before.
        name: String,
        /// The role certified before.
        role: Role,
    },
    /// A certificate for an author key whose earlier certificate was revoked.
    #[error(
        "this author key was {name}'s, whose certificate is revoked: a lost device's key may be in other hands, and its changes are refused; give the replacement a key of its own (`outpost init` under the same name: its sessions come back from the hub)"
    )]
    AuthorKeyRevoked {
        /// The name it was certified as.
        name: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

/// What the CA remembers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CaRecord {
    /// The fleet's name.
    pub fleet: String,
    /// Certificates issued.
    pub issued: Vec<Issued>,
    /// Certificates revoked.
    pub revoked: Vec<Revoked>,
    /// Number of the latest revocation list (0: none yet).
    pub crl_number: u64,
}

/// One issued certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    /// Node name.
    pub name: String,
    /// Serial number (hex).
    pub serial: String,
    /// Role.
    pub role: Role,
    /// Expiry (Unix seconds).
    pub not_after: i64,
    /// The author key certified (hex); absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// One revoked certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    /// Node name.
    pub name: String,
    /// Serial number (hex).
    pub serial: String,
    /// When (Unix seconds).
    pub at: i64,
}

/// A fleet CA directory.
#[derive(Debug, Clone)]
pub struct CaDir {
    root: PathBuf,
}

impl CaDir {
    /// The CA at `root` (not checked).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        CaDir { root: root.into() }
    }
    fn cert_path(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    fn key_path(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    fn record_path(&self) -> PathBuf {
        self.root.join("ca.json")
    }
    /// The latest revocation list (DER).
    pub fn crl_path(&self) -> PathBuf {
        self.root.join("crl.der")
    }

    /// Reads the CA's record.
    pub fn record(&self) -> Result<CaRecord, TlsError> {
        let path = self.record_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(TlsError::NotACa(self.root.clone())),
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_str(&text).map_err(|e| TlsError::Invalid { what: "ca.json", detail: e.to_string() })
    }

    fn write_record(&self, r: &CaRecord) -> Result<(), TlsError> {
        let text = serde_json::to_string_pretty(r)
            .map_err(|e| TlsError::Invalid { what: "ca.json", detail: e.to_string() })?;
        write_atomic(&self.record_path(), text.as_bytes())
    }

    /// Runs `f` holding the CA's lock, so that concurrent `ca issue` and `ca revoke` commands
    /// (a fleet being provisioned by a script) neither lose each other's records nor clash.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, TlsError>) -> Result<T, TlsError> {
        if !self.record_path().exists() {
            return Err(TlsError::NotACa(self.root.clone()));
        }
        let path = self.root.join("ca.lock");
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        lock.lock().map_err(io(&path))?;
        let out = f();
        let _ = lock.unlock();
        out
    }

    /// The CA certificate (DER).
    pub fn cert(&self) -> Result<CertificateDer<'static>, TlsError> {
        let pem = fs::read(self.cert_path()).map_err(io(&self.cert_path()))?;
        CertificateDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid { what: "ca.crt", detail: e.to_string() })
    }

    /// The CA certificate (PEM text).
    pub fn cert_pem(&self) -> Result<String, TlsError> {
        fs::read_to_string(self.cert_path()).map_err(io(&self.cert_path()))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let key_pem = fs::read_to_string(self.key_path()).map_err(io(&self.key_path()))?;
        let key = KeyPair::from_pem(&key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem()?, key)?)
    }

    /// Creates the fleet CA.
    pub fn init(&self, fleet: &str) -> Result<(), TlsError> {
        if self.record_path().exists() {
            return Err(TlsError::AlreadyACa(self.root.clone()));
        }
        fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("outpost fleet CA {fleet}"));
        params.distinguished_name.push(DnType::OrganizationName, "outpost");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial()?);
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key)?;
        write_private(&self.key_path(), key.serialize_pem().as_bytes())?;
        fs::write(self.cert_path(), cert.pem()).map_err(io(&self.cert_path()))?;
        self.write_record(&CaRecord { fleet: fleet.to_string(), ..CaRecord::default() })
    }

    /// Issues a certificate for a node. `days` of validity from now; `expired` makes one that
    /// expired yesterday (for tests of refusal).
    /// Issues a certificate stating `info` and certifying `author`, the key the node signs its
    /// changes with.
    pub fn issue(
        &self,
        info: &PeerInfo,
        author: &PublicKey,
        days: i64,
        expired: bool,
    ) -> Result<NodeCertificate, TlsError> {
        self.locked(|| self.issue_locked(info, author, days, expired))
    }

    fn issue_locked(
        &self,
        info: &PeerInfo,
        author: &PublicKey,
        days: i64,
        expired: bool,
    ) -> Result<NodeCertificate, TlsError> {
        let key = KeyPair::generate()?;
        let cert_pem = self.sign_locked(info, author, &key, days, expired)?;
        Ok(NodeCertificate { cert_pem, key_pem: key.serialize_pem(), ca_pem: self.cert_pem()? })
    }

    /// Signs a node's certificate request (`outpost cert request`): the node keeps its private
    /// key. The identity certified is the one the request states in its outpost URI (name,
    /// role, organisation, ICB, lines, author key); nothing else of the request is copied.
    /// Returns the certificate followed by the CA's (PEM) and the identity, for the operator
    /// to check.
    pub fn sign_request(&self, csr_pem: &str, days: i64) -> Result<SignedRequest, TlsError> {
        let bad = |detail: String| TlsError::Invalid { what: "certificate request", detail };
        if !(1..=3650).contains(&days) {
            return Err(bad(format!("{days} days: a certificate lasts 1 to 3650 days")));
        }
        // Parsing checks the request's signature: it was made with the key it asks to certify.
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| bad(e.to_string()))?;
        let uri = csr
            .params
            .subject_alt_names
            .iter()
            .find_map(|san| match san {
                SanType::URI(u) if u.as_str().starts_with(URN_PREFIX) => Some(u.as_str().to_string()),
                _ => None,
            })
            .ok_or_else(|| bad("it states no outpost identity (make it with `outpost cert request`)".into()))?;
        let info = parse_urn(&uri).ok_or_else(|| bad(format!("its identity {uri:?} does not parse")))?;
        crate::config::check_name(&info.name).map_err(|e| bad(e.to_string()))?;
        for (field, code) in [("organisation (ODS) code", &info.org), ("ICB code", &info.icb)] {
            if let Some(code) = code {
                crate::config::check_code(field, code).map_err(|e| bad(e.to_string()))?;
            }
        }
        let author = uri
            .split(';')
            .find_map(|p| p.strip_prefix("author="))
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| <PublicKey>::try_from(b.as_slice()).ok())
            .ok_or_else(|| bad("it names no author key".into()))?;
        let cert_pem = self.locked(|| self.sign_locked(&info, &author, &csr.public_key, days, false))?;
        Ok(SignedRequest {
            chain_pem: format!("{cert_pem}{}", self.cert_pem()?),
            key_fingerprint: key_fingerprint(&csr.public_key),
            author: hex::encode(author),
            info,
        })
    }

    fn sign_locked(
        &self,
        info: &PeerInfo,
        author: &PublicKey,
        public_key: &impl rcgen::PublicKeyData,
        days: i64,
        expired: bool,
    ) -> Result<String, TlsError> {
        let mut record = self.record()?;
        let author_hex = hex::encode(author);
        if let Some(before) = record
            .issued
            .iter()
            .find(|i| i.author.as_deref() == Some(author_hex.as_str()) && (i.name != info.name || i.role != info.role))
        {
            return Err(TlsError::AuthorKeyTaken { name: before.name.clone(), role: before.role });
        }
        // A key whose certificate was revoked is never certified again: a backup restored onto
        // a replacement carries the lost device's key, which the thief has too.
        if let Some(lost) = record.issued.iter().find(|i| {
            i.author.as_deref() == Some(author_hex.as_str()) && record.revoked.iter().any(|r| r.serial == i.serial)
        }) {
            return Err(TlsError::AuthorKeyRevoked { name: lost.name.clone() });
        }
        let issuer = self.issuer()?;
        let mut params = request_params(info, author)?;
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        if expired {
            params.not_before = now - time::Duration::days(30);
            params.not_after = now - time::Duration::days(1);
        } else {
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(days.max(1));
        }
        let serial = random_serial()?;
        params.serial_number = Some(serial.clone());
        let cert = params.signed_by(public_key, &issuer)?;
        record.issued.push(Issued {
            name: info.name.clone(),
            serial: hex::encode(serial.to_bytes()),
            role: info.role,
            not_after: params.not_after.unix_timestamp(),
            author: Some(author_hex),
        });
        self.write_record(&record)?;
        Ok(cert.pem())
    }

    /// Revokes every certificate issued to `name` and signs a new revocation list.
    pub fn revoke(&self, name: &str) -> Result<(u64, Vec<u8>), TlsError> {
        self.locked(|| self.revoke_locked(name))
    }

    fn revoke_locked(&self, name: &str) -> Result<(u64, Vec<u8>), TlsError> {
        let mut record = self.record()?;
        let serials: Vec<String> = record.issued.iter().filter(|i| i.name == name).map(|i| i.serial.clone()).collect();
        if serials.is_empty() {
            return Err(TlsError::UnknownNode(name.to_string()));
        }
        let now = OffsetDateTime::now_utc();
        for s in serials {
            if !record.revoked.iter().any(|r| r.serial == s) {
                record.revoked.push(Revoked { name: name.to_string(), serial: s, at: now.unix_timestamp() });
            }
        }
        record.crl_number += 1;
        let der = self.sign_crl(&record)?;
        write_atomic(&self.crl_path(), &der)?;
        self.write_record(&record)?;
        Ok((record.crl_number, der))
    }

    /// The current revocation list, signing a first (empty) one if there is none.
    pub fn crl(&self) -> Result<(u64, Vec<u8>), TlsError> {
        self.locked(|| self.crl_locked())
    }

    fn crl_locked(&self) -> Result<(u64, Vec<u8>), TlsError> {
        let record = self.record()?;
        match fs::read(self.crl_path()) {
            Ok(der) => Ok((record.crl_number, der)),
            Err(_) => {
                let mut record = record;
                record.crl_number = record.crl_number.max(1);
                let der = self.sign_crl(&record)?;
                write_atomic(&self.crl_path(), &der)?;
                self.write_record(&record)?;
                Ok((record.crl_number, der))
            }
        }
    }

    fn sign_crl(&self, record: &CaRecord) -> Result<Vec<u8>, TlsError> {
        let now = OffsetDateTime::now_utc();
        let mut revoked = Vec::new();
        for r in &record.revoked {
            let bytes = hex::decode(&r.serial)
                .map_err(|e| TlsError::Invalid { what: "ca.json serial", detail: e.to_string() })?;
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.at).unwrap_or(now),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + time::Duration::days(365),
            crl_number: SerialNumber::from(record.crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer()?)?.der().to_vec())
    }
}

/// A freshly issued node certificate.
#[derive(Debug, Clone)]
pub struct NodeCertificate {
    /// The node's certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM): the caller seals it in the node's store.
    pub key_pem: String,
    /// The fleet CA's certificate (PEM).
    pub ca_pem: String,
}

/// What a node certificate states: the TLS name, the outpost identity URI with the author key,
/// and the name, role and organisation in the subject.
fn request_params(info: &PeerInfo, author: &PublicKey) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    let urn = format!("{};author={}", identity_urn(info), hex::encode(author));
    params.subject_alt_names.push(SanType::URI(urn.try_into()?));
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, info.name.clone());
    params.distinguished_name.push(DnType::OrganizationalUnitName, info.role.as_str());
    if let Some(org) = &info.org {
        params.distinguished_name.push(DnType::OrganizationName, org.clone());
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// What `ca sign` certified, for the operator to check against what `cert request` printed on
/// the node.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    /// The node's certificate, then the CA's (PEM).
    pub chain_pem: String,
    /// The identity certified.
    pub info: PeerInfo,
    /// The fingerprint of the certified TLS key ([`key_fingerprint`]).
    pub key_fingerprint: String,
    /// The author key certified (hex).
    pub author: String,
}

/// A short fingerprint of a public key (BLAKE3 of its SubjectPublicKeyInfo, 16 bytes in
/// groups of four hex digits), printed by `cert request` and `ca sign` alike so that the
/// operator can see that the CA signs the request the node made.
pub fn key_fingerprint(key: &impl rcgen::PublicKeyData) -> String {
    let h = blake3::hash(&key.subject_public_key_info());
    let hexed = hex::encode(&h.as_bytes()[..16]);
    hexed.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(":")
}

/// A certificate request for a node (`outpost cert request`): a fresh key pair, and the
/// request stating the node's identity and author key, signed with that key. Returns the
/// request, the private key (PEM), which the caller seals in the node's store, and the key's
/// fingerprint.
pub fn certificate_request(info: &PeerInfo, author: &PublicKey) -> Result<(String, String, String), TlsError> {
    let key = KeyPair::generate()?;
    let csr = request_params(info, author)?.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem(), key_fingerprint(&key)))
}

/// Checks a certificate signed for a pending request before it is installed: it certifies
/// the pending key, states exactly this node's identity and author key, and is signed by `ca`
/// (a certificate chain from `ca sign`: the node's, then the CA's).
pub fn check_signed(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    info: &PeerInfo,
    author: &PublicKey,
) -> Result<(), TlsError> {
    let bad = |detail: String| TlsError::Invalid { what: "signed certificate", detail };
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| bad(e.to_string()))?;
    let (_, ca_x509) = x509_parser::parse_x509_certificate(ca.as_ref()).map_err(|e| bad(e.to_string()))?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| bad(format!("the pending key: {e}")))?;
    if x509.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
        return Err(bad(
            "it certifies another key than this node's pending request (was it made for another request?)".into(),
        ));
    }
    if x509.issuer() != ca_x509.subject() || x509.verify_signature(Some(ca_x509.public_key())).is_err() {
        return Err(bad("it is not signed by the fleet CA given with it".into()));
    }
    let member = member_of(&cert)?;
    if member.info != *info || member.key != *author {
        return Err(bad(format!(
            "it names {} ({}), not this node's identity and author key",
            member.info.name, member.info.role
        )));
    }
    Ok(())
}

fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut b = [0u8; 16];
    random_bytes(&mut b).map_err(|e| TlsError::Invalid { what: "serial number", detail: e.to_string() })?;
    b[0] &= 0x7F; // positive
    b[0] |= 0x01; // and without a leading zero byte
    Ok(SerialNumber::from_slice(&b))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The URI that states a node's identity in its certificate.
pub fn identity_urn(info: &PeerInfo) -> String {
    let lines: Vec<&str> = info.lines.iter().map(|l| l.as_str()).collect();
    format!(
        "{URN_PREFIX}{};role={};org={};icb={};lines={}",
        info.name,
        info.role.as_str(),
        info.org.as_deref().unwrap_or(""),
        info.icb.as_deref().unwrap_or(""),
        lines.join("+")
    )
}

fn parse_urn(urn: &str) -> Option<PeerInfo> {
    let rest = urn.strip_prefix(URN_PREFIX)?;
    let mut parts = rest.split(';');
    let name = parts.next()?.to_string();
    let mut info = PeerInfo { name, role: Role::Edge, org: None, icb: None, lines: Vec::new() };
    let mut role = None;
    for p in parts {
        let (k, v) = p.split_once('=')?;
        match k {
            "role" => role = Role::parse(v).ok(),
            "org" if !v.is_empty() => info.org = Some(v.to_string()),
            "icb" if !v.is_empty() => info.icb = Some(v.to_string()),
            "lines" if !v.is_empty() => {
                info.lines = v.split('+').map(ServiceLine::parse).collect::<Result<_, _>>().ok()?;
            }
            _ => {}
        }
    }
    info.role = role?;
    Some(info)
}

/// The `urn:outpost:node:` URI a certificate carries, with the identity it states.
fn identity_uri(cert: &CertificateDer<'_>) -> Result<(String, PeerInfo), TlsError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Invalid { what: "peer certificate", detail: e.to_string() })?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| TlsError::Invalid { what: "peer certificate", detail: e.to_string() })?
        .ok_or_else(|| TlsError::NoIdentity("no subject alternative names".into()))?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(info) = parse_urn(uri)
        {
            return Ok((uri.to_string(), info));
        }
    }
    Err(TlsError::NoIdentity("no urn:outpost:node URI".into()))
}

/// When a PEM certificate stops being valid (ms since the epoch).
pub fn not_after_ms(cert_pem: &str) -> Result<i64, TlsError> {
    let invalid = |detail: String| TlsError::Invalid { what: "node certificate", detail };
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| invalid(e.to_string()))?;
    Ok(x509.validity().not_after.timestamp().saturating_mul(1000))
}

/// The identity a certificate states, from its URI subject alternative name.
pub fn peer_info(cert: &CertificateDer<'_>) -> Result<PeerInfo, TlsError> {
    identity_uri(cert).map(|(_, info)| info)
}

/// The fleet member a certificate states: its identity and the author key it certifies.
pub fn member_of(cert: &CertificateDer<'_>) -> Result<Member, TlsError> {
    let (uri, info) = identity_uri(cert)?;
    let key = uri
        .split(';')
        .find_map(|p| p.strip_prefix("author="))
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <PublicKey>::try_from(b.as_slice()).ok())
        .ok_or_else(|| TlsError::NoIdentity(format!("{} has no author key: issue it a new certificate", info.name)))?;
    Ok(Member { info, key })
}

/// Checks a member's certificate offered by a peer: signed by the fleet CA `ca` and not in the
/// revocation list `crl`. Its validity period is not checked: a change signed while the
/// certificate was valid stays verifiable after it expires.
pub fn verify_member(ca: &CertificateDer<'_>, crl: Option<&[u8]>, der: &[u8]) -> Result<Member, TlsError> {
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.as_ref())
        .map_err(|e| TlsError::Invalid { what: "CA certificate", detail: e.to_string() })?;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Invalid { what: "member certificate", detail: e.to_string() })?;
    if cert.issuer() != ca_cert.subject() || cert.verify_signature(Some(ca_cert.public_key())).is_err() {
        return Err(TlsError::Invalid { what: "member certificate", detail: "not issued by this fleet's CA".into() });
    }
    if let Some(crl) = crl
        && let Ok((_, list)) = x509_parser::parse_x509_crl(crl)
        && list.iter_revoked_certificates().any(|r| r.raw_serial() == cert.raw_serial())
    {
        return Err(TlsError::Invalid { what: "member certificate", detail: "revoked".into() });
    }
    member_of(&CertificateDer::from(der.to_vec()))
}

/// Checks that `der` is a revocation list signed by the CA `ca`, and returns its number.
pub fn verify_crl(ca: &CertificateDer<'_>, der: &[u8]) -> Result<u64, TlsError> {
    let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.as_ref())
        .map_err(|e| TlsError::Invalid { what: "CA certificate", detail: e.to_string() })?;
    let (_, crl) = x509_parser::parse_x509_crl(der)
        .map_err(|e| TlsError::Invalid { what: "revocation list", detail: e.to_string() })?;
    if crl.issuer() != ca_cert.subject() {
        return Err(TlsError::ForeignRevocations);
    }
    crl.verify_signature(ca_cert.public_key()).map_err(|_| TlsError::ForeignRevocations)?;
    let number = crl.crl_number().map(|n| n.to_u64_digits().first().copied().unwrap_or(0)).unwrap_or(0);
    Ok(number)
}

/// A node's TLS identity, loaded and ready.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Certificate chain (the node's certificate).
    pub certs: Vec<CertificateDer<'static>>,
    /// Private key (PKCS#8 DER).
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The fleet CA.
    pub ca: CertificateDer<'static>,
    /// What the certificate says of this node.
    pub info: PeerInfo,
}

impl Identity {
    /// From PEM texts.
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Identity, TlsError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TlsError::Invalid { what: "node certificate", detail: e.to_string() })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Invalid { what: "node private key", detail: e.to_string() })?;
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| TlsError::Invalid { what: "CA certificate", detail: e.to_string() })?;
        let info = peer_info(&cert)?;
        Ok(Identity { certs: vec![cert], key: Arc::new(key), ca, info })
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// The server side: TLS 1.3 only, ALPN `outpost/1`, a client certificate of the fleet CA
    /// required and checked against the revocation list.
    pub fn server_config(&self, crl: Option<&[u8]>) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .allow_unknown_revocation_status();
        if let Some(der) = crl {
            verifier = verifier.with_crls([CertificateRevocationListDer::from(der.to_vec())]);
        }
        let verifier =
            verifier.build().map_err(|e| TlsError::Invalid { what: "client verifier", detail: e.to_string() })?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![sync_protocol::wire::ALPN.to_vec()];
        Ok(cfg)
    }

    /// The client side: TLS 1.3 only, ALPN `outpost/1`, our certificate presented, the
    /// server's checked against the fleet CA and the revocation list.
    pub fn client_config(&self, crl: Option<&[u8]>) -> Result<rustls::ClientConfig, TlsError> {
        self.client_config_counted(crl, Arc::default())
    }

    /// [`Identity::client_config`], counting in `checked` each server certificate chain it
    /// checks: a full handshake checks one, a resumed session none.
    pub fn client_config_counted(
        &self,
        crl: Option<&[u8]>,
        checked: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
            .allow_unknown_revocation_status();
        if let Some(der) = crl {
            verifier = verifier.with_crls([CertificateRevocationListDer::from(der.to_vec())]);
        }
        let inner =
            verifier.build().map_err(|e| TlsError::Invalid { what: "server verifier", detail: e.to_string() })?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CountedVerifier { inner, checked }))
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![sync_protocol::wire::ALPN.to_vec()];
        Ok(cfg)
    }
}

/// The fleet's server verifier, counting the chains it checks (so a daemon can tell a full
/// handshake from a resumed one).
#[derive(Debug)]
struct CountedVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    checked: Arc<std::sync::atomic::AtomicU64>,
}

impl rustls::client::danger::ServerCertVerifier for CountedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Writes a file whole or not at all: a temporary file beside it, synced, then renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desk() -> PeerInfo {
        PeerInfo {
            name: "desk-derm-1".into(),
            role: Role::Desk,
            org: Some("RX6".into()),
            icb: Some("QHM".into()),
            lines: vec![ServiceLine::Dermatology, ServiceLine::Paediatrics],
        }
    }

    #[test]
    fn the_identity_urn_round_trips() {
        assert_eq!(parse_urn(&identity_urn(&desk())), Some(desk()));
        assert_eq!(parse_urn("urn:outpost:node:x;role=pilot"), None);
        assert_eq!(parse_urn("urn:other:x"), None);
    }

    #[test]
    fn an_issued_certificate_states_the_node_and_a_revocation_list_verifies_against_its_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CaDir::new(tmp.path().join("ca"));
        ca.init("test").unwrap();
        let issued = ca.issue(&desk(), &[5; 32], 30, false).unwrap();
        let id = Identity::from_pem(&issued.cert_pem, &issued.key_pem, &issued.ca_pem).unwrap();
        assert_eq!(id.info, desk());
        let member = verify_member(&ca.cert().unwrap(), None, id.certs[0].as_ref()).unwrap();
        assert_eq!(member, Member { info: desk(), key: [5; 32] });
        id.server_config(None).unwrap();
        id.client_config(None).unwrap();
        let (n, der) = ca.revoke("desk-derm-1").unwrap();
        assert_eq!(n, 1);
        assert_eq!(verify_crl(&ca.cert().unwrap(), &der).unwrap(), 1);
        assert!(verify_member(&ca.cert().unwrap(), Some(&der), id.certs[0].as_ref()).is_err(), "revoked");
        let other = CaDir::new(tmp.path().join("other"));
        other.init("other").unwrap();
        assert!(matches!(verify_crl(&other.cert().unwrap(), &der), Err(TlsError::ForeignRevocations)));
        assert!(verify_member(&other.cert().unwrap(), None, id.certs[0].as_ref()).is_err(), "another fleet");
        assert!(matches!(ca.revoke("nobody"), Err(TlsError::UnknownNode(_))));
    }

    /// Every change an author key signed is judged by the name and role its certificate states,
    /// so the CA certifies a key under one name and role only; a renewal may change its lines.
    #[test]
    fn an_author_key_is_certified_under_one_name_and_role() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CaDir::new(tmp.path().join("ca"));
        ca.init("test").unwrap();
        ca.issue(&desk(), &[5; 32], 30, false).unwrap();
        let renewed = PeerInfo { lines: vec![ServiceLine::Dermatology], ..desk() };
        ca.issue(&renewed, &[5; 32], 30, false).expect("a renewal with fewer lines");
        let as_edge = PeerInfo { role: Role::Edge, lines: vec![], ..desk() };
        let err = ca.issue(&as_edge, &[5; 32], 30, false).unwrap_err();
        assert!(matches!(&err, TlsError::AuthorKeyTaken { name, role: Role::Desk } if name == "desk-derm-1"), "{err}");
        let renamed = PeerInfo { name: "desk-derm-9".into(), ..desk() };
        assert!(matches!(ca.issue(&renamed, &[5; 32], 30, false), Err(TlsError::AuthorKeyTaken { .. })));
        // Another key may take either.
        ca.issue(&as_edge, &[6; 32], 30, false).expect("another key");
        assert_eq!(ca.record().unwrap().issued.len(), 3, "a refusal issues nothing");
    }

    /// A lost device's key is never certified again: a backup of it restored onto the
    /// replacement carries the key the thief holds too. The replacement gets a key of its own,
    /// under the same name.
    #[test]
    fn a_revoked_author_key_is_not_certified_again() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CaDir::new(tmp.path().join("ca"));
        ca.init("test").unwrap();
        ca.issue(&desk(), &[5; 32], 30, false).unwrap();
        ca.revoke("desk-derm-1").unwrap();
        let err = ca.issue(&desk(), &[5; 32], 30, false).unwrap_err();
        assert!(matches!(&err, TlsError::AuthorKeyRevoked { name } if name == "desk-derm-1"), "{err}");
        assert!(err.to_string().contains("outpost init"), "{err}");
        ca.issue(&desk(), &[7; 32], 30, false).expect("the replacement, with a key of its own");
    }
}
