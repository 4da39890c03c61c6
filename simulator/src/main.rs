//! `outpost-sim`: run a scenario, check determinism, list scenarios.
//!
//! Exit codes: 0 every invariant held; 1 an invariant was violated (the seed and the command
//! that reruns the run are printed); 2 bad arguments or scenario.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_sim::scenario::{BUILT_IN, Fault, FaultKind, Scenario};
use outpost_sim::world::{Bugs, Options};

/// Deterministic simulation of an ICB running outpost.
#[derive(Debug, Parser)]
#[command(name = "outpost-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario; write report.json, summary.txt and SVG plots into --out.
    Run {
        /// A built-in scenario (rural-day, mast-failure, storm-week, smoke) or a TOML file.
        #[arg(long)]
        scenario: String,
        /// The seed (default: SIM_SEED, else 1).
        #[arg(long, env = "SIM_SEED", default_value_t = 1)]
        seed: u64,
        /// Where to write the report.
        #[arg(long)]
        out: PathBuf,
        /// Stop the scenario after this many hours (then settle), for quick runs.
        #[arg(long)]
        hours: Option<f64>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Plant a bug to see the checkers catch it: `lose-acked-writes` (a store that
        /// acknowledges before it is durable) or `ignore-scope-at=NODE` (a store that serves
        /// its peers whatever it holds).
        #[arg(long, value_name = "BUG")]
        plant: Vec<String>,
        /// Add a fault: `byzantine=NODE` turns NODE hostile for the whole run (with its valid
        /// identity it tries to read and forge what is not its own; every attempt must be
        /// refused); `restore=NODE@HOURS[:AGE]` restores NODE at that hour from a backup taken
        /// AGE hours before (1 by default), as a hub restored from its backup.
        #[arg(long, value_name = "FAULT")]
        fault: Vec<String>,
    },
    /// Run a scenario twice with one seed and compare the event-log hashes.
    Determinism {
        /// A built-in scenario or a TOML file.
        #[arg(long)]
        scenario: String,
        /// The seed.
        #[arg(long, env = "SIM_SEED", default_value_t = 1)]
        seed: u64,
        /// Stop after this many hours.
        #[arg(long)]
        hours: Option<f64>,
    },
    /// The simulator's photo times on each link of the field ladder beside the real
    /// transport's (three ~2 MB photos, one ambulance, the link's outages off).
    Photos {
        /// Profiles, comma-separated (default: the ladder's six).
        #[arg(long, value_delimiter = ',')]
        profiles: Vec<String>,
        /// Photos per upload.
        #[arg(long, default_value_t = 3)]
        photos: usize,
        /// The seed.
        #[arg(long, env = "SIM_SEED", default_value_t = 1)]
        seed: u64,
    },
    /// List the built-in scenarios.
    List,
}

/// `NODE@HOURS[:AGE]`.
fn parse_restore(spec: &str) -> Option<(String, f64, f64)> {
    let (node, when) = spec.split_once('@')?;
    let (at, age) = match when.split_once(':') {
        Some((at, age)) => (at.parse().ok()?, age.parse().ok()?),
        None => (when.parse().ok()?, 1.0),
    };
    let ok = |x: f64| x.is_finite() && x >= 0.0;
    (!node.is_empty() && ok(at) && ok(age) && age > 0.0).then(|| (node.to_string(), at, age))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::List => {
            for (name, text) in BUILT_IN {
                let first = text.lines().next().unwrap_or("").trim_start_matches('#').trim();
                println!("{name:<14} {first}");
            }
            ExitCode::SUCCESS
        }
        Command::Run { scenario, seed, out, hours, quiet, plant, fault } => {
            let mut sc = match Scenario::load(&scenario) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            for f in &fault {
                match f.split_once('=') {
                    Some(("byzantine", node)) if !node.is_empty() => sc.faults.push(Fault {
                        kind: FaultKind::Byzantine,
                        targets: node.to_string(),
                        at_hour: 0.0,
                        minutes: hours.unwrap_or(sc.hours) * 60.0,
                        every_hours: 0.0,
                        factor: 1.0,
                        hours: 0.0,
                        probability: 0.0,
                    }),
                    Some(("restore", spec)) => match parse_restore(spec) {
                        Some((node, at_hour, age)) => sc.faults.push(Fault::restore(&node, at_hour, age)),
                        None => {
                            eprintln!(
                                "error: --fault {f:?} is not restore=NODE@HOURS or restore=NODE@HOURS:AGE_HOURS \
                                 (for example restore=hub@6:2: at hour 6, from a backup taken 2 hours before)"
                            );
                            return ExitCode::from(2);
                        }
                    },
                    _ => {
                        eprintln!("error: unknown --fault {f:?}; use byzantine=NODE or restore=NODE@HOURS[:AGE_HOURS]");
                        return ExitCode::from(2);
                    }
                }
            }
            let mut bugs = Bugs::default();
            for p in &plant {
                match p.split_once('=') {
                    None if p == "lose-acked-writes" => bugs.lose_acked_writes_on_crash = true,
                    None if p == "gate-hears-one-window" => bugs.gate_hears_one_window = true,
                    None if p == "flags-outcomes-at-once" => bugs.flags_outcomes_at_once = true,
                    Some(("ignore-scope-at", node)) if !node.is_empty() => {
                        bugs.ignore_scope_at = Some(node.to_string())
                    }
                    _ => {
                        eprintln!(
                            "error: unknown --plant {p:?}; use lose-acked-writes, ignore-scope-at=NODE, \
                             gate-hears-one-window or flags-outcomes-at-once"
                        );
                        return ExitCode::from(2);
                    }
                }
            }
            let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(1000) };
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let report = outpost_sim::run(sc, Options { seed, hours, bugs }, |h, total| {
                bar.set_position((h / total * 1000.0) as u64);
                bar.set_message(format!("{h:.1} of {total:.1} simulated hours"));
            });
            bar.finish_and_clear();
            if let Err(e) = std::fs::create_dir_all(&out) {
                eprintln!("error: cannot create {}: {e}", out.display());
                return ExitCode::from(2);
            }
            let json = serde_json::to_string_pretty(&report).unwrap_or_default();
            let summary = report.summary();
            let written = std::fs::write(out.join("report.json"), json)
                .and_then(|_| std::fs::write(out.join("summary.txt"), &summary));
            if let Err(e) = written {
                eprintln!("error: cannot write the report into {}: {e}", out.display());
                return ExitCode::from(2);
            }
            if let Err(e) = outpost_sim::plot::write_all(&report, &out) {
                eprintln!("warning: plots not written: {e}");
            }
            print!("{summary}");
            println!("report, summary and plots in {}", out.display());
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Command::Photos { profiles, photos, seed } => {
            let names: Vec<&str> = if profiles.is_empty() {
                outpost_sim::photos::LADDER.to_vec()
            } else {
                profiles.iter().map(String::as_str).collect()
            };
            match outpost_sim::photos::uploads(&names, photos, seed) {
                Ok(rows) => {
                    println!(
                        "photos over the simulated links: {photos} of 2 MB, one ambulance to the hub, seed {seed}\n"
                    );
                    print!("{}", outpost_sim::photos::table(&rows));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Determinism { scenario, seed, hours } => {
            let sc = match Scenario::load(&scenario) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let a = outpost_sim::run(sc.clone(), Options { seed, hours, ..Options::default() }, |_, _| {});
            let b = outpost_sim::run(sc, Options { seed, hours, ..Options::default() }, |_, _| {});
            println!("run 1: {} events, hash {}", a.events, a.event_hash);
            println!("run 2: {} events, hash {}", b.events, b.event_hash);
            if a.event_hash == b.event_hash {
                println!("deterministic");
                ExitCode::SUCCESS
            } else {
                println!("NOT deterministic (seed {seed}): rerun with {}", a.rerun);
                ExitCode::from(1)
            }
        }
    }
}
