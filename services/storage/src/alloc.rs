//! UID/MODSEQ allocation for metadata stores without multi-row transactions (ScyllaDB).
//!
//! IMAP needs UIDs that strictly increase and are never reused within a mailbox
//! (RFC 9051 §2.3.1.1) and MODSEQs that strictly increase with every change (RFC 7162).
//! SQLite gets both from one transaction; a store without transactions cannot simply
//! "read the counter, add one, write it back" from several nodes. Doing one lightweight
//! transaction (Paxos) per message would work but costs four round trips per append and
//! collapses under contention on a busy mailbox. This module hands out values from memory
//! and touches the store's linearizable ledger only when a mailbox changes hands:
//!
//! 1. **Ownership lives in the ledger**, one row per mailbox ([`LedgerState`]): the owner, an
//!    epoch bumped by every change of the row, the next unreserved UID and MODSEQ, where the
//!    owner's values start, and the highest write timestamp the owner may use. It changes
//!    only by compare-and-set (one LWT in ScyllaDB): a claim, a renewal, a further block, a
//!    release. The owner reserves a block of values with its claim (64 UIDs, 256 MODSEQs by
//!    default) and hands them out from memory, with no store round trip per message.
//! 2. **The coordinator lease** (`uid:{mailbox}`, Redis) is only a queue in front of the
//!    ledger: it keeps nodes from polling the ledger together. Inside a process a tokio
//!    mutex per mailbox queues local writers first. Safety never depends on the lease: Redis
//!    may restart from an old snapshot, fail over to a lagging replica, hand the same token
//!    out twice or lose the key, and still no two nodes own a mailbox at once, because only
//!    the ledger says who owns it.
//!
//! # Why a client that has seen UID n+1 never later sees UID n
//! - At most one node owns a mailbox at a time. An owner keeps ownership for `lease_ttl`
//!   from *before* the compare-and-set that gave or renewed it, by its own monotonic clock,
//!   and starts no statement with less than `safety_margin` of that left. Another node takes
//!   a mailbox over only after it has seen the same ledger state (same epoch) for
//!   `lease_ttl + safety_margin` by its own clock, counted from *after* the read that showed
//!   it, so the old owner's time ran out before: no wall clock is compared.
//! - An owner that stops writing gives the mailbox back (after `linger` without writes)
//!   with the unused rest of its block, so a clean hand-off wastes no UID.
//! - A new owner starts at the ledger's `uid_next`, above every value an earlier owner may
//!   have handed out, and values of one owner increase under the mutex.
//! - **Writes whose outcome is unknown** (a statement that timed out may still apply later,
//!   by a hint replay) are settled before anybody hands out larger values: an owner that
//!   had one writes tombstones before it gives the mailbox back, and an owner that takes
//!   over from a lapsed one first writes a tombstone for every value of the old owner's
//!   range that has no row ([`RangeLedger::settle`]). Tombstones carry a timestamp above
//!   every timestamp the old owner could use (below), so a late write loses whenever it
//!   lands.
//! - **Write timestamps** are a hybrid clock per mailbox ([`MailboxWriter::timestamp`]): the
//!   larger of the wall clock and the last value plus one, and never below the previous
//!   owner's bound recorded in the ledger (`ts_until`). Back-to-back writes of one cell are
//!   therefore ordered by the ownership order, not by node clocks.
//!
//! # Failure cases
//! - **Owner dies mid-write**: nobody writes the mailbox until its ownership has visibly
//!   lapsed (`lease_ttl + safety_margin`, ~40 s with ScyllaDB's defaults): writes get
//!   `Unavailable` meanwhile (SMTP answers 451, the sender retries). The next owner settles
//!   the dead owner's range and reserves above it.
//! - **Owner paused past its time** (a VM pause between a check and a statement): its late
//!   statement loses to the successor's tombstone; the owner checks its time again after the
//!   statement ([`MailboxWriter::confirm`]) and does not acknowledge the write.
//! - **Coordinator (Redis) down**: no lease, so writes fail with `Unavailable`; reads never
//!   need it. **Coordinator goes back in time**: two nodes may both hold the lease; the one
//!   that is not the ledger's owner waits for the owner to give the mailbox back or lapse.
//! - **Ledger compare-and-set with an unknown outcome**: treated as failed; if it applied,
//!   the ledger names us as owner without our knowing, and the next claim treats it as a
//!   lapsed ownership of our own (settle, then reserve above).
//! - **Clocks**: ownership time is measured only on monotonic clocks (rate drift over one
//!   ttl is absorbed by the margin). Wall clocks only seed write timestamps, and the ledger
//!   bound keeps those ordered across owners.

use crate::coord::{Coordinator, Lease};
use crate::types::{MailboxId, ModSeq, Uid};
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// The durable record of a mailbox's ownership and reservations (`uid_ledger`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LedgerState {
    /// The first UID not yet reserved by any owner.
    pub uid_next: u32,
    /// The first MODSEQ not yet reserved by any owner.
    pub modseq_next: u64,
    /// Bumped by every change of the row, so two reads with the same epoch saw nothing
    /// happen in between.
    pub epoch: u64,
    /// The owner's id ([`RangeAllocator::owner_id`]); 0 when nobody owns the mailbox.
    pub owner: u64,
    /// The first UID the current owner (or a lapsed one not yet settled) may have handed out.
    pub uid_from: u32,
    /// The first MODSEQ of the same range.
    pub modseq_from: u64,
    /// Every write timestamp (microseconds) the owner may use is below this; the next owner
    /// starts above it.
    pub ts_until: i64,
}

impl LedgerState {
    /// A new mailbox's ledger: UIDs start at 1, and MODSEQ 1 is the empty mailbox's
    /// HIGHESTMODSEQ, so the first change gets 2.
    pub const INITIAL: LedgerState = LedgerState {
        uid_next: 1,
        modseq_next: 2,
        epoch: 0,
        owner: 0,
        uid_from: 1,
        modseq_from: 2,
        ts_until: 0,
    };
}

/// Per-mailbox durable ownership record with compare-and-set, and the settling of writes
/// whose outcome is unknown.
#[async_trait]
pub trait RangeLedger: Send + Sync {
    /// The mailbox's current state, read so that it reflects every compare-and-set that
    /// completed (a SERIAL read in ScyllaDB). A mailbox that never reserved anything reads
    /// as [`LedgerState::INITIAL`] (or `NotFound` if the backend knows it does not exist).
    async fn read(&self, mailbox: MailboxId) -> StoreResult<LedgerState>;
    /// Replaces `expected` with `new` if and only if the stored state is still `expected`;
    /// true when it was replaced. Must be linearizable (one LWT in ScyllaDB).
    async fn reserve(
        &self,
        mailbox: MailboxId,
        expected: LedgerState,
        new: LedgerState,
    ) -> StoreResult<bool>;
    /// Makes sure no write to these UIDs and MODSEQs that is not visible now becomes
    /// visible later: a tombstone at timestamp `ts` for every message UID and change
    /// MODSEQ of the ranges that has no row (rows that exist are left alone: their writes
    /// completed). `ts` is above every timestamp the writers of those values could use.
    async fn settle(
        &self,
        mailbox: MailboxId,
        uids: Range<u32>,
        modseqs: Range<u64>,
        ts: i64,
    ) -> StoreResult<()>;
}

/// Deliberate breakage, for the simulation (`crate::sim`) to show that it finds what each
/// safety rule prevents. Never set outside tests.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sabotage {
    #[default]
    None,
    /// The design before the ledger owned mailboxes: the coordinator lease alone decides,
    /// and a node whose new lease token is its last one plus one keeps its block without
    /// reading the ledger (a Redis that goes back in time hands that token out twice).
    TrustLease,
    /// Never settle writes whose outcome is unknown.
    SkipSettle,
}

/// Tuning of a [`RangeAllocator`]. Every node of a cluster must use the same `lease_ttl`
/// and `safety_margin` (a node waits out another's ownership with its own values).
#[derive(Clone, Debug)]
pub struct AllocConfig {
    /// UIDs reserved per ledger round trip.
    pub uid_block: u32,
    /// MODSEQs reserved per ledger round trip; larger, since flag changes use them too.
    pub modseq_block: u64,
    /// How long an ownership lasts from before the compare-and-set that gave or renewed it.
    pub lease_ttl: Duration,
    /// A statement is refused when less ownership time than this is left. Must exceed the
    /// store's statement timeout (retries included) so every statement ends in time.
    pub safety_margin: Duration,
    /// How long to wait for another node's lease or ownership before answering
    /// `Unavailable`.
    pub max_wait: Duration,
    /// An owner gives an idle mailbox back after this long without writes (well below
    /// `lease_ttl - safety_margin`, so it never lapses instead). Consecutive writes to a
    /// mailbox within it cost no ledger round trip.
    pub linger: Duration,
    #[doc(hidden)]
    pub sabotage: Sabotage,
}

impl Default for AllocConfig {
    fn default() -> Self {
        Self {
            uid_block: 64,
            modseq_block: 256,
            lease_ttl: Duration::from_secs(30),
            safety_margin: Duration::from_secs(10),
            max_wait: Duration::from_secs(5),
            linger: Duration::from_secs(2),
            sabotage: Sabotage::None,
        }
    }
}

/// Compare-and-set attempts of one claim before it gives up: losing means another node
/// changed the row between our read and our write, which only racing claimants do.
const MAX_CAS_ATTEMPTS: usize = 5;

/// The ownership this process holds on one mailbox.
#[derive(Clone, Copy, Debug)]
struct Owned {
    /// The ledger row as we last wrote it (nobody else changes it while we own it).
    state: LedgerState,
    /// When we must consider the ownership lost, by our monotonic clock.
    deadline: Instant,
}

/// What this process knows about one mailbox between writes.
struct SlotState {
    /// The coordinator lease, kept between writes only while a local writer waits.
    lease: Option<Lease>,
    own: Option<Owned>,
    /// Another owner's ledger state and when we first saw it (to wait out its time).
    seen: Option<(LedgerState, Instant)>,
    /// The next UID and MODSEQ to hand out (the block ends at `own.state`'s `*_next`).
    uid_cur: u32,
    modseq_cur: u64,
    /// Where our own values start (for settling our own writes of unknown outcome).
    claim_uid: u32,
    claim_modseq: u64,
    /// The last write timestamp handed out.
    ts_last: i64,
    /// A write of ours may or may not have applied: settle before giving the mailbox back.
    in_doubt: bool,
    /// We took the mailbox over from a lapsed owner and have not settled its range yet.
    settle_pending: bool,
    /// Another node waits for the mailbox (it holds the coordinator lease): give it back
    /// after this write instead of lingering.
    handoff: bool,
    /// The token of the last coordinator lease we got (only [`Sabotage::TrustLease`] reads it).
    last_token: Option<u64>,
    last_write: Instant,
}

impl SlotState {
    fn new() -> Self {
        Self {
            lease: None,
            own: None,
            seen: None,
            uid_cur: 0,
            modseq_cur: 0,
            claim_uid: 0,
            claim_modseq: 0,
            ts_last: 0,
            in_doubt: false,
            settle_pending: false,
            handoff: false,
            last_token: None,
            last_write: Instant::now(),
        }
    }
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

/// The wall clock in microseconds since the Unix epoch, the seed of write timestamps.
pub type WallClock = Arc<dyn Fn() -> i64 + Send + Sync>;

fn system_wall_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

struct Inner {
    coord: Arc<dyn Coordinator>,
    ledger: Arc<dyn RangeLedger>,
    holder: String,
    owner_id: u64,
    cfg: AllocConfig,
    wall: WallClock,
    slots: Mutex<HashMap<MailboxId, Arc<Slot>>>,
    /// The task that gives idle mailboxes back, started with the first ownership.
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Hands out UIDs and MODSEQs for many mailboxes; one per process and store.
pub struct RangeAllocator {
    inner: Arc<Inner>,
}

/// Slots kept before idle ones are forgotten (forgetting an unowned slot costs nothing).
const MAX_IDLE_SLOTS: usize = 10_000;

/// A stable 64-bit id of a holder name (FNV-1a; never 0, which means "no owner").
fn owner_id_of(holder: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in holder.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

impl RangeAllocator {
    pub fn new(
        coord: Arc<dyn Coordinator>,
        ledger: Arc<dyn RangeLedger>,
        cfg: AllocConfig,
    ) -> Self {
        // Unique per process and instance: the ledger must tell two allocators apart even
        // in one process (tests run several).
        let holder = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        Self::with_holder(coord, ledger, cfg, holder)
    }

    /// Like [`Self::new`] with an explicit holder id (tests, logs, the simulation).
    pub fn with_holder(
        coord: Arc<dyn Coordinator>,
        ledger: Arc<dyn RangeLedger>,
        cfg: AllocConfig,
        holder: String,
    ) -> Self {
        Self::with_clock(coord, ledger, cfg, holder, Arc::new(system_wall_clock))
    }

    /// Like [`Self::with_holder`] with the wall clock that seeds write timestamps (the
    /// simulation gives each node a skewed one).
    pub fn with_clock(
        coord: Arc<dyn Coordinator>,
        ledger: Arc<dyn RangeLedger>,
        cfg: AllocConfig,
        holder: String,
        wall: WallClock,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                coord,
                ledger,
                owner_id: owner_id_of(&holder),
                holder,
                cfg,
                wall,
                slots: Mutex::new(HashMap::new()),
                sweeper: Mutex::new(None),
            }),
        }
    }

    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// The id this allocator writes into the ledger as owner.
    pub fn owner_id(&self) -> u64 {
        self.inner.owner_id
    }

    pub fn config(&self) -> &AllocConfig {
        &self.inner.cfg
    }

    fn slot(&self, mailbox: MailboxId) -> Arc<Slot> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() > MAX_IDLE_SLOTS {
            // Only slots nobody uses and that own nothing are forgotten (an owned one must
            // stay so the sweeper gives it back).
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.state.try_lock().map_or(true, |st| st.own.is_some())
            });
        }
        slots
            .entry(mailbox)
            .or_insert_with(|| {
                Arc::new(Slot {
                    waiting: AtomicUsize::new(0),
                    state: Arc::new(tokio::sync::Mutex::new(SlotState::new())),
                })
            })
            .clone()
    }

    /// Takes the mailbox for one write: the local lock, the coordinator lease, then the
    /// ledger's ownership (kept from an earlier write, or claimed). Call
    /// [`MailboxWriter::finish`] when the write is done.
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
        let started = Instant::now();
        if w.alloc.inner.cfg.sabotage == Sabotage::TrustLease {
            let prev = w.st()?.last_token;
            let ttl = w.alloc.inner.cfg.lease_ttl;
            w.take_lease(started, true).await?;
            let st = w.st()?;
            let token = st.lease.as_ref().map(|l| l.token);
            let continues = matches!((prev, token), (Some(p), Some(t)) if t == p || t == p + 1);
            match st.own.as_mut() {
                Some(o) if continues => o.deadline = Instant::now() + ttl,
                _ => st.own = None,
            }
            w.ensure_owned(started).await?;
            return Ok(w);
        }
        // An owner with time left writes whether or not it gets the lease (the ledger, not
        // the lease, makes it safe); a lease held elsewhere means a node waits for the
        // mailbox, so this write gives it back when done. Anyone else queues on the lease.
        let owned = w
            .st()?
            .own
            .is_some_and(|o| Instant::now() + w.alloc.inner.cfg.safety_margin < o.deadline);
        if owned {
            match w.take_lease(started, false).await {
                Ok(true) => {}
                Ok(false) => w.st()?.handoff = true,
                Err(e) => tracing::debug!(error = %e, "lease not taken; writing as owner"),
            }
        } else {
            w.take_lease(started, true).await?;
        }
        w.ensure_owned(started).await?;
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

    /// Starts the task that gives idle mailboxes back, once.
    fn start_sweeper(&self) {
        let mut sweeper = self.inner.sweeper.lock().unwrap_or_else(|p| p.into_inner());
        if sweeper.is_some() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let period = (self.inner.cfg.linger / 2).max(Duration::from_millis(10));
        *sweeper = Some(handle.spawn(sweep(weak, period)));
    }

    /// Gives back every mailbox this process owns and no writer is using (a clean stop),
    /// so other nodes need not wait for the ownerships to lapse.
    pub async fn release_all(&self) {
        release_idle(&self.inner, Duration::ZERO).await;
    }
}

impl Drop for RangeAllocator {
    fn drop(&mut self) {
        if let Some(h) = self
            .inner
            .sweeper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
    }
}

/// Every `period`, gives back the mailboxes idle for `linger`. Ends with the allocator.
async fn sweep(inner: Weak<Inner>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let linger = inner.cfg.linger;
        release_idle(&inner, linger).await;
    }
}

/// Gives back the owned mailboxes without a writer that were last written `idle` ago or
/// more, in mailbox order (deterministic for the simulation).
async fn release_idle(inner: &Inner, idle: Duration) {
    let mut slots: Vec<(MailboxId, Arc<Slot>)> = inner
        .slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    slots.sort_by_key(|(k, _)| *k);
    for (mailbox, slot) in slots {
        if slot.waiting.load(Ordering::SeqCst) > 0 {
            continue;
        }
        let Ok(mut st) = slot.state.clone().try_lock_owned() else {
            continue;
        };
        if st.own.is_none() || st.last_write.elapsed() < idle {
            continue;
        }
        if let Err(e) = release(inner, mailbox, &mut st).await {
            tracing::debug!(error = %e, mailbox = %mailbox, "mailbox release failed; it lapses");
        }
    }
}

/// Gives one owned mailbox back: settles what needs settling, then records the values not
/// handed out as unreserved again and no owner.
async fn release(inner: &Inner, mailbox: MailboxId, st: &mut SlotState) -> StoreResult<()> {
    let Some(own) = st.own else {
        return Ok(());
    };
    if Instant::now() + inner.cfg.safety_margin >= own.deadline {
        // Too late to write anything safely: let it lapse (the next owner settles).
        st.own = None;
        return Ok(());
    }
    settle_owed(inner, mailbox, st).await?;
    let new = LedgerState {
        uid_next: st.uid_cur,
        modseq_next: st.modseq_cur,
        epoch: own.state.epoch + 1,
        owner: 0,
        uid_from: st.uid_cur,
        modseq_from: st.modseq_cur,
        // Every timestamp we used is at most `ts_last`; the next owner starts above it.
        ts_until: st.ts_last.saturating_add(1),
    };
    // Whatever the outcome, we stop using the mailbox: an unknown outcome leaves our name
    // in the ledger, which our next claim treats as a lapsed ownership of our own.
    st.own = None;
    inner.ledger.reserve(mailbox, own.state, new).await?;
    Ok(())
}

/// Settles what must be settled before any further value is handed out or the mailbox
/// changes hands: the range of the lapsed owner we took over from, and our own values
/// since the claim when a write of ours had an unknown outcome (a later success with a
/// higher UID must not be followed by the late arrival of a lower one).
async fn settle_owed(inner: &Inner, mailbox: MailboxId, st: &mut SlotState) -> StoreResult<()> {
    let Some(own) = st.own else {
        return Ok(());
    };
    if !st.settle_pending && !st.in_doubt {
        return Ok(());
    }
    let (uids, modseqs) = if st.settle_pending {
        (
            own.state.uid_from..st.uid_cur,
            own.state.modseq_from..st.modseq_cur,
        )
    } else {
        (st.claim_uid..st.uid_cur, st.claim_modseq..st.modseq_cur)
    };
    let ts = next_ts(inner, st)?;
    if inner.cfg.sabotage != Sabotage::SkipSettle {
        inner.ledger.settle(mailbox, uids, modseqs, ts).await?;
    }
    st.settle_pending = false;
    st.in_doubt = false;
    Ok(())
}

/// The next write timestamp of an owned mailbox: above the last one and the wall clock,
/// below the bound recorded in the ledger.
fn next_ts(inner: &Inner, st: &mut SlotState) -> StoreResult<i64> {
    let own = st
        .own
        .ok_or_else(|| StoreError::Unavailable("mailbox is not owned".into()))?;
    let ts = (st.ts_last + 1).max((inner.wall)());
    let ts = if ts >= own.state.ts_until {
        // The wall clock ran past the recorded bound (it jumped): keep counting up from
        // the last value, which is still below it.
        st.ts_last + 1
    } else {
        ts
    };
    if ts >= own.state.ts_until {
        return Err(StoreError::Unavailable(
            "mailbox write timestamps exhausted until renewal".into(),
        ));
    }
    st.ts_last = ts;
    Ok(ts)
}

/// One write's hold on a mailbox: hands out strictly increasing UIDs, MODSEQs and write
/// timestamps.
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

    fn inner(&self) -> &Inner {
        &self.alloc.inner
    }

    pub fn mailbox(&self) -> MailboxId {
        self.mailbox
    }

    /// The ledger epoch of the ownership this write runs under.
    pub fn epoch(&self) -> Option<u64> {
        self.state
            .as_deref()
            .and_then(|s| s.own.map(|o| o.state.epoch))
    }

    /// When this process must consider its ownership lost, by its own monotonic clock.
    pub fn deadline(&self) -> Option<Instant> {
        self.state
            .as_deref()
            .and_then(|s| s.own.map(|o| o.deadline))
    }

    /// `Unavailable` when less than the safety margin of ownership time is left, so no
    /// statement is started that could still be running when the ownership lapses.
    pub fn check_time(&self) -> StoreResult<()> {
        let margin = self.inner().cfg.safety_margin;
        match self.deadline() {
            Some(d) if Instant::now() + margin < d => Ok(()),
            _ => Err(StoreError::Unavailable(format!(
                "ownership of mailbox {} is about to lapse",
                self.mailbox
            ))),
        }
    }

    /// After a write's last statement: `Unavailable` if the ownership may have lapsed while
    /// it ran (a pause), in which case the write must not be acknowledged; it is marked as
    /// of unknown outcome, and the successor's tombstones make sure it never shows.
    pub fn confirm(&mut self) -> StoreResult<()> {
        match self.deadline() {
            Some(d) if Instant::now() < d => Ok(()),
            _ => {
                self.mark_in_doubt();
                Err(StoreError::Unavailable(format!(
                    "ownership of mailbox {} lapsed during the write",
                    self.mailbox
                )))
            }
        }
    }

    /// A statement of this write failed and may or may not have applied (a timeout): the
    /// values handed out are settled before the mailbox is given back.
    pub fn mark_in_doubt(&mut self) {
        if let Some(st) = self.state.as_deref_mut() {
            st.in_doubt = true;
        }
    }

    /// The write timestamp (microseconds) for the next statement of this write: strictly
    /// increasing per mailbox across owners (see the module documentation).
    pub fn timestamp(&mut self) -> StoreResult<i64> {
        let inner = &self.alloc.inner;
        let st = self
            .state
            .as_deref_mut()
            .ok_or_else(|| StoreError::Unavailable("mailbox writer already finished".into()))?;
        next_ts(inner, st)
    }

    /// Extends the ownership when half of it is gone (a long write: a large COPY, a
    /// `STORE 1:*`): one compare-and-set, which also moves the timestamp bound.
    pub async fn keep_alive(&mut self) -> StoreResult<()> {
        let ttl = self.inner().cfg.lease_ttl;
        match self.deadline() {
            Some(d) if d.saturating_duration_since(Instant::now()) > ttl / 2 => Ok(()),
            Some(_) => self.extend(0, 0).await,
            None => Err(StoreError::Unavailable("mailbox is not owned".into())),
        }
    }

    /// Gets the coordinator lease: reuses one kept for us by the previous local writer
    /// (renewing it), or acquires it, waiting up to `max_wait` while another node holds it
    /// (`wait`), or answering false at once.
    async fn take_lease(&mut self, started: Instant, wait: bool) -> StoreResult<bool> {
        let inner = self.alloc.inner.clone();
        let cfg = &inner.cfg;
        let key = RangeAllocator::lease_key(self.mailbox);
        if let Some(lease) = self.st()?.lease.clone() {
            match inner.coord.renew_lease(&lease, cfg.lease_ttl).await {
                Ok(true) => return Ok(true),
                Ok(false) => self.st()?.lease = None,
                Err(e) => {
                    self.st()?.lease = None;
                    return Err(e);
                }
            }
        }
        let mut backoff = Duration::from_millis(2);
        loop {
            if let Some(lease) = inner
                .coord
                .acquire_lease(&key, &inner.holder, cfg.lease_ttl)
                .await?
            {
                let st = self.st()?;
                st.last_token = Some(lease.token);
                st.lease = Some(lease);
                return Ok(true);
            }
            if !wait {
                return Ok(false);
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

    /// Makes sure this process owns the mailbox in the ledger with time to write: keeps an
    /// ownership that has time left (renewing it past half its time), claims a free one,
    /// or takes over one whose owner has visibly lapsed.
    async fn ensure_owned(&mut self, started: Instant) -> StoreResult<()> {
        let inner = self.alloc.inner.clone();
        let cfg = &inner.cfg;
        let mailbox = self.mailbox;
        let mut backoff = Duration::from_millis(5);
        let mut attempts = 0;
        loop {
            if let Some(own) = self.st()?.own {
                let now = Instant::now();
                if now + cfg.safety_margin < own.deadline {
                    if own.deadline - now <= cfg.lease_ttl / 2 {
                        self.extend(0, 0).await?;
                    }
                    settle_owed(&inner, mailbox, self.st()?).await?;
                    return Ok(());
                }
                // Our time ran out: whatever we may have left half-written, the next owner
                // (perhaps us) settles.
                self.st()?.own = None;
            }
            let cur = inner.ledger.read(mailbox).await?;
            // Counted from after the read: the owner's time started before it wrote this.
            let seen_at = Instant::now();
            let me = inner.owner_id;
            let trust = cfg.sabotage == Sabotage::TrustLease;
            let lapsed = if cur.owner == 0 {
                false
            } else if cur.owner == me || trust {
                // Ours without our knowing (a compare-and-set of unknown outcome, or time
                // that ran out): nobody else can write it, but settle our range.
                !trust
            } else {
                let st = self.st()?;
                match st.seen {
                    Some((s, at)) if s == cur => {
                        seen_at.duration_since(at) >= cfg.lease_ttl + cfg.safety_margin
                    }
                    _ => {
                        st.seen = Some((cur, seen_at));
                        false
                    }
                }
            };
            let free = cur.owner == 0 || cur.owner == me || trust || lapsed;
            if !free {
                if started.elapsed() >= cfg.max_wait {
                    return Err(StoreError::Unavailable(format!(
                        "mailbox {mailbox} is owned by another node"
                    )));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
                continue;
            }
            attempts += 1;
            if attempts > MAX_CAS_ATTEMPTS {
                return Err(StoreError::Unavailable(format!(
                    "could not claim mailbox {mailbox} (contention)"
                )));
            }
            self.claim(cur, lapsed).await?;
            if self.st()?.own.is_some() {
                settle_owed(&inner, mailbox, self.st()?).await?;
                return Ok(());
            }
        }
    }

    /// One compare-and-set that makes us the owner, with a first block of values. Leaves
    /// `own` unset when another node changed the row first.
    async fn claim(&mut self, cur: LedgerState, lapsed: bool) -> StoreResult<()> {
        let inner = self.alloc.inner.clone();
        let cfg = &inner.cfg;
        let mailbox = self.mailbox;
        let uid_next = block_end_u32(cur.uid_next, cfg.uid_block, mailbox)?;
        let modseq_next = cur
            .modseq_next
            .checked_add(cfg.modseq_block.max(1))
            .ok_or_else(|| StoreError::Invalid(format!("mailbox {mailbox} used every MODSEQ")))?;
        let st = self.st()?;
        let floor = cur.ts_until.max(st.ts_last).max((inner.wall)());
        let ttl_us = cfg.lease_ttl.as_micros() as i64;
        let new = LedgerState {
            uid_next,
            modseq_next,
            epoch: cur.epoch + 1,
            owner: inner.owner_id,
            // A lapsed owner's range stays recorded until we have settled it.
            uid_from: if lapsed { cur.uid_from } else { cur.uid_next },
            modseq_from: if lapsed {
                cur.modseq_from
            } else {
                cur.modseq_next
            },
            ts_until: floor.saturating_add(2 * ttl_us),
        };
        let before = Instant::now();
        if inner.ledger.reserve(mailbox, cur, new).await? {
            let st = self.st()?;
            st.own = Some(Owned {
                state: new,
                deadline: before + cfg.lease_ttl,
            });
            st.seen = None;
            st.uid_cur = cur.uid_next;
            st.modseq_cur = cur.modseq_next;
            st.claim_uid = cur.uid_next;
            st.claim_modseq = cur.modseq_next;
            st.ts_last = floor;
            st.in_doubt = false;
            st.settle_pending =
                lapsed && (new.uid_from < cur.uid_next || new.modseq_from < cur.modseq_next);
        }
        Ok(())
    }

    /// A compare-and-set on our own row: renews the ownership, moves the timestamp bound,
    /// and reserves `uids`/`modseqs` more values.
    async fn extend(&mut self, uids: u32, modseqs: u64) -> StoreResult<()> {
        let inner = self.alloc.inner.clone();
        let cfg = &inner.cfg;
        let mailbox = self.mailbox;
        let st = self.st()?;
        let own = st
            .own
            .ok_or_else(|| StoreError::Unavailable("mailbox is not owned".into()))?;
        if Instant::now() + cfg.safety_margin >= own.deadline {
            st.own = None;
            return Err(StoreError::Unavailable(format!(
                "ownership of mailbox {mailbox} is about to lapse"
            )));
        }
        let ttl_us = cfg.lease_ttl.as_micros() as i64;
        let uid_next = if uids > 0 {
            block_end_u32(own.state.uid_next, uids, mailbox)?
        } else {
            own.state.uid_next
        };
        let modseq_next =
            own.state.modseq_next.checked_add(modseqs).ok_or_else(|| {
                StoreError::Invalid(format!("mailbox {mailbox} used every MODSEQ"))
            })?;
        let floor = st.ts_last.max((inner.wall)());
        let new = LedgerState {
            uid_next,
            modseq_next,
            epoch: own.state.epoch + 1,
            ts_until: own.state.ts_until.max(floor.saturating_add(2 * ttl_us)),
            // Once settled, the range that may hold in-doubt writes starts at our claim.
            uid_from: if st.settle_pending {
                own.state.uid_from
            } else {
                st.claim_uid
            },
            modseq_from: if st.settle_pending {
                own.state.modseq_from
            } else {
                st.claim_modseq
            },
            ..own.state
        };
        let before = Instant::now();
        let applied = inner.ledger.reserve(mailbox, own.state, new).await;
        let st = self.st()?;
        match applied {
            Ok(true) => {
                st.own = Some(Owned {
                    state: new,
                    deadline: before + cfg.lease_ttl,
                });
                Ok(())
            }
            Ok(false) => {
                // Only a node that waited out our time changes our row: we lapsed.
                st.own = None;
                Err(StoreError::Unavailable(format!(
                    "mailbox {mailbox} was taken over"
                )))
            }
            Err(e) => {
                // Unknown outcome: our old state may be gone, so stop using it.
                st.own = None;
                Err(e)
            }
        }
    }

    /// The next UID of the mailbox.
    pub async fn next_uid(&mut self) -> StoreResult<Uid> {
        self.check_time()?;
        let block = self.inner().cfg.uid_block.max(1);
        let st = self.st()?;
        let end = st.own.map(|o| o.state.uid_next).unwrap_or(0);
        if st.uid_cur >= end {
            self.extend(block, 0).await?;
        }
        let st = self.st()?;
        let uid = st.uid_cur;
        st.uid_cur += 1;
        st.last_write = Instant::now();
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
        let block = self.inner().cfg.modseq_block.max(1);
        let st = self.st()?;
        let end = st.own.map(|o| o.state.modseq_next).unwrap_or(0);
        if st.modseq_cur >= end {
            self.extend(0, block).await?;
        }
        let st = self.st()?;
        let m = st.modseq_cur;
        st.modseq_cur += 1;
        st.last_write = Instant::now();
        Ok(ModSeq(m))
    }

    /// The UID the next message would get without reserving anything (for the mailbox's
    /// `uid_next` as seen by this writer): `None` when nothing is owned.
    pub fn peek_uid(&self) -> Option<Uid> {
        self.state
            .as_deref()
            .filter(|s| s.own.is_some_and(|o| s.uid_cur < o.state.uid_next))
            .map(|s| Uid(s.uid_cur))
    }

    /// Ends the write: releases the coordinator lease unless another local writer of the
    /// same mailbox is queued (it inherits the lease). The ownership stays for `linger`, so
    /// the next write here costs no ledger round trip. Errors of the release are logged,
    /// not returned: the lease lapses on its own.
    pub async fn finish(mut self) {
        self.finished = true;
        let others = self.ticket.others();
        let Some(mut st) = self.state.take() else {
            return;
        };
        st.last_write = Instant::now();
        if others == 0 && st.handoff {
            st.handoff = false;
            if let Err(e) = release(&self.alloc.inner, self.mailbox, &mut st).await {
                tracing::debug!(error = %e, mailbox = %self.mailbox, "hand-off failed; it lapses");
            }
        }
        let owned = st.own.is_some();
        if others == 0 {
            if let Some(lease) = st.lease.take() {
                if let Err(e) = self.alloc.inner.coord.release_lease(&lease).await {
                    tracing::warn!(error = %e, key = %lease.key, "lease release failed");
                }
            }
        }
        drop(st);
        if owned {
            self.alloc.start_sweeper();
        }
    }
}

impl Drop for MailboxWriter<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped without finish (an error path or a cancelled future): behave like finish,
        // releasing the lease in the background when nobody local waits for it. A
        // cancelled write may have left a statement in flight.
        let others = self.ticket.others();
        let Some(mut st) = self.state.take() else {
            return;
        };
        st.in_doubt = true;
        st.last_write = Instant::now();
        let owned = st.own.is_some();
        if others == 0 {
            if let Some(lease) = st.lease.take() {
                let coord = self.alloc.inner.coord.clone();
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        let _ = coord.release_lease(&lease).await;
                    });
                }
            }
        }
        drop(st);
        if owned {
            self.alloc.start_sweeper();
        }
    }
}

/// `start + n`, refused when the mailbox's UIDs run out.
fn block_end_u32(start: u32, n: u32, mailbox: MailboxId) -> StoreResult<u32> {
    let end = (start as u64 + n.max(1) as u64).min(u32::MAX as u64) as u32;
    if end <= start {
        return Err(StoreError::Invalid(format!(
            "mailbox {mailbox} has used every UID"
        )));
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::local::LocalCoordinator;

    /// One settle call: mailbox, UIDs, MODSEQs, tombstone timestamp.
    type Settled = (MailboxId, Range<u32>, Range<u64>, i64);

    /// A ledger in memory with the CAS semantics the ScyllaDB LWT gives; settles are logged.
    #[derive(Default)]
    struct MemLedger {
        rows: Mutex<HashMap<MailboxId, LedgerState>>,
        settled: Mutex<Vec<Settled>>,
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
        async fn settle(
            &self,
            mailbox: MailboxId,
            uids: Range<u32>,
            modseqs: Range<u64>,
            ts: i64,
        ) -> StoreResult<()> {
            self.settled
                .lock()
                .unwrap()
                .push((mailbox, uids, modseqs, ts));
            Ok(())
        }
    }

    fn cfg(uid_block: u32, modseq_block: u64, ttl_ms: u64, margin_ms: u64) -> AllocConfig {
        AllocConfig {
            uid_block,
            modseq_block,
            lease_ttl: Duration::from_millis(ttl_ms),
            safety_margin: Duration::from_millis(margin_ms),
            max_wait: Duration::from_secs(30),
            linger: Duration::from_millis(20),
            sabotage: Sabotage::None,
        }
    }

    fn node(
        coord: &Arc<dyn Coordinator>,
        ledger: &Arc<MemLedger>,
        c: AllocConfig,
        name: &str,
    ) -> RangeAllocator {
        RangeAllocator::with_holder(coord.clone(), ledger.clone(), c, name.into())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_allocators_commit_increasing_values() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger = Arc::new(MemLedger::default());
        let mailbox = MailboxId(7);
        // Small blocks so owners change often and blocks run out mid-stream.
        let allocs: Vec<Arc<RangeAllocator>> = (0..4)
            .map(|i| {
                Arc::new(node(
                    &coord,
                    &ledger,
                    cfg(3 + i, 5 + i as u64, 10_000, 1_000),
                    &format!("node{i}"),
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
                        // Commit order: recorded while the ownership is still held.
                        let mut log = log.lock().await;
                        log.0.extend(uids);
                        log.1.extend(modseqs);
                    }
                    w.finish().await;
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
        let mut c = cfg(64, 256, 10_000, 1_000);
        c.linger = Duration::from_secs(60);
        let alloc = node(&coord, &ledger, c, "a");
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
            "no gaps while one owner keeps the mailbox"
        );
        let row = ledger.read(mailbox).await.expect("read");
        assert_eq!(
            (row.uid_next, row.epoch),
            (65, 1),
            "one claim, no further LWT"
        );
        assert_eq!(row.owner, alloc.owner_id());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_hand_off_wastes_no_uid() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger = Arc::new(MemLedger::default());
        let a = node(&coord, &ledger, cfg(64, 256, 10_000, 1_000), "a");
        let b = node(&coord, &ledger, cfg(64, 256, 10_000, 1_000), "b");
        let mailbox = MailboxId(2);
        for _ in 0..2 {
            let mut w = a.writer(mailbox).await.expect("a");
            w.next_uid().await.expect("uid");
            w.next_modseq().await.expect("modseq");
            w.finish().await;
        }
        // A gives the mailbox back after its linger (the sweeper), with the unused rest.
        let mut w = b.writer(mailbox).await.expect("b");
        assert_eq!(w.next_uid().await.expect("uid"), Uid(3));
        assert_eq!(w.next_modseq().await.expect("modseq"), ModSeq(4));
        w.finish().await;
        b.release_all().await;
        let row = ledger.read(mailbox).await.expect("read");
        assert_eq!((row.uid_next, row.modseq_next, row.owner), (4, 5, 0));
        assert!(
            ledger.settled.lock().unwrap().is_empty(),
            "nothing to settle"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lapsed_owner_is_waited_out_settled_and_fenced() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger = Arc::new(MemLedger::default());
        let mailbox = MailboxId(3);
        let a = node(&coord, &ledger, cfg(8, 8, 150, 20), "a");
        let b = node(&coord, &ledger, cfg(8, 8, 150, 20), "b");
        let mut wa = a.writer(mailbox).await.expect("a writer");
        let a_uid = wa.next_uid().await.expect("a uid");
        let a_mod = wa.next_modseq().await.expect("a modseq");
        let a_ts = wa.timestamp().expect("ts");
        // A stalls past its time while holding the write; B waits it out and takes over.
        let started = Instant::now();
        let mut wb = b.writer(mailbox).await.expect("b writer");
        assert!(
            started.elapsed() >= Duration::from_millis(170),
            "waited ttl + margin"
        );
        let b_uid = wb.next_uid().await.expect("b uid");
        let b_mod = wb.next_modseq().await.expect("b modseq");
        assert!(b_uid > a_uid && b_mod > a_mod);
        assert!(wb.timestamp().expect("ts") > a_ts);
        // B settled A's whole range before handing anything out.
        let settled = ledger.settled.lock().unwrap().clone();
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].1, 1..9);
        assert!(settled[0].3 > a_ts, "tombstones win over A's late writes");
        // A must not hand out anything now, nor acknowledge what it wrote.
        assert!(matches!(
            wa.next_uid().await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(wa.confirm(), Err(StoreError::Unavailable(_))));
        wb.finish().await;
        wa.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_lease_does_not_make_two_owners() {
        let local = Arc::new(LocalCoordinator::new());
        let coord: Arc<dyn Coordinator> = local.clone();
        let ledger = Arc::new(MemLedger::default());
        let mailbox = MailboxId(4);
        let mut c = cfg(64, 64, 10_000, 20);
        c.max_wait = Duration::from_millis(100);
        c.linger = Duration::from_secs(60);
        let a = node(&coord, &ledger, c.clone(), "a");
        let b = node(&coord, &ledger, c, "b");
        let mut wa = a.writer(mailbox).await.expect("a writer");
        let first = wa.next_uid().await.expect("a uid");
        // The coordinator loses A's lease while A writes (a Redis restart from an old
        // snapshot): B gets the lease, but the ledger still names A.
        let lease = wa
            .state
            .as_ref()
            .and_then(|s| s.lease.clone())
            .expect("lease");
        local.release_lease(&lease).await.expect("drop");
        assert!(matches!(
            b.writer(mailbox).await,
            Err(StoreError::Unavailable(_))
        ));
        let second = wa.next_uid().await.expect("A keeps writing");
        assert_eq!(second.0, first.0 + 1);
        wa.finish().await;
        a.release_all().await;
        let mut wb = b.writer(mailbox).await.expect("b after the hand-off");
        assert_eq!(wb.next_uid().await.expect("uid").0, second.0 + 1);
        wb.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_timestamps_increase_across_owners_whatever_their_clocks() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger = Arc::new(MemLedger::default());
        let mailbox = MailboxId(5);
        let c = cfg(8, 8, 10_000, 20);
        let ahead = RangeAllocator::with_clock(
            coord.clone(),
            ledger.clone(),
            c.clone(),
            "ahead".into(),
            Arc::new(|| 2_000_000_000_000_000),
        );
        let behind = RangeAllocator::with_clock(
            coord,
            ledger.clone(),
            c,
            "behind".into(),
            Arc::new(|| 1_000),
        );
        let mut w = ahead.writer(mailbox).await.expect("ahead");
        let t1 = w.timestamp().expect("ts");
        let t2 = w.timestamp().expect("ts");
        assert!(t2 > t1);
        w.finish().await;
        ahead.release_all().await;
        let mut w = behind.writer(mailbox).await.expect("behind");
        assert!(w.timestamp().expect("ts") > t2);
        w.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_of_unknown_outcome_is_settled_before_the_hand_off() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger = Arc::new(MemLedger::default());
        let mailbox = MailboxId(6);
        let a = node(&coord, &ledger, cfg(8, 8, 10_000, 20), "a");
        let mut w = a.writer(mailbox).await.expect("a");
        w.next_uid().await.expect("uid");
        let uid = w.next_uid().await.expect("uid");
        let modseq = w.next_modseq().await.expect("modseq");
        w.mark_in_doubt();
        w.finish().await;
        a.release_all().await;
        let settled = ledger.settled.lock().unwrap().clone();
        assert_eq!(settled.len(), 1);
        assert!(settled[0].1.contains(&uid.0) && settled[0].2.contains(&modseq.0));
        assert_eq!(ledger.read(mailbox).await.expect("read").owner, 0);
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
                            owner: 100 + i,
                            epoch: 1,
                            ..expected
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
        let ledger = Arc::new(MemLedger::default());
        let mut c = cfg(8, 8, 10_000, 20);
        c.max_wait = Duration::from_millis(50);
        let a = node(&coord, &ledger, c.clone(), "a");
        let b = node(&coord, &ledger, c, "b");
        let wa = a.writer(MailboxId(5)).await.expect("a");
        assert!(matches!(
            b.writer(MailboxId(5)).await,
            Err(StoreError::Unavailable(_))
        ));
        wa.finish().await;
        a.release_all().await;
        b.writer(MailboxId(5))
            .await
            .expect("free again")
            .finish()
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_and_cancelled_writers_do_not_keep_the_mailbox() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger = Arc::new(MemLedger::default());
        // A long ttl: if the mailbox were kept, B would give up long before it lapsed.
        let mut c = cfg(8, 8, 600_000, 20);
        c.max_wait = Duration::from_secs(5);
        let a = Arc::new(node(&coord, &ledger, c.clone(), "a"));
        let b = node(&coord, &ledger, c, "b");
        let mailbox = MailboxId(11);

        // Dropped without finish (an error path): given back by the sweeper, settled.
        let mut wa = a.writer(mailbox).await.expect("a");
        wa.next_uid().await.expect("uid");
        drop(wa);
        b.writer(mailbox)
            .await
            .expect("b after drop")
            .finish()
            .await;
        assert_eq!(ledger.settled.lock().unwrap().len(), 1, "the dropped write");
        b.release_all().await;

        // A local writer cancelled while queued must not make the owner keep the mailbox.
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
    async fn queued_local_writer_inherits_the_ownership() {
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new());
        let ledger = Arc::new(MemLedger::default());
        let a = Arc::new(node(&coord, &ledger, cfg(64, 256, 10_000, 20), "a"));
        let mailbox = MailboxId(12);
        let mut first = a.writer(mailbox).await.expect("first");
        let epoch = first.epoch();
        let second = {
            let a = a.clone();
            tokio::spawn(async move {
                let mut w = a.writer(mailbox).await.expect("second");
                let e = w.epoch();
                let uid = w.next_uid().await.expect("uid");
                w.finish().await;
                (e, uid)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let uid = first.next_uid().await.expect("uid");
        first.finish().await;
        let (e2, uid2) = second.await.expect("task");
        assert_eq!(e2, epoch, "the queued writer kept the same ownership");
        assert_eq!((uid, uid2), (Uid(1), Uid(2)));
        assert_eq!(ledger.read(mailbox).await.expect("read").uid_next, 65);
    }
}
