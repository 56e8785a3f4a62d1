//! The coordinator conformance suite against a real `redis-server` (Debian's), plus what
//! only a shared coordinator can show: two nodes see each other's events and leases, and a
//! Redis restart gives temporary errors, a resync, then full service. The suite runs again
//! over TLS (`rediss://`, a throwaway CA made here), with and without client certificates.

use mailfleet_core::config::RedisConfig;
use mailfleet_storage::coord::redis::RedisCoordinator;
use mailfleet_storage::coord::MailboxEvent;
use mailfleet_storage::{conformance, AccountId, Coordinator, MailboxId, ModSeq, StoreError};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a loopback port with its own directory, killed on drop.
struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Set: the server speaks only TLS on `port` (`--port 0 --tls-port`).
    tls: Option<Tls>,
}

/// TLS for a test server: the `--tls-auth-clients` mode, and a throwaway CA in the server's
/// directory that issued the server's certificate (for 127.0.0.1) and a client certificate.
struct Tls {
    auth_clients: &'static str,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Tls {
    fn generate(dir: &Path, auth_clients: &'static str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Mailfleet test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key).expect("CA certificate");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.extended_key_usages = vec![usage];
            let cert = params
                .signed_by(&key, &ca, &ca_key)
                .expect("leaf certificate");
            (cert.pem(), key.serialize_pem())
        };
        // "127.0.0.1" becomes an IP address SAN, which is what a rediss://127.0.0.1 URL checks.
        let (server_pem, server_key_pem) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_pem, client_key_pem) = leaf(
            vec!["mailfleet-test".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        Self {
            auth_clients,
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server.key", &server_key_pem),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client.key", &client_key_pem),
        }
    }
}

fn redis_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var("MAILFLEET_REDIS_SERVER").ok(),
        Some("/usr/bin/redis-server".to_string()),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A port from 10000-11999 (below the ephemeral range, so no outgoing connection takes it
/// between the check and redis-server's bind), varied by process id across test binaries.
fn pick_port(offset: u16) -> u16 {
    let start = 10000 + ((std::process::id() as u16).wrapping_mul(31) % 1500) + offset * 7;
    (start..12000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 10000-11999")
}

impl RedisServer {
    /// `None` when redis-server is not installed and this is not CI.
    fn start(offset: u16) -> Option<Self> {
        if redis_binary().is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed: scripts/test.sh installs Debian's redis-server"
            );
            eprintln!("redis-server not installed: skipping the Redis coordinator tests");
            return None;
        }
        let mut s = Self {
            port: pick_port(offset),
            dir: tempfile::tempdir().expect("tmp"),
            child: None,
            tls: None,
        };
        s.spawn();
        Some(s)
    }

    /// A server that speaks only TLS, asking clients for certificates per `auth_clients`
    /// (`no`, `optional` or `yes`).
    fn start_tls(offset: u16, auth_clients: &'static str) -> Option<Self> {
        redis_binary()?;
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Self {
            port: pick_port(offset),
            tls: Some(Tls::generate(dir.path(), auth_clients)),
            dir,
            child: None,
        };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let bin = redis_binary().expect("redis-server");
        let port = self.port.to_string();
        let mut command = Command::new(bin);
        match &self.tls {
            None => {
                command.args(["--port", &port]);
            }
            Some(tls) => {
                command
                    .args(["--port", "0", "--tls-port", &port, "--tls-cert-file"])
                    .arg(&tls.server_cert)
                    .arg("--tls-key-file")
                    .arg(&tls.server_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", tls.auth_clients]);
            }
        }
        let child = command
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Plain: `redis://`. TLS: `rediss://` trusting the test CA, without a client
    /// certificate.
    fn config(&self) -> RedisConfig {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        RedisConfig {
            url: format!("{scheme}://127.0.0.1:{}/0", self.port),
            key_prefix: format!("t{}:", rand::random::<u32>()),
            timeout_ms: 500,
            tls_ca_file: self.tls.as_ref().map(|t| t.ca.clone()),
            ..RedisConfig::default()
        }
    }

    /// [`Self::config`] presenting the test client certificate.
    fn config_with_client_cert(&self) -> RedisConfig {
        let tls = self.tls.as_ref().expect("a TLS server");
        RedisConfig {
            tls_cert_file: Some(tls.client_cert.clone()),
            tls_key_file: Some(tls.client_key.clone()),
            ..self.config()
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn next_event(
    sub: &mut mailfleet_storage::Subscription,
    within: Duration,
) -> Option<MailboxEvent> {
    tokio::time::timeout(within, sub.next())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_coordinator_conformance() {
    let Some(server) = RedisServer::start(0) else {
        return;
    };
    let coord = RedisCoordinator::connect(&server.config())
        .await
        .expect("connect");
    conformance::coordinator(&coord).await;
    coord.check().await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_events_leases_and_counters() {
    let Some(server) = RedisServer::start(1) else {
        return;
    };
    let cfg = server.config();
    let a = RedisCoordinator::connect(&cfg).await.expect("node a");
    let b = RedisCoordinator::connect(&cfg).await.expect("node b");
    let account = AccountId(4242);
    // Two local subscribers on node b share one Redis subscription; both get the event.
    let mut s1 = b.subscribe(account).await.expect("subscribe");
    let mut s2 = b.subscribe(account).await.expect("subscribe");
    let event = MailboxEvent::Changed {
        account,
        mailbox: MailboxId(5),
        modseq: ModSeq(9),
    };
    a.publish(event.clone()).await.expect("publish");
    assert_eq!(
        next_event(&mut s1, Duration::from_secs(5)).await,
        Some(event.clone())
    );
    assert_eq!(
        next_event(&mut s2, Duration::from_secs(5)).await,
        Some(event)
    );

    let la = a
        .acquire_lease("queue:1", "node-a", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("free");
    assert!(b
        .acquire_lease("queue:1", "node-b", Duration::from_secs(30))
        .await
        .expect("acquire")
        .is_none());
    assert!(!b
        .renew_lease(
            &mailfleet_storage::Lease {
                holder: "node-b".into(),
                ..la.clone()
            },
            Duration::from_secs(30)
        )
        .await
        .expect("renew"));
    a.release_lease(&la).await.expect("release");
    let lb = b
        .acquire_lease("queue:1", "node-b", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("released");
    assert_eq!(lb.token, la.token + 1);

    let w = Duration::from_secs(3600);
    a.incr_counter("login:x", w).await.expect("incr");
    b.incr_counter("login:x", w).await.expect("incr");
    assert_eq!(a.get_counter("login:x", w).await.expect("get"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_gives_temporary_errors_then_service() {
    let Some(mut server) = RedisServer::start(2) else {
        return;
    };
    let cfg = server.config();
    let a = RedisCoordinator::connect(&cfg).await.expect("node a");
    let b = RedisCoordinator::connect(&cfg).await.expect("node b");
    let account = AccountId(77);
    let mut sub = b.subscribe(account).await.expect("subscribe");

    server.stop();
    let started = Instant::now();
    let err = a
        .publish(MailboxEvent::MailboxesChanged { account })
        .await
        .expect_err("redis is down");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        matches!(
            a.acquire_lease("k", "a", Duration::from_secs(1)).await,
            Err(StoreError::Unavailable(_))
        ),
        "leases fail as unavailable"
    );
    assert!(matches!(
        a.incr_counter("c", Duration::from_secs(60)).await,
        Err(StoreError::Unavailable(_))
    ));
    // Bounded, not hung: every call above gave up by its deadline (generous slack, this is
    // a liveness check rather than a timing assertion).
    assert!(started.elapsed() < Duration::from_secs(30));
    // The subscriber learns that events may have been missed.
    assert_eq!(
        next_event(&mut sub, Duration::from_secs(10)).await,
        Some(MailboxEvent::Resync { account })
    );

    server.spawn();
    // Service resumes by itself: publish until the new connection delivers.
    let event = MailboxEvent::Changed {
        account,
        mailbox: MailboxId(1),
        modseq: ModSeq(2),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "no service after redis restarted"
        );
        if a.publish(event.clone()).await.is_ok() {
            match next_event(&mut sub, Duration::from_millis(500)).await {
                Some(e) if e == event => break,
                _ => continue,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a
        .acquire_lease("after-restart", "a", Duration::from_secs(5))
        .await
        .expect("lease after restart")
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_coordinator_conformance_over_tls() {
    let Some(server) = RedisServer::start_tls(3, "no") else {
        return;
    };
    let coord = RedisCoordinator::connect(&server.config())
        .await
        .expect("connect over TLS with the test CA");
    // Events, leases and counters: the command connection and the dedicated pub/sub
    // connection both have to speak TLS, since the server has no plain port.
    conformance::coordinator(&coord).await;
    coord.check().await.expect("ping");
}

/// Without the CA the self-signed chain cannot verify (the system's roots are used): the
/// start fails, and the error says what the certificate was checked against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_without_the_ca_fails_with_a_clear_error() {
    let Some(server) = RedisServer::start_tls(4, "no") else {
        return;
    };
    let cfg = RedisConfig {
        tls_ca_file: None,
        ..server.config()
    };
    let err = RedisCoordinator::connect(&cfg)
        .await
        .err()
        .expect("an unknown CA is refused");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(text.contains("certificate"), "{text}");
    assert!(text.contains("storage.redis.tls_ca_file"), "{text}");

    // A CA file without a certificate, or a key that is not the certificate's, is refused
    // before any connection, naming the key to fix.
    let tls = server.tls.as_ref().expect("tls");
    let empty = server.dir.path().join("empty.pem");
    std::fs::write(&empty, "not PEM\n").expect("write");
    for (cfg, key) in [
        (
            RedisConfig {
                tls_ca_file: Some(empty.clone()),
                ..server.config()
            },
            "storage.redis.tls_ca_file",
        ),
        (
            RedisConfig {
                tls_key_file: Some(tls.server_key.clone()),
                ..server.config_with_client_cert()
            },
            "storage.redis.tls_key_file",
        ),
        (
            RedisConfig {
                tls_cert_file: Some(server.dir.path().join("missing.pem")),
                ..server.config_with_client_cert()
            },
            "storage.redis.tls_cert_file",
        ),
    ] {
        let err = RedisCoordinator::connect(&cfg).await.err().expect(key);
        assert!(matches!(err, StoreError::Invalid(_)), "{key}: {err:?}");
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}

/// Mutual TLS (`--tls-auth-clients yes`): with the client certificate two nodes share
/// events, leases and counters; without it the server refuses the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_client_certificate() {
    let Some(server) = RedisServer::start_tls(5, "yes") else {
        return;
    };
    let cfg = server.config_with_client_cert();
    let a = RedisCoordinator::connect(&cfg).await.expect("node a");
    let b = RedisCoordinator::connect(&cfg).await.expect("node b");
    conformance::coordinator(&a).await;
    let account = AccountId(515);
    let mut sub = b.subscribe(account).await.expect("subscribe");
    let event = MailboxEvent::Changed {
        account,
        mailbox: MailboxId(2),
        modseq: ModSeq(3),
    };
    a.publish(event.clone()).await.expect("publish");
    assert_eq!(
        next_event(&mut sub, Duration::from_secs(5)).await,
        Some(event)
    );
    let lease = a
        .acquire_lease("mtls", "node-a", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("free");
    assert!(b
        .acquire_lease("mtls", "node-b", Duration::from_secs(30))
        .await
        .expect("acquire")
        .is_none());
    a.release_lease(&lease).await.expect("release");
    let w = Duration::from_secs(3600);
    a.incr_counter("mtls", w).await.expect("incr");
    assert_eq!(b.incr_counter("mtls", w).await.expect("incr"), 2);

    // TLS 1.3 sends the refusal after the client's side of the handshake: it surfaces at
    // connect or at the first command, never as a working coordinator.
    match RedisCoordinator::connect(&server.config()).await {
        Err(e) => {
            assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
            assert!(e.to_string().contains("tls_cert_file"), "{e}");
        }
        Ok(c) => {
            let e = c.check().await.expect_err("no client certificate");
            assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        }
    }
}
