//! The TLS-RPT collector: per recipient (policy) domain, UTC day and policy type, the
//! sessions that negotiated TLS as the policy asked and, for the ones that did not, the
//! failure details by result type (RFC 8460 §4.3, §4.4), counted.
//!
//! The delivery worker reports each host attempt whose TLS a policy decided
//! ([`TlsSession`]); storage and flushing work as in [`crate::dmarc`].

use crate::{day_of, unix_now, TLSRPT_KIND};
use mail_auth::report::tlsrpt::{FailureDetails, PolicyType, ResultType};
use mailfleet_storage::{DataScope, Expect, MetadataStore, StoreResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Distinct failure rows kept in memory between flushes when not configured.
pub const DEFAULT_MAX_ROWS: usize = 10_000;

/// Which policy decided the TLS of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TlsPolicyKind {
    /// MTA-STS (RFC 8461), `enforce` or `testing`.
    Sts,
    /// DANE (RFC 7672): TLSA records.
    Tlsa,
    /// Neither: opportunistic TLS.
    NoPolicyFound,
}

impl From<TlsPolicyKind> for PolicyType {
    fn from(k: TlsPolicyKind) -> Self {
        match k {
            TlsPolicyKind::Sts => PolicyType::Sts,
            TlsPolicyKind::Tlsa => PolicyType::Tlsa,
            TlsPolicyKind::NoPolicyFound => PolicyType::NoPolicyFound,
        }
    }
}

/// One session (one attempt on one MX host) as delivery saw it.
#[derive(Clone, Debug)]
pub struct TlsSession<'a> {
    /// The recipient domain.
    pub domain: &'a str,
    pub policy: TlsPolicyKind,
    pub mx_host: &'a str,
    pub receiving_ip: Option<IpAddr>,
    /// `None`: TLS as the policy asked; `Some(why)`: the failure text (classified with
    /// [`classify_failure`]).
    pub failure: Option<&'a str>,
}

/// One stored record: part of one domain's day under one policy type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTls {
    pub domain: String,
    pub policy: TlsPolicyKind,
    pub mx_hosts: Vec<String>,
    pub success: u32,
    /// With their `failed_session_count`.
    pub failures: Vec<FailureDetails>,
}

#[derive(Default)]
struct Agg {
    mx_hosts: BTreeSet<String>,
    success: u32,
    failures: HashMap<FailureDetails, u32>,
}

type Key = (String, String, TlsPolicyKind);

#[derive(Default)]
struct State {
    days: HashMap<Key, Agg>,
    rows: usize,
    dropped: u64,
}

/// Collects outbound TLS results of one process.
pub struct TlsCollector {
    state: Mutex<State>,
    max_rows: usize,
    node: String,
    seq: AtomicU64,
}

impl Default for TlsCollector {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ROWS)
    }
}

/// The RFC 8460 §4.3 result type a failure text stands for. The texts are those of the
/// delivery client (rustls' certificate errors, our own "STARTTLS not offered").
pub fn classify_failure(policy: TlsPolicyKind, why: &str) -> ResultType {
    let w = why.to_ascii_lowercase();
    if w.contains("starttls not offered") {
        ResultType::StartTlsNotSupported
    } else if w.contains("expired") {
        ResultType::CertificateExpired
    } else if w.contains("notvalidforname")
        || w.contains("not valid for name")
        || w.contains("name mismatch")
    {
        ResultType::CertificateHostMismatch
    } else if w.contains("dnssec") || w.contains("bogus") {
        ResultType::DnssecInvalid
    } else if policy == TlsPolicyKind::Tlsa && (w.contains("tlsa") || w.contains("no usable")) {
        ResultType::TlsaInvalid
    } else if w.contains("unknownissuer")
        || w.contains("unknown issuer")
        || w.contains("not trusted")
        || w.contains("self-signed")
        || w.contains("selfsigned")
        // Any other rustls chain failure (a bad signature, an unknown or revoked issuer):
        // the certificate could not be trusted.
        || w.contains("invalid peer certificate")
    {
        ResultType::CertificateNotTrusted
    } else {
        ResultType::ValidationFailure
    }
}

impl TlsCollector {
    pub fn new(max_rows: usize) -> Self {
        Self {
            state: Mutex::default(),
            max_rows: max_rows.max(1),
            node: crate::node_tag(),
            seq: AtomicU64::new(0),
        }
    }

    pub fn record(&self, s: &TlsSession<'_>) {
        self.record_at(unix_now(), s)
    }

    pub fn record_at(&self, now: i64, s: &TlsSession<'_>) {
        let domain = s.domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() {
            return;
        }
        let key = (day_of(now), domain, s.policy);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let full = st.rows >= self.max_rows;
        let State {
            days,
            rows,
            dropped,
        } = &mut *st;
        if !days.contains_key(&key) && full {
            *dropped += 1;
            crate::log_drop("TLS", *dropped, &key.1);
            return;
        }
        let agg = days.entry(key).or_default();
        if !s.mx_host.is_empty() && agg.mx_hosts.len() < 32 {
            agg.mx_hosts
                .insert(s.mx_host.trim_end_matches('.').to_ascii_lowercase());
        }
        let Some(why) = s.failure else {
            agg.success = agg.success.saturating_add(1);
            return;
        };
        let mut f = FailureDetails::new(classify_failure(s.policy, why));
        if !s.mx_host.is_empty() {
            f = f.with_receiving_mx_hostname(s.mx_host.trim_end_matches('.').to_ascii_lowercase());
        }
        if let Some(ip) = s.receiving_ip {
            f = f.with_receiving_ip(ip);
        }
        match agg.failures.get_mut(&f) {
            Some(n) => *n = n.saturating_add(1),
            None if full => {
                *dropped += 1;
                crate::log_drop(
                    "TLS",
                    *dropped,
                    &f.receiving_mx_hostname.clone().unwrap_or_default(),
                );
            }
            None => {
                agg.failures.insert(f, 1);
                *rows += 1;
            }
        }
    }

    /// Distinct failure rows in memory now (successes are one counter per domain).
    pub fn rows(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rows
    }

    pub fn dropped(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }

    fn take(&self) -> Vec<(String, StoredTls)> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.rows = 0;
        std::mem::take(&mut st.days)
            .into_iter()
            .map(|((day, domain, policy), a)| {
                (
                    day,
                    StoredTls {
                        domain,
                        policy,
                        mx_hosts: a.mx_hosts.into_iter().collect(),
                        success: a.success,
                        failures: a
                            .failures
                            .into_iter()
                            .map(|(mut f, n)| {
                                f.failed_session_count = n;
                                f
                            })
                            .collect(),
                    },
                )
            })
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn take_for_tests(&self) -> Vec<StoredTls> {
        self.take().into_iter().map(|(_, s)| s).collect()
    }

    fn restore(&self, day: String, s: StoredTls) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State { days, rows, .. } = &mut *st;
        let agg = days.entry((day, s.domain, s.policy)).or_default();
        agg.mx_hosts.extend(s.mx_hosts);
        agg.success = agg.success.saturating_add(s.success);
        for mut f in s.failures {
            let n = std::mem::take(&mut f.failed_session_count);
            match agg.failures.get_mut(&f) {
                Some(c) => *c = c.saturating_add(n),
                None => {
                    agg.failures.insert(f, n);
                    *rows += 1;
                }
            }
        }
    }

    /// Writes the counts to the metadata store; counts whose write failed stay in memory.
    pub async fn flush(&self, meta: &dyn MetadataStore) -> StoreResult<usize> {
        let mut written = 0;
        let mut first_err = None;
        for (day, stored) in self.take() {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let rkey = format!("{day}/{}/{}-{seq}", stored.domain, self.node);
            let value = serde_json::to_vec(&stored).unwrap_or_default();
            match meta
                .put_data(
                    DataScope::Global,
                    TLSRPT_KIND,
                    &rkey,
                    value,
                    Some(crate::record_expiry()),
                    Expect::Absent,
                )
                .await
            {
                Ok(_) => written += 1,
                Err(e) => {
                    tracing::warn!(key = %rkey, error = %e, "TLS report counts not stored; kept for the next flush");
                    self.restore(day, stored);
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if written == 0 => Err(e),
            _ => Ok(written),
        }
    }
}

/// Merges stored parts of one domain's day: per policy type, successes add up, identical
/// failure rows add their counts.
pub fn merge(parts: Vec<StoredTls>) -> Vec<StoredTls> {
    let mut out: Vec<StoredTls> = Vec::new();
    for part in parts {
        let o = match out
            .iter_mut()
            .position(|o| o.policy == part.policy && o.domain == part.domain)
        {
            Some(i) => &mut out[i],
            None => {
                out.push(StoredTls {
                    failures: Vec::new(),
                    mx_hosts: Vec::new(),
                    success: 0,
                    ..part.clone()
                });
                out.last_mut().expect("just pushed")
            }
        };
        o.success = o.success.saturating_add(part.success);
        for h in part.mx_hosts {
            if !o.mx_hosts.contains(&h) {
                o.mx_hosts.push(h);
            }
        }
        for f in part.failures {
            let same = |g: &FailureDetails| {
                let mut a = g.clone();
                a.failed_session_count = f.failed_session_count;
                a == f
            };
            match o.failures.iter_mut().find(|g| same(g)) {
                Some(g) => {
                    g.failed_session_count = g
                        .failed_session_count
                        .saturating_add(f.failed_session_count)
                }
                None => o.failures.push(f),
            }
        }
    }
    for o in &mut out {
        o.mx_hosts.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session<'a>(policy: TlsPolicyKind, failure: Option<&'a str>) -> TlsSession<'a> {
        TlsSession {
            domain: "Example.NET",
            policy,
            mx_host: "mx1.example.net.",
            receiving_ip: Some("192.0.2.25".parse().unwrap()),
            failure,
        }
    }

    #[test]
    fn successes_and_failures_are_counted_per_policy_type() {
        let c = TlsCollector::new(100);
        for _ in 0..4 {
            c.record_at(0, &session(TlsPolicyKind::Sts, None));
        }
        c.record_at(
            0,
            &session(
                TlsPolicyKind::Sts,
                Some("192.0.2.25:25: STARTTLS not offered"),
            ),
        );
        c.record_at(
            0,
            &session(
                TlsPolicyKind::Sts,
                Some("192.0.2.25:25: STARTTLS not offered"),
            ),
        );
        c.record_at(
            0,
            &session(
                TlsPolicyKind::Tlsa,
                Some("DANE: no TLSA record matches the certificate"),
            ),
        );
        let mut taken = c.take();
        taken.sort_by_key(|(_, s)| s.policy == TlsPolicyKind::Tlsa);
        assert_eq!(taken.len(), 2);
        let (day, sts) = &taken[0];
        assert_eq!(day, "1970-01-01");
        assert_eq!(sts.domain, "example.net");
        assert_eq!(sts.success, 4);
        assert_eq!(sts.failures.len(), 1);
        assert_eq!(
            sts.failures[0].result_type,
            ResultType::StartTlsNotSupported
        );
        assert_eq!(sts.failures[0].failed_session_count, 2);
        assert_eq!(sts.mx_hosts, vec!["mx1.example.net".to_string()]);
        assert_eq!(taken[1].1.failures[0].result_type, ResultType::TlsaInvalid);
    }

    #[test]
    fn failure_texts_map_to_result_types() {
        use TlsPolicyKind::*;
        assert_eq!(
            classify_failure(Sts, "invalid peer certificate: Expired"),
            ResultType::CertificateExpired
        );
        assert_eq!(
            classify_failure(Sts, "invalid peer certificate: NotValidForName"),
            ResultType::CertificateHostMismatch
        );
        assert_eq!(
            classify_failure(Sts, "invalid peer certificate: UnknownIssuer"),
            ResultType::CertificateNotTrusted
        );
        assert_eq!(
            classify_failure(Sts, "TLS error: invalid peer certificate: BadSignature"),
            ResultType::CertificateNotTrusted
        );
        assert_eq!(
            classify_failure(Tlsa, "DANE: bogus TLSA RRset"),
            ResultType::DnssecInvalid
        );
        assert_eq!(
            classify_failure(Sts, "handshake failed"),
            ResultType::ValidationFailure
        );
    }

    #[test]
    fn merging_adds_up_across_nodes_and_the_cap_holds() {
        let a = TlsCollector::new(1);
        let b = TlsCollector::new(10);
        a.record_at(0, &session(TlsPolicyKind::Sts, None));
        a.record_at(
            0,
            &session(TlsPolicyKind::Sts, Some("STARTTLS not offered")),
        );
        a.record_at(0, &session(TlsPolicyKind::Sts, Some("UnknownIssuer")));
        assert_eq!(a.dropped(), 1);
        b.record_at(0, &session(TlsPolicyKind::Sts, None));
        b.record_at(
            0,
            &session(TlsPolicyKind::Sts, Some("STARTTLS not offered")),
        );
        let parts = a
            .take()
            .into_iter()
            .chain(b.take())
            .map(|(_, s)| s)
            .collect();
        let m = merge(parts);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].success, 2);
        assert_eq!(m[0].failures.len(), 1);
        assert_eq!(m[0].failures[0].failed_session_count, 2);
    }
}
