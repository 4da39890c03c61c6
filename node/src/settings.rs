//! How a daemon runs: `D/outpost.toml`, then `OUTPOST_*` environment variables, then flags.
//!
//! `node.toml` is the node's identity and is written by outpost itself; `outpost.toml` beside it
//! is the deployer's, never rewritten by outpost (comments survive). Every key has one
//! environment variable (`OUTPOST_` and the key in capitals, dots as underscores: `api.listen`
//! is `OUTPOST_API_LISTEN`) and most have a flag of `outpost run`. A later layer wins; `outpost
//! config show` prints each value with the layer it came from. An unknown key in the file is an
//! error naming it (a misspelt `listne` must not silently leave a hub deaf).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::net::PeerAddr;

/// The deployer's file in a node directory.
pub const SETTINGS_FILE: &str = "outpost.toml";

/// Why the settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{path} is not valid TOML: {problem}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        problem: String,
    },
    /// A key this outpost does not know.
    #[error("{path}: unknown setting `{key}`; known settings: {known}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key, dotted.
        key: String,
        /// Every known key.
        known: String,
    },
    /// A value that does not parse.
    #[error("setting `{key}` from {source_name}: {problem}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// Where the value came from.
        source_name: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "layer", content = "name")]
pub enum Source {
    /// Built in.
    Default,
    /// `outpost.toml` (its path).
    File(String),
    /// An environment variable (its name).
    Env(String),
    /// A flag of `outpost run` (its name).
    Flag(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {p}"),
            Source::Env(v) => write!(f, "environment {v}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// One known setting.
struct Key {
    name: &'static str,
    flag: Option<&'static str>,
    list: bool,
    default: &'static str,
    help: &'static str,
}

const KEYS: &[Key] = &[
    Key {
        name: "listen",
        flag: Some("--listen"),
        list: false,
        default: "",
        help: "QUIC address to listen on (hubs and desks; for example 0.0.0.0:4433)",
    },
    Key {
        name: "peers",
        flag: Some("--peer"),
        list: true,
        default: "",
        help: "peers to dial and keep dialling, host:port (names resolved at every dial)",
    },
    Key {
        name: "congestion",
        flag: Some("--congestion"),
        list: false,
        default: "radio",
        help: "QUIC congestion control: radio (loss-tolerant, for radio links), cubic or bbr",
    },
    Key {
        name: "api.listen",
        flag: Some("--api"),
        list: false,
        default: "",
        help: "address of the clinicians' local API and app (loopback, or HTTPS beyond it)",
    },
    Key {
        name: "api.cert",
        flag: Some("--api-cert"),
        list: false,
        default: "",
        help: "PEM certificate chain for the API over HTTPS",
    },
    Key { name: "api.key", flag: Some("--api-key"), list: false, default: "", help: "PEM private key of api.cert" },
    Key {
        name: "metrics.listen",
        flag: Some("--metrics"),
        list: false,
        default: "",
        help: "address serving /metrics (Prometheus), /healthz and /readyz, no token",
    },
    Key {
        name: "log.format",
        flag: Some("--log-format"),
        list: false,
        default: "text",
        help: "text (for people) or json (one object a line, for a log collector)",
    },
    Key {
        name: "log.level",
        flag: Some("--log-level"),
        list: false,
        default: "info",
        help: "error, warn, info, debug, trace, or a tracing filter such as outpost_node=debug",
    },
    Key {
        name: "desk.auto_answer",
        flag: Some("--auto-answer"),
        list: false,
        default: "false",
        help: "on a desk: answer every call (unattended test and demo desks only)",
    },
    Key {
        name: "desk.play",
        flag: Some("--play"),
        list: false,
        default: "",
        help: "on a desk: WAV file played into every call it takes",
    },
    Key {
        name: "desk.record",
        flag: Some("--record"),
        list: false,
        default: "",
        help: "on a desk: WAV file each call it takes is recorded into",
    },
    Key {
        name: "limits.connections",
        flag: None,
        list: false,
        default: "4096",
        help: "conversations open at once, every peer together",
    },
    Key {
        name: "limits.connections_per_peer",
        flag: None,
        list: false,
        default: "4",
        help: "conversations one certificate may hold open at once",
    },
    Key {
        name: "limits.ops_per_peer_minute",
        flag: None,
        list: false,
        default: "4000000",
        help: "Automerge operations one peer may have this node check and store in a minute",
    },
    Key {
        name: "limits.mib_per_peer_minute",
        flag: None,
        list: false,
        default: "512",
        help: "MiB of frames (photos included) one peer may send in a minute",
    },
    Key {
        name: "limits.mib_unread_per_peer",
        flag: None,
        list: false,
        default: "16",
        help: "MiB of one peer's frames held received and not yet stored",
    },
    Key {
        name: "limits.mib_unsent_per_peer",
        flag: None,
        list: false,
        default: "32",
        help: "MiB made for one peer and not yet read by it, past which its requests wait",
    },
    Key {
        name: "limits.records_alarm_per_person_hour",
        flag: None,
        list: false,
        default: "60",
        help: "different patients' records one person may open through the API in an hour before the deployer is told (0: never)",
    },
    Key {
        name: "limits.records_per_person_hour",
        flag: None,
        list: false,
        default: "200",
        help: "different records one person may open through the API in an hour; past it, new ones are refused (0: no limit)",
    },
    Key {
        name: "limits.records_alarm_per_system_hour",
        flag: None,
        list: false,
        default: "2000",
        help: "as limits.records_alarm_per_person_hour, for an integrating system's token",
    },
    Key {
        name: "limits.records_per_system_hour",
        flag: None,
        list: false,
        default: "5000",
        help: "as limits.records_per_person_hour, for an integrating system's token",
    },
    Key {
        name: "limits.cards_alarm_per_person_hour",
        flag: None,
        list: false,
        default: "2000",
        help: "different patients one person may be shown on session cards (a list, the callbacks owed) in an hour before the deployer is told (0: never)",
    },
    Key {
        name: "limits.cards_alarm_per_system_hour",
        flag: None,
        list: false,
        default: "20000",
        help: "as limits.cards_alarm_per_person_hour, for an integrating system's token",
    },
    Key {
        name: "limits.records_alarm_per_person_day",
        flag: None,
        list: false,
        default: "300",
        help: "different patients' records one person may open through the API in a day before the deployer is told (0: never)",
    },
    Key {
        name: "limits.records_alarm_per_system_day",
        flag: None,
        list: false,
        default: "40000",
        help: "as limits.records_alarm_per_person_day, for an integrating system's token",
    },
    Key {
        name: "limits.calls_at_once_per_device",
        flag: None,
        list: false,
        default: "4",
        help: "on a hub: calls one requesting device may have being put through at once; the next waits its turn (0: no limit)",
    },
    Key {
        name: "limits.calls_per_device_hour",
        flag: None,
        list: false,
        default: "20",
        help: "on a hub: calls one requesting device may have taken on (or waiting) in an hour; past it, a callback (0: no limit)",
    },
];

/// The environment variable of a key.
pub fn env_name(key: &str) -> String {
    format!("OUTPOST_{}", key.to_ascii_uppercase().replace('.', "_"))
}

/// How a daemon logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object a line.
    Json,
}

/// Per-peer and total bounds of a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Conversations open at once, every peer together.
    pub connections: usize,
    /// Conversations one certificate may hold open at once.
    pub connections_per_peer: usize,
    /// Operations one peer may have the store check and apply in a minute.
    pub ops_per_peer_minute: u64,
    /// Frame bytes one peer may send in a minute.
    pub bytes_per_peer_minute: u64,
    /// Bytes of one peer's frames this node holds received and not yet taken by the store.
    pub unread_bytes_per_peer: usize,
    /// Bytes of frames made for one peer and not yet written to its streams, past which no
    /// more of its requests are answered until it reads.
    pub unsent_bytes_per_peer: usize,
    /// Different patients' records a person (or integrating system) may open through the
    /// local API in an hour: when the deployer is told, and when new ones are refused.
    pub records: crate::node::AccessLimits,
    /// On a hub: calls one requesting device may have put through at once, and taken on in
    /// an hour (0: no limit).
    pub calls_per_device: (usize, usize),
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 4096,
            connections_per_peer: 4,
            ops_per_peer_minute: 4_000_000,
            bytes_per_peer_minute: 512 * 1024 * 1024,
            unread_bytes_per_peer: 16 * 1024 * 1024,
            unsent_bytes_per_peer: 32 * 1024 * 1024,
            records: crate::node::AccessLimits::default(),
            calls_per_device: (
                sync_protocol::call::MAX_LIVE_CALLS_PER_REQUESTER,
                sync_protocol::call::MAX_CALLS_PER_REQUESTER_HOUR,
            ),
        }
    }
}

/// The effective settings of a daemon, typed, with where each came from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// QUIC listen address.
    pub listen: Option<SocketAddr>,
    /// Peers to dial.
    pub peers: Vec<PeerAddr>,
    /// Local API address.
    pub api: Option<SocketAddr>,
    /// The API's certificate.
    pub api_cert: Option<PathBuf>,
    /// The API's key.
    pub api_key: Option<PathBuf>,
    /// Metrics and health address.
    pub metrics: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// QUIC congestion control of every connection this daemon makes or takes.
    pub congestion: crate::net::congestion::Congestion,
    /// Desk: answer every call.
    pub auto_answer: bool,
    /// Desk: play file.
    pub play: Option<PathBuf>,
    /// Desk: record file.
    pub record: Option<PathBuf>,
    /// Bounds.
    pub limits: Limits,
    /// Each key's raw value and where it came from, in key order.
    pub origins: Vec<ShownSetting>,
}

/// One line of `outpost config show`.
#[derive(Debug, Clone, Serialize)]
pub struct ShownSetting {
    /// The dotted key.
    pub key: &'static str,
    /// Its value as written (a list joined by ", "; empty when unset).
    pub value: String,
    /// Where it came from.
    pub source: Source,
    /// Its environment variable.
    pub env: String,
    /// Its flag of `outpost run`, if it has one.
    pub flag: Option<&'static str>,
    /// What it does.
    pub help: &'static str,
}

/// Flags given to `outpost run`, as raw text (each `Some` or non-empty overrides).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// Flag values by key.
    pub values: BTreeMap<&'static str, Vec<String>>,
}

impl Flags {
    /// Records a flag's value(s) for `key` (nothing when `values` is empty).
    pub fn set(&mut self, key: &'static str, values: Vec<String>) {
        if !values.is_empty() {
            self.values.insert(key, values);
        }
    }
}

impl Settings {
    /// Reads `dir/outpost.toml` (if present), the environment and `flags`, in that order.
    pub fn load(dir: &Path, flags: &Flags) -> Result<Settings, SettingsError> {
        Settings::load_with(dir, flags, |k| std::env::var(k).ok())
    }

    /// [`Settings::load`] with an explicit environment (for tests).
    pub fn load_with(
        dir: &Path,
        flags: &Flags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, SettingsError> {
        let mut raw: BTreeMap<&'static str, (Vec<String>, Source)> = BTreeMap::new();
        for k in KEYS {
            let v = if k.default.is_empty() { vec![] } else { vec![k.default.to_string()] };
            raw.insert(k.name, (v, Source::Default));
        }
        let path = dir.join(SETTINGS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let table: toml::Table = toml::from_str(&text)
                    .map_err(|e| SettingsError::Syntax { path: path.clone(), problem: e.message().to_string() })?;
                let mut flat = Vec::new();
                flatten("", &toml::Value::Table(table), &mut flat);
                let shown = Source::File(path.display().to_string());
                for (key, values) in flat {
                    let Some(k) = KEYS.iter().find(|k| k.name == key) else {
                        return Err(SettingsError::UnknownKey {
                            path,
                            key,
                            known: KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
                        });
                    };
                    raw.insert(k.name, (values, shown.clone()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SettingsError::Io { path, source }),
        }
        for k in KEYS {
            let var = env_name(k.name);
            if let Some(v) = env(&var) {
                let values = if k.list {
                    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
                } else {
                    vec![v.trim().to_string()]
                };
                raw.insert(k.name, (values, Source::Env(var)));
            }
            if let (Some(values), Some(flag)) = (flags.values.get(k.name), k.flag) {
                raw.insert(k.name, (values.clone(), Source::Flag(flag.to_string())));
            }
        }
        Settings::parse(raw)
    }

    fn parse(raw: BTreeMap<&'static str, (Vec<String>, Source)>) -> Result<Settings, SettingsError> {
        let get = |key: &'static str| -> (&[String], &Source) {
            match raw.get(key) {
                Some((v, s)) => (v.as_slice(), s),
                None => (&[], &Source::Default),
            }
        };
        let bad = |key: &'static str, problem: String| SettingsError::BadValue {
            key,
            source_name: get(key).1.to_string(),
            problem,
        };
        let one = |key: &'static str| get(key).0.first().map(String::as_str).filter(|s| !s.is_empty());
        let addr = |key: &'static str| -> Result<Option<SocketAddr>, SettingsError> {
            one(key)
                .map(|s| {
                    s.parse::<SocketAddr>().map_err(|_| {
                        bad(key, format!("{s:?} is not an address with a port, such as 0.0.0.0:4433 or [::1]:4433"))
                    })
                })
                .transpose()
        };
        let path = |key: &'static str| one(key).map(PathBuf::from);
        let number = |key: &'static str| -> Result<u64, SettingsError> {
            let s = one(key).unwrap_or("0");
            match s.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad(key, format!("{s:?} is not a whole number above 0"))),
            }
        };
        // A threshold that 0 turns off.
        // An empty value (`OUTPOST_LIMITS_RECORDS_PER_PERSON_HOUR=` in a unit file) is an
        // error, not 0: a protection is turned off only by saying so.
        let count = |key: &'static str| -> Result<usize, SettingsError> {
            let s = one(key).ok_or_else(|| bad(key, "no value: a whole number (0 turns it off)".into()))?;
            s.parse::<usize>().map_err(|_| bad(key, format!("{s:?} is not a whole number (0 turns it off)")))
        };
        // A bound of memory in MiB, held per peer (at most 4 GiB: the queue counts in u32).
        let mib_bytes = |key: &'static str| -> Result<usize, SettingsError> {
            let n = number(key)?;
            if n > 4095 {
                return Err(bad(key, format!("{n} MiB is more than a peer may hold (4095 at most)")));
            }
            Ok(n as usize * 1024 * 1024)
        };
        let boolean = |key: &'static str| -> Result<bool, SettingsError> {
            match one(key).unwrap_or("false") {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                other => Err(bad(key, format!("{other:?} is not true or false"))),
            }
        };
        let peers = get("peers")
            .0
            .iter()
            .map(|p| p.parse::<PeerAddr>().map_err(|e| bad("peers", format!("{p:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let log_format = match one("log.format").unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(bad("log.format", format!("{other:?} is not text or json"))),
        };
        let log_level = one("log.level").unwrap_or("info").to_string();
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(bad("log.level", format!("{log_level:?} is not a level (error, warn, info, debug, trace)")));
        }
        let api_cert = path("api.cert");
        let api_key = path("api.key");
        if api_cert.is_some() != api_key.is_some() {
            let key = if api_cert.is_some() { "api.key" } else { "api.cert" };
            return Err(bad(key, "api.cert and api.key go together: set both or neither".into()));
        }
        let congestion_name = one("congestion").unwrap_or("radio");
        let congestion = crate::net::congestion::Congestion::parse(congestion_name)
            .ok_or_else(|| bad("congestion", format!("{congestion_name:?} is not radio, cubic or bbr")))?;
        let mib = number("limits.mib_per_peer_minute")?;
        let limits = Limits {
            connections: number("limits.connections")? as usize,
            connections_per_peer: number("limits.connections_per_peer")? as usize,
            ops_per_peer_minute: number("limits.ops_per_peer_minute")?,
            bytes_per_peer_minute: mib.saturating_mul(1024 * 1024),
            unread_bytes_per_peer: mib_bytes("limits.mib_unread_per_peer")?,
            unsent_bytes_per_peer: mib_bytes("limits.mib_unsent_per_peer")?,
            records: crate::node::AccessLimits {
                person: crate::node::RecordLimits {
                    alarm: count("limits.records_alarm_per_person_hour")?,
                    limit: count("limits.records_per_person_hour")?,
                    cards_alarm: count("limits.cards_alarm_per_person_hour")?,
                    day_alarm: count("limits.records_alarm_per_person_day")?,
                },
                system: crate::node::RecordLimits {
                    alarm: count("limits.records_alarm_per_system_hour")?,
                    limit: count("limits.records_per_system_hour")?,
                    cards_alarm: count("limits.cards_alarm_per_system_hour")?,
                    day_alarm: count("limits.records_alarm_per_system_day")?,
                },
            },
            calls_per_device: (count("limits.calls_at_once_per_device")?, count("limits.calls_per_device_hour")?),
        };
        let origins = KEYS
            .iter()
            .map(|k| {
                let (v, s) = get(k.name);
                ShownSetting {
                    key: k.name,
                    value: v.join(", "),
                    source: s.clone(),
                    env: env_name(k.name),
                    flag: k.flag,
                    help: k.help,
                }
            })
            .collect();
        Ok(Settings {
            listen: addr("listen")?,
            peers,
            api: addr("api.listen")?,
            api_cert,
            api_key,
            metrics: addr("metrics.listen")?,
            log_format,
            log_level,
            congestion,
            auto_answer: boolean("desk.auto_answer")?,
            play: path("desk.play"),
            record: path("desk.record"),
            limits,
            origins,
        })
    }

    /// A commented `outpost.toml` listing every setting with its default, written by `outpost init`.
    pub fn template() -> String {
        let mut out = String::from(
            "# How this node runs (outpost.toml). Identity is in node.toml, which outpost writes.\n\
             # Every setting can also come from an environment variable or a flag of `outpost run`,\n\
             # which win over this file; `outpost config show` prints what is in effect and why.\n",
        );
        let mut section = "";
        for k in KEYS {
            let (sec, name) = k.name.rsplit_once('.').unwrap_or(("", k.name));
            if sec != section {
                out.push_str(&format!("\n[{sec}]\n"));
                section = sec;
            } else if sec.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("# {} ({})\n", k.help, env_name(k.name)));
            let example = match (k.name, k.default) {
                ("peers", _) => "[\"hub.example.nhs.uk:4433\"]".to_string(),
                (_, "") => "\"\"".to_string(),
                (_, d) if d.parse::<u64>().is_ok() || d == "false" => d.to_string(),
                (_, d) => format!("\"{d}\""),
            };
            out.push_str(&format!("# {name} = {example}\n"));
        }
        out
    }
}

/// Dotted keys of every leaf of `value` (arrays are leaves).
fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, Vec<String>)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        toml::Value::Array(items) => out.push((prefix.to_string(), items.iter().map(scalar).collect())),
        other => out.push((prefix.to_string(), vec![scalar(other)])),
    }
}

fn scalar(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)], flags: &Flags) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = file {
            std::fs::write(dir.path().join(SETTINGS_FILE), text).unwrap();
        }
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::load_with(dir.path(), flags, |k| env.get(k).cloned())
    }

    fn source_of(s: &Settings, key: &str) -> Source {
        s.origins.iter().find(|o| o.key == key).unwrap().source.clone()
    }

    #[test]
    fn the_file_then_the_environment_then_flags_each_win_and_say_so() {
        let file = "listen = \"0.0.0.0:4433\"\npeers = [\"hub.a:4433\"]\n[log]\nformat = \"json\"\n[api]\nlisten = \"127.0.0.1:8080\"\n";
        let mut flags = Flags::default();
        flags.set("api.listen", vec!["127.0.0.1:9000".into()]);
        let s = load(
            Some(file),
            &[("OUTPOST_PEERS", "hub.b:4433, hub.c:4433"), ("OUTPOST_API_LISTEN", "127.0.0.1:8081")],
            &flags,
        )
        .unwrap();
        assert_eq!(s.listen, Some("0.0.0.0:4433".parse().unwrap()));
        assert!(matches!(source_of(&s, "listen"), Source::File(_)));
        assert_eq!(s.peers.len(), 2, "the environment's list replaces the file's");
        assert_eq!(source_of(&s, "peers"), Source::Env("OUTPOST_PEERS".into()));
        assert_eq!(s.api, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(source_of(&s, "api.listen"), Source::Flag("--api".into()));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.log_level, "info");
        assert_eq!(source_of(&s, "log.level"), Source::Default);
        assert_eq!(s.limits, Limits::default(), "the built-in limits are the defaults");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let err = load(Some("listne = \"0.0.0.0:4433\"\n"), &[], &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("unknown setting `listne`"), "{err}");
        let err = load(Some("[limits]\nconections = 3\n"), &[], &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("`limits.conections`"), "{err}");
    }

    #[test]
    fn a_bad_value_names_its_key_and_where_it_came_from() {
        let err = load(None, &[("OUTPOST_LISTEN", "4433")], &Flags::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`listen`") && text.contains("OUTPOST_LISTEN") && text.contains("port"), "{text}");
        let err = load(Some("[limits]\nconnections = 0\n"), &[], &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("above 0"), "{err}");
        let err = load(Some("[api]\ncert = \"/x.pem\"\n"), &[], &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
        let err = load(Some("[log]\nformat = \"xml\"\n"), &[], &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("text or json"), "{err}");
        let err = load(Some("[limits]\nmib_unsent_per_peer = 5000\n"), &[], &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("`limits.mib_unsent_per_peer`") && err.to_string().contains("4095"), "{err}");
        let s = load(None, &[("OUTPOST_LIMITS_MIB_UNREAD_PER_PEER", "2")], &Flags::default()).unwrap();
        assert_eq!(s.limits.unread_bytes_per_peer, 2 * 1024 * 1024, "a bound of memory is given in MiB");
    }

    #[test]
    fn the_congestion_controller_is_a_setting_like_any_other() {
        let s = load(None, &[], &Flags::default()).unwrap();
        assert_eq!(s.congestion, crate::net::congestion::Congestion::Radio);
        let s = load(Some("congestion = \"bbr\"\n"), &[], &Flags::default()).unwrap();
        assert_eq!(s.congestion, crate::net::congestion::Congestion::Bbr);
        let s = load(Some("congestion = \"bbr\"\n"), &[("OUTPOST_CONGESTION", "cubic")], &Flags::default()).unwrap();
        assert_eq!(s.congestion, crate::net::congestion::Congestion::Cubic);
        assert_eq!(source_of(&s, "congestion"), Source::Env("OUTPOST_CONGESTION".into()));
        let err = load(Some("congestion = \"reno\"\n"), &[], &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("radio, cubic or bbr"), "{err}");
    }

    #[test]
    fn a_hubs_calls_per_device_are_settings_and_zero_turns_one_off() {
        let s = load(None, &[], &Flags::default()).unwrap();
        assert_eq!(s.limits.calls_per_device, (4, 20));
        let file = "[limits]\ncalls_at_once_per_device = 2\ncalls_per_device_hour = 0\n";
        let s = load(Some(file), &[], &Flags::default()).unwrap();
        assert_eq!(s.limits.calls_per_device, (2, 0));
        let err = load(None, &[("OUTPOST_LIMITS_CALLS_PER_DEVICE_HOUR", "")], &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("`limits.calls_per_device_hour`"), "{err}");
    }

    #[test]
    fn the_template_is_valid_and_sets_nothing() {
        let s = load(Some(&Settings::template()), &[], &Flags::default()).unwrap();
        assert!(s.origins.iter().all(|o| o.source == Source::Default), "every line is a comment");
        for k in KEYS {
            assert!(Settings::template().contains(&env_name(k.name)), "{} documented", k.name);
        }
    }
}
