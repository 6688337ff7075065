//! `echo-client bench --chaos`: abusive clients alongside the verified load.
//!
//! They run on their own thread and runtime, so they do not distort the
//! measurement of the well-behaved clients. Each kind loops until the bench
//! ends and counts what happened:
//! - `reset`: half a frame, then a close with SO_LINGER 0 (a RST);
//! - `slowloris`: one byte a second, never a whole frame;
//! - `never_read`: sends until the server stops reading, holds, leaves;
//! - `oversized`: a frame far over any sane limit;
//! - `flood`: connect and close at once, hundreds of times a second;
//! - `half_close`: random bytes, write side shut at a random point, and the
//!   echo checked byte for byte (it must be everything sent).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The kinds of abuse, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Half a frame, then a reset.
    Reset,
    /// One byte a second, never a whole frame.
    Slowloris,
    /// Sends, never reads its echoes.
    NeverRead,
    /// A line far over the frame limit.
    Oversized,
    /// Connect and drop, as fast as possible.
    Flood,
    /// Random lines, half-close, every echo checked.
    HalfClose,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Reset,
        Kind::Slowloris,
        Kind::NeverRead,
        Kind::Oversized,
        Kind::Flood,
        Kind::HalfClose,
    ];

    /// The report's name for it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Reset => "reset",
            Kind::Slowloris => "slowloris",
            Kind::NeverRead => "never_read",
            Kind::Oversized => "oversized",
            Kind::Flood => "flood",
            Kind::HalfClose => "half_close",
        }
    }
}

/// Counters of one kind of abusive client.
#[derive(Debug, Default)]
pub struct KindCounters {
    /// Connections attempted.
    pub attempts: AtomicU64,
    /// Connections the server closed (the expected outcome for most kinds).
    pub closed_by_server: AtomicU64,
    /// Failures to connect or unexpected socket errors.
    pub errors: AtomicU64,
    /// `half_close` only: echoes that differed from what was sent.
    pub mismatches: AtomicU64,
}

/// What each kind saw, for the report.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct KindReport {
    pub attempts: u64,
    pub closed_by_server: u64,
    pub errors: u64,
    pub mismatches: u64,
}

/// The running chaos: counters per kind and a stop flag.
pub struct Chaos {
    counters: Arc<[KindCounters; Kind::ALL.len()]>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Chaos {
    /// Starts `per_kind` clients of every kind against `target`.
    pub fn start(target: SocketAddr, per_kind: usize) -> Chaos {
        let counters: Arc<[KindCounters; Kind::ALL.len()]> = Arc::new(Default::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counters.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("chaos".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("chaos runtime");
                runtime.block_on(async move {
                    let mut tasks = Vec::new();
                    for kind in Kind::ALL {
                        for index in 0..per_kind {
                            let (c, s) = (c.clone(), s.clone());
                            tasks.push(tokio::spawn(async move {
                                let mut rng = 0x9E37_79B9_7F4A_7C15u64
                                    ^ ((kind as usize * 1000 + index) as u64 + 1);
                                while !s.load(Ordering::Relaxed) {
                                    abuse(kind, target, &c[kind as usize], &s, &mut rng).await;
                                }
                            }));
                        }
                    }
                    while !s.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    for task in tasks {
                        task.abort();
                    }
                });
            })
            .expect("chaos thread");
        Chaos {
            counters,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops every abusive client and returns the counts by kind.
    pub fn finish(mut self) -> Vec<(&'static str, KindReport)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Kind::ALL
            .iter()
            .zip(self.counters.iter())
            .map(|(kind, c)| {
                (
                    kind.label(),
                    KindReport {
                        attempts: c.attempts.load(Ordering::Relaxed),
                        closed_by_server: c.closed_by_server.load(Ordering::Relaxed),
                        errors: c.errors.load(Ordering::Relaxed),
                        mismatches: c.mismatches.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }
}

/// Reads until the server closes (EOF or reset) or `limit` passes;
/// returns what was read and whether the server closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One round of one kind of abuse.
async fn abuse(
    kind: Kind,
    target: SocketAddr,
    counters: &KindCounters,
    stop: &AtomicBool,
    rng: &mut u64,
) {
    counters.attempts.fetch_add(1, Ordering::Relaxed);
    let Ok(mut stream) = TcpStream::connect(target).await else {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        return;
    };
    let closed_by_server = || {
        counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
    };
    match kind {
        Kind::Reset => {
            let _ = stream.write_all(b"half a frame, and then a reset").await;
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Kind::Slowloris => {
            if slowloris(&mut stream, stop).await {
                closed_by_server();
            }
        }
        Kind::NeverRead => {
            if never_read(&mut stream).await {
                closed_by_server();
            }
        }
        Kind::Oversized => {
            let flood = vec![b'z'; 256 * 1024];
            for _ in 0..8 {
                if stream.write_all(&flood).await.is_err() {
                    break;
                }
            }
            if read_until_closed(&mut stream, Duration::from_secs(10))
                .await
                .1
            {
                closed_by_server();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Kind::Flood => {
            drop(stream);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Kind::HalfClose => half_close(stream, counters, rng).await,
    }
}

/// A byte a second until the server closes (true) or the chaos stops.
async fn slowloris(stream: &mut TcpStream, stop: &AtomicBool) -> bool {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut byte = [0u8; 1];
        tokio::select! {
            _ = tick.tick() => {
                if stream.write_all(b"x").await.is_err() {
                    return true;
                }
            }
            read = stream.read(&mut byte) => return matches!(read, Ok(0) | Err(_)),
        }
        if stop.load(Ordering::Relaxed) {
            return false;
        }
    }
}

/// Writes until the server stops reading (backpressure), then waits; true
/// when the server closed instead.
async fn never_read(stream: &mut TcpStream) -> bool {
    let line = [b"y".repeat(1023), b"\n".to_vec()].concat().repeat(64);
    loop {
        match tokio::time::timeout(Duration::from_millis(200), stream.write(&line)).await {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return true,
            Err(_) => break, // the server stopped reading: backpressure
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    false
}

/// Lines of up to 1 KiB cut at a random point, a half-close, and every
/// echo checked.
async fn half_close(stream: TcpStream, counters: &KindCounters, rng: &mut u64) {
    use super::rng::next;
    let len = 1 + (next(rng) % 8192) as usize;
    let sent: Vec<u8> = (0..len)
        .map(|i| {
            if next(rng) % 64 == 0 || i % 1024 == 1023 {
                b'\n'
            } else {
                b'a' + (next(rng) % 26) as u8
            }
        })
        .collect();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let ok = writer.write_all(&sent).await.is_ok() && writer.shutdown().await.is_ok();
        (sent, ok)
    });
    let mut echoed = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut echoed)).await;
    let (sent, wrote) = writing.await.unwrap_or((Vec::new(), false));
    match read {
        Ok(Ok(_)) if wrote => {
            counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
            if echoed != sent {
                counters.mismatches.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}
