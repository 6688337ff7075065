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

mod driver;
pub mod report;
mod udp;
mod ws;

use std::{
    io::{self, IsTerminal, Write},
    path::PathBuf,
    rc::Rc,
    time::{Duration, Instant},
};

use clap::{builder::PossibleValuesParser, Args};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use self::{
    driver::Tally,
    report::{render, write_histogram, Report},
    udp::UDP_HEADER,
};
use super::{chaos::Chaos, parse_seconds, ClientError, Conn, Target};
use crate::{
    addr::{Endpoint, DEFAULT_LISTEN, MAX_UDP_PAYLOAD},
    codec::{Framing, LENGTH_HEADER_LEN, MAX_FRAME_LENGTH_LIMIT},
};

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
    /// Report this server process's CPU time per message over the measured
    /// window, and its peak RSS at the end (Linux /proc).
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// UDP: seconds before an unanswered datagram counts as lost.
    #[arg(long, default_value = "1", value_name = "SECS")]
    pub loss_timeout: String,
    /// Connections to open and drive at once.
    #[arg(long, default_value = "50", value_name = "N")]
    pub connections: usize,
    /// Message size on the wire: including the \n for lines, excluding the
    /// 4-byte header for length.
    #[arg(long, default_value = "64", value_name = "BYTES")]
    pub size: usize,
    /// Seconds to measure, after the warm-up.
    #[arg(long, default_value = "10", value_name = "SECS")]
    pub duration: String,
    /// Open loop: send N messages per second in all, spread evenly over the
    /// connections on a fixed timeline, and time each echo from when its
    /// message was due, so a stalled server shows in the percentiles
    /// (no coordinated omission). `20000` or `20k`. Without it (and
    /// --rate-per-connection), each connection sends as soon as an echo is
    /// back (closed loop, the default).
    #[arg(long, value_name = "N", conflicts_with = "rate_per_connection")]
    pub rate: Option<String>,
    /// Open loop with N messages per second on each connection.
    #[arg(long, value_name = "N")]
    pub rate_per_connection: Option<String>,
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
    #[arg(long, conflicts_with = "json_stream")]
    pub json: bool,
    /// Every SECS, one line with that interval's msgs/s, MiB/s, p50/p99,
    /// errors and open connections (on stderr, under the progress bar).
    #[arg(long, value_name = "SECS")]
    pub interval: Option<String>,
    /// One JSON object per line on stdout: {"event":"interval","data":…}
    /// per interval (every --interval SECS, default 1), then
    /// {"event":"end","data":REPORT} with the --json report (as iperf3's
    /// --json-stream).
    #[arg(long)]
    pub json_stream: bool,
    /// Write the latency histogram to FILE in HdrHistogram's
    /// percentile-distribution text format (values in microseconds).
    #[arg(long, value_name = "FILE")]
    pub hist: Option<PathBuf>,
}

/// A validated bench plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where to connect, with TLS and UDP settings.
    pub target: Target,
    pub reconnect: bool,
    pub chaos: Option<usize>,
    pub server_pid: Option<u32>,
    pub loss_timeout: Duration,
    pub connections: usize,
    pub size: usize,
    pub pipeline: usize,
    pub framing: Framing,
    pub warmup: Duration,
    pub duration: Duration,
    pub connect_timeout: Duration,
    /// Open loop: messages per second on each connection.
    pub rate_per_connection: Option<f64>,
    /// `--interval`, and whether intervals go to stdout as JSON.
    pub interval: Option<Duration>,
    pub json_stream: bool,
}

impl Plan {
    pub fn from_args(args: &BenchArgs) -> Result<Plan, ClientError> {
        let usage = |message: String| ClientError::Usage(message);
        let mut target = Target::new(&args.addr, &args.tls, args.udp)?;
        let endpoint = &target.endpoint;
        if args.chaos && (args.udp || !matches!(endpoint, Endpoint::Tcp(_))) {
            return Err(usage("--chaos needs a TCP HOST:PORT address".into()));
        }
        if args.udp && !(UDP_HEADER..=MAX_UDP_PAYLOAD).contains(&args.size) {
            return Err(usage(format!(
                "--size: must be from {UDP_HEADER} to {MAX_UDP_PAYLOAD} with --udp"
            )));
        }
        let websocket = matches!(endpoint, Endpoint::Ws(_) | Endpoint::Wss(_));
        if args.reconnect && (args.udp || args.chaos || websocket) {
            return Err(usage(
                "--reconnect does not go with --udp, --chaos or ws://".into(),
            ));
        }
        if let (Some(tls), false) = (&mut target.tls, args.tls_resume) {
            let mut config = (*tls.config).clone();
            config.resumption = rustls::client::Resumption::disabled();
            tls.config = std::sync::Arc::new(config);
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
        let rate_per_connection = match (&args.rate, &args.rate_per_connection) {
            (Some(total), _) => Some(parse_rate("--rate", total)? / args.connections.max(1) as f64),
            (None, Some(each)) => Some(parse_rate("--rate-per-connection", each)?),
            (None, None) => None,
        };
        if rate_per_connection.is_some() && (args.udp || args.reconnect || websocket) {
            return Err(usage(
                "--rate and --rate-per-connection drive stream connections: not with --udp, --reconnect or ws://".into(),
            ));
        }
        let warmup = if args.warmup.trim() == "0" {
            Duration::ZERO
        } else {
            parse_seconds("--warmup", &args.warmup)?
        };
        Ok(Plan {
            target,
            reconnect: args.reconnect,
            chaos: args.chaos.then_some(args.chaos_clients),
            server_pid: args.server_pid,
            loss_timeout: parse_seconds("--loss-timeout", &args.loss_timeout)?,
            connections: args.connections,
            size: args.size,
            pipeline: args.pipeline,
            framing,
            warmup,
            duration: parse_seconds("--duration", &args.duration)?,
            connect_timeout: parse_seconds("--connect-timeout", &args.connect_timeout)?,
            rate_per_connection,
            interval: match (&args.interval, args.json_stream) {
                (Some(secs), _) => Some(parse_seconds("--interval", secs)?),
                (None, true) => Some(Duration::from_secs(1)),
                (None, false) => None,
            },
            json_stream: args.json_stream,
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

/// A rate: messages per second, `20000`, `20k` or `1.5M`, above zero.
fn parse_rate(flag: &str, text: &str) -> Result<f64, ClientError> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 1e3),
        Some((at, 'm' | 'M')) => (&text[..at], 1e6),
        _ => (text, 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| n * scale)
        .filter(|rate| rate.is_finite() && *rate > 0.0 && *rate <= 1e9)
        .ok_or_else(|| {
            ClientError::Usage(format!(
                "{flag}: expected messages per second such as 20000 or 20k, found {text:?}"
            ))
        })
}

/// Runs `echo-client bench`: prints the report, returns an error (exit 1)
/// when an echo mismatched or no message completed.
pub fn run(args: BenchArgs) -> Result<(), ClientError> {
    let plan = Plan::from_args(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClientError::Failed(format!("cannot start: {error}")))?;
    let show_progress = !args.json && !args.json_stream && io::stderr().is_terminal();
    let (report, histogram, first_errors) = runtime.block_on(async {
        let local = tokio::task::LocalSet::new();
        let measured = local.run_until(measure(&plan, show_progress)).await;
        // Dropping the connections closes them; QUIC's closes still have
        // to be sent.
        drop(local);
        crate::client::quic::finish_closing().await;
        measured
    })?;

    if let Some(path) = &args.hist {
        write_histogram(path, &histogram).map_err(|error| {
            ClientError::Failed(format!("cannot write {}: {error}", path.display()))
        })?;
    }
    let mut stdout = io::stdout().lock();
    let printed = if args.json_stream {
        let end = serde_json::json!({ "event": "end", "data": report });
        writeln!(stdout, "{end}")
    } else if args.json {
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
    let pattern = Rc::new(driver::random_pattern(plan));
    let conns = connect_all(plan, &tally).await?;
    let chaos = start_chaos(plan).await?;
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let measure_until = measure_from + plan.duration;
    tally.measure_from.set(Some(measure_from));
    tally.measure_until.set(Some(measure_until));
    let drivers = driver::spawn_all(plan, conns, &pattern, &tally);
    // The server's CPU clock, read when the window opens and closes.
    let cpu_at_start = plan.server_pid.map(|pid| {
        tokio::task::spawn_local(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            report::cpu_time(pid)
        })
    });
    show_until(plan, &tally, started, measure_until, show_progress).await;
    let cpu_at_end = plan.server_pid.and_then(report::cpu_time);
    let cpu_at_start = match cpu_at_start {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };
    let server_cpu = cpu_at_start
        .zip(cpu_at_end)
        .map(|(start, end)| end.saturating_sub(start));
    for driver in drivers {
        driver.abort();
    }
    let chaos = chaos.map(|chaos| chaos.finish().into_iter().collect());
    let histogram = tally.latency_ns.borrow().clone();
    let report = Report::new(plan, &tally, &histogram, chaos, server_cpu);
    let first_errors = tally.first_errors.take();
    Ok((report, histogram, first_errors))
}

/// Opens every connection before anything is sent: all up or failed.
/// (With --reconnect every message makes its own connection: none here.)
async fn connect_all(plan: &Plan, tally: &Tally) -> Result<Vec<Conn>, ClientError> {
    let connecting: Vec<JoinHandle<Result<Conn, ClientError>>> = (0..plan.connections)
        .filter(|_| !plan.reconnect)
        .map(|_| {
            let plan = plan.clone();
            tokio::task::spawn_local(async move { plan.target.open(plan.connect_timeout).await })
        })
        .collect();
    let mut conns = Vec::with_capacity(plan.connections);
    for connection in connecting {
        match connection.await.expect("connect task") {
            Ok(conn) => conns.push(conn),
            Err(error) => tally.error(error.to_string()),
        }
    }
    if conns.is_empty() && !plan.reconnect {
        let why = tally.first_errors.borrow().first().cloned();
        return Err(ClientError::Failed(why.unwrap_or_default()));
    }
    Ok(conns)
}

/// `--chaos`: the abusive clients, against the same TCP address.
async fn start_chaos(plan: &Plan) -> Result<Option<Chaos>, ClientError> {
    let (Endpoint::Tcp(addr), Some(per_kind)) = (&plan.target.endpoint, plan.chaos) else {
        return Ok(None);
    };
    let target = crate::addr::resolve(addr)
        .await
        .map_err(|error| ClientError::Failed(format!("cannot resolve {addr}: {error}")))?[0];
    Ok(Some(Chaos::start(target, per_kind)))
}

/// Waits for the end of the window, with a progress bar on a terminal and
/// a line per `--interval`.
async fn show_until(
    plan: &Plan,
    tally: &Tally,
    started: Instant,
    measure_until: Instant,
    show_progress: bool,
) {
    let progress = show_progress.then(|| report::progress_bar(plan.warmup + plan.duration));
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let mut intervals = plan
        .interval
        .map(|every| report::Intervals::new(every, started));
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
        let next_line = intervals.as_ref().map_or(measure_until, |intervals| {
            intervals.due().min(measure_until)
        });
        tokio::select! {
            _ = ticker.tick() => {}
            () = tokio::time::sleep_until(next_line.into()) => {}
        }
        if let Some(intervals) = &mut intervals {
            if Instant::now() >= intervals.due() {
                intervals.emit(plan, tally, progress.as_ref());
            }
        }
    }
    if let Some(intervals) = &mut intervals {
        intervals.emit(plan, tally, progress.as_ref());
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
}
