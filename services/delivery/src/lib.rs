//! Mailfleet outbound delivery: sends the mail that submission put in the outbound queue.
//!
//! # Layout
//! - `worker.rs`: the queue manager: due entries, one `Coordinator` lease per entry,
//!   attempts, retry schedule, DSNs, removal of finished entries.
//! - `route.rs`: static routes, smarthost, MX / implicit MX / null MX with hickory-resolver.
//! - `client.rs`: one SMTP transaction with one host (over `mail-send` and `smtp-proto`).
//! - `tls.rs`: the TLS client configurations: opportunistic STARTTLS, and verified TLS
//!   (system roots plus `delivery.tls_ca_file`) for MTA-STS.
//! - `dane.rs`: DANE (RFC 7672): DNSSEC-validated MX and TLSA lookups, and TLSA matching
//!   for the certificate check in `tls.rs`.
//! - `mtasts.rs`: MTA-STS (RFC 8461): TXT and policy parsing, MX pattern matching, and
//!   the per-node policy cache that fetches policies over HTTPS.
//! - `lease.rs`: the queue lease an attempt runs under: renewal, loss signal, the
//!   check before `DATA`.
//! - `dsn.rs`: RFC 3464 delivery status notifications.
//! - `dkim.rs`: per-domain DKIM keys (RSA-2048 and Ed25519) in the metadata store,
//!   rotation, signing, DNS records.
//!
//! Not built yet (see issue 6): TLS reporting (RFC 8460), delay
//! warnings, AUTH on static routes, DSN parameters accepted at submission.

#![forbid(unsafe_code)]

pub mod client;
pub mod dane;
pub mod dkim;
pub mod dsn;
pub mod lease;
pub mod mtasts;
pub mod route;
pub mod tls;
pub mod worker;

pub use worker::Worker;

use mailfleet_core::config::Config;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the worker needs, taken from `[server]` and `[delivery]`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Our name in EHLO, in DSNs and in lease holder names.
    pub hostname: String,
    /// Where earlier versions kept DKIM key files (`<data_dir>/dkim/`), imported into the
    /// metadata store when found.
    pub data_dir: PathBuf,
    pub max_concurrent: usize,
    pub poll_interval: Duration,
    pub lease_ttl: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub max_lifetime: Duration,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub starttls: bool,
    pub resolver: Option<SocketAddr>,
    pub smarthost: Option<String>,
    pub routes: BTreeMap<String, String>,
    pub dkim_sign: bool,
    /// How long rotated DKIM keys wait in DNS before signing, and stay after.
    pub dkim_lifecycle: dkim::Lifecycle,
    pub max_per_destination: usize,
    pub max_per_destination_per_minute: u32,
    /// A delay DSN goes to the sender once a recipient has waited this long; zero = never.
    pub delay_warning: Duration,
    /// Idle time after which a cached connection is not reused; zero disables reuse.
    pub connection_reuse: Duration,
    /// How long a shutdown waits for deliveries in flight; the rest are dropped and, their
    /// leases lapsing, retried later.
    pub shutdown_grace: Duration,
    /// Whether MTA-STS policies (RFC 8461) of MX-routed domains are fetched and honoured.
    pub mta_sts: bool,
    /// Extra trust anchors (PEM) for MTA-STS policy fetches and verified SMTP TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Whether DANE (RFC 7672) applies to MX-routed domains with DNSSEC-signed TLSA records.
    pub dane: bool,
    /// DNSKEY records to anchor DNSSEC validation at; hickory's root keys when `None`.
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// Port of `mta-sts.<domain>` for policy fetches: 443, the only port RFC 8461 allows.
    /// Not a config key; tests point it at a loopback server.
    pub mta_sts_https_port: u16,
    /// Port of hosts found through MX records: 25. Not a config key; tests point it at a
    /// loopback server.
    pub mx_port: u16,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        let d = &config.delivery;
        Self {
            hostname: config.server.hostname.clone(),
            data_dir: config.server.data_dir.clone(),
            max_concurrent: d.max_concurrent,
            poll_interval: Duration::from_secs(d.poll_interval_secs),
            lease_ttl: Duration::from_secs(d.lease_secs),
            retry_base: Duration::from_secs(d.retry_base_secs),
            retry_max: Duration::from_secs(d.retry_max_secs),
            max_lifetime: Duration::from_secs(d.max_lifetime_secs),
            connect_timeout: Duration::from_secs(d.connect_timeout_secs),
            command_timeout: Duration::from_secs(d.command_timeout_secs),
            starttls: d.starttls,
            resolver: d.resolver,
            smarthost: d.smarthost.clone(),
            routes: d.routes.clone(),
            dkim_sign: d.dkim_sign,
            dkim_lifecycle: dkim::Lifecycle {
                publish_delay: Duration::from_secs(d.dkim_publish_delay_hours * 3600),
                retire_after: Duration::from_secs(d.dkim_retire_days * 24 * 3600),
            },
            max_per_destination: d.max_per_destination,
            max_per_destination_per_minute: d.max_per_destination_per_minute,
            delay_warning: Duration::from_secs(d.delay_warning_secs),
            connection_reuse: Duration::from_secs(d.connection_reuse_secs),
            shutdown_grace: Duration::from_secs(config.server.shutdown_grace_secs),
            mta_sts: d.mta_sts,
            tls_ca_file: d.tls_ca_file.clone(),
            dane: d.dane,
            dnssec_trust_anchor: d.dnssec_trust_anchor.clone(),
            mta_sts_https_port: 443,
            mx_port: route::SMTP_PORT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The service cannot start or a step outside SMTP failed (resolver, TLS, DSN).
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] mailfleet_storage::StoreError),
    /// The entry's lease was lost mid-attempt: the attempt stopped and recorded nothing.
    #[error("queue lease on entry {0} lost; attempt stopped")]
    LeaseLost(mailfleet_storage::QueueId),
}
