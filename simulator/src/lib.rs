//! # outpost-sim
//!
//! A deterministic simulator of a whole ICB: one thread, one virtual clock, one seeded
//! random generator, driving many outpost nodes that run the **real** sync engine and session
//! model of `sync-protocol` (real Automerge documents, real frames) over links modelled on the
//! named profiles of the domain brief, with in-memory stores that keep the node's durability
//! semantics (every write a store acknowledges survives a crash). Faults compose: crashes,
//! partitions, outages, clogged links, clock skew, corrupted and duplicated frames, lost
//! sync state. Invariant checkers, apart from the workload, watch for lost writes, scope
//! breaches, receipts that claim more than is true, statuses moving backwards, and divergence
//! once links heal.
//!
//! `outpost-sim run --scenario rural-day --seed 7 --out DIR` writes a JSON report, a text
//! summary and SVG plots. `SIM_SEED` reproduces a run; two runs of one seed have the same
//! event-log hash.

pub mod metrics;
pub mod photos;
pub mod plot;
pub mod scenario;
pub mod world;

use std::time::Instant;

use serde::Serialize;

use crate::metrics::{Escalation, Percentiles, Sample, Violation, What};
use crate::scenario::{Kind, Scenario};
use crate::world::{Options, World};

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// The command that reruns this exact run.
    pub rerun: String,
    /// Simulated hours of the scenario (before settling).
    pub hours: f64,
    /// Nodes per kind.
    pub nodes: std::collections::BTreeMap<String, usize>,
    /// Wall-clock seconds the run took.
    pub wall_seconds: f64,
    /// Simulated seconds per wall-clock second.
    pub speed: f64,
    /// Events processed.
    pub events: u64,
    /// Hash of the event log (equal for equal seeds).
    pub event_hash: String,
    /// Writes by kind (sessions, messages, photos).
    pub writes: std::collections::BTreeMap<String, usize>,
    /// Bytes of photos taken.
    pub photo_bytes: u64,
    /// Delivery latency (seconds) from the clinician's write to the hub holding it, per kind of node.
    pub to_hub: std::collections::BTreeMap<String, Percentiles>,
    /// ... to a consultant's desk of the line holding it.
    pub to_desk: std::collections::BTreeMap<String, Percentiles>,
    /// Photos only: write to hub.
    pub photo_to_hub: Percentiles,
    /// Writes that never reached the hub during the scenario (before settling).
    pub undelivered_at_end: usize,
    /// Writes that had not reached the hub even after every link healed and the region settled.
    pub never_delivered: usize,
    /// Payload bytes (Automerge changes, photo chunks) over bytes on the wire.
    pub wire_efficiency: f64,
    /// Bytes on the wire.
    pub wire_bytes: u64,
    /// Payload bytes.
    pub payload_bytes: u64,
    /// Connections made and lost.
    pub connections: (u64, u64),
    /// Attacks by hostile nodes (`byzantine` faults): made, and refused by the hub.
    pub attacks: (u64, u64),
    /// Restores from backups (`restore` faults), the items they lost that a peer still held
    /// (which must come back by sync), and the writes they lost for good because no other node
    /// held them (not counted as undelivered).
    pub restores: (u64, u64, u64),
    /// Audit chains: findings the restores made due and the checker judged (a hub had kept an
    /// end of a restored member's chain the backup does not hold, and the two spoke since: a
    /// finding by the hub and one by the member), and findings of a chain cut back or changed
    /// held in every chain at the end.
    #[serde(default)]
    pub audit_findings: (u64, u64),
    /// Directory edits the hub wrote during the run.
    #[serde(default)]
    pub directory_edits: u64,
    /// Seconds from the last link healing to every replica converging.
    pub convergence_seconds: Option<f64>,
    /// Call escalations.
    pub escalations: usize,
    /// Outcomes (sides) the hubs flagged `not_reported` after a call.
    pub not_reported: u64,
    /// Share of escalations where the desk held the whole session when it rang.
    pub escalations_desk_held_whole: f64,
    /// Median seconds from the call being asked for to the desk ringing.
    pub escalation_to_ring: Percentiles,
    /// Escalations connected to a desk.
    pub escalations_connected: usize,
    /// Escalations that ended in a callback, by cause (`sync_protocol::call::CallbackCause::as_str`).
    pub escalation_callbacks: std::collections::BTreeMap<String, usize>,
    /// Escalations handed to a federated hub, and of those, connected to its desk.
    pub escalations_handed_over: (usize, usize),
    /// Invariant violations (none, for a pass).
    pub violations: Vec<Violation>,
    /// Samples over time.
    #[serde(skip)]
    pub samples: Vec<Sample>,
    /// Raw delivery times, for plots: (kind, to, seconds).
    #[serde(skip)]
    pub deliveries: Vec<(String, &'static str, f64)>,
    /// Escalation records.
    #[serde(skip)]
    pub escalation_list: Vec<Escalation>,
}

impl Report {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The text summary.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "outpost-sim: scenario {}, seed {}", self.scenario, self.seed);
        let _ = writeln!(s, "rerun: {}", self.rerun);
        let _ = writeln!(
            s,
            "region: {}; {:.0} h simulated in {:.1} s wall ({:.0} simulated seconds per wall second, {} events)",
            self.nodes.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "),
            self.hours,
            self.wall_seconds,
            self.speed,
            self.events
        );
        let _ = writeln!(
            s,
            "writes: {}; photos {:.1} MB",
            self.writes.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", "),
            self.photo_bytes as f64 / 1e6
        );
        let _ = writeln!(s, "\ndelivery latency (s)            count      p50      p95      p99      max");
        for (label, map) in [("to hub", &self.to_hub), ("to desk", &self.to_desk)] {
            for (k, p) in map {
                let _ = writeln!(
                    s,
                    "  {:<10} from {:<12} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                    label, k, p.count, p.p50, p.p95, p.p99, p.max
                );
            }
        }
        let p = &self.photo_to_hub;
        let _ = writeln!(
            s,
            "  photos to hub           {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            p.count, p.p50, p.p95, p.p99, p.max
        );
        let _ = writeln!(
            s,
            "\nwire efficiency (payload / bytes on the wire): {:.3} ({:.1} MB payload, {:.1} MB on the wire)",
            self.wire_efficiency,
            self.payload_bytes as f64 / 1e6,
            self.wire_bytes as f64 / 1e6
        );
        let _ = writeln!(s, "connections: {} made, {} lost", self.connections.0, self.connections.1);
        if self.attacks.0 > 0 {
            let _ = writeln!(
                s,
                "attacks by hostile nodes (byzantine faults): {} made, {} refused",
                self.attacks.0, self.attacks.1
            );
        }
        if self.restores.0 > 0 {
            let _ = writeln!(
                s,
                "restores from backups: {}; items they lost and got back from peers: {}; writes lost for good (no other node held them): {}",
                self.restores.0, self.restores.1, self.restores.2
            );
            let _ = writeln!(
                s,
                "audit chains cut back by the restores: {} findings due and checked; {} held in the chains (peer.audit_behind, audit.behind, peer.audit_chain_changed)",
                self.audit_findings.0, self.audit_findings.1
            );
        }
        if self.directory_edits > 0 {
            let _ = writeln!(
                s,
                "directory edits by the hub during the run: {} (every edge and desk held the last at the end, or convergence says so)",
                self.directory_edits
            );
        }
        match self.convergence_seconds {
            Some(c) => {
                let _ = writeln!(s, "convergence after the last link healed: {c:.0} s");
            }
            None => {
                let _ = writeln!(s, "convergence after the last link healed: NOT REACHED");
            }
        }
        let callbacks: Vec<String> = self.escalation_callbacks.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let _ = writeln!(
            s,
            "call escalations: {}; connected {}; callbacks {} ({}); the desk held the whole session (text and \
             photos) when it rang in {:.1}%; ask to first ring p50 {:.0} s, p95 {:.0} s",
            self.escalations,
            self.escalations_connected,
            self.escalation_callbacks.values().sum::<usize>(),
            if callbacks.is_empty() { "none".to_string() } else { callbacks.join(", ") },
            self.escalations_desk_held_whole * 100.0,
            self.escalation_to_ring.p50,
            self.escalation_to_ring.p95
        );
        if self.not_reported > 0 {
            let _ = writeln!(s, "outcomes flagged not reported after a call: {}", self.not_reported);
        }
        if self.escalations_handed_over.0 > 0 {
            let _ = writeln!(
                s,
                "handed to another ICB's hub: {}; connected there {}",
                self.escalations_handed_over.0, self.escalations_handed_over.1
            );
        }
        if self.violations.is_empty() {
            let _ = writeln!(
                s,
                "\ninvariants: all held (durability, scope, receipts, status, routing, outcomes, audit chains, convergence)"
            );
        } else {
            let _ = writeln!(s, "\ninvariants: {} VIOLATIONS (seed {}):", self.violations.len(), self.seed);
            for v in self.violations.iter().take(20) {
                let _ = writeln!(s, "  [{}] at {:.0} s: {}", v.check, v.at_s, v.detail);
            }
            let _ = writeln!(s, "rerun with: {}", self.rerun);
        }
        s
    }
}

/// The command line that reruns a scenario with a seed.
pub fn rerun_command(scenario: &str, opts: &Options) -> String {
    let seed = opts.seed;
    let mut extra = opts.hours.map(|h| format!(" --hours {h}")).unwrap_or_default();
    if opts.bugs.lose_acked_writes_on_crash {
        extra.push_str(" --plant lose-acked-writes");
    }
    if let Some(n) = &opts.bugs.ignore_scope_at {
        extra.push_str(&format!(" --plant ignore-scope-at={n}"));
    }
    if opts.bugs.gate_hears_one_window {
        extra.push_str(" --plant gate-hears-one-window");
    }
    if opts.bugs.flags_outcomes_at_once {
        extra.push_str(" --plant flags-outcomes-at-once");
    }
    format!(
        "SIM_SEED={seed} cargo run --release -p outpost-sim -- run --scenario {scenario}{extra} --out sim-out/{scenario}-{seed}"
    )
}

/// Runs a scenario to its end. `progress` is called with the simulated hour as the run goes.
pub fn run(scenario: Scenario, opts: Options, mut progress: impl FnMut(f64, f64)) -> Report {
    let started = Instant::now();
    let name = scenario.name.clone();
    let seed = opts.seed;
    let rerun = rerun_command(&name, &opts);
    let mut w = World::new(scenario, opts);
    let total = w.scenario_hours() + w.scenario().settle_minutes / 60.0;
    let mut h = 0.0;
    while !w.ended() {
        h += 0.25;
        w.run_until(h);
        progress(w.hours().min(total), total);
        if h > total + 1.0 {
            break;
        }
    }
    w.finish();
    let wall = started.elapsed().as_secs_f64();
    report(&mut w, &name, seed, rerun, wall)
}

fn report(w: &mut World, name: &str, seed: u64, rerun: String, wall: f64) -> Report {
    let scenario_end = (w.scenario_hours() * 3600.0 * 1e6) as u64;
    let mut to_hub: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut to_desk: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut photo_to_hub = Vec::new();
    let mut deliveries = Vec::new();
    let mut writes: std::collections::BTreeMap<String, usize> = Default::default();
    let mut undelivered = 0;
    let mut lost = 0;
    for e in &w.ledger.entries {
        let kind = e.kind.as_str().to_string();
        *writes.entry(format!("{:?}", e.what).to_lowercase()).or_default() += 1;
        match e.at_hub {
            Some(t) => {
                let d = (t - e.written) as f64 / 1e6;
                to_hub.entry(kind.clone()).or_default().push(d);
                deliveries.push((kind.clone(), "hub", d));
                if e.what == What::Photo {
                    photo_to_hub.push(d);
                }
                if t > scenario_end {
                    undelivered += 1;
                }
            }
            None if w.lost_in_restore.contains(&e.key) => {}
            None => {
                undelivered += 1;
                lost += 1;
            }
        }
        if let Some(t) = e.at_desk {
            let d = (t - e.written) as f64 / 1e6;
            to_desk.entry(kind.clone()).or_default().push(d);
            deliveries.push((kind, "desk", d));
        }
    }
    let esc = &w.escalations;
    let rung: Vec<&Escalation> = esc.iter().filter(|e| e.rung_s.is_some()).collect();
    let held = rung.iter().filter(|e| e.desk_held_whole).count();
    let mut nodes = std::collections::BTreeMap::new();
    for k in [Kind::Surgery, Kind::Ambulance, Kind::Desk, Kind::Hub] {
        nodes.insert(k.as_str().to_string(), w.count(k));
    }
    let sim_seconds = w.hours() * 3600.0;
    Report {
        scenario: name.to_string(),
        seed,
        rerun,
        hours: w.scenario_hours(),
        nodes,
        wall_seconds: wall,
        speed: sim_seconds / wall.max(1e-9),
        events: w.events_processed,
        event_hash: w.event_hash(),
        writes,
        photo_bytes: w.photo_bytes(),
        to_hub: to_hub.into_iter().map(|(k, v)| (k, Percentiles::of(v))).collect(),
        to_desk: to_desk.into_iter().map(|(k, v)| (k, Percentiles::of(v))).collect(),
        photo_to_hub: Percentiles::of(photo_to_hub),
        undelivered_at_end: undelivered,
        never_delivered: lost,
        wire_efficiency: w.payload_total as f64 / w.wire_total.max(1) as f64,
        wire_bytes: w.wire_total,
        payload_bytes: w.payload_total,
        connections: (w.connections, w.connections_lost),
        attacks: w.attacks,
        restores: w.restores,
        audit_findings: w.audit_findings(),
        directory_edits: w.directory_edits,
        convergence_seconds: w.convergence_seconds(),
        escalations: esc.len(),
        not_reported: w.not_reported,
        escalations_desk_held_whole: if rung.is_empty() { 0.0 } else { held as f64 / rung.len() as f64 },
        escalation_to_ring: Percentiles::of(rung.iter().filter_map(|e| Some(e.rung_s? - e.asked_s)).collect()),
        escalations_connected: esc.iter().filter(|e| e.connected_s.is_some()).count(),
        escalation_callbacks: esc.iter().filter_map(|e| e.callback.clone()).fold(Default::default(), |mut m, r| {
            *m.entry(r).or_insert(0) += 1;
            m
        }),
        escalations_handed_over: (
            esc.iter().filter(|e| e.handed_to.is_some()).count(),
            esc.iter().filter(|e| e.handed_to.is_some() && e.connected_s.is_some()).count(),
        ),
        violations: w.violations().to_vec(),
        samples: w.samples.clone(),
        deliveries,
        escalation_list: esc.clone(),
    }
}
