//! Shared by the fixture tests: our side of the normalised comparison.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{FixedOffset, Utc};
use mailfleet_sieve::{compile, run, Action, Context, Envelope, Limits, Location};

/// Included scripts come from `tests/differential/include/{personal,global}`,
/// the same files Pigeonhole gets as its `sieve` and `sieve_global` dirs.
pub struct Ctx {
    pub include_dir: PathBuf,
}

impl Context for Ctx {
    fn mailbox_exists(&self, name: &str) -> bool {
        name == "INBOX"
    }
    fn include(&self, name: &str, location: Location) -> Option<String> {
        let sub = match location {
            Location::Personal => "personal",
            Location::Global => "global",
        };
        fs::read_to_string(self.include_dir.join(sub).join(format!("{name}.sieve"))).ok()
    }
    fn now(&self) -> chrono::DateTime<FixedOffset> {
        // sieve-test runs in the machine's zone; the fixtures only use
        // currentdate parts that do not depend on it.
        Utc::now().fixed_offset()
    }
}

/// `sieve-test` from PATH or /usr/bin; MAILFLEET_SIEVE_TEST names another.
pub fn sieve_test() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MAILFLEET_SIEVE_TEST") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("sieve-test"))
        .find(|p| p.is_file())
}

pub type Norm = BTreeSet<String>;

pub fn store(
    map: &mut BTreeMap<String, (BTreeSet<String>, bool)>,
    folder: &str,
    flags: &[String],
    create: bool,
) {
    let e = map.entry(folder.to_string()).or_default();
    e.0.extend(flags.iter().map(|f| f.to_lowercase()));
    e.1 |= create;
}

pub fn finish(stores: BTreeMap<String, (BTreeSet<String>, bool)>, mut rest: Norm) -> Norm {
    let delivers = !stores.is_empty()
        || rest
            .iter()
            .any(|r| r.starts_with("redirect") || r == "reject");
    if delivers {
        rest.remove("discard");
    }
    for (folder, (flags, create)) in stores {
        let mut s = format!("store {folder}");
        if !flags.is_empty() {
            s.push_str(" flags[");
            s.push_str(&flags.into_iter().collect::<Vec<_>>().join(" "));
            s.push(']');
        }
        if create {
            s.push_str(" :create");
        }
        rest.insert(s);
    }
    rest
}

pub fn ours(script: &str, msg: &[u8], from: &str, to: &str, ctx: &Ctx) -> Norm {
    let limits = Limits::default();
    let s = match compile(script, &limits) {
        Ok(s) => s,
        Err(_) => return ["compile-error".to_string()].into(),
    };
    let env = Envelope {
        from: Some(from),
        to,
        auth: None,
    };
    let out = match run(&s, msg, &env, ctx, &limits) {
        Ok(o) => o,
        Err(_) => return ["error".to_string()].into(),
    };
    let mut stores = BTreeMap::new();
    let mut rest = Norm::new();
    for a in &out.actions {
        match a {
            Action::Keep { flags } => store(&mut stores, "INBOX", flags, false),
            Action::FileInto {
                mailbox,
                flags,
                create,
            } => store(&mut stores, mailbox, flags, *create),
            Action::Redirect { address, .. } => {
                rest.insert(format!("redirect {address}"));
            }
            Action::Reject { reason, .. } => {
                // sieve-test prints CR and LF of the reason as '?'.
                rest.insert(format!("reject {}", reason.replace(['\r', '\n'], "?")));
            }
            Action::Discard => {
                rest.insert("discard".into());
            }
            Action::Vacation(v) => {
                rest.insert(vacation_line(
                    &v.period_seconds.to_string(),
                    v.subject.as_deref(),
                    v.from.as_deref(),
                    &v.reason,
                ));
            }
        }
    }
    finish(stores, rest)
}

pub fn read_dir_sorted(p: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

pub fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A message fixture: raw bytes and the envelope from its `.env` file.
pub struct Fixture {
    pub name: String,
    pub raw: Vec<u8>,
    pub from: String,
    pub to: String,
}

pub fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential")
}

pub fn messages() -> Vec<Fixture> {
    read_dir_sorted(&base().join("messages"), "eml")
        .into_iter()
        .map(|m| {
            let name = stem(&m);
            let env = fs::read_to_string(m.with_extension("env")).unwrap_or_default();
            let field = |k: &str| {
                env.lines()
                    .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                    .unwrap_or_else(|| panic!("{name}.env: missing {k}"))
            };
            Fixture {
                from: field("from "),
                to: field("to "),
                raw: fs::read(&m).unwrap(),
                name,
            }
        })
        .collect()
}

pub fn scripts() -> Vec<(String, String)> {
    read_dir_sorted(&base().join("scripts"), "sieve")
        .into_iter()
        .map(|p| (stem(&p), fs::read_to_string(&p).unwrap()))
        .collect()
}

/// The normalised vacation: period, :subject and :from if given, and the
/// reason with line ends unified and outer blank space trimmed.
pub fn vacation_line(
    seconds: &str,
    subject: Option<&str>,
    from: Option<&str>,
    reason: &str,
) -> String {
    let mut s = format!("vacation {seconds}s");
    if let Some(x) = subject {
        s.push_str(&format!(" subject=[{x}]"));
    }
    if let Some(x) = from {
        s.push_str(&format!(" from=[{x}]"));
    }
    s.push_str(&format!(
        " reason=[{}]",
        reason.replace("\r\n", "\n").trim()
    ));
    s
}
