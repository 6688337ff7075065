//! Why things end: every reason a connection closes, is refused, or a
//! datagram gets no reply. Each names itself (`label()`) for metrics and
//! logs, so no caller matches strings.

use std::{fmt, io};

use crate::{codec::FrameError, stream::is_disconnect};

/// Why a connection ended.
#[derive(Debug)]
pub enum CloseReason {
    /// The client shut its write side and got every echo back.
    ClientClosed,
    /// Nothing was received or sent for the idle timeout.
    IdleTimeout,
    /// A frame was still unfinished at the frame timeout (a slow sender).
    FrameTimeout,
    /// A frame broke the limit; the frames before it were echoed.
    FrameTooLong(FrameError),
    /// Graceful shutdown: pending echoes were written, then the server closed.
    Shutdown,
    /// The shutdown grace period ended before the connection finished.
    Cut,
    /// The socket failed (reset by the peer, broken pipe, …).
    Error(io::Error),
}

impl CloseReason {
    /// True for the ordinary end of a connection, which is logged at DEBUG;
    /// the rest are worth an operator's attention at INFO. A client that
    /// vanished (reset, broken pipe) is ordinary for an echo endpoint, and
    /// under a reset flood an INFO line each would be hundreds a second.
    pub fn is_routine(&self) -> bool {
        match self {
            CloseReason::ClientClosed | CloseReason::Shutdown => true,
            CloseReason::Error(error) => is_disconnect(error.kind()),
            _ => false,
        }
    }

    /// Every reason's label, in [`index`](Self::index) order.
    pub const LABELS: [&'static str; 7] = [
        "client_closed",
        "idle_timeout",
        "frame_timeout",
        "frame_too_long",
        "shutdown",
        "cut",
        "error",
    ];

    /// Position in [`LABELS`](Self::LABELS), for per-reason counters.
    pub fn index(&self) -> usize {
        match self {
            CloseReason::ClientClosed => 0,
            CloseReason::IdleTimeout => 1,
            CloseReason::FrameTimeout => 2,
            CloseReason::FrameTooLong(_) => 3,
            CloseReason::Shutdown => 4,
            CloseReason::Cut => 5,
            CloseReason::Error(_) => 6,
        }
    }

    /// The metrics label: `client_closed`, `idle_timeout`, ….
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ClientClosed => f.write_str("client closed"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::FrameTimeout => {
                f.write_str("frame not completed within the frame timeout")
            }
            CloseReason::FrameTooLong(error) => write!(f, "frame too long: {error}"),
            CloseReason::Shutdown => f.write_str("server shutting down"),
            CloseReason::Cut => f.write_str("cut at the shutdown deadline"),
            CloseReason::Error(error) => write!(f, "socket error: {error}"),
        }
    }
}

/// Why a connection was refused after it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Over `max_connections_per_ip`.
    PerIpLimit,
    /// No valid PROXY protocol header.
    ProxyHeader,
    /// A PROXY listener's peer outside `proxy_trusted`.
    ProxyUntrusted,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
}

impl Rejection {
    pub const ALL: [Rejection; 4] = [
        Rejection::PerIpLimit,
        Rejection::ProxyHeader,
        Rejection::ProxyUntrusted,
        Rejection::TlsHandshake,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Rejection::PerIpLimit => "per_ip_limit",
            Rejection::ProxyHeader => "proxy_header",
            Rejection::ProxyUntrusted => "proxy_untrusted",
            Rejection::TlsHandshake => "tls_handshake",
        }
    }
}

/// Why a datagram got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    PrivilegedSourcePort,
    SourceRate,
    GlobalRate,
    TooManySources,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::PrivilegedSourcePort,
        DropReason::SourceRate,
        DropReason::GlobalRate,
        DropReason::TooManySources,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::PrivilegedSourcePort => "privileged_source_port",
            DropReason::SourceRate => "source_rate",
            DropReason::GlobalRate => "global_rate",
            DropReason::TooManySources => "too_many_sources",
        }
    }

    /// What the periodic drop report calls it.
    pub fn description(self) -> &'static str {
        match self {
            DropReason::PrivilegedSourcePort => "privileged source port",
            DropReason::SourceRate => "per-source rate",
            DropReason::GlobalRate => "global rate",
            DropReason::TooManySources => "too many sources",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_reason_has_its_own_label() {
        let reasons = [
            CloseReason::ClientClosed,
            CloseReason::IdleTimeout,
            CloseReason::FrameTimeout,
            CloseReason::FrameTooLong(FrameError::LineTooLong { limit: 1 }),
            CloseReason::Shutdown,
            CloseReason::Cut,
            CloseReason::Error(io::ErrorKind::Other.into()),
        ];
        let labels: Vec<_> = reasons.iter().map(CloseReason::label).collect();
        assert_eq!(labels, CloseReason::LABELS);
    }
}
