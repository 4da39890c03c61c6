//! The invariant "`sync-protocol` does no I/O" (ARCHITECTURE.md), held by checks rather than
//! by intent: its dependency tree holds no crate that touches sockets, disks or the async
//! runtime, and its source reads no clock, no file, no socket and no environment. Time, ids
//! and randomness come from the caller, so the simulator runs the same code on virtual time.

use std::path::Path;
use std::process::Command;

/// Crates that would bring I/O (or a runtime that does) into the protocol.
const FORBIDDEN_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "quinn",
    "quinn-proto",
    "quinn-udp",
    "rustls",
    "rusqlite",
    "libsqlite3-sys",
    "hyper",
    "axum",
    "reqwest",
    "async-std",
    "smol",
];

/// What the source must not call: the clock, the file system, the network, the environment,
/// sleeping, threads, randomness.
const FORBIDDEN_CALLS: &[&str] = &[
    "Instant::now",
    "SystemTime",
    "std::fs",
    "std::net",
    "std::env",
    "std::thread",
    "std::process",
    "File::open",
    "File::create",
    "thread::sleep",
    // Randomness and fresh ids (automerge and ulid bring rand along; the protocol must not
    // draw from it).
    "rand::",
    "getrandom",
    "OsRng",
    "Ulid::new",
    "ActorId::random",
];

#[test]
fn the_protocol_crate_depends_on_no_crate_that_does_io() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", "sync-protocol", "--all-features", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains(&"automerge"), "the tree was read (automerge is in it):\n{tree}");
    let found: Vec<&&str> = FORBIDDEN_CRATES.iter().filter(|c| names.contains(c)).collect();
    assert!(found.is_empty(), "sync-protocol now depends on {found:?}, which do I/O; move that code to the node");
}

#[test]
fn the_protocol_source_reads_no_clock_file_socket_or_environment() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offences = Vec::new();
    // Every source file, in every folder under src (a module's own folder too).
    let mut paths = Vec::new();
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("source folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                paths.push(path);
            }
        }
    }
    assert!(
        paths.iter().any(|p| p.parent().is_some_and(|d| !d.ends_with("src"))),
        "the files in src's folders were read: {paths:?}"
    );
    let mut files = 0;
    for path in paths {
        files += 1;
        let text = std::fs::read_to_string(&path).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for call in FORBIDDEN_CALLS {
                if code.contains(call) {
                    offences.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(files > 10, "the source was read ({files} files)");
    assert!(
        offences.is_empty(),
        "sync-protocol must take time, ids and data from its caller:\n{}",
        offences.join("\n")
    );
}
