//! Records of login credentials beyond the account's main password: app passwords, the
//! TOTP secret, and the extra addresses an account may send as.
//!
//! Storage keeps these as opaque values; hashing, generation and verification live in
//! `mailfleet-auth`, which is the only crate that decides whether a login succeeds.

use crate::types::AccountId;
use std::fmt;

/// An app password's row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppPasswordId(pub i64);

impl fmt::Display for AppPasswordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A named, revocable password for one device or client. Usable wherever the main
/// password is, and the only kind of password protocol logins accept once TOTP is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPassword {
    pub id: AppPasswordId,
    pub account: AccountId,
    /// What the user called it ("phone", "thunderbird"); unique per account.
    pub name: String,
    /// A non-secret prefix of the generated password, unique per account, so a login
    /// verifies exactly one hash however many app passwords the account has.
    pub tag: String,
    /// Argon2id PHC string of the whole password.
    pub hash: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last successful login with it (updated coarsely).
    pub last_used: Option<i64>,
}

/// An app password to add.
#[derive(Clone, Debug)]
pub struct NewAppPassword {
    pub name: String,
    pub tag: String,
    pub hash: String,
    pub created_at: i64,
}

/// An account's TOTP (RFC 6238) shared secret. Stored as is: verification needs the
/// secret itself, so it cannot be hashed.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret {
    pub secret: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret in logs or panics.
        f.debug_struct("TotpSecret")
            .field("secret", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}
