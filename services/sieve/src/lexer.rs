//! Tokens of RFC 5228 §8.1: identifiers, `:tags`, numbers with K/M/G
//! quantifiers, quoted and multi-line (`text:`) strings, comments.
//!
//! The lexer works on the whole source at once (scripts are small and the
//! size is checked before lexing) and records the line of every token so
//! that parse and validation errors can name it.

use crate::CompileError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    Ident(String),
    Tag(String),
    Number(u64),
    Str(String),
    LBracket,
    RBracket,
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Semicolon,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub line: usize,
}

fn err(line: usize, message: impl Into<String>) -> CompileError {
    CompileError {
        line,
        message: message.into(),
    }
}

/// Splits `src` into tokens. Fails on characters outside the grammar,
/// unterminated strings or comments and numbers that overflow 64 bits.
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, CompileError> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut line = 1;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = line;
                i += 2;
                loop {
                    if i + 1 >= b.len() {
                        return Err(err(start, "unterminated /* comment"));
                    }
                    if b[i] == b'*' && b[i + 1] == b'/' {
                        i += 2;
                        break;
                    }
                    if b[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            b'[' | b']' | b'(' | b')' | b'{' | b'}' | b',' | b';' => {
                let tok = match c {
                    b'[' => Tok::LBracket,
                    b']' => Tok::RBracket,
                    b'(' => Tok::LParen,
                    b')' => Tok::RParen,
                    b'{' => Tok::LBrace,
                    b'}' => Tok::RBrace,
                    b',' => Tok::Comma,
                    _ => Tok::Semicolon,
                };
                out.push(Token { tok, line });
                i += 1;
            }
            b'"' => {
                let start = line;
                i += 1;
                let mut s = Vec::new();
                loop {
                    match b.get(i) {
                        None => return Err(err(start, "unterminated quoted string")),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            // RFC 5228 §2.4.2: "\" followed by any character
                            // stands for that character.
                            match b.get(i + 1) {
                                None => return Err(err(start, "unterminated quoted string")),
                                Some(&n) => {
                                    if n == b'\n' {
                                        line += 1;
                                    }
                                    s.push(n);
                                    i += 2;
                                }
                            }
                        }
                        Some(&n) => {
                            if n == b'\n' {
                                line += 1;
                            }
                            s.push(n);
                            i += 1;
                        }
                    }
                }
                // Escapes only ever drop an ASCII backslash, so the bytes
                // stay valid UTF-8.
                let s = String::from_utf8(s).map_err(|_| err(start, "invalid UTF-8 in string"))?;
                out.push(Token {
                    tok: Tok::Str(s),
                    line: start,
                });
            }
            b'0'..=b'9' => {
                let mut n: u64 = 0;
                while i < b.len() && b[i].is_ascii_digit() {
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(b[i] - b'0')))
                        .ok_or_else(|| err(line, "number too large"))?;
                    i += 1;
                }
                let mult: u64 = match b.get(i) {
                    Some(b'K' | b'k') => 1 << 10,
                    Some(b'M' | b'm') => 1 << 20,
                    Some(b'G' | b'g') => 1 << 30,
                    _ => 1,
                };
                if mult != 1 {
                    i += 1;
                }
                let n = n
                    .checked_mul(mult)
                    .ok_or_else(|| err(line, "number too large"))?;
                if b.get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    return Err(err(line, "invalid number"));
                }
                out.push(Token {
                    tok: Tok::Number(n),
                    line,
                });
            }
            b':' => {
                i += 1;
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                if s == i || b[s].is_ascii_digit() {
                    return Err(err(line, "expected tag name after ':'"));
                }
                out.push(Token {
                    tok: Tok::Tag(src[s..i].to_ascii_lowercase()),
                    line,
                });
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &src[s..i];
                if word.eq_ignore_ascii_case("text") && b.get(i) == Some(&b':') {
                    let start = line;
                    i += 1;
                    let (text, ni, nl) = multiline(b, i, line)?;
                    i = ni;
                    line = nl;
                    out.push(Token {
                        tok: Tok::Str(text),
                        line: start,
                    });
                } else {
                    out.push(Token {
                        tok: Tok::Ident(word.to_ascii_lowercase()),
                        line,
                    });
                }
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(err(line, format!("unexpected character {ch:?}")));
            }
        }
    }
    Ok(out)
}

/// `text:` [spaces] [hash-comment] CRLF, then lines up to a line that is a
/// single "."; a leading ".." on a line stands for "." (dot-stuffing).
fn multiline(
    b: &[u8],
    mut i: usize,
    mut line: usize,
) -> Result<(String, usize, usize), CompileError> {
    let start = line;
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    if b.get(i) == Some(&b'#') {
        while i < b.len() && b[i] != b'\n' {
            i += 1;
        }
    }
    if b.get(i) == Some(&b'\r') {
        i += 1;
    }
    if b.get(i) != Some(&b'\n') {
        return Err(err(line, "expected end of line after text:"));
    }
    i += 1;
    line += 1;
    let mut out = Vec::new();
    loop {
        if i >= b.len() {
            return Err(err(
                start,
                "unterminated multi-line string (missing \".\" line)",
            ));
        }
        let end = b[i..].iter().position(|&c| c == b'\n').map(|p| i + p);
        let raw = &b[i..end.unwrap_or(b.len())];
        let content = raw.strip_suffix(b"\r").unwrap_or(raw);
        if content == b"." {
            i = end.map_or(b.len(), |e| e + 1);
            line += 1;
            break;
        }
        let content = if content.starts_with(b"..") {
            &content[1..]
        } else {
            content
        };
        out.extend_from_slice(content);
        // Lines of a multi-line string end in CRLF whatever the source used,
        // so that a vacation reason is a valid message body.
        out.extend_from_slice(b"\r\n");
        match end {
            Some(e) => {
                i = e + 1;
                line += 1;
            }
            None => {
                return Err(err(
                    start,
                    "unterminated multi-line string (missing \".\" line)",
                ))
            }
        }
    }
    let s = String::from_utf8(out).map_err(|_| err(start, "invalid UTF-8 in string"))?;
    Ok((s, i, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn basic_tokens() {
        assert_eq!(
            toks("if header :is \"a\\\"b\" [\"c\", \"d\"] { stop; } # x\n/* y */ 10K"),
            vec![
                Tok::Ident("if".into()),
                Tok::Ident("header".into()),
                Tok::Tag("is".into()),
                Tok::Str("a\"b".into()),
                Tok::LBracket,
                Tok::Str("c".into()),
                Tok::Comma,
                Tok::Str("d".into()),
                Tok::RBracket,
                Tok::LBrace,
                Tok::Ident("stop".into()),
                Tok::Semicolon,
                Tok::RBrace,
                Tok::Number(10240),
            ]
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(
            toks("1M 2g 0"),
            vec![Tok::Number(1 << 20), Tok::Number(2 << 30), Tok::Number(0)]
        );
        assert!(lex("99999999999999999999").is_err());
        assert!(lex("17179869184G").is_err());
        assert!(lex("12abc").is_err());
    }

    #[test]
    fn multiline_string() {
        let t = toks("text: # c\nline1\n..dot\n.\n;");
        assert_eq!(
            t,
            vec![Tok::Str("line1\r\n.dot\r\n".into()), Tok::Semicolon]
        );
        assert!(lex("text:\nabc\n").is_err());
    }

    #[test]
    fn lines_counted() {
        let t = lex("a\n\"x\ny\"\nb /* \n\n */ c").unwrap();
        let lines: Vec<usize> = t.iter().map(|t| t.line).collect();
        assert_eq!(lines, vec![1, 2, 4, 6]);
    }

    #[test]
    fn errors() {
        assert!(lex("\"abc").is_err());
        assert!(lex("/* abc").is_err());
        assert!(lex("@").is_err());
        assert!(lex(": x").is_err());
    }
}
