//! DKIM keys of a domain, kept in the shared metadata store (mailfleet_delivery::dkim):
//! generated on first use, rotated by age. Rotation publishes the new selectors first; the
//! lifecycle promotes them to signing once DNS has had time to serve them.

use crate::Result;
use mailfleet_delivery::dkim::{self, Lifecycle};
use mailfleet_storage::{DkimKeyState, MetadataStore};
use std::time::Duration;

/// What the domain wants of its keys.
#[derive(Clone, Copy, Debug)]
pub struct DkimPolicy {
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

/// Generates the domain's keys when it has none, starts a rotation when the newest key is
/// older than `rotate_after` (and no rotation is already waiting to sign), and moves keys
/// along their lifecycle. `now` is Unix seconds.
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
        dkim::generate(meta, &domain, now).await?;
        changed = true;
    } else if let Some(age) = policy.rotate_after {
        let pending = keys.iter().any(|k| k.state == DkimKeyState::Published);
        let newest = keys.iter().map(|k| k.created_at).max().unwrap_or(now);
        if !pending && newest + age.as_secs() as i64 <= now {
            dkim::rotate(meta, &domain, now).await?;
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
