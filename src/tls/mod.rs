//! TLS with rustls (the `ring` provider): certificates and keys from PEM
//! files, shared by the server's configuration ([`server`]) and the
//! client's ([`client`]).
//!
//! Only TLS 1.2 and 1.3 are offered, with rustls's default (modern) cipher
//! suites. The server's files are loaded and checked before anything is
//! bound (the key must match the certificate), so a bad file is exit 2
//! before anything is served, never an error at the first connection.
//! `tls_client_ca` turns on mutual TLS: every client must present a
//! certificate that chains to it.

pub mod client;
pub mod server;

use std::{path::Path, sync::Arc};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    RootCertStore,
};

pub use client::{client_config, connect, server_name, ClientStream, ClientTlsArgs};
pub use server::{peer_subject, server_config, session_cache_size};

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
