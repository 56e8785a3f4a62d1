//! Accounts: the CLI's commands and the operator's level-based `ensure_account`.

use crate::{validate, Actor, Error, PasswordInput, Result};
use mailfleet_storage::{Account, AccountSettings, BlobId, MetadataStore, Protocols, StoreError};

/// What the operator wants an account to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountSpec {
    pub address: String,
    /// Required to create the account; `None` leaves an existing password alone.
    pub password: Option<PasswordInput>,
    /// Bytes; 0 is unlimited.
    pub quota_bytes: u64,
    pub display_name: Option<String>,
    pub suspended: bool,
    pub protocols: Protocols,
}

/// The account after an `ensure_account`, and whether anything was written.
#[derive(Clone, Debug)]
pub struct AccountState {
    pub changed: bool,
    pub account: Account,
}

async fn existing(meta: &dyn MetadataStore, address: &str) -> Result<Account> {
    meta.get_account(address)
        .await?
        .ok_or_else(|| Error::NotFound(format!("user {address}")))
}

pub(crate) async fn owned(
    meta: &dyn MetadataStore,
    actor: &Actor,
    address: &str,
) -> Result<Account> {
    let a = existing(meta, address).await?;
    actor.check(&format!("user {address}"), a.settings.managed_by.as_deref())?;
    Ok(a)
}

/// Refuses a quota that does not fit the account's domain quota.
async fn check_quota(
    meta: &dyn MetadataStore,
    addr: &mailfleet_core::Address,
    quota_bytes: u64,
) -> Result<()> {
    let domain = meta
        .get_domain(addr.domain())
        .await?
        .ok_or_else(|| Error::NotFound(format!("domain {}", addr.domain())))?;
    crate::domain::check_account_quota(meta, &domain, &addr.key(), quota_bytes).await
}

/// `user add`: creates the account (and its special mailboxes); fails if it exists.
pub async fn add_account(
    meta: &dyn MetadataStore,
    actor: &Actor,
    address: &str,
    password: &PasswordInput,
    quota_bytes: u64,
) -> Result<Account> {
    let addr = validate::address(address)?;
    let domain = meta
        .get_domain(addr.domain())
        .await?
        .ok_or_else(|| Error::NotFound(format!("domain {}", addr.domain())))?;
    actor.check_within(
        &format!("domain {}", domain.name),
        domain.managed_by.as_deref(),
    )?;
    crate::domain::check_account_quota(meta, &domain, &addr.key(), quota_bytes).await?;
    let hash = password.to_hash(&addr).await?;
    let mut account = meta
        .create_account(&addr.key(), &hash, quota_bytes)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => Error::Exists(format!("user {}", addr.key())),
            e => e.into(),
        })?;
    if let Some(mark) = actor.mark() {
        let settings = AccountSettings {
            managed_by: Some(mark),
            ..account.settings.clone()
        };
        meta.set_account_settings(&account.address, &settings)
            .await?;
        account.settings = settings;
    }
    Ok(account)
}

/// `user passwd`.
pub async fn set_password(
    meta: &dyn MetadataStore,
    actor: &Actor,
    address: &str,
    password: &PasswordInput,
) -> Result<()> {
    let addr = validate::address(address)?;
    owned(meta, actor, &addr.key()).await?;
    let hash = password.to_hash(&addr).await?;
    Ok(meta.set_password_hash(&addr.key(), &hash).await?)
}

/// `user quota`.
pub async fn set_quota(
    meta: &dyn MetadataStore,
    actor: &Actor,
    address: &str,
    quota_bytes: u64,
) -> Result<()> {
    let addr = validate::address(address)?;
    owned(meta, actor, &addr.key()).await?;
    check_quota(meta, &addr, quota_bytes).await?;
    Ok(meta.set_quota(&addr.key(), quota_bytes).await?)
}

/// `user suspend` / `user resume`: true when the flag changed.
pub async fn suspend_account(
    meta: &dyn MetadataStore,
    actor: &Actor,
    address: &str,
    suspended: bool,
) -> Result<bool> {
    let addr = validate::address(address)?;
    let a = owned(meta, actor, &addr.key()).await?;
    if a.settings.suspended == suspended {
        return Ok(false);
    }
    let settings = AccountSettings {
        suspended,
        ..a.settings
    };
    meta.set_account_settings(&a.address, &settings).await?;
    Ok(true)
}

/// `user remove`: deletes the account and all its mail; returns the blobs to sweep.
pub async fn remove_account(
    meta: &dyn MetadataStore,
    actor: &Actor,
    address: &str,
) -> Result<Vec<BlobId>> {
    let addr = validate::address(address)?;
    owned(meta, actor, &addr.key()).await?;
    meta.delete_account(&addr.key()).await.map_err(|e| match e {
        StoreError::NotFound(_) => Error::NotFound(format!("user {}", addr.key())),
        e => e.into(),
    })
}

/// A `Retain` deletion: the account is suspended (no logins, mail still delivered and
/// kept) and handed back to the administrator (its mark cleared). True when written; an
/// account already gone or of another owner is left alone.
pub async fn release_account(
    meta: &dyn MetadataStore,
    actor: &Actor,
    address: &str,
) -> Result<bool> {
    let addr = validate::address(address)?;
    let Some(a) = meta.get_account(&addr.key()).await? else {
        return Ok(false);
    };
    if a.settings.managed_by.is_none() || a.settings.managed_by != actor.mark() {
        return Ok(false);
    }
    let settings = AccountSettings {
        suspended: true,
        managed_by: None,
        ..a.settings
    };
    meta.set_account_settings(&a.address, &settings).await?;
    Ok(true)
}

/// Makes the account what `spec` says, writing only what differs; creates it when missing
/// (a password is then required) and adopts an unmarked one. Refuses an account of another
/// owner.
pub async fn ensure_account(
    meta: &dyn MetadataStore,
    actor: &Actor,
    spec: &AccountSpec,
) -> Result<AccountState> {
    let addr = validate::address(&spec.address)?;
    let display_name = match &spec.display_name {
        Some(n) => validate::display_name(n)?,
        None => None,
    };
    let wanted = AccountSettings {
        display_name,
        suspended: spec.suspended,
        protocols: spec.protocols,
        managed_by: actor.mark(),
    };
    let mut changed = false;
    let current = match meta.get_account(&addr.key()).await? {
        Some(a) => {
            actor.check(
                &format!("user {}", a.address),
                a.settings.managed_by.as_deref(),
            )?;
            a
        }
        None => {
            let password = spec.password.as_ref().ok_or_else(|| {
                Error::Invalid(format!(
                    "user {}: a password is needed to create it",
                    addr.key()
                ))
            })?;
            changed = true;
            add_account(meta, actor, &addr.key(), password, spec.quota_bytes).await?
        }
    };
    if let Some(p) = &spec.password {
        if !changed && !p.matches(&current.password_hash).await? {
            let hash = p.to_hash(&addr).await?;
            meta.set_password_hash(&current.address, &hash).await?;
            changed = true;
        }
    }
    if current.quota_bytes != spec.quota_bytes {
        check_quota(meta, &addr, spec.quota_bytes).await?;
        meta.set_quota(&current.address, spec.quota_bytes).await?;
        changed = true;
    }
    if current.settings != wanted {
        meta.set_account_settings(&current.address, &wanted).await?;
        changed = true;
    }
    let account = if changed {
        existing(meta, &current.address).await?
    } else {
        current
    };
    Ok(AccountState { changed, account })
}
