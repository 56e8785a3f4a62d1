//! `mailfleet reports`: the DMARC and TLS-RPT counts waiting in the store, and a send run
//! on demand (the server sends every closed UTC day by itself, `reports.interval_secs`).

use anyhow::Context;
use clap::Subcommand;
use mailfleet_core::config::Config;
use mailfleet_reports::{ReportSender, SenderSettings, DMARC_KIND, TLSRPT_KIND};
use mailfleet_storage::DataScope;
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Subcommand, Debug)]
pub enum ReportsCmd {
    /// The stored counts per kind, day and domain, not yet sent.
    Pending,
    /// Send the reports of every closed UTC day now, as the server's daily run does.
    Send {
        /// Also send today's counts so far (their date range still says the whole day):
        /// for a check of the DNS records and of the reports' delivery.
        #[arg(long)]
        include_today: bool,
    },
}

pub async fn reports(config: &Config, cmd: ReportsCmd, json_out: bool) -> anyhow::Result<()> {
    let stores = crate::admin::open(config).await?;
    match cmd {
        ReportsCmd::Pending => {
            let mut groups: BTreeMap<(&str, String, String), usize> = BTreeMap::new();
            for kind in [DMARC_KIND, TLSRPT_KIND] {
                let records = stores
                    .meta
                    .list_data(DataScope::Global, kind, 100_000)
                    .await
                    .context("reading the report records")?;
                for (key, _) in records {
                    let mut it = key.splitn(3, '/');
                    if let (Some(day), Some(domain)) = (it.next(), it.next()) {
                        *groups
                            .entry((kind, day.to_string(), domain.to_string()))
                            .or_default() += 1;
                    }
                }
            }
            if json_out {
                let v: Vec<_> = groups
                    .iter()
                    .map(|((k, day, d), n)| json!({"kind": k, "day": day, "domain": d, "records": n}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("{:<8} {:<10} {:<40} RECORDS", "KIND", "DAY", "DOMAIN");
                for ((k, day, d), n) in &groups {
                    println!("{k:<8} {day:<10} {d:<40} {n}");
                }
            }
        }
        ReportsCmd::Send { include_today } => {
            let auth = mailfleet_smtp::pipeline::authenticate::SenderAuth::new(
                &config.smtp.authentication,
                &config.server.hostname,
            )
            .map_err(|e| anyhow::anyhow!("smtp.authentication: {e}"))?;
            let settings = SenderSettings::from_config(config);
            if !settings.dmarc && !settings.tlsrpt {
                anyhow::bail!("reports.dmarc_enabled and reports.tlsrpt_enabled are both off");
            }
            let sender = ReportSender::new(stores, settings, Box::new(auth.authenticator()));
            let s = sender
                .run_once(mailfleet_reports::unix_now(), include_today)
                .await;
            if json_out {
                println!(
                    "{}",
                    json!({"dmarc_reports": s.dmarc_reports, "tls_reports": s.tls_reports,
                           "discarded": s.discarded, "deferred": s.deferred})
                );
            } else {
                println!(
                    "queued {} DMARC and {} TLS reports; {} domain-days without a destination, {} left for the next run",
                    s.dmarc_reports, s.tls_reports, s.discarded, s.deferred
                );
            }
        }
    }
    Ok(())
}
