//! The DNS records a hosted domain needs (what `mailfleet dns records` prints, as data),
//! and the check of whether DNS answers with each of them right now.

use crate::crd::{DmarcPolicy, DnsRecord, DomainSpec, MtaStsMode};
use mailfleet_storage::DkimKeyState;

/// The records of `spec`, `published: false` until [`Lookup::check`] says otherwise.
/// `hostname` is the server's, used when the spec names no MX host.
pub fn wanted(
    spec: &DomainSpec,
    hostname: &str,
    dkim: &[(String, DkimKeyState, String)],
) -> Vec<DnsRecord> {
    let d = &spec.domain_name;
    let host = spec
        .mx_host
        .as_deref()
        .unwrap_or(hostname)
        .trim_end_matches('.');
    let rec = |purpose: &str, name: String, type_: &str, value: String| DnsRecord {
        purpose: purpose.into(),
        name,
        type_: type_.into(),
        value,
        published: false,
    };
    let mut out = vec![
        rec("MX", format!("{d}."), "MX", format!("10 {host}.")),
        rec("SPF", format!("{d}."), "TXT", "v=spf1 mx -all".into()),
    ];
    // Domain aliases receive here too; their SPF names the same senders.
    for a in &spec.aliases {
        out.push(rec("MX", format!("{a}."), "MX", format!("10 {host}.")));
        out.push(rec("SPF", format!("{a}."), "TXT", "v=spf1 mx -all".into()));
    }
    for (selector, _state, value) in dkim {
        out.push(rec(
            "DKIM",
            format!("{selector}._domainkey.{d}."),
            "TXT",
            value.clone(),
        ));
    }
    let policy = match spec.dmarc.policy {
        DmarcPolicy::None => "none",
        DmarcPolicy::Quarantine => "quarantine",
        DmarcPolicy::Reject => "reject",
    };
    let rua = spec
        .dmarc
        .report_address
        .clone()
        .unwrap_or_else(|| format!("postmaster@{d}"));
    out.push(rec(
        "DMARC",
        format!("_dmarc.{d}."),
        "TXT",
        format!("v=DMARC1; p={policy}; rua=mailto:{rua}"),
    ));
    if spec.mta_sts.mode != MtaStsMode::None {
        // The id changes when the policy does (its mode and MX host), not on every reconcile.
        let id = policy_id(&format!("{:?}{host}", spec.mta_sts.mode));
        out.push(rec(
            "MTA-STS",
            format!("_mta-sts.{d}."),
            "TXT",
            format!("v=STSv1; id={id}"),
        ));
    }
    let tls = spec
        .tls_rpt_address
        .clone()
        .unwrap_or_else(|| format!("tls-reports@{d}"));
    out.push(rec(
        "TLS-RPT",
        format!("_smtp._tls.{d}."),
        "TXT",
        format!("v=TLSRPTv1; rua=mailto:{tls}"),
    ));
    // RFC 6186 service records, which mail clients' autoconfiguration follows.
    out.push(rec(
        "autoconfig",
        format!("_imaps._tcp.{d}."),
        "SRV",
        format!("0 1 993 {host}."),
    ));
    out.push(rec(
        "autoconfig",
        format!("_submissions._tcp.{d}."),
        "SRV",
        format!("0 1 465 {host}."),
    ));
    out.push(rec(
        "autoconfig",
        format!("_pop3s._tcp.{d}."),
        "SRV",
        format!("0 1 995 {host}."),
    ));
    out
}

/// A short stable id (FNV-1a, hex): not a secret, only a change marker.
fn policy_id(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:016x}", h)
}

/// Asks DNS for records. The operator's resolver is hickory with the pod's resolv.conf;
/// tests give one with fixed answers.
#[async_trait::async_trait]
pub trait Lookup: Send + Sync {
    /// The answers for `name` of `type_` (`MX`, `TXT`, `SRV`), each in the form
    /// [`wanted`] writes values (TXT strings joined).
    async fn answers(&self, name: &str, type_: &str) -> Vec<String>;
}

/// Marks each record whose value DNS returns.
pub async fn check(lookup: &dyn Lookup, records: &mut [DnsRecord]) {
    for r in records.iter_mut() {
        let answers = lookup.answers(&r.name, &r.type_).await;
        r.published = answers.iter().any(|a| same_value(&r.type_, a, &r.value));
    }
}

fn same_value(type_: &str, got: &str, want: &str) -> bool {
    if type_ == "TXT" {
        // Whitespace after semicolons varies between zone editors.
        fn norm(s: &str) -> Vec<&str> {
            s.split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect()
        }
        norm(got) == norm(want)
    } else {
        got.trim_end_matches('.')
            .eq_ignore_ascii_case(want.trim_end_matches('.'))
    }
}

/// The resolver of the pod (its resolv.conf), through hickory.
pub struct HickoryLookup(pub hickory_resolver::TokioResolver);

impl HickoryLookup {
    pub fn from_system() -> anyhow::Result<Self> {
        Ok(Self(
            hickory_resolver::TokioResolver::builder_tokio()?.build()?,
        ))
    }
}

#[async_trait::async_trait]
impl Lookup for HickoryLookup {
    async fn answers(&self, name: &str, type_: &str) -> Vec<String> {
        use hickory_resolver::proto::rr::{RData, RecordType};
        let rt = match type_ {
            "MX" => RecordType::MX,
            "TXT" => RecordType::TXT,
            "SRV" => RecordType::SRV,
            _ => return Vec::new(),
        };
        let Ok(lookup) = self.0.lookup(name, rt).await else {
            return Vec::new();
        };
        lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some(format!("{} {}", mx.preference, mx.exchange)),
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                RData::SRV(srv) => Some(format!(
                    "{} {} {} {}",
                    srv.priority, srv.weight, srv.port, srv.target
                )),
                _ => None,
            })
            .collect()
    }
}
