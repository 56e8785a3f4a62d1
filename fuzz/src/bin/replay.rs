//! `replay <target> <file>...`: runs files through a target; exits 1 if any fails.
//! The corpus test runs known-panic inputs through this binary, because some of them abort
//! the process (a stack overflow cannot be caught).

use mailfleet_fuzz::{check, Target};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let target = Target::from_name(&name)
        .ok_or_else(|| anyhow::anyhow!("unknown target {name:?}; see fuzz/README.md"))?;
    let mut failed = false;
    for file in args {
        let input = std::fs::read(&file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        match check(target, &input) {
            Ok(outcome) => println!("{file}: ok: {outcome}"),
            Err(f) => {
                println!("{file}: PANIC: {}", f.message);
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
