//! NOTIFY (RFC 5465): which events of which mailboxes a session is told of, and when.
//!
//! - **Parsing** ([`parse`]) is free of sockets: imap-codec has no NOTIFY, so the driver
//!   hands the command's bytes here when the codec refused them. MessageNew's fetch
//!   attributes are decoded by the codec (as the item list of a FETCH).
//! - **Where changes come from**: the session subscribes to the account's `Coordinator`
//!   change notifications (published by every node after a write commits), and on any
//!   notification re-reads the account's mailbox list (one query: counts, UIDNEXT, highest
//!   MODSEQ) and subscriptions from the store, comparing them with what it last reported.
//!   So it works across nodes, and a lost notification only delays a report until the next
//!   one (or the next command) — the store, not the event, is the truth.
//! - **When**: at the end of every command (before its tagged reply), between commands as
//!   soon as a notification arrives (the driver waits for input and notifications
//!   together), and during IDLE. For the selected mailbox, `SELECTED` reports expunges at
//!   once and `SELECTED-DELAYED` holds them until a command that may renumber (RFC 5465);
//!   without a selected filter, the selected mailbox is reported only as base IMAP
//!   requires (at command completion).
//! - **What**: other mailboxes' message events as `STATUS (MESSAGES UIDNEXT UNSEEN)` (with
//!   HIGHESTMODSEQ when FlagChange is asked for, RFC 5465, the items Dovecot sends;
//!   `SET STATUS` adds UIDVALIDITY); MailboxName as LIST (`\NonExistent` for a deleted mailbox, `OLDNAME`
//!   for a renamed one, RFC 5465); SubscriptionChange as LIST with or without
//!   `\Subscribed`. When more would be queued than [`MAX_QUEUED`], the session gets
//!   `* OK [NOTIFICATIONOVERFLOW]` and NOTIFY is off (RFC 5465).

use crate::response::{self, Resp};
use crate::session::{Session, State};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::fetch::MessageDataItemName;
use imap_codec::imap_types::flag::FlagNameAttribute;
use imap_codec::imap_types::response::Data;
use imap_codec::imap_types::status::StatusDataItem;
use mailfleet_storage::{MailboxId, StoreResult, Subscription, Uid};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// Event groups in one NOTIFY SET.
pub const MAX_GROUPS: usize = 32;
/// Mailbox names given in one NOTIFY SET (Dovecot allows 100 per namespace).
pub const MAX_NAMES: usize = 100;
/// Mailboxes watched for message events at once; a NOTIFY that matches more is refused
/// with `[NOTIFICATIONOVERFLOW]`, and a session whose filters grow past it (mailboxes
/// created later) gets the overflow notice. Each watched mailbox that changes costs one
/// usage query per report.
pub const MAX_WATCHED: usize = 1000;
/// Notifications produced by one check; beyond it the session gets
/// `* OK [NOTIFICATIONOVERFLOW]` and NOTIFY is turned off.
pub const MAX_QUEUED: usize = 2000;
/// Longest NOTIFY command, in bytes (also bounded by the command size limit).
pub const MAX_COMMAND: usize = 16 * 1024;

/// Events a filter asks for (RFC 5465).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    pub new: bool,
    pub expunge: bool,
    pub flags: bool,
    pub name: bool,
    pub subscription: bool,
}

impl Events {
    fn message(&self) -> bool {
        self.new || self.expunge || self.flags
    }
}

/// The mailboxes an event group names (RFC 5465).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Mailboxes mail is delivered to: Mailfleet delivers to INBOX only.
    Inboxes,
    /// Every mailbox of the account.
    Personal,
    Subscribed,
    /// The named mailboxes and everything below them.
    Subtree(Vec<String>),
    Mailboxes(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub filter: Filter,
    pub events: Events,
}

/// The events for the selected mailbox (`SELECTED` or `SELECTED-DELAYED`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedSpec {
    pub events: Events,
    /// SELECTED-DELAYED: expunges wait for a command that may renumber.
    pub delayed: bool,
    /// MessageNew's fetch attributes, sent as FETCH for each new message.
    pub fetch: Vec<MessageDataItemName<'static>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// `SET STATUS`: STATUS for every watched mailbox before the tagged OK (RFC 5465).
    pub status: bool,
    pub selected: Option<SelectedSpec>,
    pub groups: Vec<Group>,
}

/// A parsed NOTIFY command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifyCmd {
    None,
    Set(Spec),
}

/// Why a NOTIFY was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Syntax or a rule of RFC 5465 broken: BAD.
    Bad(String),
    /// Events this server does not support: NO [BADEVENT (...)].
    BadEvent,
    /// Over a limit: NO [NOTIFICATIONOVERFLOW].
    Overflow,
}

/// The events Mailfleet supports, for BADEVENT's list (RFC 5465: the code lists the
/// events the server supports).
pub const SUPPORTED: &str = "MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange";

// ---- tokens ----

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    /// An atom, or a quoted string or literal (`quoted` true).
    Word(String, bool),
    List(Vec<Tok>),
}

/// Splits NOTIFY's arguments into atoms, strings and parenthesised lists. Literals
/// (`{n}\r\n` and `{n+}\r\n`) are taken from the message bytes the fragmentizer gathered.
fn tokens(input: &[u8]) -> Result<Vec<Tok>, String> {
    let mut stack: Vec<Vec<Tok>> = vec![Vec::new()];
    let mut i = 0;
    let bad = |m: &str| Err(m.to_string());
    while i < input.len() {
        match input[i] {
            b' ' => i += 1,
            b'\r' | b'\n' => i += 1,
            b'(' => {
                if stack.len() > 4 {
                    return bad("Lists nested too deep");
                }
                stack.push(Vec::new());
                i += 1;
            }
            b')' => {
                let done = stack.pop().ok_or("Unbalanced )")?;
                let Some(top) = stack.last_mut() else {
                    return bad("Unbalanced )");
                };
                top.push(Tok::List(done));
                i += 1;
            }
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match input.get(i) {
                        None | Some(b'\r') | Some(b'\n') => return bad("Unterminated string"),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            match input.get(i + 1) {
                                Some(c @ (b'"' | b'\\')) => s.push(*c),
                                _ => return bad("Invalid escape in string"),
                            }
                            i += 1;
                        }
                        Some(c) => s.push(*c),
                    }
                    i += 1;
                }
                i += 1;
                let s = String::from_utf8(s).map_err(|_| "String is not UTF-8".to_string())?;
                stack
                    .last_mut()
                    .ok_or("Unbalanced (")?
                    .push(Tok::Word(s, true));
            }
            b'{' => {
                let close = input[i..]
                    .iter()
                    .position(|b| *b == b'}')
                    .ok_or("Bad literal")?;
                let spec =
                    std::str::from_utf8(&input[i + 1..i + close]).map_err(|e| e.to_string())?;
                let n: usize = spec
                    .trim_end_matches('+')
                    .parse()
                    .map_err(|_| "Bad literal")?;
                let start = i + close + 1;
                if input.get(start..start + 2) != Some(b"\r\n") {
                    return bad("Bad literal");
                }
                let data = input.get(start + 2..start + 2 + n).ok_or("Short literal")?;
                let s = String::from_utf8(data.to_vec()).map_err(|_| "Literal is not UTF-8")?;
                stack
                    .last_mut()
                    .ok_or("Unbalanced (")?
                    .push(Tok::Word(s, true));
                i = start + 2 + n;
            }
            _ => {
                let start = i;
                while i < input.len() && !b" ()\r\n\"{".contains(&input[i]) {
                    // `[` ... `]` of a BODY section may hold spaces and parentheses; the
                    // fetch attributes are re-read from the bytes, this only has to skip.
                    if input[i] == b'[' {
                        let close = input[i..]
                            .iter()
                            .position(|b| *b == b']')
                            .ok_or("Unbalanced [")?;
                        i += close;
                    }
                    i += 1;
                }
                let w = std::str::from_utf8(&input[start..i]).map_err(|_| "Not ASCII")?;
                stack
                    .last_mut()
                    .ok_or("Unbalanced (")?
                    .push(Tok::Word(w.to_string(), false));
            }
        }
    }
    if stack.len() != 1 {
        return bad("Unbalanced (");
    }
    Ok(stack.pop().unwrap_or_default())
}

/// Recognises `tag NOTIFY ...`: `None` when the bytes are not a NOTIFY command, else the
/// tag and the parsed command or why it is refused.
pub fn parse(message: &[u8]) -> Option<(Tag<'static>, Result<NotifyCmd, Refusal>)> {
    let sp = message.iter().position(|b| *b == b' ')?;
    let tag = Tag::try_from(std::str::from_utf8(&message[..sp]).ok()?.to_string()).ok()?;
    let rest = &message[sp + 1..];
    let verb_end = rest
        .iter()
        .position(|b| *b == b' ' || *b == b'\r')
        .unwrap_or(rest.len());
    if !rest[..verb_end].eq_ignore_ascii_case(b"NOTIFY") {
        return None;
    }
    if message.len() > MAX_COMMAND {
        return Some((tag, Err(Refusal::Overflow)));
    }
    Some((tag, parse_args(&rest[verb_end..])))
}

fn word(t: &Tok) -> Option<&str> {
    match t {
        Tok::Word(w, false) => Some(w),
        _ => None,
    }
}

fn parse_args(args: &[u8]) -> Result<NotifyCmd, Refusal> {
    let bad = |m: &str| Refusal::Bad(m.to_string());
    if !args.starts_with(b" ") {
        return Err(bad("NOTIFY needs SET or NONE"));
    }
    let toks = tokens(args).map_err(Refusal::Bad)?;
    let mut it = toks.iter().peekable();
    match it.next().and_then(word) {
        Some(w) if w.eq_ignore_ascii_case("NONE") => {
            return if it.next().is_none() {
                Ok(NotifyCmd::None)
            } else {
                Err(bad("Nothing may follow NOTIFY NONE"))
            }
        }
        Some(w) if w.eq_ignore_ascii_case("SET") => {}
        _ => return Err(bad("NOTIFY needs SET or NONE")),
    }
    let mut spec = Spec {
        status: false,
        selected: None,
        groups: Vec::new(),
    };
    if it
        .peek()
        .and_then(|t| word(t))
        .is_some_and(|w| w.eq_ignore_ascii_case("STATUS"))
    {
        spec.status = true;
        it.next();
    }
    let mut names = 0usize;
    let mut unsupported = false;
    let mut any = false;
    for t in it {
        any = true;
        let Tok::List(group) = t else {
            return Err(bad("Expected an event group"));
        };
        let mut g = group.iter();
        let filter = g
            .next()
            .and_then(word)
            .ok_or_else(|| bad("Expected a mailbox filter"))?;
        let filter = filter.to_ascii_uppercase();
        let selected = filter == "SELECTED" || filter == "SELECTED-DELAYED";
        let mailboxes = match filter.as_str() {
            "SUBTREE" | "MAILBOXES" => {
                let arg = g.next().ok_or_else(|| bad("Expected mailbox names"))?;
                let list: Vec<String> = match arg {
                    Tok::Word(w, _) => vec![w.clone()],
                    Tok::List(l) if !l.is_empty() => l
                        .iter()
                        .map(|x| match x {
                            Tok::Word(w, _) => Ok(w.clone()),
                            Tok::List(_) => Err(bad("Expected a mailbox name")),
                        })
                        .collect::<Result<_, _>>()?,
                    Tok::List(_) => return Err(bad("Expected mailbox names")),
                };
                names += list.len();
                Some(list)
            }
            "SELECTED" | "SELECTED-DELAYED" | "INBOXES" | "PERSONAL" | "SUBSCRIBED" => None,
            _ => return Err(bad("Unknown mailbox filter")),
        };
        let events_tok = g.next().ok_or_else(|| bad("Expected events"))?;
        if g.next().is_some() {
            return Err(bad("Unexpected data after the events"));
        }
        let mut events = Events::default();
        let mut fetch = Vec::new();
        match events_tok {
            Tok::Word(w, false) if w.eq_ignore_ascii_case("NONE") => {}
            Tok::List(list) if !list.is_empty() => {
                let mut i = 0;
                while i < list.len() {
                    let name = word(&list[i]).ok_or_else(|| bad("Expected an event"))?;
                    match name.to_ascii_lowercase().as_str() {
                        "messagenew" => {
                            events.new = true;
                            if let Some(Tok::List(_)) = list.get(i + 1) {
                                if !selected {
                                    return Err(bad(
                                        "Fetch attributes are for the selected mailbox only",
                                    ));
                                }
                                i += 1;
                                fetch = fetch_atts(args, &list[i])?;
                            }
                        }
                        "messageexpunge" => events.expunge = true,
                        "flagchange" => events.flags = true,
                        "mailboxname" => events.name = true,
                        "subscriptionchange" => events.subscription = true,
                        "annotationchange" | "mailboxmetadatachange" | "servermetadatachange" => {
                            unsupported = true
                        }
                        _ => return Err(bad("Unknown event")),
                    }
                    i += 1;
                }
            }
            _ => return Err(bad("Expected events or NONE")),
        }
        // RFC 5465: MessageNew and MessageExpunge go together, and FlagChange needs them.
        if events.new != events.expunge {
            return Err(bad("MessageNew and MessageExpunge must be together"));
        }
        if events.flags && !events.new {
            return Err(bad("FlagChange requires MessageNew and MessageExpunge"));
        }
        if selected {
            if spec.selected.is_some() {
                return Err(bad("Duplicate selected filter"));
            }
            if events.name || events.subscription {
                return Err(bad("Mailbox events do not apply to the selected mailbox"));
            }
            spec.selected = Some(SelectedSpec {
                events,
                delayed: filter == "SELECTED-DELAYED",
                fetch,
            });
            continue;
        }
        let filter = match (filter.as_str(), mailboxes) {
            ("INBOXES", _) => Filter::Inboxes,
            ("PERSONAL", _) => Filter::Personal,
            ("SUBSCRIBED", _) => Filter::Subscribed,
            ("SUBTREE", Some(m)) => Filter::Subtree(m),
            (_, Some(m)) => Filter::Mailboxes(m),
            _ => return Err(bad("Unknown mailbox filter")),
        };
        spec.groups.push(Group { filter, events });
    }
    if !any {
        return Err(bad("NOTIFY SET needs an event group"));
    }
    if unsupported {
        return Err(Refusal::BadEvent);
    }
    if spec.groups.len() > MAX_GROUPS || names > MAX_NAMES {
        return Err(Refusal::Overflow);
    }
    Ok(NotifyCmd::Set(spec))
}

/// MessageNew's fetch attributes, decoded by the codec as a FETCH item list. The list's
/// text is found again in the raw bytes (a `(` ... `)` balanced outside `[...]`).
fn fetch_atts(args: &[u8], list: &Tok) -> Result<Vec<MessageDataItemName<'static>>, Refusal> {
    use imap_codec::decode::Decoder;
    use imap_codec::imap_types::command::CommandBody;
    use imap_codec::imap_types::fetch::MacroOrMessageDataItemNames;
    use imap_codec::imap_types::IntoStatic;
    let bad = || Refusal::Bad("Invalid fetch attributes".to_string());
    let Tok::List(items) = list else {
        return Err(bad());
    };
    let first = items.first().and_then(word).ok_or_else(bad)?;
    // The attribute list is the "(" after a MessageNew that starts with the list's first
    // item; found again in the raw bytes, since the items are decoded by the codec.
    let hay = args.to_ascii_uppercase();
    let mark = b"MESSAGENEW";
    let want = first.to_ascii_uppercase();
    let open = (0..hay.len().saturating_sub(mark.len()))
        .filter(|&k| hay[k..].starts_with(mark))
        .find_map(|k| {
            let after = &hay[k + mark.len()..];
            let sp = after.iter().take_while(|b| **b == b' ').count();
            (after.get(sp) == Some(&b'(') && after[sp + 1..].starts_with(want.as_bytes()))
                .then_some(k + mark.len() + sp)
        })
        .ok_or_else(bad)?;
    let (mut depth, mut in_section, mut end) = (0i32, false, None);
    for (k, b) in args[open..].iter().enumerate() {
        match b {
            b'[' => in_section = true,
            b']' => in_section = false,
            b'(' if !in_section => depth += 1,
            b')' if !in_section => {
                depth -= 1;
                if depth == 0 {
                    end = Some(open + k);
                    break;
                }
            }
            _ => {}
        }
    }
    let end = end.ok_or_else(bad)?;
    let mut line = b"N FETCH 1 ".to_vec();
    line.extend_from_slice(&args[open..=end]);
    line.extend_from_slice(b"\r\n");
    let (rest, cmd) = imap_codec::CommandCodec::default()
        .decode(&line)
        .map_err(|_| bad())?;
    if !rest.is_empty() {
        return Err(bad());
    }
    match cmd.into_static().body {
        CommandBody::Fetch {
            macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(items),
            ..
        } => Ok(items),
        _ => Err(bad()),
    }
}

// ---- state ----

/// What was last reported of a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snap {
    name: String,
    messages: u64,
    uid_next: u32,
    modseq: u64,
}

/// A session's NOTIFY state.
pub struct Notify {
    spec: Spec,
    /// In a mutex only so the session stays `Sync` (a subscription is `Send` only); it is
    /// reached through `&mut` ([`std::sync::Mutex::get_mut`]), never locked.
    sub: Option<std::sync::Mutex<Subscription>>,
    /// A notification arrived (or the session changed something) since the last check.
    dirty: bool,
    boxes: HashMap<MailboxId, Snap>,
    subscribed: BTreeSet<String>,
    /// MessageNew FETCH sent for the selected mailbox up to this UID.
    fetched: Option<(MailboxId, Uid)>,
}

impl Notify {
    fn matches(&self, name: &str, subscribed: &BTreeSet<String>) -> Option<Events> {
        self.spec.groups.iter().find_map(|g| {
            let hit = match &g.filter {
                Filter::Inboxes => name == "INBOX",
                Filter::Personal => true,
                Filter::Subscribed => subscribed.contains(name),
                Filter::Mailboxes(m) => m.iter().any(|x| x == name),
                Filter::Subtree(m) => m.iter().any(|x| {
                    name == x
                        || name
                            .strip_prefix(x.as_str())
                            .is_some_and(|r| r.starts_with(crate::commands::DELIMITER))
                }),
            };
            hit.then_some(g.events)
        })
    }

    /// FlagChange asked for anywhere (the selected filter included): STATUS then carries
    /// HIGHESTMODSEQ, as in Dovecot.
    fn uses_flags(&self) -> bool {
        self.spec.groups.iter().any(|g| g.events.flags)
            || self.spec.selected.as_ref().is_some_and(|s| s.events.flags)
    }

    fn wants_subscriptions(&self) -> bool {
        self.spec
            .groups
            .iter()
            .any(|g| g.events.subscription || g.filter == Filter::Subscribed)
    }
}

/// A quoted IMAP string, for the hand-built OLDNAME item; `None` for text a quoted string
/// cannot hold.
fn quoted(s: &str) -> Option<String> {
    if s.chars().any(|c| c.is_control()) {
        return None;
    }
    Some(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

impl Session {
    /// Whether NOTIFY is in effect.
    pub fn notify_active(&self) -> bool {
        self.notify.is_some()
    }

    /// The change subscription NOTIFY listens on, for the driver to wait on between
    /// commands.
    pub fn notify_subscription(&mut self) -> Option<&mut Subscription> {
        let m = self.notify.as_mut()?.sub.as_mut()?;
        Some(m.get_mut().unwrap_or_else(|p| p.into_inner()))
    }

    /// A notification arrived (`Some`), or the coordinator went away (`None`: NOTIFY keeps
    /// working at command boundaries, from the store).
    pub fn notify_woken(&mut self, gone: bool) {
        if let Some(n) = self.notify.as_mut() {
            n.dirty = true;
            if gone {
                n.sub = None;
            }
        }
    }

    /// The NOTIFY command.
    pub async fn notify_command(
        &mut self,
        tag: Tag<'static>,
        cmd: Result<NotifyCmd, Refusal>,
    ) -> crate::session::Outcome {
        use crate::session::Outcome;
        if self.account.is_none() {
            return Outcome::done(vec![response::bad(&tag, "Log in first")]);
        }
        let spec = match cmd {
            Err(Refusal::Bad(m)) => return Outcome::done(vec![response::bad(&tag, &m)]),
            Err(Refusal::BadEvent) => {
                return Outcome::done(vec![response::no(
                    &tag,
                    Some(imap_codec::imap_types::response::Code::Other(
                        imap_codec::imap_types::response::CodeOther::unvalidated(
                            format!("BADEVENT ({SUPPORTED})").into_bytes(),
                        ),
                    )),
                    "Unsupported NOTIFY events",
                )])
            }
            Err(Refusal::Overflow) => {
                return Outcome::done(vec![response::no(
                    &tag,
                    response::code("NOTIFICATIONOVERFLOW"),
                    "Too many mailboxes",
                )])
            }
            Ok(NotifyCmd::None) => {
                self.notify = None;
                return Outcome::done(vec![response::ok(&tag, None, "NOTIFY completed")]);
            }
            Ok(NotifyCmd::Set(spec)) => spec,
        };
        // Names in the command are as the client sent them: modified UTF-7 unless
        // UTF8=ACCEPT (see crate::mutf7).
        let mut spec = spec;
        if self.mutf7_names() {
            for g in &mut spec.groups {
                if let Filter::Subtree(m) | Filter::Mailboxes(m) = &mut g.filter {
                    for name in m.iter_mut() {
                        match crate::mutf7::decode(name) {
                            Ok(n) => *name = n,
                            Err(_) => {
                                return Outcome::done(vec![response::no(
                                    &tag,
                                    None,
                                    "Mailbox name is not valid modified UTF-7",
                                )])
                            }
                        }
                    }
                }
            }
        }
        for g in &mut spec.groups {
            if let Filter::Subtree(m) | Filter::Mailboxes(m) = &mut g.filter {
                for name in m.iter_mut() {
                    *name = crate::commands::mailbox_name(&crate::commands::mailboxes::to_mailbox(
                        name,
                    ));
                }
            }
        }
        let sub = self.change_subscription().await.map(std::sync::Mutex::new);
        let mut n = Notify {
            spec,
            sub,
            dirty: false,
            boxes: HashMap::new(),
            subscribed: BTreeSet::new(),
            fetched: None,
        };
        let mut out = Vec::new();
        match self.notify_baseline(&mut n).await {
            Ok(Ok(status)) => out.extend(status),
            Ok(Err(())) => {
                return Outcome::done(vec![response::no(
                    &tag,
                    response::code("NOTIFICATIONOVERFLOW"),
                    "Too many mailboxes to watch",
                )])
            }
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY failed on storage");
                return Outcome::done(vec![response::no(
                    &tag,
                    response::code("UNAVAILABLE"),
                    "Temporary storage failure, try again",
                )]);
            }
        }
        if let State::Selected(sel) = &self.state {
            n.fetched = Some((sel.id, sel.max_uid().map_or(Uid(0), |u| Uid(u.get()))));
        }
        self.notify = Some(Box::new(n));
        out.push(response::ok(&tag, None, "NOTIFY completed"));
        Outcome::done(out)
    }

    /// Records the current state as reported; with `SET STATUS`, the STATUS responses of
    /// the watched mailboxes. `Err(())` when too many mailboxes would be watched.
    async fn notify_baseline(&self, n: &mut Notify) -> StoreResult<Result<Vec<Resp>, ()>> {
        let acct = self.acct()?.id;
        let boxes = self.stores.meta.list_mailboxes(acct).await?;
        n.subscribed = if n.wants_subscriptions() {
            self.stores
                .meta
                .subscriptions(acct)
                .await?
                .into_iter()
                .collect()
        } else {
            BTreeSet::new()
        };
        let selected = self.selected_id();
        let watched: Vec<&mailfleet_storage::Mailbox> = boxes
            .iter()
            .filter(|b| {
                n.matches(&b.name, &n.subscribed)
                    .is_some_and(|e| e.message())
            })
            .collect();
        if watched.len() > MAX_WATCHED {
            return Ok(Err(()));
        }
        let mut out = Vec::new();
        if n.spec.status {
            for b in watched.iter().filter(|b| Some(b.id) != selected) {
                out.push(self.notify_status(b, n.uses_flags(), true).await?);
            }
        }
        n.boxes = boxes.iter().map(|b| (b.id, snap(b))).collect();
        Ok(Ok(out))
    }

    fn selected_id(&self) -> Option<MailboxId> {
        match &self.state {
            State::Selected(sel) => Some(sel.id),
            _ => None,
        }
    }

    /// `STATUS name (MESSAGES UIDNEXT [UIDVALIDITY] UNSEEN [HIGHESTMODSEQ])`: with
    /// UIDVALIDITY for `SET STATUS` (the client learns the mailbox), without it for a change
    /// (RFC 5465 asks for UIDNEXT and MESSAGES; Dovecot sends these items).
    async fn notify_status(
        &self,
        b: &mailfleet_storage::Mailbox,
        modseq: bool,
        validity: bool,
    ) -> StoreResult<Resp> {
        let usage = self.stores.meta.mailbox_usage(b.id).await?;
        let nz = |v: u32| std::num::NonZeroU32::new(v).unwrap_or(std::num::NonZeroU32::MIN);
        let mut items = vec![
            StatusDataItem::Messages(b.message_count as u32),
            StatusDataItem::UidNext(nz(b.uid_next.0)),
        ];
        if validity {
            items.push(StatusDataItem::UidValidity(nz(b.uid_validity)));
        }
        items.push(StatusDataItem::Unseen(usage.unseen as u32));
        if modseq || self.enabled.condstore {
            items.push(StatusDataItem::HighestModSeq(b.highest_modseq.0));
        }
        Ok(response::data(Data::Status {
            mailbox: crate::commands::mailboxes::to_mailbox(&b.name),
            items: items.into(),
        }))
    }

    /// Drains the notifications that arrived without waiting; true when any did.
    async fn notify_drain(&mut self) -> bool {
        let Some(n) = self.notify.as_mut() else {
            return false;
        };
        let mut woken = false;
        for _ in 0..10_000 {
            let Some(sub) = n.sub.as_mut() else { break };
            let sub = sub.get_mut().unwrap_or_else(|p| p.into_inner());
            match tokio::time::timeout(Duration::ZERO, sub.next()).await {
                Ok(Some(_)) => woken = true,
                Ok(None) => {
                    n.sub = None;
                    woken = true;
                }
                Err(_) => break,
            }
        }
        if woken {
            n.dirty = true;
        }
        woken
    }

    /// What NOTIFY reports now. `renumber`: expunges of the selected mailbox may be sent
    /// (between commands, in IDLE, or at the end of a command that allows them); `push`:
    /// the selected mailbox is reported (SELECTED/SELECTED-DELAYED), not only other ones.
    pub async fn notify_updates(&mut self, push: bool) -> Vec<Resp> {
        if self.notify.is_none() {
            return vec![];
        }
        self.notify_drain().await;
        match self.notify_collect(push).await {
            Ok(out) if out.len() > MAX_QUEUED => {
                self.notify = None;
                vec![response::untagged_ok(
                    response::code("NOTIFICATIONOVERFLOW"),
                    "Too many notifications; NOTIFY is now off",
                )]
            }
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY check failed on storage; retried later");
                if let Some(n) = self.notify.as_mut() {
                    n.dirty = true;
                }
                vec![]
            }
        }
    }

    async fn notify_collect(&mut self, push: bool) -> StoreResult<Vec<Resp>> {
        let mut out = Vec::new();
        let Some(mut n) = self.notify.take() else {
            return Ok(out);
        };
        let result = self.notify_collect_with(&mut n, push, &mut out).await;
        self.notify = Some(n);
        result.map(|()| out)
    }

    async fn notify_collect_with(
        &mut self,
        n: &mut Notify,
        push: bool,
        out: &mut Vec<Resp>,
    ) -> StoreResult<()> {
        // The selected mailbox first: its updates, then MessageNew's FETCH.
        if let (true, Some(spec)) = (push, n.spec.selected.clone()) {
            if spec.events.message() {
                if let State::Selected(sel) = &mut self.state {
                    let mut update = sel.refresh(&self.stores, !spec.delayed).await?;
                    if !spec.events.flags {
                        update.flags_changed.clear();
                    }
                    out.extend(crate::commands::fetch::render_update(
                        sel,
                        &update,
                        self.enabled,
                    ));
                }
            }
        }
        if let Some(spec) = n.spec.selected.clone() {
            if spec.events.new && !spec.fetch.is_empty() {
                out.extend(self.notify_fetch_new(n, spec.fetch).await?);
            }
        }
        if !n.dirty {
            return Ok(());
        }
        n.dirty = false;
        let acct = self.acct()?.id;
        let boxes = self.stores.meta.list_mailboxes(acct).await?;
        let subscribed: BTreeSet<String> = if n.wants_subscriptions() {
            self.stores
                .meta
                .subscriptions(acct)
                .await?
                .into_iter()
                .collect()
        } else {
            BTreeSet::new()
        };
        let delimiter =
            imap_codec::imap_types::core::QuotedChar::try_from(crate::commands::DELIMITER).ok();
        let attr = |s: &'static str| {
            imap_codec::imap_types::core::Atom::try_from(s)
                .ok()
                .map(FlagNameAttribute::from)
        };
        let children = |name: &str| {
            let prefix = format!("{name}{}", crate::commands::DELIMITER);
            boxes.iter().any(|b| b.name.starts_with(&prefix))
        };
        let list_line = |name: &str, mut items: Vec<FlagNameAttribute<'static>>, sub: bool| {
            if sub {
                items.extend(attr("Subscribed"));
            }
            response::data(Data::List {
                items,
                delimiter,
                mailbox: crate::commands::mailboxes::to_mailbox(name),
            })
        };
        // MailboxName (RFC 5465): created, deleted, renamed.
        let current: HashMap<MailboxId, &mailfleet_storage::Mailbox> =
            boxes.iter().map(|b| (b.id, b)).collect();
        for b in &boxes {
            let old = n.boxes.get(&b.id).map(|s| s.name.clone());
            if old.as_deref() == Some(b.name.as_str()) {
                continue;
            }
            let wanted = n.matches(&b.name, &subscribed).is_some_and(|e| e.name)
                || old
                    .as_deref()
                    .is_some_and(|o| n.matches(o, &n.subscribed).is_some_and(|e| e.name));
            if !wanted {
                continue;
            }
            let items = attr(if children(&b.name) {
                "HasChildren"
            } else {
                "HasNoChildren"
            })
            .into_iter()
            .collect();
            let line = list_line(&b.name, items, subscribed.contains(&b.name));
            match old {
                None => out.push(line),
                Some(old) => {
                    // RFC 5465: a rename carries the old name as OLDNAME; imap-types
                    // has no LIST extended data, so the item is added to the codec's line.
                    let wire = if self.mutf7_names() {
                        crate::mutf7::encode(&old)
                    } else {
                        old.clone()
                    };
                    let line =
                        crate::mutf7::response_out(&line, self.mutf7_names()).unwrap_or(line);
                    match quoted(&wire) {
                        Some(q) => {
                            let mut bytes = response::encode(&line);
                            bytes.truncate(bytes.len().saturating_sub(2));
                            bytes.extend_from_slice(format!(" (\"OLDNAME\" ({q}))\r\n").as_bytes());
                            out.push(Resp::Raw(bytes));
                        }
                        None => out.push(line),
                    }
                }
            }
        }
        for (id, s) in &n.boxes {
            if current.contains_key(id) {
                continue;
            }
            if n.matches(&s.name, &n.subscribed).is_some_and(|e| e.name) {
                out.push(list_line(
                    &s.name,
                    attr("NonExistent").into_iter().collect(),
                    false,
                ));
            }
        }
        // SubscriptionChange (RFC 5465).
        for name in subscribed.symmetric_difference(&n.subscribed) {
            let events = n
                .matches(name, &subscribed)
                .or_else(|| n.matches(name, &n.subscribed));
            if !events.is_some_and(|e| e.subscription) {
                continue;
            }
            let now = subscribed.contains(name);
            let mut items: Vec<FlagNameAttribute<'static>> = Vec::new();
            items.extend(attr(if !boxes.iter().any(|b| &b.name == name) {
                "NonExistent"
            } else if children(name) {
                "HasChildren"
            } else {
                "HasNoChildren"
            }));
            out.push(list_line(name, items, now));
        }
        // Message events of other mailboxes (RFC 5465): STATUS.
        let selected = self.selected_id();
        let mut watched = 0usize;
        for b in &boxes {
            let Some(events) = n.matches(&b.name, &subscribed).filter(|e| e.message()) else {
                continue;
            };
            watched += 1;
            if Some(b.id) == selected {
                continue;
            }
            let Some(old) = n.boxes.get(&b.id) else {
                continue;
            };
            if old.modseq == b.highest_modseq.0
                && old.messages == b.message_count
                && old.uid_next == b.uid_next.0
            {
                continue;
            }
            let arrived = u64::from(b.uid_next.0.saturating_sub(old.uid_next));
            let new = arrived > 0;
            let expunged = b.message_count < old.messages + arrived;
            let flags = !new && !expunged;
            if (new && events.new) || (expunged && events.expunge) || (flags && events.flags) {
                out.push(self.notify_status(b, n.uses_flags(), false).await?);
            }
        }
        if watched > MAX_WATCHED {
            out.push(response::untagged_ok(
                response::code("NOTIFICATIONOVERFLOW"),
                "Too many mailboxes to watch",
            ));
        }
        n.boxes = boxes.iter().map(|b| (b.id, snap(b))).collect();
        n.subscribed = subscribed;
        Ok(())
    }

    /// MessageNew's FETCH (RFC 5465) for messages of the selected mailbox the client
    /// has been told EXISTS of and not yet got the FETCH for.
    async fn notify_fetch_new(
        &mut self,
        n: &mut Notify,
        items: Vec<MessageDataItemName<'static>>,
    ) -> StoreResult<Vec<Resp>> {
        use imap_codec::imap_types::fetch::MacroOrMessageDataItemNames;
        let State::Selected(sel) = &self.state else {
            return Ok(vec![]);
        };
        let max = sel.max_uid().map_or(Uid(0), |u| Uid(u.get()));
        let from = match n.fetched {
            Some((id, up_to)) if id == sel.id => up_to,
            // A newly selected mailbox: its messages came with SELECT, not as new mail.
            _ => {
                n.fetched = Some((sel.id, max));
                return Ok(vec![]);
            }
        };
        if max <= from {
            return Ok(vec![]);
        }
        n.fetched = Some((sel.id, max));
        let Ok(set) = imap_codec::imap_types::sequence::SequenceSet::try_from(
            format!("{}:{}", from.0 + 1, max.0).as_str(),
        ) else {
            return Ok(vec![]);
        };
        let tag = Tag::unvalidated("notify");
        let outcome = self
            .fetch(
                tag,
                set,
                MacroOrMessageDataItemNames::MessageDataItemNames(items),
                true,
                vec![],
            )
            .await?;
        let mut out: Vec<Resp> = outcome.responses;
        if matches!(outcome.next, crate::session::Next::Fetch) {
            loop {
                let (batch, last) = self.fetch_step().await;
                out.extend(batch);
                if last {
                    break;
                }
            }
        }
        // Only the FETCH responses: the fetch's own completion is not the client's.
        out.retain(|r| {
            !matches!(
                r,
                Resp::Typed(imap_codec::imap_types::response::Response::Status(
                    imap_codec::imap_types::response::Status::Tagged(_)
                ))
            )
        });
        Ok(out)
    }
}

fn snap(b: &mailfleet_storage::Mailbox) -> Snap {
    Snap {
        name: b.name.clone(),
        messages: b.message_count,
        uid_next: b.uid_next.0,
        modseq: b.highest_modseq.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> Result<NotifyCmd, Refusal> {
        parse(format!("a NOTIFY {s}\r\n").as_bytes())
            .expect("NOTIFY")
            .1
    }

    #[test]
    fn recognises_only_notify() {
        assert!(parse(b"a NOOP\r\n").is_none());
        assert!(parse(b"a NOTIFYX SET\r\n").is_none());
        assert_eq!(
            parse(b"a notify none\r\n").map(|p| p.1),
            Some(Ok(NotifyCmd::None))
        );
        assert!(matches!(
            parse(b"a NOTIFY\r\n").map(|p| p.1),
            Some(Err(Refusal::Bad(_)))
        ));
    }

    #[test]
    fn full_set_parses() {
        let got = set("SET STATUS (SELECTED (MessageNew (UID FLAGS BODY.PEEK[HEADER.FIELDS (From Subject)]) MessageExpunge FlagChange)) (SUBTREE (Lists \"Other/x\") (MessageNew MessageExpunge)) (mailboxes INBOX (MailboxName)) (personal (MailboxName SubscriptionChange)) (INBOXES NONE)");
        let NotifyCmd::Set(spec) = got.expect("valid") else {
            panic!("not SET")
        };
        assert!(spec.status);
        let sel = spec.selected.expect("selected");
        assert!(!sel.delayed && sel.events.flags && sel.events.new);
        assert_eq!(sel.fetch.len(), 3);
        assert_eq!(spec.groups.len(), 4);
        assert_eq!(
            spec.groups[0].filter,
            Filter::Subtree(vec!["Lists".into(), "Other/x".into()])
        );
        assert_eq!(
            spec.groups[1].filter,
            Filter::Mailboxes(vec!["INBOX".into()])
        );
        assert!(spec.groups[2].events.subscription && spec.groups[2].events.name);
        assert_eq!(spec.groups[3].events, Events::default());
    }

    #[test]
    fn rules_of_section_5() {
        for bad in [
            "SET (SELECTED (MessageNew))",
            "SET (SELECTED (MessageExpunge))",
            "SET (SELECTED (FlagChange))",
            "SET (SELECTED (MessageNew MessageExpunge)) (SELECTED-DELAYED (MessageNew MessageExpunge))",
            "SET (PERSONAL (MessageNew (UID) MessageExpunge))",
            "SET (PERSONAL ())",
            "SET (BOGUS (MessageNew MessageExpunge))",
            "SET (PERSONAL (Nonsense))",
            "SET",
            "SET (SUBTREE (MessageNew MessageExpunge))",
            "SET (SELECTED (MessageNew (UID BOGUS) MessageExpunge))",
            "NONE extra",
            "SET (PERSONAL (MailboxName)",
        ] {
            assert!(matches!(set(bad), Err(Refusal::Bad(_))), "{bad}: {:?}", set(bad));
        }
        assert_eq!(
            set("SET (PERSONAL (AnnotationChange))"),
            Err(Refusal::BadEvent)
        );
        assert_eq!(
            set("SET (SELECTED (MessageNew MessageExpunge)) (PERSONAL (ServerMetadataChange))"),
            Err(Refusal::BadEvent)
        );
    }

    #[test]
    fn limits() {
        let names: Vec<String> = (0..=MAX_NAMES).map(|i| format!("m{i}")).collect();
        let cmd = format!(
            "SET (MAILBOXES ({}) (MessageNew MessageExpunge))",
            names.join(" ")
        );
        assert_eq!(set(&cmd), Err(Refusal::Overflow));
        let groups = "(PERSONAL (MailboxName)) ".repeat(MAX_GROUPS + 1);
        assert_eq!(set(&format!("SET {groups}")), Err(Refusal::Overflow));
        let nested = format!("SET {}", "(".repeat(50));
        assert!(matches!(set(&nested), Err(Refusal::Bad(_))));
    }

    #[test]
    fn literal_mailbox_names() {
        let got = parse(b"a NOTIFY SET (MAILBOXES {4}\r\nab c (MessageNew MessageExpunge))\r\n")
            .expect("notify")
            .1
            .expect("valid");
        let NotifyCmd::Set(spec) = got else { panic!() };
        assert_eq!(
            spec.groups[0].filter,
            Filter::Mailboxes(vec!["ab c".into()])
        );
    }

    #[test]
    fn filters_match() {
        let n = Notify {
            spec: Spec {
                status: false,
                selected: None,
                groups: vec![
                    Group {
                        filter: Filter::Subtree(vec!["A".into()]),
                        events: Events {
                            name: true,
                            ..Events::default()
                        },
                    },
                    Group {
                        filter: Filter::Inboxes,
                        events: Events {
                            new: true,
                            expunge: true,
                            ..Events::default()
                        },
                    },
                    Group {
                        filter: Filter::Subscribed,
                        events: Events {
                            subscription: true,
                            ..Events::default()
                        },
                    },
                ],
            },
            sub: None,
            dirty: false,
            boxes: HashMap::new(),
            subscribed: BTreeSet::new(),
            fetched: None,
        };
        let subs: BTreeSet<String> = ["S".to_string()].into_iter().collect();
        assert!(n.matches("A", &subs).is_some_and(|e| e.name));
        assert!(n.matches("A/b/c", &subs).is_some_and(|e| e.name));
        assert!(n.matches("AB", &subs).is_none());
        assert!(n.matches("INBOX", &subs).is_some_and(|e| e.new));
        assert!(n.matches("S", &subs).is_some_and(|e| e.subscription));
        assert!(n.matches("T", &subs).is_none());
    }
}
