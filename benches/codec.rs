//! Codec throughput without sockets (bytes/s), per framing and frame size.
//!
//! - `server`: what the echo loop does per read — feed its `Framer`, take
//!   the run of whole frames and drop it from the buffer — over one
//!   contiguous buffer, and over the same bytes arriving in awkward pieces
//!   (1,000 + 7 bytes, so frames straddle every read boundary).
//! - `client`: what the client and bench do — encode each message, then
//!   decode each echoed frame.

use std::hint::black_box;

use bytes::{Buf, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use echod::{EchoCodec, Framer, Framing};
use tokio_util::codec::{Decoder, Encoder};

const TOTAL: usize = 1 << 20;
const SIZES: [usize; 3] = [64, 4096, 65536];
const AWKWARD_PIECE: usize = 1007;

fn payload(size: usize, framing: Framing) -> Vec<u8> {
    let mut message: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    if framing == Framing::Lines {
        *message.last_mut().unwrap() = b'\n';
    }
    message
}

/// About 1 MiB of whole frames on the wire.
fn wire(size: usize, framing: Framing) -> Vec<u8> {
    let mut codec = EchoCodec::new(framing, 65536);
    let message = payload(size, framing);
    let mut wire = BytesMut::new();
    while wire.len() < TOTAL {
        codec.encode(&message[..], &mut wire).unwrap();
    }
    wire.to_vec()
}

/// The server's framer over `pieces`: returns the bytes it would echo.
fn server_pass(codec: &EchoCodec, input: &[u8], piece: usize) -> usize {
    let mut framer = Framer::new(*codec, false);
    let mut buf = BytesMut::with_capacity(2 * 65536 + piece);
    let mut echoed = 0;
    for chunk in input.chunks(piece) {
        buf.extend_from_slice(chunk);
        let batch = framer.feed(&buf);
        assert!(batch.error.is_none());
        echoed += batch.len;
        buf.advance(batch.len);
    }
    echoed
}

fn server(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/server");
    for framing in Framing::ALL {
        for size in SIZES {
            let input = wire(size, framing);
            let codec = EchoCodec::new(framing, 65536);
            group.throughput(Throughput::Bytes(input.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{framing}/whole"), size),
                &input,
                |b, input| b.iter(|| server_pass(&codec, black_box(input), input.len())),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{framing}/split"), size),
                &input,
                |b, input| b.iter(|| server_pass(&codec, black_box(input), AWKWARD_PIECE)),
            );
        }
    }
    group.finish();
}

fn client(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec/client");
    for framing in [Framing::Lines, Framing::Length] {
        for size in SIZES {
            let message = payload(size, framing);
            let count = TOTAL.div_ceil(size);
            group.throughput(Throughput::Bytes((count * size) as u64));
            group.bench_function(
                BenchmarkId::new(format!("{framing}/encode+decode"), size),
                |b| {
                    let mut codec = EchoCodec::new(framing, 65536);
                    let mut buf = BytesMut::with_capacity(count * (size + 4));
                    b.iter(|| {
                        buf.clear();
                        for _ in 0..count {
                            codec.encode(black_box(&message[..]), &mut buf).unwrap();
                        }
                        let mut frames = 0;
                        while let Some(frame) = codec.decode(&mut buf).unwrap() {
                            frames += frame.len();
                        }
                        frames
                    })
                },
            );
        }
    }
    group.finish();
}

fn quick() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1))
}

criterion_group! { name = benches; config = quick(); targets = server, client }
criterion_main!(benches);
