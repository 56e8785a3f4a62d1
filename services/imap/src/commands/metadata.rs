//! METADATA (RFC 5464): GETMETADATA and SETMETADATA on mailboxes and on the server (`""`).
//!
//! Entries are kept by the store per scope ([`MetadataScope`]): `/private/...` entries
//! belong to the user (also on another user's shared mailbox), `/shared/...` ones to the
//! mailbox owner, and server entries (mailbox `""`) to the user. They are keyed by mailbox
//! id, so RENAME keeps them and DELETE takes them. Entry names are compared ignoring ASCII
//! case and stored lowercased. The server's own `/shared` entries (`/shared/admin`) are
//! read-only: with no administrative IMAP role, no user may set a server `/shared` entry.

use super::acl::Refusal;
use super::mailbox_name;
use crate::response::{self, Resp};
use crate::session::{Outcome, Session};
use imap_codec::imap_types::core::{AString, NString, NString8, Tag, Vec1};
use imap_codec::imap_types::extensions::binary::Literal8;
use imap_codec::imap_types::extensions::metadata::{
    Depth, Entry, EntryValue, GetMetadataOption, MetadataCode, MetadataResponse,
};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Code, Data};
use mailfleet_storage::{MetadataLimits, MetadataScope, StoreError, StoreResult};

/// Largest value of one entry (`NO [METADATA MAXSIZE n]` beyond). Below the command size
/// limit, so a SETMETADATA that carries one always fits.
pub const MAX_VALUE: u32 = 32 * 1024;
/// Most entries per scope (one mailbox's private or shared entries, or the server's).
pub const MAX_ENTRIES: usize = 100;
/// Most bytes (names plus values) per scope.
pub const MAX_SCOPE_BYTES: u64 = 256 * 1024;
/// Longest entry name.
pub const MAX_ENTRY_NAME: usize = 255;

/// Whether `name` is a valid entry name (RFC 5464 §3.2): `/private` or `/shared`, then
/// `/`-separated non-empty components of printable ASCII without `*` and `%`.
pub fn valid_entry(name: &str, allow_root: bool) -> bool {
    let lower = name.to_ascii_lowercase();
    let rest = if let Some(r) = lower.strip_prefix("/private") {
        r
    } else if let Some(r) = lower.strip_prefix("/shared") {
        r
    } else {
        return false;
    };
    if rest.is_empty() {
        return allow_root;
    }
    name.len() <= MAX_ENTRY_NAME
        && rest.starts_with('/')
        && rest[1..].split('/').all(|c| !c.is_empty())
        && rest
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b'*' && b != b'%')
}

fn is_private(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with("/private")
}

/// Whether stored entry `e` is selected by requested entry `req` at `depth`.
fn selected(e: &str, req: &str, depth: &Depth) -> bool {
    if e == req {
        return true;
    }
    let Some(below) = e.strip_prefix(req).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    match depth {
        Depth::Null => false,
        Depth::One => !below.contains('/'),
        Depth::Infinity => true,
    }
}

fn value_of(v: &NString8<'_>) -> Option<Vec<u8>> {
    match v {
        NString8::NString(NString(None)) => None,
        NString8::NString(NString(Some(s))) => Some(s.as_ref().to_vec()),
        NString8::Literal8(l) => Some(l.data.to_vec()),
    }
}

fn wire_value(v: Vec<u8>) -> NString8<'static> {
    if v.contains(&0) {
        return NString8::Literal8(Literal8 {
            data: v.into(),
            mode: imap_codec::imap_types::core::LiteralMode::Sync,
        });
    }
    match imap_codec::imap_types::core::IString::try_from(v.clone()) {
        Ok(s) => NString8::NString(NString(Some(s))),
        Err(_) => NString8::Literal8(Literal8 {
            data: v.into(),
            mode: imap_codec::imap_types::core::LiteralMode::Sync,
        }),
    }
}

fn metadata_code(c: MetadataCode) -> Option<Code<'static>> {
    Some(Code::Metadata(c))
}

impl Session {
    /// The scope of an entry of `mailbox` (`None`: the server), for this user.
    fn scope(
        &self,
        target: Option<&super::acl::Target>,
        private: bool,
    ) -> StoreResult<MetadataScope> {
        let me = self.acct()?.id;
        Ok(match target {
            None => MetadataScope {
                account: me,
                mailbox: None,
            },
            Some(t) => MetadataScope {
                account: if private { me } else { t.owner },
                mailbox: Some(t.mailbox.id),
            },
        })
    }

    /// Resolves the mailbox of a METADATA command: `Ok(None)` for the server (`""`).
    async fn metadata_target(
        &mut self,
        mailbox: &Mailbox<'static>,
    ) -> StoreResult<Result<Option<super::acl::Target>, Refusal>> {
        if matches!(mailbox, Mailbox::Other(o) if o.as_ref().is_empty()) {
            return Ok(Ok(None));
        }
        let name = mailbox_name(mailbox);
        Ok(self.access(&name, "", false).await?.map(Some))
    }

    pub(crate) async fn get_metadata(
        &mut self,
        tag: Tag<'static>,
        options: Vec<GetMetadataOption>,
        mailbox: Mailbox<'static>,
        entries: Vec1<Entry<'static>>,
    ) -> StoreResult<Outcome> {
        let mut max_size = None;
        let mut depth = Depth::Null;
        for o in options {
            match o {
                GetMetadataOption::MaxSize(n) => max_size = Some(n),
                GetMetadataOption::Depth(d) => depth = d,
            }
        }
        let requested: Vec<String> = entries
            .as_ref()
            .iter()
            .map(|e| String::from_utf8_lossy(e.as_ref()).into_owned())
            .collect();
        if requested.iter().any(|e| !valid_entry(e, true)) {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "Invalid entry name",
            )]));
        }
        let target = match self.metadata_target(&mailbox).await? {
            Ok(t) => t,
            Err(r) => return Ok(Outcome::done(vec![r.no(&tag)])),
        };
        // RFC 5464 §3.3 (with ACL): private entries need `l`, shared ones `r`.
        if let Some(t) = &target {
            let need_shared = requested.iter().any(|e| !is_private(e));
            let need_private = requested.iter().any(|e| is_private(e));
            if (need_private && !t.rights.has("l")) || (need_shared && !t.rights.has("r")) {
                return Ok(Outcome::done(vec![Refusal::NoPerm.no(&tag)]));
            }
        }
        let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
        let private_scope = self.scope(target.as_ref(), true)?;
        let shared_scope = self.scope(target.as_ref(), false)?;
        stored.extend(self.stores.meta.get_metadata(private_scope).await?);
        if shared_scope != private_scope {
            stored.extend(self.stores.meta.get_metadata(shared_scope).await?);
        }
        if target.is_none() {
            // The server's own annotation (RFC 5464 §3.2.1): where to reach an admin.
            stored.push((
                "/shared/admin".into(),
                format!("mailto:postmaster@{}", self.cfg.hostname).into_bytes(),
            ));
        }
        stored.sort();
        stored.dedup_by(|a, b| a.0 == b.0);
        let mut values: Vec<EntryValue<'static>> = Vec::new();
        let mut longest: Option<u32> = None;
        for req in &requested {
            let req_l = req.to_ascii_lowercase();
            // Anything stored for this request, returned or left out by MAXSIZE.
            let mut found = false;
            for (name, value) in &stored {
                if !selected(name, &req_l, &depth) {
                    continue;
                }
                found = true;
                if max_size.is_some_and(|m| value.len() as u64 > m as u64) {
                    longest = Some(longest.unwrap_or(0).max(value.len() as u32));
                    continue;
                }
                // Names are answered as stored (lowercased), as Dovecot does.
                let shown = name.clone();
                if values.iter().any(|v| v.entry.as_ref() == shown.as_bytes()) {
                    continue;
                }
                if let Ok(entry) = AString::try_from(shown).map(Entry::try_from) {
                    let Ok(entry) = entry else { continue };
                    values.push(EntryValue {
                        entry,
                        value: wire_value(value.clone()),
                    });
                }
            }
            // A requested entry with no value and no selected descendant is answered NIL
            // (as Dovecot does).
            if !found && !values.iter().any(|v| v.entry.as_ref() == req_l.as_bytes()) {
                if let Ok(Ok(entry)) = AString::try_from(req_l.clone()).map(Entry::try_from) {
                    values.push(EntryValue {
                        entry,
                        value: NString8::NString(NString(None)),
                    });
                }
            }
        }
        let mut out = self.pending_updates(false).await?;
        if let Ok(items) = Vec1::try_from(values) {
            out.push(response::data(Data::Metadata {
                mailbox,
                items: MetadataResponse::WithValues(items),
            }));
        }
        out.push(response::ok(
            &tag,
            longest.and_then(|n| metadata_code(MetadataCode::LongEntries(n))),
            "GETMETADATA completed",
        ));
        Ok(Outcome::done(out))
    }

    pub(crate) async fn set_metadata(
        &mut self,
        tag: Tag<'static>,
        mailbox: Mailbox<'static>,
        entry_values: Vec1<EntryValue<'static>>,
    ) -> StoreResult<Outcome> {
        let mut writes: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for ev in entry_values.as_ref() {
            let name = String::from_utf8_lossy(ev.entry.as_ref()).into_owned();
            if !valid_entry(&name, false) {
                return Ok(Outcome::done(vec![response::bad(
                    &tag,
                    "Invalid entry name",
                )]));
            }
            let value = value_of(&ev.value);
            if value
                .as_ref()
                .is_some_and(|v| v.len() as u64 > MAX_VALUE as u64)
            {
                return Ok(Outcome::done(vec![response::no(
                    &tag,
                    metadata_code(MetadataCode::MaxSize(MAX_VALUE)),
                    "Entry value too large",
                )]));
            }
            writes.push((name.to_ascii_lowercase(), value));
        }
        let target = match self.metadata_target(&mailbox).await? {
            Ok(t) => t,
            Err(r) => return Ok(Outcome::done(vec![r.no(&tag)])),
        };
        let (private, shared): (Vec<_>, Vec<_>) =
            writes.into_iter().partition(|(n, _)| is_private(n));
        match &target {
            // RFC 5464 §3.3 (with ACL): private entries need `l`, shared ones `w`.
            Some(t)
                if (!private.is_empty() && !t.rights.has("l"))
                    || (!shared.is_empty() && !t.rights.has("w")) =>
            {
                return Ok(Outcome::done(vec![Refusal::NoPerm.no(&tag)]));
            }
            None if !shared.is_empty() => {
                return Ok(Outcome::done(vec![response::no(
                    &tag,
                    response::code("NOPERM"),
                    "Server /shared entries are set by the administrator",
                )]));
            }
            _ => {}
        }
        let limits = MetadataLimits {
            max_entries: MAX_ENTRIES,
            max_bytes: MAX_SCOPE_BYTES,
        };
        for (is_priv, batch) in [(true, private), (false, shared)] {
            if batch.is_empty() {
                continue;
            }
            let scope = self.scope(target.as_ref(), is_priv)?;
            match self.stores.meta.set_metadata(scope, batch, limits).await {
                Ok(()) => {}
                Err(StoreError::QuotaExceeded(_)) => {
                    return Ok(Outcome::done(vec![response::no(
                        &tag,
                        metadata_code(MetadataCode::TooMany),
                        "Too many metadata entries",
                    )]))
                }
                Err(StoreError::NotFound(_)) => {
                    return Ok(Outcome::done(vec![Refusal::Missing.no(&tag)]))
                }
                Err(e) => return Err(e),
            }
        }
        let mut out: Vec<Resp> = self.pending_updates(false).await?;
        out.push(response::ok(&tag, None, "SETMETADATA completed"));
        Ok(Outcome::done(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_follow_rfc_5464() {
        assert!(valid_entry("/private/comment", false));
        assert!(valid_entry("/Shared/Vendor/x/y", false));
        assert!(valid_entry("/shared", true));
        assert!(!valid_entry("/shared", false));
        assert!(!valid_entry("/other/comment", false));
        assert!(!valid_entry("/private//x", false));
        assert!(!valid_entry("/private/x/", false));
        assert!(!valid_entry("/private/a*", false));
        assert!(!valid_entry("/private/a%", false));
        assert!(!valid_entry("/private/a b", false));
        assert!(!valid_entry("/privatex", false));
        assert!(!valid_entry(
            &format!("/private/{}", "x".repeat(300)),
            false
        ));
    }

    #[test]
    fn depth_selects_the_entry_its_children_or_all_descendants() {
        let req = "/private/vendor";
        assert!(selected("/private/vendor", req, &Depth::Null));
        assert!(!selected("/private/vendor/a", req, &Depth::Null));
        assert!(selected("/private/vendor/a", req, &Depth::One));
        assert!(!selected("/private/vendor/a/b", req, &Depth::One));
        assert!(selected("/private/vendor/a/b", req, &Depth::Infinity));
        assert!(!selected("/private/vendorx", req, &Depth::Infinity));
    }

    #[test]
    fn values_with_nul_go_as_literal8() {
        assert!(matches!(wire_value(vec![1, 0, 2]), NString8::Literal8(_)));
        assert!(matches!(wire_value(b"text".to_vec()), NString8::NString(_)));
        assert_eq!(value_of(&NString8::NString(NString(None))), None);
    }
}
