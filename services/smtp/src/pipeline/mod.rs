//! What happens to a message once SMTP has it: the inbound pipeline.
//!
//! ```text
//! accept(envelope, raw) ──> cleanup (normalise, hop limit, trace headers)
//!                       ──> authenticate (SPF taken at MAIL, DKIM, ARC, DMARC, iprev:
//!                           Authentication-Results; deliver, Junk, 550 or 451)
//!                       ──> filter (clamd: viruses; rspamd: spam; 554, 451 or Junk)
//!                       ──> local::deliver (blob once, one metadata commit, notify)
//! ```
//! Sender authentication ([`authenticate`]) runs for inbound mail only (not for an
//! authenticated submitter, nor for clients in `skip_networks`).
//! The pipeline is also asked about recipients at RCPT time ([`Pipeline::check_recipient`]),
//! so that unknown users, relaying and full mailboxes are refused before DATA.
//!
//! Submitted messages (an authenticated [`Envelope::submitter`]) take the same path with
//! three differences: every `From:` address must belong to the submitter
//! ([`submission`]), missing `Date:`/`Message-ID:`/`From:` fields are added in cleanup,
//! and remote recipients are put in the outbound queue (one blob, shared with the local
//! copies) instead of being refused.

pub mod authenticate;
pub mod cleanup;
pub mod filter;
pub mod header;
pub mod submission;

use crate::local::{self, DeliveryError, Folder, Recipient, Resolution};
use authenticate::{Disposition, SenderAuth, SpfChecks, SpfRefusal};
use bytes::{Bytes, BytesMut};
use mailfleet_core::budget::ByteBudget;
use mailfleet_core::Address;
use mailfleet_storage::{Account, NewOutbound, NewOutboundRecipient, StoreError, Stores};
use std::net::IpAddr;
use tracing::Instrument;

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
    /// The authenticated account of a submission session; `None` for inbound mail.
    pub submitter: Option<Account>,
    /// RFC 3461 ENVID and RET given with MAIL (submission only).
    pub envid: Option<String>,
    pub ret: Option<String>,
    /// The W3C `traceparent` of the message's trace, kept with the message and its queue
    /// entry ([`mailfleet_telemetry::trace`]).
    pub trace: String,
    /// The SPF verdicts taken at MAIL, when sender authentication applies.
    pub spf: Option<SpfChecks>,
}

/// A recipient accepted at RCPT time with what it resolved to.
#[derive(Clone, Debug)]
pub struct AcceptedRecipient {
    pub address: Address,
    /// Local accounts the address delivers to; empty for a remote recipient.
    pub targets: Vec<Recipient>,
    /// A recipient in a domain not hosted here, accepted from an authenticated submitter
    /// for the outbound queue.
    pub remote: bool,
    /// RFC 3461 NOTIFY/ORCPT given with the RCPT (submission only).
    pub dsn: crate::proto::RcptParams,
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
    /// Not hosted here; accepted for the outbound queue (authenticated submission only).
    Remote,
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
    /// A `From:` address the submitter may not use (or one that does not parse).
    #[error("From address {0} is not owned by the authenticated user")]
    SenderNotOwned(String),
    /// The header section does not split into fields unambiguously (554 5.6.0).
    #[error("malformed header: {0}")]
    Header(#[from] header::HeaderError),
    /// The sender domain's DMARC policy refuses the message (550 5.7.1).
    #[error("{0}")]
    AuthReject(String),
    /// Sender authentication could not conclude for a temporary reason (451 4.4.3).
    #[error("{0}")]
    AuthTempFail(String),
    /// A content filter refused the message for good: code, enhanced code, text.
    #[error("{2}")]
    FilterReject(u16, &'static str, String),
    /// A content filter asks the sender to retry (451 4.7.1).
    #[error("{0}")]
    FilterTempFail(String),
}

/// The inbound pipeline. One is built per process and cloned into every SMTP listener
/// (inbound and submission), so what the clones share is per process: the stores and the
/// in-flight byte budget.
#[derive(Clone)]
pub struct Pipeline {
    stores: Stores,
    hostname: String,
    inflight: ByteBudget,
    sender_auth: Option<SenderAuth>,
    filters: filter::Filters,
}

impl Pipeline {
    /// A pipeline with no in-flight limit; see [`Self::with_inflight_budget`].
    pub fn new(stores: Stores, hostname: impl Into<String>) -> Self {
        Self {
            stores,
            hostname: hostname.into(),
            inflight: ByteBudget::unlimited(),
            sender_auth: None,
            filters: filter::Filters::default(),
        }
    }

    /// Scans messages with clamd and rspamd as configured.
    pub fn with_filters(mut self, filters: filter::Filters) -> Self {
        self.filters = filters;
        self
    }

    /// Authenticates inbound mail (`[smtp.authentication]`); without it, none is.
    pub fn with_sender_auth(mut self, auth: SenderAuth) -> Self {
        self.sender_auth = Some(auth);
        self
    }

    /// The SPF stage at MAIL for an inbound (unauthenticated) client: `None` when sender
    /// authentication does not apply to it, else the verdicts to keep with the
    /// transaction, or why MAIL is refused.
    pub async fn check_spf(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: Option<&Address>,
    ) -> Option<Result<SpfChecks, SpfRefusal>> {
        let auth = self.sender_auth.as_ref().filter(|a| a.applies_to(ip))?;
        let sender = mail_from.map(|a| a.to_string());
        Some(
            auth.check_spf(ip, helo, sender.as_deref())
                .instrument(tracing::debug_span!("smtp.spf", otel.name = "spf"))
                .await,
        )
    }

    /// Bounds the message bytes that every session using this pipeline (and its clones)
    /// holds at once (`smtp.max_inflight_bytes`).
    pub fn with_inflight_budget(mut self, budget: ByteBudget) -> Self {
        self.inflight = budget;
        self
    }

    /// The in-flight byte budget sessions charge received messages to, from the first byte
    /// (or the `SIZE=` declared at MAIL) until [`Self::accept`] returns.
    pub fn inflight(&self) -> &ByteBudget {
        &self.inflight
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Counts one transaction from `ip` in the current minute and returns the count. IPv6
    /// clients count by /64, since one host commonly holds a whole /64.
    pub async fn count_client_transaction(
        &self,
        ip: std::net::IpAddr,
    ) -> mailfleet_storage::StoreResult<u64> {
        let key = match ip {
            std::net::IpAddr::V4(v4) => format!("smtp-ip:{v4}"),
            std::net::IpAddr::V6(v6) => {
                let s = v6.segments();
                format!("smtp-ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        };
        self.stores
            .coord
            .incr_counter(&key, std::time::Duration::from_secs(60))
            .await
    }

    /// Decides a RCPT for an unauthenticated client: local recipients only.
    pub async fn check_recipient(
        &self,
        addr: &Address,
        declared_size: Option<u64>,
    ) -> Result<RcptVerdict, StoreError> {
        self.verdict(addr, declared_size, false).await
    }

    /// Decides a RCPT for an authenticated submitter: local recipients as for inbound mail,
    /// remote ones for the outbound queue.
    pub async fn check_submission_recipient(
        &self,
        addr: &Address,
        declared_size: Option<u64>,
    ) -> Result<RcptVerdict, StoreError> {
        self.verdict(addr, declared_size, true).await
    }

    /// Whether `account` may use `addr` as its envelope sender or `From:` address.
    pub async fn sender_allowed(
        &self,
        account: &Account,
        addr: &Address,
    ) -> Result<bool, StoreError> {
        submission::sender_allowed(self.stores.meta.as_ref(), account, addr).await
    }

    async fn verdict(
        &self,
        addr: &Address,
        declared_size: Option<u64>,
        relay: bool,
    ) -> Result<RcptVerdict, StoreError> {
        match local::resolve(self.stores.meta.as_ref(), addr).await? {
            Resolution::NotLocal if relay => Ok(RcptVerdict::Remote),
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
    ///
    /// `raw` is the buffer the message was decoded into; it is edited in place and frozen,
    /// so the bytes the store writes are the bytes that came off the socket, moved at most
    /// once in memory.
    ///
    /// # Copies of an accepted message (hardening item 9)
    /// Full copies of the message from the socket read buffer to the store's `put`:
    ///
    /// | step | before | after |
    /// |---|---|---|
    /// | DATA: read buffer → dot-unstuffed message | 1 (a `Vec` that grew by doubling from 64 KiB, each growth another copy) | 1 (one `BytesMut` reserved to the declared `SIZE=`) |
    /// | BDAT: read buffer → chunk → message | 2 (chunk `Vec`, then appended to the message `Vec`) | 1 (read from the socket into the chunk; the first chunk *is* the message, later ones are appended) |
    /// | bare CR/LF → CRLF | 1 (always, into a new `Vec`) | 0 when line ends are already CRLF (the usual case); else rewritten in place |
    /// | submission: missing `From:`/`Date:`/`Message-ID:` | 1 (new `Vec`) | 0 (joins the next step) |
    /// | `Return-Path:`/`Received:` on top | 1 (trace + body into a new `Vec`) | 1 in-place move (no second buffer) |
    /// | store put, MIME analysis, queue | 0 (`Bytes`, shared) | 0 (`Bytes`, shared) |
    /// | **total, inbound DATA** | **3 copies, 3 buffers alive at once** (decoded, normalised, with trace) | **1 copy + 1 in-place move, 1 buffer** |
    /// | **total, submission BDAT** | **5 copies** | **1 copy + 1 in-place move, 1 buffer** |
    ///
    /// What is held is charged to the process's in-flight budget ([`Self::inflight`]) by
    /// the session, until this returns.
    pub async fn accept(&self, env: &Envelope, raw: BytesMut) -> Result<(), PipelineError> {
        let mut message = raw;
        // The cleanup stage (normalising, the hop limit, a submitter's From check, trace
        // and missing header fields) is one span; it closes when the message is frozen.
        let stage = tracing::debug_span!("smtp.cleanup", otel.name = "cleanup");
        let hops = stage.in_scope(|| {
            cleanup::normalize_line_endings(&mut message);
            // One reading of the header section for every stage below (see [`header`]); a
            // section that does not split cleanly is refused before any stage acts on it.
            cleanup::count_received(&message)
        })?;
        if hops > cleanup::MAX_HOPS {
            return Err(PipelineError::Loop(hops));
        }
        let (auth_results, mut folder) = match (&env.submitter, &self.sender_auth) {
            (None, Some(auth)) if auth.applies_to(env.remote_ip) => {
                self.authenticate(auth, env, &mut message).await?
            }
            _ => (None, Folder::Inbox),
        };
        let filter_fields = if self.filters.is_empty() {
            None
        } else {
            let (fields, junk) = self.filter(env, &mut message).await?;
            if junk {
                folder = Folder::Junk;
            }
            Some(fields)
        };
        let added = match &env.submitter {
            Some(account) => {
                self.submitted(env, account, &message)
                    .instrument(stage.clone())
                    .await?
            }
            None => None,
        };
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
        // Trace on top and missing fields at the end of the header section, in one move.
        // Authentication-Results joins the trace fields on top (RFC 8601 §5).
        let mut top = trace;
        if let Some(ar) = &auth_results {
            top.extend_from_slice(ar.as_bytes());
        }
        if let Some(fields) = &filter_fields {
            top.extend_from_slice(fields.as_bytes());
        }
        match &added {
            Some((at, fields)) => cleanup::insert_all(&mut message, &[(0, &top), (*at, fields)]),
            None => cleanup::insert_all(&mut message, &[(0, &top)]),
        }
        let message = message.freeze();
        drop(stage);

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
        let enforce = targets.len() == 1 && !env.recipients.iter().any(|r| r.remote);
        let now = chrono::Utc::now().timestamp();
        if !targets.is_empty() {
            let delivered = local::deliver(
                &self.stores,
                &targets,
                message.clone(),
                now,
                enforce,
                Some(&env.trace),
                folder,
            )
            .instrument(tracing::debug_span!(
                "smtp.deliver",
                otel.name = "deliver locally",
                smtp.recipients = targets.len() as i64
            ))
            .await;
            match delivered {
                Ok(d) => {
                    tracing::debug!(
                        queue_id = %env.id,
                        recipients = targets.len(),
                        blob = %d.blob,
                        "delivered locally"
                    );
                }
                Err(DeliveryError::QuotaExceeded(who)) => return Err(PipelineError::Quota(who)),
                Err(DeliveryError::Store(e)) => return Err(PipelineError::Store(e)),
                Err(e @ DeliveryError::NoInbox(_)) => {
                    return Err(PipelineError::Delivery(e.to_string()))
                }
            }
        }
        let remote: Vec<NewOutboundRecipient> = env
            .recipients
            .iter()
            .filter(|r| r.remote)
            .map(|r| NewOutboundRecipient {
                address: r.address.to_string(),
                notify: r.dsn.notify.clone(),
                orcpt: r.dsn.orcpt.clone(),
            })
            .collect();
        if !remote.is_empty() {
            let span = tracing::debug_span!(
                "smtp.enqueue",
                otel.name = "queue for remote delivery",
                smtp.recipients = remote.len() as i64
            );
            self.enqueue(env, &return_path, message, remote, now)
                .instrument(span)
                .await?;
        }
        Ok(())
    }

    /// The sender-authentication stage: verifies the message, removes
    /// `Authentication-Results` fields that claim our authserv-id, and returns our own
    /// field with the mailbox the message goes to; refusals and deferrals are errors.
    async fn authenticate(
        &self,
        auth: &SenderAuth,
        env: &Envelope,
        message: &mut BytesMut,
    ) -> Result<(Option<String>, Folder), PipelineError> {
        let span = tracing::debug_span!("smtp.authenticate", otel.name = "authenticate sender");
        let sender = env.mail_from.as_ref().map(|a| a.to_string());
        let spf = match &env.spf {
            Some(spf) => spf.clone(),
            // The session always takes SPF at MAIL; a caller that did not is checked now.
            None => match auth
                .check_spf(env.remote_ip, &env.helo, sender.as_deref())
                .await
            {
                Ok(spf) => spf,
                Err(SpfRefusal::TempError(why)) => return Err(PipelineError::AuthTempFail(why)),
                Err(SpfRefusal::Fail(why)) => return Err(PipelineError::AuthReject(why)),
            },
        };
        let verdict = auth
            .verify(message, &spf, env.remote_ip, &env.helo, sender.as_deref())
            .instrument(span)
            .await;
        let (action, folder) = match &verdict.disposition {
            Disposition::Deliver => ("deliver", Folder::Inbox),
            Disposition::Junk(_) => ("junk", Folder::Junk),
            Disposition::Reject(_) => ("reject", Folder::Inbox),
            Disposition::TempFail(_) => ("defer", Folder::Inbox),
        };
        tracing::info!(
            queue_id = %env.id,
            client = %env.remote_ip,
            auth = %verdict.summary,
            action,
            reason = match &verdict.disposition {
                Disposition::Deliver => "",
                Disposition::Junk(w) | Disposition::Reject(w) | Disposition::TempFail(w) => w.as_str(),
            },
            "sender authentication"
        );
        match verdict.disposition {
            Disposition::Reject(why) => return Err(PipelineError::AuthReject(why)),
            Disposition::TempFail(why) => return Err(PipelineError::AuthTempFail(why)),
            Disposition::Deliver | Disposition::Junk(_) => {}
        }
        let forged =
            authenticate::forged_fields(&header::Header::parse(message)?, auth.authserv_id());
        cleanup::remove_ranges(message, &forged);
        Ok((Some(verdict.header), folder))
    }

    /// The filter stage: removes incoming fields named like ours, runs the scanners and
    /// returns the fields to add and whether the message goes to Junk.
    async fn filter(
        &self,
        env: &Envelope,
        message: &mut BytesMut,
    ) -> Result<(String, bool), PipelineError> {
        let header = header::Header::parse(message)?;
        let own: Vec<_> = header
            .fields
            .iter()
            .filter(|f| filter::OWN_FIELDS.iter().any(|n| f.is(n)))
            .map(|f| f.range.clone())
            .collect();
        drop(header);
        cleanup::remove_ranges(message, &own);
        let mail_from = env
            .mail_from
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let ctx = filter::Context {
            scan: filter::rspamd::ScanRequest {
                ip: Some(env.remote_ip),
                helo: &env.helo,
                mail_from: &mail_from,
                recipients: env
                    .recipients
                    .iter()
                    .map(|r| r.address.to_string())
                    .collect(),
                queue_id: &env.id,
                hostname: &self.hostname,
            },
            submission: env.submitter.is_some(),
            hostname: &self.hostname,
        };
        let outcome = self
            .filters
            .run(&ctx, message)
            .instrument(tracing::debug_span!("smtp.filter", otel.name = "filter content", smtp.queue_id = %env.id))
            .await;
        match outcome {
            filter::FilterOutcome::Deliver { fields, junk } => Ok((fields, junk)),
            filter::FilterOutcome::Reject(code, enhanced, text) => {
                Err(PipelineError::FilterReject(code, enhanced, text))
            }
            filter::FilterOutcome::TempFail(text) => Err(PipelineError::FilterTempFail(text)),
        }
    }

    /// Puts the remote recipients of a submitted message in the outbound queue. The blob
    /// is the one local recipients got (content-addressed: putting it again is cheap and
    /// makes sure it exists when there were no local recipients). Local copies are
    /// committed first: if queueing then fails, the client gets 451 and retries, and local
    /// recipients may see the message twice, which is better than losing it.
    async fn enqueue(
        &self,
        env: &Envelope,
        return_path: &str,
        message: Bytes,
        recipients: Vec<NewOutboundRecipient>,
        now: i64,
    ) -> Result<(), PipelineError> {
        let size = message.len() as u64;
        let blob = self.stores.put_blob(message).await?;
        let count = recipients.len();
        let queued = self
            .stores
            .meta
            .enqueue_outbound(NewOutbound {
                blob,
                size,
                sender: return_path.to_string(),
                account: env.submitter.as_ref().map(|a| a.id),
                envid: env.envid.clone(),
                ret: env
                    .ret
                    .as_deref()
                    .and_then(mailfleet_storage::DsnRet::parse),
                recipients,
                created_at: now,
                trace: Some(env.trace.clone()),
            })
            .await?;
        tracing::info!(
            queue_id = %env.id,
            trace_id = mailfleet_telemetry::trace::trace_id_of(&env.trace),
            outbound_id = %queued.id,
            from = %return_path,
            recipients = count,
            "queued for remote delivery"
        );
        Ok(())
    }

    /// Cleanup for submitted messages: checks every `From:` address against the
    /// submitter, then says which of `Date:`, `Message-ID:` and `From:` to add, and where
    /// (the caller inserts them with the trace headers).
    async fn submitted(
        &self,
        env: &Envelope,
        account: &Account,
        body: &[u8],
    ) -> Result<Option<(usize, Vec<u8>)>, PipelineError> {
        let froms = submission::from_addresses(body).map_err(|e| match e {
            submission::FromError::Header(h) => PipelineError::Header(h),
            submission::FromError::Unparseable => {
                PipelineError::SenderNotOwned("in the From header".into())
            }
        })?;
        for from in &froms {
            if !self.sender_allowed(account, from).await? {
                return Err(PipelineError::SenderNotOwned(from.to_string()));
            }
        }
        let from = env
            .mail_from
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_else(|| account.address.clone());
        Ok(cleanup::missing_headers(
            body,
            &[
                ("From", format!("<{from}>")),
                ("Date", cleanup::rfc5322_date(chrono::Utc::now())),
                (
                    "Message-ID",
                    cleanup::new_message_id(&env.id, &self.hostname),
                ),
            ],
        )?)
    }
}
