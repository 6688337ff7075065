//! `echo-client bench`'s arguments, checked once into a [`Plan`].

use std::{path::PathBuf, time::Duration};

use clap::{builder::PossibleValuesParser, Args};

use super::udp::UDP_HEADER;
use crate::{
    addr::{Endpoint, DEFAULT_LISTEN, MAX_UDP_PAYLOAD},
    client::{parse_seconds, ClientError, Target},
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
    /// quic: with --tls-resume, send each resumed connection's first
    /// message as 0-RTT data, with the handshake's first packet (a message
    /// the server refuses to take early fails, and counts as an error).
    #[arg(long, requires = "tls_resume")]
    pub early_data: bool,
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
    /// quic: only: bidirectional streams per connection, each driven as a
    /// connection is (--connections counts QUIC connections).
    #[arg(long, default_value = "1", value_name = "N")]
    pub streams: usize,
    /// Churn: close each connection after N messages and open a new one in
    /// its place (connect and TLS/QUIC handshake timed), as a real client
    /// population does.
    #[arg(long, value_name = "N")]
    pub messages_per_connection: Option<u64>,
    /// Churn: close each connection after SECS (once its echoes are back)
    /// and open a new one in its place.
    #[arg(long, value_name = "SECS")]
    pub lifetime: Option<String>,
    /// Open the connections at N per second before the load starts,
    /// instead of all at once.
    #[arg(long, value_name = "N")]
    pub connect_rate: Option<String>,
    /// With --rate FROM..TO/SECS (a ramp): the number of steps, evenly
    /// spaced from FROM to TO, each measured for SECS after the warm-up.
    #[arg(long, default_value = "10", value_name = "N")]
    pub ramp_steps: usize,
    /// With a ramp: stop after the first step whose p99 is above this
    /// (`2ms`, `500us`, `0.002`), and report the knee: the highest rate
    /// whose p99 stayed within it.
    #[arg(long, value_name = "LATENCY")]
    pub until_p99: Option<String>,
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
    /// Write the round-trip histogram to FILE, and the connect, handshake
    /// and time-to-first-echo ones (where they happened) to FILE.connect,
    /// FILE.handshake and FILE.first-echo, in HdrHistogram's
    /// percentile-distribution text format (values in microseconds); the
    /// --json report then has a "histograms" object summarising all four.
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
    /// --hist: the report carries every phase's histogram summary too.
    pub phases: bool,
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
    /// quic: streams per connection.
    pub streams: usize,
    /// quic: first messages sent as 0-RTT data (`--early-data`).
    pub early_data: bool,
    /// TLS sessions resumed (`--tls-resume`).
    pub tls_resume: bool,
    /// Churn: a connection's quota before it is replaced.
    pub messages_per_connection: Option<u64>,
    pub lifetime: Option<Duration>,
    /// Connections opened per second at the start; `None` = all at once.
    pub connect_rate: Option<f64>,
    /// `--rate FROM..TO/SECS`: the total rate of each step.
    pub ramp: Option<Vec<f64>>,
    pub until_p99: Option<Duration>,
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
        if args.early_data && !matches!(endpoint, Endpoint::Quic(_)) {
            return Err(usage("--early-data needs a quic: address".into()));
        }
        if let (Some(tls), false) = (&mut target.tls, args.tls_resume) {
            let mut config = (*tls.config).clone();
            config.resumption = rustls::client::Resumption::disabled();
            tls.config = std::sync::Arc::new(config);
        }
        if let (Some(tls), true) = (&mut target.tls, args.early_data) {
            let mut config = (*tls.config).clone();
            config.enable_early_data = true;
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
        let ramp = match &args.rate {
            Some(rate) if rate.contains("..") => Some(parse_ramp(rate, args.ramp_steps)?),
            _ => None,
        };
        if args.until_p99.is_some() && ramp.is_none() {
            return Err(usage(
                "--until-p99 needs a ramp: --rate FROM..TO/SECS".into(),
            ));
        }
        let rate_per_connection = match (&args.rate, &args.rate_per_connection) {
            (Some(_), _) if ramp.is_some() => {
                let (rates, _) = ramp.as_ref().expect("a ramp");
                Some(rates[0] / (args.connections.max(1) * args.streams.max(1)) as f64)
            }
            (Some(total), _) => Some(
                parse_rate("--rate", total)?
                    / (args.connections.max(1) * args.streams.max(1)) as f64,
            ),
            (None, Some(each)) => Some(parse_rate("--rate-per-connection", each)?),
            (None, None) => None,
        };
        if rate_per_connection.is_some() && (args.udp || args.reconnect || websocket) {
            return Err(usage(
                "--rate and --rate-per-connection drive stream connections: not with --udp, --reconnect or ws://".into(),
            ));
        }
        if args.streams == 0 || args.streams > 10_000 {
            return Err(usage("--streams: must be from 1 to 10000".into()));
        }
        if args.streams > 1 && !matches!(endpoint, Endpoint::Quic(_)) {
            return Err(usage("--streams needs a quic:HOST:PORT address".into()));
        }
        if args.streams > 1
            && (args.reconnect || args.messages_per_connection.is_some() || args.lifetime.is_some())
        {
            return Err(usage(
                "--streams does not go with --reconnect or churn".into(),
            ));
        }
        let lifetime = args
            .lifetime
            .as_deref()
            .map(|secs| parse_seconds("--lifetime", secs))
            .transpose()?;
        let churn = args.messages_per_connection.is_some() || lifetime.is_some();
        if args.messages_per_connection == Some(0) {
            return Err(usage(
                "--messages-per-connection: must be at least 1".into(),
            ));
        }
        if churn && (args.udp || args.reconnect || websocket) {
            return Err(usage(
                "--messages-per-connection and --lifetime churn stream connections: not with --udp, --reconnect or ws://".into(),
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
            phases: args.hist.is_some(),
            loss_timeout: parse_seconds("--loss-timeout", &args.loss_timeout)?,
            connections: args.connections,
            size: args.size,
            pipeline: args.pipeline,
            framing,
            warmup,
            duration: match &ramp {
                Some((_, step)) => *step,
                None => parse_seconds("--duration", &args.duration)?,
            },
            connect_timeout: parse_seconds("--connect-timeout", &args.connect_timeout)?,
            rate_per_connection,
            streams: args.streams,
            early_data: args.early_data,
            tls_resume: args.tls_resume,
            messages_per_connection: args.messages_per_connection,
            lifetime,
            connect_rate: args
                .connect_rate
                .as_deref()
                .map(|rate| parse_rate("--connect-rate", rate.trim_end_matches("/s")))
                .transpose()?,
            ramp: ramp.map(|(rates, _)| rates),
            until_p99: args
                .until_p99
                .as_deref()
                .map(|text| parse_latency("--until-p99", text))
                .transpose()?,
            interval: match (&args.interval, args.json_stream) {
                (Some(secs), _) => Some(parse_seconds("--interval", secs)?),
                (None, true) => Some(Duration::from_secs(1)),
                (None, false) => None,
            },
            json_stream: args.json_stream,
        })
    }

    /// Connections driven at once: with --streams, every stream.
    pub fn drivers(&self) -> usize {
        self.connections * self.streams
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

/// `FROM..TO/SECS`: `steps` total rates evenly from FROM to TO, and how
/// long each step is measured.
fn parse_ramp(text: &str, steps: usize) -> Result<(Vec<f64>, Duration), ClientError> {
    let bad = || {
        ClientError::Usage(format!(
            "--rate: a ramp is FROM..TO/SECS such as 10k..100k/10s, found {text:?}"
        ))
    };
    let (range, step) = text.split_once('/').ok_or_else(bad)?;
    let (from, to) = range.split_once("..").ok_or_else(bad)?;
    let (from, to) = (parse_rate("--rate", from)?, parse_rate("--rate", to)?);
    let step = parse_seconds("--rate", step.trim().trim_end_matches('s'))?;
    if to < from || steps == 0 || steps > 1000 {
        return Err(ClientError::Usage(
            "--rate FROM..TO needs FROM <= TO, and --ramp-steps from 1 to 1000".into(),
        ));
    }
    let rates = (0..steps)
        .map(|i| match steps {
            1 => to,
            _ => from + (to - from) * i as f64 / (steps - 1) as f64,
        })
        .collect();
    Ok((rates, step))
}

/// `2ms`, `500us`, `1.5s` or plain seconds.
fn parse_latency(flag: &str, text: &str) -> Result<Duration, ClientError> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us").or_else(|| text.strip_suffix("µs")) {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        (text, 1.0)
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .and_then(|n| Duration::try_from_secs_f64(n * scale).ok())
        .ok_or_else(|| {
            ClientError::Usage(format!(
                "{flag}: expected a latency such as 2ms or 500us, found {text:?}"
            ))
        })
}
