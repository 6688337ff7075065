//! The readiness loop: plain TCP and Unix connections in closed loop are
//! all driven from one task, by readiness, the way the C `loadgen` drives
//! its sockets from one epoll loop.
//!
//! Under tokio every connection is a task: each echo wakes its socket's
//! waker, schedules the task on the `LocalSet` and polls it, which is
//! about a tenth of the generator's CPU at 500 connections (`perf`:
//! `LocalSet::tick`, `ScheduledIo` wake-ups). Here the sockets sit in one
//! mio `Poll` of their own, whose epoll descriptor tokio watches: one
//! wake-up of this task hands over every ready socket by token, and each
//! is read, checked, refilled and written with no waker or task between.
//! The per-connection logic is the stream driver's own (`Driver`'s queue,
//! send stamps and byte-for-byte check), so both paths measure alike.
//!
//! Open loop (`--rate`), churn and the other kinds of connection keep one
//! task each: they need timers or async reconnects per connection.

use std::{
    io::{self, Read, Write},
    rc::Rc,
    time::Duration,
};

use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;

use super::{
    driver::{Driver, READ_BUFFER},
    stream::WriteNow,
    tally::{Open, Tally},
    Plan,
};
use crate::{client::Conn, codec::EchoCodec};

/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// Whether the plan's connections go through the readiness loop.
pub fn suits(plan: &Plan) -> bool {
    use crate::addr::Endpoint;
    matches!(plan.target.endpoint, Endpoint::Tcp(_) | Endpoint::Unix(_))
        && !plan.target.udp
        && plan.rate_per_connection.is_none()
        && plan.messages_per_connection.is_none()
        && plan.lifetime.is_none()
        && !plan.reconnect
}

/// A socket the loop owns: the stream, taken off tokio's reactor.
pub enum Sock {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Sock {
    fn from_conn(conn: Conn) -> io::Result<Sock> {
        match conn {
            Conn::Tcp(stream) => Ok(Sock::Tcp(mio::net::TcpStream::from_std(stream.into_std()?))),
            Conn::Unix(stream) => Ok(Sock::Unix(mio::net::UnixStream::from_std(
                stream.into_std()?,
            ))),
            _ => Err(io::Error::other("not a TCP or Unix stream")),
        }
    }

    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Sock::Tcp(stream) => stream,
            Sock::Unix(stream) => stream,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(stream) => stream.read(buf),
            Sock::Unix(stream) => stream.read(buf),
        }
    }
}

impl WriteNow for Sock {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(stream) => stream.write(buf),
            Sock::Unix(stream) => stream.write(buf),
        }
    }
}

/// One connection of the loop, counted open while it lives.
struct Slot {
    driver: Driver<Sock>,
    _open: Open,
}

/// Drives `conns` (with their indices among all connections) until the
/// task is aborted; a connection that fails is closed and counted.
pub async fn run(
    plan: Plan,
    codec: EchoCodec,
    conns: Vec<(usize, Conn)>,
    pattern: Rc<Vec<u8>>,
    tally: Rc<Tally>,
) {
    if let Err(error) = drive_all(&plan, codec, conns, &pattern, &tally).await {
        tally.error(format!("the readiness loop failed: {error}"));
    }
}

async fn drive_all(
    plan: &Plan,
    codec: EchoCodec,
    conns: Vec<(usize, Conn)>,
    pattern: &Rc<Vec<u8>>,
    tally: &Rc<Tally>,
) -> io::Result<()> {
    // SAFETY: a `Poll` owns its epoll descriptor from creation to drop and
    // `as_raw_fd` always returns it; this function never replaces the
    // `Poll` behind `get_inner_mut`.
    let registered =
        unsafe { AsyncFd::register_with_interest(Poll::new()?, tokio::io::Interest::READABLE) };
    let mut poll = registered.map_err(|error| error.into_parts().1)?;
    let mut slots = Vec::with_capacity(conns.len());
    for (index, conn) in conns {
        let slot = Sock::from_conn(conn).and_then(|mut stream| {
            // Edge-triggered: an event per arrival, no re-arming calls.
            let token = Token(slots.len());
            poll.get_ref().registry().register(
                stream.source(),
                token,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            let driver = Driver::new(stream, plan, codec, pattern.clone(), tally.clone(), index);
            Ok(Slot {
                driver,
                _open: Open::new(tally),
            })
        });
        match slot {
            Ok(slot) => slots.push(Some(slot)),
            Err(error) => tally.error(format!("connection failed: {error}")),
        }
    }
    // One read buffer for every connection, as the C tool.
    let mut buf = vec![0; READ_BUFFER];
    // The first messages: a connection that has sent nothing gets no event.
    for slot in &mut slots {
        step(slot, poll.get_ref().registry(), &mut buf, false, tally);
    }
    let mut events = Events::with_capacity(EVENTS);
    loop {
        let mut ready = poll.readable_mut().await?;
        loop {
            match ready
                .get_inner_mut()
                .poll(&mut events, Some(Duration::ZERO))
            {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                result => result?,
            }
            let registry = ready.get_inner().registry();
            let mut taken = 0;
            for event in &events {
                taken += 1;
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                if let Some(slot) = slots.get_mut(event.token().0) {
                    step(slot, registry, &mut buf, readable, tally);
                }
            }
            // Fewer than asked for: nothing else is ready right now, and
            // tokio's edge wakes this task when something is.
            if taken < EVENTS {
                break;
            }
        }
        ready.clear_ready();
    }
}

/// One turn of one connection: reads and checks what arrived, queues up to
/// the pipeline depth and writes what the socket takes. A failure closes
/// the connection and counts as an error.
fn step(
    slot: &mut Option<Slot>,
    registry: &Registry,
    buf: &mut [u8],
    readable: bool,
    tally: &Tally,
) {
    let Some(live) = slot else { return };
    let driver = &mut live.driver;
    let result = (|| {
        if readable {
            read_ready(driver, buf)?;
        }
        driver.enqueue();
        driver.flush()
    })();
    if let Err(error) = result {
        let _ = registry.deregister(driver.stream.source());
        *slot = None;
        tally.error(error);
    }
}

/// Reads until the socket is drained: a short read means it was, and a
/// later arrival raises a new edge. Echoes never exceed what was sent
/// (checked), so this ends after at most a few reads.
fn read_ready(driver: &mut Driver<Sock>, buf: &mut [u8]) -> Result<(), String> {
    loop {
        match driver.stream.read(buf) {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(read) => {
                driver.check_echo(&buf[..read])?;
                if read < buf.len() {
                    return Ok(());
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(format!("connection failed: {error}")),
        }
    }
}
