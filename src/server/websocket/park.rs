//! What lets an idle WebSocket hold no buffer: the stream under
//! tungstenite, wrapped so that the echo loop knows when tungstenite holds
//! nothing of the client's input. tungstenite keeps a read buffer (and a
//! write buffer) for as long as it lives and has no way to release them,
//! so an idle WebSocket is *parked*: tungstenite is dropped and the bare
//! stream waits for readiness, as the TCP echo loop does, then a new
//! tungstenite takes it over.
//!
//! Dropping tungstenite is safe only when it holds no input: no part of a
//! frame, no frame it has not parsed, no fragment of a message it is
//! reassembling. [`Scanned`] follows the frame boundaries of every byte it
//! hands tungstenite (headers only: a few bytes of state, no copy) and
//! notes whether tungstenite's last read found nothing, which it only
//! tries once every complete frame in its buffer is parsed.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Frame boundaries in a client's byte stream (RFC 6455 §5.2).
#[derive(Debug, Default)]
pub struct FrameScan {
    /// Header bytes of the frame in progress.
    header: [u8; 14],
    /// How many of them have arrived (0: between frames or in a payload).
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A data frame without FIN began a message whose end has not come.
    fragmented: bool,
}

impl FrameScan {
    /// Follows `bytes`, the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have >= 2 && self.have == self.header_len() {
                self.frame_header_done();
            }
        }
    }

    /// The whole header's length, once its first two bytes are in.
    fn header_len(&self) -> usize {
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn frame_header_done(&mut self) {
        let (fin, opcode) = (self.header[0] & 0x80 != 0, self.header[0] & 0x0f);
        self.payload_left = match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            short => u64::from(short),
        };
        // Control frames (0x8 and up) may come between fragments and change
        // nothing; continuation (0x0), text and binary frames end a message
        // only with FIN.
        if opcode < 0x8 {
            self.fragmented = !fin;
        }
        self.have = 0;
    }

    /// Every byte so far belongs to a complete frame, and no message is
    /// half-assembled.
    pub fn at_message_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0 && !self.fragmented
    }
}

/// The stream under tungstenite: reads are scanned for frame boundaries.
pub struct Scanned<S> {
    pub stream: S,
    scan: FrameScan,
    /// The last read found nothing to read (it returned pending).
    drained: bool,
}

impl<S> Scanned<S> {
    /// `stream`, after `already` (bytes read past the HTTP upgrade, which
    /// tungstenite is given first).
    pub fn new(stream: S, already: &[u8]) -> Scanned<S> {
        let mut scan = FrameScan::default();
        scan.feed(already);
        Scanned {
            stream,
            scan,
            drained: false,
        }
    }

    /// tungstenite can be dropped without losing input: its last read found
    /// nothing (so every complete frame it had is parsed), every byte it
    /// was given ends a frame, and no message is half-assembled.
    pub fn holds_nothing(&self) -> bool {
        self.drained && self.scan.at_message_boundary()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Scanned<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.drained = polled.is_pending();
        if let Poll::Ready(Ok(())) = polled {
            this.scan.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Scanned<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame: FIN flag, opcode, payload.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend_from_slice(payload);
        out
    }

    /// Every split of `stream` into two reads: the scan is at a message
    /// boundary after the first part exactly when `boundaries` says so.
    fn check_every_split(stream: &[u8], boundaries: &[usize]) {
        for split in 0..=stream.len() {
            let mut scan = FrameScan::default();
            scan.feed(&stream[..split]);
            assert_eq!(
                scan.at_message_boundary(),
                boundaries.contains(&split),
                "after {split} of {} bytes",
                stream.len()
            );
            scan.feed(&stream[split..]);
            assert!(scan.at_message_boundary(), "at the end, split at {split}");
        }
    }

    #[test]
    fn boundaries_of_short_extended_and_empty_frames() {
        let (a, b, c) = (
            frame(true, 0x2, b"hello"),
            frame(true, 0x1, &[b'x'; 300]),
            frame(true, 0x2, b""),
        );
        let d = frame(true, 0x2, &vec![7u8; 70_000]);
        let stream = [a.clone(), b.clone(), c.clone(), d.clone()].concat();
        let ends = [
            0,
            a.len(),
            a.len() + b.len(),
            a.len() + b.len() + c.len(),
            stream.len(),
        ];
        check_every_split(&stream, &ends);
    }

    #[test]
    fn a_fragmented_message_ends_only_at_its_final_fragment() {
        let (first, ping, last) = (
            frame(false, 0x1, b"hel"),
            frame(true, 0x9, b"p"),
            frame(true, 0x0, b"lo"),
        );
        let stream = [first.clone(), ping.clone(), last.clone()].concat();
        // Between fragments (even after the ping) a message is half-built.
        check_every_split(&stream, &[0, stream.len()]);
    }

    #[test]
    fn control_frames_alone_are_boundaries() {
        let (ping, pong) = (frame(true, 0x9, b""), frame(true, 0xA, b"abc"));
        let stream = [ping.clone(), pong.clone()].concat();
        check_every_split(&stream, &[0, ping.len(), stream.len()]);
    }
}
