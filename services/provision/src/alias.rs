//! Aliases and catch-alls. An alias belongs to its source's domain: its owner mark decides.

use crate::{validate, Actor, Error, Result};
use mailfleet_storage::{MetadataStore, StoreError};

async fn check_domain(meta: &dyn MetadataStore, actor: &Actor, source: &str) -> Result<()> {
    let domain = source.rsplit_once('@').map(|(_, d)| d).unwrap_or(source);
    let d = meta
        .get_domain(domain)
        .await?
        .ok_or_else(|| Error::NotFound(format!("domain {domain}")))?;
    // The catch-all is the domain's own; other aliases may be set by any operator resource.
    if source.starts_with('@') {
        actor.check(&format!("domain {domain}"), d.managed_by.as_deref())
    } else {
        actor.check_within(&format!("domain {domain}"), d.managed_by.as_deref())
    }
}

/// `alias add SOURCE TARGET`.
pub async fn add_alias(
    meta: &dyn MetadataStore,
    actor: &Actor,
    source: &str,
    target: &str,
) -> Result<()> {
    let source = validate::alias_source(source)?;
    let target = validate::address(target)?.key();
    check_domain(meta, actor, &source).await?;
    meta.create_alias(&source, &target)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(x) => Error::Exists(x),
            e => e.into(),
        })
}

/// `alias remove SOURCE [TARGET]`.
pub async fn remove_alias(
    meta: &dyn MetadataStore,
    actor: &Actor,
    source: &str,
    target: Option<&str>,
) -> Result<()> {
    let source = validate::alias_source(source)?;
    let target = target
        .map(|t| validate::address(t).map(|a| a.key()))
        .transpose()?;
    check_domain(meta, actor, &source).await?;
    meta.delete_alias(&source, target.as_deref())
        .await
        .map_err(|e| match e {
            StoreError::NotFound(x) => Error::NotFound(x),
            e => e.into(),
        })
}

/// Makes the aliases pointing at `target` exactly `sources` (catch-alls excepted): adds the
/// missing ones, removes the others. True when anything was written.
pub async fn ensure_aliases_of(
    meta: &dyn MetadataStore,
    actor: &Actor,
    target: &str,
    sources: &[String],
) -> Result<bool> {
    let target = validate::address(target)?.key();
    let mut wanted = Vec::new();
    for s in sources {
        let s = validate::alias_source(s)?;
        if s.starts_with('@') {
            return Err(Error::Invalid(format!(
                "{s}: a catch-all is set on the domain, not as a user's alias"
            )));
        }
        if !wanted.contains(&s) {
            wanted.push(s);
        }
    }
    let have: Vec<String> = meta
        .list_aliases(None)
        .await?
        .into_iter()
        .filter(|a| a.target == target && !a.source.starts_with('@'))
        .map(|a| a.source)
        .collect();
    let mut changed = false;
    for s in wanted.iter().filter(|s| !have.contains(s)) {
        check_domain(meta, actor, s).await?;
        meta.create_alias(s, &target).await.map_err(|e| match e {
            StoreError::Conflict(x) => Error::Exists(x),
            e => e.into(),
        })?;
        changed = true;
    }
    for s in have.iter().filter(|s| !wanted.contains(s)) {
        check_domain(meta, actor, s).await?;
        match meta.delete_alias(s, Some(&target)).await {
            Ok(()) | Err(StoreError::NotFound(_)) => changed = true,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(changed)
}

/// Makes the domain's catch-all `target` (or none). True when anything was written.
pub async fn ensure_catch_all(
    meta: &dyn MetadataStore,
    actor: &Actor,
    domain: &str,
    target: Option<&str>,
) -> Result<bool> {
    let source = format!("@{}", validate::domain_name(domain)?);
    let target = target
        .map(|t| validate::address(t).map(|a| a.key()))
        .transpose()?;
    check_domain(meta, actor, &source).await?;
    let have = meta.alias_targets(&source).await?;
    let wanted: Vec<String> = target.into_iter().collect();
    if have == wanted {
        return Ok(false);
    }
    if !have.is_empty() {
        match meta.delete_alias(&source, None).await {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for t in &wanted {
        meta.create_alias(&source, t).await?;
    }
    Ok(true)
}
