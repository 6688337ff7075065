//! The server's TLS: its rustls configuration from the configured files,
//! the verified client's subject for logs, and the echo loop's view of a
//! TLS stream.

use std::{
    io::{self, Read},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::BytesMut;
use rustls::{pki_types::CertificateDer, server::WebPkiClientVerifier, ServerConfig};

use super::{load_certs, load_key, load_roots, provider, TlsError, VERSIONS};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    config::TlsFiles,
    stream::{EchoStream, InputClock},
};

/// Resumption tickets a server remembers for `max_connections`: TLS 1.3
/// issues two per handshake and rustls's store hands each out once, so
/// clients that reconnect while this many others hold unused tickets still
/// resume. rustls's default, 256, made QUIC and TLS clients fall back to
/// full handshakes (and QUIC to no 0-RTT) past about 128 resuming at once.
/// Each entry is a few hundred bytes (more with a client certificate).
pub fn session_cache_size(max_connections: usize) -> usize {
    max_connections.saturating_mul(2).clamp(256, 65_536)
}

/// The server's TLS configuration, from `files` (cert and key required),
/// remembering `sessions` resumption tickets. A certificate outside its
/// validity period is a warning: clients will refuse it, but the operator
/// may be testing exactly that.
pub fn server_config(
    files: &TlsFiles,
    sessions: usize,
    warnings: &mut Vec<String>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (Some(cert_path), Some(key_path)) = (&files.cert, &files.key) else {
        return Err(TlsError(
            "a TLS listener needs tls_cert and tls_key (--tls-cert FILE --tls-key FILE)".into(),
        ));
    };
    let certs = load_certs(cert_path, "tls_cert")?;
    let key = load_key(key_path, "tls_key")?;
    if let Some(problem) = validity_problem(&certs[0]) {
        warnings.push(format!("tls_cert {}: {problem}", cert_path.display()));
    }
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|error| TlsError(format!("TLS setup: {error}")))?;
    let builder = match &files.client_ca {
        Some(ca_path) => {
            let roots = load_roots(ca_path, "tls_client_ca")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|error| {
                    TlsError(format!("tls_client_ca {}: {error}", ca_path.display()))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|error| {
        TlsError(format!(
            "tls_cert {} and tls_key {}: {}",
            cert_path.display(),
            key_path.display(),
            match error {
                rustls::Error::InconsistentKeys(_) =>
                    "the private key does not match the certificate".to_owned(),
                other => other.to_string(),
            }
        ))
    })?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(sessions);
    Ok(Arc::new(config))
}

/// "expired on …" or "not valid before …", if the certificate is not
/// valid now.
fn validity_problem(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        Some(format!("the certificate expired on {}", validity.not_after))
    } else if now < validity.not_before {
        Some(format!(
            "the certificate is not valid before {}",
            validity.not_before
        ))
    } else {
        None
    }
}

/// The subject of a verified client certificate (mutual TLS), for logs:
/// `CN=client-1, O=Example`.
pub fn peer_subject(connection: &rustls::ServerConnection) -> Option<String> {
    let leaf = connection.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(parsed.subject().to_string())
}

/// A TLS connection served by the echo loop.
impl<IO: EchoStream> EchoStream for tokio_rustls::server::TlsStream<IO> {
    /// A write may leave encrypted records in the session.
    const NEEDS_FLUSH: bool = true;

    /// The record meter's clock, when the session runs over [`Records`].
    fn input_clock(&self) -> Option<Arc<InputClock>> {
        self.get_ref().0.input_clock()
    }

    /// Always ready: decrypted bytes may wait inside the TLS session while
    /// the socket is quiet, so only a read can tell. (A read that has to
    /// wait still gives its buffer back to the pool.)
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The plaintext of every record that has arrived, without waiting:
    /// what the session holds already, then what the socket holds (read
    /// with a real non-blocking `recv`, as for plain sockets).
    fn read_arrived(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let (socket, session) = self.get_mut();
        let before = buf.len();
        let mut closed = drain_plaintext(session, buf)?;
        while !closed && buf.len() == before {
            let mut ciphertext = BytesMut::with_capacity(16 * 1024 + 512);
            match socket.read_arrived(&mut ciphertext)? {
                None => return Ok(None),
                Some(0) => {
                    closed = true;
                    break;
                }
                Some(_) => {}
            }
            let mut records = &ciphertext[..];
            while !records.is_empty() {
                // Once the peer's close_notify has arrived, rustls takes no
                // more input (read_tls returns 0): what follows it is
                // discarded and the stream is closed. Every pass of this
                // loop consumes input or stops.
                if session.read_tls(&mut records)? == 0 {
                    closed = true;
                    break;
                }
                session
                    .process_new_packets()
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                closed |= drain_plaintext(session, buf)?;
            }
        }
        let read = buf.len() - before;
        Ok(if read > 0 || closed { Some(read) } else { None })
    }
}

/// Moves the session's decrypted bytes into `buf`; true once the peer has
/// closed the TLS stream (close_notify).
fn drain_plaintext(session: &mut rustls::ServerConnection, buf: &mut BytesMut) -> io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match session.reader().read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(read) => buf.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(error) => return Err(error),
        }
    }
}

/// Size of a TLS record header: type, version, 16-bit length.
const RECORD_HEADER: usize = 5;

/// The byte stream under a TLS session, watched for record boundaries:
/// while a record is incomplete its [`InputClock`] runs, so the echo
/// loop's frame timeout also covers a client that dribbles the ciphertext
/// of one record (rustls shows the loop nothing until the record is whole).
/// It only counts bytes; rustls parses and checks them.
pub struct Records<IO> {
    io: IO,
    clock: Arc<InputClock>,
    header: [u8; RECORD_HEADER],
    /// Header bytes of the next record seen so far.
    have: usize,
    /// Body bytes of the current record still to come.
    remaining: usize,
}

impl<IO> Records<IO> {
    pub fn new(io: IO) -> Records<IO> {
        Records {
            io,
            clock: Arc::new(InputClock::default()),
            header: [0; RECORD_HEADER],
            have: 0,
            remaining: 0,
        }
    }

    fn saw(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (RECORD_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == RECORD_HEADER {
                self.remaining = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
                self.have = 0;
            }
        }
        if self.have > 0 || self.remaining > 0 {
            self.clock.incomplete();
        } else {
            self.clock.complete();
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Records<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.saw(&buf.filled()[before..]);
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Records<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO: EchoStream> EchoStream for Records<IO> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_read_ready(cx)
    }

    fn read_arrived(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let before = buf.len();
        let read = self.io.read_arrived(buf)?;
        self.saw(&buf[before..]);
        Ok(read)
    }

    fn input_clock(&self) -> Option<Arc<InputClock>> {
        Some(self.clock.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_incomplete_until_their_last_byte() {
        let mut records = Records::new(());
        let record = [&[0x17, 0x03, 0x03, 0x00, 0x03][..], b"abc"].concat();
        let two = [record.as_slice(), record.as_slice()].concat();
        for cut in 0..=two.len() {
            records.saw(&two[..cut]);
            let whole = cut == 0 || cut == record.len() || cut == two.len();
            assert_eq!(records.clock.since().is_none(), whole, "cut at {cut}");
            records.saw(&two[cut..]);
            assert!(records.clock.since().is_none());
        }
    }
}
