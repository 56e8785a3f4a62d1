//! Provisioning rules, once: the admin CLI and the Kubernetes operator (and later the REST
//! API) create and change domains, accounts, aliases and DKIM keys only through this crate,
//! so validation, the password policy, DKIM key generation and the ownership marks cannot
//! drift apart between them.
//!
//! Two styles of call:
//! - *commands* for the CLI (`add_account`, `set_quota`, `remove_domain`, ...): they do one
//!   thing and fail when it cannot be done (an account that already exists);
//! - *`ensure_*`* for the operator: level-based, they compare what the store holds with
//!   what is wanted and write only the difference, returning whether anything changed, so a
//!   reconcile that finds nothing to do writes nothing (no store write, no status write).
//!
//! **Marks.** A domain or account whose `managed_by` is set belongs to that owner (the
//! operator writes `operator:<namespace>/<name>` of the resource): every call takes the
//! [`Actor`] making it and refuses, with [`Error::Managed`] naming the owner, to change
//! what belongs to someone else. Reads are never refused.
//!
//! # Layout
//! - `validate.rs`: domain names, addresses, alias sources, quotas
//! - `password.rs`: plain passwords (policy, argon2id) or existing argon2 PHC hashes
//! - `owner.rs`: [`Actor`] and the mark check
//! - `domain.rs`, `account.rs`, `alias.rs`: the store changes
//! - `tests.rs`: the rules against a real embedded store
//! - `app_password.rs`: app passwords given from outside (the operator's Secrets)
//! - `dkim.rs`: DKIM keys through `mailfleet_delivery::dkim`, rotation by age

#![forbid(unsafe_code)]

mod account;
mod alias;
mod app_password;
mod dkim;
mod domain;
mod error;
mod owner;
mod password;
pub mod validate;

pub use account::{
    add_account, ensure_account, release_account, remove_account, set_password, set_quota,
    suspend_account, AccountSpec, AccountState,
};
pub use alias::{
    add_alias, domain_aliases_of, ensure_aliases_of, ensure_catch_all, ensure_domain_aliases,
    remove_alias,
};
pub use app_password::{ensure_app_password, revoke_app_password};
pub use dkim::{ensure_dkim, DkimPolicy, DkimStatus};
pub use domain::{
    add_domain, allocated_quota, ensure_domain, release_domain, remove_domain, set_domain_quota,
};
pub use error::{Error, Result};
pub use owner::Actor;
pub use password::PasswordInput;

#[cfg(test)]
mod tests;
