//! What callers hand a node (a new node, a session, a photo) and what it reports back (its
//! status, a call that can be made now, a callback owed).

use super::*;

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

/// What `outpost status` and `GET /api/status` report.
#[derive(utoipa::ToSchema, Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    /// The node's identity.
    pub node: NodeConfig,
    /// Counts and sizes.
    pub store: crate::store::StoreStats,
    /// Photos held here, handed on, being received.
    pub photos: crate::store::PhotoHoldings,
    /// What has not yet left this device.
    pub not_yet_left_this_device: crate::store::Backlog,
    /// The last complete sync with each peer, and any failure since.
    pub peers: Vec<crate::store::PeerSync>,
    /// When the node's certificate expires (ms since the epoch), if it has one.
    pub certificate_valid_until_ms: Option<i64>,
    /// The audit chain checked end to end.
    pub audit: crate::store::AuditCheck,
    /// When that check was made (ms since the epoch).
    pub audit_checked_ms: i64,
    /// Hubs that had seen this node's audit chain longer than it later was: entries lost since
    /// (restored from a backup, or cut back), each also an `audit.behind` entry in the chain.
    pub audit_losses: Vec<crate::store::AuditLoss>,
    /// Peers (on a hub: its members) whose audit chains were found shorter than they had told
    /// this node, or holding another entry there (`seen`: the furthest end told): entries were
    /// lost on that device since (restored from a backup, or cut back), each also a
    /// `peer.audit_behind` entry in this node's chain.
    pub audit_peer_losses: Vec<crate::store::AuditLoss>,
    /// People (or integrating systems) flagged in the last day: more different patients'
    /// records opened through the local API in an hour (`limits.records_alarm_per_person_hour`)
    /// or in a day (`limits.records_alarm_per_person_day`), or more different patients shown on
    /// cards in an hour (`limits.cards_alarm_per_person_hour`), and whether new records were
    /// refused them: each also an `access.unusual` or `access.refused` entry in the audit
    /// chain, naming them. For the deployer (`outpost status`): always empty through the API,
    /// whose callers include the person flagged.
    pub unusual_access: Vec<crate::store::UnusualAccess>,
    /// The peers connected now (only a running daemon knows: `GET /api/status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_peers: Option<Vec<String>>,
}

/// Where a session's latest call stands, for an app (`call` events of the local API).
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, serde::Serialize)]
pub struct CallNow {
    /// The session.
    pub session: SessionId,
    /// The call's id.
    pub call: String,
    /// `waiting` (asked, not yet rung), `ringing`, `connected`, `ended` (a party hung up or
    /// its leg was recorded) or `callback` (arranged instead, or after the call dropped).
    pub state: &'static str,
    /// The desk rung or connected, if any.
    pub desk: Option<String>,
    /// Whether it rings at this node now (a desk's app must not miss it).
    pub ringing_here: bool,
    /// When the current ring began, and how long it lasts (seconds).
    pub rung: Option<(i64, u32)>,
    /// Why a callback was arranged instead.
    pub callback_reason: Option<String>,
}

/// Sessions looked at per status by [`Node::callbacks_owed`].
pub const CALLBACK_CANDIDATES: usize = 1_000;

/// A callback owed (`GET /api/callbacks`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct CallbackOwed {
    /// The session.
    pub session: SessionId,
    /// The escalation that ended in the callback.
    pub call: String,
    /// Specialty.
    pub service_line: sync_protocol::vocab::ServiceLine,
    /// Priority.
    pub priority: sync_protocol::vocab::Priority,
    /// The question.
    pub summary: String,
    /// The number to call back on, as the requester gave it.
    pub callback_number: Option<String>,
    /// The vehicle's call-sign, for an ambulance crew.
    pub call_sign: Option<String>,
    /// Why a callback rather than a call.
    pub reason: String,
    /// When the callback was arranged (ms since the epoch).
    pub since_ms: i64,
}

/// What a new session needs from the clinician.
#[derive(Debug, Clone, serde::Serialize)]
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

impl SessionRequest {
    /// The channel a service line uses unless told: photos for dermatology, messages otherwise.
    pub fn default_channel(line: ServiceLine) -> Channel {
        if line == ServiceLine::Dermatology { Channel::Photo } else { Channel::Message }
    }

    /// The NHS number's verification status as given, or by default 02 (not traced) with a
    /// number and 07 without; a status other than 07 needs a number (the error names the rule).
    pub fn verification(has_number: bool, given: Option<NhsVerification>) -> Result<NhsVerification, String> {
        let v = given.unwrap_or(if has_number { NhsVerification::NotTraced } else { NhsVerification::NotPresent });
        if !has_number && v != NhsVerification::NotPresent {
            return Err(format!("verification status {v} needs an NHS number; without a number the status is 07"));
        }
        Ok(v)
    }
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
