//! The reconcilers against kube's mock API service (`tower_test::mock`): each scenario
//! lists the requests the operator must make, in order, with the answers the "API server"
//! gives, and fails on any other request. The store is a real embedded one (SQLite in a
//! temp dir), wrapped in the storage crate's fault injector for the failure cases.

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use mailfleet_operator::crd::{Domain, DomainSpec, SecretKeyRef, User, UserSpec, UserStatus};
use mailfleet_operator::metrics::Metrics;
use mailfleet_operator::reconcile::{self, Context, FINALIZER};
use mailfleet_operator::records::Lookup;
use mailfleet_provision::Actor;
use mailfleet_storage::fault::FailingMeta;
use mailfleet_storage::MetadataStore;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

const NS: &str = "mail";
const PASSWORD: &str = "Corr3ct-Horse-Battery-Staple";

/// DNS with fixed answers.
struct FixedDns(HashMap<(String, String), Vec<String>>);

#[async_trait::async_trait]
impl Lookup for FixedDns {
    async fn answers(&self, name: &str, type_: &str) -> Vec<String> {
        self.0
            .get(&(name.to_string(), type_.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}

struct World {
    _dir: tempfile::TempDir,
    meta: Arc<dyn MetadataStore>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tmp");
    let stores = mailfleet_storage::embedded::open(dir.path(), 16).expect("stores");
    // The domain, as its Domain resource would have made it.
    mailfleet_provision::ensure_domain(
        stores.meta.as_ref(),
        &Actor::operator(NS, "example"),
        "example.com",
    )
    .await
    .expect("domain");
    World {
        _dir: dir,
        meta: stores.meta,
    }
}

fn context(meta: Arc<dyn MetadataStore>, dns: FixedDns) -> (Arc<Context>, ApiHandle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context {
        client: Client::new(svc, NS),
        meta,
        dns: Arc::new(dns),
        hostname: "mx.example.com".into(),
        lifecycle: Default::default(),
        metrics: Metrics::new(),
        failures: Default::default(),
    });
    (ctx, handle)
}

fn user(generation: i64, quota: &str) -> User {
    let mut u = User::new(
        "alice",
        UserSpec {
            address: "alice@example.com".into(),
            display_name: Some("Alice".into()),
            quota: Some(quota.into()),
            aliases: vec!["sales@example.com".into()],
            protocols: None,
            suspended: false,
            password_secret_ref: SecretKeyRef {
                name: "alice-password".into(),
                key: None,
            },
            app_passwords: Vec::new(),
            deletion_policy: Default::default(),
        },
    );
    u.metadata.namespace = Some(NS.into());
    u.metadata.generation = Some(generation);
    u.metadata.resource_version = Some("1".into());
    u.metadata.finalizers = Some(vec![FINALIZER.into()]);
    u
}

fn secret(password: &str) -> Value {
    secret_named("alice-password", password, "1")
}

fn secret_named(name: &str, password: &str, resource_version: &str) -> Value {
    let mut s = Secret::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some(NS.into());
    s.metadata.resource_version = Some(resource_version.into());
    s.data = Some(
        [(
            "password".to_string(),
            ByteString(password.as_bytes().to_vec()),
        )]
        .into(),
    );
    let mut v = serde_json::to_value(s).expect("json");
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

/// One expected request: its method, its path, and the JSON the API server answers.
struct Expect {
    method: Method,
    path: String,
    answer: Value,
}

fn expect(method: Method, path: &str, answer: Value) -> Expect {
    Expect {
        method,
        path: path.to_string(),
        answer,
    }
}

/// Answers exactly `script`, in order, and returns the request bodies.
fn serve(
    mut handle: ApiHandle,
    script: Vec<Expect>,
) -> tokio::task::JoinHandle<(ApiHandle, Vec<Value>)> {
    tokio::spawn(async move {
        let mut bodies = Vec::new();
        for e in script {
            let (req, send) = handle
                .next_request()
                .await
                .expect("the operator made no request");
            assert_eq!(req.method(), e.method, "request to {}", req.uri());
            assert_eq!(req.uri().path(), e.path, "{} {}", req.method(), req.uri());
            let body = req.into_body().collect_bytes().await.expect("body");
            bodies.push(if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).expect("json body")
            });
            send.send_response(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&e.answer).expect("json")))
                    .expect("response"),
            );
        }
        (handle, bodies)
    })
}

/// After the reconcile: the script was used up and nothing else was asked.
async fn finished(task: tokio::task::JoinHandle<(ApiHandle, Vec<Value>)>) -> Vec<Value> {
    let (mut handle, bodies) = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the operator made fewer requests than expected")
        .expect("script");
    if let Ok(Some((req, _))) =
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
    {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
    bodies
}

const SECRET_PATH: &str = "/api/v1/namespaces/mail/secrets/alice-password";
const USER_PATH: &str = "/apis/mail.mailfleet.io/v1alpha1/namespaces/mail/users/alice";
const USER_STATUS_PATH: &str =
    "/apis/mail.mailfleet.io/v1alpha1/namespaces/mail/users/alice/status";

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .expect("condition")
}

/// Creates alice through one reconcile; returns the status the operator applied.
async fn create(ctx: &Arc<Context>, handle: ApiHandle) -> (UserStatus, ApiHandle) {
    let u = user(1, "1Gi");
    let task = serve(
        handle,
        vec![
            expect(Method::GET, SECRET_PATH, secret(PASSWORD)),
            expect(
                Method::PATCH,
                USER_STATUS_PATH,
                serde_json::to_value(&u).expect("json"),
            ),
        ],
    );
    let action = reconcile::reconcile_user(Arc::new(u), ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(reconcile::USER_RESYNC));
    let (handle, bodies) = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("done")
        .expect("script");
    let status: UserStatus = serde_json::from_value(bodies[1]["status"].clone()).expect("status");
    (status, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_gets_its_finalizer_first() {
    let w = world().await;
    let (ctx, handle) = context(w.meta.clone(), FixedDns(HashMap::new()));
    let mut u = user(1, "1Gi");
    u.metadata.finalizers = None;
    let task = serve(
        handle,
        vec![expect(
            Method::PATCH,
            USER_PATH,
            serde_json::to_value(&u).expect("json"),
        )],
    );
    reconcile::reconcile_user(Arc::new(u), ctx)
        .await
        .expect("reconcile");
    let bodies = finished(task).await;
    assert!(bodies[0].to_string().contains(FINALIZER), "{}", bodies[0]);
    assert!(
        w.meta
            .get_account("alice@example.com")
            .await
            .expect("get")
            .is_none(),
        "nothing provisioned before the finalizer is on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_nothing_to_write() {
    let w = world().await;
    let (ctx, handle) = context(w.meta.clone(), FixedDns(HashMap::new()));
    let (status, handle) = create(&ctx, handle).await;
    let ready = serde_json::to_value(&status).expect("json");
    assert_eq!(condition(&ready, "Ready")["status"], "True");
    assert_eq!(condition(&ready, "Degraded")["status"], "False");
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.mailboxes,
        vec!["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    );
    let a = w
        .meta
        .get_account("alice@example.com")
        .await
        .expect("get")
        .expect("created");
    assert_eq!(a.quota_bytes, 1 << 30);
    assert_eq!(
        a.settings.managed_by.as_deref(),
        Some("operator:mail/alice")
    );
    assert_eq!(a.settings.display_name.as_deref(), Some("Alice"));
    assert!(mailfleet_core::credentials::verify_password(
        PASSWORD,
        &a.password_hash
    ));
    assert_eq!(
        w.meta
            .alias_targets("sales@example.com")
            .await
            .expect("alias"),
        vec!["alice@example.com"]
    );
    let writes = ctx.metrics.writes.with_label_values(&["User"]).get();

    // The same resource with the status it now has: the Secret is read, nothing is written.
    let mut again = user(1, "1Gi");
    again.status = Some(status);
    let task = serve(
        handle,
        vec![expect(Method::GET, SECRET_PATH, secret(PASSWORD))],
    );
    reconcile::reconcile_user(Arc::new(again), ctx.clone())
        .await
        .expect("reconcile");
    finished(task).await;
    assert_eq!(
        ctx.metrics.writes.with_label_values(&["User"]).get(),
        writes,
        "no store write"
    );
    let b = w
        .meta
        .get_account("alice@example.com")
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(
        b.password_hash, a.password_hash,
        "the same password is not rehashed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_is_applied_and_reported_for_its_generation() {
    let w = world().await;
    let (ctx, handle) = context(w.meta.clone(), FixedDns(HashMap::new()));
    let (status, handle) = create(&ctx, handle).await;
    let mut changed = user(2, "5Gi");
    changed.spec.suspended = true;
    changed.spec.aliases = vec!["info@example.com".into()];
    changed.status = Some(status);
    let task = serve(
        handle,
        vec![
            expect(Method::GET, SECRET_PATH, secret(PASSWORD)),
            expect(
                Method::PATCH,
                USER_STATUS_PATH,
                serde_json::to_value(&changed).expect("json"),
            ),
        ],
    );
    reconcile::reconcile_user(Arc::new(changed), ctx)
        .await
        .expect("reconcile");
    let bodies = finished(task).await;
    assert_eq!(bodies[1]["status"]["observedGeneration"], 2);
    assert_eq!(
        condition(&bodies[1]["status"], "Ready")["observedGeneration"],
        2
    );
    let a = w
        .meta
        .get_account("alice@example.com")
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(a.quota_bytes, 5 << 30);
    assert!(a.settings.suspended);
    assert!(w
        .meta
        .alias_targets("sales@example.com")
        .await
        .expect("t")
        .is_empty());
    assert_eq!(
        w.meta.alias_targets("info@example.com").await.expect("t"),
        vec!["alice@example.com"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_rotates_the_password() {
    let w = world().await;
    let (ctx, handle) = context(w.meta.clone(), FixedDns(HashMap::new()));
    let (status, handle) = create(&ctx, handle).await;
    let mut same = user(1, "1Gi");
    same.status = Some(status);
    // The Secret now holds an argon2 hash made elsewhere: stored as it is.
    let hash = mailfleet_core::credentials::hash_password("An0ther-Long-Passphrase").expect("hash");
    let task = serve(
        handle,
        vec![expect(Method::GET, SECRET_PATH, secret(&hash))],
    );
    reconcile::reconcile_user(Arc::new(same), ctx.clone())
        .await
        .expect("reconcile");
    finished(task).await;
    let a = w
        .meta
        .get_account("alice@example.com")
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(a.password_hash, hash);
    assert!(ctx.metrics.writes.with_label_values(&["User"]).get() >= 2);
}

async fn delete_with(policy: mailfleet_operator::crd::DeletionPolicy) -> World {
    let w = world().await;
    let (ctx, handle) = context(w.meta.clone(), FixedDns(HashMap::new()));
    let (status, handle) = create(&ctx, handle).await;
    let mut gone = user(1, "1Gi");
    gone.spec.deletion_policy = policy;
    gone.status = Some(status);
    gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let mut answer = serde_json::to_value(&gone).expect("json");
    answer["metadata"]["finalizers"] = json!([]);
    let task = serve(handle, vec![expect(Method::PATCH, USER_PATH, answer)]);
    let action = reconcile::reconcile_user(Arc::new(gone), ctx)
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    let bodies = finished(task).await;
    assert!(
        bodies[0].to_string().contains("remove") || bodies[0].to_string().contains("finalizers"),
        "{}",
        bodies[0]
    );
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_with_retain_keeps_the_mail_and_suspends() {
    let w = delete_with(mailfleet_operator::crd::DeletionPolicy::Retain).await;
    let a = w
        .meta
        .get_account("alice@example.com")
        .await
        .expect("get")
        .expect("kept");
    assert!(a.settings.suspended);
    assert_eq!(
        a.settings.managed_by, None,
        "handed back to the administrator"
    );
    assert_eq!(w.meta.list_mailboxes(a.id).await.expect("boxes").len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_with_delete_removes_the_account() {
    let w = delete_with(mailfleet_operator::crd::DeletionPolicy::Delete).await;
    assert!(w
        .meta
        .get_account("alice@example.com")
        .await
        .expect("get")
        .is_none());
    assert!(w
        .meta
        .alias_targets("sales@example.com")
        .await
        .expect("t")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_degrades_the_status_and_backs_off() {
    let w = world().await;
    let failing = FailingMeta::new(w.meta.clone());
    failing.arm("create_account", 1);
    let (ctx, handle) = context(failing.clone(), FixedDns(HashMap::new()));
    let u = Arc::new(user(1, "1Gi"));
    let task = serve(
        handle,
        vec![
            expect(Method::GET, SECRET_PATH, secret(PASSWORD)),
            expect(
                Method::PATCH,
                USER_STATUS_PATH,
                serde_json::to_value(u.as_ref()).expect("json"),
            ),
        ],
    );
    let err = reconcile::reconcile_user(u.clone(), ctx.clone())
        .await
        .expect_err("store down");
    let bodies = finished(task).await;
    let degraded = condition(&bodies[1]["status"], "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "StoreUnavailable");
    assert!(degraded["message"]
        .as_str()
        .expect("message")
        .contains("injected failure"));
    assert_eq!(condition(&bodies[1]["status"], "Ready")["status"], "False");
    assert_eq!(
        reconcile::error_policy(u.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        reconcile::error_policy(u.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert_eq!(reconcile::backoff(20), Duration::from_secs(300), "capped");
    assert_eq!(
        ctx.metrics
            .reconciles
            .with_label_values(&["User", "error"])
            .get(),
        1
    );
    assert!(w
        .meta
        .get_account("alice@example.com")
        .await
        .expect("get")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_is_reported_on_the_resource() {
    let w = world().await;
    let (ctx, handle) = context(w.meta.clone(), FixedDns(HashMap::new()));
    let u = Arc::new(user(1, "1Gi"));
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "secrets \"alice-password\" not found", "reason": "NotFound", "code": 404});
    let (mut h, _) = (handle, ());
    let task = tokio::spawn(async move {
        let (req, send) = h.next_request().await.expect("get");
        assert_eq!(req.uri().path(), SECRET_PATH);
        send.send_response(
            Response::builder()
                .status(404)
                .body(Body::from(serde_json::to_vec(&not_found).unwrap()))
                .unwrap(),
        );
        let (req, send) = h.next_request().await.expect("status");
        assert_eq!(req.uri().path(), USER_STATUS_PATH);
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        send.send_response(
            Response::builder()
                .body(Body::from(b"{}".to_vec()))
                .unwrap(),
        );
        body
    });
    reconcile::reconcile_user(u, ctx)
        .await
        .expect_err("no secret");
    let body = task.await.expect("task");
    let degraded = condition(&body["status"], "Degraded");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{degraded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_gets_keys_records_and_what_dns_answers() {
    let dir = tempfile::tempdir().expect("tmp");
    let stores = mailfleet_storage::embedded::open(dir.path(), 16).expect("stores");
    let dns = FixedDns(
        [(
            ("example.com.".to_string(), "MX".to_string()),
            vec!["10 mx.example.com.".to_string()],
        )]
        .into(),
    );
    let (ctx, handle) = context(stores.meta.clone(), dns);
    let mut d = Domain::new(
        "example",
        DomainSpec {
            domain_name: "example.com".into(),
            catch_all: None,
            aliases: Vec::new(),
            quota: None,
            mx_host: None,
            dkim: Default::default(),
            dmarc: Default::default(),
            mta_sts: Default::default(),
            tls_rpt_address: None,
            deletion_policy: Default::default(),
        },
    );
    d.metadata.namespace = Some(NS.into());
    d.metadata.generation = Some(1);
    d.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let path = "/apis/mail.mailfleet.io/v1alpha1/namespaces/mail/domains/example/status";
    let task = serve(
        handle,
        vec![expect(
            Method::PATCH,
            path,
            serde_json::to_value(&d).expect("json"),
        )],
    );
    reconcile::reconcile_domain(Arc::new(d), ctx)
        .await
        .expect("reconcile");
    let bodies = finished(task).await;
    let records = bodies[0]["status"]["records"].as_array().expect("records");
    let by = |purpose: &str| {
        records
            .iter()
            .filter(|r| r["purpose"] == purpose)
            .collect::<Vec<_>>()
    };
    assert_eq!(by("MX")[0]["published"], true, "DNS answers with the MX");
    assert_eq!(by("DKIM").len(), 2, "RSA and Ed25519 selectors");
    assert!(by("DKIM")
        .iter()
        .all(|r| r["published"] == false && r["value"].as_str().unwrap().starts_with("v=DKIM1;")));
    for p in ["SPF", "DMARC", "MTA-STS", "TLS-RPT", "autoconfig"] {
        assert!(!by(p).is_empty(), "{p} record");
    }
    let dom = stores
        .meta
        .get_domain("example.com")
        .await
        .expect("get")
        .expect("hosted");
    assert_eq!(dom.managed_by.as_deref(), Some("operator:mail/example"));
    assert_eq!(
        stores
            .meta
            .dkim_keys("example.com")
            .await
            .expect("keys")
            .len(),
        2
    );
}

const PHONE_PATH: &str = "/api/v1/namespaces/mail/secrets/alice-phone";

/// One reconcile of `u`: the password Secret, the app password Secret (at
/// `phone_version`, holding `phone`), then the status when it changed.
async fn reconcile_with_phone(
    ctx: &Arc<Context>,
    handle: ApiHandle,
    u: User,
    phone: &str,
    phone_version: &str,
    status_write: bool,
) -> (Option<UserStatus>, ApiHandle) {
    let mut script = vec![expect(Method::GET, SECRET_PATH, secret(PASSWORD))];
    if !u.spec.app_passwords.is_empty() {
        script.push(expect(
            Method::GET,
            PHONE_PATH,
            secret_named("alice-phone", phone, phone_version),
        ));
    }
    if status_write {
        script.push(expect(
            Method::PATCH,
            USER_STATUS_PATH,
            serde_json::to_value(&u).expect("json"),
        ));
    }
    let task = serve(handle, script);
    reconcile::reconcile_user(Arc::new(u), ctx.clone())
        .await
        .expect("reconcile");
    let (handle, bodies) = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("done")
        .expect("script");
    let status = bodies
        .last()
        .filter(|_| status_write)
        .map(|b| serde_json::from_value(b["status"].clone()).expect("status"));
    (status, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_passwords_come_from_secrets_rotate_and_are_revoked() {
    use mailfleet_operator::crd::AppPasswordSpec;
    let w = world().await;
    let (ctx, handle) = context(w.meta.clone(), FixedDns(HashMap::new()));
    let with_phone = || {
        let mut u = user(1, "1Gi");
        u.spec.app_passwords = vec![AppPasswordSpec {
            name: "phone".into(),
            secret_ref: SecretKeyRef {
                name: "alice-phone".into(),
                key: None,
            },
        }];
        u
    };
    let first = "abcd-efgh-ijkl-mnop-qrst";
    let (status, handle) = reconcile_with_phone(&ctx, handle, with_phone(), first, "7", true).await;
    let status = status.expect("status");
    assert_eq!(status.app_passwords.len(), 1);
    assert_eq!(status.app_passwords[0].secret_resource_version, "7");
    let a = w
        .meta
        .get_account("alice@example.com")
        .await
        .expect("get")
        .expect("account");
    let list = w.meta.list_app_passwords(a.id).await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].name.as_str(), list[0].tag.as_str()),
        ("phone", "abcd")
    );
    // A password the user made themselves is never the operator's to revoke.
    w.meta
        .create_app_password(
            a.id,
            mailfleet_storage::NewAppPassword {
                name: "own".into(),
                tag: "zzzz".into(),
                hash: "x".into(),
                created_at: 0,
            },
        )
        .await
        .expect("own");

    // The same Secret version: nothing written, not even a status.
    let writes = ctx.metrics.writes.with_label_values(&["User"]).get();
    let mut same = with_phone();
    same.status = Some(status.clone());
    let (_, handle) = reconcile_with_phone(&ctx, handle, same, first, "7", false).await;
    assert_eq!(
        ctx.metrics.writes.with_label_values(&["User"]).get(),
        writes
    );

    // A new Secret version with another password replaces it.
    let mut rotated = with_phone();
    rotated.status = Some(status);
    let second = "wxyz-2345-6723-4567-abcd";
    let (status, handle) = reconcile_with_phone(&ctx, handle, rotated, second, "8", true).await;
    let status = status.expect("status");
    assert_eq!(status.app_passwords[0].secret_resource_version, "8");
    let list = w.meta.list_app_passwords(a.id).await.expect("list");
    let phone = list.iter().find(|p| p.name == "phone").expect("phone");
    assert_eq!(phone.tag, "wxyz");

    // Gone from the spec: revoked; the user's own stays.
    let mut removed = user(1, "1Gi");
    removed.status = Some(status);
    let (status, _handle) = reconcile_with_phone(&ctx, handle, removed, "", "0", true).await;
    assert!(status.expect("status").app_passwords.is_empty());
    let names: Vec<String> = w
        .meta
        .list_app_passwords(a.id)
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, vec!["own"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_with_aliases_a_quota_and_its_own_dkim_choice_and_its_deletion() {
    use mailfleet_operator::crd::{DkimAlgorithmName, DkimSpec};
    let dir = tempfile::tempdir().expect("tmp");
    let stores = mailfleet_storage::embedded::open(dir.path(), 16).expect("stores");
    let (ctx, handle) = context(stores.meta.clone(), FixedDns(HashMap::new()));
    let mut d = Domain::new(
        "example",
        DomainSpec {
            domain_name: "example.com".into(),
            catch_all: None,
            aliases: vec!["example.net".into()],
            quota: Some("10Gi".into()),
            mx_host: None,
            dkim: DkimSpec {
                selector: Some("s2026".into()),
                algorithms: Some(vec![DkimAlgorithmName::Ed25519Sha256]),
                rotation_days: None,
            },
            dmarc: Default::default(),
            mta_sts: Default::default(),
            tls_rpt_address: None,
            deletion_policy: mailfleet_operator::crd::DeletionPolicy::Delete,
        },
    );
    d.metadata.namespace = Some(NS.into());
    d.metadata.generation = Some(1);
    d.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let domain_path = "/apis/mail.mailfleet.io/v1alpha1/namespaces/mail/domains/example";
    let status_path = format!("{domain_path}/status");
    let task = serve(
        handle,
        vec![expect(
            Method::PATCH,
            &status_path,
            serde_json::to_value(&d).expect("json"),
        )],
    );
    reconcile::reconcile_domain(Arc::new(d.clone()), ctx.clone())
        .await
        .expect("reconcile");
    let bodies = finished(task).await;
    let status = &bodies[0]["status"];
    let records = status["records"].as_array().expect("records");
    let named = |name: &str, purpose: &str| {
        records
            .iter()
            .filter(|r| r["name"] == name && r["purpose"] == purpose)
            .count()
    };
    assert_eq!(named("example.net.", "MX"), 1, "the alias domain's MX");
    assert_eq!(named("example.net.", "SPF"), 1);
    assert_eq!(named("s2026._domainkey.example.com.", "DKIM"), 1);
    assert_eq!(
        records.iter().filter(|r| r["purpose"] == "DKIM").count(),
        1,
        "Ed25519 only"
    );
    assert_eq!(status["allocatedQuotaBytes"], 0);
    let meta = stores.meta.as_ref();
    assert_eq!(
        meta.get_domain("example.com")
            .await
            .expect("get")
            .expect("d")
            .quota_bytes,
        10 << 30
    );
    assert_eq!(
        meta.alias_targets("@example.net").await.expect("t"),
        vec!["@example.com"]
    );
    // A User over the domain's quota is refused by the same rules the CLI follows.
    let too_big = mailfleet_provision::AccountSpec {
        address: "big@example.com".into(),
        password: Some(mailfleet_provision::PasswordInput::Plain(PASSWORD.into())),
        quota_bytes: 11 << 30,
        display_name: None,
        suspended: false,
        protocols: mailfleet_storage::Protocols::ALL,
    };
    assert!(
        mailfleet_provision::ensure_account(meta, &Actor::operator(NS, "big"), &too_big)
            .await
            .is_err()
    );

    // Deleted with policy Delete: the alias domain goes with it.
    d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let (ctx, handle) = context(stores.meta.clone(), FixedDns(HashMap::new()));
    let mut answer = serde_json::to_value(&d).expect("json");
    answer["metadata"]["finalizers"] = json!([]);
    let task = serve(handle, vec![expect(Method::PATCH, domain_path, answer)]);
    reconcile::reconcile_domain(Arc::new(d), ctx)
        .await
        .expect("cleanup");
    finished(task).await;
    assert!(meta.get_domain("example.net").await.expect("get").is_none());
    assert!(meta.get_domain("example.com").await.expect("get").is_none());
}
