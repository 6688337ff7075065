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

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    task::JoinSet,
};
use tracing::{debug, info};

use super::{
    echo::{self, ConnectionSettings, ConnectionStats, LINGER},
    listen::ListenerKind,
    metrics::Metrics,
    reason::CloseReason,
    session::{Connection, Shared},
    shutdown::Shutdown,
};
use crate::{config::Config, stream::EchoStream, tls::TlsError};

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

/// quinn's server configuration: the `tls:` certificate, key and client CA,
/// the configured ALPN list, and echod's limits as transport parameters.
pub fn server_config(
    config: &Config,
    warnings: &mut Vec<String>,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = (*crate::tls::server_config(&config.tls, warnings)?).clone();
    tls.alpn_protocols = config
        .quic_alpn
        .iter()
        .map(|protocol| protocol.as_bytes().to_vec())
        .collect();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|error| TlsError(format!("QUIC: {error}")))?;
    let mut transport = quinn::TransportConfig::default();
    let streams = u32::try_from(config.quic_max_streams).unwrap_or(u32::MAX);
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(streams))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(UNI_STREAMS))
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER);
    // Capped at QUIC's largest idle timeout (2^62 ms).
    let idle = config.idle_timeout.map(|timeout| {
        quinn::IdleTimeout::try_from(timeout)
            .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::MAX))
    });
    transport.max_idle_timeout(idle);

    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    Ok(server)
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
        quinn::EndpointConfig::default(),
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
    let handshake = async { incoming.accept()?.await };
    let handshake = tokio::select! {
        biased;
        _ = connection.shutdown.cut() => return,
        handshake = tokio::time::timeout(live.tls_handshake_timeout, handshake) => handshake,
    };
    let conn = match handshake {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            info!(%peer, %error, "QUIC handshake with {peer} failed: {error}");
            return;
        }
        Err(_) => {
            info!(%peer, "QUIC handshake with {peer} failed: timed out");
            return;
        }
    };
    let opened = Instant::now();
    debug!(%peer, "connection opened");
    let metrics = shared.gate.metrics_handle();
    let mut tally = Tally::default();
    let mut streams = JoinSet::new();
    let reason = run(
        &conn,
        &connection,
        &live.settings,
        metrics.clone(),
        &mut tally,
        &mut streams,
    )
    .await;
    // The connection is gone (or cut): every stream ends at once, and logs.
    if !matches!(reason, CloseReason::Cut) {
        while streams.join_next().await.is_some() {}
    }
    let lost = conn.stats().path.lost_packets;
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
                        shutdown.for_task(),
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
    let reason = tokio::select! {
        biased;
        _ = shutdown.cut() => CloseReason::Cut,
        reason = echo::echo(&mut stream, &settings, &shutdown, &mut stats, counters) => reason,
    };
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

/// A QUIC bidirectional stream as the echo loop's byte stream.
pub struct QuicStream {
    send: quinn::SendStream,
    /// Behind a lock only because readiness is asked through `&self`; it
    /// is only ever taken by the stream's own task.
    recv: Mutex<Inbox>,
}

/// The receive side, with what a readiness check read ahead.
struct Inbox {
    recv: quinn::RecvStream,
    ahead: BytesMut,
    /// The client finished its side (after `ahead`), or the stream failed.
    end: Option<io::Result<()>>,
}

/// Bytes a readiness check reads ahead.
const AHEAD: usize = 2048;

impl QuicStream {
    fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> QuicStream {
        QuicStream {
            send,
            recv: Mutex::new(Inbox {
                recv,
                ahead: BytesMut::new(),
                end: None,
            }),
        }
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.recv
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inbox {
    /// Reads what has arrived into `ahead` (or notes the end); pending
    /// when nothing has.
    fn poll_ahead(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.ahead.is_empty() || self.end.is_some() {
            return Poll::Ready(());
        }
        let mut chunk = [0u8; AHEAD];
        let mut buf = ReadBuf::new(&mut chunk);
        match self.recv.poll_read_buf(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                self.end = Some(Ok(()));
                Poll::Ready(())
            }
            Poll::Ready(Ok(())) => {
                self.ahead.extend_from_slice(buf.filled());
                Poll::Ready(())
            }
            Poll::Ready(Err(error)) => {
                self.end = Some(Err(error.into()));
                Poll::Ready(())
            }
        }
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut inbox = self.inbox();
        if !inbox.ahead.is_empty() {
            let n = inbox.ahead.len().min(buf.remaining());
            buf.put_slice(&inbox.ahead.split_to(n));
            return Poll::Ready(Ok(()));
        }
        match inbox.end.take() {
            Some(Ok(())) => {
                inbox.end = Some(Ok(()));
                return Poll::Ready(Ok(()));
            }
            Some(Err(error)) => return Poll::Ready(Err(error)),
            None => {}
        }
        inbox.recv.poll_read_buf(cx, buf).map_err(Into::into)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

impl EchoStream for QuicStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inbox().poll_ahead(cx).map(Ok)
    }

    fn read_arrived(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let mut inbox = self.inbox();
        let mut read = 0;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if !inbox.ahead.is_empty() {
                read += inbox.ahead.len();
                buf.extend_from_slice(&inbox.ahead.split());
            }
            match inbox.end.take() {
                Some(Ok(())) => {
                    inbox.end = Some(Ok(()));
                    return Ok(Some(read));
                }
                Some(Err(error)) if read == 0 => return Err(error),
                Some(Err(error)) => {
                    inbox.end = Some(Err(error));
                    return Ok(Some(read));
                }
                None => {}
            }
            if inbox.poll_ahead(&mut cx).is_pending() {
                return Ok((read > 0).then_some(read));
            }
        }
    }
}
