//! The `echo-server` command line as users meet it: exit codes, messages,
//! configuration layers and log output. Every test runs the real binary.

mod common;

use common::*;
use tokio::{io::AsyncWriteExt, net::TcpStream};

const SERVER: &str = env!("CARGO_BIN_EXE_echo-server");

/// Runs the server expecting it to fail at start-up.
fn start_fails(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (code, stdout, stderr) = run_binary(SERVER, args, env, b"");
    assert!(stdout.is_empty(), "stdout must stay clean: {stdout:?}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "panic: {stderr}"
    );
    (code, stderr)
}

fn assert_usage_error(args: &[&str], env: &[(&str, &str)], names: &str) {
    let (code, stderr) = start_fails(args, env);
    assert_eq!(code, Some(2), "args {args:?} env {env:?}: stderr {stderr}");
    assert!(stderr.contains(names), "{stderr:?} does not name {names:?}");
}

#[test]
fn bad_flags_are_usage_errors_naming_the_flag() {
    assert_usage_error(&["--max-connections", "0"], &[], "--max-connections");
    assert_usage_error(&["--max-frame-length", "lots"], &[], "--max-frame-length");
    assert_usage_error(&["--framing", "xml"], &[], "--framing");
    assert_usage_error(&["--idle-timeout", "-3"], &[], "--idle-timeout");
    assert_usage_error(&["--log-level", "echod=shouty"], &[], "--log-level");
    assert_usage_error(&["--no-such-flag"], &[], "--no-such-flag");
}

#[test]
fn unparseable_listen_address_is_a_usage_error() {
    assert_usage_error(
        &["--listen", "localhost"],
        &[],
        "--listen: bad address \"localhost\"",
    );
    assert_usage_error(&["--listen", "::1:80"], &[], "needs brackets");
}

#[test]
fn bad_environment_values_are_usage_errors_naming_the_variable() {
    assert_usage_error(&[], &[("ECHOD_FRAMING", "json")], "ECHOD_FRAMING");
    assert_usage_error(
        &[],
        &[("ECHOD_MAX_CONNECTIONS", "many")],
        "ECHOD_MAX_CONNECTIONS",
    );
}

#[tokio::test]
async fn unknown_echod_variables_are_named_in_a_warning_and_the_server_runs() {
    let mut server = ServerProcess::spawn(
        &["--listen", "127.0.0.1:0"],
        &[("ECHOD_LISTEN_ADDR", "127.0.0.1:1")],
    );
    let addr = server.listening(1)[0];
    let warning = server.wait_for("ignoring ECHOD_LISTEN_ADDR");
    assert!(
        warning.contains("WARN") && warning.contains("ECHOD_LISTEN"),
        "{warning}"
    );
    assert_eq!(round_trip(addr, b"ok\n").await, b"ok\n");
}

#[test]
fn bad_config_files_are_usage_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("colour = \"blue\"\n", "colour: unknown key"),
        (
            "max_connections = \"10\"\n",
            "max_connections: expected an integer, found string",
        ),
        (
            "idle_timeout = true\n",
            "idle_timeout: expected a number of seconds, found boolean",
        ),
        ("listen = [1]\n", "listen: expected an array of strings"),
        ("framing = lines\n", "line 1"),
    ];
    for (text, names) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        assert_usage_error(&["--config", path.to_str().unwrap()], &[], names);
    }
}

#[test]
fn missing_config_file_is_a_usage_error() {
    assert_usage_error(
        &["--config", "/nonexistent/echod.toml"],
        &[],
        "/nonexistent/echod.toml",
    );
}

#[test]
fn help_exits_zero() {
    let (code, stdout, _) = run_binary(SERVER, &["--help"], &[], b"");
    assert_eq!(code, Some(0));
    let help = String::from_utf8(stdout).unwrap();
    for flag in [
        "--listen",
        "--framing",
        "--max-frame-length",
        "--max-connections",
        "--idle-timeout",
        "--shutdown-grace",
        "--log-format",
        "--log-level",
        "--config",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn address_in_use_exits_one_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = start_fails(&["--listen", &addr], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("address already in use"),
        "{stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line expected: {stderr}"
    );
}

#[test]
fn unresolvable_host_exits_one_naming_it() {
    let (code, stderr) = start_fails(&["--listen", "no-such-host.invalid:0"], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot resolve no-such-host.invalid:0"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serves_on_every_listen_flag_and_logs_each_real_port() {
    let mut server = ServerProcess::spawn(&["--listen", "127.0.0.1:0", "--listen", "[::1]:0"], &[]);
    let addrs = server.listening(2);
    assert!(addrs.iter().all(|addr| addr.port() != 0));
    for addr in addrs {
        assert_eq!(round_trip(addr, b"ping\n").await, b"ping\n");
    }
}

#[tokio::test]
async fn flags_beat_environment_which_beats_the_config_file() {
    let file_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let file_addr = file_port.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echod.toml");
    std::fs::write(
        &path,
        format!("listen = [\"{file_addr}\"]\nframing = \"raw\"\n"),
    )
    .unwrap();
    let config = path.to_str().unwrap();

    // The environment's listen replaces the file's (which is taken: using it would fail).
    let mut server =
        ServerProcess::spawn(&["--config", config], &[("ECHOD_LISTEN", "127.0.0.1:0")]);
    let addr = server.listening(1)[0];
    // framing comes from the file: raw echoes a partial line at once.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert_eq!(echo_once(&mut stream, b"raw").await, b"raw");
    drop(server);

    // The flag beats both.
    let mut server = ServerProcess::spawn(
        &[
            "--config",
            config,
            "--listen",
            "[::1]:0",
            "--framing",
            "lines",
        ],
        &[("ECHOD_LISTEN", "127.0.0.1:0")],
    );
    let addr = server.listening(1)[0];
    assert!(addr.is_ipv6());
    assert_eq!(round_trip(addr, b"a\nb").await, b"a\nb");
}

#[tokio::test]
async fn config_toml_in_the_working_directory_is_read() {
    let mut server = ServerProcess::spawn_with(&[], &[], |_, dir| {
        std::fs::write(
            dir.join("config.toml"),
            "listen = [\"127.0.0.1:0\"]\nframing = \"length\"\n",
        )
        .unwrap();
    });
    let addr = server.listening(1)[0];
    let frame = length_frame(b"from config.toml");
    assert_eq!(round_trip(addr, &frame).await, frame);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_address() {
    let mut server =
        ServerProcess::spawn(&["--listen", "127.0.0.1:0", "--log-format", "json"], &[]);
    let addr = server.listening(1)[0];
    let line = server.wait_for("listening on");
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains(&format!("\"address\":\"{addr}\"")), "{line}");
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
    assert!(server
        .stderr
        .iter()
        .all(|line| line.starts_with('{') && line.ends_with('}')));
}

#[tokio::test]
async fn oversized_frame_is_logged_with_the_peer_address() {
    let mut server = ServerProcess::spawn(
        &["--listen", "127.0.0.1:0", "--max-frame-length", "1024"],
        &[],
    );
    let addr = server.listening(1)[0];
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let peer = stream.local_addr().unwrap();
    let _ = stream.write_all(&[b'x'; 4096]).await;
    let line = server.wait_for(&format!("connection from {peer} closed: frame too long"));
    assert!(line.contains("INFO"), "{line}");
}

#[tokio::test]
async fn log_level_flag_and_rust_log_filter_events() {
    // At the default level, routine connection events are not logged.
    let mut quiet = ServerProcess::spawn(&["--listen", "127.0.0.1:0"], &[]);
    let addr = quiet.listening(1)[0];
    round_trip(addr, b"x\n").await;
    quiet.signal(libc::SIGTERM);
    quiet.wait();
    assert!(!quiet
        .stderr
        .iter()
        .any(|line| line.contains("connection opened")));

    let mut by_flag =
        ServerProcess::spawn(&["--listen", "127.0.0.1:0", "--log-level", "debug"], &[]);
    let addr = by_flag.listening(1)[0];
    round_trip(addr, b"x\n").await;
    by_flag.wait_for("connection opened");
    by_flag.wait_for("closed: client closed");

    let mut by_env =
        ServerProcess::spawn(&["--listen", "127.0.0.1:0"], &[("RUST_LOG", "echod=debug")]);
    let addr = by_env.listening(1)[0];
    round_trip(addr, b"x\n").await;
    by_env.wait_for("connection opened");
}

/// Hostile values at the edges of every duration: a timeout so large that
/// `Instant + Duration` overflows in every connection task (before: each
/// client was reset after one line), and one so small that it truncated
/// to zero and silently meant "never". Both are refused at start-up.
#[test]
fn durations_outside_a_millisecond_to_a_year_are_usage_errors() {
    for key in [
        "idle-timeout",
        "frame-timeout",
        "shutdown-grace",
        "tls-handshake-timeout",
    ] {
        for value in ["1e19", "1e-10", "31536001"] {
            let flag = format!("--{key}");
            assert_usage_error(&["--listen", "127.0.0.1:0", &flag, value], &[], &flag);
        }
    }
    let (_, stderr) = start_fails(&["--idle-timeout", "1e19"], &[]);
    assert!(stderr.contains("one year"), "{stderr}");
    assert_usage_error(
        &[],
        &[("ECHOD_FRAME_TIMEOUT", "1e-10")],
        "ECHOD_FRAME_TIMEOUT",
    );
}
