//! TLS for a local API that serves more than its own device: a surgery box whose desktops use
//! it over the practice LAN. The certificate is the deployer's (from the ICB's or practice's
//! own PKI, which those desktops trust), given as PEM files: `run --api-cert --api-key`.
//!
//! Handshakes run beside the server, each bounded in time ([`HANDSHAKE_LIMIT`]). At most
//! [`MAX_CONNECTIONS`] connections are held at once, handshakes included; more wait in the
//! kernel's queue, never dropped. One address holds at most [`MAX_PER_ADDRESS`] of them (a
//! desktop's browser opens six or so); its next are closed at once. A request's head must come
//! whole within [`HEADER_LIMIT`] of the connection opening or of the last answer (hyper's
//! header timeout, which needs hyper's timer: `axum::serve` sets none, so this module serves
//! its connections itself). A connection on which nothing moves either way for [`IDLE_LIMIT`]
//! is closed (an open event stream sends a keep-alive every 15 s). So a client that opens
//! connections and says nothing, or sends a head a byte at a time, holds a few slots for
//! seconds, not every slot for ever.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::{TcpListener, TcpStream};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::tls::TlsError;

/// Where the API's certificate chain and private key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    /// The certificate, then any intermediates.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Connections held at once, handshakes included.
const MAX_CONNECTIONS: usize = 256;
/// The longest a handshake may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// The longest a connection may sit with nothing read or written.
const IDLE_LIMIT: Duration = Duration::from_secs(120);
/// Connections one address may hold at once.
const MAX_PER_ADDRESS: usize = 32;
/// The longest a request's head may take to come whole, from the connection's opening or the
/// last answer on it.
const HEADER_LIMIT: Duration = Duration::from_secs(20);

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

/// The server's TLS configuration: TLS 1.3 or 1.2, HTTP/1.1, the deployer's certificate.
pub(super) fn server_config(tls: &ApiTls) -> Result<rustls::ServerConfig, TlsError> {
    let cert_pem = read(&tls.cert)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid { what: "the API certificate (--api-cert)", detail: e.to_string() })?;
    if certs.is_empty() {
        let detail = format!("{} holds no PEM certificate", tls.cert.display());
        return Err(TlsError::Invalid { what: "the API certificate (--api-cert)", detail });
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?)
        .map_err(|e| TlsError::Invalid { what: "the API key (--api-key)", detail: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A listener that hands the server only connections whose TLS handshake completed.
#[derive(Debug)]
pub(super) struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(Held, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub(super) fn new(tcp: TcpListener, cfg: rustls::ServerConfig) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let tls = TlsAcceptor::from(Arc::new(cfg));
        let (tx, ready) = mpsc::channel(16);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let by_address: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Default::default();
        let acceptor = tokio::spawn(async move {
            loop {
                // A free slot first: while none is, connections wait in the kernel's queue.
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, for one: wait rather than spin.
                        tracing::warn!("the local API could not accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(address) = AddressSlot::take(&by_address, peer.ip()) else {
                    tracing::debug!(%peer, "closed an API connection: its address holds {MAX_PER_ADDRESS} already");
                    continue;
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_LIMIT, tls.accept(stream)).await {
                        Ok(Ok(io)) => {
                            let idle = Box::pin(tokio::time::sleep(IDLE_LIMIT));
                            let _ = tx.send((Held { io, idle, _slot: slot, _address: address }, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "API TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready, acceptor })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// An established connection: its slot among [`MAX_CONNECTIONS`], given back when it closes,
/// and its idle deadline, pushed back whenever anything is read or written.
#[derive(Debug)]
pub(super) struct Held {
    io: TlsStream<TcpStream>,
    idle: Pin<Box<tokio::time::Sleep>>,
    _slot: OwnedSemaphorePermit,
    _address: AddressSlot,
}

/// A connection's place among its address's [`MAX_PER_ADDRESS`], given back when it closes.
#[derive(Debug)]
struct AddressSlot {
    held: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(held: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<AddressSlot> {
        let mut map = held.lock().ok()?;
        let n = map.entry(ip).or_default();
        if *n >= MAX_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressSlot { held: held.clone(), ip })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.held.lock()
            && let Some(n) = map.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Serves the API's router on the connections the listener hands over, each with hyper's
/// header timeout ([`HEADER_LIMIT`]) and WebSocket upgrades, until the listener is dropped.
pub(super) async fn serve(mut listener: TlsListener, app: axum::Router) {
    use axum::serve::Listener as _;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_LIMIT);
    loop {
        let (io, peer) = listener.accept().await;
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), service).with_upgrades();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "API connection ended: {e}");
            }
        });
    }
}

impl Held {
    /// After progress: the deadline moves on. While waiting: an error once it has passed.
    fn idle<T>(&mut self, cx: &mut Context<'_>, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.idle.as_mut().reset(tokio::time::Instant::now() + IDLE_LIMIT);
                Poll::Ready(r)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle API connection closed")))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for Held {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.idle(cx, polled)
    }
}

impl AsyncWrite for Held {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.idle(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.idle(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Held;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor is gone only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
