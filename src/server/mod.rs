//! The daemon: binding, admission, accepting, sessions, the echo loop,
//! shutdown, UDP, PROXY protocol, systemd and metrics.
//!
//! [`Server::bind`] binds every socket (so a busy port fails before
//! anything is served) and logs `listening on ADDR` for each.
//! [`Server::run`] starts one accept loop per listener
//! ([`accept`]); each admitted connection ([`admission`]) runs its
//! [`session`] — PROXY header, TLS handshake, then the [`echo`] loop — in
//! its own task, spawned through the [`shutdown`] coordinator, which drains,
//! cuts and counts them at the end.
//!
//! This side imports the shared bottom (codec, stream, addr, config, tls)
//! and never the client.

mod accept;
pub mod admin;
pub mod admission;
mod bind;
mod cores;
pub mod echo;
mod http;
mod limits;
pub mod listen;
pub mod metrics;
pub mod proxy;
mod quic;
pub mod reason;
pub mod reload;
mod session;
pub mod shutdown;
pub mod signals;
pub mod systemd;
mod timer;
pub mod udp;
#[cfg(target_os = "linux")]
mod uring;
mod websocket;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::task::JoinSet;
use tracing::{info, warn};

pub use self::shutdown::ShutdownReport;
use self::{admission::Gate, bind::Bound, listen::Listener, metrics::Metrics, session::Shared};
use crate::{
    addr::ListenAddr,
    config::{Config, Engine, RuntimeShape},
};

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

/// A bound, not yet serving, echo server.
pub struct Server {
    bound: Bound,
    local_addrs: Vec<SocketAddr>,
    udp_addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    config: Config,
    /// Per-core sockets of the stream listeners, each with its core.
    replicas: Vec<(tokio::runtime::Handle, Listener)>,
}

impl Server {
    /// Resolves and binds every listen address of `config`, then logs
    /// `listening on ADDR` once per listener with its real port.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let bound = Bound::new(&config).await?;
        let local_addrs = bound
            .listeners
            .iter()
            .filter_map(Listener::tcp_addr)
            .collect();
        let udp_addrs = bound
            .udp
            .iter()
            .filter_map(|socket| socket.local_addr().ok())
            .collect();
        let metrics_addr = bound
            .admin
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        Ok(Server {
            bound,
            local_addrs,
            udp_addrs,
            metrics_addr,
            config,
            replicas: Vec::new(),
        })
    }

    /// Serves every TCP listener on each of `cores` too, with one socket
    /// per core (see [`cores`]). Unix listeners, UDP, QUIC and the admin endpoint
    /// stay on the calling runtime.
    fn spread(&mut self, cores: &[tokio::runtime::Handle]) -> Result<(), ServerError> {
        for core in cores {
            for listener in &self.bound.listeners {
                let replica =
                    self.bound
                        .replicate(listener, core)
                        .map_err(|source| ServerError::Bind {
                            addr: listener
                                .tcp_addr()
                                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                            source,
                        })?;
                if let Some(replica) = replica {
                    self.replicas.push((core.clone(), replica));
                }
            }
        }
        Ok(())
    }

    /// The bound UDP addresses, with the real port where port 0 was asked.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// Where the admin endpoint (with `/metrics`) listens, when on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
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
        self.serve(shutdown, std::future::pending::<&str>(), None)
            .await
    }

    /// As [`run`](Self::run); when `cut_now` resolves during the grace
    /// period (a second signal), every connection is cut at once; with a
    /// `reloader`, each SIGHUP reloads the configuration.
    async fn serve<F, S, C, D>(
        self,
        shutdown: F,
        cut_now: C,
        reloader: Option<reload::Reloader>,
    ) -> ShutdownReport
    where
        F: Future<Output = S>,
        S: std::fmt::Display,
        C: Future<Output = D>,
        D: std::fmt::Display,
    {
        let Server {
            mut bound,
            mut config,
            replicas,
            ..
        } = self;
        let (shared, metrics, admin) = shared_state(&config, &bound);
        let admin_task = bound
            .admin
            .take()
            .zip(admin.clone())
            .map(|(listener, state)| tokio::spawn(admin::serve(listener, state)));
        let quic = bound.quic.clone();
        let (mut tasks, limiter) = start_tasks(bound, &shared, metrics, &config);
        for (core, listener) in replicas {
            tasks.spawn_on(accept::accept_loop(listener, shared.clone()), &core);
        }
        systemd::notify_ready();
        let cause = until_shutdown(
            shutdown,
            reloader,
            &mut config,
            (&shared, limiter.as_ref(), &quic),
        )
        .await;
        systemd::notify_stopping();
        if let Some(admin) = &admin {
            admin.not_ready();
        }
        tokio::pin!(cut_now);
        let cut_early = drain_delay(config.drain_delay, &mut cut_now).await;
        let grace = config.shutdown_grace;
        shared.coordinator.drain();
        // Every accept loop returns at once on drain, dropping (closing) its listener.
        while tasks.join_next().await.is_some() {}
        info!(
            "{cause}: shutting down; listeners closed, {} open connection(s) get {:.1}s to finish",
            shared.coordinator.open(),
            grace.as_secs_f64()
        );
        let report = match cut_early {
            Some(cause) => {
                shared
                    .coordinator
                    .finish(grace, std::future::ready(cause))
                    .await
            }
            None => shared.coordinator.finish(grace, cut_now).await,
        };
        quic::closed(&quic).await;
        if let Some(task) = admin_task {
            task.abort();
        }
        info!("shutdown complete");
        report
    }
}

/// What every task of a server shares: the gate, the live settings, the
/// coordinator; and the metrics and admin state when the admin endpoint is on.
fn shared_state(
    config: &Config,
    bound: &Bound,
) -> (
    Arc<Shared>,
    Option<Arc<Metrics>>,
    Option<Arc<admin::AdminState>>,
) {
    let metrics = bound
        .admin
        .as_ref()
        .map(|_| Arc::new(Metrics::new(!bound.udp.is_empty(), !bound.quic.is_empty())));
    let admin = metrics
        .clone()
        .map(|metrics| Arc::new(admin::AdminState::new(metrics)));
    let gate = Gate::new(
        config.max_connections,
        config.max_connections_per_ip,
        metrics.clone(),
    );
    let mut shared = Shared::new(
        reload::live(config, bound.tls.clone(), bound.quic_server.clone()),
        Arc::new(gate),
        config.tcp_nodelay,
        config.proxy_protocol,
        config.proxy_trusted.clone(),
    );
    shared.io_uring = config.engine == Engine::IoUring && io_uring_available();
    let engine = if shared.io_uring {
        Engine::IoUring
    } else {
        Engine::Tokio
    };
    info!(%engine, "engine: {engine}");
    (Arc::new(shared), metrics, admin)
}

/// Whether the io_uring engine can run here; when it cannot, one warning
/// says why and the tokio engine serves.
fn io_uring_available() -> bool {
    let fallback = "connections use the tokio engine";
    #[cfg(target_os = "linux")]
    {
        use tokio::runtime::{Handle, RuntimeFlavor};
        if Handle::current().runtime_flavor() != RuntimeFlavor::CurrentThread {
            warn!("engine io-uring needs current-thread runtimes (per-core, or one worker); {fallback}");
            return false;
        }
        match uring::probe() {
            Ok(()) => true,
            Err(why) => {
                warn!(reason = %why, "io_uring is unavailable: {why}; {fallback}");
                false
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        warn!("engine io-uring is Linux-only; {fallback}");
        false
    }
}

/// Waits for the shutdown signal; meanwhile each SIGHUP reloads `config`.
async fn until_shutdown<F, S>(
    shutdown: F,
    mut reloader: Option<reload::Reloader>,
    config: &mut Config,
    (shared, limiter, quic): (
        &Shared,
        Option<&Arc<Mutex<udp::Limiter>>>,
        &[quinn::Endpoint],
    ),
) -> S
where
    F: Future<Output = S>,
{
    tokio::pin!(shutdown);
    loop {
        let hangup = async {
            match &mut reloader {
                Some(reloader) => reloader.hangups.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cause = &mut shutdown => return cause,
            () = hangup => {
                if let Some(reloader) = &mut reloader {
                    reload::reload(config, &mut reloader.load, shared, limiter, quic);
                }
            }
        }
    }
}

/// `--drain-delay`: keeps serving (with readiness off) for `delay`; a second
/// signal ends it early and is returned, to cut every connection at once.
async fn drain_delay<C, D>(
    delay: std::time::Duration,
    cut_now: &mut std::pin::Pin<&mut C>,
) -> Option<D>
where
    C: Future<Output = D>,
    D: std::fmt::Display,
{
    if delay.is_zero() {
        return None;
    }
    info!(
        "shutdown requested: /readyz answers 503; still serving for the {:.1}s drain delay",
        delay.as_secs_f64()
    );
    tokio::select! {
        () = tokio::time::sleep(delay) => None,
        cause = cut_now.as_mut() => Some(cause),
    }
}

/// Starts the accept loops and the UDP echo; returns
/// them, and the UDP limiter (which a reload updates).
fn start_tasks(
    bound: Bound,
    shared: &Arc<Shared>,
    metrics: Option<Arc<Metrics>>,
    config: &Config,
) -> (JoinSet<()>, Option<Arc<Mutex<udp::Limiter>>>) {
    let mut tasks = JoinSet::new();
    for listener in bound.listeners {
        tasks.spawn(accept::accept_loop(listener, shared.clone()));
    }
    for endpoint in bound.quic {
        tasks.spawn(quic::accept_loop(endpoint, shared.clone()));
    }
    let limiter = (!bound.udp.is_empty()).then(|| {
        let limiter = udp::Limiter::new(config.udp_limits.clone(), Instant::now());
        Arc::new(Mutex::new(limiter))
    });
    if let Some(limiter) = &limiter {
        for socket in bound.udp {
            let (limiter, metrics) = (limiter.clone(), metrics.clone());
            let shutdown = shared.coordinator.shutdown();
            tasks.spawn(udp::serve(socket, limiter, metrics, shutdown));
        }
        let shutdown = shared.coordinator.shutdown();
        tasks.spawn(udp::report_drops(limiter.clone(), shutdown));
    }
    (tasks, limiter)
}

/// Task polls a work-stealing worker makes between two looks at the I/O
/// driver: tokio's default is 61, this is one driver batch
/// (`max_io_events_per_tick`, 1,024). With hundreds of connections ready at
/// once, a worker's local queue (256 tasks) overflows into the shared queue,
/// which it reads only every 31st poll; with a look at the driver every 61
/// polls, connections woken since jump ahead of the overflow again and again,
/// and those wait several rounds (p99 at 500 connections 6× the C epoll
/// loop's). Working through a batch before the next look is the epoll loop's
/// order: first ready, first served. Echo tasks poll for microseconds, so
/// new events still wait at most a batch. BENCHMARKS.md, "Work-stealing
/// fairness".
const EVENT_INTERVAL: u32 = 1024;

/// The whole daemon: a runtime, signal handlers (installed before any
/// listener is bound), the listeners, and serving until SIGINT/SIGTERM; a
/// second signal during the grace period cuts what is still open.
///
/// `source` is the config file that was read (logged once bound, so a
/// start-up failure stays one line); `load` reads the configuration again
/// (same file, environment and flags) for each SIGHUP.
pub fn run_until_signalled(
    config: Config,
    source: Option<std::path::PathBuf>,
    load: reload::Load,
) -> Result<ShutdownReport, ServerError> {
    let (workers, max_connections) = (config.workers, config.max_connections);
    let shape = config.runtime_shape();
    let (runtime, cores) = match (shape, workers) {
        (_, 1) => (
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            None,
        ),
        (RuntimeShape::WorkStealing, workers) => (
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .event_interval(EVENT_INTERVAL)
                .enable_all()
                .build()?,
            None,
        ),
        // The main thread is core 0.
        (RuntimeShape::PerCore, workers) => (
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            Some(cores::Cores::start(workers - 1)?),
        ),
    };
    let served = runtime.block_on(async {
        let signals = signals::Signals::install()?;
        let hangups = signals::Hangups::install()?;
        let mut server = Server::bind(config).await?;
        if let Some(cores) = &cores {
            server.spread(cores.handles())?;
        }
        // Logged once bound, so a start-up failure stays one line.
        match &source {
            Some(file) => info!("configuration from {}", file.display()),
            None => info!("no config file: built-in defaults, environment and flags"),
        }
        match (shape, workers) {
            (_, 1) => info!(workers, "runtime: one thread"),
            (shape, workers) => {
                info!(workers, runtime = %shape, "runtime: {shape}, {workers} threads")
            }
        }
        limits::check_descriptor_limit(max_connections);
        let signals = tokio::sync::Mutex::new(signals);
        let first = async { signals.lock().await.recv().await };
        let second = async { signals.lock().await.recv().await };
        let reloader = reload::Reloader { hangups, load };
        Ok(server.serve(first, second, Some(reloader)).await)
    });
    // Every connection has ended: the cores' runtimes can stop.
    drop(cores);
    served
}
