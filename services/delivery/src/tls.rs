//! The TLS policies for outbound SMTP.
//!
//! **Opportunistic** (RFC 7435, RFC 3207), the default: mail servers rarely present
//! certificates that match their MX names, and a sender that insisted would bounce a large
//! share of the world's mail; so, as Postfix's default `smtp_tls_security_level = may`, the
//! certificate is not checked. Encryption still defeats passive eavesdropping. The
//! handshake's signatures are still verified, so the session is bound to the key the peer
//! presented.
//!
//! **Verified**, for domains whose MTA-STS policy (RFC 8461, `mtasts.rs`) is in `enforce`
//! mode, and for fetching those policies over HTTPS: the chain must lead to a trust anchor
//! (the system's roots plus `delivery.tls_ca_file`) and the certificate must name the host
//! (PKIX, RFC 8461 §4.2). That is what stops an active attacker who strips STARTTLS or
//! answers in the MX's place.
//!
//! **DANE** (RFC 7672, `dane.rs`), for MX hosts with DNSSEC-signed TLSA records: the
//! certificate must match a TLSA record instead of a public CA's chain; this takes
//! precedence over MTA-STS for that host (RFC 8461 §2).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// What the certificate chain must satisfy; the handshake signatures are checked the same
/// way for both, with the provider's algorithms, so the session is bound to the key the
/// peer presented.
#[derive(Debug)]
enum ChainPolicy {
    /// Opportunistic: any chain.
    Any,
    /// DANE: the chain must satisfy the host's TLSA records ([`crate::dane::verify`]).
    Dane(Arc<crate::dane::Expectation>),
}

#[derive(Debug)]
struct PeerVerifier {
    provider: Arc<CryptoProvider>,
    policy: ChainPolicy,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.policy {
            ChainPolicy::Any => Ok(ServerCertVerified::assertion()),
            ChainPolicy::Dane(expect) => {
                crate::dane::verify(expect, end_entity, intermediates, now, &self.provider)
                    .map(|()| ServerCertVerified::assertion())
                    .map_err(rustls::Error::General)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A connector for one DANE-protected host: built per connection because the records it
/// checks against belong to that host.
pub fn dane_connector(
    expect: Arc<crate::dane::Expectation>,
) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier {
            provider,
            policy: ChainPolicy::Dane(expect),
        }))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A connector for opportunistic STARTTLS (TLS 1.2 and 1.3, aws-lc-rs).
pub fn opportunistic_connector() -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier {
            provider,
            policy: ChainPolicy::Any,
        }))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The trust anchors for verified TLS: the system's roots, then the certificates in
/// `extra_ca_file` (PEM) when set.
///
/// When the system has no readable root store (a minimal container without
/// `ca-certificates`), the Mozilla roots compiled in from `webpki-root-certs` stand in, so
/// that MTA-STS works out of the box rather than failing every policy fetch.
pub fn trust_anchors(extra_ca_file: Option<&Path>) -> Result<Arc<RootCertStore>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "reading a system trust anchor failed");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::info!("no system trust anchors found; using the built-in Mozilla roots");
        roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    }
    if let Some(path) = extra_ca_file {
        let shown = path.display();
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("delivery.tls_ca_file {shown}: {e}"))?
        {
            let cert = cert.map_err(|e| format!("delivery.tls_ca_file {shown}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("delivery.tls_ca_file {shown}: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!(
                "delivery.tls_ca_file {shown}: no PEM certificate found"
            ));
        }
    }
    Ok(Arc::new(roots))
}

/// A client configuration that checks the chain against `roots` and the name against the
/// host (rustls' WebPKI verifier), TLS 1.2 and 1.3 with aws-lc-rs.
fn verifying_config(
    roots: Arc<RootCertStore>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A connector for STARTTLS that must be authenticated (MTA-STS `enforce`).
pub fn verifying_connector(
    roots: Arc<RootCertStore>,
) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    Ok(tokio_rustls::TlsConnector::from(Arc::new(
        verifying_config(roots, &[])?,
    )))
}

/// A connector for the HTTPS fetch of MTA-STS policies (HTTP/1.1 announced in ALPN).
pub fn https_connector(
    roots: Arc<RootCertStore>,
) -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    Ok(tokio_rustls::TlsConnector::from(Arc::new(
        verifying_config(roots, &[b"http/1.1"])?,
    )))
}
