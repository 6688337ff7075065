//! A throwaway PKI for TLS tests (rcgen): no key material is committed.
#![allow(dead_code)] // each test crate uses its own subset

use std::{net::SocketAddr, path::PathBuf};

use echod::{config::Endpoint, tls::ClientTlsArgs, Config};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};

use super::{config, ServerProcess};

/// A throwaway PKI in a temporary directory: a CA, a server certificate
/// for localhost and 127.0.0.1, a client certificate, a second CA with
/// its own client, and an expired server certificate.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();

        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let leaf = |issuer: &Issuer<KeyPair>,
                    cn: &str,
                    sans: Vec<String>,
                    usage: ExtendedKeyUsagePurpose,
                    expired: bool| {
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, cn);
            params
                .distinguished_name
                .push(DnType::OrganizationName, "echod tests");
            params.extended_key_usages = vec![usage];
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let server_names = || vec!["localhost".to_owned(), "127.0.0.1".to_owned()];

        let (ca_pem, ca_issuer) = ca("echod test CA");
        write("ca.pem", ca_pem);
        let (cert, key) = leaf(
            &ca_issuer,
            "localhost",
            server_names(),
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        );
        write("server.pem", cert);
        write("server-key.pem", key);
        let (cert, key) = leaf(
            &ca_issuer,
            "client-1",
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        );
        write("client.pem", cert);
        write("client-key.pem", key);
        let (cert, key) = leaf(
            &ca_issuer,
            "localhost",
            server_names(),
            ExtendedKeyUsagePurpose::ServerAuth,
            true,
        );
        write("expired.pem", cert);
        write("expired-key.pem", key);

        let (other_pem, other_issuer) = ca("another CA");
        write("other-ca.pem", other_pem);
        let (cert, key) = leaf(
            &other_issuer,
            "intruder",
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        );
        write("other-client.pem", cert);
        write("other-client-key.pem", key);
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// A server config with a TLS listener on port 0.
    pub fn server_config(&self) -> Config {
        Config {
            listen: vec![Endpoint::Tls("127.0.0.1:0".parse().unwrap())],
            tls: echod::config::TlsFiles {
                cert: Some(self.path("server.pem")),
                key: Some(self.path("server-key.pem")),
                client_ca: None,
            },
            ..config()
        }
    }

    /// The real binary with a TLS listener on port 0 (and `extra` flags),
    /// and that listener's address.
    pub fn spawn_server(&self, extra: &[&str]) -> (ServerProcess, SocketAddr) {
        let (cert, key) = (self.arg("server.pem"), self.arg("server-key.pem"));
        let mut args = vec![
            "--listen",
            "tls:127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        args.extend_from_slice(extra);
        let mut server = ServerProcess::spawn(&args, &[]);
        let addr = server.listening_tls();
        (server, addr)
    }

    pub fn client_args(&self, ca: &str, client: Option<(&str, &str)>) -> ClientTlsArgs {
        ClientTlsArgs {
            tls_ca: Some(self.path(ca)),
            tls_cert: client.map(|(cert, _)| self.path(cert)),
            tls_key: client.map(|(_, key)| self.path(key)),
            tls_server_name: None,
            tls_insecure: false,
        }
    }
}
