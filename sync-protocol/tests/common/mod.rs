//! The protocol tests' shared harness: [`Pair`], two engines on a virtual clock joined by a
//! link with a one-way delay and random loss. A loss costs what it costs on QUIC: the frame is
//! sent again a round trip and a quarter later, and each lane stays in order behind it. Frames
//! can also be dropped whole on purpose (`drop_if`), as a frame damaged on the way and refused.
//! The engines' own timers (`poll_timeout`, `handle_timeout`) are driven at their deadlines.

#![allow(dead_code)] // each test binary uses part of it
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::VecDeque;

use sync_protocol::TimeMs;
use sync_protocol::engine::{Engine, EngineConfig, Replica};
use sync_protocol::wire::{Frame, Lane};

/// Says whether a frame is dropped whole, given whether `a` sent it.
pub type DropIf<'a> = Option<&'a dyn Fn(bool, &Frame) -> bool>;

/// A frame on its way, and when it arrives.
#[derive(Debug)]
struct InFlight {
    at: TimeMs,
    frame: Frame,
}

/// Two engines (`a` initiates) and the link between them.
#[derive(Debug)]
pub struct Pair {
    /// The initiator's engine (on replica `a`).
    pub a: Engine,
    /// The responder's engine (on replica `b`).
    pub b: Engine,
    /// The virtual clock, in milliseconds.
    pub now: TimeMs,
    /// One-way delay, milliseconds.
    pub delay_ms: TimeMs,
    /// Probability that a frame is lost once (and sent again a round trip and a quarter later).
    pub loss: f64,
    /// Frames from a to b and from b to a, per lane (sync, blob), in order.
    to_b: [VecDeque<InFlight>; 2],
    to_a: [VecDeque<InFlight>; 2],
    /// Every frame sent, encoded: (from a, bytes).
    pub wire: Vec<(bool, Vec<u8>)>,
    /// Frames lost once on the way (and resent).
    pub resent: usize,
    /// Frames dropped whole by `drop_if`.
    pub dropped: usize,
    rng: u64,
}

fn lane_index(lane: Lane) -> usize {
    if lane == Lane::Sync { 0 } else { 1 }
}

impl Pair {
    /// Two engines with the default configuration, at time `now`, on a perfect link.
    pub fn new<R: Replica>(a: &R, b: &R, now: TimeMs) -> Pair {
        Pair::with_configs(a, b, EngineConfig::new(true), EngineConfig::new(false), now)
    }

    /// Two engines with these configurations.
    pub fn with_configs<R: Replica>(a: &R, b: &R, ca: EngineConfig, cb: EngineConfig, now: TimeMs) -> Pair {
        Pair {
            a: Engine::new(b.me().clone(), ca),
            b: Engine::new(a.me().clone(), cb),
            now,
            delay_ms: 0,
            loss: 0.0,
            to_b: Default::default(),
            to_a: Default::default(),
            wire: Vec::new(),
            resent: 0,
            dropped: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The link: one-way delay, loss probability and the seed of its losses.
    pub fn link(mut self, delay_ms: TimeMs, loss: f64, seed: u64) -> Pair {
        self.delay_ms = delay_ms;
        self.loss = loss;
        self.rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        self
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: enough for a test link, and reproducible from the seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Both engines start (Hello; the initiator's Summary and first pushes).
    pub fn start<R: Replica>(&mut self, a: &mut R, b: &mut R)
    where
        R::Error: std::fmt::Debug,
    {
        self.a.start(a, self.now).unwrap();
        self.b.start(b, self.now).unwrap();
        self.send_out(None);
    }

    /// Moves each engine's output onto the link; frames `drop` says are dropped whole.
    fn send_out(&mut self, drop: DropIf<'_>) {
        for from_a in [true, false] {
            loop {
                let next = if from_a { self.a.poll_frame() } else { self.b.poll_frame() };
                let Some((lane, frame)) = next else { break };
                self.wire.push((from_a, frame.to_bytes()));
                if drop.is_some_and(|d| d(from_a, &frame)) {
                    self.dropped += 1;
                    continue;
                }
                let mut at = self.now + self.delay_ms;
                if self.loss > 0.0 && self.random() < self.loss {
                    self.resent += 1;
                    at += (2 * self.delay_ms * 5 / 4).max(1);
                }
                let q = if from_a { &mut self.to_b[lane_index(lane)] } else { &mut self.to_a[lane_index(lane)] };
                // In order on its lane: nothing overtakes a frame sent before it.
                let at = q.back().map_or(at, |last| at.max(last.at));
                q.push_back(InFlight { at, frame });
            }
        }
    }

    /// When the next thing happens: a frame arriving or an engine's timer.
    fn next_event(&self) -> Option<TimeMs> {
        let arrivals = self.to_a.iter().chain(self.to_b.iter()).filter_map(|q| q.front().map(|f| f.at));
        let timers = [self.a.poll_timeout(), self.b.poll_timeout()].into_iter().flatten();
        arrivals.chain(timers).min()
    }

    /// Runs until `until` returns true (checked after every step) or `limit_ms` of virtual
    /// time pass; returns whether `until` was met. Frames for which `drop` returns true (given
    /// whether a sent it) are dropped whole.
    pub fn run<R: Replica>(
        &mut self,
        a: &mut R,
        b: &mut R,
        limit_ms: TimeMs,
        drop: DropIf<'_>,
        mut until: impl FnMut(&Pair, &mut R, &mut R) -> bool,
    ) -> bool
    where
        R::Error: std::fmt::Debug,
    {
        let end = self.now + limit_ms;
        loop {
            if until(self, a, b) {
                return true;
            }
            let Some(t) = self.next_event() else { return false };
            if t > end {
                self.now = end;
                return false;
            }
            self.now = self.now.max(t);
            for to_b in [true, false] {
                let mut batch = Vec::new();
                for q in if to_b { self.to_b.iter_mut() } else { self.to_a.iter_mut() } {
                    while q.front().is_some_and(|f| f.at <= self.now) {
                        batch.extend(q.pop_front().map(|f| f.frame));
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                if to_b {
                    self.b.handle(b, batch, self.now).unwrap()
                } else {
                    self.a.handle(a, batch, self.now).unwrap()
                }
            }
            self.a.handle_timeout(a, self.now).unwrap();
            self.b.handle_timeout(b, self.now).unwrap();
            self.send_out(drop);
        }
    }

    /// Runs the conversation to its end (the initiator done, nothing on the way), within
    /// `limit_ms` of virtual time; panics if it does not end.
    pub fn run_to_end<R: Replica>(&mut self, a: &mut R, b: &mut R, limit_ms: TimeMs)
    where
        R::Error: std::fmt::Debug,
    {
        let ended = self.run(a, b, limit_ms, None, |p, _, _| p.a.is_done() && p.quiet());
        assert!(ended, "the conversation did not end within {limit_ms} ms of virtual time");
    }

    /// Nothing on the way and nothing waiting to be sent.
    pub fn quiet(&self) -> bool {
        self.to_a.iter().chain(self.to_b.iter()).all(VecDeque::is_empty) && !self.a.has_output() && !self.b.has_output()
    }

    /// Bytes sent each way: (a to b, b to a).
    pub fn bytes(&self) -> (usize, usize) {
        let sum = |from_a: bool| self.wire.iter().filter(|(f, _)| *f == from_a).map(|(_, b)| b.len()).sum();
        (sum(true), sum(false))
    }
}
