//! IMAP OBJECTID (RFC 8474) over an in-memory pipe, against the embedded store: MAILBOXID
//! from CREATE, SELECT, STATUS and LIST-STATUS (kept by RENAME, new for a new mailbox),
//! FETCH EMAILID / THREADID (kept by COPY and MOVE, threads by In-Reply-To / References)
//! and the SEARCH keys EMAILID / THREADID.

use async_trait::async_trait;
use mailfleet_core::shutdown::Shutdown;
use mailfleet_imap::{serve_connection, ConnLimits, ImapConfig, LoginError, LoginService, Session};
use mailfleet_storage::{Account, Stores};
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
        stores
            .meta
            .create_account("alice@example.test", "x", 0)
            .await
            .expect("account");
        Harness { _dir: dir, stores }
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

impl Client {
    /// APPENDs `raw` to `mailbox` with a non-synchronising literal (LITERAL+).
    async fn append(&mut self, tag: &str, mailbox: &str, raw: &str) {
        let line = format!("{tag} APPEND {mailbox} {{{}+}}\r\n{raw}", raw.len());
        self.send(line.as_bytes()).await;
        self.send(b"\r\n").await;
        let r = self.until_raw(tag).await;
        let text = String::from_utf8_lossy(&r).to_string();
        assert!(text.contains(&format!("{tag} OK")), "{text}");
    }
}

/// The value of `NAME (value)` in `line`.
fn paren_value(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!("{name} ("))? + name.len() + 2;
    let end = line[at..].find(')')? + at;
    Some(line[at..end].to_string())
}

fn is_objectid(id: &str) -> bool {
    (1..=255).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `(EMAILID, THREADID)` of each message of the selected mailbox, by sequence number.
async fn object_ids(c: &mut Client, tag: &str) -> Vec<(String, String)> {
    let r = c.ok(&format!("{tag} FETCH 1:* (EMAILID THREADID)")).await;
    r.iter()
        .filter(|l| l.starts_with("* ") && l.contains(" FETCH ("))
        .map(|l| {
            let e = paren_value(l, "EMAILID").expect("EMAILID");
            let t = paren_value(l, "THREADID").expect("THREADID");
            assert!(is_objectid(&e) && is_objectid(&t), "{l}");
            (e, t)
        })
        .collect()
}

fn msg(id: &str, parent: Option<&str>, refs: &str, subject: &str) -> String {
    let mut h = format!("From: a@remote.test\r\nMessage-ID: <{id}>\r\nSubject: {subject}\r\n");
    if let Some(p) = parent {
        h.push_str(&format!("In-Reply-To: <{p}>\r\n"));
    }
    if !refs.is_empty() {
        h.push_str(&format!("References: {refs}\r\n"));
    }
    h.push_str("\r\nbody\r\n");
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailboxid_from_create_select_status_and_list_status() {
    let h = Harness::new().await;
    let mut c = h.client().await;
    let caps = c.ok("c1 CAPABILITY").await;
    assert!(
        caps.iter()
            .any(|l| l.starts_with("* CAPABILITY") && l.split(' ').any(|w| w == "OBJECTID")),
        "{caps:?}"
    );
    let r = c.ok("c2 CREATE Projects").await;
    let created = paren_value(r.last().expect("tagged"), "[MAILBOXID").expect("MAILBOXID code");
    assert!(is_objectid(&created), "{created}");
    let r = c.ok("c3 STATUS Projects (MAILBOXID)").await;
    assert!(
        r.contains(&format!("* STATUS Projects (MAILBOXID ({created}))")),
        "{r:?}"
    );
    c.ok("c4 RENAME Projects Archive2").await;
    let r = c
        .ok("c5 STATUS Archive2 (MESSAGES MAILBOXID UIDNEXT)")
        .await;
    let line = r
        .iter()
        .find(|l| l.starts_with("* STATUS"))
        .expect("STATUS");
    assert_eq!(
        paren_value(line, "MAILBOXID"),
        Some(created.clone()),
        "{line}"
    );
    assert!(
        line.contains("MESSAGES 0") && line.contains("UIDNEXT 1"),
        "{line}"
    );
    let r = c.ok("c6 EXAMINE Archive2").await;
    assert!(
        r.iter()
            .any(|l| l.starts_with(&format!("* OK [MAILBOXID ({created})]"))),
        "RENAME keeps the MAILBOXID: {r:?}"
    );
    let r = c.ok("c7 SELECT INBOX").await;
    let inbox = r
        .iter()
        .find_map(|l| paren_value(l, "* OK [MAILBOXID"))
        .expect("SELECT names the MAILBOXID");
    assert_ne!(inbox, created);
    c.ok("c8 DELETE Archive2").await;
    let r = c.ok("c9 CREATE Archive2").await;
    let again = paren_value(r.last().expect("tagged"), "[MAILBOXID").expect("MAILBOXID");
    assert_ne!(again, created, "a new mailbox never gets an old MAILBOXID");
    let r = c
        .ok("c10 LIST \"\" \"*\" RETURN (STATUS (MESSAGES MAILBOXID))")
        .await;
    let status: Vec<&String> = r.iter().filter(|l| l.starts_with("* STATUS")).collect();
    assert!(status.len() >= 6, "{r:?}");
    assert!(
        status
            .iter()
            .any(|l| l.starts_with("* STATUS Archive2 ")
                && l.contains(&format!("MAILBOXID ({again})"))),
        "{r:?}"
    );
    assert!(status.iter().all(|l| l.contains("MESSAGES ")), "{r:?}");
    let r = c.cmd("c11 STATUS INBOX (MAILBOXID BOGUS)").await;
    assert!(r.last().expect("tagged").starts_with("c11 BAD"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emailid_and_threadid_through_copy_move_and_search() {
    let h = Harness::new().await;
    let mut c = h.client().await;
    let root = msg("root@x", None, "", "plans");
    c.append("a1", "INBOX", &root).await;
    c.append(
        "a2",
        "INBOX",
        &msg("reply@x", Some("root@x"), "<root@x>", "Re: plans"),
    )
    .await;
    c.append("a3", "INBOX", &msg("other@x", None, "", "unrelated"))
        .await;
    // The same message again: a new email, the same thread.
    c.append("a4", "INBOX", &root).await;
    // Refers to the reply through References only (its parent is missing).
    c.append(
        "a5",
        "INBOX",
        &msg(
            "deep@x",
            Some("missing@x"),
            "<root@x> <missing@x>",
            "Re: plans",
        ),
    )
    .await;
    c.ok("s1 SELECT INBOX").await;
    let ids = object_ids(&mut c, "f1").await;
    assert_eq!(ids.len(), 5);
    let emails: std::collections::HashSet<&String> = ids.iter().map(|x| &x.0).collect();
    assert_eq!(emails.len(), 5, "every APPEND is a new email: {ids:?}");
    assert_eq!(ids[1].1, ids[0].1, "a reply is in its parent's thread");
    assert_eq!(ids[3].1, ids[0].1);
    assert_eq!(ids[4].1, ids[0].1);
    assert_ne!(ids[2].1, ids[0].1);
    assert!(ids
        .iter()
        .all(|x| x.0.starts_with('E') && x.1.starts_with('T')));

    // UID FETCH, alone and with other items.
    let r = c.ok("f2 UID FETCH 1 (EMAILID)").await;
    assert!(
        r.contains(&format!("* 1 FETCH (UID 1 EMAILID ({}))", ids[0].0)),
        "{r:?}"
    );
    let r = c.ok("f3 FETCH 3 (FLAGS THREADID)").await;
    // FLAGS from the codec (\\Recent here), then the THREADID.
    assert!(
        r.iter().any(|l| l.starts_with("* 3 FETCH (FLAGS (")
            && l.ends_with(&format!(") THREADID ({}))", ids[2].1))),
        "{r:?}"
    );

    // SEARCH.
    let r = c.ok(&format!("q1 SEARCH EMAILID {}", ids[3].0)).await;
    assert!(r.contains(&"* SEARCH 4".to_string()), "{r:?}");
    let r = c.ok(&format!("q2 SEARCH THREADID {}", ids[0].1)).await;
    assert!(r.contains(&"* SEARCH 1 2 4 5".to_string()), "{r:?}");
    let r = c
        .ok(&format!("q3 UID SEARCH NOT THREADID {}", ids[0].1))
        .await;
    assert!(r.contains(&"* SEARCH 3".to_string()), "{r:?}");
    let r = c
        .ok(&format!(
            "q4 SEARCH RETURN (COUNT) THREADID {} SUBJECT Re",
            ids[0].1
        ))
        .await;
    assert!(r.iter().any(|l| l.contains("COUNT 2")), "{r:?}");
    let r = c.ok("q5 SEARCH EMAILID Enosuchid").await;
    assert!(r.contains(&"* SEARCH".to_string()), "{r:?}");
    let r = c.cmd("q6 SEARCH EMAILID bad!id").await;
    assert!(r.last().expect("tagged").starts_with("q6 BAD"), "{r:?}");
    let r = c.cmd("q7 SEARCH THREADID").await;
    assert!(r.last().expect("tagged").starts_with("q7 BAD"), "{r:?}");

    // COPY and MOVE keep both ids.
    c.ok("m1 COPY 1 Trash").await;
    c.ok("m2 MOVE 2 Trash").await;
    let r = c.ok(&format!("q8 SEARCH EMAILID {}", ids[1].0)).await;
    assert!(r.contains(&"* SEARCH".to_string()), "moved away: {r:?}");
    c.ok("s2 SELECT Trash").await;
    let trash = object_ids(&mut c, "f4").await;
    assert_eq!(trash, vec![ids[0].clone(), ids[1].clone()]);
    let r = c.ok(&format!("q9 SEARCH THREADID {}", ids[0].1)).await;
    assert!(r.contains(&"* SEARCH 1 2".to_string()), "{r:?}");
}
