//! The io_uring engine (`--engine io-uring`), through the real binary over
//! real sockets: every framing byte-exact, many clients, a client that does
//! not read (bounded, and the others still served), limits, shutdown, Unix
//! sockets, and the fallback when a seccomp profile forbids io_uring.
//!
//! Every test first checks the server said `engine: io-uring`: a silent
//! fallback to the tokio engine would make these tests pass for the wrong
//! engine. Where io_uring is unavailable they skip loudly, never under CI.
#![cfg(target_os = "linux")]

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{length_frame, pattern, read_until_closed, round_trip, ServerProcess, PATIENCE};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// What the server said lately and whether it still runs, for a failure
/// message.
fn last_words(server: &mut ServerProcess) -> String {
    server.poll_lines(Duration::from_millis(300));
    let status = server.child.try_wait().unwrap();
    let tail = server.stderr.len().saturating_sub(30);
    format!(
        "server status {status:?}; its last stderr lines:\n{}",
        server.stderr[tail..].join("\n")
    )
}

/// `echo-client ARGS`, off the test's runtime.
async fn client(args: Vec<String>) -> (Option<i32>, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run_binary(env!("CARGO_BIN_EXE_echo-client"), &args, &[], b"")
    })
    .await
    .unwrap()
}

/// A server on the io_uring engine, or `None` (with a loud message) where
/// this machine cannot run one.
fn uring_server(extra: &[&str]) -> Option<(ServerProcess, SocketAddr)> {
    let mut args = vec!["--listen", "127.0.0.1:0", "--engine", "io-uring"];
    args.extend_from_slice(extra);
    let mut server = ServerProcess::spawn(&args, &[]);
    let addr = server.listening(1)[0];
    on_the_ring(&mut server).then_some((server, addr))
}

/// Whether `server` runs the io_uring engine; false (loudly, never under
/// CI) where io_uring is unavailable.
fn on_the_ring(server: &mut ServerProcess) -> bool {
    server.wait_for("engine:");
    if let Some(line) = server
        .stderr
        .iter()
        .find(|l| l.contains("io_uring is unavailable"))
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "io_uring must work in CI: {line}"
        );
        eprintln!("SKIPPED: io_uring unavailable on this machine: {line}");
        return false;
    }
    server.wait_for("engine: io-uring");
    true
}

#[tokio::test]
async fn every_framing_echoes_byte_exact_over_the_ring() {
    for (framing, input) in [
        ("lines", {
            let mut lines = b"one\r\ntwo\n\xff\xfe binary\nno newline at the end".to_vec();
            lines.extend_from_slice(&b"x".repeat(5000));
            lines
        }),
        ("raw", pattern(1 << 20, 7)),
        ("length", {
            let mut frames = length_frame(b"");
            frames.extend_from_slice(&length_frame(&pattern(60_000, 3)));
            frames.extend_from_slice(&length_frame(b"last"));
            frames
        }),
    ] {
        let Some((_server, addr)) = uring_server(&["--framing", framing]) else {
            return;
        };
        let echoed = round_trip(addr, &input).await;
        assert!(
            echoed == input,
            "{framing}: {} bytes back of {}",
            echoed.len(),
            input.len()
        );
    }
}

#[tokio::test]
async fn two_hundred_clients_each_get_their_own_bytes_back() {
    let Some((_server, addr)) = uring_server(&[]) else {
        return;
    };
    let clients: Vec<_> = (0..200u32)
        .map(|client| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                for message in 0..50u32 {
                    let line = format!("client {client} message {message}\n");
                    let echoed = common::echo_once(&mut stream, line.as_bytes()).await;
                    assert_eq!(echoed, line.as_bytes());
                }
            })
        })
        .collect();
    for client in clients {
        tokio::time::timeout(PATIENCE, client)
            .await
            .unwrap()
            .unwrap();
    }
}

/// A client that sends without reading: its receive is paused once it
/// holds its share of the ring's buffers, so its writes stall at a bound
/// (socket buffers, not server memory), another client is served
/// meanwhile, and once it reads it gets every byte back in order.
#[tokio::test]
async fn a_client_that_does_not_read_is_held_back_and_others_are_served() {
    let Some((mut server, addr)) = uring_server(&["--framing", "raw"]) else {
        return;
    };
    let rss_before = server.rss_kib();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let data = pattern(256 << 20, 9);
    let chunk = 64 * 1024;
    let mut written = 0;
    // Write until a write makes no progress for half a second: the server
    // has stopped reading.
    while written < data.len() {
        let end = (written + chunk).min(data.len());
        match tokio::time::timeout(
            Duration::from_millis(500),
            writer.write(&data[written..end]),
        )
        .await
        {
            Ok(Ok(n)) => written += n,
            Ok(Err(error)) => panic!("write failed: {error}; {}", last_words(&mut server)),
            Err(_) => break,
        }
    }
    assert!(
        written < 64 << 20,
        "{written} bytes went in without the client reading: nothing held it back"
    );
    let echoed = round_trip(addr, b"still served\n").await;
    assert_eq!(echoed, b"still served\n");
    let grown = server.rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 48 * 1024,
        "server grew by {grown} KiB for a client that does not read"
    );
    // Now read everything back while writing the rest.
    let total = data.len();
    let reading = tokio::spawn(async move {
        let mut echoed = vec![0u8; total];
        reader.read_exact(&mut echoed).await.map(|_| echoed)
    });
    writer.write_all(&data[written..]).await.unwrap();
    writer.shutdown().await.unwrap();
    let echoed = tokio::time::timeout(PATIENCE, reading)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(echoed == data, "the echo differs from what was sent");
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_after_echoing_the_frames_before_it() {
    let Some((_server, addr)) = uring_server(&["--max-frame-length", "1024"]) else {
        return;
    };
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut input = b"fine\n".to_vec();
    input.extend_from_slice(&vec![b'a'; 5000]);
    stream.write_all(&input).await.unwrap();
    let (echoed, _) = read_until_closed(&mut stream).await;
    assert_eq!(echoed, b"fine\n");
}

#[tokio::test]
async fn an_idle_client_is_closed_at_the_idle_timeout() {
    let Some((_server, addr)) = uring_server(&["--idle-timeout", "1"]) else {
        return;
    };
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert_eq!(common::echo_once(&mut stream, b"hi\n").await, b"hi\n");
    let (rest, waited) = read_until_closed(&mut stream).await;
    assert!(rest.is_empty());
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

/// SIGTERM while a client has sent lines it has not read back yet: what
/// arrived is echoed, then FIN, and the server exits 0.
#[tokio::test]
async fn shutdown_echoes_what_arrived_then_closes() {
    let Some((mut server, addr)) = uring_server(&[]) else {
        return;
    };
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert_eq!(common::echo_once(&mut stream, b"first\n").await, b"first\n");
    stream.write_all(b"second\nthird\n").await.unwrap();
    // The server has the bytes once a later echo comes back on a second
    // connection (which the drain also closes).
    let mut marker = TcpStream::connect(addr).await.unwrap();
    assert_eq!(common::echo_once(&mut marker, b"m\n").await, b"m\n");
    server.signal(libc::SIGTERM);
    let (echoed, _) = read_until_closed(&mut stream).await;
    assert_eq!(echoed, b"second\nthird\n");
    assert!(server.wait().success());
}

#[tokio::test]
async fn unix_socket_connections_run_on_the_ring_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let listen = format!("unix:{}", path.display());
    let Some((_server, _addr)) = uring_server(&["--listen", &listen]) else {
        return;
    };
    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let input = pattern(300_000, 1);
    let mut lines = input.clone();
    lines.push(b'\n');
    let (mut reader, mut writer) = stream.split();
    let (written, echoed) = tokio::join!(
        async {
            writer.write_all(&lines).await.unwrap();
            writer.shutdown().await.unwrap();
        },
        async {
            let mut echoed = Vec::new();
            reader.read_to_end(&mut echoed).await.unwrap();
            echoed
        }
    );
    let () = written;
    assert!(
        echoed == lines,
        "{} bytes back of {}",
        echoed.len(),
        lines.len()
    );
}

/// Every kind of abusive client at once (resets, slowloris, non-readers,
/// oversized frames, connect floods, half-closes) beside verified echo
/// traffic: no echo differs, the abuse is cut where it should be, the
/// server's memory stays bounded, and it exits 0 at SIGTERM afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_clients_beside_verified_traffic_on_the_ring() {
    let Some((mut server, addr)) =
        uring_server(&["--max-frame-length", "4096", "--frame-timeout", "1"])
    else {
        return;
    };
    let pid = server.child.id().to_string();
    let args = [
        "bench",
        &addr.to_string(),
        "--connections",
        "8",
        "--duration",
        "2.5",
        "--warmup",
        "0",
        "--chaos",
        "--chaos-clients",
        "5",
        "--server-pid",
        &pid,
        "--json",
    ];
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let (code, stdout, stderr) = client(args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(report["mismatches"], 0, "{report}");
    if report["errors"] != 0 {
        panic!("{report}\n{}", last_words(&mut server));
    }
    assert!(report["messages"].as_u64().unwrap() > 1000, "{report}");
    let chaos = &report["chaos"];
    for kind in ["oversized", "half_close", "slowloris"] {
        assert!(
            chaos[kind]["closed_by_server"].as_u64().unwrap() > 0,
            "{kind}: {chaos}"
        );
    }
    let peak = report["server_peak_rss_kib"].as_u64().unwrap();
    assert!(peak < 200 * 1024, "peak RSS {peak} KiB");
    assert_eq!(
        round_trip(addr, b"after the storm\n").await,
        b"after the storm\n"
    );
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
}

/// The multishot accept under EMFILE: the ring reports the error, the
/// accept loop backs off (a handful of warnings, not a spin), and once
/// descriptors free up the next connection is accepted and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_backs_off_and_recovers_on_the_ring() {
    let mut server = ServerProcess::spawn_with(
        &["--listen", "127.0.0.1:0", "--engine", "io-uring"],
        &[],
        |command, _| common::limit_open_files(command, 48, 48),
    );
    let addr = server.listening(1)[0];
    if !on_the_ring(&mut server) {
        return;
    }
    common::exhaust_descriptors_then_recover(&mut server, addr, 70).await;
}

/// `ws:` listeners ride the ring too: hyper's HTTP/1.1 upgrade, then the
/// WebSocket echo, through the ring's receives and sends (the bundled
/// bench verifies every binary message), and an HTTP request gets its
/// JSON description.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_http_echo_run_on_the_ring() {
    let mut server =
        ServerProcess::spawn(&["--listen", "ws:127.0.0.1:0", "--engine", "io-uring"], &[]);
    let line = server.wait_for("listening on ws:");
    if !on_the_ring(&mut server) {
        return;
    }
    let addr: SocketAddr = line
        .split("listening on ws:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c.is_whitespace()).next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"));
    let target = format!("ws://{addr}/");
    let args: Vec<String> = [
        "bench",
        &target,
        "--connections",
        "20",
        "--size",
        "3000",
        "--pipeline",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--json",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let (code, stdout, stderr) = client(args).await;
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(report["mismatches"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["messages"].as_u64().unwrap() > 100, "{report}");
    let mut http = TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET /probe?x=1 HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let (response, _) = read_until_closed(&mut http).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.contains("\"path\""), "{response}");
}

/// HAProxy's `send-proxy` in front of a TLS listener on the ring: the
/// header, the handshake and the records all go through the ring's
/// receives and sends, and the log names the client from the header.
#[tokio::test]
async fn tls_behind_a_proxy_header_runs_on_the_ring() {
    let pki = common::pki::Pki::new();
    let (mut server, addr) = pki.spawn_server(&[
        "--engine",
        "io-uring",
        "--proxy-protocol",
        "v1",
        "--log-level",
        "debug",
    ]);
    if !on_the_ring(&mut server) {
        return;
    }
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.51.100.20 127.0.0.1 40404 443\r\n")
        .await
        .unwrap();
    let args = pki.client_args("ca.pem", None);
    let config = echod::tls::client_config(&args).unwrap();
    let name = echod::tls::server_name(&args, "localhost").unwrap();
    let stream = echod::tls::connect(tcp, config, name).await.unwrap();
    let mut input = pattern(200_000, 5);
    input.push(b'\n');
    let (mut reader, mut writer) = tokio::io::split(stream);
    let sent = input.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(&sent).await.unwrap();
        writer.flush().await.unwrap();
        writer
    });
    let mut echoed = vec![0u8; input.len()];
    tokio::time::timeout(PATIENCE, reader.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .unwrap();
    assert!(echoed == input, "the TLS echo differs");
    drop(writing.await.unwrap());
    drop(reader);
    server.wait_for("connection from 198.51.100.20:40404 closed");
}

/// Docker's default seccomp profile refuses io_uring_setup; so does this
/// filter (installed in the child before exec). The server says why, once,
/// and serves on the tokio engine.
#[test]
fn where_seccomp_forbids_io_uring_the_server_warns_and_serves_on_tokio() {
    let mut server = ServerProcess::spawn_with(
        &["--listen", "127.0.0.1:0", "--engine", "io-uring"],
        &[],
        |command, _| {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls (prctl) between fork and exec.
            unsafe {
                command.pre_exec(deny_io_uring_setup);
            }
        },
    );
    let addr = server.listening(1)[0];
    let warning = server.wait_for("io_uring is unavailable");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("not permitted"), "{warning}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let echoed = runtime.block_on(round_trip(addr, b"served anyway\n"));
    assert_eq!(echoed, b"served anyway\n");
    assert_eq!(
        server
            .stderr
            .iter()
            .filter(|l| l.contains("io_uring is unavailable"))
            .count(),
        1
    );
}

/// A seccomp filter: io_uring_setup (425 on every architecture) fails with
/// EPERM; everything else is allowed.
fn deny_io_uring_setup() -> std::io::Result<()> {
    const IO_URING_SETUP: u32 = 425;
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: IO_URING_SETUP,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with the documented arguments; `program` outlives it.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
