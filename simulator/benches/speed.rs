//! Simulator speed: `cargo bench -p outpost-sim --bench speed`.
//!
//! Runs `rural-day` (24 simulated hours: 100 surgeries, 40 ambulances, 30 desks) and, as a
//! baseline in the same run, `smoke`; prints wall time, simulated seconds per wall second and
//! events per second, and the ratio between the two. Target (issue 4): rural-day under 60 s
//! wall in release on this 2-core machine. `SIM_BENCH_SEED` picks the seed (default 7);
//! `SIM_BENCH_SCENARIOS` a comma-separated list to run instead.

use outpost_sim::scenario::Scenario;
use outpost_sim::world::Options;

fn main() {
    let seed: u64 = std::env::var("SIM_BENCH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let list = std::env::var("SIM_BENCH_SCENARIOS").unwrap_or_else(|_| "smoke,rural-day".into());
    println!("outpost-sim speed (seed {seed}, release, one thread)");
    println!(
        "{:<14} {:>9} {:>10} {:>12} {:>12} {:>14} {:>10}",
        "scenario", "sim h", "wall s", "sim s/wall s", "events", "events/wall s", "invariants"
    );
    let mut rows = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let sc = match Scenario::load(name) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skipping {name}: {e}");
                continue;
            }
        };
        let r = outpost_sim::run(sc, Options { seed, ..Options::default() }, |_, _| {});
        println!(
            "{:<14} {:>9.1} {:>10.1} {:>12.0} {:>12} {:>14.0} {:>10}",
            name,
            r.hours,
            r.wall_seconds,
            r.speed,
            r.events,
            r.events as f64 / r.wall_seconds.max(1e-9),
            if r.passed() { "held" } else { "VIOLATED" }
        );
        if !r.passed() {
            eprintln!("{}", r.summary());
        }
        rows.push((name.to_string(), r));
    }
    if let (Some((b, base)), Some((n, day))) = (rows.first(), rows.last())
        && rows.len() > 1
    {
        println!(
            "{n} runs {:.2}x the simulated seconds per wall second of {b} ({:.0} vs {:.0}); target for rural-day: 24 h in under 60 s wall: {}",
            day.speed / base.speed.max(1e-9),
            day.speed,
            base.speed,
            if n == "rural-day" { if day.wall_seconds < 60.0 { "met" } else { "NOT met" } } else { "n/a" }
        );
    }
}
