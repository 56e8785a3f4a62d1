//! ManageSieve as bytes and values, free of sockets (RFC 5804 §4).
//!
//! - [`Framer`]: turns the bytes a client sends into whole commands: atoms, quoted strings
//!   and literals (`{n+}` as RFC 5804 has them, `{n}` accepted the same way: ManageSieve
//!   has no continuation for literals), each bounded: the line outside literals by
//!   `max_line`, a literal by `max_literal`. An over-long line is thrown away up to its LF;
//!   an over-large literal is skipped without being buffered, with the rest of its line.
//! - [`Command`]: a framed command checked against the grammar of each verb.
//! - Responses: `OK`/`NO`/`BYE` with response codes ([`Code`]), strings as quoted strings
//!   or literals ([`string`]), capability lines.

/// Longest digit run accepted in a literal's length or a number.
const MAX_DIGITS: usize = 10;
/// RFC 5804 §4: `quoted = DQUOTE *1024QUOTED-CHAR DQUOTE`; longer text goes as a literal.
pub const MAX_QUOTED: usize = 1024;

/// One argument of a command line.
#[derive(Clone, PartialEq, Eq)]
pub enum Token {
    Atom(String),
    /// A quoted string (unescaped) or a literal's octets.
    Str(Vec<u8>),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Atom(a) => write!(f, "Atom({a:?})"),
            Token::Str(s) if s.len() > 64 => write!(f, "Str(<{} octets>)", s.len()),
            Token::Str(s) => write!(f, "Str({:?})", String::from_utf8_lossy(s)),
        }
    }
}

/// What the framer produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole command (or a SASL response line); empty for an empty line.
    Command(Vec<Token>),
    /// The line outside literals passed `max_line`; it was discarded up to its LF.
    TooLong,
    /// A literal of this many octets passed `max_literal`; it was skipped with the rest
    /// of its line.
    LiteralTooLarge(u64),
    /// The line does not follow the grammar; it was discarded up to its LF.
    Syntax(&'static str),
}

/// The framer's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Longest stretch of a command line outside literals, line end included.
    pub max_line: usize,
    /// Largest literal.
    pub max_literal: usize,
}

enum Scan {
    Incomplete,
    Complete(Vec<Token>, usize),
    TooLong,
    /// The literal's announced size, and where its octets start.
    LiteralTooLarge(u64, usize),
    Syntax(&'static str),
}

/// A buffer of received bytes, read by whole commands.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    limits: FrameLimits,
    /// Octets of an over-large literal still to drop.
    skip: u64,
    /// Dropping input up to the next LF, then reporting `pending`.
    discard_line: bool,
    pending: Option<Frame>,
}

impl Framer {
    pub fn new(limits: FrameLimits) -> Self {
        Self {
            buf: Vec::new(),
            limits: FrameLimits {
                max_line: limits.max_line.max(3),
                ..limits
            },
            skip: 0,
            discard_line: false,
            pending: None,
        }
    }

    /// Changes the literal bound (larger after login); applies from the next command.
    pub fn set_max_literal(&mut self, max_literal: usize) {
        self.limits.max_literal = max_literal;
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received and not consumed yet (a pipelined command, a partial one).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forgets everything buffered: after STARTTLS, what came in plaintext behind the
    /// command is never read as if it had come over TLS.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.skip = 0;
        self.discard_line = false;
        self.pending = None;
    }

    /// The next frame, or `None` when more input is needed. Memory stays bounded by
    /// `max_line + max_literal` plus one read, whatever the client sends.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                self.buf.drain(..n);
                self.skip -= n as u64;
                if self.skip > 0 {
                    return None;
                }
            }
            if self.discard_line {
                match self.buf.iter().position(|b| *b == b'\n') {
                    Some(pos) => {
                        self.buf.drain(..=pos);
                        self.discard_line = false;
                        return self.pending.take();
                    }
                    None => {
                        self.buf.clear();
                        return None;
                    }
                }
            }
            match scan(&self.buf, self.limits) {
                Scan::Incomplete => return None,
                Scan::Complete(tokens, used) => {
                    self.buf.drain(..used);
                    return Some(Frame::Command(tokens));
                }
                Scan::TooLong => {
                    self.discard_line = true;
                    self.pending = Some(Frame::TooLong);
                }
                Scan::LiteralTooLarge(size, start) => {
                    self.buf.drain(..start);
                    self.skip = size;
                    self.discard_line = true;
                    self.pending = Some(Frame::LiteralTooLarge(size));
                }
                Scan::Syntax(why) => {
                    self.discard_line = true;
                    self.pending = Some(Frame::Syntax(why));
                }
            }
        }
    }
}

/// RFC 5804 `ATOM-CHAR`: printable ASCII except the specials.
fn atom_char(b: u8) -> bool {
    (0x21..0x7f).contains(&b)
        && !matches!(b, b'(' | b')' | b'{' | b'}' | b'"' | b'\\' | b'%' | b'*')
}

/// Scans one command from the start of `buf`.
fn scan(buf: &[u8], limits: FrameLimits) -> Scan {
    let mut tokens = Vec::new();
    let mut pos = 0usize;
    // Where the current stretch of line (outside literals) started.
    let mut seg = 0usize;
    loop {
        if pos - seg >= limits.max_line {
            return Scan::TooLong;
        }
        let Some(&c) = buf.get(pos) else {
            return Scan::Incomplete;
        };
        match c {
            b'\r' => {
                return match buf.get(pos + 1) {
                    None => Scan::Incomplete,
                    Some(b'\n') => Scan::Complete(tokens, pos + 2),
                    Some(_) => Scan::Syntax("CR without LF"),
                }
            }
            b'\n' => return Scan::Complete(tokens, pos + 1),
            b'"' => {
                let mut out = Vec::new();
                let mut i = pos + 1;
                loop {
                    if i - seg >= limits.max_line {
                        return Scan::TooLong;
                    }
                    let Some(&b) = buf.get(i) else {
                        return Scan::Incomplete;
                    };
                    match b {
                        b'"' => break,
                        b'\\' => match buf.get(i + 1) {
                            None => return Scan::Incomplete,
                            Some(&e @ (b'"' | b'\\')) => {
                                out.push(e);
                                i += 1;
                            }
                            Some(_) => return Scan::Syntax("bad escape in a quoted string"),
                        },
                        b'\r' | b'\n' | 0 => {
                            return Scan::Syntax("unterminated quoted string");
                        }
                        _ => out.push(b),
                    }
                    i += 1;
                }
                if out.len() > MAX_QUOTED {
                    return Scan::Syntax("quoted string longer than 1024 octets; use a literal");
                }
                tokens.push(Token::Str(out));
                pos = i + 1;
            }
            b'{' => {
                let digits = buf[pos + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let mut i = pos + 1 + digits;
                if digits == 0 {
                    return if i >= buf.len() {
                        Scan::Incomplete
                    } else {
                        Scan::Syntax("bad literal")
                    };
                }
                if digits > MAX_DIGITS {
                    return Scan::Syntax("bad literal length");
                }
                if buf.get(i) == Some(&b'+') {
                    i += 1;
                }
                match buf.get(i) {
                    None => return Scan::Incomplete,
                    Some(b'}') => i += 1,
                    Some(_) => return Scan::Syntax("bad literal"),
                }
                match (buf.get(i), buf.get(i + 1)) {
                    (None, _) | (Some(b'\r'), None) => return Scan::Incomplete,
                    (Some(b'\r'), Some(b'\n')) => i += 2,
                    (Some(b'\n'), _) => i += 1,
                    _ => return Scan::Syntax("a literal's length must end its line"),
                }
                let text = std::str::from_utf8(&buf[pos + 1..pos + 1 + digits]).unwrap_or("");
                let Ok(size) = text.parse::<u64>() else {
                    return Scan::Syntax("bad literal length");
                };
                if size > limits.max_literal as u64 {
                    return Scan::LiteralTooLarge(size, i);
                }
                let size = size as usize;
                if buf.len() < i + size {
                    return Scan::Incomplete;
                }
                tokens.push(Token::Str(buf[i..i + size].to_vec()));
                pos = i + size;
                seg = pos;
            }
            _ if atom_char(c) => {
                let len = buf[pos..].iter().take_while(|b| atom_char(**b)).count();
                let atom = String::from_utf8_lossy(&buf[pos..pos + len]).into_owned();
                tokens.push(Token::Atom(atom));
                pos += len;
            }
            b' ' if tokens.is_empty() => return Scan::Syntax("line starts with a space"),
            _ => return Scan::Syntax("unexpected character"),
        }
        // After a token: a space and the next one, or the line end.
        match buf.get(pos) {
            None => {
                if pos - seg >= limits.max_line {
                    return Scan::TooLong;
                }
                return Scan::Incomplete;
            }
            // A trailing space before the line end is tolerated (some clients send one).
            Some(b' ') => pos += 1,
            Some(b'\r' | b'\n') => {}
            Some(_) => return Scan::Syntax("arguments must be separated by a space"),
        }
    }
}

/// A command, checked against its verb's grammar.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    Authenticate {
        mechanism: String,
        /// The initial response, still base64.
        initial: Option<Vec<u8>>,
    },
    StartTls,
    Logout,
    Capability,
    /// `NOOP [tag]`: the tag comes back in a `(TAG ...)` code (RFC 5804 §2.13).
    Noop(Option<Vec<u8>>),
    HaveSpace {
        name: String,
        size: u64,
    },
    PutScript {
        name: String,
        script: Vec<u8>,
    },
    ListScripts,
    /// An empty name deactivates.
    SetActive(String),
    GetScript(String),
    DeleteScript(String),
    RenameScript {
        from: String,
        to: String,
    },
    CheckScript(Vec<u8>),
    Unauthenticate,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never let a credential reach a log through Debug.
            Command::Authenticate { mechanism, initial } => write!(
                f,
                "Authenticate({mechanism}{})",
                if initial.is_some() {
                    ", <initial response>"
                } else {
                    ""
                }
            ),
            Command::PutScript { name, script } => {
                write!(f, "PutScript({name:?}, <{} octets>)", script.len())
            }
            Command::CheckScript(s) => write!(f, "CheckScript(<{} octets>)", s.len()),
            Command::HaveSpace { name, size } => write!(f, "HaveSpace({name:?}, {size})"),
            Command::SetActive(n) => write!(f, "SetActive({n:?})"),
            Command::GetScript(n) => write!(f, "GetScript({n:?})"),
            Command::DeleteScript(n) => write!(f, "DeleteScript({n:?})"),
            Command::RenameScript { from, to } => write!(f, "RenameScript({from:?}, {to:?})"),
            Command::Noop(t) => write!(f, "Noop({:?})", t.as_deref().map(String::from_utf8_lossy)),
            other => f.write_str(other.name()),
        }
    }
}

/// Why a command line is not a command; each maps to one `NO`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command")]
    Unknown,
    #[error("{0}")]
    Syntax(&'static str),
}

fn utf8(bytes: Vec<u8>, what: &'static str) -> Result<String, CommandError> {
    String::from_utf8(bytes).map_err(|_| CommandError::Syntax(what))
}

fn name_arg(t: Token) -> Result<String, CommandError> {
    match t {
        Token::Str(s) => utf8(s, "script names must be UTF-8"),
        Token::Atom(_) => Err(CommandError::Syntax(
            "script names are strings (quoted or literal)",
        )),
    }
}

fn string_arg(t: Token) -> Result<Vec<u8>, CommandError> {
    match t {
        Token::Str(s) => Ok(s),
        Token::Atom(_) => Err(CommandError::Syntax(
            "a string (quoted or literal) is required",
        )),
    }
}

impl Command {
    /// The verb as the client spells it in upper case (for logs and spans).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Authenticate { .. } => "AUTHENTICATE",
            Command::StartTls => "STARTTLS",
            Command::Logout => "LOGOUT",
            Command::Capability => "CAPABILITY",
            Command::Noop(_) => "NOOP",
            Command::HaveSpace { .. } => "HAVESPACE",
            Command::PutScript { .. } => "PUTSCRIPT",
            Command::ListScripts => "LISTSCRIPTS",
            Command::SetActive(_) => "SETACTIVE",
            Command::GetScript(_) => "GETSCRIPT",
            Command::DeleteScript(_) => "DELETESCRIPT",
            Command::RenameScript { .. } => "RENAMESCRIPT",
            Command::CheckScript(_) => "CHECKSCRIPT",
            Command::Unauthenticate => "UNAUTHENTICATE",
        }
    }

    /// Checks a framed line (not empty) against the grammar. Verbs are case-insensitive.
    pub fn parse(tokens: Vec<Token>) -> Result<Command, CommandError> {
        let mut it = tokens.into_iter();
        let verb = match it.next() {
            Some(Token::Atom(a)) => a.to_ascii_uppercase(),
            Some(Token::Str(_)) => {
                return Err(CommandError::Syntax("a command starts with its name"))
            }
            None => return Err(CommandError::Syntax("empty command")),
        };
        let args: Vec<Token> = it.collect();
        let n = args.len();
        let mut args = args.into_iter();
        let mut arg = || args.next().ok_or(CommandError::Syntax("missing argument"));
        let arity = |want: std::ops::RangeInclusive<usize>| {
            if want.contains(&n) {
                Ok(())
            } else if n < *want.start() {
                Err(CommandError::Syntax("missing argument"))
            } else {
                Err(CommandError::Syntax("too many arguments"))
            }
        };
        match verb.as_str() {
            "AUTHENTICATE" => {
                arity(1..=2)?;
                let mechanism = match arg()? {
                    Token::Atom(a) => a,
                    Token::Str(s) => utf8(s, "bad mechanism name")?,
                };
                let initial = if n == 2 {
                    Some(string_arg(arg()?)?)
                } else {
                    None
                };
                Ok(Command::Authenticate {
                    mechanism: mechanism.to_ascii_uppercase(),
                    initial,
                })
            }
            "STARTTLS" => arity(0..=0).map(|()| Command::StartTls),
            "LOGOUT" => arity(0..=0).map(|()| Command::Logout),
            "CAPABILITY" => arity(0..=0).map(|()| Command::Capability),
            "LISTSCRIPTS" => arity(0..=0).map(|()| Command::ListScripts),
            "UNAUTHENTICATE" => arity(0..=0).map(|()| Command::Unauthenticate),
            "NOOP" => {
                arity(0..=1)?;
                let tag = if n == 1 {
                    Some(string_arg(arg()?)?)
                } else {
                    None
                };
                Ok(Command::Noop(tag))
            }
            "HAVESPACE" => {
                arity(2..=2)?;
                let name = name_arg(arg()?)?;
                let size = match arg()? {
                    Token::Atom(a)
                        if !a.is_empty()
                            && a.len() <= MAX_DIGITS
                            && a.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        a.parse().map_err(|_| CommandError::Syntax("bad number"))?
                    }
                    _ => return Err(CommandError::Syntax("HAVESPACE needs a name and a number")),
                };
                Ok(Command::HaveSpace { name, size })
            }
            "PUTSCRIPT" => {
                arity(2..=2)?;
                let name = name_arg(arg()?)?;
                let script = string_arg(arg()?)?;
                Ok(Command::PutScript { name, script })
            }
            "SETACTIVE" => {
                arity(1..=1)?;
                Ok(Command::SetActive(name_arg(arg()?)?))
            }
            "GETSCRIPT" => {
                arity(1..=1)?;
                Ok(Command::GetScript(name_arg(arg()?)?))
            }
            "DELETESCRIPT" => {
                arity(1..=1)?;
                Ok(Command::DeleteScript(name_arg(arg()?)?))
            }
            "RENAMESCRIPT" => {
                arity(2..=2)?;
                let from = name_arg(arg()?)?;
                let to = name_arg(arg()?)?;
                Ok(Command::RenameScript { from, to })
            }
            "CHECKSCRIPT" => {
                arity(1..=1)?;
                Ok(Command::CheckScript(string_arg(arg()?)?))
            }
            _ => Err(CommandError::Unknown),
        }
    }
}

/// RFC 5804 §1.3 response codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Code {
    AuthTooWeak,
    EncryptNeeded,
    Quota,
    QuotaMaxScripts,
    QuotaMaxSize,
    /// Final SASL server data (base64).
    Sasl(String),
    TransitionNeeded,
    TryLater,
    Active,
    NonExistent,
    AlreadyExists,
    Warnings,
    /// The tag of a NOOP.
    Tag(Vec<u8>),
}

impl Code {
    fn write(&self, out: &mut Vec<u8>) {
        let plain = match self {
            Code::AuthTooWeak => "AUTH-TOO-WEAK",
            Code::EncryptNeeded => "ENCRYPT-NEEDED",
            Code::Quota => "QUOTA",
            Code::QuotaMaxScripts => "QUOTA/MAXSCRIPTS",
            Code::QuotaMaxSize => "QUOTA/MAXSIZE",
            Code::TransitionNeeded => "TRANSITION-NEEDED",
            Code::TryLater => "TRYLATER",
            Code::Active => "ACTIVE",
            Code::NonExistent => "NONEXISTENT",
            Code::AlreadyExists => "ALREADYEXISTS",
            Code::Warnings => "WARNINGS",
            Code::Sasl(data) => {
                out.extend_from_slice(b"SASL ");
                out.extend_from_slice(&string(data.as_bytes()));
                return;
            }
            Code::Tag(tag) => {
                out.extend_from_slice(b"TAG ");
                out.extend_from_slice(&string(tag));
                return;
            }
        };
        out.extend_from_slice(plain.as_bytes());
    }
}

/// A string as the server sends it: quoted when it can be, else a literal (`{n}` CRLF
/// octets, RFC 5804 `literal-s2c`).
pub fn string(s: &[u8]) -> Vec<u8> {
    let quotable = s.len() <= MAX_QUOTED
        && std::str::from_utf8(s).is_ok()
        && !s.iter().any(|b| matches!(b, b'\r' | b'\n' | 0));
    let mut out = Vec::with_capacity(s.len() + 16);
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
        out.extend_from_slice(s);
    }
    out
}

/// The three statuses a response ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bye,
}

/// `OK|NO|BYE [(code)] ["text"]` CRLF.
pub fn response(status: Status, code: Option<Code>, text: &str) -> Vec<u8> {
    let mut out = match status {
        Status::Ok => b"OK".to_vec(),
        Status::No => b"NO".to_vec(),
        Status::Bye => b"BYE".to_vec(),
    };
    if let Some(c) = code {
        out.extend_from_slice(b" (");
        c.write(&mut out);
        out.push(b')');
    }
    if !text.is_empty() {
        out.push(b' ');
        out.extend_from_slice(&string(text.as_bytes()));
    }
    out.extend_from_slice(b"\r\n");
    out
}

pub fn ok(text: &str) -> Vec<u8> {
    response(Status::Ok, None, text)
}

pub fn no(code: Option<Code>, text: &str) -> Vec<u8> {
    response(Status::No, code, text)
}

pub fn bye(code: Option<Code>, text: &str) -> Vec<u8> {
    response(Status::Bye, code, text)
}

/// One capability line: `"NAME"` or `"NAME" "value"`.
pub fn capability_line(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    out.extend_from_slice(&string(name.as_bytes()));
    if let Some(v) = value {
        out.push(b' ');
        out.extend_from_slice(&string(v.as_bytes()));
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_line: 64,
        max_literal: 100,
    };

    fn frames(input: &[u8]) -> Vec<Frame> {
        let mut f = Framer::new(LIMITS);
        f.push(input);
        std::iter::from_fn(|| f.next_frame()).collect()
    }

    fn atom(s: &str) -> Token {
        Token::Atom(s.into())
    }

    fn st(s: &str) -> Token {
        Token::Str(s.as_bytes().to_vec())
    }

    fn parse(input: &str) -> Result<Command, CommandError> {
        match frames(input.as_bytes()).pop() {
            Some(Frame::Command(t)) => Command::parse(t),
            other => panic!("{input:?}: {other:?}"),
        }
    }

    #[test]
    fn atoms_quoted_strings_and_literals() {
        assert_eq!(
            frames(b"PUTSCRIPT \"a \\\"b\\\\\" {5+}\r\nhello\r\nlogout\n"),
            vec![
                Frame::Command(vec![atom("PUTSCRIPT"), st("a \"b\\"), st("hello")]),
                Frame::Command(vec![atom("logout")]),
            ]
        );
        // A synchronizing-style literal is taken the same way, and may hold line ends.
        assert_eq!(
            frames(b"CHECKSCRIPT {4}\r\na\r\nb\r\n"),
            vec![Frame::Command(vec![atom("CHECKSCRIPT"), st("a\r\nb")])]
        );
        assert_eq!(frames(b"\r\n"), vec![Frame::Command(vec![])]);
        assert_eq!(
            frames(b"NOOP \r\n"),
            vec![Frame::Command(vec![atom("NOOP")])]
        );
    }

    #[test]
    fn input_arrives_in_pieces() {
        let input = b"PUTSCRIPT \"x\" {12+}\r\nkeep;\r\nstop;\r\nNOOP\r\n";
        for split in 0..input.len() {
            let mut f = Framer::new(LIMITS);
            let mut got = Vec::new();
            f.push(&input[..split]);
            got.extend(std::iter::from_fn(|| f.next_frame()));
            f.push(&input[split..]);
            got.extend(std::iter::from_fn(|| f.next_frame()));
            assert_eq!(
                got,
                vec![
                    Frame::Command(vec![atom("PUTSCRIPT"), st("x"), st("keep;\r\nstop;")]),
                    Frame::Command(vec![atom("NOOP")]),
                ],
                "split at {split}"
            );
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn limits_discard_and_resynchronize() {
        let long = format!("NOOP \"{}\"\r\nLOGOUT\r\n", "x".repeat(100));
        assert_eq!(
            frames(long.as_bytes()),
            vec![Frame::TooLong, Frame::Command(vec![atom("LOGOUT")])]
        );
        // An over-large literal is skipped, not buffered, and the next command is read.
        let big = format!(
            "PUTSCRIPT \"s\" {{200+}}\r\n{}\r\nLOGOUT\r\n",
            "y".repeat(200)
        );
        let mut f = Framer::new(LIMITS);
        let mut got = Vec::new();
        for chunk in big.as_bytes().chunks(16) {
            f.push(chunk);
            assert!(f.buffered() <= LIMITS.max_line + LIMITS.max_literal + 16);
            got.extend(std::iter::from_fn(|| f.next_frame()));
        }
        assert_eq!(
            got,
            vec![
                Frame::LiteralTooLarge(200),
                Frame::Command(vec![atom("LOGOUT")])
            ]
        );
        // A literal resets the line length: a big script after a short line is fine.
        let mut f = Framer::new(FrameLimits {
            max_line: 16,
            max_literal: 1000,
        });
        f.push(format!("CHECKSCRIPT {{500+}}\r\n{}\r\n", "z".repeat(500)).as_bytes());
        assert!(matches!(f.next_frame(), Some(Frame::Command(t)) if t.len() == 2));
        // An endless line without LF is bounded too.
        let mut f = Framer::new(LIMITS);
        for _ in 0..100 {
            f.push(&[b'a'; 50]);
            let _ = f.next_frame();
            assert!(f.buffered() <= 64 + 50);
        }
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            &b"NOOP \"unterminated\r\nLOGOUT\r\n"[..],
            b"NOOP \"bad \\x escape\"\r\nLOGOUT\r\n",
            b"NOOP {12a}\r\nLOGOUT\r\n",
            b"NOOP {3+} x\r\nLOGOUT\r\n",
            b"NOOP \"a\"\"b\"\r\nLOGOUT\r\n",
            b" NOOP\r\nLOGOUT\r\n",
            b"NOOP (x)\r\nLOGOUT\r\n",
            b"NOOP {99999999999}\r\nLOGOUT\r\n",
        ] {
            let got = frames(bad);
            assert!(matches!(got[0], Frame::Syntax(_)), "{bad:?}: {got:?}");
            assert_eq!(got[1], Frame::Command(vec![atom("LOGOUT")]), "{bad:?}");
        }
        let q = format!("NOOP \"{}\"\r\n", "q".repeat(1025));
        let mut f = Framer::new(FrameLimits {
            max_line: 4096,
            max_literal: 10,
        });
        f.push(q.as_bytes());
        assert!(matches!(f.next_frame(), Some(Frame::Syntax(_))));
    }

    #[test]
    fn commands() {
        assert_eq!(parse("capability\r\n"), Ok(Command::Capability));
        assert_eq!(
            parse("AUTHENTICATE \"PLAIN\" \"AGFAYgBj\"\r\n"),
            Ok(Command::Authenticate {
                mechanism: "PLAIN".into(),
                initial: Some(b"AGFAYgBj".to_vec())
            })
        );
        assert_eq!(
            parse("Authenticate login\r\n"),
            Ok(Command::Authenticate {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
        assert_eq!(
            parse("HAVESPACE \"myscript\" 999999\r\n"),
            Ok(Command::HaveSpace {
                name: "myscript".into(),
                size: 999_999
            })
        );
        assert_eq!(
            parse("PUTSCRIPT \"a\" {4+}\r\nkeep\r\n"),
            Ok(Command::PutScript {
                name: "a".into(),
                script: b"keep".to_vec()
            })
        );
        assert_eq!(
            parse("SETACTIVE \"\"\r\n"),
            Ok(Command::SetActive(String::new()))
        );
        assert_eq!(
            parse("RENAMESCRIPT \"a\" {1+}\r\nb\r\n"),
            Ok(Command::RenameScript {
                from: "a".into(),
                to: "b".into()
            })
        );
        assert_eq!(
            parse("NOOP \"t1\"\r\n"),
            Ok(Command::Noop(Some(b"t1".to_vec())))
        );
        assert_eq!(parse("LISTSCRIPTS\r\n"), Ok(Command::ListScripts));
        assert_eq!(parse("UNAUTHENTICATE\r\n"), Ok(Command::Unauthenticate));
        assert_eq!(parse("XYZZY\r\n"), Err(CommandError::Unknown));
        for bad in [
            "GETSCRIPT\r\n",
            "GETSCRIPT atomname\r\n",
            "GETSCRIPT \"a\" \"b\"\r\n",
            "HAVESPACE \"a\" -1\r\n",
            "HAVESPACE \"a\" 99999999999\r\n",
            "LOGOUT now\r\n",
            "\"PUTSCRIPT\"\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(CommandError::Syntax(_))),
                "{bad:?}"
            );
        }
        let Some(Frame::Command(t)) = frames(b"DELETESCRIPT {2+}\r\n\xff\xfe\r\n").pop() else {
            panic!("framed");
        };
        assert!(matches!(Command::parse(t), Err(CommandError::Syntax(_))));
        let debug = format!("{:?}", parse("AUTHENTICATE \"PLAIN\" \"c2VjcmV0\"\r\n"));
        assert!(!debug.contains("c2VjcmV0"), "{debug}");
    }

    #[test]
    fn responses() {
        assert_eq!(ok("Done"), b"OK \"Done\"\r\n");
        assert_eq!(ok(""), b"OK\r\n");
        assert_eq!(
            no(Some(Code::QuotaMaxSize), "too \"big\""),
            b"NO (QUOTA/MAXSIZE) \"too \\\"big\\\"\"\r\n"
        );
        assert_eq!(
            no(Some(Code::NonExistent), "a\r\nb"),
            b"NO (NONEXISTENT) {4}\r\na\r\nb\r\n"
        );
        assert_eq!(
            bye(Some(Code::TryLater), "bye"),
            b"BYE (TRYLATER) \"bye\"\r\n"
        );
        assert_eq!(
            response(Status::Ok, Some(Code::Tag(b"x".to_vec())), "Done"),
            b"OK (TAG \"x\") \"Done\"\r\n"
        );
        assert_eq!(
            response(Status::Ok, Some(Code::Sasl("AAA=".into())), ""),
            b"OK (SASL \"AAA=\")\r\n"
        );
        for (code, text) in [
            (Code::Active, "ACTIVE"),
            (Code::AlreadyExists, "ALREADYEXISTS"),
            (Code::Warnings, "WARNINGS"),
            (Code::QuotaMaxScripts, "QUOTA/MAXSCRIPTS"),
            (Code::EncryptNeeded, "ENCRYPT-NEEDED"),
        ] {
            let r = String::from_utf8(no(Some(code), "x")).expect("utf8");
            assert_eq!(r, format!("NO ({text}) \"x\"\r\n"));
        }
        let mut caps = Vec::new();
        capability_line(&mut caps, "IMPLEMENTATION", Some("Mailfleet"));
        capability_line(&mut caps, "STARTTLS", None);
        assert_eq!(
            caps,
            b"\"IMPLEMENTATION\" \"Mailfleet\"\r\n\"STARTTLS\"\r\n"
        );
        assert_eq!(string(&[0xff]), b"{1}\r\n\xff");
    }

    /// Multibyte characters and arbitrary bytes anywhere never panic the framer.
    #[test]
    fn arbitrary_input_never_panics() {
        let templates: [&[u8]; 4] = [
            b"PUTSCRIPT \"n\" {3+}\r\nabc\r\n",
            b"AUTHENTICATE \"PLAIN\" \"x\"\r\n",
            b"HAVESPACE \"n\" 10\r\n",
            b"NOOP {1}\r\n\"\r\n",
        ];
        for t in templates {
            for at in 0..=t.len() {
                for ins in [
                    &b"\xc3\xa9"[..],
                    b"{",
                    b"}",
                    b"\"",
                    b"\\",
                    b"\r",
                    b"\n",
                    b"\0",
                    b"{9",
                ] {
                    let mut v = t[..at].to_vec();
                    v.extend_from_slice(ins);
                    v.extend_from_slice(&t[at..]);
                    let mut f = Framer::new(LIMITS);
                    f.push(&v);
                    while let Some(fr) = f.next_frame() {
                        if let Frame::Command(tokens) = fr {
                            if !tokens.is_empty() {
                                let _ = Command::parse(tokens);
                            }
                        }
                    }
                }
            }
        }
    }
}
