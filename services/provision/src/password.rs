//! Passwords as callers give them: a plain password (checked against the policy, then
//! hashed with argon2id) or an argon2 PHC hash made elsewhere (a Secret written by a
//! password manager or migrated from another server), stored as it is.

use crate::{Error, Result};
use mailfleet_core::credentials::{check_password_policy, hash_password, verify_password};
use mailfleet_core::Address;

#[derive(Clone, PartialEq, Eq)]
pub enum PasswordInput {
    Plain(String),
    /// An argon2 (`$argon2id$`, `$argon2i$`, `$argon2d$`) PHC string.
    Hash(String),
}

impl std::fmt::Debug for PasswordInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a password, nor a hash (it can be attacked offline).
        f.write_str(match self {
            PasswordInput::Plain(_) => "Plain(..)",
            PasswordInput::Hash(_) => "Hash(..)",
        })
    }
}

impl PasswordInput {
    /// Reads a Secret's value: an argon2 PHC string is taken as a hash, anything else as a
    /// password. A value that starts like a PHC string but does not parse is refused rather
    /// than taken as a (strange) password, which would lock the user out silently.
    pub fn detect(value: &str) -> Result<Self> {
        let v = value.trim_end_matches(['\r', '\n']);
        if v.starts_with("$argon2") {
            mailfleet_core::credentials::parse_phc(v)
                .map_err(|e| Error::Invalid(format!("the argon2 hash does not parse: {e}")))?;
            return Ok(PasswordInput::Hash(v.to_string()));
        }
        if v.starts_with('$') && v[1..].contains('$') {
            return Err(Error::Invalid(
                "the value looks like a password hash, but only argon2 hashes are accepted".into(),
            ));
        }
        Ok(PasswordInput::Plain(v.to_string()))
    }

    /// The PHC string to store: a plain password must pass the policy (which penalises
    /// the account's own name) and is hashed. Hashing is slow on purpose: this runs on the
    /// blocking pool.
    pub async fn to_hash(&self, address: &Address) -> Result<String> {
        match self {
            PasswordInput::Hash(h) => Ok(h.clone()),
            PasswordInput::Plain(p) => {
                let p = p.clone();
                let inputs = policy_inputs(address);
                blocking(move || {
                    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                    check_password_policy(&p, &refs)?;
                    Ok(hash_password(&p)?)
                })
                .await
            }
        }
    }

    /// Whether `stored` already is this password, so nothing needs writing.
    pub async fn matches(&self, stored: &str) -> Result<bool> {
        match self {
            PasswordInput::Hash(h) => Ok(h == stored),
            PasswordInput::Plain(p) => {
                let (p, stored) = (p.clone(), stored.to_string());
                blocking(move || Ok(verify_password(&p, &stored))).await
            }
        }
    }
}

fn policy_inputs(address: &Address) -> Vec<String> {
    let mut v = vec![address.local().to_string()];
    v.extend(address.domain().split('.').map(str::to_string));
    v
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Invalid(format!("hashing task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_or_hash() {
        let addr = Address::parse("alice@example.com").expect("addr");
        let plain = PasswordInput::detect("correct horse battery staple 42\n").expect("plain");
        assert!(
            matches!(plain, PasswordInput::Plain(ref p) if p == "correct horse battery staple 42")
        );
        let hash = plain.to_hash(&addr).await.expect("hash");
        assert!(plain.matches(&hash).await.expect("verify"));
        let as_hash = PasswordInput::detect(&hash).expect("hash");
        assert_eq!(as_hash, PasswordInput::Hash(hash.clone()));
        assert!(as_hash.matches(&hash).await.expect("eq"));
        assert_eq!(as_hash.to_hash(&addr).await.expect("same"), hash);
        assert!(PasswordInput::detect("$argon2id$garbage").is_err());
        assert!(PasswordInput::detect("$6$salt$sha512crypt").is_err());
        let weak = PasswordInput::Plain("alice12345".into());
        assert!(matches!(weak.to_hash(&addr).await, Err(Error::Password(_))));
        assert_eq!(format!("{plain:?}"), "Plain(..)");
    }
}
