//! MTA-STS (RFC 8461): a recipient domain's published demand for authenticated TLS.
//!
//! Opportunistic STARTTLS (see `tls.rs`) falls to an active attacker who strips STARTTLS
//! or forges MX records. A domain that publishes an MTA-STS policy says which MX names are
//! genuine and that they have certificates valid for those names; a sender that honours a
//! policy in `enforce` mode delivers only to those hosts, only over TLS, and only after
//! checking the certificate (PKIX, RFC 8461 §4.2).
//!
//! The parsing and matching functions at the top are free of I/O so they can be tested on
//! their own; [`PolicyCache`] adds the DNS TXT lookup, the HTTPS fetch and the per-node
//! cache. A policy is discovered through `_mta-sts.<domain>` TXT (which carries only an
//! `id`), fetched from `https://mta-sts.<domain>/.well-known/mta-sts.txt`, and kept for its
//! `max_age`; the TXT `id` tells whether the cached copy is still the current one, so the
//! HTTPS fetch happens only when the policy changed or expired.

use crate::route::{Hop, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// RFC 8461 §3.2: the largest `max_age` (one year); larger values make a policy malformed.
pub const MAX_MAX_AGE: u64 = 31_557_600;
/// Policy bodies are a few lines; a cap keeps a hostile server from feeding us megabytes.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Bounds the whole fetch (DNS, TCP, TLS, request, body): a slow policy host must not hold
/// a delivery slot for long, and RFC 8461 §3.3 suggests a timeout of about a minute at most.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Policies kept per node; past it the one expiring soonest makes room. Each entry is a few
/// hundred bytes, so this bounds memory while covering every domain a node usually mails.
pub const CACHE_CAPACITY: usize = 10_000;
/// The well-known path (RFC 8461 §3.3).
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// What a policy asks of senders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts over PKIX-validated TLS.
    Enforce,
    /// Deliver as without a policy, but report what `Enforce` would have refused.
    Testing,
    /// The domain withdrew its policy: behave as if there were none.
    None,
}

/// A parsed policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// MX patterns (`mx.example.net` or `*.example.net`), lowercase, without trailing dot.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

impl Policy {
    /// Whether `host` (an MX name) is allowed by one of the policy's patterns.
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }
}

/// The `id` of the one valid MTA-STS TXT record among `records`, or `None`.
///
/// RFC 8461 §3.1: records not starting with `v=STSv1` are not ours and are discarded; if
/// the number left is not exactly one, or that one is malformed, the domain has no
/// available policy (the cached one may still apply).
pub fn txt_policy_id(records: &[String]) -> Option<String> {
    let mut ours = records.iter().filter(|r| r.starts_with("v=STSv1"));
    let record = ours.next()?;
    if ours.next().is_some() {
        return None;
    }
    parse_txt(record)
}

/// Parses one `v=STSv1; id=...;` record; returns the id.
pub fn parse_txt(record: &str) -> Option<String> {
    let mut fields = record.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next()? != "v=STSv1" {
        return None;
    }
    let mut id = None;
    let mut seen_field = false;
    let fields: Vec<&str> = fields.collect();
    for (i, field) in fields.iter().enumerate() {
        if field.is_empty() {
            // Only the optional trailing `;` may leave an empty field.
            if i + 1 == fields.len() {
                continue;
            }
            return None;
        }
        seen_field = true;
        let (key, value) = field.split_once('=')?;
        if key == "id" {
            let ok =
                (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok || id.is_some() {
                return None;
            }
            id = Some(value.to_string());
        } else if !valid_extension(key, value) {
            return None;
        }
    }
    if !seen_field {
        return None;
    }
    id
}

/// RFC 8461 §3.1 `sts-extension`: a short name and a value of printable characters other
/// than `;`, `=` and space. Unknown extensions are allowed so that future versions of the
/// record do not make today's senders ignore a policy.
fn valid_extension(key: &str, value: &str) -> bool {
    let name_ok = key.len() <= 32
        && key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    let value_ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b';' && b != b'=');
    name_ok && value_ok
}

/// Parses a policy file (RFC 8461 §3.2). Lines end in CRLF or LF; keys and values are
/// case-sensitive; unknown keys are ignored (so policies can grow); anything else wrong
/// makes the whole policy malformed, which the caller treats as a failed fetch.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim_matches([' ', '\t']).is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("line without `key: value`: {line:?}"))?;
        let value = value.trim_matches([' ', '\t']);
        match key {
            "version" => {
                once(&version, key)?;
                if value != "STSv1" {
                    return Err(format!("unknown version {value:?}"));
                }
                version = Some(());
            }
            "mode" => {
                once(&mode, key)?;
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {other:?}")),
                });
            }
            "max_age" => {
                once(&max_age, key)?;
                let n: u64 = if !value.is_empty()
                    && value.len() <= 10
                    && value.bytes().all(|b| b.is_ascii_digit())
                {
                    value
                        .parse()
                        .map_err(|_| format!("bad max_age {value:?}"))?
                } else {
                    return Err(format!("bad max_age {value:?}"));
                };
                if n > MAX_MAX_AGE {
                    return Err(format!("max_age {n} exceeds {MAX_MAX_AGE}"));
                }
                max_age = Some(n);
            }
            "mx" => {
                let pattern = value.trim_end_matches('.').to_ascii_lowercase();
                if !valid_mx_pattern(&pattern) {
                    return Err(format!("bad mx pattern {value:?}"));
                }
                mx.push(pattern);
            }
            _ => {}
        }
    }
    version.ok_or("no `version: STSv1`")?;
    let mode = mode.ok_or("no `mode`")?;
    let max_age = max_age.ok_or("no `max_age`")?;
    // `none` withdraws a policy, so its MX list does not matter; the others need one.
    if mx.is_empty() && mode != Mode::None {
        return Err("no `mx` pattern".into());
    }
    Ok(Policy { mode, mx, max_age })
}

/// A repeated single-valued key is ambiguous; refusing it is the safe reading.
fn once<T>(slot: &Option<T>, key: &str) -> Result<(), String> {
    match slot {
        Some(_) => Err(format!("`{key}` appears twice")),
        None => Ok(()),
    }
}

/// A host name, optionally with a leading `*.`, whose labels are letters, digits and
/// hyphens (A-labels for IDNs, as RFC 8461 §3.2 requires).
fn valid_mx_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// RFC 8461 §4.1: whether MX `host` matches `pattern`. A leading `*.` stands for exactly
/// one label, so `*.example.net` matches `mx.example.net` but neither `example.net` nor
/// `a.b.example.net`. Case and trailing dots do not matter.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest.eq_ignore_ascii_case(suffix),
            None => false,
        },
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// A cached policy with the TXT id it was fetched under.
#[derive(Clone)]
struct Cached {
    id: String,
    policy: Arc<Policy>,
    expires: Instant,
}

/// Fetches and caches MTA-STS policies for one node.
///
/// Per node rather than shared through the coordinator: a policy is small, cheap to fetch
/// again, and each node must be able to enforce it even when the coordinator is down.
pub struct PolicyCache {
    entries: Mutex<HashMap<String, Cached>>,
    capacity: usize,
    /// PKIX-validating TLS for the policy host (RFC 8461 §3.3 requires a valid certificate
    /// for `mta-sts.<domain>`).
    https: tokio_rustls::TlsConnector,
    /// 443 in production; tests point it at a loopback server.
    https_port: u16,
}

impl PolicyCache {
    pub fn new(https: tokio_rustls::TlsConnector, https_port: u16) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: CACHE_CAPACITY,
            https,
            https_port,
        }
    }

    /// Policies cached now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, domain: &str) -> Option<Cached> {
        let mut entries = self.lock();
        match entries.get(domain) {
            Some(c) if c.expires > Instant::now() => Some(c.clone()),
            Some(_) => {
                entries.remove(domain);
                None
            }
            None => None,
        }
    }

    fn store(&self, domain: &str, id: String, policy: Arc<Policy>) {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(domain) {
            entries.retain(|_, c| c.expires > now);
            if entries.len() >= self.capacity {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, c)| c.expires)
                    .map(|(d, _)| d.clone());
                if let Some(d) = soonest {
                    entries.remove(&d);
                }
            }
        }
        let expires = now
            .checked_add(Duration::from_secs(policy.max_age))
            .unwrap_or(now);
        entries.insert(
            domain.to_string(),
            Cached {
                id,
                policy,
                expires,
            },
        );
    }

    /// The policy in force for `domain`, or `None` when it has none (RFC 8461 §3 and §5.1):
    ///
    /// - no usable TXT record (absent, several, malformed, or the lookup failed): the
    ///   cached policy while it is unexpired, else none. A lookup failure must not switch
    ///   enforcement off, and the cache is what keeps an attacker who blocks DNS from doing
    ///   so;
    /// - a TXT id equal to the cached policy's: the cached policy;
    /// - otherwise the policy is fetched; when the fetch fails the cached policy still
    ///   applies until it expires, and without one the domain has no policy.
    pub async fn policy_for(&self, router: &Router, domain: &str) -> Option<Arc<Policy>> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let cached = self.cached(&domain);
        let id = match router.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => txt_policy_id(&records),
            Err(e) => {
                tracing::debug!(domain, error = %e, "MTA-STS TXT lookup failed");
                None
            }
        };
        let Some(id) = id else {
            return cached.map(|c| c.policy);
        };
        if let Some(c) = &cached {
            if c.id == id {
                return Some(c.policy.clone());
            }
        }
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch(router, &domain)).await {
            Ok(Ok(policy)) => {
                tracing::debug!(domain, id, mode = ?policy.mode, "MTA-STS policy fetched");
                let policy = Arc::new(policy);
                self.store(&domain, id, policy.clone());
                Some(policy)
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => "timed out".to_string(),
                };
                tracing::warn!(domain, error = %why, cached = cached.is_some(), "MTA-STS policy fetch failed");
                cached.map(|c| c.policy)
            }
        }
    }

    /// GET `https://mta-sts.<domain>/.well-known/mta-sts.txt` and parse it; the first
    /// address that answers decides.
    async fn fetch(&self, router: &Router, domain: &str) -> Result<Policy, String> {
        let host = format!("mta-sts.{domain}");
        let hop = Hop {
            host: host.clone(),
            port: self.https_port,
        };
        let addrs = router.addresses(&hop).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.clone())
            .map_err(|e| format!("{host} is not a valid TLS name: {e}"))?;
        let mut last = format!("{host} has no address");
        for addr in addrs {
            match self.get(addr, name.clone(), &host).await {
                Ok(body) => return parse_policy(&body).map_err(|e| format!("{host}: {e}")),
                Err(e) => last = format!("{host} ({addr}): {e}"),
            }
        }
        Err(last)
    }

    /// One HTTP/1.1 request on a fresh TLS connection.
    async fn get(
        &self,
        addr: std::net::SocketAddr,
        name: ServerName<'static>,
        host: &str,
    ) -> Result<String, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = self
            .https
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        // hyper drives the connection in a separate future; it ends with the request.
        let driver = tokio::spawn(conn);
        let result = request(&mut sender, host).await;
        driver.abort();
        result
    }
}

async fn request(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
) -> Result<String, String> {
    let req = http::Request::get(POLICY_PATH)
        .header(http::header::HOST, host)
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // RFC 8461 §3.3: redirects are not followed and only a 200 carries a policy.
    if resp.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_POLICY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "policy is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records() {
        assert_eq!(
            parse_txt("v=STSv1; id=20160831085700Z;").as_deref(),
            Some("20160831085700Z")
        );
        assert_eq!(parse_txt("v=STSv1;id=abc").as_deref(), Some("abc"));
        assert_eq!(
            parse_txt("v=STSv1; id=abc; ext_1=x.y").as_deref(),
            Some("abc")
        );
        assert_eq!(parse_txt("v=STSv1;"), None, "id is required");
        assert_eq!(parse_txt("v=STSv1; id=a-b;"), None, "id is alphanumeric");
        assert_eq!(parse_txt(&format!("v=STSv1; id={};", "a".repeat(33))), None);
        assert_eq!(parse_txt("v=STSv2; id=abc;"), None);
        assert_eq!(parse_txt("v=STSv1; id=a; id=b;"), None);
        assert_eq!(parse_txt("v=STSv1; ; id=a;"), None);
        assert_eq!(parse_txt("v=STSv1; id=a; bad"), None);
    }

    #[test]
    fn exactly_one_sts_txt_record() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            txt_policy_id(&r(&["v=spf1 -all", "v=STSv1; id=x1;"])).as_deref(),
            Some("x1")
        );
        assert_eq!(
            txt_policy_id(&r(&["v=STSv1; id=x1;", "v=STSv1; id=x2;"])),
            None
        );
        assert_eq!(txt_policy_id(&[]), None);
    }

    #[test]
    fn policy_file_crlf_and_lf() {
        let crlf = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n\
                    mx: *.example.net\r\nmx: backupmx.example.com.\r\nmax_age: 604800\r\n";
        let p = parse_policy(crlf).expect("policy");
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604_800);
        assert_eq!(
            p.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        let lf = "version: STSv1\nmode: testing\nmx: MX.Example.COM\nmax_age: 86400\nfuture: x";
        let p = parse_policy(lf).expect("policy");
        assert_eq!(p.mode, Mode::Testing);
        assert_eq!(p.mx, ["mx.example.com"]);
        let none = parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").expect("none");
        assert_eq!(none.mode, Mode::None);
    }

    #[test]
    fn malformed_policies_are_refused() {
        let base = |extra: &str| format!("version: STSv1\nmx: a.example\n{extra}");
        for bad in [
            base("mode: enforce\n"),                               // no max_age
            base("max_age: 10\n"),                                 // no mode
            base("mode: Enforce\nmax_age: 10\n"),                  // values are case-sensitive
            base("mode: enforce\nmax_age: 31557601\n"),            // too long
            base("mode: enforce\nmax_age: -1\n"),                  // not a number
            base("mode: enforce\nmax_age: 10\nmax_age: 20\n"),     // twice
            base("mode: enforce\nmax_age: 10\nmx: bad_host.ex\n"), // bad pattern
            base("mode: enforce\nmax_age: 10\njust a line\n"),     // no colon
            "version: STSv1\nmode: enforce\nmax_age: 10\n".into(), // no mx
            "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1".into(),
        ] {
            assert!(parse_policy(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_policy(&base("mode: enforce\nmax_age: 31557600\n"))
                .expect("max")
                .max_age,
            MAX_MAX_AGE
        );
    }

    #[test]
    fn cache_is_bounded_and_drops_the_soonest_expiring() {
        let roots = Arc::new(rustls::RootCertStore::empty());
        let mut cache = PolicyCache::new(crate::tls::https_connector(roots).expect("tls"), 443);
        cache.capacity = 2;
        let p = |max_age| {
            Arc::new(Policy {
                mode: Mode::Enforce,
                mx: vec!["mx.example".into()],
                max_age,
            })
        };
        cache.store("a.example", "1".into(), p(100));
        cache.store("b.example", "1".into(), p(10));
        cache.store("c.example", "1".into(), p(1000));
        assert_eq!(cache.len(), 2);
        assert!(
            cache.cached("b.example").is_none(),
            "soonest to expire went"
        );
        assert!(cache.cached("a.example").is_some() && cache.cached("c.example").is_some());
        // A policy with max_age 0 is never served from the cache.
        cache.store("d.example", "1".into(), p(0));
        assert!(cache.cached("d.example").is_none());
    }

    #[test]
    fn mx_patterns() {
        assert!(mx_matches("mail.example.com", "MAIL.example.com."));
        assert!(mx_matches("mail.example.com.", "mail.example.com"));
        assert!(!mx_matches("mail.example.com", "mail2.example.com"));
        assert!(mx_matches("*.example.net", "mx1.Example.NET"));
        assert!(mx_matches("*.example.net", "mx1.example.net."));
        assert!(!mx_matches("*.example.net", "example.net"));
        assert!(!mx_matches("*.example.net", "a.b.example.net"));
        assert!(!mx_matches("*.example.net", ".example.net"));
        assert!(!mx_matches("*.example.net", "mx.example.org"));
        let p = Policy {
            mode: Mode::Enforce,
            mx: vec!["a.example".into(), "*.b.example".into()],
            max_age: 1,
        };
        assert!(p.allows("a.example") && p.allows("x.b.example") && !p.allows("b.example"));
    }
}
