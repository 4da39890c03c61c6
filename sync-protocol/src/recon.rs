//! Set reconciliation: which documents differ between two peers, without touching the rest.
//!
//! Every document a peer may see is an *item*: its id and a 16-byte digest of its heads. Two
//! replicas of a document are equal exactly when their heads are, so two sets of items differ
//! exactly in the documents that need syncing.
//!
//! A set's *fingerprint* is the sum, modulo 2^256, of the BLAKE3 hashes of its items. Sums can
//! be computed for any range of ids and updated by adding and subtracting items, which the
//! delta check of the engine uses. Range-based reconciliation (after Aljoscha Meyer's
//! "Range-Based Set Reconciliation") finds the differing items of two sets in
//! O(log n) rounds and O(d log n) bytes for d differences: each side compares fingerprints of
//! ranges of ids, splits the ranges that differ, and lists items once a range is small.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use crate::wire::{DocId, Hash, Range, RangeMode};

/// A document as reconciliation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Item {
    /// Document id.
    pub id: DocId,
    /// Digest of its heads.
    pub digest: [u8; 16],
}

/// The digest of a document's heads (sorted, so their order does not matter).
pub fn digest(heads: &[Hash]) -> [u8; 16] {
    let mut sorted: Vec<&Hash> = heads.iter().collect();
    sorted.sort();
    let mut h = blake3::Hasher::new();
    h.update(b"outpost heads v1");
    for head in sorted {
        h.update(head.as_bytes());
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// A fingerprint: a 256-bit sum of item hashes, with wrapping arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint([u64; 4]);

impl Fingerprint {
    /// The hash of one item as a fingerprint.
    pub fn of(item: &Item) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"outpost item v1");
        h.update(&item.id);
        h.update(&item.digest);
        Fingerprint::from_bytes(h.finalize().as_bytes())
    }

    /// The fingerprint of a set of items.
    pub fn of_all<'a>(items: impl IntoIterator<Item = &'a Item>) -> Self {
        items.into_iter().fold(Fingerprint::default(), |acc, i| acc.add(&Fingerprint::of(i)))
    }

    /// Sum modulo 2^256.
    pub fn add(&self, other: &Fingerprint) -> Fingerprint {
        let mut out = [0u64; 4];
        let mut carry = false;
        for (i, o) in out.iter_mut().enumerate() {
            let (s1, c1) = self.0[i].overflowing_add(other.0[i]);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *o = s2;
            carry = c1 || c2;
        }
        Fingerprint(out)
    }

    /// Difference modulo 2^256.
    pub fn sub(&self, other: &Fingerprint) -> Fingerprint {
        let mut out = [0u64; 4];
        let mut borrow = false;
        for (i, o) in out.iter_mut().enumerate() {
            let (d1, b1) = self.0[i].overflowing_sub(other.0[i]);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            *o = d2;
            borrow = b1 || b2;
        }
        Fingerprint(out)
    }

    /// Little-endian bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in self.0.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// From little-endian bytes.
    pub fn from_bytes(b: &[u8; 32]) -> Self {
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *limb = u64::from_le_bytes(w);
        }
        Fingerprint(limbs)
    }
}

/// A document found to differ: the peer's digest and ours (`None` where a side lacks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Difference {
    /// The document.
    pub id: DocId,
    /// Our digest, if we hold it.
    pub ours: Option<[u8; 16]>,
    /// Their digest, if they hold it.
    pub theirs: Option<[u8; 16]>,
}

/// Why a round could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconError {
    /// Range bounds that go backwards.
    #[error("range bounds are not increasing")]
    Unordered,
}

/// Range-based reconciliation over a sorted slice of items.
#[derive(Debug, Clone, Copy)]
pub struct RangeRecon {
    /// Into how many ranges a differing range is split.
    pub branching: usize,
    /// Ranges with at most this many items are sent as item lists.
    pub list_threshold: usize,
}

impl Default for RangeRecon {
    fn default() -> Self {
        RangeRecon { branching: 16, list_threshold: 16 }
    }
}

const NO_DIGEST: [u8; 16] = [0; 16];

fn lower_index(items: &[Item], bound: &DocId) -> usize {
    items.partition_point(|i| i.id < *bound)
}

fn slice<'a>(items: &'a [Item], lower: &Option<DocId>, upper: &Option<DocId>) -> &'a [Item] {
    let start = lower.as_ref().map_or(0, |l| lower_index(items, l));
    let end = upper.as_ref().map_or(items.len(), |u| lower_index(items, u));
    &items[start..end.max(start)]
}

impl RangeRecon {
    /// The opening round: one fingerprint over the whole id space.
    pub fn initiate(&self, items: &[Item]) -> Vec<Range> {
        vec![Range {
            upper: None,
            mode: RangeMode::Fingerprint {
                count: items.len() as u64,
                fingerprint: Fingerprint::of_all(items).to_bytes(),
            },
        }]
    }

    /// Answers a round. `items` must be sorted by id and free of duplicates. Returns the next
    /// round to send (empty when this side has nothing more to say) and the differences found.
    pub fn respond(&self, items: &[Item], incoming: &[Range]) -> Result<(Vec<Range>, Vec<Difference>), ReconError> {
        let mut out: Vec<Range> = Vec::new();
        let mut diffs = Vec::new();
        let mut lower: Option<DocId> = None;
        for range in incoming {
            if let (Some(l), Some(u)) = (&lower, &range.upper)
                && u.cmp(l) != Ordering::Greater
            {
                return Err(ReconError::Unordered);
            }
            let mine = slice(items, &lower, &range.upper);
            match &range.mode {
                RangeMode::Skip => push(&mut out, range.upper, RangeMode::Skip),
                RangeMode::Fingerprint { count, fingerprint } => {
                    if mine.len() as u64 == *count && Fingerprint::of_all(mine).to_bytes() == *fingerprint {
                        push(&mut out, range.upper, RangeMode::Skip);
                    } else if mine.len() <= self.list_threshold {
                        let listed = mine.iter().map(|i| (i.id, i.digest)).collect();
                        push(&mut out, range.upper, RangeMode::Items { reply: false, items: listed });
                    } else {
                        let per = mine.len().div_ceil(self.branching.max(2));
                        let buckets: Vec<&[Item]> = mine.chunks(per).collect();
                        for (k, bucket) in buckets.iter().enumerate() {
                            let upper = match buckets.get(k + 1) {
                                Some(next) => Some(next[0].id),
                                None => range.upper,
                            };
                            let mode = RangeMode::Fingerprint {
                                count: bucket.len() as u64,
                                fingerprint: Fingerprint::of_all(*bucket).to_bytes(),
                            };
                            push(&mut out, upper, mode);
                        }
                    }
                }
                RangeMode::Items { reply, items: theirs } => {
                    let found = compare(mine, theirs);
                    if *reply {
                        // Their differences, with their digests (zeros: they lack it).
                        let by_id: HashMap<&DocId, &[u8; 16]> = mine.iter().map(|i| (&i.id, &i.digest)).collect();
                        for (id, d) in theirs {
                            let ours = by_id.get(id).map(|d| **d);
                            let theirs = (*d != NO_DIGEST).then_some(*d);
                            if ours != theirs {
                                diffs.push(Difference { id: *id, ours, theirs });
                            }
                        }
                        push(&mut out, range.upper, RangeMode::Skip);
                    } else {
                        let reply_items = found.iter().map(|d| (d.id, d.ours.unwrap_or(NO_DIGEST))).collect::<Vec<_>>();
                        diffs.extend(found);
                        let mode = if reply_items.is_empty() {
                            RangeMode::Skip
                        } else {
                            RangeMode::Items { reply: true, items: reply_items }
                        };
                        push(&mut out, range.upper, mode);
                    }
                }
            }
            lower = range.upper;
            if lower.is_none() {
                break;
            }
        }
        if out.iter().all(|r| r.mode == RangeMode::Skip) {
            out.clear();
        }
        Ok((out, diffs))
    }
}

/// Appends a range, merging it into a preceding Skip when it is a Skip too.
fn push(out: &mut Vec<Range>, upper: Option<DocId>, mode: RangeMode) {
    if mode == RangeMode::Skip
        && let Some(last) = out.last_mut()
        && last.mode == RangeMode::Skip
    {
        last.upper = upper;
        return;
    }
    out.push(Range { upper, mode });
}

/// Differences between our items and their listed items of the same range (in time linear in
/// both lists: a peer's list may be long).
fn compare(mine: &[Item], theirs: &[(DocId, [u8; 16])]) -> Vec<Difference> {
    let by_id: HashMap<&DocId, &[u8; 16]> = mine.iter().map(|i| (&i.id, &i.digest)).collect();
    let listed: HashSet<&DocId> = theirs.iter().map(|(id, _)| id).collect();
    let mut out = Vec::new();
    for (id, d) in theirs {
        match by_id.get(id) {
            Some(ours) if *ours == d => {}
            Some(ours) => out.push(Difference { id: *id, ours: Some(**ours), theirs: Some(*d) }),
            None => out.push(Difference { id: *id, ours: None, theirs: Some(*d) }),
        }
    }
    for i in mine {
        if !listed.contains(&i.id) {
            out.push(Difference { id: i.id, ours: Some(i.digest), theirs: None });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn item(n: u32, version: u8) -> Item {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        Item { id, digest: digest(&[Hash([version; 32])]) }
    }

    /// Runs rounds between two sets until both are done; returns the ids each side found and
    /// the number of rounds (a round is one message in one direction).
    fn reconcile(a: &[Item], b: &[Item]) -> (BTreeSet<DocId>, BTreeSet<DocId>, usize, usize) {
        let r = RangeRecon::default();
        let mut msg = r.initiate(a);
        let mut bytes = crate::wire::Frame::Ranges(msg.clone()).encoded_len();
        let (mut found_a, mut found_b) = (BTreeSet::new(), BTreeSet::new());
        let mut rounds = 1;
        let mut turn_b = true;
        while !msg.is_empty() {
            assert!(rounds < 64, "reconciliation did not terminate");
            let (reply, diffs) = if turn_b { r.respond(b, &msg).unwrap() } else { r.respond(a, &msg).unwrap() };
            let found = if turn_b { &mut found_b } else { &mut found_a };
            found.extend(diffs.iter().map(|d| d.id));
            msg = reply;
            if !msg.is_empty() {
                rounds += 1;
                bytes += crate::wire::Frame::Ranges(msg.clone()).encoded_len();
            }
            turn_b = !turn_b;
        }
        (found_a, found_b, rounds, bytes)
    }

    fn truth(a: &[Item], b: &[Item]) -> BTreeSet<DocId> {
        let ma: BTreeMap<_, _> = a.iter().map(|i| (i.id, i.digest)).collect();
        let mb: BTreeMap<_, _> = b.iter().map(|i| (i.id, i.digest)).collect();
        ma.keys().chain(mb.keys()).filter(|k| ma.get(*k) != mb.get(*k)).copied().collect()
    }

    #[test]
    fn equal_sets_settle_in_one_message() {
        let a: Vec<Item> = (0..10_000).map(|n| item(n, 1)).collect();
        let (fa, fb, rounds, bytes) = reconcile(&a, &a);
        assert!(fa.is_empty() && fb.is_empty());
        assert_eq!(rounds, 1);
        assert!(bytes < 64, "{bytes} bytes");
    }

    #[test]
    fn ten_changes_in_ten_thousand_are_found_in_logarithmic_rounds() {
        let a: Vec<Item> = (0..10_000).map(|n| item(n, 1)).collect();
        let mut b = a.clone();
        for k in 0..10 {
            b[k * 997].digest = digest(&[Hash([2; 32])]);
        }
        let (fa, fb, rounds, bytes) = reconcile(&a, &b);
        let expected = truth(&a, &b);
        assert_eq!(fa.union(&fb).copied().collect::<BTreeSet<_>>(), expected);
        assert!(rounds <= 6, "{rounds} rounds");
        assert!(bytes < 20_000, "{bytes} bytes for 10 differences");
    }

    #[test]
    fn fingerprints_add_and_subtract() {
        let items: Vec<Item> = (0..50).map(|n| item(n, 3)).collect();
        let all = Fingerprint::of_all(&items);
        let part = Fingerprint::of_all(&items[..20]);
        let rest = Fingerprint::of_all(&items[20..]);
        assert_eq!(part.add(&rest), all);
        assert_eq!(all.sub(&rest), part);
        assert_eq!(Fingerprint::from_bytes(&all.to_bytes()), all);
    }

    proptest! {
        #[test]
        fn both_sides_together_find_exactly_the_differences(
            base in prop::collection::btree_set(0u32..5000, 0..400),
            only_a in prop::collection::btree_set(5000u32..6000, 0..20),
            only_b in prop::collection::btree_set(6000u32..7000, 0..20),
            changed in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        ) {
            let base: Vec<u32> = base.into_iter().collect();
            let mut a: Vec<Item> = base.iter().map(|n| item(*n, 1)).chain(only_a.iter().map(|n| item(*n, 1))).collect();
            let mut b: Vec<Item> = base.iter().map(|n| item(*n, 1)).chain(only_b.iter().map(|n| item(*n, 1))).collect();
            if !base.is_empty() {
                for ix in changed {
                    let n = base[ix.index(base.len())];
                    if let Some(i) = b.iter_mut().find(|i| i.id == item(n, 1).id) {
                        i.digest = digest(&[Hash([9; 32])]);
                    }
                }
            }
            a.sort();
            b.sort();
            let (fa, fb, _, _) = reconcile(&a, &b);
            prop_assert_eq!(fa.union(&fb).copied().collect::<BTreeSet<_>>(), truth(&a, &b));
        }
    }
}
