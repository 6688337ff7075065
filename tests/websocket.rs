//! `ws:` and `wss:` listeners: WebSocket echo tested against Python's
//! `websockets` (a client echod did not write), raw frames for the
//! protocol violations, and HTTP request echo against `curl`.

mod common;

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use common::{config, TestServer, PATIENCE};
use echod::{config::Endpoint, Config};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A Python with `websockets` (Debian's `python3-websockets` is for
/// /usr/bin/python3; `.ci/run` installs it). Skips loudly elsewhere, never
/// under CI.
fn python() -> Option<String> {
    common::python_with(
        "websockets",
        &["/usr/bin/python3", "python3"],
        "apt-get install python3-websockets",
    )
}

fn curl() -> Option<&'static str> {
    common::peer("curl", &["--version"], "curl").then_some("curl")
}

/// Runs a Python asyncio client; `URI` is defined for it. Returns stdout.
async fn run_python(python: &str, uri: String, body: &str) -> String {
    let script = format!(
        "import asyncio, ssl, sys, websockets\nURI = {uri:?}\n{body}\nasyncio.run(main())\n"
    );
    let python = python.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", &script])
            .output()
            .expect("run python")
    });
    let output = tokio::time::timeout(PATIENCE * 2, output)
        .await
        .expect("python finished in time")
        .unwrap();
    assert!(
        output.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn ws_config(max_frame_length: usize) -> Config {
    Config {
        listen: vec![Endpoint::Ws("127.0.0.1:0".parse().unwrap())],
        max_frame_length,
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_binary_fragments_ping_and_close_codes_echo_exactly() {
    let Some(python) = python() else { return };
    let server = TestServer::start(ws_config(2 << 20)).await;
    let script = r#"
async def main():
    async with websockets.connect(URI, max_size=None) as ws:
        for message in ["hello", "", "héllo wörld", b"", b"\x00\xff" * 5, bytes(range(256)) * 4096]:
            await ws.send(message)
            echoed = await ws.recv()
            assert echoed == message and type(echoed) is type(message), (message[:20], echoed[:20])
        await ws.send(["frag", "mented ", "text"])
        assert await ws.recv() == "fragmented text"
        await ws.send([b"\x01", b"\x02\x03"])
        assert await ws.recv() == b"\x01\x02\x03"
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 10)
        await ws.close(code=4000, reason="bye")
        print(ws.close_code)
"#;
    let out = run_python(&python, format!("ws://{}/any/path", server.addr()), script).await;
    assert_eq!(out.trim(), "4000", "the close code came back");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_frame_limit_gets_1009() {
    let Some(python) = python() else { return };
    let server = TestServer::start(ws_config(1024)).await;
    let script = r#"
async def main():
    async with websockets.connect(URI, max_size=None) as ws:
        await ws.send("x" * 1024)
        assert await ws.recv() == "x" * 1024
        await ws.send("x" * 1025)
        try:
            await ws.recv()
        except websockets.ConnectionClosed as closed:
            print(closed.rcvd.code)
"#;
    let out = run_python(&python, format!("ws://{}/", server.addr()), script).await;
    assert_eq!(out.trim(), "1009");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_are_all_echoed() {
    let Some(python) = python() else { return };
    let server = TestServer::start(ws_config(65536)).await;
    let script = r#"
async def client(i):
    async with websockets.connect(URI) as ws:
        for j in range(10):
            message = f"client {i} message {j}"
            await ws.send(message)
            assert await ws.recv() == message
    return 1
async def main():
    done = await asyncio.gather(*(client(i) for i in range(200)))
    print(sum(done))
"#;
    let out = run_python(&python, format!("ws://{}/", server.addr()), script).await;
    assert_eq!(out.trim(), "200");
    server.shutdown().await;
}

/// Graceful shutdown: pending echoes, then close code 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_each_websocket_with_1001() {
    let Some(python) = python() else { return };
    let mut server = TestServer::start(ws_config(65536)).await;
    let script = r#"
async def main():
    async with websockets.connect(URI) as ws:
        await ws.send("before")
        assert await ws.recv() == "before"
        print("ready", flush=True)
        try:
            await asyncio.wait_for(ws.recv(), 20)
        except websockets.ConnectionClosed as closed:
            print(closed.rcvd.code, flush=True)
"#;
    let script = format!(
        "import asyncio, websockets\nURI = {:?}\n{script}\nasyncio.run(main())\n",
        format!("ws://{}/", server.addr())
    );
    let mut child = Command::new(python)
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let ready = lines.next().unwrap().unwrap();
        (ready, lines)
    })
    .await
    .unwrap();
    assert_eq!(lines.0, "ready");
    server.begin_shutdown();
    let code = tokio::task::spawn_blocking(move || lines.1.next().unwrap().unwrap())
        .await
        .unwrap();
    assert_eq!(code, "1001");
    assert!(child.wait().unwrap().success());
    assert_eq!(server.finished().await.cut, 0);
}

/// A WebSocket client that sends and never reads: its echoes fill the
/// socket, the server's write waits, and at the grace deadline the
/// connection is cut (and counted), not left holding the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_never_reads_is_cut_at_the_grace_deadline() {
    let mut server = TestServer::start(Config {
        shutdown_grace: Duration::from_millis(300),
        ..ws_config(65536)
    })
    .await;
    let mut stuck = raw_websocket(server.addr(), b"").await;
    let message = client_frame(true, 2, &[b'z'; 4096]);
    let mut sent = 0usize;
    // Until the server stops reading: it is blocked writing echoes.
    while tokio::time::timeout(Duration::from_millis(300), stuck.write_all(&message))
        .await
        .is_ok()
    {
        sent += message.len();
        assert!(sent < 512 << 20, "the server never pushed back");
    }
    server.begin_shutdown();
    let report = server.finished().await;
    assert_eq!(report.cut, 1);
}

/// The opening handshake by hand, then raw frames: what a hostile or
/// broken client can send that a library client would refuse to.
async fn raw_websocket(addr: SocketAddr, prefix: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(prefix).await.unwrap();
    stream
        .write_all(
            b"GET /raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455's own example key and its accept value.
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    stream
}

/// One client frame (masked with a zero key unless `masked` is false).
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![
        0x80 | opcode,
        (payload.len() as u8) | if masked { 0x80 } else { 0 },
    ];
    if masked {
        frame.extend_from_slice(&[0, 0, 0, 0]);
    }
    frame.extend_from_slice(payload);
    frame
}

/// Reads server frames until a close frame; returns its code.
async fn close_code(stream: &mut TcpStream) -> u16 {
    loop {
        let mut head = [0u8; 2];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut head))
            .await
            .expect("a frame in time")
            .unwrap();
        let mut payload = vec![0u8; (head[1] & 0x7f) as usize];
        stream.read_exact(&mut payload).await.unwrap();
        if head[0] & 0x0f == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[tokio::test]
async fn invalid_utf8_gets_1007_and_protocol_violations_get_1002() {
    let server = TestServer::start(ws_config(65536)).await;
    let mut stream = raw_websocket(server.addr(), b"").await;
    stream
        .write_all(&frame(0x1, b"ok \xff\xfe", true))
        .await
        .unwrap();
    assert_eq!(close_code(&mut stream).await, 1007);
    // A client frame must be masked (RFC 6455 5.1).
    let mut stream = raw_websocket(server.addr(), b"").await;
    stream
        .write_all(&frame(0x2, b"unmasked", false))
        .await
        .unwrap();
    assert_eq!(close_code(&mut stream).await, 1002);
    // A reserved opcode.
    let mut stream = raw_websocket(server.addr(), b"").await;
    stream.write_all(&frame(0x3, b"", true)).await.unwrap();
    assert_eq!(close_code(&mut stream).await, 1002);
    server.shutdown().await;
}

#[tokio::test]
async fn a_proxy_v2_header_before_the_upgrade_is_read_and_the_echo_served() {
    let server = TestServer::start(Config {
        proxy_protocol: echod::config::ProxyProtocol::V2,
        ..ws_config(65536)
    })
    .await;
    let header = echod::server::proxy::v2_header(
        "198.51.100.7:4242".parse().unwrap(),
        "127.0.0.1:80".parse().unwrap(),
    );
    let mut stream = raw_websocket(server.addr(), &header).await;
    stream
        .write_all(&frame(0x1, b"through the balancer", true))
        .await
        .unwrap();
    let mut echoed = vec![0u8; 2 + 20];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed[..2], &[0x81, 20]);
    assert_eq!(&echoed[2..], b"through the balancer");
    server.shutdown().await;
}

fn run_curl(curl: &str, args: &[&str]) -> (String, String) {
    let output = Command::new(curl)
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_echoed_as_json_by_curl() {
    let Some(curl) = curl() else { return };
    let server = TestServer::start(ws_config(1024)).await;
    let base = format!("http://{}", server.addr());
    let (curl, base) = (curl.to_owned(), base.clone());
    let url = format!("{base}/some/path?x=1&y=two");
    tokio::task::spawn_blocking(move || {
        let (out, _) = run_curl(&curl, &["-H", "X-Test: one", "-H", "X-Test: two", &url]);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["method"], "GET");
        assert_eq!(json["path"], "/some/path");
        assert_eq!(json["query"], "x=1&y=two");
        assert_eq!(json["headers"]["x-test"], "one, two");
        assert_eq!(json["body_bytes"], 0);
        assert!(json["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(json["listener"]
            .as_str()
            .unwrap()
            .starts_with("ws:127.0.0.1:"));
        assert!(json["tls"].is_null());

        let (out, _) = run_curl(&curl, &["--data-binary", "héllo", &format!("{base}/post")]);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["method"], "POST");
        assert_eq!(json["body"], "héllo");
        assert_eq!(json["body_bytes"], 6);

        let binary = std::env::temp_dir().join(format!("echod-binary-{}", std::process::id()));
        std::fs::write(&binary, [0xffu8, 0x00, 0xfe]).unwrap();
        let at = format!("@{}", binary.display());
        let (out, _) = run_curl(&curl, &["--data-binary", &at, &format!("{base}/bin")]);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["body_base64"], "/wD+");
        assert!(json.get("body").is_none());
        std::fs::remove_file(&binary).unwrap();

        let big = "x".repeat(1025);
        let (out, _) = run_curl(
            &curl,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--data-binary",
                &big,
                &format!("{base}/big"),
            ],
        );
        assert_eq!(out, "413");

        let (out, err) = run_curl(&curl, &["-v", &format!("{base}/a"), &format!("{base}/b")]);
        assert_eq!(out.matches("\"method\":\"GET\"").count(), 2, "{out}");
        assert!(
            err.contains("Re-using existing connection") || err.contains("Reusing existing"),
            "no keep-alive:\n{err}"
        );

        let (out, _) = run_curl(&curl, &["--http1.0", &format!("{base}/old")]);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["path"], "/old");
    })
    .await
    .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frame_limit_and_idle_timeout_apply_to_websockets() {
    let Some(python) = python() else { return };
    let server = TestServer::start(Config {
        idle_timeout: Some(Duration::from_millis(300)),
        ..ws_config(65536)
    })
    .await;
    let script = r#"
async def main():
    async with websockets.connect(URI) as ws:
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as closed:
            print(closed.rcvd.code)
"#;
    let out = run_python(&python, format!("ws://{}/", server.addr()), script).await;
    assert_eq!(
        out.trim(),
        "1001",
        "an idle WebSocket is closed as going away"
    );
    server.shutdown().await;
}

/// `wss:` with a generated certificate: WebSocket echo through Python's
/// TLS, and the HTTP echo's `tls` object through curl's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_serves_websockets_and_describes_the_tls_session() {
    let pki = common::pki::Pki::new();
    let server = TestServer::start(Config {
        listen: vec![Endpoint::Wss("127.0.0.1:0".parse().unwrap())],
        ..pki.server_config()
    })
    .await;
    let port = server.addr().port();
    let ca = pki.arg("ca.pem");
    if let Some(python) = python() {
        let script = format!(
            r#"
async def main():
    context = ssl.create_default_context(cafile={ca:?})
    async with websockets.connect(URI, ssl=context) as ws:
        await ws.send("secret")
        print(await ws.recv())
"#
        );
        let out = run_python(&python, format!("wss://localhost:{port}/"), &script).await;
        assert_eq!(out.trim(), "secret");
    }
    if let Some(curl) = curl() {
        let (curl, url) = (curl.to_owned(), format!("https://localhost:{port}/tls"));
        let out = tokio::task::spawn_blocking(move || {
            run_curl(
                &curl,
                &[
                    "--cacert",
                    &ca,
                    "--resolve",
                    &format!("localhost:{port}:127.0.0.1"),
                    &url,
                ],
            )
            .0
        })
        .await
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(json["listener"].as_str().unwrap().starts_with("wss:"));
        assert!(
            json["tls"]["version"]
                .as_str()
                .unwrap()
                .starts_with("TLSv1."),
            "{json}"
        );
        assert_eq!(json["tls"]["sni"], "localhost");
    }
    server.shutdown().await;
}

const CLIENT: &str = env!("CARGO_BIN_EXE_echo-client");

/// `echo-client ws://…`: each line (without its ending) is one text
/// message, each echo is printed with `\n`; end of input closes with 1000
/// and waits for every echo. `--binary` sends binary messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_websocket_text_and_binary() {
    let server = TestServer::start(ws_config(65536)).await;
    let url = format!("ws://{}/some/path", server.addr());
    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || common::run_binary(CLIENT, &[&url], &[], b"one\ntwo\r\nthree")
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, b"one\ntwo\nthree\n");
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        common::run_binary(CLIENT, &[&url, "--binary"], &[], b"\xff\x00bytes\n")
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, b"\xff\x00bytes\n");
    server.shutdown().await;
}

/// `echo-client bench ws://…`: binary messages, every echo verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_drives_websockets_and_verifies_every_echo() {
    let server = TestServer::start(ws_config(65536)).await;
    let url = format!("ws://{}/", server.addr());
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        common::run_binary(
            CLIENT,
            &[
                "bench",
                &url,
                "--connections",
                "8",
                "--size",
                "512",
                "--pipeline",
                "4",
                "--duration",
                "0.5",
                "--warmup",
                "0",
                "--json",
            ],
            &[],
            b"",
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(report["framing"], "websocket");
    assert!(report["messages"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["mismatches"], 0);
    assert_eq!(report["errors"], 0);
    server.shutdown().await;
}

/// GET /metrics on the admin endpoint (the whole body).
async fn scrape(admin: SocketAddr) -> String {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// Metrics for the new surface: connections and messages by listener
/// kind, WebSocket close codes, HTTP responses by status.
#[tokio::test]
async fn metrics_count_websocket_messages_close_codes_and_http_statuses() {
    let server = TestServer::start(Config {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        ..ws_config(64)
    })
    .await;
    let mut stream = raw_websocket(server.addr(), b"").await;
    for _ in 0..3 {
        stream
            .write_all(&frame(0x1, b"count me", true))
            .await
            .unwrap();
        let mut echoed = [0u8; 10];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed[2..], b"count me");
    }
    stream
        .write_all(&frame(0x8, &1000u16.to_be_bytes(), true))
        .await
        .unwrap();
    assert_eq!(close_code(&mut stream).await, 1000);
    let mut http = TcpStream::connect(server.addr()).await.unwrap();
    http.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let mut big = TcpStream::connect(server.addr()).await.unwrap();
    let body = "x".repeat(100);
    let request = format!(
        "POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n{body}"
    );
    big.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    big.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    let expected = [
        "echod_listener_connections_total{listener=\"ws\"} 3",
        "echod_listener_messages_total{listener=\"ws\"} 3",
        "echod_websocket_closes_total{code=\"1000\"} 1",
        "echod_http_responses_total{status=\"101\"} 1",
        "echod_http_responses_total{status=\"200\"} 1",
        "echod_http_responses_total{status=\"413\"} 1",
    ];
    let admin = server.metrics_addr.unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let body = scrape(admin).await;
        if expected.iter().all(|line| body.contains(line)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never showed {expected:#?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.shutdown().await;
}

/// Under Kubernetes the Downward API's pod identity appears in the HTTP
/// echo (`hostname` is the pod's name, and an `instance` object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_identity_from_the_downward_api_is_in_the_http_echo() {
    let mut server = common::ServerProcess::spawn(
        &["--listen", "ws:127.0.0.1:0"],
        &[
            ("POD_NAME", "echod-7d9f-abcde"),
            ("POD_NAMESPACE", "tests"),
            ("NODE_NAME", "node-1"),
        ],
    );
    let line = server.wait_for("listening on ws:");
    let addr: SocketAddr = line
        .split("listening on ws:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["hostname"], "echod-7d9f-abcde");
    assert_eq!(json["instance"]["pod"], "echod-7d9f-abcde");
    assert_eq!(json["instance"]["namespace"], "tests");
    assert_eq!(json["instance"]["node"], "node-1");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
}

/// A client frame of any length, masked with a zero key.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
    out
}

/// The next server frame: its first byte (FIN and opcode) and payload.
async fn server_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut head))
        .await
        .expect("a frame in time")
        .unwrap();
    let len = match head[1] & 0x7f {
        126 => {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.unwrap();
            usize::from(u16::from_be_bytes(len))
        }
        short => usize::from(short),
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    (head[0], payload)
}

/// Between messages the server parks a WebSocket (drops tungstenite and
/// its buffers, waits on the bare socket): nothing may be lost across it.
/// Mid-message it must not park: a fragment, then a ping answered, then
/// the last fragment make one message; a frame dribbled in pieces and two
/// frames in one write all come back whole.
#[tokio::test]
async fn parking_between_messages_loses_no_input() {
    let server = TestServer::start(ws_config(65536)).await;
    let mut stream = raw_websocket(server.addr(), b"").await;
    stream
        .write_all(&client_frame(true, 0x2, b"one"))
        .await
        .unwrap();
    assert_eq!(server_frame(&mut stream).await, (0x82, b"one".to_vec()));
    // Parked now. A fragment, then a ping between the fragments.
    stream
        .write_all(&client_frame(false, 0x1, b"hel"))
        .await
        .unwrap();
    stream
        .write_all(&client_frame(true, 0x9, b"p"))
        .await
        .unwrap();
    assert_eq!(server_frame(&mut stream).await, (0x8A, b"p".to_vec()));
    stream
        .write_all(&client_frame(true, 0x0, b"lo"))
        .await
        .unwrap();
    assert_eq!(server_frame(&mut stream).await, (0x81, b"hello".to_vec()));
    // A 300-byte frame (16-bit length) in 7-byte pieces.
    let payload: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
    for piece in client_frame(true, 0x2, &payload).chunks(7) {
        stream.write_all(piece).await.unwrap();
        stream.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(server_frame(&mut stream).await, (0x82, payload));
    // Two frames in one write, after a park.
    let two = [
        client_frame(true, 0x1, b"a"),
        client_frame(true, 0x2, b"bc"),
    ]
    .concat();
    stream.write_all(&two).await.unwrap();
    assert_eq!(server_frame(&mut stream).await, (0x81, b"a".to_vec()));
    assert_eq!(server_frame(&mut stream).await, (0x82, b"bc".to_vec()));
}

/// An idle WebSocket holds no buffer: 1,000 of them, each after one echo,
/// cost under 4 KiB of server RSS each (tungstenite's buffers and hyper's
/// read buffer alone were over 8 KiB; 2.7 KiB measured here).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websockets_hold_no_buffers() {
    const CONNECTIONS: usize = 1000;
    let mut server =
        common::ServerProcess::spawn(&["--listen", "ws:127.0.0.1:0", "--log-level", "info"], &[]);
    let line = server.wait_for("listening on ws:");
    let addr: SocketAddr = line
        .split("listening on ws:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"));
    let echo_one = |mut stream: TcpStream| async move {
        stream
            .write_all(&client_frame(true, 0x2, b"warm"))
            .await
            .unwrap();
        assert_eq!(server_frame(&mut stream).await, (0x82, b"warm".to_vec()));
        stream
    };
    // Warm the allocator.
    let warm = echo_one(raw_websocket(addr, b"").await).await;
    let baseline = server.rss_kib();
    let mut idle = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        idle.push(echo_one(raw_websocket(addr, b"").await).await);
    }
    let per_connection = (server.rss_kib().saturating_sub(baseline) * 1024) as usize / CONNECTIONS;
    assert!(
        per_connection < 4 * 1024,
        "{per_connection} bytes of RSS per idle WebSocket"
    );
    // And they are all alive and served.
    for stream in idle.iter_mut().step_by(100) {
        stream
            .write_all(&client_frame(true, 0x1, b"still"))
            .await
            .unwrap();
        assert_eq!(server_frame(stream).await, (0x81, b"still".to_vec()));
    }
    drop(warm);
}
