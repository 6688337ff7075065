//! Hostile clients: slow senders, too many connections from one address,
//! and many clients that never read. The server bounds each of them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use echod::Config;
use tokio::{io::AsyncWriteExt, net::TcpStream};

#[tokio::test]
async fn a_client_dribbling_an_unfinished_frame_is_closed_at_the_frame_timeout() {
    let server = TestServer::start(Config {
        frame_timeout: Some(Duration::from_millis(600)),
        idle_timeout: Some(Duration::from_secs(300)),
        ..config()
    })
    .await;
    let stream = TcpStream::connect(server.addr()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    // One byte every 50 ms, never a newline: never idle, never a frame.
    let dribble = tokio::spawn(async move {
        for _ in 0..200 {
            if writer.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut sink),
    )
    .await;
    assert!(closed.is_ok(), "the slow sender was never closed");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(550) && after < Duration::from_secs(5),
        "closed after {after:?}"
    );
    assert!(sink.is_empty());
    dribble.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn slow_but_complete_frames_are_not_cut_by_the_frame_timeout() {
    let server = TestServer::start(Config {
        frame_timeout: Some(Duration::from_millis(400)),
        ..config()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    // Each line completes quickly; the whole exchange lasts 3× the timeout.
    for n in 0..12 {
        let line = format!("line {n}\n");
        assert_eq!(
            echo_once(&mut stream, line.as_bytes()).await,
            line.as_bytes()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn one_ip_gets_at_most_its_connection_limit_and_others_get_theirs() {
    let server = TestServer::start(Config {
        max_connections_per_ip: 2,
        ..config()
    })
    .await;
    let mut first = TcpStream::connect(server.addr()).await.unwrap();
    let mut second = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(echo_once(&mut first, b"1\n").await, b"1\n");
    assert_eq!(echo_once(&mut second, b"2\n").await, b"2\n");
    // A third from the same address is closed without being served.
    let mut third = TcpStream::connect(server.addr()).await.unwrap();
    let _ = third.write_all(b"3\n").await;
    let (echoed, _) = read_until_closed(&mut third).await;
    assert!(echoed.is_empty());
    // When one closes, the address may connect again.
    drop(first);
    let mut retry = None;
    for _ in 0..100 {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        stream.write_all(b"again\n").await.unwrap();
        let mut echo = [0u8; 6];
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::io::AsyncReadExt::read_exact(&mut stream, &mut echo),
        )
        .await
        {
            retry = Some(echo);
            break;
        }
    }
    assert_eq!(
        &retry.expect("served again once a connection closed"),
        b"again\n"
    );
    assert_eq!(echo_once(&mut second, b"still\n").await, b"still\n");
    server.shutdown().await;
}

#[cfg(target_os = "linux")]
#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit_and_logged() {
    let mut server = ServerProcess::spawn_with(&["--listen", "127.0.0.1:0"], &[], |command, _| {
        limit_open_files(command, 256, 4096)
    });
    server.listening(1);
    let line = server.wait_for("open-file limit");
    assert!(
        line.contains("open-file limit 4096 (raised from 256)"),
        "{line}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        open_files
            .split_whitespace()
            .filter(|w| *w == "4096")
            .count()
            == 2,
        "{open_files}"
    );
    // 10,000 connections cannot fit in 4,096 descriptors: say so.
    server.wait_for("max_connections 10000 exceeds the open-file limit");
}

/// Peak resident set size (VmHWM) in KiB.
#[cfg(target_os = "linux")]
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_that_never_read_stay_within_the_memory_bound() {
    const CLIENTS: usize = 1000;
    const EACH: usize = 1 << 20;
    let mut server = ServerProcess::spawn(&["--listen", "127.0.0.1:0", "--workers", "1"], &[]);
    let addr = server.listening(1)[0];
    let pid = server.child.id();
    // 4 KiB lines, as the README's bound assumes frames of up to 64 KiB.
    let mut line = vec![b'm'; 4096];
    *line.last_mut().unwrap() = b'\n';
    let payload = line.repeat(EACH / 4096);
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut sent = 0usize;
    for _ in 0..CLIENTS {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut offset = 0;
        // Write what the kernel takes now, up to 1 MiB, then move on.
        while offset < payload.len() {
            match stream.try_write(&payload[offset..]) {
                Ok(n) => offset += n,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    if tokio::time::timeout(Duration::from_millis(20), stream.writable())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(error) => panic!("write failed: {error}"),
            }
        }
        sent += offset;
        clients.push(stream);
    }
    // Give the server the chance to read everything it will read.
    assert_eq!(round_trip(addr, b"still served\n").await, b"still served\n");
    let peak_kib = peak_rss_kib(pid);
    // The stated bound per connection: one 64 KiB read buffer + one frame
    // (max_frame_length, 64 KiB) + about 2 KiB; plus the process itself.
    let bound_kib = (CLIENTS * (64 + 64 + 2)) as u64 + 16 * 1024;
    eprintln!(
        "{CLIENTS} non-reading clients sent {} MiB; server peak RSS {} MiB (bound {} MiB)",
        sent >> 20,
        peak_kib >> 10,
        bound_kib >> 10
    );
    assert!(
        sent > 100 << 20,
        "the clients sent only {sent} bytes: the test did not load the server"
    );
    assert!(
        peak_kib < bound_kib,
        "peak RSS {peak_kib} KiB over the {bound_kib} KiB bound"
    );
    drop(clients);
    drop(server);
}
