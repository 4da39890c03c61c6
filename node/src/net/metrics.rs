//! Prometheus metrics, and the health endpoints again, on their own listener
//! (`metrics.listen`): a hub often serves no clinicians' API, and its monitoring must not need
//! a user's token. No session content is ever a label: peers are node names, reasons are
//! short fixed words.
//!
//! Counters are kept as things happen (refusals, calls, sync rounds); gauges (peers connected,
//! backlog, last sync, certificate days, store size, bytes on the wire, audit chains found cut
//! back) are read at each scrape.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{NetError, Shared};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabel {
    end: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
    role: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The daemon's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    info: Family<NodeLabel, Gauge>,
    peers_connected: Gauge,
    peer_connected: Family<PeerLabel, Gauge>,
    last_sync: Family<PeerLabel, FloatGauge>,
    last_failure: Family<PeerLabel, FloatGauge>,
    backlog_items: Gauge,
    backlog_sessions: Gauge,
    backlog_bytes: Gauge,
    wire: Family<DirectionLabel, Counter>,
    /// UDP bytes of connections that have closed (sent, received); live ones are read at scrape.
    closed_wire: std::sync::Mutex<(u64, u64)>,
    /// What the wire counters last showed (sent, received), to add only the difference.
    shown_wire: std::sync::Mutex<(u64, u64)>,
    sync_seconds: Family<PeerLabel, Histogram>,
    refusals: Family<ReasonLabel, Counter>,
    photo_chunks: Family<EventLabel, Counter>,
    calls: Family<EndLabel, Counter>,
    call_mos: Histogram,
    cert_days: FloatGauge,
    store_bytes: Gauge,
    audit_losses: Gauge,
    audit_peer_losses: Gauge,
    unusual_access: Gauge,
    /// 1 while the file system tells the daemon of other processes' writes to its store.
    store_watched: Gauge,
    /// The last scrape's text and when it was made: scrapes (tokenless) come one at a time and
    /// at most one every [`SCRAPE_EVERY`] reaches the store, so that no one who can reach the
    /// port can keep the store thread from syncing.
    last: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
}

/// How long a scrape's figures are served again before the store is read anew.
const SCRAPE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut m = Metrics {
            info: Family::default(),
            peers_connected: Gauge::default(),
            peer_connected: Family::default(),
            last_sync: Family::default(),
            last_failure: Family::default(),
            backlog_items: Gauge::default(),
            backlog_sessions: Gauge::default(),
            backlog_bytes: Gauge::default(),
            wire: Family::default(),
            closed_wire: std::sync::Mutex::new((0, 0)),
            shown_wire: std::sync::Mutex::new((0, 0)),
            sync_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 16))),
            refusals: Family::default(),
            photo_chunks: Family::default(),
            calls: Family::default(),
            call_mos: Histogram::new([1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4]),
            cert_days: FloatGauge::default(),
            store_bytes: Gauge::default(),
            audit_losses: Gauge::default(),
            audit_peer_losses: Gauge::default(),
            unusual_access: Gauge::default(),
            store_watched: Gauge::default(),
            last: tokio::sync::Mutex::new(None),
            registry: Registry::with_prefix("outpost"),
        };
        m.registry.register("node", "This node's name and role (always 1)", m.info.clone());
        m.registry.register("peers_connected", "Peers with a live connection now", m.peers_connected.clone());
        m.registry.register("peer_connected", "1 while this peer has a live connection", m.peer_connected.clone());
        m.registry.register_with_unit(
            "peer_last_sync_timestamp",
            "When a conversation with this peer last had everything sent and acknowledged (Unix time)",
            Unit::Seconds,
            m.last_sync.clone(),
        );
        m.registry.register_with_unit(
            "peer_last_failure_timestamp",
            "When a conversation with this peer last failed (Unix time)",
            Unit::Seconds,
            m.last_failure.clone(),
        );
        m.registry.register(
            "backlog_items",
            "Messages and photos written here that no other node has confirmed holding",
            m.backlog_items.clone(),
        );
        m.registry.register("backlog_sessions", "Sessions holding backlog items", m.backlog_sessions.clone());
        m.registry.register_with_unit(
            "backlog_photo",
            "Bytes of photos taken here that no hub has confirmed holding",
            Unit::Bytes,
            m.backlog_bytes.clone(),
        );
        m.registry.register_with_unit("wire", "UDP bytes of sync and call connections", Unit::Bytes, m.wire.clone());
        m.registry.register_with_unit(
            "sync_round",
            "Time from a change to everything sent and acknowledged, per peer",
            Unit::Seconds,
            m.sync_seconds.clone(),
        );
        m.registry.register(
            "refusals",
            "Connections, conversations and changes refused, by reason",
            m.refusals.clone(),
        );
        m.registry.register(
            "photo_chunks",
            "Photo chunks sent, received and stored, and received again though already held",
            m.photo_chunks.clone(),
        );
        m.registry.register("call_legs", "Call legs carried by this node, by how they ended", m.calls.clone());
        m.registry.register("call_mos", "Estimated quality of each call leg (MOS, 1 to 4.5)", m.call_mos.clone());
        m.registry.register(
            "certificate_days_left",
            "Days until this node's fleet certificate expires (renew below 30)",
            m.cert_days.clone(),
        );
        m.registry.register_with_unit(
            "store",
            "Size of the SQLite store with its write-ahead log",
            Unit::Bytes,
            m.store_bytes.clone(),
        );
        m.registry.register(
            "audit_losses",
            "Hubs that had seen this node's audit chain longer than it now is: entries lost here (a restore from a backup, or a chain cut back)",
            m.audit_losses.clone(),
        );
        m.registry.register(
            "audit_peer_losses",
            "Peers whose audit chains were found shorter than they had told this node: entries lost there",
            m.audit_peer_losses.clone(),
        );
        m.registry.register(
            "unusual_access",
            "People (or integrating systems) who opened more different patients' records through the local API in an hour than the alarm, in the last day",
            m.unusual_access.clone(),
        );
        m.registry.register(
            "store_watched",
            "1 while the file system tells the daemon of other processes' writes to its store (0: it looks every 50 ms)",
            m.store_watched.clone(),
        );
        m
    }

    /// A refusal, by a short fixed reason (`revoked`, `expired`, `connection_limit`, `budget`,
    /// `protocol`, `sync_error`, ...).
    pub(crate) fn refused(&self, reason: &str) {
        self.refusals.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }

    /// Photo chunks a conversation sent, stored, and received though already held, since it
    /// last said: on a lossy link, what is sent twice shows as `duplicate` at the receiver or
    /// as `sent` beyond the chunks of the photos.
    pub(crate) fn photo_chunks(&self, sent: u64, received: u64, duplicate: u64) {
        for (event, n) in [("sent", sent), ("received", received), ("duplicate", duplicate)] {
            if n > 0 {
                self.photo_chunks.get_or_create(&EventLabel { event }).inc_by(n);
            }
        }
    }

    /// A conversation with `peer` reached quiescence after `seconds` of work.
    pub(crate) fn sync_round(&self, peer: &str, seconds: f64) {
        self.sync_seconds.get_or_create(&PeerLabel { peer: peer.to_string() }).observe(seconds);
    }

    /// A call leg ended (`hung_up`, `dropped`, ...) with this estimated quality.
    pub(crate) fn call_leg(&self, end: &str, mos: f64) {
        self.calls.get_or_create(&EndLabel { end: end.to_string() }).inc();
        self.call_mos.observe(mos);
    }

    /// A connection closed: its UDP totals join the closed connections'.
    pub(crate) fn connection_closed(&self, stats: &quinn::ConnectionStats) {
        if let Ok(mut c) = self.closed_wire.lock() {
            c.0 += stats.udp_tx.bytes;
            c.1 += stats.udp_rx.bytes;
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`.
pub(super) async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), NetError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| NetError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| NetError::Bind { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(super::api::healthz))
        .route("/readyz", get(super::api::readyz))
        .with_state(shared);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics listener stopped: {e}");
        }
    });
    tracing::info!("metrics on http://{local}/metrics");
    Ok((local, task))
}

/// What the store knows, read on its thread for one scrape.
struct StoreFacts {
    backlog: crate::store::Backlog,
    peers: Vec<crate::store::PeerSync>,
    cert_until_ms: Option<i64>,
    store_bytes: u64,
    audit_losses: (usize, usize),
    unusual_access: usize,
}

async fn scrape(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> Response {
    let mut last = shared.metrics.last.lock().await;
    if let Some((at, text)) = last.as_ref()
        && at.elapsed() < SCRAPE_EVERY
    {
        return openmetrics(text.clone());
    }
    let facts = shared
        .store
        .call(|node| -> Result<StoreFacts, crate::node::NodeError> {
            let cert_until_ms = match node.tls_identity()? {
                Some((cert, _, _)) => Some(crate::tls::not_after_ms(&cert)?),
                None => None,
            };
            Ok(StoreFacts {
                backlog: node.backlog()?,
                peers: node.peer_syncs()?,
                cert_until_ms,
                store_bytes: node.file_bytes(),
                audit_losses: node.audit_losses().map(|(own, peers)| (own.len(), peers.len()))?,
                unusual_access: node.unusual_access(crate::node::now_ms())?.len(),
            })
        })
        .await;
    let facts = match facts {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the store: {e}\n")).into_response();
        }
        Err(e) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("the store is not answering: {e}\n")).into_response();
        }
    };
    let m = &shared.metrics;
    m.info.get_or_create(&NodeLabel { node: shared.me.name.clone(), role: shared.me.role.to_string() }).set(1);
    let (live, live_tx, live_rx) = match shared.links.lock() {
        Ok(links) => {
            let names: Vec<String> = links.keys().cloned().collect();
            let (tx, rx) = links.values().fold((0u64, 0u64), |(tx, rx), l| {
                let s = l.conn.stats();
                (tx + s.udp_tx.bytes, rx + s.udp_rx.bytes)
            });
            (names, tx, rx)
        }
        Err(_) => (Vec::new(), 0, 0),
    };
    m.peers_connected.set(live.len() as i64);
    m.peer_connected.clear();
    for p in &facts.peers {
        let label = PeerLabel { peer: p.peer.clone() };
        m.peer_connected.get_or_create(&label).set(i64::from(live.contains(&p.peer)));
        if let Some(ms) = p.last_ok_ms {
            m.last_sync.get_or_create(&label).set(ms as f64 / 1e3);
        }
        if let Some((ms, _)) = &p.last_error {
            m.last_failure.get_or_create(&label).set(*ms as f64 / 1e3);
        }
    }
    for name in &live {
        m.peer_connected.get_or_create(&PeerLabel { peer: name.clone() }).set(1);
    }
    m.backlog_items.set(facts.backlog.items as i64);
    m.backlog_sessions.set(facts.backlog.sessions as i64);
    m.backlog_bytes.set(facts.backlog.photo_bytes as i64);
    let closed = m.closed_wire.lock().map(|c| *c).unwrap_or_default();
    if let Ok(mut shown) = m.shown_wire.lock() {
        let (tx, rx) = (closed.0 + live_tx, closed.1 + live_rx);
        m.wire.get_or_create(&DirectionLabel { direction: "sent" }).inc_by(tx.saturating_sub(shown.0));
        m.wire.get_or_create(&DirectionLabel { direction: "received" }).inc_by(rx.saturating_sub(shown.1));
        *shown = (tx.max(shown.0), rx.max(shown.1));
    }
    if let Some(until) = facts.cert_until_ms {
        m.cert_days.set((until - crate::node::now_ms()) as f64 / 86_400_000.0);
    }
    m.store_bytes.set(facts.store_bytes as i64);
    m.audit_losses.set(facts.audit_losses.0 as i64);
    m.audit_peer_losses.set(facts.audit_losses.1 as i64);
    m.unusual_access.set(facts.unusual_access as i64);
    m.store_watched.set(i64::from(shared.store_watched.load(std::sync::atomic::Ordering::Relaxed)));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &m.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {e}\n")).into_response();
    }
    *last = Some((std::time::Instant::now(), text.clone()));
    openmetrics(text)
}

fn openmetrics(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}
