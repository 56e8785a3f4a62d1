//! The built-in spam filter's I/O: what [`mailfleet_spam`] decides from, gathered here.
//!
//! ```text
//! once per message   parse, tokens, header/structure heuristics   (spawn_blocking)
//!                    DNSBL/DNSWL lookups of the client and URL domains (concurrent, bounded)
//! per recipient      the user's Bayes model (a record in the store), the recipient
//!                    domain's thresholds  ──> score::combine ──> deliver, Junk, 554, greylist
//! greylisting        the triplet's marks in the Coordinator, so every front-end agrees
//! ```
//! The crate is pure; this module owns the resolver, the store and the Coordinator, and
//! what a failure means: a DNS list that does not answer in time counts as "not listed"
//! (a blocklist outage must not stop mail; the log says so), a model that cannot be read
//! counts as untrained. Training is IMAP's (`mailfleet_imap::junk`): moves into and
//! out of Junk.

use mail_auth::hickory_resolver::TokioResolver;
use mailfleet_spam::{
    bayes, dnsbl, score, tokenize, Decision, DnsblHit, Hit, SpamConfig, Thresholds,
};
use mailfleet_storage::{Account, DataScope, Stores};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mailfleet_spam::{MODEL_RECORD_KEY as MODEL_KEY, MODEL_RECORD_KIND as MODEL_KIND};
/// How long one DNS list may take to answer.
const DNSBL_TIMEOUT: Duration = Duration::from_secs(3);

/// The configured filter, one per process.
#[derive(Clone)]
pub struct Builtin {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SpamConfig,
    domains: BTreeMap<String, Thresholds>,
    resolver: Option<TokioResolver>,
}

/// What is known of a message before looking at any recipient.
pub struct MessageFacts {
    pub tokens: tokenize::Tokens,
    pub hits: Vec<Hit>,
    pub dnsbl: Vec<DnsblHit>,
}

/// What greylisting says of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum GreylistVerdict {
    Pass,
    Defer,
}

impl Builtin {
    /// `resolver` is needed only when DNS lists are configured.
    pub fn new(
        cfg: SpamConfig,
        domains: BTreeMap<String, Thresholds>,
        resolver: Option<TokioResolver>,
    ) -> Self {
        let domains = domains
            .into_iter()
            .map(|(d, t)| (d.trim_end_matches('.').to_ascii_lowercase(), t))
            .collect();
        Self {
            inner: Arc::new(Inner {
                cfg,
                domains,
                resolver,
            }),
        }
    }

    pub fn config(&self) -> &SpamConfig {
        &self.inner.cfg
    }

    /// The thresholds of a recipient domain.
    pub fn thresholds(&self, domain: &str) -> Thresholds {
        self.inner
            .domains
            .get(&domain.to_ascii_lowercase())
            .copied()
            .unwrap_or(self.inner.cfg.thresholds)
    }

    /// The thresholds configured for `domain` itself, if any (rspamd's score is held to
    /// them instead of its own action).
    pub fn domain_thresholds(&self, domain: &str) -> Option<Thresholds> {
        self.inner
            .domains
            .get(&domain.to_ascii_lowercase())
            .copied()
    }

    /// Tokens, heuristics and DNS lists of a message.
    pub async fn analyze(&self, message: bytes::Bytes, client: IpAddr) -> MessageFacts {
        let cfg = self.inner.cfg.clone();
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        // Parsing and tokenizing is CPU work proportional to the message.
        let parsed = tokio::task::spawn_blocking(move || {
            let parser = mail_parser::MessageParser::default();
            match parser.parse(&message[..]) {
                Some(m) => (
                    tokenize::tokenize(&m, &cfg.tokenizer),
                    mailfleet_spam::heuristics::check(&m, now, &cfg.heuristics),
                ),
                None => (tokenize::tokenize_raw(&message, &cfg.tokenizer), Vec::new()),
            }
        })
        .await;
        let (tokens, hits) = match parsed {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "spam analysis failed");
                (
                    tokenize::Tokens::from_words(Vec::<String>::new()),
                    Vec::new(),
                )
            }
        };
        let dnsbl = self.lookup_lists(client, tokens.url_hosts()).await;
        MessageFacts {
            tokens,
            hits,
            dnsbl,
        }
    }

    async fn lookup_lists(&self, client: IpAddr, url_hosts: &[String]) -> Vec<DnsblHit> {
        let Some(resolver) = &self.inner.resolver else {
            return Vec::new();
        };
        let cfg = &self.inner.cfg.dnsbl;
        let mut queries: Vec<(&dnsbl::DnsList, String, String)> = Vec::new();
        for list in cfg.ip_lists() {
            queries.push((
                list,
                client.to_string(),
                dnsbl::ip_query_name(client, &list.zone),
            ));
        }
        let domains = cfg.domains_to_query(url_hosts);
        for list in cfg.domain_lists() {
            for d in &domains {
                if let Some(name) = dnsbl::domain_query_name(d, &list.zone) {
                    queries.push((list, d.clone(), name));
                }
            }
        }
        let lookups = queries.into_iter().map(|(list, queried, name)| async move {
            let answers = match tokio::time::timeout(
                DNSBL_TIMEOUT,
                resolver.ipv4_lookup(format!("{name}.")),
            )
            .await
            {
                Ok(Ok(found)) => found
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        mail_auth::hickory_resolver::proto::rr::RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
                Ok(Err(e)) if e.is_no_records_found() => Vec::new(),
                Ok(Err(e)) => {
                    tracing::warn!(zone = %list.zone, error = %e, "DNS list lookup failed; not listed");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(zone = %list.zone, "DNS list lookup timed out; not listed");
                    Vec::new()
                }
            };
            dnsbl::evaluate(list, &queried, &answers)
        });
        futures::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The decision for one recipient: its Bayes model and its domain's thresholds.
    pub async fn decide(
        &self,
        stores: &Stores,
        facts: &MessageFacts,
        account: &Account,
    ) -> Decision {
        let model = match stores
            .meta
            .get_data(DataScope::Account(account.id), MODEL_KIND, MODEL_KEY)
            .await
        {
            Ok(Some(d)) => bayes::Model::from_bytes(&d.value).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(account = %account.address, error = %e, "reading the spam model failed");
                None
            }
        };
        let verdict = model.map(|m| m.classify(&facts.tokens, &self.inner.cfg.bayes));
        let domain = account.address.rsplit_once('@').map_or("", |(_, d)| d);
        score::combine(
            &facts.hits,
            verdict.as_ref(),
            &facts.dnsbl,
            &self.thresholds(domain),
        )
    }

    /// Greylisting of the triplet (client network, sender, recipient) through the
    /// Coordinator: the first attempt is deferred, a retry after the delay passes and
    /// whitelists the triplet for `pass_ttl_secs`. A Coordinator failure lets the message
    /// through (greylisting is a delay, not a verdict).
    pub async fn greylist(
        &self,
        stores: &Stores,
        client: IpAddr,
        sender: &str,
        recipient: &str,
    ) -> GreylistVerdict {
        let g = &self.inner.cfg.greylist;
        let key = mailfleet_spam::greylist::triplet_key(client, sender, recipient);
        let coord = &stores.coord;
        let step = async {
            if coord.is_marked(&format!("{key}:pass")).await? {
                return Ok(GreylistVerdict::Pass);
            }
            if !coord.is_marked(&format!("{key}:seen")).await? {
                coord
                    .mark(&format!("{key}:seen"), Duration::from_secs(g.expiry_secs))
                    .await?;
                coord
                    .mark(&format!("{key}:wait"), Duration::from_secs(g.delay_secs))
                    .await?;
                return Ok(GreylistVerdict::Defer);
            }
            if coord.is_marked(&format!("{key}:wait")).await? {
                return Ok(GreylistVerdict::Defer);
            }
            coord
                .mark(&format!("{key}:pass"), Duration::from_secs(g.pass_ttl_secs))
                .await?;
            Ok::<_, mailfleet_storage::StoreError>(GreylistVerdict::Pass)
        };
        match step.await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "greylisting unavailable; accepting");
                GreylistVerdict::Pass
            }
        }
    }
}
