//! The coordinator conformance suite against a real `redis-server` (Debian's), plus what
//! only a shared coordinator can show: two nodes see each other's events and leases, and a
//! Redis restart gives temporary errors, a resync, then full service.

use mailfleet_core::config::RedisConfig;
use mailfleet_storage::coord::redis::RedisCoordinator;
use mailfleet_storage::coord::MailboxEvent;
use mailfleet_storage::{conformance, AccountId, Coordinator, MailboxId, ModSeq, StoreError};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on a loopback port with its own directory, killed on drop.
struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
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
        };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let bin = redis_binary().expect("redis-server");
        let child = Command::new(bin)
            .args([
                "--port",
                &self.port.to_string(),
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

    fn config(&self) -> RedisConfig {
        RedisConfig {
            url: format!("redis://127.0.0.1:{}/0", self.port),
            key_prefix: format!("t{}:", rand::random::<u32>()),
            timeout_ms: 500,
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
