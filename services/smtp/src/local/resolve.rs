//! Recipient resolution: an address to the accounts that receive its mail.
//!
//! Order, as in Postfix's virtual(5) and Dovecot: the exact account, an exact alias, the
//! address without its `+tag` (account, then alias), then the domain's catch-all (`@domain`).
//! Aliases may point at accounts or other aliases, up to [`MAX_ALIAS_DEPTH`] levels; each
//! account appears once however many paths lead to it.
//!
//! A catch-all may point at a whole domain (`@alias.example` → `@example.com`, a domain
//! alias): `local@alias.example` is then resolved again as `local@example.com`, at most
//! [`MAX_DOMAIN_HOPS`] times.

use mailfleet_core::Address;
use mailfleet_storage::{Account, MetadataStore, StoreResult};

/// Alias chains longer than this are treated as loops.
pub const MAX_ALIAS_DEPTH: usize = 5;
/// Most accounts one address may expand to.
pub const MAX_EXPANSION: usize = 1000;
/// Domain aliases followed in a row (an alias of an alias); more is treated as a loop.
pub const MAX_DOMAIN_HOPS: usize = 2;

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
    resolve_hops(meta, addr, 0).await
}

fn resolve_hops<'a>(
    meta: &'a dyn MetadataStore,
    addr: &'a Address,
    hops: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = StoreResult<Resolution>> + Send + 'a>> {
    Box::pin(async move {
        if meta.get_domain(addr.domain()).await?.is_none() {
            return Ok(Resolution::NotLocal);
        }
        let mut candidates = vec![addr.key()];
        if let Some((base, _tag)) = addr.without_subaddress() {
            candidates.push(base.key());
        }
        for key in candidates {
            let found = expand(meta, &key).await?;
            if !found.is_empty() {
                return Ok(Resolution::Local(found));
            }
        }
        // The catch-all: addresses, or whole domains (domain aliases).
        let catch_all = format!("@{}", addr.domain());
        let targets = meta.alias_targets(&catch_all).await?;
        let mut found: Vec<Recipient> = Vec::new();
        for domain in targets.iter().filter_map(|t| t.strip_prefix('@')) {
            if hops >= MAX_DOMAIN_HOPS {
                tracing::warn!(alias = %catch_all, target = %domain, "domain aliases nested too deep; skipped");
                continue;
            }
            let Ok(rewritten) = Address::parse(&format!("{}@{domain}", addr.local())) else {
                continue;
            };
            if let Resolution::Local(rs) = resolve_hops(meta, &rewritten, hops + 1).await? {
                for r in rs {
                    if !found.iter().any(|f| f.account.id == r.account.id) {
                        found.push(r);
                    }
                }
            }
        }
        // An address the other domain knows wins over an address catch-all beside it.
        if found.is_empty() && targets.iter().any(|t| !t.starts_with('@')) {
            found = expand(meta, &catch_all).await?;
        }
        if found.is_empty() {
            return Ok(Resolution::UnknownUser);
        }
        Ok(Resolution::Local(found))
    })
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
                // A whole domain: only a catch-all's, resolved with the local part above.
                if target.starts_with('@') {
                    continue;
                }
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
