//! Training the built-in spam filter from what users do: a message moved (or copied)
//! into the Junk mailbox is spam, one moved out of Junk into anything but Trash is ham.
//! This is how the user tells the filter it was wrong, the way Dovecot's antispam and
//! IMAPSieve plugins feed SpamAssassin's and rspamd's learners.
//!
//! Training runs in the background after the command's answer: it reads each message's
//! body and rewrites the user's model (one record, compare-and-set, see
//! [`mailfleet_storage::data::update`]), which must not slow MOVE down. A message
//! trained before as the other class is untrained first, so moving a message into Junk
//! and back out leaves the model as if it had been trained as ham once.

use mailfleet_spam::{bayes, tokenize, Class, SpamConfig};
use mailfleet_storage::{
    AccountId, BlobId, DataScope, Mailbox, MailboxId, SpecialUse, Stores, Uid,
};
use std::sync::Arc;

/// How long the memory of a trained message lasts; past it, a move trains afresh.
const TRAINED_TTL_SECS: i64 = 180 * 24 * 3600;
/// The most messages one command trains (a MOVE of 10,000 messages into Junk is a
/// cleanup, not 10,000 verdicts).
pub const MAX_PER_COMMAND: usize = 500;

/// What a move between `from` and `to` teaches, if anything.
pub fn lesson(from: &Mailbox, to: &Mailbox) -> Option<Class> {
    let junk = |m: &Mailbox| {
        m.special_use == Some(SpecialUse::Junk) || m.name.eq_ignore_ascii_case("Junk")
    };
    let trash = |m: &Mailbox| {
        m.special_use == Some(SpecialUse::Trash) || m.name.eq_ignore_ascii_case("Trash")
    };
    match (junk(from), junk(to)) {
        (false, true) => Some(Class::Spam),
        (true, false) if !trash(to) => Some(Class::Ham),
        _ => None,
    }
}

/// Trains `account`'s model in the background with the messages now at `uids` of
/// `mailbox` (where the move or copy put them).
pub fn train_later(
    stores: Stores,
    cfg: Arc<SpamConfig>,
    account: AccountId,
    mailbox: MailboxId,
    uids: Vec<Uid>,
    class: Class,
) {
    tokio::spawn(async move {
        for uid in uids.into_iter().take(MAX_PER_COMMAND) {
            let blob = match stores.meta.get_message(mailbox, uid).await {
                Ok(Some(m)) => m.blob,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(%account, error = %e, "spam training: message unreadable");
                    continue;
                }
            };
            let message = match stores.blobs.get(&blob).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%account, error = %e, "spam training: message unreadable");
                    continue;
                }
            };
            if let Err(e) = train(&stores, &cfg, account, &blob, &message, class).await {
                tracing::warn!(%account, error = %e, "spam training failed");
            }
        }
    });
}

/// Trains one message as `to` (see the module docs for the untraining rule).
pub async fn train(
    stores: &Stores,
    cfg: &SpamConfig,
    account: AccountId,
    blob: &BlobId,
    message: &[u8],
    to: Class,
) -> mailfleet_storage::StoreResult<()> {
    let scope = DataScope::Account(account);
    let key = blob.to_string();
    let word = |c: Class| match c {
        Class::Spam => b"spam".to_vec(),
        Class::Ham => b"ham".to_vec(),
    };
    let before = stores
        .meta
        .get_data(scope, mailfleet_spam::TRAINED_RECORD_KIND, &key)
        .await?
        .and_then(|d| match d.value.as_slice() {
            b"spam" => Some(Class::Spam),
            b"ham" => Some(Class::Ham),
            _ => None,
        });
    if before == Some(to) {
        return Ok(());
    }
    let tokens = tokenize::tokenize_raw(message, &cfg.tokenizer);
    let max_tokens = cfg.bayes.max_tokens;
    mailfleet_storage::data::update(
        stores.meta.as_ref(),
        scope,
        mailfleet_spam::MODEL_RECORD_KIND,
        mailfleet_spam::MODEL_RECORD_KEY,
        None,
        |current| {
            let mut model = current
                .and_then(|b| bayes::Model::from_bytes(b).ok())
                .unwrap_or_default();
            match before {
                Some(f) => model.retrain(&tokens, f, to),
                None => model.train(&tokens, to),
            }
            model.prune(max_tokens);
            model.to_bytes()
        },
    )
    .await?;
    stores
        .meta
        .put_data(
            scope,
            mailfleet_spam::TRAINED_RECORD_KIND,
            &key,
            word(to),
            Some(mailfleet_storage::data::now() + TRAINED_TTL_SECS),
            mailfleet_storage::Expect::Any,
        )
        .await?;
    tracing::debug!(%account, class = ?to, "spam model trained");
    Ok(())
}
