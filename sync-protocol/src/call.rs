//! Call escalation, without I/O: the state of a session's escalations read from its routing
//! log, the hub's routing policy as a pure function of that state, the rota, what each desk
//! holds, the measured path and the time, and the ITU-T G.107 E-model that judges whether the
//! requester's path can carry a call.
//!
//! The routing log (`/routing`, grow-only) records every step, so that every replica can tell
//! what happened and the decisions sync like any other change:
//!
//! | `kind` | written by | fields |
//! |---|---|---|
//! | `escalate` | the requester's edge | `call`, `by` |
//! | `gate` | the hub | `call`, `verdict` (`call`/`callback`), `mos`, `r`, `rtt_ms`, `jitter_ms`, `loss`, `reason` |
//! | `ring` | the hub | `call`, `desk`, `attempt`, `ring_s` |
//! | `answer` | the desk | `call`, `desk`, `attempt` |
//! | `no_answer` | the hub | `call`, `desk`, `attempt` |
//! | `connected` | the hub | `call`, `desk`, `attempt`, `ms_from_escalate` (or at a federated hub `ms_from_handover`), `ms_from_ring` |
//! | `federate` | the session's hub | `call`, `hub` (the other ICB's hub taking over), `from` |
//! | `callback` | the hub | `call`, `reason` |
//!
//! A call is *open* from its `escalate` until a `connected` or `callback` entry for it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::TimeMs;
use crate::session::{LogValue, SessionView};
use crate::vocab::ReceiptLevel;

/// Default ring time per desk, seconds (the brief: consultants answer within 20 s or it moves on).
pub const DEFAULT_RING_S: u32 = 20;

/// One desk of a line's rota.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotaDesk {
    /// The desk's node name.
    pub desk: String,
    /// How long it rings before the router moves on, seconds.
    pub ring_s: u32,
}

/// What was measured of the requester's path just before ringing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PathQuality {
    /// Mean round-trip time, ms.
    pub rtt_ms: f64,
    /// Mean variation between consecutive one-way delays, ms (RFC 3550 style).
    pub jitter_ms: f64,
    /// Share of probes lost, 0..1.
    pub loss: f64,
    /// Burst ratio (1: random loss; above 1: losses come in bursts).
    pub burst_ratio: f64,
    /// Probes sent.
    pub probes: u32,
}

/// A voice codec's parameters for the E-model (ITU-T G.113 style impairment factors).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecModel {
    /// Name.
    pub name: &'static str,
    /// Bit rate, bits per second.
    pub bitrate: u32,
    /// Equipment impairment factor without loss.
    pub ie: f64,
    /// Packet-loss robustness factor.
    pub bpl: f64,
    /// Frame length plus look-ahead, ms.
    pub codec_delay_ms: f64,
}

/// IMA ADPCM at 8 kHz, 4 bits a sample: 32 kbit/s, G.726-32-like (Ie 7), with simple
/// concealment (a conservative Bpl).
pub const ADPCM_32K: CodecModel =
    CodecModel { name: "ima-adpcm-32k", bitrate: 32_000, ie: 7.0, bpl: 10.0, codec_delay_ms: 20.0 };

/// The E-model's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rating {
    /// Transmission rating factor R (0..100).
    pub r: f64,
    /// Estimated mean opinion score (1..4.5).
    pub mos: f64,
}

/// The smallest estimated MOS at which the router rings rather than offering a callback
/// (3.6: "fair"; below it many users are dissatisfied, G.107 Annex B).
pub const MIN_CALL_MOS: f64 = 3.6;

/// G.107 simplified: default send/receive loudness and noise (Ro - Is = 93.2), delay
/// impairment Id from the one-way mouth-to-ear delay (network, jitter buffer of twice the
/// jitter, codec), effective equipment impairment Ie,eff from loss and burstiness.
pub fn rate(q: &PathQuality, codec: &CodecModel) -> Rating {
    if !(q.rtt_ms.is_finite() && q.jitter_ms.is_finite() && q.loss.is_finite()) {
        // No probe came back (an infinite round trip): the worst rating. The E-model's
        // arithmetic on infinity gives NaN, which was logged as the gate's MOS.
        return Rating { r: 0.0, mos: mos_of(0.0) };
    }
    let ta = q.rtt_ms / 2.0 + 2.0 * q.jitter_ms + codec.codec_delay_ms + 10.0;
    let idd = if ta <= 100.0 {
        0.0
    } else {
        let x = (ta / 100.0).log2();
        25.0 * ((1.0 + x.powi(6)).powf(1.0 / 6.0) - 3.0 * (1.0 + (x / 3.0).powi(6)).powf(1.0 / 6.0) + 2.0)
    };
    let ppl = (q.loss * 100.0).clamp(0.0, 100.0);
    let burst = q.burst_ratio.max(1.0);
    let ie_eff = codec.ie + (95.0 - codec.ie) * ppl / (ppl / burst + codec.bpl);
    let r = (93.2 - idd - ie_eff).clamp(0.0, 100.0);
    Rating { r, mos: mos_of(r) }
}

/// MOS from R (G.107 Annex B).
pub fn mos_of(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    }
}

/// The measurement behind a decision, from probe round trips (`None`: lost), in send order.
pub fn quality_from_probes(rtts_ms: &[Option<f64>]) -> PathQuality {
    let got: Vec<f64> = rtts_ms.iter().flatten().copied().collect();
    let n = rtts_ms.len().max(1) as f64;
    let loss = 1.0 - got.len() as f64 / n;
    let rtt = if got.is_empty() { f64::INFINITY } else { got.iter().sum::<f64>() / got.len() as f64 };
    let jitter = if got.len() < 2 {
        0.0
    } else {
        // One-way variation is about half the variation of round trips.
        got.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (got.len() - 1) as f64 / 2.0
    };
    // Burst ratio: mean run of losses observed over the mean run expected for random loss.
    let mut runs = Vec::new();
    let mut run = 0u32;
    for r in rtts_ms {
        if r.is_none() {
            run += 1;
        } else if run > 0 {
            runs.push(run);
            run = 0;
        }
    }
    if run > 0 {
        runs.push(run);
    }
    let burst_ratio = if runs.is_empty() || loss >= 1.0 {
        1.0
    } else {
        let observed = runs.iter().sum::<u32>() as f64 / runs.len() as f64;
        (observed * (1.0 - loss)).max(1.0)
    };
    PathQuality { rtt_ms: rtt, jitter_ms: jitter, loss, burst_ratio, probes: rtts_ms.len() as u32 }
}

/// Whether the path can carry a call: `Ok(rating)` or `Err(reason)` for the clinician.
pub fn gate(q: &PathQuality, codec: &CodecModel) -> Result<Rating, (Rating, String)> {
    let rating = rate(q, codec);
    if q.probes == 0 {
        return Err((rating, "the requester has no live link to the hub".into()));
    }
    if q.loss >= 1.0 {
        return Err((rating, "the requester's link carried none of the test packets".into()));
    }
    if rating.mos < MIN_CALL_MOS {
        return Err((
            rating,
            format!(
                "the link cannot carry a call: estimated MOS {:.1} (round trip {:.0} ms, jitter {:.0} ms, loss {:.1}%)",
                rating.mos,
                q.rtt_ms,
                q.jitter_ms,
                q.loss * 100.0
            ),
        ));
    }
    Ok(rating)
}

/// One-second probe windows the link gate listens to before it refuses a call. A burst of loss
/// in one second is not a bad link: a refused window is measured again, and the best is judged.
pub const GATE_WINDOWS: u32 = 3;

/// Probes in one window, [`GATE_PROBE_GAP_MS`] apart: one second of voice-like traffic.
pub const GATE_PROBES: usize = 50;
/// The gap between a window's probes, ms.
pub const GATE_PROBE_GAP_MS: u64 = 20;
/// How long a window waits for its last echoes after its last probe, ms: a window whose probes
/// all came back ends at the last echo, one that lost any ends at this wait.
pub const GATE_ECHO_WAIT_MS: u64 = 1_500;

/// How long the hub spends on one window that measured `q`, ms: the probes, then the wait for
/// their echoes (a slower peer's, or the full wait when any was lost).
pub fn gate_window_ms(q: &PathQuality) -> u64 {
    if q.probes == 0 {
        // No live link to the peer: nothing is sent and nothing awaited.
        return 0;
    }
    let sending = GATE_PROBES as u64 * GATE_PROBE_GAP_MS;
    let all_back = q.loss == 0.0 && q.rtt_ms.is_finite();
    let waiting =
        if all_back { ((q.rtt_ms + q.jitter_ms).max(0.0) as u64).min(GATE_ECHO_WAIT_MS) } else { GATE_ECHO_WAIT_MS };
    sending + waiting
}

/// The link gate's listening, one window at a time: the hub measures a window of probes, hands
/// it to [`GateListen::heard`], and either measures the window it names next or judges the
/// best window heard. The node's router and the simulator's hub both listen through this.
#[derive(Debug, Clone, Default)]
pub struct GateListen {
    best: Option<PathQuality>,
    heard: u32,
}

/// What to do after a window, as [`GateListen::heard`] says.
#[derive(Debug, Clone, PartialEq)]
pub enum Listen {
    /// Measure another window; its number (each window's probes carry their own sequence
    /// numbers, so that a late echo of one window is not timed as a probe of the next).
    Again(u32),
    /// Judge the link by this measurement: the best window heard.
    Judge(PathQuality),
}

impl GateListen {
    /// Takes one window's measurement. Listening stops at a window that passes the gate, at a
    /// window with no probes sent (the requester has no live link: there is nothing to wait
    /// for), or after [`GATE_WINDOWS`] windows.
    pub fn heard(&mut self, window: PathQuality, codec: &CodecModel) -> Listen {
        self.heard += 1;
        let best = match self.best.take() {
            Some(b) if window.probes == 0 || rate(&b, codec).mos >= rate(&window, codec).mos => b,
            _ => window,
        };
        let done = window.probes == 0 || gate(&best, codec).is_ok() || self.heard >= GATE_WINDOWS;
        if done {
            return Listen::Judge(best);
        }
        self.best = Some(best);
        Listen::Again(self.heard)
    }
}

/// One escalation, as the routing log tells it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallState {
    /// Its id.
    pub call: String,
    /// When it was asked for (the requester's clock).
    pub asked_ms: TimeMs,
    /// Who asked.
    pub by: String,
    /// The gate's verdict, if it judged: (`call` or `callback`, MOS).
    pub gate: Option<(String, f64)>,
    /// Why the gate refused the call, if it did (its figures' reason).
    pub gate_refused: Option<String>,
    /// Ring attempts in order: (desk, attempt, rung at, ring seconds).
    pub rings: Vec<(String, u32, TimeMs, u32)>,
    /// Attempts that ended without an answer.
    pub no_answer: Vec<u32>,
    /// Attempts answered: (attempt, desk, at).
    pub answers: Vec<(u32, String, TimeMs)>,
    /// Connected: (desk, at).
    pub connected: Option<(String, TimeMs)>,
    /// Callback requested: (reason, at).
    pub callback: Option<(String, TimeMs)>,
    /// Handed to another ICB's hub (out-of-area fallback), if it was.
    pub federated: Option<Federation>,
}

/// An escalation handed by the session's hub to a federated hub of another ICB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federation {
    /// The hub that takes it over.
    pub hub: String,
    /// The hub that handed it over.
    pub from: String,
    /// When.
    pub at: TimeMs,
}

impl CallState {
    /// Whether the escalation still waits for a connection or a callback.
    pub fn is_open(&self) -> bool {
        self.connected.is_none() && self.callback.is_none()
    }

    /// The attempt ringing now, if any: (desk, attempt, rung at, ring seconds).
    pub fn ringing(&self) -> Option<&(String, u32, TimeMs, u32)> {
        self.rings.last().filter(|r| !self.no_answer.contains(&r.1))
    }

    /// The ring under way that the desk rung has not answered: what that desk shows as
    /// ringing. Another desk's answer naming the same ring is no answer to it (a desk of the
    /// line could otherwise silence every other desk's ring in turn).
    pub fn ring_unanswered(&self) -> Option<&(String, u32, TimeMs, u32)> {
        self.ringing().filter(|r| self.is_open() && !self.answers.iter().any(|a| a.0 == r.1 && a.1 == r.0))
    }
}

/// The kind of a routing-log entry (`docs/schema.md`, "Routing-log entries"). A kind this
/// version does not know (a newer node's) is kept as `Other` and ignored by the readers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoutingKind {
    /// The requester asked for a call.
    Escalate,
    /// The hub measured the requester's link before the first ring.
    Gate,
    /// The hub rang a desk.
    Ring,
    /// The desk answered.
    Answer,
    /// The desk did not answer in its ring time.
    NoAnswer,
    /// The call was handed to another ICB's hub.
    Federate,
    /// The call was connected.
    Connected,
    /// A callback was arranged instead.
    Callback,
    /// A kind this version does not know.
    Other(String),
}

impl RoutingKind {
    /// Every kind this version writes and reads, in the order a call goes through them.
    pub const KNOWN: [RoutingKind; 8] = [
        RoutingKind::Escalate,
        RoutingKind::Gate,
        RoutingKind::Ring,
        RoutingKind::Answer,
        RoutingKind::NoAnswer,
        RoutingKind::Federate,
        RoutingKind::Connected,
        RoutingKind::Callback,
    ];

    /// The kind as the log stores it.
    pub fn as_str(&self) -> &str {
        match self {
            RoutingKind::Escalate => "escalate",
            RoutingKind::Gate => "gate",
            RoutingKind::Ring => "ring",
            RoutingKind::Answer => "answer",
            RoutingKind::NoAnswer => "no_answer",
            RoutingKind::Federate => "federate",
            RoutingKind::Connected => "connected",
            RoutingKind::Callback => "callback",
            RoutingKind::Other(k) => k,
        }
    }

    /// The kind of a stored entry.
    pub fn parse(text: &str) -> RoutingKind {
        RoutingKind::KNOWN.into_iter().find(|k| k.as_str() == text).unwrap_or_else(|| RoutingKind::Other(text.into()))
    }

    /// The kind of a routing-log entry, if it has one.
    pub fn of(entry: &BTreeMap<String, LogValue>) -> Option<RoutingKind> {
        match entry.get("kind") {
            Some(LogValue::Str(k)) => Some(RoutingKind::parse(k)),
            _ => None,
        }
    }
}

/// Every escalation of a session, in the order asked. Entries of unknown kinds or calls are
/// ignored (a newer version may log more).
pub fn calls_of(view: &SessionView) -> Vec<CallState> {
    calls_in(&view.routing)
}

/// The calls of a session, from its routing log alone.
pub fn calls_in(routing: &[BTreeMap<String, LogValue>]) -> Vec<CallState> {
    calls_from(crate::routing::RoutingStep::read_all(routing))
}

/// The calls of a session, from its typed routing steps.
pub fn calls_in_steps(steps: &[crate::routing::RoutingStep]) -> Vec<CallState> {
    calls_from(steps.iter().cloned())
}

/// The calls of typed steps, in order; a step naming no call is ignored.
fn calls_from(steps: impl IntoIterator<Item = crate::routing::RoutingStep>) -> Vec<CallState> {
    use crate::routing::RoutingEntry as E;
    let mut calls: Vec<CallState> = Vec::new();
    for crate::routing::RoutingStep { entry, at_ms: at } in steps {
        if entry.call().is_none_or(str::is_empty) {
            continue;
        }
        if let E::Escalate { call, by } = entry {
            if !calls.iter().any(|c| c.call == call) {
                calls.push(CallState { call, asked_ms: at, by, ..CallState::default() });
            }
            continue;
        }
        let Some(c) = entry.call().and_then(|call| calls.iter_mut().find(|c| c.call == call)) else { continue };
        match entry {
            E::Gate { figures, .. } => {
                c.gate = Some((figures.verdict.as_str().to_string(), figures.mos));
                c.gate_refused = (figures.verdict == crate::routing::Verdict::Callback).then_some(figures.reason);
            }
            E::Ring { desk, attempt, ring_s, .. } if !c.rings.iter().any(|r| r.1 == attempt) => {
                c.rings.push((desk, attempt, at, ring_s));
            }
            E::NoAnswer { attempt, .. } => c.no_answer.push(attempt),
            E::Answer { desk, attempt, .. } => c.answers.push((attempt, desk, at)),
            E::Connected { desk, .. } => c.connected = Some((desk, at)),
            E::Callback { reason, .. } => c.callback = Some((reason, at)),
            E::Federate { hub, from, .. } if c.federated.is_none() => {
                c.federated = Some(Federation { hub, from, at });
            }
            _ => {}
        }
    }
    calls
}

/// Whether `desk` holds every message and every photo of the session, by the receipts in
/// this (the hub's) copy: an item it wrote, or one carrying its `desk` or `read` receipt.
/// Photo receipts are written only once every chunk is stored, so this never says more than
/// the desk's own store.
pub fn desk_holds_whole(view: &SessionView, desk: &str) -> bool {
    let covered = |author: &str, receipts: &[crate::session::Receipt]| {
        author == desk || receipts.iter().any(|r| r.node == desk && r.level >= ReceiptLevel::Desk)
    };
    view.messages.iter().all(|m| covered(&m.author, &m.receipts))
        && view.media.iter().filter(|m| !m.consent_withdrawn).all(|m| covered(&m.added_by, &m.receipts))
}

/// What the hub's router does next for one open escalation.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing yet (a desk is ringing, or no desk holds the whole session yet).
    Wait,
    /// Measure the requester's path before deciding (no measurement given).
    Measure,
    /// Record the gate's verdict that a call is possible.
    GatePassed(Rating, PathQuality),
    /// Ring this desk for this long.
    Ring {
        /// The desk.
        desk: String,
        /// Attempt number (1, 2, ...).
        attempt: u32,
        /// Ring time, seconds.
        ring_s: u32,
    },
    /// The desk ringing did not answer in time.
    NoAnswer {
        /// The desk.
        desk: String,
        /// The attempt.
        attempt: u32,
    },
    /// The desk answered: the call is connected.
    Connected {
        /// The desk.
        desk: String,
        /// The attempt.
        attempt: u32,
        /// When it was rung.
        rung_ms: TimeMs,
    },
    /// Every desk of the rota was tried: hand the call to this federated hub's line.
    Federate {
        /// The other ICB's hub.
        hub: String,
    },
    /// No call: ask for a callback, for this reason.
    Callback {
        /// Why, as a kind.
        cause: CallbackCause,
        /// Why (shown to the clinician).
        reason: String,
        /// The gate's figures, when the link was the reason.
        rating: Option<(Rating, PathQuality)>,
    },
}

impl std::fmt::Display for Action {
    /// The step in words, for logs and people (figures rounded as a person reads them).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Wait => f.write_str("waiting (a desk is ringing, or no desk holds the whole case yet)"),
            Action::Measure => f.write_str("measuring the requester's link"),
            Action::GatePassed(rating, q) => write!(
                f,
                "link good enough for voice: estimated quality {:.1} of 5 (round trip {:.0} ms, jitter {:.0} ms, loss {:.1}%)",
                rating.mos,
                q.rtt_ms,
                q.jitter_ms,
                q.loss * 100.0
            ),
            Action::Ring { desk, attempt, ring_s } => {
                write!(f, "ringing {desk} (attempt {attempt}, for up to {ring_s} s)")
            }
            Action::NoAnswer { desk, attempt } => write!(f, "{desk} did not answer (attempt {attempt})"),
            Action::Connected { desk, attempt, .. } => write!(f, "connected to {desk} (attempt {attempt})"),
            Action::Federate { hub } => write!(f, "handed to {hub}, the next ICB's hub for this line"),
            Action::Callback { reason, rating, .. } => {
                write!(f, "callback arranged instead: {reason}")?;
                if let Some((r, q)) = rating {
                    write!(
                        f,
                        " (estimated quality {:.1} of 5; round trip {:.0} ms, loss {:.1}%)",
                        r.mos,
                        q.rtt_ms,
                        q.loss * 100.0
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Why the router arranged a callback instead of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CallbackCause {
    /// The requester's link cannot carry a call (the gate's figures say why).
    Link,
    /// The line is closed now, or takes no calls (the directory's hours and channels).
    LineClosed,
    /// This hub has no rota for the session's line.
    NoRota,
    /// Every desk of the rota was rung and none answered.
    NoAnswer,
    /// No desk of the rota held the whole case within [`HOLD_WAIT_MS`].
    CaseNotDelivered,
    /// The federated hub the call was handed to did not settle it within [`FEDERATE_WAIT_MS`].
    OutOfAreaSilent,
    /// The requesting device already had as many calls being put through, or had asked for as
    /// many in the last hour, as one device may ([`MAX_LIVE_CALLS_PER_REQUESTER`],
    /// [`MAX_CALLS_PER_REQUESTER_HOUR`]).
    TooManyCalls,
}

impl CallbackCause {
    /// A short name, for figures and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackCause::Link => "link",
            CallbackCause::LineClosed => "line closed",
            CallbackCause::NoRota => "no rota",
            CallbackCause::NoAnswer => "no answer",
            CallbackCause::CaseNotDelivered => "case not delivered",
            CallbackCause::OutOfAreaSilent => "out-of-area hub silent",
            CallbackCause::TooManyCalls => "too many calls",
        }
    }
}

/// Calls one requesting device may have being put through at once (from its first step at
/// the hub until it connects or ends): a crew asks for one, a surgery's GPs for a few. Past
/// it, the escalation ends at once in a callback that says why: consultants are not rung by
/// one device's flood (a stolen tablet asking for a call in every session it can make).
pub const MAX_LIVE_CALLS_PER_REQUESTER: usize = 4;

/// Calls one requesting device may start in an hour (a whole ICB's ambulances ask for 10 to
/// 15 calls a day). Past it, the escalation ends at once in a callback that says why.
pub const MAX_CALLS_PER_REQUESTER_HOUR: usize = 20;

/// How long the router waits for some desk of the rota to hold the whole session before it
/// offers a callback instead, ms.
pub const HOLD_WAIT_MS: i64 = 10 * 60 * 1000;

/// How long the session's hub waits for a federated hub to connect a call or arrange a
/// callback before it arranges the callback itself, ms.
pub const FEDERATE_WAIT_MS: i64 = HOLD_WAIT_MS + 2 * 60 * 1000;

/// The router's next step for `call` (open), given the line's rota, the hub's copy of the
/// session, the desks known (from what they confirmed in sync) to hold the session document
/// at all, the line's federated hub for out-of-area fallback (if any), the requester's
/// measured path (if measured) and the hub's clock. A desk is rung only if it is among
/// `holders` and its receipts cover every message and photo: a session with no message or
/// photo yet is still never rung to a desk that lacks it.
///
/// The order: the link gate before the first ring; each desk of the rota that holds the whole
/// case, for its ring time; then the federated hub's line; then a callback. Once handed over,
/// the call is the federated hub's to route (it calls this with `federated` cleared and its
/// own rota); the session's hub only waits, and arranges a callback after
/// [`FEDERATE_WAIT_MS`] if the other hub never settles it.
#[allow(clippy::too_many_arguments)]
pub fn next_action(
    call: &CallState,
    rota: &[RotaDesk],
    view: &SessionView,
    holders: &[String],
    fallback_hub: Option<&str>,
    quality: Option<&PathQuality>,
    seen_ms: TimeMs,
    now: TimeMs,
) -> Action {
    if !call.is_open() {
        return Action::Wait;
    }
    // The gate refused the call but its callback was never written (the hub stopped between
    // the two writes): the verdict stands, whoever would answer. (A desk already rung means a
    // gate passed it: a refusal merged in later, from a hub restored from an older copy that
    // measured again, does not take back a ring.)
    if let Some(reason) = call.gate_refused.as_ref().filter(|_| call.rings.is_empty()) {
        return Action::Callback { cause: CallbackCause::Link, reason: reason.clone(), rating: None };
    }
    if let Some(fed) = &call.federated {
        if now.saturating_sub(fed.at) >= FEDERATE_WAIT_MS {
            return Action::Callback {
                cause: CallbackCause::OutOfAreaSilent,
                reason: format!("the out-of-area hub {} did not put the call through in time", fed.hub),
                rating: None,
            };
        }
        return Action::Wait;
    }
    if let Some((desk, attempt, rung, _)) = call.ringing() {
        if call.answers.iter().any(|a| a.0 == *attempt && &a.1 == desk) {
            return Action::Connected { desk: desk.clone(), attempt: *attempt, rung_ms: *rung };
        }
        let ring_s = call.ringing().map_or(DEFAULT_RING_S, |r| r.3);
        if now.saturating_sub(*rung) >= i64::from(ring_s) * 1000 {
            return Action::NoAnswer { desk: desk.clone(), attempt: *attempt };
        }
        return Action::Wait;
    }
    let tried: Vec<&str> = call.rings.iter().map(|r| r.0.as_str()).collect();
    let left: Vec<&RotaDesk> = rota.iter().filter(|d| !tried.contains(&d.desk.as_str())).collect();
    if left.is_empty() {
        if let Some(hub) = fallback_hub {
            // Out of area: judge the link first, as for a ring (a call the link cannot carry is
            // a callback wherever it would be answered).
            if let Some(verdict) = judge(call, quality) {
                return verdict;
            }
            return Action::Federate { hub: hub.to_string() };
        }
        let (cause, reason) = if rota.is_empty() {
            (CallbackCause::NoRota, format!("no rota for {} at this hub", view.service.line))
        } else {
            (CallbackCause::NoAnswer, "no consultant on the rota answered".into())
        };
        return Action::Callback { cause, reason, rating: None };
    }
    let Some(next) = left.iter().find(|d| holders.contains(&d.desk) && desk_holds_whole(view, &d.desk)) else {
        if now.saturating_sub(seen_ms) >= HOLD_WAIT_MS {
            return Action::Callback {
                cause: CallbackCause::CaseNotDelivered,
                reason: "no consultant's desk received the whole case in time for a call".into(),
                rating: None,
            };
        }
        return Action::Wait;
    };
    // Just before the first ring, with the case delivered (no photo of it still competing for
    // the link): can the requester's path carry a call? If not, a callback, whoever would answer.
    if let Some(verdict) = judge(call, quality) {
        return verdict;
    }
    Action::Ring { desk: next.desk.clone(), attempt: call.rings.len() as u32 + 1, ring_s: next.ring_s }
}

/// How often the router looks again at an escalation waiting for a desk to hold the whole case,
/// ms: who holds a session is learnt from what desks acknowledge in sync, which changes no
/// session, so no change to the session announces it.
pub const HOLDERS_POLL_MS: TimeMs = 250;

/// When [`next_action`], having answered [`Action::Wait`] for `call`, may answer otherwise
/// although the session does not change: the end of the ring under way, the federated hub's
/// time limit, or (while no desk holds the whole case) the next look at who holds it, at the
/// latest the end of [`HOLD_WAIT_MS`]. `None` for a call no longer open.
pub fn waits_until(call: &CallState, seen_ms: TimeMs, now: TimeMs) -> Option<TimeMs> {
    if !call.is_open() {
        return None;
    }
    if let Some(fed) = &call.federated {
        return Some(fed.at.saturating_add(FEDERATE_WAIT_MS));
    }
    if let Some((_, _, rung, ring_s)) = call.ringing() {
        return Some(rung.saturating_add(i64::from(*ring_s) * 1000));
    }
    Some(now.saturating_add(HOLDERS_POLL_MS).min(seen_ms.saturating_add(HOLD_WAIT_MS)))
}

/// The link gate's step, if it has not judged yet: measure, or its verdict.
fn judge(call: &CallState, quality: Option<&PathQuality>) -> Option<Action> {
    if call.gate.is_some() {
        return None;
    }
    let Some(q) = quality else { return Some(Action::Measure) };
    Some(match gate(q, &ADPCM_32K) {
        Ok(rating) => Action::GatePassed(rating, *q),
        Err((rating, reason)) => Action::Callback { cause: CallbackCause::Link, reason, rating: Some((rating, *q)) },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_desks_answer_does_not_silence_the_ring() {
        use crate::routing::{RoutingEntry as E, RoutingStep};
        let step = |entry, at_ms| RoutingStep { entry, at_ms };
        let mut steps = vec![
            step(E::Escalate { call: "k1".into(), by: "amb-07".into() }, 1),
            step(E::Ring { call: "k1".into(), desk: "desk-a".into(), attempt: 1, ring_s: 30 }, 2),
            step(E::Answer { call: "k1".into(), desk: "desk-b".into(), attempt: 1 }, 3),
        ];
        let ring = calls_in_steps(&steps)[0].ring_unanswered().cloned();
        assert_eq!(
            ring.map(|r| (r.0, r.1)),
            Some(("desk-a".to_string(), 1)),
            "desk-b's answer is no answer to desk-a's ring"
        );
        steps.push(step(E::Answer { call: "k1".into(), desk: "desk-a".into(), attempt: 1 }, 4));
        assert!(calls_in_steps(&steps)[0].ring_unanswered().is_none(), "answered by the desk rung");
    }

    #[test]
    fn a_routing_kind_this_version_does_not_know_is_kept_and_ignored() {
        for k in RoutingKind::KNOWN {
            assert_eq!(RoutingKind::parse(k.as_str()), k);
        }
        assert_eq!(RoutingKind::parse("transfer"), RoutingKind::Other("transfer".into()));
        let entry = |kind: &str| {
            BTreeMap::from([
                ("kind".to_string(), LogValue::Str(kind.into())),
                ("call".to_string(), LogValue::Str("k1".into())),
                ("by".to_string(), LogValue::Str("amb-07".into())),
            ])
        };
        let calls = calls_in(&[entry("escalate"), entry("transfer")]);
        assert_eq!(calls.len(), 1);
        assert!(calls[0].is_open(), "an unknown step neither ends nor changes the call");
    }

    fn q(rtt: f64, jitter: f64, loss: f64) -> PathQuality {
        PathQuality { rtt_ms: rtt, jitter_ms: jitter, loss, burst_ratio: 1.0, probes: 50 }
    }

    #[test]
    fn a_window_lasts_its_probes_then_its_last_echo_or_the_full_wait_if_any_was_lost() {
        assert_eq!(gate_window_ms(&q(60.0, 5.0, 0.0)), 1_065);
        assert_eq!(gate_window_ms(&q(60.0, 5.0, 0.02)), 2_500);
        assert_eq!(gate_window_ms(&q(4_000.0, 5.0, 0.0)), 2_500, "no echo is awaited past the wait");
        let gone = PathQuality { rtt_ms: f64::INFINITY, jitter_ms: 0.0, loss: 1.0, burst_ratio: 1.0, probes: 0 };
        assert_eq!(gate_window_ms(&gone), 0, "no link: nothing sent, nothing awaited");
    }

    #[test]
    fn the_gate_listens_again_after_a_lossy_second_and_judges_the_best_window() {
        let good = q(60.0, 5.0, 0.0);
        let burst = q(60.0, 5.0, 0.12);
        let worse = q(60.0, 5.0, 0.3);
        assert!(gate(&burst, &ADPCM_32K).is_err() && gate(&good, &ADPCM_32K).is_ok());
        // A good first second is judged at once.
        let mut l = GateListen::default();
        assert_eq!(l.heard(good, &ADPCM_32K), Listen::Judge(good));
        // A burst, then a good second: the good one is judged, after two windows.
        let mut l = GateListen::default();
        assert_eq!(l.heard(burst, &ADPCM_32K), Listen::Again(1));
        assert_eq!(l.heard(good, &ADPCM_32K), Listen::Judge(good));
        // Three bad seconds: refused on the best of them, never a worse one heard later.
        let mut l = GateListen::default();
        assert_eq!(l.heard(burst, &ADPCM_32K), Listen::Again(1));
        assert_eq!(l.heard(worse, &ADPCM_32K), Listen::Again(2));
        assert_eq!(l.heard(worse, &ADPCM_32K), Listen::Judge(burst), "judged after {GATE_WINDOWS} windows");
        // The link went away while listening: judge what was heard, do not wait on.
        let mut l = GateListen::default();
        let gone = PathQuality { probes: 0, ..worse };
        assert_eq!(l.heard(burst, &ADPCM_32K), Listen::Again(1));
        assert_eq!(l.heard(gone, &ADPCM_32K), Listen::Judge(burst));
        // No live link at all: nothing to listen for.
        let mut l = GateListen::default();
        assert_eq!(l.heard(gone, &ADPCM_32K), Listen::Judge(gone));
    }

    #[test]
    fn a_path_that_echoed_nothing_rates_the_worst_not_nan() {
        let silent = PathQuality { rtt_ms: f64::INFINITY, jitter_ms: 0.0, loss: 1.0, burst_ratio: 1.0, probes: 50 };
        let r = rate(&silent, &ADPCM_32K);
        assert_eq!((r.r, r.mos), (0.0, 1.0));
        assert_eq!(
            quality_from_probes(&[None; 50]).rtt_ms,
            f64::INFINITY,
            "the case above is what nothing heard gives"
        );
    }

    #[test]
    fn a_clean_short_path_rates_above_four() {
        let r = rate(&q(35.0, 3.0, 0.002), &ADPCM_32K);
        assert!(r.mos > 4.0, "{r:?}");
        assert!(gate(&q(35.0, 3.0, 0.002), &ADPCM_32K).is_ok());
    }

    #[test]
    fn a_cell_edge_path_is_refused_with_its_figures() {
        let e = gate(&q(420.0, 40.0, 0.12), &ADPCM_32K).unwrap_err();
        assert!(e.0.mos < MIN_CALL_MOS, "{e:?}");
        assert!(e.1.contains("MOS"), "{}", e.1);
    }

    #[test]
    fn delay_alone_degrades_the_rating_smoothly() {
        let mut last = 5.0;
        for rtt in [50.0, 150.0, 300.0, 500.0, 800.0] {
            let m = rate(&q(rtt, 0.0, 0.0), &ADPCM_32K).mos;
            assert!(m <= last, "MOS rises with delay at {rtt} ms");
            last = m;
        }
        assert!(last < 3.6);
    }

    #[test]
    fn bursty_loss_hurts_more_than_random_loss_of_the_same_rate() {
        // G.107: for one loss rate, a higher burst ratio gives a higher effective impairment.
        let random = rate(&q(40.0, 2.0, 0.05), &ADPCM_32K);
        let bursty = rate(&PathQuality { burst_ratio: 3.0, ..q(40.0, 2.0, 0.05) }, &ADPCM_32K);
        assert!(bursty.r < random.r, "{random:?} {bursty:?}");
    }

    #[test]
    fn probes_give_loss_jitter_and_bursts() {
        let probes = [Some(40.0), Some(44.0), None, None, Some(40.0), Some(48.0), None, Some(40.0)];
        let p = quality_from_probes(&probes);
        assert!((p.loss - 3.0 / 8.0).abs() < 1e-9);
        assert!((p.rtt_ms - 42.4).abs() < 1e-9);
        assert!(p.jitter_ms > 0.0);
        assert!(p.burst_ratio > 0.9);
        assert_eq!(quality_from_probes(&[None, None]).loss, 1.0);
    }
}
