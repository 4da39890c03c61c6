//! The `outpost` command line: argument parsing, output (text or `--json`) and exit codes.
//!
//! Exit codes (also in `docs/cli.md`):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | an unexpected failure (storage damaged, I/O error) |
//! | 2 | bad input: an invalid argument or value; nothing was written |
//! | 3 | the directory is not a usable node (not initialised, wrong or exposed key) |
//! | 4 | no such session or photo on this node |
//! | 5 | the disk is full; nothing was written |
//! | 6 | the peer could not be reached, refused us, or the sync failed |

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sync_protocol::NhsNumber;
use sync_protocol::call::RotaDesk;
use sync_protocol::directory::{DirectoryError, Hours, LineEntry};
use sync_protocol::session::{Patient, Requester, Service};
use sync_protocol::vocab::{
    CareSetting, Channel, ConsentKind, ConsentScope, NhsVerification, Outcome, PhotoView, Priority, Role, ServiceLine,
    Side, Status,
};

use crate::config::{ConfigError, NodeDir};
use crate::crypto::CryptoError;
use crate::node::{InitParams, Node, NodeError, PhotoRequest, SessionRequest, now_ms};
use crate::photo;
use crate::store::people::{Credential, NewPerson, PersonRole};
use crate::store::{ListFilter, StoreError};

mod admin;
mod args;
mod call;
mod exit;
mod session;

use admin::*;
pub use args::Cli;
use args::*;
use call::*;
pub use exit::{InputError, exit_code};
use session::*;

use crate::render::*;

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// How long before its certificate expires a node says to renew it (30 days).
pub const RENEW_AHEAD_MS: i64 = 30 * 86_400_000;

/// The environment variable naming a file where the process writes its peak resident memory
/// (VmHWM, in KiB) as it exits: how the benchmarks measure a real `outpost` process.
pub const PEAK_MEMORY_ENV: &str = "OUTPOST_PEAK_MEMORY_FILE";

/// Writes this process's peak resident memory to the file named by [`PEAK_MEMORY_ENV`], if set.
pub fn report_peak_memory() {
    let Some(path) = std::env::var_os(PEAK_MEMORY_ENV) else { return };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    if let Some(kib) = kib
        && let Err(e) = std::fs::write(&path, format!("{kib}\n"))
    {
        eprintln!("warning: cannot write peak memory to {}: {e}", std::path::Path::new(&path).display());
    }
}

fn open(dir: &DirArg) -> Result<Node, NodeError> {
    Node::open(&NodeDir::new(&dir.dir))
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { dir, name, role, org, icb, lines, json } => {
            if role != Role::Desk && !lines.is_empty() {
                return Err(InputError("--service-line is for desk nodes".into()).into());
            }
            let params = InitParams { name, role, org, icb, lines };
            let cfg = Node::init(&NodeDir::new(&dir.dir), &params, now_ms())?;
            if json.json {
                print_json(&cfg)?;
            } else {
                println!(
                    "initialised {} node {} in {} (key {} from {})",
                    cfg.role,
                    cfg.name,
                    dir.dir.display(),
                    cfg.key_id,
                    if cfg.key_source == "env" { crate::crypto::KEY_ENV } else { "node.key, mode 600" }
                );
            }
        }
        Command::Session(cmd) => session(cmd)?,
        Command::Message(MessageCommand::Send { dir, id, text, reply_to, client_key, json }) => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let msg = node.send_message_once(sid, &text, reply_to, client_key.as_deref(), now_ms())?;
            if json.json {
                // A repeat answers with the first message, which may have travelled since.
                let receipt = node.message_receipt(sid, &msg)?;
                print_json(&serde_json::json!({ "session": sid, "message": msg, "receipt": receipt }))?;
            } else {
                println!("{msg}");
            }
        }
        Command::Photo(PhotoCommand::Attach { dir, id, file, view, body_site, consent, consent_scope, json }) => {
            // Check the photo before opening the node, so a bad file writes nothing.
            let photo = photo::load_photo(&file).map_err(NodeError::from)?;
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let req = PhotoRequest { view, body_site, consent, scope: consent_scope };
            let info = node.attach_photo(sid, &photo, &req, now_ms())?;
            if json.json {
                print_json(&serde_json::json!({
                    "session": sid, "hash": info.hash, "size": info.size, "mime": info.mime,
                    "chunks": info.chunks, "width": photo.dimensions.0, "height": photo.dimensions.1,
                }))?;
            } else {
                println!("{}", info.hash);
            }
        }
        Command::Photo(PhotoCommand::WithdrawConsent { dir, id, photo }) => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            let (consent, photos) = node.withdraw_consent(sid, &photo, now_ms())?;
            println!("consent {consent} withdrawn: {photos} photo(s) of {sid} now left out of exports and letters");
        }
        Command::Photo(PhotoCommand::Get { dir, hash, out, thumbnail, read }) => {
            let mut node = open(&dir)?;
            let bytes = if thumbnail { node.thumbnail(&hash)? } else { node.open_photo(&hash, read, now_ms())? };
            write_file(&out, &bytes)?;
        }
        Command::Outcome(OutcomeCommand::Set { dir, id, side, outcome, client_key }) => {
            let mut node = open(&dir)?;
            let sid = node.resolve(&id)?;
            node.set_outcome_once(sid, side, outcome, client_key.as_deref(), now_ms())?;
            println!("{side} outcome of {sid}: {outcome}");
        }
        Command::Status { dir, json } => {
            let node = open(&dir)?;
            let st = node.status()?;
            let (stats, audit, photos, backlog, peers, cert_until) = (
                &st.store,
                &st.audit,
                &st.photos,
                &st.not_yet_left_this_device,
                &st.peers,
                st.certificate_valid_until_ms,
            );
            let now = now_ms();
            if json.json {
                print_json(&st)?;
            } else {
                let c = &node.config();
                println!(
                    "{} ({} node{}{})",
                    c.name,
                    c.role,
                    c.org.as_deref().map(|o| format!(", organisation {o}")).unwrap_or_default(),
                    c.icb.as_deref().map(|i| format!(", ICB {i}")).unwrap_or_default()
                );
                print!("sessions: {}", stats.sessions);
                for (status, n) in &stats.by_status {
                    print!("  {status} {n}");
                }
                println!();
                println!(
                    "documents: {} snapshots ({}), {} logged changes ({})",
                    stats.snapshots,
                    bytes(stats.snapshot_bytes),
                    stats.log_changes,
                    bytes(stats.log_bytes)
                );
                println!(
                    "photos: {} held here ({}), {} handed to the hub (thumbnail kept, {}), {} being received",
                    photos.held.0,
                    bytes(photos.held.1),
                    photos.offloaded.0,
                    bytes(photos.offloaded.1),
                    photos.partial.0
                );
                if node.config().role == Role::Edge {
                    println!(
                        "not yet left this device: {} messages and photos in {} sessions, {} of photos",
                        backlog.items,
                        backlog.sessions,
                        bytes(backlog.photo_bytes)
                    );
                }
                if peers.is_empty() {
                    println!("peers: never synced");
                }
                for p in peers {
                    let ok =
                        p.last_ok_ms.map_or("never".to_string(), |t| format!("{} ({} ago)", time(t), ago(now - t)));
                    print!("peer {}: last complete sync {ok}", p.peer);
                    match &p.last_error {
                        Some((t, why)) if p.last_ok_ms.is_none_or(|ok| *t > ok) => {
                            println!("; since then failed {} ago: {why}", ago(now - t))
                        }
                        _ => println!(),
                    }
                }
                match cert_until {
                    Some(t) if t <= now => {
                        println!("certificate: EXPIRED at {}; ask for a new one (`outpost cert request`)", time(t))
                    }
                    Some(t) if t - now < RENEW_AHEAD_MS => println!(
                        "certificate: RENEW SOON: valid until {} (only {} left); run `outpost cert request --dir {}` and take the request to the fleet CA",
                        time(t),
                        ago(t - now),
                        dir.dir.display()
                    ),
                    Some(t) => println!("certificate: valid until {} ({} left)", time(t), ago(t - now)),
                    None => println!("certificate: none; this node cannot sync (`outpost cert request`)"),
                }
                println!(
                    "files: database {}, write-ahead log {}",
                    bytes(stats.db_file_bytes),
                    bytes(stats.wal_file_bytes)
                );
                match audit.broken_at {
                    None => println!("audit chain: {} entries, intact", audit.entries),
                    Some(seq) => println!("audit chain: BROKEN at entry {seq} of {}", audit.entries),
                }
            }
            // The whole file, page by page: a damaged store is said, and the exit is non-zero.
            match node.integrity_check() {
                Ok(()) if !json.json => println!("store: SQLite integrity check passed"),
                Ok(()) => {}
                Err(e) => {
                    if !json.json {
                        println!("store: DAMAGED");
                    }
                    return Err(e.into());
                }
            }
        }
        Command::Audit(AuditCommand::Verify { dir, json }) => {
            let node = open(&dir)?;
            node.integrity_check()?;
            let check = node.verify_audit()?;
            if json.json {
                print_json(&check)?;
            } else {
                match check.broken_at {
                    None => println!("audit chain intact: {} entries", check.entries),
                    Some(seq) => println!("audit chain broken at entry {seq}"),
                }
            }
            if let Some(seq) = check.broken_at {
                return Err(StoreError::Damaged(format!("the audit chain is broken at entry {seq}")).into());
            }
        }
        Command::Audit(AuditCommand::Show { dir, limit, json }) => {
            let node = open(&dir)?;
            let entries = node.audit_tail(limit)?;
            if json.json {
                print_json(&entries)?;
            } else {
                for e in entries {
                    println!(
                        "{:>6}  {}  {:<14} {:<16} {}",
                        e.seq,
                        time(e.at_ms),
                        e.node,
                        e.action,
                        e.session.unwrap_or_default()
                    );
                }
            }
        }
        Command::Demo { keep, serve } => crate::demo::run(keep.as_deref(), serve)?,
        Command::Openapi => print!("{}", crate::net::openapi_json()),
        Command::Ca(cmd) => ca(cmd)?,
        Command::Backup { dir, out, json } => {
            let report = crate::backup::backup(&NodeDir::new(&dir.dir), &out, now_ms())?;
            if json.json {
                print_json(&report)?;
            } else {
                println!(
                    "backup of {} written to {} ({}, {} sessions), sealed under key {}: keep the key apart from it",
                    report.node,
                    report.file.display(),
                    bytes(report.bytes),
                    report.sessions,
                    report.key_id
                );
            }
        }
        Command::Restore { from, dir, key_file, json } => {
            let _lock = if dir.dir.exists() { Some(crate::service::DaemonLock::acquire(&dir.dir)?) } else { None };
            let report = crate::backup::restore(&from, &NodeDir::new(&dir.dir), key_file.as_deref())?;
            if json.json {
                print_json(&report)?;
            } else {
                println!(
                    "{} restored into {}: {} sessions as of {}. Run it (outpost run): its peers send back what \
                     the backup lacks.",
                    report.node,
                    report.dir.display(),
                    report.sessions,
                    time(report.taken_ms)
                );
            }
        }
        Command::Key(KeyCommand::Rotate { dir, json }) => {
            let nd = NodeDir::new(&dir.dir);
            nd.read_config().map_err(NodeError::from)?;
            let _lock = crate::service::DaemonLock::acquire(&dir.dir)?;
            let (done, old, new) = Node::rotate_key(&nd, now_ms())?;
            if json.json {
                print_json(&serde_json::json!({ "old_key_id": old, "new_key_id": new, "resealed": done }))?;
            } else {
                println!(
                    "data key rotated: {} values ({}) re-sealed under key {new} (was {old}); audit chain re-hashed \
                     over {} entries, the rotation recorded in it. Back up the new {} now: old backups need the old key.",
                    done.values,
                    bytes(done.bytes),
                    done.audit_entries,
                    nd.key_path().display()
                );
            }
        }
        Command::Cert(CertCommand::Request { dir, out }) => {
            let mut node = open(&dir)?;
            let (csr, fingerprint) = node.request_certificate()?;
            let out = out.unwrap_or_else(|| dir.dir.join(format!("{}.csr", node.config().name)));
            write_file(&out, csr.as_bytes())?;
            println!(
                "certificate request for {} written to {}; its key stays in this node's store.\n\
                 key fingerprint {fingerprint}, author key {}: the CA must print the same before you \
                 install what it signs.\n\
                 On the CA's machine: outpost ca sign --ca CA_DIR {}\n\
                 Then here: outpost cert install --dir {} SIGNED.pem",
                node.config().name,
                out.display(),
                hex::encode(node.author_public()),
                out.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                dir.dir.display()
            );
        }
        Command::Cert(CertCommand::Install { dir, file }) => {
            let mut node = open(&dir)?;
            let chain = std::fs::read_to_string(&file)
                .map_err(|e| InputError(format!("cannot read the signed certificate {}: {e}", file.display())))?;
            let until = node.install_signed(&chain)?;
            if let Some((cert, _, ca)) = node.tls_identity()? {
                let tls_dir = dir.dir.join("tls");
                std::fs::create_dir_all(&tls_dir)?;
                std::fs::write(tls_dir.join("node.crt"), cert)?;
                std::fs::write(tls_dir.join("ca.crt"), ca)?;
            }
            println!(
                "certificate installed for {}: valid until {} (restart a running daemon to use it)",
                node.config().name,
                time(until)
            );
        }
        Command::Linkem { listen, to, profile, outages, seed } => {
            init_logging("info");
            let p = sync_protocol::links::profile(&profile).ok_or_else(|| {
                InputError(format!(
                    "unknown link profile {profile:?}; expected one of: {}",
                    sync_protocol::links::PROFILE_NAMES.join(", ")
                ))
            })?;
            let rt = runtime()?;
            rt.block_on(async move {
                let opts = crate::linkem::EmulatorOptions { outages, seed, ..Default::default() };
                let to = to.resolve().await?;
                let em = crate::linkem::LinkEmulator::start(listen, to, p.clone(), opts).await?;
                println!(
                    "relaying {} -> {to} as {} ({} kbit/s up, {:.0}-{:.0} ms RTT, {:.1}% loss{})",
                    em.local_addr,
                    p.name,
                    p.uplink_bps / 1000,
                    p.rtt_ms.0,
                    p.rtt_ms.1,
                    p.loss.mean_loss() * 100.0,
                    if outages { ", random outages" } else { "" }
                );
                let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => break,
                        line = lines.next_line() => match line {
                            Ok(Some(l)) => {
                                let mut words = l.split_whitespace();
                                match (words.next(), words.next().and_then(|s| s.parse::<f64>().ok())) {
                                    (Some("down"), secs) => {
                                        em.set_up(false);
                                        println!("link down");
                                        if let Some(s) = secs {
                                            tokio::time::sleep(std::time::Duration::from_secs_f64(s)).await;
                                            em.set_up(true);
                                            println!("link up");
                                        }
                                    }
                                    (Some("up"), _) => {
                                        em.set_up(true);
                                        println!("link up");
                                    }
                                    (Some("stats"), _) => println!("{}", serde_json::to_string(&em.stats())?),
                                    _ => println!("commands: down [SECONDS] | up | stats"),
                                }
                            }
                            // Input closed: keep relaying until interrupted.
                            _ => { tokio::signal::ctrl_c().await?; break; }
                        }
                    }
                }
                anyhow::Ok(())
            })?;
        }
        Command::Call(cmd) => run_call(cmd)?,
        Command::Rota(cmd) => run_rota(cmd)?,
        Command::User(cmd) => run_user(cmd)?,
        Command::Run {
            dir,
            listen,
            peers,
            congestion,
            auto_answer,
            play,
            record,
            api,
            api_cert,
            api_key,
            metrics,
            log_format,
            log_level,
        } => {
            let mut flags = crate::settings::Flags::default();
            let one = |v: Option<String>| v.into_iter().collect::<Vec<_>>();
            flags.set("listen", one(listen));
            flags.set("peers", peers);
            flags.set("congestion", one(congestion));
            flags.set("desk.auto_answer", if auto_answer { vec!["true".into()] } else { vec![] });
            flags.set("desk.play", one(play));
            flags.set("desk.record", one(record));
            flags.set("api.listen", one(api));
            flags.set("api.cert", one(api_cert));
            flags.set("api.key", one(api_key));
            flags.set("metrics.listen", one(metrics));
            flags.set("log.format", one(log_format));
            flags.set("log.level", one(log_level));
            let settings = crate::settings::Settings::load(&dir.dir, &flags)?;
            init_daemon_logging(&settings);
            let node = open(&dir)?;
            if let Some((cert, _, _)) = node.tls_identity()? {
                let left = crate::tls::not_after_ms(&cert)? - now_ms();
                if left < RENEW_AHEAD_MS {
                    tracing::warn!(
                        days_left = left / 86_400_000,
                        "this node's certificate expires in {} days: renew it (`outpost cert request`, then `outpost cert install`)",
                        left / 86_400_000
                    );
                }
            }
            // One directory, one daemon (held until the process ends, however it ends).
            let _lock = crate::service::DaemonLock::acquire(&dir.dir)?;
            let rt = runtime()?;
            rt.block_on(async move {
                if let Some(p) = &settings.play {
                    crate::media::read_wav(p)?;
                }
                let api_tls = match (settings.api_cert.clone(), settings.api_key.clone()) {
                    (Some(cert), Some(key)) => Some(crate::net::ApiTls { cert, key }),
                    _ => None,
                };
                let scheme = if api_tls.is_some() { "https" } else { "http" };
                let opts = crate::net::RunOptions {
                    listen: settings.listen,
                    peers: settings.peers.clone(),
                    auto_answer: settings.auto_answer,
                    play: settings.play.clone(),
                    record: settings.record.clone(),
                    api: settings.api,
                    api_tls,
                    metrics: settings.metrics,
                    limits: settings.limits,
                };
                crate::net::congestion::set_congestion(settings.congestion);
                let daemon = crate::net::Daemon::start(node, opts).await?;
                if let Some(addr) = daemon.local_addr {
                    println!("listening on {addr}");
                }
                if let Some(addr) = daemon.api_addr {
                    println!("local API on {scheme}://{addr}/api");
                }
                if let Some(addr) = daemon.metrics_addr {
                    println!("metrics on http://{addr}/metrics");
                }
                let why = crate::service::stop_signal().await?;
                tracing::info!(
                    "{why}: stopping: no new connections, closing each with its reason, finishing the store's work"
                );
                daemon.stop().await;
                tracing::info!("stopped cleanly");
                anyhow::Ok(())
            })?;
        }
        Command::Config(ConfigCommand::Show { dir, json }) => {
            NodeDir::new(&dir.dir).read_config().map_err(NodeError::from)?;
            let settings = crate::settings::Settings::load(&dir.dir, &crate::settings::Flags::default())?;
            if json.json {
                print_json(&settings.origins)?;
            } else {
                let width = settings.origins.iter().map(|o| o.key.len()).max().unwrap_or(0);
                for o in &settings.origins {
                    let value = if o.value.is_empty() { "(unset)" } else { &o.value };
                    println!("{:<width$}  {:<28}  {}", o.key, value, o.source);
                }
            }
        }
        Command::Sync { dir, peer, timeout, json } => {
            init_logging("warn");
            let node = open(&dir)?;
            let rt = runtime()?;
            let report = rt.block_on(async {
                let addr = peer.resolve().await?;
                crate::net::sync_once(node, addr, std::time::Duration::from_secs(timeout)).await
            })?;
            if json.json {
                print_json(&report)?;
            } else {
                let s = &report.stats;
                println!(
                    "synced with {} ({}): {} round trip(s), {} sent, {} received ({} / {} on the wire), {} documents sent, {} received, {} photos received, {:.0} ms after a {:.0} ms handshake",
                    report.peer,
                    report.peer_role,
                    s.round_trips,
                    bytes(s.bytes_sent),
                    bytes(s.bytes_received),
                    bytes(report.udp_bytes_sent),
                    bytes(report.udp_bytes_received),
                    s.docs_sent,
                    s.docs_received,
                    s.blobs_received,
                    report.sync_ms,
                    report.handshake_ms
                );
            }
        }
        Command::Debug(cmd) => debug(cmd)?,
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    install_logging(filter, crate::settings::LogFormat::Text);
}

/// Logging for `outpost run`: the format and level from its settings (`OUTPOST_LOG`, the older
/// name, still sets the filter when `log.level` is left at its default).
fn init_daemon_logging(settings: &crate::settings::Settings) {
    let level_set =
        settings.origins.iter().any(|o| o.key == "log.level" && o.source != crate::settings::Source::Default);
    let filter = match std::env::var("OUTPOST_LOG") {
        Ok(v) if !level_set && !v.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(v),
        _ => tracing_subscriber::EnvFilter::try_new(&settings.log_level),
    }
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    install_logging(filter, settings.log_format);
}

/// Log lines to standard error: for people (coloured on a terminal), or one JSON object each.
fn install_logging(filter: tracing_subscriber::EnvFilter, format: crate::settings::LogFormat) {
    use std::io::IsTerminal;
    let _ = match format {
        crate::settings::LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
        crate::settings::LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
