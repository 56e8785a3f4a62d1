//! Held-out evaluation of the Bayes filter on the synthetic corpus (tests/corpus/mod.rs):
//! trained the way users train it, by moving messages into and out of Junk, then asked to
//! classify messages it never saw. The figures printed here are the ones in
//! docs/spam-filter.md; run with
//! `cargo test -p mailfleet-spam --test heldout -- --nocapture`.

mod corpus;

use mailfleet_spam::bayes::BayesConfig;
use mailfleet_spam::heuristics::{self, HeuristicsConfig};
use mailfleet_spam::tokenize::{tokenize_raw, TokenizerConfig};
use mailfleet_spam::{combine, Action, Class, Model, Thresholds, Tokens};

const SEED: u64 = 2026;
const HAM: usize = 1000;
const SPAM: usize = 1000;
const TRAIN_PER_CLASS: usize = 600;
// 2026-12-01T00:00:00Z, after the corpus' Dates.
const NOW: u64 = 1_796_083_200;

struct Split {
    train: Vec<(bool, String, Tokens)>,
    test: Vec<(bool, String, Tokens)>,
}

fn split() -> Split {
    let cfg = TokenizerConfig::default();
    let (mut ham_seen, mut spam_seen) = (0, 0);
    let mut s = Split {
        train: Vec::new(),
        test: Vec::new(),
    };
    for sample in corpus::generate(SEED, HAM, SPAM) {
        let seen = if sample.spam {
            &mut spam_seen
        } else {
            &mut ham_seen
        };
        let tokens = tokenize_raw(sample.raw.as_bytes(), &cfg);
        let row = (sample.spam, sample.raw, tokens);
        if *seen < TRAIN_PER_CLASS {
            s.train.push(row);
        } else {
            s.test.push(row);
        }
        *seen += 1;
    }
    s
}

#[derive(Default, Debug)]
struct Counts {
    tp: usize,
    fp: usize,
    tn: usize,
    fn_: usize,
}

impl Counts {
    fn add(&mut self, truth: bool, predicted: bool) {
        match (truth, predicted) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (false, false) => self.tn += 1,
            (true, false) => self.fn_ += 1,
        }
    }
    fn total(&self) -> usize {
        self.tp + self.fp + self.tn + self.fn_
    }
    fn accuracy(&self) -> f64 {
        (self.tp + self.tn) as f64 / self.total() as f64
    }
    fn precision(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fp).max(1) as f64
    }
    fn recall(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fn_).max(1) as f64
    }
    fn line(&self, what: &str) -> String {
        format!(
            "{what}: accuracy {:.4} precision {:.4} recall {:.4} (tp {} fp {} tn {} fn {})",
            self.accuracy(),
            self.precision(),
            self.recall(),
            self.tp,
            self.fp,
            self.tn,
            self.fn_
        )
    }
}

#[test]
fn bayes_classifies_held_out_messages_well_above_chance() {
    let s = split();
    assert_eq!(s.train.len(), 2 * TRAIN_PER_CLASS);
    assert_eq!(
        s.test.iter().filter(|r| r.0).count(),
        SPAM - TRAIN_PER_CLASS
    );
    assert_eq!(
        s.test.iter().filter(|r| !r.0).count(),
        HAM - TRAIN_PER_CLASS
    );
    let seen: std::collections::HashSet<&str> = s.train.iter().map(|r| r.1.as_str()).collect();
    assert!(
        s.test.iter().all(|r| !seen.contains(r.1.as_str())),
        "held-out overlaps training"
    );

    // Training by folder moves, in arrival order: spam is moved into Junk (train spam); ham is
    // moved out of Junk (train ham), and one ham in seven first went the wrong way, moved into
    // Junk by mistake and back out (train spam, then untrain spam and train ham).
    let mut model = Model::new();
    let mut direct = Model::new();
    let mut mistakes = 0;
    for (i, (is_spam, _, tokens)) in s.train.iter().enumerate() {
        if *is_spam {
            model.train(tokens, Class::Spam);
        } else if i % 7 == 3 {
            model.train(tokens, Class::Spam);
            model.retrain(tokens, Class::Spam, Class::Ham);
            mistakes += 1;
        } else {
            model.train(tokens, Class::Ham);
        }
        direct.train(tokens, if *is_spam { Class::Spam } else { Class::Ham });
    }
    assert!(mistakes > 50);
    assert_eq!(
        model, direct,
        "moving out of Junk leaves no trace of the mistake"
    );

    let bcfg = BayesConfig::default();
    let pruned_before = model.len();
    model.prune(bcfg.max_tokens);
    let blob = model.to_bytes();
    let model = Model::from_bytes(&blob).unwrap();

    let hcfg = HeuristicsConfig::default();
    let thresholds = Thresholds::default();
    let (mut bayes, mut full) = (Counts::default(), Counts::default());
    let mut unsure = 0;
    for (is_spam, raw, tokens) in &s.test {
        let verdict = model.classify(tokens, &bcfg);
        assert!(verdict.confident);
        if (0.2..0.8).contains(&verdict.probability) {
            unsure += 1;
        }
        bayes.add(*is_spam, verdict.probability >= 0.5);
        let hits = heuristics::check_raw(raw.as_bytes(), NOW, &hcfg);
        let d = combine(&hits, Some(&verdict), &[], &thresholds);
        full.add(*is_spam, matches!(d.action, Action::Junk | Action::Reject));
    }
    let report = [
        format!(
            "corpus: synthetic, seed {SEED}; trained {} ham + {} spam ({mistakes} ham moved into Junk and back out); held out {} ({} spam, {} ham)",
            TRAIN_PER_CLASS,
            TRAIN_PER_CLASS,
            s.test.len(),
            SPAM - TRAIN_PER_CLASS,
            HAM - TRAIN_PER_CLASS
        ),
        format!(
            "model: {} tokens ({pruned_before} before the cap), blob {} bytes",
            model.len(),
            blob.len()
        ),
        bayes.line("bayes p>=0.5"),
        format!("bayes unsure (0.2..0.8): {unsure}"),
        full.line("combined score >= junk 5.0 (heuristics + bayes)"),
    ];
    for line in &report {
        println!("{line}");
    }
    // Chance is 0.5 on balanced classes; require a wide margin above it.
    assert!(bayes.accuracy() >= 0.90, "{}", report.join("\n"));
    assert!(bayes.precision() >= 0.90, "{}", report.join("\n"));
    assert!(full.accuracy() >= 0.85, "{}", report.join("\n"));
}

/// Accuracy on the same held-out set with less training: the first `n` ham and `n` spam of the
/// training split only.
#[test]
fn learning_curve() {
    let s = split();
    let bcfg = BayesConfig::default();
    let mut lines = Vec::new();
    for n in [20, 50, 100, 300, TRAIN_PER_CLASS] {
        let mut model = Model::new();
        let (mut h, mut sp) = (0, 0);
        for (is_spam, _, tokens) in &s.train {
            let seen = if *is_spam { &mut sp } else { &mut h };
            if *seen < n {
                model.train(tokens, if *is_spam { Class::Spam } else { Class::Ham });
                *seen += 1;
            }
        }
        let mut c = Counts::default();
        for (is_spam, _, tokens) in &s.test {
            let v = model.classify(tokens, &bcfg);
            assert!(v.confident);
            c.add(*is_spam, v.probability >= 0.5);
        }
        lines.push(c.line(&format!("trained {n}+{n}")));
        assert!(c.accuracy() >= 0.85, "{}", lines.join("\n"));
    }
    for l in &lines {
        println!("{l}");
    }
}

#[test]
fn corpus_is_deterministic_and_balanced() {
    let a = corpus::generate(SEED, 50, 50);
    let b = corpus::generate(SEED, 50, 50);
    assert_eq!(
        a.iter().map(|s| &s.raw).collect::<Vec<_>>(),
        b.iter().map(|s| &s.raw).collect::<Vec<_>>()
    );
    assert_eq!(a.iter().filter(|s| s.spam).count(), 50);
    let c = corpus::generate(SEED + 1, 50, 50);
    assert_ne!(a[0].raw, c[0].raw);
}

#[test]
fn untrained_model_is_not_confident_and_adds_no_score() {
    let s = split();
    let model = Model::new();
    let verdict = model.classify(&s.test[0].2, &BayesConfig::default());
    assert!(!verdict.confident);
    let d = combine(&[], Some(&verdict), &[], &Thresholds::default());
    assert_eq!(d.score, 0.0);
    assert_eq!(d.action, Action::Deliver);
}
