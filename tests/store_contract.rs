//! The store contract: one suite of functions over `&dyn MetadataStore`, each run against
//! SQLite (a fresh file in a temporary directory) and PostgreSQL (a fresh database on one
//! real server this binary starts: tests/common/postgres.rs), plus the PostgreSQL-only cases
//! (two stores on one database: migrations at once, leadership, notifications; the previous
//! schema; a stopped server).
//!
//! A custom harness (`harness = false`): the one server must be stopped when the binary ends,
//! which a `static` never is. Arguments are substring filters on "<case> on <backend>".

#[path = "common/postgres.rs"]
mod postgres;

use p11kms::store::{
    AliasRecord, Backend, ChangeKind, Duty, GrantRecord, ImportedVersion, KeyBundle, KeyLifecycle,
    KeyRecord, KeyShape, KeySpec, KeyState, KeyStoreRecord, KeyUsage, KeyUsageRecord, KeyVersion,
    MetadataStore, MultiRegion, Origin, PgSettings, PgTls, RotationEntry, SessionRecord, SqlStore,
    StoreError, StoredBlob, Tag, UsageOperation,
};
use postgres::PgServer;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

type Store = Arc<dyn MetadataStore>;
type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type Case = fn(Store) -> CaseFuture;

const ACCOUNT: &str = "111122223333";
/// The engine's grants-per-key quota (AWS's).
const MAX_GRANTS: usize = 50_000;
/// The engine's aliases-per-key quota (AWS's).
const MAX_ALIASES: usize = 50;

// ---------------------------------------------------------------------------------------
// Fixtures.

fn key_record(key_id: &str, state: KeyState) -> KeyRecord {
    KeyRecord {
        key_id: key_id.to_owned(),
        account: ACCOUNT.to_owned(),
        description: format!("key {key_id}"),
        key_spec: KeySpec::SymmetricDefault,
        key_usage: KeyUsage::EncryptDecrypt,
        origin: Origin::AwsKms,
        state,
        created_at_ms: 1_700_000_000_000,
        deletion_date_ms: None,
        pending_window_days: None,
        current_version: 1,
        policy: r#"{"Version":"2012-10-17","Statement":[]}"#.into(),
        custom_key_store_id: None,
        xks_key_id: None,
        row_version: 1,
        multi_region: None,
    }
}

fn version(key_id: &str, version: u32) -> KeyVersion {
    KeyVersion {
        key_id: key_id.to_owned(),
        version,
        created_at_ms: 1_700_000_000_000 + i64::from(version),
        wrapped: None,
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

fn alias(account: &str, name: &str, key_id: &str) -> AliasRecord {
    AliasRecord {
        account: account.to_owned(),
        name: name.to_owned(),
        key_id: key_id.to_owned(),
        created_at_ms: 10,
        updated_at_ms: 10,
    }
}

fn grant(grant_id: &str, key_id: &str) -> GrantRecord {
    GrantRecord {
        grant_id: grant_id.into(),
        key_id: key_id.into(),
        name: Some("n".into()),
        grantee_principal: "arn:aws:iam::111122223333:user/u".into(),
        retiring_principal: None,
        operations: vec!["Decrypt".into(), "Encrypt".into()],
        constraint_equals: None,
        constraint_subset: None,
        issuing_account: "111122223333".into(),
        created_at_ms: 5,
    }
}

fn key_store(store_id: &str, name: &str, cluster: &str) -> KeyStoreRecord {
    KeyStoreRecord {
        store_id: store_id.into(),
        account: ACCOUNT.into(),
        name: name.into(),
        cluster_id: cluster.into(),
        trust_anchor: "-----BEGIN CERTIFICATE-----".into(),
        sealed_password: vec![1, 2, 3],
        connect: false,
        created_at_ms: 7,
        xks: None,
        row_version: 1,
    }
}

fn session(access_key_id: &str, expires_at_ms: i64) -> SessionRecord {
    SessionRecord {
        access_key_id: access_key_id.into(),
        token_sha256: format!("sha-of-{access_key_id}"),
        sealed_secret: vec![9, 8, 7, 6],
        role_arn: "arn:aws:iam::111122223333:role/r".into(),
        role_id: "AROAEXAMPLE".into(),
        session_name: "s".into(),
        session_arn: "arn:aws:sts::111122223333:assumed-role/r/s".into(),
        account: ACCOUNT.into(),
        session_policy: Some(r#"{"Statement":[]}"#.into()),
        tags: vec![("team".into(), "a".into()), ("env".into(), "x".into())],
        created_at_ms: 100,
        expires_at_ms,
    }
}

/// Inserts an `Enabled` key with version 1, through the two-phase path; returns the record
/// as stored now (row version 2: inserted at 1, raised by phase two).
async fn create_enabled(store: &dyn MetadataStore, key_id: &str, tags: &[Tag]) -> KeyRecord {
    let creating = key_record(key_id, KeyState::Creating);
    store.insert_key(&creating, tags).await.unwrap();
    let enabled = KeyRecord {
        state: KeyState::Enabled,
        ..creating
    };
    store
        .add_version_and_update(&version(key_id, 1), &enabled)
        .await
        .unwrap();
    KeyRecord {
        row_version: 2,
        ..enabled
    }
}

async fn versions_total(store: &dyn MetadataStore) -> usize {
    let all: Vec<KeyBundle> = store.load_all().await.unwrap();
    all.iter().map(|b| b.versions.len()).sum()
}

async fn tags_total(store: &dyn MetadataStore) -> usize {
    let all: Vec<KeyBundle> = store.load_all().await.unwrap();
    all.iter().map(|b| b.tags.len()).sum()
}

/// The change-log rows after `after` as (kind, id).
async fn changes_after(store: &dyn MetadataStore, after: i64) -> Vec<(ChangeKind, String)> {
    store
        .changes_since(after, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.kind, c.id))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The cases moved from the SQLite store's unit tests.

async fn get_key_absent_is_none(store: Store) {
    assert!(store.get_key("nope").await.unwrap().is_none());
    assert!(store.load_all().await.unwrap().is_empty());
    assert!(store.list_aliases().await.unwrap().is_empty());
}

async fn two_phase_create_round_trip(store: Store) {
    let id = "0b6f0c36-1b1c-4c8e-9f57-3d0a4e0c0001";
    let creating = key_record(id, KeyState::Creating);
    let tags = [tag("team", "payments"), tag("env", "prod")];
    store.insert_key(&creating, &tags).await.unwrap();

    let phase_one = store.get_key(id).await.unwrap().unwrap();
    assert_eq!(phase_one.key, creating);
    assert!(phase_one.versions.is_empty());
    assert_eq!(
        phase_one.tags,
        vec![tag("env", "prod"), tag("team", "payments")]
    );

    let enabled = KeyRecord {
        state: KeyState::Enabled,
        ..creating.clone()
    };
    store
        .add_version_and_update(&version(id, 1), &enabled)
        .await
        .unwrap();
    let phase_two = store.get_key(id).await.unwrap().unwrap();
    assert_eq!(
        phase_two.key,
        KeyRecord {
            row_version: 2,
            ..enabled
        }
    );
    assert_eq!(phase_two.versions, vec![version(id, 1)]);
    assert_eq!(phase_two.tags, phase_one.tags);
    assert_eq!(store.load_all().await.unwrap(), vec![phase_two]);
}

async fn rotation_adds_versions_in_order(store: Store) {
    let id = "k1";
    let mut key = create_enabled(&*store, id, &[]).await;
    for v in 2..=3 {
        key.current_version = v;
        store
            .add_version_and_update(&version(id, v), &key)
            .await
            .unwrap();
        key.row_version += 1;
    }
    let bundle = store.get_key(id).await.unwrap().unwrap();
    assert_eq!(bundle.key.current_version, 3);
    assert_eq!(
        bundle.versions,
        vec![version(id, 1), version(id, 2), version(id, 3)]
    );
}

/// A multi-Region replica: its Regions round-trip, its versions arrive in one transaction,
/// and an update changes its Regions (a primary change).
async fn multi_region_rows_round_trip(store: Store) {
    let id = "mrk-0123456789abcdef0123456789abcdef";
    let mut key = KeyRecord {
        multi_region: Some(MultiRegion {
            primary_region: "us-east-1".into(),
            replica_regions: vec!["eu-west-1".into(), "ap-south-1".into()],
        }),
        current_version: 2,
        ..key_record(id, KeyState::Creating)
    };
    store.insert_key(&key, &[]).await.unwrap();
    key.state = KeyState::Enabled;
    store
        .add_versions_and_update(&[version(id, 1), version(id, 2)], &key)
        .await
        .unwrap();
    key.row_version += 1;
    let bundle = store.get_key(id).await.unwrap().unwrap();
    assert_eq!(bundle.key, key);
    assert_eq!(bundle.versions, vec![version(id, 1), version(id, 2)]);

    key.multi_region = Some(MultiRegion {
        primary_region: "eu-west-1".into(),
        replica_regions: vec!["us-east-1".into(), "ap-south-1".into()],
    });
    store.update_key(&key).await.unwrap();
    key.row_version += 1;
    assert_eq!(store.get_key(id).await.unwrap().unwrap().key, key);
    // A version of another key in the batch writes nothing.
    let stray = store
        .add_versions_and_update(&[version(id, 3), version("other", 1)], &key)
        .await;
    assert!(stray.is_err());
    assert_eq!(store.get_key(id).await.unwrap().unwrap().versions.len(), 2);
}

async fn large_u32_version_round_trips(store: Store) {
    let mut key = create_enabled(&*store, "k1", &[]).await;
    key.current_version = u32::MAX;
    store
        .add_version_and_update(&version("k1", u32::MAX), &key)
        .await
        .unwrap();
    let bundle = store.get_key("k1").await.unwrap().unwrap();
    assert_eq!(bundle.key.current_version, u32::MAX);
    assert_eq!(bundle.versions.last().unwrap().version, u32::MAX);
}

async fn update_key_overwrites_mutable_columns_only(store: Store) {
    let original = create_enabled(&*store, "k1", &[]).await;
    let changed = KeyRecord {
        state: KeyState::PendingDeletion,
        description: "retiring".to_owned(),
        deletion_date_ms: Some(1_800_000_000_000),
        pending_window_days: Some(7),
        current_version: 1,
        policy: r#"{"Statement":[{"Effect":"Deny"}]}"#.into(),
        // Immutable columns: ignored by update_key.
        account: "999999999999".to_owned(),
        key_spec: KeySpec::Rsa2048,
        created_at_ms: 5,
        ..original.clone()
    };
    store.update_key(&changed).await.unwrap();
    let stored = store.get_key("k1").await.unwrap().unwrap().key;
    let expected = KeyRecord {
        account: original.account.clone(),
        key_spec: original.key_spec,
        created_at_ms: original.created_at_ms,
        row_version: original.row_version + 1,
        ..changed.clone()
    };
    assert_eq!(stored, expected);

    // And back (CancelKeyDeletion clears the dates).
    let cancelled = KeyRecord {
        state: KeyState::Disabled,
        deletion_date_ms: None,
        pending_window_days: None,
        ..expected
    };
    store.update_key(&cancelled).await.unwrap();
    assert_eq!(
        store.get_key("k1").await.unwrap().unwrap().key,
        KeyRecord {
            row_version: cancelled.row_version + 1,
            ..cancelled
        }
    );
}

async fn every_state_round_trips(store: Store) {
    let mut key = create_enabled(&*store, "k1", &[]).await;
    for state in [
        KeyState::Creating,
        KeyState::Enabled,
        KeyState::Disabled,
        KeyState::PendingDeletion,
        KeyState::PendingImport,
        KeyState::Unavailable,
    ] {
        key.state = state;
        store.update_key(&key).await.unwrap();
        key.row_version += 1;
        assert_eq!(store.get_key("k1").await.unwrap().unwrap().key.state, state);
    }
}

async fn duplicate_key_id_is_already_exists_and_changes_nothing(store: Store) {
    let original = create_enabled(&*store, "k1", &[tag("a", "1")]).await;
    let dup = KeyRecord {
        description: "other".to_owned(),
        ..key_record("k1", KeyState::Creating)
    };
    let err = store
        .insert_key(&dup, &[tag("a", "2"), tag("b", "2")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    let bundle = store.get_key("k1").await.unwrap().unwrap();
    assert_eq!(bundle.key, original);
    assert_eq!(bundle.tags, vec![tag("a", "1")]);
}

async fn duplicate_version_is_already_exists_and_keeps_key_row(store: Store) {
    let original = create_enabled(&*store, "k1", &[]).await;
    let changed = KeyRecord {
        state: KeyState::Disabled,
        ..original.clone()
    };
    let err = store
        .add_version_and_update(&version("k1", 1), &changed)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert_eq!(store.get_key("k1").await.unwrap().unwrap().key, original);
}

async fn mismatched_version_and_key_change_nothing(store: Store) {
    create_enabled(&*store, "k1", &[]).await;
    let k2 = create_enabled(&*store, "k2", &[]).await;
    let err = store
        .add_version_and_update(
            &version("k1", 2),
            &KeyRecord {
                current_version: 2,
                ..k2
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
    assert_eq!(versions_total(&*store).await, 2);
}

async fn missing_rows_are_not_found(store: Store) {
    let ghost = key_record("ghost", KeyState::Enabled);
    let not_found = |r: Result<(), StoreError>| {
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    };
    not_found(store.update_key(&ghost).await);
    not_found(
        store
            .add_version_and_update(&version("ghost", 1), &ghost)
            .await,
    );
    not_found(store.delete_key("ghost").await);
    not_found(store.put_tags("ghost", &[tag("a", "1")]).await);
    not_found(store.remove_tags("ghost", &["a".to_owned()]).await);
    not_found(
        store
            .create_alias(&alias(ACCOUNT, "alias/x", "ghost"), MAX_ALIASES)
            .await,
    );
    not_found(
        store
            .update_alias(ACCOUNT, "alias/x", "ghost", 1, MAX_ALIASES)
            .await,
    );
    not_found(store.delete_alias(ACCOUNT, "alias/x").await);

    // An existing alias pointed at a missing key.
    create_enabled(&*store, "k1", &[]).await;
    store
        .create_alias(&alias(ACCOUNT, "alias/x", "k1"), MAX_ALIASES)
        .await
        .unwrap();
    not_found(
        store
            .update_alias(ACCOUNT, "alias/x", "ghost", 2, MAX_ALIASES)
            .await,
    );
    assert_eq!(store.list_aliases().await.unwrap()[0].key_id, "k1");

    // Nothing was left behind by the failed writes.
    assert_eq!(versions_total(&*store).await, 1);
    assert_eq!(tags_total(&*store).await, 0);
}

async fn alias_round_trip(store: Store) {
    create_enabled(&*store, "k1", &[]).await;
    create_enabled(&*store, "k2", &[]).await;
    let a = alias(ACCOUNT, "alias/zeta", "k1");
    let b = alias(ACCOUNT, "alias/alpha", "k1");
    let c = alias("000000000001", "alias/zeta", "k2");
    for x in [&a, &b, &c] {
        store.create_alias(x, MAX_ALIASES).await.unwrap();
    }
    assert_eq!(
        store.list_aliases().await.unwrap(),
        vec![c.clone(), b.clone(), a.clone()]
    );

    store
        .update_alias(ACCOUNT, "alias/zeta", "k2", 99, MAX_ALIASES)
        .await
        .unwrap();
    let updated = AliasRecord {
        key_id: "k2".to_owned(),
        updated_at_ms: 99,
        ..a.clone()
    };
    assert_eq!(
        store.list_aliases().await.unwrap(),
        vec![c.clone(), b.clone(), updated]
    );

    store.delete_alias(ACCOUNT, "alias/zeta").await.unwrap();
    assert_eq!(store.list_aliases().await.unwrap(), vec![c, b]);
}

async fn duplicate_alias_is_already_exists(store: Store) {
    create_enabled(&*store, "k1", &[]).await;
    create_enabled(&*store, "k2", &[]).await;
    store
        .create_alias(&alias(ACCOUNT, "alias/app", "k1"), MAX_ALIASES)
        .await
        .unwrap();
    let err = store
        .create_alias(&alias(ACCOUNT, "alias/app", "k2"), MAX_ALIASES)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    let aliases = store.list_aliases().await.unwrap();
    assert_eq!(aliases.len(), 1);
    assert_eq!(aliases[0].key_id, "k1");
}

async fn grants_round_trip_and_go_with_their_key(store: Store) {
    create_enabled(&*store, "k1", &[]).await;
    let mut eq = BTreeMap::new();
    eq.insert("a".to_string(), "1".to_string());
    let g = GrantRecord {
        grant_id: "g1".into(),
        key_id: "k1".into(),
        name: Some("n".into()),
        grantee_principal: "arn:aws:iam::111122223333:user/u".into(),
        retiring_principal: None,
        operations: vec!["Decrypt".into(), "Encrypt".into()],
        constraint_equals: None,
        constraint_subset: Some(eq),
        issuing_account: "111122223333".into(),
        created_at_ms: 5,
    };
    store.insert_grant(&g, MAX_GRANTS).await.unwrap();
    assert!(matches!(
        store.insert_grant(&g, MAX_GRANTS).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let mut orphan = g.clone();
    orphan.grant_id = "g2".into();
    orphan.key_id = "nope".into();
    assert!(matches!(
        store.insert_grant(&orphan, MAX_GRANTS).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list_grants().await.unwrap(), vec![g.clone()]);
    store.destroy_key("k1", 9).await.unwrap();
    assert!(store.list_grants().await.unwrap().is_empty());
    assert_eq!(
        store.deleted_key_ids().await.unwrap(),
        vec!["k1".to_string()]
    );
    assert!(store.was_destroyed("k1").await.unwrap());
    assert!(!store.was_destroyed("k2").await.unwrap());
    assert!(matches!(
        store.delete_grant("g1").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn delete_key_cascades_to_versions_tags_and_aliases(store: Store) {
    let mut doomed = create_enabled(&*store, "k1", &[tag("a", "1"), tag("b", "2")]).await;
    doomed.current_version = 2;
    store
        .add_version_and_update(&version("k1", 2), &doomed)
        .await
        .unwrap();
    let kept = create_enabled(&*store, "k2", &[tag("a", "1")]).await;
    store
        .create_alias(&alias(ACCOUNT, "alias/one", "k1"), MAX_ALIASES)
        .await
        .unwrap();
    store
        .create_alias(&alias(ACCOUNT, "alias/two", "k1"), MAX_ALIASES)
        .await
        .unwrap();
    store
        .create_alias(&alias(ACCOUNT, "alias/kept", "k2"), MAX_ALIASES)
        .await
        .unwrap();

    store.delete_key("k1").await.unwrap();

    assert!(store.get_key("k1").await.unwrap().is_none());
    let all = store.load_all().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].key, kept);
    assert_eq!(all[0].versions, vec![version("k2", 1)]);
    assert_eq!(all[0].tags, vec![tag("a", "1")]);
    assert_eq!(
        store.list_aliases().await.unwrap(),
        vec![alias(ACCOUNT, "alias/kept", "k2")]
    );
    let err = store.delete_key("k1").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn put_tags_overwrites_same_key_and_adds_new(store: Store) {
    create_enabled(&*store, "k1", &[tag("env", "dev"), tag("team", "a")]).await;
    store
        .put_tags("k1", &[tag("env", "prod"), tag("cost", "42")])
        .await
        .unwrap();
    assert_eq!(
        store.get_key("k1").await.unwrap().unwrap().tags,
        vec![tag("cost", "42"), tag("env", "prod"), tag("team", "a")]
    );
    // The same tag key twice in one call: the last one wins.
    store
        .put_tags("k1", &[tag("env", "x"), tag("env", "y")])
        .await
        .unwrap();
    let tags = store.get_key("k1").await.unwrap().unwrap().tags;
    assert_eq!(tags[1], tag("env", "y"));
    assert_eq!(tags.len(), 3);
}

async fn insert_key_with_repeated_tag_key_keeps_last(store: Store) {
    create_enabled(&*store, "k1", &[tag("env", "x"), tag("env", "y")]).await;
    assert_eq!(
        store.get_key("k1").await.unwrap().unwrap().tags,
        vec![tag("env", "y")]
    );
}

async fn remove_tags_ignores_absent_keys(store: Store) {
    create_enabled(
        &*store,
        "k1",
        &[tag("a", "1"), tag("b", "2"), tag("c", "3")],
    )
    .await;
    create_enabled(&*store, "k2", &[tag("a", "1")]).await;
    store
        .remove_tags("k1", &["a".to_owned(), "zzz".to_owned(), "c".to_owned()])
        .await
        .unwrap();
    store.remove_tags("k1", &[]).await.unwrap();
    store.remove_tags("k1", &["a".to_owned()]).await.unwrap();
    assert_eq!(
        store.get_key("k1").await.unwrap().unwrap().tags,
        vec![tag("b", "2")]
    );
    assert_eq!(
        store.get_key("k2").await.unwrap().unwrap().tags,
        vec![tag("a", "1")]
    );
}

async fn key_usage_is_replaced_in_batches_and_skips_deleted_keys(store: Store) {
    let a = "11111111-1111-4111-8111-111111111111";
    let gone = "22222222-2222-4222-8222-222222222222";
    create_enabled(&*store, a, &[]).await;
    let use_of = |key_id: &str, op, at| KeyUsageRecord {
        key_id: key_id.to_owned(),
        operation: op,
        used_at_ms: at,
        event_id: format!("event-{at}"),
        request_id: format!("request-{at}"),
    };
    let batch = [
        use_of(a, UsageOperation::Encrypt, 1),
        use_of(gone, UsageOperation::Sign, 2),
    ];
    assert_eq!(store.put_key_usage(&batch).await.unwrap(), 1);
    let later = [use_of(a, UsageOperation::Decrypt, 3)];
    assert_eq!(store.put_key_usage(&later).await.unwrap(), 1);
    assert_eq!(store.load_key_usage().await.unwrap(), later.to_vec());
    store.delete_key(a).await.unwrap();
    assert!(store.load_key_usage().await.unwrap().is_empty());
    // Tracking starts once; later calls return the first time.
    assert_eq!(store.usage_tracking_start(100).await.unwrap(), 100);
    assert_eq!(store.usage_tracking_start(200).await.unwrap(), 100);
}

/// A flush after a busy interval writes one row per key used: more rows than one statement
/// takes, live and destroyed keys interleaved, a key named twice (the last row counts).
async fn key_usage_flush_of_many_keys_writes_each_live_key_once(store: Store) {
    let id = |i: usize| format!("{i:08x}-3333-4333-8333-333333333333");
    for i in (0..600).step_by(2) {
        create_enabled(&*store, &id(i), &[]).await;
    }
    let use_of = |i: usize, at: i64| KeyUsageRecord {
        key_id: id(i),
        operation: UsageOperation::Encrypt,
        used_at_ms: at,
        event_id: format!("event-{i}-{at}"),
        request_id: format!("request-{i}-{at}"),
    };
    let mut batch: Vec<_> = (0..600).map(|i| use_of(i, 1)).collect();
    batch.push(use_of(4, 2));
    assert_eq!(store.put_key_usage(&batch).await.unwrap(), 300);
    let mut stored = store.load_key_usage().await.unwrap();
    stored.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let expected: Vec<_> = (0..600)
        .step_by(2)
        .map(|i| use_of(i, if i == 4 { 2 } else { 1 }))
        .collect();
    assert_eq!(stored, expected);
}

// ---------------------------------------------------------------------------------------
// Wrapped residency (migration 0009): blobs kept with their versions.

fn blob(master: u32, fill: u8) -> StoredBlob {
    StoredBlob {
        master,
        bytes: vec![fill; 80],
        public_key: None,
    }
}

/// A wrapped key pair's blob: its public key is stored with it.
fn pair_blob(master: u32, fill: u8) -> StoredBlob {
    StoredBlob {
        public_key: Some(vec![0x30, fill, 0x5a, 0x01]),
        ..blob(master, fill)
    }
}

async fn wrapped_blobs_round_trip_and_are_compare_and_set(store: Store) {
    let creating = key_record("w1", KeyState::Creating);
    store.insert_key(&creating, &[]).await.unwrap();
    let enabled = KeyRecord {
        state: KeyState::Enabled,
        ..creating
    };
    let v1 = KeyVersion {
        wrapped: Some(pair_blob(1, 0xa1)),
        ..version("w1", 1)
    };
    store.add_version_and_update(&v1, &enabled).await.unwrap();
    let token_key = create_enabled(&*store, "t1", &[]).await;
    let got = store.get_key("w1").await.unwrap().unwrap();
    assert_eq!(got.versions, vec![v1.clone()]);
    let all = store.load_all().await.unwrap();
    let t1 = all.iter().find(|b| b.key.key_id == "t1").unwrap();
    assert_eq!(t1.versions[0].wrapped, None, "a token version has no blob");
    // Reconciliation's view: the same keys with only the columns it compares.
    let mut shapes = Vec::new();
    store
        .load_shapes(&mut |page| shapes.extend(page))
        .await
        .unwrap();
    let expected: Vec<KeyShape> = all.iter().map(KeyShape::from).collect();
    assert_eq!(shapes, expected);
    let shape = |id: &str| shapes.iter().find(|k| k.key_id == id).unwrap().versions[0];
    assert!(shape("w1").wrapped && !shape("t1").wrapped);
    let under1 = store.blobs_under_master_in(None, 1, 10).await.unwrap();
    assert_eq!(under1.len(), 1);
    assert_eq!((under1[0].key_id.as_str(), under1[0].version), ("w1", 1));
    assert_eq!(under1[0].blob, pair_blob(1, 0xa1));
    // Rewrapped under master 2: compare-and-set on the old blob and the row version.
    let key = KeyRecord {
        row_version: 2,
        ..enabled
    };
    let seq = store.last_change_seq().await.unwrap();
    store
        .set_version_blob(
            &key,
            1,
            Some(&pair_blob(1, 0xa1)),
            Some(&pair_blob(2, 0xb2)),
        )
        .await
        .unwrap();
    let logged = store.changes_since(seq, 10).await.unwrap();
    assert!(
        logged
            .iter()
            .any(|c| c.kind == ChangeKind::Key && c.id == "w1"),
        "a rewrap reaches other nodes: {logged:?}"
    );
    assert!(store
        .blobs_under_master_in(None, 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .blobs_under_master_in(None, 2, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let stale_blob = store
        .set_version_blob(
            &KeyRecord {
                row_version: 3,
                ..key.clone()
            },
            1,
            Some(&pair_blob(1, 0xa1)),
            Some(&pair_blob(3, 0xc3)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(stale_blob, StoreError::Conflict(_)),
        "{stale_blob:?}"
    );
    let stale_row = store
        .set_version_blob(&key, 1, Some(&pair_blob(2, 0xb2)), None)
        .await
        .unwrap_err();
    assert!(
        matches!(stale_row, StoreError::Conflict(_)),
        "{stale_row:?}"
    );
    let got = store.get_key("w1").await.unwrap().unwrap();
    assert_eq!(
        got.versions[0].wrapped,
        Some(pair_blob(2, 0xb2)),
        "nothing half-written"
    );
    assert_eq!(got.key.row_version, 3);
    // A token version gains a blob (residency migration), expecting none.
    store
        .set_version_blob(&token_key, 1, None, Some(&blob(2, 0xd4)))
        .await
        .unwrap();
    assert_eq!(
        store.blobs_under_master_in(None, 2, 1).await.unwrap().len(),
        1,
        "limit"
    );
    let under2 = store.blobs_under_master_in(None, 2, 10).await.unwrap();
    assert_eq!(under2.len(), 2);
    let w1 = under2.iter().find(|r| r.key_id == "w1").unwrap();
    assert_eq!(
        w1.blob,
        pair_blob(2, 0xb2),
        "a pair's public key moves with its blob"
    );
    let t1 = store.get_key("t1").await.unwrap().unwrap();
    assert_eq!(t1.versions[0].wrapped, Some(blob(2, 0xd4)));
    assert_eq!(t1.versions[0].wrapped.as_ref().unwrap().public_key, None);
    // Back to the token (residency migration): the public key goes with the blob.
    let w1_key = store.get_key("w1").await.unwrap().unwrap().key;
    store
        .set_version_blob(&w1_key, 1, Some(&pair_blob(2, 0xb2)), None)
        .await
        .unwrap();
    let got = store.get_key("w1").await.unwrap().unwrap();
    assert_eq!(got.versions[0].wrapped, None);
    let shown = format!("{:?}", pair_blob(2, 0xb2));
    assert_eq!(shown, "StoredBlob(master v2, 80 bytes, public key 4 bytes)");
}

/// Blobs under a master, by key store: masters are per device, so the rewrap duty asks for
/// one store's blobs at a time (`None`: the default store's).
async fn blobs_under_a_master_are_found_per_key_store(store: Store) {
    store
        .insert_key_store(&key_store(
            "cks-1234567890abcdef",
            "s",
            "cluster-abcdefghijk",
        ))
        .await
        .unwrap();
    let wrapped = |id: &str, in_store: Option<&str>| {
        let mut record = key_record(id, KeyState::Creating);
        record.custom_key_store_id = in_store.map(str::to_string);
        let v = KeyVersion {
            wrapped: Some(blob(1, 0x11)),
            ..version(id, 1)
        };
        (record, v)
    };
    for (id, in_store) in [
        ("d1", None),
        ("s1", Some("cks-1234567890abcdef")),
        ("s2", Some("cks-1234567890abcdef")),
    ] {
        let (creating, v) = wrapped(id, in_store);
        store.insert_key(&creating, &[]).await.unwrap();
        let enabled = KeyRecord {
            state: KeyState::Enabled,
            ..creating
        };
        store.add_version_and_update(&v, &enabled).await.unwrap();
    }
    let ids = |rows: Vec<p11kms::store::BlobRow>| -> Vec<String> {
        rows.into_iter().map(|r| r.key_id).collect()
    };
    let default = store.blobs_under_master_in(None, 1, 10).await.unwrap();
    assert_eq!(ids(default), ["d1"]);
    let custom = store.blobs_under_master_in(Some("cks-1234567890abcdef"), 1, 10);
    assert_eq!(ids(custom.await.unwrap()), ["s1", "s2"]);
    let limited = store.blobs_under_master_in(Some("cks-1234567890abcdef"), 1, 1);
    assert_eq!(ids(limited.await.unwrap()), ["s1"], "limit");
    let other = store.blobs_under_master_in(Some("cks-0000000000000000"), 1, 10);
    assert!(other.await.unwrap().is_empty());
    let none = store.blobs_under_master_in(None, 2, 10).await.unwrap();
    assert!(none.is_empty(), "another master");
}

/// Imported material in wrapped residency: the first import inserts the version row with
/// its blob; deleting the material removes every blob of the key with the key and lifecycle
/// rows; a re-import writes the blob on the existing row, never over another blob.
async fn imported_blobs_are_written_and_dropped_with_the_key_row(store: Store) {
    let pending = key_record("i1", KeyState::PendingImport);
    store.insert_key(&pending, &[]).await.unwrap();
    let present = KeyLifecycle {
        key_id: "i1".into(),
        material_present: true,
        material_check: Some(vec![7; 8]),
        ..KeyLifecycle::default()
    };
    let first = KeyVersion {
        wrapped: Some(blob(1, 0x11)),
        ..version("i1", 1)
    };
    let enabled = |row_version| KeyRecord {
        state: KeyState::Enabled,
        row_version,
        ..pending.clone()
    };
    let new = ImportedVersion::New(&first);
    store
        .finish_import(&enabled(1), new, &present, "t1")
        .await
        .unwrap();
    let got = store.get_key("i1").await.unwrap().unwrap();
    assert_eq!(got.versions, vec![first.clone()]);
    // Deleted: the blob goes with the state and the lifecycle, compare-and-set.
    let gone = KeyLifecycle {
        material_present: false,
        ..present.clone()
    };
    let dropped = KeyRecord {
        row_version: 2,
        ..pending.clone()
    };
    let seq = store.last_change_seq().await.unwrap();
    store.drop_imported_material(&dropped, &gone).await.unwrap();
    let got = store.get_key("i1").await.unwrap().unwrap();
    assert_eq!(
        (got.versions[0].wrapped.as_ref(), got.key.state),
        (None, KeyState::PendingImport)
    );
    assert_eq!(store.get_lifecycle("i1").await.unwrap(), Some(gone.clone()));
    let logged = changes_after(&*store, seq).await;
    assert!(
        logged.contains(&(ChangeKind::Key, "i1".into())),
        "{logged:?}"
    );
    let err = store
        .drop_imported_material(&dropped, &gone)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // Re-imported: the blob on the existing row.
    let again = ImportedVersion::Blob {
        version: 1,
        blob: &blob(1, 0x22),
    };
    store
        .finish_import(&enabled(3), again, &present, "t2")
        .await
        .unwrap();
    let got = store.get_key("i1").await.unwrap().unwrap();
    assert_eq!(got.versions[0].wrapped, Some(blob(1, 0x22)));
    assert_eq!(got.key.row_version, 4);
    // Never over another blob: Conflict, nothing written.
    let over = ImportedVersion::Blob {
        version: 1,
        blob: &blob(1, 0x33),
    };
    let err = store
        .finish_import(&enabled(4), over, &gone, "t3")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.get_key("i1").await.unwrap().unwrap(), got);
    assert_eq!(
        store.get_lifecycle("i1").await.unwrap(),
        Some(present.clone())
    );
    // A re-import that made nothing new leaves the row as it is.
    let same = ImportedVersion::Unchanged;
    store
        .finish_import(&enabled(4), same, &present, "t4")
        .await
        .unwrap();
    let got = store.get_key("i1").await.unwrap().unwrap();
    assert_eq!(got.versions[0].wrapped, Some(blob(1, 0x22)));
}

// ---------------------------------------------------------------------------------------
// Compare-and-set, uniqueness, the change log, sessions, point lookups, describe, leading.

async fn stale_row_version_conflicts_and_changes_nothing(store: Store) {
    let key = create_enabled(&*store, "k1", &[]).await;
    let fresh = KeyRecord {
        description: "first".into(),
        ..key.clone()
    };
    store.update_key(&fresh).await.unwrap();
    let stored = store.get_key("k1").await.unwrap().unwrap();
    assert_eq!(stored.key.row_version, key.row_version + 1);
    // The same expected version again: stale now.
    let stale = KeyRecord {
        description: "second".into(),
        ..key.clone()
    };
    let err = store.update_key(&stale).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let err = store
        .add_version_and_update(
            &version("k1", 2),
            &KeyRecord {
                current_version: 2,
                ..key.clone()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let l = KeyLifecycle {
        key_id: "k1".into(),
        on_demand_rotations: 1,
        ..KeyLifecycle::default()
    };
    let entry = RotationEntry {
        key_id: "k1".into(),
        version: 2,
        rotated_at_ms: 9,
        rotation_type: "ON_DEMAND".into(),
    };
    let err = store.finish_rotation(&key, &entry, &l).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let err = store.update_key_and_lifecycle(&key, &l).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // Nothing of the refused calls was applied.
    assert_eq!(store.get_key("k1").await.unwrap().unwrap(), stored);
    assert!(store.list_rotations("k1").await.unwrap().is_empty());
    assert!(store.get_lifecycle("k1").await.unwrap().is_none());
    // A key that is gone is NotFound, not Conflict.
    let err = store
        .update_key(&key_record("ghost", KeyState::Enabled))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn concurrent_updates_with_one_expected_version_one_wins(store: Store) {
    let key = create_enabled(&*store, "k1", &[]).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = store.clone();
        let record = KeyRecord {
            description: format!("writer {i}"),
            ..key.clone()
        };
        tasks.push(tokio::spawn(
            async move { (i, store.update_key(&record).await) },
        ));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, result) = t.await.unwrap();
        match result {
            Ok(()) => winners.push(i),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("writer {i}: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins: {winners:?}");
    let stored = store.get_key("k1").await.unwrap().unwrap().key;
    assert_eq!(stored.description, format!("writer {}", winners[0]));
    assert_eq!(stored.row_version, key.row_version + 1);
}

async fn tags_and_lifecycle_raise_row_version(store: Store) {
    let key = create_enabled(&*store, "k1", &[]).await;
    store.put_tags("k1", &[tag("a", "1")]).await.unwrap();
    store.remove_tags("k1", &["a".into()]).await.unwrap();
    let l = KeyLifecycle {
        key_id: "k1".into(),
        rotation_enabled: true,
        rotation_period_days: Some(90),
        next_rotation_ms: Some(1234),
        material_check: Some(vec![1, 2]),
        ..KeyLifecycle::default()
    };
    store.put_lifecycle(&l).await.unwrap();
    let stored = store.get_key("k1").await.unwrap().unwrap().key;
    assert_eq!(stored.row_version, key.row_version + 3);
    assert_eq!(store.get_lifecycle("k1").await.unwrap(), Some(l.clone()));
    assert_eq!(store.load_lifecycles().await.unwrap(), vec![l]);
    // The record read before is stale now.
    let err = store.update_key(&key).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

async fn key_store_updates_are_compare_and_set(store: Store) {
    let ks = key_store("cks-1", "one", "cluster-1");
    store.insert_key_store(&ks).await.unwrap();
    let connected = KeyStoreRecord {
        connect: true,
        ..ks.clone()
    };
    store.update_key_store(&connected).await.unwrap();
    let stored = store.get_key_store("cks-1").await.unwrap().unwrap();
    assert_eq!(
        stored,
        KeyStoreRecord {
            row_version: 2,
            ..connected
        }
    );
    let stale = KeyStoreRecord {
        name: "renamed".into(),
        ..ks.clone()
    };
    let err = store.update_key_store(&stale).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.get_key_store("cks-1").await.unwrap().unwrap(), stored);
    let err = store
        .update_key_store(&key_store("cks-ghost", "g", "cluster-g"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(store.get_key_store("cks-ghost").await.unwrap().is_none());
}

async fn uniqueness_is_enforced_by_the_database(store: Store) {
    store
        .insert_key_store(&key_store("cks-1", "one", "cluster-1"))
        .await
        .unwrap();
    for dup in [
        key_store("cks-1", "other", "cluster-2"),
        key_store("cks-2", "one", "cluster-2"),
        key_store("cks-3", "three", "cluster-1"),
    ] {
        let err = store.insert_key_store(&dup).await.unwrap_err();
        assert!(
            matches!(err, StoreError::AlreadyExists(_)),
            "{dup:?}: {err:?}"
        );
    }
    // The same name in another account is fine.
    let other_account = KeyStoreRecord {
        account: "444455556666".into(),
        ..key_store("cks-4", "one", "cluster-4")
    };
    store.insert_key_store(&other_account).await.unwrap();
    // Renaming onto a taken name.
    let mut two = key_store("cks-5", "five", "cluster-5");
    store.insert_key_store(&two).await.unwrap();
    two.name = "one".into();
    let err = store.update_key_store(&two).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert_eq!(store.list_key_stores().await.unwrap().len(), 3);

    store.insert_session(&session("ASIA1", 10)).await.unwrap();
    let same_id = SessionRecord {
        token_sha256: "another".into(),
        ..session("ASIA1", 10)
    };
    let same_token = SessionRecord {
        access_key_id: "ASIA2".into(),
        ..session("ASIA1", 10)
    };
    for dup in [same_id, same_token] {
        let err = store.insert_session(&dup).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    }
    assert!(store.get_session("ASIA2").await.unwrap().is_none());
}

async fn every_write_appends_its_change_in_order(store: Store) {
    use ChangeKind::*;
    let start = store.last_change_seq().await.unwrap();
    let key = create_enabled(&*store, "k1", &[]).await;
    store.put_tags("k1", &[tag("a", "1")]).await.unwrap();
    store
        .create_alias(&alias(ACCOUNT, "alias/x", "k1"), MAX_ALIASES)
        .await
        .unwrap();
    store
        .insert_grant(&grant("g1", "k1"), MAX_GRANTS)
        .await
        .unwrap();
    store.delete_grant("g1").await.unwrap();
    store
        .insert_key_store(&key_store("cks-1", "one", "cluster-1"))
        .await
        .unwrap();
    store.insert_session(&session("ASIA1", 10)).await.unwrap();
    let l = KeyLifecycle {
        key_id: "k1".into(),
        ..KeyLifecycle::default()
    };
    store.put_lifecycle(&l).await.unwrap();
    // Refused writes log nothing.
    let _ = store.update_key(&key).await.unwrap_err();
    let _ = store
        .create_alias(&alias(ACCOUNT, "alias/x", "k1"), MAX_ALIASES)
        .await;
    store.delete_key("k1").await.unwrap();
    let alias_id = format!("{ACCOUNT}/alias/x");
    let expected = vec![
        (Key, "k1".to_string()),
        (Key, "k1".into()),
        (Key, "k1".into()),
        (Alias, alias_id.clone()),
        (Grants, "k1".into()),
        (Grants, "k1".into()),
        (KeyStore, "cks-1".into()),
        (Session, "ASIA1".into()),
        (Key, "k1".into()),
        (Key, "k1".into()),
        (Alias, alias_id),
    ];
    assert_eq!(changes_after(&*store, start).await, expected);
    let rows = store.changes_since(start, 1000).await.unwrap();
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        store.last_change_seq().await.unwrap(),
        rows.last().unwrap().seq
    );
    // Paging and pruning.
    let first_two = store.changes_since(start, 2).await.unwrap();
    assert_eq!(first_two, rows[..2].to_vec());
    let after_first = store.changes_since(rows[0].seq, 1).await.unwrap();
    assert_eq!(after_first, rows[1..2].to_vec());
    assert_eq!(store.prune_changes(0).await.unwrap(), 0);
    let pruned = store.prune_changes(i64::MAX).await.unwrap();
    // A fresh database: every row is this case's.
    assert_eq!(pruned as usize, rows.len());
    assert!(store.changes_since(start, 10).await.unwrap().is_empty());
}

async fn grant_quota_is_counted_in_the_store(store: Store) {
    create_enabled(&*store, "k1", &[]).await;
    store.insert_grant(&grant("g1", "k1"), 2).await.unwrap();
    store.insert_grant(&grant("g2", "k1"), 2).await.unwrap();
    let err = store.insert_grant(&grant("g3", "k1"), 2).await.unwrap_err();
    assert!(matches!(err, StoreError::LimitExceeded(_)), "{err:?}");
    assert_eq!(store.grants_of("k1").await.unwrap().len(), 2);
    // Concurrent inserts cannot pass the quota either.
    create_enabled(&*store, "k2", &[]).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.insert_grant(&grant(&format!("c{i}"), "k2"), 3).await
        }));
    }
    let mut granted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => granted += 1,
            Err(StoreError::LimitExceeded(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(granted, 3);
    assert_eq!(store.grants_of("k2").await.unwrap().len(), 3);
}

async fn alias_quota_is_counted_in_the_store(store: Store) {
    create_enabled(&*store, "k1", &[]).await;
    create_enabled(&*store, "k2", &[]).await;
    store
        .create_alias(&alias(ACCOUNT, "alias/a", "k1"), 2)
        .await
        .unwrap();
    store
        .create_alias(&alias(ACCOUNT, "alias/b", "k1"), 2)
        .await
        .unwrap();
    let err = store
        .create_alias(&alias(ACCOUNT, "alias/c", "k1"), 2)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LimitExceeded(_)), "{err:?}");
    store
        .create_alias(&alias(ACCOUNT, "alias/c", "k2"), 2)
        .await
        .unwrap();
    let err = store
        .update_alias(ACCOUNT, "alias/c", "k1", 5, 2)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LimitExceeded(_)), "{err:?}");
    // Retargeting an alias to the key it already names does not count it twice.
    store
        .update_alias(ACCOUNT, "alias/a", "k1", 6, 2)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_alias(ACCOUNT, "alias/c")
            .await
            .unwrap()
            .unwrap()
            .key_id,
        "k2"
    );
}

async fn sessions_round_trip_and_expire(store: Store) {
    let s = session("ASIA1", 1_000);
    store.insert_session(&s).await.unwrap();
    store
        .insert_session(&session("ASIA2", 2_000))
        .await
        .unwrap();
    assert_eq!(store.get_session("ASIA1").await.unwrap(), Some(s.clone()));
    let printed = format!("{s:?}");
    assert!(
        printed.contains("redacted") && !printed.contains("[9, 8, 7, 6]"),
        "{printed}"
    );
    assert_eq!(store.delete_expired_sessions(1_000).await.unwrap(), 1);
    assert!(store.get_session("ASIA1").await.unwrap().is_none());
    assert!(store.get_session("ASIA2").await.unwrap().is_some());
}

async fn point_lookups_find_one_item(store: Store) {
    create_enabled(&*store, "k1", &[]).await;
    create_enabled(&*store, "k2", &[]).await;
    let a = alias(ACCOUNT, "alias/x", "k1");
    store.create_alias(&a, MAX_ALIASES).await.unwrap();
    assert_eq!(store.get_alias(ACCOUNT, "alias/x").await.unwrap(), Some(a));
    assert!(store
        .get_alias("000000000001", "alias/x")
        .await
        .unwrap()
        .is_none());
    let mut g2 = grant("g2", "k1");
    g2.created_at_ms = 1;
    let mut eq = BTreeMap::new();
    eq.insert("a".to_string(), "1".to_string());
    g2.constraint_equals = Some(eq);
    for g in [grant("g1", "k1"), g2.clone(), grant("g3", "k2")] {
        store.insert_grant(&g, MAX_GRANTS).await.unwrap();
    }
    assert_eq!(
        store.grants_of("k1").await.unwrap(),
        vec![g2.clone(), grant("g1", "k1")]
    );
    assert_eq!(store.get_grant("g2").await.unwrap(), Some(g2));
    assert!(store.get_grant("nope").await.unwrap().is_none());
    assert!(store.get_lifecycle("k1").await.unwrap().is_none());
}

async fn describe_reports_backend_and_migrations(store: Store) {
    let info = store.describe().await.unwrap();
    assert_eq!(info.applied_migrations, (1..=10).collect::<Vec<i64>>());
    assert_eq!(info.latest_known, 10);
    assert_eq!(info.latest_applied(), 10);
    assert!(!info.server_version.is_empty());
}

async fn leading_a_duty(store: Store) {
    let mut guard = store.try_lead(Duty::Sweeper).await.unwrap().expect("leads");
    assert_eq!(guard.duty(), Duty::Sweeper);
    assert!(guard.still_held().await);
    guard.release().await;
}

// ---------------------------------------------------------------------------------------
// PostgreSQL only: several stores on one database, older schema, server stopped.

fn pg_settings(pg: &PgServer, db: &str) -> PgSettings {
    let password = std::fs::read_to_string(pg.password_file()).unwrap();
    PgSettings {
        url: pg.url(db),
        password: Some(Zeroizing::new(password.trim().to_owned())),
        pool_size: 4,
        tls: PgTls::Disable,
        ca_file: None,
    }
}

async fn pg_two_stores_migrate_an_empty_database_at_once(pg: &PgServer) {
    let db = pg.create_database();
    let s = pg_settings(pg, &db);
    let (a, b) = tokio::join!(SqlStore::open_postgres(&s), SqlStore::open_postgres(&s));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.describe().await.unwrap(), b.describe().await.unwrap());
    assert_eq!(a.backend(), Backend::Postgres);
    create_enabled(&a, "k1", &[]).await;
    assert!(b.get_key("k1").await.unwrap().is_some());
}

async fn pg_leadership_is_exclusive_and_released(pg: &PgServer) {
    let db = pg.create_database();
    let s = pg_settings(pg, &db);
    let a = SqlStore::open_postgres(&s).await.unwrap();
    let b = SqlStore::open_postgres(&s).await.unwrap();
    let mut led = a.try_lead(Duty::Rotation).await.unwrap().expect("a leads");
    assert!(b.try_lead(Duty::Rotation).await.unwrap().is_none());
    // Another duty is free.
    let other = b
        .try_lead(Duty::Sweeper)
        .await
        .unwrap()
        .expect("b leads the sweeper");
    assert!(led.still_held().await);
    led.release().await;
    let b_led = b.try_lead(Duty::Rotation).await.unwrap().expect("released");
    assert!(a.try_lead(Duty::Rotation).await.unwrap().is_none());
    // Dropping a guard releases it too (its connection closes in the background).
    drop(b_led);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(g) = a.try_lead(Duty::Rotation).await.unwrap() {
            g.release().await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped guard was never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(other);
}

async fn pg_changes_wake_subscribers(pg: &PgServer) {
    let db = pg.create_database();
    let s = pg_settings(pg, &db);
    let a = SqlStore::open_postgres(&s).await.unwrap();
    let b = SqlStore::open_postgres(&s).await.unwrap();
    let mut rx = b.subscribe_changes().expect("PostgreSQL has a waker");
    // The listener wakes once when it is listening; from then on nothing is missed.
    tokio::time::timeout(Duration::from_secs(30), rx.changed())
        .await
        .expect("listener up")
        .unwrap();
    create_enabled(&a, "k1", &[]).await;
    let last = a.last_change_seq().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|seq| *seq >= last))
        .await
        .expect("notified")
        .unwrap();
    let sqlite_dir = tempfile::tempdir().unwrap();
    let sqlite = SqlStore::open_sqlite(sqlite_dir.path()).await.unwrap();
    assert!(sqlite.subscribe_changes().is_none());
}

async fn pg_previous_schema_is_migrated(pg: &PgServer) {
    let db = pg.create_database();
    let s = pg_settings(pg, &db);
    p11kms::store::sql::migrate_postgres_to(&s, 7)
        .await
        .unwrap();
    pg.psql(
        &db,
        "INSERT INTO keys (key_id, account, description, key_spec, key_usage, origin, state, \
         created_at_ms, current_version, policy) VALUES ('k1', '111122223333', 'old', \
         'SYMMETRIC_DEFAULT', 'ENCRYPT_DECRYPT', 'AWS_KMS', 'Enabled', 5, 1, '{}'); \
         INSERT INTO custom_key_stores (store_id, account, name, cluster_id, trust_anchor, \
         sealed_password, created_at_ms) VALUES ('cks-1', '111122223333', 'one', 'c1', 'pem', \
         '\\x01', 7);",
    );
    let store = SqlStore::open_postgres(&s).await.unwrap();
    let key = store.get_key("k1").await.unwrap().unwrap().key;
    assert_eq!((key.description.as_str(), key.row_version), ("old", 1));
    let ks = store.get_key_store("cks-1").await.unwrap().unwrap();
    assert_eq!((ks.sealed_password, ks.row_version), (vec![1], 1));
    assert_eq!(store.describe().await.unwrap().latest_applied(), 10);
}

async fn pg_stopped_server_is_unavailable_then_recovers(pg: &mut PgServer) {
    let db = pg.create_database();
    let s = pg_settings(pg, &db);
    let store = SqlStore::open_postgres(&s).await.unwrap();
    create_enabled(&store, "k1", &[]).await;
    pg.stop();
    let err = store.get_key("k1").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = store.put_tags("k1", &[tag("a", "1")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = SqlStore::open_postgres(&s).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    pg.start_again();
    store.put_tags("k1", &[tag("a", "1")]).await.unwrap();
    assert_eq!(
        store.get_key("k1").await.unwrap().unwrap().tags,
        vec![tag("a", "1")]
    );
}

async fn pg_wrong_password_is_refused(pg: &PgServer) {
    let db = pg.create_database();
    let mut s = pg_settings(pg, &db);
    s.password = Some(Zeroizing::new("not-the-password".into()));
    let err = SqlStore::open_postgres(&s).await.unwrap_err();
    assert!(!err.to_string().contains("not-the-password"), "{err}");
    s.url = format!("postgres://postgres:pw@127.0.0.1:{}/{db}", pg.port());
    let err = SqlStore::open_postgres(&s).await.unwrap_err();
    assert!(
        err.to_string().contains("must not carry a password"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// The harness.

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|s: Store| Box::pin($name(s)) as CaseFuture) as Case)),*]
    };
}

fn contract_cases() -> Vec<(&'static str, Case)> {
    cases![
        wrapped_blobs_round_trip_and_are_compare_and_set,
        blobs_under_a_master_are_found_per_key_store,
        imported_blobs_are_written_and_dropped_with_the_key_row,
        get_key_absent_is_none,
        two_phase_create_round_trip,
        rotation_adds_versions_in_order,
        multi_region_rows_round_trip,
        large_u32_version_round_trips,
        update_key_overwrites_mutable_columns_only,
        every_state_round_trips,
        duplicate_key_id_is_already_exists_and_changes_nothing,
        duplicate_version_is_already_exists_and_keeps_key_row,
        mismatched_version_and_key_change_nothing,
        missing_rows_are_not_found,
        alias_round_trip,
        duplicate_alias_is_already_exists,
        grants_round_trip_and_go_with_their_key,
        delete_key_cascades_to_versions_tags_and_aliases,
        put_tags_overwrites_same_key_and_adds_new,
        insert_key_with_repeated_tag_key_keeps_last,
        remove_tags_ignores_absent_keys,
        key_usage_is_replaced_in_batches_and_skips_deleted_keys,
        key_usage_flush_of_many_keys_writes_each_live_key_once,
        stale_row_version_conflicts_and_changes_nothing,
        concurrent_updates_with_one_expected_version_one_wins,
        tags_and_lifecycle_raise_row_version,
        key_store_updates_are_compare_and_set,
        uniqueness_is_enforced_by_the_database,
        every_write_appends_its_change_in_order,
        grant_quota_is_counted_in_the_store,
        alias_quota_is_counted_in_the_store,
        sessions_round_trip_and_expire,
        point_lookups_find_one_item,
        describe_reports_backend_and_migrations,
        leading_a_duty,
    ]
}

/// Runs `future` on its own task: a panic fails this case only.
async fn outcome(future: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    tokio::spawn(future)
        .await
        .map_err(|e| match e.try_into_panic() {
            Ok(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into()),
            Err(e) => e.to_string(),
        })
}

struct Tally {
    filters: Vec<String>,
    passed: usize,
    failed: Vec<String>,
}

impl Tally {
    fn wanted(&self, label: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| label.contains(f.as_str()))
    }

    fn record(&mut self, label: String, result: Result<(), String>) {
        match result {
            Ok(()) => {
                println!("test {label} ... ok");
                self.passed += 1;
            }
            Err(e) => {
                println!("test {label} ... FAILED\n{e}");
                self.failed.push(label);
            }
        }
    }
}

async fn run_all(pg: &mut PgServer, tally: &mut Tally) {
    for (name, case) in contract_cases() {
        let label = format!("{name} on sqlite");
        if tally.wanted(&label) {
            let dir = tempfile::tempdir().unwrap();
            let store: Store = Arc::new(SqlStore::open_sqlite(dir.path()).await.unwrap());
            tally.record(label, outcome(case(store)).await);
        }
        let label = format!("{name} on postgres");
        if tally.wanted(&label) {
            let db = pg.create_database();
            let store: Store = Arc::new(
                SqlStore::open_postgres(&pg_settings(pg, &db))
                    .await
                    .unwrap(),
            );
            tally.record(label, outcome(case(store)).await);
        }
    }
    macro_rules! pg_case {
        ($name:ident) => {
            let label = format!("{} on postgres", stringify!($name));
            if tally.wanted(&label) {
                // A panic here ends the run; unwinding main stops the server.
                $name(pg).await;
                tally.record(label, Ok(()));
            }
        };
    }
    pg_case!(pg_two_stores_migrate_an_empty_database_at_once);
    pg_case!(pg_leadership_is_exclusive_and_released);
    pg_case!(pg_changes_wake_subscribers);
    pg_case!(pg_previous_schema_is_migrated);
    pg_case!(pg_wrong_password_is_refused);
    pg_case!(pg_stopped_server_is_unavailable_then_recovers);
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let listing = std::env::args().any(|a| a == "--list");
    if listing {
        for (name, _) in contract_cases() {
            println!("{name} on sqlite: test\n{name} on postgres: test");
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut tally = Tally {
        filters,
        passed: 0,
        failed: Vec::new(),
    };
    let mut pg = PgServer::start();
    runtime.block_on(run_all(&mut pg, &mut tally));
    drop(runtime);
    drop(pg);
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if tally.failed.is_empty() {
            "ok"
        } else {
            "FAILED"
        },
        tally.passed,
        tally.failed.len()
    );
    if !tally.failed.is_empty() {
        for f in &tally.failed {
            println!("    {f}");
        }
        std::process::exit(1);
    }
}
