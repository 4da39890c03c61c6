//! Text for people: session cards, a session in full, call steps, the directory, sizes and
//! times. Shared by the CLI, the demo and the local API.

use std::io::Write;

use sync_protocol::NhsNumber;
use sync_protocol::directory::{DirectoryView, LineJson, LineRefusal};
use sync_protocol::session::SessionView;

use crate::store::SessionCard;

/// A byte count for people.
pub fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f < K {
        format!("{n} B")
    } else if f < K * K {
        format!("{:.1} KiB", f / K)
    } else if f < K * K * K {
        format!("{:.1} MiB", f / K / K)
    } else {
        format!("{:.2} GiB", f / K / K / K)
    }
}

/// A duration for people, to the largest whole unit: `40 s`, `12 min`, `5 h`, `29 days`.
pub fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// A time for people: `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").trim_end_matches('Z').to_string()
}

pub fn print_cards(cards: &[SessionCard]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if cards.is_empty() {
        writeln!(out, "no sessions")?;
    }
    for c in cards {
        let pending =
            if c.on_device_only > 0 { format!(", {} on this device only", c.on_device_only) } else { String::new() };
        writeln!(
            out,
            "{}  {}  {:<16} {:<13} {:<15} {} msg, {} photo{}  {}",
            c.id,
            time(c.updated_ms),
            c.status.as_str(),
            c.priority.as_str(),
            c.service_line.as_str(),
            c.messages,
            c.photos,
            pending,
            ellipsis(&c.summary, 48)
        )?;
    }
    Ok(())
}

pub fn ellipsis(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() <= max {
        line.to_string()
    } else {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    }
}

/// The text form of `outpost session show`.
pub fn render_session(v: &SessionView, this_node: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "session {}  [{}]", v.id, v.status);
    let _ = writeln!(
        s,
        "  {} ({}), {}, {} · created {} by {} ({}), ICB {}",
        v.service.line,
        v.service.snomed,
        v.service.priority,
        v.service.channel,
        time(v.identity.created_ms),
        v.identity.origin,
        v.identity.care_setting,
        v.identity.icb
    );
    let patient = match &v.patient.nhs_number {
        Some(n) => {
            let grouped = NhsNumber::parse(n).map(|n| n.grouped()).unwrap_or_else(|_| n.clone());
            format!("NHS {grouped} (verification {}: {})", v.patient.verification, v.patient.verification.describe())
        }
        None => format!("no NHS number ({})", v.patient.verification.describe()),
    };
    let _ =
        writeln!(s, "  patient: {patient}{}", v.patient.name.as_deref().map(|n| format!(", {n}")).unwrap_or_default());
    let r = &v.requester;
    let who: Vec<String> = [
        r.role.clone(),
        r.registration.clone().map(|x| format!("reg {x}")),
        r.org_ods.clone().map(|x| format!("org {x}")),
        r.call_sign.clone().map(|x| format!("call-sign {x}")),
        r.incident.clone().map(|x| format!("incident {x}")),
        r.callback.clone().map(|x| format!("callback {x}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !who.is_empty() {
        let _ = writeln!(s, "  requester: {}", who.join(", "));
    }
    let _ = writeln!(s, "  summary: {}", v.summary);
    if v.reopened > 0 {
        let _ = writeln!(s, "  reopened {} time(s)", v.reopened);
    }
    let _ = writeln!(s, "  messages ({}):", v.messages.len());
    for m in &v.messages {
        let receipt = if m.author == this_node { m.receipt.describe() } else { "received" };
        let _ = writeln!(s, "    {}  {} ({}): {}", time(m.at_ms), m.author, m.side, m.text);
        let _ = writeln!(s, "        {}  [{}]", m.id, receipt);
    }
    let _ = writeln!(s, "  photos ({}):", v.media.len());
    for m in &v.media {
        let consent = v.consents.iter().find(|c| c.id == m.consent);
        let consent = match consent {
            Some(c) if c.withdrawn.is_some() => format!("consent {} WITHDRAWN", c.kind),
            Some(c) => format!("consent {} ({})", c.kind, c.scope),
            None => "consent unknown".to_string(),
        };
        let dims = match (m.width, m.height) {
            (Some(w), Some(h)) => format!(", {w}x{h}"),
            _ => String::new(),
        };
        let receipt = if m.added_by == this_node { m.receipt.describe() } else { "received" };
        let _ =
            writeln!(s, "    {}  {}, {}: {}{}, {}", time(m.at_ms), m.view, m.body_site, bytes(m.size), dims, consent);
        let _ = writeln!(s, "        {}  [{}]", m.hash, receipt);
    }
    let side = |o: &Option<sync_protocol::session::OutcomeView>| match o {
        Some(o) => format!("{} (by {} at {})", o.value, o.by, time(o.at_ms)),
        None => "not recorded".to_string(),
    };
    let _ =
        writeln!(s, "  outcome: requester {}; responder {}", side(&v.outcome.requester), side(&v.outcome.responder));
    s
}

/// A call leg's record as a line; a figure the record lacks reads "not recorded", never 0.
pub fn describe_leg(l: &sync_protocol::leg::Leg) -> String {
    let n = |code: &str, places: usize| match l.figure(code) {
        Some(v) => format!("{v:.places$}"),
        None => "not recorded".to_string(),
    };
    format!(
        "call ended ({}): {} ms; frames sent {}, received {}, concealed {}; loss {}, jitter {} ms, round trip {} ms; estimated MOS {}",
        l.end.as_str(),
        n("duration_ms", 0),
        n("frames_sent", 0),
        n("frames_received", 0),
        n("frames_concealed", 0),
        n("loss", 3),
        n("jitter_ms", 3),
        n("rtt_ms", 3),
        n("mos", 3)
    )
}

/// One routing-log entry as a line for a clinician.
pub fn describe_step(step: &sync_protocol::routing::RoutingStep) -> String {
    use sync_protocol::routing::{RoutingEntry as E, Since, Verdict};
    // An entry stored without its time reads as 0: no time is shown for it.
    let at = if step.at_ms > 0 { time(step.at_ms) } else { String::new() };
    let what = match &step.entry {
        E::Escalate { by, .. } => format!("{by} asked for a call"),
        E::Gate { figures: g, .. } if g.verdict == Verdict::Call => format!(
            "link checked: estimated MOS {:.2} (round trip {:.2} ms, jitter {:.2} ms, loss {:.2}): a call is possible",
            g.mos, g.rtt_ms, g.jitter_ms, g.loss
        ),
        E::Gate { figures: g, .. } => format!("link checked: {}", g.reason),
        E::Ring { desk, attempt, ring_s, .. } => format!("ringing {desk} (attempt {attempt}, {ring_s} s)"),
        E::Answer { desk, .. } => format!("{desk} answered"),
        E::NoAnswer { desk, .. } => format!("{desk} did not answer"),
        E::Connected { desk, seen: Some((Since::Handover, ms)), .. } => {
            format!("connected to {desk} ({ms} ms after the hand-over reached its hub)")
        }
        E::Connected { desk, seen, .. } => format!(
            "connected to {desk} ({} ms after the request reached the hub)",
            seen.map(|(_, ms)| ms.to_string()).unwrap_or_default()
        ),
        E::Callback { reason, .. } => format!("callback arranged: {reason}"),
        E::Federate { hub, .. } => format!("no answer in area: handed to {hub}'s line (out of area)"),
        E::Other { kind, .. } => kind.clone(),
    };
    format!("{at}  {what}")
}

/// A directory as JSON (`rota show --json`, `GET /api/directory`).
/// An ICB's directory as `rota show --json` and `GET /api/directory` give it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DirectoryJson {
    /// The ICB.
    pub icb: String,
    /// The last edit (ms since the epoch).
    pub updated_ms: i64,
    /// `own` on the hub that keeps it; `hub` for a copy received from the hub.
    pub source: &'static str,
    /// The service lines.
    pub lines: Vec<LineJson>,
}

impl DirectoryJson {
    /// The directory as shown.
    pub fn of(view: &DirectoryView, own: bool) -> Self {
        DirectoryJson {
            icb: view.icb.clone(),
            updated_ms: view.updated_ms,
            source: if own { "own" } else { "hub" },
            lines: view.lines.values().map(LineJson::from).collect(),
        }
    }
}

pub fn print_directory(view: &DirectoryView, own: bool, now: i64) {
    let whose = if own { "kept here" } else { "copy received from the hub" };
    println!("directory of ICB {} ({whose}; last set {})", view.icb, time(view.updated_ms));
    if view.lines.is_empty() {
        println!("no service lines: escalations end in a callback");
    }
    for e in view.lines.values() {
        let channels: Vec<&str> = e.channels.iter().map(|c| c.as_str()).collect();
        let state = match e.call_refusal(now) {
            None => "calls now",
            Some(LineRefusal::NoCalls { .. }) => "no calls",
            Some(LineRefusal::Closed { .. }) => "closed now",
        };
        println!(
            "{:<20} SNOMED CT {:<10} hours {}  channels {}  ({state})",
            e.line.as_str(),
            e.line.snomed(),
            e.hours,
            channels.join(",")
        );
        let mut list: Vec<String> = e.rota.iter().map(|d| format!("{} ({} s)", d.desk, d.ring_s)).collect();
        if let Some(hub) = &e.fallback_hub {
            list.push(format!("out of area: {hub}"));
        }
        if list.is_empty() {
            list.push("none".into());
        }
        println!("{:<20} rota: {}", "", list.join(" -> "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_protocol::leg::{Leg, LegEnd};

    #[test]
    fn a_leg_record_lacking_its_mos_shows_not_recorded_rather_than_zero() {
        let mut leg = Leg {
            call: "c1".into(),
            node: "desk-a".into(),
            side: None,
            started_ms: 0,
            duration_ms: 61_000,
            codec: "adpcm-32k".into(),
            frames_sent: 3050,
            frames_received: 3040,
            frames_concealed: 10,
            frames_late: 0,
            loss: 0.0033,
            jitter_ms: 2.5,
            longest_gap_ms: 60,
            rtt_ms: 48.3,
            mos: 0.0,
            end: LegEnd::Hangup,
            at_ms: 0,
            absent: vec!["mos"],
        };
        let line = describe_leg(&leg);
        assert!(line.contains("estimated MOS not recorded"), "{line}");
        assert!(line.contains("round trip 48.300 ms"), "{line}");
        leg.absent.clear();
        leg.mos = 4.2;
        assert!(describe_leg(&leg).contains("estimated MOS 4.200"));
    }
}
