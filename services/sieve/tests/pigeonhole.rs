//! Differential test against Pigeonhole (Dovecot's Sieve, `sieve-test`).
//!
//! Every script in `tests/differential/scripts` runs against every message
//! in `tests/differential/messages` (envelope in the `.env` beside it) in
//! both implementations; the actions are normalised (folders with flags,
//! redirect targets, reject, discard, vacation sent or not, errors) and
//! compared. A pair whose results differ must be listed, with the reason,
//! in `tests/differential/expected-differences.txt`; a listed pair that no
//! longer differs fails too, so the list stays true.
//!
//! Without `sieve-test` the test prints a notice and passes, unless
//! MAILFLEET_REQUIRE_PIGEONHOLE=1 (CI installs dovecot-sieve and sets it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use common::{finish, ours, read_dir_sorted, sieve_test, stem, store, vacation_line, Ctx, Norm};

fn parse_pigeonhole(out: &str) -> Norm {
    if out.contains("failed to compile") {
        return ["compile-error".to_string()].into();
    }
    if out.contains("final result: failed") {
        return ["error".to_string()].into();
    }
    let mut stores = BTreeMap::new();
    let mut rest = Norm::new();
    let mut current: Option<String> = None;
    let mut vacation = false;
    let mut seconds = String::from("?");
    let (mut subject, mut from) = (None, None);
    let mut reason: Option<Vec<&str>> = None;
    let mut in_message = false;
    for line in out.lines() {
        if in_message {
            if line == "END MESSAGE" {
                in_message = false;
            } else if let Some(r) = reason.as_mut() {
                r.push(line);
            }
            continue;
        }
        if line == "START MESSAGE" && vacation {
            in_message = true;
            reason = Some(Vec::new());
            continue;
        }
        let t = line.trim();
        if let Some(s) = t.strip_prefix("=> seconds :") {
            seconds = s.trim().to_string();
        }
        if let Some(s) = t.strip_prefix("=> subject :") {
            subject = Some(s.trim().to_string());
        }
        if let Some(s) = t.strip_prefix("=> from    :") {
            from = Some(s.trim().to_string());
        }
        if let Some(a) = t.strip_prefix("* ") {
            current = None;
            if let Some(f) = a.strip_prefix("store message in folder: ") {
                store(&mut stores, f, &[], false);
                current = Some(f.to_string());
            } else if let Some(r) = a.strip_prefix("redirect message to: ") {
                rest.insert(format!(
                    "redirect {}",
                    r.trim_start_matches('<').trim_end_matches('>')
                ));
            } else if let Some(r) = a.strip_prefix("reject message with reason: ") {
                rest.insert(format!("reject {r}"));
            } else if a == "discard" {
                rest.insert("discard".into());
            } else if a.starts_with("send vacation message") {
                vacation = true;
            } else {
                rest.insert(format!("unknown: {a}"));
            }
        } else if let (Some(f), Some(flags)) = (&current, t.strip_prefix("+ add IMAP flags: ")) {
            let fl: Vec<String> = flags.split_whitespace().map(str::to_string).collect();
            store(&mut stores, f, &fl, false);
        } else if let (Some(f), true) = (&current, t.starts_with("+ create mailbox")) {
            store(&mut stores, f, &[], true);
        }
    }
    if vacation {
        let reason = reason.unwrap_or_default().join("\n");
        rest.insert(vacation_line(
            &seconds,
            subject.as_deref(),
            from.as_deref(),
            &reason,
        ));
    }
    finish(stores, rest)
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn differential_against_pigeonhole() {
    let Some(bin) = sieve_test() else {
        if std::env::var("MAILFLEET_REQUIRE_PIGEONHOLE").as_deref() == Ok("1") {
            panic!("sieve-test (dovecot-sieve) not found and MAILFLEET_REQUIRE_PIGEONHOLE=1");
        }
        println!("NOTICE: sieve-test (Pigeonhole) not installed; differential test skipped");
        return;
    };
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential");
    let scripts = read_dir_sorted(&base.join("scripts"), "sieve");
    let messages = read_dir_sorted(&base.join("messages"), "eml");

    // Expected differences: "script message | reason" (message may be "*").
    let mut expected: BTreeMap<(String, String), String> = BTreeMap::new();
    let list = fs::read_to_string(base.join("expected-differences.txt")).unwrap_or_default();
    for line in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (pair, reason) = line
            .split_once('|')
            .expect("expected-differences line: script message | reason");
        let mut w = pair.split_whitespace();
        let (s, m) = (w.next().unwrap_or_default(), w.next().unwrap_or("*"));
        assert!(
            !reason.trim().is_empty(),
            "expected difference without a reason: {line}"
        );
        expected.insert((s.to_string(), m.to_string()), reason.trim().to_string());
    }

    // sieve-test drops privileges to an unprivileged user: give it a world
    // readable copy of everything and a config that names that user.
    let work = std::env::temp_dir().join(format!("mailfleet-sieve-diff-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&work, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let ctx = Ctx {
        include_dir: base.join("include"),
    };
    for sub in ["personal", "global"] {
        fs::create_dir_all(work.join(sub)).unwrap();
        for f in read_dir_sorted(&base.join("include").join(sub), "sieve") {
            fs::copy(&f, work.join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    let conf = work.join("dovecot.conf");
    fs::write(
        &conf,
        format!(
            "{1}mail_location = mbox:{0}/mail:INBOX={0}/mail/inbox\n\
             sendmail_path = /bin/true\npostmaster_address = postmaster@example.org\n\
             plugin {{\n  sieve = file:{0}/personal\n  sieve_global = {0}/global\n  \
             sieve_extensions = +editheader +vacation-seconds\n}}\n",
            work.display(),
            // As root, sieve-test must drop to an unprivileged user.
            if is_root() {
                "mail_uid = nobody\nmail_gid = nogroup\n"
            } else {
                ""
            }
        ),
    )
    .unwrap();

    // A sieve-test that cannot run here (no such user, no permissions)
    // must not pass as "every pair differs": check it once.
    let probe = work.join("probe.sieve");
    fs::write(&probe, "keep;\n").unwrap();
    let probe_msg = work.join("probe.eml");
    fs::write(&probe_msg, "Subject: probe\r\n\r\nx\r\n").unwrap();
    let out = Command::new(&bin)
        .arg("-c")
        .arg(&conf)
        .arg(&probe)
        .arg(&probe_msg)
        .output();
    let out = out.map(|o| {
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    });
    if !out
        .as_ref()
        .is_ok_and(|o| o.contains("store message in folder: INBOX"))
    {
        let _ = fs::remove_dir_all(&work);
        let msg = format!(
            "sieve-test at {} does not work here: {out:?}",
            bin.display()
        );
        if std::env::var("MAILFLEET_REQUIRE_PIGEONHOLE").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        println!("NOTICE: {msg}; differential test skipped");
        return;
    }

    // MAILFLEET_DIFF_VERBOSE=1 prints every pair's normalised results.
    let verbose = std::env::var("MAILFLEET_DIFF_VERBOSE").as_deref() == Ok("1");
    let mut total = 0;
    let mut identical = 0;
    let mut explained = Vec::new();
    let mut failures = Vec::new();
    let mut used_expectations = BTreeSet::new();
    for m in &messages {
        let mname = stem(m);
        let raw = fs::read(m).unwrap();
        let env = fs::read_to_string(m.with_extension("env")).unwrap_or_default();
        let field = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("{mname}.env: missing {k}"))
        };
        let (from, to) = (field("from "), field("to "));
        let mcopy = work.join(format!("{mname}.eml"));
        fs::write(&mcopy, &raw).unwrap();
        for s in &scripts {
            let sname = stem(s);
            let src = fs::read_to_string(s).unwrap();
            let scopy = work.join(format!("{sname}.sieve"));
            fs::write(&scopy, &src).unwrap();
            let out = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .args(["-f", &from, "-a", &to, "-r", &to])
                .arg(&scopy)
                .arg(&mcopy)
                .output()
                .expect("run sieve-test");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let mut theirs = parse_pigeonhole(&text);
            if theirs.iter().any(|a| a.starts_with("vacation")) {
                // The dry run lists the vacation action before Pigeonhole's
                // own send-time checks (list mail, Auto-Submitted, recipient
                // not in To/Cc); execute (-e, sendmail = /bin/true) to see
                // whether it would really answer.
                let exec = Command::new(&bin)
                    .arg("-c")
                    .arg(&conf)
                    .args(["-e", "-f", &from, "-a", &to, "-r", &to])
                    .arg(&scopy)
                    .arg(&mcopy)
                    .output()
                    .expect("run sieve-test -e");
                let etext = format!(
                    "{}{}",
                    String::from_utf8_lossy(&exec.stdout),
                    String::from_utf8_lossy(&exec.stderr)
                );
                if etext.contains("discarding vacation response")
                    || etext.contains("discarded vacation reply")
                {
                    theirs.retain(|a| !a.starts_with("vacation"));
                }
            }
            let mine = ours(&src, &raw, &from, &to, &ctx);
            total += 1;
            if verbose {
                println!("  {sname} × {mname}: ours {mine:?} pigeonhole {theirs:?}");
            }
            let key_exact = (sname.clone(), mname.clone());
            let key_any = (sname.clone(), "*".to_string());
            let exp = expected
                .get(&key_exact)
                .map(|r| (key_exact.clone(), r))
                .or_else(|| expected.get(&key_any).map(|r| (key_any.clone(), r)));
            if mine == theirs {
                identical += 1;
                if let Some((k, _)) = exp {
                    if k.1 != "*" {
                        failures.push(format!("{sname} × {mname}: listed as expected difference but identical: {mine:?}"));
                    } else {
                        used_expectations.insert(k);
                    }
                }
            } else if let Some((k, reason)) = exp {
                used_expectations.insert(k);
                explained.push(format!(
                    "{sname} × {mname}: ours {mine:?} pigeonhole {theirs:?} ({reason})"
                ));
            } else {
                failures.push(format!(
                    "{sname} × {mname}: ours {mine:?} pigeonhole {theirs:?}\n--- sieve-test output:\n{text}"
                ));
            }
        }
    }
    for k in expected.keys() {
        if k.1 == "*" && !used_expectations.contains(k) {
            failures.push(format!(
                "{} × *: listed as expected difference but never differs",
                k.0
            ));
        }
    }
    let _ = fs::remove_dir_all(&work);
    println!(
        "differential: {total} pairs ({} scripts × {} messages), {identical} identical, {} expected differences",
        scripts.len(),
        messages.len(),
        explained.len()
    );
    for e in &explained {
        println!("  expected: {e}");
    }
    assert!(total >= 100, "only {total} pairs");
    assert!(
        failures.is_empty(),
        "{} unexplained differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
