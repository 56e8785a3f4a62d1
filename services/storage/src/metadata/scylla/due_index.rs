//! Where the outbound queue's entries are found on ScyllaDB: ids and the due index are
//! split into [`QUEUE_SHARDS`] shards by a hash of the queue id, and the due index of each
//! shard into partitions of [`BUCKET_SECS`] of attempt time.
//!
//! Why not one partition (what earlier schemas did): every enqueue, update and delete of
//! the whole cluster went to one replica set; every poll read it from the head through the
//! tombstones deleted entries leave (they stay until `gc_grace_seconds`); and every node's
//! poll returned the same first entries, so a handful were in flight cluster-wide however
//! many nodes there were. Now a delivery worker leases shards (`delivery:shard:<n>`), each
//! poll reads only the partitions of its shards from a per-shard *cursor* to the present,
//! and a partition, once every row in it has been moved on, is never read again: the
//! tombstones of delivered entries are left behind with it.
//!
//! Each shard keeps a directory of its buckets that have rows (`outbound_due_buckets`,
//! one small partition per shard, written with every due row), so a poll reads only
//! buckets with something in them, however long ago the last entry was or however far
//! ahead the next retry is. The cursor of a shard (table `outbound_cursor`) is where the
//! poll starts reading that directory: a bucket read empty that is more than
//! [`CURSOR_LAG`] buckets old leaves the directory and the cursor moves past it, so the
//! directory's own tombstones are skipped too. Writers never put a row more than one bucket in the
//! past ([`index_bucket`]): a recipient rescheduled "now" by a node whose clock is behind,
//! or an entry created with an old timestamp, goes into the writer's previous bucket
//! instead, and its recipient row remembers which bucket (`outbound_rcpts.due_bucket`)
//! so the row can be moved or deleted later. Node clocks may therefore differ by up to
//! `(CURSOR_LAG - 1) * BUCKET_SECS` (five minutes) without a row landing behind a cursor.

/// Shards of the queue's ids and due index. 64 partitions spread the queue's writes over
/// the cluster; a node leases as many as its share, so at most 64 nodes poll at once.
pub(super) const QUEUE_SHARDS: u32 = 64;

/// Width of a due-index partition in seconds of attempt time. At 200 million outbound
/// recipients a day, a five-minute bucket of one shard holds ~11,000 rows (~0.5 MB).
pub(super) const BUCKET_SECS: i64 = 300;

/// How many buckets behind the present the cursor always stays.
pub(super) const CURSOR_LAG: i64 = 2;

/// The shard of queue entry `id`: a multiplicative hash, so ids handed out in blocks by
/// one node spread over every shard.
pub(super) fn shard_of(id: i64) -> i32 {
    let h = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 32) % u64::from(QUEUE_SHARDS)) as i32
}

/// The bucket of an attempt time.
pub(super) fn bucket_of(at: i64) -> i64 {
    at.div_euclid(BUCKET_SECS)
}

/// The bucket a due row for attempt time `at` is written to by a writer whose clock says
/// `now`: its own bucket, or the writer's previous bucket when `at` is older, so no row
/// lands behind a cursor (see the module comment).
pub(super) fn index_bucket(at: i64, now: i64) -> i64 {
    bucket_of(at).max(bucket_of(now) - 1)
}

/// Whether a poll at `now` that found bucket `b` empty may move the cursor past it.
pub(super) fn may_pass(b: i64, now: i64) -> bool {
    b < bucket_of(now) - CURSOR_LAG
}

/// Where the cursor of a shard moves after a poll at `now` found every listed bucket
/// before `first_kept` empty and old enough to leave (`None`: all of them): never past
/// a bucket a writer may still write, never back.
pub(super) fn next_cursor(cursor: i64, first_kept: Option<i64>, now: i64) -> i64 {
    let limit = bucket_of(now) - CURSOR_LAG;
    first_kept.unwrap_or(limit).min(limit).max(cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_spread_over_every_shard() {
        // A block of consecutive ids, as one node gets from the sequence, fills every
        // shard about evenly.
        let mut counts = vec![0u32; QUEUE_SHARDS as usize];
        for id in 1_000..1_000 + 64 * 100 {
            counts[shard_of(id) as usize] += 1;
        }
        let (min, max) = (
            *counts.iter().min().expect("shards"),
            *counts.iter().max().expect("shards"),
        );
        assert!(min >= 60 && max <= 140, "uneven spread: {min}..{max}");
    }

    #[test]
    fn no_row_is_written_behind_a_cursor_within_the_clock_tolerance() {
        let poller_now = 1_000_000_000;
        // The newest bucket a poll at `poller_now` may pass.
        let passable = (bucket_of(poller_now) - 100..=bucket_of(poller_now))
            .filter(|b| may_pass(*b, poller_now))
            .max()
            .expect("some bucket is passable");
        // A writer up to (CURSOR_LAG - 1) buckets behind, writing an attempt time however
        // far in the past, still writes above every passable bucket.
        for behind in 0..(CURSOR_LAG - 1) * BUCKET_SECS {
            let writer_now = poller_now - behind;
            for at in [
                0,
                writer_now - 86_400,
                writer_now - 1,
                writer_now,
                writer_now + 60,
            ] {
                assert!(
                    index_bucket(at, writer_now) > passable,
                    "a row for {at} written at {writer_now} is behind the cursor"
                );
            }
        }
        // Future attempts go to their own bucket.
        assert_eq!(
            index_bucket(poller_now + 3_600, poller_now),
            bucket_of(poller_now + 3_600)
        );
    }

    #[test]
    fn the_present_buckets_are_never_passed() {
        let now = 1_700_000_123;
        for b in bucket_of(now) - CURSOR_LAG..=bucket_of(now) + 1 {
            assert!(!may_pass(b, now));
        }
        assert!(may_pass(bucket_of(now) - CURSOR_LAG - 1, now));
    }

    #[test]
    fn the_cursor_stops_at_the_first_bucket_kept_and_never_goes_back() {
        let now = 1_700_000_123;
        let b = bucket_of(now);
        assert_eq!(next_cursor(b - 50, Some(b - 40), now), b - 40);
        assert_eq!(next_cursor(b - 50, None, now), b - CURSOR_LAG);
        // A kept bucket in the present does not let the cursor past the lag.
        assert_eq!(next_cursor(b - 50, Some(b + 3), now), b - CURSOR_LAG);
        // A clock gone back moves nothing back.
        assert_eq!(next_cursor(b, None, now - 3_600), b);
    }
}
