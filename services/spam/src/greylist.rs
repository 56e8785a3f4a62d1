//! Greylisting as a pure decision. A legitimate MTA retries a temporarily refused message; most
//! spam-sending software does not. So the first delivery attempt of an unknown
//! (client network, sender, recipient) triplet is deferred with a 4xx, and a retry after
//! `delay_secs` but within `expiry_secs` passes; the triplet is then remembered as passed
//! (whitelisted) for `pass_ttl_secs` so later mail from it is not delayed again.
//!
//! The client address is reduced to its /24 (IPv4) or /64 (IPv6), because big senders retry
//! from another host of the same pool. The pipeline stores the [`Record`] in the Coordinator
//! under [`triplet_key`], so all SMTP nodes agree, and calls [`decide_record`] on each attempt.

use std::net::IpAddr;

use serde::Deserialize;

use crate::ConfigError;

/// Greylisting timings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GreylistConfig {
    /// Minimum wait before a retry is accepted.
    pub delay_secs: u64,
    /// A first attempt older than this is forgotten: the next attempt starts over.
    pub expiry_secs: u64,
    /// How long a triplet that passed stays whitelisted, refreshed by each pass.
    pub pass_ttl_secs: u64,
}

impl Default for GreylistConfig {
    fn default() -> Self {
        Self {
            delay_secs: 300,
            expiry_secs: 24 * 3600,
            pass_ttl_secs: 36 * 24 * 3600,
        }
    }
}

impl GreylistConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.expiry_secs <= self.delay_secs {
            return Err(ConfigError::Greylist(
                "expiry_secs must be longer than delay_secs",
            ));
        }
        Ok(())
    }
}

/// What to do with this attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greylist {
    /// Accept (the retry came after the delay, or the triplet is whitelisted).
    Pass,
    /// Too early a retry: answer 4xx again; `retry_after` is seconds until it would pass.
    Defer { retry_after: u64 },
    /// Never seen (or expired): answer 4xx and record the first attempt.
    FirstSeen,
}

/// The stable Coordinator key of a triplet: `greylist:<network>:<sender>:<recipient>`, with
/// the network as `a.b.c.0/24` or the /64 prefix, addresses lowercased, the null sender as
/// `<>`. The same inputs give the same key on every node and every version.
pub fn triplet_key(client: IpAddr, sender: &str, recipient: &str) -> String {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    let net = match client {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    };
    let norm = |a: &str| {
        let a = a.trim().trim_start_matches('<').trim_end_matches('>');
        if a.is_empty() {
            "<>".to_string()
        } else {
            a.to_lowercase()
        }
    };
    format!("greylist:{net}:{}:{}", norm(sender), norm(recipient))
}

/// The bare decision from the time of the first attempt: `Pass` once `delay` has gone by and
/// before `expiry`; an expired or missing first attempt is `FirstSeen`. A first attempt in the
/// future (clock skew between nodes) is treated as just seen.
pub fn decide(first_seen: Option<u64>, now: u64, delay: u64, expiry: u64) -> Greylist {
    let Some(first) = first_seen else {
        return Greylist::FirstSeen;
    };
    let age = now.saturating_sub(first);
    if age > expiry {
        Greylist::FirstSeen
    } else if age >= delay {
        Greylist::Pass
    } else {
        Greylist::Defer {
            retry_after: delay - age,
        }
    }
}

/// What the Coordinator keeps per triplet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// First attempt, Unix seconds.
    pub first_seen: u64,
    /// Last accepted attempt, when it has passed: the triplet is whitelisted from then on.
    pub passed_at: Option<u64>,
}

impl Record {
    /// Compact text form for the Coordinator: `<first_seen>` or `<first_seen>:<passed_at>`.
    pub fn encode(&self) -> String {
        match self.passed_at {
            Some(p) => format!("{}:{p}", self.first_seen),
            None => self.first_seen.to_string(),
        }
    }

    /// Reads [`Record::encode`]'s form; `None` for anything else (treat as no record).
    pub fn decode(s: &str) -> Option<Self> {
        match s.split_once(':') {
            Some((f, p)) => Some(Self {
                first_seen: f.parse().ok()?,
                passed_at: Some(p.parse().ok()?),
            }),
            None => Some(Self {
                first_seen: s.parse().ok()?,
                passed_at: None,
            }),
        }
    }
}

/// A decision and what to store afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Greylist,
    /// The record to write back, or `None` to leave the stored one as is.
    pub store: Option<Record>,
    /// How long the stored record should live (the Coordinator's TTL), in seconds.
    pub ttl_secs: u64,
}

/// The full decision for one attempt given the stored record: whitelisted triplets pass (and
/// their whitelisting is refreshed), others follow [`decide`].
pub fn decide_record(record: Option<Record>, now: u64, cfg: &GreylistConfig) -> Outcome {
    if let Some(Record {
        first_seen,
        passed_at: Some(passed),
    }) = record
    {
        if now.saturating_sub(passed) <= cfg.pass_ttl_secs {
            return Outcome {
                decision: Greylist::Pass,
                store: Some(Record {
                    first_seen,
                    passed_at: Some(now.max(passed)),
                }),
                ttl_secs: cfg.pass_ttl_secs,
            };
        }
    }
    let first_seen = record
        .filter(|r| r.passed_at.is_none())
        .map(|r| r.first_seen);
    // A first attempt from the future (skewed clock) restarts the clock now.
    let first_seen = first_seen.filter(|f| *f <= now);
    match decide(first_seen, now, cfg.delay_secs, cfg.expiry_secs) {
        Greylist::FirstSeen => Outcome {
            decision: Greylist::FirstSeen,
            store: Some(Record {
                first_seen: now,
                passed_at: None,
            }),
            ttl_secs: cfg.expiry_secs,
        },
        Greylist::Pass => Outcome {
            decision: Greylist::Pass,
            store: Some(Record {
                first_seen: first_seen.unwrap_or(now),
                passed_at: Some(now),
            }),
            ttl_secs: cfg.pass_ttl_secs,
        },
        defer @ Greylist::Defer { .. } => Outcome {
            decision: defer,
            store: None,
            ttl_secs: cfg.expiry_secs,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_group_networks() {
        let a = triplet_key(
            "192.0.2.10".parse().unwrap(),
            "Alice@Example.com",
            "<bob@example.org>",
        );
        let b = triplet_key(
            "192.0.2.250".parse().unwrap(),
            "alice@example.com",
            "bob@example.org",
        );
        assert_eq!(a, b);
        assert_eq!(a, "greylist:192.0.2.0/24:alice@example.com:bob@example.org");
        assert_ne!(
            a,
            triplet_key(
                "192.0.3.10".parse().unwrap(),
                "alice@example.com",
                "bob@example.org"
            )
        );
        let v6 = triplet_key(
            "2001:db8:1:2:aaaa::1".parse().unwrap(),
            "",
            "bob@example.org",
        );
        assert_eq!(v6, "greylist:2001:db8:1:2::/64:<>:bob@example.org");
        assert_eq!(
            v6,
            triplet_key(
                "2001:db8:1:2:ffff::9".parse().unwrap(),
                "<>",
                "bob@example.org"
            )
        );
        assert_eq!(
            triplet_key("::ffff:192.0.2.1".parse().unwrap(), "a@b", "c@d"),
            triplet_key("192.0.2.1".parse().unwrap(), "a@b", "c@d")
        );
    }

    #[test]
    fn decide_timing() {
        assert_eq!(decide(None, 1000, 300, 3600), Greylist::FirstSeen);
        assert_eq!(
            decide(Some(1000), 1000, 300, 3600),
            Greylist::Defer { retry_after: 300 }
        );
        assert_eq!(
            decide(Some(1000), 1299, 300, 3600),
            Greylist::Defer { retry_after: 1 }
        );
        assert_eq!(decide(Some(1000), 1300, 300, 3600), Greylist::Pass);
        assert_eq!(decide(Some(1000), 4600, 300, 3600), Greylist::Pass);
        assert_eq!(
            decide(Some(1000), 4601, 300, 3600),
            Greylist::FirstSeen,
            "expired"
        );
    }

    #[test]
    fn record_flow_whitelists_after_pass() {
        let cfg = GreylistConfig::default();
        let t0 = 1_000_000;
        let first = decide_record(None, t0, &cfg);
        assert_eq!(first.decision, Greylist::FirstSeen);
        let rec = first.store.unwrap();
        assert_eq!(Record::decode(&rec.encode()), Some(rec));

        let early = decide_record(Some(rec), t0 + 60, &cfg);
        assert_eq!(early.decision, Greylist::Defer { retry_after: 240 });
        assert_eq!(early.store, None);

        let pass = decide_record(Some(rec), t0 + 400, &cfg);
        assert_eq!(pass.decision, Greylist::Pass);
        let passed = pass.store.unwrap();
        assert_eq!(passed.passed_at, Some(t0 + 400));
        assert_eq!(Record::decode(&passed.encode()), Some(passed));

        // Whitelisted: a new message a week later passes at once, and the pass is refreshed.
        let later = decide_record(Some(passed), t0 + 7 * 86400, &cfg);
        assert_eq!(later.decision, Greylist::Pass);
        assert_eq!(later.store.unwrap().passed_at, Some(t0 + 7 * 86400));

        // Whitelisting lapses after pass_ttl_secs: greylisted afresh.
        let lapsed = decide_record(Some(passed), t0 + 400 + cfg.pass_ttl_secs + 1, &cfg);
        assert_eq!(lapsed.decision, Greylist::FirstSeen);

        // Clock skew: a first_seen in the future restarts.
        let skew = decide_record(
            Some(Record {
                first_seen: t0 + 500,
                passed_at: None,
            }),
            t0,
            &cfg,
        );
        assert_eq!(skew.decision, Greylist::FirstSeen);
        assert_eq!(Record::decode("garbage"), None);
        assert_eq!(Record::decode("1:x"), None);
    }
}
