//! Closed vocabularies of the domain.
//!
//! Every value is stored in the session document as its snake_case name (the `as_str` form).
//! Parsing is forgiving about case and accepts `-` for `_` ("close-up" and "close_up" are the
//! same view); an unknown value is an error naming the field and listing what is accepted.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value outside a closed vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {field} {value:?}; expected one of: {expected}")]
pub struct VocabError {
    /// The field being parsed ("service line", "outcome", ...).
    pub field: &'static str,
    /// What was given.
    pub value: String,
    /// The accepted values, comma separated.
    pub expected: String,
}

/// The JSON schema of a closed vocabulary: one of its stored names.
#[cfg(feature = "openapi")]
pub(crate) fn string_enum<'a>(
    field: &str,
    values: impl Iterator<Item = &'a str>,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(format!("A {field} (also accepted with `-` for `_`, in any case).")))
        .enum_values(Some(values.map(str::to_string)))
        .into()
}

macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, $field:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The field's name in error messages.
            pub const FIELD: &'static str = $field;

            /// The stored (snake_case) name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses a stored name or a user's spelling of it.
            pub fn parse(text: &str) -> Result<Self, VocabError> {
                let norm = text.trim().to_ascii_lowercase().replace('-', "_");
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == norm)
                    .ok_or_else(|| VocabError {
                        field: $field,
                        value: text.to_string(),
                        expected: $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                    })
            }
        }

        impl std::str::FromStr for $name {
            type Err = VocabError;
            fn from_str(s: &str) -> Result<Self, VocabError> {
                $name::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::vocab::string_enum($field, $name::ALL.iter().map(|v| v.as_str()))
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

vocabulary! {
    /// The role a node plays in the fleet.
    Role, "role" {
        /// An ambulance tablet or a surgery box: creates sessions.
        Edge => "edge",
        /// One per ICB: relays sessions, routes calls, keeps the record.
        Hub => "hub",
        /// A consultant's workstation.
        Desk => "desk",
    }
}

vocabulary! {
    /// Where the requesting clinician is.
    CareSetting, "care setting" {
        GpElective => "gp_elective",
        GpUrgent => "gp_urgent",
        AmbulanceOnScene => "ambulance_on_scene",
        /// NHS 111.
        Nhs111 => "111",
        CareHome => "care_home",
    }
}

vocabulary! {
    /// The specialty a session asks for advice from.
    ServiceLine, "service line" {
        Dermatology => "dermatology",
        Cardiology => "cardiology",
        Gastroenterology => "gastroenterology",
        EmergencyMedicine => "emergency_medicine",
        Paediatrics => "paediatrics",
        Haematology => "haematology",
        Gynaecology => "gynaecology",
    }
}

impl ServiceLine {
    /// The SNOMED CT concept id of the specialty.
    pub fn snomed(self) -> &'static str {
        match self {
            ServiceLine::Dermatology => "394582007",
            ServiceLine::Cardiology => "394579002",
            ServiceLine::Gastroenterology => "394584008",
            ServiceLine::EmergencyMedicine => "773568002",
            ServiceLine::Paediatrics => "394537008",
            ServiceLine::Haematology => "394803006",
            ServiceLine::Gynaecology => "394586005",
        }
    }
}

vocabulary! {
    /// How the advice is sought.
    Channel, "channel" {
        Call => "call",
        Photo => "photo",
        Message => "message",
    }
}

vocabulary! {
    /// Clinical priority of the request.
    Priority, "priority" {
        Routine => "routine",
        Urgent => "urgent",
        TwoWeekWait => "two_week_wait",
    }
}

vocabulary! {
    /// Where a session stands. Declaration order is the forward order: a merge never
    /// takes a session to an earlier status within one epoch (see `docs/schema.md`).
    Status, "status" {
        Draft => "draft",
        Queued => "queued",
        Routing => "routing",
        Connected => "connected",
        AwaitingReply => "awaiting_reply",
        Responded => "responded",
        OutcomeRecorded => "outcome_recorded",
        Closed => "closed",
        Cancelled => "cancelled",
    }
}

impl Status {
    /// Whether the session is finished (closed or cancelled) and needs a reopen to continue.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Closed | Status::Cancelled)
    }
}

vocabulary! {
    /// Which side of the conversation records an outcome.
    Side, "side" {
        Requester => "requester",
        Responder => "responder",
    }
}

vocabulary! {
    /// What happened to the patient after the advice.
    Outcome, "outcome" {
        ReferralAvoided => "referral_avoided",
        ReferralMade => "referral_made",
        ConveyanceAvoided => "conveyance_avoided",
        ConveyedEd => "conveyed_ed",
        ConveyedSdec => "conveyed_sdec",
        AdmissionAvoided => "admission_avoided",
        Ambulatory => "ambulatory",
        Admitted => "admitted",
        AdviceOnly => "advice_only",
        NotReported => "not_reported",
    }
}

vocabulary! {
    /// The kind of photograph, following teledermatology practice (three per lesion).
    PhotoView, "photo view" {
        /// Where on the body, from a distance.
        Site => "site",
        /// About 20 cm from the lesion.
        CloseUp => "close_up",
        /// Through a dermatoscope.
        Dermoscopic => "dermoscopic",
    }
}

vocabulary! {
    /// How consent was given.
    ConsentKind, "consent" {
        Verbal => "verbal",
        Implied => "implied",
        Written => "written",
    }
}

vocabulary! {
    /// What the consent covers.
    ConsentScope, "consent scope" {
        RecordOnly => "record_only",
        Teaching => "teaching",
    }
}

vocabulary! {
    /// NHS number verification status (the PDS trace status codes 01 to 08).
    NhsVerification, "NHS number verification status" {
        /// Number present and verified: the only status that is trusted.
        Verified => "01",
        /// Number present but not traced.
        NotTraced => "02",
        /// Trace required.
        TraceRequired => "03",
        /// Trace attempted, no match or multiple matches found.
        NoMatch => "04",
        /// Trace needs to be resolved.
        NeedsResolution => "05",
        /// Trace in progress.
        InProgress => "06",
        /// Number not present and trace not required.
        NotPresent => "07",
        /// Trace postponed (baby under six weeks old).
        Postponed => "08",
    }
}

impl NhsVerification {
    /// A short English description for screens.
    pub fn describe(self) -> &'static str {
        match self {
            NhsVerification::Verified => "present and verified",
            NhsVerification::NotTraced => "present, not traced",
            NhsVerification::TraceRequired => "trace required",
            NhsVerification::NoMatch => "trace found no single match",
            NhsVerification::NeedsResolution => "trace needs resolving",
            NhsVerification::InProgress => "trace in progress",
            NhsVerification::NotPresent => "no number, trace not required",
            NhsVerification::Postponed => "trace postponed",
        }
    }

    /// Only "01" may be relied on to identify a patient.
    pub fn is_trusted(self) -> bool {
        self == NhsVerification::Verified
    }
}

vocabulary! {
    /// How far a message or photo has travelled, in forward order.
    ReceiptLevel, "receipt" {
        /// Only on the device that wrote it.
        Device => "device",
        /// Stored durably by the hub.
        Hub => "hub",
        /// Stored durably by a consultant's desk.
        Desk => "desk",
        /// A reply stored durably on the requester's device (the crew's tablet, the surgery's
        /// box): the consultant's advice has reached them.
        Requester => "requester",
        /// Opened by a person at the other end (the consultant, or for a reply the requester).
        Read => "read",
    }
}

impl ReceiptLevel {
    /// The words a clinician sees.
    pub fn describe(self) -> &'static str {
        match self {
            ReceiptLevel::Device => "on this device only",
            ReceiptLevel::Hub => "at hub",
            ReceiptLevel::Desk => "at consultant",
            ReceiptLevel::Requester => "at requester",
            ReceiptLevel::Read => "read",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_accepts_dashes_and_case() {
        assert_eq!(PhotoView::parse("close-up"), Ok(PhotoView::CloseUp));
        assert_eq!(CareSetting::parse("Ambulance_On_Scene"), Ok(CareSetting::AmbulanceOnScene));
        assert_eq!(Priority::parse("two-week-wait"), Ok(Priority::TwoWeekWait));
        assert_eq!(CareSetting::parse("111"), Ok(CareSetting::Nhs111));
    }

    #[test]
    fn unknown_value_names_field_and_choices() {
        let err = ServiceLine::parse("podiatry").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("service line"), "{text}");
        assert!(text.contains("\"podiatry\""), "{text}");
        assert!(text.contains("dermatology"), "{text}");
    }

    #[test]
    fn status_order_is_the_forward_order() {
        assert!(Status::Draft < Status::Queued);
        assert!(Status::Responded < Status::OutcomeRecorded);
        assert!(Status::Closed < Status::Cancelled);
        assert!(ReceiptLevel::Device < ReceiptLevel::Hub && ReceiptLevel::Desk < ReceiptLevel::Read);
    }

    #[test]
    fn every_value_round_trips_through_its_name() {
        for v in Outcome::ALL {
            assert_eq!(Outcome::parse(v.as_str()).as_ref(), Ok(v));
        }
        for v in ServiceLine::ALL {
            assert_eq!(ServiceLine::parse(v.as_str()).as_ref(), Ok(v));
            assert_eq!(v.snomed().len(), 9);
        }
    }
}
