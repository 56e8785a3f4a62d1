//! Recipient resolution: an address to the accounts that receive its mail.
//!
//! Order, as in Postfix's virtual(5) and Dovecot: the exact account, an exact alias, the
//! address without its `+tag` (account, then alias), then the domain's catch-all (`@domain`).
//! Aliases may point at accounts or other aliases, up to [`MAX_ALIAS_DEPTH`] levels; each
//! account appears once however many paths lead to it.

use mailfleet_core::Address;
use mailfleet_storage::{Account, MetadataStore, StoreResult};

/// Alias chains longer than this are treated as loops.
pub const MAX_ALIAS_DEPTH: usize = 5;
/// Most accounts one address may expand to.
pub const MAX_EXPANSION: usize = 1000;

/// A resolved local recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub account: Account,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The domain is hosted and the address delivers to these accounts.
    Local(Vec<Recipient>),
    /// The domain is hosted but nothing matches the address.
    UnknownUser,
    /// The domain is not hosted here.
    NotLocal,
}

pub async fn resolve(meta: &dyn MetadataStore, addr: &Address) -> StoreResult<Resolution> {
    if meta.get_domain(addr.domain()).await?.is_none() {
        return Ok(Resolution::NotLocal);
    }
    let mut candidates = vec![addr.key()];
    if let Some((base, _tag)) = addr.without_subaddress() {
        candidates.push(base.key());
    }
    candidates.push(format!("@{}", addr.domain()));
    for key in candidates {
        let found = expand(meta, &key).await?;
        if !found.is_empty() {
            return Ok(Resolution::Local(found));
        }
    }
    Ok(Resolution::UnknownUser)
}

/// Expands one directory key (account or alias) into accounts, breadth first.
async fn expand(meta: &dyn MetadataStore, key: &str) -> StoreResult<Vec<Recipient>> {
    let mut out: Vec<Recipient> = Vec::new();
    let mut frontier = vec![key.to_string()];
    let mut seen = std::collections::HashSet::new();
    for _depth in 0..=MAX_ALIAS_DEPTH {
        let mut next = Vec::new();
        for k in frontier {
            if !seen.insert(k.clone()) {
                continue;
            }
            if !k.starts_with('@') {
                if let Some(account) = meta.get_account(&k).await? {
                    if !out.iter().any(|r| r.account.id == account.id) {
                        out.push(Recipient { account });
                    }
                    continue;
                }
            }
            for target in meta.alias_targets(&k).await? {
                // Remote targets need outbound delivery, which is not part of this service
                // yet; the admin CLI refuses to create them, so any found here predate that.
                if meta.get_domain(domain_part(&target)).await?.is_none() {
                    tracing::warn!(alias = %k, %target, "alias target is not a hosted domain; skipped");
                    continue;
                }
                next.push(target);
            }
            if out.len() >= MAX_EXPANSION {
                return Ok(out);
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    Ok(out)
}

fn domain_part(addr: &str) -> &str {
    addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}
