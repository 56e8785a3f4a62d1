//! Login security for every protocol (IMAP, POP3, submission, and later HTTP).
//!
//! One entry point, [`Authenticator::authenticate`], decides whether a user name and
//! password open an account:
//!
//! - **Hashes**: the main password and app passwords are argon2id PHC strings
//!   ([`mailfleet_core::credentials`]). Verification runs on tokio's blocking pool, never
//!   on an async worker, and at most `max_concurrent_hashes` run at once (each takes about
//!   19 MiB), so a login flood queues instead of exhausting memory.
//! - **Same cost for unknown users**: a user name that does not exist is verified against a
//!   dummy hash with the same parameters, so timing does not tell which accounts exist.
//! - **App passwords** ([`app_password`]) work wherever the main password does. Their
//!   public tag selects one hash, so a login always costs one verification.
//! - **TOTP** ([`totp`]): once an account has a TOTP secret, its main password is refused
//!   for every login through this entry point (protocol logins carry no second factor);
//!   only app passwords open it. A web login with a code will use its own entry point.
//! - **Throttling** ([`throttle`]): attempts are counted before they are verified, per IP
//!   (IPv6 per /64) and per user name, through the [`mailfleet_storage::Coordinator`];
//!   successes give their count back. Each failure delays the next attempt from that
//!   address more, and past a limit the address or name is refused with
//!   [`AuthError::Throttled`] until the window ends. Another address is not affected, and
//!   networks a user logged in from recently are not locked out by the per-name limit.
//!
//! Protocols decode credentials with [`sasl`] and map [`AuthError`] to their replies:
//! `InvalidCredentials` to "authentication failed", `Throttled` and `TemporaryFailure` to
//! their temporary-failure replies.
//!
//! # Layout
//! - `lib.rs`: [`Authenticator`], [`AuthPolicy`], [`LoginRequest`], [`AuthError`].
//! - [`sasl`]: PLAIN and LOGIN exchanges without I/O.
//! - [`app_password`]: generation and the tag scheme.
//! - [`totp`]: RFC 6238 codes, secrets and `otpauth://` URIs.
//! - [`throttle`]: the counters, keys and delays.

#![forbid(unsafe_code)]

pub mod app_password;
mod cache;
pub mod sasl;
pub mod throttle;
pub mod totp;

use mailfleet_core::config::AuthConfig;
use mailfleet_core::credentials::{hash_password, verify_password};
use mailfleet_core::Address;
use mailfleet_storage::{Account, AppPassword, StoreError, Stores};
use mailfleet_telemetry::{LoginResult, RateLimit};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The protocol a login comes through (for logs and policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Imap,
    Pop3,
    Submission,
    Http,
    /// ManageSieve (RFC 5804). Accounts have no protocol bit of their own for it: it is
    /// allowed where IMAP is (see [`Protocol::enabled_for`]).
    ManageSieve,
}

impl Protocol {
    /// The protocol a login counts under in the metrics (`None`: not counted; HTTP
    /// logins have no front-end yet).
    fn metrics(self) -> Option<mailfleet_telemetry::Protocol> {
        match self {
            Protocol::Imap => Some(mailfleet_telemetry::Protocol::Imap),
            Protocol::Pop3 => Some(mailfleet_telemetry::Protocol::Pop3),
            Protocol::Submission => Some(mailfleet_telemetry::Protocol::Submission),
            Protocol::ManageSieve => Some(mailfleet_telemetry::Protocol::ManageSieve),
            Protocol::Http => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Submission => "submission",
            Protocol::Http => "http",
            Protocol::ManageSieve => "managesieve",
        }
    }
}

/// One login attempt.
#[derive(Clone, Copy)]
pub struct LoginRequest<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub remote_ip: IpAddr,
    pub protocol: Protocol,
    /// How the client presented the credentials (for `mailfleet_logins_total`).
    pub mechanism: mailfleet_telemetry::Mechanism,
}

impl std::fmt::Debug for LoginRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("remote_ip", &self.remote_ip)
            .field("protocol", &self.protocol)
            .field("mechanism", &self.mechanism)
            .finish()
    }
}

/// Why a login did not succeed. The variants deliberately do not say whether the user
/// exists or which check failed; the server log does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("too many failed logins; try again in {} seconds", retry_after.as_secs().max(1))]
    Throttled { retry_after: Duration },
    #[error("temporary authentication failure: {0}")]
    TemporaryFailure(String),
    /// The credentials were right, but the account may not log in here: it is suspended,
    /// or this protocol is not among its enabled ones. Only said after a correct password,
    /// so it tells nothing to someone guessing.
    #[error("{0}")]
    Disabled(Disabled),
}

/// Why a correctly authenticated account may not log in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disabled {
    Suspended,
    ProtocolNotEnabled,
}

impl std::fmt::Display for Disabled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Disabled::Suspended => "account is suspended",
            Disabled::ProtocolNotEnabled => "account may not log in with this protocol",
        })
    }
}

impl Protocol {
    /// Whether `account` has this protocol enabled (HTTP logins are JMAP's).
    ///
    /// ManageSieve follows the IMAP bit: the account's `Protocols` (a stored, provisioned
    /// record) has no ManageSieve bit, and managing the filters of a mailbox is part of
    /// reaching it by IMAP (Dovecot and Cyrus serve both from the same login rights).
    fn enabled_for(self, account: &Account) -> bool {
        let p = account.settings.protocols;
        match self {
            Protocol::Imap | Protocol::ManageSieve => p.imap,
            Protocol::Pop3 => p.pop3,
            Protocol::Submission => p.submission,
            Protocol::Http => p.jmap,
        }
    }
}

/// Login limits, from `[auth]`.
#[derive(Clone, Debug)]
pub struct AuthPolicy {
    pub limits: throttle::Limits,
    /// Failed attempts a protocol allows on one connection before closing it.
    pub max_attempts_per_connection: u32,
    /// Most argon2id verifications running at once.
    pub max_concurrent_hashes: usize,
    /// How long a successful verification is remembered (zero: not at all), and how many
    /// are remembered at once (see [`cache`]).
    pub login_cache_ttl: Duration,
    pub login_cache_entries: usize,
}

impl AuthPolicy {
    pub fn from_config(c: &AuthConfig) -> Self {
        let hashes = if c.max_concurrent_hashes == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            c.max_concurrent_hashes
        };
        Self {
            limits: throttle::Limits {
                max_failures_per_ip: c.max_failures_per_ip,
                max_failures_per_account: c.max_failures_per_account,
                window: Duration::from_secs(c.failure_window_secs.max(1)),
                delay_base: Duration::from_millis(c.delay_base_ms),
                delay_max: Duration::from_millis(c.delay_max_ms),
            },
            max_attempts_per_connection: c.max_attempts_per_connection.max(1),
            max_concurrent_hashes: hashes.max(1),
            login_cache_ttl: Duration::from_secs(c.login_cache_secs),
            login_cache_entries: c.login_cache_entries,
        }
    }
}

impl Default for AuthPolicy {
    fn default() -> Self {
        Self::from_config(&AuthConfig::default())
    }
}

/// App password `last_used` times are written at most this often per app password, so a
/// client that logs in every minute does not cost a write every minute.
const TOUCH_INTERVAL_SECS: i64 = 300;

/// Checks logins. Cheap to clone; clones share the hashing limit.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    stores: Stores,
    policy: AuthPolicy,
    hashing: Semaphore,
    pool: HashPool,
    /// Password hashes verified so far (for metrics, and to show that an unknown user
    /// costs exactly what a wrong password costs).
    verifications: std::sync::atomic::AtomicU64,
    /// Recent successful verifications (`None`: caching is off).
    cache: Option<cache::LoginCache>,
    cache_hits: std::sync::atomic::AtomicU64,
}

type HashJob = Box<dyn FnOnce() + Send>;

/// Dedicated threads for password verification.
///
/// argon2id allocates about 19 MiB per verification. Run on tokio's blocking pool, whose
/// threads are many and each keep their own malloc arena, that memory stayed resident per
/// thread: `imap-load --scenario idle` measured ~12 MiB of server RSS per logged-in session
/// (docs/benchmarks.md). A few long-lived threads bound it to a few arenas.
struct HashPool {
    tx: std::sync::mpsc::Sender<HashJob>,
}

impl HashPool {
    fn new(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("mailfleet-hash-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        // The authenticator is gone.
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self { tx }
    }

    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, AuthError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move || {
            let _ = done.send(f());
        });
        self.tx
            .send(job)
            .map_err(|_| AuthError::TemporaryFailure("hashing threads stopped".into()))?;
        result
            .await
            .map_err(|_| AuthError::TemporaryFailure("verification did not finish".into()))
    }
}

/// Why a login failed, for the log only.
#[derive(Clone, Copy, Debug)]
enum Failure {
    UnknownUser,
    BadPassword,
    MainPasswordNeedsSecondFactor,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::UnknownUser => "unknown user",
            Failure::BadPassword => "wrong password",
            Failure::MainPasswordNeedsSecondFactor => {
                "main password refused: two-factor authentication is on, use an app password"
            }
        }
    }
}

enum Verified {
    Main,
    App(AppPassword),
}

/// A hash with the default parameters of a password nobody knows, verified for unknown
/// users so they cost what a wrong password costs.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random: String = (0..32)
            .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
            .collect();
        // Hashing can only fail on parameter errors, which the defaults do not have; an
        // empty string would make the dummy verification cheap, never succeed.
        hash_password(&random).unwrap_or_default()
    })
}

/// The user name as the directory keys it, bounded so it is safe to log and to use in a
/// counter key.
fn normalize_username(username: &str) -> String {
    username
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(mailfleet_core::address::MAX_ADDRESS_LEN)
        .collect::<String>()
        .to_lowercase()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn temporary(e: StoreError) -> AuthError {
    AuthError::TemporaryFailure(e.to_string())
}

impl Authenticator {
    pub fn new(stores: Stores, policy: AuthPolicy) -> Self {
        let hashing = Semaphore::new(policy.max_concurrent_hashes);
        let pool = HashPool::new(policy.max_concurrent_hashes);
        let policy_cache = (policy.login_cache_ttl, policy.login_cache_entries);
        Self {
            inner: Arc::new(Inner {
                stores,
                policy,
                hashing,
                pool,
                verifications: std::sync::atomic::AtomicU64::new(0),
                cache: cache::LoginCache::new(policy_cache.0, policy_cache.1),
                cache_hits: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    pub fn policy(&self) -> &AuthPolicy {
        &self.inner.policy
    }

    /// How many password verifications (argon2id runs) this authenticator has done.
    pub fn verifications(&self) -> u64 {
        self.inner
            .verifications
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Checks one login. See the crate documentation for the rules. Every attempt is
    /// counted in `mailfleet_logins_total`, with the reason a failure had.
    pub async fn authenticate(&self, req: LoginRequest<'_>) -> Result<Account, AuthError> {
        let (result, why) = self.authenticate_counted(req).await;
        if let Some(protocol) = req.protocol.metrics() {
            mailfleet_telemetry::metrics().login(protocol, req.mechanism, why);
        }
        result
    }

    async fn authenticate_counted(
        &self,
        req: LoginRequest<'_>,
    ) -> (Result<Account, AuthError>, LoginResult) {
        match self.authenticate_inner(req).await {
            Ok(account) => (Ok(account), LoginResult::Success),
            Err((e, why)) => (Err(e), why),
        }
    }

    async fn authenticate_inner(
        &self,
        req: LoginRequest<'_>,
    ) -> Result<Account, (AuthError, LoginResult)> {
        let temp = |e: AuthError| (e, LoginResult::TemporaryFailure);
        let username = normalize_username(req.username);
        let limits = &self.inner.policy.limits;
        let coord = self.inner.stores.coord.as_ref();
        // Counted before verifying, so parallel attempts cannot all slip under the limit.
        let reservation = match throttle::reserve(coord, limits, req.remote_ip, &username)
            .await
            .map_err(|e| temp(temporary(e)))?
        {
            throttle::Gate::Refuse { retry_after, by } => {
                let why = match by {
                    throttle::Limit::Address => LoginResult::Throttled,
                    throttle::Limit::Account => LoginResult::Locked,
                };
                mailfleet_telemetry::metrics().rate_limit_hit(match by {
                    throttle::Limit::Address => RateLimit::LoginAddress,
                    throttle::Limit::Account => RateLimit::LoginAccount,
                });
                tracing::warn!(
                    protocol = req.protocol.as_str(),
                    mechanism = req.mechanism.as_str(),
                    trace_id = mailfleet_telemetry::trace::current_trace_id(),
                    ip = %req.remote_ip,
                    user = ?username,
                    result = why.as_str(),
                    "login refused: too many failed logins"
                );
                return Err((AuthError::Throttled { retry_after }, why));
            }
            throttle::Gate::Proceed { delay, reservation } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                reservation
            }
        };
        let checked = match self.check(&username, req.password).await {
            Ok(c) => c,
            Err(e) => {
                // Nothing was decided: the attempt does not count as a failure.
                throttle::release(coord, limits, reservation).await;
                return Err(temp(e));
            }
        };
        match checked {
            Ok((account, how)) => {
                let disabled = if account.settings.suspended {
                    Some(Disabled::Suspended)
                } else if !req.protocol.enabled_for(&account) {
                    Some(Disabled::ProtocolNotEnabled)
                } else {
                    None
                };
                if let Some(why) = disabled {
                    // The password was right: not a guess, so not counted as a failure.
                    throttle::release(coord, limits, reservation).await;
                    tracing::warn!(
                        protocol = req.protocol.as_str(),
                        mechanism = req.mechanism.as_str(),
                        trace_id = mailfleet_telemetry::trace::current_trace_id(),
                        ip = %req.remote_ip,
                        user = %account.address,
                        result = "disabled",
                        reason = %why,
                        "login refused"
                    );
                    return Err((AuthError::Disabled(why), LoginResult::Disabled));
                }
                throttle::succeeded(coord, limits, reservation, req.remote_ip, &username).await;
                let method = match &how {
                    Verified::Main => "password".to_string(),
                    Verified::App(a) => format!("app password {:?}", a.name),
                };
                tracing::info!(
                    protocol = req.protocol.as_str(),
                    mechanism = req.mechanism.as_str(),
                    trace_id = mailfleet_telemetry::trace::current_trace_id(),
                    ip = %req.remote_ip,
                    user = %account.address,
                    %method,
                    result = "success",
                    "login"
                );
                if let Verified::App(app) = how {
                    self.touch(app);
                }
                Ok(account)
            }
            Err(failure) => {
                let known = !matches!(failure, Failure::UnknownUser);
                // The reservation stays as the counted failure. Unknown names are counted
                // too: they are what a guessing run tries.
                drop(reservation);
                tracing::warn!(
                    protocol = req.protocol.as_str(),
                    mechanism = req.mechanism.as_str(),
                    trace_id = mailfleet_telemetry::trace::current_trace_id(),
                    ip = %req.remote_ip,
                    user = ?username,
                    known,
                    result = "failure",
                    reason = failure.as_str(),
                    "authentication failed"
                );
                let why = match failure {
                    Failure::UnknownUser => LoginResult::UnknownUser,
                    Failure::BadPassword => LoginResult::BadPassword,
                    Failure::MainPasswordNeedsSecondFactor => LoginResult::SecondFactorRequired,
                };
                Err((AuthError::InvalidCredentials, why))
            }
        }
    }

    /// Looks the account up and verifies the password. The outer error is temporary.
    async fn check(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Result<(Account, Verified), Failure>, AuthError> {
        let meta = &self.inner.stores.meta;
        let account = match Address::parse(username) {
            Ok(a) => meta.get_account(&a.key()).await.map_err(temporary)?,
            Err(_) => None,
        };
        let Some(account) = account else {
            let candidate = password.to_string();
            self.verify(move || {
                verify_password(&candidate, dummy_hash());
            })
            .await?;
            return Ok(Err(Failure::UnknownUser));
        };
        let second_factor = meta
            .totp_secret(account.id)
            .await
            .map_err(temporary)?
            .is_some();
        let app = match app_password::parse(password) {
            Some((normalised, tag)) => meta
                .find_app_password(account.id, &tag)
                .await
                .map_err(temporary)?
                .map(|a| (normalised, a)),
            None => None,
        };
        if let Some(hit) = self.cached(username, password, &account, app.as_ref(), second_factor) {
            return Ok(Ok((account, hit)));
        }
        let main_hash = account.password_hash.clone();
        let candidate = password.to_string();
        let app_normalised = app.as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
        let outcome = self
            .verify(move || {
                if let Some((normalised, app)) = app {
                    if verify_password(&normalised, &app.hash) {
                        return Ok(Verified::App(app));
                    }
                    // A main password that merely looks like an app password of this
                    // account (a tag collision) still gets its own check.
                    if second_factor {
                        return Err(Failure::BadPassword);
                    }
                }
                match (verify_password(&candidate, &main_hash), second_factor) {
                    (true, false) => Ok(Verified::Main),
                    (true, true) => Err(Failure::MainPasswordNeedsSecondFactor),
                    (false, _) => Err(Failure::BadPassword),
                }
            })
            .await?;
        if let (Some(cache), Ok(how)) = (&self.inner.cache, &outcome) {
            let (login, matched) = match how {
                Verified::Main => (
                    cache::Login {
                        username,
                        password,
                        credential: cache::Credential::Main {
                            hash: &account.password_hash,
                        },
                        second_factor,
                    },
                    cache::Matched::Main,
                ),
                Verified::App(app) => (
                    cache::Login {
                        username,
                        password: &app_normalised,
                        credential: cache::Credential::App {
                            id: app.id,
                            hash: &app.hash,
                        },
                        second_factor,
                    },
                    cache::Matched::App(app.id),
                ),
            };
            cache.insert(&login, matched);
        }
        Ok(outcome.map(|how| (account, how)))
    }

    /// The credential this exact login matched within the cache lifetime, if it did; the
    /// same rules as the verification below (an app password first; the main password only
    /// without TOTP).
    fn cached(
        &self,
        username: &str,
        password: &str,
        account: &Account,
        app: Option<&(String, AppPassword)>,
        second_factor: bool,
    ) -> Option<Verified> {
        let cache = self.inner.cache.as_ref()?;
        if let Some((normalised, app)) = app {
            let login = cache::Login {
                username,
                password: normalised,
                credential: cache::Credential::App {
                    id: app.id,
                    hash: &app.hash,
                },
                second_factor,
            };
            if cache.hit(&login) == Some(cache::Matched::App(app.id)) {
                self.note_cache_hit();
                return Some(Verified::App(app.clone()));
            }
        }
        if second_factor {
            return None;
        }
        let login = cache::Login {
            username,
            password,
            credential: cache::Credential::Main {
                hash: &account.password_hash,
            },
            second_factor,
        };
        (cache.hit(&login) == Some(cache::Matched::Main)).then(|| {
            self.note_cache_hit();
            Verified::Main
        })
    }

    fn note_cache_hit(&self) {
        self.inner
            .cache_hits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Logins answered from the cache of recent successes (no password verification).
    pub fn cache_hits(&self) -> u64 {
        self.inner
            .cache_hits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs password verification on the hashing threads, within the concurrency limit.
    async fn verify<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, AuthError> {
        let _permit = self
            .inner
            .hashing
            .acquire()
            .await
            .map_err(|_| AuthError::TemporaryFailure("authenticator closed".into()))?;
        self.inner
            .verifications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.pool.run(f).await
    }

    /// Records when an app password was last used, in the background and coarsely.
    fn touch(&self, app: AppPassword) {
        let now = now_secs();
        if app
            .last_used
            .is_some_and(|t| now.saturating_sub(t) < TOUCH_INTERVAL_SECS)
        {
            return;
        }
        let meta = self.inner.stores.meta.clone();
        tokio::spawn(async move {
            if let Err(e) = meta.touch_app_password(app.id, now).await {
                tracing::warn!(error = %e, "could not record app password use");
            }
        });
    }
}

#[cfg(test)]
mod tests;
