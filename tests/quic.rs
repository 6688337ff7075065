//! QUIC echo against an independent stack: aioquic (Python; `.ci/run`
//! installs it into target/ci-venv), driven by tests/quic_peer.py, and
//! the bundled client.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
};

use common::{pki::Pki, ServerProcess};
use serde_json::Value;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/quic_peer.py");

/// The venv's Python when it has aioquic; skips loudly elsewhere, never
/// under CI.
fn aioquic() -> Option<String> {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/ci-venv/bin/python");
    let chosen = std::env::var("ECHOD_AIOQUIC_PYTHON").unwrap_or_else(|_| venv.to_owned());
    common::python_with(
        "aioquic",
        &[&chosen],
        "python3 -m venv target/ci-venv && target/ci-venv/bin/pip install aioquic",
    )
}

/// The server with a `quic:` listener on port 0 and `extra` flags.
fn quic_server(pki: &Pki, extra: &[&str]) -> (ServerProcess, SocketAddr) {
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server-key.pem"));
    let mut args = vec![
        "--listen",
        "quic:127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--log-level",
        "debug",
    ];
    args.extend_from_slice(extra);
    let mut server = ServerProcess::spawn(&args, &[]);
    let addr = quic_addr(&mut server);
    (server, addr)
}

/// The address of the `listening on quic:` line.
fn quic_addr(server: &mut ServerProcess) -> SocketAddr {
    let line = server.wait_for("listening on quic:");
    line.split("listening on quic:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}

fn peer_command(python: &str, pki: &Pki, addr: SocketAddr, scenario: &str) -> Command {
    let mut command = Command::new(python);
    command
        .arg(PEER)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(pki.arg("ca.pem"))
        .arg(scenario);
    command
}

/// Runs one scenario of the aioquic peer to its end; its JSON result.
fn scenario(python: &str, pki: &Pki, addr: SocketAddr, name: &str) -> Value {
    let output = peer_command(python, pki, addr, name).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|error| panic!("{name}: {error}: {stdout}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn aioquic_lines_with_crlf_non_utf8_and_a_final_unterminated_line_come_back_exactly() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (_server, addr) = quic_server(&pki, &[]);
    let result = scenario(&python, &pki, addr, "lines");
    assert_eq!(result["echoed"], result["sent"], "{result}");
    assert_eq!(result["finished"], true, "{result}");
}

#[test]
fn aioquic_a_frame_over_the_limit_ends_its_stream_while_the_others_go_on() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (mut server, addr) = quic_server(&pki, &["--max-frame-length", "64"]);
    let result = scenario(&python, &pki, addr, "frame_limit");
    // The frame before the long one is echoed, then the stream ends.
    assert_eq!(result["long"], hex(b"fits\n"), "{result}");
    assert!(
        result["long_finished"] == true || result["long_reset"] == true,
        "{result}"
    );
    assert_eq!(result["other"], hex(b"other stream\n"), "{result}");
    assert_eq!(result["after"], hex(b"still served\n"), "{result}");
    server.wait_for("frame too long");
}

#[test]
fn aioquic_50_concurrent_streams_and_50_connections_are_all_echoed() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (_server, addr) = quic_server(&pki, &[]);
    let streams = scenario(&python, &pki, addr, "streams");
    assert_eq!(streams["all_equal"], true, "{streams}");
    assert_eq!(streams["count"], 50, "{streams}");
    let connections = scenario(&python, &pki, addr, "connections");
    assert_eq!(connections["ok"], 50, "{connections}");
}

#[test]
fn aioquic_datagrams_come_back_identical_and_uni_streams_are_stopped() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (_server, addr) = quic_server(&pki, &[]);
    let datagrams = scenario(&python, &pki, addr, "datagrams");
    assert_eq!(datagrams["same"], true, "{datagrams}");
    let uni = scenario(&python, &pki, addr, "uni");
    assert_eq!(uni["stopped"], true, "{uni}");
    assert_eq!(uni["echoed"], hex(b"bidi still works\n"), "{uni}");
}

#[test]
fn aioquic_offering_only_h3_is_refused_in_the_handshake() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (mut server, addr) = quic_server(&pki, &[]);
    let result = scenario(&python, &pki, addr, "alpn");
    assert_eq!(result["connected"], false, "{result}");
    server.wait_for("QUIC handshake with");
    // With h3 allowed, the same client gets in.
    let (_h3, h3_addr) = quic_server(&pki, &["--quic-alpn", "echo,h3"]);
    let result = scenario(&python, &pki, h3_addr, "alpn");
    assert_eq!(result["connected"], true, "{result}");
}

#[test]
fn aioquic_a_second_connection_over_the_per_ip_limit_is_retried_then_refused() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (mut server, addr) = quic_server(&pki, &["--max-connections-per-ip", "1"]);
    let result = scenario(&python, &pki, addr, "per_ip");
    assert_eq!(result["first"], hex(b"first\n"), "{result}");
    assert_eq!(result["second_refused"], true, "{result}");
    // Once the first has gone, its slot is free again.
    assert_eq!(result["third"], hex(b"third\n"), "{result}");
    server.wait_for("refused: over the per-IP connection limit");
}

/// 0-RTT: a client resuming a session sends a line with its first flight
/// and then withholds everything (its Finished too); the server accepts
/// the early data and echoes it at 0.5-RTT, before the handshake is done.
#[test]
fn aioquic_0rtt_data_is_echoed_before_the_client_finishes_its_handshake() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (mut server, addr) = quic_server(&pki, &[]);
    let result = scenario(&python, &pki, addr, "zero_rtt");
    assert_eq!(result["first"], hex(b"first\n"), "{result}");
    assert_eq!(result["ticket_early_data"], u32::MAX, "{result}");
    assert_eq!(result["resumed"], true, "{result}");
    assert_eq!(result["early_data_accepted"], true, "{result}");
    assert_eq!(result["early"], hex(b"early\n"), "{result}");
    assert_eq!(result["finished"], true, "{result}");
    assert_eq!(result["handshake_done"], false, "{result}");
    // The first connection's handshake was full; it completed, and said so.
    server.wait_for("QUIC handshake with");
}

/// With a client CA the server does not serve before the client's Finished
/// (where the client proves its certificate): a resumed client that sends
/// 0-RTT data and withholds its Finished gets no echo, only the close at
/// the handshake timeout.
#[test]
fn aioquic_with_a_client_ca_nothing_is_echoed_before_the_client_finishes() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let ca = pki.arg("ca.pem");
    let (_server, addr) = quic_server(
        &pki,
        &["--tls-client-ca", &ca, "--tls-handshake-timeout", "0.5"],
    );
    let result = scenario(&python, &pki, addr, "zero_rtt_mtls");
    assert_eq!(result["first"], hex(b"first\n"), "{result}");
    assert_eq!(result["early"], "", "{result}");
    assert!(result["code"].as_u64().is_some(), "{result}");
}

/// Served at 0.5-RTT, a connection must still finish its handshake in
/// time: one whose client never sends its Finished is closed at the
/// handshake timeout, and its slot is free again.
#[test]
fn aioquic_a_handshake_never_finished_is_closed_at_the_handshake_timeout() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (mut server, addr) = quic_server(
        &pki,
        &["--tls-handshake-timeout", "0.5", "--max-connections", "1"],
    );
    let result = scenario(&python, &pki, addr, "stalled");
    let after = result["closed_after_s"].as_f64().unwrap();
    assert!((0.4..10.0).contains(&after), "{result}");
    // Before the handshake is done an application close goes out as the
    // transport error APPLICATION_ERROR (0x0c), without its reason (RFC
    // 9000, 10.2.3).
    assert_eq!(result["code"], 0x0c, "{result}");
    server.wait_for("failed: timed out");
    // The one slot is free: a normal client is served.
    let echoed = scenario(&python, &pki, addr, "lines");
    assert_eq!(echoed["echoed"], echoed["sent"], "{echoed}");
}

#[test]
fn aioquic_raw_framing_echoes_1_mib_byte_for_byte() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (_server, addr) = quic_server(&pki, &["--framing", "raw"]);
    let result = scenario(&python, &pki, addr, "raw");
    assert_eq!(result["equal"], true, "{result}");
    assert_eq!(result["len"], 1 << 20, "{result}");
}

#[test]
fn aioquic_an_idle_connection_ends_at_the_idle_timeout() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (mut server, addr) = quic_server(&pki, &["--idle-timeout", "0.5"]);
    let result = scenario(&python, &pki, addr, "idle");
    let after = result["terminated_after_s"].as_f64().unwrap();
    assert!(after >= 0.5, "{result}");
    server.wait_for("closed: idle timeout");
}

#[test]
fn aioquic_graceful_shutdown_echoes_what_arrived_finishes_and_closes_with_code_0() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (mut server, addr) = quic_server(&pki, &[]);
    let mut peer = peer_command(&python, &pki, addr, "shutdown")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "READY");
    server.signal(libc::SIGTERM);
    let result: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(peer.wait().unwrap().success());
    assert_eq!(result["echoed"], hex(b"before\npending\n"), "{result}");
    assert_eq!(result["finished"], true, "{result}");
    assert_eq!(result["code"], 0, "{result}");
    assert!(server.wait().success());
    let log = server.stderr.join("\n");
    assert!(!log.contains("were cut"), "{log}");
}

#[test]
fn a_thousand_garbage_datagrams_do_no_harm() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let (mut server, addr) = quic_server(&pki, &[]);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x2545_f491_u32;
    for i in 0..1000usize {
        // Short, long, a QUIC long-header lookalike, and noise.
        let len = [1, 20, 1200, 1500][i % 4];
        let datagram: Vec<u8> = (0..len)
            .map(|j| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                if j == 0 && i % 3 == 0 {
                    0xc0
                } else {
                    seed as u8
                }
            })
            .collect();
        socket.send_to(&datagram, addr).unwrap();
    }
    let result = scenario(&python, &pki, addr, "lines");
    assert_eq!(result["echoed"], result["sent"], "{result}");
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
    let log = server.stderr.join("\n");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn the_bundled_client_echoes_stdin_lines_over_quic() {
    let pki = Pki::new();
    let (_server, addr) = quic_server(&pki, &[]);
    let (code, stdout, stderr) = common::run_binary(
        env!("CARGO_BIN_EXE_echo-client"),
        &[
            &format!("quic:{addr}"),
            "--tls-ca",
            &pki.arg("ca.pem"),
            "--tls-server-name",
            "localhost",
        ],
        &[],
        b"one\ntwo\r\nthree",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, b"one\ntwo\r\nthree");
}

/// `echo-client bench quic:ADDR` with `extra` flags, for half a second;
/// its JSON report, after checking it exited 0.
fn quic_bench(pki: &Pki, addr: SocketAddr, extra: &[&str]) -> Value {
    let target = format!("quic:{addr}");
    let ca = pki.arg("ca.pem");
    let mut args = vec![
        "bench",
        &target,
        "--tls-ca",
        &ca,
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--json",
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) =
        common::run_binary(env!("CARGO_BIN_EXE_echo-client"), &args, &[], b"");
    assert_eq!(code, Some(0), "{stderr}");
    serde_json::from_slice(&stdout).unwrap()
}

#[test]
fn bench_over_quic_verifies_every_echo() {
    let pki = Pki::new();
    let (_server, addr) = quic_server(&pki, &[]);
    let report = quic_bench(&pki, addr, &["--connections", "5", "--size", "100"]);
    assert!(report["messages"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");
    // Handshake time: the five connections' connect + QUIC handshake.
    let handshake = &report["handshake_us"];
    assert!(handshake["p50"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        handshake["max"].as_f64() >= handshake["p50"].as_f64(),
        "{report}"
    );
}

/// `--reconnect --tls-resume --early-data`: after the first connection,
/// each one resumes and sends its message as 0-RTT data; the server takes
/// it (a refused message would fail), and every echo is verified.
/// Without `--early-data` the report has no such key.
#[test]
fn bench_reconnect_with_early_data_sends_each_message_as_0rtt() {
    let pki = Pki::new();
    let (_server, addr) = quic_server(&pki, &[]);
    let common = ["--reconnect", "--connections", "4", "--tls-resume"];
    let report = quic_bench(&pki, addr, &[&common[..], &["--early-data"]].concat());
    let messages = report["messages"].as_u64().unwrap();
    assert!(messages > 10, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");
    let (sent, accepted) = (
        report["early_data"]["sent"].as_u64().unwrap(),
        report["early_data"]["accepted"].as_u64().unwrap(),
    );
    // Most connections try 0-RTT: not the first ones (no session yet), nor
    // one that starts before an earlier one's tickets have arrived. The
    // last ones may still be completing their handshakes when it ends.
    assert!(sent * 2 >= messages, "{report}");
    assert!(accepted > 0 && accepted + 8 >= sent, "{report}");
    let plain = quic_bench(&pki, addr, &common);
    assert!(plain.get("early_data").is_none(), "{plain}");
    assert_eq!(plain["errors"], 0, "{plain}");
    // Refused: without --tls-resume (no session to send early data on),
    // and on an address that is not quic:.
    let ca = pki.arg("ca.pem");
    for (target, extra) in [
        (format!("quic:{addr}"), None),
        (format!("tls:{addr}"), Some("--tls-resume")),
    ] {
        let mut args = vec!["bench", &target, "--tls-ca", &ca, "--early-data"];
        args.extend(extra);
        let (code, _, stderr) =
            common::run_binary(env!("CARGO_BIN_EXE_echo-client"), &args, &[], b"");
        assert_eq!(code, Some(2), "{target}: {stderr}");
        assert!(
            stderr.contains("early-data") || stderr.contains("tls-resume"),
            "{stderr}"
        );
    }
}

/// MTU discovery searches up to what the route carries: over loopback a
/// 4 KiB echo fits one packet instead of four 1,452-byte ones (quinn's own
/// bound), on the server's side and on the client's (which advertises
/// the payload it accepts).
#[test]
fn path_mtu_discovery_on_loopback_goes_past_ethernet_sizes() {
    let pki = Pki::new();
    let (mut server, addr) = quic_server(&pki, &[]);
    let report = quic_bench(&pki, addr, &["--connections", "1", "--size", "6000"]);
    assert_eq!(report["mismatches"], 0, "{report}");
    let line = server.wait_for("path_mtu=");
    let mtu: u64 = line
        .split("path_mtu=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|mtu| mtu.parse().ok())
        .unwrap_or_else(|| panic!("no path_mtu in {line}"));
    assert!(
        (6000..=echod::quic::MAX_PAYLOAD.into()).contains(&mtu),
        "path MTU {mtu} after 6,000-byte echoes over loopback: {line}"
    );
}

#[test]
fn bench_streams_drives_several_streams_on_each_connection() {
    let pki = Pki::new();
    let (mut server, addr) = quic_server(&pki, &["--admin", "127.0.0.1:0"]);
    let admin = server.admin_addr();
    let report = quic_bench(&pki, addr, &["--connections", "2", "--streams", "5"]);
    assert_eq!(report["streams_per_connection"], 5, "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    // The server saw two connections and ten streams.
    let metrics = std::process::Command::new("curl")
        .args(["-s", &format!("http://{admin}/metrics")])
        .output()
        .expect("curl (.ci/run installs it)");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("echod_listener_connections_total{listener=\"quic\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("echod_quic_streams_total 10"), "{metrics}");
}

/// SIGHUP reloads the certificate for new QUIC handshakes: after the
/// files are swapped for an expired certificate, a new aioquic connection
/// fails to verify it, while before it succeeded.
#[test]
fn sighup_gives_new_quic_handshakes_the_new_certificate() {
    let Some(python) = aioquic() else { return };
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(pki.path("server.pem"), &cert).unwrap();
    std::fs::copy(pki.path("server-key.pem"), &key).unwrap();
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let mut server = ServerProcess::spawn(
        &[
            "--listen",
            "quic:127.0.0.1:0",
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
        ],
        &[],
    );
    let addr = quic_addr(&mut server);
    let result = scenario(&python, &pki, addr, "lines");
    assert_eq!(result["echoed"], result["sent"], "{result}");
    std::fs::copy(pki.path("expired.pem"), &cert).unwrap();
    std::fs::copy(pki.path("expired-key.pem"), &key).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for("configuration reloaded");
    let refused = peer_command(&python, &pki, addr, "lines").output().unwrap();
    assert!(
        !refused.status.success(),
        "the expired certificate was accepted: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
}
