//! Per-user naive Bayes, in the Paul Graham / Gary Robinson style that SpamBayes and
//! SpamAssassin use: a per-token spam probability with Robinson's smoothing toward 0.5 for
//! rarely seen tokens, the most extreme tokens only, and Fisher's chi-square combining. That
//! combination is preferred over a plain product of probabilities because it says "unsure"
//! (near 0.5) when the evidence points both ways instead of swinging to 0 or 1.
//!
//! The model is per user because what is spam differs between users, and it is trained by
//! what the user does: moving a message into Junk trains it as spam, moving it back out
//! untrains spam and trains ham. The caller loads the user's [`Model`] from one store blob
//! ([`Model::from_bytes`]), updates it, and writes it back ([`Model::to_bytes`]).
//!
//! Privacy: tokens are stored only as 64-bit FNV-1a hashes ([`token_hash`]), so the blob does
//! not hold the user's words in clear text. FNV-1a is fixed and unkeyed on purpose, so every
//! process and every version computes the same hash (std's `DefaultHasher` is randomly seeded
//! per process and would make a stored model useless). It is not a cryptographic hiding: a
//! guessed word can be hashed and looked up, which is the accepted trade-off (SpamAssassin
//! stores truncated SHA-1 for the same reason). At 64 bits collisions are negligible for
//! models of this size.
//!
//! Size: the model is capped ([`BayesConfig::max_tokens`]); [`Model::prune`] drops the rarest
//! tokens first, since those carry the least evidence.

use std::collections::HashMap;

use serde::Deserialize;

use crate::tokenize::Tokens;

/// Bayes settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BayesConfig {
    /// Spam messages trained before a verdict counts ([`Verdict::confident`]).
    pub min_spam: u32,
    /// Ham messages trained before a verdict counts.
    pub min_ham: u32,
    /// Most distinct tokens a user's model keeps; see [`Model::prune`].
    pub max_tokens: usize,
    /// Most extreme tokens used per message (SpamBayes' max_discriminators).
    pub max_discriminators: usize,
    /// Tokens whose probability is within this distance of 0.5 are ignored.
    pub min_prob_strength: f64,
    /// Robinson's s: how strongly an unseen or rare token is pulled toward 0.5.
    pub unknown_word_strength: f64,
    /// Probability given to a token never seen (Robinson's x).
    pub unknown_word_prob: f64,
}

impl Default for BayesConfig {
    fn default() -> Self {
        Self {
            min_spam: 20,
            min_ham: 20,
            max_tokens: 150_000,
            max_discriminators: 150,
            min_prob_strength: 0.1,
            unknown_word_strength: 0.45,
            unknown_word_prob: 0.5,
        }
    }
}

/// What a message was trained as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Spam,
    Ham,
}

/// Counts for one token: in how many trained spam and ham messages it appeared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub spam: u32,
    pub ham: u32,
}

/// One token's contribution to a verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    pub token: String,
    /// Smoothed spam probability of the token.
    pub probability: f64,
}

/// The result of [`Model::classify`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Spam probability in 0..=1; 0.5 means no evidence either way.
    pub probability: f64,
    /// Whether the model had enough training (min_spam / min_ham) for this to count.
    pub confident: bool,
    /// The tokens used, most extreme first (at most 10 are kept, for logs and debugging).
    pub top: Vec<Evidence>,
    /// How many tokens were used in the combination.
    pub used: usize,
}

/// A [`Model::from_bytes`] failure: the blob is not a model of a version this code knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("not a spam model (bad magic)")]
    BadMagic,
    #[error("spam model version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("spam model is truncated")]
    Truncated,
    #[error("spam model has trailing bytes")]
    TrailingBytes,
    #[error("spam model tokens are not strictly sorted")]
    Unsorted,
    #[error("spam model has a malformed count")]
    BadCount,
}

/// The stable hash of a token: 64-bit FNV-1a of its UTF-8 bytes.
pub fn token_hash(token: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in token.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// A user's trained model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub spam_messages: u32,
    pub ham_messages: u32,
    /// Keyed by [`token_hash`].
    pub tokens: HashMap<u64, TokenCounts>,
}

const MAGIC: &[u8; 4] = b"MFSB";
const VERSION: u8 = 1;

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    /// Learns one message as `class`. Each distinct token counts once per message.
    pub fn train(&mut self, tokens: &Tokens, class: Class) {
        match class {
            Class::Spam => self.spam_messages = self.spam_messages.saturating_add(1),
            Class::Ham => self.ham_messages = self.ham_messages.saturating_add(1),
        }
        for token in tokens.iter() {
            let c = self.tokens.entry(token_hash(token)).or_default();
            match class {
                Class::Spam => c.spam = c.spam.saturating_add(1),
                Class::Ham => c.ham = c.ham.saturating_add(1),
            }
        }
    }

    /// Forgets one message previously trained as `class` (the exact reverse of [`train`] with
    /// the same tokens). Counts never go below zero, so untraining something never trained, or
    /// pruned since, is harmless.
    ///
    /// [`train`]: Model::train
    pub fn untrain(&mut self, tokens: &Tokens, class: Class) {
        match class {
            Class::Spam => self.spam_messages = self.spam_messages.saturating_sub(1),
            Class::Ham => self.ham_messages = self.ham_messages.saturating_sub(1),
        }
        for token in tokens.iter() {
            let h = token_hash(token);
            if let Some(c) = self.tokens.get_mut(&h) {
                match class {
                    Class::Spam => c.spam = c.spam.saturating_sub(1),
                    Class::Ham => c.ham = c.ham.saturating_sub(1),
                }
                if c.spam == 0 && c.ham == 0 {
                    self.tokens.remove(&h);
                }
            }
        }
    }

    /// A message moved between Junk and another folder: untrain `from`, train `to`.
    pub fn retrain(&mut self, tokens: &Tokens, from: Class, to: Class) {
        if from != to {
            self.untrain(tokens, from);
            self.train(tokens, to);
        }
    }

    /// Robinson's smoothed spam probability of a token with these counts.
    fn token_probability(&self, c: TokenCounts, cfg: &BayesConfig) -> f64 {
        let nspam = f64::from(self.spam_messages.max(1));
        let nham = f64::from(self.ham_messages.max(1));
        let spam = f64::from(c.spam).min(nspam);
        let ham = f64::from(c.ham).min(nham);
        let spam_ratio = spam / nspam;
        let ham_ratio = ham / nham;
        let n = spam + ham;
        if spam_ratio + ham_ratio == 0.0 {
            return cfg.unknown_word_prob;
        }
        let prob = spam_ratio / (spam_ratio + ham_ratio);
        let s = cfg.unknown_word_strength;
        (s * cfg.unknown_word_prob + n * prob) / (s + n)
    }

    /// Classifies a message.
    pub fn classify(&self, tokens: &Tokens, cfg: &BayesConfig) -> Verdict {
        let confident = self.spam_messages >= cfg.min_spam && self.ham_messages >= cfg.min_ham;
        let mut clues: Vec<(f64, f64, &str)> = tokens
            .iter()
            .filter_map(|t| {
                let c = *self.tokens.get(&token_hash(t))?;
                let p = self.token_probability(c, cfg);
                let strength = (p - 0.5).abs();
                (strength >= cfg.min_prob_strength).then_some((strength, p, t))
            })
            .collect();
        // Most extreme first; ties broken by the token itself so the result is deterministic.
        clues.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.2.cmp(b.2)));
        clues.truncate(cfg.max_discriminators);
        let probability = chi2_combine(clues.iter().map(|c| c.1));
        Verdict {
            probability,
            confident,
            used: clues.len(),
            top: clues
                .iter()
                .take(10)
                .map(|c| Evidence {
                    token: c.2.to_string(),
                    probability: c.1,
                })
                .collect(),
        }
    }

    /// Number of distinct tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Keeps at most `max_tokens` tokens, dropping those seen in the fewest messages first
    /// (ties: lowest hash first, so pruning is deterministic). Returns how many were removed.
    /// Message counts are kept: the probabilities of the remaining tokens stay right.
    pub fn prune(&mut self, max_tokens: usize) -> usize {
        if self.tokens.len() <= max_tokens {
            return 0;
        }
        let mut all: Vec<(u64, u64)> = self
            .tokens
            .iter()
            .map(|(h, c)| (u64::from(c.spam) + u64::from(c.ham), *h))
            .collect();
        all.sort_unstable();
        let remove = self.tokens.len() - max_tokens;
        for (_, h) in &all[..remove] {
            self.tokens.remove(h);
        }
        remove
    }

    /// The store blob: `MFSB`, a version byte, the two message counts and the token count
    /// (u32 little-endian), then per token in ascending hash order the hash (u64 LE) and the
    /// two counts as LEB128 varints (most counts fit one byte, so a token costs ~10 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + self.tokens.len() * 10);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.spam_messages.to_le_bytes());
        out.extend_from_slice(&self.ham_messages.to_le_bytes());
        let count = u32::try_from(self.tokens.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        let mut entries: Vec<(&u64, &TokenCounts)> = self.tokens.iter().collect();
        entries.sort_unstable_by_key(|e| *e.0);
        for (h, c) in entries.into_iter().take(count as usize) {
            out.extend_from_slice(&h.to_le_bytes());
            put_varint(&mut out, c.spam);
            put_varint(&mut out, c.ham);
        }
        out
    }

    /// Reads a blob written by [`Model::to_bytes`]. An empty slice is an empty model, so a
    /// user with nothing stored yet needs no special case.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err(ModelError::BadMagic);
        }
        let version = r.take(1)?[0];
        if version != VERSION {
            return Err(ModelError::UnsupportedVersion(version));
        }
        let spam_messages = r.u32()?;
        let ham_messages = r.u32()?;
        let count = r.u32()? as usize;
        // Each entry is at least 10 bytes; do not trust count for the allocation.
        let mut tokens = HashMap::with_capacity(count.min(bytes.len() / 10));
        let mut last: Option<u64> = None;
        for _ in 0..count {
            let h = u64::from_le_bytes(r.take(8)?.try_into().map_err(|_| ModelError::Truncated)?);
            if last.is_some_and(|l| l >= h) {
                return Err(ModelError::Unsorted);
            }
            last = Some(h);
            let spam = r.varint()?;
            let ham = r.varint()?;
            tokens.insert(h, TokenCounts { spam, ham });
        }
        if r.pos != bytes.len() {
            return Err(ModelError::TrailingBytes);
        }
        Ok(Self {
            spam_messages,
            ham_messages,
            tokens,
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ModelError> {
        let end = self.pos.checked_add(n).ok_or(ModelError::Truncated)?;
        let s = self.bytes.get(self.pos..end).ok_or(ModelError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, ModelError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn varint(&mut self) -> Result<u32, ModelError> {
        let mut v: u64 = 0;
        for shift in (0..35).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // Only the shortest encoding is valid, so a blob has exactly one reading.
                if b == 0 && shift > 0 {
                    return Err(ModelError::BadCount);
                }
                return u32::try_from(v).map_err(|_| ModelError::BadCount);
            }
        }
        Err(ModelError::BadCount)
    }
}

/// Fisher/Robinson chi-square combining of token probabilities, as in SpamBayes: `S` is the
/// evidence for spam, `H` for ham, and the result `(1 + S - H) / 2` is near 0.5 when both are
/// strong or both weak. No tokens gives exactly 0.5.
fn chi2_combine(probs: impl Iterator<Item = f64>) -> f64 {
    let mut ln_spam = 0.0f64; // sum ln(p)
    let mut ln_ham = 0.0f64; // sum ln(1 - p)
    let mut n = 0usize;
    for p in probs {
        let p = p.clamp(1e-9, 1.0 - 1e-9);
        ln_spam += p.ln();
        ln_ham += (1.0 - p).ln();
        n += 1;
    }
    if n == 0 {
        return 0.5;
    }
    // Evidence for spam grows as the (1 - p) product shrinks, and for ham as the p product does.
    let s = 1.0 - chi2q(-2.0 * ln_ham, 2 * n);
    let h = 1.0 - chi2q(-2.0 * ln_spam, 2 * n);
    ((s - h + 1.0) / 2.0).clamp(0.0, 1.0)
}

/// Survival function of the chi-square distribution with an even number of degrees of
/// freedom `v`: P(X >= x2).
fn chi2q(x2: f64, v: usize) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..v / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(words: &[&str]) -> Tokens {
        Tokens::from_words(words.iter().copied())
    }

    fn trained() -> Model {
        let mut m = Model::new();
        for i in 0..25 {
            m.train(
                &t(&["viagra", "cheap", "offer", "click", &format!("s{i}"), "the"]),
                Class::Spam,
            );
            m.train(
                &t(&[
                    "meeting",
                    "agenda",
                    "report",
                    "thanks",
                    &format!("h{i}"),
                    "the",
                ]),
                Class::Ham,
            );
        }
        m
    }

    #[test]
    fn fnv_is_the_reference_fnv1a() {
        assert_eq!(token_hash(""), 0xcbf29ce484222325);
        assert_eq!(token_hash("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(token_hash("foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn classifies_after_training() {
        let m = trained();
        let cfg = BayesConfig::default();
        let spam = m.classify(&t(&["cheap", "viagra", "click", "unknownword"]), &cfg);
        let ham = m.classify(&t(&["meeting", "report", "agenda"]), &cfg);
        assert!(spam.confident && ham.confident);
        assert!(spam.probability > 0.95, "{spam:?}");
        assert!(ham.probability < 0.05, "{ham:?}");
        assert_eq!(
            spam.top.len(),
            3,
            "the neutral and unknown tokens are not used"
        );
        let neutral = m.classify(&t(&["the", "nothing"]), &cfg);
        assert_eq!(neutral.probability, 0.5);
        assert_eq!(neutral.used, 0);
        let mixed = m.classify(&t(&["cheap", "viagra", "meeting", "report"]), &cfg);
        assert!((mixed.probability - 0.5).abs() < 0.1, "{mixed:?}");
    }

    #[test]
    fn not_confident_until_enough_training() {
        let mut m = Model::new();
        for _ in 0..19 {
            m.train(&t(&["aaa"]), Class::Spam);
            m.train(&t(&["bbb"]), Class::Ham);
        }
        let cfg = BayesConfig::default();
        assert!(!m.classify(&t(&["aaa"]), &cfg).confident);
        m.train(&t(&["aaa"]), Class::Spam);
        m.train(&t(&["bbb"]), Class::Ham);
        assert!(m.classify(&t(&["aaa"]), &cfg).confident);
    }

    #[test]
    fn untrain_is_exact_inverse_and_retrain_moves() {
        let base = trained();
        let msg = t(&["meeting", "cheap", "brandnew", "zzz"]);
        let mut m = base.clone();
        m.train(&msg, Class::Spam);
        assert_ne!(m, base);
        m.untrain(&msg, Class::Spam);
        assert_eq!(m, base, "train then untrain restores the model");

        // Filed as spam by mistake, then moved out of Junk: same as trained as ham directly.
        let mut moved = base.clone();
        moved.train(&msg, Class::Spam);
        moved.retrain(&msg, Class::Spam, Class::Ham);
        let mut direct = base.clone();
        direct.train(&msg, Class::Ham);
        assert_eq!(moved, direct);

        // Untraining something never trained does not underflow.
        let mut empty = Model::new();
        empty.untrain(&msg, Class::Ham);
        assert_eq!(empty, Model::new());
    }

    #[test]
    fn serialisation_round_trip_and_errors() {
        let mut m = trained();
        m.tokens.insert(
            7,
            TokenCounts {
                spam: 300_000,
                ham: 0,
            },
        );
        let bytes = m.to_bytes();
        assert_eq!(&bytes[..4], b"MFSB");
        assert_eq!(Model::from_bytes(&bytes).unwrap(), m);
        assert_eq!(m.to_bytes(), bytes, "deterministic");
        assert!(
            bytes.len() < 17 + m.len() * 12,
            "compact: {} bytes",
            bytes.len()
        );
        assert_eq!(Model::from_bytes(&[]).unwrap(), Model::new());
        assert_eq!(Model::from_bytes(b"XXXX\x01"), Err(ModelError::BadMagic));
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert_eq!(
            Model::from_bytes(&v2),
            Err(ModelError::UnsupportedVersion(2))
        );
        assert_eq!(
            Model::from_bytes(&bytes[..bytes.len() - 1]),
            Err(ModelError::Truncated)
        );
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(Model::from_bytes(&extra), Err(ModelError::TrailingBytes));
        // Non-canonical and oversized varints are refused.
        let mut one = Model::new();
        one.tokens.insert(1, TokenCounts { spam: 1, ham: 0 });
        let good = one.to_bytes();
        let mut padded = good[..25].to_vec();
        padded.extend_from_slice(&[0x81, 0x00, 0x00]);
        assert_eq!(Model::from_bytes(&padded), Err(ModelError::BadCount));
        let mut huge = good[..25].to_vec();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x7f, 0x00]);
        assert_eq!(Model::from_bytes(&huge), Err(ModelError::BadCount));
        // A huge claimed count with no data fails, without a huge allocation.
        let mut lying = bytes[..17].to_vec();
        lying[13..17].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Model::from_bytes(&lying), Err(ModelError::Truncated));
    }

    #[test]
    fn prune_drops_rarest_first() {
        let mut m = trained();
        let before = m.len();
        assert_eq!(before, 9 + 50);
        let removed = m.prune(10);
        assert_eq!(removed, before - 10);
        assert_eq!(m.len(), 10);
        // The hapaxes (s0.., h0..) went; the common tokens stayed.
        for w in ["viagra", "cheap", "meeting", "the"] {
            assert!(m.tokens.contains_key(&token_hash(w)), "{w} pruned");
        }
        assert_eq!(m.prune(10), 0);
    }

    #[test]
    fn chi2q_matches_known_values() {
        // P(X >= 2) with 2 dof is e^-1.
        assert!((chi2q(2.0, 2) - (-1.0f64).exp()).abs() < 1e-12);
        assert!(chi2q(0.0, 10) == 1.0);
        assert!(chi2q(1000.0, 4) < 1e-100);
    }
}
