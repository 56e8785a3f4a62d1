//! A cache of recent successful password verifications (what Dovecot's `auth_cache` does
//! for its password checks), so a client that logs in again and again (phones reconnect all
//! day) costs one argon2id verification per cache lifetime instead of one per login.
//!
//! What it holds, per recent success: HMAC-SHA256, under a random key made when the process
//! starts (never stored, never logged), of the user name, the password given, the stored
//! credential it matched (the main password's hash, or the app password's id and hash) and
//! whether TOTP was on. Never the password, nor a value that can be checked against a
//! password guess without that key.
//!
//! Why a change takes effect at once, on every node: a login still reads the account, its
//! TOTP state and the app password from the store (cheap reads; only the hashing is saved),
//! and the cache key is computed from what it read. A new password changes the stored hash
//! in the key, a revoked app password is no longer read, enabling TOTP changes the flag: the
//! next login misses the cache and is verified in full.
//!
//! Failures are never cached: a wrong password is always verified, and counted by the
//! throttling rules exactly as without a cache.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The credential a cached login matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Matched {
    Main,
    App(mailfleet_storage::AppPasswordId),
}

/// What a key is computed from: the login as given and the credential as stored now.
pub(crate) struct Login<'a> {
    pub username: &'a str,
    pub password: &'a str,
    /// The stored credential's identity: "main" and its hash, or the app password's id and
    /// hash.
    pub credential: Credential<'a>,
    pub second_factor: bool,
}

pub(crate) enum Credential<'a> {
    Main {
        hash: &'a str,
    },
    App {
        id: mailfleet_storage::AppPasswordId,
        hash: &'a str,
    },
}

type Key = [u8; 32];

pub(crate) struct LoginCache {
    secret: [u8; 32],
    ttl: Duration,
    max_entries: usize,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, (Instant, Matched)>,
    /// Insertion order, for eviction when full (an entry re-inserted later leaves a stale
    /// item here, recognised by its expiry).
    order: VecDeque<(Key, Instant)>,
}

impl LoginCache {
    /// A cache keeping each success for `ttl`, at most `max_entries` at once; `None` when
    /// either is zero (caching off).
    pub(crate) fn new(ttl: Duration, max_entries: usize) -> Option<Self> {
        if ttl.is_zero() || max_entries == 0 {
            return None;
        }
        Some(Self {
            secret: rand::random(),
            ttl,
            max_entries,
            inner: Mutex::new(Entries::default()),
        })
    }

    fn key(&self, login: &Login<'_>) -> Key {
        // Length-prefixed fields, so no two different logins give the same input.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes a key of any length");
        let mut field = |b: &[u8]| {
            mac.update(&(b.len() as u64).to_be_bytes());
            mac.update(b);
        };
        field(login.username.as_bytes());
        field(login.password.as_bytes());
        match &login.credential {
            Credential::Main { hash } => {
                field(b"main");
                field(hash.as_bytes());
            }
            Credential::App { id, hash } => {
                field(b"app");
                field(&id.0.to_be_bytes());
                field(hash.as_bytes());
            }
        }
        field(&[u8::from(login.second_factor)]);
        mac.finalize().into_bytes().into()
    }

    /// Whether this exact login succeeded within the cache lifetime.
    pub(crate) fn hit(&self, login: &Login<'_>) -> Option<Matched> {
        let key = self.key(login);
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match e.map.get(&key) {
            Some((expires, matched)) if *expires > Instant::now() => Some(*matched),
            Some(_) => {
                e.map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Records a success that was just verified.
    pub(crate) fn insert(&self, login: &Login<'_>, matched: Matched) {
        let key = self.key(login);
        let now = Instant::now();
        let expires = now + self.ttl;
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while e.map.len() >= self.max_entries || e.order.len() >= self.max_entries * 2 {
            let Some((old, at)) = e.order.pop_front() else {
                break;
            };
            if e.map.get(&old).is_some_and(|(x, _)| *x == at) {
                e.map.remove(&old);
            }
        }
        e.map.insert(key, (expires, matched));
        e.order.push_back((key, expires));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login<'a>(password: &'a str, hash: &'a str, second_factor: bool) -> Login<'a> {
        Login {
            username: "alice@example.test",
            password,
            credential: Credential::Main { hash },
            second_factor,
        }
    }

    #[test]
    fn a_hit_needs_the_same_password_credential_and_totp_state() {
        let c = LoginCache::new(Duration::from_secs(60), 10).expect("on");
        c.insert(&login("pw", "$argon2id$a", false), Matched::Main);
        assert_eq!(
            c.hit(&login("pw", "$argon2id$a", false)),
            Some(Matched::Main)
        );
        assert_eq!(c.hit(&login("pw2", "$argon2id$a", false)), None);
        assert_eq!(c.hit(&login("pw", "$argon2id$b", false)), None, "new hash");
        assert_eq!(c.hit(&login("pw", "$argon2id$a", true)), None, "TOTP on");
        let app = Login {
            username: "alice@example.test",
            password: "pw",
            credential: Credential::App {
                id: mailfleet_storage::AppPasswordId(1),
                hash: "$argon2id$a",
            },
            second_factor: false,
        };
        assert_eq!(c.hit(&app), None, "app credential is another key");
    }

    #[test]
    fn entries_expire_and_the_cache_is_bounded() {
        let c = LoginCache::new(Duration::from_millis(30), 3).expect("on");
        let hashes: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
        for h in &hashes {
            c.insert(&login("pw", h, false), Matched::Main);
            assert!(c.len() <= 3);
        }
        assert_eq!(
            c.hit(&login("pw", "h0", false)),
            None,
            "evicted, oldest first"
        );
        assert_eq!(c.hit(&login("pw", "h9", false)), Some(Matched::Main));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.hit(&login("pw", "h9", false)), None, "expired");
        assert!(LoginCache::new(Duration::ZERO, 10).is_none());
        assert!(LoginCache::new(Duration::from_secs(1), 0).is_none());
    }
}
