//! The `outpost` binary: see `outpost --help` and `docs/cli.md`.

fn main() -> std::process::ExitCode {
    let code = outpost_node::cli::main();
    outpost_node::cli::report_peak_memory();
    code
}
