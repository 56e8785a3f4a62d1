//! Sender authentication: the stage between "received" and "filtered" that asks whether
//! the domains a message names really sent it.
//!
//! ```text
//! MAIL      SPF of the HELO identity, then of the envelope sender (RFC 7208 §2.3, §2.4)
//! end DATA  DKIM, every signature (RFC 6376) ─┐
//!           ARC chain (RFC 8617)              ├─> DMARC with alignment (RFC 7489)
//!           iprev (RFC 8601 §3)               │     └─> what to do: deliver, Junk, 550, 451
//!           one Authentication-Results header ┘         (`[smtp.authentication]` policy)
//! ```
//!
//! The checks themselves are `mail-auth`'s (the Stalwart project's implementation, used in
//! production); this module decides *when* they run, what their verdicts mean for the
//! message ([`decide`], a pure function tested without DNS), and writes the one
//! `Authentication-Results` field (RFC 8601) under this host's authserv-id. A field that
//! already claims that id came from someone else and is removed ([`forged_fields`]): it
//! would otherwise tell the user's client (and Sieve rules) that we vouched for the sender.
//!
//! DNS goes to the configured resolver through hickory's cache. A DNS failure never reads
//! as a pass: an SPF `temperror` answers `451 4.4.3` at MAIL, and a DMARC verdict that a
//! temporary failure could have changed answers `451 4.4.3` at the end of DATA, so the
//! sender retries rather than the message being judged on half the evidence.
//!
//! When this host forwards a message it received (a Sieve `redirect`), [`SenderAuth::arc_seal`]
//! adds an ARC set (RFC 8617 §5.1) so the next hop can trust the results we saw even though
//! the forward breaks SPF and, often, DKIM.

use super::header::Header;
use ipnet::IpNet;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy as DmarcPolicy;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::report::ActionDisposition;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, IprevResult,
    MessageAuthenticator, SpfOutput, SpfResult,
};
use mailfleet_core::config::{DmarcAction, SenderAuthConfig};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long a DNS answer may be kept (hickory's cache honours the record's TTL below it).
const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Entries in the resolver's cache: a busy MX asks about a few thousand domains an hour.
const CACHE_ENTRIES: u64 = 16_384;

/// The configured stage: one per process, shared by every inbound session.
#[derive(Clone)]
pub struct SenderAuth {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: MessageAuthenticator,
    authserv_id: String,
    hostname: String,
    skip: Vec<IpNet>,
    policy: Policy,
    /// Unset unless `reports.dmarc_enabled`.
    dmarc_reports: std::sync::OnceLock<Arc<mailfleet_reports::DmarcCollector>>,
}

/// What verdicts do to a message (`[smtp.authentication]`).
#[derive(Clone, Debug)]
pub struct Policy {
    pub dmarc_reject: DmarcAction,
    pub dmarc_quarantine: DmarcAction,
    /// Domains whose mail is not held to DMARC policies (lower case): the RFC 5322 From
    /// domain, or the envelope sender's domain when SPF passed for it (a trusted list).
    pub dmarc_overrides: Vec<String>,
    pub spf_fail_reject: bool,
}

/// The SPF verdicts taken at MAIL, kept with the transaction for DMARC and the header.
#[derive(Clone, Debug)]
pub struct SpfChecks {
    pub helo: SpfOutput,
    pub mail_from: SpfOutput,
}

/// Why MAIL is refused or deferred by SPF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpfRefusal {
    /// A temporary DNS failure (`451 4.4.3`).
    TempError(String),
    /// SPF fails and `spf_fail_reject` is on (`550 5.7.23`).
    Fail(String),
}

/// What the stage decided for a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    Deliver,
    /// Into each recipient's Junk mailbox.
    Junk(String),
    /// `550 5.7.1` at the end of DATA.
    Reject(String),
    /// `451 4.4.3`: try again later.
    TempFail(String),
}

/// The verdict on one message: the header to add and what to do.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// A complete `Authentication-Results:` field, CRLF-terminated.
    pub header: String,
    pub disposition: Disposition,
    /// `spf=pass dkim=pass dmarc=pass arc=none iprev=fail` for the log line.
    pub summary: String,
}

/// The facts [`decide`] works from, reduced from `mail-auth`'s outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Findings {
    /// The RFC 5322 From domain DMARC evaluated (empty without a usable From).
    pub from_domain: String,
    pub dmarc: Outcome,
    /// The policy that applies to this message (`p=` or `sp=`, after `pct=`).
    pub dmarc_policy: DmarcPolicy,
    /// Some DKIM signature could not be checked for a temporary reason.
    pub dkim_temp_error: bool,
    /// The envelope sender's domain when SPF passed for it (a mailing list or forwarder
    /// on the override list is recognised by it).
    pub spf_pass_domain: Option<String>,
}

/// A DMARC result without the error details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    TempError,
    PermError,
    None,
}

impl From<&DmarcResult> for Outcome {
    fn from(r: &DmarcResult) -> Self {
        match r {
            DmarcResult::Pass => Outcome::Pass,
            DmarcResult::Fail(_) => Outcome::Fail,
            DmarcResult::TempError(_) => Outcome::TempError,
            DmarcResult::PermError(_) => Outcome::PermError,
            DmarcResult::None => Outcome::None,
        }
    }
}

/// What the DMARC verdict means for the message under `policy`. Pure, so every branch is
/// tested without DNS.
pub fn decide(f: &Findings, policy: &Policy) -> Disposition {
    match f.dmarc {
        Outcome::Pass | Outcome::None | Outcome::PermError => return Disposition::Deliver,
        Outcome::TempError => {
            return Disposition::TempFail(format!(
                "DMARC: temporary DNS failure for {}",
                f.from_domain
            ))
        }
        Outcome::Fail => {}
    }
    // A failure that a signature we could not check might have turned into a pass is
    // not judged yet (the sender retries; the DNS outage is usually over by then).
    if f.dkim_temp_error && f.dmarc_policy != DmarcPolicy::None {
        return Disposition::TempFail(format!(
            "DKIM: temporary DNS failure; DMARC of {} not decided",
            f.from_domain
        ));
    }
    let overridden = |d: &str| {
        policy
            .dmarc_overrides
            .iter()
            .any(|o| o.eq_ignore_ascii_case(d))
    };
    if overridden(&f.from_domain) || f.spf_pass_domain.as_deref().is_some_and(overridden) {
        return Disposition::Deliver;
    }
    let action = match f.dmarc_policy {
        DmarcPolicy::Reject => policy.dmarc_reject,
        DmarcPolicy::Quarantine => policy.dmarc_quarantine,
        DmarcPolicy::None | DmarcPolicy::Unspecified => DmarcAction::Tag,
    };
    let why = format!(
        "DMARC policy of {} ({}) says this message is not from it",
        f.from_domain,
        match f.dmarc_policy {
            DmarcPolicy::Reject => "reject",
            DmarcPolicy::Quarantine => "quarantine",
            _ => "none",
        }
    );
    match action {
        DmarcAction::Reject => Disposition::Reject(why),
        DmarcAction::Junk => Disposition::Junk(why),
        DmarcAction::Tag => Disposition::Deliver,
    }
}

impl SenderAuth {
    /// The stage as configured; `hostname` is this host's name (`server.hostname`), the
    /// default authserv-id and SPF's `%{r}`.
    pub fn new(cfg: &SenderAuthConfig, hostname: &str) -> Result<Self, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(cfg.dns_timeout_secs);
        opts.attempts = 2;
        opts.cache_size = CACHE_ENTRIES;
        opts.positive_max_ttl = Some(MAX_CACHE_TTL);
        opts.negative_max_ttl = Some(Duration::from_secs(300));
        let resolver = match cfg.resolver {
            Some(addr) => MessageAuthenticator::new(one_server(addr), opts),
            None => {
                let (config, _) = mail_auth::hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| {
                        format!(
                        "reading the system DNS configuration (or set smtp.authentication.resolver): {e}"
                    )
                    })?;
                MessageAuthenticator::new(config, opts)
            }
        }
        .map_err(|e| format!("building the DNS resolver: {e}"))?;
        let skip = mailfleet_core::proxy::parse_networks(&cfg.skip_networks)?;
        Ok(Self {
            inner: Arc::new(Inner {
                resolver,
                authserv_id: cfg
                    .authserv_id
                    .clone()
                    .unwrap_or_else(|| hostname.to_string()),
                hostname: hostname.to_string(),
                skip,
                policy: Policy {
                    dmarc_reject: cfg.dmarc_reject,
                    dmarc_quarantine: cfg.dmarc_quarantine,
                    dmarc_overrides: cfg
                        .dmarc_override_domains
                        .iter()
                        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                        .collect(),
                    spf_fail_reject: cfg.spf_fail_reject,
                },
                dmarc_reports: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The stage's DNS resolver (and its cache), shared with the built-in filter's DNS
    /// lists.
    pub fn resolver(&self) -> mail_auth::hickory_resolver::TokioResolver {
        self.inner.resolver.resolver().clone()
    }

    /// The stage's `mail-auth` authenticator (sharing its resolver and cache), for the
    /// DNS questions of the report sender.
    pub fn authenticator(&self) -> MessageAuthenticator {
        self.inner.resolver.clone()
    }

    pub fn authserv_id(&self) -> &str {
        &self.inner.authserv_id
    }

    /// Counts the DMARC result of every message verified from now on in `collector`, for
    /// the aggregate reports (RFC 7489 §7.2).
    pub fn report_dmarc_to(&self, collector: Arc<mailfleet_reports::DmarcCollector>) {
        let _ = self.inner.dmarc_reports.set(collector);
    }

    /// Whether mail from `ip` is authenticated (it is not from a skipped network).
    pub fn applies_to(&self, ip: IpAddr) -> bool {
        !self.inner.skip.iter().any(|n| n.contains(&ip))
    }

    /// SPF at MAIL: the HELO identity first, then the envelope sender (the HELO identity
    /// again, as `postmaster@helo`, for the null sender). A HELO that fails decides.
    pub async fn check_spf(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: Option<&str>,
    ) -> Result<SpfChecks, SpfRefusal> {
        let r = &self.inner.resolver;
        let host = self.inner.hostname.as_str();
        let helo_out = r
            .verify_spf(SpfParameters::verify_ehlo(ip, helo, host))
            .await;
        let from_out = match mail_from {
            Some(sender) => {
                r.verify_spf(SpfParameters::verify_mail_from(ip, helo, host, sender))
                    .await
            }
            None => helo_out.clone(),
        };
        let checks = SpfChecks {
            helo: helo_out,
            mail_from: from_out,
        };
        for out in [&checks.helo, &checks.mail_from] {
            if out.result() == SpfResult::TempError {
                return Err(SpfRefusal::TempError(format!(
                    "SPF: temporary DNS failure for {}, try again later",
                    out.domain()
                )));
            }
        }
        if self.inner.policy.spf_fail_reject {
            for out in [&checks.helo, &checks.mail_from] {
                if out.result() == SpfResult::Fail {
                    return Err(SpfRefusal::Fail(format!(
                        "SPF of {} does not allow {ip} to send its mail",
                        out.domain()
                    )));
                }
            }
        }
        Ok(checks)
    }

    /// DKIM, ARC, DMARC and iprev on a received message (CRLF line ends, as cleanup left
    /// it), with the SPF verdicts taken at MAIL.
    pub async fn verify(
        &self,
        message: &[u8],
        spf: &SpfChecks,
        ip: IpAddr,
        helo: &str,
        mail_from: Option<&str>,
    ) -> Verdict {
        let r = &self.inner.resolver;
        let id = self.inner.authserv_id.as_str();
        let iprev = r.verify_iprev(ip).await;
        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            // mail-auth found no header at all: nothing to authenticate but the SPF and
            // iprev verdicts (the header parser of cleanup already accepted the message).
            let header = AuthenticationResults::new(id)
                .with_spf_ehlo_result(&spf.helo, ip, helo)
                .with_spf_mailfrom_result(&spf.mail_from, ip, mail_from.unwrap_or(""), helo)
                .with_iprev_result(&iprev, ip)
                .to_header();
            return Verdict {
                header,
                disposition: Disposition::Deliver,
                summary: format!(
                    "spf={} dkim=none dmarc=none arc=none iprev={}",
                    spf_word(spf.mail_from.result()),
                    iprev_word(iprev.result())
                ),
            };
        };
        let Checks { dkim, arc, dmarc } = self.checks(&parsed, spf, helo, mail_from).await;
        let header_from = parsed.from.first().map(String::as_str).unwrap_or("");
        let header = AuthenticationResults::new(id)
            .with_dkim_results(&dkim, header_from)
            .with_spf_ehlo_result(&spf.helo, ip, helo)
            .with_spf_mailfrom_result(&spf.mail_from, ip, mail_from.unwrap_or(""), helo)
            .with_arc_result(&arc, ip)
            .with_dmarc_result(&dmarc)
            .with_iprev_result(&iprev, ip)
            .to_header();
        let findings = Findings {
            from_domain: dmarc.domain().to_string(),
            dmarc: Outcome::from(&dmarc.result()),
            dmarc_policy: dmarc.policy(),
            dkim_temp_error: dkim
                .iter()
                .any(|d| matches!(d.result(), DkimResult::TempError(_))),
            spf_pass_domain: (spf.mail_from.result() == SpfResult::Pass)
                .then(|| spf.mail_from.domain().to_string()),
        };
        let disposition = decide(&findings, &self.inner.policy);
        if let Some(reports) = self.inner.dmarc_reports.get() {
            // A deferred message comes back and is counted then.
            let applied = match &disposition {
                Disposition::Deliver => Some(ActionDisposition::None),
                Disposition::Junk(_) => Some(ActionDisposition::Quarantine),
                Disposition::Reject(_) => Some(ActionDisposition::Reject),
                Disposition::TempFail(_) => None,
            };
            if let Some(applied) = applied {
                let envelope_from = mail_from.unwrap_or(helo);
                reports.record(
                    &dmarc,
                    &dkim,
                    &spf.mail_from,
                    ip,
                    header_from,
                    envelope_from,
                    applied,
                );
            }
        }
        let dkim_word = if dkim.is_empty() {
            "none"
        } else if dkim.iter().any(|d| *d.result() == DkimResult::Pass) {
            "pass"
        } else {
            dkim_result_word(dkim[0].result())
        };
        let summary = format!(
            "spf={} dkim={} dmarc={} arc={} iprev={}",
            spf_word(spf.mail_from.result()),
            dkim_word,
            match findings.dmarc {
                Outcome::Pass => "pass",
                Outcome::Fail => "fail",
                Outcome::TempError => "temperror",
                Outcome::PermError => "permerror",
                Outcome::None => "none",
            },
            dkim_result_word(arc.result()),
            iprev_word(iprev.result()),
        );
        Verdict {
            header,
            disposition,
            summary,
        }
    }
}

/// The DKIM, ARC and DMARC verdicts on one parsed message.
struct Checks<'x> {
    dkim: Vec<mail_auth::DkimOutput<'x>>,
    arc: mail_auth::ArcOutput<'x>,
    dmarc: mail_auth::DmarcOutput,
}

impl SenderAuth {
    /// DKIM (every signature), the ARC chain, then DMARC with alignment against the SPF
    /// verdict taken at MAIL: what both [`SenderAuth::verify`] and
    /// [`SenderAuth::arc_seal`] judge a message by.
    async fn checks<'x>(
        &self,
        parsed: &'x AuthenticatedMessage<'x>,
        spf: &SpfChecks,
        helo: &str,
        mail_from: Option<&str>,
    ) -> Checks<'x> {
        let r = &self.inner.resolver;
        let dkim = r.verify_dkim(parsed).await;
        let arc = r.verify_arc(parsed).await;
        let mail_from_domain = match mail_from {
            Some(s) => s.rsplit_once('@').map_or(helo, |(_, d)| d),
            None => helo,
        };
        let dmarc = r
            .verify_dmarc(DmarcParameters::new(
                parsed,
                &dkim,
                mail_from_domain,
                &spf.mail_from,
            ))
            .await;
        Checks { dkim, arc, dmarc }
    }
}

/// The key and name an ARC set is signed with: an active RSA DKIM key of the forwarding
/// domain (RFC 8617 §5.1 allows only `rsa-sha256`).
pub struct ArcKey {
    pub domain: String,
    pub selector: String,
    pub key: mail_auth::common::crypto::RsaKey<mail_auth::common::crypto::Sha256>,
}

/// The header fields an ARC-Message-Signature covers (those present are signed).
const ARC_SIGNED_HEADERS: [&str; 10] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "DKIM-Signature",
];

impl SenderAuth {
    /// The ARC set (`ARC-Seal`, `ARC-Message-Signature`, `ARC-Authentication-Results`,
    /// CRLF-terminated) to put on top of `message` before it is forwarded.
    ///
    /// The checks run again on the message as it leaves (the resolver's cache answers
    /// what the first run asked), so the set speaks for exactly those bytes: the
    /// ARC-Authentication-Results carry the same SPF verdicts taken at MAIL, and the DKIM,
    /// ARC and DMARC results of the forwarded copy. A chain that already failed
    /// (`cv=fail`) is not sealed again (RFC 8617 §5.1.2): `Err` then.
    pub async fn arc_seal(
        &self,
        message: &[u8],
        spf: &SpfChecks,
        ip: IpAddr,
        helo: &str,
        mail_from: Option<&str>,
        key: ArcKey,
    ) -> Result<String, String> {
        let parsed = AuthenticatedMessage::parse(message)
            .ok_or_else(|| "the message has no header to seal".to_string())?;
        let Checks { dkim, arc, dmarc } = self.checks(&parsed, spf, helo, mail_from).await;
        let header_from = parsed.from.first().map(String::as_str).unwrap_or("");
        let results = AuthenticationResults::new(&self.inner.authserv_id)
            .with_dkim_results(&dkim, header_from)
            .with_spf_ehlo_result(&spf.helo, ip, helo)
            .with_spf_mailfrom_result(&spf.mail_from, ip, mail_from.unwrap_or(""), helo)
            .with_arc_result(&arc, ip)
            .with_dmarc_result(&dmarc);
        let set = mail_auth::arc::ArcSealer::from_key(key.key)
            .domain(key.domain)
            .selector(key.selector)
            .headers(ARC_SIGNED_HEADERS)
            .seal(&parsed, &results, &arc)
            .map_err(|e| format!("ARC seal: {e}"))?;
        Ok(set.to_header())
    }
}

fn one_server(addr: SocketAddr) -> ResolverConfig {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    ResolverConfig::from_name_servers(vec![ns])
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_result_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn iprev_word(r: &IprevResult) -> &'static str {
    match r {
        IprevResult::Pass => "pass",
        IprevResult::Fail(_) => "fail",
        IprevResult::TempError(_) => "temperror",
        IprevResult::PermError(_) => "permerror",
        IprevResult::None => "none",
    }
}

/// The byte ranges of `Authentication-Results` fields that claim `authserv_id` (RFC 8601
/// §5: a receiver removes those before adding its own, as they cannot be ours).
pub fn forged_fields(header: &Header<'_>, authserv_id: &str) -> Vec<std::ops::Range<usize>> {
    header
        .all("Authentication-Results")
        .filter(|f| claimed_id(f.value).eq_ignore_ascii_case(authserv_id))
        .map(|f| f.range.clone())
        .collect()
}

/// The authserv-id an `Authentication-Results` value starts with: the first token, after
/// folding white space and comments, up to `;` or white space.
fn claimed_id(value: &[u8]) -> String {
    let mut i = 0;
    let mut depth = 0u32;
    // Skip CFWS (comments may nest, RFC 5322 §3.2.2).
    while i < value.len() {
        match value[i] {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let start = i;
    while i < value.len() && !matches!(value[i], b';' | b' ' | b'\t' | b'\r' | b'\n' | b'(') {
        i += 1;
    }
    String::from_utf8_lossy(&value[start..i]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            dmarc_reject: DmarcAction::Reject,
            dmarc_quarantine: DmarcAction::Junk,
            dmarc_overrides: vec!["lists.example".into()],
            spf_fail_reject: false,
        }
    }

    fn findings(dmarc: Outcome, p: DmarcPolicy) -> Findings {
        Findings {
            from_domain: "sender.example".into(),
            dmarc,
            dmarc_policy: p,
            dkim_temp_error: false,
            spf_pass_domain: None,
        }
    }

    #[test]
    fn a_dmarc_failure_does_what_the_published_policy_and_the_configuration_say() {
        let p = policy();
        let d = |o, pol| decide(&findings(o, pol), &p);
        assert!(matches!(
            d(Outcome::Fail, DmarcPolicy::Reject),
            Disposition::Reject(_)
        ));
        assert!(matches!(
            d(Outcome::Fail, DmarcPolicy::Quarantine),
            Disposition::Junk(_)
        ));
        assert_eq!(d(Outcome::Fail, DmarcPolicy::None), Disposition::Deliver);
        assert_eq!(d(Outcome::Pass, DmarcPolicy::Reject), Disposition::Deliver);
        assert_eq!(
            d(Outcome::None, DmarcPolicy::Unspecified),
            Disposition::Deliver
        );
        assert_eq!(
            d(Outcome::PermError, DmarcPolicy::Reject),
            Disposition::Deliver
        );
        assert!(matches!(
            d(Outcome::TempError, DmarcPolicy::Reject),
            Disposition::TempFail(_)
        ));
        // Configured softer: p=reject only junks, p=quarantine only tags.
        let soft = Policy {
            dmarc_reject: DmarcAction::Junk,
            dmarc_quarantine: DmarcAction::Tag,
            ..policy()
        };
        assert!(matches!(
            decide(&findings(Outcome::Fail, DmarcPolicy::Reject), &soft),
            Disposition::Junk(_)
        ));
        assert_eq!(
            decide(&findings(Outcome::Fail, DmarcPolicy::Quarantine), &soft),
            Disposition::Deliver
        );
    }

    #[test]
    fn the_override_list_and_an_unchecked_signature_keep_a_failure_from_being_enforced() {
        let mut f = findings(Outcome::Fail, DmarcPolicy::Reject);
        f.from_domain = "Lists.Example".into();
        assert_eq!(decide(&f, &policy()), Disposition::Deliver);
        // A trusted list, recognised by the envelope sender SPF passed for.
        let mut f = findings(Outcome::Fail, DmarcPolicy::Reject);
        f.spf_pass_domain = Some("lists.example".into());
        assert_eq!(decide(&f, &policy()), Disposition::Deliver);
        f.spf_pass_domain = Some("other.example".into());
        assert!(matches!(decide(&f, &policy()), Disposition::Reject(_)));
        let mut f = findings(Outcome::Fail, DmarcPolicy::Reject);
        f.dkim_temp_error = true;
        assert!(matches!(decide(&f, &policy()), Disposition::TempFail(_)));
    }

    #[test]
    fn only_results_claiming_our_authserv_id_are_removed() {
        let msg = b"Authentication-Results: mx.example.test; spf=pass\r\n\
X-A: 1\r\n\
Authentication-Results: (forged) MX.Example.Test;\r\n dkim=pass\r\n\
Authentication-Results: other.example; dkim=fail\r\n\
Authentication-Results: mx.example.test.evil; dkim=pass\r\n\
Subject: hi\r\n\r\nbody\r\n";
        let header = Header::parse(msg).expect("header");
        let ranges = forged_fields(&header, "mx.example.test");
        assert_eq!(ranges.len(), 2);
        let mut m = bytes::BytesMut::from(&msg[..]);
        crate::pipeline::cleanup::remove_ranges(&mut m, &ranges);
        assert_eq!(
            &m[..],
            &b"X-A: 1\r\n\
Authentication-Results: other.example; dkim=fail\r\n\
Authentication-Results: mx.example.test.evil; dkim=pass\r\n\
Subject: hi\r\n\r\nbody\r\n"[..]
        );
    }
}
