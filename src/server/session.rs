//! One connection's session: its PROXY header when the listener expects
//! one, then the TLS handshake on a TLS listener, then the echo until the
//! connection ends or is cut, then one log line.
//!
//! Every listener kind reaches the echo through [`serve`]; what differs
//! (plain or TLS, PROXY or not) is chosen in one `match`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use tracing::{debug, info, Instrument};

use super::{
    admission::{Admission, Gate},
    echo::{self, ConnectionSettings, ConnectionStats},
    http,
    listen::ListenerKind,
    proxy::{self, HeaderError},
    reason::{CloseReason, Rejection},
    shutdown::{Coordinator, Shutdown},
};
use crate::{
    config::ProxyProtocol,
    stream::{is_disconnect, EchoStream, Rewind},
    tls::server::Records,
};

/// What the accept loops and sessions share.
pub struct Shared {
    /// The settings a reload may change, for connections that start later.
    live: RwLock<Arc<Live>>,
    pub gate: Arc<Gate>,
    pub tcp_nodelay: bool,
    /// Whether connections start with a PROXY protocol header.
    pub proxy: ProxyProtocol,
    /// Peers that may send a PROXY header; empty = every peer.
    pub proxy_trusted: Vec<ipnet::IpNet>,
    pub coordinator: Coordinator,
    /// TCP and Unix connections run on the io_uring engine.
    pub io_uring: bool,
}

/// The settings a connection takes when it starts; a SIGHUP reload swaps
/// in new ones, and live connections keep theirs.
pub struct Live {
    pub settings: ConnectionSettings,
    /// Accepts TLS on `tls:` listeners.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub tls_handshake_timeout: Duration,
    /// How long the PROXY header may take.
    pub header_timeout: Duration,
    /// What new QUIC handshakes get on `quic:` listeners.
    pub quic: Option<Arc<super::quic::Handshakes>>,
}

impl Shared {
    pub fn new(
        live: Live,
        gate: Arc<Gate>,
        tcp_nodelay: bool,
        proxy: ProxyProtocol,
        proxy_trusted: Vec<ipnet::IpNet>,
    ) -> Shared {
        Shared {
            live: RwLock::new(Arc::new(live)),
            gate,
            tcp_nodelay,
            proxy,
            proxy_trusted,
            coordinator: Coordinator::new(),
            io_uring: false,
        }
    }

    /// The settings for a connection starting now.
    pub fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Applies reloaded settings to connections that start from now on.
    pub fn set_live(&self, live: Live) {
        *self
            .live
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(live);
    }

    /// Whether a peer may send a PROXY header at all (`proxy_trusted`).
    /// A Unix-socket peer (no IP) may: the socket file's mode decides who
    /// can connect.
    pub fn may_send_header(&self, ip: Option<IpAddr>) -> bool {
        ip.is_none() || self.proxy_trusted.is_empty() || self.is_trusted(ip)
    }

    /// Whether `ip` is a listed balancer: its connections are not bounded
    /// per IP while their header is awaited.
    pub fn is_trusted(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.proxy_trusted.iter().any(|net| net.contains(&ip)))
    }
}

/// What runs over a connection: TLS records or not, and the echo or HTTP
/// (with WebSocket echo) inside.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    pub tls: bool,
    pub http: bool,
}

impl Transport {
    /// Plain echo, as on TCP and Unix listeners.
    pub const PLAIN: Transport = Transport {
        tls: false,
        http: false,
    };
}

/// An admitted connection, before its session starts.
pub struct Connection {
    /// `IP:PORT` for logs (the PROXY header's client once read).
    pub peer: String,
    pub admission: Admission,
    pub shutdown: Shutdown,
    /// The listener as the logs name it (`ws:127.0.0.1:8080`).
    pub listener: Arc<str>,
    pub kind: ListenerKind,
}

/// Spawns one connection's whole session as a task of the coordinator.
///
/// A task's allocation is as large as its future's largest state, so each
/// path gets a future of its own size: a plain echo carries the echo loop
/// inline, and nothing else; HTTP (and the WebSocket it may become) carries
/// only its own; the PROXY header and TLS handshake states (over a kilobyte
/// for rustls) are boxed where they are reached.
pub fn spawn<S: EchoStream + Send + 'static>(
    stream: S,
    connection: Connection,
    transport: Transport,
    shared: &Arc<Shared>,
) {
    let coordinator = &shared.coordinator;
    let shared = shared.clone();
    match (shared.proxy, transport) {
        (ProxyProtocol::Off, Transport::PLAIN) => coordinator.spawn(echo_connection(
            stream,
            connection,
            None,
            shared.live().settings,
        )),
        (ProxyProtocol::Off, Transport { tls: false, .. }) => coordinator.spawn(async move {
            let live = shared.live();
            http::serve(stream, connection, None, &shared, &live).await
        }),
        _ => coordinator.spawn(serve(stream, connection, transport, shared)),
    }
}

/// Runs a session that starts with a PROXY header or a TLS handshake.
async fn serve<S: EchoStream + Send + 'static>(
    stream: S,
    connection: Connection,
    transport: Transport,
    shared: Arc<Shared>,
) {
    let live = shared.live();
    let (shared, live) = (&*shared, &*live);
    match (shared.proxy, transport) {
        (ProxyProtocol::Off, Transport::PLAIN) => {
            Box::pin(echo_connection(stream, connection, None, live.settings)).await
        }
        (ProxyProtocol::Off, Transport { tls: false, .. }) => {
            Box::pin(http::serve(stream, connection, None, shared, live)).await
        }
        (ProxyProtocol::Off, Transport { tls: true, .. }) => {
            Box::pin(secure(stream, connection, transport, shared, live)).await
        }
        (_, transport) => {
            Box::pin(read_proxy_header(
                stream, connection, transport, shared, live,
            ))
            .await
        }
    }
}

/// The PROXY header, then the rest of the connection with the client it
/// names.
async fn read_proxy_header<S: EchoStream + Send + 'static>(
    mut stream: S,
    mut connection: Connection,
    transport: Transport,
    shared: &Shared,
    live: &Live,
) {
    let mut pending = BytesMut::new();
    let read = proxy::read_header(&mut stream, shared.proxy, &mut pending);
    let limit = live.header_timeout;
    let read = async {
        tokio::time::timeout(limit, read)
            .await
            .unwrap_or(Err(HeaderError::Timeout(limit)))
    };
    let header = tokio::select! {
        biased;
        // Nothing of the client's has been received yet: nothing to echo.
        _ = connection.shutdown.draining() => Err(HeaderError::Shutdown),
        header = read => header,
    };
    let peer = &connection.peer;
    let ip = match header {
        Ok(proxy::Header {
            source: Some(client),
            ..
        }) => {
            debug!(proxy = %peer, client = %client, "PROXY header from {peer}: client {client}");
            connection.peer = client.to_string();
            Some(client.ip())
        }
        Ok(proxy::Header { source: None, .. }) => {
            peer.parse::<SocketAddr>().ok().map(|addr| addr.ip())
        }
        Err(error) => {
            if error.is_routine() {
                debug!(%peer, %error, "connection from {peer} refused: {error}");
            } else {
                info!(%peer, %error, "connection from {peer} refused: {error}");
            }
            connection.admission.reject(Rejection::ProxyHeader);
            if !matches!(error, HeaderError::Shutdown | HeaderError::Closed(_)) {
                echo::close_gently(&mut stream, &connection.shutdown).await;
            }
            return;
        }
    };
    if connection.admission.claim_ip(ip, &connection.peer).is_err() {
        return;
    }
    let stream = Rewind::new(pending, stream);
    match transport {
        Transport { tls: true, .. } => secure(stream, connection, transport, shared, live).await,
        Transport { http: true, .. } => http::serve(stream, connection, None, shared, live).await,
        Transport::PLAIN => echo_connection(stream, connection, None, live.settings).await,
    }
}

/// The TLS handshake (bounded by the handshake timeout, so half-open
/// handshakes cannot hold slots), then the echo.
async fn secure<S: EchoStream + Send + 'static>(
    stream: S,
    connection: Connection,
    transport: Transport,
    shared: &Shared,
    live: &Live,
) {
    let Some(acceptor) = live.tls.clone() else {
        unreachable!("TLS listeners are bound with an acceptor");
    };
    let limit = live.tls_handshake_timeout;
    let peer = &connection.peer;
    let handshake = tokio::select! {
        biased;
        _ = connection.shutdown.draining() => Err(("server shutting down".to_owned(), None)),
        handshake = tokio::time::timeout(limit, acceptor.accept(Records::new(stream)).into_fallible()) => {
            match handshake {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err((error, stream))) => Err((error.to_string(), Some((error.kind(), stream)))),
                Err(_) => Err((format!("not complete within {limit:?}"), None)),
            }
        }
    };
    let (reason, failed) = match handshake {
        Ok(stream) => {
            let session = stream.get_ref().1;
            let subject = crate::tls::peer_subject(session);
            debug!(
                %peer,
                version = ?session.protocol_version(),
                kind = ?session.handshake_kind(),
                client_cert = subject.as_deref().unwrap_or("-"),
                "TLS handshake with {peer} done"
            );
            if transport.http {
                let tls = http::TlsInfo::of(session, subject);
                return http::serve(stream, connection, Some(tls), shared, live).await;
            }
            return echo_connection(stream, connection, subject, live.settings).await;
        }
        Err(failure) => failure,
    };
    connection.admission.reject(Rejection::TlsHandshake);
    // A client that vanished mid-handshake (a port scan, a health check, an
    // aborted client) or a shutdown is routine: DEBUG.
    let vanished = failed
        .as_ref()
        .is_some_and(|(kind, _)| is_disconnect(*kind));
    if vanished || connection.shutdown.is_draining() {
        debug!(%peer, %reason, "TLS handshake with {peer} failed: {reason}");
        return;
    }
    info!(%peer, %reason, "TLS handshake with {peer} failed: {reason}");
    if let Some((_, mut stream)) = failed {
        // Let the alert that says why reach the client.
        echo::close_gently(&mut stream, &connection.shutdown).await;
    }
}

/// Echoes until the connection ends or is cut, then logs one line.
/// `client_cert` is the subject of a verified TLS client certificate.
///
/// An `async move` block rather than an `async fn`: the arguments of an
/// `async fn` are stored twice in its future (once as arguments, once
/// moved into the body), and this future is most of an idle connection's
/// memory (as an `async fn` it was 248 bytes larger, 1,312 against 1,064).
#[allow(clippy::manual_async_fn)]
fn echo_connection<S: EchoStream>(
    mut stream: S,
    connection: Connection,
    client_cert: Option<String>,
    settings: ConnectionSettings,
) -> impl std::future::Future<Output = ()> {
    async move {
        let opened = Instant::now();
        let (peer, client_cert) = (&connection.peer, client_cert.as_deref());
        match client_cert {
            Some(subject) => debug!(%peer, client_cert = subject, "connection opened"),
            None => debug!(%peer, "connection opened"),
        }
        let mut stats = ConnectionStats::default();
        let metrics = connection.admission.metrics();
        // Awaited where it is built: a future held in a local and then
        // moved would take its size twice in this task. Events inside the
        // echo loop (TRACE `read`) name their connection by the span.
        let reason = echo::echo(
            &mut stream,
            &settings,
            &connection.shutdown,
            &mut stats,
            metrics.map(|metrics| metrics.echo(connection.kind)),
        )
        .instrument(
            tracing::debug_span!(target: "echod::connection", "connection", %peer, client_cert),
        )
        .await;
        let lifetime = opened.elapsed();
        if let Some(metrics) = metrics {
            metrics.closed(&reason, lifetime);
        }
        log_close(peer, client_cert, &reason, &stats, lifetime);
    }
}

fn log_close(
    peer: &str,
    client_cert: Option<&str>,
    reason: &CloseReason,
    stats: &ConnectionStats,
    lifetime: Duration,
) {
    macro_rules! close_event {
        ($level:ident) => {
            tracing::$level!(
                %peer,
                client_cert,
                %reason,
                bytes_received = stats.bytes_received,
                bytes_echoed = stats.bytes_echoed,
                bytes_truncated = stats.bytes_truncated,
                duration_ms = lifetime.as_millis() as u64,
                "connection from {peer} closed: {reason}"
            )
        };
    }
    if reason.is_routine() && stats.bytes_truncated == 0 {
        close_event!(debug);
    } else {
        close_event!(info);
    }
}
