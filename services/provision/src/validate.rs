//! Input checks shared by every caller: what the store is given is always normalised.

use crate::{Error, Result};
use mailfleet_core::Address;

/// Longest display name kept: it is shown in clients' account lists, not a document.
pub const MAX_DISPLAY_NAME: usize = 256;

/// A hosted domain name, lowercased, without a trailing dot. Address literals
/// (`[192.0.2.1]`) are valid in addresses but cannot be hosted: they have no DNS records.
pub fn domain_name(input: &str) -> Result<String> {
    let name = mailfleet_core::address::normalize_domain(input)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    if name.starts_with('[') {
        return Err(Error::Invalid(format!(
            "{input}: an address literal cannot be a hosted domain"
        )));
    }
    if !name.contains('.') {
        return Err(Error::Invalid(format!(
            "{input}: a hosted domain needs at least two labels"
        )));
    }
    Ok(name)
}

/// An account or alias address.
pub fn address(input: &str) -> Result<Address> {
    Address::parse(input)
        .map_err(|e| Error::Invalid(format!("'{input}' is not a valid address: {e}")))
}

/// An alias source in the store's form: `local@domain`, or `@domain` for the domain's
/// catch-all.
pub fn alias_source(input: &str) -> Result<String> {
    match input.strip_prefix('@') {
        Some(domain) => Ok(format!("@{}", domain_name(domain)?)),
        None => Ok(address(input)?.key()),
    }
}

/// A display name: trimmed, no control characters, bounded.
pub fn display_name(input: &str) -> Result<Option<String>> {
    let t = input.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars().count() > MAX_DISPLAY_NAME || t.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "display names are at most {MAX_DISPLAY_NAME} printable characters"
        )));
    }
    Ok(Some(t.to_string()))
}

/// `1024`, `500K`, `20M`, `2G`, `1T` (binary multiples; `Ki`/`Mi`/`Gi`/`Ti`, the
/// Kubernetes spelling, mean the same); 0 means unlimited.
pub fn quota(input: &str) -> Result<u64> {
    let s = input.trim();
    let bad = |why: &str| Error::Invalid(format!("bad size '{s}': {why}"));
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    if num.is_empty() {
        return Err(bad("use a number with K, M, G or T"));
    }
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KI" => 1 << 10,
        "M" | "MI" => 1 << 20,
        "G" | "GI" => 1 << 30,
        "T" | "TI" => 1 << 40,
        _ => return Err(bad("use a number with K, M, G or T")),
    };
    let n: u64 = num.parse().map_err(|_| bad("too large"))?;
    n.checked_mul(mult).ok_or_else(|| bad("too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(domain_name("Example.COM.").expect("ok"), "example.com");
        assert!(domain_name("[127.0.0.1]").is_err());
        assert!(domain_name("localhost").is_err());
        assert!(domain_name("-bad.example").is_err());
    }

    #[test]
    fn sources_quotas_names() {
        assert_eq!(alias_source("@Example.com").expect("ok"), "@example.com");
        assert_eq!(
            alias_source("Sales@Example.com").expect("ok"),
            "sales@example.com"
        );
        assert!(alias_source("nope").is_err());
        assert_eq!(quota("0").expect("ok"), 0);
        assert_eq!(quota("2K").expect("ok"), 2048);
        assert_eq!(quota("1g").expect("ok"), 1 << 30);
        assert_eq!(quota("5Gi").expect("ok"), 5 << 30);
        assert!(quota("abc").is_err());
        assert!(quota("99999999999T").is_err());
        assert_eq!(
            display_name("  Alice  ").expect("ok").as_deref(),
            Some("Alice")
        );
        assert_eq!(display_name(" ").expect("ok"), None);
        assert!(display_name("a\nb").is_err());
    }
}
