//! Runs every differential fixture pair through Mailfleet alone and
//! compares with `tests/differential/golden.txt`, so the behaviour that
//! was checked against Pigeonhole stays checked where `sieve-test` is not
//! installed. Regenerate with MAILFLEET_SIEVE_BLESS=1 (and re-run the
//! Pigeonhole test: the file must only change where the differential test
//! agrees).

mod common;

use std::fs;

use common::{base, messages, ours, scripts, Ctx};

#[test]
fn fixtures_match_golden() {
    let ctx = Ctx {
        include_dir: base().join("include"),
    };
    let scripts = scripts();
    let mut lines = Vec::new();
    for m in messages() {
        for (name, src) in &scripts {
            let n = ours(src, &m.raw, &m.from, &m.to, &ctx);
            lines.push(format!(
                "{name} {} => {}",
                m.name,
                n.into_iter()
                    .collect::<Vec<_>>()
                    .join(" | ")
                    .replace('\n', "\\n")
            ));
        }
    }
    let text = lines.join("\n") + "\n";
    let path = base().join("golden.txt");
    if std::env::var("MAILFLEET_SIEVE_BLESS").as_deref() == Ok("1") {
        fs::write(&path, &text).unwrap();
        return;
    }
    let golden =
        fs::read_to_string(&path).expect("golden.txt (MAILFLEET_SIEVE_BLESS=1 creates it)");
    let want: Vec<&str> = golden.lines().collect();
    let diffs: Vec<String> = lines
        .iter()
        .filter(|l| !want.contains(&l.as_str()))
        .map(|l| format!("now:    {l}"))
        .chain(
            want.iter()
                .filter(|w| !lines.iter().any(|l| l == *w))
                .map(|w| format!("golden: {w}")),
        )
        .collect();
    assert!(lines.len() >= 100, "only {} pairs", lines.len());
    assert!(
        diffs.is_empty(),
        "{} lines differ from golden.txt:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}
