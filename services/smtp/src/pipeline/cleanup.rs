//! Cleanup: the one place an accepted message is normalised, as Postfix's cleanup(8) is.
//!
//! - Line ends: every bare LF and bare CR becomes CRLF, so no stored message carries a line
//!   end another server could read differently (see `proto::data` on smuggling), and the
//!   message ends with CRLF.
//! - Trace: `Return-Path` (RFC 5321 §4.4, added at final delivery) and `Received` on top.
//! - Loops: more than [`MAX_HOPS`] `Received` headers means a mail loop.
//! - Submitted messages (RFC 6409 §8.1-§8.3): a missing `Date:`, `Message-ID:` or `From:`
//!   is added at the end of the header section, as Postfix's cleanup does.

use super::header::{Header, HeaderError};
use bytes::BytesMut;

/// Received headers beyond which a message is refused as looping (Postfix's default is 50).
pub const MAX_HOPS: usize = 50;

/// Rewrites bare CR and bare LF to CRLF and makes sure the message ends with CRLF, in
/// place. A message whose line ends are already CRLF (the usual case) is only scanned;
/// otherwise the buffer grows once by the bytes needed and is rewritten back to front, so
/// the message is never held twice.
pub fn normalize_line_endings(message: &mut BytesMut) {
    let old = message.len();
    let mut extra = 0usize;
    for (i, b) in message.iter().enumerate() {
        match b {
            b'\r' if message.get(i + 1) != Some(&b'\n') => extra += 1,
            b'\n' if i == 0 || message[i - 1] != b'\r' => extra += 1,
            _ => {}
        }
    }
    let unterminated = old > 0 && !matches!(message[old - 1], b'\r' | b'\n');
    if unterminated {
        extra += 2;
    }
    if extra == 0 {
        return;
    }
    message.resize(old + extra, 0);
    let mut w = old + extra;
    if unterminated {
        message[w - 2..w].copy_from_slice(b"\r\n");
        w -= 2;
    }
    let mut r = old;
    while r > 0 {
        r -= 1;
        match message[r] {
            b'\n' => {
                if r > 0 && message[r - 1] == b'\r' {
                    r -= 1;
                }
                message[w - 2..w].copy_from_slice(b"\r\n");
                w -= 2;
            }
            // A CR reached directly is bare: a CR before LF was taken with its LF.
            b'\r' => {
                message[w - 2..w].copy_from_slice(b"\r\n");
                w -= 2;
            }
            b => {
                w -= 1;
                message[w] = b;
            }
        }
        if w == r {
            // Everything before this point is unchanged.
            break;
        }
    }
}

/// Inserts each `(at, bytes)` (positions in the message as it is now, ascending) in one
/// back-to-front pass over the same buffer: the message is moved, never copied into a
/// second buffer, and moved once however many insertions there are.
pub fn insert_all(message: &mut BytesMut, inserts: &[(usize, &[u8])]) {
    let extra: usize = inserts.iter().map(|(_, b)| b.len()).sum();
    if extra == 0 {
        return;
    }
    debug_assert!(inserts.windows(2).all(|w| w[0].0 <= w[1].0));
    let mut end = message.len();
    message.resize(end + extra, 0);
    let mut shift = extra;
    for &(at, bytes) in inserts.iter().rev() {
        let at = at.min(end);
        message.copy_within(at..end, at + shift);
        shift -= bytes.len();
        message[at + shift..at + shift + bytes.len()].copy_from_slice(bytes);
        end = at;
    }
}

/// Removes the byte `ranges` (ascending, disjoint) from `message` in one pass (header
/// fields a stage does not let through, e.g. a forged `Authentication-Results`).
pub fn remove_ranges(message: &mut bytes::BytesMut, ranges: &[std::ops::Range<usize>]) {
    if ranges.is_empty() {
        return;
    }
    let mut w = ranges[0].start;
    for (k, r) in ranges.iter().enumerate() {
        let next = ranges.get(k + 1).map_or(message.len(), |n| n.start);
        message.copy_within(r.end..next, w);
        w += next - r.end;
    }
    message.truncate(w);
}

/// Counts `Received:` fields in the header section, as [`Header`] reads it.
pub fn count_received(message: &[u8]) -> Result<usize, HeaderError> {
    Ok(Header::parse(message)?.count("Received"))
}

/// What the `Received` header says about the transaction.
#[derive(Clone, Debug)]
pub struct TraceInfo<'a> {
    pub helo: &'a str,
    pub remote_ip: std::net::IpAddr,
    pub hostname: &'a str,
    /// RFC 3848 protocol: `SMTP`, `ESMTP`, `ESMTPS`, with `UTF8` prefixes per RFC 6531.
    pub protocol: String,
    /// e.g. `TLS1.3 with cipher TLS13_AES_256_GCM_SHA384`.
    pub tls: Option<String>,
    pub id: &'a str,
    /// Named only when the message has exactly one recipient (privacy, as Postfix does).
    pub for_rcpt: Option<String>,
    pub date: chrono::DateTime<chrono::Utc>,
}

/// Builds `Return-Path:` and `Received:` lines to put in front of the message.
pub fn trace_headers(return_path: &str, t: &TraceInfo<'_>) -> Vec<u8> {
    let helo: String = t
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '(' && *c != ')')
        .take(255)
        .collect();
    let mut h = format!("Return-Path: <{return_path}>\r\n");
    h.push_str(&format!(
        "Received: from {helo} ([{ip}])\r\n\tby {host} (Mailfleet) with {proto} id {id}",
        ip = t.remote_ip,
        host = t.hostname,
        proto = t.protocol,
        id = t.id
    ));
    if let Some(tls) = &t.tls {
        h.push_str(&format!("\r\n\t({tls})"));
    }
    if let Some(r) = &t.for_rcpt {
        h.push_str(&format!("\r\n\tfor <{r}>"));
    }
    h.push_str(&format!(
        "; {}\r\n",
        t.date.format("%a, %d %b %Y %H:%M:%S +0000")
    ));
    h.into_bytes()
}

/// Whether the header section has a field called `name` (case-insensitive); a header
/// section [`Header`] refuses has none.
pub fn has_header(message: &[u8], name: &str) -> bool {
    Header::parse(message).is_ok_and(|h| h.has(name))
}

/// The `Name: value` fields to add at the end of the header section (before the empty
/// line), for each `(name, value)` whose name the message lacks, and where they go: the
/// place [`Header`] says the section ends, the same reading the submission check made.
/// `None` when nothing is missing. Values are stripped of CR and LF so they cannot start a
/// new field. The message must already have CRLF line ends. The caller inserts them with
/// [`insert_all`], together with the trace headers, in one pass.
pub fn missing_headers(
    message: &[u8],
    fields: &[(&str, String)],
) -> Result<Option<(usize, Vec<u8>)>, HeaderError> {
    let header = Header::parse(message)?;
    let mut added = Vec::new();
    for (name, value) in fields.iter().filter(|(name, _)| !header.has(name)) {
        let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        added.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if added.is_empty() {
        return Ok(None);
    }
    let at = header.insert_at;
    // A body-less message that does not end its last line gets the CRLF first.
    if at == message.len() && !message.is_empty() && !message.ends_with(b"\r\n") {
        added.splice(0..0, *b"\r\n");
    }
    Ok(Some((at, added)))
}

/// A new Message-ID (RFC 5322 §3.6.4): random, the queue id, and this host.
pub fn new_message_id(queue_id: &str, hostname: &str) -> String {
    format!("<{:016x}.{queue_id}@{hostname}>", rand::random::<u64>())
}

/// An RFC 5322 date in UTC.
pub fn rfc5322_date(date: chrono::DateTime<chrono::Utc>) -> String {
    date.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(input: &[u8]) -> BytesMut {
        let mut m = BytesMut::from(input);
        normalize_line_endings(&mut m);
        m
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalized(b"a\nb\rc\r\nd"), &b"a\r\nb\r\nc\r\nd\r\n"[..]);
        assert_eq!(normalized(b"a\r\n"), &b"a\r\n"[..]);
        assert_eq!(normalized(b""), &b""[..]);
        assert_eq!(normalized(b"\r\r\n"), &b"\r\n\r\n"[..]);
        assert_eq!(normalized(b"\n\n\r"), &b"\r\n\r\n\r\n"[..]);
        assert_eq!(normalized(b"x\r\ny\nz"), &b"x\r\ny\r\nz\r\n"[..]);
    }

    /// The in-place rewrite agrees with the obvious copying one on arbitrary input.
    #[test]
    fn in_place_normalization_matches_a_copying_one() {
        fn copying(input: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < input.len() {
                match input[i] {
                    b'\r' => {
                        out.extend_from_slice(b"\r\n");
                        if input.get(i + 1) == Some(&b'\n') {
                            i += 1;
                        }
                    }
                    b'\n' => out.extend_from_slice(b"\r\n"),
                    b => out.push(b),
                }
                i += 1;
            }
            if !out.is_empty() && !out.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
            out
        }
        let alphabet = [b'\r', b'\n', b'a', b'.'];
        let mut x: u64 = 0x2545f4914f6cdd1d;
        for len in 0..400 {
            let input: Vec<u8> = (0..len % 40)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % 4) as usize]
                })
                .collect();
            assert_eq!(normalized(&input), &copying(&input)[..], "{input:?}");
        }
    }

    #[test]
    fn insert_all_places_every_insertion() {
        let mut m = BytesMut::from(&b"AAAA|BBBB"[..]);
        insert_all(&mut m, &[(0, b"<top>"), (4, b"<mid>"), (9, b"<end>")]);
        assert_eq!(m, &b"<top>AAAA<mid>|BBBB<end>"[..]);
        let mut m = BytesMut::from(&b"x"[..]);
        insert_all(&mut m, &[]);
        assert_eq!(m, &b"x"[..]);
    }

    #[test]
    fn counts_received_in_header_only() {
        let m = b"Received: a\r\nreceived: b\r\nSubject: x\r\n\r\nReceived: body\r\n";
        assert_eq!(count_received(m), Ok(2));
    }

    fn add(m: &[u8], fields: &[(&str, String)]) -> BytesMut {
        let mut out = BytesMut::from(m);
        if let Some((at, added)) = missing_headers(m, fields).expect("valid") {
            insert_all(&mut out, &[(at, &added)]);
        }
        out
    }

    #[test]
    fn missing_headers_are_added_once() {
        let fields = [
            ("Date", "Thu, 01 Jan 1970 00:00:00 +0000".to_string()),
            ("Message-ID", "<x@h>".to_string()),
        ];
        let m = b"Subject: s\r\nmessage-id: <kept@h>\r\n\r\nDate: in body\r\n";
        assert!(has_header(m, "Message-ID"));
        assert!(
            !has_header(m, "Date"),
            "a Date line in the body does not count"
        );
        assert_eq!(
            add(m, &fields),
            &b"Subject: s\r\nmessage-id: <kept@h>\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\n\r\nDate: in body\r\n"[..]
        );
        assert_eq!(
            add(b"Subject: only headers\r\n", &fields[1..]),
            &b"Subject: only headers\r\nMessage-ID: <x@h>\r\n"[..]
        );
        assert_eq!(
            add(b"Subject: unterminated", &fields[1..]),
            &b"Subject: unterminated\r\nMessage-ID: <x@h>\r\n"[..]
        );
        assert_eq!(
            add(b"\r\nbody\r\n", &fields[1..]),
            &b"Message-ID: <x@h>\r\n\r\nbody\r\n"[..]
        );
        assert_eq!(
            missing_headers(b"Message-ID: <y@h>\r\n\r\n", &fields[1..]),
            Ok(None)
        );
        let evil = [("Date", "x\r\nBcc: victim@x".to_string())];
        assert_eq!(add(b"\r\n", &evil), &b"Date: xBcc: victim@x\r\n\r\n"[..]);
        assert!(new_message_id("ABC", "mx.test").ends_with(".ABC@mx.test>"));
    }

    #[test]
    fn trace_format() {
        let t = TraceInfo {
            helo: "client.example (evil)\r\nX-Injected: 1",
            remote_ip: "192.0.2.1".parse().expect("ip"),
            hostname: "mx.test",
            protocol: "ESMTPS".into(),
            tls: Some("TLS1.3".into()),
            id: "ABC",
            for_rcpt: Some("u@test".into()),
            date: chrono::DateTime::from_timestamp(0, 0).expect("epoch"),
        };
        let h = String::from_utf8(trace_headers("s@x", &t)).expect("utf8");
        assert!(h.starts_with("Return-Path: <s@x>\r\nReceived: from client.example"));
        assert!(
            !h.contains("X-Injected: 1\r\n"),
            "no header injection via HELO"
        );
        assert!(h.ends_with("; Thu, 01 Jan 1970 00:00:00 +0000\r\n"));
    }
}
