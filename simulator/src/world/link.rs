//! Links and connections: dialling, the on/off process, the sender's bottleneck, arrivals into the engines.

use super::checks::Observed;
use super::*;

impl World {
    pub(super) fn link_changed(&mut self, l: usize, was_up: bool) {
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

    pub(super) fn connect(&mut self, l: usize) {
        self.links[l].connect_pending = false;
        let node = self.links[l].node;
        if self.links[l].conn.is_some() || !self.nodes[node].up {
            return;
        }
        let hub = self.links[l].hub;
        if !self.links[l].up() || !self.nodes[hub].up {
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
        let hub_info = self.nodes[hub].info.clone();
        let engines =
            [Engine::new(hub_info, EngineConfig::new(true)), Engine::new(node_info, EngineConfig::new(false))];
        self.links[l].conn = Some(Conn { id, engines, windows: Default::default(), received: [0; 2] });
        self.links[l].dirs = [Dir::default(), Dir::default()];
        self.connections += 1;
        self.count_wire(HANDSHAKE_BYTES, 0);
        self.log(21, l as u64, id);
        // The handshake takes a round trip and a half before the first frames move.
        let hs = self.links[l].delay_us * 3;
        for side in [1usize, 0] {
            let owner = if side == 0 { node } else { hub };
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
        self.schedule_timer(l);
    }

    /// Schedules the connection's next timer event: the earlier of its two engines' deadlines,
    /// each read on its own node's clock (at least a second ahead).
    pub(super) fn schedule_timer(&mut self, l: usize) {
        let Some(c) = self.links[l].conn.as_ref() else { return };
        let mut wait: Option<Micros> = None;
        for side in [0usize, 1] {
            let owner = if side == 0 { self.links[l].node } else { self.links[l].hub };
            if let Some(due) = c.engines[side].poll_timeout() {
                let ms = due.saturating_sub(self.node_now(owner)).max(0) as Micros;
                wait = Some(wait.map_or(ms * 1000, |w| w.min(ms * 1000)));
            }
        }
        let id = c.id;
        if let Some(w) = wait {
            self.after(w.max(SECOND), Ev::Timer { link: l, conn: id });
        }
    }

    /// Both engines of a connection handle their timers (each acts only once due).
    pub(super) fn engine_timers(&mut self, l: usize) {
        for side in [1usize, 0] {
            let owner = if side == 0 { self.links[l].node } else { self.links[l].hub };
            if !self.nodes[owner].up {
                continue;
            }
            let now = self.node_now(owner);
            let blind = self.opts.bugs.ignore_scope_at.as_deref() == Some(self.nodes[owner].name.as_str());
            let Some(c) = self.links[l].conn.as_mut() else { return };
            let replica = &mut self.nodes[owner].replica;
            let r = if blind {
                c.engines[side].handle_timeout(&mut Blind(replica), now).map_err(|e| e.to_string())
            } else {
                c.engines[side].handle_timeout(replica, now).map_err(|e| e.to_string())
            };
            self.flush(l, side, 0);
            if let Err(e) = r {
                self.drop_conn(l, &e);
                return;
            }
            self.after_changes(owner, None);
        }
        self.schedule_timer(l);
    }

    pub(super) fn drop_conn(&mut self, l: usize, why: &str) {
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
    pub(super) fn flush(&mut self, l: usize, side: usize, extra_delay: Micros) {
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

    pub(super) fn kick(&mut self, l: usize, dir: usize) {
        let d = &self.links[l].dirs[dir];
        if d.tx_pending || (d.sync_q.is_empty() && d.blob_q.is_empty()) {
            return;
        }
        let t = d.busy_until.max(self.now);
        self.links[l].dirs[dir].tx_pending = true;
        self.at(t, Ev::Tx(l, dir));
    }

    /// The sender's bottleneck: one frame at a time, document traffic first.
    pub(super) fn transmit(&mut self, l: usize, dir: usize) {
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
            if frames.iter().any(|f| matches!(f, Frame::AuditHead(_))) {
                // What a bit flipped in an audit head says is not the peer's word (QUIC's
                // integrity check stops this in the field): the two ends' findings about each
                // other are not judged.
                let (a, b) = (self.links[l].node, self.links[l].hub);
                self.check(Observed::AuditCorrupted { a, b });
            }
            if frames.is_empty() {
                // The receiver's decoder could not make sense of it: the stream is broken.
                self.drop_conn(l, "corrupted frame");
                return;
            }
        }
        self.at(arrival, Ev::Arrive { link: l, conn, to_hub: dir == 0, frames });
        self.kick(l, dir);
    }

    pub(super) fn count_wire(&mut self, wire: u64, payload: u64) {
        self.wire_bucket += wire;
        self.wire_total += wire;
        self.payload_bucket += payload;
        self.payload_total += payload;
    }

    pub(super) fn arrive(&mut self, l: usize, conn: u64, to_hub: bool, frames: Vec<Frame>) {
        if self.links[l].conn.as_ref().map(|c| c.id) != Some(conn) {
            return;
        }
        if !self.links[l].up() {
            self.links[l].parked.push((if to_hub { 0 } else { 1 }, frames));
            return;
        }
        let node = self.links[l].node;
        let (side, owner) = if to_hub { (1usize, self.links[l].hub) } else { (0usize, node) };
        if !self.nodes[owner].up {
            return;
        }
        self.frames_delivered += frames.len() as u64;
        for f in &frames {
            self.check(Observed::Frame { receiver: owner, frame: f });
        }
        let now = self.node_now(owner);
        let blind = self.opts.bugs.ignore_scope_at.as_deref() == Some(self.nodes[owner].name.as_str());
        let rtt_ms = (2 * self.links[l].delay_us) as f64 / 1e3;
        let heard_audit = frames.iter().any(|f| matches!(f, Frame::AuditHead(_)));
        let Some(c) = self.links[l].conn.as_mut() else { return };
        c.received[side] += frames.iter().map(|f| f.to_bytes().len() as u64).sum::<u64>();
        let window = c.windows[side].update(self.now / 1000, c.received[side], rtt_ms);
        c.engines[side].set_blob_window(window);
        let replica = &mut self.nodes[owner].replica;
        let result = if blind {
            c.engines[side].handle(&mut Blind(replica), frames, now).map_err(|e| e.to_string())
        } else {
            c.engines[side].handle(replica, frames, now).map_err(|e| e.to_string())
        };
        self.log(23, l as u64, side as u64);
        self.flush(l, side, 0);
        match result {
            Err(e) => self.drop_conn(l, &e),
            Ok(()) if heard_audit => {
                let sender = if to_hub { node } else { self.links[l].hub };
                self.check(Observed::AuditHeard { receiver: owner, sender });
            }
            Ok(()) => {}
        }
        self.after_changes(owner, Some(l));
    }

    /// Pushes a node's changed documents to its connections, and checks and measures them.
    pub(super) fn after_changes(&mut self, owner: usize, except: Option<usize>) {
        let changed = self.nodes[owner].replica.take_changed();
        if changed.is_empty() {
            return;
        }
        self.observe(owner, &changed);
        if self.nodes[owner].kind == Kind::Hub {
            for l in 0..self.links.len() {
                if self.links[l].hub == owner && Some(l) != except {
                    self.notify_conn(l, &changed);
                }
            }
            self.router_sees(owner, &changed);
            // A federated hub is also the dialling side of its link to the region's hub.
            if let Some(l) = self.nodes[owner].link {
                self.notify_node_side(l, &changed);
            }
        } else {
            if self.nodes[owner].kind == Kind::Desk {
                self.desk_hears_rings(owner, &changed);
            }
            if let Some(l) = self.nodes[owner].link {
                self.notify_node_side(l, &changed);
            }
        }
    }

    pub(super) fn notify_conn(&mut self, l: usize, docs: &[DocId]) {
        // Hub side of link `l`.
        let hub = self.links[l].hub;
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
    }

    pub(super) fn notify_node_side(&mut self, l: usize, docs: &[DocId]) {
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
