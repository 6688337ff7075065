//! What a stream asks of its thread's ring: wait for input and read it,
//! send, flush, and let go.

use std::{
    io,
    os::fd::OwnedFd,
    task::{Context, Poll},
};

use io_uring::{opcode, squeue, types};

use super::{
    buffers::Buffers,
    ring::{
        send_entry, user_data, Conn, Recv, Ring, Sending, ACCEPT_HOLD, HOLD_MAX, OP_ACCEPT,
        OP_RECV, OP_SEND,
    },
};

impl Ring {
    pub(super) fn arm_recv(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        if conn.recv != Recv::Idle
            || conn.eof
            || conn.error.is_some()
            || conn.starved
            || conn.released
            || conn.received.len() >= HOLD_MAX
        {
            return;
        }
        let entry = opcode::RecvMulti::new(types::Fd(conn.fd), Buffers::GROUP)
            .build()
            .user_data(user_data(slot, conn.generation, OP_RECV));
        self.arm(slot, &entry, |conn| &mut conn.recv);
    }

    /// Queues the multishot `entry` of `slot`, whose state `state` picks:
    /// armed, or idle again with the error when it cannot be queued.
    fn arm(&mut self, slot: u32, entry: &squeue::Entry, state: fn(&mut Conn) -> &mut Recv) {
        let conn = self.conns[slot as usize]
            .as_mut()
            .expect("checked by the caller");
        *state(conn) = Recv::Armed;
        if let Err(error) = self.push(entry) {
            let conn = self.conns[slot as usize]
                .as_mut()
                .expect("checked by the caller");
            *state(conn) = Recv::Idle;
            conn.error = Some(error.raw_os_error().unwrap_or(libc::EAGAIN));
        }
    }

    /// Ready once input, end of input or an error is there to read.
    pub fn poll_read_ready(
        &mut self,
        (slot, generation): (u32, u32),
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(conn) = self.conn(slot, generation) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if !conn.received.is_empty() || conn.eof || conn.error.is_some() {
            return Poll::Ready(Ok(()));
        }
        conn.read_waker = Some(cx.waker().clone());
        self.arm_recv(slot);
        Poll::Pending
    }

    /// Copies received bytes into `out`, returning the buffers they held.
    /// `Ok(0)` at end of input; `None` when nothing has arrived.
    pub fn read(
        &mut self,
        (slot, generation): (u32, u32),
        out: &mut [u8],
    ) -> Option<io::Result<usize>> {
        let Ring { conns, buffers, .. } = self;
        let conn = conns.get_mut(slot as usize)?.as_mut()?;
        if conn.generation != generation {
            return Some(Err(io::ErrorKind::NotConnected.into()));
        }
        let mut copied = 0;
        while copied < out.len() {
            let Some(chunk) = conn.received.front_mut() else {
                break;
            };
            let n = (chunk.end - chunk.start).min(out.len() - copied);
            let from = &buffers.get(chunk.bid)[chunk.start..chunk.start + n];
            out[copied..copied + n].copy_from_slice(from);
            copied += n;
            chunk.start += n;
            if chunk.start == chunk.end {
                buffers.give_back(chunk.bid);
                conn.received.pop_front();
            }
        }
        let result = match (copied, conn.error, conn.eof) {
            (0, Some(errno), _) => Some(Err(io::Error::from_raw_os_error(errno))),
            (0, None, true) => Some(Ok(0)),
            (0, None, false) => None,
            (n, _, _) => Some(Ok(n)),
        };
        if copied > 0 {
            self.buffers_returned();
            // Keep a paused receive going once there is room again.
            self.arm_recv(slot);
        }
        result
    }

    /// Buffers came back: connections that ran out may receive again.
    pub(super) fn buffers_returned(&mut self) {
        self.buffers.publish();
        while let Some(slot) = self.starved.pop() {
            if let Some(conn) = self.conns[slot as usize].as_mut() {
                conn.starved = false;
                conn.wake();
            }
            self.arm_recv(slot);
        }
    }

    /// Starts sending a copy of `data`, or waits for the send before it.
    pub fn poll_write(
        &mut self,
        (slot, generation): (u32, u32),
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut buf = self.spare_sends.pop().unwrap_or_default();
        let Some(conn) = self.conn(slot, generation) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if let Some(errno) = conn.error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        if conn.sending.is_some() {
            conn.write_waker = Some(cx.waker().clone());
            self.spare_sends.push(buf);
            return Poll::Pending;
        }
        buf.clear();
        buf.extend_from_slice(data);
        let entry = send_entry(conn.fd, &buf, user_data(slot, generation, OP_SEND));
        conn.sending = Some(Sending { buf, done: 0 });
        match self.push(&entry) {
            Ok(()) => Poll::Ready(Ok(data.len())),
            Err(error) => {
                let conn = self.conns[slot as usize].as_mut().expect("looked up above");
                conn.sending = None;
                Poll::Ready(Err(error))
            }
        }
    }

    /// Ready once no send is in flight.
    pub fn poll_flush(
        &mut self,
        (slot, generation): (u32, u32),
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(conn) = self.conn(slot, generation) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if conn.sending.is_some() {
            conn.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        match conn.error {
            Some(errno) => Poll::Ready(Err(io::Error::from_raw_os_error(errno))),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Whether a receive is armed: then the kernel, not a direct `recv`,
    /// is the one to take what arrives.
    pub fn receiving(&mut self, id: (u32, u32)) -> bool {
        self.conn(id.0, id.1)
            .is_some_and(|conn| conn.recv != Recv::Idle)
    }

    /// A listener's next accepted connection (non-blocking, close-on-exec).
    pub fn poll_accept(
        &mut self,
        (slot, generation): (u32, u32),
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<OwnedFd>> {
        let Some(conn) = self.conn(slot, generation) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        if let Some(fd) = conn.accepted.pop_front() {
            self.arm_accept(slot);
            return Poll::Ready(Ok(fd));
        }
        if let Some(errno) = conn.error.take() {
            // EMFILE and the like end the multishot: the accept loop backs
            // off, and the next poll arms it again.
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        conn.read_waker = Some(cx.waker().clone());
        self.arm_accept(slot);
        Poll::Pending
    }

    fn arm_accept(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        if conn.accept != Recv::Idle || conn.released || conn.accepted.len() >= ACCEPT_HOLD {
            return;
        }
        let entry = opcode::AcceptMulti::new(types::Fd(conn.fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(slot, conn.generation, OP_ACCEPT));
        self.arm(slot, &entry, |conn| &mut conn.accept);
    }

    /// The stream is dropped: cancel what is in flight and submit now, so
    /// no queued operation names the descriptor after it is closed.
    pub fn release(&mut self, (slot, generation): (u32, u32)) {
        let Some(conn) = self.conn(slot, generation) else {
            return;
        };
        conn.released = true;
        conn.read_waker = None;
        conn.write_waker = None;
        let chunks: Vec<u16> = conn.received.drain(..).map(|chunk| chunk.bid).collect();
        let mut cancel = Vec::new();
        if conn.recv == Recv::Armed {
            conn.recv = Recv::Cancelling;
            cancel.push(OP_RECV);
        }
        if conn.sending.is_some() {
            cancel.push(OP_SEND);
        }
        if conn.accept == Recv::Armed {
            conn.accept = Recv::Cancelling;
            cancel.push(OP_ACCEPT);
        }
        conn.accepted.clear();
        let idle = conn.idle();
        for bid in chunks {
            self.buffers.give_back(bid);
        }
        self.buffers_returned();
        for op in cancel {
            let _ = self.cancel(slot, generation, op);
        }
        let _ = self.uring.submit();
        if idle {
            self.free_slot(slot);
        }
    }
}
