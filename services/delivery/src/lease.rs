//! The queue lease one delivery runs under, as the delivery sees it.
//!
//! A worker that loses its lease on an entry (a renewal refused because another node took
//! the key, or no renewal confirmed for a whole TTL) must stop before it sends the message:
//! the new holder will send it too. [`LeaseGuard`] keeps the lease renewed, turns a loss into
//! a signal the worker cancels the attempt on ([`LeaseGuard::lost`]), and answers the SMTP
//! client's question right before `DATA` ([`LeaseGuard::confirm`]), the last moment a
//! duplicate can still be avoided. The client gets only this handle, not the coordinator.

use mailfleet_storage::{Coordinator, Lease};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct LeaseGuard {
    coord: Arc<dyn Coordinator>,
    lease: Lease,
    ttl: Duration,
    /// `true` once the lease is known lost; never goes back.
    lost: watch::Sender<bool>,
}

impl LeaseGuard {
    pub fn new(coord: Arc<dyn Coordinator>, lease: Lease, ttl: Duration) -> Self {
        Self {
            coord,
            lease,
            ttl,
            lost: watch::Sender::new(false),
        }
    }

    /// The lease's fencing token, for the queue writes made under it.
    pub fn token(&self) -> u64 {
        self.lease.token
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    fn mark_lost(&self, why: &str) {
        if !self.lost.send_replace(true) {
            tracing::warn!(lease = %self.lease.key, why, "queue lease lost; stopping the attempt");
        }
    }

    /// Resolves once the lease is known lost (at once if it already is).
    pub async fn lost(&self) {
        let mut rx = self.lost.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Renews the lease now; true only when the coordinator confirmed it is still ours. A
    /// renewal error is not a loss (the lease may well still be held) but is no
    /// confirmation either, so a caller about to send `DATA` holds back.
    pub async fn confirm(&self) -> bool {
        if self.is_lost() {
            return false;
        }
        match self.coord.renew_lease(&self.lease, self.ttl).await {
            Ok(true) => true,
            Ok(false) => {
                self.mark_lost("taken by another holder");
                false
            }
            Err(e) => {
                tracing::warn!(lease = %self.lease.key, error = %e, "queue lease renewal failed");
                false
            }
        }
    }

    /// Renews every third of the TTL until the lease is lost. Renewals that fail (the
    /// coordinator unreachable) are retried; once none has succeeded for a whole TTL the
    /// lease has lapsed for everyone else, so it counts as lost here too.
    pub async fn keep_renewed(&self) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut confirmed = Instant::now();
        while !self.is_lost() {
            tick.tick().await;
            match self.coord.renew_lease(&self.lease, self.ttl).await {
                Ok(true) => confirmed = Instant::now(),
                Ok(false) => self.mark_lost("taken by another holder"),
                Err(e) => {
                    tracing::warn!(lease = %self.lease.key, error = %e, "queue lease renewal failed");
                    if confirmed.elapsed() >= self.ttl {
                        self.mark_lost("no renewal confirmed within the lease TTL");
                    }
                }
            }
        }
    }
}
