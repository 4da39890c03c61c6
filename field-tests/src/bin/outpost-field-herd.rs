//! Many edge daemons in one process, for the herd test at 1,000 edges: each is a whole node
//! (its own directory, keys, certificate, SQLite store, QUIC endpoint and connection to the
//! hub) run by `Daemon::start` exactly as `outpost run` runs one, but 1,000 `outpost run`
//! processes (about 25 MiB each) do not fit this machine's memory, so a few of these host them.
//!
//! `outpost-field-herd PEER DIR...`: starts a daemon for each directory, dialling PEER, prints
//! `herd started N` and runs until killed. A directory that fails to open is reported on stderr
//! and exits 1.

use std::time::Duration;

use outpost_node::config::NodeDir;
use outpost_node::net::{Daemon, PeerAddr, RunOptions};
use outpost_node::node::Node;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(peer) = args.next().and_then(|p| p.parse::<PeerAddr>().ok()) else {
        eprintln!("usage: outpost-field-herd PEER DIR...");
        return std::process::ExitCode::from(2);
    };
    let dirs: Vec<String> = args.collect();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let mut daemons = Vec::with_capacity(dirs.len());
        for d in &dirs {
            let node = match Node::open(&NodeDir::new(d.as_str())) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("{d}: {e}");
                    return std::process::ExitCode::from(1);
                }
            };
            let opts = RunOptions { peers: vec![peer.clone()], ..RunOptions::default() };
            match Daemon::start(node, opts).await {
                Ok(daemon) => daemons.push(daemon),
                Err(e) => {
                    eprintln!("{d}: {e}");
                    return std::process::ExitCode::from(1);
                }
            }
        }
        println!("herd started {}", daemons.len());
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
}
