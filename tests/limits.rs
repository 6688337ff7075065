//! Limits over real sockets: idle timeout, the connection limit,
//! backpressure against clients that never read, and accept errors.

mod common;

use std::time::Duration;

use common::*;
use echod::Config;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let timeout = Duration::from_millis(400);
    let server = TestServer::start(Config {
        idle_timeout: Some(timeout),
        ..config()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let (received, waited) = read_until_closed(&mut stream).await;
    assert!(received.is_empty());
    assert!(
        waited >= timeout - Duration::from_millis(50),
        "closed after only {waited:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn traffic_keeps_a_connection_open_past_the_idle_timeout() {
    let timeout = Duration::from_millis(600);
    let server = TestServer::start(Config {
        idle_timeout: Some(timeout),
        ..config()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let started = std::time::Instant::now();
    // Pacing, not synchronisation: one line every 150 ms for 3× the timeout.
    let mut last_echo = started;
    while started.elapsed() < timeout * 3 {
        assert_eq!(
            echo_once(&mut stream, b"still here\n").await,
            b"still here\n"
        );
        last_echo = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Then silence closes it, a timeout after the last traffic.
    read_until_closed(&mut stream).await;
    let silent = last_echo.elapsed();
    assert!(
        silent >= timeout - Duration::from_millis(50),
        "closed {silent:?} after the last echo"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn idle_timeout_zero_never_closes() {
    let server = TestServer::start(Config {
        idle_timeout: None,
        ..config()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let mut byte = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(700), stream.read(&mut byte)).await;
    assert!(
        quiet.is_err(),
        "the server closed or sent something: {quiet:?}"
    );
    assert_eq!(echo_once(&mut stream, b"alive\n").await, b"alive\n");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_serves_exactly_that_many_and_the_next_waits_for_a_slot() {
    let server = TestServer::start(Config {
        max_connections: 2,
        ..config()
    })
    .await;
    let mut first = TcpStream::connect(server.addr()).await.unwrap();
    let mut second = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(echo_once(&mut first, b"1\n").await, b"1\n");
    assert_eq!(echo_once(&mut second, b"2\n").await, b"2\n");

    // The third connects (the kernel queues it) but is not served yet.
    let mut third = TcpStream::connect(server.addr()).await.unwrap();
    third.write_all(b"3\n").await.unwrap();
    let mut echo = [0u8; 2];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read_exact(&mut echo)).await;
    assert!(
        early.is_err(),
        "a third client was served with max_connections = 2"
    );

    // A slot frees: the waiting client is served, its early bytes included.
    drop(first);
    tokio::time::timeout(PATIENCE, third.read_exact(&mut echo))
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(&echo, b"3\n");
    assert_eq!(echo_once(&mut second, b"still\n").await, b"still\n");
    server.shutdown().await;
}

/// Writes until the peer stops taking bytes (no progress for `stall`).
async fn write_until_stalled(stream: &mut TcpStream, limit: usize, stall: Duration) -> usize {
    // 4 KiB lines, repeated: writing from `sent % LINE` keeps every line
    // 4 KiB long however the kernel splits the writes.
    const LINE: usize = 4096;
    let mut lines = vec![b'y'; 16 * LINE];
    for end in (LINE - 1..lines.len()).step_by(LINE) {
        lines[end] = b'\n';
    }
    let mut sent = 0;
    while sent < limit {
        match tokio::time::timeout(stall, stream.write(&lines[sent % LINE..])).await {
            Err(_) => break, // no progress: backpressure reached us
            Ok(Ok(n)) => sent += n,
            Ok(Err(error)) => panic!("write failed: {error}"),
        }
    }
    sent
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_throttled_not_buffered() {
    let mut server = ServerProcess::spawn(
        &["--listen", "127.0.0.1:0", "--max-frame-length", "65536"],
        &[],
    );
    let addr = server.listening(1)[0];
    // Warm up allocator and runtime so the baseline is fair.
    assert_eq!(round_trip(addr, &pattern(1 << 20, 3)).await.len(), 1 << 20);
    let baseline = server.rss_kib();

    const CLIENTS: usize = 8;
    const ATTEMPT: usize = 256 << 20; // far more than every kernel buffer
    let mut streams = Vec::new();
    let mut accepted = 0;
    for _ in 0..CLIENTS {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        accepted += write_until_stalled(&mut stream, ATTEMPT, Duration::from_millis(300)).await;
        streams.push(stream);
    }
    let grown = server.rss_kib().saturating_sub(baseline);
    // Each stalled client got only what socket buffers hold, never ATTEMPT.
    assert!(
        accepted < CLIENTS * (64 << 20),
        "server took {accepted} bytes from non-readers"
    );
    // The server itself holds at most a read buffer plus one frame each.
    assert!(
        grown < 8 * 1024,
        "server RSS grew {grown} KiB for {CLIENTS} non-reading clients"
    );

    // The stalled clients get their echoes once they read.
    let mut echoed = vec![0u8; 1 << 20];
    streams[0].read_exact(&mut echoed).await.unwrap();
    assert!(echoed.iter().all(|&b| b == b'y' || b == b'\n'));
    // And everyone else is still served meanwhile.
    assert_eq!(round_trip(addr, b"others fine\n").await, b"others fine\n");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let mut server = ServerProcess::spawn_with(&["--listen", "127.0.0.1:0"], &[], |command, _| {
        limit_open_files(command, 40, 40)
    });
    let addr = server.listening(1)[0];
    exhaust_descriptors_then_recover(&mut server, addr, 60).await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_hold_no_read_buffer() {
    const CONNECTIONS: usize = 2000;
    let mut server = ServerProcess::spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--log-level",
            "echod::server=debug",
        ],
        &[],
    );
    let addr = server.listening(1)[0];
    // Warm the allocator with one connection that does echo.
    assert_eq!(round_trip(addr, b"warm\n").await, b"warm\n");
    let baseline = server.rss_kib();
    let mut idle = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..CONNECTIONS + 1 {
        server.wait_for_next("connection opened");
    }
    let per_connection = (server.rss_kib().saturating_sub(baseline) * 1024) as usize / CONNECTIONS;
    // A 16 KiB read buffer per connection costs about 6 KiB of RSS here;
    // without one a connection costs about 1.8 KB: its task (the echo
    // future, about 1 KB), tokio's readiness slot, the idle timer and the
    // peer's name. 2.6 KB was a regression: the echo future held twice
    // (moved after it was built) and two shutdown registrations.
    assert!(
        per_connection <= 2 * 1024,
        "{per_connection} bytes of RSS per idle connection"
    );
    // And they are all alive and served.
    for stream in idle.iter_mut().step_by(250) {
        assert_eq!(echo_once(stream, b"still\n").await, b"still\n");
    }
}
