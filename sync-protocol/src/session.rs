//! One advice session as an Automerge document.
//!
//! The layout and the merge rule of every field are written down in `docs/schema.md`; this
//! module is the only code that writes a session, so the rules hold by construction:
//!
//! - Every container is created together with the session (or with the message, photo or consent
//!   it belongs to), never lazily: two replicas never create competing objects under one key.
//! - Status is a grow-only map of `"<epoch>/<status>"` keys. The current status is the greatest
//!   `(epoch, status)` present, so a merge can only move it forward. A reopen starts a new epoch.
//! - Receipts are grow-only maps of `"<level>/<node>"` keys; the level shown is the greatest present.
//! - A consent is withdrawn once any replica has written `withdrawn_at`; nothing ever unsets it,
//!   and every conflicting value is inspected, so a concurrent edit cannot hide a withdrawal.
//! - Messages, media, consents, routing and calls only grow. A sent message body is a plain
//!   string, not collaborative `Text`: it never changes, and a string costs one op, not one per character.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, AutomergeError, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValueRef, Value, ValueRef,
};
use serde::{Deserialize, Serialize};

mod basis;
mod recent;

pub use basis::{Touched, ViewBasis};

use crate::TimeMs;
use crate::nhs::NhsNumber;
use crate::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, ReceiptLevel, Role,
    ServiceLine, Side, Status, VocabError,
};

/// The schema version written into every session (`/schema`).
pub const SCHEMA_VERSION: i64 = 1;
/// Longest message body accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Longest summary accepted, in bytes.
pub const MAX_SUMMARY_BYTES: usize = 4 * 1024;
/// Longest short field (names, codes, body sites), in bytes.
pub const MAX_FIELD_BYTES: usize = 256;

/// Why a session could not be read or edited.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The document does not have the shape of a session.
    #[error("session document is malformed at {path}: {problem}")]
    Malformed {
        /// Where in the document.
        path: String,
        /// What is wrong there.
        problem: String,
    },
    /// The document was written by a newer outpost.
    #[error("session schema version {0} is newer than this outpost understands ({SCHEMA_VERSION}); upgrade outpost")]
    SchemaVersion(i64),
    /// Automerge refused an operation or could not decode bytes.
    #[error("automerge: {0}")]
    Automerge(#[from] AutomergeError),
    /// An explicit status change that would move the session backwards.
    #[error("status cannot move back from {from} to {to}")]
    StatusBackwards {
        /// The current status.
        from: Status,
        /// The status asked for.
        to: Status,
    },
    /// An edit on a closed or cancelled session.
    #[error("the session is {0}; reopen it before changing it")]
    Terminal(Status),
    /// A reopen of a session that is still open.
    #[error("only a closed or cancelled session can be reopened; this one is {0}")]
    NotTerminal(Status),
    /// A receipt or reply for an item the session does not hold.
    #[error("this session has no message or photo {0}")]
    NoSuchItem(String),
    /// A reference to a consent the session does not hold.
    #[error("this session has no consent {0}")]
    NoSuchConsent(String),
    /// A field that must not be empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A field longer than its limit.
    #[error("{field} is too long: {len} bytes, at most {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value outside its vocabulary.
    #[error(transparent)]
    Vocab(#[from] VocabError),
    /// A birth date that is not a real calendar date written YYYY-MM-DD, or is after today.
    #[error("birth date {value:?} {why}: write it as YYYY-MM-DD, for example 1944-03-09")]
    BirthDate {
        /// What was given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// A session identifier: a ULID, so ids sort by creation time and never collide across nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(ulid::Ulid);

/// A string that is not a session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a session id (26 characters of Crockford base32, as printed by `outpost session new`)")]
pub struct SessionIdError(pub String);

impl SessionId {
    /// Builds an id from a creation time and 80 random bits chosen by the caller.
    pub fn from_parts(at: TimeMs, random: u128) -> Self {
        SessionId(ulid::Ulid::from_parts(at.max(0) as u64, random))
    }

    /// The 16 bytes of the id, as it travels on the wire (sorts like the text form).
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0.to_bytes()
    }

    /// From the 16 wire bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionId(ulid::Ulid::from_bytes(bytes))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for SessionId {
    type Err = SessionIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s.trim()).map(SessionId).map_err(|_| SessionIdError(s.to_string()))
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for SessionId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("A session id: a ULID, 26 characters of Crockford base32."))
            .pattern(Some("^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for SessionId {}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Who asks for advice. Every field is last-writer-wins.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    /// Professional registration number (GMC, NMC or HCPC).
    pub registration: Option<String>,
    /// Role, for example "paramedic" or "GP".
    pub role: Option<String>,
    /// ODS code of the requesting organisation.
    pub org_ods: Option<String>,
    /// Vehicle call-sign, for an ambulance crew.
    pub call_sign: Option<String>,
    /// Incident number, for an ambulance crew.
    pub incident: Option<String>,
    /// Number to call back.
    pub callback: Option<String>,
}

/// The patient. Every field is last-writer-wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patient {
    /// The NHS number, checked (modulus 11) before it is ever written.
    pub nhs_number: Option<NhsNumber>,
    /// The trace status of the number; only `01` is trusted.
    pub verification: NhsVerification,
    /// Fallback demographics, for when there is no verified number.
    pub name: Option<String>,
    /// Date of birth: a calendar date written YYYY-MM-DD ([`check_birth_date`]).
    pub birth_date: Option<String>,
    /// Sex as recorded.
    pub sex: Option<String>,
    /// Postcode.
    pub postcode: Option<String>,
}

impl Default for Patient {
    fn default() -> Self {
        Patient {
            nhs_number: None,
            verification: NhsVerification::NotPresent,
            name: None,
            birth_date: None,
            sex: None,
            postcode: None,
        }
    }
}

/// What is asked of whom. Every field is last-writer-wins.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The specialty.
    pub line: ServiceLine,
    /// Call, photo or message.
    pub channel: Channel,
    /// Clinical priority.
    pub priority: Priority,
}

/// Everything needed to create a session.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The new id.
    pub id: SessionId,
    /// Name of the node creating it.
    pub origin: String,
    /// ICB code the session belongs to.
    pub icb: String,
    /// Where the requester works.
    pub care_setting: CareSetting,
    /// Who asks.
    pub requester: Requester,
    /// About whom.
    pub patient: Patient,
    /// Of which service.
    pub service: Service,
    /// The question, in a few lines.
    pub summary: String,
    /// Keep it as a draft (not yet submitted).
    pub draft: bool,
}

/// A new message.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Message id (a ULID chosen by the caller).
    pub id: String,
    /// Node that writes it.
    pub author: String,
    /// Which side of the conversation the author is on.
    pub side: Side,
    /// The body; it never changes once sent.
    pub text: String,
    /// The message it answers, if any.
    pub reply_to: Option<String>,
    /// The person who wrote it, when the node knows (a signed-in clinician).
    pub clinician: Option<Clinician>,
}

/// The person behind a message: who gave the advice or asked for it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clinician {
    /// Name as shown to others.
    pub name: String,
    /// Role (paramedic, gp, nurse, consultant).
    pub role: String,
    /// Professional registration (GMC, NMC, HCPC), if any.
    pub registration: Option<String>,
}

/// A new photo or other media reference (the bytes live outside the document).
#[derive(Debug, Clone)]
pub struct NewMedia {
    /// BLAKE3 hash of the bytes, lowercase hex.
    pub hash: String,
    /// MIME type, for example `image/jpeg`.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// Width and height in pixels, when known.
    pub dimensions: Option<(u32, u32)>,
    /// Kind of photograph.
    pub view: PhotoView,
    /// Where on the body.
    pub body_site: String,
    /// The consent this photo was taken under.
    pub consent_id: String,
    /// The person who took it, when the node knows (a signed-in clinician).
    pub clinician: Option<Clinician>,
    /// Node that attached it.
    pub added_by: String,
}

/// A new consent record.
#[derive(Debug, Clone)]
pub struct NewConsent {
    /// Consent id (a ULID chosen by the caller).
    pub id: String,
    /// How it was given.
    pub kind: ConsentKind,
    /// What it covers.
    pub scope: ConsentScope,
    /// Who recorded it.
    pub by: String,
}

/// A value in a routing or call log entry.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogValue {
    /// A number (times in ms, durations, counts).
    Int(i64),
    /// A measured figure (RTT, jitter, MOS).
    Float(f64),
    /// Text (node names, results).
    Str(String),
}

impl LogValue {
    /// The text, if this is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            LogValue::Str(v) => Some(v),
            _ => None,
        }
    }
}

/// A session document with its typed operations.
#[derive(Debug)]
pub struct SessionDoc {
    doc: AutoCommit,
    /// The changes it gained lately, whole (see [`recent`]).
    recent: recent::Recent,
}

impl SessionDoc {
    /// Creates a session: one change holding every container and the initial fields.
    pub fn create(new: &NewSession, actor: ActorId, now: TimeMs) -> Result<Self, ModelError> {
        check_text("summary", &new.summary, MAX_SUMMARY_BYTES)?;
        check_short("origin", &new.origin)?;
        check_short("ICB code", &new.icb)?;
        let mut doc = AutoCommit::new().with_actor(actor);
        doc.put(ROOT, "schema", SCHEMA_VERSION)?;

        let identity = doc.put_object(ROOT, "identity", ObjType::Map)?;
        doc.put(&identity, "id", new.id.to_string())?;
        doc.put(&identity, "origin", new.origin.as_str())?;
        doc.put(&identity, "icb", new.icb.as_str())?;
        doc.put(&identity, "created_ms", now)?;
        doc.put(&identity, "care_setting", new.care_setting.as_str())?;

        let requester = doc.put_object(ROOT, "requester", ObjType::Map)?;
        write_requester(&mut doc, &requester, &new.requester)?;
        let patient = doc.put_object(ROOT, "patient", ObjType::Map)?;
        write_patient(&mut doc, &patient, &new.patient, now)?;
        let service = doc.put_object(ROOT, "service", ObjType::Map)?;
        write_service(&mut doc, &service, new.service)?;
        let request = doc.put_object(ROOT, "request", ObjType::Map)?;
        doc.put(&request, "summary", new.summary.as_str())?;

        let status = doc.put_object(ROOT, "status", ObjType::Map)?;
        let first = if new.draft { Status::Draft } else { Status::Queued };
        doc.put(&status, status_key(0, first), now)?;
        doc.put_object(ROOT, "shares", ObjType::Map)?;
        doc.put_object(ROOT, "messages", ObjType::List)?;
        doc.put_object(ROOT, "media", ObjType::Map)?;
        doc.put_object(ROOT, "consents", ObjType::Map)?;
        let outcome = doc.put_object(ROOT, "outcome", ObjType::Map)?;
        doc.put_object(&outcome, Side::Requester.as_str(), ObjType::Map)?;
        doc.put_object(&outcome, Side::Responder.as_str(), ObjType::Map)?;
        doc.put_object(ROOT, "routing", ObjType::List)?;
        doc.put_object(ROOT, "calls", ObjType::List)?;

        let mut session = SessionDoc { doc, recent: Default::default() };
        session.commit("create", now);
        Ok(session)
    }

    /// Loads a session from saved bytes (a snapshot, possibly followed by changes) and checks
    /// that it has the shape of a session this version understands.
    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self, ModelError> {
        let doc = AutoCommit::load(bytes)?.with_actor(actor);
        let session = SessionDoc { doc, recent: Default::default() };
        session.check_shape()?;
        Ok(session)
    }

    /// An empty document (no session yet) to receive a session into from a peer. It becomes a
    /// session only once received bytes give it the shape [`SessionDoc::view`] checks.
    pub fn empty(actor: ActorId) -> Self {
        SessionDoc { doc: AutoCommit::new().with_actor(actor), recent: Default::default() }
    }

    /// Applies more saved bytes (changes or a snapshot) to this document. Idempotent.
    pub fn apply_bytes(&mut self, bytes: &[u8]) -> Result<(), ModelError> {
        self.doc.load_incremental(bytes)?;
        Ok(())
    }

    fn check_shape(&self) -> Result<(), ModelError> {
        let r = Reader::new(&self.doc);
        match r.int(&ROOT, "schema", "/schema")? {
            Some(v) if v > SCHEMA_VERSION => return Err(ModelError::SchemaVersion(v)),
            Some(_) => {}
            None => return Err(malformed("/schema", "missing")),
        }
        let identity = r.obj(&ROOT, "identity", ObjType::Map)?;
        r.req_str(&identity, "id", "/identity/id")?;
        Ok(())
    }

    /// Bytes of the recent changes it keeps whole (beside the document itself).
    pub fn kept_bytes(&self) -> usize {
        self.recent.bytes()
    }

    /// Operations the document holds (every change's, summed).
    pub fn ops(&self) -> u64 {
        self.doc.stats().num_ops
    }

    /// The underlying Automerge document, for saving and (later) syncing.
    pub fn automerge(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// The current heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The whole document, compacted: Automerge's document format without DEFLATE. A session's
    /// columns are small, and zlib's set-up for each one (hundreds of kilobytes zeroed) cost
    /// more CPU than all else a hub does to store a new session; the store seals the bytes
    /// anyway, and [`SessionDoc::load`] reads either form.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save_nocompress()
    }

    /// The changes made since `heads`, as bytes that [`SessionDoc::apply_bytes`] accepts.
    pub fn save_after(&mut self, heads: &[ChangeHash]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for c in self.changes_after(heads) {
            bytes.extend_from_slice(c.raw_bytes());
        }
        bytes
    }

    /// The changes that are not ancestors of `heads`, in causal order (Automerge's
    /// `get_changes`), answered from the changes kept whole where it can: a change is encoded
    /// once, not again for the log and for each peer it goes to.
    pub fn changes_after(&mut self, heads: &[ChangeHash]) -> Vec<automerge::Change> {
        self.recent.changes_after(&mut self.doc, heads)
    }

    /// Applies changes that [`crate::rules::admit`] has checked, in the order it gave.
    pub fn apply_changes(&mut self, changes: Vec<automerge::Change>) -> Result<(), ModelError> {
        self.recent.apply(&mut self.doc, changes)?;
        Ok(())
    }

    /// A copy with another actor: a second replica for tests and the simulator.
    pub fn fork_as(&mut self, actor: ActorId) -> SessionDoc {
        SessionDoc { doc: self.doc.fork().with_actor(actor), recent: Default::default() }
    }

    /// Merges another replica of the same session into this one.
    pub fn merge(&mut self, other: &mut SessionDoc) -> Result<(), ModelError> {
        self.doc.merge(&mut other.doc)?;
        Ok(())
    }

    fn commit(&mut self, what: &str, now: TimeMs) {
        // Automerge change times are in seconds.
        self.doc.commit_with(CommitOptions::default().with_message(what).with_time(now / 1000));
    }

    fn root_obj(&self, key: &str, kind: ObjType) -> Result<ObjId, ModelError> {
        Reader::new(&self.doc).obj(&ROOT, key, kind)
    }

    /// The session id.
    pub fn id(&self) -> Result<SessionId, ModelError> {
        let r = Reader::new(&self.doc);
        let identity = r.obj(&ROOT, "identity", ObjType::Map)?;
        let id = r.req_str(&identity, "id", "/identity/id")?;
        id.parse().map_err(|e: SessionIdError| malformed("/identity/id", e.to_string()))
    }

    /// The current status (greatest epoch, then greatest status in it) and the epoch.
    pub fn status(&self) -> Result<(Status, u32), ModelError> {
        let steps = self.status_steps()?;
        let last = steps.last().ok_or_else(|| malformed("/status", "no status recorded"))?;
        Ok((last.status, last.epoch))
    }

    fn status_steps(&self) -> Result<Vec<StatusStep>, ModelError> {
        let r = Reader::new(&self.doc);
        let obj = r.obj(&ROOT, "status", ObjType::Map)?;
        let mut steps = Vec::new();
        for (key, at_ms) in r.times(&obj, "/status")? {
            let (epoch, status) = parse_status_key(&key)?;
            steps.push(StatusStep { epoch, status, at_ms });
        }
        steps.sort_by_key(|s| (s.epoch, s.status));
        Ok(steps)
    }

    /// Moves the status forward to `to`. Moving to the current status is a no-op (returns false);
    /// moving backwards, or changing a closed or cancelled session, is an error.
    pub fn set_status(&mut self, to: Status, now: TimeMs) -> Result<bool, ModelError> {
        let (current, epoch) = self.status()?;
        if to == current {
            return Ok(false);
        }
        if current.is_terminal() && !(current == Status::Closed && to == Status::Cancelled) {
            return Err(ModelError::Terminal(current));
        }
        if to < current {
            return Err(ModelError::StatusBackwards { from: current, to });
        }
        let obj = self.root_obj("status", ObjType::Map)?;
        self.doc.put(&obj, status_key(epoch, to), now)?;
        self.commit("status", now);
        Ok(true)
    }

    /// Moves the status to at least `to`, leaving it where it is if it is already there or beyond.
    /// Used for the implied moves of ordinary work (a reply makes a session `responded`).
    fn raise_status(&mut self, to: Status, now: TimeMs) -> Result<(), ModelError> {
        let (current, epoch) = self.status()?;
        if current < to && !current.is_terminal() {
            let obj = self.root_obj("status", ObjType::Map)?;
            self.doc.put(&obj, status_key(epoch, to), now)?;
        }
        Ok(())
    }

    /// Reopens a closed or cancelled session: a new epoch starts at `awaiting_reply`.
    pub fn reopen(&mut self, now: TimeMs) -> Result<u32, ModelError> {
        let (current, epoch) = self.status()?;
        if !current.is_terminal() {
            return Err(ModelError::NotTerminal(current));
        }
        let obj = self.root_obj("status", ObjType::Map)?;
        self.doc.put(&obj, status_key(epoch + 1, Status::AwaitingReply), now)?;
        self.commit("reopen", now);
        Ok(epoch + 1)
    }

    fn ensure_open(&self) -> Result<(), ModelError> {
        let (current, _) = self.status()?;
        if current.is_terminal() {
            return Err(ModelError::Terminal(current));
        }
        Ok(())
    }

    /// Appends a message. A requester's message submits a draft; a responder's marks the
    /// session `responded`.
    pub fn add_message(&mut self, msg: &NewMessage, now: TimeMs) -> Result<(), ModelError> {
        check_text("message text", &msg.text, MAX_MESSAGE_BYTES)?;
        check_short("author", &msg.author)?;
        self.ensure_open()?;
        if let Some(reply_to) = &msg.reply_to
            && self.find_message(reply_to)?.is_none()
        {
            return Err(ModelError::NoSuchItem(reply_to.clone()));
        }
        let list = self.root_obj("messages", ObjType::List)?;
        let at = self.doc.length(&list);
        let m = self.doc.insert_object(&list, at, ObjType::Map)?;
        self.doc.put(&m, "id", msg.id.as_str())?;
        self.doc.put(&m, "author", msg.author.as_str())?;
        self.doc.put(&m, "side", msg.side.as_str())?;
        self.doc.put(&m, "at_ms", now)?;
        self.doc.put(&m, "text", msg.text.as_str())?;
        match &msg.reply_to {
            Some(r) => self.doc.put(&m, "reply_to", r.as_str())?,
            None => self.doc.put(&m, "reply_to", ())?,
        }
        if let Some(c) = &msg.clinician {
            put_clinician(&mut self.doc, &m, c)?;
        }
        self.doc.put_object(&m, "receipts", ObjType::Map)?;
        match msg.side {
            Side::Requester => self.raise_status(Status::Queued, now)?,
            Side::Responder => self.raise_status(Status::Responded, now)?,
        }
        self.commit("message", now);
        Ok(())
    }

    fn find_message(&self, id: &str) -> Result<Option<ObjId>, ModelError> {
        let r = Reader::new(&self.doc);
        let list = r.obj(&ROOT, "messages", ObjType::List)?;
        for i in 0..self.doc.length(&list) {
            if let Some((Value::Object(ObjType::Map), m)) = self.doc.get(&list, i)?
                && r.str(&m, "id", "/messages/*/id")?.as_deref() == Some(id)
            {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Records a consent and returns nothing; reference it by its id from media.
    pub fn add_consent(&mut self, consent: &NewConsent, now: TimeMs) -> Result<(), ModelError> {
        check_short("consent id", &consent.id)?;
        check_short("consent by", &consent.by)?;
        let map = self.root_obj("consents", ObjType::Map)?;
        let c = self.doc.put_object(&map, consent.id.as_str(), ObjType::Map)?;
        self.doc.put(&c, "kind", consent.kind.as_str())?;
        self.doc.put(&c, "scope", consent.scope.as_str())?;
        self.doc.put(&c, "by", consent.by.as_str())?;
        self.doc.put(&c, "at_ms", now)?;
        self.commit("consent", now);
        Ok(())
    }

    /// Withdraws a consent. Permanent: no later or concurrent edit brings it back.
    pub fn withdraw_consent(&mut self, id: &str, by: &str, now: TimeMs) -> Result<(), ModelError> {
        let r = Reader::new(&self.doc);
        let map = r.obj(&ROOT, "consents", ObjType::Map)?;
        let c = match self.doc.get(&map, id)? {
            Some((Value::Object(ObjType::Map), c)) => c,
            _ => return Err(ModelError::NoSuchConsent(id.to_string())),
        };
        self.doc.put(&c, "withdrawn_at", now)?;
        self.doc.put(&c, "withdrawn_by", by)?;
        self.commit("consent withdrawn", now);
        Ok(())
    }

    /// Records a photo (or other media) by hash. Recording the same hash twice is a no-op.
    pub fn add_media(&mut self, media: &NewMedia, now: TimeMs) -> Result<bool, ModelError> {
        check_short("body site", &media.body_site)?;
        check_short("media type", &media.mime)?;
        if media.hash.len() != 64 || !media.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("/media", format!("{:?} is not a BLAKE3 hex hash", media.hash)));
        }
        self.ensure_open()?;
        let r = Reader::new(&self.doc);
        let consents = r.obj(&ROOT, "consents", ObjType::Map)?;
        if self.doc.get(&consents, media.consent_id.as_str())?.is_none() {
            return Err(ModelError::NoSuchConsent(media.consent_id.clone()));
        }
        let map = r.obj(&ROOT, "media", ObjType::Map)?;
        if self.doc.get(&map, media.hash.as_str())?.is_some() {
            return Ok(false);
        }
        let m = self.doc.put_object(&map, media.hash.as_str(), ObjType::Map)?;
        self.doc.put(&m, "hash", media.hash.as_str())?;
        self.doc.put(&m, "mime", media.mime.as_str())?;
        self.doc.put(&m, "size", media.size)?;
        if let Some((w, h)) = media.dimensions {
            self.doc.put(&m, "width", u64::from(w))?;
            self.doc.put(&m, "height", u64::from(h))?;
        }
        self.doc.put(&m, "view", media.view.as_str())?;
        self.doc.put(&m, "body_site", media.body_site.as_str())?;
        self.doc.put(&m, "consent", media.consent_id.as_str())?;
        self.doc.put(&m, "added_by", media.added_by.as_str())?;
        self.doc.put(&m, "at_ms", now)?;
        if let Some(c) = &media.clinician {
            put_clinician(&mut self.doc, &m, c)?;
        }
        self.doc.put_object(&m, "receipts", ObjType::Map)?;
        self.raise_status(Status::Queued, now)?;
        self.commit("media", now);
        Ok(true)
    }

    /// Records that `node` holds (or has read) a message or photo. Receipts only move forward:
    /// recording a level already recorded by that node is a no-op (returns false).
    pub fn add_receipt(
        &mut self,
        item: &str,
        level: ReceiptLevel,
        node: &str,
        now: TimeMs,
    ) -> Result<bool, ModelError> {
        if level == ReceiptLevel::Device {
            return Ok(false);
        }
        let item_obj = match self.find_message(item)? {
            Some(m) => m,
            None => {
                let map = self.root_obj("media", ObjType::Map)?;
                match self.doc.get(&map, item)? {
                    Some((Value::Object(ObjType::Map), m)) => m,
                    _ => return Err(ModelError::NoSuchItem(item.to_string())),
                }
            }
        };
        let receipts = Reader::new(&self.doc).obj(&item_obj, "receipts", ObjType::Map)?;
        let key = format!("{}/{}", level.as_str(), node);
        if self.doc.get(&receipts, key.as_str())?.is_some() {
            return Ok(false);
        }
        self.doc.put(&receipts, key, now)?;
        self.commit("receipt", now);
        Ok(true)
    }

    /// Records that `node` now holds (at `level`) every message written by another node and
    /// every photo record written by another node for which `holds_photo` says the bytes are
    /// here (it is given the record: a node holds a photo for a record only when the record's
    /// writer is known to have had the bytes, not for a hash alone). One change for all of them;
    /// returns whether anything was added. Called by a hub or desk after it has stored what it
    /// received, so a receipt never claims more than is true.
    ///
    /// A hub writes no receipt on messages: that a message is at a hub is known to its writer
    /// from the hub's acknowledgement of the heads that hold it (see [`Self::message_keys_at`]
    /// and [`SessionView::raise_held`]), which saves a round trip and a change per session.
    /// Photos keep theirs: "whole at the hub" is what lets an edge delete its copy.
    pub fn acknowledge(
        &mut self,
        level: ReceiptLevel,
        node: &str,
        now: TimeMs,
        holds_photo: impl Fn(PhotoRecord<'_>) -> bool,
    ) -> Result<bool, ModelError> {
        if level == ReceiptLevel::Device {
            return Ok(false);
        }
        let key = format!("{}/{}", level.as_str(), node);
        // Direct reads of the few keys needed: a `Reader` would copy every message's map
        // (its text included) only to compare one field.
        let doc = &self.doc;
        let mut targets = Vec::new();
        // A hub writes none on messages: it does not look them up.
        if level != ReceiptLevel::Hub {
            let msgs = child(doc, &ROOT, "messages", ObjType::List)?;
            for i in 0..doc.length(&msgs) {
                if let Some((Value::Object(ObjType::Map), m)) = doc.get(&msgs, i)?
                    && !text_is(doc, &m, "author", node)?
                {
                    targets.push(m);
                }
            }
        }
        let media = child(doc, &ROOT, "media", ObjType::Map)?;
        for hash in doc.keys(&media) {
            let m = child(doc, &media, &hash, ObjType::Map)?;
            let added_by = match doc.get(&m, "added_by")? {
                Some((Value::Scalar(s), _)) => match s.as_ref() {
                    automerge::ScalarValue::Str(v) => v.to_string(),
                    _ => continue,
                },
                _ => continue,
            };
            if added_by == node {
                continue;
            }
            let receipts = child(doc, &m, "receipts", ObjType::Map)?;
            let vouched = doc.keys(&receipts).any(|k| k.starts_with("hub/") || k.starts_with("desk/"));
            if holds_photo(PhotoRecord { hash: &hash, added_by: &added_by, vouched }) {
                targets.push(m);
            }
        }
        let mut added = false;
        for item in targets {
            let receipts = child(&self.doc, &item, "receipts", ObjType::Map)?;
            if self.doc.get(&receipts, key.as_str())?.is_none() {
                self.doc.put(&receipts, key.as_str(), now)?;
                added = true;
            }
        }
        if added {
            self.commit("receipts", now);
        }
        Ok(added)
    }

    /// The messages a replica whose heads are `heads` holds, each as its author and id ([`MessageKey`]).
    /// Heads this document does not know are left out (their history is unknown here), so the
    /// answer never claims more than the history held here shows.
    pub fn message_keys_at(&mut self, heads: &[ChangeHash]) -> Result<BTreeSet<MessageKey>, ModelError> {
        let known: Vec<ChangeHash> =
            heads.iter().copied().filter(|h| self.doc.get_change_by_hash(h).is_some()).collect();
        let mut out = BTreeSet::new();
        if known.is_empty() {
            return Ok(out);
        }
        let doc = &self.doc;
        let Some((Value::Object(ObjType::List), msgs)) = doc.get_at(&ROOT, "messages", &known)? else {
            return Ok(out);
        };
        let text_at = |m: &ObjId, key: &str| -> Result<Option<String>, ModelError> {
            Ok(match doc.get_at(m, key, &known)? {
                Some((Value::Scalar(s), _)) => match s.as_ref() {
                    automerge::ScalarValue::Str(t) => Some(t.to_string()),
                    _ => None,
                },
                _ => None,
            })
        };
        for i in 0..doc.length_at(&msgs, &known) {
            if let Some((Value::Object(ObjType::Map), m)) = doc.get_at(&msgs, i, &known)?
                && let (Some(author), Some(id)) = (text_at(&m, "author")?, text_at(&m, "id")?)
            {
                out.insert((author, id));
            }
        }
        Ok(out)
    }

    /// Records one side's outcome (last writer wins per side) and moves the session to
    /// `outcome_recorded` unless it is already beyond.
    pub fn set_outcome(&mut self, side: Side, outcome: Outcome, by: &str, now: TimeMs) -> Result<(), ModelError> {
        self.set_outcome_as(side, outcome, by, None, now)
    }

    /// Records one side's outcome with the person who recorded it (see [`Self::set_outcome`]).
    pub fn set_outcome_as(
        &mut self,
        side: Side,
        outcome: Outcome,
        by: &str,
        clinician: Option<&Clinician>,
        now: TimeMs,
    ) -> Result<(), ModelError> {
        self.ensure_open()?;
        if let Some(c) = clinician {
            check_clinician(c)?;
        }
        let r = Reader::new(&self.doc);
        let all = r.obj(&ROOT, "outcome", ObjType::Map)?;
        let obj = r.obj(&all, side.as_str(), ObjType::Map)?;
        // Always the same six keys in the same order (null for a person not known): concurrent
        // writers then win or lose all of them together (Automerge orders conflicting ops by
        // counter, then actor), so an outcome never shows another writer's person.
        self.doc.put(&obj, "value", outcome.as_str())?;
        self.doc.put(&obj, "by", by)?;
        let field = |f: fn(&Clinician) -> Option<&str>| clinician.and_then(f).map(str::to_string);
        for (key, v) in [
            ("by_name", field(|c| Some(c.name.as_str()))),
            ("by_role", field(|c| Some(c.role.as_str()))),
            ("by_registration", field(|c| c.registration.as_deref())),
        ] {
            match v {
                Some(v) => self.doc.put(&obj, key, v)?,
                None => self.doc.put(&obj, key, ())?,
            }
        }
        self.doc.put(&obj, "at_ms", now)?;
        if outcome != Outcome::NotReported {
            self.raise_status(Status::OutcomeRecorded, now)?;
        }
        self.commit("outcome", now);
        Ok(())
    }

    /// Replaces the requester fields (last writer wins per field).
    pub fn set_requester(&mut self, requester: &Requester, now: TimeMs) -> Result<(), ModelError> {
        let obj = self.root_obj("requester", ObjType::Map)?;
        write_requester(&mut self.doc, &obj, requester)?;
        self.commit("requester", now);
        Ok(())
    }

    /// Replaces the patient fields (last writer wins per field).
    pub fn set_patient(&mut self, patient: &Patient, now: TimeMs) -> Result<(), ModelError> {
        self.ensure_open()?;
        let obj = self.root_obj("patient", ObjType::Map)?;
        write_patient(&mut self.doc, &obj, patient, now)?;
        self.commit("patient", now);
        Ok(())
    }

    /// Shares the session with a node outside its default scope (grow-only).
    pub fn share_with(&mut self, node: &str, now: TimeMs) -> Result<(), ModelError> {
        check_short("node", node)?;
        let obj = self.root_obj("shares", ObjType::Map)?;
        if self.doc.get(&obj, node)?.is_none() {
            self.doc.put(&obj, node, now)?;
            self.commit("share", now);
        }
        Ok(())
    }

    /// Appends a typed entry to the routing log.
    pub fn append_routing(&mut self, entry: &crate::routing::RoutingEntry, now: TimeMs) -> Result<(), ModelError> {
        // A closed or cancelled case is not escalated (the router would ring a desk for it):
        // it is reopened first. Other entries (a ring ending, a callback) close what was open.
        if matches!(entry, crate::routing::RoutingEntry::Escalate { .. }) {
            self.ensure_open()?;
        }
        self.append_log(LogName::Routing, entry.kind().as_str(), &entry.fields(), now)
    }

    /// Appends an entry to the routing log (`routing`) or the call log (`calls`).
    pub fn append_log(
        &mut self,
        log: LogName,
        kind: &str,
        fields: &[(&str, LogValue)],
        now: TimeMs,
    ) -> Result<(), ModelError> {
        check_short("log kind", kind)?;
        let list = self.root_obj(log.key(), ObjType::List)?;
        let at = self.doc.length(&list);
        let e = self.doc.insert_object(&list, at, ObjType::Map)?;
        self.doc.put(&e, "kind", kind)?;
        self.doc.put(&e, "at_ms", now)?;
        for (k, v) in fields {
            match v {
                LogValue::Int(i) => self.doc.put(&e, *k, *i)?,
                LogValue::Float(f) => self.doc.put(&e, *k, *f)?,
                LogValue::Str(s) => self.doc.put(&e, *k, s.as_str())?,
            }
        }
        self.commit(log.key(), now);
        Ok(())
    }

    /// The typed view of the whole session, with every merge rule applied.
    pub fn view(&self) -> Result<SessionView, ModelError> {
        build_view(&Reader::whole(&self.doc))
    }

    /// [`SessionDoc::view`], and the facts the write rules start from
    /// ([`crate::rules::HeldFacts`]) found in the same reading, when it finds them plainly: `None`
    /// when a key they come from was written concurrently, or holds another kind of object
    /// (the rules then read the document themselves).
    pub fn view_and_facts(&self) -> (Result<SessionView, ModelError>, Option<crate::rules::HeldFacts>) {
        let r = Reader::whole(&self.doc);
        (build_view(&r), r.held_facts())
    }

    /// [`SessionDoc::view`] with each object read by itself, as it was read before the one
    /// pass: the reference the one pass is tested and measured against. Not for use.
    #[doc(hidden)]
    pub fn view_object_by_object(&self) -> Result<SessionView, ModelError> {
        build_view(&Reader::new(&self.doc))
    }

    /// The routing log alone (what [`SessionView::routing`] holds), read without building the
    /// rest of the view: what a call router needs of every session that changes.
    pub fn routing_log(&self) -> Result<Vec<BTreeMap<String, LogValue>>, ModelError> {
        Reader::new(&self.doc).log("routing")
    }

    /// The call log alone (each party's record of its legs), without building the whole view.
    pub fn call_log(&self) -> Result<Vec<BTreeMap<String, LogValue>>, ModelError> {
        Reader::new(&self.doc).log("calls")
    }
}

/// The two grow-only logs of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogName {
    /// Ring attempts and fallbacks (`/routing`).
    Routing,
    /// Call legs with their quality figures (`/calls`).
    Calls,
}

impl LogName {
    fn key(self) -> &'static str {
        match self {
            LogName::Routing => "routing",
            LogName::Calls => "calls",
        }
    }
}

fn status_key(epoch: u32, status: Status) -> String {
    format!("{epoch}/{}", status.as_str())
}

fn parse_status_key(key: &str) -> Result<(u32, Status), ModelError> {
    let (epoch, status) =
        key.split_once('/').ok_or_else(|| malformed("/status", format!("key {key:?} is not <epoch>/<status>")))?;
    let epoch = epoch.parse::<u32>().map_err(|_| malformed("/status", format!("key {key:?} has no epoch number")))?;
    Ok((epoch, Status::parse(status)?))
}

fn write_opt(doc: &mut AutoCommit, obj: &ObjId, key: &str, value: &Option<String>) -> Result<(), ModelError> {
    match value {
        Some(v) => {
            check_short(field_name(key), v)?;
            doc.put(obj, key, v.as_str())?;
        }
        None => {
            if doc.get(obj, key)?.is_some() {
                doc.delete(obj, key)?;
            }
        }
    }
    Ok(())
}

fn field_name(key: &str) -> &'static str {
    match key {
        "registration" => "registration number",
        "role" => "requester role",
        "org_ods" => "organisation code",
        "call_sign" => "call-sign",
        "incident" => "incident number",
        "callback" => "callback number",
        "name" => "patient name",
        "birth_date" => "birth date",
        "sex" => "sex",
        "postcode" => "postcode",
        _ => "field",
    }
}

fn write_requester(doc: &mut AutoCommit, obj: &ObjId, r: &Requester) -> Result<(), ModelError> {
    write_opt(doc, obj, "registration", &r.registration)?;
    write_opt(doc, obj, "role", &r.role)?;
    write_opt(doc, obj, "org_ods", &r.org_ods)?;
    write_opt(doc, obj, "call_sign", &r.call_sign)?;
    write_opt(doc, obj, "incident", &r.incident)?;
    write_opt(doc, obj, "callback", &r.callback)?;
    Ok(())
}

fn write_patient(doc: &mut AutoCommit, obj: &ObjId, p: &Patient, now: TimeMs) -> Result<(), ModelError> {
    if let Some(d) = &p.birth_date {
        check_birth_date(d, now)?;
    }
    write_opt(doc, obj, "nhs_number", &p.nhs_number.map(|n| n.digits()))?;
    doc.put(obj, "verification", p.verification.as_str())?;
    write_opt(doc, obj, "name", &p.name)?;
    write_opt(doc, obj, "birth_date", &p.birth_date)?;
    write_opt(doc, obj, "sex", &p.sex)?;
    write_opt(doc, obj, "postcode", &p.postcode)?;
    Ok(())
}

fn write_service(doc: &mut AutoCommit, obj: &ObjId, s: Service) -> Result<(), ModelError> {
    doc.put(obj, "line", s.line.as_str())?;
    doc.put(obj, "snomed", s.line.snomed())?;
    doc.put(obj, "channel", s.channel.as_str())?;
    doc.put(obj, "priority", s.priority.as_str())?;
    Ok(())
}

fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), ModelError> {
    if text.trim().is_empty() {
        return Err(ModelError::Empty(field));
    }
    if text.len() > max {
        return Err(ModelError::TooLong { field, len: text.len(), max });
    }
    Ok(())
}

impl Clinician {
    /// Whether a record would take these fields (each present, none too long).
    pub fn check(&self) -> Result<(), ModelError> {
        check_clinician(self)
    }
}

/// Checks a person's fields before they are written.
fn check_clinician(c: &Clinician) -> Result<(), ModelError> {
    check_short("clinician name", &c.name)?;
    check_short("clinician role", &c.role)?;
    if let Some(reg) = &c.registration {
        check_short("registration", reg)?;
    }
    Ok(())
}

/// Writes the person who wrote a record into it (`by_name`, `by_role`, `by_registration`).
fn put_clinician(doc: &mut AutoCommit, obj: &ObjId, c: &Clinician) -> Result<(), ModelError> {
    check_clinician(c)?;
    doc.put(obj, "by_name", c.name.as_str())?;
    doc.put(obj, "by_role", c.role.as_str())?;
    if let Some(reg) = &c.registration {
        doc.put(obj, "by_registration", reg.as_str())?;
    }
    Ok(())
}

/// Checks a birth date as a clinician enters it: a real calendar date written YYYY-MM-DD (the
/// form FHIR and the NHS's services take), no earlier than 1870 and not after the day of `now`
/// (UTC). A slip such as `09/03/1944`, `1944-02-30` or a year in the future is refused here,
/// not carried to the consultant and the record.
pub fn check_birth_date(d: &str, now: TimeMs) -> Result<(), ModelError> {
    let bad = |why| ModelError::BirthDate { value: d.to_string(), why };
    let (y, m, day) = calendar_date(d).ok_or_else(|| bad("is not a calendar date"))?;
    if y < 1870 {
        return Err(bad("is before 1870"));
    }
    if (y, m, day) > civil_date(now) {
        return Err(bad("is after today"));
    }
    Ok(())
}

/// The year, month and day of a real calendar date written YYYY-MM-DD.
pub fn calendar_date(d: &str) -> Option<(i64, u32, u32)> {
    let b = d.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9].iter().all(|&i| b.get(i).is_some_and(u8::is_ascii_digit));
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits {
        return None;
    }
    let (y, m, day) = (d[..4].parse::<i64>().ok()?, d[5..7].parse::<u32>().ok()?, d[8..10].parse::<u32>().ok()?);
    ((1..=12).contains(&m) && (1..=month_days(y, m)).contains(&day)).then_some((y, m, day))
}

fn leap_year(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn month_days(y: i64, m: u32) -> u32 {
    match m {
        2 if leap_year(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The UTC calendar date of a time (from 1970 on), counted out year by year and month by month.
fn civil_date(t: TimeMs) -> (i64, u32, u32) {
    let mut days = t.max(0) / 86_400_000;
    let mut y = 1970;
    loop {
        let len = if leap_year(y) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        y += 1;
    }
    let mut m = 1;
    while days >= i64::from(month_days(y, m)) {
        days -= i64::from(month_days(y, m));
        m += 1;
    }
    (y, m, days as u32 + 1)
}

fn check_short(field: &'static str, text: &str) -> Result<(), ModelError> {
    check_text(field, text, MAX_FIELD_BYTES)
}

fn malformed(path: &str, problem: impl Into<String>) -> ModelError {
    ModelError::Malformed { path: path.to_string(), problem: problem.into() }
}

/// The object of `kind` at `key` of a map, read directly (no [`Reader`] cache).
fn child(doc: &AutoCommit, parent: &ObjId, key: &str, kind: ObjType) -> Result<ObjId, ModelError> {
    match doc.get(parent, key)? {
        Some((Value::Object(k), id)) if k == kind => Ok(id),
        Some(_) => Err(malformed(key, format!("expected a {kind:?}"))),
        None => Err(malformed(key, "missing")),
    }
}

/// Whether the text at `key` of a map is `expected` (false when absent or not text).
fn text_is(doc: &AutoCommit, obj: &ObjId, key: &str, expected: &str) -> Result<bool, ModelError> {
    Ok(match doc.get(obj, key)? {
        Some((Value::Scalar(s), _)) => matches!(s.as_ref(), automerge::ScalarValue::Str(v) if v.as_str() == expected),
        _ => false,
    })
}

/// Read helpers that turn a missing or mistyped field into [`ModelError::Malformed`].
///
/// A map's entries are read in one pass the first time one of its keys is asked for, and kept:
/// a session's view asks for dozens of keys of each map, and one sequential pass over a map
/// costs about what a single keyed lookup does in Automerge's columnar op set. Keys and values
/// are borrowed from the document (nothing is copied until a field is taken), and an entry's
/// id is worked out only for an object, the one kind of value read further.
struct Reader<'a> {
    doc: &'a AutoCommit,
    maps: RefCell<HashMap<ObjId, Rc<MapEntries<'a>>>>,
    /// Lists read in the one pass of [`Reader::whole`].
    lists: HashMap<ObjId, Vec<(ValueRef<'a>, ObjId)>>,
    /// The map read last: the next lookup is most often in it again.
    last: RefCell<Option<(ObjId, Rc<MapEntries<'a>>)>>,
}

/// A map's keys, in order, with their winning values.
type MapEntries<'a> = Vec<Entry<'a>>;

/// One key of a map and its winning value.
#[derive(Clone)]
struct Entry<'a> {
    key: Cow<'a, str>,
    value: ValueRef<'a>,
    /// The value's id, if it is an object.
    id: Option<ObjId>,
    /// Whether values written concurrently under the key lost to this one.
    conflict: bool,
}

/// A number as the view reads one: any integer kind, or a float cut to an integer.
fn scalar_i64(s: &ScalarValueRef<'_>) -> Option<i64> {
    match s {
        ScalarValueRef::Int(n) | ScalarValueRef::Counter(n) | ScalarValueRef::Timestamp(n) => Some(*n),
        ScalarValueRef::Uint(n) => Some(*n as i64),
        ScalarValueRef::F64(f) => Some(*f as i64),
        _ => None,
    }
}

impl<'a> Reader<'a> {
    fn new(doc: &'a AutoCommit) -> Reader<'a> {
        Reader { doc, maps: RefCell::new(HashMap::new()), lists: HashMap::new(), last: RefCell::new(None) }
    }

    /// A reader of the whole document: every object reachable from the root read in one pass
    /// (Automerge seeks each object's operations afresh when it is read by itself, which costs
    /// more than reading it).
    fn whole(doc: &'a AutoCommit) -> Reader<'a> {
        use automerge::iter::DocItem;
        let mut maps: HashMap<ObjId, MapEntries<'a>> = HashMap::new();
        let mut lists: HashMap<ObjId, Vec<(ValueRef<'a>, ObjId)>> = HashMap::new();
        // Every reachable object's visible items, each filed under its object.
        for item in doc.iter() {
            match item.item {
                DocItem::Map(m) => {
                    let id = matches!(m.value, ValueRef::Object(_)).then(|| m.id());
                    let entry = Entry { key: m.key, value: m.value, id, conflict: m.conflict };
                    maps.entry((*item.obj).clone()).or_default().push(entry);
                }
                DocItem::List(l) => {
                    let id = l.id();
                    lists.entry((*item.obj).clone()).or_default().push((l.value, id));
                }
                // A session holds no text objects (the write rules refuse them).
                DocItem::Text(_) => {}
            }
        }
        // An object the pass met as a value but not as a container of items is empty (most
        // receipts, shares and photos of a session): known so, not read again.
        let mut empty_maps = Vec::new();
        let mut empty_lists = Vec::new();
        let values = maps.values().flat_map(|m| m.iter().map(|e| (&e.value, e.id.as_ref())));
        let items = lists.values().flat_map(|l| l.iter().map(|(v, id)| (v, Some(id))));
        for (value, id) in values.chain(items) {
            match (value, id) {
                (ValueRef::Object(ObjType::Map), Some(id)) if !maps.contains_key(id) => empty_maps.push(id.clone()),
                (ValueRef::Object(ObjType::List), Some(id)) if !lists.contains_key(id) => empty_lists.push(id.clone()),
                _ => {}
            }
        }
        maps.extend(empty_maps.into_iter().map(|id| (id, Vec::new())));
        lists.extend(empty_lists.into_iter().map(|id| (id, Vec::new())));
        let maps = maps
            .into_iter()
            .map(|(k, mut m)| {
                if !m.is_sorted_by(|a, b| a.key <= b.key) {
                    m.sort_by(|a, b| a.key.cmp(&b.key));
                }
                (k, Rc::new(m))
            })
            .collect();
        Reader { doc, maps: RefCell::new(maps), lists, last: RefCell::new(None) }
    }

    /// The winning value of every key of a map (none for a list or a missing object): as
    /// read in [`Reader::whole`]'s pass, or read now.
    fn read_map(&self, obj: &ObjId) -> MapEntries<'a> {
        if let Some(m) = self.maps.borrow().get(obj) {
            return m.iter().map(Entry::clone).collect();
        }
        let mut m: MapEntries<'a> = self
            .doc
            .map_range(obj, ..)
            .map(|item| {
                let id = matches!(item.value, ValueRef::Object(_)).then(|| item.id());
                Entry { key: item.key, value: item.value, id, conflict: item.conflict }
            })
            .collect();
        // Automerge yields a map's keys in order; a lookup's binary search must not depend on it.
        if !m.is_sorted_by(|a, b| a.key <= b.key) {
            m.sort_by(|a, b| a.key.cmp(&b.key));
        }
        m
    }

    /// The winning value of every key of a map, kept for the next lookups.
    fn entries(&self, obj: &ObjId) -> Rc<MapEntries<'a>> {
        if let Some((id, m)) = self.last.borrow().as_ref()
            && id == obj
        {
            return m.clone();
        }
        let cached = self.maps.borrow().get(obj).cloned();
        let m = match cached {
            Some(m) => m,
            None => {
                let m = Rc::new(self.read_map(obj));
                self.maps.borrow_mut().insert(obj.clone(), m.clone());
                m
            }
        };
        *self.last.borrow_mut() = Some((obj.clone(), m.clone()));
        m
    }

    /// The winning value at a key of a map (and its id, if it is an object).
    fn get(&self, obj: &ObjId, key: &str) -> Option<(ValueRef<'a>, Option<ObjId>)> {
        let m = self.entries(obj);
        let i = m.binary_search_by(|e| e.key.as_ref().cmp(key)).ok()?;
        Some((m[i].value.clone(), m[i].id.clone()))
    }

    /// The write rules' facts of the document ([`crate::rules::held_facts`] reads the same from
    /// the document), from the maps read: `None` when a key they come from is conflicted or
    /// holds an object that is not a map.
    fn held_facts(&self) -> Option<crate::rules::HeldFacts> {
        let root = self.entries(&ROOT);
        let map_at = |key: &str| -> Option<Option<ObjId>> {
            let Ok(i) = root.binary_search_by(|e| e.key.as_ref().cmp(key)) else { return Some(None) };
            let e = &root[i];
            match (&e.value, &e.id) {
                _ if e.conflict => None,
                (ValueRef::Object(ObjType::Map), Some(id)) => Some(Some(id.clone())),
                (ValueRef::Object(_), _) => None,
                _ => Some(None),
            }
        };
        let (identity, status, shares, service) =
            (map_at("identity")?, map_at("status")?, map_at("shares")?, map_at("service")?);
        let text = |obj: &ObjId, key: &str| match self.get(obj, key) {
            Some((ValueRef::Scalar(ScalarValueRef::Str(v)), _)) => Some(v.into_owned()),
            _ => None,
        };
        let mut facts = crate::rules::HeldFacts { created: identity.is_some(), ..Default::default() };
        if let Some(id) = &identity {
            facts.origin = text(id, "origin");
            facts.icb = text(id, "icb");
        }
        if let Some(id) = &status {
            facts.max_epoch =
                self.entries(id).iter().filter_map(|e| crate::rules::status_epoch(&e.key)).max().unwrap_or(0);
        }
        if let Some(id) = &shares {
            facts.shares = self.keys(id);
        }
        if let Some(id) = &service {
            facts.line = text(id, "line").and_then(|l| ServiceLine::parse(&l).ok());
        }
        Some(facts)
    }

    /// The keys of a map, in order.
    fn keys(&self, obj: &ObjId) -> Vec<String> {
        self.entries(obj).iter().map(|e| e.key.to_string()).collect()
    }

    /// Every value written concurrently under a key of a map (the winner alone, unless others
    /// were).
    fn all(&self, obj: &ObjId, key: &str) -> Result<Vec<Value<'a>>, ModelError> {
        let m = self.entries(obj);
        match m.binary_search_by(|e| e.key.as_ref().cmp(key)) {
            Err(_) => Ok(Vec::new()),
            Ok(i) if !m[i].conflict => Ok(vec![m[i].value.clone().into_value()]),
            Ok(_) => Ok(self.doc.get_all(obj, key)?.into_iter().map(|(v, _)| v).collect()),
        }
    }

    /// Whether values written concurrently under a key of a map lost to the winning one.
    fn conflicted(&self, obj: &ObjId, key: &str) -> bool {
        let m = self.entries(obj);
        m.binary_search_by(|e| e.key.as_ref().cmp(key)).is_ok_and(|i| m[i].conflict)
    }

    /// The winning values of a list, in order.
    fn items(&self, list: &ObjId) -> Vec<(Value<'static>, ObjId)> {
        if let Some(l) = self.lists.get(list) {
            return l.iter().map(|(v, id)| (v.clone().into_value(), id.clone())).collect();
        }
        self.doc.list_range(list, ..).map(|item| (item.value.clone().into_value(), item.id())).collect()
    }

    fn obj(&self, parent: &ObjId, key: &str, kind: ObjType) -> Result<ObjId, ModelError> {
        match self.get(parent, key) {
            Some((ValueRef::Object(k), Some(id))) if k == kind => Ok(id),
            Some(_) => Err(malformed(key, format!("expected a {kind:?}"))),
            None => Err(malformed(key, "missing")),
        }
    }

    fn str(&self, obj: &ObjId, key: &str, path: &str) -> Result<Option<String>, ModelError> {
        match self.get(obj, key) {
            None => Ok(None),
            Some((ValueRef::Scalar(s), _)) => match s {
                ScalarValueRef::Str(v) => Ok(Some(v.into_owned())),
                ScalarValueRef::Null => Ok(None),
                other => Err(malformed(path, format!("expected text, found {other}"))),
            },
            Some(_) => Err(malformed(path, "expected text, found an object")),
        }
    }

    /// The person who wrote a record (`by_name`, `by_role`, `by_registration`), if it names one.
    fn clinician(&self, obj: &ObjId, path: &str) -> Result<Option<Clinician>, ModelError> {
        let Some(name) = self.str(obj, "by_name", &format!("{path}/by_name"))? else { return Ok(None) };
        Ok(Some(Clinician {
            name,
            role: self.str(obj, "by_role", &format!("{path}/by_role"))?.unwrap_or_default(),
            registration: self.str(obj, "by_registration", &format!("{path}/by_registration"))?,
        }))
    }

    fn req_str(&self, obj: &ObjId, key: &str, path: &str) -> Result<String, ModelError> {
        self.str(obj, key, path)?.ok_or_else(|| malformed(path, "missing"))
    }

    fn int(&self, obj: &ObjId, key: &str, path: &str) -> Result<Option<i64>, ModelError> {
        match self.get(obj, key) {
            None => Ok(None),
            Some((ValueRef::Scalar(s), _)) => {
                scalar_i64(&s).map(Some).ok_or_else(|| malformed(path, "expected a number"))
            }
            Some(_) => Err(malformed(path, "expected a number, found an object")),
        }
    }

    /// Every key of a grow-only map of times with its earliest time, in key order: the winning
    /// value where no other was written concurrently, else the earliest of them all.
    fn times(&self, obj: &ObjId, path: &str) -> Result<Vec<(Cow<'a, str>, TimeMs)>, ModelError> {
        let mut out = Vec::new();
        for e in self.read_map(obj) {
            let at = match (&e.value, e.conflict) {
                (_, true) => self.earliest(obj, &e.key, path)?,
                (ValueRef::Scalar(v), false) => {
                    scalar_i64(v).ok_or_else(|| malformed(path, "expected a time in ms"))?
                }
                (ValueRef::Object(_), false) => return Err(malformed(path, "expected a time in ms")),
            };
            out.push((e.key, at));
        }
        Ok(out)
    }

    /// The earliest of the times written concurrently under one key of a grow-only map
    /// (two replicas that reach the same step both write it; the first time wins).
    fn earliest(&self, obj: &ObjId, key: &str, path: &str) -> Result<TimeMs, ModelError> {
        let mut at: Option<TimeMs> = None;
        for (v, _) in self.doc.get_all(obj, key)? {
            let t = v.as_i64().ok_or_else(|| malformed(path, "expected a time in ms"))?;
            at = Some(at.map_or(t, |a| a.min(t)));
        }
        Ok(at.unwrap_or(0))
    }

    /// A side's outcome whose winning value is `not_reported` while a clinician recorded a real
    /// one concurrently (the hub flagged it, its wait over, before the clinician's write
    /// reached it): the clinician's outcome, with the other keys of the same write (one writer
    /// puts all six in one change, and two concurrent writers are two actors). `None` when no
    /// real outcome was written concurrently.
    fn outcome_over_flag(&self, o: &ObjId, path: &str) -> Result<Option<OutcomeView>, ModelError> {
        let actor = |id: &ObjId| match id {
            ObjId::Id(_, actor, _) => Some(actor.clone()),
            ObjId::Root => None,
        };
        let values = self.doc.get_all(o, "value")?;
        let Some((value, id)) = values.iter().rev().find(|(v, _)| v.as_str() != Some(Outcome::NotReported.as_str()))
        else {
            return Ok(None);
        };
        let writer = actor(id);
        let same_write = |key: &str| -> Result<Option<Value<'a>>, ModelError> {
            let all = self.doc.get_all(o, key)?;
            Ok(all.into_iter().rev().find(|(_, i)| actor(i) == writer).map(|(v, _)| v).filter(|v| !v.is_null()))
        };
        let text = |key: &str| -> Result<Option<String>, ModelError> {
            same_write(key)?
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| malformed(path, "expected text")))
                .transpose()
        };
        // A value this version cannot read (a newer node's outcome) leaves the flag shown.
        let Some(value) = value.as_str().and_then(|v| Outcome::parse(v).ok()) else { return Ok(None) };
        let clinician = match text("by_name")? {
            Some(name) => Some(Clinician {
                name,
                role: text("by_role")?.unwrap_or_default(),
                registration: text("by_registration")?,
            }),
            None => None,
        };
        Ok(Some(OutcomeView {
            value,
            by: text("by")?.unwrap_or_default(),
            at_ms: same_write("at_ms")?.and_then(|v| v.as_i64()).unwrap_or(0),
            clinician,
        }))
    }

    fn vocab<T: FromStr<Err = VocabError>>(&self, obj: &ObjId, key: &str, path: &str) -> Result<T, ModelError> {
        let text = self.req_str(obj, key, path)?;
        T::from_str(&text).map_err(|e| malformed(path, e.to_string()))
    }

    /// Every receipt recorded on an item, and the level they add up to for the item's writer:
    /// `hub` and `desk` from any node (only hubs and desks may write them); for an item of the
    /// requester's side, `read` only from a desk that received it (the consultant's side) and
    /// no `requester` level; for the responder's side, `requester` and
    /// `read` only from the origin (the crew's device). Another desk opening a reply does not
    /// make it "read by the requester".
    fn receipts(
        &self,
        item: &ObjId,
        path: &str,
        side: Side,
        origin: &str,
    ) -> Result<(ReceiptLevel, Vec<Receipt>), ModelError> {
        let obj = self.obj(item, "receipts", ObjType::Map)?;
        let mut level = ReceiptLevel::Device;
        let mut parsed = Vec::new();
        for (key, at_ms) in self.times(&obj, path)? {
            let Some((lvl, node)) = key.split_once('/') else {
                return Err(malformed(path, format!("receipt key {key:?} is not <level>/<node>")));
            };
            let lvl = ReceiptLevel::parse(lvl).map_err(|e| malformed(path, e.to_string()))?;
            parsed.push((lvl, node.to_string(), at_ms));
        }
        // The consultant's side: the desks that received the item (only a desk may write a
        // `desk` receipt, and only its own). Any holder may write its own `read`, so a read of
        // the requester's item counts only from one of them: a surgery the session is shared
        // with, or a hub, opening it is not the consultant reading it.
        let desks: Vec<&str> =
            parsed.iter().filter(|(l, ..)| *l == ReceiptLevel::Desk).map(|(_, n, _)| n.as_str()).collect();
        let mut all = Vec::new();
        for (lvl, node, at_ms) in &parsed {
            let (lvl, node, at_ms) = (*lvl, node.as_str(), *at_ms);
            let counts = match (lvl, side) {
                (ReceiptLevel::Device | ReceiptLevel::Hub | ReceiptLevel::Desk, _) => true,
                (ReceiptLevel::Requester, Side::Requester) => false,
                (ReceiptLevel::Read, Side::Requester) => node != origin && desks.contains(&node),
                (ReceiptLevel::Requester | ReceiptLevel::Read, Side::Responder) => node == origin,
            };
            if counts {
                level = level.max(lvl);
            }
            all.push(Receipt { level: lvl, node: node.to_string(), at_ms });
        }
        all.sort_by(|a, b| (a.level, a.at_ms, &a.node).cmp(&(b.level, b.at_ms, &b.node)));
        Ok((level, all))
    }

    fn log(&self, key: &str) -> Result<Vec<BTreeMap<String, LogValue>>, ModelError> {
        let list = self.obj(&ROOT, key, ObjType::List)?;
        let mut out = Vec::new();
        for (v, e) in self.items(&list) {
            let Value::Object(ObjType::Map) = v else {
                return Err(malformed(key, "log entries must be maps"));
            };
            let mut entry = BTreeMap::new();
            // Each entry is read once: not kept.
            for Entry { key: k, value, .. } in self.read_map(&e) {
                if let ValueRef::Scalar(s) = value {
                    let v = match s {
                        ScalarValueRef::Str(t) => LogValue::Str(t.into_owned()),
                        ScalarValueRef::F64(f) => LogValue::Float(f),
                        other => match scalar_i64(&other) {
                            Some(i) => LogValue::Int(i),
                            None => continue,
                        },
                    };
                    entry.insert(k.into_owned(), v);
                }
            }
            out.push(entry);
        }
        Ok(out)
    }
}

/// One step of the status history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusStep {
    /// 0 for the first life of the session, +1 for every reopen.
    pub epoch: u32,
    /// The status reached.
    pub status: Status,
    /// When the writer reached it (its own clock).
    pub at_ms: TimeMs,
}

/// One node's receipt for a message or photo.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// What the node confirmed.
    pub level: ReceiptLevel,
    /// Which node.
    pub node: String,
    /// When, by that node's clock.
    pub at_ms: TimeMs,
}

/// Identity of a session: written once, at creation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    /// Node that created the session.
    pub origin: String,
    /// ICB code.
    pub icb: String,
    /// Creation time, by the origin's clock.
    pub created_ms: TimeMs,
    /// Where the requester works.
    pub care_setting: CareSetting,
}

/// The patient as the session holds it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientView {
    /// NHS number (ten digits), when known.
    pub nhs_number: Option<String>,
    /// Trace status.
    pub verification: NhsVerification,
    /// True only for status 01.
    pub verified: bool,
    /// Fallback demographics.
    pub name: Option<String>,
    /// Date of birth.
    pub birth_date: Option<String>,
    /// Sex.
    pub sex: Option<String>,
    /// Postcode.
    pub postcode: Option<String>,
}

/// The service asked, with the specialty's SNOMED CT code.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Specialty.
    pub line: ServiceLine,
    /// SNOMED CT code of the specialty.
    pub snomed: String,
    /// Channel.
    pub channel: Channel,
    /// Priority.
    pub priority: Priority,
}

/// A message with its receipts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// Message id.
    pub id: String,
    /// Node that wrote it.
    pub author: String,
    /// Requester or responder.
    pub side: Side,
    /// When it was written, by the author's clock.
    pub at_ms: TimeMs,
    /// The body.
    pub text: String,
    /// The message it answers.
    pub reply_to: Option<String>,
    /// How far it has travelled.
    pub receipt: ReceiptLevel,
    /// Every receipt.
    pub receipts: Vec<Receipt>,
    /// The person who wrote it, when the writing node knew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinician: Option<Clinician>,
}

impl MessageView {
    /// Its author and id: what names a message across replicas ([`MessageKey`]).
    pub fn key(&self) -> MessageKey {
        (self.author.clone(), self.id.clone())
    }
}

/// A photo record as a node about to write its receipt on it sees it.
#[derive(Debug, Clone, Copy)]
pub struct PhotoRecord<'a> {
    /// The photo's hash (hex).
    pub hash: &'a str,
    /// The edge that recorded it (the record's writer, by the write rules).
    pub added_by: &'a str,
    /// Whether a hub or a desk has written its receipt on this record: it holds the bytes for
    /// it, which it says only for a record whose writer had them (`docs/protocol.md`, "Blobs").
    pub vouched: bool,
}

/// A message's author (the node that wrote it, held to its verified writer by the write rules)
/// and its id. Ids are chosen by their writers, so only the pair names one message: another
/// member can write a message under an id it has seen.
pub type MessageKey = (String, String);

/// A photo or other media reference with its receipts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaView {
    /// BLAKE3 hash of the bytes (hex).
    pub hash: String,
    /// MIME type.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// Width in pixels, when known.
    pub width: Option<u32>,
    /// Height in pixels, when known.
    pub height: Option<u32>,
    /// Kind of photograph.
    pub view: PhotoView,
    /// Where on the body.
    pub body_site: String,
    /// The consent it was taken under.
    pub consent: String,
    /// Whether that consent has been withdrawn.
    pub consent_withdrawn: bool,
    /// Node that attached it.
    pub added_by: String,
    /// When.
    pub at_ms: TimeMs,
    /// How far its bytes have travelled.
    pub receipt: ReceiptLevel,
    /// Every receipt.
    pub receipts: Vec<Receipt>,
    /// The person who took it, when the attaching node knew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinician: Option<Clinician>,
}

/// A withdrawal of consent.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawal {
    /// When (the earliest, if several replicas withdrew).
    pub at_ms: TimeMs,
    /// By whom.
    pub by: Option<String>,
}

/// A consent record.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentView {
    /// Consent id.
    pub id: String,
    /// How it was given.
    pub kind: ConsentKind,
    /// What it covers.
    pub scope: ConsentScope,
    /// Who recorded it.
    pub by: String,
    /// When.
    pub at_ms: TimeMs,
    /// Set once withdrawn; never unset.
    pub withdrawn: Option<Withdrawal>,
}

/// One side's outcome.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeView {
    /// The outcome.
    pub value: Outcome,
    /// Who recorded it (the node).
    pub by: String,
    /// When.
    pub at_ms: TimeMs,
    /// The person who recorded it, when the node knew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinician: Option<Clinician>,
}

/// Both sides' outcomes, kept apart.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomesView {
    /// The requester's (GP, paramedic).
    pub requester: Option<OutcomeView>,
    /// The responder's (consultant).
    pub responder: Option<OutcomeView>,
}

/// A whole session, read with every merge rule applied. This is also the JSON export format.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    /// Session id.
    pub id: SessionId,
    /// Schema version of the document.
    pub schema: i64,
    /// Identity group.
    pub identity: IdentityView,
    /// Requester group.
    pub requester: Requester,
    /// Patient group.
    pub patient: PatientView,
    /// Service line group.
    pub service: ServiceView,
    /// The question.
    pub summary: String,
    /// Current status.
    pub status: Status,
    /// How many times the session was reopened.
    pub reopened: u32,
    /// Every status reached, in order.
    pub status_history: Vec<StatusStep>,
    /// Nodes the session was shared with beyond its default scope.
    pub shared_with: Vec<String>,
    /// Messages in conversation order (causal order, not clock order).
    pub messages: Vec<MessageView>,
    /// Photos and other media, by time attached.
    pub media: Vec<MediaView>,
    /// Consent records.
    pub consents: Vec<ConsentView>,
    /// Outcomes per side.
    pub outcome: OutcomesView,
    /// Routing log.
    pub routing: Vec<BTreeMap<String, LogValue>>,
    /// Call log.
    pub calls: Vec<BTreeMap<String, LogValue>>,
}

impl SessionView {
    /// The time of the latest event in the session, by the writers' clocks.
    pub fn updated_ms(&self) -> TimeMs {
        let mut t = self.identity.created_ms;
        t = t.max(self.status_history.iter().map(|s| s.at_ms).max().unwrap_or(0));
        t = t.max(self.messages.iter().map(|m| m.at_ms).max().unwrap_or(0));
        t = t.max(self.media.iter().map(|m| m.at_ms).max().unwrap_or(0));
        t
    }
}

fn build_view(r: &Reader<'_>) -> Result<SessionView, ModelError> {
    Ok(build_view_with_objects(r)?.0)
}

/// The view, the object each of its messages was read from (in order) and the messages' list:
/// what [`basis::ViewBasis`] keeps to read a message again only when a change touches it.
fn build_view_with_objects(r: &Reader<'_>) -> Result<(SessionView, Vec<ObjId>, ObjId), ModelError> {
    // The sections are read in this order, here and in `basis::update` (the first malformed
    // section is the one reported).
    let schema = read_schema(r)?;
    let (id, identity) = read_identity(r)?;
    let requester = read_requester(r)?;
    let patient = read_patient(r)?;
    let service = read_service(r)?;
    let summary = read_summary(r)?;
    let status_history = read_status(r)?;
    let shared_with = read_shares(r)?;
    let consents = read_consents(r)?;
    let list = r.obj(&ROOT, "messages", ObjType::List)?;
    let (messages, objects) = read_messages(r, &list, &identity.origin, |_| None)?;
    let media = read_media(r, &identity.origin, &consents)?;
    let outcome = read_outcome(r)?;
    let last = last_status(&status_history)?;
    let view = SessionView {
        id,
        schema,
        identity,
        requester,
        patient,
        service,
        summary,
        status: last.status,
        reopened: last.epoch,
        status_history,
        shared_with,
        messages,
        media,
        consents,
        outcome,
        routing: r.log("routing")?,
        calls: r.log("calls")?,
    };
    Ok((view, objects, list))
}

fn read_schema(r: &Reader<'_>) -> Result<i64, ModelError> {
    let schema = r.int(&ROOT, "schema", "/schema")?.ok_or_else(|| malformed("/schema", "missing"))?;
    if schema > SCHEMA_VERSION {
        return Err(ModelError::SchemaVersion(schema));
    }
    Ok(schema)
}

fn read_identity(r: &Reader<'_>) -> Result<(SessionId, IdentityView), ModelError> {
    let identity_obj = r.obj(&ROOT, "identity", ObjType::Map)?;
    let id: SessionId = r
        .req_str(&identity_obj, "id", "/identity/id")?
        .parse()
        .map_err(|e: SessionIdError| malformed("/identity/id", e.to_string()))?;
    let identity = IdentityView {
        origin: r.req_str(&identity_obj, "origin", "/identity/origin")?,
        icb: r.req_str(&identity_obj, "icb", "/identity/icb")?,
        created_ms: r.int(&identity_obj, "created_ms", "/identity/created_ms")?.unwrap_or(0),
        care_setting: r.vocab(&identity_obj, "care_setting", "/identity/care_setting")?,
    };
    Ok((id, identity))
}

fn read_requester(r: &Reader<'_>) -> Result<Requester, ModelError> {
    let req = r.obj(&ROOT, "requester", ObjType::Map)?;
    Ok(Requester {
        registration: r.str(&req, "registration", "/requester/registration")?,
        role: r.str(&req, "role", "/requester/role")?,
        org_ods: r.str(&req, "org_ods", "/requester/org_ods")?,
        call_sign: r.str(&req, "call_sign", "/requester/call_sign")?,
        incident: r.str(&req, "incident", "/requester/incident")?,
        callback: r.str(&req, "callback", "/requester/callback")?,
    })
}

fn read_patient(r: &Reader<'_>) -> Result<PatientView, ModelError> {
    let pat = r.obj(&ROOT, "patient", ObjType::Map)?;
    let verification: NhsVerification = r.vocab(&pat, "verification", "/patient/verification")?;
    Ok(PatientView {
        nhs_number: r.str(&pat, "nhs_number", "/patient/nhs_number")?,
        verification,
        verified: verification.is_trusted(),
        name: r.str(&pat, "name", "/patient/name")?,
        birth_date: r.str(&pat, "birth_date", "/patient/birth_date")?,
        sex: r.str(&pat, "sex", "/patient/sex")?,
        postcode: r.str(&pat, "postcode", "/patient/postcode")?,
    })
}

fn read_service(r: &Reader<'_>) -> Result<ServiceView, ModelError> {
    let svc = r.obj(&ROOT, "service", ObjType::Map)?;
    let line: ServiceLine = r.vocab(&svc, "line", "/service/line")?;
    Ok(ServiceView {
        line,
        snomed: r.str(&svc, "snomed", "/service/snomed")?.unwrap_or_else(|| line.snomed().to_string()),
        channel: r.vocab(&svc, "channel", "/service/channel")?,
        priority: r.vocab(&svc, "priority", "/service/priority")?,
    })
}

fn read_summary(r: &Reader<'_>) -> Result<String, ModelError> {
    let request = r.obj(&ROOT, "request", ObjType::Map)?;
    Ok(r.str(&request, "summary", "/request/summary")?.unwrap_or_default())
}

/// Every status reached, in order (never empty: see [`last_status`]).
fn read_status(r: &Reader<'_>) -> Result<Vec<StatusStep>, ModelError> {
    let status_obj = r.obj(&ROOT, "status", ObjType::Map)?;
    let mut status_history = Vec::new();
    for (key, at_ms) in r.times(&status_obj, "/status")? {
        let (epoch, status) = parse_status_key(&key)?;
        status_history.push(StatusStep { epoch, status, at_ms });
    }
    status_history.sort_by_key(|s| (s.epoch, s.status));
    last_status(&status_history)?;
    Ok(status_history)
}

fn last_status(history: &[StatusStep]) -> Result<StatusStep, ModelError> {
    history.last().copied().ok_or_else(|| malformed("/status", "no status recorded"))
}

fn read_shares(r: &Reader<'_>) -> Result<Vec<String>, ModelError> {
    let shares = r.obj(&ROOT, "shares", ObjType::Map)?;
    Ok(r.keys(&shares))
}

fn read_consents(r: &Reader<'_>) -> Result<Vec<ConsentView>, ModelError> {
    let consents_obj = r.obj(&ROOT, "consents", ObjType::Map)?;
    let mut consents = Vec::new();
    for cid in r.keys(&consents_obj) {
        let c = r.obj(&consents_obj, &cid, ObjType::Map)?;
        // A withdrawal wins over every concurrent write to the same key: look at all of them.
        let mut withdrawn_at: Option<TimeMs> = None;
        for v in r.all(&c, "withdrawn_at")? {
            if let Some(t) = v.as_i64() {
                withdrawn_at = Some(withdrawn_at.map_or(t, |w| w.min(t)));
            }
        }
        consents.push(ConsentView {
            kind: r.vocab(&c, "kind", "/consents/*/kind")?,
            scope: r.vocab(&c, "scope", "/consents/*/scope")?,
            by: r.req_str(&c, "by", "/consents/*/by")?,
            at_ms: r.int(&c, "at_ms", "/consents/*/at_ms")?.unwrap_or(0),
            withdrawn: withdrawn_at
                .map(|at_ms| {
                    Ok::<_, ModelError>(Withdrawal {
                        at_ms,
                        by: r.str(&c, "withdrawn_by", "/consents/*/withdrawn_by")?,
                    })
                })
                .transpose()?,
            id: cid,
        });
    }
    consents.sort_by(|a, b| (a.at_ms, &a.id).cmp(&(b.at_ms, &b.id)));
    Ok(consents)
}

/// The messages of `list` in order, and the object each was read from; `known` gives the view
/// of a message already read (and untouched since), which is then not read again.
fn read_messages(
    r: &Reader<'_>,
    list: &ObjId,
    origin: &str,
    mut known: impl FnMut(&ObjId) -> Option<MessageView>,
) -> Result<(Vec<MessageView>, Vec<ObjId>), ModelError> {
    let (mut messages, mut objects) = (Vec::new(), Vec::new());
    for (v, m) in r.items(list) {
        let Value::Object(ObjType::Map) = v else {
            return Err(malformed("/messages", "entries must be maps"));
        };
        let message = match known(&m) {
            Some(message) => message,
            None => read_message(r, &m, origin)?,
        };
        messages.push(message);
        objects.push(m);
    }
    Ok((messages, objects))
}

fn read_message(r: &Reader<'_>, m: &ObjId, origin: &str) -> Result<MessageView, ModelError> {
    let side: Side = r.vocab(m, "side", "/messages/*/side")?;
    let (receipt, receipts) = r.receipts(m, "/messages/*/receipts", side, origin)?;
    Ok(MessageView {
        id: r.req_str(m, "id", "/messages/*/id")?,
        author: r.req_str(m, "author", "/messages/*/author")?,
        side,
        at_ms: r.int(m, "at_ms", "/messages/*/at_ms")?.unwrap_or(0),
        text: r.req_str(m, "text", "/messages/*/text")?,
        reply_to: r.str(m, "reply_to", "/messages/*/reply_to")?,
        receipt,
        receipts,
        clinician: r.clinician(m, "/messages/*")?,
    })
}

fn read_media(r: &Reader<'_>, origin: &str, consents: &[ConsentView]) -> Result<Vec<MediaView>, ModelError> {
    let media_obj = r.obj(&ROOT, "media", ObjType::Map)?;
    let mut media = Vec::new();
    for hash in r.keys(&media_obj) {
        let m = r.obj(&media_obj, &hash, ObjType::Map)?;
        let added_by = r.req_str(&m, "added_by", "/media/*/added_by")?;
        // A photo is the requester's unless a node other than the origin added it.
        let side = if added_by == origin { Side::Requester } else { Side::Responder };
        let (receipt, receipts) = r.receipts(&m, "/media/*/receipts", side, origin)?;
        let consent = r.req_str(&m, "consent", "/media/*/consent")?;
        let consent_withdrawn = consents.iter().any(|c| c.id == consent && c.withdrawn.is_some());
        let dim = |k: &str| -> Result<Option<u32>, ModelError> {
            Ok(r.int(&m, k, "/media/*/dimensions")?.and_then(|v| u32::try_from(v).ok()))
        };
        media.push(MediaView {
            mime: r.req_str(&m, "mime", "/media/*/mime")?,
            size: r.int(&m, "size", "/media/*/size")?.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
            width: dim("width")?,
            height: dim("height")?,
            view: r.vocab(&m, "view", "/media/*/view")?,
            body_site: r.req_str(&m, "body_site", "/media/*/body_site")?,
            consent,
            consent_withdrawn,
            added_by,
            at_ms: r.int(&m, "at_ms", "/media/*/at_ms")?.unwrap_or(0),
            receipt,
            receipts,
            clinician: r.clinician(&m, "/media/*")?,
            hash,
        });
    }
    media.sort_by(|a, b| (a.at_ms, &a.hash).cmp(&(b.at_ms, &b.hash)));
    Ok(media)
}

fn read_outcome(r: &Reader<'_>) -> Result<OutcomesView, ModelError> {
    let out = r.obj(&ROOT, "outcome", ObjType::Map)?;
    let side = |s: Side| -> Result<Option<OutcomeView>, ModelError> {
        let o = r.obj(&out, s.as_str(), ObjType::Map)?;
        let path = format!("/outcome/{s}/value");
        let Some(value) = r.str(&o, "value", &path)? else { return Ok(None) };
        if value == Outcome::NotReported.as_str()
            && r.conflicted(&o, "value")
            && let Some(recorded) = r.outcome_over_flag(&o, &path)?
        {
            return Ok(Some(recorded));
        }
        Ok(Some(OutcomeView {
            value: Outcome::parse(&value).map_err(|e| malformed(&path, e.to_string()))?,
            by: r.str(&o, "by", &path)?.unwrap_or_default(),
            at_ms: r.int(&o, "at_ms", &path)?.unwrap_or(0),
            clinician: r.clinician(&o, &format!("/outcome/{s}"))?,
        }))
    };
    Ok(OutcomesView { requester: side(Side::Requester)?, responder: side(Side::Responder)? })
}

impl SessionView {
    /// What scope decisions need to know of this session.
    pub fn meta(&self) -> crate::scope::DocMeta {
        crate::scope::DocMeta {
            origin: self.identity.origin.clone(),
            icb: self.identity.icb.clone(),
            line: self.service.line,
            shares: self.shared_with.clone(),
        }
    }

    /// Raises the receipt levels to what the node viewing this session knows without a
    /// receipt when it is a hub (`me_hub`): every message it holds is at a hub. Returns the
    /// indices (in `messages`) of the messages still below "at hub": those are at a hub once a
    /// hub has acknowledged heads that hold them (see [`Self::raise_at_hub`]). A message another
    /// node wrote is not taken to be at a hub for that alone: edges and desks normally exchange
    /// sessions through hubs, but nothing stops two of them syncing directly.
    pub fn raise_held(&mut self, me_hub: bool) -> Vec<usize> {
        let mut pending = Vec::new();
        for (i, m) in self.messages.iter_mut().enumerate() {
            if m.receipt >= ReceiptLevel::Hub {
                continue;
            }
            if me_hub {
                m.receipt = ReceiptLevel::Hub;
            } else {
                pending.push(i);
            }
        }
        pending
    }

    /// Marks `pending` messages (from [`Self::raise_held`]) "at hub" when their author and id
    /// are in `held` (what a hub's acknowledged heads hold: [`SessionDoc::message_keys_at`]).
    /// The id alone would not do: ids are chosen by their writers, and another member can
    /// reuse one (the write rules hold a message's author to its verified writer).
    pub fn raise_at_hub(&mut self, pending: &[usize], held: &BTreeSet<MessageKey>) {
        for &i in pending {
            if let Some(m) = self.messages.get_mut(i)
                && held.contains(&m.key())
            {
                m.receipt = m.receipt.max(ReceiptLevel::Hub);
            }
        }
    }

    /// Photos this node attached whose bytes a hub has confirmed holding: the edge may delete
    /// its copy (the record lives at the hub).
    pub fn offloadable_media(&self, me: &str) -> Vec<String> {
        self.media
            .iter()
            .filter(|m| m.added_by == me && m.receipts.iter().any(|r| r.level == ReceiptLevel::Hub))
            .map(|m| m.hash.clone())
            .collect()
    }
}

/// The view of a session as a node (a hub when `me_hub`) sees it: its receipts raised by what
/// the node knows without one ([`SessionView::raise_held`]), and its messages "at hub" when one
/// of `hub_heads` (the heads each hub peer has acknowledged holding, asked for only when some
/// message needs them) holds them. Heads equal to ours hold everything, without reading the
/// document.
pub fn localize<E: From<ModelError>>(
    doc: &mut SessionDoc,
    view: &mut SessionView,
    me_hub: bool,
    hub_heads: impl FnOnce() -> Result<Vec<Vec<crate::wire::Hash>>, E>,
) -> Result<(), E> {
    let pending = view.raise_held(me_hub);
    if pending.is_empty() {
        return Ok(());
    }
    let mut ours: Vec<crate::wire::Hash> = doc.heads().into_iter().map(crate::wire::Hash::from).collect();
    ours.sort();
    for mut theirs in hub_heads()? {
        theirs.sort();
        let held = if theirs == ours {
            pending.iter().filter_map(|&i| view.messages.get(i).map(MessageView::key)).collect()
        } else {
            let heads: Vec<ChangeHash> = theirs.into_iter().map(ChangeHash::from).collect();
            doc.message_keys_at(&heads)?
        };
        view.raise_at_hub(&pending, &held);
    }
    Ok(())
}

/// The receipt a node of this role gives for what others wrote once it stores it: a hub says
/// "at hub", a desk "at consultant", the requester's edge "at requester" (for the replies it
/// receives: the consultant sees the advice has reached the crew).
pub fn receipt_level(role: Role) -> Option<ReceiptLevel> {
    match role {
        Role::Hub => Some(ReceiptLevel::Hub),
        Role::Desk => Some(ReceiptLevel::Desk),
        Role::Edge => Some(ReceiptLevel::Requester),
    }
}

/// The role a node's messages speak for.
pub fn side_of(role: Role) -> Side {
    match role {
        Role::Desk => Side::Responder,
        Role::Edge | Role::Hub => Side::Requester,
    }
}
