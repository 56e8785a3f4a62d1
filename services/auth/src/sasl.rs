//! SASL for protocol logins, without I/O: PLAIN (RFC 4616) and LOGIN
//! (draft-murchison-sasl-login), the two mechanisms every mail client offers.
//!
//! Protocols (SMTP AUTH, POP3 AUTH, IMAP AUTHENTICATE) frame the exchange their own way
//! but carry the same base64 payloads, so the exchange is a small state machine here:
//! [`Exchange::start`] with the mechanism and an optional initial response, then
//! [`Exchange::step`] with each client line, until [`Step::Done`] or [`Step::Failed`].
//! Nothing here panics on any input, and every size is capped:
//!
//! | Limit | Value | Why |
//! | --- | --- | --- |
//! | [`MAX_ENCODED`] | 4096 base64 characters | larger than any PLAIN message within the field limits |
//! | [`MAX_FIELD`] | 255 octets per field | RFC 4616 §2 lets servers cap authzid, authcid and password at 255 |

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use std::fmt;

/// Longest base64 client response accepted.
pub const MAX_ENCODED: usize = 4096;
/// Longest authzid, authcid or password, in octets (RFC 4616 §2).
pub const MAX_FIELD: usize = 255;

/// `Username:` in base64, the LOGIN mechanism's first challenge.
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
/// `Password:` in base64, the LOGIN mechanism's second challenge.
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Standard alphabet; padding optional, since some clients leave it off.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why an exchange failed. Every variant is the client's fault and maps to the protocol's
/// "authentication failed / malformed" reply; none reveals whether a user exists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("unsupported mechanism")]
    UnknownMechanism,
    #[error("response is not valid base64")]
    BadBase64,
    #[error("response is too long")]
    TooLong,
    #[error("credentials are not valid UTF-8")]
    NotUtf8,
    #[error("malformed credentials")]
    Malformed,
    /// An authorization identity other than the authentication identity (proxy login)
    /// was asked for; Mailfleet has no administrators who may act as other users.
    #[error("authorization identity not permitted")]
    AuthzidNotPermitted,
    /// The client sent `*` (RFC 4954 §4, RFC 5034 §4, RFC 9051 §6.2.2).
    #[error("authentication cancelled")]
    Cancelled,
}

/// A SASL mechanism Mailfleet offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// The label a login through this mechanism counts under.
    pub fn metrics(self) -> mailfleet_telemetry::Mechanism {
        match self {
            Mechanism::Plain => mailfleet_telemetry::Mechanism::Plain,
            Mechanism::Login => mailfleet_telemetry::Mechanism::SaslLogin,
        }
    }

    /// Case-insensitive mechanism name as sent by the client.
    pub fn parse(name: &str) -> Result<Self, SaslError> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Ok(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Ok(Mechanism::Login)
        } else {
            Err(SaslError::UnknownMechanism)
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// A user name and password recovered from an exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Decodes one base64 client response. `=` alone is an empty response (RFC 4954 §4);
/// surrounding spaces are ignored.
pub fn decode_base64(input: &[u8]) -> Result<Vec<u8>, SaslError> {
    let trimmed = trim_ascii(input);
    if trimmed.len() > MAX_ENCODED {
        return Err(SaslError::TooLong);
    }
    if trimmed == b"=" {
        return Ok(Vec::new());
    }
    B64.decode(trimmed).map_err(|_| SaslError::BadBase64)
}

/// Encodes a server challenge.
pub fn encode_base64(data: &[u8]) -> String {
    B64.encode(data)
}

/// Whether a client line cancels the exchange.
pub fn is_cancel(line: &[u8]) -> bool {
    trim_ascii(line) == b"*"
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn field(bytes: &[u8]) -> Result<String, SaslError> {
    if bytes.len() > MAX_FIELD {
        return Err(SaslError::TooLong);
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::NotUtf8)
}

/// Decodes a PLAIN message (`[authzid] NUL authcid NUL passwd`, already base64-decoded).
///
/// An authzid is accepted only when it names the same user as the authcid (some clients
/// always send one); anything else is [`SaslError::AuthzidNotPermitted`].
pub fn decode_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.splitn(3, |b| *b == 0);
    let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if password.contains(&0) {
        return Err(SaslError::Malformed);
    }
    let authzid = field(authzid)?;
    let username = field(authcid)?;
    let password = field(password)?;
    if username.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(&username) {
        return Err(SaslError::AuthzidNotPermitted);
    }
    Ok(Credentials { username, password })
}

/// What the protocol does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this base64 challenge (`334 <c>` in SMTP, `+ <c>` in POP3 and IMAP) and feed
    /// the client's next line to [`Exchange::step`].
    Challenge(String),
    /// The exchange is complete: verify these credentials.
    Done(Credentials),
    Failed(SaslError),
}

/// An exchange in progress.
#[derive(Clone, Debug)]
pub struct Exchange {
    state: State,
    mechanism: Mechanism,
}

#[derive(Clone, Debug)]
enum State {
    Plain,
    LoginUser,
    LoginPassword(String),
    Finished,
}

impl Exchange {
    /// Starts an exchange. `initial` is the initial response given with the command
    /// (RFC 4954 `AUTH PLAIN <b64>`, RFC 5034, RFC 4959), still base64-encoded.
    pub fn start(mechanism: Mechanism, initial: Option<&[u8]>) -> (Self, Step) {
        let mut ex = Exchange {
            mechanism,
            state: match mechanism {
                Mechanism::Plain => State::Plain,
                Mechanism::Login => State::LoginUser,
            },
        };
        let step = match (mechanism, initial) {
            (Mechanism::Plain, None) => Step::Challenge(String::new()),
            (Mechanism::Login, None) => Step::Challenge(LOGIN_USERNAME_CHALLENGE.into()),
            (_, Some(line)) => ex.step(line),
        };
        (ex, step)
    }

    /// The mechanism the exchange was started with.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Feeds one client line (base64, or `*` to cancel).
    pub fn step(&mut self, line: &[u8]) -> Step {
        if is_cancel(line) {
            self.state = State::Finished;
            return Step::Failed(SaslError::Cancelled);
        }
        let decoded = match decode_base64(line) {
            Ok(d) => d,
            Err(e) => {
                self.state = State::Finished;
                return Step::Failed(e);
            }
        };
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Plain => match decode_plain(&decoded) {
                Ok(c) => Step::Done(c),
                Err(e) => Step::Failed(e),
            },
            State::LoginUser => match field(&decoded) {
                Ok(u) if !u.is_empty() && !u.contains('\0') => {
                    self.state = State::LoginPassword(u);
                    Step::Challenge(LOGIN_PASSWORD_CHALLENGE.into())
                }
                Ok(_) => Step::Failed(SaslError::Malformed),
                Err(e) => Step::Failed(e),
            },
            State::LoginPassword(username) => match field(&decoded) {
                Ok(p) if !p.is_empty() && !p.contains('\0') => Step::Done(Credentials {
                    username,
                    password: p,
                }),
                Ok(_) => Step::Failed(SaslError::Malformed),
                Err(e) => Step::Failed(e),
            },
            State::Finished => Step::Failed(SaslError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> String {
        encode_base64(s.as_bytes())
    }

    #[test]
    fn plain_with_initial_response() {
        let (_, step) = Exchange::start(
            Mechanism::Plain,
            Some(plain("\0alice@example.test\0secret pw").as_bytes()),
        );
        assert_eq!(
            step,
            Step::Done(Credentials {
                username: "alice@example.test".into(),
                password: "secret pw".into()
            })
        );
    }

    #[test]
    fn plain_with_challenge_and_same_authzid() {
        let (mut ex, step) = Exchange::start(Mechanism::Plain, None);
        assert_eq!(step, Step::Challenge(String::new()));
        let step = ex.step(plain("Alice@Example.test\0alice@example.test\0pw").as_bytes());
        assert!(matches!(step, Step::Done(c) if c.username == "alice@example.test"));
    }

    #[test]
    fn plain_refuses_proxy_and_malformed() {
        let cases: &[(&[u8], SaslError)] = &[
            (b"bob\0alice\0pw", SaslError::AuthzidNotPermitted),
            (b"alice\0pw", SaslError::Malformed),
            (b"\0\0pw", SaslError::Malformed),
            (b"\0alice\0", SaslError::Malformed),
            (b"\0alice\0pw\0extra", SaslError::Malformed),
            (b"\0\xff\xfe\0pw", SaslError::NotUtf8),
        ];
        for (msg, want) in cases {
            assert_eq!(decode_plain(msg).as_ref().err(), Some(want), "{msg:?}");
        }
        let long = format!("\0{}\0pw", "a".repeat(MAX_FIELD + 1));
        assert_eq!(
            decode_plain(long.as_bytes()).err(),
            Some(SaslError::TooLong)
        );
    }

    #[test]
    fn login_exchange() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, None);
        assert_eq!(step, Step::Challenge(LOGIN_USERNAME_CHALLENGE.into()));
        assert_eq!(
            decode_base64(LOGIN_USERNAME_CHALLENGE.as_bytes()).expect("b64"),
            b"Username:"
        );
        let step = ex.step(plain("bob@example.test").as_bytes());
        assert_eq!(step, Step::Challenge(LOGIN_PASSWORD_CHALLENGE.into()));
        let step = ex.step(plain("hunter2hunter2").as_bytes());
        assert_eq!(
            step,
            Step::Done(Credentials {
                username: "bob@example.test".into(),
                password: "hunter2hunter2".into()
            })
        );
        // Anything after the end fails rather than starting over.
        assert!(matches!(ex.step(b"Zm9v"), Step::Failed(_)));
    }

    #[test]
    fn login_with_initial_username() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, Some(plain("u@x.test").as_bytes()));
        assert_eq!(step, Step::Challenge(LOGIN_PASSWORD_CHALLENGE.into()));
        assert!(matches!(ex.step(plain("p").as_bytes()), Step::Done(_)));
    }

    #[test]
    fn cancel_and_garbage() {
        let (mut ex, _) = Exchange::start(Mechanism::Login, None);
        assert_eq!(ex.step(b"*"), Step::Failed(SaslError::Cancelled));
        let (mut ex, _) = Exchange::start(Mechanism::Plain, None);
        assert_eq!(
            ex.step(b"!!!not base64"),
            Step::Failed(SaslError::BadBase64)
        );
        let (mut ex, _) = Exchange::start(Mechanism::Plain, None);
        let huge = vec![b'A'; MAX_ENCODED + 4];
        assert_eq!(ex.step(&huge), Step::Failed(SaslError::TooLong));
        assert_eq!(decode_base64(b"=").expect("empty"), b"");
        assert_eq!(decode_base64(b" Zm9v ").expect("trim"), b"foo");
        assert_eq!(decode_base64(b"Zm9vYg").expect("no padding"), b"foob");
        assert_eq!(Mechanism::parse("plain"), Ok(Mechanism::Plain));
        assert_eq!(
            Mechanism::parse("CRAM-MD5"),
            Err(SaslError::UnknownMechanism)
        );
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A cheap deterministic sweep over short inputs and random longer ones.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200usize {
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.push((seed & 0xff) as u8);
            }
            let _ = decode_plain(&buf);
            let _ = decode_base64(&buf);
            for mech in [Mechanism::Plain, Mechanism::Login] {
                let (mut ex, _) = Exchange::start(mech, Some(&buf));
                let _ = ex.step(&buf);
                let _ = ex.step(encode_base64(&buf).as_bytes());
            }
        }
    }
}
