//! The Mailfleet operator: reconciles `Domain` and `User` resources (group
//! `mail.mailfleet.io`) into the metadata store the mail servers share, through the same
//! provisioning library as the admin CLI (`mailfleet-provision`).
//!
//! # Layout
//! - [`crd`]: the resource types; the CRDs are generated from them.
//! - [`conditions`]: `Ready`/`Reconciling`/`Degraded` with `observedGeneration`.
//! - [`records`]: the DNS records a domain needs, and the check of what DNS answers.
//! - [`reconcile`]: the reconcilers, finalizers and deletion policies.
//! - [`leader`]: leader election through a coordination.k8s.io Lease.
//! - [`metrics`]: the operator's `/metrics`, `/healthz`, `/readyz`.

#![forbid(unsafe_code)]

pub mod conditions;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod records;
