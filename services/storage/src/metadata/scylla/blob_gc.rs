//! Blob references and the orphan sweep's log on ScyllaDB.
//!
//! - **References are rows, not counters** (`blob_links`, one row per message or queue
//!   entry that holds the blob, in the blob's partition). Rows can be deleted for good (a
//!   deleted counter cannot be used again), so a blob's partition goes away with its last
//!   holder; writing the same reference twice (a retried append) is one reference, not
//!   two; and "unreferenced" is one read of at most one row.
//! - **The sweep reads a log, not the whole table.** Every pin (written before a body is
//!   stored, [`crate::Stores::put_blob`]) and every release of a blob's last reference
//!   writes a row into `blob_candidates`, partitioned by minute and by [`SHARDS`] shards of
//!   the blob id. The sweep reads the partitions from its cursor (`gc_cursor`) up to the
//!   grace period's start, checks each blob's references, claims the unreferenced ones, and
//!   drops each partition once it has been read through, so a candidate costs one write,
//!   one read and one reference check, and what the sweep reads follows what was written.
//!   A blob stored by a delivery that then failed (no message ever referenced it) is in
//!   the log through its pin, and is collected like any orphan.
//! - Appends no longer write tombstones: the orphan record and the pin are left for the
//!   sweep (which ignores a referenced blob's record) and for the pin's TTL.

/// Shards of each minute of the log: at a billion messages a day a minute holds ~700,000
/// candidates, ~11,000 per partition (~1 MB).
pub(super) const SHARDS: i32 = 64;

/// Width of a log partition in seconds.
pub(super) const BUCKET_SECS: i64 = 60;

/// How many log rows one listing reads at most, referenced or not, so a page returns
/// even when everything it reads is referenced again.
pub(super) const SCAN_PER_PAGE: usize = 4_096;

/// A listing reaches at most this far past the present by the reading node's clock:
/// writers stamp rows with their own clocks, which may be a little ahead.
pub(super) const CLOCK_SLACK_SECS: i64 = 300;

/// The log partition a candidate noted at `at` goes to.
pub(super) fn bucket_of(at: i64) -> i64 {
    at.div_euclid(BUCKET_SECS)
}

/// The shard of a blob id (its hex digits are already uniform).
pub(super) fn shard_of(blob: &str) -> i32 {
    let h = blob.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % SHARDS as u64) as i32
}

/// The holder name of a message's reference.
pub(super) fn message_holder(mailbox: i64, uid: i64) -> String {
    format!("m:{mailbox}:{uid}")
}

/// The holder name of a queue entry's reference.
pub(super) fn queue_holder(id: i64) -> String {
    format!("q:{id}")
}

/// Where the sweep of this process stands in the log: the partition it reads and the last
/// blob id read in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Position {
    pub bucket: i64,
    pub shard: i32,
    pub after: String,
}

impl Position {
    /// The start of a bucket.
    pub fn at(bucket: i64) -> Self {
        Self {
            bucket,
            shard: 0,
            after: String::new(),
        }
    }

    /// The next partition, after this one was read through.
    pub fn next_partition(&self) -> Self {
        if self.shard + 1 < SHARDS {
            Self {
                bucket: self.bucket,
                shard: self.shard + 1,
                after: String::new(),
            }
        } else {
            Self::at(self.bucket + 1)
        }
    }
}

/// The last bucket a listing at `now` for blobs orphaned before `older_than` may read: one
/// whose every row is older than `older_than`, and none a writer could still write to
/// beyond the clock slack.
pub(super) fn last_bucket(older_than: i64, now: i64) -> i64 {
    (bucket_of(older_than) - 1).min(bucket_of(now.saturating_add(CLOCK_SLACK_SECS)))
}

/// The sweep's state in this process: where it has read to, and what is safe to forget
/// (every blob listed before it has been claimed or seen referenced).
#[derive(Debug, Default)]
pub(super) struct Sweep {
    /// Where the next listing reads; `None` until read from `gc_cursor`.
    pub pos: Option<Position>,
    /// The position at the last [`super::super::MetadataStore::orphans_swept`]: a listing
    /// not followed by one starts again from here.
    pub committed: Option<Position>,
    /// Whether a listing has been made since the last commit.
    pub listed: bool,
    /// Partitions read through since the last commit, dropped by the next one.
    pub finished: Vec<(i64, i32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_walk_every_shard_of_a_bucket_then_the_next_bucket() {
        let mut p = Position::at(7);
        let mut seen = Vec::new();
        while p.bucket == 7 {
            seen.push(p.shard);
            p = p.next_partition();
        }
        assert_eq!(seen, (0..SHARDS).collect::<Vec<_>>());
        assert_eq!(p, Position::at(8));
    }

    #[test]
    fn a_listing_reads_no_bucket_with_rows_newer_than_the_grace_start() {
        let now = 1_700_000_000;
        let older_than = now - 86_400;
        let last = last_bucket(older_than, now);
        // Every second of the last bucket is before `older_than`.
        assert!((last + 1) * BUCKET_SECS <= older_than);
        // A sweep far in the future (tests) still stops near the present.
        assert_eq!(
            last_bucket(i64::MAX, now),
            bucket_of(now + CLOCK_SLACK_SECS)
        );
    }

    #[test]
    fn blob_ids_spread_over_the_shards() {
        let mut counts = vec![0u32; SHARDS as usize];
        for i in 0..64 * 200 {
            let id = format!(
                "{:064x}",
                (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C)
            );
            counts[shard_of(&id) as usize] += 1;
        }
        let (min, max) = (
            *counts.iter().min().expect("shards"),
            *counts.iter().max().expect("shards"),
        );
        assert!(min >= 120 && max <= 290, "uneven: {min}..{max}");
    }
}
