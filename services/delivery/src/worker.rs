//! The queue manager: finds due entries, takes each under a `Coordinator` lease, delivers
//! it, records each recipient's outcome, queues DSNs and removes finished entries.
//!
//! - **One worker per entry.** The lease `delivery:queue:<id>` is taken before the entry is
//!   read and renewed every third of its TTL while the delivery runs; any number of nodes
//!   can poll the same queue. A worker that dies stops renewing; after the TTL another
//!   takes the entry and retries the recipients still `Queued`. (A remote server that
//!   accepted the message just before the crash may then get it twice: SMTP cannot avoid
//!   that, RFC 5321 §6.1.) A worker that learns its lease is lost (a renewal refused, or
//!   none confirmed for a whole TTL) cancels the SMTP attempt in flight, dropping the
//!   connection before the end of DATA, and records nothing; the client also renews the
//!   lease right before `DATA` and sends nothing when it cannot (`lease.rs`). Every queue
//!   write carries the lease's fencing token, so a stale worker cannot overwrite a newer
//!   holder's writes.
//! - **Claimed, then recorded at once.** Before a domain's recipients are attempted, the
//!   attempt is claimed in the store: their attempt count grows and their next attempt
//!   moves to the backoff time, so a crash mid-attempt neither loses the count nor makes
//!   the entry due again at once. Afterwards every outcome of the attempt, and every DSN
//!   it owes, is written in one transaction (`record_outbound_attempt`): either all of it
//!   or nothing, so a failed write never leaves some recipients recorded and others not,
//!   and a DSN is queued exactly once.
//! - **Bounded.** At most `max_concurrent` entries are in flight per node (a semaphore,
//!   taken before the lease so a busy node does not hoard leases), and each poll asks each
//!   shard for at most as many entries as there are free slots, up to [`POLL_BATCH`].
//! - **Sharded.** The store splits its due index into shards
//!   ([`mailfleet_storage::MetadataStore::queue_shards`]; 64 on ScyllaDB, 1 on SQLite). A
//!   node polls only the shards it holds a lease on (`delivery:shard:<n>`, renewed at each
//!   poll), so nodes read different entries instead of all racing for the same head of
//!   the queue. A node with free slots takes every shard nobody holds; a node whose slots
//!   are all busy gives its shards up, so the work moves to nodes that have room. A node
//!   that dies keeps its shards for [`shard_lease_ttl`], then others take them. Shard
//!   leases only spread the reading: the entry's own lease still decides who delivers.
//! - **A busy destination waits aside.** A domain at its concurrency or rate limit gets
//!   no attempt (nothing is counted or claimed), and its recipients move a short wait
//!   ([`throttle_wait`]) later, so they do not stay at the head of the queue where every
//!   poll would read them again in front of entries for other domains. The message body
//!   is read only once some domain is admitted.
//! - **Retries.** A temporary failure waits `retry_base * 2^(attempts-1)`, capped at
//!   `retry_max`; once the message is older than `max_lifetime` a temporary failure is
//!   final.
//! - **Bounces.** Recipients that fail for good get one DSN per attempt, queued as an
//!   entry with the null sender in the same transaction as their state; never for the null
//!   sender. A DSN entry whose recipient is local is delivered to that INBOX by the worker
//!   (at once when the sender is local, otherwise on the poll), a remote one over SMTP.

use crate::client::{self, ClientSettings, HostTls, RcptResult, TlsMode, Transaction};
use crate::dane::{DaneResolver, MxSecurity, TlsaStatus};
use crate::dsn::{self, FailedRecipient};
use crate::lease::LeaseGuard;
use crate::mtasts::{self, PolicyCache};
use crate::route::{Hop, Route, Router};
use crate::Settings;
use bytes::Bytes;
use mailfleet_core::shutdown::Shutdown;
use mailfleet_core::Address;
use mailfleet_reports::TlsPolicyKind;
use mailfleet_storage::{
    Lease, NewOutbound, NewOutboundRecipient, OutboundMessage, QueueId, RecipientState,
    RecipientUpdate, Stores,
};
use mailfleet_telemetry::{DeliveryResult, DeliveryTls, RateLimit};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

/// Most due entries taken from the store per shard and poll.
pub const POLL_BATCH: usize = 256;

/// Entries asked for beyond the free slots (see [`Worker::poll_shard`]).
const POLL_SLACK: usize = 16;

/// The trace id of an entry, for its log lines (`""` for entries queued before trace
/// contexts were kept).
fn trace_id_of(msg: &OutboundMessage) -> &str {
    mailfleet_telemetry::trace::trace_id_of(msg.trace.as_deref().unwrap_or(""))
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The delivery service of one node.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    stores: Stores,
    settings: Settings,
    router: Router,
    client: ClientSettings,
    /// This node's lease holder name.
    holder: String,
    /// Entries this node is delivering now: not leased again while in flight.
    in_flight: Mutex<HashSet<QueueId>>,
    /// The queue shards this node holds a lease on, and where its round over the shards
    /// starts (from its holder name, so nodes start on different shards).
    shards: tokio::sync::Mutex<HashMap<u32, Lease>>,
    shard_offset: u32,
    slots: Arc<tokio::sync::Semaphore>,
    /// Deliveries in progress per recipient domain (`max_per_destination`); entries for
    /// domains with no permit left are dropped from the map when idle.
    destinations: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Idle SMTP connections kept for the next message to the same host.
    connections: client::ConnectionCache,
    /// MTA-STS policies by recipient domain; `None` when `mta_sts` is off.
    mta_sts: Option<PolicyCache>,
    /// DNSSEC-validating lookups for DANE; `None` when `dane` is off.
    dane: Option<DaneResolver>,
    /// Signing keys by sender domain, with when they were read ([`Worker::dkim_keys`]).
    dkim: Mutex<DkimCache>,
    /// Where each session's TLS outcome is counted for TLS-RPT (RFC 8460); unset when
    /// `reports.tlsrpt_enabled` is off.
    tls_reports: std::sync::OnceLock<Arc<mailfleet_reports::TlsCollector>>,
}

type DkimCache = HashMap<String, (std::time::Instant, Option<Arc<crate::dkim::DomainKeys>>)>;

/// How long a domain's signing keys are used before the store is asked again: a rotation
/// or a new key reaches every node within this.
const DKIM_REFRESH: Duration = Duration::from_secs(60);
/// Domains whose keys are cached (sender domains are the hosted ones, so few).
const DKIM_CACHE_DOMAINS: usize = 10_000;

/// The policy type a host's TLS stands for in a TLS report (RFC 8460 §4.4): an MTA-STS
/// policy in `testing` mode is still an STS policy.
fn policy_kind(tls: &HostTls) -> TlsPolicyKind {
    match tls {
        HostTls::Dane(_) | HostTls::Mode(TlsMode::Dane) => TlsPolicyKind::Tlsa,
        HostTls::Mode(TlsMode::Required | TlsMode::Testing) => TlsPolicyKind::Sts,
        HostTls::Mode(_) => TlsPolicyKind::NoPolicyFound,
    }
}

/// What DANE decided for one MX host before MTA-STS is consulted.
enum DanePlan {
    /// DANE does not apply: MTA-STS (or opportunistic TLS) decides.
    None,
    /// TLS as given, whatever MTA-STS says (DANE takes precedence, RFC 8461 §2).
    Tls(HostTls),
    /// The host is not used this attempt (bogus or failed TLSA lookup).
    Skip(String),
}

/// What every step of one attempt on one entry needs to know.
struct AttemptCtx<'a> {
    msg: &'a OutboundMessage,
    /// The lease token the attempt's queue writes carry.
    fence: Option<u64>,
    /// The lease itself, when the attempt runs under one: confirmed before `DATA`.
    guard: Option<&'a LeaseGuard>,
    now: i64,
    /// The entry's version as this attempt last knew it: each claim of the attempt (one
    /// per recipient domain) compares against it and replaces it with what it returns.
    version: std::sync::atomic::AtomicU64,
}

/// What one attempt decided for one recipient.
struct Outcome {
    address: String,
    result: RcptResult,
    remote: Option<String>,
    /// Not attempted: its domain was at a limit. Waits [`throttle_wait`] without an
    /// attempt counted (no claim was made) and keeps its last error.
    throttled: bool,
}

/// The message body of one attempt, read from the blob store the first time a recipient
/// needs it (a domain at its limit, or an entry whose lease is lost before, costs no
/// download), and signed once for every domain that gets it.
struct Body<'a> {
    worker: &'a Worker,
    msg: &'a OutboundMessage,
    raw: tokio::sync::OnceCell<Bytes>,
    signed: tokio::sync::OnceCell<Bytes>,
}

impl<'a> Body<'a> {
    fn new(worker: &'a Worker, msg: &'a OutboundMessage) -> Self {
        Self {
            worker,
            msg,
            raw: tokio::sync::OnceCell::new(),
            signed: tokio::sync::OnceCell::new(),
        }
    }

    /// The stored message.
    async fn raw(&self) -> Result<&Bytes, crate::DeliveryError> {
        self.raw
            .get_or_try_init(|| async {
                Ok::<_, crate::DeliveryError>(
                    self.worker.inner.stores.blobs.get(&self.msg.blob).await?,
                )
            })
            .await
    }

    /// What is sent over SMTP: Return-Path stripped, DKIM-signed when configured.
    async fn signed(&self) -> Result<&Bytes, crate::DeliveryError> {
        self.signed
            .get_or_try_init(|| async {
                let raw = self.raw().await?;
                Ok::<_, crate::DeliveryError>(self.worker.prepare(self.msg, raw).await)
            })
            .await
    }

    /// The stored message if it was read, for DSNs (a DSN is owed only by recipients that
    /// were attempted, so it was).
    async fn for_dsn(&self) -> Result<&Bytes, crate::DeliveryError> {
        self.raw().await
    }
}

/// How long the recipients of a domain at its concurrency or rate limit wait before they
/// are due again: a few polls, short against any retry backoff.
pub fn throttle_wait(poll_interval: Duration) -> Duration {
    (poll_interval * 2).clamp(Duration::from_secs(2), Duration::from_secs(30))
}

/// How long a node keeps a queue shard without renewing it (at each poll): long enough
/// to outlast a slow poll, short enough that a dead node's shards are picked up soon.
pub fn shard_lease_ttl(poll_interval: Duration) -> Duration {
    (poll_interval * 3).max(Duration::from_secs(15))
}

fn shard_key(shard: u32) -> String {
    format!("delivery:shard:{shard}")
}

impl Worker {
    pub fn new(stores: Stores, settings: Settings) -> Result<Self, crate::DeliveryError> {
        let router = Router::new(
            &settings.routes,
            settings.smarthost.as_deref(),
            settings.resolver,
            settings.mx_port,
        )
        .map_err(crate::DeliveryError::Setup)?;
        let setup = |what: &str, e: &dyn std::fmt::Display| {
            crate::DeliveryError::Setup(format!("{what}: {e}"))
        };
        // The trust anchors are read once at start: a changed `tls_ca_file` takes a restart,
        // as the other TLS material does.
        let (verified_tls, mta_sts) = if settings.mta_sts {
            let roots = crate::tls::trust_anchors(settings.tls_ca_file.as_deref())
                .map_err(crate::DeliveryError::Setup)?;
            let smtp = crate::tls::verifying_connector(roots.clone())
                .map_err(|e| setup("verified TLS client", &e))?;
            let https =
                crate::tls::https_connector(roots).map_err(|e| setup("HTTPS client", &e))?;
            (
                Some(smtp),
                Some(PolicyCache::new(https, settings.mta_sts_https_port)),
            )
        } else {
            (None, None)
        };
        // The trust anchor file is read once at start, as `tls_ca_file` is.
        let dane = if settings.dane {
            Some(
                DaneResolver::new(settings.resolver, settings.dnssec_trust_anchor.as_deref())
                    .map_err(crate::DeliveryError::Setup)?,
            )
        } else {
            None
        };
        let tls = if settings.starttls {
            Some(
                crate::tls::opportunistic_connector()
                    .map_err(|e| crate::DeliveryError::Setup(format!("TLS client: {e}")))?,
            )
        } else {
            None
        };
        let client = ClientSettings {
            helo: settings.hostname.clone(),
            connect_timeout: settings.connect_timeout,
            command_timeout: settings.command_timeout,
            tls,
            verified_tls,
        };
        let holder = format!(
            "{}:{}:{:x}",
            settings.hostname,
            std::process::id(),
            rand::random::<u32>()
        );
        let connections = client::ConnectionCache::new(settings.connection_reuse);
        Ok(Self {
            inner: Arc::new(Inner {
                slots: Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent)),
                stores,
                settings,
                router,
                client,
                shard_offset: holder
                    .bytes()
                    .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))),
                holder,
                in_flight: Mutex::new(HashSet::new()),
                shards: tokio::sync::Mutex::new(HashMap::new()),
                destinations: Mutex::new(HashMap::new()),
                connections,
                mta_sts,
                dane,
                dkim: Mutex::new(HashMap::new()),
                tls_reports: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Counts the TLS outcome of every session from now on in `collector` (TLS-RPT).
    pub fn report_tls_to(&self, collector: Arc<mailfleet_reports::TlsCollector>) {
        let _ = self.inner.tls_reports.set(collector);
    }

    /// One session's TLS outcome, for TLS-RPT: `failure` is `None` when TLS was as the
    /// host's policy asked.
    fn report_tls(
        &self,
        domain: &str,
        host: &str,
        policy: mailfleet_reports::TlsPolicyKind,
        addr: Option<std::net::IpAddr>,
        failure: Option<&str>,
    ) {
        if let Some(c) = self.inner.tls_reports.get() {
            c.record(&mailfleet_reports::TlsSession {
                domain,
                policy,
                mx_host: host,
                receiving_ip: addr,
                failure,
            });
        }
    }

    /// Polls the queue until `shutdown`; deliveries in flight then finish (each is bounded
    /// by the SMTP timeouts) before this returns.
    pub async fn run(self, mut shutdown: Shutdown) {
        tracing::info!(holder = %self.inner.holder, "outbound delivery started");
        let mut tick = tokio::time::interval(self.inner.settings.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'run: loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => break,
            }
            loop {
                if let Err(e) = self.poll_once().await {
                    tracing::warn!(error = %e, "outbound queue poll failed");
                    break;
                }
                if self.inner.slots.available_permits() > 0 {
                    break;
                }
                // Every slot is busy and more may be due: look again as soon as one frees
                // rather than a whole poll interval later.
                tokio::select! {
                    p = self.inner.slots.acquire() => drop(p),
                    _ = shutdown.wait() => break 'run,
                }
            }
        }
        self.release_shards().await;
        // Wait for in-flight deliveries by taking every slot, for at most the grace period.
        let all = u32::try_from(self.inner.settings.max_concurrent).unwrap_or(u32::MAX);
        let grace = self.inner.settings.shutdown_grace;
        if tokio::time::timeout(grace, self.inner.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("grace period over; unfinished deliveries will be retried");
        }
        tracing::info!("outbound delivery stopped");
    }

    /// Starts deliveries for the entries due now in the shards this node holds or can take
    /// (see the module comment); returns how many were started.
    pub async fn poll_once(&self) -> Result<usize, mailfleet_storage::StoreError> {
        let inner = &self.inner;
        let shards = inner.stores.meta.queue_shards().max(1);
        let ttl = shard_lease_ttl(inner.settings.poll_interval);
        let mut held = inner.shards.lock().await;
        let mut started = 0;
        let mut failure = None;
        for k in 0..shards {
            if inner.slots.available_permits() == 0 {
                break;
            }
            let shard = (inner.shard_offset.wrapping_add(k)) % shards;
            let ours = match held.get(&shard) {
                Some(lease) => match inner.stores.coord.renew_lease(lease, ttl).await {
                    Ok(true) => true,
                    Ok(false) => {
                        held.remove(&shard);
                        false
                    }
                    Err(e) => {
                        // Unconfirmed, not lost: polling it anyway is safe (entry leases
                        // decide), and the renewal is tried again next poll.
                        tracing::warn!(shard, error = %e, "queue shard lease renewal failed");
                        true
                    }
                },
                None => match inner
                    .stores
                    .coord
                    .acquire_lease(&shard_key(shard), &inner.holder, ttl)
                    .await
                {
                    Ok(Some(lease)) => {
                        held.insert(shard, lease);
                        true
                    }
                    Ok(None) => false,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                },
            };
            if !ours {
                continue;
            }
            match self.poll_shard(shard).await {
                Ok(n) => started += n,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if inner.slots.available_permits() == 0 {
            // Every slot busy: the shards go to nodes with room. This node takes free ones
            // again once its slots free.
            for (_, lease) in held.drain() {
                let _ = inner.stores.coord.release_lease(&lease).await;
            }
        }
        drop(held);
        match failure {
            Some(e) if started == 0 => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, "outbound queue poll failed part-way");
                Ok(started)
            }
            None => Ok(started),
        }
    }

    /// Gives up every queue shard this node holds (at shutdown).
    async fn release_shards(&self) {
        let mut held = self.inner.shards.lock().await;
        for (_, lease) in held.drain() {
            let _ = self.inner.stores.coord.release_lease(&lease).await;
        }
    }

    /// Starts deliveries for the due entries of one shard, as many as there are free slots.
    /// It asks for a few more than that: the first entries may be ones another node has
    /// just leased and not yet claimed (still due until its claim moves them on).
    async fn poll_shard(&self, shard: u32) -> Result<usize, mailfleet_storage::StoreError> {
        let want = (self.inner.slots.available_permits() + POLL_SLACK).min(POLL_BATCH);
        let due = self
            .inner
            .stores
            .meta
            .due_outbound(shard, unix_now(), want)
            .await?;
        let mut started = 0;
        for id in due {
            // All slots busy: the rest waits for the next poll, so this loop never blocks
            // (and keeps seeing the shutdown signal).
            let Ok(permit) = self.inner.slots.clone().try_acquire_owned() else {
                break;
            };
            {
                let mut f = self
                    .inner
                    .in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if !f.insert(id) {
                    continue;
                }
            }
            let lease = match self
                .inner
                .stores
                .coord
                .acquire_lease(
                    &lease_key(id),
                    &self.inner.holder,
                    self.inner.settings.lease_ttl,
                )
                .await
            {
                Ok(Some(l)) => l,
                other => {
                    if let Err(e) = other {
                        tracing::warn!(queue_id = %id, error = %e, "queue lease failed");
                    }
                    self.done(id);
                    continue;
                }
            };
            started += 1;
            let w = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                w.deliver_leased(id, lease).await;
                w.done(id);
            });
        }
        Ok(started)
    }

    /// A permit for one more delivery to `domain` on this node, if it has one left.
    fn destination_slot(&self, domain: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let mut map = self
            .inner
            .destinations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            // Forget idle domains (every permit back) so the map stays bounded.
            let max = self.inner.settings.max_per_destination;
            map.retain(|_, s| s.available_permits() < max);
        }
        map.entry(domain.to_string())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(
                    self.inner.settings.max_per_destination,
                ))
            })
            .clone()
            .try_acquire_owned()
            .ok()
    }

    fn done(&self, id: QueueId) {
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Delivers one entry while holding its lease, renewing it in the background. A lost
    /// lease stops the attempt (see [`Worker::deliver_guarded`]).
    async fn deliver_leased(&self, id: QueueId, lease: Lease) {
        let guard = Arc::new(LeaseGuard::new(
            self.inner.stores.coord.clone(),
            lease,
            self.inner.settings.lease_ttl,
        ));
        let renewer = tokio::spawn({
            let g = guard.clone();
            async move { g.keep_renewed().await }
        });
        if let Err(e) = self.deliver_guarded(id, Some(&guard)).await {
            tracing::warn!(queue_id = %id, error = %e, "delivery attempt failed; will retry");
        }
        renewer.abort();
        if !guard.is_lost() {
            if let Err(e) = self.inner.stores.coord.release_lease(guard.lease()).await {
                tracing::warn!(queue_id = %id, error = %e, "queue lease release failed");
            }
        }
    }

    /// Takes the lease on `id` and delivers it now, if this node is not delivering it
    /// already and nobody else holds it; otherwise leaves it to whoever does, or to the
    /// next poll.
    async fn deliver_now(&self, id: QueueId) {
        {
            let mut f = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !f.insert(id) {
                return;
            }
        }
        let lease = self
            .inner
            .stores
            .coord
            .acquire_lease(
                &lease_key(id),
                &self.inner.holder,
                self.inner.settings.lease_ttl,
            )
            .await;
        match lease {
            Ok(Some(l)) => self.deliver_leased(id, l).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(queue_id = %id, error = %e, "queue lease failed"),
        }
        self.done(id);
    }

    /// One attempt for every due recipient of an entry. The caller must hold the entry's
    /// lease ([`Worker::poll_once`] does); tests call it directly on a private store.
    pub async fn deliver(&self, id: QueueId) -> Result<(), crate::DeliveryError> {
        self.deliver_fenced(id, None).await
    }

    /// [`Worker::deliver`] with the caller's lease token: every queue write carries it, so
    /// the store refuses this attempt's writes once a newer holder has written (a lease that
    /// lapsed mid-delivery, for example over a long SMTP transfer).
    pub async fn deliver_fenced(
        &self,
        id: QueueId,
        fence: Option<u64>,
    ) -> Result<(), crate::DeliveryError> {
        self.deliver_with(id, fence, None).await
    }

    /// [`Worker::deliver_fenced`] under `guard`'s lease (its token is the fence): when the
    /// lease is lost the SMTP attempt is cancelled where it stands (the connection is
    /// dropped, so no end of DATA is ever sent) and nothing is recorded, since the entry
    /// belongs to the new holder now. The attempt's claim stays: the entry is not due again
    /// before its backoff. The client also confirms the lease right before `DATA`.
    pub async fn deliver_guarded(
        &self,
        id: QueueId,
        guard: Option<&LeaseGuard>,
    ) -> Result<(), crate::DeliveryError> {
        self.deliver_with(id, guard.map(LeaseGuard::token), guard)
            .await
    }

    async fn deliver_with(
        &self,
        id: QueueId,
        fence: Option<u64>,
        guard: Option<&LeaseGuard>,
    ) -> Result<(), crate::DeliveryError> {
        let meta = &self.inner.stores.meta;
        // Re-read under the lease: another worker may have finished it meanwhile.
        let Some(msg) = meta.get_outbound(id).await? else {
            return Ok(());
        };
        let now = unix_now();
        let due: Vec<String> = msg
            .recipients
            .iter()
            .filter(|r| r.state == RecipientState::Queued && r.next_attempt <= now)
            .map(|r| r.address.clone())
            .collect();
        if !due.is_empty() {
            // The attempt continues the trace the message was received under (stored with
            // the queue entry), so one trace shows a message from SMTP in to SMTP out.
            let span = tracing::debug_span!(
                parent: None,
                "delivery.attempt",
                otel.name = "outbound delivery attempt",
                otel.kind = "client",
                smtp.queue_id = %id,
                smtp.recipients = due.len() as i64,
            );
            if let Some(parent) = &msg.trace {
                mailfleet_telemetry::trace::set_parent(&span, parent);
            }
            let body = Body::new(self, &msg);
            let ctx = AttemptCtx {
                msg: &msg,
                fence,
                guard,
                now,
                version: msg.version.into(),
            };
            let attempt = self.attempt(&ctx, &due, &body).instrument(span.clone());
            let (outcomes, stopped) = match guard {
                Some(g) => tokio::select! {
                    out = attempt => out,
                    _ = g.lost() => return Err(crate::DeliveryError::LeaseLost(id)),
                },
                None => attempt.await,
            };
            if guard.is_some_and(LeaseGuard::is_lost) {
                return Err(crate::DeliveryError::LeaseLost(id));
            }
            let dsns = self
                .record(&msg, outcomes, &body, now, fence)
                .instrument(span)
                .await?;
            if let Some(e) = stopped {
                return Err(e);
            }
            // A DSN to a local sender goes to its INBOX now rather than a poll later.
            for dsn in dsns {
                Box::pin(self.deliver_now(dsn)).await;
            }
        }
        // Finished when nobody is left waiting.
        if let Some(m) = meta.get_outbound(id).await? {
            if m.recipients
                .iter()
                .all(|r| r.state != RecipientState::Queued)
            {
                // The blob is not deleted here: delete_outbound recorded it as an orphan, and
                // only the sweep may delete it, after its grace period and a claim that sees
                // any message that took the same bytes meanwhile (storage::blob::gc).
                meta.delete_outbound(id, fence).await?;
                tracing::info!(queue_id = %id, "queue entry finished");
            }
        }
        Ok(())
    }

    /// Claims the attempt for `rcpts` in the store before anything is sent: their attempt
    /// is counted and their next attempt moved to the backoff a temporary failure would
    /// get. A worker that crashes mid-attempt thus leaves the entry resting until then
    /// instead of due at once (a tight retry loop against a host that kills it), and the
    /// crashed attempt still counts. The claim is a compare-and-set on the entry's
    /// version: if another worker claimed or recorded since this one read the entry (two
    /// holders of one lease, after the coordinator went back in time), it fails with
    /// `Conflict` and this attempt sends nothing.
    async fn claim(
        &self,
        ctx: &AttemptCtx<'_>,
        rcpts: &[String],
    ) -> Result<(), crate::DeliveryError> {
        let s = &self.inner.settings;
        let claims = rcpts
            .iter()
            .map(|a| {
                let attempts = ctx
                    .msg
                    .recipients
                    .iter()
                    .find(|r| &r.address == a)
                    .map(|r| r.attempts)
                    .unwrap_or(0);
                let delay = backoff(s.retry_base, s.retry_max, attempts);
                (a.clone(), ctx.now.saturating_add(delay.as_secs() as i64))
            })
            .collect();
        let seen = ctx.version.load(std::sync::atomic::Ordering::SeqCst);
        let version = self
            .inner
            .stores
            .meta
            .claim_outbound_attempt(ctx.msg.id, ctx.fence, seen, claims)
            .await?;
        ctx.version
            .store(version, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The bytes to transmit: the stored blob without its leading `Return-Path:` field
    /// (that belongs to final delivery, RFC 5321 §4.4), DKIM-signed when the sender's
    /// domain has keys.
    async fn prepare(&self, msg: &OutboundMessage, blob: &Bytes) -> Bytes {
        let stripped = strip_return_path(blob);
        if !self.inner.settings.dkim_sign {
            return Bytes::copy_from_slice(stripped);
        }
        let Some(domain) = signing_domain(stripped, &msg.sender) else {
            return Bytes::copy_from_slice(stripped);
        };
        let message = Bytes::copy_from_slice(stripped);
        let keys = match self.dkim_keys(&domain).await {
            Ok(Some(k)) => k,
            Ok(None) => return message,
            Err(e) => {
                tracing::warn!(domain, error = %e, "DKIM keys unavailable; sending unsigned");
                return message;
            }
        };
        let for_sign = message.clone();
        // RSA signing is CPU work: off the async workers.
        let signed = tokio::task::spawn_blocking(move || keys.sign(&for_sign).map(Some)).await;
        match signed {
            Ok(Ok(Some(header))) => {
                let mut out = Vec::with_capacity(header.len() + message.len());
                out.extend_from_slice(header.as_bytes());
                out.extend_from_slice(&message);
                Bytes::from(out)
            }
            Ok(Ok(None)) => message,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "DKIM signing failed; sending unsigned");
                message
            }
            Err(e) => {
                tracing::warn!(error = %e, "DKIM signing task failed; sending unsigned");
                message
            }
        }
    }

    /// The keys `domain` signs with, from the metadata store, cached for
    /// [`DKIM_REFRESH`]. Each refresh also moves the domain's keys along their lifecycle
    /// ([`crate::dkim::advance`]) and imports key files an earlier version left in the
    /// data directory.
    async fn dkim_keys(
        &self,
        domain: &str,
    ) -> Result<Option<Arc<crate::dkim::DomainKeys>>, crate::dkim::DkimError> {
        if let Some((at, keys)) = self
            .inner
            .dkim
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
        {
            if at.elapsed() < DKIM_REFRESH {
                return Ok(keys.clone());
            }
        }
        let meta = self.inner.stores.meta.as_ref();
        let now = unix_now();
        let s = &self.inner.settings;
        crate::dkim::import_files(meta, &s.data_dir, domain, now).await?;
        let changed = crate::dkim::advance(meta, domain, now, s.dkim_lifecycle).await?;
        if !changed.is_empty() {
            tracing::info!(domain, selectors = ?changed, "DKIM keys moved along their rotation");
        }
        let keys = crate::dkim::signing_keys(meta, domain).await?.map(Arc::new);
        let mut cache = self.inner.dkim.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= DKIM_CACHE_DOMAINS {
            cache.clear();
        }
        cache.insert(
            domain.to_string(),
            (std::time::Instant::now(), keys.clone()),
        );
        Ok(keys)
    }

    /// Routes and sends to each recipient domain in turn; recipients of a null-sender
    /// entry (a DSN) that are local go to their INBOX instead. Returns the outcomes so far,
    /// and the store error that stopped the attempt early if one did (a failed claim: no
    /// later domain is tried).
    async fn attempt(
        &self,
        ctx: &AttemptCtx<'_>,
        due: &[String],
        body: &Body<'_>,
    ) -> (Vec<Outcome>, Option<crate::DeliveryError>) {
        let mut out = Vec::new();
        let remote = if ctx.msg.sender.is_empty() {
            match self.deliver_local(ctx, due, body).await {
                Ok((done, remote)) => {
                    out.extend(done);
                    remote
                }
                Err(e) => return (out, Some(e)),
            }
        } else {
            due.to_vec()
        };
        if remote.is_empty() {
            return (out, None);
        }
        let mut by_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in remote {
            match r.rsplit_once('@') {
                Some((_, d)) => by_domain
                    .entry(d.to_ascii_lowercase())
                    .or_default()
                    .push(r.clone()),
                None => out.push(Outcome {
                    address: r.clone(),
                    result: RcptResult::Permanent("553 5.1.3 bad recipient address".into()),
                    remote: None,
                    throttled: false,
                }),
            }
        }
        for (domain, rcpts) in by_domain {
            match self.attempt_domain(ctx, &domain, rcpts, body).await {
                Ok(o) => out.extend(o),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    /// Delivers the local recipients among `due` (of a null-sender entry: a DSN queued for
    /// a local sender) to their INBOX; returns their outcomes and the recipients left for
    /// SMTP. Local delivery is claimed like an SMTP attempt, and is at least once like one:
    /// a crash between the append and the record delivers again on the retry.
    async fn deliver_local(
        &self,
        ctx: &AttemptCtx<'_>,
        due: &[String],
        body: &Body<'_>,
    ) -> Result<(Vec<Outcome>, Vec<String>), crate::DeliveryError> {
        let stores = &self.inner.stores;
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for r in due {
            match Address::parse(r) {
                Ok(a) => match mailfleet_smtp::local::resolve(stores.meta.as_ref(), &a).await? {
                    mailfleet_smtp::local::Resolution::NotLocal => remote.push(r.clone()),
                    res => local.push((r.clone(), res)),
                },
                // Not an address the directory knows: SMTP routing decides (and refuses).
                Err(_) => remote.push(r.clone()),
            }
        }
        if local.is_empty() {
            return Ok((Vec::new(), remote));
        }
        let names: Vec<String> = local.iter().map(|(a, _)| a.clone()).collect();
        let blob = body.raw().await?;
        self.claim(ctx, &names).await?;
        // Final delivery adds the envelope sender (RFC 5321 §4.4); a DSN's is `<>`.
        let message = if blob.len() >= 12 && blob[..12].eq_ignore_ascii_case(b"return-path:") {
            blob.clone()
        } else {
            let mut m = format!("Return-Path: <{}>\r\n", ctx.msg.sender).into_bytes();
            m.extend_from_slice(blob);
            Bytes::from(m)
        };
        let mut out = Vec::with_capacity(local.len());
        for (address, res) in local {
            let result = match res {
                mailfleet_smtp::local::Resolution::Local(rcpts) => {
                    match mailfleet_smtp::local::deliver(
                        stores,
                        &rcpts,
                        message.clone(),
                        ctx.now,
                        false,
                        ctx.msg.trace.as_deref(),
                        mailfleet_smtp::local::Folder::Inbox,
                    )
                    .await
                    {
                        Ok(_) => {
                            tracing::info!(queue_id = %ctx.msg.id, rcpt = %address, "delivered locally");
                            RcptResult::Accepted("250 2.0.0 delivered locally".into())
                        }
                        Err(e) => {
                            RcptResult::Temporary(format!("451 4.3.0 local delivery failed: {e}"))
                        }
                    }
                }
                _ => RcptResult::Permanent("550 5.1.1 no such local user".into()),
            };
            out.push(Outcome {
                address,
                result,
                remote: None,
                throttled: false,
            });
        }
        Ok((out, remote))
    }

    /// One domain's recipients: limits, routing, the claim, then each host in turn.
    /// `Err` only when the claim could not be written (nothing was sent).
    /// One domain's attempt, counted in `mailfleet_delivery_attempts_total`: one per
    /// recipient outcome, under the TLS the last host tried was held to (`none` when no
    /// host was reached, or the host did not offer STARTTLS to an opportunistic attempt is
    /// not told apart from one that did: the policy is what the label says).
    async fn attempt_domain(
        &self,
        ctx: &AttemptCtx<'_>,
        domain: &str,
        rcpts: Vec<String>,
        body: &Body<'_>,
    ) -> Result<Vec<Outcome>, crate::DeliveryError> {
        let used = std::sync::Mutex::new(DeliveryTls::None);
        let span = tracing::debug_span!(
            "delivery.domain",
            otel.name = "deliver to domain",
            smtp.domain = domain,
            smtp.recipients = rcpts.len() as i64,
        );
        let out = self
            .attempt_domain_inner(ctx, domain, rcpts, body, &used)
            .instrument(span)
            .await?;
        let m = mailfleet_telemetry::metrics();
        for o in out.iter().filter(|o| !o.throttled) {
            let result = match o.result {
                RcptResult::Accepted(_) => DeliveryResult::Delivered,
                RcptResult::Temporary(_) => DeliveryResult::Deferred,
                RcptResult::Permanent(_) => DeliveryResult::Bounced,
            };
            m.delivery_attempt(result, *used.lock().unwrap_or_else(|p| p.into_inner()));
        }
        Ok(out)
    }

    async fn attempt_domain_inner(
        &self,
        ctx: &AttemptCtx<'_>,
        domain: &str,
        rcpts: Vec<String>,
        body: &Body<'_>,
        used: &std::sync::Mutex<DeliveryTls>,
    ) -> Result<Vec<Outcome>, crate::DeliveryError> {
        let msg = ctx.msg;
        let every = |result: RcptResult, remote: Option<String>| -> Vec<Outcome> {
            rcpts
                .iter()
                .map(|a| Outcome {
                    address: a.clone(),
                    result: result.clone(),
                    remote: remote.clone(),
                    throttled: false,
                })
                .collect()
        };
        // Per-destination limits: a domain at its limit is skipped this round. Its
        // recipients get no claim, so no attempt is counted and no backoff grows; they
        // wait a short while aside (see `throttle_wait`).
        let waiting = |why: &str| -> Vec<Outcome> {
            rcpts
                .iter()
                .map(|a| Outcome {
                    address: a.clone(),
                    result: RcptResult::Temporary(why.to_string()),
                    remote: None,
                    throttled: true,
                })
                .collect()
        };
        let Some(_slot) = self.destination_slot(domain) else {
            mailfleet_telemetry::metrics()
                .rate_limit_hit(RateLimit::DeliveryDestinationConcurrency);
            tracing::debug!(domain, "destination concurrency limit reached; waiting");
            return Ok(waiting("destination concurrency limit"));
        };
        let per_minute = self.inner.settings.max_per_destination_per_minute;
        if per_minute > 0 {
            match self
                .inner
                .stores
                .coord
                .incr_counter(&format!("dest-rate:{domain}"), Duration::from_secs(60))
                .await
            {
                Ok(n) if n > u64::from(per_minute) => {
                    mailfleet_telemetry::metrics()
                        .rate_limit_hit(RateLimit::DeliveryDestinationRate);
                    tracing::debug!(domain, "destination rate limit reached; waiting");
                    return Ok(waiting("destination rate limit"));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(domain, error = %e, "destination rate count failed; waiting");
                    return Ok(waiting("destination rate count unavailable"));
                }
            }
        }
        // Admitted: now the body is worth reading (once per attempt, for every domain).
        let body = body.signed().await?;
        self.claim(ctx, &rcpts).await?;
        let hops = match self.inner.router.route(domain).await {
            Ok(Route::Hosts(h)) => h,
            Ok(Route::Refused(why)) => {
                return Ok(every(RcptResult::Permanent(format!("550 {why}")), None))
            }
            Err(e) => return Ok(every(RcptResult::Temporary(format!("451 4.4.3 {e}")), None)),
        };
        let hops = match self.plan_hosts(domain, hops).await {
            Ok(h) => h,
            Err(refusal) => return Ok(every(RcptResult::Temporary(refusal), None)),
        };
        let tx = Transaction {
            sender: &msg.sender,
            recipients: &rcpts,
            message: body,
            lease: ctx.guard,
        };
        let mut last = String::from("451 4.4.1 no host could be reached");
        for (hop, tls) in &hops {
            let tls = match tls {
                Ok(t) => t,
                Err(refusal) => {
                    tracing::info!(host = %hop.host, error = %refusal, "host unusable; trying the next");
                    if refusal.contains("DANE") {
                        // A bogus or failed TLSA lookup rules the host out: a DANE failure.
                        self.report_tls(
                            domain,
                            &hop.host,
                            TlsPolicyKind::Tlsa,
                            None,
                            Some(refusal),
                        );
                    }
                    last = refusal.clone();
                    continue;
                }
            };
            let addrs = match self.inner.router.addresses(hop).await {
                Ok(a) => a,
                Err(e) => {
                    last = format!("451 4.4.3 {e}");
                    continue;
                }
            };
            *used.lock().unwrap_or_else(|p| p.into_inner()) = match tls {
                HostTls::Dane(_) => DeliveryTls::Dane,
                HostTls::Mode(TlsMode::Required) => DeliveryTls::MtaSts,
                HostTls::Mode(_) => DeliveryTls::Opportunistic,
            };
            for addr in addrs {
                match client::deliver(
                    &self.inner.client,
                    &self.inner.connections,
                    addr,
                    &hop.host,
                    tls,
                    &tx,
                )
                .await
                {
                    Ok(results) => {
                        self.report_tls(domain, &hop.host, policy_kind(tls), Some(addr.ip()), None);
                        return Ok(rcpts
                            .iter()
                            .zip(results)
                            .map(|(a, result)| Outcome {
                                address: a.clone(),
                                result,
                                remote: Some(hop.host.clone()),
                                throttled: false,
                            })
                            .collect());
                    }
                    Err(e) => {
                        tracing::info!(host = %hop.host, %addr, error = %e, "host unusable; trying the next");
                        if e.tls_required {
                            let why = e.to_string();
                            self.report_tls(
                                domain,
                                &hop.host,
                                policy_kind(tls),
                                Some(addr.ip()),
                                Some(&why),
                            );
                        }
                        last = if e.tls_required {
                            format!("451 4.7.5 {e}")
                        } else {
                            format!("451 4.4.1 {e}")
                        };
                    }
                }
            }
        }
        Ok(every(RcptResult::Temporary(last), None))
    }

    /// The hosts to try, each with its TLS, or with the temporary failure that rules it out
    /// this attempt; `Err` when no host is left at all.
    ///
    /// DANE is decided first (RFC 7672 §2.2). The validated MX lookup is tri-state: a
    /// secure MX RRset replaces the routing resolver's hosts with the validated ones (a
    /// forged answer to the non-validating lookup must not add a host); an insecure one
    /// leaves the hosts to MTA-STS or opportunistic TLS; a bogus or failed one defers the
    /// whole domain with `451 4.7.5`. Then per validated host: usable, secure TLSA records
    /// (or a secure TLSA RRset without usable ones, or a bogus one) settle it by DANE, and
    /// MTA-STS, which DANE takes precedence over (RFC 8461 §2), applies only to the others.
    async fn plan_hosts(
        &self,
        domain: &str,
        hops: Vec<Hop>,
    ) -> Result<Vec<(Hop, Result<HostTls, String>)>, String> {
        let mut hops = hops;
        let mut plans = Vec::with_capacity(hops.len());
        match &self.inner.dane {
            Some(dane) if self.inner.router.is_dns_routed(domain) => match dane.mx(domain).await {
                MxSecurity::Failed(why) => return Err(format!("451 4.7.5 DANE: {why}")),
                MxSecurity::Insecure => plans.extend(hops.iter().map(|_| DanePlan::None)),
                MxSecurity::Secure(validated) => {
                    hops = secure_hops(&validated, self.inner.settings.mx_port);
                    if hops.is_empty() {
                        return Err(format!(
                            "451 4.7.5 DANE: the secure MX records of {domain} name no usable host"
                        ));
                    }
                    for hop in &hops {
                        plans.push(match dane.tlsa(&hop.host, domain).await {
                            TlsaStatus::Unprotected => DanePlan::None,
                            TlsaStatus::Unusable => {
                                DanePlan::Tls(HostTls::Mode(TlsMode::Opportunistic))
                            }
                            TlsaStatus::Required(e) => DanePlan::Tls(HostTls::Dane(e)),
                            TlsaStatus::Failed(e) => DanePlan::Skip(format!("451 4.7.5 DANE: {e}")),
                        });
                    }
                }
            },
            _ => plans.extend(hops.iter().map(|_| DanePlan::None)),
        }
        let others: Vec<Hop> = hops
            .iter()
            .zip(&plans)
            .filter(|(_, p)| matches!(p, DanePlan::None))
            .map(|(h, _)| h.clone())
            .collect();
        let settled_by_dane = others.len() < hops.len();
        let (allowed, mode) = if others.is_empty() {
            (Vec::new(), TlsMode::Opportunistic)
        } else {
            match self.mta_sts(domain, others).await {
                Ok(m) => m,
                Err(refusal) if !settled_by_dane => return Err(refusal),
                Err(refusal) => {
                    tracing::info!(domain, %refusal, "MTA-STS allows none of the hosts DANE does not cover");
                    (Vec::new(), TlsMode::Opportunistic)
                }
            }
        };
        Ok(hops
            .into_iter()
            .zip(plans)
            .filter_map(|(hop, plan)| match plan {
                DanePlan::Tls(t) => Some((hop, Ok(t))),
                DanePlan::Skip(why) => Some((hop, Err(why))),
                DanePlan::None => allowed
                    .iter()
                    .any(|a| a.host == hop.host)
                    .then_some((hop, Ok(HostTls::Mode(mode)))),
            })
            .collect())
    }

    /// Applies `domain`'s MTA-STS policy to its MX hosts: the hosts to try and the TLS they
    /// need, or the temporary failure when an enforced policy allows none of them.
    ///
    /// Only DNS-routed domains are checked: a static route or smarthost is the operator's
    /// choice of next hop, not a name DNS could have forged. A refusal is temporary (4.7.5)
    /// because the policy or the MX records may be mid-change; it bounces only once the
    /// message outlives `max_lifetime`, like any other 4xx.
    async fn mta_sts(&self, domain: &str, hops: Vec<Hop>) -> Result<(Vec<Hop>, TlsMode), String> {
        let Some(cache) = &self.inner.mta_sts else {
            return Ok((hops, TlsMode::Opportunistic));
        };
        if !self.inner.router.is_dns_routed(domain) {
            return Ok((hops, TlsMode::Opportunistic));
        }
        let Some(policy) = cache.policy_for(&self.inner.router, domain).await else {
            return Ok((hops, TlsMode::Opportunistic));
        };
        match policy.mode {
            mtasts::Mode::None => Ok((hops, TlsMode::Opportunistic)),
            mtasts::Mode::Testing => {
                for hop in hops.iter().filter(|h| !policy.allows(&h.host)) {
                    tracing::warn!(domain, mx = %hop.host,
                        "MTA-STS testing: MX not in the policy; an enforced policy would skip it");
                }
                Ok((hops, TlsMode::Testing))
            }
            mtasts::Mode::Enforce => {
                let (allowed, refused): (Vec<Hop>, Vec<Hop>) =
                    hops.into_iter().partition(|h| policy.allows(&h.host));
                for hop in &refused {
                    tracing::info!(domain, mx = %hop.host, "MTA-STS: MX not in the policy; skipped");
                    self.report_tls(
                        domain,
                        &hop.host,
                        TlsPolicyKind::Sts,
                        None,
                        Some("MX not in the MTA-STS policy"),
                    );
                }
                if allowed.is_empty() {
                    return Err(format!(
                        "451 4.7.5 MTA-STS: no MX of {domain} matches its policy"
                    ));
                }
                Ok((allowed, TlsMode::Required))
            }
        }
    }

    /// Writes every recipient's new state and queues the attempt's DSNs in one store
    /// transaction ([`mailfleet_storage::MetadataStore::record_outbound_attempt`]): a
    /// failure writes neither, so the retry neither resends to a recipient recorded as
    /// accepted nor repeats a DSN. Returns the DSN entries for local senders, which the
    /// caller delivers at once.
    async fn record(
        &self,
        msg: &OutboundMessage,
        outcomes: Vec<Outcome>,
        body: &Body<'_>,
        now: i64,
        fence: Option<u64>,
    ) -> Result<Vec<QueueId>, crate::DeliveryError> {
        let s = &self.inner.settings;
        let age = now.saturating_sub(msg.created_at);
        let expired = age >= s.max_lifetime.as_secs() as i64;
        let warn_after = s.delay_warning.as_secs() as i64;
        let mut updates = Vec::new();
        let mut failed = Vec::new();
        let mut delayed = Vec::new();
        for o in outcomes {
            let attempts = msg
                .recipients
                .iter()
                .find(|r| r.address == o.address)
                .map(|r| r.attempts)
                .unwrap_or(0);
            let update = match &o.result {
                _ if o.throttled => {
                    let rcpt = msg.recipients.iter().find(|r| r.address == o.address);
                    RecipientUpdate {
                        state: RecipientState::Queued,
                        next_attempt: now
                            .saturating_add(throttle_wait(s.poll_interval).as_secs() as i64),
                        // Not attempted: the last real error stays what it was.
                        last_error: rcpt.and_then(|r| r.last_error.clone()),
                        delay_warned: false,
                        fence,
                    }
                }
                RcptResult::Accepted(reply) => {
                    tracing::info!(queue_id = %msg.id, trace_id = trace_id_of(msg), rcpt = %o.address, attempt = attempts, relay = o.remote.as_deref().unwrap_or(""), %reply, "delivered");
                    RecipientUpdate {
                        state: RecipientState::Delivered,
                        next_attempt: now,
                        last_error: None,
                        delay_warned: false,
                        fence,
                    }
                }
                RcptResult::Temporary(reply) if !expired => {
                    let delay = backoff(s.retry_base, s.retry_max, attempts);
                    tracing::info!(queue_id = %msg.id, trace_id = trace_id_of(msg), rcpt = %o.address, attempt = attempts, relay = o.remote.as_deref().unwrap_or(""), %reply, retry_in_secs = delay.as_secs(), "deferred");
                    let rcpt = msg.recipients.iter().find(|r| r.address == o.address);
                    // One delay warning per recipient, once it has waited `delay_warning`
                    // (Postfix's delay_warning_time), if NOTIFY allows it.
                    let warn = warn_after > 0
                        && age >= warn_after
                        && !msg.sender.is_empty()
                        && rcpt.is_some_and(|r| {
                            !r.delay_warned && wants_delay_dsn(r.notify.as_deref())
                        });
                    if warn {
                        delayed.push(FailedRecipient {
                            address: o.address.clone(),
                            orcpt: rcpt.and_then(|r| r.orcpt.clone()),
                            diagnostic: reply.clone(),
                            remote_mta: o.remote.clone(),
                        });
                    }
                    RecipientUpdate {
                        state: RecipientState::Queued,
                        next_attempt: now.saturating_add(delay.as_secs() as i64),
                        last_error: Some(reply.clone()),
                        delay_warned: warn,
                        fence,
                    }
                }
                RcptResult::Temporary(reply) | RcptResult::Permanent(reply) => {
                    let reply = if matches!(o.result, RcptResult::Temporary(_)) {
                        format!("{reply} (gave up: message queued too long)")
                    } else {
                        reply.clone()
                    };
                    tracing::info!(queue_id = %msg.id, trace_id = trace_id_of(msg), rcpt = %o.address, attempt = attempts, relay = o.remote.as_deref().unwrap_or(""), %reply, "bounced");
                    let notify = msg
                        .recipients
                        .iter()
                        .find(|r| r.address == o.address)
                        .and_then(|r| r.notify.as_deref());
                    if wants_failure_dsn(notify) {
                        failed.push(FailedRecipient {
                            address: o.address.clone(),
                            orcpt: msg
                                .recipients
                                .iter()
                                .find(|r| r.address == o.address)
                                .and_then(|r| r.orcpt.clone()),
                            diagnostic: reply.clone(),
                            remote_mta: o.remote.clone(),
                        });
                    }
                    RecipientUpdate {
                        state: RecipientState::Failed,
                        next_attempt: now,
                        last_error: Some(reply),
                        delay_warned: false,
                        fence,
                    }
                }
            };
            updates.push((o.address, update));
        }
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let mut dsns = Vec::new();
        let blob = if failed.is_empty() && delayed.is_empty() {
            Bytes::new()
        } else {
            body.for_dsn().await?.clone()
        };
        // The DSN reports what was sent, without the Return-Path final delivery added.
        let body = strip_return_path(&blob);
        if !failed.is_empty() {
            dsns.extend(
                self.dsn_entry(msg, &failed, body, now, dsn::Kind::Failure)
                    .await?,
            );
        }
        if !delayed.is_empty() {
            let until = msg
                .created_at
                .saturating_add(s.max_lifetime.as_secs() as i64);
            let kind = dsn::Kind::Delay {
                will_retry_until: until,
            };
            dsns.extend(self.dsn_entry(msg, &delayed, body, now, kind).await?);
        }
        let queued = self
            .inner
            .stores
            .meta
            .record_outbound_attempt(msg.id, fence, updates, dsns)
            .await?;
        for q in &queued {
            tracing::info!(queue_id = %msg.id, dsn_queue_id = %q, sender = %msg.sender, "DSN queued");
        }
        if queued.is_empty() || !self.sender_is_local(&msg.sender).await {
            return Ok(Vec::new());
        }
        Ok(queued)
    }

    /// Whether the envelope sender's domain is hosted here (its DSNs are delivered at once).
    async fn sender_is_local(&self, sender: &str) -> bool {
        let Some((_, domain)) = sender.rsplit_once('@') else {
            return false;
        };
        matches!(
            self.inner
                .stores
                .meta
                .get_domain(&domain.to_ascii_lowercase())
                .await,
            Ok(Some(_))
        )
    }

    /// The queue entry of a DSN for `failed` to the envelope sender, with the null sender
    /// (so a DSN never bounces), its body already stored; `None` for the null sender or an
    /// unusable sender address. The entry is queued with the attempt's outcomes; the worker
    /// delivers it like any other, into the INBOX when the sender is local.
    async fn dsn_entry(
        &self,
        msg: &OutboundMessage,
        failed: &[FailedRecipient],
        body: &[u8],
        now: i64,
        kind: dsn::Kind,
    ) -> Result<Option<NewOutbound>, crate::DeliveryError> {
        if msg.sender.is_empty() {
            return Ok(None);
        }
        if Address::parse(&msg.sender).is_err() {
            tracing::warn!(sender = %msg.sender, "bad sender address; no DSN sent");
            return Ok(None);
        }
        let s = &self.inner.settings;
        let dsn = dsn::build(
            &dsn::Report {
                kind,
                hostname: &s.hostname,
                sender: &msg.sender,
                envid: msg.envid.as_deref(),
                arrival: msg.created_at,
                failed,
                original: body,
                // A delay warning returns headers only: the message is still on its way.
                return_full: kind == dsn::Kind::Failure
                    && msg.ret == Some(mailfleet_storage::DsnRet::Full),
            },
            now,
            msg.id.0 as u64 ^ rand::random::<u64>(),
        );
        let size = dsn.len() as u64;
        // Stored (and pinned) before the record that references it: a record that fails
        // leaves an unreferenced blob, which the orphan sweep removes.
        let blob = self.inner.stores.put_blob(Bytes::from(dsn)).await?;
        mailfleet_telemetry::metrics().dsn_sent(kind != dsn::Kind::Failure);
        Ok(Some(NewOutbound {
            blob,
            size,
            sender: String::new(),
            account: None,
            envid: None,
            ret: None,
            recipients: vec![NewOutboundRecipient {
                address: msg.sender.clone(),
                notify: None,
                orcpt: None,
            }],
            created_at: now,
            // The report belongs to the original message: its delivery joins that trace.
            trace: msg.trace.clone(),
        }))
    }
}

/// RFC 3461 §4.1: without NOTIFY a failure is reported; with it, only when it lists
/// `FAILURE` (`NEVER` stands alone).
/// RFC 3461 §4.1: a delay DSN only when NOTIFY asks for DELAY, or was not given (the
/// default leaves delay notices to the MTA, and a sender waiting days deserves one).
pub fn wants_delay_dsn(notify: Option<&str>) -> bool {
    notify.is_none_or(|n| n.split(',').any(|k| k.trim().eq_ignore_ascii_case("DELAY")))
}

pub fn wants_failure_dsn(notify: Option<&str>) -> bool {
    notify.is_none_or(|n| {
        n.split(',')
            .any(|k| k.trim().eq_ignore_ascii_case("FAILURE"))
    })
}

/// The hops for a domain whose MX RRset validated: exactly its hosts, in preference order,
/// without the null MX (`.`, RFC 7505) or duplicates.
fn secure_hops(validated: &[String], port: u16) -> Vec<Hop> {
    let mut seen = HashSet::new();
    validated
        .iter()
        .filter(|h| !h.is_empty() && seen.insert(h.as_str()))
        .map(|h| Hop {
            host: h.clone(),
            port,
        })
        .collect()
}

fn lease_key(id: QueueId) -> String {
    format!("delivery:queue:{id}")
}

/// The wait before the next attempt after `attempts` earlier ones.
pub fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// The message without a leading `Return-Path:` field (and its folded lines).
pub fn strip_return_path(blob: &[u8]) -> &[u8] {
    if blob.len() < 12 || !blob[..12].eq_ignore_ascii_case(b"return-path:") {
        return blob;
    }
    let mut pos = 0;
    loop {
        match blob[pos..].windows(2).position(|w| w == b"\r\n") {
            Some(p) => {
                pos += p + 2;
                // A folded continuation line starts with space or tab.
                if !matches!(blob.get(pos), Some(b' ') | Some(b'\t')) {
                    return &blob[pos..];
                }
            }
            None => return blob,
        }
    }
}

/// The domain to sign for: the `From:` address's domain, since that is the one DMARC
/// aligns with; the envelope sender's when `From:` has no usable address.
fn signing_domain(message: &[u8], sender: &str) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(message);
    let from = parsed
        .as_ref()
        .and_then(|m| m.from())
        .and_then(|f| f.first())
        .and_then(|a| a.address())
        .and_then(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()));
    from.or_else(|| sender.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
        .filter(|d| !d.is_empty() && !d.contains(['/', '\\']) && d != "." && d != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_path_is_stripped() {
        assert_eq!(
            strip_return_path(b"Return-Path: <a@b>\r\nReceived: x\r\n\r\nbody\r\n"),
            b"Received: x\r\n\r\nbody\r\n"
        );
        assert_eq!(
            strip_return_path(b"return-path:\r\n <a@b>\r\nFrom: x\r\n\r\n"),
            b"From: x\r\n\r\n"
        );
        assert_eq!(strip_return_path(b"From: x\r\n\r\n"), b"From: x\r\n\r\n");
    }

    #[test]
    fn notify_decides_failure_dsns() {
        assert!(wants_failure_dsn(None));
        assert!(wants_failure_dsn(Some("SUCCESS,failure")));
        assert!(!wants_failure_dsn(Some("NEVER")));
        assert!(!wants_failure_dsn(Some("DELAY")));
    }

    #[test]
    fn only_validated_mx_hosts_are_used() {
        let hops = secure_hops(
            &[
                "mx1.d.test".into(),
                "".into(),
                "mx2.d.test".into(),
                "mx1.d.test".into(),
            ],
            2525,
        );
        let hosts: Vec<(&str, u16)> = hops.iter().map(|h| (h.host.as_str(), h.port)).collect();
        assert_eq!(hosts, [("mx1.d.test", 2525), ("mx2.d.test", 2525)]);
        assert!(
            secure_hops(&["".into()], 25).is_empty(),
            "a null MX names no host"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let b = |n| backoff(Duration::from_secs(60), Duration::from_secs(600), n).as_secs();
        assert_eq!(
            [b(0), b(1), b(2), b(3), b(4), b(40)],
            [60, 120, 240, 480, 600, 600]
        );
    }

    #[test]
    fn signing_domain_prefers_from() {
        assert_eq!(
            signing_domain(b"From: A <a@Sign.Test>\r\n\r\n", "x@env.test").as_deref(),
            Some("sign.test")
        );
        assert_eq!(
            signing_domain(b"Subject: x\r\n\r\n", "x@env.test").as_deref(),
            Some("env.test")
        );
        assert_eq!(signing_domain(b"From: a@../x\r\n\r\n", "").as_deref(), None);
    }
}
