//! Mailfleet's built-in spam filter, for installs that run without rspamd.
//!
//! The crate is deliberately *pure*: it does no I/O, no DNS and no storage. The SMTP pipeline
//! owns those (it already has a resolver, the store and the Coordinator, with their timeouts
//! and failure policies), and calls into this crate only for the decisions. That keeps every
//! rule unit-testable with plain values, makes the filter deterministic (the same message and
//! the same inputs always give the same score), and lets the pipeline decide how to degrade
//! when a lookup fails.
//!
//! A typical call sequence for one inbound message, per recipient:
//!
//! 1. parse once with `mail_parser`, then [`tokenize::tokenize`] and [`heuristics::check`];
//! 2. resolve [`dnsbl::ip_query_name`] / [`dnsbl::domain_query_name`] names for the lists in
//!    [`dnsbl::DnsblConfig`], feed the answers to [`dnsbl::evaluate`];
//! 3. load the user's [`bayes::Model`] blob ([`bayes::Model::from_bytes`]) and
//!    [`bayes::Model::classify`];
//! 4. [`score::combine`] everything against the domain's [`score::Thresholds`] and act on
//!    [`score::Action`]; when it says `Greylist`, consult [`greylist::decide_record`] with the
//!    record stored under [`greylist::triplet_key`].
//!
//! Training happens when a user moves a message into Junk ([`bayes::Model::train`] as spam)
//! or out of it ([`bayes::Model::untrain`] spam, then train ham).
//!
//! ```
//! use mailfleet_spam::{bayes, dnsbl, heuristics, score, tokenize, Class, Model, SpamConfig};
//! use std::net::Ipv4Addr;
//!
//! let cfg = SpamConfig::default();
//! let raw = b"From: \"support@bank.example\" <x@phish.example>\r\nTo: u@example.org\r\n\
//!             Subject: VERIFY YOUR ACCOUNT NOW\r\n\r\nLog in at http://203.0.113.9/login\r\n";
//! let message = mail_parser::MessageParser::default().parse(&raw[..]).unwrap();
//! let now = 1_800_000_000;
//!
//! // 1. Pure analysis of the message.
//! let tokens = tokenize::tokenize(&message, &cfg.tokenizer);
//! let hits = heuristics::check(&message, now, &cfg.heuristics);
//!
//! // 2. The pipeline resolves this name and passes the A records back (here: listed, code 2).
//! let list = dnsbl::DnsList {
//!     zone: "zen.example.org".into(), score: 5.0, kind: dnsbl::ListKind::Block,
//!     target: dnsbl::ListTarget::Ip, symbol: None, codes: vec![],
//! };
//! let name = dnsbl::ip_query_name("192.0.2.1".parse().unwrap(), &list.zone);
//! assert_eq!(name, "1.2.0.192.zen.example.org");
//! let dnsbl_hits: Vec<_> =
//!     dnsbl::evaluate(&list, "192.0.2.1", &[Ipv4Addr::new(127, 0, 0, 2)]).into_iter().collect();
//!
//! // 3. The user's model, loaded from its blob (empty: nothing trained yet).
//! let mut model = Model::from_bytes(&[]).unwrap();
//! let verdict = model.classify(&tokens, &cfg.bayes);
//! assert!(!verdict.confident);
//!
//! // 4. Decide.
//! let decision = score::combine(&hits, Some(&verdict), &dnsbl_hits, &cfg.thresholds);
//! assert_eq!(decision.action, score::Action::Junk);
//! assert!(decision.header_value().starts_with("Yes, score="));
//!
//! // Later the user confirms it by moving it into Junk; store the new blob.
//! model.train(&tokens, Class::Spam);
//! model.prune(cfg.bayes.max_tokens);
//! let blob: Vec<u8> = model.to_bytes();
//! # assert_eq!(Model::from_bytes(&blob).unwrap(), model);
//! # let _ = bayes::token_hash("x");
//! ```

pub mod bayes;
pub mod dnsbl;
pub mod greylist;
pub mod heuristics;
pub mod score;
pub mod tokenize;

use serde::Deserialize;

pub use bayes::{Class, Model, Verdict};

/// Where callers keep a user's model: the kind and key of the per-account record
/// ([`Model::to_bytes`] as its value). Named here so that the SMTP pipeline (which reads
/// it) and IMAP (which trains it) agree.
pub const MODEL_RECORD_KIND: &str = "spam-bayes";
pub const MODEL_RECORD_KEY: &str = "model";
/// The per-account records remembering how each message (by its blob id) was trained,
/// so a message moved back out of Junk is untrained rather than counted twice.
pub const TRAINED_RECORD_KIND: &str = "spam-trained";
pub use dnsbl::{DnsList, DnsblHit, ListKind};
pub use greylist::Greylist;
pub use heuristics::Hit;
pub use score::{combine, Action, Decision, Thresholds};
pub use tokenize::{tokenize, Tokens};

/// The whole filter's configuration, meant to be embedded in the server's TOML config (for
/// example under `[spam]`). Every section has defaults, and unknown keys are rejected so a
/// typo does not silently disable a setting.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpamConfig {
    /// Master switch: when false the pipeline should skip the filter entirely.
    pub enabled: bool,
    pub thresholds: Thresholds,
    pub tokenizer: tokenize::TokenizerConfig,
    pub bayes: bayes::BayesConfig,
    pub heuristics: heuristics::HeuristicsConfig,
    pub dnsbl: dnsbl::DnsblConfig,
    pub greylist: greylist::GreylistConfig,
}

impl Default for SpamConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            thresholds: Thresholds::default(),
            tokenizer: tokenize::TokenizerConfig::default(),
            bayes: bayes::BayesConfig::default(),
            heuristics: heuristics::HeuristicsConfig::default(),
            dnsbl: dnsbl::DnsblConfig::default(),
            greylist: greylist::GreylistConfig::default(),
        }
    }
}

/// A configuration value that makes no sense (found by [`SpamConfig::validate`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("spam threshold {0}")]
    Thresholds(&'static str),
    #[error("spam tokenizer: {0}")]
    Tokenizer(&'static str),
    #[error("dnsbl list {zone:?}: {reason}")]
    DnsList { zone: String, reason: &'static str },
    #[error("greylist: {0}")]
    Greylist(&'static str),
}

impl SpamConfig {
    /// Checks values serde cannot: ordering of thresholds, sane lengths, list zones. The caller
    /// should run it at config load so a bad value fails at startup, not per message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.thresholds.validate()?;
        self.tokenizer.validate()?;
        self.dnsbl.validate()?;
        self.greylist.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_gives_defaults_and_validates() {
        let cfg: SpamConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, SpamConfig::default());
        cfg.validate().unwrap();
    }

    #[test]
    fn full_toml_parses() {
        let cfg: SpamConfig = toml::from_str(
            r#"
            enabled = true
            [thresholds]
            junk = 6.0
            reject = 20.0
            greylist = 3.0
            [bayes]
            min_spam = 10
            min_ham = 10
            max_tokens = 50000
            [heuristics]
            max_to_recipients = 10
            scores = { SUBJECT_ALL_CAPS = 0.0 }
            [[dnsbl.lists]]
            zone = "zen.example.org"
            score = 5.0
            [[dnsbl.lists]]
            zone = "list.dnswl.example"
            score = -3.0
            kind = "allow"
            [[dnsbl.lists]]
            zone = "dbl.example.org"
            score = 4.0
            target = "domain"
            [greylist]
            delay_secs = 120
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.thresholds.reject, Some(20.0));
        assert_eq!(cfg.dnsbl.lists.len(), 3);
        assert_eq!(cfg.dnsbl.lists[1].kind, ListKind::Allow);
        assert_eq!(cfg.greylist.delay_secs, 120);
        assert_eq!(cfg.heuristics.scores.get("SUBJECT_ALL_CAPS"), Some(&0.0));
    }

    #[test]
    fn unknown_key_is_rejected() {
        assert!(toml::from_str::<SpamConfig>("[thresholds]\njunkk = 3.0").is_err());
        assert!(toml::from_str::<SpamConfig>("bogus = 1").is_err());
    }

    #[test]
    fn bad_threshold_order_fails_validation() {
        let cfg: SpamConfig = toml::from_str("[thresholds]\njunk = 10.0\nreject = 5.0").unwrap();
        assert!(cfg.validate().is_err());
    }
}
