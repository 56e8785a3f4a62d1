//! A refresh of the selected mailbox that fails part-way (issue 9 item 16) must leave the
//! session's view exactly as the client knows it. The store is wrapped so a chosen call
//! fails; everything else goes to the real embedded store.

use async_trait::async_trait;
use mailfleet_core::shutdown::Shutdown;
use mailfleet_imap::{serve_connection, ConnLimits, ImapConfig, LoginError, LoginService, Session};
use mailfleet_storage::fault::FailingMeta;
use mailfleet_storage::metadata::QuotaPolicy;
use mailfleet_storage::*;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Accepts any password for an existing account: login is not what is tested here.
struct AnyPassword(Arc<dyn MetadataStore>);

#[async_trait]
impl LoginService for AnyPassword {
    async fn login(&self, user: &str, _pass: &str, _ip: IpAddr) -> Result<Account, LoginError> {
        self.0
            .get_account(user)
            .await
            .map_err(|_| LoginError::Unavailable)?
            .ok_or(LoginError::Invalid)
    }
}

async fn append(stores: &Stores, account: AccountId, mailbox: MailboxId, i: u32) {
    let raw = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
    let blob = stores
        .blobs
        .put(bytes::Bytes::from(raw.clone()))
        .await
        .expect("blob");
    stores
        .meta
        .append(
            vec![NewMessage {
                account,
                mailbox,
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

async fn lines_until(io: &mut DuplexStream, buf: &mut Vec<u8>, tag: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        while let Some(p) = buf.iter().position(|b| *b == b'\n') {
            let l: Vec<u8> = buf.drain(..=p).collect();
            let l = String::from_utf8_lossy(&l).trim_end().to_string();
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                return out;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed; got {out:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_fails_part_way_leaves_the_view_as_the_client_knows_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let real = mailfleet_storage::embedded::open(dir.path(), 64).expect("stores");
    let failing = FailingMeta::new(real.meta.clone());
    let stores = Stores::new(real.blobs.clone(), failing.clone(), real.coord.clone());
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
    for i in 1..=3 {
        append(&stores, acct.id, inbox.id, i).await;
    }
    let (mut io, server) = tokio::io::duplex(1 << 16);
    let cfg = Arc::new(ImapConfig {
        hostname: "mx.example.test".into(),
        starttls: false,
        plaintext_auth_without_tls: true,
        max_message_size: 4096,
        max_failed_logins: 3,
        idle_timeout: Duration::from_secs(1800),
        user_sessions: mailfleet_imap::UserSessions::new(2),
        views: mailfleet_imap::SharedViews::new(),
        junk_training: None,
    });
    let session = Session::new(
        cfg,
        stores.clone(),
        Arc::new(AnyPassword(stores.meta.clone())),
        "192.0.2.9".parse().expect("ip"),
        false,
    );
    let limits = ConnLimits {
        max_literal: 4096,
        max_command: 4096 + 8192,
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
    let mut buf = Vec::new();
    io.write_all(b"a LOGIN alice@example.test x\r\nb SELECT INBOX\r\n")
        .await
        .expect("write");
    let r = lines_until(&mut io, &mut buf, "b").await;
    assert!(r.contains(&"* 3 EXISTS".to_string()), "{r:?}");

    // Two messages arrive; reading the second fails during the refresh.
    append(&stores, acct.id, inbox.id, 4).await;
    append(&stores, acct.id, inbox.id, 5).await;
    failing.arm("get_message", 2);
    io.write_all(b"c NOOP\r\n").await.expect("write");
    let r = lines_until(&mut io, &mut buf, "c").await;
    assert!(r.last().expect("line").starts_with("c NO"), "{r:?}");
    assert!(!r.iter().any(|l| l.ends_with("EXISTS")), "{r:?}");

    // The client was told of 3 messages: message 4 must not exist for it yet.
    io.write_all(b"d FETCH 4 (UID)\r\n").await.expect("write");
    let r = lines_until(&mut io, &mut buf, "d").await;
    assert!(r.last().expect("line").starts_with("d BAD"), "{r:?}");

    // The next refresh reports both.
    io.write_all(b"e NOOP\r\n").await.expect("write");
    let r = lines_until(&mut io, &mut buf, "e").await;
    assert!(r.contains(&"* 5 EXISTS".to_string()), "{r:?}");
    io.write_all(b"f FETCH 4:5 (UID)\r\n").await.expect("write");
    let r = lines_until(&mut io, &mut buf, "f").await.join("\n");
    assert!(
        r.contains("* 4 FETCH (UID 4)") && r.contains("* 5 FETCH (UID 5)"),
        "{r}"
    );
}
