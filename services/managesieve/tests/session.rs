//! Black-box ManageSieve sessions over an in-memory pipe, against the real embedded
//! stores, the real authenticator and the real Sieve compiler.

use mailfleet_auth::sasl::encode_base64;
use mailfleet_auth::{AuthPolicy, Authenticator};
use mailfleet_core::config::AuthConfig;
use mailfleet_core::credentials::hash_password;
use mailfleet_core::shutdown::{Shutdown, ShutdownController};
use mailfleet_managesieve::{serve_connection, ConnLimits, Session, SessionConfig};
use mailfleet_storage::{sieve_scripts, DataScope, Stores};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf,
};

const PASSWORD: &str = "Corr3ct-Horse-Battery";
const USER: &str = "alice@example.test";
const VALID: &str = "require \"fileinto\";\r\nif header :contains \"subject\" \"[list]\" {\r\n  fileinto \"Lists\";\r\n}\r\n";
const INVALID: &str = "require \"fileinto\";\r\nkeep;\r\nfrobnicate \"x\";\r\n";

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
            hostname: "sieve.example.test".into(),
            starttls: true,
            allow_plaintext_auth: allow_plaintext,
            max_errors: 5,
            max_script_size: 4096,
        }),
        limits: ConnLimits {
            max_line: 1024,
            command_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(5),
        },
    }
}

impl Harness {
    fn connect_with(&self, limits: ConnLimits, shutdown: Shutdown) -> Client {
        let (client, server) = tokio::io::duplex(1 << 20);
        let session = Session::new(
            self.cfg.clone(),
            self.stores.clone(),
            self.auth.clone(),
            "192.0.2.20".parse().expect("ip"),
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
            _task: task,
        }
    }

    /// Connected, greeting read (capability lines returned).
    async fn connect(&self) -> (Client, Vec<String>) {
        let mut c = self.connect_with(self.limits, Shutdown::never());
        let (caps, ok) = c.until_status().await;
        assert!(ok.starts_with("OK "), "{ok}");
        (c, caps)
    }

    async fn login(&self) -> Client {
        let (mut c, _) = self.connect().await;
        let creds = encode_base64(format!("\0{USER}\0{PASSWORD}").as_bytes());
        let r = c.cmd(&format!("AUTHENTICATE \"PLAIN\" \"{creds}\"")).await;
        assert_eq!(r, "OK \"Logged in\"");
        c
    }

    async fn scripts(&self) -> Vec<sieve_scripts::Script> {
        let account = self
            .stores
            .meta
            .get_account(USER)
            .await
            .expect("get")
            .expect("alice");
        sieve_scripts::list(self.stores.meta.as_ref(), DataScope::Account(account.id))
            .await
            .expect("list")
    }
}

struct Client {
    r: BufReader<ReadHalf<DuplexStream>>,
    w: WriteHalf<DuplexStream>,
    _task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Client {
    async fn send(&mut self, raw: &[u8]) {
        self.w.write_all(raw).await.expect("write");
    }

    async fn line(&mut self) -> String {
        let mut s = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut s))
            .await
            .expect("reply within 10 s")
            .expect("read");
        s.trim_end_matches("\r\n").to_string()
    }

    async fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(10), self.r.read_exact(&mut v))
            .await
            .expect("within 10 s")
            .expect("read");
        v
    }

    async fn cmd(&mut self, c: &str) -> String {
        self.send(format!("{c}\r\n").as_bytes()).await;
        self.line().await
    }

    /// Lines up to and including the OK/NO/BYE that ends a response.
    async fn until_status(&mut self) -> (Vec<String>, String) {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await;
            if l.starts_with("OK") || l.starts_with("NO") || l.starts_with("BYE") {
                return (lines, l);
            }
            lines.push(l);
        }
    }

    async fn put(&mut self, name: &str, script: &str) -> String {
        self.cmd(&format!(
            "PUTSCRIPT \"{name}\" {{{}+}}\r\n{script}",
            script.len()
        ))
        .await
    }

    async fn closed(&mut self) -> bool {
        let mut s = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut s)).await,
            Ok(Ok(0))
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_plaintext_policy() {
    let h = harness(false).await;
    let (mut c, caps) = h.connect().await;
    assert!(
        caps.contains(&"\"IMPLEMENTATION\" \"Mailfleet\"".to_string()),
        "{caps:?}"
    );
    assert!(caps.contains(&"\"SASL\" \"\"".to_string()), "{caps:?}");
    assert!(caps.contains(&"\"STARTTLS\"".to_string()), "{caps:?}");
    assert!(
        caps.contains(&"\"VERSION\" \"1.0\"".to_string()),
        "{caps:?}"
    );
    assert!(
        caps.iter().any(|l| l.starts_with("\"MAXREDIRECTS\" \"")),
        "{caps:?}"
    );
    assert!(
        !caps.iter().any(|l| l.starts_with("\"NOTIFY\"")),
        "{caps:?}"
    );
    let sieve = caps
        .iter()
        .find(|l| l.starts_with("\"SIEVE\" "))
        .expect("SIEVE");
    for ext in mailfleet_sieve::CAPABILITIES {
        assert!(sieve.contains(ext), "{sieve} lacks {ext}");
    }
    let creds = encode_base64(format!("\0{USER}\0{PASSWORD}").as_bytes());
    let r = c.cmd(&format!("AUTHENTICATE \"PLAIN\" \"{creds}\"")).await;
    assert!(r.starts_with("NO (ENCRYPT-NEEDED)"), "{r}");
    let r = c.cmd("LISTSCRIPTS").await;
    assert_eq!(r, "NO \"Authenticate first\"");
    // STARTTLS without an acceptor: OK, then the driver gives up the connection.
    let r = c.cmd("STARTTLS").await;
    assert!(r.starts_with("OK"), "{r}");
    assert!(c.closed().await);

    let h = harness(true).await;
    let (_c, caps) = h.connect().await;
    assert!(
        caps.contains(&"\"SASL\" \"PLAIN LOGIN\"".to_string()),
        "{caps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_lifecycle() {
    let h = harness(true).await;
    let mut c = h.login().await;
    let (caps, ok) = {
        c.send(b"CAPABILITY\r\n").await;
        c.until_status().await
    };
    assert!(ok.starts_with("OK"), "{ok}");
    assert!(caps.contains(&format!("\"OWNER\" \"{USER}\"")), "{caps:?}");
    assert!(caps.contains(&"\"SASL\" \"\"".to_string()), "{caps:?}");

    assert_eq!(c.put("main", VALID).await, "OK \"Putscript completed\"");
    let r = c.put("broken", INVALID).await;
    assert!(r.starts_with("NO \"line 3: "), "{r}");
    let r = c
        .cmd(&format!("CHECKSCRIPT {{{}+}}\r\n{INVALID}", INVALID.len()))
        .await;
    assert!(r.starts_with("NO \"line 3: "), "{r}");
    let r = c
        .cmd(&format!("CHECKSCRIPT {{{}+}}\r\n{VALID}", VALID.len()))
        .await;
    assert_eq!(r, "OK \"Script is valid\"");
    assert_eq!(
        c.put("other", "keep;\r\n").await,
        "OK \"Putscript completed\""
    );

    c.send(b"LISTSCRIPTS\r\n").await;
    let (list, ok) = c.until_status().await;
    assert!(ok.starts_with("OK"));
    assert_eq!(list, vec!["\"main\"", "\"other\""]);

    assert_eq!(
        c.cmd("SETACTIVE \"main\"").await,
        "OK \"Setactive completed\""
    );
    let r = c.cmd("SETACTIVE \"nope\"").await;
    assert!(r.starts_with("NO (NONEXISTENT)"), "{r}");
    c.send(b"LISTSCRIPTS\r\n").await;
    let (list, _) = c.until_status().await;
    assert_eq!(list, vec!["\"main\" ACTIVE", "\"other\""]);

    // GETSCRIPT: a literal, byte for byte what was put.
    assert_eq!(
        c.cmd("GETSCRIPT \"main\"").await,
        format!("{{{}}}", VALID.len())
    );
    assert_eq!(c.bytes(VALID.len()).await, VALID.as_bytes());
    assert_eq!(c.line().await, "");
    assert_eq!(c.line().await, "OK \"Getscript completed\"");
    let r = c.cmd("GETSCRIPT \"nope\"").await;
    assert!(r.starts_with("NO (NONEXISTENT)"), "{r}");

    let r = c.cmd("DELETESCRIPT \"main\"").await;
    assert!(r.starts_with("NO (ACTIVE)"), "{r}");
    let r = c.cmd("RENAMESCRIPT \"main\" \"other\"").await;
    assert!(r.starts_with("NO (ALREADYEXISTS)"), "{r}");
    let r = c.cmd("RENAMESCRIPT \"nope\" \"x\"").await;
    assert!(r.starts_with("NO (NONEXISTENT)"), "{r}");
    assert_eq!(
        c.cmd("RENAMESCRIPT \"main\" \"filters\"").await,
        "OK \"Renamescript completed\""
    );
    let stored = h.scripts().await;
    let active: Vec<&str> = stored
        .iter()
        .filter(|s| s.active)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        active,
        vec!["filters"],
        "the rename keeps the script active"
    );

    assert_eq!(c.cmd("SETACTIVE \"\"").await, "OK \"No script is active\"");
    assert_eq!(
        c.cmd("DELETESCRIPT \"filters\"").await,
        "OK \"Deletescript completed\""
    );
    let r = c.cmd("DELETESCRIPT \"filters\"").await;
    assert!(r.starts_with("NO (NONEXISTENT)"), "{r}");
    let names: Vec<String> = h.scripts().await.into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["other"]);

    assert_eq!(c.cmd("NOOP \"t-1\"").await, "OK (TAG \"t-1\") \"Done\"");
    assert_eq!(c.cmd("LOGOUT").await, "OK \"Logout completed\"");
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_count_limits() {
    let h = harness(true).await;
    let mut c = h.login().await;
    assert_eq!(
        c.cmd("HAVESPACE \"s\" 4096").await,
        "OK \"Putscript would succeed\""
    );
    let r = c.cmd("HAVESPACE \"s\" 4097").await;
    assert!(r.starts_with("NO (QUOTA/MAXSIZE)"), "{r}");
    let r = c.cmd("HAVESPACE \"bad/name\" 10").await;
    assert!(r.starts_with("NO "), "{r}");
    // A literal over the script limit is skipped, and the session goes on.
    let big = format!("# {}\r\nkeep;\r\n", "x".repeat(5000));
    let r = c.put("big", &big).await;
    assert!(r.starts_with("NO (QUOTA/MAXSIZE)"), "{r}");
    assert_eq!(c.cmd("NOOP").await, "OK \"Done\"");
    for i in 0..sieve_scripts::MAX_SCRIPTS {
        assert_eq!(
            c.put(&format!("s{i}"), "keep;").await,
            "OK \"Putscript completed\""
        );
    }
    let r = c.put("one-too-many", "keep;").await;
    assert!(r.starts_with("NO (QUOTA/MAXSCRIPTS)"), "{r}");
    let r = c.cmd("HAVESPACE \"one-too-many\" 10").await;
    assert!(r.starts_with("NO (QUOTA/MAXSCRIPTS)"), "{r}");
    // Replacing an existing script is not a new one.
    assert_eq!(c.put("s0", "discard;").await, "OK \"Putscript completed\"");
    assert_eq!(
        c.cmd("HAVESPACE \"s0\" 10").await,
        "OK \"Putscript would succeed\""
    );
    // A script that is not UTF-8.
    c.send(b"PUTSCRIPT \"s1\" {2+}\r\n\xff\xfe\r\n").await;
    assert_eq!(c.line().await, "NO \"Script is not valid UTF-8\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_continuations_cancel_and_unauthenticate() {
    let h = harness(true).await;
    let (mut c, _) = h.connect().await;
    // PLAIN without an initial response: an empty challenge, then a literal response.
    assert_eq!(c.cmd("AUTHENTICATE \"PLAIN\"").await, "\"\"");
    let creds = encode_base64(format!("\0{USER}\0{PASSWORD}").as_bytes());
    let r = c.cmd(&format!("{{{}+}}\r\n{creds}", creds.len())).await;
    assert_eq!(r, "OK \"Logged in\"");
    assert_eq!(
        c.cmd("UNAUTHENTICATE").await,
        "OK \"Unauthenticate completed\""
    );
    assert_eq!(c.cmd("LISTSCRIPTS").await, "NO \"Authenticate first\"");
    // LOGIN, two challenges.
    assert_eq!(c.cmd("AUTHENTICATE \"LOGIN\"").await, "\"VXNlcm5hbWU6\"");
    assert_eq!(
        c.cmd(&format!("\"{}\"", encode_base64(USER.as_bytes())))
            .await,
        "\"UGFzc3dvcmQ6\""
    );
    let r = c
        .cmd(&format!("\"{}\"", encode_base64(PASSWORD.as_bytes())))
        .await;
    assert_eq!(r, "OK \"Logged in\"");
    assert_eq!(
        c.cmd("UNAUTHENTICATE").await,
        "OK \"Unauthenticate completed\""
    );
    // Cancelled with "*".
    assert_eq!(c.cmd("AUTHENTICATE \"PLAIN\"").await, "\"\"");
    assert_eq!(c.cmd("\"*\"").await, "NO \"Authentication cancelled\"");
    let r = c.cmd("AUTHENTICATE \"CRAM-MD5\"").await;
    assert_eq!(r, "NO \"Unsupported SASL mechanism\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_close_the_connection() {
    let h = harness(true).await;
    let (mut c, _) = h.connect().await;
    let bad = encode_base64(format!("\0{USER}\0wrong-password").as_bytes());
    let attempts = h.auth.policy().max_attempts_per_connection;
    for _ in 1..attempts {
        let r = c.cmd(&format!("AUTHENTICATE \"PLAIN\" \"{bad}\"")).await;
        assert_eq!(r, "NO \"Authentication failed\"");
    }
    let r = c.cmd(&format!("AUTHENTICATE \"PLAIN\" \"{bad}\"")).await;
    assert_eq!(r, "NO \"Authentication failed\"");
    assert!(c.line().await.starts_with("BYE "));
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_long_lines_timeout_and_shutdown() {
    let h = harness(true).await;
    let (mut c, _) = h.connect().await;
    assert_eq!(c.cmd("XYZZY").await, "NO \"Unknown command\"");
    let long = format!("NOOP \"{}\"", "a".repeat(2000));
    assert_eq!(c.cmd(&long).await, "NO \"Line too long\"");
    // An empty line is no command and gets no answer.
    c.send(b"\r\n").await;
    assert_eq!(c.cmd("NOOP").await, "OK \"Done\"");
    assert!(c.cmd("GETSCRIPT").await.starts_with("NO "));
    assert!(c.cmd("LOGOUT now").await.starts_with("NO "));
    assert!(c.cmd("NOOP (").await.starts_with("NO "));
    let r = c.line().await;
    assert!(r.starts_with("BYE "), "the fifth error closes: {r}");
    assert!(c.closed().await);

    let mut c = h.connect_with(
        ConnLimits {
            command_timeout: Duration::from_millis(300),
            ..h.limits
        },
        Shutdown::never(),
    );
    let (_, ok) = c.until_status().await;
    assert!(ok.starts_with("OK"));
    c.send(b"NOOP").await;
    assert_eq!(c.line().await, "BYE \"Idle for too long\"");
    assert!(c.closed().await);

    let (controller, shutdown) = ShutdownController::new();
    let mut c = h.connect_with(h.limits, shutdown);
    let (_, ok) = c.until_status().await;
    assert!(ok.starts_with("OK"));
    controller.trigger();
    let r = c.line().await;
    assert!(r.starts_with("BYE (TRYLATER)"), "{r}");
    assert!(c.closed().await);
}

/// The login rules are IMAP's: app passwords work, suspended accounts and accounts without
/// IMAP are refused after a correct password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_login_rules() {
    let h = harness(true).await;
    let account = h
        .stores
        .meta
        .get_account(USER)
        .await
        .expect("get")
        .expect("alice");
    let (_, generated) =
        mailfleet_auth::app_password::create(h.stores.meta.as_ref(), account.id, "sieve", 0)
            .await
            .expect("app password");
    let plain = |password: &str| encode_base64(format!("\0{USER}\0{password}").as_bytes());

    let (mut c, _) = h.connect().await;
    let r = c
        .cmd(&format!(
            "AUTHENTICATE \"PLAIN\" \"{}\"",
            plain(&generated.password)
        ))
        .await;
    assert_eq!(r, "OK \"Logged in\"", "an app password opens the account");
    c.cmd("LOGOUT").await;

    let mut settings = account.settings.clone();
    settings.protocols.imap = false;
    h.stores
        .meta
        .set_account_settings(USER, &settings)
        .await
        .expect("settings");
    let (mut c, _) = h.connect().await;
    let r = c
        .cmd(&format!("AUTHENTICATE \"PLAIN\" \"{}\"", plain(PASSWORD)))
        .await;
    assert_eq!(
        r,
        "NO \"ManageSieve (IMAP) is not enabled for this account\""
    );

    settings.protocols.imap = true;
    settings.suspended = true;
    h.stores
        .meta
        .set_account_settings(USER, &settings)
        .await
        .expect("settings");
    let r = c
        .cmd(&format!("AUTHENTICATE \"PLAIN\" \"{}\"", plain(PASSWORD)))
        .await;
    assert_eq!(r, "NO \"Account is suspended\"");
}
