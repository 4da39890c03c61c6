//! The simulator's own guarantees: one seed, one run; every built-in scenario loads; the smoke
//! region holds every invariant; and planted bugs in a copy of the store are caught, with the
//! seed and the command that reruns them printed.

use outpost_sim::scenario::{BUILT_IN, Scenario};
use outpost_sim::world::{Bugs, Options};
use outpost_sim::{Report, run};
use sync_protocol::call::GATE_WINDOWS;

fn smoke(seed: u64, hours: Option<f64>, bugs: Bugs) -> Report {
    let sc = Scenario::load("smoke").expect("the smoke scenario is built in");
    run(sc, Options { seed, hours, bugs }, |_, _| {})
}

/// Four desks on hospital links, one for each line the workloads below ask about.
const FOUR_DESKS: &str = r#"
[[group]]
kind = "desk"
count = 4
link = "hospital"
lines = ["emergency_medicine", "cardiology", "paediatrics", "dermatology"]
"#;

fn checks(r: &Report) -> Vec<&str> {
    r.violations.iter().map(|v| v.check.as_str()).collect()
}

/// `SIM_SEED` alone if set (to rerun a failure), else these seeds.
fn seeds_or(default: &[u64]) -> Vec<u64> {
    match std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => default.to_vec(),
    }
}

#[test]
fn one_seed_run_twice_gives_the_same_event_log_hash() {
    let a = smoke(11, Some(1.5), Bugs::default());
    let b = smoke(11, Some(1.5), Bugs::default());
    assert!(a.events > 1000, "seed 11: the run did too little to compare ({} events)", a.events);
    assert_eq!(a.event_hash, b.event_hash, "seed 11 is not deterministic; rerun: {}", a.rerun);
    assert_eq!(a.events, b.events, "seed 11: rerun: {}", a.rerun);
}

#[test]
fn different_seeds_give_different_runs() {
    let a = smoke(1, Some(1.0), Bugs::default());
    let b = smoke(2, Some(1.0), Bugs::default());
    assert_ne!(a.event_hash, b.event_hash, "seeds 1 and 2 gave the same event log");
}

#[test]
fn every_built_in_scenario_loads() {
    for (name, _) in BUILT_IN {
        let sc = Scenario::load(name).unwrap_or_else(|e| panic!("scenario {name}: {e}"));
        assert_eq!(&sc.name, name);
    }
}

#[test]
fn the_smoke_region_holds_every_invariant_through_every_fault() {
    let seeds = seeds_or(&[7, 1, 2, 3, 4]);
    for seed in seeds {
        smoke_holds(seed);
    }
}

fn smoke_holds(seed: u64) {
    let r = smoke(seed, None, Bugs::default());
    assert!(r.passed(), "{}", r.summary());
    // The run did real work: writes reached the hub and the desks, and photos moved.
    let written: usize = r.writes.values().sum();
    assert!(written > 20, "seed {seed}: only {written} writes\n{}", r.summary());
    assert!(r.to_hub.values().map(|p| p.count).sum::<usize>() > 20, "{}", r.summary());
    assert!(r.to_desk.values().map(|p| p.count).sum::<usize>() > 20, "{}", r.summary());
    assert!(r.photo_to_hub.count > 0, "{}", r.summary());
    // Writes made during an outage that lasted to the end of the scenario reach the hub as the
    // region settles; none may be missing after that.
    assert_eq!(r.never_delivered, 0, "{}", r.summary());
    assert!(r.convergence_seconds.is_some(), "{}", r.summary());
    assert!(r.wire_efficiency > 0.5 && r.wire_efficiency <= 1.0, "{}", r.summary());
}

#[test]
fn a_router_that_flags_outcomes_not_reported_before_the_wait_is_caught() {
    // The planted bug is in the shared router (`sync_protocol::router::Router`), the code the
    // node's hub runs: the simulator drives it and its outcomes check sees the early flag.
    let plain = smoke(7, None, Bugs::default());
    assert!(plain.passed(), "{}", plain.summary());
    assert!(plain.not_reported > 0, "the smoke region's hour-long wait runs out for some call\n{}", plain.summary());
    let r = smoke(7, None, Bugs { flags_outcomes_at_once: true, ..Bugs::default() });
    assert!(checks(&r).contains(&"outcomes"), "the early flag went unnoticed:\n{}", r.summary());
    assert!(r.rerun.contains("--plant flags-outcomes-at-once"), "{}", r.rerun);
}

#[test]
fn a_store_that_acknowledges_before_it_is_durable_is_caught() {
    let r = smoke(7, None, Bugs { lose_acked_writes_on_crash: true, ..Bugs::default() });
    let summary = r.summary();
    println!("{summary}");
    assert!(checks(&r).contains(&"durability"), "the planted durability bug went unnoticed:\n{summary}");
    assert!(summary.contains("VIOLATIONS (seed 7)"), "{summary}");
    assert!(summary.contains("rerun with: SIM_SEED=7 cargo run"), "{summary}");
    assert!(r.rerun.contains("--plant lose-acked-writes"), "{}", r.rerun);
}

#[test]
fn a_hub_that_ignores_scope_is_caught() {
    let sc = Scenario::load("smoke").expect("built in");
    let hub = sc.hub_name();
    let r = run(
        sc,
        Options { seed: 7, hours: Some(2.0), bugs: Bugs { ignore_scope_at: Some(hub), ..Bugs::default() } },
        |_, _| {},
    );
    let summary = r.summary();
    println!("{summary}");
    assert!(checks(&r).contains(&"scope"), "the planted scope bug went unnoticed:\n{summary}");
    assert!(summary.contains("VIOLATIONS (seed 7)"), "{summary}");
}

#[test]
fn a_hostile_fleet_member_is_refused_every_time_and_the_region_still_holds() {
    use outpost_sim::scenario::{Fault, FaultKind};
    let seed = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let mut sc = Scenario::load("smoke").expect("built in");
    // The first ambulance's tablet is stolen for two hours (rerun with
    // `--fault byzantine=ambulance-001`, which makes it hostile for the whole run).
    sc.faults.push(Fault {
        kind: FaultKind::Byzantine,
        targets: "ambulance:1".into(),
        at_hour: 0.5,
        minutes: 120.0,
        every_hours: 0.0,
        factor: 1.0,
        hours: 0.0,
        probability: 0.0,
    });
    let r = run(sc, Options { seed, hours: None, bugs: Bugs::default() }, |_, _| {});
    let summary = r.summary();
    println!("{summary}");
    assert!(r.attacks.0 >= 100, "seed {seed}: only {} attacks were made\n{summary}", r.attacks.0);
    assert_eq!(r.attacks.0, r.attacks.1, "seed {seed}: an attack got through\n{summary}");
    assert!(r.passed(), "seed {seed}: {summary}");
    assert_eq!(r.never_delivered, 0, "{summary}");
}

#[test]
fn a_hub_and_desks_restored_from_older_backups_get_back_everything_a_peer_holds() {
    use outpost_sim::scenario::Fault;
    let seeds = seeds_or(&[7, 1, 2]);
    for seed in seeds {
        let mut sc = Scenario::load("smoke").expect("built in");
        // Rerun one case with `--fault restore=hub@3.5:2 --fault restore=desk:all@2.5:1`.
        sc.faults.push(Fault::restore("hub", 3.5, 2.0));
        sc.faults.push(Fault::restore("desk:all", 2.5, 1.0));
        let r = run(sc, Options { seed, hours: None, bugs: Bugs::default() }, |_, _| {});
        let summary = r.summary();
        assert_eq!(r.restores.0, 5, "seed {seed}: {summary}");
        assert!(r.restores.1 > 0, "seed {seed}: the restores lost nothing to get back\n{summary}");
        // Every session, message and photo written reached the hub, although the hub and the
        // desks lost some: the ambulances, surgeries and desks still held them.
        assert_eq!(r.restores.2, 0, "seed {seed}: {summary}");
        // The desks' audit chains were cut back where the hub had kept them: findings were due
        // and (r.passed) each was made, with no false alarm.
        assert!(r.audit_findings.0 > 0, "seed {seed}: no restore cut a chain the hub had kept\n{summary}");
        assert!(r.passed(), "seed {seed}: {summary}");
        assert_eq!(r.never_delivered, 0, "seed {seed}: {summary}");
    }
}

/// Ambulances, surgeries and desks put back to older backups (their audit chains cut back
/// where the hub had seen them) are found by the hub (`peer.audit_behind`) and find it
/// themselves (`audit.behind`), and no chain records a cut that was not made: the audit
/// checker's expectations, judged by the same rule the node uses (`sync_protocol::audit`).
#[test]
fn members_restored_from_older_backups_are_found_by_their_hub_and_no_chain_raises_a_false_alarm() {
    use outpost_sim::scenario::Fault;
    let seeds = seeds_or(&[7, 1, 2]);
    for seed in seeds {
        let mut sc = Scenario::load("smoke").expect("built in");
        // `--fault restore=ambulance:all@2.5:1 --fault restore=surgery:all@3:1 --fault restore=desk:all@3.5:2`
        sc.faults.push(Fault::restore("ambulance:all", 2.5, 1.0));
        sc.faults.push(Fault::restore("surgery:all", 3.0, 1.0));
        sc.faults.push(Fault::restore("desk:all", 3.5, 2.0));
        let r = run(sc, Options { seed, hours: None, bugs: Bugs::default() }, |_, _| {});
        let summary = r.summary();
        assert!(r.restores.0 > 0, "seed {seed}: {summary}");
        assert!(r.audit_findings.0 > 0, "seed {seed}: no restore cut a chain the hub had kept\n{summary}");
        assert!(r.passed(), "seed {seed}: {summary}");
    }
}

/// A hub put back to an older backup (a VM restored from a snapshot) is found by its members:
/// the first conversation after gives the hub the end it must vouch for, the next its proof,
/// and each member whose kept end the hub no longer holds records `peer.audit_behind`.
#[test]
fn a_hub_restored_from_an_older_backup_is_found_by_its_members() {
    use outpost_sim::scenario::Fault;
    let seeds = seeds_or(&[7, 1, 2]);
    for seed in seeds {
        let mut sc = Scenario::load("smoke").expect("built in");
        // `--fault restore=hub@3.5:2`
        sc.faults.push(Fault::restore("hub", 3.5, 2.0));
        let r = run(sc, Options { seed, hours: None, bugs: Bugs::default() }, |_, _| {});
        let summary = r.summary();
        assert_eq!(r.restores.0, 1, "seed {seed}: {summary}");
        assert!(r.audit_findings.0 > 0, "seed {seed}: no member's finding came due\n{summary}");
        assert!(r.passed(), "seed {seed}: {summary}");
    }
}

#[test]
fn simulated_photo_times_come_within_a_fifth_of_the_real_transport_on_every_ladder_profile() {
    let seed: u64 = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let rows =
        outpost_sim::photos::uploads(&outpost_sim::photos::LADDER, 3, seed).expect("the ladder's profiles exist");
    for r in &rows {
        let (field, _) = outpost_sim::photos::field_seconds(&r.profile).expect("a field figure for every rung");
        let sim = r.seconds.unwrap_or_else(|| panic!("seed {seed}: the photos never reached the hub on {}", r.profile));
        assert!(sim >= r.ideal_seconds, "seed {seed}: {} faster than its link allows: {sim:.1} s", r.profile);
        let ratio = sim / field;
        assert!(
            (0.8..=1.2).contains(&ratio),
            "seed {seed}: {} simulated {sim:.1} s against the field's {field:.1} s (ratio {ratio:.2})\n{}",
            r.profile,
            outpost_sim::photos::table(&rows)
        );
    }
}

/// Fresh seeds every run (the fixed seeds above stay the same): `SIM_SWARM=N` seeds (default
/// 16), each for two simulated hours and then settling: three in four the smoke region (every
/// fault), one in four the `federation` region (two ICBs' hubs, calls handed between them). A
/// failure names its scenario, its seed and the command that reruns it.
#[test]
fn a_swarm_of_fresh_random_seeds_holds_every_invariant() {
    let n: u64 = std::env::var("SIM_SWARM").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut state = clock ^ u64::from(std::process::id()).rotate_left(32);
    for i in 0..n {
        // splitmix64: well-spread seeds from one clock reading.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let seed = (z ^ (z >> 31)) % 1_000_000_007;
        let scenario = if i % 4 == 3 { "federation" } else { "smoke" };
        println!("swarm seed {seed} ({scenario})");
        let sc = Scenario::load(scenario).expect("a built-in scenario");
        let r = run(sc, Options { seed, hours: Some(2.0), bugs: Bugs::default() }, |_, _| {});
        assert!(r.passed(), "swarm seed {seed} ({scenario}) broke an invariant; rerun: {}\n{}", r.rerun, r.summary());
        assert!(
            r.writes.values().sum::<usize>() > 5,
            "swarm seed {seed} ({scenario}) did too little:\n{}",
            r.summary()
        );
        assert_eq!(r.never_delivered, 0, "swarm seed {seed}; rerun: {}\n{}", r.rerun, r.summary());
    }
}

/// The hub's directory at work in the simulator, through the node's own router: a line closed
/// for the whole run and a line that takes no calls ring no one (the `routing` checker), and
/// every escalation on them ends in a callback that says so; the open lines still connect.
#[test]
fn a_closed_line_and_a_line_taking_no_calls_ring_no_one_and_end_in_callbacks() {
    let text = format!(
        r#"
name = "closed-lines"
hours = 3
start_hour = 9
settle_minutes = 30

[[group]]
kind = "ambulance"
count = 8
link = "urban-4g"
steady = true
sessions_per_hour = 2.0
{FOUR_DESKS}
[[line]]
line = "emergency_medicine"
hours = "daily 20:00-22:00"

[[line]]
line = "cardiology"
channels = ["message", "photo"]

[workload]
ambulance_escalations = 1.0
"#
    );
    for seed in [7, 8] {
        let sc = Scenario::parse(&text, "closed-lines").unwrap();
        let r = run(sc, Options { seed, hours: None, bugs: Bugs::default() }, |_, _| {});
        assert!(r.passed(), "seed {seed}:\n{}", r.summary());
        let closed = r.escalation_callbacks.get("line closed").copied().unwrap_or(0);
        assert!(closed >= 5, "seed {seed}: {closed} callbacks for a closed line\n{}", r.summary());
        assert!(r.escalations_connected >= 1, "seed {seed}: the open lines connected nothing\n{}", r.summary());
        let rung_closed = r
            .escalation_list
            .iter()
            .filter(|e| e.callback.as_deref() == Some("line closed"))
            .any(|e| e.rung_s.is_some());
        assert!(!rung_closed, "seed {seed}: a desk rang for a closed line\n{}", r.summary());
    }
}

/// Federation through the node's own router (`federation` scenario): the region's cardiology
/// line is closed until 11:00 and names another ICB's hub as its fallback. Calls made before
/// then are handed over, that hub shares the case with its own desk (outside the session's ICB)
/// and rings it once the desk holds it whole; the handing hub rings none of its own desks. Every
/// invariant holds with the second hub in the region (scope included: the shares widen it).
#[test]
fn a_line_closed_at_home_hands_its_calls_to_the_next_icbs_hub_whose_desk_answers() {
    let seeds = seeds_or(&[7, 8]);
    for seed in seeds {
        let sc = Scenario::load("federation").unwrap();
        let r = run(sc, Options { seed, hours: None, bugs: Bugs::default() }, |_, _| {});
        let summary = r.summary();
        assert!(r.passed(), "seed {seed}; rerun: {}\n{summary}", r.rerun);
        let (handed, connected) = r.escalations_handed_over;
        assert!(handed >= 3, "seed {seed}: only {handed} calls handed over\n{summary}");
        assert!(connected >= 1, "seed {seed}: no handed-over call connected at the other ICB\n{summary}");
        // A call rings the home rota first while the line is open there, then goes out of area;
        // before 11:00 it goes straight over, and the first desk it rings is the other ICB's.
        let handed: Vec<_> = r.escalation_list.iter().filter(|e| e.handed_to.is_some()).collect();
        assert!(handed.iter().all(|e| e.handed_to.as_deref() == Some("hub-qox")), "seed {seed}: {handed:?}");
        let rung_there =
            handed.iter().filter(|e| e.desk.as_deref().is_some_and(|d| d.starts_with("desk-qox-"))).count();
        assert!(rung_there >= 1, "seed {seed}: no handed-over call rang the other ICB's desk first\n{summary}");
        assert!(handed.iter().all(|e| e.rung_s.is_none() || e.desk_held_whole), "seed {seed}: {handed:?}");
        assert!(r.escalations_connected > connected, "seed {seed}: the home lines connected nothing\n{summary}");
    }
}

/// A deployer edits the directory during the run: cardiology, closed until 11:00 in the smoke
/// region, is opened round the clock at 09:30. The hub writes the edit as one change, its
/// router follows it at once (no call seen after it ends as a "line closed" callback, while the
/// same seed without the edit has some), and the engine carries it to every edge and desk (the
/// convergence check compares each copy's heads with the hub's).
#[test]
fn a_directory_edited_during_the_run_reaches_every_edge_and_desk_and_the_router_follows_it() {
    // Seeds whose plain run has a cardiology call find the line closed after the edit's hour
    // (seed 7's no longer does since the nodes tell each other their audit heads).
    let seeds = seeds_or(&[11, 1]);
    let at_hour = 0.5;
    let closed_after_edit = |r: &outpost_sim::Report| {
        r.escalation_list
            .iter()
            .filter(|e| e.seen_at_hub_s.is_some_and(|s| s > at_hour * 3600.0))
            .filter(|e| e.callback.as_deref() == Some("line closed"))
            .count()
    };
    for seed in seeds {
        let opts = || Options { seed, hours: None, bugs: Bugs::default() };
        let plain = run(Scenario::load("smoke").unwrap(), opts(), |_, _| {});
        let mut sc = Scenario::load("smoke").unwrap();
        sc.directory_edits.push(outpost_sim::scenario::DirectoryEdit {
            at_hour,
            line: sync_protocol::vocab::ServiceLine::Cardiology,
            hours: Some("24/7".into()),
            rota: None,
        });
        let edited = run(sc, opts(), |_, _| {});
        let summary = edited.summary();
        assert!(edited.passed(), "seed {seed}; rerun: {}\n{summary}", edited.rerun);
        assert_eq!(edited.directory_edits, 1, "seed {seed}\n{summary}");
        assert_eq!(closed_after_edit(&edited), 0, "seed {seed}: the router did not follow the edit\n{summary}");
        assert!(
            closed_after_edit(&plain) > 0,
            "seed {seed}: without the edit no cardiology call found the line closed, so this checks nothing\n{}",
            plain.summary()
        );
    }
}

/// The link gate through the shared listening rule (`sync_protocol::call::GateListen`), as the
/// node's router runs it: ambulances on rural roads and city 4G escalate, and every call refused for
/// its link was refused only after the gate listened to all its windows and none passed (the
/// `routing` checker). A hub that judges by its first second alone is caught.
#[test]
fn a_call_is_refused_for_its_link_only_after_every_second_the_gate_listens_to_fails() {
    let text = format!(
        r#"
name = "lossy-calls"
hours = 2
start_hour = 9
settle_minutes = 30

[[group]]
kind = "ambulance"
count = 8
link = "rural-a-road"
steady = true
sessions_per_hour = 2.0

[[group]]
kind = "ambulance"
count = 4
link = "urban-4g"
steady = true
sessions_per_hour = 2.0
{FOUR_DESKS}
[workload]
ambulance_escalations = 1.0
"#
    );
    for seed in [7, 8] {
        let sc = || Scenario::parse(&text, "lossy-calls").unwrap();
        let r = run(sc(), Options { seed, hours: None, bugs: Bugs::default() }, |_, _| {});
        assert!(r.passed(), "seed {seed}:\n{}", r.summary());
        let link = r.escalation_callbacks.get("link").copied().unwrap_or(0);
        assert!(
            link >= 1,
            "seed {seed}: no call was refused for its link, so the gate went unchecked\n{}",
            r.summary()
        );
        assert!(r.escalations_connected >= 1, "seed {seed}: no call connected\n{}", r.summary());
        // The gate takes the node's time to listen: at least a second of probes per window, so
        // a refusal for the link comes no sooner than every window's second after the hub saw
        // the request (unless the link went while it listened), and no desk rings before one.
        for e in &r.escalation_list {
            let (Some(seen), Some(judged)) = (e.seen_at_hub_s, e.gate_judged_s) else { continue };
            let listened = judged - seen;
            if e.callback.as_deref() == Some("link") && e.gate_mos.is_some_and(|m| m > 1.0) {
                assert!(listened >= f64::from(GATE_WINDOWS) - 1e-6, "seed {seed}: refused after {listened} s: {e:?}");
            }
            if let Some(rung) = e.rung_s {
                assert!(rung >= seen + 1.0 - 1e-6, "seed {seed}: rung {} s after the hub saw it: {e:?}", rung - seen);
            }
        }
        eprintln!(
            "seed {seed}: {}",
            r.summary().lines().find(|l| l.starts_with("call escalations")).unwrap_or_default()
        );
        let bugs = Bugs { gate_hears_one_window: true, ..Bugs::default() };
        let planted = run(sc(), Options { seed, hours: None, bugs }, |_, _| {});
        assert!(
            checks(&planted).contains(&"routing"),
            "seed {seed}: the one-second gate went unseen\n{}",
            planted.summary()
        );
    }
}
