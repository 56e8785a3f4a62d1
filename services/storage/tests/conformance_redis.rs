//! The coordinator conformance suite against a real `redis-server` (Debian's), plus what
//! only a shared coordinator can show: two nodes see each other's events and leases, and a
//! Redis restart gives temporary errors, a resync, then full service. The suite runs again
//! over TLS (`rediss://`, a throwaway CA made here), with and without client certificates,
//! and against a three-primary Redis Cluster (`storage.redis.cluster_nodes`), where keys
//! and sharded channels really land on different nodes.

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
    /// A Redis Cluster node (`--cluster-enabled yes`), its bus on `port + 10000`.
    cluster: bool,
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
/// For a cluster node the bus port (`port + 10000`) must be free too.
fn pick_port(offset: u16, cluster: bool) -> u16 {
    let start = 10000 + ((std::process::id() as u16).wrapping_mul(31) % 1500) + offset * 7;
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    (start..12000)
        .find(|p| free(*p) && (!cluster || free(*p + 10000)))
        .expect("a free port in 10000-11999")
}

/// `redis-cli`, next to `redis-server`.
fn redis_cli() -> PathBuf {
    redis_binary()
        .and_then(|b| b.parent().map(|d| d.join("redis-cli")))
        .filter(|p| p.exists())
        .expect("redis-cli next to redis-server (Debian's redis-tools)")
}

/// `redis-cli -p port args...`, its stdout; panics with its output when it fails.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(redis_cli())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "redis-cli -p {port} {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// False (skip the test) when redis-server is not installed; in CI that is a failure.
fn redis_installed() -> bool {
    if redis_binary().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "redis-server is not installed: scripts/test.sh installs Debian's redis-server"
    );
    eprintln!("redis-server not installed: skipping the Redis coordinator tests");
    false
}

impl RedisServer {
    /// `None` when redis-server is not installed and this is not CI.
    fn start(offset: u16) -> Option<Self> {
        if !redis_installed() {
            return None;
        }
        let mut s = Self {
            port: pick_port(offset, false),
            dir: tempfile::tempdir().expect("tmp"),
            child: None,
            tls: None,
            cluster: false,
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
            port: pick_port(offset, false),
            tls: Some(Tls::generate(dir.path(), auth_clients)),
            dir,
            child: None,
            cluster: false,
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
        if self.cluster {
            command
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.path().join("nodes.conf"))
                .args(["--cluster-node-timeout", "2000"]);
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

/// A Redis Cluster of three primaries (no replicas) on loopback, each node a
/// `redis-server` in its own directory, formed by `redis-cli --cluster create`; the nodes
/// are killed on drop.
struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `None` when redis-server is not installed and this is not CI (like
    /// [`RedisServer::start`]). `offset` spaces the ports of tests running side by side.
    fn start(offset: u16) -> Option<Self> {
        if !redis_installed() {
            return None;
        }
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                let mut node = RedisServer {
                    port: pick_port(offset + i, true),
                    dir: tempfile::tempdir().expect("tmp"),
                    child: None,
                    tls: None,
                    cluster: true,
                };
                node.spawn();
                node
            })
            .collect();
        let mut create = vec!["--cluster".to_string(), "create".to_string()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        cli(nodes[0].port, &create);
        let cluster = Self { nodes };
        cluster.wait_until_ok();
        Some(cluster)
    }

    /// Until every node says `cluster_state:ok` (all 16384 slots served, seen the same
    /// way by everyone), at most 30 s.
    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let infos: Vec<String> = self
                .nodes
                .iter()
                .map(|n| cli(n.port, &["cluster", "info"]))
                .collect();
            if infos.iter().all(|i| i.contains("cluster_state:ok")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok: {infos:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Cluster mode with node `seed` as the only seed: the client learns the other
    /// nodes from its slot map.
    fn config(&self, seed: usize) -> RedisConfig {
        RedisConfig {
            cluster_nodes: vec![format!("redis://127.0.0.1:{}", self.nodes[seed].port)],
            // Never used in cluster mode: nothing listens there.
            url: "redis://127.0.0.1:1/0".into(),
            key_prefix: format!("t{}:", rand::random::<u32>()),
            timeout_ms: 1000,
            ..RedisConfig::default()
        }
    }

    /// How many keys each node holds.
    fn dbsizes(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                cli(n.port, &["dbsize"])
                    .trim()
                    .parse()
                    .expect("DBSIZE is a number")
            })
            .collect()
    }

    /// How many sharded channels each node has subscribers for.
    fn shard_channel_counts(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| {
                cli(n.port, &["pubsub", "shardchannels"])
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .count()
            })
            .collect()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_coordinator_conformance() {
    let Some(cluster) = RedisCluster::start(20) else {
        return;
    };
    let coord = RedisCoordinator::connect(&cluster.config(0))
        .await
        .expect("connect to the cluster");
    conformance::coordinator(&coord).await;
    coord.check().await.expect("ping every primary");
}

/// Two nodes with different seeds share events (sharded channels spread over the
/// cluster's nodes), leases (one holder across nodes, fencing tokens counted on) and
/// counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_two_nodes_share_events_leases_and_counters() {
    let Some(cluster) = RedisCluster::start(30) else {
        return;
    };
    let a_cfg = cluster.config(0);
    let b_cfg = RedisConfig {
        key_prefix: a_cfg.key_prefix.clone(),
        ..cluster.config(2)
    };
    let a = RedisCoordinator::connect(&a_cfg).await.expect("node a");
    let b = RedisCoordinator::connect(&b_cfg).await.expect("node b");

    let accounts: Vec<AccountId> = (1..=12).map(|i| AccountId(9000 + i)).collect();
    let mut subs = Vec::new();
    for account in &accounts {
        subs.push(b.subscribe(*account).await.expect("subscribe"));
    }
    let counts = cluster.shard_channel_counts();
    assert_eq!(
        counts.iter().sum::<usize>(),
        accounts.len(),
        "one sharded channel per account: {counts:?}"
    );
    assert!(
        counts.iter().filter(|c| **c > 0).count() >= 2,
        "the accounts' channels live on several nodes: {counts:?}"
    );
    for (i, account) in accounts.iter().enumerate() {
        let event = MailboxEvent::Changed {
            account: *account,
            mailbox: MailboxId(i as i64 + 1),
            modseq: ModSeq(100 + i as u64),
        };
        a.publish(event.clone()).await.expect("publish");
        assert_eq!(
            next_event(&mut subs[i], Duration::from_secs(5)).await,
            Some(event),
            "account {account:?}"
        );
    }

    for name in ["queue:1", "uid:42", "pop3:alice@example.test", "queue:2"] {
        let la = a
            .acquire_lease(name, "node-a", Duration::from_secs(30))
            .await
            .expect("acquire")
            .expect("free");
        assert!(
            b.acquire_lease(name, "node-b", Duration::from_secs(30))
                .await
                .expect("acquire")
                .is_none(),
            "{name}: held by node a"
        );
        a.release_lease(&la).await.expect("release");
        let lb = b
            .acquire_lease(name, "node-b", Duration::from_secs(30))
            .await
            .expect("acquire")
            .expect("released");
        assert_eq!(lb.token, la.token + 1, "{name}: one grant counter");
        b.release_lease(&lb).await.expect("release");
    }

    let w = Duration::from_secs(3600);
    for key in ["login:x", "login:y", "rcpt:z"] {
        a.incr_counter(key, w).await.expect("incr");
        b.incr_counter(key, w).await.expect("incr");
        assert_eq!(a.get_counter(key, w).await.expect("get"), 2, "{key}");
        assert_eq!(b.decr_counter(key, w).await.expect("decr"), 1, "{key}");
    }
    a.mark("seen:1", Duration::from_secs(30))
        .await
        .expect("mark");
    assert!(b.is_marked("seen:1").await.expect("is_marked"));
}

/// Keys really spread over the cluster: leases, counters and marks for many names land on
/// more than one node, and none of the scripts fails with CROSSSLOT (a lease's two keys
/// share their name's hash tag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_spreads_keys_over_nodes() {
    let Some(cluster) = RedisCluster::start(40) else {
        return;
    };
    assert_eq!(cluster.dbsizes(), vec![0, 0, 0], "a fresh cluster");
    let coord = RedisCoordinator::connect(&cluster.config(1))
        .await
        .expect("connect");
    let w = Duration::from_secs(3600);
    for i in 0..40 {
        coord
            .acquire_lease(&format!("uid:{i}"), "node", Duration::from_secs(30))
            .await
            .expect("acquire")
            .expect("free");
        coord
            .incr_counter(&format!("login:{i}"), w)
            .await
            .expect("incr");
        coord
            .mark(&format!("seen:{i}"), Duration::from_secs(30))
            .await
            .expect("mark");
    }
    let sizes = cluster.dbsizes();
    // 40 leases with their grant counters, 40 counters, 40 marks.
    assert_eq!(sizes.iter().sum::<u64>(), 40 * 4, "{sizes:?}");
    assert!(
        sizes.iter().filter(|n| **n > 0).count() >= 2,
        "keys on several nodes: {sizes:?}"
    );
}
