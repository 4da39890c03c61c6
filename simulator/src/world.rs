//! The simulated region: nodes with in-memory stores, links with the named profiles, QUIC
//! connections as ordered, prioritised, lossy-but-recovering byte pipes, and the real sync
//! engine on both ends of each, all on one virtual clock driven by one seeded generator.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sync_protocol::TimeMs;
use sync_protocol::authorship::{AuthorKey, Member, SharedRoster};
use sync_protocol::call::{
    Action, DEFAULT_RING_S, HOLD_WAIT_MS, PathQuality, RotaDesk, calls_of, next_action, quality_from_probes,
};
use sync_protocol::engine::{Engine, EngineConfig, Replica};
use sync_protocol::links::{self, LinkProfile, LinkState, Uniform};
use sync_protocol::mem::{ChunkPool, MemReplica};
use sync_protocol::scope::{DocMeta, PeerInfo, may_hold};
use sync_protocol::session::{
    LogName, LogValue, NewConsent, NewMedia, NewMessage, NewSession, Patient, Requester, Service, SessionDoc,
    SessionId, SessionView,
};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, ReceiptLevel, Role,
    ServiceLine, Side, Status,
};
use sync_protocol::wire::{DocId, Frame, FrameDecoder, Hash, Lane};

use crate::metrics::{Entry, Escalation, Ledger, Micros, Sample, Violation, What};
use crate::scenario::{Fault, FaultKind, Kind, Scenario, parse_leg};

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
/// Unix time of the simulated start (so that documents carry plausible dates).
const EPOCH_MS: TimeMs = 1_790_000_000_000;

/// Planted bugs, for proving that the checkers catch what they should.
#[derive(Debug, Clone, Default)]
pub struct Bugs {
    /// A store that acknowledges writes before they are durable: a crash loses the last one.
    pub lose_acked_writes_on_crash: bool,
    /// A store that ignores scope when it serves this node's peers (names a node).
    pub ignore_scope_at: Option<String>,
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
    seq: u64,
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
    node: usize,
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
    fn up(&self) -> bool {
        self.natural_up && self.forced_down == 0
    }
}

#[derive(Debug)]
struct Conn {
    id: u64,
    /// Engines: [0] on the node (initiator), [1] on the hub.
    engines: [Engine; 2],
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

#[derive(Debug, Clone)]
enum Ev {
    Work(Work),
    Flip(usize),
    Leg(usize),
    Connect(usize),
    Tx(usize, usize),
    Arrive { link: usize, conn: u64, to_hub: bool, frames: Vec<Frame> },
    Idle { link: usize, epoch: u64 },
    Tick { link: usize, conn: u64 },
    Fault { index: usize, start: bool, rep: u32 },
    Backup { index: usize },
    Sample,
    Sweep,
    Converge,
    Ring(usize),
    Settle,
    End,
}

impl Ev {
    fn code(&self) -> u8 {
        match self {
            Ev::Work(_) => 1,
            Ev::Flip(_) => 2,
            Ev::Leg(_) => 3,
            Ev::Connect(_) => 4,
            Ev::Tx(..) => 5,
            Ev::Arrive { .. } => 6,
            Ev::Idle { .. } => 7,
            Ev::Tick { .. } => 8,
            Ev::Fault { .. } => 9,
            Ev::Backup { .. } => 16,
            Ev::Sample => 10,
            Ev::Sweep => 11,
            Ev::Converge => 15,
            Ev::Ring(_) => 12,
            Ev::Settle => 13,
            Ev::End => 14,
        }
    }
}

#[derive(Debug)]
struct SimCall {
    doc: DocId,
    /// The escalation's id in the routing log.
    call: String,
    /// The requester.
    node: usize,
    /// When the hub first saw it: simulated time, and the hub's clock (ms).
    seen_at_hub: Option<(Micros, TimeMs)>,
    done: bool,
    /// Messages and photos of the session when the call was asked for.
    items: (Vec<String>, Vec<String>),
    /// The requester's path as the hub measured it.
    quality: Option<PathQuality>,
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
    /// Sessions each desk has started answering.
    replied: BTreeSet<DocId>,
    /// Status last seen per (node, doc).
    statuses: BTreeMap<(usize, DocId), (u32, Status)>,
    calls: Vec<SimCall>,
    /// Rings each desk has heard: (desk, call, attempt).
    heard: BTreeSet<(usize, String, u32)>,
    /// Results.
    pub ledger: Ledger,
    /// Call escalations.
    pub escalations: Vec<Escalation>,
    /// Samples over time.
    pub samples: Vec<Sample>,
    /// Invariant violations.
    pub violations: Vec<Violation>,
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
    /// Sessions a hostile node named in its attacks (node, session).
    named: BTreeSet<(usize, DocId)>,
    /// Backups waiting for their `restore` fault: (fault, node).
    backups: BTreeMap<(usize, usize), MemReplica>,
    /// Restores made, items they lost that a peer still held (to come back by sync), and
    /// writes they lost for good (held by no other node).
    pub restores: (u64, u64, u64),
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

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
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
            MemReplica::new(info.clone(), key, roster.clone())
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
            seq: 0,
        });
        let mut links = Vec::new();
        let mut rota: BTreeMap<ServiceLine, Vec<usize>> = BTreeMap::new();
        for g in &scenario.groups {
            for i in 0..g.count {
                let name = format!("{}-{:03}", g.kind.as_str(), i + 1);
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
                let spec = match &g.link {
                    Some(p) => {
                        Spec::Fixed(links::profile(p).unwrap_or_else(|| unreachable!("checked by the scenario")))
                    }
                    None => Spec::Drive(g.drive.iter().filter_map(|l| parse_leg(l).ok()).collect()),
                };
                let (profile, leg) = match &spec {
                    Spec::Fixed(p) => (p.clone(), 0),
                    Spec::Drive(legs) => {
                        let start = rng.random_range(0..legs.len().max(1));
                        (legs[start].0.clone(), start)
                    }
                };
                let delay_us = (links::one_way_delay_ms(&profile, &mut U(&mut rng)) * 1000.0) as Micros;
                links.push(Link {
                    node: idx,
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
                });
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
                    seq: 0,
                });
            }
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
            rota,
            replied: BTreeSet::new(),
            statuses: BTreeMap::new(),
            calls: Vec::new(),
            heard: BTreeSet::new(),
            ledger: Ledger::default(),
            escalations: Vec::new(),
            samples: Vec::new(),
            violations: Vec::new(),
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
            named: BTreeSet::new(),
            backups: BTreeMap::new(),
            restores: (0, 0, 0),
            unvouched: BTreeMap::new(),
            lost_in_restore: BTreeSet::new(),
            pool,
            photos: BTreeMap::new(),
        };
        w.schedule_start();
        w
    }

    fn at(&mut self, t: Micros, ev: Ev) {
        self.seq += 1;
        let slot = match self.free_events.pop() {
            Some(i) => {
                self.events[i] = Some(ev);
                i
            }
            None => {
                self.events.push(Some(ev));
                self.events.len() - 1
            }
        };
        self.queue.push(Reverse((t.max(self.now), self.seq, slot)));
    }

    fn after(&mut self, dt: Micros, ev: Ev) {
        self.at(self.now + dt, ev);
    }

    fn exp(&mut self, mean: Micros) -> Micros {
        let u: f64 = self.rng.random::<f64>();
        (-(mean as f64) * (1.0 - u).max(1e-12).ln()) as Micros
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

    fn node_now(&self, n: usize) -> TimeMs {
        EPOCH_MS + (self.now / 1000) as TimeMs + self.nodes[n].skew_ms
    }

    fn log(&mut self, code: u8, a: u64, b: u64) {
        self.hasher.update(&self.now.to_le_bytes());
        self.hasher.update(&[code]);
        self.hasher.update(&a.to_le_bytes());
        self.hasher.update(&b.to_le_bytes());
    }

    /// The hash of the event log so far: equal for equal seeds.
    pub fn event_hash(&self) -> String {
        self.hasher.clone().finalize().to_hex().to_string()
    }

    /// Simulated time now, in hours.
    pub fn hours(&self) -> f64 {
        hours_of(self.now)
    }

    /// Whether the run is over.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Processes events until simulated time `until` (hours) or the end.
    pub fn run_until(&mut self, until_hours: f64) {
        let until = (until_hours * HOUR as f64) as Micros;
        while !self.ended {
            let Some(Reverse((t, _, _))) = self.queue.peek() else {
                self.ended = true;
                break;
            };
            if *t > until {
                break;
            }
            let Some(Reverse((t, _, slot))) = self.queue.pop() else { break };
            self.now = t;
            let Some(ev) = self.events[slot].take() else { continue };
            self.free_events.push(slot);
            self.events_processed += 1;
            self.log(ev.code(), 0, 0);
            self.handle(ev);
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
                    self.notify_conn(link, &[]);
                    self.after(TICK, Ev::Tick { link, conn });
                }
            }
            Ev::Fault { index, start, rep } => self.fault(index, start, rep),
            Ev::Backup { index } => self.backup(index),
            Ev::Sample => {
                self.sample();
                if !self.ended {
                    self.after(SAMPLE, Ev::Sample);
                }
            }
            Ev::Sweep => {
                self.sweep();
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
            Ev::Ring(i) => self.route(i),
            Ev::Settle => self.settle(),
            Ev::End => {
                self.sample();
                self.ended = true;
            }
        }
    }

    // ------------------------------------------------------------------ links and connections

    fn link_changed(&mut self, l: usize, was_up: bool) {
        let now_up = self.links[l].up();
        if was_up == now_up {
            return;
        }
        self.log(20, l as u64, u64::from(now_up));
        if now_up {
            self.links[l].up_since = self.now;
            self.links[l].down_since = None;
            // Frames caught by the outage arrive once the link is back (QUIC retransmits them).
            let parked = std::mem::take(&mut self.links[l].parked);
            let conn = self.links[l].conn.as_ref().map(|c| c.id);
            for (dir, frames) in parked {
                if let Some(c) = conn {
                    let delay = self.links[l].delay_us;
                    self.after(delay, Ev::Arrive { link: l, conn: c, to_hub: dir == 0, frames });
                }
            }
            for d in 0..2 {
                self.kick(l, d);
            }
            if self.links[l].conn.is_none() && !self.links[l].connect_pending {
                self.links[l].connect_pending = true;
                self.after(self.links[l].backoff.min(2 * SECOND), Ev::Connect(l));
            }
        } else {
            self.links[l].down_since = Some(self.now);
            self.links[l].down_epoch += 1;
            let epoch = self.links[l].down_epoch;
            self.after(IDLE_TIMEOUT, Ev::Idle { link: l, epoch });
        }
    }

    fn connect(&mut self, l: usize) {
        self.links[l].connect_pending = false;
        let node = self.links[l].node;
        if self.links[l].conn.is_some() || !self.nodes[node].up {
            return;
        }
        if !self.links[l].up() || !self.nodes[self.hub].up {
            // The dialer keeps trying with backoff and jitter.
            let b = self.links[l].backoff;
            self.links[l].backoff = (b * 2).min(30 * SECOND);
            let jitter = (b as f64 * (0.5 + self.rng.random::<f64>() / 2.0)) as Micros;
            self.links[l].connect_pending = true;
            self.after(jitter, Ev::Connect(l));
            return;
        }
        let fail = self.rng.random::<f64>() < self.links[l].profile.connect_failure;
        if fail {
            let b = self.links[l].backoff;
            self.links[l].backoff = (b * 2).min(30 * SECOND);
            self.links[l].connect_pending = true;
            self.after(b, Ev::Connect(l));
            return;
        }
        self.links[l].backoff = SECOND / 4;
        self.links[l].conn_seq += 1;
        let id = self.links[l].conn_seq;
        let node_info = self.nodes[node].info.clone();
        let hub_info = self.nodes[self.hub].info.clone();
        let engines =
            [Engine::new(hub_info, EngineConfig::new(true)), Engine::new(node_info, EngineConfig::new(false))];
        self.links[l].conn = Some(Conn { id, engines });
        self.links[l].dirs = [Dir::default(), Dir::default()];
        self.connections += 1;
        self.count_wire(HANDSHAKE_BYTES, 0);
        self.log(21, l as u64, id);
        // The handshake takes a round trip and a half before the first frames move.
        let hs = self.links[l].delay_us * 3;
        for side in [1usize, 0] {
            let owner = if side == 0 { node } else { self.hub };
            let now = self.node_now(owner);
            let blind = self.opts.bugs.ignore_scope_at.as_deref() == Some(self.nodes[owner].name.as_str());
            let Some(conn) = self.links[l].conn.as_mut() else { return };
            let replica = &mut self.nodes[owner].replica;
            let r = if blind {
                conn.engines[side].start(&mut Blind(replica), now).map_err(|e| e.to_string())
            } else {
                conn.engines[side].start(replica, now).map_err(|e| e.to_string())
            };
            if let Err(e) = r {
                self.drop_conn(l, &e);
                return;
            }
        }
        for side in [0usize, 1] {
            self.flush(l, side, hs);
        }
        self.after(TICK, Ev::Tick { link: l, conn: id });
    }

    fn drop_conn(&mut self, l: usize, why: &str) {
        if self.links[l].conn.take().is_some() {
            self.connections_lost += 1;
            self.log(22, l as u64, why.len() as u64);
            self.links[l].dirs = [Dir::default(), Dir::default()];
            self.links[l].parked.clear();
            if !self.links[l].connect_pending {
                self.links[l].connect_pending = true;
                let b = self.links[l].backoff;
                self.after(b, Ev::Connect(l));
            }
        }
    }

    /// Moves an engine's output into its direction's queues. `side` 0 is the node, 1 the hub.
    fn flush(&mut self, l: usize, side: usize, extra_delay: Micros) {
        let dir = if side == 0 { 0 } else { 1 };
        let link = &mut self.links[l];
        let Some(conn) = link.conn.as_mut() else { return };
        let mut any = false;
        while let Some((lane, f)) = conn.engines[side].poll_frame() {
            any = true;
            match lane {
                Lane::Sync => link.dirs[dir].sync_q.push_back(f),
                Lane::Blob => link.dirs[dir].blob_q.push_back(f),
            }
        }
        if any {
            let d = &mut self.links[l].dirs[dir];
            d.busy_until = d.busy_until.max(self.now + extra_delay);
            self.kick(l, dir);
        }
    }

    fn kick(&mut self, l: usize, dir: usize) {
        let d = &self.links[l].dirs[dir];
        if d.tx_pending || (d.sync_q.is_empty() && d.blob_q.is_empty()) {
            return;
        }
        let t = d.busy_until.max(self.now);
        self.links[l].dirs[dir].tx_pending = true;
        self.at(t, Ev::Tx(l, dir));
    }

    /// The sender's bottleneck: one frame at a time, document traffic first.
    fn transmit(&mut self, l: usize, dir: usize) {
        self.links[l].dirs[dir].tx_pending = false;
        if !self.links[l].up() || self.links[l].conn.is_none() {
            return;
        }
        let d = &mut self.links[l].dirs[dir];
        let Some(frame) = d.sync_q.pop_front().or_else(|| d.blob_q.pop_front()) else { return };
        let lane = if frame.lane() == Lane::Sync { 0 } else { 1 };
        let bytes = frame.to_bytes().len() as u64;
        let packets = bytes.div_ceil(PACKET_PAYLOAD).max(1);
        let p = self.links[l].profile.clone();
        let bps = (if dir == 0 { p.uplink_bps } else { p.downlink_bps }) as f64 / self.links[l].clog.max(1.0);
        // Lost datagrams are sent again after about a round trip and a quarter.
        let mut lost = 0u64;
        for _ in 0..packets {
            if self.links[l].dirs[dir].ge.lose(&p.loss, &mut U(&mut self.rng)) {
                lost += 1;
            }
        }
        let acks = packets.div_ceil(2) * 50;
        let payload = match &frame {
            Frame::Changes(c) => c.bytes.len() as u64,
            Frame::BlobChunk { data, .. } => data.len() as u64,
            _ => 0,
        };
        self.count_wire(bytes + (packets + lost) * PACKET_OVERHEAD + lost * PACKET_PAYLOAD.min(bytes) + acks, payload);
        let serialise = ((packets + lost) * (PACKET_PAYLOAD.min(bytes) + PACKET_OVERHEAD)) as f64 * 8.0 / bps;
        let ser_us = (serialise * SECOND as f64) as Micros;
        let rtt = 2 * self.links[l].delay_us;
        let arrival_base = self.now + ser_us + self.links[l].delay_us + lost.min(3) * (rtt + rtt / 4);
        let d = &mut self.links[l].dirs[dir];
        d.busy_until = self.now + ser_us;
        let arrival = arrival_base.max(d.last_arrival[lane]);
        d.last_arrival[lane] = arrival;
        let conn = self.links[l].conn.as_ref().map_or(0, |c| c.id);
        let mut frames = vec![frame];
        if self.links[l].duplicate > 0.0 && self.rng.random::<f64>() < self.links[l].duplicate {
            frames.push(frames[0].clone());
        }
        if self.links[l].corrupt > 0.0 && self.rng.random::<f64>() < self.links[l].corrupt {
            frames = frames.into_iter().filter_map(|f| corrupt(&f, &mut self.rng)).collect();
            if frames.is_empty() {
                // The receiver's decoder could not make sense of it: the stream is broken.
                self.drop_conn(l, "corrupted frame");
                return;
            }
        }
        self.at(arrival, Ev::Arrive { link: l, conn, to_hub: dir == 0, frames });
        self.kick(l, dir);
    }

    fn count_wire(&mut self, wire: u64, payload: u64) {
        self.wire_bucket += wire;
        self.wire_total += wire;
        self.payload_bucket += payload;
        self.payload_total += payload;
    }

    fn arrive(&mut self, l: usize, conn: u64, to_hub: bool, frames: Vec<Frame>) {
        if self.links[l].conn.as_ref().map(|c| c.id) != Some(conn) {
            return;
        }
        if !self.links[l].up() {
            self.links[l].parked.push((if to_hub { 0 } else { 1 }, frames));
            return;
        }
        let node = self.links[l].node;
        let (side, owner) = if to_hub { (1usize, self.hub) } else { (0usize, node) };
        if !self.nodes[owner].up {
            return;
        }
        self.frames_delivered += frames.len() as u64;
        for f in &frames {
            self.check_frame_scope(owner, f);
        }
        let now = self.node_now(owner);
        let blind = self.opts.bugs.ignore_scope_at.as_deref() == Some(self.nodes[owner].name.as_str());
        let Some(c) = self.links[l].conn.as_mut() else { return };
        let replica = &mut self.nodes[owner].replica;
        let result = if blind {
            c.engines[side].handle(&mut Blind(replica), frames, now).map_err(|e| e.to_string())
        } else {
            c.engines[side].handle(replica, frames, now).map_err(|e| e.to_string())
        };
        self.log(23, l as u64, side as u64);
        self.flush(l, side, 0);
        if let Err(e) = result {
            self.drop_conn(l, &e);
        }
        self.after_changes(owner, Some(l));
    }

    /// Pushes a node's changed documents to its connections, and checks and measures them.
    fn after_changes(&mut self, owner: usize, except: Option<usize>) {
        let changed = self.nodes[owner].replica.take_changed();
        if changed.is_empty() {
            return;
        }
        self.observe(owner, &changed);
        if owner == self.hub {
            for l in 0..self.links.len() {
                if Some(l) != except {
                    self.notify_conn(l, &changed);
                }
            }
            for i in 0..self.calls.len() {
                if !self.calls[i].done && self.calls[i].seen_at_hub.is_some() && changed.contains(&self.calls[i].doc) {
                    self.route(i);
                }
            }
            self.route_new_escalations(&changed);
        } else {
            if self.nodes[owner].kind == Kind::Desk {
                self.desk_hears_rings(owner, &changed);
            }
            if let Some(l) = self.nodes[owner].link {
                self.notify_node_side(l, &changed);
            }
        }
    }

    fn notify_conn(&mut self, l: usize, docs: &[DocId]) {
        // Hub side of link `l`.
        let hub = self.hub;
        if !self.nodes[hub].up {
            return;
        }
        let now = self.node_now(hub);
        let blind = self.opts.bugs.ignore_scope_at.as_deref() == Some(self.nodes[hub].name.as_str());
        let Some(c) = self.links[l].conn.as_mut() else { return };
        let replica = &mut self.nodes[hub].replica;
        let r = if blind {
            c.engines[1].notify(&mut Blind(replica), docs, now).map_err(|e| e.to_string())
        } else {
            c.engines[1].notify(replica, docs, now).map_err(|e| e.to_string())
        };
        self.flush(l, 1, 0);
        if let Err(e) = r {
            self.drop_conn(l, &e);
        }
        // A tick of the node side too (blob retries).
        if docs.is_empty() {
            self.notify_node_side(l, &[]);
        }
    }

    fn notify_node_side(&mut self, l: usize, docs: &[DocId]) {
        let node = self.links[l].node;
        if !self.nodes[node].up {
            return;
        }
        let now = self.node_now(node);
        let blind = self.opts.bugs.ignore_scope_at.as_deref() == Some(self.nodes[node].name.as_str());
        let Some(c) = self.links[l].conn.as_mut() else { return };
        let replica = &mut self.nodes[node].replica;
        let r = if blind {
            c.engines[0].notify(&mut Blind(replica), docs, now).map_err(|e| e.to_string())
        } else {
            c.engines[0].notify(replica, docs, now).map_err(|e| e.to_string())
        };
        self.flush(l, 0, 0);
        if let Err(e) = r {
            self.drop_conn(l, &e);
        }
        let changed = self.nodes[node].replica.take_changed();
        if !changed.is_empty() {
            self.observe(node, &changed);
        }
    }

    // ------------------------------------------------------------------ workload

    fn open(&self, n: usize) -> bool {
        match self.nodes[n].open_hours {
            None => true,
            Some((from, to)) => {
                let h = (self.scenario.start_hour + hours_of(self.now)) % 24.0;
                h >= from && h < to
            }
        }
    }

    fn pick_line(&mut self, kind: Kind) -> ServiceLine {
        let weights = match kind {
            Kind::Ambulance => self.scenario.workload.ambulance_lines.clone(),
            _ => self.scenario.workload.surgery_lines.clone(),
        };
        let total: f64 = weights.iter().map(|w| w.1).sum();
        let mut x = self.rng.random::<f64>() * total;
        for (line, w) in &weights {
            if x < *w {
                return *line;
            }
            x -= w;
        }
        weights.first().map_or(ServiceLine::Dermatology, |w| w.0)
    }

    fn local_write<T>(
        &mut self,
        n: usize,
        doc: &DocId,
        f: impl FnOnce(&mut SessionDoc) -> Result<T, sync_protocol::ModelError>,
    ) -> Option<T> {
        if !self.nodes[n].up {
            return None;
        }
        if self.opts.bugs.lose_acked_writes_on_crash {
            let before = self.nodes[n].replica.copy_doc(doc);
            self.nodes[n].undo = Some((*doc, before));
        }
        let out = self.nodes[n].replica.edit(doc, f).ok();
        self.after_changes(n, None);
        out
    }

    fn work(&mut self, w: Work) {
        match w {
            Work::NextSession(n) => {
                let rate = self.nodes[n].rate;
                let dt = self.exp((HOUR as f64 / rate.max(1e-9)) as Micros);
                self.after(dt, Ev::Work(Work::NextSession(n)));
                if self.settling.is_none() && self.nodes[n].up && self.open(n) {
                    self.new_session(n);
                }
            }
            Work::Message { node, doc } => {
                let now = self.node_now(node);
                let id = self.next_id(node, now);
                let name = self.nodes[node].name.clone();
                let msg = NewMessage {
                    clinician: None,
                    id: id.clone(),
                    author: name,
                    side: Side::Requester,
                    text: format!(
                        "Update from the {}: obs stable, findings as described ({id}).",
                        self.nodes[node].kind.as_str()
                    ),
                    reply_to: None,
                };
                if self.local_write(node, &doc, |d| d.add_message(&msg, now)).is_some() {
                    self.track(node, doc, id, What::Message);
                }
            }
            Work::Photo { node, doc, view, kb } => {
                let now = self.node_now(node);
                let size = (kb * 1024.0) as usize;
                let seed: u64 = self.rng.random();
                let bytes = photo_bytes(size, seed);
                let hash = *blake3::hash(&bytes).as_bytes();
                let hex_hash = hex(&hash);
                if !self.nodes[node].up {
                    return;
                }
                self.photos.insert(hash, bytes.clone());
                self.nodes[node].replica.put_blob(&bytes);
                let name = self.nodes[node].name.clone();
                let consent = format!("consent-{}", SessionId::from_bytes(doc));
                let media = NewMedia {
                    hash: hex_hash.clone(),
                    mime: "image/jpeg".into(),
                    size: size as u64,
                    dimensions: None,
                    view,
                    body_site: "left forearm".into(),
                    consent_id: consent.clone(),
                    added_by: name.clone(),
                    clinician: None,
                };
                let done = self.local_write(node, &doc, |d| {
                    if !d.view()?.consents.iter().any(|c| c.id == consent) {
                        d.add_consent(
                            &NewConsent {
                                id: consent.clone(),
                                kind: ConsentKind::Verbal,
                                scope: ConsentScope::RecordOnly,
                                by: name.clone(),
                            },
                            now,
                        )?;
                    }
                    d.add_media(&media, now)
                });
                if done.is_some() {
                    self.track(node, doc, hex_hash, What::Photo);
                }
            }
            Work::Escalate { node, doc } => {
                let now = self.node_now(node);
                let name = self.nodes[node].name.clone();
                let Some(view) = self.nodes[node].replica.view(&doc) else { return };
                let items = (
                    view.messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
                    view.media.iter().map(|m| m.hash.clone()).collect::<Vec<_>>(),
                );
                let call = format!("call-{}", self.calls.len() + 1);
                let fields = [("call", LogValue::Str(call.clone())), ("by", LogValue::Str(name.clone()))];
                let ok = self.local_write(node, &doc, |d| d.append_log(LogName::Routing, "escalate", &fields, now));
                if ok.is_some() {
                    self.escalations.push(Escalation { node: name, asked_s: secs(self.now), ..Escalation::default() });
                    self.calls.push(SimCall {
                        doc,
                        call,
                        node,
                        seen_at_hub: None,
                        done: false,
                        items,
                        quality: None,
                        esc_index: self.escalations.len() - 1,
                    });
                }
            }
            Work::Answer { desk, doc, call, attempt } => {
                // Still ringing here? (The hub may have moved on after the ring time.)
                let name = self.nodes[desk].name.clone();
                let ringing = self.nodes[desk].replica.view_ref(&doc).is_some_and(|v| {
                    calls_of(v).iter().any(|c| {
                        c.call == call && c.is_open() && c.ringing().is_some_and(|r| r.0 == name && r.1 == attempt)
                    })
                });
                if ringing {
                    let now = self.node_now(desk);
                    let fields = [
                        ("call", LogValue::Str(call)),
                        ("desk", LogValue::Str(name)),
                        ("attempt", LogValue::Int(i64::from(attempt))),
                    ];
                    self.local_write(desk, &doc, |d| d.append_log(LogName::Routing, "answer", &fields, now));
                }
            }
            Work::Reply { desk, doc } => {
                let now = self.node_now(desk);
                let id = self.next_id(desk, now);
                let name = self.nodes[desk].name.clone();
                let msg = NewMessage {
                    clinician: None,
                    id,
                    author: name.clone(),
                    side: Side::Responder,
                    text: "Consultant's advice: as discussed, plan agreed.".into(),
                    reply_to: None,
                };
                let outcome =
                    if self.rng.random::<f64>() < 0.6 { Outcome::AdviceOnly } else { Outcome::ReferralAvoided };
                let replied = self.local_write(desk, &doc, |d| {
                    d.add_message(&msg, now)?;
                    d.set_outcome(Side::Responder, outcome, &name, now)
                });
                if replied.is_some() && self.rng.random::<f64>() < self.scenario.workload.outcome_share {
                    let origin = self.metas.get(&doc).map(|m| m.origin.clone());
                    if let Some(node) = origin.and_then(|o| self.nodes.iter().position(|n| n.name == o)) {
                        let gap = self.uniform_minutes(self.scenario.workload.write_gap_minutes) * 10;
                        self.after(gap, Ev::Work(Work::Outcome { node, doc }));
                    }
                }
            }
            Work::Outcome { node, doc } => {
                let now = self.node_now(node);
                let name = self.nodes[node].name.clone();
                let outcome = if self.nodes[node].kind == Kind::Ambulance {
                    Outcome::ConveyanceAvoided
                } else {
                    Outcome::ReferralAvoided
                };
                // Only once the reply has reached the requester.
                let replied = self.nodes[node]
                    .replica
                    .view(&doc)
                    .is_some_and(|v| v.messages.iter().any(|m| m.side == Side::Responder));
                if replied {
                    self.local_write(node, &doc, |d| d.set_outcome(Side::Requester, outcome, &name, now));
                } else if self.settling.is_none() {
                    self.after(30 * MINUTE, Ev::Work(Work::Outcome { node, doc }));
                }
            }
        }
    }

    fn uniform_minutes(&mut self, (lo, hi): (f64, f64)) -> Micros {
        ((lo + (hi - lo) * self.rng.random::<f64>()) * MINUTE as f64) as Micros
    }

    fn next_id(&mut self, node: usize, now: TimeMs) -> String {
        self.nodes[node].seq += 1;
        let r: u128 = self.rng.random();
        SessionId::from_parts(now, r).to_string()
    }

    fn track(&mut self, node: usize, doc: DocId, key: String, what: What) {
        self.ledger.write(Entry {
            node,
            kind: self.nodes[node].kind,
            doc,
            key,
            what,
            written: self.now,
            at_hub: None,
            at_desk: None,
        });
    }

    fn new_session(&mut self, n: usize) {
        let kind = self.nodes[n].kind;
        let line = self.pick_line(kind);
        let now = self.node_now(n);
        let urgent = kind == Kind::Ambulance || self.rng.random::<f64>() < 0.3;
        let channel = if line == ServiceLine::Dermatology {
            Channel::Photo
        } else if urgent {
            Channel::Call
        } else {
            Channel::Message
        };
        let r: u128 = self.rng.random();
        let id = SessionId::from_parts(now, r);
        let new = NewSession {
            id,
            origin: self.nodes[n].name.clone(),
            icb: self.scenario.icb.clone(),
            care_setting: if kind == Kind::Ambulance { CareSetting::AmbulanceOnScene } else { CareSetting::GpUrgent },
            requester: Requester::default(),
            patient: Patient { nhs_number: None, verification: NhsVerification::NotPresent, ..Patient::default() },
            service: Service { line, channel, priority: if urgent { Priority::Urgent } else { Priority::Routine } },
            summary: format!("A question for {} from {}", line, self.nodes[n].name),
            draft: false,
        };
        let actor = self.nodes[n].replica.actor().clone();
        let Ok(doc) = SessionDoc::create(&new, actor, now) else { return };
        let Ok(view) = doc.view() else { return };
        let doc_id = id.to_bytes();
        self.metas.insert(doc_id, view.meta());
        if self.opts.bugs.lose_acked_writes_on_crash {
            self.nodes[n].undo = Some((doc_id, None));
        }
        if self.nodes[n].replica.put(doc).is_err() {
            return;
        }
        self.track(n, doc_id, id.to_string(), What::Session);
        self.after_changes(n, None);
        // What follows: messages, photos, perhaps a call.
        let wl = self.scenario.workload.clone();
        let mut t = self.uniform_minutes(wl.write_gap_minutes);
        let first_msgs = 1 + self.rng.random_range(wl.follow_ups.0..=wl.follow_ups.1.max(wl.follow_ups.0));
        for _ in 0..first_msgs {
            self.after(t, Ev::Work(Work::Message { node: n, doc: doc_id }));
            t += self.uniform_minutes(wl.write_gap_minutes);
        }
        if line == ServiceLine::Dermatology {
            let lesions = self.rng.random_range(wl.lesions.0..=wl.lesions.1.max(wl.lesions.0));
            for _ in 0..lesions {
                for view in [PhotoView::Site, PhotoView::CloseUp, PhotoView::Dermoscopic]
                    .into_iter()
                    .take(wl.photos_per_lesion as usize)
                {
                    let (lo, hi) = wl.photo_kb;
                    let kb = (lo.ln() + (hi.ln() - lo.ln()) * self.rng.random::<f64>()).exp();
                    self.after(t, Ev::Work(Work::Photo { node: n, doc: doc_id, view, kb }));
                    t += SECOND * 20;
                }
            }
        }
        let share = if kind == Kind::Ambulance {
            wl.ambulance_escalations
        } else if urgent {
            wl.surgery_escalations
        } else {
            0.0
        };
        if self.rng.random::<f64>() < share {
            self.after(t + MINUTE, Ev::Work(Work::Escalate { node: n, doc: doc_id }));
        }
    }

    // ------------------------------------------------------------------ the hub's call router

    fn route_new_escalations(&mut self, changed: &[DocId]) {
        for i in 0..self.calls.len() {
            if self.calls[i].seen_at_hub.is_some() || !changed.contains(&self.calls[i].doc) {
                continue;
            }
            let doc = self.calls[i].doc;
            let call = self.calls[i].call.clone();
            let seen =
                self.nodes[self.hub].replica.view_ref(&doc).is_some_and(|v| calls_of(v).iter().any(|c| c.call == call));
            if seen {
                let hub_now = self.node_now(self.hub);
                self.calls[i].seen_at_hub = Some((self.now, hub_now));
                let e = self.calls[i].esc_index;
                self.escalations[e].seen_at_hub_s = Some(secs(self.now));
                // The router's longest wait for a desk to hold the case.
                self.after((HOLD_WAIT_MS as Micros) * 1000 + SECOND, Ev::Ring(i));
                self.route(i);
            }
        }
    }

    /// The requester's path as the hub's probes would find it: 50 voice-like probes 20 ms
    /// apart through the link's loss process and delay; none if it is not connected.
    fn measure(&mut self, node: usize) -> PathQuality {
        let Some(l) = self.nodes[node].link else { return quality_from_probes(&[]) };
        if self.links[l].conn.is_none() || !self.links[l].up() || !self.nodes[node].up {
            return PathQuality { rtt_ms: f64::INFINITY, jitter_ms: 0.0, loss: 1.0, burst_ratio: 1.0, probes: 0 };
        }
        let p = self.links[l].profile.clone();
        let rtt = 2.0 * self.links[l].delay_us as f64 / 1000.0;
        let spread = (p.rtt_ms.1 - p.rtt_ms.0) / 2.0;
        let mut ge = LinkState::default();
        let mut probes = Vec::with_capacity(50);
        for _ in 0..50 {
            let lost_up = ge.lose(&p.loss, &mut U(&mut self.rng));
            let lost_down = ge.lose(&p.loss, &mut U(&mut self.rng));
            let jitter = spread * 0.05 * self.rng.random::<f64>();
            probes.push((!lost_up && !lost_down).then_some(rtt + jitter));
        }
        quality_from_probes(&probes)
    }

    /// One or more steps of the hub's router for an escalation: the shared policy of
    /// `sync_protocol::call::next_action`, its decisions written into the hub's copy.
    fn route(&mut self, i: usize) {
        for _ in 0..8 {
            if self.calls[i].done || !self.nodes[self.hub].up {
                return;
            }
            let Some((_, seen_ms)) = self.calls[i].seen_at_hub else { return };
            let doc = self.calls[i].doc;
            let Some(view) = self.nodes[self.hub].replica.view(&doc) else { return };
            let Some(call) = calls_of(&view).into_iter().find(|c| c.call == self.calls[i].call) else { return };
            let rota: Vec<RotaDesk> = self
                .rota
                .get(&view.service.line)
                .map(|r| {
                    r.iter().map(|d| RotaDesk { desk: self.nodes[*d].name.clone(), ring_s: DEFAULT_RING_S }).collect()
                })
                .unwrap_or_default();
            let now = self.node_now(self.hub);
            let holders = self.nodes[self.hub].replica.holders(&doc);
            let action = next_action(&call, &rota, &view, &holders, None, self.calls[i].quality.as_ref(), seen_ms, now);
            let c = LogValue::Str(call.call.clone());
            let e = self.calls[i].esc_index;
            let entry: (&str, Vec<(&str, LogValue)>) = match action {
                // The simulated region configures no federated hub, so nothing is handed over.
                Action::Wait | Action::Federate { .. } => return,
                Action::Measure => {
                    let node = self.calls[i].node;
                    self.calls[i].quality = Some(self.measure(node));
                    continue;
                }
                Action::GatePassed(r, _) => {
                    self.escalations[e].gate_mos = Some(r.mos);
                    (
                        "gate",
                        vec![("call", c), ("verdict", LogValue::Str("call".into())), ("mos", LogValue::Float(r.mos))],
                    )
                }
                Action::Ring { desk, attempt, ring_s } => {
                    let Some(d) = self.nodes.iter().position(|n| n.name == desk) else { return };
                    if attempt == 1 {
                        self.first_ring(i, d);
                    }
                    self.after(i64::from(ring_s) as Micros * SECOND + SECOND / 10, Ev::Ring(i));
                    (
                        "ring",
                        vec![
                            ("call", c),
                            ("desk", LogValue::Str(desk)),
                            ("attempt", LogValue::Int(i64::from(attempt))),
                            ("ring_s", LogValue::Int(i64::from(ring_s))),
                        ],
                    )
                }
                Action::NoAnswer { desk, attempt } => (
                    "no_answer",
                    vec![("call", c), ("desk", LogValue::Str(desk)), ("attempt", LogValue::Int(i64::from(attempt)))],
                ),
                Action::Connected { desk, attempt, .. } => {
                    self.calls[i].done = true;
                    self.escalations[e].connected_s = Some(secs(self.now));
                    (
                        "connected",
                        vec![
                            ("call", c),
                            ("desk", LogValue::Str(desk)),
                            ("attempt", LogValue::Int(i64::from(attempt))),
                        ],
                    )
                }
                Action::Callback { reason, rating } => {
                    self.calls[i].done = true;
                    if let Some((r, _)) = rating {
                        self.escalations[e].gate_mos = Some(r.mos);
                        self.escalations[e].callback = Some("link".into());
                    } else if reason.contains("answered") {
                        self.escalations[e].callback = Some("no answer".into());
                    } else {
                        self.escalations[e].callback = Some("case not delivered".into());
                    }
                    ("callback", vec![("call", c), ("reason", LogValue::Str(reason))])
                }
            };
            let _ = self.nodes[self.hub].replica.edit(&doc, |d| d.append_log(LogName::Routing, entry.0, &entry.1, now));
            self.after_changes(self.hub, None);
        }
    }

    /// Records the first ring of an escalation, and checks it against the desk's own store.
    fn first_ring(&mut self, i: usize, desk: usize) {
        let doc = self.calls[i].doc;
        let (msgs, media) = self.calls[i].items.clone();
        let desk_name = self.nodes[desk].name.clone();
        let truly_held = self.nodes[desk].replica.view_ref(&doc).is_some_and(|v| {
            msgs.iter().all(|m| v.messages.iter().any(|x| &x.id == m))
                && media.iter().all(|h| {
                    v.media.iter().any(|x| &x.hash == h)
                        && unhex(h).is_some_and(|hh| self.nodes[desk].replica.holds_blob(&hh))
                })
        });
        let e = self.calls[i].esc_index;
        self.escalations[e].rung_s = Some(secs(self.now));
        self.escalations[e].desk = Some(desk_name.clone());
        self.escalations[e].desk_held_whole = truly_held;
        if !truly_held {
            self.violate("receipts", format!("the router rang {desk_name} for a session its store did not hold whole"));
        }
    }

    /// A desk that holds a session ringing for it answers after a while, unless it is away.
    fn desk_hears_rings(&mut self, desk: usize, changed: &[DocId]) {
        let name = self.nodes[desk].name.clone();
        for doc in changed {
            let Some(v) = self.nodes[desk].replica.view_ref(doc) else { continue };
            let ringing: Vec<(String, u32)> = calls_of(v)
                .into_iter()
                .filter(|c| c.is_open())
                .filter_map(|c| {
                    let r = c.ringing()?;
                    (r.0 == name && !c.answers.iter().any(|a| a.0 == r.1)).then(|| (c.call.clone(), r.1))
                })
                .collect();
            for (call, attempt) in ringing {
                if !self.heard.insert((desk, call.clone(), attempt)) {
                    continue;
                }
                let wl = &self.scenario.workload;
                if self.rng.random::<f64>() < wl.desk_away {
                    continue;
                }
                let (lo, hi) = wl.answer_s;
                let delay = (lo + (hi - lo) * self.rng.random::<f64>()) * SECOND as f64;
                self.after(delay as Micros, Ev::Work(Work::Answer { desk, doc: *doc, call, attempt }));
            }
        }
    }

    // ------------------------------------------------------------------ observation, checks

    fn observe(&mut self, owner: usize, changed: &[DocId]) {
        let kind = self.nodes[owner].kind;
        for doc in changed {
            let Some(view) = self.nodes[owner].replica.view(doc) else { continue };
            // Status never moves backwards at any node.
            let key = (owner, *doc);
            let st = (view.reopened, view.status);
            if let Some(prev) = self.statuses.get(&key)
                && st < *prev
            {
                self.violate(
                    "status",
                    format!(
                        "{} saw {} go from {:?} back to {:?}",
                        self.nodes[owner].name,
                        SessionId::from_bytes(*doc),
                        prev,
                        st
                    ),
                );
            }
            self.statuses.insert(key, st);
            // Delivery: first time the hub, or a desk of the line, holds each write.
            if kind == Kind::Hub || kind == Kind::Desk {
                let desk_line = self.nodes[owner].info.lines.first().copied();
                if kind == Kind::Desk
                    && desk_line != Some(view.service.line)
                    && !view.shared_with.contains(&self.nodes[owner].name)
                {
                    continue;
                }
                let now = self.now;
                let mut keys: Vec<(String, bool)> = vec![(view.id.to_string(), true)];
                keys.extend(view.messages.iter().map(|m| (m.id.clone(), true)));
                for m in &view.media {
                    let whole = unhex(&m.hash).is_some_and(|h| self.nodes[owner].replica.holds_blob(&h));
                    keys.push((m.hash.clone(), whole));
                }
                for (k, held) in keys {
                    if !held {
                        continue;
                    }
                    if let Some(e) = self.ledger.get_mut(doc, &k) {
                        if kind == Kind::Hub && e.at_hub.is_none() {
                            e.at_hub = Some(now);
                        }
                        if kind == Kind::Desk && e.at_desk.is_none() {
                            e.at_desk = Some(now);
                        }
                    }
                }
                // The first desk of the rota answers once it holds the session.
                if kind == Kind::Desk
                    && !self.replied.contains(doc)
                    && self.rota.get(&view.service.line).and_then(|r| r.first()) == Some(&owner)
                {
                    self.replied.insert(*doc);
                    let urgent = view.service.priority != Priority::Routine || view.service.channel == Channel::Call;
                    let wl = self.scenario.workload.clone();
                    let delay = if urgent {
                        self.uniform_minutes(wl.reply_urgent_minutes)
                    } else {
                        let (lo, hi) = wl.reply_routine_minutes;
                        ((lo.ln() + (hi.ln() - lo.ln()) * self.rng.random::<f64>()).exp() * MINUTE as f64) as Micros
                    };
                    self.after(delay, Ev::Work(Work::Reply { desk: owner, doc: *doc }));
                }
            }
            // Receipts never claim more than is true.
            self.check_receipts(owner, &view);
        }
    }

    fn check_receipts(&mut self, owner: usize, view: &SessionView) {
        let mut bad = Vec::new();
        for m in &view.messages {
            for r in &m.receipts {
                if matches!(r.level, ReceiptLevel::Hub | ReceiptLevel::Desk | ReceiptLevel::Requester) {
                    let Some(holder) = self.nodes.iter().position(|n| n.name == r.node) else { continue };
                    if self.unvouched.contains_key(&(holder, m.id.clone())) {
                        continue;
                    }
                    let held = self.nodes[holder]
                        .replica
                        .view(&view.id.to_bytes())
                        .is_some_and(|v| v.messages.iter().any(|x| x.id == m.id));
                    if !held {
                        bad.push(format!(
                            "{} shows message {} {} at {}, which does not hold it",
                            self.nodes[owner].name,
                            m.id,
                            r.level.describe(),
                            r.node
                        ));
                    }
                }
            }
        }
        for m in &view.media {
            for r in &m.receipts {
                if matches!(r.level, ReceiptLevel::Hub | ReceiptLevel::Desk | ReceiptLevel::Requester) {
                    let Some(holder) = self.nodes.iter().position(|n| n.name == r.node) else { continue };
                    if self.unvouched.contains_key(&(holder, m.hash.clone())) {
                        continue;
                    }
                    let held = unhex(&m.hash).is_some_and(|h| {
                        let rep = &self.nodes[holder].replica;
                        rep.holds_blob(&h) || rep.blobs.get(&h).is_some_and(|b| b.offloaded)
                    });
                    if !held {
                        bad.push(format!(
                            "{} shows photo {} {} at {}, which does not hold its bytes",
                            self.nodes[owner].name,
                            &m.hash[..12],
                            r.level.describe(),
                            r.node
                        ));
                    }
                }
            }
        }
        for b in bad {
            self.violate("receipts", b);
        }
    }

    fn check_frame_scope(&mut self, receiver: usize, f: &Frame) {
        let ids: Vec<DocId> = match f {
            Frame::Summary(s) => s.entries.iter().map(|e| e.0).collect(),
            Frame::SummaryReply(r) => r.entries.iter().map(|e| e.0).collect(),
            Frame::Ranges(rs) => rs
                .iter()
                .flat_map(|r| match &r.mode {
                    sync_protocol::wire::RangeMode::Items { items, .. } => {
                        items.iter().map(|i| i.0).collect::<Vec<_>>()
                    }
                    _ => Vec::new(),
                })
                .collect(),
            Frame::Heads { doc, .. } | Frame::Ack { doc, .. } | Frame::Need { doc } | Frame::Refused { doc } => {
                vec![*doc]
            }
            Frame::Changes(c) => vec![c.doc],
            _ => Vec::new(),
        };
        let info = self.nodes[receiver].info.clone();
        // "I hold nothing of it" and "I will not store it" about an id the receiver itself named
        // (a hostile node probing) say what they would say of a session that does not exist.
        let nothing = matches!(f, Frame::Refused { .. }) || matches!(f, Frame::Heads { heads, .. } if heads.is_empty());
        for id in ids {
            if nothing && self.named.contains(&(receiver, id)) {
                continue;
            }
            // A receiver may be told of documents it asked about; what matters is that nothing
            // outside its scope is sent to it unasked: documents it cannot hold.
            if let Some(meta) = self.metas.get(&id)
                && !may_hold(&info, meta)
                && !self.nodes[receiver].replica.ids().contains(&id)
            {
                let what = f.name();
                self.violate(
                    "scope",
                    format!("{} was sent {what} about {}, outside its scope", info.name, SessionId::from_bytes(id)),
                );
            }
        }
    }

    /// One round of attacks by the hostile node of link `l` on the hub, with the node's own valid
    /// identity and key, on a session of someone else (a leaked copy): a self-share, a reply
    /// forged in a consultant's name, a forged hub receipt, a change under another member's
    /// actor, an operation bomb, and reads by id. Every forged change must be refused (the
    /// hub must not hold it afterwards); what the hub sends back is checked for scope on
    /// arrival like every frame.
    fn attack(&mut self, l: usize) {
        let (n, hub) = (self.links[l].node, self.hub);
        if !self.nodes[hub].up || !self.nodes[n].up {
            return;
        }
        let me = self.nodes[n].info.clone();
        let victim = self.nodes[hub].replica.ids().into_iter().find(|id| {
            self.nodes[hub].replica.view_ref(id).is_some_and(|v| !may_hold(&me, &v.meta()) && !v.messages.is_empty())
        });
        let Some(victim) = victim else { return };
        self.named.insert((n, victim));
        let Some(mut leaked) = self.nodes[hub].replica.copy_doc(&victim) else { return };
        let key = self.nodes[n].replica.author().clone();
        let other = self.nodes.iter().find(|x| x.kind == Kind::Desk).map(|x| x.replica.actor().clone());
        let round = self.attacks.0;
        let mut doc = leaked.fork_as(match (round % 6, other) {
            (3, Some(a)) => a,
            _ => key.actor().clone(),
        });
        let before = doc.heads();
        let am = doc.automerge();
        let obj = |am: &automerge::AutoCommit, parent: &automerge::ObjId, k: &str| match am.get(parent, k) {
            Ok(Some((automerge::Value::Object(_), o))) => Some(o),
            _ => None,
        };
        use automerge::ReadDoc;
        use automerge::transaction::Transactable;
        let forged = match round % 6 {
            0 => obj(am, &automerge::ROOT, "shares").map(|sh| am.put(&sh, me.name.as_str(), 1).is_ok()),
            1 => obj(am, &automerge::ROOT, "messages").map(|m| {
                let at = am.length(&m);
                am.insert_object(&m, at, automerge::ObjType::Map)
                    .and_then(|e| {
                        am.put(&e, "author", "desk-001")?;
                        am.put(&e, "side", "responder")?;
                        am.put(&e, "text", "benign, discharge")
                    })
                    .is_ok()
            }),
            2 | 3 => obj(am, &automerge::ROOT, "messages").and_then(|m| match am.get(&m, 0) {
                Ok(Some((automerge::Value::Object(_), first))) => {
                    obj(am, &first, "receipts").map(|r| am.put(&r, format!("hub/{}", self.nodes[hub].name), 1).is_ok())
                }
                _ => None,
            }),
            4 => obj(am, &automerge::ROOT, "messages")
                .map(|m| am.splice(&m, 0, 0, std::iter::repeat_n(automerge::ScalarValue::Null, 100_000)).is_ok()),
            _ => None,
        };
        let frames = if forged == Some(true) {
            am.commit();
            let changes = am.get_changes(&before);
            let bytes: Vec<u8> = changes.iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
            let sigs = changes.iter().map(|c| key.sign(&c.hash())).collect();
            let hashes: Vec<Hash> = changes.iter().map(|c| c.hash().0).collect();
            let heads = doc.heads().iter().map(|h| h.0).collect();
            vec![(hashes, Frame::Changes(sync_protocol::wire::Changes { doc: victim, ack: false, heads, bytes, sigs }))]
        } else {
            vec![
                (Vec::new(), Frame::Need { doc: victim }),
                (Vec::new(), Frame::Heads { doc: victim, heads: vec![[7; 32]] }),
            ]
        };
        let now = self.node_now(hub);
        let hub_info = self.nodes[hub].info.clone();
        for (hashes, frame) in frames {
            self.attacks.0 += 1;
            let Some(c) = self.links[l].conn.as_mut() else { return };
            let result = c.engines[1].handle(&mut self.nodes[hub].replica, vec![frame], now);
            self.flush(l, 1, 0);
            if let Err(e) = result {
                self.drop_conn(l, &e.to_string());
                return;
            }
            let held = self.nodes[hub].replica.known_hashes(&hub_info, &victim, &hashes).unwrap_or_default();
            if held.is_empty() {
                self.attacks.1 += 1;
            } else {
                self.violate("byzantine", format!("the hub stored a change {} forged in {}'s name", me.name, me.name));
            }
        }
        self.after_changes(hub, None);
    }

    fn violate(&mut self, check: &str, detail: String) {
        if self.violations.len() < 1000 {
            self.violations.push(Violation { check: check.into(), at_s: secs(self.now), detail });
        }
    }

    /// Periodic checks: scope of what every node holds.
    fn sweep(&mut self) {
        let mut bad = Vec::new();
        for n in &self.nodes {
            for id in n.replica.ids() {
                if let Some(meta) = self.metas.get(&id)
                    && !may_hold(&n.info, meta)
                {
                    bad.push(format!("{} holds {}, outside its scope", n.name, SessionId::from_bytes(id)));
                }
            }
        }
        for b in bad {
            self.violate("scope", b);
        }
    }

    /// Every write a node acknowledged is still in its store.
    fn check_durability(&mut self, n: usize) {
        let mut bad = Vec::new();
        for e in self.ledger.entries.iter().filter(|e| e.node == n && !self.lost_in_restore.contains(&e.key)) {
            let present = match self.nodes[n].replica.view(&e.doc) {
                None => false,
                Some(v) => match e.what {
                    What::Session => true,
                    What::Message => v.messages.iter().any(|m| m.id == e.key),
                    What::Photo => v.media.iter().any(|m| m.hash == e.key),
                },
            };
            if !present {
                bad.push(format!("{} lost its acknowledged {:?} {} after a crash", self.nodes[n].name, e.what, e.key));
            }
        }
        for b in bad {
            self.violate("durability", b);
        }
    }

    // ------------------------------------------------------------------ faults

    fn targets(&self, spec: &str) -> Vec<usize> {
        if spec == "all" {
            return (0..self.nodes.len()).collect();
        }
        if spec == "hub" {
            return vec![self.hub];
        }
        if let Some((kind, which)) = spec.split_once(':') {
            let of_kind: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].kind.as_str() == kind).collect();
            let n = of_kind.len();
            let take = if which == "all" {
                n
            } else if let Some((a, b)) = which.split_once('/') {
                let (a, b): (usize, usize) = (a.parse().unwrap_or(1), b.parse().unwrap_or(1));
                n * a / b.max(1)
            } else {
                which.parse().unwrap_or(0)
            };
            return of_kind.into_iter().take(take).collect();
        }
        self.nodes.iter().position(|n| n.name == spec).into_iter().collect()
    }

    fn fault(&mut self, index: usize, start: bool, rep: u32) {
        // Once the scenario ends, no fault starts again.
        if start && self.settling.is_some() {
            return;
        }
        let f: Fault = self.scenario.faults[index].clone();
        let targets = self.targets(&f.targets);
        self.log(30, index as u64, u64::from(start));
        let dur = (f.minutes * MINUTE as f64) as Micros;
        match f.kind {
            FaultKind::Outage | FaultKind::Partition => {
                for n in &targets {
                    let links: Vec<usize> = if *n == self.hub {
                        (0..self.links.len()).collect()
                    } else {
                        self.nodes[*n].link.into_iter().collect()
                    };
                    for l in links {
                        let was = self.links[l].up();
                        if start {
                            self.links[l].forced_down += 1;
                        } else {
                            self.links[l].forced_down = self.links[l].forced_down.saturating_sub(1);
                        }
                        self.link_changed(l, was);
                    }
                }
            }
            FaultKind::Crash => {
                for n in &targets {
                    if start {
                        self.crash(*n);
                    } else {
                        self.restart(*n);
                    }
                }
            }
            FaultKind::Clog => {
                for n in &targets {
                    if let Some(l) = self.nodes[*n].link {
                        self.links[l].clog = if start { f.factor } else { 1.0 };
                    }
                }
            }
            FaultKind::ClockSkew => {
                if start {
                    for n in &targets {
                        self.nodes[*n].skew_ms = (f.hours * 3_600_000.0) as i64;
                    }
                }
            }
            FaultKind::Corrupt | FaultKind::Duplicate => {
                for n in &targets {
                    if let Some(l) = self.nodes[*n].link {
                        let p = if start { f.probability } else { 0.0 };
                        if f.kind == FaultKind::Corrupt {
                            self.links[l].corrupt = p;
                        } else {
                            self.links[l].duplicate = p;
                        }
                    }
                }
            }
            FaultKind::Forget => {
                if start {
                    for n in &targets {
                        self.nodes[*n].replica.forget_peers();
                    }
                }
            }
            FaultKind::Byzantine => {
                for n in &targets {
                    self.nodes[*n].hostile = start;
                }
            }
            FaultKind::Restore => {
                if start {
                    for n in &targets {
                        self.restore(index, *n);
                    }
                }
            }
        }
        let lasting = !matches!(f.kind, FaultKind::ClockSkew | FaultKind::Forget | FaultKind::Restore);
        if start && lasting {
            self.after(dur, Ev::Fault { index, start: false, rep });
        }
        if (!start || !lasting) && f.every_hours > 0.0 && self.settling.is_none() {
            let period = (f.every_hours * HOUR as f64) as Micros;
            let next = (f.at_hour * HOUR as f64) as Micros + period * u64::from(rep + 1);
            let end = (self.opts.hours.unwrap_or(self.scenario.hours) * HOUR as f64) as Micros;
            if next < end {
                self.at(next, Ev::Fault { index, start: true, rep: rep + 1 });
                self.schedule_backup(index, next);
            }
        }
        if !start {
            self.last_heal = self.now;
        }
    }

    /// A `restore` fault at `t` restores from a backup taken its `hours` before.
    fn schedule_backup(&mut self, index: usize, t: Micros) {
        let f = &self.scenario.faults[index];
        if f.kind == FaultKind::Restore {
            let age = if f.hours > 0.0 { f.hours } else { 1.0 };
            let at = t.saturating_sub((age * HOUR as f64) as Micros).max(self.now);
            self.at(at, Ev::Backup { index });
        }
    }

    fn backup(&mut self, index: usize) {
        let targets = self.targets(&self.scenario.faults[index].targets.clone());
        for n in targets {
            let copy = self.nodes[n].replica.backup();
            self.backups.insert((index, n), copy);
        }
    }

    /// Node `n` is stopped, its store replaced by the backup, and restarted under a fresh actor
    /// instance. What it lost that another node still holds must come back by sync; the rest
    /// is lost for good and reported.
    fn restore(&mut self, index: usize, n: usize) {
        let Some(mut backup) = self.backups.remove(&(index, n)) else { return };
        self.crash(n);
        self.nodes[n].undo = None;
        let before = self.holdings(n);
        let instance: [u8; 8] = self.rng.random();
        self.nodes[n].replica.restore(&mut backup, instance);
        let after = self.holdings(n);
        self.restores.0 += 1;
        self.log(33, n as u64, index as u64);
        for (doc, key, photo) in before.difference(&after) {
            let elsewhere = (0..self.nodes.len()).filter(|o| *o != n).any(|o| {
                let r = &self.nodes[o].replica;
                if *photo {
                    unhex(key).is_some_and(|h| r.holds_blob(&h))
                } else if key == &SessionId::from_bytes(*doc).to_string() {
                    r.view_ref(doc).is_some()
                } else {
                    r.view_ref(doc).is_some_and(|v| v.messages.iter().any(|m| &m.id == key))
                }
            });
            self.unvouched.insert((n, key.clone()), !elsewhere);
            if elsewhere {
                self.restores.1 += 1;
            }
            if !elsewhere && self.ledger.get_mut(doc, key).is_some() {
                self.restores.2 += 1;
                self.lost_in_restore.insert(key.clone());
                if key == &SessionId::from_bytes(*doc).to_string() {
                    self.metas.remove(doc);
                }
            }
        }
        // What the node showed before the restore is no longer what it holds.
        self.statuses.retain(|(o, _), _| *o != n);
        self.nodes[n].up = true;
        self.log(32, n as u64, 0);
        self.reconnect(n);
    }

    /// Sessions, messages and whole photos a node holds: (session, id or hash, is a photo).
    fn holdings(&self, n: usize) -> BTreeSet<(DocId, String, bool)> {
        let r = &self.nodes[n].replica;
        let mut out = BTreeSet::new();
        for id in r.ids() {
            let Some(v) = r.view_ref(&id) else { continue };
            out.insert((id, v.id.to_string(), false));
            for m in &v.messages {
                out.insert((id, m.id.clone(), false));
            }
            for m in &v.media {
                if unhex(&m.hash).is_some_and(|h| r.holds_blob(&h)) {
                    out.insert((id, m.hash.clone(), true));
                }
            }
        }
        out
    }

    fn crash(&mut self, n: usize) {
        if !self.nodes[n].up {
            return;
        }
        self.nodes[n].up = false;
        self.log(31, n as u64, 0);
        let links: Vec<usize> =
            if n == self.hub { (0..self.links.len()).collect() } else { self.nodes[n].link.into_iter().collect() };
        for l in links {
            self.drop_conn(l, "crash");
        }
        // The planted bug: a store that acknowledged its last write before making it durable.
        if self.opts.bugs.lose_acked_writes_on_crash
            && let Some((doc, before)) = self.nodes[n].undo.take()
        {
            self.nodes[n].replica.restore_doc(&doc, before);
        }
    }

    fn restart(&mut self, n: usize) {
        if self.nodes[n].up {
            return;
        }
        self.nodes[n].up = true;
        self.log(32, n as u64, 0);
        self.check_durability(n);
        self.reconnect(n);
    }

    fn reconnect(&mut self, n: usize) {
        let links: Vec<usize> =
            if n == self.hub { (0..self.links.len()).collect() } else { self.nodes[n].link.into_iter().collect() };
        for l in links {
            if !self.links[l].connect_pending {
                self.links[l].connect_pending = true;
                let jitter = self.rng.random_range(0..2 * SECOND);
                self.after(jitter, Ev::Connect(l));
            }
        }
    }

    // ------------------------------------------------------------------ sampling, settling

    fn sample(&mut self) {
        let mut up: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for l in &self.links {
            let k = self.nodes[l.node].kind.as_str().to_string();
            let e = up.entry(k).or_default();
            e.1 += 1;
            if l.up() {
                e.0 += 1;
            }
        }
        let mut backlog: BTreeMap<String, u64> = BTreeMap::new();
        for e in &self.ledger.entries {
            if e.at_hub.is_none() {
                *backlog.entry(e.kind.as_str().to_string()).or_default() += 1;
            }
        }
        self.samples.push(Sample {
            hour: hours_of(self.now),
            wire_bytes: std::mem::take(&mut self.wire_bucket),
            payload_bytes: std::mem::take(&mut self.payload_bucket),
            links_up: up.into_iter().map(|(k, (a, b))| (k, a as f64 / b.max(1) as f64)).collect(),
            backlog,
        });
    }

    /// The end of the scenario: faults end, links heal, and the region runs until it converges.
    fn settle(&mut self) {
        self.settling = Some(self.now);
        for l in 0..self.links.len() {
            let was = self.links[l].up();
            self.links[l].natural_up = true;
            self.links[l].forced_down = 0;
            self.links[l].clog = 1.0;
            self.links[l].corrupt = 0.0;
            self.links[l].duplicate = 0.0;
            self.link_changed(l, was);
        }
        for n in 0..self.nodes.len() {
            self.restart(n);
        }
        self.last_heal = self.now;
        let limit = (self.scenario.settle_minutes * MINUTE as f64) as Micros;
        self.after(SECOND, Ev::Converge);
        self.after(limit, Ev::End);
    }

    /// Whether every replica holds exactly what the hub holds of its scope, and every photo is
    /// whole at the hub and at every desk that holds its session.
    pub fn converged(&mut self) -> bool {
        let hub = self.hub;
        let mut hub_heads: BTreeMap<DocId, Vec<Hash>> = BTreeMap::new();
        for id in self.nodes[hub].replica.ids() {
            if let Some(h) = self.nodes[hub].replica.heads(&id) {
                hub_heads.insert(id, h);
            }
        }
        if self.metas.keys().any(|id| !hub_heads.contains_key(id)) {
            return false;
        }
        for n in 0..self.nodes.len() {
            if n == hub {
                continue;
            }
            for (id, heads) in &hub_heads {
                let Some(meta) = self.metas.get(id) else { continue };
                if !may_hold(&self.nodes[n].info, meta) {
                    continue;
                }
                if self.nodes[n].replica.heads(id).as_ref() != Some(heads) {
                    return false;
                }
            }
        }
        for e in self.ledger.entries.iter().filter(|e| e.what == What::Photo && !self.lost_in_restore.contains(&e.key))
        {
            let Some(h) = unhex(&e.key) else { continue };
            if !self.nodes[hub].replica.holds_blob(&h) {
                return false;
            }
            let Some(meta) = self.metas.get(&e.doc) else { continue };
            for n in &self.nodes {
                if n.kind == Kind::Desk && may_hold(&n.info, meta) && !n.replica.holds_blob(&h) {
                    return false;
                }
            }
        }
        true
    }

    /// Final checks after the run.
    pub fn finish(&mut self) {
        for n in 0..self.nodes.len() {
            self.check_durability(n);
        }
        self.sweep();
        // What a restored node lost and a peer still held is back by now: every receipt is
        // checked again, but for items lost for good (reported, not hidden).
        self.unvouched.retain(|_, for_good| *for_good);
        for n in 0..self.nodes.len() {
            for id in self.nodes[n].replica.ids() {
                if let Some(view) = self.nodes[n].replica.view(&id) {
                    self.check_receipts(n, &view);
                }
            }
        }
        if self.converged_at.is_none() {
            if self.converged() {
                self.converged_at = Some(self.now);
            } else {
                let detail = self.divergence();
                self.violate("convergence", detail);
            }
        }
    }

    fn divergence(&mut self) -> String {
        let hub = self.hub;
        let hub_ids = self.nodes[hub].replica.ids();
        for id in self.metas.keys() {
            if !hub_ids.contains(id) {
                return format!("the hub never received session {}", SessionId::from_bytes(*id));
            }
        }
        for n in 0..self.nodes.len() {
            if n == hub {
                continue;
            }
            for id in &hub_ids {
                let Some(meta) = self.metas.get(id).cloned() else { continue };
                let theirs = self.nodes[hub].replica.heads(id);
                if may_hold(&self.nodes[n].info, &meta) && self.nodes[n].replica.heads(id) != theirs {
                    return format!(
                        "{} and the hub still differ on session {}",
                        self.nodes[n].name,
                        SessionId::from_bytes(*id)
                    );
                }
            }
        }
        for e in self.ledger.entries.iter().filter(|e| e.what == What::Photo && !self.lost_in_restore.contains(&e.key))
        {
            let Some(h) = unhex(&e.key) else { continue };
            let Some(meta) = self.metas.get(&e.doc) else { continue };
            let short = &e.key[..12];
            let describe = |n: &Node| {
                let b = n.replica.blobs.get(&h);
                format!(
                    "{} holds {} chunks{}{}",
                    n.name,
                    b.map_or(0, |b| b.chunks.len()),
                    if b.is_some_and(|b| b.manifest.is_some()) { " and the manifest" } else { "" },
                    if b.is_some_and(|b| b.offloaded) { " (offloaded)" } else { "" }
                )
            };
            if !self.nodes[hub].replica.holds_blob(&h) {
                let origin = self.nodes.iter().find(|n| n.name == meta.origin).map(describe).unwrap_or_default();
                return format!(
                    "photo {short} of {} never reached the hub whole: {}; {origin}",
                    SessionId::from_bytes(e.doc),
                    describe(&self.nodes[hub])
                );
            }
            for n in &self.nodes {
                if n.kind == Kind::Desk && may_hold(&n.info, meta) && !n.replica.holds_blob(&h) {
                    return format!(
                        "photo {short} of {} never reached {} whole: {}",
                        SessionId::from_bytes(e.doc),
                        n.name,
                        describe(n)
                    );
                }
            }
        }
        "a photo never reached the hub, or a desk, whole".into()
    }

    /// Simulated seconds of the settle phase until convergence.
    pub fn convergence_seconds(&self) -> Option<f64> {
        Some(secs(self.converged_at?.saturating_sub(self.settling?)))
    }

    /// When the scenario (before settling) ended, hours.
    pub fn scenario_hours(&self) -> f64 {
        self.opts.hours.unwrap_or(self.scenario.hours)
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Nodes of each kind.
    pub fn count(&self, kind: Kind) -> usize {
        self.nodes.iter().filter(|n| n.kind == kind).count()
    }

    /// Photo bytes generated.
    pub fn photo_bytes(&self) -> u64 {
        self.photos.values().map(|p| p.len() as u64).sum()
    }

    /// Drops memory no longer needed once the run is over.
    pub fn release(&mut self) {
        self.photos.clear();
        let _ = &self.pool;
    }
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Bytes of a synthetic photo: deterministic noise (what matters is the size and the hash).
fn photo_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; size];
    rng.fill(&mut v[..]);
    v
}

/// Corrupts one byte of a frame; returns what the receiver decodes, if anything.
fn corrupt(f: &Frame, rng: &mut ChaCha8Rng) -> Option<Frame> {
    let mut bytes = f.to_bytes();
    let i = rng.random_range(0..bytes.len());
    bytes[i] ^= 1 << rng.random_range(0..8);
    let mut d = FrameDecoder::new();
    d.feed(&bytes);
    d.next_frame().ok().flatten()
}

/// A replica that ignores scope when serving its peers: the planted scope bug.
struct Blind<'a>(&'a mut MemReplica);

fn everyone(p: &PeerInfo) -> PeerInfo {
    PeerInfo { name: p.name.clone(), role: Role::Hub, org: None, icb: p.icb.clone(), lines: vec![] }
}

impl Replica for Blind<'_> {
    type Error = sync_protocol::mem::MemError;
    fn me(&self) -> &PeerInfo {
        self.0.me()
    }
    fn items(&mut self, peer: &PeerInfo) -> Result<Vec<sync_protocol::recon::Item>, Self::Error> {
        self.0.items(&everyone(peer))
    }
    fn delta(&mut self, peer: &PeerInfo) -> Result<Vec<(DocId, Vec<Hash>)>, Self::Error> {
        self.0.delta(&everyone(peer))
    }
    fn knows_peer(&mut self, peer: &PeerInfo) -> Result<bool, Self::Error> {
        self.0.knows_peer(peer)
    }
    fn heads_for(&mut self, peer: &PeerInfo, id: &DocId) -> Result<Option<Vec<Hash>>, Self::Error> {
        self.0.heads_for(&everyone(peer), id)
    }
    fn known_hashes(&mut self, peer: &PeerInfo, id: &DocId, hashes: &[Hash]) -> Result<Vec<Hash>, Self::Error> {
        self.0.known_hashes(&everyone(peer), id, hashes)
    }
    fn knowledge(
        &mut self,
        peer: &PeerInfo,
        id: &DocId,
    ) -> Result<Option<sync_protocol::engine::Knowledge>, Self::Error> {
        self.0.knowledge(peer, id)
    }
    fn set_knowledge(
        &mut self,
        peer: &PeerInfo,
        updates: &[(DocId, sync_protocol::engine::Knowledge)],
    ) -> Result<(), Self::Error> {
        self.0.set_knowledge(peer, updates)
    }
    fn changes_since(
        &mut self,
        peer: &PeerInfo,
        id: &DocId,
        base: &[Hash],
    ) -> Result<Option<sync_protocol::engine::Outgoing>, Self::Error> {
        self.0.changes_since(&everyone(peer), id, base)
    }
    fn apply(
        &mut self,
        peer: &PeerInfo,
        batch: &[sync_protocol::engine::Incoming],
        now: TimeMs,
    ) -> Result<Vec<sync_protocol::engine::Applied>, Self::Error> {
        self.0.apply(peer, batch, now)
    }
    fn credential(
        &mut self,
        peer: &PeerInfo,
        author: &sync_protocol::authorship::ActorPrefix,
    ) -> Result<Option<Vec<u8>>, Self::Error> {
        self.0.credential(peer, author)
    }
    fn offer_credential(&mut self, credential: &[u8]) -> Result<bool, Self::Error> {
        self.0.offer_credential(credential)
    }
    fn blobs_wanted(&mut self, peer: &PeerInfo) -> Result<Vec<sync_protocol::engine::BlobNeed>, Self::Error> {
        self.0.blobs_wanted(peer)
    }
    fn blob_manifest(
        &mut self,
        peer: &PeerInfo,
        hash: &Hash,
    ) -> Result<Option<sync_protocol::wire::BlobManifest>, Self::Error> {
        self.0.blob_manifest(&everyone(peer), hash)
    }
    fn blob_chunk(&mut self, hash: &Hash, index: u32) -> Result<Option<Vec<u8>>, Self::Error> {
        self.0.blob_chunk(hash, index)
    }
    fn store_manifest(&mut self, manifest: &sync_protocol::wire::BlobManifest) -> Result<(), Self::Error> {
        self.0.store_manifest(manifest)
    }
    fn store_chunks(&mut self, chunks: &[(Hash, u32, Vec<u8>)], now: TimeMs) -> Result<Vec<DocId>, Self::Error> {
        self.0.store_chunks(chunks, now)
    }
    fn revocations(&mut self) -> Result<Option<(u64, Vec<u8>)>, Self::Error> {
        self.0.revocations()
    }
    fn offer_revocations(&mut self, der: &[u8]) -> Result<bool, Self::Error> {
        self.0.offer_revocations(der)
    }
}
