//! The simulated region: nodes with in-memory stores, links with the named profiles, QUIC
//! connections as ordered, prioritised, lossy-but-recovering byte pipes, and the real sync
//! engine on both ends of each, all on one virtual clock driven by one seeded generator.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sync_protocol::TimeMs;
use sync_protocol::authorship::{AuthorKey, Member, SharedRoster};
use sync_protocol::blob::ChunkWindow;
use sync_protocol::call::{
    ADPCM_32K, Action, DEFAULT_RING_S, GATE_PROBES, GATE_WINDOWS, Listen, PathQuality, RotaDesk, calls_of, gate,
    gate_window_ms, quality_from_probes,
};
use sync_protocol::directory::{DirectoryDoc, Hours, LineEntry};
use sync_protocol::engine::{Engine, EngineConfig, Replica};
use sync_protocol::links::{self, LinkProfile, LinkState, Uniform};
use sync_protocol::mem::{ChunkPool, MemReplica};
use sync_protocol::router::{Due, PlantedBug, Router, Step, Write, not_reported};
use sync_protocol::routing::RoutingEntry;
use sync_protocol::scope::{DocMeta, PeerInfo, may_hold};
use sync_protocol::session::{
    NewConsent, NewMedia, NewMessage, NewSession, Patient, Requester, Service, SessionDoc, SessionId, SessionView,
};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, ReceiptLevel, Role,
    ServiceLine, Side, Status,
};
use sync_protocol::wire::{DocId, Frame, FrameDecoder, Hash, Lane};

use crate::metrics::{Entry, Escalation, Ledger, Micros, Sample, Violation, What};
use crate::scenario::{Fault, FaultKind, Kind, Scenario, parse_leg};

mod attack;
mod checks;
mod clock;
mod directory;
mod faults;
mod federation;
mod link;
mod observe;
mod router;
mod settle;
mod upload;
mod workload;

use clock::Ev;

use faults::Blind;
pub use upload::PhotoUpload;

const SECOND: Micros = 1_000_000;
const MINUTE: Micros = 60 * SECOND;
const HOUR: Micros = 60 * MINUTE;
/// QUIC idle timeout of the node's transport: a link down longer loses the connection.
const IDLE_TIMEOUT: Micros = 30 * SECOND;
/// How often a connected engine is ticked (the daemon ticks every 5 s; coarser here).
const TICK: Micros = 30 * SECOND;
/// Metrics sampling interval.
const SAMPLE: Micros = 10 * MINUTE;
/// Invariant sweep interval.
const SWEEP: Micros = HOUR;
/// Bytes of one QUIC handshake with mutual TLS (both certificates), both ways.
const HANDSHAKE_BYTES: u64 = 6_000;
/// Per-datagram overhead (IP, UDP, QUIC short header, AEAD tag, stream frame header).
const PACKET_OVERHEAD: u64 = 60;
/// Payload of a datagram.
const PACKET_PAYLOAD: u64 = 1_200;
/// Midnight UK time (BST) on Monday 21 September 2026: the simulated day's date, so that
/// documents carry plausible dates and the directory's hours (UK time) line up with the
/// scenario's `start_hour`.
const UK_MIDNIGHT_MS: TimeMs = 1_789_945_200_000;

/// Planted bugs, for proving that the checkers catch what they should.
#[derive(Debug, Clone, Default)]
pub struct Bugs {
    /// A store that acknowledges writes before they are durable: a crash loses the last one.
    pub lose_acked_writes_on_crash: bool,
    /// A store that ignores scope when it serves this node's peers (names a node).
    pub ignore_scope_at: Option<String>,
    /// A hub whose router judges the link by its first second of probes, without listening again.
    pub gate_hears_one_window: bool,
    /// A hub whose router flags outcomes `not_reported` as soon as a call connects.
    pub flags_outcomes_at_once: bool,
}

/// Run options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The seed.
    pub seed: u64,
    /// Planted bugs.
    pub bugs: Bugs,
    /// Stop the scenario after this many hours (before settling), for quick runs.
    pub hours: Option<f64>,
}

/// The random generator, as the link models want it.
struct U<'a>(&'a mut ChaCha8Rng);
impl Uniform for U<'_> {
    fn next_f64(&mut self) -> f64 {
        self.0.random::<f64>()
    }
}

#[derive(Debug)]
struct Node {
    name: String,
    kind: Kind,
    info: PeerInfo,
    replica: MemReplica,
    up: bool,
    /// Under a `byzantine` fault: attacking the hub with its valid identity.
    hostile: bool,
    skew_ms: i64,
    link: Option<usize>,
    rate: f64,
    open_hours: Option<(f64, f64)>,
    /// The last local write and the document before it (planted bug only).
    undo: Option<(DocId, Option<SessionDoc>)>,
    /// The document before the last local write of any kind (planted bug only): it becomes
    /// `undo` when that write is one the ledger tracks (a message or a photo).
    undo_last: Option<(DocId, Option<SessionDoc>)>,
    seq: u64,
}

impl Node {
    /// A node that writes no sessions of its own (a hub, a federated hub's desk).
    fn new(name: String, kind: Kind, replica: MemReplica, info: PeerInfo, link: Option<usize>) -> Node {
        Node {
            name,
            kind,
            replica,
            info,
            up: true,
            hostile: false,
            skew_ms: 0,
            link,
            rate: 0.0,
            open_hours: None,
            undo: None,
            undo_last: None,
            seq: 0,
        }
    }
}

#[derive(Debug, Clone)]
enum Spec {
    Fixed(LinkProfile),
    Drive(Vec<(LinkProfile, f64)>),
}

#[derive(Debug, Default)]
struct Dir {
    sync_q: VecDeque<Frame>,
    blob_q: VecDeque<Frame>,
    busy_until: Micros,
    tx_pending: bool,
    last_arrival: [Micros; 2],
    ge: LinkState,
}

#[derive(Debug)]
struct Link {
    /// The dialling node (a desk, an edge, or a federated hub).
    node: usize,
    /// The hub it dials (the region's hub, or the federated hub for its own desks).
    hub: usize,
    spec: Spec,
    profile: LinkProfile,
    leg: usize,
    natural_up: bool,
    forced_down: u32,
    clog: f64,
    corrupt: f64,
    duplicate: f64,
    up_since: Micros,
    down_since: Option<Micros>,
    down_epoch: u64,
    delay_us: Micros,
    dirs: [Dir; 2],
    conn: Option<Conn>,
    conn_seq: u64,
    backoff: Micros,
    connect_pending: bool,
    parked: Vec<(usize, Vec<Frame>)>,
    flips: u64,
}

impl Link {
    fn new(node: usize, hub: usize, spec: Spec, profile: LinkProfile, leg: usize, delay_us: Micros) -> Link {
        Link {
            node,
            hub,
            spec,
            profile,
            leg,
            natural_up: true,
            forced_down: 0,
            clog: 1.0,
            corrupt: 0.0,
            duplicate: 0.0,
            up_since: 0,
            down_since: None,
            down_epoch: 0,
            delay_us,
            dirs: [Dir::default(), Dir::default()],
            conn: None,
            conn_seq: 0,
            backoff: SECOND / 4,
            connect_pending: false,
            parked: Vec::new(),
            flips: 0,
        }
    }

    fn up(&self) -> bool {
        self.natural_up && self.forced_down == 0
    }
}

#[derive(Debug)]
struct Conn {
    id: u64,
    /// Engines: [0] on the node (initiator), [1] on the hub.
    engines: [Engine; 2],
    /// Each side's photo chunk window (the node's rule: its arrival rate times four round
    /// trips), and the frame bytes it has received.
    windows: [ChunkWindow; 2],
    received: [u64; 2],
}

/// A clinical write or decision scheduled for later.
#[derive(Debug, Clone)]
enum Work {
    NextSession(usize),
    Message { node: usize, doc: DocId },
    Photo { node: usize, doc: DocId, view: PhotoView, kb: f64 },
    Escalate { node: usize, doc: DocId },
    Reply { desk: usize, doc: DocId },
    Outcome { node: usize, doc: DocId },
    Answer { desk: usize, doc: DocId, call: String, attempt: u32 },
}

#[derive(Debug)]
struct SimCall {
    doc: DocId,
    /// The escalation's id in the routing log.
    call: String,
    /// The requester.
    node: usize,
    /// Messages and photos of the session when the call was asked for.
    items: (Vec<String>, Vec<String>),
    /// Every window of probes the gate heard at its latest measurement (for the gate's check).
    heard: Vec<PathQuality>,
    /// A window of the gate's probes under way: its hub, what the probes are finding, and the
    /// token of its event.
    listening: Option<(usize, PathQuality, u64)>,
    esc_index: usize,
}

/// The simulated region.
pub struct World {
    scenario: Scenario,
    opts: Options,
    rng: ChaCha8Rng,
    now: Micros,
    queue: BinaryHeap<Reverse<(Micros, u64, usize)>>,
    events: Vec<Option<Ev>>,
    free_events: Vec<usize>,
    seq: u64,
    nodes: Vec<Node>,
    links: Vec<Link>,
    hub: usize,
    /// The truth about every session's scope facts (for the scope checker).
    metas: BTreeMap<DocId, DocMeta>,
    /// Desks answering each line, in rota order.
    rota: BTreeMap<ServiceLine, Vec<usize>>,
    /// The nodes' clock at the start (UK time `start_hour` on the simulated day).
    epoch_ms: TimeMs,
    /// Sessions each desk has started answering.
    replied: BTreeSet<DocId>,
    calls: Vec<SimCall>,
    /// Each hub's router (the node's own, `sync_protocol::router::Router`).
    routers: BTreeMap<usize, router::HubRouter>,
    /// The last gate window's event token.
    gate_token: u64,
    /// Outcomes the hubs flagged `not_reported` (sides).
    pub not_reported: u64,
    /// Rings each desk has heard: (desk, call, attempt).
    heard: BTreeSet<(usize, String, u32)>,
    /// Results.
    pub ledger: Ledger,
    /// Call escalations.
    pub escalations: Vec<Escalation>,
    /// Samples over time.
    pub samples: Vec<Sample>,
    /// The invariant checkers, and what they found.
    checks: checks::Checks,
    wire_bucket: u64,
    payload_bucket: u64,
    /// Totals.
    pub wire_total: u64,
    /// Payload totals.
    pub payload_total: u64,
    /// Connections made.
    pub connections: u64,
    /// Connections lost (idle timeout, crash, protocol error).
    pub connections_lost: u64,
    /// Events processed.
    pub events_processed: u64,
    hasher: blake3::Hasher,
    settling: Option<Micros>,
    last_heal: Micros,
    /// When every replica had converged after the last heal, if it did.
    pub converged_at: Option<Micros>,
    ended: bool,
    /// Frames delivered, and frames delivered that referenced a session outside the receiver's scope.
    pub frames_delivered: u64,
    /// Attacks made by hostile nodes (`byzantine` faults), and how many the hub refused.
    pub attacks: (u64, u64),
    /// Backups waiting for their `restore` fault: (fault, node).
    backups: BTreeMap<(usize, usize), MemReplica>,
    /// Restores made, items they lost that a peer still held (to come back by sync), and
    /// writes they lost for good (held by no other node).
    pub restores: (u64, u64, u64),
    /// Directory edits the hub wrote during the run (`[[directory_edit]]`).
    pub directory_edits: u64,
    /// Items a restored node lost: (node, message id or photo hash), and whether for good.
    /// Receipts naming the node for them are not checked until it holds them again (those
    /// lost for good never are, and the run reports them).
    unvouched: BTreeMap<(usize, String), bool>,
    /// Writes lost for good by a restore (message ids, photo hashes, session ids).
    pub lost_in_restore: BTreeSet<String>,
    pool: ChunkPool,
    /// Photo bytes by hash, generated once.
    photos: BTreeMap<Hash, Vec<u8>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("scenario", &self.scenario.name).field("now", &self.now).finish_non_exhaustive()
    }
}

fn hours_of(t: Micros) -> f64 {
    t as f64 / HOUR as f64
}

fn secs(t: Micros) -> f64 {
    t as f64 / SECOND as f64
}

impl World {
    /// Builds the region of a scenario.
    pub fn new(scenario: Scenario, opts: Options) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let pool = ChunkPool::default();
        let icb = scenario.icb.clone();
        let mut nodes = Vec::new();
        // The fleet: every node's author key, certified (here: simply known) to every other.
        let roster = SharedRoster::default();
        let enrol = |rng: &mut ChaCha8Rng, info: &PeerInfo| {
            // One 16-byte draw per node, as before keys existed, so that a seed's run is unchanged.
            let draw = rng.random::<[u8; 16]>();
            let mut instance = [0u8; 8];
            instance.copy_from_slice(&draw[8..]);
            let key = AuthorKey::from_seed(blake3::hash(&draw).as_bytes(), instance);
            if let Ok(mut r) = roster.write() {
                r.insert(Member { info: info.clone(), key: key.public() });
            }
            // An audit chain, as every node keeps one: its id and anchor key from the same draw
            // (nothing more drawn).
            let audit_key = blake3::derive_key("outpost simulator audit anchors", &draw);
            let chain = u64::from_be_bytes(blake3::hash(&audit_key).as_bytes()[..8].try_into().unwrap_or([1; 8])) | 1;
            MemReplica::new(info.clone(), key, roster.clone()).with_audit(chain, audit_key)
        };
        let hub_info =
            PeerInfo { name: scenario.hub_name(), role: Role::Hub, org: None, icb: Some(icb.clone()), lines: vec![] };
        nodes.push(Node {
            name: hub_info.name.clone(),
            kind: Kind::Hub,
            replica: enrol(&mut rng, &hub_info).with_pool(pool.clone()),
            info: hub_info,
            up: true,
            hostile: false,
            skew_ms: 0,
            link: None,
            rate: 0.0,
            open_hours: None,
            undo: None,
            undo_last: None,
            seq: 0,
        });
        let mut links = Vec::new();
        let mut rota: BTreeMap<ServiceLine, Vec<usize>> = BTreeMap::new();
        for (gi, g) in scenario.groups.iter().enumerate() {
            for i in 0..g.count {
                let name = scenario.node_name(gi, i);
                let (role, lines) = match g.kind {
                    Kind::Desk => (Role::Desk, vec![g.lines[i % g.lines.len()]]),
                    _ => (Role::Edge, vec![]),
                };
                let info =
                    PeerInfo { name: name.clone(), role, org: None, icb: Some(icb.clone()), lines: lines.clone() };
                let idx = nodes.len();
                if let Some(l) = lines.first() {
                    rota.entry(*l).or_default().push(idx);
                }
                let mut spec = match &g.link {
                    Some(p) => {
                        Spec::Fixed(links::profile(p).unwrap_or_else(|| unreachable!("checked by the scenario")))
                    }
                    None => Spec::Drive(g.drive.iter().filter_map(|l| parse_leg(l).ok()).collect()),
                };
                if g.steady {
                    match &mut spec {
                        Spec::Fixed(p) => p.availability = 1.0,
                        Spec::Drive(legs) => legs.iter_mut().for_each(|(p, _)| p.availability = 1.0),
                    }
                }
                let (profile, leg) = match &spec {
                    Spec::Fixed(p) => (p.clone(), 0),
                    Spec::Drive(legs) => {
                        let start = rng.random_range(0..legs.len().max(1));
                        (legs[start].0.clone(), start)
                    }
                };
                let delay_us = (links::one_way_delay_ms(&profile, &mut U(&mut rng)) * 1000.0) as Micros;
                links.push(Link::new(idx, 0, spec, profile, leg, delay_us));
                nodes.push(Node {
                    name,
                    kind: g.kind,
                    replica: enrol(&mut rng, &info).with_pool(pool.clone()),
                    info,
                    up: true,
                    hostile: false,
                    skew_ms: 0,
                    link: Some(links.len() - 1),
                    rate: g.sessions_per_hour,
                    open_hours: g.open_hours,
                    undo: None,
                    undo_last: None,
                    seq: 0,
                });
            }
        }
        // The hub's directory: every line with desks or named by the scenario.
        let mut directory = BTreeMap::new();
        let fed_lines: Vec<ServiceLine> = scenario.federation.iter().flat_map(|f| f.lines.iter().copied()).collect();
        let named: BTreeSet<ServiceLine> = scenario
            .lines
            .iter()
            .map(|l| l.line)
            .chain(rota.keys().copied())
            .chain(fed_lines.iter().copied())
            .collect();
        let epoch_ms = UK_MIDNIGHT_MS + (scenario.start_hour * 3_600_000.0) as TimeMs;
        for line in named {
            let spec = scenario.lines.iter().find(|l| l.line == line);
            let desks = rota.get(&line).map(Vec::as_slice).unwrap_or_default();
            let entry = LineEntry {
                line,
                // Checked when the scenario was parsed.
                hours: spec.and_then(|s| Hours::parse(&s.hours).ok()).unwrap_or(Hours::Always),
                channels: spec.map_or_else(|| Channel::ALL.to_vec(), |s| s.channels.clone()),
                rota: desks.iter().map(|d| RotaDesk { desk: nodes[*d].name.clone(), ring_s: DEFAULT_RING_S }).collect(),
                fallback_hub: scenario.federation.as_ref().filter(|_| fed_lines.contains(&line)).map(|f| f.hub_name()),
                updated_ms: epoch_ms,
            };
            directory.insert(line, entry);
        }
        // Another ICB's hub, dialling this one, with a desk of its own for each line it takes.
        let fed = scenario.federation.as_ref().map(|f| {
            federation::build(
                f,
                &mut federation::Region { nodes: &mut nodes, links: &mut links, rng: &mut rng },
                &enrol,
                &pool,
                epoch_ms,
            )
        });
        // Each hub holds its directory as a document of its own, as a node does, and the engine
        // carries it to the ICB's edges and desks; the router reads the hub's copy.
        directory::install_directory(&mut nodes[0], &icb, &directory, epoch_ms);
        if let (Some((h, fed_directory)), Some(f)) = (&fed, &scenario.federation) {
            directory::install_directory(&mut nodes[*h], &f.icb, fed_directory, epoch_ms);
        }
        let mut w = World {
            scenario,
            opts,
            rng,
            now: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free_events: Vec::new(),
            seq: 0,
            nodes,
            links,
            hub: 0,
            metas: BTreeMap::new(),
            epoch_ms,
            rota,
            replied: BTreeSet::new(),
            calls: Vec::new(),
            routers: BTreeMap::new(),
            gate_token: 0,
            not_reported: 0,
            heard: BTreeSet::new(),
            ledger: Ledger::default(),
            escalations: Vec::new(),
            samples: Vec::new(),
            checks: checks::Checks::default(),
            wire_bucket: 0,
            payload_bucket: 0,
            wire_total: 0,
            payload_total: 0,
            connections: 0,
            connections_lost: 0,
            events_processed: 0,
            hasher: blake3::Hasher::new(),
            settling: None,
            last_heal: 0,
            converged_at: None,
            ended: false,
            frames_delivered: 0,
            attacks: (0, 0),
            backups: BTreeMap::new(),
            restores: (0, 0, 0),
            directory_edits: 0,
            unvouched: BTreeMap::new(),
            lost_in_restore: BTreeSet::new(),
            pool,
            photos: BTreeMap::new(),
        };
        w.schedule_start();
        w
    }

    fn schedule_start(&mut self) {
        let end = (self.opts.hours.unwrap_or(self.scenario.hours) * HOUR as f64) as Micros;
        for l in 0..self.links.len() {
            self.schedule_flip(l);
            if matches!(self.links[l].spec, Spec::Drive(_)) {
                let minutes = self.leg_minutes(l);
                let first = (self.rng.random::<f64>() * minutes * MINUTE as f64) as Micros;
                self.at(first, Ev::Leg(l));
            }
            let first = self.rng.random_range(0..5 * SECOND);
            self.at(first, Ev::Connect(l));
            self.links[l].connect_pending = true;
        }
        for n in 1..self.nodes.len() {
            if self.nodes[n].rate > 0.0 {
                let dt = self.exp((HOUR as f64 / self.nodes[n].rate) as Micros);
                self.at(dt, Ev::Work(Work::NextSession(n)));
            }
        }
        for i in 0..self.scenario.faults.len() {
            let t = (self.scenario.faults[i].at_hour * HOUR as f64) as Micros;
            if t < end {
                self.at(t, Ev::Fault { index: i, start: true, rep: 0 });
                self.schedule_backup(i, t);
            }
        }
        for i in 0..self.scenario.directory_edits.len() {
            let t = (self.scenario.directory_edits[i].at_hour * HOUR as f64) as Micros;
            if t < end {
                self.at(t, Ev::DirectoryEdit(i));
            }
        }
        self.at(SAMPLE, Ev::Sample);
        self.at(SWEEP, Ev::Sweep);
        self.at(end, Ev::Settle);
    }

    fn leg_minutes(&self, l: usize) -> f64 {
        match &self.links[l].spec {
            Spec::Drive(legs) => legs.get(self.links[l].leg).map_or(10.0, |x| x.1),
            Spec::Fixed(_) => f64::INFINITY,
        }
    }

    fn schedule_flip(&mut self, l: usize) {
        let p = self.links[l].profile.clone();
        let dt = if self.links[l].natural_up {
            links::up_s(&p, &mut U(&mut self.rng))
        } else {
            links::outage_s(&p, &mut U(&mut self.rng))
        };
        if dt.is_finite() && dt < 1e7 {
            self.links[l].flips += 1;
            self.after((dt * SECOND as f64) as Micros, Ev::Flip(l));
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Work(w) => self.work(w),
            Ev::Flip(l) => {
                // Once the scenario ends, links stay healed.
                if self.settling.is_some() {
                    return;
                }
                let was = self.links[l].up();
                self.links[l].natural_up = !self.links[l].natural_up;
                self.link_changed(l, was);
                self.schedule_flip(l);
            }
            Ev::Leg(l) => {
                if let Spec::Drive(legs) = &self.links[l].spec {
                    let next = (self.links[l].leg + 1) % legs.len().max(1);
                    let profile = legs[next].0.clone();
                    let minutes = legs[next].1;
                    self.links[l].leg = next;
                    self.links[l].profile = profile;
                    self.links[l].delay_us =
                        (links::one_way_delay_ms(&self.links[l].profile, &mut U(&mut self.rng)) * 1000.0) as Micros;
                    self.after((minutes * MINUTE as f64) as Micros, Ev::Leg(l));
                }
            }
            Ev::Connect(l) => self.connect(l),
            Ev::Tx(l, d) => self.transmit(l, d),
            Ev::Arrive { link, conn, to_hub, frames } => self.arrive(link, conn, to_hub, frames),
            Ev::Idle { link, epoch } => {
                let lk = &self.links[link];
                if !lk.up() && lk.down_epoch == epoch && lk.conn.is_some() {
                    self.drop_conn(link, "idle timeout");
                }
            }
            Ev::Tick { link, conn } => {
                if self.links[link].conn.as_ref().is_some_and(|c| c.id == conn) {
                    if self.nodes[self.links[link].node].hostile {
                        self.attack(link);
                    }
                    self.after(TICK, Ev::Tick { link, conn });
                }
            }
            Ev::Timer { link, conn } => {
                if self.links[link].conn.as_ref().is_some_and(|c| c.id == conn) {
                    self.engine_timers(link);
                }
            }
            Ev::Fault { index, start, rep } => self.fault(index, start, rep),
            Ev::DirectoryEdit(i) => self.edit_directory(i),
            Ev::Backup { index } => self.backup(index),
            Ev::Sample => {
                self.sample();
                if !self.ended {
                    self.after(SAMPLE, Ev::Sample);
                }
            }
            Ev::Sweep => {
                self.check(checks::Observed::Sweep);
                if self.settling.is_none() {
                    self.after(SWEEP, Ev::Sweep);
                }
            }
            Ev::Converge => {
                if self.converged() {
                    self.converged_at = Some(self.now);
                    self.at(self.now, Ev::End);
                } else {
                    self.after(SECOND, Ev::Converge);
                }
            }
            Ev::RouterWake(h) => self.router_wakes(h),
            Ev::GateWindow(i, token) => self.gate_window_heard(i, token),
            Ev::Settle => self.settle(),
            Ev::End => {
                self.sample();
                self.ended = true;
            }
        }
    }
}
