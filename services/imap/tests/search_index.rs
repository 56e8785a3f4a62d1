//! SEARCH answered from the full-text index gives exactly what the scan gives: the same
//! corpus (services/mime/tests/corpus) is stored twice, indexed in one store and left
//! unindexed (so every text key parses every message) in the other, and the same searches,
//! on every text key with strings taken from the messages themselves, in other case, with
//! NOT and OR, and shorter than the index answers, must get the same answers. Messages
//! with attachments (PDF, docx, xlsx, pptx, odt, text and HTML files, a PDF inside an
//! attached message) are added to the corpus, and BODY/TEXT are searched for strings of
//! the attachments' text too.

use async_trait::async_trait;
use mailfleet_core::shutdown::Shutdown;
use mailfleet_imap::{serve_connection, ConnLimits, ImapConfig, LoginError, LoginService, Session};
use mailfleet_mime::search_text::{field_texts, SearchField};
use mailfleet_storage::metadata::QuotaPolicy;
use mailfleet_storage::{Account, AccountId, Flags, MailboxId, MessageText, NewMessage, Stores};
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

    /// Stores `raw` in INBOX; with `index`, records its texts in the full-text index as
    /// delivery and APPEND do, without, leaves it pending (searched by parsing it).
    async fn deliver(&self, raw: &[u8], index: bool) {
        let blob = self
            .stores
            .blobs
            .put(bytes::Bytes::from(raw.to_vec()))
            .await
            .expect("blob");
        let appended = self
            .stores
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
        if index {
            let ix = mailfleet_mime::search_text::index_pieces(raw);
            self.stores
                .meta
                .index_text(
                    self.inbox,
                    vec![(
                        appended[0].uid,
                        MessageText::from_pairs(ix.pieces, ix.complete),
                    )],
                )
                .await
                .expect("index");
        }
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

fn corpus() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mime/tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect()
}

/// `s` as an IMAP literal (LITERAL+), so any string can be sent.
fn lit(s: &str) -> String {
    format!("{{{}+}}\r\n{s}", s.len())
}

/// Substrings of `text` to search for: a few lengths at a few places, on char boundaries.
fn needles_of(text: &str, out: &mut Vec<String>) {
    let chars: Vec<char> = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    for len in [1usize, 2, 3, 5, 12] {
        for start in [0, chars.len() / 3, chars.len().saturating_sub(len)] {
            if start + len <= chars.len() {
                let s: String = chars[start..start + len].iter().collect();
                if !s.trim().is_empty() && !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
}

/// Messages with attachments whose text BODY and TEXT find, built in code.
fn with_attachments() -> Vec<Vec<u8>> {
    use mailfleet_mime::samples;
    let pdf = samples::pdf(
        &["Quarterly figures for Zanzibar", "Pineapple exports rose"],
        true,
    );
    let plain_pdf = samples::pdf(&["Uncompressed page about Kilimanjaro"], false);
    let inner = samples::message_with_attachment(
        "inner",
        "the inner body",
        "application/pdf",
        "nested.pdf",
        &samples::pdf(&["Nested attachment mentions Okavango"], true),
    );
    let mut forwarded = b"From: Cy <cy@example.test>\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"o\"\r\n\r\n--o\r\nContent-Type: text/plain\r\n\r\n\
see attached\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n"
        .to_vec();
    forwarded.extend_from_slice(&inner);
    forwarded.extend_from_slice(b"\r\n--o--\r\n");
    vec![
        samples::message_with_attachment("pdf", "see the report", "application/pdf", "q.pdf", &pdf),
        samples::message_with_attachment(
            "pdf-plain",
            "another one",
            "application/octet-stream",
            "k.pdf",
            &plain_pdf,
        ),
        samples::message_with_attachment(
            "docx",
            "the contract",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "c.docx",
            &samples::docx(&["Lease agreement for Timbuktu", "Signed by both parties"]),
        ),
        samples::message_with_attachment(
            "xlsx",
            "the budget",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "b.xlsx",
            &samples::xlsx(&["Revenue Ulaanbaatar", "Costs"]),
        ),
        samples::message_with_attachment(
            "pptx",
            "the deck",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            "d.pptx",
            &samples::pptx("Roadmap for Valparaiso"),
        ),
        samples::message_with_attachment(
            "odt",
            "the minutes",
            "application/vnd.oasis.opendocument.text",
            "m.odt",
            &samples::odt(&["Minutes from Reykjavik", "Ünïcode line"]),
        ),
        samples::message_with_attachment(
            "csv",
            "the data",
            "text/csv",
            "d.csv",
            b"city,count\nMontevideo,12\n",
        ),
        samples::message_with_attachment(
            "html",
            "the page",
            "text/html",
            "p.html",
            b"<html><body><p>Visit <b>Ouagadougou</b> &amp; more</p></body></html>",
        ),
        samples::message_with_attachment(
            "garbage-pdf",
            "broken file",
            "application/pdf",
            "x.pdf",
            &pdf[..pdf.len() / 2],
        ),
        forwarded,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_search_answers_as_the_scan_does() {
    let indexed = Harness::new().await;
    let scanned = Harness::new().await;
    let mut messages = corpus();
    assert!(messages.len() > 50, "corpus found");
    messages.extend(with_attachments());
    for m in &messages {
        indexed.deliver(m, true).await;
        scanned.deliver(m, false).await;
    }
    // The index holds every message completely: its answers are used as they are.
    let probe = indexed
        .stores
        .meta
        .search_text(indexed.inbox, &["body".to_string()], "the")
        .await
        .expect("search_text")
        .expect("answerable");
    assert!(probe.unverified.is_empty(), "{probe:?}");
    assert!(!probe.matched.is_empty());

    // Search strings from the messages' own texts, per key.
    let keys: &[(&str, SearchField<'static>)] = &[
        ("SUBJECT", SearchField::Subject),
        ("FROM", SearchField::From),
        ("TO", SearchField::To),
        ("CC", SearchField::Cc),
        ("BCC", SearchField::Bcc),
        ("BODY", SearchField::Body),
        ("TEXT", SearchField::Header),
        ("HEADER Message-ID", SearchField::Field("Message-ID")),
        ("HEADER Content-Type", SearchField::Field("Content-Type")),
        ("BODY", SearchField::Attachments),
        ("TEXT", SearchField::Attachments),
    ];
    let parser = mail_parser::MessageParser::default();
    let mut commands: Vec<String> = Vec::new();
    for (key, field) in keys {
        let mut needles = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            // Every third message, to bound the run time (the scan parses all of them);
            // every message for attachments, which few messages have.
            if i % 3 != 0 && *field != SearchField::Attachments {
                continue;
            }
            let Some(p) = parser.parse(m.as_slice()) else {
                continue;
            };
            for t in field_texts(&p, m, *field).iter().take(3) {
                needles_of(t, &mut needles);
            }
        }
        needles.truncate(40);
        for n in &needles {
            commands.push(format!("{key} {}", lit(n)));
            commands.push(format!("{key} {}", lit(&n.to_uppercase())));
        }
        if let Some(n) = needles.iter().find(|n| n.chars().count() >= 5) {
            commands.push(format!("NOT {key} {}", lit(n)));
            commands.push(format!("OR {key} {} SUBJECT {}", lit(n), lit("zzzz-none")));
            commands.push(format!("{key} {} {key} {}", lit(n), lit("nomatch-xyz")));
        }
    }
    commands.push(format!("BODY {}", lit("")));
    commands.push(format!("HEADER X-Not-There {}", lit("")));
    commands.push(format!("BODY {}", lit("é")));
    let mut a = indexed.client().await;
    let mut b = scanned.client().await;
    a.ok("s SELECT INBOX").await;
    b.ok("s SELECT INBOX").await;
    let mut nonempty = 0;
    for (i, c) in commands.iter().enumerate() {
        let line = format!("t{i} UID SEARCH CHARSET UTF-8 {c}");
        let ra = a.cmd(&line).await;
        let rb = b.cmd(&line).await;
        let hits = |r: &[String]| -> String {
            r.iter()
                .find(|l| l.starts_with("* SEARCH"))
                .cloned()
                .unwrap_or_else(|| format!("no SEARCH response: {r:?}"))
        };
        assert_eq!(hits(&ra), hits(&rb), "{c}");
        assert!(
            ra.last()
                .is_some_and(|l| l.starts_with(&format!("t{i} OK"))),
            "{c}: {ra:?}"
        );
        if hits(&ra) != "* SEARCH" {
            nonempty += 1;
        }
    }
    assert!(commands.len() > 300, "{} commands", commands.len());
    assert!(
        nonempty > commands.len() / 3,
        "{nonempty} of {} found something",
        commands.len()
    );

    // Attachment words are found, by both.
    for word in [
        "zanzibar",
        "TIMBUKTU",
        "ulaanbaatar",
        "valparaiso",
        "reykjavik",
        "okavango",
        "ouagadougou",
        "montevideo",
        "kilimanjaro",
    ] {
        let line = format!("w UID SEARCH BODY {word}");
        let ra = a.ok(&line).await;
        assert_ne!(ra[0], "* SEARCH", "{word}");
        assert_eq!(ra[0], b.ok(&line).await[0], "{word}");
    }

    // SORT goes through the same evaluation.
    let sort = "z UID SORT (SUBJECT) UTF-8 OR BODY {5+}\r\nhello SUBJECT {4+}\r\ntest";
    assert_eq!(a.cmd(sort).await[0], b.cmd(sort).await[0]);
}

/// A word only present in a PDF attachment is found by SEARCH BODY and TEXT, from the
/// index and by the scan; not by SUBJECT, and not in the message without the PDF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_body_finds_a_word_only_in_a_pdf_attachment() {
    use mailfleet_mime::samples;
    let pdf = samples::pdf(&["The secret word is Xylophonist"], true);
    let with = samples::message_with_attachment(
        "report",
        "see attached",
        "application/pdf",
        "r.pdf",
        &pdf,
    );
    let without = samples::message_with_attachment(
        "other",
        "no pdf here",
        "image/png",
        "i.png",
        b"\x89PNG\r\n\x1a\nnot text",
    );
    for index in [true, false] {
        let h = Harness::new().await;
        h.deliver(&without, index).await;
        h.deliver(&with, index).await;
        let mut c = h.client().await;
        c.ok("s SELECT INBOX").await;
        for (cmd, want) in [
            ("UID SEARCH BODY xylophonist", "* SEARCH 2"),
            ("UID SEARCH TEXT XYLOPHONIST", "* SEARCH 2"),
            ("UID SEARCH BODY \"word is xylo\"", "* SEARCH 2"),
            ("UID SEARCH NOT BODY xylophonist", "* SEARCH 1"),
            ("UID SEARCH SUBJECT xylophonist", "* SEARCH"),
            ("UID SEARCH BODY xy", "* SEARCH 2"),
            ("UID SEARCH BODY png", "* SEARCH"),
        ] {
            let r = c.ok(&format!("t {cmd}")).await;
            assert_eq!(r[0], want, "{cmd} (indexed: {index})");
        }
    }
}
