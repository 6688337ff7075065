//! echod — an asynchronous echo daemon, its client and load generator.
//!
//! The layers, and the one direction their imports run (down):
//!
//! ```text
//!   bin/echo-server          bin/echo-client       thin: parse, call, exit code
//!        │                        │
//!   server/                  client/               never import each other
//!   bind · admission ·       connect · interactive ·
//!   accept · session ·       websocket · bench/ ·
//!   echo · timer · http ·    chaos
//!   websocket · shutdown ·
//!   signals · reload · udp ·
//!   proxy · systemd ·
//!   metrics · admin
//!        │                        │
//!   ─────┴──── shared bottom ─────┴─────
//!   tls/      certificates; server and client configs
//!   config/   one table of keys, layers, validation (pure data)
//!   logging   tracing to stderr
//!   stream    EchoStream and its impls; Rewind
//!   clock     a monotonic clock cheap enough for every read
//!   addr      listen/connect addresses
//!   codec     Framing + the Framer that owns its scan state
//! ```
//!
//! A connection's life: a listener ([`server`]) accepts a byte stream, the
//! admission guard gives it a connection permit and a per-IP slot, the
//! session reads a PROXY header, does the TLS handshake, then runs the one
//! echo loop, whose framing is [`codec::Framer`] (or, on `ws:`/`wss:`,
//! HTTP with WebSocket echo over the same stream). Tests, benches and fuzzers
//! drive the same code in-process.

pub mod addr;
pub mod client;
pub mod clock;
pub mod codec;
pub mod config;
pub mod logging;
pub mod quic;
pub mod server;
pub mod stream;
pub mod tls;

pub use codec::{EchoCodec, Framer, Framing};
pub use config::Config;
pub use server::Server;

/// Exit code for bad usage or bad configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a failure at run time (address in use, connection refused…).
pub const EXIT_FAILURE: u8 = 1;
