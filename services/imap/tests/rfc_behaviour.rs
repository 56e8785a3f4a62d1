//! Protocol behaviours checked against the RFCs (and Dovecot's answers) over an in-memory
//! pipe, against the real embedded store: `\Recent`, SENT* dates, CONDSTORE after
//! enabling, BINARY partials and literal8 APPEND, LIST-EXTENDED and LSUB, SORT keys and
//! address search, ESEARCH past the end, keyword announcements; and the fixes the Dovecot
//! differential test found: SELECT's `[CLOSED]`, BINARY[] of the whole message, STATUS (),
//! case-insensitive keywords, unsettable flags, address keys and comments, BODY inside
//! attached messages, SORT by a group, UID FETCH after another session's change.

use async_trait::async_trait;
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

    /// A client logged in as alice.
    async fn client(&self) -> Client {
        self.client_as("alice@example.test").await
    }

    /// A client logged in as `user`.
    async fn client_as(&self, user: &str) -> Client {
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
        let r = c.cmd(&format!("a0 LOGIN {user} x")).await;
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

fn position(lines: &[String], prefix: &str) -> usize {
    lines
        .iter()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in {lines:?}"))
}

// ---- 1. \Recent (RFC 3501 §2.3.2) ----

/// The first session to SELECT the mailbox after messages arrived gets them as `\Recent`;
/// a second session does not; EXAMINE sees what nobody claimed without claiming it; new
/// mail goes to the session that notices it first; an IMAP4rev2 session neither reports
/// nor claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_belongs_to_exactly_one_session() {
    let h = Harness::new().await;
    h.deliver_plain(3).await;
    let mut a = h.client().await;
    let r = a.ok("a1 SELECT INBOX").await;
    assert!(has(&r, "* 3 RECENT"), "{r:?}");
    let r = a.ok("a2 FETCH 1:* FLAGS").await;
    assert!(has(&r, "* 1 FETCH (FLAGS (\\Recent))"), "{r:?}");
    a.ok("a3 STORE 1 +FLAGS.SILENT (\\Seen)").await;
    assert!(has(&a.ok("a4 SEARCH RECENT").await, "* SEARCH 1 2 3"));
    assert!(has(&a.ok("a5 SEARCH NEW").await, "* SEARCH 2 3"));
    assert!(has(&a.ok("a6 SEARCH OLD").await, "* SEARCH"));

    let mut b = h.client().await;
    let r = b.ok("b1 SELECT INBOX").await;
    assert!(has(&r, "* 0 RECENT"), "{r:?}");
    let r = b.ok("b2 FETCH 2 FLAGS").await;
    assert!(has(&r, "* 2 FETCH (FLAGS ())"), "{r:?}");
    assert!(has(&b.ok("b3 SEARCH OLD").await, "* SEARCH 1 2 3"));
    let r = b.ok("b4 STATUS Sent (RECENT)").await;
    assert!(has(&r, "* STATUS Sent (RECENT 0)"), "{r:?}");

    // New mail: recent in the session that notices it first (B here), not in A.
    h.deliver_plain(1).await;
    let mut e = h.client().await;
    let r = e.ok("e1 EXAMINE INBOX").await;
    assert!(
        has(&r, "* 1 RECENT"),
        "EXAMINE sees the unclaimed message: {r:?}"
    );
    let r = e.ok("e1b STATUS INBOX (RECENT)").await;
    assert!(has(&r, "* STATUS INBOX (RECENT 1)"), "{r:?}");
    let r = b.ok("b5 NOOP").await;
    assert!(
        position(&r, "* 4 EXISTS") < position(&r, "* 1 RECENT"),
        "EXAMINE did not claim it: {r:?}"
    );
    let r = b.ok("b6 FETCH 4 FLAGS").await;
    assert!(has(&r, "* 4 FETCH (FLAGS (\\Recent))"), "{r:?}");
    let r = a.ok("a7 NOOP").await;
    assert!(has(&r, "* 4 EXISTS") && has(&r, "* 3 RECENT"), "{r:?}");
    assert!(has(&a.ok("a8 SEARCH RECENT").await, "* SEARCH 1 2 3"));

    // COPY and APPEND into the selected mailbox: the new messages are recent here.
    let r = b.ok("b7 COPY 1 INBOX").await;
    assert!(has(&r, "* 5 EXISTS") && has(&r, "* 2 RECENT"), "{r:?}");
    let appended = "Subject: appended\r\n\r\nx\r\n";
    b.send(format!("b8 APPEND INBOX {{{}}}\r\n", appended.len()).as_bytes())
        .await;
    assert!(b.line().await.starts_with('+'));
    b.send(format!("{appended}\r\n").as_bytes()).await;
    let r = String::from_utf8_lossy(&b.until_raw("b8").await).into_owned();
    assert!(r.contains("* 6 EXISTS\r\n* 3 RECENT\r\n"), "{r}");
    assert!(has(&b.ok("b9 SEARCH RECENT").await, "* SEARCH 4 5 6"));

    // IMAP4rev2 has no \Recent: no RECENT response, and nothing is claimed.
    h.deliver_plain(1).await;
    let mut v2 = h.client().await;
    v2.ok("c1 ENABLE IMAP4rev2").await;
    let r = v2.ok("c2 SELECT INBOX").await;
    assert!(!r.iter().any(|l| l.ends_with(" RECENT")), "{r:?}");
    let r = v2.ok("c3 FETCH 7 FLAGS").await;
    assert!(has(&r, "* 7 FETCH (FLAGS ())"), "{r:?}");
    let mut d = h.client().await;
    let r = d.ok("d1 SELECT INBOX").await;
    assert!(
        has(&r, "* 1 RECENT"),
        "the rev2 session left it recent: {r:?}"
    );
}

// ---- 2. SENT* by the header's calendar date (RFC 3501 §6.4.4) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_dates_compare_the_date_as_written() {
    let h = Harness::new().await;
    // 23:30 at -0500 is 04:30 UTC on 2 Jan; 00:30 at +1300 is 11:30 UTC on 31 Dec.
    h.deliver("Date: Mon, 1 Jan 2024 23:30:00 -0500\r\nSubject: late\r\n\r\nx\r\n")
        .await;
    h.deliver("Date: Mon, 1 Jan 2024 00:30:00 +1300\r\nSubject: early\r\n\r\nx\r\n")
        .await;
    let mut c = h.client().await;
    c.ok("a SELECT INBOX").await;
    assert!(has(
        &c.ok("b SEARCH SENTON 1-Jan-2024").await,
        "* SEARCH 1 2"
    ));
    assert!(has(&c.ok("c SEARCH SENTON 2-Jan-2024").await, "* SEARCH"));
    assert!(has(&c.ok("d SEARCH SENTON 31-Dec-2023").await, "* SEARCH"));
    assert!(has(
        &c.ok("e SEARCH SENTBEFORE 2-Jan-2024").await,
        "* SEARCH 1 2"
    ));
    assert!(has(
        &c.ok("f SEARCH SENTSINCE 2-Jan-2024").await,
        "* SEARCH"
    ));
    assert!(has(
        &c.ok("g SEARCH SENTSINCE 1-Jan-2024").await,
        "* SEARCH 1 2"
    ));
}

// ---- 3. CONDSTORE after enabling (RFC 7162 §3.1) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn condstore_enabled_by_fetch_modseq() {
    let h = Harness::new().await;
    h.deliver_plain(3).await;
    let mut c = h.client().await;
    c.ok("a SELECT INBOX").await;
    let r = c.ok("b FETCH 1 MODSEQ").await;
    assert!(
        r.last()
            .expect("tagged")
            .starts_with("b OK [HIGHESTMODSEQ "),
        "the enabling FETCH announces HIGHESTMODSEQ: {r:?}"
    );
    let r = c.ok("c STORE 1 +FLAGS (\\Flagged)").await;
    let fetch = &r[position(&r, "* 1 FETCH")];
    assert!(
        fetch.contains("\\Flagged") && fetch.contains("MODSEQ ("),
        "{r:?}"
    );
    let m1: u64 = fetch
        .split("MODSEQ (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .expect("modseq");
    // A second enabling command announces nothing more.
    let r = c.ok("d FETCH 1 MODSEQ").await;
    assert_eq!(r.last().expect("tagged"), "d OK FETCH completed");
    let r = c.ok("e SEARCH RETURN (ALL) MODSEQ 1").await;
    assert!(
        has(&r, &format!("* ESEARCH (TAG \"e\") ALL 1:3 MODSEQ {m1}")),
        "{r:?}"
    );
    let r = c.ok("f SEARCH RETURN (MAX) MODSEQ 1").await;
    let max = r
        .iter()
        .find(|l| l.starts_with("* ESEARCH"))
        .expect("esearch");
    assert!(
        max.starts_with("* ESEARCH (TAG \"f\") MAX 3 MODSEQ ") && !max.ends_with(&format!(" {m1}")),
        "MAX alone gives the MODSEQ of message 3: {max}"
    );
    assert!(has(
        &c.ok("g SEARCH MODSEQ 1").await,
        &format!("* SEARCH 1 2 3 (MODSEQ {m1})")
    ));
    // SEARCH MODSEQ in a fresh session is an enabling command too.
    let mut d = h.client().await;
    d.ok("a SELECT INBOX").await;
    let r = d.ok("b UID SEARCH MODSEQ 1").await;
    assert!(
        r.last()
            .expect("tagged")
            .starts_with("b OK [HIGHESTMODSEQ "),
        "{r:?}"
    );
}

// ---- 4. BINARY partials (RFC 3516) ----

const FIVE_PARTS: &str = "MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n\
--B\r\nContent-Type: text/plain\r\n\r\npart one\r\n\
--B\r\nContent-Type: text/plain\r\n\r\npart two\r\n\
--B\r\nContent-Type: message/rfc822\r\n\r\n\
Subject: inner\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"I\"\r\n\r\n\
--I\r\nContent-Type: text/plain\r\n\r\ninner text\r\n\
--I\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n\
aW5uZXIgZGVjb2RlZA==\r\n\
--I--\r\n\
--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
caf=C3=A9 =3D soft=\r\nbreak\r\n\
--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n\
SGVsbG8sIGJp\r\nbmFyeSB3b3JsZA==\r\n\
--B--\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_partials_carry_their_origin() {
    let h = Harness::new().await;
    h.deliver(FIVE_PARTS).await;
    let mut c = h.client().await;
    c.ok("a SELECT INBOX").await;
    c.send(b"b FETCH 1 (BINARY.PEEK[5]<0.7> BINARY.SIZE[5])\r\n")
        .await;
    let r = String::from_utf8_lossy(&c.until_raw("b").await).into_owned();
    assert!(
        r.contains("* 1 FETCH (BINARY[5]<0> {7}\r\nHello,  BINARY.SIZE[5] 19)\r\n"),
        "{r}"
    );
    c.send(b"c FETCH 1 (BINARY.PEEK[5]<7.100>)\r\n").await;
    let r = String::from_utf8_lossy(&c.until_raw("c").await).into_owned();
    assert!(r.contains("BINARY[5]<7> {12}\r\nbinary world)"), "{r}");
    c.send(b"d FETCH 1 (BINARY.PEEK[4] BINARY.SIZE[4])\r\n")
        .await;
    let r = String::from_utf8_lossy(&c.until_raw("d").await).into_owned();
    assert!(
        r.contains("BINARY[4] {17}\r\ncaf\u{e9} = softbreak BINARY.SIZE[4] 17)"),
        "{r}"
    );
    // Inside the encapsulated message: part 3.2 is the inner multipart's base64 part.
    c.send(b"e FETCH 1 (BINARY.PEEK[3.2]<6.7> BINARY.SIZE[3.2])\r\n")
        .await;
    let r = String::from_utf8_lossy(&c.until_raw("e").await).into_owned();
    assert!(
        r.contains("BINARY[3.2]<6> {7}\r\ndecoded BINARY.SIZE[3.2] 13)"),
        "{r}"
    );
    c.send(b"f FETCH 1 (BINARY.PEEK[3.1] UID)\r\n").await;
    let r = String::from_utf8_lossy(&c.until_raw("f").await).into_owned();
    assert!(r.contains("BINARY[3.1] {10}\r\ninner text UID 1)"), "{r}");
}

// ---- 5. APPEND with a literal8 (RFC 3516 §4.4) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_accepts_a_literal8_with_binary_content() {
    let h = Harness::new().await;
    let mut c = h.client().await;
    let mut msg = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n\
--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        .to_vec();
    msg.extend_from_slice(b"\x00\x01\x02zz\xff");
    msg.extend_from_slice(b"\r\n--B--\r\n");
    c.send(format!("a APPEND INBOX (\\Seen) ~{{{}}}\r\n", msg.len()).as_bytes())
        .await;
    assert!(c.line().await.starts_with('+'), "continuation for literal8");
    c.send(&msg).await;
    c.send(b"\r\n").await;
    let r = String::from_utf8_lossy(&c.until_raw("a").await).into_owned();
    assert!(r.contains("a OK [APPENDUID "), "{r}");
    c.ok("b SELECT INBOX").await;
    c.send(b"c FETCH 1 (BINARY.PEEK[2] BODY.PEEK[1] RFC822.SIZE)\r\n")
        .await;
    let raw = c.until_raw("c").await;
    let mut want = b"BINARY[2] ~{6}\r\n\x00\x01\x02zz\xff".to_vec();
    want.extend_from_slice(b" BODY[1] {5}\r\nhello");
    assert!(
        raw.windows(want.len()).any(|w| w == want.as_slice()),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(String::from_utf8_lossy(&raw).contains(&format!("RFC822.SIZE {}", msg.len())));
    // A literal cannot carry NUL: BODY[] shows it as 0x80 (as Dovecot does).
    c.send(b"c2 FETCH 1 (BODY.PEEK[2])\r\n").await;
    let raw = c.until_raw("c2").await;
    let want = b"BODY[2] {6}\r\n\x80\x01\x02zz\xff)";
    assert!(
        raw.windows(want.len()).any(|w| w == want.as_slice()),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // Non-synchronizing literal8 too (LITERAL+).
    let plus = "Subject: plus\r\n\r\nhi\r\n";
    c.send(format!("d APPEND INBOX ~{{{}+}}\r\n{plus}\r\n", plus.len()).as_bytes())
        .await;
    let r = String::from_utf8_lossy(&c.until_raw("d").await).into_owned();
    assert!(r.contains("d OK [APPENDUID "), "{r}");
}

// ---- 6. LIST-EXTENDED (RFC 5258) and LSUB (RFC 3501 §6.3.9) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_extended_subscribed_and_recursivematch() {
    let h = Harness::new().await;
    let mut c = h.client().await;
    for name in ["Foo/Bar", "Baz/Qux/Deep", "Top/Mid/Leaf"] {
        c.ok(&format!("a CREATE {name}")).await;
    }
    for name in ["Foo/Bar", "Baz/Qux/Deep", "Top/Mid/Leaf", "Baz"] {
        c.ok(&format!("b SUBSCRIBE {name}")).await;
    }
    c.ok("c DELETE Top/Mid/Leaf").await;
    c.ok("c DELETE Top/Mid").await;
    c.ok("c DELETE Top").await;

    let r = c.cmd("d LIST (RECURSIVEMATCH) \"\" *").await;
    assert!(r.last().expect("tagged").starts_with("d BAD"), "{r:?}");
    assert!(c.ok("d2 NOOP").await.len() == 1);

    let r = c.ok("e LIST (SUBSCRIBED) \"\" *").await;
    assert!(
        has(&r, "* LIST (\\NonExistent \\Subscribed) \"/\" Top/Mid/Leaf"),
        "{r:?}"
    );
    assert!(
        has(&r, "* LIST (\\HasChildren \\Subscribed) \"/\" Baz"),
        "{r:?}"
    );
    assert!(
        has(&r, "* LIST (\\HasNoChildren \\Subscribed) \"/\" Foo/Bar"),
        "{r:?}"
    );
    assert_eq!(r.len(), 5, "{r:?}");

    let r = c.ok("f LIST (SUBSCRIBED RECURSIVEMATCH) \"\" %").await;
    assert!(
        has(
            &r,
            "* LIST (\\HasChildren) \"/\" Foo (\"CHILDINFO\" (\"SUBSCRIBED\"))"
        ),
        "{r:?}"
    );
    assert!(
        has(
            &r,
            "* LIST (\\HasChildren \\Subscribed) \"/\" Baz (\"CHILDINFO\" (\"SUBSCRIBED\"))"
        ),
        "{r:?}"
    );
    assert!(
        has(
            &r,
            "* LIST (\\NonExistent) \"/\" Top (\"CHILDINFO\" (\"SUBSCRIBED\"))"
        ),
        "{r:?}"
    );
    assert_eq!(r.len(), 4, "{r:?}");

    let r = c.ok("g LIST (SUBSCRIBED RECURSIVEMATCH) \"\" %/%").await;
    assert!(
        has(&r, "* LIST (\\HasNoChildren \\Subscribed) \"/\" Foo/Bar"),
        "{r:?}"
    );
    assert!(
        has(
            &r,
            "* LIST (\\HasChildren) \"/\" Baz/Qux (\"CHILDINFO\" (\"SUBSCRIBED\"))"
        ),
        "{r:?}"
    );
    assert!(
        has(
            &r,
            "* LIST (\\NonExistent) \"/\" Top/Mid (\"CHILDINFO\" (\"SUBSCRIBED\"))"
        ),
        "{r:?}"
    );
    assert_eq!(r.len(), 4, "{r:?}");

    let r = c.ok("h LSUB \"\" %").await;
    assert!(has(&r, "* LSUB (\\Noselect) \"/\" Foo"), "{r:?}");
    assert!(has(&r, "* LSUB (\\Noselect) \"/\" Top"), "{r:?}");
    assert!(
        r.iter()
            .any(|l| l.starts_with("* LSUB (") && l.ends_with(" Baz") && !l.contains("Noselect")),
        "{r:?}"
    );
    assert_eq!(r.len(), 4, "{r:?}");
    let r = c.ok("i LSUB \"\" Baz/%").await;
    assert!(has(&r, "* LSUB (\\Noselect) \"/\" Baz/Qux"), "{r:?}");
    assert_eq!(r.len(), 2, "{r:?}");
    let r = c.ok("j LSUB \"\" *").await;
    assert!(!r.iter().any(|l| l.contains("Noselect")), "{r:?}");
    assert_eq!(r.len(), 5, "{r:?}");
}

// ---- 7. SORT keys (RFC 5256) and address search ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_by_base_subject_and_address_and_search_addresses() {
    let h = Harness::new().await;
    for (from, subject) in [
        ("b@a.test", "Re: banana"),
        (
            "=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <a@z.test>",
            "[list] Apple (fwd)",
        ),
        ("\"Doe, Jane\" <a@b.test>", "Fwd: =?utf-8?q?cherry?="),
        ("c@c.test", "DATES   \t and  figs"),
    ] {
        h.deliver(&format!(
            "From: {from}\r\nTo: x@y.test\r\nSubject: {subject}\r\n\r\nx\r\n"
        ))
        .await;
    }
    let mut c = h.client().await;
    c.ok("a SELECT INBOX").await;
    assert!(has(
        &c.ok("b SORT (SUBJECT) UTF-8 ALL").await,
        "* SORT 2 1 3 4"
    ));
    assert!(has(
        &c.ok("c SORT (FROM) UTF-8 ALL").await,
        "* SORT 3 2 1 4"
    ));
    assert!(has(
        &c.ok("d SORT (REVERSE FROM) UTF-8 ALL").await,
        "* SORT 4 1 2 3"
    ));
    for (key, needle, want) in [
        ("FROM", "rgen m", "* SEARCH 2"),
        ("FROM", "J\u{fc}rgen M\u{fc}ller <a@z", "* SEARCH 2"),
        ("FROM", "doe, jane", "* SEARCH 3"),
        ("FROM", "a@", "* SEARCH 2 3"),
        ("FROM", "z.test", "* SEARCH 2"),
        ("TO", "x@y", "* SEARCH 1 2 3 4"),
        ("CC", "x", "* SEARCH"),
    ] {
        // The needle as a non-synchronizing literal: it may be UTF-8.
        c.send(
            format!(
                "e SEARCH CHARSET UTF-8 {key} {{{}+}}\r\n{needle}\r\n",
                needle.len()
            )
            .as_bytes(),
        )
        .await;
        let r: Vec<String> = String::from_utf8_lossy(&c.until_raw("e").await)
            .split("\r\n")
            .map(str::to_string)
            .collect();
        assert!(has(&r, want), "{key} {needle}: {r:?}");
    }
}

// ---- 8. ESEARCH past the end, and BAD never ends a session ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_past_the_end_is_empty_and_the_session_goes_on() {
    let h = Harness::new().await;
    h.deliver_plain(3).await;
    let mut c = h.client().await;
    c.ok("a SELECT INBOX").await;
    let r = c.ok("b SEARCH RETURN () 1000").await;
    assert!(has(&r, "* ESEARCH (TAG \"b\")"), "{r:?}");
    let r = c.ok("c SEARCH RETURN (COUNT) 2:1000").await;
    assert!(has(&r, "* ESEARCH (TAG \"c\") COUNT 2"), "{r:?}");
    assert!(has(&c.ok("d SEARCH 1000").await, "* SEARCH"));
    // BADs of every kind, below the error limit (5): the session stays usable.
    for bad in [
        "e FETCH 1000 FLAGS",
        "f SEARCH RETURN (BOGUS) ALL",
        "g LIST (RECURSIVEMATCH) \"\" *",
        "h NONSENSE",
    ] {
        let r = c.cmd(bad).await;
        assert!(r.last().expect("reply").contains(" BAD "), "{bad}: {r:?}");
        assert!(!r.iter().any(|l| l.starts_with("* BYE")), "{bad}: {r:?}");
    }
    // Commands the server answers BAD itself do not count towards the limit.
    for i in 0..10 {
        let r = c.cmd(&format!("i{i} STORE 1000 +FLAGS (\\Seen)")).await;
        assert!(r.last().expect("reply").contains(" BAD "), "{r:?}");
    }
    let r = c.ok("j FETCH 1 UID").await;
    assert!(has(&r, "* 1 FETCH (UID 1)"), "{r:?}");
}

// ---- 9. New keywords are announced (RFC 9051 §7.3.5) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_keywords_are_announced_before_the_fetch_that_uses_them() {
    let h = Harness::new().await;
    h.deliver_plain(2).await;
    let mut a = h.client().await;
    let mut b = h.client().await;
    a.ok("a1 SELECT INBOX").await;
    b.ok("b1 SELECT INBOX").await;
    let r = a.ok("a2 STORE 1 +FLAGS ($Label1)").await;
    let flags = position(&r, "* FLAGS (");
    assert_eq!(
        r[flags],
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)"
    );
    let perm = position(&r, "* OK [PERMANENTFLAGS (");
    assert!(r[perm].contains("$Label1 \\*)]"), "{r:?}");
    assert!(flags < position(&r, "* 1 FETCH") && perm < position(&r, "* 1 FETCH"));
    // The same keyword again is not announced again.
    let r = a.ok("a3 STORE 2 +FLAGS ($Label1)").await;
    assert!(!r.iter().any(|l| l.starts_with("* FLAGS")), "{r:?}");
    // The other session learns it at its next refresh, before the FETCH.
    let r = b.ok("b2 NOOP").await;
    let flags = position(&r, "* FLAGS (");
    assert!(r[flags].ends_with("$Label1)"), "{r:?}");
    assert!(flags < position(&r, "* 1 FETCH"), "{r:?}");
    // A new session is told at SELECT.
    let mut c = h.client().await;
    let r = c.ok("c1 SELECT INBOX").await;
    assert!(
        has(
            &r,
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)"
        ),
        "{r:?}"
    );
}

// ---- 10. SELECT closing the selected mailbox (RFC 9051 §6.3.2) ----

/// A SELECT or EXAMINE while a mailbox is selected starts with `* OK [CLOSED]`, before the
/// new mailbox's EXISTS, also without QRESYNC and also when the new SELECT fails; the
/// first SELECT of a session has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_that_closes_a_mailbox_sends_closed_first() {
    let h = Harness::new().await;
    h.deliver_plain(1).await;
    let mut a = h.client().await;
    let r = a.ok("a1 SELECT INBOX").await;
    assert!(!r.iter().any(|l| l.contains("[CLOSED]")), "{r:?}");
    let r = a.ok("a2 EXAMINE Sent").await;
    assert!(r[0].starts_with("* OK [CLOSED]"), "{r:?}");
    let r = a.ok("a3 SELECT INBOX").await;
    assert!(r[0].starts_with("* OK [CLOSED]"), "{r:?}");
    assert!(position(&r, "* OK [CLOSED]") < position(&r, "* 1 EXISTS"));
    let r = a.cmd("a4 SELECT Nonexistent").await;
    assert!(r[0].starts_with("* OK [CLOSED]"), "{r:?}");
    assert!(r.last().expect("tagged").starts_with("a4 NO"), "{r:?}");
    // Now nothing is selected: the next SELECT closes nothing.
    let r = a.ok("a5 SELECT INBOX").await;
    assert!(!r.iter().any(|l| l.contains("[CLOSED]")), "{r:?}");
}

// ---- 11. BINARY[] is the whole message (RFC 3516 §4.2) ----

/// `BINARY[]` and `BINARY.SIZE[]` cover the header too, as `BODY[]` does: the message as
/// stored when its top level has no transfer encoding, the header and the decoded body when
/// it is base64 or quoted-printable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_of_the_whole_message_includes_the_header() {
    let h = Harness::new().await;
    let plain = "From: a@remote.test\r\nSubject: whole\r\n\r\nbody text\r\n";
    h.deliver(plain).await;
    h.deliver(
        "From: a@remote.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\
Content-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ=\r\n",
    )
    .await;
    h.deliver(FIVE_PARTS).await;
    let mut c = h.client().await;
    c.ok("a SELECT INBOX").await;
    c.send(b"b FETCH 1 (BINARY.PEEK[] BINARY.SIZE[])\r\n").await;
    let r = String::from_utf8_lossy(&c.until_raw("b").await).into_owned();
    assert!(
        r.contains(&format!(
            "* 1 FETCH (BINARY[] {{{}}}\r\n{plain} BINARY.SIZE[] {})",
            plain.len(),
            plain.len()
        )),
        "{r}"
    );
    c.send(b"c FETCH 2 (BINARY.PEEK[] BINARY.SIZE[])\r\n").await;
    let r = String::from_utf8_lossy(&c.until_raw("c").await).into_owned();
    let header = "From: a@remote.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\
Content-Transfer-Encoding: base64\r\n\r\n";
    let want = format!("{header}hello world");
    assert!(
        r.contains(&format!(
            "BINARY[] {{{}}}\r\n{want} BINARY.SIZE[] {})",
            want.len(),
            want.len()
        )),
        "{r}"
    );
    c.send(b"d FETCH 3 (BINARY.SIZE[] RFC822.SIZE)\r\n").await;
    let r = String::from_utf8_lossy(&c.until_raw("d").await).into_owned();
    let n = FIVE_PARTS.len();
    assert!(
        r.contains(&format!("BINARY.SIZE[] {n}")) && r.contains(&format!("RFC822.SIZE {n}")),
        "{r}"
    );
}

// ---- 12. STATUS needs an item (RFC 9051 §9, status-att-list) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_an_empty_item_list_is_bad() {
    let h = Harness::new().await;
    h.deliver_plain(2).await;
    let mut c = h.client().await;
    let r = c.cmd("a STATUS INBOX ()").await;
    assert_eq!(r.len(), 1, "no STATUS data: {r:?}");
    assert!(r[0].starts_with("a BAD"), "{r:?}");
    let r = c.ok("b STATUS INBOX (MESSAGES)").await;
    assert!(has(&r, "* STATUS INBOX (MESSAGES 2)"), "{r:?}");
}

// ---- 13. Keywords are case-insensitive (RFC 9051 §2.3.2) ----

/// The flags of `* n FETCH (FLAGS (...))` in `lines`, sorted (their order is not significant).
fn fetch_flags(lines: &[String], n: u32) -> Vec<String> {
    let prefix = format!("* {n} FETCH (FLAGS (");
    let line = &lines[position(lines, &prefix)];
    let inner = &line[prefix.len()..line.find("))").expect("end of flags")];
    let mut flags: Vec<String> = inner.split_whitespace().map(str::to_string).collect();
    flags.sort();
    flags
}

/// `$x` and `$X` are one keyword: a STORE naming both keeps the first, adding another
/// spelling changes nothing, a second message gets the spelling the session already
/// knows, and removing any spelling removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keywords_differing_in_case_are_one_keyword() {
    let h = Harness::new().await;
    h.deliver_plain(2).await;
    let mut c = h.client().await;
    c.ok("a SELECT INBOX").await;
    let r = c.ok("b STORE 1 FLAGS (\\Seen \\Seen $x $X)").await;
    assert_eq!(fetch_flags(&r, 1), ["$x", "\\Recent", "\\Seen"], "{r:?}");
    let r = c.ok("c STORE 1 +FLAGS ($X)").await;
    assert_eq!(fetch_flags(&r, 1), ["$x", "\\Recent", "\\Seen"], "{r:?}");
    let r = c.ok("d STORE 2 +FLAGS ($X)").await;
    assert_eq!(fetch_flags(&r, 2), ["$x", "\\Recent"], "{r:?}");
    assert!(
        !r.iter().any(|l| l.starts_with("* FLAGS")),
        "no new keyword: {r:?}"
    );
    let r = c.ok("e STORE 1:2 -FLAGS ($X)").await;
    assert_eq!(fetch_flags(&r, 1), ["\\Recent", "\\Seen"], "{r:?}");
    assert_eq!(fetch_flags(&r, 2), ["\\Recent"], "{r:?}");
    let mut other = h.client().await;
    let r = other.ok("f SELECT INBOX").await;
    assert!(
        has(
            &r,
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
        ),
        "{r:?}"
    );
}

// ---- 14. Flags a client cannot set (RFC 3501 §2.3.2, RFC 9051 §2.3.2) ----

/// STORE and APPEND of `\Recent` (the server's to set) or of an undefined system flag such
/// as `\Bogus` are BAD and change nothing, as Dovecot answers; a keyword is still fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_and_undefined_system_flags_cannot_be_set() {
    let h = Harness::new().await;
    h.deliver_plain(1).await;
    let mut c = h.client().await;
    c.ok("a SELECT INBOX").await;
    for (tag, flag) in [("b", "\\Recent"), ("c", "\\Bogus")] {
        let r = c
            .cmd(&format!("{tag} STORE 1 +FLAGS (\\Seen {flag})"))
            .await;
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].starts_with(&format!("{tag} BAD")), "{r:?}");
    }
    let r = c.ok("d FETCH 1 FLAGS").await;
    assert_eq!(fetch_flags(&r, 1), ["\\Recent"], "nothing stored: {r:?}");
    for (tag, flag) in [("e", "\\Recent"), ("f", "\\Bogus")] {
        c.send(format!("{tag} APPEND INBOX ({flag}) {{3+}}\r\nx\r\n\r\n").as_bytes())
            .await;
        let r = String::from_utf8_lossy(&c.until_raw(tag).await).into_owned();
        assert!(r.starts_with(&format!("{tag} BAD")), "{r}");
    }
    let r = c.ok("g STATUS INBOX (MESSAGES)").await;
    assert!(
        has(&r, "* STATUS INBOX (MESSAGES 1)"),
        "nothing appended: {r:?}"
    );
    c.ok("h APPEND INBOX ($Fine \\Seen) {3+}\r\nx\r\n").await;
}

// ---- 15. SEARCH address keys ignore header comments (RFC 9051 §6.4.4) ----

/// FROM/TO/CC/BCC look at the addresses (the envelope's fields), not at comments in the
/// header; a parenthesis inside a quoted display name is part of the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_address_keys_do_not_match_comments() {
    let h = Harness::new().await;
    h.deliver("From: a@remote.test\r\nBcc: Hidden: (nobody) ;\r\nSubject: one\r\n\r\nx\r\n")
        .await;
    h.deliver(
        "From: \"Bob (Sales)\" <bob@remote.test>\r\nTo: undisclosed:;\r\nSubject: two\r\n\r\nx\r\n",
    )
    .await;
    let mut c = h.client().await;
    c.ok("a SELECT INBOX").await;
    assert!(has(&c.ok("b SEARCH BCC nobody").await, "* SEARCH"));
    assert!(has(
        &c.ok("d SEARCH FROM remote.test").await,
        "* SEARCH 1 2"
    ));
    assert!(has(&c.ok("e SEARCH FROM sales").await, "* SEARCH 2"));
    assert!(has(&c.ok("f SEARCH BCC hidden").await, "* SEARCH 1"));
    assert!(has(&c.ok("g SEARCH TO nobody").await, "* SEARCH"));
}

// ---- 16. SEARCH BODY/TEXT look into attached messages (RFC 9051 §6.4.4) ----

/// The body of a message includes the message/rfc822 it forwards: BODY and TEXT find words
/// of the attached message's body (and TEXT of its header); the outer message's own text is
/// still searched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_body_includes_attached_messages() {
    let h = Harness::new().await;
    h.deliver(
        "From: a@remote.test\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n\
--B\r\nContent-Type: text/plain\r\n\r\nsee below\r\n\
--B\r\nContent-Type: message/rfc822\r\n\r\n\
From: c@inner.test\r\nSubject: inner topic\r\n\r\nmeet on Friday\r\n\
--B--\r\n",
    )
    .await;
    h.deliver_plain(1).await;
    let mut c = h.client().await;
    c.ok("a SELECT INBOX").await;
    assert!(has(&c.ok("b SEARCH BODY friday").await, "* SEARCH 1"));
    assert!(has(&c.ok("c SEARCH TEXT friday").await, "* SEARCH 1"));
    assert!(has(
        &c.ok("d SEARCH TEXT \"inner topic\"").await,
        "* SEARCH 1"
    ));
    assert!(has(&c.ok("e SEARCH BODY below").await, "* SEARCH 1"));
    assert!(has(&c.ok("f SEARCH BODY body").await, "* SEARCH 2"));
}

// ---- 17. SORT by an address header that is a group (RFC 5256 §3) ----

/// A To: or Cc: that starts with a group sorts by the group's name (its envelope's first
/// address is the group marker), for TO, CC and DISPLAYTO, also for an empty group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_by_a_group_address_uses_the_group_name() {
    let h = Harness::new().await;
    h.deliver("From: a@x.test\r\nTo: Engineering: alice@x.test, zed@x.test;\r\nCc: undisclosed-recipients:;\r\nSubject: 1\r\n\r\nx\r\n").await;
    h.deliver("From: a@x.test\r\nTo: dave@x.test\r\nCc: carol@x.test\r\nSubject: 2\r\n\r\nx\r\n")
        .await;
    h.deliver(
        "From: a@x.test\r\nTo: Fred <fred@x.test>\r\nCc: zoe@x.test\r\nSubject: 3\r\n\r\nx\r\n",
    )
    .await;
    let mut c = h.client().await;
    c.ok("a SELECT INBOX").await;
    // alice < dave < engineering < fred: the group sorts by its name, not its first member.
    assert!(has(&c.ok("b SORT (TO) UTF-8 ALL").await, "* SORT 2 1 3"));
    assert!(has(
        &c.ok("c SORT (DISPLAYTO) UTF-8 ALL").await,
        "* SORT 2 1 3"
    ));
    // carol < undisclosed-recipients < zoe: the empty group is not an empty address.
    assert!(has(&c.ok("d SORT (CC) UTF-8 ALL").await, "* SORT 2 1 3"));
}

// ---- 18. UID FETCH after another session's change (RFC 9051 §7.5.1) ----

/// A UID FETCH FLAGS right after another session changed the flags answers with the
/// current flags: the change is reported before the answer, never an old answer followed
/// by the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid_fetch_answers_with_the_current_flags() {
    let h = Harness::new().await;
    h.deliver_plain(2).await;
    let mut a = h.client().await;
    let mut b = h.client().await;
    a.ok("a1 SELECT INBOX").await;
    a.ok("a2 STORE 1 +FLAGS (\\Seen \\Flagged)").await;
    b.ok("b1 SELECT INBOX").await;
    b.ok("b2 STORE 1 -FLAGS (\\Flagged)").await;
    let r = a.ok("a3 UID FETCH 1 FLAGS").await;
    let fetches: Vec<&String> = r.iter().filter(|l| l.starts_with("* 1 FETCH")).collect();
    assert!(!fetches.is_empty(), "{r:?}");
    for l in &fetches {
        assert!(!l.contains("\\Flagged"), "stale flags: {r:?}");
    }
}

// ---- 19. CONTEXT=SORT (RFC 5267 §4.3) ----

/// A SORT with UPDATE stays live: additions come as ADDTO pairs whose positions place each
/// run of new messages in the sorted list, removals (flag changes, expunges) as REMOVEFROM
/// pairs at the positions they had, before the EXPUNGE responses, for UID and
/// sequence-number contexts; CANCELUPDATE ends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_contexts_send_positioned_updates() {
    let h = Harness::new().await;
    for s in ["msg c", "msg a", "msg e"] {
        h.deliver(&format!("From: a@x.test\r\nSubject: {s}\r\n\r\nx\r\n"))
            .await;
    }
    let mut c = h.client().await;
    assert!(c
        .ok("a CAPABILITY")
        .await
        .iter()
        .any(|l| l.starts_with("* CAPABILITY") && l.contains(" CONTEXT=SORT")));
    c.ok("b SELECT INBOX").await;
    let r = c
        .ok("s1 UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNSEEN")
        .await;
    assert!(has(&r, "* ESEARCH (TAG \"s1\") UID ALL 2,1,3"), "{r:?}");
    let r = c
        .ok("s2 SORT RETURN (UPDATE COUNT) (REVERSE SUBJECT) UTF-8 ALL")
        .await;
    assert!(has(&r, "* ESEARCH (TAG \"s2\") COUNT 3"), "{r:?}");
    // A tag in use by a live update search is BAD (RFC 5267 §4.3).
    let r = c.cmd("s2 SORT RETURN (UPDATE) (SUBJECT) UTF-8 ALL").await;
    assert!(r.last().is_some_and(|l| l.starts_with("s2 BAD")), "{r:?}");

    // Two new messages: a b f, sorted a(2) b(4) c(1) e(3) f(5) / reversed f e c b a.
    for s in ["msg b", "msg f"] {
        h.deliver(&format!("From: a@x.test\r\nSubject: {s}\r\n\r\nx\r\n"))
            .await;
    }
    let r = c.ok("n1 NOOP").await;
    let exists = position(&r, "* 5 EXISTS");
    let add1 = position(&r, "* ESEARCH (TAG \"s1\") UID ADDTO (2 4 5 5)");
    let add2 = position(&r, "* ESEARCH (TAG \"s2\") ADDTO (1 5 4 4)");
    assert!(exists < add1 && exists < add2, "{r:?}");

    // Message 1 (c, third in s1's list) is seen: it leaves the UNSEEN context.
    let mut r = c.ok("f1 STORE 1 +FLAGS (\\Seen)").await;
    r.extend(c.ok("n2 NOOP").await);
    assert!(
        has(&r, "* ESEARCH (TAG \"s1\") UID REMOVEFROM (3 1)"),
        "{r:?}"
    );
    assert!(!r.iter().any(|l| l.contains("TAG \"s2\"")), "{r:?}");

    // Expunging message 2 (a): first in s1, last in s2, reported before the EXPUNGE.
    c.ok("f2 STORE 2 +FLAGS.SILENT (\\Deleted)").await;
    let r = c.ok("x1 EXPUNGE").await;
    let expunge = position(&r, "* 2 EXPUNGE");
    let rm1 = position(&r, "* ESEARCH (TAG \"s1\") UID REMOVEFROM (1 2)");
    let rm2 = position(&r, "* ESEARCH (TAG \"s2\") REMOVEFROM (5 2)");
    assert!(rm1 < expunge && rm2 < expunge, "{r:?}");

    // A later addition in the middle of both lists: "msg d" goes between c and e.
    h.deliver("From: a@x.test\r\nSubject: msg d\r\n\r\nx\r\n")
        .await;
    let r = c.ok("n3 NOOP").await;
    // s1 (UNSEEN, UID): b(4) e(3) f(5) -> b d e f; s2 (seq, reversed): f(4) e(2) c(1) b(3)
    // -> f e d c b, d being message 5 now.
    assert!(has(&r, "* ESEARCH (TAG \"s1\") UID ADDTO (2 6)"), "{r:?}");
    assert!(has(&r, "* ESEARCH (TAG \"s2\") ADDTO (3 5)"), "{r:?}");

    c.ok("c1 CANCELUPDATE \"s1\" \"s2\"").await;
    h.deliver("From: a@x.test\r\nSubject: msg 0\r\n\r\nx\r\n")
        .await;
    let r = c.ok("n4 NOOP").await;
    assert!(!r.iter().any(|l| l.starts_with("* ESEARCH")), "{r:?}");
}

// ---- 20. The public namespace `Shared/` (RFC 2342, RFC 4314) ----

/// The public account's folders appear under `Shared/` for the users of its domain, with
/// the rights their ACLs give (`anyone`, `authenticated`, an address): NAMESPACE, LIST,
/// SELECT, APPEND, COPY, STATUS, CREATE, MYRIGHTS and GETACL check them as for
/// `Other Users/`; the same folders are not reachable under `Other Users/public@...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_folders_under_shared() {
    let h = Harness::new().await;
    h.deliver_plain(1).await;
    let meta = &h.stores.meta;
    meta.create_account("bob@example.test", "x", 0)
        .await
        .expect("bob");
    let public = meta
        .create_account("public@example.test", "!", 0)
        .await
        .expect("public");
    let news = meta
        .create_mailbox(public.id, "News", None)
        .await
        .expect("news");
    let local = meta
        .create_mailbox(public.id, "News/Local", None)
        .await
        .expect("local");
    let hidden = meta
        .create_mailbox(public.id, "Board", None)
        .await
        .expect("board");
    meta.set_acl(public.id, news.id, "anyone", "lr")
        .await
        .expect("acl");
    meta.set_acl(public.id, local.id, "authenticated", "lrswik")
        .await
        .expect("acl");
    meta.set_acl(public.id, hidden.id, "bob@example.test", "lra")
        .await
        .expect("acl");

    let mut a = h.client().await;
    assert!(has(
        &a.ok("n NAMESPACE").await,
        "* NAMESPACE ((\"\" \"/\")) ((\"Other Users/\" \"/\")) ((\"Shared/\" \"/\"))"
    ));
    let r = a.ok("l1 LIST \"\" \"Shared*\"").await;
    assert!(
        has(&r, "* LIST (\\Noselect \\HasChildren) \"/\" Shared"),
        "{r:?}"
    );
    assert!(has(&r, "* LIST (\\HasChildren) \"/\" Shared/News"), "{r:?}");
    assert!(
        has(&r, "* LIST (\\HasNoChildren) \"/\" Shared/News/Local"),
        "{r:?}"
    );
    assert!(
        !r.iter().any(|l| l.contains("Board")),
        "alice may not see Board: {r:?}"
    );
    let r = a.ok("l2 LIST \"\" \"Other Users/*\"").await;
    assert!(!r.iter().any(|l| l.contains("public@")), "{r:?}");
    let r = a
        .cmd("s0 SELECT \"Other Users/public@example.test/News\"")
        .await;
    assert!(
        r.last()
            .is_some_and(|l| l.starts_with("s0 NO [NONEXISTENT]")),
        "{r:?}"
    );
    let r = a.cmd("s1 SELECT Shared/Board").await;
    assert!(
        r.last()
            .is_some_and(|l| l.starts_with("s1 NO [NONEXISTENT]")),
        "{r:?}"
    );

    assert!(has(
        &a.ok("m1 MYRIGHTS Shared/News").await,
        "* MYRIGHTS Shared/News lr"
    ));
    let r = a.cmd("g1 GETACL Shared/News").await;
    assert!(
        r.last().is_some_and(|l| l.starts_with("g1 NO [NOPERM]")),
        "{r:?}"
    );
    // No `i` on News; `i` on News/Local.
    let r = a.cmd("p1 APPEND Shared/News {3+}\r\nabc").await;
    assert!(
        r.last().is_some_and(|l| l.starts_with("p1 NO [NOPERM]")),
        "{r:?}"
    );
    let r = a
        .ok("p2 APPEND Shared/News/Local {24+}\r\nSubject: hello\r\n\r\nbody\r\n")
        .await;
    assert!(r.last().is_some_and(|l| l.contains("[APPENDUID ")), "{r:?}");
    a.ok("s2 SELECT INBOX").await;
    a.ok("c1 COPY 1 Shared/News/Local").await;
    let r = a.cmd("c2 COPY 1 Shared/News").await;
    assert!(
        r.last().is_some_and(|l| l.starts_with("c2 NO [NOPERM]")),
        "{r:?}"
    );
    // Top-level public folders come from the admin tool; below one with `k`, users may.
    let r = a.cmd("k1 CREATE Shared/Mine").await;
    assert!(r.last().is_some_and(|l| l.starts_with("k1 NO")), "{r:?}");
    let r = a.cmd("k2 CREATE Shared").await;
    assert!(
        r.last().is_some_and(|l| l.starts_with("k2 NO [CANNOT]")),
        "{r:?}"
    );
    a.ok("k3 CREATE Shared/News/Local/Sub").await;

    // Bob, another user of the domain, sees what alice put there and her new folder (it
    // took its parent's ACL); Board's ACL names him.
    let mut b = h.client_as("bob@example.test").await;
    assert!(has(
        &b.ok("t1 STATUS Shared/News/Local (MESSAGES)").await,
        "* STATUS Shared/News/Local (MESSAGES 2)"
    ));
    assert!(has(
        &b.ok("t2 MYRIGHTS Shared/News/Local/Sub").await,
        "* MYRIGHTS Shared/News/Local/Sub lrwsikc"
    ));
    let r = b.ok("t3 GETACL Shared/Board").await;
    assert!(
        r.iter()
            .any(|l| l.starts_with("* ACL Shared/Board ") && l.contains(" bob@example.test lra")),
        "{r:?}"
    );
    b.ok("t4 SETACL Shared/Board anyone lr").await;
    b.ok("t5 SELECT Shared/News/Local").await;
    let r = b.ok("t6 FETCH 1:* (RFC822.SIZE)").await;
    assert_eq!(
        r.iter()
            .filter(|l| l.starts_with("* ") && l.contains(" FETCH "))
            .count(),
        2,
        "{r:?}"
    );
    // Alice now sees Board too.
    let r = a.ok("l3 LIST \"\" \"Shared/%\"").await;
    assert!(
        has(&r, "* LIST (\\HasNoChildren) \"/\" Shared/Board"),
        "{r:?}"
    );
}
