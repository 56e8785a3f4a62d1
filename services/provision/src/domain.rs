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
