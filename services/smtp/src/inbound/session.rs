//! The SMTP session as a state machine, free of sockets.
//!
//! The connection driver ([`super::conn`]) frames input and calls one method per event: a
//! command line, a line that was too long, the end of DATA, a BDAT chunk, a finished TLS
//! handshake. Each returns the replies to send and what to read next ([`Next`]). Everything
//! about SMTP semantics (sequencing, limits, replies) lives here and is tested by feeding
//! lines, with no network.
//!
//! The same session serves message submission (RFC 6409) once
//! [`Session::enable_submission`] is called: `AUTH PLAIN`/`LOGIN` (RFC 4954) is offered
//! only over TLS, `MAIL` requires a login, the envelope sender must belong to the account
//! (`553 5.7.1` otherwise), and recipients in domains not hosted here are accepted for the
//! outbound queue instead of being refused as relaying.
//!
//! # Memory
//! A transaction holds a [`Reservation`] on the process's in-flight byte budget
//! ([`Pipeline::inflight`]): the `SIZE=` declared at MAIL up front, then more as DATA bytes
//! arrive ([`Session::reserve_message_bytes`]) or before each BDAT chunk is read. When the
//! budget cannot cover it, the message is refused with `452 4.3.1` (at MAIL, at the end of
//! DATA, or for the BDAT chunk), its bytes are dropped at once, and the session goes on.
//! The reservation is given back when the message has been handed off or refused, on RSET,
//! and when the connection drops (it lives in the transaction).

use crate::pipeline::authenticate::{SpfChecks, SpfRefusal};
use crate::pipeline::{AcceptedRecipient, Envelope, Pipeline, PipelineError, RcptVerdict};
use crate::proto::command::{Command, CommandError, MailParams, Path, RcptParams};
use crate::proto::{DataEnd, Reply};
use bytes::BytesMut;
use mailfleet_auth::sasl::{Exchange, Mechanism, SaslError, Step};
use mailfleet_auth::{AuthError, Authenticator, LoginRequest, Protocol};
use mailfleet_core::budget::Reservation;
use mailfleet_core::Address;
use mailfleet_storage::Account;
use mailfleet_telemetry::{MessageRefusal, SmtpReplyClass};
use std::net::IpAddr;
use std::sync::Arc;
use tracing::Instrument;

/// Session limits and identity, from `[smtp]` and `[server]` configuration.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_errors: u32,
    pub max_messages: u32,
    /// Transactions per minute per client address on inbound (not submission) sessions;
    /// 0 = no limit.
    pub max_messages_per_ip_per_minute: u32,
    /// Whether STARTTLS can be offered (a certificate is configured).
    pub starttls: bool,
}

/// What the driver reads next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Another command line.
    Command,
    /// Message content until `<CRLF>.<CRLF>`, then [`Session::data_end`].
    Data,
    /// Exactly `size` octets, then [`Session::bdat_chunk`]; `keep` false means discard them
    /// (the chunk is refused but must still be read off the wire, RFC 3030 §2).
    Bdat { size: u64, last: bool, keep: bool },
    /// Perform the TLS handshake, then [`Session::tls_established`].
    StartTls,
    /// Close the connection after sending the replies.
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub replies: Vec<Reply>,
    pub next: Next,
}

impl Response {
    fn one(reply: Reply) -> Self {
        Self {
            replies: vec![reply],
            next: Next::Command,
        }
    }
    fn close(reply: Reply) -> Self {
        Self {
            replies: vec![reply],
            next: Next::Close,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Greeting {
    None,
    Helo,
    Ehlo,
}

/// Why a message is being refused while its bytes are still read off the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Over `max_message_size` (552 5.3.4).
    TooBig,
    /// The in-flight byte budget could not cover it (452 4.3.1).
    NoMemory,
}

/// The mail transaction in progress (between MAIL and the end of DATA/BDAT LAST).
#[derive(Debug)]
struct Transaction {
    mail_from: Option<Address>,
    /// SPF verdicts taken at MAIL (inbound, when sender authentication applies).
    spf: Option<SpfChecks>,
    params: MailParams,
    recipients: Vec<AcceptedRecipient>,
    /// BDAT chunks received so far; `None` until the first BDAT.
    bdat: Option<BytesMut>,
    /// Set when a chunk (BDAT) or the data (DATA) is refused: the rest is read and refused
    /// until LAST (BDAT) or the final dot (DATA).
    refused: Option<Refusal>,
    /// The message's bytes against the in-flight budget.
    reservation: Reservation,
}

impl Transaction {
    /// Refuses the message: what is held is dropped and its budget given back now, not
    /// when the client gets around to the end of it.
    fn refuse(&mut self, why: Refusal) {
        self.refused = Some(why);
        if let Some(b) = self.bdat.as_mut() {
            *b = BytesMut::new();
        }
        self.reservation.release();
    }
}

/// Submission mode: who logged in, and the SASL exchange in progress.
struct Submission {
    auth: Authenticator,
    account: Option<Account>,
    sasl: Option<Exchange>,
    /// Failed AUTH attempts on this connection.
    failures: u32,
}

pub struct Session {
    cfg: Arc<SessionConfig>,
    pipeline: Pipeline,
    remote_ip: IpAddr,
    tls: Option<String>,
    greeting: Greeting,
    helo: String,
    tx: Option<Transaction>,
    errors: u32,
    messages: u32,
    id_counter: u32,
    session_id: String,
    submission: Option<Submission>,
}

impl Session {
    pub fn new(cfg: Arc<SessionConfig>, pipeline: Pipeline, remote_ip: IpAddr) -> Self {
        Self {
            cfg,
            pipeline,
            remote_ip,
            tls: None,
            greeting: Greeting::None,
            helo: String::new(),
            tx: None,
            errors: 0,
            messages: 0,
            id_counter: 0,
            session_id: format!("{:010X}", rand::random::<u64>() & 0xff_ffff_ffff),
            submission: None,
        }
    }

    /// Turns this into a submission session (ports 587 and 465): logins through `auth`.
    pub fn enable_submission(&mut self, auth: Authenticator) {
        self.submission = Some(Submission {
            auth,
            account: None,
            sasl: None,
            failures: 0,
        });
    }

    /// The authenticated account, in submission mode.
    pub fn account(&self) -> Option<&Account> {
        self.submission.as_ref().and_then(|s| s.account.as_ref())
    }

    /// The first reply of the connection.
    pub fn greeting(&self) -> Reply {
        Reply::new(220, "", format!("{} ESMTP Mailfleet", self.cfg.hostname))
    }

    /// Marks the connection as TLS from the start (implicit-TLS listener).
    pub fn set_tls(&mut self, description: String) {
        self.tls = Some(description);
    }

    /// The protocol this session counts under in the metrics.
    pub fn metrics_protocol(&self) -> mailfleet_telemetry::Protocol {
        if self.submission.is_some() {
            mailfleet_telemetry::Protocol::Submission
        } else {
            mailfleet_telemetry::Protocol::Smtp
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether a mail transaction is open (graceful shutdown lets it finish).
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 §4.2).
    pub fn tls_established(&mut self, description: String) {
        self.tls = Some(description);
        self.greeting = Greeting::None;
        self.helo.clear();
        self.tx = None;
        // RFC 3207 §4.2: everything learnt before TLS is forgotten, a login included.
        if let Some(sub) = self.submission.as_mut() {
            sub.account = None;
            sub.sasl = None;
        }
    }

    /// Counts a client error; past the limit the connection is closed with 421.
    fn error(&mut self, reply: Reply) -> Response {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            return Response {
                replies: vec![reply, Reply::too_many_errors()],
                next: Next::Close,
            };
        }
        Response::one(reply)
    }

    /// A command line longer than the limit was read and discarded.
    pub fn line_too_long(&mut self) -> Response {
        if let Some(sub) = self.submission.as_mut() {
            sub.sasl = None;
        }
        self.error(Reply::line_too_long())
    }

    /// One command line (without its line end) and its reply, counted in `mailfleet_commands_total` under its verb
    /// (a SASL response line under AUTH) and the class of its last reply. DATA's 354 and a
    /// BDAT chunk's wait are not counted here: the command counts once, when the message
    /// is answered ([`Self::data_end`], [`Self::bdat_chunk`]).
    pub async fn command_line(&mut self, line: &[u8]) -> Response {
        let started = std::time::Instant::now();
        let table = self.command_metrics();
        let cmd = if self.submission.as_ref().is_some_and(|s| s.sasl.is_some()) {
            table.command("AUTH")
        } else {
            table.command_of_line(line)
        };
        let response = self.command_line_inner(line).await;
        let data_started = matches!(response.next, Next::Data | Next::Bdat { .. });
        if let (Some(last), false) = (response.replies.last(), data_started) {
            table.record(cmd, SmtpReplyClass::from_code(last.code), started.elapsed());
        }
        response
    }

    /// Counts the answer to a message's data (end of DATA, a BDAT chunk).
    fn record_data_reply(&self, verb: &str, started: std::time::Instant, response: &Response) {
        let table = self.command_metrics();
        if let Some(last) = response.replies.last() {
            table.record(
                table.command(verb),
                SmtpReplyClass::from_code(last.code),
                started.elapsed(),
            );
        }
    }

    fn command_metrics(&self) -> &'static mailfleet_telemetry::CommandTable<SmtpReplyClass> {
        mailfleet_telemetry::metrics().smtp_commands(self.submission.is_some())
    }

    fn message_metrics(&self) -> &'static mailfleet_telemetry::SmtpMessageMetrics {
        mailfleet_telemetry::metrics().messages(self.submission.is_some())
    }

    async fn command_line_inner(&mut self, line: &[u8]) -> Response {
        // A line during an AUTH exchange is a SASL response, not a command.
        if let Some(mut exchange) = self.submission.as_mut().and_then(|s| s.sasl.take()) {
            let step = exchange.step(line);
            return self.sasl_step(exchange, step).await;
        }
        let cmd = match Command::parse(line) {
            Ok(c) => c,
            Err(CommandError::Unrecognized) => return self.error(Reply::unrecognized()),
            Err(CommandError::Syntax(why)) => return self.error(Reply::syntax(why)),
            Err(CommandError::BadAddress(why)) => {
                return self.error(Reply::new(
                    553,
                    "5.1.3",
                    format!("Bad address syntax: {why}"),
                ))
            }
            Err(CommandError::UnsupportedParam(p)) => {
                return self.error(Reply::new(
                    555,
                    "5.5.4",
                    format!("Unsupported parameter {}", truncate(&p, 64)),
                ))
            }
        };
        match cmd {
            Command::Ehlo(domain) => self.ehlo(domain, true),
            Command::Helo(domain) => self.ehlo(domain, false),
            Command::Mail(path, params) => self.mail(path, params).await,
            Command::Rcpt(path, params) => self.rcpt(path, params).await,
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.tx = None;
                Response::one(Reply::ok())
            }
            Command::Noop => Response::one(Reply::ok()),
            Command::Quit => Response::close(Reply::new(221, "2.0.0", "Bye")),
            Command::Help => Response::one(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP STARTTLS AUTH",
            )),
            Command::Vrfy => Response::one(Reply::new(
                252,
                "2.5.2",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn => self.error(Reply::new(502, "5.5.1", "EXPN not available")),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial).await,
        }
    }

    /// RFC 4954 AUTH.
    async fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Response {
        let Some(sub) = self.submission.as_ref() else {
            return self.error(Reply::new(
                503,
                "5.5.1",
                "Error: authentication not enabled",
            ));
        };
        if sub.account.is_some() {
            return self.error(Reply::bad_sequence("Already authenticated"));
        }
        if self.greeting != Greeting::Ehlo {
            return self.error(Reply::bad_sequence("Send EHLO first"));
        }
        if self.tx.is_some() {
            return self.error(Reply::bad_sequence(
                "AUTH not permitted during a mail transaction",
            ));
        }
        if self.tls.is_none() {
            // RFC 4954 §6 and RFC 8314: no password crosses the network in the clear.
            return self.error(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
        }
        let Ok(mechanism) = Mechanism::parse(mechanism) else {
            return self.error(Reply::new(504, "5.5.4", "Unrecognized authentication type"));
        };
        let (exchange, step) = Exchange::start(mechanism, initial.as_deref().map(str::as_bytes));
        self.sasl_step(exchange, step).await
    }

    async fn sasl_step(&mut self, exchange: Exchange, step: Step) -> Response {
        match step {
            Step::Challenge(c) => {
                if let Some(sub) = self.submission.as_mut() {
                    sub.sasl = Some(exchange);
                }
                Response::one(Reply::new(334, "", c))
            }
            Step::Done(creds) => {
                let mechanism = exchange.mechanism().metrics();
                self.login(&creds.username, &creds.password, mechanism)
                    .await
            }
            Step::Failed(SaslError::Cancelled) => {
                self.error(Reply::new(501, "5.7.0", "Authentication cancelled"))
            }
            Step::Failed(SaslError::BadBase64) => {
                self.auth_failed(Reply::new(501, "5.5.2", "Cannot decode the response"))
            }
            Step::Failed(_) => self.auth_failed(Reply::new(
                535,
                "5.7.8",
                "Authentication credentials invalid",
            )),
        }
    }

    async fn login(
        &mut self,
        username: &str,
        password: &str,
        mechanism: mailfleet_telemetry::Mechanism,
    ) -> Response {
        let Some(auth) = self.submission.as_ref().map(|s| s.auth.clone()) else {
            return self.error(Reply::new(
                503,
                "5.5.1",
                "Error: authentication not enabled",
            ));
        };
        let req = LoginRequest {
            username,
            password,
            remote_ip: self.remote_ip,
            protocol: Protocol::Submission,
            mechanism,
        };
        match auth.authenticate(req).await {
            Ok(account) => {
                if let Some(sub) = self.submission.as_mut() {
                    sub.account = Some(account);
                }
                Response::one(Reply::new(235, "2.7.0", "Authentication successful"))
            }
            Err(AuthError::InvalidCredentials) => self.auth_failed(Reply::new(
                535,
                "5.7.8",
                "Authentication credentials invalid",
            )),
            Err(AuthError::Throttled { retry_after }) => self.auth_failed(Reply::new(
                454,
                "4.7.0",
                format!(
                    "Too many failed logins; try again in {} seconds",
                    retry_after.as_secs().max(1)
                ),
            )),
            // RFC 4954 §6: "525 5.7.13 User Account Disabled".
            Err(AuthError::Disabled(why)) => Response::one(Reply::new(
                525,
                "5.7.13",
                format!("User account disabled: {why}"),
            )),
            Err(AuthError::TemporaryFailure(e)) => {
                tracing::warn!(error = %e, "submission authentication unavailable");
                Response::one(Reply::new(454, "4.7.0", "Temporary authentication failure"))
            }
        }
    }

    /// Counts a failed AUTH; at `auth.max_attempts_per_connection` the connection closes.
    fn auth_failed(&mut self, reply: Reply) -> Response {
        let Some(sub) = self.submission.as_mut() else {
            return self.error(reply);
        };
        sub.failures += 1;
        if sub.failures >= sub.auth.policy().max_attempts_per_connection {
            return Response {
                replies: vec![
                    reply,
                    Reply::new(421, "4.7.0", "Too many failed authentication attempts"),
                ],
                next: Next::Close,
            };
        }
        self.error(reply)
    }

    fn ehlo(&mut self, domain: String, extended: bool) -> Response {
        self.tx = None;
        self.helo = domain;
        self.greeting = if extended {
            Greeting::Ehlo
        } else {
            Greeting::Helo
        };
        let first = format!(
            "{} Hello {} [{}]",
            self.cfg.hostname, self.helo, self.remote_ip
        );
        if !extended {
            return Response::one(Reply::new(250, "", first));
        }
        let mut lines = vec![
            first,
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
        ];
        if self.cfg.starttls && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        if self.submission.is_some() && self.tls.is_some() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        if self.submission.is_some() {
            // RFC 3461: the outbound queue keeps NOTIFY/RET/ENVID/ORCPT for its DSNs.
            lines.push("DSN".into());
        }
        lines.push("HELP".into());
        Response::one(Reply::multiline(250, lines))
    }

    fn starttls(&mut self) -> Response {
        if self.tls.is_some() {
            return self.error(Reply::bad_sequence("Already using TLS"));
        }
        if !self.cfg.starttls {
            return self.error(Reply::new(454, "4.7.0", "TLS not available"));
        }
        Response {
            replies: vec![Reply::new(220, "2.0.0", "Ready to start TLS")],
            next: Next::StartTls,
        }
    }

    async fn mail(&mut self, path: Path, params: MailParams) -> Response {
        if self.greeting == Greeting::None {
            return self.error(Reply::bad_sequence("Send EHLO or HELO first"));
        }
        if self.tx.is_some() {
            return self.error(Reply::bad_sequence("Nested MAIL command"));
        }
        if self.messages >= self.cfg.max_messages {
            return Response::close(Reply::new(
                421,
                "4.7.0",
                "Too many messages in one session, try again",
            ));
        }
        let ip_limit = self.cfg.max_messages_per_ip_per_minute;
        if self.submission.is_none() && ip_limit > 0 {
            // Counted in the coordinator, so the limit holds across front-ends. When the
            // coordinator cannot count, the sender is asked to come back rather than let
            // through unmetered.
            match self.pipeline.count_client_transaction(self.remote_ip).await {
                Ok(n) if n > u64::from(ip_limit) => {
                    mailfleet_telemetry::metrics()
                        .rate_limit_hit(mailfleet_telemetry::RateLimit::SmtpClient);
                    return Response::one(Reply::new(
                        450,
                        "4.7.1",
                        format!("Too many messages from {}, try again later", self.remote_ip),
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "client rate count failed");
                    return Response::one(Reply::temp_failure());
                }
            }
        }
        if let Some(sub) = &self.submission {
            let Some(account) = sub.account.clone() else {
                return self.error(Reply::new(530, "5.7.0", "Authentication required"));
            };
            if let Path::Address(a) = &path {
                match self.pipeline.sender_allowed(&account, a).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return self.error(Reply::new(
                            553,
                            "5.7.1",
                            format!(
                                "<{}>: Sender address rejected: not owned by user {}",
                                truncate(&a.to_string(), 256),
                                account.address
                            ),
                        ))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sender check failed");
                        return Response::one(Reply::temp_failure());
                    }
                }
            }
        }
        if params.has_dsn() && self.submission.is_none() {
            return self.error(Reply::new(
                555,
                "5.5.4",
                "DSN parameters are accepted on submission only",
            ));
        }
        if params.smtputf8 && self.greeting != Greeting::Ehlo {
            return self.error(Reply::new(555, "5.5.4", "SMTPUTF8 requires EHLO"));
        }
        if let Some(size) = params.size {
            if size > self.cfg.max_message_size as u64 {
                return self.error(Reply::new(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                ));
            }
        }
        // The declared size is taken from the budget now, as Postfix checks queue space at
        // MAIL: a sender told 452 here has sent nothing it must send again. Not an error:
        // the client did nothing wrong.
        let declared = params.size.map_or(0, |s| s as usize);
        let reservation = match self.pipeline.inflight().try_reserve(declared) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(error = %e, "MAIL refused: in-flight budget");
                return Response::one(Reply::insufficient_resources());
            }
        };
        let mail_from = match path {
            Path::Null => None,
            Path::Postmaster => return self.error(Reply::syntax("bad sender")),
            Path::Address(a) => {
                if a.is_utf8() && !params.smtputf8 {
                    return self.error(Reply::new(
                        553,
                        "5.6.7",
                        "Internationalized address requires SMTPUTF8",
                    ));
                }
                Some(a)
            }
        };
        // SPF at MAIL (RFC 7208 §2.4): a temporary DNS failure is 451, never a pass.
        let spf = if self.submission.is_none() {
            match self
                .pipeline
                .check_spf(self.remote_ip, &self.helo, mail_from.as_ref())
                .await
            {
                None => None,
                Some(Ok(checks)) => Some(checks),
                Some(Err(SpfRefusal::TempError(why))) => {
                    return Response::one(Reply::new(451, "4.4.3", why));
                }
                Some(Err(SpfRefusal::Fail(why))) => {
                    return self.error(Reply::new(550, "5.7.23", why));
                }
            }
        } else {
            None
        };
        self.tx = Some(Transaction {
            spf,
            mail_from,
            params,
            recipients: Vec::new(),
            bdat: None,
            refused: None,
            reservation,
        });
        Response::one(Reply::new(250, "2.1.0", "Sender OK"))
    }

    async fn rcpt(&mut self, path: Path, params: RcptParams) -> Response {
        let Some(tx) = self.tx.as_ref() else {
            return self.error(Reply::bad_sequence("Need MAIL before RCPT"));
        };
        if tx.bdat.is_some() {
            return self.error(Reply::bad_sequence("RCPT after BDAT"));
        }
        if (params.notify.is_some() || params.orcpt.is_some()) && self.submission.is_none() {
            return self.error(Reply::new(
                555,
                "5.5.4",
                "DSN parameters are accepted on submission only",
            ));
        }
        if tx.recipients.len() >= self.cfg.max_recipients {
            // Not counted as an error: the client follows the protocol, and RFC 5321
            // §4.5.3.1.10 expects it to send the rest in another transaction.
            return Response::one(Reply::new(452, "4.5.3", "Too many recipients"));
        }
        let addr = match path {
            Path::Address(a) => a,
            Path::Postmaster => {
                match Address::parse(&format!("postmaster@{}", self.cfg.hostname)) {
                    Ok(a) => a,
                    Err(_) => return self.error(Reply::new(550, "5.1.1", "No postmaster here")),
                }
            }
            Path::Null => return self.error(Reply::syntax("empty recipient")),
        };
        if addr.is_utf8() && !tx.params.smtputf8 {
            return self.error(Reply::new(
                553,
                "5.6.7",
                "Internationalized address requires SMTPUTF8",
            ));
        }
        if tx.recipients.iter().any(|r| r.address == addr) {
            return Response::one(Reply::new(250, "2.1.5", "Recipient OK (duplicate)"));
        }
        let size = tx.params.size;
        let verdict = if self.account().is_some() {
            self.pipeline.check_submission_recipient(&addr, size).await
        } else {
            self.pipeline.check_recipient(&addr, size).await
        };
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "recipient lookup failed");
                return Response::one(Reply::temp_failure());
            }
        };
        match verdict {
            RcptVerdict::Accept(targets) => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.recipients.push(AcceptedRecipient {
                        address: addr,
                        targets,
                        remote: false,
                        dsn: params,
                    });
                }
                Response::one(Reply::new(250, "2.1.5", "Recipient OK"))
            }
            RcptVerdict::Remote => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.recipients.push(AcceptedRecipient {
                        address: addr,
                        targets: Vec::new(),
                        remote: true,
                        dsn: params,
                    });
                }
                Response::one(Reply::new(250, "2.1.5", "Recipient OK"))
            }
            RcptVerdict::UnknownUser => self.error(Reply::new(
                550,
                "5.1.1",
                format!(
                    "<{}>: Recipient address rejected: User unknown",
                    truncate(&addr.to_string(), 256)
                ),
            )),
            RcptVerdict::RelayDenied => self.error(Reply::new(
                554,
                "5.7.1",
                format!(
                    "<{}>: Relay access denied",
                    truncate(&addr.to_string(), 256)
                ),
            )),
            RcptVerdict::MailboxFull => {
                Response::one(Reply::new(452, "4.2.2", "Mailbox full, try again later"))
            }
            RcptVerdict::WontFit => self.error(Reply::new(
                552,
                "5.2.2",
                "Message exceeds the recipient's storage quota",
            )),
        }
    }

    fn data(&mut self) -> Response {
        match &self.tx {
            None => self.error(Reply::bad_sequence("Need MAIL command")),
            Some(tx) if tx.bdat.is_some() => self.error(Reply::bad_sequence("DATA after BDAT")),
            Some(tx) if tx.recipients.is_empty() => {
                self.error(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => Response {
                replies: vec![Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")],
                next: Next::Data,
            },
        }
    }

    /// Bytes to allocate for the message up front: the declared `SIZE=`, already reserved.
    pub fn message_size_hint(&self) -> usize {
        self.tx
            .as_ref()
            .and_then(|tx| tx.params.size)
            .map_or(0, |s| (s as usize).min(self.cfg.max_message_size))
    }

    /// DATA is about to hold `total` bytes of message: grows the transaction's reservation
    /// to cover them. `false` means the budget is spent: the caller drops what it holds
    /// and reads the rest to the final dot, and [`Self::data_end`] answers `452 4.3.1`.
    pub fn reserve_message_bytes(&mut self, total: usize) -> bool {
        let Some(tx) = self.tx.as_mut() else {
            return false;
        };
        if tx.refused.is_some() {
            return false;
        }
        match tx.reservation.try_grow_to(total) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(error = %e, "message refused: in-flight budget");
                tx.refuse(Refusal::NoMemory);
                false
            }
        }
    }

    /// DATA ended (or overflowed, or was dropped for want of memory). Delivers the message
    /// and answers.
    pub async fn data_end(&mut self, end: DataEnd) -> Response {
        let started = std::time::Instant::now();
        let response = self.data_end_inner(end).await;
        self.record_data_reply("DATA", started, &response);
        response
    }

    async fn data_end_inner(&mut self, end: DataEnd) -> Response {
        let Some(tx) = self.tx.take() else {
            return self.error(Reply::bad_sequence("No transaction"));
        };
        match (end, tx.refused) {
            (_, Some(Refusal::NoMemory)) => {
                self.message_metrics().refused(MessageRefusal::NoMemory);
                Response::one(Reply::insufficient_resources())
            }
            (DataEnd::TooBig, _) => {
                self.message_metrics().refused(MessageRefusal::TooBig);
                self.error(Reply::new(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                ))
            }
            (DataEnd::Complete(raw), _) => self.finish(tx, raw).await,
        }
    }

    /// BDAT: decides whether the chunk will be kept before a byte of it is read, and takes
    /// its size from the budget then, so a refused chunk is never held.
    fn bdat(&mut self, size: u64, last: bool) -> Response {
        let max = self.cfg.max_message_size as u64;
        let keep = match self.tx.as_mut() {
            Some(tx) if !tx.recipients.is_empty() && tx.refused.is_none() => {
                let so_far = tx.bdat.as_ref().map_or(0, |b| b.len() as u64);
                let total = so_far.saturating_add(size);
                if total > max {
                    tx.refuse(Refusal::TooBig);
                    false
                } else if let Err(e) = tx.reservation.try_grow_to(total as usize) {
                    tracing::info!(error = %e, "BDAT chunk refused: in-flight budget");
                    tx.refuse(Refusal::NoMemory);
                    false
                } else {
                    true
                }
            }
            _ => false,
        };
        Response {
            replies: vec![],
            next: Next::Bdat { size, last, keep },
        }
    }

    /// A BDAT chunk was read: `data` is `None` when it was discarded.
    pub async fn bdat_chunk(&mut self, data: Option<BytesMut>, last: bool) -> Response {
        let started = std::time::Instant::now();
        let response = self.bdat_chunk_inner(data, last).await;
        self.record_data_reply("BDAT", started, &response);
        response
    }

    async fn bdat_chunk_inner(&mut self, data: Option<BytesMut>, last: bool) -> Response {
        let Some(tx) = self.tx.as_mut() else {
            return self.error(Reply::bad_sequence("Need MAIL command"));
        };
        if tx.recipients.is_empty() {
            return self.error(Reply::new(554, "5.5.1", "No valid recipients"));
        }
        let Some(chunk) = data.filter(|_| tx.refused.is_none()) else {
            let why = tx.refused.unwrap_or(Refusal::TooBig);
            tx.refuse(why);
            tx.bdat.get_or_insert_with(BytesMut::new);
            if last {
                self.tx = None;
                self.message_metrics().refused(match why {
                    Refusal::NoMemory => MessageRefusal::NoMemory,
                    Refusal::TooBig => MessageRefusal::TooBig,
                });
            }
            return match why {
                Refusal::NoMemory => Response::one(Reply::insufficient_resources()),
                Refusal::TooBig => self.error(Reply::new(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                )),
            };
        };
        let n = chunk.len();
        match tx.bdat.as_mut() {
            // The first chunk becomes the message buffer; later ones are appended.
            Some(buf) => buf.unsplit(chunk),
            None => tx.bdat = Some(chunk),
        }
        if !last {
            return Response::one(Reply::new(250, "2.0.0", format!("{n} octets received")));
        }
        let Some(mut tx) = self.tx.take() else {
            return self.error(Reply::bad_sequence("No transaction"));
        };
        let raw = tx.bdat.take().unwrap_or_default();
        self.finish(tx, raw).await
    }

    fn protocol(&self, smtputf8: bool) -> String {
        let base = match (self.greeting, smtputf8) {
            (Greeting::Ehlo, true) => "UTF8SMTP",
            (Greeting::Ehlo, false) => "ESMTP",
            _ => "SMTP",
        };
        // RFC 3848: S for TLS, A for an authenticated client (ESMTPSA).
        let tls = if self.tls.is_some() { "S" } else { "" };
        let auth = if self.account().is_some() { "A" } else { "" };
        format!("{base}{tls}{auth}")
    }

    async fn finish(&mut self, tx: Transaction, raw: BytesMut) -> Response {
        // Held until the pipeline has handed the message off (or refused it).
        let _reservation = tx.reservation;
        self.id_counter += 1;
        let id = format!("{}{:02X}", self.session_id, self.id_counter);
        // Each message is a trace of its own (a session may carry many), linked to the
        // session's span; its context is stored with the message so that the delivery
        // attempt and an IMAP FETCH elsewhere continue it.
        let span = tracing::debug_span!(
            parent: None,
            "smtp.message",
            otel.name = "smtp message",
            otel.kind = "server",
            smtp.queue_id = %id,
            smtp.recipients = tx.recipients.len() as i64,
            smtp.submission = self.account().is_some(),
            network.peer.address = %self.remote_ip,
        );
        mailfleet_telemetry::trace::link_span(&span, &tracing::Span::current());
        let trace = mailfleet_telemetry::trace::traceparent_or_new(&span);
        let env = Envelope {
            trace,
            mail_from: tx.mail_from,
            recipients: tx.recipients,
            helo: self.helo.clone(),
            remote_ip: self.remote_ip,
            protocol: self.protocol(tx.params.smtputf8),
            tls: self.tls.clone(),
            id: id.clone(),
            submitter: self.account().cloned(),
            envid: tx.params.envid.clone(),
            ret: tx.params.ret.clone(),
            spf: tx.spf,
        };
        let bytes = raw.len();
        let started = std::time::Instant::now();
        let result = self.pipeline.accept(&env, raw).instrument(span).await;
        let metrics = self.message_metrics();
        let outcome = match &result {
            Ok(()) => "accepted",
            Err(
                PipelineError::Store(_)
                | PipelineError::Delivery(_)
                | PipelineError::AuthTempFail(_)
                | PipelineError::FilterTempFail(_),
            ) => "deferred",
            Err(_) => "refused",
        };
        // The one log line per transaction (docs/operations.md, "Log events").
        tracing::info!(
            queue_id = %id,
            trace_id = mailfleet_telemetry::trace::trace_id_of(&env.trace),
            client = %self.remote_ip,
            helo = %env.helo,
            from = %env.mail_from.as_ref().map(|a| a.to_string()).unwrap_or_default(),
            recipients = env.recipients.len(),
            size = bytes,
            protocol = %env.protocol,
            user = env.submitter.as_ref().map(|a| a.address.as_str()).unwrap_or(""),
            result = outcome,
            error = result.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "smtp transaction"
        );
        match &result {
            Ok(()) => metrics.accepted(bytes, started.elapsed()),
            Err(e) => metrics.refused(match e {
                PipelineError::Loop(_) => MessageRefusal::Loop,
                PipelineError::Quota(_) => MessageRefusal::Quota,
                PipelineError::Header(_) => MessageRefusal::MalformedHeader,
                PipelineError::SenderNotOwned(_) => MessageRefusal::SenderNotOwned,
                PipelineError::AuthReject(_) => MessageRefusal::SenderAuthentication,
                PipelineError::FilterReject(..) | PipelineError::RulesReject(_) => {
                    MessageRefusal::Content
                }
                PipelineError::Store(_)
                | PipelineError::Delivery(_)
                | PipelineError::AuthTempFail(_)
                | PipelineError::FilterTempFail(_) => MessageRefusal::TemporaryFailure,
            }),
        }
        match result {
            Ok(()) => {
                self.messages += 1;
                Response::one(Reply::new(250, "2.0.0", format!("Ok: queued as {id}")))
            }
            Err(PipelineError::Loop(n)) => self.error(Reply::new(
                554,
                "5.4.6",
                format!("Too many hops ({n}): mail loop detected"),
            )),
            Err(PipelineError::Quota(_)) => self.error(Reply::new(
                552,
                "5.2.2",
                "Message exceeds the recipient's storage quota",
            )),
            Err(PipelineError::Header(e)) => self.error(Reply::new(
                554,
                "5.6.0",
                format!("Message header is malformed: {e}"),
            )),
            Err(PipelineError::SenderNotOwned(from)) => self.error(Reply::new(
                550,
                "5.7.1",
                format!(
                    "From address {} is not owned by the authenticated user",
                    truncate(&from, 256)
                ),
            )),
            Err(PipelineError::AuthReject(why)) => {
                self.error(Reply::new(550, "5.7.1", truncate(&why, 400)))
            }
            Err(PipelineError::AuthTempFail(why)) => {
                Response::one(Reply::new(451, "4.4.3", truncate(&why, 400)))
            }
            Err(PipelineError::FilterReject(code, enhanced, why)) => {
                self.error(Reply::new(code, enhanced, truncate(&why, 400)))
            }
            Err(PipelineError::FilterTempFail(why)) => {
                Response::one(Reply::new(451, "4.7.1", truncate(&why, 400)))
            }
            // The reason is the user's own text (Sieve `reject`): ASCII on one line only.
            Err(PipelineError::RulesReject(why)) => {
                let text: String = why
                    .chars()
                    .map(|c| {
                        if c.is_ascii_graphic() || c == ' ' {
                            c
                        } else {
                            ' '
                        }
                    })
                    .collect();
                self.error(Reply::new(550, "5.7.1", truncate(text.trim(), 400)))
            }
            Err(e) => {
                tracing::error!(%id, error = %e, "delivery failed; message not accepted");
                Response::one(Reply::temp_failure())
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
