//! The admin CLI: domains, users, aliases, and read access to mailboxes and messages.
//!
//! Commands work directly on the configured store, so they run beside a live server (the
//! embedded SQLite store serialises them with the server's writes). Every change goes
//! through `mailfleet_provision` as [`Actor::Admin`]: the same validation and password
//! policy as the operator, and a refusal to change what a Kubernetes resource manages.

use anyhow::{bail, Context};
use clap::Subcommand;
use mailfleet_core::config::Config;
use mailfleet_core::Address;
use mailfleet_provision::{Actor, PasswordInput};
use mailfleet_storage::{StoreError, Stores, Uid};
use serde_json::json;
use std::io::{Read, Write};

#[derive(Subcommand, Debug)]
pub enum DomainCmd {
    /// Host a new domain.
    Add { name: String },
    /// List hosted domains.
    List,
    /// Stop hosting a domain (it must have no users or aliases left).
    Remove { name: String },
    /// Set the most the quotas of the domain's users may add up to (`100G`; `0`: no
    /// limit). With a limit every user of the domain needs a quota of its own.
    Quota { name: String, quota: String },
    /// Make ALIAS a domain alias of NAME: mail to `local@ALIAS` goes to `local@NAME` (the
    /// alias domain is hosted if it is not yet).
    AddAlias { name: String, alias: String },
    /// Stop ALIAS being a domain alias of NAME (it stays hosted).
    RemoveAlias { name: String, alias: String },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create an account (and its INBOX, Sent, Drafts, Junk, Trash and Archive).
    Add {
        address: String,
        #[command(flatten)]
        password: PasswordArg,
        /// Storage quota, e.g. `500M`, `2G`; 0 or absent means unlimited.
        #[arg(long)]
        quota: Option<String>,
    },
    /// List accounts, optionally of one domain.
    List { domain: Option<String> },
    /// Delete an account and all its mail.
    Remove { address: String },
    /// Set a new password.
    Passwd {
        address: String,
        #[command(flatten)]
        password: PasswordArg,
    },
    /// Set the storage quota (`0` for unlimited).
    Quota { address: String, quota: String },
    /// Refuse the account's logins on every protocol; its mail is still delivered.
    Suspend { address: String },
    /// Allow the account's logins again.
    Resume { address: String },
}

#[derive(clap::Args, Debug)]
pub struct PasswordArg {
    /// The password (visible in the process list: prefer --password-stdin).
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand, Debug)]
pub enum AliasCmd {
    /// Deliver mail for SOURCE to TARGET. SOURCE `@example.com` is the domain's catch-all.
    Add { source: String, target: String },
    /// List aliases, optionally of one domain.
    List { domain: Option<String> },
    /// Remove one target of an alias, or the whole alias.
    Remove {
        source: String,
        target: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MailboxCmd {
    /// List an account's mailboxes with their UID state and message counts.
    List { address: String },
}

#[derive(Subcommand, Debug)]
pub enum MessageCmd {
    /// List the messages of a mailbox.
    List {
        address: String,
        #[arg(long, default_value = "INBOX")]
        mailbox: String,
    },
    /// Write a message's stored bytes to standard output.
    Get {
        address: String,
        uid: u32,
        #[arg(long, default_value = "INBOX")]
        mailbox: String,
    },
}

pub(crate) async fn open(config: &Config) -> anyhow::Result<Stores> {
    crate::serve::open_stores(config).await
}

/// Turns store errors into messages an administrator can act on.
pub(crate) fn explain(e: StoreError, what: &str) -> anyhow::Error {
    match e {
        StoreError::Conflict(x) => anyhow::anyhow!("{what}: {x} already exists or is in use"),
        StoreError::NotFound(x) => anyhow::anyhow!("{what}: {x} does not exist"),
        other => anyhow::anyhow!("{what}: {other}"),
    }
}

/// Turns provisioning errors into the CLI's messages.
fn explain_provision(e: mailfleet_provision::Error, what: &str) -> anyhow::Error {
    use mailfleet_provision::Error as E;
    match e {
        E::Store(e) => explain(e, what),
        E::Exists(x) => anyhow::anyhow!("{what}: {x} already exists or is in use"),
        other => anyhow::anyhow!("{what}: {other}"),
    }
}

/// `1024`, `500K`, `20M`, `2G`, `1T` (binary multiples).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => bail!("bad size '{s}': use a number with K, M, G or T"),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad size '{s}'"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size '{s}' is too large"))
}

fn read_password(arg: &PasswordArg) -> anyhow::Result<String> {
    if let Some(p) = &arg.password {
        return Ok(p.clone());
    }
    if arg.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .take(4096)
            .read_to_string(&mut line)
            .context("reading the password from standard input")?;
        return Ok(line.lines().next().unwrap_or("").to_string());
    }
    bail!("give the password with --password-stdin (or --password)")
}

/// A password typed at the CLI: plain, checked against the policy when it is set.
fn typed_password(arg: &PasswordArg) -> anyhow::Result<PasswordInput> {
    Ok(PasswordInput::Plain(read_password(arg)?))
}

pub(crate) fn parse_address(s: &str) -> anyhow::Result<Address> {
    Address::parse(s).map_err(|e| anyhow::anyhow!("'{s}' is not a valid address: {e}"))
}

pub async fn domain(config: &Config, cmd: DomainCmd, json_out: bool) -> anyhow::Result<()> {
    let stores = open(config).await?;
    match cmd {
        DomainCmd::Add { name } => {
            let name = mailfleet_core::address::normalize_domain(&name)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            mailfleet_provision::add_domain(stores.meta.as_ref(), &Actor::Admin, &name)
                .await
                .map_err(|e| explain_provision(e, "domain add"))?;
            println!("domain {name} added");
        }
        DomainCmd::List => {
            let domains = stores.meta.list_domains().await?;
            if json_out {
                let v: Vec<_> = domains
                    .iter()
                    .map(|d| {
                        json!({"name": d.name, "quota_bytes": d.quota_bytes,
                               "managed_by": d.managed_by})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for d in domains {
                    match (d.quota_bytes, &d.managed_by) {
                        (0, None) => println!("{}", d.name),
                        (q, owner) => {
                            let mut line = d.name.clone();
                            if q > 0 {
                                line.push_str(&format!("\tquota {q}"));
                            }
                            if let Some(o) = owner {
                                line.push_str(&format!("\tmanaged by {o}"));
                            }
                            println!("{line}");
                        }
                    }
                }
            }
        }
        DomainCmd::Quota { name, quota } => {
            let bytes = mailfleet_provision::validate::quota(&quota)
                .map_err(|e| explain_provision(e, "domain quota"))?;
            mailfleet_provision::set_domain_quota(
                stores.meta.as_ref(),
                &Actor::Admin,
                &name,
                bytes,
            )
            .await
            .map_err(|e| explain_provision(e, "domain quota"))?;
            println!("domain {name}: quota {bytes} bytes");
        }
        DomainCmd::AddAlias { name, alias } => {
            let meta = stores.meta.as_ref();
            let alias_name = mailfleet_provision::validate::domain_name(&alias)
                .map_err(|e| explain_provision(e, "domain add-alias"))?;
            if meta.get_domain(&alias_name).await?.is_none() {
                mailfleet_provision::add_domain(meta, &Actor::Admin, &alias_name)
                    .await
                    .map_err(|e| explain_provision(e, "domain add-alias"))?;
            }
            mailfleet_provision::add_alias(
                meta,
                &Actor::Admin,
                &format!("@{alias_name}"),
                &format!("@{name}"),
            )
            .await
            .map_err(|e| explain_provision(e, "domain add-alias"))?;
            println!("{alias_name} is now a domain alias of {name}");
        }
        DomainCmd::RemoveAlias { name, alias } => {
            mailfleet_provision::remove_alias(
                stores.meta.as_ref(),
                &Actor::Admin,
                &format!("@{alias}"),
                Some(&format!("@{name}")),
            )
            .await
            .map_err(|e| explain_provision(e, "domain remove-alias"))?;
            println!("{alias} is no longer a domain alias of {name}");
        }
        DomainCmd::Remove { name } => {
            mailfleet_provision::remove_domain(stores.meta.as_ref(), &Actor::Admin, &name)
                .await
                .map_err(|e| explain_provision(e, "domain remove"))?;
            println!("domain {name} removed");
        }
    }
    Ok(())
}

pub async fn user(config: &Config, cmd: UserCmd, json_out: bool) -> anyhow::Result<()> {
    let stores = open(config).await?;
    match cmd {
        UserCmd::Add {
            address,
            password,
            quota,
        } => {
            let addr = parse_address(&address)?;
            if stores.meta.get_domain(addr.domain()).await?.is_none() {
                bail!(
                    "user add: unknown domain {}; add it first with `mailfleet domain add {}`",
                    addr.domain(),
                    addr.domain()
                );
            }
            let quota = quota.as_deref().map(parse_size).transpose()?.unwrap_or(0);
            let password = typed_password(&password)?;
            mailfleet_provision::add_account(
                stores.meta.as_ref(),
                &Actor::Admin,
                &addr.key(),
                &password,
                quota,
            )
            .await
            .map_err(|e| explain_provision(e, "user add"))?;
            println!("user {} added", addr.key());
        }
        UserCmd::List { domain } => {
            let accounts = stores.meta.list_accounts(domain.as_deref()).await?;
            if json_out {
                let v: Vec<_> = accounts
                    .iter()
                    .map(|a| {
                        json!({"address": a.address, "quota_bytes": a.quota_bytes,
                               "used_bytes": a.used_bytes, "messages": a.message_count,
                               "suspended": a.settings.suspended,
                               "managed_by": a.settings.managed_by})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<40} {:>12} {:>12} {:>8}",
                    "ADDRESS", "USED", "QUOTA", "MESSAGES"
                );
                for a in accounts {
                    let quota = if a.quota_bytes == 0 {
                        "unlimited".to_string()
                    } else {
                        a.quota_bytes.to_string()
                    };
                    println!(
                        "{:<40} {:>12} {:>12} {:>8}",
                        a.address, a.used_bytes, quota, a.message_count
                    );
                }
            }
        }
        UserCmd::Remove { address } => {
            let addr = parse_address(&address)?;
            let orphaned = mailfleet_provision::remove_account(
                stores.meta.as_ref(),
                &Actor::Admin,
                &addr.key(),
            )
            .await
            .map_err(|e| explain_provision(e, "user remove"))?;
            println!(
                "user {} removed ({} message bodies will be deleted by the blob sweep)",
                addr.key(),
                orphaned.len()
            );
        }
        UserCmd::Passwd { address, password } => {
            let addr = parse_address(&address)?;
            let password = typed_password(&password)?;
            mailfleet_provision::set_password(
                stores.meta.as_ref(),
                &Actor::Admin,
                &addr.key(),
                &password,
            )
            .await
            .map_err(|e| explain_provision(e, "user passwd"))?;
            println!("password of {} changed", addr.key());
        }
        UserCmd::Quota { address, quota } => {
            let addr = parse_address(&address)?;
            let bytes = parse_size(&quota)?;
            mailfleet_provision::set_quota(stores.meta.as_ref(), &Actor::Admin, &addr.key(), bytes)
                .await
                .map_err(|e| explain_provision(e, "user quota"))?;
            println!("quota of {} set to {bytes} bytes", addr.key());
        }
        UserCmd::Suspend { address } => suspend(&stores, &address, true).await?,
        UserCmd::Resume { address } => suspend(&stores, &address, false).await?,
    }
    Ok(())
}

async fn suspend(stores: &Stores, address: &str, suspended: bool) -> anyhow::Result<()> {
    let addr = parse_address(address)?;
    let what = if suspended {
        "user suspend"
    } else {
        "user resume"
    };
    let changed = mailfleet_provision::suspend_account(
        stores.meta.as_ref(),
        &Actor::Admin,
        &addr.key(),
        suspended,
    )
    .await
    .map_err(|e| explain_provision(e, what))?;
    let state = if suspended { "suspended" } else { "active" };
    if changed {
        println!("user {} is {state}", addr.key());
    } else {
        println!("user {} was already {state}", addr.key());
    }
    Ok(())
}

pub async fn alias(config: &Config, cmd: AliasCmd, json_out: bool) -> anyhow::Result<()> {
    let stores = open(config).await?;
    match cmd {
        AliasCmd::Add { source, target } => {
            let source_key = match source.strip_prefix('@') {
                Some(domain) => format!(
                    "@{}",
                    mailfleet_core::address::normalize_domain(domain)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                ),
                None => parse_address(&source)?.key(),
            };
            let target = parse_address(&target)?;
            if stores.meta.get_domain(target.domain()).await?.is_none() {
                bail!(
                    "alias add: target domain {} is not hosted here; forwarding to remote \
                     domains needs outbound delivery, which this version does not have",
                    target.domain()
                );
            }
            mailfleet_provision::add_alias(
                stores.meta.as_ref(),
                &Actor::Admin,
                &source_key,
                &target.key(),
            )
            .await
            .map_err(|e| explain_provision(e, "alias add"))?;
            println!("alias {source_key} -> {} added", target.key());
        }
        AliasCmd::List { domain } => {
            let aliases = stores.meta.list_aliases(domain.as_deref()).await?;
            if json_out {
                let v: Vec<_> = aliases
                    .iter()
                    .map(|a| json!({"source": a.source, "target": a.target}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for a in aliases {
                    println!("{} -> {}", a.source, a.target);
                }
            }
        }
        AliasCmd::Remove { source, target } => {
            mailfleet_provision::remove_alias(
                stores.meta.as_ref(),
                &Actor::Admin,
                &source,
                target.as_deref(),
            )
            .await
            .map_err(|e| explain_provision(e, "alias remove"))?;
            println!("alias {source} removed");
        }
    }
    Ok(())
}

pub(crate) async fn account_id(
    stores: &Stores,
    address: &str,
) -> anyhow::Result<mailfleet_storage::AccountId> {
    let addr = parse_address(address)?;
    Ok(stores
        .meta
        .get_account(&addr.key())
        .await?
        .with_context(|| format!("user {} does not exist", addr.key()))?
        .id)
}

pub async fn mailbox(config: &Config, cmd: MailboxCmd, json_out: bool) -> anyhow::Result<()> {
    let stores = open(config).await?;
    match cmd {
        MailboxCmd::List { address } => {
            let id = account_id(&stores, &address).await?;
            let boxes = stores.meta.list_mailboxes(id).await?;
            if json_out {
                let v: Vec<_> = boxes
                    .iter()
                    .map(|b| {
                        json!({"name": b.name, "special_use": b.special_use.map(|s| s.as_str()),
                               "uid_validity": b.uid_validity, "uid_next": b.uid_next.0,
                               "highest_modseq": b.highest_modseq.0, "messages": b.message_count})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<24} {:>12} {:>10} {:>10}",
                    "MAILBOX", "UIDVALIDITY", "UIDNEXT", "MESSAGES"
                );
                for b in boxes {
                    println!(
                        "{:<24} {:>12} {:>10} {:>10}",
                        b.name, b.uid_validity, b.uid_next.0, b.message_count
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn message(config: &Config, cmd: MessageCmd, json_out: bool) -> anyhow::Result<()> {
    let stores = open(config).await?;
    match cmd {
        MessageCmd::List { address, mailbox } => {
            let id = account_id(&stores, &address).await?;
            let mb = stores
                .meta
                .get_mailbox(id, &mailbox)
                .await?
                .with_context(|| format!("mailbox {mailbox} does not exist"))?;
            let mut after = Uid(0);
            let mut rows = Vec::new();
            loop {
                let page = stores.meta.list_messages(mb.id, after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = last.uid;
                rows.extend(page);
            }
            if json_out {
                let v: Vec<_> = rows
                    .iter()
                    .map(|m| {
                        json!({"uid": m.uid.0, "modseq": m.modseq.0, "size": m.size,
                               "blob": m.blob.as_str(), "internal_date": m.internal_date,
                               "flags": m.flags.iter().collect::<Vec<_>>()})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("{:>8} {:>10} {:>10} BLOB", "UID", "MODSEQ", "SIZE");
                for m in rows {
                    println!(
                        "{:>8} {:>10} {:>10} {}",
                        m.uid.0, m.modseq.0, m.size, m.blob
                    );
                }
            }
        }
        MessageCmd::Get {
            address,
            uid,
            mailbox,
        } => {
            let id = account_id(&stores, &address).await?;
            let mb = stores
                .meta
                .get_mailbox(id, &mailbox)
                .await?
                .with_context(|| format!("mailbox {mailbox} does not exist"))?;
            let meta = stores
                .meta
                .get_message(mb.id, Uid(uid))
                .await?
                .with_context(|| format!("no message with UID {uid} in {mailbox}"))?;
            let bytes = stores.blobs.get(&meta.blob).await?;
            std::io::stdout().write_all(&bytes)?;
        }
    }
    Ok(())
}

/// Messages reindexed per store call.
const REINDEX_BATCH: usize = 200;

/// `mailfleet reindex [ADDRESS]`: indexes for full-text search the messages that are not
/// (those stored before the index existed, or whose indexing failed at delivery), of one
/// account or of all. Safe while the server runs: each message is read, its texts
/// extracted and recorded, one batch at a time; running it again does only what is left.
/// With `all`, every message is indexed again, replacing its entries: after an upgrade
/// that indexes more of a message (the attachments' text), for messages indexed before.
pub async fn reindex(
    config: &Config,
    address: Option<String>,
    all: bool,
    json_out: bool,
) -> anyhow::Result<()> {
    let stores = open(config).await?;
    let accounts = match address {
        Some(a) => vec![account_id(&stores, &a).await?],
        None => stores
            .meta
            .list_accounts(None)
            .await?
            .into_iter()
            .map(|a| a.id)
            .collect(),
    };
    let (mut indexed, mut failed) = (0u64, 0u64);
    for account in accounts {
        for mb in stores.meta.list_mailboxes(account).await? {
            let mut after = Uid(0);
            loop {
                let page: Vec<Uid> = if all {
                    stores
                        .meta
                        .list_messages(mb.id, after, REINDEX_BATCH)
                        .await?
                        .into_iter()
                        .map(|m| m.uid)
                        .collect()
                } else {
                    stores
                        .meta
                        .unindexed_messages(mb.id, after, REINDEX_BATCH)
                        .await?
                };
                let Some(last) = page.last() else { break };
                after = *last;
                let mut batch = Vec::with_capacity(page.len());
                for uid in page {
                    let Some(meta) = stores.meta.get_message(mb.id, uid).await? else {
                        continue; // expunged meanwhile
                    };
                    let bytes = match stores.blobs.get(&meta.blob).await {
                        Ok(b) => b,
                        Err(e) => {
                            eprintln!("mailbox {} UID {}: {e}", mb.name, uid.0);
                            failed += 1;
                            continue;
                        }
                    };
                    let text = tokio::task::spawn_blocking(move || {
                        let ix = mailfleet_mime::search_text::index_pieces(&bytes);
                        mailfleet_storage::MessageText::from_pairs(ix.pieces, ix.complete)
                    })
                    .await?;
                    batch.push((uid, text));
                }
                indexed += batch.len() as u64;
                stores.meta.index_text(mb.id, batch).await?;
            }
        }
    }
    if json_out {
        println!("{}", json!({"indexed": indexed, "failed": failed}));
    } else {
        println!("indexed {indexed} messages, {failed} failed");
    }
    if failed > 0 {
        anyhow::bail!("{failed} messages could not be read; they stay unindexed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").expect("n"), 1024);
        assert_eq!(parse_size("2K").expect("k"), 2048);
        assert_eq!(parse_size("1g").expect("g"), 1 << 30);
        assert!(parse_size("abc").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
