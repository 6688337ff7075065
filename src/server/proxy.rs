//! PROXY protocol (HAProxy's v1 text and v2 binary headers), parsed by the
//! `ppp` crate.
//!
//! Behind a load balancer every connection comes from the balancer's
//! address. With `proxy_protocol` on, the balancer starts each connection
//! with a header naming the real client; [`read_header`] reads it before the
//! echo starts (it is never echoed), and the server uses the client's
//! `IP:PORT` in its logs, limits and metrics. Bytes that arrived behind the
//! header are handed to the echo loop through [`crate::stream::Rewind`], so none is lost.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use bytes::{Buf, BytesMut};
use ppp::{v1, v2, HeaderResult};
use tokio::io::AsyncRead;

pub use crate::config::ProxyProtocol;

/// Longest v1 header, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;
/// Longest v2 header: 16 fixed bytes and a 16-bit length of addresses and TLVs.
const V2_MAX: usize = 16 + u16::MAX as usize;

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
    let got = Start::of(input);
    let wrong = |expected| HeaderError::WrongVersion {
        expected,
        got: got.label(),
    };
    let result = match (mode, got) {
        (ProxyProtocol::Off, _) => {
            return Ok(Some(Header {
                source: None,
                len: 0,
            }))
        }
        (_, Start::NothingYet) => return Ok(None),
        (ProxyProtocol::V1, Start::V2) => return Err(wrong("v1")),
        (ProxyProtocol::V2, Start::V1) => return Err(wrong("v2")),
        (_, Start::NoHeader) => {
            let start = String::from_utf8_lossy(&input[..input.len().min(16)]).into_owned();
            return Err(HeaderError::Missing(start));
        }
        // ppp's own notion of "incomplete" misjudges some cuts of a v1
        // header (a cut right after a space reads as a bad port), so
        // completeness is decided here, by the spec's framing, and ppp
        // parses only whole headers.
        (_, Start::V1) => match memchr::memmem::find(input, b"\r\n") {
            Some(end) => HeaderResult::V1(v1::Header::try_from(&input[..end + 2])),
            None if input.len() < V1_MAX => return Ok(None),
            None => HeaderResult::V1(v1::Header::try_from(input)),
        },
        (_, Start::V2) => {
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

/// How a connection starts, judged on its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// Too few bytes to tell.
    NothingYet,
    V1,
    V2,
    /// Not a PROXY header at all.
    NoHeader,
}

impl Start {
    fn of(input: &[u8]) -> Start {
        let starts = |signature: &[u8]| {
            let n = input.len().min(signature.len());
            input[..n] == signature[..n]
        };
        match input.len() {
            0 => Start::NothingYet,
            n if starts(v2::PROTOCOL_PREFIX) => {
                if n < v2::PROTOCOL_PREFIX.len() {
                    Start::NothingYet
                } else {
                    Start::V2
                }
            }
            n if starts(b"PROXY ") => {
                if n < 6 {
                    Start::NothingYet
                } else {
                    Start::V1
                }
            }
            _ => Start::NoHeader,
        }
    }

    /// What error messages call it.
    fn label(self) -> &'static str {
        match self {
            Start::NothingYet => "nothing yet",
            Start::V1 => "a v1 header",
            Start::V2 => "a v2 header",
            Start::NoHeader => "no header",
        }
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
