//! A node: its directory, configuration, key and store, and the clinical operations on them.
//!
//! This is what the CLI and the demo call. Each operation validates everything it is given
//! before it writes anything, and returns only once its write is durable.

use std::time::{SystemTime, UNIX_EPOCH};

use automerge::ActorId;
use sync_protocol::session::{
    ModelError, NewConsent, NewMedia, NewMessage, NewSession, Patient, Requester, Service, SessionId, SessionView,
    side_of,
};
use sync_protocol::vocab::{
    CareSetting, ConsentKind, ConsentScope, Outcome, PhotoView, ReceiptLevel, Role, Side, Status,
};

use crate::config::{self, CONFIG_FORMAT, ConfigError, NodeConfig, NodeDir};
use crate::crypto::{self, CryptoError, KEY_ENV, NodeKey, Sealer};
use crate::photo::{Photo, PhotoError};
use crate::store::{BlobInfo, Store, StoreError, StoreOptions};

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
    /// An operation this node's role does not perform.
    #[error("{action} is done on {allowed} nodes; this node ({name}) is a {role} node")]
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

impl NodeError {
    /// The model's refusal, if that is what this is.
    pub fn model(&self) -> Option<&ModelError> {
        match self {
            NodeError::Store(StoreError::Model { source, .. }) => Some(source),
            _ => None,
        }
    }
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

/// What `outpost init` needs.
#[derive(Debug, Clone)]
pub struct InitParams {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// ODS code.
    pub org: Option<String>,
    /// ICB code.
    pub icb: Option<String>,
    /// Service lines (desks).
    pub lines: Vec<sync_protocol::vocab::ServiceLine>,
}

/// What a new session needs from the clinician.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// Where the requester works.
    pub care_setting: CareSetting,
    /// Who asks (the organisation defaults to the node's).
    pub requester: Requester,
    /// About whom.
    pub patient: Patient,
    /// Of which service.
    pub service: Service,
    /// The question.
    pub summary: String,
    /// Keep as a draft.
    pub draft: bool,
}

/// What a photo attachment needs besides the photo.
#[derive(Debug, Clone)]
pub struct PhotoRequest {
    /// Kind of photograph.
    pub view: PhotoView,
    /// Where on the body.
    pub body_site: String,
    /// How consent was given.
    pub consent: ConsentKind,
    /// What it covers.
    pub scope: ConsentScope,
}

/// An open node.
#[derive(Debug)]
pub struct Node {
    /// Its directory.
    pub dir: NodeDir,
    /// Its configuration.
    pub config: NodeConfig,
    /// Its store.
    pub store: Store,
}

impl Node {
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
        Store::open(&dir.db_path(), Sealer::new(&key), ActorId::from(actor), &cfg.name, StoreOptions::default())?;
        dir.write_config(&cfg)?;
        Ok(cfg)
    }

    /// Opens an existing node directory, checking its key.
    pub fn open(dir: &NodeDir) -> Result<Node, NodeError> {
        Node::open_with(dir, StoreOptions::default())
    }

    /// Opens with explicit store options.
    pub fn open_with(dir: &NodeDir, opts: StoreOptions) -> Result<Node, NodeError> {
        let config = dir.read_config()?;
        let (key, origin) = NodeKey::load(&dir.key_path())?;
        if key.id() != config.key_id {
            return Err(CryptoError::WrongKey { origin, found: key.id(), expected: config.key_id.clone() }.into());
        }
        let actor_bytes = hex::decode(&config.actor).map_err(|_| ConfigError::Invalid {
            path: dir.config_path(),
            problem: "actor is not hexadecimal".into(),
        })?;
        let store = Store::open(&dir.db_path(), Sealer::new(&key), ActorId::from(actor_bytes), &config.name, opts)?;
        Ok(Node { dir: dir.clone(), config, store })
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
        self.require("creating a session", "edge", &[Role::Edge])?;
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
        Ok(self.store.create_session(&new, now)?)
    }

    /// Sends a message in a session; returns its id once it is durable on this device.
    pub fn send_message(
        &mut self,
        id: SessionId,
        text: &str,
        reply_to: Option<String>,
        now: i64,
    ) -> Result<String, NodeError> {
        let msg = NewMessage {
            id: new_id(now)?,
            author: self.config.name.clone(),
            side: side_of(self.config.role),
            text: text.to_string(),
            reply_to,
        };
        self.store.edit(id, "message.send", None, now, |_, doc| {
            doc.add_message(&msg, now).map_err(|source| StoreError::Model { id: id.to_string(), source })
        })?;
        Ok(msg.id)
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
        let consent_id = new_id(now)?;
        let by = self.config.name.clone();
        let hash = blake3::hash(&photo.bytes).to_hex().to_string();
        let detail = Some(serde_json::json!({ "photo": hash }));
        let info = self.store.edit(id, "photo.attach", detail, now, |ctx, doc| {
            let model = |source| StoreError::Model { id: id.to_string(), source };
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
            };
            doc.add_media(&media, now).map_err(model)?;
            let info = ctx.put_blob(&photo.bytes, photo.mime)?;
            if let Some(t) = &thumbnail {
                ctx.put_thumbnail(&info.hash, t)?;
            }
            Ok(info)
        })?;
        Ok(info)
    }

    /// Records this side's outcome.
    pub fn set_outcome(&mut self, id: SessionId, side: Side, outcome: Outcome, now: i64) -> Result<(), NodeError> {
        match side {
            Side::Requester => {
                self.require("recording the requester's outcome", "edge or hub", &[Role::Edge, Role::Hub])?
            }
            Side::Responder => {
                self.require("recording the responder's outcome", "desk or hub", &[Role::Desk, Role::Hub])?
            }
        }
        let by = self.config.name.clone();
        let detail = Some(serde_json::json!({ "side": side, "outcome": outcome }));
        self.store.edit(id, "outcome.set", detail, now, |_, doc| {
            doc.set_outcome(side, outcome, &by, now).map_err(|source| StoreError::Model { id: id.to_string(), source })
        })?;
        Ok(())
    }

    /// Moves a session's status forward (close, cancel, submit a draft).
    pub fn set_status(&mut self, id: SessionId, status: Status, now: i64) -> Result<bool, NodeError> {
        let detail = Some(serde_json::json!({ "status": status }));
        Ok(self.store.edit(id, "status.set", detail, now, |_, doc| {
            doc.set_status(status, now).map_err(|source| StoreError::Model { id: id.to_string(), source })
        })?)
    }

    /// Reopens a closed or cancelled session.
    pub fn reopen(&mut self, id: SessionId, now: i64) -> Result<u32, NodeError> {
        Ok(self.store.edit(id, "status.reopen", None, now, |_, doc| {
            doc.reopen(now).map_err(|source| StoreError::Model { id: id.to_string(), source })
        })?)
    }

    /// The session's view, recording the access in the audit chain.
    pub fn show(&mut self, id: SessionId, now: i64) -> Result<SessionView, NodeError> {
        if self.config.role == Role::Desk {
            // The consultant has now seen the messages: say so, truthfully (photos are marked
            // read when their bytes are opened, not when they are listed).
            let name = self.config.name.clone();
            self.store.edit(id, "session.read", None, now, |_, doc| {
                doc.acknowledge(ReceiptLevel::Read, &name, now, |_| false)
                    .map_err(|source| StoreError::Model { id: id.to_string(), source })
            })?;
        }
        let view = self.store.view(id)?;
        self.store.audit_access(id, "session.view", now)?;
        Ok(view)
    }

    /// A photo's bytes; on a desk, the photo is then marked read in every session that holds it.
    pub fn open_photo(&mut self, hash: &str, now: i64) -> Result<Vec<u8>, NodeError> {
        let bytes = self.store.read_blob(hash)?;
        if self.config.role == Role::Desk {
            let name = self.config.name.clone();
            for id in self.store.sessions_with_photo(hash)? {
                self.store.edit(id, "photo.read", Some(serde_json::json!({ "photo": hash })), now, |_, doc| {
                    doc.add_receipt(hash, ReceiptLevel::Read, &name, now)
                        .map_err(|source| StoreError::Model { id: id.to_string(), source })
                })?;
            }
        }
        Ok(bytes)
    }
}
