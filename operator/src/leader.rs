//! Leader election through a coordination.k8s.io Lease, so several operator replicas are
//! safe: only the holder reconciles. Written here on the Lease API directly (get, then
//! create or replace with the `resourceVersion` read, so two candidates cannot both win):
//! kube-runtime has no election of its own, and the crates that add one pull another kube.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;

/// The Lease's name (the chart's RBAC grants exactly this one).
pub const LEASE_NAME: &str = "mailfleet-operator";
/// How long a holder that stopped renewing keeps the Lease.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and a candidate retries).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// One election round: true when `identity` holds the Lease afterwards.
pub async fn try_acquire(api: &Api<Lease>, identity: &str) -> kube::Result<bool> {
    let now = Timestamp::now();
    let spec = |transitions: i32, acquired| LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: Some(MicroTime(acquired)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(LEASE_NAME).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..Default::default()
                },
                spec: Some(spec(0, now)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(current) => {
            let s = current.spec.clone().unwrap_or_default();
            let holder = s.holder_identity.as_deref();
            let expired = s
                .renew_time
                .as_ref()
                .map(|t| {
                    let d = s
                        .lease_duration_seconds
                        .unwrap_or(LEASE_DURATION.as_secs() as i32);
                    t.0 + SignedDuration::from_secs(i64::from(d)) < now
                })
                .unwrap_or(true);
            if holder != Some(identity) && !expired {
                return Ok(false);
            }
            let transitions =
                s.lease_transitions.unwrap_or(0) + i32::from(holder != Some(identity));
            let acquired = if holder == Some(identity) {
                s.acquire_time.map(|t| t.0).unwrap_or(now)
            } else {
                now
            };
            let mut next = current.clone();
            next.spec = Some(spec(transitions, acquired));
            // The resourceVersion read above makes this a compare-and-swap.
            match api.replace(LEASE_NAME, &PostParams::default(), &next).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this pod holds the Lease, then keeps renewing it in the background; the
/// process exits when a renewal fails past the lease duration (another pod may hold it
/// then, and two leaders must never reconcile at once).
pub async fn hold(api: Api<Lease>, identity: String, gauge: prometheus::IntGauge) {
    loop {
        match try_acquire(&api, &identity).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: Lease not reachable"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
    tracing::info!(identity = %identity, "leader election: this pod leads");
    gauge.set(1);
    tokio::spawn(async move {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match try_acquire(&api, &identity).await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("leader election: the Lease was taken over; exiting");
                    std::process::exit(1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: renewal failed");
                    if last_ok.elapsed() > LEASE_DURATION {
                        tracing::error!(
                            "leader election: could not renew the Lease in time; exiting"
                        );
                        std::process::exit(1);
                    }
                }
            }
        }
    });
}
