//! The photo upload experiment: the simulator's bandwidth model against the field's figures.
//!
//! One ambulance on a steady link (the profile's outages off, as the field benchmark runs it)
//! attaches photos to a dermatology session; the time is from the end of the handshake to the
//! hub holding every photo whole, as `cargo bench -p outpost-node --bench link` measures the
//! real transport. `outpost-sim photos` prints the table.

use serde::Serialize;

use super::{Micros, Options, SECOND, Work, World, secs};
use crate::scenario::{Scenario, ScenarioError};
use sync_protocol::links;
use sync_protocol::vocab::{PhotoView, ServiceLine};

/// What one upload took.
#[derive(Debug, Clone, Serialize)]
pub struct PhotoUpload {
    /// The link profile.
    pub profile: String,
    /// The seed.
    pub seed: u64,
    /// Photo bytes.
    pub payload: u64,
    /// Seconds from the end of the handshake to the hub holding every photo whole; none if
    /// they were not all there within the time limit.
    pub seconds: Option<f64>,
    /// The ideal: the photo bytes over the uplink's rate, less its mean loss.
    pub ideal_seconds: f64,
    /// Bytes on the simulated wire (both ways) over the photo bytes.
    pub wire_per_payload: f64,
}

/// Simulated time an upload may take before it is given up.
const LIMIT: Micros = 3_600 * SECOND;

impl World {
    /// Uploads photos of `sizes` bytes over a steady `profile` link, and times it.
    pub fn photo_upload(profile: &str, sizes: &[usize], seed: u64) -> Result<PhotoUpload, ScenarioError> {
        let text = format!(
            "name = \"photo-upload\"\nhours = 1\nstart_hour = 9\nsettle_minutes = 0\n\n\
             [[group]]\nkind = \"ambulance\"\ncount = 1\nlink = \"{profile}\"\nsteady = true\n"
        );
        let scenario = Scenario::parse(&text, "photo-upload")?;
        let p = links::profile(profile).ok_or_else(|| ScenarioError::Invalid {
            path: "photo-upload".into(),
            detail: format!("no profile {profile}"),
        })?;
        let mut w = World::new(scenario, Options { seed, ..Options::default() });
        let node = 1;
        let doc = w.create_session(node, ServiceLine::Dermatology, true).ok_or_else(|| ScenarioError::Invalid {
            path: "photo-upload".into(),
            detail: "the session could not be written".into(),
        })?;
        let views = [PhotoView::Site, PhotoView::CloseUp, PhotoView::Dermoscopic];
        for (i, size) in sizes.iter().enumerate() {
            let view = views[i % views.len()];
            w.work(Work::Photo { node, doc, view, kb: *size as f64 / 1024.0 });
        }
        let hashes: Vec<_> = w.photos.keys().copied().collect();
        let payload: u64 = w.photos.values().map(|b| b.len() as u64).sum();
        let link = w.nodes[node].link.unwrap_or_default();
        let mut ready: Option<Micros> = None;
        let mut done: Option<Micros> = None;
        while w.now < LIMIT && w.step() {
            if ready.is_none() && w.links[link].conn.is_some() {
                // Frames move a round trip and a half after the dial (`connect`).
                ready = Some(w.now + 3 * w.links[link].delay_us);
            }
            if hashes.iter().all(|h| w.nodes[w.hub].replica.holds_blob(h)) {
                done = Some(w.now);
                break;
            }
        }
        let ideal_seconds = payload as f64 * 8.0 / p.uplink_bps as f64 / (1.0 - p.loss.mean_loss());
        Ok(PhotoUpload {
            profile: profile.to_string(),
            seed,
            payload,
            seconds: done.zip(ready).map(|(d, r)| secs(d.saturating_sub(r))),
            ideal_seconds,
            wire_per_payload: w.wire_total as f64 / payload.max(1) as f64,
        })
    }
}
