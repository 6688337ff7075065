//! The client's TLS: its rustls configuration from the `--tls-*` flags,
//! the name to verify, and the connector.

use std::{io, path::PathBuf, sync::Arc};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{load_certs, load_key, load_roots, provider, TlsError, VERSIONS};

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
