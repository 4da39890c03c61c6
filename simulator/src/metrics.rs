//! What the simulator measures: the ledger of every write and where it got to when, byte
//! counts over time, link availability, backlogs, call escalations.

use std::collections::BTreeMap;

use serde::Serialize;
use sync_protocol::wire::DocId;

use crate::scenario::Kind;

/// Simulated time in microseconds since the start of the run.
pub type Micros = u64;

/// One write a clinician made, and where it got to.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Node that wrote it.
    pub node: usize,
    /// Its kind of node.
    pub kind: Kind,
    /// The session.
    pub doc: DocId,
    /// Message id or photo hash (hex); the session id for the session itself.
    pub key: String,
    /// Message, photo or session.
    pub what: What,
    /// When it was written (acknowledged by the node's store).
    pub written: Micros,
    /// When the hub held it (for a photo: its bytes, whole).
    pub at_hub: Option<Micros>,
    /// When a desk of its service line first held it.
    pub at_desk: Option<Micros>,
}

/// Kinds of write tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    /// A new session.
    Session,
    /// A message.
    Message,
    /// A photo.
    Photo,
}

/// Every tracked write, by (doc, key).
#[derive(Debug, Default)]
pub struct Ledger {
    /// The entries.
    pub entries: Vec<Entry>,
    index: BTreeMap<(DocId, String), usize>,
}

impl Ledger {
    /// Records a write.
    pub fn write(&mut self, e: Entry) {
        self.index.insert((e.doc, e.key.clone()), self.entries.len());
        self.entries.push(e);
    }

    /// The entry for a (doc, key), if tracked.
    pub fn get_mut(&mut self, doc: &DocId, key: &str) -> Option<&mut Entry> {
        let i = *self.index.get(&(*doc, key.to_string()))?;
        self.entries.get_mut(i)
    }

    /// Entries of one session.
    pub fn of_doc(&self, doc: &DocId) -> impl Iterator<Item = &Entry> {
        self.index
            .range((*doc, String::new())..)
            .take_while(move |((d, _), _)| d == doc)
            .map(|(_, i)| &self.entries[*i])
    }
}

/// A call escalation and what happened to it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Escalation {
    /// Node that asked.
    pub node: String,
    /// When the clinician asked (s).
    pub asked_s: f64,
    /// When the hub learnt of it (s).
    pub seen_at_hub_s: Option<f64>,
    /// The federated hub the call was handed to, when the home line could not take it.
    pub handed_to: Option<String>,
    /// When a desk was rung (s).
    pub rung_s: Option<f64>,
    /// Which desk.
    pub desk: Option<String>,
    /// Whether that desk held the whole session (its text and every photo) when it rang.
    pub desk_held_whole: bool,
    /// The E-model's estimate for the requester's path when the router judged it.
    pub gate_mos: Option<f64>,
    /// When the hub's gate (the session's hub's, or a federated hub's) last judged the link, after
    /// listening to its windows of probes (s).
    pub gate_judged_s: Option<f64>,
    /// When the call was connected (s).
    pub connected_s: Option<f64>,
    /// Why a callback was arranged instead, the router's cause
    /// (`sync_protocol::call::CallbackCause::as_str`: `link`, `line closed` (closed now, or
    /// taking no calls), `no rota`, `no answer`, `case not delivered`, `out-of-area hub silent`,
    /// `too many calls`).
    pub callback: Option<String>,
}

/// Totals of one sampling interval.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// End of the interval (hours).
    pub hour: f64,
    /// Bytes on the wire (frames, packet overhead, acknowledgements, retransmissions, handshakes).
    pub wire_bytes: u64,
    /// Payload: Automerge change bytes and photo chunk bytes.
    pub payload_bytes: u64,
    /// Share of links up, per kind of node.
    pub links_up: BTreeMap<String, f64>,
    /// Writes not yet at the hub, per kind of node.
    pub backlog: BTreeMap<String, u64>,
}

/// A violated invariant.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// Which checker.
    pub check: String,
    /// When (s).
    pub at_s: f64,
    /// What.
    pub detail: String,
}

/// Percentiles of a set of durations in seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// How many.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// From unsorted values.
    pub fn of(mut v: Vec<f64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        Percentiles { count: v.len(), p50: at(0.5), p95: at(0.95), p99: at(0.99), max: at(1.0) }
    }
}
