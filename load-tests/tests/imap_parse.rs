//! The IMAP response reader against canned server output: literals (including ones whose
//! content looks like protocol), tagged completion, continuation requests, BYE, limits
//! and truncated input.

use std::io;

use mailfleet_load_tests::imap::{
    exists_count, expand_sequence_set, literal_announcement, read_response,
    read_until_continuation, read_until_tagged, search_uids, ImapError, ReadLimits, ResponseKind,
    Status,
};

fn limits() -> ReadLimits {
    ReadLimits::default()
}

#[tokio::test]
async fn fetch_with_literal_body() {
    let body = b"Subject: hi\r\n\r\nline one\r\nL9 OK not the end\r\n* 2 FETCH (fake)\r\n";
    let mut input = format!(
        "* 1 FETCH (UID 7 FLAGS (\\Seen) BODY[] {{{}}}\r\n",
        body.len()
    )
    .into_bytes();
    input.extend_from_slice(body);
    input.extend_from_slice(b")\r\nL9 OK [READ-ONLY] Fetch completed\r\n");
    let mut reader = &input[..];
    let ex = read_until_tagged(&mut reader, "L9", &limits())
        .await
        .unwrap();
    assert!(reader.is_empty(), "everything consumed");
    assert_eq!(ex.untagged.len(), 1);
    assert_eq!(ex.fetch_count(), 1);
    let fetch = &ex.untagged[0];
    assert_eq!(fetch.kind, ResponseKind::Untagged);
    assert_eq!(fetch.literals, vec![body.to_vec()]);
    assert_eq!(
        fetch.lines,
        vec![
            format!("1 FETCH (UID 7 FLAGS (\\Seen) BODY[] {{{}}}", body.len()),
            ")".to_string()
        ]
    );
    assert_eq!(fetch.untagged_keyword(), Some((Some(1), "FETCH".into())));
    assert_eq!(ex.literal_bytes(), body.len());
    assert_eq!(ex.wire_len, input.len());
    assert_eq!(ex.done.status(), Some(Status::Ok));
    assert_eq!(ex.done.code(), Some("READ-ONLY"));
    assert!(ex.done.is_tagged("L9"));
    assert!(ex.into_ok().is_ok());
}

#[tokio::test]
async fn several_literals_and_a_literal_ending_in_a_brace_count() {
    // The first literal's content ends with "{5}" and the second is empty: neither may be
    // taken as an announcement, because literal bytes are never parsed.
    let input = b"* 3 FETCH (BODY[HEADER] {10}\r\nX: a {5}\r\n BODY[TEXT] {0}\r\n UID 3)\r\n\
                  * 4 FETCH (FLAGS ())\r\nA1 OK done\r\n";
    let mut reader = &input[..];
    let ex = read_until_tagged(&mut reader, "A1", &limits())
        .await
        .unwrap();
    assert_eq!(ex.untagged.len(), 2);
    let first = &ex.untagged[0];
    assert_eq!(first.literals, vec![b"X: a {5}\r\n".to_vec(), vec![]]);
    assert_eq!(
        first.lines,
        vec!["3 FETCH (BODY[HEADER] {10}", " BODY[TEXT] {0}", " UID 3)"]
    );
    assert_eq!(ex.fetch_count(), 2);
}

#[tokio::test]
async fn literal_of_nine_bytes_is_exact() {
    // A count one short of the CRLF: the literal takes exactly nine bytes, and the "\n"
    // left over ends an (empty) continuation line. The reader trusts the count, never the
    // content.
    let input = b"* 1 FETCH (BODY[] {9}\r\nX: a {5}\r\n)\r\n";
    let mut reader = &input[..];
    let r = read_response(&mut reader, &limits()).await.unwrap();
    assert_eq!(r.literals, vec![b"X: a {5}\r".to_vec()]);
    // So ")" starts the next "response", which is malformed on its own.
    assert_eq!(r.lines[1], "");
    assert!(matches!(
        read_response(&mut reader, &limits()).await,
        Err(ImapError::Protocol(_))
    ));
}

#[tokio::test]
async fn envelope_without_literals_and_with_one() {
    let input = b"* 12 FETCH (UID 40 ENVELOPE (\"Mon, 1 Jan 2024 00:00:00 +0000\" {11}\r\nline\r\nbreak \"<id@x>\") BODYSTRUCTURE (\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 10 1))\r\n\
                  L2 OK FETCH completed\r\n";
    let mut reader = &input[..];
    let ex = read_until_tagged(&mut reader, "L2", &limits())
        .await
        .unwrap();
    assert_eq!(ex.fetch_count(), 1);
    assert_eq!(ex.untagged[0].literals, vec![b"line\r\nbreak".to_vec()]);
}

#[tokio::test]
async fn untagged_responses_before_the_completion_are_collected() {
    let input = b"* 172 EXISTS\r\n* 1 RECENT\r\n* OK [UIDVALIDITY 3857529045] UIDs valid\r\n\
                  * OK [UIDNEXT 4392] Predicted next UID\r\n* FLAGS (\\Answered \\Flagged)\r\n\
                  * 180 EXISTS\r\nL2 OK [READ-WRITE] SELECT completed\r\n";
    let mut reader = &input[..];
    let ex = read_until_tagged(&mut reader, "L2", &limits())
        .await
        .unwrap();
    assert_eq!(ex.untagged.len(), 6);
    assert_eq!(exists_count(&ex.untagged), Some(180));
    assert_eq!(ex.untagged[2].code(), Some("UIDVALIDITY"));
    assert_eq!(ex.fetch_count(), 0);
}

#[tokio::test]
async fn rejections_keep_status_and_code() {
    let mut reader =
        &b"* OK still here\r\nL1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"[..];
    let ex = read_until_tagged(&mut reader, "L1", &limits())
        .await
        .unwrap();
    let err = ex.into_ok().unwrap_err();
    assert_eq!(err.failure_key(), "NO [AUTHENTICATIONFAILED]");
    let mut reader = &b"L1 bad Syntax error\r\n"[..];
    let err = read_until_tagged(&mut reader, "L1", &limits())
        .await
        .unwrap()
        .into_ok()
        .unwrap_err();
    assert_eq!(err.failure_key(), "BAD");
}

#[tokio::test]
async fn wrong_tag_and_unexpected_continuation_are_protocol_errors() {
    let mut reader = &b"* 1 EXISTS\r\nL7 OK done\r\n"[..];
    assert!(matches!(
        read_until_tagged(&mut reader, "L8", &limits()).await,
        Err(ImapError::Protocol(_))
    ));
    let mut reader = &b"+ go ahead\r\n"[..];
    assert!(matches!(
        read_until_tagged(&mut reader, "L8", &limits()).await,
        Err(ImapError::Protocol(_))
    ));
}

#[tokio::test]
async fn bye_then_close_is_reported_as_bye() {
    let mut reader = &b"* BYE Autologout; idle for too long\r\n"[..];
    match read_until_tagged(&mut reader, "L3", &limits()).await {
        Err(ImapError::Bye(text)) => assert_eq!(text, "BYE Autologout; idle for too long"),
        other => panic!("{other:?}"),
    }
    // BYE followed by the tagged OK (a normal LOGOUT) is a normal exchange.
    let mut reader = &b"* BYE logging out\r\nL4 OK LOGOUT completed\r\n"[..];
    let ex = read_until_tagged(&mut reader, "L4", &limits())
        .await
        .unwrap();
    assert_eq!(ex.untagged[0].status(), Some(Status::Bye));
}

#[tokio::test]
async fn continuation_requests() {
    let mut reader =
        &b"* 3 EXISTS\r\n+ Ready for literal data\r\nL5 OK [APPENDUID 1 9] done\r\n"[..];
    let n = read_until_continuation(&mut reader, "L5", &limits())
        .await
        .unwrap();
    assert_eq!(n, b"* 3 EXISTS\r\n+ Ready for literal data\r\n".len());
    let ex = read_until_tagged(&mut reader, "L5", &limits())
        .await
        .unwrap();
    assert_eq!(ex.done.code(), Some("APPENDUID"));
    // A bare "+" line is a continuation request too.
    let mut reader = &b"+\r\n"[..];
    let r = mailfleet_load_tests::imap::read_response(&mut reader, &limits())
        .await
        .unwrap();
    assert_eq!((&r.kind, r.text()), (&ResponseKind::Continuation, ""));
    // The server refuses the literal up front.
    let mut reader = &b"L6 NO [TOOBIG] Literal too large\r\n"[..];
    let err = read_until_continuation(&mut reader, "L6", &limits())
        .await
        .unwrap_err();
    assert_eq!(err.failure_key(), "NO [TOOBIG]");
}

#[tokio::test]
async fn truncated_input_is_an_eof_error() {
    for input in [
        &b""[..],
        b"* 1 FETCH (BODY[] {10}\r\nshort",
        b"* 1 FETCH (BODY[] {3}\r\nabc",
        b"L1 OK no newline",
    ] {
        let mut reader = input;
        match read_response(&mut reader, &limits()).await {
            Err(ImapError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{input:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn limits_are_enforced() {
    let small = ReadLimits {
        max_line: 64,
        max_literal: 16,
        max_response: 100,
    };
    let long_line = [b"* OK ".as_slice(), &[b'x'; 100], b"\r\n"].concat();
    let mut reader = &long_line[..];
    assert!(matches!(
        read_response(&mut reader, &small).await,
        Err(ImapError::Protocol(_))
    ));
    let mut reader = &b"* 1 FETCH (BODY[] {17}\r\n"[..];
    assert!(matches!(
        read_response(&mut reader, &small).await,
        Err(ImapError::Protocol(_))
    ));
    let mut reader = &b"* 1 FETCH (BODY[] {16}\r\n0123456789abcdef)\r\n"[..];
    assert_eq!(
        read_response(&mut reader, &small)
            .await
            .unwrap()
            .literal_bytes(),
        16
    );
}

#[tokio::test]
async fn bare_lf_and_malformed_lines() {
    let mut reader = &b"* 2 EXISTS\nL1 OK done\n"[..];
    let ex = read_until_tagged(&mut reader, "L1", &limits())
        .await
        .unwrap();
    assert_eq!(exists_count(&ex.untagged), Some(2));
    for bad in [&b"\r\n"[..], b"(oops\r\n", b" OK\r\n"] {
        let mut reader = bad;
        assert!(
            matches!(
                read_response(&mut reader, &limits()).await,
                Err(ImapError::Protocol(_))
            ),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn search_results() {
    let input = b"* SEARCH 1 2 3 10\r\n* SEARCH 11 (MODSEQ 917162500)\r\n\
                  * ESEARCH (TAG \"L4\") UID ALL 20:22,30\r\nL4 OK done\r\n";
    let mut reader = &input[..];
    let ex = read_until_tagged(&mut reader, "L4", &limits())
        .await
        .unwrap();
    assert_eq!(
        search_uids(&ex.untagged),
        vec![1, 2, 3, 10, 11, 20, 21, 22, 30]
    );
    let mut out = Vec::new();
    expand_sequence_set("5:3,*,x,9", &mut out);
    assert_eq!(out, vec![3, 4, 5, 9]);
}

#[test]
fn announcements() {
    assert_eq!(literal_announcement(b"BODY[] {1024}"), Some(1024));
    assert_eq!(literal_announcement(b"BODY[] {1024} "), None);
    assert_eq!(literal_announcement(b"OK done"), None);
}
