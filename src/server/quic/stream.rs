//! A QUIC bidirectional stream as the echo loop's byte stream.

use std::{
    io,
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stream::EchoStream;

/// A QUIC bidirectional stream as the echo loop's byte stream.
pub struct QuicStream {
    pub(super) send: quinn::SendStream,
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
    pub(super) fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> QuicStream {
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
