//! Hosted domains.

use crate::{validate, Actor, Error, Result};
use mailfleet_storage::{Domain, MetadataStore, StoreError};

/// Hosts a new domain (the CLI's `domain add`): fails if it exists.
pub async fn add_domain(meta: &dyn MetadataStore, actor: &Actor, name: &str) -> Result<Domain> {
    let name = validate::domain_name(name)?;
    let mut d = meta.create_domain(&name).await.map_err(|e| match e {
        StoreError::Conflict(_) => Error::Exists(format!("domain {name}")),
        e => e.into(),
    })?;
    if let Some(mark) = actor.mark() {
        meta.set_domain_managed_by(&name, Some(&mark)).await?;
        d.managed_by = Some(mark);
    }
    Ok(d)
}

/// Makes sure `name` is hosted and marked as the actor's; true when anything was written.
/// An unmarked domain (made with the CLI) is adopted; a domain of another owner is refused.
pub async fn ensure_domain(meta: &dyn MetadataStore, actor: &Actor, name: &str) -> Result<bool> {
    let name = validate::domain_name(name)?;
    match meta.get_domain(&name).await? {
        None => {
            add_domain(meta, actor, &name).await?;
            Ok(true)
        }
        Some(d) => {
            actor.check(&format!("domain {name}"), d.managed_by.as_deref())?;
            let mark = actor.mark();
            if d.managed_by != mark {
                meta.set_domain_managed_by(&name, mark.as_deref()).await?;
                return Ok(true);
            }
            Ok(false)
        }
    }
}

/// Stops hosting a domain (it must have no accounts or aliases left).
pub async fn remove_domain(meta: &dyn MetadataStore, actor: &Actor, name: &str) -> Result<()> {
    let name = validate::domain_name(name)?;
    let d = meta
        .get_domain(&name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("domain {name}")))?;
    actor.check(&format!("domain {name}"), d.managed_by.as_deref())?;
    meta.delete_domain(&name).await.map_err(|e| match e {
        StoreError::Conflict(x) => Error::Invalid(x),
        StoreError::NotFound(_) => Error::NotFound(format!("domain {name}")),
        e => e.into(),
    })
}

/// Hands a domain back to the administrator (clears the actor's mark), keeping it hosted:
/// what a `Retain` deletion does. A domain of another owner, or one already gone, is left.
pub async fn release_domain(meta: &dyn MetadataStore, actor: &Actor, name: &str) -> Result<bool> {
    let name = validate::domain_name(name)?;
    match meta.get_domain(&name).await? {
        Some(d) if d.managed_by.is_some() && d.managed_by == actor.mark() => {
            meta.set_domain_managed_by(&name, None).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The quotas the domain's accounts have been given, added up, leaving out `except` (the
/// account whose quota is being changed). `None` when one of them is unlimited.
async fn allocated(
    meta: &dyn MetadataStore,
    domain: &str,
    except: Option<&str>,
) -> Result<Option<u64>> {
    let mut sum: u64 = 0;
    for a in meta.list_accounts(Some(domain)).await? {
        if Some(a.address.as_str()) == except {
            continue;
        }
        if a.quota_bytes == 0 {
            return Ok(None);
        }
        sum = sum.saturating_add(a.quota_bytes);
    }
    Ok(Some(sum))
}

/// Refuses an account quota of `quota_bytes` for `address` when its domain has a quota and
/// the accounts' quotas would add up to more (or the account would be unlimited).
pub(crate) async fn check_account_quota(
    meta: &dyn MetadataStore,
    domain: &Domain,
    address: &str,
    quota_bytes: u64,
) -> Result<()> {
    if domain.quota_bytes == 0 {
        return Ok(());
    }
    let limit = domain.quota_bytes;
    if quota_bytes == 0 {
        return Err(Error::Invalid(format!(
            "{address}: domain {} has a quota of {limit} bytes, so its accounts need a quota",
            domain.name
        )));
    }
    let others = allocated(meta, &domain.name, Some(address))
        .await?
        .unwrap_or(u64::MAX);
    if others.saturating_add(quota_bytes) > limit {
        return Err(Error::Invalid(format!(
            "{address}: a quota of {quota_bytes} bytes would take the accounts of {} to {} \
             bytes, over the domain's quota of {limit}",
            domain.name,
            others.saturating_add(quota_bytes)
        )));
    }
    Ok(())
}

/// `domain quota NAME SIZE`, and the operator's Domain `quota`: the most the quotas of the
/// domain's accounts may add up to (0: no limit). Refused when the accounts already have
/// more (or an unlimited one): lower their quotas first. True when written.
pub async fn set_domain_quota(
    meta: &dyn MetadataStore,
    actor: &Actor,
    name: &str,
    quota_bytes: u64,
) -> Result<bool> {
    let name = validate::domain_name(name)?;
    let d = meta
        .get_domain(&name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("domain {name}")))?;
    actor.check(&format!("domain {name}"), d.managed_by.as_deref())?;
    if d.quota_bytes == quota_bytes {
        return Ok(false);
    }
    if quota_bytes > 0 {
        match allocated(meta, &name, None).await? {
            None => {
                return Err(Error::Invalid(format!(
                    "domain {name}: an account without a quota cannot fit a domain quota; \
                     give every account a quota first"
                )))
            }
            Some(sum) if sum > quota_bytes => {
                return Err(Error::Invalid(format!(
                    "domain {name}: its accounts' quotas add up to {sum} bytes, more than \
                     {quota_bytes}; lower them first"
                )))
            }
            Some(_) => {}
        }
    }
    meta.set_domain_quota(&name, quota_bytes).await?;
    Ok(true)
}

/// The quotas allocated to a domain's accounts, added up (`None`: one is unlimited), for
/// status reports.
pub async fn allocated_quota(meta: &dyn MetadataStore, name: &str) -> Result<Option<u64>> {
    let name = validate::domain_name(name)?;
    allocated(meta, &name, None).await
}
