//! Scenario files (TOML): the region, its nodes and links, the workload, and faults.
//!
//! ```toml
//! name = "rural-day"
//! hours = 24                       # simulated time
//! start_hour = 6                   # wall-clock hour at which the run starts (working hours)
//! icb = "QHM"
//!
//! [[group]]                        # nodes come in groups
//! kind = "surgery"                 # surgery | ambulance | desk
//! count = 100
//! link = "rural-surgery"           # a profile of sync_protocol::links, or:
//! # drive = ["urban-4g:20", "rural-a-road:40", "remote-moor:15"]   # profile:minutes, cycled (ambulances)
//! sessions_per_hour = 0.2          # each node, while open
//! open_hours = [8, 18]             # surgeries; absent: always open
//! # lines = ["dermatology", "dermatology", "cardiology"]             # desks, one line each, cycled
//!
//! [[line]]                         # the hub's directory: hours and channels of a line
//! line = "cardiology"              # (default 24/7, every channel; rota: the desks of that line)
//! hours = "mon-fri 08:00-18:30"    # UK time
//!
//! [federation]                     # another ICB's hub, linked to this one, taking the calls
//! icb = "QOX"                      # of some lines out of area (each home line's fallback);
//! link = "hospital"                # it keeps one desk per line, on the same link profile
//! lines = ["cardiology"]
//!
//! [workload]                       # see `Workload`
//!
//! [[fault]]                        # see `Fault`
//! kind = "outage"
//! targets = "ambulance:1/3"
//! at_hour = 10.0
//! minutes = 120
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};
use sync_protocol::directory::Hours;
use sync_protocol::links::{self, LinkProfile};
use sync_protocol::vocab::{Channel, ServiceLine};

/// Why a scenario cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read scenario {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML of the scenario schema.
    #[error("scenario {path} is not valid: {detail}")]
    Invalid {
        /// The file or name.
        path: String,
        /// Why.
        detail: String,
    },
    /// No scenario of that name.
    #[error("no scenario named {0:?}; built in: {names}", names = BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    Unknown(String),
}

/// The scenarios shipped in `simulator/scenarios/`.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("rural-day", include_str!("../scenarios/rural-day.toml")),
    ("mast-failure", include_str!("../scenarios/mast-failure.toml")),
    ("storm-week", include_str!("../scenarios/storm-week.toml")),
    ("smoke", include_str!("../scenarios/smoke.toml")),
    ("federation", include_str!("../scenarios/federation.toml")),
];

/// A whole scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// Simulated hours.
    pub hours: f64,
    /// Wall-clock hour (0-24) at which the run starts.
    #[serde(default)]
    pub start_hour: f64,
    /// The ICB.
    #[serde(default = "default_icb")]
    pub icb: String,
    /// Node groups.
    #[serde(rename = "group")]
    pub groups: Vec<Group>,
    /// What the clinicians do.
    #[serde(default)]
    pub workload: Workload,
    /// The ICB directory's lines as the hub keeps them: hours and channels (a line not named
    /// here is open 24/7 for every channel); the rota is the scenario's desks of that line.
    #[serde(default, rename = "line")]
    pub lines: Vec<LineSpec>,
    /// Another ICB's hub taking some lines' calls out of area.
    #[serde(default)]
    pub federation: Option<Federation>,
    /// Edits of the hub's directory during the run (a deployer's `outpost rota set`).
    #[serde(default, rename = "directory_edit")]
    pub directory_edits: Vec<DirectoryEdit>,
    /// What goes wrong.
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    /// After `hours`, links are healed and the run continues until every replica converges,
    /// for at most this many minutes.
    #[serde(default = "default_settle")]
    pub settle_minutes: f64,
}

fn default_icb() -> String {
    "QHM".into()
}
fn default_settle() -> f64 {
    120.0
}

/// The kinds of node a group can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A GP surgery (an edge on a fixed line).
    Surgery,
    /// An ambulance (an edge on the move).
    Ambulance,
    /// A consultant's desk.
    Desk,
    /// The ICB's hub (one, implicit).
    Hub,
}

impl Kind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Surgery => "surgery",
            Kind::Ambulance => "ambulance",
            Kind::Desk => "desk",
            Kind::Hub => "hub",
        }
    }
}

/// A group of similar nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Surgery, ambulance or desk.
    pub kind: Kind,
    /// How many.
    pub count: usize,
    /// Their link profile (fixed).
    #[serde(default)]
    pub link: Option<String>,
    /// Or a drive: `profile:minutes` legs, cycled.
    #[serde(default)]
    pub drive: Vec<String>,
    /// The link never goes down (the profile's outages off), as the field benchmarks run it.
    #[serde(default)]
    pub steady: bool,
    /// New sessions per node per open hour.
    #[serde(default)]
    pub sessions_per_hour: f64,
    /// Opening hours `[from, to)`; absent: always open.
    #[serde(default)]
    pub open_hours: Option<(f64, f64)>,
    /// Desks: service lines, one per desk, cycled.
    #[serde(default)]
    pub lines: Vec<ServiceLine>,
}

/// One service line of the hub's directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSpec {
    /// The service line.
    pub line: ServiceLine,
    /// Opening hours in the directory's own form (UK time: `24/7`, `mon-fri 08:00-18:30`).
    #[serde(default = "always")]
    pub hours: String,
    /// How it can be reached (default: call, photo and message).
    #[serde(default = "all_channels")]
    pub channels: Vec<Channel>,
}

/// An edit of one line of the hub's directory during the run: its hours, its rota, or both.
/// The hub writes it as one change; the engine carries it to the ICB's edges and desks, and the
/// hub's router follows it from then on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryEdit {
    /// When, in hours from the start.
    pub at_hour: f64,
    /// The line edited (added to the directory if it is not there).
    pub line: ServiceLine,
    /// Its new opening hours, in the directory's form.
    #[serde(default)]
    pub hours: Option<String>,
    /// Its new rota: desks of the scenario that answer the line, in ring order.
    #[serde(default)]
    pub rota: Option<Vec<String>>,
}

/// A federated hub: another ICB's, linked to the region's hub, named as the fallback of some
/// of its lines; it keeps one desk for each of them (its own directory: open 24/7, that desk).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Federation {
    /// Its ICB.
    pub icb: String,
    /// The link profile between the two hubs, and between it and its desks.
    pub link: String,
    /// The home lines whose calls it takes when the home line cannot.
    pub lines: Vec<ServiceLine>,
}

impl Federation {
    /// The name the federated hub goes by.
    pub fn hub_name(&self) -> String {
        format!("hub-{}", self.icb.to_lowercase())
    }
}

fn always() -> String {
    "24/7".into()
}

fn all_channels() -> Vec<Channel> {
    Channel::ALL.to_vec()
}

/// The clinical workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Weights of the service lines of new sessions (surgeries).
    pub surgery_lines: Vec<(ServiceLine, f64)>,
    /// Weights of the service lines of new sessions (ambulances).
    pub ambulance_lines: Vec<(ServiceLine, f64)>,
    /// Lesions photographed in a dermatology session.
    pub lesions: (u32, u32),
    /// Photos per lesion.
    pub photos_per_lesion: u32,
    /// Photo size range in KB (log-uniform).
    pub photo_kb: (f64, f64),
    /// Follow-up messages from the requester per session.
    pub follow_ups: (u32, u32),
    /// Minutes between the requester's writes.
    pub write_gap_minutes: (f64, f64),
    /// Share of ambulance sessions escalated to a call.
    pub ambulance_escalations: f64,
    /// Share of urgent surgery sessions escalated to a call.
    pub surgery_escalations: f64,
    /// Minutes after the desk holds a session before it replies: calls and urgent.
    pub reply_urgent_minutes: (f64, f64),
    /// ... routine sessions (log-uniform; the brief says one to two working days).
    pub reply_routine_minutes: (f64, f64),
    /// Share of sessions whose requester records an outcome after the reply.
    pub outcome_share: f64,
    /// Share of rings a desk does not answer (the consultant is away or busy).
    pub desk_away: f64,
    /// Seconds a consultant takes to answer a ringing desk (uniform).
    pub answer_s: (f64, f64),
    /// Hours after a call connects before the hub flags a missing outcome `not_reported`
    /// (the node's `OUTPOST_OUTCOME_WAIT_S`; a day by default).
    pub outcome_wait_hours: f64,
}

impl Default for Workload {
    fn default() -> Self {
        use ServiceLine::*;
        Workload {
            surgery_lines: vec![
                (Dermatology, 0.45),
                (Cardiology, 0.15),
                (Gastroenterology, 0.15),
                (Paediatrics, 0.1),
                (Haematology, 0.08),
                (Gynaecology, 0.07),
            ],
            ambulance_lines: vec![(EmergencyMedicine, 0.5), (Cardiology, 0.3), (Paediatrics, 0.1), (Dermatology, 0.1)],
            lesions: (1, 2),
            photos_per_lesion: 3,
            photo_kb: (200.0, 4000.0),
            follow_ups: (0, 2),
            write_gap_minutes: (0.5, 10.0),
            ambulance_escalations: 0.4,
            surgery_escalations: 0.1,
            reply_urgent_minutes: (1.0, 30.0),
            reply_routine_minutes: (60.0, 2880.0),
            outcome_share: 0.9,
            desk_away: 0.15,
            answer_s: (3.0, 15.0),
            outcome_wait_hours: 24.0,
        }
    }
}

/// A fault, composable with others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// outage (links down), crash (node down, restarted after), partition (links of the targets
    /// down, the same as outage but named for hubs and desks), clog (bandwidth divided by
    /// `factor`), clock-skew (`hours` added to the targets' clocks), corrupt and duplicate
    /// (frames, with `probability`), forget (targets lose what they know of their peers),
    /// byzantine (targets attack with their valid identities), restore (targets restored from a
    /// backup `hours` old).
    pub kind: FaultKind,
    /// Which nodes: `all`, `hub`, `KIND:all`, `KIND:1/3` (the first third), `KIND:N`
    /// (the first N), or a node name.
    pub targets: String,
    /// When, in hours from the start.
    pub at_hour: f64,
    /// For how long, in minutes (outage, crash, partition, clog, corrupt, duplicate).
    #[serde(default)]
    pub minutes: f64,
    /// Repeat every so many hours (0: once).
    #[serde(default)]
    pub every_hours: f64,
    /// clog: bandwidth divisor.
    #[serde(default = "one")]
    pub factor: f64,
    /// clock-skew: hours added; restore: age of the backup, hours.
    #[serde(default)]
    pub hours: f64,
    /// corrupt, duplicate: per frame.
    #[serde(default)]
    pub probability: f64,
}

fn one() -> f64 {
    1.0
}

impl Fault {
    /// `targets` restored at `at_hour` from a backup taken `age_hours` before.
    pub fn restore(targets: &str, at_hour: f64, age_hours: f64) -> Fault {
        Fault {
            kind: FaultKind::Restore,
            targets: targets.into(),
            at_hour,
            minutes: 0.0,
            every_hours: 0.0,
            factor: 1.0,
            hours: age_hours,
            probability: 0.0,
        }
    }
}

/// Kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Links of the targets down.
    Outage,
    /// Targets crash; restarted after `minutes`.
    Crash,
    /// Links of the targets down (hub or desks cut off).
    Partition,
    /// Bandwidth divided.
    Clog,
    /// Clocks off by hours.
    ClockSkew,
    /// Frames corrupted.
    Corrupt,
    /// Frames delivered twice.
    Duplicate,
    /// Per-peer knowledge lost (as after restoring a backup).
    Forget,
    /// The targets turn hostile for `minutes`: with their valid identities they try, every
    /// tick of their connection, to read and forge what is not theirs (a stolen tablet).
    Byzantine,
    /// The targets are restored from a backup taken `hours` earlier (1 if unset) and restarted
    /// under a fresh actor instance: they lose what they wrote or received since, and must get
    /// back from their peers whatever a peer still holds.
    Restore,
}

impl Scenario {
    /// Parses TOML text.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario =
            toml::from_str(text).map_err(|e| ScenarioError::Invalid { path: origin.into(), detail: e.to_string() })?;
        s.check(origin)?;
        Ok(s)
    }

    /// The name the region's hub goes by.
    pub fn hub_name(&self) -> String {
        format!("hub-{}", self.icb.to_lowercase())
    }

    /// A built-in scenario by name, or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        if let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            return Scenario::parse(text, name_or_path);
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ScenarioError::Io { path: name_or_path.into(), source })?;
            return Scenario::parse(&text, name_or_path);
        }
        Err(ScenarioError::Unknown(name_or_path.into()))
    }

    /// The name of the `i`th node of group `group`: nodes of one kind are numbered on across
    /// groups (two groups of ambulances on different links are ambulances 1-5 and 6-10).
    pub fn node_name(&self, group: usize, i: usize) -> String {
        let kind = self.groups[group].kind;
        let before: usize = self.groups[..group].iter().filter(|g| g.kind == kind).map(|g| g.count).sum();
        format!("{}-{:03}", kind.as_str(), before + i + 1)
    }

    /// The names of the desks that answer a line (as the region names them).
    fn desks_of(&self, line: ServiceLine) -> Vec<String> {
        let mut out = Vec::new();
        for (gi, g) in self.groups.iter().enumerate().filter(|(_, g)| g.kind == Kind::Desk && !g.lines.is_empty()) {
            for i in 0..g.count {
                if g.lines[i % g.lines.len()] == line {
                    out.push(self.node_name(gi, i));
                }
            }
        }
        out
    }

    fn check(&self, origin: &str) -> Result<(), ScenarioError> {
        let bad = |detail: String| ScenarioError::Invalid { path: origin.into(), detail };
        if self.hours <= 0.0 {
            return Err(bad("hours must be positive".into()));
        }
        let icbs = std::iter::once(&self.icb).chain(self.federation.iter().map(|f| &f.icb));
        for icb in icbs {
            if icb.is_empty() || icb.len() > 16 {
                return Err(bad(format!("ICB code {icb:?} must be 1 to 16 characters")));
            }
        }
        // Each line's rota is its desks: the directory holds at most MAX_ROTA.
        let mut per_line: std::collections::BTreeMap<ServiceLine, usize> = Default::default();
        for g in self.groups.iter().filter(|g| g.kind == Kind::Desk && !g.lines.is_empty()) {
            for i in 0..g.count {
                *per_line.entry(g.lines[i % g.lines.len()]).or_default() += 1;
            }
        }
        if let Some((line, n)) = per_line.iter().find(|(_, n)| **n > sync_protocol::directory::MAX_ROTA) {
            return Err(bad(format!(
                "{n} desks answer {line}: a line's rota holds at most {}",
                sync_protocol::directory::MAX_ROTA
            )));
        }
        for g in &self.groups {
            if g.kind == Kind::Hub {
                return Err(bad("the hub is implicit; groups are surgeries, ambulances and desks".into()));
            }
            if g.link.is_none() && g.drive.is_empty() {
                return Err(bad(format!("a {} group needs a link or a drive", g.kind.as_str())));
            }
            if let Some(l) = &g.link
                && links::profile(l).is_none()
            {
                return Err(bad(format!("unknown link profile {l:?}")));
            }
            for leg in &g.drive {
                parse_leg(leg).map_err(bad)?;
            }
            if g.kind == Kind::Desk && g.lines.is_empty() {
                return Err(bad("a desk group needs lines".into()));
            }
        }
        for e in &self.directory_edits {
            if !(0.0..=self.hours).contains(&e.at_hour) {
                return Err(bad(format!("a directory edit at hour {} falls outside the run", e.at_hour)));
            }
            if let Some(h) = &e.hours {
                Hours::parse(h).map_err(|err| bad(format!("directory edit of {}: {err}", e.line)))?;
            }
            for (k, desk) in e.rota.iter().flatten().enumerate() {
                if !self.desks_of(e.line).contains(desk) {
                    return Err(bad(format!("directory edit of {}: {desk:?} is not a desk of that line", e.line)));
                }
                if e.rota.iter().flatten().take(k).any(|d| d == desk) {
                    return Err(bad(format!("directory edit of {}: {desk:?} named twice", e.line)));
                }
            }
        }
        for l in &self.lines {
            Hours::parse(&l.hours).map_err(|e| bad(format!("line {}: {e}", l.line)))?;
            if l.channels.is_empty() {
                return Err(bad(format!("line {} needs at least one channel", l.line)));
            }
        }
        if let Some(f) = &self.federation {
            if f.icb.eq_ignore_ascii_case(&self.icb) {
                return Err(bad("the federated hub belongs to another ICB".into()));
            }
            if links::profile(&f.link).is_none() {
                return Err(bad(format!("unknown link profile {:?} for the federated hub", f.link)));
            }
            if f.lines.is_empty() {
                return Err(bad("the federated hub needs lines to take".into()));
            }
        }
        Ok(())
    }
}

/// A leg of a drive: `profile:minutes`.
pub fn parse_leg(leg: &str) -> Result<(LinkProfile, f64), String> {
    let (name, minutes) = leg.split_once(':').ok_or_else(|| format!("drive leg {leg:?} is not profile:minutes"))?;
    let p = links::profile(name).ok_or_else(|| format!("unknown link profile {name:?} in drive leg {leg:?}"))?;
    let m: f64 = minutes.parse().map_err(|_| format!("drive leg {leg:?} has no number of minutes"))?;
    Ok((p, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_scenario_parses() {
        for (name, _) in BUILT_IN {
            let s = Scenario::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(s.name, *name);
        }
    }

    #[test]
    fn two_groups_of_one_kind_are_numbered_on_not_given_the_same_names() {
        let text = "name='x'\nhours=1\n[[group]]\nkind='ambulance'\ncount=2\nlink='urban-4g'\n\
                    [[group]]\nkind='surgery'\ncount=1\nlink='rural-surgery'\n\
                    [[group]]\nkind='ambulance'\ncount=2\nlink='rural-a-road'\n";
        let s = Scenario::parse(text, "t").unwrap();
        let names: Vec<String> = s
            .groups
            .iter()
            .enumerate()
            .flat_map(|(gi, g)| (0..g.count).map(move |i| (gi, i)))
            .map(|(gi, i)| s.node_name(gi, i))
            .collect();
        assert_eq!(names, ["ambulance-001", "ambulance-002", "surgery-001", "ambulance-003", "ambulance-004"]);
    }

    #[test]
    fn a_mistake_is_named() {
        let err = Scenario::parse("name='x'\nhours=1\n[[group]]\nkind='surgery'\ncount=1\nlink='dial-up'\n", "t")
            .unwrap_err();
        assert!(err.to_string().contains("dial-up"), "{err}");
        assert!(matches!(Scenario::load("no-such"), Err(ScenarioError::Unknown(_))));
    }
}
