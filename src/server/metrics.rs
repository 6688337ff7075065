//! Prometheus metrics (`--metrics ADDR`), kept off the hot path's critical
//! section.
//!
//! Counters are `prometheus-client` atomics, each created once at start-up
//! (a labelled series is looked up once, not per event), so the echo loop
//! pays one relaxed atomic add per read and per written batch, never a lock.
//! The one lock is the duration histogram's, taken once per connection when
//! it closes. With metrics off the loop skips even the atomics.
//!
//! They are served at `/metrics` by the admin endpoint ([`super::admin`]).

use std::time::Duration;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub use super::reason::Rejection;
use super::{
    listen::ListenerKind,
    reason::{CloseReason, DropReason},
};

type Labels = [(&'static str, &'static str); 1];

/// Registers a metric (with a unit, when one is named).
macro_rules! add {
    ($registry:ident, $name:expr, $help:expr, $metric:expr) => {
        $registry.register($name, $help, $metric.clone())
    };
    ($registry:ident, $name:expr, $help:expr, $unit:ident, $metric:expr) => {
        $registry.register_with_unit(
            $name,
            $help,
            prometheus_client::registry::Unit::$unit,
            $metric.clone(),
        )
    };
}

/// Connection lifetimes from 1 ms to about 9 hours, in seconds.
const DURATION_BUCKETS: [f64; 10] = [
    0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 32768.0,
];

/// The labelled metrics, which the registry holds whole while
/// [`Metrics`] keeps one counter per label.
#[derive(Default)]
struct Families {
    rejected: Family<Labels, Counter>,
    closed: Family<Labels, Counter>,
    udp_dropped: Family<Labels, Counter>,
    by_listener: Family<Labels, Counter>,
    messages: Family<Labels, Counter>,
    websocket_closes: Family<OwnedLabels, Counter>,
    http_responses: Family<OwnedLabels, Counter>,
}

/// Labels made at start-up from numbers (codes, statuses).
type OwnedLabels = Vec<(&'static str, String)>;

/// One series of a family, created once at start-up, so it shows as 0
/// from the first scrape and counting it later is a plain atomic add.
fn series(family: &Family<Labels, Counter>, name: &'static str, value: &'static str) -> Counter {
    family.get_or_create(&[(name, value)]).clone()
}

/// The counters the echo loop itself updates.
#[derive(Clone, Default, Debug)]
pub struct EchoCounters {
    pub bytes_received: Counter,
    pub bytes_echoed: Counter,
    frames_echoed: Counter,
    /// Frames or WebSocket messages of this listener kind.
    messages: Counter,
}

impl EchoCounters {
    /// `n` frames (or WebSocket messages) were echoed.
    pub fn echoed(&self, n: u64) {
        self.frames_echoed.inc_by(n);
        self.messages.inc_by(n);
    }
}

/// The WebSocket close codes counted by name; the rest count as `other`.
const CLOSE_CODES: [u16; 5] = [1000, 1001, 1002, 1007, 1009];
/// The HTTP statuses counted by name; the rest count as `other`.
const STATUSES: [u16; 6] = [101, 200, 400, 404, 413, 426];

/// The position of `value` in `known`, else the `other` slot after them.
fn slot(known: &[u16], value: u16) -> usize {
    known
        .iter()
        .position(|&k| k == value)
        .unwrap_or(known.len())
}

fn labels(known: &[u16]) -> Vec<String> {
    known
        .iter()
        .map(u16::to_string)
        .chain(["other".to_owned()])
        .collect()
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Per listener kind; the byte and frame counters are shared.
    echo: [EchoCounters; ListenerKind::ALL.len()],
    connections_open: Gauge,
    connections_total: Counter,
    by_listener: [Counter; ListenerKind::ALL.len()],
    websocket_closes: Vec<Counter>,
    http_responses: Vec<Counter>,
    rejected: [Counter; Rejection::ALL.len()],
    closed: [Counter; CloseReason::LABELS.len()],
    duration: Histogram,
    udp_echoed: Counter,
    udp_dropped: [Counter; DropReason::ALL.len()],
    quic_streams: Counter,
    quic_datagrams: Counter,
    quic_lost_packets: Counter,
}

impl Metrics {
    /// Registers every metric; the UDP ones only when `udp` (the server has
    /// UDP listeners) and the QUIC ones only with `quic`, so a scrape shows
    /// what exists.
    pub fn new(udp: bool, quic: bool) -> Metrics {
        let families = Families::default();
        let shared = EchoCounters::default();
        let kind_series = |family: &Family<Labels, Counter>, kind: ListenerKind| {
            series(family, "listener", kind.label())
        };
        let by_code = |family: &Family<OwnedLabels, Counter>, name: &'static str, known: &[u16]| {
            labels(known)
                .into_iter()
                .map(|label| family.get_or_create(&vec![(name, label)]).clone())
                .collect()
        };
        let mut metrics = Metrics {
            registry: Registry::with_prefix("echod"),
            echo: ListenerKind::ALL.map(|kind| EchoCounters {
                messages: kind_series(&families.messages, kind),
                ..shared.clone()
            }),
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            by_listener: ListenerKind::ALL.map(|kind| kind_series(&families.by_listener, kind)),
            websocket_closes: by_code(&families.websocket_closes, "code", &CLOSE_CODES),
            http_responses: by_code(&families.http_responses, "status", &STATUSES),
            rejected: Rejection::ALL.map(|r| series(&families.rejected, "reason", r.label())),
            closed: CloseReason::LABELS.map(|label| series(&families.closed, "reason", label)),
            duration: Histogram::new(DURATION_BUCKETS),
            udp_echoed: Counter::default(),
            udp_dropped: DropReason::ALL
                .map(|r| series(&families.udp_dropped, "reason", r.label())),
            quic_streams: Counter::default(),
            quic_datagrams: Counter::default(),
            quic_lost_packets: Counter::default(),
        };
        metrics.register(&families, udp);
        if quic {
            metrics.register_quic();
        }
        metrics
    }

    fn register(&mut self, families: &Families, udp: bool) {
        Self::register_by_kind(&mut self.registry, families);
        let registry = &mut self.registry;
        add!(
            registry,
            "connections_open",
            "Stream connections being served now",
            self.connections_open
        );
        add!(
            registry,
            "connections",
            "Stream connections accepted",
            self.connections_total
        );
        add!(
            registry,
            "connections_rejected",
            "Accepted connections refused before the echo, by reason",
            families.rejected
        );
        add!(
            registry,
            "connections_closed",
            "Served connections closed, by reason",
            families.closed
        );
        add!(
            registry,
            "connection_duration",
            "How long served connections lasted",
            Seconds,
            self.duration
        );
        add!(
            registry,
            "received",
            "Bytes received from clients",
            Bytes,
            self.echo[0].bytes_received
        );
        add!(
            registry,
            "echoed",
            "Bytes echoed back to clients",
            Bytes,
            self.echo[0].bytes_echoed
        );
        add!(
            registry,
            "frames_echoed",
            "Frames echoed (lines or length frames; raw framing has none)",
            self.echo[0].frames_echoed
        );
        if udp {
            add!(
                registry,
                "udp_datagrams_echoed",
                "UDP datagrams echoed",
                self.udp_echoed
            );
            add!(
                registry,
                "udp_datagrams_dropped",
                "UDP datagrams that got no reply, by reason",
                families.udp_dropped
            );
        }
    }

    fn register_quic(&mut self) {
        let registry = &mut self.registry;
        add!(
            registry,
            "quic_streams",
            "QUIC bidirectional streams opened by clients",
            self.quic_streams
        );
        add!(
            registry,
            "quic_datagrams_echoed",
            "QUIC datagrams (RFC 9221) echoed",
            self.quic_datagrams
        );
        add!(
            registry,
            "quic_lost_packets",
            "Packets quinn declared lost, over closed QUIC connections",
            self.quic_lost_packets
        );
    }

    /// The series labelled by listener kind, close code and HTTP status.
    fn register_by_kind(registry: &mut Registry, families: &Families) {
        add!(
            registry,
            "listener_connections",
            "Stream connections accepted, by listener kind",
            families.by_listener
        );
        add!(
            registry,
            "listener_messages",
            "Frames or WebSocket messages echoed, by listener kind",
            families.messages
        );
        add!(
            registry,
            "websocket_closes",
            "WebSocket close frames sent, by close code",
            families.websocket_closes
        );
        add!(
            registry,
            "http_responses",
            "HTTP responses on ws: and wss: listeners, by status",
            families.http_responses
        );
    }

    /// A stream connection was accepted on a listener of `kind`.
    pub fn accepted(&self, kind: ListenerKind) {
        self.connections_total.inc();
        self.connections_open.inc();
        self.by_listener[kind as usize].inc();
    }

    /// The counters the echo loops of `kind` add to.
    pub fn echo(&self, kind: ListenerKind) -> &EchoCounters {
        &self.echo[kind as usize]
    }

    /// The server sent a WebSocket close frame with `code`.
    pub fn websocket_closed(&self, code: u16) {
        self.websocket_closes[slot(&CLOSE_CODES, code)].inc();
    }

    /// An HTTP response with `status` was sent.
    pub fn http_response(&self, status: u16) {
        self.http_responses[slot(&STATUSES, status)].inc();
    }

    /// An accepted connection is gone (refused or closed); called from its
    /// admission guard's `Drop`, so the gauge comes down whatever happened.
    pub fn departed(&self) {
        self.connections_open.dec();
    }

    /// A connection refused after it was accepted.
    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].inc();
    }

    /// A served connection closed, and why.
    pub fn closed(&self, reason: &CloseReason, lifetime: Duration) {
        self.closed[reason.index()].inc();
        self.duration.observe(lifetime.as_secs_f64());
    }

    pub fn quic_stream(&self) {
        self.quic_streams.inc();
    }

    pub fn quic_datagram(&self) {
        self.quic_datagrams.inc();
    }

    pub fn quic_lost_packets(&self, lost: u64) {
        self.quic_lost_packets.inc_by(lost);
    }

    pub fn udp_echoed(&self) {
        self.udp_echoed.inc();
    }

    pub fn udp_dropped(&self, reason: DropReason) {
        self.udp_dropped[reason as usize].inc();
    }

    /// The exposition in OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
