//! Routing: which hosts, in which order, receive mail for a recipient domain.
//!
//! In order: a static route for the domain (`delivery.routes`), the smarthost
//! (`delivery.smarthost`), then DNS as RFC 5321 §5.1 says: MX records by preference (equal
//! preferences in random order, to spread load), the domain's own A/AAAA records when it has
//! no MX ("implicit MX"), and a null MX (RFC 7505: one MX of `.`) as "accepts no mail".

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{ResolverBuilder, TokioResolver};
use rand::seq::SliceRandom;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// MX hosts tried per domain; more are ignored (Postfix tries 5 hosts by default too).
pub const MAX_MX_HOSTS: usize = 5;
/// Addresses tried per host.
pub const MAX_ADDRS_PER_HOST: usize = 2;
/// The SMTP port (RFC 5321 §4.5.4.1 relay port).
pub const SMTP_PORT: u16 = 25;

/// One host to try: the name used for TLS (SNI) and logs, and its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub host: String,
    pub port: u16,
}

/// Where a domain's mail goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Try these hosts in order.
    Hosts(Vec<Hop>),
    /// A permanent answer: the domain accepts no mail, or does not exist.
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A DNS failure that may go away: the attempt is retried later.
    #[error("DNS lookup for {name} failed: {message}")]
    Temporary { name: String, message: String },
}

/// Routing rules plus a DNS resolver.
pub struct Router {
    routes: BTreeMap<String, Hop>,
    smarthost: Option<Hop>,
    resolver: TokioResolver,
    /// Port for hosts found through DNS: [`SMTP_PORT`] except in tests, which run their
    /// peers on unprivileged loopback ports.
    mx_port: u16,
}

/// Splits `host:port` (the config validated it); `[v6]:port` brackets are removed.
pub fn parse_hop(s: &str) -> Option<Hop> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| Hop {
        host: host.to_string(),
        port,
    })
}

impl Router {
    /// `resolver`: a DNS server to ask, or the system's configuration when `None`;
    /// `mx_port`: the port of hosts found through MX (or implicit MX) records.
    pub fn new(
        routes: &BTreeMap<String, String>,
        smarthost: Option<&str>,
        resolver: Option<SocketAddr>,
        mx_port: u16,
    ) -> Result<Self, String> {
        let mut parsed = BTreeMap::new();
        for (domain, target) in routes {
            let hop = parse_hop(target)
                .ok_or_else(|| format!("route for {domain}: {target} is not host:port"))?;
            parsed.insert(domain.to_ascii_lowercase(), hop);
        }
        let smarthost = match smarthost {
            Some(s) => Some(parse_hop(s).ok_or_else(|| format!("smarthost {s} is not host:port"))?),
            None => None,
        };
        let resolver = resolver_builder(resolver)?
            .build()
            .map_err(|e| format!("building the DNS resolver: {e}"))?;
        Ok(Self {
            routes: parsed,
            smarthost,
            resolver,
            mx_port,
        })
    }

    /// Whether `domain`'s hosts come from DNS (MX or implicit MX) rather than from a static
    /// route, the smarthost or an address literal. Only those are subject to MTA-STS: the
    /// policy constrains which MX names DNS may hand us, and an operator-chosen next hop
    /// is trusted as configured.
    pub fn is_dns_routed(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        !self.routes.contains_key(&domain) && self.smarthost.is_none() && !domain.starts_with('[')
    }

    /// The TXT records at `name`, each record's strings joined (RFC 7208 §3.3 style, as
    /// RFC 8461 §3.1 expects); empty when the name or the records do not exist.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, RouteError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.txt_lookup(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(RouteError::Temporary {
                name: name.to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// The hosts for `domain`, best first.
    pub async fn route(&self, domain: &str) -> Result<Route, RouteError> {
        let domain = domain.to_ascii_lowercase();
        if let Some(hop) = self.routes.get(&domain) {
            return Ok(Route::Hosts(vec![hop.clone()]));
        }
        if let Some(hop) = &self.smarthost {
            return Ok(Route::Hosts(vec![hop.clone()]));
        }
        // An address literal (`user@[192.0.2.1]`) names its host directly.
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip = lit.strip_prefix("ipv6:").unwrap_or(lit);
            return Ok(match ip.parse::<IpAddr>() {
                Ok(ip) => Route::Hosts(vec![Hop {
                    host: ip.to_string(),
                    port: SMTP_PORT,
                }]),
                Err(_) => Route::Refused(format!("5.1.2 bad address literal [{lit}]")),
            });
        }
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut mx: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                Ok(order_mx(&domain, &mut mx, self.mx_port))
            }
            Err(e) if e.is_nx_domain() => Ok(Route::Refused(format!(
                "5.1.2 domain {domain} does not exist"
            ))),
            // No MX records: the domain itself is the host (RFC 5321 §5.1).
            Err(e) if e.is_no_records_found() => Ok(Route::Hosts(vec![Hop {
                host: domain,
                port: self.mx_port,
            }])),
            Err(e) => Err(RouteError::Temporary {
                name: domain,
                message: e.to_string(),
            }),
        }
    }

    /// The addresses of one host, at most [`MAX_ADDRS_PER_HOST`]. An IP literal is itself.
    pub async fn addresses(&self, hop: &Hop) -> Result<Vec<SocketAddr>, RouteError> {
        if let Ok(ip) = hop.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, hop.port)]);
        }
        let fqdn = format!("{}.", hop.host.trim_end_matches('.'));
        let ips =
            self.resolver
                .lookup_ip(fqdn.as_str())
                .await
                .map_err(|e| RouteError::Temporary {
                    name: hop.host.clone(),
                    message: e.to_string(),
                })?;
        Ok(ips
            .iter()
            .take(MAX_ADDRS_PER_HOST)
            .map(|ip| SocketAddr::new(ip, hop.port))
            .collect())
    }
}

/// A resolver builder asking `server`, or the system's configured servers when `None`;
/// shared with the DNSSEC-validating resolver of `dane.rs` so both ask the same server.
pub(crate) fn resolver_builder(
    server: Option<SocketAddr>,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, String> {
    Ok(match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| {
            format!("reading the system DNS configuration (or set `delivery.resolver`): {e}")
        })?,
    })
}

/// Sorts MX records by preference (shuffling equal ones) and recognises a null MX.
fn order_mx(domain: &str, mx: &mut Vec<(u16, String)>, port: u16) -> Route {
    let is_null = |h: &str| h == "." || h.is_empty();
    if mx.len() == 1 && is_null(&mx[0].1) {
        return Route::Refused(format!(
            "5.1.10 domain {domain} accepts no mail (null MX, RFC 7505)"
        ));
    }
    mx.retain(|(_, h)| !is_null(h));
    if mx.is_empty() {
        return Route::Refused(format!("5.1.10 domain {domain} has no usable MX host"));
    }
    mx.shuffle(&mut rand::thread_rng());
    mx.sort_by_key(|(pref, _)| *pref);
    Route::Hosts(
        mx.iter()
            .take(MAX_MX_HOSTS)
            .map(|(_, h)| Hop {
                host: h.trim_end_matches('.').to_string(),
                port,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_mx_refuses() {
        let mut mx = vec![(0, ".".to_string())];
        assert!(
            matches!(order_mx("n.example", &mut mx, SMTP_PORT), Route::Refused(m) if m.contains("5.1.10"))
        );
    }

    #[test]
    fn mx_by_preference() {
        let mut mx = vec![
            (20, "b.example.".to_string()),
            (10, "a.example.".to_string()),
            (30, "c.example.".to_string()),
        ];
        let Route::Hosts(h) = order_mx("x", &mut mx, SMTP_PORT) else {
            panic!("hosts expected");
        };
        let names: Vec<_> = h.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names, ["a.example", "b.example", "c.example"]);
        assert!(h.iter().all(|h| h.port == 25));
    }

    #[test]
    fn hop_parsing() {
        assert_eq!(
            parse_hop("[::1]:2525"),
            Some(Hop {
                host: "::1".into(),
                port: 2525
            })
        );
        assert_eq!(parse_hop("mx.example"), None);
        assert_eq!(parse_hop(":25"), None);
    }

    #[tokio::test]
    async fn static_route_wins_over_smarthost() {
        let mut routes = BTreeMap::new();
        routes.insert("Remote.Test".to_string(), "127.0.0.1:2600".to_string());
        let r = Router::new(
            &routes,
            Some("relay.example:587"),
            Some("127.0.0.1:53".parse().expect("addr")),
            SMTP_PORT,
        )
        .expect("router");
        assert_eq!(
            r.route("remote.test").await.expect("route"),
            Route::Hosts(vec![Hop {
                host: "127.0.0.1".into(),
                port: 2600
            }])
        );
        assert_eq!(
            r.route("other.test").await.expect("route"),
            Route::Hosts(vec![Hop {
                host: "relay.example".into(),
                port: 587
            }])
        );
    }
}
