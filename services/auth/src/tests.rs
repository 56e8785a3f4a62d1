//! Authenticator tests against the real embedded stores.

use super::*;
use mailfleet_core::credentials::hash_password;
use mailfleet_storage::TotpSecret;
use std::time::Instant;

const PASSWORD: &str = "Corr3ct-Horse-Battery";

struct Fixture {
    _dir: tempfile::TempDir,
    stores: Stores,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let stores = mailfleet_storage::embedded::open(dir.path(), 16).expect("stores");
    stores
        .meta
        .create_domain("example.test")
        .await
        .expect("domain");
    let hash = hash_password(PASSWORD).expect("hash");
    for user in ["alice@example.test", "bob@example.test"] {
        stores
            .meta
            .create_account(user, &hash, 0)
            .await
            .expect("account");
    }
    Fixture { _dir: dir, stores }
}

fn policy(per_ip: u64, per_account: u64, delay_ms: u64) -> AuthPolicy {
    AuthPolicy::from_config(&AuthConfig {
        max_failures_per_ip: per_ip,
        max_failures_per_account: per_account,
        failure_window_secs: 3600,
        delay_base_ms: delay_ms,
        delay_max_ms: delay_ms * 8,
        max_attempts_per_connection: 3,
        max_concurrent_hashes: 2,
        login_cache_secs: 300,
        login_cache_entries: 100,
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn req<'a>(user: &'a str, password: &'a str, from: &str) -> LoginRequest<'a> {
    LoginRequest {
        username: user,
        password,
        remote_ip: ip(from),
        protocol: Protocol::Imap,
        mechanism: mailfleet_telemetry::Mechanism::Plain,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_password_wrong_password_and_unknown_user() {
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(100, 100, 0));
    let a = auth
        .authenticate(req("Alice@Example.TEST", PASSWORD, "192.0.2.1"))
        .await
        .expect("correct password, any case of the name");
    assert_eq!(a.address, "alice@example.test");
    assert_eq!(
        auth.authenticate(req("alice@example.test", "wrong-password", "192.0.2.1"))
            .await,
        Err(AuthError::InvalidCredentials)
    );
    assert_eq!(
        auth.authenticate(req("nobody@example.test", PASSWORD, "192.0.2.1"))
            .await,
        Err(AuthError::InvalidCredentials)
    );
    assert_eq!(
        auth.authenticate(req("not an address", PASSWORD, "192.0.2.1"))
            .await,
        Err(AuthError::InvalidCredentials)
    );
    let long = "x".repeat(10_000);
    assert_eq!(
        auth.authenticate(req(&long, &long, "192.0.2.1")).await,
        Err(AuthError::InvalidCredentials)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_costs_what_a_wrong_password_costs() {
    // Counted, not timed: an unknown user must run exactly the argon2id verifications a
    // wrong password runs (against a dummy hash of the same parameters), so the two cannot
    // be told apart by their cost. Timing would make this test depend on machine load.
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(1000, 1000, 0));
    let before = auth.verifications();
    let r = auth
        .authenticate(req("alice@example.test", "wrong-password", "192.0.2.9"))
        .await;
    assert_eq!(r.err(), Some(AuthError::InvalidCredentials));
    let known = auth.verifications() - before;
    let before = auth.verifications();
    let r = auth
        .authenticate(req("ghost@example.test", "wrong-password", "192.0.2.9"))
        .await;
    assert_eq!(r.err(), Some(AuthError::InvalidCredentials));
    let unknown = auth.verifications() - before;
    assert_eq!(known, 1, "a wrong password runs one verification");
    assert_eq!(unknown, known, "an unknown user runs the same verification");
    // The dummy hash has the cost parameters of real hashes.
    let real = mailfleet_core::credentials::hash_password("x-long-enough-secret").expect("hash");
    let params = |h: &str| h.split('$').nth(3).map(str::to_string);
    assert_eq!(params(crate::dummy_hash()), params(&real));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_passwords_work_until_revoked() {
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(100, 100, 0));
    let alice = f
        .stores
        .meta
        .get_account("alice@example.test")
        .await
        .expect("get")
        .expect("alice");
    let (stored, generated) = app_password::create(f.stores.meta.as_ref(), alice.id, "phone", 1)
        .await
        .expect("create");
    assert!(stored.last_used.is_none());
    assert!(matches!(
        app_password::create(f.stores.meta.as_ref(), alice.id, "phone", 1).await,
        Err(app_password::CreateError::Exists(_))
    ));
    for typed in [generated.display(), generated.password.to_uppercase()] {
        let a = auth
            .authenticate(req("alice@example.test", &typed, "192.0.2.2"))
            .await
            .expect("app password opens the account");
        assert_eq!(a.id, alice.id);
    }
    // Another account's app password does not open this one.
    assert_eq!(
        auth.authenticate(req("bob@example.test", &generated.display(), "192.0.2.2"))
            .await,
        Err(AuthError::InvalidCredentials)
    );
    // The main password still works alongside.
    auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.2"))
        .await
        .expect("main password");
    // last_used is written in the background.
    let mut touched = false;
    for _ in 0..50 {
        let list = f
            .stores
            .meta
            .list_app_passwords(alice.id)
            .await
            .expect("list");
        if list[0].last_used.is_some() {
            touched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(touched, "last_used recorded");
    f.stores
        .meta
        .revoke_app_password(alice.id, "phone")
        .await
        .expect("revoke");
    assert_eq!(
        auth.authenticate(req("alice@example.test", &generated.display(), "192.0.2.2"))
            .await,
        Err(AuthError::InvalidCredentials)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_turns_off_the_main_password_for_protocol_logins() {
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(100, 100, 0));
    let alice = f
        .stores
        .meta
        .get_account("alice@example.test")
        .await
        .expect("get")
        .expect("alice");
    let (_, app) = app_password::create(f.stores.meta.as_ref(), alice.id, "laptop", 1)
        .await
        .expect("create");
    f.stores
        .meta
        .set_totp_secret(
            alice.id,
            Some(TotpSecret {
                secret: totp::generate_secret(),
                created_at: 1,
            }),
        )
        .await
        .expect("enable totp");
    let shown = app.display();
    for protocol in [Protocol::Imap, Protocol::Pop3, Protocol::Submission] {
        let r = LoginRequest {
            protocol,
            ..req("alice@example.test", PASSWORD, "192.0.2.3")
        };
        assert_eq!(
            auth.authenticate(r).await,
            Err(AuthError::InvalidCredentials),
            "{protocol:?}"
        );
        let r = LoginRequest {
            protocol,
            ..req("alice@example.test", &shown, "192.0.2.3")
        };
        auth.authenticate(r).await.expect("app password accepted");
    }
    // Bob has no TOTP and is unaffected.
    auth.authenticate(req("bob@example.test", PASSWORD, "192.0.2.3"))
        .await
        .expect("bob");
    f.stores
        .meta
        .set_totp_secret(alice.id, None)
        .await
        .expect("disable totp");
    auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.3"))
        .await
        .expect("main password again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_is_slowed_then_refused_per_ip() {
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(6, 1000, 40));
    let attacker = "198.51.100.7";
    let mut durations = Vec::new();
    for _ in 0..6 {
        let start = Instant::now();
        assert_eq!(
            auth.authenticate(req("alice@example.test", "guess-guess", attacker))
                .await,
            Err(AuthError::InvalidCredentials)
        );
        durations.push(start.elapsed());
    }
    // Delays before attempts 2..6: 40, 80, 160, 320, 320 ms.
    assert!(
        durations[5] >= Duration::from_millis(300),
        "later attempts are slowed: {durations:?}"
    );
    assert!(durations[5] > durations[0]);
    // Now even the right password from that address is refused without being checked...
    match auth
        .authenticate(req("alice@example.test", PASSWORD, attacker))
        .await
    {
        Err(AuthError::Throttled { retry_after }) => {
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(3600))
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    // ...for any user name, while another address logs in normally.
    assert!(matches!(
        auth.authenticate(req("bob@example.test", PASSWORD, attacker))
            .await,
        Err(AuthError::Throttled { .. })
    ));
    auth.authenticate(req("alice@example.test", PASSWORD, "203.0.113.5"))
        .await
        .expect("another address is unaffected");
    // IPv6 neighbours in the same /64 share the count.
    let v6 = Authenticator::new(f.stores.clone(), policy(2, 1000, 0));
    for host in ["2001:db8::1", "2001:db8::2"] {
        let _ = v6
            .authenticate(req("alice@example.test", "nope-nope", host))
            .await;
    }
    assert!(matches!(
        v6.authenticate(req("alice@example.test", PASSWORD, "2001:db8::3"))
            .await,
        Err(AuthError::Throttled { .. })
    ));
    v6.authenticate(req("alice@example.test", PASSWORD, "2001:db8:0:1::3"))
        .await
        .expect("next /64 is unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_guessing_is_capped_per_account() {
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(1000, 4, 0));
    for i in 0..4 {
        let from = format!("198.51.100.{}", 10 + i);
        let _ = auth
            .authenticate(req("alice@example.test", "guess-guess", &from))
            .await;
    }
    assert!(matches!(
        auth.authenticate(req("ALICE@example.test", PASSWORD, "203.0.113.9"))
            .await,
        Err(AuthError::Throttled { .. })
    ));
    auth.authenticate(req("bob@example.test", PASSWORD, "203.0.113.9"))
        .await
        .expect("other accounts are unaffected");
}

#[tokio::test(flavor = "current_thread")]
async fn hashing_never_runs_on_async_workers() {
    // On a single-threaded runtime, a hash on the async thread would stall this timer.
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(1000, 1000, 0));
    let ticker = tokio::spawn(async {
        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            let t = Instant::now();
            tokio::time::sleep(Duration::from_millis(5)).await;
            worst = worst.max(t.elapsed());
        }
        worst
    });
    let logins: Vec<_> = (0..4)
        .map(|_| {
            let a = auth.clone();
            tokio::spawn(async move {
                a.authenticate(req("alice@example.test", PASSWORD, "192.0.2.50"))
                    .await
            })
        })
        .collect();
    for l in logins {
        l.await.expect("join").expect("login");
    }
    let worst = ticker.await.expect("ticker");
    assert!(
        worst < Duration::from_millis(500),
        "timer stalled {worst:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_from_one_address_verify_at_most_the_limit() {
    // 50 wrong passwords at once from one address with a limit of 5: the counter is taken
    // before verifying, so no more than 5 of them get an argon2id verification (reading
    // the counter first and counting after let all 50 through).
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(5, 1000, 0));
    let attempts: Vec<_> = (0..50)
        .map(|_| {
            let a = auth.clone();
            tokio::spawn(async move {
                a.authenticate(req("alice@example.test", "guess-guess", "198.51.100.77"))
                    .await
            })
        })
        .collect();
    let mut refused = 0;
    for a in attempts {
        match a.await.expect("join") {
            Err(AuthError::Throttled { .. }) => refused += 1,
            Err(AuthError::InvalidCredentials) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        auth.verifications() <= 5,
        "{} verifications for a limit of 5",
        auth.verifications()
    );
    assert_eq!(refused, 50 - auth.verifications());
    // The address stays refused, even with the right password.
    assert!(matches!(
        auth.authenticate(req("alice@example.test", PASSWORD, "198.51.100.77"))
            .await,
        Err(AuthError::Throttled { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_logins_do_not_use_up_the_limit() {
    // Successes are not failures: ten good logins from one address with a limit of 2
    // leave it free, and a failure afterwards is the first one counted.
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(2, 1000, 0));
    for _ in 0..10 {
        auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.60"))
            .await
            .expect("login");
    }
    assert_eq!(
        auth.authenticate(req("bob@example.test", "wrong-password", "192.0.2.60"))
            .await,
        Err(AuthError::InvalidCredentials)
    );
    auth.authenticate(req("bob@example.test", PASSWORD, "192.0.2.60"))
        .await
        .expect("one failure is under the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_against_an_account_does_not_lock_out_its_known_addresses() {
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(1000, 4, 0));
    // The owner has logged in from home before the attack.
    let home = "203.0.113.20";
    auth.authenticate(req("alice@example.test", PASSWORD, home))
        .await
        .expect("owner logs in");
    // A stranger guesses from another network until the account-wide limit is hit.
    for _ in 0..10 {
        let _ = auth
            .authenticate(req("alice@example.test", "guess-guess", "198.51.100.30"))
            .await;
    }
    // The owner's address still gets in.
    let a = auth
        .authenticate(req("alice@example.test", PASSWORD, home))
        .await
        .expect("a known-good address is not locked out by a stranger");
    assert_eq!(a.address, "alice@example.test");
    // A new address for that account waits for the window to end, as documented: the
    // account-wide limit exists to stop a guessing campaign spread over many addresses.
    assert!(matches!(
        auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.99"))
            .await,
        Err(AuthError::Throttled { .. })
    ));
    // The known address is known for this account only.
    auth.authenticate(req("bob@example.test", PASSWORD, "192.0.2.99"))
        .await
        .expect("other accounts are unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_login_is_answered_from_the_cache_of_successes() {
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(100, 100, 0));
    auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.20"))
        .await
        .expect("first login");
    let verified = auth.verifications();
    for _ in 0..5 {
        auth.authenticate(req("Alice@example.test", PASSWORD, "192.0.2.21"))
            .await
            .expect("again");
    }
    assert_eq!(
        auth.verifications(),
        verified,
        "no hashing for a cached success"
    );
    assert_eq!(auth.cache_hits(), 5);
    // A wrong password is never answered from the cache: verified, refused, counted.
    assert_eq!(
        auth.authenticate(req("alice@example.test", "wrong-password", "192.0.2.20"))
            .await,
        Err(AuthError::InvalidCredentials)
    );
    assert_eq!(auth.verifications(), verified + 1);
    // Another account with the same password is its own entry.
    auth.authenticate(req("bob@example.test", PASSWORD, "192.0.2.20"))
        .await
        .expect("bob");
    assert_eq!(auth.verifications(), verified + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_app_password_revocation_or_totp_takes_effect_at_once() {
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(100, 100, 0));
    let alice = f
        .stores
        .meta
        .get_account("alice@example.test")
        .await
        .expect("get")
        .expect("alice");
    // Main password, cached, then changed (as another node would: through the store).
    auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.30"))
        .await
        .expect("login");
    let new = "Brand-New-Passw0rd-here";
    f.stores
        .meta
        .set_password_hash("alice@example.test", &hash_password(new).expect("hash"))
        .await
        .expect("change");
    assert_eq!(
        auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.30"))
            .await,
        Err(AuthError::InvalidCredentials),
        "the old password stops working at once"
    );
    auth.authenticate(req("alice@example.test", new, "192.0.2.30"))
        .await
        .expect("new password");
    // An app password, cached, then revoked.
    let (_, generated) = app_password::create(f.stores.meta.as_ref(), alice.id, "phone", 1)
        .await
        .expect("create");
    for _ in 0..2 {
        auth.authenticate(req(
            "alice@example.test",
            &generated.display(),
            "192.0.2.30",
        ))
        .await
        .expect("app password");
    }
    assert!(auth.cache_hits() >= 1);
    f.stores
        .meta
        .revoke_app_password(alice.id, "phone")
        .await
        .expect("revoke");
    assert_eq!(
        auth.authenticate(req(
            "alice@example.test",
            &generated.display(),
            "192.0.2.30"
        ))
        .await,
        Err(AuthError::InvalidCredentials),
        "a revoked app password stops working at once"
    );
    // The main password, cached, then TOTP turned on: protocol logins need an app password.
    auth.authenticate(req("alice@example.test", new, "192.0.2.30"))
        .await
        .expect("cached again");
    f.stores
        .meta
        .set_totp_secret(
            alice.id,
            Some(TotpSecret {
                secret: totp::generate_secret(),
                created_at: 1,
            }),
        )
        .await
        .expect("enable totp");
    assert_eq!(
        auth.authenticate(req("alice@example.test", new, "192.0.2.30"))
            .await,
        Err(AuthError::InvalidCredentials),
        "TOTP applies at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_off_every_login_is_verified() {
    let f = fixture().await;
    let mut p = policy(100, 100, 0);
    p.login_cache_ttl = Duration::ZERO;
    let auth = Authenticator::new(f.stores.clone(), p);
    for _ in 0..3 {
        auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.40"))
            .await
            .expect("login");
    }
    assert_eq!(auth.verifications(), 3);
    assert_eq!(auth.cache_hits(), 0);
}

/// A suspension or a disabled protocol refuses even a cached login at once; a wrong
/// password on a suspended account still says only "invalid credentials"; refusals of a
/// right password do not count towards the lockout; lifting the suspension restores logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_account_or_a_disabled_protocol_is_refused_at_once() {
    use mailfleet_storage::{AccountSettings, Protocols};
    let f = fixture().await;
    let auth = Authenticator::new(f.stores.clone(), policy(100, 2, 0));
    auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.30"))
        .await
        .expect("login before");
    let suspended = AccountSettings {
        suspended: true,
        ..Default::default()
    };
    f.stores
        .meta
        .set_account_settings("alice@example.test", &suspended)
        .await
        .expect("suspend");
    for _ in 0..4 {
        assert_eq!(
            auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.30"))
                .await,
            Err(AuthError::Disabled(Disabled::Suspended))
        );
    }
    assert_eq!(
        auth.authenticate(req("alice@example.test", "wrong-password", "192.0.2.30"))
            .await,
        Err(AuthError::InvalidCredentials),
        "a guess learns nothing about the suspension"
    );

    let pop3_only = AccountSettings {
        protocols: Protocols {
            imap: false,
            pop3: true,
            submission: false,
            jmap: false,
        },
        ..Default::default()
    };
    f.stores
        .meta
        .set_account_settings("alice@example.test", &pop3_only)
        .await
        .expect("protocols");
    assert_eq!(
        auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.30"))
            .await,
        Err(AuthError::Disabled(Disabled::ProtocolNotEnabled))
    );
    let pop3 = LoginRequest {
        protocol: Protocol::Pop3,
        ..req("alice@example.test", PASSWORD, "192.0.2.30")
    };
    auth.authenticate(pop3).await.expect("POP3 is enabled");
    let submission = LoginRequest {
        protocol: Protocol::Submission,
        ..req("alice@example.test", PASSWORD, "192.0.2.30")
    };
    assert_eq!(
        auth.authenticate(submission).await,
        Err(AuthError::Disabled(Disabled::ProtocolNotEnabled))
    );

    // Four refused right passwords and one wrong one: under the per-account limit of 2
    // failures only if the refusals were not counted.
    f.stores
        .meta
        .set_account_settings("alice@example.test", &AccountSettings::default())
        .await
        .expect("restore");
    auth.authenticate(req("alice@example.test", PASSWORD, "192.0.2.31"))
        .await
        .expect("login after the suspension is lifted");
}
