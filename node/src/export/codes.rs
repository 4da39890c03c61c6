//! The code systems and identifier namespaces of the FHIR export.
//!
//! National systems (NHS number, ODS, professional registers, SNOMED CT, the UK Core
//! verification status) are used wherever a session's value has a home there. What has none
//! (outpost's outcomes, statuses, photo views, consent scopes, routing steps) is coded in
//! outpost's own CodeSystems, each defined here once from the vocabulary it codes, and published
//! as FHIR `CodeSystem` resources in `docs/fhir/` (`published_code_systems`, checked by a test
//! against the files).

use serde_json::{Value, json};
use sync_protocol::call::RoutingKind;
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, ServiceLine, Status,
};

/// The root of outpost's own FHIR namespace. `.invalid` is reserved (RFC 2606): it can never
/// belong to anyone else; a deployment that registers a namespace changes this one constant.
pub const BASE: &str = "https://outpost.invalid/fhir";

pub const NHS_NUMBER: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const ODS_ORGANISATION: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
pub const GMC: &str = "https://fhir.hl7.org.uk/Id/gmc-number";
pub const NMC: &str = "https://fhir.hl7.org.uk/Id/nmc-number";
pub const HCPC: &str = "https://fhir.hl7.org.uk/Id/hcpc-number";
pub const SNOMED: &str = "http://snomed.info/sct";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const NHS_VERIFICATION_EXTENSION: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus";
pub const NHS_VERIFICATION_ENGLAND: &str =
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const CONSENT_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
pub const MEDIA_TYPE: &str = "http://terminology.hl7.org/CodeSystem/media-type";
pub const DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";

/// A UK Core profile's canonical URL.
pub fn profile(name: &str) -> String {
    format!("https://fhir.hl7.org.uk/StructureDefinition/UKCore-{name}")
}

/// One of outpost's identifier namespaces (`session`, `message`, `photo-blake3`, ...).
pub fn id_system(name: &str) -> String {
    format!("{BASE}/Id/{name}")
}

/// One of outpost's CodeSystems.
pub fn system(name: &str) -> String {
    format!("{BASE}/CodeSystem/{name}")
}

/// The UK Core display of an NHS number verification status (England).
pub fn verification_display(v: NhsVerification) -> &'static str {
    match v {
        NhsVerification::Verified => "Number present and verified",
        NhsVerification::NotTraced => "Number present but not traced",
        NhsVerification::TraceRequired => "Trace required",
        NhsVerification::NoMatch => "Trace attempted - No match or multiple match found",
        NhsVerification::NeedsResolution => "Trace needs to be resolved - (NHS number or patient detail conflict)",
        NhsVerification::InProgress => "Trace in progress",
        NhsVerification::NotPresent => "Number not present and trace not required",
        NhsVerification::Postponed => "Trace postponed (baby under six weeks old)",
    }
}

/// SNOMED CT concepts for outcomes that have one (the rest are outpost's codes only).
pub fn outcome_snomed(o: Outcome) -> Option<(&'static str, &'static str)> {
    match o {
        Outcome::ReferralMade => Some(("3457005", "Patient referral")),
        Outcome::Admitted => Some(("32485007", "Admission to hospital")),
        _ => None,
    }
}

/// A coding in one of outpost's CodeSystems, with its display.
pub fn coding(cs: &CodeSystem, code: &str) -> Value {
    let display = cs.concepts.iter().find(|c| c.0 == code).map(|c| c.1.clone()).unwrap_or_default();
    json!({ "system": system(cs.name), "code": code, "display": display })
}

/// One of outpost's CodeSystems: its name (the last part of its URL), a title, what it is for,
/// and its concepts (code, display, definition).
#[derive(Debug, Clone)]
pub struct CodeSystem {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub concepts: Vec<(String, String, String)>,
}

fn words(code: &str) -> String {
    let s = code.replace('_', " ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
}

fn concepts<T: Copy + std::fmt::Display>(all: &[T], define: impl Fn(T) -> String) -> Vec<(String, String, String)> {
    all.iter().map(|v| (v.to_string(), words(&v.to_string()), define(*v))).collect()
}

/// What each outcome means, in the record's words.
fn outcome_definition(o: Outcome) -> String {
    match o {
        Outcome::ReferralAvoided => "The advice made a referral unnecessary.",
        Outcome::ReferralMade => "The patient is referred (for example on a two-week-wait pathway).",
        Outcome::ConveyanceAvoided => "The ambulance crew did not need to take the patient to hospital.",
        Outcome::ConveyedEd => "The patient was taken to an emergency department.",
        Outcome::ConveyedSdec => "The patient was taken to a same day emergency care unit.",
        Outcome::AdmissionAvoided => "The advice made a hospital admission unnecessary.",
        Outcome::Ambulatory => "The patient is managed as an ambulatory case.",
        Outcome::Admitted => "The patient was admitted to hospital.",
        Outcome::AdviceOnly => "Advice was given; no other action followed.",
        Outcome::NotReported => "The clinician did not record an outcome.",
    }
    .to_string()
}

pub fn outcome() -> CodeSystem {
    CodeSystem {
        name: "outcome",
        title: "outpost advice outcome",
        description: "What followed a request for specialist advice, recorded separately by the requester and the responder.",
        concepts: concepts(Outcome::ALL, outcome_definition),
    }
}

pub fn outcome_side() -> CodeSystem {
    CodeSystem {
        name: "outcome-side",
        title: "outpost outcome side",
        description: "Which side of an advice session recorded an outcome.",
        concepts: vec![
            (
                "requester".into(),
                "Outcome recorded by the requester".into(),
                "The clinician who asked for advice.".into(),
            ),
            ("responder".into(), "Outcome recorded by the responder".into(), "The consultant who gave advice.".into()),
        ],
    }
}

pub fn session_status() -> CodeSystem {
    CodeSystem {
        name: "session-status",
        title: "outpost advice session status",
        description: "Where an advice session stands; statuses only move forward, except by an explicit reopen.",
        concepts: concepts(Status::ALL, |s| format!("The session is {}.", s.as_str().replace('_', " "))),
    }
}

pub fn care_setting() -> CodeSystem {
    CodeSystem {
        name: "care-setting",
        title: "outpost care setting",
        description: "Where the clinician asking for advice is working.",
        concepts: concepts(CareSetting::ALL, |c| {
            match c {
                CareSetting::GpElective => "General practice, planned care.",
                CareSetting::GpUrgent => "General practice, same-day urgent care.",
                CareSetting::AmbulanceOnScene => "An ambulance crew with the patient.",
                CareSetting::Nhs111 => "NHS 111.",
                CareSetting::CareHome => "A care home.",
            }
            .to_string()
        }),
    }
}

pub fn channel() -> CodeSystem {
    CodeSystem {
        name: "channel",
        title: "outpost advice channel",
        description: "How specialist advice is sought.",
        concepts: concepts(Channel::ALL, |c| format!("Advice sought by {c}.")),
    }
}

pub fn priority() -> CodeSystem {
    CodeSystem {
        name: "priority",
        title: "outpost advice priority",
        description: "The clinical priority of a request for advice, with the two-week-wait (suspected cancer) pathway that FHIR's request priority has no code for.",
        concepts: concepts(Priority::ALL, |p| {
            match p {
                Priority::Routine => "Routine.",
                Priority::Urgent => "Urgent.",
                Priority::TwoWeekWait => "Suspected cancer: the two-week-wait pathway.",
            }
            .to_string()
        }),
    }
}

pub fn photo_view() -> CodeSystem {
    CodeSystem {
        name: "photo-view",
        title: "outpost photo view",
        description: "The kind of clinical photograph, following teledermatology practice (usually three per lesion).",
        concepts: concepts(PhotoView::ALL, |v| {
            match v {
                PhotoView::Site => "Where on the body, from a distance.",
                PhotoView::CloseUp => "About 20 cm from the lesion.",
                PhotoView::Dermoscopic => "Through a dermatoscope.",
            }
            .to_string()
        }),
    }
}

pub fn consent_kind() -> CodeSystem {
    CodeSystem {
        name: "consent-kind",
        title: "outpost consent kind",
        description: "How a patient's consent to clinical photography was given.",
        concepts: concepts(ConsentKind::ALL, |k| {
            match k {
                ConsentKind::Verbal => "Consent given verbally.",
                ConsentKind::Implied => "Consent implied by the patient's actions.",
                ConsentKind::Written => "Consent given in writing.",
            }
            .to_string()
        }),
    }
}

pub fn consent_scope() -> CodeSystem {
    CodeSystem {
        name: "consent-scope",
        title: "outpost consent scope",
        description: "What a patient's consent to clinical photography covers.",
        concepts: concepts(ConsentScope::ALL, |s| {
            match s {
                ConsentScope::RecordOnly => "For the clinical record only.",
                ConsentScope::Teaching => "For the clinical record and for teaching.",
            }
            .to_string()
        }),
    }
}

/// What each step of the routing log means, in the record's words.
fn routing_definition(kind: &RoutingKind) -> &'static str {
    match kind {
        RoutingKind::Escalate => "The requester asked for a call.",
        RoutingKind::Gate => "The hub measured the requester's link before ringing anyone.",
        RoutingKind::Ring => "The hub rang a consultant's desk.",
        RoutingKind::Answer => "The desk answered.",
        RoutingKind::NoAnswer => "The desk did not answer in its ring time.",
        RoutingKind::Federate => "No desk of the home ICB answered; the call was handed to a neighbouring ICB's hub.",
        RoutingKind::Connected => "The call was connected.",
        RoutingKind::Callback => "A callback was arranged instead of a call.",
        RoutingKind::Other(_) => "A step this version does not know.",
    }
}

/// The escalation itself and every routing step this version writes (`RoutingKind::KNOWN`).
pub fn routing() -> CodeSystem {
    let mut concepts = vec![(
        "escalation".to_string(),
        "Escalation".to_string(),
        "A request to speak to a consultant now.".to_string(),
    )];
    concepts.extend(
        RoutingKind::KNOWN
            .iter()
            .map(|k| (k.as_str().to_string(), words(k.as_str()), routing_definition(k).to_string())),
    );
    CodeSystem {
        name: "routing",
        title: "outpost call routing step",
        description: "The steps of escalating an advice session to a live call, as the routing log records them.",
        concepts,
    }
}

/// The figures each party's side of a call records when it ends.
pub const CALL_FIGURES: &[(&str, &str, &str)] = &[
    ("mos", "1", "Estimated mean opinion score (E-model), 1 to 5."),
    ("loss", "1", "Share of audio frames concealed over frames played."),
    ("jitter_ms", "ms", "Interarrival jitter (RFC 3550)."),
    ("rtt_ms", "ms", "Round-trip time."),
    ("longest_gap_ms", "ms", "Longest stretch without audio."),
    ("duration_ms", "ms", "Length of this party's side of the call."),
];

pub fn call_quality() -> CodeSystem {
    let mut concepts =
        vec![("call-leg".to_string(), "Call leg quality".to_string(), "One party's figures for one call.".to_string())];
    concepts.extend(CALL_FIGURES.iter().map(|(c, _, d)| (c.to_string(), words(c), d.to_string())));
    CodeSystem {
        name: "call-quality",
        title: "outpost call quality figure",
        description: "What each party of a call measured of its audio.",
        concepts,
    }
}

/// Every CodeSystem the export uses, as published in `docs/fhir/`.
pub fn all() -> Vec<CodeSystem> {
    vec![
        outcome(),
        outcome_side(),
        session_status(),
        care_setting(),
        channel(),
        priority(),
        photo_view(),
        consent_kind(),
        consent_scope(),
        routing(),
        call_quality(),
    ]
}

/// A CodeSystem as a FHIR resource.
pub fn resource(cs: &CodeSystem) -> Value {
    json!({
        "resourceType": "CodeSystem",
        "id": format!("outpost-{}", cs.name),
        "url": system(cs.name),
        "version": "1",
        "name": cs.name.split('-').map(words).collect::<String>(),
        "title": cs.title,
        "status": "active",
        "publisher": "outpost",
        "description": cs.description,
        "caseSensitive": true,
        "content": "complete",
        "count": cs.concepts.len(),
        "concept": cs.concepts.iter().map(|(code, display, definition)| json!({
            "code": code, "display": display, "definition": definition,
        })).collect::<Vec<_>>(),
    })
}

/// The SNOMED CT concept of a service line (the specialty), with outpost's name for it.
pub fn specialty(line: ServiceLine) -> Value {
    json!({
        "coding": [{ "system": SNOMED, "code": line.snomed() }],
        "text": words(line.as_str()),
    })
}

/// English words for a vocabulary value: `conveyance_avoided` -> `Conveyance avoided`.
pub fn say(code: &str) -> String {
    words(code)
}
