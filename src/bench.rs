//! `echo-client bench`: the load generator.
//!
//! N connections each keep up to K messages in flight, verify every echo
//! byte for byte and time each message from the write that carries its first
//! byte to the read that brings back its last (the same definition as the C
//! reference load generator). One thread drives every connection, so on a
//! shared machine the generator takes one core and leaves the rest to the
//! server under test.
//!
//! Each connection keeps the bytes it sent until they are echoed: checking
//! an echo is one `memcmp` against exactly what went out. Messages come
//! from the shared codec's encoder, so every framing is framed the same way
//! the server and the interactive client frame it.

use std::{
    cell::{Cell, RefCell},
    io::{self, IsTerminal, Write},
    path::PathBuf,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Buf, BytesMut};
use clap::{builder::PossibleValuesParser, Args};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::{
    io::{AsyncRead, ReadBuf},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_util::codec::Encoder;

use crate::{
    client::{connect, parse_seconds, ClientError},
    codec::{EchoCodec, Framing, LENGTH_HEADER_LEN, MAX_FRAME_LENGTH_LIMIT},
    config::{Endpoint, DEFAULT_LISTEN},
};

/// Distinct message start offsets in the random pattern.
const PATTERN_SPAN: usize = 1 << 20;
/// Most unsent-plus-unechoed bytes a connection queues (as the C generator).
const OUT_QUEUE_LIMIT: usize = 256 * 1024;
/// Bytes read per syscall.
const READ_BUFFER: usize = 64 * 1024;

/// `echo-client bench`'s arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Server address: HOST:PORT, [IPv6]:PORT, unix:PATH or tls:HOST:PORT.
    #[arg(default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub addr: String,
    #[command(flatten)]
    pub tls: crate::tls::ClientTlsArgs,
    /// Open a new connection for every message (connect, TLS handshake on
    /// tls:, one echo, close): measures connection setup, so msgs/s is
    /// connections (or handshakes) per second.
    #[arg(long)]
    pub reconnect: bool,
    /// tls: resume TLS sessions (tickets, IDs) when reconnecting, instead
    /// of a full handshake (certificate signature and verification) every
    /// time.
    #[arg(long)]
    pub tls_resume: bool,
    /// Load a UDP echo server: each connection is a socket, each message a
    /// datagram (--size includes an 8-byte sequence number).
    #[arg(long)]
    pub udp: bool,
    /// Run abusive clients alongside (resets, slowloris, non-readers,
    /// oversized frames, connect floods, random half-closes); TCP only.
    #[arg(long)]
    pub chaos: bool,
    /// Abusive clients of each kind with --chaos.
    #[arg(long, default_value = "5", value_name = "N")]
    pub chaos_clients: usize,
    /// Report this server process's peak RSS (Linux /proc) at the end.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// UDP: seconds before an unanswered datagram counts as lost.
    #[arg(long, default_value = "1", value_name = "SECS")]
    pub loss_timeout: String,
    /// Connections to open and drive at once.
    #[arg(long, value_name = "N")]
    pub connections: usize,
    /// Message size on the wire: including the \n for lines, excluding the
    /// 4-byte header for length.
    #[arg(long, value_name = "BYTES")]
    pub size: usize,
    /// Seconds to measure, after the warm-up.
    #[arg(long, value_name = "SECS")]
    pub duration: String,
    /// Messages each connection keeps in flight.
    #[arg(long, default_value = "1", value_name = "K")]
    pub pipeline: usize,
    /// Framing the server uses.
    #[arg(long, default_value = "lines", value_parser = PossibleValuesParser::new(["lines", "raw", "length"]))]
    pub framing: String,
    /// Seconds of load before measuring starts (echoes are still verified).
    #[arg(long, default_value = "1", value_name = "SECS")]
    pub warmup: String,
    /// Seconds to wait for every connection to be established.
    #[arg(long, default_value = "10", value_name = "SECS")]
    pub connect_timeout: String,
    /// Print exactly one JSON object on stdout instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Write the latency histogram to FILE in HdrHistogram's
    /// percentile-distribution text format (values in microseconds).
    #[arg(long, value_name = "FILE")]
    pub hist: Option<PathBuf>,
}

/// A validated bench plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub endpoint: Endpoint,
    pub tls: Option<crate::client::TlsTarget>,
    pub reconnect: bool,
    pub chaos: Option<usize>,
    pub server_pid: Option<u32>,
    pub udp: bool,
    pub loss_timeout: Duration,
    pub connections: usize,
    pub size: usize,
    pub pipeline: usize,
    pub framing: Framing,
    pub warmup: Duration,
    pub duration: Duration,
    pub connect_timeout: Duration,
}

impl Plan {
    pub fn from_args(args: &BenchArgs) -> Result<Plan, ClientError> {
        let usage = |message: String| ClientError::Usage(message);
        let endpoint: Endpoint = args
            .addr
            .parse()
            .map_err(|problem| usage(format!("ADDR: {problem}")))?;
        if args.udp && !matches!(endpoint, Endpoint::Tcp(_)) {
            return Err(usage("--udp needs a HOST:PORT address".into()));
        }
        if args.chaos && (args.udp || !matches!(endpoint, Endpoint::Tcp(_))) {
            return Err(usage("--chaos needs a TCP HOST:PORT address".into()));
        }
        if args.udp && !(UDP_HEADER..=65_507).contains(&args.size) {
            return Err(usage(format!(
                "--size: must be from {UDP_HEADER} to 65507 with --udp"
            )));
        }
        if args.reconnect && (args.udp || args.chaos) {
            return Err(usage(
                "--reconnect does not go with --udp or --chaos".into(),
            ));
        }
        let mut tls = crate::client::tls_setup(&endpoint, &args.tls)?;
        if let (Some(target), false) = (&mut tls, args.tls_resume) {
            let mut config = (*target.config).clone();
            config.resumption = rustls::client::Resumption::disabled();
            target.config = std::sync::Arc::new(config);
        }
        let framing: Framing = args.framing.parse().map_err(usage)?;
        if args.connections == 0 {
            return Err(usage("--connections: must be at least 1".into()));
        }
        if args.pipeline == 0 {
            return Err(usage("--pipeline: must be at least 1".into()));
        }
        let min_size = usize::from(framing != Framing::Length);
        if args.size < min_size || args.size > MAX_FRAME_LENGTH_LIMIT {
            return Err(usage(format!(
                "--size: must be from {min_size} to {MAX_FRAME_LENGTH_LIMIT} for {framing} framing"
            )));
        }
        let warmup = if args.warmup.trim() == "0" {
            Duration::ZERO
        } else {
            parse_seconds("--warmup", &args.warmup)?
        };
        Ok(Plan {
            endpoint,
            tls,
            reconnect: args.reconnect,
            chaos: args.chaos.then_some(args.chaos_clients),
            server_pid: args.server_pid,
            udp: args.udp,
            loss_timeout: parse_seconds("--loss-timeout", &args.loss_timeout)?,
            connections: args.connections,
            size: args.size,
            pipeline: args.pipeline,
            framing,
            warmup,
            duration: parse_seconds("--duration", &args.duration)?,
            connect_timeout: parse_seconds("--connect-timeout", &args.connect_timeout)?,
        })
    }

    /// Bytes one message occupies on the wire.
    pub fn wire_size(&self) -> usize {
        match self.framing {
            Framing::Length => LENGTH_HEADER_LEN + self.size,
            Framing::Lines | Framing::Raw => self.size,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The result, with exactly the keys of the contract's `--json` object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub connections: usize,
    pub size: usize,
    pub pipeline: usize,
    pub framing: String,
    pub duration_s: f64,
    pub messages: u64,
    pub msgs_per_sec: f64,
    pub mib_per_sec: f64,
    pub latency_us: Latency,
    pub errors: u64,
    pub mismatches: u64,
    /// UDP only: datagrams with no reply within the loss timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// With --chaos: what each kind of abusive client saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<std::collections::BTreeMap<&'static str, crate::chaos::KindReport>>,
    /// With --server-pid: the server's peak resident set size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_peak_rss_kib: Option<u64>,
}

/// What every connection task adds to.
struct Tally {
    /// Messages completed inside the measurement window.
    messages: Cell<u64>,
    /// All messages completed, warm-up included (for the progress bar).
    completed: Cell<u64>,
    errors: Cell<u64>,
    mismatches: Cell<u64>,
    lost: Cell<u64>,
    first_errors: RefCell<Vec<String>>,
    latency_ns: RefCell<Histogram<u64>>,
    measure_from: Cell<Option<Instant>>,
    measure_until: Cell<Option<Instant>>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            messages: Cell::new(0),
            completed: Cell::new(0),
            errors: Cell::new(0),
            mismatches: Cell::new(0),
            lost: Cell::new(0),
            first_errors: RefCell::new(Vec::new()),
            latency_ns: RefCell::new(
                Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds"),
            ),
            measure_from: Cell::new(None),
            measure_until: Cell::new(None),
        }
    }

    fn error(&self, what: String) {
        self.errors.set(self.errors.get() + 1);
        let mut first = self.first_errors.borrow_mut();
        if first.len() < 5 {
            first.push(what);
        }
    }

    fn completed(&self, sent_at: Instant, now: Instant) {
        self.completed.set(self.completed.get() + 1);
        let in_window = self.measure_from.get().is_some_and(|from| now >= from)
            && self.measure_until.get().is_none_or(|until| now < until);
        if in_window {
            self.messages.set(self.messages.get() + 1);
            let nanos = now.duration_since(sent_at).as_nanos();
            self.latency_ns
                .borrow_mut()
                .saturating_record(u64::try_from(nanos).unwrap_or(u64::MAX));
        }
    }
}

/// Runs `echo-client bench`: prints the report, returns an error (exit 1)
/// when an echo mismatched or no message completed.
pub fn run(args: BenchArgs) -> Result<(), ClientError> {
    let plan = Plan::from_args(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClientError::Failed(format!("cannot start: {error}")))?;
    let show_progress = !args.json && io::stderr().is_terminal();
    let (report, histogram, first_errors) =
        runtime.block_on(tokio::task::LocalSet::new().run_until(measure(&plan, show_progress)))?;

    if let Some(path) = &args.hist {
        write_histogram(path, &histogram).map_err(|error| {
            ClientError::Failed(format!("cannot write {}: {error}", path.display()))
        })?;
    }
    let mut stdout = io::stdout().lock();
    let printed = if args.json {
        writeln!(
            stdout,
            "{}",
            serde_json::to_string(&report).expect("report serialises")
        )
    } else {
        write!(stdout, "{}", render(&plan, &report))
    };
    if let Err(error) = printed.and_then(|()| stdout.flush()) {
        if error.kind() != io::ErrorKind::BrokenPipe {
            return Err(ClientError::Failed(format!(
                "cannot write to stdout: {error}"
            )));
        }
    }
    for error in &first_errors {
        eprintln!("echo-client bench: {error}");
    }
    if report.mismatches > 0 {
        return Err(ClientError::Failed(format!(
            "{} echo(es) did not match what was sent",
            report.mismatches
        )));
    }
    if report.messages == 0 {
        return Err(ClientError::Failed("no message completed".into()));
    }
    Ok(())
}

/// Connects, warms up, measures, and returns the report, the histogram and
/// the first few errors. Must run inside a `LocalSet`.
pub async fn measure(
    plan: &Plan,
    show_progress: bool,
) -> Result<(Report, Histogram<u64>, Vec<String>), ClientError> {
    let tally = Rc::new(Tally::new());
    let pattern = Rc::new(random_pattern(plan));
    let codec = EchoCodec::new(plan.framing, MAX_FRAME_LENGTH_LIMIT);

    // Connect everything first: nothing is sent until all are up or failed.
    // (With --reconnect every message makes its own connection.)
    let connecting: Vec<JoinHandle<Result<Conn, ClientError>>> = (0..plan.connections)
        .filter(|_| !plan.reconnect)
        .map(|_| tokio::task::spawn_local(open(plan.clone())))
        .collect();
    let mut streams = Vec::with_capacity(plan.connections);
    for connection in connecting {
        match connection.await.expect("connect task") {
            Ok(stream) => streams.push(stream),
            Err(error) => tally.error(error.to_string()),
        }
    }
    if streams.is_empty() && !plan.reconnect {
        let why = tally
            .first_errors
            .borrow()
            .first()
            .cloned()
            .unwrap_or_default();
        return Err(ClientError::Failed(why));
    }

    let chaos = match (&plan.endpoint, plan.chaos) {
        (Endpoint::Tcp(addr), Some(per_kind)) => {
            let target = tokio::net::lookup_host((addr.host(), addr.port()))
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| ClientError::Failed(format!("cannot resolve {addr}")))?;
            Some(crate::chaos::Chaos::start(target, per_kind))
        }
        _ => None,
    };
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let measure_until = measure_from + plan.duration;
    tally.measure_from.set(Some(measure_from));
    tally.measure_until.set(Some(measure_until));
    let mut drivers: Vec<JoinHandle<()>> = streams
        .into_iter()
        .enumerate()
        .map(|(index, conn)| {
            let (pattern, tally) = (pattern.clone(), tally.clone());
            match conn {
                Conn::Tcp(stream) => tokio::task::spawn_local(
                    Driver::new(stream, plan, codec, pattern, tally, index).run(),
                ),
                Conn::Tls(stream) => tokio::task::spawn_local(
                    Driver::new(*stream, plan, codec, pattern, tally, index).run(),
                ),
                #[cfg(unix)]
                Conn::Unix(stream) => tokio::task::spawn_local(
                    Driver::new(stream, plan, codec, pattern, tally, index).run(),
                ),
                Conn::Udp(socket) => tokio::task::spawn_local(
                    UdpDriver::new(socket, plan, pattern, tally, index).run(),
                ),
            }
        })
        .collect();
    if plan.reconnect {
        drivers.extend((0..plan.connections).map(|index| {
            tokio::task::spawn_local(reconnect_loop(
                plan.clone(),
                codec,
                pattern.clone(),
                tally.clone(),
                index,
            ))
        }));
    }

    let progress = show_progress.then(|| progress_bar(plan.warmup + plan.duration));
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        let now = Instant::now();
        if now >= measure_until {
            break;
        }
        if let Some(bar) = &progress {
            bar.set_position((now - started).as_millis() as u64);
            let rate = tally.completed.get() as f64 / (now - started).as_secs_f64().max(1e-3);
            bar.set_message(format!(
                "{:>10.0} msgs/s  errors {}",
                rate,
                tally.errors.get()
            ));
        }
        tokio::select! {
            _ = ticker.tick() => {}
            () = tokio::time::sleep_until(measure_until.into()) => {}
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    for driver in drivers {
        driver.abort();
    }
    let chaos: Option<std::collections::BTreeMap<_, _>> =
        chaos.map(|chaos| chaos.finish().into_iter().collect());
    let chaos_mismatches: u64 = chaos
        .iter()
        .flat_map(|kinds| kinds.values().map(|kind| kind.mismatches))
        .sum();

    let elapsed = plan.duration.as_secs_f64();
    let messages = tally.messages.get();
    let histogram = tally.latency_ns.borrow().clone();
    let micros = |nanos: u64| nanos as f64 / 1000.0;
    let msgs_per_sec = messages as f64 / elapsed;
    let report = Report {
        connections: plan.connections,
        size: plan.size,
        pipeline: plan.pipeline,
        framing: if plan.udp {
            "udp".into()
        } else {
            plan.framing.to_string()
        },
        duration_s: elapsed,
        messages,
        msgs_per_sec,
        mib_per_sec: msgs_per_sec * plan.size as f64 / (1024.0 * 1024.0),
        latency_us: Latency {
            p50: micros(histogram.value_at_quantile(0.50)),
            p90: micros(histogram.value_at_quantile(0.90)),
            p99: micros(histogram.value_at_quantile(0.99)),
            max: micros(histogram.max()),
        },
        errors: tally.errors.get(),
        mismatches: tally.mismatches.get() + chaos_mismatches,
        lost: plan.udp.then(|| tally.lost.get()),
        chaos,
        server_peak_rss_kib: plan.server_pid.and_then(peak_rss_kib),
    };
    let first_errors = tally.first_errors.take();
    Ok((report, histogram, first_errors))
}

/// A process's peak resident set size (VmHWM), where /proc has it.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Random message bytes: printable ASCII for lines (so no `\n`, and valid
/// UTF-8 for String-based servers), any byte otherwise.
fn random_pattern(plan: &Plan) -> Vec<u8> {
    let mut state = seed();
    (0..PATTERN_SPAN + plan.size)
        .map(|_| {
            let random = xorshift(&mut state);
            match plan.framing {
                Framing::Lines => 0x20 + ((random >> 32) % 95) as u8,
                Framing::Raw | Framing::Length => (random >> 56) as u8,
            }
        })
        .collect()
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15) | 1
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// One open connection (or UDP socket) of the bench.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<crate::tls::ClientStream<TcpStream>>),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    Udp(tokio::net::UdpSocket),
}

async fn open(plan: Plan) -> Result<Conn, ClientError> {
    let failed =
        |why: String| ClientError::Failed(format!("cannot connect to {}: {why}", plan.endpoint));
    match &plan.endpoint {
        Endpoint::Tcp(addr) if plan.udp => crate::udp::connect(addr)
            .await
            .map(Conn::Udp)
            .map_err(|error| failed(error.to_string())),
        Endpoint::Tcp(addr) => Ok(Conn::Tcp(connect(addr, plan.connect_timeout).await?)),
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            tokio::time::timeout(plan.connect_timeout, tokio::net::UnixStream::connect(path))
                .await
                .map_err(|_| failed("timed out".into()))?
                .map(Conn::Unix)
                .map_err(|error| failed(error.to_string()))
        }
        #[cfg(not(unix))]
        Endpoint::Unix(_) => Err(failed("Unix sockets are not supported here".into())),
        Endpoint::Tls(addr) => Ok(Conn::Tls(Box::new(
            crate::client::connect_tls(
                addr,
                plan.tls.clone().expect("set up for tls:"),
                plan.connect_timeout,
            )
            .await?,
        ))),
    }
}

/// `--reconnect`: each message on its own connection (TLS handshake
/// included), timed from the connect to the verified echo.
async fn reconnect_loop(
    plan: Plan,
    mut codec: EchoCodec,
    pattern: Rc<Vec<u8>>,
    tally: Rc<Tally>,
    index: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut rng = seed() ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03) | 1;
    let mut message = BytesMut::new();
    let mut echoed = vec![0u8; plan.wire_size()];
    loop {
        let offset = (xorshift(&mut rng) % PATTERN_SPAN as u64) as usize;
        let payload = &pattern[offset..offset + plan.size];
        message.clear();
        if plan.framing == Framing::Lines {
            message.extend_from_slice(&payload[..plan.size - 1]);
            message.extend_from_slice(b"\n");
        } else {
            codec
                .encode(payload, &mut message)
                .expect("size was validated against the frame limit");
        }
        let started = Instant::now();
        let result = async {
            macro_rules! exchange {
                ($stream:expr) => {{
                    let mut stream = $stream;
                    stream.write_all(&message).await?;
                    stream.read_exact(&mut echoed).await?;
                    stream.shutdown().await
                }};
            }
            match open(plan.clone())
                .await
                .map_err(|e| io::Error::other(e.to_string()))?
            {
                Conn::Tcp(stream) => exchange!(stream),
                Conn::Tls(stream) => exchange!(stream),
                #[cfg(unix)]
                Conn::Unix(stream) => exchange!(stream),
                Conn::Udp(_) => unreachable!("--reconnect is refused with --udp"),
            }
        }
        .await;
        match result {
            Ok(()) if echoed[..] == message[..] => tally.completed(started, Instant::now()),
            Ok(()) => {
                tally.mismatches.set(tally.mismatches.get() + 1);
                tally.completed(started, Instant::now());
            }
            Err(error) => {
                tally.error(format!("connection failed: {error}"));
                // Do not spin on a server that refuses everything.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What the stream driver needs of a socket: TCP, Unix and TLS streams.
trait BenchStream: AsyncRead + Unpin + 'static {
    /// Writes without waiting (`WouldBlock` when it would).
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Ready when a write can make progress; for TLS, this pushes out
    /// encrypted bytes the session still holds.
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Bytes accepted by `try_write` that are not on the socket yet.
    fn wants_flush(&self) -> bool {
        false
    }
}

impl BenchStream for TcpStream {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }
}

#[cfg(unix)]
impl BenchStream for tokio::net::UnixStream {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        tokio::net::UnixStream::try_write(self, buf)
    }
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::UnixStream::poll_write_ready(self, cx)
    }
}

impl BenchStream for crate::tls::ClientStream<TcpStream> {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use tokio::io::AsyncWrite;
        // Encrypts into the session and writes what the socket takes; the
        // real waker is registered by `poll_write_ready`.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(self).poll_write(&mut cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        use tokio::io::AsyncWrite;
        Pin::new(self).poll_flush(cx)
    }
    fn wants_flush(&self) -> bool {
        self.get_ref().1.wants_write()
    }
}

/// One connection's load.
struct Driver<S> {
    stream: S,
    codec: EchoCodec,
    pattern: Rc<Vec<u8>>,
    tally: Rc<Tally>,
    rng: u64,
    size: usize,
    wire_size: usize,
    pipeline: usize,
    /// Sent-but-unechoed bytes, then unsent bytes.
    out: BytesMut,
    /// Bytes of `out` already written.
    written: usize,
    /// Bytes of the stream written, and echoed, since the start.
    total_written: u64,
    total_echoed: u64,
    /// Messages queued in `out` (their first byte may not be sent yet).
    queued: u64,
    /// Messages whose first byte has been written, with when.
    sent_at: std::collections::VecDeque<Instant>,
    /// Messages fully echoed.
    done: u64,
    /// The echo of the current message differed somewhere.
    bad: bool,
    read_buf: Vec<u8>,
}

impl<S: BenchStream> Driver<S> {
    fn new(
        stream: S,
        plan: &Plan,
        codec: EchoCodec,
        pattern: Rc<Vec<u8>>,
        tally: Rc<Tally>,
        index: usize,
    ) -> Driver<S> {
        let mut rng = seed() ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        if rng == 0 {
            rng = 1;
        }
        Driver {
            stream,
            codec,
            pattern,
            tally,
            rng,
            size: plan.size,
            wire_size: plan.wire_size(),
            pipeline: plan.pipeline,
            out: BytesMut::with_capacity(OUT_QUEUE_LIMIT.min(plan.pipeline * plan.wire_size())),
            written: 0,
            total_written: 0,
            total_echoed: 0,
            queued: 0,
            sent_at: std::collections::VecDeque::with_capacity(plan.pipeline),
            done: 0,
            bad: false,
            read_buf: vec![0; READ_BUFFER],
        }
    }

    async fn run(mut self) {
        if let Err(error) = self.drive().await {
            self.tally.error(error);
        }
    }

    async fn drive(&mut self) -> Result<(), String> {
        loop {
            self.enqueue();
            self.flush()?;
            // Read through poll_read: a short read tells tokio the socket is
            // drained, which saves an EAGAIN recv per message. Wait for
            // writability too while output is pending.
            let pending_write = self.written < self.out.len() || self.stream.wants_flush();
            let (stream, read_buf) = (&mut self.stream, &mut self.read_buf);
            let read = std::future::poll_fn(|cx| {
                let mut buf = ReadBuf::new(read_buf);
                if let Poll::Ready(result) = Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                    return Poll::Ready(Some(result.map(|()| buf.filled().len())));
                }
                if pending_write {
                    if let Poll::Ready(result) = stream.poll_write_ready(cx) {
                        return Poll::Ready(result.err().map(Err));
                    }
                }
                Poll::Pending
            })
            .await;
            match read {
                None => {}
                Some(Ok(0)) => return Err("server closed the connection".into()),
                Some(Ok(read)) => self.check_echo(read)?,
                Some(Err(error)) => return Err(format!("connection failed: {error}")),
            }
        }
    }

    /// Queues messages up to the pipeline depth and the queue limit.
    fn enqueue(&mut self) {
        while self.queued - self.done < self.pipeline as u64
            && self.out.len() + self.wire_size <= OUT_QUEUE_LIMIT.max(self.wire_size)
        {
            let offset = (xorshift(&mut self.rng) % PATTERN_SPAN as u64) as usize;
            let message = &self.pattern[offset..offset + self.size];
            if self.codec.framing() == Framing::Lines {
                self.out.extend_from_slice(&message[..self.size - 1]);
                self.out.extend_from_slice(b"\n");
            } else {
                self.codec
                    .encode(message, &mut self.out)
                    .expect("size was validated against the frame limit");
            }
            self.queued += 1;
        }
    }

    /// Writes what it can without waiting, stamping each message whose
    /// first byte goes out.
    fn flush(&mut self) -> Result<(), String> {
        while self.written < self.out.len() {
            let now = Instant::now();
            match self.stream.try_write(&self.out[self.written..]) {
                Ok(written) => {
                    self.written += written;
                    self.total_written += written as u64;
                    let first_bytes_sent = self.total_written.div_ceil(self.wire_size as u64);
                    while self.done + (self.sent_at.len() as u64) < first_bytes_sent {
                        self.sent_at.push_back(now);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(format!("connection failed: {error}")),
            }
        }
        Ok(())
    }

    /// Compares `read` echoed bytes with what was sent.
    fn check_echo(&mut self, read: usize) -> Result<(), String> {
        if self.total_echoed + read as u64 > self.total_written {
            self.tally.mismatches.set(self.tally.mismatches.get() + 1);
            return Err("server echoed more bytes than were sent".into());
        }
        let now = Instant::now();
        let mut offset = 0;
        while offset < read {
            let into_message = (self.total_echoed % self.wire_size as u64) as usize;
            let take = (self.wire_size - into_message).min(read - offset);
            // `out` starts at the first unechoed byte.
            if self.read_buf[offset..offset + take] != self.out[..take] {
                self.bad = true;
            }
            self.out.advance(take);
            self.written -= take;
            offset += take;
            self.total_echoed += take as u64;
            if into_message + take == self.wire_size {
                let sent_at = self
                    .sent_at
                    .pop_front()
                    .expect("an echoed message was sent");
                self.done += 1;
                if std::mem::take(&mut self.bad) {
                    self.tally.mismatches.set(self.tally.mismatches.get() + 1);
                }
                self.tally.completed(sent_at, now);
            }
        }
        Ok(())
    }
}

/// Bytes of a UDP bench datagram before its pattern bytes: the sequence number.
const UDP_HEADER: usize = 8;

/// One UDP socket's load: up to K datagrams in flight, each carrying its
/// sequence number; a reply is matched by it and checked byte for byte; a
/// datagram unanswered for the loss timeout is counted lost.
struct UdpDriver {
    socket: tokio::net::UdpSocket,
    pattern: Rc<Vec<u8>>,
    tally: Rc<Tally>,
    size: usize,
    pipeline: usize,
    loss_timeout: Duration,
    salt: u64,
    next_seq: u64,
    in_flight: std::collections::VecDeque<(u64, Instant)>,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl UdpDriver {
    fn new(
        socket: tokio::net::UdpSocket,
        plan: &Plan,
        pattern: Rc<Vec<u8>>,
        tally: Rc<Tally>,
        index: usize,
    ) -> UdpDriver {
        UdpDriver {
            socket,
            pattern,
            tally,
            size: plan.size,
            pipeline: plan.pipeline,
            loss_timeout: plan.loss_timeout,
            salt: seed() ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            next_seq: 0,
            in_flight: std::collections::VecDeque::with_capacity(plan.pipeline),
            out: Vec::with_capacity(plan.size),
            buf: vec![0; crate::udp::MAX_DATAGRAM],
        }
    }

    /// The datagram for `seq`: its number, then pattern bytes that depend on it.
    fn datagram(&self, seq: u64, into: &mut Vec<u8>) {
        let mut state = (seq ^ self.salt) | 1;
        let offset = (xorshift(&mut state) % PATTERN_SPAN as u64) as usize;
        into.clear();
        into.extend_from_slice(&seq.to_be_bytes());
        into.extend_from_slice(&self.pattern[offset..offset + self.size - UDP_HEADER]);
    }

    async fn run(mut self) {
        if let Err(error) = self.drive().await {
            self.tally.error(error);
        }
    }

    async fn drive(&mut self) -> Result<(), String> {
        let failed = |error: io::Error| format!("udp socket failed: {error}");
        let mut expected = Vec::with_capacity(self.size);
        loop {
            let mut blocked = false;
            while self.in_flight.len() < self.pipeline {
                let mut out = std::mem::take(&mut self.out);
                self.datagram(self.next_seq, &mut out);
                let now = Instant::now();
                let sent = self.socket.try_send(&out);
                self.out = out;
                match sent {
                    Ok(_) => {
                        self.in_flight.push_back((self.next_seq, now));
                        self.next_seq += 1;
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(error) => return Err(failed(error)),
                }
            }
            let oldest = self
                .in_flight
                .front()
                .map(|&(_, sent)| sent + self.loss_timeout);
            tokio::select! {
                received = self.socket.recv(&mut self.buf) => {
                    let len = received.map_err(failed)?;
                    let now = Instant::now();
                    let Some(seq) = self.buf.get(..UDP_HEADER).map(|b| u64::from_be_bytes(b.try_into().unwrap())) else {
                        self.tally.mismatches.set(self.tally.mismatches.get() + 1);
                        continue;
                    };
                    // A reply to a datagram already counted lost is ignored.
                    let Some(position) = self.in_flight.iter().position(|&(s, _)| s == seq) else { continue };
                    let (_, sent_at) = self.in_flight.remove(position).expect("position is in range");
                    self.datagram(seq, &mut expected);
                    if self.buf[..len] != expected[..] {
                        self.tally.mismatches.set(self.tally.mismatches.get() + 1);
                    }
                    self.tally.completed(sent_at, now);
                }
                () = tokio::time::sleep_until(oldest.unwrap_or_else(Instant::now).into()), if oldest.is_some() => {
                    let now = Instant::now();
                    while self.in_flight.front().is_some_and(|&(_, sent)| sent + self.loss_timeout <= now) {
                        self.in_flight.pop_front();
                        self.tally.lost.set(self.tally.lost.get() + 1);
                    }
                }
                ready = self.socket.writable(), if blocked => { ready.map_err(failed)?; }
            }
        }
    }
}

fn progress_bar(total: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {elapsed:>4} {msg}") {
        bar.set_style(style);
    }
    bar
}

/// The human-readable report.
pub fn render(plan: &Plan, report: &Report) -> String {
    let latency = &report.latency_us;
    let lost = report
        .lost
        .map(|lost| {
            format!(
                "lost        {lost} (no reply within {:.1} s)\n",
                plan.loss_timeout.as_secs_f64()
            )
        })
        .unwrap_or_default();
    let mut extra = lost;
    if let Some(kinds) = &report.chaos {
        extra += "chaos       kind          attempts  closed by server  errors  mismatches\n";
        for (name, kind) in kinds {
            extra += &format!(
                "            {name:<12} {:>9} {:>17} {:>7} {:>11}\n",
                kind.attempts, kind.closed_by_server, kind.errors, kind.mismatches
            );
        }
    }
    if let Some(peak) = report.server_peak_rss_kib {
        extra += &format!("server      peak RSS {:.1} MiB\n", peak as f64 / 1024.0);
    }
    format!(
        "{} connections x {} B, pipeline {}, {} framing, {:.1} s measured after {:.1} s warm-up\n\
         messages    {} ({:.0} msgs/s, {:.2} MiB/s each way)\n\
         latency     p50 {:.1} us   p90 {:.1} us   p99 {:.1} us   max {:.1} us\n\
         errors      {}\n\
         mismatches  {}\n",
        report.connections,
        report.size,
        report.pipeline,
        report.framing,
        report.duration_s,
        plan.warmup.as_secs_f64(),
        report.messages,
        report.msgs_per_sec,
        report.mib_per_sec,
        latency.p50,
        latency.p90,
        latency.p99,
        latency.max,
        report.errors,
        report.mismatches,
    ) + &extra
}

/// HdrHistogram's percentile-distribution text (as `outputPercentileDistribution`
/// writes it), in microseconds, so standard HdrHistogram plotters read it.
pub fn write_histogram(path: &std::path::Path, histogram: &Histogram<u64>) -> io::Result<()> {
    let mut out = io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for step in histogram.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let value = step.value_iterated_to() as f64 / 1000.0;
        if quantile < 1.0 {
            writeln!(
                out,
                "{value:>12.3} {quantile:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(out, "{value:>12.3} {quantile:>14.12} {total:>10}")?;
        }
    }
    let micros = |nanos: f64| nanos / 1000.0;
    writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        micros(histogram.mean()),
        micros(histogram.stdev())
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        micros(histogram.max() as f64),
        histogram.len()
    )?;
    out.flush()
}
