//! The task that drives a thread's ring: it submits what the connections
//! queued during one turn of the scheduler in one `io_uring_enter`, reaps
//! the completions, wakes their connections, and sleeps on the ring's
//! eventfd (signalled, while it sleeps, when completions wait) until there
//! is more.

use std::{
    cell::RefCell,
    future::poll_fn,
    io,
    os::fd::{AsRawFd, RawFd},
    task::Poll,
};

use tokio::io::{unix::AsyncFd, Interest};
use tracing::error;

use super::ring::Ring;

thread_local! {
    static RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
    /// Whether this thread's driver task is running: a runtime that ends
    /// takes its tasks with it, and the next one on the thread needs its own.
    static DRIVER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Held by the driver task (from its spawn, polled or not): marks it
/// running until the task is dropped.
pub struct DriverAlive(());

impl Drop for DriverAlive {
    fn drop(&mut self) {
        let _ = DRIVER.try_with(|alive| alive.set(false));
    }
}

/// Runs `f` on this thread's ring, creating it on first use, and makes
/// sure a driver task runs it on the current runtime.
pub fn with<R>(f: impl FnOnce(&mut Ring) -> R) -> io::Result<R> {
    RING.with(|cell| {
        let mut ring = cell.borrow_mut();
        if ring.is_none() {
            *ring = Some(Ring::new()?);
        }
        let ring = ring.as_mut().expect("created above");
        if !DRIVER.get() {
            DRIVER.set(true);
            let alive = DriverAlive(());
            tokio::spawn(drive(ring.eventfd.as_raw_fd(), alive));
        }
        Ok(f(ring))
    })
}

/// Names this thread (the address of its ring's slot): cheaper to ask
/// than `std::thread::current()`, and as unique while the thread lives.
pub fn thread_tag() -> usize {
    RING.with(|cell| std::ptr::from_ref(cell) as usize)
}

/// Runs `f` on this thread's ring if it exists (a stream's drop).
pub fn with_existing(f: impl FnOnce(&mut Ring)) {
    RING.with(|cell| {
        if let Some(ring) = cell.borrow_mut().as_mut() {
            f(ring);
        }
    })
}

struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Runs for the life of the thread's runtime.
pub async fn drive(fd: RawFd, _alive: DriverAlive) {
    // SAFETY: the ring's descriptor stays open while the thread's ring
    // exists, which is longer than this task (the ring is only dropped
    // with the thread).
    let ready = match unsafe { AsyncFd::register_with_interest(RingFd(fd), Interest::READABLE) } {
        Ok(ready) => ready,
        Err(error) => {
            let error = error.to_string();
            error!(%error, "io_uring: cannot watch the ring; its connections stall");
            return;
        }
    };
    let mut failing = false;
    loop {
        match with(|ring| ring.turn()) {
            Ok(Ok(())) => failing = false,
            Ok(Err(error)) => {
                // Logged when it starts failing, not on every retry; and
                // retried after a pause, not in a spin.
                if !std::mem::replace(&mut failing, true) {
                    error!(%error, "io_uring_enter failed: {error}; retrying every 10 ms");
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
            Err(_) => return,
        }
        // Let the connections this turn woke run (and queue their next
        // operations) before the next submission.
        tokio::task::yield_now().await;
        poll_fn(|cx| {
            if with(|ring| ring.sleep_unless_busy(cx.waker())).unwrap_or(true) {
                return Poll::Ready(());
            }
            match ready.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    // Reset the counter; an error means it was already 0.
                    let mut count = [0u8; 8];
                    // SAFETY: read(2) into an 8-byte buffer, as eventfd wants.
                    let _ = unsafe { libc::read(fd, count.as_mut_ptr().cast(), 8) };
                    guard.clear_ready();
                    Poll::Ready(())
                }
                Poll::Ready(Err(_)) => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let _ = with(|ring| ring.awake());
    }
}
