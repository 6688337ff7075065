//! What every connection task of a run adds to, and the bytes they send.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use super::Plan;
use crate::{
    client::{connect::Phases, rng},
    codec::Framing,
};

/// Distinct message start offsets in the random pattern. 32 KiB keeps the
/// pattern in L1/L2 while each message is copied from it and checked
/// against it: at 1 MiB the copy missed the cache (3 % of the generator's
/// samples in `push_message`'s memcpy at 500 x 64 B).
pub const PATTERN_SPAN: usize = 1 << 15;

/// What every connection task adds to.
pub struct Tally {
    /// Messages completed inside the measurement window.
    pub messages: Cell<u64>,
    /// All messages completed, warm-up included (for the progress bar).
    pub completed: Cell<u64>,
    pub errors: Cell<u64>,
    pub mismatches: Cell<u64>,
    pub lost: Cell<u64>,
    pub first_errors: RefCell<Vec<String>>,
    pub latency_ns: RefCell<Histogram<u64>>,
    /// Open loop: how late each message's first byte went out, against
    /// its place on the schedule.
    pub lag_ns: RefCell<Histogram<u64>>,
    pub measure_from: Cell<Option<Instant>>,
    pub measure_until: Cell<Option<Instant>>,
    /// Connections being driven now.
    pub open: Cell<u64>,
    /// Churn: connections opened in place of ones that met their quota,
    /// and how long each took (connect and handshake).
    pub reconnects: Cell<u64>,
    pub connect_ns: RefCell<Histogram<u64>>,
    /// The first connections' setup: connect, then any TLS, QUIC or
    /// WebSocket handshake.
    pub setup_ns: RefCell<Histogram<u64>>,
    /// Round trips since the last `--interval` line (warm-up included).
    pub interval_ns: RefCell<Histogram<u64>>,
    /// Every connection's phases (first ones and replacements): the TCP
    /// connect, the handshakes after it, and its first echo's round trip.
    pub phase_connect_ns: RefCell<Histogram<u64>>,
    pub phase_handshake_ns: RefCell<Histogram<u64>>,
    pub first_echo_ns: RefCell<Histogram<u64>>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            messages: Cell::new(0),
            completed: Cell::new(0),
            errors: Cell::new(0),
            mismatches: Cell::new(0),
            lost: Cell::new(0),
            first_errors: RefCell::new(Vec::new()),
            latency_ns: RefCell::new(nanosecond_histogram()),
            lag_ns: RefCell::new(nanosecond_histogram()),
            measure_from: Cell::new(None),
            measure_until: Cell::new(None),
            open: Cell::new(0),
            reconnects: Cell::new(0),
            connect_ns: RefCell::new(nanosecond_histogram()),
            setup_ns: RefCell::new(nanosecond_histogram()),
            interval_ns: RefCell::new(nanosecond_histogram()),
            phase_connect_ns: RefCell::new(nanosecond_histogram()),
            phase_handshake_ns: RefCell::new(nanosecond_histogram()),
            first_echo_ns: RefCell::new(nanosecond_histogram()),
        }
    }

    pub fn error(&self, what: String) {
        self.errors.set(self.errors.get() + 1);
        let mut first = self.first_errors.borrow_mut();
        if first.len() < 5 {
            first.push(what);
        }
    }

    fn in_window(&self, now: Instant) -> bool {
        self.measure_from.get().is_some_and(|from| now >= from)
            && self.measure_until.get().is_none_or(|until| now < until)
    }

    /// Open loop: a message due at `due` began to go out at `now`.
    pub fn sent_late(&self, due: Instant, now: Instant) {
        if self.in_window(now) {
            let nanos = now.saturating_duration_since(due).as_nanos();
            self.lag_ns
                .borrow_mut()
                .saturating_record(u64::try_from(nanos).unwrap_or(u64::MAX));
        }
    }

    /// One of the first connections is up; its setup began at `started`.
    pub fn set_up(&self, started: Instant) {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.setup_ns.borrow_mut().saturating_record(nanos);
    }

    /// A connection is up, after these phases.
    pub fn opened(&self, phases: Phases) {
        let record = |histogram: &RefCell<Histogram<u64>>, phase: Option<Duration>| {
            if let Some(phase) = phase {
                let nanos = u64::try_from(phase.as_nanos()).unwrap_or(u64::MAX);
                histogram.borrow_mut().saturating_record(nanos);
            }
        };
        record(&self.phase_connect_ns, phases.connect);
        record(&self.phase_handshake_ns, phases.handshake);
    }

    /// A connection's first echo is back; its message went out at
    /// `sent_at`. Counted whenever it happens, warm-up included: the
    /// first echoes come when the connections are new.
    pub fn first_echo(&self, sent_at: Instant, now: Instant) {
        let nanos = u64::try_from(now.duration_since(sent_at).as_nanos()).unwrap_or(u64::MAX);
        self.first_echo_ns.borrow_mut().saturating_record(nanos);
    }

    /// Churn: a replacement connection is up; its setup began at `started`.
    pub fn reconnected(&self, started: Instant) {
        self.reconnects.set(self.reconnects.get() + 1);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.connect_ns.borrow_mut().saturating_record(nanos);
    }

    pub fn completed(&self, sent_at: Instant, now: Instant) {
        self.completed.set(self.completed.get() + 1);
        let nanos = u64::try_from(now.duration_since(sent_at).as_nanos()).unwrap_or(u64::MAX);
        self.interval_ns.borrow_mut().saturating_record(nanos);
        if self.in_window(now) {
            self.messages.set(self.messages.get() + 1);
            let nanos = now.duration_since(sent_at).as_nanos();
            self.latency_ns
                .borrow_mut()
                .saturating_record(u64::try_from(nanos).unwrap_or(u64::MAX));
        }
    }
}

/// 1 ns to an hour, 3 significant digits.
pub fn nanosecond_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds")
}

/// Counts a connection as open in the tally while alive.
pub struct Open(Rc<Tally>);

impl Open {
    pub fn new(tally: &Rc<Tally>) -> Open {
        tally.open.set(tally.open.get() + 1);
        Open(tally.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
    }
}

/// Random message bytes: printable ASCII for lines (so no `\n`, and valid
/// UTF-8 for String-based servers), any byte otherwise.
pub fn random_pattern(plan: &Plan) -> Vec<u8> {
    let mut state = rng::seed();
    (0..PATTERN_SPAN + plan.size)
        .map(|_| {
            let random = rng::next(&mut state);
            match plan.framing {
                Framing::Lines => 0x20 + ((random >> 32) % 95) as u8,
                Framing::Raw | Framing::Length => (random >> 56) as u8,
            }
        })
        .collect()
}
