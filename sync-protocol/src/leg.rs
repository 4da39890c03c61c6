//! A party's record of its leg of a connected call: the `leg` entries of a session's call log
//! (`calls`), written once by the requester's node and once by the desk when their side of the
//! call ends. The log stays a list of maps on the wire (a reader keeps what it does not know);
//! this is the one place that names its keys.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::TimeMs;
use crate::session::{LogValue, SessionView};
use crate::vocab::Side;

/// The kind of a leg record in the call log.
pub const LEG_KIND: &str = "leg";

/// How a party's side of a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegEnd {
    /// This party hung up (or its recording ran out).
    Hangup,
    /// The other party hung up (its word, or its leg record, reached this one).
    OtherHungUp,
    /// The other side fell silent: the link dropped, and a callback is requested.
    Dropped,
    /// The longest call a leg carries was reached.
    LongestCall,
    /// A word this version does not know (kept, and shown as written).
    Other(String),
}

impl LegEnd {
    /// As written in the log.
    pub fn as_str(&self) -> &str {
        match self {
            LegEnd::Hangup => "hangup",
            LegEnd::OtherHungUp => "other side hung up",
            LegEnd::Dropped => "dropped",
            LegEnd::LongestCall => "longest call reached",
            LegEnd::Other(s) => s,
        }
    }

    /// From the log's word.
    pub fn parse(s: &str) -> LegEnd {
        match s {
            "hangup" => LegEnd::Hangup,
            "other side hung up" => LegEnd::OtherHungUp,
            "dropped" => LegEnd::Dropped,
            "longest call reached" => LegEnd::LongestCall,
            other => LegEnd::Other(other.to_string()),
        }
    }
}

impl Serialize for LegEnd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One party's record of its leg: who, when, how long, the codec, and what it measured of the
/// audio it received (the figures the E-model's estimate comes from).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Leg {
    /// The escalation's id.
    pub call: String,
    /// The node that recorded it.
    pub node: String,
    /// Its side of the session (absent if the word is unknown).
    pub side: Option<Side>,
    /// When its audio started (its clock, ms).
    pub started_ms: TimeMs,
    /// How long its side lasted, ms.
    pub duration_ms: i64,
    /// The audio codec.
    pub codec: String,
    /// Audio frames it sent.
    pub frames_sent: i64,
    /// Frames it received and played.
    pub frames_received: i64,
    /// Frames it concealed (lost or too late).
    pub frames_concealed: i64,
    /// Frames that arrived too late to play.
    pub frames_late: i64,
    /// Share of frames concealed over frames played.
    pub loss: f64,
    /// Interarrival jitter (RFC 3550), ms.
    pub jitter_ms: f64,
    /// Longest stretch without audio, ms.
    pub longest_gap_ms: i64,
    /// Round-trip time, ms.
    pub rtt_ms: f64,
    /// Estimated mean opinion score (E-model).
    pub mos: f64,
    /// How it ended.
    pub end: LegEnd,
    /// When the record was written (the log's own time; 0 for a record not yet written).
    pub at_ms: TimeMs,
    /// Figures the record lacked (a record written by another version): they read as 0 above,
    /// and [`Leg::figure`] gives none for them, so that no export reports a 0 never measured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<&'static str>,
}

/// The figures of a leg record, by their keys.
pub const FIGURES: [&str; 11] = [
    "duration_ms",
    "frames_sent",
    "frames_received",
    "frames_concealed",
    "frames_late",
    "loss",
    "jitter_ms",
    "longest_gap_ms",
    "rtt_ms",
    "mos",
    "started_ms",
];

impl Leg {
    /// The log entry's fields (the log adds `kind` and `at_ms`), figures rounded for people.
    pub fn fields(&self) -> Vec<(&'static str, LogValue)> {
        let round = |v: f64, places: i32| {
            let k = 10f64.powi(places);
            (v * k).round() / k
        };
        let mut f = vec![("call", LogValue::Str(self.call.clone())), ("node", LogValue::Str(self.node.clone()))];
        if let Some(side) = self.side {
            f.push(("side", LogValue::Str(side.as_str().to_string())));
        }
        f.extend([
            ("started_ms", LogValue::Int(self.started_ms)),
            ("duration_ms", LogValue::Int(self.duration_ms)),
            ("codec", LogValue::Str(self.codec.clone())),
            ("frames_sent", LogValue::Int(self.frames_sent)),
            ("frames_received", LogValue::Int(self.frames_received)),
            ("frames_concealed", LogValue::Int(self.frames_concealed)),
            ("frames_late", LogValue::Int(self.frames_late)),
            ("loss", LogValue::Float(round(self.loss, 4))),
            ("jitter_ms", LogValue::Float(round(self.jitter_ms, 1))),
            ("longest_gap_ms", LogValue::Int(self.longest_gap_ms)),
            ("rtt_ms", LogValue::Float(round(self.rtt_ms, 1))),
            ("mos", LogValue::Float(round(self.mos, 2))),
            ("end", LogValue::Str(self.end.as_str().to_string())),
        ]);
        f
    }

    /// A call-log entry read as a leg record: `None` for an entry of another kind, or one
    /// without the call, the node or how it ended. Figures missing from a record read as 0 and
    /// are listed in `absent`.
    pub fn from_entry(e: &BTreeMap<String, LogValue>) -> Option<Leg> {
        let text = |k: &str| e.get(k).and_then(LogValue::as_str);
        if text("kind") != Some(LEG_KIND) {
            return None;
        }
        let int = |k: &str| match e.get(k) {
            Some(LogValue::Int(i)) => *i,
            Some(LogValue::Float(f)) => *f as i64,
            _ => 0,
        };
        let float = |k: &str| match e.get(k) {
            Some(LogValue::Float(f)) => *f,
            Some(LogValue::Int(i)) => *i as f64,
            _ => 0.0,
        };
        Some(Leg {
            call: text("call")?.to_string(),
            node: text("node")?.to_string(),
            side: text("side").and_then(|s| Side::parse(s).ok()),
            started_ms: int("started_ms"),
            duration_ms: int("duration_ms"),
            codec: text("codec").unwrap_or_default().to_string(),
            frames_sent: int("frames_sent"),
            frames_received: int("frames_received"),
            frames_concealed: int("frames_concealed"),
            frames_late: int("frames_late"),
            loss: float("loss"),
            jitter_ms: float("jitter_ms"),
            longest_gap_ms: int("longest_gap_ms"),
            rtt_ms: float("rtt_ms"),
            mos: float("mos"),
            end: LegEnd::parse(text("end")?),
            at_ms: int("at_ms"),
            absent: FIGURES
                .into_iter()
                .filter(|k| !matches!(e.get(*k), Some(LogValue::Int(_) | LogValue::Float(_))))
                .collect(),
        })
    }

    /// A figure of the record by its code (`mos`, `loss`, `jitter_ms`, `rtt_ms`,
    /// `longest_gap_ms`, `duration_ms`, or a frame count), as a number.
    pub fn figure(&self, code: &str) -> Option<f64> {
        if self.absent.contains(&code) {
            return None;
        }
        Some(match code {
            "mos" => self.mos,
            "loss" => self.loss,
            "jitter_ms" => self.jitter_ms,
            "rtt_ms" => self.rtt_ms,
            "longest_gap_ms" => self.longest_gap_ms as f64,
            "duration_ms" => self.duration_ms as f64,
            "frames_sent" => self.frames_sent as f64,
            "frames_received" => self.frames_received as f64,
            "frames_concealed" => self.frames_concealed as f64,
            "frames_late" => self.frames_late as f64,
            _ => return None,
        })
    }
}

/// Every leg record of a call log, in order (other entries skipped).
pub fn legs_in(log: &[BTreeMap<String, LogValue>]) -> Vec<Leg> {
    log.iter().filter_map(Leg::from_entry).collect()
}

/// Every leg record of a session.
pub fn legs_of(view: &SessionView) -> Vec<Leg> {
    legs_in(&view.calls)
}

/// The record of `call`'s leg written by the party other than `me`: the desk connected if `me`
/// asked for the call, else the node that asked for it. Another node the session is shared
/// with may write a leg record of its own (the rules hold it to its own name), but it is no
/// party's word: taken for the other party's, a leg saying "hung up" ended the call here and
/// kept the callback a dropped call owes from being asked for.
pub fn other_party_leg(
    routing: &[BTreeMap<String, LogValue>],
    calls: &[BTreeMap<String, LogValue>],
    call: &str,
    me: &str,
) -> Option<Leg> {
    let c = crate::call::calls_in(routing).into_iter().find(|c| c.call == call)?;
    let other = if c.by == me { c.connected.map(|(desk, _)| desk)? } else { c.by };
    legs_in(calls).into_iter().find(|l| l.call == call && l.node == other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg() -> Leg {
        Leg {
            call: "call-1".into(),
            node: "amb-07".into(),
            side: Some(Side::Requester),
            started_ms: 1_000,
            duration_ms: 42_000,
            codec: "IMA-ADPCM 32k".into(),
            frames_sent: 2_100,
            frames_received: 2_090,
            frames_concealed: 10,
            frames_late: 2,
            loss: 0.00477,
            jitter_ms: 3.26,
            longest_gap_ms: 60,
            rtt_ms: 48.26,
            mos: 4.234,
            end: LegEnd::Hangup,
            at_ms: 0,
            absent: Vec::new(),
        }
    }

    fn entry(fields: &[(&str, LogValue)], at_ms: i64) -> BTreeMap<String, LogValue> {
        let mut e: BTreeMap<String, LogValue> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        e.insert("kind".into(), LogValue::Str(LEG_KIND.into()));
        e.insert("at_ms".into(), LogValue::Int(at_ms));
        e
    }

    #[test]
    fn only_the_other_partys_leg_record_is_its_word() {
        use crate::routing::RoutingEntry as E;
        let step = |e: E, at_ms: i64| {
            let mut m: BTreeMap<String, LogValue> = e.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            m.insert("kind".into(), LogValue::Str(e.kind().as_str().to_string()));
            m.insert("at_ms".into(), LogValue::Int(at_ms));
            m
        };
        let routing = vec![
            step(E::Escalate { call: "call-1".into(), by: "amb-07".into() }, 1),
            step(
                E::Connected {
                    call: "call-1".into(),
                    desk: "desk-a".into(),
                    attempt: 1,
                    seen: None,
                    ms_from_ring: None,
                },
                2,
            ),
        ];
        let by = |node: &str, end: LegEnd| entry(&Leg { node: node.into(), end, ..leg() }.fields(), 3);
        // A tablet the session is shared with writes that the call was hung up.
        let mut calls = vec![by("amb-66", LegEnd::Hangup)];
        assert_eq!(other_party_leg(&routing, &calls, "call-1", "amb-07"), None, "the crew's other party is the desk");
        assert_eq!(other_party_leg(&routing, &calls, "call-1", "desk-a"), None, "the desk's other party is the crew");
        calls.push(by("desk-a", LegEnd::Dropped));
        calls.push(by("amb-07", LegEnd::Hangup));
        let end = |me| other_party_leg(&routing, &calls, "call-1", me).map(|l| (l.node, l.end));
        assert_eq!(end("amb-07"), Some(("desk-a".to_string(), LegEnd::Dropped)));
        assert_eq!(end("desk-a"), Some(("amb-07".to_string(), LegEnd::Hangup)));
    }

    #[test]
    fn a_leg_written_reads_back_as_written_with_its_figures_rounded() {
        let read = Leg::from_entry(&entry(&leg().fields(), 43_500)).expect("a leg");
        let expected = Leg { loss: 0.0048, jitter_ms: 3.3, rtt_ms: 48.3, mos: 4.23, at_ms: 43_500, ..leg() };
        assert_eq!(read, expected);
        assert_eq!(read.figure("mos"), Some(4.23));
        assert_eq!(read.figure("colour"), None);
    }

    #[test]
    fn a_figure_missing_from_a_record_is_none_not_zero() {
        let mut fields = leg().fields();
        fields.retain(|(k, _)| !matches!(*k, "mos" | "jitter_ms"));
        let read = Leg::from_entry(&entry(&fields, 7)).expect("a leg");
        assert_eq!(read.absent, ["jitter_ms", "mos"]);
        assert_eq!(read.figure("mos"), None, "an export must not report a MOS of 0 never measured");
        assert_eq!(read.figure("jitter_ms"), None);
        assert_eq!(read.figure("rtt_ms"), Some(48.3));
        assert!(Leg::from_entry(&entry(&leg().fields(), 7)).expect("a leg").absent.is_empty());
    }

    #[test]
    fn an_end_this_version_does_not_know_is_kept_and_other_kinds_are_not_legs() {
        let mut fields = leg().fields();
        fields.retain(|(k, _)| *k != "end");
        fields.push(("end", LogValue::Str("transferred".into())));
        let read = Leg::from_entry(&entry(&fields, 1)).expect("a leg");
        assert_eq!(read.end, LegEnd::Other("transferred".into()));
        assert_eq!(read.end.as_str(), "transferred");
        let mut other = entry(&leg().fields(), 1);
        other.insert("kind".into(), LogValue::Str("connected".into()));
        assert_eq!(Leg::from_entry(&other), None);
        let mut no_end = entry(&leg().fields(), 1);
        no_end.remove("end");
        assert_eq!(Leg::from_entry(&no_end), None, "a record that says not how it ended is no leg record");
        assert_eq!(legs_in(&[other, entry(&leg().fields(), 2)]).len(), 1);
    }
}
