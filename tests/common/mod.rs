//! Test helpers: an in-process server on port 0, and the real binaries.
#![allow(dead_code)] // each test crate uses its own subset

pub mod pki;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use echod::{server::ShutdownReport, Config, Server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
};

/// How long any single wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Defaults, but on 127.0.0.1 port 0.
pub fn config() -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Config::default()
    }
}

/// An echo server running in this process.
pub struct TestServer {
    pub addrs: Vec<SocketAddr>,
    pub udp_addrs: Vec<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<ShutdownReport>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let server = Server::bind(config).await.expect("bind");
        let addrs = server.local_addrs().to_vec();
        let udp_addrs = server.udp_addrs().to_vec();
        let metrics_addr = server.metrics_addr();
        let (shutdown, signalled) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = signalled.await;
            "test shutdown"
        }));
        TestServer {
            addrs,
            udp_addrs,
            metrics_addr,
            shutdown: Some(shutdown),
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The first TCP address, or a placeholder when there is none (for
    /// argument lists whose address is replaced).
    pub fn addr_or_unused(&self) -> SocketAddr {
        self.addrs
            .first()
            .copied()
            .unwrap_or_else(|| "127.0.0.1:9".parse().unwrap())
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Shuts down and waits for the report.
    pub async fn shutdown(mut self) -> ShutdownReport {
        self.begin_shutdown();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("shutdown finished in time")
            .expect("server task")
    }

    /// Waits for a shutdown already begun.
    pub async fn finished(self) -> ShutdownReport {
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("shutdown finished in time")
            .expect("server task")
    }
}

/// Sends `input`, half-closes, and returns everything echoed until the
/// server closes.
pub async fn round_trip(addr: SocketAddr, input: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let input = input.to_vec();
    let writing = tokio::spawn(async move {
        writer.write_all(&input).await.expect("write");
        writer.shutdown().await.expect("half-close");
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(PATIENCE, reader.read_to_end(&mut echoed))
        .await
        .expect("echo in time")
        .expect("read");
    writing.await.unwrap();
    echoed
}

/// Writes `line` and reads back exactly as many bytes.
pub async fn echo_once(stream: &mut TcpStream, line: &[u8]) -> Vec<u8> {
    stream.write_all(line).await.expect("write");
    let mut echoed = vec![0; line.len()];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("read echo");
    echoed
}

/// Reads until the server closes (EOF or reset); returns what was read and
/// how long it took. Fails the test if the server does not close in time.
pub async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await {
            Err(_) => panic!("server did not close the connection within {PATIENCE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (received, started.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Connects `clients` (more than `server` has descriptors for), expects
/// an EMFILE accept warning, then checks the server backs off rather than
/// spins (fewer than 50 warnings), serves again once they close, and exits
/// 0 at SIGTERM.
#[allow(dead_code)]
pub async fn exhaust_descriptors_then_recover(
    server: &mut ServerProcess,
    addr: SocketAddr,
    clients: usize,
) {
    let mut open = Vec::new();
    for _ in 0..clients {
        open.push(TcpStream::connect(addr).await.unwrap());
    }
    let warning = server.wait_for("accept failed");
    assert!(
        warning.contains("Too many open files") || warning.contains("os error 24"),
        "{warning}"
    );
    drop(open);
    assert_eq!(round_trip(addr, b"recovered\n").await, b"recovered\n");
    assert!(server.child.try_wait().unwrap().is_none(), "server exited");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait().code(), Some(0));
    let warnings = server
        .stderr
        .iter()
        .filter(|line| line.contains("accept failed"))
        .count();
    assert!(warnings < 50, "{warnings} accept warnings");
}

/// Deterministic bytes that cover every value, newlines included.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// A length-framed message.
pub fn length_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// A real `echo-server` process, with its stderr lines collected.
pub struct ServerProcess {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub stderr: Vec<String>,
    consumed: usize,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `echo-server ARGS` in an empty directory (so no stray
    /// config.toml is read) with only `env` in its environment.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        Self::spawn_with(args, env, |_, _| {})
    }

    /// Like `spawn`, with a hook to adjust the command (rlimits) or put
    /// files in its working directory (given as the second argument).
    pub fn spawn_with(
        args: &[&str],
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command, &Path),
    ) -> ServerProcess {
        Self::spawn_command(
            Command::new(env!("CARGO_BIN_EXE_echo-server")),
            args,
            env,
            adjust,
        )
    }

    /// Starts echo-server through `sh -c SCRIPT`, where the script ends in
    /// `exec "$0" "$@"` (the binary and ARGS): the shell can set variables
    /// that depend on the final pid, such as `LISTEN_PID=$$`.
    pub fn spawn_via_shell(
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command, &Path),
    ) -> ServerProcess {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_echo-server"));
        Self::spawn_command(command, args, env, adjust)
    }

    fn spawn_command(
        mut command: Command,
        args: &[&str],
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command, &Path),
    ) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        command
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut command, dir.path());
        let mut child = command.spawn().expect("spawn echo-server");
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        ServerProcess {
            child,
            lines,
            stderr: Vec::new(),
            consumed: 0,
            _dir: dir,
        }
    }

    /// Waits for the next stderr line containing `needle`; fails the test
    /// if stderr ends or nothing matches in time.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.stderr.iter().find(|line| line.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stderr.push(line),
                Err(_) => panic!(
                    "no stderr line containing {needle:?}; stderr so far:\n{}",
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// The TLS address from the `listening on tls:` line.
    pub fn listening_tls(&mut self) -> SocketAddr {
        let line = self.wait_for("listening on tls:");
        line.split("listening on tls:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"))
    }

    /// The address in the `admin listening on ADDR` line.
    #[allow(dead_code)]
    pub fn admin_addr(&mut self) -> SocketAddr {
        let line = self.wait_for("admin listening on");
        let rest = line.split("admin listening on ").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// The addresses from the `listening on` lines, once `count` are logged.
    pub fn listening(&mut self, count: usize) -> Vec<SocketAddr> {
        let mut addrs = Vec::new();
        let mut seen = 0;
        while addrs.len() < count {
            self.wait_for_nth("listening on ", seen);
            let line = self
                .stderr
                .iter()
                .filter(|line| line.contains("listening on "))
                .nth(seen)
                .unwrap();
            seen += 1;
            // The admin endpoint's line is not a listener.
            if line.contains("admin listening on ") {
                continue;
            }
            let addr = line
                .split("listening on ")
                .nth(1)
                .map(|rest| {
                    let is_addr =
                        |c: char| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']');
                    rest.split(|c| !is_addr(c)).next().unwrap_or_default()
                })
                .and_then(|addr| addr.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"));
            addrs.push(addr);
        }
        addrs
    }

    /// Waits for one more stderr line containing `needle` than seen so far
    /// by this method (counts every call).
    pub fn wait_for_next(&mut self, needle: &str) {
        self.consumed += 1;
        self.wait_for_nth(needle, self.consumed - 1);
    }

    fn wait_for_nth(&mut self, needle: &str, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.stderr.iter().filter(|l| l.contains(needle)).count() <= n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stderr.push(line),
                Err(_) => panic!(
                    "fewer than {} lines containing {needle:?}; stderr:\n{}",
                    n + 1,
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// Collects the stderr lines that arrive within `wait`.
    pub fn poll_lines(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.stderr.push(line);
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let result = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(result, 0, "kill failed");
    }

    /// Waits for the process to exit, collecting the rest of stderr.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "echo-server did not exit in time; stderr:\n{}",
                    self.stderr.join("\n")
                );
            }
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(20)) {
                self.stderr.push(line);
            }
        };
        // The pipe closes when the process exits: take every last line.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        status
    }

    /// Current resident set size in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the command with RLIMIT_NOFILE set to `soft`/`hard` (Unix).
#[cfg(unix)]
pub fn limit_open_files(command: &mut Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes `fd` the child's descriptor 3, the first one socket activation
/// (systemd's `LISTEN_FDS`) and HAProxy's `fd@3` look at.
#[cfg(unix)]
pub fn pass_as_fd3(command: &mut Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: dup2 and fcntl are async-signal-safe, as pre_exec requires.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                // Already there: just let it survive exec.
                if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) != 3 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs a binary to completion: (exit code, stdout, stderr).
pub fn run_binary(
    binary: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> (Option<i32>, Vec<u8>, String) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary)
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut child_stdin = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = child_stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("wait");
    feeder.join().unwrap();
    (
        output.status.code(),
        output.stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether an independent peer program (a client echod did not write, or
/// a checker) runs here: `program probe…` succeeds. Without it a test skips
/// with a loud message on a developer machine, and fails under CI, where
/// `.ci/run` installs `package`.
pub fn peer(program: &str, probe: &[&str], package: &str) -> bool {
    let found = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} is not installed (.ci/run installs {package})"
        );
        eprintln!("SKIPPING: {program} is not installed (apt-get install {package})");
    }
    found
}

/// The first of `pythons` that can `import module` (an independent peer
/// written in Python). Without one a test skips with a loud message on a
/// developer machine, and fails under CI, where `.ci/run` installs it
/// (`install` says how).
#[allow(dead_code)]
pub fn python_with(module: &str, pythons: &[&str], install: &str) -> Option<String> {
    for python in pythons {
        let found = Command::new(python)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if found {
            return Some((*python).to_owned());
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no Python with {module} (.ci/run installs it: {install})"
    );
    eprintln!("SKIPPING: no Python with {module} ({install})");
    None
}
