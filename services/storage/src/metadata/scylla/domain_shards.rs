//! The per-domain listings of accounts and aliases, split into [`SHARDS`] partitions per
//! domain by a hash of the address.
//!
//! Why: one partition per domain (earlier schemas) makes a domain of 10 million users one
//! partition of ~600 MB, far past ScyllaDB's large-partition warning, with every account
//! creation of that domain on the same replicas. With 64 shards the same domain is
//! partitions of ~150,000 rows (~9 MB). Listing a domain, an admin operation, reads the 64
//! partitions; a login or a delivery never reads these tables (they use
//! `accounts_by_address` and `aliases`).

/// Partitions per domain.
pub(super) const SHARDS: i32 = 64;

/// The shard of an account's or alias's address (FNV-1a; any stable hash would do, and
/// this one needs no dependency and is the same on every node and every release).
pub(super) fn shard_of(address: &str) -> i32 {
    let h = address.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % SHARDS as u64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_addresses_of_one_domain_spread_over_every_shard() {
        let mut counts = vec![0u32; SHARDS as usize];
        for i in 0..64 * 500 {
            counts[shard_of(&format!("user{i}@big.example")) as usize] += 1;
        }
        let (min, max) = (
            *counts.iter().min().expect("shards"),
            *counts.iter().max().expect("shards"),
        );
        assert!(min >= 400 && max <= 600, "uneven: {min}..{max}");
        // Stable: the same address always lands in the same shard.
        assert_eq!(shard_of("a@b.example"), shard_of("a@b.example"));
    }
}
