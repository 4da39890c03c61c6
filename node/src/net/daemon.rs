//! The daemon (`outpost run`): listening, dialling its peers with backoff, noticing local
//! writes by other processes, and the link events.

use super::*;
use std::path::{Path, PathBuf};

/// Says "link down" on the event channel when a conversation ends, however it ends.
pub(super) struct LinkNotice {
    pub(super) shared: Arc<Shared>,
    pub(super) peer: String,
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
    /// How often the daemon looks at its store for writes by other processes (`outpost`
    /// commands beside it) regardless of what the file system tells it ([`LOCAL_WRITE_RECHECK`]
    /// if not given; at least 50 ms). The file system's word (inotify) is what normally wakes
    /// it; where no watch can be set up it looks every 50 ms.
    pub local_write_recheck: Option<Duration>,
}

/// How often a daemon that the file system tells of writes to its store still looks for
/// writes by other processes: in case a change went untold (a watch lost, a file system
/// that reports nothing). An idle daemon otherwise wakes for nothing.
pub const LOCAL_WRITE_RECHECK: Duration = Duration::from_secs(10);

/// How often a daemon looks for other processes' writes where it cannot watch its files, and
/// how long it lets a burst of told writes settle before it looks once for them all.
const LOCAL_WRITE_POLL: Duration = Duration::from_millis(50);

/// After a told write that a look did not yet see, the waits before each look again (a second
/// in all). The log is written (and told) before it is fsynced, and the commit marked in the
/// mmap'd `-shm` (never told) after that, so a slow fsync can outlast the first look. Few
/// looks, not one every 50 ms: the daemon's own writes are told too (one every 10 s on each
/// live connection), and each would start them.
const TOLD_LOOKS_AGAIN: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(750)];

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
    pub async fn start(mut node: Node, opts: RunOptions) -> Result<Daemon, NetError> {
        node.set_record_limits(opts.limits.records, now_ms());
        let shared = Shared::new(node, 1024, opts.limits)?;
        let crl = shared.crl.read().map(|c| c.clone()).unwrap_or_default();
        let endpoint = match opts.listen {
            Some(addr) => {
                let cfg = server_config_counting(&shared.identity, crl.as_deref(), shared.calls_carried.clone())?;
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
        tasks.push(tokio::spawn(watch_local_writes(
            shared.clone(),
            opts.local_write_recheck.unwrap_or(LOCAL_WRITE_RECHECK),
        )));
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
        let endpoint =
            self.shared.endpoint.get().ok_or(NetError::Connect { addr: peer, failure: DialFailure::NoEndpoint })?;
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

    /// Whether the file system tells this daemon of other processes' writes to its store
    /// (inotify), so that it sleeps between them; false until it has set the watch up, where
    /// it cannot, and once the watch has ended (it then looks every 50 ms).
    pub fn store_watched(&self) -> bool {
        self.shared.store_watched.load(std::sync::atomic::Ordering::Relaxed)
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

pub(super) async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
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
pub(super) fn dial_config(shared: &Shared, crl: Option<Vec<u8>>) -> Result<quinn::ClientConfig, NetError> {
    let mut kept = shared
        .dial
        .lock()
        .map_err(|_| NetError::Connection { peer: String::new(), failure: ConnectionFailure::Poisoned })?;
    if let Some((for_crl, cfg)) = kept.as_ref()
        && *for_crl == crl
    {
        return Ok(cfg.clone());
    }
    let tls = shared.identity.client_config_counted(crl.as_deref(), shared.chains_checked.clone())?;
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Invalid { what: "QUIC client configuration", detail: e.to_string() })?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport(shared.calls_carried.clone()));
    *kept = Some((crl, cfg.clone()));
    Ok(cfg)
}

pub(super) async fn dial_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint, peer: PeerAddr) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let crl = shared.crl.read().map(|c| c.clone()).unwrap_or_default();
        let attempt = async {
            let peer = peer.resolve().await?;
            let cfg = dial_config(&shared, crl)?;
            let connecting = endpoint
                .connect_with(cfg, peer, SERVER_NAME)
                .map_err(|e| NetError::Connect { addr: peer, failure: e.into() })?;
            let conn = connect_noting_silence(connecting, peer)
                .await
                .map_err(|e| NetError::Connect { addr: peer, failure: e.into() })?;
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

pub(super) async fn watch_local_writes(shared: Arc<Shared>, recheck: Duration) {
    let start = shared
        .store
        .call(|n| -> Result<(i64, i64, PathBuf), StoreError> {
            Ok((n.data_version()?, n.changed_since(0)?.1, n.dir().db_path()))
        })
        .await;
    let Ok(Ok((mut version, mut seq, db))) = start else { return };
    let mut crl_number = shared.store.call(|n| n.revocations().ok().flatten().map_or(0, |(n, _)| n)).await.unwrap_or(0);
    // Told by the file system when the store's files change (another process's commit lands
    // in the write-ahead log), the daemon sleeps between writes; without a watcher it polls.
    let (told_tx, mut told) = mpsc::channel::<()>(1);
    let mut watcher = watch_store_files(&db, told_tx);
    shared.store_watched.store(watcher.is_some(), std::sync::atomic::Ordering::Relaxed);
    let mut tick =
        tokio::time::interval(if watcher.is_some() { recheck.max(LOCAL_WRITE_POLL) } else { LOCAL_WRITE_POLL });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Which of `TOLD_LOOKS_AGAIN` comes next (none past its end).
    let mut again = TOLD_LOOKS_AGAIN.len();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep(TOLD_LOOKS_AGAIN.get(again).copied().unwrap_or_default()),
                if again < TOLD_LOOKS_AGAIN.len() => again += 1,
            heard = told.recv(), if watcher.is_some() => {
                if heard.is_none() {
                    // The watcher's thread ended: poll from now on.
                    tracing::warn!("the store's file watch ended: looking for local writes every 50 ms");
                    shared.store_watched.store(false, std::sync::atomic::Ordering::Relaxed);
                    // Its drop would tell the dead thread to stop, and panic on the way.
                    std::mem::forget(watcher.take());
                    tick = tokio::time::interval(LOCAL_WRITE_POLL);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    continue;
                }
                // A commit writes the log more than once, and the daemon's own writes are
                // told too: one look for a burst.
                tokio::time::sleep(LOCAL_WRITE_POLL).await;
                while told.try_recv().is_ok() {}
                again = 0;
            }
        }
        let polled = shared
            .store
            .call(move |n| -> Result<Option<(i64, Vec<DocId>, i64)>, StoreError> {
                let v = n.data_version()?;
                if v == version {
                    return Ok(None);
                }
                let (docs, top) = n.changed_since(seq)?;
                Ok(Some((v, docs, top)))
            })
            .await;
        match polled {
            Ok(Ok(Some((v, docs, top)))) => {
                again = TOLD_LOOKS_AGAIN.len();
                version = v;
                seq = top;
                if !docs.is_empty() {
                    let _ = shared.changes.send(Notice::Docs { from: 0, docs: Arc::new(docs) });
                }
                // A revocation list installed by another process (`outpost ca publish`).
                let n = shared.store.call(|n| n.revocations().ok().flatten().map_or(0, |(n, _)| n)).await.unwrap_or(0);
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

/// Watches the directory of the store at `db` for changes to its files (the database and its
/// write-ahead log), each a word on `told`. None where no watch can be set up (inotify's
/// limits reached; logged): the caller then polls. The watcher's thread sleeps until the
/// kernel has news.
fn watch_store_files(db: &Path, told: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKindMask, Watcher as _};
    // SQLite puts the -wal and -shm beside the database's real file: follow a symlink.
    let db = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
    let dir = db.parent()?.to_path_buf();
    let name = db.file_name()?.to_os_string();
    let ours = move |p: &Path| p.file_name().is_some_and(|f| f.as_encoded_bytes().starts_with(name.as_encoded_bytes()));
    let handler = move |event: notify::Result<notify::Event>| {
        // A lost event (queue overflow: a Rescan with no paths) or an error: look anyway.
        let look = match &event {
            Ok(event) => event.need_rescan() || event.paths.iter().any(|p| ours(p)),
            Err(_) => true,
        };
        if look {
            // Full: a word is already waiting, which is all this says.
            let _ = told.try_send(());
        }
    };
    let config = notify::Config::default()
        // ACCESS_CLOSE (IN_CLOSE_WRITE): an `outpost` command closes the store's files when it
        // exits, after its last commit is in the -shm; the WAL's IN_MODIFY comes before it.
        .with_event_kinds(
            EventKindMask::CREATE
                | EventKindMask::MODIFY_DATA
                | EventKindMask::MODIFY_NAME
                | EventKindMask::ACCESS_CLOSE,
        );
    let made = notify::RecommendedWatcher::new(handler, config).and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match made {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot watch the store's files ({e}): looking for local writes every 50 ms");
            None
        }
    }
}
