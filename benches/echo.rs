//! Round trips through the real server code over loopback (bytes/s):
//! one connection, 200 messages per iteration, for each framing, 64 B and
//! 4 KiB, one message in flight and 16 (pipelined).
//!
//! The server runs on its own 2-worker runtime in this process; the client
//! on a current-thread runtime, writing K messages then reading K echoes.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use echod::{Config, EchoCodec, Framing, Server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::codec::Encoder;

const MESSAGES: usize = 200;

fn message(framing: Framing, size: usize) -> Vec<u8> {
    let mut payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    if framing == Framing::Lines {
        *payload.last_mut().unwrap() = b'\n';
    }
    let mut wire = BytesMut::new();
    EchoCodec::new(framing, 65536)
        .encode(&payload[..], &mut wire)
        .unwrap();
    wire.to_vec()
}

fn echo(c: &mut Criterion) {
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("echo");
    for framing in Framing::ALL {
        let config = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            framing,
            ..Config::default()
        };
        let server = server_runtime.block_on(Server::bind(config)).unwrap();
        let addr = server.local_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = server_runtime.spawn(server.run(async move {
            let _ = stopped.await;
            "bench finished"
        }));
        let mut stream = client_runtime.block_on(async {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            stream
        });
        for size in [64, 4096] {
            let wire = message(framing, size);
            for pipeline in [1, 16] {
                let batch = wire.repeat(pipeline);
                let mut echoed = vec![0u8; batch.len()];
                group.throughput(Throughput::Bytes((MESSAGES * wire.len()) as u64));
                let id = BenchmarkId::new(format!("{framing}/pipeline-{pipeline}"), size);
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        client_runtime.block_on(async {
                            let started = Instant::now();
                            for _ in 0..iters {
                                for _ in 0..MESSAGES / pipeline {
                                    stream.write_all(&batch).await.unwrap();
                                    stream.read_exact(&mut echoed).await.unwrap();
                                }
                            }
                            let elapsed = started.elapsed();
                            assert_eq!(echoed, batch, "echo differs");
                            elapsed
                        })
                    })
                });
            }
        }
        drop(stream);
        let _ = stop.send(());
        server_runtime.block_on(running).unwrap();
    }
    group.finish();
}

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! { name = benches; config = quick(); targets = echo }
criterion_main!(benches);
