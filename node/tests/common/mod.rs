//! Helpers shared by the node's integration tests: run the real `outpost` binary.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub mod fleet;

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// The real user id of this process (the tests run the binary as the same account).
pub fn my_uid() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).expect("a Uid line");
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// Runs `outpost` with `args` (without the key from the environment of the test runner).
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("OUTPOST_NODE_KEY").env_remove("OUTPOST_DIR").output().expect("run outpost")
}

/// Runs `outpost`, expecting success, and returns standard output.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "outpost {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs `outpost`, expecting the exit code `code`, and returns standard error.
pub fn fails(args: &[&str], code: i32) -> String {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "outpost {args:?}: expected exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).expect("utf-8 output")
}

/// Initialises an edge node in `dir`.
pub fn init_edge(dir: &Path) {
    ok(&["init", "--dir", dir.to_str().unwrap(), "--name", "amb-07", "--role", "edge", "--org", "RX6", "--icb", "QHM"]);
}

/// The arguments of `outpost session new` for a valid urgent dermatology session on `dir`.
pub fn session_new_args(dir: &Path) -> Vec<&str> {
    vec![
        "session",
        "new",
        "--dir",
        dir.to_str().unwrap(),
        "--service-line",
        "dermatology",
        "--priority",
        "urgent",
        "--care-setting",
        "ambulance_on_scene",
        "--nhs-number",
        "9434765919",
        "--summary",
        "Rash on left forearm",
    ]
}

/// Creates a session and returns its id.
pub fn new_session(dir: &Path) -> String {
    ok(&session_new_args(dir)).trim().to_string()
}

/// Parses JSON output.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
