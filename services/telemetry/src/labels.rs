//! The label values: every one is a `&'static str` from a fixed set, so the number of
//! series is bounded by this file and never by what clients send.

/// The front-end a connection, command or login belongs to (label `protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Smtp,
    Submission,
    Imap,
    Pop3,
    ManageSieve,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::Smtp,
        Protocol::Submission,
        Protocol::Imap,
        Protocol::Pop3,
        Protocol::ManageSieve,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Submission => "submission",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::ManageSieve => "managesieve",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether a login by `m` can happen on this protocol (the login series created at
    /// start-up, at zero).
    pub fn offers(self, m: Mechanism) -> bool {
        match m {
            Mechanism::Plain | Mechanism::SaslLogin => self != Protocol::Smtp,
            Mechanism::ImapLogin => self == Protocol::Imap,
            Mechanism::UserPass => self == Protocol::Pop3,
        }
    }
}

/// The kind of listener a connection came in on (label `listener`): the `listen` or the
/// `listen_tls` key. Addresses are not labels (a node may listen on many).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    Plain,
    ImplicitTls,
}

impl ListenerKind {
    pub fn from_implicit_tls(implicit: bool) -> Self {
        if implicit {
            ListenerKind::ImplicitTls
        } else {
            ListenerKind::Plain
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Plain => "plain",
            ListenerKind::ImplicitTls => "implicit_tls",
        }
    }
}

/// Why a connection was closed at accept time (label `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// The listener's `max_connections` is reached.
    MaxConnections,
    /// The client address holds its share (`server.max_connections_per_ip`).
    PerIp,
}

impl RefuseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::MaxConnections => "max_connections",
            RefuseReason::PerIp => "per_ip",
        }
    }
}

/// How a TLS handshake ended (labels `version` and `result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsOutcome {
    Tls12,
    Tls13,
    /// Any other negotiated version (rustls offers only 1.2 and 1.3 today).
    OtherVersion,
    Failed,
    TimedOut,
}

impl TlsOutcome {
    pub(crate) const ALL: [TlsOutcome; 5] = [
        TlsOutcome::Tls12,
        TlsOutcome::Tls13,
        TlsOutcome::OtherVersion,
        TlsOutcome::Failed,
        TlsOutcome::TimedOut,
    ];

    pub(crate) fn labels(self) -> (&'static str, &'static str) {
        match self {
            TlsOutcome::Tls12 => ("TLSv1.2", "success"),
            TlsOutcome::Tls13 => ("TLSv1.3", "success"),
            TlsOutcome::OtherVersion => ("other", "success"),
            TlsOutcome::Failed => ("none", "failure"),
            TlsOutcome::TimedOut => ("none", "timeout"),
        }
    }
}

/// How a client logged in (label `mechanism`): the SASL mechanism, or the protocol's own
/// command (IMAP `LOGIN`, POP3 `USER`/`PASS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// SASL PLAIN (RFC 4616), in IMAP AUTHENTICATE, SMTP AUTH or POP3 AUTH.
    Plain,
    /// SASL LOGIN (the draft mechanism Outlook still sends).
    SaslLogin,
    /// The IMAP `LOGIN` command.
    ImapLogin,
    /// POP3 `USER` then `PASS`.
    UserPass,
}

impl Mechanism {
    pub const ALL: [Mechanism; 4] = [
        Mechanism::Plain,
        Mechanism::SaslLogin,
        Mechanism::ImapLogin,
        Mechanism::UserPass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "plain",
            Mechanism::SaslLogin => "login",
            Mechanism::ImapLogin => "imap_login",
            Mechanism::UserPass => "user_pass",
        }
    }
}

/// The result of one login (label `result`). The server can tell these apart; the client
/// is told only "invalid credentials", so the split is for operators alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginResult {
    Success,
    /// The account exists and the password is wrong.
    BadPassword,
    /// No such account (what a guessing run mostly tries).
    UnknownUser,
    /// The main password of an account with two-factor authentication: an app password is
    /// required.
    SecondFactorRequired,
    /// Refused before checking: too many recent failures from the client's address.
    Throttled,
    /// Refused before checking: too many recent failures for the account, from anywhere
    /// (the account is locked until the window ends).
    Locked,
    /// Nothing was decided: a storage error.
    TemporaryFailure,
    /// The password was right, but the account is suspended or may not use this protocol.
    Disabled,
}

impl LoginResult {
    pub const ALL: [LoginResult; 8] = [
        LoginResult::Success,
        LoginResult::BadPassword,
        LoginResult::UnknownUser,
        LoginResult::SecondFactorRequired,
        LoginResult::Throttled,
        LoginResult::Locked,
        LoginResult::TemporaryFailure,
        LoginResult::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LoginResult::Success => "success",
            LoginResult::BadPassword => "bad_password",
            LoginResult::UnknownUser => "unknown_user",
            LoginResult::SecondFactorRequired => "second_factor_required",
            LoginResult::Throttled => "throttled",
            LoginResult::Locked => "locked",
            LoginResult::TemporaryFailure => "temporary_failure",
            LoginResult::Disabled => "disabled",
        }
    }
}

/// Why a complete message (end of DATA or last BDAT) was not accepted (label `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageRefusal {
    /// Over `smtp.max_message_size` (552 5.3.4).
    TooBig,
    /// Too many `Received:` fields (554 5.4.6).
    Loop,
    /// The recipient's quota (552 5.2.2).
    Quota,
    /// A header section that does not parse (554 5.6.0).
    MalformedHeader,
    /// Submission: a `From:` the user does not own (550 5.7.1).
    SenderNotOwned,
    /// Inbound: the sender domain's DMARC policy refuses it (550 5.7.1).
    SenderAuthentication,
    /// A virus (554 5.7.0) or spam (554 5.7.1) found by the content filters.
    Content,
    /// The process's in-flight byte budget is spent (452 4.3.1).
    NoMemory,
    /// Storage or delivery failed (451): the client retries.
    TemporaryFailure,
}

impl MessageRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageRefusal::TooBig => "too_big",
            MessageRefusal::Loop => "loop",
            MessageRefusal::Quota => "quota",
            MessageRefusal::MalformedHeader => "malformed_header",
            MessageRefusal::SenderNotOwned => "sender_not_owned",
            MessageRefusal::SenderAuthentication => "sender_authentication",
            MessageRefusal::Content => "content",
            MessageRefusal::NoMemory => "no_memory",
            MessageRefusal::TemporaryFailure => "temporary_failure",
        }
    }
}

/// The result of one outbound delivery attempt to one destination (label `result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered,
    Deferred,
    Bounced,
}

impl DeliveryResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryResult::Delivered => "delivered",
            DeliveryResult::Deferred => "deferred",
            DeliveryResult::Bounced => "bounced",
        }
    }
}

/// The transport security an outbound attempt ran under (label `tls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryTls {
    None,
    Opportunistic,
    MtaSts,
    Dane,
}

impl DeliveryTls {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryTls::None => "none",
            DeliveryTls::Opportunistic => "opportunistic",
            DeliveryTls::MtaSts => "mta_sts",
            DeliveryTls::Dane => "dane",
        }
    }
}

/// A limit a client or a destination ran into (label `limit` of
/// `mailfleet_rate_limit_hits_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimit {
    /// A login refused for too many failures from the client's address.
    LoginAddress,
    /// A login refused for too many failures on the account (it is locked for the window).
    LoginAccount,
    /// An SMTP transaction refused by `smtp.max_messages_per_ip_per_minute`.
    SmtpClient,
    /// An outbound attempt postponed by the per-destination rate.
    DeliveryDestinationRate,
    /// An outbound attempt postponed by the per-destination concurrency.
    DeliveryDestinationConcurrency,
}

impl RateLimit {
    pub const ALL: [RateLimit; 5] = [
        RateLimit::LoginAddress,
        RateLimit::LoginAccount,
        RateLimit::SmtpClient,
        RateLimit::DeliveryDestinationRate,
        RateLimit::DeliveryDestinationConcurrency,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RateLimit::LoginAddress => "login_address",
            RateLimit::LoginAccount => "login_account",
            RateLimit::SmtpClient => "smtp_client",
            RateLimit::DeliveryDestinationRate => "delivery_destination_rate",
            RateLimit::DeliveryDestinationConcurrency => "delivery_destination_concurrency",
        }
    }
}
