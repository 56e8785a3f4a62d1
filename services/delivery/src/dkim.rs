//! DKIM (RFC 6376) keys and signing, with `mail-auth`.
//!
//! Each domain gets two keys, as RFC 8463 recommends while Ed25519 verifiers are still
//! rare: RSA-2048 (selector [`RSA_SELECTOR`]) and Ed25519 (selector [`ED25519_SELECTOR`]).
//! Outbound mail carries both signatures; a verifier uses the one it understands.
//!
//! Keys live in `<data_dir>/dkim/<domain>/` as DER files readable only by their owner:
//! `rsa.der` (PKCS#1) and `ed25519.der` (PKCS#8). Files rather than metadata rows because
//! the private key is a secret the operator may want to back up, rotate or mount from a
//! secret store on its own; the public half is derived when needed.

use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::generate::DkimKeyPair;
use mail_auth::dkim::DkimSigner;
use std::path::{Path, PathBuf};

pub const RSA_SELECTOR: &str = "mailfleet-rsa";
pub const ED25519_SELECTOR: &str = "mailfleet-ed25519";
const RSA_FILE: &str = "rsa.der";
const ED25519_FILE: &str = "ed25519.der";
/// RSA-2048: the size RFC 8301 asks signers to use at least, and still fits one DNS record.
const RSA_BITS: usize = 2048;

/// Headers signed: those a forger would want to change (RFC 6376 §5.4.1).
const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "In-Reply-To",
    "References",
];

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("DKIM key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("DKIM keys for {0} already exist")]
    Exists(String),
    #[error("DKIM: {0}")]
    Crypto(String),
}

/// The key directory of a domain.
pub fn key_dir(data_dir: &Path, domain: &str) -> PathBuf {
    data_dir.join("dkim").join(domain.to_ascii_lowercase())
}

/// A domain's private keys, as stored.
#[derive(Clone)]
pub struct DomainKeys {
    pub domain: String,
    rsa_pkcs1: Vec<u8>,
    ed25519_pkcs8: Vec<u8>,
}

fn write_secret(path: &Path, data: &[u8]) -> Result<(), DkimError> {
    use std::io::Write;
    let io = |source| DkimError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Generates both keys for `domain`. Refuses to overwrite existing keys: replacing a key
/// that DNS still publishes would break every signature until DNS catches up.
pub fn generate(data_dir: &Path, domain: &str) -> Result<DomainKeys, DkimError> {
    let dir = key_dir(data_dir, domain);
    if dir.join(RSA_FILE).exists() || dir.join(ED25519_FILE).exists() {
        return Err(DkimError::Exists(domain.to_string()));
    }
    std::fs::create_dir_all(&dir).map_err(|source| DkimError::Io {
        path: dir.clone(),
        source,
    })?;
    let rsa = DkimKeyPair::generate_rsa(RSA_BITS).map_err(|e| DkimError::Crypto(e.to_string()))?;
    let ed = DkimKeyPair::generate_ed25519().map_err(|e| DkimError::Crypto(e.to_string()))?;
    write_secret(&dir.join(RSA_FILE), rsa.private_key())?;
    write_secret(&dir.join(ED25519_FILE), ed.private_key())?;
    Ok(DomainKeys {
        domain: domain.to_ascii_lowercase(),
        rsa_pkcs1: rsa.private_key().to_vec(),
        ed25519_pkcs8: ed.private_key().to_vec(),
    })
}

/// Loads a domain's keys; `None` when it has none.
pub fn load(data_dir: &Path, domain: &str) -> Result<Option<DomainKeys>, DkimError> {
    let dir = key_dir(data_dir, domain);
    let read = |name: &str| {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DkimError::Io { path, source }),
        }
    };
    match (read(RSA_FILE)?, read(ED25519_FILE)?) {
        (Some(rsa_pkcs1), Some(ed25519_pkcs8)) => Ok(Some(DomainKeys {
            domain: domain.to_ascii_lowercase(),
            rsa_pkcs1,
            ed25519_pkcs8,
        })),
        (None, None) => Ok(None),
        _ => Err(DkimError::Crypto(format!(
            "only one of the two keys for {domain} exists in {}",
            dir.display()
        ))),
    }
}

impl DomainKeys {
    fn rsa(&self) -> Result<RsaKey<Sha256>, DkimError> {
        RsaKey::<Sha256>::from_key_der(rustls::pki_types::PrivateKeyDer::Pkcs1(
            self.rsa_pkcs1.clone().into(),
        ))
        .map_err(|e| DkimError::Crypto(format!("RSA key of {}: {e}", self.domain)))
    }

    fn ed25519(&self) -> Result<Ed25519Key, DkimError> {
        Ed25519Key::from_pkcs8_der(&self.ed25519_pkcs8)
            .map_err(|e| DkimError::Crypto(format!("Ed25519 key of {}: {e}", self.domain)))
    }

    /// The `DKIM-Signature` fields for `message` (CRLF-terminated, each ending in CRLF),
    /// RSA first: prepended in that order, the RSA signature is the topmost field, which
    /// verifiers that look only at the first signature check.
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        let rsa = DkimSigner::from_key(self.rsa()?)
            .domain(self.domain.clone())
            .selector(RSA_SELECTOR)
            .headers(SIGNED_HEADERS)
            .sign(message)
            .map_err(|e| DkimError::Crypto(e.to_string()))?;
        let ed = DkimSigner::from_key(self.ed25519()?)
            .domain(self.domain.clone())
            .selector(ED25519_SELECTOR)
            .headers(SIGNED_HEADERS)
            .sign(message)
            .map_err(|e| DkimError::Crypto(e.to_string()))?;
        Ok(format!("{}{}", rsa.to_header(), ed.to_header()))
    }

    /// `(selector, TXT value)` of both public keys.
    pub fn dns_records(&self) -> Result<Vec<(&'static str, String)>, DkimError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let rsa_spki = rsa_spki(&self.rsa()?.public_key());
        Ok(vec![
            (
                RSA_SELECTOR,
                format!("v=DKIM1; k=rsa; p={}", b64.encode(rsa_spki)),
            ),
            (
                ED25519_SELECTOR,
                format!(
                    "v=DKIM1; k=ed25519; p={}",
                    b64.encode(self.ed25519()?.public_key())
                ),
            ),
        ])
    }
}

/// Wraps a PKCS#1 `RSAPublicKey` in a `SubjectPublicKeyInfo`, the form RFC 6376 §3.6.1
/// publishes (and every verifier, OpenDKIM and dkimpy included, accepts).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    fn der_len(n: usize, out: &mut Vec<u8>) {
        if n < 0x80 {
            out.push(n as u8);
        } else if n <= 0xff {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
    }
    // SEQUENCE { OID 1.2.840.113549.1.1.1 rsaEncryption, NULL }
    const ALG: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x03];
    der_len(pkcs1.len() + 1, &mut bits);
    bits.push(0);
    bits.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(ALG.len() + bits.len(), &mut out);
    out.extend_from_slice(&ALG);
    out.extend_from_slice(&bits);
    out
}

/// Every DNS record `domain` needs to send and receive mail through `hostname`, as zone
/// file lines. `dkim` is `None` before `mailfleet dkim generate` has run.
pub fn zone_records(
    domain: &str,
    hostname: &str,
    dkim: Option<&DomainKeys>,
) -> Result<String, DkimError> {
    let d = domain.to_ascii_lowercase();
    let h = hostname.trim_end_matches('.');
    let mut out = String::new();
    out.push_str(&format!("{d}.\t3600\tIN\tMX\t10 {h}.\n"));
    out.push_str(&format!("{d}.\t3600\tIN\tTXT\t\"v=spf1 mx -all\"\n"));
    match dkim {
        Some(keys) => {
            for (selector, value) in keys.dns_records()? {
                out.push_str(&format!(
                    "{selector}._domainkey.{d}.\t3600\tIN\tTXT\t{}\n",
                    txt_strings(&value)
                ));
            }
        }
        None => out.push_str(&format!(
            "; no DKIM keys yet: run `mailfleet dkim generate {d}`\n"
        )),
    }
    out.push_str(&format!(
        "_dmarc.{d}.\t3600\tIN\tTXT\t\"v=DMARC1; p=quarantine; rua=mailto:postmaster@{d}\"\n"
    ));
    let id = chrono::Utc::now().format("%Y%m%d%H%M%S");
    out.push_str(&format!(
        "_mta-sts.{d}.\t3600\tIN\tTXT\t\"v=STSv1; id={id}\"\n"
    ));
    out.push_str(&format!("mta-sts.{d}.\t3600\tIN\tCNAME\t{h}.\n"));
    out.push_str(&format!(
        "_smtp._tls.{d}.\t3600\tIN\tTXT\t\"v=TLSRPTv1; rua=mailto:tls-reports@{d}\"\n"
    ));
    out.push_str(&format!(
        "; MTA-STS also needs https://mta-sts.{d}/.well-known/mta-sts.txt (served elsewhere):\n\
         ;   version: STSv1\n;   mode: testing\n;   mx: {h}\n;   max_age: 86400\n"
    ));
    Ok(out)
}

/// A TXT value as quoted strings of at most 255 bytes each (RFC 1035 §3.3.14); the value
/// is base64 and ASCII, so splitting by bytes is safe.
fn txt_strings(value: &str) -> String {
    value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_sign_and_records() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(load(dir.path(), "d.test").expect("load").is_none());
        let keys = generate(dir.path(), "D.test").expect("generate");
        assert!(matches!(
            generate(dir.path(), "d.test"),
            Err(DkimError::Exists(_))
        ));
        let loaded = load(dir.path(), "d.test").expect("load").expect("keys");
        let msg = b"From: a@d.test\r\nTo: b@x.test\r\nSubject: hi\r\n\r\nbody\r\n";
        let sig = loaded.sign(msg).expect("sign");
        assert_eq!(sig.matches("DKIM-Signature:").count(), 2);
        assert!(sig.starts_with("DKIM-Signature:"));
        assert!(sig.contains("a=rsa-sha256") && sig.contains("a=ed25519-sha256"));
        assert!(sig.contains("d=d.test") && sig.contains("s=mailfleet-rsa"));
        assert!(sig.ends_with("\r\n"));
        let zone = zone_records("d.test", "mx.d.test", Some(&keys)).expect("zone");
        for want in [
            "IN\tMX\t10 mx.d.test.",
            "mailfleet-rsa._domainkey.d.test.",
            "k=ed25519",
            "_dmarc.d.test.",
            "_mta-sts.d.test.",
            "_smtp._tls.d.test.",
            "v=spf1",
        ] {
            assert!(zone.contains(want), "{want} missing from\n{zone}");
        }
        // SPKI of a 2048-bit key is 294 bytes; its base64 needs two TXT strings.
        assert!(zone.contains("\" \""));
    }
}
