//! The POP3 session as a state machine, free of sockets (RFC 1939 §3-§6).
//!
//! ```text
//! AUTHORIZATION ──USER/PASS, AUTH──> TRANSACTION ──QUIT──> UPDATE (expunge, then close)
//!       │                                 │
//!       └──QUIT: close                    └──EOF, timeout, shutdown, lost lock: close,
//!                                             nothing deleted
//! ```
//!
//! The connection driver ([`crate::conn`]) calls [`Session::line`] for every client line
//! and [`Session::renew_lease`] on a timer, and sends what it is given. Storage is reached
//! only through the [`Stores`] traits, and logins only through the [`Authenticator`].
//!
//! **One session per maildrop.** After a successful login the session takes the
//! Coordinator lease `pop3:maildrop:<account id>` ([`LEASE_TTL`], renewed every
//! [`LEASE_RENEW_EVERY`]); a second login gets `-ERR [IN-USE]`. Before QUIT expunges, the
//! lease is renewed once more: a session whose lease lapsed (another session may now own
//! the maildrop) deletes nothing.
//!
//! **Limits.** `max_errors` bad commands close the connection; `max_attempts_per_connection`
//! failed logins (from `[auth]`) close it; a maildrop lists at most `max_messages` messages.

use crate::maildrop::{Lookup, Maildrop};
use crate::proto::{self, Code, Command, CommandError};
use mailfleet_auth::sasl::{self, Exchange, Mechanism, Step};
use mailfleet_auth::{AuthError, Authenticator, LoginRequest, Protocol};
use mailfleet_storage::coord::MailboxEvent;
use mailfleet_storage::{Account, Lease, StoreError, Stores, Uid};
use mailfleet_telemetry::CommandResult;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long the maildrop lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often a live session renews it (a third of the TTL: two renewals may fail).
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(20);
/// Messages read per store call while taking the snapshot.
const LIST_PAGE: usize = 1000;

/// Session settings, from `[pop3]`, `[auth]` and `[server]`.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub hostname: String,
    /// Whether STLS can be offered (a certificate is configured and `pop3.starttls`).
    pub starttls: bool,
    /// Whether USER/PASS and AUTH are allowed before TLS.
    pub allow_plaintext_auth: bool,
    pub max_errors: u32,
    pub max_messages: usize,
}

/// What the driver does after sending the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Command,
    /// Perform the TLS handshake, then [`Session::tls_established`].
    StartTls,
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub data: Vec<u8>,
    pub next: Next,
}

impl Response {
    fn one(data: Vec<u8>) -> Self {
        Self {
            data,
            next: Next::Command,
        }
    }
    fn close(data: Vec<u8>) -> Self {
        Self {
            data,
            next: Next::Close,
        }
    }
}

enum State {
    Authorization {
        /// The name given by USER, waiting for PASS.
        user: Option<String>,
        /// A SASL exchange waiting for the client's next line.
        sasl: Option<Exchange>,
    },
    Transaction {
        maildrop: Maildrop,
        lease: Lease,
    },
    Done,
}

pub struct Session {
    cfg: Arc<SessionConfig>,
    stores: Stores,
    auth: Authenticator,
    remote_ip: IpAddr,
    tls: Option<String>,
    state: State,
    errors: u32,
    auth_failures: u32,
    /// This session's lease holder name.
    holder: String,
}

fn store_temp(what: &str, e: &StoreError) -> Vec<u8> {
    tracing::warn!(error = %e, "POP3: {what} failed");
    proto::err(
        Some(Code::SysTemp),
        "Temporary failure, please try again later",
    )
}

impl Session {
    pub fn new(
        cfg: Arc<SessionConfig>,
        stores: Stores,
        auth: Authenticator,
        remote_ip: IpAddr,
    ) -> Self {
        let holder = format!("pop3:{}:{:016x}", cfg.hostname, rand::random::<u64>());
        Self {
            cfg,
            stores,
            auth,
            remote_ip,
            tls: None,
            state: State::Authorization {
                user: None,
                sasl: None,
            },
            errors: 0,
            auth_failures: 0,
            holder,
        }
    }

    pub fn greeting(&self) -> Vec<u8> {
        proto::ok(&format!(
            "{} Mailfleet POP3 server ready",
            self.cfg.hostname
        ))
    }

    /// The connection is TLS from the start (implicit-TLS listener).
    pub fn set_tls(&mut self, description: String) {
        self.tls = Some(description);
    }

    /// STLS completed: the session starts over in AUTHORIZATION (RFC 2595 §4).
    pub fn tls_established(&mut self, description: String) {
        self.tls = Some(description);
        self.state = State::Authorization {
            user: None,
            sasl: None,
        };
    }

    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Transaction { .. })
    }

    pub fn holds_lease(&self) -> bool {
        matches!(self.state, State::Transaction { .. })
    }

    fn plaintext_ok(&self) -> bool {
        self.tls.is_some() || self.cfg.allow_plaintext_auth
    }

    fn error(&mut self, data: Vec<u8>) -> Response {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            return Response::close(proto::err(None, "Too many errors, closing connection"));
        }
        Response::one(data)
    }

    /// A line longer than the limit was read and thrown away.
    pub fn line_too_long(&mut self) -> Response {
        if let State::Authorization { sasl, .. } = &mut self.state {
            *sasl = None;
        }
        self.error(proto::err(None, "Line too long"))
    }

    /// The autologout timer ran out (RFC 1939 §3): close without entering UPDATE.
    pub fn timed_out(&self) -> Vec<u8> {
        proto::err(None, "Autologout; idle for too long")
    }

    pub fn shutting_down(&self) -> Vec<u8> {
        proto::err(
            Some(Code::SysTemp),
            "Server shutting down, please reconnect",
        )
    }

    pub fn lease_lost(&self) -> Vec<u8> {
        proto::err(
            Some(Code::SysTemp),
            "Maildrop lock lost; no messages were deleted",
        )
    }

    /// Renews the maildrop lease; false when it was lost (the driver then closes).
    pub async fn renew_lease(&mut self) -> bool {
        let State::Transaction { lease, .. } = &self.state else {
            return true;
        };
        match self.stores.coord.renew_lease(lease, LEASE_TTL).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(key = %lease.key, "POP3 maildrop lease lost");
                self.state = State::Done;
                false
            }
            Err(e) => {
                // A coordinator hiccup is not a lost lease yet; the next tick retries, and
                // QUIT renews before it deletes anything.
                tracing::warn!(error = %e, "POP3 lease renewal failed");
                true
            }
        }
    }

    /// The session is over without QUIT (EOF, timeout, shutdown): nothing is deleted; the
    /// lease is released so the next session need not wait for it to lapse.
    pub async fn finish(&mut self) {
        if let State::Transaction { lease, .. } = std::mem::replace(&mut self.state, State::Done) {
            if let Err(e) = self.stores.coord.release_lease(&lease).await {
                tracing::warn!(error = %e, "POP3 lease release failed");
            }
        }
    }

    /// One client line (without its line end) and its answer, counted in `mailfleet_commands_total` under its
    /// command name (a SASL response line under AUTH) and its status; a `+ ` continuation
    /// is not an answer and is not counted.
    pub async fn line(&mut self, line: &[u8]) -> Response {
        let started = std::time::Instant::now();
        let table = &mailfleet_telemetry::metrics().pop3;
        let cmd = if matches!(&self.state, State::Authorization { sasl: Some(_), .. }) {
            table.command("AUTH")
        } else {
            table.command_of_line(line)
        };
        let name = table.label(cmd);
        let span = tracing::debug_span!(
            "pop3.command",
            otel.name = name,
            pop3.command = name,
            pop3.status = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let response = self.line_inner(line).instrument(span.clone()).await;
        let status = if response.data.starts_with(b"+OK") {
            Some(mailfleet_telemetry::Pop3Status::Ok)
        } else if response.data.starts_with(b"-ERR") {
            Some(mailfleet_telemetry::Pop3Status::Err)
        } else {
            None
        };
        if let Some(status) = status {
            table.record(cmd, status, started.elapsed());
            span.record("pop3.status", status.label());
            if status != mailfleet_telemetry::Pop3Status::Ok {
                span.record("otel.status_code", "ERROR");
            }
        }
        response
    }

    async fn line_inner(&mut self, line: &[u8]) -> Response {
        if let State::Authorization { sasl, .. } = &mut self.state {
            if let Some(mut exchange) = sasl.take() {
                let step = exchange.step(line);
                return self.sasl_step(exchange, step).await;
            }
        }
        let cmd = match Command::parse(line) {
            Ok(c) => c,
            Err(CommandError::Unknown) => return self.error(proto::err(None, "Unknown command")),
            Err(CommandError::Syntax(why)) => return self.error(proto::err(None, why)),
        };
        match &self.state {
            State::Authorization { .. } => self.authorization(cmd).await,
            State::Transaction { .. } => self.transaction(cmd).await,
            State::Done => Response::close(proto::err(None, "Session is over")),
        }
    }

    fn capabilities(&self) -> Vec<&'static str> {
        let mut caps = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
        if matches!(self.state, State::Authorization { .. }) {
            if self.plaintext_ok() {
                caps.push("USER");
                caps.push("SASL PLAIN LOGIN");
            }
            if self.tls.is_none() && self.cfg.starttls {
                caps.push("STLS");
            }
        }
        caps.push("IMPLEMENTATION Mailfleet");
        caps
    }

    async fn authorization(&mut self, cmd: Command) -> Response {
        match cmd {
            Command::Capa => Response::one(proto::multiline(
                "Capability list follows",
                self.capabilities(),
            )),
            Command::Quit => {
                self.state = State::Done;
                Response::close(proto::ok("Mailfleet POP3 server signing off"))
            }
            Command::Stls => {
                if self.tls.is_some() {
                    return self.error(proto::err(None, "Already using TLS"));
                }
                if !self.cfg.starttls {
                    return self.error(proto::err(None, "TLS not available"));
                }
                Response {
                    data: proto::ok("Begin TLS negotiation"),
                    next: Next::StartTls,
                }
            }
            Command::User(name) => {
                if !self.plaintext_ok() {
                    return self.error(plaintext_refused());
                }
                if let State::Authorization { user, .. } = &mut self.state {
                    *user = Some(name);
                }
                Response::one(proto::ok("Send your password"))
            }
            Command::Pass(password) => {
                let user = match &mut self.state {
                    State::Authorization { user, .. } => user.take(),
                    _ => None,
                };
                match user {
                    None => self.error(proto::err(None, "USER first")),
                    Some(_) if !self.plaintext_ok() => self.error(plaintext_refused()),
                    Some(name) => {
                        self.login(&name, &password, mailfleet_telemetry::Mechanism::UserPass)
                            .await
                    }
                }
            }
            Command::Auth(None) => {
                let mechs: Vec<&str> = if self.plaintext_ok() {
                    vec![Mechanism::Plain.name(), Mechanism::Login.name()]
                } else {
                    vec![]
                };
                Response::one(proto::multiline("Supported mechanisms follow", mechs))
            }
            Command::Auth(Some((mech, initial))) => {
                let mechanism = match Mechanism::parse(&mech) {
                    Ok(m) => m,
                    Err(_) => {
                        return self.error(proto::err(None, "Unsupported authentication mechanism"))
                    }
                };
                if !self.plaintext_ok() {
                    return self.error(plaintext_refused());
                }
                let (exchange, step) =
                    Exchange::start(mechanism, initial.as_deref().map(str::as_bytes));
                self.sasl_step(exchange, step).await
            }
            Command::Apop => self.error(proto::err(
                None,
                "APOP is not supported; use AUTH or USER/PASS over TLS",
            )),
            Command::Noop
            | Command::Stat
            | Command::List(_)
            | Command::Retr(_)
            | Command::Top(..)
            | Command::Dele(_)
            | Command::Rset
            | Command::Uidl(_) => self.error(proto::err(None, "Not authenticated")),
        }
    }

    async fn sasl_step(&mut self, exchange: Exchange, step: Step) -> Response {
        match step {
            Step::Challenge(c) => {
                if let State::Authorization { sasl, .. } = &mut self.state {
                    *sasl = Some(exchange);
                }
                Response::one(proto::continuation(&c))
            }
            Step::Done(creds) => {
                let mechanism = exchange.mechanism().metrics();
                self.login(&creds.username, &creds.password, mechanism)
                    .await
            }
            Step::Failed(sasl::SaslError::Cancelled) => {
                Response::one(proto::err(None, "Authentication cancelled"))
            }
            Step::Failed(e) => {
                tracing::debug!(error = %e, "POP3 SASL exchange failed");
                self.auth_failed(proto::err(Some(Code::Auth), "Authentication failed"))
            }
        }
    }

    /// Counts a failed login; past the per-connection limit the connection is closed.
    fn auth_failed(&mut self, data: Vec<u8>) -> Response {
        self.auth_failures += 1;
        if self.auth_failures >= self.auth.policy().max_attempts_per_connection {
            self.state = State::Done;
            return Response::close(data);
        }
        Response::one(data)
    }

    async fn login(
        &mut self,
        username: &str,
        password: &str,
        mechanism: mailfleet_telemetry::Mechanism,
    ) -> Response {
        let req = LoginRequest {
            username,
            password,
            remote_ip: self.remote_ip,
            protocol: Protocol::Pop3,
            mechanism,
        };
        match self.auth.authenticate(req).await {
            Ok(account) => self.open_maildrop(account).await,
            Err(AuthError::InvalidCredentials) => {
                self.auth_failed(proto::err(Some(Code::Auth), "Authentication failed"))
            }
            Err(AuthError::Throttled { retry_after }) => self.auth_failed(proto::err(
                Some(Code::SysTemp),
                &format!(
                    "Too many failed logins; try again in {} seconds",
                    retry_after.as_secs().max(1)
                ),
            )),
            Err(AuthError::Disabled(why)) => Response::one(proto::err(
                Some(Code::Auth),
                match why {
                    mailfleet_auth::Disabled::Suspended => "Account is suspended",
                    mailfleet_auth::Disabled::ProtocolNotEnabled => {
                        "POP3 is not enabled for this account"
                    }
                },
            )),
            Err(AuthError::TemporaryFailure(e)) => {
                tracing::warn!(error = %e, "POP3 authentication unavailable");
                Response::one(proto::err(
                    Some(Code::SysTemp),
                    "Temporary authentication failure, please try again later",
                ))
            }
        }
    }

    /// Locks the maildrop and takes the snapshot (RFC 1939 §4: "the server acquires an
    /// exclusive-access lock on the maildrop").
    async fn open_maildrop(&mut self, account: Account) -> Response {
        let key = format!("pop3:maildrop:{}", account.id);
        let lease = match self
            .stores
            .coord
            .acquire_lease(&key, &self.holder, LEASE_TTL)
            .await
        {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Response::one(proto::err(
                    Some(Code::InUse),
                    "Maildrop is locked by another POP3 session",
                ))
            }
            Err(e) => return Response::one(store_temp("lease", &e)),
        };
        match self.snapshot(&account).await {
            Ok(maildrop) => {
                let (n, size) = maildrop.stat();
                self.state = State::Transaction { maildrop, lease };
                Response::one(proto::ok(&format!(
                    "Logged in; maildrop has {n} messages ({size} octets)"
                )))
            }
            Err(e) => {
                let _ = self.stores.coord.release_lease(&lease).await;
                Response::one(store_temp("maildrop snapshot", &e))
            }
        }
    }

    async fn snapshot(&self, account: &Account) -> Result<Maildrop, StoreError> {
        let inbox = self
            .stores
            .meta
            .get_mailbox(account.id, "INBOX")
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("INBOX of {}", account.address)))?;
        let mut messages = Vec::new();
        let mut after = Uid(0);
        while messages.len() < self.cfg.max_messages {
            let want = LIST_PAGE.min(self.cfg.max_messages - messages.len());
            let page = self
                .stores
                .meta
                .list_messages(inbox.id, after, want)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.uid;
            let short = page.len() < want;
            messages.extend(page);
            if short {
                break;
            }
        }
        Ok(Maildrop::new(
            account.id,
            inbox.id,
            inbox.uid_validity,
            messages,
        ))
    }

    fn maildrop(&mut self) -> Option<&mut Maildrop> {
        match &mut self.state {
            State::Transaction { maildrop, .. } => Some(maildrop),
            _ => None,
        }
    }

    async fn transaction(&mut self, cmd: Command) -> Response {
        let Some(drop) = self.maildrop() else {
            return Response::close(proto::err(None, "Session is over"));
        };
        match cmd {
            Command::Capa => Response::one(proto::multiline(
                "Capability list follows",
                self.capabilities(),
            )),
            Command::Stat => {
                let (n, size) = drop.stat();
                Response::one(format!("+OK {n} {size}\r\n").into_bytes())
            }
            Command::List(None) => {
                let (n, size) = drop.stat();
                let lines: Vec<String> = drop
                    .live()
                    .map(|(i, e)| format!("{i} {}", e.size))
                    .collect();
                Response::one(proto::multiline(
                    &format!("{n} messages ({size} octets)"),
                    lines,
                ))
            }
            Command::List(Some(n)) => match drop.get(n) {
                Ok(e) => Response::one(format!("+OK {n} {}\r\n", e.size).into_bytes()),
                Err(l) => self.lookup_error(l),
            },
            Command::Uidl(None) => {
                let lines: Vec<String> = drop
                    .live()
                    .map(|(i, e)| format!("{i} {}", drop.unique_id(e)))
                    .collect();
                Response::one(proto::multiline("Unique-ID listing follows", lines))
            }
            Command::Uidl(Some(n)) => match drop.get(n) {
                Ok(e) => Response::one(format!("+OK {n} {}\r\n", drop.unique_id(e)).into_bytes()),
                Err(l) => self.lookup_error(l),
            },
            Command::Retr(n) => self.send_message(n, None).await,
            Command::Top(n, lines) => self.send_message(n, Some(lines)).await,
            Command::Dele(n) => match drop.delete(n) {
                Ok(()) => Response::one(proto::ok(&format!("Message {n} deleted"))),
                Err(l) => self.lookup_error(l),
            },
            Command::Rset => {
                drop.reset();
                let (n, size) = drop.stat();
                Response::one(proto::ok(&format!(
                    "Maildrop has {n} messages ({size} octets)"
                )))
            }
            Command::Noop => Response::one(proto::ok("")),
            Command::Quit => self.update().await,
            Command::User(_) | Command::Pass(_) | Command::Auth(_) | Command::Apop => {
                self.error(proto::err(None, "Already authenticated"))
            }
            Command::Stls => self.error(proto::err(None, "STLS is only allowed before login")),
        }
    }

    fn lookup_error(&mut self, l: Lookup) -> Response {
        match l {
            Lookup::NoSuchMessage => self.error(proto::err(None, "No such message")),
            Lookup::Deleted => self.error(proto::err(None, "Message is deleted")),
        }
    }

    async fn send_message(&mut self, n: u32, body_lines: Option<u64>) -> Response {
        let Some(drop) = self.maildrop() else {
            return Response::close(proto::err(None, "Session is over"));
        };
        let (blob, size) = match drop.get(n) {
            Ok(e) => (e.blob.clone(), e.size),
            Err(l) => return self.lookup_error(l),
        };
        let bytes = match self.stores.blobs.get(&blob).await {
            Ok(b) => b,
            Err(StoreError::NotFound(_)) => {
                return Response::one(proto::err(
                    Some(Code::SysPerm),
                    "Message is no longer available",
                ))
            }
            Err(e) => return Response::one(store_temp("message read", &e)),
        };
        let mut data = match body_lines {
            None => proto::ok(&format!("{size} octets")),
            Some(_) => proto::ok("Top of message follows"),
        };
        proto::write_message(&mut data, &bytes, body_lines);
        Response::one(data)
    }

    /// QUIT in TRANSACTION: the UPDATE state. Deletions happen here and nowhere else.
    async fn update(&mut self) -> Response {
        let State::Transaction { maildrop, lease } =
            std::mem::replace(&mut self.state, State::Done)
        else {
            return Response::close(proto::err(None, "Session is over"));
        };
        let uids = maildrop.deleted_uids();
        let reply = if uids.is_empty() {
            let (n, _) = maildrop.stat();
            proto::ok(&format!(
                "Mailfleet POP3 server signing off ({n} messages left)"
            ))
        } else {
            self.expunge(&maildrop, &lease, &uids).await
        };
        if let Err(e) = self.stores.coord.release_lease(&lease).await {
            tracing::warn!(error = %e, "POP3 lease release failed");
        }
        Response::close(reply)
    }

    async fn expunge(&self, maildrop: &Maildrop, lease: &Lease, uids: &[Uid]) -> Vec<u8> {
        // Fencing: only the lease holder may delete; a session whose lease lapsed may be
        // racing a newer session on the same maildrop.
        match self.stores.coord.renew_lease(lease, LEASE_TTL).await {
            Ok(true) => {}
            Ok(false) => return self.lease_lost(),
            Err(e) => {
                return store_temp("lease renewal before expunge", &e);
            }
        }
        match self.stores.meta.expunge(maildrop.mailbox, uids).await {
            Ok(expunged) => {
                if let Some(modseq) = expunged.modseq {
                    // IMAP sessions (IDLE, NOOP) learn of the expunge at once.
                    let event = MailboxEvent::Changed {
                        account: maildrop.account,
                        mailbox: maildrop.mailbox,
                        modseq,
                    };
                    if let Err(e) = self.stores.coord.publish(event).await {
                        tracing::warn!(error = %e, "change notification failed");
                    }
                }
                let (left, _) = maildrop.stat();
                tracing::info!(
                    account = %maildrop.account,
                    deleted = expunged.uids.len(),
                    "POP3 update"
                );
                proto::ok(&format!(
                    "Mailfleet POP3 server signing off ({left} messages left)"
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, "POP3 expunge failed");
                proto::err(Some(Code::SysTemp), "Some deleted messages not removed")
            }
        }
    }
}

fn plaintext_refused() -> Vec<u8> {
    proto::err(
        Some(Code::Auth),
        "Plaintext authentication disallowed on non-secure connections; use STLS first",
    )
}
