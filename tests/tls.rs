//! TLS listeners, mutual TLS, the TLS client and bench, and interop with
//! `openssl s_client`. Certificates are made here with rcgen; no key
//! material is committed.

mod common;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use common::{pki::Pki, run_binary, ServerProcess, TestServer, PATIENCE};
use echod::{tls::ClientTlsArgs, Config, Framing};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const SERVER: &str = env!("CARGO_BIN_EXE_echo-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_echo-client");

/// A TLS connection made with the client's own code.
async fn tls_connect(
    addr: SocketAddr,
    args: &ClientTlsArgs,
) -> std::io::Result<echod::tls::ClientStream<TcpStream>> {
    let config = echod::tls::client_config(args).expect("client config");
    let name = echod::tls::server_name(args, "localhost").unwrap();
    let stream = TcpStream::connect(addr).await?;
    echod::tls::connect(stream, config, name).await
}

/// A blocking rustls client, handshake done, for tests that must control
/// exactly which bytes go on the wire after it.
fn blocking_tls_client(
    addr: SocketAddr,
    args: &ClientTlsArgs,
) -> (std::net::TcpStream, rustls::ClientConnection) {
    let config = echod::tls::client_config(args).unwrap();
    let name = echod::tls::server_name(args, "localhost").unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut tls = rustls::ClientConnection::new(config, name).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).unwrap();
    }
    (tcp, tls)
}

/// Sends `input`, closes the TLS stream's sending side, returns all echoes.
async fn tls_round_trip(
    stream: echod::tls::ClientStream<TcpStream>,
    input: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writing = tokio::spawn(async move {
        writer.write_all(&input).await?;
        writer.shutdown().await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut echoed = Vec::new();
    let read = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut echoed))
        .await
        .expect("echoes in time");
    // A TCP close right after the last record (no close_notify read yet)
    // still delivered every byte before it.
    if let Err(error) = read {
        if error.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(error);
        }
    }
    writing.await.unwrap()?;
    Ok(echoed)
}

#[tokio::test]
async fn every_framing_echoes_exactly_inside_tls_with_half_close() {
    let pki = Pki::new();
    let big: Vec<u8> = common::pattern(1 << 20, 7);
    let lines: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("line {i}\r\n").into_bytes())
        .collect();
    let frames: Vec<u8> = (0..500)
        .flat_map(|i| common::length_frame(&common::pattern(i * 7, i as u8)))
        .collect();
    for (framing, input) in [
        (Framing::Lines, lines),
        (Framing::Raw, big),
        (Framing::Length, frames),
    ] {
        let server = TestServer::start(Config {
            framing,
            ..pki.server_config()
        })
        .await;
        let stream = tls_connect(server.addr(), &pki.client_args("ca.pem", None))
            .await
            .unwrap();
        let echoed = tls_round_trip(stream, input.clone()).await.unwrap();
        assert!(
            echoed == input,
            "{framing}: {} of {} bytes",
            echoed.len(),
            input.len()
        );
        server.shutdown().await;
    }
}

#[tokio::test]
async fn echoes_written_under_backpressure_are_flushed_without_a_half_close() {
    // The client does not close its side: it waits for every echo, and
    // reads late through a small buffer. (A TLS write that meets a full
    // socket can leave records in the session, which is why the loop
    // flushes TLS streams after each batch; this test exercises that path
    // but does not reliably reproduce the stall without the flush.)
    let pki = Pki::new();
    let server = TestServer::start(pki.server_config()).await;
    // A small receive buffer, so the server's writes meet a full socket.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr()).await.unwrap();
    let args = pki.client_args("ca.pem", None);
    let config = echod::tls::client_config(&args).unwrap();
    let name = echod::tls::server_name(&args, "localhost").unwrap();
    let stream = echod::tls::connect(tcp, config, name).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let input: Vec<u8> = (0..200_000)
        .flat_map(|i| format!("backpressure {i:>12}\n").into_bytes())
        .collect();
    let total = input.len();
    let writing = tokio::spawn(async move {
        writer.write_all(&input).await.unwrap();
        writer.flush().await.unwrap();
        (writer, input)
    });
    // Start reading late, so the server's writes meet a full socket.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut echoed = vec![0u8; total];
    tokio::time::timeout(PATIENCE, reader.read_exact(&mut echoed))
        .await
        .expect("every echo arrives while the connection stays open")
        .unwrap();
    let (_writer, input) = writing.await.unwrap();
    assert!(echoed == input);
    server.shutdown().await;
}

#[tokio::test]
async fn the_frame_limit_applies_inside_tls() {
    let pki = Pki::new();
    let server = TestServer::start(Config {
        max_frame_length: 16,
        ..pki.server_config()
    })
    .await;
    let stream = tls_connect(server.addr(), &pki.client_args("ca.pem", None))
        .await
        .unwrap();
    let mut input = b"short\n".to_vec();
    input.extend_from_slice(&[b'x'; 100]);
    let echoed = tls_round_trip(stream, input).await.unwrap_or_default();
    assert_eq!(echoed, b"short\n");
    server.shutdown().await;
}

/// `openssl s_client`, installed by `.ci/run`; missing fails under CI.
fn openssl() -> Option<&'static str> {
    common::peer("openssl", &["version"], "openssl").then_some("openssl")
}

#[tokio::test]
async fn openssl_s_client_echoes_a_line_through_mutual_tls() {
    let Some(openssl) = openssl() else { return };
    let pki = Pki::new();
    let ca = pki.arg("ca.pem");
    let (mut server, addr) = pki.spawn_server(&["--tls-client-ca", &ca, "--log-level", "debug"]);
    let addr = addr.to_string();
    let mut child = Command::new(openssl)
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-connect",
            &addr,
        ])
        .args([
            "-CAfile",
            &pki.arg("ca.pem"),
            "-verify_hostname",
            "localhost",
        ])
        .args([
            "-cert",
            &pki.arg("client.pem"),
            "-key",
            &pki.arg("client-key.pem"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::Write::write_all(&mut stdin, b"hello through openssl\n").unwrap();
    let mut echoed = String::new();
    let reader = std::thread::spawn(move || {
        std::io::BufRead::read_line(&mut stdout, &mut echoed).map(|_| echoed)
    });
    let echoed = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(echoed, "hello through openssl\n");
    let opened = server.wait_for("connection opened");
    assert!(
        opened.contains("CN=client-1"),
        "the client certificate's subject is in the log: {opened}"
    );
}

/// Runs `openssl s_client` with `flags` against `addr`, sends one line and
/// reads one line back (none if the handshake fails), then ends its input:
/// (exit status success, the line read).
/// Starts `openssl s_client` (with `extra` flags), sends `line`, reads its
/// echo; returns the running client, its stdin and the echo.
fn s_client_start(
    openssl: &str,
    addr: SocketAddr,
    ca: &str,
    extra: &[&str],
    line: &[u8],
) -> (std::process::Child, std::process::ChildStdin, String) {
    let mut child = Command::new(openssl)
        .args(["s_client", "-quiet", "-verify_return_error"])
        .args(["-connect", &addr.to_string(), "-CAfile", ca])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn openssl");
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, line).unwrap();
    let mut echoed = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut echoed).unwrap();
    (child, stdin, echoed)
}

fn s_client(openssl: &str, addr: SocketAddr, ca: &str, flags: &[&str]) -> (bool, String) {
    let extra: Vec<&str> = ["-no_ign_eof"]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    let (mut child, stdin, echoed) = s_client_start(openssl, addr, ca, &extra, b"which version\n");
    // -no_ign_eof: the end of input ends the session.
    drop(stdin);
    (child.wait().unwrap().success(), echoed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_are_served_and_tls_1_1_is_refused() {
    let Some(openssl) = openssl() else { return };
    let pki = Pki::new();
    let (mut server, addr) = pki.spawn_server(&[]);
    let ca = pki.arg("ca.pem");
    for version in ["-tls1_2", "-tls1_3"] {
        let (ok, echoed) = s_client(openssl, addr, &ca, &[version]);
        assert!(ok, "{version}");
        assert_eq!(echoed, "which version\n", "{version}");
    }
    // OpenSSL offers TLS 1.1 only at security level 0.
    let (_, echoed) = s_client(
        openssl,
        addr,
        &ca,
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
    );
    assert_eq!(echoed, "", "TLS 1.1 was served");
    let refused = server.wait_for("TLS handshake with 127.0.0.1:");
    assert!(refused.contains("failed"), "{refused}");
}

#[tokio::test]
async fn a_plain_tcp_client_on_a_tls_port_fails_cleanly_and_others_are_served() {
    let pki = Pki::new();
    let (mut server, addr) = pki.spawn_server(&[]);
    let good = tls_connect(addr, &pki.client_args("ca.pem", None))
        .await
        .unwrap();
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"hello in plain text\n").await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut reply))
        .await
        .expect("the server closes the plain connection");
    assert!(
        !reply.windows(5).any(|w| w == b"hello"),
        "plain text was echoed: {reply:?}"
    );
    let line = server.wait_for("TLS handshake with 127.0.0.1:");
    assert!(line.contains("failed"), "{line}");
    assert_eq!(
        tls_round_trip(good, b"still served\n".to_vec())
            .await
            .unwrap(),
        b"still served\n"
    );
}

// The client binary runs blocking while the in-process server serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_server_from_another_ca_and_an_expired_certificate() {
    let pki = Pki::new();
    let server = TestServer::start(pki.server_config()).await;
    let addr = format!("tls:{}", server.addr());
    let (code, stdout, stderr) = run_binary(
        CLIENT,
        &[&addr, "--tls-ca", &pki.arg("other-ca.pem")],
        &[],
        b"hi\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("TLS handshake with"), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // The server keeps serving a client that trusts it.
    let (code, stdout, stderr) = run_binary(
        CLIENT,
        &[&addr, "--tls-ca", &pki.arg("ca.pem")],
        &[],
        b"hi\n",
    );
    assert_eq!((code, stdout), (Some(0), b"hi\n".to_vec()), "{stderr}");
    // The name checked is --tls-server-name when given.
    let ca = pki.arg("ca.pem");
    let named = |name: &str| {
        let args = [addr.as_str(), "--tls-ca", &ca, "--tls-server-name", name];
        run_binary(CLIENT, &args, &[], b"named\n")
    };
    let (code, stdout, stderr) = named("localhost");
    assert_eq!((code, stdout), (Some(0), b"named\n".to_vec()), "{stderr}");
    let (code, _, stderr) = named("other.example");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("not valid for name \"other.example\""),
        "{stderr}"
    );
    server.shutdown().await;

    let expired = TestServer::start(Config {
        tls: echod::config::TlsFiles {
            cert: Some(pki.path("expired.pem")),
            key: Some(pki.path("expired-key.pem")),
            client_ca: None,
        },
        ..pki.server_config()
    })
    .await;
    let (code, _, stderr) = run_binary(
        CLIENT,
        &[
            &format!("tls:localhost:{}", expired.addr().port()),
            "--tls-ca",
            &pki.arg("ca.pem"),
        ],
        &[],
        b"hi\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("certificate expired"), "{stderr}");
    expired.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_accepts_its_clients_and_refuses_others_at_the_handshake() {
    let pki = Pki::new();
    let ca = pki.arg("ca.pem");
    let (mut server, addr) = pki.spawn_server(&[
        "--tls-client-ca",
        &ca,
        "--log-level",
        "debug",
        "--log-format",
        "json",
    ]);
    let target = format!("tls:{addr}");
    // echo-client with the client certificate and key named, if any.
    let client = |identity: Option<(&str, &str)>, input: &[u8]| {
        let mut args = vec![target.clone(), "--tls-ca".into(), ca.clone()];
        if let Some((cert, key)) = identity {
            args.extend(["--tls-cert".into(), pki.arg(cert)]);
            args.extend(["--tls-key".into(), pki.arg(key)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_binary(CLIENT, &args, &[], input)
    };

    let (code, stdout, stderr) = client(
        Some(("client.pem", "client-key.pem")),
        b"with a certificate\n",
    );
    assert_eq!(
        (code, stdout),
        (Some(0), b"with a certificate\n".to_vec()),
        "{stderr}"
    );
    let closed = server.wait_for("closed: client closed");
    assert!(
        closed.contains(r#""client_cert":"CN=client-1, O=echod tests""#),
        "{closed}"
    );

    // No certificate: TLS 1.3 finishes the client's side of the handshake
    // before the server's verdict arrives, so the refusal shows on its
    // first read.
    let (code, stdout, stderr) = client(None, b"none\n");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains("CertificateRequired"), "{stderr}");
    let refused = server.wait_for("peer sent no certificates");
    assert!(refused.contains(r#""peer":"127.0.0.1:"#), "{refused}");

    // A certificate from another CA.
    let (code, stdout, stderr) = client(
        Some(("other-client.pem", "other-client-key.pem")),
        b"intruder\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty());
    let refused = server.wait_for("UnknownIssuer");
    assert!(
        refused.contains("TLS handshake with 127.0.0.1:"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_at_the_handshake_timeout_and_frees_its_slot() {
    let pki = Pki::new();
    let server = TestServer::start(Config {
        max_connections: 1,
        tls_handshake_timeout: Duration::from_millis(300),
        ..pki.server_config()
    })
    .await;
    // Takes the only slot and never says hello.
    let mut stalled = TcpStream::connect(server.addr()).await.unwrap();
    let started = std::time::Instant::now();
    let mut nothing = Vec::new();
    tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut nothing))
        .await
        .expect("closed at the handshake timeout")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    let stream = tls_connect(server.addr(), &pki.client_args("ca.pem", None))
        .await
        .unwrap();
    assert_eq!(
        tls_round_trip(stream, b"my turn\n".to_vec()).await.unwrap(),
        b"my turn\n"
    );
    server.shutdown().await;
}

#[test]
fn unusable_tls_files_are_configuration_errors_at_start_up() {
    let pki = Pki::new();
    std::fs::write(pki.path("garbage.pem"), "not a certificate\n").unwrap();
    let missing = pki.arg("missing.pem");
    let cases: [(Vec<String>, &str); 5] = [
        (vec![], "needs tls_cert and tls_key"),
        (
            vec![
                "--tls-cert".into(),
                missing.clone(),
                "--tls-key".into(),
                pki.arg("server-key.pem"),
            ],
            "missing.pem: cannot read",
        ),
        (
            vec![
                "--tls-cert".into(),
                pki.arg("garbage.pem"),
                "--tls-key".into(),
                pki.arg("server-key.pem"),
            ],
            "garbage.pem: no PEM certificate",
        ),
        (
            vec![
                "--tls-cert".into(),
                pki.arg("server.pem"),
                "--tls-key".into(),
                pki.arg("server.pem"),
            ],
            "no PEM private key",
        ),
        (
            vec![
                "--tls-cert".into(),
                pki.arg("server.pem"),
                "--tls-key".into(),
                pki.arg("client-key.pem"),
            ],
            "the private key does not match the certificate",
        ),
    ];
    for (extra, problem) in cases {
        let mut args = vec!["--listen".to_owned(), "tls:127.0.0.1:0".to_owned()];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = run_binary(SERVER, &args, &[], b"");
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(problem), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    // The handshake timeout must be positive.
    let (code, _, stderr) = run_binary(SERVER, &["--tls-handshake-timeout", "0"], &[], b"");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-handshake-timeout"), "{stderr}");
}

#[test]
fn tls_insecure_says_so_loudly_and_the_client_needs_a_tls_address_for_tls_flags() {
    let pki = Pki::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start(pki.server_config()));
    let (code, stdout, stderr) = run_binary(
        CLIENT,
        &[&format!("tls:{}", server.addr()), "--tls-insecure"],
        &[],
        b"insecure\n",
    );
    assert_eq!(
        (code, stdout),
        (Some(0), b"insecure\n".to_vec()),
        "{stderr}"
    );
    assert!(
        stderr.contains("WARNING") && stderr.contains("NOT verified"),
        "{stderr}"
    );
    let (code, _, stderr) = run_binary(CLIENT, &["127.0.0.1:1", "--tls-insecure"], &[], b"");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("tls:HOST:PORT"), "{stderr}");
    runtime.block_on(server.shutdown());
}

// The client binary runs blocking while the in-process server serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_drives_tls_connections_and_handshakes() {
    let pki = Pki::new();
    let server = TestServer::start(pki.server_config()).await;
    let target = format!("tls:{}", server.addr());
    let ca = pki.arg("ca.pem");
    let dir = tempfile::tempdir().unwrap();
    let hist = dir.path().join("rt").display().to_string();
    for extra in [
        &["--pipeline", "8", "--hist", &hist][..],
        &["--reconnect"][..],
    ] {
        let mut args = vec![
            "bench",
            &target,
            "--tls-ca",
            &ca,
            "--connections",
            "4",
            "--size",
            "100",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = run_binary(CLIENT, &args, &[], b"");
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
        assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["mismatches"], 0, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        if extra.contains(&"--hist") {
            // The TLS handshake has its own histogram, one per connection.
            let phases = &report["histograms"];
            assert_eq!(phases["handshake_us"]["count"], 4, "{phases}");
            assert_eq!(phases["connect_us"]["count"], 4, "{phases}");
            assert!(phases["handshake_us"]["p50"].as_f64().unwrap() > 0.0);
            assert!(std::path::Path::new(&format!("{hist}.handshake")).exists());
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_echoes_every_tls_byte_received_before_it() {
    let pki = Pki::new();
    let mut server = TestServer::start(pki.server_config()).await;
    let stream = tls_connect(server.addr(), &pki.client_args("ca.pem", None))
        .await
        .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream.get_ref().0);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let input: Vec<u8> = (0..5_000)
        .flat_map(|i| format!("before the signal {i}\n").into_bytes())
        .collect();
    writer.write_all(&input).await.unwrap();
    writer.flush().await.unwrap();
    // Read the first echo, so the server is known to be reading.
    let mut first = vec![0u8; 20];
    reader.read_exact(&mut first).await.unwrap();
    // Every record has reached the server's kernel (acknowledged): it was
    // received before the signal, so all of it must come back.
    let deadline = std::time::Instant::now() + PATIENCE;
    while unacknowledged(fd) > 0 {
        assert!(std::time::Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.begin_shutdown();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, reader.read_to_end(&mut rest))
        .await
        .expect("closed after the echoes");
    first.extend_from_slice(&rest);
    assert!(
        first == input,
        "{} of {} bytes echoed",
        first.len(),
        input.len()
    );
    assert_eq!(server.finished().await.cut, 0);
}

#[tokio::test]
async fn a_proxy_header_before_the_handshake_names_the_client() {
    // HAProxy in TCP mode in front of a TLS listener: `send-proxy`, then the
    // client's own TLS bytes, possibly in the same segment.
    let pki = Pki::new();
    let (mut server, addr) = pki.spawn_server(&["--proxy-protocol", "v1", "--log-level", "debug"]);
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.51.100.20 127.0.0.1 40404 443\r\n")
        .await
        .unwrap();
    let args = pki.client_args("ca.pem", None);
    let config = echod::tls::client_config(&args).unwrap();
    let name = echod::tls::server_name(&args, "localhost").unwrap();
    let stream = echod::tls::connect(tcp, config, name).await.unwrap();
    assert_eq!(
        tls_round_trip(stream, b"behind a balancer\n".to_vec())
            .await
            .unwrap(),
        b"behind a balancer\n"
    );
    server.wait_for("connection from 198.51.100.20:40404 closed: client closed");
}

#[tokio::test]
async fn a_socket_activated_listener_named_tls_serves_tls() {
    let pki = Pki::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server-key.pem"));
    let mut server = ServerProcess::spawn_via_shell(
        r#"LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=tls exec "$0" "$@""#,
        &["--tls-cert", &cert, "--tls-key", &key],
        &[("PATH", "/usr/bin:/bin")],
        |command, _| common::pass_as_fd3(command, fd),
    );
    drop(listener);
    assert_eq!(server.listening_tls(), addr);
    let stream = tls_connect(addr, &pki.client_args("ca.pem", None))
        .await
        .unwrap();
    assert_eq!(
        tls_round_trip(stream, b"activated and encrypted\n".to_vec())
            .await
            .unwrap(),
        b"activated and encrypted\n"
    );
}

/// Bytes this socket sent that the peer has not acknowledged (SIOCOUTQ).
fn unacknowledged(fd: std::os::fd::RawFd) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int through the pointer.
    let result = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    assert_eq!(result, 0, "ioctl(SIOCOUTQ) failed");
    queued as usize
}

/// Hostile: a client floods without reading (so the server is held in a
/// write), then sends `close_notify` with more bytes behind it in the same
/// segment, and the server is shut down. The drain must see the stream as
/// closed and finish; before, rustls's `read_tls` returned 0 without
/// consuming the trailing bytes and the drain spun on a core forever, so
/// the connection never closed and the shutdown never ended (this test then
/// hangs: a spinning worker cannot be stopped from the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_close_notify_followed_by_more_records_does_not_spin_the_drain() {
    use std::io::{Read, Write};
    let pki = Pki::new();
    let mut server = TestServer::start(Config {
        shutdown_grace: Duration::from_secs(60),
        ..pki.server_config()
    })
    .await;
    let addr = server.addr();
    let args = pki.client_args("ca.pem", None);
    // Handshake, then flood lines without reading until our writes stall.
    let (mut tcp, tail) = tokio::task::spawn_blocking(move || {
        let (mut tcp, mut tls) = blocking_tls_client(addr, &args);
        tcp.set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let lines = b"a line the server echoes while nobody reads\n".repeat(400);
        'flood: loop {
            tls.writer().write_all(&lines).unwrap();
            while tls.wants_write() {
                if tls.write_tls(&mut tcp).is_err() {
                    break 'flood; // the server stopped reading: backpressure
                }
            }
        }
        // What is still queued, then close_notify, then bytes after it.
        let mut tail = Vec::new();
        tls.send_close_notify();
        while tls.wants_write() {
            tls.write_tls(&mut tail).unwrap();
        }
        // More records than one read_tls call takes (it reads 4 KiB at most).
        for _ in 0..8 {
            tail.extend_from_slice(&[0x17, 0x03, 0x03, 0x04, 0x00]);
            tail.extend_from_slice(&[0xAB; 1024]);
        }
        (tcp, tail)
    })
    .await
    .unwrap();
    // Shut down while the server is stuck writing; the listener closing
    // tells that the drain has begun.
    server.begin_shutdown();
    let deadline = std::time::Instant::now() + PATIENCE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "listener never closed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut writer = tcp.try_clone().unwrap();
    writer.set_write_timeout(None).unwrap();
    let sending = std::thread::spawn(move || writer.write_all(&tail));
    // Read (and discard) every echo; the server must then close.
    let closed = tokio::task::spawn_blocking(move || {
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false, // timed out: the server never closed
            }
        }
    })
    .await
    .unwrap();
    assert!(
        closed,
        "the server never closed the connection after close_notify"
    );
    let _ = sending.join();
    let report = tokio::time::timeout(PATIENCE, server.finished())
        .await
        .expect("the shutdown finished");
    assert_eq!(report.cut, 0);
}

/// A TLS client that closes its TCP connection without `close_notify`
/// (routine for an echo endpoint: health checks, killed clients) is logged
/// at DEBUG like any other routine close, not one INFO line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_close_without_close_notify_is_not_logged_at_info() {
    let pki = Pki::new();
    let (mut server, addr) = pki.spawn_server(&[]);
    for _ in 0..3 {
        let mut stream = tls_connect(addr, &pki.client_args("ca.pem", None))
            .await
            .unwrap();
        stream.write_all(b"ping\n").await.unwrap();
        let mut echo = [0u8; 5];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping\n");
        // Drop the TCP connection under the session: no close_notify.
        drop(stream.into_inner().0);
    }
    // An independent peer killed mid-session: openssl s_client.
    if let Some(openssl) = openssl() {
        let ca = pki.arg("ca.pem");
        let (mut child, _stdin, echoed) = s_client_start(openssl, addr, &ca, &[], b"ping\n");
        assert_eq!(echoed, "ping\n");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
    let noisy: Vec<_> = server
        .stderr
        .iter()
        .filter(|line| line.contains("INFO") && line.contains("connection from"))
        .collect();
    assert!(
        noisy.is_empty(),
        "routine closes logged at INFO: {noisy:#?}"
    );
}

/// Hostile: a slowloris that dribbles the ciphertext of one TLS record.
/// rustls shows the echo loop nothing until the record is whole, so the
/// frame timeout used to start only with decrypted bytes and such a client
/// held its slot until the idle timeout, or forever with it off. Now the
/// frame timeout covers the incomplete record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_dribbled_tls_ciphertext_is_cut_at_the_frame_timeout() {
    use std::io::{Read, Write};
    let pki = Pki::new();
    let server = TestServer::start(Config {
        frame_timeout: Some(Duration::from_millis(300)),
        idle_timeout: None,
        ..pki.server_config()
    })
    .await;
    let addr = server.addr();
    let args = pki.client_args("ca.pem", None);
    let waited = tokio::task::spawn_blocking(move || {
        let (mut tcp, _session) = blocking_tls_client(addr, &args);
        // An application-data record header announcing 64 bytes, then its
        // body one byte every 50 ms (6 s in all if nothing stops it).
        let mut writer = tcp.try_clone().unwrap();
        let started = std::time::Instant::now();
        std::thread::spawn(move || {
            let _ = writer.write_all(&[0x17, 0x03, 0x03, 0x00, 0x40]);
            for _ in 0..120 {
                std::thread::sleep(Duration::from_millis(50));
                if writer.write_all(&[0x42]).is_err() {
                    return;
                }
            }
        });
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = [0u8; 1024];
        loop {
            match tcp.read(&mut sink) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => continue, // a session ticket, say
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Some(started.elapsed())
                }
                Err(_) => return None,
            }
        }
    })
    .await
    .unwrap();
    let waited = waited.expect("the dribbling client was never cut");
    assert!(waited < Duration::from_secs(3), "cut only after {waited:?}");
    server.shutdown().await;
}

/// Certificate rotation without a restart: new files on disk, SIGHUP, and
/// new handshakes use them; a client that trusts only the old CA is now
/// refused, one that trusts the new CA is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_server_certificate_for_new_handshakes() {
    let (old, new) = (Pki::new(), Pki::new());
    let (mut server, addr) = old.spawn_server(&[]);
    assert!(tls_connect(addr, &old.client_args("ca.pem", None))
        .await
        .is_ok());
    for name in ["server.pem", "server-key.pem"] {
        std::fs::copy(new.path(name), old.path(name)).unwrap();
    }
    server.signal(libc::SIGHUP);
    server.wait_for("configuration reloaded");
    let mut stream = tls_connect(addr, &new.client_args("ca.pem", None))
        .await
        .expect("the new certificate is served");
    stream.write_all(b"rotated\n").await.unwrap();
    let mut echo = [0u8; 8];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"rotated\n");
    assert!(
        tls_connect(addr, &old.client_args("ca.pem", None))
            .await
            .is_err(),
        "the old certificate is still served"
    );
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
}

/// 300 clients reconnecting with `--tls-resume`, one message a connection:
/// after its first handshake each client resumes every time (no client
/// makes a second full handshake). The server
/// remembers tickets for as many clients as it may serve at once (rustls's
/// own default of 256 tickets is 128 clients: past that most handshakes
/// were full again), and each bench client resumes from its own session
/// store (shared, their 8 tickets ran out past about 50 clients).
#[test]
fn three_hundred_resuming_clients_each_make_one_full_handshake() {
    let pki = Pki::new();
    let (mut server, addr) = pki.spawn_server(&["--log-level", "debug"]);
    let ca = pki.arg("ca.pem");
    let target = format!("tls:{addr}");
    let args = [
        "bench",
        &target,
        "--tls-ca",
        &ca,
        "--reconnect",
        "--tls-resume",
        "--connections",
        "300",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--json",
    ];
    let (code, stdout, stderr) = run_binary(CLIENT, &args, &[], b"");
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
    let count = |kind: &str| {
        let needle = format!("kind=Some({kind})");
        server
            .stderr
            .iter()
            .filter(|line| line.contains(&needle))
            .count()
    };
    let (full, resumed) = (count("Full"), count("Resumed"));
    assert!(full + resumed > 0, "no handshake logged");
    assert!(
        full <= 300,
        "{full} full handshakes for 300 clients ({resumed} resumed)"
    );
    // Each client's ticket is evicted from a 256-entry store before it
    // comes back (300 clients issue 600 tickets a round), so every return
    // would be a full handshake: a few dozen returns show it, however
    // slow the machine (on a loaded CI box 2 s gave 261).
    assert!(
        resumed >= 50,
        "only {resumed} resumed for 300 clients ({full} full): too few returns to judge"
    );
}
