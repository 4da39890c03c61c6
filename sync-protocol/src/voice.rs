//! Voice for escalated calls, without I/O: the codec, the media datagram, and the receiver's
//! jitter buffer with loss concealment.
//!
//! **Codec: IMA ADPCM at 8 kHz, 4 bits a sample: 32 kbit/s.** Chosen because it fits a
//! 3G-class uplink with room to spare, costs almost nothing on a tablet, needs no C library
//! (this machine and the fleet's build hosts have no libopus or cmake, so the `opus` and
//! `audiopus` bindings are out), and every 20 ms frame carries the decoder's state in a 3-byte
//! header, so a lost datagram costs that frame only and frames decode in any order. Opus at
//! 16-24 kbit/s would sound better and conceal loss better; a pure-Rust port exists
//! (`opus-rs`, a young one-maintainer port of libopus), not adopted yet: its decoder keeps
//! state across frames, so the jitter buffer would have to decode in sequence at play-out with
//! Opus's own concealment, the port has not been validated against libopus here, and G.107 has
//! no published impairment factors for Opus. The frame format has a codec byte for that day.
//!
//! **Datagram** (QUIC, relayed by the hub): type byte [`DG_VOICE`], call tag (u32), sequence
//! number (u32), media timestamp in ms (u32), codec (u8), codec payload. [`DG_BYE`]: type,
//! call tag: the sender hung up.

use std::collections::BTreeMap;

/// Samples per second.
pub const SAMPLE_RATE: u32 = 8_000;
/// Samples per 20 ms frame.
pub const FRAME_SAMPLES: usize = 160;
/// Frame length, ms.
pub const FRAME_MS: u32 = 20;
/// Datagram type of a voice frame.
pub const DG_VOICE: u8 = 3;
/// Datagram type of a hang-up.
pub const DG_BYE: u8 = 4;
/// Codec byte of IMA ADPCM 32 kbit/s.
pub const CODEC_ADPCM: u8 = 1;

const STEPS: [i32; 89] = [
    7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 23, 25, 28, 31, 34, 37, 41, 45, 50, 55, 60, 66, 73, 80, 88, 97, 107,
    118, 130, 143, 157, 173, 190, 209, 230, 253, 279, 307, 337, 371, 408, 449, 494, 544, 598, 658, 724, 796, 876, 963,
    1060, 1166, 1282, 1411, 1552, 1707, 1878, 2066, 2272, 2499, 2749, 3024, 3327, 3660, 4026, 4428, 4871, 5358, 5894,
    6484, 7132, 7845, 8630, 9493, 10442, 11487, 12635, 13899, 15289, 16818, 18500, 20350, 22385, 24623, 27086, 29794,
    32767,
];
const INDEX_STEP: [i32; 8] = [-1, -1, -1, -1, 2, 4, 6, 8];

/// The ADPCM coder's running state (kept by the encoder across frames; sent in each frame).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdpcmState {
    predictor: i32,
    index: i32,
}

impl AdpcmState {
    fn step(&mut self, nibble: u8) -> i16 {
        let step = STEPS[self.index as usize];
        let mut diff = step >> 3;
        if nibble & 4 != 0 {
            diff += step;
        }
        if nibble & 2 != 0 {
            diff += step >> 1;
        }
        if nibble & 1 != 0 {
            diff += step >> 2;
        }
        if nibble & 8 != 0 {
            self.predictor -= diff;
        } else {
            self.predictor += diff;
        }
        self.predictor = self.predictor.clamp(i32::from(i16::MIN), i32::from(i16::MAX));
        self.index = (self.index + INDEX_STEP[usize::from(nibble & 7)]).clamp(0, 88);
        self.predictor as i16
    }

    fn encode_sample(&mut self, sample: i16) -> u8 {
        let step = STEPS[self.index as usize];
        let mut diff = i32::from(sample) - self.predictor;
        let mut nibble = 0u8;
        if diff < 0 {
            nibble = 8;
            diff = -diff;
        }
        if diff >= step {
            nibble |= 4;
            diff -= step;
        }
        if diff >= step >> 1 {
            nibble |= 2;
            diff -= step >> 1;
        }
        if diff >= step >> 2 {
            nibble |= 1;
        }
        // Track exactly what the decoder will reconstruct.
        self.step(nibble);
        nibble
    }
}

/// Encodes one 20 ms frame (`FRAME_SAMPLES` samples; a short frame is padded with silence):
/// 3 bytes of state, then two samples a byte.
pub fn encode(state: &mut AdpcmState, pcm: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + FRAME_SAMPLES / 2);
    out.extend_from_slice(&(state.predictor as i16).to_le_bytes());
    out.push(state.index as u8);
    let mut it = pcm.iter().copied().chain(std::iter::repeat(0)).take(FRAME_SAMPLES);
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        let lo = state.encode_sample(a);
        let hi = state.encode_sample(b);
        out.push(lo | (hi << 4));
    }
    out
}

/// Decodes one frame; `None` if it is not a whole frame with a valid state.
pub fn decode(bytes: &[u8]) -> Option<Vec<i16>> {
    if bytes.len() != 3 + FRAME_SAMPLES / 2 || bytes[2] > 88 {
        return None;
    }
    let mut st =
        AdpcmState { predictor: i32::from(i16::from_le_bytes([bytes[0], bytes[1]])), index: i32::from(bytes[2]) };
    let mut out = Vec::with_capacity(FRAME_SAMPLES);
    for b in &bytes[3..] {
        out.push(st.step(b & 0x0F));
        out.push(st.step(b >> 4));
    }
    Some(out)
}

/// One voice datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceFrame {
    /// Which call (a tag derived from the call's id).
    pub call: u32,
    /// Sequence number, one per 20 ms.
    pub seq: u32,
    /// Media time of the first sample, ms.
    pub ts_ms: u32,
    /// Codec byte.
    pub codec: u8,
    /// Codec payload.
    pub payload: Vec<u8>,
}

impl VoiceFrame {
    /// The datagram's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(14 + self.payload.len());
        b.push(DG_VOICE);
        b.extend_from_slice(&self.call.to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.ts_ms.to_le_bytes());
        b.push(self.codec);
        b.extend_from_slice(&self.payload);
        b
    }

    /// Parses a datagram; `None` if it is not a voice frame.
    pub fn parse(b: &[u8]) -> Option<VoiceFrame> {
        if b.len() < 14 || b[0] != DG_VOICE {
            return None;
        }
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(VoiceFrame { call: u(1), seq: u(5), ts_ms: u(9), codec: b[13], payload: b[14..].to_vec() })
    }
}

/// The call tag of a call id (first four bytes of its BLAKE3 hash).
pub fn call_tag(call: &str) -> u32 {
    let h = blake3::hash(call.as_bytes());
    let b = h.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A hang-up datagram for a call.
pub fn bye(call: u32) -> Vec<u8> {
    let mut b = vec![DG_BYE];
    b.extend_from_slice(&call.to_le_bytes());
    b
}

/// Figures of one receiving leg.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LegStats {
    /// Frames received in time to play.
    pub received: u64,
    /// Frames that arrived after their turn (dropped).
    pub late: u64,
    /// Frames duplicated on the way (dropped).
    pub duplicate: u64,
    /// Frames concealed because they were missing at their turn.
    pub concealed: u64,
    /// Interarrival jitter (RFC 3550 estimator), ms.
    pub jitter_ms: f64,
    /// The longest run of frames concealed in a row, ms (a drop and its recovery).
    pub longest_gap_ms: u64,
    /// Frames sent before the first that arrived, lost on the way: every leg's sequence starts
    /// at 0, and playout starts at the first frame that arrives (so these are never concealed).
    /// Only frames due after this leg began listening count: those the other side sent before
    /// (it answered first, and its frames came before this side knew of the answer) are the
    /// call's setup, not the path's loss.
    pub missed_at_start: u64,
    gap: u64,
}

impl LegStats {
    /// Share of frames that were not there to play (lost or late), the call's first frames
    /// included.
    pub fn loss(&self) -> f64 {
        let missing = self.concealed + self.missed_at_start;
        let total = self.received + missing;
        if total == 0 { 0.0 } else { missing as f64 / total as f64 }
    }

    /// Frames the sender sent that reached their turn or should have.
    pub fn frames(&self) -> u64 {
        self.received + self.concealed + self.missed_at_start
    }
}

/// A receiver's jitter buffer: frames wait `delay` frames before they are played, in sequence;
/// a frame missing at its turn is concealed by repeating the last one, fading by half each
/// time, then silence.
#[derive(Debug)]
pub struct JitterBuffer {
    pending: BTreeMap<u32, Vec<i16>>,
    next: Option<u32>,
    delay: usize,
    started: bool,
    last: Vec<i16>,
    fade: u32,
    transit: Option<f64>,
    late_run: u32,
    /// Whether playout has ever started (a re-anchor starts it again).
    ever_started: bool,
    /// The first frame's transit (its arrival less its place in the stream, ms): where in this
    /// leg's time the other side's frame 0 was due.
    first_transit: Option<f64>,
    /// What happened so far.
    pub stats: LegStats,
}

/// Late frames in a row after which the buffer re-anchors on the sender's sequence (the
/// sender's clock and ours drifted apart, or a stall delayed everything behind it).
/// Frames held ahead of playout at most: a minute of speech.
const MAX_AHEAD: u32 = 60_000 / FRAME_MS;
const RESYNC_AFTER_LATE: u32 = 3;
/// The first frame to arrive is taken to show how many were lost before it only if it is
/// within this many of the start (a second): a later one is a stream joined under way.
const MISSED_AT_START_MAX: u32 = 50;

impl JitterBuffer {
    /// A buffer holding `delay_ms` of audio before it starts playing.
    pub fn new(delay_ms: u32) -> JitterBuffer {
        JitterBuffer {
            pending: BTreeMap::new(),
            next: None,
            delay: (delay_ms / FRAME_MS).max(1) as usize,
            started: false,
            last: vec![0; FRAME_SAMPLES],
            fade: 0,
            transit: None,
            late_run: 0,
            ever_started: false,
            first_transit: None,
            stats: LegStats::default(),
        }
    }

    /// A decoded frame arrived at `arrival_ms`: milliseconds since this leg began listening
    /// (the receiver's clock), so that frames due before it are not counted as lost.
    pub fn push(&mut self, seq: u32, pcm: Vec<i16>, arrival_ms: f64) {
        // RFC 3550: jitter from the variation of transit time.
        let transit = arrival_ms - f64::from(seq) * f64::from(FRAME_MS);
        if let Some(prev) = self.transit {
            let d = (transit - prev).abs();
            self.stats.jitter_ms += (d - self.stats.jitter_ms) / 16.0;
        }
        self.transit = Some(transit);
        self.first_transit.get_or_insert(transit);
        if self.next.is_some_and(|n| seq < n) {
            self.stats.late += 1;
            self.late_run += 1;
            if self.late_run >= RESYNC_AFTER_LATE {
                // Re-anchor: play from this frame on, after the usual delay.
                self.late_run = 0;
                self.pending.retain(|k, _| *k > seq);
                self.pending.insert(seq, pcm);
                self.next = Some(seq);
                self.started = false;
            }
            return;
        }
        self.late_run = 0;
        // A frame due more than a minute after the one to play next is no frame of this call's
        // (the sender's clock runs with ours): kept, such frames would fill memory unplayed.
        if self.next.is_some_and(|n| seq > n.saturating_add(MAX_AHEAD)) {
            self.stats.late += 1;
            return;
        }
        if self.pending.insert(seq, pcm).is_some() {
            self.stats.duplicate += 1;
        }
        while self.pending.len() > MAX_AHEAD as usize {
            self.pending.pop_last();
        }
        if self.next.is_none() {
            self.next = self.pending.keys().next().copied();
        }
    }

    /// The next 20 ms to play, or `None` before playout has started (or restarts).
    pub fn pop(&mut self) -> Option<Vec<i16>> {
        if !self.started {
            if self.pending.len() < self.delay {
                // Waiting to (re)start: silence counts as concealed once playing has begun.
                if self.stats.received > 0 {
                    self.stats.concealed += 1;
                    self.count_gap();
                    return Some(vec![0; FRAME_SAMPLES]);
                }
                return None;
            }
            self.started = true;
            self.next = self.pending.keys().next().copied();
            if !self.ever_started {
                self.ever_started = true;
                if let Some(first) = self.next.filter(|f| *f <= MISSED_AT_START_MAX) {
                    // Frames due before this leg listened (arrival times count from its start)
                    // could not be heard.
                    let due_before = self.first_transit.map_or(0.0, |t| (-t / f64::from(FRAME_MS)).ceil().max(0.0));
                    self.stats.missed_at_start = u64::from(first).saturating_sub(due_before as u64);
                }
            }
        }
        let n = self.next?;
        self.next = Some(n.wrapping_add(1));
        match self.pending.remove(&n) {
            Some(pcm) => {
                self.stats.received += 1;
                self.stats.gap = 0;
                self.fade = 0;
                self.last = pcm.clone();
                Some(pcm)
            }
            None => {
                self.stats.concealed += 1;
                self.count_gap();
                self.fade += 1;
                let gain = if self.fade > 4 { 0.0 } else { 0.5f32.powi(self.fade as i32) };
                Some(self.last.iter().map(|s| (f32::from(*s) * gain) as i16).collect())
            }
        }
    }

    fn count_gap(&mut self) {
        self.stats.gap += 1;
        self.stats.longest_gap_ms = self.stats.longest_gap_ms.max(self.stats.gap * u64::from(FRAME_MS));
    }

    /// The call is over: the frames still held, in order, to be played out (gaps between them
    /// are not concealed: nothing more will come). Empties the buffer whether or not playout
    /// had started (a re-anchor stops it until a delay's worth is held again, and popping
    /// until the buffer was empty then never ended).
    pub fn drain(&mut self) -> Vec<Vec<i16>> {
        let held = std::mem::take(&mut self.pending);
        self.stats.received += held.len() as u64;
        self.next = None;
        self.started = false;
        held.into_values().collect()
    }

    /// Frames waiting.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(SAMPLE_RATE);
                (6000.0 * (2.0 * std::f64::consts::PI * 220.0 * t).sin()
                    + 3000.0 * (2.0 * std::f64::consts::PI * 660.0 * t).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn adpcm_keeps_speech_band_audio_above_twenty_db() {
        let pcm = tone(FRAME_SAMPLES * 50);
        let mut st = AdpcmState::default();
        let mut out = Vec::new();
        for f in pcm.chunks(FRAME_SAMPLES) {
            let bytes = encode(&mut st, f);
            assert_eq!(bytes.len(), 83, "3 bytes of state and 80 of samples: 32 kbit/s of samples");
            out.extend(decode(&bytes).unwrap());
        }
        let signal: f64 = pcm.iter().map(|s| f64::from(*s).powi(2)).sum();
        let noise: f64 = pcm.iter().zip(&out).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
        let snr = 10.0 * (signal / noise).log10();
        assert!(snr > 20.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn every_frame_decodes_alone() {
        let pcm = tone(FRAME_SAMPLES * 3);
        let mut st = AdpcmState::default();
        let frames: Vec<Vec<u8>> = pcm.chunks(FRAME_SAMPLES).map(|f| encode(&mut st, f)).collect();
        // The third frame without the first two decodes to what the full stream gives.
        let alone = decode(&frames[2]).unwrap();
        let mut full = Vec::new();
        for f in &frames {
            full.extend(decode(f).unwrap());
        }
        assert_eq!(alone, full[FRAME_SAMPLES * 2..]);
    }

    #[test]
    fn malformed_frames_and_datagrams_are_refused_without_panic() {
        assert!(decode(&[]).is_none());
        assert!(decode(&[0u8; 82]).is_none());
        let mut bad = vec![0u8; 83];
        bad[2] = 200;
        assert!(decode(&bad).is_none());
        for n in 0..20 {
            let _ = VoiceFrame::parse(&vec![DG_VOICE; n]);
        }
        let f = VoiceFrame { call: 7, seq: 9, ts_ms: 180, codec: CODEC_ADPCM, payload: vec![1, 2, 3] };
        assert_eq!(VoiceFrame::parse(&f.to_bytes()), Some(f));
    }

    /// Frames `seqs` at level 1, each arriving on time (20 ms apart, frame 0 due at
    /// `transit_ms` in the leg's time) with one played per arrival.
    fn feed_with_transit(jb: &mut JitterBuffer, seqs: std::ops::Range<u32>, transit_ms: f64) {
        for s in seqs {
            jb.push(s, vec![1; FRAME_SAMPLES], transit_ms + f64::from(s) * 20.0);
            let _ = jb.pop();
        }
    }

    /// [`feed_with_transit`] with frame 0 due as the leg began listening.
    fn feed_in_time(jb: &mut JitterBuffer, seqs: std::ops::Range<u32>) {
        feed_with_transit(jb, seqs, 0.0);
    }

    #[test]
    fn a_stream_that_falls_behind_is_re_anchored_instead_of_dropped_for_ever() {
        let mut jb = JitterBuffer::new(40);
        let frame = |v: i16| vec![v; FRAME_SAMPLES];
        feed_in_time(&mut jb, 0..4);
        // A stall: the player moves on 50 frames while nothing arrives...
        for _ in 0..50 {
            let _ = jb.pop();
        }
        // ...then the delayed frames 4.. arrive, all behind the playout point.
        for s in 4..12 {
            jb.push(s, frame(2), 1_000.0 + f64::from(s));
        }
        let played: Vec<i16> = (0..6).filter_map(|_| jb.pop()).map(|f| f[0]).collect();
        assert!(played.contains(&2), "playing again after the stall: {played:?}");
        assert!(jb.stats.late <= u64::from(RESYNC_AFTER_LATE));
    }

    #[test]
    fn a_buffer_stopped_by_a_re_anchor_plays_out_what_it_holds_when_the_call_ends() {
        let mut jb = JitterBuffer::new(60);
        let frame = |v: i16| vec![v; FRAME_SAMPLES];
        feed_in_time(&mut jb, 0..10);
        for _ in 0..5 {
            let _ = jb.pop();
        }
        // Three frames from behind the playout point: the buffer re-anchors on the last and
        // waits for its delay's worth before it plays again, holding one frame...
        for s in [1, 2, 3] {
            jb.push(s, frame(7), 500.0);
        }
        assert!(jb.buffered() > 0);
        // ...and then the call ends. What it holds is played once, and nothing more.
        let received = jb.stats.received;
        let rest = jb.drain();
        assert_eq!(jb.buffered(), 0, "the play-out ends with nothing held");
        assert_eq!(jb.stats.received, received + rest.len() as u64);
        assert!(rest.iter().any(|f| f[0] == 7), "the held frame was played");
    }

    #[test]
    fn frames_lost_before_the_first_that_arrived_count_as_lost() {
        let mut jb = JitterBuffer::new(40);
        // The call's first two frames never arrive.
        feed_in_time(&mut jb, 2..12);
        assert_eq!(jb.stats.missed_at_start, 2);
        assert_eq!(jb.stats.concealed, 0, "playout starts at the first frame that came");
        let received = jb.stats.received;
        assert!((jb.stats.loss() - 2.0 / (received + 2) as f64).abs() < 1e-9, "{:?}", jb.stats);
        assert_eq!(jb.stats.frames(), received + 2);
        // The same with the sender's frames due 5 ms after this leg began listening: frame 0
        // could have been heard.
        let mut jb = JitterBuffer::new(40);
        feed_with_transit(&mut jb, 2..12, 5.0);
        assert_eq!(jb.stats.missed_at_start, 2);
        // A stream joined a minute in is no loss of its first frames.
        let mut late = JitterBuffer::new(40);
        feed_in_time(&mut late, 3_000..3_010);
        assert_eq!((late.stats.missed_at_start, late.stats.loss()), (0, 0.0));
    }

    #[test]
    fn frames_sent_before_this_leg_listened_are_not_counted_as_lost() {
        // The other side answered and began sending 95 ms before this leg began listening:
        // frames 0-4 were due before it (arrival times count from this leg's start).
        let mut jb = JitterBuffer::new(40);
        feed_with_transit(&mut jb, 5..15, -95.0);
        assert_eq!(jb.stats.missed_at_start, 0, "{:?}", jb.stats);
        assert_eq!(jb.stats.loss(), 0.0);
        // The same start, and frames 5 and 6 lost on the way: those two count.
        let mut jb = JitterBuffer::new(40);
        feed_with_transit(&mut jb, 7..17, -95.0);
        assert_eq!(jb.stats.missed_at_start, 2, "{:?}", jb.stats);
    }

    #[test]
    fn the_jitter_buffer_reorders_conceals_and_counts() {
        let mut jb = JitterBuffer::new(60);
        let frame = |v: i16| vec![v; FRAME_SAMPLES];
        // Frames 0, 2, 1, 3 arrive (1 late-ish but before its turn), 4 is lost, 5 arrives.
        jb.push(0, frame(100), 0.0);
        assert!(jb.pop().is_none(), "waits for its delay before playing");
        jb.push(2, frame(300), 45.0);
        jb.push(1, frame(200), 50.0);
        jb.push(3, frame(400), 60.0);
        let played: Vec<i16> = (0..4).map(|_| jb.pop().unwrap()[0]).collect();
        assert_eq!(played, [100, 200, 300, 400]);
        jb.push(5, frame(600), 100.0);
        assert_eq!(jb.pop().unwrap()[0], 200, "frame 4 concealed: the last frame at half level");
        assert_eq!(jb.pop().unwrap()[0], 600);
        jb.push(4, frame(500), 130.0);
        assert_eq!(jb.stats.late, 1);
        assert_eq!(jb.stats.concealed, 1);
        assert_eq!(jb.stats.received, 5);
        assert_eq!(jb.stats.missed_at_start, 0, "frame 0 came");
        assert!((jb.stats.loss() - 1.0 / 6.0).abs() < 1e-9);
    }
}
