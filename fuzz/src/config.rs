//! The configuration loader (`mailfleet_core::config::Config::load`): any file and any
//! `MAILFLEET_*` variables give a configuration or an error, never a panic.
//!
//! Input: a TOML file; its lines of the form `#env NAME=value` (TOML comments, so the file
//! stays valid) are also passed as environment variables.

use mailfleet_core::config::Config;
use std::io::Write;

pub fn load(input: &[u8]) -> crate::Outcome {
    let env: Vec<(String, String)> = crate::lines(input)
        .filter_map(|l| l.strip_prefix(b"#env "))
        .filter_map(|l| {
            let l = String::from_utf8_lossy(l);
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    let mut file = match tempfile::NamedTempFile::new() {
        Ok(f) => f,
        Err(e) => panic!("harness: cannot create a temporary file: {e}"),
    };
    if let Err(e) = file.write_all(input).and_then(|()| file.flush()) {
        panic!("harness: cannot write the temporary file: {e}");
    }
    let first = Config::load(Some(file.path()), env.clone());
    let second = Config::load(Some(file.path()), env);
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "loading is deterministic"
    );
    match first {
        Ok(_) => "ok".into(),
        Err(e) => {
            let text = e.to_string();
            // The message names the key, not the path of the temporary file.
            text.replace(&file.path().display().to_string(), "<file>")
                .chars()
                .take(80)
                .collect()
        }
    }
}
