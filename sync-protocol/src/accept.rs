//! Accepting a received session, written once: after a peer's changes passed the write rules
//! ([`crate::rules::admit`]: bounds, signatures, who may write what) and were applied to a
//! candidate copy, [`vet`] decides whether the result may be kept. The node's store and
//! `MemReplica` (the simulator's) both call it, then store what it accepts their own way.

use crate::scope::{PeerInfo, may_accept};
use crate::session::{SessionDoc, SessionView};
use crate::wire::DocId;

/// Why a received version of a session is not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The result is not a valid session (its shape, a field, a vocabulary value).
    #[error("{0}")]
    Malformed(String),
    /// The document names another session than the one it was sent as.
    #[error("the document's id does not match")]
    WrongId,
    /// This node, or the peer that sent it, may not hold the session.
    #[error("outside the scope of {me} or {from}")]
    OutOfScope {
        /// This node.
        me: String,
        /// The peer.
        from: String,
    },
}

/// What becomes of a received version of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It depends on changes this node lacks: nothing is kept yet.
    MissingDeps,
    /// Not kept, and why.
    Refused(Refusal),
    /// Kept: the session as it now reads.
    Accepted(Box<SessionView>),
}

/// Whether `me` may keep `candidate`, received from `from` as session `id`: complete, a valid
/// session, the one it was sent as, and in the scope of both sides.
pub fn vet(me: &PeerInfo, from: &PeerInfo, id: &DocId, candidate: &mut SessionDoc) -> Verdict {
    if !candidate.automerge().get_missing_deps(&[]).is_empty() {
        return Verdict::MissingDeps;
    }
    let view = match candidate.view() {
        Ok(v) => v,
        Err(e) => return Verdict::Refused(Refusal::Malformed(e.to_string())),
    };
    if view.id.to_bytes() != *id {
        return Verdict::Refused(Refusal::WrongId);
    }
    if !may_accept(me, from, &view.meta()) {
        return Verdict::Refused(Refusal::OutOfScope { me: me.name.clone(), from: from.name.clone() });
    }
    Verdict::Accepted(Box::new(view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{NewSession, Patient, Requester, Service, SessionId};
    use crate::vocab::{CareSetting, Channel, Priority, Role, ServiceLine};

    fn node(name: &str, role: Role, lines: &[ServiceLine]) -> PeerInfo {
        PeerInfo { name: name.into(), role, org: None, icb: Some("QHM".into()), lines: lines.to_vec() }
    }

    fn session(origin: &str, line: ServiceLine) -> (DocId, SessionDoc) {
        let id = SessionId::from_parts(1_796_360_400_000, 3);
        let new = NewSession {
            id,
            origin: origin.into(),
            icb: "QHM".into(),
            care_setting: CareSetting::GpUrgent,
            requester: Requester::default(),
            patient: Patient::default(),
            service: Service { line, channel: Channel::Message, priority: Priority::Routine },
            summary: "question".into(),
            draft: false,
        };
        (id.to_bytes(), SessionDoc::create(&new, automerge::ActorId::from(vec![3u8; 16]), 1).unwrap())
    }

    #[test]
    fn a_received_session_is_kept_only_whole_under_its_own_id_and_in_both_scopes() {
        let hub = node("hub-qhm", Role::Hub, &[]);
        let surgery = node("surgery-12", Role::Edge, &[]);
        let derm = node("desk-derm-1", Role::Desk, &[ServiceLine::Dermatology]);
        let (id, mut doc) = session("surgery-12", ServiceLine::Cardiology);
        assert!(matches!(vet(&hub, &surgery, &id, &mut doc), Verdict::Accepted(_)));
        // Sent under another session's id.
        let mut other = id;
        other[15] ^= 1;
        assert_eq!(vet(&hub, &surgery, &other, &mut doc), Verdict::Refused(Refusal::WrongId));
        // A cardiology session offered to a dermatology desk, or by a node that may not hold it.
        let out = Refusal::OutOfScope { me: "desk-derm-1".into(), from: "hub-qhm".into() };
        assert_eq!(vet(&derm, &hub, &id, &mut doc), Verdict::Refused(out));
        let thief = node("surgery-40", Role::Edge, &[]);
        assert!(matches!(vet(&hub, &thief, &id, &mut doc), Verdict::Refused(Refusal::OutOfScope { .. })));
        // Not a session at all.
        let mut empty = SessionDoc::empty(automerge::ActorId::from(vec![4u8; 16]));
        assert!(matches!(vet(&hub, &surgery, &id, &mut empty), Verdict::Refused(Refusal::Malformed(_))));
    }
}
