//! TLS with rustls (the `ring` provider): server and client configuration
//! from PEM files, and the echo loop's view of a TLS stream.
//!
//! Only TLS 1.2 and 1.3 are offered, with rustls's default (modern) cipher
//! suites. The server's files are loaded and checked at start-up (the key
//! must match the certificate), so a bad file is exit 2 before anything is
//! served, never an error at the first connection. `tls_client_ca` turns on
//! mutual TLS: every client must present a certificate that chains to it.

use std::{
    io::{self, Read},
    path::{Path, PathBuf},
    sync::Arc,
    task::{Context, Poll},
};

use bytes::BytesMut;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::WebPkiClientVerifier,
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{config::TlsFiles, connection::EchoStream};

/// A TLS file that cannot be used; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The crypto provider everything here uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Every certificate in a PEM file; none is an error.
fn load_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |problem: String| TlsError(format!("{key} {}: {problem}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| bad(pem_problem(error)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(pem_problem(error)))?;
    if certs.is_empty() {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| {
        TlsError(format!(
            "{key} {}: {}",
            path.display(),
            match error {
                rustls::pki_types::pem::Error::NoItemsFound =>
                    "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".into(),
                other => pem_problem(other),
            }
        ))
    })
}

fn pem_problem(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(error) => format!("cannot read: {error}"),
        other => format!("not valid PEM: {other}"),
    }
}

/// A CA bundle as a root store.
fn load_roots(path: &Path, key: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, key)? {
        roots.add(cert).map_err(|error| {
            TlsError(format!(
                "{key} {}: not a usable CA certificate: {error}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

/// The server's TLS configuration, from `files` (cert and key required).
/// A certificate outside its validity period is a warning: clients will
/// refuse it, but the operator may be testing exactly that.
pub fn server_config(
    files: &TlsFiles,
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
    let config = builder.with_single_cert(certs, key).map_err(|error| {
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

/// How the client authenticates the server, and itself.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// CA certificates (PEM) to verify a tls: server with, instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require one (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name to verify the server's certificate against [default: the host
    /// in ADDR].
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Do not verify the server's certificate. For testing only: anyone in
    /// the path can read and change the traffic.
    #[arg(long)]
    pub tls_insecure: bool,
}

/// The client's TLS configuration: system roots (or `--tls-ca`), and a
/// client certificate when given.
pub fn client_config(args: &ClientTlsArgs) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|error| TlsError(format!("TLS setup: {error}")))?;
    let builder = if args.tls_insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoServerVerification(provider())))
    } else {
        let roots = match &args.tls_ca {
            Some(path) => load_roots(path, "--tls-ca")?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    };
    let config = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert, "--tls-cert")?, load_key(key, "--tls-key")?)
            .map_err(|error| {
                TlsError(format!(
                    "--tls-cert {} and --tls-key {}: {error}",
                    cert.display(),
                    key.display()
                ))
            })?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError(format!(
            "no system CA certificates found ({}); pass --tls-ca FILE",
            found
                .errors
                .first()
                .map_or_else(|| "none installed".to_owned(), ToString::to_string)
        )));
    }
    Ok(roots)
}

/// The name to verify the server as: `--tls-server-name`, else the host
/// of ADDR (a name or an IP address).
pub fn server_name(args: &ClientTlsArgs, host: &str) -> Result<ServerName<'static>, TlsError> {
    let name = args.tls_server_name.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_owned())
        .map_err(|_| TlsError(format!("{name:?} is not a valid TLS server name")))
}

/// `--tls-insecure`: accepts any certificate, still checking that the
/// handshake is signed by its key.
#[derive(Debug)]
struct NoServerVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection served by the echo loop.
impl<IO: EchoStream> EchoStream for tokio_rustls::server::TlsStream<IO> {
    /// A write may leave encrypted records in the session.
    const NEEDS_FLUSH: bool = true;

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
                session.read_tls(&mut records)?;
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

/// Client-side TLS stream over any transport.
pub type ClientStream<IO> = tokio_rustls::client::TlsStream<IO>;

/// Connects TLS over `stream`.
pub async fn connect<IO>(
    stream: IO,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<ClientStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}
