//! The echo codec: how a byte stream is cut into frames.
//!
//! Everything here is a pure function over a byte buffer — no I/O — so it can
//! be unit-tested, fuzzed and benchmarked without sockets.
//!
//! The server does not need frames one by one: an echo of frames is the same
//! bytes as the input. Its [`Framer`] is fed the connection's buffer after
//! each read and answers with the longest run of whole frames at its front,
//! which the server writes back in one batch; that is what makes pipelined
//! clients cheap. The framer keeps its own scan position, so a long frame
//! that arrives in many small reads is not rescanned, and the echo loop, the
//! property tests and the fuzzers all drive this one type. The client and
//! the load generator, which do need individual frames, use the same rules
//! through the [`Decoder`]/[`Encoder`] implementations of [`EchoCodec`].

use std::{fmt, io, str::FromStr};

use bytes::{Buf, BufMut, BytesMut};
use serde::Deserialize;
use tokio_util::codec::{Decoder, Encoder};

/// Size of the big-endian length header in [`Framing::Length`].
pub const LENGTH_HEADER_LEN: usize = 4;

/// The largest frame limit any framing can express: a length header is a u32.
pub const MAX_FRAME_LENGTH_LIMIT: usize = u32::MAX as usize;

/// How a connection's byte stream is cut into frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Frames end at `\n`, which belongs to the frame; a last frame without
    /// `\n` at end of input is a frame too.
    #[default]
    Lines,
    /// RFC 862: no frames, every byte comes back as soon as it is read.
    Raw,
    /// A 4-byte big-endian payload length, then the payload.
    Length,
}

impl Framing {
    /// Every framing, in the order the CLI lists them.
    pub const ALL: [Framing; 3] = [Framing::Lines, Framing::Raw, Framing::Length];

    /// The name used on the command line, in the config file and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Lines => "lines",
            Framing::Raw => "raw",
            Framing::Length => "length",
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Framing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Framing::ALL
            .into_iter()
            .find(|framing| framing.as_str() == s)
            .ok_or_else(|| format!("unknown framing {s:?} (expected lines, raw or length)"))
    }
}

/// A frame broke the limit: the connection that sent it must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// More than the limit arrived without a newline.
    #[error("line longer than the {limit}-byte frame limit")]
    LineTooLong { limit: usize },
    /// A length header announced more than the limit.
    #[error("length header announces {length} bytes, over the {limit}-byte frame limit")]
    LengthTooLarge { length: usize, limit: usize },
}

impl From<FrameError> for io::Error {
    fn from(error: FrameError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

/// The longest run of whole frames at the front of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Bytes of whole, valid frames: echo exactly these.
    pub len: usize,
    /// The frame right after them is over the limit: close after echoing.
    pub error: Option<FrameError>,
}

/// What to do with the bytes left over when the input ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remainder {
    /// Bytes that form a final frame and are echoed.
    pub echo: usize,
    /// Bytes of a truncated frame that are dropped (length framing only).
    pub truncated: usize,
}

/// The framing plus its frame limit: one value shared by server, client and bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoCodec {
    framing: Framing,
    max_frame_length: usize,
}

impl EchoCodec {
    /// `max_frame_length` counts the `\n` of a line and excludes the header of
    /// a length frame; it is ignored by [`Framing::Raw`].
    pub fn new(framing: Framing, max_frame_length: usize) -> Self {
        Self {
            framing,
            max_frame_length: max_frame_length.min(MAX_FRAME_LENGTH_LIMIT),
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    pub fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    /// The most input bytes the server ever holds for an unfinished frame;
    /// memory per connection is this plus one read buffer.
    pub fn max_pending(&self) -> usize {
        match self.framing {
            Framing::Lines => self.max_frame_length,
            Framing::Raw => 0,
            Framing::Length => LENGTH_HEADER_LEN + self.max_frame_length,
        }
    }

    /// The longest run of whole frames at the start of `buf`, which must
    /// begin on a frame boundary.
    ///
    /// `examined` is how many leading bytes of `buf` an earlier call already
    /// looked at without finding the end of a frame: the bytes it left after
    /// its prefix (`buf.len() - prefix.len` then), or 0. Passing it keeps a
    /// long frame that arrives in many small reads from being rescanned on
    /// every read.
    ///
    /// An unfinished frame after that run is reported as an error as soon as
    /// it is known to exceed the limit, so no caller ever holds more than
    /// [`max_pending`](Self::max_pending) bytes of it.
    pub fn complete_prefix(&self, buf: &[u8], examined: usize) -> Prefix {
        match self.framing {
            Framing::Raw => Prefix {
                len: buf.len(),
                error: None,
            },
            Framing::Lines => self.lines_prefix(buf, examined.min(buf.len())),
            Framing::Length => self.length_prefix(buf),
        }
    }

    /// How many frames `complete` holds: it must be whole frames, as
    /// [`complete_prefix`](Self::complete_prefix) returns them. Raw echo
    /// has no frames: 0. (Used for metrics only.)
    pub fn count_frames(&self, complete: &[u8]) -> u64 {
        match self.framing {
            Framing::Raw => 0,
            Framing::Lines => memchr::memchr_iter(b'\n', complete).count() as u64,
            Framing::Length => {
                let (mut rest, mut frames) = (complete, 0);
                while let Some(header) = rest.first_chunk::<LENGTH_HEADER_LEN>() {
                    let frame_len = LENGTH_HEADER_LEN + u32::from_be_bytes(*header) as usize;
                    rest = &rest[frame_len.min(rest.len())..];
                    frames += 1;
                }
                frames
            }
        }
    }

    /// The length of the first whole frame in `buf` (delimiter or header
    /// included), `None` if it is not complete yet.
    pub fn next_frame_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        match self.framing {
            Framing::Raw => Ok((!buf.is_empty()).then_some(buf.len())),
            Framing::Lines => match memchr::memchr(b'\n', buf) {
                Some(newline) if newline < self.max_frame_length => Ok(Some(newline + 1)),
                Some(_) => Err(self.line_too_long()),
                None if buf.len() > self.max_frame_length => Err(self.line_too_long()),
                None => Ok(None),
            },
            Framing::Length => {
                let Some(header) = buf.first_chunk::<LENGTH_HEADER_LEN>() else {
                    return Ok(None);
                };
                let length = u32::from_be_bytes(*header) as usize;
                if length > self.max_frame_length {
                    return Err(FrameError::LengthTooLarge {
                        length,
                        limit: self.max_frame_length,
                    });
                }
                let frame_len = LENGTH_HEADER_LEN + length;
                Ok((buf.len() >= frame_len).then_some(frame_len))
            }
        }
    }

    /// At end of input, what becomes of the bytes `complete_prefix` left:
    /// a final line without `\n` is a frame; a truncated length frame is not.
    pub fn remainder(&self, pending: &[u8]) -> Remainder {
        match self.framing {
            Framing::Lines | Framing::Raw => Remainder {
                echo: pending.len(),
                truncated: 0,
            },
            Framing::Length => Remainder {
                echo: 0,
                truncated: pending.len(),
            },
        }
    }

    fn line_too_long(&self) -> FrameError {
        FrameError::LineTooLong {
            limit: self.max_frame_length,
        }
    }

    fn lines_prefix(&self, buf: &[u8], examined: usize) -> Prefix {
        let limit = self.max_frame_length;
        // `buf[..examined]` holds no newline: search only what is new.
        let Some(last_newline) = memchr::memrchr(b'\n', &buf[examined..]).map(|i| i + examined)
        else {
            return Prefix {
                len: 0,
                error: (buf.len() > limit).then(|| self.line_too_long()),
            };
        };
        let end = last_newline + 1;
        // Fast path: a batch no longer than the limit cannot hold a frame
        // longer than it, so most reads never look at each frame.
        if end > limit {
            let mut start = 0;
            for newline in memchr::memchr_iter(b'\n', &buf[examined..end]).map(|i| i + examined) {
                if newline + 1 - start > limit {
                    return Prefix {
                        len: start,
                        error: Some(self.line_too_long()),
                    };
                }
                start = newline + 1;
            }
        }
        Prefix {
            len: end,
            error: (buf.len() - end > limit).then(|| self.line_too_long()),
        }
    }

    fn length_prefix(&self, buf: &[u8]) -> Prefix {
        let mut len = 0;
        loop {
            match self.next_frame_len(&buf[len..]) {
                Ok(Some(frame_len)) => len += frame_len,
                Ok(None) => return Prefix { len, error: None },
                Err(error) => {
                    return Prefix {
                        len,
                        error: Some(error),
                    }
                }
            }
        }
    }
}

/// What a [`Framer`] found in the buffer it was fed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Bytes of whole, valid frames at the front: echo exactly these, then
    /// drop them from the buffer before the next [`Framer::feed`].
    pub len: usize,
    /// How many frames those bytes hold (0 for raw; only counted when the
    /// framer was made with counting on).
    pub frames: u64,
    /// The frame right after them is over the limit: close after echoing.
    pub error: Option<FrameError>,
}

/// The server's framing state for one connection: the codec plus how much
/// of the unfinished frame at the front of the buffer it has already
/// searched. The caller owns the buffer; the framer owns the bookkeeping.
#[derive(Clone, Debug)]
pub struct Framer {
    codec: EchoCodec,
    /// Leading bytes of the buffer known to hold no frame end (see
    /// [`EchoCodec::complete_prefix`]).
    examined: usize,
    count_frames: bool,
}

impl Framer {
    /// `count_frames` adds a frame count to every batch (for metrics); it
    /// costs a second pass over each batch, so it is off unless asked for.
    pub fn new(codec: EchoCodec, count_frames: bool) -> Framer {
        Framer {
            codec,
            examined: 0,
            count_frames,
        }
    }

    pub fn codec(&self) -> EchoCodec {
        self.codec
    }

    /// Called with the whole buffer after bytes were appended to it. The
    /// buffer starts on a frame boundary; the caller removes `batch.len`
    /// bytes from its front before feeding again.
    pub fn feed(&mut self, buf: &[u8]) -> Batch {
        let prefix = self.codec.complete_prefix(buf, self.examined);
        // What is left was examined and holds no frame end yet.
        self.examined = buf.len() - prefix.len;
        let frames = if self.count_frames {
            self.codec.count_frames(&buf[..prefix.len])
        } else {
            0
        };
        Batch {
            len: prefix.len,
            frames,
            error: prefix.error,
        }
    }

    /// At end of input, what becomes of what is left in the buffer (all of
    /// it an unfinished frame, after the last [`feed`](Self::feed)): a final
    /// line without `\n` is a frame; a truncated length frame is not.
    pub fn finish(&mut self, rest: &[u8]) -> Remainder {
        self.examined = 0;
        self.codec.remainder(rest)
    }

    /// The most input bytes a connection ever holds for an unfinished frame.
    pub fn max_pending(&self) -> usize {
        self.codec.max_pending()
    }
}

/// Drives a [`Framer`] over `input` cut into `reads` the way the server's
/// echo loop does (feed, echo the batch, drop it; at the end, finish), and
/// returns what is echoed and whether an oversized frame ended it. For
/// tests, benches and fuzzers, so that they exercise the one framer the
/// server runs rather than a copy of its loop.
pub fn echo_reads<'a>(
    framer: &mut Framer,
    reads: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<u8>, Option<FrameError>) {
    let (mut buf, mut echoed) = (Vec::new(), Vec::new());
    for read in reads {
        buf.extend_from_slice(read);
        let batch = framer.feed(&buf);
        echoed.extend(buf.drain(..batch.len));
        if batch.error.is_some() {
            return (echoed, batch.error);
        }
        assert!(
            buf.len() <= framer.max_pending(),
            "held more than the bound"
        );
    }
    let remainder = framer.finish(&buf);
    echoed.extend_from_slice(&buf[..remainder.echo]);
    (echoed, None)
}

/// Yields whole frames as they are on the wire for `lines` and `raw`, and
/// the payload (header stripped) for `length`.
impl Decoder for EchoCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let Some(frame_len) = self.next_frame_len(src)? else {
            return Ok(None);
        };
        let mut frame = src.split_to(frame_len);
        if self.framing == Framing::Length {
            frame.advance(LENGTH_HEADER_LEN);
        }
        Ok(Some(frame))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        let remainder = self.remainder(src);
        if remainder.truncated > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "input ended inside a length frame ({} bytes)",
                    remainder.truncated
                ),
            ));
        }
        Ok((remainder.echo > 0).then(|| src.split_to(remainder.echo)))
    }
}

/// Frames one message: `length` prepends the header; `lines` and `raw` send
/// the bytes as they are (a line carries its own `\n`).
impl Encoder<&[u8]> for EchoCodec {
    type Error = io::Error;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> io::Result<()> {
        if self.framing == Framing::Length {
            let length = u32::try_from(payload.len())
                .ok()
                .filter(|&length| length as usize <= self.max_frame_length)
                .ok_or(FrameError::LengthTooLarge {
                    length: payload.len(),
                    limit: self.max_frame_length,
                })?;
            dst.reserve(LENGTH_HEADER_LEN + payload.len());
            dst.put_u32(length);
        }
        dst.extend_from_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(limit: usize) -> EchoCodec {
        EchoCodec::new(Framing::Lines, limit)
    }

    fn length(limit: usize) -> EchoCodec {
        EchoCodec::new(Framing::Length, limit)
    }

    fn length_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        frame
    }

    /// Feeds `input` in `chunk`-byte reads through the server's framer.
    fn echo_in_chunks(
        codec: EchoCodec,
        input: &[u8],
        chunk: usize,
    ) -> (Vec<u8>, Option<FrameError>) {
        echo_reads(&mut Framer::new(codec, false), input.chunks(chunk.max(1)))
    }

    #[test]
    fn framing_names_round_trip() {
        for framing in Framing::ALL {
            assert_eq!(framing.as_str().parse::<Framing>(), Ok(framing));
        }
        assert!("Lines".parse::<Framing>().is_err());
    }

    #[test]
    fn lines_keep_delimiters_and_bytes_that_are_not_utf8() {
        let input = b"a\r\nb\n\xff\xfe\x00\n";
        for chunk in 1..=input.len() {
            assert_eq!(
                echo_in_chunks(lines(64), input, chunk),
                (input.to_vec(), None)
            );
        }
    }

    #[test]
    fn lines_prefix_stops_at_the_last_newline() {
        let prefix = lines(64).complete_prefix(b"one\ntwo\nthr", 0);
        assert_eq!(
            prefix,
            Prefix {
                len: 8,
                error: None
            }
        );
    }

    #[test]
    fn final_line_without_newline_is_echoed_at_end_of_input() {
        assert_eq!(
            echo_in_chunks(lines(64), b"one\ntail", 3),
            (b"one\ntail".to_vec(), None)
        );
    }

    #[test]
    fn line_of_exactly_the_limit_is_allowed_counting_the_newline() {
        let mut input = vec![b'x'; 9];
        input.push(b'\n');
        assert_eq!(echo_in_chunks(lines(10), &input, 4), (input.clone(), None));
        // An unterminated final frame of exactly the limit is allowed too.
        assert_eq!(
            echo_in_chunks(lines(10), &input[..9], 4),
            (input[..9].to_vec(), None)
        );
        assert_eq!(
            echo_in_chunks(lines(10), &[b'x'; 10], 4),
            (vec![b'x'; 10], None)
        );
    }

    #[test]
    fn line_one_over_the_limit_is_an_error_after_the_frames_before_it() {
        let mut input = b"ok\n".to_vec();
        input.extend_from_slice(&[b'x'; 10]);
        input.push(b'\n');
        for chunk in 1..=input.len() {
            let (echoed, error) = echo_in_chunks(lines(10), &input, chunk);
            assert_eq!(echoed, b"ok\n", "chunk {chunk}");
            assert_eq!(error, Some(FrameError::LineTooLong { limit: 10 }));
        }
    }

    #[test]
    fn oversized_line_is_detected_in_a_large_batch_of_short_ones() {
        // The batch is longer than the limit, so the per-frame check runs.
        let mut input = b"a\nbb\nccc\n".repeat(10);
        input.extend_from_slice(b"0123456789abc\nd\n");
        let prefix = lines(8).complete_prefix(&input, 0);
        assert_eq!(prefix.len, 90);
        assert_eq!(prefix.error, Some(FrameError::LineTooLong { limit: 8 }));
    }

    #[test]
    fn unterminated_line_over_the_limit_is_an_error_before_any_newline() {
        let prefix = lines(1024).complete_prefix(&vec![b'x'; 1025], 0);
        assert_eq!(prefix.len, 0);
        assert_eq!(prefix.error, Some(FrameError::LineTooLong { limit: 1024 }));
        assert_eq!(lines(1024).complete_prefix(&[b'x'; 1024], 0).error, None);
    }

    #[test]
    fn examined_bytes_are_not_searched_again_but_new_ones_are() {
        // With the first 5 bytes declared examined, the newline in them is
        // not searched for: the caller promised there is none.
        let codec = lines(64);
        assert_eq!(codec.complete_prefix(b"abcd\nxyz", 5).len, 0);
        assert_eq!(codec.complete_prefix(b"abcdexy\nz", 5).len, 8);
        // An oversized frame is still caught when its newline is new.
        let mut long = vec![b'x'; 100];
        long.push(b'\n');
        assert_eq!(
            codec.complete_prefix(&long, 60).error,
            Some(FrameError::LineTooLong { limit: 64 })
        );
    }

    #[test]
    fn raw_echoes_everything_and_has_no_limit() {
        let codec = EchoCodec::new(Framing::Raw, 1);
        let input = vec![7u8; 10_000];
        assert_eq!(echo_in_chunks(codec, &input, 333), (input.clone(), None));
    }

    #[test]
    fn length_frames_round_trip_including_empty_ones() {
        let mut input = length_frame(b"hello");
        input.extend(length_frame(b""));
        input.extend(length_frame(&[0xff; 300]));
        for chunk in 1..=input.len() {
            assert_eq!(
                echo_in_chunks(length(300), &input, chunk),
                (input.clone(), None)
            );
        }
    }

    #[test]
    fn truncated_length_frame_at_end_is_not_echoed() {
        let mut input = length_frame(b"whole");
        let truncated = length_frame(b"cut short");
        input.extend_from_slice(&truncated[..7]);
        let (echoed, error) = echo_in_chunks(length(64), &input, 5);
        assert_eq!((echoed, error), (length_frame(b"whole"), None));
        assert_eq!(
            length(64).remainder(&truncated[..7]),
            Remainder {
                echo: 0,
                truncated: 7
            }
        );
    }

    #[test]
    fn length_header_over_the_limit_is_an_error_without_waiting_for_the_body() {
        let mut input = length_frame(b"ok");
        input.extend_from_slice(&65u32.to_be_bytes());
        let prefix = length(64).complete_prefix(&input, 0);
        assert_eq!(prefix.len, 6);
        assert_eq!(
            prefix.error,
            Some(FrameError::LengthTooLarge {
                length: 65,
                limit: 64
            })
        );
        assert!(length(65).complete_prefix(&input, 0).error.is_none());
    }

    #[test]
    fn decoder_yields_lines_whole_and_length_payloads_bare() {
        let mut codec = lines(64);
        let mut buf = BytesMut::from(&b"a\r\nb\ntail"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"a\r\n"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"b\n"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(codec.decode_eof(&mut buf).unwrap().unwrap(), &b"tail"[..]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);

        let mut codec = length(64);
        let mut buf = BytesMut::new();
        codec.encode(&b"payload"[..], &mut buf).unwrap();
        codec.encode(&b""[..], &mut buf).unwrap();
        assert_eq!(&buf[..4], &7u32.to_be_bytes());
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"payload"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b""[..]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn decoder_reports_truncated_and_oversized_frames_as_errors() {
        let mut codec = length(4);
        let mut buf = BytesMut::from(&length_frame(b"abc")[..5]);
        assert_eq!(
            codec.decode_eof(&mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut buf = BytesMut::from(&length_frame(b"abcde")[..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert!(codec.encode(&b"abcde"[..], &mut BytesMut::new()).is_err());
    }
}
