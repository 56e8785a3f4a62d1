//! Storage and coordination metrics: latency and errors of every backend call, the blob
//! cache, the group commit, and what the coordinator does for the front-ends.
//!
//! The storage crate wraps each backend in a metered layer (`mailfleet_storage::metered`)
//! that calls [`StorageMetrics::observe`] once per call, so every backend is measured the
//! same way and the backends themselves stay free of metrics code. Operation names are the
//! trait methods' names with a prefix per trait (`blob_put`, `meta_append`,
//! `coord_publish`): a fixed set chosen by the code, never by a client.

use crate::commands::LATENCY_BUCKETS;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use std::time::Duration;

/// Storage calls are faster than commands: from a cached SQLite read (tens of
/// microseconds) to a slow S3 PUT.
const STORAGE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Writes per group commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

pub struct StorageMetrics {
    durations: HistogramVec,
    errors: IntCounterVec,
    cache_hit: IntCounter,
    cache_miss: IntCounter,
    batch: Histogram,
    event_lag: Histogram,
    resyncs: IntCounter,
    leases_held: IntGauge,
    leases_lost: IntCounter,
}

impl StorageMetrics {
    pub(crate) fn new(r: &Registry) -> prometheus::Result<Self> {
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "mailfleet_storage_operation_duration_seconds",
                "Time of each storage call, by backend and operation, failed calls included.",
            )
            .buckets(STORAGE_BUCKETS.to_vec()),
            &["backend", "operation"],
        )?;
        r.register(Box::new(durations.clone()))?;
        let errors = IntCounterVec::new(
            Opts::new(
                "mailfleet_storage_errors_total",
                "Storage calls that failed in the backend (unavailable or corrupt; not \"not found\" or a conflict), by backend and operation.",
            ),
            &["backend", "operation"],
        )?;
        r.register(Box::new(errors.clone()))?;
        let cache = IntCounterVec::new(
            Opts::new(
                "mailfleet_blob_cache_requests_total",
                "Reads of the in-memory blob cache in front of S3, by result (hit, miss).",
            ),
            &["result"],
        )?;
        r.register(Box::new(cache.clone()))?;
        let batch = Histogram::with_opts(
            HistogramOpts::new(
                "mailfleet_metadata_commit_batch_size",
                "Writes made durable together by one group commit of the embedded metadata store.",
            )
            .buckets(BATCH_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(batch.clone()))?;
        let event_lag = Histogram::with_opts(
            HistogramOpts::new(
                "mailfleet_coordinator_event_lag_seconds",
                "Time from a mailbox change being published to a subscriber receiving it (IDLE, NOTIFY).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(event_lag.clone()))?;
        let resyncs = IntCounter::new(
            "mailfleet_coordinator_resyncs_total",
            "Subscriptions that lost events (a dropped connection to the coordinator, a subscriber too slow) and told their sessions to re-read the change log.",
        )?;
        r.register(Box::new(resyncs.clone()))?;
        let leases_held = IntGauge::new(
            "mailfleet_leases_held",
            "Leases this node holds now (mailbox allocators, queue entries being delivered).",
        )?;
        r.register(Box::new(leases_held.clone()))?;
        let leases_lost = IntCounter::new(
            "mailfleet_leases_lost_total",
            "Leases this node found taken over or expired when it renewed them.",
        )?;
        r.register(Box::new(leases_lost.clone()))?;
        Ok(Self {
            durations,
            errors,
            cache_hit: cache.with_label_values(&["hit"]),
            cache_miss: cache.with_label_values(&["miss"]),
            batch,
            event_lag,
            resyncs,
            leases_held,
            leases_lost,
        })
    }

    /// Creates the series of one backend's operations at zero, so a dashboard shows an
    /// idle backend as zero rather than as no data.
    pub fn register_backend(&self, backend: &'static str, operations: &[&'static str]) {
        for op in operations {
            self.durations.with_label_values(&[backend, op]);
            self.errors.with_label_values(&[backend, op]);
        }
    }

    /// Records one call. `backend_error`: the backend failed (not a "not found").
    pub fn observe(
        &self,
        backend: &'static str,
        operation: &'static str,
        elapsed: Duration,
        backend_error: bool,
    ) {
        let labels = [backend, operation];
        self.durations
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
        if backend_error {
            self.errors.with_label_values(&labels).inc();
        }
    }

    /// Counts a blob cache read.
    pub fn blob_cache(&self, hit: bool) {
        if hit {
            self.cache_hit.inc();
        } else {
            self.cache_miss.inc();
        }
    }

    /// Records the size of one group commit.
    pub fn commit_batch(&self, writes: usize) {
        self.batch.observe(writes as f64);
    }

    /// Records the delay of one received mailbox event.
    pub fn event_lag(&self, lag: Duration) {
        self.event_lag.observe(lag.as_secs_f64());
    }

    /// Counts a subscription resync.
    pub fn resync(&self) {
        self.resyncs.inc();
    }

    /// Adds a coordinator's held leases to `mailfleet_leases_held` (from a scrape hook:
    /// the gauge is set to zero before the hooks run).
    pub fn add_leases_held(&self, n: usize) {
        self.leases_held.add(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn reset_leases_held(&self) {
        self.leases_held.set(0);
    }

    /// Counts a lease found lost at renewal.
    pub fn lease_lost(&self) {
        self.leases_lost.inc();
    }
}
