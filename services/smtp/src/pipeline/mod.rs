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

pub mod arc;
pub mod authenticate;
pub mod cleanup;
pub mod filter;
pub mod header;
pub mod rules;
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

/// One local recipient's share of a message: what the per-recipient stages decided.
struct TargetPlan {
    recipient: Recipient,
    /// The RCPT address that led to the account (as Sieve's envelope `to`).
    rcpt: String,
    /// Header fields only this recipient's copy carries (the spam verdict).
    fields: String,
    plan: rules::Plan,
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
    /// The recipient's Sieve script refused the message (`reject`, `ereject`): 550 5.7.1.
    #[error("{0}")]
    RulesReject(String),
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
    builtin: Option<filter::builtin::Builtin>,
    rules: Option<rules::Rules>,
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
            builtin: None,
            rules: None,
        }
    }

    /// Scores inbound mail with the built-in spam filter (`[smtp.spam]`), when rspamd is
    /// not configured.
    pub fn with_builtin_filter(mut self, builtin: filter::builtin::Builtin) -> Self {
        self.builtin = Some(builtin);
        self
    }

    /// Runs users' Sieve scripts (and the global ones) at local delivery.
    pub fn with_rules(mut self, rules: rules::Rules) -> Self {
        self.rules = Some(rules);
        self
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
        let builtin_applies = self.builtin.is_some() && env.submitter.is_none();
        let filter_fields = if self.filters.is_empty() && !builtin_applies {
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
        // one copy, as users expect. Sieve sees the first address that led to it.
        let mut targets: Vec<(Recipient, String)> = Vec::new();
        for r in &env.recipients {
            for t in &r.targets {
                if !targets.iter().any(|(x, _)| x.account.id == t.account.id) {
                    targets.push((t.clone(), r.address.to_string()));
                }
            }
        }
        // A lone recipient's quota is enforced at the end of DATA (552); with several, each
        // was checked at RCPT time and the message is delivered to all rather than lost for
        // some (a bounded overshoot of one message).
        let enforce = targets.len() == 1 && !env.recipients.iter().any(|r| r.remote);
        let now = chrono::Utc::now().timestamp();
        if !targets.is_empty() {
            let plans = self.plan_targets(env, &targets, &message, folder).await?;
            self.carry_out(env, &return_path, plans, &message, now, enforce)
                .await?;
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

    /// The per-recipient stages: the built-in spam filter's verdict (with the user's
    /// Bayes model and the recipient domain's thresholds) and the user's rules.
    async fn plan_targets(
        &self,
        env: &Envelope,
        targets: &[(Recipient, String)],
        message: &Bytes,
        folder: Folder,
    ) -> Result<Vec<TargetPlan>, PipelineError> {
        let builtin = self
            .builtin
            .as_ref()
            .filter(|_| env.submitter.is_none() && self.filters.rspamd.is_none());
        let facts = match builtin {
            Some(b) => Some(
                b.analyze(message.clone(), env.remote_ip)
                    .instrument(tracing::debug_span!(
                        "smtp.spam",
                        otel.name = "built-in spam filter"
                    ))
                    .await,
            ),
            None => None,
        };
        let sender = env.mail_from.as_ref().map(|a| a.to_string());
        let mut plans = Vec::with_capacity(targets.len());
        let mut rejects = 0;
        let mut greylisted = false;
        for (recipient, rcpt) in targets {
            let mut fields = String::new();
            let mut default = folder.clone();
            if let (Some(b), Some(facts)) = (builtin, &facts) {
                let decision = b.decide(&self.stores, facts, &recipient.account).await;
                tracing::info!(
                    queue_id = %env.id,
                    rcpt = %recipient.account.address,
                    score = decision.score,
                    action = ?decision.action,
                    symbols = %decision.symbols.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
                    "built-in spam filter"
                );
                fields.push_str(&format!(
                    "{}: {}\r\n",
                    mailfleet_spam::score::HEADER_NAME,
                    decision.header_value()
                ));
                match decision.action {
                    mailfleet_spam::Action::Deliver => {}
                    mailfleet_spam::Action::Junk => default = Folder::Junk,
                    mailfleet_spam::Action::Reject => {
                        rejects += 1;
                        default = Folder::Junk;
                    }
                    mailfleet_spam::Action::Greylist => {
                        let verdict = b
                            .greylist(
                                &self.stores,
                                env.remote_ip,
                                sender.as_deref().unwrap_or(""),
                                rcpt,
                            )
                            .await;
                        if verdict == filter::builtin::GreylistVerdict::Defer {
                            greylisted = true;
                        }
                    }
                }
            }
            plans.push(TargetPlan {
                recipient: recipient.clone(),
                rcpt: rcpt.clone(),
                fields,
                plan: rules::Plan::keep(default),
            });
        }
        if greylisted {
            return Err(PipelineError::FilterTempFail(
                "Greylisted, try again later".into(),
            ));
        }
        // Refused only when every recipient's threshold says so; otherwise the ones whose
        // threshold would refuse get it in Junk.
        if rejects > 0 && rejects == plans.len() {
            return Err(PipelineError::FilterReject(
                554,
                "5.7.1",
                "Message refused as spam".into(),
            ));
        }
        if let Some(rules) = &self.rules {
            for t in &mut plans {
                let default = t.plan.placements[0].0.clone();
                // The rules see the message with this recipient's spam verdict on top.
                let seen = if t.fields.is_empty() {
                    message.clone()
                } else {
                    let mut b = Vec::with_capacity(t.fields.len() + message.len());
                    b.extend_from_slice(t.fields.as_bytes());
                    b.extend_from_slice(message);
                    Bytes::from(b)
                };
                t.plan = rules
                    .plan(
                        &self.stores,
                        &t.recipient.account,
                        &t.rcpt,
                        sender.as_deref(),
                        &seen,
                        default,
                    )
                    .instrument(tracing::debug_span!("smtp.sieve", otel.name = "run Sieve"))
                    .await;
                if !t.plan.scripts.is_empty() {
                    tracing::info!(
                        queue_id = %env.id,
                        rcpt = %t.recipient.account.address,
                        scripts = %t.plan.scripts.join(","),
                        placements = t.plan.placements.len(),
                        redirects = t.plan.redirects.len(),
                        reject = t.plan.reject.is_some(),
                        vacation = t.plan.vacation.is_some(),
                        error = t.plan.error.as_deref().unwrap_or(""),
                        "sieve"
                    );
                }
            }
            let refused = plans.iter().filter(|t| t.plan.reject.is_some()).count();
            if refused == plans.len() {
                let why = plans[0].plan.reject.clone().unwrap_or_default();
                return Err(PipelineError::RulesReject(why));
            }
        }
        Ok(plans)
    }

    /// Stores the copies the plans ask for (one blob and one transaction for every copy
    /// of the same bytes), then sends what they ask to send: redirects, vacation replies,
    /// rejection notices.
    async fn carry_out(
        &self,
        env: &Envelope,
        return_path: &str,
        plans: Vec<TargetPlan>,
        message: &Bytes,
        now: i64,
        enforce: bool,
    ) -> Result<(), PipelineError> {
        // The bytes each recipient's copy has: the shared message unless its plan adds
        // fields or edits the header.
        let mut variants: Vec<(Bytes, Vec<local::Placement>)> = vec![(message.clone(), Vec::new())];
        let mut followups = Vec::new();
        for t in plans {
            let mut top = t.fields.clone();
            if let Some(e) = &t.plan.error {
                top.push_str(&format!(
                    "{}: {}\r\n",
                    rules::ERROR_FIELD,
                    e.replace(['\r', '\n'], " ")
                ));
            }
            let bytes = if top.is_empty() && t.plan.edits.is_empty() {
                None
            } else {
                let mut b = Vec::with_capacity(top.len() + message.len());
                b.extend_from_slice(top.as_bytes());
                b.extend_from_slice(message);
                if !t.plan.edits.is_empty() {
                    b = mailfleet_sieve::apply_edits(&b, &t.plan.edits);
                }
                Some(Bytes::from(b))
            };
            let placements: Vec<local::Placement> = t
                .plan
                .placements
                .iter()
                .map(|(folder, flags)| local::Placement {
                    recipient: t.recipient.clone(),
                    folder: folder.clone(),
                    flags: flags.clone(),
                })
                .collect();
            let copy = match bytes.filter(|b| b != message) {
                None => {
                    variants[0].1.extend(placements);
                    message.clone()
                }
                Some(b) => {
                    match variants.iter_mut().find(|(v, _)| *v == b) {
                        Some((_, p)) => p.extend(placements),
                        None => variants.push((b.clone(), placements)),
                    }
                    b
                }
            };
            followups.push((t, copy));
        }
        for (bytes, placements) in &variants {
            if placements.is_empty() {
                continue;
            }
            let delivered = local::deliver_placed(
                &self.stores,
                placements,
                bytes.clone(),
                now,
                enforce,
                Some(&env.trace),
            )
            .instrument(tracing::debug_span!(
                "smtp.deliver",
                otel.name = "deliver locally",
                smtp.recipients = placements.len() as i64
            ))
            .await;
            match delivered {
                Ok(d) => {
                    tracing::debug!(
                        queue_id = %env.id,
                        copies = placements.len(),
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
        // What the rules send out happens after the copies are durable; a failure here
        // is logged, never turned into a failure of the delivery the sender was told of.
        for (t, copy) in followups {
            for address in &t.plan.redirects {
                let forwarder = t.rcpt.rsplit_once('@').map(|(_, d)| d);
                if let Err(e) = self
                    .inject(
                        env,
                        Some(return_path),
                        address,
                        copy.clone(),
                        now,
                        forwarder,
                    )
                    .await
                {
                    tracing::warn!(queue_id = %env.id, to = %address, error = %e, "sieve redirect failed");
                }
            }
            if let Some(why) = &t.plan.reject {
                if !return_path.is_empty() {
                    let notice =
                        rules::rejection_notice(return_path, &t.rcpt, why, &self.hostname, &env.id);
                    if let Err(e) = self
                        .inject(env, None, return_path, Bytes::from(notice), now, None)
                        .await
                    {
                        tracing::warn!(queue_id = %env.id, error = %e, "sieve rejection notice failed");
                    }
                }
            }
            if let Some(v) = &t.plan.vacation {
                self.vacation(env, &t, v, now).await;
            }
        }
        Ok(())
    }

    /// Sends a vacation reply unless one with the same handle went to the same sender
    /// within the script's period: the record of the last reply is created only when
    /// absent, so two front-ends delivering at once send one reply.
    async fn vacation(
        &self,
        env: &Envelope,
        t: &TargetPlan,
        v: &mailfleet_sieve::Vacation,
        now: i64,
    ) {
        let key = rules::vacation_key(&v.handle, &v.to);
        let expires = now + i64::try_from(v.period_seconds).unwrap_or(i64::MAX / 2);
        let first = self
            .stores
            .meta
            .put_data(
                mailfleet_storage::DataScope::Account(t.recipient.account.id),
                rules::VACATION_KIND,
                &key,
                Vec::new(),
                Some(expires),
                mailfleet_storage::Expect::Absent,
            )
            .await;
        match first {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => {
                tracing::info!(queue_id = %env.id, rcpt = %t.rcpt, "vacation: already answered this sender");
                return;
            }
            Err(e) => {
                tracing::warn!(queue_id = %env.id, error = %e, "vacation: store unavailable; no reply");
                return;
            }
        }
        let reply = rules::vacation_reply(v, &t.rcpt, &self.hostname, &env.id);
        // RFC 5230 §5.1: the reply's envelope sender is empty, so it never bounces back.
        match self
            .inject(env, None, &v.to, Bytes::from(reply), now, None)
            .await
        {
            Ok(()) => {
                tracing::info!(queue_id = %env.id, rcpt = %t.rcpt, to = %v.to, "vacation reply sent")
            }
            Err(e) => tracing::warn!(queue_id = %env.id, error = %e, "vacation reply failed"),
        }
    }

    /// A message this server originates (redirect, vacation, notice) to one address:
    /// delivered here when the address is local, else queued for remote delivery with
    /// `sender` as its envelope sender (`None`: the null sender). It does not go through
    /// the rules again: a redirect to a local user is a plain delivery, so two users'
    /// scripts cannot bounce a message between them forever. A received message that
    /// `forwarder` (a hosted domain) sends on to another host is ARC-sealed by it first.
    async fn inject(
        &self,
        env: &Envelope,
        sender: Option<&str>,
        to: &str,
        message: Bytes,
        now: i64,
        forwarder: Option<&str>,
    ) -> Result<(), PipelineError> {
        let addr = Address::parse(to)
            .map_err(|e| PipelineError::Delivery(format!("address {to:?}: {e}")))?;
        match local::resolve(self.stores.meta.as_ref(), &addr).await? {
            Resolution::Local(targets) => {
                local::deliver(
                    &self.stores,
                    &targets,
                    message,
                    now,
                    false,
                    Some(&env.trace),
                    Folder::Inbox,
                )
                .await
                .map_err(|e| PipelineError::Delivery(e.to_string()))?;
            }
            Resolution::UnknownUser => {
                return Err(PipelineError::Delivery(format!("no such local user {to}")));
            }
            Resolution::NotLocal => {
                let message = match forwarder {
                    Some(domain) => self.arc_sealed(env, domain, message).await,
                    None => message,
                };
                let size = message.len() as u64;
                let blob = self.stores.put_blob(message).await?;
                self.stores
                    .meta
                    .enqueue_outbound(NewOutbound {
                        blob,
                        size,
                        sender: sender.unwrap_or("").to_string(),
                        account: None,
                        envid: None,
                        ret: None,
                        recipients: vec![NewOutboundRecipient {
                            address: addr.to_string(),
                            notify: None,
                            orcpt: None,
                        }],
                        created_at: now,
                        trace: Some(env.trace.clone()),
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// `message` with an ARC set of `domain` on top, when sender authentication applied to
    /// it and the domain has an active RSA DKIM key; else `message` as it is (a forward
    /// without a seal is what every forwarder without ARC sends).
    async fn arc_sealed(&self, env: &Envelope, domain: &str, message: Bytes) -> Bytes {
        let (Some(auth), Some(spf), None) = (&self.sender_auth, &env.spf, &env.submitter) else {
            return message;
        };
        if !auth.applies_to(env.remote_ip) {
            return message;
        }
        let key = match arc::key(self.stores.meta.as_ref(), domain).await {
            Ok(Some(k)) => k,
            Ok(None) => {
                tracing::debug!(queue_id = %env.id, domain, "no active RSA DKIM key: forward not ARC-sealed");
                return message;
            }
            Err(e) => {
                tracing::warn!(queue_id = %env.id, domain, error = %e, "ARC key not read: forward not sealed");
                return message;
            }
        };
        let sender = env.mail_from.as_ref().map(|a| a.to_string());
        match auth
            .arc_seal(
                &message,
                spf,
                env.remote_ip,
                &env.helo,
                sender.as_deref(),
                key,
            )
            .await
        {
            Ok(set) => {
                tracing::info!(queue_id = %env.id, domain, "forward ARC-sealed");
                let mut out = Vec::with_capacity(set.len() + message.len());
                out.extend_from_slice(set.as_bytes());
                out.extend_from_slice(&message);
                Bytes::from(out)
            }
            Err(e) => {
                tracing::info!(queue_id = %env.id, domain, error = %e, "forward not ARC-sealed");
                message
            }
        }
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
            thresholds: self.domain_thresholds(env),
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

    /// The thresholds of the recipients' domains when they all have the same configured
    /// entry (the usual case: one recipient); else none, and rspamd's action stands.
    fn domain_thresholds(&self, env: &Envelope) -> Option<mailfleet_spam::Thresholds> {
        let mut found: Option<mailfleet_spam::Thresholds> = None;
        for r in env.recipients.iter().filter(|r| !r.remote) {
            let t = self
                .filters
                .domains
                .get(&r.address.domain().to_ascii_lowercase())
                .copied()?;
            if found.is_some_and(|f| f != t) {
                return None;
            }
            found = Some(t);
        }
        found
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
