//! MIME header values: Content-Type, Content-Disposition, Content-Transfer-Encoding,
//! Content-Language, and parameter lists with RFC 2231 continuations.
//!
//! Parameters are reported the way Dovecot reports them in BODYSTRUCTURE, so clients see the
//! same attachment names from both servers: plain parameters first, in header order, then the
//! RFC 2231 ones (`name*0`, `name*1*`, ...) merged into one `name` or `name*` parameter, sorted
//! by name. Nothing is charset-decoded: an extended value keeps its `charset'language'`
//! prefix and %-escapes, exactly as RFC 2231 writes it, because IMAP clients decode it
//! themselves. Continuations with a missing index are not merged but reported one by one.

use serde::{Deserialize, Serialize};

use crate::octets::Octets;
use crate::rfc822::{Lexer, ParamStep, Step};

/// One `attribute=value` parameter of Content-Type or Content-Disposition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    /// The attribute, case as written (`charset`, `Name`, `filename*`).
    pub name: Octets,
    /// The value with quoting removed; RFC 2231 values keep their encoding.
    pub value: Octets,
}

/// A parsed Content-Type value.
pub(crate) struct ContentType {
    /// `type/subtype` as Dovecot keeps it: empty when the value is malformed, just `type` when
    /// no subtype was given.
    pub(crate) full: Vec<u8>,
    pub(crate) params: Vec<Param>,
}

impl ContentType {
    /// The media type: everything before the first `/`.
    pub(crate) fn media_type(&self) -> &[u8] {
        match self.full.iter().position(|&b| b == b'/') {
            Some(i) => &self.full[..i],
            None => &self.full,
        }
    }

    /// The subtype: everything after the first `/`, empty when there is none.
    pub(crate) fn subtype(&self) -> &[u8] {
        match self.full.iter().position(|&b| b == b'/') {
            Some(i) => &self.full[i + 1..],
            None => &[],
        }
    }

    /// The value of the first parameter with this name (ASCII case-insensitive).
    pub(crate) fn param(&self, name: &[u8]) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value.as_bytes())
    }
}

pub(crate) fn parse_content_type(value: &[u8]) -> ContentType {
    let mut lexer = Lexer::new(value);
    let mut full = Vec::new();
    let step = lexer.content_type(&mut full);
    let params = if step.is_broken() {
        Vec::new()
    } else {
        parse_params(&mut lexer)
    };
    ContentType { full, params }
}

/// Content-Transfer-Encoding: a single token, or nothing when the value is anything else.
pub(crate) fn parse_transfer_encoding(value: &[u8]) -> Option<Octets> {
    let mut lexer = Lexer::new(value);
    lexer.skip_lwsp();
    let mut token = Vec::new();
    let step = lexer.mime_token(&mut token);
    if !step.is_broken() && lexer.skip_lwsp() == Step::End && !token.is_empty() {
        Some(Octets::from(token))
    } else {
        None
    }
}

/// Content-Disposition: the disposition type (possibly empty) and its parameters.
pub(crate) fn parse_disposition(value: &[u8]) -> Option<(Octets, Vec<Param>)> {
    let mut lexer = Lexer::new(value);
    lexer.skip_lwsp();
    let mut token = Vec::new();
    if lexer.mime_token(&mut token).is_broken() {
        return None;
    }
    let params = parse_params(&mut lexer);
    Some((Octets::from(token), params))
}

/// Content-Language: a comma-separated list of language tags (RFC 3282).
pub(crate) fn parse_language(value: &[u8]) -> Vec<Octets> {
    let mut lexer = Lexer::new(value);
    let mut tags = Vec::new();
    lexer.skip_lwsp();
    loop {
        let mut tag = Vec::new();
        if lexer.atom(&mut tag).is_broken() {
            break;
        }
        tags.push(Octets::from(tag));
        if !lexer.peek_is(b',') {
            break;
        }
        lexer.advance();
        lexer.skip_lwsp();
    }
    tags
}

/// One `name*<index>[*]` piece of an RFC 2231 parameter.
struct Continuation {
    name: Vec<u8>,
    index: u32,
    extended: bool,
    value: Vec<u8>,
}

/// Splits `name*`, `name*3` and `name*3*` into their parts; None for ordinary names.
fn continuation(key: &[u8], value: &[u8]) -> Option<Continuation> {
    let star = key.iter().position(|&b| b == b'*')?;
    let mut rest = &key[star + 1..];
    let mut index: u32 = 0;
    while let Some((&d, tail)) = rest.split_first() {
        if !d.is_ascii_digit() {
            break;
        }
        index = index.saturating_mul(10).saturating_add(u32::from(d - b'0'));
        rest = tail;
    }
    let extended = match rest {
        [] => false,
        [b'*'] => true,
        _ => return None,
    };
    // "name*" alone is an extended value with index 0.
    let extended = extended || star + 1 == key.len();
    Some(Continuation {
        name: key[..star].to_vec(),
        index,
        extended,
        value: value.to_vec(),
    })
}

/// Parses `*(";" parameter)`, skipping malformed parameters the way Dovecot does (on an
/// error it skips ahead to the next `;`).
pub(crate) fn parse_params(lexer: &mut Lexer<'_>) -> Vec<Param> {
    let mut plain = Vec::new();
    let mut pieces = Vec::new();
    loop {
        match lexer.content_param() {
            ParamStep::End => break,
            ParamStep::Broken => {
                if lexer.at_end() {
                    break;
                }
                lexer.advance();
            }
            ParamStep::Param(key, value) => match continuation(&key, &value) {
                Some(piece) => pieces.push(piece),
                None => plain.push(Param {
                    name: key.into(),
                    value: value.into(),
                }),
            },
        }
    }
    plain.extend(merge_continuations(pieces));
    plain
}

fn merge_continuations(mut pieces: Vec<Continuation>) -> Vec<Param> {
    pieces.sort_by(|a, b| a.name.cmp(&b.name).then(a.index.cmp(&b.index)));
    let mut out = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let mut j = i;
        while j < pieces.len() && pieces[j].name.eq_ignore_ascii_case(&pieces[i].name) {
            j += 1;
        }
        let group = &pieces[i..j];
        let complete = group.iter().zip(0u32..).all(|(p, n)| p.index == n);
        let any_extended = group.iter().any(|p| p.extended);
        if complete {
            let mut value = Vec::new();
            if !group[0].extended && any_extended {
                // The merged value is extended: give it the empty charset'language' prefix.
                value.extend_from_slice(b"''");
            }
            for piece in group {
                if !piece.extended && any_extended {
                    for &b in &piece.value {
                        if b == b'%' {
                            value.extend_from_slice(b"%25");
                        } else {
                            value.push(b);
                        }
                    }
                } else {
                    value.extend_from_slice(&piece.value);
                }
            }
            let mut name = group[0].name.clone();
            if any_extended {
                name.push(b'*');
            }
            out.push(Param {
                name: name.into(),
                value: value.into(),
            });
        } else {
            for piece in group {
                let mut name = piece.name.clone();
                name.extend_from_slice(format!("*{}", piece.index).as_bytes());
                if piece.extended {
                    name.push(b'*');
                }
                out.push(Param {
                    name: name.into(),
                    value: piece.value.clone().into(),
                });
            }
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(value: &str) -> Vec<(String, String)> {
        parse_content_type(value.as_bytes())
            .params
            .into_iter()
            .map(|p| (p.name.to_string_lossy(), p.value.to_string_lossy()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn plain_parameters_keep_order_case_and_unquote() {
        assert_eq!(
            params(r#"text/plain; CHARSET=UTF-8; Format="flo\"wed"; a=1; a=2"#),
            pairs(&[
                ("CHARSET", "UTF-8"),
                ("Format", "flo\"wed"),
                ("a", "1"),
                ("a", "2")
            ])
        );
    }

    #[test]
    fn continuations_are_merged_after_plain_parameters() {
        assert_eq!(
            params(r#"text/plain; name*1="b"; name*0="a"; charset=x"#),
            pairs(&[("charset", "x"), ("name", "ab")])
        );
        assert_eq!(
            params("text/plain; t*0*=us-ascii'en'This%20is; t*1*=%2A; t*2=\"50% off\""),
            pairs(&[("t*", "us-ascii'en'This%20is%2A50%25 off")])
        );
        assert_eq!(
            params("a/b; f*=UTF-8''%C3%A9"),
            pairs(&[("f*", "UTF-8''%C3%A9")])
        );
        assert_eq!(params("a/b; f*0=a; f*1*=%41"), pairs(&[("f*", "''a%41")]));
    }

    #[test]
    fn incomplete_continuations_are_reported_one_by_one() {
        assert_eq!(
            params("a/b; x*0=1; x*2*=3"),
            pairs(&[("x*0", "1"), ("x*2*", "3")])
        );
        // A lone extended parameter after others is index 0 (Dovecot 2.3 reuses the previous
        // index here; see docs/imap-structure-differences.md).
        assert_eq!(
            params("a/b; x*0=1; x*2=3; b*=q"),
            pairs(&[("b*", "q"), ("x*0", "1"), ("x*2", "3")])
        );
    }

    #[test]
    fn broken_parameters_are_skipped_up_to_the_next_semicolon() {
        assert_eq!(
            params("a/b; e; =f; g=h; d="),
            pairs(&[("g", "h"), ("d", "")])
        );
        assert_eq!(params("a/b; =f; g=h"), pairs(&[("", "f"), ("g", "h")]));
        assert_eq!(params("a/b ; ; name=x"), pairs(&[]));
        assert_eq!(params("a/b; ; ; name=x"), pairs(&[("name", "x")]));
        assert_eq!(
            params("a/b; c=\"x\" junk; d=1; n=\"open"),
            pairs(&[("c", "x"), ("d", "1")])
        );
        assert_eq!(
            params("a/b; x==?utf-8?q?a?=; y=1"),
            pairs(&[("x", "=?utf-8?q?a?="), ("y", "1")])
        );
    }

    #[test]
    fn other_content_headers() {
        assert_eq!(
            parse_transfer_encoding(b" Base64 (x)"),
            Some(Octets::from("Base64"))
        );
        assert_eq!(parse_transfer_encoding(b"base64; x"), None);
        assert_eq!(parse_transfer_encoding(b""), None);
        let (kind, params) = parse_disposition(b"attachment; filename=\"a b.txt\"").unwrap();
        assert_eq!(kind, "attachment");
        assert_eq!(
            params,
            vec![Param {
                name: "filename".into(),
                value: "a b.txt".into()
            }]
        );
        assert_eq!(parse_disposition(b"").unwrap().0, "");
        assert_eq!(
            parse_language(b"en (English), de-DE;q=1, fr"),
            vec![Octets::from("en"), "de-DE".into()]
        );
    }
}
