//! Who may hold which session.
//!
//! - An **edge** holds the sessions it created and those shared with it by name.
//! - A **desk** holds the sessions of its service lines within its ICB, and those shared with it.
//! - A **hub** holds every session of its ICB.
//!
//! A node sends, announces or fingerprints a session to a peer only if the peer may hold it,
//! and accepts a session from a peer only if both the peer and itself may hold it. Identities
//! come from the peers' certificates, issued by the fleet CA, never from what a peer says.

use serde::{Deserialize, Serialize};

use crate::vocab::{Role, ServiceLine};

/// A node's identity as its certificate states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Node name, unique in the fleet.
    pub name: String,
    /// Edge, hub or desk.
    pub role: Role,
    /// ODS code of its organisation.
    pub org: Option<String>,
    /// Its ICB.
    pub icb: Option<String>,
    /// For a desk: the service lines it answers.
    pub lines: Vec<ServiceLine>,
}

/// What scope decisions need to know of a session (all held in clear index columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    /// Node that created it.
    pub origin: String,
    /// Its ICB.
    pub icb: String,
    /// Its service line.
    pub line: ServiceLine,
    /// Nodes it was shared with by name.
    pub shares: Vec<String>,
}

/// Whether `node` may hold the session `doc`.
pub fn may_hold(node: &PeerInfo, doc: &DocMeta) -> bool {
    if doc.shares.contains(&node.name) {
        return true;
    }
    match node.role {
        Role::Edge => doc.origin == node.name,
        Role::Hub => node.icb.as_deref() == Some(doc.icb.as_str()),
        Role::Desk => node.icb.as_deref() == Some(doc.icb.as_str()) && node.lines.contains(&doc.line),
    }
}

/// Whether a session received from `from` may be stored by `me`: both must be entitled to it.
pub fn may_accept(me: &PeerInfo, from: &PeerInfo, doc: &DocMeta) -> bool {
    may_hold(me, doc) && may_hold(from, doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, role: Role, icb: &str, lines: &[ServiceLine]) -> PeerInfo {
        PeerInfo { name: name.into(), role, org: None, icb: Some(icb.into()), lines: lines.to_vec() }
    }

    fn doc(origin: &str, icb: &str, line: ServiceLine) -> DocMeta {
        DocMeta { origin: origin.into(), icb: icb.into(), line, shares: vec![] }
    }

    #[test]
    fn an_edge_holds_only_its_own_and_shared_sessions() {
        let surgery = node("surgery-12", Role::Edge, "QHM", &[]);
        assert!(may_hold(&surgery, &doc("surgery-12", "QHM", ServiceLine::Dermatology)));
        assert!(!may_hold(&surgery, &doc("surgery-40", "QHM", ServiceLine::Dermatology)));
        let mut shared = doc("surgery-40", "QHM", ServiceLine::Dermatology);
        shared.shares.push("surgery-12".into());
        assert!(may_hold(&surgery, &shared));
    }

    #[test]
    fn a_desk_holds_its_lines_in_its_icb() {
        let derm = node("desk-derm-1", Role::Desk, "QHM", &[ServiceLine::Dermatology]);
        assert!(may_hold(&derm, &doc("amb-07", "QHM", ServiceLine::Dermatology)));
        assert!(!may_hold(&derm, &doc("amb-07", "QHM", ServiceLine::Cardiology)));
        assert!(!may_hold(&derm, &doc("amb-07", "QOX", ServiceLine::Dermatology)));
    }

    #[test]
    fn a_hub_holds_its_icb_and_accepts_only_what_the_sender_may_hold() {
        let hub = node("hub-qhm", Role::Hub, "QHM", &[]);
        let edge = node("amb-07", Role::Edge, "QHM", &[]);
        assert!(may_accept(&hub, &edge, &doc("amb-07", "QHM", ServiceLine::Cardiology)));
        assert!(!may_accept(&hub, &edge, &doc("amb-08", "QHM", ServiceLine::Cardiology)), "forged origin");
        assert!(!may_accept(&hub, &edge, &doc("amb-07", "QOX", ServiceLine::Cardiology)), "other ICB");
    }
}
