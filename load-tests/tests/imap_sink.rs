//! Runs the IMAP load generator against a tiny in-process IMAP server, so the scenarios
//! (fetch, append, idle), failure accounting and the duration cap are tested end to end
//! without a real Mailfleet.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailfleet_load_tests::imap::{run_imap_load, ImapLoadConfig, ImapLoadReport, Scenario};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const PASSWORD: &str = "right \"pass\"";

/// What the server saw.
#[derive(Default)]
struct Seen {
    logins: usize,
    failed_logins: usize,
    fetches: usize,
    appended: Vec<Vec<u8>>,
    idles: usize,
    dones: usize,
    logouts: usize,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Server {
    async fn start(greet: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let seen2 = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, greet, Arc::clone(&seen2)));
            }
        });
        Server { addr, seen }
    }

    fn config(&self, scenario: Scenario) -> ImapLoadConfig {
        ImapLoadConfig {
            scenario,
            targets: vec![self.addr.to_string()],
            password: PASSWORD.into(),
            duration: Duration::from_secs(20),
            ..ImapLoadConfig::default()
        }
    }
}

/// A body that would derail a line-based reader: it contains a fake completion, a fake
/// FETCH and ends in something that looks like a literal announcement.
fn body(uid: u32) -> String {
    format!("Subject: {uid}\r\n\r\nL1 OK fake completion\r\n* 9 FETCH (UID 9)\r\nend {{5}}\r\n")
}

/// A minimal IMAP server: just enough of LOGIN, SELECT, UID SEARCH, UID FETCH, APPEND,
/// IDLE and LOGOUT for the generator.
async fn serve(stream: TcpStream, greet: bool, seen: Arc<Mutex<Seen>>) {
    let (reader, mut w) = stream.into_split();
    let mut r = BufReader::new(reader);
    if !greet {
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink).await;
        return;
    }
    w.write_all(b"* OK [CAPABILITY IMAP4rev2] fake ready\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let text = line.trim_end().to_string();
        let (tag, cmd) = text.split_once(' ').unwrap_or((&text, ""));
        let upper = cmd.to_ascii_uppercase();
        let reply = if upper.starts_with("LOGIN ") {
            // The password arrives quoted with its quote escaped.
            if cmd.ends_with(r#" "right \"pass\"""#) {
                seen.lock().unwrap().logins += 1;
                format!("{tag} OK [CAPABILITY IMAP4rev2] Logged in\r\n")
            } else {
                seen.lock().unwrap().failed_logins += 1;
                format!("{tag} NO [AUTHENTICATIONFAILED] Invalid credentials\r\n")
            }
        } else if upper.starts_with("SELECT ") {
            format!(
                "* 3 EXISTS\r\n* OK [UIDNEXT 4] next\r\n{tag} OK [READ-WRITE] SELECT completed\r\n"
            )
        } else if upper == "UID SEARCH ALL" {
            format!("* SEARCH 1 2 3\r\n{tag} OK SEARCH completed\r\n")
        } else if let Some(rest) = upper.strip_prefix("UID FETCH ") {
            seen.lock().unwrap().fetches += 1;
            let uid: u32 = rest.split(' ').next().unwrap().parse().unwrap();
            let data = if rest.contains("BODY.PEEK[]") {
                let b = body(uid);
                format!(
                    "* {uid} FETCH (UID {uid} FLAGS () BODY[] {{{}}}\r\n{b})\r\n",
                    b.len()
                )
            } else {
                format!("* {uid} FETCH (UID {uid} ENVELOPE (NIL \"s\" NIL NIL NIL NIL NIL NIL NIL \"<m@x>\"))\r\n")
            };
            format!("{data}{tag} OK FETCH completed\r\n")
        } else if upper.starts_with("APPEND ") {
            let len: usize = cmd
                .rsplit_once('{')
                .and_then(|(_, n)| n.strip_suffix('}'))
                .and_then(|n| n.parse().ok())
                .unwrap();
            w.write_all(b"+ Ready for literal data\r\n").await.unwrap();
            let mut message = vec![0; len];
            r.read_exact(&mut message).await.unwrap();
            let mut crlf = String::new();
            r.read_line(&mut crlf).await.unwrap();
            assert_eq!(crlf, "\r\n");
            let mut seen = seen.lock().unwrap();
            seen.appended.push(message);
            format!(
                "* {} EXISTS\r\n{tag} OK [APPENDUID 1 {}] APPEND completed\r\n",
                seen.appended.len(),
                seen.appended.len()
            )
        } else if upper == "IDLE" {
            w.write_all(b"+ idling\r\n").await.unwrap();
            seen.lock().unwrap().idles += 1;
            line.clear();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            assert_eq!(line, "DONE\r\n");
            seen.lock().unwrap().dones += 1;
            format!("{tag} OK IDLE terminated\r\n")
        } else if upper == "LOGOUT" {
            seen.lock().unwrap().logouts += 1;
            let _ = w
                .write_all(format!("* BYE Logging out\r\n{tag} OK LOGOUT completed\r\n").as_bytes())
                .await;
            return;
        } else {
            format!("{tag} BAD unknown command\r\n")
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn ops(report: ImapLoadReport) -> mailfleet_load_tests::imap::OpsReport {
    match report {
        ImapLoadReport::Ops(r) => r,
        ImapLoadReport::Idle(_) => panic!("expected an ops report"),
    }
}

#[tokio::test]
async fn fetch_full_bodies() {
    let server = Server::start(true).await;
    let cfg = ImapLoadConfig {
        connections: 4,
        count: 50,
        ..server.config(Scenario::Fetch)
    };
    let report = ops(run_imap_load(cfg).await.unwrap());
    assert_eq!((report.ok, report.failed), (50, 0), "{}", report.table());
    assert_eq!(report.sessions, 4);
    assert_eq!(report.mailbox_messages, Some(3));
    assert_eq!(report.latency.len(), 50);
    // Every fetch returned one body of the fixed length (UIDs are one digit).
    assert_eq!(report.literal_bytes, 50 * body(1).len() as u64);
    assert!(report.bytes > report.literal_bytes);
    let seen = server.seen.lock().unwrap();
    assert_eq!((seen.fetches, seen.logins, seen.logouts), (50, 4, 4));
    assert!(report.table().contains("50 ok, 0 failed"));
    assert!(report.to_json().contains("\"scenario\":\"fetch\""));
}

#[tokio::test]
async fn fetch_header_items() {
    let server = Server::start(true).await;
    let cfg = ImapLoadConfig {
        connections: 2,
        count: 10,
        fetch_items: "ENVELOPE BODYSTRUCTURE".into(),
        ..server.config(Scenario::Fetch)
    };
    let report = ops(run_imap_load(cfg).await.unwrap());
    assert_eq!(report.ok, 10, "{}", report.table());
    assert_eq!(report.literal_bytes, 0);
    assert!(report.command.contains("(ENVELOPE BODYSTRUCTURE)"));
}

#[tokio::test]
async fn bad_password_stops_without_retrying() {
    let server = Server::start(true).await;
    let cfg = ImapLoadConfig {
        connections: 3,
        count: 30,
        password: "wrong".into(),
        ..server.config(Scenario::Fetch)
    };
    let report = run_imap_load(cfg).await.unwrap();
    assert!(!report.succeeded());
    let report = ops(report);
    assert_eq!(
        report
            .connection_failures
            .get("login: NO [AUTHENTICATIONFAILED]"),
        Some(&3),
        "{}",
        report.table()
    );
    // Retrying a rejected password would only trip the server's login throttling.
    assert_eq!(server.seen.lock().unwrap().failed_logins, 3);
    assert!(report
        .table()
        .contains("e.g. login: NO [AUTHENTICATIONFAILED]"));
}

#[tokio::test]
async fn append_with_synchronizing_literals() {
    let server = Server::start(true).await;
    let cfg = ImapLoadConfig {
        connections: 3,
        count: 20,
        message_size: 2000,
        ..server.config(Scenario::Append)
    };
    let report = ops(run_imap_load(cfg).await.unwrap());
    assert_eq!((report.ok, report.failed), (20, 0), "{}", report.table());
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.appended.len(), 20);
    let total: usize = seen.appended.iter().map(Vec::len).sum();
    assert_eq!(report.bytes, total as u64);
    for m in &seen.appended {
        assert!(m.len().abs_diff(2000) <= 16, "{} bytes", m.len());
        let text = String::from_utf8_lossy(m);
        assert!(text.contains("\r\nX-Mailfleet-Load: imap-load\r\n"));
        assert!(text.contains("\r\nTo: load@example.test\r\n"));
    }
}

#[tokio::test]
async fn idle_ramp_hold_and_logout() {
    let server = Server::start(true).await;
    let cfg = ImapLoadConfig {
        connections: 30,
        batch: 7,
        hold: Duration::from_millis(100),
        settle: Duration::from_millis(10),
        // Our own process stands in for the server whose memory is read.
        server_pid: Some(std::process::id()),
        ..server.config(Scenario::Idle)
    };
    let report = match run_imap_load(cfg).await.unwrap() {
        ImapLoadReport::Idle(r) => r,
        ImapLoadReport::Ops(_) => panic!("expected an idle report"),
    };
    assert_eq!(report.idling, 30, "{}", report.table());
    assert_eq!(report.logged_out, 30, "{}", report.table());
    assert!(report.connection_failures.is_empty());
    assert!(report.rss_before_kib.is_some() && report.rss_idle_kib.is_some());
    assert!(report.rss_per_connection_kib().is_some());
    assert_eq!(report.setup_latency.len(), 30);
    let seen = server.seen.lock().unwrap();
    assert_eq!((seen.idles, seen.dones, seen.logouts), (30, 30, 30));
    let table = report.table();
    assert!(table.contains("30 requested, 30 idling"), "{table}");
    assert!(table.contains("rss per conn"), "{table}");
}

#[tokio::test]
async fn silent_server_is_bounded_by_the_duration_cap() {
    let server = Server::start(false).await;
    let cfg = ImapLoadConfig {
        connections: 2,
        count: 10,
        duration: Duration::from_millis(500),
        ..server.config(Scenario::Fetch)
    };
    let started = std::time::Instant::now();
    let report = ops(run_imap_load(cfg).await.unwrap());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(report.ok, 0);
    assert!(report.stopped_by_deadline());
}

#[tokio::test]
async fn idle_ramp_stops_at_the_memory_guard() {
    let server = Server::start(true).await;
    let cfg = ImapLoadConfig {
        connections: 30,
        batch: 5,
        hold: Duration::ZERO,
        settle: Duration::ZERO,
        server_pid: Some(std::process::id()),
        // Any process is over 1 KiB: the guard trips after the first batch.
        max_server_rss_kib: Some(1),
        ..server.config(Scenario::Idle)
    };
    let report = match run_imap_load(cfg).await.unwrap() {
        ImapLoadReport::Idle(r) => r,
        ImapLoadReport::Ops(_) => panic!("expected an idle report"),
    };
    assert_eq!(
        (report.idling, report.logged_out),
        (5, 5),
        "{}",
        report.table()
    );
    let why = report.ramp_stopped.clone().unwrap();
    assert!(why.contains("--max-server-rss-mib"), "{why}");
    assert!(report.table().contains("stopped: server VmRSS"));
}
