//! QUIC and TLS set-up: the transport, server and client configurations, the node's identity, the
//! peer's certificate and the revocation check.

use super::*;

/// The transport of every connection of a daemon that counts the calls it carries in `calls`
/// (congestion control keeps the queue short in front of them).
pub(super) fn transport(calls: congestion::CallsCarried) -> Arc<quinn::TransportConfig> {
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
    t.congestion_controller_factory(congestion::congestion().factory(calls));
    Arc::new(t)
}

/// QUIC server configuration for this identity (and revocation list), for a process that
/// carries no calls.
pub fn server_config(identity: &Identity, crl: Option<&[u8]>) -> Result<quinn::ServerConfig, NetError> {
    server_config_counting(identity, crl, congestion::CallsCarried::default())
}

/// [`server_config`] for a daemon that counts the calls it carries in `calls`.
pub(super) fn server_config_counting(
    identity: &Identity,
    crl: Option<&[u8]>,
    calls: congestion::CallsCarried,
) -> Result<quinn::ServerConfig, NetError> {
    let tls = identity.server_config(crl)?;
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Invalid { what: "QUIC server configuration", detail: e.to_string() })?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport(calls));
    Ok(cfg)
}

/// QUIC client configuration for this identity (and revocation list), for a process that
/// carries no calls.
pub fn client_config(identity: &Identity, crl: Option<&[u8]>) -> Result<quinn::ClientConfig, NetError> {
    let tls = identity.client_config(crl)?;
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Invalid { what: "QUIC client configuration", detail: e.to_string() })?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport(congestion::CallsCarried::default()));
    Ok(cfg)
}

/// Loads the node's TLS identity, with a clear error if it has none.
pub fn load_identity(node: &Node) -> Result<Identity, NetError> {
    let (cert, key, ca) = node.tls_identity()?.ok_or_else(|| TlsError::NoCertificate(node.config().name.clone()))?;
    let id = Identity::from_pem(&cert, &key, &ca)?;
    if id.info.name != node.config().name {
        return Err(TlsError::Invalid {
            what: "node certificate",
            detail: format!("it names {}, but this node is {}", id.info.name, node.config().name),
        }
        .into());
    }
    Ok(id)
}

pub(super) fn peer_identity(
    conn: &quinn::Connection,
) -> Result<(PeerInfo, Vec<u8>, CertificateDer<'static>), NetError> {
    let certs =
        conn.peer_identity().and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok()).ok_or_else(|| {
            NetError::Connection { peer: conn.remote_address().to_string(), failure: ConnectionFailure::NoCertificate }
        })?;
    let first = certs.first().ok_or_else(|| NetError::Connection {
        peer: conn.remote_address().to_string(),
        failure: ConnectionFailure::NoCertificate,
    })?;
    let serial =
        x509_parser::parse_x509_certificate(first.as_ref()).map(|(_, c)| c.raw_serial().to_vec()).unwrap_or_default();
    Ok((tls::peer_info(first)?, serial, first.clone()))
}

/// Whether the serial number appears in the revocation list.
pub(super) fn is_revoked(crl: Option<&[u8]>, serial: &[u8]) -> bool {
    let Some(der) = crl else { return false };
    let Ok((_, list)) = x509_parser::parse_x509_crl(der) else { return false };
    list.iter_revoked_certificates().any(|r| r.raw_serial() == serial)
}
