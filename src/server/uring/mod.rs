//! The io_uring engine (`engine = "io-uring"`, Linux): plain TCP and Unix
//! connections served through one io_uring per thread instead of epoll
//! readiness and a `recv`/`send` pair per message. A connection becomes a
//! [`UringStream`], an [`EchoStream`](crate::stream::EchoStream) like any
//! other, so framing, limits, timeouts, PROXY headers and the shutdown
//! contract are the same code as on the tokio engine.
//!
//! It needs a connection to stay on one thread (its ring is the thread's),
//! so it runs on current-thread runtimes: per-core, or one worker. Each
//! listener on a ring thread accepts with one multishot `ACCEPT` too
//! ([`UringListener`]), so a connection never touches epoll.
//!
//! io_uring is often unavailable — Docker's default seccomp profile,
//! `kernel.io_uring_disabled`, kernels before 6.1 (`DEFER_TASKRUN`).
//! [`probe`] finds out at start-up by doing what the engine does, and the
//! server falls back to the tokio engine with one warning naming why.

mod buffers;
mod driver;
mod ops;
mod ring;
mod stream;

use std::{io, os::fd::OwnedFd};

pub use stream::{UringListener, UringStream};

/// Whether this kernel, in this sandbox, lets the engine run: sets up a
/// ring and its provided buffers, then receives a byte through a
/// multishot receive on a socket pair. `Err` says what failed.
pub fn probe() -> Result<(), String> {
    let mut ring = ring::Ring::new().map_err(|error| match error.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring_setup is not available (kernel or seccomp)".to_owned(),
        Some(libc::EPERM) => {
            "io_uring_setup is not permitted (kernel.io_uring_disabled or a seccomp profile)"
                .to_owned()
        }
        _ => format!("cannot set up an io_uring with provided buffers (needs Linux 6.1): {error}"),
    })?;
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|error| format!("socketpair: {error}"))?;
    let fd = OwnedFd::from(ours);
    let id = ring.register(std::os::fd::AsRawFd::as_raw_fd(&fd));
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let _ = ring.poll_read_ready(id, &mut cx);
    io::Write::write_all(&mut &theirs, b"x").map_err(|error| format!("socketpair: {error}"))?;
    let mut byte = [0u8; 1];
    for _ in 0..100 {
        ring.turn()
            .map_err(|error| format!("io_uring_enter: {error}"))?;
        match ring.read(id, &mut byte) {
            Some(Ok(1)) if byte == *b"x" => {
                ring.release(id);
                return Ok(());
            }
            Some(Err(error)) => return Err(format!("multishot receive failed: {error}")),
            _ => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    }
    Err("a multishot receive delivered nothing within 100 ms (kernel before 6.1?)".to_owned())
}
