//! The in-process coordinator for embedded mode: one node, so a map under a mutex and a
//! broadcast channel per account are all it takes.

use super::{Coordinator, Lease, MailboxEvent, Subscription, SubscriptionStream};
use crate::types::AccountId;
use crate::StoreResult;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Events buffered per account before a slow subscriber is told to resync.
const CHANNEL_CAPACITY: usize = 256;

#[derive(Default)]
pub struct LocalCoordinator {
    channels: Mutex<HashMap<AccountId, broadcast::Sender<MailboxEvent>>>,
    leases: Mutex<HashMap<String, (String, u64, Instant)>>,
    counters: Mutex<HashMap<String, (u64, u64)>>,
    /// Last token granted per key and when (for pruning after [`super::TOKEN_RETENTION`]).
    tokens: Mutex<HashMap<String, (u64, Instant)>>,
    /// Markers and their expiry.
    marks: Mutex<HashMap<String, Instant>>,
}

impl LocalCoordinator {
    pub fn new() -> Self {
        Self::default()
    }
}

struct LocalSubscription {
    account: AccountId,
    rx: broadcast::Receiver<MailboxEvent>,
}

#[async_trait]
impl SubscriptionStream for LocalSubscription {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these maps cannot leave them inconsistent (every update is a
    // single insert), so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn window_index(window: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_millis() as u64 / window.as_millis().max(1) as u64
}

#[async_trait]
impl Coordinator for LocalCoordinator {
    async fn publish(&self, event: MailboxEvent) -> StoreResult<()> {
        let mut channels = lock(&self.channels);
        let account = event.account();
        if let Some(tx) = channels.get(&account) {
            if tx.send(event).is_err() {
                // No receivers left: drop the channel so the map does not grow forever.
                channels.remove(&account);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, account: AccountId) -> StoreResult<Subscription> {
        let rx = lock(&self.channels)
            .entry(account)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        Ok(Subscription(Box::new(LocalSubscription { account, rx })))
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<Option<Lease>> {
        let mut leases = lock(&self.leases);
        let now = Instant::now();
        if let Some((_, _, expires)) = leases.get(key) {
            if *expires > now {
                return Ok(None);
            }
        }
        let token = {
            let mut tokens = lock(&self.tokens);
            if tokens.len() > 100_000 {
                tokens.retain(|_, (_, at)| now.duration_since(*at) < super::TOKEN_RETENTION);
            }
            let entry = tokens
                .entry(key.to_string())
                .or_insert((super::token_base_now() - 1, now));
            entry.0 += 1;
            entry.1 = now;
            entry.0
        };
        leases.insert(key.to_string(), (holder.to_string(), token, now + ttl));
        Ok(Some(Lease {
            key: key.to_string(),
            holder: holder.to_string(),
            token,
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> StoreResult<bool> {
        let mut leases = lock(&self.leases);
        let now = Instant::now();
        match leases.get_mut(&lease.key) {
            Some((holder, token, expires))
                if *holder == lease.holder && *token == lease.token && *expires > now =>
            {
                *expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        let mut leases = lock(&self.leases);
        if matches!(leases.get(&lease.key), Some((_, token, _)) if *token == lease.token) {
            leases.remove(&lease.key);
        }
        Ok(())
    }

    async fn incr_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        let w = window_index(window);
        let mut counters = lock(&self.counters);
        if counters.len() > 100_000 {
            counters.retain(|_, (win, _)| *win == w);
        }
        let entry = counters.entry(key.to_string()).or_insert((w, 0));
        if entry.0 != w {
            *entry = (w, 0);
        }
        entry.1 += 1;
        Ok(entry.1)
    }

    async fn get_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        let w = window_index(window);
        Ok(match lock(&self.counters).get(key) {
            Some((win, n)) if *win == w => *n,
            _ => 0,
        })
    }

    async fn decr_counter(&self, key: &str, window: Duration) -> StoreResult<u64> {
        let w = window_index(window);
        Ok(match lock(&self.counters).get_mut(key) {
            Some((win, n)) if *win == w => {
                *n = n.saturating_sub(1);
                *n
            }
            _ => 0,
        })
    }

    async fn mark(&self, key: &str, ttl: Duration) -> StoreResult<()> {
        let now = Instant::now();
        let mut marks = lock(&self.marks);
        if marks.len() > 100_000 {
            marks.retain(|_, until| *until > now);
        }
        marks.insert(key.to_string(), now + ttl);
        Ok(())
    }

    async fn is_marked(&self, key: &str) -> StoreResult<bool> {
        Ok(lock(&self.marks)
            .get(key)
            .is_some_and(|until| *until > Instant::now()))
    }
}
