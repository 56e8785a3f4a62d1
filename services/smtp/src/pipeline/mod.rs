//! What happens to a message once SMTP has it: the inbound pipeline.
//!
//! ```text
//! accept(envelope, raw) ──> cleanup (normalise, hop limit, trace headers)
//!                       ──> local::deliver (blob once, one metadata commit, notify)
//! ```
//! The pipeline is also asked about recipients at RCPT time ([`Pipeline::check_recipient`]),
//! so that unknown users, relaying and full mailboxes are refused before DATA.

pub mod cleanup;

use crate::local::{self, DeliveryError, Recipient, Resolution};
use bytes::Bytes;
use mailfleet_core::Address;
use mailfleet_storage::{StoreError, Stores};
use std::net::IpAddr;

/// Everything the pipeline needs to know about the SMTP transaction.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// `None` is the null reverse path `<>`.
    pub mail_from: Option<Address>,
    pub recipients: Vec<AcceptedRecipient>,
    pub helo: String,
    pub remote_ip: IpAddr,
    pub protocol: String,
    pub tls: Option<String>,
    pub id: String,
}

/// A recipient accepted at RCPT time with what it resolved to.
#[derive(Clone, Debug)]
pub struct AcceptedRecipient {
    pub address: Address,
    pub targets: Vec<Recipient>,
}

/// The verdict on a RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptVerdict {
    Accept(Vec<Recipient>),
    UnknownUser,
    RelayDenied,
    /// At least one target mailbox is full (452 4.2.2).
    MailboxFull,
    /// The declared size does not fit a target's quota (552 5.2.2).
    WontFit,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("mail loop: {0} Received headers")]
    Loop(usize),
    #[error("quota exceeded for {0}")]
    Quota(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("delivery: {0}")]
    Delivery(String),
}

#[derive(Clone)]
pub struct Pipeline {
    stores: Stores,
    hostname: String,
}

impl Pipeline {
    pub fn new(stores: Stores, hostname: impl Into<String>) -> Self {
        Self {
            stores,
            hostname: hostname.into(),
        }
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Decides a RCPT for an unauthenticated client: local recipients only.
    pub async fn check_recipient(
        &self,
        addr: &Address,
        declared_size: Option<u64>,
    ) -> Result<RcptVerdict, StoreError> {
        match local::resolve(self.stores.meta.as_ref(), addr).await? {
            Resolution::NotLocal => Ok(RcptVerdict::RelayDenied),
            Resolution::UnknownUser => Ok(RcptVerdict::UnknownUser),
            Resolution::Local(targets) => {
                for t in &targets {
                    if t.account.quota_bytes > 0 && t.account.used_bytes >= t.account.quota_bytes {
                        return Ok(RcptVerdict::MailboxFull);
                    }
                    if let Some(size) = declared_size {
                        if !t.account.fits(size) {
                            return Ok(RcptVerdict::WontFit);
                        }
                    }
                }
                Ok(RcptVerdict::Accept(targets))
            }
        }
    }

    /// Cleans up and delivers a received message. Returns once it is durable for every
    /// recipient.
    pub async fn accept(&self, env: &Envelope, raw: &[u8]) -> Result<(), PipelineError> {
        let body = cleanup::normalize_line_endings(raw);
        let hops = cleanup::count_received(&body);
        if hops > cleanup::MAX_HOPS {
            return Err(PipelineError::Loop(hops));
        }
        let return_path = env
            .mail_from
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let for_rcpt = match env.recipients.as_slice() {
            [only] => Some(only.address.to_string()),
            _ => None,
        };
        let trace = cleanup::trace_headers(
            &return_path,
            &cleanup::TraceInfo {
                helo: &env.helo,
                remote_ip: env.remote_ip,
                hostname: &self.hostname,
                protocol: env.protocol.clone(),
                tls: env.tls.clone(),
                id: &env.id,
                for_rcpt,
                date: chrono::Utc::now(),
            },
        );
        let mut message = Vec::with_capacity(trace.len() + body.len());
        message.extend_from_slice(&trace);
        message.extend_from_slice(&body);

        // Several RCPTs may lead to one account (an alias and the account itself): it gets
        // one copy, as users expect.
        let mut targets: Vec<Recipient> = Vec::new();
        for r in &env.recipients {
            for t in &r.targets {
                if !targets.iter().any(|x| x.account.id == t.account.id) {
                    targets.push(t.clone());
                }
            }
        }
        // A lone recipient's quota is enforced at the end of DATA (552); with several, each
        // was checked at RCPT time and the message is delivered to all rather than lost for
        // some (a bounded overshoot of one message).
        let enforce = targets.len() == 1;
        let now = chrono::Utc::now().timestamp();
        match local::deliver(&self.stores, &targets, Bytes::from(message), now, enforce).await {
            Ok(d) => {
                tracing::info!(
                    id = %env.id,
                    from = %return_path,
                    recipients = targets.len(),
                    blob = %d.blob,
                    "delivered"
                );
                Ok(())
            }
            Err(DeliveryError::QuotaExceeded(who)) => Err(PipelineError::Quota(who)),
            Err(DeliveryError::Store(e)) => Err(PipelineError::Store(e)),
            Err(e @ DeliveryError::NoInbox(_)) => Err(PipelineError::Delivery(e.to_string())),
        }
    }
}
