//! Charts of `echo-client bench` output, drawn with plotters:
//!
//! - `--json-stream` lines → msgs/s and p50/p99 per interval, over time;
//! - a ramp's `--json` object → achieved msgs/s and p99 against the target
//!   rate, with the `--until-p99` bound, to show the knee.
//!
//! `cargo run --release --example load_chart -- intervals RUN.jsonl OUT.svg`
//! `cargo run --release --example load_chart -- ramp RAMP.json OUT.svg`

use std::error::Error;

use plotters::prelude::*;
use serde_json::Value;

type Points = Vec<(f64, f64)>;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, input, output] = &args[..] else {
        return Err("usage: load_chart intervals|ramp INPUT OUTPUT.svg".into());
    };
    let text = std::fs::read_to_string(input)?;
    match kind.as_str() {
        "intervals" => intervals(&text, output),
        "ramp" => ramp(&text, output),
        other => Err(format!("unknown chart {other:?} (intervals or ramp)").into()),
    }?;
    eprintln!("chart: {output}");
    Ok(())
}

/// msgs/s on top, p50 and p99 below, one point per interval.
fn intervals(text: &str, output: &str) -> Result<(), Box<dyn Error>> {
    let mut rate = Points::new();
    let (mut p50, mut p99) = (Points::new(), Points::new());
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let event: Value = serde_json::from_str(line)?;
        if event["event"] != "interval" {
            continue;
        }
        let data = &event["data"];
        let t = data["end_s"].as_f64().unwrap_or_default();
        rate.push((t, data["msgs_per_sec"].as_f64().unwrap_or_default()));
        p50.push((t, data["latency_us"]["p50"].as_f64().unwrap_or_default()));
        p99.push((t, data["latency_us"]["p99"].as_f64().unwrap_or_default()));
    }
    let root = SVGBackend::new(output, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    panel(&top, "msgs/s per interval", "s", &[("msgs/s", rate)], None)?;
    panel(
        &bottom,
        "latency per interval (µs)",
        "s",
        &[("p50", p50), ("p99", p99)],
        None,
    )?;
    root.present()?;
    Ok(())
}

/// Achieved against target rate on top, p99 against target rate below.
fn ramp(text: &str, output: &str) -> Result<(), Box<dyn Error>> {
    let summary: Value = serde_json::from_str(text.trim())?;
    let steps = summary["steps"]
        .as_array()
        .ok_or("no steps: not a ramp's --json")?;
    let (mut achieved, mut target, mut p99) = (Points::new(), Points::new(), Points::new());
    for step in steps {
        let goal = step["open_loop"]["target_msgs_per_sec"]
            .as_f64()
            .unwrap_or_default();
        achieved.push((goal, step["msgs_per_sec"].as_f64().unwrap_or_default()));
        target.push((goal, goal));
        p99.push((goal, step["latency_us"]["p99"].as_f64().unwrap_or_default()));
    }
    let bound = summary["until_p99_us"].as_f64();
    let root = SVGBackend::new(output, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let knee = summary["knee_msgs_per_sec"]
        .as_f64()
        .map_or("no knee".to_owned(), |k| format!("knee {k:.0} msgs/s"));
    panel(
        &top,
        &format!("achieved against target msgs/s ({knee})"),
        "target msgs/s",
        &[("achieved", achieved), ("target", target)],
        None,
    )?;
    panel(
        &bottom,
        "p99 latency (µs) against target msgs/s",
        "target msgs/s",
        &[("p99", p99)],
        bound,
    )?;
    root.present()?;
    Ok(())
}

/// One panel of line series, starting at 0 on both axes; `bound` draws a
/// dashed horizontal line (the --until-p99 bound).
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    series: &[(&str, Points)],
    bound: Option<f64>,
) -> Result<(), Box<dyn Error>> {
    let points = series.iter().flat_map(|(_, points)| points.iter());
    let (x_max, y_max) = points.fold((1.0f64, bound.unwrap_or(1.0)), |(x, y), &(px, py)| {
        (x.max(px), y.max(py))
    });
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max * 1.05, 0f64..y_max * 1.15)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (index, (name, points)) in series.iter().enumerate() {
        let colour = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    if let Some(bound) = bound {
        let style = RED.stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, bound), (x_max * 1.05, bound)],
                6,
                4,
                style,
            ))?
            .label("--until-p99")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
