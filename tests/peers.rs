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
