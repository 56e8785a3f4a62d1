//! Black-box POP3 sessions over an in-memory pipe, against the real embedded stores and
//! the real authenticator.

use bytes::Bytes;
use mailfleet_auth::{AuthPolicy, Authenticator};
use mailfleet_core::config::AuthConfig;
use mailfleet_core::credentials::hash_password;
use mailfleet_core::shutdown::{Shutdown, ShutdownController};
use mailfleet_pop3::{serve_connection, ConnLimits, Session, SessionConfig};
use mailfleet_storage::coord::MailboxEvent;
use mailfleet_storage::metadata::QuotaPolicy;
use mailfleet_storage::{Flags, NewMessage, Stores, Uid};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

const PASSWORD: &str = "Corr3ct-Horse-Battery";
const USER: &str = "alice@example.test";

struct Harness {
    _dir: tempfile::TempDir,
    stores: Stores,
    auth: Authenticator,
    cfg: Arc<SessionConfig>,
    limits: ConnLimits,
}

async fn harness(allow_plaintext: bool) -> Harness {
    let dir = tempfile::tempdir().expect("tmp");
    let stores = mailfleet_storage::embedded::open(dir.path(), 16).expect("stores");
    stores
        .meta
        .create_domain("example.test")
        .await
        .expect("domain");
    let hash = hash_password(PASSWORD).expect("hash");
    stores
        .meta
        .create_account(USER, &hash, 0)
        .await
        .expect("account");
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
        cfg: Arc::new(SessionConfig {
            hostname: "pop.example.test".into(),
            starttls: false,
            allow_plaintext_auth: allow_plaintext,
            max_errors: 5,
            max_messages: 1000,
        }),
        limits: ConnLimits {
            max_line: 512,
            command_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(5),
        },
    }
}

impl Harness {
    async fn deliver(&self, body: &str) -> Uid {
        let account = self
            .stores
            .meta
            .get_account(USER)
            .await
            .expect("get")
            .expect("alice");
        let inbox = self
            .stores
            .meta
            .get_mailbox(account.id, "INBOX")
            .await
            .expect("get")
            .expect("inbox");
        let bytes = Bytes::from(body.to_string());
        let blob = self.stores.blobs.put(bytes.clone()).await.expect("put");
        self.stores
            .meta
            .append(
                vec![NewMessage {
                    account: account.id,
                    mailbox: inbox.id,
                    blob,
                    size: bytes.len() as u64,
                    internal_date: 0,
                    flags: Flags::default(),
                    summary: None,
                    refs: Default::default(),
                    trace: None,
                }],
                QuotaPolicy::Allow,
            )
            .await
            .expect("append")[0]
            .uid
    }

    async fn inbox_uids(&self) -> Vec<u32> {
        let account = self
            .stores
            .meta
            .get_account(USER)
            .await
            .expect("get")
            .expect("alice");
        let inbox = self
            .stores
            .meta
            .get_mailbox(account.id, "INBOX")
            .await
            .expect("get")
            .expect("inbox");
        self.stores
            .meta
            .list_messages(inbox.id, Uid(0), 1000)
            .await
            .expect("list")
            .iter()
            .map(|m| m.uid.0)
            .collect()
    }

    async fn uid_validity(&self) -> u32 {
        let account = self
            .stores
            .meta
            .get_account(USER)
            .await
            .expect("get")
            .expect("alice");
        self.stores
            .meta
            .get_mailbox(account.id, "INBOX")
            .await
            .expect("get")
            .expect("inbox")
            .uid_validity
    }

    fn connect_with(&self, limits: ConnLimits, shutdown: Shutdown) -> Client {
        let (client, server) = tokio::io::duplex(1 << 20);
        let session = Session::new(
            self.cfg.clone(),
            self.stores.clone(),
            self.auth.clone(),
            "192.0.2.10".parse().expect("ip"),
        );
        let task = tokio::spawn(serve_connection(
            Box::new(server),
            session,
            limits,
            None,
            shutdown,
        ));
        let (r, w) = tokio::io::split(client);
        Client {
            r: BufReader::new(r),
            w,
            task,
        }
    }

    async fn connect(&self) -> Client {
        let mut c = self.connect_with(self.limits, Shutdown::never());
        let greeting = c.line().await;
        assert!(greeting.starts_with("+OK "), "{greeting}");
        c
    }

    async fn login(&self) -> Client {
        let mut c = self.connect().await;
        assert_eq!(
            c.cmd(&format!("USER {USER}")).await,
            "+OK Send your password"
        );
        let r = c.cmd(&format!("PASS {PASSWORD}")).await;
        assert!(r.starts_with("+OK Logged in"), "{r}");
        c
    }
}

struct Client {
    r: BufReader<ReadHalf<DuplexStream>>,
    w: WriteHalf<DuplexStream>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Client {
    async fn send(&mut self, raw: &str) {
        self.w.write_all(raw.as_bytes()).await.expect("write");
    }

    async fn line(&mut self) -> String {
        let mut s = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut s))
            .await
            .expect("reply within 10 s")
            .expect("read");
        s.trim_end_matches("\r\n").to_string()
    }

    async fn cmd(&mut self, c: &str) -> String {
        self.send(&format!("{c}\r\n")).await;
        self.line().await
    }

    /// The lines of a multi-line body, un-stuffed, without the terminating dot.
    async fn body(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            if l == "." {
                return out;
            }
            out.push(l.strip_prefix('.').map(str::to_string).unwrap_or(l));
        }
    }

    async fn closed(&mut self) -> bool {
        let mut s = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut s)).await,
            Ok(Ok(0))
        )
    }
}

const MSG1: &str = "Subject: one\r\nFrom: a@example.test\r\n\r\nfirst body\r\n.leading dot\r\n";
const MSG2: &str = "Subject: two\r\n\r\nl1\r\nl2\r\nl3\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_login_is_refused_before_tls() {
    let h = harness(false).await;
    let mut c = h.connect().await;
    assert_eq!(c.cmd("CAPA").await, "+OK Capability list follows");
    let caps = c.body().await;
    assert!(caps.contains(&"UIDL".to_string()), "{caps:?}");
    assert!(
        !caps.iter().any(|c| c == "USER" || c.starts_with("SASL")),
        "{caps:?}"
    );
    assert!(c
        .cmd(&format!("USER {USER}"))
        .await
        .starts_with("-ERR [AUTH] Plaintext"));
    assert!(c
        .cmd("AUTH PLAIN AGFAYg==")
        .await
        .starts_with("-ERR [AUTH] Plaintext"));
    assert_eq!(c.cmd("STLS").await, "-ERR TLS not available");
    assert_eq!(c.cmd("STAT").await, "-ERR Not authenticated");
    assert_eq!(c.cmd("QUIT").await, "+OK Mailfleet POP3 server signing off");
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieve_list_uidl_top_and_rset() {
    let h = harness(true).await;
    let u1 = h.deliver(MSG1).await;
    let u2 = h.deliver(MSG2).await;
    let validity = h.uid_validity().await;
    let mut c = h.login().await;
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK 2 {}", MSG1.len() + MSG2.len())
    );
    assert!(c.cmd("LIST").await.starts_with("+OK 2 messages"));
    assert_eq!(
        c.body().await,
        [format!("1 {}", MSG1.len()), format!("2 {}", MSG2.len())]
    );
    assert_eq!(c.cmd("LIST 2").await, format!("+OK 2 {}", MSG2.len()));
    assert_eq!(c.cmd("LIST 3").await, "-ERR No such message");
    assert!(c.cmd("UIDL").await.starts_with("+OK"));
    assert_eq!(
        c.body().await,
        [
            format!("1 {validity}.{}", u1.0),
            format!("2 {validity}.{}", u2.0)
        ],
        "UIDL is <uidvalidity>.<uid>, as IMAP sees the message"
    );
    assert_eq!(c.cmd("UIDL 1").await, format!("+OK 1 {validity}.{}", u1.0));
    assert_eq!(c.cmd("RETR 1").await, format!("+OK {} octets", MSG1.len()));
    let body = c.body().await.join("\r\n") + "\r\n";
    assert_eq!(body, MSG1, "dot-stuffing round-trips");
    assert!(c.cmd("TOP 2 1").await.starts_with("+OK"));
    assert_eq!(c.body().await, ["Subject: two", "", "l1"]);
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted");
    assert_eq!(c.cmd("DELE 1").await, "-ERR Message is deleted");
    assert_eq!(c.cmd("RETR 1").await, "-ERR Message is deleted");
    assert_eq!(c.cmd("STAT").await, format!("+OK 1 {}", MSG2.len()));
    assert!(c
        .cmd("RSET")
        .await
        .starts_with("+OK Maildrop has 2 messages"));
    assert_eq!(c.cmd("NOOP").await, "+OK");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert!(c.closed().await);
    assert_eq!(h.inbox_uids().await, [u1.0, u2.0], "RSET undid the DELE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dele_then_quit_expunges_and_notifies() {
    let h = harness(true).await;
    let u1 = h.deliver(MSG1).await;
    let u2 = h.deliver(MSG2).await;
    let account = h
        .stores
        .meta
        .get_account(USER)
        .await
        .expect("get")
        .expect("alice");
    let mut events = h
        .stores
        .coord
        .subscribe(account.id)
        .await
        .expect("subscribe");
    let mut c = h.login().await;
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert_eq!(
        c.cmd("QUIT").await,
        "+OK Mailfleet POP3 server signing off (1 messages left)"
    );
    assert!(c.closed().await);
    assert_eq!(h.inbox_uids().await, [u2.0]);
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("event published")
        .expect("event");
    assert!(
        matches!(event, MailboxEvent::Changed { account: a, .. } if a == account.id),
        "{event:?}"
    );
    // The next session sees one message and the lock is free.
    let mut c = h.login().await;
    assert_eq!(c.cmd("STAT").await, format!("+OK 1 {}", MSG2.len()));
    let _ = u1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_session_deletes_nothing_and_frees_the_lock() {
    let h = harness(true).await;
    let u1 = h.deliver(MSG1).await;
    let mut c = h.login().await;
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    // A second session meanwhile is refused: one session per maildrop.
    let mut other = h.connect().await;
    other.cmd(&format!("USER {USER}")).await;
    assert_eq!(
        other.cmd(&format!("PASS {PASSWORD}")).await,
        "-ERR [IN-USE] Maildrop is locked by another POP3 session"
    );
    // The client vanishes without QUIT.
    c.w.shutdown().await.expect("close");
    c.task.await.expect("join").expect("session");
    assert_eq!(h.inbox_uids().await, [u1.0], "nothing deleted without QUIT");
    // The lock was released when the session ended: no need to wait for the TTL.
    other.cmd(&format!("USER {USER}")).await;
    assert!(other
        .cmd(&format!("PASS {PASSWORD}"))
        .await
        .starts_with("+OK Logged in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autologout_deletes_nothing() {
    let h = harness(true).await;
    let u1 = h.deliver(MSG1).await;
    let limits = ConnLimits {
        command_timeout: Duration::from_millis(800),
        ..h.limits
    };
    let mut c = h.connect_with(limits, Shutdown::never());
    c.line().await;
    c.cmd(&format!("USER {USER}")).await;
    assert!(c.cmd(&format!("PASS {PASSWORD}")).await.starts_with("+OK"));
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert_eq!(c.line().await, "-ERR Autologout; idle for too long");
    assert!(c.closed().await);
    assert_eq!(h.inbox_uids().await, [u1.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_idle_sessions_without_update() {
    let h = harness(true).await;
    let u1 = h.deliver(MSG1).await;
    let (controller, shutdown) = ShutdownController::new();
    let mut c = h.connect_with(h.limits, shutdown);
    c.line().await;
    c.cmd(&format!("USER {USER}")).await;
    assert!(c.cmd(&format!("PASS {PASSWORD}")).await.starts_with("+OK"));
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    controller.trigger();
    assert!(c
        .line()
        .await
        .starts_with("-ERR [SYS/TEMP] Server shutting down"));
    assert!(c.closed().await);
    assert_eq!(h.inbox_uids().await, [u1.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plain_and_login() {
    use mailfleet_auth::sasl::encode_base64;
    let h = harness(true).await;
    let mut c = h.connect().await;
    assert!(c.cmd("AUTH").await.starts_with("+OK"));
    assert_eq!(c.body().await, ["PLAIN", "LOGIN"]);
    assert_eq!(
        c.cmd("AUTH CRAM-MD5").await,
        "-ERR Unsupported authentication mechanism"
    );
    // Cancelled exchange.
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("*").await, "-ERR Authentication cancelled");
    // PLAIN with the response on the next line.
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    let r = c
        .cmd(&encode_base64(format!("\0{USER}\0{PASSWORD}").as_bytes()))
        .await;
    assert!(r.starts_with("+OK Logged in"), "{r}");
    c.cmd("QUIT").await;

    // PLAIN with an initial response.
    let mut c = h.connect().await;
    let initial = encode_base64(format!("{USER}\0{USER}\0{PASSWORD}").as_bytes());
    assert!(c
        .cmd(&format!("AUTH PLAIN {initial}"))
        .await
        .starts_with("+OK Logged in"));
    c.cmd("QUIT").await;

    // LOGIN.
    let mut c = h.connect().await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "+ VXNlcm5hbWU6");
    assert_eq!(
        c.cmd(&encode_base64(USER.as_bytes())).await,
        "+ UGFzc3dvcmQ6"
    );
    assert!(c
        .cmd(&encode_base64(PASSWORD.as_bytes()))
        .await
        .starts_with("+OK Logged in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_close_the_connection_after_the_limit() {
    let h = harness(true).await;
    let mut c = h.connect().await;
    for _ in 0..3 {
        c.cmd(&format!("USER {USER}")).await;
        assert_eq!(
            c.cmd("PASS wrong-password").await,
            "-ERR [AUTH] Authentication failed"
        );
    }
    assert!(
        c.closed().await,
        "closed after auth.max_attempts_per_connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_long_lines_and_pipelining() {
    let h = harness(true).await;
    h.deliver(MSG1).await;
    h.deliver(MSG2).await;
    let mut c = h.login().await;
    let long = "X".repeat(100_000);
    assert_eq!(c.cmd(&long).await, "-ERR Line too long");
    assert_eq!(c.cmd("RETR 999").await, "-ERR No such message");
    // Pipelined commands are answered in order (RFC 2449 PIPELINING).
    c.send("STAT\r\nLIST 1\r\nUIDL 2\r\nNOOP\r\n").await;
    assert!(c.line().await.starts_with("+OK 2 "));
    assert!(c.line().await.starts_with("+OK 1 "));
    assert!(c.line().await.starts_with("+OK 2 "));
    assert_eq!(c.line().await, "+OK");
    // Bad commands count; at max_errors (5) the connection closes.
    assert_eq!(c.cmd("BOGUS").await, "-ERR Unknown command");
    assert_eq!(
        c.cmd("\u{1}\u{2}").await,
        "-ERR control characters in command"
    );
    assert_eq!(
        c.cmd("STAT x").await,
        "-ERR Too many errors, closing connection"
    );
    assert!(c.closed().await);
}
