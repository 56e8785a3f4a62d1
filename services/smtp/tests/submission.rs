//! Message submission (RFC 6409) through the SMTP session in submission mode: AUTH over
//! TLS only, sender ownership, missing header fields, local delivery and the outbound
//! queue. Raw bytes over an in-memory pipe against the real embedded store and the real
//! authenticator. The pipe stands in for a TLS stream where a test says so
//! (`Session::set_tls`, as an implicit-TLS listener does); real TLS is covered end to end.

use mailfleet_auth::sasl::encode_base64;
use mailfleet_auth::{AuthPolicy, Authenticator};
use mailfleet_core::config::AuthConfig;
use mailfleet_core::credentials::hash_password;
use mailfleet_core::shutdown::Shutdown;
use mailfleet_smtp::inbound::{serve_connection, ConnLimits, Session, SessionConfig};
use mailfleet_smtp::pipeline::Pipeline;
use mailfleet_storage::{QueueId, RecipientState, Stores, Uid};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

const PASSWORD: &str = "Corr3ct-Horse-Battery";

struct Harness {
    _dir: tempfile::TempDir,
    stores: Stores,
    auth: Authenticator,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tmp");
    let stores = mailfleet_storage::embedded::open(dir.path(), 64).expect("stores");
    stores
        .meta
        .create_domain("example.test")
        .await
        .expect("domain");
    let hash = hash_password(PASSWORD).expect("hash");
    for u in ["alice", "bob"] {
        stores
            .meta
            .create_account(&format!("{u}@example.test"), &hash, 0)
            .await
            .expect("account");
    }
    stores
        .meta
        .create_alias("sales@example.test", "alice@example.test")
        .await
        .expect("alias");
    let auth = Authenticator::new(
        stores.clone(),
        AuthPolicy::from_config(&AuthConfig {
            delay_base_ms: 0,
            ..AuthConfig::default()
        }),
    );
    Harness {
        _dir: dir,
        stores,
        auth,
    }
}

struct Client {
    r: BufReader<ReadHalf<DuplexStream>>,
    w: WriteHalf<DuplexStream>,
}

impl Client {
    /// The final line of the next (possibly multi-line) reply, or "" at EOF.
    async fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut s = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut s))
                .await
                .expect("reply within 10 s")
                .expect("read");
            if n == 0 {
                return lines;
            }
            let s = s.trim_end().to_string();
            let more = s.as_bytes().get(3) == Some(&b'-');
            lines.push(s);
            if !more {
                return lines;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        self.reply().await.pop().unwrap_or_default()
    }
}

impl Harness {
    /// A session; `tls` makes it behave as if on an implicit-TLS submission listener.
    async fn connect(&self, submission: bool, tls: bool) -> Client {
        let (client, server) = tokio::io::duplex(1 << 16);
        let cfg = Arc::new(SessionConfig {
            hostname: "mx.example.test".into(),
            max_message_size: 1024 * 1024,
            max_recipients: 100,
            max_errors: 20,
            max_messages: 100,
            max_messages_per_ip_per_minute: 0,
            starttls: false,
        });
        let mut session = Session::new(
            cfg,
            Pipeline::new(self.stores.clone(), "mx.example.test"),
            "192.0.2.7".parse().expect("ip"),
        );
        if tls {
            session.set_tls("TLS1.3 (test pipe)".into());
        }
        if submission {
            session.enable_submission(self.auth.clone());
        }
        let limits = ConnLimits {
            max_line: 4096,
            max_message_size: 1024 * 1024,
            command_timeout: Duration::from_secs(30),
            data_timeout: Duration::from_secs(30),
            data_deadline: Duration::from_secs(900),
            tls_handshake_timeout: Duration::from_secs(5),
        };
        tokio::spawn(serve_connection(
            Box::new(server),
            session,
            limits,
            None,
            Shutdown::never(),
        ));
        let (r, w) = tokio::io::split(client);
        let mut c = Client {
            r: BufReader::new(r),
            w,
        };
        assert!(c.reply().await[0].starts_with("220 "));
        c
    }

    async fn logged_in(&self, user: &str) -> Client {
        let mut c = self.connect(true, true).await;
        c.cmd("EHLO client.test").await;
        let plain = encode_base64(format!("\0{user}\0{PASSWORD}").as_bytes());
        assert_eq!(
            c.cmd(&format!("AUTH PLAIN {plain}")).await,
            "235 2.7.0 Authentication successful"
        );
        c
    }

    async fn inbox(&self, user: &str) -> Vec<String> {
        let a = self
            .stores
            .meta
            .get_account(user)
            .await
            .expect("get")
            .expect("account");
        let mb = self
            .stores
            .meta
            .get_mailbox(a.id, "INBOX")
            .await
            .expect("get")
            .expect("inbox");
        let mut out = Vec::new();
        for m in self
            .stores
            .meta
            .list_messages(mb.id, Uid(0), 1000)
            .await
            .expect("list")
        {
            let bytes = self.stores.blobs.get(&m.blob).await.expect("blob");
            out.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        out
    }
}

async fn send(c: &mut Client, from: &str, rcpts: &[&str], message: &str) -> String {
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{from}>")).await,
        "250 2.1.0 Sender OK"
    );
    for r in rcpts {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{r}>")).await,
            "250 2.1.5 Recipient OK"
        );
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.cmd(&format!("{message}\r\n.")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_needs_tls_and_mail_needs_auth() {
    let h = harness().await;
    let mut c = h.connect(true, false).await;
    c.w.write_all(b"EHLO client.test\r\n").await.expect("write");
    let ehlo = c.reply().await.join("\n");
    assert!(!ehlo.contains("AUTH"), "no AUTH before TLS: {ehlo}");
    let plain = encode_base64(format!("\0alice@example.test\0{PASSWORD}").as_bytes());
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {plain}")).await,
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.test>").await,
        "530 5.7.0 Authentication required"
    );

    let mut c = h.connect(true, true).await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "503 5.5.1 Send EHLO first");
    c.w.write_all(b"EHLO client.test\r\n").await.expect("write");
    let ehlo = c.reply().await.join("\n");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.test>").await,
        "530 5.7.0 Authentication required"
    );
    assert_eq!(
        c.cmd("AUTH CRAM-MD5").await,
        "504 5.5.4 Unrecognized authentication type"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_sessions_still_refuse_auth_and_relaying() {
    let h = harness().await;
    let mut c = h.connect(false, true).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(
        c.cmd("AUTH PLAIN AGFAYg==").await,
        "503 5.5.1 Error: authentication not enabled"
    );
    c.cmd("MAIL FROM:<alice@example.test>").await;
    assert_eq!(
        c.cmd("RCPT TO:<someone@remote.example>").await,
        "554 5.7.1 <someone@remote.example>: Relay access denied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_mechanism_and_failures() {
    let h = harness().await;
    let mut c = h.connect(true, true).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(
        c.cmd(&encode_base64(b"bob@example.test")).await,
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.cmd(&encode_base64(PASSWORD.as_bytes())).await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(c.cmd("AUTH LOGIN").await, "503 5.5.1 Already authenticated");

    let mut c = h.connect(true, true).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd("*").await, "501 5.7.0 Authentication cancelled");
    for _ in 0..2 {
        let bad = encode_base64(b"\0alice@example.test\0wrong-password");
        assert_eq!(
            c.cmd(&format!("AUTH PLAIN {bad}")).await,
            "535 5.7.8 Authentication credentials invalid"
        );
    }
    let bad = encode_base64(b"\0alice@example.test\0wrong-password");
    c.w.write_all(format!("AUTH PLAIN {bad}\r\n").as_bytes())
        .await
        .expect("write");
    let last = c.reply().await;
    assert_eq!(last[0], "535 5.7.8 Authentication credentials invalid");
    let close = c.reply().await;
    assert_eq!(
        close[0],
        "421 4.7.0 Too many failed authentication attempts"
    );
    assert!(c.reply().await.is_empty(), "connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_must_belong_to_the_account() {
    let h = harness().await;
    let alice = h
        .stores
        .meta
        .get_account("alice@example.test")
        .await
        .expect("get")
        .expect("alice");
    h.stores
        .meta
        .grant_sender(alice.id, "@shared.example")
        .await
        .expect("grant");
    let mut c = h.logged_in("alice@example.test").await;
    for forged in [
        "bob@example.test",
        "ceo@remote.example",
        "nobody@example.test",
    ] {
        let r = c.cmd(&format!("MAIL FROM:<{forged}>")).await;
        assert!(
            r.starts_with(&format!("553 5.7.1 <{forged}>: Sender address rejected")),
            "{r}"
        );
    }
    for own in [
        "alice@example.test",
        "Alice+lists@Example.TEST",
        "sales@example.test",
        "anyone@shared.example",
        "",
    ] {
        assert_eq!(
            c.cmd(&format!("MAIL FROM:<{own}>")).await,
            "250 2.1.0 Sender OK",
            "{own}"
        );
        assert!(c.cmd("RSET").await.starts_with("250"));
    }
    // The From header is checked as well, at the end of DATA.
    let r = send(
        &mut c,
        "alice@example.test",
        &["bob@example.test"],
        "From: Bob <bob@example.test>\r\nSubject: forged\r\n\r\nhi",
    )
    .await;
    assert!(
        r.starts_with("550 5.7.1 From address bob@example.test"),
        "{r}"
    );
    let r = send(
        &mut c,
        "alice@example.test",
        &["bob@example.test"],
        "From: alice@example.test\r\nFrom: bob@example.test\r\n\r\nhi",
    )
    .await;
    assert!(r.starts_with("550 5.7.1"), "every From field counts: {r}");
    // Issue 9 item 3: a header section whose first line is folded hid `From:` from the
    // check, and the prepended `Received:` then made it real. Such sections, and the other
    // ways a header can split two ways, are refused.
    for ambiguous in [
        " From: Bob <bob@example.test>\r\nSubject: hidden\r\n\r\nhi",
        "\tFrom: bob@example.test\r\n\r\nhi",
        "From : bob@example.test\r\n\r\nhi",
        "X-Junk\r\nFrom: bob@example.test\r\n\r\nhi",
    ] {
        let r = send(
            &mut c,
            "alice@example.test",
            &["bob@example.test"],
            ambiguous,
        )
        .await;
        assert!(
            r.starts_with("554 5.6.0 Message header is malformed"),
            "{ambiguous:?}: {r}"
        );
    }
    assert!(
        h.inbox("bob@example.test").await.is_empty(),
        "nothing delivered"
    );
    assert!(h
        .stores
        .meta
        .list_outbound(QueueId(0), 10)
        .await
        .expect("list")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_delivery_remote_queue_and_added_headers() {
    let h = harness().await;
    let mut c = h.logged_in("alice@example.test").await;
    let r = send(
        &mut c,
        "alice@example.test",
        &[
            "bob@example.test",
            "friend@remote.example",
            "other@elsewhere.example",
        ],
        "From: Alice <alice@example.test>\r\nSubject: hello\r\n\r\nbody",
    )
    .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    let inbox = h.inbox("bob@example.test").await;
    assert_eq!(inbox.len(), 1);
    let msg = &inbox[0];
    let header_end = msg.find("\r\n\r\n").expect("header section");
    let headers = &msg[..header_end];
    assert!(headers.contains("with ESMTPSA id"), "{headers}");
    assert!(headers.contains("\r\nDate: "), "Date added: {headers}");
    assert!(
        headers.contains("\r\nMessage-ID: <"),
        "Message-ID added: {headers}"
    );
    assert!(msg.ends_with("\r\n\r\nbody\r\n"));

    let queued = h
        .stores
        .meta
        .list_outbound(QueueId(0), 10)
        .await
        .expect("list");
    assert_eq!(
        queued.len(),
        1,
        "one queue entry for both remote recipients"
    );
    let q = &queued[0];
    assert_eq!(q.sender, "alice@example.test");
    assert_eq!(
        q.account.map(|a| a.0),
        h.stores
            .meta
            .get_account("alice@example.test")
            .await
            .expect("get")
            .map(|a| a.id.0)
    );
    let addrs: Vec<&str> = q.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(addrs, ["friend@remote.example", "other@elsewhere.example"]);
    assert!(q
        .recipients
        .iter()
        .all(|r| r.state == RecipientState::Queued));
    let stored = h.stores.blobs.get(&q.blob).await.expect("queued blob");
    assert_eq!(stored, msg.as_bytes(), "the queue holds the same blob");

    // Existing Message-ID and Date are kept; a message without From gets one.
    let r = send(
        &mut c,
        "alice@example.test",
        &["bob@example.test"],
        "Message-ID: <mine@client>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nx",
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let second = h.inbox("bob@example.test").await.pop().expect("second");
    assert_eq!(second.matches("Message-ID:").count(), 1);
    assert!(second.contains("Message-ID: <mine@client>"));
    assert_eq!(second.matches("\r\nDate:").count(), 1);
    assert!(second.contains("From: <alice@example.test>\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_parameters_are_kept_for_the_queue() {
    let h = harness().await;
    let mut c = h.logged_in("alice@example.test").await;
    // DSN is advertised on submission.
    c.w.write_all(b"EHLO client.test\r\n").await.expect("write");
    let ehlo = c.reply().await.join("\n");
    assert!(ehlo.contains("DSN"), "{ehlo}");
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.test> RET=HDRS ENVID=env+2B42")
            .await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<friend@remote.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;friend@remote.example")
            .await,
        "250 2.1.5 Recipient OK"
    );
    assert!(c
        .cmd("RCPT TO:<x@remote.example> NOTIFY=NEVER,SUCCESS")
        .await
        .starts_with("501"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let r = c
        .cmd("From: alice@example.test\r\nSubject: dsn\r\n\r\nbody\r\n.")
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let queued = h
        .stores
        .meta
        .list_outbound(QueueId(0), 10)
        .await
        .expect("list");
    assert_eq!(queued.len(), 1);
    let q = &queued[0];
    assert_eq!(q.envid.as_deref(), Some("env+2B42"));
    assert_eq!(q.ret, Some(mailfleet_storage::DsnRet::Headers));
    assert_eq!(q.recipients[0].notify.as_deref(), Some("FAILURE,DELAY"));
    assert_eq!(
        q.recipients[0].orcpt.as_deref(),
        Some("rfc822;friend@remote.example")
    );
}
