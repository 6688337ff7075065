//! Binding: every socket the server serves, taken before anything is
//! served, so a busy port or a bad TLS file fails start-up instead of
//! a connection.
//!
//! Sockets come from the configuration, or — with systemd socket
//! activation — from the service manager, which then replaces every
//! configured `listen` and `udp` address.

use std::{io, net::SocketAddr, sync::Arc};

use tokio::{
    net::{TcpListener, UdpSocket},
    runtime::Handle,
};
use tracing::{info, warn};

#[cfg(unix)]
use super::listen::UnixListener;
use super::{
    listen::Listener,
    systemd::{self, Inherited},
    ServerError,
};
use crate::{
    addr::{resolve, Endpoint, ListenAddr},
    config::{Config, RuntimeShape},
};

/// Pending connections the kernel queues per listener (capped by
/// `net.core.somaxconn`); clients past `max_connections` wait here.
const LISTEN_BACKLOG: i32 = 4096;

/// Every socket of a server, bound.
pub struct Bound {
    pub listeners: Vec<Listener>,
    pub udp: Vec<UdpSocket>,
    /// `quic:` listeners.
    pub quic: Vec<quinn::Endpoint>,
    /// What their handshakes get.
    pub quic_server: Option<Arc<super::quic::Handshakes>>,
    /// The admin endpoint's listener, when on.
    pub admin: Option<TcpListener>,
    /// For `tls:` listeners.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Whether the stream listeners came from the service manager.
    adopted: bool,
}

impl Bound {
    /// Binds what `config` asks for (or adopts what systemd passed), then
    /// logs `listening on ADDR` once per listener with its real port.
    pub async fn new(config: &Config) -> Result<Bound, ServerError> {
        let inherited = systemd::inherited()?;
        // TLS files are checked before any port is taken (exit 2).
        let wants_tls = if inherited.is_empty() {
            config.listen.iter().any(Endpoint::is_tls)
        } else {
            inherited.iter().any(|s| matches!(s, Inherited::Tls(_)))
        };
        let tls = if wants_tls {
            Some(tls_acceptor(config)?)
        } else {
            None
        };
        let mut bound = Bound {
            listeners: Vec::new(),
            udp: Vec::new(),
            quic: Vec::new(),
            quic_server: None,
            admin: None,
            tls,
            adopted: !inherited.is_empty(),
        };
        if inherited.is_empty() {
            bound.bind_configured(config).await?;
        } else {
            info!(
                "socket activation: serving the {} socket(s) passed by the service manager instead of the configured listen and udp addresses",
                inherited.len()
            );
            bound.adopt(inherited)?;
        }
        if let Some(listen) = &config.admin {
            bound.admin = Some(bind_admin(listen).await?);
        }
        bound.log_listening();
        Ok(bound)
    }

    fn adopt(&mut self, inherited: Vec<Inherited>) -> Result<(), ServerError> {
        for socket in inherited {
            match socket {
                Inherited::Tcp(listener) => self
                    .listeners
                    .push(Listener::Tcp(TcpListener::from_std(listener)?)),
                Inherited::Tls(listener) => self
                    .listeners
                    .push(Listener::Tls(TcpListener::from_std(listener)?)),
                #[cfg(unix)]
                Inherited::Unix(listener) => self
                    .listeners
                    .push(Listener::Unix(UnixListener::inherited(listener)?)),
                Inherited::Udp(socket) => self.udp.push(UdpSocket::from_std(socket)?),
            }
        }
        Ok(())
    }

    async fn bind_configured(&mut self, config: &Config) -> Result<(), ServerError> {
        for endpoint in &config.listen {
            match endpoint {
                Endpoint::Tcp(listen)
                | Endpoint::Tls(listen)
                | Endpoint::Ws(listen)
                | Endpoint::Wss(listen) => {
                    // Per-core runtimes give each core its own socket in
                    // one SO_REUSEPORT group.
                    let group =
                        config.runtime_shape() == RuntimeShape::PerCore && config.workers > 1;
                    for addr in resolved(listen).await? {
                        let listener = bind_listener(addr, config.reuse_port, group)
                            .map_err(|source| ServerError::Bind { addr, source })?;
                        self.listeners.push(match endpoint {
                            Endpoint::Tls(_) => Listener::Tls(listener),
                            Endpoint::Ws(_) => Listener::Ws(listener),
                            Endpoint::Wss(_) => Listener::Wss(listener),
                            _ => Listener::Tcp(listener),
                        });
                    }
                }
                Endpoint::Quic(listen) => {
                    let mut warnings = Vec::new();
                    let handshakes = super::quic::Handshakes::new(config, &mut warnings)?;
                    for warning in warnings {
                        warn!("{warning}");
                    }
                    for addr in resolved(listen).await? {
                        let endpoint = bind_udp(addr, config.reuse_port)
                            .and_then(|socket| socket.into_std())
                            .and_then(|socket| {
                                super::quic::endpoint(socket, handshakes.server_config())
                            })
                            .map_err(|source| ServerError::BindUdp { addr, source })?;
                        self.quic.push(endpoint);
                    }
                    self.quic_server = Some(Arc::new(handshakes));
                }
                #[cfg(unix)]
                Endpoint::Unix(path) => {
                    let listener =
                        UnixListener::bind(path, config.unix_socket_mode).map_err(|reason| {
                            ServerError::BindUnix {
                                endpoint: endpoint.to_string(),
                                reason,
                            }
                        })?;
                    self.listeners.push(Listener::Unix(listener));
                }
                #[cfg(not(unix))]
                Endpoint::Unix(_) => {
                    return Err(ServerError::BindUnix {
                        endpoint: endpoint.to_string(),
                        reason: "Unix sockets are not supported on this platform".into(),
                    })
                }
            }
        }
        for listen in &config.udp {
            for addr in resolved(listen).await? {
                self.udp.push(
                    bind_udp(addr, config.reuse_port)
                        .map_err(|source| ServerError::BindUdp { addr, source })?,
                );
            }
        }
        Ok(())
    }

    /// Another socket for `listener`, registered with the runtime of
    /// `core`: for a configured TCP listener a new socket in its
    /// `SO_REUSEPORT` group (the kernel spreads connections over the
    /// group), for one the service manager passed a duplicate of the same
    /// socket. `None` for a Unix listener, which stays on the main thread.
    pub fn replicate(&self, listener: &Listener, core: &Handle) -> io::Result<Option<Listener>> {
        let Some(addr) = listener.tcp_addr() else {
            return Ok(None);
        };
        let socket = if self.adopted {
            let original = listener
                .tcp_listener()
                .ok_or_else(|| io::Error::other("not a TCP listener"))?;
            std::net::TcpListener::from(socket2::SockRef::from(original).try_clone()?)
        } else {
            bind_socket(addr, true)?
        };
        let _runtime = core.enter();
        let socket = TcpListener::from_std(socket)?;
        Ok(Some(listener.same_kind(socket)))
    }

    fn log_listening(&self) {
        for listener in &self.listeners {
            let address = listener.describe();
            info!(%address, "listening on {address}");
        }
        for addr in self
            .udp
            .iter()
            .filter_map(|socket| socket.local_addr().ok())
        {
            info!(address = %format!("udp:{addr}"), "listening on udp:{addr}");
        }
        for addr in self.quic.iter().filter_map(|e| e.local_addr().ok()) {
            info!(address = %format!("quic:{addr}"), "listening on quic:{addr}");
        }
    }
}

/// The TLS acceptor from the configured files; a bad file is exit 2.
pub fn tls_acceptor(config: &Config) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let mut warnings = Vec::new();
    let tls = crate::tls::server_config(&config.tls, sessions(config), &mut warnings)?;
    for warning in warnings {
        warn!("{warning}");
    }
    Ok(tokio_rustls::TlsAcceptor::from(tls))
}

/// Resumption tickets each TLS and QUIC configuration remembers. A reload
/// builds a new configuration, so its clients resume afresh after SIGHUP.
pub fn sessions(config: &Config) -> usize {
    crate::tls::session_cache_size(config.max_connections)
}

async fn resolved(listen: &ListenAddr) -> Result<Vec<SocketAddr>, ServerError> {
    resolve(listen)
        .await
        .map_err(|source| ServerError::Resolve {
            addr: listen.clone(),
            source,
        })
}

async fn bind_admin(listen: &ListenAddr) -> Result<TcpListener, ServerError> {
    let addr = resolved(listen).await?[0];
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::BindMetrics { addr, source })?;
    let addr = listener.local_addr()?;
    info!(address = %addr, "admin listening on {addr} (/metrics, /livez, /readyz)");
    Ok(listener)
}

/// A listening socket, set up the way a server wants it on every platform.
/// With `group`, it is the first of a per-core `SO_REUSEPORT` group; unless
/// `reuse_port` asked for sharing with other processes, a plain socket
/// first checks that nobody else listens there (a second server must still
/// fail with "address in use") and fixes the port when 0 was asked.
fn bind_listener(addr: SocketAddr, reuse_port: bool, group: bool) -> io::Result<TcpListener> {
    let addr = if group && !reuse_port {
        bind_socket(addr, false)?.local_addr()?
    } else {
        addr
    };
    TcpListener::from_std(bind_socket(addr, reuse_port || group)?)
}

fn bind_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Restarting must not fail on the previous run's TIME_WAIT sockets. (On
    // Windows SO_REUSEADDR would allow stealing a live port, so not there.)
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    set_reuse_port(&socket, reuse_port)?;
    if addr.is_ipv6() {
        // Explicit, so behaviour does not depend on the host's
        // net.ipv6.bindv6only: [::] means IPv6 only; add 0.0.0.0 for IPv4.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Binds a UDP socket (IPv6 sockets IPv6-only, as for TCP).
fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    set_reuse_port(&socket, reuse_port)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// SO_REUSEPORT, so several processes share the port and the kernel
/// spreads connections (or datagrams) between them.
fn set_reuse_port(socket: &socket2::Socket, reuse_port: bool) -> io::Result<()> {
    if !reuse_port {
        return Ok(());
    }
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    return socket.set_reuse_port(true);
    #[allow(unreachable_code)]
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "reuse_port is not supported on this platform",
    ))
}
