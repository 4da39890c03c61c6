//! The advice given in a session as a plain-text letter, the kind of thing a practice files
//! or an ambulance service attaches to its patient record.

use std::fmt::Write as _;

use sync_protocol::nhs::NhsNumber;
use sync_protocol::session::{Clinician, OutcomeView, SessionView};
use sync_protocol::vocab::{ReceiptLevel, Side};

use crate::render::{describe_step, time};
use sync_protocol::routing::RoutingStep;

use super::codes::say;

/// The letter. `holds` tells whether this node holds a photo's bytes (for the photo list);
/// the letter says what this node held when it was written, and from which node.
pub fn letter(v: &SessionView, holds: &dyn Fn(&str) -> bool, exported_by: &str, now_ms: i64) -> String {
    let mut s = String::new();
    let rule = "=".repeat(72);
    let _ = writeln!(s, "{rule}");
    let _ = writeln!(s, "SPECIALIST ADVICE: {}", say(v.service.line.as_str()).to_uppercase());
    let _ = writeln!(s, "{rule}");
    let patient = match &v.patient.nhs_number {
        Some(n) => {
            let grouped = NhsNumber::parse(n).map(|n| n.grouped()).unwrap_or_else(|_| n.clone());
            let trust = if v.patient.verification.is_trusted() { "verified" } else { "NOT verified" };
            format!("NHS number {grouped} ({trust}: {} {})", v.patient.verification, v.patient.verification.describe())
        }
        None => format!("no NHS number ({})", v.patient.verification.describe()),
    };
    let _ = writeln!(s, "Patient:      {patient}");
    let demographics: Vec<String> = [
        v.patient.name.clone(),
        v.patient.birth_date.clone().map(|d| format!("born {d}")),
        v.patient.sex.clone(),
        v.patient.postcode.clone(),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !demographics.is_empty() {
        let _ = writeln!(s, "              {}", demographics.join(", "));
    }
    let r = &v.requester;
    let requester: Vec<String> = [
        r.role.clone(),
        r.registration.clone(),
        r.org_ods.clone().map(|o| format!("ODS {o}")),
        r.call_sign.clone().map(|c| format!("call-sign {c}")),
        r.incident.clone().map(|i| format!("incident {i}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let _ = writeln!(
        s,
        "Requested:    {} UTC from {} ({}){}",
        time(v.identity.created_ms),
        v.identity.origin,
        say(v.identity.care_setting.as_str()).to_lowercase(),
        if requester.is_empty() { String::new() } else { format!(", {}", requester.join(", ")) }
    );
    let _ = writeln!(
        s,
        "Service:      {} (SNOMED CT {}), by {}, priority {}",
        say(v.service.line.as_str()),
        v.service.snomed,
        v.service.channel,
        say(v.service.priority.as_str()).to_lowercase()
    );
    let _ =
        writeln!(s, "Session:      {} (ICB {}), now {}", v.id, v.identity.icb, say(v.status.as_str()).to_lowercase());
    let _ = writeln!(s);
    let _ = writeln!(s, "QUESTION");
    let _ = writeln!(s, "{}", wrap(&v.summary, 72, ""));

    let advice: Vec<_> = v.messages.iter().filter(|m| m.side == Side::Responder).collect();
    let _ = writeln!(s);
    let _ = writeln!(s, "ADVICE GIVEN");
    if advice.is_empty() {
        let _ = writeln!(s, "No advice has been recorded in this session yet.");
    }
    for m in &advice {
        let _ = writeln!(s, "{} UTC, {}:", time(m.at_ms), person(m.clinician.as_ref(), &m.author));
        let _ = writeln!(s, "{}", wrap(&m.text, 72, "  "));
    }

    let _ = writeln!(s);
    let _ = writeln!(s, "CONVERSATION ({} message(s))", v.messages.len());
    for m in &v.messages {
        let sent = if m.receipt == ReceiptLevel::Device { " [not yet sent beyond its device]" } else { "" };
        let _ = writeln!(s, "{} UTC  {}{sent}", time(m.at_ms), person(m.clinician.as_ref(), &m.author));
        let _ = writeln!(s, "{}", wrap(&m.text, 72, "  "));
    }

    if !v.media.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "PHOTOGRAPHS ({})", v.media.len());
        for m in &v.media {
            let consent = v.consents.iter().find(|c| c.id == m.consent);
            let status = if m.consent_withdrawn {
                "consent WITHDRAWN: image withheld".to_string()
            } else if holds(&m.hash) {
                format!("consent {}", consent.map(|c| c.kind.as_str()).unwrap_or("unknown"))
            } else {
                format!(
                    "consent {}; image kept by the ICB hub, not on {exported_by}",
                    consent.map(|c| c.kind.as_str()).unwrap_or("unknown")
                )
            };
            let _ = writeln!(
                s,
                "{} UTC  {}, {} ({status}; BLAKE3 {}…)",
                time(m.at_ms),
                say(m.view.as_str()),
                m.body_site,
                m.hash.chars().take(12).collect::<String>()
            );
        }
    }

    if !v.routing.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "CALLS (times UTC)");
        for step in RoutingStep::read_all(&v.routing) {
            let _ = writeln!(s, "{}", describe_step(&step));
        }
    }

    let _ = writeln!(s);
    let _ = writeln!(s, "OUTCOME");
    let outcome = |o: &Option<OutcomeView>| match o {
        Some(o) => format!(
            "{} (recorded {} UTC by {})",
            say(o.value.as_str()).to_lowercase(),
            time(o.at_ms),
            person(o.clinician.as_ref(), &o.by)
        ),
        None => "not recorded".to_string(),
    };
    let _ = writeln!(s, "Requester:    {}", outcome(&v.outcome.requester));
    let _ = writeln!(s, "Consultant:   {}", outcome(&v.outcome.responder));
    let _ = writeln!(s);
    let _ = writeln!(s, "{}", "-".repeat(72));
    let _ = writeln!(
        s,
        "{}",
        wrap(
            &format!(
                "Exported by outpost node {exported_by} at {} UTC. This letter shows what that node held \
                 then; the ICB hub keeps the full record.",
                time(now_ms)
            ),
            72,
            ""
        )
    );
    s
}

fn person(c: Option<&Clinician>, node: &str) -> String {
    match c {
        Some(c) => match &c.registration {
            Some(r) => format!("{} ({}, {r})", c.name, c.role),
            None => format!("{} ({})", c.name, c.role),
        },
        None => format!("{node} (no person named)"),
    }
}

/// Wraps text at `width` columns, each line indented.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = Vec::new();
    for para in text.lines() {
        let mut line = String::from(indent);
        for word in para.split_whitespace() {
            if line.len() > indent.len() && line.len() + 1 + word.len() > width {
                out.push(std::mem::replace(&mut line, String::from(indent)));
            }
            if line.len() > indent.len() {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push(line);
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_wraps_at_the_width_and_keeps_every_word() {
        let text = "Likely nodular melanoma: refer on the two-week-wait pathway today; no need to convey.";
        let w = wrap(text, 30, "  ");
        assert!(w.lines().all(|l| l.len() <= 30), "{w}");
        assert_eq!(w.split_whitespace().collect::<Vec<_>>(), text.split_whitespace().collect::<Vec<_>>());
    }
}
