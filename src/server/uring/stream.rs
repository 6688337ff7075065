//! [`UringStream`]: a connected socket served through this thread's ring,
//! as an [`EchoStream`], so the session (PROXY, TLS, HTTP) and the echo
//! loop run over it unchanged.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{driver, ring::Ring};
use crate::stream::EchoStream;

pub struct UringStream {
    id: (u32, u32),
    /// The thread whose ring serves it: the engine runs only on
    /// current-thread runtimes, so a connection never leaves it.
    thread: usize,
    fd: OwnedFd,
}

impl UringStream {
    /// Serves `fd` (a connected, non-blocking socket) through this
    /// thread's ring; gives it back when this thread cannot have one.
    pub fn new(fd: OwnedFd) -> Result<UringStream, (io::Error, OwnedFd)> {
        match driver::with(|ring| ring.register(fd.as_raw_fd())) {
            Ok(id) => Ok(UringStream {
                id,
                thread: driver::thread_tag(),
                fd,
            }),
            Err(error) => Err((error, fd)),
        }
    }

    fn ring<R>(&self, f: impl FnOnce(&mut Ring) -> R) -> io::Result<R> {
        if driver::thread_tag() != self.thread {
            return Err(io::Error::other("io_uring stream used off its thread"));
        }
        driver::with(f)
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        if driver::thread_tag() == self.thread {
            driver::with_existing(|ring| ring.release(self.id));
        }
        // Then `fd` closes: everything that named it has been submitted.
    }
}

impl AsyncRead for UringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let read = self.ring(|ring| {
            // SAFETY: `read` only writes the bytes it reports, and they are
            // marked initialised below before anything reads them.
            let out = unsafe { &mut *(buf.unfilled_mut() as *mut [_] as *mut [u8]) };
            match ring.read(id, out) {
                Some(result) => Poll::Ready(result),
                None => ring.poll_read_ready(id, cx).map(|ready| ready.map(|()| 0)),
            }
        });
        match read {
            Ok(Poll::Ready(Ok(n))) => {
                // SAFETY: `n` bytes of the unfilled part were written.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Ok(Poll::Ready(Err(error))) | Err(error) => Poll::Ready(Err(error)),
            Ok(Poll::Pending) => Poll::Pending,
        }
    }
}

impl AsyncWrite for UringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        self.ring(|ring| ring.poll_write(id, cx, data))?
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        self.ring(|ring| ring.poll_flush(id, cx))?
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        std::task::ready!(self.ring(|ring| ring.poll_flush(id, cx))?)?;
        // SAFETY: shutdown(2) on the socket this stream owns.
        if unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) } != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ENOTCONN) {
                return Poll::Ready(Err(error));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl EchoStream for UringStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ring(|ring| ring.poll_read_ready(self.id, cx))?
    }

    /// Shutdown asks the kernel: one `io_uring_enter` delivers what the
    /// armed receive has taken; with no receive armed (paused, or never
    /// started), a direct non-blocking `recv` reads the socket.
    fn read_arrived(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        enum Arrived {
            Read(usize),
            /// The armed receive has delivered everything there is.
            Nothing,
            /// No receive is armed: the socket holds what arrived.
            AskSocket,
        }
        let id = self.id;
        let arrived = self.ring(|ring| {
            ring.turn()?;
            let spare = buf.spare_capacity_mut();
            // SAFETY: as in `poll_read`: only the reported bytes are written.
            let out = unsafe { &mut *(spare as *mut [_] as *mut [u8]) };
            match ring.read(id, out) {
                Some(Ok(n)) => {
                    // SAFETY: `n` bytes of the spare capacity were written.
                    unsafe { buf.set_len(buf.len() + n) };
                    Ok(Arrived::Read(n))
                }
                Some(Err(error)) => Err(error),
                None if ring.receiving(id) => Ok(Arrived::Nothing),
                None => Ok(Arrived::AskSocket),
            }
        })??;
        match arrived {
            Arrived::Read(n) => Ok(Some(n)),
            Arrived::Nothing => Ok(None),
            Arrived::AskSocket => {
                crate::stream::recv_arrived(socket2::SockRef::from(&self.fd), buf)
            }
        }
    }
}

/// A listening socket accepted on through this thread's ring: one
/// multishot accept, paused while [`ACCEPT_HOLD`](super::ring::ACCEPT_HOLD)
/// connections wait for the accept loop. It borrows the descriptor: the
/// listener that owns it must outlive it (drop this first, so the cancel
/// is submitted before the descriptor closes).
pub struct UringListener {
    id: (u32, u32),
    thread: usize,
}

impl UringListener {
    pub fn new(fd: std::os::fd::RawFd) -> io::Result<UringListener> {
        Ok(UringListener {
            id: driver::with(|ring| ring.register(fd))?,
            thread: driver::thread_tag(),
        })
    }

    /// The next connection, non-blocking and close-on-exec.
    pub async fn accept(&self) -> io::Result<OwnedFd> {
        std::future::poll_fn(|cx| {
            if driver::thread_tag() != self.thread {
                return Poll::Ready(Err(io::Error::other(
                    "io_uring listener used off its thread",
                )));
            }
            driver::with(|ring| ring.poll_accept(self.id, cx))?
        })
        .await
    }
}

impl Drop for UringListener {
    fn drop(&mut self) {
        if driver::thread_tag() == self.thread {
            driver::with_existing(|ring| ring.release(self.id));
        }
    }
}
