//! `echo-client bench` against real servers: it verifies every echo,
//! reports the contract's JSON, and fails loudly on a corrupting server.

mod common;

use std::collections::BTreeSet;

use common::*;
use echod::{Config, Framing};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_echo-client");

async fn bench(args: Vec<String>) -> (Option<i32>, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_binary(CLIENT, &args, &[], b"")
    })
    .await
    .unwrap()
}

fn args(addr: std::net::SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "bench",
        &addr.to_string(),
        "--duration",
        "0.4",
        "--warmup",
        "0",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `args` measuring for `seconds` instead.
fn lasting(mut args: Vec<String>, seconds: &str) -> Vec<String> {
    let at = args.iter().position(|arg| arg == "--duration").unwrap();
    args[at + 1] = seconds.to_owned();
    args
}

fn report(stdout: &[u8]) -> serde_json::Value {
    let text = std::str::from_utf8(stdout).unwrap();
    assert_eq!(
        text.trim().lines().count(),
        1,
        "exactly one JSON line expected: {text}"
    );
    serde_json::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_report_has_exactly_the_contract_keys_and_sane_figures() {
    let server = TestServer::start(config()).await;
    let (code, stdout, stderr) =
        bench(args(server.addr(), &["--connections", "4", "--size", "64"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    let report = report(&stdout);
    let keys: BTreeSet<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "connections",
        "size",
        "pipeline",
        "framing",
        "duration_s",
        "messages",
        "msgs_per_sec",
        "mib_per_sec",
        "latency_us",
        "errors",
        "mismatches",
    ]
    .into();
    assert_eq!(keys, expected);
    let latency: BTreeSet<&str> = report["latency_us"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(latency, ["p50", "p90", "p99", "max"].into());
    assert_eq!(report["connections"], 4);
    assert_eq!(report["framing"], "lines");
    assert_eq!(report["errors"], 0);
    assert_eq!(report["mismatches"], 0);
    let messages = report["messages"].as_u64().unwrap();
    assert!(messages > 100, "{report}");
    let rate = report["msgs_per_sec"].as_f64().unwrap();
    assert!((rate - messages as f64 / 0.4).abs() < 1.0, "{report}");
    let l = &report["latency_us"];
    let p = |k: &str| l[k].as_f64().unwrap();
    assert!(
        0.0 < p("p50") && p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("max"),
        "{l}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_is_verified_with_pipelining() {
    for (framing, size) in [
        (Framing::Raw, "1000"),
        (Framing::Length, "0"),
        (Framing::Length, "5000"),
        (Framing::Lines, "1"),
    ] {
        let server = TestServer::start(Config {
            framing,
            ..config()
        })
        .await;
        let (code, stdout, stderr) = bench(args(
            server.addr(),
            &[
                "--connections",
                "3",
                "--size",
                size,
                "--pipeline",
                "8",
                "--framing",
                framing.as_str(),
            ],
        ))
        .await;
        assert_eq!(code, Some(0), "{framing} {size}: {stderr}");
        let report = report(&stdout);
        assert_eq!(report["mismatches"], 0, "{report}");
        assert_eq!(report["pipeline"], 8);
        assert!(report["messages"].as_u64().unwrap() > 0);
        server.shutdown().await;
    }
}

/// An "echo" server that flips one bit in every 1000th byte it returns.
async fn corrupting_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut position = 0u64;
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    for byte in &mut buf[..n] {
                        position += 1;
                        if position % 1000 == 0 {
                            *byte ^= 0x01;
                        }
                    }
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn corrupted_echoes_are_counted_and_exit_one() {
    let addr = corrupting_server().await;
    let (code, stdout, stderr) = bench(args(
        addr,
        &["--connections", "2", "--size", "100", "--framing", "raw"],
    ))
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    let report = report(&stdout);
    assert!(report["mismatches"].as_u64().unwrap() > 0, "{report}");
    assert!(stderr.contains("did not match"), "{stderr}");
}

#[tokio::test]
async fn a_server_that_closes_connections_is_an_error_and_no_messages_exit_one() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let (code, stdout, stderr) = bench(args(addr, &["--connections", "2", "--size", "64"])).await;
    assert_eq!(code, Some(1), "{stderr}");
    let report = report(&stdout);
    assert_eq!(report["messages"], 0);
    assert_eq!(report["errors"], 2, "{report}");
    assert!(stderr.contains("no message completed"), "{stderr}");
}

/// A line echo server that counts the lines of every connection, in the
/// order accepted, and closes the `close_nth` connection after 5 lines.
async fn counting_server(
    close_nth: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let shared = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counts = shared.clone();
            let nth = {
                let mut counts = counts.lock().unwrap();
                counts.push(0);
                counts.len() - 1
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let lines = buf[..n].iter().filter(|&&byte| byte == b'\n').count();
                    let total = {
                        let mut counts = counts.lock().unwrap();
                        counts[nth] += lines as u64;
                        counts[nth]
                    };
                    if nth == close_nth && total >= 5 {
                        return;
                    }
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, counts)
}

/// One task drives all plain connections by readiness: a connection the
/// server closes is one error and is dropped, and every other connection
/// keeps its share of the load to the end (a lost wake-up would leave some
/// stuck at a handful of messages while the rest run on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_closed_connection_is_one_error_and_every_other_keeps_echoing() {
    let (addr, counts) = counting_server(3).await;
    let (code, stdout, stderr) = bench(lasting(
        args(addr, &["--connections", "20", "--size", "64"]),
        "0.8",
    ))
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let report = report(&stdout);
    assert_eq!(report["errors"], 1, "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");
    assert!(stderr.contains("server closed the connection"), "{stderr}");
    let mut counts = counts.lock().unwrap().clone();
    assert_eq!(counts.len(), 20, "{counts:?}");
    assert!((5..=6).contains(&counts.remove(3)), "{counts:?}");
    counts.sort_unstable();
    let (least, median) = (counts[0], counts[counts.len() / 2]);
    assert!(
        least >= 20 && least >= median / 10,
        "a connection fell behind: {counts:?}"
    );
}

#[tokio::test]
async fn refused_connections_are_one_clear_line_and_exit_one() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, stdout, stderr) = bench(args(addr, &["--connections", "2", "--size", "64"])).await;
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hist_file_is_an_hdrhistogram_percentile_distribution() {
    let server = TestServer::start(config()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latency.hgrm");
    let mut args = args(
        server.addr(),
        &["--connections", "2", "--size", "64", "--hist"],
    );
    args.push(path.display().to_string());
    let (code, _, stderr) = bench(args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"),
        "{text}"
    );
    let rows: Vec<Vec<f64>> = text
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#') && !line.contains("Value"))
        .map(|line| {
            line.split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect();
    assert!(rows.len() > 10);
    assert!(rows
        .windows(2)
        .all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1] && w[0][2] <= w[1][2]));
    assert_eq!(rows.last().unwrap()[1], 1.0);
    assert!(text.contains("#[Max     ="));
    server.shutdown().await;
}

#[test]
fn bad_bench_usage_exits_two() {
    for extra in [
        &["--connections", "0", "--size", "8", "--duration", "1"][..],
        &["--connections", "1", "--size", "0", "--duration", "1"],
        &["--connections", "1", "--size", "8", "--duration", "soon"],
        &["--rate", "0"],
        &["--rate", "fast"],
        &["--rate", "100", "--rate-per-connection", "10"],
        &["--rate", "100", "--udp"],
        &["--rate", "100", "--until-p99", "2ms"],
        &["--rate", "5k..1k/1s"],
        &["--streams", "2"],
        &["--streams", "0"],
        &["--rate", "1k..5k"],
        &["--rate", "1k..5k/1s", "--until-p99", "soon"],
    ] {
        let mut args = vec!["bench", "127.0.0.1:9"];
        args.extend_from_slice(extra);
        let (code, _, stderr) = run_binary(CLIENT, &args, &[], b"");
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let server = TestServer::start(Config {
        listen: vec![echod::config::Endpoint::Unix(path.clone())],
        ..config()
    })
    .await;
    let unix = format!("unix:{}", path.display());
    let mut args = args(
        server.addr_or_unused(),
        &["--connections", "3", "--size", "100", "--pipeline", "4"],
    );
    args[1] = unix;
    let (code, stdout, stderr) = bench(args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let report = report(&stdout);
    assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["mismatches"], 0);
    assert!(
        report.get("lost").is_none(),
        "lost is for UDP only: {report}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_over_udp_verifies_datagrams_and_counts_none_lost_within_the_limits() {
    let server = TestServer::start(Config {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        udp_limits: echod::config::UdpLimits {
            rate: 1_000_000,
            burst: 1_000_000,
            global_rate: 1_000_000,
            ..Default::default()
        },
        ..config()
    })
    .await;
    let (code, stdout, stderr) = bench(args(
        server.udp_addrs[0],
        &[
            "--udp",
            "--connections",
            "2",
            "--size",
            "512",
            "--pipeline",
            "4",
        ],
    ))
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let report = report(&stdout);
    assert!(report["messages"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["mismatches"], 0);
    assert_eq!(report["lost"], 0, "{report}");
    server.shutdown().await;
}

#[tokio::test]
async fn bench_over_udp_counts_datagrams_the_server_rate_limits_as_lost() {
    // echod's default per-source limit (100/s, burst 200) drops most of a
    // flood from one address: the bench must count those, not hang.
    let server = TestServer::start(Config {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        ..config()
    })
    .await;
    let (code, stdout, stderr) = bench(args(
        server.udp_addrs[0],
        &[
            "--udp",
            "--connections",
            "4",
            "--size",
            "64",
            "--pipeline",
            "8",
            "--loss-timeout",
            "0.1",
        ],
    ))
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let report = report(&stdout);
    let (messages, lost) = (
        report["messages"].as_u64().unwrap(),
        report["lost"].as_u64().unwrap(),
    );
    assert!(messages > 0 && lost > 0, "{report}");
    // 0.4 s at 100/s plus the 200 burst: nothing near a flood gets through.
    assert!(messages <= 200 + 100, "{report}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_runs_every_kind_of_abuse_and_verified_echoes_stay_exact() {
    let server = TestServer::start(Config {
        frame_timeout: Some(std::time::Duration::from_millis(800)),
        ..config()
    })
    .await;
    let mut args = args(
        server.addr(),
        &[
            "--connections",
            "4",
            "--size",
            "64",
            "--chaos",
            "--chaos-clients",
            "2",
            "--server-pid",
        ],
    );
    args[3] = "2".into(); // --duration 2
    args.push(std::process::id().to_string());
    let (code, stdout, stderr) = bench(args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let report = report(&stdout);
    assert_eq!(report["mismatches"], 0, "{report}");
    assert!(report["messages"].as_u64().unwrap() > 100, "{report}");
    assert!(
        report["server_peak_rss_kib"].as_u64().unwrap() > 0,
        "{report}"
    );
    // The server runs in this test's process: it used some CPU per message.
    let cpu = report["server_cpu_us_per_msg"].as_f64().unwrap();
    assert!(cpu > 0.0 && cpu < 100_000.0, "{report}");
    let chaos = &report["chaos"];
    for kind in [
        "reset",
        "slowloris",
        "never_read",
        "oversized",
        "flood",
        "half_close",
    ] {
        assert!(
            chaos[kind]["attempts"].as_u64().unwrap() > 0,
            "{kind} never ran: {chaos}"
        );
    }
    assert!(
        chaos["oversized"]["closed_by_server"].as_u64().unwrap() > 0,
        "{chaos}"
    );
    assert!(
        chaos["half_close"]["closed_by_server"].as_u64().unwrap() > 0,
        "{chaos}"
    );
    assert_eq!(chaos["half_close"]["mismatches"], 0, "{chaos}");
    assert!(
        chaos["slowloris"]["closed_by_server"].as_u64().unwrap() > 0,
        "the frame timeout never cut a slowloris: {chaos}"
    );
    server.shutdown().await;
}

/// An echo server that, once a second, stops reading for 200 ms: a
/// stalled server (a GC pause, a full disk, a stuck upstream).
async fn stalling_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let epoch = tokio::time::Instant::now();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let phase = epoch.elapsed().as_millis() % 1000;
                    if phase < 200 {
                        let resume = std::time::Duration::from_millis((200 - phase) as u64);
                        tokio::time::sleep(resume).await;
                    }
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Coordinated omission, made visible: against a server that stalls for
/// 200 ms a second, the closed loop stops sending while it waits, so only
/// one message per connection per stall is slow and p99 hides the stall;
/// the open loop keeps to its schedule and times each echo from when its
/// message was due, so a fifth of the messages show the stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loop_shows_a_stall_that_the_closed_loop_hides() {
    let addr = stalling_server().await;
    let window = ["--connections", "4", "--size", "64"];
    let (code, stdout, stderr) = bench(lasting(args(addr, &window), "2")).await;
    assert_eq!(code, Some(0), "{stderr}");
    let closed = report(&stdout);
    let mut open_args = window.to_vec();
    open_args.extend(["--rate", "2000"]);
    let (code, stdout, stderr) = bench(lasting(args(addr, &open_args), "2")).await;
    assert_eq!(code, Some(0), "{stderr}");
    let open = report(&stdout);
    let p99 = |report: &serde_json::Value| report["latency_us"]["p99"].as_f64().unwrap();
    assert!(p99(&open) >= 100_000.0, "open loop: {open}");
    assert!(p99(&closed) < 100_000.0, "closed loop: {closed}");
    assert!(closed.get("open_loop").is_none(), "{closed}");
    assert_eq!(open["open_loop"]["target_msgs_per_sec"], 2000.0, "{open}");
    // Sending itself never fell behind: the queue had room throughout.
    let lag_max = open["open_loop"]["schedule_lag_us"]["max"]
        .as_f64()
        .unwrap();
    assert!(lag_max < 100_000.0, "{open}");
    assert_eq!(open["mismatches"], 0);
    assert_eq!(closed["mismatches"], 0);
}

/// At a rate the server easily keeps up with, the open loop sends on
/// schedule: the messages completed in the window are the rate times the
/// window, give or take the few in flight at its edges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loop_keeps_its_rate_and_verifies_every_echo() {
    let server = TestServer::start(config()).await;
    let (code, stdout, stderr) = bench(lasting(
        args(
            server.addr(),
            &[
                "--connections",
                "8",
                "--size",
                "100",
                "--rate-per-connection",
                "250",
            ],
        ),
        "1",
    ))
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let report = report(&stdout);
    let messages = report["messages"].as_f64().unwrap();
    assert!((messages - 2000.0).abs() <= 100.0, "{report}");
    assert_eq!(
        report["open_loop"]["target_msgs_per_sec"], 2000.0,
        "{report}"
    );
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");
}

/// `--json-stream`: one JSON object per line, an interval event per
/// interval and the --json report as the end event; the intervals account
/// for the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_stream_writes_interval_events_then_the_report() {
    let server = TestServer::start(config()).await;
    let mut args = lasting(
        args(server.addr(), &["--connections", "3", "--size", "32"]),
        "1",
    );
    args.retain(|arg| arg != "--json");
    args.extend(["--json-stream", "--interval", "0.25"].map(String::from));
    let (code, stdout, stderr) = bench(args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let events: Vec<serde_json::Value> = std::str::from_utf8(&stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    let (end, intervals) = events.split_last().unwrap();
    assert_eq!(end["event"], "end", "{end}");
    assert!((3..=5).contains(&intervals.len()), "{events:?}");
    let mut counted = 0;
    for interval in intervals {
        assert_eq!(interval["event"], "interval", "{interval}");
        assert_eq!(interval["data"]["open_connections"], 3, "{interval}");
        assert_eq!(interval["data"]["errors"], 0, "{interval}");
        counted += interval["data"]["messages"].as_u64().unwrap();
    }
    let total = end["data"]["messages"].as_u64().unwrap();
    assert!(total > 0, "{end}");
    // The window's messages, give or take those completed as it closed.
    assert!(
        counted.abs_diff(total) <= total / 20 + 10,
        "{counted} vs {total}"
    );
}

/// `--rate FROM..TO/SECS`: a row (here, a JSON report) per step; with
/// `--until-p99` the ramp stops at the first step over the bound, and the
/// knee is the last step within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_reports_every_step_and_stops_at_the_knee() {
    let server = TestServer::start(config()).await;
    let ramp = |addr: std::net::SocketAddr, rate: &str, bound: &str| {
        let mut args = args(addr, &["--connections", "4", "--size", "32"]);
        let at = args.iter().position(|arg| arg == "--duration").unwrap();
        args.drain(at..at + 2);
        args.extend(["--rate", rate, "--ramp-steps", "3", "--until-p99", bound].map(String::from));
        args
    };
    let (code, stdout, stderr) = bench(ramp(server.addr(), "400..1200/0.3s", "1s")).await;
    assert_eq!(code, Some(0), "{stderr}");
    let summary = report(&stdout);
    let steps = summary["steps"].as_array().unwrap();
    let targets: Vec<f64> = steps
        .iter()
        .map(|step| step["open_loop"]["target_msgs_per_sec"].as_f64().unwrap())
        .collect();
    assert_eq!(targets, [400.0, 800.0, 1200.0], "{summary}");
    assert_eq!(summary["knee_msgs_per_sec"], 1200.0, "{summary}");
    for step in steps {
        assert_eq!(step["mismatches"], 0, "{step}");
        assert!(step["messages"].as_u64().unwrap() > 0, "{step}");
    }
    // Against a server that stalls 200 ms a second, the first 1.2 s step
    // is over a 50 ms bound: the ramp stops there, with no knee.
    let stalling = stalling_server().await;
    let (code, stdout, stderr) = bench(ramp(stalling, "100..300/1.2s", "50ms")).await;
    assert_eq!(code, Some(0), "{stderr}");
    let summary = report(&stdout);
    assert_eq!(summary["steps"].as_array().unwrap().len(), 1, "{summary}");
    assert!(summary["knee_msgs_per_sec"].is_null(), "{summary}");
}

/// Churn: with --messages-per-connection N each connection carries
/// exactly N messages, then is closed (after its echoes) and replaced. A
/// test server counts what each connection carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_replaces_each_connection_after_its_quota() {
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let carried: Arc<Mutex<Vec<usize>>> = Arc::default();
    let closed_one = Arc::new(tokio::sync::Notify::new());
    let (record, notify) = (carried.clone(), closed_one.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (record, notify) = (record.clone(), notify.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut total = 0;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            total += n;
                            if stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                record.lock().unwrap().push(total);
                notify.notify_one();
            });
        }
    });
    let mut args = args(addr, &["--connections", "4", "--size", "32"]);
    args.extend(["--messages-per-connection", "20"].map(String::from));
    let (code, stdout, stderr) = bench(args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let report = report(&stdout);
    assert_eq!(report["mismatches"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    let reconnects = report["churn"]["reconnects"].as_u64().unwrap();
    assert!(reconnects >= 8, "{report}");
    // The bench has exited: every connection closes, and is counted, as
    // the server's task for it sees the FIN.
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            let count = carried.lock().unwrap().len() as u64;
            if count >= 4 + reconnects {
                return count;
            }
            closed_one.notified().await;
        }
    })
    .await
    .expect("every connection closed");
    // Up to one more per connection: a replacement whose connect the end
    // of the run interrupted.
    assert!(
        (4 + reconnects..=8 + reconnects).contains(&closed),
        "{closed} {reconnects}"
    );
    let carried = carried.lock().unwrap();
    // Replaced ones carried exactly their quota; the 4 open at the end at most.
    let full = carried.iter().filter(|&&bytes| bytes == 20 * 32).count() as u64;
    assert!(full >= reconnects, "{carried:?}");
    assert!(carried.iter().all(|&bytes| bytes <= 20 * 32), "{carried:?}");
}

/// `--interval` without JSON: one line per interval on stderr (no terminal
/// here, so no progress bar), the report on stdout as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_lines_go_to_stderr_one_per_interval() {
    let server = TestServer::start(config()).await;
    let mut args = lasting(
        args(server.addr(), &["--connections", "3", "--size", "32"]),
        "1",
    );
    args.retain(|arg| arg != "--json");
    args.extend(["--interval", "0.25"].map(String::from));
    let (code, stdout, stderr) = bench(args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("msgs/s"))
        .collect();
    assert!((3..=5).contains(&lines.len()), "{stderr}");
    assert!(lines.iter().all(|line| line.contains("open 3")), "{stderr}");
    let report = String::from_utf8(stdout).unwrap();
    assert!(report.starts_with("3 connections x 32 B"), "{report}");
}

/// An echo server that holds each connection's first echo for 150 ms and
/// echoes at once afterwards (a server with a slow first response: lazy
/// set-up, a cold cache), and counts when it accepted each connection.
async fn slow_first_echo_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let times = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            times.lock().unwrap().push(std::time::Instant::now());
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut first = true;
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if std::mem::take(&mut first) {
                        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                    }
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// --hist: the connect, time-to-first-echo and round-trip histograms are
/// each their own, in the report and in files: the slow first echo shows
/// in the first and not in the round trips; plain TCP has no handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_phase_has_its_own_histogram_and_the_slow_first_echo_shows_only_there() {
    let (addr, _) = slow_first_echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rt.hgrm");
    let mut args = lasting(args(addr, &["--connections", "4", "--hist"]), "1");
    args.push(path.display().to_string());
    let (code, stdout, stderr) = bench(args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let report = report(&stdout);
    let phases = &report["histograms"];
    let p50 = |phase: &str| phases[phase]["p50"].as_f64().unwrap();
    assert_eq!(phases["connect_us"]["count"], 4, "{phases}");
    assert_eq!(phases["first_echo_us"]["count"], 4, "{phases}");
    assert!(phases["handshake_us"].is_null(), "{phases}");
    assert!(p50("first_echo_us") >= 140_000.0, "{phases}");
    assert!(p50("round_trip_us") < 50_000.0, "{phases}");
    assert!(p50("connect_us") < 50_000.0, "{phases}");
    let summary = phases["round_trip_us"].as_object().unwrap();
    let keys: BTreeSet<&str> = summary.keys().map(String::as_str).collect();
    assert_eq!(keys, ["count", "p50", "p90", "p99", "p99_9", "max"].into());
    for (file, count) in [("rt.hgrm.connect", 4), ("rt.hgrm.first-echo", 4)] {
        let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert!(
            text.contains(&format!("Total count    = {count:>12}")),
            "{file}: {text}"
        );
    }
    assert!(path.exists());
    assert!(!dir.path().join("rt.hgrm.handshake").exists());
}

/// --connect-rate: the connections open at the asked pace, as the server
/// sees them arrive; without it they arrive together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rate_paces_the_connections_the_server_accepts() {
    for (paced, connect_rate) in [(true, Some("50")), (false, None)] {
        let (addr, accepted) = slow_first_echo_server().await;
        let mut extra = vec!["--connections", "10"];
        if let Some(rate) = connect_rate {
            extra.extend(["--connect-rate", rate]);
        }
        let (code, _, stderr) = bench(args(addr, &extra)).await;
        assert_eq!(code, Some(0), "{stderr}");
        let times = accepted.lock().unwrap().clone();
        assert_eq!(times.len(), 10);
        let spread = *times.iter().max().unwrap() - *times.iter().min().unwrap();
        if paced {
            // Nine intervals of 20 ms.
            assert!(
                spread >= std::time::Duration::from_millis(160),
                "{spread:?}"
            );
        } else {
            assert!(spread < std::time::Duration::from_millis(100), "{spread:?}");
        }
    }
}
