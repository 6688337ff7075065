//! Attacks we survive, one test each, over real sockets (loopback only).
//! Each names the hole it closes; RELIABILITY.md's table lists them with
//! the attacks tested elsewhere (TLS in `tls.rs`, signals in `shutdown.rs`,
//! values in `cli.rs`).

mod common;

use std::time::{Duration, Instant};

use common::{config, echo_once, read_until_closed, TestServer, PATIENCE};
use echod::{config::ProxyProtocol, Config};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// A connection from `local` (an address of 127.0.0.0/8).
async fn connect_from(local: &str, server: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

fn proxy_config() -> Config {
    Config {
        proxy_protocol: ProxyProtocol::V1,
        ..config()
    }
}

/// Before: under the PROXY protocol the per-IP limit was checked only after
/// the header, so silent connections from one address held every slot for
/// the frame timeout. Now the socket peer is bounded while its header is
/// awaited.
#[tokio::test]
async fn silent_proxy_connections_from_one_address_cannot_hold_every_slot() {
    let server = TestServer::start(Config {
        max_connections: 3,
        max_connections_per_ip: 2,
        // Long enough that only the per-peer bound can close the third.
        proxy_header_timeout: Duration::from_secs(600),
        ..proxy_config()
    })
    .await;
    let addr = server.addr();
    let _silent_one = connect_from("127.0.0.1", addr).await;
    let _silent_two = connect_from("127.0.0.1", addr).await;
    let mut third = connect_from("127.0.0.1", addr).await;
    let started = Instant::now();
    assert_eq!(read_until_closed(&mut third).await.0, b"");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held {:?}",
        started.elapsed()
    );
    // The last slot is still free for another peer.
    let mut other = connect_from("127.0.0.2", addr).await;
    other
        .write_all(b"PROXY TCP4 192.0.2.9 127.0.0.1 5000 3600\r\n")
        .await
        .unwrap();
    assert_eq!(echo_once(&mut other, b"served\n").await, b"served\n");
    server.shutdown().await;
}

/// A header dribbled (or never finished) is cut at `proxy_header_timeout`,
/// even with the idle and frame timeouts off.
#[tokio::test]
async fn an_unfinished_proxy_header_is_cut_at_the_proxy_header_timeout() {
    let server = TestServer::start(Config {
        proxy_header_timeout: Duration::from_millis(200),
        idle_timeout: None,
        frame_timeout: None,
        ..proxy_config()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(b"PROXY TCP4 192.0.2").await.unwrap();
    let started = Instant::now();
    assert_eq!(read_until_closed(&mut stream).await.0, b"");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    server.shutdown().await;
}

/// With `proxy_trusted` set, a peer outside it cannot claim to be anyone:
/// it is closed before anything is read. A trusted balancer's connections
/// are not bounded per IP while their headers are awaited.
#[tokio::test]
async fn peers_outside_proxy_trusted_are_closed_and_trusted_ones_are_not_bounded() {
    let untrusted = TestServer::start(Config {
        proxy_trusted: vec!["10.0.0.0/8".parse().unwrap()],
        ..proxy_config()
    })
    .await;
    let mut stream = TcpStream::connect(untrusted.addr()).await.unwrap();
    let _ = stream
        .write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 3600\r\nspoofed\n")
        .await;
    assert_eq!(read_until_closed(&mut stream).await.0, b"");
    untrusted.shutdown().await;

    let trusted = TestServer::start(Config {
        proxy_trusted: vec!["127.0.0.1/32".parse().unwrap()],
        max_connections_per_ip: 1,
        ..proxy_config()
    })
    .await;
    // Two connections from the balancer, both still silent, then each
    // names its own client: both are served.
    let mut first = TcpStream::connect(trusted.addr()).await.unwrap();
    let mut second = TcpStream::connect(trusted.addr()).await.unwrap();
    for (stream, client) in [(&mut first, "192.0.2.1"), (&mut second, "192.0.2.2")] {
        let header = format!("PROXY TCP4 {client} 127.0.0.1 5000 3600\r\n");
        stream.write_all(header.as_bytes()).await.unwrap();
        assert_eq!(echo_once(stream, b"hi\n").await, b"hi\n");
    }
    trusted.shutdown().await;
}

/// One raw HTTP exchange with the admin endpoint: the status line, or
/// `None` if none came back within `limit` (the connection may stay open
/// for keep-alive; only the answer's start is waited for).
async fn http_status(
    addr: std::net::SocketAddr,
    request: &[u8],
    limit: Duration,
) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let status_line = async {
        let mut chunk = [0u8; 1024];
        while !response.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(limit, status_line).await.ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    text.lines().next().map(str::to_owned)
}

/// Before: 16 request slots, each held 10 s by a client that sent nothing,
/// so a handful of idle connections made a scrape time out. Now 100 silent
/// clients cannot delay a scrape past a second.
#[tokio::test]
async fn silent_clients_cannot_delay_a_metrics_scrape() {
    let server = TestServer::start(Config {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        ..config()
    })
    .await;
    let metrics = server.metrics_addr.unwrap();
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(metrics).await.unwrap());
    }
    let started = Instant::now();
    let status = http_status(
        metrics,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        PATIENCE,
    )
    .await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "scrape took {:?}",
        started.elapsed()
    );
    drop(silent);
    server.shutdown().await;
}

/// Garbage gets its 400 at once, and a request with bare LF line ends (as
/// RFC 9112 allows) is answered, instead of both waiting for a timeout.
#[tokio::test]
async fn garbage_and_lf_only_requests_are_answered_at_once() {
    let server = TestServer::start(Config {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        ..config()
    })
    .await;
    let metrics = server.metrics_addr.unwrap();
    let quick = Duration::from_secs(1);
    for garbage in [&b"\x00\x01\x02\xff"[..], b"hello there\n", b"GET\n"] {
        let status = http_status(metrics, garbage, quick).await;
        assert_eq!(
            status.as_deref(),
            Some("HTTP/1.1 400 Bad Request"),
            "{garbage:?}"
        );
    }
    let status = http_status(metrics, b"GET /metrics HTTP/1.1\nHost: x\n\n", quick).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"));
    server.shutdown().await;
}

/// Pins the calling thread to one CPU.
#[cfg(target_os = "linux")]
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
    // sched_setaffinity get valid pointers to it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
}

/// Before: the listener bound, then called `metadata()` and
/// `set_permissions()` on the path, both of which follow symlinks, so
/// someone who can write to the socket's directory could swap in a symlink
/// between the two and have the server chmod any file it can reach (52 of
/// 60 tries with both sides on one CPU). The mode must only ever reach the
/// socket this server created. Both sides are pinned to one CPU, so the
/// attacker runs between the server's system calls as often as possible.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn a_symlink_swapped_in_cannot_redirect_the_unix_socket_mode() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let dir = tempfile::tempdir().unwrap();
    let (path, victim) = (dir.path().join("echod.sock"), dir.path().join("victim"));
    std::fs::write(&victim, b"not yours").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cpu = unsafe { libc::sched_getcpu() }.max(0) as usize;
    pin_to_cpu(cpu);
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (path, victim, stop) = (path.clone(), victim.clone(), stop.clone());
        std::thread::spawn(move || {
            pin_to_cpu(cpu);
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let is_socket = std::fs::symlink_metadata(&path)
                    .is_ok_and(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
                if is_socket && std::fs::remove_file(&path).is_ok() {
                    let _ = std::os::unix::fs::symlink(&victim, &path);
                    swaps += 1;
                }
                std::thread::yield_now();
            }
            swaps
        })
    };
    for _ in 0..200 {
        let _ = std::fs::remove_file(&path);
        let listener = echod::server::listen::UnixListener::bind(&path, 0o666);
        drop(listener);
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o600,
            "the server changed the mode of a file it did not create"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = attacker.join().unwrap();
    assert!(
        swaps > 0,
        "the attacker never got to swap the socket: the test proves nothing"
    );
}
