//! The reports task of one node: flushes the collectors to the metadata store every
//! `flush_secs` (and once more at shutdown), and every `interval_secs` runs the daily
//! sender under a cluster-wide lease, so that one node sends a domain's report however
//! many nodes collected for it.

use crate::{DmarcCollector, ReportSender, TlsCollector};
use mailfleet_core::shutdown::Shutdown;
use mailfleet_storage::Stores;
use std::sync::Arc;
use std::time::Duration;

/// The lease the sender runs under.
pub const SENDER_LEASE: &str = "reports:sender";
/// How long the lease is held: longer than a run takes (a run queues a few messages per
/// reporting domain), short enough that another node takes over soon after a crash.
const LEASE_TTL: Duration = Duration::from_secs(600);
/// The first send after start waits this long: a node that restarts in a loop does not
/// read every record each time, and the collectors of the previous run have flushed.
const FIRST_RUN_DELAY: Duration = Duration::from_secs(60);

/// What the task holds.
pub struct ReportService {
    pub stores: Stores,
    pub dmarc: Option<Arc<DmarcCollector>>,
    pub tls: Option<Arc<TlsCollector>>,
    pub sender: ReportSender,
    pub flush_every: Duration,
    pub send_every: Duration,
    /// This node's lease holder name.
    pub holder: String,
}

impl ReportService {
    /// Runs until `shutdown`, then writes what the collectors hold.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut flush = tokio::time::interval(self.flush_every.max(Duration::from_secs(1)));
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let first = tokio::time::Instant::now() + FIRST_RUN_DELAY.min(self.send_every);
        let mut send = tokio::time::interval_at(first, self.send_every.max(Duration::from_secs(1)));
        send.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = flush.tick() => self.flush().await,
                _ = send.tick() => {
                    self.flush().await;
                    self.send().await;
                }
                _ = shutdown.wait() => break,
            }
        }
        self.flush().await;
    }

    /// Moves the collected counts to the store; counts whose write failed stay in memory.
    pub async fn flush(&self) {
        let meta = self.stores.meta.as_ref();
        if let Some(c) = &self.dmarc {
            if let Err(e) = c.flush(meta).await {
                tracing::warn!(error = %e, "DMARC report counts not stored; kept for the next flush");
            }
        }
        if let Some(c) = &self.tls {
            if let Err(e) = c.flush(meta).await {
                tracing::warn!(error = %e, "TLS report counts not stored; kept for the next flush");
            }
        }
    }

    /// One run of the sender, if this node gets the lease.
    async fn send(&self) {
        let coord = self.stores.coord.as_ref();
        let lease = match coord
            .acquire_lease(SENDER_LEASE, &self.holder, LEASE_TTL)
            .await
        {
            Ok(Some(l)) => l,
            Ok(None) => {
                tracing::debug!("another node sends the reports this time");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "report sender lease not available; trying next run");
                return;
            }
        };
        let summary = self.sender.run_once(crate::unix_now(), false).await;
        if summary != Default::default() {
            tracing::info!(
                dmarc = summary.dmarc_reports,
                tls = summary.tls_reports,
                discarded = summary.discarded,
                deferred = summary.deferred,
                "aggregate reports run"
            );
        }
        if let Err(e) = coord.release_lease(&lease).await {
            tracing::debug!(error = %e, "report sender lease not released; it expires");
        }
    }
}
