//! Who may write what in a session: the write rules, checked per change before it is stored.
//!
//! A valid fleet certificate proves who is talking, not that what it sends is allowed. So a
//! node stores received changes only after [`admit`] has checked, for every change it does not
//! hold yet:
//!
//! 1. **Bounds**: at most [`Limits::max_changes`] changes per frame and
//!    [`Limits::max_ops_per_change`] operations per change, counted before Automerge expands
//!    them ([`crate::authorship`]).
//! 2. **Authorship**: the change's actor names a known fleet member ([`Roster`]) and the
//!    signature beside it is that member's signature of the change's hash.
//! 3. **Write rules**: every operation of the change is allowed to that member (its role, its
//!    name, its relation to the session), at the document state it applies to. The rules are the
//!    table in `docs/schema.md`; each row is one arm of `check_op` below.
//!
//! A change that breaks any of them refuses the whole batch: nothing of it is stored. The rules
//! look at facts that only grow (object paths, the session's identity, its shares, the highest
//! status epoch), so a change allowed when it was written stays allowed however much else a
//! receiver holds, with one exception: the service line, which decides whether a desk may hold
//! the session, can be changed by the origin or its hub, and a desk's change checked after such
//! a change is judged by the new line.
//!
//! This is the only place that decides what a change may do. The node's SQLite store and the
//! in-memory replica of tests and the simulator both call [`admit`].

use std::collections::{HashMap, HashSet};

use automerge::legacy::{ElementId, Key, ObjectId, OpId, OpType};
use automerge::{ActorId, AutoCommit, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};

use crate::authorship::{self, ChunkError, Member, PublicKey, Roster, Signature, SignedHash, Verified};
use crate::scope::{DocMeta, PeerInfo, may_hold};
use crate::session::Touched;
use crate::vocab::{Role, ServiceLine, Side, Status};

/// Bounds on what one peer may make a node parse and apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Changes in one `Changes` frame.
    pub max_changes: usize,
    /// Operations in one change (a session's creation is about 40; a message about 10).
    pub max_ops_per_change: u64,
    /// Operations in one session document, all changes together.
    pub max_doc_ops: u64,
    /// Operations a replica admits in one batch of frames (one step of one peer's conversation):
    /// documents past it are refused for now and offered again by the sender, so that one peer's
    /// burst cannot hold the store for long.
    pub max_batch_ops: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_changes: 4096, max_ops_per_change: 2048, max_doc_ops: 200_000, max_batch_ops: 400_000 }
    }
}

/// Why received changes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Over a bound, or not change chunks at all.
    #[error("{0}")]
    Chunk(#[from] ChunkError),
    /// Automerge could not parse a change.
    #[error("an undecodable change: {0}")]
    Undecodable(String),
    /// Signatures do not match the changes one for one.
    #[error("{changes} changes came with {signatures} signatures")]
    SignatureCount {
        /// Changes in the frame.
        changes: usize,
        /// Signatures beside them.
        signatures: usize,
    },
    /// The actor names no fleet member this node knows.
    #[error("change {change} is by an unknown author (actor {actor})")]
    UnknownAuthor {
        /// Short hash of the change.
        change: String,
        /// Its actor id.
        actor: String,
    },
    /// The change's author's certificate is revoked, and the change was not held before (it
    /// may be the thief's, written since): refused unless it comes from a hub, which takes such
    /// changes from no one else once it knows.
    #[error("change {change} is by {author}, whose certificate is revoked")]
    RevokedAuthor {
        /// Short hash of the change.
        change: String,
        /// The member its actor names.
        author: String,
    },
    /// The signature is not the named member's.
    #[error("change {change} does not carry {author}'s signature")]
    BadSignature {
        /// Short hash of the change.
        change: String,
        /// The member its actor names.
        author: String,
    },
    /// A write rule refused an operation.
    #[error("change {change} by {author} breaks a write rule: {rule}")]
    Rule {
        /// Short hash of the change.
        change: String,
        /// Its verified author.
        author: String,
        /// Which rule, in words.
        rule: String,
    },
    /// The batch of frames already made this replica admit [`Limits::max_batch_ops`].
    #[error("this step's work budget is spent ({spent} operations); offer it again")]
    Busy {
        /// Operations admitted in the batch so far.
        spent: u64,
    },
    /// The session would grow past [`Limits::max_doc_ops`].
    #[error("the session would hold {found} operations (at most {max})")]
    TooLarge {
        /// Operations after the batch.
        found: u64,
        /// The limit.
        max: u64,
    },
}

/// What [`admit`] found.
#[derive(Debug)]
pub enum Admission {
    /// Every new change checked out: apply these, in this order; each comes with its author's
    /// signature, for the receiver to keep (it may relay the change).
    Ready(Vec<(Change, Signature)>),
    /// Some changes depend on changes neither held nor in the batch: nothing can be checked yet.
    MissingDeps,
}

/// Dependencies one change may name (a merge of this many concurrent branches is already far
/// beyond what a session sees).
const MAX_DEPS: usize = 256;

fn short(h: &ChangeHash) -> String {
    hex::encode(&h.0[..6])
}

/// Checks received change bytes and their signatures against `doc` (the session as held, or an
/// empty document) and returns the changes to apply. Nothing is changed here.
pub fn admit(
    doc: &mut AutoCommit,
    bytes: &[u8],
    sigs: &[Signature],
    roster: &Roster,
    limits: &Limits,
) -> Result<Admission, Refusal> {
    admit_decoded(doc, decode(bytes, sigs, limits)?, roster, limits, &Verified::default())
}

/// One document's received changes, cut into chunks, bounded and decoded, each with the
/// signature sent for it: the first half of [`admit`], which a receiver of many documents runs
/// for all of them first, so that their signatures are checked together
/// ([`Roster::verify_batch`]) before [`admit_decoded`] runs for each.
#[derive(Debug)]
pub struct Decoded(Vec<(Change, Signature, u64)>);

impl Decoded {
    /// The operations of its changes (what they would cost of a step's work budget, if new).
    pub fn ops(&self) -> u64 {
        self.0.iter().map(|(_, _, ops)| *ops).fold(0, u64::saturating_add)
    }

    /// Each change's actor, hash and signature, to check.
    pub fn signed(&self) -> impl Iterator<Item = SignedHash> + '_ {
        self.0.iter().map(|(c, sig, _)| (c.actor_id().clone(), c.hash(), *sig))
    }
}

/// Cuts, bounds and decodes received change bytes (see [`Decoded`]).
pub fn decode(bytes: &[u8], sigs: &[Signature], limits: &Limits) -> Result<Decoded, Refusal> {
    let chunks = authorship::split_changes(bytes, limits.max_changes)?;
    if chunks.len() != sigs.len() {
        return Err(Refusal::SignatureCount { changes: chunks.len(), signatures: sigs.len() });
    }
    let mut out = Vec::with_capacity(chunks.len());
    for (chunk, sig) in chunks.into_iter().zip(sigs) {
        let ops = authorship::count_ops(chunk, limits.max_ops_per_change)?;
        let change = Change::try_from(chunk).map_err(|e| Refusal::Undecodable(e.to_string()))?;
        let deps: HashSet<&ChangeHash> = change.deps().iter().collect();
        if deps.len() != change.deps().len() || deps.len() > MAX_DEPS {
            return Err(Refusal::Undecodable(format!(
                "change {} names {} dependencies",
                short(&change.hash()),
                change.deps().len()
            )));
        }
        out.push((change, *sig, ops));
    }
    Ok(Decoded(out))
}

/// The second half of [`admit`]: checks decoded changes against `doc`. A signature is taken
/// as valid if `verified` holds it (the batch it came in was checked together), and is checked
/// here otherwise.
pub fn admit_decoded(
    doc: &mut AutoCommit,
    decoded: Decoded,
    roster: &Roster,
    limits: &Limits,
    verified: &Verified,
) -> Result<Admission, Refusal> {
    admit_decoded_with(doc, decoded, roster, limits, verified, None, None)
}

/// [`admit_decoded`], given the held document's facts if they are known already ([`HeldFacts`],
/// as the last reading of the whole document found them at its current heads): they are then
/// not read from the document again. What the admitted changes write is noted in `touched`
/// (left as it is when none is new): a view kept of the document reads only that again
/// ([`crate::session::SessionDoc::read_basis_since`]).
pub fn admit_decoded_with(
    doc: &mut AutoCommit,
    decoded: Decoded,
    roster: &Roster,
    limits: &Limits,
    verified: &Verified,
    held: Option<&HeldFacts>,
    touched: Option<&mut Touched>,
) -> Result<Admission, Refusal> {
    let mut fresh: Vec<(Change, Member, Signature)> = Vec::new();
    let mut seen = HashSet::new();
    let mut new_ops = 0u64;
    for (change, sig, ops) in decoded.0 {
        let hash = change.hash();
        if doc.get_change_meta_by_hash(&hash).is_some() || !seen.insert(hash) {
            continue;
        }
        let member = roster
            .author_of(change.actor_id())
            .ok_or_else(|| Refusal::UnknownAuthor { change: short(&hash), actor: change.actor_id().to_hex_string() })?;
        if !verified.contains(change.actor_id(), &hash, &sig)
            && roster.verify(change.actor_id(), &hash, &sig) != Some(true)
        {
            return Err(Refusal::BadSignature { change: short(&hash), author: member.info.name.clone() });
        }
        new_ops += ops;
        fresh.push((change, member.clone(), sig));
    }
    if fresh.is_empty() {
        return Ok(Admission::Ready(Vec::new()));
    }
    let held_ops = doc_ops(doc);
    if held_ops.saturating_add(new_ops) > limits.max_doc_ops {
        return Err(Refusal::TooLarge { found: held_ops + new_ops, max: limits.max_doc_ops });
    }
    let Some(ordered) = causal_order(doc, fresh) else { return Ok(Admission::MissingDeps) };
    let mut state = match held {
        Some(facts) => {
            // Every test run holds the reading's facts to the rules' own.
            debug_assert_eq!(facts, &State::of(doc).facts(), "facts kept with the document are stale");
            State::with(doc, facts.clone())
        }
        None => State::of(doc),
    };
    state.batch_deps = ordered.iter().map(|(c, _, _)| (c.hash(), c.deps().to_vec())).collect();
    let mut written = Touched::default();
    for (change, member, _) in &ordered {
        state.check_change(change, member, &mut written)?;
    }
    if let Some(t) = touched {
        *t = written;
    }
    Ok(Admission::Ready(ordered.into_iter().map(|(c, _, sig)| (c, sig)).collect()))
}

/// Checks changes a node has just made itself, on `prior` (the session before them), against
/// the write rules its peers will apply to them, as `me` writing with `key`. A local write the
/// rules refuse must not be stored: every peer would refuse it, and with it every later change
/// of this node to the session (each depends on it). Signatures are not checked (the node has
/// just made them).
pub fn check_own(prior: &AutoCommit, changes: &[Change], me: &PeerInfo, key: PublicKey) -> Result<(), Refusal> {
    let member = Member { info: me.clone(), key };
    let mut state = State::of(prior);
    state.batch_deps = changes.iter().map(|c| (c.hash(), c.deps().to_vec())).collect();
    let mut written = Touched::default();
    for change in changes {
        state.check_change(change, &member, &mut written)?;
    }
    Ok(())
}

/// The document's id of an object a change names.
fn held_id(obj: &ObjectId) -> ObjId {
    match obj {
        ObjectId::Root => ROOT,
        // The actor's index in the document is looked up from the actor itself.
        ObjectId::Id(OpId(c, a)) => ObjId::Id(*c, a.clone(), usize::MAX),
    }
}

/// Operations held in a document (each change's count, summed).
fn doc_ops(doc: &AutoCommit) -> u64 {
    doc.stats().num_ops
}

/// Orders the batch so that every change follows its dependencies (Kahn's algorithm, linear in
/// the batch); `None` when a dependency is neither held nor in the batch, or the dependencies
/// form a cycle.
fn causal_order<T>(doc: &mut AutoCommit, batch: Vec<(Change, T, Signature)>) -> Option<Vec<(Change, T, Signature)>> {
    let index: HashMap<ChangeHash, usize> = batch.iter().enumerate().map(|(i, (c, _, _))| (c.hash(), i)).collect();
    let mut waiting = vec![0usize; batch.len()];
    let mut unlocks: Vec<Vec<usize>> = vec![Vec::new(); batch.len()];
    for (i, (c, _, _)) in batch.iter().enumerate() {
        for d in c.deps() {
            match index.get(d) {
                Some(&j) => {
                    waiting[i] += 1;
                    unlocks[j].push(i);
                }
                None if doc.get_change_meta_by_hash(d).is_some() => {}
                None => return None,
            }
        }
    }
    let mut ready: Vec<usize> = (0..batch.len()).filter(|i| waiting[*i] == 0).collect();
    let mut order = Vec::with_capacity(batch.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &k in &unlocks[i] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.push(k);
            }
        }
    }
    if order.len() != batch.len() {
        return None;
    }
    let mut slots: Vec<Option<(Change, T, Signature)>> = batch.into_iter().map(Some).collect();
    Some(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// What an object of a session is, by where it sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Obj {
    Root,
    Identity,
    /// `requester`, `patient`, `service`, `request`: the origin's (and its hub's) fields.
    Fields(&'static str),
    Status,
    Shares,
    Messages,
    Message,
    Receipts,
    Media,
    MediaItem,
    Consents,
    Consent,
    Outcome,
    OutcomeSide(Side),
    Routing,
    RoutingEntry,
    Calls,
    CallEntry,
}

type ObjKey = (u64, ActorId);

/// The facts of a held session that the write rules start from: whether it was created, its
/// origin, ICB and service line, whom it is shared with and its highest status epoch. Read
/// from the document by the rules themselves ([`held_facts`]), or taken from a reading of the
/// whole document (`SessionDoc::view_and_facts`), which must find the same.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeldFacts {
    pub(crate) created: bool,
    pub(crate) origin: Option<String>,
    pub(crate) icb: Option<String>,
    pub(crate) line: Option<ServiceLine>,
    pub(crate) shares: Vec<String>,
    pub(crate) max_epoch: u32,
}

/// The facts the write rules read of a held document.
pub fn held_facts(doc: &AutoCommit) -> HeldFacts {
    State::of(doc).facts()
}

/// The epoch of a status key (`<epoch>/<status>`), if it is one.
pub(crate) fn status_epoch(key: &str) -> Option<u32> {
    parse_status_key(key).map(|(epoch, _)| epoch)
}

/// The facts the rules read, kept up to date as changes are checked. They only ever grow.
///
/// What an object is (`objects`) is found only for the objects the checked changes touch: by
/// its path from the root (`parents`), each step confirmed to be a value readers see (winner
/// or conflict) at a place the schema names. An object that is not so reachable (deleted, or
/// at a place the schema does not name) is unknown, and an operation on it is refused.
#[derive(Debug)]
struct State<'a> {
    doc: &'a AutoCommit,
    objects: HashMap<ObjKey, Option<Obj>>,
    /// Where each operation of the batch checked so far is: its object, its key, and whether
    /// it is an insert (for the operations after it that name it).
    placed: HashMap<ObjKey, (ObjectId, Key, bool)>,
    /// The dependencies of the batch's changes (a change's base in the document is found
    /// through them).
    batch_deps: HashMap<ChangeHash, Vec<ChangeHash>>,
    /// The keys of `/media` and `/consents` at which the batch has made a record.
    records: HashSet<(ObjectId, String)>,
    /// (call, node) for each party the batch's routing entries name: who asked for a call
    /// (`escalate`'s `by`), which desk answered or was connected (`desk`).
    parties: Vec<(String, Party)>,
    origin: Option<String>,
    icb: Option<String>,
    line: Option<ServiceLine>,
    shares: Vec<String>,
    max_epoch: u32,
    created: bool,
    /// The session's creation time, once read (from the batch's identity, or from the held
    /// document when a rule needs it).
    created_ms: Option<i64>,
}

/// Desks could write `cancelled` until this build (the command line from a1724fe, the API
/// between 1386186 and 3c69b15, the node's check only from e4969e7): a session created before
/// 8 December 2026 (UTC) may hold a desk's cancel. Refusing those would keep such a session
/// (and every later change of it: a reopen, its messages, its outcomes) from every node that
/// does not hold it yet. The creation time is the origin's (or its hub's), which no desk writes.
const DESK_CANCELS_BEFORE_MS: i64 = 1_796_688_000_000;

fn root_kind(key: &str) -> Option<Obj> {
    Some(match key {
        "identity" => Obj::Identity,
        "requester" => Obj::Fields("requester"),
        "patient" => Obj::Fields("patient"),
        "service" => Obj::Fields("service"),
        "request" => Obj::Fields("request"),
        "status" => Obj::Status,
        "shares" => Obj::Shares,
        "messages" => Obj::Messages,
        "media" => Obj::Media,
        "consents" => Obj::Consents,
        "outcome" => Obj::Outcome,
        "routing" => Obj::Routing,
        "calls" => Obj::Calls,
        _ => return None,
    })
}

/// What an object found at `prop` of an object of kind `parent` is, by the schema.
fn child_kind(parent: Obj, prop: &automerge::Prop) -> Option<Obj> {
    use automerge::Prop;
    match (parent, prop) {
        (Obj::Root, Prop::Map(k)) => root_kind(k),
        (Obj::Messages, Prop::Seq(_)) => Some(Obj::Message),
        (Obj::Routing, Prop::Seq(_)) => Some(Obj::RoutingEntry),
        (Obj::Calls, Prop::Seq(_)) => Some(Obj::CallEntry),
        (Obj::Message | Obj::MediaItem, Prop::Map(k)) if k == "receipts" => Some(Obj::Receipts),
        (Obj::Media, Prop::Map(_)) => Some(Obj::MediaItem),
        (Obj::Consents, Prop::Map(_)) => Some(Obj::Consent),
        (Obj::Outcome, Prop::Map(k)) => Side::parse(k).ok().map(Obj::OutcomeSide),
        _ => None,
    }
}

fn objs_at(doc: &AutoCommit, obj: &ObjId, prop: impl Into<automerge::Prop>) -> Vec<ObjId> {
    doc.get_all(obj, prop)
        .unwrap_or_default()
        .into_iter()
        .filter(|(v, _)| matches!(v, Value::Object(_)))
        .map(|(_, id)| id)
        .collect()
}

/// A time in milliseconds, as a session writes one (an integer).
fn time_ms(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int(t) | ScalarValue::Timestamp(t) => Some(*t),
        ScalarValue::Uint(t) => i64::try_from(*t).ok(),
        _ => None,
    }
}

fn str_at(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<String> {
    match doc.get(obj, key).ok().flatten() {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(v) => Some(v.to_string()),
            _ => None,
        },
        _ => None,
    }
}

impl<'a> State<'a> {
    /// The facts of a held document (its identity, service line, shares and status epochs;
    /// objects are looked up as changes name them).
    fn of(doc: &'a AutoCommit) -> State<'a> {
        let mut s = State {
            doc,
            objects: HashMap::new(),
            placed: HashMap::new(),
            batch_deps: HashMap::new(),
            records: HashSet::new(),
            parties: Vec::new(),
            origin: None,
            icb: None,
            line: None,
            shares: Vec::new(),
            max_epoch: 0,
            created: false,
            created_ms: None,
        };
        // One pass over the root's keys (each lookup by key costs about as much as the pass):
        // for the keys the facts come from, every object written there (a key written
        // concurrently holds several; only then are they looked up one by one) and the one
        // every reader sees (the winner, as in the view).
        let (mut identity, mut service) = (None, None);
        for item in doc.map_range(ROOT, ..) {
            let key = item.key.as_ref();
            if !matches!(key, "identity" | "status" | "shares" | "service") {
                continue;
            }
            let winner = matches!(item.value, automerge::ValueRef::Object(_)).then(|| item.id());
            let all = if item.conflict { objs_at(doc, &ROOT, key) } else { winner.iter().cloned().collect() };
            match key {
                "identity" => {
                    s.created = !all.is_empty();
                    identity = winner;
                }
                "status" => {
                    for id in all {
                        for k in doc.keys(&id) {
                            if let Some((epoch, _)) = parse_status_key(&k) {
                                s.max_epoch = s.max_epoch.max(epoch);
                            }
                        }
                    }
                }
                "shares" => {
                    for id in all {
                        s.shares.extend(doc.keys(&id));
                    }
                }
                _ => service = winner,
            }
        }
        if let Some(identity) = identity {
            // Both keys in one pass over the identity (a lookup by key costs about as much).
            for item in doc.map_range(&identity, ..) {
                let text = match &item.value {
                    automerge::ValueRef::Scalar(automerge::ScalarValueRef::Str(v)) => Some(v.to_string()),
                    _ => None,
                };
                match item.key.as_ref() {
                    "origin" => s.origin = text,
                    "icb" => s.icb = text,
                    _ => {}
                }
            }
        }
        if let Some(service) = service {
            s.line = str_at(doc, &service, "line").and_then(|l| ServiceLine::parse(&l).ok());
        }
        s
    }

    /// The facts of a held document, known already.
    fn with(doc: &'a AutoCommit, f: HeldFacts) -> State<'a> {
        State {
            doc,
            objects: HashMap::new(),
            placed: HashMap::new(),
            batch_deps: HashMap::new(),
            records: HashSet::new(),
            parties: Vec::new(),
            origin: f.origin,
            icb: f.icb,
            line: f.line,
            shares: f.shares,
            max_epoch: f.max_epoch,
            created: f.created,
            created_ms: None,
        }
    }

    /// When the session was created: read from the held document's identity unless the batch
    /// being checked wrote it.
    fn created_ms(&self) -> Option<i64> {
        self.created_ms.or_else(|| {
            let identity = objs_at(self.doc, &ROOT, "identity").into_iter().next()?;
            match self.doc.get(&identity, "created_ms").ok().flatten() {
                Some((Value::Scalar(v), _)) => time_ms(v.as_ref()),
                _ => None,
            }
        })
    }

    fn facts(self) -> HeldFacts {
        HeldFacts {
            created: self.created,
            origin: self.origin,
            icb: self.icb,
            line: self.line,
            shares: self.shares,
            max_epoch: self.max_epoch,
        }
    }

    /// What a held object is (see [`State`]), remembered once found.
    fn kind_of(&mut self, key: &ObjKey) -> Option<Obj> {
        if let Some(k) = self.objects.get(key) {
            return *k;
        }
        let kind = self.resolve(key);
        self.objects.insert(key.clone(), kind);
        kind
    }

    fn resolve(&self, (counter, actor): &ObjKey) -> Option<Obj> {
        // The actor's index in the document is looked up from the actor itself.
        let target = ObjId::Id(*counter, actor.clone(), usize::MAX);
        let mut path: Vec<automerge::Parent> = self.doc.parents(&target).ok()?.collect();
        path.reverse();
        let mut kind = Obj::Root;
        for (i, step) in path.iter().enumerate() {
            let child = path.get(i + 1).map_or(&target, |next| &next.obj);
            if !objs_at(self.doc, &step.obj, step.prop.clone()).contains(child) {
                return None;
            }
            kind = child_kind(kind, &step.prop)?;
        }
        (kind != Obj::Root).then_some(kind)
    }

    /// Whether the operation `pred` is at `key` of `obj`: an operation of the batch placed
    /// there, or one the document holds there now or held at the base `change` was written on
    /// (what its writer saw: a concurrent write may have overwritten it here since).
    fn pred_at(&self, change: &Change, obj: &ObjectId, key: &str, pred: &OpId) -> bool {
        if let Some((o, k, _)) = self.placed.get(&(pred.0, pred.1.clone())) {
            return o == obj && matches!(k, Key::Map(at) if at.as_str() == key);
        }
        let target = held_id(obj);
        let names_pred = |ops: Vec<(Value<'_>, ObjId)>| {
            ops.iter().any(|(_, id)| matches!(id, ObjId::Id(c, a, _) if *c == pred.0 && *a == pred.1))
        };
        if self.doc.get_all(&target, key).is_ok_and(names_pred) {
            return true;
        }
        let base = self.base_of(change);
        !base.is_empty() && self.doc.get_all_at(&target, key, &base).is_ok_and(names_pred)
    }

    /// The requester of `call`, if the document or the batch holds its escalation.
    fn requester_of(&self, call: &str) -> Option<String> {
        self.parties_of(call).0
    }

    /// Whether `node` is a party to `call`: its requester (the `by` of the call's escalation,
    /// held or in this batch; a second is refused), or a desk the hub rang for it or connected
    /// to it. An answer is the desk's own word and makes no party: a desk the hub never rang
    /// could otherwise answer and ask for a callback in one change, and end the crew's call.
    fn is_party(&self, call: &str, node: &str) -> bool {
        let (requester, desks) = self.parties_of(call);
        requester.as_deref() == Some(node) || desks.iter().any(|d| d == node)
    }

    /// The parties of `call` the document and the batch name: its requester (the `by` of its
    /// first escalation), and the desks a hub rang for it or connected.
    fn parties_of(&self, call: &str) -> (Option<String>, Vec<String>) {
        let mut requester: Option<String> = None;
        let mut desks: Vec<String> = Vec::new();
        let mut take = |party: Party| match party {
            Party::Requester(by) => {
                requester.get_or_insert(by);
            }
            Party::Desk(desk) => desks.push(desk),
        };
        if let Some(routing) = objs_at(self.doc, &ROOT, "routing").into_iter().next() {
            for i in 0..self.doc.length(&routing) {
                for e in objs_at(self.doc, &routing, i) {
                    if str_at(self.doc, &e, "call").as_deref() != Some(call) {
                        continue;
                    }
                    let kind = str_at(self.doc, &e, "kind");
                    if let Some(p) =
                        party_of(kind.as_deref(), || str_at(self.doc, &e, "by"), || str_at(self.doc, &e, "desk"))
                    {
                        take(p);
                    }
                }
            }
        }
        for (c, p) in &self.parties {
            if c == call {
                take(p.clone());
            }
        }
        (requester, desks)
    }

    /// Claims `key` of the record map `obj` for a new record: false if the document or an
    /// earlier operation of the batch holds one there.
    fn claim_record(&mut self, obj: &ObjectId, key: &str) -> bool {
        if self.doc.get_all(held_id(obj), key).is_ok_and(|values| !values.is_empty()) {
            return false;
        }
        self.records.insert((obj.clone(), key.to_string()))
    }

    /// The heads in the document that `change` was written on: its dependencies, through the
    /// batch's changes to the ones the document holds.
    fn base_of(&self, change: &Change) -> Vec<ChangeHash> {
        let (mut out, mut seen) = (Vec::new(), HashSet::new());
        let mut walk: Vec<ChangeHash> = change.deps().to_vec();
        while let Some(h) = walk.pop() {
            if !seen.insert(h) {
                continue;
            }
            match self.batch_deps.get(&h) {
                Some(deps) => walk.extend(deps.iter().copied()),
                None => out.push(h),
            }
        }
        out
    }

    /// Whether `list` holds the entry `element`: inserted into it earlier in the batch, or in
    /// the document.
    fn holds_element(&self, list: &ObjectId, element: &ObjKey) -> bool {
        if let Some((o, _, insert)) = self.placed.get(element) {
            return *insert && o == list;
        }
        let ObjectId::Id(OpId(c, a)) = list else { return false };
        let target = ObjId::Id(element.0, element.1.clone(), usize::MAX);
        let parent = self.doc.parents(&target).ok().and_then(|mut p| p.next());
        parent.is_some_and(|p| matches!(p.prop, automerge::Prop::Seq(_)) && p.obj == ObjId::Id(*c, a.clone(), 0))
    }

    fn meta(&self) -> Option<DocMeta> {
        Some(DocMeta {
            origin: self.origin.clone()?,
            icb: self.icb.clone()?,
            line: self.line?,
            shares: self.shares.clone(),
        })
    }

    fn check_change(&mut self, change: &Change, member: &Member, touched: &mut Touched) -> Result<(), Refusal> {
        let refuse =
            |rule: String| Refusal::Rule { change: short(&change.hash()), author: member.info.name.clone(), rule };
        let creating = !self.created;
        if creating && !change.deps().is_empty() {
            return Err(refuse("the first change of a session must be its creation".into()));
        }
        if !creating {
            let meta = self.meta().ok_or_else(|| refuse("the session has no identity".into()))?;
            if !may_hold(&member.info, &meta) {
                return Err(refuse("the author may not hold this session".into()));
            }
        }
        // A change whose operations name actors it does not list would make Automerge's decoder
        // panic: refuse it instead.
        let expanded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode()))
            .map_err(|_| refuse("operations name actors the change does not list".into()))?;
        let actor = change.actor_id().clone();
        let start = change.start_op().get();
        let mut made: HashSet<ObjKey> = HashSet::new();
        // (object, key) pairs this change wrote: a creation writes each once.
        let mut written: HashSet<(Obj, String)> = HashSet::new();
        // The routing entries this change makes, in the order it made them: each one's text
        // fields (the first escalation of a call names its requester).
        let mut entries: std::collections::BTreeMap<ObjKey, HashMap<String, String>> = Default::default();
        touched.note_change(change.hash());
        for (i, op) in expanded.operations.iter().enumerate() {
            touched.note(op, start + i as u64, &actor);
            let id: ObjKey = (start + i as u64, actor.clone());
            let target = match &op.obj {
                ObjectId::Root => Obj::Root,
                ObjectId::Id(OpId(c, a)) => {
                    self.kind_of(&(*c, a.clone())).ok_or_else(|| refuse("an operation on an unknown object".into()))?
                }
            };
            let fresh = match &op.obj {
                ObjectId::Root => creating,
                ObjectId::Id(OpId(c, a)) => made.contains(&(*c, a.clone())),
            };
            let key = match &op.key {
                Key::Map(k) => Some(k.as_str()),
                Key::Seq(_) => None,
            };
            if let Some(k) = key
                && matches!(target, Obj::Root | Obj::Identity)
                && !written.insert((target, k.to_string()))
            {
                return Err(refuse(format!("{k:?} written twice in a creation")));
            }
            // An operation overwrites only what is at its own object and key: Automerge applies
            // a predecessor wherever it is, so one named elsewhere would delete a value there.
            for pred in op.pred.iter() {
                let here = match key {
                    Some(k) => self.pred_at(change, &op.obj, k, pred),
                    None => false,
                };
                if !here {
                    return Err(refuse("an operation overwrites a value that is not at its own key".into()));
                }
            }
            // An entry goes after the head of its list or after an entry of the same list
            // (Automerge panics on an element it does not hold).
            if let Key::Seq(ElementId::Id(OpId(c, a))) = &op.key
                && !self.holds_element(&op.obj, &(*c, a.clone()))
            {
                return Err(refuse("an entry is inserted after one its list does not hold".into()));
            }
            // A photo's record and a consent are made once at their key: a second object made
            // there with no predecessor would stand beside the first as a conflict, and the one
            // with the higher operation id is what every reader sees (a withdrawal hidden,
            // another node's photo record replaced).
            if let (Some(k), Obj::Media | Obj::Consents) = (key, target)
                && matches!(op.action, OpType::Make(_))
                && !self.claim_record(&op.obj, k)
            {
                return Err(refuse(format!("a record is already made at {k:?}")));
            }
            if let (Obj::RoutingEntry, true, Some(k), ObjectId::Id(OpId(c, a)), OpType::Put(ScalarValue::Str(v))) =
                (target, fresh, key, &op.obj, &op.action)
            {
                entries.entry((*c, a.clone())).or_default().insert(k.to_string(), v.to_string());
            }
            self.placed.insert(id.clone(), (op.obj.clone(), op.key.clone(), op.insert));
            let made_kind = self.check_op(member, target, fresh, creating, key, op).map_err(refuse)?;
            if let Some(kind) = made_kind {
                made.insert(id.clone());
                self.objects.insert(id, Some(kind));
            }
        }
        // A callback ends the call's escalation: only a party to the call asks for one (a tablet
        // the session is shared with, or another desk, could otherwise end the crew's call).
        // Hubs route calls, and arrange callbacks for any.
        for fields in entries.values() {
            let field = |k: &str| fields.get(k).cloned();
            if field("kind").as_deref() == Some("escalate") && (field("by").is_none() || field("call").is_none()) {
                // Readers take a call's first escalation for the one naming its requester: one
                // naming none would leave the call with no requester to relay to.
                return Err(refuse("an escalation names its call and its requester".into()));
            }
            if let (Some(call), Some(party)) =
                (field("call"), party_of(field("kind").as_deref(), || field("by"), || field("desk")))
            {
                // A call is asked for once. Readers take its first escalation for the one that
                // names the requester, and "first" is a place in a list a writer chooses (an
                // entry inserted at the list's head comes first): a second escalation of a held
                // call would let a tablet the session is shared with become its requester
                // (callbacks, its voice relayed to the tablet, its leg believed).
                if matches!(party, Party::Requester(_)) && self.requester_of(&call).is_some() {
                    return Err(refuse(format!("call {call:?} was already asked for")));
                }
                self.parties.push((call, party));
            }
        }
        if member.info.role != Role::Hub {
            for fields in entries.values() {
                if fields.get("kind").map(String::as_str) == Some("callback") {
                    let call = fields.get("call").map_or("", String::as_str);
                    if !self.is_party(call, &member.info.name) {
                        return Err(refuse(format!("a callback for call {call:?} is asked for only by a party to it")));
                    }
                }
            }
        }
        if creating {
            let by_origin = member.info.role == Role::Edge
                && self.origin.as_deref() == Some(member.info.name.as_str())
                && member.info.icb == self.icb;
            let by_hub = member.info.role == Role::Hub && member.info.icb == self.icb;
            if !(by_origin || by_hub) {
                return Err(refuse("a session is created only by its origin edge (or its ICB's hub)".into()));
            }
            if self.meta().is_none() {
                return Err(refuse("a creation without origin, ICB and service line".into()));
            }
            self.created = true;
        }
        Ok(())
    }

    /// Checks one operation; returns the kind of the object it creates, if it creates one.
    fn check_op(
        &mut self,
        member: &Member,
        target: Obj,
        fresh: bool,
        creating: bool,
        key: Option<&str>,
        op: &automerge::legacy::Op,
    ) -> Result<Option<Obj>, String> {
        let who = &member.info;
        let is_origin = self.origin.as_deref() == Some(who.name.as_str()) && who.role == Role::Edge;
        let is_home_hub = who.role == Role::Hub && who.icb.is_some() && who.icb == self.icb;
        let value = match &op.action {
            OpType::Put(v) => Some(v),
            _ => None,
        };
        let text = |v: Option<&ScalarValue>| match v {
            Some(ScalarValue::Str(s)) => Some(s.to_string()),
            _ => None,
        };
        let make = |kind: ObjType| matches!(op.action, OpType::Make(k) if k == kind);
        // Only last-writer-wins fields may overwrite what another write put there; everything
        // else is written once (grow-only maps, records made whole in one change).
        if !op.pred.is_empty() && !matches!(target, Obj::Fields(_) | Obj::OutcomeSide(_)) {
            return Err("only requester, patient, service, request and outcome fields are overwritten".into());
        }
        let map_key = || key.ok_or_else(|| "a list operation on a map".to_string());
        if who.role != Role::Hub && matches!(value, Some(ScalarValue::F64(x)) if x.is_nan()) {
            // No field an edge or a desk writes holds one, and a NaN is unequal to itself:
            // every comparison of a view holding it fails. (Hubs before this version wrote the
            // gate's figures for a link that echoed nothing as NaN: those changes are in the
            // fleet's documents, and refusing them would keep such a session from every node
            // that does not hold it yet.)
            return Err("a number that is not a number".into());
        }
        match op.action {
            OpType::Increment(_) | OpType::MarkBegin(_) | OpType::MarkEnd(_) => {
                return Err("counters and marks are not part of a session".into());
            }
            OpType::Make(ObjType::Text | ObjType::Table) => return Err("text and table objects are not used".into()),
            _ => {}
        }
        match target {
            Obj::Root => {
                if !creating {
                    return Err("the top level is written only at creation".into());
                }
                let k = map_key()?;
                if k == "schema" && value.is_some() {
                    return Ok(None);
                }
                let kind = root_kind(k).ok_or_else(|| format!("unknown top-level key {k:?}"))?;
                let shape = match kind {
                    Obj::Messages | Obj::Routing | Obj::Calls => ObjType::List,
                    _ => ObjType::Map,
                };
                if !make(shape) {
                    return Err(format!("/{k} must be created as a container"));
                }
                Ok(Some(kind))
            }
            Obj::Identity => {
                if !fresh {
                    return Err("the identity never changes".into());
                }
                let k = map_key()?;
                match k {
                    "origin" => self.origin = text(value),
                    "icb" => self.icb = text(value),
                    "created_ms" => self.created_ms = value.and_then(time_ms),
                    "id" | "care_setting" => {}
                    _ => return Err(format!("unknown identity field {k:?}")),
                }
                value.map(|_| None).ok_or_else(|| "identity fields are values".into())
            }
            Obj::Fields(group) => {
                if !(creating || is_origin || is_home_hub) {
                    return Err(format!("only the origin or its hub writes /{group}"));
                }
                let k = map_key()?;
                if group == "service" && k == "line" {
                    self.line = text(value).and_then(|l| ServiceLine::parse(&l).ok());
                }
                if group == "patient"
                    && k == "birth_date"
                    && value.is_some()
                    && text(value).as_deref().and_then(crate::session::calendar_date).is_none()
                {
                    return Err("a birth date is a calendar date written YYYY-MM-DD".into());
                }
                match op.action {
                    OpType::Put(_) | OpType::Delete => Ok(None),
                    _ => Err(format!("/{group} holds values only")),
                }
            }
            Obj::Status => {
                let k = map_key()?;
                let (epoch, status) = parse_status_key(k).ok_or_else(|| format!("status key {k:?}"))?;
                if value.is_none() {
                    return Err("statuses are only added".into());
                }
                if epoch > self.max_epoch.saturating_add(1) {
                    return Err(format!("status epoch {epoch} skips ahead of {}", self.max_epoch));
                }
                let grandfathered = status == Status::Cancelled
                    && who.role == Role::Desk
                    && self.created_ms().is_some_and(|t| t < DESK_CANCELS_BEFORE_MS);
                if !(creating || grandfathered || status_allowed(who.role, is_origin, is_home_hub, status)) {
                    return Err(format!("a {} may not set the status {}", who.role, status.as_str()));
                }
                self.max_epoch = self.max_epoch.max(epoch);
                Ok(None)
            }
            Obj::Shares => {
                let k = map_key()?;
                if value.is_none() {
                    return Err("shares are only added".into());
                }
                let hub_holding = who.role == Role::Hub && self.meta().is_some_and(|m| may_hold(who, &m));
                if !(creating || is_origin || hub_holding) {
                    return Err("a session is shared only by its origin or a hub holding it".into());
                }
                self.shares.push(k.to_string());
                Ok(None)
            }
            Obj::Messages | Obj::Routing | Obj::Calls => {
                if !op.insert || !make(ObjType::Map) {
                    return Err("logs and messages are append-only".into());
                }
                if target == Obj::Calls && who.role == Role::Hub {
                    return Err("call records are written by the parties".into());
                }
                Ok(Some(match target {
                    Obj::Messages => Obj::Message,
                    Obj::Routing => Obj::RoutingEntry,
                    _ => Obj::CallEntry,
                }))
            }
            Obj::Message => {
                if !fresh {
                    return Err("a sent message never changes".into());
                }
                let k = map_key()?;
                match k {
                    "receipts" if make(ObjType::Map) => return Ok(Some(Obj::Receipts)),
                    "author" if text(value).as_deref() != Some(who.name.as_str()) => {
                        return Err("a message's author is its writer".into());
                    }
                    "side" if text(value).as_deref() != Some(crate::session::side_of(who.role).as_str()) => {
                        return Err(format!(
                            "a {}'s message speaks for the {} side",
                            who.role,
                            crate::session::side_of(who.role).as_str()
                        ));
                    }
                    "by_role" if !person_fits(text(value).as_deref(), who.role) => {
                        return Err(format!("a {} node's writer is no {:?}", who.role, text(value)));
                    }
                    "id" | "author" | "side" | "at_ms" | "text" | "reply_to" | "by_name" | "by_role"
                    | "by_registration" => {}
                    _ => return Err(format!("unknown message field {k:?}")),
                }
                value.map(|_| None).ok_or_else(|| "message fields are values".into())
            }
            Obj::Receipts => {
                let k = map_key()?;
                let (level, node) = k.split_once('/').ok_or_else(|| format!("receipt key {k:?}"))?;
                if value.is_none() {
                    return Err("receipts are only added".into());
                }
                if node != who.name {
                    return Err(format!("a receipt for {node} written by {}", who.name));
                }
                let fits = match level {
                    "hub" => who.role == Role::Hub,
                    "desk" => who.role == Role::Desk,
                    // Only the edge that asked receives the replies.
                    "requester" => who.role == Role::Edge && is_origin,
                    "read" => true,
                    _ => false,
                };
                if !fits {
                    return Err(format!("a {} gives no {level:?} receipt", who.role));
                }
                Ok(None)
            }
            Obj::Media => {
                if who.role != Role::Edge || !make(ObjType::Map) {
                    return Err("photos are attached by an edge, each once".into());
                }
                let k = map_key()?;
                if k.len() != 64 || !k.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(format!("a photo is recorded under its hash, not {k:?}"));
                }
                Ok(Some(Obj::MediaItem))
            }
            Obj::MediaItem => {
                if !fresh {
                    return Err("a photo's record never changes".into());
                }
                let k = map_key()?;
                match k {
                    "receipts" if make(ObjType::Map) => return Ok(Some(Obj::Receipts)),
                    "added_by" if text(value).as_deref() != Some(who.name.as_str()) => {
                        return Err("a photo's added_by is its writer".into());
                    }
                    "by_role" if !person_fits(text(value).as_deref(), who.role) => {
                        return Err(format!("a {} node's writer is no {:?}", who.role, text(value)));
                    }
                    "size" if !matches!(value, Some(ScalarValue::Uint(n)) if (1..=crate::blob::MAX_BLOB_BYTES).contains(n)) =>
                    {
                        return Err(format!("a photo's size is 1 to {} bytes", crate::blob::MAX_BLOB_BYTES));
                    }
                    "hash" | "mime" | "size" | "width" | "height" | "view" | "body_site" | "consent" | "added_by"
                    | "at_ms" | "by_name" | "by_role" | "by_registration" => {}
                    _ => return Err(format!("unknown photo field {k:?}")),
                }
                value.map(|_| None).ok_or_else(|| "photo fields are values".into())
            }
            Obj::Consents => {
                if !(who.role == Role::Edge || is_home_hub) || !make(ObjType::Map) {
                    return Err("consent is recorded by an edge, each once".into());
                }
                Ok(Some(Obj::Consent))
            }
            Obj::Consent => {
                let k = map_key()?;
                if matches!(k, "by" | "withdrawn_by") && text(value).as_deref() != Some(who.name.as_str()) {
                    return Err(format!("a consent's {k} is its writer"));
                }
                let allowed = match k {
                    "kind" | "scope" | "by" | "at_ms" => fresh,
                    "withdrawn_at" | "withdrawn_by" => who.role == Role::Edge || is_home_hub,
                    _ => false,
                };
                if !allowed || value.is_none() {
                    return Err(format!("consent field {k:?} may not be written here"));
                }
                Ok(None)
            }
            Obj::Outcome => {
                if !creating {
                    return Err("the outcome sides are created with the session".into());
                }
                let k = map_key()?;
                let side = Side::parse(k).map_err(|_| format!("unknown outcome side {k:?}"))?;
                if !make(ObjType::Map) {
                    return Err("outcome sides are maps".into());
                }
                Ok(Some(Obj::OutcomeSide(side)))
            }
            Obj::OutcomeSide(side) => {
                let k = map_key()?;
                let allowed_writer = match side {
                    Side::Requester => is_origin || is_home_hub,
                    Side::Responder => who.role == Role::Desk || is_home_hub,
                };
                if !allowed_writer {
                    return Err(format!("a {} does not record the {} outcome", who.role, side.as_str()));
                }
                match k {
                    "by" if text(value).as_deref() != Some(who.name.as_str()) => {
                        Err("an outcome's by is its writer".into())
                    }
                    "by_role" if !person_fits(text(value).as_deref(), who.role) => {
                        Err(format!("a {} node's writer is no {:?}", who.role, text(value)))
                    }
                    "value" | "by" | "at_ms" | "by_name" | "by_role" | "by_registration" if value.is_some() => Ok(None),
                    _ => Err(format!("outcome field {k:?} may not be written")),
                }
            }
            Obj::RoutingEntry | Obj::CallEntry => {
                if !fresh {
                    return Err("log entries never change".into());
                }
                let k = map_key()?;
                if value.is_none() {
                    return Err("log entries hold values only".into());
                }
                if target == Obj::RoutingEntry && k == "kind" {
                    let kind = text(value).unwrap_or_default();
                    let ok = match who.role {
                        Role::Hub => true,
                        Role::Edge => matches!(kind.as_str(), "escalate" | "callback"),
                        Role::Desk => matches!(kind.as_str(), "answer" | "callback"),
                    };
                    if !ok {
                        return Err(format!("a {} does not write {kind:?} routing entries", who.role));
                    }
                }
                if who.role != Role::Hub
                    && matches!(k, "by" | "desk" | "node")
                    && text(value).as_deref() != Some(who.name.as_str())
                {
                    return Err(format!("a log entry's {k} is its writer"));
                }
                if target == Obj::CallEntry && k == "node" && text(value).as_deref() != Some(who.name.as_str()) {
                    return Err("a call record's node is its writer".into());
                }
                Ok(None)
            }
        }
    }
}

/// A party to a call, as a routing entry names it.
#[derive(Debug, Clone)]
enum Party {
    /// Who asked for the call (an escalation's `by`; the call's first escalation counts).
    Requester(String),
    /// A desk the hub rang for the call or connected to it.
    Desk(String),
}

/// The party a routing entry of this kind names: who asked for the call (`escalate`'s `by`),
/// or the desk the hub rang or connected (`ring`'s or `connected`'s `desk`: entries only a hub
/// writes).
fn party_of(
    kind: Option<&str>,
    by: impl FnOnce() -> Option<String>,
    desk: impl FnOnce() -> Option<String>,
) -> Option<Party> {
    match kind? {
        "escalate" => by().map(Party::Requester),
        "ring" | "connected" => desk().map(Party::Desk),
        _ => None,
    }
}

fn parse_status_key(key: &str) -> Option<(u32, Status)> {
    let (e, s) = key.split_once('/')?;
    Some((e.parse().ok()?, Status::parse(s).ok()?))
}

/// Which statuses a writer of this role may add (the rule table in `docs/schema.md`).
fn status_allowed(role: Role, is_origin: bool, is_home_hub: bool, status: Status) -> bool {
    if is_home_hub || role == Role::Hub {
        return true;
    }
    match status {
        Status::Draft | Status::Routing => is_origin,
        Status::Queued => role == Role::Edge,
        Status::Connected => false,
        Status::Responded => role == Role::Desk,
        Status::AwaitingReply | Status::OutcomeRecorded | Status::Closed => is_origin || role == Role::Desk,
        // Withdrawing the request is the requester's (or its hub's): a consultant who has no
        // more to add closes the session, and a desk running altered software must not be able
        // to make a crew's open case vanish from the desks' queues as withdrawn.
        Status::Cancelled => is_origin,
    }
}

/// Whether a record's `by_role` (the person who wrote it, as the node states it) is a role
/// that works on a node of `role`: a paramedic, GP or nurse on an edge, a consultant on a desk,
/// no person on a hub. No person (absent or null) always fits.
fn person_fits(by_role: Option<&str>, role: Role) -> bool {
    match by_role {
        None => true,
        Some(r) => match role {
            Role::Edge => matches!(r, "paramedic" | "gp" | "nurse"),
            Role::Desk => r == "consultant",
            Role::Hub => false,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use automerge::transaction::Transactable;

    use super::*;
    use crate::SessionId;
    use crate::session::{LogName, LogValue, NewConsent, NewMedia, NewMessage, NewSession, SessionDoc};
    use crate::session::{Patient, Requester, Service};
    use crate::vocab::{CareSetting, Channel, ConsentKind, ConsentScope, PhotoView, Priority, ReceiptLevel};

    const T: i64 = 1_790_000_000_000;

    /// Every object the schema names, found by walking the whole document (what the rules
    /// looked up before objects were found by their path).
    fn walk(doc: &AutoCommit) -> HashMap<ObjKey, Obj> {
        let mut out = HashMap::new();
        let mut put = |id: &ObjId, kind: Obj| {
            if let ObjId::Id(counter, actor, _) = id {
                out.insert((*counter, actor.clone()), kind);
            }
        };
        for key in doc.keys(ROOT).collect::<Vec<_>>() {
            let Some(kind) = root_kind(&key) else { continue };
            for id in objs_at(doc, &ROOT, key.as_str()) {
                put(&id, kind);
                match kind {
                    Obj::Messages | Obj::Routing | Obj::Calls => {
                        for i in 0..doc.length(&id) {
                            for e in objs_at(doc, &id, i) {
                                let item = child_kind(kind, &automerge::Prop::Seq(i)).unwrap();
                                put(&e, item);
                                for r in objs_at(doc, &e, "receipts") {
                                    if item == Obj::Message {
                                        put(&r, Obj::Receipts);
                                    }
                                }
                            }
                        }
                    }
                    Obj::Media | Obj::Consents | Obj::Outcome => {
                        for k in doc.keys(&id).collect::<Vec<_>>() {
                            for e in objs_at(doc, &id, k.as_str()) {
                                let Some(item) = child_kind(kind, &automerge::Prop::Map(k.clone())) else { continue };
                                put(&e, item);
                                if item == Obj::MediaItem {
                                    for r in objs_at(doc, &e, "receipts") {
                                        put(&r, Obj::Receipts);
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    fn session() -> SessionDoc {
        let new = NewSession {
            id: SessionId::from_parts(T, 9),
            origin: "amb-07".into(),
            icb: "QHM".into(),
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester::default(),
            patient: Patient::default(),
            service: Service { line: ServiceLine::Dermatology, channel: Channel::Photo, priority: Priority::Urgent },
            summary: "rash".into(),
            draft: false,
        };
        let mut d = SessionDoc::create(&new, ActorId::from(vec![1u8; 16]), T).unwrap();
        let consent = NewConsent {
            id: "c1".into(),
            kind: ConsentKind::Verbal,
            scope: ConsentScope::RecordOnly,
            by: "amb-07".into(),
        };
        d.add_consent(&consent, T).unwrap();
        for i in 0..3 {
            let msg = NewMessage {
                clinician: None,
                id: format!("m{i}"),
                author: "amb-07".into(),
                side: Side::Requester,
                text: format!("message {i}"),
                reply_to: None,
            };
            d.add_message(&msg, T + i).unwrap();
        }
        d.add_media(&media("ab"), T).unwrap();
        d.add_receipt("m1", ReceiptLevel::Hub, "hub-qhm", T).unwrap();
        d.add_receipt(&"ab".repeat(32), ReceiptLevel::Hub, "hub-qhm", T).unwrap();
        d.append_log(LogName::Routing, "escalate", &[("call", LogValue::Str("c-1".into()))], T).unwrap();
        d.append_log(LogName::Calls, "connected", &[("call", LogValue::Str("c-1".into()))], T).unwrap();
        d
    }

    /// The facts [`State::of`] reads, found one lookup at a time (as it did before it read the
    /// root in one pass): the reference it must agree with.
    fn facts_by_lookups(
        doc: &AutoCommit,
    ) -> (bool, Option<String>, Option<String>, Option<ServiceLine>, Vec<String>, u32) {
        let created = !objs_at(doc, &ROOT, "identity").is_empty();
        let mut max_epoch = 0;
        for id in objs_at(doc, &ROOT, "status") {
            for k in doc.keys(&id) {
                if let Some((epoch, _)) = parse_status_key(&k) {
                    max_epoch = max_epoch.max(epoch);
                }
            }
        }
        let mut shares = Vec::new();
        for id in objs_at(doc, &ROOT, "shares") {
            shares.extend(doc.keys(&id));
        }
        let (mut origin, mut icb, mut line) = (None, None, None);
        if let Some((Value::Object(_), identity)) = doc.get(ROOT, "identity").ok().flatten() {
            origin = str_at(doc, &identity, "origin");
            icb = str_at(doc, &identity, "icb");
        }
        if let Some((Value::Object(_), service)) = doc.get(ROOT, "service").ok().flatten() {
            line = str_at(doc, &service, "line").and_then(|l| ServiceLine::parse(&l).ok());
        }
        (created, origin, icb, line, shares, max_epoch)
    }

    fn facts(doc: &AutoCommit) -> (bool, Option<String>, Option<String>, Option<ServiceLine>, Vec<String>, u32) {
        let s = State::of(doc);
        (s.created, s.origin, s.icb, s.line, s.shares, s.max_epoch)
    }

    #[test]
    fn the_held_facts_read_in_one_pass_are_those_read_key_by_key_conflicts_included() {
        let mut held = session();
        let mut plain = held.automerge().clone();
        assert_eq!(facts(&plain), facts_by_lookups(&plain));
        assert!(facts(&plain).0 && facts(&plain).1.as_deref() == Some("amb-07"));
        // Two writers replace the objects the facts come from, at once: every key conflicts.
        let mut a = held.automerge().fork().with_actor(ActorId::from(vec![2u8; 16]));
        let mut b = held.automerge().fork().with_actor(ActorId::from(vec![3u8; 16]));
        for (doc, n, line, share) in [(&mut a, 7, "cardiology", "desk-a"), (&mut b, 9, "dermatology", "desk-b")] {
            for key in ["identity", "service", "status", "shares"] {
                let obj = doc.put_object(ROOT, key, ObjType::Map).unwrap();
                match key {
                    "identity" => {
                        doc.put(&obj, "origin", format!("amb-{n}")).unwrap();
                        doc.put(&obj, "icb", "QHM").unwrap();
                    }
                    "service" => doc.put(&obj, "line", line).unwrap(),
                    "status" => doc.put(&obj, format!("{n}/responded"), T).unwrap(),
                    _ => doc.put(&obj, share, T).unwrap(),
                }
            }
            doc.commit();
        }
        a.merge(&mut b).unwrap();
        assert!(a.get_all(ROOT, "shares").unwrap().len() == 2, "the keys conflict");
        assert_eq!(facts(&a), facts_by_lookups(&a));
        assert_eq!(facts(&a).5, 9, "the status epochs of every conflicting object count");
        // A key holding a value that is not an object, and an empty document.
        let mut odd = plain.fork().with_actor(ActorId::from(vec![4u8; 16]));
        odd.put(ROOT, "identity", "not an object").unwrap();
        odd.put(ROOT, "service", 3).unwrap();
        odd.commit();
        assert_eq!(facts(&odd), facts_by_lookups(&odd));
        // An identity whose origin is not text, and whose ICB two writers set at once.
        let identity = match plain.get(ROOT, "identity").unwrap() {
            Some((Value::Object(_), id)) => id,
            other => panic!("no identity: {other:?}"),
        };
        let mut c = plain.fork().with_actor(ActorId::from(vec![5u8; 16]));
        c.put(&identity, "origin", 5).unwrap();
        c.put(&identity, "icb", "QOX").unwrap();
        c.commit();
        plain.put(&identity, "icb", "QKK").unwrap();
        plain.commit();
        plain.merge(&mut c).unwrap();
        assert!(plain.get_all(&identity, "icb").unwrap().len() == 2, "the ICB conflicts");
        assert_eq!(facts(&plain), facts_by_lookups(&plain));
        assert_eq!(facts(&plain).1, None, "an origin that is not text is none");
        // A reading of the whole document finds the same facts, or, where a key they come from
        // is conflicted (the first merge above), none: the rules then read them themselves.
        let found = |doc: &AutoCommit| {
            let mut d = SessionDoc::empty(ActorId::from(vec![6u8; 16]));
            d.apply_bytes(&doc.clone().save()).unwrap();
            d.view_and_facts().1
        };
        assert_eq!(found(&plain), Some(held_facts(&plain)));
        assert_eq!(found(held.automerge()), Some(held_facts(held.automerge())));
        assert_eq!(found(&a), None, "conflicted keys");
        let empty = AutoCommit::new();
        assert_eq!(facts(&empty), facts_by_lookups(&empty));
        assert!(!facts(&empty).0);
    }

    fn media(h: &str) -> NewMedia {
        NewMedia {
            hash: h.repeat(32),
            mime: "image/jpeg".into(),
            size: 10,
            dimensions: None,
            view: PhotoView::CloseUp,
            body_site: "arm".into(),
            consent_id: "c1".into(),
            added_by: "amb-07".into(),
            clinician: None,
        }
    }

    #[test]
    fn objects_found_by_path_are_the_objects_the_whole_walk_finds() {
        let mut a = session();
        // Two writers add the same photo at once: a conflict, both objects readable.
        let mut b = a.fork_as(ActorId::from(vec![2u8; 16]));
        a.add_media(&media("cd"), T + 5).unwrap();
        b.add_media(&media("cd"), T + 6).unwrap();
        a.merge(&mut b).unwrap();
        // A message deleted, and an object at a place the schema does not name.
        let doc = a.automerge();
        let msgs = match doc.get(ROOT, "messages").unwrap() {
            Some((Value::Object(_), id)) => id,
            _ => panic!("no messages"),
        };
        let deleted = match doc.get(&msgs, 0).unwrap() {
            Some((Value::Object(_), id)) => id,
            _ => panic!("no message"),
        };
        let stray = doc.put_object(&deleted, "stray", ObjType::Map).unwrap();
        let under_message = {
            let m1 = match doc.get(&msgs, 1).unwrap() {
                Some((Value::Object(_), id)) => id,
                _ => panic!("no message"),
            };
            doc.put_object(&m1, "stray", ObjType::Map).unwrap()
        };
        doc.delete(&msgs, 0).unwrap();
        doc.commit();
        let doc = &*a.automerge();
        let all = walk(doc);
        assert!(all.values().filter(|k| **k == Obj::MediaItem).count() >= 3, "the conflict is readable: {all:?}");
        let mut state = State::of(doc);
        for (key, kind) in &all {
            assert_eq!(state.kind_of(key), Some(*kind), "object {key:?}");
        }
        for unknown in [deleted, stray, under_message] {
            let ObjId::Id(c, actor, _) = unknown else { panic!("root") };
            assert_eq!(state.kind_of(&(c, actor)), None, "an object the schema does not name is unknown");
        }
    }
}
