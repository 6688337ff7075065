//! What a bench run reports: the `--json` object, the human-readable
//! text, the HdrHistogram file, and the progress bar while it runs.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{tally::Tally, Plan};
use crate::client::chaos::KindReport;

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
    pub chaos: Option<BTreeMap<&'static str, KindReport>>,
    /// With --server-pid: the server's peak resident set size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_peak_rss_kib: Option<u64>,
    /// With --server-pid: the server's CPU time (user + system) over the
    /// measured window, per message completed in it: the cost measure that
    /// does not depend on which side is the bottleneck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_msg: Option<f64>,
    /// With --rate or --rate-per-connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_loop: Option<OpenLoop>,
    /// With --messages-per-connection or --lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<Churn>,
    /// quic: with --streams N: streams per connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams_per_connection: Option<usize>,
    /// tls:, wss:// and quic:: how long the first connections took to be
    /// ready (connect and handshakes); with --reconnect, every connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_us: Option<Lag>,
    /// --early-data: connections that sent 0-RTT data, and how many the
    /// server accepted it on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_data: Option<EarlyDataReport>,
    /// Each phase of a connection's life on its own: connect, handshake,
    /// time to first echo (counted over the whole run), round trip (the
    /// measured window, as `latency_us`). With --hist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histograms: Option<Phases>,
}

/// `null` where a phase did not happen (no handshake on plain TCP).
#[derive(Debug, Clone, Serialize)]
pub struct Phases {
    pub connect_us: Option<Summary>,
    pub handshake_us: Option<Summary>,
    pub first_echo_us: Option<Summary>,
    pub round_trip_us: Option<Summary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty histogram.
    pub fn of(histogram: &Histogram<u64>) -> Option<Summary> {
        let micros = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        (!histogram.is_empty()).then(|| Summary {
            count: histogram.len(),
            p50: micros(0.50),
            p90: micros(0.90),
            p99: micros(0.99),
            p99_9: micros(0.999),
            max: histogram.max() as f64 / 1000.0,
        })
    }
}

/// Churn: connections opened in place of ones that met their quota, and
/// their setup time (connect, and the TLS or QUIC handshake).
#[derive(Debug, Clone, Serialize)]
pub struct Churn {
    pub reconnects: u64,
    pub connect_us: Lag,
}

/// An open-loop run: the rate asked for, and how far sending fell behind
/// the schedule (a message's first byte against when it was due).
#[derive(Debug, Clone, Serialize)]
pub struct OpenLoop {
    pub target_msgs_per_sec: f64,
    pub schedule_lag_us: Lag,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// A process's CPU time so far (user + system), where /proc has it.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let per_second = u64::try_from(per_second).ok().filter(|&n| n > 0)?;
        Some(Duration::from_micros(ticks * 1_000_000 / per_second))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// A process's peak resident set size (VmHWM), where /proc has it.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn progress_bar(total: Duration) -> indicatif::ProgressBar {
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
    if let Some(open) = &report.open_loop {
        let lag = &open.schedule_lag_us;
        extra += &format!(
            "open loop   target {:.0} msgs/s; latency counted from when each message was due; \
             sending behind schedule p50 {:.1} us   p99 {:.1} us   max {:.1} us\n",
            open.target_msgs_per_sec, lag.p50, lag.p99, lag.max
        );
    }
    if let Some(streams) = report.streams_per_connection {
        extra +=
            &format!("streams     {streams} per QUIC connection, each driven as a connection\n");
    }
    if let Some(setup) = &report.handshake_us {
        extra += &format!(
            "handshake   connect + handshake p50 {:.1} us   p99 {:.1} us   max {:.1} us\n",
            setup.p50, setup.p99, setup.max
        );
    }
    if let Some(early) = &report.early_data {
        extra += &format!(
            "0-RTT       sent on {} connections, accepted on {}\n",
            early.sent, early.accepted
        );
    }
    if let Some(churn) = &report.churn {
        let setup = &churn.connect_us;
        extra += &format!(
            "churn       {} connections replaced; setup p50 {:.1} us   p99 {:.1} us   max {:.1} us\n",
            churn.reconnects, setup.p50, setup.p99, setup.max
        );
    }
    for (name, phase) in report.histograms.iter().flat_map(|phases| {
        [
            ("connect", &phases.connect_us),
            ("handshake", &phases.handshake_us),
            ("first echo", &phases.first_echo_us),
        ]
    }) {
        if let Some(h) = phase {
            extra += &format!(
                "{name:<11} p50 {:.1} us   p90 {:.1} us   p99 {:.1} us   p99.9 {:.1} us   \
                 max {:.1} us   ({} connections)\n",
                h.p50, h.p90, h.p99, h.p99_9, h.max, h.count
            );
        }
    }
    if let Some(cpu) = report.server_cpu_us_per_msg {
        extra += &format!("server      CPU {cpu:.2} µs per message\n");
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

impl Report {
    /// The report of a finished run.
    pub fn new(
        plan: &Plan,
        tally: &Tally,
        histogram: &Histogram<u64>,
        chaos: Option<BTreeMap<&'static str, KindReport>>,
        server_cpu: Option<Duration>,
    ) -> Report {
        let chaos_mismatches: u64 = chaos
            .iter()
            .flat_map(|kinds| kinds.values().map(|kind| kind.mismatches))
            .sum();
        let elapsed = plan.duration.as_secs_f64();
        let messages = tally.messages.get();
        let micros = |nanos: u64| nanos as f64 / 1000.0;
        let msgs_per_sec = messages as f64 / elapsed;
        Report {
            connections: plan.connections,
            size: plan.size,
            pipeline: plan.pipeline,
            framing: match plan.target.endpoint {
                _ if plan.target.udp => "udp".into(),
                crate::addr::Endpoint::Ws(_) | crate::addr::Endpoint::Wss(_) => "websocket".into(),
                _ => plan.framing.to_string(),
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
            lost: plan.target.udp.then(|| tally.lost.get()),
            chaos,
            server_peak_rss_kib: plan.server_pid.and_then(peak_rss_kib),
            server_cpu_us_per_msg: server_cpu
                .filter(|_| messages > 0)
                .map(|cpu| cpu.as_secs_f64() * 1e6 / messages as f64),
            churn: (plan.messages_per_connection.is_some() || plan.lifetime.is_some()).then(|| {
                let connect = tally.connect_ns.borrow();
                Churn {
                    reconnects: tally.reconnects.get(),
                    connect_us: Lag {
                        p50: micros(connect.value_at_quantile(0.50)),
                        p99: micros(connect.value_at_quantile(0.99)),
                        max: micros(connect.max()),
                    },
                }
            }),
            streams_per_connection: (plan.streams > 1).then_some(plan.streams),
            handshake_us: plan.target.tls.is_some().then(|| {
                let setup = tally.setup_ns.borrow();
                Lag {
                    p50: micros(setup.value_at_quantile(0.50)),
                    p99: micros(setup.value_at_quantile(0.99)),
                    max: micros(setup.max()),
                }
            }),
            early_data: plan
                .early_data
                .then_some(plan.target.tls.as_ref())
                .flatten()
                .map(|tls| EarlyDataReport {
                    sent: tls
                        .early_data
                        .sent
                        .load(std::sync::atomic::Ordering::Relaxed),
                    accepted: tls
                        .early_data
                        .accepted
                        .load(std::sync::atomic::Ordering::Relaxed),
                }),
            histograms: plan.phases.then(|| Phases {
                connect_us: Summary::of(&tally.phase_connect_ns.borrow()),
                handshake_us: Summary::of(&tally.phase_handshake_ns.borrow()),
                first_echo_us: Summary::of(&tally.first_echo_ns.borrow()),
                round_trip_us: Summary::of(histogram),
            }),
            open_loop: plan.rate_per_connection.map(|rate| {
                let lag = tally.lag_ns.borrow();
                OpenLoop {
                    target_msgs_per_sec: rate * plan.drivers() as f64,
                    schedule_lag_us: Lag {
                        p50: micros(lag.value_at_quantile(0.50)),
                        p99: micros(lag.value_at_quantile(0.99)),
                        max: micros(lag.max()),
                    },
                }
            }),
        }
    }
}

/// 0-RTT over the run (`--early-data`).
#[derive(Debug, Clone, Serialize)]
pub struct EarlyDataReport {
    pub sent: u64,
    pub accepted: u64,
}

/// `--interval` and `--json-stream`: one line per interval.
pub struct Intervals {
    every: Duration,
    started: Instant,
    from: Instant,
    completed: u64,
}

impl Intervals {
    pub fn new(every: Duration, started: Instant) -> Intervals {
        Intervals {
            every,
            started,
            from: started,
            completed: 0,
        }
    }

    /// When the current interval ends.
    pub fn due(&self) -> Instant {
        self.from + self.every
    }

    /// Prints the interval that ends now, and starts the next.
    pub fn emit(&mut self, plan: &Plan, tally: &Tally, bar: Option<&indicatif::ProgressBar>) {
        let now = Instant::now();
        let seconds = now.duration_since(self.from).as_secs_f64();
        // The last one may be a sliver past the last whole interval.
        if seconds < self.every.as_secs_f64() / 10.0 {
            return;
        }
        let completed = tally.completed.get();
        let messages = completed - self.completed;
        let histogram = std::mem::replace(
            &mut *tally.interval_ns.borrow_mut(),
            Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds"),
        );
        let micros = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        let (start_s, end_s) = (
            self.from.duration_since(self.started).as_secs_f64(),
            now.duration_since(self.started).as_secs_f64(),
        );
        let msgs_per_sec = messages as f64 / seconds;
        let mib_per_sec = msgs_per_sec * plan.size as f64 / (1024.0 * 1024.0);
        // Mostly in the warm-up.
        let warmup = start_s + seconds / 2.0 < plan.warmup.as_secs_f64();
        if plan.json_stream {
            let line = serde_json::json!({
                "event": "interval",
                "data": {
                    "start_s": start_s,
                    "end_s": end_s,
                    "warmup": warmup,
                    "messages": messages,
                    "msgs_per_sec": msgs_per_sec,
                    "mib_per_sec": mib_per_sec,
                    "latency_us": { "p50": micros(0.50), "p99": micros(0.99) },
                    "errors": tally.errors.get(),
                    "open_connections": tally.open.get(),
                }
            });
            println!("{line}");
        } else {
            let line = format!(
                "{start_s:>6.1}-{end_s:<6.1}s {msgs_per_sec:>10.0} msgs/s {mib_per_sec:>8.2} MiB/s  \
                 p50 {:>8.1} us  p99 {:>8.1} us  errors {}  open {}{}",
                micros(0.50),
                micros(0.99),
                tally.errors.get(),
                tally.open.get(),
                if warmup { "  (warm-up)" } else { "" }
            );
            match bar {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
        }
        self.from = now;
        self.completed = completed;
    }
}
