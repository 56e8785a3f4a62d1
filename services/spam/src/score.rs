//! Adding up the evidence and choosing what to do, in SpamAssassin's manner: every piece of
//! evidence is a named symbol with a score, the message's score is their sum, and fixed
//! thresholds turn the sum into an action. A sum keeps each part explainable (the
//! `X-Spam-Status` header lists the symbols) and lets an operator tune one rule at a time.
//!
//! The Bayes probability is mapped onto a few bands (BAYES_00 … BAYES_99) with SpamAssassin-like
//! scores, instead of being used as is, so the scale stays readable and an untrained model (not
//! `confident`) contributes nothing. BAYES_99 is worth exactly the default junk threshold (5.0,
//! like rspamd's BAYES_SPAM at full weight, where SpamAssassin's 3.5 relies on its hundreds of
//! other rules): with only a few built-in rules, a user's own model being 99% sure is enough to
//! file a message in Junk, but never enough to reject it.

use serde::Deserialize;

use crate::bayes::Verdict;
use crate::dnsbl::DnsblHit;
use crate::heuristics::Hit;
use crate::ConfigError;

/// Score thresholds, per domain (the caller fills them from the domain's config).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// At or above: deliver to Junk.
    pub junk: f32,
    /// At or above: reject at SMTP time (5xx). `None`: never reject, at most Junk.
    pub reject: Option<f32>,
    /// At or above (and below `junk`): greylist. `None`: no score-based greylisting.
    pub greylist: Option<f32>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            junk: 5.0,
            reject: Some(15.0),
            greylist: None,
        }
    }
}

impl Thresholds {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let finite = |v: Option<f32>| v.is_none_or(f32::is_finite);
        if !self.junk.is_finite() || !finite(self.reject) || !finite(self.greylist) {
            return Err(ConfigError::Thresholds("values must be finite"));
        }
        if self.reject.is_some_and(|r| r <= self.junk) {
            return Err(ConfigError::Thresholds("reject must be above junk"));
        }
        if self.greylist.is_some_and(|g| g >= self.junk) {
            return Err(ConfigError::Thresholds("greylist must be below junk"));
        }
        Ok(())
    }
}

/// What the pipeline should do with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Deliver to the inbox.
    Deliver,
    /// Suspicious but not spam: greylist the triplet (see [`crate::greylist`]); once it passes,
    /// deliver.
    Greylist,
    /// Deliver to the user's Junk folder.
    Junk,
    /// Refuse at SMTP time.
    Reject,
}

/// One scored piece of evidence in a [`Decision`].
#[derive(Debug, Clone, PartialEq)]
pub struct Symbol {
    pub name: String,
    pub score: f32,
    pub reason: String,
}

/// The combined result.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub score: f32,
    pub action: Action,
    /// The junk threshold the score was compared with (for the header's `required=`).
    pub required: f32,
    /// Every symbol that contributed, highest score first.
    pub symbols: Vec<Symbol>,
}

/// The Bayes band for a verdict and its score, or `None` when the model is not confident.
pub fn bayes_symbol(verdict: &Verdict) -> Option<(&'static str, f32)> {
    if !verdict.confident {
        return None;
    }
    let p = verdict.probability;
    Some(if p >= 0.99 {
        ("BAYES_99", 5.0)
    } else if p >= 0.95 {
        ("BAYES_95", 3.5)
    } else if p >= 0.80 {
        ("BAYES_80", 2.0)
    } else if p >= 0.60 {
        ("BAYES_60", 1.0)
    } else if p > 0.40 {
        ("BAYES_50", 0.0)
    } else if p > 0.20 {
        ("BAYES_40", -0.5)
    } else if p > 0.05 {
        ("BAYES_20", -1.0)
    } else if p > 0.01 {
        ("BAYES_05", -1.5)
    } else {
        ("BAYES_00", -2.0)
    })
}

/// Adds up heuristic hits, the Bayes verdict (if any) and DNS list hits, and picks the action:
/// Reject, else Junk, else Greylist, else Deliver, by the first threshold the score reaches.
pub fn combine(
    hits: &[Hit],
    bayes: Option<&Verdict>,
    dnsbl: &[DnsblHit],
    thresholds: &Thresholds,
) -> Decision {
    let mut symbols: Vec<Symbol> = hits
        .iter()
        .map(|h| Symbol {
            name: h.symbol.to_string(),
            score: h.score,
            reason: h.reason.clone(),
        })
        .collect();
    if let Some(v) = bayes {
        if let Some((name, score)) = bayes_symbol(v) {
            symbols.push(Symbol {
                name: name.to_string(),
                score,
                reason: format!("spam probability {:.4}", v.probability),
            });
        }
    }
    for d in dnsbl {
        symbols.push(Symbol {
            name: d.symbol.clone(),
            score: d.score,
            reason: format!("{} listed in {} ({:?})", d.queried, d.zone, d.codes),
        });
    }
    symbols.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.name.cmp(&b.name))
    });
    let score: f32 = symbols.iter().map(|s| s.score).sum();
    // Rounded to 0.01 so the action never depends on float summation order.
    // (`+ 0.0` turns the empty sum's -0.0 into 0.0 for the header.)
    let score = (score * 100.0).round() / 100.0 + 0.0;
    let action = if thresholds.reject.is_some_and(|r| score >= r) {
        Action::Reject
    } else if score >= thresholds.junk {
        Action::Junk
    } else if thresholds.greylist.is_some_and(|g| score >= g) {
        Action::Greylist
    } else {
        Action::Deliver
    };
    Decision {
        score,
        action,
        required: thresholds.junk,
        symbols,
    }
}

impl Decision {
    /// Whether the score reached the junk threshold.
    pub fn is_spam(&self) -> bool {
        self.score >= self.required
    }

    /// The value for an `X-Spam-Status` header:
    /// `Yes, score=7.20 required=5.00 symbols=BAYES_99(4.00),MISSING_DATE(1.00)`. Symbol
    /// names are plain ASCII, so the value needs no encoding; the caller folds it if long.
    pub fn header_value(&self) -> String {
        let list: Vec<String> = self
            .symbols
            .iter()
            .map(|s| format!("{}({:.2})", s.name, s.score))
            .collect();
        format!(
            "{}, score={:.2} required={:.2} symbols={}",
            if self.is_spam() { "Yes" } else { "No" },
            self.score,
            self.required,
            list.join(",")
        )
    }
}

/// The header name [`Decision::header_value`] is meant for.
pub const HEADER_NAME: &str = "X-Spam-Status";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dnsbl::ListKind;

    fn hit(symbol: &'static str, score: f32) -> Hit {
        Hit {
            symbol,
            score,
            reason: String::new(),
        }
    }

    fn verdict(p: f64, confident: bool) -> Verdict {
        Verdict {
            probability: p,
            confident,
            top: vec![],
            used: 0,
        }
    }

    #[test]
    fn bands() {
        assert_eq!(bayes_symbol(&verdict(0.999, true)), Some(("BAYES_99", 5.0)));
        assert_eq!(bayes_symbol(&verdict(0.5, true)), Some(("BAYES_50", 0.0)));
        assert_eq!(
            bayes_symbol(&verdict(0.001, true)),
            Some(("BAYES_00", -2.0))
        );
        assert_eq!(bayes_symbol(&verdict(0.999, false)), None);
    }

    #[test]
    fn actions_by_threshold() {
        let t = Thresholds {
            greylist: Some(3.0),
            ..Thresholds::default()
        };
        t.validate().unwrap();
        let d = combine(&[hit("A", 1.0)], None, &[], &t);
        assert_eq!(d.action, Action::Deliver);
        let d = combine(&[hit("A", 1.0), hit("B", 2.0)], None, &[], &t);
        assert_eq!(d.action, Action::Greylist);
        let d = combine(&[hit("A", 1.0)], Some(&verdict(0.96, true)), &[], &t);
        assert_eq!((d.score, d.action), (4.5, Action::Greylist));
        let d = combine(&[], Some(&verdict(0.999, true)), &[], &t);
        assert_eq!((d.score, d.action), (5.0, Action::Junk));
        let bl = DnsblHit {
            symbol: "DNSBL_ZEN".into(),
            zone: "zen.example".into(),
            score: 10.0,
            kind: ListKind::Block,
            queried: "192.0.2.1".into(),
            codes: vec![2],
        };
        let d = combine(&[hit("A", 1.0)], Some(&verdict(0.999, true)), &[bl], &t);
        assert_eq!(d.action, Action::Reject);
        assert_eq!(d.symbols[0].name, "DNSBL_ZEN", "highest first");
        // Ham evidence pulls the score down.
        let d = combine(&[hit("A", 1.0)], Some(&verdict(0.0, true)), &[], &t);
        assert_eq!(d.score, -1.0);
        let never = Thresholds {
            reject: None,
            ..Thresholds::default()
        };
        let d = combine(&[hit("A", 100.0)], None, &[], &never);
        assert_eq!(d.action, Action::Junk);
    }

    #[test]
    fn header_value_format() {
        let d = combine(
            &[hit("MISSING_DATE", 1.0), hit("URL_BARE_IP", 1.5)],
            Some(&verdict(0.995, true)),
            &[],
            &Thresholds::default(),
        );
        assert_eq!(
            d.header_value(),
            "Yes, score=7.50 required=5.00 symbols=BAYES_99(5.00),URL_BARE_IP(1.50),MISSING_DATE(1.00)"
        );
        let d = combine(&[], None, &[], &Thresholds::default());
        assert_eq!(d.header_value(), "No, score=0.00 required=5.00 symbols=");
    }

    #[test]
    fn threshold_validation() {
        assert!(Thresholds::default().validate().is_ok());
        let bad = Thresholds {
            junk: 5.0,
            reject: Some(4.0),
            greylist: None,
        };
        assert!(bad.validate().is_err());
        let bad = Thresholds {
            greylist: Some(6.0),
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
    }
}
