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

/// An alias target in the store's form: an address, or, for a domain's catch-all source
/// only, `@other-domain` (a domain alias: `local@source` is delivered as `local@other`, as
/// Postfix's `@alias.example @example.com` virtual alias does). The other domain must be
/// hosted, and must not be the source domain itself.
async fn alias_target(meta: &dyn MetadataStore, source: &str, target: &str) -> Result<String> {
    match (source.strip_prefix('@'), target.strip_prefix('@')) {
        (Some(from), Some(to)) => {
            let to = validate::domain_name(to)?;
            if to == from {
                return Err(Error::Invalid(format!(
                    "{source} cannot be an alias of itself"
                )));
            }
            if meta.get_domain(&to).await?.is_none() {
                return Err(Error::NotFound(format!("domain {to}")));
            }
            Ok(format!("@{to}"))
        }
        (None, Some(_)) => Err(Error::Invalid(format!(
            "{target}: only a catch-all (@domain) may point at a whole domain"
        ))),
        _ => Ok(validate::address(target)?.key()),
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
    let target = alias_target(meta, &source, target).await?;
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
    let target = match target {
        Some(t) => Some(alias_target(meta, &source, t).await?),
        None => None,
    };
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

/// The domains that are aliases of `domain` (their catch-all points at `@domain`).
pub async fn domain_aliases_of(meta: &dyn MetadataStore, domain: &str) -> Result<Vec<String>> {
    let target = format!("@{}", validate::domain_name(domain)?);
    let mut out: Vec<String> = meta
        .list_aliases(None)
        .await?
        .into_iter()
        .filter(|a| a.target == target && a.source.starts_with('@'))
        .map(|a| a.source[1..].to_string())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Makes the domain aliases of `domain` exactly `aliases`: each is hosted, owned by the
/// actor like `domain`, and its catch-all is `@domain` (so `local@alias` is delivered as
/// `local@domain`). An alias no longer wanted loses that catch-all and stops being hosted
/// (or, when accounts were added to it meanwhile, is handed back to the administrator).
/// True when anything was written.
pub async fn ensure_domain_aliases(
    meta: &dyn MetadataStore,
    actor: &Actor,
    domain: &str,
    aliases: &[String],
) -> Result<bool> {
    let domain = validate::domain_name(domain)?;
    let target = format!("@{domain}");
    let mut wanted = Vec::new();
    for a in aliases {
        let a = validate::domain_name(a)?;
        if a == domain {
            return Err(Error::Invalid(format!("{a} cannot be an alias of itself")));
        }
        if !wanted.contains(&a) {
            wanted.push(a);
        }
    }
    let have = domain_aliases_of(meta, &domain).await?;
    let mut changed = false;
    for a in &wanted {
        changed |= crate::domain::ensure_domain(meta, actor, a).await?;
        let source = format!("@{a}");
        let current = meta.alias_targets(&source).await?;
        if current != [target.clone()] {
            if !current.is_empty() {
                match meta.delete_alias(&source, None).await {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            meta.create_alias(&source, &target).await?;
            changed = true;
        }
    }
    for a in have.iter().filter(|a| !wanted.contains(a)) {
        let Some(d) = meta.get_domain(a).await? else {
            continue;
        };
        actor.check(&format!("domain {a}"), d.managed_by.as_deref())?;
        match meta.delete_alias(&format!("@{a}"), Some(&target)).await {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match crate::domain::remove_domain(meta, actor, a).await {
            Ok(()) | Err(Error::NotFound(_)) => {}
            // Accounts or aliases of its own were added: keep it, for the administrator.
            Err(Error::Invalid(_)) => {
                crate::domain::release_domain(meta, actor, a).await?;
            }
            Err(e) => return Err(e),
        }
        changed = true;
    }
    Ok(changed)
}
