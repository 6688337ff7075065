//! What the stream driver needs of each kind of connection.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{io::AsyncRead, net::TcpStream};

use crate::client::Conn;

/// Writes without waiting: what the driver's send side needs, under
/// tokio's tasks and under the readiness loop alike.
pub trait WriteNow {
    /// Writes what the socket takes now (`WouldBlock` when nothing).
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;
}

/// What the stream driver's task needs of a socket: TCP, Unix, TLS and
/// QUIC streams.
pub trait BenchStream: WriteNow + AsyncRead + Unpin + 'static {
    /// Ready when a write can make progress; for TLS, this pushes out
    /// encrypted bytes the session still holds.
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Bytes accepted by `try_write` that are not on the socket yet.
    fn wants_flush(&self) -> bool {
        false
    }
    /// This kind of stream out of a freshly opened connection (churn).
    fn from_conn(conn: Conn) -> Option<Self>
    where
        Self: Sized;
}

impl WriteNow for TcpStream {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
}

impl BenchStream for TcpStream {
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }
    fn from_conn(conn: Conn) -> Option<Self> {
        match conn {
            Conn::Tcp(stream) => Some(stream),
            _ => None,
        }
    }
}

#[cfg(unix)]
impl WriteNow for tokio::net::UnixStream {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        tokio::net::UnixStream::try_write(self, buf)
    }
}

#[cfg(unix)]
impl BenchStream for tokio::net::UnixStream {
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::UnixStream::poll_write_ready(self, cx)
    }
    fn from_conn(conn: Conn) -> Option<Self> {
        match conn {
            Conn::Unix(stream) => Some(stream),
            _ => None,
        }
    }
}

/// One `poll_write` that does not wait: `WouldBlock` where it would.
fn write_now<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, buf: &[u8]) -> io::Result<usize> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(stream).poll_write(&mut cx, buf) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl WriteNow for crate::tls::ClientStream<TcpStream> {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Encrypts into the session and writes what the socket takes; the
        // real waker is registered by `poll_write_ready`.
        write_now(self, buf)
    }
}

impl BenchStream for crate::tls::ClientStream<TcpStream> {
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        use tokio::io::AsyncWrite;
        Pin::new(self).poll_flush(cx)
    }
    fn wants_flush(&self) -> bool {
        self.get_ref().1.wants_write()
    }
    fn from_conn(conn: Conn) -> Option<Self> {
        match conn {
            Conn::Tls(stream) => Some(*stream),
            _ => None,
        }
    }
}

impl WriteNow for crate::client::quic::QuicConn {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Into quinn's send buffer; it would wait only on flow control.
        write_now(self, buf)
    }
}

impl BenchStream for crate::client::quic::QuicConn {
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        use tokio::io::AsyncWrite;
        // An empty write registers the waker when flow control blocks.
        Pin::new(self).poll_write(cx, &[]).map_ok(|_| ())
    }
    fn from_conn(conn: Conn) -> Option<Self> {
        match conn {
            Conn::Quic(stream) => Some(*stream),
            _ => None,
        }
    }
}
