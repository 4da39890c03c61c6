//! The `outpost` binary, built in this package for the field tests: the same entry point as
//! `node/src/main.rs`, so the processes under test run exactly the shipped code.

fn main() -> std::process::ExitCode {
    let code = outpost_node::cli::main();
    outpost_node::cli::report_peak_memory();
    code
}
