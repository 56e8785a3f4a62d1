//! DNS block and allow lists, as pure helpers: the pipeline does the lookups with its own
//! resolver (timeouts, caching, concurrency are its business) and this module only builds the
//! names to query and reads the answers.
//!
//! - IP lists (Spamhaus ZEN, DNSWL, ...) are queried with the client address reversed under the
//!   list's zone: octets for IPv4, nibbles for IPv6 (`1.0.0.0.….8.b.d.0.1.0.0.2.zone`).
//! - Domain lists (Spamhaus DBL, URIBL, SURBL) are queried with the domain itself under the
//!   zone; the pipeline takes the domains from the URL hosts of the message
//!   ([`crate::Tokens::url_hosts`]) through [`domain_query_name`].
//! - An answer in 127.0.0.0/8 means listed; the last octet is the list's return code. Spamhaus
//!   answers 127.255.255.x when it refuses the query (public resolver, over the free limit,
//!   typo in the zone): that is *not* a listing, and is reported as [`Listing::Refused`] so
//!   the pipeline can log it. Answers outside 127/8 are ignored: some resolvers answer NXDOMAIN
//!   with an advertising address, which must not list every sender.

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use crate::ConfigError;

/// Whether a listing counts against or for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    /// A listing adds `score` (positive).
    #[default]
    Block,
    /// A listing adds `score` (negative, e.g. -3.0 for a DNSWL).
    Allow,
}

/// What a list is queried with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListTarget {
    /// The connecting client's IP address.
    #[default]
    Ip,
    /// Domains of URLs in the message.
    Domain,
}

/// One DNS list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsList {
    /// The list's zone, e.g. `zen.spamhaus.org`.
    pub zone: String,
    /// Added to the message's score when listed.
    pub score: f32,
    #[serde(default)]
    pub kind: ListKind,
    #[serde(default)]
    pub target: ListTarget,
    /// Symbol in the Decision; defaults to `DNSBL_<zone>` / `DNSWL_<zone>`.
    #[serde(default)]
    pub symbol: Option<String>,
    /// Return codes (last octet of 127.0.0.x) that count; empty means any.
    #[serde(default)]
    pub codes: Vec<u8>,
}

impl DnsList {
    /// The symbol this list's hits carry.
    pub fn symbol(&self) -> String {
        if let Some(s) = &self.symbol {
            return s.clone();
        }
        let prefix = match self.kind {
            ListKind::Block => "DNSBL_",
            ListKind::Allow => "DNSWL_",
        };
        let zone: String = self
            .zone
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("{prefix}{zone}")
    }
}

/// The lists to consult.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsblConfig {
    /// No lists by default: the well-known ones have usage terms the operator must accept.
    pub lists: Vec<DnsList>,
    /// Most URL domains looked up per message, to bound the number of queries.
    pub max_domains: usize,
}

impl Default for DnsblConfig {
    fn default() -> Self {
        Self {
            lists: Vec::new(),
            max_domains: 10,
        }
    }
}

impl DnsblConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for list in &self.lists {
            let err = |reason| ConfigError::DnsList {
                zone: list.zone.clone(),
                reason,
            };
            if !valid_name(list.zone.trim_end_matches('.')) {
                return Err(err("not a valid DNS zone"));
            }
            if !list.score.is_finite() {
                return Err(err("score must be finite"));
            }
            match list.kind {
                ListKind::Block if list.score < 0.0 => {
                    return Err(err("a block list's score must not be negative"))
                }
                ListKind::Allow if list.score > 0.0 => {
                    return Err(err("an allow list's score must not be positive"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The lists queried with the client IP.
    pub fn ip_lists(&self) -> impl Iterator<Item = &DnsList> {
        self.lists.iter().filter(|l| l.target == ListTarget::Ip)
    }

    /// The lists queried with URL domains.
    pub fn domain_lists(&self) -> impl Iterator<Item = &DnsList> {
        self.lists.iter().filter(|l| l.target == ListTarget::Domain)
    }

    /// The distinct domains to query domain lists with, from the message's URL hosts (base
    /// domains, IP literals skipped, at most `max_domains`).
    pub fn domains_to_query(&self, url_hosts: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for host in url_hosts {
            if let Some(d) = crate::tokenize::base_domain(host) {
                if !out.contains(&d) {
                    out.push(d);
                }
            }
            if out.len() >= self.max_domains {
                break;
            }
        }
        out
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The name to look up (type A) for `ip` in `zone`: `4.3.2.1.zone` for 1.2.3.4, the 32
/// reversed nibbles for an IPv6 address. An IPv4-mapped IPv6 address is queried as IPv4,
/// since that is what the client really is.
pub fn ip_query_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    s.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    s.push('.');
                }
            }
            s.push_str(zone);
            s
        }
    }
}

/// The name to look up for `domain` in a domain list's `zone`, or `None` when the domain is
/// an IP literal or the result would not be a valid DNS name.
pub fn domain_query_name(domain: &str, zone: &str) -> Option<String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.parse::<IpAddr>().is_ok() || !domain.contains('.') {
        return None;
    }
    let name = format!("{domain}.{}", zone.trim_end_matches('.'));
    valid_name(&name).then_some(name)
}

/// How to read a list's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// NXDOMAIN, or no answer in 127/8.
    NotListed,
    /// Listed with these return codes (last octets of the 127.0.0.x answers).
    Listed(Vec<u8>),
    /// The list refused to answer (127.255.255.x, Spamhaus' error codes): no result.
    Refused(u8),
}

/// Reads the A records of an answer (empty for NXDOMAIN).
pub fn interpret(answers: &[Ipv4Addr]) -> Listing {
    let mut codes = Vec::new();
    for a in answers {
        let [first, b, c, d] = a.octets();
        if first != 127 {
            continue;
        }
        if b == 255 && c == 255 {
            return Listing::Refused(d);
        }
        if !codes.contains(&d) {
            codes.push(d);
        }
    }
    codes.sort_unstable();
    if codes.is_empty() {
        Listing::NotListed
    } else {
        Listing::Listed(codes)
    }
}

/// A list that matched.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsblHit {
    pub symbol: String,
    pub zone: String,
    pub score: f32,
    pub kind: ListKind,
    /// What was queried (the IP address or the domain).
    pub queried: String,
    pub codes: Vec<u8>,
}

/// Turns one list's answer for `queried` into a hit, if it is a listing with a code the list
/// counts.
pub fn evaluate(list: &DnsList, queried: &str, answers: &[Ipv4Addr]) -> Option<DnsblHit> {
    let Listing::Listed(codes) = interpret(answers) else {
        return None;
    };
    let codes: Vec<u8> = if list.codes.is_empty() {
        codes
    } else {
        codes
            .into_iter()
            .filter(|c| list.codes.contains(c))
            .collect()
    };
    if codes.is_empty() {
        return None;
    }
    Some(DnsblHit {
        symbol: list.symbol(),
        zone: list.zone.clone(),
        score: list.score,
        kind: list.kind,
        queried: queried.to_string(),
        codes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(zone: &str, kind: ListKind, codes: Vec<u8>) -> DnsList {
        DnsList {
            zone: zone.into(),
            score: if kind == ListKind::Block { 5.0 } else { -2.0 },
            kind,
            target: ListTarget::Ip,
            symbol: None,
            codes,
        }
    }

    #[test]
    fn ipv4_query_name() {
        assert_eq!(
            ip_query_name("192.0.2.99".parse().unwrap(), "zen.example.org."),
            "99.2.0.192.zen.example.org"
        );
        assert_eq!(
            ip_query_name("::ffff:192.0.2.1".parse().unwrap(), "bl.example"),
            "1.2.0.192.bl.example"
        );
    }

    #[test]
    fn ipv6_nibble_query_name() {
        let name = ip_query_name("2001:db8:1:2::abcd".parse().unwrap(), "zen.example.org");
        assert_eq!(
            name,
            "d.c.b.a.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.zen.example.org"
        );
        assert_eq!(name.split('.').count(), 32 + 3);
    }

    #[test]
    fn domain_query_names() {
        assert_eq!(
            domain_query_name("Example.COM.", "dbl.example.org").as_deref(),
            Some("example.com.dbl.example.org")
        );
        assert_eq!(domain_query_name("192.0.2.1", "dbl.example.org"), None);
        assert_eq!(domain_query_name("localhost", "dbl.example.org"), None);
        assert_eq!(domain_query_name("bad..name", "dbl.example.org"), None);
        let cfg = DnsblConfig {
            max_domains: 2,
            ..Default::default()
        };
        let hosts: Vec<String> = [
            "www.shop.example",
            "cdn.shop.example",
            "10.0.0.1",
            "a.other.example",
            "third.example",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            cfg.domains_to_query(&hosts),
            ["shop.example", "other.example"]
        );
    }

    #[test]
    fn answers() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(interpret(&[]), Listing::NotListed);
        assert_eq!(
            interpret(&[ip("127.0.0.4"), ip("127.0.0.2"), ip("127.0.0.4")]),
            Listing::Listed(vec![2, 4])
        );
        assert_eq!(interpret(&[ip("127.255.255.254")]), Listing::Refused(254));
        assert_eq!(
            interpret(&[ip("198.51.100.1")]),
            Listing::NotListed,
            "NXDOMAIN hijack"
        );

        let zen = list("zen.example.org", ListKind::Block, vec![]);
        let hit = evaluate(&zen, "192.0.2.1", &[ip("127.0.0.2")]).unwrap();
        assert_eq!(hit.symbol, "DNSBL_ZEN_EXAMPLE_ORG");
        assert_eq!(hit.score, 5.0);
        assert!(
            evaluate(&zen, "192.0.2.1", &[ip("127.255.255.255")]).is_none(),
            "ratelimited is no result"
        );

        let pbl_only = list("zen.example.org", ListKind::Block, vec![10, 11]);
        assert!(evaluate(&pbl_only, "x", &[ip("127.0.0.2")]).is_none());
        assert_eq!(
            evaluate(&pbl_only, "x", &[ip("127.0.0.2"), ip("127.0.0.11")])
                .unwrap()
                .codes,
            [11]
        );

        let wl = list("list.dnswl.example", ListKind::Allow, vec![]);
        let hit = evaluate(&wl, "x", &[ip("127.0.10.0")]).unwrap();
        assert_eq!(hit.symbol, "DNSWL_LIST_DNSWL_EXAMPLE");
        assert!(hit.score < 0.0);
    }

    #[test]
    fn validation() {
        let mut cfg = DnsblConfig::default();
        cfg.lists
            .push(list("zen.example.org", ListKind::Block, vec![]));
        assert!(cfg.validate().is_ok());
        cfg.lists.push(list("bad zone", ListKind::Block, vec![]));
        assert!(cfg.validate().is_err());
        cfg.lists.pop();
        let mut neg = list("x.example", ListKind::Block, vec![]);
        neg.score = -1.0;
        cfg.lists.push(neg);
        assert!(cfg.validate().is_err());
    }
}
