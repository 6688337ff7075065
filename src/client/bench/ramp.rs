//! `--rate FROM..TO/SECS`: a ramp of open-loop steps, to find the knee
//! (the highest rate whose p99 stays within `--until-p99`).

use std::io::{self, Write};

use super::{measure_once, report::Report, Plan};
use crate::client::ClientError;

/// One open-loop measurement per step, a row each; with `--until-p99`,
/// stops at the first step over the bound and names the knee. `--json`:
/// one object with every step's report.
pub fn run_ramp(
    runtime: &tokio::runtime::Runtime,
    plan: &Plan,
    rates: &[f64],
    json: bool,
) -> Result<(), ClientError> {
    let bound_us = plan.until_p99.map(|bound| bound.as_secs_f64() * 1e6);
    if !json {
        print_line(header(plan, rates.len()));
    }
    let mut steps = Vec::new();
    let mut knee = None;
    for &rate in rates {
        let mut step = plan.clone();
        step.ramp = None;
        step.rate_per_connection = Some(rate / plan.drivers() as f64);
        let (report, _, first_errors) = measure_once(runtime, &step, false)?;
        for error in &first_errors {
            eprintln!("echo-client bench: {error}");
        }
        if !json {
            print_line(row(rate, &report));
        }
        let over = bound_us.is_some_and(|bound| report.latency_us.p99 > bound);
        if bound_us.is_some() && !over {
            knee = Some(rate);
        }
        let stop = over || report.mismatches > 0;
        steps.push(report);
        if stop {
            break;
        }
    }
    if json {
        let summary = serde_json::json!({
            "steps": steps,
            "until_p99_us": bound_us,
            "knee_msgs_per_sec": knee,
        });
        print_line(summary.to_string());
    } else if let Some(bound) = bound_us {
        print_line(match knee {
            Some(rate) => {
                format!("knee: {rate:.0} msgs/s is the highest step with p99 within {bound:.0} us")
            }
            None => format!("knee: none; the first step's p99 was already over {bound:.0} us"),
        });
    }
    if steps.iter().any(|report| report.mismatches > 0) {
        return Err(ClientError::Failed(
            "an echo did not match what was sent".into(),
        ));
    }
    Ok(())
}

fn header(plan: &Plan, steps: usize) -> String {
    format!(
        "ramp: {steps} steps of {:.1} s after {:.1} s warm-up each, {} connections x {} B, open loop\n\
         {:>12} {:>12} {:>10} {:>10} {:>12} {:>7} {:>10}",
        plan.duration.as_secs_f64(),
        plan.warmup.as_secs_f64(),
        plan.connections,
        plan.size,
        "target/s",
        "achieved/s",
        "p50 us",
        "p99 us",
        "behind p99",
        "errors",
        "mismatches"
    )
}

fn row(rate: f64, report: &Report) -> String {
    let behind = report
        .open_loop
        .as_ref()
        .map_or(0.0, |open| open.schedule_lag_us.p99);
    format!(
        "{:>12.0} {:>12.0} {:>10.1} {:>10.1} {:>12.1} {:>7} {:>10}",
        rate,
        report.msgs_per_sec,
        report.latency_us.p50,
        report.latency_us.p99,
        behind,
        report.errors,
        report.mismatches
    )
}

/// A line on stdout as soon as it is known (a ramp takes a while).
fn print_line(line: String) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
