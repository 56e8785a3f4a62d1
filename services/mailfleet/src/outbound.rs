//! Admin commands for outbound mail: DKIM keys, the DNS records a domain needs, and the
//! queue commands beyond `list` (show, retry now, delete).

use crate::admin::open;
use anyhow::{bail, Context};
use clap::Subcommand;
use mailfleet_core::config::Config;
use mailfleet_storage::{OutboundMessage, QueueId, RecipientState};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum DkimCmd {
    /// Generate the domain's first DKIM keys (RSA-2048 and Ed25519); they sign at once.
    Generate { domain: String },
    /// Add a new key pair to publish in DNS; it signs once `delivery.dkim_publish_delay_hours`
    /// have passed (or after `dkim activate`), and the old pair is retired.
    Rotate { domain: String },
    /// Make the newest published keys sign now (after checking DNS answers with them).
    Activate { domain: String },
    /// List the domain's keys and their states.
    List { domain: String },
}

#[derive(Subcommand, Debug)]
pub enum DnsCmd {
    /// Print the MX, SPF, DKIM, DMARC, MTA-STS and TLS-RPT records a domain needs.
    Records { domain: String },
}

fn normalize(domain: &str) -> anyhow::Result<String> {
    mailfleet_core::address::normalize_domain(domain)
        .map_err(|e| anyhow::anyhow!("{domain}: not a valid domain: {e}"))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn print_records(
    domain: &str,
    records: &[(String, mailfleet_storage::DkimKeyState, String)],
    json_out: bool,
) {
    if json_out {
        let v: Vec<_> = records
            .iter()
            .map(|(s, state, txt)| {
                json!({"selector": s, "state": state.as_str(),
                       "name": format!("{s}._domainkey.{domain}"), "txt": txt})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        println!("Publish (see `mailfleet dns records {domain}`):");
        for (s, state, txt) in records {
            println!(
                "{s}._domainkey.{domain}. TXT \"{txt}\"   ; {}",
                state.as_str()
            );
        }
    }
}

pub async fn dkim(config: &Config, cmd: DkimCmd, json_out: bool) -> anyhow::Result<()> {
    use mailfleet_delivery::dkim;
    let stores = open(config).await?;
    let meta = stores.meta.as_ref();
    match cmd {
        DkimCmd::Generate { domain } => {
            let domain = normalize(&domain)?;
            // Keys an earlier version wrote as files are taken over rather than replaced.
            if dkim::import_files(meta, &config.server.data_dir, &domain, now()).await? {
                bail!(
                    "DKIM keys for {domain} existed as files under {} and were imported; \
                     use `mailfleet dkim rotate {domain}` for new ones",
                    dkim::key_dir(&config.server.data_dir, &domain).display()
                );
            }
            dkim::generate(meta, &domain, now()).await?;
            if !json_out {
                println!("DKIM keys for {domain} stored; they sign from now on.");
            }
            print_records(&domain, &dkim::dns_records(meta, &domain).await?, json_out);
        }
        DkimCmd::Rotate { domain } => {
            let domain = normalize(&domain)?;
            dkim::import_files(meta, &config.server.data_dir, &domain, now()).await?;
            let new = dkim::rotate(meta, &domain, now()).await?;
            if !json_out {
                println!(
                    "New DKIM keys for {domain}: {}. Publish them now; they sign after {} h \
                     (or `mailfleet dkim activate {domain}`).",
                    new.iter()
                        .map(|k| k.selector.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    config.delivery.dkim_publish_delay_hours
                );
            }
            print_records(&domain, &dkim::dns_records(meta, &domain).await?, json_out);
        }
        DkimCmd::Activate { domain } => {
            let domain = normalize(&domain)?;
            let changed = dkim::activate(meta, &domain, now()).await?;
            if changed.is_empty() {
                bail!("{domain} has no published DKIM keys waiting to sign");
            }
            if json_out {
                println!("{}", json!({"changed": changed}));
            } else {
                println!("Changed: {}", changed.join(", "));
            }
        }
        DkimCmd::List { domain } => {
            let domain = normalize(&domain)?;
            let keys = meta.dkim_keys(&domain).await?;
            if json_out {
                let v: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        json!({"selector": k.selector, "algorithm": k.algorithm.as_str(),
                               "state": k.state.as_str(), "created_at": k.created_at,
                               "state_since": k.state_since})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for k in keys {
                    println!(
                        "{:32} {:15} {:9} since {}",
                        k.selector,
                        k.algorithm.as_str(),
                        k.state.as_str(),
                        chrono::DateTime::from_timestamp(k.state_since, 0)
                            .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn dns(config: &Config, cmd: DnsCmd) -> anyhow::Result<()> {
    use mailfleet_delivery::dkim;
    match cmd {
        DnsCmd::Records { domain } => {
            let domain = normalize(&domain)?;
            let stores = open(config).await?;
            let meta = stores.meta.as_ref();
            dkim::import_files(meta, &config.server.data_dir, &domain, now()).await?;
            let records = dkim::dns_records(meta, &domain).await?;
            print!(
                "{}",
                dkim::zone_records(&domain, &config.server.hostname, &records)?
            );
        }
    }
    Ok(())
}

fn state_counts<'a>(entries: impl IntoIterator<Item = &'a OutboundMessage>) -> [usize; 3] {
    let mut c = [0; 3];
    for m in entries {
        for r in &m.recipients {
            c[match r.state {
                RecipientState::Queued => 0,
                RecipientState::Delivered => 1,
                RecipientState::Failed => 2,
            }] += 1;
        }
    }
    c
}

/// The line `queue list` ends with: recipients by state.
pub fn counts_line<'a>(entries: impl IntoIterator<Item = &'a OutboundMessage>) -> String {
    let [q, d, f] = state_counts(entries);
    format!("recipients: {q} queued, {d} delivered, {f} failed")
}

pub async fn queue_show(config: &Config, id: i64, json_out: bool) -> anyhow::Result<()> {
    let stores = open(config).await?;
    let Some(m) = stores.meta.get_outbound(QueueId(id)).await? else {
        bail!("queue entry {id} not found");
    };
    if json_out {
        println!(
            "{}",
            json!({
                "id": m.id.0, "sender": m.sender, "size": m.size, "blob": m.blob.as_str(),
                "created_at": m.created_at, "envid": m.envid,
                "recipients": m.recipients.iter().map(|r| json!({
                    "address": r.address, "state": r.state.as_str(), "attempts": r.attempts,
                    "next_attempt": r.next_attempt, "last_error": r.last_error,
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    let when = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default()
    };
    println!("id:       {}", m.id);
    println!(
        "sender:   {}",
        if m.sender.is_empty() { "<>" } else { &m.sender }
    );
    println!("size:     {}", m.size);
    println!("queued:   {}", when(m.created_at));
    for r in &m.recipients {
        println!(
            "  {}  {}  attempts={}  next={}  {}",
            r.address,
            r.state.as_str(),
            r.attempts,
            when(r.next_attempt),
            r.last_error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn queue_retry(config: &Config, id: i64) -> anyhow::Result<()> {
    let stores = open(config).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let n = stores
        .meta
        .reschedule_outbound(QueueId(id), now)
        .await
        .with_context(|| format!("queue entry {id}"))?;
    println!("queue entry {id}: {n} recipient(s) due now");
    Ok(())
}

pub async fn queue_delete(config: &Config, id: i64) -> anyhow::Result<()> {
    let stores = open(config).await?;
    // The blob is left to the orphan sweep (recorded by delete_outbound): deleting it here
    // could remove the body of a message that took the same bytes a moment ago.
    stores
        .meta
        .delete_outbound(QueueId(id), None)
        .await
        .with_context(|| format!("queue entry {id}"))?;
    println!("queue entry {id} deleted (no DSN is sent)");
    Ok(())
}
