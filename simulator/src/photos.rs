//! The simulator's photo times on each link of the field ladder, beside the real transport's.
//!
//! `outpost-sim photos` runs [`World::photo_upload`] (three ~2 MB photos, one ambulance, a
//! steady link) on every profile and prints the simulated time beside the field figures: the
//! real nodes over QUIC and mutual TLS through the user-space link emulator
//! (`cargo bench -p outpost-node --bench link`, outages off, the same setup) and the field
//! ladder (`field-tests/tests/ladder.rs`, whose moor rung includes a blackout). The issue's
//! goal: the simulator within 20% of the field on every profile.

use std::fmt::Write as _;

use crate::scenario::ScenarioError;
use crate::world::{PhotoUpload, World};

/// The profiles of the field ladder, in its order.
pub const LADDER: [&str; 6] = ["urban-4g", "rural-a-road", "remote-moor", "cell-edge", "3g-fallback", "satellite"];

/// Bytes of each photo (the field benchmark's: a ~2 MB JPEG).
pub const PHOTO_BYTES: usize = 2_000_000;

/// The field's photo times (seconds) for three ~2 MB photos, recorded on this machine on
/// 2026-12-03 with the default transport (the `radio` controller and the chunk window), as
/// `docs/field-tests.md` lists them: (profile, link benchmark, ladder rung).
pub const FIELD_SECONDS: [(&str, f64, f64); 6] = [
    ("urban-4g", 6.8, 6.9),
    ("rural-a-road", 13.3, 12.8),
    ("remote-moor", 13.2, 44.2),
    ("cell-edge", 55.8, 57.6),
    ("3g-fallback", 136.4, 131.9),
    ("satellite", 10.2, 10.3),
];

/// The field's figures for a profile: (link benchmark, ladder).
pub fn field_seconds(profile: &str) -> Option<(f64, f64)> {
    FIELD_SECONDS.iter().find(|(p, _, _)| *p == profile).map(|(_, b, l)| (*b, *l))
}

/// Uploads `photos` photos on each profile.
pub fn uploads(profiles: &[&str], photos: usize, seed: u64) -> Result<Vec<PhotoUpload>, ScenarioError> {
    profiles.iter().map(|p| World::photo_upload(p, &vec![PHOTO_BYTES; photos], seed)).collect()
}

/// The comparison as a Markdown table.
pub fn table(rows: &[PhotoUpload]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| profile | ideal | simulator | field: link benchmark | simulator / field | field: ladder | within 20% |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in rows {
        let field = field_seconds(&r.profile);
        let sim = r.seconds.map_or("did not finish".to_string(), |t| format!("{t:.1} s"));
        let ratio = r.seconds.zip(field).map(|(t, (b, _))| t / b);
        let _ = writeln!(
            s,
            "| {} | {:.1} s | {} | {} | {} | {} | {} |",
            r.profile,
            r.ideal_seconds,
            sim,
            field.map_or("-".into(), |(b, _)| format!("{b:.1} s")),
            ratio.map_or("-".into(), |x| format!("{x:.2}")),
            field.map_or("-".into(), |(_, l)| format!("{l:.1} s")),
            match ratio {
                Some(x) if (0.8..=1.2).contains(&x) => "yes",
                Some(_) => "NO",
                None => "-",
            }
        );
    }
    s
}
