//! Passwords: argon2id hashing and the policy applied when a password is set.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

/// Shortest password accepted, whatever its strength score.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest password accepted: bounds the hashing work an attacker can ask for.
pub const MAX_PASSWORD_LEN: usize = 256;
/// Lowest zxcvbn score (0-4) accepted.
pub const MIN_STRENGTH_SCORE: u8 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("password is too short: at least {MIN_PASSWORD_LEN} characters are required")]
    TooShort,
    #[error("password is too long: at most {MAX_PASSWORD_LEN} characters")]
    TooLong,
    #[error("password is too weak: {0}")]
    Weak(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Hashes with argon2id and a random salt, in PHC string form.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Checks that `phc` is an argon2 PHC string this build can verify against (a hash made
/// elsewhere, given to the operator or the CLI instead of a password).
pub fn parse_phc(phc: &str) -> Result<(), PasswordError> {
    let parsed = PasswordHash::new(phc).map_err(|e| PasswordError::Hash(e.to_string()))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(PasswordError::Hash(
            "the hash has no salt or no output".into(),
        ));
    }
    match parsed.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => Ok(()),
        other => Err(PasswordError::Hash(format!(
            "{other} is not an argon2 hash"
        ))),
    }
}

/// Checks a password against a PHC hash. A malformed hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// The password policy: length bounds and a zxcvbn strength estimate that also penalises
/// the account's own name.
pub fn check_password_policy(password: &str, user_inputs: &[&str]) -> Result<(), PasswordError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_LEN {
        return Err(PasswordError::TooShort);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(PasswordError::TooLong);
    }
    let estimate = zxcvbn::zxcvbn(password, user_inputs);
    if u8::from(estimate.score()) < MIN_STRENGTH_SCORE {
        let hint = estimate
            .feedback()
            .and_then(|f| f.warning().map(|w| w.to_string()))
            .unwrap_or_else(|| "it is too easy to guess".to_string());
        return Err(PasswordError::Weak(hint));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_roundtrip() {
        let h = hash_password("correct horse battery staple").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery staple", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn policy() {
        assert_eq!(
            check_password_policy("short", &[]),
            Err(PasswordError::TooShort)
        );
        assert!(matches!(
            check_password_policy("password123", &[]),
            Err(PasswordError::Weak(_))
        ));
        assert!(matches!(
            check_password_policy("qwertyuiop1", &[]),
            Err(PasswordError::Weak(_))
        ));
        // The account's own name does not count as entropy.
        assert!(matches!(
            check_password_policy("mailfleetalice", &["alice", "mailfleet"]),
            Err(PasswordError::Weak(_))
        ));
        assert!(check_password_policy("Tr0ub4dor&3-horse-staple", &[]).is_ok());
    }
}
