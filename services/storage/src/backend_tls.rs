//! Client TLS to the shared backends: Redis (`rediss://`) and ScyllaDB (`storage.scylla.tls`).
//!
//! Both take the same three optional files: a CA bundle that replaces the system's roots
//! (a backend behind a private CA is the usual case, and trusting every public CA as well
//! would let any of them vouch for it), and a client certificate with its key for servers
//! that require one. The files are read and checked here, once, when the store connects: a
//! missing file, a PEM without a certificate or a key that does not belong to its
//! certificate fails the start with the configuration key's name, instead of every
//! handshake failing later with a bare rustls error. A rotated file takes a restart.

use crate::{StoreError, StoreResult};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The `tls_*` keys of one configuration section.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TlsFiles<'a> {
    /// `storage.redis` or `storage.scylla`, for error messages.
    pub section: &'a str,
    pub ca: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

/// The files' contents, checked: the PEM as read (the redis crate takes PEM and parses its
/// own copy) and the parsed certificates (for a rustls configuration of our own).
pub(crate) struct LoadedTls {
    pub ca_pem: Option<Vec<u8>>,
    roots: Option<RootCertStore>,
    /// Client certificate chain PEM and key PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    parsed_identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

fn invalid(section: &str, key: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!("{section}.{key} {}: {e}", path.display()))
}

fn read(section: &str, key: &str, path: &Path) -> StoreResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| invalid(section, key, path, e))
}

fn certificates(
    section: &str,
    key: &str,
    path: &Path,
    pem: &[u8],
) -> StoreResult<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(section, key, path, e))?;
    if certs.is_empty() {
        return Err(invalid(section, key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The provider rustls would use: the process default (`mailfleet` installs aws-lc-rs first
/// thing), else aws-lc-rs, the one the workspace builds. Never `ClientConfig::builder()`,
/// which panics when no default is installed and two providers are compiled in.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

impl LoadedTls {
    /// Reads and checks the files (nothing set: nothing read, and the system's roots apply).
    pub fn load(files: TlsFiles<'_>) -> StoreResult<Self> {
        let section = files.section;
        let (ca_pem, roots) = match files.ca {
            Some(path) => {
                let pem = read(section, "tls_ca_file", path)?;
                let mut roots = RootCertStore::empty();
                for cert in certificates(section, "tls_ca_file", path, &pem)? {
                    roots
                        .add(cert)
                        .map_err(|e| invalid(section, "tls_ca_file", path, e))?;
                }
                (Some(pem), Some(roots))
            }
            None => (None, None),
        };
        let (identity, parsed_identity) = match (files.cert, files.key) {
            (Some(cert_path), Some(key_path)) => {
                let cert_pem = read(section, "tls_cert_file", cert_path)?;
                let chain = certificates(section, "tls_cert_file", cert_path, &cert_pem)?;
                let key_pem = read(section, "tls_key_file", key_path)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| invalid(section, "tls_key_file", key_path, e))?;
                // Checks that the key is usable and belongs to the certificate.
                rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())
                    .map_err(|e| {
                    invalid(
                        section,
                        "tls_key_file",
                        key_path,
                        format!("not usable with tls_cert_file: {e}"),
                    )
                })?;
                (Some((cert_pem, key_pem)), Some((chain, key)))
            }
            (None, None) => (None, None),
            _ => {
                return Err(StoreError::Invalid(format!(
                    "{section}: set both tls_cert_file and tls_key_file, or neither"
                )))
            }
        };
        Ok(Self {
            ca_pem,
            roots,
            identity,
            parsed_identity,
        })
    }

    /// A rustls client configuration: the CA file's roots or the system's, and the client
    /// certificate when one is set.
    pub fn client_config(&self, section: &str) -> StoreResult<ClientConfig> {
        let roots = match &self.roots {
            Some(roots) => roots.clone(),
            None => system_roots(section)?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Invalid(format!("{section}: TLS: {e}")))?
            .with_root_certificates(roots);
        match &self.parsed_identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| StoreError::Invalid(format!("{section}.tls_cert_file: {e}"))),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// The system's trust store (`SSL_CERT_FILE`/`SSL_CERT_DIR` or the distribution's bundle).
/// Unreadable entries are skipped as long as some certificate loaded; an empty store is an
/// error, since no server certificate could ever verify against it.
fn system_roots(section: &str) -> StoreResult<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, _skipped) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(StoreError::Invalid(format!(
            "{section}: no tls_ca_file and no system CA certificates found ({:?}): install \
             ca-certificates or set {section}.tls_ca_file",
            found.errors
        )));
    }
    Ok(roots)
}

/// Installs aws-lc-rs as the process's rustls provider when none is installed yet. The redis
/// crate builds each connection's configuration with `ClientConfig::builder()`, which uses
/// the process default and panics when there is none and more than one provider is compiled
/// in. `mailfleet`'s main installs aws-lc-rs first thing; this covers other callers (tests,
/// tools) and is a no-op after it.
pub(crate) fn ensure_process_provider() {
    if CryptoProvider::get_default().is_none() {
        // Err means another thread installed one first: that one is used, which is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::pki_types::ServerName;
    use rustls::server::WebPkiClientVerifier;

    /// A CA, and PEM pairs it issued: (certificate, key).
    struct Pki {
        ca: rcgen::Certificate,
        ca_key: KeyPair,
    }

    impl Pki {
        fn new(name: &str) -> Self {
            let ca_key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let ca = params.self_signed(&ca_key).expect("CA");
            Self { ca, ca_key }
        }

        fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
            params.extended_key_usages = vec![usage];
            let cert = params
                .signed_by(&key, &self.ca, &self.ca_key)
                .expect("leaf");
            (cert.pem(), key.serialize_pem())
        }
    }

    /// Runs a handshake in memory between `client` and a server presenting `server` (for
    /// 127.0.0.1, as the ScyllaDB driver names nodes) that requires a client certificate
    /// from `client_ca`.
    fn handshake(
        client: ClientConfig,
        server: &(String, String),
        client_ca: &Pki,
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(client_ca.ca.der().clone()).expect("root");
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("verifier");
        let chain = CertificateDer::pem_slice_iter(server.0.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key = PrivateKeyDer::from_pem_slice(server.1.as_bytes()).expect("key");
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut s = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).expect("write");
            s.read_tls(&mut buf.as_slice()).expect("read");
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).expect("write");
            c.read_tls(&mut buf.as_slice()).expect("read");
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    /// The configuration ScyllaDB sessions get: it trusts the CA file (and only it) for a
    /// node named by IP address, and presents the client certificate.
    #[test]
    fn client_config_trusts_the_ca_file_and_presents_the_client_certificate() {
        let dir = tempfile::tempdir().expect("tmp");
        let (pki, other) = (Pki::new("test CA"), Pki::new("other CA"));
        let server = pki.issue("127.0.0.1", ExtendedKeyUsagePurpose::ServerAuth);
        let client = pki.issue("mailfleet", ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, pem: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).expect("write");
            p
        };
        let ca = write("ca.pem", &pki.ca.pem());
        let other_ca = write("other.pem", &other.ca.pem());
        let cert = write("client.pem", &client.0);
        let key = write("client.key", &client.1);
        let files = TlsFiles {
            section: "storage.scylla",
            ca: Some(&ca),
            cert: Some(&cert),
            key: Some(&key),
        };
        let config = |files| {
            LoadedTls::load(files)
                .expect("load")
                .client_config("storage.scylla")
                .expect("config")
        };
        handshake(config(files), &server, &pki).expect("mutual TLS");

        // A server from another CA is refused, and so is a client without a certificate.
        let err = handshake(
            config(TlsFiles {
                ca: Some(&other_ca),
                ..files
            }),
            &server,
            &pki,
        )
        .expect_err("unknown issuer");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        handshake(
            config(TlsFiles {
                cert: None,
                key: None,
                ..files
            }),
            &server,
            &pki,
        )
        .expect_err("no client certificate");
    }

    /// `storage.scylla.tls` with a bad file fails before any connection, naming the key.
    #[tokio::test]
    async fn scylla_tls_files_are_checked_at_connect() {
        let dir = tempfile::tempdir().expect("tmp");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let cfg = mailfleet_core::config::ScyllaConfig {
            nodes: vec!["127.0.0.1:1".into()],
            tls: true,
            tls_ca_file: Some(empty),
            ..Default::default()
        };
        let coord = Arc::new(crate::coord::local::LocalCoordinator::new());
        let err = crate::metadata::scylla::ScyllaMetadataStore::connect(&cfg, coord)
            .await
            .err()
            .expect("an empty CA file is refused");
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
        assert!(
            err.to_string().contains("storage.scylla.tls_ca_file"),
            "{err}"
        );
    }
}
