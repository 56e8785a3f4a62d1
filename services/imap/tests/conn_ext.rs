//! COMPRESS=DEFLATE (RFC 4978), NOTIFY (RFC 5465) and UTF8=ACCEPT / modified UTF-7 mailbox
//! names (RFC 6855, RFC 3501 §5.1.3) over an in-memory pipe, against the embedded store.

use async_trait::async_trait;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use mailfleet_core::shutdown::Shutdown;
use mailfleet_imap::{serve_connection, ConnLimits, ImapConfig, LoginError, LoginService, Session};
use mailfleet_storage::metadata::QuotaPolicy;
use mailfleet_storage::{Account, AccountId, Flags, MailboxId, NewMessage, Stores};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Any password logs in: these tests are about what happens after login.
struct AnyPassword(Stores);

#[async_trait]
impl LoginService for AnyPassword {
    async fn login(&self, user: &str, _: &str, _: IpAddr) -> Result<Account, LoginError> {
        self.0
            .meta
            .get_account(user)
            .await
            .map_err(|_| LoginError::Unavailable)?
            .ok_or(LoginError::Invalid)
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    stores: Stores,
    account: AccountId,
    inbox: MailboxId,
}

impl Harness {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let stores = mailfleet_storage::embedded::open(dir.path(), 64).expect("stores");
        stores
            .meta
            .create_domain("example.test")
            .await
            .expect("domain");
        let acct = stores
            .meta
            .create_account("alice@example.test", "x", 0)
            .await
            .expect("account");
        let inbox = stores
            .meta
            .get_mailbox(acct.id, "INBOX")
            .await
            .expect("get")
            .expect("inbox");
        Harness {
            _dir: dir,
            stores,
            account: acct.id,
            inbox: inbox.id,
        }
    }

    /// Delivers `raw` to INBOX, as the delivery service does (no session involved).
    async fn deliver(&self, raw: &str) {
        let blob = self
            .stores
            .blobs
            .put(bytes::Bytes::from(raw.to_string()))
            .await
            .expect("blob");
        self.stores
            .meta
            .append(
                vec![NewMessage {
                    account: self.account,
                    mailbox: self.inbox,
                    blob,
                    size: raw.len() as u64,
                    internal_date: 1_700_000_000,
                    flags: Flags::default(),
                    summary: None,
                    refs: Default::default(),
                    trace: None,
                }],
                QuotaPolicy::Allow,
            )
            .await
            .expect("append");
    }

    async fn deliver_plain(&self, n: usize) {
        for i in 0..n {
            self.deliver(&format!(
                "From: a@remote.test\r\nSubject: msg {i}\r\n\r\nbody {i}\r\n"
            ))
            .await;
        }
    }

    /// A client that has not logged in.
    async fn anonymous(&self) -> Client {
        let (client, server) = tokio::io::duplex(1 << 16);
        let cfg = Arc::new(ImapConfig {
            hostname: "mx.example.test".into(),
            starttls: false,
            plaintext_auth_without_tls: true,
            max_message_size: 1 << 20,
            max_failed_logins: 3,
            idle_timeout: Duration::from_secs(1800),
            user_sessions: mailfleet_imap::UserSessions::new(20),
            views: mailfleet_imap::SharedViews::new(),
            junk_training: None,
        });
        let session = Session::new(
            cfg,
            self.stores.clone(),
            Arc::new(AnyPassword(self.stores.clone())),
            "192.0.2.9".parse().expect("ip"),
            false,
        );
        let limits = ConnLimits {
            max_literal: 1 << 20,
            max_command: (1 << 20) + 65536,
            max_errors: 5,
            tls_handshake_timeout: Duration::from_secs(5),
            idle_recheck: Duration::from_secs(60),
        };
        tokio::spawn(serve_connection(
            Box::new(server),
            session,
            limits,
            None,
            Shutdown::never(),
        ));
        let mut c = Client {
            io: client,
            buf: Vec::new(),
        };
        c.line().await;
        c
    }

    /// What the delivery service publishes after a delivery.
    async fn notify_changed(&self) {
        self.stores
            .coord
            .publish(mailfleet_storage::coord::MailboxEvent::Changed {
                account: self.account,
                mailbox: self.inbox,
                modseq: mailfleet_storage::ModSeq(0),
            })
            .await
            .expect("publish");
    }

    /// A logged-in client.
    async fn client(&self) -> Client {
        let (client, server) = tokio::io::duplex(1 << 16);
        let cfg = Arc::new(ImapConfig {
            hostname: "mx.example.test".into(),
            starttls: false,
            plaintext_auth_without_tls: true,
            max_message_size: 1 << 20,
            max_failed_logins: 3,
            idle_timeout: Duration::from_secs(1800),
            user_sessions: mailfleet_imap::UserSessions::new(20),
            views: mailfleet_imap::SharedViews::new(),
            junk_training: None,
        });
        let session = Session::new(
            cfg,
            self.stores.clone(),
            Arc::new(AnyPassword(self.stores.clone())),
            "192.0.2.9".parse().expect("ip"),
            false,
        );
        let limits = ConnLimits {
            max_literal: 1 << 20,
            max_command: (1 << 20) + 65536,
            max_errors: 5,
            tls_handshake_timeout: Duration::from_secs(5),
            idle_recheck: Duration::from_secs(60),
        };
        tokio::spawn(serve_connection(
            Box::new(server),
            session,
            limits,
            None,
            Shutdown::never(),
        ));
        let mut c = Client {
            io: client,
            buf: Vec::new(),
        };
        c.line().await;
        let r = c.cmd("a0 LOGIN alice@example.test x").await;
        assert!(r.last().expect("line").starts_with("a0 OK"), "{r:?}");
        c
    }
}

struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
}

impl Client {
    async fn send(&mut self, s: &[u8]) {
        self.io.write_all(s).await.expect("write");
    }

    /// One line with its CRLF, as bytes.
    async fn raw_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(p) = self.buf.iter().position(|b| *b == b'\n') {
                return self.buf.drain(..=p).collect();
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(20), self.io.read(&mut chunk))
                .await
                .expect("server answered in time")
                .expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn line(&mut self) -> String {
        let l = self.raw_line().await;
        String::from_utf8_lossy(&l).trim_end().to_string()
    }

    /// Every byte up to and including the tagged completion of `tag`.
    async fn until_raw(&mut self, tag: &str) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let l = self.raw_line().await;
            let done = l.starts_with(format!("{tag} ").as_bytes());
            out.extend_from_slice(&l);
            if done {
                return out;
            }
        }
    }

    /// Sends one command line (the tag is its first word) and returns the answer's lines.
    async fn cmd(&mut self, line: &str) -> Vec<String> {
        let tag = line.split(' ').next().expect("tag").to_string();
        self.send(format!("{line}\r\n").as_bytes()).await;
        let raw = self.until_raw(&tag).await;
        String::from_utf8_lossy(&raw)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Like [`Self::cmd`], and asserts the command completed OK.
    async fn ok(&mut self, line: &str) -> Vec<String> {
        let r = self.cmd(line).await;
        let tag = line.split(' ').next().expect("tag");
        assert!(
            r.last()
                .is_some_and(|l| l.starts_with(&format!("{tag} OK"))),
            "{line}: {r:?}"
        );
        r
    }
}

fn has(lines: &[String], want: &str) -> bool {
    lines.iter().any(|l| l == want)
}

fn ok_last(lines: &[String], tag: &str) -> bool {
    lines
        .last()
        .is_some_and(|l| l.starts_with(&format!("{tag} OK")))
}

/// A compressing client on top of the pipe: raw DEFLATE both ways.
struct Zclient {
    io: DuplexStream,
    out: Compress,
    inp: Decompress,
    plain: Vec<u8>,
}

impl Zclient {
    fn new(c: Client) -> Self {
        assert!(c.buf.is_empty(), "nothing after COMPRESS's OK");
        Zclient {
            io: c.io,
            out: Compress::new(Compression::default(), false),
            inp: Decompress::new(false),
            plain: Vec::new(),
        }
    }

    async fn send_raw(&mut self, data: &[u8]) {
        let mut packed = Vec::with_capacity(data.len() + 1024);
        self.out
            .compress_vec(data, &mut packed, FlushCompress::Sync)
            .expect("deflate");
        self.io.write_all(&packed).await.expect("write");
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(p) = self.plain.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = self.plain.drain(..=p).collect();
                return String::from_utf8_lossy(&l).trim_end().to_string();
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(20), self.io.read(&mut chunk))
                .await
                .expect("in time")
                .expect("read");
            assert!(n > 0, "closed");
            let mut out = Vec::with_capacity(n * 50 + 4096);
            self.inp
                .decompress_vec(&chunk[..n], &mut out, FlushDecompress::Sync)
                .expect("server sends raw DEFLATE");
            self.plain.extend_from_slice(&out);
        }
    }

    async fn cmd(&mut self, line: &str) -> Vec<String> {
        let tag = line.split(' ').next().expect("tag").to_string();
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                return out;
            }
        }
    }
}

/// COMPRESS DEFLATE: both directions compressed after the OK, a sync flush per response
/// (the client reads every answer without waiting), a second COMPRESS refused with
/// COMPRESSIONACTIVE, a literal inside the compressed stream, and a decompression bomb
/// stopped by the command size limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_deflate_both_ways() {
    let h = Harness::new().await;
    h.deliver_plain(3).await;
    let mut pre = h.client().await;
    let caps = pre.ok("c1 CAPABILITY").await;
    assert!(caps[0].contains(" COMPRESS=DEFLATE"), "{caps:?}");
    let r = pre.cmd("c2 COMPRESS DEFLATE").await;
    assert_eq!(r, vec!["c2 OK DEFLATE active".to_string()]);
    let mut z = Zclient::new(pre);
    let r = z.cmd("c3 SELECT INBOX").await;
    assert!(r.iter().any(|l| l == "* 3 EXISTS"), "{r:?}");
    assert!(ok_last(&r, "c3"));
    let r = z.cmd("c4 COMPRESS DEFLATE").await;
    assert!(r[0].starts_with("c4 NO [COMPRESSIONACTIVE]"), "{r:?}");
    let r = z
        .cmd("c5 FETCH 1:3 (BODY.PEEK[HEADER.FIELDS (Subject)])")
        .await;
    assert_eq!(
        r.iter().filter(|l| l.starts_with("Subject: msg ")).count(),
        3
    );
    // A LITERAL+ APPEND through the compressed stream.
    let msg = "Subject: zipped\r\n\r\nhello\r\n";
    z.send_raw(format!("c6 APPEND INBOX {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes())
        .await;
    let mut seen = vec![z.line().await];
    while !seen.last().is_some_and(|l| l.starts_with("c6 ")) {
        seen.push(z.line().await);
    }
    assert!(ok_last(&seen, "c6"), "{seen:?}");
    assert!(seen.iter().any(|l| l == "* 4 EXISTS"), "{seen:?}");
    let r = z
        .cmd("c7 FETCH 4 (BODY.PEEK[HEADER.FIELDS (Subject)])")
        .await;
    assert!(r.iter().any(|l| l == "Subject: zipped"), "{r:?}");
    // 8 MiB of 'a' in one command line compresses to a few KiB: the server closes the
    // connection at its command limit (64 KiB here) instead of inflating it into memory.
    let bomb = format!("c8 NOOP {}", "a".repeat(8 << 20));
    z.send_raw(bomb.as_bytes()).await;
    let l = z.line().await;
    assert!(l.starts_with("* BYE"), "{l}");
}

/// COMPRESS before login is BAD (command-auth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_needs_login() {
    let h = Harness::new().await;
    let mut c = h.anonymous().await;
    let r = c.cmd("a COMPRESS DEFLATE").await;
    assert!(r[0].starts_with("a BAD"), "{r:?}");
    let caps = c.ok("b CAPABILITY").await;
    assert!(!caps[0].contains("COMPRESS"), "{caps:?}");
}

/// Names are stored as UTF-8: an IMAP4rev1 client creates and sees modified UTF-7, a
/// UTF8=ACCEPT client sees the same mailbox in UTF-8; invalid modified UTF-7 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modified_utf7_and_utf8_accept() {
    let h = Harness::new().await;
    let mut a = h.client().await;
    a.ok("m1 CREATE Entw&APw-rfe").await;
    let r = a.ok("m2 LIST \"\" Entw*").await;
    assert!(
        has(&r, "* LIST (\\HasNoChildren) \"/\" Entw&APw-rfe"),
        "{r:?}"
    );
    let stored = h
        .stores
        .meta
        .get_mailbox(h.account, "Entwürfe")
        .await
        .expect("get");
    assert!(stored.is_some(), "stored as UTF-8");
    a.ok("m3 RENAME Entw&APw-rfe &ZeVnLIqe-/Tom&-Jerry").await;
    let r = a.ok("m4 LIST \"\" *").await;
    assert!(
        has(&r, "* LIST (\\HasNoChildren) \"/\" &ZeVnLIqe-/Tom&-Jerry"),
        "{r:?}"
    );
    let r = a.ok("m5 STATUS &ZeVnLIqe-/Tom&-Jerry (MESSAGES)").await;
    assert!(
        has(&r, "* STATUS &ZeVnLIqe-/Tom&-Jerry (MESSAGES 0)"),
        "{r:?}"
    );
    for bad in [
        "CREATE &AGE-",
        "CREATE &APw",
        "SELECT \"Entw\u{fc}rfe\"",
        "CREATE &2D0-",
    ] {
        let r = a.cmd(&format!("m6 {bad}")).await;
        assert!(r[0].starts_with("m6 NO"), "{bad}: {r:?}");
    }
    // A LIST pattern no valid name can match lists nothing (as Dovecot answers).
    let r = a.ok("m6b LIST \"\" &AGE-*").await;
    assert_eq!(r.len(), 1, "{r:?}");
    let r = a.ok("m7 CAPABILITY").await;
    assert!(r[0].contains(" UTF8=ACCEPT"), "{r:?}");
    let r = a.ok("m8 ENABLE UTF8=ACCEPT").await;
    assert!(has(&r, "* ENABLED UTF8=ACCEPT"), "{r:?}");
    let r = a.ok("m9 LIST \"\" *").await;
    assert!(
        has(&r, "* LIST (\\HasNoChildren) \"/\" \"日本語/Tom&Jerry\""),
        "{r:?}"
    );
    a.ok("m10 CREATE \"Straße\"").await;
    a.ok("m11 SELECT \"Straße\"").await;
    let r = a.ok("m12 STATUS \"Straße\" (MESSAGES)").await;
    assert!(has(&r, "* STATUS \"Straße\" (MESSAGES 0)"), "{r:?}");
    // An IMAP4rev1 session sees it in modified UTF-7.
    let mut b = h.client().await;
    let r = b.ok("n1 LIST \"\" Stra*").await;
    assert!(
        has(&r, "* LIST (\\HasNoChildren) \"/\" Stra&AN8-e"),
        "{r:?}"
    );
    b.ok("n2 SELECT Stra&AN8-e").await;
}

/// NOTIFY across two sessions: STATUS for another mailbox's new message (at command end
/// and between commands), LIST for created/renamed/deleted mailboxes, subscription
/// changes, MessageNew FETCH and immediate updates for the selected mailbox, NONE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_across_two_sessions() {
    let h = Harness::new().await;
    let mut a = h.client().await;
    let mut b = h.client().await;
    let caps = a.ok("x CAPABILITY").await;
    assert!(caps[0].contains(" NOTIFY"), "{caps:?}");
    b.ok("b0 CREATE Lists").await;
    a.ok("a1 SELECT Sent").await;
    let r = a
        .ok("a2 NOTIFY SET STATUS (SELECTED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (Subject)]) MessageExpunge FlagChange)) (INBOXES (MessageNew MessageExpunge)) (PERSONAL (MailboxName SubscriptionChange))")
        .await;
    assert!(
        r.iter()
            .any(|l| l.starts_with("* STATUS INBOX (MESSAGES 0 UIDNEXT 1 UIDVALIDITY ")),
        "{r:?}"
    );
    // New mail in INBOX, reported at the end of a's next command.
    h.deliver("Subject: one\r\n\r\nx\r\n").await;
    h.notify_changed().await;
    let r = a.ok("a3 NOOP").await;
    assert!(
        r.iter()
            .any(|l| l.starts_with("* STATUS INBOX (MESSAGES 1 UIDNEXT 2 ")),
        "{r:?}"
    );
    // Between commands: b creates a mailbox, a hears of it without sending anything.
    b.ok("b1 CREATE Projects").await;
    let l = a.line().await;
    assert_eq!(l, "* LIST (\\HasNoChildren) \"/\" Projects");
    b.ok("b2 RENAME Projects Archive2").await;
    let l = a.line().await;
    assert_eq!(
        l,
        "* LIST (\\HasNoChildren) \"/\" Archive2 (\"OLDNAME\" (\"Projects\"))"
    );
    b.ok("b3 SUBSCRIBE Archive2").await;
    let l = a.line().await;
    assert_eq!(l, "* LIST (\\HasNoChildren \\Subscribed) \"/\" Archive2");
    b.ok("b4 DELETE Archive2").await;
    let mut seen = vec![a.line().await];
    // Deleting a subscribed mailbox: \NonExistent (and the subscription, kept).
    assert!(
        seen[0].contains("\\NonExistent") && seen[0].ends_with(" Archive2"),
        "{seen:?}"
    );
    // The selected mailbox: b appends to Sent; a gets EXISTS and the FETCH at once.
    b.ok("b5 APPEND Sent {14+}\r\nSubject: s\r\n\r\n").await;
    loop {
        let l = a.line().await;
        seen.push(l.clone());
        if l.contains("FETCH") {
            break;
        }
    }
    assert!(seen.iter().any(|l| l == "* 1 EXISTS"), "{seen:?}");
    let fetch = seen.last().expect("fetch").to_ascii_uppercase();
    assert!(
        fetch.starts_with("* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)] {14}"),
        "{seen:?}"
    );
    // The literal's lines, then the closing parenthesis.
    assert_eq!(a.line().await, "Subject: s");
    assert_eq!(a.line().await, "");
    assert_eq!(a.line().await, ")");
    // Expunge in the selected mailbox, SELECTED: sent between commands.
    b.ok("b6 SELECT Sent").await;
    b.ok("b7 STORE 1 +FLAGS (\\Deleted)").await;
    let l = a.line().await;
    assert!(
        l.starts_with("* 1 FETCH (") && l.contains("\\Deleted"),
        "{l}"
    );
    b.ok("b8 EXPUNGE").await;
    let l = a.line().await;
    assert_eq!(l, "* 1 EXPUNGE");
    // NOTIFY NONE: nothing more.
    a.ok("a4 NOTIFY NONE").await;
    b.ok("b9 CREATE Quiet").await;
    let r = a.ok("a5 NOOP").await;
    assert_eq!(r.len(), 1, "{r:?}");
    // Refusals.
    let r = a.cmd("a6 NOTIFY SET (SELECTED (MessageNew))").await;
    assert!(r[0].starts_with("a6 BAD"), "{r:?}");
    let r = a.cmd("a7 NOTIFY SET (PERSONAL (AnnotationChange))").await;
    assert!(r[0].starts_with("a7 NO [BADEVENT ("), "{r:?}");
}
