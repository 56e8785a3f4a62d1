//! Black-box tests of inbound SMTP: raw bytes through the connection driver over an
//! in-memory pipe, against the real embedded store. No network.

use mailfleet_core::budget::ByteBudget;
use mailfleet_core::shutdown::Shutdown;
use mailfleet_smtp::inbound::{serve_connection, ConnLimits, Session, SessionConfig};
use mailfleet_smtp::pipeline::Pipeline;
use mailfleet_storage::{Stores, Uid};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

struct Harness {
    _dir: tempfile::TempDir,
    stores: Stores,
    cfg: Arc<SessionConfig>,
    limits: ConnLimits,
    /// Shared by every connection of the harness, as one process's listeners share it.
    budget: ByteBudget,
}

impl Harness {
    async fn new() -> Self {
        Self::with(|_, _| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut SessionConfig, &mut ConnLimits)) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let stores = mailfleet_storage::embedded::open(dir.path(), 64).expect("stores");
        stores
            .meta
            .create_domain("example.test")
            .await
            .expect("domain");
        for u in ["alice", "bob"] {
            stores
                .meta
                .create_account(&format!("{u}@example.test"), "x", 0)
                .await
                .expect("account");
        }
        stores
            .meta
            .create_alias("sales@example.test", "alice@example.test")
            .await
            .expect("alias");
        let mut cfg = SessionConfig {
            hostname: "mx.example.test".into(),
            max_message_size: 1024 * 1024,
            max_recipients: 100,
            max_errors: 10,
            max_messages: 100,
            max_messages_per_ip_per_minute: 0,
            starttls: false,
        };
        let mut limits = ConnLimits {
            max_line: 4096,
            max_message_size: 1024 * 1024,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            data_deadline: Duration::from_secs(900),
            tls_handshake_timeout: Duration::from_secs(10),
        };
        tweak(&mut cfg, &mut limits);
        limits.max_message_size = cfg.max_message_size;
        Self {
            _dir: dir,
            stores,
            cfg: Arc::new(cfg),
            limits,
            budget: ByteBudget::unlimited(),
        }
    }

    /// A harness whose connections share an in-flight budget of `bytes`.
    async fn with_budget(bytes: usize) -> Self {
        Self {
            budget: ByteBudget::new(bytes),
            ..Self::new().await
        }
    }

    fn connect(&self) -> (Client, JoinHandle<std::io::Result<()>>) {
        // 1 MiB each way: the RCPT tests pipeline 150 KB of replies before reading any.
        let (client, server) = tokio::io::duplex(1 << 20);
        let session = Session::new(
            self.cfg.clone(),
            Pipeline::new(self.stores.clone(), "mx.example.test")
                .with_inflight_budget(self.budget.clone()),
            "192.0.2.7".parse().expect("ip"),
        );
        let task = tokio::spawn(serve_connection(
            Box::new(server),
            session,
            self.limits,
            None,
            Shutdown::never(),
        ));
        (
            Client {
                io: client,
                buf: Vec::new(),
            },
            task,
        )
    }

    async fn inbox(&self, user: &str) -> Vec<Vec<u8>> {
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
            .list_messages(mb.id, Uid(0), 10_000)
            .await
            .expect("list")
        {
            out.push(self.stores.blobs.get(&m.blob).await.expect("blob").to_vec());
        }
        out
    }
}

struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }

    /// Reads one complete (possibly multi-line) reply; returns its lines, or None at EOF.
    async fn reply(&mut self) -> Option<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    return Some(lines);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.io.read(&mut chunk).await.expect("read");
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn code(&mut self) -> String {
        let r = self.reply().await.expect("a reply");
        r.last().expect("line")[..3].to_string()
    }

    /// The final line of the next reply.
    async fn line(&mut self) -> String {
        self.reply().await.expect("a reply").pop().expect("line")
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.line().await
    }
}

async fn greet(h: &Harness) -> (Client, JoinHandle<std::io::Result<()>>) {
    let (mut c, t) = h.connect();
    assert!(c.line().await.starts_with("220 mx.example.test ESMTP"));
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.starts_with("250 "), "{ehlo}");
    (c, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehlo_advertises_extensions() {
    let h = Harness::new().await;
    let (mut c, _t) = h.connect();
    c.line().await;
    c.send(b"EHLO client.test\r\n").await;
    let lines = c.reply().await.expect("reply").join("\n");
    for ext in [
        "PIPELINING",
        "SIZE 1048576",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(lines.contains(ext), "missing {ext}: {lines}");
    }
    assert!(
        !lines.contains("STARTTLS"),
        "no STARTTLS without a certificate"
    );
    assert!(c.cmd("HELP").await.starts_with("214"));
    assert!(c.cmd("NOOP").await.starts_with("250 2.0.0"));
    assert!(c.cmd("VRFY alice").await.starts_with("252"));
    assert!(c.cmd("QUIT").await.starts_with("221 2.0.0"));
    assert!(c.reply().await.is_none(), "closed after QUIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transaction_delivers_to_users_and_alias_once() {
    let h = Harness::new().await;
    let (mut c, _t) = greet(&h).await;
    c.send(
        b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<BOB@Example.Test>\r\n\
RCPT TO:<sales@example.test>\r\nDATA\r\n",
    )
    .await;
    for expected in ["250", "250", "250", "250", "354"] {
        assert_eq!(c.code().await, expected);
    }
    c.send(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n").await;
    let done = c.line().await;
    assert!(done.starts_with("250 2.0.0 Ok: queued as"), "{done}");
    let alice = h.inbox("alice@example.test").await;
    let bob = h.inbox("bob@example.test").await;
    assert_eq!(alice.len(), 1, "alias and direct RCPT give one copy");
    assert_eq!(bob.len(), 1);
    assert_eq!(alice[0], bob[0], "one stored body for every recipient");
    let text = String::from_utf8(alice[0].clone()).expect("utf8");
    assert!(text
        .starts_with("Return-Path: <s@remote.test>\r\nReceived: from client.test ([192.0.2.7])"));
    assert!(
        text.ends_with("Subject: hi\r\n\r\n.dot\r\nbody\r\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequencing_and_recipient_errors() {
    let h = Harness::with(|cfg, _| cfg.max_errors = 50).await;
    let (mut c, _t) = h.connect();
    c.line().await;
    assert!(c.cmd("MAIL FROM:<a@b.test>").await.starts_with("503 5.5.1"));
    assert!(c.cmd("EHLO x").await.starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<alice@example.test>")
        .await
        .starts_with("503 5.5.1"));
    assert!(c.cmd("DATA").await.starts_with("503 5.5.1"));
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250 2.1.0"));
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("503 5.5.1"));
    assert!(c
        .cmd("RCPT TO:<nobody@example.test>")
        .await
        .starts_with("550 5.1.1"));
    assert!(c
        .cmd("RCPT TO:<victim@elsewhere.test>")
        .await
        .starts_with("554 5.7.1"));
    assert!(c.cmd("DATA").await.starts_with("554 5.5.1"));
    assert!(c
        .cmd("RCPT TO:<alice+news@example.test>")
        .await
        .starts_with("250"));
    assert!(c.cmd("RSET").await.starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<alice@example.test>")
        .await
        .starts_with("503"));
    assert!(c
        .cmd("MAIL FROM:<a@b.test> SIZE=99999999")
        .await
        .starts_with("552 5.3.4"));
    assert!(c
        .cmd("MAIL FROM:<a@b.test> RET=HDRS")
        .await
        .starts_with("555 5.5.4"));
    assert!(c
        .cmd("MAIL FROM:<jörg@b.test>")
        .await
        .starts_with("553 5.6.7"));
    assert!(c
        .cmd("MAIL FROM:<jörg@b.test> SMTPUTF8")
        .await
        .starts_with("250"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plus_addressing_and_catch_all() {
    let h = Harness::new().await;
    h.stores
        .meta
        .create_alias("@example.test", "bob@example.test")
        .await
        .expect("catch-all");
    let (mut c, _t) = greet(&h).await;
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<alice+lists@example.test>")
        .await
        .starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<anything@example.test>")
        .await
        .starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: x\r\n\r\nx\r\n.\r\n").await;
    assert!(c.line().await.starts_with("250"));
    assert_eq!(h.inbox("alice@example.test").await.len(), 1);
    assert_eq!(h.inbox("bob@example.test").await.len(), 1);
}

/// A domain alias (`@alias.test` → `@example.test`): each local part is delivered to the
/// same one of the other domain, subaddress included; an unknown one is refused like at
/// the other domain; a loop of domain aliases ends in a refusal, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_alias_delivers_to_the_same_local_part() {
    let h = Harness::new().await;
    let meta = &h.stores.meta;
    for d in ["alias.test", "loop-a.test", "loop-b.test"] {
        meta.create_domain(d).await.expect("domain");
    }
    meta.create_alias("@alias.test", "@example.test")
        .await
        .expect("domain alias");
    meta.create_alias("@loop-a.test", "@loop-b.test")
        .await
        .expect("a");
    meta.create_alias("@loop-b.test", "@loop-a.test")
        .await
        .expect("b");
    let (mut c, _t) = greet(&h).await;
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    let r = c.cmd("RCPT TO:<Alice@alias.test>").await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<bob+news@alias.test>").await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<nobody@alias.test>").await;
    assert!(r.starts_with("550"), "{r}");
    let r = c.cmd("RCPT TO:<x@loop-a.test>").await;
    assert!(r.starts_with("550"), "{r}");
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: via alias\r\n\r\nx\r\n.\r\n").await;
    assert!(c.line().await.starts_with("250"));
    assert_eq!(h.inbox("alice@example.test").await.len(), 1);
    assert_eq!(h.inbox("bob@example.test").await.len(), 1);
}

/// Every smuggling variant is content; only one message is stored, containing the
/// would-be second transaction as text, with every line ending normalised to CRLF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_sequences_cannot_inject_a_second_message() {
    let h = Harness::new().await;
    let variants: [&[u8]; 8] = [
        b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n",
    ];
    for (i, seq) in variants.iter().enumerate() {
        let (mut c, _t) = greet(&h).await;
        assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
        assert!(c
            .cmd("RCPT TO:<alice@example.test>")
            .await
            .starts_with("250"));
        assert!(c.cmd("DATA").await.starts_with("354"));
        let mut msg = format!("Subject: variant {i}\r\n\r\nhello").into_bytes();
        msg.extend_from_slice(seq);
        msg.extend_from_slice(
            b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n\
Subject: smuggled\r\n\r\nevil\r\n.\r\n",
        );
        c.send(&msg).await;
        let reply = c.line().await;
        assert!(reply.starts_with("250 2.0.0"), "variant {i}: {reply}");
        // Nothing more is pending: a second transaction would have produced more replies.
        assert!(
            c.cmd("NOOP").await.starts_with("250 2.0.0 OK"),
            "variant {i}"
        );
        c.cmd("QUIT").await;
    }
    assert!(
        h.inbox("bob@example.test").await.is_empty(),
        "nothing smuggled to bob"
    );
    let stored = h.inbox("alice@example.test").await;
    assert_eq!(stored.len(), variants.len());
    for m in stored {
        assert!(m.windows(9).any(|w| w == b"smuggled\r"));
        for (i, b) in m.iter().enumerate() {
            if *b == b'\n' {
                assert_eq!(m[i - 1], b'\r', "bare LF stored");
            }
            if *b == b'\r' {
                assert_eq!(m.get(i + 1), Some(&b'\n'), "bare CR stored");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_line_is_refused_and_session_survives() {
    let h = Harness::new().await;
    let (mut c, t) = greet(&h).await;
    let mut line = vec![b'A'; 10 * 1024 * 1024];
    line.extend_from_slice(b"\r\n");
    let writer = {
        let mut io = c.io;
        let handle = tokio::spawn(async move {
            io.write_all(&line).await.expect("write");
            io
        });
        c.io = handle.await.expect("writer");
        c
    };
    let mut c = writer;
    assert!(c.line().await.starts_with("500 5.5.2 Error: line too long"));
    assert!(c.cmd("NOOP").await.starts_with("250"));
    c.cmd("QUIT").await;
    t.await.expect("no panic").expect("clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused_after_draining() {
    let h = Harness::with(|cfg, _| cfg.max_message_size = 64 * 1024).await;
    let (mut c, _t) = greet(&h).await;
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 200 * 1024));
    body.extend_from_slice(b"\r\n.\r\n");
    c.send(&body).await;
    assert!(c.line().await.starts_with("552 5.3.4"));
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert!(h.inbox("alice@example.test").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_recipients_are_capped() {
    let h = Harness::new().await;
    let (mut c, _t) = greet(&h).await;
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    let mut batch = Vec::new();
    for _ in 0..5000 {
        batch.extend_from_slice(b"RCPT TO:<alice@example.test>\r\n");
    }
    let mut io = c.io;
    let writer = tokio::spawn(async move {
        io.write_all(&batch).await.expect("write");
        io
    });
    // The first recipient is new, the next 99 are duplicates (accepted, not re-added);
    // with one distinct address the cap is never reached.
    let mut reader = Client {
        io: tokio::io::duplex(1).0,
        buf: std::mem::take(&mut c.buf),
    };
    reader.io = writer.await.expect("writer");
    let mut ok = 0;
    for _ in 0..5000 {
        if reader.code().await == "250" {
            ok += 1;
        }
    }
    assert_eq!(ok, 5000);

    // 5,000 distinct recipients: 100 accepted (here: unknown ones are refused and the
    // session is closed after max_errors), so use distinct plus-addresses of one user.
    let (mut c, _t) = greet(&h).await;
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    let mut batch = Vec::new();
    for i in 0..5000 {
        batch.extend_from_slice(format!("RCPT TO:<alice+{i}@example.test>\r\n").as_bytes());
    }
    let mut io = c.io;
    let writer = tokio::spawn(async move {
        io.write_all(&batch).await.expect("write");
        io
    });
    let mut reader = Client {
        io: writer.await.expect("writer"),
        buf: std::mem::take(&mut c.buf),
    };
    let mut codes = std::collections::HashMap::new();
    for _ in 0..5000 {
        *codes.entry(reader.code().await).or_insert(0) += 1;
    }
    assert_eq!(codes.get("250"), Some(&100));
    assert_eq!(codes.get("452"), Some(&4900));
    assert!(reader.cmd("DATA").await.starts_with("354"));
    reader.send(b"Subject: many\r\n\r\nx\r\n.\r\n").await;
    assert!(reader.line().await.starts_with("250"));
    assert_eq!(
        h.inbox("alice@example.test").await.len(),
        1,
        "one copy for one account"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unknown_commands_end_in_a_clean_close() {
    let h = Harness::new().await;
    let (mut c, t) = h.connect();
    c.line().await;
    assert!(c.cmd("XYZZY").await.starts_with("500 5.5.2"));
    assert!(c.cmd("GET / HTTP/1.1").await.starts_with("500 5.5.2"));
    let mut garbage = Vec::new();
    let mut x: u32 = 12345;
    for _ in 0..20 {
        for _ in 0..200 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let b = (x >> 16) as u8;
            garbage.push(if b == b'\n' { 0 } else { b });
        }
        garbage.extend_from_slice(b"\r\n");
    }
    c.send(&garbage).await;
    let mut last = String::new();
    while let Some(r) = c.reply().await {
        last = r.last().expect("line").clone();
    }
    assert!(
        last.starts_with("421 4.7.0"),
        "closed with 421 after too many errors: {last}"
    );
    t.await.expect("no panic").expect("clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks() {
    let h = Harness::with(|cfg, _| cfg.max_message_size = 4096).await;
    let (mut c, _t) = greet(&h).await;
    // BDAT without a transaction: the chunk is read (not taken as commands) and refused.
    c.send(b"BDAT 12\r\nNOOP\r\nNOOP\r\n").await;
    assert!(c.line().await.starts_with("503"));
    assert!(c.cmd("NOOP").await.starts_with("250"));

    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.test>").await.starts_with("250"));
    c.send(b"BDAT 17\r\nSubject: chunky\r\n").await;
    assert!(c.line().await.starts_with("250 2.0.0 17 octets"));
    assert!(c.cmd("DATA").await.starts_with("503"), "no DATA after BDAT");
    c.send(b"BDAT 9 LAST\r\n\r\n.body\r\n").await;
    assert!(c.line().await.starts_with("250 2.0.0 Ok: queued"));
    let inbox = h.inbox("bob@example.test").await;
    assert!(
        inbox[0].ends_with(b"Subject: chunky\r\n\r\n.body\r\n"),
        "no dot-unstuffing in BDAT"
    );

    // Too big: every chunk is read and refused, then the session goes on.
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.test>").await.starts_with("250"));
    let mut big = b"BDAT 5000\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'y', 5000));
    big.extend_from_slice(b"BDAT 3 LAST\r\nabc");
    c.send(&big).await;
    assert!(c.line().await.starts_with("552 5.3.4"));
    assert!(c.line().await.starts_with("552 5.3.4"));
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert_eq!(h.inbox("bob@example.test").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_full_and_too_big() {
    let h = Harness::new().await;
    h.stores
        .meta
        .set_quota("bob@example.test", 1000)
        .await
        .expect("quota");
    let (mut c, _t) = greet(&h).await;
    assert!(c
        .cmd("MAIL FROM:<s@remote.test> SIZE=5000")
        .await
        .starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<bob@example.test>")
        .await
        .starts_with("552 5.2.2"));
    assert!(c.cmd("RSET").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let mut body = b"Subject: fat\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'z', 2000));
    body.extend_from_slice(b"\r\n.\r\n");
    c.send(&body).await;
    assert!(
        c.line().await.starts_with("552 5.2.2"),
        "single recipient over quota"
    );
    // Fill the mailbox exactly, then RCPT says 452 (temporary: it may be emptied).
    h.stores
        .meta
        .set_quota("bob@example.test", 1)
        .await
        .expect("quota");
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: a\r\n\r\nx\r\n.\r\n").await;
    assert!(c.line().await.starts_with("250"));
    let a = h
        .stores
        .meta
        .get_account("alice@example.test")
        .await
        .expect("get")
        .expect("a");
    h.stores
        .meta
        .set_quota("alice@example.test", a.used_bytes)
        .await
        .expect("quota");
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<alice@example.test>")
        .await
        .starts_with("452 4.2.2"));
}

#[tokio::test(start_paused = true)]
async fn stalled_client_gets_timeout() {
    let h = Harness::with(|_, l| l.command_timeout = Duration::from_secs(300)).await;
    let (mut c, t) = h.connect();
    assert!(c.line().await.starts_with("220"));
    // Say nothing: with time paused, the runtime jumps to the timeout.
    let r = c.line().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(c.reply().await.is_none());
    t.await.expect("no panic").expect("clean end");
}

/// Issue 9 item 10: the timeout was per read, so a client sending one byte every minute
/// held its session forever. The whole command line now has one deadline.
#[tokio::test(start_paused = true)]
async fn trickled_command_line_hits_the_command_deadline() {
    let h = Harness::new().await;
    let (mut c, t) = h.connect();
    assert!(c.line().await.starts_with("220"));
    let start = tokio::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for b in b"EHLO a-very-slow-client.example.net"
            .iter()
            .cycle()
            .take(10_000)
        {
            if c.io.write_all(std::slice::from_ref(b)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        c
    });
    t.await.expect("no panic").expect("clean end");
    let waited = start.elapsed();
    assert!(
        waited <= Duration::from_secs(301),
        "closed at the 300 s command deadline, not after {waited:?}"
    );
    let mut c = trickle.await.expect("trickle");
    let r = c.line().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
}

/// The same for DATA: each block may wait `data_timeout`, the whole message
/// `data_deadline`.
#[tokio::test(start_paused = true)]
async fn trickled_data_hits_the_message_deadline() {
    let h = Harness::with(|_, l| l.data_deadline = Duration::from_secs(600)).await;
    let (mut c, t) = greet(&h).await;
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let start = tokio::time::Instant::now();
    let trickle = tokio::spawn(async move {
        c.io.write_all(b"Subject: slow\r\n\r\n").await.expect("w");
        for _ in 0..100_000 {
            if c.io.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        c
    });
    t.await.expect("no panic").expect("clean end");
    assert!(
        start.elapsed() <= Duration::from_secs(601),
        "{:?}",
        start.elapsed()
    );
    let mut c = trickle.await.expect("trickle");
    assert!(c.line().await.starts_with("421 4.4.2"));
    assert!(
        h.inbox("alice@example.test").await.is_empty(),
        "nothing kept"
    );
}

/// Replies to commands pipelined by a client that reads nothing do not pile up: past
/// 64 KiB of replies the server stops reading until they are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_without_reading_are_not_buffered() {
    let h = Harness::with(|c, _| c.max_errors = 1_000_000).await;
    let (mut c, _t) = greet(&h).await;
    // 1,000,000 NOOPs: 6 MB of commands, 15 MB of replies if all were buffered; the pipe
    // holds 1 MiB each way.
    let flood = b"NOOP\r\n".repeat(1_000_000);
    let writer = tokio::spawn(async move {
        let r = tokio::time::timeout(Duration::from_secs(2), c.io.write_all(&flood)).await;
        (c, r.is_ok())
    });
    let (mut c, finished) = writer.await.expect("writer");
    assert!(
        !finished,
        "the server stopped reading while its replies waited"
    );
    // Reading the replies lets the rest through, in order.
    let mut ok = 0;
    while ok < 1000 {
        let line = c.line().await;
        assert!(line.starts_with("250"), "{line}");
        ok += 1;
    }
}

#[tokio::test(start_paused = true)]
async fn stall_inside_data_drops_the_message() {
    let h = Harness::new().await;
    let (mut c, t) = greet(&h).await;
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: half\r\n\r\npartial").await;
    assert!(c.line().await.starts_with("421 4.4.2"));
    t.await.expect("no panic").expect("clean end");
    assert!(
        h.inbox("alice@example.test").await.is_empty(),
        "no partial message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_loop_is_refused() {
    let h = Harness::new().await;
    let (mut c, _t) = greet(&h).await;
    assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<alice@example.test>")
        .await
        .starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let mut msg = Vec::new();
    for i in 0..51 {
        msg.extend_from_slice(format!("Received: from hop{i}\r\n").as_bytes());
    }
    msg.extend_from_slice(b"Subject: loop\r\n\r\nx\r\n.\r\n");
    c.send(&msg).await;
    assert!(c.line().await.starts_with("554 5.4.6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_transaction_rate_is_limited_across_connections() {
    let h = Harness::with(|cfg, _| cfg.max_messages_per_ip_per_minute = 3).await;
    // Two connections from the same address share one count.
    let (mut a, _ta) = greet(&h).await;
    let (mut b, _tb) = greet(&h).await;
    for i in 0..3 {
        let c = if i == 1 { &mut b } else { &mut a };
        assert!(c.cmd("MAIL FROM:<x@sender.test>").await.starts_with("250"));
        assert!(c.cmd("RSET").await.starts_with("250"));
    }
    let refused = b.cmd("MAIL FROM:<x@sender.test>").await;
    assert!(refused.starts_with("450 4.7.1"), "{refused}");
    assert!(refused.contains("192.0.2.7"), "{refused}");
    // The session survives and other commands still work.
    assert!(b.cmd("NOOP").await.starts_with("250"));
    assert!(b.cmd("QUIT").await.starts_with("221"));
}

/// Waits (bounded) until the budget shows `at_least` bytes in use: the server has read
/// and charged what the client sent.
async fn until_in_use(budget: &ByteBudget, at_least: usize) {
    for _ in 0..500 {
        if budget.in_use() >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the server never held {at_least} bytes (holds {})",
        budget.in_use()
    );
}

fn message_of(len: usize, subject: &str) -> Vec<u8> {
    let mut m = format!("Subject: {subject}\r\n\r\n").into_bytes();
    while m.len() < len {
        m.extend_from_slice(&[b'x'; 78]);
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// Hardening item 9: two sessions whose messages together exceed the process's in-flight
/// budget. The one that runs out gets `452 4.3.1` and keeps a usable connection; the other
/// is delivered; nothing stays charged afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_budget_refuses_the_session_that_runs_out_with_452() {
    let h = Harness::with_budget(64 * 1024).await;
    let (mut a, ta) = greet(&h).await;
    let (mut b, tb) = greet(&h).await;
    for c in [&mut a, &mut b] {
        assert!(c.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
        assert!(c.cmd("RCPT TO:<bob@example.test>").await.starts_with("250"));
        assert!(c.cmd("DATA").await.starts_with("354"));
    }
    // A sends 40 KiB and stalls before its final dot: the server holds it.
    let body_a = message_of(40 * 1024, "first");
    a.send(&body_a).await;
    until_in_use(&h.budget, 40 * 1024).await;
    // B's 40 KiB does not fit beside it.
    let mut body_b = message_of(40 * 1024, "second");
    body_b.extend_from_slice(b".\r\n");
    b.send(&body_b).await;
    let refused = b.line().await;
    assert!(
        refused.starts_with("452 4.3.1 Insufficient system resources"),
        "{refused}"
    );
    assert!(
        h.budget.in_use() < 48 * 1024,
        "the refused message gave its bytes back at once: {}",
        h.budget.in_use()
    );
    a.send(b".\r\n").await;
    let accepted = a.line().await;
    assert!(accepted.starts_with("250 2.0.0 Ok: queued"), "{accepted}");
    assert_eq!(
        h.budget.in_use(),
        0,
        "A's bytes are given back once handed off"
    );

    // The refused session is still usable: RSET, then the same message goes through.
    assert!(b.cmd("RSET").await.starts_with("250"));
    assert!(b.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(b.cmd("RCPT TO:<bob@example.test>").await.starts_with("250"));
    assert!(b.cmd("DATA").await.starts_with("354"));
    b.send(&body_b).await;
    let retried = b.line().await;
    assert!(retried.starts_with("250 2.0.0 Ok: queued"), "{retried}");

    let inbox = h.inbox("bob@example.test").await;
    assert_eq!(inbox.len(), 2);
    assert!(inbox
        .iter()
        .any(|m| m.ends_with(&body_a[body_a.len() - 200..])));
    for c in [&mut a, &mut b] {
        assert!(c.cmd("QUIT").await.starts_with("221"));
    }
    ta.await.expect("no panic").expect("clean end");
    tb.await.expect("no panic").expect("clean end");
    assert_eq!(h.budget.in_use(), 0, "nothing stays charged");
}

/// Hardening item 9: `SIZE=` is taken from the budget at MAIL. Beyond what the budget can
/// hold: `452 4.3.1` there and then; beyond the message size limit: `552 5.3.4`, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_size_is_reserved_at_mail_from() {
    let h = Harness::with_budget(64 * 1024).await;
    let (mut a, _ta) = greet(&h).await;
    let (mut b, _tb) = greet(&h).await;
    assert!(a
        .cmd("MAIL FROM:<s@remote.test> SIZE=2000000")
        .await
        .starts_with("552 5.3.4"));
    let big = a.cmd("MAIL FROM:<s@remote.test> SIZE=100000").await;
    assert!(big.starts_with("452 4.3.1"), "{big}");
    assert_eq!(h.budget.in_use(), 0);

    assert!(a
        .cmd("MAIL FROM:<s@remote.test> SIZE=40000")
        .await
        .starts_with("250"));
    assert_eq!(h.budget.in_use(), 40000, "reserved up front");
    let second = b.cmd("MAIL FROM:<s@remote.test> SIZE=40000").await;
    assert!(second.starts_with("452 4.3.1"), "{second}");
    assert!(a.cmd("RSET").await.starts_with("250"));
    assert_eq!(h.budget.in_use(), 0, "RSET gives the reservation back");
    assert!(b
        .cmd("MAIL FROM:<s@remote.test> SIZE=40000")
        .await
        .starts_with("250"));
    assert!(b.cmd("RCPT TO:<bob@example.test>").await.starts_with("250"));
    assert!(b.cmd("DATA").await.starts_with("354"));
    let mut body = message_of(39_000, "declared");
    body.extend_from_slice(b".\r\n");
    b.send(&body).await;
    assert!(b.line().await.starts_with("250 2.0.0 Ok: queued"));
    assert_eq!(h.budget.in_use(), 0);
    // A connection that drops mid-transaction gives its reservation back too.
    assert!(a
        .cmd("MAIL FROM:<s@remote.test> SIZE=30000")
        .await
        .starts_with("250"));
    assert_eq!(h.budget.in_use(), 30000);
    drop(a);
    _ta.await.expect("no panic").expect("clean end");
    assert_eq!(h.budget.in_use(), 0, "dropped with the session");
}

/// Hardening item 9: a BDAT chunk the budget cannot cover is refused with `452 4.3.1`
/// before it is held (read off the wire and dropped), and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunk_beyond_the_budget_gets_452() {
    let h = Harness::with_budget(64 * 1024).await;
    let (mut a, _ta) = greet(&h).await;
    let (mut b, _tb) = greet(&h).await;
    assert!(a
        .cmd("MAIL FROM:<s@remote.test> SIZE=50000")
        .await
        .starts_with("250"));
    assert!(b.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(b.cmd("RCPT TO:<bob@example.test>").await.starts_with("250"));
    let chunk = message_of(20_000, "chunked");
    let mut cmd = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
    cmd.extend_from_slice(&chunk);
    b.send(&cmd).await;
    let refused = b.line().await;
    assert!(refused.starts_with("452 4.3.1"), "{refused}");
    assert!(
        b.cmd("NOOP").await.starts_with("250"),
        "the chunk was drained"
    );
    assert_eq!(h.budget.in_use(), 50000, "only A's reservation");
    assert!(a.cmd("RSET").await.starts_with("250"));
    assert!(b.cmd("MAIL FROM:<s@remote.test>").await.starts_with("250"));
    assert!(b.cmd("RCPT TO:<bob@example.test>").await.starts_with("250"));
    b.send(&cmd).await;
    assert!(b.line().await.starts_with("250 2.0.0 Ok: queued"));
    assert_eq!(h.budget.in_use(), 0);
    let inbox = h.inbox("bob@example.test").await;
    assert!(inbox[0].ends_with(&chunk), "delivered whole");
}
