//! The per-connection echo loop, written once for any byte stream.
//!
//! Shape: `loop { read; write back every whole frame read so far }`. The loop
//! writes straight out of its read buffer, one write per batch of complete
//! frames, and does not read again until that write is done — a client that
//! does not read its echoes stops being read (backpressure), so memory per
//! connection stays at one read buffer plus the frame limit.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    metrics::EchoCounters,
    reason::CloseReason,
    shutdown::{Shutdown, Stage},
    timer::IdleTimer,
};
use crate::{
    codec::{EchoCodec, FrameError, Framer, Framing},
    stream::EchoStream,
};

/// Bytes asked of the socket per read. Large enough that one read usually
/// takes everything the kernel holds for this connection.
pub const READ_CHUNK: usize = 64 * 1024;

/// Longest a lingering close waits for the client to close its side.
pub const LINGER: Duration = Duration::from_secs(2);

/// What every connection of a server shares.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionSettings {
    /// Framing and frame limit.
    pub codec: EchoCodec,
    /// Close after this long with no byte in or out; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Close when an unfinished frame is older than this; `None` = never.
    pub frame_timeout: Option<Duration>,
}

/// Counters of one connection, readable even when its task was cut short.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionStats {
    /// Bytes read from the client.
    pub bytes_received: u64,
    /// Bytes written back.
    pub bytes_echoed: u64,
    /// Bytes of a truncated length frame dropped at end of input.
    pub bytes_truncated: u64,
}

/// Runs the echo loop until the connection ends, then returns why.
///
/// When the shutdown starts draining, the loop stops waiting for input: it
/// takes what the socket already holds, echoes every byte of it that forms
/// a frame, sends FIN and returns [`CloseReason::Shutdown`]. While it only
/// waits for its client to close, it counts as lingering. At the cut it
/// stops wherever it is and returns [`CloseReason::Cut`].
///
/// A plain function around an `async move` block, not an `async fn`: an
/// `async fn` stores its arguments twice in its future, and this future is
/// most of what an idle connection costs.
#[allow(clippy::manual_async_fn)]
pub fn echo<'a, S>(
    stream: &'a mut S,
    settings: &'a ConnectionSettings,
    shutdown: &'a Shutdown,
    stats: &'a mut ConnectionStats,
    counters: Option<&'a EchoCounters>,
) -> impl Future<Output = CloseReason> + 'a
where
    S: EchoStream,
{
    async move {
        let input_clock = stream.input_clock();
        let mut conn = Echo {
            stream,
            framer: Framer::new(settings.codec, counters.is_some()),
            idle: IdleTimer::new(settings.idle_timeout, settings.frame_timeout, input_clock),
            buf: BytesMut::new(),
            shutdown,
            stats,
            counters,
        };
        // One registration with the shutdown at a time, for both stages:
        // at the drain it wakes the task, and the loop, seeing the flag,
        // stops reading; at the cut the connection ends where it is.
        let mut stages = std::pin::pin!(shutdown.stages());
        let mut run = std::pin::pin!(conn.run());
        let ran = loop {
            tokio::select! {
                biased;
                stage = &mut stages => match stage {
                    Stage::Drain => continue,
                    Stage::Cut => return CloseReason::Cut,
                },
                ran = &mut run => break ran,
            }
        };
        match ran {
            Ok(reason) => reason,
            Err(error) if error.kind() == io::ErrorKind::TimedOut => CloseReason::IdleTimeout,
            Err(error) => CloseReason::Error(error),
        }
    }
}

struct Echo<'a, S> {
    stream: &'a mut S,
    framer: Framer,
    idle: IdleTimer,
    /// Input not yet echoed: always starts on a frame boundary.
    buf: BytesMut,
    shutdown: &'a Shutdown,
    stats: &'a mut ConnectionStats,
    /// The server's metrics, when they are on.
    counters: Option<&'a EchoCounters>,
}

impl<S: EchoStream> Echo<'_, S> {
    /// The loop. It sees the drain by its flag (one atomic load per turn
    /// and per wake-up); [`echo`] wakes it when the drain begins. The rare
    /// ends are boxed: their states (each with a linger timer) would
    /// otherwise be part of every connection's future.
    async fn run(&mut self) -> io::Result<CloseReason> {
        let shutdown = self.shutdown;
        loop {
            let (stream, buf) = (&mut *self.stream, &mut self.buf);
            let read = tokio::select! {
                biased;
                read = std::future::poll_fn(|cx| {
                    if shutdown.is_draining() {
                        return Poll::Ready(None);
                    }
                    poll_read_lazily(stream, buf, cx).map(Some)
                }) => read.transpose()?,
                reason = self.idle.expired(true) => return Ok(reason),
            };
            let Some(read) = read else {
                return Box::pin(self.finish_draining()).await;
            };
            if read == 0 {
                return Box::pin(self.finish(CloseReason::ClientClosed)).await;
            }
            self.received(read);
            if let Some(error) = self.echo_complete_frames().await? {
                return Box::pin(self.close_early(CloseReason::FrameTooLong(error))).await;
            }
        }
    }

    /// Ends a connection whose client may still be sending: FIN after the
    /// echoes written so far, then a lingering close (as nginx does): the
    /// client's input is discarded until it closes its side too, for at
    /// most [`LINGER`]. Closing with unread input would send a reset, and a
    /// reset makes the client's kernel drop echoes it has not read yet.
    /// While lingering the connection counts as such: it owes the client
    /// nothing more.
    async fn close_early(&mut self, reason: CloseReason) -> io::Result<CloseReason> {
        if !shut_write(self.stream).await? {
            return Ok(reason);
        }
        let _lingering = self.shutdown.linger();
        let (stream, buf) = (&mut *self.stream, &mut self.buf);
        let _ = tokio::time::timeout(LINGER, async {
            loop {
                buf.clear();
                match std::future::poll_fn(|cx| poll_read_lazily(stream, buf, cx)).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        self.buf.clear();
        Ok(reason)
    }

    /// Room for one more read, in a pooled buffer when this one is empty.
    fn reserve_read_space(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf = buffer_pool::take();
        }
        self.buf.reserve(READ_CHUNK);
    }

    fn received(&mut self, bytes: usize) {
        self.stats.bytes_received += bytes as u64;
        if let Some(counters) = self.counters {
            counters.bytes_received.inc_by(bytes as u64);
        }
        self.idle.touch();
        tracing::trace!(target: "echod::connection", bytes, "read");
    }

    /// Writes back every whole frame in the buffer, in one write.
    async fn echo_complete_frames(&mut self) -> io::Result<Option<FrameError>> {
        let batch = self.framer.feed(&self.buf);
        self.write_out(batch.len).await?;
        if let Some(counters) = self.counters {
            counters.echoed(batch.frames);
        }
        // The frame timeout runs from the first byte of the oldest
        // unfinished frame: a new one started if any frame completed.
        if self.buf.is_empty() {
            self.idle.partial_since = None;
        } else if batch.len > 0 || self.idle.partial_since.is_none() {
            self.idle.frame_started();
        }
        Ok(batch.error)
    }

    /// Writes the first `len` bytes of the buffer and drops them from it.
    /// Not interrupted by shutdown: a write in progress is finished, and
    /// only the grace deadline cuts it.
    async fn write_out(&mut self, len: usize) -> io::Result<()> {
        let mut written = 0;
        while written < len {
            let n = tokio::select! {
                biased;
                n = self.stream.write(&self.buf[written..len]) => n?,
                _ = self.idle.expired(false) => return Err(io::ErrorKind::TimedOut.into()),
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            written += n;
            self.stats.bytes_echoed += n as u64;
            if let Some(counters) = self.counters {
                counters.bytes_echoed.inc_by(n as u64);
            }
            self.idle.touch();
        }
        if len > 0 && S::NEEDS_FLUSH {
            tokio::select! {
                biased;
                flushed = self.stream.flush() => flushed?,
                _ = self.idle.expired(false) => return Err(io::ErrorKind::TimedOut.into()),
            }
        }
        self.buf.advance(len);
        Ok(())
    }

    /// Shutdown: echo what the socket holds now, without waiting for more.
    async fn finish_draining(&mut self) -> io::Result<CloseReason> {
        loop {
            self.reserve_read_space();
            match self.stream.read_arrived(&mut self.buf)? {
                Some(0) | None => break,
                Some(read) => {
                    self.received(read);
                    if let Some(error) = self.echo_complete_frames().await? {
                        return self.close_early(CloseReason::FrameTooLong(error)).await;
                    }
                }
            }
        }
        self.finish(CloseReason::Shutdown).await
    }

    /// End of input: echo a final unterminated frame, drop a truncated one,
    /// then send FIN.
    async fn finish(&mut self, reason: CloseReason) -> io::Result<CloseReason> {
        if let Some(error) = self.echo_complete_frames().await? {
            return self.close_early(CloseReason::FrameTooLong(error)).await;
        }
        let remainder = self.framer.finish(&self.buf);
        self.write_out(remainder.echo).await?;
        if let (Some(counters), true) = (self.counters, remainder.echo > 0) {
            if self.framer.codec().framing() != Framing::Raw {
                counters.echoed(1);
            }
        }
        self.stats.bytes_truncated += remainder.truncated as u64;
        self.buf.clear();
        if matches!(reason, CloseReason::ClientClosed) {
            // A client that half-closed but does not read: its reason stands.
            shut_write(self.stream).await?;
            return Ok(reason);
        }
        self.close_early(reason).await
    }
}

/// Closes a connection the server refuses before any echo (a bad PROXY
/// header, a failed TLS handshake) the way the echo loop ends early: FIN,
/// then what the client still sends is discarded until it closes, for at
/// most [`LINGER`]. Dropping a socket with unread input sends a reset,
/// and a reset can make the client's kernel drop the last thing the server
/// sent it, such as the TLS alert that says why it was refused.
pub async fn close_gently<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, shutdown: &Shutdown) {
    use tokio::io::AsyncReadExt;
    if !matches!(shut_write(stream).await, Ok(true)) {
        return;
    }
    let _lingering = shutdown.linger();
    let mut discard = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(1..) = stream.read(&mut discard).await {}
    })
    .await;
}

/// Sends FIN (on TLS: `close_notify`, then FIN), waiting at most
/// [`LINGER`]: a TLS alert stuck behind a send buffer its client never
/// drains must not hold the task (and its slot) forever. `Ok(false)` when
/// it did not complete in time: the client is not reading, so there is
/// nothing to linger for, and the connection's close reason stands.
async fn shut_write<S: AsyncWrite + Unpin>(stream: &mut S) -> io::Result<bool> {
    match tokio::time::timeout(LINGER, stream.shutdown()).await {
        Ok(done) => done.map(|()| true),
        Err(_) => Ok(false),
    }
}

/// Reads into `buf`, holding a buffer only while bytes are there: an
/// empty buffer goes back to the pool whenever the read has to wait, so an
/// idle connection (and a spurious readiness event, which a newly
/// registered socket gets) costs no buffer memory.
fn poll_read_lazily<S: EchoStream>(
    stream: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.is_empty() && stream.poll_read_ready(cx).is_pending() {
        buffer_pool::give_back(std::mem::take(buf));
        return Poll::Pending;
    }
    if buf.capacity() == 0 {
        *buf = buffer_pool::take();
    }
    buf.reserve(READ_CHUNK);
    let read = tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf);
    if read.is_pending() && buf.is_empty() {
        buffer_pool::give_back(std::mem::take(buf));
    }
    read
}

/// Read buffers recycled per thread: connections hold a buffer only while
/// they have unechoed input, and taking one back is not a malloc.
mod buffer_pool {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::READ_CHUNK;

    /// Buffers kept per thread; beyond this, quiet connections free theirs.
    const KEEP: usize = 64;

    thread_local! {
        static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn take() -> BytesMut {
        POOL.with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
    }

    /// Keeps an empty buffer of the usual size for reuse; drops the rest.
    pub(super) fn give_back(mut buf: BytesMut) {
        if !buf.is_empty() || buf.capacity() == 0 {
            return;
        }
        // Reclaims the whole allocation when this handle is its only owner.
        buf.reserve(READ_CHUNK);
        if buf.capacity() >= READ_CHUNK && buf.capacity() <= 2 * READ_CHUNK {
            POOL.with_borrow_mut(|pool| {
                if pool.len() < KEEP {
                    pool.push(buf);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Framing;
    use tokio::net::{TcpListener, TcpStream};

    /// A real socket whose shutdown never completes, as a TLS
    /// `close_notify` does behind a send buffer its client never drains.
    struct StuckShutdown(TcpStream);

    impl AsyncRead for StuckShutdown {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for StuckShutdown {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl EchoStream for StuckShutdown {
        fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.0.poll_read_ready(cx)
        }
        fn read_arrived(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
            self.0.read_arrived(buf)
        }
    }

    #[tokio::test]
    async fn a_close_whose_shutdown_never_completes_ends_at_the_linger_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut served = StuckShutdown(listener.accept().await.unwrap().0);
        tokio::io::AsyncWriteExt::write_all(&mut client, &[b'x'; 100])
            .await
            .unwrap();
        let settings = ConnectionSettings {
            codec: EchoCodec::new(Framing::Lines, 10),
            idle_timeout: None,
            frame_timeout: None,
        };
        let shutdown = super::super::shutdown::Coordinator::new().shutdown();
        let mut stats = ConnectionStats::default();
        let ended = tokio::time::timeout(
            LINGER * 5,
            echo(&mut served, &settings, &shutdown, &mut stats, None),
        )
        .await
        .expect("the connection ended although its shutdown never completed");
        assert!(matches!(ended, CloseReason::FrameTooLong(_)), "{ended}");
    }
}
