//! echod — an asynchronous TCP echo daemon, its client and load generator.
//!
//! How the pieces fit:
//! - [`config`] builds the one [`Config`] from defaults, `config.toml`,
//!   `ECHOD_*` variables and flags, and validates it once at start-up.
//! - [`codec`] is the framing (`lines`, `raw`, `length`) as pure functions
//!   over a byte buffer, shared by the server, the client and the bench.
//! - [`server`] binds the listeners, runs one accept loop per listener,
//!   bounds connections with a semaphore and drives graceful shutdown.
//! - [`connection`] is the per-connection echo loop, generic over the stream:
//!   read, write back every whole frame in one batch, repeat.
//! - [`listen`] is the stream listeners: TCP and Unix domain sockets.
//! - [`proxy`] reads PROXY protocol headers from a load balancer;
//!   [`metrics`] counts what happens and serves it to Prometheus.
//! - [`udp`] is RFC 862 datagram echo with its reflection guards.
//! - [`tls`] loads rustls configurations and lets TLS streams share the
//!   echo loop.
//! - [`systemd`] adopts socket-activated listeners and notifies readiness.
//! - [`shutdown`] turns SIGINT/SIGTERM (Ctrl-C elsewhere) into the trigger.
//! - [`client`] is the interactive `echo-client`; [`bench`] its load
//!   generator (`echo-client bench`).
//!
//! The binaries in `src/bin` only parse arguments, call into here and map
//! errors to exit codes, so tests and benches drive the same code in-process.

pub mod bench;
pub mod chaos;
pub mod client;
pub mod codec;
pub mod config;
pub mod connection;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod shutdown;
pub mod systemd;
pub mod tls;
pub mod udp;

pub use codec::{EchoCodec, Framing};
pub use config::Config;
pub use server::Server;

/// Exit code for bad usage or bad configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a failure at run time (address in use, connection refused…).
pub const EXIT_FAILURE: u8 = 1;
