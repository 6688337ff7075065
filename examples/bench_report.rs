//! Turns `scripts/bench-compare.sh` results (JSON lines) into a markdown
//! table of medians with ratios against a baseline server, and an SVG chart:
//! msgs/s and p99 latency against connections, one line per server.
//!
//! `cargo run --release --example bench_report -- RESULTS.jsonl [--baseline NAME] [--svg FILE]`

use std::{collections::BTreeMap, error::Error};

use plotters::prelude::*;
use serde_json::Value;

type Cell = (u64, u64, u64); // connections, size, pipeline

#[derive(Default)]
struct Runs {
    msgs_per_sec: Vec<f64>,
    p99_us: Vec<f64>,
    errors: u64,
    mismatches: u64,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .ok_or("usage: bench_report RESULTS.jsonl [--baseline NAME] [--svg FILE]")?;
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };

    let mut servers: Vec<String> = Vec::new();
    let mut runs: BTreeMap<(Cell, String), Runs> = BTreeMap::new();
    for line in std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let row: Value = serde_json::from_str(line)?;
        let server = row["server"].as_str().unwrap_or("?").to_string();
        if !servers.contains(&server) {
            servers.push(server.clone());
        }
        let cell = (
            row["connections"].as_u64().unwrap_or(0),
            row["size"].as_u64().unwrap_or(0),
            row["pipeline"].as_u64().unwrap_or(0),
        );
        let report = &row["report"];
        let entry = runs.entry((cell, server)).or_default();
        entry
            .msgs_per_sec
            .push(report["msgs_per_sec"].as_f64().unwrap_or(0.0));
        entry
            .p99_us
            .push(report["latency_us"]["p99"].as_f64().unwrap_or(f64::NAN));
        entry.errors += report["errors"].as_u64().unwrap_or(0);
        entry.mismatches += report["mismatches"].as_u64().unwrap_or(0);
    }
    let baseline =
        option("--baseline").unwrap_or_else(|| servers.first().cloned().unwrap_or_default());
    let cells: Vec<Cell> = {
        let mut cells: Vec<Cell> = runs.keys().map(|(cell, _)| *cell).collect();
        cells.dedup();
        cells
    };

    println!("| connections × size, pipeline | server | msgs/s (median) | × {baseline} | p99 µs (median) | p99 × {baseline} | runs | errors | mismatches |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for cell in &cells {
        let base = runs.get(&(*cell, baseline.clone()));
        for server in &servers {
            let Some(r) = runs.get(&(*cell, server.clone())) else {
                continue;
            };
            let (rate, p99) = (median(&r.msgs_per_sec), median(&r.p99_us));
            let ratio = |mine: f64, theirs: Option<f64>| {
                theirs
                    .filter(|t| *t > 0.0)
                    .map_or("–".into(), |t| format!("{:.2}", mine / t))
            };
            println!(
                "| {} × {} B, {} | {server} | {rate:.0} | {} | {p99:.0} | {} | {} | {} | {} |",
                cell.0,
                cell.1,
                cell.2,
                ratio(rate, base.map(|b| median(&b.msgs_per_sec))),
                ratio(p99, base.map(|b| median(&b.p99_us))),
                r.msgs_per_sec.len(),
                r.errors,
                r.mismatches
            );
        }
    }

    if let Some(svg) = option("--svg") {
        draw(&svg, &servers, &runs)?;
        eprintln!("chart: {svg}");
    }
    Ok(())
}

/// 2×2 panels: msgs/s and p99 against connections, at 64 B and 4 KiB, pipeline 1.
fn draw(
    path: &str,
    servers: &[String],
    runs: &BTreeMap<(Cell, String), Runs>,
) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 2));
    let connection_counts = [1u64, 50, 500];
    for (panel, (size, latency)) in
        panels
            .iter()
            .zip([(64, false), (4096, false), (64, true), (4096, true)])
    {
        let series: Vec<(String, Vec<(f64, f64)>)> = servers
            .iter()
            .map(|server| {
                let points = connection_counts
                    .iter()
                    .enumerate()
                    .filter_map(|(x, &n)| {
                        let r = runs.get(&((n, size, 1), server.clone()))?;
                        let y = if latency {
                            median(&r.p99_us)
                        } else {
                            median(&r.msgs_per_sec)
                        };
                        y.is_finite().then_some((x as f64, y))
                    })
                    .collect();
                (server.clone(), points)
            })
            .collect();
        let top = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
            .fold(1.0f64, f64::max)
            * 1.15;
        let title = if latency {
            format!("p99 latency (µs), {size} B, pipeline 1")
        } else {
            format!("msgs/s, {size} B, pipeline 1")
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.2f64..2.2f64, 0f64..top)?;
        chart
            .configure_mesh()
            .x_labels(3)
            .x_label_formatter(&|x| {
                connection_counts
                    .get(x.round() as usize)
                    .map_or(String::new(), |n| format!("{n} conns"))
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (index, (server, points)) in series.into_iter().enumerate() {
            let colour = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                .label(server)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, colour.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
