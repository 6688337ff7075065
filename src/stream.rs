//! Byte-stream plumbing shared by every transport: the [`EchoStream`]
//! trait the echo loop serves, its implementations for TCP and Unix
//! sockets, and [`Rewind`], which puts bytes already read back in front of a
//! stream. Accepting a connection and choosing what runs over it are not
//! handled here (as in hyper's `common/io`).

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clock::Stamp;

/// Whether an I/O error means only that the peer went away (reset, broken
/// pipe, aborted, or a TLS stream cut without `close_notify`): routine for
/// an echo endpoint, not worth an operator's attention.
pub fn is_disconnect(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// A byte stream the echo loop can serve.
pub trait EchoStream: AsyncRead + AsyncWrite + Unpin {
    /// Ready when a read would not wait. The loop waits here holding no
    /// buffer, so an idle connection costs no buffer memory.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Reads bytes that have already arrived, without waiting: `Ok(None)`
    /// when there are none. Unlike `poll_read`, this must ask the operating
    /// system, not the runtime's last readiness event, which may lag behind:
    /// shutdown uses it to find every byte received before the signal.
    fn read_arrived(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>>;

    /// True when written bytes may wait inside the stream until flushed
    /// (TLS records); then the loop flushes after each batch. A plain
    /// socket writes straight to the kernel and skips that step.
    const NEEDS_FLUSH: bool = false;

    /// For streams whose layers hold input the echo loop cannot see yet
    /// (TLS: ciphertext of a record still arriving), when the oldest such
    /// input began, so the frame timeout covers it too.
    fn input_clock(&self) -> Option<Arc<InputClock>> {
        None
    }
}

/// When the oldest incomplete unit of input below the echo loop began
/// (`None` when there is none), shared between the layer that sees the
/// input and the echo loop's timer.
#[derive(Debug, Default)]
pub struct InputClock {
    /// The [`Stamp`] in nanoseconds, plus one; 0 = nothing incomplete.
    since: AtomicU64,
}

impl InputClock {
    pub fn since(&self) -> Option<Stamp> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Stamp::from_nanos(nanos - 1)),
        }
    }

    /// Incomplete input is waiting: starts the clock if it is not running.
    pub fn incomplete(&self) {
        if self.since.load(Ordering::Relaxed) == 0 {
            let nanos = Stamp::now().as_nanos().min(u64::MAX - 1);
            self.since.store(nanos + 1, Ordering::Relaxed);
        }
    }

    /// Everything received so far is complete.
    pub fn complete(&self) {
        self.since.store(0, Ordering::Relaxed);
    }
}

impl EchoStream for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
    fn read_arrived(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        recv_arrived(socket2::SockRef::from(&*self), buf)
    }
}

/// [`EchoStream::read_arrived`] for any socket tokio has made non-blocking.
pub fn recv_arrived(socket: socket2::SockRef<'_>, buf: &mut BytesMut) -> io::Result<Option<usize>> {
    loop {
        match socket.recv(buf.spare_capacity_mut()) {
            Ok(read) => {
                // SAFETY: recv initialised `read` bytes of the spare
                // capacity, which directly follows the buffer's length.
                unsafe { buf.set_len(buf.len() + read) };
                return Ok(Some(read));
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
}

#[cfg(unix)]
impl EchoStream for tokio::net::UnixStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::UnixStream::poll_read_ready(self, cx)
    }

    fn read_arrived(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        recv_arrived(socket2::SockRef::from(&*self), buf)
    }
}

/// A stream with bytes already read from it put back in front.
pub struct Rewind<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: EchoStream> EchoStream for Rewind<S> {
    const NEEDS_FLUSH: bool = S::NEEDS_FLUSH;

    fn input_clock(&self) -> Option<Arc<InputClock>> {
        self.inner.input_clock()
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_read_ready(cx)
    }

    fn read_arrived(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len();
            buf.extend_from_slice(&self.prefix);
            self.prefix.clear();
            return Ok(Some(n));
        }
        self.inner.read_arrived(buf)
    }
}
