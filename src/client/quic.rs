//! `quic:HOST:PORT`: one bidirectional QUIC stream as the client's byte
//! stream (quinn, with the same rustls settings as `tls:`; ALPN `echo`).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
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
    let local = SocketAddr::from(if remote.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED.into(), 0)
    } else {
        (std::net::IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED), 0)
    });
    let socket = std::net::UdpSocket::bind(local).map_err(|error| failed(error.to_string()))?;
    let mut endpoint = quinn::Endpoint::new(
        crate::quic::endpoint_config(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|error| failed(error.to_string()))?;
    let mut config = (*tls.config).clone();
    config.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config)
        .map_err(|error| failed(error.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.mtu_discovery_config(Some(crate::quic::mtu_discovery(remote)));
    client.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(client);
    let name = tls.name.to_str();
    let connecting = endpoint
        .connect(remote, &name)
        .map_err(|error| failed(error.to_string()))?;
    let opening = async {
        let connection = connecting.await?;
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
        }),
    })
}

/// Endpoints whose connection was closed: their close must still be sent.
static CLOSING: std::sync::Mutex<Vec<quinn::Endpoint>> = std::sync::Mutex::new(Vec::new());

impl Drop for Shared {
    fn drop(&mut self) {
        self.connection.close(0u32.into(), b"done");
        let mut closing = CLOSING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Bounded: an endpoint whose close is done is let go (its socket
        // closes), so `bench --reconnect` does not pile up sockets.
        closing.retain(|endpoint| endpoint.open_connections() > 0);
        closing.push(self.endpoint.clone());
    }
}

/// Before the runtime ends: lets every closed connection's close reach
/// its server (at most a second in all), so the server sees a close
/// instead of waiting out its idle timeout.
pub async fn finish_closing() {
    let endpoints = std::mem::take(&mut *CLOSING.lock().unwrap_or_else(|p| p.into_inner()));
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
