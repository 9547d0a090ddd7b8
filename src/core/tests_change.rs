//! Per-key locking and compare-and-set retries, on a real SoftHSM2 token and a real SQLite
//! store in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::keys::{CreateKeyRequest, UpdateKeyDescriptionRequest};
use super::policies::PutKeyPolicyRequest;
use super::tags::TagResourceRequest;
use super::{Kms, KmsSettings, SystemClock};
use crate::hsm::Hsm;
use crate::identity::directory::AccountFiles;
use crate::identity::{
    AuthMethod, Caller, Directory, DirectoryFiles, DirectoryHandle, SessionStore,
};
use crate::store::{MetadataStore, SqliteStore, Tag};

const ACCOUNT: &str = "111122223333";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/identity")
}

fn directory() -> Directory {
    let files = DirectoryFiles {
        accounts: vec![AccountFiles {
            account_id: ACCOUNT.into(),
            authorization_details: fixtures().join(format!("{ACCOUNT}.json")),
            guardrails: Vec::new(),
        }],
        credentials: None,
    };
    Directory::load(&files).expect("fixture directory")
}

fn root(dir: &Directory) -> Caller {
    let p = dir
        .principal(&format!("arn:aws:iam::{ACCOUNT}:root"))
        .expect("account root");
    Caller::new(p, AuthMethod::SigV4, None, true)
}

async fn engine(data: &Path) -> (Arc<Kms>, Caller) {
    let dir = directory();
    let caller = root(&dir);
    let hsm = Hsm::open(&crate::hsm::tests::test_config()).expect("test token");
    let store = SqliteStore::open_sqlite(data).await.expect("sqlite store");
    let settings = KmsSettings {
        partition: "aws".into(),
        region: "us-east-1".into(),
        creating_grace_ms: 60_000,
        xks_health_cache_ms: 1_000,
        residency: super::residency::Residency::Token,
    };
    let kms = Kms::open(
        settings,
        Arc::new(store),
        hsm,
        Arc::new(DirectoryHandle::new(dir)),
        Arc::new(SessionStore::new()),
        Arc::new(SystemClock),
    )
    .await
    .expect("engine");
    (kms, caller)
}

async fn new_key(kms: &Kms, caller: &Caller) -> String {
    let created = kms
        .create_key(caller, CreateKeyRequest::default())
        .await
        .expect("CreateKey");
    created.key_metadata.key_id
}

fn describe(key_id: &str, text: &str) -> UpdateKeyDescriptionRequest {
    UpdateKeyDescriptionRequest {
        key_id: key_id.into(),
        description: text.into(),
    }
}

fn root_policy(sid: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"{sid}","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{ACCOUNT}:root"}},"Action":"kms:*","Resource":"*"}}]}}"#
    )
}

/// While one key's change lock is held, a change to another key completes, and a change to
/// the held key waits until the lock is released.
#[tokio::test]
async fn changes_to_different_keys_do_not_wait_for_each_other() {
    let data = tempfile::tempdir().unwrap();
    let (kms, caller) = engine(data.path()).await;
    let (a, b) = (new_key(&kms, &caller).await, new_key(&kms, &caller).await);
    let held = kms.key_locks.key(&a).await;
    // Completes while `a` is held (it would wait forever if it needed `a`'s lock).
    kms.update_key_description(&caller, describe(&b, "b changed"))
        .await
        .expect("change to b");
    let (k2, c2, a2) = (kms.clone(), caller.clone(), a.clone());
    let blocked = tokio::spawn(async move {
        k2.update_key_description(&c2, describe(&a2, "a changed"))
            .await
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!blocked.is_finished(), "a change to a held key must wait");
    drop(held);
    blocked.await.unwrap().expect("change to a after release");
    let stored = kms.store().get_key(&a).await.unwrap().unwrap();
    assert_eq!(stored.key.description, "a changed");
}

/// Many tasks tagging, describing and re-policying one key at once lose no update: every
/// tag is there at the end, in the cache and in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_to_one_key_lose_no_update() {
    let data = tempfile::tempdir().unwrap();
    let (kms, caller) = engine(data.path()).await;
    let key = new_key(&kms, &caller).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (kms, caller, key) = (kms.clone(), caller.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let tag = Tag {
                    key: format!("t{t}-{i}"),
                    value: format!("v{t}"),
                };
                let req = TagResourceRequest {
                    key_id: key.clone(),
                    tags: vec![tag],
                };
                kms.tag_resource(&caller, req).await.expect("TagResource");
                kms.update_key_description(&caller, describe(&key, &format!("d{t}-{i}")))
                    .await
                    .expect("UpdateKeyDescription");
                let put = PutKeyPolicyRequest {
                    key_id: key.clone(),
                    policy_name: "default".into(),
                    policy: root_policy(&format!("s{t}x{i}")),
                    bypass_policy_lockout_safety_check: false,
                };
                kms.put_key_policy(&caller, put)
                    .await
                    .expect("PutKeyPolicy");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored = kms.store().get_key(&key).await.unwrap().unwrap();
    let cached = kms.current_key(&key).unwrap();
    for t in 0..8 {
        for i in 0..5 {
            let name = format!("t{t}-{i}");
            assert!(
                stored.tags.iter().any(|x| x.key == name),
                "store lost {name}"
            );
            assert!(
                cached.tags.iter().any(|x| x.key == name),
                "cache lost {name}"
            );
        }
    }
    assert_eq!(stored.tags.len(), 40);
    assert_eq!(cached.record.description, stored.key.description);
    assert_eq!(cached.record.policy, stored.key.policy);
}

/// A change written behind the engine's back (another node: a second store handle on the
/// same database) makes the engine's next write conflict; the engine retries on fresh
/// state, so both changes survive and the row has moved on by two versions. Needs the store
/// to honour `row_version` (compare-and-set), which the SQL store of issue 17 does.
#[tokio::test]
async fn a_stale_cache_is_retried_on_fresh_state_not_overwritten() {
    let data = tempfile::tempdir().unwrap();
    let (kms, caller) = engine(data.path()).await;
    let key = new_key(&kms, &caller).await;
    let other = SqliteStore::open_sqlite(data.path()).await.unwrap();
    let mut behind = other.get_key(&key).await.unwrap().unwrap().key;
    let read_at = behind.row_version;
    behind.policy = root_policy("changed-by-another-node").into();
    other
        .update_key(&behind)
        .await
        .expect("the other node's write");
    kms.update_key_description(&caller, describe(&key, "after the other node"))
        .await
        .expect("retried on fresh state");
    let stored = kms.store().get_key(&key).await.unwrap().unwrap().key;
    assert_eq!(stored.description, "after the other node");
    assert!(
        stored.policy.contains("changed-by-another-node"),
        "the other node's change was overwritten"
    );
    assert_eq!(stored.row_version, read_at + 2);
    let cached = kms.current_key(&key).unwrap();
    assert_eq!(cached.record.row_version, stored.row_version);
    assert!(cached.record.policy.contains("changed-by-another-node"));
}

/// A grant token presented to a node that has seen neither the grant nor its key (both made
/// on another node a moment ago, before any change reached it) works at once, as in AWS:
/// the node reads the grant and its key from the store.
#[tokio::test]
async fn a_grant_token_from_another_node_brings_its_key() {
    let data = tempfile::tempdir().unwrap();
    let (behind, caller) = engine(data.path()).await;
    let (maker, _) = engine(data.path()).await;
    let key = new_key(&maker, &caller).await;
    let grant = maker
        .create_grant(
            &caller,
            super::grants::CreateGrantRequest {
                key_id: key.clone(),
                grantee_principal: format!("arn:aws:iam::{ACCOUNT}:root"),
                operations: vec!["Encrypt".into()],
                ..Default::default()
            },
        )
        .await
        .expect("CreateGrant on the other node");
    assert!(behind.current_key(&key).is_err(), "the node is not behind");
    let sealed = behind
        .encrypt(
            &caller,
            super::crypto::EncryptRequest {
                key_id: maker.current_key(&key).unwrap().arn.clone(),
                plaintext: zeroize::Zeroizing::new(b"x".to_vec()),
                grant_tokens: vec![grant.grant_token.clone()],
                ..Default::default()
            },
        )
        .await
        .expect("Encrypt with the fresh grant token on the node that had not seen it");
    assert_eq!(sealed.key_id, maker.current_key(&key).unwrap().arn);
    let bogus = format!("{}x", grant.grant_token);
    let refused = behind
        .check_grant_tokens(&[bogus])
        .await
        .expect_err("a token naming no grant");
    assert_eq!(refused.aws_name(), "InvalidGrantTokenException");
}

/// An external store registered directly in the store and the engine (no proxy checked):
/// its proxy at `endpoint`.
async fn external_store(kms: &Kms, name: &str, endpoint: &str) -> String {
    let store_id = super::keystores::new_store_id();
    let secret = zeroize::Zeroizing::new("a-proxy-secret-of-some-length-0001".to_string());
    let record = crate::store::KeyStoreRecord {
        cluster_id: store_id.clone(),
        store_id: store_id.clone(),
        account: ACCOUNT.into(),
        name: name.into(),
        trust_anchor: String::new(),
        sealed_password: Vec::new(),
        connect: false,
        created_at_ms: 1,
        xks: Some(crate::store::XksProxyRecord {
            endpoint: endpoint.into(),
            uri_path: "/kms/xks/v1".into(),
            connectivity: "PUBLIC_ENDPOINT".into(),
            access_key_id: "AKIAPROXYCREDENTIAL1".into(),
            sealed_secret: kms.key_stores.seal(&store_id, &secret).await.unwrap(),
        }),
        row_version: 1,
    };
    kms.store().insert_key_store(&record).await.unwrap();
    kms.key_stores.load(vec![record]);
    store_id
}

/// UpdateCustomKeyStore checks a moved proxy without the account's store lock: while one
/// store's update waits on a proxy that accepts and never answers, a rename of another store
/// of the same account completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_check_does_not_hold_the_accounts_store_lock() {
    use super::keystores::UpdateCustomKeyStoreRequest;
    let data = tempfile::tempdir().unwrap();
    let (kms, caller) = engine(data.path()).await;
    kms.key_stores.configure(super::connections::ClusterSetup {
        clusters: Vec::new(),
        pool: crate::hsm::tests::test_config(),
        xks: super::connections::XksClientSetup {
            tls: crate::xks_client::tls_config(None).unwrap(),
            region: "us-east-1".into(),
        },
    });
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let slow = external_store(&kms, "slow", "http://127.0.0.1:1").await;
    let quick = external_store(&kms, "quick", "http://127.0.0.1:2").await;
    let (accepted_tx, accepted) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn(async move {
        let (conn, _) = silent.accept().await.unwrap();
        let _ = accepted_tx.send(());
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        drop(conn);
    });
    let moving = tokio::spawn({
        let (kms, caller) = (kms.clone(), caller.clone());
        async move {
            let mut req = UpdateCustomKeyStoreRequest {
                custom_key_store_id: slow,
                ..Default::default()
            };
            req.xks.xks_proxy_uri_endpoint = Some(format!("http://127.0.0.1:{port}"));
            kms.update_custom_key_store(&caller, req).await
        }
    });
    accepted
        .await
        .expect("the moved store's proxy check reached the proxy");
    let rename = UpdateCustomKeyStoreRequest {
        custom_key_store_id: quick,
        new_custom_key_store_name: Some("renamed".into()),
        ..Default::default()
    };
    kms.update_custom_key_store(&caller, rename)
        .await
        .expect("rename of the other store");
    assert!(
        !moving.is_finished(),
        "the rename waited for the other store's proxy check"
    );
    let refused = moving.await.unwrap();
    assert!(refused.is_err(), "a proxy that never answers was accepted");
    holder.abort();
}
