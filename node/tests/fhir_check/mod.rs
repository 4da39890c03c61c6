//! Checks every FHIR bundle of the tests passes: an independent FHIR R4 model (`fhirbolt`,
//! strict) parses it and serialises it back unchanged; every reference resolves inside it; no
//! element is empty; every time is RFC 3339; every code of outpost's own systems is published.
//! (A module of its own, not in `common`, so that only the tests that use it build it.)
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use fhirbolt::model::r4::Resource;
use fhirbolt::model::r4::resources::Bundle;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use outpost_node::export::codes;
use serde_json::Value;

pub fn strict() -> Option<DeserializationConfig> {
    Some(DeserializationConfig { mode: DeserializationMode::Strict })
}

/// Parses a bundle in the independent model, serialises it back and asserts nothing was lost.
/// (Parsed as the `Resource` enum: fhirbolt 0.4's typed `Bundle` entry point refuses any entry's
/// `fullUrl` after the first entry's resource, a bug of that path only; the enum's is strict alike.)
pub fn parse_and_round_trip(bundle: &Value) -> Bundle {
    let text = serde_json::to_string(bundle).unwrap();
    let parsed: Resource = fhirbolt::json::from_str(&text, strict()).unwrap_or_else(|e| {
        let col = e.to_string().rsplit("column ").next().and_then(|c| c.parse::<usize>().ok()).unwrap_or(0);
        let near = text.get(col.saturating_sub(300)..(col + 40).min(text.len())).unwrap_or("");
        panic!("fhirbolt (strict, R4) refused the bundle: {e}\nnear: {near}")
    });
    let again: Value = serde_json::from_str(&fhirbolt::json::to_string(&parsed, None).unwrap()).unwrap();
    if let Some(path) = first_difference(bundle, &again, String::new()) {
        panic!("the bundle changed on a round trip through fhirbolt at {path}");
    }
    match parsed {
        Resource::Bundle(b) => *b,
        other => panic!("not a Bundle: {other:?}"),
    }
}

/// Where two JSON values differ (numbers compared by value).
pub fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, format!("{at}.{k}")),
                _ => Some(format!("{at}.{k}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (p, q))| first_difference(p, q, format!("{at}[{i}]")))
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(at),
    }
}

/// Every `reference` anywhere in the bundle, with where it is.
pub fn references(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "reference"
                    && let Some(r) = x.as_str()
                {
                    out.push((at.to_string(), r.to_string()));
                }
                references(x, &format!("{at}.{k}"), out);
            }
        }
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| references(x, &format!("{at}[{i}]"), out)),
        _ => {}
    }
}

/// The bundle's resources by type.
pub fn of_type<'a>(bundle: &'a Value, kind: &str) -> Vec<&'a Value> {
    bundle["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).filter(|r| r["resourceType"] == kind).collect()
}

pub fn counts(bundle: &Value) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for e in bundle["entry"].as_array().unwrap() {
        *c.entry(e["resource"]["resourceType"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    c
}

/// The checks every exported bundle passes.
pub fn check_bundle(bundle: &Value) {
    parse_and_round_trip(bundle);
    assert_eq!(bundle["type"], "collection");
    let entries = bundle["entry"].as_array().unwrap();
    let urls: BTreeSet<&str> = entries.iter().map(|e| e["fullUrl"].as_str().unwrap()).collect();
    assert_eq!(urls.len(), entries.len(), "every fullUrl is unique");
    let mut refs = Vec::new();
    references(bundle, "Bundle", &mut refs);
    assert!(!refs.is_empty());
    for (at, r) in &refs {
        assert!(urls.contains(r.as_str()), "{at} refers to {r}, which is not in the bundle");
    }
    // FHIR has no empty elements: no empty array, object or string anywhere.
    let mut empty = Vec::new();
    empties(bundle, "Bundle", &mut empty);
    assert!(empty.is_empty(), "empty elements: {empty:?}");
    // Times: FHIR instants/dateTimes in UTC that a strict RFC 3339 parser reads.
    let mut times = Vec::new();
    collect_times(bundle, &mut times);
    assert!(!times.is_empty());
    for t in times {
        humantime::parse_rfc3339(&t).unwrap_or_else(|e| panic!("{t} is not an RFC 3339 instant: {e}"));
    }
    // Every code of outpost's own systems is defined in the CodeSystem published in docs/fhir.
    let published: BTreeMap<String, BTreeSet<String>> = codes::all()
        .iter()
        .map(|cs| (codes::system(cs.name), cs.concepts.iter().map(|c| c.0.clone()).collect()))
        .collect();
    let mut codings = Vec::new();
    collect_codings(bundle, &mut codings);
    for (system, code) in codings {
        if system.starts_with(codes::BASE) {
            let known = published.get(&system).unwrap_or_else(|| panic!("{system} is not a published CodeSystem"));
            assert!(known.contains(&code), "{code} is not in {system}");
        }
    }
}

pub fn empties(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if m.is_empty() => out.push(at.to_string()),
        Value::Array(a) if a.is_empty() => out.push(at.to_string()),
        Value::String(s) if s.trim().is_empty() => out.push(at.to_string()),
        Value::Object(m) => m.iter().for_each(|(k, x)| empties(x, &format!("{at}.{k}"), out)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| empties(x, &format!("{at}[{i}]"), out)),
        _ => {}
    }
}

pub fn collect_times(v: &Value, out: &mut Vec<String>) {
    const KEYS: &[&str] = &[
        "timestamp",
        "authoredOn",
        "lastModified",
        "sent",
        "received",
        "start",
        "end",
        "createdDateTime",
        "effectiveDateTime",
        "dateTime",
        "creation",
    ];
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if KEYS.contains(&k.as_str())
                    && let Some(s) = x.as_str()
                {
                    out.push(s.to_string());
                }
                collect_times(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_times(x, out)),
        _ => {}
    }
}

pub fn collect_codings(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            if let (Some(s), Some(c)) = (m.get("system").and_then(Value::as_str), m.get("code").and_then(Value::as_str))
            {
                out.push((s.to_string(), c.to_string()));
            }
            m.values().for_each(|x| collect_codings(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_codings(x, out)),
        _ => {}
    }
}
