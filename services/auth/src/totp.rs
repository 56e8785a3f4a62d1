//! Time-based one-time passwords: HOTP (RFC 4226) over a time step (RFC 6238).
//!
//! Mailfleet issues SHA-1, 6-digit, 30-second codes, the parameters every authenticator app
//! supports; SHA-256 and SHA-512 are implemented for the RFC test vectors and later use.
//! The secret is 20 random bytes (160 bits, RFC 4226 §4 R6), shown to the user as base32
//! in an `otpauth://` URI (the Key URI format authenticator apps scan as a QR code).

use hmac::{Hmac, Mac};

/// Length of a generated secret in bytes.
pub const SECRET_LEN: usize = 20;
/// Digits of a Mailfleet code.
pub const DIGITS: u32 = 6;
/// Seconds per time step.
pub const PERIOD: u64 = 30;
/// Steps of clock drift accepted either side of now (RFC 6238 §5.2 recommends one).
pub const SKEW_STEPS: u64 = 1;

/// The HMAC behind the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    fn uri_name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }
}

/// A fresh random secret.
pub fn generate_secret() -> Vec<u8> {
    let mut s = vec![0u8; SECRET_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut s);
    s
}

/// The secret as unpadded RFC 4648 base32, the form authenticator apps take.
pub fn secret_base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// Parses a base32 secret as a user might type it (any case, spaces and padding ignored).
pub fn parse_base32(text: &str) -> Option<Vec<u8>> {
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=' && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    data_encoding::BASE32_NOPAD.decode(cleaned.as_bytes()).ok()
}

/// `otpauth://totp/Issuer:account?secret=...&issuer=...` (the Key URI format).
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm={}&digits={}&period={}",
        percent_encode(issuer),
        percent_encode(account),
        secret_base32(secret),
        percent_encode(issuer),
        Algorithm::Sha1.uri_name(),
        DIGITS,
        PERIOD
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac_digest(alg: Algorithm, key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; the fallbacks only
    // satisfy the type and would yield a code that never matches.
    match alg {
        Algorithm::Sha1 => Hmac::<sha1::Sha1>::new_from_slice(key)
            .map(|mut m| {
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            })
            .unwrap_or_default(),
        Algorithm::Sha256 => Hmac::<sha2::Sha256>::new_from_slice(key)
            .map(|mut m| {
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            })
            .unwrap_or_default(),
        Algorithm::Sha512 => Hmac::<sha2::Sha512>::new_from_slice(key)
            .map(|mut m| {
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            })
            .unwrap_or_default(),
    }
}

/// HOTP value (RFC 4226 §5.3): dynamic truncation of the HMAC of the counter.
pub fn hotp(alg: Algorithm, secret: &[u8], counter: u64, digits: u32) -> u32 {
    let digest = hmac_digest(alg, secret, &counter.to_be_bytes());
    let Some(last) = digest.last() else {
        return u32::MAX;
    };
    let offset = (last & 0x0f) as usize;
    let Some(window) = digest.get(offset..offset + 4) else {
        return u32::MAX;
    };
    let binary = u32::from_be_bytes([window[0] & 0x7f, window[1], window[2], window[3]]);
    binary % 10u32.pow(digits.min(9))
}

/// The time step of a Unix time.
pub fn step_of(unix_time: u64) -> u64 {
    unix_time / PERIOD
}

/// The code for `unix_time`, zero-padded to `digits`.
pub fn code_at(alg: Algorithm, secret: &[u8], unix_time: u64, digits: u32) -> String {
    format!(
        "{:0width$}",
        hotp(alg, secret, step_of(unix_time), digits),
        width = digits as usize
    )
}

/// Checks a 6-digit SHA-1 code against `unix_time` with [`SKEW_STEPS`] of drift either
/// way. Returns the matching time step, which the caller must remember to refuse the same
/// code a second time (RFC 6238 §5.2: a code is valid once).
pub fn verify(secret: &[u8], code: &str, unix_time: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_of(unix_time);
    let mut found = None;
    // Every candidate is computed and compared in constant time, so timing does not tell
    // which step (if any) matched.
    for step in now.saturating_sub(SKEW_STEPS)..=now.saturating_add(SKEW_STEPS) {
        let expected = format!(
            "{:0width$}",
            hotp(Algorithm::Sha1, secret, step, DIGITS),
            width = DIGITS as usize
        );
        if constant_time_eq(expected.as_bytes(), code.as_bytes()) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// Checks a code like [`verify`] and accepts it only once: the matching time step is
/// recorded for the account in the store, in one compare-and-set, and a step at or before
/// the last accepted one is refused (RFC 6238 §5.2). Without this a code seen over a
/// shoulder or in a proxy's log would open the account again for the rest of its window
/// (up to a minute and a half with [`SKEW_STEPS`] of drift). Every place that takes a TOTP
/// code goes through here.
pub async fn verify_once(
    meta: &dyn mailfleet_storage::MetadataStore,
    account: mailfleet_storage::AccountId,
    secret: &[u8],
    code: &str,
    unix_time: u64,
) -> mailfleet_storage::StoreResult<bool> {
    match verify(secret, code, unix_time) {
        Some(step) => meta.accept_totp_step(account, step).await,
        None => Ok(false),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A code works once: replaying it inside its window, or a code of an earlier step,
    /// is refused; the next step's code works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_code_is_accepted_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let stores = mailfleet_storage::embedded::open(dir.path(), 8).expect("stores");
        stores
            .meta
            .create_domain("totp.test")
            .await
            .expect("domain");
        let account = stores
            .meta
            .create_account("u@totp.test", "h", 0)
            .await
            .expect("account");
        let secret = generate_secret();
        stores
            .meta
            .set_totp_secret(
                account.id,
                Some(mailfleet_storage::TotpSecret {
                    secret: secret.clone(),
                    created_at: 0,
                }),
            )
            .await
            .expect("secret");
        let meta = stores.meta.as_ref();
        let t = 1_800_000_000;
        let code = code_at(Algorithm::Sha1, &secret, t, DIGITS);
        assert!(verify_once(meta, account.id, &secret, &code, t)
            .await
            .expect("verify"));
        assert!(
            !verify_once(meta, account.id, &secret, &code, t + 5)
                .await
                .expect("replay"),
            "the same code inside its window is a replay"
        );
        let earlier = code_at(Algorithm::Sha1, &secret, t - PERIOD, DIGITS);
        assert!(
            !verify_once(meta, account.id, &secret, &earlier, t)
                .await
                .expect("earlier"),
            "a code older than the last accepted one is refused"
        );
        let next = code_at(Algorithm::Sha1, &secret, t + PERIOD, DIGITS);
        assert!(verify_once(meta, account.id, &secret, &next, t + PERIOD)
            .await
            .expect("next"));
        assert!(!verify_once(meta, account.id, &secret, "000000x", t)
            .await
            .expect("malformed"));
    }

    // RFC 6238 Appendix B: the seeds are ASCII "1234567890" repeated to the hash size.
    const SEED20: &[u8] = b"12345678901234567890";
    const SEED32: &[u8] = b"12345678901234567890123456789012";
    const SEED64: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    #[test]
    fn rfc6238_test_vectors() {
        let vectors: &[(u64, &str, &str, &str)] = &[
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (t, sha1, sha256, sha512) in vectors {
            assert_eq!(
                code_at(Algorithm::Sha1, SEED20, *t, 8),
                *sha1,
                "SHA1 at {t}"
            );
            assert_eq!(
                code_at(Algorithm::Sha256, SEED32, *t, 8),
                *sha256,
                "SHA256 at {t}"
            );
            assert_eq!(
                code_at(Algorithm::Sha512, SEED64, *t, 8),
                *sha512,
                "SHA512 at {t}"
            );
        }
    }

    #[test]
    fn rfc4226_hotp_vectors() {
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (counter, want) in expected.iter().enumerate() {
            assert_eq!(hotp(Algorithm::Sha1, SEED20, counter as u64, 6), *want);
        }
    }

    #[test]
    fn verify_accepts_one_step_of_drift() {
        let t = 1_234_567_890;
        // Six-digit codes are the last six digits of the eight-digit ones.
        assert_eq!(verify(SEED20, "005924", t), Some(step_of(t)));
        let before = code_at(Algorithm::Sha1, SEED20, t - 30, 6);
        let after = code_at(Algorithm::Sha1, SEED20, t + 30, 6);
        let far = code_at(Algorithm::Sha1, SEED20, t + 120, 6);
        assert_eq!(verify(SEED20, &before, t), Some(step_of(t) - 1));
        assert_eq!(verify(SEED20, &after, t), Some(step_of(t) + 1));
        assert_eq!(verify(SEED20, &far, t), None);
        assert_eq!(verify(SEED20, "12345", t), None);
        assert_eq!(verify(SEED20, "abcdef", t), None);
        assert_eq!(verify(SEED20, "", 0), None);
    }

    #[test]
    fn uri_and_base32() {
        let secret = SEED20.to_vec();
        assert_eq!(secret_base32(&secret), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(
            parse_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq"),
            Some(secret.clone())
        );
        assert_eq!(
            otpauth_uri("mx.example.test", "alice@example.test", &secret),
            "otpauth://totp/mx.example.test:alice%40example.test?\
             secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=mx.example.test\
             &algorithm=SHA1&digits=6&period=30"
        );
        assert_eq!(generate_secret().len(), SECRET_LEN);
        assert_ne!(generate_secret(), generate_secret());
    }
}
