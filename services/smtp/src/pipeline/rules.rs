//! User rules: the Sieve stage, between filtering and delivery.
//!
//! ```text
//! per recipient   global "before" scripts ─> the user's active script ─> global "after"
//!                 (mailfleet_sieve: compile once, run with limits, actions out)
//!                 ──> a Plan: copies to place (folder + flags), redirects, a reject,
//!                     a vacation reply, header edits
//! ```
//! The interpreter ([`mailfleet_sieve`]) is pure; this module loads the scripts from the
//! store ([`mailfleet_storage::sieve_scripts`]), gives the interpreter the facts it asks
//! for (the user's mailbox names, included scripts, the time), and turns its actions into
//! a [`Plan`] the pipeline carries out. A script that fails to compile or run (a limit, a
//! missing include) does not lose the message: it goes to INBOX with an `X-Sieve-Error`
//! field saying why (RFC 5228 §2.10.6).
//!
//! Several scripts in a row (before, personal, after) add up their actions; the implicit
//! keep survives only if no script cancelled it, as with Pigeonhole's `sieve_before` and
//! `sieve_after`.

use crate::local::Folder;
use bytes::Bytes;
use mailfleet_core::config::SieveConfig;
use mailfleet_sieve::{Action, HeaderEdit, Limits, Location, Script, Vacation};
use mailfleet_storage::{sieve_scripts, Account, DataScope, Flags, Stores};
use std::collections::HashMap;
use std::sync::Arc;

/// The record kind remembering vacation replies sent (key: digest of handle and sender),
/// expiring after the script's `:days`.
pub const VACATION_KIND: &str = "sieve-vacation";
/// The header field saying why the user's rules did not run.
pub const ERROR_FIELD: &str = "X-Sieve-Error";

/// The configured stage, one per process.
#[derive(Clone)]
pub struct Rules {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    before: Vec<(String, Arc<Script>)>,
    after: Vec<(String, Arc<Script>)>,
    /// Sources of the global scripts (`include :global`), by name.
    global: HashMap<String, String>,
}

/// What the rules decided for one recipient.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Copies to store: folder and initial flags.
    pub placements: Vec<(Folder, Flags)>,
    pub redirects: Vec<String>,
    /// Refuse the message for this recipient, with this reason.
    pub reject: Option<String>,
    pub vacation: Option<Vacation>,
    pub edits: Vec<HeaderEdit>,
    /// Why the rules failed (the message then goes to INBOX, tagged).
    pub error: Option<String>,
    /// Names of the scripts that ran, for the log.
    pub scripts: Vec<String>,
}

impl Plan {
    /// The plan without rules: one copy in `folder`.
    pub fn keep(folder: Folder) -> Self {
        Plan {
            placements: vec![(folder, Flags::default())],
            ..Plan::default()
        }
    }
}

/// What the interpreter may ask during a run: answered from what was loaded before it.
struct Facts {
    mailboxes: Vec<String>,
    personal: HashMap<String, String>,
    global: HashMap<String, String>,
    now: chrono::DateTime<chrono::FixedOffset>,
}

impl mailfleet_sieve::Context for Facts {
    fn mailbox_exists(&self, name: &str) -> bool {
        self.mailboxes.iter().any(|m| {
            m == name || (m.eq_ignore_ascii_case("INBOX") && name.eq_ignore_ascii_case("INBOX"))
        })
    }
    fn include(&self, name: &str, location: Location) -> Option<String> {
        match location {
            Location::Personal => self.personal.get(name).cloned(),
            Location::Global => self.global.get(name).cloned(),
        }
    }
    fn now(&self) -> chrono::DateTime<chrono::FixedOffset> {
        self.now
    }
}

impl Rules {
    /// Loads and compiles the global scripts; a global script that does not compile is a
    /// configuration error (the administrator hears of it at startup, not at delivery).
    pub fn new(cfg: &SieveConfig) -> Result<Self, String> {
        let limits = Limits {
            max_script_bytes: cfg.max_script_bytes,
            max_steps: cfg.max_steps,
            max_actions: cfg.max_actions,
            max_redirects: cfg.max_redirects,
            ..Limits::default()
        };
        let mut global = HashMap::new();
        if let Some(dir) = &cfg.global_dir {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| format!("sieve.global_dir {}: {e}", dir.display()))?;
            for entry in entries.flatten() {
                let path = entry.path();
                let (Some(stem), Some("sieve")) = (
                    path.file_stem().and_then(|s| s.to_str()),
                    path.extension().and_then(|s| s.to_str()),
                ) else {
                    continue;
                };
                let source = std::fs::read_to_string(&path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                global.insert(stem.to_string(), source);
            }
        }
        let compile = |names: &[String]| -> Result<Vec<(String, Arc<Script>)>, String> {
            names
                .iter()
                .map(|n| {
                    let source = global.get(n).ok_or_else(|| {
                        format!("global Sieve script {n:?} is not in sieve.global_dir")
                    })?;
                    let script = mailfleet_sieve::compile(source, &limits)
                        .map_err(|e| format!("global Sieve script {n:?}: {e}"))?;
                    Ok((n.clone(), Arc::new(script)))
                })
                .collect()
        };
        let before = compile(&cfg.before)?;
        let after = compile(&cfg.after)?;
        Ok(Self {
            inner: Arc::new(Inner {
                limits,
                before,
                after,
                global,
            }),
        })
    }

    /// Runs the rules of `account` for a message to `rcpt`; `default` is where the
    /// (implicit) keep puts it (Junk when a filter said so).
    pub async fn plan(
        &self,
        stores: &Stores,
        account: &Account,
        rcpt: &str,
        mail_from: Option<&str>,
        message: &Bytes,
        default: Folder,
    ) -> Plan {
        let scope = DataScope::Account(account.id);
        let personal = match sieve_scripts::active(stores.meta.as_ref(), scope).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(account = %account.address, error = %e, "reading the Sieve script failed");
                let mut plan = Plan::keep(Folder::Inbox);
                plan.error = Some(format!("the user's script could not be read ({e})"));
                return plan;
            }
        };
        if personal.is_none() && self.inner.before.is_empty() && self.inner.after.is_empty() {
            return Plan::keep(default);
        }
        let mut scripts: Vec<(String, Result<Arc<Script>, String>)> = self
            .inner
            .before
            .iter()
            .map(|(n, s)| (format!("global:{n}"), Ok(s.clone())))
            .collect();
        let mut includes_personal = false;
        if let Some(p) = &personal {
            includes_personal = p.source.contains("include");
            let compiled = mailfleet_sieve::compile(&p.source, &self.inner.limits)
                .map(Arc::new)
                .map_err(|e| format!("script {:?} does not compile: {e}", p.name));
            scripts.push((p.name.clone(), compiled));
        }
        scripts.extend(
            self.inner
                .after
                .iter()
                .map(|(n, s)| (format!("global:{n}"), Ok(s.clone()))),
        );
        let mailboxes = match stores.meta.list_mailboxes(account.id).await {
            Ok(b) => b.into_iter().map(|m| m.name).collect(),
            Err(_) => Vec::new(),
        };
        let personal_sources = if includes_personal {
            sieve_scripts::list(stores.meta.as_ref(), scope)
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|s| (s.name, s.source))
                .collect()
        } else {
            HashMap::new()
        };
        let facts = Facts {
            mailboxes,
            personal: personal_sources,
            global: self.inner.global.clone(),
            now: chrono::Utc::now().fixed_offset(),
        };
        let limits = self.inner.limits.clone();
        let message = message.clone();
        let rcpt = rcpt.to_string();
        let from = mail_from.map(str::to_string);
        let joined = tokio::task::spawn_blocking(move || {
            let envelope = mailfleet_sieve::Envelope {
                from: from.as_deref(),
                to: &rcpt,
                auth: None,
            };
            combine(&scripts, &message, &envelope, &facts, &limits, default)
        })
        .await;
        match joined {
            Ok(plan) => plan,
            Err(e) => {
                let mut plan = Plan::keep(Folder::Inbox);
                plan.error = Some(format!("the rules stopped unexpectedly ({e})"));
                plan
            }
        }
    }
}

/// Runs the scripts in order and adds up what they ask for. Pure, so the combination
/// rules are tested without a store.
fn combine(
    scripts: &[(String, Result<Arc<Script>, String>)],
    message: &[u8],
    envelope: &mailfleet_sieve::Envelope<'_>,
    facts: &Facts,
    limits: &Limits,
    default: Folder,
) -> Plan {
    let mut plan = Plan::default();
    let mut implicit_keep = true;
    let mut keep_flags: Option<Vec<String>> = None;
    for (name, script) in scripts {
        plan.scripts.push(name.clone());
        let outcome = script.as_ref().map_err(String::clone).and_then(|s| {
            mailfleet_sieve::run(s, message, envelope, facts, limits)
                .map_err(|e| format!("script {name:?} failed: {e}"))
        });
        let outcome = match outcome {
            Ok(o) => o,
            Err(why) => {
                // RFC 5228 §2.10.6: on an error, keep in INBOX, whatever was asked so far.
                return Plan {
                    placements: vec![(Folder::Inbox, Flags::default())],
                    error: Some(why),
                    scripts: plan.scripts,
                    ..Plan::default()
                };
            }
        };
        implicit_keep &= outcome.implicit_keep;
        for action in outcome.actions {
            match action {
                Action::Keep { flags } => {
                    if outcome.implicit_keep {
                        keep_flags = Some(flags);
                    } else {
                        plan.placements.push((Folder::Inbox, Flags::new(flags)));
                    }
                }
                Action::FileInto {
                    mailbox,
                    flags,
                    create,
                } => plan.placements.push((
                    Folder::Named {
                        name: mailbox,
                        create,
                    },
                    Flags::new(flags),
                )),
                Action::Redirect { address, .. } => {
                    if !plan.redirects.contains(&address) {
                        plan.redirects.push(address);
                    }
                }
                Action::Reject { reason, .. } => plan.reject = Some(reason),
                Action::Discard => {}
                Action::Vacation(v) => plan.vacation = Some(v),
            }
        }
        plan.edits.extend(outcome.header_edits);
    }
    if plan.reject.is_some() {
        // A rejected message is not stored (RFC 5429 §2.1 cancels the implicit keep).
        plan.placements.clear();
        plan.redirects.clear();
        return plan;
    }
    if implicit_keep {
        plan.placements
            .push((default, Flags::new(keep_flags.unwrap_or_default())));
    }
    plan
}

/// The text of a vacation reply (RFC 5230 §5): from the recipient (or `:from`), to the
/// envelope sender, `Auto-Submitted: auto-replied`, threaded on the original.
pub fn vacation_reply(v: &Vacation, recipient: &str, hostname: &str, id: &str) -> Vec<u8> {
    let from = v.from.clone().unwrap_or_else(|| recipient.to_string());
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    let mut out = String::new();
    out.push_str(&format!("From: {}\r\n", clean(&from)));
    out.push_str(&format!("To: <{}>\r\n", clean(&v.to)));
    out.push_str(&format!(
        "Subject: {}\r\n",
        encode_header_text(&clean(&v.reply_subject()))
    ));
    out.push_str(&format!(
        "Date: {}\r\n",
        super::cleanup::rfc5322_date(chrono::Utc::now())
    ));
    out.push_str(&format!(
        "Message-ID: {}\r\n",
        super::cleanup::new_message_id(id, hostname)
    ));
    if let Some(m) = &v.in_reply_to {
        let m = clean(m);
        out.push_str(&format!("In-Reply-To: {m}\r\nReferences: {m}\r\n"));
    }
    out.push_str("Auto-Submitted: auto-replied (vacation)\r\nMIME-Version: 1.0\r\n");
    if v.mime {
        // The reason is a MIME entity of its own: its header fields follow ours.
        out.push_str(&v.reason.replace("\r\n", "\n").replace('\n', "\r\n"));
    } else {
        out.push_str(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        );
        out.push_str(&v.reason.replace("\r\n", "\n").replace('\n', "\r\n"));
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// The notice a sender gets when one of several recipients' scripts rejected the message
/// (RFC 5429 §2.1: the others got it, so SMTP could not refuse it).
pub fn rejection_notice(
    to: &str,
    recipient: &str,
    reason: &str,
    hostname: &str,
    id: &str,
) -> Vec<u8> {
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\nTo: <{to}>\r\n\
         Subject: Message rejected by {rcpt}\r\nDate: {date}\r\nMessage-ID: {mid}\r\n\
         Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         Your message to {rcpt} was rejected by the recipient's filter:\r\n\r\n  {reason}\r\n",
        host = clean(hostname),
        to = clean(to),
        rcpt = clean(recipient),
        date = super::cleanup::rfc5322_date(chrono::Utc::now()),
        mid = super::cleanup::new_message_id(id, hostname),
        reason = clean(reason),
    )
    .into_bytes()
}

/// RFC 2047 for a non-ASCII subject.
fn encode_header_text(s: &str) -> String {
    if s.is_ascii() {
        return s.to_string();
    }
    use base64::Engine as _;
    format!(
        "=?utf-8?b?{}?=",
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    )
}

/// The record key of a vacation reply: a digest, so the store does not keep the sender's
/// address in the clear next to the handle.
pub fn vacation_key(handle: &str, to: &str) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(handle.as_bytes());
    h.update([0]);
    h.update(to.to_ascii_lowercase().as_bytes());
    hex_string(&h.finalize())
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            mailboxes: vec!["INBOX".into(), "Work".into()],
            personal: HashMap::new(),
            global: HashMap::new(),
            now: chrono::Utc::now().fixed_offset(),
        }
    }

    fn scripts(sources: &[&str]) -> Vec<(String, Result<Arc<Script>, String>)> {
        sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    format!("s{i}"),
                    mailfleet_sieve::compile(s, &Limits::default())
                        .map(Arc::new)
                        .map_err(|e| e.to_string()),
                )
            })
            .collect()
    }

    const MSG: &[u8] =
        b"From: a@example.org\r\nTo: u@example.net\r\nSubject: Report\r\n\r\nbody\r\n";

    fn env() -> mailfleet_sieve::Envelope<'static> {
        mailfleet_sieve::Envelope {
            from: Some("a@example.org"),
            to: "u@example.net",
            auth: None,
        }
    }

    #[test]
    fn no_action_keeps_in_the_default_folder() {
        let plan = combine(
            &scripts(&["# nothing\n"]),
            MSG,
            &env(),
            &facts(),
            &Limits::default(),
            Folder::Junk,
        );
        assert_eq!(plan.placements, vec![(Folder::Junk, Flags::default())]);
    }

    #[test]
    fn fileinto_in_one_script_cancels_the_keep_of_all() {
        let plan = combine(
            &scripts(&["# before\n", "require \"fileinto\"; fileinto \"Work\";"]),
            MSG,
            &env(),
            &facts(),
            &Limits::default(),
            Folder::Inbox,
        );
        assert_eq!(
            plan.placements,
            vec![(
                Folder::Named {
                    name: "Work".into(),
                    create: false
                },
                Flags::default()
            )]
        );
    }

    #[test]
    fn a_broken_script_keeps_in_inbox_and_says_why() {
        let plan = combine(
            &scripts(&["require \"fileinto\"; fileinto \"Work\";", "frobnicate;"]),
            MSG,
            &env(),
            &facts(),
            &Limits::default(),
            Folder::Junk,
        );
        assert_eq!(plan.placements, vec![(Folder::Inbox, Flags::default())]);
        assert!(
            plan.error
                .as_deref()
                .is_some_and(|e| e.contains("frobnicate")),
            "{plan:?}"
        );
    }

    #[test]
    fn reject_stores_nothing() {
        let plan = combine(
            &scripts(&["require \"reject\"; reject \"no thanks\";"]),
            MSG,
            &env(),
            &facts(),
            &Limits::default(),
            Folder::Inbox,
        );
        assert!(plan.placements.is_empty());
        assert_eq!(plan.reject.as_deref(), Some("no thanks"));
    }

    #[test]
    fn flags_of_the_implicit_keep_are_kept() {
        let plan = combine(
            &scripts(&["require \"imap4flags\"; setflag \"\\\\Flagged\";"]),
            MSG,
            &env(),
            &facts(),
            &Limits::default(),
            Folder::Inbox,
        );
        assert_eq!(plan.placements.len(), 1);
        assert!(plan.placements[0].1.contains("\\Flagged"), "{plan:?}");
    }

    #[test]
    fn vacation_replies_are_auto_submitted_and_threaded() {
        let v = Vacation {
            handle: "h".into(),
            period_seconds: 86400,
            subject: None,
            from: None,
            reason: "Away until Monday.".into(),
            mime: false,
            to: "a@example.org".into(),
            in_reply_to: Some("<m1@example.org>".into()),
            original_subject: Some("Report".into()),
        };
        let text =
            String::from_utf8(vacation_reply(&v, "u@example.net", "mx.example.net", "Q1")).unwrap();
        assert!(text.contains("Auto-Submitted: auto-replied"));
        assert!(text.contains("In-Reply-To: <m1@example.org>"));
        assert!(text.contains("Subject: Auto: Report"));
        assert!(text.ends_with("Away until Monday.\r\n"));
        assert_ne!(
            vacation_key("h", "a@example.org"),
            vacation_key("h", "b@example.org")
        );
    }
}
