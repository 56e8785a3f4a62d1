//! Hostile input: random and mutated bytes must never make the filter panic, and a corrupted
//! model blob must be refused, not misread.

mod corpus;

use mailfleet_spam::bayes::{BayesConfig, Model};
use mailfleet_spam::heuristics::{check_raw, HeuristicsConfig};
use mailfleet_spam::tokenize::{strip_html, tokenize_raw, url_hosts, TokenizerConfig};
use mailfleet_spam::Class;

#[test]
fn random_and_mutated_messages_do_not_panic() {
    let mut rng = corpus::Rng::new(7);
    let samples = corpus::generate(11, 30, 30);
    let tcfg = TokenizerConfig::default();
    let hcfg = HeuristicsConfig::default();
    let mut model = Model::new();
    for (i, s) in samples.iter().enumerate() {
        let mut bytes = s.raw.clone().into_bytes();
        // Flip, insert and truncate at random places.
        for _ in 0..rng.range(1, 40) {
            let at = rng.below(bytes.len().max(1));
            match rng.below(3) {
                0 if !bytes.is_empty() => bytes[at] = rng.next_u64() as u8,
                1 => bytes.insert(at.min(bytes.len()), b"<&;:@!\r\n=?\x80\xff"[rng.below(12)]),
                _ => bytes.truncate(at.max(1)),
            }
        }
        let tokens = tokenize_raw(&bytes, &tcfg);
        let _ = check_raw(&bytes, 1_800_000_000, &hcfg);
        let text = String::from_utf8_lossy(&bytes);
        let _ = strip_html(&text);
        let _ = url_hosts(&text);
        model.train(&tokens, if i % 2 == 0 { Class::Spam } else { Class::Ham });
        let _ = model.classify(&tokens, &BayesConfig::default());
    }
    for _ in 0..200 {
        let len = rng.below(3000);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let _ = tokenize_raw(&bytes, &tcfg);
        let _ = check_raw(&bytes, 0, &hcfg);
    }
}

#[test]
fn corrupted_model_blobs_are_refused_or_round_trip() {
    let mut rng = corpus::Rng::new(9);
    let tcfg = TokenizerConfig::default();
    let mut model = Model::new();
    for s in corpus::generate(3, 20, 20) {
        let class = if s.spam { Class::Spam } else { Class::Ham };
        model.train(&tokenize_raw(s.raw.as_bytes(), &tcfg), class);
    }
    let blob = model.to_bytes();
    for _ in 0..2000 {
        let mut b = blob.clone();
        match rng.below(3) {
            0 => {
                let at = rng.below(b.len());
                b[at] ^= 1 << rng.below(8);
            }
            1 => b.truncate(rng.below(b.len())),
            _ => b.push(rng.next_u64() as u8),
        }
        if let Ok(m) = Model::from_bytes(&b) {
            // Whatever is accepted must be a well-formed model that serialises back the same.
            assert_eq!(m.to_bytes(), b);
        }
    }
}
