//! DANE for SMTP (RFC 7672): TLSA records, published under DNSSEC, say which certificate
//! an MX host must present, so that neither a forged MX answer nor a stripped STARTTLS nor a
//! certificate from some CA the domain never chose gets mail delivered to an attacker.
//!
//! What is decided here (RFC 7672 §2.2), each lookup being secure, insecure or failed
//! ([`classify`], a pure function over the answer's kind and proofs):
//! - the domain's MX RRset: secure means only the validated MX hosts are used (an attacker
//!   who can forge the routing resolver's MX answer must not add a host without TLSA
//!   records); insecure (provably unsigned, or no MX) means DANE does not apply; bogus or
//!   a failed lookup defers the domain (`451 4.7.5`) rather than falling back;
//! - then, per validated MX host:
//!   - `_25._tcp.<host>` TLSA, secure, with usable records (usage 2 DANE-TA or 3
//!     DANE-EE, selector 0/1, matching 0/1/2): STARTTLS and a matching certificate are
//!     required;
//!   - secure but none usable: opportunistic TLS, as RFC 7672 §2.2 says;
//!   - insecure or absent: DANE does not apply (MTA-STS may);
//!   - bogus or failed lookup: the host is not used this time (temporary).
//!
//! A bogus answer counts as failed only when the resolver path carries DNSSEC at all
//! ([`DnssecPath`]): behind a path that strips signatures every domain is insecure.
//!
//! Matching ([`verify`]) is sans-IO: [`crate::tls`] wraps it in a rustls certificate
//! verifier, and the lookups ([`DaneResolver`]) only turn DNS answers into [`TlsaStatus`].
//!
//! Not done: CNAME-expanded TLSA base domains (§2.2.2), DANE for implicit MX (a domain
//! without MX records) and a check that the host's address records are secure too.

use crate::route::SMTP_PORT;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;
use sha2::{Digest, Sha256, Sha512};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// TLSA usage DANE-TA: the chain must lead to the certificate the record names.
pub const DANE_TA: u8 = 2;
/// TLSA usage DANE-EE: the server's own certificate or key is pinned.
pub const DANE_EE: u8 = 3;

/// One TLSA record, as numbers: the validity of the values is judged by [`Tlsa::usable`]
/// rather than by the parser, because unusable records change the policy (§2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether SMTP may use the record: PKIX usages 0 and 1 are excluded by RFC 7672 §3.1.3
    /// (MX hosts are not expected to hold certificates from public CAs), and unknown
    /// selectors and matching types cannot be checked.
    pub fn usable(&self) -> bool {
        matches!(self.usage, DANE_TA | DANE_EE)
            && matches!(self.selector, 0 | 1)
            && match self.matching {
                0 => !self.data.is_empty(),
                1 => self.data.len() == 32,
                2 => self.data.len() == 64,
                _ => false,
            }
    }

    /// Whether `cert` (DER) is the certificate (selector 0) or carries the public key
    /// (selector 1) the record names.
    pub fn matches(&self, cert: &[u8]) -> bool {
        let content = match self.selector {
            0 => cert,
            1 => match spki(cert) {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => content == self.data.as_slice(),
            1 => Sha256::digest(content).as_slice() == self.data.as_slice(),
            2 => Sha512::digest(content).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// What a DANE-protected host must prove in its TLS handshake.
#[derive(Debug)]
pub struct Expectation {
    /// Usable records only.
    records: Vec<Tlsa>,
    /// Names a DANE-TA leaf may carry: the MX host, then the recipient domain (§3.2.2).
    names: Vec<String>,
}

impl Expectation {
    /// The usable ones of `records`; `None` when there are none (then the host gets
    /// opportunistic TLS, not DANE).
    pub fn new(records: Vec<Tlsa>, mx_host: &str, domain: &str) -> Option<Self> {
        let records: Vec<Tlsa> = records.into_iter().filter(Tlsa::usable).collect();
        (!records.is_empty()).then(|| Self {
            records,
            names: vec![mx_host.to_string(), domain.to_string()],
        })
    }
}

/// One DER TLV: its tag, the whole encoding, its content, and what follows it.
struct Tlv<'a> {
    tag: u8,
    whole: &'a [u8],
    content: &'a [u8],
    rest: &'a [u8],
}

/// Reads the DER TLV at the start of `der`; long-form lengths up to 4 bytes, anything else
/// (or a truncated input) is `None`.
fn tlv(der: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = der.len() - rest.len();
    Some(Tlv {
        tag,
        whole: &der[..header + len],
        content: &rest[..len],
        rest: &rest[len..],
    })
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 §4.1), found by walking
/// the TBSCertificate's fields; a full X.509 parser is not needed to hash one field.
pub fn spki(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0;
    let cert = tlv(cert).filter(|t| t.tag == SEQUENCE)?;
    let tbs = tlv(cert.content).filter(|t| t.tag == SEQUENCE)?;
    let mut field = tlv(tbs.content)?;
    if field.tag == VERSION {
        field = tlv(field.rest)?;
    }
    // serialNumber (now in `field`), signature, issuer, validity, subject.
    for _ in 0..5 {
        field = tlv(field.rest)?;
    }
    (field.tag == SEQUENCE).then_some(field.whole)
}

/// Checks a presented chain against `expect` (RFC 7672 §3.1): a DANE-EE record matching the
/// leaf is enough (no name or expiry checks, §3.1.1); otherwise a certificate in the chain
/// must match a DANE-TA record, the leaf must chain to it, and the leaf must name the MX
/// host or the recipient domain (§3.1.2, §3.2.2). `provider` checks the chain's signatures.
pub fn verify(
    expect: &Expectation,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    provider: &Arc<CryptoProvider>,
) -> Result<(), String> {
    if expect
        .records
        .iter()
        .any(|r| r.usage == DANE_EE && r.matches(leaf))
    {
        return Ok(());
    }
    let mut last = None;
    for anchor in intermediates.iter().filter(|c| {
        expect
            .records
            .iter()
            .any(|r| r.usage == DANE_TA && r.matches(c))
    }) {
        match chain_to(anchor, leaf, intermediates, &expect.names, now, provider) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => format!("certificate does not verify under the TLSA trust anchor: {e}"),
        None => "no TLSA record matches the server's certificate".into(),
    })
}

/// PKIX path and name validation with `anchor` as the only trust anchor.
fn chain_to(
    anchor: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    names: &[String],
    now: UnixTime,
    provider: &Arc<CryptoProvider>,
) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(anchor.clone().into_owned())
        .map_err(|e| e.to_string())?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let mut last = String::from("no name to check");
    for name in names {
        let Ok(server_name) = ServerName::try_from(name.clone()) else {
            continue;
        };
        match verifier.verify_server_cert(leaf, intermediates, &server_name, &[], now) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// What the TLSA lookup for one MX host decided.
#[derive(Debug)]
pub enum TlsaStatus {
    /// No secure TLSA RRset (absent or unsigned): DANE does not apply to the host.
    Unprotected,
    /// A secure RRset without usable records: opportunistic TLS (RFC 7672 §2.2).
    Unusable,
    /// STARTTLS with a certificate matching these records, or nothing.
    Required(Arc<Expectation>),
    /// Bogus or failed lookup: the host must not be used now (§2.2: a TLSA lookup that
    /// fails is not a reason to drop protection).
    Failed(String),
}

/// What the validated MX lookup of a recipient domain decided (RFC 7672 §2.2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxSecurity {
    /// The MX RRset is DNSSEC-secure: these hosts (lowercase, no trailing dot, by
    /// preference) and no others may be used, each under its TLSA records.
    Secure(Vec<String>),
    /// Provably unsigned, or no MX records: the normal MX list, with MTA-STS or
    /// opportunistic TLS.
    Insecure,
    /// Bogus, or the lookup failed: nothing is sent to the domain now (`451 4.7.5`), as
    /// an attacker who can break validation must not get the unprotected path.
    Failed(String),
}

/// A validating lookup's outcome, reduced to what the DANE decision depends on, so the
/// decision ([`classify`]) can be tested without a resolver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Records of the type asked for, each with the proof the validator gave it.
    Records(Vec<Proof>),
    /// No records of the type (NXDOMAIN or NODATA), with the proof of the denial if the
    /// validator gave one (`None`: a plain denial, outside any signed zone).
    NoRecords(Option<Proof>),
    /// The validator found the answer bogus (bad or missing signatures in a signed zone).
    Bogus,
    /// The lookup itself failed (timeout, SERVFAIL, REFUSED, ...).
    Error(String),
}

impl Answer {
    /// Reduces a hickory lookup result to an [`Answer`]; `proofs` gives each answer
    /// record's proof, for the records of the type asked for.
    fn of(result: Result<Vec<Proof>, &NetError>) -> Self {
        match result {
            Ok(proofs) if proofs.is_empty() => Answer::NoRecords(None),
            Ok(proofs) => Answer::Records(proofs),
            Err(e) if is_bogus(e) => Answer::Bogus,
            Err(NetError::Dns(DnsError::Nsec { proof, .. })) => Answer::NoRecords(Some(*proof)),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Answer::NoRecords(None),
            Err(e) => Answer::Error(e.to_string()),
        }
    }
}

/// How an [`Answer`] counts for DANE (RFC 7672 §2.1.1, §2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Secure records: DANE applies.
    Secure,
    /// Unsigned, or securely or insecurely absent: DANE does not apply.
    Insecure,
    /// Bogus or indeterminate, or the lookup failed: defer.
    Failed(String),
}

/// Whether the resolver path carries DNSSEC at all, which decides what a bogus answer
/// means: from a path that strips signatures (a forwarder without DNSSEC support, a
/// middlebox) every signed name looks bogus, and treating that as an attack would stop all
/// mail; from a path that validates the root's keys, bogus is bogus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnssecPath {
    /// The root zone's records validate against the trust anchor.
    Validating,
    /// It does not: no answer from this path can be secure.
    Stripped,
}

/// What the resolver path is, given what the root check just `observed` and whether the
/// path has validated before (`seen`/`remember` read and set that memory): a path that
/// validated once counts as validating for good, so signatures stripped later (an attack,
/// not a configuration) cannot turn bogus answers into insecure ones.
fn sticky_path<M>(
    memory: &M,
    observed: DnssecPath,
    seen: impl Fn(&M) -> bool,
    remember: impl Fn(&M),
) -> DnssecPath {
    match observed {
        DnssecPath::Validating => {
            remember(memory);
            DnssecPath::Validating
        }
        DnssecPath::Stripped if seen(memory) => {
            tracing::warn!("the resolver path validated DNSSEC before and no longer does; treating bogus answers as bogus (deferring)");
            DnssecPath::Validating
        }
        DnssecPath::Stripped => {
            tracing::warn!("the resolver path does not carry DNSSEC (the root zone does not validate); DANE cannot apply");
            DnssecPath::Stripped
        }
    }
}

/// The DANE decision for one answer; `path` is only consulted when the answer is bogus or
/// indeterminate (the caller checks it lazily, then).
pub fn classify(answer: &Answer, path: impl FnOnce() -> DnssecPath) -> Verdict {
    let bogus = |what: &str, path: DnssecPath| match path {
        DnssecPath::Validating => Verdict::Failed(what.to_string()),
        DnssecPath::Stripped => Verdict::Insecure,
    };
    match answer {
        Answer::Error(e) => Verdict::Failed(format!("lookup failed: {e}")),
        Answer::Bogus => bogus("DNSSEC validation failed (bogus)", path()),
        Answer::NoRecords(None) | Answer::NoRecords(Some(Proof::Secure | Proof::Insecure)) => {
            Verdict::Insecure
        }
        Answer::NoRecords(Some(_)) => bogus("denial of existence is bogus", path()),
        Answer::Records(proofs) if proofs.iter().all(|p| *p == Proof::Secure) => Verdict::Secure,
        Answer::Records(proofs) if proofs.iter().all(|p| *p == Proof::Insecure) => {
            Verdict::Insecure
        }
        Answer::Records(_) => bogus("records are bogus or indeterminate", path()),
    }
}

/// A DNSSEC-validating resolver for the DANE lookups only. MX routing keeps its own,
/// non-validating resolver; once a domain's MX RRset is secure, only the validated hosts
/// are used.
pub struct DaneResolver {
    resolver: TokioResolver,
    /// Set once the root zone has validated through this path. From then on a path that
    /// stops validating is not "a forwarder without DNSSEC" (the configuration did not
    /// change) but someone stripping signatures in between, so bogus answers stay bogus
    /// and defer: the stripped-path leniency only covers a path that never validated.
    validated_once: std::sync::atomic::AtomicBool,
}

impl DaneResolver {
    /// `server`: as `delivery.resolver`; `trust_anchor`: a file of DNSKEY records, or the
    /// root keys built into hickory when `None`.
    pub fn new(server: Option<SocketAddr>, trust_anchor: Option<&Path>) -> Result<Self, String> {
        let mut builder = crate::route::resolver_builder(server)?;
        builder.options_mut().validate = true;
        if let Some(path) = trust_anchor {
            let anchors = TrustAnchors::from_file(path)
                .map_err(|e| format!("delivery.dnssec_trust_anchor {}: {e}", path.display()))?;
            builder = builder.with_trust_anchor(Arc::new(anchors));
        }
        let resolver = builder
            .build()
            .map_err(|e| format!("building the DNSSEC resolver: {e}"))?;
        Ok(Self {
            resolver,
            validated_once: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether the root zone's SOA validates: see [`DnssecPath`]. (Not its DNSKEY RRset:
    /// keys that are the trust anchor count as secure without a signature.)
    async fn path(&self) -> DnssecPath {
        use std::sync::atomic::Ordering;
        let observed = match self.resolver.lookup(".", RecordType::SOA).await {
            Ok(l)
                if !l.answers().is_empty()
                    && l.answers().iter().all(|r| r.proof == Proof::Secure) =>
            {
                DnssecPath::Validating
            }
            _ => DnssecPath::Stripped,
        };
        sticky_path(
            &self.validated_once,
            observed,
            |o| o.load(Ordering::Relaxed),
            |o| o.store(true, Ordering::Relaxed),
        )
    }

    /// [`classify`], checking the resolver path only when the answer looks bogus.
    async fn verdict(&self, answer: &Answer) -> Verdict {
        match classify(answer, || DnssecPath::Validating) {
            Verdict::Failed(_) if !matches!(answer, Answer::Error(_)) => {
                let path = self.path().await;
                classify(answer, || path)
            }
            v => v,
        }
    }

    /// The validated MX lookup of `domain` (RFC 7672 §2.2.1): the secure host list, or
    /// insecure, or failed.
    pub async fn mx(&self, domain: &str) -> MxSecurity {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let result = self.resolver.lookup(fqdn.as_str(), RecordType::MX).await;
        let mut hosts: Vec<(u16, String)> = Vec::new();
        let answer = Answer::of(match &result {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(m) => {
                        hosts.push((
                            m.preference,
                            m.exchange
                                .to_ascii()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                        ));
                        Some(r.proof)
                    }
                    _ => None,
                })
                .collect()),
            Err(e) => Err(e),
        });
        match self.verdict(&answer).await {
            Verdict::Secure => {
                hosts.sort();
                hosts.dedup();
                MxSecurity::Secure(hosts.into_iter().map(|(_, h)| h).collect())
            }
            Verdict::Insecure => MxSecurity::Insecure,
            Verdict::Failed(why) => {
                tracing::warn!(domain, why, "validated MX lookup failed; deferring");
                MxSecurity::Failed(format!("MX records of {domain}: {why}"))
            }
        }
    }

    /// The TLSA records at `_25._tcp.<mx_host>`, judged for delivery to `domain`.
    pub async fn tlsa(&self, mx_host: &str, domain: &str) -> TlsaStatus {
        let name = format!("_{SMTP_PORT}._tcp.{}.", mx_host.trim_end_matches('.'));
        let result = self.resolver.lookup(name.as_str(), RecordType::TLSA).await;
        let mut records = Vec::new();
        let answer = Answer::of(match &result {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TLSA(t) => {
                        records.push(Tlsa {
                            usage: t.cert_usage.into(),
                            selector: t.selector.into(),
                            matching: t.matching.into(),
                            data: t.cert_data.clone(),
                        });
                        Some(r.proof)
                    }
                    _ => None,
                })
                .collect()),
            Err(e) => Err(e),
        });
        match self.verdict(&answer).await {
            Verdict::Insecure => TlsaStatus::Unprotected,
            Verdict::Failed(why) => {
                TlsaStatus::Failed(format!("TLSA records for {mx_host}: {why}"))
            }
            Verdict::Secure => match Expectation::new(records, mx_host, domain) {
                Some(e) => TlsaStatus::Required(Arc::new(e)),
                None => TlsaStatus::Unusable,
            },
        }
    }
}

/// A validation failure: answers were signed, but the signatures do not check out.
fn is_bogus(e: &NetError) -> bool {
    matches!(e, NetError::Dns(DnsError::DnssecBogus))
        || matches!(e, NetError::Dns(DnsError::Nsec { proof, .. }) if *proof == Proof::Bogus)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        ca: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
        leaf_spki: Vec<u8>,
    }

    fn pki(names: &[&str]) -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "DANE test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let leaf = rcgen::CertificateParams::new(names)
            .expect("params")
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf");
        Pki {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
            leaf_spki: leaf_key.public_key_der(),
        }
    }

    fn rec(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn check(records: Vec<Tlsa>, p: &Pki) -> Result<(), String> {
        let e = Expectation::new(records, "mx.example.test", "example.test")
            .ok_or("no usable records")?;
        verify(
            &e,
            &p.leaf,
            std::slice::from_ref(&p.ca),
            UnixTime::now(),
            &provider(),
        )
    }

    #[test]
    fn spki_is_found_in_a_certificate() {
        let p = pki(&["mx.example.test"]);
        assert_eq!(spki(&p.leaf), Some(p.leaf_spki.as_slice()));
        assert_eq!(spki(b"\x30\x03\x02\x01"), None, "truncated DER");
        assert_eq!(spki(b""), None);
    }

    #[test]
    fn dane_ee_matches_key_or_certificate_by_any_matching_type() {
        let p = pki(&["somewhere.else.test"]);
        let key = p.leaf_spki.clone();
        for r in [
            rec(3, 1, 1, Sha256::digest(&key).to_vec()),
            rec(3, 1, 2, Sha512::digest(&key).to_vec()),
            rec(3, 1, 0, key.clone()),
            rec(3, 0, 1, Sha256::digest(&p.leaf).to_vec()),
            rec(3, 0, 0, p.leaf.to_vec()),
        ] {
            // DANE-EE ignores names: the leaf names another host.
            assert_eq!(check(vec![r.clone()], &p), Ok(()), "{r:?}");
        }
    }

    #[test]
    fn a_record_for_another_key_does_not_match() {
        let p = pki(&["mx.example.test"]);
        let other = pki(&["mx.example.test"]);
        let err = check(
            vec![rec(3, 1, 1, Sha256::digest(&other.leaf_spki).to_vec())],
            &p,
        )
        .expect_err("mismatch");
        assert!(err.contains("no TLSA record matches"), "{err}");
    }

    #[test]
    fn dane_ta_needs_a_chain_to_the_anchor_and_a_name() {
        let p = pki(&["mx.example.test"]);
        let ta = rec(2, 0, 1, Sha256::digest(&p.ca).to_vec());
        assert_eq!(check(vec![ta.clone()], &p), Ok(()));
        // The recipient domain is an acceptable name too.
        let d = pki(&["example.test"]);
        let ta = rec(2, 1, 1, Sha256::digest(spki(&d.ca).expect("spki")).to_vec());
        assert_eq!(check(vec![ta], &d), Ok(()));
        // The anchor matched, but the leaf names neither the MX host nor the domain.
        let wrong = pki(&["elsewhere.test"]);
        let ta = rec(2, 0, 1, Sha256::digest(&wrong.ca).to_vec());
        let err = check(vec![ta], &wrong).expect_err("name");
        assert!(err.contains("trust anchor"), "{err}");
        // A DANE-TA record naming the leaf itself is not an anchor in the chain.
        let p = pki(&["mx.example.test"]);
        assert!(check(vec![rec(2, 0, 1, Sha256::digest(&p.leaf).to_vec())], &p).is_err());
    }

    #[test]
    fn lookups_are_secure_insecure_or_failed() {
        let validating = || DnssecPath::Validating;
        let c = |a: Answer| classify(&a, validating);
        assert_eq!(
            c(Answer::Records(vec![Proof::Secure, Proof::Secure])),
            Verdict::Secure
        );
        assert_eq!(c(Answer::Records(vec![Proof::Insecure])), Verdict::Insecure);
        assert_eq!(
            c(Answer::NoRecords(None)),
            Verdict::Insecure,
            "plain NXDOMAIN/NODATA"
        );
        assert_eq!(c(Answer::NoRecords(Some(Proof::Secure))), Verdict::Insecure);
        assert_eq!(
            c(Answer::NoRecords(Some(Proof::Insecure))),
            Verdict::Insecure
        );
        // RFC 7672 §2.2: bogus, indeterminate and failed lookups never fall back.
        for a in [
            Answer::Bogus,
            Answer::Records(vec![Proof::Bogus]),
            Answer::Records(vec![Proof::Secure, Proof::Indeterminate]),
            Answer::NoRecords(Some(Proof::Bogus)),
            Answer::Error("SERVFAIL".into()),
        ] {
            assert!(matches!(c(a.clone()), Verdict::Failed(_)), "{a:?}");
        }
    }

    #[test]
    fn a_path_that_validated_once_never_becomes_lenient() {
        use std::cell::Cell;
        let seen = Cell::new(false);
        let path = |observed| sticky_path(&seen, observed, |m| m.get(), |m| m.set(true));
        assert_eq!(path(DnssecPath::Stripped), DnssecPath::Stripped);
        assert_eq!(path(DnssecPath::Validating), DnssecPath::Validating);
        // Signatures stripped after the path was seen validating: still validating, so a
        // bogus answer defers instead of downgrading.
        assert_eq!(path(DnssecPath::Stripped), DnssecPath::Validating);
        assert_eq!(
            classify(&Answer::Bogus, || path(DnssecPath::Stripped)),
            Verdict::Failed("DNSSEC validation failed (bogus)".into())
        );
    }

    #[test]
    fn a_path_that_strips_dnssec_makes_bogus_answers_insecure_but_not_errors() {
        let stripped = || DnssecPath::Stripped;
        assert_eq!(classify(&Answer::Bogus, stripped), Verdict::Insecure);
        assert_eq!(
            classify(&Answer::Records(vec![Proof::Indeterminate]), stripped),
            Verdict::Insecure
        );
        assert!(matches!(
            classify(&Answer::Error("timed out".into()), stripped),
            Verdict::Failed(_)
        ));
        // Secure and plain answers never need the path checked.
        let unasked = || -> DnssecPath { panic!("path consulted") };
        assert_eq!(
            classify(&Answer::Records(vec![Proof::Secure]), unasked),
            Verdict::Secure
        );
        assert_eq!(
            classify(&Answer::NoRecords(None), unasked),
            Verdict::Insecure
        );
    }

    #[test]
    fn unusable_records_are_dropped() {
        let h = vec![0u8; 32];
        assert!(!rec(0, 0, 1, h.clone()).usable(), "PKIX-TA");
        assert!(!rec(1, 0, 1, h.clone()).usable(), "PKIX-EE");
        assert!(!rec(3, 2, 1, h.clone()).usable(), "selector");
        assert!(!rec(3, 1, 3, h.clone()).usable(), "matching type");
        assert!(!rec(3, 1, 1, vec![0u8; 31]).usable(), "digest length");
        assert!(!rec(3, 1, 0, Vec::new()).usable(), "empty");
        assert!(rec(3, 1, 1, h.clone()).usable());
        assert!(Expectation::new(vec![rec(1, 1, 1, h)], "mx.t", "t").is_none());
    }
}
