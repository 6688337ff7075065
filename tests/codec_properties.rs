//! Codec properties over arbitrary input (proptest): for every framing,
//! any byte stream split at any points echoes exactly what a naive model of
//! the framing says — the whole input, or the whole frames before the first
//! oversized one (then an error, never a panic) — and decoding then
//! encoding valid input reproduces it byte for byte.

use bytes::BytesMut;
use echod::{codec, EchoCodec, Framer, Framing};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

/// The server's own framer (as its echo loop drives it), fed `input` cut
/// at `cuts`.
fn server_echo(codec: EchoCodec, input: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let reads = points.iter().scan(0, |start, &end| {
        Some(&input[std::mem::replace(start, end)..end])
    });
    let (echoed, error) = codec::echo_reads(&mut Framer::new(codec, false), reads);
    (echoed, error.is_some())
}

/// What each framing should echo: (bytes, whether an oversized frame ended it).
fn model(framing: Framing, limit: usize, input: &[u8]) -> (Vec<u8>, bool) {
    match framing {
        Framing::Raw => (input.to_vec(), false),
        Framing::Lines => {
            let mut echoed = Vec::new();
            for frame in input.split_inclusive(|&b| b == b'\n') {
                if frame.len() > limit {
                    return (echoed, true);
                }
                echoed.extend_from_slice(frame);
            }
            (echoed, false)
        }
        Framing::Length => {
            let mut at = 0;
            while input.len() - at >= 4 {
                let len = u32::from_be_bytes(input[at..at + 4].try_into().unwrap()) as usize;
                if len > limit {
                    return (input[..at].to_vec(), true);
                }
                if input.len() - at - 4 < len {
                    break;
                }
                at += 4 + len;
            }
            (input[..at].to_vec(), false)
        }
    }
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::Lines),
        Just(Framing::Raw),
        Just(Framing::Length)
    ]
}

/// Bytes with plenty of newlines and small length headers in them.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![4 => any::<u8>(), 2 => Just(b'\n'), 2 => Just(0u8), 1 => 0u8..8],
        0..600,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_stream_split_anywhere_echoes_what_the_framing_says(
        framing in framing(),
        limit in 1usize..40,
        input in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let codec = EchoCodec::new(framing, limit);
        prop_assert_eq!(server_echo(codec, &input, &cuts), model(framing, limit, &input));
    }

    #[test]
    fn valid_frames_round_trip_through_decode_and_encode(
        framing in prop_oneof![Just(Framing::Lines), Just(Framing::Length)],
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..50), 0..20),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut codec = EchoCodec::new(framing, 64);
        let mut wire = BytesMut::new();
        for payload in &payloads {
            let mut message: Vec<u8> = payload.clone();
            if framing == Framing::Lines {
                message.retain(|&b| b != b'\n');
                message.push(b'\n');
            }
            codec.encode(&message[..], &mut wire).unwrap();
        }
        // The whole wire is echoed, however it is cut.
        let (echoed, error) = server_echo(codec, &wire, &cuts);
        prop_assert!(!error);
        prop_assert_eq!(&echoed[..], &wire[..]);
        // Decoding frame by frame and encoding them again gives the input.
        let mut input = BytesMut::from(&wire[..]);
        let mut again = BytesMut::new();
        while let Some(frame) = codec.decode_eof(&mut input).unwrap() {
            codec.encode(&frame[..], &mut again).unwrap();
        }
        prop_assert_eq!(&again[..], &wire[..]);
    }
}
