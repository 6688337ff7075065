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
