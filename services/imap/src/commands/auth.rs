//! STARTTLS, LOGIN, AUTHENTICATE, ENABLE, ID, NAMESPACE.

use crate::response;
use crate::session::{LoginError, Next, Outcome, Session};
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::core::{AString, IString, QuotedChar, Tag};
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::extensions::namespace::Namespace;
use imap_codec::imap_types::response::{Code, Data};
use imap_codec::imap_types::secret::Secret;
use std::borrow::Cow;

/// Longest SASL PLAIN message accepted (authzid, authcid and password).
const MAX_SASL: usize = 1024;

impl Session {
    pub(crate) fn starttls(&mut self, tag: Tag<'static>) -> Outcome {
        if self.tls {
            return Outcome::done(vec![response::bad(&tag, "TLS already active")]);
        }
        if !self.cfg.starttls {
            return Outcome::done(vec![response::no(&tag, None, "TLS not available")]);
        }
        Outcome {
            responses: vec![response::ok(&tag, None, "Begin TLS negotiation now")],
            next: Next::StartTls,
        }
    }

    pub(crate) async fn cmd_login(
        &mut self,
        tag: Tag<'static>,
        username: AString<'static>,
        password: Secret<AString<'static>>,
    ) -> Outcome {
        if !self.plaintext_allowed() {
            return Outcome::done(vec![response::no(
                &tag,
                response::code("PRIVACYREQUIRED"),
                "Use STARTTLS before LOGIN",
            )]);
        }
        let user = String::from_utf8_lossy(username.as_ref()).into_owned();
        let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
        self.finish_login(tag, &user, &pass, mailfleet_telemetry::Mechanism::ImapLogin)
            .await
    }

    pub(crate) async fn cmd_authenticate(
        &mut self,
        tag: Tag<'static>,
        mechanism: AuthMechanism<'static>,
        initial: Option<Secret<Cow<'static, [u8]>>>,
    ) -> Outcome {
        if mechanism != AuthMechanism::Plain {
            return Outcome::done(vec![response::no(
                &tag,
                None,
                "Unsupported authentication mechanism",
            )]);
        }
        if !self.plaintext_allowed() {
            return Outcome::done(vec![response::no(
                &tag,
                response::code("PRIVACYREQUIRED"),
                "Use STARTTLS before AUTHENTICATE",
            )]);
        }
        match initial {
            Some(data) => self.sasl_plain(tag, data.declassify()).await,
            None => Outcome {
                responses: vec![],
                next: Next::AuthenticateData { tag },
            },
        }
    }

    /// The client's answer to the `+ ` continuation of AUTHENTICATE.
    pub async fn authenticate_data(
        &mut self,
        tag: Tag<'static>,
        data: Option<AuthenticateData<'static>>,
    ) -> Outcome {
        match data {
            Some(AuthenticateData::Continue(d)) => self.sasl_plain(tag, d.declassify()).await,
            Some(AuthenticateData::Cancel) => {
                Outcome::done(vec![response::bad(&tag, "AUTHENTICATE cancelled")])
            }
            None => Outcome::done(vec![response::bad(&tag, "Invalid SASL data")]),
        }
    }

    async fn sasl_plain(&mut self, tag: Tag<'static>, data: &[u8]) -> Outcome {
        // imap-codec has already base64-decoded the data.
        if data.len() > MAX_SASL {
            return Outcome::done(vec![response::bad(&tag, "SASL data too long")]);
        }
        let parts: Vec<&[u8]> = data.split(|b| *b == 0).collect();
        let [authz, authc, pass] = parts.as_slice() else {
            return Outcome::done(vec![response::bad(&tag, "Malformed PLAIN data")]);
        };
        if !authz.is_empty() && authz != authc {
            return Outcome::done(vec![response::no(
                &tag,
                response::code("AUTHORIZATIONFAILED"),
                "Authorization identity must match",
            )]);
        }
        let user = String::from_utf8_lossy(authc).into_owned();
        let pass = String::from_utf8_lossy(pass).into_owned();
        self.finish_login(tag, &user, &pass, mailfleet_telemetry::Mechanism::Plain)
            .await
    }

    async fn finish_login(
        &mut self,
        tag: Tag<'static>,
        user: &str,
        pass: &str,
        mechanism: mailfleet_telemetry::Mechanism,
    ) -> Outcome {
        match self
            .login
            .login_with(user, pass, self.remote_ip, mechanism)
            .await
        {
            Ok(account) => {
                let Some(slot) = self.cfg.user_sessions.acquire(account.id) else {
                    return Outcome::done(vec![response::no(
                        &tag,
                        response::code("LIMIT"),
                        "Too many open sessions for this user",
                    )]);
                };
                self.slot = Some(slot);
                tracing::debug!(user = %account.address, ip = %self.remote_ip, "IMAP session authenticated");
                self.account = Some(account);
                self.state = crate::session::State::Authenticated;
                let caps = imap_codec::imap_types::core::Vec1::try_from(self.capabilities()).ok();
                Outcome::done(vec![response::ok(
                    &tag,
                    caps.map(Code::Capability),
                    "Logged in",
                )])
            }
            Err(e) => {
                self.failed_logins += 1;
                let (code, text) = match e {
                    LoginError::Invalid => ("AUTHENTICATIONFAILED", "Invalid credentials"),
                    LoginError::Throttled => {
                        ("UNAVAILABLE", "Too many failed logins; try again later")
                    }
                    LoginError::Unavailable => {
                        ("UNAVAILABLE", "Authentication temporarily unavailable")
                    }
                    // RFC 5530: "the user should contact the system administrator".
                    LoginError::Disabled(mailfleet_auth::Disabled::Suspended) => {
                        ("CONTACTADMIN", "Account is suspended")
                    }
                    LoginError::Disabled(mailfleet_auth::Disabled::ProtocolNotEnabled) => {
                        ("CONTACTADMIN", "IMAP is not enabled for this account")
                    }
                };
                let mut out = vec![response::no(&tag, response::code(code), text)];
                if self.failed_logins >= self.cfg.max_failed_logins {
                    out.insert(0, response::bye("Too many failed logins"));
                    return Outcome {
                        responses: out,
                        next: Next::Close,
                    };
                }
                Outcome::done(out)
            }
        }
    }

    pub(crate) fn enable(
        &mut self,
        tag: Tag<'static>,
        capabilities: imap_codec::imap_types::core::Vec1<CapabilityEnable<'static>>,
    ) -> Outcome {
        let mut enabled = Vec::new();
        for c in capabilities.into_inner() {
            let name = c.to_string().to_ascii_uppercase();
            match name.as_str() {
                "CONDSTORE" => {
                    self.enabled.condstore = true;
                    enabled.push(c);
                }
                "QRESYNC" => {
                    self.enabled.qresync = true;
                    self.enabled.condstore = true;
                    enabled.push(c);
                }
                "UTF8=ACCEPT" => {
                    self.enabled.utf8 = true;
                    enabled.push(c);
                }
                "IMAP4REV2" => {
                    self.enabled.rev2 = true;
                    enabled.push(c);
                }
                _ => {}
            }
        }
        Outcome::done(vec![
            response::data(Data::Enabled {
                capabilities: enabled,
            }),
            response::ok(&tag, None, "ENABLE completed"),
        ])
    }

    pub(crate) fn id(&self, tag: Tag<'static>) -> Outcome {
        let params = [("name", "Mailfleet"), ("vendor", "Mailfleet")]
            .into_iter()
            .filter_map(|(k, v)| {
                Some((
                    IString::try_from(k).ok()?,
                    imap_codec::imap_types::core::NString(Some(IString::try_from(v).ok()?)),
                ))
            })
            .collect();
        Outcome::done(vec![
            response::data(Data::Id {
                parameters: Some(params),
            }),
            response::ok(&tag, None, "ID completed"),
        ])
    }

    pub(crate) fn namespace(&self, tag: Tag<'static>) -> Outcome {
        let personal = IString::try_from("")
            .map(|prefix| {
                vec![Namespace::new(
                    prefix,
                    QuotedChar::try_from(super::DELIMITER).ok(),
                )]
            })
            .unwrap_or_default();
        // Other users' mailboxes shared through ACLs (RFC 4314) live under this prefix.
        let other = IString::try_from(format!("{}{}", super::acl::OTHER_USERS, super::DELIMITER))
            .map(|prefix| {
                vec![Namespace::new(
                    prefix,
                    QuotedChar::try_from(super::DELIMITER).ok(),
                )]
            })
            .unwrap_or_default();
        // Public folders (no owner among the users: `acl.rs`) live under this one.
        let shared = IString::try_from(format!("{}{}", super::acl::PUBLIC, super::DELIMITER))
            .map(|prefix| {
                vec![Namespace::new(
                    prefix,
                    QuotedChar::try_from(super::DELIMITER).ok(),
                )]
            })
            .unwrap_or_default();
        Outcome::done(vec![
            response::data(Data::Namespace {
                personal,
                other,
                shared,
            }),
            response::ok(&tag, None, "NAMESPACE completed"),
        ])
    }
}
