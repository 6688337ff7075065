//! Reaching a server: an address with its TLS settings inside
//! ([`Target`]), opened as the one kind of connection it names
//! ([`Conn`]). The interactive client and the load generator both connect
//! through here.

use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UdpSocket};

use super::ClientError;
use crate::{
    addr::{Endpoint, ListenAddr},
    tls::{ClientStream, ClientTlsArgs},
};

/// Where to connect, and how: the endpoint, its TLS settings when it is a
/// `tls:` or `wss:` address, whether a `HOST:PORT` means UDP, and the
/// path of a WebSocket URL.
#[derive(Clone, Debug)]
pub struct Target {
    pub endpoint: Endpoint,
    pub tls: Option<TlsTarget>,
    pub udp: bool,
    /// For `ws://HOST:PORT/PATH`: the path (`/` when none).
    pub path: String,
}

/// An address as the client takes it: `HOST:PORT`, `unix:PATH`,
/// `tls:HOST:PORT`, or a WebSocket URL `ws://HOST:PORT/PATH` /
/// `wss://HOST:PORT/PATH` (the port defaults to 80 and 443). Returns the
/// endpoint and the URL's path.
pub fn parse_address(text: &str) -> Result<(Endpoint, String), String> {
    let url = [("ws://", false), ("wss://", true)]
        .into_iter()
        .find_map(|(scheme, tls)| Some((text.strip_prefix(scheme)?, tls)));
    let Some((rest, tls)) = url else {
        return Ok((text.parse()?, "/".to_owned()));
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':')
    }) && (!authority.starts_with('[') || authority.contains("]:"));
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let addr: ListenAddr = authority.parse()?;
    Ok((
        if tls {
            Endpoint::Wss(addr)
        } else {
            Endpoint::Ws(addr)
        },
        path,
    ))
}

impl Target {
    /// The same target for one more independent client: TLS resumption
    /// from a session store of its own (one server's worth, 8 tickets), as
    /// a separate client would have. Connections sharing a store share
    /// rustls's 8 tickets per server, which many reconnecting at once use
    /// up: past about 50, most found none and made a full handshake.
    pub fn with_own_sessions(&self) -> Target {
        let mut target = self.clone();
        if let Some(tls) = &mut target.tls {
            let mut config = (*tls.config).clone();
            config.resumption = rustls::client::Resumption::in_memory_sessions(8);
            tls.config = std::sync::Arc::new(config);
        }
        target
    }

    /// Checks the combination of address and flags (exit 2 when wrong).
    pub fn new(address: &str, tls: &ClientTlsArgs, udp: bool) -> Result<Target, ClientError> {
        let (endpoint, path) = parse_address(address)
            .map_err(|problem| ClientError::Usage(format!("ADDR: {problem}")))?;
        if udp && !matches!(endpoint, Endpoint::Tcp(_)) {
            return Err(ClientError::Usage("--udp needs a HOST:PORT address".into()));
        }
        let tls = tls_setup(&endpoint, tls)?;
        Ok(Target {
            endpoint,
            tls,
            udp,
            path,
        })
    }

    /// Opens one connection (or UDP socket) within `timeout`, TLS
    /// handshake included.
    pub async fn open(&self, timeout: Duration) -> Result<Conn, ClientError> {
        self.open_timed(timeout).await.map(|(conn, _)| conn)
    }

    /// [`open`](Self::open), and how long each phase took.
    pub async fn open_timed(&self, timeout: Duration) -> Result<(Conn, Phases), ClientError> {
        let failed = |why: String| {
            ClientError::Failed(format!("cannot connect to {}: {why}", self.endpoint))
        };
        let timed_out = || failed(format!("timed out after {}s", timeout.as_secs_f64()));
        let started = Instant::now();
        let connected = |conn: Conn| {
            let phases = Phases {
                connect: Some(started.elapsed()),
                handshake: None,
            };
            (conn, phases)
        };
        // After the connect (`up`), the handshakes until now.
        let shaken = |conn: Conn, up: Duration| {
            let phases = Phases {
                connect: Some(up),
                handshake: Some(started.elapsed().saturating_sub(up)),
            };
            (conn, phases)
        };
        let left = || timeout.saturating_sub(started.elapsed());
        match &self.endpoint {
            Endpoint::Tcp(addr) if self.udp => udp_connect(addr)
                .await
                .map(|socket| connected(Conn::Udp(socket)))
                .map_err(|error| failed(error.to_string())),
            Endpoint::Tcp(addr) => Ok(connected(Conn::Tcp(connect(addr, timeout).await?))),
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| timed_out())?
                    .map(|stream| connected(Conn::Unix(stream)))
                    .map_err(|error| failed(error.to_string()))
            }
            #[cfg(not(unix))]
            Endpoint::Unix(_) => Err(ClientError::Usage(
                "Unix sockets are not supported here".into(),
            )),
            Endpoint::Ws(addr) => {
                let stream = connect(addr, timeout).await?;
                let up = started.elapsed();
                let ws = super::websocket::handshake(self, stream, left()).await?;
                let ws = super::websocket::WsConn::Plain(Box::new(ws));
                Ok(shaken(Conn::WebSocket(ws), up))
            }
            Endpoint::Wss(addr) => {
                let tls = self.tls.clone().expect("set up for wss:");
                let stream = connect(addr, timeout).await?;
                let up = started.elapsed();
                let stream = tls_handshake(stream, addr, tls, left()).await?;
                let ws = super::websocket::handshake(self, stream, left()).await?;
                let ws = super::websocket::WsConn::Tls(Box::new(ws));
                Ok(shaken(Conn::WebSocket(ws), up))
            }
            Endpoint::Tls(addr) => {
                let tls = self.tls.clone().expect("set up for tls:");
                let stream = connect(addr, timeout).await?;
                let up = started.elapsed();
                let stream = tls_handshake(stream, addr, tls, left()).await?;
                Ok(shaken(Conn::Tls(Box::new(stream)), up))
            }
            Endpoint::Quic(addr) => {
                // No connect of its own: the QUIC handshake is the setup.
                let tls = self.tls.as_ref().expect("set up for quic:");
                let conn = super::quic::connect(addr, tls, timeout).await?;
                let phases = Phases {
                    connect: None,
                    handshake: Some(started.elapsed()),
                };
                Ok((Conn::Quic(Box::new(conn)), phases))
            }
        }
    }
}

/// How long a connection's setup took, phase by phase.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// TCP (or Unix) connect; `None` on QUIC, which has none of its own.
    pub connect: Option<Duration>,
    /// TLS, QUIC and WebSocket handshakes after it, if any.
    pub handshake: Option<Duration>,
}

/// An open connection of whichever kind the target names.
pub enum Conn {
    Tcp(TcpStream),
    Tls(Box<ClientStream<TcpStream>>),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    Udp(UdpSocket),
    /// A WebSocket, handshake done.
    WebSocket(super::websocket::WsConn),
    /// One stream of a QUIC connection.
    Quic(Box<super::quic::QuicConn>),
}

/// TLS settings for a `tls:` or `wss:` address (and a loud warning for
/// `--tls-insecure`); TLS flags with another address are a usage error.
fn tls_setup(endpoint: &Endpoint, args: &ClientTlsArgs) -> Result<Option<TlsTarget>, ClientError> {
    let (Endpoint::Tls(addr) | Endpoint::Wss(addr) | Endpoint::Quic(addr)) = endpoint else {
        let given = args.tls_ca.is_some()
            || args.tls_cert.is_some()
            || args.tls_server_name.is_some()
            || args.tls_insecure;
        return if given {
            Err(ClientError::Usage(
                "--tls-* options need a tls:HOST:PORT, quic:HOST:PORT or wss:// address".into(),
            ))
        } else {
            Ok(None)
        };
    };
    if args.tls_insecure {
        eprintln!(
            "echo-client: WARNING: --tls-insecure: the server's certificate is NOT verified; \
             anyone on the path can read and change this traffic. Use it for testing only."
        );
    }
    let config = crate::tls::client_config(args).map_err(|e| ClientError::Usage(e.to_string()))?;
    let name = crate::tls::server_name(args, addr.host())
        .map_err(|e| ClientError::Usage(format!("--tls-server-name: {e}")))?;
    Ok(Some(TlsTarget {
        config,
        name,
        early_data: Default::default(),
    }))
}

/// What a TLS connection needs: the configuration and the name to verify.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    pub config: std::sync::Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
    /// QUIC connections that sent 0-RTT data, and how many the server
    /// took it on: shared by every connection to this target.
    pub early_data: std::sync::Arc<EarlyData>,
}

/// Counts of 0-RTT attempts (QUIC, when the configuration enables early
/// data and a resumable session allows it).
#[derive(Debug, Default)]
pub struct EarlyData {
    pub sent: std::sync::atomic::AtomicU64,
    pub accepted: std::sync::atomic::AtomicU64,
}

/// Connects to `addr` and completes the TLS handshake, all within `timeout`.
pub async fn connect_tls(
    addr: &ListenAddr,
    tls: TlsTarget,
    timeout: Duration,
) -> Result<ClientStream<TcpStream>, ClientError> {
    let started = tokio::time::Instant::now();
    let stream = connect(addr, timeout).await?;
    tls_handshake(stream, addr, tls, timeout.saturating_sub(started.elapsed())).await
}

/// The TLS handshake over a connected `stream`, within `timeout`.
async fn tls_handshake(
    stream: TcpStream,
    addr: &ListenAddr,
    tls: TlsTarget,
    timeout: Duration,
) -> Result<ClientStream<TcpStream>, ClientError> {
    let failed =
        |why: String| ClientError::Failed(format!("TLS handshake with tls:{addr} failed: {why}"));
    tokio::time::timeout(timeout, crate::tls::connect(stream, tls.config, tls.name))
        .await
        .map_err(|_| failed(format!("timed out after {}s", timeout.as_secs_f64())))?
        .map_err(|error| failed(error.to_string()))
}

/// Connects to `addr` (every resolved address in turn) within `timeout`.
pub async fn connect(addr: &ListenAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
    let failed = |why: String| ClientError::Failed(format!("cannot connect to {addr}: {why}"));
    let connecting = async {
        let addrs = crate::addr::resolve(addr).await?;
        TcpStream::connect(&addrs[..]).await
    };
    let stream = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| failed(format!("timed out after {}s", timeout.as_secs_f64())))?
        .map_err(|error| failed(error.to_string()))?;
    stream
        .set_nodelay(true)
        .map_err(|error| failed(error.to_string()))?;
    Ok(stream)
}

/// A client's UDP socket, connected to the first address `addr` resolves
/// to (the client and the load generator share it).
pub async fn udp_connect(addr: &ListenAddr) -> std::io::Result<UdpSocket> {
    let target = crate::addr::resolve(addr).await?[0];
    let local = if target.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}
