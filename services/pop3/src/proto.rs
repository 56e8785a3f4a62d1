//! POP3 as bytes and values, free of sockets: command lines (RFC 1939 §3, RFC 2449,
//! RFC 2595, RFC 5034), status replies with RFC 2449/3206 response codes, and the
//! dot-stuffed multi-line responses of LIST, UIDL, RETR and TOP.

use std::fmt::Write;

/// Longest message-number or line-count argument, in digits.
const MAX_NUMBER_DIGITS: usize = 10;

/// A parsed command.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    Capa,
    User(String),
    Pass(String),
    /// `AUTH` alone lists mechanisms; otherwise the mechanism and an optional initial
    /// response (RFC 5034 §4).
    Auth(Option<(String, Option<String>)>),
    Apop,
    Stls,
    Stat,
    List(Option<u32>),
    Retr(u32),
    Top(u32, u64),
    Dele(u32),
    Noop,
    Rset,
    Uidl(Option<u32>),
    Quit,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Never let a password reach a log through Debug.
            Command::Pass(_) => f.write_str("Pass(<redacted>)"),
            Command::Auth(Some((m, Some(_)))) => write!(f, "Auth({m}, <initial response>)"),
            Command::Capa => f.write_str("Capa"),
            Command::User(u) => f.debug_tuple("User").field(u).finish(),
            Command::Auth(a) => f.debug_tuple("Auth").field(a).finish(),
            Command::Apop => f.write_str("Apop"),
            Command::Stls => f.write_str("Stls"),
            Command::Stat => f.write_str("Stat"),
            Command::List(n) => f.debug_tuple("List").field(n).finish(),
            Command::Retr(n) => f.debug_tuple("Retr").field(n).finish(),
            Command::Top(n, l) => f.debug_tuple("Top").field(n).field(l).finish(),
            Command::Dele(n) => f.debug_tuple("Dele").field(n).finish(),
            Command::Noop => f.write_str("Noop"),
            Command::Rset => f.write_str("Rset"),
            Command::Uidl(n) => f.debug_tuple("Uidl").field(n).finish(),
            Command::Quit => f.write_str("Quit"),
        }
    }
}

/// Why a line is not a command; each maps to one `-ERR`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command")]
    Unknown,
    #[error("{0}")]
    Syntax(&'static str),
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, CommandError> {
    if s.is_empty() || s.len() > MAX_NUMBER_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax("invalid number"));
    }
    s.parse()
        .map_err(|_| CommandError::Syntax("invalid number"))
}

impl Command {
    /// Parses one line without its line end. Keywords are case-insensitive (RFC 1939 §3).
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let line = std::str::from_utf8(line).map_err(|_| CommandError::Unknown)?;
        if line.chars().any(|c| c.is_control()) {
            return Err(CommandError::Syntax("control characters in command"));
        }
        let (keyword, rest) = match line.split_once(' ') {
            Some((k, r)) => (k, r),
            None => (line, ""),
        };
        let args: Vec<&str> = rest.split(' ').filter(|a| !a.is_empty()).collect();
        let none = |c: Command| {
            if args.is_empty() {
                Ok(c)
            } else {
                Err(CommandError::Syntax("no arguments allowed"))
            }
        };
        let one_number = || match args.as_slice() {
            [n] => number::<u32>(n),
            _ => Err(CommandError::Syntax("a message number is required")),
        };
        let optional_number = || match args.as_slice() {
            [] => Ok(None),
            [n] => number::<u32>(n).map(Some),
            _ => Err(CommandError::Syntax("too many arguments")),
        };
        match keyword.to_ascii_uppercase().as_str() {
            "CAPA" => none(Command::Capa),
            // The rest of the line, so names and passwords may contain spaces (RFC 1939 §7
            // lets servers accept that for PASS; Dovecot does the same for USER).
            "USER" if !rest.is_empty() => Ok(Command::User(rest.to_string())),
            "USER" => Err(CommandError::Syntax("a user name is required")),
            "PASS" if !rest.is_empty() => Ok(Command::Pass(rest.to_string())),
            "PASS" => Err(CommandError::Syntax("a password is required")),
            "AUTH" => match args.as_slice() {
                [] => Ok(Command::Auth(None)),
                [m] => Ok(Command::Auth(Some((m.to_string(), None)))),
                [m, initial] => Ok(Command::Auth(Some((
                    m.to_string(),
                    Some(initial.to_string()),
                )))),
                _ => Err(CommandError::Syntax("too many arguments")),
            },
            "APOP" => Ok(Command::Apop),
            "STLS" => none(Command::Stls),
            "STAT" => none(Command::Stat),
            "LIST" => optional_number().map(Command::List),
            "RETR" => one_number().map(Command::Retr),
            "TOP" => match args.as_slice() {
                [n, lines] => Ok(Command::Top(number(n)?, number(lines)?)),
                _ => Err(CommandError::Syntax(
                    "TOP needs a message number and a line count",
                )),
            },
            "DELE" => one_number().map(Command::Dele),
            "NOOP" => none(Command::Noop),
            "RSET" => none(Command::Rset),
            "UIDL" => optional_number().map(Command::Uidl),
            "QUIT" => none(Command::Quit),
            _ => Err(CommandError::Unknown),
        }
    }
}

/// An RFC 2449 §8 / RFC 3206 extended response code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The maildrop is locked by another session.
    InUse,
    /// Authentication failed because of the credentials (RFC 3206 §4).
    Auth,
    /// A temporary system problem (RFC 3206 §3).
    SysTemp,
    /// A permanent system problem.
    SysPerm,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::InUse => "IN-USE",
            Code::Auth => "AUTH",
            Code::SysTemp => "SYS/TEMP",
            Code::SysPerm => "SYS/PERM",
        }
    }
}

fn clean(text: &str) -> String {
    text.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

/// `+OK text\r\n`. Text is stripped of CR and LF so a reply can never inject a line.
pub fn ok(text: &str) -> Vec<u8> {
    if text.is_empty() {
        return b"+OK\r\n".to_vec();
    }
    format!("+OK {}\r\n", clean(text)).into_bytes()
}

/// `-ERR text\r\n`, or `-ERR [CODE] text\r\n`.
pub fn err(code: Option<Code>, text: &str) -> Vec<u8> {
    match code {
        Some(c) => format!("-ERR [{}] {}\r\n", c.as_str(), clean(text)).into_bytes(),
        None => format!("-ERR {}\r\n", clean(text)).into_bytes(),
    }
}

/// A SASL continuation (RFC 5034 §4): `+ base64\r\n` (`+ \r\n` when empty).
pub fn continuation(challenge: &str) -> Vec<u8> {
    format!("+ {}\r\n", clean(challenge)).into_bytes()
}

/// `+OK text`, then each line (dot-stuffed), then the terminating `.`.
pub fn multiline<I, S>(text: &str, lines: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    let _ = write!(out, "+OK {}\r\n", clean(text));
    for l in lines {
        let l = clean(l.as_ref());
        if l.starts_with('.') {
            out.push('.');
        }
        out.push_str(&l);
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    out.into_bytes()
}

/// Appends a message as a RETR/TOP body: every line ends in CRLF (a bare LF or CR in a
/// stored message is treated as a line end), lines starting with `.` get another `.`
/// (RFC 1939 §3), and the terminating `.` line follows. With `body_lines`, only the header
/// section, the blank line and that many body lines are sent (TOP).
pub fn write_message(out: &mut Vec<u8>, message: &[u8], body_lines: Option<u64>) {
    out.reserve(message.len() + message.len() / 32 + 8);
    let mut in_body = false;
    let mut body_sent = 0u64;
    let mut rest = message;
    while !rest.is_empty() {
        if in_body && body_lines.is_some_and(|n| body_sent >= n) {
            break;
        }
        let (line, next) = match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            Some(i) => {
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                (&rest[..i], &rest[i + skip..])
            }
            None => (rest, &rest[rest.len()..]),
        };
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        if in_body {
            body_sent += 1;
        } else if line.is_empty() {
            in_body = true;
        }
        rest = next;
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, CommandError> {
        Command::parse(s.as_bytes())
    }

    #[test]
    fn parses_commands() {
        assert_eq!(p("capa"), Ok(Command::Capa));
        assert_eq!(
            p("USER alice@example.test"),
            Ok(Command::User("alice@example.test".into()))
        );
        assert_eq!(
            p("PASS with spaces  inside"),
            Ok(Command::Pass("with spaces  inside".into()))
        );
        assert_eq!(p("AUTH"), Ok(Command::Auth(None)));
        assert_eq!(
            p("AUTH PLAIN AGFAYg=="),
            Ok(Command::Auth(Some((
                "PLAIN".into(),
                Some("AGFAYg==".into())
            ))))
        );
        assert_eq!(p("LIST"), Ok(Command::List(None)));
        assert_eq!(p("list 3"), Ok(Command::List(Some(3))));
        assert_eq!(p("TOP 1 10"), Ok(Command::Top(1, 10)));
        assert_eq!(p("RETR 2"), Ok(Command::Retr(2)));
        assert_eq!(p("UIDL"), Ok(Command::Uidl(None)));
        assert_eq!(p("QUIT"), Ok(Command::Quit));
        assert_eq!(p("STLS"), Ok(Command::Stls));
    }

    #[test]
    fn refuses_bad_commands() {
        assert_eq!(p("XYZZY"), Err(CommandError::Unknown));
        assert_eq!(p(""), Err(CommandError::Unknown));
        assert!(p("RETR").is_err());
        assert!(p("RETR -1").is_err());
        assert!(p("RETR 99999999999").is_err());
        assert!(p("RETR 1 2").is_err());
        assert!(p("TOP 1").is_err());
        assert!(p("STAT now").is_err());
        assert!(p("USER").is_err());
        assert!(p("NOOP\0").is_err());
        assert!(Command::parse(b"\xff\xfe").is_err());
        assert_eq!(format!("{:?}", p("PASS secret")), "Ok(Pass(<redacted>))");
    }

    #[test]
    fn replies_cannot_inject_lines() {
        assert_eq!(ok("a\r\n+OK b"), b"+OK a+OK b\r\n");
        assert_eq!(
            err(Some(Code::InUse), "locked"),
            b"-ERR [IN-USE] locked\r\n"
        );
        assert_eq!(
            multiline("2 messages", ["1 10", ".dot"]),
            b"+OK 2 messages\r\n1 10\r\n..dot\r\n.\r\n"
        );
    }

    #[test]
    fn messages_are_dot_stuffed_and_topped() {
        let msg = b"Subject: x\r\n.hidden: h\r\n\r\nline1\r\n.\r\n..two\nbare lf\rbare cr";
        let mut out = Vec::new();
        write_message(&mut out, msg, None);
        assert_eq!(
            out,
            b"Subject: x\r\n..hidden: h\r\n\r\nline1\r\n..\r\n...two\r\nbare lf\r\nbare cr\r\n.\r\n"
        );
        let mut top = Vec::new();
        write_message(&mut top, msg, Some(1));
        assert_eq!(top, b"Subject: x\r\n..hidden: h\r\n\r\nline1\r\n.\r\n");
        let mut headers_only = Vec::new();
        write_message(&mut headers_only, msg, Some(0));
        assert_eq!(headers_only, b"Subject: x\r\n..hidden: h\r\n\r\n.\r\n");
        let mut empty = Vec::new();
        write_message(&mut empty, b"", None);
        assert_eq!(empty, b".\r\n");
    }

    /// The SMTP parser once sliced inside a multibyte character after a verb; the POP3
    /// parser splits only at ASCII spaces, and this sweep keeps it that way.
    #[test]
    fn multibyte_characters_anywhere_never_panic() {
        let templates = [
            "CAPA",
            "USER u@x.test",
            "PASS secret",
            "AUTH PLAIN dGVzdA==",
            "APOP u d",
            "STLS",
            "STAT",
            "LIST 1",
            "RETR 1",
            "TOP 1 10",
            "DELE 1",
            "NOOP",
            "RSET",
            "UIDL 1",
            "QUIT",
        ];
        for template in templates {
            for ch in ['é', '€', '\u{10348}', '\u{a0}'] {
                for at in 0..=template.len() {
                    let mut line = template.to_string();
                    line.insert(at, ch);
                    let _ = Command::parse(line.as_bytes());
                }
            }
        }
    }
}
