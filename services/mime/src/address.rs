//! Address lists (RFC 5322 section 3.4, with the obsolete syntax of section 4.4) as IMAP
//! ENVELOPE represents them.
//!
//! The parser is deliberately forgiving and makes the choices Dovecot 2.3 makes, because
//! clients have long been shown Dovecot's answers for the same broken headers:
//!
//! * a missing local part or domain becomes `MISSING_MAILBOX` / `MISSING_DOMAIN`, an
//!   unterminated `<...>` gets the host `SYNTAX_ERROR`, a bad route `INVALID_ROUTE`;
//! * `addr@host (Comment)` takes the comment as display name;
//! * a bare word (`To: undisclosed recipients`) is a display name without an address;
//! * groups become a start marker (mailbox = group name, host NIL), the members, and an end
//!   marker (all NIL), exactly as RFC 9051 section 7.5.2 describes;
//! * parsing stops at the first garbage that is not followed by a comma.

use serde::{Deserialize, Serialize};

use crate::header::{for_humans, without_newlines};
use crate::octets::Octets;
use crate::rfc822::{Lexer, Step};

/// One element of an IMAP address list. Group syntax uses two markers: a group start has
/// `mailbox` = the group name and no `host`; a group end has every field NIL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Display name, not RFC 2047-decoded, whitespace collapsed as IMAP servers send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Octets>,
    /// Obsolete source route (`@a,@b`), IMAP's "adl".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Octets>,
    /// Local part (quoting removed), or the group name of a group start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<Octets>,
    /// Domain; NIL for group markers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Octets>,
}

impl Address {
    /// True for the marker that opens a group.
    pub fn is_group_start(&self) -> bool {
        self.host.is_none() && self.mailbox.is_some()
    }

    /// True for the marker that closes a group.
    pub fn is_group_end(&self) -> bool {
        self.host.is_none() && self.mailbox.is_none()
    }

    /// True for an actual mailbox (not a group marker).
    pub fn is_mailbox(&self) -> bool {
        self.host.is_some()
    }
}

/// The address being built.
#[derive(Default)]
struct Pending {
    name: Option<Vec<u8>>,
    route: Option<Vec<u8>>,
    mailbox: Option<Vec<u8>>,
    domain: Option<Vec<u8>>,
    invalid: bool,
}

struct Parser<'a, 'o> {
    lx: Lexer<'a>,
    cur: Pending,
    /// The local part just read (and, for a bare word, the phrase after it).
    local: Vec<u8>,
    out: &'o mut Vec<Address>,
}

/// Parses an address-list header value and appends its addresses to `out` (a repeated
/// header adds to the same list).
pub(crate) fn parse_address_list(value: &[u8], out: &mut Vec<Address>) {
    let mut p = Parser {
        lx: Lexer::with_comments(value),
        cur: Pending::default(),
        local: Vec::new(),
        out,
    };
    if p.lx.skip_lwsp().is_more() {
        p.address_list();
    }
}

fn octets(v: Vec<u8>) -> Octets {
    Octets::from(without_newlines(&v))
}

impl Parser<'_, '_> {
    fn push(&mut self) {
        let cur = std::mem::take(&mut self.cur);
        self.out.push(Address {
            name: cur.name.map(|n| Octets::from(for_humans(&n))),
            route: cur.route.map(octets),
            mailbox: cur.mailbox.map(octets),
            host: cur.domain.map(octets),
        });
    }

    fn push_fixed(&mut self) {
        if self.cur.mailbox.is_none() {
            self.cur.mailbox = Some(b"MISSING_MAILBOX".to_vec());
        }
        if self.cur.domain.as_ref().is_none_or(|d| d.is_empty()) {
            self.cur.domain = Some(b"MISSING_DOMAIN".to_vec());
        }
        self.push();
    }

    /// A dot-atom that also accepts leading, trailing and doubled dots (`a..b@c`, `.x@y`):
    /// such addresses are invalid but common, and rejecting them would lose the mailbox.
    fn loose_dot_atom(&mut self) -> Step {
        let mut step = Step::Broken;
        loop {
            while self.lx.peek_is(b'.') {
                self.local.push(b'.');
                self.lx.advance();
                if self.lx.at_end() {
                    return Step::End;
                }
                step = Step::More;
            }
            if self.lx.peek_is(b'@') {
                break;
            }
            step = self.lx.atom(&mut self.local);
            if !(step.is_more() && self.lx.peek_is(b'.')) {
                break;
            }
        }
        step
    }

    fn local_part(&mut self) -> Step {
        self.local.clear();
        let step = if self.lx.peek_is(b'"') {
            self.lx.quoted_string(&mut self.local)
        } else {
            self.loose_dot_atom()
        };
        if !step.is_broken() {
            self.cur.mailbox = Some(self.local.clone());
        }
        step
    }

    fn domain(&mut self) -> Step {
        let mut domain = Vec::new();
        let step = self.lx.domain(&mut domain);
        if !step.is_broken() {
            self.cur.domain = Some(domain);
        }
        step
    }

    /// obs-domain-list: `@a,@b` before the colon of a routed address.
    fn domain_list(&mut self) -> Step {
        let mut route = Vec::new();
        loop {
            if self.lx.at_end() {
                return Step::End;
            }
            if !self.lx.peek_is(b'@') {
                break;
            }
            if !route.is_empty() {
                route.push(b',');
            }
            route.push(b'@');
            let step = self.lx.domain(&mut route);
            if !step.is_more() {
                return step;
            }
            while self.lx.skip_lwsp().is_more() && self.lx.peek_is(b',') {
                self.lx.advance();
            }
        }
        self.cur.route = Some(route);
        Step::More
    }

    /// `"<" [route ":"] [local-part ["@" domain]] ">"`, starting at `<`.
    fn angle_addr(&mut self) -> Step {
        self.lx.advance();
        if !self.lx.skip_lwsp().is_more() {
            return Step::Broken;
        }
        if self.lx.peek_is(b'@') {
            if self.domain_list().is_more() && self.lx.peek_is(b':') {
                self.lx.advance();
            } else {
                self.cur.route = Some(b"INVALID_ROUTE".to_vec());
                if self.lx.at_end() {
                    return Step::Broken;
                }
            }
            if !self.lx.skip_lwsp().is_more() {
                return Step::Broken;
            }
        }
        if !self.lx.peek_is(b'>') {
            if !self.local_part().is_more() {
                return Step::Broken;
            }
            if self.lx.peek_is(b'@') && !self.domain().is_more() {
                return Step::Broken;
            }
        }
        if !self.lx.peek_is(b'>') {
            return Step::Broken;
        }
        self.lx.advance();
        self.lx.skip_lwsp()
    }

    /// `[display-name] angle-addr`.
    fn name_addr(&mut self) -> Step {
        let mut phrase = Vec::new();
        if !self.lx.phrase(&mut phrase).is_more() || !self.lx.peek_is(b'<') {
            return Step::Broken;
        }
        self.cur.name = (!phrase.is_empty()).then_some(phrase);
        if self.angle_addr().is_broken() {
            self.cur.domain = Some(b"SYNTAX_ERROR".to_vec());
            self.cur.invalid = true;
        }
        if self.lx.at_end() {
            Step::End
        } else {
            Step::More
        }
    }

    /// `local-part "@" domain`, or a bare word or phrase without any `@`.
    fn addr_spec(&mut self) -> Step {
        self.lx.clear_last_comment();
        let quoted = self.lx.peek_is(b'"');
        let mut step = self.local_part();
        if !step.is_more() {
            self.cur.invalid = true;
        }
        let mut saw_at = false;
        if step != Step::End && self.lx.peek_is(b'@') {
            saw_at = true;
            let domain = self.domain();
            if !domain.is_more() {
                step = domain;
            }
            if domain.is_broken() && self.cur.domain.is_none() {
                // "user@" followed by nothing usable: the mailbox stays, the domain is missing.
                self.cur.domain = Some(Vec::new());
            }
        }
        if !self.lx.last_comment().is_empty() {
            self.cur.name = Some(self.lx.last_comment().to_vec());
        } else if !saw_at {
            // No "@": one word is a mailbox without a domain, more words are a display name.
            self.local.push(b' ');
            let before = self.local.len();
            let mut rest = std::mem::take(&mut self.local);
            self.lx.phrase(&mut rest);
            if rest.len() != before {
                self.cur.mailbox = None;
                self.cur.name = Some(rest);
            } else if !quoted {
                self.cur.domain = Some(Vec::new());
            }
            self.cur.invalid = true;
            step = Step::Broken;
        }
        step
    }

    fn mailbox(&mut self) -> Step {
        let start = self.lx.position();
        let mut step = self.name_addr();
        if step.is_broken() {
            self.lx.set_position(start);
            step = self.addr_spec();
            let cur = &mut self.cur;
            if cur.invalid && cur.name.is_none() && cur.mailbox.is_some() && cur.domain.is_none() {
                cur.name = cur.mailbox.take();
            }
        }
        self.push_fixed();
        step
    }

    /// `display-name ":" [mailbox-list] ";"`. Never Broken once the colon was seen, so the
    /// caller knows it was a group.
    fn group(&mut self) -> Step {
        let mut phrase = Vec::new();
        if !self.lx.phrase(&mut phrase).is_more() || !self.lx.peek_is(b':') {
            return Step::Broken;
        }
        self.lx.advance();
        let mut step = self.lx.skip_lwsp();
        self.cur.mailbox = Some(phrase);
        self.push();
        if step.is_more() && !self.lx.peek_is(b';') {
            loop {
                self.mailbox();
                if !self.lx.peek_is(b',') {
                    break;
                }
                self.lx.advance();
                if !self.lx.skip_lwsp().is_more() {
                    step = Step::Broken;
                    break;
                }
            }
        }
        if !step.is_broken() {
            if self.lx.peek_is(b';') {
                self.lx.advance();
                step = self.lx.skip_lwsp();
            } else {
                step = Step::Broken;
            }
        }
        self.push();
        if step == Step::End {
            Step::End
        } else {
            Step::More
        }
    }

    fn address(&mut self) -> Step {
        let start = self.lx.position();
        let step = self.group();
        if !step.is_broken() {
            return step;
        }
        self.lx.set_position(start);
        self.mailbox()
    }

    fn address_list(&mut self) {
        loop {
            if self.address() == Step::End || !self.lx.peek_is(b',') {
                break;
            }
            self.lx.advance();
            match self.lx.skip_lwsp() {
                Step::More => {}
                Step::Broken => {
                    self.push_fixed();
                    break;
                }
                Step::End => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, route, mailbox, host) with "NIL" for None.
    fn parse(value: &str) -> Vec<[String; 4]> {
        let mut out = Vec::new();
        parse_address_list(value.as_bytes(), &mut out);
        let s = |o: &Option<Octets>| {
            o.as_ref()
                .map_or("NIL".to_string(), |v| v.to_string_lossy())
        };
        out.iter()
            .map(|a| [s(&a.name), s(&a.route), s(&a.mailbox), s(&a.host)])
            .collect()
    }

    fn a(name: &str, route: &str, mailbox: &str, host: &str) -> [String; 4] {
        [name.into(), route.into(), mailbox.into(), host.into()]
    }

    #[test]
    fn ordinary_addresses() {
        assert_eq!(
            parse(
                r#"John   "Q."  Public <jqp@example.com>, (lead) a@b, c@d (trail), "foo bar"@example.com"#
            ),
            vec![
                a("John Q. Public", "NIL", "jqp", "example.com"),
                a("NIL", "NIL", "a", "b"),
                a("trail", "NIL", "c", "d"),
                a("NIL", "NIL", "foo bar", "example.com"),
            ]
        );
        assert_eq!(
            parse("<@r1.example,@r2.example:u@h>"),
            vec![a("NIL", "@r1.example,@r2.example", "u", "h")]
        );
        assert_eq!(
            parse("joe@[127.0.0.1], a..b@c, .x@y"),
            vec![
                a("NIL", "NIL", "joe", "[127.0.0.1]"),
                a("NIL", "NIL", "a..b", "c"),
                a("NIL", "NIL", ".x", "y"),
            ]
        );
    }

    #[test]
    fn groups_use_start_and_end_markers() {
        assert_eq!(
            parse(r#"Team: a@b, "x" <d@e.f>;, g@h.i"#),
            vec![
                a("NIL", "NIL", "Team", "NIL"),
                a("NIL", "NIL", "a", "b"),
                a("x", "NIL", "d", "e.f"),
                a("NIL", "NIL", "NIL", "NIL"),
                a("NIL", "NIL", "g", "h.i"),
            ]
        );
        assert_eq!(
            parse("undisclosed-recipients:;"),
            vec![
                a("NIL", "NIL", "undisclosed-recipients", "NIL"),
                a("NIL", "NIL", "NIL", "NIL")
            ]
        );
    }

    #[test]
    fn broken_addresses_get_dovecots_placeholders() {
        assert_eq!(
            parse("user"),
            vec![a("NIL", "NIL", "user", "MISSING_DOMAIN")]
        );
        assert_eq!(
            parse("\"quoted\""),
            vec![a("quoted", "NIL", "MISSING_MAILBOX", "MISSING_DOMAIN")]
        );
        assert_eq!(
            parse("Joe <>"),
            vec![a("Joe", "NIL", "MISSING_MAILBOX", "MISSING_DOMAIN")]
        );
        assert_eq!(
            parse("Name <foo@bar"),
            vec![a("Name", "NIL", "foo", "SYNTAX_ERROR")]
        );
        assert_eq!(
            parse("a b c;"),
            vec![a("a b c", "NIL", "MISSING_MAILBOX", "MISSING_DOMAIN")]
        );
        assert_eq!(
            parse("user (comment)"),
            vec![a("comment", "NIL", "user", "MISSING_DOMAIN")]
        );
        assert_eq!(
            parse("a@, @example.com"),
            vec![
                a("NIL", "NIL", "a", "MISSING_DOMAIN"),
                a("NIL", "NIL", "MISSING_MAILBOX", "example.com")
            ]
        );
        assert_eq!(parse(", , x@y").len(), 3);
        // Garbage that is not followed by a comma ends the list.
        assert_eq!(parse("a@b c@d, e@f"), vec![a("NIL", "NIL", "a", "b")]);
        assert!(parse("").is_empty());
        assert!(parse("   (only a comment) ").is_empty());
    }
}
