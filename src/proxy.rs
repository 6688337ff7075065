//! PROXY protocol (HAProxy's v1 text and v2 binary headers), parsed by the
//! `ppp` crate.
//!
//! Behind a load balancer every connection comes from the balancer's
//! address. With `proxy_protocol` on, the balancer starts each connection
//! with a header naming the real client; [`read_header`] reads it before the
//! echo starts (it is never echoed), and the server uses the client's
//! `IP:PORT` in its logs, limits and metrics. Bytes that arrived behind the
//! header are handed to the echo loop through [`Rewind`], so none is lost.

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    str::FromStr,
    task::{Context, Poll},
};

use bytes::{Buf, BytesMut};
use ppp::{v1, v2, HeaderResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connection::EchoStream;

/// Longest v1 header, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// Longest v2 header: 16 fixed bytes and a 16-bit length of addresses and TLVs.
const V2_MAX: usize = 16 + u16::MAX as usize;

/// Which PROXY protocol header, if any, starts every stream connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// No header: the socket's peer is the client.
    #[default]
    Off,
    /// The text header (`PROXY TCP4 …\r\n`, HAProxy `send-proxy`).
    V1,
    /// The binary header (HAProxy `send-proxy-v2`).
    V2,
    /// Either version; a header is still required.
    Any,
}

impl ProxyProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
            ProxyProtocol::Any => "any",
        }
    }
}

impl FromStr for ProxyProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" => Ok(ProxyProtocol::Off),
            "v1" => Ok(ProxyProtocol::V1),
            "v2" => Ok(ProxyProtocol::V2),
            "any" => Ok(ProxyProtocol::Any),
            _ => Err(format!(
                "unknown PROXY protocol setting {s:?} (expected off, v1, v2 or any)"
            )),
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("connection closed before a PROXY header ({0} byte(s) received)")]
    Closed(usize),
    #[error("malformed PROXY {version} header: {problem}")]
    Malformed {
        version: &'static str,
        problem: String,
    },
    #[error("expected a PROXY {expected} header, got {got}")]
    WrongVersion {
        expected: &'static str,
        got: &'static str,
    },
    #[error("no PROXY header (the connection starts with {0:?})")]
    Missing(String),
    #[error("no complete PROXY header within {0:?}")]
    Timeout(std::time::Duration),
    #[error("server shutting down before a PROXY header arrived")]
    Shutdown,
    #[error("socket error while reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

impl HeaderError {
    /// A connection that closed without sending a byte (a TCP health
    /// check, a port scan) is routine; everything else is worth a log line.
    pub fn is_routine(&self) -> bool {
        matches!(self, HeaderError::Closed(0) | HeaderError::Shutdown)
    }
}

/// What a complete header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The real client, or `None` when the header names no address (v1
    /// `UNKNOWN`, v2 `LOCAL` such as the balancer's own health checks,
    /// or a non-IP family): then the socket's peer stands.
    pub source: Option<SocketAddr>,
    /// Length of the header in bytes, which are not echoed.
    pub len: usize,
}

/// Looks for a complete header at the start of `input`: `Ok(None)` when more
/// bytes are needed.
pub fn parse(mode: ProxyProtocol, input: &[u8]) -> Result<Option<Header>, HeaderError> {
    let got = sniff(input);
    let wrong = |expected| HeaderError::WrongVersion { expected, got };
    let result = match (mode, got) {
        (ProxyProtocol::Off, _) => {
            return Ok(Some(Header {
                source: None,
                len: 0,
            }))
        }
        (_, "nothing yet") => return Ok(None),
        (ProxyProtocol::V1, "a v2 header") => return Err(wrong("v1")),
        (ProxyProtocol::V2, "a v1 header") => return Err(wrong("v2")),
        (_, "no header") => {
            let start = String::from_utf8_lossy(&input[..input.len().min(16)]).into_owned();
            return Err(HeaderError::Missing(start));
        }
        // ppp's own notion of "incomplete" misjudges some cuts of a v1
        // header (a cut right after a space reads as a bad port), so
        // completeness is decided here, by the spec's framing, and ppp
        // parses only whole headers.
        (_, "a v1 header") => match memchr::memmem::find(input, b"\r\n") {
            Some(end) => HeaderResult::V1(v1::Header::try_from(&input[..end + 2])),
            None if input.len() < V1_MAX => return Ok(None),
            None => HeaderResult::V1(v1::Header::try_from(input)),
        },
        _ => {
            let Some(length) = input.get(14..16) else {
                return Ok(None);
            };
            let end = 16 + u16::from_be_bytes([length[0], length[1]]) as usize;
            if input.len() < end {
                return Ok(None);
            }
            HeaderResult::V2(v2::Header::try_from(&input[..end]))
        }
    };
    match result {
        HeaderResult::V1(Ok(header)) => Ok(Some(Header {
            source: match header.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                v1::Addresses::Unknown => None,
            },
            len: header.header.len(),
        })),
        HeaderResult::V2(Ok(header)) => Ok(Some(Header {
            source: match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => None,
            },
            len: header.header.len(),
        })),
        HeaderResult::V1(Err(error)) => Err(HeaderError::Malformed {
            version: "v1",
            problem: error.to_string(),
        }),
        HeaderResult::V2(Err(error)) => Err(HeaderError::Malformed {
            version: "v2",
            problem: error.to_string(),
        }),
    }
}

/// Which header `input` starts with, judged on its first bytes.
fn sniff(input: &[u8]) -> &'static str {
    let starts = |signature: &[u8]| {
        let n = input.len().min(signature.len());
        input[..n] == signature[..n]
    };
    if input.is_empty() {
        "nothing yet"
    } else if starts(v2::PROTOCOL_PREFIX) {
        if input.len() < v2::PROTOCOL_PREFIX.len() {
            "nothing yet"
        } else {
            "a v2 header"
        }
    } else if starts(b"PROXY ") {
        if input.len() < 6 {
            "nothing yet"
        } else {
            "a v1 header"
        }
    } else {
        "no header"
    }
}

/// Reads the header from the start of `stream`. On success `buf` holds the
/// bytes that arrived after the header, which belong to the echo.
/// Reads are capped at what the longest header needs, so a client cannot
/// make the server buffer more than that before the echo's own limits apply.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    mode: ProxyProtocol,
    buf: &mut BytesMut,
) -> Result<Header, HeaderError> {
    use tokio::io::AsyncReadExt;
    let most = match mode {
        ProxyProtocol::V1 => V1_MAX,
        _ => V2_MAX,
    };
    loop {
        if let Some(header) = parse(mode, buf)? {
            buf.advance(header.len);
            return Ok(header);
        }
        if buf.len() >= most {
            // parse() reports an overlong header itself; this is a backstop.
            return Err(HeaderError::Malformed {
                version: if mode == ProxyProtocol::V1 {
                    "v1"
                } else {
                    "v2"
                },
                problem: format!("longer than {most} bytes"),
            });
        }
        // Small reads first: a header is usually one short segment.
        buf.reserve(512.min(most - buf.len()));
        let room = (most - buf.len()).min(buf.capacity() - buf.len());
        let read = (&mut *stream).take(room as u64).read_buf(buf).await?;
        if read == 0 {
            return Err(HeaderError::Closed(buf.len()));
        }
    }
}

/// The v2 header a balancer sends for a TCP connection from `source` to
/// `destination` (for clients and tests that stand in for one).
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .expect("a header of two socket addresses fits")
}

/// A stream with bytes already read from it put back in front.
pub struct Rewind<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: EchoStream> EchoStream for Rewind<S> {
    const NEEDS_FLUSH: bool = S::NEEDS_FLUSH;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_read_ready(cx)
    }

    fn read_arrived(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len();
            buf.extend_from_slice(&self.prefix);
            self.prefix.clear();
            return Ok(Some(n));
        }
        self.inner.read_arrived(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(source: &str, destination: &str) -> Vec<u8> {
        super::v2_header(source.parse().unwrap(), destination.parse().unwrap())
    }

    #[test]
    fn v1_header_gives_the_client_address_and_its_length() {
        let input = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 3600\r\nhello\n";
        let header = parse(ProxyProtocol::V1, input).unwrap().unwrap();
        assert_eq!(header.source, Some("192.0.2.7:51234".parse().unwrap()));
        assert_eq!(&input[header.len..], b"hello\n");
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 3600\r\n";
        let header = parse(ProxyProtocol::Any, v6).unwrap().unwrap();
        assert_eq!(header.source, Some("[2001:db8::7]:4000".parse().unwrap()));
    }

    #[test]
    fn v2_header_gives_the_client_address_and_its_length() {
        let mut input = v2_header("203.0.113.9:40000", "127.0.0.1:3600");
        let len = input.len();
        input.extend_from_slice(b"payload");
        for mode in [ProxyProtocol::V2, ProxyProtocol::Any] {
            let header = parse(mode, &input).unwrap().unwrap();
            assert_eq!(header.source, Some("203.0.113.9:40000".parse().unwrap()));
            assert_eq!(header.len, len);
        }
    }

    #[test]
    fn every_split_of_a_header_asks_for_more_until_it_is_complete() {
        let v1 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 3600\r\n".to_vec();
        let v2 = v2_header("[2001:db8::7]:4000", "[2001:db8::1]:3600");
        for (mode, header) in [
            (ProxyProtocol::V1, &v1),
            (ProxyProtocol::V2, &v2),
            (ProxyProtocol::Any, &v1),
            (ProxyProtocol::Any, &v2),
        ] {
            for cut in 0..header.len() {
                assert!(
                    matches!(parse(mode, &header[..cut]), Ok(None)),
                    "{mode} header cut at {cut}: {:?}",
                    parse(mode, &header[..cut])
                );
            }
            assert!(parse(mode, header).unwrap().is_some());
        }
    }

    #[test]
    fn missing_malformed_and_wrong_version_headers_are_refused() {
        let err = |mode, input: &[u8]| parse(mode, input).unwrap_err().to_string();
        assert!(err(ProxyProtocol::V1, b"hello\n").contains("no PROXY header"));
        assert!(err(ProxyProtocol::Any, b"GET / HTTP/1.0\r\n").contains("no PROXY header"));
        assert!(err(ProxyProtocol::V1, b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n").contains("malformed"));
        assert!(err(ProxyProtocol::V1, b"PROXY TCP5 x\r\n").contains("malformed"));
        let v2 = v2_header("10.0.0.1:1", "10.0.0.2:2");
        assert!(err(ProxyProtocol::V1, &v2).contains("expected a PROXY v1 header, got a v2"));
        assert!(err(ProxyProtocol::V2, b"PROXY UNKNOWN\r\n").contains("got a v1 header"));
        // Longer than the spec's 107 bytes without a CRLF.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(err(ProxyProtocol::V1, &long).contains("malformed"));
    }

    #[test]
    fn headers_without_an_address_keep_the_socket_peer() {
        let header = parse(ProxyProtocol::V1, b"PROXY UNKNOWN\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(header.source, None);
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        let header = parse(ProxyProtocol::V2, &local).unwrap().unwrap();
        assert_eq!((header.source, header.len), (None, local.len()));
    }
}
