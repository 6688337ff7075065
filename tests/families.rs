//! Every socket family the textbook teaches, over real sockets: Unix domain
//! stream sockets, UDP (RFC 862) with its reflection guards, and IPv6.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use echod::{
    config::{Endpoint, UdpLimits},
    Config,
};
use tokio::net::UdpSocket;

fn unix_config(path: &std::path::Path) -> Config {
    Config {
        listen: vec![Endpoint::Unix(path.to_owned())],
        ..config()
    }
}

#[cfg(unix)]
mod unix {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::UnixStream,
    };

    use super::*;

    async fn unix_round_trip(path: &std::path::Path, input: &[u8]) -> Vec<u8> {
        let stream = UnixStream::connect(path).await.expect("connect");
        let (mut reader, mut writer) = stream.into_split();
        let input = input.to_vec();
        let writing = tokio::spawn(async move {
            writer.write_all(&input).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let mut echoed = Vec::new();
        tokio::time::timeout(PATIENCE, reader.read_to_end(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        writing.await.unwrap();
        echoed
    }

    #[tokio::test]
    async fn unix_socket_echoes_beside_tcp_with_the_same_framing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.sock");
        let server = TestServer::start(Config {
            listen: vec!["127.0.0.1:0".parse().unwrap(), Endpoint::Unix(path.clone())],
            ..config()
        })
        .await;
        assert_eq!(
            unix_round_trip(&path, b"over unix\r\n\xff tail").await,
            b"over unix\r\n\xff tail"
        );
        assert_eq!(
            round_trip(server.addr(), b"over tcp\n").await,
            b"over tcp\n"
        );
        server.shutdown().await;
    }

    #[tokio::test]
    async fn unix_socket_limits_apply_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.sock");
        let server = TestServer::start(Config {
            max_frame_length: 8,
            ..unix_config(&path)
        })
        .await;
        let mut stream = UnixStream::connect(&path).await.unwrap();
        stream.write_all(b"ok\nmuch too long\n").await.unwrap();
        let mut echoed = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, b"ok\n");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn socket_file_gets_the_configured_mode_and_is_removed_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.sock");
        let server = TestServer::start(unix_config(&path)).await;
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        server.shutdown().await;
        assert!(!path.exists(), "socket file left behind");

        let server = TestServer::start(Config {
            unix_socket_mode: 0o600,
            ..unix_config(&path)
        })
        .await;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_stale_socket_file_from_a_dead_server_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.sock");
        // A socket file nobody listens on, as a killed server leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket());
        let server = TestServer::start(unix_config(&path)).await;
        assert_eq!(unix_round_trip(&path, b"fresh\n").await, b"fresh\n");
        server.shutdown().await;
    }

    #[test]
    fn a_live_servers_socket_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let endpoint = format!("unix:{}", path.display());
        let (code, _, stderr) = run_binary(
            env!("CARGO_BIN_EXE_echo-server"),
            &["--listen", &endpoint],
            &[],
            b"",
        );
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "cannot listen on {endpoint}: a server is already listening there"
            )),
            "{stderr}"
        );
        // Still the live server's socket.
        drop(std::os::unix::net::UnixStream::connect(&path).expect("the live socket still works"));
        drop(live);
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_an_error_and_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("important.txt");
        std::fs::write(&path, "keep me").unwrap();
        let endpoint = format!("unix:{}", path.display());
        let (code, _, stderr) = run_binary(
            env!("CARGO_BIN_EXE_echo-server"),
            &["--listen", &endpoint],
            &[],
            b"",
        );
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("is not a socket"), "{stderr}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }
}

async fn udp_server(limits: UdpLimits) -> (TestServer, SocketAddr) {
    let server = TestServer::start(Config {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        udp_limits: limits,
        ..config()
    })
    .await;
    let addr = server_udp_addr(&server);
    (server, addr)
}

fn server_udp_addr(server: &TestServer) -> SocketAddr {
    server.udp_addrs[0]
}

/// Receives replies until none arrives for `quiet`.
async fn replies(socket: &UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
    let mut replies = Vec::new();
    let mut buf = vec![0u8; 70_000];
    while let Ok(Ok(len)) = tokio::time::timeout(quiet, socket.recv(&mut buf)).await {
        replies.push(buf[..len].to_vec());
    }
    replies
}

#[tokio::test]
async fn udp_datagrams_come_back_identical_up_to_the_largest() {
    let (server, addr) = udp_server(UdpLimits::default()).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(addr).await.unwrap();
    for payload in [
        b"hello\n".to_vec(),
        vec![],
        pattern(1400, 1),
        pattern(65_507, 2),
    ] {
        client.send(&payload).await.unwrap();
        let got = replies(&client, Duration::from_millis(500)).await;
        assert_eq!(got.len(), 1, "one reply per datagram");
        assert!(
            got[0] == payload,
            "reply differs ({} bytes sent)",
            payload.len()
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_udp_flood_from_one_source_is_capped_at_its_rate_then_served_again() {
    let limits = UdpLimits {
        rate: 20,
        burst: 10,
        ..UdpLimits::default()
    };
    let (server, addr) = udp_server(limits).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    for n in 0..500u32 {
        client.send(&n.to_be_bytes()).await.unwrap();
    }
    let flood_took = started.elapsed().as_secs_f64();
    let got = replies(&client, Duration::from_millis(300)).await;
    let allowed = 10.0 + 20.0 * flood_took;
    assert!(
        got.len() >= 10,
        "the burst should be answered: {}",
        got.len()
    );
    assert!(
        (got.len() as f64) <= allowed + 1.0,
        "{} replies, at most {allowed:.1} allowed",
        got.len()
    );
    // No lasting ban: once the bucket refills (pacing, not synchronisation),
    // the same source is answered again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.send(b"again").await.unwrap();
    assert_eq!(
        replies(&client, Duration::from_millis(500)).await,
        vec![b"again".to_vec()]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn replies_to_source_ports_below_the_minimum_are_not_sent() {
    // Every ephemeral port is below 65535: with that minimum, nothing is
    // answered; with the default (1024) an ephemeral port is.
    let (server, addr) = udp_server(UdpLimits {
        min_source_port: 65535,
        ..UdpLimits::default()
    })
    .await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert!(client.local_addr().unwrap().port() < 65535);
    client.connect(addr).await.unwrap();
    client.send(b"reflect me").await.unwrap();
    assert!(replies(&client, Duration::from_millis(500))
        .await
        .is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn the_global_budget_caps_many_sources_together() {
    let (server, addr) = udp_server(UdpLimits {
        global_rate: 30,
        ..UdpLimits::default()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        clients.push(client);
    }
    let started = std::time::Instant::now();
    for client in &clients {
        for n in 0..20u8 {
            client.send(&[n]).await.unwrap();
        }
    }
    let took = started.elapsed().as_secs_f64();
    let mut total = 0;
    for client in &clients {
        total += replies(client, Duration::from_millis(200)).await.len();
    }
    // All come from 127.0.0.1: per-source (burst 200) would allow all 200.
    assert!(
        total >= 30 && (total as f64) <= 30.0 + 30.0 * took + 1.0,
        "{total} replies"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn ipv6_listeners_are_ipv6_only_so_ipv4_can_share_the_port() {
    // Find a port free on both families, then bind both: with IPV6_V6ONLY
    // set explicitly this works whatever net.ipv6.bindv6only says.
    let probe = std::net::TcpListener::bind("[::]:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let server = TestServer::start(Config {
        listen: vec![
            format!("[::]:{port}").parse().unwrap(),
            format!("0.0.0.0:{port}").parse().unwrap(),
        ],
        ..config()
    })
    .await;
    assert_eq!(server.addrs.len(), 2);
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(round_trip(v6, b"six\n").await, b"six\n");
    assert_eq!(round_trip(v4, b"four\n").await, b"four\n");
    server.shutdown().await;
}
