//! Failed-login throttling through the [`Coordinator`]'s windowed counters, so every
//! front-end of a cluster counts the same failures (Postfix's anvil and Dovecot's
//! auth_penalty do this per host; here the count is shared).
//!
//! # Counted before verifying
//! An attempt takes its place in the counters *before* its password is verified
//! ([`reserve`]: increment, then compare with the limit), so N connections racing from one
//! address cannot all pass a check that none of them has counted yet: of any number of
//! parallel attempts, at most the limit get a verification. A success gives its places
//! back ([`succeeded`]); a failure keeps them, which is how failures are counted. While
//! attempts are in flight they count too, so a burst of simultaneous logins from one
//! address beyond the limit sees some refused even when every password is right; the
//! counters below keep the known-good case apart so that an office behind one NAT is not
//! caught by that.
//!
//! # The counters, each in a fixed window of `failure_window`
//! - `auth-fail:ip:<net>`: attempts from one IPv4 address, or one IPv6 /64 (an attacker
//!   with one IPv6 host has the whole /64). Each counted failure makes the next attempt
//!   from that network wait longer (`delay_base`, doubling, at most `delay_max`), and at
//!   `max_failures_per_ip` it is refused outright until the window ends.
//! - `auth-fail:user:<name>`: attempts for one user name from networks it has not logged
//!   in from recently. At `max_failures_per_account` such attempts are refused until the
//!   window ends: a guessing campaign spread over many addresses is bounded.
//! - Known-good networks: a successful login marks (name, network) in the coordinator for
//!   [`KNOWN_ADDRESS_TTL`] (renewed by each success). Attempts for that name from that
//!   network are counted on their own counter, `auth-fail:pair:<net>:<name>`, with the
//!   per-IP limit, and not on the two above: a stranger flooding the account (or the
//!   shared address with other names) cannot lock the owner out of the places the owner
//!   logs in from. A network the account has not logged in from recently is refused
//!   while the account-wide limit is reached; that is the price of bounding distributed
//!   guessing, and it ends with the window (as Stalwart and Dovecot's auth-policy do).
//!
//! Refused attempts are not verified; their count is given back so a throttled client
//! learns nothing, and a refusal by the account-wide limit does not also use up the
//! address's own allowance.

use mailfleet_storage::{Coordinator, StoreError};
use std::net::IpAddr;
use std::time::Duration;

/// How long a successful login keeps its (user name, network) pair known-good.
pub const KNOWN_ADDRESS_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The throttling side of [`crate::AuthPolicy`].
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_failures_per_ip: u64,
    pub max_failures_per_account: u64,
    pub window: Duration,
    pub delay_base: Duration,
    pub delay_max: Duration,
}

/// The places an attempt holds in the counters until it is known to have failed.
#[derive(Debug, Default)]
#[must_use = "a reservation is kept as a failure or given back with `succeeded`/`release`"]
pub struct Reservation {
    keys: Vec<String>,
}

/// The verdict before verifying a password.
#[derive(Debug)]
pub enum Gate {
    /// Go ahead after waiting `delay` (zero when there were no recent failures).
    Proceed {
        delay: Duration,
        reservation: Reservation,
    },
    /// Refuse without verifying; the window ends in `retry_after`. `by` says which limit
    /// refused (the address's or the account's), for the metrics.
    Refuse { retry_after: Duration, by: Limit },
}

/// The limit that refused an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Too many failures from the client's network (or from it for this user name).
    Address,
    /// Too many failures for the account from everywhere: it is locked for the window.
    Account,
}

/// The network an address is counted under: the address itself for IPv4, its /64 for IPv6
/// (IPv4-mapped IPv6 addresses count as the IPv4 address).
pub fn network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The counter of a network.
pub fn ip_key(ip: IpAddr) -> String {
    format!("auth-fail:ip:{}", network(ip))
}

/// The key of a user name (as normalised by the caller).
pub fn user_key(username: &str) -> String {
    format!("auth-fail:user:{username}")
}

/// The counter of a known-good (network, user name) pair.
pub fn pair_key(ip: IpAddr, username: &str) -> String {
    format!("auth-fail:pair:{}:{username}", network(ip))
}

/// The marker of a network the user name logged in from recently.
pub fn known_key(ip: IpAddr, username: &str) -> String {
    format!("auth-ok:{}:{username}", network(ip))
}

/// The delay before an attempt from a network with `failures` recent failures.
pub fn delay_for(limits: &Limits, failures: u64) -> Duration {
    if failures == 0 || limits.delay_base.is_zero() {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(20) as u32;
    limits
        .delay_base
        .saturating_mul(1u32 << doublings)
        .min(limits.delay_max)
}

/// Time left in the current fixed window, windows being aligned to the Unix epoch as the
/// coordinator's are.
pub fn window_remaining(window: Duration) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let w = window.as_millis().max(1);
    Duration::from_millis((w - now % w) as u64)
}

/// Counts the attempt in the counters that apply to it and decides. On `Refuse` nothing
/// stays counted.
pub async fn reserve(
    coord: &dyn Coordinator,
    limits: &Limits,
    ip: IpAddr,
    username: &str,
) -> Result<Gate, StoreError> {
    let refuse = |by| Gate::Refuse {
        retry_after: window_remaining(limits.window),
        by,
    };
    let mut reservation = Reservation::default();
    let known = !username.is_empty() && coord.is_marked(&known_key(ip, username)).await?;
    let first = if known {
        pair_key(ip, username)
    } else {
        ip_key(ip)
    };
    let n = coord.incr_counter(&first, limits.window).await?;
    reservation.keys.push(first);
    if n > limits.max_failures_per_ip {
        release(coord, limits, reservation).await;
        return Ok(refuse(Limit::Address));
    }
    if !known {
        let key = user_key(username);
        let m = coord.incr_counter(&key, limits.window).await;
        match m {
            Ok(m) => {
                reservation.keys.push(key);
                if m > limits.max_failures_per_account {
                    release(coord, limits, reservation).await;
                    return Ok(refuse(Limit::Account));
                }
            }
            Err(e) => {
                release(coord, limits, reservation).await;
                return Err(e);
            }
        }
    }
    Ok(Gate::Proceed {
        // The failures before this attempt (attempts in flight included).
        delay: delay_for(limits, n - 1),
        reservation,
    })
}

/// Gives the places of an attempt back (a refusal, a temporary failure). Best effort: a
/// count the coordinator could not take back only makes the window stricter.
pub async fn release(coord: &dyn Coordinator, limits: &Limits, reservation: Reservation) {
    for key in reservation.keys {
        if let Err(e) = coord.decr_counter(&key, limits.window).await {
            tracing::debug!(error = %e, "could not give a login count back");
        }
    }
}

/// A successful login: its places are given back and the network becomes (or stays)
/// known-good for the user name.
pub async fn succeeded(
    coord: &dyn Coordinator,
    limits: &Limits,
    reservation: Reservation,
    ip: IpAddr,
    username: &str,
) {
    release(coord, limits, reservation).await;
    if let Err(e) = coord
        .mark(&known_key(ip, username), KNOWN_ADDRESS_TTL)
        .await
    {
        tracing::warn!(error = %e, "could not record a known-good login address");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_failures_per_ip: 10,
            max_failures_per_account: 100,
            window: Duration::from_secs(900),
            delay_base: Duration::from_millis(250),
            delay_max: Duration::from_secs(4),
        }
    }

    #[test]
    fn delay_doubles_up_to_the_cap() {
        let l = limits();
        let got: Vec<u64> = (0..8)
            .map(|n| delay_for(&l, n).as_millis() as u64)
            .collect();
        assert_eq!(got, [0, 250, 500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(delay_for(&l, u64::MAX), Duration::from_secs(4));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(ip_key(mapped), "auth-fail:ip:192.0.2.7");
    }

    #[test]
    fn window_remaining_is_within_the_window() {
        let w = Duration::from_secs(900);
        let r = window_remaining(w);
        assert!(r > Duration::ZERO && r <= w);
    }
}
