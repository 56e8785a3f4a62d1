//! An account's Sieve scripts (RFC 5228), kept as keyed records ([`crate::data`]): what
//! ManageSieve (RFC 5804) writes and the delivery pipeline reads.
//!
//! Records of kind [`SCRIPT_KIND`] hold each script's source under its name; the record
//! [`ACTIVE_KIND`]/`active` names the active one (at most one, RFC 5804 §2.8). Global
//! scripts (the administrator's "before" and "after" scripts and the ones `include
//! :global` names) live in the [`crate::DataScope::Global`] scope under the same kinds.
//! The interpreter is not here: this module only stores text; ManageSieve checks a script
//! compiles before it calls [`put`].

use crate::{DataScope, Expect, MetadataStore, StoreError, StoreResult};

pub const SCRIPT_KIND: &str = "sieve-script";
pub const ACTIVE_KIND: &str = "sieve-active";
const ACTIVE_KEY: &str = "active";
/// The most scripts an account may keep (RFC 5804 `MAXSCRIPTS`-style limit).
pub const MAX_SCRIPTS: usize = 32;
/// The longest script name (RFC 5804 §1.6 lets servers limit names).
pub const MAX_NAME_CHARS: usize = 128;

/// One stored script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    pub name: String,
    pub source: String,
    pub active: bool,
}

/// Checks a script name: RFC 5804 §1.6 forbids control characters and a few others.
pub fn validate_name(name: &str) -> StoreResult<()> {
    let bad = name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '/' | '\\'));
    if bad {
        return Err(StoreError::Invalid(format!("script name {name:?}")));
    }
    Ok(())
}

/// The name of the active script, if any.
pub async fn active_name(
    meta: &dyn MetadataStore,
    scope: DataScope,
) -> StoreResult<Option<String>> {
    Ok(meta
        .get_data(scope, ACTIVE_KIND, ACTIVE_KEY)
        .await?
        .and_then(|d| String::from_utf8(d.value).ok())
        .filter(|n| !n.is_empty()))
}

/// The active script's name and source, what delivery runs.
pub async fn active(meta: &dyn MetadataStore, scope: DataScope) -> StoreResult<Option<Script>> {
    let Some(name) = active_name(meta, scope).await? else {
        return Ok(None);
    };
    Ok(get(meta, scope, &name).await?.map(|mut s| {
        s.active = true;
        s
    }))
}

/// Every script of the scope, by name.
pub async fn list(meta: &dyn MetadataStore, scope: DataScope) -> StoreResult<Vec<Script>> {
    let active = active_name(meta, scope).await?;
    Ok(meta
        .list_data(scope, SCRIPT_KIND, MAX_SCRIPTS * 4)
        .await?
        .into_iter()
        .map(|(name, d)| Script {
            active: active.as_deref() == Some(name.as_str()),
            source: String::from_utf8_lossy(&d.value).into_owned(),
            name,
        })
        .collect())
}

pub async fn get(
    meta: &dyn MetadataStore,
    scope: DataScope,
    name: &str,
) -> StoreResult<Option<Script>> {
    validate_name(name)?;
    Ok(meta
        .get_data(scope, SCRIPT_KIND, name)
        .await?
        .map(|d| Script {
            name: name.to_string(),
            source: String::from_utf8_lossy(&d.value).into_owned(),
            active: false,
        }))
}

/// Stores (or replaces) a script. `QuotaExceeded`-like `Invalid` when the account already
/// has [`MAX_SCRIPTS`] others.
pub async fn put(
    meta: &dyn MetadataStore,
    scope: DataScope,
    name: &str,
    source: &str,
) -> StoreResult<()> {
    validate_name(name)?;
    if meta.get_data(scope, SCRIPT_KIND, name).await?.is_none()
        && meta
            .list_data(scope, SCRIPT_KIND, MAX_SCRIPTS + 1)
            .await?
            .len()
            >= MAX_SCRIPTS
    {
        return Err(StoreError::QuotaExceeded(format!(
            "at most {MAX_SCRIPTS} scripts per account"
        )));
    }
    meta.put_data(
        scope,
        SCRIPT_KIND,
        name,
        source.as_bytes().to_vec(),
        None,
        Expect::Any,
    )
    .await?;
    Ok(())
}

/// Deletes a script; `Conflict` for the active one (RFC 5804 §2.10: ACTIVE response code),
/// `NotFound` when there is none.
pub async fn delete(meta: &dyn MetadataStore, scope: DataScope, name: &str) -> StoreResult<()> {
    validate_name(name)?;
    if active_name(meta, scope).await?.as_deref() == Some(name) {
        return Err(StoreError::Conflict(format!("script {name:?} is active")));
    }
    if !meta.delete_data(scope, SCRIPT_KIND, name).await? {
        return Err(StoreError::NotFound(format!("script {name:?}")));
    }
    Ok(())
}

/// Makes `name` the active script, or none with `None`; `NotFound` when there is no such
/// script.
pub async fn set_active(
    meta: &dyn MetadataStore,
    scope: DataScope,
    name: Option<&str>,
) -> StoreResult<()> {
    match name {
        Some(n) => {
            validate_name(n)?;
            if meta.get_data(scope, SCRIPT_KIND, n).await?.is_none() {
                return Err(StoreError::NotFound(format!("script {n:?}")));
            }
            meta.put_data(
                scope,
                ACTIVE_KIND,
                ACTIVE_KEY,
                n.as_bytes().to_vec(),
                None,
                Expect::Any,
            )
            .await?;
        }
        None => {
            meta.delete_data(scope, ACTIVE_KIND, ACTIVE_KEY).await?;
        }
    }
    Ok(())
}

/// Renames a script (keeping it active if it was); `Conflict` when `to` exists, `NotFound`
/// when `from` does not.
pub async fn rename(
    meta: &dyn MetadataStore,
    scope: DataScope,
    from: &str,
    to: &str,
) -> StoreResult<()> {
    validate_name(from)?;
    validate_name(to)?;
    let Some(old) = meta.get_data(scope, SCRIPT_KIND, from).await? else {
        return Err(StoreError::NotFound(format!("script {from:?}")));
    };
    meta.put_data(scope, SCRIPT_KIND, to, old.value, None, Expect::Absent)
        .await?;
    let was_active = active_name(meta, scope).await?.as_deref() == Some(from);
    if was_active {
        set_active(meta, scope, Some(to)).await?;
    }
    meta.delete_data(scope, SCRIPT_KIND, from).await?;
    Ok(())
}
