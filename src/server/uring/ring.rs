//! One io_uring per thread, the connections it serves, and the task that
//! drives it.
//!
//! - **Receive**: one multishot `RECV` per connection, picking buffers from
//!   a ring of provided buffers ([`Buffers`]): an idle connection holds no
//!   buffer, and a message costs no system call of its own. A connection
//!   whose unread input reaches [`HOLD_MAX`] buffers has its receive
//!   cancelled until the echo loop catches up: the kernel's socket buffer
//!   then fills and TCP tells the client to wait (the same backpressure as
//!   on epoll). When the buffers run out (`ENOBUFS`) the connection waits in
//!   `starved` until one comes back.
//! - **Send**: the bytes are copied into a send buffer the ring owns until
//!   the `SEND` completes; a second write waits for the first.
//! - **Submission**: operations are queued without a system call; the
//!   driver task submits them all at once, after the connections that ran
//!   in this turn of the scheduler, and reaps completions in the same
//!   `io_uring_enter`. Its wake-ups come from the ring's file descriptor,
//!   registered with tokio's reactor.

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    task::Waker,
};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::buffers::{Buffers, BUF_SIZE};

/// Buffers one connection may hold unread before its receive is paused.
pub const HOLD_MAX: usize = 16;
const SQ_ENTRIES: u32 = 4096;

/// `IORING_ENTER_GETEVENTS`.
const ENTER_GETEVENTS: u32 = 1;

pub(super) const OP_RECV: u64 = 1;
pub(super) const OP_SEND: u64 = 2;
pub(super) const OP_CANCEL: u64 = 3;
pub(super) const OP_ACCEPT: u64 = 4;

/// Connections a listener may have accepted ahead of its accept loop
/// before its multishot accept is paused: while the loop waits for a
/// connection permit, the rest wait in the kernel's backlog, as on epoll.
pub const ACCEPT_HOLD: usize = 16;

pub(super) fn user_data(slot: u32, generation: u32, op: u64) -> u64 {
    (u64::from(slot) << 32) | (u64::from(generation & 0xff_ffff) << 8) | op
}

fn decode(user_data: u64) -> (u32, u32, u64) {
    (
        (user_data >> 32) as u32,
        ((user_data >> 8) & 0xff_ffff) as u32,
        user_data & 0xff,
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Recv {
    Idle,
    Armed,
    Cancelling,
}

/// Received bytes in one provided buffer: `buf[start..end]` is unread.
pub(super) struct Chunk {
    pub(super) bid: u16,
    pub(super) start: usize,
    pub(super) end: usize,
}

/// A send in flight: the ring owns `buf` until the kernel is done with it.
pub(super) struct Sending {
    pub(super) buf: Vec<u8>,
    pub(super) done: usize,
}

pub(super) struct Conn {
    pub(super) fd: RawFd,
    pub(super) generation: u32,
    pub(super) recv: Recv,
    pub(super) received: VecDeque<Chunk>,
    pub(super) eof: bool,
    pub(super) error: Option<i32>,
    pub(super) starved: bool,
    pub(super) read_waker: Option<Waker>,
    pub(super) sending: Option<Sending>,
    pub(super) write_waker: Option<Waker>,
    /// The stream is gone; the slot is freed when its last operation ends.
    pub(super) released: bool,
    /// A listener's slot: its multishot accept and what it accepted.
    pub(super) accept: Recv,
    pub(super) accepted: VecDeque<OwnedFd>,
}

impl Conn {
    pub(super) fn wake(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }

    pub(super) fn idle(&self) -> bool {
        self.recv == Recv::Idle && self.sending.is_none() && self.accept == Recv::Idle
    }
}

pub struct Ring {
    pub(super) uring: IoUring,
    /// Signalled (while enabled) when completions wait to be run: with
    /// `DEFER_TASKRUN` the ring's own descriptor does not poll readable.
    pub(super) eventfd: OwnedFd,
    pub(super) buffers: Buffers,
    pub(super) conns: Vec<Option<Conn>>,
    pub(super) generations: Vec<u32>,
    pub(super) free: Vec<u32>,
    pub(super) starved: Vec<u32>,
    /// The driver, when it waits for work.
    pub(super) kick: Option<Waker>,
    pub(super) spare_sends: Vec<Vec<u8>>,
    pub(super) reaped: Vec<cqueue::Entry>,
}

impl Ring {
    /// A ring for this thread alone (`SINGLE_ISSUER`), whose completions
    /// run only when the driver asks (`DEFER_TASKRUN`, Linux 6.1): the
    /// kernel does not interrupt the thread for each one.
    pub fn new() -> io::Result<Ring> {
        let mut uring = IoUring::builder()
            .setup_cqsize(SQ_ENTRIES * 4)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(SQ_ENTRIES)?;
        // SAFETY: eventfd(2) with valid flags; the result is checked.
        let eventfd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if eventfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just created and owned by nothing else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(eventfd) };
        uring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        uring.completion().disable_eventfd();
        let buffers = Buffers::new()?;
        buffers.register(&uring)?;
        Ok(Ring {
            uring,
            eventfd,
            buffers,
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            starved: Vec::new(),
            kick: None,
            spare_sends: Vec::new(),
            reaped: Vec::new(),
        })
    }

    /// Takes a connection's socket; returns its slot and generation.
    pub fn register(&mut self, fd: RawFd) -> (u32, u32) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.generations.push(0);
            (self.conns.len() - 1) as u32
        });
        let generation = self.generations[slot as usize];
        self.conns[slot as usize] = Some(Conn {
            fd,
            generation,
            recv: Recv::Idle,
            received: VecDeque::new(),
            eof: false,
            error: None,
            starved: false,
            read_waker: None,
            sending: None,
            write_waker: None,
            released: false,
            accept: Recv::Idle,
            accepted: VecDeque::new(),
        });
        (slot, generation)
    }

    pub(super) fn conn(&mut self, slot: u32, generation: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(slot as usize)?
            .as_mut()
            .filter(|conn| conn.generation == generation)
    }

    /// Queues an operation; submitted by the driver's next turn (at once
    /// when the submission queue is full).
    pub(super) fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: every entry's buffers live in the ring (provided buffers,
        // send buffers held in `Conn::sending`) until its completion.
        if unsafe { self.uring.submission().push(entry) }.is_err() {
            self.uring.submit()?;
            // SAFETY: as above.
            unsafe { self.uring.submission().push(entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        if let Some(kick) = self.kick.take() {
            kick.wake();
        }
        Ok(())
    }

    pub(super) fn free_slot(&mut self, slot: u32) {
        self.conns[slot as usize] = None;
        let generation = &mut self.generations[slot as usize];
        *generation = generation.wrapping_add(1) & 0xff_ffff;
        self.free.push(slot);
    }

    /// Work for the driver: queued submissions, completions to run (the
    /// kernel's `TASKRUN` flag) or to reap.
    fn busy(&mut self) -> bool {
        let queued = {
            let submission = self.uring.submission();
            !submission.is_empty() || submission.taskrun()
        };
        queued || !self.uring.completion().is_empty()
    }

    /// Before the driver sleeps: true when there is work after all;
    /// otherwise the eventfd and a queued operation will wake it.
    pub fn sleep_unless_busy(&mut self, waker: &Waker) -> bool {
        self.kick = Some(waker.clone());
        // Enabled first, checked after: completions that arrive in between
        // signal the eventfd.
        self.uring.completion().enable_eventfd();
        if self.busy() {
            self.awake();
            return true;
        }
        false
    }

    /// The driver is running: no eventfd signals while it is.
    pub fn awake(&mut self) {
        self.kick = None;
        self.uring.completion().disable_eventfd();
    }

    /// One turn: submit everything queued, run and reap every completion.
    pub fn turn(&mut self) -> io::Result<()> {
        let queued = self.uring.submission().len() as u32;
        // SAFETY: no argument; GETEVENTS runs the deferred completions.
        let entered = unsafe {
            self.uring
                .submitter()
                .enter::<libc::sigset_t>(queued, 0, ENTER_GETEVENTS, None)
        };
        match entered {
            Ok(_) => {}
            // The completion queue is full: reap, then submit again.
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.extend(self.uring.completion());
        for cqe in reaped.drain(..) {
            self.complete(&cqe);
        }
        self.reaped = reaped;
        self.buffers_returned();
        Ok(())
    }

    fn complete(&mut self, cqe: &cqueue::Entry) {
        let (slot, generation, op) = decode(cqe.user_data());
        let live = self
            .conns
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|conn| conn.generation == generation);
        if !live {
            // A completion for a freed slot can only be a buffer to return.
            if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                self.buffers.give_back(bid);
            }
            return;
        }
        match op {
            OP_RECV => self.received(slot, cqe),
            OP_SEND => self.sent(slot, cqe.result()),
            OP_ACCEPT => self.accepted(slot, cqe),
            _ => {}
        }
        let conn = self.conns[slot as usize].as_mut().expect("live");
        if conn.released && conn.idle() {
            self.free_slot(slot);
        }
    }

    fn received(&mut self, slot: u32, cqe: &cqueue::Entry) {
        let Ring {
            conns,
            buffers,
            starved,
            ..
        } = self;
        let conn = conns[slot as usize].as_mut().expect("live");
        let (result, flags) = (cqe.result(), cqe.flags());
        match (result, cqueue::buffer_select(flags)) {
            (len @ 1.., Some(bid)) if conn.released => {
                let _ = len;
                buffers.give_back(bid);
            }
            (len @ 1.., Some(bid)) => conn.received.push_back(Chunk {
                bid,
                start: 0,
                end: (len as usize).min(BUF_SIZE),
            }),
            (0, _) => conn.eof = true,
            (errno, _) if -errno == libc::ENOBUFS => {
                conn.starved = true;
                starved.push(slot);
            }
            (errno, _) if -errno == libc::ECANCELED => {}
            (errno, _) if errno < 0 => conn.error = Some(-errno),
            _ => {}
        }
        if !cqueue::more(flags) {
            conn.recv = Recv::Idle;
        }
        if let Some(waker) = conn.read_waker.take() {
            waker.wake();
        }
        if conn.recv == Recv::Armed && conn.received.len() >= HOLD_MAX {
            // Unread input is at its bound: stop receiving until the echo
            // loop catches up (read re-arms).
            conn.recv = Recv::Cancelling;
            let generation = conn.generation;
            let _ = self.cancel(slot, generation, OP_RECV);
        }
    }

    fn accepted(&mut self, slot: u32, cqe: &cqueue::Entry) {
        let conn = self.conns[slot as usize].as_mut().expect("live");
        match cqe.result() {
            // SAFETY: a descriptor the kernel just created for us.
            fd @ 0.. => {
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                if !conn.released {
                    conn.accepted.push_back(fd);
                }
            }
            errno if -errno == libc::ECANCELED => {}
            errno => conn.error = Some(-errno),
        }
        if !cqueue::more(cqe.flags()) {
            conn.accept = Recv::Idle;
        }
        if let Some(waker) = conn.read_waker.take() {
            waker.wake();
        }
        if conn.accept == Recv::Armed && conn.accepted.len() >= ACCEPT_HOLD {
            conn.accept = Recv::Cancelling;
            let generation = conn.generation;
            let _ = self.cancel(slot, generation, OP_ACCEPT);
        }
    }

    /// Queues the cancellation of a slot's operation `op`.
    pub(super) fn cancel(&mut self, slot: u32, generation: u32, op: u64) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(user_data(slot, generation, op))
            .build()
            .user_data(user_data(slot, generation, OP_CANCEL));
        self.push(&entry)
    }

    fn sent(&mut self, slot: u32, result: i32) {
        let conn = self.conns[slot as usize].as_mut().expect("live");
        let Some(sending) = conn.sending.as_mut() else {
            return;
        };
        if result < 0 {
            if -result != libc::ECANCELED {
                conn.error = Some(-result);
            }
        } else {
            sending.done += result as usize;
            if sending.done < sending.buf.len() && !conn.released {
                // A short send: the rest, from the same buffer.
                let rest = &sending.buf[sending.done..];
                let entry = send_entry(conn.fd, rest, user_data(slot, conn.generation, OP_SEND));
                if let Err(error) = self.push(&entry) {
                    let conn = self.conns[slot as usize].as_mut().expect("live");
                    conn.error = Some(error.raw_os_error().unwrap_or(libc::EIO));
                } else {
                    return;
                }
            }
        }
        let conn = self.conns[slot as usize].as_mut().expect("live");
        if let Some(sending) = conn.sending.take() {
            if sending.buf.capacity() <= 2 * 64 * 1024 && self.spare_sends.len() < 64 {
                self.spare_sends.push(sending.buf);
            }
        }
        let conn = self.conns[slot as usize].as_mut().expect("live");
        conn.wake();
    }
}

pub(super) fn send_entry(fd: RawFd, data: &[u8], user_data: u64) -> squeue::Entry {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    opcode::Send::new(types::Fd(fd), data.as_ptr(), len)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data)
}
