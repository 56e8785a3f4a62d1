//! DKIM signing keys, kept in the metadata store so that every front-end signs with the
//! same keys (a key file under one node's data directory left the other pods sending
//! unsigned mail without a word).
//!
//! Storage keeps the private key as opaque DER bytes; generation, signing and the DNS
//! records live in `mailfleet-delivery::dkim`. A key goes through three states, so that a
//! rotation never signs with a selector DNS does not answer yet, and never withdraws one
//! while mail signed with it may still be verified:
//!
//! ```text
//! Published ──(publish delay passed / DNS answers)──> Active ──(a newer key active)──> Retired ──> deleted
//!  in DNS, not signing                               signing                      in DNS, not signing
//! ```

use std::fmt;

/// The signature algorithm of a key (RFC 6376 `a=`, RFC 8463).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DkimAlgorithm {
    /// RSA-SHA256, the key a PKCS#1 `RSAPrivateKey`.
    Rsa,
    /// Ed25519-SHA256, the key PKCS#8.
    Ed25519,
}

impl DkimAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::Rsa => "rsa-sha256",
            DkimAlgorithm::Ed25519 => "ed25519-sha256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rsa-sha256" => Some(DkimAlgorithm::Rsa),
            "ed25519-sha256" => Some(DkimAlgorithm::Ed25519),
            _ => None,
        }
    }
}

/// Where a key is in its life (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DkimKeyState {
    Published,
    Active,
    Retired,
}

impl DkimKeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimKeyState::Published => "published",
            DkimKeyState::Active => "active",
            DkimKeyState::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "published" => Some(DkimKeyState::Published),
            "active" => Some(DkimKeyState::Active),
            "retired" => Some(DkimKeyState::Retired),
            _ => None,
        }
    }
}

/// One signing key of a domain. `(domain, selector)` is unique.
#[derive(Clone, PartialEq, Eq)]
pub struct DkimKey {
    /// Lower-case domain name (`d=`).
    pub domain: String,
    /// The selector (`s=`), the key's DNS name `<selector>._domainkey.<domain>`.
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// The private key, DER (see [`DkimAlgorithm`] for the form).
    pub private_der: Vec<u8>,
    pub state: DkimKeyState,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last state change (creation included).
    pub state_since: i64,
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key in logs or panics.
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("private_der", &"<redacted>")
            .field("state", &self.state)
            .field("created_at", &self.created_at)
            .field("state_since", &self.state_since)
            .finish()
    }
}
