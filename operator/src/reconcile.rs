//! The reconcilers. Level-based: each run reads the resource, the Secret it names and the
//! store, writes only what differs (through `mailfleet-provision`, which reports whether it
//! wrote) and writes the status only when it differs from the one the resource has, by
//! server-side apply. A finalizer runs the `deletionPolicy` before the resource goes.

use crate::conditions::{self, Outcome};
use crate::crd::{
    AppPasswordStatus, DeletionPolicy, DkimAlgorithmName, Domain, DomainStatus, LoginProtocol,
    SecretKeyRef, User, UserStatus,
};
use crate::metrics::Metrics;
use crate::records::{self, Lookup};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event};
use kube::{Client, Resource, ResourceExt};
use mailfleet_delivery::dkim::{KeyChoice, Lifecycle};
use mailfleet_provision::{self as provision, AccountSpec, Actor, DkimPolicy, PasswordInput};
use mailfleet_storage::{DkimAlgorithm, MetadataStore, Protocols};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The finalizer the operator puts on every resource it provisions.
pub const FINALIZER: &str = "mail.mailfleet.io/cleanup";
/// The field manager of the operator's server-side applies.
pub const MANAGER: &str = "mailfleet-operator";
/// How often a reconciled resource is looked at again without an event: a User for its
/// usage, a Domain for what DNS answers.
pub const USER_RESYNC: Duration = Duration::from_secs(300);
pub const DOMAIN_RESYNC: Duration = Duration::from_secs(600);

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub meta: Arc<dyn MetadataStore>,
    pub dns: Arc<dyn Lookup>,
    /// The mail server's `server.hostname`: the MX host when a Domain names none.
    pub hostname: String,
    pub lifecycle: Lifecycle,
    pub metrics: Metrics,
    /// Consecutive failures per resource, for the backoff.
    pub failures: Mutex<HashMap<String, u32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Provision(#[from] provision::Error),
    /// The resource (or the Secret it names) is wrong: a person must change it.
    #[error("{0}")]
    Spec(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// The `reason` of the Degraded condition.
    fn reason(&self) -> String {
        match self {
            Error::Kube(_) => "KubernetesApiError".into(),
            Error::Spec(_) => "InvalidSpec".into(),
            Error::Finalizer(_) => "FinalizerFailed".into(),
            Error::Provision(e) => match e.kind() {
                "invalid" => "InvalidSpec",
                "managed" => "ManagedElsewhere",
                "not_found" => "NotFound",
                "exists" => "Conflict",
                "store_unavailable" => "StoreUnavailable",
                "dkim" => "DkimFailed",
                _ => "StoreError",
            }
            .into(),
        }
    }
}

/// The delay before retrying a resource after its `n`th consecutive failure: 5 s doubling
/// to at most 5 minutes, so a store outage is not hammered and a fixed spec is seen soon.
pub fn backoff(n: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << n.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

/// The controller's error policy: requeue with [`backoff`].
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let k = key(obj.as_ref());
    let n = {
        let mut f = ctx.failures.lock().expect("lock");
        let n = f.entry(k.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff(n);
    tracing::warn!(resource = %k, error = %err, retry_in_secs = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

fn succeeded<K: Resource<DynamicType = ()>>(obj: &K, ctx: &Context) {
    ctx.failures.lock().expect("lock").remove(&key(obj));
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn timed(
    kind: &'static str,
    ctx: &Context,
    fut: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let timer = ctx
        .metrics
        .duration
        .with_label_values(&[kind])
        .start_timer();
    let r = fut.await;
    timer.observe_duration();
    let result = if r.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .with_label_values(&[kind, result])
        .inc();
    r
}

// ---------------------------------------------------------------- status

/// A resource status with conditions.
trait Status: Clone + Default + PartialEq + serde::Serialize {
    fn conditions(&self) -> &[crate::crd::Condition];
    fn set(&mut self, conditions: Vec<crate::crd::Condition>, generation: Option<i64>);
}

impl Status for UserStatus {
    fn conditions(&self) -> &[crate::crd::Condition] {
        &self.conditions
    }
    fn set(&mut self, conditions: Vec<crate::crd::Condition>, generation: Option<i64>) {
        self.conditions = conditions;
        self.observed_generation = generation;
    }
}

impl Status for DomainStatus {
    fn conditions(&self) -> &[crate::crd::Condition] {
        &self.conditions
    }
    fn set(&mut self, conditions: Vec<crate::crd::Condition>, generation: Option<i64>) {
        self.conditions = conditions;
        self.observed_generation = generation;
    }
}

/// Turns a reconcile's outcome into the resource's status and the controller's action: the
/// status gets the conditions (a failure keeps the last known usage, records and the like),
/// and is applied only when it differs from the one the resource has.
async fn settle<K, S>(
    obj: &K,
    current: Option<&S>,
    outcome: Result<S, Error>,
    resync: Duration,
    ctx: &Context,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: Status,
{
    let previous = current.cloned().unwrap_or_default();
    let (mut status, result) = match outcome {
        Ok(s) => (s, Ok(Action::requeue(resync))),
        Err(e) => (previous.clone(), Err(e)),
    };
    let o = match &result {
        Ok(_) => Outcome::Ready,
        Err(e) => Outcome::Degraded {
            reason: e.reason(),
            message: e.to_string(),
        },
    };
    let generation = obj.meta().generation;
    status.set(
        conditions::next(previous.conditions(), &o, generation, &now()),
        generation,
    );
    if current != Some(&status) {
        let ns = obj.meta().namespace.as_deref().unwrap_or("default");
        let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        let name = obj.meta().name.as_deref().unwrap_or("");
        api.patch_status(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    if result.is_ok() {
        succeeded(obj, ctx);
    }
    result
}

// ---------------------------------------------------------------- User

pub async fn reconcile_user(user: Arc<User>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = user.namespace().unwrap_or_else(|| "default".into());
    let api: Api<User> = Api::namespaced(ctx.client.clone(), &ns);
    let c = ctx.clone();
    timed("User", &ctx, async move {
        finalizer(&api, FINALIZER, user, |event| async {
            match event {
                Event::Apply(u) => apply_user(&u, &c).await,
                Event::Cleanup(u) => cleanup_user(&u, &c).await,
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        })
    })
    .await
}

fn actor_of<K: Resource>(obj: &K) -> Actor {
    Actor::operator(
        obj.meta().namespace.as_deref().unwrap_or("default"),
        obj.meta().name.as_deref().unwrap_or(""),
    )
}

/// The text a Secret key holds, and the Secret's `resourceVersion`.
async fn secret_value(
    ns: &str,
    r: &SecretKeyRef,
    ctx: &Context,
) -> Result<(String, String), Error> {
    let key = r.key.as_deref().unwrap_or("password");
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = secrets
        .get_opt(&r.name)
        .await?
        .ok_or_else(|| Error::Spec(format!("Secret {ns}/{} does not exist", r.name)))?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| Error::Spec(format!("Secret {ns}/{} has no key {key:?}", r.name)))?;
    let text = std::str::from_utf8(&value.0)
        .map_err(|_| Error::Spec(format!("Secret {ns}/{} key {key:?} is not UTF-8", r.name)))?;
    Ok((
        text.trim_end_matches(['\r', '\n']).to_string(),
        secret.metadata.resource_version.unwrap_or_default(),
    ))
}

/// The password the Secret holds (a password or an argon2 hash).
async fn password_of(user: &User, ctx: &Context) -> Result<PasswordInput, Error> {
    let ns = user.namespace().unwrap_or_else(|| "default".into());
    let (text, _) = secret_value(&ns, &user.spec.password_secret_ref, ctx).await?;
    Ok(PasswordInput::detect(&text)?)
}

/// Makes the account's operator-set app passwords those of the spec. A Secret whose
/// `resourceVersion` is the one recorded in the status costs no hash check; one removed from the spec is revoked (app passwords the user made are never
/// touched: only names in the last status are the operator's). True when written.
async fn ensure_app_passwords(
    user: &User,
    ctx: &Context,
    actor: &Actor,
) -> Result<(bool, Vec<AppPasswordStatus>), Error> {
    let ns = user.namespace().unwrap_or_else(|| "default".into());
    let meta = ctx.meta.as_ref();
    let address = &user.spec.address;
    let previous: Vec<AppPasswordStatus> = user
        .status
        .as_ref()
        .map(|s| s.app_passwords.clone())
        .unwrap_or_default();
    let account = meta
        .get_account(address)
        .await
        .map_err(provision::Error::from)?
        .ok_or_else(|| provision::Error::NotFound(format!("user {address}")))?;
    let have: Vec<String> = meta
        .list_app_passwords(account.id)
        .await
        .map_err(provision::Error::from)?
        .into_iter()
        .map(|a| a.name)
        .collect();
    let mut changed = false;
    let mut out = Vec::new();
    for ap in &user.spec.app_passwords {
        let (text, version) = secret_value(&ns, &ap.secret_ref, ctx).await?;
        let recorded = previous
            .iter()
            .any(|p| p.name == ap.name && p.secret_resource_version == version);
        if !(recorded && have.contains(&ap.name)) {
            changed |=
                provision::ensure_app_password(meta, actor, address, &ap.name, &text, unix_now())
                    .await?;
        }
        out.push(AppPasswordStatus {
            name: ap.name.clone(),
            secret_resource_version: version,
        });
    }
    for p in previous
        .iter()
        .filter(|p| !user.spec.app_passwords.iter().any(|a| a.name == p.name))
    {
        changed |= provision::revoke_app_password(meta, actor, address, &p.name).await?;
    }
    Ok((changed, out))
}

fn protocols(spec: &Option<Vec<LoginProtocol>>) -> Protocols {
    match spec {
        None => Protocols::ALL,
        Some(list) => Protocols {
            imap: list.contains(&LoginProtocol::Imap),
            pop3: list.contains(&LoginProtocol::Pop3),
            submission: list.contains(&LoginProtocol::Submission),
            jmap: list.contains(&LoginProtocol::Jmap),
        },
    }
}

async fn provision_user(user: &User, ctx: &Context) -> Result<UserStatus, Error> {
    let actor = actor_of(user);
    let quota = match &user.spec.quota {
        Some(q) => provision::validate::quota(q)?,
        None => 0,
    };
    let spec = AccountSpec {
        address: user.spec.address.clone(),
        password: Some(password_of(user, ctx).await?),
        quota_bytes: quota,
        display_name: user.spec.display_name.clone(),
        suspended: user.spec.suspended,
        protocols: protocols(&user.spec.protocols),
    };
    let meta = ctx.meta.as_ref();
    let state = provision::ensure_account(meta, &actor, &spec).await?;
    let aliases =
        provision::ensure_aliases_of(meta, &actor, &spec.address, &user.spec.aliases).await?;
    let (app_changed, app_passwords) = ensure_app_passwords(user, ctx, &actor).await?;
    if state.changed || aliases || app_changed {
        ctx.metrics.writes.with_label_values(&["User"]).inc();
    }
    let mut mailboxes: Vec<String> = meta
        .list_mailboxes(state.account.id)
        .await
        .map_err(provision::Error::from)?
        .into_iter()
        .map(|m| m.name)
        .collect();
    mailboxes.sort();
    Ok(UserStatus {
        observed_generation: None,
        conditions: Vec::new(),
        used_bytes: state.account.used_bytes,
        messages: state.account.message_count,
        mailboxes,
        app_passwords,
    })
}

async fn apply_user(user: &User, ctx: &Context) -> Result<Action, Error> {
    let outcome = provision_user(user, ctx).await;
    settle(user, user.status.as_ref(), outcome, USER_RESYNC, ctx).await
}

async fn cleanup_user(user: &User, ctx: &Context) -> Result<Action, Error> {
    let actor = actor_of(user);
    let meta = ctx.meta.as_ref();
    match user.spec.deletion_policy {
        DeletionPolicy::Retain => {
            provision::release_account(meta, &actor, &user.spec.address).await?;
            tracing::info!(user = %user.spec.address, "User deleted: account suspended and kept (Retain)");
        }
        DeletionPolicy::Delete => {
            // Its aliases go with it (the store removes aliases pointing at the account).
            match provision::remove_account(meta, &actor, &user.spec.address).await {
                Ok(_) | Err(provision::Error::NotFound(_)) => {}
                // Adopted by nobody or owned by another resource: not this one's to delete.
                Err(provision::Error::Managed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            tracing::info!(user = %user.spec.address, "User deleted: account and mail removed (Delete)");
        }
    }
    ctx.metrics.writes.with_label_values(&["User"]).inc();
    Ok(Action::await_change())
}

// ---------------------------------------------------------------- Domain

pub async fn reconcile_domain(domain: Arc<Domain>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = domain.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Domain> = Api::namespaced(ctx.client.clone(), &ns);
    let c = ctx.clone();
    timed("Domain", &ctx, async move {
        finalizer(&api, FINALIZER, domain, |event| async {
            match event {
                Event::Apply(d) => apply_domain(&d, &c).await,
                Event::Cleanup(d) => cleanup_domain(&d, &c).await,
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        })
    })
    .await
}

async fn provision_domain(domain: &Domain, ctx: &Context) -> Result<DomainStatus, Error> {
    let actor = actor_of(domain);
    let meta = ctx.meta.as_ref();
    let name = &domain.spec.domain_name;
    let mut changed = provision::ensure_domain(meta, &actor, name).await?;
    changed |=
        provision::ensure_catch_all(meta, &actor, name, domain.spec.catch_all.as_deref()).await?;
    changed |= provision::ensure_domain_aliases(meta, &actor, name, &domain.spec.aliases).await?;
    let quota = match &domain.spec.quota {
        Some(q) => provision::validate::quota(q)?,
        None => 0,
    };
    changed |= provision::set_domain_quota(meta, &actor, name, quota).await?;
    let allocated_quota_bytes = if quota > 0 {
        provision::allocated_quota(meta, name).await?
    } else {
        None
    };
    let dkim_spec = &domain.spec.dkim;
    let algorithms: Vec<DkimAlgorithm> = match &dkim_spec.algorithms {
        None => vec![DkimAlgorithm::Rsa, DkimAlgorithm::Ed25519],
        Some(list) => list
            .iter()
            .map(|a| match a {
                DkimAlgorithmName::RsaSha256 => DkimAlgorithm::Rsa,
                DkimAlgorithmName::Ed25519Sha256 => DkimAlgorithm::Ed25519,
            })
            .collect(),
    };
    let choice = KeyChoice::new(
        dkim_spec.selector.as_deref().unwrap_or("mailfleet"),
        &algorithms,
    )
    .map_err(|e| Error::Spec(e.to_string()))?;
    let policy = DkimPolicy {
        choice,
        rotate_after: domain
            .spec
            .dkim
            .rotation_days
            .filter(|d| *d > 0)
            .map(|d| Duration::from_secs(u64::from(d) * 86400)),
        lifecycle: ctx.lifecycle,
    };
    let dkim = provision::ensure_dkim(meta, name, policy, unix_now()).await?;
    changed |= dkim.changed;
    if changed {
        ctx.metrics.writes.with_label_values(&["Domain"]).inc();
    }
    let mut recs = records::wanted(&domain.spec, &ctx.hostname, &dkim.records);
    records::check(ctx.dns.as_ref(), &mut recs).await;
    Ok(DomainStatus {
        observed_generation: None,
        conditions: Vec::new(),
        records: recs,
        dkim_selectors: dkim
            .records
            .iter()
            .map(|(s, st, _)| format!("{s} ({})", st.as_str()))
            .collect(),
        allocated_quota_bytes,
    })
}

async fn apply_domain(domain: &Domain, ctx: &Context) -> Result<Action, Error> {
    let outcome = provision_domain(domain, ctx).await;
    settle(domain, domain.status.as_ref(), outcome, DOMAIN_RESYNC, ctx).await
}

async fn cleanup_domain(domain: &Domain, ctx: &Context) -> Result<Action, Error> {
    let actor = actor_of(domain);
    let meta = ctx.meta.as_ref();
    let name = &domain.spec.domain_name;
    match domain.spec.deletion_policy {
        DeletionPolicy::Retain => {
            // Its alias domains stay hosted and pointed at it, for the administrator.
            for a in provision::domain_aliases_of(meta, name).await? {
                provision::release_domain(meta, &actor, &a).await?;
            }
            provision::release_domain(meta, &actor, name).await?;
        }
        DeletionPolicy::Delete => {
            match provision::ensure_domain_aliases(meta, &actor, name, &[]).await {
                Ok(_) | Err(provision::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            // The catch-all is the domain's own; accounts must go first (their Users).
            match provision::ensure_catch_all(meta, &actor, name, None).await {
                Ok(_) | Err(provision::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            match provision::remove_domain(meta, &actor, name).await {
                Ok(()) | Err(provision::Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}
