//! The `echo-client` binary end to end against a real server.

mod common;

use std::io::Read;

use common::*;
use echod::{Config, Framing};

const CLIENT: &str = env!("CARGO_BIN_EXE_echo-client");

/// Runs the client on a thread so the in-process server keeps running.
async fn client(args: Vec<String>, stdin: Vec<u8>) -> (Option<i32>, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_binary(CLIENT, &args, &[], &stdin)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_piped_lines_come_back_in_order() {
    let server = TestServer::start(config()).await;
    let input: String = (1..=100_000).map(|n| format!("{n}\n")).collect();
    let (code, stdout, stderr) =
        client(vec![server.addr().to_string()], input.clone().into_bytes()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout == input.as_bytes(), "output differs from input");
    assert!(stderr.is_empty(), "{stderr}");
    server.shutdown().await;
}

#[tokio::test]
async fn crlf_non_utf8_and_a_last_line_without_newline_pass_through_exactly() {
    let server = TestServer::start(config()).await;
    let input = b"dos line\r\n\xff\xfe\n\nlast without newline".to_vec();
    let (code, stdout, stderr) = client(vec![server.addr().to_string()], input.clone()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, input);
    server.shutdown().await;
}

#[tokio::test]
async fn length_framing_sends_each_line_as_a_frame() {
    let server = TestServer::start(Config {
        framing: Framing::Length,
        ..config()
    })
    .await;
    let input = b"one\ntwo\n\nthree".to_vec();
    let (code, stdout, stderr) = client(
        vec![
            server.addr().to_string(),
            "--framing".into(),
            "length".into(),
        ],
        input.clone(),
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, input);
    server.shutdown().await;
}

#[tokio::test]
async fn connection_refused_is_one_clear_line_and_exit_one() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }; // closed again: nothing listens there now
    let (code, stdout, stderr) = client(vec![addr.to_string()], b"hello\n".to_vec()).await;
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("echo-client: cannot connect to {addr}: ")),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
}

#[tokio::test]
async fn a_server_that_never_echoes_times_out_with_exit_one() {
    // A listener that accepts and reads but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let (done, client_done) = std::sync::mpsc::channel::<()>();
    let sink = std::thread::spawn(move || {
        let (mut stream, _) = silent.accept().unwrap();
        let mut swallowed = Vec::new();
        let _ = stream.read_to_end(&mut swallowed);
        // Keep the connection open (no FIN) until the client has given up.
        let _ = client_done.recv();
        swallowed
    });
    let (code, stdout, stderr) = client(
        vec![addr.to_string(), "--timeout".into(), "0.5".into()],
        b"anyone?\n".to_vec(),
    )
    .await;
    drop(done);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("timed out after 0.5s waiting for the last echoes"),
        "{stderr}"
    );
    assert_eq!(sink.join().unwrap(), b"anyone?\n");
}

#[tokio::test]
async fn a_server_that_closes_early_is_reported() {
    let server = TestServer::start(Config {
        max_frame_length: 8,
        ..config()
    })
    .await;
    let (code, stdout, stderr) = client(
        vec![server.addr().to_string()],
        b"ok\nthis line is too long\n".to_vec(),
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stdout, b"ok\n");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    server.shutdown().await;
}

#[test]
fn bad_usage_exits_two() {
    for args in [
        &["not-an-address"][..],
        &["--timeout", "soon"],
        &["--framing", "raw"],
        &["--bogus"],
    ] {
        let (code, _, stderr) = run_binary(CLIENT, args, &[], b"");
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_client_talks_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let server = TestServer::start(Config {
        listen: vec![echod::config::Endpoint::Unix(path.clone())],
        ..config()
    })
    .await;
    let input = b"via unix\nsecond\r\nno newline".to_vec();
    let (code, stdout, stderr) =
        client(vec![format!("unix:{}", path.display())], input.clone()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, input);
    server.shutdown().await;
}

#[tokio::test]
async fn the_client_sends_each_line_as_a_datagram_with_udp() {
    let server = TestServer::start(Config {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        ..config()
    })
    .await;
    let input = b"one\ntwo\n\nlast".to_vec();
    let (code, stdout, stderr) = client(
        vec![server.udp_addrs[0].to_string(), "--udp".into()],
        input.clone(),
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, input);
    server.shutdown().await;
}

#[tokio::test]
async fn lost_udp_replies_are_reported_and_exit_one() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let (code, stdout, stderr) = client(
        vec![
            addr.to_string(),
            "--udp".into(),
            "--timeout".into(),
            "0.3".into(),
        ],
        b"anyone?\nhello?\n".to_vec(),
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("no reply to line 1 within 0.3s"),
        "{stderr}"
    );
    assert!(stderr.contains("2 of 2 datagrams got no reply"), "{stderr}");
    drop(silent);
}
