//! Addresses as users write them, shared by the server and the client:
//! `HOST:PORT` and `[IPv6]:PORT` ([`ListenAddr`]), and the stream
//! endpoints built on them (`unix:PATH`, `tls:HOST:PORT`: [`Endpoint`]).
//! Host names are resolved when used ([`resolve`]), never when parsed.

use std::{
    fmt, io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

/// Where the service listens, and the client connects, when nothing says
/// otherwise: loopback, so that exposing it is the operator's choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3600";

/// Largest UDP payload (65,535 − 8 UDP − 20 IPv4 header bytes): the most a
/// client can send in one datagram, and so the most the server echoes.
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// A receive buffer that holds any datagram (IPv6 allows 65,527 bytes).
pub const UDP_RECEIVE_BUFFER: usize = 65_536;

/// A listen address as the user wrote it: `HOST:PORT` or `[IPv6]:PORT`.
/// Host names are resolved when the server starts, not when parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenAddr {
    host: String,
    port: u16,
}

impl ListenAddr {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address itself when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| format!("bad address {s:?}: {why} (expected HOST:PORT or [IPv6]:PORT)");
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number from 0 to 65535"))?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?;
            inner
                .parse::<Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address inside [ ]"))?;
            inner
        } else if host.contains(':') {
            return Err(bad("an IPv6 address needs brackets"));
        } else {
            host
        };
        let valid_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if host.is_empty() || !host.chars().all(|c| valid_name(c) || c == ':') {
            return Err(bad("no valid host"));
        }
        Ok(ListenAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where a stream listener listens: TCP `HOST:PORT`, or a Unix socket
/// file `unix:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(ListenAddr),
    Unix(std::path::PathBuf),
    /// TLS over TCP: `tls:HOST:PORT`.
    Tls(ListenAddr),
    /// HTTP/1.1 with WebSocket echo: `ws:HOST:PORT`.
    Ws(ListenAddr),
    /// The same over TLS: `wss:HOST:PORT`.
    Wss(ListenAddr),
    /// QUIC v1 over UDP, every bidirectional stream an echo: `quic:HOST:PORT`.
    Quic(ListenAddr),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some("") => Err(format!("bad address {s:?}: no path after unix:")),
            Some(path) if cfg!(unix) => Ok(Endpoint::Unix(path.into())),
            Some(_) => Err(format!(
                "bad address {s:?}: Unix sockets are not supported on this platform"
            )),
            None => {
                type Scheme = (&'static str, fn(ListenAddr) -> Endpoint);
                let schemes: [Scheme; 4] = [
                    ("tls:", Endpoint::Tls),
                    ("quic:", Endpoint::Quic),
                    ("wss:", Endpoint::Wss),
                    ("ws:", Endpoint::Ws),
                ];
                for (scheme, endpoint) in schemes {
                    if let Some(addr) = s.strip_prefix(scheme) {
                        return addr.parse().map(endpoint);
                    }
                }
                s.parse().map(Endpoint::Tcp)
            }
        }
    }
}

impl Endpoint {
    /// Whether connections to it start with a TLS handshake.
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            Endpoint::Tls(_) | Endpoint::Wss(_) | Endpoint::Quic(_)
        )
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => addr.fmt(f),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tls(addr) => write!(f, "tls:{addr}"),
            Endpoint::Ws(addr) => write!(f, "ws:{addr}"),
            Endpoint::Wss(addr) => write!(f, "wss:{addr}"),
            Endpoint::Quic(addr) => write!(f, "quic:{addr}"),
        }
    }
}

/// Every address `listen` names: itself when the host is an IP literal,
/// else what the resolver gives, each once. None is an error.
pub async fn resolve(listen: &ListenAddr) -> io::Result<Vec<SocketAddr>> {
    if let Some(addr) = listen.socket_addr() {
        return Ok(vec![addr]);
    }
    let mut addrs: Vec<SocketAddr> =
        match tokio::net::lookup_host((listen.host(), listen.port())).await {
            Ok(addrs) => addrs.collect(),
            // A static binary in an empty image has no resolver configuration
            // at all; `localhost` still means the loopback (RFC 6761, 6.3).
            Err(_) if is_localhost(listen.host()) => {
                vec![SocketAddr::from((
                    std::net::Ipv4Addr::LOCALHOST,
                    listen.port(),
                ))]
            }
            Err(error) => return Err(error),
        };
    // A resolver may list an address more than once; bind each once.
    addrs.dedup();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses found",
        ));
    }
    Ok(addrs)
}

/// `localhost` and names under it (RFC 6761): always the loopback.
fn is_localhost(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}
