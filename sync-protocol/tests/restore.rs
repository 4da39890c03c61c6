//! Model-based test of convergence from any starting state: random histories of edits on an
//! ambulance and a consultant's desk, conversations with their hub, backups, restores of any
//! node from any older backup, and per-peer memory lost on random sides.
//!
//! After every conversation the two sides hold the same version of every session both may hold
//! (one reconnect converges), and every receipt either side holds about the other is true (the
//! other holds the message). At the end, a bounded few rounds of conversations converge the
//! whole fleet. Each case is a seed; a failure names it (`RESTORE_SEED=N` replays one case).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;

mod common;
use common::Pair;

use sync_protocol::authorship::{AuthorKey, Member, SharedRoster};
use sync_protocol::engine::Replica;
use sync_protocol::mem::MemReplica;
use sync_protocol::scope::{PeerInfo, may_hold};
use sync_protocol::session::{NewMessage, NewSession, Patient, Requester, Service, SessionDoc};
use sync_protocol::vocab::{CareSetting, Channel, Priority, Role, ServiceLine, Side};
use sync_protocol::wire::DocId;
use sync_protocol::{SessionId, TimeMs};

const T: TimeMs = 1_790_000_000_000;
const CASES: u64 = 300;
const STEPS: usize = 40;

/// splitmix64: a small deterministic generator, so that a seed names a whole history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const EDGE: usize = 0;
const HUB: usize = 1;
const DESK: usize = 2;

struct Fleet {
    nodes: Vec<MemReplica>,
    backups: Vec<Vec<MemReplica>>,
    now: TimeMs,
    seq: u64,
    conversations: u64,
    restores: u64,
    forgets: u64,
    /// Messages checked "at hub" from a hub's acknowledgement (no receipt).
    vouched: u64,
    /// `stale[a][b]`: `b` was restored from a copy since `a` last talked to it, so what `a`
    /// remembers of `b` may be more than `b` now holds (until they talk again).
    stale: [[bool; 3]; 3],
}

fn infos() -> Vec<PeerInfo> {
    let icb = Some("QHM".to_string());
    vec![
        PeerInfo { name: "amb-07".into(), role: Role::Edge, org: None, icb: icb.clone(), lines: vec![] },
        PeerInfo { name: "hub-qhm".into(), role: Role::Hub, org: None, icb: icb.clone(), lines: vec![] },
        PeerInfo {
            name: "desk-derm-1".into(),
            role: Role::Desk,
            org: None,
            icb,
            lines: vec![ServiceLine::Dermatology],
        },
    ]
}

impl Fleet {
    fn new() -> Fleet {
        let roster = SharedRoster::default();
        let nodes = infos()
            .into_iter()
            .enumerate()
            .map(|(n, p)| {
                let key = AuthorKey::from_seed(&[n as u8 + 1; 32], [n as u8 + 1; 8]);
                roster.write().unwrap().insert(Member { info: p.clone(), key: key.public() });
                MemReplica::new(p, key, roster.clone())
            })
            .collect();
        Fleet {
            nodes,
            backups: vec![Vec::new(), Vec::new(), Vec::new()],
            now: T,
            seq: 0,
            conversations: 0,
            restores: 0,
            forgets: 0,
            vouched: 0,
            stale: [[false; 3]; 3],
        }
    }

    fn tick(&mut self) -> TimeMs {
        self.now += 1_000;
        self.seq += 1;
        self.now
    }

    fn new_session(&mut self, rng: &mut Rng) {
        let now = self.tick();
        let line = if rng.below(3) == 0 { ServiceLine::Cardiology } else { ServiceLine::Dermatology };
        let edge = &mut self.nodes[EDGE];
        let new = NewSession {
            id: SessionId::from_parts(now, u128::from(self.seq) * 7919 + 1),
            origin: edge.me().name.clone(),
            icb: "QHM".into(),
            care_setting: CareSetting::AmbulanceOnScene,
            requester: Requester::default(),
            patient: Patient::default(),
            service: Service { line, channel: Channel::Message, priority: Priority::Urgent },
            summary: format!("session {}", self.seq),
            draft: false,
        };
        let doc = SessionDoc::create(&new, edge.actor().clone(), now).unwrap();
        edge.put(doc).unwrap();
    }

    fn message(&mut self, n: usize, rng: &mut Rng) {
        let ids = self.nodes[n].ids();
        if ids.is_empty() {
            return;
        }
        let id = ids[rng.below(ids.len())];
        let now = self.tick();
        let r = &mut self.nodes[n];
        let me = r.me().clone();
        let side = if me.role == Role::Desk { Side::Responder } else { Side::Requester };
        let msg = NewMessage {
            clinician: None,
            id: SessionId::from_parts(now, u128::from(self.seq)).to_string(),
            author: me.name.clone(),
            side,
            text: format!("message {} from {}", self.seq, me.name),
            reply_to: None,
        };
        r.edit(&id, |d| d.add_message(&msg, now)).unwrap();
    }

    fn share(&mut self, rng: &mut Rng) {
        let ids = self.nodes[HUB].ids();
        if ids.is_empty() {
            return;
        }
        let id = ids[rng.below(ids.len())];
        let now = self.tick();
        self.nodes[HUB].edit(&id, |d| d.share_with("desk-derm-1", now)).unwrap();
    }

    fn restore(&mut self, n: usize, rng: &mut Rng) {
        if self.backups[n].is_empty() {
            return;
        }
        let k = rng.below(self.backups[n].len());
        let instance = rng.next().to_le_bytes();
        let (nodes, backups) = (&mut self.nodes, &mut self.backups);
        nodes[n].restore(&mut backups[n][k], instance);
        self.restores += 1;
        for row in &mut self.stale {
            row[n] = true;
        }
    }

    /// One conversation between `a` (initiating) and `b`, to its end; then the checks that one
    /// reconnect converges and that receipts about each other are true.
    fn converse(&mut self, a: usize, b: usize, seed: u64) {
        let now = self.tick();
        self.conversations += 1;
        let (ra, rb) = pair(&mut self.nodes, a, b);
        let mut p = Pair::new(ra, rb, now);
        p.start(ra, rb);
        let ended = p.run(ra, rb, 600_000, None, |p, _, _| p.a.is_done() && p.quiet());
        assert!(ended, "seed {seed}: no end to a conversation");
        let (ea, eb) = (&p.a, &p.b);
        assert_eq!(ea.stats().refused + eb.stats().refused, 0, "seed {seed}: a side refused honest changes");
        assert_same(ra, rb, seed);
        self.vouched += assert_receipts_true(ra, rb, seed);
        self.vouched += assert_receipts_true(rb, ra, seed);
        self.stale[a][b] = false;
        self.stale[b][a] = false;
        // What every node shows "at hub" from a hub's acknowledgement is true of every hub not
        // restored since (a restored hub's lower heads correct it at their next conversation).
        for x in 0..self.nodes.len() {
            for y in 0..self.nodes.len() {
                if x != y && self.nodes[y].me().role == Role::Hub && !self.stale[x][y] {
                    let (rx, ry) = pair(&mut self.nodes, x, y);
                    self.vouched += assert_vouched_true(rx, ry, seed);
                }
            }
        }
    }
}

/// Two distinct nodes, mutably.
fn pair(nodes: &mut [MemReplica], a: usize, b: usize) -> (&mut MemReplica, &mut MemReplica) {
    let (lo, hi) = (a.min(b), a.max(b));
    let (left, right) = nodes.split_at_mut(hi);
    let (x, y) = (&mut left[lo], &mut right[0]);
    if a < b { (x, y) } else { (y, x) }
}

/// Every session both may hold is at the same version on both.
fn assert_same(a: &mut MemReplica, b: &mut MemReplica, seed: u64) {
    let ids: BTreeSet<DocId> = a.ids().into_iter().chain(b.ids()).collect();
    for id in ids {
        let meta = a.view(&id).or_else(|| b.view(&id)).unwrap().meta();
        if may_hold(a.me(), &meta) && may_hold(b.me(), &meta) {
            assert_eq!(
                a.heads(&id),
                b.heads(&id),
                "seed {seed}: {} and {} differ on session {:02x?} after a conversation",
                a.me().name,
                b.me().name,
                &id[..4]
            );
        }
    }
}

/// Every receipt `a` holds that names `b` is true: `b` holds the message; and so is every
/// message `a` shows "at hub" from what `b` (a hub) acknowledged, with no receipt.
fn assert_receipts_true(a: &mut MemReplica, b: &MemReplica, seed: u64) -> u64 {
    let vouched = assert_vouched_true(a, b, seed);
    for id in a.ids() {
        let view = a.view(&id).unwrap();
        for m in &view.messages {
            for r in m.receipts.iter().filter(|r| r.node == b.me().name) {
                let held = b.view(&id).is_some_and(|v| v.messages.iter().any(|x| x.id == m.id));
                assert!(
                    held,
                    "seed {seed}: {} shows message {} as {:?} at {}, which does not hold it",
                    a.me().name,
                    m.id,
                    r.level,
                    b.me().name
                );
            }
        }
    }
    vouched
}

/// Every message `a` shows "at hub" from what `b` (a hub) acknowledged, with no receipt, `b`
/// holds; returns how many were checked.
fn assert_vouched_true(a: &mut MemReplica, b: &MemReplica, seed: u64) -> u64 {
    let mut vouched = 0;
    for id in a.ids() {
        for (m, hubs) in a.messages_vouched_by_hubs(&id) {
            if hubs.contains(&b.me().name) {
                vouched += 1;
                let held = b.view(&id).is_some_and(|v| v.messages.iter().any(|x| x.key() == m));
                assert!(
                    held,
                    "seed {seed}: {} shows its message {} at hub from what {} acknowledged, which does not hold it",
                    a.me().name,
                    m.1,
                    b.me().name
                );
            }
        }
    }
    vouched
}

fn run(seed: u64) -> Fleet {
    let mut rng = Rng(seed);
    let mut f = Fleet::new();
    for _ in 0..2 {
        f.new_session(&mut rng);
    }
    for _ in 0..STEPS {
        match rng.below(100) {
            0..=9 => f.new_session(&mut rng),
            10..=24 => f.message(EDGE, &mut rng),
            25..=34 => f.message(DESK, &mut rng),
            35..=38 => f.share(&mut rng),
            39..=52 => f.converse(EDGE, HUB, seed),
            53..=59 => f.converse(HUB, EDGE, seed),
            60..=69 => f.converse(DESK, HUB, seed),
            70..=73 => f.converse(HUB, DESK, seed),
            74..=83 => {
                let n = rng.below(3);
                let copy = f.nodes[n].backup();
                f.backups[n].push(copy);
            }
            84..=93 => {
                let n = rng.below(3);
                f.restore(n, &mut rng);
            }
            _ => {
                let n = rng.below(3);
                f.nodes[n].forget_peers();
                f.forgets += 1;
            }
        }
    }
    // A bounded few rounds converge the whole fleet: the ambulance and the desk each meet the
    // hub twice (what one side brings the hub reaches the other on its next conversation).
    for _ in 0..2 {
        f.converse(EDGE, HUB, seed);
        f.converse(DESK, HUB, seed);
    }
    f.converse(EDGE, HUB, seed);
    for (x, y) in [(EDGE, HUB), (DESK, HUB), (EDGE, DESK)] {
        let (a, b) = pair(&mut f.nodes, x, y);
        assert_same(a, b, seed);
    }
    f
}

#[test]
fn restores_from_any_older_copy_and_forgotten_peers_converge_with_true_receipts() {
    if let Some(seed) = std::env::var("RESTORE_SEED").ok().and_then(|s| s.parse().ok()) {
        run(seed);
        return;
    }
    let (mut conversations, mut restores, mut forgets, mut vouched) = (0, 0, 0, 0);
    for seed in 0..CASES {
        let f = run(seed);
        conversations += f.conversations;
        restores += f.restores;
        forgets += f.forgets;
        vouched += f.vouched;
    }
    println!(
        "{CASES} histories: {conversations} conversations, {restores} restores, {forgets} forgotten peers, \
         {vouched} messages checked 'at hub' from the hub's acknowledgement"
    );
    assert!(restores > CASES, "the histories restore often enough to test it ({restores})");
    assert!(vouched > CASES, "the histories check derived 'at hub' often enough ({vouched})");
}
