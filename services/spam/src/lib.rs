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

pub mod bayes;
pub mod dnsbl;
pub mod greylist;
pub mod heuristics;
pub mod score;
pub mod tokenize;

use serde::Deserialize;

pub use bayes::{Class, Model, Verdict};
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
