//! Mailbox addresses as they appear in SMTP paths and in the directory.
//!
//! An [`Address`] keeps the local part as given (local parts are case-sensitive per
//! RFC 5321 §2.4, although Mailfleet's directory matches them case-insensitively, like
//! every mainstream server) and the domain lowercased, since domains are not.

use std::fmt;

/// Longest address Mailfleet accepts: RFC 5321 §4.5.3.1 gives 64 octets for the local
/// part and 255 for the domain; a path is at most 256 octets.
pub const MAX_ADDRESS_LEN: usize = 254;
/// Longest local part (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_LEN: usize = 64;

/// A parsed `local@domain` address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    local: String,
    domain: String,
}

/// Why an address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than {MAX_ADDRESS_LEN} octets")]
    TooLong,
    #[error("address has no '@'")]
    MissingAt,
    #[error("local part is empty or longer than {MAX_LOCAL_LEN} octets")]
    BadLocalPart,
    #[error("domain '{0}' is not a valid domain name")]
    BadDomain(String),
    #[error("address contains a forbidden character")]
    ForbiddenChar,
}

impl Address {
    /// Parses `local@domain`. Quoted local parts (`"john doe"@example.com`) are accepted and
    /// kept quoted; UTF-8 is accepted (SMTPUTF8 decides at the protocol layer whether it may
    /// be used).
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(AddressError::Empty);
        }
        if input.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong);
        }
        if input
            .chars()
            .any(|c| c.is_control() || c == ' ' && !input.starts_with('"'))
        {
            return Err(AddressError::ForbiddenChar);
        }
        let at = input.rfind('@').ok_or(AddressError::MissingAt)?;
        let (local, domain) = (&input[..at], &input[at + 1..]);
        if local.is_empty() || local.len() > MAX_LOCAL_LEN {
            return Err(AddressError::BadLocalPart);
        }
        if local.starts_with('"') {
            if local.len() < 2 || !local.ends_with('"') {
                return Err(AddressError::BadLocalPart);
            }
        } else if local.contains([
            '<', '>', '(', ')', '[', ']', ',', ';', ':', '\\', '"', ' ', '@',
        ]) || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
        {
            return Err(AddressError::BadLocalPart);
        }
        let domain = normalize_domain(domain)?;
        Ok(Self {
            local: local.to_string(),
            domain,
        })
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The key the directory stores and looks up: the whole address, lowercased.
    pub fn key(&self) -> String {
        format!("{}@{}", self.local.to_lowercase(), self.domain)
    }

    /// The address with a `+tag` sub-address removed (`user+news@x` → `user@x`), or `None`
    /// when there is no tag. Used for plus-addressing in local delivery.
    pub fn without_subaddress(&self) -> Option<(Address, String)> {
        if self.local.starts_with('"') {
            return None;
        }
        let plus = self.local.find('+')?;
        if plus == 0 {
            return None;
        }
        Some((
            Address {
                local: self.local[..plus].to_string(),
                domain: self.domain.clone(),
            },
            self.local[plus + 1..].to_string(),
        ))
    }

    /// Whether the address needs SMTPUTF8 to be carried.
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Lowercases and checks a domain name (or an address literal such as `[127.0.0.1]`).
pub fn normalize_domain(domain: &str) -> Result<String, AddressError> {
    let d = domain.trim().trim_end_matches('.').to_lowercase();
    let bad = || AddressError::BadDomain(domain.to_string());
    if d.is_empty() || d.len() > 253 {
        return Err(bad());
    }
    if d.starts_with('[') {
        if !d.ends_with(']') {
            return Err(bad());
        }
        let inner = &d[1..d.len() - 1];
        let inner = inner.strip_prefix("ipv6:").unwrap_or(inner);
        return inner
            .parse::<std::net::IpAddr>()
            .map(|_| d.clone())
            .map_err(|_| bad());
    }
    for label in d.split('.') {
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad());
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let a = Address::parse("Alice@Example.COM").expect("valid");
        assert_eq!(a.local(), "Alice");
        assert_eq!(a.domain(), "example.com");
        assert_eq!(a.key(), "alice@example.com");
        assert_eq!(a.to_string(), "Alice@example.com");
    }

    #[test]
    fn subaddress() {
        let a = Address::parse("bob+news@example.com").expect("valid");
        let (base, tag) = a.without_subaddress().expect("has tag");
        assert_eq!(base.key(), "bob@example.com");
        assert_eq!(tag, "news");
        assert!(Address::parse("bob@example.com")
            .expect("valid")
            .without_subaddress()
            .is_none());
    }

    #[test]
    fn rejects_bad() {
        assert_eq!(Address::parse(""), Err(AddressError::Empty));
        assert_eq!(Address::parse("nobody"), Err(AddressError::MissingAt));
        assert!(Address::parse("a..b@example.com").is_err());
        assert!(Address::parse("a@exa mple.com").is_err());
        assert!(Address::parse("a@-bad.com").is_err());
        assert!(Address::parse(&format!("{}@x.com", "a".repeat(65))).is_err());
        assert!(Address::parse("a\r\nb@x.com").is_err());
    }

    #[test]
    fn literals_and_utf8() {
        assert!(Address::parse("a@[127.0.0.1]").is_ok());
        assert!(Address::parse("a@[ipv6:::1]").is_ok());
        assert!(Address::parse("a@[nonsense]").is_err());
        let u = Address::parse("jörg@bücher.example").expect("utf8");
        assert!(u.is_utf8());
    }
}
