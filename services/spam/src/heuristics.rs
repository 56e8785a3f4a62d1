//! Header and structure rules. Each rule is a named symbol with a default score, in the way
//! SpamAssassin and rspamd name theirs, so a Decision's symbol list says exactly why a
//! message scored what it did, and an operator can re-weight or switch off a rule by name
//! ([`HeuristicsConfig::scores`]) without a code change.
//!
//! The rules are cheap, need nothing but the message (and the current time for the Date
//! check), and each one alone is weak evidence: scores are kept well below the junk threshold
//! (5.0) except for an executable attachment on an empty body, which is almost never
//! legitimate.

use std::collections::HashMap;
use std::net::IpAddr;

use mail_parser::{Message, MimeHeaders, PartType};
use serde::Deserialize;

use crate::tokenize::{extension, strip_html, url_hosts};

/// A rule that matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub symbol: &'static str,
    pub score: f32,
    pub reason: String,
}

/// A rule's name, default score and what it means (the documentation table is this list).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    pub symbol: &'static str,
    pub score: f32,
    pub description: &'static str,
}

pub const MISSING_DATE: &str = "MISSING_DATE";
pub const MISSING_MESSAGE_ID: &str = "MISSING_MESSAGE_ID";
pub const MISSING_FROM: &str = "MISSING_FROM";
pub const MISSING_SUBJECT: &str = "MISSING_SUBJECT";
pub const FROM_NAME_HAS_ADDRESS: &str = "FROM_NAME_HAS_ADDRESS";
pub const SUBJECT_ALL_CAPS: &str = "SUBJECT_ALL_CAPS";
pub const SUBJECT_EXCLAMATION: &str = "SUBJECT_EXCLAMATION";
pub const HTML_ONLY: &str = "HTML_ONLY";
pub const BODY_SHOUTING: &str = "BODY_SHOUTING";
pub const BODY_EXCLAMATION: &str = "BODY_EXCLAMATION";
pub const EXE_ATTACHMENT: &str = "EXE_ATTACHMENT";
pub const EMPTY_BODY_EXE_ATTACHMENT: &str = "EMPTY_BODY_EXE_ATTACHMENT";
pub const DATE_IN_FUTURE: &str = "DATE_IN_FUTURE";
pub const URL_BARE_IP: &str = "URL_BARE_IP";
pub const REPLYTO_DOMAIN_MISMATCH: &str = "REPLYTO_DOMAIN_MISMATCH";
pub const MANY_TO_RECIPIENTS: &str = "MANY_TO_RECIPIENTS";

/// Every rule with its default score.
pub const RULES: &[Rule] = &[
    Rule { symbol: MISSING_DATE, score: 1.0, description: "no Date header (RFC 5322 requires one)" },
    Rule { symbol: MISSING_MESSAGE_ID, score: 0.5, description: "no Message-ID header" },
    Rule { symbol: MISSING_FROM, score: 1.5, description: "no From header, or one without an address" },
    Rule { symbol: MISSING_SUBJECT, score: 0.3, description: "no Subject header" },
    Rule { symbol: FROM_NAME_HAS_ADDRESS, score: 2.0, description: "the From display name contains an address other than the real one (\"support@bank.example\" <x@elsewhere>)" },
    Rule { symbol: SUBJECT_ALL_CAPS, score: 1.0, description: "Subject has at least 8 letters, all upper case" },
    Rule { symbol: SUBJECT_EXCLAMATION, score: 0.8, description: "Subject has three or more '!'" },
    Rule { symbol: HTML_ONLY, score: 0.7, description: "HTML body with no text/plain alternative" },
    Rule { symbol: BODY_SHOUTING, score: 1.0, description: "over 60% of the body's letters (at least 100) are upper case" },
    Rule { symbol: BODY_EXCLAMATION, score: 0.8, description: "the body has runs of \"!!!\" three or more times, or more than 10 '!' per 1,000 characters" },
    Rule { symbol: EXE_ATTACHMENT, score: 2.0, description: "an attachment with an executable or script extension (exe, scr, js, vbs, ...)" },
    Rule { symbol: EMPTY_BODY_EXE_ATTACHMENT, score: 4.5, description: "an executable attachment and (almost) no body text; replaces EXE_ATTACHMENT" },
    Rule { symbol: DATE_IN_FUTURE, score: 2.0, description: "Date more than future_date_secs (default 24 h) ahead of now" },
    Rule { symbol: URL_BARE_IP, score: 1.5, description: "a link to a bare IP address instead of a host name" },
    Rule { symbol: REPLYTO_DOMAIN_MISMATCH, score: 1.0, description: "Reply-To goes to a different domain than From" },
    Rule { symbol: MANY_TO_RECIPIENTS, score: 1.0, description: "more than max_to_recipients (default 15) addresses in To" },
];

/// Extensions that run code when opened on common desktops.
pub const EXECUTABLE_EXTENSIONS: &[&str] = &[
    "exe", "scr", "com", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "wsh", "hta",
    "msi", "jar", "ps1", "lnk", "cpl", "reg",
];

/// Rule settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeuristicsConfig {
    /// Score overrides by symbol; 0.0 switches a rule off. Unknown symbols are ignored.
    pub scores: HashMap<String, f32>,
    /// How far in the future a Date may be before DATE_IN_FUTURE.
    pub future_date_secs: u64,
    /// To addresses above which MANY_TO_RECIPIENTS hits.
    pub max_to_recipients: usize,
}

impl Default for HeuristicsConfig {
    fn default() -> Self {
        Self {
            scores: HashMap::new(),
            future_date_secs: 24 * 3600,
            max_to_recipients: 15,
        }
    }
}

impl HeuristicsConfig {
    /// The effective score of `symbol`.
    pub fn score(&self, symbol: &str) -> f32 {
        if let Some(s) = self.scores.get(symbol) {
            return *s;
        }
        RULES
            .iter()
            .find(|r| r.symbol == symbol)
            .map_or(0.0, |r| r.score)
    }
}

struct Hits<'c> {
    cfg: &'c HeuristicsConfig,
    out: Vec<Hit>,
}

impl Hits<'_> {
    fn hit(&mut self, symbol: &'static str, reason: impl Into<String>) {
        let score = self.cfg.score(symbol);
        if score != 0.0 {
            self.out.push(Hit {
                symbol,
                score,
                reason: reason.into(),
            });
        }
    }
}

fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
}

/// Addresses written inside a display name: words with an `@` and a dot after it.
fn addresses_in(text: &str) -> Vec<String> {
    text.split(|c: char| {
        c.is_whitespace() || matches!(c, '<' | '>' | '"' | '(' | ')' | ',' | ';' | '\'')
    })
    .filter(|w| {
        w.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.ends_with('.'))
    })
    .map(|w| w.to_ascii_lowercase())
    .collect()
}

fn same_org(a: &str, b: &str) -> bool {
    let base = |d: &str| crate::tokenize::base_domain(d).unwrap_or_else(|| d.to_string());
    base(a) == base(b)
}

/// Runs every rule on a parsed message. `now` is the current time in Unix seconds.
pub fn check(message: &Message<'_>, now: u64, cfg: &HeuristicsConfig) -> Vec<Hit> {
    let mut h = Hits {
        cfg,
        out: Vec::new(),
    };

    match message.date() {
        None => h.hit(MISSING_DATE, "no Date header"),
        Some(date) => {
            let ts = date.to_timestamp();
            let limit = i64::try_from(now.saturating_add(cfg.future_date_secs)).unwrap_or(i64::MAX);
            if ts > limit {
                h.hit(
                    DATE_IN_FUTURE,
                    format!("Date is {} h ahead", (ts - now as i64) / 3600),
                );
            }
        }
    }
    if message.message_id().is_none() {
        h.hit(MISSING_MESSAGE_ID, "no Message-ID header");
    }
    if message.subject().is_none() {
        h.hit(MISSING_SUBJECT, "no Subject header");
    }

    let from = message.from().and_then(|a| a.first());
    let from_address = from.and_then(|a| a.address()).map(str::to_ascii_lowercase);
    match (&from, &from_address) {
        (Some(addr), Some(real)) => {
            if let Some(name) = addr.name() {
                if let Some(other) = addresses_in(name).into_iter().find(|a| a != real) {
                    h.hit(
                        FROM_NAME_HAS_ADDRESS,
                        format!("display name shows {other}, address is {real}"),
                    );
                }
            }
        }
        _ => h.hit(MISSING_FROM, "no From address"),
    }

    if let (Some(from_domain), Some(rt)) = (
        from_address.as_deref().and_then(domain_of),
        message
            .reply_to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .and_then(domain_of),
    ) {
        if !same_org(&from_domain, &rt) {
            h.hit(
                REPLYTO_DOMAIN_MISMATCH,
                format!("Reply-To domain {rt}, From domain {from_domain}"),
            );
        }
    }

    if let Some(to) = message.to() {
        let n = to.iter().count();
        if n > cfg.max_to_recipients {
            h.hit(MANY_TO_RECIPIENTS, format!("{n} addresses in To"));
        }
    }

    if let Some(subject) = message.subject() {
        let letters: Vec<char> = subject.chars().filter(|c| c.is_alphabetic()).collect();
        if letters.len() >= 8 && letters.iter().all(|c| c.is_uppercase()) {
            h.hit(SUBJECT_ALL_CAPS, "Subject is all capitals");
        }
        let bangs = subject.matches('!').count();
        if bangs >= 3 {
            h.hit(SUBJECT_EXCLAMATION, format!("{bangs} '!' in Subject"));
        }
    }

    // Body: the readable alternatives as text, the same parts the tokenizer reads.
    let mut has_text = false;
    let mut has_html = false;
    let mut body = String::new();
    let mut urls: Vec<String> = Vec::new();
    let mut ids: Vec<u32> = message
        .text_body
        .iter()
        .chain(message.html_body.iter())
        .copied()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        match message.part(id).map(|p| &p.body) {
            Some(PartType::Text(t)) => {
                has_text = true;
                urls.extend(url_hosts(t));
                body.push_str(t);
                body.push('\n');
            }
            Some(PartType::Html(html)) => {
                has_html = true;
                urls.extend(url_hosts(html));
                if !has_text {
                    body.push_str(&strip_html(html));
                    body.push('\n');
                }
            }
            _ => {}
        }
    }
    if has_html && !has_text {
        h.hit(HTML_ONLY, "HTML body without a text/plain part");
    }
    let letters = body.chars().filter(|c| c.is_alphabetic()).count();
    let upper = body.chars().filter(|c| c.is_uppercase()).count();
    if letters >= 100 && upper * 10 > letters * 6 {
        h.hit(
            BODY_SHOUTING,
            format!(
                "{}% of the body's letters are capitals",
                upper * 100 / letters
            ),
        );
    }
    let bangs = body.matches('!').count();
    let runs = body.matches("!!!").count();
    if runs >= 3 || (bangs > 10 && bangs * 1000 > body.chars().count() * 10) {
        h.hit(BODY_EXCLAMATION, format!("{bangs} '!' in the body"));
    }

    if let Some(ip) = urls.iter().find(|u| u.parse::<IpAddr>().is_ok()) {
        h.hit(URL_BARE_IP, format!("link to {ip}"));
    }

    let exe = message.attachments().find_map(|part| {
        let name = part.attachment_name()?;
        let ext = extension(name)?;
        EXECUTABLE_EXTENSIONS
            .contains(&ext.as_str())
            .then(|| name.to_string())
    });
    if let Some(name) = exe {
        let words = body.split_whitespace().count();
        if words < 5 {
            h.hit(
                EMPTY_BODY_EXE_ATTACHMENT,
                format!("executable attachment {name:?} and {words} words of text"),
            );
        } else {
            h.hit(EXE_ATTACHMENT, format!("executable attachment {name:?}"));
        }
    }
    h.out
}

/// Parses raw bytes and runs [`check`]; bytes that are not a message give no hits.
pub fn check_raw(raw: &[u8], now: u64, cfg: &HeuristicsConfig) -> Vec<Hit> {
    mail_parser::MessageParser::default()
        .parse(raw)
        .map(|m| check(&m, now, cfg))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-07T00:00:00Z
    const NOW: u64 = 1_796_601_600;
    const GOOD_HEADERS: &str = "From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: Lunch on Friday\r\nDate: Sun, 6 Dec 2026 23:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n";

    fn symbols(raw: &str) -> Vec<&'static str> {
        check_raw(raw.as_bytes(), NOW, &HeuristicsConfig::default())
            .into_iter()
            .map(|h| h.symbol)
            .collect()
    }

    #[test]
    fn clean_message_has_no_hits() {
        let raw =
            format!("{GOOD_HEADERS}\r\nShall we meet at noon? See https://example.com/menu\r\n");
        assert_eq!(symbols(&raw), Vec::<&str>::new());
    }

    #[test]
    fn missing_headers() {
        let s = symbols("To: bob@example.org\r\n\r\nhello there\r\n");
        for want in [
            MISSING_DATE,
            MISSING_MESSAGE_ID,
            MISSING_FROM,
            MISSING_SUBJECT,
        ] {
            assert!(s.contains(&want), "{s:?}");
        }
    }

    #[test]
    fn from_display_name_with_other_address() {
        let raw = "From: \"service@bank.example\" <x@phish.example>\r\nTo: b@example.org\r\nSubject: Verify your account\r\nDate: Sun, 6 Dec 2026 23:00:00 +0000\r\nMessage-ID: <2@x>\r\n\r\nclick\r\n";
        assert_eq!(symbols(raw), [FROM_NAME_HAS_ADDRESS]);
        // The same address in the name is fine.
        let ok = raw.replace("service@bank.example", "x@phish.example");
        assert!(symbols(&ok).is_empty());
    }

    #[test]
    fn subject_and_body_shouting() {
        let raw = GOOD_HEADERS.replace("Lunch on Friday", "FREE MONEY NOW!!!")
            + "\r\n"
            + &"BUY NOW AND SAVE BIG ON EVERYTHING TODAY!!! ".repeat(5);
        let s = symbols(&raw);
        for want in [
            SUBJECT_ALL_CAPS,
            SUBJECT_EXCLAMATION,
            BODY_SHOUTING,
            BODY_EXCLAMATION,
        ] {
            assert!(s.contains(&want), "{want} not in {s:?}");
        }
    }

    #[test]
    fn html_only_and_bare_ip_url() {
        let raw = GOOD_HEADERS.to_string()
            + "Content-Type: text/html\r\n\r\n<p>Log in <a href=\"http://203.0.113.9/login\">here</a></p>\r\n";
        assert_eq!(symbols(&raw), [HTML_ONLY, URL_BARE_IP]);
        let alt = GOOD_HEADERS.to_string()
            + "Content-Type: multipart/alternative; boundary=z\r\n\r\n--z\r\nContent-Type: text/plain\r\n\r\nhi\r\n--z\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--z--\r\n";
        assert!(symbols(&alt).is_empty(), "{:?}", symbols(&alt));
    }

    #[test]
    fn executable_attachment_with_and_without_body() {
        let with = |text: &str, name: &str| {
            GOOD_HEADERS.to_string()
                + "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
                + text
                + "\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\""
                + name
                + "\"\r\n\r\nAAAA\r\n--b--\r\n"
        };
        assert_eq!(
            symbols(&with("", "invoice.pdf.exe")),
            [EMPTY_BODY_EXE_ATTACHMENT]
        );
        assert_eq!(
            symbols(&with(
                "here is the installer you asked for yesterday",
                "setup.msi"
            )),
            [EXE_ATTACHMENT]
        );
        assert!(symbols(&with("", "report.pdf")).is_empty());
        assert_eq!(symbols(&with("", "x.VBS")), [EMPTY_BODY_EXE_ATTACHMENT]);
    }

    #[test]
    fn date_in_future() {
        let raw = GOOD_HEADERS.replace("Sun, 6 Dec 2026 23:00:00", "Fri, 1 Jan 2027 00:00:00")
            + "\r\nhello\r\n";
        assert_eq!(symbols(&raw), [DATE_IN_FUTURE]);
        let soon = GOOD_HEADERS.replace("Sun, 6 Dec 2026 23:00:00", "Mon, 7 Dec 2026 10:00:00")
            + "\r\nhello\r\n";
        assert!(symbols(&soon).is_empty(), "within the allowance");
    }

    #[test]
    fn reply_to_mismatch_and_many_recipients() {
        let raw = GOOD_HEADERS.to_string() + "Reply-To: <collect@elsewhere.example>\r\n\r\nhi\r\n";
        assert_eq!(symbols(&raw), [REPLYTO_DOMAIN_MISMATCH]);
        let sub = GOOD_HEADERS.to_string() + "Reply-To: <list@lists.example.com>\r\n\r\nhi\r\n";
        assert!(symbols(&sub).is_empty(), "same organisation");
        let to: Vec<String> = (0..16).map(|i| format!("u{i}@example.org")).collect();
        let many = GOOD_HEADERS.replace("To: bob@example.org", &format!("To: {}", to.join(", ")))
            + "\r\nhi\r\n";
        assert_eq!(symbols(&many), [MANY_TO_RECIPIENTS]);
    }

    #[test]
    fn score_overrides_and_disable() {
        let mut cfg = HeuristicsConfig::default();
        cfg.scores.insert(MISSING_DATE.into(), 0.0);
        cfg.scores.insert(MISSING_MESSAGE_ID.into(), 3.0);
        let hits = check_raw(b"From: a@b.example\r\nSubject: x\r\n\r\nhi\r\n", NOW, &cfg);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].symbol, MISSING_MESSAGE_ID);
        assert_eq!(hits[0].score, 3.0);
    }

    #[test]
    fn every_rule_has_a_unique_symbol() {
        let mut s: Vec<&str> = RULES.iter().map(|r| r.symbol).collect();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), RULES.len());
    }
}
