//! UID/MODSEQ allocation for metadata stores without multi-row transactions (ScyllaDB).
//!
//! IMAP needs UIDs that strictly increase and are never reused within a mailbox
//! (RFC 9051 §2.3.1.1) and MODSEQs that strictly increase with every change (RFC 7162).
//! SQLite gets both from one transaction; a store without transactions cannot simply
//! "read the counter, add one, write it back" from several nodes. Doing one lightweight
//! transaction (Paxos) per message would work but costs four round trips per append and
//! collapses under contention on a busy mailbox. This module instead combines two cheaper
//! mechanisms:
//!
//! 1. **A lease per mailbox** (`uid:{mailbox}` in the [`Coordinator`]) serialises the
//!    writers of one mailbox across the cluster. Inside one process a tokio mutex per mailbox
//!    serialises local writers first, so the process asks the coordinator once, not once per
//!    task, and a queued local writer inherits the lease instead of releasing and re-taking it.
//! 2. **A durable range ledger** ([`RangeLedger`]): one row per mailbox with the next
//!    unreserved UID and MODSEQ and the fencing token of the lease that reserved them. A
//!    holder reserves a block of values (by default 64 UIDs and 256 MODSEQs) with one
//!    compare-and-set and then hands them out from memory. Values of a block that are never
//!    handed out are skipped: gaps are allowed, repeats and decreases are not.
//!
//! Lease tokens grow by exactly one with every grant of a key, so a holder that re-acquires
//! the lease and gets its previous token plus one knows nobody held the mailbox in between
//! and can keep using the rest of its block without touching the ledger. Any other token
//! means another node may have written: the holder drops its block and reserves a new one
//! above the ledger's high-water mark.
//!
//! # Why a client that has seen UID n+1 never later sees UID n
//! - Writes to one mailbox are serialised cluster-wide by the lease, and locally by the mutex.
//! - Every write completes (at quorum) before its lease is released or lapses: a write is
//!   refused when less than the safety margin of lease time is left, and the store's statement
//!   timeouts must be shorter than that margin, so a write either finishes while the lease is
//!   held or fails.
//! - A new holder starts above the ledger's high-water mark, which covers every value any
//!   earlier holder may have handed out (each value comes from a block recorded there).
//! - Within one holder values are handed out in increasing order under the mutex.
//!
//! Hence values written by successive holders form increasing, disjoint sequences, and
//! every value visible to a reader was committed before any larger value was allocated.
//!
//! # Failure cases
//! - **Holder dies mid-write**: its lease lapses after the ttl; the next holder's token is not
//!   the dead holder's plus one (and is not its own previous plus one either), so it reserves
//!   above the ledger mark. The rest of the dead holder's block is skipped; a half-written
//!   write leaves at most rows with values that will never be reused.
//! - **Lease lapses mid-write** (a long GC pause, a slow store): the writer checks its own
//!   deadline before every value it hands out and refuses (`Unavailable`) when less than the
//!   safety margin is left; the store's statements time out before the margin runs out. A
//!   reservation by a holder whose lease was taken over fails the ledger's fence check,
//!   because the newer holder recorded a larger token.
//! - **Coordinator (Redis) down**: no lease can be taken, so writes fail with `Unavailable`
//!   (SMTP answers 451, the sender retries); reads never need the lease and keep working.
//! - **Coordinator loses a lease key** (a failover that drops unreplicated writes): two
//!   holders could briefly overlap. Tokens still never go backwards (they are seeded from
//!   the time when a counter is recreated), so the ledger refuses the older holder's next
//!   reservation; values it already reserved can still be handed out until its own deadline.
//!   Running Redis with replication and `WAIT`, or a single primary, keeps this window closed.
//! - **Ledger CAS contention** (ScyllaDB LWT): two holders can only race on the ledger when
//!   one of them has lost its lease; the CAS lets exactly one win, the loser re-reads and
//!   then fails the fence check. A CAS that times out with an unknown outcome is treated as a
//!   failure: the next reservation re-reads the ledger, so at worst a block is skipped.
//! - **Clocks**: lease expiry is measured by the coordinator's clock (Redis `PX`); the
//!   holder measures its deadline on its own monotonic clock from *before* it sent the
//!   acquire request, so its estimate ends no later than the real expiry (up to clock drift
//!   over one ttl, which the safety margin absorbs). Wall-clock jumps do not matter.

use crate::coord::{Coordinator, Lease};
use crate::types::{MailboxId, ModSeq, Uid};
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The durable record of what a mailbox has reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LedgerState {
    /// The first UID not yet reserved by any holder.
    pub uid_next: u32,
    /// The first MODSEQ not yet reserved by any holder.
    pub modseq_next: u64,
    /// The lease token of the holder that made the last reservation.
    pub fence: u64,
}

impl LedgerState {
    /// A new mailbox's ledger: UIDs start at 1, and MODSEQ 1 is the empty mailbox's
    /// HIGHESTMODSEQ, so the first change gets 2.
    pub const INITIAL: LedgerState = LedgerState {
        uid_next: 1,
        modseq_next: 2,
        fence: 0,
    };
}

/// Per-mailbox durable reservation record with compare-and-set.
#[async_trait]
pub trait RangeLedger: Send + Sync {
    /// The mailbox's current state. A mailbox that never reserved anything reads as
    /// [`LedgerState::INITIAL`] (or `NotFound` if the backend knows it does not exist).
    async fn read(&self, mailbox: MailboxId) -> StoreResult<LedgerState>;
    /// Replaces `expected` with `new` if and only if the stored state is still `expected`;
    /// true when it was replaced. Must be linearizable (one LWT in ScyllaDB).
    async fn reserve(
        &self,
        mailbox: MailboxId,
        expected: LedgerState,
        new: LedgerState,
    ) -> StoreResult<bool>;
}

/// Tuning of a [`RangeAllocator`].
#[derive(Clone, Debug)]
pub struct AllocConfig {
    /// UIDs reserved per ledger round trip. Small, because unused UIDs become visible gaps
    /// when another node takes the mailbox over.
    pub uid_block: u32,
    /// MODSEQs reserved per ledger round trip; larger, since flag changes use them too.
    pub modseq_block: u64,
    /// Lease time-to-live.
    pub lease_ttl: Duration,
    /// A write is refused when less lease time than this is left. Must exceed the store's
    /// statement timeout so every write finishes before the lease can lapse.
    pub safety_margin: Duration,
    /// How long to wait for another node's lease before answering `Unavailable`.
    pub max_wait: Duration,
}

impl Default for AllocConfig {
    fn default() -> Self {
        Self {
            uid_block: 64,
            modseq_block: 256,
            lease_ttl: Duration::from_secs(30),
            safety_margin: Duration::from_secs(10),
            max_wait: Duration::from_secs(5),
        }
    }
}

/// Compare-and-set attempts before a reservation gives up. Only a holder that lost its
/// lease can race with us, so losing more than a few times means something is wrong.
const MAX_CAS_ATTEMPTS: usize = 5;

/// What this process knows about one mailbox between writes.
#[derive(Default)]
struct SlotState {
    /// The lease we hold right now (kept between writes only while a local writer waits).
    lease: Option<Lease>,
    /// When our estimate of the held lease ends.
    deadline: Option<Instant>,
    /// Token of the last lease we held on this mailbox, to detect other holders.
    last_token: Option<u64>,
    /// Whether the blocks below belong to the lineage of `last_token`.
    valid: bool,
    uid_cur: u32,
    uid_end: u32,
    modseq_cur: u64,
    modseq_end: u64,
}

/// Counts one local writer in `waiting` from before it queues for the lock until it is
/// done; a guard, so a writer whose future is dropped while queued is not counted for ever
/// (which would keep the lease held with nobody to use it).
struct Ticket(Arc<Slot>);

impl Ticket {
    fn new(slot: Arc<Slot>) -> Self {
        slot.waiting.fetch_add(1, Ordering::SeqCst);
        Ticket(slot)
    }

    /// Other local writers of the same mailbox queued or running besides this one.
    fn others(&self) -> usize {
        self.0.waiting.load(Ordering::SeqCst).saturating_sub(1)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Slot {
    /// Local writers waiting for (or holding) the state, to decide whether to keep the lease.
    waiting: AtomicUsize,
    state: Arc<tokio::sync::Mutex<SlotState>>,
}

/// Hands out UIDs and MODSEQs for many mailboxes; one per process and store.
pub struct RangeAllocator {
    coord: Arc<dyn Coordinator>,
    ledger: Arc<dyn RangeLedger>,
    holder: String,
    cfg: AllocConfig,
    slots: Mutex<HashMap<MailboxId, Arc<Slot>>>,
}

/// Slots kept before idle ones are forgotten (forgetting only costs a ledger read).
const MAX_IDLE_SLOTS: usize = 10_000;

impl RangeAllocator {
    pub fn new(
        coord: Arc<dyn Coordinator>,
        ledger: Arc<dyn RangeLedger>,
        cfg: AllocConfig,
    ) -> Self {
        // Unique per process and instance: the lease must tell two allocators apart even in
        // one process (tests run several).
        let holder = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        Self::with_holder(coord, ledger, cfg, holder)
    }

    /// Like [`Self::new`] with an explicit holder id (tests, logs).
    pub fn with_holder(
        coord: Arc<dyn Coordinator>,
        ledger: Arc<dyn RangeLedger>,
        cfg: AllocConfig,
        holder: String,
    ) -> Self {
        Self {
            coord,
            ledger,
            holder,
            cfg,
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn config(&self) -> &AllocConfig {
        &self.cfg
    }

    fn slot(&self, mailbox: MailboxId) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() > MAX_IDLE_SLOTS {
            // Only the map refers to an idle slot; its lease (if any) is released already
            // or lapses on its own.
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let slot = slots
            .entry(mailbox)
            .or_insert_with(|| {
                Arc::new(Slot {
                    waiting: AtomicUsize::new(0),
                    state: Arc::new(tokio::sync::Mutex::new(SlotState::default())),
                })
            })
            .clone();
        slot
    }

    /// Takes the mailbox for one write: the local lock, then the cluster lease. Call
    /// [`MailboxWriter::finish`] when the write is durable.
    pub async fn writer(&self, mailbox: MailboxId) -> StoreResult<MailboxWriter<'_>> {
        let ticket = Ticket::new(self.slot(mailbox));
        let guard = ticket.0.state.clone().lock_owned().await;
        let mut w = MailboxWriter {
            alloc: self,
            mailbox,
            state: Some(guard),
            finished: false,
            ticket,
        };
        w.take_lease().await?;
        Ok(w)
    }

    /// Takes several mailboxes at once, in id order so two writers never wait on each other
    /// in opposite orders. Duplicates are taken once. Returned in id order.
    pub async fn writers(&self, mailboxes: &[MailboxId]) -> StoreResult<Vec<MailboxWriter<'_>>> {
        let mut ids = mailboxes.to_vec();
        ids.sort();
        ids.dedup();
        let mut out: Vec<MailboxWriter<'_>> = Vec::with_capacity(ids.len());
        for id in ids {
            match self.writer(id).await {
                Ok(w) => out.push(w),
                Err(e) => {
                    for w in out {
                        w.finish().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn lease_key(mailbox: MailboxId) -> String {
        format!("uid:{mailbox}")
    }
}

/// One write's hold on a mailbox: hands out strictly increasing UIDs and MODSEQs.
pub struct MailboxWriter<'a> {
    alloc: &'a RangeAllocator,
    mailbox: MailboxId,
    state: Option<tokio::sync::OwnedMutexGuard<SlotState>>,
    finished: bool,
    /// Dropped after `state` (fields drop in order), so a writer queued behind us is still
    /// counted when we decide whether to keep the lease.
    ticket: Ticket,
}

impl MailboxWriter<'_> {
    fn st(&mut self) -> StoreResult<&mut SlotState> {
        self.state
            .as_deref_mut()
            .ok_or_else(|| StoreError::Unavailable("mailbox writer already finished".into()))
    }

    pub fn mailbox(&self) -> MailboxId {
        self.mailbox
    }

    /// The fencing token of the lease this write runs under.
    pub fn token(&self) -> Option<u64> {
        self.state
            .as_deref()
            .and_then(|s| s.lease.as_ref().map(|l| l.token))
    }

    /// When this process must consider the lease lost, by its own clock (measured from
    /// before the acquire request, so it errs early). [`Self::check_time`] subtracts the
    /// safety margin from it.
    pub fn deadline(&self) -> Option<Instant> {
        self.state.as_deref().and_then(|s| s.deadline)
    }

    /// `Unavailable` when less than the safety margin of lease time is left, so no
    /// statement is started that could still be running when the lease lapses.
    pub fn check_time(&self) -> StoreResult<()> {
        let margin = self.alloc.cfg.safety_margin;
        match self.deadline() {
            Some(d) if Instant::now() + margin < d => Ok(()),
            _ => Err(StoreError::Unavailable(format!(
                "lease on mailbox {} is about to lapse",
                self.mailbox
            ))),
        }
    }

    /// Gets the lease: reuses one kept for us by the previous local writer (renewing it), or
    /// acquires it, waiting up to `max_wait` while another node holds it.
    async fn take_lease(&mut self) -> StoreResult<()> {
        let alloc = self.alloc;
        let cfg = &alloc.cfg;
        let key = RangeAllocator::lease_key(self.mailbox);
        // A lease kept by the previous local writer: renew it so this write gets a full ttl.
        if let Some(lease) = self.st()?.lease.clone() {
            let before = Instant::now();
            match alloc.coord.renew_lease(&lease, cfg.lease_ttl).await {
                Ok(true) => {
                    self.st()?.deadline = Some(before + cfg.lease_ttl);
                    return self.check_time();
                }
                Ok(false) => {
                    // Lost while kept: someone else may have written since.
                    let st = self.st()?;
                    st.lease = None;
                    st.deadline = None;
                    st.valid = false;
                }
                Err(e) => {
                    let st = self.st()?;
                    st.lease = None;
                    st.deadline = None;
                    return Err(e);
                }
            }
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(2);
        loop {
            // Measured before the request: the coordinator starts its ttl later than this,
            // so our deadline errs early.
            let before = Instant::now();
            if let Some(lease) = alloc
                .coord
                .acquire_lease(&key, &alloc.holder, cfg.lease_ttl)
                .await?
            {
                let st = self.st()?;
                let continues = st
                    .last_token
                    .is_some_and(|t| t.checked_add(1) == Some(lease.token));
                if !continues {
                    st.valid = false;
                }
                st.last_token = Some(lease.token);
                st.deadline = Some(before + cfg.lease_ttl);
                st.lease = Some(lease);
                return self.check_time();
            }
            if started.elapsed() >= cfg.max_wait {
                return Err(StoreError::Unavailable(
                    "mailbox is being written by another node".into(),
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// The next UID of the mailbox.
    pub async fn next_uid(&mut self) -> StoreResult<Uid> {
        self.check_time()?;
        let st = self.st()?;
        if !(st.valid && st.uid_cur < st.uid_end) {
            self.reserve(true, false).await?;
        }
        let st = self.st()?;
        let uid = st.uid_cur;
        st.uid_cur += 1;
        Ok(Uid(uid))
    }

    /// `n` UIDs, increasing (not necessarily contiguous: a new block may start mid-way).
    pub async fn next_uids(&mut self, n: usize) -> StoreResult<Vec<Uid>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_uid().await?);
        }
        Ok(out)
    }

    /// The next MODSEQ of the mailbox.
    pub async fn next_modseq(&mut self) -> StoreResult<ModSeq> {
        self.check_time()?;
        let st = self.st()?;
        if !(st.valid && st.modseq_cur < st.modseq_end) {
            self.reserve(false, true).await?;
        }
        let st = self.st()?;
        let m = st.modseq_cur;
        st.modseq_cur += 1;
        Ok(ModSeq(m))
    }

    /// The UID the next message would get without reserving anything (for the mailbox's
    /// `uid_next` as seen by this writer): `None` when no block is held.
    pub fn peek_uid(&self) -> Option<Uid> {
        self.state
            .as_deref()
            .filter(|s| s.valid && s.uid_cur < s.uid_end)
            .map(|s| Uid(s.uid_cur))
    }

    /// Reserves fresh blocks from the ledger: the kinds asked for, plus both when our
    /// blocks no longer continue the ledger (another holder reserved since).
    async fn reserve(&mut self, need_uid: bool, need_modseq: bool) -> StoreResult<()> {
        let alloc = self.alloc;
        let mailbox = self.mailbox;
        let token = self
            .token()
            .ok_or_else(|| StoreError::Unavailable("no lease held".into()))?;
        for _ in 0..MAX_CAS_ATTEMPTS {
            self.check_time()?;
            let cur = alloc.ledger.read(mailbox).await?;
            if cur.fence > token {
                // A newer lease reserved after ours: ours has lapsed.
                let st = self.st()?;
                st.valid = false;
                return Err(StoreError::Unavailable(format!(
                    "lease on mailbox {mailbox} was taken over"
                )));
            }
            let st = self.st()?;
            // Keep a block only if the ledger still ends exactly where ours does, so nobody
            // reserved above it in between.
            let keep_uid =
                !need_uid && st.valid && st.uid_end == cur.uid_next && st.uid_cur < st.uid_end;
            let keep_mod = !need_modseq
                && st.valid
                && st.modseq_end == cur.modseq_next
                && st.modseq_cur < st.modseq_end;
            let uid_end = if keep_uid {
                cur.uid_next
            } else {
                let end = (cur.uid_next as u64 + alloc.cfg.uid_block.max(1) as u64)
                    .min(u32::MAX as u64) as u32;
                if end <= cur.uid_next {
                    return Err(StoreError::Invalid(format!(
                        "mailbox {mailbox} has used every UID"
                    )));
                }
                end
            };
            let modseq_end = if keep_mod {
                cur.modseq_next
            } else {
                cur.modseq_next
                    .checked_add(alloc.cfg.modseq_block.max(1))
                    .ok_or_else(|| {
                        StoreError::Invalid(format!("mailbox {mailbox} has used every MODSEQ"))
                    })?
            };
            let new = LedgerState {
                uid_next: uid_end,
                modseq_next: modseq_end,
                fence: token,
            };
            if alloc.ledger.reserve(mailbox, cur, new).await? {
                let st = self.st()?;
                if !keep_uid {
                    st.uid_cur = cur.uid_next;
                    st.uid_end = uid_end;
                }
                if !keep_mod {
                    st.modseq_cur = cur.modseq_next;
                    st.modseq_end = modseq_end;
                }
                st.valid = true;
                return Ok(());
            }
            // Lost the CAS: the state moved under us; re-read (and likely fail the fence).
        }
        let st = self.st()?;
        st.valid = false;
        Err(StoreError::Unavailable(format!(
            "could not reserve identifiers for mailbox {mailbox} (contention)"
        )))
    }

    /// Ends the write: releases the lease unless another local writer of the same mailbox
    /// is queued (it inherits the lease and renews it). Errors of the release are logged,
    /// not returned: the lease lapses on its own.
    pub async fn finish(mut self) {
        self.finished = true;
        let others = self.ticket.others();
        let Some(mut st) = self.state.take() else {
            return;
        };
        if others == 0 {
            if let Some(lease) = st.lease.take() {
                st.deadline = None;
                if let Err(e) = self.alloc.coord.release_lease(&lease).await {
                    tracing::warn!(error = %e, key = %lease.key, "lease release failed");
                }
            }
        }
        drop(st);
    }
}

impl Drop for MailboxWriter<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped without finish (an error path or a cancelled future): behave like finish,
        // releasing in the background when nobody local waits for the lease.
        let others = self.ticket.others();
        let Some(mut st) = self.state.take() else {
            return;
        };
        if others == 0 {
            if let Some(lease) = st.lease.take() {
                st.deadline = None;
                let coord = self.alloc.coord.clone();
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        let _ = coord.release_lease(&lease).await;
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::local::LocalCoordinator;

    /// A ledger in memory with the CAS semantics the ScyllaDB LWT gives.
    #[derive(Default)]
    struct MemLedger {
        rows: Mutex<HashMap<MailboxId, LedgerState>>,
    }

    #[async_trait]
    impl RangeLedger for MemLedger {
        async fn read(&self, mailbox: MailboxId) -> StoreResult<LedgerState> {
            Ok(*self
                .rows
                .lock()
                .unwrap()
                .get(&mailbox)
                .unwrap_or(&LedgerState::INITIAL))
        }
        async fn reserve(
            &self,
            mailbox: MailboxId,
            expected: LedgerState,
            new: LedgerState,
        ) -> StoreResult<bool> {
            // Yield so concurrent reservers interleave between read and CAS.
            tokio::task::yield_now().await;
            let mut rows = self.rows.lock().unwrap();
            let cur = rows.entry(mailbox).or_insert(LedgerState::INITIAL);
            if *cur == expected {
                *cur = new;
                Ok(true)
            } else {
                Ok(false)
            }
        }
    }

    fn cfg(uid_block: u32, modseq_block: u64, ttl_ms: u64, margin_ms: u64) -> AllocConfig {
        AllocConfig {
            uid_block,
            modseq_block,
            lease_ttl: Duration::from_millis(ttl_ms),
            safety_margin: Duration::from_millis(margin_ms),
            max_wait: Duration::from_secs(30),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_allocators_commit_increasing_values() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger: Arc<dyn RangeLedger> = Arc::new(MemLedger::default());
        let mailbox = MailboxId(7);
        // Small blocks so holders change often and blocks run out mid-stream.
        let allocs: Vec<Arc<RangeAllocator>> = (0..4)
            .map(|i| {
                Arc::new(RangeAllocator::with_holder(
                    coord.clone(),
                    ledger.clone(),
                    cfg(3 + i, 5 + i as u64, 10_000, 1_000),
                    format!("node{i}"),
                ))
            })
            .collect();
        // (uid, modseq) per appended message and every MODSEQ, in commit order.
        let log: Arc<tokio::sync::Mutex<(Vec<u32>, Vec<u64>)>> = Arc::default();
        let mut tasks = Vec::new();
        for t in 0..40usize {
            let alloc = allocs[t % allocs.len()].clone();
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    let mut w = alloc.writer(mailbox).await.expect("writer");
                    let mut uids = Vec::new();
                    let mut modseqs = Vec::new();
                    for _ in 0..1 + t % 3 {
                        uids.push(w.next_uid().await.expect("uid").0);
                        modseqs.push(w.next_modseq().await.expect("modseq").0);
                    }
                    // A flag change uses a MODSEQ without a UID.
                    modseqs.push(w.next_modseq().await.expect("modseq").0);
                    {
                        // Commit order: recorded while the grant is still held.
                        let mut log = log.lock().await;
                        log.0.extend(uids);
                        log.1.extend(modseqs);
                    }
                    w.finish().await;
                    // Let the local queue drain now and then so the lease changes nodes.
                    let pause = rand::random::<u64>() % 4;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let log = log.lock().await;
        let messages: usize = (0..40).map(|t| (1 + t % 3) * 10).sum();
        assert_eq!(log.0.len(), messages);
        assert_eq!(log.1.len(), messages + 400);
        assert!(
            log.0.windows(2).all(|p| p[1] > p[0]),
            "UIDs strictly increase in commit order"
        );
        assert!(
            log.1.windows(2).all(|p| p[1] > p[0]),
            "MODSEQs strictly increase in commit order"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_holder_keeps_its_block_between_writes() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger = Arc::new(MemLedger::default());
        let alloc = RangeAllocator::new(coord, ledger.clone(), cfg(64, 256, 10_000, 1_000));
        let mailbox = MailboxId(1);
        let mut got = Vec::new();
        for _ in 0..5 {
            let mut w = alloc.writer(mailbox).await.expect("writer");
            got.push(w.next_uid().await.expect("uid").0);
            w.finish().await;
        }
        assert_eq!(
            got,
            [1, 2, 3, 4, 5],
            "no gaps while one holder keeps the mailbox"
        );
        assert_eq!(ledger.read(mailbox).await.expect("read").uid_next, 65);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lapsed_lease_yields_nothing_below_the_new_holder() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger: Arc<dyn RangeLedger> = Arc::new(MemLedger::default());
        let mailbox = MailboxId(3);
        let a = RangeAllocator::with_holder(
            coord.clone(),
            ledger.clone(),
            cfg(8, 8, 150, 20),
            "a".into(),
        );
        let b = RangeAllocator::with_holder(
            coord.clone(),
            ledger.clone(),
            cfg(8, 8, 10_000, 20),
            "b".into(),
        );
        let mut wa = a.writer(mailbox).await.expect("a writer");
        let a_uid = wa.next_uid().await.expect("a uid");
        // A stalls past its ttl; B takes the mailbox over and writes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut wb = b.writer(mailbox).await.expect("b writer");
        let b_uid = wb.next_uid().await.expect("b uid");
        let b_mod = wb.next_modseq().await.expect("b modseq");
        assert!(b_uid > a_uid);
        // A must not hand out anything now, although its block has values left.
        assert!(matches!(
            wa.next_uid().await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            wa.next_modseq().await,
            Err(StoreError::Unavailable(_))
        ));
        wb.finish().await;
        wa.finish().await;
        // When A comes back it starts above B.
        let mut wa = a.writer(mailbox).await.expect("a again");
        assert!(wa.next_uid().await.expect("uid") > b_uid);
        assert!(wa.next_modseq().await.expect("modseq") > b_mod);
        wa.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_holder_reservation_is_fenced() {
        let local = Arc::new(LocalCoordinator::new());
        let coord: Arc<dyn Coordinator> = local.clone();
        let ledger: Arc<dyn RangeLedger> = Arc::new(MemLedger::default());
        let mailbox = MailboxId(4);
        let a = RangeAllocator::with_holder(
            coord.clone(),
            ledger.clone(),
            cfg(1, 1, 10_000, 20),
            "a".into(),
        );
        let b = RangeAllocator::with_holder(
            coord.clone(),
            ledger.clone(),
            cfg(1, 1, 10_000, 20),
            "b".into(),
        );
        let mut wa = a.writer(mailbox).await.expect("a writer");
        let a_uid = wa.next_uid().await.expect("a uid");
        // The coordinator loses A's lease while A still believes it holds it. A's next value
        // needs a new block; the ledger must refuse it since B's token is newer.
        // (As a Redis failover that dropped the key would.)
        let _ = local
            .release_lease(&Lease {
                key: RangeAllocator::lease_key(mailbox),
                holder: "a".into(),
                token: wa.token().expect("token"),
            })
            .await;
        let mut wb = b.writer(mailbox).await.expect("b writer");
        let b_uid = wb.next_uid().await.expect("b uid");
        assert!(b_uid > a_uid);
        assert!(matches!(
            wa.next_uid().await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            wa.next_modseq().await,
            Err(StoreError::Unavailable(_))
        ));
        wb.finish().await;
        wa.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn ledger_cas_has_exactly_one_winner() {
        let ledger = Arc::new(MemLedger::default());
        let mailbox = MailboxId(9);
        let expected = ledger.read(mailbox).await.expect("read");
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                ledger
                    .reserve(
                        mailbox,
                        expected,
                        LedgerState {
                            uid_next: expected.uid_next + 10,
                            modseq_next: expected.modseq_next + 10,
                            fence: 100 + i,
                        },
                    )
                    .await
                    .expect("reserve")
            }));
        }
        let mut wins = 0;
        for t in tasks {
            if t.await.expect("task") {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
        assert_eq!(ledger.read(mailbox).await.expect("read").uid_next, 11);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_mailbox_is_unavailable_after_max_wait() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger: Arc<dyn RangeLedger> = Arc::new(MemLedger::default());
        let mut c = cfg(8, 8, 10_000, 20);
        c.max_wait = Duration::from_millis(50);
        let a = RangeAllocator::with_holder(coord.clone(), ledger.clone(), c.clone(), "a".into());
        let b = RangeAllocator::with_holder(coord, ledger, c, "b".into());
        let wa = a.writer(MailboxId(5)).await.expect("a");
        assert!(matches!(
            b.writer(MailboxId(5)).await,
            Err(StoreError::Unavailable(_))
        ));
        wa.finish().await;
        b.writer(MailboxId(5))
            .await
            .expect("free again")
            .finish()
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_and_cancelled_writers_do_not_keep_the_lease() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger: Arc<dyn RangeLedger> = Arc::new(MemLedger::default());
        // A long ttl: if the lease were kept, B would give up long before it lapsed.
        let mut c = cfg(8, 8, 600_000, 20);
        c.max_wait = Duration::from_secs(5);
        let a = Arc::new(RangeAllocator::with_holder(
            coord.clone(),
            ledger.clone(),
            c.clone(),
            "a".into(),
        ));
        let b = RangeAllocator::with_holder(coord, ledger, c, "b".into());
        let mailbox = MailboxId(11);

        // Dropped without finish (an error path): released in the background.
        let mut wa = a.writer(mailbox).await.expect("a");
        wa.next_uid().await.expect("uid");
        drop(wa);
        b.writer(mailbox)
            .await
            .expect("b after drop")
            .finish()
            .await;

        // A local writer cancelled while queued must not make the holder keep the lease.
        let wa = a.writer(mailbox).await.expect("a again");
        let queued = {
            let a = a.clone();
            tokio::spawn(async move {
                let _w = a.writer(mailbox).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        queued.abort();
        let _ = queued.await;
        wa.finish().await;
        b.writer(mailbox)
            .await
            .expect("b after cancelled waiter")
            .finish()
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_local_writer_inherits_the_lease() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger = Arc::new(MemLedger::default());
        let a = Arc::new(RangeAllocator::new(
            coord,
            ledger.clone(),
            cfg(64, 256, 10_000, 20),
        ));
        let mailbox = MailboxId(12);
        let mut first = a.writer(mailbox).await.expect("first");
        let token = first.token();
        let second = {
            let a = a.clone();
            tokio::spawn(async move {
                let mut w = a.writer(mailbox).await.expect("second");
                let t = w.token();
                let uid = w.next_uid().await.expect("uid");
                w.finish().await;
                (t, uid)
            })
        };
        // Give the second writer time to queue behind the first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let uid = first.next_uid().await.expect("uid");
        first.finish().await;
        let (t2, uid2) = second.await.expect("task");
        assert_eq!(t2, token, "the queued writer renewed the same lease");
        assert_eq!((uid, uid2), (Uid(1), Uid(2)));
        assert_eq!(ledger.read(mailbox).await.expect("read").uid_next, 65);
    }
}
