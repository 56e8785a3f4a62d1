//! SMTP command lines (RFC 5321 §4.1) into [`Command`] values.
//!
//! The input is one line without its line ending. Parsing is strict about structure (paths
//! in angle brackets, known parameters) and lenient where deployed clients commonly are
//! not (a space after `FROM:`, lowercase verbs), as mature servers are.

use mailfleet_core::Address;

/// A reverse or forward path: `<>` (the null sender, MAIL only) or an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    Null,
    /// `<postmaster>` with no domain, which RCPT must accept (RFC 5321 §4.5.1).
    Postmaster,
    Address(Address),
}

/// Body types of RFC 6152 (8BITMIME).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// RFC 1870 SIZE declared by the client.
    pub size: Option<u64>,
    pub body: BodyType,
    /// RFC 6531 SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 3461 `RET`: `FULL` or `HDRS` (uppercase).
    pub ret: Option<String>,
    /// RFC 3461 `ENVID`, as sent (xtext).
    pub envid: Option<String>,
}

impl MailParams {
    /// Whether any RFC 3461 (DSN) parameter was given.
    pub fn has_dsn(&self) -> bool {
        self.ret.is_some() || self.envid.is_some()
    }
}

/// RCPT parameters: RFC 3461 `NOTIFY` and `ORCPT`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// `NEVER`, or a comma list of `SUCCESS`, `FAILURE`, `DELAY` (uppercase).
    pub notify: Option<String>,
    /// `addr-type;xtext`, as sent.
    pub orcpt: Option<String>,
}

/// Longest ENVID (RFC 3461 §4.4: 100 characters).
pub const MAX_ENVID: usize = 100;
/// Longest ORCPT value (RFC 3461 §4.2: 500 characters).
pub const MAX_ORCPT: usize = 500;

/// RFC 3461 xtext: printable ASCII except `+` and `=`, with `+XX` hex escapes.
fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if b.get(i + 1).is_none_or(|c| !hex(*c)) || b.get(i + 2).is_none_or(|c| !hex(*c)) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            c if (33..=126).contains(&c) => i += 1,
            _ => return false,
        }
    }
    true
}

fn parse_rcpt_params(params: &str) -> Result<RcptParams, CommandError> {
    let mut out = RcptParams::default();
    for p in params.split_whitespace() {
        let (key, value) = p.split_once('=').unwrap_or((p, ""));
        match key.to_ascii_uppercase().as_str() {
            "NOTIFY" if out.notify.is_none() => {
                let v = value.to_ascii_uppercase();
                let items: Vec<&str> = v.split(',').collect();
                let valid = if items == ["NEVER"] {
                    true
                } else {
                    !items.is_empty()
                        && items
                            .iter()
                            .all(|i| matches!(*i, "SUCCESS" | "FAILURE" | "DELAY"))
                };
                if !valid {
                    return Err(CommandError::Syntax("bad NOTIFY value"));
                }
                out.notify = Some(v);
            }
            "ORCPT" if out.orcpt.is_none() => {
                let (kind, addr) = value
                    .split_once(';')
                    .ok_or(CommandError::Syntax("ORCPT needs addr-type;address"))?;
                if kind.is_empty() || value.len() > MAX_ORCPT || !is_xtext(addr) {
                    return Err(CommandError::Syntax("bad ORCPT value"));
                }
                out.orcpt = Some(value.to_string());
            }
            _ => return Err(CommandError::UnsupportedParam(p.to_string())),
        }
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(Path, MailParams),
    Rcpt(Path, RcptParams),
    Data,
    /// RFC 3030 chunk of `size` octets; `last` ends the message.
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Expn,
    StartTls,
    /// RFC 4954 `AUTH mechanism [initial-response]` (the response still base64).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// Why a line is not a command we can act on; each maps to one reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command not recognized")]
    Unrecognized,
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("bad address: {0}")]
    BadAddress(String),
    #[error("unsupported parameter {0}")]
    UnsupportedParam(String),
}

impl Command {
    /// Parses one command line (without CRLF).
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let line = std::str::from_utf8(line).map_err(|_| CommandError::Unrecognized)?;
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(CommandError::Syntax("control characters in command"));
        }
        let (verb, rest) = match line.find(' ') {
            Some(i) => (&line[..i], line[i + 1..].trim()),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        let no_args = |c: Command| {
            if rest.is_empty() {
                Ok(c)
            } else {
                Err(CommandError::Syntax("no parameters allowed"))
            }
        };
        match verb.as_str() {
            "EHLO" | "HELO" => {
                if rest.is_empty() || rest.contains(' ') && !rest.starts_with('[') {
                    // Some clients append junk after the domain; take the first word.
                    let first = rest.split_whitespace().next().unwrap_or("");
                    if first.is_empty() {
                        return Err(CommandError::Syntax("domain name required"));
                    }
                    return Ok(if verb == "EHLO" {
                        Command::Ehlo(first.to_string())
                    } else {
                        Command::Helo(first.to_string())
                    });
                }
                Ok(if verb == "EHLO" {
                    Command::Ehlo(rest.to_string())
                } else {
                    Command::Helo(rest.to_string())
                })
            }
            "MAIL" => {
                let args = strip_prefix_ci(rest, "FROM:")
                    .ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?;
                let (path, params) = split_path(args)?;
                let path = parse_path(path, false)?;
                Ok(Command::Mail(path, parse_mail_params(params)?))
            }
            "RCPT" => {
                let args = strip_prefix_ci(rest, "TO:")
                    .ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?;
                let (path, params) = split_path(args)?;
                let path = parse_path(path, true)?;
                Ok(Command::Rcpt(path, parse_rcpt_params(params)?))
            }
            "DATA" => no_args(Command::Data),
            "BDAT" => {
                let mut parts = rest.split_whitespace();
                let size = parts
                    .next()
                    .ok_or(CommandError::Syntax("BDAT needs a chunk size"))?;
                if size.is_empty() || size.len() > 19 || !size.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CommandError::Syntax("bad chunk size"));
                }
                let size: u64 = size
                    .parse()
                    .map_err(|_| CommandError::Syntax("bad chunk size"))?;
                let last = match parts.next() {
                    None => false,
                    Some(w) if w.eq_ignore_ascii_case("LAST") => true,
                    Some(_) => return Err(CommandError::Syntax("expected LAST")),
                };
                if parts.next().is_some() {
                    return Err(CommandError::Syntax("too many parameters"));
                }
                Ok(Command::Bdat { size, last })
            }
            "RSET" => no_args(Command::Rset),
            "NOOP" => Ok(Command::Noop),
            "QUIT" => no_args(Command::Quit),
            "HELP" => Ok(Command::Help),
            "VRFY" => Ok(Command::Vrfy),
            "EXPN" => Ok(Command::Expn),
            "STARTTLS" => no_args(Command::StartTls),
            "AUTH" => {
                let mut parts = rest.split_whitespace();
                let mechanism = parts
                    .next()
                    .ok_or(CommandError::Syntax("AUTH needs a mechanism"))?
                    .to_string();
                let initial = parts.next().map(str::to_string);
                if parts.next().is_some() {
                    return Err(CommandError::Syntax("too many parameters"));
                }
                Ok(Command::Auth { mechanism, initial })
            }
            _ => Err(CommandError::Unrecognized),
        }
    }
}

/// `s` without an ASCII `prefix` (compared without case), leading blanks trimmed.
///
/// Compares bytes, never slicing `s` by the prefix's length: a multibyte character can
/// straddle that index (`MAIL FROMé`), and slicing a `str` inside a character panics.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix.as_bytes()) {
        return None;
    }
    // The prefix is ASCII and matched, so `prefix.len()` is a character boundary.
    s.get(prefix.len()..).map(str::trim_start)
}

/// Splits `<path> params` at the closing bracket.
fn split_path(args: &str) -> Result<(&str, &str), CommandError> {
    if !args.starts_with('<') {
        return Err(CommandError::Syntax("address must be in angle brackets"));
    }
    let end = args
        .find('>')
        .ok_or(CommandError::Syntax("missing '>' after address"))?;
    let rest = &args[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::Syntax("garbage after address"));
    }
    Ok((&args[1..end], rest.trim()))
}

fn parse_path(inner: &str, rcpt: bool) -> Result<Path, CommandError> {
    // Source routes (@a,@b:user@c) are obsolete; RFC 5321 §C says to ignore them.
    let inner = match (inner.starts_with('@'), inner.find(':')) {
        (true, Some(i)) => &inner[i + 1..],
        _ => inner,
    };
    if inner.is_empty() {
        return if rcpt {
            Err(CommandError::Syntax("empty recipient"))
        } else {
            Ok(Path::Null)
        };
    }
    if rcpt && inner.eq_ignore_ascii_case("postmaster") {
        return Ok(Path::Postmaster);
    }
    Address::parse(inner)
        .map(Path::Address)
        .map_err(|e| CommandError::BadAddress(e.to_string()))
}

fn parse_mail_params(params: &str) -> Result<MailParams, CommandError> {
    let mut out = MailParams::default();
    for p in params.split_whitespace() {
        let (key, value) = match p.find('=') {
            Some(i) => (&p[..i], Some(&p[i + 1..])),
            None => (p, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => {
                out.size = Some(
                    v.parse()
                        .map_err(|_| CommandError::Syntax("bad SIZE value"))?,
                )
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => out.body = BodyType::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                out.body = BodyType::EightBitMime
            }
            ("SMTPUTF8", None) => out.smtputf8 = true,
            ("RET", Some(v)) if out.ret.is_none() => {
                let v = v.to_ascii_uppercase();
                if v != "FULL" && v != "HDRS" {
                    return Err(CommandError::Syntax("RET must be FULL or HDRS"));
                }
                out.ret = Some(v);
            }
            ("ENVID", Some(v)) if out.envid.is_none() => {
                if v.is_empty() || v.len() > MAX_ENVID || !is_xtext(v) {
                    return Err(CommandError::Syntax("bad ENVID value"));
                }
                out.envid = Some(v.to_string());
            }
            // AUTH=<> from relaying clients is informational (RFC 4954 §5).
            ("AUTH", Some(_)) => {}
            _ => return Err(CommandError::UnsupportedParam(p.to_string())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, CommandError> {
        Command::parse(s.as_bytes())
    }

    /// Issue 9 item 5: `MAIL FROMé…` sliced the line inside `é` and panicked the session
    /// task. Every verb followed by multibyte characters at every split point of its
    /// argument keyword must give an error or a command, never a panic.
    #[test]
    fn multibyte_characters_after_a_verb_never_panic() {
        assert!(p("MAIL FROM\u{e9}:<a@b>").is_err());
        assert!(p("RCPT TO\u{e9}<a@b>").is_err());
        let chars = ["\u{e9}", "\u{20ac}", "\u{1f600}", "\u{7ff}", "\u{ffff}"];
        let verbs = [
            "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "HELP",
            "STARTTLS", "AUTH", "XYZ",
        ];
        for verb in verbs {
            for keyword in ["FROM:", "TO:", "", "1 ", "PLAIN "] {
                for cut in 0..=keyword.len() {
                    for c in chars {
                        let line = format!("{verb} {}{c}{}<x@y>", &keyword[..cut], &keyword[cut..]);
                        let _ = Command::parse(line.as_bytes());
                        let line = format!("{verb}{c}{}", &keyword[..cut]);
                        let _ = Command::parse(line.as_bytes());
                    }
                }
            }
        }
    }

    #[test]
    fn basic_commands() {
        assert_eq!(
            p("EHLO client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(p("helo x"), Ok(Command::Helo("x".into())));
        assert!(matches!(p("EHLO"), Err(CommandError::Syntax(_))));
        assert_eq!(p("DATA"), Ok(Command::Data));
        assert_eq!(p("quit"), Ok(Command::Quit));
        assert_eq!(p("NOOP anything"), Ok(Command::Noop));
        assert!(matches!(p("RSET now"), Err(CommandError::Syntax(_))));
        assert_eq!(p("FOO"), Err(CommandError::Unrecognized));
        assert_eq!(p(""), Err(CommandError::Unrecognized));
    }

    #[test]
    fn mail_and_rcpt() {
        match p("MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8").expect("valid") {
            Command::Mail(Path::Address(a), params) => {
                assert_eq!(a.to_string(), "a@b.example");
                assert_eq!(params.size, Some(1000));
                assert_eq!(params.body, BodyType::EightBitMime);
                assert!(params.smtputf8);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            p("MAIL FROM:<>"),
            Ok(Command::Mail(Path::Null, MailParams::default()))
        );
        assert!(matches!(
            p("mail from: <x@y.example>"),
            Ok(Command::Mail(..))
        ));
        assert!(matches!(
            p("MAIL FROM:x@y.example"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<x@y.example> XYZZY=1"),
            Err(CommandError::UnsupportedParam(_))
        ));
        match p("MAIL FROM:<x@y.example> RET=hdrs ENVID=QQ+2B1").expect("dsn") {
            Command::Mail(_, params) => {
                assert_eq!(params.ret.as_deref(), Some("HDRS"));
                assert_eq!(params.envid.as_deref(), Some("QQ+2B1"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(p("MAIL FROM:<x@y.example> RET=ALL").is_err());
        assert!(p("MAIL FROM:<x@y.example> ENVID=a=b").is_err());
        match p("RCPT TO:<u@d.example> NOTIFY=success,failure ORCPT=rfc822;u+40d.example")
            .expect("dsn")
        {
            Command::Rcpt(_, params) => {
                assert_eq!(params.notify.as_deref(), Some("SUCCESS,FAILURE"));
                assert_eq!(params.orcpt.as_deref(), Some("rfc822;u+40d.example"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(p("RCPT TO:<u@d.example> NOTIFY=NEVER,SUCCESS").is_err());
        assert!(p("RCPT TO:<u@d.example> ORCPT=nosemicolon").is_err());
        assert!(p("RCPT TO:<u@d.example> FOO=1").is_err());
        assert!(matches!(p("RCPT TO:<>"), Err(CommandError::Syntax(_))));
        assert_eq!(
            p("RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt(Path::Postmaster, RcptParams::default()))
        );
        assert!(matches!(
            p("RCPT TO:<@relay.example:u@d.example>"),
            Ok(Command::Rcpt(Path::Address(_), _))
        ));
        assert!(p("RCPT TO:<not an address>").is_err());
        assert!(matches!(
            p("RCPT TO:<u@d.example>junk"),
            Err(CommandError::Syntax(_))
        ));
    }

    #[test]
    fn bdat() {
        assert_eq!(
            p("BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            p("BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert!(p("BDAT -1").is_err());
        assert!(p("BDAT 99999999999999999999999").is_err());
        assert!(p("BDAT 1 FIRST").is_err());
    }

    #[test]
    fn auth() {
        assert_eq!(
            p("AUTH PLAIN AGFAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGFAYg==".into())
            })
        );
        assert_eq!(
            p("auth login"),
            Ok(Command::Auth {
                mechanism: "login".into(),
                initial: None
            })
        );
        assert!(p("AUTH").is_err());
        assert!(p("AUTH PLAIN a b").is_err());
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            &b"\xff\xfe\x00binary"[..],
            b"MAIL FROM:<",
            b"RCPT TO:<>>>",
            b"MAIL FROM:<\xc3\x28@x>",
            b"EHLO \x00",
            b"BDAT",
        ] {
            assert!(Command::parse(s).is_err(), "{s:?}");
        }
    }
}
