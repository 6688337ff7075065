//! The interactive `echo-client`: stdin lines out, echoes to stdout.
//!
//! Sending and receiving run at once, so a large pipe (`seq 1 100000 |
//! echo-client`) never deadlocks on full socket buffers. At end of stdin the
//! client half-closes, waits (bounded by `--timeout`) for every echo, and
//! checks that everything it sent came back.

use std::{io, time::Duration};

use bytes::BytesMut;
use clap::{builder::PossibleValuesParser, Parser};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use tokio_util::codec::{Decoder, Encoder};

use crate::{
    codec::{EchoCodec, Framing, MAX_FRAME_LENGTH_LIMIT},
    config::{Endpoint, ListenAddr, DEFAULT_LISTEN},
    EXIT_FAILURE, EXIT_USAGE,
};

/// Bytes of stdin gathered before a write, when more input is waiting.
const SEND_BATCH: usize = 64 * 1024;

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
    /// Server address: HOST:PORT, [IPv6]:PORT, unix:PATH or tls:HOST:PORT.
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
    Bench(crate::bench::BenchArgs),
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

/// Runs the interactive client to completion on stdin and stdout.
pub fn run(args: ClientArgs) -> Result<(), ClientError> {
    if let Some(ClientCommand::Bench(bench)) = args.command {
        return crate::bench::run(bench);
    }
    let endpoint: Endpoint = args
        .addr
        .parse()
        .map_err(|problem| ClientError::Usage(format!("ADDR: {problem}")))?;
    let framing: Framing = args.framing.parse().map_err(ClientError::Usage)?;
    let timeout = parse_seconds("--timeout", &args.timeout)?;
    if args.udp && !matches!(endpoint, Endpoint::Tcp(_)) {
        return Err(ClientError::Usage("--udp needs a HOST:PORT address".into()));
    }
    let tls = tls_setup(&endpoint, &args.tls)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClientError::Failed(format!("cannot start: {error}")))?;
    let result = runtime.block_on(async {
        // Each stdin line is its own frame, so the client may carry one
        // line of any size the framing can express.
        let codec = EchoCodec::new(framing, MAX_FRAME_LENGTH_LIMIT);
        let (input, output) = (tokio::io::stdin(), tokio::io::stdout());
        match &endpoint {
            Endpoint::Tcp(addr) if args.udp => udp_exchange(addr, input, output, timeout).await,
            Endpoint::Tcp(addr) => {
                let (from_server, to_server) = connect(addr, timeout).await?.into_split();
                exchange(from_server, to_server, input, output, codec, timeout).await
            }
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                let failed = |why: String| {
                    ClientError::Failed(format!("cannot connect to {endpoint}: {why}"))
                };
                let stream = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| failed(format!("timed out after {}s", timeout.as_secs_f64())))?
                    .map_err(|error| failed(error.to_string()))?;
                let (from_server, to_server) = stream.into_split();
                exchange(from_server, to_server, input, output, codec, timeout).await
            }
            #[cfg(not(unix))]
            Endpoint::Unix(_) => Err(ClientError::Usage(
                "Unix sockets are not supported here".into(),
            )),
            Endpoint::Tls(addr) => {
                let stream = connect_tls(addr, tls.expect("set up for tls:"), timeout).await?;
                let (from_server, to_server) = tokio::io::split(stream);
                exchange(from_server, to_server, input, output, codec, timeout).await
            }
        }
    });
    // A blocking read of an interactive stdin may still be waiting: do not
    // wait for it on the way out.
    runtime.shutdown_background();
    result
}

/// TLS settings for a `tls:` address (and a loud warning for
/// `--tls-insecure`); TLS flags with another address are a usage error.
pub fn tls_setup(
    endpoint: &Endpoint,
    args: &crate::tls::ClientTlsArgs,
) -> Result<Option<TlsTarget>, ClientError> {
    let Endpoint::Tls(addr) = endpoint else {
        let given = args.tls_ca.is_some()
            || args.tls_cert.is_some()
            || args.tls_server_name.is_some()
            || args.tls_insecure;
        return if given {
            Err(ClientError::Usage(
                "--tls-* options need a tls:HOST:PORT address".into(),
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
    Ok(Some(TlsTarget { config, name }))
}

/// What a TLS connection needs: the configuration and the name to verify.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    pub config: std::sync::Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

/// Connects to `addr` and completes the TLS handshake, all within `timeout`.
pub async fn connect_tls(
    addr: &ListenAddr,
    tls: TlsTarget,
    timeout: Duration,
) -> Result<crate::tls::ClientStream<TcpStream>, ClientError> {
    let started = tokio::time::Instant::now();
    let stream = connect(addr, timeout).await?;
    let left = timeout.saturating_sub(started.elapsed());
    let failed =
        |why: String| ClientError::Failed(format!("TLS handshake with tls:{addr} failed: {why}"));
    tokio::time::timeout(left, crate::tls::connect(stream, tls.config, tls.name))
        .await
        .map_err(|_| failed(format!("timed out after {}s", timeout.as_secs_f64())))?
        .map_err(|error| failed(error.to_string()))
}

/// Connects to `addr` (every resolved address in turn) within `timeout`.
pub async fn connect(addr: &ListenAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
    let failed = |why: String| ClientError::Failed(format!("cannot connect to {addr}: {why}"));
    let stream = tokio::time::timeout(timeout, TcpStream::connect((addr.host(), addr.port())))
        .await
        .map_err(|_| failed(format!("timed out after {}s", timeout.as_secs_f64())))?
        .map_err(|error| failed(error.to_string()))?;
    stream
        .set_nodelay(true)
        .map_err(|error| failed(error.to_string()))?;
    Ok(stream)
}

/// What one direction of the exchange moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    frames: u64,
    bytes: u64,
}

/// Sends every line of `input` and prints every echo to `output`.
pub async fn exchange<R, W, I, O>(
    from_server: R,
    to_server: W,
    input: I,
    output: O,
    codec: EchoCodec,
    timeout: Duration,
) -> Result<(), ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let receive = receive_echoes(from_server, output, codec);
    tokio::pin!(receive);
    let sent = tokio::select! {
        sent = send_lines(input, to_server, codec) => {
            sent.map_err(|error| ClientError::Failed(format!("connection lost while sending: {error}")))?
        }
        received = &mut receive => {
            let received = received?;
            return Err(ClientError::Failed(format!(
                "server closed the connection before the input ended ({} bytes echoed)",
                received.bytes
            )));
        }
    };
    let received = tokio::time::timeout(timeout, receive).await.map_err(|_| {
        ClientError::Failed(format!(
            "timed out after {}s waiting for the last echoes",
            timeout.as_secs_f64()
        ))
    })??;
    if received != sent {
        return Err(ClientError::Failed(format!(
            "server closed the connection after echoing {} of {} bytes",
            received.bytes, sent.bytes
        )));
    }
    Ok(())
}

/// UDP: each line of `input` is one datagram; its reply is printed exactly,
/// or reported lost after `timeout`. Fails (exit 1) if any reply was lost.
pub async fn udp_exchange<I, O>(
    addr: &ListenAddr,
    input: I,
    mut output: O,
    timeout: Duration,
) -> Result<(), ClientError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let failed = |why: String| ClientError::Failed(format!("udp:{addr}: {why}"));
    let socket = crate::udp::connect(addr)
        .await
        .map_err(|error| failed(error.to_string()))?;
    let mut input = BufReader::new(input);
    let (mut line, mut reply) = (Vec::new(), vec![0u8; crate::udp::MAX_DATAGRAM]);
    let (mut sent, mut lost) = (0u64, 0u64);
    loop {
        line.clear();
        if input
            .read_until(b'\n', &mut line)
            .await
            .map_err(|error| failed(format!("cannot read stdin: {error}")))?
            == 0
        {
            break;
        }
        sent += 1;
        if line.len() > 65_507 {
            return Err(failed(format!(
                "line {sent} is {} bytes, more than one datagram holds (65,507)",
                line.len()
            )));
        }
        socket
            .send(&line)
            .await
            .map_err(|error| failed(error.to_string()))?;
        // Wait for this datagram's reply; a late reply to an earlier one is skipped.
        let answered = tokio::time::timeout(timeout, async {
            loop {
                match socket.recv(&mut reply).await {
                    Ok(len) if reply[..len] == line[..] => return Ok(()),
                    Ok(_) => continue,
                    Err(error) => return Err(error),
                }
            }
        })
        .await;
        match answered {
            Ok(Ok(())) => write_output(&mut output, &line).await?,
            Ok(Err(error)) => return Err(failed(error.to_string())),
            Err(_) => {
                lost += 1;
                eprintln!(
                    "echo-client: no reply to line {sent} within {}s (lost, or dropped by the server's rate limit)",
                    timeout.as_secs_f64()
                );
            }
        }
    }
    if lost > 0 {
        return Err(failed(format!("{lost} of {sent} datagrams got no reply")));
    }
    Ok(())
}

/// Sends each line as one frame, batching lines that are already waiting
/// into one write; half-closes at end of input.
async fn send_lines<I, W>(input: I, mut to_server: W, mut codec: EchoCodec) -> io::Result<Tally>
where
    I: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut input = BufReader::with_capacity(SEND_BATCH, input);
    let mut line = Vec::new();
    let mut batch = BytesMut::new();
    let mut tally = Tally::default();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        codec.encode(&line, &mut batch)?;
        tally.frames += 1;
        tally.bytes += line.len() as u64;
        // Send when no more input is already buffered, so an interactive
        // line goes out at once and a pipe goes out in large writes.
        if input.buffer().is_empty() || batch.len() >= SEND_BATCH {
            to_server.write_all(&batch).await?;
            batch.clear();
        }
    }
    to_server.write_all(&batch).await?;
    to_server.shutdown().await?;
    Ok(tally)
}

/// Prints every echoed frame exactly as sent (`length` payloads without
/// their header) until the server closes.
async fn receive_echoes<R, O>(
    mut from_server: R,
    mut output: O,
    mut codec: EchoCodec,
) -> Result<Tally, ClientError>
where
    R: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let lost = |error: io::Error| ClientError::Failed(format!("connection lost: {error}"));
    let mut buf = BytesMut::with_capacity(SEND_BATCH);
    let mut tally = Tally::default();
    loop {
        let read = from_server.read_buf(&mut buf).await.map_err(lost)?;
        let mut printed = BytesMut::new();
        loop {
            let frame = if read == 0 {
                codec.decode_eof(&mut buf)
            } else {
                codec.decode(&mut buf)
            };
            match frame.map_err(|error| ClientError::Failed(format!("bad echo: {error}")))? {
                Some(frame) => {
                    tally.frames += 1;
                    tally.bytes += frame.len() as u64;
                    printed.unsplit(frame);
                }
                None => break,
            }
        }
        write_output(&mut output, &printed).await?;
        if read == 0 {
            return Ok(tally);
        }
        buf.reserve(SEND_BATCH);
    }
}

async fn write_output<O: AsyncWrite + Unpin>(
    output: &mut O,
    bytes: &[u8],
) -> Result<(), ClientError> {
    let result = async {
        output.write_all(bytes).await?;
        output.flush().await
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Err(ClientError::StdoutClosed),
        Err(error) => Err(ClientError::Failed(format!(
            "cannot write to stdout: {error}"
        ))),
    }
}
