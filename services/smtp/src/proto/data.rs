//! The DATA receiver: finds the end of the message and removes dot-stuffing.
//!
//! # Smuggling
//! SMTP smuggling works when two servers disagree about where DATA ends: a sender hides
//! `<LF>.<LF>` (or `<CR>.<CR>`, `<LF>.<CR><LF>`...) in a message, one server treats it as
//! the end and the next one does not, so the rest is read as a second message. Mailfleet
//! ends DATA on exactly one sequence: `<CR><LF>.<CR><LF>`, where the first `<CR><LF>` may be
//! the one that ended the `DATA` command. Every other variant is message content. Content
//! lines ending in a bare LF (and bare CRs) are later rewritten to CRLF by the cleanup stage,
//! so a stored message never carries a line end that another server could read differently,
//! and a dot line that came from such a variant is dot-stuffed again whenever the message is
//! relayed.
//!
//! The receiver is incremental: feed it whatever bytes arrived; it returns how many it used,
//! leaving bytes after the end (pipelined commands) to the caller.
//!
//! # Memory
//! The message is decoded into one [`BytesMut`], reserved up front to the size the client
//! declared (see [`DataReceiver::with_capacity`]); that buffer is the message from here to
//! the store (the pipeline edits it in place and freezes it). [`DataReceiver::len`] tells
//! the caller how much it holds, so the caller can charge it to a memory budget, and
//! [`DataReceiver::discard`] drops it when the budget says no, while the rest of the
//! message is still read to its end.

use bytes::BytesMut;

/// Most capacity [`DataReceiver::with_capacity`] allocates beyond the size limit.
pub const SPARE: usize = 4096;

/// How DATA ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataEnd {
    /// The message, dot-stuffing removed, line ends as received.
    Complete(BytesMut),
    /// The message was not kept: it exceeded the size limit, or the caller called
    /// [`DataReceiver::discard`]. Its bytes were read and thrown away up to the end.
    TooBig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line; `crlf` tells whether the previous line ended in CRLF.
    LineStart { crlf: bool },
    /// Read a `.` at the start of a line.
    Dot { crlf: bool },
    /// Read `.<CR>` at the start of a line.
    DotCr { crlf: bool },
    /// Inside a line.
    Body,
    /// Read a `<CR>` inside a line.
    Cr,
}

#[derive(Debug)]
pub struct DataReceiver {
    state: State,
    out: BytesMut,
    max: usize,
    too_big: bool,
    /// Whether any bare CR or LF was seen (logged: it is how smuggling attempts look).
    pub saw_bare_line_end: bool,
}

impl DataReceiver {
    /// A receiver for a message of at most `max` bytes (after un-stuffing).
    pub fn new(max: usize) -> Self {
        Self::with_capacity(max, max.min(64 * 1024))
    }

    /// A receiver whose buffer is allocated for `capacity` bytes up front, so a message of
    /// the size the client declared is decoded without reallocating. The capacity is capped
    /// at `max` plus [`SPARE`]: room for what the caller adds to the message afterwards.
    pub fn with_capacity(max: usize, capacity: usize) -> Self {
        Self {
            state: State::LineStart { crlf: true },
            out: BytesMut::with_capacity(capacity.min(max.saturating_add(SPARE))),
            max,
            too_big: false,
            saw_bare_line_end: false,
        }
    }

    /// Decoded bytes held so far (0 once discarding).
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Whether the message is being thrown away (too big, or [`Self::discard`]ed).
    pub fn is_discarding(&self) -> bool {
        self.too_big
    }

    /// Frees what was decoded and keeps nothing more; the end is still found (so the bytes
    /// after it are read as commands) and reported as [`DataEnd::TooBig`]. The caller knows
    /// why it discarded and answers accordingly.
    pub fn discard(&mut self) {
        self.too_big = true;
        self.out = BytesMut::new();
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.too_big {
            return;
        }
        if self.out.len() + bytes.len() > self.max {
            self.discard();
            return;
        }
        self.out.extend_from_slice(bytes);
    }

    /// Consumes bytes from `input`. Returns the number consumed and, once the end sequence
    /// has been read, the result.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<DataEnd>) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::LineStart { crlf }, b'.') => State::Dot { crlf },
                (State::LineStart { .. }, b'\r') => State::Cr,
                (State::LineStart { .. }, b'\n') => {
                    self.saw_bare_line_end = true;
                    self.emit(b"\n");
                    State::LineStart { crlf: false }
                }
                (State::LineStart { .. }, b) => {
                    self.emit(&[b]);
                    State::Body
                }
                (State::Dot { crlf }, b'\r') => State::DotCr { crlf },
                (State::Dot { .. }, b'\n') => {
                    // ".<LF>": a lone dot ended by a bare LF is content, never the end.
                    self.saw_bare_line_end = true;
                    self.emit(b".\n");
                    State::LineStart { crlf: false }
                }
                (State::Dot { .. }, b) => {
                    // RFC 5321 §4.5.2: a leading dot followed by more text is removed.
                    self.emit(&[b]);
                    State::Body
                }
                (State::DotCr { crlf: true }, b'\n') => {
                    let out = std::mem::take(&mut self.out);
                    let end = if self.too_big {
                        DataEnd::TooBig
                    } else {
                        DataEnd::Complete(out)
                    };
                    self.state = State::LineStart { crlf: true };
                    return (i, Some(end));
                }
                (State::DotCr { crlf: false }, b'\n') => {
                    // "<LF>.<CR><LF>": the dot line follows a bare LF, so it is content.
                    self.saw_bare_line_end = true;
                    self.emit(b".\r\n");
                    State::LineStart { crlf: true }
                }
                (State::DotCr { .. }, _) => {
                    // ".<CR>x": a bare CR after a stuffed dot; the dot is removed as text
                    // follows, the CR is content, and `x` is processed as inside the line.
                    self.saw_bare_line_end = true;
                    self.emit(b"\r");
                    i -= 1;
                    State::Body
                }
                (State::Body, b'\r') => State::Cr,
                (State::Body, b'\n') => {
                    self.saw_bare_line_end = true;
                    self.emit(b"\n");
                    State::LineStart { crlf: false }
                }
                (State::Body, b) => {
                    self.emit(&[b]);
                    State::Body
                }
                (State::Cr, b'\n') => {
                    self.emit(b"\r\n");
                    State::LineStart { crlf: true }
                }
                (State::Cr, _) => {
                    // A bare CR is content, never a line end: `<CR>.<CR>` cannot end DATA.
                    self.saw_bare_line_end = true;
                    self.emit(b"\r");
                    i -= 1;
                    State::Body
                }
            };
        }
        (i, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` one byte at a time and all at once; both must agree.
    fn run(input: &[u8], max: usize) -> (usize, Option<DataEnd>) {
        let mut whole = DataReceiver::new(max);
        let a = whole.feed(input);
        let mut bytewise = DataReceiver::new(max);
        let mut used = 0;
        let mut end = None;
        for chunk in input.chunks(1) {
            let (n, e) = bytewise.feed(chunk);
            used += n;
            if e.is_some() {
                end = e;
                break;
            }
        }
        assert_eq!(a, (used, end.clone()), "chunking changes nothing");
        a
    }

    fn complete(input: &[u8]) -> Vec<u8> {
        match run(input, 1 << 20) {
            (_, Some(DataEnd::Complete(v))) => v.to_vec(),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn simple_message_and_unstuffing() {
        assert_eq!(
            complete(b"Subject: x\r\n\r\nhi\r\n.\r\n"),
            b"Subject: x\r\n\r\nhi\r\n"
        );
        assert_eq!(complete(b"..leading\r\n.\r\n"), b".leading\r\n");
        assert_eq!(complete(b".\r\n"), b"", "empty message");
        assert_eq!(complete(b"a\r\n..\r\n.\r\n"), b"a\r\n.\r\n");
    }

    #[test]
    fn leftover_is_not_consumed() {
        let input = b"body\r\n.\r\nMAIL FROM:<x@y>\r\n";
        let (used, end) = run(input, 1024);
        assert_eq!(&input[used..], b"MAIL FROM:<x@y>\r\n");
        assert_eq!(
            end,
            Some(DataEnd::Complete(BytesMut::from(&b"body\r\n"[..])))
        );
    }

    /// Hardening item 9: the caller can see what is held and drop it mid-message (its
    /// memory budget ran out); the end is still found, so pipelined commands survive.
    #[test]
    fn discard_frees_the_message_and_still_finds_the_end() {
        let mut r = DataReceiver::with_capacity(1 << 20, 4096);
        assert!(r.out.capacity() >= 4096, "reserved to the declared size");
        let (used, end) = r.feed(b"Subject: x\r\n\r\n..abc\r\n");
        assert_eq!((used, end), (21, None));
        assert_eq!(r.len(), b"Subject: x\r\n\r\n.abc\r\n".len());
        r.discard();
        assert!(r.is_discarding() && r.is_empty());
        let input = b"more\r\n.\r\nRSET\r\n";
        let (used, end) = r.feed(input);
        assert_eq!(end, Some(DataEnd::TooBig));
        assert_eq!(&input[used..], b"RSET\r\n");
    }

    #[test]
    fn smuggling_sequences_never_end_data() {
        for seq in [
            &b"\n.\n"[..],
            b"\r.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\n.\r",
            b"\r.\n",
        ] {
            let mut msg = b"Subject: a\r\n\r\nfirst".to_vec();
            msg.extend_from_slice(seq);
            msg.extend_from_slice(b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nSubject: b\r\n");
            let mut r = DataReceiver::new(1 << 20);
            let (used, end) = r.feed(&msg);
            assert_eq!(used, msg.len(), "{seq:?} must not end DATA");
            assert!(end.is_none(), "{seq:?} must not end DATA");
            let (_, end) = r.feed(b"\r\n.\r\n");
            let Some(DataEnd::Complete(body)) = end else {
                panic!("real end not found after {seq:?}");
            };
            assert!(
                body.windows(18).any(|w| w == b"MAIL FROM:<evil@x>"),
                "the smuggled commands stay inside the one message"
            );
            assert!(r.saw_bare_line_end || seq == b"\r\n.\r");
        }
    }

    #[test]
    fn size_limit_drains_to_the_end() {
        let mut msg = vec![b'a'; 5000];
        msg.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
        let (used, end) = run(&msg, 1000);
        assert_eq!(end, Some(DataEnd::TooBig));
        assert_eq!(&msg[used..], b"QUIT\r\n");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: pseudo-random bytes biased to the interesting ones.
        let alphabet = [b'\r', b'\n', b'.', b'a', 0, 0xff];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let (used, end) = run(&buf, 32);
            assert!(used <= buf.len());
            if let Some(DataEnd::Complete(v)) = end {
                assert!(v.len() <= 32);
            }
        }
    }
}
