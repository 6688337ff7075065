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

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{connection::CloseReason, udp::DropReason};

/// Why a connection was refused after it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Over `max_connections_per_ip`.
    PerIpLimit,
    /// No valid PROXY protocol header.
    ProxyHeader,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
}

impl Rejection {
    const ALL: [Rejection; 3] = [
        Rejection::PerIpLimit,
        Rejection::ProxyHeader,
        Rejection::TlsHandshake,
    ];

    fn label(self) -> &'static str {
        match self {
            Rejection::PerIpLimit => "per_ip_limit",
            Rejection::ProxyHeader => "proxy_header",
            Rejection::TlsHandshake => "tls_handshake",
        }
    }
}

/// The label of each [`CloseReason`], in `close_label` order.
const CLOSE_LABELS: [&str; 7] = [
    "client_closed",
    "idle_timeout",
    "frame_timeout",
    "frame_too_long",
    "shutdown",
    "cut",
    "error",
];

fn close_index(reason: &CloseReason) -> usize {
    match reason {
        CloseReason::ClientClosed => 0,
        CloseReason::IdleTimeout => 1,
        CloseReason::FrameTimeout => 2,
        CloseReason::FrameTooLong(_) => 3,
        CloseReason::Shutdown => 4,
        CloseReason::Cut => 5,
        CloseReason::Error(_) => 6,
    }
}

const DROP_REASONS: [DropReason; 4] = [
    DropReason::PrivilegedSourcePort,
    DropReason::SourceRate,
    DropReason::GlobalRate,
    DropReason::TooManySources,
];

fn drop_label(reason: DropReason) -> &'static str {
    match reason {
        DropReason::PrivilegedSourcePort => "privileged_source_port",
        DropReason::SourceRate => "source_rate",
        DropReason::GlobalRate => "global_rate",
        DropReason::TooManySources => "too_many_sources",
    }
}

type Labels = [(&'static str, &'static str); 1];

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
    closed: [Counter; CLOSE_LABELS.len()],
    duration: Histogram,
    udp_echoed: Counter,
    udp_dropped: [Counter; DROP_REASONS.len()],
}

impl Metrics {
    /// Registers every metric; the UDP ones only when `udp` (the server has
    /// UDP listeners), so a scrape shows what exists.
    pub fn new(udp: bool) -> Metrics {
        let mut registry = Registry::with_prefix("echod");
        let echo = EchoCounters::default();
        let connections_open = Gauge::default();
        let connections_total = Counter::default();
        let rejected_family = Family::<Labels, Counter>::default();
        let closed_family = Family::<Labels, Counter>::default();
        // Connection lifetimes from 1 ms to about 9 hours.
        let duration = Histogram::new([
            0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 32768.0,
        ]);
        let udp_echoed = Counter::default();
        let udp_family = Family::<Labels, Counter>::default();

        registry.register(
            "connections_open",
            "Stream connections being served now",
            connections_open.clone(),
        );
        registry.register(
            "connections",
            "Stream connections accepted",
            connections_total.clone(),
        );
        registry.register(
            "connections_rejected",
            "Accepted connections refused before the echo, by reason",
            rejected_family.clone(),
        );
        registry.register(
            "connections_closed",
            "Served connections closed, by reason",
            closed_family.clone(),
        );
        registry.register_with_unit(
            "connection_duration",
            "How long served connections lasted",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        registry.register_with_unit(
            "received",
            "Bytes received from clients",
            prometheus_client::registry::Unit::Bytes,
            echo.bytes_received.clone(),
        );
        registry.register_with_unit(
            "echoed",
            "Bytes echoed back to clients",
            prometheus_client::registry::Unit::Bytes,
            echo.bytes_echoed.clone(),
        );
        registry.register(
            "frames_echoed",
            "Frames echoed (lines or length frames; raw framing has none)",
            echo.frames_echoed.clone(),
        );
        if udp {
            registry.register(
                "udp_datagrams_echoed",
                "UDP datagrams echoed",
                udp_echoed.clone(),
            );
            registry.register(
                "udp_datagrams_dropped",
                "UDP datagrams that got no reply, by reason",
                udp_family.clone(),
            );
        }
        // Each labelled series is created once here, so it shows as 0 from
        // the first scrape and counting it later is a plain atomic add.
        let series = |family: &Family<Labels, Counter>, key, value| {
            family.get_or_create(&[(key, value)]).clone()
        };
        Metrics {
            registry,
            echo,
            connections_open,
            connections_total,
            rejected: Rejection::ALL.map(|r| series(&rejected_family, "reason", r.label())),
            closed: CLOSE_LABELS.map(|label| series(&closed_family, "reason", label)),
            duration,
            udp_echoed,
            udp_dropped: DROP_REASONS.map(|r| series(&udp_family, "reason", drop_label(r))),
        }
    }

    /// A stream connection was accepted.
    pub fn accepted(&self) {
        self.connections_total.inc();
        self.connections_open.inc();
    }

    /// A connection refused after it was accepted (it was counted opened).
    pub fn rejected(&self, why: Rejection) {
        self.connections_open.dec();
        self.rejected[why as usize].inc();
    }

    pub fn closed(&self, reason: &CloseReason, lifetime: Duration) {
        self.connections_open.dec();
        self.closed[close_index(reason)].inc();
        self.duration.observe(lifetime.as_secs_f64());
    }

    pub fn udp_echoed(&self) {
        self.udp_echoed.inc();
    }

    pub fn udp_dropped(&self, reason: DropReason) {
        let index = DROP_REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        self.udp_dropped[index].inc();
    }

    /// The exposition in OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Binds the exporter's listener (at start-up, so a busy port is an error
/// before anything is served).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Longest request head the exporter reads.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once; more wait in the backlog.
const MAX_SCRAPES: usize = 16;

/// Serves `GET /metrics` until `drain` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, drain: CancellationToken) {
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let permit = tokio::select! {
            biased;
            _ = drain.cancelled() => return,
            permit = scrapes.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = drain.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(error) = respond(stream, &metrics).await {
                        debug!(%peer, %error, "metrics request failed");
                    }
                });
            }
            Err(error) => {
                debug!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn respond(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let complete = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Ok::<bool, io::Error>(false);
            }
            head.extend_from_slice(&chunk[..read]);
        }
        Ok(head.windows(4).any(|w| w == b"\r\n\r\n"))
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
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
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != b"HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
