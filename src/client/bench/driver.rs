//! The load itself: one driver per connection (stream or UDP), and the
//! `--reconnect` loop. Every echo is verified byte for byte against the
//! random pattern it was cut from.

use std::{
    io,
    pin::Pin,
    rc::Rc,
    task::Poll,
    time::{Duration, Instant},
};

use bytes::{Buf, BytesMut};
use tokio::{io::ReadBuf, task::JoinHandle};
use tokio_util::codec::Encoder;

use super::{
    reconnect::reconnect_loop,
    stream::{BenchStream, WriteNow},
    tally::{Open, Tally, PATTERN_SPAN},
    Plan,
};
use crate::{
    client::{rng, Conn},
    codec::{EchoCodec, Framing, MAX_FRAME_LENGTH_LIMIT},
};

/// Most unsent-plus-unechoed bytes a connection queues (as the C generator).
const OUT_QUEUE_LIMIT: usize = 256 * 1024;
/// Bytes read per syscall (the readiness loop's buffer too).
pub(super) const READ_BUFFER: usize = 64 * 1024;

thread_local! {
    /// One read buffer for every connection: the generator's single thread
    /// reads one connection at a time and checks what it read before it
    /// waits again (as the C loadgen does). 500 connections with a buffer
    /// each would spread reads over 32 MiB of cache-cold memory.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_BUFFER]);
}

/// tokio's timers tick in milliseconds: open loop sends a message up to
/// this much before it is due rather than up to this much after.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Open loop: when each message of one connection is due. Connection `i`
/// of `n` is offset by `i/n` of an interval, so that together they send
/// evenly rather than in bursts.
struct Schedule {
    start: Instant,
    interval_ns: f64,
    phase: f64,
    /// The next message not yet queued.
    next: u64,
}

impl Schedule {
    fn due(&self, message: u64) -> Instant {
        let offset = (message as f64 + self.phase) * self.interval_ns;
        self.start + Duration::from_nanos(offset as u64)
    }
}

/// One connection's load.
pub(super) struct Driver<S> {
    pub(super) stream: S,
    codec: EchoCodec,
    pattern: Rc<Vec<u8>>,
    tally: Rc<Tally>,
    rng: u64,
    size: usize,
    wire_size: usize,
    pipeline: usize,
    /// Sent-but-unechoed bytes, then unsent bytes.
    out: BytesMut,
    /// Bytes of `out` already written.
    written: usize,
    /// Bytes of the stream written, and echoed, since the start.
    total_written: u64,
    total_echoed: u64,
    /// Messages queued in `out` (their first byte may not be sent yet).
    queued: u64,
    /// Messages whose first byte has been written, with when.
    sent_at: std::collections::VecDeque<Instant>,
    /// Messages fully echoed.
    done: u64,
    /// The echo of the current message differed somewhere.
    bad: bool,
    /// No echo has come back on this connection yet (time to first echo).
    first_pending: bool,
    /// Open loop: the timeline, when each queued message was due, and a
    /// timer for the next one.
    schedule: Option<Schedule>,
    due_at: std::collections::VecDeque<Instant>,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Churn: where to open a replacement, and this connection's quota.
    churn: Option<Churn>,
}

/// Churn: each connection is replaced after its quota of messages or time.
struct Churn {
    target: crate::client::Target,
    connect_timeout: Duration,
    messages: Option<u64>,
    lifetime: Option<Duration>,
    /// When the current connection opened, and messages queued before it.
    opened: Instant,
    queued_before: u64,
}

impl<S: WriteNow> Driver<S> {
    pub(super) fn new(
        stream: S,
        plan: &Plan,
        codec: EchoCodec,
        pattern: Rc<Vec<u8>>,
        tally: Rc<Tally>,
        index: usize,
    ) -> Driver<S> {
        let mut rng = rng::seed() ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        if rng == 0 {
            rng = 1;
        }
        Driver {
            stream,
            codec,
            pattern,
            tally,
            rng,
            size: plan.size,
            wire_size: plan.wire_size(),
            pipeline: plan.pipeline,
            out: BytesMut::with_capacity(OUT_QUEUE_LIMIT.min(plan.pipeline * plan.wire_size())),
            written: 0,
            total_written: 0,
            total_echoed: 0,
            queued: 0,
            sent_at: std::collections::VecDeque::with_capacity(plan.pipeline),
            done: 0,
            bad: false,
            first_pending: true,
            schedule: plan.rate_per_connection.map(|rate| Schedule {
                start: Instant::now(),
                interval_ns: 1e9 / rate,
                phase: index as f64 / plan.drivers() as f64,
                next: 0,
            }),
            due_at: std::collections::VecDeque::new(),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            churn: (plan.messages_per_connection.is_some() || plan.lifetime.is_some()).then(|| {
                Churn {
                    target: plan.target.clone(),
                    connect_timeout: plan.connect_timeout,
                    messages: plan.messages_per_connection,
                    lifetime: plan.lifetime,
                    opened: Instant::now(),
                    queued_before: 0,
                }
            }),
        }
    }

    /// Churn: this connection has had its share; queue nothing more on it.
    fn quota_met(&self) -> bool {
        self.churn.as_ref().is_some_and(|churn| {
            churn
                .messages
                .is_some_and(|quota| self.queued - churn.queued_before >= quota)
                || churn
                    .lifetime
                    .is_some_and(|life| churn.opened.elapsed() >= life)
        })
    }
}

impl<S: BenchStream> Driver<S> {
    /// Churn: replaces the connection, whose echoes are all back.
    async fn reopen(&mut self) -> Result<(), String> {
        let churn = self.churn.as_mut().expect("churning");
        let started = Instant::now();
        let (conn, phases) = churn
            .target
            .open_timed(churn.connect_timeout)
            .await
            .map_err(|error| error.to_string())?;
        self.stream = S::from_conn(conn).ok_or("the new connection is of another kind")?;
        self.tally.reconnected(started);
        self.tally.opened(phases);
        self.first_pending = true;
        churn.opened = Instant::now();
        churn.queued_before = self.queued;
        Ok(())
    }

    async fn run(mut self) {
        let _open = Open::new(&self.tally);
        loop {
            // `drive` returns only when a churn quota is met.
            let result = match self.drive().await {
                Ok(()) => self.reopen().await,
                Err(error) => Err(error),
            };
            if let Err(error) = result {
                return self.tally.error(error);
            }
        }
    }

    async fn drive(&mut self) -> Result<(), String> {
        // The timeline starts with the first connection and runs on
        // across churn: messages due while a replacement connects are late.
        if let Some(schedule) = self.schedule.as_mut().filter(|s| s.next == 0) {
            schedule.start = Instant::now();
        }
        loop {
            let quota_met = self.quota_met();
            if quota_met && self.done == self.queued {
                return Ok(());
            }
            match &self.schedule {
                _ if quota_met => {}
                Some(_) => self.enqueue_due(),
                None => self.enqueue(),
            }
            self.flush()?;
            if let Some(schedule) = &self.schedule {
                let next = schedule.due(schedule.next) - TIMER_SLACK;
                if self.timer.deadline() != next.into() {
                    self.timer.as_mut().reset(next.into());
                }
            }
            // Read through poll_read: a short read tells tokio the socket is
            // drained, which saves an EAGAIN recv per message. Wait for
            // writability too while output is pending.
            let pending_write = self.written < self.out.len() || self.stream.wants_flush();
            // Open loop, with room in the queue: wake when the next message
            // is due. (With the queue full only echoes free room, so the
            // timer, already due, must not spin the loop.)
            let open_loop = self.schedule.is_some() && !quota_met && self.has_room();
            let (stream, timer) = (&mut self.stream, &mut self.timer);
            let read = std::future::poll_fn(|cx| {
                // Open loop: the next message is due.
                if open_loop && std::future::Future::poll(timer.as_mut(), cx).is_ready() {
                    return Poll::Ready(None);
                }
                let read = READ_BUF.with_borrow_mut(|read_buf| {
                    let mut buf = ReadBuf::new(read_buf);
                    match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                        Poll::Ready(result) => Some(result.map(|()| buf.filled().len())),
                        Poll::Pending => None,
                    }
                });
                if let Some(read) = read {
                    return Poll::Ready(Some(read));
                }
                if pending_write {
                    if let Poll::Ready(result) = stream.poll_write_ready(cx) {
                        return Poll::Ready(result.err().map(Err));
                    }
                }
                Poll::Pending
            })
            .await;
            match read {
                None => {}
                Some(Ok(0)) => return Err("server closed the connection".into()),
                // Checked at once: the shared buffer is this task's until
                // it next waits.
                Some(Ok(read)) => READ_BUF.with_borrow(|buf| self.check_echo(&buf[..read]))?,
                Some(Err(error)) => return Err(format!("connection failed: {error}")),
            }
        }
    }
}

impl<S: WriteNow> Driver<S> {
    /// Queues messages up to the pipeline depth and the queue limit.
    pub(super) fn enqueue(&mut self) {
        while self.queued - self.done < self.pipeline as u64 && self.has_room() {
            self.push_message();
        }
    }

    /// Open loop: queues every message due by now (as far as the queue
    /// limit lets: the rest stay due, and their lateness counts).
    fn enqueue_due(&mut self) {
        let now = Instant::now();
        while let Some(schedule) = &self.schedule {
            let due = schedule.due(schedule.next);
            if due > now + TIMER_SLACK || !self.has_room() {
                return;
            }
            self.push_message();
            self.due_at.push_back(due);
            if let Some(schedule) = &mut self.schedule {
                schedule.next += 1;
            }
        }
    }

    /// Room in the queue for one more message.
    fn has_room(&self) -> bool {
        self.out.len() + self.wire_size <= OUT_QUEUE_LIMIT.max(self.wire_size)
    }

    /// Queues one message cut from the random pattern, framed.
    fn push_message(&mut self) {
        let offset = (rng::next(&mut self.rng) % PATTERN_SPAN as u64) as usize;
        let message = &self.pattern[offset..offset + self.size];
        if self.codec.framing() == Framing::Lines {
            self.out.extend_from_slice(&message[..self.size - 1]);
            self.out.extend_from_slice(b"\n");
        } else {
            self.codec
                .encode(message, &mut self.out)
                .expect("size was validated against the frame limit");
        }
        self.queued += 1;
    }

    /// Writes what it can without waiting, stamping each message whose
    /// first byte goes out (open loop: with when it was due).
    pub(super) fn flush(&mut self) -> Result<(), String> {
        while self.written < self.out.len() {
            let now = Instant::now();
            match self.stream.try_write(&self.out[self.written..]) {
                Ok(written) => {
                    self.written += written;
                    self.total_written += written as u64;
                    let first_bytes_sent = self.total_written.div_ceil(self.wire_size as u64);
                    while self.done + (self.sent_at.len() as u64) < first_bytes_sent {
                        let stamp = match self.due_at.pop_front() {
                            // Early by at most TIMER_SLACK: timed from
                            // the send then; late: from when it was due.
                            Some(due) => {
                                self.tally.sent_late(due, now);
                                due.min(now)
                            }
                            None => now,
                        };
                        self.sent_at.push_back(stamp);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(format!("connection failed: {error}")),
            }
        }
        Ok(())
    }

    /// Compares the `echoed` bytes with what was sent.
    pub(super) fn check_echo(&mut self, echoed: &[u8]) -> Result<(), String> {
        let read = echoed.len();
        if self.total_echoed + read as u64 > self.total_written {
            self.tally.mismatches.set(self.tally.mismatches.get() + 1);
            return Err("server echoed more bytes than were sent".into());
        }
        let now = Instant::now();
        let mut offset = 0;
        while offset < read {
            let into_message = (self.total_echoed % self.wire_size as u64) as usize;
            let take = (self.wire_size - into_message).min(read - offset);
            // `out` starts at the first unechoed byte.
            if echoed[offset..offset + take] != self.out[..take] {
                self.bad = true;
            }
            self.out.advance(take);
            self.written -= take;
            offset += take;
            self.total_echoed += take as u64;
            if into_message + take == self.wire_size {
                let sent_at = self
                    .sent_at
                    .pop_front()
                    .expect("an echoed message was sent");
                self.done += 1;
                if std::mem::take(&mut self.bad) {
                    self.tally.mismatches.set(self.tally.mismatches.get() + 1);
                }
                if std::mem::take(&mut self.first_pending) {
                    self.tally.first_echo(sent_at, now);
                }
                self.tally.completed(sent_at, now);
            }
        }
        Ok(())
    }
}

/// Starts one driver per open connection (or, with `--reconnect`, one
/// reconnecting loop per connection slot).
pub fn spawn_all(
    plan: &Plan,
    conns: Vec<Conn>,
    pattern: &Rc<Vec<u8>>,
    tally: &Rc<Tally>,
) -> Vec<JoinHandle<()>> {
    let codec = EchoCodec::new(plan.framing, MAX_FRAME_LENGTH_LIMIT);
    // Plain streams in closed loop: one task for all of them.
    #[cfg(unix)]
    if super::poller::suits(plan) && !conns.is_empty() {
        let conns = conns.into_iter().enumerate().collect();
        let run = super::poller::run(plan.clone(), codec, conns, pattern.clone(), tally.clone());
        return vec![tokio::task::spawn_local(run)];
    }
    let mut drivers: Vec<JoinHandle<()>> = conns
        .into_iter()
        .enumerate()
        .map(|(index, conn)| {
            let (pattern, tally) = (pattern.clone(), tally.clone());
            match conn {
                Conn::Tcp(stream) => tokio::task::spawn_local(
                    Driver::new(stream, plan, codec, pattern, tally, index).run(),
                ),
                Conn::Tls(stream) => tokio::task::spawn_local(
                    Driver::new(*stream, plan, codec, pattern, tally, index).run(),
                ),
                #[cfg(unix)]
                Conn::Unix(stream) => tokio::task::spawn_local(
                    Driver::new(stream, plan, codec, pattern, tally, index).run(),
                ),
                Conn::Quic(stream) => tokio::task::spawn_local(
                    Driver::new(*stream, plan, codec, pattern, tally, index).run(),
                ),
                Conn::Udp(socket) => tokio::task::spawn_local(
                    super::udp::UdpDriver::new(socket, plan, pattern, tally, index).run(),
                ),
                Conn::WebSocket(ws) => tokio::task::spawn_local(super::ws::run(
                    ws,
                    plan.clone(),
                    pattern,
                    tally,
                    index,
                )),
            }
        })
        .collect();
    if plan.reconnect {
        drivers.extend((0..plan.connections).map(|index| {
            let (pattern, tally) = (pattern.clone(), tally.clone());
            tokio::task::spawn_local(reconnect_loop(plan.clone(), codec, pattern, tally, index))
        }));
    }
    drivers
}
