//! The ManageSieve session as a state machine, free of sockets (RFC 5804 §2).
//!
//! ```text
//! NOT AUTHENTICATED ──AUTHENTICATE──> AUTHENTICATED ──LOGOUT──> (close)
//!   │  ▲  STARTTLS: TLS, capabilities again      │
//!   │  └──────────── UNAUTHENTICATE ─────────────┘
//!   └──LOGOUT, too many errors or failed logins: close
//! ```
//!
//! The connection driver ([`crate::conn`]) hands every [`Frame`] to [`Session::frame`] and
//! sends what it is given. Logins go through the [`Authenticator`] (throttling, app
//! passwords, TOTP accounts, suspended accounts, the account's allowed protocols: IMAP's,
//! see `mailfleet_auth::Protocol::ManageSieve`). Scripts are kept with
//! [`mailfleet_storage::sieve_scripts`] in the account's scope; PUTSCRIPT and CHECKSCRIPT
//! compile with [`mailfleet_sieve::compile`] first and answer a compile error as
//! `NO "line N: ..."`.

use crate::proto::{self, Code, Command, CommandError, Frame, Token};
use mailfleet_auth::sasl::{self, Exchange, Mechanism, Step};
use mailfleet_auth::{AuthError, Authenticator, LoginRequest, Protocol};
use mailfleet_storage::sieve_scripts;
use mailfleet_storage::{Account, DataScope, StoreError, Stores};
use std::net::IpAddr;
use std::sync::Arc;
use tracing::Instrument;

/// Largest literal accepted before login: SASL responses only (base64 of at most
/// [`sasl::MAX_ENCODED`] characters).
pub const PREAUTH_MAX_LITERAL: usize = sasl::MAX_ENCODED + 64;

/// Session settings, from `[managesieve]`, `[auth]` and `[server]`.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub hostname: String,
    /// Whether STARTTLS can be offered (a certificate is configured and
    /// `managesieve.starttls`).
    pub starttls: bool,
    /// Whether AUTHENTICATE is allowed before TLS.
    pub allow_plaintext_auth: bool,
    pub max_errors: u32,
    /// Largest script, in bytes.
    pub max_script_size: usize,
}

impl SessionConfig {
    /// The compiler's limits: the defaults, with this listener's script size.
    pub fn sieve_limits(&self) -> mailfleet_sieve::Limits {
        mailfleet_sieve::Limits {
            max_script_bytes: self.max_script_size,
            ..mailfleet_sieve::Limits::default()
        }
    }
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
    fn nothing() -> Self {
        Self::one(Vec::new())
    }
}

enum State {
    NotAuthenticated {
        /// A SASL exchange waiting for the client's next string.
        sasl: Option<Exchange>,
    },
    Authenticated {
        account: Account,
    },
    Done,
}

pub struct Session {
    cfg: Arc<SessionConfig>,
    limits: mailfleet_sieve::Limits,
    stores: Stores,
    auth: Authenticator,
    remote_ip: IpAddr,
    tls: Option<String>,
    state: State,
    errors: u32,
    auth_failures: u32,
}

fn temporary(what: &str, e: &StoreError) -> Vec<u8> {
    tracing::warn!(error = %e, "ManageSieve: {what} failed");
    proto::no(
        Some(Code::TryLater),
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
        Self {
            limits: cfg.sieve_limits(),
            cfg,
            stores,
            auth,
            remote_ip,
            tls: None,
            state: State::NotAuthenticated { sasl: None },
            errors: 0,
            auth_failures: 0,
        }
    }

    /// The greeting: the capability listing and an OK (RFC 5804 §1.7).
    pub fn greeting(&self) -> Vec<u8> {
        let mut out = self.capabilities();
        out.extend(proto::ok(&format!(
            "{} Mailfleet ManageSieve ready",
            self.cfg.hostname
        )));
        out
    }

    /// The connection is TLS from the start (implicit-TLS listener).
    pub fn set_tls(&mut self, description: String) {
        self.tls = Some(description);
    }

    /// STARTTLS completed: the capabilities again, then OK (RFC 5804 §2.2).
    pub fn tls_established(&mut self, description: String) -> Vec<u8> {
        self.tls = Some(description);
        self.state = State::NotAuthenticated { sasl: None };
        let mut out = self.capabilities();
        out.extend(proto::ok("TLS negotiation successful"));
        out
    }

    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated { .. })
    }

    /// The largest literal to accept now: a script after login, a SASL response before.
    pub fn max_literal(&self) -> usize {
        if self.is_authenticated() {
            self.cfg.max_script_size
        } else {
            PREAUTH_MAX_LITERAL
        }
    }

    /// The idle timer ran out.
    pub fn timed_out(&self) -> Vec<u8> {
        proto::bye(None, "Idle for too long")
    }

    pub fn shutting_down(&self) -> Vec<u8> {
        proto::bye(
            Some(Code::TryLater),
            "Server shutting down, please reconnect",
        )
    }

    fn plaintext_ok(&self) -> bool {
        self.tls.is_some() || self.cfg.allow_plaintext_auth
    }

    fn capabilities(&self) -> Vec<u8> {
        let mut out = Vec::new();
        proto::capability_line(&mut out, "IMPLEMENTATION", Some("Mailfleet"));
        let sasl = match &self.state {
            State::NotAuthenticated { .. } if self.plaintext_ok() => "PLAIN LOGIN",
            _ => "",
        };
        proto::capability_line(&mut out, "SASL", Some(sasl));
        let sieve = mailfleet_sieve::CAPABILITIES.join(" ");
        proto::capability_line(&mut out, "SIEVE", Some(&sieve));
        if self.tls.is_none()
            && self.cfg.starttls
            && matches!(self.state, State::NotAuthenticated { .. })
        {
            proto::capability_line(&mut out, "STARTTLS", None);
        }
        proto::capability_line(
            &mut out,
            "MAXREDIRECTS",
            Some(&self.limits.max_redirects.to_string()),
        );
        if let State::Authenticated { account } = &self.state {
            proto::capability_line(&mut out, "OWNER", Some(&account.address));
        }
        proto::capability_line(&mut out, "UNAUTHENTICATE", None);
        proto::capability_line(&mut out, "VERSION", Some("1.0"));
        out
    }

    fn error(&mut self, data: Vec<u8>) -> Response {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.state = State::Done;
            let mut data = data;
            data.extend(proto::bye(None, "Too many errors, closing connection"));
            return Response::close(data);
        }
        Response::one(data)
    }

    /// One frame from the client and its answer.
    pub async fn frame(&mut self, frame: Frame) -> Response {
        if let State::NotAuthenticated { sasl } = &mut self.state {
            if let Some(exchange) = sasl.take() {
                return self.sasl_response(exchange, frame).await;
            }
        }
        let tokens = match frame {
            Frame::Command(t) if t.is_empty() => return Response::nothing(),
            Frame::Command(t) => t,
            Frame::TooLong => return self.error(proto::no(None, "Line too long")),
            Frame::LiteralTooLarge(size) => {
                return self.error(proto::no(
                    Some(Code::QuotaMaxSize),
                    &format!(
                        "A {size}-octet string is larger than the {}-octet limit",
                        self.max_literal()
                    ),
                ))
            }
            Frame::Syntax(why) => return self.error(proto::no(None, why)),
        };
        let cmd = match Command::parse(tokens) {
            Ok(c) => c,
            Err(CommandError::Unknown) => return self.error(proto::no(None, "Unknown command")),
            Err(CommandError::Syntax(why)) => return self.error(proto::no(None, why)),
        };
        let name = cmd.name();
        let span = tracing::debug_span!(
            "managesieve.command",
            otel.name = name,
            managesieve.command = name,
        );
        self.command(cmd).instrument(span).await
    }

    async fn command(&mut self, cmd: Command) -> Response {
        match cmd {
            Command::Capability => {
                let mut out = self.capabilities();
                out.extend(proto::ok("Capability completed"));
                Response::one(out)
            }
            Command::Logout => {
                self.state = State::Done;
                Response::close(proto::ok("Logout completed"))
            }
            Command::Noop(tag) => Response::one(proto::response(
                proto::Status::Ok,
                tag.map(Code::Tag),
                "Done",
            )),
            Command::StartTls => {
                if self.tls.is_some() {
                    return self.error(proto::no(None, "Already using TLS"));
                }
                if self.is_authenticated() {
                    return self.error(proto::no(None, "STARTTLS is only allowed before login"));
                }
                if !self.cfg.starttls {
                    return self.error(proto::no(None, "TLS not available"));
                }
                Response {
                    data: proto::ok("Begin TLS negotiation now"),
                    next: Next::StartTls,
                }
            }
            Command::Authenticate { mechanism, initial } => {
                if self.is_authenticated() {
                    return self.error(proto::no(None, "Already authenticated"));
                }
                let Ok(mechanism) = Mechanism::parse(&mechanism) else {
                    return self.error(proto::no(None, "Unsupported SASL mechanism"));
                };
                if !self.plaintext_ok() {
                    return self.error(proto::no(
                        Some(Code::EncryptNeeded),
                        "Authentication needs an encrypted connection; use STARTTLS first",
                    ));
                }
                let (exchange, step) = Exchange::start(mechanism, initial.as_deref());
                self.sasl_step(exchange, step).await
            }
            Command::Unauthenticate => {
                if !self.is_authenticated() {
                    return self.error(proto::no(None, "Not authenticated"));
                }
                self.state = State::NotAuthenticated { sasl: None };
                Response::one(proto::ok("Unauthenticate completed"))
            }
            other => {
                let State::Authenticated { account } = &self.state else {
                    return self.error(proto::no(None, "Authenticate first"));
                };
                let scope = DataScope::Account(account.id);
                self.scripts(scope, other).await
            }
        }
    }

    async fn sasl_response(&mut self, exchange: Exchange, frame: Frame) -> Response {
        let mut exchange = exchange;
        match frame {
            Frame::Command(tokens) => match tokens.as_slice() {
                [Token::Str(s)] => {
                    let step = exchange.step(s);
                    self.sasl_step(exchange, step).await
                }
                _ => self.auth_failed(proto::no(None, "Malformed SASL response")),
            },
            Frame::TooLong | Frame::LiteralTooLarge(_) | Frame::Syntax(_) => {
                self.auth_failed(proto::no(None, "Malformed SASL response"))
            }
        }
    }

    async fn sasl_step(&mut self, exchange: Exchange, step: Step) -> Response {
        match step {
            Step::Challenge(c) => {
                if let State::NotAuthenticated { sasl } = &mut self.state {
                    *sasl = Some(exchange);
                }
                let mut out = proto::string(c.as_bytes());
                out.extend_from_slice(b"\r\n");
                Response::one(out)
            }
            Step::Done(creds) => {
                let mechanism = exchange.mechanism().metrics();
                self.login(&creds.username, &creds.password, mechanism)
                    .await
            }
            Step::Failed(sasl::SaslError::Cancelled) => {
                Response::one(proto::no(None, "Authentication cancelled"))
            }
            Step::Failed(e) => {
                tracing::debug!(error = %e, "ManageSieve SASL exchange failed");
                self.auth_failed(proto::no(None, "Authentication failed"))
            }
        }
    }

    /// Counts a failed login; past the per-connection limit the connection is closed.
    fn auth_failed(&mut self, data: Vec<u8>) -> Response {
        self.auth_failures += 1;
        if self.auth_failures >= self.auth.policy().max_attempts_per_connection {
            self.state = State::Done;
            let mut data = data;
            data.extend(proto::bye(None, "Too many failed authentication attempts"));
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
            protocol: Protocol::ManageSieve,
            mechanism,
        };
        match self.auth.authenticate(req).await {
            Ok(account) => {
                tracing::info!(account = %account.address, "ManageSieve login");
                self.state = State::Authenticated { account };
                Response::one(proto::ok("Logged in"))
            }
            Err(AuthError::InvalidCredentials) => {
                self.auth_failed(proto::no(None, "Authentication failed"))
            }
            Err(AuthError::Throttled { retry_after }) => self.auth_failed(proto::no(
                Some(Code::TryLater),
                &format!(
                    "Too many failed logins; try again in {} seconds",
                    retry_after.as_secs().max(1)
                ),
            )),
            Err(AuthError::Disabled(why)) => Response::one(proto::no(
                None,
                match why {
                    mailfleet_auth::Disabled::Suspended => "Account is suspended",
                    mailfleet_auth::Disabled::ProtocolNotEnabled => {
                        "ManageSieve (IMAP) is not enabled for this account"
                    }
                },
            )),
            Err(AuthError::TemporaryFailure(e)) => {
                tracing::warn!(error = %e, "ManageSieve authentication unavailable");
                Response::one(proto::no(
                    Some(Code::TryLater),
                    "Temporary authentication failure, please try again later",
                ))
            }
        }
    }

    /// Compiles a script; the NO to send when it does not compile.
    fn check(&self, script: Vec<u8>) -> Result<String, Vec<u8>> {
        if script.len() > self.cfg.max_script_size {
            return Err(proto::no(
                Some(Code::QuotaMaxSize),
                &format!(
                    "Script is larger than the {}-octet limit",
                    self.cfg.max_script_size
                ),
            ));
        }
        let Ok(source) = String::from_utf8(script) else {
            return Err(proto::no(None, "Script is not valid UTF-8"));
        };
        match mailfleet_sieve::compile(&source, &self.limits) {
            Ok(_) => Ok(source),
            Err(e) => Err(proto::no(None, &e.to_string())),
        }
    }

    async fn scripts(&mut self, scope: DataScope, cmd: Command) -> Response {
        let meta = self.stores.meta.clone();
        let meta = meta.as_ref();
        match cmd {
            Command::HaveSpace { name, size } => {
                if sieve_scripts::validate_name(&name).is_err() {
                    return Response::one(proto::no(None, "Invalid script name"));
                }
                if size > self.cfg.max_script_size as u64 {
                    return Response::one(proto::no(
                        Some(Code::QuotaMaxSize),
                        &format!(
                            "Script is larger than the {}-octet limit",
                            self.cfg.max_script_size
                        ),
                    ));
                }
                match sieve_scripts::list(meta, scope).await {
                    Ok(list)
                        if list.len() >= sieve_scripts::MAX_SCRIPTS
                            && !list.iter().any(|s| s.name == name) =>
                    {
                        Response::one(proto::no(
                            Some(Code::QuotaMaxScripts),
                            &format!("At most {} scripts", sieve_scripts::MAX_SCRIPTS),
                        ))
                    }
                    Ok(_) => Response::one(proto::ok("Putscript would succeed")),
                    Err(e) => Response::one(temporary("list", &e)),
                }
            }
            Command::PutScript { name, script } => {
                if sieve_scripts::validate_name(&name).is_err() {
                    return Response::one(proto::no(None, "Invalid script name"));
                }
                let source = match self.check(script) {
                    Ok(s) => s,
                    Err(no) => return Response::one(no),
                };
                match sieve_scripts::put(meta, scope, &name, &source).await {
                    Ok(()) => Response::one(proto::ok("Putscript completed")),
                    Err(StoreError::QuotaExceeded(_)) => Response::one(proto::no(
                        Some(Code::QuotaMaxScripts),
                        &format!("At most {} scripts", sieve_scripts::MAX_SCRIPTS),
                    )),
                    Err(StoreError::Invalid(_)) => {
                        Response::one(proto::no(None, "Invalid script name"))
                    }
                    Err(e) => Response::one(temporary("put", &e)),
                }
            }
            Command::CheckScript(script) => match self.check(script) {
                Ok(_) => Response::one(proto::ok("Script is valid")),
                Err(no) => Response::one(no),
            },
            Command::ListScripts => match sieve_scripts::list(meta, scope).await {
                Ok(list) => {
                    let mut out = Vec::new();
                    for s in list {
                        out.extend(proto::string(s.name.as_bytes()));
                        if s.active {
                            out.extend_from_slice(b" ACTIVE");
                        }
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend(proto::ok("Listscripts completed"));
                    Response::one(out)
                }
                Err(e) => Response::one(temporary("list", &e)),
            },
            Command::SetActive(name) => {
                let target = (!name.is_empty()).then_some(name.as_str());
                match sieve_scripts::set_active(meta, scope, target).await {
                    Ok(()) if target.is_none() => Response::one(proto::ok("No script is active")),
                    Ok(()) => Response::one(proto::ok("Setactive completed")),
                    Err(e) => Response::one(self.not_found_or(e, "setactive")),
                }
            }
            Command::GetScript(name) => match sieve_scripts::get(meta, scope, &name).await {
                Ok(Some(s)) => {
                    let mut out = format!("{{{}}}\r\n", s.source.len()).into_bytes();
                    out.extend_from_slice(s.source.as_bytes());
                    out.extend_from_slice(b"\r\n");
                    out.extend(proto::ok("Getscript completed"));
                    Response::one(out)
                }
                Ok(None) => Response::one(no_such_script()),
                Err(e) => Response::one(self.not_found_or(e, "get")),
            },
            Command::DeleteScript(name) => match sieve_scripts::delete(meta, scope, &name).await {
                Ok(()) => Response::one(proto::ok("Deletescript completed")),
                Err(StoreError::Conflict(_)) => Response::one(proto::no(
                    Some(Code::Active),
                    "The active script cannot be deleted; deactivate it first",
                )),
                Err(e) => Response::one(self.not_found_or(e, "delete")),
            },
            Command::RenameScript { from, to } => {
                match sieve_scripts::rename(meta, scope, &from, &to).await {
                    Ok(()) => Response::one(proto::ok("Renamescript completed")),
                    Err(StoreError::Conflict(_)) => Response::one(proto::no(
                        Some(Code::AlreadyExists),
                        "A script with the new name already exists",
                    )),
                    Err(e) => Response::one(self.not_found_or(e, "rename")),
                }
            }
            Command::Authenticate { .. }
            | Command::StartTls
            | Command::Logout
            | Command::Capability
            | Command::Noop(_)
            | Command::Unauthenticate => Response::one(proto::no(None, "Unexpected command")),
        }
    }

    fn not_found_or(&self, e: StoreError, what: &str) -> Vec<u8> {
        match e {
            StoreError::NotFound(_) => no_such_script(),
            StoreError::Invalid(_) => proto::no(None, "Invalid script name"),
            e => temporary(what, &e),
        }
    }
}

fn no_such_script() -> Vec<u8> {
    proto::no(Some(Code::NonExistent), "There is no script by that name")
}
