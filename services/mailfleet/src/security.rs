//! Admin commands for login security and the outbound queue: app passwords, TOTP, the
//! addresses an account may send as, and a read-only view of the queue.

use crate::admin::{account_id, explain, open, parse_address};
use anyhow::{bail, Context};
use clap::Subcommand;
use mailfleet_auth::{app_password, totp};
use mailfleet_core::config::Config;
use mailfleet_storage::{QueueId, TotpSecret};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum AppPasswordCmd {
    /// Create an app password for one device or client; it is printed once.
    Add {
        address: String,
        /// What it is for, e.g. "phone" or "thunderbird" (unique per account).
        name: String,
    },
    /// List an account's app passwords (names and dates, never the passwords).
    List { address: String },
    /// Revoke an app password: logins with it fail from now on.
    Revoke { address: String, name: String },
}

#[derive(Subcommand, Debug)]
pub enum TotpCmd {
    /// Turn on two-factor authentication: prints the otpauth:// URI and the base32 secret
    /// for an authenticator app. From then on IMAP, POP3 and submission logins need an
    /// app password; the main password alone is refused.
    Enable {
        address: String,
        /// Replace an existing secret.
        #[arg(long)]
        force: bool,
    },
    /// Turn two-factor authentication off.
    Disable { address: String },
    /// Print the otpauth:// URI and secret again.
    Show { address: String },
    /// Check a code from the authenticator app (exit status 1 when wrong).
    Verify { address: String, code: String },
}

#[derive(Subcommand, Debug)]
pub enum SendAsCmd {
    /// Let an account send as ADDRESS (`local@domain`, or `@domain` for the whole domain),
    /// beyond its own address and the aliases that deliver to it.
    Add { account: String, address: String },
    /// Take a grant away.
    Remove { account: String, address: String },
    /// List an account's grants.
    List { account: String },
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// List the outbound queue: each message with its recipients and their state.
    List,
    /// Show one queue entry with each recipient's attempts and last error.
    Show { id: i64 },
    /// Make every waiting recipient of an entry due now.
    Retry { id: i64 },
    /// Remove an entry without delivering it or sending a DSN.
    Delete { id: i64 },
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn when(t: Option<i64>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "never".into())
}

pub async fn app_password(
    config: &Config,
    cmd: AppPasswordCmd,
    json_out: bool,
) -> anyhow::Result<()> {
    let stores = open(config).await?;
    match cmd {
        AppPasswordCmd::Add { address, name } => {
            let id = account_id(&stores, &address).await?;
            let (stored, generated) = app_password::create(stores.meta.as_ref(), id, &name, now())
                .await
                .context("app-password add")?;
            if json_out {
                println!(
                    "{}",
                    json!({"name": stored.name, "password": generated.display(),
                           "created_at": stored.created_at})
                );
            } else {
                println!(
                    "app password {:?} for {}: {}",
                    stored.name,
                    parse_address(&address)?.key(),
                    generated.display()
                );
                println!("It is shown only this once; use it in place of the account password.");
            }
        }
        AppPasswordCmd::List { address } => {
            let id = account_id(&stores, &address).await?;
            let list = stores.meta.list_app_passwords(id).await?;
            if json_out {
                let v: Vec<_> = list
                    .iter()
                    .map(|a| json!({"name": a.name, "created_at": a.created_at, "last_used": a.last_used}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("{:<32} {:<20} {:<20}", "NAME", "CREATED", "LAST USED");
                for a in list {
                    println!(
                        "{:<32} {:<20} {:<20}",
                        a.name,
                        when(Some(a.created_at)),
                        when(a.last_used)
                    );
                }
            }
        }
        AppPasswordCmd::Revoke { address, name } => {
            let id = account_id(&stores, &address).await?;
            stores
                .meta
                .revoke_app_password(id, &name)
                .await
                .map_err(|e| explain(e, "app-password revoke"))?;
            println!("app password {name:?} revoked");
        }
    }
    Ok(())
}

pub async fn totp_cmd(config: &Config, cmd: TotpCmd, json_out: bool) -> anyhow::Result<()> {
    let stores = open(config).await?;
    let issuer = config.server.hostname.as_str();
    let print = |address: &str, secret: &[u8]| {
        let uri = totp::otpauth_uri(issuer, address, secret);
        let b32 = totp::secret_base32(secret);
        if json_out {
            println!("{}", json!({"address": address, "secret": b32, "uri": uri}));
        } else {
            println!("secret: {b32}");
            println!("uri: {uri}");
        }
    };
    match cmd {
        TotpCmd::Enable { address, force } => {
            let key = parse_address(&address)?.key();
            let id = account_id(&stores, &address).await?;
            if !force && stores.meta.totp_secret(id).await?.is_some() {
                bail!("totp enable: {key} already has two-factor authentication; use --force to replace the secret");
            }
            let secret = totp::generate_secret();
            stores
                .meta
                .set_totp_secret(
                    id,
                    Some(TotpSecret {
                        secret: secret.clone(),
                        created_at: now(),
                    }),
                )
                .await
                .map_err(|e| explain(e, "totp enable"))?;
            if !json_out {
                println!("two-factor authentication enabled for {key}");
            }
            print(&key, &secret);
            if !json_out {
                println!(
                    "IMAP, POP3 and submission logins now need an app password \
                     (`mailfleet app-password add {key} <device>`)."
                );
            }
        }
        TotpCmd::Disable { address } => {
            let key = parse_address(&address)?.key();
            let id = account_id(&stores, &address).await?;
            stores
                .meta
                .set_totp_secret(id, None)
                .await
                .map_err(|e| explain(e, "totp disable"))?;
            println!("two-factor authentication disabled for {key}");
        }
        TotpCmd::Show { address } => {
            let key = parse_address(&address)?.key();
            let id = account_id(&stores, &address).await?;
            let Some(t) = stores.meta.totp_secret(id).await? else {
                bail!("totp show: {key} does not have two-factor authentication");
            };
            print(&key, &t.secret);
        }
        TotpCmd::Verify { address, code } => {
            let key = parse_address(&address)?.key();
            let id = account_id(&stores, &address).await?;
            let Some(t) = stores.meta.totp_secret(id).await? else {
                bail!("totp verify: {key} does not have two-factor authentication");
            };
            // verify_once: a code is good once, here as at every login.
            if !totp::verify_once(
                stores.meta.as_ref(),
                id,
                &t.secret,
                &code,
                now().max(0) as u64,
            )
            .await?
            {
                bail!("totp verify: the code is not valid now (or was already used)");
            }
            println!("code accepted");
        }
    }
    Ok(())
}

pub async fn send_as(config: &Config, cmd: SendAsCmd, json_out: bool) -> anyhow::Result<()> {
    let stores = open(config).await?;
    let grant_key = |s: &str| -> anyhow::Result<String> {
        match s.strip_prefix('@') {
            Some(domain) => Ok(format!(
                "@{}",
                mailfleet_core::address::normalize_domain(domain)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
            )),
            None => Ok(parse_address(s)?.key()),
        }
    };
    match cmd {
        SendAsCmd::Add { account, address } => {
            let id = account_id(&stores, &account).await?;
            let key = grant_key(&address)?;
            stores
                .meta
                .grant_sender(id, &key)
                .await
                .map_err(|e| explain(e, "send-as add"))?;
            println!("{} may now send as {key}", parse_address(&account)?.key());
        }
        SendAsCmd::Remove { account, address } => {
            let id = account_id(&stores, &account).await?;
            let key = grant_key(&address)?;
            stores
                .meta
                .revoke_sender(id, &key)
                .await
                .map_err(|e| explain(e, "send-as remove"))?;
            println!(
                "{} may no longer send as {key}",
                parse_address(&account)?.key()
            );
        }
        SendAsCmd::List { account } => {
            let id = account_id(&stores, &account).await?;
            let grants = stores.meta.sender_grants(id).await?;
            if json_out {
                println!("{}", json!(grants));
            } else {
                for g in grants {
                    println!("{g}");
                }
            }
        }
    }
    Ok(())
}

pub async fn queue(config: &Config, cmd: QueueCmd, json_out: bool) -> anyhow::Result<()> {
    let stores = open(config).await?;
    match cmd {
        QueueCmd::List => {
            let mut after = QueueId(0);
            let mut entries = Vec::new();
            loop {
                let page = stores.meta.list_outbound(after, 500).await?;
                let Some(last) = page.last() else { break };
                after = last.id;
                entries.extend(page);
            }
            if json_out {
                let v: Vec<_> = entries
                    .iter()
                    .map(|m| {
                        json!({
                            "id": m.id.0, "sender": m.sender, "size": m.size,
                            "blob": m.blob.as_str(), "created_at": m.created_at,
                            "recipients": m.recipients.iter().map(|r| json!({
                                "address": r.address, "state": r.state.as_str(),
                                "attempts": r.attempts, "next_attempt": r.next_attempt,
                                "last_error": r.last_error,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!(
                    "{:>8} {:<20} {:>10} {:<32} RECIPIENTS",
                    "ID", "QUEUED", "SIZE", "SENDER"
                );
                let counts = crate::outbound::counts_line(&entries);
                for m in entries {
                    let rcpts: Vec<String> = m
                        .recipients
                        .iter()
                        .map(|r| {
                            format!(
                                "{} ({}, {} attempts)",
                                r.address,
                                r.state.as_str(),
                                r.attempts
                            )
                        })
                        .collect();
                    let sender = if m.sender.is_empty() { "<>" } else { &m.sender };
                    println!(
                        "{:>8} {:<20} {:>10} {:<32} {}",
                        m.id.0,
                        when(Some(m.created_at)),
                        m.size,
                        sender,
                        rcpts.join(", ")
                    );
                }
                println!("{counts}");
            }
        }
        QueueCmd::Show { id } => crate::outbound::queue_show(config, id, json_out).await?,
        QueueCmd::Retry { id } => crate::outbound::queue_retry(config, id).await?,
        QueueCmd::Delete { id } => crate::outbound::queue_delete(config, id).await?,
    }
    Ok(())
}
