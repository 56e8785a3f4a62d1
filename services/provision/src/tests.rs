//! The provisioning rules against a real embedded store.

use super::*;
use mailfleet_storage::{Protocols, Stores};

const PASSWORD: &str = "Corr3ct-Horse-Battery-Staple";

async fn stores() -> (tempfile::TempDir, Stores) {
    let dir = tempfile::tempdir().expect("tmp");
    let stores = mailfleet_storage::embedded::open(dir.path(), 16).expect("stores");
    (dir, stores)
}

fn spec(address: &str) -> AccountSpec {
    AccountSpec {
        address: address.into(),
        password: Some(PasswordInput::Plain(PASSWORD.into())),
        quota_bytes: 1 << 30,
        display_name: Some("Alice".into()),
        suspended: false,
        protocols: Protocols::ALL,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_creates_then_writes_nothing_then_only_the_difference() {
    let (_d, s) = stores().await;
    let meta = s.meta.as_ref();
    let op = Actor::operator("mail", "alice");
    assert!(ensure_domain(meta, &op, "Example.com")
        .await
        .expect("domain"));
    assert!(!ensure_domain(meta, &op, "example.com")
        .await
        .expect("again"));

    let first = ensure_account(meta, &op, &spec("alice@example.com"))
        .await
        .expect("create");
    assert!(first.changed);
    assert_eq!(first.account.quota_bytes, 1 << 30);
    assert_eq!(
        first.account.settings.managed_by.as_deref(),
        Some("operator:mail/alice")
    );
    assert_eq!(
        first.account.settings.display_name.as_deref(),
        Some("Alice")
    );
    assert_eq!(
        meta.list_mailboxes(first.account.id)
            .await
            .expect("mb")
            .len(),
        6
    );

    let again = ensure_account(meta, &op, &spec("alice@example.com"))
        .await
        .expect("again");
    assert!(!again.changed, "nothing differs, nothing written");
    assert_eq!(again.account.password_hash, first.account.password_hash);

    let mut changed = spec("alice@example.com");
    changed.quota_bytes = 0;
    changed.suspended = true;
    let after = ensure_account(meta, &op, &changed).await.expect("update");
    assert!(after.changed);
    assert_eq!(after.account.quota_bytes, 0);
    assert!(after.account.settings.suspended);
    assert_eq!(
        after.account.password_hash, first.account.password_hash,
        "the same password is not rehashed"
    );

    let mut rotated = changed.clone();
    rotated.password = Some(PasswordInput::Plain("An0ther-Long-Passphrase".into()));
    let r = ensure_account(meta, &op, &rotated).await.expect("rotate");
    assert!(r.changed);
    assert_ne!(r.account.password_hash, first.account.password_hash);
    assert!(mailfleet_core::credentials::verify_password(
        "An0ther-Long-Passphrase",
        &r.account.password_hash
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_keep_the_cli_and_other_resources_out() {
    let (_d, s) = stores().await;
    let meta = s.meta.as_ref();
    let op = Actor::operator("mail", "alice");
    let cli = Actor::Admin;
    add_domain(meta, &cli, "example.com").await.expect("domain");
    // An account the CLI made is adopted by the resource that names it.
    add_account(
        meta,
        &cli,
        "alice@example.com",
        &PasswordInput::Plain(PASSWORD.into()),
        0,
    )
    .await
    .expect("cli add");
    assert!(
        ensure_account(meta, &op, &spec("alice@example.com"))
            .await
            .expect("adopt")
            .changed
    );

    let refused = set_quota(meta, &cli, "alice@example.com", 5)
        .await
        .expect_err("managed");
    assert!(matches!(refused, Error::Managed { .. }));
    assert!(
        refused.to_string().contains("operator:mail/alice"),
        "{refused}"
    );
    assert!(matches!(
        set_password(
            meta,
            &cli,
            "alice@example.com",
            &PasswordInput::Plain(PASSWORD.into())
        )
        .await,
        Err(Error::Managed { .. })
    ));
    assert!(matches!(
        remove_account(meta, &cli, "alice@example.com").await,
        Err(Error::Managed { .. })
    ));
    assert!(matches!(
        suspend_account(meta, &cli, "alice@example.com", true).await,
        Err(Error::Managed { .. })
    ));
    let other = Actor::operator("mail", "impostor");
    assert!(matches!(
        ensure_account(meta, &other, &spec("alice@example.com")).await,
        Err(Error::Managed { .. })
    ));

    // Retain: suspended, mail kept, handed back to the administrator.
    assert!(release_account(meta, &op, "alice@example.com")
        .await
        .expect("release"));
    let a = meta
        .get_account("alice@example.com")
        .await
        .expect("get")
        .expect("kept");
    assert!(a.settings.suspended);
    assert_eq!(a.settings.managed_by, None);
    assert!(suspend_account(meta, &cli, "alice@example.com", false)
        .await
        .expect("resume"));
    remove_account(meta, &cli, "alice@example.com")
        .await
        .expect("now the CLI may");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_and_catch_all_follow_the_wanted_set() {
    let (_d, s) = stores().await;
    let meta = s.meta.as_ref();
    let op = Actor::operator("mail", "example");
    ensure_domain(meta, &op, "example.com")
        .await
        .expect("domain");
    ensure_account(meta, &op, &spec("alice@example.com"))
        .await
        .expect("user");
    let want = vec![
        "Sales@example.com".to_string(),
        "info@example.com".to_string(),
    ];
    assert!(ensure_aliases_of(meta, &op, "alice@example.com", &want)
        .await
        .expect("add"));
    assert!(!ensure_aliases_of(meta, &op, "alice@example.com", &want)
        .await
        .expect("same"));
    assert_eq!(
        meta.alias_targets("sales@example.com").await.expect("t"),
        vec!["alice@example.com"]
    );
    assert!(
        ensure_aliases_of(meta, &op, "alice@example.com", &want[1..])
            .await
            .expect("drop")
    );
    assert!(meta
        .alias_targets("sales@example.com")
        .await
        .expect("t")
        .is_empty());
    assert!(
        ensure_aliases_of(meta, &op, "alice@example.com", &["@example.com".into()])
            .await
            .is_err()
    );

    assert!(
        ensure_catch_all(meta, &op, "example.com", Some("alice@example.com"))
            .await
            .expect("set")
    );
    assert!(
        !ensure_catch_all(meta, &op, "example.com", Some("alice@example.com"))
            .await
            .expect("same")
    );
    assert_eq!(
        meta.alias_targets("@example.com").await.expect("t"),
        vec!["alice@example.com"]
    );
    assert!(ensure_catch_all(meta, &op, "example.com", None)
        .await
        .expect("clear"));
    assert!(meta
        .alias_targets("@example.com")
        .await
        .expect("t")
        .is_empty());
    assert!(matches!(
        add_alias(meta, &Actor::Admin, "x@example.com", "alice@example.com").await,
        Err(Error::Managed { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_keys_are_made_once_and_rotated_by_age() {
    let (_d, s) = stores().await;
    let meta = s.meta.as_ref();
    let op = Actor::operator("mail", "example");
    ensure_domain(meta, &op, "example.com")
        .await
        .expect("domain");
    let policy = DkimPolicy {
        choice: Default::default(),
        rotate_after: Some(std::time::Duration::from_secs(30 * 86400)),
        lifecycle: Default::default(),
    };
    let t0 = 1_800_000_000;
    let first = ensure_dkim(meta, "example.com", policy.clone(), t0)
        .await
        .expect("generate");
    assert!(first.changed);
    assert_eq!(first.records.len(), 2, "an RSA and an Ed25519 key");
    assert!(first.records.iter().all(|(_, st, txt)| *st
        == mailfleet_storage::DkimKeyState::Active
        && txt.starts_with("v=DKIM1;")));
    let later = ensure_dkim(meta, "example.com", policy.clone(), t0 + 86400)
        .await
        .expect("same");
    assert!(!later.changed);
    let rotated = ensure_dkim(meta, "example.com", policy.clone(), t0 + 31 * 86400)
        .await
        .expect("rotate");
    assert!(rotated.changed);
    assert_eq!(rotated.records.len(), 4);
    assert_eq!(
        rotated
            .records
            .iter()
            .filter(|(_, st, _)| *st == mailfleet_storage::DkimKeyState::Published)
            .count(),
        2,
        "the new selectors are published before they sign"
    );
    let not_again = ensure_dkim(meta, "example.com", policy.clone(), t0 + 31 * 86400 + 60)
        .await
        .expect("pending");
    assert!(
        !not_again.changed,
        "no second rotation while one is waiting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_dkim_choice_rotates_to_it_and_retires_the_dropped_algorithm() {
    use mailfleet_delivery::dkim::KeyChoice;
    use mailfleet_storage::{DkimAlgorithm, DkimKeyState};
    let (_d, s) = stores().await;
    let meta = s.meta.as_ref();
    let op = Actor::operator("mail", "example");
    ensure_domain(meta, &op, "example.com")
        .await
        .expect("domain");
    let life = mailfleet_delivery::dkim::Lifecycle::default();
    let both = DkimPolicy {
        choice: KeyChoice::default(),
        rotate_after: None,
        lifecycle: life,
    };
    let t0 = 1_800_000_000;
    ensure_dkim(meta, "example.com", both, t0)
        .await
        .expect("generate");
    let rsa_only = DkimPolicy {
        choice: KeyChoice::new("s2026", &[DkimAlgorithm::Rsa]).expect("choice"),
        rotate_after: None,
        lifecycle: life,
    };
    let switched = ensure_dkim(meta, "example.com", rsa_only.clone(), t0 + 3600)
        .await
        .expect("switch");
    assert!(switched.changed);
    let published: Vec<&str> = switched
        .records
        .iter()
        .filter(|(_, st, _)| *st == DkimKeyState::Published)
        .map(|(sel, _, _)| sel.as_str())
        .collect();
    assert_eq!(published.len(), 1, "{:?}", switched.records);
    assert!(published[0].starts_with("s2026-"), "{published:?}");
    // Unchanged until the new key has been in DNS for the publish delay.
    let waiting = ensure_dkim(meta, "example.com", rsa_only.clone(), t0 + 7200)
        .await
        .expect("waiting");
    assert!(!waiting.changed);
    let after = t0 + 3600 + life.publish_delay.as_secs() as i64 + 1;
    let signed = ensure_dkim(meta, "example.com", rsa_only.clone(), after)
        .await
        .expect("promote");
    assert!(signed.changed);
    let keys = mailfleet_delivery::dkim::signing_keys(meta, "example.com")
        .await
        .expect("keys")
        .expect("some");
    assert_eq!(
        keys.selectors(),
        vec![published[0]],
        "only the new RSA key signs"
    );
    let retired = signed
        .records
        .iter()
        .filter(|(_, st, _)| *st == DkimKeyState::Retired)
        .count();
    assert_eq!(
        retired, 2,
        "the old RSA and the dropped Ed25519 key: {:?}",
        signed.records
    );
    assert!(
        !ensure_dkim(meta, "example.com", rsa_only, after + 60)
            .await
            .expect("settled")
            .changed
    );
    assert!(KeyChoice::new("Bad_Selector", &[DkimAlgorithm::Rsa]).is_err());
    assert!(KeyChoice::new("ok", &[]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_quota_bounds_the_quotas_of_its_accounts() {
    let (_d, s) = stores().await;
    let meta = s.meta.as_ref();
    let admin = Actor::Admin;
    add_domain(meta, &admin, "example.com")
        .await
        .expect("domain");
    let pw = PasswordInput::Plain(PASSWORD.into());
    add_account(meta, &admin, "a@example.com", &pw, 0)
        .await
        .expect("unlimited account");
    let e = set_domain_quota(meta, &admin, "example.com", 3 << 30)
        .await
        .expect_err("an unlimited account does not fit");
    assert!(e.to_string().contains("without a quota"), "{e}");
    set_quota(meta, &admin, "a@example.com", 2 << 30)
        .await
        .expect("quota");
    assert!(set_domain_quota(meta, &admin, "example.com", 3 << 30)
        .await
        .expect("domain quota"));
    assert!(!set_domain_quota(meta, &admin, "example.com", 3 << 30)
        .await
        .expect("same"));
    assert_eq!(
        meta.get_domain("example.com")
            .await
            .expect("get")
            .expect("d")
            .quota_bytes,
        3 << 30
    );
    let over = add_account(meta, &admin, "b@example.com", &pw, 2 << 30)
        .await
        .expect_err("over");
    assert!(
        over.to_string().contains("over the domain's quota"),
        "{over}"
    );
    assert!(add_account(meta, &admin, "b@example.com", &pw, 0)
        .await
        .is_err());
    add_account(meta, &admin, "b@example.com", &pw, 1 << 30)
        .await
        .expect("fits exactly");
    assert!(set_quota(meta, &admin, "b@example.com", (1 << 30) + 1)
        .await
        .is_err());
    // Changing an account's own quota does not count its old quota twice.
    set_quota(meta, &admin, "a@example.com", 2 << 30)
        .await
        .expect("same size again");
    assert!(set_domain_quota(meta, &admin, "example.com", 2 << 30)
        .await
        .is_err());
    assert_eq!(
        allocated_quota(meta, "example.com").await.expect("sum"),
        Some(3 << 30)
    );
    assert!(set_domain_quota(meta, &admin, "example.com", 0)
        .await
        .expect("no limit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_aliases_are_hosted_pointed_and_removed() {
    let (_d, s) = stores().await;
    let meta = s.meta.as_ref();
    let op = Actor::operator("mail", "example");
    ensure_domain(meta, &op, "example.com")
        .await
        .expect("domain");
    let wanted = vec!["Example.NET".to_string(), "example.org".to_string()];
    assert!(ensure_domain_aliases(meta, &op, "example.com", &wanted)
        .await
        .expect("aliases"));
    assert!(!ensure_domain_aliases(meta, &op, "example.com", &wanted)
        .await
        .expect("again"));
    assert_eq!(
        domain_aliases_of(meta, "example.com").await.expect("list"),
        vec!["example.net", "example.org"]
    );
    let net = meta
        .get_domain("example.net")
        .await
        .expect("get")
        .expect("hosted");
    assert_eq!(net.managed_by.as_deref(), Some("operator:mail/example"));
    assert_eq!(
        meta.alias_targets("@example.net").await.expect("targets"),
        vec!["@example.com"]
    );
    // The admin CLI may not take an operator's alias domain.
    assert!(matches!(
        add_alias(meta, &Actor::Admin, "x@example.net", "y@example.com").await,
        Err(Error::Managed { .. })
    ));
    assert!(
        ensure_domain_aliases(meta, &op, "example.com", &wanted[1..])
            .await
            .expect("drop one")
    );
    assert!(meta.get_domain("example.net").await.expect("get").is_none());
    assert!(
        ensure_domain_aliases(meta, &op, "example.com", &["example.com".into()])
            .await
            .is_err()
    );
    // The CLI form: a catch-all pointing at a whole domain; only a catch-all may.
    add_domain(meta, &Actor::Admin, "a.test").await.expect("a");
    add_domain(meta, &Actor::Admin, "b.test").await.expect("b");
    add_alias(meta, &Actor::Admin, "@b.test", "@a.test")
        .await
        .expect("domain alias");
    assert!(add_alias(meta, &Actor::Admin, "x@b.test", "@a.test")
        .await
        .is_err());
    assert!(add_alias(meta, &Actor::Admin, "@a.test", "@a.test")
        .await
        .is_err());
    assert!(add_alias(meta, &Actor::Admin, "@a.test", "@absent.test")
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_passwords_given_from_outside_are_kept_by_name_and_replaced_on_change() {
    let (_d, s) = stores().await;
    let meta = s.meta.as_ref();
    let op = Actor::operator("mail", "alice");
    ensure_domain(meta, &op, "example.com")
        .await
        .expect("domain");
    let a = ensure_account(meta, &op, &spec("alice@example.com"))
        .await
        .expect("account")
        .account;
    let first = "abcd-efgh-ijkl-mnop-qrst";
    assert!(
        ensure_app_password(meta, &op, "alice@example.com", "phone", first, 1)
            .await
            .expect("import")
    );
    assert!(!ensure_app_password(
        meta,
        &op,
        "alice@example.com",
        "phone",
        &first.to_uppercase(),
        2
    )
    .await
    .expect("same, typed differently"));
    let second = "wxyz-2345-6723-4567-abcd";
    assert!(
        ensure_app_password(meta, &op, "alice@example.com", "phone", second, 3)
            .await
            .expect("rotate")
    );
    let list = meta.list_app_passwords(a.id).await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].tag, "wxyz");
    assert!(mailfleet_core::credentials::verify_password(
        "wxyz234567234567abcd",
        &list[0].hash
    ));
    // Another name may not reuse the lookup tag; a wrong shape is refused, not stored.
    let e = ensure_app_password(
        meta,
        &op,
        "alice@example.com",
        "laptop",
        "wxyz-aaaa-bbbb-cccc-dddd",
        4,
    )
    .await
    .expect_err("tag taken");
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(
        ensure_app_password(meta, &op, "alice@example.com", "laptop", "hunter2", 4)
            .await
            .is_err()
    );
    // The CLI may not touch an account the operator manages.
    assert!(matches!(
        ensure_app_password(meta, &Actor::Admin, "alice@example.com", "x", first, 5).await,
        Err(Error::Managed { .. })
    ));
    assert!(revoke_app_password(meta, &op, "alice@example.com", "phone")
        .await
        .expect("revoke"));
    assert!(
        !revoke_app_password(meta, &op, "alice@example.com", "phone")
            .await
            .expect("gone")
    );
}
