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
        rotate_after: Some(std::time::Duration::from_secs(30 * 86400)),
        lifecycle: Default::default(),
    };
    let t0 = 1_800_000_000;
    let first = ensure_dkim(meta, "example.com", policy, t0)
        .await
        .expect("generate");
    assert!(first.changed);
    assert_eq!(first.records.len(), 2, "an RSA and an Ed25519 key");
    assert!(first.records.iter().all(|(_, st, txt)| *st
        == mailfleet_storage::DkimKeyState::Active
        && txt.starts_with("v=DKIM1;")));
    let later = ensure_dkim(meta, "example.com", policy, t0 + 86400)
        .await
        .expect("same");
    assert!(!later.changed);
    let rotated = ensure_dkim(meta, "example.com", policy, t0 + 31 * 86400)
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
    let not_again = ensure_dkim(meta, "example.com", policy, t0 + 31 * 86400 + 60)
        .await
        .expect("pending");
    assert!(
        !not_again.changed,
        "no second rotation while one is waiting"
    );
}
