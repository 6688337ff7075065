//! Graceful shutdown with real signals on the real binary: listeners close
//! at once, received bytes are echoed, connections get FIN, exit 0.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Writes until the server stops taking bytes; returns what was written.
async fn fill_until_stalled(stream: &mut TcpStream) -> Vec<u8> {
    let line = {
        let mut line = vec![b'z'; 4095];
        line.push(b'\n');
        line
    };
    let mut sent = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), stream.write(&line)).await {
            Err(_) => return sent,
            Ok(Ok(n)) => sent.extend_from_slice(&line[..n]),
            Ok(Err(error)) => panic!("write failed: {error}"),
        }
        assert!(sent.len() < 512 << 20, "the server never pushed back");
    }
}

/// Bytes this socket sent that the peer has not acknowledged (SIOCOUTQ).
fn unacknowledged(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int through the pointer.
    let result = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    assert_eq!(result, 0, "ioctl(SIOCOUTQ) failed");
    queued as usize
}

async fn is_refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect(addr).await,
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_listeners_echoes_what_was_received_and_exits_zero() {
    let mut server = ServerProcess::spawn(
        &["--listen", "127.0.0.1:0", "--shutdown-grace", "20"],
        &[("RUST_LOG", "info,echod::connection=trace")],
    );
    let addr = server.listening(1)[0];

    let mut served = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_once(&mut served, b"hello\n").await, b"hello\n");
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_once(&mut idle, b"idle\n").await, b"idle\n");

    // A partial line the server has read (its trace says so) but cannot echo
    // yet: at shutdown it counts as the end of that client's input.
    let mut partial = TcpStream::connect(addr).await.unwrap();
    let partial_port = partial.local_addr().unwrap().port();
    partial.write_all(b"no newline yet").await.unwrap();
    server.wait_for(&format!(
        "{partial_port}}}: echod::connection: read bytes=14"
    ));

    // A client that does not read keeps the server busy writing its echoes.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let sent = fill_until_stalled(&mut busy).await;
    // Bytes the server's kernel acknowledged were received before the
    // signal, even if the server had not read them yet: all must come back.
    let received_by_server = sent.len() - unacknowledged(&busy);

    server.signal(libc::SIGTERM);
    server.wait_for("shutting down; listeners closed");
    assert!(
        is_refused(addr).await,
        "a new client was accepted during shutdown"
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited before the busy client was served"
    );

    let (rest, _) = read_until_closed(&mut served).await;
    assert!(rest.is_empty());
    let (rest, _) = read_until_closed(&mut idle).await;
    assert!(rest.is_empty());
    let (echoed, _) = read_until_closed(&mut partial).await;
    assert_eq!(echoed, b"no newline yet");
    let (echoed, _) = read_until_closed(&mut busy).await;
    assert!(
        echoed == sent[..echoed.len()],
        "busy client's echo is not a prefix of what it sent"
    );
    assert!(
        echoed.len() >= received_by_server,
        "{} bytes echoed, but the server had received {received_by_server}",
        echoed.len()
    );

    assert_eq!(server.wait().code(), Some(0));
    assert!(server.stderr.iter().any(|line| line.contains("SIGTERM")));
    assert!(server
        .stderr
        .iter()
        .any(|line| line.contains("shutdown complete")));
    assert!(!server.stderr.iter().any(|line| line.contains("were cut")));
}

#[tokio::test]
async fn sigint_shuts_down_an_idle_server_and_exits_zero() {
    let mut server = ServerProcess::spawn(&["--listen", "127.0.0.1:0"], &[]);
    let addr = server.listening(1)[0];
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_once(&mut idle, b"x\n").await, b"x\n");
    server.signal(libc::SIGINT);
    // Idle connections are closed at once, long before the 10 s grace.
    let (rest, waited) = read_until_closed(&mut idle).await;
    assert!(rest.is_empty());
    assert!(
        waited < Duration::from_secs(5),
        "idle connection held {waited:?}"
    );
    assert_eq!(server.wait().code(), Some(0));
    assert!(server.stderr.iter().any(|line| line.contains("SIGINT")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_open_at_the_grace_deadline_are_cut_and_counted() {
    let mut server =
        ServerProcess::spawn(&["--listen", "127.0.0.1:0", "--shutdown-grace", "0.5"], &[]);
    let addr = server.listening(1)[0];
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    fill_until_stalled(&mut stuck).await;
    let started = std::time::Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
    assert!(started.elapsed() >= Duration::from_millis(450));
    let warning = server
        .stderr
        .iter()
        .find(|line| line.contains("WARN"))
        .unwrap_or_else(|| panic!("no WARN line:\n{}", server.stderr.join("\n")));
    assert!(
        warning.contains("1 connection(s) still open at the 0.5s shutdown deadline were cut"),
        "{warning}"
    );
    assert!(server
        .stderr
        .iter()
        .any(|line| line.contains("cut at the shutdown deadline")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_shutdown_reports_how_many_were_cut() {
    let mut server = TestServer::start(echod::Config {
        shutdown_grace: Duration::from_millis(300),
        ..config()
    })
    .await;
    let mut stuck = TcpStream::connect(server.addr()).await.unwrap();
    fill_until_stalled(&mut stuck).await;
    let mut polite = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(echo_once(&mut polite, b"bye\n").await, b"bye\n");
    server.begin_shutdown();
    let (rest, _) = read_until_closed(&mut polite).await;
    assert!(rest.is_empty());
    let report = server.finished().await;
    assert_eq!(report.cut, 1);
    // The cut connection is really gone: reading ends.
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stuck.read_to_end(&mut sink))
        .await
        .expect("cut connection ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_cuts_every_connection_at_once() {
    let mut server =
        ServerProcess::spawn(&["--listen", "127.0.0.1:0", "--shutdown-grace", "600"], &[]);
    let addr = server.listening(1)[0];
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    fill_until_stalled(&mut stuck).await;
    server.signal(libc::SIGTERM);
    // The graceful shutdown has begun (and would wait ten minutes).
    server.wait_for("shutting down");
    let started = std::time::Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second signal did not cut: {:?}",
        started.elapsed()
    );
    assert!(
        server.stderr.iter().any(|line| line.contains("WARN")
            && line.contains("1 connection(s) still open at a second SIGTERM were cut")),
        "no cut WARN:\n{}",
        server.stderr.join("\n")
    );
}
