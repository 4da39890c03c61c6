//! Who wrote a change.
//!
//! Every node holds an Ed25519 **author key**. Its public half is certified by the fleet CA
//! (the node's certificate names it), so a fleet member is a [`Member`]: the identity the CA
//! signed and the key it signs with. Two bindings make authorship checkable anywhere, even for a
//! change relayed by a hub, carried by another node or restored from a backup:
//!
//! - **Actor ids are bound to keys.** A node's Automerge actor id is 16 bytes: the first 8 are
//!   [`actor_prefix`] of its public key, the last 8 pick one writer instance of that node (a
//!   store). A change's actor therefore names the member that must have signed it.
//! - **Changes are signed.** A node signs the hash of every change it writes (domain-separated,
//!   [`sign`]) and keeps the signature beside the change; signatures travel with the changes
//!   in [`crate::wire::Changes`] frames and are checked ([`verify`]) before anything is stored.
//!
//! This module also bounds a change before Automerge parses it: [`split_changes`] cuts the
//! bytes of a `Changes` frame into change chunks and [`count_ops`] counts a chunk's operations
//! from its run-length-encoded action column, in time proportional to the runs, so that a
//! small change holding millions of operations is refused without being expanded.

use std::collections::{HashMap, HashSet};

use automerge::{ActorId, AutoCommit, ChangeHash};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use ed25519_zebra::{VerificationKey, VerificationKeyBytes};

use crate::scope::PeerInfo;

/// An Ed25519 public key.
pub type PublicKey = [u8; 32];
/// An Ed25519 signature over a change hash.
pub type Signature = [u8; 64];
/// The part of an actor id that names its author's key.
pub type ActorPrefix = [u8; 8];

const ACTOR_CONTEXT: &str = "outpost 2026 actor id prefix v1";
const SIGN_DOMAIN: &[u8] = b"outpost/change-signature/v1\0";

/// The actor-id prefix of a public key.
pub fn actor_prefix(key: &PublicKey) -> ActorPrefix {
    let full = blake3::derive_key(ACTOR_CONTEXT, key);
    let mut out = [0u8; 8];
    out.copy_from_slice(&full[..8]);
    out
}

/// The prefix of an actor id, if it has the shape of an outpost actor (16 bytes).
pub fn prefix_of(actor: &ActorId) -> Option<ActorPrefix> {
    let bytes = actor.to_bytes();
    if bytes.len() != 16 {
        return None;
    }
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    Some(out)
}

/// A node's signing key and the actor id it writes under.
pub struct AuthorKey {
    signing: SigningKey,
    actor: ActorId,
}

impl std::fmt::Debug for AuthorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorKey").field("actor", &self.actor.to_hex_string()).finish_non_exhaustive()
    }
}

impl Clone for AuthorKey {
    fn clone(&self) -> Self {
        AuthorKey { signing: SigningKey::from_bytes(&self.signing.to_bytes()), actor: self.actor.clone() }
    }
}

impl AuthorKey {
    /// The key from its 32-byte secret seed; `instance` picks this writer's actor id among the
    /// node's (a fresh one each time a store is opened, so that a store restored from a copy
    /// never reuses a sequence number of the changes it lost).
    pub fn from_seed(seed: &[u8; 32], instance: [u8; 8]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let mut actor = actor_prefix(&signing.verifying_key().to_bytes()).to_vec();
        actor.extend_from_slice(&instance);
        AuthorKey { signing, actor: ActorId::from(actor) }
    }

    /// The same key writing under another actor instance (a restarted or restored replica).
    pub fn with_instance(&self, instance: [u8; 8]) -> Self {
        AuthorKey::from_seed(&self.signing.to_bytes(), instance)
    }

    /// The public key, as the fleet CA certifies it.
    pub fn public(&self) -> PublicKey {
        self.signing.verifying_key().to_bytes()
    }

    /// The actor id this key writes under.
    pub fn actor(&self) -> &ActorId {
        &self.actor
    }

    /// Signs a change hash.
    pub fn sign(&self, hash: &ChangeHash) -> Signature {
        sign(&self.signing, hash)
    }
}

fn message(hash: &ChangeHash) -> Vec<u8> {
    let mut m = SIGN_DOMAIN.to_vec();
    m.extend_from_slice(&hash.0);
    m
}

fn sign(key: &SigningKey, hash: &ChangeHash) -> Signature {
    key.sign(&message(hash)).to_bytes()
}

/// A fleet member as the fleet CA certified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Who it is (name, role, ICB, lines).
    pub info: PeerInfo,
    /// The key it signs its changes with.
    pub key: PublicKey,
}

impl Member {
    /// The actor-id prefix of this member's changes.
    pub fn prefix(&self) -> ActorPrefix {
        actor_prefix(&self.key)
    }
}

/// Whether `sig` is `member`'s signature of `hash`.
pub fn verify(member: &Member, hash: &ChangeHash, sig: &Signature) -> bool {
    verifying_key(&member.key).is_some_and(|k| verify_with(&k, hash, sig))
}

/// A member's key ready to check signatures with; `None` for bytes that are not a point, or a
/// point of small order (anyone could sign for it).
fn verifying_key(key: &PublicKey) -> Option<VerificationKey> {
    let weak = VerifyingKey::from_bytes(key).map_or(true, |k| k.is_weak());
    if weak { None } else { VerificationKey::try_from(*key).ok() }
}

/// Signatures are checked by the rules of ZIP 215 (cofactored, as RFC 8032 allows): one at a
/// time and in a batch they accept exactly the same signatures, so a change a hub accepted in
/// a batch is accepted by every desk of this version it relays it to, whichever way the desk
/// checks it. (Builds before 5 December 2026 used the stricter `verify_strict`: see the
/// upgrade order in `docs/protocol.md`.)
fn verify_with(key: &VerificationKey, hash: &ChangeHash, sig: &Signature) -> bool {
    key.verify(&ed25519_zebra::Signature::from_bytes(sig), &message(hash)).is_ok()
}

/// One signature to check: the actor of the change (it names the key), the change's hash, the
/// signature.
pub type SignedHash = (ActorId, ChangeHash, Signature);

/// Signatures found valid together by [`Roster::verify_batch`].
#[derive(Debug, Clone, Default)]
pub struct Verified(HashSet<(ActorPrefix, ChangeHash, Signature)>);

impl Verified {
    /// Whether the signature of `hash` under the key `actor` names was found valid.
    pub fn contains(&self, actor: &ActorId, hash: &ChangeHash, sig: &Signature) -> bool {
        prefix_of(actor).is_some_and(|p| self.0.contains(&(p, *hash, *sig)))
    }

    /// How many signatures were found valid.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The coefficients of a batch check, drawn from a hash of everything in the batch (as in
/// Fiat-Shamir): fixed once the signatures are, so no sender can choose signatures to fit them,
/// and no clock or operating system randomness is needed.
struct BatchCoefficients(blake3::OutputReader);

impl rand_core::RngCore for BatchCoefficients {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for BatchCoefficients {}

const BATCH_CONTEXT: &str = "outpost 2026 signature batch coefficients v1";

/// The fleet members a node knows, by the actor prefix of their key, each with its key
/// decoded once (decoding a point is a good part of checking a signature).
#[derive(Debug, Clone, Default)]
pub struct Roster {
    by_prefix: HashMap<ActorPrefix, (Member, Option<VerificationKey>)>,
}

impl Roster {
    /// An empty roster.
    pub fn new() -> Self {
        Roster::default()
    }

    /// Adds (or replaces) a member.
    pub fn insert(&mut self, member: Member) {
        let key = verifying_key(&member.key);
        self.by_prefix.insert(member.prefix(), (member, key));
    }

    /// The member whose key an actor id names.
    pub fn author_of(&self, actor: &ActorId) -> Option<&Member> {
        self.by_prefix.get(&prefix_of(actor)?).map(|(m, _)| m)
    }

    /// The member with this prefix.
    pub fn get(&self, prefix: &ActorPrefix) -> Option<&Member> {
        self.by_prefix.get(prefix).map(|(m, _)| m)
    }

    /// Whether `sig` is the signature of `hash` by the member whose key the actor id names
    /// (`None` if no member known here has that key).
    pub fn verify(&self, actor: &ActorId, hash: &ChangeHash, sig: &Signature) -> Option<bool> {
        let (_, key) = self.by_prefix.get(&prefix_of(actor)?)?;
        Some(key.as_ref().is_some_and(|k| verify_with(k, hash, sig)))
    }

    /// Checks many signatures at once: those found valid, exactly the ones [`Roster::verify`]
    /// accepts. A batch costs a fifth of checking each in turn when its signatures come from
    /// few keys (a sync's changes come from a handful of authors); if any fails, each is
    /// checked on its own to find which. Signatures of authors unknown here are left out.
    pub fn verify_batch(&self, items: &[SignedHash]) -> Verified {
        let known: Vec<(ActorPrefix, VerificationKey, &ChangeHash, &Signature)> = items
            .iter()
            .filter_map(|(actor, hash, sig)| {
                let prefix = prefix_of(actor)?;
                let (_, key) = self.by_prefix.get(&prefix)?;
                Some((prefix, (*key)?, hash, sig))
            })
            .collect();
        let mut coefficients = blake3::Hasher::new_derive_key(BATCH_CONTEXT);
        let mut batch = ed25519_zebra::batch::Verifier::new();
        for (_, key, hash, sig) in &known {
            coefficients.update(key.as_ref());
            coefficients.update(&hash.0);
            coefficients.update(&sig[..]);
            let sig = ed25519_zebra::Signature::from_bytes(sig);
            batch.queue((VerificationKeyBytes::from(*key), sig, &message(hash)));
        }
        let all_valid = batch.verify(BatchCoefficients(coefficients.finalize_xof())).is_ok();
        Verified(
            known
                .into_iter()
                .filter(|(_, key, hash, sig)| all_valid || verify_with(key, hash, sig))
                .map(|(prefix, _, hash, sig)| (prefix, *hash, *sig))
                .collect(),
        )
    }

    /// How many members are known.
    pub fn len(&self) -> usize {
        self.by_prefix.len()
    }

    /// Whether no member is known.
    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

/// Signs the changes written under `key`'s actor that are not ancestors of `before` (a local
/// write's new changes).
pub fn sign_new(key: &AuthorKey, doc: &mut AutoCommit, before: &[ChangeHash]) -> Vec<(ChangeHash, Signature)> {
    doc.get_changes_meta(before)
        .iter()
        .filter(|c| c.actor.as_ref() == key.actor())
        .map(|c| (c.hash, key.sign(&c.hash)))
        .collect()
}

/// `changes` (in causal order, as `get_changes` gives them) ready to send, with the signatures
/// `sig_of` holds for them. A change without a signature is left out, with everything after it
/// (a receiver could not check it); `sig_of` fails only as its store does.
pub fn outgoing<E>(
    changes: Vec<automerge::Change>,
    mut sig_of: impl FnMut(&ChangeHash) -> Result<Option<Signature>, E>,
) -> Result<crate::engine::Outgoing, E> {
    let mut out = crate::engine::Outgoing::default();
    for c in changes {
        let Some(sig) = sig_of(&c.hash())? else { break };
        out.bytes.extend_from_slice(c.raw_bytes());
        out.sigs.push(sig);
        if let Some(p) = prefix_of(c.actor_id())
            && !out.authors.contains(&p)
        {
            out.authors.push(p);
        }
    }
    Ok(out)
}

/// A roster shared by the replicas of one process (tests, the simulator), which learn members
/// as they are added.
pub type SharedRoster = std::sync::Arc<std::sync::RwLock<Roster>>;

/// Why change bytes were refused before Automerge saw them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Not a sequence of Automerge change chunks.
    #[error("not an Automerge change chunk: {0}")]
    Malformed(&'static str),
    /// A compressed change or a document chunk, which outpost never sends.
    #[error("chunk type {0} is not an uncompressed change")]
    WrongType(u8),
    /// Too many changes in one frame.
    #[error("{found} changes in one frame (at most {max})")]
    TooManyChanges {
        /// Changes found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// A change with too many operations.
    #[error("a change of {found} operations (at most {max})")]
    TooManyOps {
        /// Operations counted.
        found: u64,
        /// The limit.
        max: u64,
    },
}

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHANGE_CHUNK: u8 = 1;
/// Column specification of a change's action column: id 4, unsigned integers, run-length encoded.
const ACTION_COLUMN: u64 = (4 << 4) | 2;
/// Column specification of a change's value-metadata column: id 5, type 6.
const VALUE_META_COLUMN: u64 = (5 << 4) | 6;
/// Column specification of a change's predecessor counts: id 7, a group column.
const PRED_GROUP_COLUMN: u64 = 7 << 4;
/// Dependencies and other actors one change may list.
const MAX_LISTED: u64 = 256;

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ChunkError> {
        let end = self.at.checked_add(n).ok_or(ChunkError::Malformed("length overflows"))?;
        let out = self.bytes.get(self.at..end).ok_or(ChunkError::Malformed("truncated"))?;
        self.at = end;
        Ok(out)
    }

    fn uleb(&mut self) -> Result<u64, ChunkError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first().ok_or(ChunkError::Malformed("truncated"))?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ChunkError::Malformed("integer too long"))
    }

    fn sleb(&mut self) -> Result<i64, ChunkError> {
        let mut value: i64 = 0;
        let mut shift = 0;
        loop {
            let b = *self.take(1)?.first().ok_or(ChunkError::Malformed("truncated"))?;
            if shift >= 64 {
                return Err(ChunkError::Malformed("integer too long"));
            }
            value |= i64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    value |= -1i64 << shift;
                }
                return Ok(value);
            }
        }
    }

    fn len_prefixed(&mut self) -> Result<&'a [u8], ChunkError> {
        let n = self.uleb()?;
        self.take(usize::try_from(n).map_err(|_| ChunkError::Malformed("length overflows"))?)
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

/// Cuts the bytes of a `Changes` frame into uncompressed change chunks (at most `max`).
pub fn split_changes(bytes: &[u8], max: usize) -> Result<Vec<&[u8]>, ChunkError> {
    let mut c = Cursor { bytes, at: 0 };
    let mut out = Vec::new();
    while !c.done() {
        let start = c.at;
        if c.take(4)? != MAGIC {
            return Err(ChunkError::Malformed("bad magic bytes"));
        }
        c.take(4)?; // checksum: Automerge checks it
        let kind = *c.take(1)?.first().ok_or(ChunkError::Malformed("truncated"))?;
        if kind != CHANGE_CHUNK {
            return Err(ChunkError::WrongType(kind));
        }
        let len = c.uleb()?;
        c.take(usize::try_from(len).map_err(|_| ChunkError::Malformed("length overflows"))?)?;
        if out.len() == max {
            return Err(ChunkError::TooManyChanges { found: max + 1, max });
        }
        out.push(&bytes[start..c.at]);
    }
    Ok(out)
}

/// Counts the operations of one uncompressed change chunk without expanding them, refusing it
/// if there are more than `max`.
pub fn count_ops(chunk: &[u8], max: u64) -> Result<u64, ChunkError> {
    let mut c = Cursor { bytes: chunk, at: 0 };
    c.take(9)?;
    let len = c.uleb()?;
    let body = c.take(usize::try_from(len).map_err(|_| ChunkError::Malformed("length overflows"))?)?;
    let mut c = Cursor { bytes: body, at: 0 };
    let deps = c.uleb()?;
    if deps > MAX_LISTED {
        return Err(ChunkError::Malformed("too many dependencies"));
    }
    c.take(usize::try_from(deps.saturating_mul(32)).map_err(|_| ChunkError::Malformed("length overflows"))?)?;
    c.len_prefixed()?; // actor
    c.uleb()?; // seq
    c.uleb()?; // start op
    c.sleb()?; // time
    c.len_prefixed()?; // message
    let others = c.uleb()?;
    if others > MAX_LISTED {
        return Err(ChunkError::Malformed("too many actors"));
    }
    for _ in 0..others {
        c.len_prefixed()?;
    }
    let columns = c.uleb()?;
    let mut specs = Vec::new();
    for _ in 0..columns.min(64) {
        specs.push((c.uleb()?, c.uleb()?));
    }
    if columns > 64 {
        return Err(ChunkError::Malformed("too many columns"));
    }
    let mut rows = 0u64;
    for (spec, len) in specs {
        let data = c.take(usize::try_from(len).map_err(|_| ChunkError::Malformed("length overflows"))?)?;
        if spec & 0x08 != 0 {
            return Err(ChunkError::Malformed("a compressed column"));
        }
        if spec == ACTION_COLUMN || spec == VALUE_META_COLUMN {
            rows = rows.max(rle_rows(data, max)?);
        }
        if spec == PRED_GROUP_COLUMN {
            // Every predecessor is expanded too: as many as operations at most.
            rle_sum(data, max)?;
        }
    }
    if rows > max {
        return Err(ChunkError::TooManyOps { found: rows, max });
    }
    Ok(rows)
}

/// The sum of the values in a run-length-encoded column of unsigned integers, refused over `max`.
fn rle_sum(data: &[u8], max: u64) -> Result<u64, ChunkError> {
    let mut c = Cursor { bytes: data, at: 0 };
    let mut sum = 0u64;
    let over = |found| ChunkError::TooManyOps { found, max };
    while !c.done() {
        let count = c.sleb()?;
        if count > 0 {
            let v = c.uleb()?;
            sum = sum.saturating_add(v.saturating_mul(count.unsigned_abs()));
        } else if count < 0 {
            let n = count.unsigned_abs();
            if n > max {
                return Err(over(n));
            }
            for _ in 0..n {
                sum = sum.saturating_add(c.uleb()?);
            }
        } else {
            c.uleb()?;
        }
        if sum > max {
            return Err(over(sum));
        }
    }
    Ok(sum)
}

/// The number of values in a run-length-encoded column of unsigned integers.
fn rle_rows(data: &[u8], max: u64) -> Result<u64, ChunkError> {
    let mut c = Cursor { bytes: data, at: 0 };
    let mut rows = 0u64;
    while !c.done() {
        let count = c.sleb()?;
        let n = if count > 0 {
            c.uleb()?;
            count.unsigned_abs()
        } else if count < 0 {
            let n = count.unsigned_abs();
            if n > max {
                return Err(ChunkError::TooManyOps { found: n, max });
            }
            for _ in 0..n {
                c.uleb()?;
            }
            n
        } else {
            c.uleb()?
        };
        rows = rows.saturating_add(n);
        if rows > max {
            return Err(ChunkError::TooManyOps { found: rows, max });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ROOT};

    use super::*;

    fn key(n: u8) -> AuthorKey {
        AuthorKey::from_seed(&[n; 32], [0; 8])
    }

    #[test]
    fn an_actor_id_names_its_key_and_a_signature_checks_only_for_that_key() {
        let (a, b) = (key(1), key(2));
        assert_eq!(prefix_of(a.actor()), Some(actor_prefix(&a.public())));
        let member = |k: &AuthorKey| Member {
            info: PeerInfo { name: "n".into(), role: crate::vocab::Role::Edge, org: None, icb: None, lines: vec![] },
            key: k.public(),
        };
        let h = ChangeHash([7; 32]);
        let sig = a.sign(&h);
        assert!(verify(&member(&a), &h, &sig));
        assert!(!verify(&member(&b), &h, &sig), "another member's key");
        assert!(!verify(&member(&a), &ChangeHash([8; 32]), &sig), "another change");
        let mut roster = Roster::new();
        roster.insert(member(&a));
        assert!(roster.author_of(a.actor()).is_some());
        assert!(roster.author_of(b.actor()).is_none());
    }

    fn member_of(k: &AuthorKey, name: &str) -> Member {
        let info = PeerInfo { name: name.into(), role: crate::vocab::Role::Edge, org: None, icb: None, lines: vec![] };
        Member { info, key: k.public() }
    }

    /// `hash` signed by `seed`'s key with a nonce point that carries a small-order component:
    /// only the key's holder can make one, and checks that differ on it (a single check that
    /// refuses it and a batch that sometimes accepts it) would let a relayed change be kept by
    /// one node and refused by the next.
    fn signature_with_torsion(seed: &[u8; 32], hash: &ChangeHash) -> Signature {
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest, Sha512};
        let signing = SigningKey::from_bytes(seed);
        let a = signing.to_scalar();
        // (0, -1): the point of order two.
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0x7f;
        let order_two = CompressedEdwardsY(minus_one).decompress().unwrap();
        let r = Scalar::from_bytes_mod_order([42; 32]);
        let big_r = (curve25519_dalek::constants::ED25519_BASEPOINT_POINT * r + order_two).compress();
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(big_r.as_bytes())
                .chain_update(signing.verifying_key().as_bytes())
                .chain_update(message(hash)),
        );
        let s = r + k * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(big_r.as_bytes());
        sig[32..].copy_from_slice(s.as_bytes());
        sig
    }

    #[test]
    fn a_batch_accepts_exactly_the_signatures_that_one_at_a_time_accepts() {
        let (a, b, stranger) = (key(1), key(2), key(3));
        let mut roster = Roster::new();
        roster.insert(member_of(&a, "a"));
        roster.insert(member_of(&b, "b"));
        let h = |n: u8| ChangeHash([n; 32]);
        let mut flipped = a.sign(&h(4));
        flipped[40] ^= 1;
        let items: Vec<SignedHash> = vec![
            (a.actor().clone(), h(1), a.sign(&h(1))),
            (b.actor().clone(), h(2), b.sign(&h(2))),
            (a.actor().clone(), h(3), a.sign(&h(9))),
            (a.actor().clone(), h(4), flipped),
            (b.actor().clone(), h(5), a.sign(&h(5))),
            (stranger.actor().clone(), h(6), stranger.sign(&h(6))),
            (a.actor().clone(), h(7), signature_with_torsion(&[1; 32], &h(7))),
        ];
        let alone: Vec<bool> = items.iter().map(|(ac, hash, sig)| roster.verify(ac, hash, sig) == Some(true)).collect();
        assert_eq!(alone, [true, true, false, false, false, false, true]);
        let together = roster.verify_batch(&items);
        let in_batch: Vec<bool> = items.iter().map(|(ac, hash, sig)| together.contains(ac, hash, sig)).collect();
        assert_eq!(in_batch, alone, "a batch with bad signatures in it");
        // A batch of good ones only (the common case) is decided by one check.
        let good: Vec<SignedHash> = items.iter().zip(&alone).filter(|(_, ok)| **ok).map(|(i, _)| i.clone()).collect();
        let together = roster.verify_batch(&good);
        assert_eq!(together.len(), good.len());
        assert!(good.iter().all(|(ac, hash, sig)| together.contains(ac, hash, sig)));
        assert!(!together.contains(b.actor(), &h(1), &a.sign(&h(1))), "valid only under the key that made it");
        assert!(roster.verify_batch(&[]).is_empty());
    }

    #[test]
    fn a_key_of_small_order_checks_no_signature() {
        // The identity point: with it as the key, any signature whose nonce point is the
        // identity too and whose scalar is zero would check for every change.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let info = PeerInfo { name: "w".into(), role: crate::vocab::Role::Edge, org: None, icb: None, lines: vec![] };
        let member = Member { info, key: weak };
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let h = ChangeHash([5; 32]);
        assert!(!verify(&member, &h, &forged));
        let mut roster = Roster::new();
        roster.insert(member.clone());
        let mut actor = member.prefix().to_vec();
        actor.extend_from_slice(&[0; 8]);
        let actor = ActorId::from(actor);
        assert_eq!(roster.verify(&actor, &h, &forged), Some(false));
        assert!(roster.verify_batch(&[(actor, h, forged)]).is_empty());
    }

    #[test]
    fn operations_are_counted_from_the_runs_without_expanding_them() {
        let mut doc = AutoCommit::new().with_actor(key(1).actor().clone());
        let list = doc.put_object(ROOT, "l", ObjType::List).unwrap();
        doc.commit();
        let base = doc.get_heads();
        doc.splice(&list, 0, 0, std::iter::repeat_n(automerge::ScalarValue::Null, 50_000)).unwrap();
        doc.commit();
        doc.put(ROOT, "a", 1).unwrap();
        doc.put(ROOT, "b", "x").unwrap();
        doc.commit();
        let bytes = doc.save_after(&base);
        let chunks = split_changes(&bytes, 10).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(count_ops(chunks[0], 100_000).unwrap(), 50_000);
        assert_eq!(count_ops(chunks[1], 100_000).unwrap(), 2);
        assert_eq!(count_ops(chunks[0], 1_000), Err(ChunkError::TooManyOps { found: 50_000, max: 1_000 }));
        assert!(matches!(split_changes(&bytes, 1), Err(ChunkError::TooManyChanges { .. })));
        assert!(split_changes(&doc.save(), 10).is_err(), "a document chunk");
        for cut in [1, 5, 9, 20, bytes.len() - 1] {
            assert!(split_changes(&bytes[..cut], 10).is_err(), "truncated at {cut}");
        }
    }
}
