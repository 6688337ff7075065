//! `quic:HOST:PORT`: one bidirectional QUIC stream as the client's byte
//! stream (quinn, with the same rustls settings as `tls:`; ALPN `echo`).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{connect::TlsTarget, ClientError};
use crate::addr::ListenAddr;

/// The ALPN protocol echod's `quic:` listeners accept by default.
pub const ALPN: &[u8] = b"echo";

/// One stream of a QUIC connection; the connection closes (code 0) when
/// its last stream is dropped.
pub struct QuicConn {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    shared: std::sync::Arc<Shared>,
}

/// What the streams of one connection share.
struct Shared {
    connection: quinn::Connection,
    /// Keeps the endpoint's socket and driver alive as long as a stream.
    endpoint: quinn::Endpoint,
    /// The runtime whose task drives the endpoint.
    runtime: tokio::runtime::Id,
}

impl QuicConn {
    /// Another bidirectional stream on the same connection.
    pub async fn open_stream(&self, timeout: Duration) -> Result<QuicConn, ClientError> {
        let (send, recv) = tokio::time::timeout(timeout, self.shared.connection.open_bi())
            .await
            .map_err(|_| ClientError::Failed("opening a QUIC stream timed out".into()))?
            .map_err(|error| ClientError::Failed(format!("cannot open a QUIC stream: {error}")))?;
        Ok(QuicConn {
            send,
            recv,
            shared: self.shared.clone(),
        })
    }
}

/// Connects, completes the handshake and opens a stream, within `timeout`.
pub async fn connect(
    addr: &ListenAddr,
    tls: &TlsTarget,
    timeout: Duration,
) -> Result<QuicConn, ClientError> {
    let failed = |why: String| ClientError::Failed(format!("cannot connect to quic:{addr}: {why}"));
    let remote = crate::addr::resolve(addr)
        .await
        .map_err(|error| failed(error.to_string()))?[0];
    let endpoint = match spare_endpoint(remote.is_ipv6()) {
        Some(endpoint) => endpoint,
        None => new_endpoint(remote.is_ipv6()).map_err(|error| failed(error.to_string()))?,
    };
    let mut config = (*tls.config).clone();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config)
        .map_err(|error| failed(error.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.mtu_discovery_config(Some(crate::quic::mtu_discovery(remote)));
    client.transport_config(Arc::new(transport));
    let name = tls.name.to_str();
    let connecting = endpoint
        .connect_with(client, remote, &name)
        .map_err(|error| failed(error.to_string()))?;
    let opening = async {
        // 0-RTT when the configuration enables early data and a resumable
        // session allows it: the stream and its first bytes go out with
        // the handshake. If the server then refuses the early data, the
        // stream's operations fail with `ZeroRttRejected`.
        let connection = match connecting.into_0rtt() {
            Ok((connection, accepted)) => {
                let counts = tls.early_data.clone();
                counts.sent.fetch_add(1, Ordering::Relaxed);
                // Resolves when the handshake completes; tallied apart, so
                // that the echo does not wait for it.
                tokio::spawn(async move {
                    if accepted.await {
                        counts.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                });
                connection
            }
            Err(connecting) => connecting.await?,
        };
        let (send, recv) = connection.open_bi().await?;
        Ok::<_, quinn::ConnectionError>((connection, send, recv))
    };
    let (connection, send, recv) = tokio::time::timeout(timeout, opening)
        .await
        .map_err(|_| failed(format!("timed out after {}s", timeout.as_secs_f64())))?
        .map_err(|error| failed(error.to_string()))?;
    Ok(QuicConn {
        send,
        recv,
        shared: std::sync::Arc::new(Shared {
            connection,
            endpoint,
            runtime: tokio::runtime::Handle::current().id(),
        }),
    })
}

/// An endpoint whose connection was closed: its close must still be sent,
/// and the next connection on the same runtime may reuse it.
struct Closed {
    endpoint: quinn::Endpoint,
    runtime: tokio::runtime::Id,
    ipv6: bool,
}

/// Endpoints of closed connections. Reused because an endpoint is costly
/// to make: quinn gives each a receive buffer of its largest datagram ×
/// GRO segments × batch (18 MB at 8,952 B), allocated and zeroed, and
/// `bench --reconnect` over QUIC spent most of its time in those page
/// faults.
static CLOSED: std::sync::Mutex<Vec<Closed>> = std::sync::Mutex::new(Vec::new());

/// Idle endpoints kept for reuse beyond those still closing.
const SPARE: usize = 64;

fn closed() -> std::sync::MutexGuard<'static, Vec<Closed>> {
    CLOSED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A closed connection's endpoint for the same family, made on this
/// runtime (an endpoint's driver is a task of the runtime that made it).
fn spare_endpoint(ipv6: bool) -> Option<quinn::Endpoint> {
    let runtime = tokio::runtime::Handle::current().id();
    let mut closed = closed();
    let at = closed
        .iter()
        .position(|spare| spare.runtime == runtime && spare.ipv6 == ipv6)?;
    Some(closed.swap_remove(at).endpoint)
}

/// A client endpoint on an ephemeral port of the wildcard address.
fn new_endpoint(ipv6: bool) -> io::Result<quinn::Endpoint> {
    let local = SocketAddr::from(if ipv6 {
        (std::net::Ipv6Addr::UNSPECIFIED.into(), 0)
    } else {
        (std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED), 0)
    });
    let socket = std::net::UdpSocket::bind(local)?;
    quinn::Endpoint::new(
        crate::quic::endpoint_config(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.connection.close(0u32.into(), b"done");
        let mut closed = closed();
        // Bounded: beyond `SPARE`, an endpoint whose closes are all done
        // is let go (its socket closes).
        let mut idle = 0;
        closed.retain(|spare| {
            if spare.endpoint.open_connections() > 0 {
                return true;
            }
            idle += 1;
            idle <= SPARE
        });
        closed.push(Closed {
            endpoint: self.endpoint.clone(),
            runtime: self.runtime,
            ipv6: self.connection.remote_address().is_ipv6(),
        });
    }
}

/// Before the runtime ends: lets every closed connection's close reach
/// its server (at most a second in all), so the server sees a close
/// instead of waiting out its idle timeout. The endpoints are let go.
pub async fn finish_closing() {
    let endpoints: Vec<_> = std::mem::take(&mut *closed())
        .into_iter()
        .map(|closed| closed.endpoint)
        .collect();
    let all = async {
        for endpoint in &endpoints {
            endpoint.wait_idle().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), all).await;
}

impl AsyncRead for QuicConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf)
    }
}

impl AsyncWrite for QuicConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}
