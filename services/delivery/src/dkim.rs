//! DKIM (RFC 6376) keys and signing, with `mail-auth`.
//!
//! Each domain gets two keys, as RFC 8463 recommends while Ed25519 verifiers are still
//! rare: RSA-2048 and Ed25519. Outbound mail carries both signatures; a verifier uses the
//! one it understands.
//!
//! Keys live in the shared metadata store ([`mailfleet_storage::DkimKey`]), so every
//! front-end signs with the same keys; a key file under one node's data directory left
//! the other pods sending unsigned mail without a word. Keys written by earlier versions
//! as files (`<data_dir>/dkim/<domain>/rsa.der`, `ed25519.der`) are imported into the
//! store the first time they are needed ([`import_files`]).
//!
//! Rotation ([`rotate`]) adds a new pair in state `published`: its DNS records are printed
//! (and published by the operator) while the old keys keep signing. Once the new selector
//! has been published long enough for DNS caches ([`Lifecycle::publish_delay`]), or when
//! an administrator activates it, it signs and the old keys are `retired`: still in DNS
//! for [`Lifecycle::retire_after`], so mail signed just before the switch still verifies,
//! then deleted ([`advance`]).

use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::generate::DkimKeyPair;
use mail_auth::dkim::DkimSigner;
use mailfleet_storage::{DkimAlgorithm, DkimKey, DkimKeyState, MetadataStore, StoreError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Selectors of a domain's first keys (and of keys imported from files).
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
    #[error("{0}")]
    Choice(String),
    #[error("DKIM keys for {0} already exist")]
    Exists(String),
    #[error("no DKIM keys for {0}")]
    NoKeys(String),
    #[error("DKIM: {0}")]
    Crypto(String),
    #[error("DKIM keys: {0}")]
    Store(#[from] StoreError),
}

/// The directory earlier versions kept a domain's key files in.
pub fn key_dir(data_dir: &Path, domain: &str) -> PathBuf {
    data_dir.join("dkim").join(domain.to_ascii_lowercase())
}

/// How long keys stay in each state (`[delivery] dkim_publish_delay_hours`,
/// `dkim_retire_days`).
#[derive(Clone, Copy, Debug)]
pub struct Lifecycle {
    /// A published key starts signing after this long in DNS.
    pub publish_delay: Duration,
    /// A retired key is deleted (and its record may go) after this long.
    pub retire_after: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            publish_delay: Duration::from_secs(48 * 3600),
            retire_after: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Which keys a domain has: the algorithms and the selector they are named from. The
/// default (both algorithms, selector `mailfleet`) gives the selectors every earlier
/// version used, `mailfleet-rsa` and `mailfleet-ed25519`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChoice {
    /// A DNS label: `<selector>._domainkey.<domain>`. With both algorithms each key's
    /// selector is `<selector>-rsa` / `<selector>-ed25519`; with one it is `<selector>`.
    /// Rotated keys add `-<yyyymmddHHMM>`.
    pub selector: String,
    /// RSA first when both; never empty.
    pub algorithms: Vec<DkimAlgorithm>,
}

impl Default for KeyChoice {
    fn default() -> Self {
        Self {
            selector: "mailfleet".into(),
            algorithms: vec![DkimAlgorithm::Rsa, DkimAlgorithm::Ed25519],
        }
    }
}

impl KeyChoice {
    /// Checks the selector (a lowercase DNS label, room left for the suffixes) and that
    /// there is at least one algorithm.
    pub fn new(selector: &str, algorithms: &[DkimAlgorithm]) -> Result<Self, DkimError> {
        let ok = !selector.is_empty()
            && selector.len() <= 40
            && selector
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !selector.starts_with('-')
            && !selector.ends_with('-');
        if !ok {
            return Err(DkimError::Choice(format!(
                "DKIM selector {selector:?}: 1 to 40 of a-z, 0-9 and '-', not at either end"
            )));
        }
        let mut algs: Vec<DkimAlgorithm> = Vec::new();
        for a in algorithms {
            if !algs.contains(a) {
                algs.push(*a);
            }
        }
        if algs.is_empty() {
            return Err(DkimError::Choice(
                "DKIM needs at least one algorithm".into(),
            ));
        }
        algs.sort();
        Ok(Self {
            selector: selector.to_string(),
            algorithms: algs,
        })
    }

    /// The selector of this choice's key of `algorithm`, before any rotation suffix.
    pub fn selector_of(&self, algorithm: DkimAlgorithm) -> String {
        if self.algorithms.len() == 1 {
            return self.selector.clone();
        }
        match algorithm {
            DkimAlgorithm::Rsa => format!("{}-rsa", self.selector),
            DkimAlgorithm::Ed25519 => format!("{}-ed25519", self.selector),
        }
    }

    /// Whether `keys` (a set created together) is what this choice makes: the same
    /// algorithms, each under its selector (with or without a rotation suffix).
    pub fn matches(&self, keys: &[&DkimKey]) -> bool {
        let mut algs: Vec<DkimAlgorithm> = keys.iter().map(|k| k.algorithm).collect();
        algs.sort();
        algs.dedup();
        algs == self.algorithms
            && keys.iter().all(|k| {
                let base = self.selector_of(k.algorithm);
                k.selector == base
                    || k.selector
                        .strip_prefix(&format!("{base}-"))
                        .is_some_and(|d| d.len() == 12 && d.bytes().all(|b| b.is_ascii_digit()))
            })
    }
}

fn new_set(
    domain: &str,
    choice: &KeyChoice,
    suffix: &str,
    state: DkimKeyState,
    now: i64,
) -> Result<Vec<DkimKey>, DkimError> {
    let mut out = Vec::new();
    for algorithm in &choice.algorithms {
        let pair = match algorithm {
            DkimAlgorithm::Rsa => DkimKeyPair::generate_rsa(RSA_BITS),
            DkimAlgorithm::Ed25519 => DkimKeyPair::generate_ed25519(),
        }
        .map_err(|e| DkimError::Crypto(e.to_string()))?;
        out.push(DkimKey {
            domain: domain.to_string(),
            selector: format!("{}{suffix}", choice.selector_of(*algorithm)),
            algorithm: *algorithm,
            private_der: pair.private_key().to_vec(),
            state,
            created_at: now,
            state_since: now,
        });
    }
    Ok(out)
}

/// The keys a domain has been given most recently (those created last, in any state but
/// retired): what [`KeyChoice::matches`] is checked against.
pub fn newest_set(keys: &[DkimKey]) -> Vec<&DkimKey> {
    let live = keys.iter().filter(|k| k.state != DkimKeyState::Retired);
    let Some(newest) = live.clone().map(|k| k.created_at).max() else {
        return Vec::new();
    };
    live.filter(|k| k.created_at == newest).collect()
}

/// Generates a domain's first keys, signing at once (there is nothing to rotate from: mail
/// was unsigned until now). Refuses when the domain has keys: replacing a key that DNS
/// still publishes would break every signature until DNS catches up; use [`rotate`].
pub async fn generate(
    meta: &dyn MetadataStore,
    domain: &str,
    now: i64,
) -> Result<Vec<DkimKey>, DkimError> {
    generate_with(meta, domain, &KeyChoice::default(), now).await
}

/// [`generate`] with the given algorithms and selector.
pub async fn generate_with(
    meta: &dyn MetadataStore,
    domain: &str,
    choice: &KeyChoice,
    now: i64,
) -> Result<Vec<DkimKey>, DkimError> {
    let domain = domain.to_ascii_lowercase();
    if !meta.dkim_keys(&domain).await?.is_empty() {
        return Err(DkimError::Exists(domain));
    }
    let pair = new_set(&domain, choice, "", DkimKeyState::Active, now)?;
    for k in &pair {
        meta.add_dkim_key(k.clone()).await.map_err(|e| match e {
            StoreError::Conflict(_) => DkimError::Exists(domain.clone()),
            e => e.into(),
        })?;
    }
    Ok(pair)
}

/// Adds a new pair for `domain` in state `published` (selectors dated `now`), to go into
/// DNS before it signs; the keys in use keep signing until [`advance`] or [`activate`].
pub async fn rotate(
    meta: &dyn MetadataStore,
    domain: &str,
    now: i64,
) -> Result<Vec<DkimKey>, DkimError> {
    let domain = domain.to_ascii_lowercase();
    let keys = meta.dkim_keys(&domain).await?;
    if keys.is_empty() {
        return Err(DkimError::NoKeys(domain));
    }
    // The same kind of keys as the domain has now (an administrator's rotation keeps what
    // the operator or an earlier choice set up).
    let newest = newest_set(&keys);
    let mut algorithms: Vec<DkimAlgorithm> = newest.iter().map(|k| k.algorithm).collect();
    algorithms.sort();
    algorithms.dedup();
    let choice = match algorithms.as_slice() {
        [one] => KeyChoice {
            selector: strip_rotation(&newest[0].selector).to_string(),
            algorithms: vec![*one],
        },
        _ => {
            let rsa = newest
                .iter()
                .find(|k| k.algorithm == DkimAlgorithm::Rsa)
                .map(|k| {
                    strip_rotation(&k.selector)
                        .trim_end_matches("-rsa")
                        .to_string()
                })
                .unwrap_or_else(|| KeyChoice::default().selector);
            KeyChoice {
                selector: rsa,
                algorithms: vec![DkimAlgorithm::Rsa, DkimAlgorithm::Ed25519],
            }
        }
    };
    rotate_with(meta, &domain, &choice, now).await
}

/// A selector without its rotation suffix (`-yyyymmddHHMM`).
fn strip_rotation(selector: &str) -> &str {
    match selector.rsplit_once('-') {
        Some((base, d)) if d.len() == 12 && d.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => selector,
    }
}

/// Adds a new set of keys as `choice` says, in state `published` (selectors dated `now`):
/// a rotation, or a change of algorithms or selector, which goes through DNS the same way.
/// Once it signs, the keys it replaces retire, those of algorithms it drops included.
pub async fn rotate_with(
    meta: &dyn MetadataStore,
    domain: &str,
    choice: &KeyChoice,
    now: i64,
) -> Result<Vec<DkimKey>, DkimError> {
    let domain = domain.to_ascii_lowercase();
    if meta.dkim_keys(&domain).await?.is_empty() {
        return Err(DkimError::NoKeys(domain));
    }
    let date = chrono::DateTime::from_timestamp(now, 0)
        .map(|d| d.format("%Y%m%d%H%M").to_string())
        .unwrap_or_else(|| now.to_string());
    let pair = new_set(
        &domain,
        choice,
        &format!("-{date}"),
        DkimKeyState::Published,
        now,
    )?;
    for k in &pair {
        meta.add_dkim_key(k.clone()).await?;
    }
    Ok(pair)
}

/// Makes the newest published key of each algorithm sign now, retiring the keys it
/// replaces. For an administrator who has checked that DNS answers with the new records
/// (the operator does this from its DNS checks).
pub async fn activate(
    meta: &dyn MetadataStore,
    domain: &str,
    now: i64,
) -> Result<Vec<String>, DkimError> {
    let domain = domain.to_ascii_lowercase();
    promote(meta, &domain, now, |_| true).await
}

async fn promote(
    meta: &dyn MetadataStore,
    domain: &str,
    now: i64,
    ready: impl Fn(&DkimKey) -> bool,
) -> Result<Vec<String>, DkimError> {
    let keys = meta.dkim_keys(domain).await?;
    let mut changed = Vec::new();
    for algorithm in [DkimAlgorithm::Rsa, DkimAlgorithm::Ed25519] {
        let Some(next) = keys
            .iter()
            .filter(|k| k.algorithm == algorithm && k.state == DkimKeyState::Published)
            .filter(|k| ready(k))
            .max_by_key(|k| (k.created_at, k.selector.clone()))
        else {
            continue;
        };
        meta.set_dkim_key_state(domain, &next.selector, DkimKeyState::Active, now)
            .await?;
        changed.push(next.selector.clone());
        for old in keys.iter().filter(|k| {
            k.algorithm == algorithm
                && k.selector != next.selector
                && (k.state == DkimKeyState::Active
                    || (k.state == DkimKeyState::Published && k.created_at <= next.created_at))
        }) {
            meta.set_dkim_key_state(domain, &old.selector, DkimKeyState::Retired, now)
                .await?;
            changed.push(old.selector.clone());
        }
    }
    // A set that dropped an algorithm: once it signs, the older keys of that algorithm
    // stop signing too (they stay in DNS, retired, like any replaced key).
    if let Some(newest) = keys
        .iter()
        .filter(|k| changed.contains(&k.selector) && k.state == DkimKeyState::Published)
        .map(|k| k.created_at)
        .max()
    {
        let promoted: Vec<DkimAlgorithm> = keys
            .iter()
            .filter(|k| k.created_at == newest && changed.contains(&k.selector))
            .map(|k| k.algorithm)
            .collect();
        let set: Vec<DkimAlgorithm> = keys
            .iter()
            .filter(|k| k.created_at == newest)
            .map(|k| k.algorithm)
            .collect();
        if promoted.len() == set.len() {
            for old in keys.iter().filter(|k| {
                k.created_at < newest
                    && !set.contains(&k.algorithm)
                    && matches!(k.state, DkimKeyState::Active | DkimKeyState::Published)
            }) {
                meta.set_dkim_key_state(domain, &old.selector, DkimKeyState::Retired, now)
                    .await?;
                changed.push(old.selector.clone());
            }
        }
    }
    Ok(changed)
}

/// Moves keys along by time: published keys in DNS for `publish_delay` start signing,
/// retired keys past `retire_after` are deleted. Returns the selectors changed. Run by
/// the delivery worker when it refreshes a domain's keys, so any node does it, and a
/// second node doing it at the same time changes nothing more.
pub async fn advance(
    meta: &dyn MetadataStore,
    domain: &str,
    now: i64,
    life: Lifecycle,
) -> Result<Vec<String>, DkimError> {
    let publish = life.publish_delay.as_secs() as i64;
    let mut changed = promote(meta, domain, now, |k| k.state_since + publish <= now).await?;
    let retire = life.retire_after.as_secs() as i64;
    for k in meta.dkim_keys(domain).await? {
        if k.state == DkimKeyState::Retired && k.state_since + retire <= now {
            match meta.delete_dkim_key(domain, &k.selector).await {
                Ok(()) | Err(StoreError::NotFound(_)) => changed.push(k.selector),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(changed)
}

/// Imports key files an earlier version wrote under `data_dir`, when the store has no keys
/// for `domain`; true when it imported. The files are left in place (a backup of them
/// stays valid) but are not read again once the store has keys.
pub async fn import_files(
    meta: &dyn MetadataStore,
    data_dir: &Path,
    domain: &str,
    now: i64,
) -> Result<bool, DkimError> {
    let domain = domain.to_ascii_lowercase();
    let dir = key_dir(data_dir, &domain);
    let read = |name: &str| {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DkimError::Io { path, source }),
        }
    };
    let (rsa, ed) = match (read(RSA_FILE)?, read(ED25519_FILE)?) {
        (Some(r), Some(e)) => (r, e),
        (None, None) => return Ok(false),
        _ => {
            return Err(DkimError::Crypto(format!(
                "only one of the two key files for {domain} exists in {}",
                dir.display()
            )))
        }
    };
    if !meta.dkim_keys(&domain).await?.is_empty() {
        return Ok(false);
    }
    // Checked before they go in: a damaged file must not become a key every node uses.
    let keys = DomainKeys {
        domain: domain.clone(),
        signing: vec![
            (RSA_SELECTOR.to_string(), DkimAlgorithm::Rsa, rsa.clone()),
            (
                ED25519_SELECTOR.to_string(),
                DkimAlgorithm::Ed25519,
                ed.clone(),
            ),
        ],
    };
    keys.sign(b"From: check@invalid\r\n\r\n")?;
    for (selector, algorithm, der) in [
        (RSA_SELECTOR, DkimAlgorithm::Rsa, rsa),
        (ED25519_SELECTOR, DkimAlgorithm::Ed25519, ed),
    ] {
        match meta
            .add_dkim_key(DkimKey {
                domain: domain.clone(),
                selector: selector.to_string(),
                algorithm,
                private_der: der,
                state: DkimKeyState::Active,
                created_at: now,
                state_since: now,
            })
            .await
        {
            // Another node imported the same files meanwhile.
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// The keys that sign a domain's mail now (state `active`); `None` when it has none.
pub async fn signing_keys(
    meta: &dyn MetadataStore,
    domain: &str,
) -> Result<Option<DomainKeys>, DkimError> {
    let domain = domain.to_ascii_lowercase();
    let mut signing: Vec<(String, DkimAlgorithm, Vec<u8>)> = meta
        .dkim_keys(&domain)
        .await?
        .into_iter()
        .filter(|k| k.state == DkimKeyState::Active)
        .map(|k| (k.selector, k.algorithm, k.private_der))
        .collect();
    if signing.is_empty() {
        return Ok(None);
    }
    // RSA first: prepended in that order, its signature is the topmost field.
    signing.sort_by_key(|(_, a, _)| *a);
    Ok(Some(DomainKeys { domain, signing }))
}

/// `(selector, state, TXT value)` of every key of `domain` that belongs in DNS (all of
/// them: published keys before they sign, retired ones until they are deleted).
pub async fn dns_records(
    meta: &dyn MetadataStore,
    domain: &str,
) -> Result<Vec<(String, DkimKeyState, String)>, DkimError> {
    let domain = domain.to_ascii_lowercase();
    let mut out = Vec::new();
    for k in meta.dkim_keys(&domain).await? {
        out.push((k.selector.clone(), k.state, txt_value(&k)?));
    }
    Ok(out)
}

fn rsa_key(domain: &str, der: &[u8]) -> Result<RsaKey<Sha256>, DkimError> {
    RsaKey::<Sha256>::from_key_der(rustls::pki_types::PrivateKeyDer::Pkcs1(der.to_vec().into()))
        .map_err(|e| DkimError::Crypto(format!("RSA key of {domain}: {e}")))
}

fn ed25519_key(domain: &str, der: &[u8]) -> Result<Ed25519Key, DkimError> {
    Ed25519Key::from_pkcs8_der(der)
        .map_err(|e| DkimError::Crypto(format!("Ed25519 key of {domain}: {e}")))
}

/// The DKIM TXT record value of a key (its public half).
fn txt_value(k: &DkimKey) -> Result<String, DkimError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(match k.algorithm {
        DkimAlgorithm::Rsa => {
            let spki = rsa_spki(&rsa_key(&k.domain, &k.private_der)?.public_key());
            format!("v=DKIM1; k=rsa; p={}", b64.encode(spki))
        }
        DkimAlgorithm::Ed25519 => format!(
            "v=DKIM1; k=ed25519; p={}",
            b64.encode(ed25519_key(&k.domain, &k.private_der)?.public_key())
        ),
    })
}

/// The keys a domain signs with now: `(selector, algorithm, private DER)`, RSA first.
#[derive(Clone)]
pub struct DomainKeys {
    pub domain: String,
    signing: Vec<(String, DkimAlgorithm, Vec<u8>)>,
}

impl DomainKeys {
    /// The selectors that sign.
    pub fn selectors(&self) -> Vec<&str> {
        self.signing.iter().map(|(s, _, _)| s.as_str()).collect()
    }

    /// The `DKIM-Signature` fields for `message` (CRLF-terminated, each ending in CRLF),
    /// RSA first: prepended in that order, the RSA signature is the topmost field, which
    /// verifiers that look only at the first signature check.
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        let mut out = String::new();
        for (selector, algorithm, der) in &self.signing {
            let sig = match algorithm {
                DkimAlgorithm::Rsa => DkimSigner::from_key(rsa_key(&self.domain, der)?)
                    .domain(self.domain.clone())
                    .selector(selector.clone())
                    .headers(SIGNED_HEADERS)
                    .sign(message),
                DkimAlgorithm::Ed25519 => DkimSigner::from_key(ed25519_key(&self.domain, der)?)
                    .domain(self.domain.clone())
                    .selector(selector.clone())
                    .headers(SIGNED_HEADERS)
                    .sign(message),
            }
            .map_err(|e| DkimError::Crypto(e.to_string()))?;
            out.push_str(&sig.to_header());
        }
        Ok(out)
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
/// file lines. `dkim` is what [`dns_records`] returned: empty before
/// `mailfleet dkim generate` has run.
pub fn zone_records(
    domain: &str,
    hostname: &str,
    dkim: &[(String, DkimKeyState, String)],
) -> Result<String, DkimError> {
    let d = domain.to_ascii_lowercase();
    let h = hostname.trim_end_matches('.');
    let mut out = String::new();
    out.push_str(&format!("{d}.\t3600\tIN\tMX\t10 {h}.\n"));
    out.push_str(&format!("{d}.\t3600\tIN\tTXT\t\"v=spf1 mx -all\"\n"));
    if dkim.is_empty() {
        out.push_str(&format!(
            "; no DKIM keys yet: run `mailfleet dkim generate {d}`\n"
        ));
    }
    for (selector, state, value) in dkim {
        if *state != DkimKeyState::Active {
            out.push_str(&format!("; {selector}: {} (not signing)\n", state.as_str()));
        }
        out.push_str(&format!(
            "{selector}._domainkey.{d}.\t3600\tIN\tTXT\t{}\n",
            txt_strings(value)
        ));
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
    use mailfleet_storage::metadata::sqlite::SqliteMetadataStore;

    const MSG: &[u8] = b"From: a@d.test\r\nTo: b@x.test\r\nSubject: hi\r\n\r\nbody\r\n";

    async fn signing(meta: &dyn MetadataStore) -> Vec<String> {
        signing_keys(meta, "d.test")
            .await
            .expect("load")
            .expect("keys")
            .selectors()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn store(dir: &Path) -> SqliteMetadataStore {
        SqliteMetadataStore::open(dir.join("m.sqlite3"), 16).expect("open")
    }

    #[tokio::test]
    async fn generate_sign_and_records() {
        let dir = tempfile::tempdir().expect("tmp");
        let meta = store(dir.path());
        assert!(signing_keys(&meta, "d.test").await.expect("load").is_none());
        generate(&meta, "D.test", 1_000).await.expect("generate");
        assert!(matches!(
            generate(&meta, "d.test", 1_000).await,
            Err(DkimError::Exists(_))
        ));
        let keys = signing_keys(&meta, "d.test")
            .await
            .expect("load")
            .expect("keys");
        let sig = keys.sign(MSG).expect("sign");
        assert_eq!(sig.matches("DKIM-Signature:").count(), 2);
        assert!(sig.starts_with("DKIM-Signature:"));
        assert!(sig.contains("a=rsa-sha256") && sig.contains("a=ed25519-sha256"));
        assert!(sig.contains("d=d.test") && sig.contains("s=mailfleet-rsa;"));
        assert!(sig.ends_with("\r\n"));
        let records = dns_records(&meta, "d.test").await.expect("records");
        let zone = zone_records("d.test", "mx.d.test", &records).expect("zone");
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
        assert!(!zone.contains("not signing"));
    }

    #[tokio::test]
    async fn rotation_publishes_before_signing_and_retires_after() {
        let dir = tempfile::tempdir().expect("tmp");
        let meta = store(dir.path());
        assert!(matches!(
            rotate(&meta, "d.test", 0).await,
            Err(DkimError::NoKeys(_))
        ));
        generate(&meta, "d.test", 0).await.expect("generate");
        let life = Lifecycle {
            publish_delay: Duration::from_secs(3600),
            retire_after: Duration::from_secs(7200),
        };
        let t0 = 1_800_000_000;
        let new = rotate(&meta, "d.test", t0).await.expect("rotate");
        let new_rsa = new[0].selector.clone();
        assert!(new_rsa.starts_with("mailfleet-rsa-20"), "{new_rsa}");
        // Published: in the DNS records, but the old keys still sign.
        let records = dns_records(&meta, "d.test").await.expect("records");
        assert_eq!(records.len(), 4);
        let zone = zone_records("d.test", "mx.d.test", &records).expect("zone");
        assert!(zone.contains(&format!("; {new_rsa}: published (not signing)")));
        assert_eq!(signing(&meta).await, ["mailfleet-rsa", "mailfleet-ed25519"]);
        // Before the delay nothing moves; after it the new pair signs, the old is retired.
        assert!(advance(&meta, "d.test", t0 + 3599, life)
            .await
            .expect("early")
            .is_empty());
        let changed = advance(&meta, "d.test", t0 + 3600, life)
            .await
            .expect("advance");
        assert_eq!(changed.len(), 4, "{changed:?}");
        assert_eq!(
            signing(&meta).await,
            [new_rsa.clone(), new[1].selector.clone()]
        );
        let sig = signing_keys(&meta, "d.test")
            .await
            .unwrap()
            .unwrap()
            .sign(MSG)
            .unwrap();
        assert!(sig.contains(&format!("s={new_rsa};")), "{sig}");
        // Retired keys stay in DNS for retire_after, then go.
        assert_eq!(dns_records(&meta, "d.test").await.unwrap().len(), 4);
        assert!(advance(&meta, "d.test", t0 + 3600 + 7199, life)
            .await
            .unwrap()
            .is_empty());
        let gone = advance(&meta, "d.test", t0 + 3600 + 7200, life)
            .await
            .unwrap();
        assert_eq!(gone, ["mailfleet-ed25519", "mailfleet-rsa"]);
        assert_eq!(dns_records(&meta, "d.test").await.unwrap().len(), 2);

        // An administrator may activate a published pair at once.
        let next = rotate(&meta, "d.test", t0 + 20_000).await.expect("rotate");
        let changed = activate(&meta, "d.test", t0 + 20_001)
            .await
            .expect("activate");
        assert!(changed.contains(&next[0].selector));
        assert_eq!(
            signing(&meta).await,
            [next[0].selector.clone(), next[1].selector.clone()]
        );
    }

    #[tokio::test]
    async fn key_files_of_earlier_versions_are_imported_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let meta = store(dir.path());
        assert!(!import_files(&meta, dir.path(), "d.test", 5)
            .await
            .expect("none"));
        let kd = key_dir(dir.path(), "d.test");
        std::fs::create_dir_all(&kd).unwrap();
        let rsa = DkimKeyPair::generate_rsa(RSA_BITS).unwrap();
        let ed = DkimKeyPair::generate_ed25519().unwrap();
        std::fs::write(kd.join(RSA_FILE), rsa.private_key()).unwrap();
        // One file alone is an error, not a silent half import.
        assert!(import_files(&meta, dir.path(), "d.test", 5).await.is_err());
        std::fs::write(kd.join(ED25519_FILE), ed.private_key()).unwrap();
        assert!(import_files(&meta, dir.path(), "d.test", 5)
            .await
            .expect("import"));
        assert!(!import_files(&meta, dir.path(), "d.test", 6)
            .await
            .expect("again"));
        let keys = meta.dkim_keys("d.test").await.unwrap();
        assert_eq!(keys.len(), 2);
        let stored_rsa = keys
            .iter()
            .find(|k| k.algorithm == DkimAlgorithm::Rsa)
            .unwrap();
        assert_eq!(stored_rsa.private_der.as_slice(), rsa.private_key());
        let sig = signing_keys(&meta, "d.test")
            .await
            .unwrap()
            .unwrap()
            .sign(MSG)
            .unwrap();
        assert_eq!(sig.matches("DKIM-Signature:").count(), 2);
        // A damaged file is refused.
        let ke = key_dir(dir.path(), "e.test");
        std::fs::create_dir_all(&ke).unwrap();
        std::fs::write(ke.join(RSA_FILE), b"junk").unwrap();
        std::fs::write(ke.join(ED25519_FILE), ed.private_key()).unwrap();
        assert!(import_files(&meta, dir.path(), "e.test", 5).await.is_err());
        assert!(meta.dkim_keys("e.test").await.unwrap().is_empty());
    }
}
