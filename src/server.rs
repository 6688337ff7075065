//! Listeners, the accept loops, the connection limit and shutdown.
//!
//! [`Server::bind`] resolves and binds every listen address (so a busy port
//! fails before anything is served) and logs `listening on ADDR` for each.
//! [`Server::run`] starts one accept loop per listener; each accepted
//! connection takes a permit of one shared semaphore (the connection limit)
//! and runs [`crate::connection::echo`] in its own task.
//!
//! Shutdown falls out of two tokens: `drain` (listeners close, connections
//! finish their echoes and close) and `cut` (the grace period is over; what
//! is still open is dropped). A [`TaskTracker`] tells when all have ended.

use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn, Instrument};

use crate::{
    codec::EchoCodec,
    config::{Config, Endpoint, ListenAddr},
    connection::{self, CloseReason, ConnectionSettings, ConnectionStats, EchoStream},
    listen::{Listener, Stream},
    metrics::{Metrics, Rejection},
    proxy::{self, HeaderError, ProxyProtocol},
};

/// Pending connections the kernel queues per listener (capped by
/// `net.core.somaxconn`); clients past `max_connections` wait here.
const LISTEN_BACKLOG: i32 = 4096;
/// First and last wait after an accept error such as EMFILE.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A start-up or run-time failure: exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve { addr: ListenAddr, source: io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot listen on {endpoint}: {reason}")]
    BindUnix { endpoint: String, reason: String },
    #[error("cannot serve metrics on {addr}: {source}")]
    BindMetrics { addr: SocketAddr, source: io::Error },
    #[error("cannot listen on udp:{addr}: {source}")]
    BindUdp { addr: SocketAddr, source: io::Error },
    /// A TLS file cannot be used: a configuration error (exit 2).
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ServerError {
    /// 2 for a configuration error found while starting, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServerError::Tls(_) => crate::EXIT_USAGE,
            _ => crate::EXIT_FAILURE,
        }
    }
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections still open at the grace deadline, which were cut.
    pub cut: usize,
}

/// A bound, not yet serving, echo server.
pub struct Server {
    listeners: Vec<Listener>,
    udp: Vec<tokio::net::UdpSocket>,
    local_addrs: Vec<SocketAddr>,
    udp_addrs: Vec<SocketAddr>,
    /// The metrics exporter's listener and its address, when on.
    metrics: Option<(TcpListener, SocketAddr)>,
    /// For `tls:` listeners.
    tls: Option<tokio_rustls::TlsAcceptor>,
    config: Config,
}

impl Server {
    /// Resolves and binds every listen address of `config`, then logs
    /// `listening on ADDR` once per listener with its real port.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let mut listeners = Vec::new();
        let mut udp = Vec::new();
        let inherited = crate::systemd::inherited()?;
        // TLS files are checked before any port is taken (exit 2).
        let wants_tls = if inherited.is_empty() {
            config.listen.iter().any(|e| matches!(e, Endpoint::Tls(_)))
        } else {
            inherited
                .iter()
                .any(|s| matches!(s, crate::systemd::Inherited::Tls(_)))
        };
        let tls = if wants_tls {
            let mut warnings = Vec::new();
            let tls = crate::tls::server_config(&config.tls, &mut warnings)?;
            for warning in warnings {
                warn!("{warning}");
            }
            Some(tokio_rustls::TlsAcceptor::from(tls))
        } else {
            None
        };
        // Socket activation replaces every configured address, TCP and UDP.
        let activated = !inherited.is_empty();
        let (configured, configured_udp): (&[Endpoint], &[ListenAddr]) = if !activated {
            (&config.listen, &config.udp)
        } else {
            info!(
                "socket activation: serving the {} socket(s) passed by the service manager instead of the configured listen and udp addresses",
                inherited.len()
            );
            (&[], &[])
        };
        for socket in inherited {
            match socket {
                crate::systemd::Inherited::Tcp(listener) => {
                    listeners.push(Listener::Tcp(TcpListener::from_std(listener)?))
                }
                crate::systemd::Inherited::Tls(listener) => {
                    listeners.push(Listener::Tls(TcpListener::from_std(listener)?))
                }
                #[cfg(unix)]
                crate::systemd::Inherited::Unix(listener) => listeners.push(Listener::Unix(
                    crate::listen::UnixListener::inherited(listener)?,
                )),
                crate::systemd::Inherited::Udp(socket) => {
                    udp.push(tokio::net::UdpSocket::from_std(socket)?)
                }
            }
        }
        for endpoint in configured {
            match endpoint {
                Endpoint::Tcp(listen) | Endpoint::Tls(listen) => {
                    for addr in resolve(listen).await? {
                        let listener = bind_listener(addr, config.reuse_port)
                            .map_err(|source| ServerError::Bind { addr, source })?;
                        listeners.push(match endpoint {
                            Endpoint::Tls(_) => Listener::Tls(listener),
                            _ => Listener::Tcp(listener),
                        });
                    }
                }
                #[cfg(unix)]
                Endpoint::Unix(path) => {
                    let listener = crate::listen::UnixListener::bind(path, config.unix_socket_mode)
                        .map_err(|reason| ServerError::BindUnix {
                            endpoint: endpoint.to_string(),
                            reason,
                        })?;
                    listeners.push(Listener::Unix(listener));
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
        for listen in configured_udp {
            for addr in resolve(listen).await? {
                udp.push(
                    crate::udp::bind(addr, config.reuse_port)
                        .map_err(|source| ServerError::BindUdp { addr, source })?,
                );
            }
        }
        let metrics = match &config.metrics {
            Some(listen) => {
                let addr = resolve(listen).await?[0];
                let listener = crate::metrics::bind(addr)
                    .await
                    .map_err(|source| ServerError::BindMetrics { addr, source })?;
                let addr = listener.local_addr()?;
                info!(address = %addr, "metrics on http://{addr}/metrics");
                Some((listener, addr))
            }
            None => None,
        };
        let local_addrs = listeners.iter().filter_map(Listener::tcp_addr).collect();
        let udp_addrs = udp
            .iter()
            .filter_map(|socket| socket.local_addr().ok())
            .collect();
        for listener in &listeners {
            let address = listener.describe();
            info!(%address, "listening on {address}");
        }
        for addr in &udp_addrs {
            info!(address = %format!("udp:{addr}"), "listening on udp:{addr}");
        }
        Ok(Server {
            listeners,
            udp,
            local_addrs,
            udp_addrs,
            metrics,
            tls,
            config,
        })
    }

    /// The bound UDP addresses, with the real port where port 0 was asked.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// Where the Prometheus exporter listens, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, addr)| *addr)
    }

    /// The bound addresses, with the real port where port 0 was asked.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Serves until `shutdown` resolves (with a name for the log), then
    /// shuts down gracefully: listeners close at once, every connection
    /// echoes what it has and closes, and whatever is still open after
    /// `shutdown_grace` is cut.
    pub async fn run<F, S>(self, shutdown: F) -> ShutdownReport
    where
        F: Future<Output = S>,
        S: std::fmt::Display,
    {
        let shared = Arc::new(Shared {
            settings: ConnectionSettings {
                codec: EchoCodec::new(self.config.framing, self.config.max_frame_length),
                idle_timeout: self.config.idle_timeout,
                frame_timeout: self.config.frame_timeout,
            },
            permits: Arc::new(Semaphore::new(self.config.max_connections)),
            proxy: self.config.proxy_protocol,
            tls: self.tls,
            tls_handshake_timeout: self.config.tls_handshake_timeout,
            // The header is the connection's first "frame": a balancer sends
            // it at once, so the frame timeout (else the idle one) bounds it.
            header_timeout: self.config.frame_timeout.or(self.config.idle_timeout),
            metrics: self
                .metrics
                .as_ref()
                .map(|_| Arc::new(Metrics::new(!self.udp.is_empty()))),
            rejections: std::sync::Mutex::new(RejectionLog {
                count: 0,
                since: Instant::now(),
            }),
            tcp_nodelay: self.config.tcp_nodelay,
            max_per_ip: self.config.max_connections_per_ip,
            per_ip: std::sync::Mutex::new(std::collections::HashMap::new()),
            drain: CancellationToken::new(),
            cut: CancellationToken::new(),
            connections: TaskTracker::new(),
            lingering: AtomicUsize::new(0),
        });
        let mut accept_loops = JoinSet::new();
        for listener in self.listeners {
            accept_loops.spawn(accept_loop(listener, shared.clone()));
        }
        if let (Some((listener, _)), Some(metrics)) = (self.metrics, &shared.metrics) {
            accept_loops.spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                shared.drain.clone(),
            ));
        }
        if !self.udp.is_empty() {
            let limiter = Arc::new(std::sync::Mutex::new(crate::udp::Limiter::new(
                self.config.udp_limits.clone(),
                Instant::now(),
            )));
            for socket in self.udp {
                accept_loops.spawn(crate::udp::serve(
                    socket,
                    limiter.clone(),
                    shared.metrics.clone(),
                    shared.drain.clone(),
                ));
            }
            accept_loops.spawn(crate::udp::report_drops(limiter, shared.drain.clone()));
        }

        crate::systemd::notify_ready();
        let cause = shutdown.await;
        crate::systemd::notify_stopping();
        let grace = self.config.shutdown_grace;
        shared.drain.cancel();
        // Every accept loop returns at once on `drain`, dropping (closing) its listener.
        while accept_loops.join_next().await.is_some() {}
        info!(
            "{cause}: shutting down; listeners closed, {} open connection(s) get {:.1}s to finish",
            shared.connections.len(),
            grace.as_secs_f64()
        );

        shared.connections.close();
        let mut report = ShutdownReport { cut: 0 };
        if tokio::time::timeout(grace, shared.connections.wait())
            .await
            .is_err()
        {
            let lingering = shared.lingering.load(Ordering::Relaxed);
            report.cut = shared.connections.len().saturating_sub(lingering);
            if report.cut > 0 {
                warn!(
                    connections = report.cut,
                    "{} connection(s) still open at the {:.1}s shutdown deadline were cut",
                    report.cut,
                    grace.as_secs_f64()
                );
            }
            shared.cut.cancel();
            shared.connections.wait().await;
        }
        info!("shutdown complete");
        report
    }
}

/// The whole daemon: a runtime, signal handlers (installed before any
/// listener is bound), the listeners, and serving until SIGINT/SIGTERM.
pub fn run_until_signalled(config: Config) -> Result<ShutdownReport, ServerError> {
    let runtime = match config.workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        workers => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?,
    };
    runtime.block_on(async {
        let signals = crate::shutdown::Signals::install()?;
        let (workers, max_connections) = (config.workers, config.max_connections);
        let server = Server::bind(config).await?;
        info!(workers, "runtime: {workers} worker thread(s)");
        check_descriptor_limit(max_connections);
        Ok(server.run(signals.recv()).await)
    })
}

/// Descriptors kept for listeners, the runtime and logging.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft open-file limit to the hard one (each connection is a
/// descriptor) and logs the resulting capacity; warns when
/// `max_connections` cannot fit, since accepts would then fail and back off.
fn check_descriptor_limit(max_connections: usize) {
    #[cfg(unix)]
    {
        match raise_descriptor_limit() {
            Ok((before, limit)) => {
                let room = limit.saturating_sub(RESERVED_DESCRIPTORS);
                if limit > before {
                    info!(limit, "open-file limit {limit} (raised from {before}): room for about {room} connections");
                } else {
                    info!(
                        limit,
                        "open-file limit {limit}: room for about {room} connections"
                    );
                }
                if max_connections as u64 > room {
                    warn!(
                        "max_connections {max_connections} exceeds the open-file limit's room (about {room}): \
                         accepts will fail and back off before that many are open"
                    );
                }
            }
            Err(error) => warn!(%error, "cannot read or raise the open-file limit"),
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

/// (soft limit before, soft limit now)
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 here but not on every Unix
fn raise_descriptor_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur as u64;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit through a valid pointer. Some
        // systems cap the soft limit below an unlimited hard one: then keep it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok((before, raised.rlim_cur as u64));
        }
    }
    Ok((before, before))
}

/// What the accept loops and connection tasks share.
struct Shared {
    settings: ConnectionSettings,
    permits: Arc<Semaphore>,
    tcp_nodelay: bool,
    /// Whether connections start with a PROXY protocol header.
    proxy: ProxyProtocol,
    /// Accepts TLS on `tls:` listeners.
    tls: Option<tokio_rustls::TlsAcceptor>,
    tls_handshake_timeout: Duration,
    /// How long the PROXY header may take; `None` = no limit.
    header_timeout: Option<Duration>,
    metrics: Option<Arc<Metrics>>,
    /// Per-IP refusals, logged at most once per interval.
    rejections: std::sync::Mutex<RejectionLog>,
    /// Connections one IP may hold; 0 = no limit.
    max_per_ip: usize,
    /// Open connections per client IP (only while `max_per_ip` > 0).
    per_ip: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
    drain: CancellationToken,
    cut: CancellationToken,
    connections: TaskTracker,
    /// Connections that have delivered every echo and only wait for their
    /// client to close (see `connection::LINGER`): not counted as cut.
    lingering: AtomicUsize,
}

async fn resolve(listen: &ListenAddr) -> Result<Vec<SocketAddr>, ServerError> {
    if let Some(addr) = listen.socket_addr() {
        return Ok(vec![addr]);
    }
    let resolve_error = |source| ServerError::Resolve {
        addr: listen.clone(),
        source,
    };
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((listen.host(), listen.port()))
        .await
        .map_err(resolve_error)?
        .collect();
    // A resolver may list an address more than once; bind each once.
    addrs.dedup();
    if addrs.is_empty() {
        return Err(resolve_error(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses found",
        )));
    }
    Ok(addrs)
}

/// A listening socket, set up the way a server wants it on every platform.
fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
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
    TcpListener::from_std(socket.into())
}

/// SO_REUSEPORT, so several processes share the port and the kernel
/// spreads connections (or datagrams) between them.
pub(crate) fn set_reuse_port(socket: &socket2::Socket, reuse_port: bool) -> io::Result<()> {
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

/// A client IP's place under `max_connections_per_ip`, given back on drop.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl IpSlot {
    /// Takes a place for `ip`, or `None` when it holds its limit already.
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<IpSlot> {
        let mut per_ip = shared
            .per_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = per_ip.entry(ip).or_insert(0);
        if *open >= shared.max_per_ip {
            return None;
        }
        *open += 1;
        Some(IpSlot {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self
            .shared
            .per_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(open) = per_ip.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Counts rejections and logs them at most once per interval, so an attack
/// cannot flood the log.
struct RejectionLog {
    count: u64,
    since: Instant,
}

impl RejectionLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn reject(&mut self, limit: usize) {
        self.count += 1;
        if self.since.elapsed() >= Self::INTERVAL {
            info!(
                rejected = self.count,
                "refused {} connection(s) over the {limit}-per-IP limit in the last {}s",
                self.count,
                self.since.elapsed().as_secs()
            );
            self.count = 0;
            self.since = Instant::now();
        }
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    let local = listener.describe();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.drain.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer, ip) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            // The client gave up before we got to it: nothing to wait for.
            Err(error) if is_connection_error(&error) => {
                debug!(%error, "accept: connection gone before it was accepted");
                continue;
            }
            // Out of file descriptors or memory: retrying at once would spin
            // a core. Wait, and let existing connections free resources.
            Err(error) => {
                warn!(
                    %error,
                    "accept failed on {local}; retrying in {}ms",
                    backoff.as_millis()
                );
                tokio::select! {
                    biased;
                    _ = shared.drain.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if let Some(metrics) = &shared.metrics {
            metrics.accepted();
        }
        // The per-IP limit is checked before the client takes a slot; behind
        // a PROXY-protocol balancer it is the header's client that counts,
        // so then it is checked once the header is read.
        let ip_slot = if shared.proxy == ProxyProtocol::Off {
            match admit(&shared, ip, &peer) {
                Ok(slot) => slot,
                Err(()) => continue,
            }
        } else {
            None
        };
        // The connection limit: at most one accepted connection per listener
        // waits here for a slot; everyone else waits in the kernel backlog.
        let permit = tokio::select! {
            biased;
            _ = shared.drain.cancelled() => return,
            permit = shared.permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => return,
            },
        };
        match stream {
            Stream::Tcp(stream) => {
                let transport = if listener.is_tls() {
                    Transport::Tls
                } else {
                    Transport::Plain
                };
                // Echo replies are latency-bound: never hold one back for Nagle.
                if shared.tcp_nodelay {
                    if let Err(error) = stream.set_nodelay(true) {
                        debug!(%peer, %error, "cannot set TCP_NODELAY");
                    }
                }
                shared.connections.spawn(serve(
                    stream,
                    peer,
                    (permit, ip_slot),
                    transport,
                    shared.clone(),
                ))
            }
            #[cfg(unix)]
            Stream::Unix(stream) => shared.connections.spawn(serve(
                stream,
                peer,
                (permit, ip_slot),
                Transport::Plain,
                shared.clone(),
            )),
        };
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// The per-IP limit: a place for `ip`, `Ok(None)` when there is no limit
/// (or no IP), `Err` when the client is refused (logged and counted).
fn admit(shared: &Arc<Shared>, ip: Option<IpAddr>, peer: &str) -> Result<Option<IpSlot>, ()> {
    match ip {
        Some(ip) if shared.max_per_ip > 0 => match IpSlot::take(shared, ip) {
            Some(slot) => Ok(Some(slot)),
            None => {
                debug!(%peer, "refused: over the per-IP connection limit");
                shared
                    .rejections
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .reject(shared.max_per_ip);
                if let Some(metrics) = &shared.metrics {
                    metrics.rejected(Rejection::PerIpLimit);
                }
                Err(())
            }
        },
        _ => Ok(None),
    }
}

/// Whether a connection's bytes are the echo's, or TLS records around it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    Tls,
}

/// One connection's task: read its PROXY header when there is one, then
/// the TLS handshake on a TLS listener, then echo until the connection ends
/// or is cut, then log one line.
async fn serve<S: EchoStream + Send + 'static>(
    stream: S,
    peer: String,
    (permit, ip_slot): (OwnedSemaphorePermit, Option<IpSlot>),
    transport: Transport,
    shared: Arc<Shared>,
) {
    // The plain path stays small: a task's allocation is as large as its
    // largest state, so the PROXY header and TLS handshake states (over a
    // kilobyte for rustls) are boxed rather than carried by every plain
    // connection.
    match (shared.proxy, transport) {
        (ProxyProtocol::Off, Transport::Plain) => {
            echo_connection(stream, peer, None, (permit, ip_slot), shared).await
        }
        (ProxyProtocol::Off, Transport::Tls) => {
            Box::pin(secure(stream, peer, (permit, ip_slot), transport, shared)).await
        }
        _ => {
            Box::pin(read_proxy_header(
                stream,
                peer,
                (permit, ip_slot),
                transport,
                shared,
            ))
            .await
        }
    }
}

/// The PROXY header, then the rest of the connection with the client it
/// names.
async fn read_proxy_header<S: EchoStream + Send + 'static>(
    mut stream: S,
    peer: String,
    // The per-IP place is taken below, for the client the header names.
    (permit, _none_yet): (OwnedSemaphorePermit, Option<IpSlot>),
    transport: Transport,
    shared: Arc<Shared>,
) {
    let mut pending = BytesMut::new();
    let read = proxy::read_header(&mut stream, shared.proxy, &mut pending);
    let read = async {
        match shared.header_timeout {
            Some(limit) => tokio::time::timeout(limit, read)
                .await
                .unwrap_or(Err(HeaderError::Timeout(limit))),
            None => read.await,
        }
    };
    let header = tokio::select! {
        biased;
        // Nothing of the client's has been received yet: nothing to echo.
        _ = shared.drain.cancelled() => Err(HeaderError::Shutdown),
        header = read => header,
    };
    let (peer, ip) = match header {
        Ok(proxy::Header {
            source: Some(client),
            ..
        }) => {
            debug!(proxy = %peer, client = %client, "PROXY header from {peer}: client {client}");
            (client.to_string(), Some(client.ip()))
        }
        Ok(proxy::Header { source: None, .. }) => {
            let ip = peer.parse::<SocketAddr>().ok().map(|addr| addr.ip());
            (peer, ip)
        }
        Err(error) => {
            if error.is_routine() {
                debug!(%peer, %error, "connection from {peer} refused: {error}");
            } else {
                info!(%peer, %error, "connection from {peer} refused: {error}");
            }
            if let Some(metrics) = &shared.metrics {
                metrics.rejected(Rejection::ProxyHeader);
            }
            if !matches!(error, HeaderError::Shutdown | HeaderError::Closed(_)) {
                connection::close_gently(&mut stream, &shared.lingering).await;
            }
            return;
        }
    };
    let Ok(ip_slot) = admit(&shared, ip, &peer) else {
        return;
    };
    let stream = proxy::Rewind::new(pending, stream);
    secure(stream, peer, (permit, ip_slot), transport, shared).await
}

/// The TLS handshake, on a TLS listener (bounded by the handshake timeout,
/// so half-open handshakes cannot hold slots), then the echo.
async fn secure<S: EchoStream + Send + 'static>(
    stream: S,
    peer: String,
    slots: (OwnedSemaphorePermit, Option<IpSlot>),
    transport: Transport,
    shared: Arc<Shared>,
) {
    let acceptor = match (transport, &shared.tls) {
        (Transport::Plain, _) => return echo_connection(stream, peer, None, slots, shared).await,
        (Transport::Tls, Some(acceptor)) => acceptor.clone(),
        (Transport::Tls, None) => unreachable!("TLS listeners are bound with an acceptor"),
    };
    let limit = shared.tls_handshake_timeout;
    let handshake = tokio::select! {
        biased;
        _ = shared.drain.cancelled() => Err(("server shutting down".to_owned(), None)),
        handshake = tokio::time::timeout(limit, acceptor.accept(stream).into_fallible()) => {
            match handshake {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err((error, stream))) => Err((error.to_string(), Some((error.kind(), stream)))),
                Err(_) => Err((format!("not complete within {limit:?}"), None)),
            }
        }
    };
    let (reason, failed) = match handshake {
        Ok(stream) => {
            let session = stream.get_ref().1;
            let subject = crate::tls::peer_subject(session);
            debug!(
                %peer,
                version = ?session.protocol_version(),
                kind = ?session.handshake_kind(),
                client_cert = subject.as_deref().unwrap_or("-"),
                "TLS handshake with {peer} done"
            );
            return echo_connection(stream, peer, subject, slots, shared).await;
        }
        Err(failure) => failure,
    };
    if let Some(metrics) = &shared.metrics {
        metrics.rejected(Rejection::TlsHandshake);
    }
    // A client that vanished mid-handshake (a port scan, a health check, an
    // aborted client) or a shutdown is routine: DEBUG.
    let vanished = failed.as_ref().is_some_and(|(kind, _)| {
        matches!(
            kind,
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        )
    });
    if vanished || shared.drain.is_cancelled() {
        debug!(%peer, %reason, "TLS handshake with {peer} failed: {reason}");
        return;
    }
    info!(%peer, %reason, "TLS handshake with {peer} failed: {reason}");
    if let Some((_, mut stream)) = failed {
        // Let the alert that says why reach the client.
        connection::close_gently(&mut stream, &shared.lingering).await;
    }
}

/// Echoes until the connection ends or is cut, then logs one line.
/// `client_cert` is the subject of a verified TLS client certificate.
async fn echo_connection<S: EchoStream>(
    mut stream: S,
    peer: String,
    client_cert: Option<String>,
    _slots: (OwnedSemaphorePermit, Option<IpSlot>),
    shared: Arc<Shared>,
) {
    let opened = Instant::now();
    let client_cert = client_cert.as_deref();
    match client_cert {
        Some(subject) => debug!(%peer, client_cert = subject, "connection opened"),
        None => debug!(%peer, "connection opened"),
    }
    let mut stats = ConnectionStats::default();
    // Events inside the echo loop (TRACE `read`) name their connection.
    let span = tracing::debug_span!(target: "echod::connection", "connection", %peer, client_cert);
    // A child token per connection: waiting on it locks only its own state,
    // not one lock shared by every connection.
    let drain = shared.drain.child_token();
    let echo = connection::echo(
        &mut stream,
        &shared.settings,
        &drain,
        &shared.lingering,
        &mut stats,
        shared.metrics.as_ref().map(|metrics| &metrics.echo),
    );
    let reason = tokio::select! {
        biased;
        _ = shared.cut.cancelled() => CloseReason::Cut,
        reason = echo.instrument(span) => reason,
    };
    let lifetime = opened.elapsed();
    if let Some(metrics) = &shared.metrics {
        metrics.closed(&reason, lifetime);
    }
    log_close(&peer, client_cert, &reason, &stats, lifetime);
}

fn log_close(
    peer: &str,
    client_cert: Option<&str>,
    reason: &CloseReason,
    stats: &ConnectionStats,
    lifetime: Duration,
) {
    macro_rules! close_event {
        ($level:ident) => {
            tracing::$level!(
                %peer,
                client_cert,
                %reason,
                bytes_received = stats.bytes_received,
                bytes_echoed = stats.bytes_echoed,
                bytes_truncated = stats.bytes_truncated,
                duration_ms = lifetime.as_millis() as u64,
                "connection from {peer} closed: {reason}"
            )
        };
    }
    if reason.is_routine() && stats.bytes_truncated == 0 {
        close_event!(debug);
    } else {
        close_event!(info);
    }
}
