//! The fuzz target (`sync-protocol/fuzz`, the frame decoder) is built and run in CI for a
//! bounded time, coverage-guided: libFuzzer with SanitizerCoverage, on the stable toolchain
//! (the flags `cargo fuzz` passes, without its nightly-only sanitizers). `FUZZ_SECONDS` sets
//! the budget (default 30). A crash leaves its input in `target/fuzz/artifacts/` and fails
//! the test with the command that replays it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The flags that give libFuzzer its coverage feedback.
const COVERAGE_FLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
     -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
     -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing";

fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .expect("rustc names its host")
}

#[test]
fn the_frame_decoder_survives_a_bounded_coverage_guided_fuzzing_run() {
    let seconds: u64 = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fuzz_dir = manifest_dir.join("fuzz");
    let target_dir = manifest_dir.parent().expect("workspace").join("target").join("fuzz");
    let triple = host_triple();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // A target triple keeps the coverage flags off build scripts and proc macros.
    let build = Command::new(cargo)
        .args(["build", "--release", "--bin", "frame_decoder", "--target", &triple, "--target-dir"])
        .arg(&target_dir)
        .current_dir(&fuzz_dir)
        .env("RUSTFLAGS", COVERAGE_FLAGS)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo build runs");
    assert!(build.status.success(), "the fuzz target does not build:\n{}", String::from_utf8_lossy(&build.stderr));
    let binary: PathBuf = target_dir.join(&triple).join("release").join("frame_decoder");
    let corpus = target_dir.join("corpus").join("frame_decoder");
    let artifacts = target_dir.join("artifacts").join("frame_decoder");
    std::fs::create_dir_all(&corpus).expect("corpus dir");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let run = Command::new(&binary)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg(&corpus)
        .output()
        .expect("the fuzzer runs");
    let log = String::from_utf8_lossy(&run.stderr);
    let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(
        run.status.success(),
        "the frame decoder failed under fuzzing; the input is in {} (replay: {} <file>):\n{}",
        artifacts.display(),
        binary.display(),
        tail.join("\n")
    );
    let runs: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(runs > 10_000, "the fuzzer ran too little to mean anything ({runs} inputs):\n{}", tail.join("\n"));
    println!("frame decoder: {runs} inputs in {seconds} s, no failure");
}
