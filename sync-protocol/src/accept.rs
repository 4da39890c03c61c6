//! Accepting a received session, written once: after a peer's changes passed the write rules
//! ([`crate::rules::admit`]: bounds, signatures, who may write what) and were applied to a
//! candidate copy, [`take`] adds this node's receipts and decides, through [`vet`], whether
//! the result may be kept, and what keeping it entails (the receipts' signatures, the photos
//! this node may now drop). The node's store and `MemReplica` (the simulator's) both call it,
//! then store what it accepts their own way.

use automerge::ChangeHash;

use crate::TimeMs;
use crate::authorship::{self, AuthorKey, Signature};
use crate::scope::{PeerInfo, may_accept};
use crate::session::{SessionDoc, SessionView, Touched, ViewBasis, receipt_level};
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
    match candidate.view() {
        Err(e) => Verdict::Refused(Refusal::Malformed(e.to_string())),
        Ok(view) => match refusal(me, from, id, &view) {
            Some(why) => Verdict::Refused(why),
            None => Verdict::Accepted(Box::new(view)),
        },
    }
}

/// Why `me` may not keep a session that reads as `view`, received from `from` as `id`.
fn refusal(me: &PeerInfo, from: &PeerInfo, id: &DocId, view: &SessionView) -> Option<Refusal> {
    if view.id.to_bytes() != *id {
        return Some(Refusal::WrongId);
    }
    if !may_accept(me, from, &view.meta()) {
        return Some(Refusal::OutOfScope { me: me.name.clone(), from: from.name.clone() });
    }
    None
}

/// A received version of a session that may be kept, and what keeping it entails.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    /// The session as it now reads, this node's receipts included.
    pub view: SessionView,
    /// This node's receipts on what it now holds, signed: stored with the document.
    pub own_sigs: Vec<(ChangeHash, Signature)>,
    /// Photos this node wrote that a hub now holds whole: an edge keeps no copy of them (a
    /// thumbnail stays).
    pub offload: Vec<String>,
    /// The same view kept with the heads it was read at, and the write rules' facts found in
    /// that reading: the session's next changes start from them instead of reading the whole
    /// document again ([`SessionDoc::read_basis_since`], [`ViewBasis::facts`]).
    pub basis: ViewBasis,
}

/// What becomes of a received version of a session, receipts and offloads included.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    /// It depends on changes this node lacks: nothing is kept yet.
    MissingDeps,
    /// Not kept, and why.
    Refused(Refusal),
    /// Kept.
    Kept(Box<Kept>),
}

/// What `me` does with `candidate`, received from `from` as session `id` (its changes passed
/// the write rules): a hub or desk first records its receipts on what it now holds (messages
/// it did not write; photo records `holds_photo` says this node holds the bytes for), signed by `author`, so the
/// document is read into a view once; then [`vet`] decides; the photos to drop follow from
/// the view. Nothing of a refused candidate may be kept, its receipts included.
pub fn take(
    me: &PeerInfo,
    from: &PeerInfo,
    id: &DocId,
    candidate: &mut SessionDoc,
    author: &AuthorKey,
    now: TimeMs,
    holds_photo: impl Fn(crate::session::PhotoRecord<'_>) -> bool,
) -> Taken {
    take_since(me, from, id, candidate, author, now, holds_photo, None)
}

/// [`take`], given the view kept of the session as it was before the received changes and
/// what they write (`prior`): only the parts of the session they (and this node's receipts)
/// write are read again ([`SessionDoc::read_basis_since`]).
#[allow(clippy::too_many_arguments)]
pub fn take_since(
    me: &PeerInfo,
    from: &PeerInfo,
    id: &DocId,
    candidate: &mut SessionDoc,
    author: &AuthorKey,
    now: TimeMs,
    holds_photo: impl Fn(crate::session::PhotoRecord<'_>) -> bool,
    mut prior: Option<(ViewBasis, Touched)>,
) -> Taken {
    if !candidate.automerge().get_missing_deps(&[]).is_empty() {
        return Taken::MissingDeps;
    }
    let mut own_sigs = Vec::new();
    if let Some(level) = receipt_level(me.role) {
        let received = candidate.heads();
        if let Err(e) = candidate.acknowledge(level, &me.name, now, holds_photo) {
            return Taken::Refused(Refusal::Malformed(e.to_string()));
        }
        own_sigs = authorship::sign_new(author, candidate.automerge(), &received);
        // This node's receipts are written too.
        if let Some((_, touched)) = prior.as_mut()
            && !own_sigs.is_empty()
        {
            touched.extend(Touched::of_changes(&candidate.changes_after(&received)));
        }
    }
    let basis = match prior {
        Some((basis, touched)) => candidate.read_basis_since(basis, &touched),
        None => candidate.read_basis(),
    };
    let basis = match basis {
        Ok(b) => b,
        Err(e) => return Taken::Refused(Refusal::Malformed(e.to_string())),
    };
    if let Some(why) = refusal(me, from, id, basis.view()) {
        return Taken::Refused(why);
    }
    let view = basis.view().clone();
    let offload = view.offloadable_media(&me.name);
    Taken::Kept(Box::new(Kept { view, own_sigs, offload, basis }))
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
    fn a_kept_session_carries_this_nodes_signed_receipts_and_the_photos_it_may_drop() {
        use crate::session::{NewConsent, NewMedia, NewMessage};
        use crate::vocab::{ConsentKind, ConsentScope, PhotoView, ReceiptLevel, Side};
        let hub = node("hub-qhm", Role::Hub, &[]);
        let surgery = node("surgery-12", Role::Edge, &[]);
        let derm = node("desk-derm-1", Role::Desk, &[ServiceLine::Dermatology]);
        let (id, mut doc) = session("surgery-12", ServiceLine::Dermatology);
        let consent = NewConsent {
            id: "c1".into(),
            kind: ConsentKind::Verbal,
            scope: ConsentScope::RecordOnly,
            by: "surgery-12".into(),
        };
        doc.add_consent(&consent, 2).unwrap();
        let text = "Lesion 14 mm";
        let msg = NewMessage {
            clinician: None,
            id: "m1".into(),
            author: "surgery-12".into(),
            side: Side::Requester,
            text: text.into(),
            reply_to: None,
        };
        doc.add_message(&msg, 3).unwrap();
        let hash = "ab".repeat(32);
        let photo = NewMedia {
            hash: hash.clone(),
            mime: "image/jpeg".into(),
            size: 10,
            dimensions: None,
            view: PhotoView::CloseUp,
            body_site: "left forearm".into(),
            consent_id: "c1".into(),
            clinician: None,
            added_by: "surgery-12".into(),
        };
        doc.add_media(&photo, 4).unwrap();

        // The hub holds the photo whole: it records its receipt on it (none on the message),
        // signed under its own key.
        let hub_key = AuthorKey::from_seed(&[7; 32], [7; 8]);
        let mut at_hub = doc.fork_as(hub_key.actor().clone());
        let Taken::Kept(kept) = take(&hub, &surgery, &id, &mut at_hub, &hub_key, 10, |p| p.hash == hash) else {
            panic!("the hub keeps its own ICB's session")
        };
        assert_eq!(kept.own_sigs.len(), 1, "one change of receipts, signed");
        let member = authorship::Member { info: hub.clone(), key: hub_key.public() };
        assert!(kept.own_sigs.iter().all(|(h, sig)| authorship::verify(&member, h, sig)));
        assert!(kept.view.media[0].receipts.iter().any(|r| r.level == ReceiptLevel::Hub && r.node == "hub-qhm"));
        assert!(kept.view.messages[0].receipts.is_empty(), "a hub writes no receipt on messages");
        assert!(kept.offload.is_empty(), "the hub drops nothing");

        // The surgery gets the hub's receipt back: it may drop its copy of the photo.
        let surgery_key = AuthorKey::from_seed(&[8; 32], [8; 8]);
        let mut at_surgery = at_hub.fork_as(surgery_key.actor().clone());
        let Taken::Kept(kept) = take(&surgery, &hub, &id, &mut at_surgery, &surgery_key, 11, |_| true) else {
            panic!("the surgery keeps its own session")
        };
        assert!(kept.own_sigs.is_empty(), "an edge writes no receipts on what it receives");
        assert_eq!(kept.offload, vec![hash.clone()]);

        // A desk of the line records that it holds the message; the photo only once whole.
        let desk_key = AuthorKey::from_seed(&[9; 32], [9; 8]);
        let mut at_desk = at_hub.fork_as(desk_key.actor().clone());
        let Taken::Kept(kept) = take(&derm, &hub, &id, &mut at_desk, &desk_key, 12, |_| false) else {
            panic!("the dermatology desk keeps a dermatology session")
        };
        assert_eq!(kept.own_sigs.len(), 1);
        assert!(
            kept.view.messages[0].receipts.iter().any(|r| r.level == ReceiptLevel::Desk && r.node == "desk-derm-1")
        );
        assert!(!kept.view.media[0].receipts.iter().any(|r| r.node == "desk-derm-1"), "not whole at the desk yet");

        // A desk of another line may not hold it: refused, whatever receipts it would have added.
        let cardio = node("desk-cardio-1", Role::Desk, &[ServiceLine::Cardiology]);
        let mut elsewhere = at_hub.fork_as(desk_key.actor().clone());
        let taken = take(&cardio, &hub, &id, &mut elsewhere, &desk_key, 13, |_| true);
        assert!(matches!(taken, Taken::Refused(Refusal::OutOfScope { .. })), "{taken:?}");
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
