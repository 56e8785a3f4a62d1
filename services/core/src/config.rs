//! Configuration: one TOML file, every key overridable from the environment.
//!
//! Keys are `section.key`; the environment variable for a key is `MAILFLEET_` followed by
//! the section and key in upper case joined by a double underscore, e.g. `smtp.max_recipients`
//! is `MAILFLEET_SMTP__MAX_RECIPIENTS`. Environment values are read as TOML values when they
//! parse as one (numbers, booleans, `["a", "b"]` arrays) and as strings otherwise.
//!
//! Unknown keys and wrong types fail at start with an error naming the key
//! ([`ConfigError`]): a typo in a limit must never silently leave the default in force.
//! `docs/configuration.md` is the reference for every key.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Prefix of every environment variable that overrides a configuration key.
pub const ENV_PREFIX: &str = "MAILFLEET_";

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub storage: StorageConfig,
    pub tls: TlsConfig,
    pub smtp: SmtpConfig,
    pub submission: SubmissionConfig,
    pub pop3: Pop3Config,
    pub managesieve: ManageSieveConfig,
    pub sieve: SieveConfig,
    pub imap: ImapConfig,
    pub auth: AuthConfig,
    pub delivery: DeliveryConfig,
    pub http: HttpConfig,
    pub tracing: TracingConfig,
    pub reports: ReportsConfig,
}

/// Aggregate reports: DMARC (RFC 7489 §7.2) about received mail, TLS-RPT (RFC 8460)
/// about the TLS of sent mail, collected per domain and sent once a day through the
/// outbound queue (`mailfleet-reports`).
///
/// Both are off by default, as in Postfix with OpenDMARC (`opendmarc-reports` is a
/// separate job an admin schedules) and in most MTAs: a report tells the domain owner
/// which addresses sent mail in its name to this installation, and turning that on is a
/// decision about sending data to third parties, not something an upgrade should start
/// doing unasked. DMARC collection also needs `smtp.authentication.enabled`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// Collect DMARC results of inbound mail and send aggregate reports to the `rua` of
    /// each domain's DMARC record.
    pub dmarc_enabled: bool,
    /// Collect TLS results of outbound delivery (MTA-STS and DANE sessions) and send
    /// TLS-RPT reports to the `rua` of each domain's `_smtp._tls` record.
    pub tlsrpt_enabled: bool,
    /// Header From and contact address of the reports; unset: `noreply-dmarc@<server.hostname>`.
    /// The envelope sender is always the null sender.
    pub from_address: Option<String>,
    /// The reporting organisation's name in the reports; unset: `server.hostname`.
    pub org_name: Option<String>,
    /// Seconds between runs of the report job (each run sends every closed UTC day it
    /// finds, so an hourly run sends a day's reports within the hour after midnight UTC).
    pub interval_secs: u64,
    /// Seconds between writes of the collected counts to the metadata store (also
    /// written at shutdown); a crash loses at most this much.
    pub flush_secs: u64,
    /// Distinct rows each collector keeps in memory between writes; messages needing a
    /// new row beyond it are not counted (and logged).
    pub max_rows: usize,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        Self {
            dmarc_enabled: false,
            tlsrpt_enabled: false,
            from_address: None,
            org_name: None,
            interval_secs: 3_600,
            flush_secs: 300,
            max_rows: 10_000,
        }
    }
}

/// OpenTelemetry trace export (OTLP over HTTP, protobuf). Off unless an endpoint is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// OTLP/HTTP traces URL, e.g. `http://otel-collector:4318/v1/traces` (plain HTTP to a
    /// collector next to the node); empty: no export.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Fraction of new traces sampled (0.0 to 1.0). A trace that arrives with a sampled
    /// parent (`traceparent` on HTTP, a message's stored context) follows its parent.
    pub sample_ratio: f64,
    /// Seconds to wait for the exporter on each batch.
    pub export_timeout_secs: u64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "mailfleet".into(),
            sample_ratio: 1.0,
            export_timeout_secs: 10,
        }
    }
}

/// The HTTP listener: health probes and metrics now; JMAP and webmail share it later.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Plain-HTTP addresses (probes are scraped inside the cluster network).
    pub listen: Vec<SocketAddr>,
    /// Deadline for each backend check of `/readyz`.
    pub readiness_timeout_ms: u64,
    /// Serve `GET /metrics` (Prometheus text format). Counting goes on either way; this
    /// only decides whether the page is served.
    pub metrics: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:8080".parse().expect("literal address")],
            readiness_timeout_ms: 2000,
            metrics: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Name this node gives itself in greetings and trace headers.
    pub hostname: String,
    /// Where embedded-mode state lives (metadata database, blobs, generated certificate).
    pub data_dir: PathBuf,
    /// Seconds sessions are given to finish after a shutdown signal.
    pub shutdown_grace_secs: u64,
    /// Most simultaneous connections from one client address (IPv6: one /64) across every
    /// listener of this node; past it a connection gets the protocol's "too busy" line
    /// and is closed. 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Whether the mail listeners (SMTP, submission, IMAP, POP3; plain and implicit TLS)
    /// expect a PROXY protocol header (v2, or v1) from `proxy_trusted_networks`, as
    /// Dovecot's `haproxy_trusted_networks`: a connection from those networks must start
    /// with one, and the client address it carries is the session's; any other connection
    /// is a direct client and is closed if it sends one. The HTTP listener never takes one.
    pub proxy_protocol: bool,
    /// The load balancers' networks, CIDR (`10.0.0.0/8`, `fd00::/8`) or single addresses.
    pub proxy_trusted_networks: Vec<String>,
    /// Seconds a trusted peer has to send the whole PROXY header before it is closed.
    pub proxy_header_timeout_secs: u64,
}

impl ServerConfig {
    /// The PROXY protocol policy, when `proxy_protocol` is on; an error (naming the key)
    /// when a trusted network does not parse, which [`Config::load`] has already refused.
    pub fn proxy(&self) -> Result<Option<crate::proxy::ProxyProtocol>, ConfigError> {
        if !self.proxy_protocol {
            return Ok(None);
        }
        let nets =
            crate::proxy::parse_networks(&self.proxy_trusted_networks).map_err(|message| {
                ConfigError::Key {
                    key: "server.proxy_trusted_networks".into(),
                    message,
                }
            })?;
        Ok(Some(crate::proxy::ProxyProtocol::new(
            nets,
            std::time::Duration::from_secs(self.proxy_header_timeout_secs),
        )))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            data_dir: PathBuf::from("./mailfleet-data"),
            shutdown_grace_secs: 30,
            max_connections_per_ip: 100,
            proxy_protocol: false,
            proxy_trusted_networks: Vec::new(),
            proxy_header_timeout_secs: 5,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `mailfleet_smtp=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Where message metadata lives.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MetadataBackend {
    /// SQLite file (`storage.sqlite_path`), group commit. Several processes on one machine
    /// may share the file.
    #[default]
    Sqlite,
    /// ScyllaDB (or Cassandra) cluster, `[storage.scylla]`.
    Scylla,
}

/// Where message bodies live.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    /// A directory under `server.data_dir`.
    #[default]
    Local,
    /// An S3-compatible bucket, `[storage.s3]`.
    S3,
}

/// How front-ends coordinate (change notifications, leases, rate-limit counters).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CoordinationBackend {
    /// In-process: one server process per data directory.
    #[default]
    Local,
    /// Redis, `[storage.redis]`: any number of front-ends.
    Redis,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub metadata: MetadataBackend,
    pub blobs: BlobBackend,
    pub coordination: CoordinationBackend,
    /// Largest number of writes folded into one metadata commit (one fsync).
    pub group_commit_max: usize,
    /// SQLite file; empty means `<server.data_dir>/metadata.sqlite3`.
    pub sqlite_path: Option<PathBuf>,
    /// MiB of message bodies kept in memory in front of S3 (0 = none).
    pub blob_cache_mib: u64,
    pub s3: S3Config,
    pub redis: RedisConfig,
    pub scylla: ScyllaConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            metadata: MetadataBackend::Sqlite,
            blobs: BlobBackend::Local,
            coordination: CoordinationBackend::Local,
            group_commit_max: 256,
            sqlite_path: None,
            blob_cache_mib: 256,
            s3: S3Config::default(),
            redis: RedisConfig::default(),
            scylla: ScyllaConfig::default(),
        }
    }
}

impl StorageConfig {
    /// True when every backend is shared between processes, so this process keeps nothing
    /// on local disk that another front-end would need.
    pub fn is_cluster(&self) -> bool {
        self.blobs == BlobBackend::S3 && self.coordination == CoordinationBackend::Redis
    }
}

/// An S3-compatible bucket (AWS, Garage, MinIO, Ceph RGW).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:3900`; empty means AWS's endpoint for `region`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Object key prefix, so one bucket can serve several installations.
    pub key_prefix: String,
    /// Credentials; empty means the AWS default chain (environment, profile, IMDS, IRSA).
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Path-style addressing (`endpoint/bucket/key`), which Garage, MinIO and Ceph want.
    pub path_style: bool,
    /// Bodies at least this large are sent with multipart upload.
    pub multipart_threshold: u64,
    /// Size of each multipart part (S3's minimum is 5 MiB).
    pub part_size: u64,
    /// Attempts per request, including the first (retries on 5xx, throttling, timeouts).
    pub max_attempts: u32,
    /// Deadline for one request attempt.
    pub timeout_secs: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: "mailfleet".into(),
            key_prefix: "blobs/".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            path_style: true,
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            max_attempts: 4,
            timeout_secs: 30,
        }
    }
}

/// Redis for coordination.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` or `rediss://` for TLS. Not used when
    /// `cluster_nodes` is set.
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://[user:password@]host:port` or `rediss://`,
    /// database 0 only). Empty: one Redis at `url`. Set: the cluster client learns the slot
    /// map from any reachable seed and sends each key to the primary owning its slot, so
    /// the seeds need not be every node, and events go through sharded pub/sub.
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key and channel, so one Redis can serve several installations.
    pub key_prefix: String,
    /// Deadline for one command; past it the operation fails as temporarily unavailable.
    pub timeout_ms: u64,
    /// With a `rediss://` URL: PEM file of the CA(s) the server's certificate must chain
    /// to, instead of the system's roots (a Redis behind a private CA is the usual case, and
    /// trusting every public CA as well would let any of them vouch for it).
    pub tls_ca_file: Option<PathBuf>,
    /// With a `rediss://` URL: client certificate chain (PEM) for servers that ask for one
    /// (`tls-auth-clients yes`). Set with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

impl RedisConfig {
    /// True when the coordinator talks to a Redis Cluster (`cluster_nodes` is set).
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// True when the endpoints in use (`cluster_nodes`, else `url`) are `rediss://`.
    /// [`Config::validate`] makes every seed use the same scheme, so the first one decides.
    pub fn uses_tls(&self) -> bool {
        let endpoint = self.cluster_nodes.first().unwrap_or(&self.url);
        endpoint.starts_with("rediss://")
    }

    /// The config key that names the endpoints in use, for error messages.
    pub fn endpoint_key(&self) -> &'static str {
        if self.is_cluster() {
            "storage.redis.cluster_nodes"
        } else {
            "storage.redis.url"
        }
    }

    /// Checks `[storage.redis]` when Redis coordinates.
    fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, message: &str| {
            Err(ConfigError::Key {
                key: key.into(),
                message: message.into(),
            })
        };
        if self.is_cluster() {
            if let Err(message) = check_cluster_seeds(&self.cluster_nodes) {
                return err("storage.redis.cluster_nodes", &message);
            }
        } else if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            return err("storage.redis.url", "must start with redis:// or rediss://");
        }
        if self.timeout_ms == 0 {
            return err("storage.redis.timeout_ms", "must be positive");
        }
        // A CA or client certificate next to plain redis:// endpoints would be ignored, and
        // the operator who set it would believe the connection encrypted.
        let tls_files = [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        if let Some((key, _)) = tls_files.iter().find(|(_, v)| v.is_some()) {
            if !self.uses_tls() {
                return err(
                    &format!("storage.redis.{key}"),
                    &format!("needs rediss:// in {} (TLS)", self.endpoint_key()),
                );
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return err(
                "storage.redis.tls_cert_file",
                "set both tls_cert_file and tls_key_file, or neither",
            );
        }
        Ok(())
    }
}

/// The seeds of a Redis Cluster: all `redis://` or all `rediss://` (the client speaks one
/// way to every node, including those it learns from the slot map), and no database but 0
/// (a cluster has only database 0).
fn check_cluster_seeds(seeds: &[String]) -> Result<(), String> {
    let scheme = |seed: &str| {
        ["rediss://", "redis://"]
            .into_iter()
            .find(|s| seed.starts_with(s))
    };
    let first = scheme(&seeds[0]);
    for seed in seeds {
        let shown = redact_url(seed);
        let Some(this) = scheme(seed) else {
            return Err(format!("{shown:?} must start with redis:// or rediss://"));
        };
        if Some(this) != first {
            return Err(
                "every seed must use the same scheme (all redis:// or all rediss://)".into(),
            );
        }
        if !matches!(url_database(&seed[this.len()..]), "" | "0") {
            return Err(format!(
                "{shown:?} names a database; a Redis Cluster has only database 0"
            ));
        }
    }
    Ok(())
}

/// The database part of `[user:password@]host:port/db?query` (empty when there is none).
/// Like [`redact_url`], the authority ends at the first `/`.
fn url_database(rest: &str) -> &str {
    let path = rest.split_once('/').map_or("", |(_, path)| path);
    path.split('?').next().unwrap_or("")
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            cluster_nodes: Vec::new(),
            key_prefix: "mailfleet:".into(),
            timeout_ms: 2000,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// ScyllaDB (or Cassandra) for metadata.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    /// Replication factor used when the keyspace is created (NetworkTopologyStrategy).
    pub replication_factor: u32,
    /// Datacenter to prefer for queries (token- and DC-aware load balancing).
    pub local_dc: String,
    pub username: String,
    pub password: String,
    /// Deadline for one statement.
    pub timeout_ms: u64,
    /// Connect to every node over TLS (ScyllaDB's `client_encryption_options`). CQL has no
    /// URL scheme to say so, hence a switch.
    pub tls: bool,
    /// With `tls`: PEM file of the CA(s) the nodes' certificates must chain to, instead of
    /// the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// With `tls`: client certificate chain (PEM) for nodes that require one
    /// (`require_client_auth`). Set with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            keyspace: "mailfleet".into(),
            replication_factor: 3,
            local_dc: String::new(),
            username: String::new(),
            password: String::new(),
            timeout_ms: 5000,
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain. When neither `cert` nor `key` is set, a self-signed certificate
    /// for `server.hostname` is generated on first run under `<data_dir>/tls/`.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// How often (seconds) the files are checked for changes and reloaded.
    pub reload_interval_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            reload_interval_secs: 60,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Plain listeners (STARTTLS offered) for inbound mail.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners.
    pub listen_tls: Vec<SocketAddr>,
    /// Largest message accepted, in bytes (advertised with SIZE).
    pub max_message_size: usize,
    /// Most recipients per transaction (RFC 5321 §4.5.3.1.8 requires at least 100).
    pub max_recipients: usize,
    /// Longest command line in bytes, CRLF included.
    pub max_line_length: usize,
    /// Errors allowed per session before the connection is closed with 421.
    pub max_errors: u32,
    /// Most transactions (messages) per connection.
    pub max_messages_per_session: u32,
    /// Most transactions per minute from one client address (an IPv6 client counts by its
    /// /64), across every front-end: the count lives in the coordinator. Past it, MAIL
    /// answers `450 4.7.1`. 0 turns the limit off (and with it the coordinator round trip).
    pub max_messages_per_ip_per_minute: u32,
    /// Most simultaneous connections per SMTP listener.
    pub max_connections: usize,
    /// Seconds to wait for a command (RFC 5321 §4.5.3.2.7: at least 5 minutes).
    pub command_timeout_secs: u64,
    /// Seconds to wait for each block of DATA/BDAT (§4.5.3.2.5 data block: 3 minutes).
    pub data_timeout_secs: u64,
    /// Seconds the whole of one message (DATA to its final dot, or one BDAT chunk) may
    /// take, however the client spreads its bytes.
    pub data_deadline_secs: u64,
    /// Whether `STARTTLS` is offered on plain listeners.
    pub starttls: bool,
    /// Message bytes all SMTP sessions of the process (inbound and submission) may hold
    /// in memory at once, from the first DATA/BDAT byte (or the `SIZE=` declared at MAIL)
    /// until the message is handed off. Past it, `452 4.3.1`.
    pub max_inflight_bytes: usize,
    /// Sender authentication of inbound mail (`[smtp.authentication]`).
    pub authentication: SenderAuthConfig,
    /// The rspamd spam filter (`[smtp.rspamd]`); off without an address.
    pub rspamd: Option<RspamdConfig>,
    /// The ClamAV virus scanner (`[smtp.clamav]`); off without an address.
    pub clamav: Option<ClamavConfig>,
    /// The built-in spam filter (`[smtp.spam]`: heuristics, DNSBL/DNSWL, per-user Bayes,
    /// greylisting), for installs without rspamd; off without the section, and never
    /// run when rspamd is configured.
    pub spam: Option<mailfleet_spam::SpamConfig>,
    /// Spam score thresholds per recipient domain (`[smtp.spam_domains."example.org"]`),
    /// over `[smtp.spam.thresholds]`; they apply to rspamd's score too.
    pub spam_domains: std::collections::BTreeMap<String, mailfleet_spam::Thresholds>,
}

/// What a scanner outage does to the message being scanned.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FilterOnError {
    /// `451 4.7.1`: the sender retries; nothing unscanned gets in.
    Tempfail,
    /// Accept it, marked as not scanned.
    Accept,
}

/// What rspamd's `add header` (and `rewrite subject`) action does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SpamAction {
    /// Deliver to the recipient's Junk mailbox.
    Junk,
    /// Deliver to INBOX with `X-Spam-Status: Yes`.
    Tag,
}

/// rspamd's normal worker, asked about every inbound message (`POST /checkv2`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RspamdConfig {
    /// `"ip:port"` of the normal worker (rspamd's default is 11333).
    pub address: SocketAddr,
    #[serde(default = "default_rspamd_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_on_error")]
    pub on_error: FilterOnError,
    #[serde(default = "default_add_header")]
    pub add_header: SpamAction,
    /// Larger messages are not scanned (rspamd's own default limit is 50 MiB).
    #[serde(default = "default_rspamd_max")]
    pub max_size: usize,
}

/// clamd, asked about every message over `INSTREAM`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClamavConfig {
    /// `"ip:port"` of clamd's TCP socket (`TCPSocket`, usually 3310).
    pub address: SocketAddr,
    #[serde(default = "default_clamav_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_on_error")]
    pub on_error: FilterOnError,
    /// Larger messages are not scanned; keep it at or under clamd's `StreamMaxLength`
    /// (25 MiB by default), which refuses longer streams.
    #[serde(default = "default_clamav_max")]
    pub max_size: usize,
}

fn default_rspamd_timeout() -> u64 {
    15
}
fn default_clamav_timeout() -> u64 {
    30
}
fn default_on_error() -> FilterOnError {
    FilterOnError::Tempfail
}
fn default_add_header() -> SpamAction {
    SpamAction::Junk
}
fn default_rspamd_max() -> usize {
    20 * 1024 * 1024
}
fn default_clamav_max() -> usize {
    25 * 1024 * 1024
}

/// What to do with a message whose sender domain's DMARC policy asks for it.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DmarcAction {
    /// Refuse at the end of DATA with `550 5.7.1`.
    Reject,
    /// Deliver to the recipient's Junk mailbox.
    Junk,
    /// Deliver as usual; the verdict is only in `Authentication-Results`.
    Tag,
}

/// SPF (RFC 7208) at MAIL and for HELO, DKIM (RFC 6376), ARC (RFC 8617) and DMARC
/// (RFC 7489) on inbound mail, with one `Authentication-Results` header (RFC 8601).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderAuthConfig {
    /// Whether inbound mail is authenticated at all.
    pub enabled: bool,
    /// The DNS server to ask, `"ip:port"`; unset: the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// Seconds one DNS query may take before it counts as a temporary failure.
    pub dns_timeout_secs: u64,
    /// The authserv-id of the `Authentication-Results` header; unset: `server.hostname`.
    pub authserv_id: Option<String>,
    /// Clients whose mail is not authenticated (this host, a trusted relay); addresses or
    /// CIDR networks. Their mail gets no `Authentication-Results` of ours.
    pub skip_networks: Vec<String>,
    /// What a DMARC failure does when the sender domain publishes `p=reject`.
    pub dmarc_reject: DmarcAction,
    /// What a DMARC failure does when the sender domain publishes `p=quarantine`.
    pub dmarc_quarantine: DmarcAction,
    /// Sender domains (RFC 5322 From) whose DMARC policy is not enforced here (the local
    /// override list of RFC 7489 §6.7, e.g. a mailing list host the users trust).
    pub dmarc_override_domains: Vec<String>,
    /// Refuse at MAIL with `550 5.7.23` when SPF of the envelope sender (or of HELO) fails.
    pub spf_fail_reject: bool,
}

impl Default for SenderAuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            resolver: None,
            dns_timeout_secs: 5,
            authserv_id: None,
            skip_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            dmarc_reject: DmarcAction::Reject,
            dmarc_quarantine: DmarcAction::Junk,
            dmarc_override_domains: Vec::new(),
            spf_fail_reject: false,
        }
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:2525".parse().expect("literal address")],
            listen_tls: vec![],
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 4096,
            max_errors: 10,
            max_messages_per_session: 100,
            max_messages_per_ip_per_minute: 600,
            max_connections: 2000,
            command_timeout_secs: 300,
            data_timeout_secs: 180,
            data_deadline_secs: 900,
            starttls: true,
            max_inflight_bytes: 256 * 1024 * 1024,
            authentication: SenderAuthConfig::default(),
            rspamd: None,
            clamav: None,
            spam: None,
            spam_domains: Default::default(),
        }
    }
}

/// Authenticated submission (RFC 6409) listeners. Message limits and timeouts are those
/// of `[smtp]`; AUTH is offered only once the connection is encrypted.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmissionConfig {
    /// Plain listeners (port 587 style): STARTTLS is required before AUTH.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (port 465 style, RFC 8314).
    pub listen_tls: Vec<SocketAddr>,
    /// Most simultaneous submission connections per listener.
    pub max_connections: usize,
}

impl Default for SubmissionConfig {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:1587".parse().expect("literal address")],
            listen_tls: vec!["127.0.0.1:1465".parse().expect("literal address")],
            max_connections: 1000,
        }
    }
}

/// Sieve filtering at delivery (`[sieve]`): the global scripts and the limits every
/// script runs under. Users' own scripts come in over ManageSieve.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SieveConfig {
    /// Run users' active scripts at delivery.
    pub enabled: bool,
    /// A directory of `<name>.sieve` files: the global scripts (`include :global`, and
    /// the ones `before`/`after` name).
    pub global_dir: Option<std::path::PathBuf>,
    /// Global scripts run before each user's script, in order.
    pub before: Vec<String>,
    /// Global scripts run after each user's script, in order.
    pub after: Vec<String>,
    /// Largest script (ManageSieve refuses bigger ones too).
    pub max_script_bytes: usize,
    /// Steps one run may take (the run-time bound).
    pub max_steps: u64,
    /// Actions one run may produce.
    pub max_actions: usize,
    /// Redirects one run may produce.
    pub max_redirects: usize,
}

impl Default for SieveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            global_dir: None,
            before: Vec::new(),
            after: Vec::new(),
            max_script_bytes: 64 * 1024,
            max_steps: 100_000,
            max_actions: 32,
            max_redirects: 4,
        }
    }
}

/// POP3 (RFC 1939) listeners and session limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Config {
    /// Plain listeners (port 110 style); STLS offered when `starttls` is true.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (port 995 style).
    pub listen_tls: Vec<SocketAddr>,
    /// Whether `STLS` is offered on plain listeners.
    pub starttls: bool,
    /// Whether USER/PASS and AUTH PLAIN are allowed before TLS (RFC 2595 §2.3 advises not).
    pub allow_plaintext_auth: bool,
    /// Most simultaneous POP3 connections per listener.
    pub max_connections: usize,
    /// Longest command line in bytes, CRLF included (covers SASL responses).
    pub max_line_length: usize,
    /// Seconds of inactivity before the session is closed (RFC 1939 §3: at least 10 min).
    pub command_timeout_secs: u64,
    /// Bad commands allowed per session before the connection is closed.
    pub max_errors: u32,
    /// Most messages a session lists (the oldest first); the rest wait for a later session.
    pub max_messages: usize,
}

impl Default for Pop3Config {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:1110".parse().expect("literal address")],
            listen_tls: vec![],
            starttls: true,
            allow_plaintext_auth: false,
            max_connections: 1000,
            max_line_length: 8192,
            command_timeout_secs: 600,
            max_errors: 10,
            max_messages: 50_000,
        }
    }
}

/// ManageSieve (RFC 5804) listeners: users upload and activate their Sieve scripts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManageSieveConfig {
    /// Whether the listeners below are started at all.
    pub enabled: bool,
    /// Plain listeners (port 4190 style); STARTTLS offered when `starttls` is true.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (not in RFC 5804, but some clients and proxies use them).
    pub listen_tls: Vec<SocketAddr>,
    /// Whether `STARTTLS` is offered on plain listeners.
    pub starttls: bool,
    /// Whether AUTHENTICATE is allowed before TLS (RFC 5804 §2.1 advises not).
    pub allow_plaintext_auth: bool,
    /// Most simultaneous ManageSieve connections per listener.
    pub max_connections: usize,
    /// Longest command line in bytes outside literals, CRLF included.
    pub max_line_length: usize,
    /// Largest script in bytes (PUTSCRIPT, CHECKSCRIPT, HAVESPACE), also the largest
    /// literal accepted after login.
    pub max_script_size: usize,
    /// Seconds a client has to send each command before the session is closed.
    pub command_timeout_secs: u64,
    /// Bad commands allowed per session before the connection is closed.
    pub max_errors: u32,
}

impl Default for ManageSieveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: vec!["127.0.0.1:4190".parse().expect("literal address")],
            listen_tls: vec![],
            starttls: true,
            allow_plaintext_auth: false,
            max_connections: 200,
            max_line_length: 8192,
            max_script_size: 64 * 1024,
            command_timeout_secs: 600,
            max_errors: 10,
        }
    }
}

/// IMAP (RFC 9051) listeners and session limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapConfig {
    /// Plain listeners (port 143 style); STARTTLS offered when `starttls` is true.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (port 993 style).
    pub listen_tls: Vec<SocketAddr>,
    /// Whether `STARTTLS` is offered on plain listeners.
    pub starttls: bool,
    /// Whether LOGIN and AUTHENTICATE PLAIN are allowed before TLS (RFC 9051 §11.1 advises
    /// not; without TLS the server advertises LOGINDISABLED).
    pub allow_plaintext_auth: bool,
    /// Most simultaneous IMAP connections per listener.
    pub max_connections: usize,
    /// Largest APPEND literal in bytes; larger synchronizing literals are refused before
    /// the client sends them.
    pub max_message_size: u32,
    /// Largest command in bytes, excluding an APPEND literal.
    pub max_command_size: u32,
    /// Seconds of inactivity before an authenticated session is logged out (RFC 9051 §5.4:
    /// at least 30 minutes). Unauthenticated sessions get at most 60 seconds.
    pub idle_timeout_secs: u64,
    /// Syntax errors allowed per session before the connection is closed.
    pub max_errors: u32,
    /// Seconds between re-checks of the mailbox during IDLE, besides notifications.
    pub idle_recheck_secs: u64,
    /// Logged-in sessions one account may hold open on one node.
    pub max_sessions_per_user: usize,
}

impl Default for ImapConfig {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:1143".parse().expect("literal address")],
            listen_tls: vec![],
            starttls: true,
            allow_plaintext_auth: false,
            max_connections: 5000,
            max_message_size: 50 * 1024 * 1024,
            max_command_size: 64 * 1024,
            idle_timeout_secs: 1800,
            max_errors: 20,
            idle_recheck_secs: 60,
            max_sessions_per_user: 50,
        }
    }
}

/// Login security shared by every protocol: failed-login throttling and hashing limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Failed logins from one IP (IPv6: one /64) within the window before it is refused.
    pub max_failures_per_ip: u64,
    /// Failed logins for one user name within the window before it is refused.
    pub max_failures_per_account: u64,
    /// Length of the fixed window the failures are counted in, in seconds.
    pub failure_window_secs: u64,
    /// Delay before answering a client with one failure; doubles with each further failure.
    pub delay_base_ms: u64,
    /// Largest delay.
    pub delay_max_ms: u64,
    /// Failed authentication attempts allowed on one connection before it is closed.
    pub max_attempts_per_connection: u32,
    /// Most password hashes verified at once (each argon2id verification takes ~19 MiB);
    /// 0 means the number of CPUs.
    pub max_concurrent_hashes: usize,
    /// How long a successful password verification is remembered, so the same login again
    /// skips the hash; 0 turns the cache off. A password change, an app password's
    /// revocation or TOTP being turned on takes effect at once whatever this is.
    pub login_cache_secs: u64,
    /// Most successful logins remembered at once.
    pub login_cache_entries: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            max_failures_per_ip: 10,
            max_failures_per_account: 100,
            failure_window_secs: 900,
            delay_base_ms: 250,
            delay_max_ms: 4000,
            max_attempts_per_connection: 3,
            max_concurrent_hashes: 0,
            login_cache_secs: 300,
            login_cache_entries: 10_000,
        }
    }
}

/// A configuration error that names the offending key.
/// Outbound delivery: the workers that send queued mail to other domains.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Whether this node runs delivery workers. Any number of nodes may: queue leases keep
    /// each message with one worker at a time.
    pub enabled: bool,
    /// Most queue entries this node delivers at once (one SMTP connection each).
    pub max_concurrent: usize,
    /// Seconds between looks at the queue for due entries.
    pub poll_interval_secs: u64,
    /// Seconds a worker's lease on a queue entry lasts; renewed every third of it. A killed
    /// worker's entries are taken by another after at most this long.
    pub lease_secs: u64,
    /// Seconds before the first retry after a temporary failure; each later retry waits
    /// twice as long as the one before, up to `retry_max_secs`.
    pub retry_base_secs: u64,
    /// Longest wait between two attempts.
    pub retry_max_secs: u64,
    /// Seconds a message may stay queued before a temporary failure becomes final
    /// (default 5 days, as Postfix's `maximal_queue_lifetime`).
    pub max_lifetime_secs: u64,
    /// Seconds to open a TCP connection to a remote host.
    pub connect_timeout_secs: u64,
    /// Seconds to wait for each reply (RFC 5321 §4.5.3.2 asks for minutes; 5 is the
    /// longest it suggests for a command).
    pub command_timeout_secs: u64,
    /// Opportunistic STARTTLS: use TLS when the peer offers it, without checking its
    /// certificate (RFC 7435), and fall back to plain text when the handshake fails.
    pub starttls: bool,
    /// DNS server (`ip:port`) for MX and address lookups; the system's resolver when unset.
    pub resolver: Option<SocketAddr>,
    /// Send all remote mail through this host (`host:port`) instead of looking up MX records.
    pub smarthost: Option<String>,
    /// Static routes: recipient domain to `host:port`, consulted before `smarthost` and MX.
    pub routes: std::collections::BTreeMap<String, String>,
    /// Whether outbound mail is DKIM-signed for sender domains that have keys
    /// (`mailfleet dkim generate`).
    pub dkim_sign: bool,
    /// Hours a rotated DKIM key is published in DNS before it signs (DNS caches must
    /// have it by then).
    pub dkim_publish_delay_hours: u64,
    /// Days a replaced DKIM key stays published after it stopped signing, so mail signed
    /// just before the switch still verifies; then it is deleted.
    pub dkim_retire_days: u64,
    /// Most deliveries this node runs at once to one recipient domain (Postfix's
    /// `default_destination_concurrency_limit` is 20). Entries past it wait for the next poll.
    pub max_per_destination: usize,
    /// Most delivery attempts per minute to one recipient domain across the cluster
    /// (counted in the coordinator); 0 = no limit. Entries past it wait for the next poll.
    pub max_per_destination_per_minute: u32,
    /// Seconds after which the sender of a message still not delivered to a recipient gets
    /// one delay DSN (RFC 3464 `Action: delayed`); 0 = never. Postfix's `delay_warning_time`.
    pub delay_warning_secs: u64,
    /// Seconds an idle connection to a remote host is kept for the next message to that
    /// host (Postfix's `smtp_connection_cache_time_limit` is 2); 0 = one connection per
    /// message.
    pub connection_reuse_secs: u64,
    /// Honour recipient domains' MTA-STS policies (RFC 8461) for mail routed by MX: with a
    /// policy in `enforce` mode, deliver only to the MX hosts it lists, over STARTTLS with
    /// a valid certificate. Off restores purely opportunistic TLS.
    pub mta_sts: bool,
    /// PEM file of extra trust anchors, added to the system's, for MTA-STS policy fetches
    /// and verified SMTP TLS (a private CA in a test or closed network).
    pub tls_ca_file: Option<PathBuf>,
    /// Honour DANE (RFC 7672) for mail routed by MX: when a domain's MX records and the
    /// MX host's TLSA records are DNSSEC-signed, deliver to that host only over STARTTLS
    /// with a certificate the TLSA records match. Needs a DNS path that passes DNSSEC
    /// records through; where it does not, domains look unsigned and delivery is as without
    /// DANE. Off skips the validating lookups altogether.
    pub dane: bool,
    /// DNSSEC trust anchors for the DANE lookups: a file of DNSKEY records in zone-file
    /// form (`. 172800 IN DNSKEY 257 3 8 ...`); a key under a name other than `.` anchors
    /// that zone. Unset = the root zone's keys built into hickory-resolver.
    pub dnssec_trust_anchor: Option<PathBuf>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent: 16,
            poll_interval_secs: 5,
            lease_secs: 300,
            retry_base_secs: 300,
            retry_max_secs: 4 * 3600,
            max_lifetime_secs: 5 * 24 * 3600,
            connect_timeout_secs: 30,
            command_timeout_secs: 300,
            starttls: true,
            resolver: None,
            smarthost: None,
            routes: std::collections::BTreeMap::new(),
            dkim_sign: true,
            dkim_publish_delay_hours: 48,
            dkim_retire_days: 7,
            max_per_destination: 20,
            max_per_destination_per_minute: 0,
            delay_warning_secs: 4 * 3600,
            connection_reuse_secs: 5,
            mta_sts: true,
            tls_ca_file: None,
            dane: true,
            dnssec_trust_anchor: None,
        }
    }
}

/// Whether `s` is `host:port` with a non-empty host and a port number.
fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("configuration key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// What a secret shows as in [`Config::redacted`].
pub const REDACTED: &str = "<redacted>";

/// `url` with the password of its userinfo (`scheme://user:password@host`) replaced by
/// [`REDACTED`]; a URL without a password is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The userinfo ends at the last '@' before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => userinfo.to_string(),
    };
    format!("{scheme}://{user}{}", &rest[at..])
}

impl Config {
    /// A copy fit to print (`mailfleet check-config`) or log: the S3 secret key, the
    /// ScyllaDB password and any password inside the Redis URL are replaced by
    /// [`REDACTED`]. Empty secrets stay empty, so an operator can still see that none is set.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let hide = |s: &mut String| {
            if !s.is_empty() {
                *s = REDACTED.to_string();
            }
        };
        hide(&mut c.storage.s3.secret_access_key);
        hide(&mut c.storage.scylla.password);
        c.storage.redis.url = redact_url(&c.storage.redis.url);
        for seed in &mut c.storage.redis.cluster_nodes {
            *seed = redact_url(seed);
        }
        c.storage.s3.endpoint = redact_url(&c.storage.s3.endpoint);
        c.tracing.otlp_endpoint = redact_url(&c.tracing.otlp_endpoint);
        c
    }

    /// Loads `path` (if given) and applies `MAILFLEET_*` overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut root = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: p.to_path_buf(),
                        message: e.message().to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut root, env)?;
        let cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| ConfigError::Key {
                key: e.path().to_string(),
                message: e.inner().message().to_string(),
            },
        )?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense.
    fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, message: &str| {
            Err(ConfigError::Key {
                key: key.into(),
                message: message.into(),
            })
        };
        if self.server.hostname.trim().is_empty() {
            return err("server.hostname", "must not be empty");
        }
        if crate::address::normalize_domain(&self.server.hostname).is_err() {
            return err("server.hostname", "is not a valid host name");
        }
        if let Err(message) = crate::proxy::parse_networks(&self.server.proxy_trusted_networks) {
            return err("server.proxy_trusted_networks", &message);
        }
        for (key, timeout) in [
            (
                "smtp.rspamd.timeout_secs",
                self.smtp.rspamd.as_ref().map(|r| r.timeout_secs),
            ),
            (
                "smtp.clamav.timeout_secs",
                self.smtp.clamav.as_ref().map(|c| c.timeout_secs),
            ),
        ] {
            if matches!(timeout, Some(t) if t == 0 || t > 600) {
                return err(key, "must be between 1 and 600");
            }
        }
        let auth = &self.smtp.authentication;
        if let Err(message) = crate::proxy::parse_networks(&auth.skip_networks) {
            return err("smtp.authentication.skip_networks", &message);
        }
        if auth.dns_timeout_secs == 0 || auth.dns_timeout_secs > 60 {
            return err(
                "smtp.authentication.dns_timeout_secs",
                "must be between 1 and 60",
            );
        }
        if let Some(id) = &auth.authserv_id {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                return err(
                    "smtp.authentication.authserv_id",
                    "must be a non-empty token without spaces or ';'",
                );
            }
        }
        for d in &auth.dmarc_override_domains {
            if crate::address::normalize_domain(d).is_err() {
                return err(
                    "smtp.authentication.dmarc_override_domains",
                    &format!("{d:?} is not a domain name"),
                );
            }
        }
        if self.server.proxy_protocol && self.server.proxy_trusted_networks.is_empty() {
            return err(
                "server.proxy_trusted_networks",
                "must list the load balancers' networks when server.proxy_protocol is true",
            );
        }
        if self.server.proxy_header_timeout_secs == 0 {
            return err("server.proxy_header_timeout_secs", "must be positive");
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            return err("tracing.sample_ratio", "must be between 0.0 and 1.0");
        }
        let otlp = self.tracing.otlp_endpoint.trim();
        // Plain HTTP only: the exporter is built without a TLS stack; the collector is
        // expected next to the node (a sidecar or a node agent), as OpenTelemetry advises.
        if !otlp.is_empty() && !otlp.starts_with("http://") {
            return err(
                "tracing.otlp_endpoint",
                "must be an http:// URL (a nearby collector)",
            );
        }
        if self.tracing.service_name.trim().is_empty() {
            return err("tracing.service_name", "must not be empty");
        }
        if self.smtp.max_recipients < 1 {
            return err("smtp.max_recipients", "must be at least 1");
        }
        if self.smtp.max_line_length < 512 {
            return err(
                "smtp.max_line_length",
                "must be at least 512 (RFC 5321 §4.5.3.1.4)",
            );
        }
        if self.smtp.max_message_size < 1024 {
            return err("smtp.max_message_size", "must be at least 1024 bytes");
        }
        if self.smtp.max_inflight_bytes < self.smtp.max_message_size {
            return err(
                "smtp.max_inflight_bytes",
                "must be at least smtp.max_message_size (else a message of the largest size is never accepted)",
            );
        }
        if self.smtp.max_connections < 1 {
            return err("smtp.max_connections", "must be at least 1");
        }
        if self.smtp.command_timeout_secs == 0 {
            return err("smtp.command_timeout_secs", "must be positive");
        }
        if self.smtp.data_timeout_secs == 0 {
            return err("smtp.data_timeout_secs", "must be positive");
        }
        if self.imap.idle_timeout_secs < 1800 {
            return err(
                "imap.idle_timeout_secs",
                "must be at least 1800 (RFC 9051 §5.4)",
            );
        }
        if self.imap.max_command_size < 1024 {
            return err("imap.max_command_size", "must be at least 1024");
        }
        if self.imap.max_connections < 1 {
            return err("imap.max_connections", "must be at least 1");
        }
        if self.imap.max_sessions_per_user < 1 {
            return err("imap.max_sessions_per_user", "must be at least 1");
        }
        if self.imap.idle_recheck_secs == 0 {
            return err("imap.idle_recheck_secs", "must be positive");
        }
        if self.http.readiness_timeout_ms == 0 {
            return err("http.readiness_timeout_ms", "must be positive");
        }
        if self.delivery.max_per_destination < 1 {
            return err("delivery.max_per_destination", "must be at least 1");
        }
        if self.storage.group_commit_max < 1 {
            return err("storage.group_commit_max", "must be at least 1");
        }
        if self.storage.blobs == BlobBackend::S3 {
            let s3 = &self.storage.s3;
            if s3.bucket.trim().is_empty() {
                return err("storage.s3.bucket", "must not be empty");
            }
            if s3.region.trim().is_empty() {
                return err("storage.s3.region", "must not be empty");
            }
            if s3.access_key_id.is_empty() != s3.secret_access_key.is_empty() {
                return err(
                    "storage.s3.secret_access_key",
                    "set both storage.s3.access_key_id and storage.s3.secret_access_key, or neither",
                );
            }
            if s3.part_size < 5 * 1024 * 1024 {
                return err(
                    "storage.s3.part_size",
                    "must be at least 5 MiB (S3's minimum)",
                );
            }
            if s3.multipart_threshold < s3.part_size {
                return err(
                    "storage.s3.multipart_threshold",
                    "must be at least storage.s3.part_size",
                );
            }
            if s3.max_attempts < 1 {
                return err("storage.s3.max_attempts", "must be at least 1");
            }
            if s3.timeout_secs == 0 {
                return err("storage.s3.timeout_secs", "must be positive");
            }
        }
        if self.storage.coordination == CoordinationBackend::Redis {
            self.storage.redis.validate()?;
        }
        if self.storage.metadata == MetadataBackend::Scylla {
            let sc = &self.storage.scylla;
            if sc.nodes.is_empty() {
                return err("storage.scylla.nodes", "must list at least one host:port");
            }
            let valid_ks = !sc.keyspace.is_empty()
                && sc.keyspace.len() <= 48
                && sc
                    .keyspace
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_ks {
                return err(
                    "storage.scylla.keyspace",
                    "must be 1-48 letters, digits or underscores",
                );
            }
            if sc.replication_factor < 1 {
                return err("storage.scylla.replication_factor", "must be at least 1");
            }
            if sc.timeout_ms == 0 {
                return err("storage.scylla.timeout_ms", "must be positive");
            }
            // As for Redis: TLS files without `tls = true` would be silently unused.
            let tls_files = [
                ("tls_ca_file", &sc.tls_ca_file),
                ("tls_cert_file", &sc.tls_cert_file),
                ("tls_key_file", &sc.tls_key_file),
            ];
            if let Some((key, _)) = tls_files.iter().find(|(_, v)| v.is_some()) {
                if !sc.tls {
                    return err(
                        &format!("storage.scylla.{key}"),
                        "needs storage.scylla.tls = true",
                    );
                }
            }
            if sc.tls_cert_file.is_some() != sc.tls_key_file.is_some() {
                return err(
                    "storage.scylla.tls_cert_file",
                    "set both tls_cert_file and tls_key_file, or neither",
                );
            }
            if self.storage.coordination != CoordinationBackend::Redis {
                return err(
                    "storage.coordination",
                    "must be \"redis\" with storage.metadata = \"scylla\" (UID allocation takes per-mailbox leases)",
                );
            }
        }
        if self.submission.max_connections < 1 {
            return err("submission.max_connections", "must be at least 1");
        }
        if self.pop3.max_connections < 1 {
            return err("pop3.max_connections", "must be at least 1");
        }
        if self.pop3.max_line_length < 512 {
            return err("pop3.max_line_length", "must be at least 512");
        }
        if self.pop3.command_timeout_secs < 600 {
            return err(
                "pop3.command_timeout_secs",
                "must be at least 600 (RFC 1939 §3: ten minutes)",
            );
        }
        if self.pop3.max_errors < 1 {
            return err("pop3.max_errors", "must be at least 1");
        }
        if self.pop3.max_messages < 1 {
            return err("pop3.max_messages", "must be at least 1");
        }
        if let Some(spam) = &self.smtp.spam {
            spam.validate().map_err(|e| ConfigError::Key {
                key: "smtp.spam".into(),
                message: e.to_string(),
            })?;
        }
        if self.sieve.max_redirects > 32 || self.sieve.max_actions == 0 {
            return err(
                "sieve.max_actions",
                "must be at least 1 (and max_redirects at most 32)",
            );
        }
        let ms = &self.managesieve;
        if ms.max_connections < 1 {
            return err("managesieve.max_connections", "must be at least 1");
        }
        if ms.max_line_length < 512 {
            return err("managesieve.max_line_length", "must be at least 512");
        }
        if ms.max_script_size < 1024 || ms.max_script_size > 16 * 1024 * 1024 {
            return err(
                "managesieve.max_script_size",
                "must be between 1024 and 16777216",
            );
        }
        if ms.command_timeout_secs < 30 {
            return err("managesieve.command_timeout_secs", "must be at least 30");
        }
        if ms.max_errors < 1 {
            return err("managesieve.max_errors", "must be at least 1");
        }
        if self.auth.max_failures_per_ip < 1 {
            return err("auth.max_failures_per_ip", "must be at least 1");
        }
        if self.auth.max_failures_per_account < 1 {
            return err("auth.max_failures_per_account", "must be at least 1");
        }
        if self.auth.failure_window_secs < 1 {
            return err("auth.failure_window_secs", "must be at least 1");
        }
        if self.auth.delay_max_ms < self.auth.delay_base_ms {
            return err("auth.delay_max_ms", "must be at least auth.delay_base_ms");
        }
        if self.auth.max_attempts_per_connection < 1 {
            return err("auth.max_attempts_per_connection", "must be at least 1");
        }
        let d = &self.delivery;
        if d.max_concurrent < 1 {
            return err("delivery.max_concurrent", "must be at least 1");
        }
        if d.poll_interval_secs == 0 {
            return err("delivery.poll_interval_secs", "must be positive");
        }
        if d.lease_secs < 30 {
            return err("delivery.lease_secs", "must be at least 30");
        }
        if d.retry_base_secs == 0 {
            return err("delivery.retry_base_secs", "must be positive");
        }
        if d.retry_max_secs < d.retry_base_secs {
            return err(
                "delivery.retry_max_secs",
                "must be at least delivery.retry_base_secs",
            );
        }
        if d.max_lifetime_secs == 0 {
            return err("delivery.max_lifetime_secs", "must be positive");
        }
        if d.connect_timeout_secs == 0 {
            return err("delivery.connect_timeout_secs", "must be positive");
        }
        if d.command_timeout_secs == 0 {
            return err("delivery.command_timeout_secs", "must be positive");
        }
        if let Some(h) = &d.smarthost {
            if !is_host_port(h) {
                return err("delivery.smarthost", "must be host:port");
            }
        }
        for (domain, target) in &d.routes {
            if !is_host_port(target) {
                return Err(ConfigError::Key {
                    key: format!("delivery.routes.{domain}"),
                    message: "must be host:port".into(),
                });
            }
        }
        if let Some(ca) = &d.tls_ca_file {
            if !ca.is_file() {
                return err("delivery.tls_ca_file", "must name an existing PEM file");
            }
        }
        if let Some(anchor) = &d.dnssec_trust_anchor {
            if !anchor.is_file() {
                return err(
                    "delivery.dnssec_trust_anchor",
                    "must name an existing file of DNSKEY records",
                );
            }
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => return err("tls.key", "is required when tls.cert is set"),
            (None, Some(_)) => return err("tls.cert", "is required when tls.key is set"),
            _ => {}
        }
        Ok(())
    }
}

/// Folds `MAILFLEET_SECTION__KEY=value` variables into the TOML table.
fn apply_env(
    root: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // MAILFLEET_CONFIG names the file itself and is not a key.
        if rest == "CONFIG" || !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Env {
                var,
                message: "empty key segment".into(),
            });
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut table = &mut *root;
        for seg in &path[..path.len() - 1] {
            let entry = table
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("`{seg}` is not a section"),
                    })
                }
            };
        }
        let leaf = path.last().expect("path has at least two segments").clone();
        table.insert(leaf, parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Issue 9 item 18: `check-config` printed the S3 secret key and passwords in URLs.
    #[test]
    fn redacted_config_hides_every_secret() {
        let env = [
            ("MAILFLEET_STORAGE__S3__SECRET_ACCESS_KEY", "s3-very-secret"),
            ("MAILFLEET_STORAGE__SCYLLA__PASSWORD", "scylla-very-secret"),
            (
                "MAILFLEET_STORAGE__REDIS__URL",
                "redis://app:redis-very-secret@10.0.0.5:6379/2",
            ),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::load(None, env).expect("config");
        let printed = format!("{:#?}", c.redacted());
        for secret in ["s3-very-secret", "scylla-very-secret", "redis-very-secret"] {
            assert!(!printed.contains(secret), "{secret} printed");
        }
        assert!(printed.contains("redis://app:<redacted>@10.0.0.5:6379/2"));
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("rediss://:pw@h:1"), "rediss://:<redacted>@h:1");
        assert_eq!(redact_url("redis://user@h/0"), "redis://user@h/0");
        assert_eq!(redact_url("redis://u:p@ss@h/0"), "redis://u:<redacted>@h/0");
    }

    /// PROXY protocol keys: off by default, a CIDR list from the environment, and an
    /// unparsable network or an empty list with the option on named at start.
    #[test]
    fn proxy_protocol_keys() {
        let c = Config::load(None, vec![]).expect("defaults");
        assert!(c.server.proxy().expect("valid").is_none());
        let c = Config::load(
            None,
            env(&[
                ("MAILFLEET_SERVER__PROXY_PROTOCOL", "true"),
                (
                    "MAILFLEET_SERVER__PROXY_TRUSTED_NETWORKS",
                    "[\"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.1\"]",
                ),
            ]),
        )
        .expect("valid");
        let p = c.server.proxy().expect("valid").expect("on");
        assert!(p.is_trusted("10.2.3.4".parse().expect("ip")));
        assert!(p.is_trusted("fd00::5".parse().expect("ip")));
        assert!(!p.is_trusted("192.0.2.2".parse().expect("ip")));
        assert_eq!(p.header_timeout().as_secs(), 5);
        for vars in [
            vec![("MAILFLEET_SERVER__PROXY_PROTOCOL", "true")],
            vec![(
                "MAILFLEET_SERVER__PROXY_TRUSTED_NETWORKS",
                "[\"10.0.0.0/40\"]",
            )],
        ] {
            let e = Config::load(None, env(&vars)).expect_err("invalid");
            assert!(
                e.to_string().contains("server.proxy_trusted_networks"),
                "{e}"
            );
        }
    }

    #[test]
    fn defaults_without_file() {
        let c = Config::load(None, vec![]).expect("defaults are valid");
        assert_eq!(c.smtp.max_recipients, 100);
        assert_eq!(c.smtp.listen[0].ip().to_string(), "127.0.0.1");
        assert!(c.smtp.listen[0].port() > 1024);
        assert_eq!(c.smtp.max_inflight_bytes, 256 * 1024 * 1024);
    }

    /// Hardening item 9: the in-flight budget is a key, and one smaller than the largest
    /// message (which could then never be accepted) is refused.
    #[test]
    fn inflight_budget_is_configurable_and_checked() {
        let c = Config::load(
            None,
            env(&[("MAILFLEET_SMTP__MAX_INFLIGHT_BYTES", "104857600")]),
        )
        .expect("valid");
        assert_eq!(c.smtp.max_inflight_bytes, 100 * 1024 * 1024);
        let e = Config::load(
            None,
            env(&[
                ("MAILFLEET_SMTP__MAX_MESSAGE_SIZE", "2048"),
                ("MAILFLEET_SMTP__MAX_INFLIGHT_BYTES", "1024"),
            ]),
        )
        .expect_err("budget below the message size");
        assert!(e.to_string().contains("smtp.max_inflight_bytes"), "{e}");
    }

    #[test]
    fn file_and_env_override() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(
            f,
            "[smtp]\nmax_recipients = 50\n[server]\nhostname = \"mx.example.com\""
        )
        .expect("write");
        let c = Config::load(
            Some(f.path()),
            env(&[
                ("MAILFLEET_SMTP__MAX_RECIPIENTS", "7"),
                ("MAILFLEET_SMTP__LISTEN", "[\"127.0.0.1:2600\"]"),
                ("MAILFLEET_LOG__LEVEL", "debug"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.smtp.max_recipients, 7);
        assert_eq!(c.smtp.listen[0].port(), 2600);
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.server.hostname, "mx.example.com");
    }

    #[test]
    fn bad_key_is_named() {
        let e = Config::load(None, env(&[("MAILFLEET_SMTP__MAX_RECIPIENTS", "lots")]))
            .expect_err("string for a number");
        assert!(e.to_string().contains("smtp.max_recipients"), "{e}");
        let e =
            Config::load(None, env(&[("MAILFLEET_SMTP__MAX_RECIPENTS", "3")])).expect_err("typo");
        assert!(e.to_string().contains("max_recipents"), "{e}");
        let e =
            Config::load(None, env(&[("MAILFLEET_SMTP__MAX_RECIPIENTS", "0")])).expect_err("zero");
        assert!(e.to_string().contains("smtp.max_recipients"), "{e}");
    }

    #[test]
    fn bad_file_is_named() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(f, "[smtp\n").expect("write");
        let e = Config::load(Some(f.path()), vec![]).expect_err("syntax");
        assert!(e.to_string().contains("not valid TOML"), "{e}");
    }

    #[test]
    fn pop3_submission_and_auth_sections() {
        let c = Config::load(None, vec![]).expect("defaults are valid");
        for a in c
            .pop3
            .listen
            .iter()
            .chain(&c.submission.listen)
            .chain(&c.submission.listen_tls)
        {
            assert!(a.ip().is_loopback() && a.port() > 1024, "{a}");
        }
        assert!(!c.pop3.allow_plaintext_auth);
        assert!(c.pop3.command_timeout_secs >= 600);
        assert!(c.auth.max_failures_per_account > c.auth.max_failures_per_ip);
        let c = Config::load(
            None,
            env(&[
                ("MAILFLEET_POP3__LISTEN_TLS", "[\"127.0.0.1:1995\"]"),
                ("MAILFLEET_AUTH__DELAY_BASE_MS", "10"),
                ("MAILFLEET_SUBMISSION__LISTEN", "[]"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.pop3.listen_tls[0].port(), 1995);
        assert_eq!(c.auth.delay_base_ms, 10);
        assert!(c.submission.listen.is_empty());
        for (key, value) in [
            ("pop3.command_timeout_secs", "60"),
            ("pop3.max_line_length", "100"),
            ("auth.max_failures_per_ip", "0"),
            ("auth.delay_max_ms", "1"),
            ("submission.max_connections", "0"),
            ("auth.max_failures", "3"),
        ] {
            let var = format!("MAILFLEET_{}", key.replace('.', "__").to_uppercase());
            let e = Config::load(None, env(&[(&var, value)])).expect_err(key);
            let leaf = key.split('.').nth(1).unwrap_or(key);
            assert!(e.to_string().contains(leaf), "{var}: {e}");
        }
    }

    #[test]
    fn managesieve_section() {
        let c = Config::load(None, vec![]).expect("defaults");
        let m = &c.managesieve;
        assert!(m.enabled && m.starttls && !m.allow_plaintext_auth);
        assert_eq!(m.listen, vec!["127.0.0.1:4190".parse().expect("addr")]);
        assert_eq!(m.max_script_size, 64 * 1024);
        let c = Config::load(
            None,
            env(&[
                ("MAILFLEET_MANAGESIEVE__ENABLED", "false"),
                ("MAILFLEET_MANAGESIEVE__LISTEN", "[\"127.0.0.1:14190\"]"),
            ]),
        )
        .expect("valid");
        assert!(!c.managesieve.enabled);
        assert_eq!(c.managesieve.listen[0].port(), 14190);
        for (var, value) in [
            ("MAILFLEET_MANAGESIEVE__MAX_SCRIPT_SIZE", "10"),
            ("MAILFLEET_MANAGESIEVE__MAX_LINE_LENGTH", "10"),
            ("MAILFLEET_MANAGESIEVE__MAX_ERRORS", "0"),
        ] {
            let e = Config::load(None, env(&[(var, value)])).expect_err(var);
            assert!(e.to_string().contains("managesieve."), "{var}: {e}");
        }
    }

    #[test]
    fn smtp_authentication_section() {
        let c = Config::load(None, vec![]).expect("defaults");
        let a = &c.smtp.authentication;
        assert!(a.enabled && a.resolver.is_none() && !a.spf_fail_reject);
        assert_eq!(a.dmarc_reject, DmarcAction::Reject);
        assert_eq!(a.dmarc_quarantine, DmarcAction::Junk);
        assert!(a.skip_networks.iter().any(|n| n == "127.0.0.0/8"));
        let c = Config::load(
            None,
            env(&[
                ("MAILFLEET_SMTP__AUTHENTICATION__RESOLVER", "127.0.0.1:5353"),
                ("MAILFLEET_SMTP__AUTHENTICATION__DMARC_REJECT", "junk"),
                ("MAILFLEET_SMTP__AUTHENTICATION__SKIP_NETWORKS", "[]"),
                (
                    "MAILFLEET_SMTP__AUTHENTICATION__DMARC_OVERRIDE_DOMAINS",
                    "[\"lists.example\"]",
                ),
            ]),
        )
        .expect("valid");
        let a = &c.smtp.authentication;
        assert_eq!(a.resolver.map(|r| r.port()), Some(5353));
        assert_eq!(a.dmarc_reject, DmarcAction::Junk);
        assert!(a.skip_networks.is_empty());
        for (var, value) in [
            (
                "MAILFLEET_SMTP__AUTHENTICATION__SKIP_NETWORKS",
                "[\"10.0.0.0/33\"]",
            ),
            ("MAILFLEET_SMTP__AUTHENTICATION__DNS_TIMEOUT_SECS", "0"),
            ("MAILFLEET_SMTP__AUTHENTICATION__AUTHSERV_ID", "\"a b\""),
            (
                "MAILFLEET_SMTP__AUTHENTICATION__DMARC_OVERRIDE_DOMAINS",
                "[\"a..b\"]",
            ),
            ("MAILFLEET_SMTP__AUTHENTICATION__DMARC_REJECT", "\"bounce\""),
        ] {
            let e = Config::load(None, env(&[(var, value)])).expect_err(var);
            assert!(
                e.to_string().contains("authentication") || e.to_string().contains("dmarc_reject"),
                "{var}: {e}"
            );
        }
    }

    #[test]
    fn delivery_section() {
        let c = Config::load(None, vec![]).expect("defaults");
        assert_eq!(c.delivery.max_lifetime_secs, 5 * 24 * 3600);
        assert!(c.delivery.starttls && c.delivery.routes.is_empty());
        assert!(c.delivery.dane && c.delivery.dnssec_trust_anchor.is_none());
        let c = Config::load(
            None,
            env(&[
                ("MAILFLEET_DELIVERY__ROUTES__REMOTE.TEST", "127.0.0.1:2600"),
                ("MAILFLEET_DELIVERY__RESOLVER", "127.0.0.1:5353"),
                ("MAILFLEET_DELIVERY__SMARTHOST", "relay.example:587"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.delivery.routes["remote.test"], "127.0.0.1:2600");
        assert_eq!(c.delivery.resolver.map(|a| a.port()), Some(5353));
        for (var, value, key) in [
            (
                "MAILFLEET_DELIVERY__ROUTES__X.TEST",
                "nohost",
                "delivery.routes.x.test",
            ),
            (
                "MAILFLEET_DELIVERY__SMARTHOST",
                "relay:0",
                "delivery.smarthost",
            ),
            ("MAILFLEET_DELIVERY__LEASE_SECS", "5", "delivery.lease_secs"),
            (
                "MAILFLEET_DELIVERY__RETRY_MAX_SECS",
                "1",
                "delivery.retry_max_secs",
            ),
            (
                "MAILFLEET_DELIVERY__MAX_CONCURRENT",
                "0",
                "delivery.max_concurrent",
            ),
            (
                "MAILFLEET_DELIVERY__DNSSEC_TRUST_ANCHOR",
                "/nonexistent/root.key",
                "delivery.dnssec_trust_anchor",
            ),
        ] {
            let e = Config::load(None, env(&[(var, value)])).expect_err(var);
            assert!(e.to_string().contains(key), "{var}: {e}");
        }
    }

    #[test]
    fn storage_backends_are_chosen_per_trait_and_checked() {
        let c = Config::load(None, vec![]).expect("defaults");
        assert_eq!(c.storage.metadata, MetadataBackend::Sqlite);
        assert_eq!(c.storage.blobs, BlobBackend::Local);
        assert_eq!(c.storage.coordination, CoordinationBackend::Local);
        assert!(!c.storage.is_cluster());
        let c = Config::load(
            None,
            env(&[
                ("MAILFLEET_STORAGE__BLOBS", "s3"),
                ("MAILFLEET_STORAGE__S3__ENDPOINT", "http://127.0.0.1:3900"),
                ("MAILFLEET_STORAGE__S3__REGION", "garage"),
                ("MAILFLEET_STORAGE__COORDINATION", "redis"),
                ("MAILFLEET_STORAGE__REDIS__URL", "redis://10.0.0.9:6379/2"),
                ("MAILFLEET_HTTP__LISTEN", "[\"0.0.0.0:9090\"]"),
            ]),
        )
        .expect("cluster config");
        assert!(c.storage.is_cluster());
        assert_eq!(c.storage.s3.region, "garage");
        assert_eq!(c.storage.redis.url, "redis://10.0.0.9:6379/2");
        assert_eq!(c.http.listen[0].port(), 9090);
        for (vars, key) in [
            (
                vec![("MAILFLEET_STORAGE__METADATA", "scylla")],
                "storage.scylla.nodes",
            ),
            (
                vec![
                    ("MAILFLEET_STORAGE__METADATA", "scylla"),
                    ("MAILFLEET_STORAGE__SCYLLA__NODES", "[\"10.0.0.1:9042\"]"),
                ],
                "storage.coordination",
            ),
            (
                vec![
                    ("MAILFLEET_STORAGE__BLOBS", "s3"),
                    ("MAILFLEET_STORAGE__S3__ACCESS_KEY_ID", "GK1"),
                ],
                "storage.s3.secret_access_key",
            ),
            (
                vec![
                    ("MAILFLEET_STORAGE__BLOBS", "s3"),
                    ("MAILFLEET_STORAGE__S3__PART_SIZE", "1024"),
                ],
                "storage.s3.part_size",
            ),
            (
                vec![
                    ("MAILFLEET_STORAGE__COORDINATION", "redis"),
                    ("MAILFLEET_STORAGE__REDIS__URL", "http://x"),
                ],
                "storage.redis.url",
            ),
            (vec![("MAILFLEET_STORAGE__BLOBS", "ftp")], "storage.blobs"),
        ] {
            let e = Config::load(None, env(&vars)).expect_err(key);
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }

    /// `cluster_nodes`: seeds of a Redis Cluster, from the environment like any list; one
    /// scheme for all, database 0 only, TLS files only with rediss:// seeds, passwords
    /// redacted.
    #[test]
    fn redis_cluster_nodes_are_checked() {
        let c = Config::load(None, vec![]).expect("defaults");
        assert!(c.storage.redis.cluster_nodes.is_empty());
        assert!(!c.storage.redis.is_cluster());
        assert_eq!(c.storage.redis.endpoint_key(), "storage.redis.url");
        let redis = ("MAILFLEET_STORAGE__COORDINATION", "redis");
        let c = Config::load(
            None,
            env(&[
                redis,
                (
                    "MAILFLEET_STORAGE__REDIS__CLUSTER_NODES",
                    "[\"rediss://:cluster-secret@10.0.0.1:6379\", \"rediss://10.0.0.2:6379/0\"]",
                ),
                (
                    "MAILFLEET_STORAGE__REDIS__TLS_CA_FILE",
                    "/etc/mf/redis-ca.pem",
                ),
                // Not used in cluster mode, so not checked either.
                ("MAILFLEET_STORAGE__REDIS__URL", "unused"),
            ]),
        )
        .expect("a TLS cluster");
        let r = &c.storage.redis;
        assert!(r.is_cluster() && r.uses_tls());
        assert_eq!(r.endpoint_key(), "storage.redis.cluster_nodes");
        assert_eq!(r.cluster_nodes.len(), 2);
        let printed = format!("{:#?}", c.redacted());
        assert!(!printed.contains("cluster-secret"), "{printed}");
        assert!(
            printed.contains("rediss://:<redacted>@10.0.0.1:6379"),
            "{printed}"
        );

        let nodes = "MAILFLEET_STORAGE__REDIS__CLUSTER_NODES";
        for (vars, needle) in [
            (
                vec![
                    redis,
                    (
                        nodes,
                        "[\"redis://10.0.0.1:6379\", \"rediss://10.0.0.2:6379\"]",
                    ),
                ],
                "same scheme",
            ),
            (
                vec![redis, (nodes, "[\"10.0.0.1:6379\"]")],
                "must start with redis://",
            ),
            (
                vec![redis, (nodes, "[\"redis://u:pw@10.0.0.1:6379/2\"]")],
                "only database 0",
            ),
            (
                vec![
                    redis,
                    (nodes, "[\"redis://10.0.0.1:6379\"]"),
                    ("MAILFLEET_STORAGE__REDIS__TLS_CA_FILE", "/ca.pem"),
                ],
                "needs rediss:// in storage.redis.cluster_nodes",
            ),
        ] {
            let e = Config::load(None, env(&vars)).expect_err(needle);
            let text = e.to_string();
            assert!(text.contains(needle), "{needle}: {text}");
            assert!(!text.contains(":pw@"), "a password in an error: {text}");
        }
        // A rediss:// seed list does not make a plain url acceptable when it is not set:
        // without cluster_nodes the url decides again.
        let e = Config::load(
            None,
            env(&[redis, ("MAILFLEET_STORAGE__REDIS__TLS_CA_FILE", "/ca.pem")]),
        )
        .expect_err("plain url with a CA");
        assert!(e.to_string().contains("storage.redis.url"), "{e}");
        assert_eq!(url_database("h:1"), "");
        assert_eq!(url_database("u:p@h:1/0?protocol=3"), "0");
        assert_eq!(url_database("h:1/"), "");
    }

    #[test]
    fn backend_tls_files_need_tls_and_come_in_pairs() {
        let redis = [
            ("MAILFLEET_STORAGE__COORDINATION", "redis"),
            (
                "MAILFLEET_STORAGE__REDIS__URL",
                "rediss://redis.test:6380/0",
            ),
        ];
        let scylla = [
            ("MAILFLEET_STORAGE__COORDINATION", "redis"),
            ("MAILFLEET_STORAGE__METADATA", "scylla"),
            ("MAILFLEET_STORAGE__SCYLLA__NODES", "[\"10.0.0.1:9142\"]"),
            ("MAILFLEET_STORAGE__SCYLLA__TLS", "true"),
        ];
        let both = |extra: &[(&'static str, &'static str)]| {
            let mut v: Vec<(&str, &str)> = redis.iter().chain(scylla.iter()).copied().collect();
            v.extend_from_slice(extra);
            v
        };
        let c = Config::load(
            None,
            env(&both(&[
                (
                    "MAILFLEET_STORAGE__REDIS__TLS_CA_FILE",
                    "/etc/mf/redis-ca.pem",
                ),
                (
                    "MAILFLEET_STORAGE__REDIS__TLS_CERT_FILE",
                    "/etc/mf/client.pem",
                ),
                (
                    "MAILFLEET_STORAGE__REDIS__TLS_KEY_FILE",
                    "/etc/mf/client.key",
                ),
                (
                    "MAILFLEET_STORAGE__SCYLLA__TLS_CA_FILE",
                    "/etc/mf/scylla-ca.pem",
                ),
            ])),
        )
        .expect("TLS to both backends");
        assert_eq!(
            c.storage.redis.tls_ca_file.as_deref(),
            Some(Path::new("/etc/mf/redis-ca.pem"))
        );
        assert!(c.storage.redis.tls_key_file.is_some());
        assert!(c.storage.scylla.tls && c.storage.scylla.tls_cert_file.is_none());
        // rediss:// and `tls = true` alone mean TLS with the system's roots.
        Config::load(None, env(&both(&[]))).expect("system roots");
        for (vars, key) in [
            (
                vec![
                    ("MAILFLEET_STORAGE__COORDINATION", "redis"),
                    ("MAILFLEET_STORAGE__REDIS__TLS_CA_FILE", "/ca.pem"),
                ],
                "storage.redis.tls_ca_file",
            ),
            (
                both(&[("MAILFLEET_STORAGE__REDIS__TLS_CERT_FILE", "/c.pem")]),
                "storage.redis.tls_cert_file",
            ),
            (
                both(&[
                    ("MAILFLEET_STORAGE__SCYLLA__TLS", "false"),
                    ("MAILFLEET_STORAGE__SCYLLA__TLS_CA_FILE", "/ca.pem"),
                ]),
                "storage.scylla.tls_ca_file",
            ),
            (
                both(&[("MAILFLEET_STORAGE__SCYLLA__TLS_KEY_FILE", "/k.pem")]),
                "storage.scylla.tls_cert_file",
            ),
        ] {
            let e = Config::load(None, env(&vars)).expect_err(key);
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }
}
