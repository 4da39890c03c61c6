//! Why a dial, a connection or a sync conversation failed: the causes [`super::NetError`]
//! carries, as types a caller can match on rather than sentences.

use sync_protocol::engine::EngineError;
use sync_protocol::wire::DecodeError;

use crate::store::StoreError;

/// Why a dial gave no connection.
#[derive(Debug, thiserror::Error)]
pub enum DialFailure {
    /// The daemon neither listens nor dials (it was stopped).
    #[error("the daemon has no endpoint")]
    NoEndpoint,
    /// quinn would not start the dial (an address it cannot use, the endpoint closing).
    #[error(transparent)]
    Start(#[from] quinn::ConnectError),
    /// The handshake failed: no answer, or the peer refused this node's certificate.
    #[error(transparent)]
    Handshake(#[from] quinn::ConnectionError),
}

/// Why a connection was refused or lost before its conversation began.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionFailure {
    /// The peer presented no certificate.
    #[error("no certificate")]
    NoCertificate,
    /// The peer's certificate is on the fleet's revocation list.
    #[error("{peer} has been revoked")]
    Revoked {
        /// The peer.
        peer: String,
    },
    /// The peer's certificate has expired.
    #[error("{peer}'s certificate has expired")]
    Expired {
        /// The peer.
        peer: String,
    },
    /// The peer presented a certificate older than one this node holds for the same author
    /// key, stating another identity.
    #[error(
        "{peer}'s certificate is superseded: its author key has a newer certificate of another identity; install the newer certificate"
    )]
    Superseded {
        /// The peer.
        peer: String,
    },
    /// The peer presented this node's own identity.
    #[error("the peer presented this node's own identity")]
    OwnIdentity,
    /// The peer holds as many connections as one peer may.
    #[error("{peer} already holds {held} connections (at most {max})")]
    PeerLimit {
        /// The peer.
        peer: String,
        /// Connections it holds.
        held: usize,
        /// The limit.
        max: usize,
    },
    /// This node holds as many connections as it may.
    #[error("this node is at its limit of {max} connections")]
    NodeLimit {
        /// The limit.
        max: usize,
    },
    /// The peer closed the connection while its lanes were opened, with this reason.
    #[error("refused by the peer: {0}")]
    RefusedByPeer(quinn::ConnectionError),
    /// The connection failed while its lanes were opened.
    #[error(transparent)]
    Lost(#[from] quinn::ConnectionError),
    /// A lane's first byte could not be written.
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    /// A lane's first byte could not be read.
    #[error(transparent)]
    Read(#[from] quinn::ReadExactError),
    /// A lane opened with a kind this version does not know.
    #[error("unknown lane {0}")]
    UnknownLane(u8),
    /// The peer opened no lanes (or only one) within the time allowed after its handshake.
    #[error("the peer opened no lanes within {within:?} of its handshake")]
    NoLanes {
        /// The time allowed.
        within: std::time::Duration,
    },
    /// The peer opened fewer than two lanes.
    #[error("a lane is missing")]
    MissingLane,
    /// A thread panicked while it held a table of the daemon's connections (or its dialling
    /// configuration).
    #[error("a table of the daemon's connections was poisoned by a panic")]
    Poisoned,
}

/// Why a sync conversation ended before it completed.
#[derive(Debug, thiserror::Error)]
pub enum SyncFailure {
    /// The peer sent more than its budget allows (this node closed the conversation).
    #[error("over the budget of {0}")]
    OverBudget(Overspent),
    /// The engine ended the conversation: the peer broke the protocol or closed it with an
    /// error, or the store failed.
    #[error(transparent)]
    Engine(#[from] EngineError<StoreError>),
    /// The peer sent bytes that are not a frame.
    #[error("an undecodable frame: {0}")]
    BadFrame(#[from] DecodeError),
    /// The peer's lanes ended before the sync completed (with the reason it gave, if any).
    #[error("the peer ended the conversation before the sync completed{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    PeerEnded(Option<String>),
    /// The peer's certificate was revoked during the conversation.
    #[error("{peer} has been revoked")]
    Revoked {
        /// The peer.
        peer: String,
    },
    /// The caller's time limit passed.
    #[error("stopped before it finished (time limit)")]
    TimeLimit,
    /// The peer closed the connection before a one-shot sync completed.
    #[error("the peer closed the connection before the sync completed: {0}")]
    PeerClosed(quinn::ConnectionError),
    /// The connection failed.
    #[error(transparent)]
    Lost(quinn::ConnectionError),
}

/// Which per-minute budget a peer went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overspent {
    /// Operations a minute.
    #[error("{0} operations a minute")]
    Ops(u64),
    /// Bytes a minute.
    #[error("{} MiB a minute", .0 >> 20)]
    Bytes(u64),
}
