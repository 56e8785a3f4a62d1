//! The key an ARC set is signed with when a hosted domain forwards mail (RFC 8617 §5.1).
//!
//! The domain's DKIM keys double as its ARC keys, as in Stalwart and OpenARC setups: the
//! verifier looks the `s=` selector up under `_domainkey` either way, so no other DNS
//! record is needed. Only RSA keys seal (RFC 8617 §3.9 allows `rsa-sha256` alone); a
//! domain that has only Ed25519 keys forwards unsealed.

use super::authenticate::ArcKey;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mailfleet_storage::{DkimAlgorithm, DkimKeyState, MetadataStore, StoreError};

/// The newest active RSA key of `domain`; `None` when it has none.
pub async fn key(meta: &dyn MetadataStore, domain: &str) -> Result<Option<ArcKey>, StoreError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let newest = meta
        .dkim_keys(&domain)
        .await?
        .into_iter()
        .filter(|k| k.state == DkimKeyState::Active && k.algorithm == DkimAlgorithm::Rsa)
        .max_by_key(|k| k.state_since);
    let Some(k) = newest else {
        return Ok(None);
    };
    // The stored form of an RSA key is PKCS#1 DER (`mailfleet_storage::DkimAlgorithm`).
    let der = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs1(k.private_der.into());
    match RsaKey::<Sha256>::from_key_der(der) {
        Ok(key) => Ok(Some(ArcKey {
            domain,
            selector: k.selector,
            key,
        })),
        Err(e) => {
            tracing::warn!(domain, selector = %k.selector, error = %e, "unusable RSA key: forward not sealed");
            Ok(None)
        }
    }
}
