//! A session as a FHIR R4 `Bundle` (type `collection`), following UK Core where it has a
//! profile: what `docs/fhir.md` describes, resource by resource.
//!
//! Pure: the session's view, the photos this node holds whole, the exporting node's name and the
//! time in; JSON out. Every reference points inside the bundle (`urn:uuid:` full URLs derived
//! from the session id, so one session exports to the same ids every time).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde_json::{Map, Value, json};
use sync_protocol::session::{Clinician, LogValue, MediaView, MessageView, OutcomeView, SessionView};
use sync_protocol::vocab::{Priority, ReceiptLevel, Side, Status};

use super::codes::{self, coding, id_system, profile};

mod calls;
use super::Photos;

/// FHIR's `instant` for a time in milliseconds since the epoch (UTC).
pub fn instant(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Builds the bundle of one session.
pub fn bundle(view: &SessionView, photos: &Photos, exported_by: &str, now_ms: i64) -> Value {
    let mut b = Builder { session: view.id.to_string(), entries: Vec::new(), keys: BTreeSet::new() };
    b.build(view, photos, exported_by);
    json!({
        "resourceType": "Bundle",
        // An identifier that is itself a URI takes the URI system (R4 Identifier guidance).
        "identifier": { "system": "urn:ietf:rfc:3986", "value": b.uuid(&format!("export/{exported_by}/{now_ms}")) },
        "type": "collection",
        "timestamp": instant(now_ms),
        "entry": b.entries,
    })
}

struct Builder {
    session: String,
    entries: Vec<Value>,
    keys: BTreeSet<String>,
}

/// Who did something: a person (a `PractitionerRole`) or, when the session names no person, the
/// node that wrote it (a `Device`).
type Actor = String;

impl Builder {
    /// A stable `urn:uuid:` for something of this session (a version 8, name-based UUID).
    fn uuid(&self, key: &str) -> String {
        let h = blake3::hash(format!("outpost/{}/{key}", self.session).as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.as_bytes()[..16]);
        b[6] = (b[6] & 0x0f) | 0x80;
        b[8] = (b[8] & 0x3f) | 0x80;
        let x = hex::encode(b);
        format!("urn:uuid:{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..])
    }

    /// Adds a resource once under `key`; returns its reference.
    fn add(&mut self, key: &str, resource: impl FnOnce() -> Value) -> String {
        let url = self.uuid(key);
        if self.keys.insert(key.to_string()) {
            let r = resource();
            self.entries.push(json!({ "fullUrl": url, "resource": r }));
        }
        url
    }

    fn organisation(&mut self, ods: &str) -> String {
        let ods = ods.trim().to_ascii_uppercase();
        self.add(&format!("org/{ods}"), || {
            json!({
                "resourceType": "Organization",
                "meta": { "profile": [profile("Organization")] },
                "identifier": [{ "system": codes::ODS_ORGANISATION, "value": ods }],
            })
        })
    }

    fn device(&mut self, node: &str) -> String {
        self.add(&format!("device/{node}"), || {
            json!({
                "resourceType": "Device",
                "identifier": [{ "system": id_system("node"), "value": node }],
                "deviceName": [{ "name": node, "type": "user-friendly-name" }],
                "type": { "text": "outpost node" },
            })
        })
    }

    /// A practitioner, known by registration when there is one, else by name.
    fn practitioner(&mut self, name: Option<&str>, registration: Option<&str>) -> String {
        let reg = registration.map(registration_identifier);
        let key = match (&reg, name) {
            (Some(r), _) => format!("practitioner/{}|{}", r["system"].as_str().unwrap_or(""), r["value"]),
            (None, Some(n)) => format!("practitioner/name/{n}"),
            (None, None) => "practitioner/unknown".to_string(),
        };
        let url = self.uuid(&key);
        if let Some(i) = self.entries.iter().position(|e| e["fullUrl"] == url.as_str()) {
            // Known by registration before, without a name: the name fills in.
            if let (Some(n), Some(r)) = (name, self.entries[i]["resource"].as_object_mut())
                && !r.contains_key("name")
            {
                r.insert("name".into(), json!([{ "text": n }]));
            }
            return url;
        }
        self.add(&key, || {
            let mut r = Map::new();
            r.insert("resourceType".into(), json!("Practitioner"));
            r.insert("meta".into(), json!({ "profile": [profile("Practitioner")] }));
            if let Some(i) = reg {
                r.insert("identifier".into(), json!([i]));
            }
            if let Some(n) = name {
                r.insert("name".into(), json!([{ "text": n }]));
            }
            Value::Object(r)
        })
    }

    /// A person in a role: the practitioner, the role's words and their organisation.
    fn role(&mut self, clinician: &Clinician, org: Option<&str>) -> String {
        let p = self.practitioner(Some(&clinician.name), clinician.registration.as_deref());
        let o = org.map(|o| self.organisation(o));
        let key = format!("role/{p}/{}", clinician.role.to_lowercase());
        self.add(&key, || {
            let mut r = json!({
                "resourceType": "PractitionerRole",
                "meta": { "profile": [profile("PractitionerRole")] },
                "practitioner": { "reference": p },
                "code": [{ "text": clinician.role }],
            });
            if let Some(o) = o {
                r["organization"] = json!({ "reference": o });
            }
            r
        })
    }

    /// Who wrote something: the clinician named with it, else the node.
    fn actor(&mut self, clinician: Option<&Clinician>, node: &str) -> Actor {
        match clinician {
            Some(c) => self.role(c, None),
            None => self.device(node),
        }
    }

    fn build(&mut self, v: &SessionView, photos: &Photos, exported_by: &str) {
        let patient = self.patient(v);
        let requester = self.requester(v);
        let sr = self.uuid("service-request");
        let task = self.uuid("task");

        // Messages first: the service request names who answered.
        let mut responders = Vec::new();
        // Each message's identifier in the record: its id, and for a later message under an id
        // already used (ids are chosen by their writers, so another member can reuse one) the id
        // and its place in the session. Every message goes into the record under its own
        // identifier; keyed by the id alone, the second would be left out.
        let mut idents: Vec<String> = Vec::with_capacity(v.messages.len());
        let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, m) in v.messages.iter().enumerate() {
            let ident = if by_id.contains_key(&m.id) { format!("{}/{i}", m.id) } else { m.id.clone() };
            by_id.entry(m.id.clone()).or_default().push(self.uuid(&format!("message/{ident}")));
            idents.push(ident);
        }
        let mut communications = Vec::new();
        for m in &v.messages {
            let sender = self.actor(m.clinician.as_ref(), &m.author);
            if m.side == Side::Responder && !responders.contains(&sender) {
                responders.push(sender.clone());
            }
            communications.push((m, sender));
        }
        for ((m, sender), ident) in communications.into_iter().zip(&idents) {
            let recipient = match m.side {
                Side::Requester => responders.clone(),
                Side::Responder => vec![requester.clone()],
            };
            self.communication(v, m, ident, &sender, &recipient, &by_id, &patient, &sr, &task);
        }
        let media: Vec<String> = v.media.iter().map(|m| self.media(m, photos, &patient, &sr)).collect();
        for c in &v.consents {
            self.consent(v, c, &patient);
        }
        self.service_request(v, &patient, &requester, &responders, &media);
        let outputs = self.outcomes(v, &patient, &sr);
        self.task(v, &patient, &requester, &responders, &outputs);
        self.calls(v, &patient, &sr, &task);
        let _ = self.device(exported_by);
    }

    fn patient(&mut self, v: &SessionView) -> String {
        let p = &v.patient;
        self.add("patient", || {
            let mut r = Map::new();
            r.insert("resourceType".into(), json!("Patient"));
            r.insert("meta".into(), json!({ "profile": [profile("Patient")] }));
            if let Some(n) = &p.nhs_number {
                r.insert(
                    "identifier".into(),
                    json!([{
                        "extension": [{
                            "url": codes::NHS_VERIFICATION_EXTENSION,
                            "valueCodeableConcept": { "coding": [{
                                "system": codes::NHS_VERIFICATION_ENGLAND,
                                "code": p.verification.as_str(),
                                "display": codes::verification_display(p.verification),
                            }]},
                        }],
                        "system": codes::NHS_NUMBER,
                        "value": n,
                    }]),
                );
            }
            if let Some(n) = &p.name {
                r.insert("name".into(), json!([{ "text": n }]));
            }
            if let Some(g) = p.sex.as_deref().map(gender) {
                r.insert("gender".into(), json!(g));
            }
            if let Some(d) = p.birth_date.as_deref().filter(|d| sync_protocol::session::calendar_date(d).is_some()) {
                r.insert("birthDate".into(), json!(d));
            }
            if let Some(pc) = &p.postcode {
                r.insert("address".into(), json!([{ "postalCode": pc }]));
            }
            Value::Object(r)
        })
    }

    /// The requester as a role: their registration, role, organisation, call-sign and number.
    fn requester(&mut self, v: &SessionView) -> String {
        let q = &v.requester;
        if q.registration.is_none() && q.role.is_none() && q.org_ods.is_none() && q.call_sign.is_none() {
            return self.device(&v.identity.origin);
        }
        let p = q.registration.as_deref().map(|r| self.practitioner(None, Some(r)));
        let o = q.org_ods.as_deref().map(|o| self.organisation(o));
        self.add("requester", || {
            let mut r = Map::new();
            r.insert("resourceType".into(), json!("PractitionerRole"));
            r.insert("meta".into(), json!({ "profile": [profile("PractitionerRole")] }));
            if let Some(cs) = &q.call_sign {
                r.insert("identifier".into(), json!([{ "system": id_system("call-sign"), "value": cs }]));
            }
            if let Some(p) = p {
                r.insert("practitioner".into(), json!({ "reference": p }));
            }
            if let Some(o) = o {
                r.insert("organization".into(), json!({ "reference": o }));
            }
            if let Some(role) = &q.role {
                r.insert("code".into(), json!([{ "text": role }]));
            }
            if let Some(n) = &q.callback {
                r.insert("telecom".into(), json!([{ "system": "phone", "value": n, "use": "work" }]));
            }
            Value::Object(r)
        })
    }

    fn service_request(
        &mut self,
        v: &SessionView,
        patient: &str,
        requester: &str,
        responders: &[String],
        media: &[String],
    ) {
        let icb = self.organisation(&v.identity.icb);
        let channel = codes::channel();
        let mut identifiers = vec![json!({ "system": id_system("session"), "value": v.id.to_string() })];
        if let Some(i) = &v.requester.incident {
            identifiers.push(json!({ "system": id_system("incident"), "value": i }));
        }
        let status = match v.status {
            Status::Draft => "draft",
            Status::Cancelled => "revoked",
            Status::OutcomeRecorded | Status::Closed => "completed",
            _ => "active",
        };
        let priority = match v.service.priority {
            Priority::Routine => "routine",
            Priority::Urgent | Priority::TwoWeekWait => "urgent",
        };
        let mut performers: Vec<Value> = responders.iter().map(|r| json!({ "reference": r })).collect();
        if performers.is_empty() {
            performers.push(json!({ "reference": icb }));
        }
        self.add("service-request", || {
            let mut r = json!({
                "resourceType": "ServiceRequest",
                "meta": { "profile": [profile("ServiceRequest")] },
                "identifier": identifiers,
                "status": status,
                "intent": "order",
                "category": [codes::specialty(v.service.line)],
                "priority": priority,
                "code": {
                    "coding": [coding(&channel, v.service.channel.as_str())],
                    "text": format!("Request for {} advice by {}", v.service.line.as_str().replace('_', " "), v.service.channel),
                },
                "orderDetail": [
                    { "coding": [coding(&codes::priority(), v.service.priority.as_str())] },
                    { "coding": [coding(&codes::care_setting(), v.identity.care_setting.as_str())] },
                ],
                "subject": { "reference": patient },
                "authoredOn": instant(v.identity.created_ms),
                "requester": { "reference": requester },
                "performer": performers,
                "note": [{ "text": v.summary }],
            });
            if !media.is_empty() {
                r["supportingInfo"] = media.iter().map(|m| json!({ "reference": m })).collect();
            }
            r
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn communication(
        &mut self,
        v: &SessionView,
        m: &MessageView,
        ident: &str,
        sender: &str,
        recipients: &[String],
        by_id: &BTreeMap<String, Vec<String>>,
        patient: &str,
        sr: &str,
        task: &str,
    ) {
        // Received only once the other side holds it, by the view's own rule for whose receipt
        // speaks for that side: for a question, a consultant's desk (or a read by a node other
        // than the origin); for advice, the requester's own device (another desk opening a
        // reply does not deliver it to the crew). A message still on its device is in progress
        // and not yet sent.
        let origin = v.identity.origin.as_str();
        let received = m
            .receipts
            .iter()
            .filter(|r| match m.side {
                Side::Requester => r.level == ReceiptLevel::Desk || (r.level == ReceiptLevel::Read && r.node != origin),
                Side::Responder => matches!(r.level, ReceiptLevel::Requester | ReceiptLevel::Read) && r.node == origin,
            })
            .map(|r| r.at_ms)
            .min();
        let status = if m.receipt == ReceiptLevel::Device { "in-progress" } else { "completed" };
        let mut r = json!({
            "resourceType": "Communication",
            "meta": { "profile": [profile("Communication")] },
            "identifier": [{ "system": id_system("message"), "value": ident }],
            "basedOn": [{ "reference": sr }],
            "partOf": [{ "reference": task }],
            "status": status,
            "subject": { "reference": patient },
            "sender": { "reference": sender },
            "payload": [{ "contentString": m.text }],
        });
        // A reply names the id it answers; every message under that id is linked (one, unless
        // another member reused it), never the reply itself.
        let me = self.uuid(&format!("message/{ident}"));
        if let Some(to) = m.reply_to.as_ref().and_then(|id| by_id.get(id)) {
            let to: Vec<Value> = to.iter().filter(|u| **u != me).map(|u| json!({ "reference": u })).collect();
            if !to.is_empty() {
                r["inResponseTo"] = Value::Array(to);
            }
        }
        if !recipients.is_empty() {
            r["recipient"] = recipients.iter().map(|x| json!({ "reference": x })).collect();
        }
        if m.receipt != ReceiptLevel::Device {
            r["sent"] = json!(instant(m.at_ms));
        }
        if let Some(at) = received {
            r["received"] = json!(instant(at));
        }
        if v.service.priority != Priority::Routine {
            r["priority"] = json!("urgent");
        }
        self.add(&format!("message/{ident}"), || r);
    }

    fn media(&mut self, m: &MediaView, photos: &Photos, patient: &str, sr: &str) -> String {
        let operator = self.actor(m.clinician.as_ref(), &m.added_by);
        let mut content = json!({
            "contentType": m.mime,
            "size": m.size,
            "creation": instant(m.at_ms),
        });
        // A withdrawn consent removes the image; a photo this node does not hold whole is a
        // reference to where the record keeps it.
        if m.consent_withdrawn {
            content["title"] = json!("image withheld: the patient's consent was withdrawn");
        } else if let Some(bytes) = photos.get(&m.hash) {
            content["data"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
            content["title"] = json!(format!("{} of {}", m.view.as_str().replace('_', " "), m.body_site));
        } else {
            content["url"] = json!(format!("urn:outpost:photo:blake3:{}", m.hash));
            content["title"] = json!(format!(
                "{} of {}: not held by this node (the ICB hub keeps the record; BLAKE3 {})",
                m.view.as_str().replace('_', " "),
                m.body_site,
                m.hash
            ));
        }
        let mut r = json!({
            "resourceType": "Media",
            "identifier": [{ "system": id_system("photo-blake3"), "value": m.hash }],
            "basedOn": [{ "reference": sr }],
            "status": "completed",
            "type": { "coding": [{ "system": codes::MEDIA_TYPE, "code": "image", "display": "Image" }] },
            "modality": { "coding": [{ "system": codes::DICOM, "code": "XC", "display": "External-camera Photography" }] },
            "view": { "coding": [coding(&codes::photo_view(), m.view.as_str())] },
            "subject": { "reference": patient },
            "createdDateTime": instant(m.at_ms),
            "operator": { "reference": operator },
            "bodySite": { "text": m.body_site },
            "content": content,
        });
        if let (Some(w), Some(h)) = (m.width, m.height) {
            r["width"] = json!(w);
            r["height"] = json!(h);
        }
        self.add(&format!("photo/{}", m.hash), || r)
    }

    fn consent(&mut self, v: &SessionView, c: &sync_protocol::session::ConsentView, patient: &str) {
        let covers: Vec<Value> = v
            .media
            .iter()
            .filter(|m| m.consent == c.id)
            .map(|m| json!({ "meaning": "instance", "reference": { "reference": self.uuid(&format!("photo/{}", m.hash)) } }))
            .collect();
        let org = v.requester.org_ods.as_deref().map(|o| self.organisation(o));
        let mut period = json!({ "start": instant(c.at_ms) });
        if let Some(w) = &c.withdrawn {
            period["end"] = json!(instant(w.at_ms));
        }
        let mut r = json!({
            "resourceType": "Consent",
            "meta": { "profile": [profile("Consent")] },
            "identifier": [{ "system": id_system("consent"), "value": c.id }],
            "status": if c.withdrawn.is_some() { "inactive" } else { "active" },
            "scope": { "coding": [{ "system": codes::CONSENT_SCOPE, "code": "patient-privacy", "display": "Privacy Consent" }] },
            "category": [{
                "coding": [coding(&codes::consent_kind(), c.kind.as_str())],
                "text": "Consent to clinical photography",
            }],
            "patient": { "reference": patient },
            "dateTime": instant(c.at_ms),
            "performer": [{ "reference": patient }],
            "policyRule": { "coding": [coding(&codes::consent_scope(), c.scope.as_str())] },
            "provision": { "type": "permit", "period": period },
        });
        if !covers.is_empty() {
            r["provision"]["data"] = json!(covers);
        }
        if let Some(o) = org {
            r["organization"] = json!([{ "reference": o }]);
        }
        self.add(&format!("consent/{}", c.id), || r);
    }

    /// Each side's outcome as an `Observation` (who recorded it and when), referenced from the
    /// task's outputs.
    fn outcomes(&mut self, v: &SessionView, patient: &str, sr: &str) -> Vec<(Side, String)> {
        let mut out = Vec::new();
        for (side, o) in [(Side::Requester, &v.outcome.requester), (Side::Responder, &v.outcome.responder)] {
            if let Some(o) = o {
                out.push((side, self.outcome(side, o, patient, sr)));
            }
        }
        out
    }

    fn outcome(&mut self, side: Side, o: &OutcomeView, patient: &str, sr: &str) -> String {
        // A performer is a person or an organisation in R4, never a device: an outcome recorded
        // with no person named (a CLI write, an integrating system) names its node in a note.
        let by = o.clinician.as_ref().map(|c| self.role(c, None));
        let mut value = vec![coding(&codes::outcome(), o.value.as_str())];
        if let Some((code, display)) = codes::outcome_snomed(o.value) {
            value.push(json!({ "system": codes::SNOMED, "code": code, "display": display }));
        }
        self.add(&format!("outcome/{side}"), || {
            let mut r = json!({
                "resourceType": "Observation",
                "basedOn": [{ "reference": sr }],
                "status": "final",
                "code": { "coding": [coding(&codes::outcome_side(), side.as_str())] },
                "subject": { "reference": patient },
                "effectiveDateTime": instant(o.at_ms),
                "valueCodeableConcept": { "coding": value, "text": codes::say(o.value.as_str()) },
            });
            match by {
                Some(by) => r["performer"] = json!([{ "reference": by }]),
                None => r["note"] = json!([{ "text": format!("recorded on outpost node {} (no person named)", o.by) }]),
            }
            r
        })
    }

    fn task(
        &mut self,
        v: &SessionView,
        patient: &str,
        requester: &str,
        responders: &[String],
        outputs: &[(Side, String)],
    ) {
        let status = match v.status {
            Status::Draft => "draft",
            Status::Queued => "requested",
            Status::OutcomeRecorded | Status::Closed => "completed",
            Status::Cancelled => "cancelled",
            _ => "in-progress",
        };
        let outcomes = [&v.outcome.requester, &v.outcome.responder].into_iter().flatten().map(|o| o.at_ms);
        let last = outcomes.fold(v.updated_ms(), i64::max);
        let sr = self.uuid("service-request");
        let mut r = json!({
            "resourceType": "Task",
            "meta": { "profile": [profile("Task")] },
            "identifier": [{ "system": id_system("session"), "value": v.id.to_string() }],
            "basedOn": [{ "reference": sr }],
            "status": status,
            "businessStatus": { "coding": [coding(&codes::session_status(), v.status.as_str())] },
            "intent": "order",
            "focus": { "reference": sr },
            "for": { "reference": patient },
            "authoredOn": instant(v.identity.created_ms),
            "lastModified": instant(last.max(v.identity.created_ms)),
            "requester": { "reference": requester },
        });
        if let Some(owner) = responders.first() {
            r["owner"] = json!({ "reference": owner });
        }
        if v.reopened > 0 {
            r["note"] = json!([{ "text": format!("reopened {} time(s)", v.reopened) }]);
        }
        if !outputs.is_empty() {
            r["output"] = outputs
                .iter()
                .map(|(side, obs)| {
                    json!({
                        "type": { "coding": [coding(&codes::outcome_side(), side.as_str())] },
                        "valueReference": { "reference": obs },
                    })
                })
                .collect();
        }
        self.add("task", || r);
    }
}

/// A registration number as an identifier of its register (GMC, NMC, HCPC), recognised by a
/// prefix (`GMC-7012345`) or by its format (7 digits GMC; 2 letters and 6 digits HCPC; NMC's
/// `NNANNNNA`). One that fits none is kept without a system.
pub fn registration_identifier(reg: &str) -> Value {
    let t = reg.trim().to_ascii_uppercase();
    let strip = |p: &str| {
        t.strip_prefix(p).map(|r| r.trim_start_matches([' ', '-', ':']).to_string()).filter(|r| !r.is_empty())
    };
    let (system, value) = if let Some(v) = strip("GMC") {
        (Some(codes::GMC), v)
    } else if let Some(v) = strip("NMC") {
        (Some(codes::NMC), v)
    } else if let Some(v) = strip("HCPC") {
        (Some(codes::HCPC), v)
    } else {
        let b = t.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        let letters = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_alphabetic);
        let system = match b.len() {
            7 if digits(0..7) => Some(codes::GMC),
            8 if letters(0..2) && digits(2..8) => Some(codes::HCPC),
            8 if digits(0..2) && letters(2..3) && digits(3..7) && letters(7..8) => Some(codes::NMC),
            _ => None,
        };
        (system, reg.trim().to_string())
    };
    match system {
        Some(s) => json!({ "system": s, "value": value }),
        None => json!({ "type": { "text": "professional registration" }, "value": value }),
    }
}

fn gender(sex: &str) -> &'static str {
    match sex.trim().to_ascii_lowercase().as_str() {
        "m" | "male" => "male",
        "f" | "female" => "female",
        "o" | "other" => "other",
        _ => "unknown",
    }
}

/// `YYYY-MM-DD` with a plausible month and day.
fn log_text(v: &LogValue) -> String {
    match v {
        LogValue::Str(s) => s.clone(),
        LogValue::Int(i) => i.to_string(),
        LogValue::Float(f) => format!("{f}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_numbers_find_their_register_by_prefix_or_by_format() {
        assert_eq!(registration_identifier("GMC-7012345"), json!({ "system": codes::GMC, "value": "7012345" }));
        assert_eq!(registration_identifier("7012345"), json!({ "system": codes::GMC, "value": "7012345" }));
        assert_eq!(registration_identifier("HCPC-PA123456"), json!({ "system": codes::HCPC, "value": "PA123456" }));
        assert_eq!(registration_identifier("PA123456"), json!({ "system": codes::HCPC, "value": "PA123456" }));
        assert_eq!(registration_identifier("NMC 71A2998E"), json!({ "system": codes::NMC, "value": "71A2998E" }));
        assert_eq!(registration_identifier("71A2998E"), json!({ "system": codes::NMC, "value": "71A2998E" }));
        assert_eq!(
            registration_identifier("staff 42"),
            json!({ "type": { "text": "professional registration" }, "value": "staff 42" })
        );
    }

    /// A message whose id another member reused is in the record, as is the other: neither
    /// replaces the other, each keeps its own sender and identifier, and a reply to the id is
    /// linked to both.
    #[test]
    fn a_message_under_a_reused_id_does_not_push_another_out_of_the_record() {
        use sync_protocol::session::{NewMessage, NewSession, Patient, Requester, Service, SessionDoc};
        use sync_protocol::vocab::{CareSetting, Channel, NhsVerification, ServiceLine};
        const T0: i64 = 1_796_360_400_000;
        let new = NewSession {
            id: sync_protocol::SessionId::from_parts(T0, 7),
            origin: "amb-07".into(),
            icb: "QOX".into(),
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester { role: Some("paramedic".into()), ..Requester::default() },
            patient: Patient { verification: NhsVerification::NotTraced, ..Patient::default() },
            service: Service { line: ServiceLine::Dermatology, channel: Channel::Message, priority: Priority::Urgent },
            summary: "Spreading rash on left forearm".into(),
            draft: false,
        };
        let mut doc = SessionDoc::create(&new, automerge::ActorId::from([1u8; 16]), T0).expect("session");
        let msg = |author: &str, side: Side, text: &str, reply_to: Option<&str>| NewMessage {
            clinician: None,
            id: "m1".into(),
            author: author.into(),
            side,
            text: text.into(),
            reply_to: reply_to.map(str::to_string),
        };
        doc.add_message(&msg("amb-07", Side::Requester, "Rash spreading past the elbow", None), T0 + 1).expect("crew");
        doc.add_message(&msg("amb-99", Side::Requester, "Rash settled, no advice needed", None), T0 + 2)
            .expect("reuse");
        let mut reply = msg("desk-derm-1", Side::Responder, "Start flucloxacillin", Some("m1"));
        reply.id = "r1".into();
        doc.add_message(&reply, T0 + 3).expect("reply");
        let view = doc.view().expect("view");

        let b = bundle(&view, &Photos::new(), "desk-derm-1", T0 + 10);
        let comms: Vec<&Value> = b["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == "Communication")
            .collect();
        let texts: Vec<&str> = comms.iter().filter_map(|c| c["payload"][0]["contentString"].as_str()).collect();
        assert_eq!(comms.len(), 3, "{texts:?}");
        assert!(texts.contains(&"Rash spreading past the elbow"), "{texts:?}");
        assert!(texts.contains(&"Rash settled, no advice needed"), "{texts:?}");
        let idents: BTreeSet<&str> = comms.iter().filter_map(|c| c["identifier"][0]["value"].as_str()).collect();
        assert_eq!(idents.len(), 3, "each message has its own identifier: {idents:?}");
        let answer = comms.iter().find(|c| c["payload"][0]["contentString"] == "Start flucloxacillin").expect("reply");
        assert_eq!(answer["inResponseTo"].as_array().map(Vec::len), Some(2), "{answer}");
    }

    #[test]
    fn instants_are_utc_with_milliseconds() {
        assert_eq!(instant(1_796_360_400_123), "2026-12-04T05:00:00.123Z");
    }
}
