//! Turning a message into the bag of tokens the Bayes model learns from.
//!
//! Why these choices:
//! - Header tokens are prefixed (`subject:`, `from:`, `to:`) because the same word means
//!   different things in different places ("free" in a Subject is stronger evidence than in a
//!   quoted reply), which is what SpamBayes found empirically.
//! - Bodies are decoded by `mail_parser` (transfer encodings and charsets), HTML is reduced to
//!   its text so markup does not swamp the vocabulary, and everything is lowercased so case
//!   games do not create new, untrained tokens.
//! - Tokens outside 3..=40 bytes are dropped (short ones are noise, long ones are mostly
//!   base64 or hashes that never recur); a very long word becomes one `skip:` token carrying
//!   its first character and rough length, which does recur.
//! - URL hosts are kept both as tokens and separately, because the pipeline also queries them
//!   against domain block lists.
//! - The number of distinct tokens per message and the bytes scanned per body part are capped,
//!   so a huge message costs no more than a big one. Headers come first, so they always fit.
//! - The output is deterministic: the order of first appearance, no hashing or randomness.

use std::collections::HashSet;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use serde::Deserialize;

use crate::ConfigError;

/// Limits of the tokenizer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Shortest token kept, in bytes.
    pub min_len: usize,
    /// Longest token kept, in bytes; longer words become a `skip:` token.
    pub max_len: usize,
    /// Distinct tokens per message; further tokens are ignored.
    pub max_tokens: usize,
    /// Bytes of each decoded body part that are looked at.
    pub max_body_bytes: usize,
    /// Distinct URL hosts kept per message.
    pub max_url_hosts: usize,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            min_len: 3,
            max_len: 40,
            max_tokens: 2_000,
            max_body_bytes: 256 * 1024,
            max_url_hosts: 50,
        }
    }
}

impl TokenizerConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.min_len == 0 || self.min_len > self.max_len {
            return Err(ConfigError::Tokenizer("min_len must be in 1..=max_len"));
        }
        if self.max_tokens == 0 {
            return Err(ConfigError::Tokenizer("max_tokens must be positive"));
        }
        Ok(())
    }
}

/// The distinct tokens of one message, in order of first appearance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    tokens: Vec<String>,
    url_hosts: Vec<String>,
    truncated: bool,
}

impl Tokens {
    /// Tokens built from already-split words (deduplicated, no other processing): for callers
    /// with their own tokens and for tests.
    pub fn from_words<I, S>(words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut seen = HashSet::new();
        let tokens = words
            .into_iter()
            .map(Into::into)
            .filter(|w| seen.insert(w.clone()))
            .collect();
        Self {
            tokens,
            url_hosts: Vec::new(),
            truncated: false,
        }
    }

    pub fn as_slice(&self) -> &[String] {
        &self.tokens
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Distinct hosts of the `http(s)://` URLs found in the bodies, lowercased, for domain
    /// block lists (see [`crate::dnsbl::domain_query_name`]).
    pub fn url_hosts(&self) -> &[String] {
        &self.url_hosts
    }

    /// True when the token cap was reached and some tokens were dropped.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

struct Builder<'c> {
    cfg: &'c TokenizerConfig,
    seen: HashSet<String>,
    out: Tokens,
    hosts_seen: HashSet<String>,
}

impl<'c> Builder<'c> {
    fn new(cfg: &'c TokenizerConfig) -> Self {
        Self {
            cfg,
            seen: HashSet::new(),
            out: Tokens::default(),
            hosts_seen: HashSet::new(),
        }
    }

    fn full(&self) -> bool {
        self.out.tokens.len() >= self.cfg.max_tokens
    }

    fn push(&mut self, token: String) {
        if self.full() {
            self.out.truncated = true;
            return;
        }
        if self.seen.insert(token.clone()) {
            self.out.tokens.push(token);
        }
    }

    /// Words of `text`, each lowercased, length-filtered and prefixed.
    fn words(&mut self, prefix: &str, text: &str) {
        for word in split_words(text) {
            if self.full() {
                self.out.truncated = true;
                return;
            }
            let lower = word.to_lowercase();
            let len = lower.len();
            if len < self.cfg.min_len {
                continue;
            }
            if len > self.cfg.max_len {
                let first = lower.chars().next().unwrap_or('?');
                self.push(format!("{prefix}skip:{first} {}", len / 10 * 10));
                continue;
            }
            self.push(format!("{prefix}{lower}"));
        }
    }

    fn urls(&mut self, text: &str) {
        for host in url_hosts(text) {
            if self.out.url_hosts.len() >= self.cfg.max_url_hosts {
                break;
            }
            if self.hosts_seen.insert(host.clone()) {
                self.push(format!("url:{host}"));
                if let Some(domain) = base_domain(&host) {
                    if domain != host {
                        self.push(format!("url:{domain}"));
                    }
                }
                self.out.url_hosts.push(host);
            }
        }
    }

    fn address(&mut self, prefix: &str, addr: &mail_parser::Addr<'_>) {
        if let Some(name) = addr.name() {
            self.words(&format!("{prefix}name:"), name);
        }
        if let Some(address) = addr.address() {
            let address = address.to_lowercase();
            if let Some((_, domain)) = address.rsplit_once('@') {
                self.push(format!("{prefix}domain:{domain}"));
            }
            if address.len() <= self.cfg.max_len * 2 {
                self.push(format!("{prefix}addr:{address}"));
            }
        }
    }
}

/// Splits text on anything that is not a letter, digit or one of `$'-_`, trimming those three
/// (except `$`) from the ends, so "don't" and "$99" survive but quotes and dashes do not.
fn split_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || matches!(c, '$' | '\'' | '-' | '_')))
        .map(|w| w.trim_matches(|c| matches!(c, '\'' | '-' | '_')))
        .filter(|w| !w.is_empty())
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Tokens of a parsed message.
pub fn tokenize(message: &Message<'_>, cfg: &TokenizerConfig) -> Tokens {
    let mut b = Builder::new(cfg);
    if let Some(subject) = message.subject() {
        b.words("subject:", subject);
    }
    for (prefix, addr) in [("from:", message.from()), ("to:", message.to())] {
        if let Some(list) = addr {
            for (i, a) in list.iter().enumerate() {
                if i >= 10 {
                    break;
                }
                b.address(prefix, a);
            }
        }
    }
    if let Some(rt) = message.reply_to().and_then(|a| a.first()) {
        b.address("reply-to:", rt);
    }
    // Which parts make up the body: mail-parser lists the readable alternatives in text_body
    // and html_body (an HTML-only message has its HTML part in both); each is read once.
    let mut ids: Vec<u32> = message
        .text_body
        .iter()
        .chain(message.html_body.iter())
        .copied()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let Some(part) = message.part(id) else {
            continue;
        };
        match &part.body {
            PartType::Text(text) => {
                let text = bounded(text, cfg.max_body_bytes);
                b.urls(text);
                b.words("", text);
            }
            PartType::Html(html) => {
                let html = bounded(html, cfg.max_body_bytes);
                b.urls(html);
                b.push("mime:html".to_string());
                b.words("", &strip_html(html));
            }
            _ => {}
        }
    }
    for part in message.attachments() {
        if let Some(ct) = part.content_type() {
            let sub = ct.subtype().unwrap_or("");
            b.push(format!("attach:type:{}/{}", ct.ctype(), sub).to_lowercase());
        }
        if let Some(ext) = part.attachment_name().and_then(extension) {
            b.push(format!("attach:ext:{ext}"));
        }
    }
    b.out
}

/// Parses and tokenizes raw message bytes; bytes mail-parser cannot make a message of are
/// tokenized as plain text.
pub fn tokenize_raw(raw: &[u8], cfg: &TokenizerConfig) -> Tokens {
    match MessageParser::default().parse(raw) {
        Some(message) => tokenize(&message, cfg),
        None => {
            let text = String::from_utf8_lossy(raw);
            let mut b = Builder::new(cfg);
            let text = bounded(&text, cfg.max_body_bytes);
            b.urls(text);
            b.words("", text);
            b.out
        }
    }
}

/// The lowercased extension of a file name, if it has one of at most 8 characters.
pub(crate) fn extension(name: &str) -> Option<String> {
    let name = name.trim().trim_end_matches(['.', ' ']);
    let (_, ext) = name.rsplit_once('.')?;
    (!ext.is_empty() && ext.len() <= 8 && ext.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| ext.to_ascii_lowercase())
}

/// Text of an HTML document: tags removed, `<script>`/`<style>` contents dropped, a few common
/// entities decoded. Not a full HTML parser: good enough for word statistics, which is all it
/// is for.
pub fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let lower = html.to_ascii_lowercase();
    let bytes = html.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let rest = &lower[i..];
            let skip_to = if rest.starts_with("<script") {
                Some("</script")
            } else if rest.starts_with("<style") {
                Some("</style")
            } else if rest.starts_with("<!--") {
                Some("-->")
            } else {
                None
            };
            let end = match skip_to {
                Some(close) => rest.find(close).map(|p| i + p + close.len()),
                None => None,
            };
            let from = end.unwrap_or(i);
            match lower[from..].find('>') {
                Some(p) => {
                    i = from + p + 1;
                    out.push(' ');
                }
                None => break,
            }
        } else if bytes[i] == b'&' {
            let rest = &html[i..];
            let end = bounded(rest, 10).find(';');
            match end.and_then(|e| decode_entity(&rest[1..e]).map(|c| (e, c))) {
                Some((e, c)) => {
                    out.push(c);
                    i += e + 1;
                }
                None => {
                    out.push('&');
                    i += 1;
                }
            }
        } else {
            let next = html[i..]
                .find(['<', '&'])
                .map(|p| i + p)
                .unwrap_or(bytes.len());
            out.push_str(&html[i..next]);
            i = next;
        }
    }
    out
}

fn decode_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

/// Hosts of the `http://` and `https://` URLs in `text`, lowercased, in order, with
/// duplicates. Userinfo (`user@`) and ports are removed; bracketed IPv6 literals keep their
/// address without brackets.
pub fn url_hosts(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut hosts = Vec::new();
    let mut pos = 0;
    while let Some(found) = lower[pos..].find("http") {
        let start = pos + found;
        let rest = &lower[start..];
        let after = if rest.starts_with("https://") {
            8
        } else if rest.starts_with("http://") {
            7
        } else {
            pos = start + 4;
            continue;
        };
        let authority_start = start + after;
        let authority: &str = {
            let rest = &lower[authority_start..];
            let end = rest
                .find(|c: char| {
                    c.is_whitespace()
                        || matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | ')' | '\\')
                })
                .unwrap_or(rest.len());
            &rest[..end]
        };
        pos = authority_start + authority.len();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if let Some(v6) = host_port.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            host_port.split(':').next().unwrap_or("")
        };
        let host = host.trim_end_matches('.');
        if !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
        {
            hosts.push(host.to_string());
        }
    }
    hosts
}

/// Second-level part of a host name ("mail.example.com" → "example.com"), with a rough
/// allowance for two-letter country zones that register at the third level ("shop.example.co.uk"
/// → "example.co.uk"). An approximation without the public suffix list, used for tokens and
/// domain block list queries; `None` for IP literals and single labels.
pub fn base_domain(host: &str) -> Option<String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let labels: Vec<&str> = host.split('.').filter(|l| !l.is_empty()).collect();
    if labels.len() < 2 {
        return None;
    }
    let n = labels.len();
    let tld = labels[n - 1];
    let sld = labels[n - 2];
    let keep = if n >= 3
        && tld.len() == 2
        && matches!(
            sld,
            "co" | "com" | "net" | "org" | "ac" | "gov" | "edu" | "ne" | "or"
        ) {
        3
    } else {
        2
    };
    Some(labels[n - keep..].join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(raw: &str) -> Tokens {
        tokenize_raw(raw.as_bytes(), &TokenizerConfig::default())
    }

    #[test]
    fn headers_are_prefixed_and_body_lowercased() {
        let t = toks(
            "From: \"Alice Smith\" <alice@Example.COM>\r\nTo: bob@example.org\r\nSubject: Quarterly REPORT attached\r\n\r\nPlease review the Budget figures, ok? Thanks!\r\n",
        );
        let all: Vec<&str> = t.iter().collect();
        for want in [
            "subject:quarterly",
            "subject:report",
            "from:name:alice",
            "from:domain:example.com",
            "from:addr:alice@example.com",
            "to:domain:example.org",
            "please",
            "budget",
            "figures",
            "thanks",
        ] {
            assert!(all.contains(&want), "missing {want} in {all:?}");
        }
        assert!(!all.contains(&"ok"), "short word kept");
        assert!(!all.iter().any(|t| t.chars().any(|c| c.is_uppercase())));
    }

    #[test]
    fn html_is_stripped_and_urls_collected() {
        let t = toks(
            "Subject: hi\r\nContent-Type: text/html\r\n\r\n<html><style>.x{color:red}</style><body><p>Cheap&nbsp;watches <a href=\"https://User@Shop.Example.co.uk:8443/buy?x=1\">here</a> and http://192.0.2.7/x</p><script>var tracking=1;</script></body></html>",
        );
        let all: Vec<&str> = t.iter().collect();
        assert!(all.contains(&"cheap"));
        assert!(all.contains(&"watches"));
        assert!(all.contains(&"mime:html"));
        assert!(!all.contains(&"color"), "style content leaked: {all:?}");
        assert!(!all.contains(&"tracking"), "script content leaked");
        assert!(!all.contains(&"href"), "markup leaked");
        assert_eq!(t.url_hosts(), ["shop.example.co.uk", "192.0.2.7"]);
        assert!(all.contains(&"url:shop.example.co.uk"));
        assert!(all.contains(&"url:example.co.uk"));
    }

    #[test]
    fn long_words_become_skip_tokens_and_cap_holds() {
        let long = "x".repeat(95);
        let t = toks(&format!("Subject: a\r\n\r\n{long}\r\n"));
        assert!(t.iter().any(|w| w == "skip:x 90"), "{:?}", t.as_slice());

        let body: String = (0..5000).map(|i| format!("word{i} ")).collect();
        let t = toks(&format!("Subject: many\r\n\r\n{body}"));
        assert_eq!(t.len(), 2_000);
        assert!(t.truncated());
        assert_eq!(t.as_slice()[0], "subject:many", "headers come first");
    }

    #[test]
    fn deterministic_and_distinct() {
        let raw = "Subject: same same same\r\n\r\nrepeat repeat repeat other\r\n";
        let a = toks(raw);
        let b = toks(raw);
        assert_eq!(a, b);
        assert_eq!(a.as_slice(), ["subject:same", "repeat", "other"]);
    }

    #[test]
    fn decodes_transfer_encoding_and_attachment_tokens() {
        let raw = "Subject: =?utf-8?q?Caf=C3=A9_menu?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQgZnJvbSBiYXNlNjQ=\r\n--b\r\nContent-Type: application/octet-stream; name=\"invoice.EXE\"\r\nContent-Disposition: attachment; filename=\"invoice.EXE\"\r\n\r\nMZ\r\n--b--\r\n";
        let t = toks(raw);
        let all: Vec<&str> = t.iter().collect();
        assert!(all.contains(&"subject:café"), "{all:?}");
        assert!(all.contains(&"hello") && all.contains(&"base64"), "{all:?}");
        assert!(all.contains(&"attach:ext:exe"), "{all:?}");
    }

    #[test]
    fn multibyte_text_never_splits_a_character() {
        // An '&' followed by multibyte characters within the entity look-ahead window.
        assert_eq!(strip_html("&ééééé; x"), "&ééééé; x");
        assert_eq!(bounded("aé", 2), "a");
        let t = toks("Subject: ümlaut ÜBER straße\r\n\r\nnaïve café 東京タワー\r\n");
        assert!(t.iter().any(|w| w == "subject:über"), "{:?}", t.as_slice());
        assert!(t.iter().any(|w| w == "東京タワー"), "{:?}", t.as_slice());
    }

    #[test]
    fn entities_and_base_domain() {
        assert_eq!(
            strip_html("a&amp;b &#65;&#x42; &bogus; <b>x</b>"),
            "a&b AB &bogus;  x "
        );
        assert_eq!(
            base_domain("a.b.example.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            base_domain("example.co.uk").as_deref(),
            Some("example.co.uk")
        );
        assert_eq!(base_domain("localhost"), None);
        assert_eq!(base_domain("10.0.0.1"), None);
        assert_eq!(url_hosts("see http://[2001:db8::1]:80/x"), ["2001:db8::1"]);
        assert_eq!(extension("report.final.PDF"), Some("pdf".into()));
        assert_eq!(extension("noext"), None);
    }
}
