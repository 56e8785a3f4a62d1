//! Access control lists (RFC 4314) and the other users' namespace (RFC 2342).
//!
//! Every command that names a mailbox resolves it through [`Session::resolve`], the one
//! place that maps a client's name to (owner account, mailbox, this user's rights):
//! a name in the personal namespace is one of the user's own mailboxes, on which the
//! user holds every right; `Other Users/<owner address>/<name>` is a mailbox of another
//! account, on which the user holds the union of the ACL entries for its address,
//! `anyone` and `authenticated`. [`Session::access`] then checks the right a command
//! needs and picks the refusal RFC 4314 §6 allows: a user without `l` learns nothing
//! about the mailbox (`NO [NONEXISTENT]`, as for a mailbox that does not exist); one
//! with `l` is told `NO [NOPERM]`.
//!
//! The public namespace `Shared/` (RFC 2342's third namespace, like Dovecot's public
//! namespace) holds mailboxes no user owns: each domain's public folders belong to its
//! reserved account `public@<domain>` ([`PUBLIC_LOCAL_PART`], created by
//! `mailfleet public-folder create`, with no usable password), and its mailbox `X` is
//! `Shared/X` to every user of that domain, with the rights its ACL gives them (usually
//! through `anyone` or `authenticated`). [`split_shared`] maps both namespaces to
//! (owner, mailbox), so resolving, the rights checks and LIST work the same for both;
//! the public account's mailboxes are not reachable under `Other Users/` for the users of
//! its domain, so each mailbox has one name.
//!
//! The ACL commands are not parsed by imap-codec (this version has no ACL types); they are
//! recognised here after the codec refused a command ([`preparse`]), with the IMAP string
//! grammar (atom, quoted string, literal) for their arguments, and answered with responses
//! written by [`astring`], which quotes or sends as a literal whatever is not an atom.

use super::{mailbox_name, DELIMITER};
use crate::response::{self, code, Resp};
use crate::session::{Outcome, Session, State};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::mailbox::Mailbox;
use mailfleet_storage::{AccountId, Mailbox as StoreMailbox, StoreError, StoreResult};
use std::collections::BTreeMap;

/// The other users' namespace prefix (without its delimiter), advertised by NAMESPACE.
pub const OTHER_USERS: &str = "Other Users";
/// The public namespace prefix (without its delimiter), advertised by NAMESPACE.
pub const PUBLIC: &str = "Shared";
/// The local part of a domain's public-folders account: `public@<domain>` owns what the
/// users of `<domain>` see under `Shared/`.
pub const PUBLIC_LOCAL_PART: &str = "public";
/// Most ACL entries one mailbox may hold (SETACL beyond is `NO [LIMIT]`).
pub const MAX_ACL_ENTRIES: usize = 100;
/// Longest identifier accepted (an address is at most 254 octets).
pub const MAX_IDENTIFIER: usize = 254;

/// The rights of RFC 4314 §2.1, in the order they are written (Dovecot's order; RFC 4314
/// gives none).
const LETTERS: &str = "lrwstipekxa";

/// A set of rights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights(u16);

impl Rights {
    /// Every right: what an owner holds on its own mailboxes.
    pub const ALL: Rights = Rights((1 << 11) - 1);
    pub const NONE: Rights = Rights(0);

    fn bit(c: char) -> Option<u16> {
        LETTERS.find(c).map(|i| 1 << i)
    }

    /// Parses a rights string. The obsolete RFC 2086 rights map as RFC 4314 §2.1.1 says
    /// for servers that advertise `RIGHTS=texk`: `c` is `k`, `d` is `x`, `t` and `e`.
    /// `None` for a letter that is no right (SETACL answers it BAD, RFC 4314 §3.1).
    pub fn parse(s: &str) -> Option<Rights> {
        let mut r = 0u16;
        for c in s.chars() {
            match c {
                'c' => r |= Self::bit('k')?,
                'd' => r |= Self::bit('x')? | Self::bit('t')? | Self::bit('e')?,
                c => r |= Self::bit(c)?,
            }
        }
        Some(Rights(r))
    }

    /// Whether every right of `need` (letters) is held.
    pub fn has(self, need: &str) -> bool {
        Rights::parse(need).is_some_and(|n| self.0 & n.0 == n.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn union(self, o: Rights) -> Rights {
        Rights(self.0 | o.0)
    }

    pub fn minus(self, o: Rights) -> Rights {
        Rights(self.0 & !o.0)
    }

    /// The letters, in RFC order, as stored.
    pub fn letters(self) -> String {
        LETTERS
            .chars()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, c)| c)
            .collect()
    }

    /// The letters as ACL and MYRIGHTS responses write them: with the obsolete `c` when
    /// `k` is held and `d` when one of `x`, `t`, `e` is (RFC 4314 §2.1.1), so RFC 2086
    /// clients see the rights they know.
    pub fn wire(self) -> String {
        let mut s = self.letters();
        if self.has("k") {
            s.push('c');
        }
        if self.0 & Rights::parse("xte").map_or(0, |r| r.0) != 0 {
            s.push('d');
        }
        s
    }
}

/// A mailbox name resolved: whose it is, and what this user may do with it.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub mailbox: StoreMailbox,
    pub owner: AccountId,
    pub rights: Rights,
    /// In the other users' namespace (not the user's own).
    pub shared: bool,
}

/// Why a command was refused, already in the form RFC 4314 §6 allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No such mailbox, or one the user may not know of.
    Missing,
    /// The user may see the mailbox but lacks the right.
    NoPerm,
    /// A `\Noselect` name (RFC 3501 §6.3.1).
    NoSelect,
}

impl Refusal {
    pub fn no(self, tag: &Tag<'static>) -> Resp {
        match self {
            Refusal::Missing => response::no(tag, code("NONEXISTENT"), "No such mailbox"),
            Refusal::NoPerm => response::no(tag, code("NOPERM"), "Permission denied"),
            Refusal::NoSelect => response::no(tag, None, "Mailbox is \\Noselect"),
        }
    }
}

/// A name in the other users' namespace split into (owner address, owner's mailbox name):
/// `Other Users/bob@example.test/Projects/x` → (`bob@example.test`, `Projects/x`). The
/// owner alone (`Other Users/bob@example.test`) gives an empty mailbox name.
pub(crate) fn split_other(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix(OTHER_USERS)?.strip_prefix(DELIMITER)?;
    let (owner, local) = match rest.split_once(DELIMITER) {
        Some((o, l)) => (o, l),
        None => (rest, ""),
    };
    if owner.is_empty() {
        return None;
    }
    let local = if local.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_string()
    } else {
        local.to_string()
    };
    Some((owner.to_ascii_lowercase(), local))
}

/// The name a user sees for `owner`'s mailbox `local`.
pub(crate) fn other_name(owner: &str, local: &str) -> String {
    format!("{OTHER_USERS}{DELIMITER}{owner}{DELIMITER}{local}")
}

/// The public-folders account of the domain of `address` (`public@<domain>`).
pub fn public_owner(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    (!domain.is_empty()).then(|| format!("{PUBLIC_LOCAL_PART}@{}", domain.to_ascii_lowercase()))
}

/// A name in the public namespace → the public account's mailbox name: `Shared/News/x`
/// → `News/x`; the prefix alone (`Shared`) gives an empty name.
pub(crate) fn split_public(name: &str) -> Option<String> {
    if name == PUBLIC {
        return Some(String::new());
    }
    let rest = name.strip_prefix(PUBLIC)?.strip_prefix(DELIMITER)?;
    if rest.is_empty() {
        return None;
    }
    Some(if rest.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_string()
    } else {
        rest.to_string()
    })
}

/// A name in either shared namespace, as the user `me` sees it, → (owner address, owner's
/// mailbox name); `None` for a personal name.
pub(crate) fn split_shared(name: &str, me: &str) -> Option<(String, String)> {
    match split_public(name) {
        Some(local) => Some((public_owner(me)?, local)),
        None if name == format!("{PUBLIC}{DELIMITER}") => Some((public_owner(me)?, String::new())),
        None => split_other(name),
    }
}

/// The name `me` sees for `owner`'s mailbox `local`: under `Shared/` for the public account
/// of `me`'s domain, under `Other Users/<owner>/` otherwise.
pub(crate) fn shared_name(me: &str, owner: &str, local: &str) -> String {
    if public_owner(me).as_deref() == Some(owner) {
        format!("{PUBLIC}{DELIMITER}{local}")
    } else {
        other_name(owner, local)
    }
}

/// The quota root of `owner`'s storage as `me` names it: `Shared` or `Other Users/<owner>`.
pub(crate) fn shared_root(me: &str, owner: &str) -> String {
    if public_owner(me).as_deref() == Some(owner) {
        PUBLIC.to_string()
    } else {
        format!("{OTHER_USERS}{DELIMITER}{owner}")
    }
}

/// The identifiers whose ACL entries apply to a logged-in user (RFC 4314 §2).
fn identifiers(address: &str) -> [&str; 3] {
    [address, "anyone", "authenticated"]
}

impl Session {
    /// The rights the logged-in user holds on `owner`'s mailbox `mb` through its ACL.
    async fn acl_rights(&self, mb: &StoreMailbox) -> StoreResult<Rights> {
        let me = self.acct()?.address.clone();
        let ids = identifiers(&me);
        let mut rights = Rights::NONE;
        for e in self.stores.meta.get_acl(mb.id).await? {
            if ids.contains(&e.identifier.as_str()) {
                rights = rights.union(Rights::parse(&e.rights).unwrap_or_default());
            }
        }
        Ok(rights)
    }

    /// Maps a client's mailbox name to its owner, mailbox and the user's rights; `None`
    /// when there is no such mailbox, or the user holds no right on it. The one place
    /// commands resolve names (see the module documentation).
    pub(crate) async fn resolve(&mut self, name: &str) -> StoreResult<Option<Target>> {
        let me = self.acct()?.clone();
        // The public account's mailboxes have one name for its domain's users: `Shared/`.
        if split_other(name).is_some_and(|(o, _)| public_owner(&me.address) == Some(o)) {
            return Ok(None);
        }
        let Some((owner_addr, local)) = split_shared(name, &me.address) else {
            return Ok(self
                .stores
                .meta
                .get_mailbox(me.id, name)
                .await?
                .map(|mailbox| Target {
                    owner: me.id,
                    mailbox,
                    rights: Rights::ALL,
                    shared: false,
                }));
        };
        if local.is_empty() || owner_addr == me.address {
            return Ok(None);
        }
        let Some(owner) = self.stores.meta.get_account(&owner_addr).await? else {
            return Ok(None);
        };
        let Some(mailbox) = self.stores.meta.get_mailbox(owner.id, &local).await? else {
            return Ok(None);
        };
        let rights = self.acl_rights(&mailbox).await?;
        if rights.is_empty() {
            return Ok(None);
        }
        self.mailbox_owners.insert(mailbox.id, owner.id);
        Ok(Some(Target {
            mailbox,
            owner: owner.id,
            rights,
            shared: true,
        }))
    }

    /// [`Self::resolve`], then the check that the user holds `need` (letters) and, unless
    /// `placeholder_ok`, that the name is a mailbox rather than a `\Noselect` placeholder.
    pub(crate) async fn access(
        &mut self,
        name: &str,
        need: &str,
        placeholder_ok: bool,
    ) -> StoreResult<Result<Target, Refusal>> {
        let Some(t) = self.resolve(name).await? else {
            return Ok(Err(Refusal::Missing));
        };
        if !t.rights.has(need) {
            // RFC 4314 §6: without `l` the refusal must not tell the mailbox exists.
            return Ok(Err(if t.rights.has("l") {
                Refusal::NoPerm
            } else {
                Refusal::Missing
            }));
        }
        if t.mailbox.noselect && !placeholder_ok {
            return Ok(Err(Refusal::NoSelect));
        }
        Ok(Ok(t))
    }

    /// The mailboxes of other accounts the user may list (`l`), by the name the user sees,
    /// with the owner's mailbox and the user's rights.
    pub(crate) async fn shared_mailboxes(
        &mut self,
    ) -> StoreResult<Vec<(String, StoreMailbox, Rights)>> {
        let me = self.acct()?.clone();
        let mut by_box: BTreeMap<i64, (AccountId, Rights)> = BTreeMap::new();
        for id in identifiers(&me.address) {
            for s in self.stores.meta.shared_with(id).await? {
                if s.owner == me.id {
                    continue;
                }
                let r = Rights::parse(&s.rights).unwrap_or_default();
                let e = by_box.entry(s.mailbox.0).or_insert((s.owner, Rights::NONE));
                e.1 = e.1.union(r);
            }
        }
        let mut owners: BTreeMap<i64, (String, Vec<StoreMailbox>)> = BTreeMap::new();
        let mut out = Vec::new();
        for (mbid, (owner, rights)) in by_box {
            if !rights.has("l") {
                continue;
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = owners.entry(owner.0) {
                let Some(acct) = self.stores.meta.get_account_by_id(owner).await? else {
                    continue;
                };
                let boxes = self.stores.meta.list_mailboxes(owner).await?;
                slot.insert((acct.address, boxes));
            }
            let Some((addr, boxes)) = owners.get(&owner.0) else {
                continue;
            };
            if let Some(mb) = boxes.iter().find(|b| b.id.0 == mbid) {
                self.mailbox_owners.insert(mb.id, owner);
                out.push((shared_name(&me.address, addr, &mb.name), mb.clone(), rights));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The account whose change notifications cover `mailbox`: its owner (the Coordinator
    /// keys events by account, so a shared mailbox's changes go to its owner's channel,
    /// where every session that has it selected listens).
    pub(crate) fn owner_of(&self, mailbox: mailfleet_storage::MailboxId) -> Option<AccountId> {
        self.mailbox_owners
            .get(&mailbox)
            .copied()
            .or(self.account.as_ref().map(|a| a.id))
    }

    /// Runs one ACL command.
    pub(crate) async fn acl_command(&mut self, tag: Tag<'static>, cmd: AclCommand) -> Outcome {
        if self.account.is_none() {
            return Outcome::done(vec![response::bad(&tag, "Log in first")]);
        }
        match self.acl_inner(&tag, cmd).await {
            Ok(out) => Outcome::done(out),
            Err(e) => {
                tracing::warn!(error = %e, "IMAP ACL command failed on storage");
                Outcome::done(vec![response::no(
                    &tag,
                    code("UNAVAILABLE"),
                    "Temporary storage failure, try again",
                )])
            }
        }
    }

    async fn acl_inner(&mut self, tag: &Tag<'static>, cmd: AclCommand) -> StoreResult<Vec<Resp>> {
        let me = self.acct()?.address.clone();
        let name = mailbox_name(&cmd_mailbox(&cmd));
        // MYRIGHTS needs any right (RFC 4314 §3.5); the others administer the ACL (`a`).
        let need = if matches!(cmd, AclCommand::MyRights { .. }) {
            ""
        } else {
            "a"
        };
        let t = match self.access(&name, need, false).await? {
            Ok(t) => t,
            Err(r) => return Ok(vec![r.no(tag)]),
        };
        let mut out = self.pending_updates(false).await?;
        let owner_addr = if t.shared {
            self.stores
                .meta
                .get_account_by_id(t.owner)
                .await?
                .map(|a| a.address)
                .unwrap_or_default()
        } else {
            me.clone()
        };
        let wire_name = astring(name.as_bytes());
        match cmd {
            AclCommand::MyRights { .. } => {
                out.push(raw(format!("* MYRIGHTS {wire_name} {}", t.rights.wire())));
                out.push(response::ok(tag, None, "MYRIGHTS completed"));
            }
            AclCommand::GetAcl { .. } => {
                let mut line = format!("* ACL {wire_name}");
                for e in self.stores.meta.get_acl(t.mailbox.id).await? {
                    let r = Rights::parse(&e.rights).unwrap_or_default();
                    line.push_str(&format!(
                        " {} {}",
                        astring(e.identifier.as_bytes()),
                        r.wire()
                    ));
                }
                // The owner's implicit entry last, as Dovecot lists it.
                line.push_str(&format!(
                    " {} {}",
                    astring(owner_addr.as_bytes()),
                    Rights::ALL.wire()
                ));
                out.push(raw(line));
                out.push(response::ok(tag, None, "GETACL completed"));
            }
            AclCommand::ListRights { identifier, .. } => {
                let id = identifier.to_ascii_lowercase();
                // The owner's rights are fixed (all); anyone else may be granted each
                // right on its own (RFC 4314 §3.7: required rights, then optional groups).
                let line = if id == owner_addr {
                    format!(
                        "* LISTRIGHTS {wire_name} {} {}",
                        astring(identifier.as_bytes()),
                        Rights::ALL.letters()
                    )
                } else {
                    let groups: Vec<String> = "lrwstpiekxa".chars().map(String::from).collect();
                    format!(
                        "* LISTRIGHTS {wire_name} {} \"\" {} c d",
                        astring(identifier.as_bytes()),
                        groups.join(" ")
                    )
                };
                out.push(raw(line));
                out.push(response::ok(tag, None, "LISTRIGHTS completed"));
            }
            AclCommand::SetAcl {
                identifier, rights, ..
            } => {
                out.push(
                    self.set_acl(tag, &t, &owner_addr, &identifier, Some(&rights))
                        .await?,
                );
            }
            AclCommand::DeleteAcl { identifier, .. } => {
                out.push(
                    self.set_acl(tag, &t, &owner_addr, &identifier, None)
                        .await?,
                );
            }
        }
        Ok(out)
    }

    /// SETACL (`rights` given: replace, `+` add, `-` remove) and DELETEACL (`None`).
    async fn set_acl(
        &mut self,
        tag: &Tag<'static>,
        t: &Target,
        owner_addr: &str,
        identifier: &str,
        rights: Option<&str>,
    ) -> StoreResult<Resp> {
        let id = identifier.to_ascii_lowercase();
        if id.starts_with('-') {
            // RFC 4314 §2: negative rights are optional; Mailfleet has none.
            return Ok(response::no(tag, None, "Negative rights are not supported"));
        }
        if id.is_empty() || id.len() > MAX_IDENTIFIER {
            return Ok(response::no(tag, None, "Invalid identifier"));
        }
        let valid = id == "anyone"
            || id == "authenticated"
            || self.stores.meta.get_account(&id).await?.is_some();
        if !valid {
            return Ok(response::no(tag, None, "Unknown identifier"));
        }
        if id == owner_addr {
            // The owner's rights are all the rights and cannot change (RFC 4314 §3.7
            // lists them as required), so no owner locks itself out of its mailbox.
            return Ok(response::no(
                tag,
                None,
                "The owner's rights cannot be changed",
            ));
        }
        let current = self
            .stores
            .meta
            .get_acl(t.mailbox.id)
            .await?
            .into_iter()
            .find(|e| e.identifier == id)
            .map(|e| Rights::parse(&e.rights).unwrap_or_default());
        let new = match rights {
            None => Rights::NONE,
            Some(r) => {
                let (op, letters) = match r.as_bytes().first() {
                    Some(b'+') => ('+', &r[1..]),
                    Some(b'-') => ('-', &r[1..]),
                    _ => ('=', r),
                };
                let Some(parsed) = Rights::parse(letters) else {
                    return Ok(response::bad(tag, "Unknown right in rights string"));
                };
                let cur = current.unwrap_or_default();
                match op {
                    '+' => cur.union(parsed),
                    '-' => cur.minus(parsed),
                    _ => parsed,
                }
            }
        };
        if current.is_none() && !new.is_empty() {
            let count = self.stores.meta.get_acl(t.mailbox.id).await?.len();
            if count >= MAX_ACL_ENTRIES {
                return Ok(response::no(tag, code("LIMIT"), "Too many ACL entries"));
            }
        }
        match self
            .stores
            .meta
            .set_acl(t.owner, t.mailbox.id, &id, &new.letters())
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotFound(_)) => return Ok(Refusal::Missing.no(tag)),
            Err(e) => return Err(e),
        }
        // Grantees' LIST changes: tell the sessions of the grantee's account.
        if let Some(acct) = self.stores.meta.get_account(&id).await? {
            let _ = self
                .stores
                .coord
                .publish(mailfleet_storage::coord::MailboxEvent::MailboxesChanged {
                    account: acct.id,
                })
                .await;
        }
        Ok(response::ok(
            tag,
            None,
            if rights.is_some() {
                "SETACL completed"
            } else {
                "DELETEACL completed"
            },
        ))
    }

    /// Where CREATE of `name` happens: (account, name in that account). A name in the
    /// other users' namespace needs `k` on its parent in the owner's hierarchy (RFC 4314
    /// §4); the namespace prefix itself and an owner's top level are not creatable.
    pub(crate) async fn create_scope(
        &mut self,
        tag: &Tag<'static>,
        name: &str,
    ) -> StoreResult<Result<(AccountId, String), Resp>> {
        if name == OTHER_USERS || name == PUBLIC {
            return Ok(Err(response::no(
                tag,
                code("CANNOT"),
                "Reserved for a shared namespace",
            )));
        }
        let me = self.acct()?.address.clone();
        let Some((_, local)) = split_shared(name, &me) else {
            return Ok(Ok((self.acct()?.id, name.to_string())));
        };
        let Some((parent, _)) = name.rsplit_once(DELIMITER) else {
            return Ok(Err(Refusal::NoPerm.no(tag)));
        };
        if !local.contains(DELIMITER) {
            // Directly under the owner (or `Shared/`): there is no mailbox whose `k` would
            // allow it; public folders are made by `mailfleet public-folder create`.
            return Ok(Err(Refusal::NoPerm.no(tag)));
        }
        match self.access(parent, "k", true).await? {
            Ok(t) => Ok(Ok((t.owner, local))),
            Err(r) => Ok(Err(r.no(tag))),
        }
    }

    /// A public folder a user created (under `Shared/`, with `k` on its parent) starts
    /// with its parent's ACL, as Dovecot's ACLs do: with none, nobody (its creator
    /// included) could reach it, the public account having no user.
    pub(crate) async fn inherit_public_acl(
        &mut self,
        acct: AccountId,
        name: &str,
        mb: &StoreMailbox,
    ) -> StoreResult<()> {
        let me = self.acct()?.clone();
        if acct == me.id {
            return Ok(());
        }
        let Some(owner) = self.stores.meta.get_account_by_id(acct).await? else {
            return Ok(());
        };
        if public_owner(&me.address).as_deref() != Some(owner.address.as_str()) {
            return Ok(());
        }
        let Some((parent, _)) = name.rsplit_once(DELIMITER) else {
            return Ok(());
        };
        let Some(parent) = self.stores.meta.get_mailbox(acct, parent).await? else {
            return Ok(());
        };
        for e in self.stores.meta.get_acl(parent.id).await? {
            self.stores
                .meta
                .set_acl(acct, mb.id, &e.identifier, &e.rights)
                .await?;
        }
        Ok(())
    }

    /// Where RENAME happens: (account, old name, new name in that account). Both names
    /// must be in one owner's hierarchy; in another user's, the source needs `x` and the
    /// new name's parent `k` (RFC 4314 §4).
    pub(crate) async fn rename_scope(
        &mut self,
        tag: &Tag<'static>,
        from: &str,
        to: &str,
    ) -> StoreResult<Result<(AccountId, String, String), Resp>> {
        let cannot = |t| {
            response::no(
                t,
                code("CANNOT"),
                "Cannot rename between namespaces or onto the namespace prefix",
            )
        };
        let me = self.acct()?.address.clone();
        let reserved = |n: &str| n == OTHER_USERS || n == PUBLIC;
        match (split_shared(from, &me), split_shared(to, &me)) {
            (None, None) if !reserved(to) && !reserved(from) => {
                Ok(Ok((self.acct()?.id, from.to_string(), to.to_string())))
            }
            (Some((o1, l1)), Some((o2, l2))) if o1 == o2 && !l1.is_empty() && !l2.is_empty() => {
                let src = match self.access(from, "x", true).await? {
                    Ok(t) => t,
                    Err(r) => return Ok(Err(r.no(tag))),
                };
                let Some((parent, _)) = to.rsplit_once(DELIMITER) else {
                    return Ok(Err(Refusal::NoPerm.no(tag)));
                };
                if !l2.contains(DELIMITER) {
                    return Ok(Err(Refusal::NoPerm.no(tag)));
                }
                match self.access(parent, "k", true).await? {
                    Ok(_) => Ok(Ok((src.owner, l1, l2))),
                    Err(r) => Ok(Err(r.no(tag))),
                }
            }
            _ => Ok(Err(cannot(tag))),
        }
    }

    /// The LIST entries of the other users' namespace that `matcher` matches: the prefix
    /// and each owner as `\Noselect` levels, the owner's unshared ancestors of a shared
    /// mailbox as `\Noselect` too, and every mailbox the user may list (`l`).
    pub(crate) async fn list_other_users(
        &mut self,
        matcher: &super::ListPattern,
        subscribed: &[String],
    ) -> StoreResult<Vec<Resp>> {
        use imap_codec::imap_types::core::QuotedChar;
        use imap_codec::imap_types::flag::FlagNameAttribute;
        use imap_codec::imap_types::response::Data;
        let shared = self.shared_mailboxes().await?;
        if shared.is_empty() {
            return Ok(Vec::new());
        }
        // name → (is a listable mailbox, its `\Noselect`)
        let mut names: BTreeMap<String, Option<bool>> = BTreeMap::new();
        for (name, mb, _) in &shared {
            for (i, _) in name.match_indices(DELIMITER) {
                names.entry(name[..i].to_string()).or_insert(None);
            }
            names.insert(name.clone(), Some(mb.noselect));
        }
        let attr = |n: &'static str| {
            imap_codec::imap_types::core::Atom::try_from(n)
                .ok()
                .map(FlagNameAttribute::from)
        };
        let mut out = Vec::new();
        for (name, kind) in &names {
            if !matcher.matches(name) {
                continue;
            }
            let prefix = format!("{name}{DELIMITER}");
            let children = names.keys().any(|n| n.starts_with(&prefix));
            let mut items = Vec::new();
            if kind.is_none_or(|noselect| noselect) {
                items.push(FlagNameAttribute::Noselect);
            }
            items.extend(attr(if children {
                "HasChildren"
            } else {
                "HasNoChildren"
            }));
            if kind.is_some() && subscribed.contains(name) {
                items.extend(attr("Subscribed"));
            }
            out.push(response::data(Data::List {
                items,
                delimiter: QuotedChar::try_from(DELIMITER).ok(),
                mailbox: super::mailboxes::to_mailbox(name),
            }));
        }
        Ok(out)
    }

    /// GETQUOTAROOT of a shared mailbox: its owner's quota, under the root
    /// `Other Users/<owner>` (RFC 9208 §4.3; the owner's storage is what it uses).
    pub(crate) async fn shared_quota_root(
        &mut self,
        tag: &Tag<'static>,
        name: &str,
        owner: AccountId,
    ) -> StoreResult<Outcome> {
        use imap_codec::imap_types::core::AString;
        use imap_codec::imap_types::response::Data;
        let Some(acct) = self.stores.meta.get_account_by_id(owner).await? else {
            return Ok(Outcome::done(vec![Refusal::Missing.no(tag)]));
        };
        let me = self.acct()?.address.clone();
        let root = shared_root(&me, &acct.address);
        let quota = super::mailboxes::quota_of(&acct, &root);
        let roots = if quota.is_some() {
            AString::try_from(root.clone()).ok().into_iter().collect()
        } else {
            vec![]
        };
        let mut out = vec![response::data(Data::QuotaRoot {
            mailbox: super::mailboxes::to_mailbox(name),
            roots,
        })];
        out.extend(quota.map(response::data));
        out.push(response::ok(tag, None, "GETQUOTAROOT completed"));
        Ok(Outcome::done(out))
    }

    /// GETQUOTA of `Other Users/<owner>` or `Shared`: only for a user the owner shares a
    /// mailbox with.
    pub(crate) async fn shared_quota(
        &mut self,
        tag: &Tag<'static>,
        owner: &str,
    ) -> StoreResult<Outcome> {
        let me = self.acct()?.address.clone();
        let visible = self
            .shared_mailboxes()
            .await?
            .iter()
            .any(|(n, _, _)| split_shared(n, &me).is_some_and(|(o, _)| o == owner));
        let acct = if visible {
            self.stores.meta.get_account(owner).await?
        } else {
            None
        };
        let root = shared_root(&me, owner);
        match acct.and_then(|a| super::mailboxes::quota_of(&a, &root)) {
            Some(d) => Ok(Outcome::done(vec![
                response::data(d),
                response::ok(tag, None, "GETQUOTA completed"),
            ])),
            None => Ok(Outcome::done(vec![response::no(
                tag,
                code("NONEXISTENT"),
                "No such quota root",
            )])),
        }
    }

    /// Whether the selected mailbox's rights include `need`; true when none is selected.
    pub(crate) fn selected_has(&self, need: &str) -> bool {
        match &self.state {
            State::Selected(_) => self.selected_rights.has(need),
            _ => true,
        }
    }
}

/// The flags a user with `rights` may set: RFC 4314 §4 has APPEND and COPY drop, without
/// failing, `\Seen` without `s`, `\Deleted` without `t` and the others without `w`.
pub(crate) fn permitted_flags(
    flags: mailfleet_storage::Flags,
    rights: Rights,
) -> mailfleet_storage::Flags {
    mailfleet_storage::Flags::new(flags.iter().filter(|f| {
        let need = if f.eq_ignore_ascii_case("\\Seen") {
            "s"
        } else if f.eq_ignore_ascii_case("\\Deleted") {
            "t"
        } else {
            "w"
        };
        rights.has(need)
    }))
}

impl Session {
    /// COPY/MOVE message by message: into another account's mailbox (its owner's quota is
    /// charged, which the store's one-account copy cannot do), or where the rights drop
    /// flags. The messages keep their blob (content-addressed: no bytes are copied); a
    /// MOVE expunges the originals after the copies are in.
    pub(crate) async fn copy_across(
        &self,
        source: mailfleet_storage::MailboxId,
        uids: &[mailfleet_storage::Uid],
        target: &Target,
        is_move: bool,
    ) -> StoreResult<(
        Vec<mailfleet_storage::Copied>,
        Option<mailfleet_storage::metadata::Expunged>,
    )> {
        let mut metas = Vec::with_capacity(uids.len());
        for &u in uids {
            if let Some(m) = self.stores.meta.get_message(source, u).await? {
                metas.push(m);
            }
        }
        let summaries: std::collections::HashMap<_, _> = self
            .stores
            .meta
            .message_summaries(source, uids)
            .await?
            .into_iter()
            .collect();
        let mut news = Vec::with_capacity(metas.len());
        for m in &metas {
            // The pin keeps the blob from the orphan sweep should the original go first.
            self.stores.meta.pin_blob(&m.blob).await?;
            news.push(mailfleet_storage::NewMessage {
                account: target.owner,
                mailbox: target.mailbox.id,
                blob: m.blob.clone(),
                size: m.size,
                internal_date: m.internal_date,
                flags: permitted_flags(m.flags.clone(), target.rights),
                summary: summaries.get(&m.uid).cloned(),
                // A copy into another account is a new email there (new EMAILID) and
                // starts a thread of its own: its header is not read again here.
                refs: Default::default(),
                trace: None,
            });
        }
        let appended = if news.is_empty() {
            Vec::new()
        } else {
            self.stores
                .meta
                .append(news, mailfleet_storage::metadata::QuotaPolicy::Enforce)
                .await?
        };
        let copied = metas
            .iter()
            .zip(appended)
            .map(|(m, dest)| mailfleet_storage::Copied {
                source_uid: m.uid,
                dest,
            })
            .collect();
        let gone = if is_move {
            let moved: Vec<_> = metas.iter().map(|m| m.uid).collect();
            Some(self.stores.meta.expunge(source, &moved).await?)
        } else {
            None
        };
        Ok((copied, gone))
    }
}

fn raw(line: String) -> Resp {
    let mut v = line.into_bytes();
    v.extend_from_slice(b"\r\n");
    Resp::Raw(v)
}

fn cmd_mailbox(cmd: &AclCommand) -> Mailbox<'static> {
    let name = match cmd {
        AclCommand::SetAcl { mailbox, .. }
        | AclCommand::DeleteAcl { mailbox, .. }
        | AclCommand::GetAcl { mailbox }
        | AclCommand::ListRights { mailbox, .. }
        | AclCommand::MyRights { mailbox } => mailbox.clone(),
    };
    if name.eq_ignore_ascii_case("INBOX") {
        Mailbox::Inbox
    } else {
        Mailbox::try_from(name).unwrap_or(Mailbox::Inbox)
    }
}

/// An ACL command (RFC 4314 §3), arguments as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AclCommand {
    SetAcl {
        mailbox: String,
        identifier: String,
        rights: String,
    },
    DeleteAcl {
        mailbox: String,
        identifier: String,
    },
    GetAcl {
        mailbox: String,
    },
    ListRights {
        mailbox: String,
        identifier: String,
    },
    MyRights {
        mailbox: String,
    },
}

fn is_atom_char(b: u8) -> bool {
    // ATOM-CHAR plus `]` (ASTRING-CHAR, RFC 9051 §9).
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\')
}

/// Reads one astring (atom, quoted string or literal) at the start of `input`.
fn read_astring(input: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    match input.first()? {
        b'"' => {
            let mut out = Vec::new();
            let mut i = 1;
            loop {
                match *input.get(i)? {
                    b'"' => return Some((out, &input[i + 1..])),
                    b'\\' => {
                        let c = *input.get(i + 1)?;
                        if c != b'"' && c != b'\\' {
                            return None;
                        }
                        out.push(c);
                        i += 2;
                    }
                    b'\r' | b'\n' | 0 => return None,
                    c => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
        }
        b'{' => {
            let close = input.iter().position(|&b| b == b'}')?;
            let spec = std::str::from_utf8(&input[1..close]).ok()?;
            let n: usize = spec.strip_suffix('+').unwrap_or(spec).parse().ok()?;
            let rest = input.get(close + 1..)?.strip_prefix(b"\r\n")?;
            if rest.len() < n {
                return None;
            }
            Some((rest[..n].to_vec(), &rest[n..]))
        }
        _ => {
            let end = input
                .iter()
                .position(|&b| !is_atom_char(b))
                .unwrap_or(input.len());
            if end == 0 {
                return None;
            }
            Some((input[..end].to_vec(), &input[end..]))
        }
    }
}

fn sp(input: &[u8]) -> Option<&[u8]> {
    input.strip_prefix(b" ")
}

/// Recognises an ACL command (one line, arguments may be literals). `None` when the
/// message is not an ACL command or does not follow its grammar (the caller then answers
/// it as the syntax error it is).
pub fn preparse(message: &[u8]) -> Option<(Tag<'static>, AclCommand)> {
    let line = message
        .strip_suffix(b"\r\n")
        .or_else(|| message.strip_suffix(b"\n"))?;
    let tag_end = line.iter().position(|&b| b == b' ')?;
    let tag = Tag::try_from(std::str::from_utf8(&line[..tag_end]).ok()?.to_string()).ok()?;
    let rest = &line[tag_end + 1..];
    let verb_end = rest.iter().position(|&b| b == b' ')?;
    let verb = std::str::from_utf8(&rest[..verb_end])
        .ok()?
        .to_ascii_uppercase();
    let mut args = Vec::new();
    let mut cur = &rest[verb_end..];
    while !cur.is_empty() {
        cur = sp(cur)?;
        let (a, r) = read_astring(cur)?;
        args.push(String::from_utf8(a).ok()?);
        cur = r;
    }
    let mut it = args.into_iter();
    let mut next = || it.next();
    let cmd = match verb.as_str() {
        "SETACL" => AclCommand::SetAcl {
            mailbox: next()?,
            identifier: next()?,
            rights: next()?,
        },
        "DELETEACL" => AclCommand::DeleteAcl {
            mailbox: next()?,
            identifier: next()?,
        },
        "GETACL" => AclCommand::GetAcl { mailbox: next()? },
        "LISTRIGHTS" => AclCommand::ListRights {
            mailbox: next()?,
            identifier: next()?,
        },
        "MYRIGHTS" => AclCommand::MyRights { mailbox: next()? },
        _ => return None,
    };
    if next().is_some() {
        return None;
    }
    Some((tag, cmd))
}

/// An astring for a response: an atom when it is one, else a quoted string, else (CR, LF,
/// NUL, 8-bit) a literal.
pub fn astring(s: &[u8]) -> String {
    if !s.is_empty() && s.iter().all(|&b| is_atom_char(b)) {
        return String::from_utf8_lossy(s).into_owned();
    }
    if s.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        let mut q = String::from("\"");
        for &b in s {
            if b == b'"' || b == b'\\' {
                q.push('\\');
            }
            q.push(b as char);
        }
        q.push('"');
        return q;
    }
    // A literal: only reached for 8-bit names, which are UTF-8 (they came from a String).
    format!("{{{}}}\r\n{}", s.len(), String::from_utf8_lossy(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_parse_map_obsolete_letters_and_refuse_unknown_ones() {
        assert_eq!(
            Rights::parse("lr").map(Rights::letters).as_deref(),
            Some("lr")
        );
        assert_eq!(
            Rights::parse("c").map(Rights::letters).as_deref(),
            Some("k")
        );
        assert_eq!(
            Rights::parse("d").map(Rights::letters).as_deref(),
            Some("tex")
        );
        assert_eq!(
            Rights::parse("ral").map(Rights::letters).as_deref(),
            Some("lra")
        );
        assert_eq!(Rights::parse("lz"), None);
        assert_eq!(Rights::ALL.letters(), "lrwstipekxa");
        assert_eq!(Rights::ALL.wire(), "lrwstipekxacd");
        assert_eq!(
            Rights::parse("lrt").map(Rights::wire).as_deref(),
            Some("lrtd")
        );
        let lr = Rights::parse("lr").unwrap_or_default();
        assert!(lr.has("l") && lr.has("rl") && !lr.has("i") && lr.has(""));
        assert_eq!(
            lr.union(Rights::parse("w").unwrap_or_default()).letters(),
            "lrw"
        );
        assert_eq!(
            lr.minus(Rights::parse("l").unwrap_or_default()).letters(),
            "r"
        );
    }

    #[test]
    fn other_users_names_split_into_owner_and_mailbox() {
        assert_eq!(
            split_other("Other Users/Bob@Example.test/Projects/x"),
            Some(("bob@example.test".into(), "Projects/x".into()))
        );
        assert_eq!(
            split_other("Other Users/bob@example.test/inbox"),
            Some(("bob@example.test".into(), "INBOX".into()))
        );
        assert_eq!(
            split_other("Other Users/bob@example.test"),
            Some(("bob@example.test".into(), String::new()))
        );
        assert_eq!(split_other("Other Users"), None);
        assert_eq!(split_other("Other Users/"), None);
        assert_eq!(split_other("Projects"), None);
        assert_eq!(
            other_name("bob@example.test", "INBOX"),
            "Other Users/bob@example.test/INBOX"
        );
    }

    #[test]
    fn acl_commands_parse_with_atoms_quoted_strings_and_literals() {
        assert_eq!(
            preparse(b"a1 SETACL INBOX bob@example.test +lr\r\n"),
            Some((
                Tag::try_from("a1").expect("tag"),
                AclCommand::SetAcl {
                    mailbox: "INBOX".into(),
                    identifier: "bob@example.test".into(),
                    rights: "+lr".into()
                }
            ))
        );
        assert_eq!(
            preparse(b"a2 getacl \"My \\\"box\\\"\"\r\n").map(|c| c.1),
            Some(AclCommand::GetAcl {
                mailbox: "My \"box\"".into()
            })
        );
        assert_eq!(
            preparse(b"a3 MYRIGHTS {5}\r\nx y z\r\n").map(|c| c.1),
            Some(AclCommand::MyRights {
                mailbox: "x y z".into()
            })
        );
        assert_eq!(
            preparse(b"a4 DELETEACL box anyone\r\n").map(|c| c.1),
            Some(AclCommand::DeleteAcl {
                mailbox: "box".into(),
                identifier: "anyone".into()
            })
        );
        assert_eq!(
            preparse(b"a5 LISTRIGHTS box \"\"\r\n").map(|c| c.1),
            Some(AclCommand::ListRights {
                mailbox: "box".into(),
                identifier: String::new()
            })
        );
        // Missing, extra and malformed arguments are not ACL commands.
        assert_eq!(preparse(b"a6 SETACL INBOX bob\r\n"), None);
        assert_eq!(preparse(b"a7 GETACL INBOX extra\r\n"), None);
        assert_eq!(preparse(b"a8 GETACL \"open\r\n"), None);
        assert_eq!(preparse(b"a9 GETACL {10}\r\nshort\r\n"), None);
        assert_eq!(preparse(b"b1 FETCH 1 FLAGS\r\n"), None);
        assert_eq!(preparse(b"b2 GETACL  INBOX\r\n"), None);
    }

    #[test]
    fn astrings_are_atoms_quoted_or_literals_as_needed() {
        assert_eq!(astring(b"INBOX"), "INBOX");
        assert_eq!(astring(b"a b"), "\"a b\"");
        assert_eq!(astring(b""), "\"\"");
        assert_eq!(astring(b"q\"\\"), "\"q\\\"\\\\\"");
        assert_eq!(astring(b"a*"), "\"a*\"");
        assert_eq!(astring("é".as_bytes()), "{2}\r\né");
    }
}
