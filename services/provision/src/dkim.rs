//! DKIM keys of a domain, kept in the shared metadata store (mailfleet_delivery::dkim):
//! generated on first use, rotated by age. Rotation publishes the new selectors first; the
//! lifecycle promotes them to signing once DNS has had time to serve them.

use crate::Result;
use mailfleet_delivery::dkim::{self, KeyChoice, Lifecycle};
use mailfleet_storage::{DkimKeyState, MetadataStore};
use std::time::Duration;

/// What the domain wants of its keys.
#[derive(Clone, Debug)]
pub struct DkimPolicy {
    /// The algorithms and selector; a change starts a rotation to keys that match.
    pub choice: KeyChoice,
    /// Rotate when the newest keys are older than this; `None`: never.
    pub rotate_after: Option<Duration>,
    pub lifecycle: Lifecycle,
}

/// The domain's keys after `ensure_dkim`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimStatus {
    pub changed: bool,
    /// `(selector, state, TXT value)` of every key that belongs in DNS.
    pub records: Vec<(String, DkimKeyState, String)>,
}

/// Generates the domain's keys when it has none, starts a rotation when the newest keys
/// are older than `rotate_after` or are not what `choice` asks for (and no rotation is
/// already waiting to sign), and moves keys along their lifecycle. `now` is Unix seconds.
pub async fn ensure_dkim(
    meta: &dyn MetadataStore,
    domain: &str,
    policy: DkimPolicy,
    now: i64,
) -> Result<DkimStatus> {
    let domain = crate::validate::domain_name(domain)?;
    let keys = meta.dkim_keys(&domain).await?;
    let mut changed = false;
    if keys.is_empty() {
        dkim::generate_with(meta, &domain, &policy.choice, now).await?;
        changed = true;
    } else {
        let newest_set = dkim::newest_set(&keys);
        let newest = newest_set.iter().map(|k| k.created_at).max().unwrap_or(now);
        let stale = policy
            .rotate_after
            .is_some_and(|age| newest + age.as_secs() as i64 <= now);
        // A set made in this same second cannot be told apart from the one to replace by
        // its selector's date: wait a minute rather than make two.
        let fresh = newest / 60 == now / 60;
        if (stale || !policy.choice.matches(&newest_set)) && !fresh {
            dkim::rotate_with(meta, &domain, &policy.choice, now).await?;
            changed = true;
        }
    }
    if !dkim::advance(meta, &domain, now, policy.lifecycle)
        .await?
        .is_empty()
    {
        changed = true;
    }
    Ok(DkimStatus {
        changed,
        records: dkim::dns_records(meta, &domain).await?,
    })
}
