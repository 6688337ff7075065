//! The echo loop's own cost per message, without the kernel: the real
//! [`echod::server::echo::echo`] over an in-memory stream that hands it one
//! message per read and, between messages, makes it wait once (returns
//! `Pending` and wakes itself), as a socket at one message in flight does.
//! It is polled directly, not through a scheduler.
//! So each message takes the whole per-message path — readiness, read,
//! framing, write, the idle and frame timers, the shutdown check — and
//! nothing else: what this measures is user-space time per message, the
//! part of the server's cost the code decides (the TCP path is the rest).
//!
//! Settings are the server's defaults (idle timeout 300 s, frame timeout
//! 60 s), metrics off.

use std::{
    cell::Cell,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use echod::{
    server::{
        echo::{self, ConnectionSettings, ConnectionStats},
        shutdown::Coordinator,
    },
    stream::EchoStream,
    EchoCodec, Framing,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const MESSAGES: usize = 1000;

/// `left` copies of `message`, one per read, each after one wait.
struct Feed {
    message: Vec<u8>,
    left: usize,
    waited: Cell<bool>,
    written: usize,
}

impl EchoStream for Feed {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.left == 0 || self.waited.replace(true) {
            return Poll::Ready(Ok(()));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
    fn read_arrived(&mut self, _buf: &mut BytesMut) -> io::Result<Option<usize>> {
        Ok(None)
    }
}

impl AsyncRead for Feed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.left > 0 {
            if self.poll_read_ready(cx).is_pending() {
                return Poll::Pending;
            }
            buf.put_slice(&self.message);
            self.left -= 1;
            self.waited.set(false);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Feed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn message(framing: Framing, size: usize) -> Vec<u8> {
    use tokio_util::codec::Encoder;
    let mut payload = vec![b'a'; size];
    if framing == Framing::Lines {
        *payload.last_mut().unwrap() = b'\n';
    }
    let mut wire = BytesMut::new();
    EchoCodec::new(framing, 65536)
        .encode(&payload[..], &mut wire)
        .unwrap();
    wire.to_vec()
}

/// Polls `future` until it is done, re-polling at once whenever it waits
/// (the feed has already made itself ready): the runtime's scheduler and
/// its I/O driver stay out of the measurement, its timer is there because
/// the loop's timers use it.
fn run<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _context = runtime.enter();
    let coordinator = Coordinator::new();
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    for framing in Framing::ALL {
        let settings = ConnectionSettings {
            codec: EchoCodec::new(framing, 65536),
            idle_timeout: Some(Duration::from_secs(300)),
            frame_timeout: Some(Duration::from_secs(60)),
        };
        for size in [64, 4096] {
            let wire = message(framing, size);
            let id = BenchmarkId::new(framing.to_string(), size);
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let shutdown = coordinator.shutdown();
                    let started = Instant::now();
                    for _ in 0..iters {
                        let mut feed = Feed {
                            message: wire.clone(),
                            left: MESSAGES,
                            waited: Cell::new(false),
                            written: 0,
                        };
                        let mut stats = ConnectionStats::default();
                        run(echo::echo(
                            &mut feed, &settings, &shutdown, &mut stats, None,
                        ));
                        assert_eq!(feed.written, MESSAGES * wire.len(), "echo lost bytes");
                    }
                    started.elapsed()
                })
            });
        }
    }
    group.finish();
}

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = quick(); targets = hot_path }
criterion_main!(benches);
