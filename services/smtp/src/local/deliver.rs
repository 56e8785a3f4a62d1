//! Local delivery: one blob, one metadata transaction, then change notifications.
//!
//! The blob is written (and fsynced) first and the metadata committed second, so a crash in
//! between leaves at worst an unreferenced blob (never a message without its body). The
//! function returns only after both are durable; only then may SMTP say `250`.

use super::resolve::Recipient;
use bytes::Bytes;
use mailfleet_storage::coord::MailboxEvent;
use mailfleet_storage::metadata::QuotaPolicy;
use mailfleet_storage::{Appended, Flags, MessageText, NewMessage, StoreError, Stores};
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("quota exceeded for {0}")]
    QuotaExceeded(String),
    #[error("recipient {0} has no INBOX")]
    NoInbox(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a delivered message landed, per recipient, in input order.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub blob: mailfleet_storage::BlobId,
    pub appended: Vec<Appended>,
}

/// Which mailbox of each recipient a message goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Folder {
    Inbox,
    /// The recipient's `\Junk` mailbox (RFC 6154), else one named `Junk`, else INBOX:
    /// a user who deleted Junk still gets the message.
    Junk,
    /// A mailbox named by the user's Sieve script (`fileinto`). When it does not exist the
    /// message goes to INBOX (RFC 5228 §4.1 lets the server file into INBOX instead of
    /// losing it), unless `create` (RFC 5490 `:create`) asks for it to be made.
    Named {
        name: String,
        create: bool,
    },
}

/// One copy of a message for one recipient: where it goes and the flags it starts with
/// (Sieve's imap4flags). A recipient may have several (`fileinto` twice).
#[derive(Clone, Debug)]
pub struct Placement {
    pub recipient: Recipient,
    pub folder: Folder,
    pub flags: Flags,
}

impl Placement {
    /// Every recipient into the same folder with no flags.
    pub fn all(recipients: &[Recipient], folder: Folder) -> Vec<Placement> {
        recipients
            .iter()
            .map(|r| Placement {
                recipient: r.clone(),
                folder: folder.clone(),
                flags: Flags::default(),
            })
            .collect()
    }
}

/// Delivers `message` to the `folder` of every recipient. With `enforce_quota`, the whole
/// delivery fails if any recipient would go over quota.
pub async fn deliver(
    stores: &Stores,
    recipients: &[Recipient],
    message: Bytes,
    internal_date: i64,
    enforce_quota: bool,
    trace: Option<&str>,
    folder: Folder,
) -> Result<Delivered, DeliveryError> {
    let placements = Placement::all(recipients, folder);
    deliver_placed(
        stores,
        &placements,
        message,
        internal_date,
        enforce_quota,
        trace,
    )
    .await
}

/// The mailbox a placement names, resolved in the recipient's account.
async fn mailbox_for(
    stores: &Stores,
    p: &Placement,
) -> Result<mailfleet_storage::MailboxId, DeliveryError> {
    let account = p.recipient.account.id;
    let found = match &p.folder {
        Folder::Inbox => None,
        Folder::Junk => {
            let boxes = stores.meta.list_mailboxes(account).await?;
            boxes
                .iter()
                .find(|m| m.special_use == Some(mailfleet_storage::SpecialUse::Junk))
                .or_else(|| boxes.iter().find(|m| m.name.eq_ignore_ascii_case("Junk")))
                .map(|m| m.id)
        }
        Folder::Named { name, create } => {
            let name = if name.eq_ignore_ascii_case("INBOX") {
                "INBOX"
            } else {
                name.as_str()
            };
            match stores.meta.get_mailbox(account, name).await? {
                Some(m) if !m.noselect => Some(m.id),
                Some(_) => None,
                None if *create => match stores.meta.create_mailbox(account, name, None).await {
                    Ok(m) => Some(m.id),
                    // Another delivery made it a moment ago.
                    Err(StoreError::Conflict(_)) => {
                        stores.meta.get_mailbox(account, name).await?.map(|m| m.id)
                    }
                    Err(e) => {
                        tracing::warn!(mailbox = %name, error = %e, "fileinto :create failed; INBOX instead");
                        None
                    }
                },
                None => None,
            }
        }
    };
    match found {
        Some(id) => Ok(id),
        None => Ok(stores
            .meta
            .get_mailbox(account, "INBOX")
            .await?
            .ok_or_else(|| DeliveryError::NoInbox(p.recipient.account.address.clone()))?
            .id),
    }
}

/// Delivers `message` as placed: one blob, one metadata transaction for every copy.
pub async fn deliver_placed(
    stores: &Stores,
    placements: &[Placement],
    message: Bytes,
    internal_date: i64,
    enforce_quota: bool,
    trace: Option<&str>,
) -> Result<Delivered, DeliveryError> {
    let size = message.len() as u64;
    // The mailboxes, the parse and the blob are independent: done at once, a delivery
    // waits for the slowest of them instead of their sum.
    let targets = async {
        let mut batch = Vec::with_capacity(placements.len());
        for p in placements {
            let target = mailbox_for(stores, p).await?;
            // Two placements landing in one mailbox (fileinto "INBOX" and keep) make one copy.
            if !batch
                .iter()
                .any(|(a, m, _): &(mailfleet_storage::AccountId, _, _)| {
                    *a == p.recipient.account.id && *m == target
                })
            {
                batch.push((p.recipient.account.id, target, p.flags.clone()));
            }
        }
        Ok::<_, DeliveryError>(batch)
    };
    // Parse once at delivery so IMAP/JMAP never re-parse to answer header-level fetches.
    // Parsing is CPU work proportional to the message: keep it off the async workers.
    // The full-text index's texts are extracted in the same pass.
    let for_parse = message.clone();
    // The thread keys (THREADID, RFC 8474) are read in the same pass.
    let analysis = tracing::debug_span!("mime.analyze", otel.name = "analyze message");
    let analyzed = async {
        tokio::task::spawn_blocking(move || {
            let ix = mailfleet_mime::search_text::index_pieces(&for_parse);
            (
                mailfleet_mime::analyze(&for_parse).to_bytes(),
                MessageText::from_pairs(ix.pieces, ix.complete),
                mailfleet_storage::MessageRefs::from_message(&for_parse),
            )
        })
        .instrument(analysis)
        .await
        .map_err(|e| StoreError::Unavailable(format!("message analysis failed: {e}")))
    };
    let (batch, analyzed, blob) = tokio::join!(targets, analyzed, stores.put_blob(message));
    let (batch, (summary, text, refs), blob) = (batch?, analyzed?, blob?);
    let messages = batch
        .iter()
        .map(|(account, mailbox, flags)| NewMessage {
            account: *account,
            mailbox: *mailbox,
            blob: blob.clone(),
            size,
            internal_date,
            flags: flags.clone(),
            summary: Some(summary.clone()),
            refs: refs.clone(),
            trace: trace.map(str::to_string),
        })
        .collect();
    let policy = if enforce_quota {
        QuotaPolicy::Enforce
    } else {
        QuotaPolicy::Allow
    };
    let appended = match stores.meta.append(messages, policy).await {
        Ok(a) => a,
        Err(StoreError::QuotaExceeded(who)) => return Err(DeliveryError::QuotaExceeded(who)),
        Err(e) => return Err(e.into()),
    };
    for a in &appended {
        // Written in the background (`mailfleet_storage::indexer`): the message is durable
        // now, and until its texts are written it is pending in the index, which searches
        // look at directly.
        stores
            .indexer
            .submit(a.mailbox, vec![(a.uid, text.clone())])
            .await;
    }
    for (a, (account, _, _)) in appended.iter().zip(&batch) {
        // Notification is best effort: sessions also re-check on their own schedule, and a
        // coordinator outage must not turn a durable delivery into a failure.
        if let Err(e) = stores
            .coord
            .publish(MailboxEvent::Changed {
                account: *account,
                mailbox: a.mailbox,
                modseq: a.modseq,
            })
            .await
        {
            tracing::warn!(error = %e, "change notification failed");
        }
    }
    Ok(Delivered { blob, appended })
}
