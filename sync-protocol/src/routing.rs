//! The routing log's entries, typed: the one place that names their keys (`docs/schema.md`,
//! "Routing-log entries"; the table in [`crate::call`]). Writers build a [`RoutingEntry`] and
//! write its [`RoutingEntry::fields`]; readers take entries with [`RoutingEntry::read`]. A kind
//! this version does not know (a newer node's) is kept as [`RoutingEntry::Other`]; a field
//! missing from a known kind reads as its default (an empty name, attempt 0, the default ring
//! time), as the readers always have.

use std::collections::BTreeMap;

use crate::TimeMs;
use crate::call::{DEFAULT_RING_S, PathQuality, Rating, RoutingKind};
use crate::session::LogValue;

/// The link gate's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A call is possible: the desks may ring.
    Call,
    /// The path cannot carry a call: a callback instead.
    Callback,
    /// A word this version does not know.
    Other(String),
}

impl Verdict {
    /// The verdict as the log stores it.
    pub fn as_str(&self) -> &str {
        match self {
            Verdict::Call => "call",
            Verdict::Callback => "callback",
            Verdict::Other(w) => w,
        }
    }

    fn parse(text: &str) -> Verdict {
        match text {
            "call" => Verdict::Call,
            "callback" => Verdict::Callback,
            other => Verdict::Other(other.to_string()),
        }
    }
}

/// The figures behind the link gate's verdict, rounded for people as they are logged.
#[derive(Debug, Clone, PartialEq)]
pub struct GateFigures {
    /// Whether a call is possible.
    pub verdict: Verdict,
    /// Estimated MOS (two decimals).
    pub mos: f64,
    /// The E-model's R factor (one decimal).
    pub r: f64,
    /// Mean round trip, ms (one decimal).
    pub rtt_ms: f64,
    /// Jitter, ms (one decimal).
    pub jitter_ms: f64,
    /// Share of probes lost (three decimals).
    pub loss: f64,
    /// Probes sent.
    pub probes: u32,
    /// Why a callback (empty when a call is possible).
    pub reason: String,
}

impl GateFigures {
    /// The figures of a rating and the measured path, rounded as logged.
    pub fn of(verdict: Verdict, r: &Rating, q: &PathQuality, reason: &str) -> Self {
        GateFigures {
            verdict,
            mos: (r.mos * 100.0).round() / 100.0,
            r: (r.r * 10.0).round() / 10.0,
            rtt_ms: (q.rtt_ms * 10.0).round() / 10.0,
            jitter_ms: (q.jitter_ms * 10.0).round() / 10.0,
            loss: (q.loss * 1000.0).round() / 1000.0,
            probes: q.probes,
            reason: reason.to_string(),
        }
    }
}

/// From when a connection's set-up time is measured on the connecting hub's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// The request reaching the session's hub (`ms_from_escalate`).
    Escalate,
    /// The hand-over reaching a federated hub (`ms_from_handover`).
    Handover,
}

impl Since {
    /// The field it is logged in.
    pub fn key(self) -> &'static str {
        match self {
            Since::Escalate => "ms_from_escalate",
            Since::Handover => "ms_from_handover",
        }
    }
}

/// One routing-log entry.
#[derive(Debug, Clone, PartialEq)]
pub enum RoutingEntry {
    /// The requester asked for a call.
    Escalate {
        /// The call.
        call: String,
        /// The requester's node.
        by: String,
    },
    /// The hub measured the requester's link.
    Gate {
        /// The call.
        call: String,
        /// The verdict and its figures.
        figures: GateFigures,
    },
    /// The hub rang a desk.
    Ring {
        /// The call.
        call: String,
        /// The desk rung.
        desk: String,
        /// Which ring of the call (from 1).
        attempt: u32,
        /// How long it rings, seconds.
        ring_s: u32,
    },
    /// The desk answered.
    Answer {
        /// The call.
        call: String,
        /// The desk.
        desk: String,
        /// The ring answered.
        attempt: u32,
    },
    /// The desk did not answer in its ring time.
    NoAnswer {
        /// The call.
        call: String,
        /// The desk.
        desk: String,
        /// The ring not answered.
        attempt: u32,
    },
    /// The call was handed to another ICB's hub.
    Federate {
        /// The call.
        call: String,
        /// The other ICB's hub, taking over.
        hub: String,
        /// The hub that handed it over.
        from: String,
    },
    /// The call was connected.
    Connected {
        /// The call.
        call: String,
        /// The desk connected.
        desk: String,
        /// The ring answered.
        attempt: u32,
        /// From when `ms_from_seen` counts, and how long it took (if logged).
        seen: Option<(Since, i64)>,
        /// From the ring to the connection, ms (if logged).
        ms_from_ring: Option<i64>,
    },
    /// A callback was arranged instead.
    Callback {
        /// The call.
        call: String,
        /// Why.
        reason: String,
        /// The estimated MOS, when the link was the reason.
        mos: Option<f64>,
        /// The party that asked for it (after a dropped call), if one did.
        by: Option<String>,
    },
    /// A kind this version does not know.
    Other {
        /// Its kind.
        kind: String,
        /// Its call, if it names one.
        call: Option<String>,
    },
}

impl RoutingEntry {
    /// The entry's kind.
    pub fn kind(&self) -> RoutingKind {
        match self {
            RoutingEntry::Escalate { .. } => RoutingKind::Escalate,
            RoutingEntry::Gate { .. } => RoutingKind::Gate,
            RoutingEntry::Ring { .. } => RoutingKind::Ring,
            RoutingEntry::Answer { .. } => RoutingKind::Answer,
            RoutingEntry::NoAnswer { .. } => RoutingKind::NoAnswer,
            RoutingEntry::Federate { .. } => RoutingKind::Federate,
            RoutingEntry::Connected { .. } => RoutingKind::Connected,
            RoutingEntry::Callback { .. } => RoutingKind::Callback,
            RoutingEntry::Other { kind, .. } => RoutingKind::Other(kind.clone()),
        }
    }

    /// The call the entry is about.
    pub fn call(&self) -> Option<&str> {
        match self {
            RoutingEntry::Escalate { call, .. }
            | RoutingEntry::Gate { call, .. }
            | RoutingEntry::Ring { call, .. }
            | RoutingEntry::Answer { call, .. }
            | RoutingEntry::NoAnswer { call, .. }
            | RoutingEntry::Federate { call, .. }
            | RoutingEntry::Connected { call, .. }
            | RoutingEntry::Callback { call, .. } => Some(call),
            RoutingEntry::Other { call, .. } => call.as_deref(),
        }
    }

    /// The entry's fields as the log stores them (besides `kind` and `at_ms`), `call` first.
    pub fn fields(&self) -> Vec<(&'static str, LogValue)> {
        let text = |s: &str| LogValue::Str(s.to_string());
        let int = |n: u32| LogValue::Int(i64::from(n));
        match self {
            RoutingEntry::Escalate { call, by } => vec![("call", text(call)), ("by", text(by))],
            RoutingEntry::Gate { call, figures: g } => {
                let mut v = vec![
                    ("call", text(call)),
                    ("verdict", text(g.verdict.as_str())),
                    ("mos", LogValue::Float(g.mos)),
                    ("r", LogValue::Float(g.r)),
                    ("rtt_ms", LogValue::Float(g.rtt_ms)),
                    ("jitter_ms", LogValue::Float(g.jitter_ms)),
                    ("loss", LogValue::Float(g.loss)),
                    ("probes", int(g.probes)),
                ];
                if !g.reason.is_empty() {
                    v.push(("reason", text(&g.reason)));
                }
                v
            }
            RoutingEntry::Ring { call, desk, attempt, ring_s } => {
                vec![("call", text(call)), ("desk", text(desk)), ("attempt", int(*attempt)), ("ring_s", int(*ring_s))]
            }
            RoutingEntry::Answer { call, desk, attempt } | RoutingEntry::NoAnswer { call, desk, attempt } => {
                vec![("call", text(call)), ("desk", text(desk)), ("attempt", int(*attempt))]
            }
            RoutingEntry::Federate { call, hub, from } => {
                vec![("call", text(call)), ("hub", text(hub)), ("from", text(from))]
            }
            RoutingEntry::Connected { call, desk, attempt, seen, ms_from_ring } => {
                let mut v = vec![("call", text(call)), ("desk", text(desk)), ("attempt", int(*attempt))];
                if let Some((since, ms)) = seen {
                    v.push((since.key(), LogValue::Int(*ms)));
                }
                if let Some(ms) = ms_from_ring {
                    v.push(("ms_from_ring", LogValue::Int(*ms)));
                }
                v
            }
            RoutingEntry::Callback { call, reason, mos, by } => {
                let mut v = vec![("call", text(call)), ("reason", text(reason))];
                if let Some(m) = mos {
                    v.push(("mos", LogValue::Float(*m)));
                }
                if let Some(b) = by {
                    v.push(("by", text(b)));
                }
                v
            }
            RoutingEntry::Other { call, .. } => call.iter().map(|c| ("call", text(c))).collect(),
        }
    }

    /// A stored entry and its time (`None` for an entry with no kind).
    pub fn read(e: &BTreeMap<String, LogValue>) -> Option<(RoutingEntry, TimeMs)> {
        let kind = RoutingKind::of(e)?;
        let text = |k: &str| e.get(k).and_then(LogValue::as_str).map(str::to_string);
        let name = |k: &str| text(k).unwrap_or_default();
        let int = |k: &str| match e.get(k) {
            Some(LogValue::Int(v)) => Some(*v),
            Some(LogValue::Float(f)) => Some(*f as i64),
            _ => None,
        };
        let float = |k: &str| match e.get(k) {
            Some(LogValue::Float(v)) => Some(*v),
            Some(LogValue::Int(v)) => Some(*v as f64),
            _ => None,
        };
        let count = |k: &str| int(k).map_or(0, |v| v.clamp(0, i64::from(u32::MAX)) as u32);
        let call = name("call");
        let entry = match kind {
            RoutingKind::Escalate => RoutingEntry::Escalate { call, by: name("by") },
            RoutingKind::Gate => RoutingEntry::Gate {
                call,
                figures: GateFigures {
                    verdict: Verdict::parse(&name("verdict")),
                    mos: float("mos").unwrap_or(0.0),
                    r: float("r").unwrap_or(0.0),
                    rtt_ms: float("rtt_ms").unwrap_or(0.0),
                    jitter_ms: float("jitter_ms").unwrap_or(0.0),
                    loss: float("loss").unwrap_or(0.0),
                    probes: count("probes"),
                    reason: name("reason"),
                },
            },
            RoutingKind::Ring => RoutingEntry::Ring {
                call,
                desk: name("desk"),
                attempt: count("attempt"),
                ring_s: int("ring_s").map_or(DEFAULT_RING_S, |v| v.clamp(0, i64::from(u32::MAX)) as u32),
            },
            RoutingKind::Answer => RoutingEntry::Answer { call, desk: name("desk"), attempt: count("attempt") },
            RoutingKind::NoAnswer => RoutingEntry::NoAnswer { call, desk: name("desk"), attempt: count("attempt") },
            RoutingKind::Federate => RoutingEntry::Federate { call, hub: name("hub"), from: name("from") },
            RoutingKind::Connected => RoutingEntry::Connected {
                call,
                desk: name("desk"),
                attempt: count("attempt"),
                seen: [Since::Handover, Since::Escalate].into_iter().find_map(|s| int(s.key()).map(|ms| (s, ms))),
                ms_from_ring: int("ms_from_ring"),
            },
            RoutingKind::Callback => {
                RoutingEntry::Callback { call, reason: name("reason"), mos: float("mos"), by: text("by") }
            }
            RoutingKind::Other(kind) => RoutingEntry::Other { kind, call: text("call") },
        };
        Some((entry, int("at_ms").unwrap_or(0)))
    }
}

/// A routing-log entry with its time: what `call status --json` prints, one flat object per
/// entry (`at_ms`, `kind`, then the kind's own fields as [`RoutingEntry::fields`] names them;
/// docs/schema.md, "Routing-log entries"). A field the entry was stored without is written with
/// the value it reads as.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingStep {
    /// When it was logged (ms since the epoch, the logging node's clock).
    pub at_ms: TimeMs,
    /// What happened.
    pub entry: RoutingEntry,
}

impl RoutingStep {
    /// The typed steps of a stored log, in its order (an entry with no kind is left out).
    pub fn read_all(log: &[BTreeMap<String, LogValue>]) -> Vec<RoutingStep> {
        log.iter().filter_map(RoutingEntry::read).map(|(entry, at_ms)| RoutingStep { at_ms, entry }).collect()
    }
}

impl serde::Serialize for RoutingStep {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let fields = self.entry.fields();
        let mut m = s.serialize_map(Some(fields.len() + 2))?;
        m.serialize_entry("at_ms", &self.at_ms)?;
        m.serialize_entry("kind", self.entry.kind().as_str())?;
        for (k, v) in &fields {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(e: &RoutingEntry, at: TimeMs) -> BTreeMap<String, LogValue> {
        let mut m: BTreeMap<String, LogValue> = e.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        m.insert("kind".into(), LogValue::Str(e.kind().as_str().to_string()));
        m.insert("at_ms".into(), LogValue::Int(at));
        m
    }

    #[test]
    fn every_kind_reads_back_as_written() {
        let figures = GateFigures {
            verdict: Verdict::Callback,
            mos: 2.41,
            r: 48.2,
            rtt_ms: 812.5,
            jitter_ms: 40.1,
            loss: 0.087,
            probes: 20,
            reason: "the link cannot carry a call".into(),
        };
        let c = || "c-1".to_string();
        let all = [
            RoutingEntry::Escalate { call: c(), by: "amb-07".into() },
            RoutingEntry::Gate { call: c(), figures },
            RoutingEntry::Ring { call: c(), desk: "desk-1".into(), attempt: 2, ring_s: 25 },
            RoutingEntry::Answer { call: c(), desk: "desk-1".into(), attempt: 2 },
            RoutingEntry::NoAnswer { call: c(), desk: "desk-2".into(), attempt: 1 },
            RoutingEntry::Federate { call: c(), hub: "hub-qox".into(), from: "hub-qhm".into() },
            RoutingEntry::Connected {
                call: c(),
                desk: "desk-1".into(),
                attempt: 2,
                seen: Some((Since::Handover, 5_200)),
                ms_from_ring: Some(900),
            },
            RoutingEntry::Callback { call: c(), reason: "dropped".into(), mos: None, by: Some("desk-1".into()) },
            RoutingEntry::Other { kind: "transfer".into(), call: Some(c()) },
        ];
        for (k, e) in all.iter().enumerate() {
            let at = 1_000 + k as i64;
            assert_eq!(RoutingEntry::read(&stored(e, at)), Some((e.clone(), at)), "{e:?}");
            assert_eq!(e.call(), Some("c-1"));
        }
    }

    #[test]
    fn a_step_prints_as_one_flat_object_with_its_time_kind_and_fields() {
        let mut log =
            vec![stored(&RoutingEntry::Ring { call: "c-1".into(), desk: "desk-1".into(), attempt: 2, ring_s: 25 }, 7)];
        let mut bare = BTreeMap::new();
        bare.insert("kind".to_string(), LogValue::Str("callback".into()));
        bare.insert("call".to_string(), LogValue::Str("c-1".into()));
        log.push(bare);
        log.push(BTreeMap::new());
        let steps = RoutingStep::read_all(&log);
        assert_eq!(steps.len(), 2, "an entry with no kind is left out");
        let json = serde_json::to_value(&steps).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"at_ms": 7, "kind": "ring", "call": "c-1", "desk": "desk-1", "attempt": 2, "ring_s": 25},
                {"at_ms": 0, "kind": "callback", "call": "c-1", "reason": ""},
            ])
        );
    }

    #[test]
    fn missing_fields_read_as_their_defaults_and_an_entry_without_a_kind_is_none() {
        let mut m = BTreeMap::new();
        m.insert("kind".to_string(), LogValue::Str("ring".into()));
        let (e, at) = RoutingEntry::read(&m).unwrap();
        assert_eq!(
            e,
            RoutingEntry::Ring { call: String::new(), desk: String::new(), attempt: 0, ring_s: DEFAULT_RING_S }
        );
        assert_eq!(at, 0);
        m.remove("kind");
        assert_eq!(RoutingEntry::read(&m), None);
    }
}
