//! Shared by every target: the input picks a frame limit and cut points,
//! then the rest is the byte stream. The server's batch path and the
//! client's decoder must both agree with a naive model of the framing, and
//! nothing may panic.

use bytes::BytesMut;
use echod::{codec, EchoCodec, Framer, Framing};
use tokio_util::codec::Decoder;

pub fn check(framing: Framing, data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let limit = 1 + usize::from(u16::from_le_bytes([data[0], data[1]])) % 4096;
    let step = 1 + usize::from(data[2]);
    let input = &data[3..];
    let codec = EchoCodec::new(framing, limit);

    // The server's own framer, fed `step`-byte reads as its echo loop is.
    let mut framer = Framer::new(codec, true);
    let (echoed, error) = codec::echo_reads(&mut framer, input.chunks(step));
    assert_eq!((echoed.as_slice(), error.is_some()), model(framing, limit, input));

    // The decoder yields the same frames (their wire bytes, for lines/raw).
    let mut decoder = codec;
    let mut wire = BytesMut::from(input);
    let mut frames = 0usize;
    loop {
        match decoder.decode_eof(&mut wire) {
            Ok(Some(frame)) => frames += frame.len(),
            Ok(None) | Err(_) => break,
        }
    }
    assert!(frames <= input.len());
}

fn model(framing: Framing, limit: usize, input: &[u8]) -> (&[u8], bool) {
    match framing {
        Framing::Raw => (input, false),
        Framing::Lines => {
            let mut end = 0;
            for frame in input.split_inclusive(|&b| b == b'\n') {
                if frame.len() > limit {
                    return (&input[..end], true);
                }
                end += frame.len();
            }
            (input, false)
        }
        Framing::Length => {
            let mut at = 0;
            while input.len() - at >= 4 {
                let len = u32::from_be_bytes(input[at..at + 4].try_into().unwrap()) as usize;
                if len > limit {
                    return (&input[..at], true);
                }
                if input.len() - at - 4 < len {
                    break;
                }
                at += 4 + len;
            }
            (&input[..at], false)
        }
    }
}
