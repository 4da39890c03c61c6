//! Calls: path probes and their echoes, the hub's router loop, a desk's answer, media, and a
//! party's audio over QUIC datagrams.

use std::collections::HashMap;

use crate::node::LONGEST_CALL;

use super::*;

/// Datagram types: a path probe, and its echo.
pub(super) const DG_PROBE: u8 = 1;
pub(super) const DG_ECHO: u8 = 2;
/// A probe is the size of a 20 ms voice frame at 32 kbit/s (80 bytes) with its header.
pub(super) const PROBE_BYTES: usize = 88;
/// Probes per measurement, 20 ms apart: one second of voice-like traffic.
pub(super) const PROBES: usize = sync_protocol::call::GATE_PROBES;

/// Answers path probes, hands echoes to a running measurement, relays voice (on a hub) or
/// hands it to the call in progress (on a party).
pub(super) async fn datagram_loop(
    conn: quinn::Connection,
    echoes: EchoSlot,
    shared: Arc<Shared>,
    peer: String,
    role: Role,
) {
    while let Ok(d) = conn.read_datagram().await {
        match d.first() {
            Some(&(DG_VOICE | DG_BYE)) if d.len() >= 5 => {
                let tag = u32::from_le_bytes([d[1], d[2], d[3], d[4]]);
                if shared.me.role == Role::Hub {
                    let other = shared.relay.lock().ok().and_then(|r| {
                        r.get(&tag)
                            .and_then(|(_, (a, b), _)| relay_to((a.as_str(), b.as_str()), &peer))
                            .map(str::to_string)
                    });
                    let link = other.and_then(|o| shared.links.lock().ok().and_then(|l| l.get(&o).cloned()));
                    if let Some(link) = link {
                        let _ = link.conn.send_datagram(d);
                    }
                    continue;
                }
                if role != Role::Hub {
                    // A party's call is carried by its hub: a desk or tablet that dials this node
                    // (a desk listens on its LAN) and learnt the call's tag must not speak into
                    // the call, re-anchor its playout, or end it.
                    continue;
                }
                let msg = if d[0] == DG_BYE {
                    Some(VoiceIn::Bye)
                } else {
                    VoiceFrame::parse(&d).map(|f| VoiceIn::Frame(f, Instant::now()))
                };
                if let (Some(msg), Ok(slot)) = (msg, shared.voice_in.lock())
                    && let Some((t, tx)) = slot.as_ref()
                    && *t == tag
                {
                    let _ = tx.send(msg);
                }
            }
            Some(&DG_PROBE) => {
                let mut echo = d.to_vec();
                echo[0] = DG_ECHO;
                let _ = conn.send_datagram(echo.into());
            }
            Some(&DG_ECHO) if d.len() >= 5 => {
                let seq = u32::from_le_bytes([d[1], d[2], d[3], d[4]]);
                if let Ok(slot) = echoes.lock()
                    && let Some(tx) = slot.as_ref()
                {
                    let _ = tx.send((seq, Instant::now()));
                }
            }
            _ => {}
        }
    }
}

/// From now on the hub relays the voice of `call` (in session `sid`) between `parties`. Voice
/// datagrams name a call by its tag alone, and a call's id is chosen by whoever asks for it: a
/// call connected in another session under a tag a call still under way holds does not take
/// that relay over (a tablet reusing the id of a call it learnt would otherwise cut its audio,
/// or be sent the desk's voice). A relay is kept as long as a call can last, then forgotten:
/// the table stays bounded, and a tag two calls share by chance (32 bits) is free again.
fn relay_call(shared: &Shared, sid: SessionId, call: &str, parties: (String, String)) {
    let Ok(mut relay) = shared.relay.lock() else { return };
    relay.retain(|_, (_, _, at)| at.elapsed() < RELAY_KEPT);
    match relay.entry(call_tag(call)) {
        std::collections::hash_map::Entry::Occupied(held) if held.get().0 != sid => {
            tracing::warn!(session = %sid, %call, other = %held.get().0, "a call under way in another session has this tag: its voice is not relayed");
        }
        std::collections::hash_map::Entry::Occupied(mut held) => {
            held.insert((sid, parties, Instant::now()));
        }
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert((sid, parties, Instant::now()));
        }
    }
}

/// How long a hub keeps relaying a call: the longest a call lasts ([`LONGEST_CALL`]), and a
/// minute for its setup.
const RELAY_KEPT: Duration = Duration::from_secs(LONGEST_CALL.as_secs() + 60);

/// Where a hub relays a call's voice from `from`: to the other party, and nowhere if `from` is
/// not a party (a fleet member that learnt the call's tag must not speak into it or end it).
fn relay_to<'a>((a, b): (&'a str, &'a str), from: &str) -> Option<&'a str> {
    if a == from {
        Some(b)
    } else if b == from {
        Some(a)
    } else {
        None
    }
}

/// Measures the path to a connected peer with voice-like probes: round trips, jitter, loss.
/// A peer not connected now yields a measurement with no probes (no call is possible).
/// `window` numbers the probes, so that a late echo of an earlier measurement is not taken
/// for one of this one's.
pub(super) async fn measure_path(shared: &Shared, peer: &str, window: u32) -> PathQuality {
    let link = shared.links.lock().ok().and_then(|l| l.get(peer).cloned());
    let Some(link) = link else {
        return PathQuality { rtt_ms: f64::INFINITY, jitter_ms: 0.0, loss: 1.0, burst_ratio: 1.0, probes: 0 };
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Ok(mut slot) = link.echoes.lock() {
        *slot = Some(tx);
    }
    let base = window.wrapping_mul(PROBES as u32);
    let mut sent: Vec<Option<Instant>> = vec![None; PROBES];
    let mut tick = tokio::time::interval(Duration::from_millis(sync_protocol::call::GATE_PROBE_GAP_MS));
    for (seq, at) in sent.iter_mut().enumerate() {
        tick.tick().await;
        let mut probe = vec![0u8; PROBE_BYTES];
        probe[0] = DG_PROBE;
        probe[1..5].copy_from_slice(&base.wrapping_add(seq as u32).to_le_bytes());
        *at = Some(Instant::now());
        if link.conn.send_datagram(probe.into()).is_err() {
            *at = None;
        }
    }
    let mut rtts: Vec<Option<f64>> = vec![None; PROBES];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(sync_protocol::call::GATE_ECHO_WAIT_MS);
    loop {
        tokio::select! {
            echo = rx.recv() => match echo {
                Some((seq, at)) => {
                    let i = seq.wrapping_sub(base) as usize;
                    if let Some(Some(t)) = sent.get(i) {
                        rtts[i] = Some(at.duration_since(*t).as_secs_f64() * 1e3);
                    }
                    if rtts.iter().all(Option::is_some) {
                        break;
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if let Ok(mut slot) = link.echoes.lock() {
        *slot = None;
    }
    let lost: Vec<usize> = rtts.iter().enumerate().filter(|(_, r)| r.is_none()).map(|(i, _)| i).collect();
    tracing::debug!(peer, ?lost, unsent = sent.iter().filter(|s| s.is_none()).count(), "path probes");
    quality_from_probes(&rtts)
}

pub(super) fn announce(shared: &Shared, docs: Vec<DocId>) {
    let _ = shared.changes.send(Notice::Docs { from: 0, docs: Arc::new(docs) });
}

/// The hub's call router: drives the shared [`Router`] (`sync_protocol::router`) on the wall
/// clock. It tells the router of every changed session, steps what the router says is due,
/// measures the requester's path when asked, and sleeps until the router's next deadline or
/// the next change. The router's decisions are written by the store thread
/// ([`crate::node::Node::route_call`]).
pub(super) async fn router_loop(shared: Arc<Shared>) {
    let mut changes = shared.changes.subscribe();
    let wait_ms = i64::try_from(outcome_wait().as_millis()).unwrap_or(i64::MAX / 4);
    let (at_once, per_hour) = shared.limits.calls_per_device;
    let made = shared.store.call(move |n| n.call_router(wait_ms).map(|r| r.with_call_limits(at_once, per_hour))).await;
    let Ok(Ok(router)) = made else { return };
    // At start: every open escalation, and every connected call still without outcomes.
    let Some(mut router) = follow_listed(&shared, router, &[Status::Routing, Status::Connected], true).await else {
        return;
    };
    // Now and then, every escalation in progress, in case a notice was missed (on its own
    // schedule: a steady flow of notices must not put it off).
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (heard_tx, mut heard_rx) = mpsc::unbounded_channel();
    let mut gauges = Gauges { heard: heard_tx, per_requester: HashMap::new() };
    loop {
        // Everything due, in turn, until nothing is (each step that moves a call on makes
        // the next one due at once).
        loop {
            let due = router.handle_timeout(now_ms());
            if due.is_empty() {
                break;
            }
            for d in due {
                let next = match d {
                    Due::Route(doc) => route_step(&shared, &mut gauges, router, SessionId::from_bytes(doc)).await,
                    Due::Outcomes(doc) => flag_outcomes(&shared, router, SessionId::from_bytes(doc)).await,
                };
                let Some(next) = next else { return };
                router = next;
            }
        }
        let until_due = router.poll_timeout().map(|t| Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0)));
        tokio::select! {
            notice = changes.recv() => match notice {
                Ok(Notice::Docs { docs, .. }) => {
                    let ids: Vec<SessionId> =
                        docs.iter().filter(|d| !is_directory_id(d)).map(|d| SessionId::from_bytes(*d)).collect();
                    if !ids.is_empty() {
                        let Some(next) = follow(&shared, router, ids, false).await else { return };
                        router = next;
                    }
                }
                Ok(_) => {}
                // Notices were lost: look again at everything followed (a desk's answer, or
                // another ICB's hub connecting a call handed to it, may be among them).
                Err(broadcast::error::RecvError::Lagged(_)) => router.wake_all(now_ms()),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Some((sid, requester, heard)) = heard_rx.recv() => {
                match router.heard(sid.to_bytes(), heard, now_ms()) {
                    Some(Listen::Again(next)) => gauges.start(&shared, sid, requester, next),
                    Some(Listen::Judge(q)) => {
                        tracing::info!(session = %sid, %requester, rtt_ms = q.rtt_ms, jitter_ms = q.jitter_ms, loss = q.loss, "measured the requester's path");
                    }
                    None => {}
                }
            }
            _ = rescan.tick() => {
                router.wake_all(now_ms());
                let Some(next) = follow_listed(&shared, router, &[Status::Routing], false).await else { return };
                router = next;
            }
            _ = tokio::time::sleep(until_due.unwrap_or(RESCAN)) => {}
        }
    }
}

/// Tells the router of the sessions in these statuses ([`crate::node::Node::follow_escalations`]).
async fn follow_listed(shared: &Shared, router: Router, statuses: &[Status], resume: bool) -> Option<Router> {
    let mut ids = Vec::new();
    for status in statuses {
        let filter = ListFilter { status: Some(*status), ..ListFilter::default() };
        match shared.store.call(move |n| n.list(&filter)).await {
            Ok(Ok(cards)) => ids.extend(cards.into_iter().map(|c| c.id)),
            Ok(Err(e)) => tracing::warn!("cannot list the sessions in {status}: {e}"),
            Err(_) => return None,
        }
    }
    follow(shared, router, ids, resume).await
}

/// Tells the router of these changed sessions. `None` once the store is closed.
async fn follow(shared: &Shared, mut router: Router, ids: Vec<SessionId>, resume: bool) -> Option<Router> {
    let (router, result) = shared
        .store
        .call(move |n| {
            let r = n.follow_escalations(&mut router, &ids, resume, now_ms());
            (router, r)
        })
        .await
        .ok()?;
    if let Err(e) = result {
        tracing::warn!("cannot look for escalations to route: {e}");
    }
    Some(router)
}

/// The gate's measurements under way. Each runs on its own task and reports to the router
/// loop, which meanwhile routes every other call: a requester whose link never echoes holds
/// the gate for three windows (7.5 s), and measured in the loop itself it held every other
/// call in the ICB as long (and an escalation a change, for hours). Measurements of one
/// requester go one at a time: its probes' echoes come back on its one link.
struct Gauges {
    heard: mpsc::UnboundedSender<(SessionId, String, PathQuality)>,
    per_requester: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl Gauges {
    /// Measures window `window` of `requester`'s path for the session, once its earlier
    /// measurements are done.
    fn start(&mut self, shared: &Arc<Shared>, sid: SessionId, requester: String, window: u32) {
        // Forget the requesters no measurement holds or waits for.
        self.per_requester.retain(|_, turn| Arc::strong_count(turn) > 1);
        let turn = self.per_requester.entry(requester.clone()).or_default().clone();
        let (shared, heard) = (shared.clone(), self.heard.clone());
        tokio::spawn(async move {
            let _turn = turn.lock().await;
            let q = measure_path(&shared, &requester, window).await;
            let _ = heard.send((sid, requester, q));
        });
    }
}

/// One step of the router for a session, and what follows from it: the path measured for
/// the gate (on its own task), the voice relayed once connected. `None` once the store is
/// closed.
async fn route_step(shared: &Arc<Shared>, gauges: &mut Gauges, mut router: Router, sid: SessionId) -> Option<Router> {
    let (mut router, step) = shared
        .store
        .call(move |n| {
            let r = n.route_call(&mut router, sid, now_ms());
            (router, r)
        })
        .await
        .ok()?;
    let routed = match step {
        Ok(routed) => routed,
        Err(e) => {
            tracing::warn!(session = %sid, "cannot route the call: {e}");
            router.forget(&sid.to_bytes());
            return Some(router);
        }
    };
    if routed.wrote {
        announce(shared, vec![sid.to_bytes()]);
    }
    match routed.step {
        Step::Decided(decision) => match &decision.action {
            Action::Wait => {}
            Action::Measure => {
                // A burst of loss is not a bad link: the router's gate says, as each window is
                // heard, whether to listen another second, and which second to judge.
                gauges.start(shared, sid, decision.requester.clone(), 0);
            }
            Action::Connected { desk, .. } => {
                // From now on the hub relays the call's voice between the two.
                relay_call(shared, sid, &decision.call, (decision.requester.clone(), desk.clone()));
                tracing::info!(session = %sid, call = %decision.call, %desk, "call connected; relaying its voice");
            }
            other => tracing::info!(session = %sid, call = %decision.call, "call routing: {other}"),
        },
        // A call this hub handed to another ICB's hub, now connected there: relay the
        // requester's voice to that hub, which relays it to its desk.
        Step::Done { relay: Some(Relay { call, requester, hub }) } => {
            relay_call(shared, sid, &call, (requester, hub.clone()));
            tracing::info!(session = %sid, %call, %hub, "call connected out of area; relaying its voice");
        }
        Step::Done { relay: None } | Step::Listening | Step::NotFollowed => {}
    }
    Some(router)
}

/// The outcomes of a call that connected a while ago: those still missing are flagged
/// `not_reported`. `None` once the store is closed.
async fn flag_outcomes(shared: &Shared, router: Router, sid: SessionId) -> Option<Router> {
    match shared.store.call(move |n| n.flag_unreported(sid, now_ms())).await.ok()? {
        Ok(sides) if !sides.is_empty() => {
            let sides: Vec<&str> = sides.iter().map(|s| s.as_str()).collect();
            tracing::info!(session = %sid, sides = %sides.join(", "), "no outcome recorded after the call: flagged not reported");
            announce(shared, vec![sid.to_bytes()]);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(session = %sid, "cannot flag unreported outcomes: {e}"),
    }
    Some(router)
}

/// How long after a call connects the hub waits for both outcomes before flagging a missing
/// one `not_reported` (`OUTPOST_OUTCOME_WAIT_S`, default a day).
pub(super) fn outcome_wait() -> Duration {
    let secs = std::env::var(OUTCOME_WAIT_ENV).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(24 * 3600);
    Duration::from_secs(secs)
}

/// The environment variable setting how long the hub waits for outcomes after a call.
pub const OUTCOME_WAIT_ENV: &str = "OUTPOST_OUTCOME_WAIT_S";

/// How often the call loops look at every session in the status they follow, in case a
/// notice of a change was missed.
pub(super) const RESCAN: Duration = Duration::from_secs(2);

/// The sessions to look at next: those a change notice names; or, at each `tick` and after
/// missed notices, every session in `status`. `None` once the daemon is stopping.
pub(super) async fn next_candidates(
    shared: &Shared,
    changes: &mut broadcast::Receiver<Notice>,
    tick: &mut tokio::time::Interval,
    status: Status,
) -> Option<Vec<SessionId>> {
    tokio::select! {
        n = changes.recv() => match n {
            Ok(Notice::Docs { docs, .. }) => {
                return Some(docs.iter().filter(|d| !is_directory_id(d)).map(|d| SessionId::from_bytes(*d)).collect());
            }
            Ok(_) => return Some(Vec::new()),
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return None,
        },
        _ = tick.tick() => {}
    }
    let filter = ListFilter { status: Some(status), ..ListFilter::default() };
    match shared.store.call(move |n| n.list(&filter).map(|c| c.into_iter().map(|c| c.id).collect::<Vec<_>>())).await {
        Ok(Ok(ids)) => Some(ids),
        Ok(Err(e)) => {
            tracing::warn!("cannot list sessions: {e}");
            Some(Vec::new())
        }
        Err(_) => None,
    }
}

/// A desk's automatic answer: every call that rings here is answered, unless the desk is in
/// another call ([`crate::node::Node::answer_call`] refuses; the ring passes to the next desk).
pub(super) async fn answer_loop(shared: Arc<Shared>) {
    let mut changes = shared.changes.subscribe();
    let mut tick = tokio::time::interval(RESCAN);
    loop {
        let Some(ids) = next_candidates(&shared, &mut changes, &mut tick, Status::Routing).await else { return };
        for sid in ids {
            match shared.store.call(move |n| n.answer_call(sid, now_ms())).await {
                Ok(Ok(Some((call, attempt)))) => {
                    tracing::info!(session = %sid, %call, attempt, "answered the call");
                    announce(&shared, vec![sid.to_bytes()]);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(session = %sid, "not answering: {e}"),
                Err(_) => return,
            }
        }
    }
}

/// A party's side of call audio: joins every connected call this node is part of (once), with
/// the media plan of the call (the requester's, from `call escalate --play/--record`) or the
/// desk's own, and runs it to its end.
pub(super) async fn media_loop(shared: Arc<Shared>, default_plan: crate::media::MediaPlan) {
    let mut changes = shared.changes.subscribe();
    let mut joined: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(RESCAN);
    loop {
        let Some(ids) = next_candidates(&shared, &mut changes, &mut tick, Status::Connected).await else { return };
        if ids.is_empty() {
            continue;
        }
        let plan = default_plan.clone();
        let Ok(Ok(found)) = shared.store.call(move |n| n.calls_to_join(&ids, &plan)).await else { continue };
        for (sid, call, side, plan) in found {
            if !joined.insert(call.clone()) {
                continue;
            }
            tracing::info!(session = %sid, %call, side = side.as_str(), "joining the call's audio");
            if let Err(e) = run_call_audio(&shared, sid, &call, side, &plan).await {
                tracing::warn!(session = %sid, %call, "call audio failed: {e}");
            }
        }
    }
}

/// The longest silence from the other side before a leg counts as dropped: a blackout of up
/// to 10 s (a tunnel, a cutting) is survived.
pub(super) const DROP_AFTER: Duration = Duration::from_secs(12);
/// Playout delay of the jitter buffer.
pub(super) const JITTER_DELAY_MS: u32 = 60;

/// Sends this party's audio every 20 ms, plays what arrives through the jitter buffer, and
/// writes the leg's record (figures and estimated MOS) into the session when the call ends.
pub(super) async fn run_call_audio(
    shared: &Arc<Shared>,
    sid: SessionId,
    call: &str,
    side: sync_protocol::vocab::Side,
    plan: &crate::media::MediaPlan,
) -> Result<(), String> {
    let tag = call_tag(call);
    let play = match &plan.play {
        Some(p) => Some(crate::media::read_wav(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let requester = side == sync_protocol::vocab::Side::Requester;
    // Until the call ends, every connection keeps its queue short in front of the audio.
    let carried = super::congestion::CallAudio::start(&shared.calls_carried);
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Ok(mut slot) = shared.voice_in.lock() {
        *slot = Some((tag, tx));
    }
    let hang_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Ok(mut live) = shared.live_call.lock() {
        *live = Some(LiveCall { session: sid, call: call.to_string(), hang_up: hang_up.clone() });
    }
    let hub_conn =
        || shared.links.lock().ok().and_then(|l| l.values().find(|p| p.role == Role::Hub).map(|p| p.conn.clone()));
    let started_ms = now_ms();
    let started = Instant::now();
    let mut enc = AdpcmState::default();
    let mut jb = JitterBuffer::new(JITTER_DELAY_MS);
    let mut recorded: Vec<i16> = Vec::new();
    let mut last_heard = Instant::now();
    let mut checked = Instant::now();
    let mut sent = 0u64;
    let mut rtt_samples: Vec<f64> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(FRAME_MS)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq: u32 = 0;
    let end = loop {
        tick.tick().await;
        // Send: the requester's file ends the call; a desk sends until the other side hangs up.
        let from = seq as usize * FRAME_SAMPLES;
        if hang_up.load(std::sync::atomic::Ordering::Acquire) {
            break LegEnd::Hangup;
        }
        // A person's page, when one is open, is the microphone and the speaker.
        let page = shared.voice_io.lock().ok().and_then(|v| v.clone());
        let pcm: Vec<i16> = match (&page, &play) {
            (Some(io), _) => io.next_mic_frame().unwrap_or_else(|| vec![0; FRAME_SAMPLES]),
            (None, Some(p)) if from < p.len() => p[from..(from + FRAME_SAMPLES).min(p.len())].to_vec(),
            (None, Some(_)) if requester => break LegEnd::Hangup,
            _ => vec![0; FRAME_SAMPLES],
        };
        let frame = VoiceFrame {
            call: tag,
            seq,
            ts_ms: seq.wrapping_mul(FRAME_MS),
            codec: CODEC_ADPCM,
            payload: encode(&mut enc, &pcm),
        };
        if let Some(conn) = hub_conn() {
            if conn.send_datagram(frame.to_bytes().into()).is_ok() {
                sent += 1;
            }
            if seq.is_multiple_of(50) {
                rtt_samples.push(conn.rtt().as_secs_f64() * 1e3);
            }
        }
        seq = seq.wrapping_add(1);
        // Receive and play.
        let mut hung_up = false;
        while let Ok(msg) = rx.try_recv() {
            match msg {
                VoiceIn::Frame(f, at) if f.codec == CODEC_ADPCM => {
                    if let Some(pcm) = decode(&f.payload) {
                        last_heard = at;
                        jb.push(f.seq, pcm, at.duration_since(started).as_secs_f64() * 1e3);
                    }
                }
                VoiceIn::Frame(..) => {}
                VoiceIn::Bye => hung_up = true,
            }
        }
        if let Some(pcm) = jb.pop() {
            if let Some(io) = &page {
                // A page that cannot keep up loses audio, never holds the call back.
                let _ = io.speaker.try_send(pcm.clone());
            }
            recorded.extend(pcm);
        }
        if hung_up {
            break LegEnd::OtherHungUp;
        }
        // Silence: the hang-up datagram may have been lost. The other side's leg record, synced
        // like any change, says for sure whether it hung up.
        if last_heard.elapsed() > Duration::from_secs(1) && checked.elapsed() > Duration::from_millis(500) {
            checked = Instant::now();
            let c = call.to_string();
            if let Ok(Ok(Some(other))) = shared.store.call(move |n| n.other_leg_end(sid, &c)).await
                && other == LegEnd::Hangup
            {
                break LegEnd::OtherHungUp;
            }
        }
        if last_heard.elapsed() > DROP_AFTER {
            break LegEnd::Dropped;
        }
        if started.elapsed() > LONGEST_CALL {
            break LegEnd::LongestCall;
        }
    };
    drop(carried);
    if end == LegEnd::Hangup
        && let Some(conn) = hub_conn()
    {
        // Spread over about a second so that one burst of loss does not take every copy; the
        // leg record written below is the reliable word if all are lost.
        tokio::spawn(async move {
            for wait_ms in [0u64, 40, 120, 300, 700] {
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                let _ = conn.send_datagram(bye(tag).into());
            }
        });
    }
    if let Ok(mut slot) = shared.voice_in.lock() {
        *slot = None;
    }
    if let Ok(mut live) = shared.live_call.lock() {
        *live = None;
    }
    if let Ok(mut people) = shared.call_people.lock() {
        people.remove(&sid);
    }
    // Play out what is still buffered.
    for pcm in jb.drain() {
        recorded.extend(pcm);
    }
    if let Some(path) = &plan.record {
        crate::media::write_wav(path, &recorded).map_err(|e| e.to_string())?;
    }
    let st = jb.stats;
    let rtt = if rtt_samples.is_empty() { 0.0 } else { rtt_samples.iter().sum::<f64>() / rtt_samples.len() as f64 };
    let q = PathQuality {
        rtt_ms: rtt,
        jitter_ms: st.jitter_ms,
        loss: st.loss(),
        burst_ratio: 1.0,
        probes: st.frames() as u32,
    };
    let rating = rate(&q, &ADPCM_32K);
    let duration_ms = started.elapsed().as_millis() as i64;
    let leg = Leg {
        call: call.to_string(),
        node: shared.me.name.clone(),
        side: Some(side),
        started_ms,
        duration_ms,
        codec: ADPCM_32K.name.to_string(),
        frames_sent: sent as i64,
        frames_received: st.received as i64,
        frames_concealed: st.concealed as i64,
        frames_late: st.late as i64,
        loss: st.loss(),
        jitter_ms: st.jitter_ms,
        longest_gap_ms: st.longest_gap_ms as i64,
        rtt_ms: rtt,
        mos: rating.mos,
        end: end.clone(),
        at_ms: 0,
        absent: Vec::new(),
    };
    let dropped = end == LegEnd::Dropped;
    let call_id = call.to_string();
    let done = shared
        .store
        .call(move |n| -> Result<(), crate::node::NodeError> {
            n.record_call_leg(sid, &leg, now_ms())?;
            if dropped {
                n.request_callback_after_drop(sid, &call_id, now_ms())?;
            }
            Ok(())
        })
        .await;
    match done {
        Ok(Ok(())) => {
            shared.metrics.call_leg(end.as_str(), rating.mos);
            tracing::info!(session = %sid, %call, end = end.as_str(), loss = st.loss(), mos = rating.mos, "call leg ended");
            announce(shared, vec![sid.to_bytes()]);
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_relays_a_calls_voice_between_its_parties_only() {
        let parties = ("amb-07", "desk-derm-1");
        assert_eq!(relay_to(parties, "amb-07"), Some("desk-derm-1"));
        assert_eq!(relay_to(parties, "desk-derm-1"), Some("amb-07"));
        // A stolen tablet that learnt the call's tag from a shared session's routing log.
        assert_eq!(relay_to(parties, "amb-66"), None);
    }
}
