//! A lexer for structured header values (RFC 5322 section 3.2, MIME tokens of RFC 2045).
//!
//! The IMAP answers Mailfleet gives must match the ones clients already get from Dovecot,
//! including for broken headers, so this lexer makes the same choices Dovecot 2.3's
//! `rfc822-parser` makes: comments are skipped everywhere whitespace may appear (and the last
//! one is remembered, because an address's trailing comment becomes its display name), 8-bit
//! bytes count as atom characters, and every step reports whether input remains, ended, or was
//! broken, so callers can recover the way Dovecot does.

/// The outcome of one lexer step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The input is malformed here (for example an unterminated comment or quoted string).
    Broken,
    /// The step succeeded and the input is used up.
    End,
    /// The step succeeded and more input follows.
    More,
}

impl Step {
    pub(crate) fn is_more(self) -> bool {
        self == Step::More
    }
    pub(crate) fn is_broken(self) -> bool {
        self == Step::Broken
    }
}

/// `atext` of RFC 5322 plus every 8-bit byte (senders put raw UTF-8 and Latin-1 in headers).
pub(crate) fn is_atext(b: u8) -> bool {
    matches!(
        b,
        b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | 0x80..=0xff
            | b'!'
            | b'#'
            | b'$'
            | b'%'
            | b'&'
            | b'\''
            | b'*'
            | b'+'
            | b'-'
            | b'/'
            | b'='
            | b'?'
            | b'^'
            | b'_'
            | b'`'
            | b'{'
            | b'|'
            | b'}'
            | b'~'
    )
}

/// A MIME `token` character (RFC 2045): `atext` without the tspecials `/`, `=` and `?`.
fn is_token_char(b: u8) -> bool {
    is_atext(b) && !matches!(b, b'/' | b'=' | b'?')
}

/// A cursor over one (unfolded) header value.
pub(crate) struct Lexer<'a> {
    data: &'a [u8],
    pos: usize,
    /// The text of the most recent comment, when the caller asked to keep it.
    last_comment: Option<Vec<u8>>,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            last_comment: None,
        }
    }

    /// A lexer that remembers the text of the last comment it skipped.
    pub(crate) fn with_comments(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            last_comment: Some(Vec::new()),
        }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    pub(crate) fn peek_is(&self, b: u8) -> bool {
        self.peek() == Some(b)
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub(crate) fn advance(&mut self) {
        if self.pos < self.data.len() {
            self.pos += 1;
        }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn set_position(&mut self, pos: usize) {
        self.pos = pos.min(self.data.len());
    }

    pub(crate) fn last_comment(&self) -> &[u8] {
        self.last_comment.as_deref().unwrap_or(&[])
    }

    pub(crate) fn clear_last_comment(&mut self) {
        if let Some(c) = self.last_comment.as_mut() {
            c.clear();
        }
    }

    fn remaining(&self) -> Step {
        if self.at_end() {
            Step::End
        } else {
            Step::More
        }
    }

    /// Skips a (nested) comment starting at `(`.
    fn skip_comment(&mut self) -> Step {
        let mut level = 1usize;
        if let Some(c) = self.last_comment.as_mut() {
            c.clear();
        }
        self.pos += 1;
        let mut start = self.pos;
        while self.pos < self.data.len() {
            match self.data[self.pos] {
                b'(' => level += 1,
                b')' => {
                    level -= 1;
                    if level == 0 {
                        if let Some(c) = self.last_comment.as_mut() {
                            c.extend_from_slice(&self.data[start..self.pos]);
                        }
                        self.pos += 1;
                        return self.remaining();
                    }
                }
                b'\\' => {
                    if let Some(c) = self.last_comment.as_mut() {
                        c.extend_from_slice(&self.data[start..self.pos]);
                    }
                    start = self.pos + 1;
                    self.pos += 1;
                    if self.pos >= self.data.len() {
                        return Step::Broken;
                    }
                }
                _ => {}
            }
            self.pos += 1;
        }
        Step::Broken
    }

    /// Skips whitespace (including CR and LF) and comments.
    pub(crate) fn skip_lwsp(&mut self) -> Step {
        while let Some(b) = self.peek() {
            match b {
                b' ' | b'\t' | b'\r' | b'\n' => self.pos += 1,
                b'(' => {
                    if self.skip_comment().is_broken() {
                        return Step::Broken;
                    }
                }
                _ => break,
            }
        }
        self.remaining()
    }

    /// `atom`: at least one `atext`, then whitespace and comments.
    pub(crate) fn atom(&mut self, out: &mut Vec<u8>) -> Step {
        match self.peek() {
            Some(b) if is_atext(b) => {}
            _ => return Step::Broken,
        }
        let start = self.pos;
        while self.peek().is_some_and(is_atext) {
            self.pos += 1;
        }
        out.extend_from_slice(&self.data[start..self.pos]);
        if self.at_end() {
            return Step::End;
        }
        self.skip_lwsp()
    }

    /// `dot-atom`, tolerating whitespace around the dots as RFC 822 did.
    pub(crate) fn dot_atom(&mut self, out: &mut Vec<u8>) -> Step {
        match self.peek() {
            Some(b) if is_atext(b) => {}
            _ => return Step::Broken,
        }
        let mut start = self.pos;
        self.pos += 1;
        while self.pos < self.data.len() {
            if is_atext(self.data[self.pos]) {
                self.pos += 1;
                continue;
            }
            out.extend_from_slice(&self.data[start..self.pos]);
            let step = self.skip_lwsp();
            if step != Step::More {
                return step;
            }
            if !self.peek_is(b'.') {
                return Step::More;
            }
            self.pos += 1;
            out.push(b'.');
            let step = self.skip_lwsp();
            if step != Step::More {
                return step;
            }
            start = self.pos;
        }
        out.extend_from_slice(&self.data[start..self.pos]);
        Step::End
    }

    /// A MIME `token` (possibly empty), then whitespace and comments.
    pub(crate) fn mime_token(&mut self, out: &mut Vec<u8>) -> Step {
        let start = self.pos;
        while self.peek().is_some_and(|b| is_token_char(b) || b == b'.') {
            self.pos += 1;
        }
        out.extend_from_slice(&self.data[start..self.pos]);
        if self.at_end() {
            return Step::End;
        }
        self.skip_lwsp()
    }

    /// `quoted-string` starting at `"`: the unescaped content, line breaks removed.
    pub(crate) fn quoted_string(&mut self, out: &mut Vec<u8>) -> Step {
        self.pos += 1;
        let mut start = self.pos;
        while self.pos < self.data.len() {
            match self.data[self.pos] {
                b'"' => {
                    out.extend_from_slice(&self.data[start..self.pos]);
                    self.pos += 1;
                    return self.skip_lwsp();
                }
                b'\n' => {
                    let mut end = self.pos;
                    if end > start && self.data[end - 1] == b'\r' {
                        end -= 1;
                    }
                    out.extend_from_slice(&self.data[start..end]);
                    start = self.pos + 1;
                }
                b'\\' => {
                    self.pos += 1;
                    if self.pos >= self.data.len() {
                        return Step::Broken;
                    }
                    out.extend_from_slice(&self.data[start..self.pos - 1]);
                    start = self.pos;
                }
                _ => {}
            }
            self.pos += 1;
        }
        Step::Broken
    }

    /// A run of `atext` and dots (possibly empty), then whitespace and comments.
    fn atom_or_dot(&mut self, out: &mut Vec<u8>) -> Step {
        let start = self.pos;
        while self.peek().is_some_and(|b| is_atext(b) || b == b'.') {
            self.pos += 1;
        }
        out.extend_from_slice(&self.data[start..self.pos]);
        if self.at_end() {
            return Step::End;
        }
        self.skip_lwsp()
    }

    /// `phrase` (also obs-phrase): words joined by one space.
    pub(crate) fn phrase(&mut self, out: &mut Vec<u8>) -> Step {
        if self.at_end() {
            return Step::End;
        }
        if self.peek_is(b'.') {
            return Step::Broken;
        }
        loop {
            let step = if self.peek_is(b'"') {
                self.quoted_string(out)
            } else {
                self.atom_or_dot(out)
            };
            if step != Step::More {
                return step;
            }
            match self.peek() {
                Some(b) if is_atext(b) || b == b'"' || b == b'.' => out.push(b' '),
                _ => break,
            }
        }
        self.skip_lwsp()
    }

    /// `domain-literal` starting at `[`, kept as written (brackets included).
    fn domain_literal(&mut self, out: &mut Vec<u8>) -> Step {
        let start = self.pos;
        while self.pos < self.data.len() {
            match self.data[self.pos] {
                b'\\' => {
                    self.pos += 1;
                    if self.pos >= self.data.len() {
                        break;
                    }
                }
                b']' => {
                    self.pos += 1;
                    out.extend_from_slice(&self.data[start..self.pos]);
                    return self.skip_lwsp();
                }
                _ => {}
            }
            self.pos += 1;
        }
        Step::Broken
    }

    /// `"@" domain`, starting at `@`.
    pub(crate) fn domain(&mut self, out: &mut Vec<u8>) -> Step {
        self.pos += 1;
        if self.skip_lwsp() != Step::More {
            return Step::Broken;
        }
        if self.peek_is(b'[') {
            self.domain_literal(out)
        } else {
            self.dot_atom(out)
        }
    }

    /// `type "/" subtype` of a Content-Type value, written to `out` as `type/subtype`.
    ///
    /// Dovecot keeps a lone type (`text`) when nothing follows it, but drops the whole value
    /// (leaving `out` empty) when anything other than `;` follows the type or the subtype.
    pub(crate) fn content_type(&mut self, out: &mut Vec<u8>) -> Step {
        if self.skip_lwsp() != Step::More {
            return Step::Broken;
        }
        let orig = out.len();
        if self.mime_token(out) != Step::More || out.len() == orig {
            return Step::Broken;
        }
        if !self.peek_is(b'/') {
            out.truncate(orig);
            return Step::Broken;
        }
        self.pos += 1;
        if self.skip_lwsp() != Step::More {
            out.truncate(orig);
            return Step::Broken;
        }
        out.push(b'/');
        let sub = out.len();
        let step = self.mime_token(out);
        if step.is_broken() || out.len() == sub || (step.is_more() && !self.peek_is(b';')) {
            out.truncate(orig);
            return Step::Broken;
        }
        step
    }

    /// One `; attribute=value` of a parameter list.
    pub(crate) fn content_param(&mut self) -> ParamStep {
        if self.at_end() {
            return ParamStep::End;
        }
        if !self.peek_is(b';') {
            return ParamStep::Broken;
        }
        self.pos += 1;
        if self.skip_lwsp() != Step::More {
            return ParamStep::Broken;
        }
        let mut key = Vec::new();
        if self.mime_token(&mut key) != Step::More || !self.peek_is(b'=') {
            return ParamStep::Broken;
        }
        self.pos += 1;
        let mut value = Vec::new();
        let step = match self.skip_lwsp() {
            Step::More if self.peek_is(b'"') => self.quoted_string(&mut value),
            Step::More if self.peek_is(b'=') => {
                // Broken senders write name==?utf-8?b?...?= unquoted: keep it whole.
                while let Some(b) = self.peek() {
                    if matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n') {
                        break;
                    }
                    value.push(b);
                    self.pos += 1;
                }
                Step::More
            }
            Step::More => self.mime_token(&mut value),
            // No value at all ("name=" at the end): an empty value.
            other => other,
        };
        if step.is_broken() {
            ParamStep::Broken
        } else {
            ParamStep::Param(key, value)
        }
    }
}

/// The outcome of [`Lexer::content_param`].
pub(crate) enum ParamStep {
    End,
    Broken,
    Param(Vec<u8>, Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(value: &str) -> (Step, String) {
        let mut lexer = Lexer::new(value.as_bytes());
        let mut out = Vec::new();
        let step = lexer.content_type(&mut out);
        (step, String::from_utf8(out).unwrap())
    }

    #[test]
    fn content_type_acceptance_matches_dovecot() {
        assert_eq!(
            ct("text/plain; charset=x"),
            (Step::More, "text/plain".into())
        );
        assert_eq!(ct(" text / plain "), (Step::End, "text/plain".into()));
        assert_eq!(ct("text"), (Step::Broken, "text".into()));
        assert_eq!(ct("text (c)"), (Step::Broken, "text".into()));
        assert_eq!(ct("text; charset=x").1, "");
        assert_eq!(ct("text/").1, "");
        assert_eq!(ct("/plain").1, "");
        assert_eq!(ct("text/plain garbage").1, "");
        assert_eq!(ct("").1, "");
    }

    #[test]
    fn phrase_joins_words_with_one_space() {
        let mut lexer = Lexer::new(br#"John   "Q. \"Q\""  Public <x@y>"#);
        let mut out = Vec::new();
        assert_eq!(lexer.phrase(&mut out), Step::More);
        assert_eq!(out, br#"John Q. "Q" Public"#);
        assert!(lexer.peek_is(b'<'));
    }

    #[test]
    fn comments_nest_and_are_remembered() {
        let mut lexer = Lexer::with_comments(b"  (a (b) \\) c)x");
        assert_eq!(lexer.skip_lwsp(), Step::More);
        assert_eq!(lexer.last_comment(), b"a (b) ) c");
        assert!(lexer.peek_is(b'x'));
        let mut broken = Lexer::new(b"(unterminated");
        assert_eq!(broken.skip_lwsp(), Step::Broken);
    }

    #[test]
    fn domains_and_literals() {
        let mut out = Vec::new();
        assert_eq!(Lexer::new(b"@ example . com").domain(&mut out), Step::End);
        assert_eq!(out, b"example.com");
        out.clear();
        assert_eq!(Lexer::new(b"@[127.0.0.1]").domain(&mut out), Step::End);
        assert_eq!(out, b"[127.0.0.1]");
    }
}
