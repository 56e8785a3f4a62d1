//! SASL PLAIN and LOGIN decoding (`mailfleet_auth::sasl`), as SMTP AUTH, POP3 AUTH and IMAP
//! AUTHENTICATE run it. The first line is `MECHANISM [initial-response]`; each further line
//! is a client response.

use mailfleet_auth::sasl::{
    decode_base64, decode_plain, encode_base64, Exchange, Mechanism, Step, MAX_FIELD,
};

pub fn exchange(input: &[u8]) -> crate::Outcome {
    let mut lines = crate::lines(input);
    for line in crate::lines(input) {
        if let Ok(decoded) = decode_base64(line) {
            assert_eq!(
                decode_base64(encode_base64(&decoded).as_bytes()),
                Ok(decoded),
                "base64 round trip"
            );
        }
    }
    let first = lines.next().unwrap_or_default();
    let mut words = first.splitn(2, |b| *b == b' ');
    let name = String::from_utf8_lossy(words.next().unwrap_or_default()).into_owned();
    let Ok(mechanism) = Mechanism::parse(&name) else {
        return "unknown-mechanism".into();
    };
    let (mut ex, mut step) = Exchange::start(mechanism, words.next());
    let mut steps = 0;
    loop {
        match step {
            Step::Challenge(_) => {
                steps += 1;
                assert!(steps <= 3, "PLAIN and LOGIN need at most two challenges");
                match lines.next() {
                    Some(line) => step = ex.step(line),
                    None => return format!("{}:challenge", mechanism.name()),
                }
            }
            Step::Done(creds) => {
                for f in [&creds.username, &creds.password] {
                    assert!(!f.is_empty() && f.len() <= MAX_FIELD && !f.contains('\0'));
                }
                let plain = format!("\0{}\0{}", creds.username, creds.password);
                assert_eq!(
                    decode_plain(plain.as_bytes()),
                    Ok(creds),
                    "PLAIN round trip"
                );
                return format!("{}:done", mechanism.name());
            }
            Step::Failed(e) => return format!("{}:{e:?}", mechanism.name()),
        }
    }
}
