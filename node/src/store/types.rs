//! What the store hands out: session cards, blob and photo holdings, statistics, the backlog,
//! peers' sync state, and audit entries.

use serde::{Deserialize, Serialize};
use sync_protocol::session::{SessionId, SessionView};
use sync_protocol::vocab::{Channel, Priority, ReceiptLevel, ServiceLine, Side, Status};

/// What a session list shows without loading the document. The index columns give the id,
/// status, service line, priority, origin and times; the rest is sealed in the row's card.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCard {
    /// Session id.
    pub id: SessionId,
    /// Current status.
    pub status: Status,
    /// Specialty.
    pub service_line: ServiceLine,
    /// Priority.
    pub priority: Priority,
    /// Channel.
    pub channel: Channel,
    /// The question.
    pub summary: String,
    /// NHS number, when known.
    pub nhs_number: Option<String>,
    /// Node that created it.
    pub origin: String,
    /// Creation time.
    pub created_ms: i64,
    /// Latest event.
    pub updated_ms: i64,
    /// Number of messages.
    pub messages: usize,
    /// Number of photos.
    pub photos: usize,
    /// Messages and photos that have not yet reached the hub.
    pub on_device_only: usize,
    /// How far the latest message has gone (a reply read by the crew shows `read`).
    pub last_message_receipt: Option<ReceiptLevel>,
    /// Which side wrote the latest message (so an app words its receipt: "at consultant" for
    /// the crew's own message, "reply received" for the consultant's).
    pub last_message_side: Option<Side>,
    /// The sides whose outcome is in: a clinician's, or the hub's `not_reported` flag. The
    /// session's status becomes `outcome_recorded` at the first side's, so an app tells by this
    /// whether its own side still owes one (a consultant's queue keeps the case open until
    /// theirs is in). Absent from cards written before it was kept (until the session's next
    /// write).
    pub outcomes: Option<Vec<Side>>,
}

/// The sealed part of a card: what the index columns must not hold.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CardSecret {
    #[serde(rename = "s")]
    pub(super) summary: String,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub(super) nhs_number: Option<String>,
    #[serde(rename = "c")]
    pub(super) channel: Channel,
    #[serde(rename = "m")]
    pub(super) messages: usize,
    #[serde(rename = "p")]
    pub(super) photos: usize,
    #[serde(rename = "d")]
    pub(super) on_device_only: usize,
    /// Of those, the messages: at a hub as soon as a hub acknowledges the session's current
    /// heads, which the card's listing reads beside it (cards written before lack it).
    #[serde(rename = "u", default)]
    pub(super) messages_on_device: usize,
    /// Cards written before schema 6 lack it; it is filled at the session's next write.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub(super) last_message_receipt: Option<ReceiptLevel>,
    /// Cards written before it was kept lack it; it is filled at the session's next write.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub(super) last_message_side: Option<Side>,
    /// Cards written before it was kept lack it; it is filled at the session's next write.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub(super) outcomes: Option<Vec<Side>>,
}

impl CardSecret {
    pub(super) fn from_view(v: &SessionView) -> Self {
        CardSecret {
            summary: v.summary.clone(),
            nhs_number: v.patient.nhs_number.clone(),
            channel: v.service.channel,
            messages: v.messages.len(),
            photos: v.media.len(),
            on_device_only: v.messages.iter().filter(|m| m.receipt == ReceiptLevel::Device).count()
                + v.media.iter().filter(|m| m.receipt == ReceiptLevel::Device).count(),
            messages_on_device: v.messages.iter().filter(|m| m.receipt == ReceiptLevel::Device).count(),
            last_message_receipt: v.messages.last().map(|m| m.receipt),
            last_message_side: v.messages.last().map(|m| m.side),
            outcomes: Some(
                [(Side::Requester, &v.outcome.requester), (Side::Responder, &v.outcome.responder)]
                    .into_iter()
                    .filter(|(_, o)| o.is_some())
                    .map(|(side, _)| side)
                    .collect(),
            ),
        }
    }
}

/// A stored blob's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// BLAKE3 hash (hex).
    pub hash: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type.
    pub mime: String,
    /// Chunks it is cut into.
    pub chunks: u64,
    /// Chunks present here.
    pub chunks_present: u64,
    /// `complete`, `partial` (being received) or `offloaded` (deleted here once a hub held it).
    pub state: String,
}

/// Filters for [`Sessions::list`](super::Sessions::list).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this service line.
    pub service_line: Option<ServiceLine>,
    /// At most this many, newest first.
    pub limit: Option<usize>,
}

/// Counts and sizes for `outpost status`.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Sessions stored.
    pub sessions: u64,
    /// Sessions per status.
    pub by_status: Vec<(String, u64)>,
    /// Document changes not yet folded into snapshots.
    pub log_changes: u64,
    /// Bytes of those changes (sealed).
    pub log_bytes: u64,
    /// Snapshots.
    pub snapshots: u64,
    /// Bytes of snapshots (sealed).
    pub snapshot_bytes: u64,
    /// Blobs (photos).
    pub blobs: u64,
    /// Bytes of blob content.
    pub blob_bytes: u64,
    /// Audit entries.
    pub audit_entries: u64,
    /// Size of the database file.
    pub db_file_bytes: u64,
    /// Size of its write-ahead log.
    pub wal_file_bytes: u64,
    /// Schema version.
    pub schema_version: i64,
}

/// Photos by what this node holds of them.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoHoldings {
    /// Held whole here: count and bytes.
    pub held: (u64, u64),
    /// Being received: count, and bytes of the whole photos.
    pub partial: (u64, u64),
    /// Handed to the hub and deleted here (a thumbnail kept): count and bytes.
    pub offloaded: (u64, u64),
}

/// What has not yet left this device: the crew's main question.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    /// Messages and photos that no other node has confirmed holding.
    pub items: u64,
    /// Sessions holding them.
    pub sessions: u64,
    /// Bytes of this node's photos that no hub has confirmed holding yet.
    pub photo_bytes: u64,
}

/// What this node last knew of its syncs with a peer.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSync {
    /// The peer's name.
    pub peer: String,
    /// When a conversation last reached the point where everything either side may send had
    /// been sent and acknowledged (ms since the epoch).
    pub last_ok_ms: Option<i64>,
    /// The last failure, and when.
    pub last_error: Option<(i64, String)>,
}

/// The result of checking the audit chain.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheck {
    /// Entries checked.
    pub entries: u64,
    /// The first entry whose hash does not follow from its predecessor, if any.
    pub broken_at: Option<u64>,
}

/// A hub had seen this node's audit chain longer than it is now: entries were lost since
/// (restored from a backup, or cut back). Recorded in the chain as `audit.behind`.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLoss {
    /// The other node: the hub that had seen this node's chain longer, or (a hub's record)
    /// the member whose chain was found shorter.
    pub peer: String,
    /// The furthest entry of the chain found cut that the hub had been told of.
    pub seen: u64,
}

/// A person (or integrating system) flagged for unusual access through the local API: more
/// different patients' records opened in an hour or in a day, or more different patients shown
/// on cards in an hour, than the node's alarms; from the audit chain's `access.unusual` and
/// `access.refused` entries of the last day.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnusualAccess {
    /// Who, as the chain names them.
    pub person: String,
    /// Their role.
    pub role: Option<String>,
    /// The most different records they had opened in an hour when an entry was written.
    pub records: u64,
    /// The most different patients they had been shown on cards in one kind of list in an
    /// hour when an entry was written (0: none flagged).
    pub cards: u64,
    /// The most different records they had opened in a day when an entry was written (0:
    /// none flagged).
    pub records_day: u64,
    /// Whether new records were refused them (the limit reached).
    pub refused: bool,
    /// When the latest such entry was written.
    pub at_ms: i64,
}

/// A look at a record through the local API, a record made, or a finding of the node's access
/// watch, as the audit chain holds it ([`Audit::access_since`]): what a restarted daemon counts
/// again, so that a restart forgets no one's hour.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessSeen {
    /// When.
    pub at_ms: i64,
    /// `session.view`, `session.export`, `photo.view`, `session.create`, `access.unusual` or
    /// `access.refused`.
    pub action: String,
    /// The person who acted (their id), and whether an integrating system.
    pub person: (i64, bool),
    /// The record, for a look or a record made.
    pub session: Option<SessionId>,
    /// For a finding: the hour's records, the day's, the cards shown (0 where not said).
    pub flagged: (u64, u64, u64),
}

/// One audit entry, opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain.
    pub seq: u64,
    /// When.
    pub at_ms: i64,
    /// Which node (device).
    pub node: String,
    /// What was done.
    pub action: String,
    /// To which session.
    pub session: Option<String>,
    /// Details (ids and codes, never patient data), when the action has any.
    pub detail: Option<serde_json::Value>,
}
