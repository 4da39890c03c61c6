//! Call escalation through the link emulator: the hub measures the ambulance's path, judges it
//! with the E-model, rings the first desk of the rota that holds the whole case (never before it
//! holds every photo), moves to the next desk after the ring time, and arranges a callback when
//! the link cannot carry a call; speech crosses (also through two hubs, when the call is
//! handed to a federated ICB's line), with its quality measured.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use field_tests::{Daemon, Field, Link, free_addr, has_receipt, json, photo_file, s};
use serde_json::Value;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_outpost-field-node");
const LIMIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);

/// Calls whose audio figures are asserted (loss, MOS, gap lengths) run one at a time: on this
/// 2-core machine ten parallel calls of four node processes each starve the audio threads of
/// CPU, and the frames they play late are counted as concealed, which is the machine's load, not
/// the link's (a desk leg measured 1.2% loss on urban-4g under that load, 0% on its own, same
/// seed). The other call tests still run beside them.
static AUDIO_MEASURED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn measuring_audio() -> std::sync::MutexGuard<'static, ()> {
    AUDIO_MEASURED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct CallFleet {
    f: Field,
    hub: PathBuf,
    amb: PathBuf,
    desks: [PathBuf; 2],
    _daemons: Vec<Daemon>,
    link: Link,
    hub_addr: String,
}

/// A hub with a dermatology rota of desk-a then desk-b (`ring_s` each), the desks on the
/// hospital network (`answering`: which of them answer by themselves), the ambulance behind
/// `profile`.
fn fleet(name: &str, profile: &str, ring_s: u32, answering: [bool; 2]) -> CallFleet {
    fleet_with(name, profile, ring_s, answering, None)
}

/// [`fleet`], with desk-a also listening on `desk_listen` (a desk takes connections on its LAN).
fn fleet_with(name: &str, profile: &str, ring_s: u32, answering: [bool; 2], desk_listen: Option<&str>) -> CallFleet {
    let mut f = Field::new(BIN, name);
    let hub = f.node("hub-qhm", "hub", &[]);
    let desks = [
        f.node("desk-a", "desk", &["--org", "RTH", "--service-line", "dermatology"]),
        f.node("desk-b", "desk", &["--org", "RTH", "--service-line", "dermatology"]),
    ];
    let amb = f.node("amb-07", "edge", &["--org", "RX6"]);
    f.ok(&[
        "rota",
        "set",
        "--dir",
        s(&hub),
        "--line",
        "dermatology",
        "--desk",
        "desk-a",
        "--desk",
        "desk-b",
        "--ring-secs",
        &ring_s.to_string(),
    ]);
    let hub_addr = free_addr();
    // Outcomes are due 8 s after a call connects here (a day in service).
    let hubd = f.daemon_env(&hub, &["--listen", &hub_addr], &[("OUTPOST_OUTCOME_WAIT_S", "8")]);
    f.wait(LIMIT, POLL, "the hub to listen", || hubd.log_text().contains("outpost daemon started"));
    let mut daemons = vec![hubd];
    for (d, auto) in desks.iter().zip(answering) {
        let heard = d.join("heard.wav");
        let mut args = vec!["--peer", hub_addr.as_str(), "--record", s(&heard)];
        if auto {
            args.push("--auto-answer");
        }
        if let Some(addr) = desk_listen.filter(|_| d.ends_with("desk-a")) {
            args.extend(["--listen", addr]);
        }
        daemons.push(f.daemon(d, &args));
    }
    let link = Link::start(profile, &hub_addr, f.seed);
    daemons.push(f.daemon(&amb, &["--peer", &link.addr]));
    CallFleet { f, hub, amb, desks, _daemons: daemons, link, hub_addr }
}

/// The routing log entries of a session at a node, by kind.
fn steps(f: &Field, node: &Path, id: &str) -> Vec<Value> {
    let out = f.ok(&["call", "status", "--dir", s(node), id, "--json"]);
    json(&out)["routing"].as_array().cloned().unwrap_or_default()
}

fn of_kind<'a>(steps: &'a [Value], kind: &str) -> Vec<&'a Value> {
    steps.iter().filter(|e| e["kind"] == kind).collect()
}

fn escalate(f: &Field, amb: &Path, id: &str) -> Value {
    json(&f.ok(&["call", "escalate", "--dir", s(amb), id, "--wait", "120", "--json"]))
}

#[test]
fn over_urban_4g_the_first_desk_is_rung_once_it_holds_every_photo_and_answers() {
    let c = fleet("call-urban-4g", "urban-4g", 20, [true, true]);
    let f = &c.f;
    let id = f.new_session(&c.amb, "dermatology", "ambulance_on_scene", "Spreading rash with fever");
    f.message(&c.amb, &id, "Rash spreading fast; please call");
    let mut hashes = Vec::new();
    for (i, view) in ["site", "close-up", "dermoscopic"].iter().enumerate() {
        let p = f.dir.join(format!("photo-{i}.jpg"));
        photo_file(&p, f.seed + i as u64, 1_000_000);
        hashes.push(f.photo(&c.amb, &id, &p, view));
    }
    // Escalate at once: the photos are still on their way to the desks.
    let result = escalate(f, &c.amb, &id);
    assert_eq!(result["state"], "connected", "{result}");
    assert_eq!(result["desk"], "desk-a", "{result}");

    let log = steps(f, &c.hub, &id);
    let gate = of_kind(&log, "gate");
    assert_eq!(gate.len(), 1, "{log:?}");
    assert_eq!(gate[0]["verdict"], "call");
    assert!(gate[0]["mos"].as_f64().unwrap() >= 3.6, "{}", gate[0]);
    // The gate measured once the case had reached the desk, just before the ring.
    assert!(gate[0]["at_ms"].as_i64() <= of_kind(&log, "ring")[0]["at_ms"].as_i64());
    let rings = of_kind(&log, "ring");
    assert_eq!(rings.len(), 1, "{log:?}");
    assert_eq!(rings[0]["desk"], "desk-a");
    let rung_at = rings[0]["at_ms"].as_i64().unwrap();
    // Never rung before it held every photo: desk-a's receipt on each photo (written once every
    // chunk was stored) is no later than the ring.
    let hub_view = f.export(&c.hub, &id).unwrap();
    for h in &hashes {
        let m = hub_view["media"].as_array().unwrap().iter().find(|m| m["hash"] == h.as_str()).unwrap();
        let held_at = m["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == "desk-a" && r["level"] != "hub")
            .map(|r| r["at_ms"].as_i64().unwrap())
            .unwrap_or_else(|| panic!("desk-a has no receipt for photo {h}: {m}"));
        assert!(held_at <= rung_at, "desk-a was rung at {rung_at} before it held photo {h} (at {held_at})");
    }
    let connected = of_kind(&log, "connected");
    assert_eq!(connected.len(), 1);
    assert!(of_kind(&log, "callback").is_empty());
    // The ambulance's own copy tells the same story, and the session is connected.
    let amb_view = f.export(&c.amb, &id).unwrap();
    assert_eq!(amb_view["status"], "connected", "{}", amb_view["status"]);
    // Asked for from the command line with no audio, the call is not carried here: the crew
    // may ask for another at once (a device carrying a call would be refused, exit 2).
    let next = f.new_session(&c.amb, "dermatology", "ambulance_on_scene", "Second patient: burn");
    f.ok(&["call", "escalate", "--dir", s(&c.amb), &next]);
    eprintln!(
        "urban-4g: MOS {} (rtt {} ms, jitter {} ms, loss {}); connected {} ms after the escalation reached the hub, {} ms after the ring",
        gate[0]["mos"],
        gate[0]["rtt_ms"],
        gate[0]["jitter_ms"],
        gate[0]["loss"],
        connected[0]["ms_from_escalate"],
        connected[0]["ms_from_ring"]
    );
}

#[test]
fn over_a_cell_edge_link_the_gate_refuses_and_a_callback_is_recorded() {
    let c = fleet("call-cell-edge", "cell-edge", 20, [true, true]);
    let f = &c.f;
    let id = f.new_session(&c.amb, "dermatology", "ambulance_on_scene", "Rash; weak signal");
    f.message(&c.amb, &id, "Can a consultant call?");
    let result = escalate(f, &c.amb, &id);
    assert_eq!(result["state"], "callback", "{result}");
    let reason = result["reason"].as_str().unwrap();
    assert!(reason.contains("cannot carry a call") && reason.contains("MOS"), "the clinician sees why: {reason}");
    let log = steps(f, &c.hub, &id);
    assert!(of_kind(&log, "ring").is_empty(), "no desk is rung over a link that cannot carry the call: {log:?}");
    let gate = of_kind(&log, "gate");
    assert_eq!(gate.len(), 1, "{log:?}");
    assert_eq!(gate[0]["verdict"], "callback");
    assert!(gate[0]["mos"].as_f64().unwrap() < 3.6, "{}", gate[0]);
    let amb_view = f.export(&c.amb, &id).unwrap();
    assert_eq!(amb_view["status"], "awaiting_reply");
    eprintln!("cell-edge: {reason}");
}

#[test]
fn a_first_desk_that_never_answers_falls_to_the_second_after_its_ring_time() {
    let c = fleet("call-rota-fallback", "urban-4g", 3, [false, true]);
    let f = &c.f;
    let id = f.new_session(&c.amb, "dermatology", "ambulance_on_scene", "Rash; first consultant away");
    f.message(&c.amb, &id, "Please call");
    let result = escalate(f, &c.amb, &id);
    assert_eq!(result["state"], "connected", "{result}");
    assert_eq!(result["desk"], "desk-b", "{result}");
    let log = steps(f, &c.hub, &id);
    let rings = of_kind(&log, "ring");
    assert_eq!(rings.iter().map(|r| r["desk"].as_str().unwrap()).collect::<Vec<_>>(), ["desk-a", "desk-b"], "{log:?}");
    let no_answer = of_kind(&log, "no_answer");
    assert_eq!(no_answer.len(), 1);
    assert_eq!(no_answer[0]["desk"], "desk-a");
    let waited = no_answer[0]["at_ms"].as_i64().unwrap() - rings[0]["at_ms"].as_i64().unwrap();
    assert!(waited >= 3_000, "desk-a rang for its full 3 s ring time, not {waited} ms");
    assert!(rings[1]["at_ms"].as_i64().unwrap() >= no_answer[0]["at_ms"].as_i64().unwrap());
    let answers = of_kind(&log, "answer");
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["desk"], "desk-b");
}

/// Speech-like audio written as an 8 kHz mono WAV file.
fn speech(path: &Path, seconds: f64) -> Vec<i16> {
    let samples = outpost_node::media::synthetic_speech(seconds);
    outpost_node::media::write_wav(path, &samples).unwrap();
    samples
}

/// A session on the ambulance ready to escalate, and `seconds` of speech for the paramedic
/// to say: (the WAV file, its samples, the session id).
fn ready_to_call(c: &CallFleet, seconds: f64, summary: &str) -> (PathBuf, Vec<i16>, String) {
    let said = c.f.dir.join("paramedic.wav");
    let sent = speech(&said, seconds);
    let id = c.f.new_session(&c.amb, "dermatology", "ambulance_on_scene", summary);
    c.f.message(&c.amb, &id, "Calling now");
    (said, sent, id)
}

/// `outpost call escalate --wait --json --play SAID` on the ambulance, to run in the background.
fn escalate_speaking(c: &CallFleet, id: &str, said: &Path) -> std::process::Output {
    c.f.outpost(&["call", "escalate", "--dir", s(&c.amb), id, "--wait", "120", "--json", "--play", s(said)])
}

fn read(path: &Path) -> Vec<i16> {
    hound::WavReader::open(path).unwrap().samples::<i16>().map(Result::unwrap).collect()
}

/// The best normalised correlation of `heard` with `sent` over delays of up to 6 s, on `range`
/// of `sent` (samples). A recording can also run up to a second ahead of the speech: the
/// receiver's jitter buffer starts playing (and recording) at the first frame that arrives, so
/// when the link loses a call's first frames the recording begins with the frames after them.
fn similarity(sent: &[i16], heard: &[i16], range: std::ops::Range<usize>) -> f64 {
    best_match(sent, heard, range, -8_000..48_000).0
}

/// The best normalised correlation of `heard` with `sent` on `range` of `sent`, over delays
/// `lags` (samples, every eighth; negative: `heard` runs ahead), and the delay where it was.
fn best_match(sent: &[i16], heard: &[i16], range: std::ops::Range<usize>, lags: std::ops::Range<i64>) -> (f64, i64) {
    let a = &sent[range.clone()];
    let ea: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    let mut best = (0.0f64, 0i64);
    for lag in lags.step_by(8) {
        let Ok(start) = usize::try_from(range.start as i64 + lag) else { continue };
        if start + a.len() > heard.len() {
            break;
        }
        let b = &heard[start..start + a.len()];
        let eb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum();
        let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        if ea > 0.0 && eb > 0.0 && dot / (ea * eb).sqrt() > best.0 {
            best = (dot / (ea * eb).sqrt(), lag);
        }
    }
    best
}

/// What a failed match shows: where the best match was, whether the recording holds the speech
/// earlier than it was said (it began late), and how loud each second of the recording is.
fn match_report(sent: &[i16], heard: &[i16], range: std::ops::Range<usize>) -> String {
    let (late, lag) = best_match(sent, heard, range.clone(), 0..48_000);
    let (early, early_lag) = best_match(sent, heard, range, -48_000..0);
    let loudness: Vec<String> = heard
        .chunks(8_000)
        .map(|s| format!("{:.0}", (s.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / s.len() as f64).sqrt()))
        .collect();
    format!(
        "best {late:.3} at a delay of {} ms; {early:.3} at {} ms (the recording ahead of the speech); \
         the recording's loudness (RMS) second by second: {}",
        lag / 8,
        early_lag / 8,
        loudness.join(" ")
    )
}

/// Waits until the hub has connected the session's call.
fn wait_connected(f: &Field, hub: &Path, id: &str) {
    f.wait(LIMIT, Duration::from_millis(100), "the call to connect", || {
        let out = f.outpost(&["call", "status", "--dir", s(hub), id, "--json"]);
        out.status.success()
            && json(&String::from_utf8_lossy(&out.stdout))["routing"]
                .as_array()
                .is_some_and(|r| r.iter().any(|e| e["kind"] == "connected"))
    });
}

/// Waits for `name`'s record of the call to reach `node`.
fn wait_for_leg(f: &Field, node: &Path, id: &str, name: &str) -> Value {
    let mut l = None;
    f.wait(LIMIT, POLL, &format!("{name}'s record of the call"), || {
        l = leg_of(f, node, id, name);
        l.is_some()
    });
    l.unwrap()
}

fn leg_of(f: &Field, node: &Path, id: &str, name: &str) -> Option<Value> {
    let out = f.ok(&["call", "status", "--dir", s(node), id, "--json"]);
    json(&out)["calls"].as_array()?.iter().find(|l| l["node"] == name).cloned()
}

/// Asserts a call clear over urban 4G from its two legs' records. The link's own loss (0.3% on
/// average, in bursts) is drawn afresh for each seed: twelve seconds are 600 frames a way, two
/// of them lost on average, and a seed that loses six (1%) in one direction is a seed, not a
/// fault of the transport. So the call is judged whole, both ways together: loss under 1% and
/// an estimated MOS of 4 or more on average.
fn assert_clear_both_ways(leg: &Value, desk_leg: &Value) {
    let figure = |l: &Value, k: &str| l[k].as_f64().unwrap();
    let received: f64 = [leg, desk_leg].iter().map(|l| figure(l, "frames_received")).sum();
    let concealed: f64 = [leg, desk_leg].iter().map(|l| figure(l, "frames_concealed")).sum();
    let loss = concealed / (received + concealed);
    assert!(loss < 0.01, "frame loss under 1% over the call: {loss:.4}\n{leg}\n{desk_leg}");
    let mos = (figure(leg, "mos") + figure(desk_leg, "mos")) / 2.0;
    assert!(mos >= 4.0, "estimated MOS of 4 or more over the call: {mos:.2}\n{leg}\n{desk_leg}");
}

#[test]
fn over_urban_4g_speech_crosses_with_an_estimated_mos_of_four_and_under_one_percent_loss() {
    let _alone = measuring_audio();
    let c = fleet("call-audio-urban-4g", "urban-4g", 20, [true, true]);
    let f = &c.f;
    let (said, sent, id) = ready_to_call(&c, 12.0, "Rash; need to talk it through");
    let heard_back = f.dir.join("heard-at-ambulance.wav");
    let started = Instant::now();
    let out = f.ok(&[
        "call",
        "escalate",
        "--dir",
        s(&c.amb),
        &id,
        "--wait",
        "120",
        "--json",
        "--play",
        s(&said),
        "--record",
        s(&heard_back),
    ]);
    let result = json(&out);
    assert_eq!(result["state"], "connected", "{result}");
    let leg = &result["leg"];
    assert_eq!(leg["end"], "hangup", "{leg}");
    let desk_leg = wait_for_leg(f, &c.desks[0], &id, "desk-a");
    eprintln!(
        "urban-4g call: ambulance leg {leg}\ndesk leg {desk_leg}\n(whole escalation and call: {:?})",
        started.elapsed()
    );
    assert_clear_both_ways(leg, &desk_leg);
    // Neither way may lose twice that.
    let figure = |l: &Value, k: &str| l[k].as_f64().unwrap();
    for l in [leg, &desk_leg] {
        assert!(figure(l, "loss") < 0.02, "neither way loses 2% or more: {l}");
        assert!(figure(l, "frames_received") > 200.0, "{l}");
    }
    // The consultant heard the paramedic: the recording is the speech, delayed and coded.
    let heard = read(&c.desks[0].join("heard.wav"));
    assert!(heard.len() >= sent.len() * 9 / 10, "the desk recorded {} of {} samples", heard.len(), sent.len());
    let sim = similarity(&sent, &heard, 4_000..40_000);
    assert!(
        sim > 0.9,
        "the desk's recording resembles what was said: correlation {sim:.3}\n{}",
        match_report(&sent, &heard, 4_000..40_000)
    );
    assert!(read(&heard_back).len() > 8_000 * 4, "the ambulance recorded the desk's side too");
}

/// A call with the ambulance's link blacked out for `blackout` once the call is up; returns
/// the longest gap in what the consultant heard, in ms. The speech lasts `speech_s` and its
/// last 2.5 s must come through after the blackout.
fn blackout_call(name: &str, blackout: Duration, speech_s: f64) -> i64 {
    let _alone = measuring_audio();
    let c = fleet(name, "urban-4g", 20, [true, true]);
    let f = &c.f;
    let (said, sent, id) = ready_to_call(&c, speech_s, "Rash; tunnel ahead");
    let out = std::thread::scope(|scope| {
        let call = scope.spawn(|| escalate_speaking(&c, &id, &said));
        // Once the call is up, the ambulance goes under a bridge or through a tunnel.
        wait_connected(f, &c.hub, &id);
        std::thread::sleep(Duration::from_secs(3));
        c.link.set_up(false);
        std::thread::sleep(blackout);
        c.link.set_up(true);
        call.join().unwrap()
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(result["state"], "connected", "{result}");
    let desk_leg = wait_for_leg(f, &c.desks[0], &id, "desk-a");
    eprintln!("blackout call: desk leg {desk_leg}\nlink {:?}", c.link.stats());
    assert_eq!(desk_leg["end"], "other side hung up", "the call was not dropped: {desk_leg}");
    let gap = desk_leg["longest_gap_ms"].as_i64().unwrap();
    f.record(&serde_json::json!({
        "blackout_ms": blackout.as_millis() as u64,
        "longest_gap_ms": gap,
        "beyond_the_blackout_ms": gap - blackout.as_millis() as i64,
        "desk_leg": desk_leg,
        "seed": f.seed,
    }));
    // The blackout shows as one gap of about its length; the call carried on after it.
    assert!(gap >= blackout.as_millis() as i64 * 8 / 10, "the blackout is in the record: longest gap {gap} ms");
    // The audio came back soon after the link did (the goal, in the closing figures, is
    // under 0.5 s beyond the blackout; QUIC's backed-off probe timer alone made it 4 s for a
    // 3 s blackout). A generous bound here: a loaded 2-core machine delays processes.
    assert!(
        gap <= blackout.as_millis() as i64 + 1_500,
        "the audio resumed within 1.5 s of the link's return: longest gap {gap} ms for a {} ms blackout",
        blackout.as_millis()
    );
    // Speech after the blackout reached the consultant.
    let heard = read(&c.desks[0].join("heard.wav"));
    let end = (speech_s * 8_000.0) as usize - 4_000;
    let sim = similarity(&sent, &heard, end - 20_000..end);
    assert!(sim > 0.8, "the end of the call came through after the blackout: correlation {sim:.3}");
    gap
}

#[test]
fn a_three_second_blackout_mid_call_costs_little_more_than_its_length() {
    blackout_call("call-audio-blackout", Duration::from_secs(3), 16.0);
}

#[test]
fn a_ten_second_blackout_mid_call_is_survived_and_the_audio_returns_with_the_link() {
    blackout_call("call-audio-blackout-10s", Duration::from_secs(10), 24.0);
}

#[test]
fn a_drop_longer_than_ten_seconds_ends_the_call_and_requests_a_callback() {
    let c = fleet("call-audio-drop", "urban-4g", 20, [true, true]);
    let f = &c.f;
    let (said, _, id) = ready_to_call(&c, 20.0, "Rash; into the hills");
    std::thread::scope(|scope| {
        let call = scope.spawn(|| escalate_speaking(&c, &id, &said));
        wait_connected(f, &c.hub, &id);
        std::thread::sleep(Duration::from_secs(2));
        c.link.set_up(false);
        // The desk gives up on the silence after 12 s; the link returns only after that.
        let desk_leg = wait_for_leg(f, &c.desks[0], &id, "desk-a");
        c.link.set_up(true);
        assert_eq!(desk_leg["end"], "dropped", "{desk_leg}");
        let _ = call.join();
    });
    f.wait(LIMIT, POLL, "the callback request at the hub", || {
        steps(f, &c.hub, &id)
            .iter()
            .any(|e| e["kind"] == "callback" && e["reason"].as_str().is_some_and(|r| r.contains("dropped")))
    });
}

#[test]
fn an_outcome_not_recorded_after_a_call_is_flagged_not_reported() {
    let c = fleet("call-outcome-due", "urban-4g", 20, [true, true]);
    let f = &c.f;
    let (said, _, id) = ready_to_call(&c, 2.0, "Rash; quick question");
    let out = escalate_speaking(&c, &id, &said);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(result["state"], "connected", "{result}");
    // The paramedic records an outcome; the consultant does not.
    f.ok(&["outcome", "set", "--dir", s(&c.amb), &id, "--side", "requester", "conveyance_avoided"]);
    f.wait(LIMIT, POLL, "the hub to flag the consultant's missing outcome", || {
        f.export(&c.hub, &id).is_some_and(|v| {
            v["outcome"]["responder"]["value"] == "not_reported"
                && v["outcome"]["requester"]["value"] == "conveyance_avoided"
        })
    });
}

#[test]
fn when_no_desk_in_area_answers_the_federated_hubs_line_takes_the_call_and_speech_crosses_both_hubs() {
    let _alone = measuring_audio();
    let mut f = Field::new(BIN, "call-out-of-area");
    let hub = f.node("hub-qhm", "hub", &[]);
    let desk_a = f.node("desk-a", "desk", &["--org", "RTH", "--service-line", "dermatology"]);
    let amb = f.node("amb-07", "edge", &["--org", "RX6"]);
    // A neighbouring ICB, same fleet: its hub and its dermatology consultant.
    let far_hub = f.node_in("hub-qox", "hub", "QOX", &[]);
    let desk_x = f.node_in("desk-x", "desk", "QOX", &["--org", "RTH", "--service-line", "dermatology"]);
    f.ok(&[
        "rota",
        "set",
        "--dir",
        s(&hub),
        "--line",
        "dermatology",
        "--desk",
        "desk-a:3",
        "--fallback-hub",
        "hub-qox",
    ]);
    f.ok(&["rota", "set", "--dir", s(&far_hub), "--line", "dermatology", "--desk", "desk-x"]);
    let (hub_addr, far_addr) = (free_addr(), free_addr());
    let far = f.daemon(&far_hub, &["--listen", &far_addr]);
    f.wait(LIMIT, POLL, "hub-qox to listen", || far.log_text().contains("outpost daemon started"));
    let home = f.daemon(&hub, &["--listen", &hub_addr, "--peer", &far_addr]);
    f.wait(LIMIT, POLL, "hub-qhm to listen", || home.log_text().contains("outpost daemon started"));
    // desk-a is away (never answers); desk-x answers and records what it hears.
    let _desk_a = f.daemon(&desk_a, &["--peer", &hub_addr]);
    let heard = desk_x.join("heard.wav");
    let _desk_x = f.daemon(&desk_x, &["--peer", &far_addr, "--auto-answer", "--record", s(&heard)]);
    let link = Link::start("urban-4g", &hub_addr, f.seed);
    let _amb = f.daemon(&amb, &["--peer", &link.addr]);

    let id =
        f.new_session(&amb, "dermatology", "ambulance_on_scene", "Necrotic wound, spreading; local consultant away");
    f.message(&amb, &id, "Please call");
    let p = f.dir.join("wound.jpg");
    photo_file(&p, f.seed, 600_000);
    let hash = f.photo(&amb, &id, &p, "close-up");
    let said = f.dir.join("paramedic.wav");
    let sent = speech(&said, 12.0);
    let out = f.ok(&["call", "escalate", "--dir", s(&amb), &id, "--wait", "120", "--json", "--play", s(&said)]);
    let result = json(&out);
    assert_eq!(result["state"], "connected", "{result}; the emulated link: {:?}", link.stats());
    assert_eq!(result["desk"], "desk-x", "{result}");

    // The session's hub tells the whole story: its own desk first, then the hand-over.
    let log = steps(&f, &hub, &id);
    let rings = of_kind(&log, "ring");
    assert_eq!(rings.iter().map(|r| r["desk"].as_str().unwrap()).collect::<Vec<_>>(), ["desk-a", "desk-x"], "{log:?}");
    assert_eq!(of_kind(&log, "no_answer")[0]["desk"], "desk-a");
    let federate = of_kind(&log, "federate");
    assert_eq!(federate.len(), 1, "{log:?}");
    assert_eq!(federate[0]["hub"], "hub-qox");
    assert!(federate[0]["at_ms"].as_i64() <= rings[1]["at_ms"].as_i64());
    let connected = of_kind(&log, "connected");
    assert_eq!(connected[0]["desk"], "desk-x");
    assert!(connected[0]["ms_from_handover"].as_i64().is_some(), "timed from the hand-over: {}", connected[0]);
    // desk-x held the photo before it was rung, as in area.
    let v = f.export(&far_hub, &id).unwrap();
    let m = v["media"].as_array().unwrap().iter().find(|m| m["hash"] == hash.as_str()).unwrap();
    let held_at = m["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "desk-x" && r["level"] != "hub")
        .map(|r| r["at_ms"].as_i64().unwrap())
        .unwrap_or_else(|| panic!("desk-x has no receipt for the photo: {m}"));
    assert!(held_at <= rings[1]["at_ms"].as_i64().unwrap(), "desk-x rung before it held the photo");
    // The voice went ambulance -> hub-qhm -> hub-qox -> desk-x.
    let desk_leg = wait_for_leg(&f, &desk_x, &id, "desk-x");
    eprintln!("out-of-area call: desk leg {desk_leg}\nrouting {log:?}");
    assert!(desk_leg["frames_received"].as_i64().unwrap() > 200, "{desk_leg}");
    let recorded = read(&heard);
    let sim = similarity(&sent, &recorded, 4_000..40_000);
    assert!(sim > 0.8, "the far consultant heard the paramedic: correlation {sim:.3}");
}

#[test]
fn a_hang_up_lost_on_the_link_is_read_from_the_call_record_not_taken_for_a_drop() {
    let c = fleet("call-lost-bye", "urban-4g", 20, [true, true]);
    let f = &c.f;
    let (said, _, id) = ready_to_call(&c, 3.0, "Rash; short question");
    std::thread::scope(|scope| {
        let call = scope.spawn(|| escalate_speaking(&c, &id, &said));
        wait_connected(f, &c.hub, &id);
        // The link fails just before the paramedic's 3 s of speech end: every copy of the
        // hang-up datagram is lost. It returns a second after the ambulance recorded its leg.
        std::thread::sleep(Duration::from_millis(2_500));
        c.link.set_up(false);
        let amb_leg = wait_for_leg(f, &c.amb, &id, "amb-07");
        assert_eq!(amb_leg["end"], "hangup", "{amb_leg}");
        std::thread::sleep(Duration::from_secs(2));
        c.link.set_up(true);
        let _ = call.join();
    });
    let desk_leg = wait_for_leg(f, &c.desks[0], &id, "desk-a");
    eprintln!("lost hang-up: desk leg {desk_leg}");
    assert_eq!(desk_leg["end"], "other side hung up", "{desk_leg}");
    assert!(
        !steps(f, &c.hub, &id).iter().any(|e| e["kind"] == "callback"),
        "no callback is requested for a call that ended normally"
    );
}

/// A noise-like test signal (a linear congruential generator's top bits).
fn noise(len: usize, seed: u64) -> Vec<i16> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 52) as i16 - 2048
        })
        .collect()
}

#[test]
fn a_recording_that_lost_the_calls_first_frame_still_matches_the_speech() {
    let sent = noise(48_000, 7);
    // The first 20 ms frame (160 samples) never arrived: playout began with the second.
    let heard = &sent[160..];
    assert!(similarity(&sent, heard, 4_000..40_000) > 0.99);
    // Before, only delays from zero up were tried, and this recording did not match at all.
    assert!(best_match(&sent, heard, 4_000..40_000, 0..48_000).0 < 0.2);
}

#[test]
fn a_recording_delayed_by_the_network_matches_the_speech() {
    let sent = noise(48_000, 11);
    let mut heard = vec![0i16; 800];
    heard.extend_from_slice(&sent);
    let (sim, lag) = best_match(&sent, &heard, 4_000..40_000, -8_000..48_000);
    assert!(sim > 0.999 && lag == 800, "{sim} at {lag}");
    assert!(similarity(&sent, &noise(48_000, 12), 4_000..40_000) < 0.2, "unrelated audio does not match");
}

/// `c` with a second ambulance, amb-08, connected to the hub directly.
fn with_second_crew(mut c: CallFleet) -> (CallFleet, PathBuf) {
    let second = c.f.node("amb-08", "edge", &["--org", "RX6"]);
    let daemon = c.f.daemon(&second, &["--peer", &c.hub_addr]);
    c._daemons.push(daemon);
    (c, second)
}

/// A desk carries one call's audio at a time. While desk-a is on a call with one crew, a second
/// crew's escalation rings desk-a first (the rota's first desk), but desk-a does not answer it:
/// the ring passes to desk-b after its time, desk-b answers, and the second crew is connected
/// to a desk that carries its voice, not to one that would show "connected" and stay silent.
#[test]
fn a_desk_already_on_a_call_lets_a_second_crews_ring_pass_to_the_next_desk() {
    let _alone = measuring_audio();
    let (c, second) = with_second_crew(fleet("call-busy-desk", "urban-4g", 3, [true, true]));
    let f = &c.f;
    let (said, _sent, first) = ready_to_call(&c, 20.0, "first crew: spreading rash");
    let theirs = f.new_session(&second, "dermatology", "ambulance_on_scene", "second crew: burn on the forearm");
    std::thread::scope(|scope| {
        let call = scope.spawn(|| escalate_speaking(&c, &first, &said));
        wait_connected(f, &c.hub, &first);
        let connected_to =
            |id: &str| steps(f, &c.hub, id).iter().find(|e| e["kind"] == "connected").map(|e| e["desk"].clone());
        assert_eq!(connected_to(&first), Some(Value::from("desk-a")));
        let out = f.ok(&["call", "escalate", "--dir", s(&second), &theirs, "--wait", "60", "--json"]);
        let result = json(&out);
        assert_eq!(result["state"], "connected", "{result}");
        assert_eq!(result["desk"], "desk-b", "the desk on a call answered a second one: {result}");
        let log = steps(f, &c.hub, &theirs);
        let rung: Vec<&Value> = of_kind(&log, "ring").iter().map(|r| &r["desk"]).collect();
        assert_eq!(rung, ["desk-a", "desk-b"], "{log:?}");
        assert!(of_kind(&log, "answer").iter().all(|a| a["desk"] == "desk-b"), "{log:?}");
        // The first call carried on meanwhile, to its end.
        let first_result = json(&String::from_utf8_lossy(&call.join().unwrap().stdout));
        assert_eq!(first_result["leg"]["end"], "hangup", "{first_result}");
    });
}

/// A party's call is carried by its hub. Another fleet member that dials the desk directly (a
/// desk listens on its LAN) and learnt the call's id (it is in the session's routing log)
/// sends the call's hang-up datagram at the desk: the desk does not take it, and the call goes
/// on until the crew hangs up.
#[test]
fn a_desk_takes_a_calls_voice_and_hang_up_only_from_its_hub() {
    let _alone = measuring_audio();
    let desk_addr = free_addr();
    let mut c = fleet_with("call-voice-intruder", "urban-4g", 20, [true, true], Some(&desk_addr));
    let rogue = c.f.node("amb-66", "edge", &["--org", "RX6"]);
    let c = c;
    let f = &c.f;
    let (said, _sent, id) = ready_to_call(&c, 12.0, "Rash; need to talk it through");
    std::thread::scope(|scope| {
        let call = scope.spawn(|| escalate_speaking(&c, &id, &said));
        wait_connected(f, &c.hub, &id);
        let log = steps(f, &c.hub, &id);
        let call_id = of_kind(&log, "escalate")[0]["call"].as_str().unwrap().to_string();
        let intruder = field_tests::Intruder::connect(&rogue, &desk_addr);
        let bye = sync_protocol::voice::bye(sync_protocol::voice::call_tag(&call_id));
        for _ in 0..10 {
            assert!(intruder.send_datagram(&bye), "the desk's connection carries datagrams");
            std::thread::sleep(Duration::from_millis(100));
        }
        let result = json(&String::from_utf8_lossy(&call.join().unwrap().stdout));
        assert_eq!(result["leg"]["end"], "hangup", "the crew hung up at the end of what it said: {result}");
        let desk_leg = wait_for_leg(f, &c.desks[0], &id, "desk-a");
        let lasted = desk_leg["duration_ms"].as_i64().unwrap();
        assert!(lasted > 9_000, "the desk's leg ended after {lasted} ms, at the intruder's hang-up: {desk_leg}");
    });
}

/// Two crews escalate at the same moment and the hub rings desk-a (the rota's first) for
/// both. desk-a answers one; the other ring passes to desk-b after its time, and each crew is
/// connected to a desk of its own.
#[test]
fn two_crews_escalating_at_once_are_connected_to_two_desks() {
    let _alone = measuring_audio();
    let (c, second) = with_second_crew(fleet("call-two-at-once", "urban-4g", 3, [true, true]));
    let f = &c.f;
    let (said, _sent, first) = ready_to_call(&c, 8.0, "first crew: spreading rash");
    let theirs = f.new_session(&second, "dermatology", "ambulance_on_scene", "second crew: burn on the forearm");
    let (one, two) = std::thread::scope(|scope| {
        let one = scope.spawn(|| escalate_speaking(&c, &first, &said));
        let two = scope.spawn(|| {
            f.outpost(&[
                "call",
                "escalate",
                "--dir",
                s(&second),
                &theirs,
                "--wait",
                "120",
                "--json",
                "--play",
                s(&said),
            ])
        });
        (one.join().unwrap(), two.join().unwrap())
    });
    let (one, two) = (json(&String::from_utf8_lossy(&one.stdout)), json(&String::from_utf8_lossy(&two.stdout)));
    assert_eq!((&one["state"], &two["state"]), (&Value::from("connected"), &Value::from("connected")), "{one}\n{two}");
    let mut desks = [one["desk"].as_str().unwrap_or(""), two["desk"].as_str().unwrap_or("")];
    desks.sort();
    assert_eq!(desks, ["desk-a", "desk-b"], "each crew to a desk of its own: {one}\n{two}");
    let answered_by_a: usize = [&first, &theirs]
        .iter()
        .map(|id| of_kind(&steps(f, &c.hub, id), "answer").iter().filter(|a| a["desk"] == "desk-a").count())
        .sum();
    assert_eq!(answered_by_a, 1, "desk-a answered both rings");
}

#[test]
fn photos_sent_mid_call_leave_the_consultant_hearing_the_call_clearly() {
    // The consultant asks for a close-up 3 s into the call, and the paramedic attaches three
    // 2 MB photos while they talk: the photos go up the same link, on the same connection, as
    // the call's audio. Without care they fill the bottleneck's queue (150 ms and more) in
    // front of the audio, whose frames then come too late for the desk's jitter buffer: the
    // desk heard 1.9-2.6% of the call lost, gaps of 140-220 ms, MOS 3.5-3.7 (4.2 without the
    // photos), in five runs before the controller kept its queue short during a call.
    let _alone = measuring_audio();
    let c = fleet("call-photos-mid-call", "urban-4g", 20, [true, true]);
    let f = &c.f;
    let (said, _sent, id) = ready_to_call(&c, 16.0, "Rash; close-ups coming during the call");
    let files: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = f.dir.join(format!("mid-call-{i}.jpg"));
            photo_file(&p, f.seed + 40 + i as u64, 2_000_000);
            p
        })
        .collect();
    let mut hashes = Vec::new();
    let mut attached_ms = 0;
    let out = std::thread::scope(|scope| {
        let call = scope.spawn(|| escalate_speaking(&c, &id, &said));
        wait_connected(f, &c.hub, &id);
        std::thread::sleep(Duration::from_secs(3));
        attached_ms = outpost_node::node::now_ms();
        for p in &files {
            hashes.push(f.photo(&c.amb, &id, p, "close-up"));
        }
        call.join().unwrap()
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(result["state"], "connected", "{result}");
    let leg = &result["leg"];
    let desk_leg = wait_for_leg(f, &c.desks[0], &id, "desk-a");
    eprintln!("photos mid-call: ambulance leg {leg}\ndesk leg {desk_leg}");
    // The photos still went up: every one whole at the hub.
    let mut view = Value::Null;
    f.wait(LIMIT, POLL, "the photos sent mid-call to be whole at the hub", || {
        view = f.export(&c.hub, &id).unwrap_or_default();
        hashes.iter().all(|h| {
            view["media"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["hash"] == h.as_str() && has_receipt(m, "hub", "hub-qhm")))
        })
    });
    // How long they took, from the first attached to the last stored whole at the hub.
    let stored_ms = view["media"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| hashes.iter().any(|h| m["hash"] == h.as_str()))
        .flat_map(|m| m["receipts"].as_array().into_iter().flatten().filter(|r| r["node"] == "hub-qhm"))
        .filter_map(|r| r["at_ms"].as_i64())
        .max()
        .expect("the hub's receipts, seen just above");
    let photos_s = (stored_ms - attached_ms) as f64 / 1e3;
    eprintln!(
        "photos mid-call: the three at the hub {photos_s:.1} s after the first was attached; link {:?}",
        c.link.stats()
    );
    f.record(
        &serde_json::json!({ "ambulance_leg": leg, "desk_leg": desk_leg, "photos_at_hub_s": photos_s, "seed": f.seed }),
    );
    // Judged as the call without photos is (above), and the consultant's side on its own too,
    // since it is the side the photos' queue stands in front of: frames that came too late to
    // play are the queue's mark (6 in each run before; the link's random loss makes none).
    assert_clear_both_ways(leg, &desk_leg);
    let figure = |l: &Value, k: &str| l[k].as_f64().unwrap();
    assert!(figure(&desk_leg, "loss") < 0.02, "the consultant lost under 2% of the paramedic's speech: {desk_leg}");
    assert!(figure(&desk_leg, "frames_late") <= 2.0, "at most two frames came too late to play: {desk_leg}");
}
