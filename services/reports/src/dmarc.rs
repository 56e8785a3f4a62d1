//! The DMARC collector: one counted row per distinct (source IP, identifiers, results,
//! disposition) per policy domain and UTC day, as the aggregate report lists them
//! (RFC 7489 §7.2, appendix C `RecordType`).
//!
//! [`DmarcCollector::record`] is one hash-map update under a mutex, whatever the number
//! of rows; the number of rows is capped (`max_rows`), and a message that would need a
//! new row beyond it is counted as dropped and logged, never stored. [`DmarcCollector::flush`]
//! moves the rows to keyed records of the metadata store (Global scope), where the daily
//! sender ([`crate::sender`]) merges every node's records.

use crate::{day_of, unix_now, DMARC_KIND};
use mail_auth::report::{ActionDisposition, PolicyPublished, Record, SPFDomainScope};
use mail_auth::{DkimOutput, DmarcOutput, SpfOutput};
use mailfleet_storage::{DataScope, Expect, MetadataStore, StoreResult};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Rows kept in memory between flushes when not configured.
pub const DEFAULT_MAX_ROWS: usize = 10_000;
/// Rows per stored record: a row is a few hundred bytes of JSON, well under the 4 MiB a
/// record may hold.
const ROWS_PER_RECORD: usize = 2_000;

/// One stored record: part of one domain's day.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredDmarc {
    pub policy: PolicyPublished,
    /// The `rua` addresses of the published record (`mailto:` removed), with their size
    /// limits in bytes (0: none).
    pub rua: Vec<(String, usize)>,
    /// Rows with their `row.count`.
    pub records: Vec<Record>,
}

#[derive(Default)]
struct DomainDay {
    policy: PolicyPublished,
    rua: Vec<(String, usize)>,
    /// Row (with count 0) to its count.
    rows: HashMap<Record, u32>,
}

#[derive(Default)]
struct State {
    days: HashMap<(String, String), DomainDay>,
    rows: usize,
    dropped: u64,
}

/// Collects DMARC results of one process.
pub struct DmarcCollector {
    state: Mutex<State>,
    max_rows: usize,
    node: String,
    seq: AtomicU64,
}

impl Default for DmarcCollector {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ROWS)
    }
}

impl DmarcCollector {
    pub fn new(max_rows: usize) -> Self {
        Self {
            state: Mutex::default(),
            max_rows: max_rows.max(1),
            node: crate::node_tag(),
            seq: AtomicU64::new(0),
        }
    }

    /// Counts one message DMARC was evaluated for, now.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        dmarc: &DmarcOutput,
        dkim: &[DkimOutput<'_>],
        spf: &SpfOutput,
        ip: IpAddr,
        header_from: &str,
        envelope_from: &str,
        disposition: ActionDisposition,
    ) {
        self.record_at(
            unix_now(),
            dmarc,
            dkim,
            spf,
            ip,
            header_from,
            envelope_from,
            disposition,
        )
    }

    /// [`Self::record`] at a given time. Messages whose policy domain asks for no
    /// aggregate reports (no record, or no `rua`) are not counted.
    #[allow(clippy::too_many_arguments)]
    pub fn record_at(
        &self,
        now: i64,
        dmarc: &DmarcOutput,
        dkim: &[DkimOutput<'_>],
        spf: &SpfOutput,
        ip: IpAddr,
        header_from: &str,
        envelope_from: &str,
        disposition: ActionDisposition,
    ) {
        let Some(published) = dmarc.dmarc_record() else {
            return;
        };
        if published.rua.is_empty() || dmarc.domain().is_empty() {
            return;
        }
        let domain = dmarc.domain().to_ascii_lowercase();
        let mut row = Record::new()
            .with_dkim_output(dkim)
            .with_spf_output(spf, SPFDomainScope::MailFrom)
            .with_dmarc_output(dmarc)
            .with_source_ip(ip)
            .with_header_from(domain_part(header_from))
            .with_envelope_from(domain_part(envelope_from))
            .with_action_disposition(disposition);
        // The error texts would make every failure its own row; the result is what the
        // report is about.
        for d in &mut row.auth_results.dkim {
            d.human_result = None;
        }
        for s in &mut row.auth_results.spf {
            s.human_result = None;
        }
        let key = (day_of(now), domain);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let full = st.rows >= self.max_rows;
        let State {
            days,
            rows,
            dropped,
        } = &mut *st;
        if !days.contains_key(&key) && full {
            *dropped += 1;
            crate::log_drop("DMARC", *dropped, &key.1);
            return;
        }
        let day = days.entry(key.clone()).or_insert_with(|| DomainDay {
            policy: PolicyPublished::from_record(key.1.clone(), published),
            rua: published
                .rua
                .iter()
                .map(|u| (u.uri().to_string(), u.max_size()))
                .collect(),
            rows: HashMap::new(),
        });
        if let Some(n) = day.rows.get_mut(&row) {
            *n = n.saturating_add(1);
        } else if full {
            *dropped += 1;
            crate::log_drop("DMARC", *dropped, &key.1);
        } else {
            day.rows.insert(row, 1);
            *rows += 1;
        }
    }

    /// Rows in memory now.
    pub fn rows(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rows
    }

    /// Messages not counted because the rows were at their cap.
    pub fn dropped(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }

    /// The rows collected so far, grouped per (day, domain), leaving none behind.
    fn take(&self) -> Vec<((String, String), StoredDmarc)> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.rows = 0;
        std::mem::take(&mut st.days)
            .into_iter()
            .map(|(k, d)| {
                let records = d
                    .rows
                    .into_iter()
                    .map(|(mut r, n)| {
                        r.row.count = n;
                        r
                    })
                    .collect();
                (
                    k,
                    StoredDmarc {
                        policy: d.policy,
                        rua: d.rua,
                        records,
                    },
                )
            })
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn take_for_tests(&self) -> Vec<StoredDmarc> {
        self.take().into_iter().map(|(_, s)| s).collect()
    }

    /// Puts rows back that could not be written (counts add up).
    fn restore(&self, key: (String, String), stored: StoredDmarc) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State { days, rows, .. } = &mut *st;
        let day = days.entry(key).or_insert_with(|| DomainDay {
            policy: stored.policy,
            rua: stored.rua,
            rows: HashMap::new(),
        });
        for mut r in stored.records {
            let n = std::mem::take(&mut r.row.count);
            match day.rows.get_mut(&r) {
                Some(c) => *c = c.saturating_add(n),
                None => {
                    day.rows.insert(r, n);
                    *rows += 1;
                }
            }
        }
    }

    /// Writes the collected rows to the metadata store; rows whose write failed stay in
    /// memory for the next flush. Returns the records written.
    pub async fn flush(&self, meta: &dyn MetadataStore) -> StoreResult<usize> {
        let mut written = 0;
        let mut first_err = None;
        for (key, stored) in self.take() {
            let mut rest = stored.records;
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(ROWS_PER_RECORD));
                let part = StoredDmarc {
                    policy: stored.policy.clone(),
                    rua: stored.rua.clone(),
                    records: std::mem::replace(&mut rest, tail),
                };
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                let rkey = format!("{}/{}/{}-{seq}", key.0, key.1, self.node);
                let value = serde_json::to_vec(&part).unwrap_or_default();
                match meta
                    .put_data(
                        DataScope::Global,
                        DMARC_KIND,
                        &rkey,
                        value,
                        Some(crate::record_expiry()),
                        Expect::Absent,
                    )
                    .await
                {
                    Ok(_) => written += 1,
                    Err(e) => {
                        tracing::warn!(key = %rkey, error = %e, "DMARC report rows not stored; kept for the next flush");
                        self.restore(key.clone(), part);
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) if written == 0 => Err(e),
            _ => Ok(written),
        }
    }
}

/// The domain of an address (`user@domain`), or the whole text when it has no `@` (a
/// HELO name for the null sender).
pub fn domain_part(addr: &str) -> String {
    let addr = addr.trim().trim_start_matches('<').trim_end_matches('>');
    addr.rsplit_once('@')
        .map_or(addr, |(_, d)| d)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Merges stored parts of one domain's day into one list of rows: identical rows (from
/// two nodes, two flushes) add their counts. The policy of the last part wins (the
/// record may have changed during the day; the latest is what the domain publishes now).
pub fn merge(parts: Vec<StoredDmarc>) -> Option<StoredDmarc> {
    let mut out: Option<StoredDmarc> = None;
    let mut index: HashMap<Record, usize> = HashMap::new();
    for part in parts {
        let o = out.get_or_insert_with(StoredDmarc::default);
        o.policy = part.policy;
        o.rua = part.rua;
        for mut r in part.records {
            let n = std::mem::take(&mut r.row.count);
            match index.get(&r) {
                Some(&i) => {
                    let c = &mut o.records[i].row.count;
                    *c = c.saturating_add(n);
                }
                None => {
                    index.insert(r.clone(), o.records.len());
                    r.row.count = n;
                    o.records.push(r);
                }
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::dmarc::Dmarc;
    use std::sync::Arc;

    pub fn dmarc_output(domain: &str, txt: &str, pass: bool) -> DmarcOutput {
        let record = Dmarc::parse(txt.as_bytes()).expect("record");
        let r = if pass {
            mail_auth::DmarcResult::Pass
        } else {
            mail_auth::DmarcResult::Fail(mail_auth::Error::NotAligned)
        };
        DmarcOutput::new(domain.into())
            .with_spf_result(r.clone())
            .with_dkim_result(r)
            .with_record(Arc::new(record))
    }

    pub fn spf(domain: &str) -> SpfOutput {
        SpfOutput::new(domain.into())
    }

    const TXT: &str = "v=DMARC1; p=reject; rua=mailto:agg@example.org";

    #[test]
    fn identical_results_share_a_row_and_count() {
        let c = DmarcCollector::new(100);
        let d = dmarc_output("example.org", TXT, true);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            c.record_at(
                1000,
                &d,
                &[],
                &spf("example.org"),
                ip,
                "a@Example.org",
                "b@example.org",
                ActionDisposition::Pass,
            );
        }
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        c.record_at(
            1000,
            &d,
            &[],
            &spf("example.org"),
            other,
            "a@example.org",
            "b@example.org",
            ActionDisposition::Pass,
        );
        // Another day is another report.
        c.record_at(
            90_000,
            &d,
            &[],
            &spf("example.org"),
            ip,
            "a@example.org",
            "b@example.org",
            ActionDisposition::Pass,
        );
        assert_eq!(c.rows(), 3);
        let mut taken = c.take();
        taken.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(taken.len(), 2);
        assert_eq!(
            taken[0].0,
            ("1970-01-01".to_string(), "example.org".to_string())
        );
        let mut counts: Vec<u32> = taken[0].1.records.iter().map(|r| r.row.count).collect();
        counts.sort();
        assert_eq!(counts, vec![1, 5]);
        assert_eq!(taken[0].1.rua, vec![("agg@example.org".to_string(), 0)]);
        assert_eq!(taken[0].1.records[0].identifiers.header_from, "example.org");
        assert_eq!(c.rows(), 0);
    }

    #[test]
    fn domains_without_rua_are_not_counted_and_the_cap_holds() {
        let c = DmarcCollector::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let none = dmarc_output("quiet.example", "v=DMARC1; p=none", true);
        c.record_at(
            0,
            &none,
            &[],
            &spf("quiet.example"),
            ip,
            "a@quiet.example",
            "",
            ActionDisposition::Pass,
        );
        assert_eq!(c.rows(), 0);
        let d = dmarc_output("example.org", TXT, false);
        for i in 0..5u8 {
            let ip = IpAddr::from([192, 0, 2, i]);
            c.record_at(
                0,
                &d,
                &[],
                &spf("example.org"),
                ip,
                "a@example.org",
                "",
                ActionDisposition::Reject,
            );
        }
        assert_eq!(c.rows(), 2);
        assert_eq!(c.dropped(), 3);
        // An existing row still counts at the cap.
        c.record_at(
            0,
            &d,
            &[],
            &spf("example.org"),
            IpAddr::from([192, 0, 2, 0]),
            "a@example.org",
            "",
            ActionDisposition::Reject,
        );
        assert_eq!(c.dropped(), 3);
        let taken = c.take();
        let total: u32 = taken
            .iter()
            .flat_map(|(_, s)| &s.records)
            .map(|r| r.row.count)
            .sum();
        assert_eq!(total, 3);
    }

    #[test]
    fn merging_adds_the_counts_of_identical_rows() {
        let c1 = DmarcCollector::new(10);
        let c2 = DmarcCollector::new(10);
        let d = dmarc_output("example.org", TXT, true);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let ip2: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..3 {
            c1.record_at(
                0,
                &d,
                &[],
                &spf("example.org"),
                ip,
                "a@example.org",
                "",
                ActionDisposition::Pass,
            );
        }
        c2.record_at(
            0,
            &d,
            &[],
            &spf("example.org"),
            ip,
            "a@example.org",
            "",
            ActionDisposition::Pass,
        );
        c2.record_at(
            0,
            &d,
            &[],
            &spf("example.org"),
            ip2,
            "a@example.org",
            "",
            ActionDisposition::Pass,
        );
        let parts = c1
            .take()
            .into_iter()
            .chain(c2.take())
            .map(|(_, s)| s)
            .collect();
        let m = merge(parts).expect("merged");
        assert_eq!(m.records.len(), 2);
        let by_ip = |ip: IpAddr| {
            m.records
                .iter()
                .find(|r| r.row.source_ip == Some(ip))
                .unwrap()
                .row
                .count
        };
        assert_eq!(by_ip(ip), 4);
        assert_eq!(by_ip(ip2), 1);
        assert!(merge(Vec::new()).is_none());
    }

    #[test]
    fn stored_rows_round_trip_through_json() {
        let c = DmarcCollector::new(10);
        let d = dmarc_output("example.org", TXT, false);
        c.record_at(
            0,
            &d,
            &[],
            &spf("example.org"),
            "2001:db8::1".parse().unwrap(),
            "a@example.org",
            "x@example.net",
            ActionDisposition::Quarantine,
        );
        let (_, s) = c.take().pop().unwrap();
        let back: StoredDmarc = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            back.records[0].row.policy_evaluated.disposition,
            ActionDisposition::Quarantine
        );
    }
}
