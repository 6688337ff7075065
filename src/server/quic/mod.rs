//! QUIC echo (`quic:HOST:PORT`) on quinn: every client-opened
//! bidirectional stream is one more byte stream under the same echo loop
//! as TCP (framing, frame limit, half-close, drain); datagrams (RFC 9221)
//! are echoed as they come; unidirectional streams are refused with
//! STOP_SENDING.
//!
//! Limits as everywhere: a QUIC connection takes a connection permit and a
//! per-IP slot from the same gate; a source over its per-IP limit must
//! first prove its address (a Retry) and is refused if it still is. The
//! idle timeout is QUIC's own (negotiated in the handshake), and also
//! bounds each stream. At shutdown every stream echoes what arrived and
//! finishes; then the connection closes with application code 0.

mod stream;

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::JoinSet;
use tracing::{debug, info};

use super::{
    echo::{self, ConnectionSettings, ConnectionStats, LINGER},
    listen::ListenerKind,
    metrics::Metrics,
    reason::CloseReason,
    session::{Connection, Live, Shared},
    shutdown::Shutdown,
};
use crate::{config::Config, tls::TlsError};
use stream::QuicStream;

/// Unidirectional streams a client may open before it sees them refused
/// (each is stopped at once, and its credit comes back).
const UNI_STREAMS: u32 = 4;

/// Datagram buffers, each way: a few full-size datagrams.
const DATAGRAM_BUFFER: usize = 64 * 1024;

/// How long the close of every connection may take to reach its client
/// once the server has shut down.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The application error code of a server-initiated close.
const CLOSE_CODE: u32 = 0;

/// What new QUIC handshakes get: quinn's server configuration (the `tls:`
/// certificate, key and client CA, the configured ALPN list) and echod's
/// limits as transport parameters.
pub struct Handshakes {
    server: quinn::ServerConfig,
    limits: Limits,
    /// Whether a connection is served before its handshake completes
    /// (0.5-RTT): only when no client certificate is asked for, since
    /// the client proves it holds one only at the end of the handshake.
    half_rtt: bool,
}

/// echod's settings in QUIC's transport parameters.
#[derive(Clone, Copy)]
struct Limits {
    streams: u32,
    idle: Option<quinn::IdleTimeout>,
}

impl Limits {
    fn transport(self, discovery: quinn::MtuDiscoveryConfig) -> quinn::TransportConfig {
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.streams))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(UNI_STREAMS))
            .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
            .datagram_send_buffer_size(DATAGRAM_BUFFER)
            .max_idle_timeout(self.idle)
            .mtu_discovery_config(Some(discovery));
        transport
    }
}

impl Handshakes {
    pub fn new(config: &Config, warnings: &mut Vec<String>) -> Result<Handshakes, TlsError> {
        let mut tls =
            (*crate::tls::server_config(&config.tls, super::bind::sessions(config), warnings)?)
                .clone();
        tls.alpn_protocols = config
            .quic_alpn
            .iter()
            .map(|protocol| protocol.as_bytes().to_vec())
            .collect();
        // 0-RTT: a client resuming a session may send its first stream
        // data with its first packet. Replayed early data only makes the
        // server echo again, to a client that alone holds the keys to read
        // it; and rustls's session cache hands each ticket out once
        // (`take`), which stops replays on this server anyway. quinn takes
        // 0 or u32::MAX here and nothing between.
        tls.max_early_data_size = u32::MAX;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|error| TlsError(format!("QUIC: {error}")))?;
        let limits = Limits {
            streams: u32::try_from(config.quic_max_streams).unwrap_or(u32::MAX),
            // Capped at QUIC's largest idle timeout (2^62 ms).
            idle: config.idle_timeout.map(|timeout| {
                quinn::IdleTimeout::try_from(timeout)
                    .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::MAX))
            }),
        };
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(
            limits.transport(quinn::MtuDiscoveryConfig::default()),
        ));
        Ok(Handshakes {
            server,
            limits,
            half_rtt: config.tls.client_ca.is_none(),
        })
    }

    /// The endpoint's own configuration (Retry and address-validation
    /// tokens are made and checked with its keys).
    pub fn server_config(&self) -> quinn::ServerConfig {
        self.server.clone()
    }

    /// The configuration of a handshake with `peer`: the endpoint's, with
    /// MTU discovery bounded by what the route to `peer` carries.
    fn for_peer(&self, peer: SocketAddr) -> Arc<quinn::ServerConfig> {
        let mut server = self.server.clone();
        server.transport_config(Arc::new(
            self.limits.transport(crate::quic::mtu_discovery(peer)),
        ));
        Arc::new(server)
    }
}

/// Socket buffers asked for a QUIC endpoint's UDP socket, each way: every
/// connection shares this one socket, and a burst from many of them must
/// not overflow a default-sized (about 200 KiB) buffer and turn into loss.
/// The kernel caps it at `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

/// A QUIC endpoint serving on `socket`.
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
) -> io::Result<quinn::Endpoint> {
    let sock = socket2::SockRef::from(&socket);
    // Best effort: a smaller buffer still works, it only drops sooner.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    quinn::Endpoint::new(
        crate::quic::endpoint_config(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Accepts until the shutdown drains; from then on the endpoint refuses
/// new connections while the open ones finish.
pub async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let shutdown = shared.coordinator.shutdown();
    let name: Arc<str> = match endpoint.local_addr() {
        Ok(addr) => format!("quic:{addr}").into(),
        Err(_) => "quic listener".into(),
    };
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shutdown.draining() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let remote = incoming.remote_address();
        let ip = remote.ip().to_canonical();
        // Over its per-IP limit, a source first proves it owns its address:
        // a spoofed flood cannot use up the slots of the address it forges.
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && shared.gate.ip_is_full(ip)
        {
            let _ = incoming.retry();
            continue;
        }
        let peer = remote.to_string();
        let mut admission = shared.gate.arrive(ListenerKind::Quic);
        if admission.claim_ip(Some(ip), &peer).is_err() {
            incoming.refuse();
            continue;
        }
        let permitted = tokio::select! {
            biased;
            _ = shutdown.draining() => None,
            permitted = admission.permit() => permitted,
        };
        if permitted.is_none() {
            incoming.refuse();
            break;
        }
        let connection = Connection {
            peer,
            admission,
            shutdown: shared.coordinator.shutdown(),
            listener: name.clone(),
            kind: ListenerKind::Quic,
        };
        shared
            .coordinator
            .spawn(serve(incoming, connection, shared.clone()));
    }
    endpoint.set_server_config(None);
}

/// After the shutdown: lets the close of every connection reach its client.
pub async fn closed(endpoints: &[quinn::Endpoint]) {
    for endpoint in endpoints {
        let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
    }
}

/// One QUIC connection: the handshake, then its streams and datagrams
/// until it ends, then one log line.
async fn serve(incoming: quinn::Incoming, connection: Connection, shared: Arc<Shared>) {
    let live = shared.live();
    let peer = &connection.peer;
    let deadline = tokio::time::Instant::now() + live.tls_handshake_timeout;
    let Some((conn, completing)) = handshake(incoming, &connection, &live, deadline).await else {
        return;
    };
    let opened = Instant::now();
    debug!(%peer, "connection opened");
    let metrics = shared.gate.metrics_handle();
    let mut tally = Tally::default();
    let mut streams = JoinSet::new();
    let served = run(
        &conn,
        &connection,
        &live.settings,
        metrics.clone(),
        &mut tally,
        &mut streams,
    );
    let reason = match completing {
        None => served.await,
        Some(completed) => match complete(&conn, completed, deadline, peer, served).await {
            Some(reason) => reason,
            None => return,
        },
    };
    // The connection is gone (or cut): every stream ends at once, and logs.
    if !matches!(reason, CloseReason::Cut) {
        while streams.join_next().await.is_some() {}
    }
    let path = conn.stats().path;
    let lost = path.lost_packets;
    if let Some(metrics) = &metrics {
        metrics.closed(&reason, opened.elapsed());
        metrics.quic_lost_packets(lost);
    }
    let lifetime = opened.elapsed().as_millis() as u64;
    macro_rules! close_event {
        ($level:ident) => {
            tracing::$level!(
                %peer,
                %reason,
                streams = tally.streams,
                datagrams = tally.datagrams,
                lost_packets = lost,
                path_mtu = path.current_mtu,
                duration_ms = lifetime,
                "connection from {peer} closed: {reason}"
            )
        };
    }
    if reason.is_routine() {
        close_event!(debug);
    } else {
        close_event!(info);
    }
}

/// The handshake, by `deadline`; `None` (logged) when it failed or the
/// server was cut meanwhile. With the completion still to come when the
/// connection is taken at 0.5-RTT.
async fn handshake(
    incoming: quinn::Incoming,
    connection: &Connection,
    live: &Live,
    deadline: tokio::time::Instant,
) -> Option<(quinn::Connection, Option<quinn::ZeroRttAccepted>)> {
    let peer = &connection.peer;
    let remote = incoming.remote_address();
    let handshake = async {
        let (connecting, half_rtt) = match &live.quic {
            Some(handshakes) => (
                incoming.accept_with(handshakes.for_peer(remote))?,
                handshakes.half_rtt,
            ),
            None => (incoming.accept()?, false),
        };
        // Served at once (0.5-RTT), so that a client's 0-RTT stream data
        // is echoed in the server's first flight rather than after the
        // client's Finished: a resumed connection's first echo then takes
        // one round trip, not two. For a server, `into_0rtt` always
        // succeeds; the handshake must still complete in time (below).
        if half_rtt {
            match connecting.into_0rtt() {
                Ok((conn, completed)) => return Ok((conn, Some(completed))),
                Err(connecting) => return connecting.await.map(|conn| (conn, None)),
            }
        }
        connecting.await.map(|conn| (conn, None))
    };
    let handshake = tokio::select! {
        biased;
        _ = connection.shutdown.cut() => return None,
        handshake = tokio::time::timeout_at(deadline, handshake) => handshake,
    };
    match handshake {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(error)) => {
            info!(%peer, %error, "QUIC handshake with {peer} failed: {error}");
            None
        }
        Err(_) => {
            info!(%peer, "QUIC handshake with {peer} failed: timed out");
            None
        }
    }
}

/// Serves a connection taken at 0.5-RTT while its handshake completes;
/// `None` when it does not complete by `deadline` (closed, and logged as
/// a failed handshake, as when the handshake is awaited before serving).
async fn complete(
    conn: &quinn::Connection,
    completed: quinn::ZeroRttAccepted,
    deadline: tokio::time::Instant,
    peer: &str,
    served: impl std::future::Future<Output = CloseReason>,
) -> Option<CloseReason> {
    tokio::pin!(served);
    let failure = tokio::select! {
        biased;
        // Resolves when the handshake completes or the connection ends
        // before that. (Its value says whether 0-RTT was accepted only on
        // a client.) A connection that has ended by the time this is seen
        // may have completed first, as a client that closes right after
        // its echo does: it is not called a failed handshake, and its end
        // is logged with its close.
        completed = tokio::time::timeout_at(deadline, completed) => match completed {
            Ok(_) => {
                if conn.close_reason().is_none() {
                    debug!(%peer, "QUIC handshake with {peer} done");
                }
                None
            }
            Err(_) => {
                conn.close(quinn::VarInt::from_u32(CLOSE_CODE), b"handshake timed out");
                Some("timed out")
            }
        },
        reason = &mut served => return Some(reason),
    };
    if let Some(error) = failure {
        info!(%peer, %error, "QUIC handshake with {peer} failed: {error}");
        return None;
    }
    Some(served.await)
}

#[derive(Default)]
struct Tally {
    streams: u64,
    datagrams: u64,
}

/// Serves streams and datagrams until the connection ends; at the drain,
/// lets every stream finish, then closes with code 0.
async fn run(
    conn: &quinn::Connection,
    connection: &Connection,
    settings: &ConnectionSettings,
    metrics: Option<Arc<Metrics>>,
    tally: &mut Tally,
    streams: &mut JoinSet<()>,
) -> CloseReason {
    let shutdown = &connection.shutdown;
    let mut draining = false;
    loop {
        if draining && streams.is_empty() {
            conn.close(quinn::VarInt::from_u32(CLOSE_CODE), b"server shutting down");
            return CloseReason::Shutdown;
        }
        tokio::select! {
            biased;
            _ = shutdown.cut() => {
                conn.close(quinn::VarInt::from_u32(CLOSE_CODE), b"server shut down");
                return CloseReason::Cut;
            }
            _ = shutdown.draining(), if !draining => draining = true,
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            opened = conn.accept_bi(), if !draining => match opened {
                Ok((send, recv)) => {
                    tally.streams += 1;
                    if let Some(metrics) = &metrics {
                        metrics.quic_stream();
                    }
                    let stream = QuicStream::new(send, recv);
                    streams.spawn(echo_stream(
                        stream,
                        *settings,
                        shutdown.clone(),
                        metrics.clone(),
                        connection.peer.clone(),
                    ));
                }
                Err(error) => return ended(error),
            },
            opened = conn.accept_uni(), if !draining => match opened {
                Ok(mut recv) => {
                    debug!(peer = %connection.peer, "unidirectional stream refused");
                    let _ = recv.stop(quinn::VarInt::from_u32(CLOSE_CODE));
                }
                Err(error) => return ended(error),
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(datagram) => {
                    tally.datagrams += 1;
                    if let Some(metrics) = &metrics {
                        metrics.quic_datagram();
                    }
                    // Fails only when the client's limit shrank: dropped, as UDP.
                    let _ = conn.send_datagram(datagram);
                }
                Err(error) => return ended(error),
            },
        }
    }
}

/// Why a connection that ended by itself ended.
fn ended(error: quinn::ConnectionError) -> CloseReason {
    use quinn::ConnectionError as E;
    match error {
        E::ApplicationClosed(_) | E::ConnectionClosed(_) | E::LocallyClosed => {
            CloseReason::ClientClosed
        }
        E::TimedOut => CloseReason::IdleTimeout,
        E::Reset => CloseReason::Error(io::ErrorKind::ConnectionReset.into()),
        other => CloseReason::Error(io::Error::other(other)),
    }
}

/// One stream through the echo loop; then, for at most [`LINGER`], waits
/// for the client to acknowledge the echoes, so that closing the
/// connection right after cannot lose them.
async fn echo_stream(
    mut stream: QuicStream,
    settings: ConnectionSettings,
    shutdown: Shutdown,
    metrics: Option<Arc<Metrics>>,
    peer: String,
) {
    let mut stats = ConnectionStats::default();
    let counters = metrics.as_deref().map(|m| m.echo(ListenerKind::Quic));
    // The echo ends at the cut by itself.
    let reason = echo::echo(&mut stream, &settings, &shutdown, &mut stats, counters).await;
    let stopped = stream.send.stopped();
    let _ = tokio::time::timeout(LINGER, stopped).await;
    macro_rules! close_event {
        ($level:ident) => {
            tracing::$level!(
                %peer,
                stream = %stream.send.id(),
                %reason,
                bytes_received = stats.bytes_received,
                bytes_echoed = stats.bytes_echoed,
                "stream of {peer} closed: {reason}"
            )
        };
    }
    if reason.is_routine() {
        close_event!(debug);
    } else {
        close_event!(info);
    }
}
