//! The calls of a session in the bundle: each escalation a `Task` (part of the session's),
//! each ring of a desk a `Task` part of the escalation's, a call that connected an `Encounter`
//! (virtual), each party's figures an `Observation` of it.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use sync_protocol::call::RoutingKind;
use sync_protocol::leg::{Leg, legs_of};
use sync_protocol::routing::RoutingEntry;
use sync_protocol::session::{LogValue, SessionView};

use super::super::codes::{self, coding, id_system, profile};
use super::super::{log_int, log_str};
use super::{Builder, instant, log_text};

impl Builder {
    /// Each escalation is a `Task` (part of the session's), each ring of a desk a `Task` part of
    /// the escalation's; a call that connected is an `Encounter` (virtual), each party's figures
    /// an `Observation` of it.
    pub(super) fn calls(&mut self, v: &SessionView, patient: &str, sr: &str, task: &str) {
        let mut order = Vec::new();
        let mut steps: BTreeMap<String, Vec<&BTreeMap<String, LogValue>>> = BTreeMap::new();
        for e in &v.routing {
            let Some(call) = log_str(e, "call") else { continue };
            if !steps.contains_key(call) {
                order.push(call.to_string());
            }
            steps.entry(call.to_string()).or_default().push(e);
        }
        for call in order {
            let entries = steps.remove(&call).unwrap_or_default();
            self.escalation(v, &call, &entries, patient, sr, task);
        }
    }

    fn escalation(
        &mut self,
        v: &SessionView,
        call: &str,
        entries: &[&BTreeMap<String, LogValue>],
        patient: &str,
        sr: &str,
        task: &str,
    ) {
        let routing = codes::routing();
        let esc_key = format!("escalation/{call}");
        let esc = self.uuid(&esc_key);
        let at = |e: &BTreeMap<String, LogValue>| log_int(e, "at_ms").unwrap_or(v.identity.created_ms);
        let start = entries.iter().map(|e| at(e)).min().unwrap_or(v.identity.created_ms);
        let end = entries.iter().map(|e| at(e)).max().unwrap_or(start);
        let kind = |e: &BTreeMap<String, LogValue>| RoutingKind::of(e).unwrap_or(RoutingKind::Other(String::new()));
        let finished = entries.iter().find(|e| matches!(kind(e), RoutingKind::Connected | RoutingKind::Callback));
        let by = entries
            .iter()
            .find(|e| kind(e) == RoutingKind::Escalate)
            .and_then(|e| log_str(e, "by"))
            .map(str::to_string);
        let requester = match by {
            Some(node) => self.device(&node),
            None => self.device(&v.identity.origin),
        };
        let mut outputs = Vec::new();
        for e in entries {
            let k = kind(e);
            let k = k.as_str();
            let detail: Vec<String> = e
                .iter()
                .filter(|(key, _)| !matches!(key.as_str(), "kind" | "call" | "at_ms"))
                .map(|(key, val)| format!("{key}={}", log_text(val)))
                .collect();
            if routing.concepts.iter().any(|c| c.0 == k) {
                outputs.push(json!({
                    "type": { "coding": [coding(&routing, k)] },
                    "valueString": format!("{} {}", instant(at(e)), detail.join(" ")).trim().to_string(),
                }));
            }
        }
        // Ring attempts: each `ring` until the same desk's `answer` or `no_answer`.
        let typed: Vec<Option<(RoutingEntry, i64)>> = entries.iter().map(|e| RoutingEntry::read(e)).collect();
        let mut rings = Vec::new();
        for (i, e) in typed.iter().enumerate() {
            let Some((RoutingEntry::Ring { desk, attempt, ring_s, .. }, rang)) = e else { continue };
            let reply = typed[i + 1..].iter().flatten().find_map(|(x, t)| match x {
                RoutingEntry::Answer { desk: d, attempt: a, .. }
                | RoutingEntry::NoAnswer { desk: d, attempt: a, .. }
                    if d == desk && a == attempt =>
                {
                    Some((x.kind(), *t))
                }
                _ => None,
            });
            rings.push((desk.clone(), *attempt, *rang, *ring_s, reply));
        }
        // A callback instead of a call: the escalation failed (the reason says why).
        let (status, business) = match finished.map(|e| kind(e)) {
            Some(RoutingKind::Connected) => ("completed", RoutingKind::Connected),
            Some(k) => ("failed", k),
            None => ("in-progress", entries.last().map(|e| kind(e)).unwrap_or(RoutingKind::Other(String::new()))),
        };
        let business = business.as_str();
        let reason = finished.and_then(|e| log_str(e, "reason")).map(str::to_string);
        let mut r = json!({
            "resourceType": "Task",
            "meta": { "profile": [profile("Task")] },
            "identifier": [{ "system": id_system("call"), "value": call }],
            "basedOn": [{ "reference": sr }],
            "partOf": [{ "reference": task }],
            "status": status,
            "intent": "order",
            "code": { "coding": [coding(&routing, "escalation")] },
            "for": { "reference": patient },
            "executionPeriod": { "start": instant(start), "end": instant(end) },
            "authoredOn": instant(start),
            "lastModified": instant(end),
            "requester": { "reference": requester },
        });
        if !outputs.is_empty() {
            r["output"] = json!(outputs);
        }
        if routing.concepts.iter().any(|c| c.0 == business) {
            r["businessStatus"] = json!({ "coding": [coding(&routing, business)] });
        }
        if let Some(reason) = reason {
            r["statusReason"] = json!({ "text": reason });
        }
        self.add(&esc_key, || r);
        for (desk, attempt, rang, ring_s, reply) in rings {
            let owner = self.device(&desk);
            let n = attempt;
            let (status, business, end) = match &reply {
                Some((RoutingKind::Answer, t)) => ("completed", "answer", Some(*t)),
                Some((_, t)) => ("failed", "no_answer", Some(*t)),
                None => ("in-progress", "ring", None),
            };
            let mut period = json!({ "start": instant(rang) });
            if let Some(t) = end {
                period["end"] = json!(instant(t));
            }
            let mut ring = json!({
                "resourceType": "Task",
                "meta": { "profile": [profile("Task")] },
                "partOf": [{ "reference": esc }],
                "status": status,
                "businessStatus": { "coding": [coding(&routing, business)] },
                "intent": "order",
                "code": { "coding": [coding(&routing, "ring")], "text": format!("attempt {n}") },
                "for": { "reference": patient },
                "executionPeriod": period,
                "owner": { "reference": owner },
            });
            {
                let s = i64::from(ring_s);
                ring["restriction"] = json!({ "period": { "start": instant(rang), "end": instant(rang + s * 1000) } });
            }
            self.add(&format!("ring/{call}/{desk}/{n}"), || ring);
        }
        // A call that connected is an encounter, as its two parties recorded it: a leg record
        // of a call never connected, or of a node that was no party to it, is no consultation.
        let connected = entries.iter().find(|e| kind(e) == RoutingKind::Connected).and_then(|e| log_str(e, "desk"));
        let requester_node = entries.iter().find(|e| kind(e) == RoutingKind::Escalate).and_then(|e| log_str(e, "by"));
        if let (Some(desk), Some(by)) = (connected, requester_node) {
            self.encounter(v, call, [by, desk], esc.as_str(), patient, sr);
        }
    }

    fn encounter(
        &mut self,
        v: &SessionView,
        call: &str,
        parties: [&str; 2],
        escalation: &str,
        patient: &str,
        sr: &str,
    ) {
        let legs: Vec<Leg> =
            legs_of(v).into_iter().filter(|l| l.call == call && parties.contains(&l.node.as_str())).collect();
        if legs.is_empty() {
            return;
        }
        let start = legs.iter().map(|l| l.started_ms).min();
        let end = legs.iter().map(|l| l.started_ms + l.duration_ms).max();
        let key = format!("call/{call}");
        let enc = self.uuid(&key);
        let mut period = Map::new();
        if let Some(s) = start {
            period.insert("start".into(), json!(instant(s)));
        }
        if let Some(e) = end {
            period.insert("end".into(), json!(instant(e)));
        }
        let mut r = json!({
            "resourceType": "Encounter",
            "meta": { "profile": [profile("Encounter")] },
            "identifier": [{ "system": id_system("call"), "value": call }],
            "status": "finished",
            "class": { "system": codes::ACT_CODE, "code": "VR", "display": "virtual" },
            "type": [{ "coding": [{ "system": codes::SNOMED, "code": "386472008", "display": "Telephone consultation" }] }],
            "subject": { "reference": patient },
            "basedOn": [{ "reference": sr }],
            "period": period,
        });
        if let (Some(s), Some(e)) = (start, end) {
            r["length"] = json!({ "value": (e - s) as f64 / 1000.0, "unit": "s", "system": codes::UCUM, "code": "s" });
        }
        self.add(&key, || r);
        let quality = codes::call_quality();
        for leg in legs {
            let node = leg.node.clone();
            let device = self.device(&node);
            let components: Vec<Value> = codes::CALL_FIGURES
                .iter()
                .filter_map(|(code, unit, _)| {
                    let value = leg.figure(code)?;
                    Some(json!({
                        "code": { "coding": [coding(&quality, code)] },
                        "valueQuantity": { "value": value, "unit": unit, "system": codes::UCUM, "code": unit },
                    }))
                })
                .collect();
            let mut obs = json!({
                "resourceType": "Observation",
                "status": "final",
                "code": { "coding": [coding(&quality, "call-leg")], "text": format!("call leg at {node}") },
                "subject": { "reference": patient },
                "encounter": { "reference": enc },
                "device": { "reference": device },
                "focus": [{ "reference": escalation }],
            });
            if leg.started_ms > 0 {
                obs["effectiveDateTime"] = json!(instant(leg.started_ms));
            }
            obs["note"] = json!([{ "text": format!("ended: {}", leg.end.as_str()) }]);
            if !components.is_empty() {
                obs["component"] = json!(components);
            }
            self.add(&format!("leg/{call}/{node}"), || obs);
        }
    }
}
