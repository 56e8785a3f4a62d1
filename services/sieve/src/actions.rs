//! What a script asks the delivery pipeline to do. Nothing here performs
//! I/O: the SMTP pipeline stores, forwards, rejects or answers.

/// One delivery action, in the order the script produced it (after
/// deduplication, RFC 5228 §2.10.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Store in the user's INBOX (explicit `keep` or the implicit keep).
    Keep { flags: Vec<String> },
    /// Store in `mailbox`, the name exactly as the script wrote it
    /// ("INBOX.Junk" and "Junk" are different names). `create` is RFC 5490
    /// `:create`: make the mailbox if it does not exist.
    FileInto {
        mailbox: String,
        flags: Vec<String>,
        create: bool,
    },
    /// Forward to `address`. `copy` (RFC 3894) only tells that the script
    /// used `:copy`: the implicit keep is already resolved in the list.
    Redirect { address: String, copy: bool },
    /// Refuse the message: `ereject` (RFC 5429) asks for an SMTP-level
    /// refusal where possible, `reject` for an MDN (or SMTP refusal while
    /// the transaction is open, which is what an SMTP pipeline does).
    Reject { reason: String, ereject: bool },
    /// Drop the message silently (explicit `discard`; only listed when no
    /// other action delivers the message).
    Discard,
    /// Send an automatic reply (RFC 5230); only returned when the rules of
    /// §4.5 allow a response, see [`Vacation`].
    Vacation(Vacation),
}

/// An autoreply that the rules in the crate allow. The caller still has to
/// do the `:days` suppression: answer only if no reply with the same
/// [`Vacation::handle`] went to [`Vacation::to`] within
/// [`Vacation::period_seconds`]; the store key is `(user, handle, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacation {
    /// `:handle`, or a stable digest of `:subject`, `:from`, `:mime` and the
    /// reason (RFC 5230 §4.2), so editing the reason re-arms the reply.
    pub handle: String,
    /// `:days` × 86400 or `:seconds` (RFC 6131); default 7 days; never
    /// below [`crate::Limits::min_vacation_seconds`] (1 day by default).
    pub period_seconds: u64,
    /// The `:subject`, or `None` for the default "Auto: " + original subject
    /// (see [`Vacation::reply_subject`]).
    pub subject: Option<String>,
    /// `:from`, if given.
    pub from: Option<String>,
    /// The reason: text, or a MIME entity (headers and body) when `mime`.
    pub reason: String,
    pub mime: bool,
    /// Whom to answer: the envelope sender.
    pub to: String,
    /// The original Message-ID, for In-Reply-To/References.
    pub in_reply_to: Option<String>,
    /// The original Subject (decoded), for the default reply subject.
    pub original_subject: Option<String>,
}

impl Vacation {
    /// The Subject of the reply: `:subject`, or "Auto: " + the original.
    pub fn reply_subject(&self) -> String {
        match (&self.subject, &self.original_subject) {
            (Some(s), _) => s.clone(),
            (None, Some(o)) => format!("Auto: {o}"),
            (None, None) => "Automated reply".to_string(),
        }
    }
}

/// An editheader change (RFC 5293), in script order. Apply with
/// [`crate::apply_edits`], which re-does exactly what the script saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Add `name: value` at the top, or at the bottom with `:last`. The value
    /// is already RFC 2047-encoded if it was not ASCII.
    Add {
        name: String,
        value: String,
        last: bool,
    },
    /// Delete the fields called `name` (case-insensitive) whose 1-based
    /// occurrence numbers among fields of that name, counted when the
    /// command ran, are in `occurrences`.
    Delete {
        name: String,
        occurrences: Vec<usize>,
    },
}

/// The result of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub actions: Vec<Action>,
    pub header_edits: Vec<HeaderEdit>,
    /// Whether the actions include the implicit keep (RFC 5228 §2.10.2)
    /// rather than an explicit `keep`.
    pub implicit_keep: bool,
    /// Why a vacation action was suppressed (list mail, null sender, ...),
    /// for logs; `None` if none was asked for or it was returned.
    pub vacation_suppressed: Option<String>,
}

/// Applies header edits to a raw message: the header is rewritten, the body
/// kept byte for byte. Line ends in the header become CRLF.
pub fn apply_edits(raw: &[u8], edits: &[HeaderEdit]) -> Vec<u8> {
    if edits.is_empty() {
        return raw.to_vec();
    }
    let (mut fields, body) = crate::message::split(raw);
    for e in edits {
        apply_one(&mut fields, e);
    }
    crate::message::serialize(&fields, body)
}

pub(crate) fn apply_one(fields: &mut Vec<crate::message::Field>, e: &HeaderEdit) {
    match e {
        HeaderEdit::Add { name, value, last } => {
            let f = crate::message::Field {
                name: name.clone(),
                raw: format!(" {value}"),
            };
            if *last {
                fields.push(f);
            } else {
                fields.insert(0, f);
            }
        }
        HeaderEdit::Delete { name, occurrences } => {
            let mut n = 0;
            fields.retain(|f| {
                if f.name.eq_ignore_ascii_case(name) {
                    n += 1;
                    !occurrences.contains(&n)
                } else {
                    true
                }
            });
        }
    }
}

/// Flags as RFC 5232 stores them: space-separated words, deduplicated
/// case-insensitively, first spelling kept.
pub(crate) fn flag_words(lists: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lists {
        for w in l.split_whitespace() {
            if !out.iter().any(|f| f.eq_ignore_ascii_case(w)) {
                out.push(w.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply() {
        let raw = b"Received: a\r\nX-A: 1\r\nSubject: s\r\nX-A: 2\r\n\r\nbody";
        let out = apply_edits(
            raw,
            &[
                HeaderEdit::Add {
                    name: "X-New".into(),
                    value: "v".into(),
                    last: false,
                },
                HeaderEdit::Delete {
                    name: "x-a".into(),
                    occurrences: vec![2],
                },
                HeaderEdit::Add {
                    name: "X-End".into(),
                    value: "e".into(),
                    last: true,
                },
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-New: v\r\nReceived: a\r\nX-A: 1\r\nSubject: s\r\nX-End: e\r\n\r\nbody"
        );
    }

    #[test]
    fn flags() {
        assert_eq!(
            flag_words(&["\\Seen  a".into(), "\\seen b".into()]),
            vec!["\\Seen", "a", "b"]
        );
    }
}
