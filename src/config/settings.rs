//! The types of settings that are more than a number or a path.

use std::{fmt, path::PathBuf, str::FromStr};

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format {s:?} (expected text or json)")),
        }
    }
}

/// How the daemon spreads its work over the cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuntimeShape {
    /// One current-thread runtime per worker, each with its own
    /// `SO_REUSEPORT` listening socket: the kernel spreads connections and
    /// a connection never leaves its thread (nginx, Envoy, Seastar).
    PerCore,
    /// One tokio multi-thread runtime whose workers steal each other's
    /// tasks: the default, as it keeps its tail when a core is shared
    /// (with a load generator, other services, or a CPU quota).
    #[default]
    WorkStealing,
}

impl RuntimeShape {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeShape::PerCore => "per-core",
            RuntimeShape::WorkStealing => "work-stealing",
        }
    }
}

/// How connections' bytes move (`engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// tokio's reactor: epoll readiness, a `recv` and a `send` per message.
    #[default]
    Tokio,
    /// One io_uring per thread (Linux): multishot receives into provided
    /// buffers, sends batched into one submission per scheduler turn.
    IoUring,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Tokio => "tokio",
            Engine::IoUring => "io-uring",
        }
    }
}

impl FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "tokio" => Ok(Engine::Tokio),
            "io-uring" | "io_uring" => Ok(Engine::IoUring),
            _ => Err(format!("unknown engine {s:?} (expected tokio or io-uring)")),
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RuntimeShape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "per-core" => Ok(RuntimeShape::PerCore),
            "work-stealing" => Ok(RuntimeShape::WorkStealing),
            _ => Err(format!(
                "unknown runtime {s:?} (expected per-core or work-stealing)"
            )),
        }
    }
}

impl fmt::Display for RuntimeShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which PROXY protocol header, if any, starts every stream connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// No header: the socket's peer is the client.
    #[default]
    Off,
    /// The text header (`PROXY TCP4 …\r\n`, HAProxy `send-proxy`).
    V1,
    /// The binary header (HAProxy `send-proxy-v2`).
    V2,
    /// Either version; a header is still required.
    Any,
}

impl ProxyProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
            ProxyProtocol::Any => "any",
        }
    }
}

impl FromStr for ProxyProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" => Ok(ProxyProtocol::Off),
            "v1" => Ok(ProxyProtocol::V1),
            "v2" => Ok(ProxyProtocol::V2),
            "any" => Ok(ProxyProtocol::Any),
            _ => Err(format!(
                "unknown PROXY protocol setting {s:?} (expected off, v1, v2 or any)"
            )),
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// UDP echo (RFC 862) settings. UDP echo is a classic reflection vector
/// (spoofed sources, echo-to-echo loops), so replies are rate limited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpLimits {
    /// Replies to source ports below this are dropped; 0 = none dropped.
    pub min_source_port: u16,
    /// Replies per second to one source IP (token bucket refill).
    pub rate: u32,
    /// Replies one source IP may get at once (token bucket size).
    pub burst: u32,
    /// Replies per second in all, across every UDP socket.
    pub global_rate: u32,
}

impl Default for UdpLimits {
    /// The built-in defaults of the `udp_*` keys.
    fn default() -> Self {
        super::Config::default().udp_limits
    }
}

/// The PEM files of TLS listeners; read and checked (the key matched to
/// the certificate) by the server before it binds anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}
