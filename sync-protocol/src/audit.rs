//! Audit heads: who tells whom where its audit chain ends, and what a node makes of a peer's
//! word ([`crate::wire::Frame::AuditHead`]).
//!
//! Every node keeps a hash chain of what was done on it (the audit chain). A chain whose
//! newest entries were removed with its sealed head (a restore from an older backup, or a key
//! holder cutting it) still verifies on its own; only someone who had seen it longer can tell.
//! So a hub and each member of its ICB tell each other, once a conversation, where their chains
//! end, each end with an **anchor**: a keyed hash chain beside the entries, whose key never
//! leaves the node, so that a peer can compare entries without reading them.
//!
//! [`judge`] is the one place that decides what a peer's frame shows. The node
//! (`node/src/store/audit.rs`, over its SQLite store) and the in-memory replica the simulator
//! runs ([`crate::mem::MemAudit`]) both call it, each with its own storage of what it keeps
//! ([`KeptHeads`]) and of its own anchors.

use crate::scope::PeerInfo;
use crate::vocab::Role;
use crate::wire::AuditHeads;

/// What a node keeps of a peer's audit chain, and of its own chain as that peer told it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeptHeads {
    /// The peer's chain.
    pub chain: u64,
    /// The furthest end of it the peer told (and vouched for).
    pub head: u64,
    /// The peer's anchor of that entry.
    pub anchor: [u8; 32],
    /// The end of the peer's chain last found cut back or rewritten (0: none).
    pub their_lost: u64,
    /// The end of our chain a hub had seen that ours was last found short of, or different at.
    pub lost: u64,
    /// The end of our chain the peer last said it had seen.
    pub told: u64,
}

/// What [`judge`] found in a peer's frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadsFound {
    /// This node's chain is shorter than the hub had seen, or differs where it had seen it
    /// end (a node records it as `audit.behind`).
    pub ours_cut: bool,
    /// The peer's chain is shorter than it had told before, or differs at the end it had
    /// told (recorded as `peer.audit_behind`).
    pub theirs_cut: bool,
    /// The peer keeps another chain than the one it had told of: that chain and its end
    /// (recorded as `peer.audit_chain_changed`).
    pub chain_changed: Option<(u64, u64)>,
}

impl HeadsFound {
    /// Whether anything was found.
    pub fn any(&self) -> bool {
        self.ours_cut || self.theirs_cut || self.chain_changed.is_some()
    }
}

/// Whether `me` and `peer` tell each other their audit heads: a hub and a member of its own
/// ICB (or two hubs of one ICB). Another edge or desk, or another ICB's hub, has no use for
/// how much a node has audited.
pub fn partners(me: &PeerInfo, peer: &PeerInfo) -> bool {
    (me.role == Role::Hub || peer.role == Role::Hub) && me.icb.is_some() && me.icb == peer.icb
}

/// Whether `me` takes `peer`'s word that its own chain was longer: only its own ICB's hub's
/// (a hub keeps the record; any other member, or another ICB's hub, could have a node write
/// an entry and raise a lasting alarm each time it connects).
pub fn believed(me: &PeerInfo, peer: &PeerInfo) -> bool {
    peer.role == Role::Hub && peer.icb.is_some() && peer.icb == me.icb
}

/// What a peer's [`AuditHeads`] shows, and what to keep of it.
///
/// `kept` is what was kept of this peer before (`None`: never told); `own_chain` and
/// `own_head` this node's chain and its newest entry; `own_anchor(n)` this node's anchor of
/// entry `n` as its chain holds it now (`None` past its end); `believed` whether the peer's
/// word on our chain is taken ([`believed`]).
/// - The peer's chain: the furthest end told is kept with that entry's anchor (never lowered,
///   so that putting an older copy back twice is seen twice); an end before it, the same end
///   with another anchor, or another anchor now for the entry it was kept at (`proof`), is a
///   loss on the peer (cut back, or cut and written again), found once for each end it had
///   reached. A cut is judged only from a frame that vouches for the end kept (`proof`): one
///   that does not is an older answer overtaken by another conversation of the same peer, or
///   a responder whose own record is stale; the end kept is told back, and judged at the next
///   conversation. Another chain (a node set up anew under the name) starts afresh.
/// - Ours: from a believed hub, an end of this very chain past where it ends now, or an anchor
///   other than ours there, means entries were lost here since: found once for each end a hub
///   saw.
///
/// `Ok(None)` for a frame whose numbers no chain reaches (past `i64::MAX`, which a store of
/// signed integers cannot keep): it is ignored.
pub fn judge<E>(
    kept: Option<KeptHeads>,
    heads: &AuditHeads,
    own_chain: u64,
    own_head: u64,
    believed: bool,
    mut own_anchor: impl FnMut(u64) -> Result<Option<[u8; 32]>, E>,
) -> Result<Option<(HeadsFound, KeptHeads)>, E> {
    let plausible = |v: u64| i64::try_from(v).is_ok();
    if !(plausible(heads.head) && plausible(heads.seen) && plausible(heads.proof)) {
        return Ok(None);
    }
    let mut found = HeadsFound::default();
    let mut row = KeptHeads {
        chain: heads.chain,
        head: heads.head,
        anchor: heads.anchor,
        their_lost: 0,
        lost: kept.map_or(0, |k| k.lost),
        told: kept.map_or(0, |k| k.told),
    };
    match kept {
        Some(k) if k.chain == heads.chain => {
            row.their_lost = k.their_lost;
            // Cut back: it ends before where it had reached. Rewritten: the entry it had
            // reached is another now (it ends there with another anchor, or it gives another
            // for that entry).
            let cut = heads.head < k.head && heads.proof == k.head;
            let rewritten = k.head > 0
                && ((heads.head == k.head && heads.anchor != k.anchor)
                    || (heads.proof == k.head && heads.proof_anchor != k.anchor));
            // Moved on only past an end the sender vouched for. A responder's `proof` is its
            // own `told`, which an older copy of its store put back holds stale: taking its
            // new end without proof would forget the anchor it must be checked against (and
            // tell it back as `seen`, so that it finds nothing either). Kept, that end is told
            // back in our answer, becomes its `told`, and is proven or found rewritten at the
            // next conversation.
            let proven = k.head == 0
                || (heads.head == k.head && heads.anchor == k.anchor)
                || (heads.proof == k.head && heads.proof_anchor == k.anchor);
            if cut || (!proven && !rewritten) {
                (row.head, row.anchor) = (k.head, k.anchor);
            }
            if (cut || rewritten) && k.their_lost != k.head {
                found.theirs_cut = true;
                row.their_lost = k.head;
            }
        }
        Some(k) if k.head > 0 => found.chain_changed = Some((k.chain, k.head)),
        _ => {}
    }
    if own_chain != 0 && heads.seen_chain == own_chain && heads.seen > 0 {
        row.told = heads.seen;
        let differs = heads.seen > own_head || own_anchor(heads.seen)? != Some(heads.seen_anchor);
        if believed && differs && heads.seen != row.lost {
            found.ours_cut = true;
            row.lost = heads.seen;
        }
    }
    Ok(Some((found, row)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn anchor(n: u64, copy: u8) -> [u8; 32] {
        let mut a = [0u8; 32];
        a[..8].copy_from_slice(&n.to_be_bytes());
        a[8] = copy;
        a
    }

    /// A frame from a peer whose chain `chain` ends at `head` (its anchors those of `copy`),
    /// vouching for `proof`.
    fn told(chain: u64, head: u64, copy: u8, proof: u64) -> AuditHeads {
        AuditHeads {
            chain,
            head,
            anchor: anchor(head, copy),
            proof,
            proof_anchor: if proof == 0 || proof > head { [0; 32] } else { anchor(proof, copy) },
            ..AuditHeads::default()
        }
    }

    fn run(kept: Option<KeptHeads>, heads: AuditHeads) -> (HeadsFound, KeptHeads) {
        judge::<Infallible>(kept, &heads, 9, 50, true, |n| Ok((n <= 50).then(|| anchor(n, 0))))
            .expect("infallible")
            .expect("plausible")
    }

    #[test]
    fn a_peer_that_ends_before_the_end_it_vouched_for_was_cut_back_once() {
        let (_, kept) = run(None, told(7, 100, 0, 0));
        assert_eq!((kept.head, kept.anchor), (100, anchor(100, 0)));
        let (found, kept) = run(Some(kept), told(7, 60, 0, 100));
        assert!(found.theirs_cut && !found.ours_cut, "{found:?}");
        assert_eq!((kept.head, kept.their_lost), (100, 100), "the end kept is never lowered");
        let (again, _) = run(Some(kept), told(7, 60, 0, 100));
        assert!(!again.theirs_cut, "one finding for each end reached: {again:?}");
    }

    #[test]
    fn an_older_copy_written_past_the_end_seen_shows_another_anchor_there() {
        let (_, kept) = run(None, told(7, 100, 0, 0));
        // Put back to entry 40 and written on to 130: entry 100 is another now.
        let (found, _) = run(Some(kept), told(7, 130, 1, 100));
        assert!(found.theirs_cut, "{found:?}");
    }

    #[test]
    fn an_answer_that_does_not_vouch_for_the_end_kept_is_judged_later_and_not_taken() {
        let (_, kept) = run(None, told(7, 100, 0, 0));
        // An older answer overtaken by another conversation: it vouches for nothing.
        let (found, after) = run(Some(kept), told(7, 60, 0, 0));
        assert!(!found.any(), "{found:?}");
        assert_eq!((after.head, after.anchor), (100, anchor(100, 0)));
        // A longer end without proof is not taken either: the kept anchor stays to check.
        let (found, after) = run(Some(kept), told(7, 120, 0, 0));
        assert!(!found.any(), "{found:?}");
        assert_eq!(after.head, 100);
        // With proof it moves on.
        let (found, after) = run(Some(kept), told(7, 120, 0, 100));
        assert!(!found.any(), "{found:?}");
        assert_eq!((after.head, after.anchor), (120, anchor(120, 0)));
    }

    #[test]
    fn another_chain_under_the_name_starts_afresh() {
        let (_, kept) = run(None, told(7, 100, 0, 0));
        let (found, after) = run(Some(kept), told(8, 3, 0, 0));
        assert_eq!(found.chain_changed, Some((7, 100)));
        assert!(!found.theirs_cut);
        assert_eq!((after.chain, after.head), (8, 3));
    }

    #[test]
    fn our_chain_seen_longer_is_found_only_on_a_believed_hubs_word_and_once() {
        let seen = |seen: u64, copy: u8| AuditHeads {
            chain: 7,
            head: 1,
            anchor: anchor(1, 0),
            seen_chain: 9,
            seen,
            seen_anchor: anchor(seen, copy),
            ..AuditHeads::default()
        };
        // We end at 50: a hub that saw 80 saw entries lost since.
        let (found, kept) = run(None, seen(80, 0));
        assert!(found.ours_cut);
        assert_eq!((kept.lost, kept.told), (80, 80));
        let (again, _) = run(Some(kept), seen(80, 0));
        assert!(!again.ours_cut, "once for each end a hub saw");
        // The same end with the same anchor: nothing lost.
        let (found, _) = run(None, seen(50, 0));
        assert!(!found.ours_cut);
        // An end within ours with another anchor: ours was rewritten.
        let (found, _) = run(None, seen(30, 1));
        assert!(found.ours_cut);
        // Another chain's end says nothing of ours.
        let (found, _) = run(None, AuditHeads { seen_chain: 4, ..seen(80, 0) });
        assert!(!found.ours_cut);
        // Not believed: told, not found.
        let (found, kept) = judge::<Infallible>(None, &seen(80, 0), 9, 50, false, |n| Ok(Some(anchor(n, 0))))
            .expect("infallible")
            .expect("plausible");
        assert!(!found.ours_cut);
        assert_eq!(kept.told, 80);
    }

    #[test]
    fn numbers_no_chain_reaches_are_ignored() {
        let heads = AuditHeads { head: u64::MAX, ..told(7, 1, 0, 0) };
        assert_eq!(judge::<Infallible>(None, &heads, 9, 50, true, |_| Ok(None)), Ok(None));
    }

    #[test]
    fn partners_are_a_hub_and_its_own_icbs_members_and_only_its_hub_is_believed() {
        let p = |role: Role, icb: Option<&str>| PeerInfo {
            name: "x".into(),
            role,
            org: None,
            icb: icb.map(String::from),
            lines: Vec::new(),
        };
        let hub = p(Role::Hub, Some("QHM"));
        let edge = p(Role::Edge, Some("QHM"));
        assert!(partners(&edge, &hub) && partners(&hub, &edge));
        assert!(!partners(&edge, &p(Role::Desk, Some("QHM"))));
        assert!(!partners(&edge, &p(Role::Hub, Some("QOX"))));
        assert!(!partners(&p(Role::Edge, None), &p(Role::Hub, None)));
        assert!(believed(&edge, &hub));
        assert!(!believed(&hub, &edge));
        assert!(!believed(&edge, &p(Role::Hub, Some("QOX"))));
    }
}
