//! A user-space link emulator: a UDP relay that makes a loopback path behave like a rural link.
//!
//! The kernel here has no netem, so delay, jitter, burst loss (Gilbert-Elliott), a bandwidth
//! cap with a bounded queue, duplication, reordering and blackouts are applied in this relay,
//! from the named profiles of [`sync_protocol::links`] (the same the simulator uses). Clients
//! send to the relay's address; it forwards each client's datagrams to the target from a
//! socket of its own, so replies find their way back through the same impairments.
//!
//! Blackouts come from the profile's availability process (`outages`), or on command
//! ([`LinkEmulator::set_up`], or `down`/`up` lines on the `outpost linkem` command's input).
//!
//! Each datagram keeps its ECN codepoint across the relay (read and written with quinn's
//! UDP layer), as a router does, so QUIC's ECN works through it. The bottleneck's queue is
//! drop-tail by default, as most cellular links' are; it can instead be managed
//! ([`EmulatorOptions::aqm`]): CoDel (RFC 8289), as a home or hospital router running
//! fq_codel or cake has, or a step threshold on the waiting time, as an L4S-capable cell
//! marks. Either marks ECN-capable datagrams Congestion Experienced rather than dropping them.

use std::collections::{BinaryHeap, HashMap};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit, UdpSocketState};
use serde::Serialize;
use sync_protocol::links::{self, LinkProfile, LinkState, Uniform};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How the emulator behaves beyond its profile.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Follow the profile's availability process (random blackouts).
    pub outages: bool,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back behind later ones (reordering).
    pub reorder: f64,
    /// Seed of the random generator (0: from the system).
    pub seed: u64,
    /// How the bottleneck manages its queue (beyond dropping at a full buffer).
    pub aqm: Aqm,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions { outages: false, duplicate: 0.0, reorder: 0.0, seed: 0, aqm: Aqm::DropTail }
    }
}

/// The bottleneck's queue management.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aqm {
    /// A datagram is dropped only when the buffer is full: most cellular links today.
    #[default]
    DropTail,
    /// CoDel (RFC 8289): once datagrams have waited longer than `target` for a whole
    /// `interval`, one is marked (ECN-capable) or dropped (not), then more often (the
    /// interval over the square root of the count) until the waiting falls under the target.
    CoDel {
        /// The waiting time the queue is held to (RFC 8289: 5 ms).
        target: Duration,
        /// How long the waiting must stay over it (RFC 8289: 100 ms, a round trip).
        interval: Duration,
    },
    /// Every ECN-capable datagram that would wait longer than this is marked (an L4S step
    /// threshold); the others are dropped at a full buffer only.
    Step(Duration),
}

impl Aqm {
    /// CoDel with RFC 8289's defaults (5 ms, 100 ms).
    pub const CODEL: Aqm = Aqm::CoDel { target: Duration::from_millis(5), interval: Duration::from_millis(100) };

    /// Parses `droptail`, `codel` or `step:<ms>`.
    pub fn parse(s: &str) -> Option<Aqm> {
        match s.trim() {
            "droptail" | "drop-tail" => Some(Aqm::DropTail),
            "codel" => Some(Aqm::CODEL),
            other => {
                let ms: u64 = other.strip_prefix("step:")?.parse().ok()?;
                Some(Aqm::Step(Duration::from_millis(ms)))
            }
        }
    }
}

impl std::fmt::Display for Aqm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Aqm::DropTail => write!(f, "drop-tail"),
            Aqm::CoDel { target, interval } => {
                write!(f, "CoDel ({} ms, {} ms; ECN marks)", target.as_millis(), interval.as_millis())
            }
            Aqm::Step(above) => write!(f, "step-marking (CE past {} ms of queue)", above.as_millis()),
        }
    }
}

/// The largest datagram, for CoDel's one-packet rule (RFC 8289's MAXPACKET).
const MAX_PACKET: f64 = 1_500.0;

/// CoDel's state (RFC 8289, section 5), run for each datagram as it reaches the head of the
/// queue: the emulator knows at arrival when that will be, and datagrams leave in order.
#[derive(Debug)]
struct CoDel {
    target: Duration,
    interval: Duration,
    /// When the waiting, over the target since, will have been so for an interval.
    first_above: Option<Instant>,
    dropping: bool,
    drop_next: Instant,
    count: u32,
    last_count: u32,
}

impl CoDel {
    fn new(target: Duration, interval: Duration) -> CoDel {
        CoDel {
            target,
            interval,
            first_above: None,
            dropping: false,
            drop_next: Instant::now(),
            count: 0,
            last_count: 0,
        }
    }

    fn control_law(&self, t: Instant) -> Instant {
        t + self.interval.div_f64(f64::from(self.count.max(1)).sqrt())
    }

    /// Whether the datagram leaving the queue at `at`, after waiting `waited` behind `ahead`
    /// bytes, is marked (or dropped). As RFC 8289 does not act on a queue of one packet
    /// (on a slow link one packet takes longer than the target to send), neither does this,
    /// judged by what was ahead of the datagram when it came.
    fn judge(&mut self, at: Instant, waited: Duration, ahead: f64) -> bool {
        let ok_to_drop = if waited < self.target || ahead <= MAX_PACKET {
            self.first_above = None;
            false
        } else {
            match self.first_above {
                None => {
                    self.first_above = Some(at + self.interval);
                    false
                }
                Some(t) => at >= t,
            }
        };
        if self.dropping {
            if !ok_to_drop {
                self.dropping = false;
                return false;
            }
            if at >= self.drop_next {
                self.count = self.count.saturating_add(1);
                self.drop_next = self.control_law(self.drop_next);
                return true;
            }
            false
        } else if ok_to_drop {
            self.dropping = true;
            let delta = self.count.saturating_sub(self.last_count);
            let recent = at.saturating_duration_since(self.drop_next) < self.interval * 16;
            self.count = if delta > 1 && recent { delta } else { 1 };
            self.drop_next = self.control_law(at);
            self.last_count = self.count;
            true
        } else {
            false
        }
    }
}

/// Counters of one emulator.
#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct LinkStats {
    /// Bytes received from clients.
    pub up_bytes_in: u64,
    /// Bytes delivered to the target.
    pub up_bytes_out: u64,
    /// Bytes received from the target.
    pub down_bytes_in: u64,
    /// Bytes delivered to clients.
    pub down_bytes_out: u64,
    /// Datagrams dropped by loss.
    pub lost: u64,
    /// Datagrams dropped because the link was down.
    pub blacked_out: u64,
    /// Datagrams dropped at a full queue, or by CoDel (those not ECN-capable).
    pub queue_drops: u64,
    /// Outside addresses given to clients (one per client, and one more per rebinding).
    pub mappings: u64,
    /// Datagrams marked Congestion Experienced at an ECN-marking bottleneck.
    pub ce_marked: u64,
    /// Datagrams that came in ECN-capable (ECT(0), ECT(1) or already CE).
    pub ecn_capable: u64,
}

#[derive(Debug, Default)]
struct Counters {
    up_in: AtomicU64,
    up_out: AtomicU64,
    down_in: AtomicU64,
    down_out: AtomicU64,
    lost: AtomicU64,
    blacked_out: AtomicU64,
    queue_drops: AtomicU64,
    mappings: AtomicU64,
    ce_marked: AtomicU64,
    ecn_capable: AtomicU64,
}

#[derive(Debug)]
struct Control {
    manual_up: AtomicBool,
    scheduled_up: AtomicBool,
    counters: Counters,
    /// Bumped by [`LinkEmulator::rebind`]: every client gets a new outside address.
    rebinds: AtomicU64,
    /// When the emulator started: [`Control::up_free_us`] counts from it.
    origin: Instant,
    /// When the uplink's bottleneck has sent all it holds, in microseconds from `origin`.
    up_free_us: AtomicU64,
}

impl Control {
    fn up(&self) -> bool {
        self.manual_up.load(Ordering::Relaxed) && self.scheduled_up.load(Ordering::Relaxed)
    }
}

/// A running emulator.
#[derive(Debug)]
pub struct LinkEmulator {
    /// The address clients send to.
    pub local_addr: SocketAddr,
    control: Arc<Control>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    up: mpsc::Sender<Packet>,
    down: mpsc::Sender<Packet>,
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// xorshift64*: the emulator's randomness (seeded for reproducible runs).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Uniform for Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed(s: u64) -> u64 {
    if s != 0 {
        return s;
    }
    let mut b = [0u8; 8];
    let _ = crate::crypto::random_bytes(&mut b);
    u64::from_le_bytes(b) | 1
}

impl LinkEmulator {
    /// Starts relaying from `listen` to `target` through `profile`.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        profile: LinkProfile,
        opts: EmulatorOptions,
    ) -> std::io::Result<LinkEmulator> {
        let front = Arc::new(Relay::bind(listen).await?);
        let local_addr = front.io.local_addr()?;
        let control = Arc::new(Control {
            manual_up: AtomicBool::new(true),
            scheduled_up: AtomicBool::new(true),
            counters: Counters::default(),
            rebinds: AtomicU64::new(0),
            origin: Instant::now(),
            up_free_us: AtomicU64::new(0),
        });
        let base = seed(opts.seed);
        let mut tasks = Vec::new();
        if opts.outages && profile.availability < 1.0 {
            tasks.push(tokio::spawn(outage_schedule(control.clone(), profile.clone(), Rng(base ^ 0x5A5A))));
        }
        let (up_tx, up_rx) = mpsc::channel::<Packet>(4096);
        let (down_tx, down_rx) = mpsc::channel::<Packet>(4096);
        tasks.push(tokio::spawn(pipe(
            up_rx,
            Direction::Up,
            profile.clone(),
            opts.clone(),
            control.clone(),
            Rng(base ^ 1),
        )));
        tasks.push(tokio::spawn(pipe(down_rx, Direction::Down, profile, opts, control.clone(), Rng(base ^ 2))));
        tasks.push(tokio::spawn(front_loop(front, target, up_tx.clone(), down_tx.clone(), control.clone())));
        Ok(LinkEmulator { local_addr, control, tasks, up: up_tx, down: down_tx })
    }

    /// Another entrance to the same link, relaying to `target`: its traffic shares the
    /// bottleneck, queue, loss and blackouts with every other (two applications on one
    /// tablet's radio). Returns the address its clients send to.
    pub async fn add_entrance(&mut self, listen: SocketAddr, target: SocketAddr) -> std::io::Result<SocketAddr> {
        let front = Arc::new(Relay::bind(listen).await?);
        let addr = front.io.local_addr()?;
        self.tasks.push(tokio::spawn(front_loop(
            front,
            target,
            self.up.clone(),
            self.down.clone(),
            self.control.clone(),
        )));
        Ok(addr)
    }

    /// Brings the link down (`false`) or up (`true`) by hand.
    pub fn set_up(&self, up: bool) {
        self.control.manual_up.store(up, Ordering::Relaxed);
    }

    /// A NAT rebinding: from now on every client's datagrams reach the target from a new
    /// address (a new port), and replies to the old one are dropped, as a carrier-grade NAT
    /// does when its mapping times out or the tablet moves to another cell. QUIC's connection
    /// migration must carry the connection over.
    pub fn rebind(&self) {
        self.control.rebinds.fetch_add(1, Ordering::Relaxed);
    }

    /// A gauge of the uplink's queue, to read while traffic flows (benchmarks sample it to
    /// show the queue a congestion controller keeps, which every flow sharing the link waits
    /// behind).
    pub fn uplink_queue(&self) -> UplinkQueue {
        UplinkQueue { control: self.control.clone() }
    }

    /// Whether the link is up now.
    pub fn is_up(&self) -> bool {
        self.control.up()
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        let c = &self.control.counters;
        LinkStats {
            up_bytes_in: c.up_in.load(Ordering::Relaxed),
            up_bytes_out: c.up_out.load(Ordering::Relaxed),
            down_bytes_in: c.down_in.load(Ordering::Relaxed),
            down_bytes_out: c.down_out.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            blacked_out: c.blacked_out.load(Ordering::Relaxed),
            queue_drops: c.queue_drops.load(Ordering::Relaxed),
            mappings: c.mappings.load(Ordering::Relaxed),
            ce_marked: c.ce_marked.load(Ordering::Relaxed),
            ecn_capable: c.ecn_capable.load(Ordering::Relaxed),
        }
    }
}

/// The uplink's queue of one emulator: see [`LinkEmulator::uplink_queue`].
#[derive(Debug, Clone)]
pub struct UplinkQueue {
    control: Arc<Control>,
}

impl UplinkQueue {
    /// How long a datagram arriving now would wait at the bottleneck before its turn: what the
    /// queue holds, in time at the link's rate (zero when the link is idle).
    pub fn delay(&self) -> Duration {
        let held = Duration::from_micros(self.control.up_free_us.load(Ordering::Relaxed));
        self.control
            .origin
            .checked_add(held)
            .map_or(Duration::MAX, |free| free.saturating_duration_since(Instant::now()))
    }
}

#[derive(Debug)]
struct Packet {
    data: Vec<u8>,
    socket: Arc<Relay>,
    to: SocketAddr,
    ecn: Option<EcnCodepoint>,
}

/// One of the relay's sockets, read and written with quinn's UDP layer so that each
/// datagram's ECN codepoint is seen and passed on (a plain socket sends every datagram
/// Not-ECT, and QUIC then turns ECN off).
#[derive(Debug)]
struct Relay {
    io: UdpSocket,
    state: UdpSocketState,
}

impl Relay {
    async fn bind(addr: SocketAddr) -> std::io::Result<Relay> {
        let io = UdpSocket::bind(addr).await?;
        let state = UdpSocketState::new((&io).into())?;
        Ok(Relay { io, state })
    }

    /// A buffer for one read: with generic receive offload, up to the kernel's batch of
    /// datagrams of one size (the senders' MTU here is at most 1,500 bytes).
    fn buffer(&self) -> Vec<u8> {
        vec![0u8; (self.state.gro_segments() * 1_500).max(65_536)]
    }

    /// Reads what came: the datagrams (one, or a batch of one sender's datagrams of one
    /// size), each by its range in `buf`, with their sender and ECN codepoint.
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<(RecvMeta, Vec<std::ops::Range<usize>>)> {
        loop {
            self.io.readable().await?;
            let mut meta = [RecvMeta::default()];
            let read = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), &mut [IoSliceMut::new(&mut *buf)], &mut meta)
            });
            match read {
                Ok(_) => {
                    let m = meta[0];
                    let len = m.len.min(buf.len());
                    let stride = if m.stride == 0 { len.max(1) } else { m.stride };
                    let ranges = (0..len).step_by(stride).map(|at| at..(at + stride).min(len)).collect();
                    return Ok((m, ranges));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn send(&self, data: &[u8], to: SocketAddr, ecn: Option<EcnCodepoint>) -> std::io::Result<()> {
        let t = Transmit { destination: to, ecn, contents: data, segment_size: None, src_ip: None };
        self.io.async_io(Interest::WRITABLE, || self.state.send((&self.io).into(), &t)).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

async fn front_loop(
    front: Arc<Relay>,
    target: SocketAddr,
    up: mpsc::Sender<Packet>,
    down: mpsc::Sender<Packet>,
    control: Arc<Control>,
) {
    let mut backs: HashMap<SocketAddr, (Arc<Relay>, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut generation = 0u64;
    let mut buf = front.buffer();
    loop {
        let Ok((meta, datagrams)) = front.recv(&mut buf).await else { return };
        let client = meta.addr;
        control.counters.up_in.fetch_add(meta.len as u64, Ordering::Relaxed);
        let now = control.rebinds.load(Ordering::Relaxed);
        if now != generation {
            // The old mappings are gone: replies to them go nowhere.
            for (_, (_, task)) in backs.drain() {
                task.abort();
            }
            generation = now;
        }
        let back = match backs.get(&client) {
            Some((b, _)) => b.clone(),
            None => {
                let bind: SocketAddr = if target.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" }
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
                let Ok(sock) = Relay::bind(bind).await else { continue };
                let sock = Arc::new(sock);
                control.counters.mappings.fetch_add(1, Ordering::Relaxed);
                let task = tokio::spawn(back_loop(sock.clone(), front.clone(), client, down.clone(), control.clone()));
                backs.insert(client, (sock.clone(), task));
                sock
            }
        };
        for range in datagrams {
            let packet = Packet { data: buf[range].to_vec(), socket: back.clone(), to: target, ecn: meta.ecn };
            if up.try_send(packet).is_err() {
                control.counters.queue_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn back_loop(
    back: Arc<Relay>,
    front: Arc<Relay>,
    client: SocketAddr,
    down: mpsc::Sender<Packet>,
    control: Arc<Control>,
) {
    let mut buf = back.buffer();
    loop {
        let Ok((meta, datagrams)) = back.recv(&mut buf).await else { return };
        control.counters.down_in.fetch_add(meta.len as u64, Ordering::Relaxed);
        for range in datagrams {
            let packet = Packet { data: buf[range].to_vec(), socket: front.clone(), to: client, ecn: meta.ecn };
            if down.try_send(packet).is_err() {
                control.counters.queue_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Scheduled {
    at: Instant,
    seq: u64,
    packet: Packet,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // A min-heap by delivery time.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// One direction: loss, a serialising bottleneck with a bounded queue, a propagation delay that
/// wanders within the profile's range (a new target every half second, as cells and load
/// change) with a little per-packet jitter, delivery in order unless reordering is asked for,
/// duplication, ECN marking if asked for; packets are delivered at their computed times.
async fn pipe(
    mut rx: mpsc::Receiver<Packet>,
    dir: Direction,
    profile: LinkProfile,
    opts: EmulatorOptions,
    control: Arc<Control>,
    mut rng: Rng,
) {
    let bps = match dir {
        Direction::Up => profile.uplink_bps,
        Direction::Down => profile.downlink_bps,
    }
    .max(1_000) as f64;
    let mut ge = LinkState::default();
    let mut heap: BinaryHeap<Scheduled> = BinaryHeap::new();
    let mut bottleneck_free = Instant::now();
    let mut seq = 0u64;
    let mut base_delay = links::one_way_delay_ms(&profile, &mut rng);
    let mut next_wander = Instant::now() + Duration::from_millis(500);
    let mut last_at = Instant::now();
    let spread = (profile.rtt_ms.1 - profile.rtt_ms.0) / 2.0;
    let mut codel = match opts.aqm {
        Aqm::CoDel { target, interval } => Some(CoDel::new(target, interval)),
        _ => None,
    };
    loop {
        let next = heap.peek().map(|s| s.at);
        tokio::select! {
            incoming = rx.recv() => {
                let Some(mut packet) = incoming else { return };
                let now = Instant::now();
                if packet.ecn.is_some() {
                    control.counters.ecn_capable.fetch_add(1, Ordering::Relaxed);
                }
                if !control.up() {
                    control.counters.blacked_out.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if ge.lose(&profile.loss, &mut rng) {
                    control.counters.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let queued = bottleneck_free.saturating_duration_since(now);
                let queued_bytes = queued.as_secs_f64() * bps / 8.0;
                if queued_bytes > profile.queue_bytes as f64 {
                    control.counters.queue_drops.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let congested = match (&mut codel, opts.aqm) {
                    (Some(c), _) => c.judge(bottleneck_free.max(now), queued, queued_bytes),
                    (None, Aqm::Step(above)) => queued > above && packet.ecn.is_some(),
                    _ => false,
                };
                if congested {
                    if packet.ecn.is_none() {
                        control.counters.queue_drops.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    packet.ecn = Some(EcnCodepoint::Ce);
                    control.counters.ce_marked.fetch_add(1, Ordering::Relaxed);
                }
                let serialise = Duration::from_secs_f64(packet.data.len() as f64 * 8.0 / bps);
                bottleneck_free = bottleneck_free.max(now) + serialise;
                if dir == Direction::Up {
                    let free = bottleneck_free.saturating_duration_since(control.origin).as_micros();
                    control.up_free_us.store(u64::try_from(free).unwrap_or(u64::MAX), Ordering::Relaxed);
                }
                if now >= next_wander {
                    base_delay = links::one_way_delay_ms(&profile, &mut rng);
                    next_wander = now + Duration::from_millis(500);
                }
                let jitter = spread * 0.05 * rng.next_f64();
                let delay = Duration::from_secs_f64((base_delay + jitter) / 1000.0);
                let mut at = bottleneck_free + delay;
                if opts.reorder > 0.0 && rng.next_f64() < opts.reorder {
                    // Held back: later datagrams overtake this one.
                    at += Duration::from_millis(5 + (rng.next_f64() * 20.0) as u64);
                } else {
                    at = at.max(last_at);
                    last_at = at;
                }
                if opts.duplicate > 0.0 && rng.next_f64() < opts.duplicate {
                    seq += 1;
                    let copy = Packet {
                        data: packet.data.clone(),
                        socket: packet.socket.clone(),
                        to: packet.to,
                        ecn: packet.ecn,
                    };
                    heap.push(Scheduled { at: at + Duration::from_millis(1), seq, packet: copy });
                }
                seq += 1;
                heap.push(Scheduled { at, seq, packet });
            }
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            } => {
                let now = Instant::now();
                while heap.peek().is_some_and(|s| s.at <= now) {
                    let Some(s) = heap.pop() else { break };
                    // A packet in flight when the link goes down is lost too.
                    if !control.up() {
                        control.counters.blacked_out.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if s.packet.socket.send(&s.packet.data, s.packet.to, s.packet.ecn).await.is_ok() {
                        let n = s.packet.data.len() as u64;
                        match dir {
                            Direction::Up => control.counters.up_out.fetch_add(n, Ordering::Relaxed),
                            Direction::Down => control.counters.down_out.fetch_add(n, Ordering::Relaxed),
                        };
                    }
                }
            }
        }
    }
}

async fn outage_schedule(control: Arc<Control>, profile: LinkProfile, mut rng: Rng) {
    loop {
        let up = links::up_s(&profile, &mut rng);
        tokio::time::sleep(Duration::from_secs_f64(up.min(86_400.0))).await;
        control.scheduled_up.store(false, Ordering::Relaxed);
        let down = links::outage_s(&profile, &mut rng);
        tracing::info!(profile = %profile.name, "link down for {down:.0} s");
        tokio::time::sleep(Duration::from_secs_f64(down.min(86_400.0))).await;
        control.scheduled_up.store(true, Ordering::Relaxed);
        tracing::info!(profile = %profile.name, "link up");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> LinkProfile {
        let mut p = links::profile("urban-4g").unwrap_or_else(|| unreachable!());
        p.loss = links::GilbertElliott::NONE;
        p.rtt_ms = (20.0, 20.0);
        p.uplink_bps = 8_000_000;
        p
    }

    #[tokio::test]
    async fn datagrams_cross_with_delay_and_replies_come_back() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 1500];
            while let Ok((n, from)) = echo.recv_from(&mut b).await {
                let _ = echo.send_to(&b[..n], from).await;
            }
        });
        let em = LinkEmulator::start("127.0.0.1:0".parse().unwrap(), echo_addr, fast(), EmulatorOptions::default())
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let start = Instant::now();
        client.send_to(b"ping", em.local_addr).await.unwrap();
        let mut b = [0u8; 16];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut b)).await.unwrap().unwrap();
        assert_eq!(&b[..n], b"ping");
        assert!(start.elapsed() >= Duration::from_millis(19), "a round trip takes the profile's RTT");
        em.set_up(false);
        client.send_to(b"lost", em.local_addr).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut b)).await.is_err());
        assert!(em.stats().blacked_out >= 1);
    }

    /// A sink behind a 1 Mbit/s (125 kB/s) uplink, and the emulator in front of it.
    async fn one_megabit_link() -> (UdpSocket, LinkEmulator) {
        let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = sink.local_addr().unwrap();
        let mut p = fast();
        p.uplink_bps = 1_000_000;
        let em = LinkEmulator::start("127.0.0.1:0".parse().unwrap(), sink_addr, p, EmulatorOptions::default())
            .await
            .unwrap();
        (sink, em)
    }

    /// Fifty datagrams of 1,000 bytes into the emulator at once.
    async fn send_burst(em: &LinkEmulator) {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..50 {
            client.send_to(&[7u8; 1000], em.local_addr).await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_bandwidth_cap_paces_a_burst() {
        let (sink, em) = one_megabit_link().await;
        send_burst(&em).await;
        let start = Instant::now();
        let mut got = 0;
        let mut b = [0u8; 2000];
        while got < 50 {
            tokio::time::timeout(Duration::from_secs(3), sink.recv_from(&mut b)).await.unwrap().unwrap();
            got += 1;
        }
        // 50 kB at 125 kB/s: about 400 ms. The pacing, not the exact figure, is what is checked.
        assert!(start.elapsed() >= Duration::from_millis(250), "{:?}", start.elapsed());
    }

    /// Sends `n` 1,000-byte datagrams numbered 0..n at once through a 1 Mbit/s link with `aqm`,
    /// the even ones ECT(0) and the odd ones not ECN-capable; returns each one's codepoint as
    /// the sink received it (`None` inside for not ECN-capable, outside for not received), by
    /// number, and the emulator's counters.
    async fn ecn_burst(aqm: Aqm, n: u8) -> (Vec<Option<Option<EcnCodepoint>>>, LinkStats) {
        let sink = Relay::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut p = fast();
        p.uplink_bps = 1_000_000;
        let opts = EmulatorOptions { aqm, ..EmulatorOptions::default() };
        let em =
            LinkEmulator::start("127.0.0.1:0".parse().unwrap(), sink.io.local_addr().unwrap(), p, opts).await.unwrap();
        let client = Relay::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        for i in 0..n {
            let ecn = (i % 2 == 0).then_some(EcnCodepoint::Ect0);
            client.send(&[i; 1000], em.local_addr, ecn).await.unwrap();
            if i % 10 == 9 {
                // Let the relay read (the test's runtime has one thread): a socket's buffer
                // holds about ninety such datagrams.
                tokio::task::yield_now().await;
            }
        }
        let mut got = vec![None; usize::from(n)];
        let mut seen = 0;
        let mut buf = sink.buffer();
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen + em.stats().queue_drops < u64::from(n) && Instant::now() < deadline {
            let Ok(read) = tokio::time::timeout(Duration::from_millis(200), sink.recv(&mut buf)).await else {
                continue;
            };
            let (meta, datagrams) = read.unwrap();
            for r in datagrams {
                got[usize::from(buf[r.start])] = Some(meta.ecn);
                seen += 1;
            }
        }
        (got, em.stats())
    }

    #[tokio::test]
    async fn a_datagrams_ecn_codepoint_crosses_the_relay() {
        let (got, stats) = ecn_burst(Aqm::DropTail, 50).await;
        for (i, ecn) in got.iter().enumerate() {
            let sent = (i % 2 == 0).then_some(EcnCodepoint::Ect0);
            assert_eq!(*ecn, Some(sent), "datagram {i} arrives as it was sent");
        }
        assert_eq!((stats.ecn_capable, stats.ce_marked), (25, 0));
    }

    #[tokio::test]
    async fn a_marking_bottleneck_marks_the_ecn_capable_datagrams_that_would_wait_past_its_threshold() {
        // 20 ms at 125 kB/s is 2,500 bytes: the first three datagrams wait less.
        let (got, stats) = ecn_burst(Aqm::Step(Duration::from_millis(20)), 50).await;
        for (i, ecn) in got.iter().enumerate() {
            let expected = match (i % 2 == 0, i < 3) {
                (false, _) => None,
                (true, true) => Some(EcnCodepoint::Ect0),
                (true, false) => Some(EcnCodepoint::Ce),
            };
            assert_eq!(*ecn, Some(expected), "datagram {i}");
        }
        assert_eq!(stats.ce_marked, 23, "every ECN-capable datagram past the threshold, and only those");
        assert_eq!(stats.queue_drops, 0, "marked, not dropped");
    }

    #[tokio::test]
    async fn codel_lets_a_burst_wait_an_interval_then_marks_or_drops_ever_more_often() {
        // 100 kB at once on a 125 kB/s link: the last waits 800 ms. One datagram leaves every
        // 8 ms, so the waiting passes 5 ms at the second and CoDel acts from about the 14th.
        let (got, stats) = ecn_burst(Aqm::CODEL, 100).await;
        let signalled: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, None | Some(Some(EcnCodepoint::Ce))))
            .map(|(i, _)| i)
            .collect();
        assert!(signalled.first().is_some_and(|&i| i >= 12), "nothing within the first interval: {signalled:?}");
        for &i in &signalled {
            let expected = if i % 2 == 0 { Some(Some(EcnCodepoint::Ce)) } else { None };
            assert_eq!(got[i], expected, "datagram {i}: an ECN-capable one is marked, another dropped");
        }
        let marked = signalled.iter().filter(|&&i| i % 2 == 0).count() as u64;
        assert_eq!((stats.ce_marked, stats.queue_drops), (marked, signalled.len() as u64 - marked));
        // The control law: the interval over the square root of the count, so the gaps shrink
        // (100 ms, 71, 58, 50, ...): about eighteen signals in 800 ms, not one per interval.
        assert!((12..=24).contains(&signalled.len()), "{signalled:?}");
        let gaps: Vec<usize> = signalled.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.first() > gaps.last(), "the signals come closer together: {gaps:?}");
    }

    #[tokio::test]
    async fn the_uplink_queue_gauge_reads_what_waits_at_the_bottleneck() {
        let (sink, em) = one_megabit_link().await;
        let gauge = em.uplink_queue();
        assert_eq!(gauge.delay(), Duration::ZERO, "an idle link holds nothing");
        send_burst(&em).await;
        // The first datagram through means the burst has reached the bottleneck's queue.
        let mut b = [0u8; 2000];
        tokio::time::timeout(Duration::from_secs(3), sink.recv_from(&mut b)).await.unwrap().unwrap();
        let read_at = Instant::now();
        let queued = gauge.delay();
        let mut got = 1;
        while got < 50 {
            tokio::time::timeout(Duration::from_secs(3), sink.recv_from(&mut b)).await.unwrap().unwrap();
            got += 1;
        }
        let drained_after = read_at.elapsed();
        // 50 kB at 125 kB/s is 400 ms; the first datagram took 8 ms of it and 10 ms of path.
        assert!(queued >= Duration::from_millis(100), "the burst waits at the bottleneck: {queued:?}");
        assert!(
            drained_after >= queued,
            "the last datagram left no sooner than the gauge said: {drained_after:?} < {queued:?}"
        );
        assert_eq!(gauge.delay(), Duration::ZERO, "once all is delivered the queue is empty");
    }
}
