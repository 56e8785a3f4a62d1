//! Submission policy (RFC 6409 §6.1, §8): an authenticated client may only send as itself.
//!
//! An account may use, as the envelope sender and in every `From:` mailbox:
//! - its own address, with or without a `+tag`;
//! - any address that delivers to it: an alias (or alias chain) whose expansion includes
//!   the account, including the domain's catch-all for addresses that are nothing else;
//! - its sender grants (`mailfleet user send-as add`): an exact address, or `@domain` for
//!   every address of a domain. This is the per-account setting, for shared mailboxes,
//!   role addresses and services.

use super::header::{Header, HeaderError};
use crate::local::{self, Resolution};
use mailfleet_core::Address;
use mailfleet_storage::{Account, MetadataStore, StoreResult};

/// Whether `account` may send as `addr`.
pub async fn sender_allowed(
    meta: &dyn MetadataStore,
    account: &Account,
    addr: &Address,
) -> StoreResult<bool> {
    let key = addr.key();
    if key == account.address {
        return Ok(true);
    }
    if let Some((base, _tag)) = addr.without_subaddress() {
        if base.key() == account.address {
            return Ok(true);
        }
    }
    let grants = meta.sender_grants(account.id).await?;
    let domain_grant = format!("@{}", addr.domain());
    if grants.iter().any(|g| *g == key || *g == domain_grant) {
        return Ok(true);
    }
    Ok(match local::resolve(meta, addr).await? {
        Resolution::Local(targets) => targets.iter().any(|t| t.account.id == account.id),
        Resolution::UnknownUser | Resolution::NotLocal => false,
    })
}

/// Why the `From:` header cannot be checked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FromError {
    #[error("the From header has no usable address")]
    Unparseable,
    #[error("{0}")]
    Header(#[from] HeaderError),
}

/// Every mailbox address in every `From:` field of the header section, or an error when
/// a `From:` field has none that parse. An empty list means there is no `From:` field.
///
/// The fields are found by [`Header`], the reading every later stage uses (a header
/// section it refuses is refused here too); only each field's value goes to mail-parser's
/// address grammar, so the two can never disagree on which fields are `From:`.
pub fn from_addresses(message: &[u8]) -> Result<Vec<Address>, FromError> {
    use mail_parser::{HeaderName, HeaderValue, MessageParser};
    let header = Header::parse(message).map_err(FromError::Header)?;
    let mut out = Vec::new();
    for field in header.all("From") {
        let mut one = Vec::with_capacity(field.value.len() + 10);
        one.extend_from_slice(b"From:");
        one.extend_from_slice(field.value);
        one.extend_from_slice(b"\r\n\r\n");
        let parsed = MessageParser::default()
            .parse_headers(&one[..])
            .ok_or(FromError::Unparseable)?;
        let Some(h) = parsed.headers().iter().find(|h| h.name == HeaderName::From) else {
            return Err(FromError::Unparseable);
        };
        let HeaderValue::Address(list) = &h.value else {
            return Err(FromError::Unparseable);
        };
        let mut found = false;
        for a in list.iter() {
            let Some(text) = a.address() else {
                return Err(FromError::Unparseable);
            };
            let addr = Address::parse(text).map_err(|_| FromError::Unparseable)?;
            out.push(addr);
            found = true;
        }
        if !found {
            return Err(FromError::Unparseable);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(m: &str) -> Result<Vec<String>, FromError> {
        from_addresses(m.as_bytes()).map(|v| v.iter().map(|a| a.key()).collect())
    }

    #[test]
    fn from_fields_are_all_read() {
        assert_eq!(
            keys("From: \"Alice A.\" <Alice@Example.test>\r\nSubject: x\r\n\r\nbody\r\n"),
            Ok(vec!["alice@example.test".to_string()])
        );
        assert_eq!(
            keys("From: a@x.test, =?utf-8?q?B=C3=B6b?= <b@x.test>\r\n\r\n"),
            Ok(vec!["a@x.test".to_string(), "b@x.test".to_string()])
        );
        assert_eq!(
            keys("From: a@x.test\r\nFrom: evil@y.test\r\n\r\n"),
            Ok(vec!["a@x.test".to_string(), "evil@y.test".to_string()]),
            "a second From field is checked too"
        );
        assert_eq!(
            keys("Subject: none\r\n\r\nFrom: body@x.test\r\n"),
            Ok(vec![])
        );
        assert_eq!(
            keys("From: not an address\r\n\r\n"),
            Err(FromError::Unparseable)
        );
        assert_eq!(keys("From: \r\n\r\n"), Err(FromError::Unparseable));
        assert_eq!(
            keys(" From: evil@other.test\r\nSubject: x\r\n\r\n"),
            Err(FromError::Header(HeaderError::LeadingContinuation)),
            "issue 9 item 3: a folded first line cannot hide a From field"
        );
        assert_eq!(
            keys("Subject: x\r\nFrom: a@x.test,\r\n evil@y.test\r\n\r\n"),
            Ok(vec!["a@x.test".to_string(), "evil@y.test".to_string()]),
            "a folded From field is read whole"
        );
    }
}
