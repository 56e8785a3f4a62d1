//! The world the session targets run in: a fresh embedded store per input (one hosted
//! domain, two accounts, a few messages in alice's INBOX, an alias), the real
//! authenticator, and a driver that plays the input as one client's byte stream over an
//! in-memory pipe and returns every byte the server sent.
//!
//! Each input gets its own store so inputs cannot influence each other and a replay is
//! deterministic. The accounts' password hashes are argon2id with the smallest parameters
//! (8 KiB, one pass): the verifier reads the parameters from the stored hash, so a login
//! costs microseconds instead of the production ~15 ms, and a corpus of login-heavy inputs
//! replays in seconds. Nothing else differs from production.

use mailfleet_auth::{AuthPolicy, Authenticator};
use mailfleet_core::config::AuthConfig;
use mailfleet_storage::metadata::QuotaPolicy;
use mailfleet_storage::{Flags, NewMessage, Stores};
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The password of every harness account; corpus inputs log in with it.
pub const PASSWORD: &str = "fuzz-pass";
/// How long a session may take to end after the client has sent everything and closed.
const END_WITHIN: Duration = Duration::from_secs(30);

/// The store and authenticator one input runs against.
pub struct World {
    _dir: tempfile::TempDir,
    pub stores: Stores,
    pub auth: Authenticator,
}

impl World {
    /// How many messages alice's INBOX holds now.
    pub async fn inbox_count(&self) -> usize {
        let alice = must(
            self.stores.meta.get_account("alice@example.test").await,
            "get",
        )
        .unwrap_or_else(|| panic!("harness: no alice"));
        let inbox = must(self.stores.meta.get_mailbox(alice.id, "INBOX").await, "get")
            .unwrap_or_else(|| panic!("harness: no INBOX"));
        must(
            self.stores
                .meta
                .list_messages(inbox.id, mailfleet_storage::Uid(0), usize::MAX)
                .await,
            "list",
        )
        .len()
    }
}

/// A cheap argon2id hash of [`PASSWORD`] (see the module comment for why).
fn cheap_hash() -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None)
        .unwrap_or_else(|e| panic!("harness: argon2 params: {e}"));
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"mailfleet-fuzz-salt")
        .unwrap_or_else(|e| panic!("harness: salt: {e}"));
    argon
        .hash_password(PASSWORD.as_bytes(), &salt)
        .unwrap_or_else(|e| panic!("harness: hash: {e}"))
        .to_string()
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("harness: {what}: {e}"))
}

/// A fresh world: `example.test` with alice (three messages in INBOX, one `\Seen`, one
/// multipart) and bob, and `sales@example.test` aliased to alice.
pub async fn world() -> World {
    let dir = must(tempfile::tempdir(), "tempdir");
    let stores = must(mailfleet_storage::embedded::open(dir.path(), 16), "store");
    must(stores.meta.create_domain("example.test").await, "domain");
    let hash = cheap_hash();
    let alice = must(
        stores
            .meta
            .create_account("alice@example.test", &hash, 0)
            .await,
        "account",
    );
    must(
        stores
            .meta
            .create_account("bob@example.test", &hash, 0)
            .await,
        "account",
    );
    must(
        stores
            .meta
            .create_alias("sales@example.test", "alice@example.test")
            .await,
        "alias",
    );
    let inbox = must(stores.meta.get_mailbox(alice.id, "INBOX").await, "inbox")
        .unwrap_or_else(|| panic!("harness: no INBOX"));
    let messages: [&[u8]; 3] = [
        b"From: a@remote.test\r\nTo: alice@example.test\r\nSubject: one\r\nDate: Mon, 2 Nov 2026 10:00:00 +0100\r\n\r\nbody one\r\n.\r\n..dot\r\n",
        b"From: \"B\" <b@remote.test>\r\nTo: alice@example.test\r\nSubject: =?utf-8?q?two_=C3=A9?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=xx\r\n\r\n--xx\r\nContent-Type: text/plain\r\n\r\nhello\r\n--xx\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ=\r\n--xx--\r\n",
        b"Subject: three\r\n\r\nno From, bare\nLF\r\n",
    ];
    for (i, raw) in messages.iter().enumerate() {
        let blob = must(
            stores.blobs.put(bytes::Bytes::copy_from_slice(raw)).await,
            "blob",
        );
        let flags = if i == 0 {
            Flags::new(["\\Seen"])
        } else {
            Flags::default()
        };
        must(
            stores
                .meta
                .append(
                    vec![NewMessage {
                        account: alice.id,
                        mailbox: inbox.id,
                        blob,
                        size: raw.len() as u64,
                        internal_date: 1_790_000_000 + i as i64,
                        flags,
                        summary: None,
                        refs: Default::default(),
                        trace: None,
                    }],
                    QuotaPolicy::Enforce,
                )
                .await,
            "append",
        );
    }
    let auth = Authenticator::new(
        stores.clone(),
        AuthPolicy::from_config(&AuthConfig {
            delay_base_ms: 0,
            ..AuthConfig::default()
        }),
    );
    World {
        _dir: dir,
        stores,
        auth,
    }
}

/// Runs `build` in a fresh current-thread runtime with a fresh [`World`]: it gets the
/// server end of a pipe and returns the connection future; the input is written as the
/// client and the client's write side closed. Returns everything the server sent. Panics
/// (fails the target) when the session does not end after the client closed, or when the
/// connection task panics. With `MAILFLEET_FUZZ_TRACE` set, the server's output is
/// printed to stderr (for `bin/replay` when reading what a session answered).
pub fn converse<F, Fut>(input: &[u8], build: F) -> Vec<u8>
where
    F: FnOnce(&World, DuplexStream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    converse_then(input, build, |_| async {}).0
}

/// [`converse`], then `after` looks at the world the session left behind (what a target
/// checks in the store, such as "nothing was deleted without QUIT").
pub fn converse_then<F, Fut, A, AFut, R>(input: &[u8], build: F, after: A) -> (Vec<u8>, R)
where
    F: FnOnce(&World, DuplexStream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    A: FnOnce(World) -> AFut,
    AFut: Future<Output = R>,
{
    let rt = must(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        "runtime",
    );
    rt.block_on(async {
        let world = world().await;
        let (client, server) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(build(&world, server));
        let (mut r, mut w) = tokio::io::split(client);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            // The server may close first (LOGOUT, QUIT, too many errors): a failed write
            // is normal.
            let _ = w.write_all(&input).await;
            let _ = w.shutdown().await;
        });
        let mut out = Vec::new();
        let read = tokio::time::timeout(END_WITHIN, r.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "the session did not end after the client closed"
        );
        let _ = writer.await;
        match task.await {
            Ok(_) => {}
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("session task failed: {e}"),
        }
        if std::env::var_os("MAILFLEET_FUZZ_TRACE").is_some() {
            eprintln!("--- server sent:\n{}", String::from_utf8_lossy(&out));
        }
        let r = after(world).await;
        (out, r)
    })
}
