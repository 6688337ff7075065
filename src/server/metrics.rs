//! Prometheus metrics (`--metrics ADDR`), kept off the hot path's critical
//! section.
//!
//! Counters are `prometheus-client` atomics, each created once at start-up
//! (a labelled series is looked up once, not per event), so the echo loop
//! pays one relaxed atomic add per read and per written batch, never a lock.
//! The one lock is the duration histogram's, taken once per connection when
//! it closes. With metrics off the loop skips even the atomics.
//!
//! The exporter is a minimal HTTP/1.1 responder for `GET /metrics` (OpenMetrics
//! text): one request per connection, bounded in size and time, on its own
//! listener, so a scraper cannot disturb the echo listeners.

use std::{io, sync::Arc, time::Duration};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::debug;

pub use super::reason::Rejection;
use super::{
    reason::{CloseReason, DropReason},
    shutdown::Shutdown,
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

/// Longest request head the exporter reads.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a scraper may take to send its request head. Prometheus sends
/// it at once; a client that does not is not a scraper.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests served at once. Past this a connection gets 503 at once rather
/// than waiting, so silent clients can make a scrape fail but never hang.
const MAX_SCRAPES: usize = 1024;

/// Serves `GET /metrics` until the shutdown drains.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.draining() => return,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = scrapes.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: too many requests at once; 503");
            tokio::spawn(async move {
                let busy = response("503 Service Unavailable", "text/plain", "busy\n", true);
                let _ =
                    tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(busy.as_bytes())).await;
            });
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = respond(stream, &metrics).await {
                debug!(%peer, %error, "metrics request failed");
            }
        });
    }
}

/// Where a request head stands after the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Incomplete,
    Complete,
    /// Not an HTTP request: answer 400 now rather than wait for more.
    Bad,
}

fn head_state(head: &[u8]) -> Head {
    if head.first().is_some_and(|b| !b.is_ascii_uppercase()) {
        return Head::Bad;
    }
    if let Some(end) = memchr::memchr(b'\n', head) {
        let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
        let mut parts = line.split(|&b| b == b' ');
        let well_formed = matches!(
            (parts.next(), parts.next(), parts.next(), parts.next()),
            (Some(method), Some(target), Some(version), None)
                if method.iter().all(u8::is_ascii_uppercase)
                    && !target.is_empty()
                    && version.starts_with(b"HTTP/1.")
        );
        if !well_formed {
            return Head::Bad;
        }
    }
    // Bare LF line ends are accepted as RFC 9112 allows.
    if memchr::memmem::find(head, b"\r\n\r\n").is_some()
        || memchr::memmem::find(head, b"\n\n").is_some()
    {
        return Head::Complete;
    }
    if head.len() >= MAX_REQUEST {
        return Head::Bad;
    }
    Head::Incomplete
}

fn response(status: &str, content_type: &str, body: &str, with_body: bool) -> String {
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if with_body {
        response.push_str(body);
    }
    response
}

async fn respond(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let state = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            match head_state(&head) {
                Head::Incomplete => {}
                done => return Ok::<Head, io::Error>(done),
            }
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Ok(Head::Bad);
            }
            head.extend_from_slice(&chunk[..read]);
        }
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let complete = state == Head::Complete;
    let request_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, content_type, body) = if !complete {
        ("400 Bad Request", "text/plain", "bad request\n".to_owned())
    } else if method != b"GET" && method != b"HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        )
    } else if target != b"/metrics" && !target.starts_with(b"/metrics?") {
        (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".to_owned(),
        )
    } else {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        )
    };
    let response = response(status, content_type, &body, method != b"HEAD");
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
