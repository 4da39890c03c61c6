//! The network: QUIC with mutual TLS, and the sync engine driven over it.
//!
//! - One **store thread** owns the node's store. Connection tasks send it closures; every
//!   engine step (which reads and writes the store) runs there, so the store needs no locks and
//!   SQLite sees one writer per process.
//! - Each **connection** carries two streams opened by the dialer: the sync lane (priority 1:
//!   reconciliation and document changes) and the blob lane (priority 0: photo chunks). A
//!   message typed while a photo is halfway up goes out ahead of the photo's remaining chunks.
//! - A **daemon** (`outpost run`) listens, dials its peers with exponential backoff and jitter,
//!   notices writes made by other processes on the same node (the CLI) within 50 ms by polling
//!   SQLite's data version, and pushes every change to every connected peer that may see it.
//! - A **one-shot sync** (`outpost sync`) runs one conversation to its end and reports its cost.
//!
//! Rooms: `transport` (QUIC and TLS set-up), `store_thread` (the thread that owns the store),
//! `conversation` (one connection's lanes and engine),
//! `daemon` (`outpost run`), `call` (probes, routing, answering, audio), `api` (the local HTTP
//! API), `metrics` (Prometheus), `congestion` (the radio link controller).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use sync_protocol::call::{ADPCM_32K, Action, Listen, PathQuality, quality_from_probes, rate};
use sync_protocol::directory::is_directory_id;
use sync_protocol::engine::{Engine, EngineConfig, Stats};
use sync_protocol::leg::{Leg, LegEnd};
use sync_protocol::router::{Due, Relay, Router, Step};
use sync_protocol::scope::PeerInfo;
use sync_protocol::session::SessionId;
use sync_protocol::vocab::{Role, Status};
use sync_protocol::voice::{
    AdpcmState, CODEC_ADPCM, DG_BYE, DG_VOICE, FRAME_MS, FRAME_SAMPLES, JitterBuffer, VoiceFrame, bye, call_tag,
    decode, encode,
};
use sync_protocol::wire::{CloseCode, DecodeError, DocId, Frame, FrameDecoder, Lane};
use tokio::sync::{broadcast, mpsc};

use crate::node::{Node, now_ms};
use crate::store::{ListFilter, StoreError};
use crate::tls::{self, Identity, SERVER_NAME, TlsError};
pub use congestion::{CONGESTION_ENV, Congestion, set_congestion};

const LANE_SYNC: u8 = 1;
const LANE_BLOB: u8 = 2;

/// Why networking failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The node's certificate or the TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A connection could not be made.
    #[error("cannot connect to {addr}: {failure}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        failure: DialFailure,
    },
    /// A peer's host name did not resolve.
    #[error("cannot resolve {name}: {source}; check the name (and the DNS of this network), or give an IP address")]
    Resolve {
        /// The name as given (`host:port`).
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed or the peer refused us.
    #[error("connection with {peer} failed: {failure}")]
    Connection {
        /// The peer (address or name).
        peer: String,
        /// Why.
        #[source]
        failure: ConnectionFailure,
    },
    /// The sync conversation failed.
    #[error("sync with {peer} failed: {failure}")]
    Sync {
        /// The peer.
        peer: String,
        /// Why.
        #[source]
        failure: SyncFailure,
        /// What the conversation had done until then.
        partial: Option<Box<Stats>>,
    },
    /// A call was asked for and neither an answer nor a callback reached this device in time.
    #[error(
        "no answer or callback reached this device within {waited_s} s; the escalation stands, and `outpost call status` shows it as it moves"
    )]
    NoAnswer {
        /// Seconds waited.
        waited_s: u64,
    },
    /// The store thread is gone.
    #[error("the store thread stopped")]
    StoreGone,
    /// The sync did not finish in time.
    #[error("sync with {0} did not finish within the time limit")]
    Timeout(String),
}

/// What a daemon shares between its connections.
#[derive(Debug)]
struct Shared {
    store: StoreHandle,
    me: PeerInfo,
    identity: Identity,
    crl: std::sync::RwLock<Option<Vec<u8>>>,
    changes: broadcast::Sender<Notice>,
    next_conn: std::sync::atomic::AtomicU64,
    endpoint: std::sync::OnceLock<quinn::Endpoint>,
    /// The dialling configuration, kept while the revocation list is unchanged: reconnects to a
    /// peer resume their TLS session (no certificate chain sent or checked again, on either
    /// side). A resumed session is checked against the current revocation list in `converse`.
    dial: std::sync::Mutex<Option<(Option<Vec<u8>>, quinn::ClientConfig)>>,
    /// Peers' certificate chains this node checked as a dialler (full handshakes; a resumed
    /// session checks none).
    chains_checked: Arc<std::sync::atomic::AtomicU64>,
    /// Whether the file system tells this process of other processes' writes to its store
    /// (else the daemon looks every 50 ms).
    store_watched: std::sync::atomic::AtomicBool,
    /// Live connections by peer name, for the call router's path measurements.
    links: std::sync::Mutex<std::collections::HashMap<String, PeerLink>>,
    /// On a hub: calls whose voice it relays, by call tag: the session, and (requester, desk).
    relay: std::sync::Mutex<std::collections::HashMap<u32, Relayed>>,
    /// On a party of a call: where the call's voice datagrams go (call tag, receiver).
    voice_in: std::sync::Mutex<Option<(u32, mpsc::UnboundedSender<VoiceIn>)>>,
    /// The call whose audio this party carries now, if any, and its hang-up switch (set by the
    /// local API's hang-up; the audio loop ends the call at its next frame).
    live_call: std::sync::Mutex<Option<LiveCall>>,
    /// The calls whose audio this daemon carries as a party (`call.rs::run_call_audio`): its
    /// connections' congestion control keeps the queue short in front of them.
    calls_carried: congestion::CallsCarried,
    /// A person's microphone and speaker, from the app's page (`/api/calls/audio`): when
    /// present, a call this node carries speaks from it and plays into it.
    voice_io: std::sync::Mutex<Option<Arc<VoiceIo>>>,
    /// Who speaks in each session's call from this node, by call: the person who first asked
    /// for it (edge) or answered it (desk) through the API. Only their page may carry its voice
    /// (asking again for a call already asked for does not move it to the one who asks).
    call_people: std::sync::Mutex<std::collections::HashMap<SessionId, (String, i64)>>,
    /// Set when the daemon begins to stop (`/readyz` says so).
    stopping: std::sync::atomic::AtomicBool,
    /// Conversations open, by peer name: bounded per certificate and in all.
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// What the local API bounds (logins, lockouts, event streams).
    api: api::Guards,
    /// Prometheus metrics (`metrics.listen`).
    metrics: metrics::Metrics,
    /// Bounds on connections and per-peer work.
    limits: crate::settings::Limits,
}

/// The app page's audio, 8 kHz mono in 20 ms frames: what its microphone sent (a short queue;
/// the oldest frames go first when the page runs ahead) and where the call's audio goes.
impl Shared {
    /// What the tasks of one process share: its node (moved onto the store thread), identity,
    /// revocation list and change channel (`changes` notices buffered), with these limits.
    /// The daemon sets the node's access watch first (`Node::set_record_limits`, which
    /// replays the last day's looks at records): a one-shot sync serves no one's looks.
    fn new(node: Node, changes: usize, limits: crate::settings::Limits) -> Result<Arc<Shared>, NetError> {
        let identity = load_identity(&node)?;
        let crl = node.revocations()?.map(|(_, d)| d);
        let store = StoreHandle::spawn(node);
        Ok(Arc::new(Shared {
            store,
            me: identity.info.clone(),
            crl: std::sync::RwLock::new(crl),
            identity,
            changes: broadcast::channel(changes).0,
            next_conn: std::sync::atomic::AtomicU64::new(1),
            endpoint: std::sync::OnceLock::new(),
            dial: std::sync::Mutex::new(None),
            chains_checked: Arc::default(),
            store_watched: std::sync::atomic::AtomicBool::new(false),
            links: std::sync::Mutex::new(std::collections::HashMap::new()),
            relay: std::sync::Mutex::new(std::collections::HashMap::new()),
            voice_in: std::sync::Mutex::new(None),
            live_call: std::sync::Mutex::new(None),
            calls_carried: congestion::CallsCarried::default(),
            voice_io: std::sync::Mutex::new(None),
            call_people: std::sync::Mutex::new(std::collections::HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
            api: api::Guards::default(),
            metrics: metrics::Metrics::new(),
            limits,
        }))
    }
}

#[derive(Debug)]
pub(crate) struct VoiceIo {
    /// Which socket it is (one page at a time carries a call's voice).
    pub(crate) id: u64,
    /// Frames from the microphone, not yet sent.
    pub(crate) mic: std::sync::Mutex<std::collections::VecDeque<Vec<i16>>>,
    /// Frames for the speaker.
    pub(crate) speaker: mpsc::Sender<Vec<i16>>,
}

/// Microphone frames held before the oldest is dropped (200 ms: latency stays bounded when the
/// page's clock runs ahead of the node's).
pub(crate) const MIC_QUEUE_FRAMES: usize = 10;

impl VoiceIo {
    /// The next 20 ms from the microphone, if any.
    fn next_mic_frame(&self) -> Option<Vec<i16>> {
        self.mic.lock().ok()?.pop_front()
    }
}

/// A call whose voice a hub relays: its session, its two parties (requester, desk), and when
/// it connected.
type Relayed = (SessionId, (String, String), Instant);

/// A call this party is in: its session, id, and whether a person asked to hang up.
#[derive(Debug, Clone)]
struct LiveCall {
    session: SessionId,
    call: String,
    hang_up: Arc<std::sync::atomic::AtomicBool>,
}

// Conversations one certificate may hold open at once (by default 4: a daemon and a CLI sync,
// with room for a reconnect that overlaps the old connection's idle timeout), and in all: the
// `limits.*` settings (`crate::settings::Limits`), like the per-peer budgets below.
/// Frames handed to the store in one step: bounds the store thread's work per request, so one
/// peer's burst cannot hold the others' syncs back.
const MAX_FRAMES_PER_STEP: usize = 256;

/// A slot among the open conversations, given back when the conversation ends.
struct Slot {
    shared: Arc<Shared>,
    name: String,
}

impl Slot {
    /// Takes a slot for `name`, or says why there is none.
    fn take(shared: &Arc<Shared>, name: &str) -> Result<Slot, ConnectionFailure> {
        let mut open = shared.open.lock().map_err(|_| ConnectionFailure::Poisoned)?;
        let total: usize = open.values().sum();
        let mine = open.get(name).copied().unwrap_or(0);
        let limits = shared.limits;
        if mine >= limits.connections_per_peer {
            return Err(ConnectionFailure::PeerLimit {
                peer: name.to_string(),
                held: mine,
                max: limits.connections_per_peer,
            });
        }
        if total >= limits.connections {
            return Err(ConnectionFailure::NodeLimit { max: limits.connections });
        }
        *open.entry(name.to_string()).or_default() += 1;
        Ok(Slot { shared: shared.clone(), name: name.to_string() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.shared.open.lock()
            && let Some(n) = open.get_mut(&self.name)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.name);
            }
        }
    }
}

/// What one peer made this node do in the current minute.
#[derive(Debug)]
struct Budget {
    since: Instant,
    ops: u64,
    bytes: u64,
}

impl Budget {
    fn new() -> Budget {
        Budget { since: Instant::now(), ops: 0, bytes: 0 }
    }

    /// Adds work; returns why the peer is over its budget, if it is.
    /// (A first contact of 10,000 sessions is about 600,000 operations.)
    fn spend(&mut self, ops: u64, bytes: u64, limits: &crate::settings::Limits) -> Option<Overspent> {
        if self.since.elapsed() >= Duration::from_secs(60) {
            *self = Budget::new();
        }
        self.ops += ops;
        self.bytes += bytes;
        if self.ops > limits.ops_per_peer_minute {
            return Some(Overspent::Ops(limits.ops_per_peer_minute));
        }
        if self.bytes > limits.bytes_per_peer_minute {
            return Some(Overspent::Bytes(limits.bytes_per_peer_minute));
        }
        None
    }
}

/// Where a path probe's echoes go while a measurement runs.
type EchoSlot = Arc<std::sync::Mutex<Option<mpsc::UnboundedSender<(u32, Instant)>>>>;

/// A live connection to a named peer.
#[derive(Debug, Clone)]
struct PeerLink {
    id: u64,
    role: Role,
    conn: quinn::Connection,
    echoes: EchoSlot,
}

/// What reaches a party of a call: a voice frame (with its arrival time) or the other side's hang-up.
#[derive(Debug)]
enum VoiceIn {
    Frame(VoiceFrame, Instant),
    Bye,
}

/// Removes a connection from the registry (and stops its datagram task) when it ends.
struct Registered {
    shared: Arc<Shared>,
    name: String,
    id: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut links) = self.shared.links.lock()
            && links.get(&self.name).is_some_and(|l| l.id == self.id)
        {
            links.remove(&self.name);
        }
    }
}

/// News for connection tasks.
#[derive(Debug, Clone)]
enum Notice {
    /// These documents changed (by connection `from`, 0 for local writes).
    Docs { from: u64, docs: Arc<Vec<DocId>> },
    /// A hub confirmed holding these sessions (at the heads it told): their cards may now
    /// show this node's messages "at hub". No document changed.
    Held { docs: Arc<Vec<DocId>> },
    /// A newer revocation list was installed.
    Revocations,
    /// A conversation with a peer began or ended (for the local API's event stream).
    Link { peer: String, up: bool },
}

/// What a finished conversation cost.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SyncReport {
    /// The peer.
    pub peer: String,
    /// Its role.
    pub peer_role: String,
    /// The engine's counters (round trips, frame bytes, documents, blobs).
    #[serde(flatten)]
    pub stats: Stats,
    /// UDP bytes sent after the handshake.
    pub udp_bytes_sent: u64,
    /// UDP bytes received after the handshake.
    pub udp_bytes_received: u64,
    /// Time of the QUIC and TLS handshake, in milliseconds.
    pub handshake_ms: f64,
    /// Time from the end of the handshake to the end of the conversation, in milliseconds.
    pub sync_ms: f64,
    /// Round-trip time measured by QUIC, in milliseconds.
    pub rtt_ms: f64,
    /// The congestion controller this process's connections use (`radio`, `cubic`, `bbr`).
    pub congestion: String,
}

/// The runtime for [`sync_once`] in a process of its own (`outpost sync`): one thread. A
/// conversation is a chain of awaits, so worker threads would only hand each packet from one
/// thread to another: with two workers a fresh sync with nothing to send cost 6.5 ms of CPU,
/// with one thread 5.7 ms (medians of 30 `outpost sync` processes each, 5 December 2026). The
/// store keeps its own thread either way.
pub fn one_shot_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Runs one conversation with `peer` to its end and returns its report.
pub async fn sync_once(node: Node, peer: SocketAddr, limit: Duration) -> Result<SyncReport, NetError> {
    sync_once_with(node, peer, limit, Arc::new(tokio::sync::Notify::new())).await
}

/// [`sync_once`], abandoned (as a link that dies) when `stop` is notified.
pub async fn sync_once_with(
    node: Node,
    peer: SocketAddr,
    limit: Duration,
    stop: Arc<tokio::sync::Notify>,
) -> Result<SyncReport, NetError> {
    let shared = Shared::new(node, 64, crate::settings::Limits::default())?;
    let bind: SocketAddr = if peer.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|_| NetError::Bind { addr: peer, source: std::io::Error::other("bad bind address") })?;
    let endpoint = quinn::Endpoint::client(bind).map_err(|source| NetError::Bind { addr: bind, source })?;
    let crl = shared.crl.read().map(|c| c.clone()).unwrap_or_default();
    let cfg = client_config(&shared.identity, crl.as_deref())?;
    let report = dial_and_converse(shared, &endpoint, cfg, peer, limit, stop).await?;
    endpoint.wait_idle().await;
    Ok(report)
}

/// Dials `peer` (the handshake within `limit`) and runs one conversation to its end within
/// what is left of `limit`.
async fn dial_and_converse(
    shared: Arc<Shared>,
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    peer: SocketAddr,
    limit: Duration,
    stop: Arc<tokio::sync::Notify>,
) -> Result<SyncReport, NetError> {
    let started = Instant::now();
    let connecting = endpoint
        .connect_with(cfg, peer, SERVER_NAME)
        .map_err(|e| NetError::Connect { addr: peer, failure: e.into() })?;
    let conn = tokio::time::timeout(limit, connect_noting_silence(connecting, peer))
        .await
        .map_err(|_| NetError::Timeout(peer.to_string()))?
        .map_err(|e| NetError::Connect { addr: peer, failure: e.into() })?;
    let handshake = started.elapsed();
    let deadline = tokio::time::Instant::now() + limit.saturating_sub(handshake);
    let mut report = converse(shared, conn, true, true, Some((deadline, stop))).await?;
    report.handshake_ms = handshake.as_secs_f64() * 1e3;
    Ok(report)
}

/// How long a dial waits in silence before saying so (it goes on trying: a handshake over a
/// slow or lossy link may still complete).
pub const NO_ANSWER_NOTICE: Duration = Duration::from_secs(5);

/// Waits for a handshake; if the peer has not answered within [`NO_ANSWER_NOTICE`], says so
/// (a crew must not stare at a silent screen for the 30 s a handshake may take to give up),
/// and keeps waiting.
async fn connect_noting_silence(
    connecting: quinn::Connecting,
    peer: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    tokio::pin!(connecting);
    tokio::select! {
        done = &mut connecting => return done,
        _ = tokio::time::sleep(NO_ANSWER_NOTICE) => {
            tracing::warn!(
                %peer,
                "no answer from {peer} within {} s: the link may be down or the address wrong; still trying",
                NO_ANSWER_NOTICE.as_secs()
            );
        }
    }
    connecting.await
}

/// A peer's address as given: `host:port`, where the host is a name (resolved again at every
/// dial, so a hub that moves is found), an IPv4 address or a bracketed IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    host: String,
    port: u16,
}

impl std::str::FromStr for PeerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(PeerAddr::from(addr));
        }
        let bad = || format!("{s:?} is not host:port (for example hub.qhm.example:4433, 10.0.0.2:4433 or [::1]:4433)");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !name_ok || port == 0 {
            return Err(bad());
        }
        Ok(PeerAddr { host: host.to_ascii_lowercase(), port })
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        PeerAddr { host: addr.ip().to_string(), port: addr.port() }
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl PeerAddr {
    /// The address to dial now: the resolver's first IPv4 address, else its first (a daemon's
    /// endpoint is bound to IPv4 unless it listens on IPv6, and `localhost` often gives `::1`
    /// first while the hub listens on 127.0.0.1).
    pub async fn resolve(&self) -> Result<SocketAddr, NetError> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let name = self.to_string();
        let found: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|source| NetError::Resolve { name: name.clone(), source })?
            .collect();
        found.iter().find(|a| a.is_ipv4()).or(found.first()).copied().ok_or_else(|| NetError::Resolve {
            name,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address"),
        })
    }
}

mod api;
mod call;
pub mod congestion;
mod conversation;
mod daemon;
mod failure;
mod metrics;
mod store_thread;
mod transport;

pub use api::{ApiTls, openapi_json};
use call::*;
pub use conversation::FRAME_LOG_ENV;
use conversation::*;
use daemon::*;
pub use daemon::{Daemon, LOCAL_WRITE_RECHECK, RunOptions};
pub use failure::{ConnectionFailure, DialFailure, Overspent, SyncFailure};
pub use store_thread::StoreHandle;
use transport::*;
pub use transport::{client_config, load_identity, server_config};

/// Reads a Server-Sent Events stream of the local API (`GET /api/events`) as a client does:
/// calls `f` with each event's name and JSON data (null if the data is not JSON) until the
/// stream ends or `f` returns false. For the demo's apps, the tests and the benchmarks.
pub fn read_events(reader: impl std::io::BufRead, mut f: impl FnMut(String, serde_json::Value) -> bool) {
    let mut name = String::new();
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(data) = line.strip_prefix("data: ")
            && !f(name.clone(), serde_json::from_str(data).unwrap_or(serde_json::Value::Null))
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PeerAddr;

    #[test]
    fn peer_addresses_take_names_and_both_ip_families_and_refuse_the_rest() {
        let ok = |s: &str| s.parse::<PeerAddr>().map(|p| p.to_string());
        assert_eq!(ok("hub.QHM.example:4433"), Ok("hub.qhm.example:4433".into()));
        assert_eq!(ok("localhost:4433"), Ok("localhost:4433".into()));
        assert_eq!(ok("10.0.0.2:4433"), Ok("10.0.0.2:4433".into()));
        assert_eq!(ok("[::1]:4433"), Ok("[::1]:4433".into()));
        for bad in
            ["hub", "hub:", ":4433", "hub:0", "hub:70000", "hub_1:4433", "-hub:4433", "hub..x:4433", "::1:4433", ""]
        {
            let err = bad.parse::<PeerAddr>().unwrap_err();
            assert!(err.contains("host:port"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn a_name_resolves_to_ipv4_first_and_an_unknown_name_says_so() {
        let local: PeerAddr = "localhost:4433".parse().unwrap();
        assert_eq!(local.resolve().await.unwrap(), "127.0.0.1:4433".parse().unwrap());
        let nowhere: PeerAddr = "no-such-hub.invalid:4433".parse().unwrap();
        let err = nowhere.resolve().await.unwrap_err().to_string();
        assert!(err.starts_with("cannot resolve no-such-hub.invalid:4433"), "{err}");
    }
}
