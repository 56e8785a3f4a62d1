//! RFC 5230 rules that decide, without any state, whether an autoreply may
//! be sent at all (§4.5, §4.6) and the default handle (§4.2). The
//! "already answered within :days" part needs a store and is left to the
//! caller (see [`crate::Vacation`]).

use sha2::{Digest, Sha256};

use crate::message::{addresses, decoded, split_address, Field};

const LIST_HEADERS: &[&str] = &[
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
];

/// Why no reply may be sent, or `None` when one may. `own` are the
/// recipient's addresses: the envelope recipient (with and without
/// +detail) and `:addresses`.
pub(crate) fn suppression(
    fields: &[Field],
    sender: Option<&str>,
    own: &[String],
) -> Option<String> {
    let sender = match sender {
        None => return Some("null envelope sender".into()),
        Some(s) if s.trim().is_empty() => return Some("null envelope sender".into()),
        Some(s) => s.trim(),
    };
    let (local, _) = split_address(sender);
    let l = local.to_ascii_lowercase();
    if l == "mailer-daemon"
        || l == "listserv"
        || l == "majordomo"
        || l.starts_with("owner-")
        || l.ends_with("-request")
        || l.ends_with("-owner")
        || l == "postmaster"
    {
        return Some(format!("sender {sender} is a list or system address"));
    }
    if own.iter().any(|o| o.eq_ignore_ascii_case(sender)) {
        return Some("message from the recipient itself".into());
    }
    for f in fields {
        let name = f.name.to_ascii_lowercase();
        let value = decoded(&f.raw).to_ascii_lowercase();
        if name == "auto-submitted" && value != "no" {
            return Some(format!("Auto-Submitted: {value}"));
        }
        if name == "precedence" && matches!(value.as_str(), "list" | "bulk" | "junk") {
            return Some(format!("Precedence: {value}"));
        }
        if LIST_HEADERS.contains(&name.as_str()) {
            return Some(format!("mailing list ({})", f.name));
        }
    }
    let mut named = false;
    for f in fields {
        let name = f.name.to_ascii_lowercase();
        if matches!(
            name.as_str(),
            "to" | "cc" | "bcc" | "resent-to" | "resent-cc" | "resent-bcc"
        ) && addresses(&f.raw)
            .iter()
            .any(|a| own.iter().any(|o| o.eq_ignore_ascii_case(a)))
        {
            named = true;
        }
    }
    if !named {
        return Some("recipient not named in To/Cc/Bcc".into());
    }
    None
}

/// The recipient's own addresses for the To/Cc check: as given, without
/// +detail, plus `:addresses`.
pub(crate) fn own_addresses(recipient: &str, extra: &[String]) -> Vec<String> {
    let mut own = vec![recipient.to_string()];
    let (local, domain) = split_address(recipient);
    if let Some(p) = local.find('+') {
        own.push(format!("{}@{}", &local[..p], domain));
    }
    own.extend(extra.iter().cloned());
    own
}

/// Default handle: a digest of the arguments that make the reply what it
/// is, so two different vacation rules do not suppress each other.
pub(crate) fn default_handle(
    subject: Option<&str>,
    from: Option<&str>,
    mime: bool,
    reason: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        subject.unwrap_or(""),
        from.unwrap_or(""),
        if mime { "mime" } else { "" },
        reason,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::split;

    fn fields(s: &str) -> Vec<Field> {
        split(s.as_bytes()).0
    }

    #[test]
    fn rules() {
        let own = own_addresses("alice+x@example.org", &[]);
        let ok = fields("From: bob@example.com\r\nTo: Alice <alice@example.org>\r\n\r\n");
        assert_eq!(suppression(&ok, Some("bob@example.com"), &own), None);
        assert!(suppression(&ok, None, &own).unwrap().contains("null"));
        assert!(suppression(&ok, Some("MAILER-DAEMON@x.org"), &own).is_some());
        assert!(suppression(&ok, Some("owner-list@x.org"), &own).is_some());
        assert!(suppression(&ok, Some("list-request@x.org"), &own).is_some());
        let l = fields("To: alice@example.org\r\nList-Id: <l.x>\r\n\r\n");
        assert!(suppression(&l, Some("bob@x.org"), &own)
            .unwrap()
            .contains("list"));
        let p = fields("To: alice@example.org\r\nPrecedence: bulk\r\n\r\n");
        assert!(suppression(&p, Some("bob@x.org"), &own).is_some());
        let a = fields("To: alice@example.org\r\nAuto-Submitted: auto-replied\r\n\r\n");
        assert!(suppression(&a, Some("bob@x.org"), &own).is_some());
        let a = fields("To: alice@example.org\r\nAuto-Submitted: no\r\n\r\n");
        assert!(suppression(&a, Some("bob@x.org"), &own).is_none());
        let n = fields("To: carol@example.org\r\n\r\n");
        assert!(suppression(&n, Some("bob@x.org"), &own)
            .unwrap()
            .contains("not named"));
        let own2 = own_addresses("alice@example.org", &["carol@example.org".into()]);
        assert!(suppression(&n, Some("bob@x.org"), &own2).is_none());
    }

    #[test]
    fn handle_stable() {
        let a = default_handle(Some("s"), None, false, "r");
        assert_eq!(a, default_handle(Some("s"), None, false, "r"));
        assert_ne!(a, default_handle(Some("s"), None, false, "r2"));
        assert_eq!(a.len(), 32);
    }
}
