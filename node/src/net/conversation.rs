//! One conversation with a peer: its two lanes read and written, the engine stepped on the
//! store thread, budgets, refusals and revocations.

use super::*;
use crate::replica::Collected;

/// The environment variable naming a file where every byte received from peers is appended,
/// as decoded from QUIC (diagnostics, and the scope tests' evidence).
pub const FRAME_LOG_ENV: &str = "OUTPOST_FRAME_LOG";

/// How long a dialled node waits for the dialler to open its two lanes once the handshake is
/// done (a dialler opens them at once; a long round trip takes a second or two).
pub(super) const LANE_WAIT: Duration = Duration::from_secs(10);
/// The bytes made for a peer and not yet written to its streams, and a wake-up each time some
/// are written.
///
/// A peer may ask faster than it reads (a document asked for step after step, a photo's
/// chunks), and what it has not read waits in this node's memory. Past `limit`
/// (`limits.unsent_bytes_per_peer`) the peer's asks ([`Frame::asks`]) wait until it reads,
/// and only what it carries is taken, answered with small frames (the pushes it would prompt
/// wait: `Engine::set_output_paused`), until the answers made meanwhile pass the limit too:
/// then nothing more is taken. Two nodes that each owe the other more than the limit (a tablet
/// restored from an old backup and its hub) then still read each other's changes, and so
/// both drain; were every frame held at the limit, each would wait for the other for ever.
#[derive(Debug)]
pub(super) struct Unsent {
    bytes: std::sync::atomic::AtomicUsize,
    written: tokio::sync::Notify,
    limit: usize,
}

impl Unsent {
    fn new(limit: usize) -> Self {
        Unsent { bytes: Default::default(), written: Default::default(), limit }
    }

    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn written(&self, n: usize) {
        let _ =
            self.bytes.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |b| {
                Some(b.saturating_sub(n))
            });
        self.written.notify_one();
    }

    fn over(&self) -> bool {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed) > self.limit
    }
}

/// A received frame with its share of the connection's queue.
pub(super) type Queued = (Frame, tokio::sync::OwnedSemaphorePermit);

/// Reads one lane's frames and forwards them; a frame that cannot be decoded is reported on
/// `bad` (the conversation then closes with the reason).
pub(super) async fn read_lane(
    recv: quinn::RecvStream,
    out: mpsc::Sender<Queued>,
    queue: (Arc<tokio::sync::Semaphore>, usize),
    bad: mpsc::Sender<DecodeError>,
) {
    if let Err(e) = read_frames(recv, out, queue).await {
        let _ = bad.send(e).await;
    }
}

/// Reads frames into the connection's queue of `queue.1` bytes at most (a frame larger than
/// that takes all of it).
pub(super) async fn read_frames(
    mut recv: quinn::RecvStream,
    out: mpsc::Sender<Queued>,
    (queue, queue_bytes): (Arc<tokio::sync::Semaphore>, usize),
) -> Result<(), DecodeError> {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut log = std::env::var_os(FRAME_LOG_ENV)
        .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                if let Some(f) = log.as_mut() {
                    use std::io::Write as _;
                    let _ = f.write_all(&buf[..n]);
                }
                decoder.feed(&buf[..n]);
                loop {
                    let before = decoder.buffered();
                    match decoder.next_frame() {
                        Ok(Some(f)) => {
                            // Wait for room in the queue: a peer that sends faster than the store
                            // takes its frames is slowed down, not buffered without bound.
                            let size = (before - decoder.buffered()).clamp(1, queue_bytes) as u32;
                            let Ok(permit) = queue.clone().acquire_many_owned(size).await else { return Ok(()) };
                            if out.send((f, permit)).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(None) | Err(_) => return Ok(()),
        }
    }
}

/// Writes one lane's frames, counting them off `unsent` as the stream takes them.
pub(super) async fn write_lane(
    mut send: quinn::SendStream,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    unsent: Arc<Unsent>,
) {
    while let Some(bytes) = frames.recv().await {
        if send.write_all(&bytes).await.is_err() {
            return;
        }
        unsent.written(bytes.len());
    }
    let _ = send.finish();
    // Until the peer has read everything (its last frame may be the Close that says why): the
    // connection is closed after this, which would drop data still in flight. The caller bounds
    // the wait.
    let _ = send.stopped().await;
}

/// Runs the sync engine over one connection.
pub(super) async fn converse(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    initiator: bool,
    one_shot: bool,
    deadline: Option<(tokio::time::Instant, Arc<tokio::sync::Notify>)>,
) -> Result<SyncReport, NetError> {
    let addr = conn.remote_address().to_string();
    let conn_err = |failure: ConnectionFailure| NetError::Connection { peer: addr.clone(), failure };
    let (peer, serial, peer_cert) = peer_identity(&conn)?;
    // A resumed TLS session skips the certificate checks of a full handshake: revocation and
    // expiry are checked again here, for every conversation.
    let crl = shared.crl.read().map(|c| c.clone()).unwrap_or_default();
    if is_revoked(crl.as_deref(), &serial) {
        shared.metrics.refused("revoked");
        conn.close(quinn::VarInt::from_u32(3), b"revoked");
        return Err(conn_err(ConnectionFailure::Revoked { peer: peer.name.clone() }));
    }
    let expired = x509_parser::parse_x509_certificate(peer_cert.as_ref())
        .map(|(_, c)| c.validity().not_after.timestamp().saturating_mul(1000) < now_ms())
        .unwrap_or(true);
    if expired {
        shared.metrics.refused("expired");
        conn.close(quinn::VarInt::from_u32(3), b"certificate expired");
        return Err(conn_err(ConnectionFailure::Expired { peer: peer.name.clone() }));
    }
    if peer.name == shared.me.name {
        shared.metrics.refused("self");
        conn.close(quinn::VarInt::from_u32(2), b"a node cannot sync with itself");
        return Err(conn_err(ConnectionFailure::OwnIdentity));
    }
    // The peer's certificate came through the TLS handshake: it is a fleet member whose
    // signatures this node can check from now on, unless a newer certificate of its author key
    // states another identity (a tablet keeping a desk's old certificate would otherwise be
    // read, and written, as that desk).
    if let Ok(member) = tls::member_of(&peer_cert) {
        let der = peer_cert.as_ref().to_vec();
        match shared.store.call(move |node| node.add_member(member, &der)).await? {
            Ok(true) => {}
            Ok(false) => {
                shared.metrics.refused("superseded");
                conn.close(quinn::VarInt::from_u32(3), b"certificate superseded by a newer one");
                return Err(conn_err(ConnectionFailure::Superseded { peer: peer.name.clone() }));
            }
            Err(e) => tracing::warn!(peer = %peer.name, "cannot record the peer's certificate: {e}"),
        }
    } else {
        tracing::warn!(peer = %peer.name, "the peer's certificate names no author key: its changes will be refused");
    }
    let _slot = match Slot::take(&shared, &peer.name) {
        Ok(slot) => slot,
        Err(why) => {
            shared.metrics.refused("connection_limit");
            tracing::warn!(peer = %peer.name, %addr, "refused a connection: {why}");
            conn.close(quinn::VarInt::from_u32(CloseCode::Unavailable as u32), why.to_string().as_bytes());
            return Err(conn_err(why));
        }
    };
    let id = shared.next_conn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = shared.changes.send(Notice::Link { peer: peer.name.clone(), up: true });
    let _link = LinkNotice { shared: shared.clone(), peer: peer.name.clone() };
    let base_stats = conn.stats();
    let started = Instant::now();

    // Two lanes, opened by the dialer; the first byte of each says which it is.
    let ((sync_send, sync_recv), (blob_send, blob_recv)) = if initiator {
        let (mut s1, r1) = conn.open_bi().await.map_err(|e| conn_err(refusal(&conn, e.into())))?;
        let (mut s2, r2) = conn.open_bi().await.map_err(|e| conn_err(refusal(&conn, e.into())))?;
        s1.write_all(&[LANE_SYNC]).await.map_err(|e| conn_err(refusal(&conn, e.into())))?;
        s2.write_all(&[LANE_BLOB]).await.map_err(|e| conn_err(refusal(&conn, e.into())))?;
        ((s1, r1), (s2, r2))
    } else {
        // The dialler opens both at once; a peer that has not within `LANE_WAIT` (keeping the
        // connection alive, but silent) would hold one of its slots for nothing, for ever.
        let accept = async {
            let mut lanes: [Option<(quinn::SendStream, quinn::RecvStream)>; 2] = [None, None];
            for _ in 0..2 {
                let (s, mut r) = conn.accept_bi().await.map_err(|e| conn_err(e.into()))?;
                let mut tag = [0u8; 1];
                r.read_exact(&mut tag).await.map_err(|e| conn_err(e.into()))?;
                match tag[0] {
                    LANE_SYNC => lanes[0] = Some((s, r)),
                    LANE_BLOB => lanes[1] = Some((s, r)),
                    other => return Err(conn_err(ConnectionFailure::UnknownLane(other))),
                }
            }
            let [Some(a), Some(b)] = lanes else { return Err(conn_err(ConnectionFailure::MissingLane)) };
            Ok((a, b))
        };
        match tokio::time::timeout(LANE_WAIT, accept).await {
            Ok(lanes) => lanes?,
            Err(_) => {
                shared.metrics.refused("no_lanes");
                tracing::warn!(peer = %peer.name, %addr, "closed a connection that opened no lanes within {LANE_WAIT:?}");
                conn.close(quinn::VarInt::from_u32(CloseCode::ProtocolError as u32), b"no lanes opened");
                return Err(conn_err(ConnectionFailure::NoLanes { within: LANE_WAIT }));
            }
        }
    };
    let _ = sync_send.set_priority(1);
    let _ = blob_send.set_priority(0);

    let (frames_tx, mut frames_rx) = mpsc::channel::<Queued>(256);
    let (bad_tx, mut bad_rx) = mpsc::channel::<DecodeError>(2);
    // Received frames waiting for the store, both lanes together: what a peer can make this
    // node hold in memory beyond the frame being read.
    let queue_bytes = shared.limits.unread_bytes_per_peer.clamp(1, u32::MAX as usize);
    let queue = Arc::new(tokio::sync::Semaphore::new(queue_bytes));
    let readers = [
        tokio::spawn(read_lane(sync_recv, frames_tx.clone(), (queue.clone(), queue_bytes), bad_tx.clone())),
        tokio::spawn(read_lane(blob_recv, frames_tx, (queue, queue_bytes), bad_tx)),
    ];
    // The queue's share of the frames being processed, given back once the step is done.
    let mut in_step: Vec<tokio::sync::OwnedSemaphorePermit> = Vec::new();
    let (sync_out, sync_out_rx) = mpsc::unbounded_channel();
    let (blob_out, blob_out_rx) = mpsc::unbounded_channel();
    let unsent = Arc::new(Unsent::new(shared.limits.unsent_bytes_per_peer));
    let writers = [
        tokio::spawn(write_lane(sync_send, sync_out_rx, unsent.clone())),
        tokio::spawn(write_lane(blob_send, blob_out_rx, unsent.clone())),
    ];

    let mut changes = shared.changes.subscribe();
    let me = shared.me.clone();
    let ca = shared.identity.ca.clone();
    let peer_for_engine = peer.clone();
    let engine = Engine::new(peer_for_engine, EngineConfig::new(initiator));
    // The photo chunk window follows the link (sync_protocol::blob::ChunkWindow: its rate
    // times four round trips), updated before every step.
    let mut chunk_window = sync_protocol::blob::ChunkWindow::new();
    let opened = Instant::now();
    let mut step = |mut engine: Engine, work: Work| {
        let me = me.clone();
        let ca = ca.clone();
        let window = chunk_window.update(
            opened.elapsed().as_millis() as u64,
            conn.stats().udp_rx.bytes,
            conn.rtt().as_secs_f64() * 1e3,
        );
        engine.set_blob_window(window);
        shared.store.call(move |node| {
            let ops_before = node.ops_admitted();
            let bytes_before = engine.stats().bytes_received;
            let mut replica = node.replica(&me, Some(&ca));
            let now = now_ms();
            let result = match work {
                Work::Start => engine.start(&mut replica, now),
                Work::Frames(frames) => engine.handle(&mut replica, frames, now),
                Work::Notify(docs) => engine.notify(&mut replica, &docs, now),
                Work::Timeout => engine.handle_timeout(&mut replica, now),
            };
            let mut out = Vec::new();
            while let Some(f) = engine.poll_frame() {
                out.push(f);
            }
            let log = engine.take_log();
            let Collected { changed, held, revocations_updated: crl_updated } = replica.finish();
            let cost = (node.ops_admitted() - ops_before, engine.stats().bytes_received - bytes_before);
            (engine, result, out, (changed, held), crl_updated, log, cost)
        })
    };
    tracing::info!(peer = %peer.name, role = %peer.role, %addr, "connected");
    let echoes: EchoSlot = Arc::new(std::sync::Mutex::new(None));
    if let Ok(mut links) = shared.links.lock() {
        links.insert(peer.name.clone(), PeerLink { id, role: peer.role, conn: conn.clone(), echoes: echoes.clone() });
    }
    let _registered = Registered {
        shared: shared.clone(),
        name: peer.name.clone(),
        id,
        task: tokio::spawn(datagram_loop(conn.clone(), echoes, shared.clone(), peer.name.clone(), peer.role)),
    };

    let mut engine = Some(engine);
    let mut budget = Budget::new();
    let mut work = Some(Work::Start);
    let mut failure: Option<SyncFailure> = None;
    // The engine says when it next has timed work (its periodic nudge, stalled transfers);
    // the wall clock is what it is given as time.
    let wake_at = |engine: &Option<Engine>| {
        let due = engine.as_ref().and_then(Engine::poll_timeout).unwrap_or_else(|| now_ms() + 5_000);
        tokio::time::Instant::now() + Duration::from_millis(due.saturating_sub(now_ms()).clamp(0, 60_000) as u64)
    };
    // When this conversation last became quiescent (everything either side may send, sent
    // and acknowledged), recorded for `status`: on each arrival at quiescence, at most every
    // 10 s while it stays there.
    let mut was_quiescent = false;
    let mut recorded: Option<Instant> = None;
    // Since when this conversation has had work outstanding (for the sync-round metric).
    let mut busy_since = Instant::now();
    // The engine's photo chunk counts as the metrics last heard them (sent, stored, duplicate).
    let mut chunks_told = (0u64, 0u64, 0u64);
    let _wire = WireAccount { shared: shared.clone(), conn: conn.clone() };
    // The peer's asks held while it owes this node's output more than the bound, in order,
    // each with its share of the queue.
    let mut held: std::collections::VecDeque<Queued> = std::collections::VecDeque::new();
    // Bytes made for the peer by steps taken while it owed more than the bound.
    let mut made_while_over = 0usize;
    loop {
        if let Some(w) = work.take() {
            let Some(mut e) = engine.take() else { break };
            // While the peer owes much, what its changes would prompt this side to push waits.
            e.set_output_paused(unsent.over());
            let (e, result, out, (changed, held), crl_updated, log, (ops, bytes)) = step(e, w).await?;
            let st = e.stats();
            let chunks = (st.chunks_sent, st.chunks_received, st.chunks_duplicate);
            shared.metrics.photo_chunks(
                chunks.0.saturating_sub(chunks_told.0),
                chunks.1.saturating_sub(chunks_told.1),
                chunks.2.saturating_sub(chunks_told.2),
            );
            chunks_told = chunks;
            in_step.clear();
            if let Some(over) = budget.spend(ops, bytes, &shared.limits) {
                let why = SyncFailure::OverBudget(over);
                shared.metrics.refused("budget");
                tracing::warn!(peer = %peer.name, %addr, "closing: {why}");
                let close = Frame::Close { code: CloseCode::Unavailable as u16, reason: why.to_string() };
                let _ = sync_out.send(close.to_bytes());
                engine = Some(e);
                failure = Some(why);
                break;
            }
            for line in log {
                tracing::info!(peer = %peer.name, "{line}");
            }
            let over = unsent.over();
            for (lane, f) in out {
                let bytes = f.to_bytes();
                if over {
                    made_while_over += bytes.len();
                }
                unsent.add(bytes.len());
                let _ = if lane == Lane::Sync { sync_out.send(bytes) } else { blob_out.send(bytes) };
            }
            if !changed.is_empty() {
                let _ = shared.changes.send(Notice::Docs { from: id, docs: Arc::new(changed) });
            }
            if !held.is_empty() {
                let _ = shared.changes.send(Notice::Held { docs: Arc::new(held) });
            }
            if crl_updated {
                install_revocations(&shared).await;
            }
            let quiescent = e.is_quiescent();
            if quiescent && !was_quiescent {
                shared.metrics.sync_round(&peer.name, busy_since.elapsed().as_secs_f64());
            } else if !quiescent && was_quiescent {
                busy_since = Instant::now();
            }
            if quiescent && (!was_quiescent || recorded.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))) {
                let name = peer.name.clone();
                let _ = shared.store.call(move |n| n.record_sync(&name, Ok(()), now_ms())).await;
                recorded = Some(Instant::now());
            }
            was_quiescent = quiescent;
            let done = one_shot && e.is_done();
            let closed = e.is_closed();
            tracing::debug!(peer = %peer.name, done, closed, quiescent = e.is_quiescent(), stats = ?e.stats(), "step");
            engine = Some(e);
            if let Err(e) = result {
                shared.metrics.refused("sync_error");
                // Tell the peer why, so that it does not wait (and shows nothing as delivered).
                let close = Frame::Close { code: CloseCode::Unavailable as u16, reason: e.to_string() };
                let _ = sync_out.send(close.to_bytes());
                failure = Some(SyncFailure::Engine(e));
                break;
            }
            if done || closed {
                break;
            }
        }
        if !unsent.over() {
            made_while_over = 0;
        }
        let owed = unsent.over();
        let deferred = engine.as_ref().is_some_and(Engine::has_deferred);
        tokio::select! {
            // The peer has read enough: its held asks are answered, in order, then what this
            // side held back is pushed.
            _ = std::future::ready(()), if !owed && (!held.is_empty() || deferred) => {
                if held.is_empty() {
                    work = Some(Work::Notify(Vec::new()));
                } else {
                    let n = held.len().min(MAX_FRAMES_PER_STEP);
                    let mut batch = Vec::with_capacity(n);
                    for (f, permit) in held.drain(..n) {
                        batch.push(f);
                        in_step.push(permit);
                    }
                    work = Some(Work::Frames(batch));
                }
            }
            Some(bad) = bad_rx.recv() => {
                let bad = SyncFailure::BadFrame(bad);
                shared.metrics.refused("protocol");
                tracing::warn!(peer = %peer.name, %addr, "closing: {bad}");
                let close = Frame::Close { code: CloseCode::ProtocolError as u16, reason: bad.to_string() };
                let _ = sync_out.send(close.to_bytes());
                failure = Some(bad);
                break;
            }
            // While the peer has not read what it was sent, its asks wait; once enough wait, or
            // the answers to what it carried meanwhile pass the bound too, so do its other
            // frames (its stream's window full, the peer waits too).
            _ = unsent.written.notified(), if owed => {}
            frame = frames_rx.recv(), if made_while_over <= unsent.limit && held.len() < MAX_FRAMES_PER_STEP => match frame {
                Some(first) => {
                    let over = unsent.over();
                    let mut batch = Vec::new();
                    let mut next = Some(first);
                    while let Some((f, permit)) = next.take() {
                        if f.asks() && (over || !held.is_empty()) {
                            // Behind the asks already held: they are answered in order.
                            held.push_back((f, permit));
                        } else {
                            batch.push(f);
                            in_step.push(permit);
                        }
                        if batch.len() < MAX_FRAMES_PER_STEP && held.len() < MAX_FRAMES_PER_STEP {
                            next = frames_rx.try_recv().ok();
                        }
                    }
                    if !batch.is_empty() {
                        work = Some(Work::Frames(batch));
                    }
                }
                None => {
                    if one_shot && !engine.as_ref().is_some_and(Engine::is_done) {
                        // The readers end when the connection does: say why, if the peer said.
                        let why = match conn.close_reason() {
                            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                                Some(String::from_utf8_lossy(&c.reason).into_owned())
                            }
                            Some(other) => Some(other.to_string()),
                            None => None,
                        };
                        failure = Some(SyncFailure::PeerEnded(why));
                    }
                    break;
                }
            },
            notice = changes.recv() => match notice {
                Ok(Notice::Docs { from, docs }) if from != id => work = Some(Work::Notify(docs.to_vec())),
                Ok(Notice::Revocations) => {
                    let crl = shared.crl.read().map(|c| c.clone()).unwrap_or_default();
                    if is_revoked(crl.as_deref(), &serial) {
                        failure = Some(SyncFailure::Revoked { peer: peer.name.clone() });
                        conn.close(quinn::VarInt::from_u32(3), b"revoked");
                        break;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too many notices missed: ask the engine to look at everything it was told of.
                    work = Some(Work::Notify(Vec::new()));
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tokio::time::sleep_until(wake_at(&engine)) => work = Some(Work::Timeout),
            _ = async {
                match &deadline {
                    Some((d, stop)) => tokio::select! {
                        _ = tokio::time::sleep_until(*d) => {}
                        _ = stop.notified() => {}
                    },
                    None => std::future::pending::<()>().await,
                }
            } => {
                failure = Some(SyncFailure::TimeLimit);
                conn.close(quinn::VarInt::from_u32(5), b"time limit");
                break;
            }
            reason = conn.closed() => {
                let normal = matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(0));
                let finished = engine.as_ref().is_some_and(Engine::is_done);
                // A one-shot sync succeeds only once it is done, however politely the peer left.
                if one_shot && !finished {
                    failure = Some(SyncFailure::PeerClosed(reason));
                } else if !normal && !finished {
                    failure = Some(SyncFailure::Lost(reason));
                }
                break;
            }
        }
    }

    // A one-shot initiator says goodbye once both sides are done.
    if let Some(e) = engine.as_mut()
        && one_shot
        && e.is_done()
    {
        e.close();
        while let Some((_, f)) = e.poll_frame() {
            let _ = sync_out.send(f.to_bytes());
        }
    }
    drop(sync_out);
    drop(blob_out);
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
    }
    if one_shot {
        conn.close(quinn::VarInt::from_u32(0), b"done");
    }
    for r in readers {
        r.abort();
    }
    let end_stats = conn.stats();
    let stats = engine.map(|e| e.stats().clone()).unwrap_or_default();
    if let Some(f) = failure {
        // Close with the reason, so the peer does not take our going for a normal end.
        let reason: Vec<u8> = f.to_string().bytes().take(200).collect();
        conn.close(quinn::VarInt::from_u32(CloseCode::Unavailable as u32), &reason);
        tracing::info!(peer = %peer.name, "conversation ended: {f}");
        let (name, why) = (peer.name.clone(), f.to_string());
        let _ = shared.store.call(move |n| n.record_sync(&name, Err(&why), now_ms())).await;
        return Err(NetError::Sync { peer: peer.name.clone(), failure: f, partial: Some(Box::new(stats)) });
    }
    Ok(SyncReport {
        peer: peer.name.clone(),
        peer_role: peer.role.to_string(),
        stats,
        udp_bytes_sent: end_stats.udp_tx.bytes - base_stats.udp_tx.bytes,
        udp_bytes_received: end_stats.udp_rx.bytes - base_stats.udp_rx.bytes,
        handshake_ms: 0.0,
        sync_ms: started.elapsed().as_secs_f64() * 1e3,
        rtt_ms: conn.rtt().as_secs_f64() * 1e3,
        congestion: super::congestion::congestion().as_str().to_string(),
    })
}

/// Adds a connection's bytes on the wire to the metrics' closed total when its conversation ends.
pub(super) struct WireAccount {
    shared: Arc<Shared>,
    conn: quinn::Connection,
}

impl Drop for WireAccount {
    fn drop(&mut self) {
        self.shared.metrics.connection_closed(&self.conn.stats());
    }
}

pub(super) enum Work {
    Start,
    Frames(Vec<Frame>),
    Notify(Vec<DocId>),
    /// The engine's timer ([`Engine::poll_timeout`]) is due.
    Timeout,
}

/// The reason a peer refused us, when the first stream operation fails.
pub(super) fn refusal(conn: &quinn::Connection, fallback: ConnectionFailure) -> ConnectionFailure {
    match conn.close_reason() {
        Some(r) => ConnectionFailure::RefusedByPeer(r),
        None => fallback,
    }
}

/// After a newer revocation list arrived: new handshakes use it, and connections with
/// revoked peers are closed.
pub(super) async fn install_revocations(shared: &Arc<Shared>) {
    let Ok(Ok(Some((number, der)))) = shared.store.call(|n| n.revocations()).await else { return };
    if let Ok(mut c) = shared.crl.write() {
        *c = Some(der.clone());
    }
    if let Some(ep) = shared.endpoint.get()
        && let Ok(cfg) = server_config_counting(&shared.identity, Some(&der), shared.calls_carried.clone())
    {
        ep.set_server_config(Some(cfg));
    }
    tracing::info!("revocation list {number} installed");
    let _ = shared.changes.send(Notice::Revocations);
}
