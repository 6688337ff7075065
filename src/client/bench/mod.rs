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
mod plan;
#[cfg(unix)]
mod poller;
mod ramp;
mod reconnect;
pub mod report;
mod stream;
mod tally;
mod udp;
mod ws;

use std::{
    io::{self, IsTerminal, Write},
    rc::Rc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

pub use self::plan::{BenchArgs, Plan};
use self::{
    report::{render, write_histogram, Report},
    tally::Tally,
};
use super::{chaos::Chaos, ClientError, Conn};
use crate::addr::Endpoint;

/// Runs `echo-client bench`: prints the report, returns an error (exit 1)
/// when an echo mismatched or no message completed.
pub fn run(args: BenchArgs) -> Result<(), ClientError> {
    let plan = Plan::from_args(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ClientError::Failed(format!("cannot start: {error}")))?;
    if let Some(rates) = &plan.ramp {
        return ramp::run_ramp(&runtime, &plan, rates, args.json);
    }
    let show_progress = !args.json && !args.json_stream && io::stderr().is_terminal();
    let (report, histograms, first_errors) = measure_once(&runtime, &plan, show_progress)?;

    if let Some(path) = &args.hist {
        // Round trips in FILE; each phase that happened in FILE.PHASE.
        for (phase, histogram) in &histograms {
            let path = match phase {
                None => path.clone(),
                Some(_) if histogram.is_empty() => continue,
                Some(phase) => {
                    let mut name = path.clone().into_os_string();
                    name.push(format!(".{phase}"));
                    name.into()
                }
            };
            write_histogram(&path, histogram).map_err(|error| {
                ClientError::Failed(format!("cannot write {}: {error}", path.display()))
            })?;
        }
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

/// Histograms by phase: `None` is the round trip, then `connect`,
/// `handshake` and `first-echo`.
type Histograms = Vec<(Option<&'static str>, Histogram<u64>)>;

/// One measurement on `runtime`, its connections closed at the end.
fn measure_once(
    runtime: &tokio::runtime::Runtime,
    plan: &Plan,
    show_progress: bool,
) -> Result<(Report, Histograms, Vec<String>), ClientError> {
    runtime.block_on(async {
        let local = tokio::task::LocalSet::new();
        let measured = local.run_until(measure(plan, show_progress)).await;
        // Dropping the connections closes them; QUIC's closes still have
        // to be sent.
        drop(local);
        crate::client::quic::finish_closing().await;
        measured
    })
}

/// Connects, warms up, measures, and returns the report, the histograms
/// and the first few errors. Must run inside a `LocalSet`.
async fn measure(
    plan: &Plan,
    show_progress: bool,
) -> Result<(Report, Histograms, Vec<String>), ClientError> {
    let tally = Rc::new(Tally::new());
    let pattern = Rc::new(tally::random_pattern(plan));
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
    let histograms = vec![
        (None, histogram),
        (Some("connect"), tally.phase_connect_ns.borrow().clone()),
        (Some("handshake"), tally.phase_handshake_ns.borrow().clone()),
        (Some("first-echo"), tally.first_echo_ns.borrow().clone()),
    ];
    Ok((report, histograms, first_errors))
}

/// Opens every connection before anything is sent: all up or failed.
/// (With --reconnect every message makes its own connection: none here.)
async fn connect_all(plan: &Plan, tally: &Rc<Tally>) -> Result<Vec<Conn>, ClientError> {
    let mut connecting: Vec<JoinHandle<Result<Conn, ClientError>>> = Vec::new();
    // --connect-rate: one connection attempt every 1/N s.
    let mut pace = plan.connect_rate.map(|rate| {
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        pace
    });
    for _ in (0..plan.connections).filter(|_| !plan.reconnect) {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        let (plan, tally) = (plan.clone(), tally.clone());
        connecting.push(tokio::task::spawn_local(async move {
            let started = Instant::now();
            let (conn, phases) = plan.target.open_timed(plan.connect_timeout).await?;
            tally.set_up(started);
            tally.opened(phases);
            Ok(conn)
        }));
    }
    let mut conns = Vec::with_capacity(plan.connections * plan.streams);
    for connection in connecting {
        match connection.await.expect("connect task") {
            // --streams: the connection's further streams, each a driver.
            Ok(Conn::Quic(first)) if plan.streams > 1 => {
                for _ in 1..plan.streams {
                    match first.open_stream(plan.connect_timeout).await {
                        Ok(stream) => conns.push(Conn::Quic(Box::new(stream))),
                        Err(error) => tally.error(error.to_string()),
                    }
                }
                conns.push(Conn::Quic(first));
            }
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
