//! Runs the SMTP load generator against tiny in-process SMTP sinks, so the whole client
//! (connection handling, pipelining, reconnects, failure accounting, deadline) is tested
//! end to end without a real Mailfleet.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailfleet_load_tests::{run_smtp_load, SmtpLoadConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the sink answers.
#[derive(Clone, Copy)]
struct Behaviour {
    /// Advertise PIPELINING in the EHLO reply.
    pipelining: bool,
    /// Reply to every RCPT with this line.
    rcpt_reply: &'static str,
    /// Send the 220 greeting at all (false simulates a hung server).
    greet: bool,
}

const ACCEPT_ALL: Behaviour = Behaviour {
    pipelining: true,
    rcpt_reply: "250 2.1.5 OK\r\n",
    greet: true,
};

/// What the sink saw.
#[derive(Default)]
struct Seen {
    /// Message-IDs of completed DATA transactions.
    message_ids: Vec<String>,
    connections: usize,
}

struct Sink {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Sink {
    async fn start(behaviour: Behaviour) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let seen2 = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                seen2.lock().unwrap().connections += 1;
                tokio::spawn(serve(stream, behaviour, Arc::clone(&seen2)));
            }
        });
        Sink { addr, seen }
    }

    fn messages(&self) -> Vec<String> {
        self.seen.lock().unwrap().message_ids.clone()
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }
}

/// A minimal SMTP server: accepts every command, handles DATA with dot-unstuffing.
/// Replies are written per command in order, which is all a pipelining client needs.
async fn serve(stream: TcpStream, behaviour: Behaviour, seen: Arc<Mutex<Seen>>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    if !behaviour.greet {
        // Hold the connection open without ever answering.
        let mut line = String::new();
        while reader.read_line(&mut line).await.unwrap_or(0) > 0 {}
        return;
    }
    writer.write_all(b"220 sink ESMTP\r\n").await.unwrap();
    let mut line = String::new();
    // Like a real server, refuse DATA when no recipient was accepted; a pipelining
    // client has already sent DATA by the time it sees the RCPT rejections.
    let mut accepted_rcpts = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        assert!(line.ends_with("\r\n"), "command without CRLF: {line:?}");
        let verb = line[..line.len().min(4)].to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" if behaviour.pipelining => b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
            "RCPT" => {
                if behaviour.rcpt_reply.starts_with('2') {
                    accepted_rcpts += 1;
                }
                behaviour.rcpt_reply.as_bytes()
            }
            "MAIL" | "RSET" => {
                accepted_rcpts = 0;
                b"250 OK\r\n"
            }
            "DATA" if accepted_rcpts == 0 => b"554 5.5.1 no valid recipients\r\n",
            "DATA" => {
                writer.write_all(b"354 go ahead\r\n").await.unwrap();
                let message = read_data(&mut reader).await;
                let id = message
                    .lines()
                    .find_map(|l| l.strip_prefix("Message-ID: "))
                    .expect("message without Message-ID")
                    .to_string();
                seen.lock().unwrap().message_ids.push(id);
                b"250 2.0.0 queued\r\n"
            }
            "QUIT" => {
                let _ = writer.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"250 OK\r\n",
        };
        if writer.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// Reads a DATA payload up to the lone "." line, undoing dot-stuffing.
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> String {
    let mut message = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).await.unwrap() > 0,
            "EOF in DATA"
        );
        assert!(line.ends_with("\r\n"), "bare LF in DATA: {line:?}");
        if line == ".\r\n" {
            return message;
        }
        message.push_str(line.strip_prefix('.').unwrap_or(&line));
    }
}

fn config(targets: &[&Sink], connections: usize, messages: u64) -> SmtpLoadConfig {
    SmtpLoadConfig {
        targets: targets.iter().map(|s| s.addr.to_string()).collect(),
        connections,
        messages,
        duration: Duration::from_secs(60),
        message_size: 4096,
        ..SmtpLoadConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_connections_send_eighty_messages() {
    let sink = Sink::start(ACCEPT_ALL).await;
    let report = run_smtp_load(config(&[&sink], 4, 80)).await.unwrap();

    assert_eq!(report.ok, 80, "{}", report.table());
    assert_eq!(report.failed, 0, "{}", report.table());
    assert!(report.connection_failures.is_empty(), "{}", report.table());
    assert!(report.succeeded());
    assert!(!report.stopped_by_deadline());
    assert_eq!(report.latency.len(), 80);
    assert_eq!(report.connections, 4);
    assert!(report.ok_bytes >= 80 * 4000);

    let ids = sink.messages();
    assert_eq!(ids.len(), 80);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        80,
        "duplicate Message-IDs"
    );
    // Up to four: a worker that starts after the others spent the budget never connects
    // (seen on a quiet machine, where one connection sent all 80 before the rest began).
    // Every connection the sink saw is one session the report counts.
    assert!(
        (1..=4).contains(&sink.connections()),
        "{}",
        sink.connections()
    );
    assert_eq!(sink.connections() as u64, report.sessions);

    let json = report.to_json();
    assert!(json.starts_with('{') && json.ends_with('}'));
    assert!(json.contains(r#""ok":80"#), "{json}");
    assert!(report.table().contains("sent          80 ok, 0 failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_round_robin_and_reconnects() {
    let a = Sink::start(ACCEPT_ALL).await;
    let b = Sink::start(ACCEPT_ALL).await;
    let cfg = SmtpLoadConfig {
        pipelining: true,
        messages_per_connection: 3,
        rcpts: vec!["one@example.test".into(), "two@example.test".into()],
        ..config(&[&a, &b], 4, 60)
    };
    let report = run_smtp_load(cfg).await.unwrap();

    assert_eq!((report.ok, report.failed), (60, 0), "{}", report.table());
    assert!(report.sessions >= 20, "{}", report.table());
    assert_eq!(report.pipelined_sessions, report.sessions);
    // Two connections per sink; each spends its share in sessions of 3 messages.
    assert_eq!(a.messages().len() + b.messages().len(), 60);
    assert!(!a.messages().is_empty() && !b.messages().is_empty());
    assert!(a.connections() >= 2 && b.connections() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_counted_by_code() {
    for pipelining in [false, true] {
        let sink = Sink::start(Behaviour {
            rcpt_reply: "550 5.1.1 no such user\r\n",
            pipelining,
            greet: true,
        })
        .await;
        let cfg = SmtpLoadConfig {
            pipelining,
            ..config(&[&sink], 2, 20)
        };
        let report = run_smtp_load(cfg).await.unwrap();
        assert_eq!((report.ok, report.failed), (0, 20), "{}", report.table());
        assert_eq!(report.failures.get("550"), Some(&20));
        // A rejection resets the transaction but keeps the connection.
        assert!(report.connection_failures.is_empty(), "{}", report.table());
        assert!(!report.succeeded());
        assert!(sink.messages().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_server_is_cut_off_by_the_duration_cap() {
    let sink = Sink::start(Behaviour {
        greet: false,
        ..ACCEPT_ALL
    })
    .await;
    let cfg = SmtpLoadConfig {
        duration: Duration::from_secs(1),
        ..config(&[&sink], 3, 10)
    };
    let started = std::time::Instant::now();
    let report = run_smtp_load(cfg).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!((report.ok, report.failed), (0, 0));
    assert!(report.stopped_by_deadline());
    assert!(report.table().contains("duration cap"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_and_retried() {
    // Reserve a port, then close it so connecting is refused.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let cfg = SmtpLoadConfig {
        targets: vec![addr.to_string()],
        connections: 2,
        messages: 10,
        duration: Duration::from_secs(1),
        ..SmtpLoadConfig::default()
    };
    let report = run_smtp_load(cfg).await.unwrap();
    assert_eq!(report.ok, 0);
    let refused: u64 = report.connection_failures.values().sum();
    // Two workers retrying with backoff for a second: several attempts each.
    assert!(refused >= 4, "{}", report.table());
    assert!(report
        .connection_failures
        .keys()
        .all(|k| k.starts_with("connect: ")));
}
