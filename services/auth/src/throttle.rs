//! Failed-login throttling through the [`Coordinator`]'s windowed counters, so every
//! front-end of a cluster counts the same failures (Postfix's anvil and Dovecot's
//! auth_penalty do this per host; here the count is shared).
//!
//! Two counters per attempt, each in a fixed window of `failure_window`:
//! - `auth-fail:ip:<net>`: failures from one IPv4 address, or one IPv6 /64 (an attacker
//!   with one IPv6 host has the whole /64). Each failure makes the next attempt from that
//!   network wait longer (`delay_base`, doubling, at most `delay_max`), and at
//!   `max_failures_per_ip` it is refused outright until the window ends.
//! - `auth-fail:user:<name>`: failures for one user name, from anywhere. At
//!   `max_failures_per_account` the name is refused until the window ends. This limit is
//!   set well above the per-IP one: one address alone is cut off long before it can lock
//!   the account out for everyone else, while a guessing campaign spread over many
//!   addresses is still bounded.
//!
//! Refused attempts are not verified and not counted again, so a throttled client learns
//! nothing and cannot keep the window full by hammering.

use mailfleet_storage::{Coordinator, StoreError};
use std::net::IpAddr;
use std::time::Duration;

/// The throttling side of [`crate::AuthPolicy`].
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_failures_per_ip: u64,
    pub max_failures_per_account: u64,
    pub window: Duration,
    pub delay_base: Duration,
    pub delay_max: Duration,
}

/// The verdict before verifying a password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Go ahead after waiting this long (zero when there were no recent failures).
    Proceed(Duration),
    /// Refuse without verifying; the window ends in this long.
    Refuse(Duration),
}

/// The network an address is counted under: the address itself for IPv4, its /64 for IPv6
/// (IPv4-mapped IPv6 addresses count as the IPv4 address).
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("auth-fail:ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("auth-fail:ip:{v4}"),
            None => {
                let s = v6.segments();
                format!(
                    "auth-fail:ip:{:x}:{:x}:{:x}:{:x}::/64",
                    s[0], s[1], s[2], s[3]
                )
            }
        },
    }
}

/// The key of a user name (as normalised by the caller).
pub fn user_key(username: &str) -> String {
    format!("auth-fail:user:{username}")
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

/// Reads both counters and decides.
pub async fn gate(
    coord: &dyn Coordinator,
    limits: &Limits,
    ip: IpAddr,
    username: &str,
) -> Result<Gate, StoreError> {
    let ip_failures = coord.get_counter(&ip_key(ip), limits.window).await?;
    if ip_failures >= limits.max_failures_per_ip {
        return Ok(Gate::Refuse(window_remaining(limits.window)));
    }
    let user_failures = coord
        .get_counter(&user_key(username), limits.window)
        .await?;
    if user_failures >= limits.max_failures_per_account {
        return Ok(Gate::Refuse(window_remaining(limits.window)));
    }
    Ok(Gate::Proceed(delay_for(limits, ip_failures)))
}

/// Counts one failure against the network and the user name.
pub async fn record_failure(
    coord: &dyn Coordinator,
    limits: &Limits,
    ip: IpAddr,
    username: Option<&str>,
) -> Result<(), StoreError> {
    coord.incr_counter(&ip_key(ip), limits.window).await?;
    if let Some(u) = username {
        coord.incr_counter(&user_key(u), limits.window).await?;
    }
    Ok(())
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
