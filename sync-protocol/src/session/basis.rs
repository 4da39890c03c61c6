//! A session's view kept with the heads it was read at, and brought up to date after later
//! changes by reading again only the parts of the document they wrote.
//!
//! Every Automerge operation names the one object it writes (a map, a list, the root). What an
//! object holds changes only through operations on it, as long as an operation's predecessors
//! are at its own object and key: Automerge would apply one named elsewhere there, and the
//! write rules refuse that ([`crate::rules`]). So once a view was read at some heads, the view
//! after more changes differs only in the sections (the root's keys) holding an object those
//! changes wrote, and within the messages only in the messages written (or in the list's
//! order, when the list itself was written). [`update`] reads those again, in the order
//! [`super::build_view_with_objects`] reads them, and keeps the rest; anything it cannot place
//! (the identity or schema written, an object no longer visible, a root key no view reads, a
//! change it was not told of) makes it give up, and the caller reads the whole document.
//!
//! A hub storing a message in a session it holds reads one message, not the whole session.
//! Test builds check every update against a whole reading ([`SessionDoc::read_basis_since`]).

use std::collections::{BTreeSet, HashMap, HashSet};

use automerge::{AutoCommit, Change, ChangeHash, ObjId, ObjType, Prop, ROOT, ReadDoc};

use super::{
    ModelError, Reader, SessionDoc, SessionView, build_view_with_objects, last_status, read_consents, read_media,
    read_messages, read_outcome, read_patient, read_requester, read_service, read_shares, read_status, read_summary,
};
use crate::rules::HeldFacts;

/// A session's view as read at `heads`, with what [`update`] needs to bring it up to date.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewBasis {
    heads: Vec<ChangeHash>,
    view: SessionView,
    /// The object each of `view.messages` was read from, in order.
    messages: Vec<ObjId>,
    /// The messages' list.
    list: ObjId,
    /// The write rules' facts found in the reading (see [`SessionDoc::view_and_facts`]).
    facts: Option<HeldFacts>,
    /// The changes the document held.
    changes: u64,
}

impl ViewBasis {
    /// The heads the view was read at (as Automerge gives them, sorted).
    pub fn heads(&self) -> &[ChangeHash] {
        &self.heads
    }

    /// The view.
    pub fn view(&self) -> &SessionView {
        &self.view
    }

    /// The write rules' facts found in the same reading, if found plainly.
    pub fn facts(&self) -> Option<&HeldFacts> {
        self.facts.as_ref()
    }

    /// Roughly the memory the kept view takes, in bytes (for a cache's budget).
    pub fn approx_bytes(&self) -> usize {
        let v = &self.view;
        let receipt = |r: &super::Receipt| 48 + r.node.len();
        let messages: usize = v
            .messages
            .iter()
            .map(|m| 256 + m.id.len() + m.author.len() + m.text.len() + m.receipts.iter().map(receipt).sum::<usize>())
            .sum();
        let media: usize = v.media.iter().map(|m| 512 + m.receipts.iter().map(receipt).sum::<usize>()).sum();
        let consents: usize = v.consents.iter().map(|c| 128 + c.id.len() + c.by.len()).sum();
        let log = |entries: &[std::collections::BTreeMap<String, super::LogValue>]| -> usize {
            let value = |v: &super::LogValue| match v {
                super::LogValue::Str(t) => 32 + t.len(),
                super::LogValue::Int(_) | super::LogValue::Float(_) => 32,
            };
            entries.iter().map(|e| 64 + e.iter().map(|(k, v)| 32 + k.len() + value(v)).sum::<usize>()).sum()
        };
        1024 + v.summary.len()
            + messages
            + media
            + consents
            + v.status_history.len() * 24
            + v.shared_with.iter().map(|s| 32 + s.len()).sum::<usize>()
            + self.messages.len() * 32
            + log(&v.routing)
            + log(&v.calls)
    }
}

/// The objects and root keys some changes wrote: what [`update`] reads again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Touched {
    /// The changes noted: an update is made only when they are all the document gained.
    changes: HashSet<ChangeHash>,
    root_keys: BTreeSet<String>,
    objects: HashSet<ObjId>,
    /// The objects the changes made, and where: their place is known without asking the
    /// document (a new message's map is in the messages' list).
    made: HashMap<ObjId, Place>,
}

/// Where an object was made: under a key of the root, or in another object.
#[derive(Debug, Clone, PartialEq)]
enum Place {
    Root(String),
    In(ObjId),
}

impl Touched {
    /// What `changes` write, read from their operations. A change that Automerge cannot
    /// expand (its decoder panics on operations naming actors the change does not list) is
    /// noted as writing a root key no view reads, so a view is then read whole.
    pub fn of_changes<'c>(changes: impl IntoIterator<Item = &'c Change>) -> Touched {
        let mut t = Touched::default();
        for c in changes {
            t.note_change(c.hash());
            let start = c.start_op().get();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.decode())) {
                Ok(expanded) => {
                    for (i, op) in expanded.operations.iter().enumerate() {
                        t.note(op, start + i as u64, c.actor_id());
                    }
                }
                Err(_) => {
                    t.root_keys.insert(String::new());
                }
            }
        }
        t
    }

    /// Notes a change whose operations are noted ([`Touched::note`]).
    pub fn note_change(&mut self, hash: ChangeHash) {
        self.changes.insert(hash);
    }

    /// Notes what one operation, whose id is `counter`@`actor`, writes.
    pub fn note(&mut self, op: &automerge::legacy::Op, counter: u64, actor: &automerge::ActorId) {
        use automerge::legacy::{Key, ObjectId, OpId, OpType};
        let place = match (&op.obj, &op.key) {
            (ObjectId::Root, Key::Map(k)) => {
                if !self.root_keys.contains(k.as_str()) {
                    self.root_keys.insert(k.to_string());
                }
                Place::Root(k.to_string())
            }
            // The root is a map: an operation on it with a list key writes nothing a view reads
            // plainly, so it is noted as a key no view reads.
            (ObjectId::Root, Key::Seq(_)) => {
                self.root_keys.insert(String::new());
                Place::Root(String::new())
            }
            // The index an id carries is only a hint (ids compare by counter and actor).
            (ObjectId::Id(OpId(c, a)), _) => {
                let obj = ObjId::Id(*c, a.clone(), 0);
                self.objects.insert(obj.clone());
                Place::In(obj)
            }
        };
        if let OpType::Make(_) = op.action {
            self.made.insert(ObjId::Id(counter, actor.clone(), 0), place);
        }
    }

    /// Adds what `other` wrote.
    pub fn extend(&mut self, other: Touched) {
        self.changes.extend(other.changes);
        self.root_keys.extend(other.root_keys);
        self.objects.extend(other.objects);
        self.made.extend(other.made);
    }

    /// The root key `obj` is under, and the objects from the root's value there down to `obj`;
    /// `None` when an object held before is no longer visible. Only the objects held before
    /// these changes are looked up in the document.
    fn locate(&self, doc: &AutoCommit, obj: &ObjId) -> Option<(String, Vec<ObjId>)> {
        let mut below = vec![obj.clone()];
        loop {
            let last = below.last()?;
            match self.made.get(last) {
                Some(Place::Root(key)) => {
                    below.reverse();
                    return Some((key.clone(), below));
                }
                // Objects are made after the object they are in: no chain is longer than the
                // operations noted.
                Some(Place::In(parent)) if below.len() <= self.made.len() => below.push(parent.clone()),
                Some(Place::In(_)) => return None,
                None => break,
            }
        }
        below.reverse();
        let held = below.first()?;
        let path = doc.parents(held).ok()?.visible_path()?;
        let (_, Prop::Map(key)) = path.first()? else { return None };
        let key = key.clone();
        let mut chain: Vec<ObjId> = path.into_iter().skip(1).map(|(o, _)| o).collect();
        chain.extend(below);
        Some((key, chain))
    }
}

/// The root keys a view reads section by section. `schema` and `identity` are not among
/// them: every other section is read in their light, so writing either reads everything.
const SECTIONS: &[&str] = &[
    "requester",
    "patient",
    "service",
    "request",
    "status",
    "shares",
    "consents",
    "messages",
    "media",
    "outcome",
    "routing",
    "calls",
];

/// The sections the write rules' facts come from (besides the identity).
const FACT_SECTIONS: &[&str] = &["status", "shares", "service"];

/// Reads a whole document into a basis.
pub(super) fn read(doc: &AutoCommit, heads: Vec<ChangeHash>) -> Result<ViewBasis, ModelError> {
    let r = Reader::whole(doc);
    let (view, messages, list) = build_view_with_objects(&r)?;
    Ok(ViewBasis { heads, view, messages, list, facts: r.held_facts(), changes: doc.stats().num_changes })
}

/// `prior` brought up to `doc` at `heads`, when `touched` is everything the changes since
/// `prior.heads` wrote; `None` when the changes cannot be placed section by section, or the
/// document gained changes `touched` does not note (the caller reads the whole document).
pub(super) fn update(
    doc: &AutoCommit,
    prior: ViewBasis,
    touched: &Touched,
    heads: Vec<ChangeHash>,
) -> Option<Result<ViewBasis, ModelError>> {
    let mut keys: BTreeSet<String> = touched.root_keys.clone();
    // The messages written below the list (an entry, its receipts): read again.
    let mut messages_written: HashSet<ObjId> = HashSet::new();
    for obj in &touched.objects {
        let (key, chain) = touched.locate(doc, obj)?;
        // The list, then a message, then what is in it.
        if key == "messages"
            && let Some(message) = chain.get(1)
        {
            messages_written.insert(message.clone());
        }
        if !keys.contains(&key) {
            keys.insert(key);
        }
    }
    if keys.iter().any(|k| !SECTIONS.contains(&k.as_str())) {
        return None;
    }
    let has = |k: &str| keys.contains(k);
    let r = Reader::new(doc);
    // Only when the changes noted are all the document gained since.
    let changes = doc.stats().num_changes;
    if changes != prior.changes + touched.changes.len() as u64 {
        return None;
    }
    let ViewBasis { view: mut v, messages: mut objects, mut list, facts, .. } = prior;
    // The list the messages were read from, unless the root's key for it was written.
    let list_written = touched.root_keys.contains("messages");
    let read = (|| {
        // The order of `build_view_with_objects`.
        if has("requester") {
            v.requester = read_requester(&r)?;
        }
        if has("patient") {
            v.patient = read_patient(&r)?;
        }
        if has("service") {
            v.service = read_service(&r)?;
        }
        if has("request") {
            v.summary = read_summary(&r)?;
        }
        if has("status") {
            v.status_history = read_status(&r)?;
            let last = last_status(&v.status_history)?;
            (v.status, v.reopened) = (last.status, last.epoch);
        }
        if has("shares") {
            v.shared_with = read_shares(&r)?;
        }
        if has("consents") {
            v.consents = read_consents(&r)?;
        }
        if has("messages") {
            if list_written {
                list = r.obj(&ROOT, "messages", ObjType::List)?;
            }
            let mut kept: HashMap<ObjId, super::MessageView> = objects
                .drain(..)
                .zip(std::mem::take(&mut v.messages))
                .filter(|(o, _)| !messages_written.contains(o))
                .collect();
            (v.messages, objects) = read_messages(&r, &list, &v.identity.origin, |m| kept.remove(m))?;
        }
        // A photo shows whether its consent was withdrawn.
        if has("media") || has("consents") {
            v.media = read_media(&r, &v.identity.origin, &v.consents)?;
        }
        if has("outcome") {
            v.outcome = read_outcome(&r)?;
        }
        if has("routing") {
            v.routing = r.log("routing")?;
        }
        if has("calls") {
            v.calls = r.log("calls")?;
        }
        Ok::<_, ModelError>(())
    })();
    if let Err(e) = read {
        return Some(Err(e));
    }
    let facts = if FACT_SECTIONS.iter().any(|k| has(k)) { r.held_facts() } else { facts };
    Some(Ok(ViewBasis { heads, view: v, messages: objects, list, facts, changes }))
}

impl SessionDoc {
    /// The view read in one pass, kept with the heads it was read at: see [`ViewBasis`].
    pub fn read_basis(&mut self) -> Result<ViewBasis, ModelError> {
        let heads = self.doc.get_heads();
        read(&self.doc, heads)
    }

    /// The view of this document, from `prior` (a view read at earlier heads) and `touched`
    /// (everything the changes since then wrote: [`Touched::of_changes`], or the write rules'
    /// reading of them): only what those changes wrote is read again, where it can be placed;
    /// otherwise the whole document is read. So is it when the document gained more changes
    /// than `touched` notes (counted: `prior` must be of an earlier version of this document).
    /// Test builds compare every answer with a whole reading.
    pub fn read_basis_since(&mut self, prior: ViewBasis, touched: &Touched) -> Result<ViewBasis, ModelError> {
        let heads = self.doc.get_heads();
        if prior.heads == heads {
            return Ok(prior);
        }
        let updated = update(&self.doc, prior, touched, heads.clone());
        #[cfg(debug_assertions)]
        if let Some(u) = &updated {
            let whole = read(&self.doc, heads.clone());
            match (u, &whole) {
                // Compared as printed when unequal: a NaN (an older hub's gate figures) is
                // unequal to itself, and prints alike.
                (Ok(a), Ok(b)) if a != b => assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "a view updated from the objects written differs from the whole"
                ),
                (Ok(_), Ok(_)) => {}
                (a, b) => assert_eq!(
                    a.as_ref().err().map(ToString::to_string),
                    b.as_ref().err().map(ToString::to_string),
                    "an updated view's verdict differs from the whole reading's"
                ),
            }
        }
        updated.unwrap_or_else(|| read(&self.doc, heads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{NewMessage, NewSession, Patient, Requester, Service, SessionId};
    use crate::vocab::{CareSetting, Channel, Priority, ReceiptLevel, ServiceLine, Side, Status};
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ObjType, ROOT};

    const T: i64 = 1_796_360_400_000;

    fn session() -> SessionDoc {
        let new = NewSession {
            id: SessionId::from_parts(T, 9),
            origin: "amb-07".into(),
            icb: "QHM".into(),
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester::default(),
            patient: Patient::default(),
            service: Service { line: ServiceLine::Cardiology, channel: Channel::Message, priority: Priority::Urgent },
            summary: "chest pain".into(),
            draft: false,
        };
        SessionDoc::create(&new, ActorId::from([1u8; 16]), T).unwrap()
    }

    fn message(doc: &mut SessionDoc, n: u32) {
        let msg = NewMessage {
            clinician: None,
            id: format!("m{n}"),
            author: "amb-07".into(),
            side: Side::Requester,
            text: format!("observations {n}"),
            reply_to: None,
        };
        doc.add_message(&msg, T + i64::from(n)).unwrap();
    }

    /// `prior` updated by what the changes since it wrote, by the sections alone (`None`
    /// when it gave up).
    fn updated(doc: &mut SessionDoc, prior: &ViewBasis) -> Option<ViewBasis> {
        let touched = Touched::of_changes(&doc.changes_after(prior.heads()));
        let heads = doc.heads();
        update(doc.automerge(), prior.clone(), &touched, heads).map(Result::unwrap)
    }

    #[test]
    fn a_new_message_and_a_receipt_are_read_alone_and_the_rest_is_kept() {
        let mut doc = session();
        message(&mut doc, 1);
        let prior = doc.read_basis().unwrap();
        message(&mut doc, 2);
        let after_message = updated(&mut doc, &prior).expect("placed in the messages");
        assert_eq!(after_message, doc.read_basis().unwrap());
        assert_eq!(after_message.view().messages.len(), 2);
        // A desk's receipt on the first message: that message alone is read again.
        doc.acknowledge(ReceiptLevel::Desk, "desk-cardio-1", T + 3, |_| false).unwrap();
        let after_receipt = updated(&mut doc, &after_message).expect("placed in one message");
        assert_eq!(after_receipt, doc.read_basis().unwrap());
        assert_eq!(after_receipt.view().messages[0].receipt, ReceiptLevel::Desk);
        // A status move: the status section and the facts are read again.
        doc.set_status(Status::Closed, T + 4).unwrap();
        let after_status = updated(&mut doc, &after_receipt).expect("placed in the status");
        assert_eq!(after_status, doc.read_basis().unwrap());
    }

    #[test]
    fn a_write_to_the_identity_or_an_unknown_root_key_reads_the_whole_session() {
        let mut doc = session();
        let prior = doc.read_basis().unwrap();
        let identity = match doc.automerge().get(ROOT, "identity").unwrap() {
            Some((_, id)) => id,
            None => panic!("no identity"),
        };
        doc.automerge().put(&identity, "icb", "QOX").unwrap();
        doc.automerge().commit();
        assert_eq!(updated(&mut doc, &prior), None, "the identity: everything is read again");
        let touched = Touched::of_changes(&doc.changes_after(prior.heads()));
        let whole = doc.read_basis_since(prior.clone(), &touched).unwrap();
        assert_eq!(whole.view().identity.icb, "QOX");

        let prior = doc.read_basis().unwrap();
        doc.automerge().put_object(ROOT, "extra", ObjType::Map).unwrap();
        doc.automerge().commit();
        assert_eq!(updated(&mut doc, &prior), None, "a key no view reads");
    }

    #[test]
    fn a_touched_set_that_misses_a_change_reads_the_whole_session() {
        let mut doc = session();
        let prior = doc.read_basis().unwrap();
        message(&mut doc, 1);
        let first = Touched::of_changes(&doc.changes_after(prior.heads()));
        message(&mut doc, 2);
        let heads = doc.heads();
        assert_eq!(update(doc.automerge(), prior.clone(), &first, heads).map(|_| ()), None, "not placed");
        let read = doc.read_basis_since(prior, &first).unwrap();
        assert_eq!(read.view().messages.len(), 2, "the second message is read too");
        assert_eq!(read, doc.read_basis().unwrap());
    }

    #[test]
    fn a_kept_views_estimated_memory_counts_consents_and_log_entries() {
        use crate::routing::RoutingEntry;
        use crate::session::NewConsent;
        use crate::vocab::{ConsentKind, ConsentScope};
        let mut doc = session();
        let small = doc.read_basis().unwrap().approx_bytes();
        let consent = NewConsent {
            id: "c1".into(),
            kind: ConsentKind::Verbal,
            scope: ConsentScope::RecordOnly,
            by: "amb-07".into(),
        };
        doc.add_consent(&consent, T + 1).unwrap();
        let with_consent = doc.read_basis().unwrap().approx_bytes();
        assert!(with_consent > small, "{with_consent} <= {small}");
        let entry = RoutingEntry::Escalate { call: "call-1".into(), by: "amb-07".into() };
        doc.append_routing(&entry, T + 2).unwrap();
        let with_entry = doc.read_basis().unwrap().approx_bytes();
        assert!(with_entry > with_consent + 64, "{with_entry} against {with_consent}");
    }

    #[test]
    fn a_basis_at_the_documents_heads_is_kept_as_it_is() {
        let mut doc = session();
        let prior = doc.read_basis().unwrap();
        let same = doc.read_basis_since(prior.clone(), &Touched::default()).unwrap();
        assert_eq!(same, prior);
    }
}
