//! `echo-client`: the interactive client ([`interactive`]) and the load
//! generator ([`bench`], with its [`chaos`] mode), both connecting through
//! [`connect`].
//!
//! This side imports the shared bottom (codec, stream, addr, tls) and
//! never the server.

pub mod bench;
pub mod chaos;
pub mod connect;
pub mod interactive;
pub mod quic;
mod rng;
pub mod websocket;

use std::time::Duration;

use clap::{builder::PossibleValuesParser, Parser};

pub use self::connect::{Conn, Target, TlsTarget};
use crate::{
    addr::{Endpoint, DEFAULT_LISTEN},
    codec::{EchoCodec, Framing, MAX_FRAME_LENGTH_LIMIT},
    EXIT_FAILURE, EXIT_USAGE,
};

/// `echo-client`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "echo-client",
    version,
    about = "Send stdin lines to an echo server and print the echoes",
    args_conflicts_with_subcommands = true
)]
pub struct ClientArgs {
    #[command(subcommand)]
    pub command: Option<ClientCommand>,
    /// Server address: HOST:PORT, [IPv6]:PORT, unix:PATH, tls:HOST:PORT, or
    /// a WebSocket URL ws://HOST:PORT/PATH or wss://HOST:PORT/PATH.
    #[arg(default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub addr: String,
    #[command(flatten)]
    pub tls: crate::tls::ClientTlsArgs,
    /// Talk UDP (RFC 862): each stdin line is one datagram, and each reply
    /// is awaited for --timeout before it is reported lost.
    #[arg(long)]
    pub udp: bool,
    /// Framing the server uses: each stdin line is one frame.
    #[arg(long, default_value = "lines", value_parser = PossibleValuesParser::new(["lines", "length"]))]
    pub framing: String,
    /// WebSocket: send each line as a binary message instead of text.
    #[arg(long)]
    pub binary: bool,
    /// Seconds to wait for the connection, and for the last echoes after
    /// end of input (with --udp: for each reply).
    #[arg(long, default_value = "10", value_name = "SECS")]
    pub timeout: String,
}

/// `echo-client`'s subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Load generator: N connections, K messages in flight each, every echo
    /// verified, throughput and latency reported.
    Bench(bench::BenchArgs),
}

/// Why the client failed, and so its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad arguments: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The connection or the exchange failed: exit 1.
    #[error("{0}")]
    Failed(String),
    /// Whoever read stdout stopped (`echo-client | head`): exit 0, quietly.
    #[error("stdout closed")]
    StdoutClosed,
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => EXIT_USAGE,
            ClientError::Failed(_) => EXIT_FAILURE,
            ClientError::StdoutClosed => 0,
        }
    }
}

/// Parses a positive number of seconds for `--timeout`-like flags.
pub fn parse_seconds(flag: &str, text: &str) -> Result<Duration, ClientError> {
    text.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| {
            ClientError::Usage(format!(
                "{flag}: expected a positive number of seconds, found {text:?}"
            ))
        })
}

/// Runs the client to completion on stdin and stdout (or the load
/// generator, for `bench`).
pub fn run(args: ClientArgs) -> Result<(), ClientError> {
    if let Some(ClientCommand::Bench(bench)) = args.command {
        return bench::run(bench);
    }
    let framing: Framing = args.framing.parse().map_err(ClientError::Usage)?;
    let timeout = parse_seconds("--timeout", &args.timeout)?;
    let target = Target::new(&args.addr, &args.tls, args.udp)?;
    if args.binary && !matches!(target.endpoint, Endpoint::Ws(_) | Endpoint::Wss(_)) {
        return Err(ClientError::Usage(
            "--binary needs a ws:// or wss:// address".into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClientError::Failed(format!("cannot start: {error}")))?;
    let result = runtime.block_on(async {
        // Each stdin line is its own frame, so the client may carry one
        // line of any size the framing can express.
        let codec = EchoCodec::new(framing, MAX_FRAME_LENGTH_LIMIT);
        let (input, output) = (tokio::io::stdin(), tokio::io::stdout());
        let exchanged = match target.open(timeout).await? {
            Conn::Udp(socket) => {
                interactive::udp_exchange(&target.endpoint, socket, input, output, timeout).await
            }
            Conn::Tcp(stream) => {
                let (from_server, to_server) = stream.into_split();
                interactive::exchange(from_server, to_server, input, output, codec, timeout).await
            }
            #[cfg(unix)]
            Conn::Unix(stream) => {
                let (from_server, to_server) = stream.into_split();
                interactive::exchange(from_server, to_server, input, output, codec, timeout).await
            }
            Conn::Tls(stream) => {
                let (from_server, to_server) = tokio::io::split(*stream);
                interactive::exchange(from_server, to_server, input, output, codec, timeout).await
            }
            Conn::WebSocket(ws) => {
                websocket::exchange(ws, input, output, args.binary, timeout).await
            }
            Conn::Quic(stream) => {
                let (from_server, to_server) = tokio::io::split(*stream);
                interactive::exchange(from_server, to_server, input, output, codec, timeout).await
            }
        };
        quic::finish_closing().await;
        exchanged
    });
    // A blocking read of an interactive stdin may still be waiting: do not
    // wait for it on the way out.
    runtime.shutdown_background();
    result
}
