//! `mailfleet public-folder ...`: the public folders of a domain, which IMAP users of that
//! domain see under `Shared/` (RFC 2342's shared namespace) with the rights their ACLs
//! (RFC 4314) give them.
//!
//! The folders belong to the domain's reserved account `public@<domain>`
//! (`mailfleet_imap::commands::acl::PUBLIC_LOCAL_PART`), created here on first use with a
//! password hash no password matches, so nobody logs in as it: the folders are owned by no
//! user. Mail addressed to `public@<domain>` lands in its INBOX, which is shared like any
//! other folder of it (or not at all).

use crate::admin::{explain, open};
use anyhow::{bail, Context};
use clap::Subcommand;
use mailfleet_core::config::Config;
use mailfleet_imap::commands::acl::{Rights, PUBLIC_LOCAL_PART};
use mailfleet_storage::{Account, Stores};
use serde_json::json;

/// Stored as the public account's password hash: not a PHC string, so no password ever
/// verifies against it (`credentials::verify_password`).
const NO_LOGIN_HASH: &str = "!public-folders";
/// The longest public folder name accepted (the IMAP limit on mailbox names).
const MAX_NAME: usize = 255;

#[derive(Subcommand, Debug)]
pub enum PublicFolderCmd {
    /// Create a public folder (`Shared/NAME` for the domain's users; nobody has rights on
    /// it until `public-folder acl` grants some).
    Create { domain: String, name: String },
    /// Set the rights of IDENTIFIER (`anyone`, `authenticated` or an address) on a public
    /// folder, replacing its previous ones: RFC 4314 letters `lrwstipekxa`; `none` (or
    /// an empty string) removes the entry.
    Acl {
        domain: String,
        name: String,
        identifier: String,
        rights: String,
    },
    /// List a domain's public folders and their ACLs.
    List { domain: String },
}

fn public_address(domain: &str) -> anyhow::Result<String> {
    let domain =
        mailfleet_core::address::normalize_domain(domain).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(format!("{PUBLIC_LOCAL_PART}@{domain}"))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || name.starts_with('/')
        || name.ends_with('/')
        || name.contains("//")
        || name.chars().any(|c| c.is_control() || c == '*' || c == '%')
    {
        bail!("'{name}' is not a valid folder name");
    }
    Ok(())
}

/// The public account of `domain`, created when `create` and missing.
async fn public_account(
    stores: &Stores,
    domain: &str,
    create: bool,
) -> anyhow::Result<Option<Account>> {
    let address = public_address(domain)?;
    if let Some(a) = stores.meta.get_account(&address).await? {
        return Ok(Some(a));
    }
    if !create {
        return Ok(None);
    }
    let Some(d) = stores
        .meta
        .get_domain(address.split('@').nth(1).unwrap_or(""))
        .await?
    else {
        bail!("unknown domain {domain}; add it first with `mailfleet domain add {domain}`");
    };
    let account = stores
        .meta
        .create_account(&address, NO_LOGIN_HASH, 0)
        .await
        .map_err(|e| explain(e, "public-folder create"))?;
    eprintln!("created the public folders account {address} of {}", d.name);
    Ok(Some(account))
}

pub async fn public_folder(
    config: &Config,
    cmd: PublicFolderCmd,
    json_out: bool,
) -> anyhow::Result<()> {
    let stores = open(config).await?;
    match cmd {
        PublicFolderCmd::Create { domain, name } => {
            check_name(&name)?;
            let Some(acct) = public_account(&stores, &domain, true).await? else {
                bail!("public-folder create: no public account");
            };
            stores
                .meta
                .create_mailbox(acct.id, &name, None)
                .await
                .map_err(|e| explain(e, "public-folder create"))?;
            println!("public folder Shared/{name} created for {domain}");
        }
        PublicFolderCmd::Acl {
            domain,
            name,
            identifier,
            rights,
        } => {
            let acct = public_account(&stores, &domain, false)
                .await?
                .with_context(|| format!("{domain} has no public folders"))?;
            let mb = stores
                .meta
                .get_mailbox(acct.id, &name)
                .await?
                .with_context(|| format!("public folder {name} does not exist"))?;
            let id = identifier.to_ascii_lowercase();
            let known = id == "anyone"
                || id == "authenticated"
                || stores.meta.get_account(&id).await?.is_some();
            if !known || id == acct.address {
                bail!("'{identifier}' is not anyone, authenticated or an account's address");
            }
            let letters = if rights.is_empty() || rights.eq_ignore_ascii_case("none") {
                String::new()
            } else {
                Rights::parse(&rights)
                    .with_context(|| {
                        format!("'{rights}' holds a letter that is no right (lrwstipekxa)")
                    })?
                    .letters()
            };
            stores
                .meta
                .set_acl(acct.id, mb.id, &id, &letters)
                .await
                .map_err(|e| explain(e, "public-folder acl"))?;
            if letters.is_empty() {
                println!("Shared/{name}: {id} removed");
            } else {
                println!("Shared/{name}: {id} {letters}");
            }
        }
        PublicFolderCmd::List { domain } => {
            let Some(acct) = public_account(&stores, &domain, false).await? else {
                if json_out {
                    println!("[]");
                }
                return Ok(());
            };
            let mut rows = Vec::new();
            for mb in stores.meta.list_mailboxes(acct.id).await? {
                let acl = stores.meta.get_acl(mb.id).await?;
                rows.push((mb.name, acl));
            }
            if json_out {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(n, acl)| {
                        let acl: serde_json::Map<String, serde_json::Value> = acl
                            .iter()
                            .map(|e| (e.identifier.clone(), json!(e.rights)))
                            .collect();
                        json!({"name": n, "acl": acl})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for (n, acl) in rows {
                    let entries: Vec<String> = acl
                        .iter()
                        .map(|e| format!("{} {}", e.identifier, e.rights))
                        .collect();
                    println!("Shared/{n}  {}", entries.join(", "));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert_eq!(
            public_address("Example.TEST").expect("domain"),
            "public@example.test"
        );
        for ok in ["News", "News/2024", "Ä"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/x", "x/", "a//b", "a*", "a%b", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
