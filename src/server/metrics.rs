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
use super::reason::{CloseReason, DropReason};

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
}

/// One `reason` series of a family, created once at start-up, so it shows
/// as 0 from the first scrape and counting it later is a plain atomic add.
fn series(family: &Family<Labels, Counter>, reason: &'static str) -> Counter {
    family.get_or_create(&[("reason", reason)]).clone()
}

/// The counters the echo loop itself updates.
#[derive(Clone, Default, Debug)]
pub struct EchoCounters {
    pub bytes_received: Counter,
    pub bytes_echoed: Counter,
    pub frames_echoed: Counter,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub echo: EchoCounters,
    connections_open: Gauge,
    connections_total: Counter,
    rejected: [Counter; Rejection::ALL.len()],
    closed: [Counter; CloseReason::LABELS.len()],
    duration: Histogram,
    udp_echoed: Counter,
    udp_dropped: [Counter; DropReason::ALL.len()],
}

impl Metrics {
    /// Registers every metric; the UDP ones only when `udp` (the server has
    /// UDP listeners), so a scrape shows what exists.
    pub fn new(udp: bool) -> Metrics {
        let families = Families::default();
        let mut metrics = Metrics {
            registry: Registry::with_prefix("echod"),
            echo: EchoCounters::default(),
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            rejected: Rejection::ALL.map(|r| series(&families.rejected, r.label())),
            closed: CloseReason::LABELS.map(|label| series(&families.closed, label)),
            duration: Histogram::new(DURATION_BUCKETS),
            udp_echoed: Counter::default(),
            udp_dropped: DropReason::ALL.map(|r| series(&families.udp_dropped, r.label())),
        };
        metrics.register(&families, udp);
        metrics
    }

    fn register(&mut self, families: &Families, udp: bool) {
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
            self.echo.bytes_received
        );
        add!(
            registry,
            "echoed",
            "Bytes echoed back to clients",
            Bytes,
            self.echo.bytes_echoed
        );
        add!(
            registry,
            "frames_echoed",
            "Frames echoed (lines or length frames; raw framing has none)",
            self.echo.frames_echoed
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

    /// A stream connection was accepted.
    pub fn accepted(&self) {
        self.connections_total.inc();
        self.connections_open.inc();
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
