//! `grow <target> [--iterations N] [--seed S]`: a bounded mutational loop that grows
//! `fuzz/corpus/<target>/`. Stable Rust has no coverage feedback in process, so an input is
//! kept when the target reports an outcome (see `mailfleet_fuzz::Outcome`) no corpus input
//! reached; a panicking input is always kept, and reported. Mutations are drawn with
//! `arbitrary::Unstructured` from random bytes: byte flips, inserts of protocol tokens,
//! splices of two corpus inputs, truncation and repetition.

use arbitrary::Unstructured;
use mailfleet_fuzz::{check, corpus, Target};
use rand::RngCore;
use std::collections::HashSet;

/// Bytes that matter to the parsers under test.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\r\n.\r\n",
    b"<",
    b">",
    b":",
    b"@",
    b" ",
    b"\"",
    b"{",
    b"}",
    b"(",
    b")",
    b"*",
    b"%",
    b"=",
    b"+",
    b"\0",
    "é".as_bytes(),
    b"\xff",
    b"--",
    b"boundary=",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"{5}\r\n",
    b"{5+}\r\n",
    b"LIST ",
    b"SEARCH RETURN (",
    b"PLAIN ",
    b"AGFAYg==",
    b"[smtp]\n",
    b"#env MAILFLEET_SMTP__MAX_LINE_LENGTH=",
    b" = ",
];

fn mutate(u: &mut Unstructured, inputs: &[Vec<u8>]) -> arbitrary::Result<Vec<u8>> {
    let mut v = u.choose(inputs)?.clone();
    for _ in 0..u.int_in_range(1..=4)? {
        let at = if v.is_empty() {
            0
        } else {
            u.int_in_range(0..=v.len())?
        };
        match u.int_in_range(0..=5)? {
            0 if at < v.len() => v[at] ^= 1 << u.int_in_range(0..=7)?,
            1 => {
                let t = u.choose(TOKENS)?;
                v.splice(at..at, t.iter().copied());
            }
            2 => {
                let other = u.choose(inputs)?;
                let from = if other.is_empty() {
                    0
                } else {
                    u.int_in_range(0..=other.len())?
                };
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            3 => v.truncate(at),
            4 if at < v.len() => {
                let end = u.int_in_range(at..=v.len())?;
                let piece = v[at..end].to_vec();
                for _ in 0..u.int_in_range(1..=64)? {
                    v.splice(at..at, piece.iter().copied());
                }
            }
            _ => v.insert(at.min(v.len()), u.arbitrary()?),
        }
    }
    v.truncate(64 * 1024);
    Ok(v)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let target = Target::from_name(&name)
        .ok_or_else(|| anyhow::anyhow!("unknown target {name:?}; see fuzz/README.md"))?;
    let mut iterations = 10_000u64;
    let mut seed = rand::random::<u64>();
    while let Some(a) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))?;
        match a.as_str() {
            "--iterations" => iterations = value.parse()?,
            "--seed" => seed = value.parse()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    println!("grow {name}: {iterations} iterations, seed {seed}");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let dir = corpus::dir(target);
    std::fs::create_dir_all(&dir)?;
    let mut inputs = Vec::new();
    let mut seen = HashSet::new();
    for f in corpus::files(target)? {
        let input = std::fs::read(&f)?;
        if let Ok(o) = check(target, &input) {
            seen.insert(o);
        }
        inputs.push(input);
    }
    if inputs.is_empty() {
        inputs.push(Vec::new());
    }
    // Panics are reported as they are found; the default hook would print each one twice.
    std::panic::set_hook(Box::new(|_| {}));
    let (mut kept, mut panics) = (0, 0);
    let mut entropy = vec![0u8; 256];
    for _ in 0..iterations {
        rng.fill_bytes(&mut entropy);
        let Ok(candidate) = mutate(&mut Unstructured::new(&entropy), &inputs) else {
            continue;
        };
        let result = check(target, &candidate);
        let keep = match &result {
            Ok(o) => seen.insert(o.clone()),
            Err(_) => true,
        };
        if keep {
            let hash = candidate.iter().fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
            });
            let prefix = if result.is_err() { "panic" } else { "grown" };
            let path = dir.join(format!("{prefix}-{hash:016x}"));
            std::fs::write(&path, &candidate)?;
            if let Err(f) = result {
                panics += 1;
                println!("PANIC {}: {}", path.display(), f.message);
            }
            kept += 1;
            inputs.push(candidate);
        }
    }
    println!(
        "kept {kept} new inputs ({panics} panicking) in {}",
        dir.display()
    );
    Ok(())
}
