//! One contract for every accounts backend, run against SQLite (embedded) and Postgres
//! (production). Postgres comes from `POSTGRES_TEST_URL`, which `scripts/test.sh` sets
//! after starting a throwaway server; each run gets a database of its own.

mod common;

use accounts::postgres::PgStore;
use accounts::sqlite::SqliteStore;
use accounts::store::{AccountStore, Membership, ProfileUpdate, RefreshUse, Role, SessionRevocation, StoreError};

use common::unique;

async fn contract<S: AccountStore>(s: &S) {
    let acme = s.create_enterprise("acme").await.expect("create");
    assert_eq!(acme.id, "acme");
    assert!(matches!(s.create_enterprise("acme").await, Err(StoreError::Conflict)));
    // Names are unique, and found, regardless of case: one spelling per topic level.
    assert!(matches!(s.create_enterprise("ACME").await, Err(StoreError::Conflict)));
    assert_eq!(s.enterprise_by_name("Acme").await.expect("read"), Some(acme.clone()));
    assert_eq!(s.enterprise_by_name("acme").await.expect("read"), Some(acme.clone()));
    assert_eq!(s.enterprise_by_name("globex").await.expect("read"), None);
    s.create_enterprise("globex").await.expect("create");

    let alice = s.create_user("acme", "alice", "Alice", "hash-a").await.expect("user");
    let bob = s.create_user("acme", "bob", "Bob", "hash-b").await.expect("user");
    let carol = s.create_user("acme", "carol", "Carol", "hash-c").await.expect("user");
    assert!(matches!(s.create_user("acme", "alice", "Again", "x").await, Err(StoreError::Conflict)));
    assert!(matches!(s.create_user("acme", "ALICE", "Again", "x").await, Err(StoreError::Conflict)));
    assert_eq!(s.user_by_name("acme", "Alice").await.expect("read").map(|u| u.id), Some(alice.id.clone()));
    s.create_user("globex", "alice", "Other Alice", "hash-g").await.expect("same name, other enterprise");
    let found = s.user_by_name("acme", "alice").await.expect("read").expect("alice");
    assert_eq!((found.id.as_str(), found.password_hash.as_str(), found.disabled), (alice.id.as_str(), "hash-a", false));
    assert_eq!(s.user_by_name("acme", "nobody").await.expect("read"), None);

    let v1 = s.set_follow("acme", &alice.id, &bob.id, true).await.expect("follow");
    let v2 = s.set_follow("acme", &alice.id, &carol.id, true).await.expect("follow");
    let v3 = s.set_follow("acme", &bob.id, &alice.id, true).await.expect("follow");
    assert!(v1 < v2 && v2 < v3, "versions increase: {v1} {v2} {v3}");
    let full = s.contacts_since(&alice.id, 0).await.expect("contacts");
    let names: Vec<(&str, bool)> = full.iter().map(|c| (c.username.as_str(), c.friend)).collect();
    assert_eq!(names, vec![("bob", true), ("carol", false)]);
    let v4 = s.set_follow("acme", &alice.id, &carol.id, false).await.expect("unfollow");
    let delta = s.contacts_since(&alice.id, v3).await.expect("delta");
    assert_eq!(delta.len(), 1);
    assert_eq!((delta[0].username.as_str(), delta[0].following, delta[0].version), ("carol", false, v4));
    let full = s.contacts_since(&alice.id, 0).await.expect("contacts");
    assert_eq!(full.iter().map(|c| c.username.as_str()).collect::<Vec<_>>(), vec!["bob"], "full lists omit removals");
    // Bob renames himself: alice's next sync has him again, and only him.
    s.update_profile(&bob.id, &ProfileUpdate { display_name: Some("Robert".into()), ..ProfileUpdate::default() })
        .await
        .expect("rename");
    s.touch_contact(&bob.id).await.expect("touch");
    let delta = s.contacts_since(&alice.id, v4).await.expect("delta");
    assert_eq!(delta.len(), 1);
    assert_eq!(
        (delta[0].username.as_str(), delta[0].display_name.as_str(), delta[0].following),
        ("bob", "Robert", true)
    );
    assert!(delta[0].version > v4);
    let mut follows = s.all_follows().await.expect("all");
    follows.sort();
    assert_eq!(
        follows,
        vec![("acme".into(), "alice".into(), "bob".into()), ("acme".into(), "bob".into(), "alice".into())]
    );
    groups_and_memberships(s, &alice.id, &bob.id, &carol.id).await;
    users_and_profiles(s, &alice.id, &bob.id).await;
    refresh_tokens(s, &alice.id).await;
    policies_and_keys(s).await;
    outbox(s).await;
}

async fn groups_and_memberships<S: AccountStore>(s: &S, alice: &str, bob: &str, carol: &str) {
    let ops = s.create_group("acme", "ops", "Ops", alice).await.expect("create");
    assert_eq!((ops.enterprise_id.as_str(), ops.name.as_str(), ops.display_name.as_str()), ("acme", "ops", "Ops"));
    assert!(
        matches!(s.create_group("acme", "OPS", "Again", bob).await, Err(StoreError::Conflict)),
        "names ignore case"
    );
    let globex_alice = s.user_by_name("globex", "alice").await.expect("read").expect("globex's alice");
    s.create_group("globex", "ops", "Other Ops", &globex_alice.id).await.expect("same name, other enterprise");
    assert_eq!(s.group_by_name("acme", "Ops").await.expect("read"), Some(ops.clone()));
    assert_eq!(s.group_by_name("acme", "nope").await.expect("read"), None);
    assert_eq!(s.group_role(&ops.id, alice).await.expect("read"), Some(Role::Owner), "the creator owns it");
    let full = s.groups_since(alice, 0).await.expect("sync");
    let owned = Membership {
        name: "ops".into(),
        display_name: "Ops".into(),
        role: Role::Owner,
        member: true,
        version: full.first().map_or(0, |m| m.version),
    };
    assert_eq!(full, vec![owned.clone()]);

    // Joining is idempotent: a second time changes nothing, not even the version.
    let joined = s.set_membership(&ops.id, bob, Some(Role::Member)).await.expect("join").expect("a change");
    assert!(joined > owned.version);
    assert_eq!(s.set_membership(&ops.id, bob, Some(Role::Member)).await.expect("again"), None);
    assert_eq!(s.group_role(&ops.id, bob).await.expect("read"), Some(Role::Member));
    assert_eq!(s.group_role(&ops.id, carol).await.expect("read"), None);
    let bobs = s.groups_since(bob, 0).await.expect("sync");
    assert_eq!(
        bobs.iter().map(|m| (m.name.as_str(), m.role, m.version)).collect::<Vec<_>>(),
        vec![("ops", Role::Member, joined)]
    );

    // A group keeps an owner: its last one can neither leave nor step down.
    assert!(matches!(s.set_membership(&ops.id, alice, None).await, Err(StoreError::LastOwner)));
    assert!(matches!(s.set_membership(&ops.id, alice, Some(Role::Member)).await, Err(StoreError::LastOwner)));
    assert_eq!(s.group_role(&ops.id, alice).await.expect("read"), Some(Role::Owner), "refused changes change nothing");
    let promoted = s.set_membership(&ops.id, bob, Some(Role::Owner)).await.expect("promote").expect("a change");
    let left = s.set_membership(&ops.id, alice, None).await.expect("leave").expect("a change");
    assert!(joined < promoted && promoted < left, "versions increase: {joined} {promoted} {left}");
    let delta = s.groups_since(alice, owned.version).await.expect("delta");
    assert_eq!(delta, vec![Membership { member: false, version: left, ..owned.clone() }], "removals are in deltas");
    assert!(s.groups_since(alice, 0).await.expect("sync").is_empty(), "full syncs omit removals");
    assert!(s.groups_since(alice, left).await.expect("sync").is_empty());
    let members = s.group_members(&ops.id).await.expect("members");
    assert_eq!(members.iter().map(|m| (m.username.as_str(), m.role)).collect::<Vec<_>>(), vec![("bob", Role::Owner)]);
    assert!(matches!(s.set_membership(&ops.id, bob, None).await, Err(StoreError::LastOwner)));
    assert_eq!(s.set_membership(&ops.id, carol, None).await.expect("never was"), None);
    assert!(matches!(s.set_membership("no-such-group", carol, Some(Role::Member)).await, Err(StoreError::NotFound)));
    let rejoined = s.set_membership(&ops.id, alice, Some(Role::Member)).await.expect("rejoin").expect("a change");
    assert_eq!(s.groups_since(alice, left).await.expect("delta")[0].role, Role::Member);
    assert!(rejoined > left);

    let dev = s.create_group("acme", "dev", "Dev", carol).await.expect("create");
    let names = |groups: Vec<accounts::store::Group>| groups.into_iter().map(|g| g.name).collect::<Vec<_>>();
    assert_eq!(names(s.list_groups("acme", "", 10).await.expect("list")), vec!["dev", "ops"]);
    assert_eq!(names(s.list_groups("acme", "", 1).await.expect("page")), vec!["dev"]);
    assert_eq!(names(s.list_groups("acme", &dev.name, 10).await.expect("page")), vec!["ops"]);
    let mut all = s.all_memberships().await.expect("all");
    all.sort();
    let expected: Vec<(String, String, String)> =
        [("acme", "dev", "carol"), ("acme", "ops", "alice"), ("acme", "ops", "bob"), ("globex", "ops", "alice")]
            .iter()
            .map(|(e, g, u)| (e.to_string(), g.to_string(), u.to_string()))
            .collect();
    assert_eq!(all, expected);

    // Two owners leave at once: one of them stays, whatever the interleaving.
    for round in 0..5 {
        let g = s.create_group("acme", &format!("race-{round}"), "Race", alice).await.expect("create");
        s.set_membership(&g.id, bob, Some(Role::Owner)).await.expect("promote");
        let (a, b) = tokio::join!(s.set_membership(&g.id, alice, None), s.set_membership(&g.id, bob, None));
        let refused = [&a, &b].iter().filter(|r| matches!(r, Err(StoreError::LastOwner))).count();
        assert_eq!(refused, 1, "round {round}: {a:?} {b:?}");
        let owners = s.group_members(&g.id).await.expect("members");
        assert_eq!(owners.iter().map(|m| m.role).collect::<Vec<_>>(), vec![Role::Owner], "round {round}");
    }
}

async fn users_and_profiles<S: AccountStore>(s: &S, alice: &str, bob: &str) {
    let update = ProfileUpdate {
        signature: Some("busy".into()),
        org_unit: Some("sales/emea".into()),
        ..ProfileUpdate::default()
    };
    let u = s.update_profile(alice, &update).await.expect("update");
    assert_eq!((u.signature.as_str(), u.org_unit.as_str(), u.display_name.as_str()), ("busy", "sales/emea", "Alice"));
    s.update_profile(bob, &ProfileUpdate { org_unit: Some("sales".into()), ..ProfileUpdate::default() })
        .await
        .expect("update");
    assert!(matches!(s.update_profile("nobody", &update).await, Err(StoreError::NotFound)));
    s.set_flags(bob, true, true).await.expect("flags");
    let b = s.user_by_id(bob).await.expect("read").expect("bob");
    assert!(b.disabled && b.admin);
    s.set_password(bob, "hash-b2").await.expect("password");
    assert_eq!(s.user_by_id(bob).await.expect("read").expect("bob").password_hash, "hash-b2");

    let names = |users: Vec<accounts::store::User>| users.into_iter().map(|u| u.username).collect::<Vec<_>>();
    assert_eq!(names(s.list_users("acme", "", 2, None).await.expect("page")), vec!["alice", "bob"]);
    assert_eq!(names(s.list_users("acme", "bob", 2, None).await.expect("page")), vec!["carol"]);
    assert_eq!(names(s.list_users("acme", "", 10, Some("sales")).await.expect("unit")), vec!["alice", "bob"]);
    assert_eq!(names(s.list_users("acme", "", 10, Some("sales/emea")).await.expect("unit")), vec!["alice"]);
    assert!(s.list_users("acme", "", 10, Some("sal")).await.expect("unit").is_empty(), "units match whole names");
    assert_eq!(s.org_units("acme").await.expect("units"), vec![("sales".into(), 1), ("sales/emea".into(), 1)]);

    s.revoke_tokens(alice, 5_000).await.expect("revoke");
    s.revoke_tokens(alice, 4_000).await.expect("an older instant does not move it back");
    assert_eq!(s.user_by_id(alice).await.expect("read").expect("alice").tokens_revoked_ms, 5_000);
    assert_eq!(s.revocations_since(4_999).await.expect("recent"), vec![("acme".into(), alice.to_owned(), 5_000)]);
    assert!(s.revocations_since(5_000).await.expect("recent").is_empty());
}

async fn refresh_tokens<S: AccountStore>(s: &S, alice: &str) {
    let now = accounts::store::now_ms();
    s.insert_refresh("h1", alice, "fam", now + 60_000).await.expect("insert");
    s.insert_refresh("old", alice, "fam2", now - 1).await.expect("insert");
    assert_eq!(s.refresh_family("h1").await.expect("read"), Some((alice.to_owned(), "fam".to_owned())));
    assert_eq!(
        s.use_refresh("h1", now).await.expect("use"),
        RefreshUse::Valid { user_id: alice.into(), family: "fam".into() }
    );
    assert_eq!(s.use_refresh("h1", now).await.expect("use"), RefreshUse::Reused { family: "fam".into() });
    assert_eq!(s.use_refresh("old", now).await.expect("use"), RefreshUse::Expired);
    assert_eq!(s.use_refresh("nope", now).await.expect("use"), RefreshUse::Unknown);
    s.insert_refresh("h2", alice, "fam", now + 60_000).await.expect("insert");
    s.revoke_refresh_family("fam").await.expect("revoke");
    assert_eq!(s.use_refresh("h2", now).await.expect("use"), RefreshUse::Revoked);
    s.insert_refresh("h3", alice, "fam3", now + 60_000).await.expect("insert");
    s.revoke_tokens(alice, now).await.expect("revoke all");
    assert_eq!(s.use_refresh("h3", now).await.expect("use"), RefreshUse::Revoked, "revoking a user ends every family");

    // A device that logged out: its session's revocation is kept, the later instant winning,
    // and listed with its enterprise for edges that start later.
    let logged_out = |session: &str, before_ms: i64| SessionRevocation {
        enterprise_id: "acme".into(),
        user_id: alice.into(),
        session: session.into(),
        before_ms,
    };
    s.revoke_session_tokens(alice, "fam", 7_000).await.expect("revoke session");
    s.revoke_session_tokens(alice, "fam", 6_000).await.expect("an earlier instant does not move it back");
    s.revoke_session_tokens(alice, "fam2", 3_000).await.expect("revoke session");
    let mut all = s.session_revocations_since(0).await.expect("all");
    all.sort_by(|a, b| a.session.cmp(&b.session));
    assert_eq!(all, vec![logged_out("fam", 7_000), logged_out("fam2", 3_000)]);
    assert_eq!(s.session_revocations_since(3_000).await.expect("recent"), vec![logged_out("fam", 7_000)]);
    assert!(s.session_revocations_since(7_000).await.expect("recent").is_empty());
}

async fn policies_and_keys<S: AccountStore>(s: &S) {
    assert_eq!(s.policy("acme").await.expect("read").version, 0, "no own tables yet");
    assert_eq!(s.set_policy("acme", "pattern read %e/#", "").await.expect("set"), 1);
    assert_eq!(s.set_policy("acme", "pattern read %e/x/#", "%e/x 1").await.expect("set"), 2);
    let p = s.policy("acme").await.expect("read");
    assert_eq!((p.acl_rules.as_str(), p.auto_subscribe.as_str(), p.version), ("pattern read %e/x/#", "%e/x 1", 2));
    assert_eq!(s.all_policies().await.expect("all").len(), 1);

    let k = s.create_api_key("acme", "billing", "kh1").await.expect("key");
    assert!(matches!(s.create_api_key("acme", "billing", "kh2").await, Err(StoreError::Conflict)));
    s.create_api_key("globex", "billing", "kh3").await.expect("same name, other enterprise");
    assert_eq!(s.api_key_by_hash("kh1").await.expect("read"), Some(k.clone()));
    assert_eq!(s.list_api_keys("acme").await.expect("list"), vec![k.clone()]);
    assert!(!s.delete_api_key("globex", &k.id).await.expect("delete"), "not another enterprise's key");
    assert!(s.delete_api_key("acme", &k.id).await.expect("delete"));
    assert_eq!(s.api_key_by_hash("kh1").await.expect("read"), None);
}

async fn outbox<S: AccountStore>(s: &S) {
    let first = s.outbox_add("hermes.account.acme", &[0, 1, 255]).await.expect("kept");
    let second = s.outbox_add("hermes.account.globex", b"").await.expect("kept");
    assert!(second > first, "numbered in order");
    let now = accounts::store::now_ms();
    assert_eq!(s.outbox_older_than(now - 60_000, 10).await.expect("read"), vec![], "nothing that old");
    let kept = s.outbox_older_than(now + 1, 10).await.expect("read");
    let shape: Vec<(i64, &str, &[u8])> = kept.iter().map(|e| (e.id, e.subject.as_str(), e.body.as_slice())).collect();
    assert_eq!(
        shape,
        vec![(first, "hermes.account.acme", &[0, 1, 255][..]), (second, "hermes.account.globex", &[][..])]
    );
    assert_eq!(s.outbox_older_than(now + 1, 1).await.expect("read").len(), 1, "at most the limit, oldest first");
    s.outbox_remove(first).await.expect("removed");
    s.outbox_remove(first).await.expect("removing again is no error");
    let left: Vec<i64> = s.outbox_older_than(now + 1, 10).await.expect("read").iter().map(|e| e.id).collect();
    assert_eq!(left, vec![second]);
    s.outbox_remove(second).await.expect("removed");
}

#[tokio::test]
async fn sqlite_store_meets_the_contract() {
    let dir = std::env::temp_dir().join(unique("hermes-accounts-store"));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = SqliteStore::open(&dir.join("accounts.db")).await.expect("open");
    contract(&store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_store_meets_the_contract() {
    let Some(url) = common::fresh_postgres_database().await else { return };
    let store = PgStore::connect(&url, 2).await.expect("connect and migrate");
    contract(&store).await;
}
