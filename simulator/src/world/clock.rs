//! Virtual time: the events the world schedules, the queue that orders them, stepping through
//! them, and the hash of the event log that two runs of one seed must share.

use super::*;

/// Something that happens at a moment of virtual time.
#[derive(Debug, Clone)]
pub(super) enum Ev {
    Work(Work),
    Flip(usize),
    Leg(usize),
    Connect(usize),
    Tx(usize, usize),
    Arrive {
        link: usize,
        conn: u64,
        to_hub: bool,
        frames: Vec<Frame>,
    },
    Idle {
        link: usize,
        epoch: u64,
    },
    /// A hostile node's next attack on the hub.
    Tick {
        link: usize,
        conn: u64,
    },
    /// The connection's engines' timers (`Engine::poll_timeout`).
    Timer {
        link: usize,
        conn: u64,
    },
    Fault {
        index: usize,
        start: bool,
        rep: u32,
    },
    Backup {
        index: usize,
    },
    Sample,
    Sweep,
    Converge,
    /// A hub's router is due (`Router::poll_timeout`).
    RouterWake(usize),
    /// A window of the link gate's probes for this call has ended (with its token).
    GateWindow(usize, u64),
    /// The scenario's directory edit of this index.
    DirectoryEdit(usize),
    Settle,
    End,
}

impl Ev {
    pub(super) fn code(&self) -> u8 {
        match self {
            Ev::Work(_) => 1,
            Ev::Flip(_) => 2,
            Ev::Leg(_) => 3,
            Ev::Connect(_) => 4,
            Ev::Tx(..) => 5,
            Ev::Arrive { .. } => 6,
            Ev::Idle { .. } => 7,
            Ev::Tick { .. } => 8,
            Ev::Timer { .. } => 17,
            Ev::Fault { .. } => 9,
            Ev::Backup { .. } => 16,
            Ev::Sample => 10,
            Ev::Sweep => 11,
            Ev::Converge => 15,
            Ev::RouterWake(_) => 12,
            Ev::DirectoryEdit(_) => 18,
            Ev::GateWindow(..) => 19,
            Ev::Settle => 13,
            Ev::End => 14,
        }
    }
}

impl World {
    pub(super) fn at(&mut self, t: Micros, ev: Ev) {
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

    pub(super) fn after(&mut self, dt: Micros, ev: Ev) {
        self.at(self.now + dt, ev);
    }

    pub(super) fn exp(&mut self, mean: Micros) -> Micros {
        let u: f64 = self.rng.random::<f64>();
        (-(mean as f64) * (1.0 - u).max(1e-12).ln()) as Micros
    }

    pub(super) fn node_now(&self, n: usize) -> TimeMs {
        self.epoch_ms + (self.now / 1000) as TimeMs + self.nodes[n].skew_ms
    }

    pub(super) fn log(&mut self, code: u8, a: u64, b: u64) {
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
            self.step();
        }
    }

    /// Handles the next event; false if there is none.
    pub(super) fn step(&mut self) -> bool {
        let Some(Reverse((t, _, slot))) = self.queue.pop() else { return false };
        self.now = t;
        let Some(ev) = self.events[slot].take() else { return true };
        self.free_events.push(slot);
        self.events_processed += 1;
        self.log(ev.code(), 0, 0);
        self.handle(ev);
        true
    }
}
