//! The IMAP session as a state machine, free of sockets.
//!
//! The connection driver ([`crate::conn`]) decodes commands with imap-codec and calls
//! [`Session::handle`]; the session answers with responses and says what the driver does next
//! ([`Next`]): read another command, run the STARTTLS handshake, wait for AUTHENTICATE data,
//! enter IDLE, or close. Commands live in `commands/`, one file per family.

use crate::response::{self, Resp};
use crate::selected::Selected;
use async_trait::async_trait;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::response::{Capability, Data};
use mailfleet_storage::{Account, AccountId, MailboxId, Stores};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Checks credentials for LOGIN and AUTHENTICATE. Implemented by the auth service; a trait
/// so the session is tested without it.
#[async_trait]
pub trait LoginService: Send + Sync + 'static {
    async fn login(
        &self,
        username: &str,
        password: &str,
        remote_ip: IpAddr,
    ) -> Result<Account, LoginError>;

    /// [`Self::login`], told how the client presented the credentials (the production
    /// service counts logins by mechanism; test doubles need not care).
    async fn login_with(
        &self,
        username: &str,
        password: &str,
        remote_ip: IpAddr,
        mechanism: mailfleet_telemetry::Mechanism,
    ) -> Result<Account, LoginError> {
        let _ = mechanism;
        self.login(username, password, remote_ip).await
    }
}

/// The production login service: argon2id, app passwords, TOTP policy and throttling.
#[async_trait]
impl LoginService for mailfleet_auth::Authenticator {
    async fn login(
        &self,
        username: &str,
        password: &str,
        remote_ip: IpAddr,
    ) -> Result<Account, LoginError> {
        self.login_with(
            username,
            password,
            remote_ip,
            mailfleet_telemetry::Mechanism::ImapLogin,
        )
        .await
    }

    async fn login_with(
        &self,
        username: &str,
        password: &str,
        remote_ip: IpAddr,
        mechanism: mailfleet_telemetry::Mechanism,
    ) -> Result<Account, LoginError> {
        let req = mailfleet_auth::LoginRequest {
            username,
            password,
            remote_ip,
            protocol: mailfleet_auth::Protocol::Imap,
            mechanism,
        };
        self.authenticate(req).await.map_err(|e| match e {
            mailfleet_auth::AuthError::InvalidCredentials => LoginError::Invalid,
            mailfleet_auth::AuthError::Throttled { .. } => LoginError::Throttled,
            mailfleet_auth::AuthError::TemporaryFailure(_) => LoginError::Unavailable,
            mailfleet_auth::AuthError::Disabled(why) => LoginError::Disabled(why),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("invalid credentials")]
    Invalid,
    #[error("too many failed logins, try again later")]
    Throttled,
    #[error("authentication temporarily unavailable")]
    Unavailable,
    #[error("{0}")]
    Disabled(mailfleet_auth::Disabled),
}

/// Counts open sessions per account on this node, so one user cannot take every
/// connection slot (Dovecot's `mail_max_userip_connections` plays the same role).
#[derive(Debug, Default)]
pub struct UserSessions {
    max: usize,
    counts: std::sync::Mutex<std::collections::HashMap<mailfleet_storage::AccountId, usize>>,
}

impl UserSessions {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Default::default(),
        })
    }

    /// A slot for one more session of `account`, or `None` at the limit.
    pub fn acquire(self: &Arc<Self>, account: mailfleet_storage::AccountId) -> Option<SessionSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(account).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SessionSlot {
            owner: self.clone(),
            account,
        })
    }
}

/// Held while a session is logged in; releases its slot when dropped.
#[derive(Debug)]
pub struct SessionSlot {
    owner: Arc<UserSessions>,
    account: mailfleet_storage::AccountId,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.account);
            }
        }
    }
}

/// Session limits and identity, from `[imap]` configuration.
#[derive(Clone, Debug)]
pub struct ImapConfig {
    pub hostname: String,
    /// Whether STARTTLS is offered (a certificate is configured).
    pub starttls: bool,
    /// Whether LOGIN / AUTHENTICATE PLAIN are allowed without TLS.
    pub plaintext_auth_without_tls: bool,
    /// Largest APPEND literal.
    pub max_message_size: usize,
    /// Failed logins on one connection before it is closed.
    pub max_failed_logins: u32,
    /// Inactivity before an authenticated session is logged out (RFC 9051 §5.4: ≥ 30 min).
    pub idle_timeout: Duration,
    /// Open sessions per account on this node.
    pub user_sessions: Arc<UserSessions>,
    /// Selected mailboxes' message lists, shared by this server's sessions.
    pub views: Arc<crate::views::SharedViews>,
    /// The built-in spam filter's settings, when it runs: moves into and out of Junk
    /// train the user's model ([`crate::junk`]).
    pub junk_training: Option<Arc<mailfleet_spam::SpamConfig>>,
}

/// What the driver does after sending the responses.
#[derive(Debug)]
pub enum Next {
    Command,
    StartTls,
    /// Send `+ ` and read one line of SASL data for AUTHENTICATE.
    AuthenticateData {
        tag: Tag<'static>,
    },
    /// A FETCH is in progress: write each batch of [`Session::fetch_step`] until it says
    /// it was the last, so the response is never held whole.
    Fetch,
    /// Send `+ idling` and wait for `DONE`, reporting changes as they happen.
    Idle {
        tag: Tag<'static>,
    },
    Close,
}

pub struct Outcome {
    pub responses: Vec<Resp>,
    pub next: Next,
}

impl Outcome {
    pub fn done(responses: Vec<Resp>) -> Self {
        Self {
            responses,
            next: Next::Command,
        }
    }
}

pub(crate) enum State {
    NotAuthenticated,
    Authenticated,
    Selected(Box<Selected>),
    Logout,
}

/// Extensions the client turned on with ENABLE (or implied by use).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Enabled {
    pub condstore: bool,
    pub qresync: bool,
    pub utf8: bool,
    /// ENABLE IMAP4rev2 (RFC 9051 §6.3.1): the session speaks IMAP4rev2 only, which has no
    /// `\Recent` and no RECENT response.
    pub rev2: bool,
}

pub struct Session {
    pub(crate) cfg: Arc<ImapConfig>,
    pub(crate) stores: Stores,
    pub(crate) login: Arc<dyn LoginService>,
    pub(crate) remote_ip: IpAddr,
    pub(crate) tls: bool,
    pub(crate) state: State,
    pub(crate) account: Option<Account>,
    pub(crate) enabled: Enabled,
    pub(crate) failed_logins: u32,
    pub(crate) slot: Option<SessionSlot>,
    /// The FETCH being streamed, between [`Next::Fetch`] and its last batch.
    pub(crate) fetch_job: Option<Box<crate::commands::fetch::FetchJob>>,
    /// Response bytes a FETCH batch may hold (see [`crate::commands::fetch::BATCH_OUTPUT_BYTES`]).
    pub(crate) fetch_batch_bytes: u64,
    /// NOTIFY SET in effect (RFC 5465), see [`crate::notify`].
    pub(crate) notify: Option<Box<crate::notify::Notify>>,
    /// SEARCHRES's saved result and the live CONTEXT=SEARCH updates.
    pub(crate) search_state: crate::commands::searchext::SearchState,
    /// Owners of the other accounts' mailboxes this session resolved (ACL, RFC 4314), so
    /// change notifications go to the owner's channel (see [`Session::owner_of`]).
    pub(crate) mailbox_owners: std::collections::HashMap<MailboxId, AccountId>,
    /// The user's rights on the selected mailbox (all, for an own mailbox).
    pub(crate) selected_rights: crate::commands::acl::Rights,
}

impl Session {
    pub fn new(
        cfg: Arc<ImapConfig>,
        stores: Stores,
        login: Arc<dyn LoginService>,
        remote_ip: IpAddr,
        tls: bool,
    ) -> Self {
        Self {
            cfg,
            stores,
            login,
            remote_ip,
            tls,
            state: State::NotAuthenticated,
            account: None,
            enabled: Enabled::default(),
            failed_logins: 0,
            slot: None,
            fetch_job: None,
            fetch_batch_bytes: crate::commands::fetch::BATCH_OUTPUT_BYTES,
            notify: None,
            search_state: Default::default(),
            mailbox_owners: Default::default(),
            selected_rights: crate::commands::acl::Rights::ALL,
        }
    }

    /// The greeting, with capabilities so clients can skip a CAPABILITY round trip.
    pub fn greeting(&self) -> Vec<u8> {
        let caps = self
            .capabilities()
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "* OK [CAPABILITY {caps}] {} Mailfleet IMAP ready\r\n",
            self.cfg.hostname
        )
        .into_bytes()
    }

    pub fn is_authenticated(&self) -> bool {
        self.account.is_some()
    }

    pub fn account(&self) -> Option<&Account> {
        self.account.as_ref()
    }

    /// The idle timeout in force: short before login, long after (RFC 9051 §5.4).
    pub fn inactivity_timeout(&self) -> Duration {
        if self.account.is_some() {
            self.cfg.idle_timeout
        } else {
            Duration::from_secs(60).min(self.cfg.idle_timeout)
        }
    }

    pub fn tls_established(&mut self) {
        self.tls = true;
    }

    pub(crate) fn plaintext_allowed(&self) -> bool {
        self.tls || self.cfg.plaintext_auth_without_tls
    }

    pub fn capabilities(&self) -> Vec<Capability<'static>> {
        use imap_codec::imap_types::auth::AuthMechanism;
        use imap_codec::imap_types::extensions::quota::Resource;
        use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;
        let mut caps = vec![Capability::Imap4Rev1, other("IMAP4rev2")];
        if self.account.is_none() {
            if self.cfg.starttls && !self.tls {
                caps.push(Capability::StartTls);
            }
            if self.plaintext_allowed() {
                caps.push(Capability::Auth(AuthMechanism::Plain));
            } else {
                caps.push(Capability::LoginDisabled);
            }
            caps.push(Capability::SaslIr);
        }
        // Before login only small non-synchronizing literals are accepted (RFC 7888 §4):
        // LITERAL- says so; LITERAL+ comes with the login.
        caps.push(if self.account.is_none() {
            Capability::LiteralMinus
        } else {
            Capability::LiteralPlus
        });
        caps.extend([
            Capability::Enable,
            Capability::Id,
            Capability::Idle,
            Capability::Namespace,
            Capability::Unselect,
            Capability::UidPlus,
            Capability::Move,
            Capability::CondStore,
            Capability::QResync,
            Capability::Sort(None),
            Capability::Thread(ThreadingAlgorithm::OrderedSubject),
            Capability::Thread(ThreadingAlgorithm::References),
            other("ESORT"),
            other("SEARCHRES"),
            other("CONTEXT=SEARCH"),
            other("CONTEXT=SORT"),
            other("PARTIAL"),
            Capability::Quota,
            Capability::QuotaRes(Resource::Storage),
            Capability::StatusSize,
            Capability::Binary,
            other("SPECIAL-USE"),
            other("CHILDREN"),
            other("ESEARCH"),
            Capability::ListExtended,
            other("LIST-STATUS"),
            Capability::Within,
            // RFC 4314: texk are the rights beyond RFC 2086's.
            other("ACL"),
            other("RIGHTS=texk"),
            // RFC 5464: mailbox and server annotations.
            Capability::Metadata,
        ]);
        if self.account.is_some() {
            // RFC 4978; handled by the connection driver (crate::conn), after login only.
            caps.push(Capability::Compress {
                algorithm:
                    imap_codec::imap_types::extensions::compress::CompressionAlgorithm::Deflate,
            });
            // RFC 5465, crate::notify; RFC 6855, crate::mutf7.
            caps.push(other("NOTIFY"));
        }
        caps.push(other("UTF8=ACCEPT"));
        // Message extensions (commands/msgext.rs, commands/message_ext.rs).
        caps.extend([
            other("MULTIAPPEND"),
            other("REPLACE"),
            other("UNAUTHENTICATE"),
            other("SAVEDATE"),
            other("PREVIEW"),
            // MAILBOXID, EMAILID, THREADID (RFC 8474; mailfleet_storage::object_id).
            other("OBJECTID"),
        ]);
        caps
    }

    /// Handles one decoded command.
    pub async fn handle(&mut self, cmd: Command<'static>) -> Outcome {
        let tag = cmd.tag.clone();
        let result = self.dispatch(cmd).await;
        match result {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "IMAP command failed on storage");
                Outcome::done(vec![response::no(
                    &tag,
                    response::code("UNAVAILABLE"),
                    "Temporary storage failure, try again",
                )])
            }
        }
    }

    async fn dispatch(
        &mut self,
        cmd: Command<'static>,
    ) -> Result<Outcome, mailfleet_storage::StoreError> {
        let tag = cmd.tag;
        // Commands valid in any state.
        match cmd.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                let caps =
                    imap_codec::imap_types::core::Vec1::try_from(caps).unwrap_or_else(|_| {
                        imap_codec::imap_types::core::Vec1::from(Capability::Imap4Rev1)
                    });
                Ok(Outcome::done(vec![
                    response::data(Data::Capability(caps)),
                    response::ok(&tag, None, "CAPABILITY completed"),
                ]))
            }
            CommandBody::Noop => self.noop(tag).await,
            CommandBody::Logout => {
                self.state = State::Logout;
                Ok(Outcome {
                    responses: vec![
                        response::bye("Mailfleet IMAP logging out"),
                        response::ok(&tag, None, "LOGOUT completed"),
                    ],
                    next: Next::Close,
                })
            }
            CommandBody::Id { .. } => Ok(self.id(tag)),
            body => self.dispatch_stateful(tag, body).await,
        }
    }

    async fn dispatch_stateful(
        &mut self,
        tag: Tag<'static>,
        body: CommandBody<'static>,
    ) -> Result<Outcome, mailfleet_storage::StoreError> {
        if self.account.is_none() {
            return Ok(match body {
                CommandBody::StartTLS => self.starttls(tag),
                CommandBody::Login { username, password } => {
                    self.cmd_login(tag, username, password).await
                }
                CommandBody::Authenticate {
                    mechanism,
                    initial_response,
                } => {
                    self.cmd_authenticate(tag, mechanism, initial_response)
                        .await
                }
                _ => Outcome::done(vec![response::bad(&tag, "Log in first")]),
            });
        }
        match body {
            CommandBody::StartTLS
            | CommandBody::Login { .. }
            | CommandBody::Authenticate { .. } => Ok(Outcome::done(vec![response::bad(
                &tag,
                "Already authenticated",
            )])),
            CommandBody::Enable { capabilities } => Ok(self.enable(tag, capabilities)),
            CommandBody::Namespace => Ok(self.namespace(tag)),
            CommandBody::Select {
                mailbox,
                parameters,
            } => {
                self.search_state.reset();
                self.select(tag, mailbox, parameters, false).await
            }
            CommandBody::Examine {
                mailbox,
                parameters,
            } => {
                self.search_state.reset();
                self.select(tag, mailbox, parameters, true).await
            }
            CommandBody::Create { mailbox } => self.create(tag, mailbox).await,
            CommandBody::Delete { mailbox } => self.delete(tag, mailbox).await,
            CommandBody::Rename { from, to } => self.rename(tag, from, to).await,
            CommandBody::Subscribe { mailbox } => self.subscribe(tag, mailbox, true).await,
            CommandBody::Unsubscribe { mailbox } => self.subscribe(tag, mailbox, false).await,
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(tag, reference, mailbox_wildcard, false).await,
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(tag, reference, mailbox_wildcard, true).await,
            // imap-codec parses `STATUS box ()`, but the grammar (status-att-list, RFC 9051
            // §9) needs at least one item, and Dovecot answers BAD too.
            CommandBody::Status { item_names, .. } if item_names.is_empty() => Ok(Outcome::done(
                vec![response::bad(&tag, "STATUS needs at least one item")],
            )),
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(tag, mailbox, item_names.into_owned()).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => self.append(tag, mailbox, flags, date, message).await,
            CommandBody::GetQuota { root } => self.get_quota(tag, root).await,
            CommandBody::GetQuotaRoot { mailbox } => self.get_quota_root(tag, mailbox).await,
            CommandBody::GetMetadata {
                options,
                mailbox,
                entries,
            } => self.get_metadata(tag, options, mailbox, entries).await,
            CommandBody::SetMetadata {
                mailbox,
                entry_values,
            } => self.set_metadata(tag, mailbox, entry_values).await,
            CommandBody::Idle => Ok(Outcome {
                responses: vec![],
                next: Next::Idle { tag },
            }),
            body => self.dispatch_selected(tag, body).await,
        }
    }

    async fn dispatch_selected(
        &mut self,
        tag: Tag<'static>,
        body: CommandBody<'static>,
    ) -> Result<Outcome, mailfleet_storage::StoreError> {
        if !matches!(self.state, State::Selected(_)) {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "No mailbox selected",
            )]));
        }
        match body {
            CommandBody::Check => self.noop(tag).await,
            CommandBody::Close => {
                self.search_state.reset();
                self.close(tag, true).await
            }
            CommandBody::Unselect => {
                self.search_state.reset();
                self.close(tag, false).await
            }
            CommandBody::Expunge => self.expunge(tag, None).await,
            CommandBody::ExpungeUid { sequence_set } => self.expunge(tag, Some(sequence_set)).await,
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                self.fetch(tag, sequence_set, macro_or_item_names, uid, modifiers)
                    .await
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                self.store(tag, sequence_set, kind, response, flags, uid, modifiers)
                    .await
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, sequence_set, mailbox, uid, false).await,
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(tag, sequence_set, mailbox, uid, true).await,
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => self.search(tag, charset, criteria, uid).await,
            CommandBody::Sort {
                sort_criteria,
                charset,
                search_criteria,
                uid,
            } => {
                self.sort(tag, sort_criteria, charset, search_criteria, uid)
                    .await
            }
            CommandBody::Thread {
                algorithm,
                charset,
                search_criteria,
                uid,
            } => {
                self.thread(tag, algorithm, charset, search_criteria, uid)
                    .await
            }
            _ => Ok(Outcome::done(vec![response::bad(
                &tag,
                "Command not supported",
            )])),
        }
    }

    /// NOOP and CHECK: report what changed since the last command.
    async fn noop(&mut self, tag: Tag<'static>) -> Result<Outcome, mailfleet_storage::StoreError> {
        let mut out = self.pending_updates(true).await?;
        out.push(response::ok(&tag, None, "NOOP completed"));
        Ok(Outcome::done(out))
    }

    /// Changes in the selected mailbox since the last report, as untagged responses.
    pub async fn pending_updates(
        &mut self,
        allow_expunge: bool,
    ) -> Result<Vec<Resp>, mailfleet_storage::StoreError> {
        let State::Selected(sel) = &mut self.state else {
            return Ok(vec![]);
        };
        let before = crate::commands::searchext::snapshot(&self.search_state, sel);
        let update = sel.refresh(&self.stores, allow_expunge).await?;
        let mut out = crate::commands::fetch::render_update(sel, &update, self.enabled);
        crate::commands::searchext::context_updates(
            &self.stores,
            sel,
            &mut self.search_state,
            &before,
            &mut out,
        )
        .await?;
        Ok(out)
    }

    /// Turns CONDSTORE on because a command used it (RFC 7162 §3.1: a "CONDSTORE enabling
    /// command"). True when this command is the one that enabled it with a mailbox
    /// selected: its completion must then carry `[HIGHESTMODSEQ n]` (RFC 7162 §3.1.2).
    pub(crate) fn enable_condstore(&mut self) -> bool {
        let newly = !self.enabled.condstore && matches!(self.state, State::Selected(_));
        self.enabled.condstore = true;
        newly
    }

    /// `[HIGHESTMODSEQ n]` of the selected mailbox, for the completion of the command that
    /// enabled CONDSTORE.
    pub(crate) fn highest_modseq_code(
        &self,
    ) -> Option<imap_codec::imap_types::response::Code<'static>> {
        let State::Selected(sel) = &self.state else {
            return None;
        };
        Some(imap_codec::imap_types::response::Code::HighestModSeq(
            std::num::NonZeroU64::new(sel.highest_modseq().0).unwrap_or(std::num::NonZeroU64::MIN),
        ))
    }

    /// The account the session is logged in as; commands past authentication only run
    /// with one.
    pub(crate) fn acct(&self) -> Result<&Account, mailfleet_storage::StoreError> {
        self.account
            .as_ref()
            .ok_or_else(|| mailfleet_storage::StoreError::Invalid("not authenticated".into()))
    }
}

pub(crate) fn other(name: &'static str) -> Capability<'static> {
    imap_codec::imap_types::core::Atom::try_from(name)
        .map(Capability::from)
        .unwrap_or(Capability::Imap4Rev1)
}

impl Session {
    /// A subscription to change notifications of the logged-in account (for IDLE).
    pub async fn change_subscription(&self) -> Option<mailfleet_storage::Subscription> {
        // Events are keyed by the mailbox owner's account: for a shared mailbox, the owner's.
        let account = match &self.state {
            State::Selected(sel) => self.owner_of(sel.id)?,
            _ => self.account.as_ref()?.id,
        };
        match self.stores.coord.subscribe(account).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to changes; IDLE falls back to polling");
                None
            }
        }
    }
}
