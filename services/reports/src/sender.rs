//! The daily job: for every closed UTC day, the stored records of each domain are merged,
//! turned into one report with `mail-auth`'s builders, addressed to the domain's `rua`
//! destinations and queued for delivery; then the records go.
//!
//! Only `mailto:` destinations are used (HTTPS submission of TLS-RPT, RFC 8460 §3, is not
//! done). A DMARC destination outside the policy domain must authorise it with a
//! `<policy-domain>._report._dmarc.<destination-domain>` record (RFC 7489 §7.1,
//! `verify_dmarc_report_address`); a destination whose `!size` limit the message exceeds
//! is skipped. A temporary DNS failure leaves the records for the next run.
//!
//! Reports leave from the null sender (`MAIL FROM:<>`), like other automatic mail about
//! mail (DSNs): a report that cannot be delivered must not bounce back into a mailbox
//! nobody reads, nor start an exchange with an auto-responder. The header From is
//! `from_address`.

use crate::dmarc::{merge as merge_dmarc, StoredDmarc};
use crate::tlsrpt::{merge as merge_tls, StoredTls};
use crate::{day_bounds, day_of, DMARC_KIND, TLSRPT_KIND};
use mail_auth::common::cache::NoCache;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use mail_auth::report::tlsrpt::{DateRange, Policy, PolicyDetails, Summary, TlsReport};
use mail_auth::report::Report;
use mail_auth::{MessageAuthenticator, Txt};
use mailfleet_storage::{DataScope, NewOutbound, NewOutboundRecipient, Stores};
use std::collections::BTreeMap;

/// A stored record: its key and value.
type Stored = (String, Vec<u8>);

/// Records read per pass over one kind.
const LIST_LIMIT: usize = 5_000;

/// The DNS questions the sender asks, behind a trait so tests answer them.
#[async_trait::async_trait]
pub trait ReportDns: Send + Sync {
    /// The destinations of `addrs` that may receive `domain`'s DMARC reports (RFC 7489
    /// §7.1); `None` on a temporary DNS failure.
    async fn dmarc_authorized(&self, domain: &str, addrs: &[String]) -> Option<Vec<String>>;
    /// The `rua` of `_smtp._tls.<domain>` (RFC 8460 §3); `Ok(empty)` when there is no
    /// record, `Err` on a temporary failure.
    async fn tlsrpt_rua(&self, domain: &str) -> Result<Vec<ReportUri>, String>;
}

#[async_trait::async_trait]
impl ReportDns for MessageAuthenticator {
    async fn dmarc_authorized(&self, domain: &str, addrs: &[String]) -> Option<Vec<String>> {
        self.verify_dmarc_report_address(domain, addrs, None::<&NoCache<Box<str>, Txt>>)
            .await
            .map(|v| v.into_iter().cloned().collect())
    }

    async fn tlsrpt_rua(&self, domain: &str) -> Result<Vec<ReportUri>, String> {
        let name = format!("_smtp._tls.{}.", domain.trim_end_matches('.'));
        match self
            .txt_lookup::<TlsRpt>(name, None::<&NoCache<Box<str>, Txt>>)
            .await
        {
            Ok(r) => Ok(r.rua.clone()),
            Err(mail_auth::Error::Dns(mail_auth::DnsError::Resolver(e))) => Err(e),
            Err(_) => Ok(Vec::new()),
        }
    }
}

/// Who the reports are from.
#[derive(Clone, Debug)]
pub struct SenderSettings {
    /// The submitter: `server.hostname`.
    pub hostname: String,
    /// `org_name` of the reports.
    pub org_name: String,
    /// Header From and contact address.
    pub from_address: String,
    pub dmarc: bool,
    pub tlsrpt: bool,
}

impl SenderSettings {
    pub fn from_config(c: &mailfleet_core::config::Config) -> Self {
        let r = &c.reports;
        let host = c.server.hostname.clone();
        Self {
            org_name: r.org_name.clone().unwrap_or_else(|| host.clone()),
            from_address: r
                .from_address
                .clone()
                .unwrap_or_else(|| format!("noreply-dmarc@{host}")),
            hostname: host,
            dmarc: r.dmarc_enabled,
            tlsrpt: r.tlsrpt_enabled,
        }
    }
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub dmarc_reports: usize,
    pub tls_reports: usize,
    /// Domain-days whose records were dropped without a report (no usable destination).
    pub discarded: usize,
    /// Domain-days left for the next run (DNS or store trouble).
    pub deferred: usize,
}

pub struct ReportSender {
    stores: Stores,
    settings: SenderSettings,
    dns: Box<dyn ReportDns>,
}

/// A `mailto:` address we are willing to send to: one `@`, no white space, no list or
/// route syntax.
pub fn usable_address(a: &str) -> bool {
    let a = a.trim();
    match a.split_once('@') {
        Some((l, d)) => {
            !l.is_empty()
                && !d.is_empty()
                && d.contains('.')
                && !d.contains('@')
                && !a
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || ",;<>\"()[]".contains(c))
        }
        None => false,
    }
}

/// The DMARC destinations a message of `len` bytes goes to: usable, within their `!size`
/// limit (0: none), without duplicates.
pub fn select_dmarc_destinations(rua: &[(String, usize)], len: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (a, max) in rua {
        let a = a.trim().to_string();
        if usable_address(&a)
            && (*max == 0 || len <= *max)
            && !out.iter().any(|o| o.eq_ignore_ascii_case(&a))
        {
            out.push(a);
        }
    }
    out
}

/// The `mailto:` destinations of a TLS-RPT record (HTTPS ones are not used).
pub fn select_tls_destinations(rua: &[ReportUri]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in rua {
        if let ReportUri::Mail(a) = u {
            let a = a.trim().trim_start_matches("mailto:").to_string();
            if usable_address(&a) && !out.iter().any(|o| o.eq_ignore_ascii_case(&a)) {
                out.push(a);
            }
        }
    }
    out
}

/// The DMARC aggregate report of one domain's day.
pub fn build_dmarc_report(s: &SenderSettings, day: &str, stored: &StoredDmarc) -> Report {
    let (begin, end) = day_bounds(day).unwrap_or((0, 0));
    let mut report = Report::new()
        .with_version(1.0)
        .with_org_name(&s.org_name)
        .with_email(&s.from_address)
        .with_report_id(format!("{day}.{}@{}", stored.policy.domain, s.hostname))
        .with_date_range_begin(begin as u64)
        .with_date_range_end(end as u64)
        .with_policy_published(stored.policy.clone());
    for r in &stored.records {
        report.add_record(r.clone());
    }
    report
}

/// The TLS report of one domain's day (one policy entry per policy type).
pub fn build_tls_report(s: &SenderSettings, day: &str, parts: &[StoredTls]) -> TlsReport {
    let (begin, end) = day_bounds(day).unwrap_or((0, 0));
    let domain = parts.first().map(|p| p.domain.clone()).unwrap_or_default();
    TlsReport {
        organization_name: Some(s.org_name.clone()),
        date_range: DateRange::from_timestamps(begin, end + 1),
        contact_info: Some(s.from_address.clone()),
        report_id: format!("{day}.{domain}@{}", s.hostname),
        policies: parts
            .iter()
            .map(|p| {
                let mut details = PolicyDetails::new(p.policy.into(), p.domain.clone());
                details.mx_host = p.mx_hosts.clone();
                Policy {
                    policy: details,
                    summary: Summary {
                        total_success: p.success,
                        total_failure: p.failures.iter().map(|f| f.failed_session_count).sum(),
                    },
                    failure_details: p.failures.clone(),
                }
            })
            .collect(),
    }
}

/// The stored records that parse; one that does not (written by a different version, or
/// damaged) is logged and dropped with the others of its day.
fn decode<T: serde::de::DeserializeOwned>(records: &[Stored]) -> Vec<T> {
    records
        .iter()
        .filter_map(|(k, v)| match serde_json::from_slice(v) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(key = %k, error = %e, "unreadable report record dropped");
                None
            }
        })
        .collect()
}

/// `<day>/<domain>/<rest>` split; `None` for a key that is not ours.
fn split_key(key: &str) -> Option<(&str, &str)> {
    let mut it = key.splitn(3, '/');
    let day = it.next()?;
    let domain = it.next()?;
    it.next()?;
    Some((day, domain))
}

impl ReportSender {
    pub fn new(stores: Stores, settings: SenderSettings, dns: Box<dyn ReportDns>) -> Self {
        Self {
            stores,
            settings,
            dns,
        }
    }

    /// Sends the reports of every day before the UTC day of `now` (and of that day too
    /// with `include_today`, for an administrator's check of the whole path).
    pub async fn run_once(&self, now: i64, include_today: bool) -> RunSummary {
        let today = day_of(if include_today { now + 86_400 } else { now });
        let mut sum = RunSummary::default();
        if self.settings.dmarc {
            self.run_kind(DMARC_KIND, &today, now, &mut sum).await;
        }
        if self.settings.tlsrpt {
            self.run_kind(TLSRPT_KIND, &today, now, &mut sum).await;
        }
        sum
    }

    async fn run_kind(&self, kind: &str, today: &str, now: i64, sum: &mut RunSummary) {
        let meta = self.stores.meta.as_ref();
        // Keys sort by day, then domain: a pass takes the groups of closed days it read in
        // full; a full page's last group may continue on the next page, so it waits for
        // the next pass (unless it is the only group, then it is sent as it stands).
        let mut deferred_keys: std::collections::HashSet<String> = Default::default();
        loop {
            let page = match meta.list_data(DataScope::Global, kind, LIST_LIMIT).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(kind, error = %e, "report records not readable; trying next run");
                    sum.deferred += 1;
                    return;
                }
            };
            let full = page.len() >= LIST_LIMIT;
            let mut groups: BTreeMap<(String, String), Vec<Stored>> = BTreeMap::new();
            for (key, datum) in page {
                if deferred_keys.contains(&key) {
                    continue;
                }
                let Some((day, domain)) = split_key(&key) else {
                    continue;
                };
                if day >= today {
                    continue;
                }
                groups
                    .entry((day.to_string(), domain.to_string()))
                    .or_default()
                    .push((key, datum.value));
            }
            if full && groups.len() > 1 {
                groups.pop_last();
            }
            if groups.is_empty() {
                return;
            }
            for ((day, domain), records) in groups {
                let keys: Vec<String> = records.iter().map(|(k, _)| k.clone()).collect();
                let sent = if kind == DMARC_KIND {
                    self.send_dmarc(&day, &domain, records, now, sum).await
                } else {
                    self.send_tls(&day, &domain, records, now, sum).await
                };
                if sent {
                    for k in &keys {
                        if let Err(e) = meta.delete_data(DataScope::Global, kind, k).await {
                            tracing::warn!(kind, key = %k, error = %e, "report record not deleted");
                            deferred_keys.insert(k.clone());
                        }
                    }
                } else {
                    sum.deferred += 1;
                    deferred_keys.extend(keys);
                }
            }
            if !full {
                return;
            }
        }
    }

    /// Sends one domain's DMARC report; true when the records are done with (sent, or
    /// nowhere to send them), false to keep them for the next run.
    async fn send_dmarc(
        &self,
        day: &str,
        domain: &str,
        records: Vec<(String, Vec<u8>)>,
        now: i64,
        sum: &mut RunSummary,
    ) -> bool {
        let parts: Vec<StoredDmarc> = decode(&records);
        let Some(stored) = merge_dmarc(parts) else {
            return true;
        };
        if stored.records.is_empty() {
            return true;
        }
        let report = build_dmarc_report(&self.settings, day, &stored);
        let addrs: Vec<String> = stored.rua.iter().map(|(a, _)| a.clone()).collect();
        let Some(authorized) = self.dns.dmarc_authorized(domain, &addrs).await else {
            tracing::info!(
                domain,
                "DMARC report destinations not verifiable (DNS); trying next run"
            );
            return false;
        };
        let rua: Vec<(String, usize)> = stored
            .rua
            .iter()
            .filter(|(a, _)| authorized.iter().any(|b| b == a))
            .cloned()
            .collect();
        // The size the limits are checked against: the message as it would go to all.
        let probe = self.dmarc_message(&report, &select_dmarc_destinations(&rua, 0));
        let to = match &probe {
            Some(m) => select_dmarc_destinations(&rua, m.len()),
            None => Vec::new(),
        };
        if to.is_empty() {
            tracing::info!(
                domain,
                day,
                "DMARC report has no usable destination; records dropped"
            );
            sum.discarded += 1;
            return true;
        }
        let Some(message) = self.dmarc_message(&report, &to) else {
            return true;
        };
        if self.enqueue(message, &to, now).await {
            tracing::info!(domain, day, rows = stored.records.len(), to = ?to, "DMARC aggregate report queued");
            sum.dmarc_reports += 1;
            true
        } else {
            false
        }
    }

    fn dmarc_message(&self, report: &Report, to: &[String]) -> Option<Vec<u8>> {
        let s = &self.settings;
        if to.is_empty() {
            return None;
        }
        report
            .to_rfc5322(
                &s.hostname,
                (s.org_name.as_str(), s.from_address.as_str()),
                to.iter().map(String::as_str),
            )
            .map(String::into_bytes)
            .map_err(|e| tracing::warn!(error = %e, "DMARC report not built"))
            .ok()
    }

    async fn send_tls(
        &self,
        day: &str,
        domain: &str,
        records: Vec<(String, Vec<u8>)>,
        now: i64,
        sum: &mut RunSummary,
    ) -> bool {
        let parts: Vec<StoredTls> = decode(&records);
        let merged = merge_tls(parts);
        if merged.is_empty() {
            return true;
        }
        let rua = match self.dns.tlsrpt_rua(domain).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(domain, error = %e, "TLSRPT record not readable (DNS); trying next run");
                return false;
            }
        };
        let to = select_tls_destinations(&rua);
        if to.is_empty() {
            // Most domains publish no TLSRPT record: their counts go quietly.
            tracing::debug!(domain, day, "no TLS-RPT mailto destination; counts dropped");
            sum.discarded += 1;
            return true;
        }
        let report = build_tls_report(&self.settings, day, &merged);
        let s = &self.settings;
        let message = match report.to_rfc5322(
            domain,
            &s.hostname,
            (s.org_name.as_str(), s.from_address.as_str()),
            to.iter().map(String::as_str),
        ) {
            Ok(m) => m.into_bytes(),
            Err(e) => {
                tracing::warn!(domain, error = %e, "TLS report not built");
                return true;
            }
        };
        if self.enqueue(message, &to, now).await {
            tracing::info!(domain, day, to = ?to, "TLS report queued");
            sum.tls_reports += 1;
            true
        } else {
            false
        }
    }

    async fn enqueue(&self, message: Vec<u8>, to: &[String], now: i64) -> bool {
        let size = message.len() as u64;
        let blob = match self.stores.put_blob(bytes::Bytes::from(message)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "report not stored; trying next run");
                return false;
            }
        };
        let msg = NewOutbound {
            blob,
            size,
            sender: String::new(),
            account: None,
            envid: None,
            ret: None,
            recipients: to
                .iter()
                .map(|a| NewOutboundRecipient {
                    address: a.clone(),
                    notify: None,
                    orcpt: None,
                })
                .collect(),
            created_at: now,
            trace: None,
        };
        match self.stores.meta.enqueue_outbound(msg).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "report not queued; trying next run");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dmarc::tests::{dmarc_output, spf};
    use crate::DmarcCollector;
    use mail_auth::report::ActionDisposition;

    fn settings() -> SenderSettings {
        SenderSettings {
            hostname: "mx.example.test".into(),
            org_name: "mx.example.test".into(),
            from_address: "noreply-dmarc@mx.example.test".into(),
            dmarc: true,
            tlsrpt: true,
        }
    }

    #[test]
    fn destinations_are_mailto_within_their_limits() {
        let rua = vec![
            ("agg@example.org".to_string(), 0),
            ("AGG@example.org".to_string(), 0),
            ("small@example.org".to_string(), 100),
            ("bad address@example.org".to_string(), 0),
            ("nodomain".to_string(), 0),
        ];
        assert_eq!(
            select_dmarc_destinations(&rua, 1000),
            vec!["agg@example.org"]
        );
        assert_eq!(
            select_dmarc_destinations(&rua, 50),
            vec!["agg@example.org", "small@example.org"]
        );
        let tls = vec![
            ReportUri::Http("https://r.example.net/v1".into()),
            ReportUri::Mail("tls@example.net".into()),
        ];
        assert_eq!(select_tls_destinations(&tls), vec!["tls@example.net"]);
    }

    #[test]
    fn the_dmarc_report_parses_back_with_the_counts() {
        let c = DmarcCollector::new(10);
        let d = dmarc_output(
            "example.org",
            "v=DMARC1; p=quarantine; rua=mailto:agg@example.org",
            false,
        );
        for _ in 0..7 {
            c.record_at(
                10,
                &d,
                &[],
                &spf("example.org"),
                "192.0.2.7".parse().unwrap(),
                "a@example.org",
                "b@example.org",
                ActionDisposition::Quarantine,
            );
        }
        let stored = merge_dmarc(c.take_for_tests()).unwrap();
        let report = build_dmarc_report(&settings(), "1970-01-01", &stored);
        let parsed = Report::parse_xml(report.to_xml().as_bytes()).expect("parses");
        assert_eq!(parsed.domain(), "example.org");
        assert_eq!(parsed.org_name(), "mx.example.test");
        assert_eq!(parsed.date_range_begin(), 0);
        assert_eq!(parsed.date_range_end(), 86_399);
        assert_eq!(parsed.records().len(), 1);
        assert_eq!(parsed.records()[0].count(), 7);
        assert_eq!(
            parsed.records()[0].action_disposition(),
            ActionDisposition::Quarantine
        );
        assert_eq!(
            parsed.records()[0].source_ip(),
            Some("192.0.2.7".parse().unwrap())
        );
    }

    #[test]
    fn the_tls_report_parses_back_with_the_counts() {
        use crate::tlsrpt::{TlsCollector, TlsPolicyKind, TlsSession};
        let c = TlsCollector::new(10);
        let s = |f| TlsSession {
            domain: "example.net",
            policy: TlsPolicyKind::Sts,
            mx_host: "mx.example.net",
            receiving_ip: None,
            failure: f,
        };
        for _ in 0..3 {
            c.record_at(5, &s(None));
        }
        c.record_at(5, &s(Some("STARTTLS not offered")));
        let parts = c.take_for_tests();
        let report = build_tls_report(&settings(), "1970-01-01", &merge_tls(parts));
        let parsed = TlsReport::parse_json(report.to_json().as_bytes()).expect("parses");
        assert_eq!(parsed.policies.len(), 1);
        assert_eq!(parsed.policies[0].summary.total_success, 3);
        assert_eq!(parsed.policies[0].summary.total_failure, 1);
        assert_eq!(parsed.policies[0].policy.policy_domain, "example.net");
        assert_eq!(
            parsed.policies[0].failure_details[0].failed_session_count,
            1
        );
        assert_eq!(parsed.report_id, "1970-01-01.example.net@mx.example.test");
    }

    /// Answers every destination as authorised; no TLS-RPT record anywhere.
    struct AllowAll;

    #[async_trait::async_trait]
    impl ReportDns for AllowAll {
        async fn dmarc_authorized(&self, _domain: &str, addrs: &[String]) -> Option<Vec<String>> {
            Some(addrs.to_vec())
        }
        async fn tlsrpt_rua(&self, _domain: &str) -> Result<Vec<ReportUri>, String> {
            Ok(Vec::new())
        }
    }

    /// Two nodes count for the same domain and day; one run on the embedded store sends
    /// one report with both nodes' counts, from the null sender, and deletes the records.
    #[tokio::test]
    async fn two_nodes_counts_make_one_report_through_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let stores = mailfleet_storage::embedded::open(dir.path(), 16).expect("stores");
        let d = dmarc_output(
            "example.org",
            "v=DMARC1; p=none; rua=mailto:agg@example.org",
            true,
        );
        let ip = "192.0.2.7".parse().unwrap();
        let day1 = 86_400 * 20_000 + 100;
        for (node, n) in [(DmarcCollector::new(10), 3), (DmarcCollector::new(10), 4)] {
            for _ in 0..n {
                node.record_at(
                    day1,
                    &d,
                    &[],
                    &spf("example.org"),
                    ip,
                    "a@example.org",
                    "b@example.org",
                    ActionDisposition::None,
                );
            }
            assert_eq!(node.flush(stores.meta.as_ref()).await.unwrap(), 1);
        }
        let sender = ReportSender::new(stores.clone(), settings(), Box::new(AllowAll));
        // The same day is not closed yet.
        assert_eq!(
            sender.run_once(day1 + 10, false).await,
            RunSummary::default()
        );
        let sum = sender.run_once(day1 + 86_400, false).await;
        assert_eq!(sum.dmarc_reports, 1, "{sum:?}");
        let queued = stores
            .meta
            .list_outbound(mailfleet_storage::QueueId(0), 10)
            .await
            .unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].sender, "", "reports leave from the null sender");
        assert_eq!(queued[0].recipients[0].address, "agg@example.org");
        let raw = stores.blobs.get(&queued[0].blob).await.unwrap();
        let msg = mail_parser::MessageParser::default()
            .parse(&raw[..])
            .expect("message");
        let gz = msg
            .attachment(0)
            .expect("the report is attached")
            .contents();
        let mut xml = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut xml).unwrap();
        let report = Report::parse_xml(&xml).expect("report XML");
        let counts: u32 = report.records().iter().map(|r| r.count()).sum();
        assert_eq!(counts, 7, "both nodes' counts");
        assert!(stores
            .meta
            .list_data(DataScope::Global, DMARC_KIND, 10)
            .await
            .unwrap()
            .is_empty());
    }
}
