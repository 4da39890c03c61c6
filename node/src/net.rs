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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use sync_protocol::call::{ADPCM_32K, Action, PathQuality, quality_from_probes, rate};
use sync_protocol::directory::is_directory_id;
use sync_protocol::engine::{Engine, EngineConfig, Stats};
use sync_protocol::scope::PeerInfo;
use sync_protocol::session::{LogValue, SessionId};
use sync_protocol::vocab::{Role, Status};
use sync_protocol::voice::{
    AdpcmState, CODEC_ADPCM, DG_BYE, DG_VOICE, FRAME_MS, FRAME_SAMPLES, JitterBuffer, VoiceFrame, bye, call_tag,
    decode, encode,
};
use sync_protocol::wire::{CloseCode, DocId, Frame, FrameDecoder, Lane};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::node::{Node, now_ms};
use crate::replica::NodeReplica;
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
    #[error("cannot connect to {addr}: {detail}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        detail: String,
    },
    /// A peer's host name did not resolve.
    #[error("cannot resolve {name}: {detail}; check the name (and the DNS of this network), or give an IP address")]
    Resolve {
        /// The name as given (`host:port`).
        name: String,
        /// Why.
        detail: String,
    },
    /// The connection failed or the peer refused us.
    #[error("connection with {peer} failed: {detail}")]
    Connection {
        /// The peer (address or name).
        peer: String,
        /// Why.
        detail: String,
    },
    /// The sync conversation failed.
    #[error("sync with {peer} failed: {detail}")]
    Sync {
        /// The peer.
        peer: String,
        /// Why.
        detail: String,
        /// What the conversation had done until then.
        partial: Option<Box<Stats>>,
    },
    /// The store thread is gone.
    #[error("the store thread stopped")]
    StoreGone,
    /// The sync did not finish in time.
    #[error("sync with {0} did not finish within the time limit")]
    Timeout(String),
}

type Job = Box<dyn FnOnce(&mut Node) + Send>;

enum StoreMsg {
    Job(Job),
    /// Close the store (drop the node) and end the thread; then answer.
    Stop(oneshot::Sender<()>),
}

/// A handle to the thread that owns the node's store.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: std::sync::mpsc::Sender<StoreMsg>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle").finish_non_exhaustive()
    }
}

impl StoreHandle {
    /// Moves `node` onto its own thread.
    pub fn spawn(node: Node) -> StoreHandle {
        let (tx, rx) = std::sync::mpsc::channel::<StoreMsg>();
        let mut node = node;
        std::thread::Builder::new()
            .name("outpost-store".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    match msg {
                        StoreMsg::Job(job) => job(&mut node),
                        StoreMsg::Stop(done) => {
                            drop(node);
                            let _ = done.send(());
                            return;
                        }
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the store thread: {e}"));
        StoreHandle { jobs: tx }
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node) -> T + Send + 'static,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(StoreMsg::Job(Box::new(move |node| {
                let _ = tx.send(f(node));
            })))
            .map_err(|_| NetError::StoreGone)?;
        rx.await.map_err(|_| NetError::StoreGone)
    }

    /// Finishes the jobs already sent, closes the store and ends its thread: when this
    /// returns, the database is closed. Later calls fail with [`NetError::StoreGone`].
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(StoreMsg::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
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
    /// Live connections by peer name, for the call router's path measurements.
    links: std::sync::Mutex<std::collections::HashMap<String, PeerLink>>,
    /// On a hub: calls whose voice it relays, by call tag: (requester, desk).
    relay: std::sync::Mutex<std::collections::HashMap<u32, (String, String)>>,
    /// On a party of a call: where the call's voice datagrams go (call tag, receiver).
    voice_in: std::sync::Mutex<Option<(u32, mpsc::UnboundedSender<VoiceIn>)>>,
    /// The call whose audio this party carries now, if any, and its hang-up switch (set by the
    /// local API's hang-up; the audio loop ends the call at its next frame).
    live_call: std::sync::Mutex<Option<LiveCall>>,
    /// A person's microphone and speaker, from the app's page (`/api/calls/audio`): when
    /// present, a call this node carries speaks from it and plays into it.
    voice_io: std::sync::Mutex<Option<Arc<VoiceIo>>>,
    /// Who speaks in each session's call from this node: the person who asked for it (edge) or
    /// answered it (desk) through the API. Only their page may carry its voice.
    call_people: std::sync::Mutex<std::collections::HashMap<SessionId, i64>>,
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
    fn take(shared: &Arc<Shared>, name: &str) -> Result<Slot, String> {
        let mut open = shared.open.lock().map_err(|_| "the connection table is poisoned".to_string())?;
        let total: usize = open.values().sum();
        let mine = open.get(name).copied().unwrap_or(0);
        let limits = shared.limits;
        if mine >= limits.connections_per_peer {
            return Err(format!("{name} already holds {mine} connections (at most {})", limits.connections_per_peer));
        }
        if total >= limits.connections {
            return Err(format!("this node is at its limit of {} connections", limits.connections));
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
    fn spend(&mut self, ops: u64, bytes: u64, limits: &crate::settings::Limits) -> Option<String> {
        if self.since.elapsed() >= Duration::from_secs(60) {
            *self = Budget::new();
        }
        self.ops += ops;
        self.bytes += bytes;
        if self.ops > limits.ops_per_peer_minute {
            return Some(format!("over the budget of {} operations a minute", limits.ops_per_peer_minute));
        }
        if self.bytes > limits.bytes_per_peer_minute {
            return Some(format!("over the budget of {} MiB a minute", limits.bytes_per_peer_minute >> 20));
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
    /// A newer revocation list was installed.
    Revocations,
    /// A conversation with a peer began or ended (for the local API's event stream).
    Link { peer: String, up: bool },
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000))));
    t.stream_receive_window(quinn::VarInt::from_u32(1 << 20));
    t.receive_window(quinn::VarInt::from_u32(4 << 20));
    t.send_window(4 << 20);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(8));
    t.mtu_discovery_config(None);
    // Voice goes in datagrams: better lost than late. A small send buffer drops stale frames
    // (quinn drops the oldest) instead of queueing seconds of them behind a stall.
    t.datagram_send_buffer_size(2 * 1024);
    // Congestion control for radio links (congestion.rs) unless OUTPOST_CONGESTION says
    // otherwise.
    t.congestion_controller_factory(congestion::congestion().factory());
    Arc::new(t)
}

/// QUIC server configuration for this identity (and revocation list).
pub fn server_config(identity: &Identity, crl: Option<&[u8]>) -> Result<quinn::ServerConfig, NetError> {
    let tls = identity.server_config(crl)?;
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Invalid { what: "QUIC server configuration", detail: e.to_string() })?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// QUIC client configuration for this identity (and revocation list).
pub fn client_config(identity: &Identity, crl: Option<&[u8]>) -> Result<quinn::ClientConfig, NetError> {
    let tls = identity.client_config(crl)?;
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Invalid { what: "QUIC client configuration", detail: e.to_string() })?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// Loads the node's TLS identity, with a clear error if it has none.
pub fn load_identity(node: &Node) -> Result<Identity, NetError> {
    let (cert, key, ca) =
        node.store.tls_identity()?.ok_or_else(|| TlsError::NoCertificate(node.config.name.clone()))?;
    let id = Identity::from_pem(&cert, &key, &ca)?;
    if id.info.name != node.config.name {
        return Err(TlsError::Invalid {
            what: "node certificate",
            detail: format!("it names {}, but this node is {}", id.info.name, node.config.name),
        }
        .into());
    }
    Ok(id)
}

fn peer_identity(conn: &quinn::Connection) -> Result<(PeerInfo, Vec<u8>, CertificateDer<'static>), NetError> {
    let certs =
        conn.peer_identity().and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok()).ok_or_else(|| {
            NetError::Connection { peer: conn.remote_address().to_string(), detail: "no certificate".into() }
        })?;
    let first = certs.first().ok_or_else(|| NetError::Connection {
        peer: conn.remote_address().to_string(),
        detail: "no certificate".into(),
    })?;
    let serial =
        x509_parser::parse_x509_certificate(first.as_ref()).map(|(_, c)| c.raw_serial().to_vec()).unwrap_or_default();
    Ok((tls::peer_info(first)?, serial, first.clone()))
}

/// Whether the serial number appears in the revocation list.
fn is_revoked(crl: Option<&[u8]>, serial: &[u8]) -> bool {
    let Some(der) = crl else { return false };
    let Ok((_, list)) = x509_parser::parse_x509_crl(der) else { return false };
    list.iter_revoked_certificates().any(|r| r.raw_serial() == serial)
}

/// What a finished conversation cost.
#[derive(Debug, Clone, Serialize)]
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
    let identity = load_identity(&node)?;
    let crl = node.store.revocations()?.map(|(_, d)| d);
    let store = StoreHandle::spawn(node);
    let shared = Arc::new(Shared {
        store,
        me: identity.info.clone(),
        crl: std::sync::RwLock::new(crl.clone()),
        identity,
        changes: broadcast::channel(64).0,
        next_conn: std::sync::atomic::AtomicU64::new(1),
        endpoint: std::sync::OnceLock::new(),
        dial: std::sync::Mutex::new(None),
        chains_checked: Arc::default(),
        links: std::sync::Mutex::new(std::collections::HashMap::new()),
        relay: std::sync::Mutex::new(std::collections::HashMap::new()),
        voice_in: std::sync::Mutex::new(None),
        live_call: std::sync::Mutex::new(None),
        voice_io: std::sync::Mutex::new(None),
        call_people: std::sync::Mutex::new(std::collections::HashMap::new()),
        stopping: std::sync::atomic::AtomicBool::new(false),
        open: std::sync::Mutex::new(std::collections::HashMap::new()),
        api: api::Guards::default(),
        metrics: metrics::Metrics::new(),
        limits: crate::settings::Limits::default(),
    });
    let bind: SocketAddr = if peer.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|_| NetError::Bind { addr: peer, source: std::io::Error::other("bad bind address") })?;
    let endpoint = quinn::Endpoint::client(bind).map_err(|source| NetError::Bind { addr: bind, source })?;
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
        .map_err(|e| NetError::Connect { addr: peer, detail: e.to_string() })?;
    let conn = tokio::time::timeout(limit, connect_noting_silence(connecting, peer))
        .await
        .map_err(|_| NetError::Timeout(peer.to_string()))?
        .map_err(|e| NetError::Connect { addr: peer, detail: e.to_string() })?;
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
            .map_err(|e| NetError::Resolve { name: name.clone(), detail: e.to_string() })?
            .collect();
        found
            .iter()
            .find(|a| a.is_ipv4())
            .or(found.first())
            .copied()
            .ok_or_else(|| NetError::Resolve { name, detail: "the name has no address".into() })
    }
}

mod api;
pub mod congestion;
mod metrics;
pub use api::{ApiTls, openapi_json};

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

/// Says "link down" on the event channel when a conversation ends, however it ends.
struct LinkNotice {
    shared: Arc<Shared>,
    peer: String,
}

impl Drop for LinkNotice {
    fn drop(&mut self) {
        let _ = self.shared.changes.send(Notice::Link { peer: std::mem::take(&mut self.peer), up: false });
    }
}

/// Options of the daemon.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// Peers to dial and keep dialling (names resolved again at every dial).
    pub peers: Vec<PeerAddr>,
    /// On a desk: answer every call that rings here.
    pub auto_answer: bool,
    /// On a desk: what it plays into every call it takes (default: silence).
    pub play: Option<std::path::PathBuf>,
    /// On a desk: where it records every call it takes (overwritten by the next).
    pub record: Option<std::path::PathBuf>,
    /// Address to serve the local HTTP API on (the `api` module): loopback unless this node
    /// serves its LAN, which it does over TLS only.
    pub api: Option<SocketAddr>,
    /// The API's certificate and key: serve HTTPS (required beyond loopback).
    pub api_tls: Option<ApiTls>,
    /// Address to serve `/metrics`, `/healthz` and `/readyz` on (no token).
    pub metrics: Option<SocketAddr>,
    /// Bounds on connections and per-peer work.
    pub limits: crate::settings::Limits,
}

/// A running daemon (in this process).
#[derive(Debug)]
pub struct Daemon {
    /// The address it listens on, if any.
    pub local_addr: Option<SocketAddr>,
    /// The address its local API listens on, if any.
    pub api_addr: Option<SocketAddr>,
    /// The address its metrics listen on, if any.
    pub metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Starts serving and dialling. Returns once the socket is bound.
    pub async fn start(node: Node, opts: RunOptions) -> Result<Daemon, NetError> {
        let identity = load_identity(&node)?;
        let crl = node.store.revocations()?.map(|(_, d)| d);
        let store = StoreHandle::spawn(node);
        let shared = Arc::new(Shared {
            store,
            me: identity.info.clone(),
            crl: std::sync::RwLock::new(crl.clone()),
            identity,
            changes: broadcast::channel(1024).0,
            links: std::sync::Mutex::new(std::collections::HashMap::new()),
            relay: std::sync::Mutex::new(std::collections::HashMap::new()),
            voice_in: std::sync::Mutex::new(None),
            live_call: std::sync::Mutex::new(None),
            voice_io: std::sync::Mutex::new(None),
            call_people: std::sync::Mutex::new(std::collections::HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
            api: api::Guards::default(),
            next_conn: std::sync::atomic::AtomicU64::new(1),
            endpoint: std::sync::OnceLock::new(),
            dial: std::sync::Mutex::new(None),
            chains_checked: Arc::default(),
            metrics: metrics::Metrics::new(),
            limits: opts.limits,
        });
        let endpoint = match opts.listen {
            Some(addr) => {
                let cfg = server_config(&shared.identity, crl.as_deref())?;
                quinn::Endpoint::server(cfg, addr).map_err(|source| NetError::Bind { addr, source })?
            }
            None => {
                let addr: SocketAddr = ([0, 0, 0, 0], 0).into();
                quinn::Endpoint::client(addr).map_err(|source| NetError::Bind { addr, source })?
            }
        };
        let local_addr = if opts.listen.is_some() { endpoint.local_addr().ok() } else { None };
        let _ = shared.endpoint.set(endpoint.clone());
        let mut tasks = Vec::new();
        if opts.listen.is_some() {
            tasks.push(tokio::spawn(accept_loop(shared.clone(), endpoint.clone())));
        }
        for peer in opts.peers {
            tasks.push(tokio::spawn(dial_loop(shared.clone(), endpoint.clone(), peer)));
        }
        tasks.push(tokio::spawn(watch_local_writes(shared.clone())));
        if shared.me.role == Role::Hub {
            tasks.push(tokio::spawn(router_loop(shared.clone())));
        }
        if shared.me.role == Role::Desk && opts.auto_answer {
            tasks.push(tokio::spawn(answer_loop(shared.clone())));
        }
        if matches!(shared.me.role, Role::Edge | Role::Desk) {
            let default_plan = crate::media::MediaPlan { play: opts.play.clone(), record: opts.record.clone() };
            tasks.push(tokio::spawn(media_loop(shared.clone(), default_plan)));
        }
        let api_addr = match opts.api {
            Some(addr) => {
                let (bound, task) = api::serve(shared.clone(), addr, opts.api_tls.as_ref()).await?;
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };
        let metrics_addr = match opts.metrics {
            Some(addr) => {
                let (bound, task) = metrics::serve(shared.clone(), addr).await?;
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };
        let shown = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "none".into());
        tracing::info!(
            node = %shared.me.name,
            role = %shared.me.role,
            listen = %shown(local_addr),
            api = %shown(api_addr),
            metrics = %shown(metrics_addr),
            "outpost daemon started"
        );
        Ok(Daemon { local_addr, api_addr, metrics_addr, shared, tasks })
    }

    /// Runs `f` on this daemon's store thread.
    pub async fn with_node<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node) -> T + Send + 'static,
    ) -> Result<T, NetError> {
        self.shared.store.call(f).await
    }

    /// One conversation with `peer` to its end, from this daemon (its endpoint, its store with
    /// its documents decoded, its kept TLS sessions), as `outpost sync` has in a fresh process.
    pub async fn sync_with(&self, peer: SocketAddr, limit: Duration) -> Result<SyncReport, NetError> {
        let endpoint = self
            .shared
            .endpoint
            .get()
            .ok_or_else(|| NetError::Connect { addr: peer, detail: "the daemon has no endpoint".into() })?;
        let crl = self.shared.crl.read().map(|c| c.clone()).unwrap_or_default();
        let cfg = dial_config(&self.shared, crl)?;
        let stop = Arc::new(tokio::sync::Notify::new());
        dial_and_converse(self.shared.clone(), endpoint, cfg, peer, limit, stop).await
    }

    /// How many peers' certificate chains this daemon has checked when dialling: one per full
    /// handshake; a reconnect that resumes its TLS session adds none.
    pub fn chains_checked(&self) -> u64 {
        self.shared.chains_checked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tells connected peers that these documents changed (for writes made through [`Daemon::with_node`]).
    pub fn announce(&self, docs: Vec<DocId>) {
        let _ = self.shared.changes.send(Notice::Docs { from: 0, docs: Arc::new(docs) });
    }

    /// Stops every task and closes every connection.
    pub async fn stop(self) {
        self.shared.stopping.store(true, std::sync::atomic::Ordering::Release);
        if let Some(ep) = self.shared.endpoint.get() {
            ep.close(quinn::VarInt::from_u32(0), b"shutting down");
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Some(ep) = self.shared.endpoint.get() {
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        self.shared.store.stop().await;
    }
}

async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = converse(shared, conn, false, false, None).await {
                        tracing::info!(%addr, "conversation ended: {e}");
                    }
                }
                // Refused during the handshake: foreign CA, expired, revoked, no certificate.
                // Nothing was kept of it.
                Err(e) => tracing::warn!(%addr, "refused a connection: {e}"),
            }
        });
    }
}

/// The configuration to dial with: the kept one while the revocation list is the same.
fn dial_config(shared: &Shared, crl: Option<Vec<u8>>) -> Result<quinn::ClientConfig, NetError> {
    let mut kept = shared.dial.lock().map_err(|_| NetError::Connection {
        peer: String::new(),
        detail: "the dialling configuration's lock was poisoned".into(),
    })?;
    if let Some((for_crl, cfg)) = kept.as_ref()
        && *for_crl == crl
    {
        return Ok(cfg.clone());
    }
    let tls = shared.identity.client_config_counted(crl.as_deref(), shared.chains_checked.clone())?;
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Invalid { what: "QUIC client configuration", detail: e.to_string() })?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport());
    *kept = Some((crl, cfg.clone()));
    Ok(cfg)
}

async fn dial_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint, peer: PeerAddr) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let crl = shared.crl.read().map(|c| c.clone()).unwrap_or_default();
        let attempt = async {
            let peer = peer.resolve().await?;
            let cfg = dial_config(&shared, crl)?;
            let connecting = endpoint
                .connect_with(cfg, peer, SERVER_NAME)
                .map_err(|e| NetError::Connect { addr: peer, detail: e.to_string() })?;
            let conn = connect_noting_silence(connecting, peer)
                .await
                .map_err(|e| NetError::Connect { addr: peer, detail: e.to_string() })?;
            converse(shared.clone(), conn, true, false, None).await
        };
        match attempt.await {
            Ok(_) => backoff = Duration::from_millis(250),
            Err(e) => {
                tracing::info!(%peer, "link down: {e}; retrying in {:.1} s", backoff.as_secs_f64());
            }
        }
        // Jitter: 50% to 100% of the backoff, so that a mast's worth of edges do not return in step.
        let mut r = [0u8; 2];
        let _ = crate::crypto::random_bytes(&mut r);
        let frac = 0.5 + f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) / 2.0;
        tokio::time::sleep(backoff.mul_f64(frac)).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn watch_local_writes(shared: Arc<Shared>) {
    let start = shared
        .store
        .call(|n| -> Result<(i64, i64), StoreError> { Ok((n.store.data_version()?, n.store.changed_since(0)?.1)) })
        .await;
    let Ok(Ok((mut version, mut seq))) = start else { return };
    let mut crl_number =
        shared.store.call(|n| n.store.revocations().ok().flatten().map_or(0, |(n, _)| n)).await.unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let polled = shared
            .store
            .call(move |n| -> Result<Option<(i64, Vec<DocId>, i64)>, StoreError> {
                let v = n.store.data_version()?;
                if v == version {
                    return Ok(None);
                }
                let (docs, top) = n.store.changed_since(seq)?;
                Ok(Some((v, docs, top)))
            })
            .await;
        match polled {
            Ok(Ok(Some((v, docs, top)))) => {
                version = v;
                seq = top;
                if !docs.is_empty() {
                    let _ = shared.changes.send(Notice::Docs { from: 0, docs: Arc::new(docs) });
                }
                // A revocation list installed by another process (`outpost ca publish`).
                let n = shared
                    .store
                    .call(|n| n.store.revocations().ok().flatten().map_or(0, |(n, _)| n))
                    .await
                    .unwrap_or(0);
                if n > crl_number {
                    crl_number = n;
                    install_revocations(&shared).await;
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!("cannot poll for local writes: {e}"),
            Err(_) => return,
        }
    }
}

/// The environment variable naming a file where every byte received from peers is appended,
/// as decoded from QUIC (diagnostics, and the scope tests' evidence).
pub const FRAME_LOG_ENV: &str = "OUTPOST_FRAME_LOG";

/// Bytes of received frames one connection may have waiting for the store (both lanes): what a
/// peer can make this node hold in memory beyond the frame being read.
const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// A received frame with its share of the connection's queue.
type Queued = (Frame, tokio::sync::OwnedSemaphorePermit);

/// Reads one lane's frames and forwards them; a frame that cannot be decoded is reported on
/// `bad` (the conversation then closes with the reason).
async fn read_lane(
    recv: quinn::RecvStream,
    out: mpsc::Sender<Queued>,
    queue: Arc<tokio::sync::Semaphore>,
    bad: mpsc::Sender<String>,
) {
    if let Err(e) = read_frames(recv, out, queue).await {
        let _ = bad.send(e).await;
    }
}

async fn read_frames(
    mut recv: quinn::RecvStream,
    out: mpsc::Sender<Queued>,
    queue: Arc<tokio::sync::Semaphore>,
) -> Result<(), String> {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut log = std::env::var_os(FRAME_LOG_ENV)
        .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                if let Some(f) = log.as_mut() {
                    use std::io::Write as _;
                    let _ = f.write_all(&buf[..n]);
                }
                decoder.feed(&buf[..n]);
                loop {
                    let before = decoder.buffered();
                    match decoder.next_frame() {
                        Ok(Some(f)) => {
                            // Wait for room in the queue: a peer that sends faster than the store
                            // takes its frames is slowed down, not buffered without bound.
                            let size = (before - decoder.buffered()).clamp(1, MAX_QUEUED_BYTES) as u32;
                            let Ok(permit) = queue.clone().acquire_many_owned(size).await else { return Ok(()) };
                            if out.send((f, permit)).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return Err(format!("an undecodable frame: {e}")),
                    }
                }
            }
            Ok(None) | Err(_) => return Ok(()),
        }
    }
}

/// Writes one lane's frames.
async fn write_lane(mut send: quinn::SendStream, mut frames: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(bytes) = frames.recv().await {
        if send.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
    // Until the peer has read everything (its last frame may be the Close that says why): the
    // connection is closed after this, which would drop data still in flight. The caller bounds
    // the wait.
    let _ = send.stopped().await;
}

/// Runs the sync engine over one connection.
async fn converse(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    initiator: bool,
    one_shot: bool,
    deadline: Option<(tokio::time::Instant, Arc<tokio::sync::Notify>)>,
) -> Result<SyncReport, NetError> {
    let addr = conn.remote_address().to_string();
    let conn_err = |detail: String| NetError::Connection { peer: addr.clone(), detail };
    let (peer, serial, peer_cert) = peer_identity(&conn)?;
    // A resumed TLS session skips the certificate checks of a full handshake: revocation and
    // expiry are checked again here, for every conversation.
    let crl = shared.crl.read().map(|c| c.clone()).unwrap_or_default();
    if is_revoked(crl.as_deref(), &serial) {
        shared.metrics.refused("revoked");
        conn.close(quinn::VarInt::from_u32(3), b"revoked");
        return Err(conn_err(format!("{} has been revoked", peer.name)));
    }
    let expired = x509_parser::parse_x509_certificate(peer_cert.as_ref())
        .map(|(_, c)| c.validity().not_after.timestamp().saturating_mul(1000) < now_ms())
        .unwrap_or(true);
    if expired {
        shared.metrics.refused("expired");
        conn.close(quinn::VarInt::from_u32(3), b"certificate expired");
        return Err(conn_err(format!("{}'s certificate has expired", peer.name)));
    }
    if peer.name == shared.me.name {
        shared.metrics.refused("self");
        conn.close(quinn::VarInt::from_u32(2), b"a node cannot sync with itself");
        return Err(conn_err("the peer presented this node's own identity".into()));
    }
    let _slot = match Slot::take(&shared, &peer.name) {
        Ok(slot) => slot,
        Err(why) => {
            shared.metrics.refused("connection_limit");
            tracing::warn!(peer = %peer.name, %addr, "refused a connection: {why}");
            conn.close(quinn::VarInt::from_u32(CloseCode::Unavailable as u32), why.as_bytes());
            return Err(conn_err(why));
        }
    };
    let id = shared.next_conn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = shared.changes.send(Notice::Link { peer: peer.name.clone(), up: true });
    let _link = LinkNotice { shared: shared.clone(), peer: peer.name.clone() };
    let base_stats = conn.stats();
    let started = Instant::now();

    // Two lanes, opened by the dialer; the first byte of each says which it is.
    let ((sync_send, sync_recv), (blob_send, blob_recv)) = if initiator {
        let (mut s1, r1) = conn.open_bi().await.map_err(|e| conn_err(refusal(&conn, e.to_string())))?;
        let (mut s2, r2) = conn.open_bi().await.map_err(|e| conn_err(refusal(&conn, e.to_string())))?;
        s1.write_all(&[LANE_SYNC]).await.map_err(|e| conn_err(refusal(&conn, e.to_string())))?;
        s2.write_all(&[LANE_BLOB]).await.map_err(|e| conn_err(refusal(&conn, e.to_string())))?;
        ((s1, r1), (s2, r2))
    } else {
        let mut lanes: [Option<(quinn::SendStream, quinn::RecvStream)>; 2] = [None, None];
        for _ in 0..2 {
            let (s, mut r) = conn.accept_bi().await.map_err(|e| conn_err(e.to_string()))?;
            let mut tag = [0u8; 1];
            r.read_exact(&mut tag).await.map_err(|e| conn_err(e.to_string()))?;
            match tag[0] {
                LANE_SYNC => lanes[0] = Some((s, r)),
                LANE_BLOB => lanes[1] = Some((s, r)),
                other => return Err(conn_err(format!("unknown lane {other}"))),
            }
        }
        let [Some(a), Some(b)] = lanes else { return Err(conn_err("a lane is missing".into())) };
        (a, b)
    };
    let _ = sync_send.set_priority(1);
    let _ = blob_send.set_priority(0);

    // The peer's certificate came through the TLS handshake: it is a fleet member whose
    // signatures this node can check from now on.
    if let Ok(member) = tls::member_of(&peer_cert) {
        let der = peer_cert.as_ref().to_vec();
        let added = shared.store.call(move |node| node.store.add_member(member, &der)).await?;
        if let Err(e) = added {
            tracing::warn!(peer = %peer.name, "cannot record the peer's certificate: {e}");
        }
    } else {
        tracing::warn!(peer = %peer.name, "the peer's certificate names no author key: its changes will be refused");
    }
    let (frames_tx, mut frames_rx) = mpsc::channel::<Queued>(256);
    let (bad_tx, mut bad_rx) = mpsc::channel::<String>(2);
    let queue = Arc::new(tokio::sync::Semaphore::new(MAX_QUEUED_BYTES));
    let readers = [
        tokio::spawn(read_lane(sync_recv, frames_tx.clone(), queue.clone(), bad_tx.clone())),
        tokio::spawn(read_lane(blob_recv, frames_tx, queue, bad_tx)),
    ];
    // The queue's share of the frames being processed, given back once the step is done.
    let mut in_step: Vec<tokio::sync::OwnedSemaphorePermit> = Vec::new();
    let (sync_out, sync_out_rx) = mpsc::unbounded_channel();
    let (blob_out, blob_out_rx) = mpsc::unbounded_channel();
    let writers = [tokio::spawn(write_lane(sync_send, sync_out_rx)), tokio::spawn(write_lane(blob_send, blob_out_rx))];

    let mut changes = shared.changes.subscribe();
    let me = shared.me.clone();
    let ca = shared.identity.ca.clone();
    let peer_for_engine = peer.clone();
    let engine = Engine::new(peer_for_engine, EngineConfig::new(initiator));
    // The photo chunk window follows the link (sync_protocol::blob::ChunkWindow: its rate
    // times four round trips), updated before every step.
    let mut chunk_window = sync_protocol::blob::ChunkWindow::new();
    let opened = Instant::now();
    let mut step = |mut engine: Engine, work: Work| {
        let me = me.clone();
        let ca = ca.clone();
        let window = chunk_window.update(
            opened.elapsed().as_millis() as u64,
            conn.stats().udp_rx.bytes,
            conn.rtt().as_secs_f64() * 1e3,
        );
        engine.set_blob_window(window);
        shared.store.call(move |node| {
            let ops_before = node.store.ops_admitted();
            let bytes_before = engine.stats().bytes_received;
            let mut replica = NodeReplica::new(&mut node.store, &me, Some(&ca));
            let now = now_ms();
            let result = match work {
                Work::Start => engine.start(&mut replica, now),
                Work::Frames(frames) => engine.handle(&mut replica, frames, now),
                Work::Notify(docs) => engine.notify(&mut replica, &docs, now),
            };
            let mut out = Vec::new();
            while let Some(f) = engine.poll_frame() {
                out.push(f);
            }
            let log = engine.take_log();
            let (changed, crl_updated) = (replica.changed, replica.revocations_updated);
            let cost = (node.store.ops_admitted() - ops_before, engine.stats().bytes_received - bytes_before);
            (engine, result.map_err(|e| e.to_string()), out, changed, crl_updated, log, cost)
        })
    };
    tracing::info!(peer = %peer.name, role = %peer.role, %addr, "connected");
    let echoes: EchoSlot = Arc::new(std::sync::Mutex::new(None));
    if let Ok(mut links) = shared.links.lock() {
        links.insert(peer.name.clone(), PeerLink { id, role: peer.role, conn: conn.clone(), echoes: echoes.clone() });
    }
    let _registered = Registered {
        shared: shared.clone(),
        name: peer.name.clone(),
        id,
        task: tokio::spawn(datagram_loop(conn.clone(), echoes, shared.clone(), peer.name.clone())),
    };

    let mut engine = Some(engine);
    let mut budget = Budget::new();
    let mut work = Some(Work::Start);
    let mut failure: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    // When this conversation last became quiescent (everything either side may send, sent
    // and acknowledged), recorded for `status`: on each arrival at quiescence, at most every
    // 10 s while it stays there.
    let mut was_quiescent = false;
    let mut recorded: Option<Instant> = None;
    // Since when this conversation has had work outstanding (for the sync-round metric).
    let mut busy_since = Instant::now();
    let _wire = WireAccount { shared: shared.clone(), conn: conn.clone() };
    loop {
        if let Some(w) = work.take() {
            let Some(e) = engine.take() else { break };
            let (e, result, out, changed, crl_updated, log, (ops, bytes)) = step(e, w).await?;
            in_step.clear();
            if let Some(why) = budget.spend(ops, bytes, &shared.limits) {
                shared.metrics.refused("budget");
                tracing::warn!(peer = %peer.name, %addr, "closing: {why}");
                let close = Frame::Close { code: CloseCode::Unavailable as u16, reason: why.clone() };
                let _ = sync_out.send(close.to_bytes());
                engine = Some(e);
                failure = Some(why);
                break;
            }
            for line in log {
                tracing::info!(peer = %peer.name, "{line}");
            }
            for (lane, f) in out {
                let bytes = f.to_bytes();
                let _ = if lane == Lane::Sync { sync_out.send(bytes) } else { blob_out.send(bytes) };
            }
            if !changed.is_empty() {
                let _ = shared.changes.send(Notice::Docs { from: id, docs: Arc::new(changed) });
            }
            if crl_updated {
                install_revocations(&shared).await;
            }
            let quiescent = e.is_quiescent();
            if quiescent && !was_quiescent {
                shared.metrics.sync_round(&peer.name, busy_since.elapsed().as_secs_f64());
            } else if !quiescent && was_quiescent {
                busy_since = Instant::now();
            }
            if quiescent && (!was_quiescent || recorded.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))) {
                let name = peer.name.clone();
                let _ = shared.store.call(move |n| n.store.record_sync(&name, Ok(()), now_ms())).await;
                recorded = Some(Instant::now());
            }
            was_quiescent = quiescent;
            let done = one_shot && e.is_done();
            let closed = e.is_closed();
            tracing::debug!(peer = %peer.name, done, closed, quiescent = e.is_quiescent(), stats = ?e.stats(), "step");
            engine = Some(e);
            if let Err(msg) = result {
                shared.metrics.refused("sync_error");
                // Tell the peer why, so that it does not wait (and shows nothing as delivered).
                let close = Frame::Close { code: CloseCode::Unavailable as u16, reason: msg.clone() };
                let _ = sync_out.send(close.to_bytes());
                failure = Some(msg);
                break;
            }
            if done || closed {
                break;
            }
        }
        tokio::select! {
            Some(detail) = bad_rx.recv() => {
                shared.metrics.refused("protocol");
                tracing::warn!(peer = %peer.name, %addr, "closing: {detail}");
                let close = Frame::Close { code: CloseCode::ProtocolError as u16, reason: detail.clone() };
                let _ = sync_out.send(close.to_bytes());
                failure = Some(detail);
                break;
            }
            frame = frames_rx.recv() => match frame {
                Some((f, permit)) => {
                    let mut batch = vec![f];
                    in_step.push(permit);
                    while batch.len() < MAX_FRAMES_PER_STEP
                        && let Ok((more, permit)) = frames_rx.try_recv()
                    {
                        batch.push(more);
                        in_step.push(permit);
                    }
                    work = Some(Work::Frames(batch));
                }
                None => {
                    if one_shot && !engine.as_ref().is_some_and(Engine::is_done) {
                        // The readers end when the connection does: say why, if the peer said.
                        let why = match conn.close_reason() {
                            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                                format!(": {}", String::from_utf8_lossy(&c.reason))
                            }
                            Some(other) => format!(": {other}"),
                            None => String::new(),
                        };
                        failure = Some(format!("the peer ended the conversation before the sync completed{why}"));
                    }
                    break;
                }
            },
            notice = changes.recv() => match notice {
                Ok(Notice::Docs { from, docs }) if from != id => work = Some(Work::Notify(docs.to_vec())),
                Ok(Notice::Revocations) => {
                    let crl = shared.crl.read().map(|c| c.clone()).unwrap_or_default();
                    if is_revoked(crl.as_deref(), &serial) {
                        failure = Some(format!("{} has been revoked", peer.name));
                        conn.close(quinn::VarInt::from_u32(3), b"revoked");
                        break;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too many notices missed: ask the engine to look at everything it was told of.
                    work = Some(Work::Notify(Vec::new()));
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => work = Some(Work::Notify(Vec::new())),
            _ = async {
                match &deadline {
                    Some((d, stop)) => tokio::select! {
                        _ = tokio::time::sleep_until(*d) => {}
                        _ = stop.notified() => {}
                    },
                    None => std::future::pending::<()>().await,
                }
            } => {
                failure = Some("stopped before it finished (time limit)".into());
                conn.close(quinn::VarInt::from_u32(5), b"time limit");
                break;
            }
            reason = conn.closed() => {
                let normal = matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(0));
                let finished = engine.as_ref().is_some_and(Engine::is_done);
                // A one-shot sync succeeds only once it is done, however politely the peer left.
                if one_shot && !finished {
                    failure = Some(format!("the peer closed the connection before the sync completed: {reason}"));
                } else if !normal && !finished {
                    failure = Some(reason.to_string());
                }
                break;
            }
        }
    }

    // A one-shot initiator says goodbye once both sides are done.
    if let Some(e) = engine.as_mut()
        && one_shot
        && e.is_done()
    {
        e.close();
        while let Some((_, f)) = e.poll_frame() {
            let _ = sync_out.send(f.to_bytes());
        }
    }
    drop(sync_out);
    drop(blob_out);
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(2), w).await;
    }
    if one_shot {
        conn.close(quinn::VarInt::from_u32(0), b"done");
    }
    for r in readers {
        r.abort();
    }
    let end_stats = conn.stats();
    let stats = engine.map(|e| e.stats().clone()).unwrap_or_default();
    if let Some(f) = failure {
        // Close with the reason, so the peer does not take our going for a normal end.
        let reason: Vec<u8> = f.bytes().take(200).collect();
        conn.close(quinn::VarInt::from_u32(CloseCode::Unavailable as u32), &reason);
        tracing::info!(peer = %peer.name, "conversation ended: {f}");
        let (name, why) = (peer.name.clone(), f.clone());
        let _ = shared.store.call(move |n| n.store.record_sync(&name, Err(&why), now_ms())).await;
        return Err(NetError::Sync { peer: peer.name.clone(), detail: f, partial: Some(Box::new(stats)) });
    }
    Ok(SyncReport {
        peer: peer.name.clone(),
        peer_role: peer.role.to_string(),
        stats,
        udp_bytes_sent: end_stats.udp_tx.bytes - base_stats.udp_tx.bytes,
        udp_bytes_received: end_stats.udp_rx.bytes - base_stats.udp_rx.bytes,
        handshake_ms: 0.0,
        sync_ms: started.elapsed().as_secs_f64() * 1e3,
        rtt_ms: conn.rtt().as_secs_f64() * 1e3,
    })
}

/// Adds a connection's bytes on the wire to the metrics' closed total when its conversation ends.
struct WireAccount {
    shared: Arc<Shared>,
    conn: quinn::Connection,
}

impl Drop for WireAccount {
    fn drop(&mut self) {
        self.shared.metrics.connection_closed(&self.conn.stats());
    }
}

enum Work {
    Start,
    Frames(Vec<Frame>),
    Notify(Vec<DocId>),
}

/// The reason a peer refused us, when the first stream operation fails.
fn refusal(conn: &quinn::Connection, fallback: String) -> String {
    match conn.close_reason() {
        Some(r) => format!("refused by the peer: {r}"),
        None => fallback,
    }
}

/// After a newer revocation list arrived: new handshakes use it, and connections with
/// revoked peers are closed.
async fn install_revocations(shared: &Arc<Shared>) {
    let Ok(Ok(Some((number, der)))) = shared.store.call(|n| n.store.revocations()).await else { return };
    if let Ok(mut c) = shared.crl.write() {
        *c = Some(der.clone());
    }
    if let Some(ep) = shared.endpoint.get()
        && let Ok(cfg) = server_config(&shared.identity, Some(&der))
    {
        ep.set_server_config(Some(cfg));
    }
    tracing::info!("revocation list {number} installed");
    let _ = shared.changes.send(Notice::Revocations);
}

/// Datagram types: a path probe, and its echo.
const DG_PROBE: u8 = 1;
const DG_ECHO: u8 = 2;
/// A probe is the size of a 20 ms voice frame at 32 kbit/s (80 bytes) with its header.
const PROBE_BYTES: usize = 88;
/// Probes per measurement, 20 ms apart: one second of voice-like traffic.
const PROBES: usize = 50;

/// Answers path probes, hands echoes to a running measurement, relays voice (on a hub) or
/// hands it to the call in progress (on a party).
async fn datagram_loop(conn: quinn::Connection, echoes: EchoSlot, shared: Arc<Shared>, peer: String) {
    while let Ok(d) = conn.read_datagram().await {
        match d.first() {
            Some(&(DG_VOICE | DG_BYE)) if d.len() >= 5 => {
                let tag = u32::from_le_bytes([d[1], d[2], d[3], d[4]]);
                if shared.me.role == Role::Hub {
                    let other = shared
                        .relay
                        .lock()
                        .ok()
                        .and_then(|r| r.get(&tag).map(|(a, b)| if *a == peer { b.clone() } else { a.clone() }));
                    let link = other.and_then(|o| shared.links.lock().ok().and_then(|l| l.get(&o).cloned()));
                    if let Some(link) = link {
                        let _ = link.conn.send_datagram(d);
                    }
                    continue;
                }
                let msg = if d[0] == DG_BYE {
                    Some(VoiceIn::Bye)
                } else {
                    VoiceFrame::parse(&d).map(|f| VoiceIn::Frame(f, Instant::now()))
                };
                if let (Some(msg), Ok(slot)) = (msg, shared.voice_in.lock())
                    && let Some((t, tx)) = slot.as_ref()
                    && *t == tag
                {
                    let _ = tx.send(msg);
                }
            }
            Some(&DG_PROBE) => {
                let mut echo = d.to_vec();
                echo[0] = DG_ECHO;
                let _ = conn.send_datagram(echo.into());
            }
            Some(&DG_ECHO) if d.len() >= 5 => {
                let seq = u32::from_le_bytes([d[1], d[2], d[3], d[4]]);
                if let Ok(slot) = echoes.lock()
                    && let Some(tx) = slot.as_ref()
                {
                    let _ = tx.send((seq, Instant::now()));
                }
            }
            _ => {}
        }
    }
}

/// Measures the path to a connected peer with voice-like probes: round trips, jitter, loss.
/// A peer not connected now yields a measurement with no probes (no call is possible).
async fn measure_path(shared: &Shared, peer: &str) -> PathQuality {
    let link = shared.links.lock().ok().and_then(|l| l.get(peer).cloned());
    let Some(link) = link else {
        return PathQuality { rtt_ms: f64::INFINITY, jitter_ms: 0.0, loss: 1.0, burst_ratio: 1.0, probes: 0 };
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Ok(mut slot) = link.echoes.lock() {
        *slot = Some(tx);
    }
    let mut sent: Vec<Option<Instant>> = vec![None; PROBES];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for (seq, at) in sent.iter_mut().enumerate() {
        tick.tick().await;
        let mut probe = vec![0u8; PROBE_BYTES];
        probe[0] = DG_PROBE;
        probe[1..5].copy_from_slice(&(seq as u32).to_le_bytes());
        *at = Some(Instant::now());
        if link.conn.send_datagram(probe.into()).is_err() {
            *at = None;
        }
    }
    let mut rtts: Vec<Option<f64>> = vec![None; PROBES];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        tokio::select! {
            echo = rx.recv() => match echo {
                Some((seq, at)) => {
                    if let Some(Some(t)) = sent.get(seq as usize) {
                        rtts[seq as usize] = Some(at.duration_since(*t).as_secs_f64() * 1e3);
                    }
                    if rtts.iter().all(Option::is_some) {
                        break;
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if let Ok(mut slot) = link.echoes.lock() {
        *slot = None;
    }
    let lost: Vec<usize> = rtts.iter().enumerate().filter(|(_, r)| r.is_none()).map(|(i, _)| i).collect();
    tracing::debug!(peer, ?lost, unsent = sent.iter().filter(|s| s.is_none()).count(), "path probes");
    quality_from_probes(&rtts)
}

fn announce(shared: &Shared, docs: Vec<DocId>) {
    let _ = shared.changes.send(Notice::Docs { from: 0, docs: Arc::new(docs) });
}

/// The hub's call router: follows every open escalation, measures the requester's path,
/// rings the rota's desks once they hold the whole case, and records each step.
async fn router_loop(shared: Arc<Shared>) {
    let mut changes = shared.changes.subscribe();
    // Open escalations: session -> when this hub first saw it (its clock).
    let mut open: std::collections::BTreeMap<SessionId, i64> = std::collections::BTreeMap::new();
    let mut measured: std::collections::HashMap<SessionId, PathQuality> = std::collections::HashMap::new();
    let filter = ListFilter { status: Some(Status::Routing), ..ListFilter::default() };
    let start = shared
        .store
        .call(move |n| -> Result<Vec<SessionId>, crate::node::NodeError> {
            let ids: Vec<SessionId> = n.store.list(&filter)?.into_iter().map(|c| c.id).collect();
            n.open_escalations(&ids)
        })
        .await;
    if let Ok(Ok(ids)) = start {
        for id in ids {
            open.insert(id, now_ms());
        }
    }
    // Calls connected here whose outcomes are due: session -> when.
    let mut outcomes_due: std::collections::BTreeMap<SessionId, Instant> = std::collections::BTreeMap::new();
    let wait = outcome_wait();
    let connected = ListFilter { status: Some(Status::Connected), ..ListFilter::default() };
    if let Ok(Ok(ids)) = shared
        .store
        .call(move |n| n.store.list(&connected).map(|c| c.into_iter().map(|c| c.id).collect::<Vec<_>>()))
        .await
    {
        for id in ids {
            outcomes_due.insert(id, Instant::now() + wait);
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_rescan = Instant::now();
    loop {
        let due: Vec<SessionId> = outcomes_due.iter().filter(|(_, t)| **t <= Instant::now()).map(|(k, _)| *k).collect();
        for sid in due {
            outcomes_due.remove(&sid);
            match shared.store.call(move |n| n.flag_unreported(sid, now_ms())).await {
                Ok(Ok(sides)) if !sides.is_empty() => {
                    let sides: Vec<&str> = sides.iter().map(|s| s.as_str()).collect();
                    tracing::info!(session = %sid, sides = %sides.join(", "), "no outcome recorded after the call: flagged not reported");
                    announce(&shared, vec![sid.to_bytes()]);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(session = %sid, "cannot flag unreported outcomes: {e}"),
                Err(_) => return,
            }
        }
        tokio::select! {
            notice = changes.recv() => match notice {
                Ok(Notice::Docs { docs, .. }) => {
                    let ids: Vec<SessionId> = docs
                        .iter()
                        .filter(|d| !is_directory_id(d))
                        .map(|d| SessionId::from_bytes(*d))
                        .filter(|id| !open.contains_key(id))
                        .collect();
                    if !ids.is_empty()
                        && let Ok(Ok(found)) = shared.store.call(move |n| n.open_escalations(&ids)).await
                    {
                        for id in found {
                            open.entry(id).or_insert_with(now_ms);
                        }
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                // Now and then, every escalation in progress, in case a notice was missed.
                if last_rescan.elapsed() >= RESCAN {
                    last_rescan = Instant::now();
                    let filter = ListFilter { status: Some(Status::Routing), ..ListFilter::default() };
                    let found = shared
                        .store
                        .call(move |n| -> Result<Vec<SessionId>, crate::node::NodeError> {
                            let ids: Vec<SessionId> = n.store.list(&filter)?.into_iter().map(|c| c.id).collect();
                            n.open_escalations(&ids)
                        })
                        .await;
                    if let Ok(Ok(found)) = found {
                        for id in found {
                            open.entry(id).or_insert_with(now_ms);
                        }
                    }
                }
            }
        }
        let pending: Vec<(SessionId, i64)> = open.iter().map(|(k, v)| (*k, *v)).collect();
        for (sid, seen) in pending {
            let q = measured.get(&sid).copied();
            let step = shared.store.call(move |n| n.route_call(sid, q.as_ref(), seen, now_ms())).await;
            match step {
                Ok(Ok(Some(routed))) => match &routed.action {
                    Action::Wait => {
                        if routed.wrote {
                            announce(&shared, vec![sid.to_bytes()]);
                        }
                    }
                    Action::Measure => {
                        let mut q = measure_path(&shared, &routed.requester).await;
                        // A burst of loss is not a bad link: before refusing, measure once more
                        // and judge by the better second of listening.
                        if q.probes > 0 && sync_protocol::call::gate(&q, &ADPCM_32K).is_err() {
                            let again = measure_path(&shared, &routed.requester).await;
                            if rate(&again, &ADPCM_32K).mos > rate(&q, &ADPCM_32K).mos {
                                q = again;
                            }
                        }
                        tracing::info!(session = %sid, requester = %routed.requester, rtt_ms = q.rtt_ms, jitter_ms = q.jitter_ms, loss = q.loss, "measured the requester's path");
                        measured.insert(sid, q);
                    }
                    Action::Connected { desk, .. } => {
                        // From now on the hub relays the call's voice between the two.
                        if let Ok(mut relay) = shared.relay.lock() {
                            relay.insert(call_tag(&routed.call), (routed.requester.clone(), desk.clone()));
                        }
                        tracing::info!(session = %sid, call = %routed.call, %desk, "call connected; relaying its voice");
                        outcomes_due.insert(sid, Instant::now() + wait);
                        open.remove(&sid);
                        measured.remove(&sid);
                        announce(&shared, vec![sid.to_bytes()]);
                    }
                    Action::Callback { .. } => {
                        tracing::info!(session = %sid, call = %routed.call, "call routed: {}", routed.action);
                        open.remove(&sid);
                        measured.remove(&sid);
                        announce(&shared, vec![sid.to_bytes()]);
                    }
                    other => {
                        tracing::info!(session = %sid, call = %routed.call, "call routing: {other}");
                        announce(&shared, vec![sid.to_bytes()]);
                    }
                },
                Ok(Ok(None)) => {
                    open.remove(&sid);
                    measured.remove(&sid);
                    // A call this hub handed to another ICB's hub, now connected there: relay
                    // the requester's voice to that hub, which relays it to its desk.
                    if let Ok(Ok(Some((call, requester, hub)))) =
                        shared.store.call(move |n| n.federated_connection(sid)).await
                    {
                        if let Ok(mut relay) = shared.relay.lock() {
                            relay.insert(call_tag(&call), (requester, hub.clone()));
                        }
                        tracing::info!(session = %sid, %call, %hub, "call connected out of area; relaying its voice");
                        outcomes_due.insert(sid, Instant::now() + wait);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(session = %sid, "cannot route the call: {e}");
                    open.remove(&sid);
                }
                Err(_) => return,
            }
        }
    }
}

/// How long after a call connects the hub waits for both outcomes before flagging a missing
/// one `not_reported` (`OUTPOST_OUTCOME_WAIT_S`, default a day).
fn outcome_wait() -> Duration {
    let secs = std::env::var(OUTCOME_WAIT_ENV).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(24 * 3600);
    Duration::from_secs(secs)
}

/// The environment variable setting how long the hub waits for outcomes after a call.
pub const OUTCOME_WAIT_ENV: &str = "OUTPOST_OUTCOME_WAIT_S";

/// How often the call loops look at every session in the status they follow, in case a
/// notice of a change was missed.
const RESCAN: Duration = Duration::from_secs(2);

/// The sessions to look at next: those a change notice names; or, at each `tick` and after
/// missed notices, every session in `status`. `None` once the daemon is stopping.
async fn next_candidates(
    shared: &Shared,
    changes: &mut broadcast::Receiver<Notice>,
    tick: &mut tokio::time::Interval,
    status: Status,
) -> Option<Vec<SessionId>> {
    tokio::select! {
        n = changes.recv() => match n {
            Ok(Notice::Docs { docs, .. }) => {
                return Some(docs.iter().filter(|d| !is_directory_id(d)).map(|d| SessionId::from_bytes(*d)).collect());
            }
            Ok(_) => return Some(Vec::new()),
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return None,
        },
        _ = tick.tick() => {}
    }
    let filter = ListFilter { status: Some(status), ..ListFilter::default() };
    match shared
        .store
        .call(move |n| n.store.list(&filter).map(|c| c.into_iter().map(|c| c.id).collect::<Vec<_>>()))
        .await
    {
        Ok(Ok(ids)) => Some(ids),
        Ok(Err(e)) => {
            tracing::warn!("cannot list sessions: {e}");
            Some(Vec::new())
        }
        Err(_) => None,
    }
}

/// A desk's automatic answer: every call that rings here is answered.
async fn answer_loop(shared: Arc<Shared>) {
    let mut changes = shared.changes.subscribe();
    let mut tick = tokio::time::interval(RESCAN);
    loop {
        let Some(ids) = next_candidates(&shared, &mut changes, &mut tick, Status::Routing).await else { return };
        for sid in ids {
            match shared.store.call(move |n| n.answer_call(sid, now_ms())).await {
                Ok(Ok(Some((call, attempt)))) => {
                    tracing::info!(session = %sid, %call, attempt, "answered the call");
                    announce(&shared, vec![sid.to_bytes()]);
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(session = %sid, "not answering: {e}"),
                Err(_) => return,
            }
        }
    }
}

/// A party's side of call audio: joins every connected call this node is part of (once), with
/// the media plan of the call (the requester's, from `call escalate --play/--record`) or the
/// desk's own, and runs it to its end.
async fn media_loop(shared: Arc<Shared>, default_plan: crate::media::MediaPlan) {
    let mut changes = shared.changes.subscribe();
    let mut joined: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(RESCAN);
    loop {
        let Some(ids) = next_candidates(&shared, &mut changes, &mut tick, Status::Connected).await else { return };
        if ids.is_empty() {
            continue;
        }
        let plan = default_plan.clone();
        let Ok(Ok(found)) = shared.store.call(move |n| n.calls_to_join(&ids, &plan)).await else { continue };
        for (sid, call, side, plan) in found {
            if !joined.insert(call.clone()) {
                continue;
            }
            tracing::info!(session = %sid, %call, side = side.as_str(), "joining the call's audio");
            if let Err(e) = run_call_audio(&shared, sid, &call, side, &plan).await {
                tracing::warn!(session = %sid, %call, "call audio failed: {e}");
            }
        }
    }
}

/// The longest silence from the other side before a leg counts as dropped: a blackout of up
/// to 10 s (a tunnel, a cutting) is survived.
const DROP_AFTER: Duration = Duration::from_secs(12);
/// Playout delay of the jitter buffer.
const JITTER_DELAY_MS: u32 = 60;

/// Sends this party's audio every 20 ms, plays what arrives through the jitter buffer, and
/// writes the leg's record (figures and estimated MOS) into the session when the call ends.
async fn run_call_audio(
    shared: &Arc<Shared>,
    sid: SessionId,
    call: &str,
    side: sync_protocol::vocab::Side,
    plan: &crate::media::MediaPlan,
) -> Result<(), String> {
    let tag = call_tag(call);
    let play = match &plan.play {
        Some(p) => Some(crate::media::read_wav(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let requester = side == sync_protocol::vocab::Side::Requester;
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Ok(mut slot) = shared.voice_in.lock() {
        *slot = Some((tag, tx));
    }
    let hang_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Ok(mut live) = shared.live_call.lock() {
        *live = Some(LiveCall { session: sid, call: call.to_string(), hang_up: hang_up.clone() });
    }
    let hub_conn =
        || shared.links.lock().ok().and_then(|l| l.values().find(|p| p.role == Role::Hub).map(|p| p.conn.clone()));
    let started_ms = now_ms();
    let started = Instant::now();
    let mut enc = AdpcmState::default();
    let mut jb = JitterBuffer::new(JITTER_DELAY_MS);
    let mut recorded: Vec<i16> = Vec::new();
    let mut last_heard = Instant::now();
    let mut checked = Instant::now();
    let mut sent = 0u64;
    let mut rtt_samples: Vec<f64> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(FRAME_MS)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq: u32 = 0;
    let end = loop {
        tick.tick().await;
        // Send: the requester's file ends the call; a desk sends until the other side hangs up.
        let from = seq as usize * FRAME_SAMPLES;
        if hang_up.load(std::sync::atomic::Ordering::Acquire) {
            break "hangup";
        }
        // A person's page, when one is open, is the microphone and the speaker.
        let page = shared.voice_io.lock().ok().and_then(|v| v.clone());
        let pcm: Vec<i16> = match (&page, &play) {
            (Some(io), _) => io.next_mic_frame().unwrap_or_else(|| vec![0; FRAME_SAMPLES]),
            (None, Some(p)) if from < p.len() => p[from..(from + FRAME_SAMPLES).min(p.len())].to_vec(),
            (None, Some(_)) if requester => break "hangup",
            _ => vec![0; FRAME_SAMPLES],
        };
        let frame = VoiceFrame {
            call: tag,
            seq,
            ts_ms: seq.wrapping_mul(FRAME_MS),
            codec: CODEC_ADPCM,
            payload: encode(&mut enc, &pcm),
        };
        if let Some(conn) = hub_conn() {
            if conn.send_datagram(frame.to_bytes().into()).is_ok() {
                sent += 1;
            }
            if seq.is_multiple_of(50) {
                rtt_samples.push(conn.rtt().as_secs_f64() * 1e3);
            }
        }
        seq = seq.wrapping_add(1);
        // Receive and play.
        let mut hung_up = false;
        while let Ok(msg) = rx.try_recv() {
            match msg {
                VoiceIn::Frame(f, at) if f.codec == CODEC_ADPCM => {
                    if let Some(pcm) = decode(&f.payload) {
                        last_heard = at;
                        jb.push(f.seq, pcm, at.duration_since(started).as_secs_f64() * 1e3);
                    }
                }
                VoiceIn::Frame(..) => {}
                VoiceIn::Bye => hung_up = true,
            }
        }
        if let Some(pcm) = jb.pop() {
            if let Some(io) = &page {
                // A page that cannot keep up loses audio, never holds the call back.
                let _ = io.speaker.try_send(pcm.clone());
            }
            recorded.extend(pcm);
        }
        if hung_up {
            break "other side hung up";
        }
        // Silence: the hang-up datagram may have been lost. The other side's leg record, synced
        // like any change, says for sure whether it hung up.
        if last_heard.elapsed() > Duration::from_secs(1) && checked.elapsed() > Duration::from_millis(500) {
            checked = Instant::now();
            let c = call.to_string();
            if let Ok(Ok(Some(other))) = shared.store.call(move |n| n.other_leg_end(sid, &c)).await
                && other == "hangup"
            {
                break "other side hung up";
            }
        }
        if last_heard.elapsed() > DROP_AFTER {
            break "dropped";
        }
        if started.elapsed() > Duration::from_secs(3600) {
            break "longest call reached";
        }
    };
    if end == "hangup"
        && let Some(conn) = hub_conn()
    {
        // Spread over about a second so that one burst of loss does not take every copy; the
        // leg record written below is the reliable word if all are lost.
        tokio::spawn(async move {
            for wait_ms in [0u64, 40, 120, 300, 700] {
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                let _ = conn.send_datagram(bye(tag).into());
            }
        });
    }
    if let Ok(mut slot) = shared.voice_in.lock() {
        *slot = None;
    }
    if let Ok(mut live) = shared.live_call.lock() {
        *live = None;
    }
    if let Ok(mut people) = shared.call_people.lock() {
        people.remove(&sid);
    }
    // Play out what is still buffered.
    while let Some(pcm) = jb.pop() {
        if jb.buffered() == 0 && pcm.iter().all(|s| *s == 0) {
            break;
        }
        recorded.extend(pcm);
        if jb.buffered() == 0 {
            break;
        }
    }
    if let Some(path) = &plan.record {
        crate::media::write_wav(path, &recorded).map_err(|e| e.to_string())?;
    }
    let st = jb.stats;
    let rtt = if rtt_samples.is_empty() { 0.0 } else { rtt_samples.iter().sum::<f64>() / rtt_samples.len() as f64 };
    let q = PathQuality {
        rtt_ms: rtt,
        jitter_ms: st.jitter_ms,
        loss: st.loss(),
        burst_ratio: 1.0,
        probes: (st.received + st.concealed) as u32,
    };
    let rating = rate(&q, &ADPCM_32K);
    let duration_ms = started.elapsed().as_millis() as i64;
    let fields: Vec<(&'static str, LogValue)> = vec![
        ("call", LogValue::Str(call.to_string())),
        ("node", LogValue::Str(shared.me.name.clone())),
        ("side", LogValue::Str(side.as_str().to_string())),
        ("started_ms", LogValue::Int(started_ms)),
        ("duration_ms", LogValue::Int(duration_ms)),
        ("codec", LogValue::Str(ADPCM_32K.name.to_string())),
        ("frames_sent", LogValue::Int(sent as i64)),
        ("frames_received", LogValue::Int(st.received as i64)),
        ("frames_concealed", LogValue::Int(st.concealed as i64)),
        ("frames_late", LogValue::Int(st.late as i64)),
        ("loss", LogValue::Float((st.loss() * 10_000.0).round() / 10_000.0)),
        ("jitter_ms", LogValue::Float((st.jitter_ms * 10.0).round() / 10.0)),
        ("longest_gap_ms", LogValue::Int(st.longest_gap_ms as i64)),
        ("rtt_ms", LogValue::Float((rtt * 10.0).round() / 10.0)),
        ("mos", LogValue::Float((rating.mos * 100.0).round() / 100.0)),
        ("end", LogValue::Str(end.to_string())),
    ];
    let dropped = end == "dropped";
    let call_id = call.to_string();
    let done = shared
        .store
        .call(move |n| -> Result<(), crate::node::NodeError> {
            n.record_call_leg(sid, &fields, now_ms())?;
            if dropped {
                n.request_callback_after_drop(sid, &call_id, now_ms())?;
            }
            Ok(())
        })
        .await;
    match done {
        Ok(Ok(())) => {
            shared.metrics.call_leg(end, rating.mos);
            tracing::info!(session = %sid, %call, end, loss = st.loss(), mos = rating.mos, "call leg ended");
            announce(shared, vec![sid.to_bytes()]);
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
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
