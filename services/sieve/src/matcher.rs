//! Comparators (RFC 4790 as used by RFC 5228 §2.7.3: i;octet,
//! i;ascii-casemap, i;ascii-numeric) and match types (:is, :contains,
//! :matches, relational :value, :regex).
//!
//! `:matches` globs are translated to an anchored regex with lazy groups:
//! the `regex` crate runs in time linear in the input, so a hostile pattern
//! such as `*a*a*a*a*b` cannot make a delivery spin, and the lazy groups
//! give the leftmost-shortest captures RFC 5229 §3.2 expects for `${1}`.

use std::cmp::Ordering;

use regex::{Regex, RegexBuilder};

use crate::Limits;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Cmp {
    Octet,
    Casemap,
    Numeric,
}

impl Cmp {
    pub(crate) fn from_name(n: Option<&str>) -> Cmp {
        match n {
            Some("i;octet") => Cmp::Octet,
            Some("i;ascii-numeric") => Cmp::Numeric,
            _ => Cmp::Casemap,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Rel {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Rel {
    pub(crate) fn parse(s: &str) -> Option<Rel> {
        Some(match s.to_ascii_lowercase().as_str() {
            "gt" => Rel::Gt,
            "ge" => Rel::Ge,
            "lt" => Rel::Lt,
            "le" => Rel::Le,
            "eq" => Rel::Eq,
            "ne" => Rel::Ne,
            _ => return None,
        })
    }

    pub(crate) fn holds(self, o: Ordering) -> bool {
        match self {
            Rel::Gt => o == Ordering::Greater,
            Rel::Ge => o != Ordering::Less,
            Rel::Lt => o == Ordering::Less,
            Rel::Le => o != Ordering::Greater,
            Rel::Eq => o == Ordering::Equal,
            Rel::Ne => o != Ordering::Equal,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mt {
    Is,
    Contains,
    Matches,
    Regex,
    Value(Rel),
    Count(Rel),
}

/// i;ascii-numeric: the value of the leading digits; a string without one
/// is positive infinity (RFC 4790 §9.1). Compared without parsing so that
/// long digit strings cannot overflow.
fn numeric_key(s: &str) -> Option<&str> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let d = s[..digits].trim_start_matches('0');
    Some(d)
}

pub(crate) fn compare(cmp: Cmp, a: &str, b: &str) -> Ordering {
    match cmp {
        Cmp::Octet => a.as_bytes().cmp(b.as_bytes()),
        Cmp::Casemap => a
            .bytes()
            .map(|c| c.to_ascii_lowercase())
            .cmp(b.bytes().map(|c| c.to_ascii_lowercase())),
        Cmp::Numeric => match (numeric_key(a), numeric_key(b)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
        },
    }
}

pub(crate) fn build_regex(
    pattern: &str,
    caseless: bool,
    limits: &Limits,
) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(caseless)
        .size_limit(limits.max_regex_bytes)
        .dfa_size_limit(limits.max_regex_bytes)
        .nest_limit(64)
        .build()
}

/// Translates a Sieve wildcard pattern to an anchored regex: `*` is a lazy
/// group, `?` a one-character group, `\x` the literal `x`.
pub(crate) fn glob_to_regex(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    out.push_str("(?s)\\A");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str("(.*?)"),
            '?' => out.push_str("(.)"),
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push_str(&regex::escape(&n.to_string()));
                }
            }
            c => out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    out.push_str("\\z");
    out
}

pub(crate) fn contains(cmp: Cmp, hay: &str, needle: &str) -> bool {
    match cmp {
        Cmp::Octet => hay.contains(needle),
        _ => {
            let h = hay.to_ascii_lowercase();
            let n = needle.to_ascii_lowercase();
            h.contains(&n)
        }
    }
}

pub(crate) fn is(cmp: Cmp, a: &str, b: &str) -> bool {
    match cmp {
        Cmp::Octet => a == b,
        Cmp::Casemap => a.eq_ignore_ascii_case(b),
        Cmp::Numeric => compare(cmp, a, b) == Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str, t: &str) -> Option<Vec<String>> {
        let re = build_regex(&glob_to_regex(p), true, &Limits::default()).unwrap();
        re.captures(t).map(|c| {
            c.iter()
                .map(|m| m.map_or(String::new(), |m| m.as_str().to_string()))
                .collect()
        })
    }

    #[test]
    fn globs() {
        assert!(glob("*", "").is_some());
        assert!(glob("a?c", "abc").is_some());
        assert!(glob("a?c", "ac").is_none());
        assert!(glob("A*", "abc").is_some());
        assert!(glob("a\\*", "a*").is_some());
        assert!(glob("a\\*", "ab").is_none());
        assert!(glob("a.c", "abc").is_none());
        let c = glob("*@*.*", "user@sub.example.com").unwrap();
        assert_eq!(c[1], "user");
        assert_eq!(c[2], "sub");
        assert_eq!(c[3], "example.com");
        assert!(glob(&"*a".repeat(50), &"a".repeat(10_000)).is_some());
    }

    #[test]
    fn numeric() {
        assert_eq!(compare(Cmp::Numeric, "10", "9"), Ordering::Greater);
        assert_eq!(compare(Cmp::Numeric, "007", "7"), Ordering::Equal);
        assert_eq!(
            compare(Cmp::Numeric, "x", "99999999999999999999999"),
            Ordering::Greater
        );
        assert_eq!(compare(Cmp::Numeric, "x", "y"), Ordering::Equal);
        assert!(is(Cmp::Numeric, "5abc", "5"));
    }

    #[test]
    fn casemap() {
        assert!(is(Cmp::Casemap, "HeLLo", "hello"));
        assert!(!is(Cmp::Octet, "HeLLo", "hello"));
        assert!(contains(Cmp::Casemap, "Hello World", "o w"));
        assert!(!contains(Cmp::Octet, "Hello World", "o w"));
        assert!(Rel::parse("GE").unwrap().holds(Ordering::Equal));
        assert!(compare(Cmp::Casemap, "B", "a") == Ordering::Greater);
    }
}
