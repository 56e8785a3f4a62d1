//! TLS for every listener: rustls, TLS 1.2 and 1.3 only, certificates reloaded from disk.
//!
//! The certificate lives behind an [`ArcSwap`] read by a [`ResolvesServerCert`]
//! implementation, so replacing the PEM files (for example when cert-manager renews them)
//! takes effect on the next handshake without a restart and without dropping sessions.

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("cannot read private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("certificate {0} holds no certificate")]
    EmptyChain(PathBuf),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where the certificate and key come from.
#[derive(Clone, Debug)]
pub struct CertSource {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertSource {
    /// Configured files, or a self-signed certificate for `hostname` generated once under
    /// `dir` (kept across restarts so clients that pinned it keep working).
    pub fn resolve(
        cert: Option<&Path>,
        key: Option<&Path>,
        hostname: &str,
        dir: &Path,
    ) -> Result<Self, TlsError> {
        if let (Some(cert), Some(key)) = (cert, key) {
            return Ok(Self {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            });
        }
        let cert = dir.join("self-signed.crt");
        let key = dir.join("self-signed.key");
        if !cert.exists() || !key.exists() {
            generate_self_signed(hostname, &cert, &key)?;
        }
        Ok(Self { cert, key })
    }
}

/// Writes a self-signed certificate for `hostname` (and `localhost`) to the given paths.
pub fn generate_self_signed(hostname: &str, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let mut names = vec![hostname.to_string()];
    if hostname != "localhost" {
        names.push("localhost".into());
    }
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::Generate(e.to_string()))?;
    }
    std::fs::write(cert, generated.cert.pem()).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(key, generated.key_pair.serialize_pem().as_bytes())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads a certificate chain and key into a rustls [`CertifiedKey`].
pub fn load_certified_key(src: &CertSource) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&src.cert)
        .map_err(|e| TlsError::Cert {
            path: src.cert.clone(),
            message: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: src.cert.clone(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::EmptyChain(src.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&src.key).map_err(|e| TlsError::Key {
        path: src.key.clone(),
        message: e.to_string(),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: src.key.clone(),
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    // A half-replaced pair (new certificate, old key) must not be served: refuse it and
    // keep the previous pair until both files agree.
    certified.keys_match().map_err(|e| TlsError::Key {
        path: src.key.clone(),
        message: format!("does not match the certificate: {e}"),
    })?;
    publish_expiry(&certified.cert);
    Ok(certified)
}

/// Sets `mailfleet_tls_certificate_expiry_timestamp_seconds` to the server certificate's
/// notAfter (label `certificate="server"`: every listener serves the one chain). An
/// unreadable date is logged and leaves the series out, which the "certificate expiring"
/// alert then cannot see; the handshake itself is rustls's business.
fn publish_expiry(chain: &[CertificateDer<'static>]) {
    let Some(leaf) = chain.first() else { return };
    match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, cert)) => {
            let not_after = cert.validity().not_after.timestamp();
            mailfleet_telemetry::metrics().set_certificates(&[("server".to_string(), not_after)]);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the certificate's expiry date"),
    }
}

/// The certificate resolver shared by every listener.
#[derive(Debug)]
pub struct ReloadingResolver {
    current: ArcSwap<CertifiedKey>,
    source: CertSource,
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ReloadingResolver {
    pub fn new(source: CertSource) -> Result<Arc<Self>, TlsError> {
        let key = load_certified_key(&source)?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(key),
            source,
        }))
    }

    /// Reloads the files. On error the previous certificate stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.source)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let c = std::fs::metadata(&self.source.cert).ok()?.modified().ok()?;
        let k = std::fs::metadata(&self.source.key).ok()?.modified().ok()?;
        Some((c, k))
    }

    /// Polls the files' modification times and reloads when they change, until `shutdown`.
    pub async fn watch(self: Arc<Self>, every: Duration, mut shutdown: crate::shutdown::Shutdown) {
        let mut last = self.modified();
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            let now = self.modified();
            if now.is_some() && now != last {
                match self.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %self.source.cert.display(), "TLS certificate reloaded");
                        last = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate reload failed; keeping the previous one")
                    }
                }
            }
        }
    }
}

/// A rustls server configuration: TLS 1.2 and 1.3 only, the given resolver, `alpn` protocols.
pub fn server_config(
    resolver: Arc<ReloadingResolver>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_then_reload() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = CertSource::resolve(None, None, "mx.test", dir.path()).expect("generated");
        let r = ReloadingResolver::new(src.clone()).expect("loads");
        let before = r.current.load_full().cert[0].clone();
        generate_self_signed("other.test", &src.cert, &src.key).expect("regenerate");
        r.reload().expect("reload");
        assert_ne!(before, r.current.load_full().cert[0]);
        server_config(r.clone(), &[]).expect("config");
        std::fs::write(&src.key, "garbage").expect("write");
        assert!(r.reload().is_err());
        // The previous certificate is still served.
        assert!(!r.current.load_full().cert.is_empty());
    }
}
