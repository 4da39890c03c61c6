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
mod care;
mod exit;
mod network;
mod session;
mod status;

use admin::*;
pub use args::Cli;
use args::*;
use call::*;
use care::*;
pub use exit::{InputError, OutputError, exit_code};
use network::*;
use session::*;
use status::*;

use crate::render::*;

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::from(exit_code(&err))
        }
    }
}

/// An error and its causes on one line, each cause left out where the message before it
/// already says it (most of the node's errors name their cause in their own message).
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
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

/// The operating-system account running this process, as the audit chain names it: the
/// kernel's real user id (`/proc/self/status`) and that account's name in `/etc/passwd`; the
/// login uid the kernel keeps for the login session (`/proc/self/loginuid`, set by
/// pam_loginuid, unchanged by `su` and `sudo` and not settable by an unprivileged process), when
/// one is set; and `SUDO_USER` from the environment, as given (sudo sets it, but any process
/// can: a claim beside the ids, cut to 64 characters).
fn os_account() -> serde_json::Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse::<u64>().ok());
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name_of = |uid: u64| {
        passwd.lines().find_map(|l| {
            let mut fields = l.split(':');
            let name = fields.next()?;
            let id = fields.nth(1)?.parse::<u64>().ok()?;
            (id == uid).then(|| name.to_string())
        })
    };
    let mut by = serde_json::json!({ "via": "command line", "uid": uid, "account": uid.and_then(&name_of) });
    // 4294967295: no login uid set (a service, a container).
    let login_uid = std::fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|u| *u != u64::from(u32::MAX));
    if let Some(login) = login_uid {
        by["login_uid"] = login.into();
        by["login_account"] = name_of(login).into();
    }
    if let Ok(sudo) = std::env::var("SUDO_USER")
        && !sudo.is_empty()
    {
        by["sudo_user"] = sudo.chars().take(64).collect::<String>().into();
    }
    by
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    // What a command reads or changes is audited under the account that ran it; the daemon's
    // entries name the person each API request acts for, or none (its own work).
    if !matches!(cli.command, Command::Run(_) | Command::Demo { .. }) {
        crate::store::name_operator(os_account());
    }
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
        Command::Message(cmd) => run_message(cmd)?,
        Command::Photo(cmd) => run_photo(cmd)?,
        Command::Outcome(cmd) => run_outcome(cmd)?,
        Command::Status(args) => run_status(args)?,
        Command::Audit(cmd) => run_audit(cmd)?,
        Command::Demo { keep, serve } => crate::demo::run(keep.as_deref(), serve)?,
        Command::Openapi => print!("{}", crate::net::openapi_json()),
        Command::Ca(cmd) => ca(cmd)?,
        Command::Backup(args) => run_backup(args)?,
        Command::Restore(args) => run_restore(args)?,
        Command::Key(cmd) => run_key(cmd)?,
        Command::Cert(cmd) => run_cert(cmd)?,
        Command::Linkem(args) => run_linkem(args)?,
        Command::Call(cmd) => run_call(cmd)?,
        Command::Rota(cmd) => run_rota(cmd)?,
        Command::User(cmd) => run_user(cmd)?,
        Command::Run(args) => run_daemon(args)?,
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
        Command::Sync(args) => run_sync(args)?,
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

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn an_error_names_each_cause_once() {
        let named = crate::net::NetError::Resolve {
            name: "hub.example:4433".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"),
        };
        let text = describe(&anyhow::Error::new(named));
        assert_eq!(text.matches("no such name").count(), 1, "{text}");
        // A cause the message does not name is still told.
        let wrapped = anyhow::Error::new(std::io::Error::other("disk full")).context("writing the backup");
        assert_eq!(describe(&wrapped), "writing the backup: disk full");
    }
}
