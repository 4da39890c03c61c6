//! Congestion control for radio links, and the photo chunk window.
//!
//! The links outpost runs over lose packets at random (a moving ambulance, a cell edge: 1-9%
//! on average, in bursts) and queue deeply before they drop (cellular buffers hold hundreds of
//! milliseconds). A loss-based controller (Cubic, NewReno) reads every random loss as
//! congestion and halves its window: on the field ladder it used 12-26% of the rural and
//! cell-edge links. quinn's BBR sizes its window from the smallest round trip seen, and on a
//! link whose round trip wanders (40-150 ms on an A-road) is held to half the link.
//!
//! [`Radio`] keeps NewReno's shape (slow start, additive increase, multiplicative decrease)
//! but decides from the queue whether a loss means congestion:
//! - the **queueing delay** is the smallest round trip of the last round less the base (the
//!   smallest of the last 45-90 s, below);
//! - a loss while the queue is short is the radio's: the window stays;
//! - a loss while the queue is long (over [`Radio::queue_limit`]), or more than 30% of a
//!   round's bytes lost (`HEAVY_LOSS`), is congestion: the window shrinks to 0.7 of itself, as
//!   Cubic's does, so that a competing loss-based flow keeps its share;
//! - so is a loss episode that loses more than 30% of the window, at once or as its losses
//!   are found one acknowledgement after another: slow start's last doubling overflowing a
//!   short buffer. Its first losses looked like the radio's, and the rest of the episode used
//!   to go unanswered: on a hospital network a Cubic flow beside three photos kept 35-38% of
//!   the link, and 41-50% since (49-53% beside Cubic photos). A radio's scattered losses
//!   never come near a third of a window in one episode, and what a dropout took (found lost
//!   just after acknowledgements come back from a silence) is no overflow;
//! - a buffer can hold less than the limit (42 ms at 50 Mbit/s with 256 KiB: a hospital
//!   network), and then the queue never passes it: once past slow start, a loss while the
//!   queue is within a fifth of its longest of the last ten seconds, when that is 10-50 ms
//!   (a radio link's round trip wanders by more), is the buffer overflowing, and congestion;
//! - a round whose acknowledgements report datagrams marked Congestion Experienced (ECN, from
//!   a router running CoDel, PIE or cake) is congestion whatever the queue looks like, as
//!   RFC 9002 asks of a sender that marks its packets ECN-capable (quinn always does): the
//!   window shrinks to 0.7 of itself, once a round, as Cubic's does, and for 30 s after a mark
//!   it grows as Cubic's does in its Reno-friendly region (0.53 packets a round trip, not 2).
//!   Unanswered, a CoDel queue's marks fell on the photos' neighbours alone: a Cubic flow
//!   beside them on the A-road kept 0.28x of what it keeps beside Cubic photos. Answered but
//!   regrown at 2 packets a round trip, the photos took twice the neighbour's share on urban
//!   4G (0.56x); regrown as Cubic's, 0.82x. Random loss stays the radio's on such a path;
//! - while the queue is long the window does not grow, and slow start ends;
//! - slow start also ends as soon as the last few acknowledgements show the queue past the
//!   limit, not a round later: a window that doubles each round overfills the bottleneck's
//!   buffer in that round (on an 8 Mbit/s link with a 256 KiB buffer, the window reached
//!   600 KB and a fifth of a round's packets were dropped). The window then goes back to what
//!   was in flight when those packets were sent (half of it), scaled down to put the queue at
//!   the limit;
//! - the base is the smallest round trip of the last 45-90 s, not of the last ten: while the
//!   photos hold a queue no sample comes below it, and a ten-second minimum took the photos' own
//!   queue into the base within ten seconds, so the queue grew past the limit on any long
//!   upload (37 to 188 ms of base over twelve photos on urban 4G). When no sample has come
//!   near the base for 40 s, a drain (as BBR's ProbeRTT) holds four packets in flight until a
//!   packet sent after the queue emptied is acknowledged: about a round trip and a half;
//! - persistent congestion (a blackout) restarts from the minimum window, with the slow-start
//!   threshold kept at 0.7 of the window before, so the link is refilled in a few round trips
//!   once it returns;
//! - while nothing is acknowledged for longer than twice the round trip (and 200 ms), one
//!   packet may go out every 100 ms beyond the window: QUIC's own probe timer backs off
//!   exponentially in a blackout (a 3 s blackout cost 7 s of a call's audio), whereas these
//!   find the link within 100 ms of its return. A call's audio (a frame every 20 ms) or a
//!   transfer's data is what they carry; they cost at most 12 kB/s of a dead link.
//!
//! - while the daemon carries a call's audio as a party (a paramedic's tablet, a consultant's
//!   desk: [`CallAudio`], counted per daemon), the queue is held near [`CALL_QUEUE`] instead:
//!   the call's frames go up the same link, on the same connection and under the same window,
//!   behind whatever the photos queued, and a desk's jitter buffer (60 ms) takes a frame later
//!   than that for lost. Photos attached mid-call on urban 4G queued 150 ms and more in front
//!   of the audio: the consultant heard 1.9-2.6% of the call lost, MOS 3.5-3.7 (4.2 without
//!   them). Past slow start, a round whose smallest round trip shows more queue than that
//!   takes the window towards what would put the queue at it, by an eighth at most (a larger
//!   cut stops all sending, the call's frames with it, until what is in flight comes down to
//!   it), never below what the fastest round of the last ten seconds delivers over the
//!   shortest round trip of those ten seconds (on a path whose round trip wanders, its wander
//!   reads as queue round after round); slow start ends at it; once nothing has gone out for
//!   15 ms, one packet may go out beyond the window (one at a time), for frames held by
//!   acknowledgements that come in bursts; and the queue the controller holds is not taken
//!   for a shallow buffer's ceiling. Random loss stays the radio's. The photos take less of a
//!   wandering link for the call's length (the A-road's wander reads as queue).
//!
//! Pacing stays quinn's (the window over the smoothed round trip, times 1.25).

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};

/// The environment variable choosing the congestion controller (`radio`, `cubic` or `bbr`).
pub const CONGESTION_ENV: &str = "OUTPOST_CONGESTION";

/// The congestion controllers a node can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// [`Radio`], the default.
    Radio,
    /// quinn's Cubic.
    Cubic,
    /// quinn's experimental BBR.
    Bbr,
}

impl Congestion {
    /// Every controller, in the order benchmarks print them.
    pub const ALL: [Congestion; 3] = [Congestion::Radio, Congestion::Cubic, Congestion::Bbr];

    /// Its name, as `OUTPOST_CONGESTION` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Radio => "radio",
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
        }
    }

    /// Parses a name (case-insensitive).
    pub fn parse(s: &str) -> Option<Congestion> {
        Congestion::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(c: u8) -> Option<Congestion> {
        Congestion::ALL.into_iter().find(|x| x.code() == c)
    }

    /// The controller factory for quinn's transport configuration, for connections of a
    /// daemon that counts the calls it carries in `calls`.
    pub fn factory(self, calls: CallsCarried) -> Arc<dyn ControllerFactory + Send + Sync> {
        match self {
            Congestion::Radio => Arc::new(RadioConfig { calls }),
            Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        }
    }
}

static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// Chooses the controller of every connection made from now on in this process (benchmarks
/// compare them in one run); without it, `OUTPOST_CONGESTION` decides, and [`Congestion::Radio`]
/// when that is unset or unknown.
pub fn set_congestion(c: Congestion) {
    CHOSEN.store(c.code(), Ordering::Relaxed);
}

/// The controller new connections use.
pub fn congestion() -> Congestion {
    if let Some(c) = Congestion::from_code(CHOSEN.load(Ordering::Relaxed)) {
        return c;
    }
    match std::env::var(CONGESTION_ENV) {
        Ok(v) => Congestion::parse(&v).unwrap_or_else(|| {
            tracing::warn!("{CONGESTION_ENV}={v:?} is not one of radio, cubic, bbr: using radio");
            Congestion::Radio
        }),
        Err(_) => Congestion::Radio,
    }
}

/// The queue a [`Radio`] keeps at most while this process carries a call's audio: a third of
/// the desk's 60 ms jitter buffer, the rest left to the path's own jitter and wander.
pub const CALL_QUEUE: Duration = Duration::from_millis(20);
/// The most a window is cut by at once for a call's sake ([`Radio::cut_for_call`]).
const CALL_CUT: f64 = 0.875;
/// While a call's audio is carried, a packet may go out beyond the window once nothing has
/// gone out for this long (and no other such packet is unacknowledged): the call's frames
/// (one every 20 ms) go out under the same window as the photos, and on a path whose
/// acknowledgements come in bursts a full window held them back for tens of milliseconds.
const CALL_GAP: Duration = Duration::from_millis(15);

/// Calls whose audio a daemon carries as a party, now: one counter per daemon, handed to every
/// connection's [`Radio`] through [`Congestion::factory`].
pub type CallsCarried = Arc<AtomicU32>;

/// The daemon carries a call's audio while one of these lives: every connection's [`Radio`]
/// then keeps its queue near [`CALL_QUEUE`] (the module documentation says how and why).
#[derive(Debug)]
pub struct CallAudio(CallsCarried);

impl CallAudio {
    /// The call's audio starts, counted in `calls`.
    pub fn start(calls: &CallsCarried) -> CallAudio {
        calls.fetch_add(1, Ordering::Relaxed);
        CallAudio(calls.clone())
    }
}

impl Drop for CallAudio {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Builds [`Radio`] controllers.
#[derive(Debug, Clone, Default)]
pub struct RadioConfig {
    /// The calls the daemon carries.
    pub calls: CallsCarried,
}

impl ControllerFactory for RadioConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Radio::new(now, current_mtu, self.calls.clone()))
    }
}

/// The smallest (or largest) value (a duration, a rate) over a sliding window, kept in two
/// halves.
#[derive(Debug, Clone, Copy)]
struct Windowed<T> {
    span: Duration,
    largest: bool,
    current: Option<(Instant, T)>,
    previous: Option<T>,
}

impl<T: Copy + PartialOrd> Windowed<T> {
    fn min(span: Duration) -> Self {
        Windowed { span, largest: false, current: None, previous: None }
    }

    fn max(span: Duration) -> Self {
        Windowed { span, largest: true, current: None, previous: None }
    }

    fn pick(&self, a: T, b: T) -> T {
        if (self.largest && a >= b) || (!self.largest && a <= b) { a } else { b }
    }

    fn update(&mut self, now: Instant, sample: T) {
        match self.current {
            Some((start, kept)) if now.saturating_duration_since(start) < self.span / 2 => {
                self.current = Some((start, self.pick(kept, sample)));
            }
            Some((_, kept)) => {
                self.previous = Some(kept);
                self.current = Some((now, sample));
            }
            None => self.current = Some((now, sample)),
        }
    }

    fn get(&self) -> Option<T> {
        match (self.current, self.previous) {
            (Some((_, a)), Some(b)) => Some(self.pick(a, b)),
            (Some((_, a)), None) => Some(a),
            (None, b) => b,
        }
    }
}

/// A loss-tolerant NewReno for radio links: see the module documentation.
#[derive(Debug, Clone)]
pub struct Radio {
    mtu: u64,
    window: u64,
    ssthresh: u64,
    /// Packets sent before this belong to the loss episode already answered.
    recovery_start: Option<Instant>,
    /// The episode under way, if it was answered as the radio's: the window then, and the bytes
    /// it has lost so far.
    radio_episode: Option<(u64, u64)>,
    base_rtt: Windowed<Duration>,
    /// The smallest sample of the round under way, and when the round ends.
    round_min: Option<Duration>,
    round_end: Option<Instant>,
    /// The smallest sample of the last complete round.
    standing_rtt: Option<Duration>,
    /// The longest queue of a complete round (its smallest sample less the base) over ten
    /// seconds: the bottleneck's buffer, when that is what holds the queue down.
    ceiling: Windowed<Duration>,
    round_acked: u64,
    round_lost: u64,
    last_round_loss: f64,
    congested_episodes: u64,
    radio_episodes: u64,
    /// When an acknowledgement last came (or the controller was made).
    last_ack: Instant,
    /// When acknowledgements last came back after a silence (a dropout, a blackout).
    silence_ended: Option<Instant>,
    /// When a packet last went out.
    last_sent: Option<Instant>,
    /// The last few round-trip samples, newest at `recent_at` (zero until as many came).
    recent: [Duration; RECENT],
    recent_at: usize,
    /// Bytes in flight at the last acknowledgement plus every packet sent since (an upper
    /// bound of quinn's count, which ack-only packets do not enter).
    in_flight: u64,
    srtt: Duration,
    /// When a sample last came within [`BASE_SLACK`] of the base round trip.
    base_seen: Instant,
    /// A drain under way: when it began, and from when the packets sent go out behind an
    /// empty queue (their round trips are the path's).
    drain: Option<(Instant, Instant)>,
    /// When an acknowledgement last reported marks.
    marked_at: Option<Instant>,
    /// How many calls' audio the daemon carries.
    calls: CallsCarried,
    /// When the window was last brought down for a call's sake.
    call_cut: Option<Instant>,
    /// When the round under way began.
    round_start: Option<Instant>,
    /// The fastest delivery rate of a complete round (bytes acknowledged over its length, bytes
    /// a second) over the last ten seconds, and the smallest of those rounds' smallest round
    /// trips: the window that would carry the one over the other holds no queue.
    fastest: Windowed<f64>,
    shortest: Windowed<Duration>,
}

/// How often a packet may go out beyond the window while the link is silent.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// The shortest silence taken for a blackout.
const MIN_SILENCE: Duration = Duration::from_millis(200);

const INITIAL_PACKETS: u64 = 10;
const MIN_PACKETS: u64 = 2;
/// The window after congestion, as a share of the window before (Cubic's beta).
const BETA: f64 = 0.7;
/// Packets a round trip that a window shrinking to [`BETA`] of itself must grow by to share a
/// link with NewReno (Cubic's "TCP-friendly" rate): 3 (1 - beta) / (1 + beta).
const FRIENDLY: f64 = 3.0 * (1.0 - BETA) / (1.0 + BETA);
/// How long after its last mark a path is taken to be a marking one.
const MARKING_PATH: Duration = Duration::from_secs(30);

/// A round that lost more than this share of its bytes, or a loss episode more than this share
/// of the window, is congested, whatever the queue (a shallow buffer that drops before it
/// delays). A cell edge's bad spells lose 20%.
const HEAVY_LOSS: f64 = 0.3;
/// How many of the last round-trip samples must all show the queue past the limit to end slow
/// start (one late acknowledgement is not a queue).
const RECENT: usize = 4;
/// The shortest queue taken for a buffer's ceiling ([`Radio::at_buffer_ceiling`]): less is a
/// round trip's own jitter.
const MIN_CEILING: Duration = Duration::from_millis(10);
/// The longest: a radio link's round trip wanders by more than this (an A-road's 40-150 ms, a
/// cell edge's 150-500 ms), and the peaks of its wander are no buffer's ceiling.
const MAX_CEILING: Duration = Duration::from_millis(50);

/// How long the base round trip is remembered: its smallest sample is kept for at least half
/// of this, and at most all of it.
const BASE_SPAN: Duration = Duration::from_secs(90);
/// A drain comes when no sample has come near the base for this long (under half of
/// [`BASE_SPAN`], so the base is never forgotten in between).
const DRAIN_EVERY: Duration = Duration::from_secs(40);
/// The window while draining.
const DRAIN_PACKETS: u64 = 4;
/// How near the base a sample must come to show the queue empty (and a drain unneeded).
const BASE_SLACK: f64 = 1.1;

impl Radio {
    /// A controller for a path of this MTU, on a connection of a daemon that counts the calls
    /// it carries in `calls`.
    pub fn new(now: Instant, mtu: u16, calls: CallsCarried) -> Self {
        let mtu = u64::from(mtu);
        Radio {
            mtu,
            window: INITIAL_PACKETS * mtu,
            ssthresh: u64::MAX,
            recovery_start: None,
            radio_episode: None,
            base_rtt: Windowed::min(BASE_SPAN),
            round_min: None,
            round_end: None,
            standing_rtt: None,
            ceiling: Windowed::max(Duration::from_secs(10)),
            round_acked: 0,
            round_lost: 0,
            last_round_loss: 0.0,
            congested_episodes: 0,
            radio_episodes: 0,
            last_ack: now,
            silence_ended: None,
            last_sent: None,
            recent: [Duration::ZERO; RECENT],
            recent_at: 0,
            in_flight: 0,
            srtt: Duration::from_millis(333),
            base_seen: now,
            drain: None,
            marked_at: None,
            calls,
            call_cut: None,
            round_start: None,
            fastest: Windowed::max(Duration::from_secs(10)),
            shortest: Windowed::min(Duration::from_secs(10)),
        }
    }

    /// Whether a call's audio shares this process's links now.
    fn call_carried(&self) -> bool {
        self.calls.load(Ordering::Relaxed) > 0
    }

    /// The queueing delay at which slow start ends: [`Radio::queue_limit`], or [`CALL_QUEUE`]
    /// while a call's audio is carried (whether a loss is congestion stays with the limit).
    fn slow_start_limit(&self, base: Duration) -> Duration {
        if self.call_carried() { CALL_QUEUE } else { Radio::queue_limit(base) }
    }

    /// The window at `now`: [`Controller::window`] reads the clock.
    fn window_at(&self, now: Instant) -> u64 {
        let window = if self.drain.is_some() { self.window.min(DRAIN_PACKETS * self.mtu) } else { self.window };
        let silence = now.saturating_duration_since(self.last_ack);
        let probe_due = self.last_sent.is_none_or(|t| now.saturating_duration_since(t) >= PROBE_EVERY);
        if silence > (self.srtt * 2).max(MIN_SILENCE) && probe_due {
            // quinn sends while in flight + packet < window: room for one more full packet (a
            // drain's four packets may be what the blackout took).
            window.max(self.in_flight + 2 * self.mtu + 1)
        } else if self.call_carried()
            && self.in_flight <= window + self.mtu
            && self.last_sent.is_none_or(|t| now.saturating_duration_since(t) >= CALL_GAP)
        {
            // One packet beyond the window for the call's frames, one at a time: while it is
            // unacknowledged no other goes (a slow link or a dead one is not filled this way).
            // quinn asks again for each packet of a batch before it reports any as sent, and
            // counts the batch's last packet as room taken: room for exactly one.
            window.max(self.in_flight + self.mtu + 1)
        } else {
            window
        }
    }

    fn min_window(&self) -> u64 {
        MIN_PACKETS * self.mtu
    }

    /// The queueing delay beyond which a loss is taken for congestion: three times the base
    /// round trip, and at least 150 ms. A radio link's round trip wanders by that much unloaded
    /// (40 to 150 ms on an A-road, 150 to 500 ms at a cell's edge: up to 3.75 times its least),
    /// and the window must cover the longest to keep the link full. Twice the base fell 50 ms
    /// short at the cell's edge. A competing loss-based flow fills the bottleneck's buffer (half
    /// a second on these links) far beyond it.
    pub fn queue_limit(base: Duration) -> Duration {
        (base * 3).max(Duration::from_millis(150))
    }

    /// The queueing delay now, if known.
    fn queue_delay(&self) -> Option<Duration> {
        let base = self.base_rtt.get()?;
        let standing = self.standing_rtt.or(self.round_min)?;
        Some(standing.saturating_sub(base))
    }

    fn queue_long(&self) -> bool {
        match (self.queue_delay(), self.base_rtt.get()) {
            (Some(q), Some(base)) => q > Radio::queue_limit(base),
            _ => false,
        }
    }

    /// Whether the queue is at a ceiling that the bottleneck's buffer sets below the limit: the
    /// longest queue of the last ten seconds is 10-50 ms and under half the limit, and the
    /// queue is within a fifth of it. A buffer that holds less than the limit (42 ms on a
    /// 50 Mbit/s hospital network with 256 KiB of buffer) drops packets before the queue can
    /// pass the limit, so without this every loss there would be read as the radio's and a
    /// loss-based flow beside the photos would be the only one to yield. On the radio links
    /// the photos' own queue reaches the limit in congestion avoidance, the longest queue is
    /// then over half of it, and this never holds.
    fn at_buffer_ceiling(&self) -> bool {
        let (Some(q), Some(base), Some(ceiling)) = (self.queue_delay(), self.base_rtt.get(), self.ceiling.get()) else {
            return false;
        };
        // While a call is carried the controller holds the queue near its target itself.
        !self.call_carried()
            && self.window >= self.ssthresh
            && ceiling >= MIN_CEILING
            && ceiling < (Radio::queue_limit(base) / 2).min(MAX_CEILING)
            && q.as_secs_f64() >= 0.8 * ceiling.as_secs_f64()
    }

    /// Slow start's window once the last few samples all show the queue past the limit: what
    /// was in flight when they were sent (half of the window, which doubled since), scaled to
    /// put the queue at the limit. `None` while the queue is within it.
    fn slow_start_overshoot(&self) -> Option<u64> {
        let base = self.base_rtt.get()?;
        // Zero while fewer samples came: no queue.
        let recent = self.recent.iter().copied().min()?;
        let limit = self.slow_start_limit(base);
        if recent.saturating_sub(base) <= limit {
            return None;
        }
        let aim = (base + limit).as_secs_f64() / recent.as_secs_f64();
        Some(((self.window as f64 / 2.0 * aim) as u64).max(self.min_window()))
    }

    /// Whether acknowledgements came back after a silence within the last round trip: what a
    /// dropout took is found lost then, and a dropout is no overflowing buffer (while a buffer
    /// overflows, the link goes on delivering and acknowledgements keep coming).
    fn after_silence(&self, now: Instant) -> bool {
        self.silence_ended.is_some_and(|t| now.saturating_duration_since(t) <= self.srtt)
    }

    /// A call's audio waits behind a queue longer than [`CALL_QUEUE`]: the window comes down
    /// towards what would put the queue at it (what is in flight is the rate times the round
    /// trip), by an eighth at most, once a round trip: a larger cut at once stops all sending
    /// until what is in flight comes down to it, and the call's frames, which go out under the
    /// same window, wait with the photos' packets.
    fn cut_for_call(&mut self, now: Instant) {
        if self.call_cut.is_some_and(|t| now.saturating_duration_since(t) < self.srtt) {
            return;
        }
        let (Some(base), Some(standing)) = (self.base_rtt.get(), self.standing_rtt.or(self.round_min)) else { return };
        let aim = (base + CALL_QUEUE).as_secs_f64() / standing.as_secs_f64().max(1e-6);
        // Never below what the fastest round of the last ten seconds delivers over the shortest
        // round trip of those ten seconds: a window that holds no queue when the path is at its
        // shortest. On a path whose round trip wanders (40-150 ms on an A-road), the wander
        // reads as queue in every round the path is long, and cut after cut took the window to
        // two packets, in which the call's own frames then waited. (Over the base round trip,
        // kept for 45-90 s, the floor would fall by itself on a path grown longer for good: a
        // window at it delivers less, and the fastest round is forgotten in ten seconds.)
        let floor = match (self.fastest.get(), self.shortest.get()) {
            (Some(rate), Some(rtt)) => ((rate * rtt.as_secs_f64()) as u64).min(self.window),
            _ => 0,
        };
        self.window = ((self.window as f64 * aim.clamp(CALL_CUT, 1.0)) as u64).max(floor).max(self.min_window());
        self.ssthresh = self.window;
        self.call_cut = Some(now);
    }

    /// A loss episode answered as congestion: the window shrinks as Cubic's would.
    fn congested(&mut self, now: Instant) {
        self.recovery_start = Some(now);
        self.window = ((self.window as f64 * BETA) as u64).max(self.min_window());
        self.ssthresh = self.window;
        self.congested_episodes += 1;
    }

    /// An acknowledgement reported datagrams sent up to `sent` marked Congestion Experienced:
    /// the bottleneck's own word that its queue is long, whatever the round trip shows. It is
    /// answered as Cubic answers it (RFC 9002, section 7: as a loss), once a round, so that a
    /// neighbour marked by the same queue does not yield alone.
    ///
    /// A loss episode answered as the radio's does not cover marks: they are answered within it.
    fn ecn_marked(&mut self, now: Instant, sent: Instant) {
        self.marked_at = Some(now);
        let answered = self.recovery_start.is_some_and(|r| sent <= r) && self.radio_episode.is_none();
        if !answered {
            self.radio_episode = None;
            self.congested(now);
        }
    }

    /// Loss episodes answered as congestion, and as radio loss (the window kept).
    pub fn episodes(&self) -> (u64, u64) {
        (self.congested_episodes, self.radio_episodes)
    }
}

impl Radio {
    /// An acknowledgement of `bytes` sent at `sent`, with the smoothed round trip `srtt`.
    fn acked(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, srtt: Duration) {
        if now.saturating_duration_since(self.last_ack) > (self.srtt * 2).max(MIN_SILENCE) {
            self.silence_ended = Some(now);
        }
        self.srtt = srtt;
        self.last_ack = now;
        let sample = now.saturating_duration_since(sent);
        if !sample.is_zero() {
            self.base_rtt.update(now, sample);
            if self.base_rtt.get().is_some_and(|b| sample.as_secs_f64() <= b.as_secs_f64() * BASE_SLACK) {
                self.base_seen = now;
            }
            self.round_min = Some(self.round_min.map_or(sample, |m| m.min(sample)));
            self.recent_at = (self.recent_at + 1) % RECENT;
            self.recent[self.recent_at] = sample;
        }
        self.round_acked += bytes;
        match self.round_end {
            Some(end) if now < end => {}
            _ => {
                if self.round_end.is_some() {
                    self.standing_rtt = self.round_min.take();
                    if let Some(standing) = self.standing_rtt {
                        self.shortest.update(now, standing);
                    }
                    // A queue held near the call's target is the controller's own doing, not a
                    // shallow buffer's ceiling: it does not count as one.
                    if let (Some(standing), Some(base), false) =
                        (self.standing_rtt, self.base_rtt.get(), self.call_carried())
                    {
                        self.ceiling.update(now, standing.saturating_sub(base));
                    }
                    if let Some(start) = self.round_start {
                        let secs = now.saturating_duration_since(start).as_secs_f64();
                        if secs > 0.0 {
                            self.fastest.update(now, self.round_acked as f64 / secs);
                        }
                    }
                    let total = self.round_acked + self.round_lost;
                    self.last_round_loss = if total == 0 { 0.0 } else { self.round_lost as f64 / total as f64 };
                    self.round_acked = 0;
                    self.round_lost = 0;
                }
                self.round_end = Some(now + srtt.max(Duration::from_millis(1)));
                self.round_start = Some(now);
            }
        }
        match self.drain {
            Some((_, from)) if sent >= from => {
                // This packet went out once the queue had drained: the base is fresh.
                self.drain = None;
                self.base_seen = now;
            }
            Some((start, _)) if now.saturating_duration_since(start) > self.srtt * 4 + Duration::from_secs(1) => {
                self.drain = None;
                self.base_seen = now;
            }
            Some(_) => return,
            None if self.window >= self.ssthresh && now.saturating_duration_since(self.base_seen) >= DRAIN_EVERY => {
                // The base may be the photos' own queue by now: let it drain. What is in flight
                // is acknowledged within a round trip; what is sent after that shows the path.
                self.drain = Some((now, now + self.srtt));
                return;
            }
            None => {}
        }
        if app_limited || self.recovery_start.is_some_and(|r| sent <= r) {
            return;
        }
        let long = self.queue_long();
        if self.window >= self.ssthresh && self.call_carried() && self.queue_delay().is_some_and(|q| q > CALL_QUEUE) {
            self.cut_for_call(now);
            return;
        }
        if self.window < self.ssthresh {
            if let Some(window) = self.slow_start_overshoot() {
                // The buffer is filling within this round: leave slow start now.
                self.window = window.min(self.window);
                self.ssthresh = self.window;
            } else if long {
                // The queue is building: slow start is over.
                self.ssthresh = self.window;
            } else {
                self.window += bytes;
            }
        } else if self.marked_at.is_some_and(|t| now.saturating_duration_since(t) < MARKING_PATH) {
            // The bottleneck's marks share it out: grow as Cubic does in its Reno-friendly
            // region, as a neighbour marked by the same queue grows.
            self.window += ((FRIENDLY * (self.mtu * bytes) as f64 / self.window.max(1) as f64) as u64).max(1);
        } else if !long {
            // Two packets per round trip: a radio link's window is refilled twice as fast as
            // NewReno's after a decrease (the decreases here are the rarer, congestion ones).
            self.window += (2 * self.mtu * bytes / self.window.max(1)).max(1);
        }
    }
}

impl Controller for Radio {
    fn on_sent(&mut self, now: Instant, bytes: u64, _last_packet_number: u64) {
        self.last_sent = Some(now);
        self.in_flight += bytes;
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, _app_limited: bool, _largest: Option<u64>) {
        self.in_flight = in_flight;
        self.last_ack = now;
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &quinn_proto::RttEstimator) {
        self.acked(now, sent, bytes, app_limited, rtt.get());
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        if lost_bytes == 0 && !is_persistent_congestion {
            // quinn's sign of an acknowledgement reporting datagrams marked Congestion
            // Experienced: the bottleneck's own word that its queue is long.
            self.ecn_marked(now, sent);
            return;
        }
        self.round_lost += lost_bytes;
        if is_persistent_congestion {
            // A blackout: start again from the minimum, but aim for most of where we were. Slow
            // start after it shows the path afresh: no drain needed.
            self.drain = None;
            self.radio_episode = None;
            self.base_seen = now;
            self.ssthresh = ((self.window as f64 * BETA) as u64).max(self.min_window());
            self.window = self.min_window();
            self.recovery_start = Some(now);
            self.congested_episodes += 1;
            return;
        }
        if self.recovery_start.is_some_and(|r| sent <= r) {
            // A loss episode answered as the radio's that goes on to lose a large share of
            // the window at once is a buffer overflowing after all (slow start's last doubling
            // on a short buffer), not a radio's scattered losses.
            let dropout = self.after_silence(now);
            if let Some((window, lost)) = self.radio_episode.as_mut() {
                *lost += lost_bytes;
                if *lost as f64 > HEAVY_LOSS * *window as f64 && !dropout {
                    self.radio_episode = None;
                    self.radio_episodes -= 1;
                    self.congested(now);
                }
            }
            return;
        }
        self.recovery_start = Some(now);
        self.radio_episode = None;
        if self.queue_long()
            || self.last_round_loss > HEAVY_LOSS
            || (lost_bytes as f64 > HEAVY_LOSS * self.window as f64 && !self.after_silence(now))
            || self.at_buffer_ceiling()
        {
            self.congested(now);
        } else {
            self.radio_episode = Some((self.window, lost_bytes));
            self.radio_episodes += 1;
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.window = self.window.max(self.min_window());
    }

    fn window(&self) -> u64 {
        self.window_at(Instant::now())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = self.window;
        m.ssthresh = (self.ssthresh != u64::MAX).then_some(self.ssthresh);
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        INITIAL_PACKETS * self.mtu
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1200;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Acknowledges `packets` packets spread over one round trip of `rtt` starting at `t`,
    /// each sent `rtt` before it is acknowledged; returns the time after the round.
    fn round(c: &mut Radio, t: Instant, packets: u64, rtt: Duration) -> Instant {
        for i in 0..packets {
            let now = t + rtt + rtt * (i as u32) / (packets as u32);
            c.acked(now, now - rtt, u64::from(MTU), false, rtt);
        }
        t + rtt * 2
    }

    /// A new controller after `rounds` rounds of `packets` packets at `rtt`, and the time then.
    fn warmed(rounds: usize, packets: u64, rtt: Duration) -> (Radio, Instant) {
        warmed_counting(rounds, packets, rtt, calls(0))
    }

    /// [`warmed`], with `calls` the calls carried.
    fn warmed_counting(rounds: usize, packets: u64, rtt: Duration, calls: CallsCarried) -> (Radio, Instant) {
        let t0 = Instant::now();
        let mut c = Radio::new(t0, MTU, calls);
        let mut t = t0;
        for _ in 0..rounds {
            t = round(&mut c, t, packets, rtt);
        }
        (c, t)
    }

    #[test]
    fn names_parse_back() {
        for c in Congestion::ALL {
            assert_eq!(Congestion::parse(c.as_str()), Some(c));
        }
        assert_eq!(Congestion::parse("BBR"), Some(Congestion::Bbr));
        assert_eq!(Congestion::parse("reno"), None);
    }

    #[test]
    fn a_loss_with_a_short_queue_keeps_the_window() {
        let (mut c, t) = warmed(4, 20, ms(60));
        let before = c.window();
        c.on_congestion_event(t, t - ms(30), false, u64::from(MTU));
        assert_eq!(c.window(), before, "random radio loss is not congestion");
        assert_eq!(c.episodes(), (0, 1));
        let t = round(&mut c, t, 20, ms(60));
        assert!(c.window() > before, "and the window keeps growing");
        let _ = t;
    }

    #[test]
    fn a_round_with_marks_is_congestion_though_the_queue_looks_short() {
        // Before: a mark (quinn reports one as a congestion event that lost no bytes) was read
        // as a radio's loss with the queue short, and a CoDel router's marks went unanswered
        // (the Cubic flow beside the photos kept 0.28x of its share on the A-road).
        let (mut c, t) = warmed(4, 20, ms(60));
        let before = c.window();
        c.on_congestion_event(t, t - ms(30), false, 0);
        assert_eq!(c.window(), (before as f64 * BETA) as u64, "answered as Cubic answers it");
        assert_eq!(c.episodes(), (1, 0));
        // More marks on packets sent before the decrease: the same round, answered already.
        c.on_congestion_event(t + ms(10), t - ms(5), false, 0);
        assert_eq!(c.window(), (before as f64 * BETA) as u64, "once a round");
        // A mark on a packet sent after it: the queue is still long, a round later.
        let after = c.window();
        c.on_congestion_event(t + ms(70), t + ms(5), false, 0);
        assert_eq!(c.window(), (after as f64 * BETA) as u64);
        assert_eq!(c.episodes(), (2, 0));
    }

    #[test]
    fn after_a_mark_the_window_grows_as_cubics_does() {
        let (mut c, t) = warmed(4, 20, ms(60));
        let w0 = c.window();
        let t = round(&mut c, t, 20, ms(60));
        let unmarked = c.window() - w0;
        assert!(unmarked >= 2 * u64::from(MTU) * 9 / 10, "two packets a round: {unmarked}");
        c.on_congestion_event(t, t - ms(30), false, 0);
        let w1 = c.window();
        // A round of packets sent after the decrease.
        let t = round(&mut c, t + ms(1), 20, ms(60));
        let marked = c.window() - w1;
        let friendly = (FRIENDLY * f64::from(MTU) * 20.0 * 1200.0 / w1 as f64) as u64;
        assert!(marked <= friendly + 20 && marked + 20 >= friendly, "{marked} against {friendly}");
        assert!(marked * 3 < unmarked, "a quarter of the growth: {marked} against {unmarked}");
        let _ = t;
    }

    #[test]
    fn a_mark_within_a_radio_loss_episode_is_still_answered() {
        let (mut c, t) = warmed(4, 20, ms(60));
        let before = c.window();
        c.on_congestion_event(t, t - ms(30), false, u64::from(MTU));
        assert_eq!(c.window(), before, "a radio's loss keeps the window");
        c.on_congestion_event(t + ms(10), t - ms(20), false, 0);
        assert_eq!(c.window(), (before as f64 * BETA) as u64, "the mark of a packet of that round is not");
    }

    #[test]
    fn a_loss_with_a_long_queue_shrinks_the_window_as_cubic_would() {
        let (mut c, mut t) = warmed(4, 20, ms(60));
        // The queue grows: round trips of 60 + 300 ms.
        for _ in 0..3 {
            t = round(&mut c, t, 20, ms(360));
        }
        let before = c.window();
        c.on_congestion_event(t, t - ms(10), false, u64::from(MTU));
        assert_eq!(c.window(), (before as f64 * BETA) as u64);
        assert_eq!(c.episodes(), (1, 0));
        // A second loss of the same episode (sent before the decrease) changes nothing more.
        c.on_congestion_event(t + ms(5), t - ms(20), false, u64::from(MTU));
        assert_eq!(c.episodes(), (1, 0));
    }

    #[test]
    fn a_long_queue_stops_growth_and_slow_start() {
        let t0 = Instant::now();
        let mut c = Radio::new(t0, MTU, calls(0));
        let mut t = round(&mut c, t0, 10, ms(50));
        assert!(c.window() > c.initial_window(), "slow start grows while the queue is short");
        for _ in 0..3 {
            t = round(&mut c, t, 10, ms(400));
        }
        let held = c.window();
        t = round(&mut c, t, 10, ms(400));
        assert_eq!(c.window(), held, "no growth while the queue is long");
        assert_eq!(c.metrics().ssthresh, Some(c.ssthresh));
        let _ = t;
    }

    #[test]
    fn slow_start_ends_within_the_round_the_queue_passes_the_limit() {
        let (mut c, t) = warmed(3, 20, ms(50));
        assert_eq!(c.ssthresh, u64::MAX, "a short queue leaves slow start running");
        // The next round's acknowledgements come back ever later: 50 ms of path plus a queue
        // that grows by 10 ms a packet.
        let mut exit = None;
        for i in 0..30u32 {
            let rtt = ms(50) + ms(10) * i;
            let now = t + ms(50) + ms(5) * i;
            let before = c.window;
            c.acked(now, now - rtt, u64::from(MTU), false, ms(50));
            if exit.is_none() && c.ssthresh != u64::MAX {
                exit = Some((i, before, c.window));
            }
        }
        // Limit 150 ms: the samples pass 200 ms from the 16th (210 ms); the fourth is the 19th.
        let (i, before, after) = exit.expect("slow start ended");
        assert_eq!(i, 19, "slow start ends as the fourth sample past the limit comes");
        // Half the window (what was in flight when those packets went), times 200 ms over the
        // smallest of the four (210 ms).
        assert_eq!(after, (before as f64 / 2.0 * 200.0 / 210.0) as u64);
        let held = c.window;
        let _ = round(&mut c, t + ms(300), 10, ms(400));
        assert_eq!(c.window, held, "no growth while the queue is long");
    }

    #[test]
    fn one_late_acknowledgement_does_not_end_slow_start() {
        let (mut c, t) = warmed(3, 20, ms(50));
        for i in 0..10u32 {
            let rtt = if i == 4 { ms(600) } else { ms(50) };
            let now = t + ms(50) + ms(5) * i;
            c.acked(now, now - rtt, u64::from(MTU), false, ms(50));
        }
        assert_eq!(c.ssthresh, u64::MAX);
    }

    #[test]
    fn heavy_loss_is_congestion_even_without_a_queue() {
        let (mut c, t) = warmed(3, 20, ms(60));
        // Half of a round's packets lost, no queue: the first loss is taken for the radio's...
        c.on_congestion_event(t, t - ms(1), false, 20 * u64::from(MTU));
        assert_eq!(c.episodes(), (0, 1));
        let t = round(&mut c, t, 20, ms(60));
        // ...but once the round is seen whole, a loss is congestion.
        let before = c.window();
        c.on_congestion_event(t, t - ms(1), false, u64::from(MTU));
        assert!(c.window() < before, "{} -> {} ({:?})", before, c.window(), c.episodes());
    }

    #[test]
    fn a_loss_episode_that_goes_on_to_lose_a_third_of_the_window_is_congestion() {
        // Slow start's last doubling on a short buffer (a hospital network): the first losses
        // detected look like the radio's, then the rest of the overflow is found lost.
        let (mut c, t) = warmed(4, 20, ms(10));
        let before = c.window();
        let sent = t - ms(5);
        c.on_congestion_event(t, sent, false, 2 * u64::from(MTU));
        assert_eq!((c.window(), c.episodes()), (before, (0, 1)), "a few packets: the radio's");
        let mut lost = 2 * u64::from(MTU);
        let mut now = t;
        while lost as f64 <= HEAVY_LOSS * before as f64 {
            now += ms(1);
            c.on_congestion_event(now, sent, false, 4 * u64::from(MTU));
            lost += 4 * u64::from(MTU);
        }
        assert_eq!(c.window(), (before as f64 * BETA) as u64, "{:?}", c.episodes());
        assert_eq!(c.ssthresh, c.window(), "slow start is over");
        assert_eq!(c.episodes(), (1, 0), "one episode, answered once, as congestion");
        // The rest of the episode changes nothing more.
        let after = c.window();
        c.on_congestion_event(now + ms(1), sent, false, 4 * u64::from(MTU));
        assert_eq!(c.window(), after);
    }

    #[test]
    fn a_radios_scattered_losses_within_an_episode_keep_the_window() {
        // A cell edge's bad spell: a packet here and there, a tenth of the window in all.
        let (mut c, t) = warmed(4, 20, ms(300));
        let before = c.window();
        let sent = t - ms(100);
        let mut lost = 0;
        let mut now = t;
        while (lost as f64) < 0.1 * before as f64 {
            c.on_congestion_event(now, sent, false, u64::from(MTU));
            lost += u64::from(MTU);
            now += ms(20);
        }
        assert_eq!((c.window(), c.episodes()), (before, (0, 1)));
    }

    #[test]
    fn losing_a_third_of_the_window_at_once_is_congestion() {
        let (mut c, t) = warmed(4, 20, ms(60));
        let before = c.window();
        c.on_congestion_event(t, t - ms(5), false, before / 2);
        assert_eq!((c.window(), c.episodes()), ((before as f64 * BETA) as u64, (1, 0)));
    }

    #[test]
    fn a_dropout_that_took_the_whole_window_is_not_congestion() {
        // Half a second without acknowledgements (a handover, a bridge), too short for QUIC to
        // call it persistent congestion; then the link is back and the window is found lost.
        let (mut c, t) = warmed(4, 20, ms(60));
        let back = t + ms(500);
        c.acked(back, back - ms(60), u64::from(MTU), false, ms(60));
        let before = c.window();
        c.on_congestion_event(back, t - ms(10), false, before);
        assert_eq!((c.window(), c.episodes()), (before, (0, 1)));
    }

    #[test]
    fn a_blackout_restarts_from_the_minimum_aiming_at_most_of_the_old_window() {
        let (mut c, t) = warmed(5, 30, ms(60));
        let before = c.window();
        c.on_congestion_event(t, t - ms(1), true, 0);
        assert_eq!(c.window(), 2 * u64::from(MTU));
        assert_eq!(c.ssthresh, (before as f64 * BETA) as u64);
    }

    /// A controller past slow start on a path of `base`, then `rounds` rounds at `rtt` (every
    /// twentieth at the base: the queue drains now and then).
    fn settled(base: u64, rounds: usize, rtt: u64) -> (Radio, Instant) {
        settled_counting(base, rounds, rtt, calls(0))
    }

    /// [`settled`], with `calls` the calls carried.
    fn settled_counting(base: u64, rounds: usize, rtt: u64, calls: CallsCarried) -> (Radio, Instant) {
        let (mut c, mut t) = warmed_counting(3, 20, ms(base), calls);
        // A queue past the limit ends slow start.
        let past = base + Radio::queue_limit(ms(base)).as_millis() as u64 + 100;
        for _ in 0..2 {
            t = round(&mut c, t, 20, ms(past));
        }
        assert_ne!(c.ssthresh, u64::MAX, "slow start is over");
        for i in 0..rounds {
            t = round(&mut c, t, 20, ms(if i % 20 == 10 { base } else { rtt }));
        }
        (c, t)
    }

    #[test]
    fn a_loss_at_a_shallow_buffers_ceiling_is_congestion() {
        // A 10 ms wired path whose buffer holds 42 ms: the queue can never pass the 150 ms
        // limit. Ten seconds on, slow start's long queue is forgotten and the queue sits at the
        // buffer's ceiling.
        let (mut c, t) = settled(10, 120, 52);
        assert!(!c.queue_long(), "the queue is under the limit");
        let before = c.window();
        c.on_congestion_event(t, t - ms(1), false, u64::from(MTU));
        assert_eq!(c.window(), (before as f64 * BETA) as u64, "{:?}", c.episodes());
        assert_eq!(c.episodes(), (1, 0));
        // Below the ceiling a loss is the link's again.
        let t = round(&mut c, t, 20, ms(30));
        let t = round(&mut c, t, 20, ms(30));
        let before = c.window();
        c.on_congestion_event(t, t - ms(1), false, u64::from(MTU));
        assert_eq!(c.window(), before);
        assert_eq!(c.episodes(), (1, 1));
    }

    /// Asserts that a loss after [`settled`]`(base, 120, rtt)` keeps the window (the queue
    /// under the limit).
    fn assert_a_loss_is_the_radios(base: u64, rtt: u64) {
        let (mut c, t) = settled(base, 120, rtt);
        assert!(!c.queue_long());
        let before = c.window();
        c.on_congestion_event(t, t - ms(1), false, u64::from(MTU));
        assert_eq!(c.window(), before, "{:?}", c.episodes());
        assert_eq!(c.episodes(), (0, 1));
    }

    #[test]
    fn a_loss_at_the_longest_queue_of_a_radio_link_is_still_the_radios() {
        // A 40 ms radio path: the photos' own queue reaches 100 ms, two thirds of the limit.
        assert_a_loss_is_the_radios(40, 140);
    }

    #[test]
    fn a_loss_at_the_peak_of_a_cell_edges_wander_is_still_the_radios() {
        // A 150 ms path whose round trip swings to 250 ms: its peaks are 100 ms over the base,
        // under half the 450 ms limit, but more than a buffer's ceiling is taken to be.
        assert_a_loss_is_the_radios(150, 250);
    }

    #[test]
    fn a_loss_at_a_cell_edges_longest_round_trip_is_still_the_radios() {
        // 150 to 500 ms unloaded: the queue seen at the top of the range is the path's wander,
        // 350 ms over the base (twice the base, the limit before, took it for congestion).
        assert_a_loss_is_the_radios(150, 500);
    }

    /// Holds the round trip at `rtt` (the photos' own queue on a path of `path`) until `until`;
    /// a drain, when one comes, empties that queue: the first packet sent once it has drained
    /// comes back after the path's round trip. Returns the time then and the drains seen.
    fn hold_queue(c: &mut Radio, mut t: Instant, until: Instant, rtt: u64, path: u64) -> (Instant, u32) {
        let mut drains = 0;
        while t < until {
            match c.drain {
                Some((_, from)) => {
                    assert_eq!(c.window_at(t), DRAIN_PACKETS * u64::from(MTU), "a drain leaves four packets in flight");
                    drains += 1;
                    let sent = from.max(t);
                    t = sent + ms(path);
                    c.acked(t, sent, u64::from(MTU), false, ms(rtt));
                    assert!(c.drain.is_none(), "a packet sent after the queue drained ends the drain");
                }
                None => t = round(c, t, 20, ms(rtt)),
            }
        }
        (t, drains)
    }

    #[test]
    fn over_a_long_upload_the_base_stays_the_paths_not_the_photos_own_queue() {
        // A 40 ms path, and the photos holding 160 ms of queue on it (past the 150 ms limit).
        let (mut c, t) = settled(40, 0, 40);
        let (t, _) = hold_queue(&mut c, t, t + ms(5_000), 200, 40);
        assert!(c.queue_long(), "the queue is past the limit");
        let window = c.window;
        let (t, drains) = hold_queue(&mut c, t, t + ms(120_000), 200, 40);
        assert_eq!(c.base_rtt.get(), Some(ms(40)), "two minutes on, the base is still the path's");
        assert!(c.queue_long(), "and the queue is still seen for what it is");
        // Each drain's round at the base lets the window grow by a couple of packets; a base
        // that crept up to the queue would have let it grow every round.
        let grown = (c.window - window) / u64::from(MTU);
        assert!(grown <= 3 * u64::from(drains), "the window has not grown into the queue: {grown} packets");
        assert!((2..=4).contains(&drains), "a drain every {DRAIN_EVERY:?} without a sample near the base: {drains}");
        // A link whose queue empties now and then needs no drain.
        let (_, drains) = hold_queue(&mut c, t, t + ms(120_000), 40, 40);
        assert_eq!(drains, 0);
    }

    #[test]
    fn a_blackout_during_a_drain_still_gets_a_packet_every_100_ms() {
        let (mut c, t) = settled(40, 0, 40);
        let mut t = t;
        while c.drain.is_none() {
            t = round(&mut c, t, 20, ms(200));
        }
        // The drain's four packets go out, and the link goes dark.
        c.on_end_acks(t, 4 * u64::from(MTU), false, None);
        c.on_sent(t, 1200, 1);
        assert!(c.window_at(t + ms(50)) <= c.in_flight, "a drain sends nothing more at first");
        assert!(c.window_at(t + ms(500)) > c.in_flight + u64::from(MTU), "but probes a silent link");
        c.on_congestion_event(t + ms(2_000), t, true, 4 * u64::from(MTU));
        assert!(c.drain.is_none(), "a blackout's restart ends the drain");
    }

    #[test]
    fn a_silent_link_gets_one_packet_every_100_ms_beyond_the_window() {
        let (mut c, t) = warmed(3, 10, ms(50));
        c.on_end_acks(t, 40_000, false, None);
        let cwnd = c.window;
        // The window is full and the link goes silent.
        c.on_sent(t, 1200, 1);
        assert_eq!(c.window_at(t + ms(50)), cwnd, "a short silence is not a blackout");
        let later = t + ms(300);
        let w = c.window_at(later);
        assert!(w > c.in_flight + u64::from(MTU), "one packet beyond the window: {w} for {} in flight", c.in_flight);
        c.on_sent(later, 1200, 2);
        assert_eq!(c.window_at(later + ms(20)), cwnd, "then nothing for 100 ms");
        assert!(c.window_at(later + ms(100)) > c.in_flight + u64::from(MTU), "and another after");
        // An acknowledgement ends the silence.
        c.on_end_acks(later + ms(150), 0, false, None);
        assert_eq!(c.window_at(later + ms(160)), c.window);
    }
    /// A counter of calls carried, as a daemon keeps one.
    fn calls(n: u32) -> CallsCarried {
        Arc::new(AtomicU32::new(n))
    }

    /// One round of a window-limited sender on a path of `rtt` with no queue: the window's
    /// worth of packets acknowledged over the round trip, without a break, each a round trip
    /// after it was sent.
    fn limited_round(c: &mut Radio, t: Instant, rtt: Duration) -> Instant {
        let packets = (c.window / u64::from(MTU)).max(1);
        for i in 0..packets {
            let now = t + rtt * (i as u32) / (packets as u32);
            c.acked(now, now - rtt, u64::from(MTU), false, rtt);
        }
        t + rtt
    }

    #[test]
    fn while_a_call_is_carried_a_queue_past_twenty_ms_brings_the_window_down_an_eighth_a_round() {
        // Photos past slow start on a 40 ms path, their queue at 60 ms: under the 150 ms limit,
        // so without a call the window keeps growing.
        let (mut alone, t) = settled_counting(40, 30, 100, calls(0));
        let before = alone.window;
        let t_alone = round(&mut alone, t, 20, ms(100));
        let _ = round(&mut alone, t_alone, 20, ms(100));
        assert!(alone.window > before, "no call: the window grows ({before} to {})", alone.window);

        // The same with a call's audio carried from now on: the next round's queue (60 ms, past
        // 20) takes an eighth off the window, though a 60 ms round trip would take 0.4 off.
        let with = calls(0);
        let (mut c, t) = settled_counting(40, 30, 100, with.clone());
        assert_eq!(c.window, before);
        with.store(1, Ordering::Relaxed);
        let mut t = round(&mut c, t, 20, ms(100));
        assert_eq!(c.window, (before as f64 * CALL_CUT) as u64, "an eighth off at most");
        // Round after round of it, the window comes down to what the fastest round delivers
        // over the base round trip, and stays there: never to the two packets that would hold
        // the call's own frames back.
        let mut seen = Vec::new();
        for _ in 0..40 {
            t = round(&mut c, t, 40, ms(100));
            seen.push(c.window);
        }
        assert!(seen[20..].iter().all(|w| *w == c.window), "the window stops at its floor: {seen:?}");
        assert!(c.window > 4 * u64::from(MTU), "{seen:?}");
        // The call ends: the window grows again, though the queue is the same.
        with.store(0, Ordering::Relaxed);
        let held = c.window;
        let t = round(&mut c, t, 20, ms(100));
        let _ = round(&mut c, t, 20, ms(100));
        assert!(c.window > held, "after the call the window grows again: {held} to {}", c.window);
    }

    #[test]
    fn while_a_call_is_carried_a_full_window_still_lets_one_packet_out_after_15_ms() {
        let with = calls(0);
        let (mut c, t) = warmed_counting(3, 20, ms(100), with.clone());
        let window = c.window;
        // The window is full: nothing more may go out.
        c.on_end_acks(t, window, false, None);
        c.on_sent(t, u64::from(MTU), 1);
        let in_flight = window + u64::from(MTU);
        assert_eq!(c.window_at(t + ms(16)), window, "no call: the window holds");
        with.store(1, Ordering::Relaxed);
        assert_eq!(c.window_at(t + ms(5)), window, "a packet went out 5 ms ago");
        // quinn sends while what is in flight plus the packet is under the window.
        let room = c.window_at(t + ms(16));
        assert!(room > in_flight + u64::from(MTU), "nothing for 16 ms: room for a packet");
        assert!(room <= in_flight + 2 * u64::from(MTU), "but for one only: {room}");
    }

    #[test]
    fn while_a_call_is_carried_the_packets_beyond_the_window_stay_few() {
        // Acknowledgements stop for most of two round trips (a slow link's, or a silence not
        // yet taken for a blackout, whose probes are counted elsewhere): the call's packet
        // every 15 ms must not fill the link regardless of the window.
        let (mut c, mut t) = warmed_counting(3, 20, ms(100), calls(1));
        let window = c.window;
        c.on_end_acks(t, window, false, None);
        for i in 0..12 {
            t += ms(16);
            if c.window_at(t) > c.in_flight + u64::from(MTU) {
                c.on_sent(t, u64::from(MTU), i);
            }
        }
        assert!(c.in_flight <= window + 2 * u64::from(MTU), "{} bytes beyond the window", c.in_flight - window);
    }

    #[test]
    fn while_a_call_is_carried_the_window_does_not_fall_on_a_path_grown_longer() {
        // A handover: the path's round trip goes from 40 to 80 ms for good, with no queue. The
        // 40 ms base is remembered for a minute and more, so every round reads 40 ms of queue,
        // and the window is cut to its floor: what the rounds deliver at 80 ms. Over the base
        // round trip the floor would halve every ten seconds as the fastest round is forgotten.
        let (mut c, mut t) = warmed_counting(3, 20, ms(40), calls(1));
        let mut at_start = 0;
        // 44 s in all, within the base's 45-90 s.
        for i in 0..550 {
            t = limited_round(&mut c, t, ms(80));
            if i == 200 {
                at_start = c.window;
            }
        }
        assert!(c.window > 4 * u64::from(MTU), "not down to the minimum: {}", c.window);
        assert!(c.window * 10 >= at_start * 9, "the floor held from {at_start} to {}", c.window);
    }

    #[test]
    fn while_a_call_is_carried_the_links_random_loss_is_still_the_radios() {
        // What holds the queue down during a call is the round trip, not loss: a radio link's
        // random loss taken for congestion would take the window to its minimum (1.6% of an
        // A-road's packets are lost), and the call's frames with it. Also in the call's steady
        // state, where the queue it holds (20-30 ms, for ten seconds) looks like a shallow
        // buffer's ceiling.
        for (rtt, label) in [(100, "as the call starts"), (62, "the call's own queue")] {
            let with = calls(0);
            let (mut c, t) = if rtt == 100 {
                let (c, t) = settled_counting(40, 120, rtt, with.clone());
                with.store(1, Ordering::Relaxed);
                (c, t)
            } else {
                with.store(1, Ordering::Relaxed);
                settled_counting(40, 120, rtt, with.clone())
            };
            let before = c.window;
            c.on_congestion_event(t, t - ms(1), false, u64::from(MTU));
            assert_eq!((c.window, c.episodes()), (before, (0, 1)), "{label}");
        }
    }

    #[test]
    fn while_a_call_is_carried_slow_start_ends_at_twenty_ms_of_queue() {
        // Photos attached mid-call start with a fresh window: slow start ends once the queue
        // passes 20 ms, not the 150 ms limit, with the window scaled to put it at 20 ms.
        let (mut c, t) = warmed_counting(3, 20, ms(50), calls(1));
        assert_eq!(c.ssthresh, u64::MAX, "a 0 ms queue leaves slow start running");
        let before = c.window;
        let _ = round(&mut c, t, 20, ms(80));
        assert_ne!(c.ssthresh, u64::MAX, "a 30 ms queue ends slow start while a call is carried");
        assert!(c.window <= before, "the window does not grow past it: {before} to {}", c.window);
        let (mut alone, t) = warmed(3, 20, ms(50));
        let _ = round(&mut alone, t, 20, ms(80));
        assert_eq!(alone.ssthresh, u64::MAX, "without a call, 30 ms of queue is no reason to stop");
    }

    #[test]
    fn a_call_carried_is_counted_until_its_audio_stops() {
        let counter = calls(0);
        let c = Radio::new(Instant::now(), MTU, counter.clone());
        let a = CallAudio::start(&counter);
        let b = CallAudio::start(&counter);
        assert_eq!(counter.load(Ordering::Relaxed), 2);
        assert!(c.call_carried());
        drop(a);
        assert!(c.call_carried(), "one call still under way");
        drop(b);
        assert_eq!(counter.load(Ordering::Relaxed), 0);
        assert!(!c.call_carried());
    }
}
