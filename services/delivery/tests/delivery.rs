//! Delivery against a real SMTP peer: a small sink started in the test on 127.0.0.1 that
//! accepts, defers once (`451` then `250`) or refuses (`550`) recipients.

use async_trait::async_trait;
use bytes::Bytes;
use mailfleet_delivery::{Settings, Worker};
use mailfleet_storage::fault::FailingMeta;
use mailfleet_storage::{
    coord::MailboxEvent, AccountId, Coordinator, Lease, NewOutbound, NewOutboundRecipient, QueueId,
    RecipientState, StoreError, StoreResult, Stores, Subscription, Uid,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    /// `451` to the first RCPT ever, `250` after.
    DeferOnce,
    /// `451` to every RCPT.
    DeferAlways,
    Refuse,
    /// Like `Accept`, but each RCPT reply comes only after [`STALL`]: a tarpit.
    StallRcpt,
}

/// How long a `StallRcpt` sink sits on each RCPT.
const STALL: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Sink {
    messages: Mutex<Vec<String>>,
    rcpts_seen: AtomicUsize,
    /// Connections accepted.
    connections: AtomicUsize,
    /// When set, a connection that has finished a message is closed after its next
    /// reply-less pause: an idle timeout.
    drop_idle: std::sync::atomic::AtomicBool,
}

/// Starts the sink; returns its port.
async fn start_sink(mode: Mode) -> (u16, Arc<Sink>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sink = Arc::new(Sink::default());
    let s = sink.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let s = s.clone();
            s.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                let mut line = String::new();
                loop {
                    line.clear();
                    let read =
                        tokio::time::timeout(Duration::from_millis(100), r.read_line(&mut line));
                    match read.await {
                        Ok(Ok(0)) | Ok(Err(_)) => return,
                        Ok(Ok(_)) => {}
                        Err(_) => {
                            if s.drop_idle.load(Ordering::SeqCst) {
                                return;
                            }
                            // A partial line stays in `line`; keep reading into it.
                            let mut rest = String::new();
                            if r.read_line(&mut rest).await.unwrap_or(0) == 0 {
                                return;
                            }
                            line.push_str(&rest);
                        }
                    }
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n"
                    } else if cmd.starts_with("MAIL") {
                        b"250 2.1.0 ok\r\n"
                    } else if cmd.starts_with("RCPT") {
                        let n = s.rcpts_seen.fetch_add(1, Ordering::SeqCst);
                        if mode == Mode::StallRcpt {
                            tokio::time::sleep(STALL).await;
                        }
                        match mode {
                            Mode::StallRcpt => b"250 2.1.5 ok\r\n",
                            Mode::Accept => b"250 2.1.5 ok\r\n",
                            Mode::DeferOnce if n == 0 => b"451 4.3.0 try again later\r\n",
                            Mode::DeferOnce => b"250 2.1.5 ok\r\n",
                            Mode::DeferAlways => b"451 4.4.1 busy, try later\r\n",
                            Mode::Refuse => b"550 5.1.1 <bob@remote.test>: no such user\r\n",
                        }
                    } else if cmd.starts_with("DATA") {
                        let _ = w.write_all(b"354 go ahead\r\n").await;
                        let mut msg = String::new();
                        loop {
                            line.clear();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == ".\r\n" {
                                break;
                            }
                            msg.push_str(&line);
                        }
                        s.messages.lock().expect("lock").push(msg);
                        b"250 2.0.0 queued\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, sink)
}

struct Fixture {
    _dir: tempfile::TempDir,
    stores: Stores,
    settings: Settings,
}

async fn fixture(port: u16) -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let stores = mailfleet_storage::embedded::open(dir.path(), 16).expect("stores");
    stores
        .meta
        .create_domain("local.test")
        .await
        .expect("domain");
    stores
        .meta
        .create_account("alice@local.test", "h", 0)
        .await
        .expect("account");
    let mut routes = BTreeMap::new();
    routes.insert("remote.test".to_string(), format!("127.0.0.1:{port}"));
    let settings = Settings {
        hostname: "mx.local.test".into(),
        data_dir: dir.path().to_path_buf(),
        max_concurrent: 4,
        poll_interval: Duration::from_millis(50),
        lease_ttl: Duration::from_secs(30),
        retry_base: Duration::from_secs(60),
        retry_max: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(5 * 24 * 3600),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        starttls: true,
        // Unused: every test domain has a static route.
        resolver: Some("127.0.0.1:9".parse().expect("addr")),
        smarthost: None,
        routes,
        dkim_sign: true,
        dkim_lifecycle: Default::default(),
        max_per_destination: 20,
        max_per_destination_per_minute: 0,
        delay_warning: Duration::from_secs(4 * 3600),
        connection_reuse: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        // Static routes are never subject to MTA-STS; the policy paths are in mta_sts.rs.
        mta_sts: true,
        tls_ca_file: None,
        dane: false,
        dnssec_trust_anchor: None,
        mta_sts_https_port: 443,
        mx_port: 25,
    };
    Fixture {
        _dir: dir,
        stores,
        settings,
    }
}

const MESSAGE: &str = "Return-Path: <alice@local.test>\r\n\
    Received: from client by mx.local.test\r\n\
    From: Alice <alice@local.test>\r\n\
    To: bob@remote.test\r\n\
    Subject: outbound test\r\n\
    Message-ID: <t1@local.test>\r\n\
    \r\n\
    Hello Bob.\r\n\
    .leading dot line\r\n";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn enqueue(stores: &Stores) -> QueueId {
    let blob = stores
        .blobs
        .put(Bytes::from_static(MESSAGE.as_bytes()))
        .await
        .expect("blob");
    stores
        .meta
        .enqueue_outbound(NewOutbound {
            blob,
            size: MESSAGE.len() as u64,
            sender: "alice@local.test".into(),
            account: None,
            envid: None,
            ret: None,
            recipients: vec![NewOutboundRecipient {
                address: "bob@remote.test".into(),
                notify: None,
                orcpt: None,
            }],
            created_at: now(),
            trace: None,
        })
        .await
        .expect("enqueue")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_message_is_signed_stripped_and_dequeued() {
    let (port, sink) = start_sink(Mode::Accept).await;
    let f = fixture(port).await;
    mailfleet_delivery::dkim::generate(f.stores.meta.as_ref(), "local.test", 0)
        .await
        .expect("dkim keys");
    let id = enqueue(&f.stores).await;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    worker.deliver(id).await.expect("deliver");
    let got = sink.messages.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert!(m.starts_with("DKIM-Signature: v=1; a=rsa-sha256"), "{m}");
    assert!(m.contains("a=ed25519-sha256"));
    assert!(!m.contains("Return-Path:"), "Return-Path must not be sent");
    assert!(
        m.contains("\r\n..leading dot line\r\n"),
        "dot-stuffed on the wire"
    );
    assert!(
        m.ends_with("\r\n..leading dot line\r\n"),
        "no extra line added: {m:?}"
    );
    assert!(f.stores.meta.get_outbound(id).await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_then_accepted_exactly_once() {
    let (port, sink) = start_sink(Mode::DeferOnce).await;
    let f = fixture(port).await;
    let id = enqueue(&f.stores).await;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    worker.deliver(id).await.expect("first attempt");
    let q = f
        .stores
        .meta
        .get_outbound(id)
        .await
        .expect("get")
        .expect("still queued");
    let r = &q.recipients[0];
    assert_eq!(r.state, RecipientState::Queued);
    assert_eq!(r.attempts, 1);
    assert!(r
        .last_error
        .as_deref()
        .unwrap_or("")
        .starts_with("451 4.3.0"));
    assert!(sink.messages.lock().expect("lock").is_empty());
    // Not due yet: polling does nothing.
    assert_eq!(worker.poll_once().await.expect("poll"), 0);
    f.stores
        .meta
        .reschedule_outbound(id, 0)
        .await
        .expect("retry now");
    assert_eq!(worker.poll_once().await.expect("poll"), 1);
    for _ in 0..100 {
        if f.stores.meta.get_outbound(id).await.expect("get").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(f.stores.meta.get_outbound(id).await.expect("get").is_none());
    assert_eq!(sink.messages.lock().expect("lock").len(), 1);
    assert_eq!(worker.poll_once().await.expect("poll"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_recipient_bounces_to_local_inbox() {
    let (port, sink) = start_sink(Mode::Refuse).await;
    let f = fixture(port).await;
    let id = enqueue(&f.stores).await;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    worker.deliver(id).await.expect("deliver");
    assert!(sink.messages.lock().expect("lock").is_empty());
    assert!(f.stores.meta.get_outbound(id).await.expect("get").is_none());
    let alice = f
        .stores
        .meta
        .get_account("alice@local.test")
        .await
        .expect("get")
        .expect("alice");
    let inbox = f
        .stores
        .meta
        .get_mailbox(alice.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    let msgs = f
        .stores
        .meta
        .list_messages(inbox.id, Uid(0), 10)
        .await
        .expect("list");
    assert_eq!(msgs.len(), 1);
    let dsn = f.stores.blobs.get(&msgs[0].blob).await.expect("blob");
    let text = String::from_utf8_lossy(&dsn);
    assert!(text.starts_with("Return-Path: <>\r\n"));
    assert!(text.contains("multipart/report; report-type=delivery-status"));
    assert!(text.contains("Final-Recipient: rfc822; bob@remote.test"));
    assert!(text.contains("Status: 5.1.1"));
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: no such user"));
    assert!(text.contains("Remote-MTA: dns; 127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_deliver_each_message_once() {
    let (port, sink) = start_sink(Mode::Accept).await;
    let f = fixture(port).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(enqueue(&f.stores).await);
    }
    let a = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    let b = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    let (ctl, shutdown) = mailfleet_core::shutdown::ShutdownController::new();
    let ta = tokio::spawn(a.run(shutdown.clone()));
    let tb = tokio::spawn(b.run(shutdown));
    for _ in 0..200 {
        if sink.messages.lock().expect("lock").len() >= ids.len()
            && f.stores
                .meta
                .due_outbound(0, i64::MAX, 10)
                .await
                .expect("due")
                .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A little longer, so a duplicate would have time to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ctl.trigger();
    ta.await.expect("worker a");
    tb.await.expect("worker b");
    assert_eq!(sink.messages.lock().expect("lock").len(), ids.len());
    for id in ids {
        assert!(f.stores.meta.get_outbound(id).await.expect("get").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failure_after_lifetime_bounces() {
    let (port, _sink) = start_sink(Mode::DeferOnce).await;
    let mut f = fixture(port).await;
    f.settings.max_lifetime = Duration::from_secs(1);
    let id = enqueue(&f.stores).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    worker.deliver(id).await.expect("deliver");
    assert!(f.stores.meta.get_outbound(id).await.expect("get").is_none());
    let alice = f
        .stores
        .meta
        .get_account("alice@local.test")
        .await
        .expect("get")
        .expect("alice");
    let inbox = f
        .stores
        .meta
        .get_mailbox(alice.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    let msgs = f
        .stores
        .meta
        .list_messages(inbox.id, Uid(0), 10)
        .await
        .expect("list");
    assert_eq!(msgs.len(), 1, "one DSN");
    let dsn = f.stores.blobs.get(&msgs[0].blob).await.expect("blob");
    let text = String::from_utf8_lossy(&dsn);
    assert!(text.contains("Status: 4.3.0"), "{text}");
    assert!(text.contains("gave up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rate_limit_leaves_the_rest_queued_untouched() {
    let (port, sink) = start_sink(Mode::Accept).await;
    let mut f = fixture(port).await;
    f.settings.max_per_destination_per_minute = 2;
    let ids = [
        enqueue(&f.stores).await,
        enqueue(&f.stores).await,
        enqueue(&f.stores).await,
    ];
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    for id in &ids[..2] {
        worker.deliver(*id).await.expect("attempt");
    }
    // The third finds its domain at the limit: skipped without reading its body, so it
    // goes aside even when the body cannot be read (here: its bytes are gone).
    let third = f
        .stores
        .meta
        .get_outbound(ids[2])
        .await
        .expect("get")
        .expect("queued");
    f.stores.blobs.delete(&third.blob).await.expect("delete");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    worker
        .deliver(ids[2])
        .await
        .expect("a throttled attempt reads no body");
    assert_eq!(sink.messages.lock().expect("lock").len(), 2);
    assert!(f
        .stores
        .meta
        .get_outbound(ids[0])
        .await
        .expect("get")
        .is_none());
    assert!(f
        .stores
        .meta
        .get_outbound(ids[1])
        .await
        .expect("get")
        .is_none());
    let waiting = f
        .stores
        .meta
        .get_outbound(ids[2])
        .await
        .expect("get")
        .expect("still queued");
    let r = &waiting.recipients[0];
    assert_eq!(r.state, RecipientState::Queued);
    assert_eq!(
        r.attempts, 0,
        "a rate-limited entry is not charged an attempt"
    );
    assert!(r.last_error.is_none());
    // Moved aside for a short wait, out of the head of the queue.
    let wait = mailfleet_delivery::worker::throttle_wait(f.settings.poll_interval).as_secs() as i64;
    assert!(
        r.next_attempt >= before + wait && r.next_attempt <= before + wait + 5,
        "next attempt {} for a wait of {wait} s from {before}",
        r.next_attempt
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_messages_to_one_host_share_a_connection() {
    let (port, sink) = start_sink(Mode::Accept).await;
    let f = fixture(port).await;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    for _ in 0..3 {
        let id = enqueue(&f.stores).await;
        worker.deliver(id).await.expect("deliver");
        assert!(f.stores.meta.get_outbound(id).await.expect("get").is_none());
    }
    assert_eq!(sink.messages.lock().expect("lock").len(), 3);
    assert_eq!(
        sink.connections.load(Ordering::SeqCst),
        1,
        "three messages, one connection"
    );

    // Without reuse, one connection per message.
    let (port, sink) = start_sink(Mode::Accept).await;
    let mut f = fixture(port).await;
    f.settings.connection_reuse = Duration::ZERO;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    for _ in 0..3 {
        let id = enqueue(&f.stores).await;
        worker.deliver(id).await.expect("deliver");
    }
    assert_eq!(sink.messages.lock().expect("lock").len(), 3);
    assert_eq!(sink.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_connection_closed_by_the_peer_costs_no_attempt() {
    let (port, sink) = start_sink(Mode::Accept).await;
    let f = fixture(port).await;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    let first = enqueue(&f.stores).await;
    worker.deliver(first).await.expect("deliver");
    // The sink hangs up on every idle connection, as a peer's idle timeout would.
    sink.drop_idle.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = enqueue(&f.stores).await;
    worker.deliver(second).await.expect("deliver");
    assert!(f
        .stores
        .meta
        .get_outbound(second)
        .await
        .expect("get")
        .is_none());
    assert_eq!(sink.messages.lock().expect("lock").len(), 2);
    assert_eq!(sink.connections.load(Ordering::SeqCst), 2);
}

/// The messages in alice's INBOX (where DSNs to alice@local.test land).
async fn alice_inbox(stores: &Stores) -> Vec<String> {
    let alice = stores
        .meta
        .get_account("alice@local.test")
        .await
        .expect("get")
        .expect("alice");
    let inbox = stores
        .meta
        .get_mailbox(alice.id, "INBOX")
        .await
        .expect("get")
        .expect("inbox");
    let mut out = Vec::new();
    for m in stores
        .meta
        .list_messages(inbox.id, Uid(0), 100)
        .await
        .expect("list")
    {
        let b = stores.blobs.get(&m.blob).await.expect("blob");
        out.push(String::from_utf8_lossy(&b).into_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delay_warning_after_the_warning_time_then_none() {
    let (port, _sink) = start_sink(Mode::DeferAlways).await;
    let mut f = fixture(port).await;
    f.settings.delay_warning = Duration::from_secs(3600);
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");

    // A fresh message deferred: no warning yet.
    let fresh = enqueue(&f.stores).await;
    worker.deliver(fresh).await.expect("attempt");
    assert!(alice_inbox(&f.stores).await.is_empty());

    // A message queued two hours ago, deferred: one warning, and the recipient remembers it.
    let blob = f
        .stores
        .blobs
        .put(Bytes::from_static(MESSAGE.as_bytes()))
        .await
        .expect("blob");
    let old = f
        .stores
        .meta
        .enqueue_outbound(NewOutbound {
            blob,
            size: MESSAGE.len() as u64,
            sender: "alice@local.test".into(),
            account: None,
            envid: Some("ENV-OLD".into()),
            ret: None,
            recipients: vec![NewOutboundRecipient {
                address: "bob@remote.test".into(),
                notify: None,
                orcpt: None,
            }],
            created_at: now() - 7200,
            trace: None,
        })
        .await
        .expect("enqueue")
        .id;
    worker.deliver(old).await.expect("attempt");
    let inbox = alice_inbox(&f.stores).await;
    assert_eq!(inbox.len(), 1, "one delay warning");
    let dsn = &inbox[0];
    assert!(
        dsn.contains("Subject: Delayed Mail (still being retried)"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: delayed\r\n"));
    assert!(dsn.contains("Status: 4.4.1\r\n"));
    assert!(dsn.contains("Will-Retry-Until: "));
    assert!(dsn.contains("Original-Envelope-Id: ENV-OLD"));
    let q = f
        .stores
        .meta
        .get_outbound(old)
        .await
        .expect("get")
        .expect("still queued");
    assert!(q.recipients[0].delay_warned);
    assert_eq!(q.recipients[0].state, RecipientState::Queued);

    // The next deferral sends nothing more.
    worker.deliver(old).await.expect("attempt");
    assert_eq!(alice_inbox(&f.stores).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_was_taken_over_cannot_write() {
    let (port, _sink) = start_sink(Mode::DeferAlways).await;
    let f = fixture(port).await;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    let id = enqueue(&f.stores).await;
    // A newer lease holder (token 2000) has written to the entry.
    worker
        .deliver_fenced(id, Some(2000))
        .await
        .expect("attempt");
    // A worker still carrying an older token tries to record its attempt: refused.
    f.stores
        .meta
        .reschedule_outbound(id, 0)
        .await
        .expect("due again");
    let err = worker
        .deliver_fenced(id, Some(1999))
        .await
        .expect_err("stale lease");
    assert!(err.to_string().contains("older than 2000"), "{err}");
    let q = f
        .stores
        .meta
        .get_outbound(id)
        .await
        .expect("get")
        .expect("queued");
    assert_eq!(
        q.recipients[0].attempts, 1,
        "the stale attempt recorded nothing"
    );
}

/// Queues MESSAGE from alice to `rcpts`.
async fn enqueue_to(stores: &Stores, rcpts: &[&str]) -> QueueId {
    let blob = stores
        .blobs
        .put(Bytes::from_static(MESSAGE.as_bytes()))
        .await
        .expect("blob");
    stores
        .meta
        .enqueue_outbound(NewOutbound {
            blob,
            size: MESSAGE.len() as u64,
            sender: "alice@local.test".into(),
            account: None,
            envid: None,
            ret: None,
            recipients: rcpts
                .iter()
                .map(|a| NewOutboundRecipient {
                    address: a.to_string(),
                    notify: None,
                    orcpt: None,
                })
                .collect(),
            created_at: now(),
            trace: None,
        })
        .await
        .expect("enqueue")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_record_leaves_nothing_and_the_retry_neither_resends_nor_duplicates_dsns() {
    let (port, sink) = start_sink(Mode::Accept).await;
    let (refuse_port, _refuser) = start_sink(Mode::Refuse).await;
    let (defer_port, _deferrer) = start_sink(Mode::DeferAlways).await;
    let mut f = fixture(port).await;
    for (domain, port) in [("refuse.test", refuse_port), ("defer.test", defer_port)] {
        f.settings
            .routes
            .insert(domain.into(), format!("127.0.0.1:{port}"));
    }
    let failing = FailingMeta::new(f.stores.meta.clone());
    let stores = Stores::new(
        f.stores.blobs.clone(),
        failing.clone(),
        f.stores.coord.clone(),
    );
    let id = enqueue_to(
        &stores,
        &["bob@remote.test", "carol@refuse.test", "dave@defer.test"],
    )
    .await;
    let worker = Worker::new(stores.clone(), f.settings.clone()).expect("worker");

    // The store fails as the attempt's outcomes are written.
    failing.arm("record_outbound_attempt", 1);
    worker.deliver(id).await.expect_err("the record fails");
    assert_eq!(sink.messages.lock().expect("lock").len(), 1, "bob got it");
    let q = f
        .stores
        .meta
        .get_outbound(id)
        .await
        .expect("get")
        .expect("queued");
    for r in &q.recipients {
        assert_eq!(r.state, RecipientState::Queued, "no partial state: {r:?}");
        assert!(r.last_error.is_none(), "no partial state: {r:?}");
        assert_eq!(r.attempts, 1, "the claim counted the attempt: {r:?}");
        assert!(r.next_attempt > now(), "and moved it to the backoff: {r:?}");
    }
    assert!(alice_inbox(&f.stores).await.is_empty(), "no DSN delivered");
    let entries = f
        .stores
        .meta
        .list_outbound(QueueId(0), 100)
        .await
        .expect("list");
    assert_eq!(entries.len(), 1, "no DSN entry queued: {entries:?}");
    assert_eq!(
        worker.poll_once().await.expect("poll"),
        0,
        "not due again at once"
    );

    // The retry records everything at once: bob delivered, carol bounced (one DSN), dave
    // deferred.
    f.stores
        .meta
        .reschedule_outbound(id, 0)
        .await
        .expect("retry now");
    worker.deliver(id).await.expect("retry");
    assert_eq!(sink.messages.lock().expect("lock").len(), 2);
    let q = f
        .stores
        .meta
        .get_outbound(id)
        .await
        .expect("get")
        .expect("dave waits");
    let states: Vec<_> = q.recipients.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            RecipientState::Delivered,
            RecipientState::Failed,
            RecipientState::Queued
        ]
    );
    let inbox = alice_inbox(&f.stores).await;
    assert_eq!(inbox.len(), 1, "one DSN");
    assert!(inbox[0].contains("Final-Recipient: rfc822; carol@refuse.test"));
    assert_eq!(
        f.stores
            .meta
            .list_outbound(QueueId(0), 100)
            .await
            .expect("list")
            .len(),
        1,
        "the DSN entry was delivered and removed"
    );

    // Later attempts are dave's alone: bob gets nothing more, carol no second DSN.
    for _ in 0..2 {
        f.stores
            .meta
            .reschedule_outbound(id, 0)
            .await
            .expect("retry now");
        worker.deliver(id).await.expect("retry");
    }
    assert_eq!(
        sink.messages.lock().expect("lock").len(),
        2,
        "bob not resent"
    );
    assert_eq!(alice_inbox(&f.stores).await.len(), 1, "no duplicate DSN");
    let q = f
        .stores
        .meta
        .get_outbound(id)
        .await
        .expect("get")
        .expect("dave waits");
    assert_eq!(q.recipients[0].attempts, 2);
    assert_eq!(q.recipients[2].attempts, 4);
}

/// A coordinator the test can cut off from this worker: while `partitioned`, renewals
/// fail as if the network to it were down; everything else goes to `inner`.
struct Partitionable {
    inner: Arc<dyn Coordinator>,
    partitioned: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Coordinator for Partitionable {
    async fn publish(&self, event: MailboxEvent) -> StoreResult<()> {
        self.inner.publish(event).await
    }
    async fn subscribe(&self, account: AccountId) -> StoreResult<Subscription> {
        self.inner.subscribe(account).await
    }
    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Option<Lease>> {
        self.inner.acquire_lease(key, holder, ttl).await
    }
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StoreResult<bool> {
        if self.partitioned.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("partitioned".into()));
        }
        self.inner.renew_lease(lease, ttl).await
    }
    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        self.inner.release_lease(lease).await
    }
    async fn incr_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        self.inner.incr_counter(key, window).await
    }
    async fn get_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        self.inner.get_counter(key, window).await
    }
    async fn decr_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        self.inner.decr_counter(key, window).await
    }
    async fn mark(&self, key: &str, ttl: Duration) -> StoreResult<()> {
        self.inner.mark(key, ttl).await
    }
    async fn is_marked(&self, key: &str) -> StoreResult<bool> {
        self.inner.is_marked(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_attempt_before_data() {
    let (port, sink) = start_sink(Mode::StallRcpt).await;
    let mut f = fixture(port).await;
    f.settings.lease_ttl = Duration::from_millis(900);
    f.settings.command_timeout = Duration::from_secs(10);
    let coord = Arc::new(Partitionable {
        inner: f.stores.coord.clone(),
        partitioned: false.into(),
    });
    let stores = Stores::new(f.stores.blobs.clone(), f.stores.meta.clone(), coord.clone());
    let id = enqueue(&stores).await;
    let worker = Worker::new(stores.clone(), f.settings.clone()).expect("worker");
    assert_eq!(worker.poll_once().await.expect("poll"), 1);
    for _ in 0..100 {
        if sink.rcpts_seen.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.rcpts_seen.load(Ordering::SeqCst), 1, "stalled at RCPT");
    // The worker is cut off from the coordinator while the sink stalls; its lease lapses
    // and another node takes the entry.
    coord.partitioned.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let other = f
        .stores
        .coord
        .acquire_lease(
            &format!("delivery:queue:{id}"),
            "other-node",
            Duration::from_secs(30),
        )
        .await
        .expect("acquire")
        .expect("the lapsed lease is free");
    coord.partitioned.store(false, Ordering::SeqCst);
    // Past the stall: a worker still going would have sent DATA by now.
    tokio::time::sleep(STALL + Duration::from_millis(500)).await;
    assert!(
        sink.messages.lock().expect("lock").is_empty(),
        "the stale worker sent the message"
    );
    let q = f
        .stores
        .meta
        .get_outbound(id)
        .await
        .expect("get")
        .expect("queued");
    assert_eq!(
        q.recipients[0].state,
        RecipientState::Queued,
        "not marked delivered"
    );
    assert!(
        q.recipients[0].last_error.is_none(),
        "the stale worker recorded nothing"
    );
    assert!(
        f.stores
            .coord
            .renew_lease(&other, Duration::from_secs(30))
            .await
            .expect("renew"),
        "the new holder keeps the lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_confirms_the_lease_right_before_data() {
    use mailfleet_delivery::client::{
        self, ClientSettings, HostTls, RcptResult, TlsMode, Transaction,
    };
    use mailfleet_delivery::lease::LeaseGuard;
    let (port, sink) = start_sink(Mode::Accept).await;
    let coord: Arc<dyn Coordinator> =
        Arc::new(mailfleet_storage::coord::local::LocalCoordinator::new());
    let ttl = Duration::from_millis(100);
    let mine = coord
        .acquire_lease("delivery:queue:1", "me", ttl)
        .await
        .expect("acquire")
        .expect("free");
    tokio::time::sleep(Duration::from_millis(200)).await;
    coord
        .acquire_lease("delivery:queue:1", "other-node", Duration::from_secs(30))
        .await
        .expect("acquire")
        .expect("lapsed");
    // The loss is not signalled yet: only the check before DATA can catch it.
    let guard = LeaseGuard::new(coord, mine, ttl);
    assert!(!guard.is_lost());
    let settings = ClientSettings {
        helo: "mx.local.test".into(),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        tls: None,
        verified_tls: None,
    };
    let rcpts = vec!["bob@remote.test".to_string()];
    let tx = Transaction {
        sender: "alice@local.test",
        recipients: &rcpts,
        message: b"Subject: x\r\n\r\nbody\r\n",
        lease: Some(&guard),
    };
    let results = client::deliver(
        &settings,
        &client::ConnectionCache::new(Duration::ZERO),
        format!("127.0.0.1:{port}").parse().expect("addr"),
        "127.0.0.1",
        &HostTls::Mode(TlsMode::Opportunistic),
        &tx,
    )
    .await
    .expect("host usable");
    assert!(
        matches!(&results[0], RcptResult::Temporary(r) if r.contains("lease lost")),
        "{results:?}"
    );
    assert!(guard.is_lost());
    assert_eq!(
        sink.rcpts_seen.load(Ordering::SeqCst),
        1,
        "got as far as RCPT"
    );
    assert!(sink.messages.lock().expect("lock").is_empty(), "no DATA");
}

/// A queue shard is read by the node holding its lease only; a node whose slots are all
/// busy gives its shards up, and a node with room takes them and delivers the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_node_hands_its_queue_shards_to_one_with_room() {
    let (port, sink) = start_sink(Mode::StallRcpt).await;
    let mut f = fixture(port).await;
    f.settings.max_concurrent = 1;
    let a = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    let b = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    let first = enqueue(&f.stores).await;
    let second = enqueue(&f.stores).await;
    // `a` takes the only shard (SQLite has one) and starts one delivery: its one slot is
    // now busy, so it gives the shard up at the end of the poll.
    assert_eq!(a.poll_once().await.expect("poll"), 1);
    // `b` takes the shard and starts the other entry.
    assert_eq!(b.poll_once().await.expect("poll"), 1);
    let coord = &f.stores.coord;
    // Both nodes are busy: neither holds the shard now, so a third node could take it.
    let probe = coord
        .acquire_lease("delivery:shard:0", "probe", Duration::from_secs(30))
        .await
        .expect("lease")
        .expect("the shard is free while both nodes are busy");
    coord.release_lease(&probe).await.expect("release");
    for _ in 0..200 {
        if sink.messages.lock().expect("lock").len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sink.messages.lock().expect("lock").len(), 2);
    for id in [first, second] {
        for _ in 0..100 {
            if f.stores.meta.get_outbound(id).await.expect("get").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(f.stores.meta.get_outbound(id).await.expect("get").is_none());
    }
    // With room again, `a` holds the shard and `b` cannot read it meanwhile.
    let third = enqueue(&f.stores).await;
    let _ = third;
    // Wait for both nodes' slots to free (the spawned deliveries end after recording).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = a.poll_once().await.expect("poll");
    assert_eq!(
        b.poll_once().await.expect("poll"),
        0,
        "the shard is a's while a has room"
    );
}
