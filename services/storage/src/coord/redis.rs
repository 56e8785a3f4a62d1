//! The Redis coordinator for cluster mode: any number of front-ends share one Redis, or
//! one Redis Cluster.
//!
//! # Keys and channels (all under `storage.redis.key_prefix`)
//! ```text
//! ev:{account}          pub/sub channel of the account's MailboxEvents (sharded in a cluster)
//! lease:{{key}}         "holder|token", with a PX expiry: the lease itself
//! lease-seq:{{key}}     the key's grant counter (fencing tokens), expires after TOKEN_RETENTION
//! cnt:{key}:{window}    a fixed-window counter, expires after two windows
//! mark:{key}            a marker ("1") with a PX expiry
//! ```
//!
//! The lease's two keys carry the lease name as a hash tag (`{...}`), so the one script
//! that touches both stays within one hash slot of a Redis Cluster; every other command
//! touches one key.
//!
//! # One Redis or a Redis Cluster
//! With `storage.redis.url` the client connects to one endpoint (a primary, or a proxy
//! that hides a cluster). With `storage.redis.cluster_nodes` it speaks the cluster
//! protocol itself: it reads the slot map from any seed, sends each command or script to
//! the primary owning its key's slot, follows MOVED/ASK redirections and refreshes the map
//! after a failover or resharding. Events then use sharded pub/sub (`SPUBLISH` /
//! `SSUBSCRIBE`, Redis 7): an account's channel lives on the shard that owns its slot, so
//! a publish reaches one shard instead of being broadcast to every node over the cluster
//! bus, and pub/sub grows with the cluster like the keys do. A shard that ends a
//! subscription because the slot moved is subscribed again at the new owner, and its
//! subscribers resync. See docs/scylla.md for what Redis does and does not guarantee
//! (UIDs never depend on it: the ledger in ScyllaDB decides).
//!
//! # Why Lua scripts for leases
//! Taking a lease is "if free, count a grant and store holder|token with an expiry", and
//! renewing or releasing is "only if the value is still mine": each is one script so no
//! other client can interleave between the check and the write (Redis runs a script
//! atomically). The token count per key is what lets the UID allocator notice that nobody
//! else held a mailbox's lease since its own last grant (see [`super::Lease`]).
//!
//! # Pub/sub and reconnects
//! Commands go through one multiplexed [`ConnectionManager`] (in a cluster, a
//! [`ClusterConnection`] with one connection per primary), which reconnects by itself.
//! Notifications use a second one in RESP3 mode with automatic resubscription: this
//! node subscribes once per account that has local subscribers and fans events out through
//! an in-process broadcast channel, so a thousand IDLE sessions of one user cost one Redis
//! subscription. Pub/sub is fire-and-forget, so when that connection drops every local
//! subscriber gets [`MailboxEvent::Resync`] (events may have been missed) and again once the
//! connection is back. A heartbeat task pings that connection (in a cluster, every
//! primary) so it reconnects even when nothing else would touch it.
//!
//! # TLS
//! A `rediss://` URL connects over rustls (the process's aws-lc-rs provider), checking the
//! server's certificate against `storage.redis.tls_ca_file` or the system's roots, with an
//! optional client certificate (`tls_cert_file`, `tls_key_file`). Both connections, and
//! every reconnection, use the same settings; with `rediss://` cluster seeds so does the
//! connection to every node the slot map names (whose certificate must then be valid for
//! the address the node announces).
//!
//! # Outages
//! Every command has a deadline (`storage.redis.timeout_ms`); a refused connection, an I/O
//! error or a timeout becomes [`StoreError::Unavailable`], which protocols turn into a
//! temporary failure. Nothing is cached across a failure, so service resumes as soon as
//! Redis answers again.

use super::{Coordinator, Lease, MailboxEvent, Subscription, SubscriptionStream};
use crate::backend_tls::{LoadedTls, TlsFiles};
use crate::types::{AccountId, MailboxId, ModSeq};
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use mailfleet_core::config::RedisConfig;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    ClientTlsConfig, Cmd, Pipeline, PushInfo, PushKind, RedisFuture, RedisResult, Script,
    TlsCertificates, Value,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Events buffered per account before a slow local subscriber is told to resync.
const CHANNEL_CAPACITY: usize = 256;
/// How often the notification connection is pinged and idle subscriptions are dropped.
const HEARTBEAT: Duration = Duration::from_millis(500);

// Tokens are formatted with %d and returned as strings: Lua numbers are doubles, and the
// default number-to-string conversion would write a large token in exponent form.
const ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local t = redis.call('INCR', KEYS[2])
if t == 1 then
  redis.call('SET', KEYS[2], ARGV[3])
  t = ARGV[3]
else
  t = string.format('%d', t)
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. t, 'PX', ARGV[2])
return t
"#;

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

const INCR_WINDOW: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"#;

// Never below zero, and never creates a key (a window that ended stays ended).
const DECR_WINDOW: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n <= 0 then return 0 end
return redis.call('DECR', KEYS[1])
"#;

type Channels = Arc<Mutex<HashMap<AccountId, broadcast::Sender<MailboxEvent>>>>;

/// One Redis (through a [`ConnectionManager`]) or a Redis Cluster (through a
/// [`ClusterConnection`], which routes each command to the primary of its key's slot).
/// Both speak [`ConnectionLike`], so commands and scripts are written once; only pub/sub
/// differs, since a cluster uses sharded channels.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Connection {
    /// `PUBLISH`, or in a cluster `SPUBLISH`: a sharded message goes only to the shard that
    /// owns the channel's slot, where a plain one would be copied to every node over the
    /// cluster bus whoever listens.
    fn publish_command(&self) -> &'static str {
        match self {
            Self::Single(_) => "PUBLISH",
            Self::Cluster(_) => "SPUBLISH",
        }
    }

    /// `SUBSCRIBE`, or `SSUBSCRIBE` in a cluster: one channel per command there, since
    /// channels in different slots cannot share one.
    async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Single(c) => c.subscribe(channels).await,
            Self::Cluster(c) => {
                for channel in channels {
                    c.ssubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    /// `UNSUBSCRIBE`, or `SUNSUBSCRIBE` per channel in a cluster.
    async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Single(c) => c.unsubscribe(channels).await,
            Self::Cluster(c) => {
                for channel in channels {
                    c.sunsubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }
}

pub struct RedisCoordinator {
    prefix: String,
    timeout: Duration,
    commands: Connection,
    notify: Connection,
    channels: Channels,
    acquire: Script,
    renew: Script,
    release: Script,
    incr: Script,
    decr: Script,
    heartbeat: tokio::task::JoinHandle<()>,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl Drop for RedisCoordinator {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.dispatcher.abort();
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis {what}: {e}"))
}

fn channel_name(prefix: &str, account: AccountId) -> String {
    format!("{prefix}ev:{}", account.0)
}

/// Wire form of an event: short text, so other tools (redis-cli MONITOR) can read it.
/// The last field is when it was published (Unix microseconds), for
/// `mailfleet_coordinator_event_lag_seconds`; a reader that does not know it ignores it.
fn encode(event: &MailboxEvent) -> String {
    let at = unix_micros();
    match event {
        MailboxEvent::Changed {
            mailbox, modseq, ..
        } => format!("c {} {} {at}", mailbox.0, modseq.0),
        MailboxEvent::MailboxesChanged { .. } => format!("m {at}"),
        MailboxEvent::Resync { .. } => format!("r {at}"),
    }
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How long ago an event was published, from its last field; `None` for an event without
/// one or from a node whose clock is ahead of ours.
fn event_age(payload: &str) -> Option<Duration> {
    let position = match payload.split(' ').next()? {
        "c" => 3,
        _ => 1,
    };
    let at: u64 = payload.split(' ').nth(position)?.parse().ok()?;
    unix_micros().checked_sub(at).map(Duration::from_micros)
}

fn decode(account: AccountId, payload: &str) -> Option<MailboxEvent> {
    let mut parts = payload.split(' ');
    match parts.next()? {
        "c" => {
            let mailbox = parts.next()?.parse().ok()?;
            let modseq = parts.next()?.parse().ok()?;
            Some(MailboxEvent::Changed {
                account,
                mailbox: MailboxId(mailbox),
                modseq: ModSeq(modseq),
            })
        }
        "m" => Some(MailboxEvent::MailboxesChanged { account }),
        "r" => Some(MailboxEvent::Resync { account }),
        _ => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update of the channel map is a single insert or remove; a panic elsewhere cannot
    // leave it half-changed.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tells every local subscriber that events may have been lost.
fn resync_all(channels: &Channels) {
    for (account, tx) in lock(channels).iter() {
        let _ = tx.send(MailboxEvent::Resync { account: *account });
    }
}

impl RedisCoordinator {
    /// Connects both connections (to `storage.redis.url`, or to the cluster behind
    /// `storage.redis.cluster_nodes`); fails (naming the host, never a password) when Redis
    /// cannot be reached at start.
    pub async fn connect(cfg: &RedisConfig) -> StoreResult<Self> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let (commands, notify) = if cfg.is_cluster() {
            connect_cluster(cfg, push_tx).await?
        } else {
            connect_single(cfg, push_tx).await?
        };
        let prefix = cfg.key_prefix.clone();
        let channels: Channels = Arc::default();
        let dispatcher = tokio::spawn(dispatch(
            prefix.clone(),
            push_rx,
            channels.clone(),
            notify.clone(),
            timeout,
        ));
        let heartbeat = tokio::spawn(heartbeat(
            prefix.clone(),
            notify.clone(),
            channels.clone(),
            timeout,
        ));
        Ok(Self {
            prefix,
            timeout,
            commands,
            notify,
            channels,
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            incr: Script::new(INCR_WINDOW),
            decr: Script::new(DECR_WINDOW),
            heartbeat,
            dispatcher,
        })
    }

    /// One round trip, for readiness probes.
    pub async fn check(&self) -> StoreResult<()> {
        let mut con = self.commands.clone();
        let pong: String = self
            .bounded("PING", redis::cmd("PING").query_async(&mut con))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(unavailable("PING", format!("unexpected reply {pong:?}")))
        }
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(what, e)),
            Err(_) => Err(unavailable(what, "timed out")),
        }
    }

    fn lease_value(lease: &Lease) -> String {
        format!("{}|{}", lease.holder, lease.token)
    }
}

/// Waits at most `limit` for a first connection.
async fn connect_within<T>(
    cfg: &RedisConfig,
    what: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = RedisResult<T>>,
) -> StoreResult<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| unavailable(what, "timed out"))?
        .map_err(|e| unavailable(what, tls_hint(cfg, e)))
}

/// One Redis at `storage.redis.url`: a command manager, and a RESP3 manager for pub/sub
/// that resubscribes by itself after a reconnection.
async fn connect_single(
    cfg: &RedisConfig,
    push_tx: mpsc::UnboundedSender<PushInfo>,
) -> StoreResult<(Connection, Connection)> {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let client = client(cfg)?;
    let base = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    let commands = connect_within(
        cfg,
        "connect",
        timeout * 2,
        ConnectionManager::new_with_config(client.clone(), base.clone()),
    )
    .await?;

    // Pub/sub pushes need RESP3 on the notification connection. Its client is made from
    // the first one's connection info, which carries the TLS parameters too: both
    // connections trust the same CA and present the same client certificate.
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    let push_client = redis::Client::open(info)
        .map_err(|e| StoreError::Invalid(format!("storage.redis.url: {e}")))?;
    let notify = connect_within(
        cfg,
        "connect (pub/sub)",
        timeout * 2,
        ConnectionManager::new_with_config(
            push_client,
            base.set_push_sender(push_tx).set_automatic_resubscription(),
        ),
    )
    .await?;
    Ok((Connection::Single(commands), Connection::Single(notify)))
}

/// A Redis Cluster from the seeds in `storage.redis.cluster_nodes`: a command connection,
/// and a RESP3 one with a push sender for sharded pub/sub. Each keeps one connection per
/// primary, follows MOVED/ASK redirections and slot map changes, reconnects to a node
/// that dropped, and (the pub/sub one) subscribes again to its tracked channels there.
async fn connect_cluster(
    cfg: &RedisConfig,
    push_tx: mpsc::UnboundedSender<PushInfo>,
) -> StoreResult<(Connection, Connection)> {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let certs = tls_certificates(cfg)?;
    let bad_seeds =
        |e: redis::RedisError| StoreError::Invalid(format!("storage.redis.cluster_nodes: {e}"));
    let commands = cluster_builder(cfg, certs.clone())
        .build()
        .map_err(bad_seeds)?;
    let notify = cluster_builder(cfg, certs)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(push_tx)
        .build()
        .map_err(bad_seeds)?;
    let commands = connect_within(
        cfg,
        "connect (cluster)",
        timeout * 2,
        commands.get_async_connection(),
    )
    .await?;
    let notify = connect_within(
        cfg,
        "connect (cluster pub/sub)",
        timeout * 2,
        notify.get_async_connection(),
    )
    .await?;
    Ok((Connection::Cluster(commands), Connection::Cluster(notify)))
}

/// The cluster client's settings: every attempt bounded by `timeout_ms` like a single
/// Redis's, and a few quick retries, enough to follow a redirection or a failover's new
/// slot map within one command's deadline (which [`RedisCoordinator::bounded`] enforces
/// anyway).
fn cluster_builder(cfg: &RedisConfig, certs: Option<TlsCertificates>) -> ClusterClientBuilder {
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let builder = ClusterClientBuilder::new(cfg.cluster_nodes.iter().map(String::as_str))
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(3)
        .min_retry_wait(10)
        .max_retry_wait((cfg.timeout_ms / 4).max(20));
    match certs {
        Some(certs) => builder.certs(certs),
        None => builder,
    }
}

/// The client for `storage.redis.url`. With `rediss://` it speaks TLS through rustls,
/// verifying the server against `tls_ca_file` (or the system's roots) and presenting
/// `tls_cert_file` when set.
fn client(cfg: &RedisConfig) -> StoreResult<redis::Client> {
    let bad_url = |e: redis::RedisError| StoreError::Invalid(format!("storage.redis.url: {e}"));
    match tls_certificates(cfg)? {
        Some(certs) => redis::Client::build_with_tls(cfg.url.as_str(), certs).map_err(bad_url),
        None => redis::Client::open(cfg.url.as_str()).map_err(bad_url),
    }
}

/// The CA and client certificate for `rediss://` endpoints (`url` or `cluster_nodes`),
/// `None` when the endpoints are plain or TLS should use the redis crate's default (the
/// system's roots, no client certificate). The files are checked here so a bad one fails
/// the start with its key's name.
fn tls_certificates(cfg: &RedisConfig) -> StoreResult<Option<TlsCertificates>> {
    if !cfg.uses_tls() {
        return Ok(None);
    }
    let tls = LoadedTls::load(TlsFiles {
        section: "storage.redis",
        ca: cfg.tls_ca_file.as_deref(),
        cert: cfg.tls_cert_file.as_deref(),
        key: cfg.tls_key_file.as_deref(),
    })?;
    crate::backend_tls::ensure_process_provider();
    // Built only to be checked: the redis crate makes its own configuration from the PEM.
    tls.client_config("storage.redis")?;
    if tls.ca_pem.is_none() && tls.identity.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls: tls
            .identity
            .map(|(client_cert, client_key)| ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: tls.ca_pem,
    }))
}

/// A failed first connection, with the TLS setting to look at when the failure is TLS's:
/// "invalid peer certificate: UnknownIssuer" or "received fatal alert: CertificateRequired"
/// alone does not tell an operator which key to change.
fn tls_hint(cfg: &RedisConfig, e: redis::RedisError) -> String {
    let text = e.to_string();
    if !cfg.uses_tls() {
        return text;
    }
    let lower = text.to_lowercase();
    if lower.contains("invalid peer certificate") {
        // We refused the server.
        match &cfg.tls_ca_file {
            Some(ca) => format!(
                "{text} (TLS: the server's certificate must chain to storage.redis.tls_ca_file \
                 {} and name the host it is reached at)",
                ca.display()
            ),
            None => format!(
                "{text} (TLS: the server's certificate was checked against the system's CA \
                 certificates; set storage.redis.tls_ca_file for a private CA)"
            ),
        }
    } else if lower.contains("alert") {
        // The server refused us.
        match &cfg.tls_cert_file {
            Some(cert) => format!(
                "{text} (TLS: the server ended the handshake; it may not accept the client \
                 certificate storage.redis.tls_cert_file {})",
                cert.display()
            ),
            None => format!(
                "{text} (TLS: the server ended the handshake; if it requires client \
                 certificates, set storage.redis.tls_cert_file and tls_key_file)"
            ),
        }
    } else {
        text
    }
}

/// The account whose event channel `channel` is, if it is one of ours.
fn channel_account(channel_prefix: &str, channel: &[u8]) -> Option<AccountId> {
    String::from_utf8_lossy(channel)
        .strip_prefix(channel_prefix)
        .and_then(|a| a.parse::<i64>().ok())
        .map(AccountId)
}

/// Routes pushed messages to local subscribers.
async fn dispatch(
    prefix: String,
    mut rx: mpsc::UnboundedReceiver<PushInfo>,
    channels: Channels,
    notify: Connection,
    timeout: Duration,
) {
    let channel_prefix = format!("{prefix}ev:");
    while let Some(push) = rx.recv().await {
        match push.kind {
            // SMessage: a sharded channel's message, in cluster mode.
            PushKind::Message | PushKind::SMessage => {
                let (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) =
                    (push.data.first(), push.data.get(1))
                else {
                    continue;
                };
                let Some(account) = channel_account(&channel_prefix, ch) else {
                    continue;
                };
                let payload = String::from_utf8_lossy(payload);
                let Some(event) = decode(account, &payload) else {
                    tracing::warn!(
                        channel = %String::from_utf8_lossy(ch),
                        "ignoring an unreadable mailbox event"
                    );
                    continue;
                };
                if let Some(age) = event_age(&payload) {
                    mailfleet_telemetry::metrics().storage.event_lag(age);
                }
                if let Some(tx) = lock(&channels).get(&account) {
                    let _ = tx.send(event);
                }
            }
            PushKind::SUnsubscribe => {
                let Some(Value::BulkString(ch)) = push.data.first() else {
                    continue;
                };
                if let Some(account) = channel_account(&channel_prefix, ch) {
                    resubscribe_if_wanted(&channels, account, &prefix, &notify, timeout);
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("redis notification connection lost; subscribers will resync");
                resync_all(&channels);
            }
            _ => {}
        }
    }
}

/// A cluster node ends a sharded subscription by itself when the channel's slot moves to
/// another shard (resharding, or a failover the client has not noticed yet), and the
/// client would only subscribe at the new owner after its next slot map refresh. So when
/// an account that still has local subscribers loses its subscription, subscribe again
/// (the command follows the MOVED redirection to the new owner) and tell the subscribers
/// to resync, since events published in between were missed. The confirmation of our own
/// SUNSUBSCRIBE (heartbeat) arrives here too, for an account already dropped, and is
/// ignored; or, if a session subscribed again meanwhile, subscribing twice is harmless.
fn resubscribe_if_wanted(
    channels: &Channels,
    account: AccountId,
    prefix: &str,
    notify: &Connection,
    timeout: Duration,
) {
    let Some(tx) = lock(channels).get(&account).cloned() else {
        return;
    };
    tracing::info!(
        account = account.0,
        "redis ended a sharded subscription; subscribing again"
    );
    let mut con = notify.clone();
    let names = [channel_name(prefix, account)];
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, con.subscribe(&names)).await;
        let _ = tx.send(MailboxEvent::Resync { account });
    });
}

/// Keeps the notification connection alive (a ping makes the manager reconnect and
/// resubscribe; in a cluster the ping goes to every primary, so any shard's outage counts),
/// tells subscribers to resync once it is back, and unsubscribes from accounts nobody on
/// this node listens to any more.
async fn heartbeat(prefix: String, mut con: Connection, channels: Channels, timeout: Duration) {
    let mut healthy = true;
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let ping =
            tokio::time::timeout(timeout, redis::cmd("PING").query_async::<Value>(&mut con)).await;
        match ping {
            Ok(Ok(_)) => {
                if !healthy {
                    tracing::info!("redis notification connection restored");
                    resync_all(&channels);
                }
                healthy = true;
            }
            _ => healthy = false,
        }
        let idle: Vec<AccountId> = {
            let mut map = lock(&channels);
            let idle: Vec<AccountId> = map
                .iter()
                .filter(|(_, tx)| tx.receiver_count() == 0)
                .map(|(a, _)| *a)
                .collect();
            for a in &idle {
                map.remove(a);
            }
            idle
        };
        if !idle.is_empty() && healthy {
            let names: Vec<String> = idle.iter().map(|a| channel_name(&prefix, *a)).collect();
            let _ = tokio::time::timeout(timeout, con.unsubscribe(&names)).await;
            // A session may have subscribed to one of these accounts again while the
            // UNSUBSCRIBE was on its way, and its SUBSCRIBE may have reached Redis first:
            // subscribe those again so no account is left deaf.
            let back: Vec<String> = {
                let map = lock(&channels);
                idle.iter()
                    .filter(|a| map.contains_key(a))
                    .map(|a| channel_name(&prefix, *a))
                    .collect()
            };
            if !back.is_empty() {
                let _ = tokio::time::timeout(timeout, con.subscribe(&back)).await;
            }
        }
    }
}

struct RedisSubscription {
    account: AccountId,
    rx: broadcast::Receiver<MailboxEvent>,
}

#[async_trait]
impl SubscriptionStream for RedisSubscription {
    async fn next(&mut self) -> Option<MailboxEvent> {
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(MailboxEvent::Resync {
                account: self.account,
            }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[async_trait]
impl Coordinator for RedisCoordinator {
    async fn publish(&self, event: MailboxEvent) -> StoreResult<()> {
        let mut con = self.commands.clone();
        let channel = channel_name(&self.prefix, event.account());
        let command = con.publish_command();
        self.bounded(
            command,
            redis::cmd(command)
                .arg(channel)
                .arg(encode(&event))
                .query_async::<i64>(&mut con),
        )
        .await?;
        Ok(())
    }

    async fn subscribe(&self, account: AccountId) -> StoreResult<Subscription> {
        let (rx, new) = {
            let mut map = lock(&self.channels);
            match map.get(&account) {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = broadcast::channel(CHANNEL_CAPACITY);
                    map.insert(account, tx);
                    (rx, true)
                }
            }
        };
        if new {
            let mut con = self.notify.clone();
            let names = [channel_name(&self.prefix, account)];
            let subscribed = self.bounded("SUBSCRIBE", con.subscribe(&names)).await;
            if let Err(e) = subscribed {
                lock(&self.channels).remove(&account);
                return Err(e);
            }
        }
        Ok(Subscription(Box::new(RedisSubscription { account, rx })))
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Option<Lease>> {
        if holder.contains('|') {
            return Err(StoreError::Invalid(format!(
                "lease holder {holder:?} contains '|'"
            )));
        }
        let mut con = self.commands.clone();
        let mut call = self.acquire.prepare_invoke();
        call.key(lease_key(&self.prefix, key))
            .key(format!("{}lease-seq:{{{key}}}", self.prefix))
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(super::token_base_now())
            .arg(super::TOKEN_RETENTION.as_millis() as u64);
        let token: Option<String> = self
            .bounded("lease acquire", call.invoke_async(&mut con))
            .await?;
        let token = token
            .map(|t| {
                t.parse::<u64>()
                    .map_err(|_| StoreError::Corrupt(format!("lease token {t:?} for {key}")))
            })
            .transpose()?;
        Ok(token.map(|token| Lease {
            key: key.to_string(),
            holder: holder.to_string(),
            token,
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StoreResult<bool> {
        let mut con = self.commands.clone();
        let mut call = self.renew.prepare_invoke();
        call.key(lease_key(&self.prefix, &lease.key))
            .arg(Self::lease_value(lease))
            .arg(ttl.as_millis().max(1) as u64);
        let renewed: i64 = self
            .bounded("lease renew", call.invoke_async(&mut con))
            .await?;
        Ok(renewed == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        let mut con = self.commands.clone();
        let mut call = self.release.prepare_invoke();
        call.key(lease_key(&self.prefix, &lease.key))
            .arg(Self::lease_value(lease));
        let _: i64 = self
            .bounded("lease release", call.invoke_async(&mut con))
            .await?;
        Ok(())
    }

    async fn incr_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        let w = window.as_millis().max(1) as u64;
        let index = now_millis() / w;
        let mut con = self.commands.clone();
        let mut call = self.incr.prepare_invoke();
        call.key(format!("{}cnt:{key}:{index}", self.prefix))
            .arg(w * 2);
        self.bounded("counter", call.invoke_async(&mut con)).await
    }

    async fn get_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        let w = window.as_millis().max(1) as u64;
        let index = now_millis() / w;
        let mut con = self.commands.clone();
        let n: Option<u64> = self
            .bounded(
                "counter",
                redis::cmd("GET")
                    .arg(format!("{}cnt:{key}:{index}", self.prefix))
                    .query_async(&mut con),
            )
            .await?;
        Ok(n.unwrap_or(0))
    }

    async fn decr_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        let w = window.as_millis().max(1) as u64;
        let index = now_millis() / w;
        let mut con = self.commands.clone();
        let mut call = self.decr.prepare_invoke();
        call.key(format!("{}cnt:{key}:{index}", self.prefix));
        self.bounded("counter", call.invoke_async(&mut con)).await
    }

    async fn mark(&self, key: &str, ttl: Duration) -> StoreResult<()> {
        let mut con = self.commands.clone();
        let ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let _: () = self
            .bounded(
                "mark",
                redis::cmd("SET")
                    .arg(format!("{}mark:{key}", self.prefix))
                    .arg("1")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut con),
            )
            .await?;
        Ok(())
    }

    async fn is_marked(&self, key: &str) -> StoreResult<bool> {
        let mut con = self.commands.clone();
        let n: i64 = self
            .bounded(
                "mark",
                redis::cmd("EXISTS")
                    .arg(format!("{}mark:{key}", self.prefix))
                    .query_async(&mut con),
            )
            .await?;
        Ok(n > 0)
    }
}

/// Windows are cut by this node's clock: nodes a second apart may count a burst at a window
/// edge in two windows, which a rate limit tolerates.
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The key of lease `name`: hash-tagged with the name, like its grant counter.
fn lease_key(prefix: &str, name: &str) -> String {
    format!("{prefix}lease:{{{name}}}")
}

#[cfg(test)]
mod tests {
    /// The part of a key Redis Cluster hashes: between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> &str {
        match key.find('{') {
            Some(i) => match key[i + 1..].find('}') {
                Some(j) if j > 0 => &key[i + 1..i + 1 + j],
                _ => key,
            },
            None => key,
        }
    }

    #[test]
    fn a_lease_and_its_counter_share_a_hash_slot() {
        for name in [
            "uid:42",
            "queue:7",
            "pop3:alice@example.test",
            "odd}name",
            "{x}",
        ] {
            let lease = super::lease_key("mf:", name);
            let seq = format!("mf:lease-seq:{{{name}}}");
            assert_eq!(hash_tag(&lease), hash_tag(&seq), "{lease} / {seq}");
            assert_ne!(hash_tag(&lease), lease, "{lease} has a hash tag");
        }
    }
    use super::*;

    #[test]
    fn events_round_trip() {
        let a = AccountId(9);
        for e in [
            MailboxEvent::Changed {
                account: a,
                mailbox: MailboxId(3),
                modseq: ModSeq(77),
            },
            MailboxEvent::MailboxesChanged { account: a },
            MailboxEvent::Resync { account: a },
        ] {
            assert_eq!(decode(a, &encode(&e)), Some(e));
        }
        assert_eq!(decode(a, "c x 1"), None);
        // Events from a node that does not stamp them still decode.
        assert_eq!(
            decode(a, "c 5 7"),
            Some(MailboxEvent::Changed {
                account: a,
                mailbox: MailboxId(5),
                modseq: ModSeq(7),
            })
        );
        let age = event_age(&encode(&MailboxEvent::MailboxesChanged { account: a }))
            .expect("a fresh event has an age");
        assert!(age < Duration::from_secs(60), "{age:?}");
        assert_eq!(event_age("c 5 7"), None, "an unstamped event has no age");
        assert_eq!(event_age("m"), None);
        assert_eq!(decode(a, "zzz"), None);
    }
}
