//! A process-wide budget of bytes held in memory, shared by many sessions.
//!
//! Why: every SMTP session may hold a message of up to `smtp.max_message_size` while it is
//! received and handed off, and the listeners admit thousands of connections. Per-session
//! limits alone therefore allow `connections × message size` bytes of RAM. A
//! [`ByteBudget`] caps the sum: each session takes a [`Reservation`] that grows as bytes
//! arrive and is given back when it is dropped (message handed off, refused, or the
//! connection gone), so no path can leak budget. A session that cannot grow its
//! reservation refuses the message with a temporary error and the sender retries later,
//! as Postfix does when its queue file system is short of space (`452 4.3.1`).
//!
//! The counter is one atomic integer: reserving is a compare-and-swap loop with no lock
//! and no waiting, because a session that cannot have the bytes now refuses rather than
//! queues (waiting would hold the connection, and its read buffer, for nothing).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The budget could not cover a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "in-flight byte budget exhausted: {requested} more bytes wanted, {in_use} of {limit} in use"
)]
pub struct Exhausted {
    pub requested: usize,
    pub in_use: usize,
    pub limit: usize,
}

struct Inner {
    limit: usize,
    used: AtomicUsize,
}

/// A shared cap on bytes in flight. Cloning shares the same counter.
#[derive(Clone)]
pub struct ByteBudget {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ByteBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteBudget")
            .field("limit", &self.inner.limit)
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// A budget that never refuses (it still counts, for tests and metrics). For embedders
    /// that bound memory some other way; `mailfleet serve` always sets a limit.
    pub fn unlimited() -> Self {
        Self::new(usize::MAX)
    }

    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes reserved right now, across every holder.
    pub fn in_use(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }

    /// An empty reservation, to grow as bytes arrive. Never fails.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// A reservation of `bytes` up front, or [`Exhausted`] if the budget cannot cover it.
    pub fn try_reserve(&self, bytes: usize) -> Result<Reservation, Exhausted> {
        let mut r = self.reservation();
        r.try_grow(bytes)?;
        Ok(r)
    }

    fn take(&self, n: usize) -> Result<(), Exhausted> {
        if n == 0 {
            return Ok(());
        }
        let limit = self.inner.limit;
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= limit)
            })
            .map(|_| ())
            .map_err(|in_use| Exhausted {
                requested: n,
                in_use,
                limit,
            })
    }

    fn give_back(&self, n: usize) {
        if n > 0 {
            self.inner.used.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// Bytes held against a [`ByteBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: ByteBudget,
    bytes: usize,
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `extra` more bytes; on failure the reservation is unchanged.
    pub fn try_grow(&mut self, extra: usize) -> Result<(), Exhausted> {
        self.budget.take(extra)?;
        self.bytes += extra;
        Ok(())
    }

    /// Grows the reservation to at least `total` bytes (never shrinks it); on failure the
    /// reservation is unchanged.
    pub fn try_grow_to(&mut self, total: usize) -> Result<(), Exhausted> {
        self.try_grow(total.saturating_sub(self.bytes))
    }

    /// Gives every byte back now; the reservation stays usable (and empty).
    pub fn release(&mut self) {
        self.budget.give_back(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_grow_and_release_on_drop() {
        let budget = ByteBudget::new(100);
        let mut a = budget.try_reserve(40).expect("fits");
        assert_eq!((a.bytes(), budget.in_use()), (40, 40));
        a.try_grow_to(70).expect("fits");
        assert_eq!((a.bytes(), budget.in_use()), (70, 70));
        a.try_grow_to(10).expect("never shrinks");
        assert_eq!(a.bytes(), 70);

        let mut b = budget.reservation();
        let e = b.try_grow(31).expect_err("70 + 31 > 100");
        assert_eq!(
            e,
            Exhausted {
                requested: 31,
                in_use: 70,
                limit: 100
            }
        );
        assert_eq!(
            (b.bytes(), budget.in_use()),
            (0, 70),
            "a refusal takes nothing"
        );
        b.try_grow(30).expect("exactly the rest fits");
        assert_eq!(budget.in_use(), 100);
        assert!(budget.try_reserve(1).is_err(), "full");

        drop(a);
        assert_eq!(budget.in_use(), 30, "dropping gives the bytes back");
        b.release();
        assert_eq!((b.bytes(), budget.in_use()), (0, 0));
        b.try_grow(100).expect("an emptied reservation is reusable");
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn clones_share_one_counter() {
        let budget = ByteBudget::new(10);
        let other = budget.clone();
        let _r = other.try_reserve(8).expect("fits");
        assert_eq!(budget.in_use(), 8);
        assert!(budget.try_reserve(3).is_err());
        assert!(ByteBudget::unlimited().try_reserve(usize::MAX - 1).is_ok());
    }

    #[test]
    fn concurrent_holders_never_exceed_the_limit() {
        let budget = ByteBudget::new(1000);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = budget.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let mut r = b.reservation();
                        for _ in 0..5 {
                            if r.try_grow(60).is_err() {
                                break;
                            }
                            assert!(b.in_use() <= 1000);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert_eq!(budget.in_use(), 0, "every reservation was given back");
    }
}
