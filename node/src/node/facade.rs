//! The reads and administrative acts of a node that the CLI and the local API share: one door
//! to the store for both, so that what one may do the other may too, audited alike.
//!
//! The writes of the clinical record (sessions, messages, photos, outcomes, calls) are in
//! `node.rs`; this is the rest: finding and reading sessions, photos and the audit chain,
//! exporting, sharing, users and their API sessions, certificates and revocation lists.

use sync_protocol::session::{SessionId, SessionView};
use sync_protocol::vocab::{ReceiptLevel, Role};

use super::{InstallError, Node, NodeError};
use crate::store::people::{Credential, NewPerson, Person};
use crate::store::{AuditCheck, AuditEntry, AuditLoss, BlobInfo, ListFilter, SessionCard, StoreError};

/// How long a session shown to a person in one kind of list is not recorded again as shown
/// to them there.
pub const SHOWN_AGAIN_AFTER_MS: i64 = 60 * 60 * 1000;

/// A session's two logs: escalations (routing) and call legs.
pub type CallLogs = (Vec<sync_protocol::routing::RoutingStep>, Vec<sync_protocol::leg::Leg>);

/// How a session is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// The whole Automerge document, for other Automerge implementations.
    Automerge,
    /// The session as read, every merge rule applied (the API's session view).
    Json,
    /// A FHIR R4 `Bundle` (UK Core), for the GP record and the ambulance ePR (`docs/fhir.md`).
    Fhir,
    /// The advice as a plain-text letter, for people.
    Letter,
}

impl ExportFormat {
    /// Every format, by the name the CLI and the API take.
    pub const ALL: [(&'static str, ExportFormat); 4] = [
        ("automerge", ExportFormat::Automerge),
        ("json", ExportFormat::Json),
        ("fhir", ExportFormat::Fhir),
        ("letter", ExportFormat::Letter),
    ];

    /// The format named `name`.
    pub fn parse(name: &str) -> Option<ExportFormat> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// The media type of the export.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Automerge => "application/octet-stream",
            ExportFormat::Json => "application/json",
            ExportFormat::Fhir => "application/fhir+json",
            ExportFormat::Letter => "text/plain; charset=utf-8",
        }
    }
}

impl Node {
    /// The session named by an id or a unique prefix of one.
    pub fn resolve(&self, id_or_prefix: &str) -> Result<SessionId, NodeError> {
        Ok(self.store.sessions().resolve(id_or_prefix)?)
    }

    /// Session cards, newest first, read from the index (no document is opened).
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<SessionCard>, NodeError> {
        Ok(self.store.sessions().list(filter)?)
    }

    /// Session cards as a person is shown them (the app's list, `outpost session list`):
    /// listed, and recorded in the audit chain ([`Node::record_shown`]). `via` names where.
    pub fn list_shown(
        &mut self,
        filter: &ListFilter,
        via: &'static str,
        now: i64,
    ) -> Result<Vec<SessionCard>, NodeError> {
        let cards = self.list(filter)?;
        self.record_shown(cards.iter().map(|c| c.id), via, now)?;
        Ok(cards)
    }

    /// Records in the audit chain that the person acting (the API's, or the command line's
    /// operator) was shown these sessions' cards: a list, the event stream's cards, the
    /// callbacks owed. A card carries the patient's NHS number and the question, so each is a
    /// look at the record ("who viewed what, when"). One `session.list` entry names the
    /// sessions shown that were not recorded as shown to this person the same way (`via`: a
    /// callback's card carries its number, a list's does not) in the last
    /// [`SHOWN_AGAIN_AFTER_MS`]: the app lists again at every screen, and one entry per list
    /// would be thousands a day per person, each the size of the list. Nothing new, no entry.
    /// The memory is this process's: a command-line list is recorded each time. Returns how
    /// many were recorded.
    pub fn record_shown(
        &mut self,
        ids: impl IntoIterator<Item = SessionId>,
        via: &'static str,
        now: i64,
    ) -> Result<usize, NodeError> {
        let person = (self.acting.as_ref().map(|p| p.id), via);
        let fresh = |at: &i64| now.saturating_sub(*at) < SHOWN_AGAIN_AFTER_MS && *at <= now;
        // What has aged out is forgotten, everyone's (a person signed out keeps nothing long),
        // at most once a minute: each pass reads every entry.
        if now.saturating_sub(self.shown_pruned_ms) >= 60_000 || now < self.shown_pruned_ms {
            for seen in self.shown.values_mut() {
                seen.retain(|_, at| fresh(at));
            }
            self.shown.retain(|_, seen| !seen.is_empty());
            self.shown_pruned_ms = now;
        }
        let seen = self.shown.entry(person).or_default();
        seen.retain(|_, at| fresh(at));
        let mut new: Vec<SessionId> = ids.into_iter().filter(|id| !seen.contains_key(id)).collect();
        new.sort_unstable();
        new.dedup();
        if !new.is_empty() {
            self.store.audit_mut().audit_shown(&new, via, now)?;
            // Remembered only once the entry is on disk: a failed write is tried again next time.
            let seen = self.shown.entry(person).or_default();
            seen.extend(new.iter().map(|id| (*id, now)));
        }
        let cards = self.shown.get(&person).map_or(0, |seen| seen.len());
        // So many different patients in an hour is flagged for the deployer (the list itself
        // is never refused: it is the worklist). Checked at every list, not only one with a
        // new card, so that an alarm whose entry was not written is owed at the next list. Not
        // the event stream's cards: every change is pushed to everyone signed in, asked for or
        // not, and it shows no more than changes.
        if let Some((id, system)) = self.acting_caller().filter(|_| via != "events")
            && self.access.shown(id, system, cards, now)
        {
            let limits = self.access.limits();
            let alarm = if system { limits.system.cards_alarm } else { limits.person.cards_alarm };
            let detail = serde_json::json!({
                "cards": cards, "via": via, "cards_alarm": alarm, "window_s": super::access::WINDOW_MS / 1000,
            });
            let written = self.store.audit_mut().audit_event("access.unusual", detail, now);
            let name = self.acting.as_ref().map_or("", |p| p.name.as_str());
            match written {
                Ok(()) => {
                    tracing::warn!(person = %name, cards, via, "unusual access: more different patients shown on cards in an hour than the alarm");
                }
                // The cards were recorded as shown: the list is not withheld for the alarm.
                Err(e) => {
                    tracing::error!(person = %name, cards, via, "unusual access not recorded (owed at the next list): {e}");
                    self.access.unrecorded(id, None);
                }
            }
        }
        Ok(new.len())
    }

    /// One session's card, if this node holds the session.
    pub fn card(&self, id: SessionId) -> Result<Option<SessionCard>, NodeError> {
        Ok(self.store.sessions().card(id)?)
    }

    /// How far one message of a session has travelled (after sending it, or a repeat of it).
    pub fn message_receipt(&mut self, id: SessionId, message: &str) -> Result<Option<ReceiptLevel>, NodeError> {
        Ok(self.store.sessions_mut().view(id)?.messages.into_iter().find(|m| m.id == message).map(|m| m.receipt))
    }

    /// The escalations and call legs of a session (no patient data).
    pub fn call_logs(&mut self, id: SessionId) -> Result<CallLogs, NodeError> {
        let routing = sync_protocol::routing::RoutingStep::read_all(&self.store.sessions_mut().routing_log(id)?);
        Ok((routing, sync_protocol::leg::legs_in(&self.store.sessions_mut().call_log(id)?)))
    }

    /// The session's service line.
    pub fn service_line_of(&mut self, id: SessionId) -> Result<sync_protocol::vocab::ServiceLine, NodeError> {
        Ok(self.store.sessions_mut().view(id)?.service.line)
    }

    /// The session exported whole, with an audit entry of the export. Only a session this node
    /// may hold leaves it (scope is checked again here, not only when the session arrived), and
    /// only photos held whole here go into a FHIR bundle (the rest as references; none whose
    /// consent was withdrawn).
    pub fn export(&mut self, id: SessionId, format: ExportFormat, now: i64) -> Result<Vec<u8>, NodeError> {
        let view: SessionView = self.store.sessions_mut().view(id)?;
        let meta = sync_protocol::scope::DocMeta {
            origin: view.identity.origin.clone(),
            icb: view.identity.icb.clone(),
            line: view.service.line,
            shares: view.shared_with.clone(),
        };
        if !sync_protocol::scope::may_hold(&self.config.peer_info(), &meta) {
            return Err(NodeError::OutOfScope { id, node: self.config.name.clone() });
        }
        let pretty = |v: &serde_json::Value| -> Result<Vec<u8>, NodeError> {
            let mut b =
                serde_json::to_vec_pretty(v).map_err(|source| NodeError::Encode { what: "an export", source })?;
            b.push(b'\n');
            Ok(b)
        };
        let bytes = match format {
            ExportFormat::Automerge => self.store.sessions_mut().export_automerge(id)?,
            ExportFormat::Json => {
                pretty(&serde_json::to_value(&view).map_err(|source| NodeError::Encode { what: "an export", source })?)?
            }
            ExportFormat::Fhir => {
                let photos = self.photos_held(&view)?;
                pretty(&crate::export::fhir::bundle(&view, &photos, &self.config.name, now))?
            }
            ExportFormat::Letter => {
                let photos = self.photos_held(&view)?;
                crate::export::letter::letter(&view, &|h| photos.contains_key(h), &self.config.name, now).into_bytes()
            }
        };
        self.open_record(id, "session.export", now)?;
        Ok(bytes)
    }

    /// The session's photos held whole on this node (consent standing), read and checked
    /// against their hashes.
    fn photos_held(&self, view: &SessionView) -> Result<crate::export::Photos, NodeError> {
        let mut out = crate::export::Photos::new();
        for hash in crate::export::photos_to_read(view) {
            // Only for a record this node holds the photo for: a record made from another
            // patient's photo's hash exports as a reference, never with that photo's bytes.
            let vouched = view.media.iter().filter(|m| m.hash == hash).try_fold(false, |any, m| {
                Ok::<bool, StoreError>(
                    any || self.store.blobs().holds_photo_for(&hash, &m.added_by, crate::store::vouched(m))?,
                )
            })?;
            if !vouched {
                continue;
            }
            // Not here (handed to the hub, still arriving, never received): a reference in the
            // export. Any other failure (a damaged store) is an error, not a missing photo.
            match self.store.blobs().read_blob(&hash) {
                Ok(bytes) => {
                    out.insert(hash, bytes);
                }
                Err(StoreError::BlobOffloaded(_) | StoreError::BlobIncomplete { .. } | StoreError::NoSuchBlob(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Shares a session with a node beyond its default scope (grow-only).
    pub fn share(&mut self, id: SessionId, with: &str, now: i64) -> Result<(), NodeError> {
        crate::config::check_name(with)?;
        let detail = Some(serde_json::json!({ "node": with }));
        self.store.sessions_mut().edit(id, "session.share", detail, now, |_, doc| {
            doc.share_with(with, now).map_err(crate::store::model(id))
        })?;
        Ok(())
    }

    /// A photo's description as held here (complete, partial or offloaded).
    pub fn photo_info(&self, hash: &str) -> Result<BlobInfo, NodeError> {
        Ok(self.store.blobs().blob_info(hash)?)
    }

    /// Checks that session `id` records photo `hash` and that this node keeps the photo for
    /// that record (its writer had the bytes, or a hub or desk vouches for it): a record made from
    /// another patient's photo's hash must not show that photo under this session.
    pub fn photo_in_session(&mut self, id: SessionId, hash: &str) -> Result<(), NodeError> {
        let view = self.view(id)?;
        let mut recorded = false;
        for m in view.media.iter().filter(|m| m.hash == hash) {
            recorded = true;
            if self.store.blobs().vouched_for(hash, &m.added_by, crate::store::vouched(m))? {
                return Ok(());
            }
        }
        let why = if recorded { "its record came without the photo's bytes" } else { "it records no such photo" };
        Err(StoreError::NoSuchBlob(format!("{hash} for session {id} ({why})")).into())
    }

    /// Someone on this node was shown a photo of the session: recorded in the audit chain, as
    /// a view of the session is.
    pub fn audit_photo_view(&mut self, id: SessionId, now: i64) -> Result<(), NodeError> {
        self.open_record(id, "photo.view", now)
    }

    /// Someone at the command line was shown a photo, named by its hash alone: recorded as a
    /// view of each session whose record names it (or, named by none, of the photo itself).
    pub fn audit_photo_view_anywhere(&mut self, hash: &str, now: i64) -> Result<(), NodeError> {
        let ids = self.store.blobs().sessions_naming_photo(hash)?;
        if ids.is_empty() {
            self.store.audit_mut().audit_event("photo.view", serde_json::json!({ "photo": hash }), now)?;
        }
        for id in ids {
            self.open_record(id, "photo.view", now)?;
        }
        Ok(())
    }

    /// A photo's JPEG thumbnail (an edge keeps it after handing the photo to the hub).
    pub fn thumbnail(&self, hash: &str) -> Result<Vec<u8>, NodeError> {
        if self.store.blobs().photo_withdrawn(hash)? {
            return Err(StoreError::ConsentWithdrawn(hash.to_string()).into());
        }
        Ok(self.store.blobs().read_thumbnail(hash)?)
    }

    /// Whether a call already has a media plan here (what this party plays and records).
    pub fn has_media_plan(&self, call: &str) -> Result<bool, NodeError> {
        Ok(self.store.identity().meta_get(&crate::media::plan_key(call))?.is_some())
    }

    /// Records in the audit chain that this store was brought back from a backup (`from`, taken
    /// at `taken_ms`): entries written after the backup are not in the chain, and this is where
    /// they stop.
    pub fn record_restore(
        &mut self,
        from: &std::path::Path,
        taken_ms: i64,
        sessions: u64,
        now: i64,
    ) -> Result<(), NodeError> {
        let detail =
            serde_json::json!({ "from": from.display().to_string(), "taken_ms": taken_ms, "sessions": sessions });
        Ok(self.store.audit_mut().audit_event("store.restore", detail, now)?)
    }

    /// Records in the audit chain that the person acting hung up the session's call.
    pub fn record_hang_up(&mut self, id: SessionId, now: i64) -> Result<(), NodeError> {
        Ok(self.store.audit_mut().audit_access(id, "call.hangup", now)?)
    }

    /// The audit chain checked end to end.
    pub fn verify_audit(&self) -> Result<AuditCheck, NodeError> {
        Ok(self.store.audit().verify_audit()?)
    }

    /// The latest audit entries, opened.
    pub fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>, NodeError> {
        Ok(self.store.audit().audit_tail(limit)?)
    }

    /// Audit chains found cut back: this node's (by the hubs that had seen it longer), and its
    /// peers' (those found shorter than they had told this node).
    pub fn audit_losses(&self) -> Result<(Vec<AuditLoss>, Vec<AuditLoss>), NodeError> {
        let audit = self.store.audit();
        Ok((audit.losses()?, audit.peer_losses()?))
    }

    // ------------------------------------------------------------------------------ people

    /// Adds a user; for an integrating system, returns its token (shown once, kept hashed).
    pub fn add_person(
        &mut self,
        new: &NewPerson,
        cred: &Credential,
        now: i64,
    ) -> Result<(Person, Option<String>), NodeError> {
        if !new.role.works_on(self.config.role) {
            return Err(NodeError::WrongNodeForPerson { person: new.role, node: self.config.role });
        }
        // What the person writes carries their name, role and registration: fields a record
        // refuses (an empty registration, one too long) are refused here, before anyone signs
        // in and finds every write refused.
        let clinician = sync_protocol::session::Clinician {
            name: new.name.clone(),
            role: new.role.as_str().to_string(),
            registration: new.registration.clone(),
        };
        if new.role != crate::store::people::PersonRole::System {
            clinician.check().map_err(NodeError::Person)?;
        }
        Ok(self.store.people_mut().add_person(new, cred, now)?)
    }

    /// Sets a person's new PIN or passphrase; their API sessions end (`user.set_pin`).
    pub fn set_pin(&mut self, name: &str, secret: &str, now: i64) -> Result<(), NodeError> {
        use crate::store::people::{MIN_SECRET, PersonRole};
        let who = self.people()?.into_iter().find(|p| p.name == name);
        match who {
            None => return Err(StoreError::NoSuchUser(name.to_string()).into()),
            Some(p) if p.role == PersonRole::System => {
                return Err(NodeError::Pin(format!(
                    "{name} is an integrating system: it has a token, not a PIN (disable it and add a new one)"
                )));
            }
            Some(_) => {}
        }
        if secret.chars().count() < MIN_SECRET {
            return Err(NodeError::Pin(format!("a PIN or passphrase needs at least {MIN_SECRET} characters")));
        }
        if self.store.people_mut().set_secret(name, secret, now)? {
            Ok(())
        } else {
            Err(StoreError::NoSuchUser(name.to_string()).into())
        }
    }

    /// Disables a user: their token and API sessions stop working at once.
    pub fn disable_person(&mut self, name: &str, now: i64) -> Result<(), NodeError> {
        if self.store.people_mut().disable_person(name, now)? {
            Ok(())
        } else {
            Err(StoreError::NoSuchUser(name.to_string()).into())
        }
    }

    /// The node's users.
    pub fn people(&self) -> Result<Vec<Person>, NodeError> {
        Ok(self.store.people().people()?)
    }

    /// A user by name and their credential's hash, for signing in (checked off the store
    /// thread by [`crate::store::people::verify_secret`]). An unknown name gives a decoy hash.
    pub fn sign_in_material(&self, name: &str) -> Result<(Option<Person>, String), NodeError> {
        Ok(self.store.people().secret_of(name)?)
    }

    /// Opens an API session for a person signed in: a token and when it expires.
    pub fn open_api_session(&mut self, who: &Person, now: i64) -> Result<(String, i64), NodeError> {
        Ok(self.store.people_mut().open_api_session(who, now)?)
    }

    /// The person a token belongs to, if it is valid now.
    pub fn person_by_token(&self, token: &str, now: i64) -> Result<Option<Person>, NodeError> {
        Ok(self.store.people().person_by_token(token, now)?)
    }

    /// Ends a signed-in person's token; false if it was not one.
    pub fn sign_out(&mut self, token: &str, now: i64) -> Result<bool, NodeError> {
        Ok(self.store.people_mut().sign_out(token, now)?)
    }

    // ------------------------------------------------------------------------- certificates

    /// The public half of this node's author key (certified by the fleet CA).
    pub fn author_public(&self) -> sync_protocol::authorship::PublicKey {
        self.store.identity().author_public()
    }

    /// Installs this node's certificate and key (sealed in the store) with its fleet's CA.
    pub fn install_certificate(&mut self, cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<(), NodeError> {
        Ok(self.store.identity_mut().set_tls_identity(cert_pem, key_pem, ca_pem)?)
    }

    /// Makes a certificate request for this node (`outpost cert request`): a fresh TLS key,
    /// sealed in the store until its certificate comes back, and the request (PEM) for the
    /// fleet CA. The key never leaves the store. The node keeps its current certificate, if
    /// any, until the new one is installed (renewal).
    /// Returns the request and its key's fingerprint (what `ca sign` prints too).
    pub fn request_certificate(&mut self) -> Result<(String, String), NodeError> {
        let (csr, key, fingerprint) = crate::tls::certificate_request(&self.config.peer_info(), &self.author_public())?;
        self.store.identity_mut().set_pending_tls_key(&key)?;
        Ok((csr, fingerprint))
    }

    /// Installs the certificate the fleet CA signed for this node's pending request
    /// (`outpost cert install`): `chain_pem` is the node's certificate then the CA's, as
    /// `outpost ca sign` writes it. Checked first: it certifies the pending key, states this
    /// node's identity and author key, and chains to the CA (which must be the one this node
    /// already trusts, if it has one). Returns the certificate's expiry (ms since the epoch).
    pub fn install_signed(&mut self, chain_pem: &str) -> Result<i64, NodeError> {
        let key = self
            .store
            .identity()
            .pending_tls_key()?
            .ok_or_else(|| InstallError::NoRequest { node: self.config.name.clone() })?;
        let end = "-----END CERTIFICATE-----";
        let certs: Vec<String> = chain_pem
            .split_inclusive(end)
            .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
            .map(|c| format!("{}\n", c.trim()))
            .collect();
        let current_ca = self.store.identity().tls_identity()?.map(|(_, _, ca)| ca);
        let (cert, ca) = match (certs.first(), certs.get(1), current_ca.as_ref()) {
            (Some(cert), Some(ca), Some(current)) => {
                let same = |a: &str, b: &str| {
                    use rustls::pki_types::pem::PemObject;
                    let der = |p: &str| rustls::pki_types::CertificateDer::from_pem_slice(p.as_bytes()).ok();
                    der(a).is_some_and(|x| Some(x) == der(b))
                };
                if !same(ca, current) {
                    return Err(InstallError::ForeignCa.into());
                }
                (cert.clone(), ca.clone())
            }
            (Some(cert), Some(ca), None) => (cert.clone(), ca.clone()),
            (Some(cert), None, Some(current)) => (cert.clone(), current.clone()),
            _ => {
                return Err(InstallError::NoCertificate.into());
            }
        };
        crate::tls::check_signed(&cert, &key, &ca, &self.config.peer_info(), &self.author_public())?;
        let until = crate::tls::not_after_ms(&cert)?;
        self.store.identity_mut().install_pending(&cert, &ca)?;
        Ok(until)
    }

    /// Installs a revocation list (already checked against the fleet CA by the caller).
    pub fn install_revocations(&mut self, number: u64, der: &[u8]) -> Result<(), NodeError> {
        Ok(self.store.identity_mut().put_revocations(number, der)?)
    }

    /// Caps the database's size in pages (tests of a full disk).
    pub fn debug_limit_pages(&self, pages: u64) -> Result<(), NodeError> {
        Ok(self.store.limit_pages(pages)?)
    }

    /// Whether this node is of one of `roles`.
    pub fn is(&self, roles: &[Role]) -> bool {
        roles.contains(&self.config.role)
    }
}
