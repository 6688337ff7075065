//! Interop with a real, independent peer: OpenBSD netcat, as in the README.

mod common;

use std::process::Command;

use common::*;

/// `nc`, if installed. `.ci/run` installs it; a developer machine without
/// it skips loudly, but CI (`CI=true`) must not skip.
fn netcat() -> Option<&'static str> {
    let found = Command::new("nc").arg("-h").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "nc is missing on CI: .ci/run should install netcat-openbsd"
        );
        eprintln!("SKIPPED: nc not installed (apt-get install netcat-openbsd)");
    }
    found.then_some("nc")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netcat_gets_its_line_back_as_in_the_readme() {
    let Some(nc) = netcat() else { return };
    let server = TestServer::start(config()).await;
    let addr = server.addr();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_binary(
            nc,
            &["-N", &addr.ip().to_string(), &addr.port().to_string()],
            &[],
            b"hello\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, b"hello\n");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netcat_gets_its_datagram_and_its_unix_line_back() {
    let Some(nc) = netcat() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.sock");
    let server = TestServer::start(echod::Config {
        listen: vec![echod::config::Endpoint::Unix(path.clone())],
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        ..config()
    })
    .await;
    let udp = server.udp_addrs[0];
    let path_text = path.display().to_string();
    let (datagram, unix) = tokio::task::spawn_blocking(move || {
        let datagram = run_binary(
            nc,
            &["-u", "-w1", &udp.ip().to_string(), &udp.port().to_string()],
            &[],
            b"over udp\n",
        );
        let unix = run_binary(nc, &["-N", "-U", &path_text], &[], b"over unix\n");
        (datagram, unix)
    })
    .await
    .unwrap();
    assert_eq!(datagram.1, b"over udp\n", "{}", datagram.2);
    assert_eq!(unix.1, b"over unix\n", "{}", unix.2);
    server.shutdown().await;
}

/// The load generator assumes nothing of echod: against socat's echo
/// (`PIPE`, one process per connection), raw framing, every byte verified,
/// closed and open loop.
#[test]
fn bench_drives_socat_as_an_echo_server() {
    if !peer("socat", &["-V"], "socat") {
        return;
    }
    // Port 0: socat picks one and, with -d -d, logs it.
    let mut socat = Command::new("socat")
        .args(["-d", "-d", "TCP-LISTEN:0,bind=127.0.0.1,fork", "PIPE"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn socat");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(socat.stderr.take().unwrap()));
    let addr: std::net::SocketAddr = loop {
        let line = lines.next().expect("socat logs where it listens").unwrap();
        if let Some(at) = line.find("listening on AF=2 ") {
            break line[at + "listening on AF=2 ".len()..]
                .trim()
                .parse()
                .unwrap();
        }
    };
    // Keep reading socat's log, so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    for extra in [&[][..], &["--rate", "400"]] {
        let mut args = vec![
            "bench",
            &addr.to_string() as &str,
            "--framing",
            "raw",
            "--connections",
            "4",
            "--size",
            "1000",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--json",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = run_binary(env!("CARGO_BIN_EXE_echo-client"), &args, &[], b"");
        assert_eq!(code, Some(0), "{extra:?}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
        assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["mismatches"], 0, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
    }
    let _ = socat.kill();
    let _ = socat.wait();
}
