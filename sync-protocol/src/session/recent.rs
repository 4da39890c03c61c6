//! The changes a document gained lately, kept whole so that sending them again costs no
//! re-encoding.
//!
//! Automerge keeps a document as columns of operations: `get_changes` and `save_after` rebuild
//! each change's bytes from them, and a synced session is asked for the same few changes
//! several times (the log write, the push to each peer). [`Recent`] holds a chain of changes
//! in the order they joined the document, from the heads it had when the chain began. For a
//! base that is the document's heads at some point of the chain, the changes after that point
//! are exactly the changes that are not ancestors of the base, which is what `get_changes`
//! answers. Any other base falls back to Automerge.
//!
//! The chain needs no invalidation: before each answer it is brought up to the document's
//! heads with the changes it lacks (whatever path added them), and a batch of applied
//! changes joins it only when the heads they give are the heads the document has.

use automerge::{AutoCommit, Change, ChangeHash, ReadDoc};

/// Changes kept at most; older ones leave the chain from its start. A sync asks for the last
/// one or two (a message and the receipt for it), and a hub keeps thousands of documents.
const MAX_CHANGES: usize = 8;
/// Bytes of changes kept at most.
const MAX_BYTES: usize = 8 << 10;

/// A chain of the changes a document gained, from the heads it had at the chain's start.
#[derive(Debug, Default, Clone)]
pub(super) struct Recent {
    /// The document's heads before the first change of the chain (sorted); `None` while no
    /// chain is kept.
    start: Option<Vec<ChangeHash>>,
    /// The changes, in the order they joined the document (every change after its deps).
    changes: Vec<Change>,
    /// The heads after the last change (sorted).
    end: Vec<ChangeHash>,
    /// Raw bytes held.
    bytes: usize,
}

/// `heads` with `change` added on top: its dependencies stop being heads, it becomes one.
fn advance(heads: &mut Vec<ChangeHash>, change: &Change) {
    heads.retain(|h| !change.deps().contains(h));
    heads.push(change.hash());
    heads.sort();
}

fn sorted(heads: &[ChangeHash]) -> Vec<ChangeHash> {
    let mut v = heads.to_vec();
    v.sort();
    v.dedup();
    v
}

impl Recent {
    /// Bytes of changes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets the chain.
    fn clear(&mut self) {
        *self = Recent::default();
    }

    /// Adds changes that joined the document (in order) after the chain's end.
    fn push(&mut self, changes: impl IntoIterator<Item = Change>) {
        for c in changes {
            advance(&mut self.end, &c);
            self.bytes += c.raw_bytes().len();
            self.changes.push(c);
        }
        self.trim();
    }

    /// Drops changes from the start until the chain is within its bounds.
    fn trim(&mut self) {
        let mut drop = 0;
        let mut bytes = self.bytes;
        while self.changes.len() - drop > MAX_CHANGES || (bytes > MAX_BYTES && drop < self.changes.len()) {
            bytes -= self.changes[drop].raw_bytes().len();
            drop += 1;
        }
        if drop == 0 {
            return;
        }
        if let Some(start) = self.start.as_mut() {
            for c in &self.changes[..drop] {
                advance(start, c);
            }
        }
        self.changes.drain(..drop);
        self.bytes = bytes;
    }

    /// Brings the chain up to the document's current heads (started at them if none is kept).
    fn catch_up(&mut self, doc: &mut AutoCommit) {
        let heads = sorted(&doc.get_heads());
        match &self.start {
            None => {
                self.start = Some(heads.clone());
                self.end = heads;
            }
            Some(_) if self.end == heads => {}
            Some(_) => {
                let missing = doc.get_changes(&self.end);
                self.push(missing);
                if self.end != heads {
                    // Not reached by the changes Automerge gave: start again from here.
                    self.clear();
                    self.start = Some(heads.clone());
                    self.end = heads;
                }
            }
        }
    }

    /// The changes of `doc` that are not ancestors of `base`, in causal order, as
    /// `AutoCommit::get_changes` gives them.
    pub(super) fn changes_after(&mut self, doc: &mut AutoCommit, base: &[ChangeHash]) -> Vec<Change> {
        self.catch_up(doc);
        let base = sorted(base);
        if let Some(start) = &self.start {
            let mut at = start.clone();
            for (i, c) in self.changes.iter().enumerate() {
                if at == base {
                    return self.changes[i..].to_vec();
                }
                advance(&mut at, c);
            }
            if at == base {
                return Vec::new();
            }
        }
        let out = doc.get_changes(&base);
        if out.len() <= MAX_CHANGES {
            // A chain from this base: the next question is most often about the same base
            // (the log write, then the push), or a later one.
            let heads = self.end.clone();
            self.clear();
            self.start = Some(base.clone());
            self.end = base;
            self.push(out.iter().cloned());
            if self.end != heads {
                self.clear();
            }
        }
        out
    }

    /// Applies checked changes to `doc`, keeping them in the chain when the heads they give are
    /// the document's (all of them new and applied, none waiting for a dependency).
    pub(super) fn apply(
        &mut self,
        doc: &mut AutoCommit,
        changes: Vec<Change>,
    ) -> Result<(), automerge::AutomergeError> {
        let before = sorted(&doc.get_heads());
        if self.start.is_none() {
            self.start = Some(before.clone());
            self.end = before.clone();
        }
        let kept = if self.end == before { changes.clone() } else { Vec::new() };
        let held = doc.stats().num_changes;
        doc.apply_changes(changes)?;
        if kept.is_empty() {
            return Ok(());
        }
        // Every change of the batch joined the document (none held already, none twice, none
        // waiting for a dependency) only if the document gained as many changes as the batch
        // holds, and then its heads are the ones the batch gives.
        let gained = doc.stats().num_changes.saturating_sub(held);
        let mut expected = before;
        for c in &kept {
            advance(&mut expected, c);
        }
        if gained == kept.len() as u64 && expected == sorted(&doc.get_heads()) {
            self.push(kept);
        } else {
            self.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ROOT};

    fn edit(doc: &mut AutoCommit, key: &str, value: i64) -> ChangeHash {
        doc.put(ROOT, key, value).expect("put");
        doc.commit().expect("a change")
    }

    fn hashes(changes: &[Change]) -> Vec<ChangeHash> {
        changes.iter().map(|c| c.hash()).collect()
    }

    /// Every base the document has had, and some it has not: the chain answers as Automerge.
    fn agrees_with_automerge(doc: &mut AutoCommit, recent: &mut Recent, bases: &[Vec<ChangeHash>]) {
        for base in bases {
            let ours = hashes(&recent.changes_after(doc, base));
            let theirs = hashes(&doc.get_changes(base));
            assert_eq!(ours, theirs, "base {base:?}");
        }
    }

    #[test]
    fn changes_after_any_base_match_automerge_through_local_edits_merges_and_applies() {
        let mut a = AutoCommit::new().with_actor(ActorId::from(b"aaaa".as_slice()));
        let mut b = AutoCommit::new().with_actor(ActorId::from(b"bbbb".as_slice()));
        let mut ra = Recent::default();
        let mut bases = vec![Vec::new()];
        for round in 0..50i64 {
            bases.push(a.get_heads());
            match round % 5 {
                // A local edit, then the chain is asked (the log write).
                0 | 1 => {
                    edit(&mut a, "x", round);
                    ra.changes_after(&mut a, &bases[bases.len() - 1]);
                }
                // Changes from another replica, applied as checked changes are.
                2 => {
                    edit(&mut b, "y", round);
                    let new = b.get_changes(&a.get_heads());
                    ra.apply(&mut a, new).expect("apply");
                }
                // A concurrent edit on both sides, merged behind the chain's back.
                3 => {
                    edit(&mut a, "z", round);
                    edit(&mut b, "z", -round);
                    a.merge(&mut b).expect("merge");
                }
                // A change applied twice (already held): the chain must not take it again.
                _ => {
                    let heads = a.get_heads();
                    ra.changes_after(&mut a, &heads);
                    let held = a.get_changes(&[]);
                    ra.apply(&mut a, held.into_iter().rev().take(1).collect()).expect("apply");
                }
            }
            b.merge(&mut a).expect("merge");
            agrees_with_automerge(&mut a, &mut ra, &bases);
            // A base the document has never had (two heads from different times).
            let odd: Vec<ChangeHash> = bases.iter().rev().take(3).flatten().copied().collect();
            agrees_with_automerge(&mut a, &mut ra, &[odd]);
        }
        assert!(ra.changes.len() <= MAX_CHANGES, "the chain stays bounded");
    }

    #[test]
    fn a_change_already_held_never_joins_the_chain_again() {
        let mut a = AutoCommit::new().with_actor(ActorId::from(b"aaaa".as_slice()));
        let mut b = a.fork().with_actor(ActorId::from(b"bbbb".as_slice()));
        let mut ra = Recent::default();
        edit(&mut b, "y", 1);
        let held = b.get_changes(&a.get_heads());
        ra.apply(&mut a, held.clone()).expect("apply");
        let base = a.get_heads();
        ra.changes_after(&mut a, &base);
        // The held change again, followed by one that depends on it.
        edit(&mut b, "y", 2);
        let mut batch = held;
        batch.extend(b.get_changes(&base));
        ra.apply(&mut a, batch).expect("apply");
        agrees_with_automerge(&mut a, &mut ra, &[base, Vec::new()]);
    }

    #[test]
    fn a_change_waiting_for_its_dependency_never_joins_the_chain() {
        let mut a = AutoCommit::new().with_actor(ActorId::from(b"aaaa".as_slice()));
        let mut b = a.fork().with_actor(ActorId::from(b"bbbb".as_slice()));
        let mut ra = Recent::default();
        let base = a.get_heads();
        edit(&mut b, "y", 1);
        let first = b.get_heads();
        edit(&mut b, "y", 2);
        // Only the second change of `b` arrives: Automerge holds it back.
        let second = b.get_changes(&first);
        ra.apply(&mut a, second).expect("apply");
        assert_eq!(a.get_heads(), base, "the change waits for its dependency");
        assert!(ra.changes.is_empty(), "nothing the document lacks is kept");
        agrees_with_automerge(&mut a, &mut ra, &[base.clone(), Vec::new(), first]);
    }

    #[test]
    fn a_recent_base_is_answered_from_the_chain_without_automerge() {
        let mut doc = AutoCommit::new();
        let mut recent = Recent::default();
        edit(&mut doc, "a", 1);
        let base = doc.get_heads();
        recent.changes_after(&mut doc, &base);
        let first = edit(&mut doc, "b", 2);
        let second = edit(&mut doc, "c", 3);
        assert_eq!(hashes(&recent.changes_after(&mut doc, &base)), vec![first, second]);
        // The chain holds both changes, from the base: the answer came from it.
        assert_eq!(hashes(&recent.changes), vec![first, second]);
        assert_eq!(recent.start.as_deref(), Some(base.as_slice()));
    }
}
