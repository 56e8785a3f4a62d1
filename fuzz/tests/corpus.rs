//! Replays every checked-in corpus input through its target: 0 panics, every invariant
//! holds. Inputs listed in `fuzz/known-panics.txt` run in a child process (some abort the
//! process) and only warn while their defect is open.

use mailfleet_fuzz::{check, corpus, Target};
use std::process::Command;

#[test]
fn corpus_replays_without_panics() {
    let known = corpus::known_panics().expect("fuzz/known-panics.txt is readable");
    let mut failures = Vec::new();
    let mut replayed = 0;
    for target in Target::ALL {
        let files = corpus::files(target).expect("corpus directory is readable");
        assert!(!files.is_empty(), "target {} has no corpus", target.name());
        for path in files {
            let key = corpus::key(target, &path);
            replayed += 1;
            if let Some((_, why)) = known.iter().find(|(k, _)| *k == key) {
                let out = Command::new(env!("CARGO_BIN_EXE_replay"))
                    .arg(target.name())
                    .arg(&path)
                    .env("RUST_BACKTRACE", "0")
                    .output()
                    .expect("replay binary runs");
                if out.status.success() {
                    eprintln!("note: {key} no longer panics; remove it from fuzz/known-panics.txt");
                } else {
                    eprintln!("WARNING: known panic {key} ({why}) still panics");
                }
                continue;
            }
            let input = std::fs::read(&path).expect("corpus file is readable");
            if let Err(f) = check(target, &input) {
                failures.push(format!("{key}: {}", f.message));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} corpus inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn known_panics_name_corpus_files() {
    for (key, why) in corpus::known_panics().expect("readable") {
        assert!(!why.is_empty(), "{key}: say which defect it is");
        let (target, file) = key.split_once('/').expect("<target>/<file>");
        let target = Target::from_name(target).expect("known target");
        assert!(
            corpus::dir(target).join(file).is_file(),
            "{key} is in the corpus"
        );
    }
}
