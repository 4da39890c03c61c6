//! A session leaving outpost for another system's record: FHIR R4 (UK Core) for the GP record
//! and the ambulance ePR ([`fhir`]), a letter for people ([`letter`]), and the code systems both
//! use ([`codes`], published in `docs/fhir/`).
//!
//! Pure functions of a session's view and the photos this node holds whole; the node gathers
//! them, checks its scope and audits the export (`Node::export`).

use std::collections::{BTreeMap, BTreeSet};

use sync_protocol::session::LogValue;

pub mod codes;
pub mod fhir;
pub mod letter;

/// The photos of a session held whole on this node, by BLAKE3 hash (hex). A photo of the
/// session missing here (offloaded to the hub, or not yet received) is exported as a reference.
pub type Photos = BTreeMap<String, Vec<u8>>;

/// Which of a session's photos to read for an export: those whose consent stands (a withdrawn
/// consent removes the image, so its bytes are not even read).
pub fn photos_to_read(view: &sync_protocol::session::SessionView) -> BTreeSet<String> {
    view.media.iter().filter(|m| !m.consent_withdrawn).map(|m| m.hash.clone()).collect()
}

pub(crate) fn log_str<'a>(e: &'a BTreeMap<String, LogValue>, key: &str) -> Option<&'a str> {
    match e.get(key) {
        Some(LogValue::Str(s)) => Some(s),
        _ => None,
    }
}

pub(crate) fn log_int(e: &BTreeMap<String, LogValue>, key: &str) -> Option<i64> {
    match e.get(key) {
        Some(LogValue::Int(i)) => Some(*i),
        _ => None,
    }
}
