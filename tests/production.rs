//! Running like production: PROXY protocol (with a real HAProxy), systemd
//! socket activation and readiness, SO_REUSEPORT, Prometheus metrics.

mod common;

use std::{
    collections::HashSet,
    net::SocketAddr,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{config, echo_once, ServerProcess, TestServer, PATIENCE};
use echod::config::ProxyProtocol;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

fn v2_header(source: &str, destination: &str) -> Vec<u8> {
    echod::server::proxy::v2_header(source.parse().unwrap(), destination.parse().unwrap())
}

/// Reads until the server closes; a reset counts as closed.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut echoed = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut echoed))
        .await
        .expect("server closed in time");
    echoed
}

#[tokio::test]
async fn a_v1_header_split_across_reads_is_consumed_and_names_the_client_in_the_log() {
    let mut server = ServerProcess::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--proxy-protocol",
            "v1",
            "--log-level",
            "debug",
        ],
        &[],
    );
    let addr = server.listening(1)[0];
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    // The header in three writes, the last carrying the first frame too.
    // (The pauses make separate reads likely; the echo must be right
    // however the bytes arrive.)
    stream.write_all(b"PROXY TCP4 192.0.2.7 ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    stream.write_all(b"127.0.0.1 51234 3600\r").await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    stream.write_all(b"\nhello\nworld\n").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut stream).await, b"hello\nworld\n");
    let line = server.wait_for("connection from 192.0.2.7:51234 closed");
    assert!(line.contains("client closed"), "{line}");
}

#[tokio::test]
async fn any_accepts_v1_and_v2_and_logs_each_real_client() {
    let mut server = ServerProcess::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--proxy-protocol",
            "any",
            "--log-level",
            "debug",
            "--log-format",
            "json",
        ],
        &[],
    );
    let addr = server.listening(1)[0];
    let mut v1 = TcpStream::connect(addr).await.unwrap();
    v1.write_all(b"PROXY TCP6 2001:db8::7 ::1 4000 3600\r\n")
        .await
        .unwrap();
    assert_eq!(echo_once(&mut v1, b"one\n").await, b"one\n");
    let mut v2 = TcpStream::connect(addr).await.unwrap();
    let mut first = v2_header("203.0.113.9:40000", &addr.to_string());
    first.extend_from_slice(b"two\n");
    v2.write_all(&first).await.unwrap();
    let mut echoed = [0u8; 4];
    v2.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"two\n");
    drop((v1, v2));
    server.wait_for(r#""peer":"[2001:db8::7]:4000""#);
    server.wait_for(r#""peer":"203.0.113.9:40000""#);
}

#[tokio::test]
async fn missing_malformed_and_wrong_version_headers_close_with_a_log_line_while_others_are_served()
{
    let mut server =
        ServerProcess::spawn(&["--listen", "127.0.0.1:0", "--proxy-protocol", "v2"], &[]);
    let addr = server.listening(1)[0];
    let mut good = TcpStream::connect(addr).await.unwrap();
    good.write_all(&v2_header("198.51.100.1:1000", "127.0.0.1:3600"))
        .await
        .unwrap();
    assert_eq!(echo_once(&mut good, b"before\n").await, b"before\n");

    let cases: [(&[u8], &str); 3] = [
        (b"hello\n", "no PROXY header"),
        (
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
            "expected a PROXY v2 header, got a v1 header",
        ),
        // A v2 signature with version 3.
        (
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c\0\0\0\0\0\0\0\0\0\0\0\0",
            "malformed PROXY v2 header",
        ),
    ];
    for (input, problem) in cases {
        let mut bad = TcpStream::connect(addr).await.unwrap();
        bad.write_all(input).await.unwrap();
        assert_eq!(
            read_to_close(&mut bad).await,
            b"",
            "{problem}: nothing echoed"
        );
        let line = server.wait_for(problem);
        assert!(line.contains("refused"), "{line}");
        assert!(line.contains("127.0.0.1:"), "names the peer: {line}");
    }
    assert_eq!(echo_once(&mut good, b"after\n").await, b"after\n");
}

#[tokio::test]
async fn unix_listeners_read_the_proxy_header_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echod.sock");
    let listen = format!("unix:{}", path.display());
    let mut server = ServerProcess::spawn(
        &[
            "--listen",
            &listen,
            "--proxy-protocol",
            "v2",
            "--log-level",
            "debug",
        ],
        &[],
    );
    server.wait_for("listening on unix:");
    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut input = v2_header("192.0.2.44:5555", "192.0.2.1:3600");
    input.extend_from_slice(b"over a unix socket\n");
    stream.write_all(&input).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"over a unix socket\n");
    server.wait_for("connection from 192.0.2.44:5555 closed: client closed");
}

#[tokio::test]
async fn the_per_ip_limit_counts_the_client_in_the_header_not_the_balancer() {
    let server = TestServer::start(echod::Config {
        proxy_protocol: ProxyProtocol::V1,
        max_connections_per_ip: 1,
        ..config()
    })
    .await;
    let addr = server.addr();
    let connect_as = |client: &'static str| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let header = format!("PROXY TCP4 {client} 127.0.0.1 5000 3600\r\n");
        stream.write_all(header.as_bytes()).await.unwrap();
        stream
    };
    // Every connection comes from 127.0.0.1; the headers tell them apart.
    let mut first = connect_as("192.0.2.1").await;
    assert_eq!(echo_once(&mut first, b"a\n").await, b"a\n");
    let mut other = connect_as("192.0.2.2").await;
    assert_eq!(echo_once(&mut other, b"b\n").await, b"b\n");
    let mut second = connect_as("192.0.2.1").await;
    second.write_all(b"refused?\n").await.unwrap();
    assert_eq!(read_to_close(&mut second).await, b"");
    drop(first);
    // The place is given back when the first closes.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut again = connect_as("192.0.2.1").await;
        let _ = again.write_all(b"c\n").await;
        let mut echoed = [0u8; 2];
        if again.read_exact(&mut echoed).await.is_ok() {
            assert_eq!(&echoed, b"c\n");
            break;
        }
        assert!(Instant::now() < deadline, "the first place was never freed");
        tokio::task::yield_now().await;
    }
    server.shutdown().await;
}

/// `GET /metrics` over a plain socket: (status line, body).
async fn scrape(addr: SocketAddr, path: &str) -> (String, String) {
    let (head, body) = http(addr, "GET", path).await;
    (head.lines().next().unwrap().to_owned(), body)
}

/// One request with `Connection: close`: (head, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// The value of one series, e.g. `echod_connections_total`.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Scrapes until every `(series, value)` holds: counters are updated just
/// after the bytes they count are written, so a client can be ahead of them.
async fn scrape_until(addr: SocketAddr, expected: &[(&str, f64)]) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, body) = scrape(addr, "/metrics").await;
        if expected
            .iter()
            .all(|(series, want)| value(&body, series) == Some(*want))
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never reached {expected:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn metrics_count_connections_bytes_frames_closes_and_rejections() {
    let server = TestServer::start(echod::Config {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        max_frame_length: 16,
        ..config()
    })
    .await;
    let metrics = server.metrics_addr.expect("metrics address");
    let (status, body) = scrape(metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(value(&body, "echod_connections_total"), Some(0.0));
    assert!(body.contains(r#"echod_connections_closed_total{reason="client_closed"} 0"#));
    assert!(!body.contains("udp"), "no UDP series without UDP:\n{body}");
    assert!(body.ends_with("# EOF\n"));

    // Three clients echo 10 lines of 8 bytes each and close.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(&b"1234567\n".repeat(10)).await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(read_to_close(&mut stream).await.len(), 80);
    }
    // One sends a frame over the limit.
    let mut long = TcpStream::connect(server.addr()).await.unwrap();
    long.write_all(&[b'x'; 40]).await.unwrap();
    read_to_close(&mut long).await;
    let body = scrape_until(
        metrics,
        &[
            ("echod_connections_total", 4.0),
            ("echod_connections_open", 0.0),
            ("echod_frames_echoed_total", 30.0),
            ("echod_echoed_bytes_total", 240.0),
            ("echod_received_bytes_total", 280.0),
            (
                r#"echod_connections_closed_total{reason="client_closed"}"#,
                3.0,
            ),
            (
                r#"echod_connections_closed_total{reason="frame_too_long"}"#,
                1.0,
            ),
            ("echod_connection_duration_seconds_count", 4.0),
        ],
    )
    .await;
    assert_eq!(
        value(
            &body,
            r#"echod_connections_rejected_total{reason="per_ip_limit"}"#
        ),
        Some(0.0)
    );
    assert_eq!(scrape(metrics, "/").await.0, "HTTP/1.1 404 Not Found");
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_count_proxy_and_per_ip_rejections_and_udp_drops() {
    let server = TestServer::start(echod::Config {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        proxy_protocol: ProxyProtocol::V1,
        max_connections_per_ip: 1,
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        udp_limits: echod::config::UdpLimits {
            rate: 1,
            burst: 1,
            ..Default::default()
        },
        ..config()
    })
    .await;
    let metrics = server.metrics_addr.unwrap();
    let mut held = TcpStream::connect(server.addr()).await.unwrap();
    held.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\r\nx\n")
        .await
        .unwrap();
    let mut echoed = [0u8; 2];
    held.read_exact(&mut echoed).await.unwrap();
    let mut over = TcpStream::connect(server.addr()).await.unwrap();
    over.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 3 4\r\n")
        .await
        .unwrap();
    read_to_close(&mut over).await;
    let mut no_header = TcpStream::connect(server.addr()).await.unwrap();
    no_header.write_all(b"hello\n").await.unwrap();
    read_to_close(&mut no_header).await;

    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..5 {
        udp.send_to(b"ping", server.udp_addrs[0]).await.unwrap();
    }
    scrape_until(
        metrics,
        &[
            ("echod_connections_total", 3.0),
            ("echod_connections_open", 1.0),
            (
                r#"echod_connections_rejected_total{reason="per_ip_limit"}"#,
                1.0,
            ),
            (
                r#"echod_connections_rejected_total{reason="proxy_header"}"#,
                1.0,
            ),
            ("echod_udp_datagrams_echoed_total", 1.0),
            (
                r#"echod_udp_datagrams_dropped_total{reason="source_rate"}"#,
                4.0,
            ),
        ],
    )
    .await;
    drop(held);
    server.shutdown().await;
}

#[test]
fn a_busy_metrics_port_is_one_line_and_exit_one() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = common::run_binary(
        env!("CARGO_BIN_EXE_echo-server"),
        &["--listen", "127.0.0.1:0", "--metrics", &busy],
        &[],
        b"",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {busy}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_proxy_protocol_and_metrics_values_are_usage_errors() {
    for (args, named) in [
        (&["--proxy-protocol", "v3"][..], "--proxy-protocol"),
        (&["--metrics", "nowhere"][..], "--metrics"),
        (&["--reuse-port", "maybe"][..], "--reuse-port"),
    ] {
        let (code, _, stderr) =
            common::run_binary(env!("CARGO_BIN_EXE_echo-server"), args, &[], b"");
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{stderr}");
    }
    let (code, _, stderr) = common::run_binary(
        env!("CARGO_BIN_EXE_echo-server"),
        &[],
        &[("ECHOD_PROXY_PROTOCOL", "v9")],
        b"",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("ECHOD_PROXY_PROTOCOL"), "{stderr}");
}

#[tokio::test]
async fn reuse_port_lets_two_processes_share_a_port_and_both_serve() {
    let args = |port: &str| {
        vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--reuse-port".into(),
            "true".into(),
            "--log-level".into(),
            "debug".into(),
        ]
    };
    fn as_strs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }
    let mut first = ServerProcess::spawn(&as_strs(&args("0")), &[]);
    let addr = first.listening(1)[0];
    let mut second = ServerProcess::spawn(&as_strs(&args(&addr.port().to_string())), &[]);
    assert_eq!(second.listening(1)[0], addr);
    // The kernel spreads connections by a hash of their addresses: with 64
    // connections, both serve unless something is wrong (a chance of 2^-63).
    for i in 0..64u32 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let line = format!("{i}\n");
        assert_eq!(
            echo_once(&mut stream, line.as_bytes()).await,
            line.as_bytes()
        );
    }
    first.wait_for("connection opened");
    second.wait_for("connection opened");
    // Without reuse_port the port is taken.
    let (code, _, stderr) = common::run_binary(
        env!("CARGO_BIN_EXE_echo-server"),
        &["--listen", &addr.to_string()],
        &[],
        b"",
    );
    assert_eq!(code, Some(1), "{stderr}");
}

#[tokio::test]
async fn socket_activation_serves_the_inherited_listener_and_notifies_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A configured Unix socket that must not be bound: the inherited
    // socket replaces the listen list.
    let configured = dir.path().join("configured.sock");
    let configured_arg = format!("unix:{}", configured.display());
    let notify_env = notify_path.display().to_string();
    let fd = listener.as_raw_fd();
    let mut server = ServerProcess::spawn_via_shell(
        r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#,
        &["--listen", &configured_arg],
        &[("NOTIFY_SOCKET", &notify_env), ("PATH", "/usr/bin:/bin")],
        |command, _| common::pass_as_fd3(command, fd),
    );
    drop(listener);
    let mut message = [0u8; 256];
    let len = notify.recv(&mut message).expect("a READY=1 notification");
    assert_eq!(message[..len].trim_ascii(), b"READY=1");
    server.wait_for("socket activation: serving the 1 socket(s)");
    assert_eq!(server.listening(1), vec![addr]);
    assert!(!configured.exists(), "the configured listen list was bound");

    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_once(&mut stream, b"activated\n").await, b"activated\n");
    drop(stream);
    server.signal(libc::SIGTERM);
    let len = notify
        .recv(&mut message)
        .expect("a STOPPING=1 notification");
    assert_eq!(message[..len].trim_ascii(), b"STOPPING=1");
    assert!(server.wait().success(), "{}", server.stderr.join("\n"));
}

/// HAProxy's binary, installed by `.ci/run`; a missing one fails the test
/// under CI rather than skipping it.
fn haproxy() -> Option<&'static str> {
    for path in [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ] {
        if std::path::Path::new(path).exists() {
            return Some(path);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "haproxy is not installed (.ci/run installs it)"
    );
    eprintln!("skipping: haproxy is not installed (apt-get install haproxy)");
    None
}

#[tokio::test]
async fn haproxy_with_send_proxy_v2_round_robins_200_clients_and_both_backends_see_them() {
    let Some(haproxy) = haproxy() else { return };
    let backend = || {
        ServerProcess::spawn(
            &[
                "--listen",
                "127.0.0.1:0",
                "--proxy-protocol",
                "v2",
                "--log-level",
                "debug",
            ],
            &[],
        )
    };
    let (mut one, mut two) = (backend(), backend());
    let (one_addr, two_addr) = (one.listening(1)[0], two.listening(1)[0]);

    // The shipped example, with its ports swapped: the frontend takes a
    // socket this test bound on port 0 (HAProxy's fd@3).
    let shipped = include_str!("../deploy/haproxy.cfg");
    let mut cfg = shipped.to_owned();
    for (from, to) in [
        ("bind 127.0.0.1:3600", "bind fd@3".to_owned()),
        (
            "server echod1 127.0.0.1:3601",
            format!("server echod1 {one_addr}"),
        ),
        (
            "server echod2 127.0.0.1:3602",
            format!("server echod2 {two_addr}"),
        ),
    ] {
        assert_eq!(cfg.matches(from).count(), 1, "{from} in deploy/haproxy.cfg");
        cfg = cfg.replace(from, &to);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let frontend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let frontend_addr = frontend.local_addr().unwrap();
    let fd = frontend.as_raw_fd();
    let mut command = Command::new(haproxy);
    command
        .arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    common::pass_as_fd3(&mut command, fd);
    let mut proxy = KillOnDrop(command.spawn().expect("spawn haproxy"));
    // From here only HAProxy holds the frontend: if it fails, clients are
    // refused instead of waiting.
    drop(frontend);

    // 200 clients from 127.0.0.2, so their address cannot be confused with
    // HAProxy's own connections to the backends (from 127.0.0.1).
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..200u32 {
        clients.spawn(async move {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let local = socket.local_addr().unwrap();
            let stream = socket.connect(frontend_addr).await.unwrap();
            let (mut reader, mut writer) = stream.into_split();
            let sent: Vec<u8> = (0..20)
                .flat_map(|line| {
                    format!("client {client} line {line} {}\n", "x".repeat(line)).into_bytes()
                })
                .collect();
            let expected = sent.clone();
            let writing = tokio::spawn(async move {
                writer.write_all(&sent).await.unwrap();
                writer.shutdown().await.unwrap();
            });
            let mut echoed = Vec::new();
            reader.read_to_end(&mut echoed).await.unwrap();
            writing.await.unwrap();
            assert!(echoed == expected, "client {client}: echo differs");
            local
        });
    }
    let mut locals = Vec::new();
    let finished = tokio::time::timeout(PATIENCE, async {
        while let Some(local) = clients.join_next().await {
            locals.push(local.expect("client task"));
        }
    })
    .await;
    if finished.is_err() {
        let _ = proxy.0.kill();
        let mut stderr = String::new();
        let _ = std::io::Read::read_to_string(proxy.0.stderr.as_mut().unwrap(), &mut stderr);
        panic!("clients did not finish through HAProxy; its stderr:\n{stderr}");
    }
    assert_eq!(locals.len(), 200);

    // Every client's own address shows in exactly one backend's log.
    let mut served = [0usize; 2];
    for local in &locals {
        let needle = format!("connection from {local} closed: client closed");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found: Vec<usize> = [&one, &two]
                .iter()
                .enumerate()
                .filter(|(_, backend)| backend.stderr.iter().any(|l| l.contains(&needle)))
                .map(|(i, _)| i)
                .collect();
            if let [i] = found[..] {
                served[i] += 1;
                break;
            }
            assert!(found.len() < 2, "{local} logged by both backends");
            assert!(Instant::now() < deadline, "no backend logged {local}");
            // Pull in more log lines from both.
            one.poll_lines(Duration::from_millis(5));
            two.poll_lines(Duration::from_millis(5));
        }
    }
    assert!(served[0] > 0 && served[1] > 0, "round robin: {served:?}");
    let distinct: HashSet<_> = locals.iter().collect();
    assert_eq!(distinct.len(), 200);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGHUP (contract, "Added in round 2"): the file and environment are read
/// again; what can change without a restart applies to new connections,
/// restart-only settings are named in a WARN, an invalid file is refused
/// with the running configuration kept, and the server never stops.
/// Before, SIGHUP killed the server without a drain or a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_what_it_can_names_what_needs_a_restart_and_refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("echod.toml");
    std::fs::write(&file, "listen = [\"127.0.0.1:0\"]\n").unwrap();
    let path = file.display().to_string();
    let mut server = ServerProcess::spawn(&["--config", &path], &[]);
    let addr = server.listening(1)[0];
    server.wait_for(&format!("configuration from {path}"));
    let mut held = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_once(&mut held, b"before\n").await, b"before\n");

    let reloaded = "listen = [\"127.0.0.1:0\"]\nframing = \"raw\"\nmax_connections_per_ip = 1\nlog_level = \"debug\"\n";
    std::fs::write(&file, reloaded).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for("configuration reloaded");
    let warning = server.wait_for("take effect only at a restart");
    assert!(
        warning.contains("WARN") && warning.contains("framing"),
        "{warning}"
    );
    // The per-IP limit applies to new connections: `held` has the one place.
    let mut refused = TcpStream::connect(addr).await.unwrap();
    let _ = refused.write_all(b"refused?\n").await;
    assert_eq!(read_to_close(&mut refused).await, b"");
    // The live connection is untouched, and framing is still lines.
    assert_eq!(echo_once(&mut held, b"still\n").await, b"still\n");
    // The log level is debug now. `held`'s place is given back once the
    // server has seen it close, so connect until a connection is served.
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    let mut fresh = loop {
        let mut fresh = TcpStream::connect(addr).await.unwrap();
        let _ = fresh.write_all(b"new\n").await;
        let mut echoed = [0u8; 4];
        if fresh.read_exact(&mut echoed).await.is_ok() {
            assert_eq!(&echoed, b"new\n");
            break fresh;
        }
        assert!(Instant::now() < deadline, "the held place was never freed");
        tokio::task::yield_now().await;
    };
    server.wait_for("connection opened");

    std::fs::write(&file, "max_connections = 0\n").unwrap();
    server.signal(libc::SIGHUP);
    let refusal = server.wait_for("configuration not reloaded");
    assert!(
        refusal.contains("ERROR") && refusal.contains("max_connections"),
        "{refusal}"
    );
    assert_eq!(echo_once(&mut fresh, b"served\n").await, b"served\n");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
}

#[tokio::test]
async fn the_admin_endpoint_answers_metrics_liveness_readiness_head_405_and_404() {
    let server = TestServer::start(echod::Config {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        ..config()
    })
    .await;
    let admin = server.metrics_addr.unwrap();
    let (head, body) = http(admin, "GET", "/livez").await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(body, "ok\n");
    let (head, _) = http(admin, "GET", "/readyz").await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let (head, body) = http(admin, "GET", "/metrics").await;
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.contains("echod_connections_total"), "{body}");
    let (head, body) = http(admin, "HEAD", "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(body.is_empty(), "HEAD sent a body");
    let (head, _) = http(admin, "POST", "/livez").await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(head.to_lowercase().contains("allow: get, head"), "{head}");
    let (head, _) = http(admin, "GET", "/nope").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    server.shutdown().await;
}

/// `--drain-delay` (contract): at SIGTERM `/readyz` answers 503 at once
/// while the listeners keep accepting and serving for the delay; then the
/// graceful shutdown runs and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_the_drain_delay_readyz_is_503_and_new_clients_are_still_served() {
    let mut server = ServerProcess::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--drain-delay",
            "2",
        ],
        &[],
    );
    let addr = server.listening(1)[0];
    let admin = server.admin_addr();
    assert!(http(admin, "GET", "/readyz")
        .await
        .0
        .starts_with("HTTP/1.1 200"));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    server.wait_for("drain delay");
    let (head, _) = http(admin, "GET", "/readyz").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(http(admin, "GET", "/livez")
        .await
        .0
        .starts_with("HTTP/1.1 200"));
    let mut late = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        echo_once(&mut late, b"still served\n").await,
        b"still served\n"
    );
    drop(late);
    assert_eq!(server.wait().code(), Some(0));
    assert!(
        signalled.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_delay_ends_it_at_once() {
    let mut server = ServerProcess::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--drain-delay",
            "600",
        ],
        &[],
    );
    server.listening(1);
    server.signal(libc::SIGTERM);
    server.wait_for("drain delay");
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Health-check traffic is quiet (contract): a TCP connect-and-close, a
/// PROXY v2 `LOCAL` connection (a balancer's own check) and `/livez` and
/// `/readyz` probes log at DEBUG only, so checks every second do not
/// flood the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_are_not_logged_at_info() {
    let mut server = ServerProcess::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--proxy-protocol",
            "v2",
        ],
        &[],
    );
    let addr = server.listening(1)[0];
    let admin = server.admin_addr();
    let local_header = [&b"\r\n\r\n\0\r\nQUIT\n"[..], &[0x20, 0x00, 0x00, 0x00]].concat();
    for _ in 0..3 {
        drop(TcpStream::connect(addr).await.unwrap());
        let mut check = TcpStream::connect(addr).await.unwrap();
        check.write_all(&local_header).await.unwrap();
        assert_eq!(echo_once(&mut check, b"ok?\n").await, b"ok?\n");
        drop(check);
        assert!(http(admin, "GET", "/livez")
            .await
            .0
            .starts_with("HTTP/1.1 200"));
        assert!(http(admin, "GET", "/readyz")
            .await
            .0
            .starts_with("HTTP/1.1 200"));
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
    let noisy: Vec<_> = server
        .stderr
        .iter()
        .filter(|line| {
            line.contains("INFO") && (line.contains("connection from") || line.contains("admin "))
        })
        .filter(|line| !line.contains("admin listening on"))
        .collect();
    assert!(noisy.is_empty(), "health checks logged at INFO: {noisy:#?}");
}

/// LISTEN sockets on `port` in /proc/net/tcp (state 0A), across processes.
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields[3] == "0A" && fields[1].ends_with(&format!(":{port:04X}"))
        })
        .count()
}

#[tokio::test]
async fn the_per_core_runtime_has_a_socket_per_core_serves_from_each_and_drains_them_all() {
    let mut server = ServerProcess::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            "per-core",
            "--workers",
            "3",
        ],
        &[],
    );
    let addr = server.listening(1)[0];
    server.wait_for("runtime: per-core, 3 threads");
    // The port is this server's alone: without reuse_port a second
    // server still fails with "address in use".
    let (code, _, stderr) = common::run_binary(
        env!("CARGO_BIN_EXE_echo-server"),
        &["--listen", &addr.to_string(), "--runtime", "per-core"],
        &[],
        b"",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    // The kernel hashes connections over the three sockets: with 60 of them,
    // a core that did not accept would leave about 20 unanswered.
    let mut streams = Vec::new();
    for i in 0..60u32 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let line = format!("{i}\n");
        assert_eq!(
            echo_once(&mut stream, line.as_bytes()).await,
            line.as_bytes()
        );
        streams.push(stream);
    }
    // One socket per core, in one SO_REUSEPORT group.
    assert_eq!(listening_sockets(addr.port()), 3);
    // Graceful shutdown reaches every core: each connection, wherever it
    // lives, gets its FIN, and none is cut.
    server.signal(libc::SIGTERM);
    for stream in &mut streams {
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
            .await
            .expect("FIN at shutdown")
            .unwrap();
        assert!(rest.is_empty());
    }
    assert!(server.wait().success(), "{}", server.stderr.join("\n"));
    let log = server.stderr.join("\n");
    assert!(log.contains("60 open connection(s)"), "{log}");
    assert!(!log.contains("were cut"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
}
