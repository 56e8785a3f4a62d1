//! App passwords given from outside (the operator reads them from Kubernetes Secrets), kept
//! by name: the same rules as the ones a user generates (`mailfleet_auth::app_password`).

use crate::{validate, Actor, Error, Result};
use mailfleet_auth::app_password::{self, CreateError, ImportError};
use mailfleet_storage::{MetadataStore, StoreError};

fn import_error(address: &str, name: &str, e: ImportError) -> Error {
    match e {
        ImportError::Create(CreateError::Store(s)) => Error::Store(s),
        ImportError::Create(CreateError::Hash(h)) => Error::Password(h),
        other => Error::Invalid(format!("{address}: app password {name:?}: {other}")),
    }
}

/// Makes the account's app password called `name` be `password`: nothing is written when
/// it already is, otherwise the old one (if any) is revoked and the new one stored. True
/// when written. `now` is Unix seconds.
pub async fn ensure_app_password(
    meta: &dyn MetadataStore,
    actor: &Actor,
    address: &str,
    name: &str,
    password: &str,
    now: i64,
) -> Result<bool> {
    let addr = validate::address(address)?;
    let account = crate::account::owned(meta, actor, &addr.key()).await?;
    let existing = meta
        .list_app_passwords(account.id)
        .await?
        .into_iter()
        .find(|a| a.name == name.trim());
    if let Some(old) = &existing {
        if app_password::is_same(old, password).await {
            return Ok(false);
        }
        match meta.revoke_app_password(account.id, &old.name).await {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    app_password::import(meta, account.id, name, password, now)
        .await
        .map_err(|e| import_error(&addr.key(), name, e))?;
    Ok(true)
}

/// Revokes the account's app password called `name`; true when there was one.
pub async fn revoke_app_password(
    meta: &dyn MetadataStore,
    actor: &Actor,
    address: &str,
    name: &str,
) -> Result<bool> {
    let addr = validate::address(address)?;
    let account = crate::account::owned(meta, actor, &addr.key()).await?;
    match meta.revoke_app_password(account.id, name).await {
        Ok(()) => Ok(true),
        Err(StoreError::NotFound(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
