//! Runs the POP3 load generator against a tiny in-process POP3 server, so the client
//! (session shape, multi-line reading with dot-stuffed lines, accounting, refused logins) is
//! tested end to end without a real server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailfleet_load_tests::pop3::{run_pop3_load, Pop3LoadConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Three messages; the second has a dot-stuffed line that must not end the response.
const MESSAGES: [&str; 3] = [
    "Subject: one\r\n\r\nfirst\r\n",
    "Subject: two\r\n\r\n..not the end\r\nsecond\r\n",
    "Subject: three\r\n\r\nthird\r\n",
];

#[derive(Default)]
struct Seen {
    users: Vec<String>,
    retrs: usize,
    quits: usize,
}

async fn start(password: &'static str) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, password, seen2.clone()));
        }
    });
    (addr, seen)
}

async fn serve(stream: TcpStream, password: &'static str, seen: Arc<Mutex<Seen>>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"+OK ready\r\n").await.unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let cmd = line.trim_end();
        let reply = if let Some(u) = cmd.strip_prefix("USER ") {
            seen.lock().unwrap().users.push(u.to_string());
            "+OK\r\n".to_string()
        } else if let Some(p) = cmd.strip_prefix("PASS ") {
            if p == password {
                "+OK logged in\r\n".into()
            } else {
                "-ERR [AUTH] no\r\n".into()
            }
        } else if cmd == "STAT" {
            let size: usize = MESSAGES.iter().map(|m| m.len()).sum();
            format!("+OK {} {size}\r\n", MESSAGES.len())
        } else if cmd == "UIDL" {
            let mut s = "+OK\r\n".to_string();
            for i in 1..=MESSAGES.len() {
                s.push_str(&format!("{i} uid{i}\r\n"));
            }
            s + ".\r\n"
        } else if let Some(n) = cmd.strip_prefix("RETR ") {
            let n: usize = n.parse().unwrap();
            seen.lock().unwrap().retrs += 1;
            format!("+OK\r\n{}.\r\n", MESSAGES[n - 1])
        } else if cmd == "QUIT" {
            seen.lock().unwrap().quits += 1;
            w.write_all(b"+OK bye\r\n").await.unwrap();
            return;
        } else {
            "-ERR unknown\r\n".into()
        };
        w.write_all(reply.as_bytes()).await.unwrap();
    }
}

#[tokio::test]
async fn sessions_retrieve_and_count_every_message() {
    let (addr, seen) = start("pw").await;
    let report = run_pop3_load(Pop3LoadConfig {
        targets: vec![addr.to_string()],
        workers: 4,
        sessions: 12,
        duration: Duration::from_secs(30),
        user: "u{n}@example.test".into(),
        users: 4,
        password: "pw".into(),
        retr_per_session: 5,
        ..Pop3LoadConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(report.sessions_ok, 12, "{}", report.table());
    assert_eq!(report.sessions_failed, 0);
    // Five RETRs asked for, but a maildrop of three holds only three to pick from per
    // session (picks may repeat: the count is min(retr, messages)).
    assert_eq!(report.retrs, 12 * 3);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.retrs, 36);
    assert_eq!(seen.quits, 12);
    let mut users = seen.users.clone();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 4, "each worker logs in as its own user");
    // Every RETR body was read to its terminating dot (a dot-stuffed line is not the end):
    // the byte count is that of whole messages, between the smallest and the largest.
    let min = MESSAGES.iter().map(|m| m.len()).min().unwrap() as u64;
    let max = MESSAGES.iter().map(|m| m.len()).max().unwrap() as u64;
    assert!(report.retr_bytes >= 36 * min && report.retr_bytes <= 36 * max);
    assert!(report.to_json().contains("\"retrs\":36"));
}

#[tokio::test]
async fn a_refused_login_stops_the_worker_instead_of_hammering() {
    let (addr, seen) = start("right").await;
    let report = run_pop3_load(Pop3LoadConfig {
        targets: vec![addr.to_string()],
        workers: 2,
        sessions: 100,
        duration: Duration::from_secs(30),
        users: 2,
        password: "wrong".into(),
        ..Pop3LoadConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(report.sessions_ok, 0);
    assert_eq!(report.sessions_failed, 2, "{}", report.table());
    assert_eq!(report.failures.get("PASS: -ERR"), Some(&2));
    assert_eq!(seen.lock().unwrap().retrs, 0);
}
