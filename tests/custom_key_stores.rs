//! Custom key stores through the gRPC door (issue 15), on real SoftHSM2 tokens: the life
//! cycle (create, connect, keys on the store's token, crypto across stores, disconnect,
//! reconnect, deletion), each connection error code from a real cause, a restart that
//! reconnects by itself, a dead device under load on another store, and a denied store
//! operation that touches nothing.
//!
//! The boto3 and AWS CLI runs of the same life cycle and of every error are in
//! `tests/aws_clients.rs`; the CLI's in `tests/cli_key_stores.rs`.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::stores::{cluster, cluster_sections, copy_cluster, softhsm, ClusterFixture};
use common::*;
use p11kms::api::grpc::status::aws_reason;
use p11kms::core::ManualClock;
use p11kms::pb;
use p11kms::server::{self, RunningServer, ServerOptions};

/// Starts the daemon on `dir` with `clusters` offered, on `clock`, its sweeps left to the
/// test.
async fn start_on(
    dir: &Path,
    clusters: &[ClusterFixture],
    clock: Arc<ManualClock>,
) -> RunningServer {
    let config = config_with(dir, &cluster_sections(clusters));
    server::start(
        &config,
        ServerOptions {
            clock,
            sweep_interval: Some(std::time::Duration::from_secs(3600)),
        },
    )
    .await
    .expect("daemon starts")
}

/// [`start_on`] a manual clock of its own.
async fn start_with_clusters(dir: &Path, clusters: &[ClusterFixture]) -> RunningServer {
    start_on(dir, clusters, Arc::new(ManualClock::default())).await
}

/// CreateCustomKeyStore of `cluster` named `name`.
async fn create_store(
    c: &mut Client,
    name: &str,
    cluster: &ClusterFixture,
) -> Result<String, tonic::Status> {
    c.create_custom_key_store(pb::CreateCustomKeyStoreRequest {
        custom_key_store_name: name.into(),
        cloud_hsm_cluster_id: cluster.id.clone(),
        trust_anchor_certificate: cluster.anchor_pem.clone(),
        key_store_password: cluster.password.clone(),
        custom_key_store_type: String::new(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().custom_key_store_id)
}

/// DisconnectCustomKeyStore of `id`.
async fn disconnect(c: &mut Client, id: &str) -> Result<(), tonic::Status> {
    c.disconnect_custom_key_store(pb::DisconnectCustomKeyStoreRequest {
        custom_key_store_id: id.into(),
    })
    .await
    .map(|_| ())
}

/// CreateKey in store `id`.
async fn create_store_key(c: &mut Client, id: &str) -> Result<pb::KeyMetadata, tonic::Status> {
    c.create_key(pb::CreateKeyRequest {
        origin: "AWS_CLOUDHSM".into(),
        custom_key_store_id: id.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().key_metadata.expect("metadata"))
}

/// ReEncrypt of `blob` to `dest`.
async fn re_encrypt(c: &mut Client, blob: &[u8], dest: &str) -> Vec<u8> {
    c.re_encrypt(pb::ReEncryptRequest {
        ciphertext_blob: blob.to_vec(),
        destination_key_id: dest.into(),
        ..Default::default()
    })
    .await
    .expect("re-encrypt")
    .into_inner()
    .ciphertext_blob
}

/// The whole life cycle on two stores, one reached through a second module path: keys live on
/// their store's token (not the default one), crypto works within and across stores, a
/// disconnected store's keys are Unavailable (crypto refused, DescribeKey works), reconnecting
/// brings old ciphertexts back, and a store can be deleted once its keys are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn life_cycle_across_two_stores_and_the_default_one() {
    let a = cluster("life", "a", &softhsm(), true);
    let b = copy_cluster();
    let dir = data_dir("cks-life");
    let clock = Arc::new(ManualClock::default());
    let server = start_on(&dir, &[a.clone(), b.clone()], clock.clone()).await;
    let mut c = admin(server.addr).await;

    let store_a = create_store(&mut c, "store-a", &a).await.expect("create a");
    let store_b = create_store(&mut c, "store-b", &b).await.expect("create b");
    assert!(
        store_a.starts_with("cks-") && store_a.len() == 21,
        "{store_a}"
    );
    let listed = describe_store(&mut c, &store_a).await;
    assert_eq!(listed.connection_state, "DISCONNECTED");
    assert_eq!(listed.cloud_hsm_cluster_id, a.id);
    assert_eq!(listed.custom_key_store_type, "AWS_CLOUDHSM");
    assert_eq!(listed.trust_anchor_certificate, a.anchor_pem);
    assert!(listed.creation_date.is_some());
    assert_refused(
        create_store_key(&mut c, &store_a).await,
        "a key needs a connected store",
        "CustomKeyStoreInvalidStateException",
        "CONNECTED",
    );

    assert_eq!(
        connect(&mut c, &store_a).await,
        ("CONNECTED".into(), String::new())
    );
    assert_eq!(
        connect(&mut c, &store_b).await,
        ("CONNECTED".into(), String::new())
    );
    let key_a = create_store_key(&mut c, &store_a).await.expect("key in a");
    assert_eq!(key_a.origin, "AWS_CLOUDHSM");
    assert_eq!(key_a.custom_key_store_id, store_a);
    assert_eq!(key_a.cloud_hsm_cluster_id, a.id);
    let key_b = create_store_key(&mut c, &store_b).await.unwrap().key_id;
    let key_d = create_key(&mut c).await;

    // The key's object is on its store's token, not on the default token.
    let object = key_object(&key_a.key_id);
    let device_a = server
        .kms
        .key_stores()
        .get(&store_a)
        .unwrap()
        .connected_hsm()
        .unwrap();
    assert!(device_a.exists(object).await.unwrap());
    assert!(!server.kms.hsm().exists(object).await.unwrap());
    let on_a = device_a.list_objects().await.unwrap();
    let labelled = on_a
        .iter()
        .find(|o| o.id == object.as_bytes().to_vec() && o.token);
    assert_eq!(
        labelled.map(|o| o.label.as_str()),
        Some(key_a.arn.as_str()),
        "{on_a:?}"
    );

    let blob = encrypt_with(&mut c, &key_a.key_id, b"in store a", &[])
        .await
        .unwrap();
    assert_eq!(
        decrypt_with(&mut c, &blob, &[]).await.unwrap(),
        b"in store a"
    );
    let to_b = re_encrypt(&mut c, &blob, &key_b).await;
    let to_d = re_encrypt(&mut c, &to_b, &key_d).await;
    let back = re_encrypt(&mut c, &to_d, &key_a.key_id).await;
    assert_eq!(
        decrypt_with(&mut c, &back, &[]).await.unwrap(),
        b"in store a"
    );
    let random = c
        .generate_random(pb::GenerateRandomRequest {
            number_of_bytes: Some(48),
            custom_key_store_id: store_b.clone(),
        })
        .await
        .expect("random from store b")
        .into_inner();
    assert_eq!(random.plaintext.len(), 48);

    disconnect(&mut c, &store_a).await.expect("disconnect a");
    assert_eq!(
        describe_store(&mut c, &store_a).await.connection_state,
        "DISCONNECTED"
    );
    assert_eq!(
        describe_key(&mut c, &key_a.key_id).await.key_state,
        "Unavailable"
    );
    assert_refused(
        encrypt_with(&mut c, &key_a.key_id, b"x", &[]).await,
        "a disconnected store's key cannot encrypt",
        "KMSInvalidStateException",
        "unavailable",
    );
    assert_refused(
        decrypt_with(&mut c, &blob, &[]).await,
        "nor decrypt",
        "KMSInvalidStateException",
        "unavailable",
    );
    // Store b and the default store are untouched.
    assert!(encrypt_with(&mut c, &key_b, b"b", &[]).await.is_ok());
    assert!(encrypt_with(&mut c, &key_d, b"d", &[]).await.is_ok());

    assert_eq!(connect(&mut c, &store_a).await.0, "CONNECTED");
    assert_eq!(
        describe_key(&mut c, &key_a.key_id).await.key_state,
        "Enabled"
    );
    assert_eq!(
        decrypt_with(&mut c, &blob, &[]).await.unwrap(),
        b"in store a"
    );

    schedule_deletion(&mut c, &key_a.key_id, 7).await;
    // Store b stays connected: its key's object is destroyed when its window ends.
    schedule_deletion(&mut c, &key_b, 7).await;
    let device_b = server
        .kms
        .key_stores()
        .get(&store_b)
        .unwrap()
        .connected_hsm()
        .unwrap();
    assert!(device_b.exists(key_object(&key_b)).await.unwrap());
    disconnect(&mut c, &store_a).await.unwrap();
    assert_eq!(
        describe_key(&mut c, &key_a.key_id).await.key_state,
        "PendingDeletion"
    );
    let delete = |id: &str| pb::DeleteCustomKeyStoreRequest {
        custom_key_store_id: id.into(),
    };
    assert_refused(
        c.delete_custom_key_store(delete(&store_a)).await,
        "a store with keys cannot be deleted",
        "CustomKeyStoreHasCMKsException",
        "still has KMS keys",
    );
    // The pending window ends while the store is disconnected: the key's metadata goes, its
    // object stays on the store's token, recorded and audited as an orphan.
    clock.advance_days(8);
    server.kms.sweep_once().await;
    assert_eq!(
        reason(try_describe(&mut c, &key_a.key_id).await),
        "NotFoundException"
    );
    let orphans = server.kms.store().list_orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(
        (orphans[0].store_id.as_str(), orphans[0].version),
        (store_a.as_str(), 1)
    );
    let orphan = format!("{}/v1", key_a.key_id);
    let audited = events(&dir)
        .into_iter()
        .filter(|e| e["eventName"] == "CustomKeyStoreStateChange")
        .filter(|e| e["requestParameters"]["orphanedKeyObject"] == orphan.as_str())
        .count();
    assert_eq!(audited, 1);
    assert_eq!(
        reason(try_describe(&mut c, &key_b).await),
        "NotFoundException"
    );
    assert!(!device_b.exists(key_object(&key_b)).await.unwrap());
    assert!(orphans.iter().all(|o| o.key_id != key_b), "{orphans:?}");
    c.delete_custom_key_store(delete(&store_a))
        .await
        .expect("delete a");
    assert_refused(
        c.connect_custom_key_store(pb::ConnectCustomKeyStoreRequest {
            custom_key_store_id: store_a.clone(),
        })
        .await,
        "a deleted store is gone",
        "CustomKeyStoreNotFoundException",
        &store_a,
    );
    // The orphan is still on store a's token, under the store's password.
    let token_a = open_token(&a).await;
    assert!(token_a.exists(object).await.unwrap());
    token_a.shutdown();
    drop(c);
    server.shutdown().await.unwrap();
    // `p11kms check` names the stores and the object left for the operator.
    let (code, out) = run_check(&dir.join("p11kms.toml")).await;
    let orphan_line = format!(
        "orphaned key object on custom key store {store_a}: key {} version 1",
        key_a.key_id
    );
    assert!(out.contains(&orphan_line), "{out}");
    let store_line = format!("custom key store {store_b} ('store-b') on cluster {}", b.id);
    assert!(out.contains(&store_line), "{out}");
    // The orphan is reported, not drift. (Other tests' daemons share the default token, so
    // their keys may show as drift here: the exit code is not this test's to assert.)
    assert!(code == 0 || code == 2, "{out}");
    let drift: Vec<&str> = out.lines().filter(|l| l.starts_with("DRIFT")).collect();
    assert!(
        !drift.iter().any(|l| l.contains(&key_a.key_id)),
        "{drift:?}"
    );
}

/// The cluster's token, opened directly with its password (one worker).
async fn open_token(cluster: &ClusterFixture) -> Arc<p11kms::hsm::Hsm> {
    let pin = p11kms::hsm::Pin::new(cluster.password.clone());
    let mut cfg = p11kms::hsm::HsmConfig::new(&cluster.module, &cluster.token, pin);
    cfg.workers = 1;
    tokio::task::spawn_blocking(move || p11kms::hsm::Hsm::open(&cfg))
        .await
        .unwrap()
        .expect("open the cluster token")
}

/// The HSM object of version 1 of `key_id`.
fn key_object(key_id: &str) -> p11kms::hsm::ObjectId {
    let uuid = uuid::Uuid::parse_str(key_id).unwrap();
    p11kms::hsm::ObjectId::new(*uuid.as_bytes(), 1)
}

/// The fault shim in front of a copy of SoftHSM2 of its own (a third module instance, so that
/// its faults touch nothing else in this process), and the one cluster reached through it
/// (made before the shim's target is first loaded: see `stores::copy_cluster`).
async fn shim() -> Option<(common::shim::Faults, ClusterFixture)> {
    static CLUSTER: std::sync::OnceLock<ClusterFixture> = std::sync::OnceLock::new();
    let target = env().dir.join("libsofthsm2-shim-target.so");
    if !target.exists() {
        std::fs::copy(softhsm(), &target).expect("copy libsofthsm2.so");
    }
    let faults = common::shim::faults_on(&target).await?;
    let s = CLUSTER.get_or_init(|| cluster("shim", "s", &faults.lib, true));
    Some((faults, s.clone()))
}

/// Waits up to 20 s (the watch retries a lost device with backoff) for store `id` to be in
/// `state`; its (state, error code) when it got there or at the end.
async fn eventually(c: &mut Client, id: &str, state: &str) -> (String, String) {
    let mut last = (String::new(), String::new());
    for _ in 0..200 {
        let s = describe_store(c, id).await;
        last = (s.connection_state, s.connection_error_code);
        if last.0 == state {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    last
}

/// UpdateCustomKeyStore of `id`'s password.
async fn set_password(c: &mut Client, id: &str, password: &str) -> Result<(), tonic::Status> {
    c.update_custom_key_store(pb::UpdateCustomKeyStoreRequest {
        custom_key_store_id: id.into(),
        key_store_password: password.into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

/// Each ConnectionErrorCode from a real cause: a wrong password, a token that is not there,
/// the device answering CKR_PIN_LOCKED and CKR_DEVICE_REMOVED to C_Login (through the fault
/// shim). A store failed for a wrong password must be disconnected and fixed first; one whose
/// device went away comes back by itself when the device returns, also after it dies while
/// connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_error_code_from_a_real_cause() {
    let Some((faults, s)) = shim().await else {
        return;
    };
    let w = cluster("codes", "w", &softhsm(), true);
    let n = cluster("codes", "n", &softhsm(), false);
    let dir = data_dir("cks-codes");
    let server = start_with_clusters(&dir, &[w.clone(), n.clone(), s.clone()]).await;
    let mut c = admin(server.addr).await;

    let wrong = ClusterFixture {
        password: "not-the-pin".into(),
        ..w.clone()
    };
    let store_w = create_store(&mut c, "w", &wrong).await.unwrap();
    let code = |c: &str| ("FAILED".to_string(), c.to_string());
    assert_eq!(connect(&mut c, &store_w).await, code("INVALID_CREDENTIALS"));
    assert_refused(
        c.connect_custom_key_store(pb::ConnectCustomKeyStoreRequest {
            custom_key_store_id: store_w.clone(),
        })
        .await,
        "a store failed for its credentials is disconnected and fixed first",
        "CustomKeyStoreInvalidStateException",
        "FAILED",
    );
    assert_refused(
        set_password(&mut c, &store_w, &w.password).await,
        "the password changes only while disconnected",
        "CustomKeyStoreInvalidStateException",
        "DISCONNECTED",
    );
    disconnect(&mut c, &store_w).await.unwrap();
    set_password(&mut c, &store_w, &w.password).await.unwrap();
    assert_eq!(connect(&mut c, &store_w).await.0, "CONNECTED");

    let store_n = create_store(&mut c, "n", &n).await.unwrap();
    assert_eq!(connect(&mut c, &store_n).await, code("CLUSTER_NOT_FOUND"));

    let store_s = create_store(&mut c, "s", &s).await.unwrap();
    faults.fail_with("C_Login", 0xa4); // CKR_PIN_LOCKED
    assert_eq!(connect(&mut c, &store_s).await, code("USER_LOCKED_OUT"));
    disconnect(&mut c, &store_s).await.unwrap();
    faults.fail_with("C_Login", 0x32); // CKR_DEVICE_REMOVED
    assert_eq!(connect(&mut c, &store_s).await, code("NETWORK_ERRORS"));
    faults.unset("fail_C_Login");
    assert_eq!(
        eventually(&mut c, &store_s, "CONNECTED").await.0,
        "CONNECTED"
    );

    // The device dies while connected: FAILED, its keys refused, then back by itself.
    let key = create_store_key(&mut c, &store_s).await.unwrap().key_id;
    let blob = encrypt_with(&mut c, &key, b"shim", &[]).await.unwrap();
    faults.set("dead");
    assert_eq!(
        eventually(&mut c, &store_s, "FAILED").await,
        code("NETWORK_ERRORS")
    );
    assert_eq!(describe_key(&mut c, &key).await.key_state, "Unavailable");
    assert_eq!(
        reason(encrypt_with(&mut c, &key, b"x", &[]).await),
        "KMSInvalidStateException"
    );
    faults.unset("dead");
    assert_eq!(
        eventually(&mut c, &store_s, "CONNECTED").await.0,
        "CONNECTED"
    );
    assert_eq!(decrypt_with(&mut c, &blob, &[]).await.unwrap(), b"shim");

    // Every automatic state change is in the audit trail.
    let changes: Vec<String> = events(&dir)
        .into_iter()
        .filter(|e| e["eventName"] == "CustomKeyStoreStateChange")
        .filter(|e| e["requestParameters"]["customKeyStoreId"] == store_s.as_str())
        .map(|e| {
            let p = &e["requestParameters"];
            format!("{} {}", p["connectionState"], p["connectionErrorCode"])
        })
        .collect();
    for expected in [
        "\"FAILED\" \"USER_LOCKED_OUT\"",
        "\"FAILED\" \"NETWORK_ERRORS\"",
        "\"CONNECTED\" null",
    ] {
        assert!(
            changes.iter().any(|c| c == expected),
            "{expected}: {changes:?}"
        );
    }
    drop(c);
    server.shutdown().await.unwrap();
}

/// Every file under `dir`, read whole (the database, the audit trail, the config).
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    out
}

/// A restart reconnects every store that was connected, without the operator, and its keys
/// work; a store that was disconnected stays so. The password is in no file the daemon wrote
/// (database, audit trail, config), before or after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reconnects_connected_stores_and_the_password_is_nowhere() {
    let a = cluster("restart", "a", &softhsm(), true);
    let b = cluster("restart", "b", &softhsm(), true);
    let dir = data_dir("cks-restart");
    let clusters = [a.clone(), b.clone()];
    let server = start_with_clusters(&dir, &clusters).await;
    let mut c = admin(server.addr).await;
    let store_a = create_store(&mut c, "a", &a).await.unwrap();
    let store_b = create_store(&mut c, "b", &b).await.unwrap();
    assert_eq!(connect(&mut c, &store_a).await.0, "CONNECTED");
    let key = create_store_key(&mut c, &store_a).await.unwrap().key_id;
    let blob = encrypt_with(&mut c, &key, b"across a restart", &[])
        .await
        .unwrap();
    drop(c);
    server.shutdown().await.unwrap();

    let server = start_with_clusters(&dir, &clusters).await;
    let mut c = admin(server.addr).await;
    assert_eq!(settled(&mut c, &store_a).await.0, "CONNECTED");
    assert_eq!(
        describe_store(&mut c, &store_b).await.connection_state,
        "DISCONNECTED"
    );
    let plain = decrypt_with(&mut c, &blob, &[]).await.unwrap();
    assert_eq!(plain, b"across a restart");
    let reconnected = events(&dir)
        .into_iter()
        .filter(|e| e["eventName"] == "CustomKeyStoreStateChange")
        .filter(|e| e["requestParameters"]["customKeyStoreId"] == store_a.as_str())
        .filter(|e| e["requestParameters"]["connectionState"] == "CONNECTED")
        .count();
    assert_eq!(
        reconnected, 2,
        "the connect, then the reconnect at start-up, are audited"
    );
    drop(c);
    server.shutdown().await.unwrap();

    let files = files_under(&dir);
    assert!(
        files.len() >= 4,
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for password in [&a.password, &b.password] {
        for (path, bytes) in &files {
            let found = bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes());
            assert!(!found, "the password is in {}", path.display());
        }
    }
}

/// A store operation the caller may not do is refused before anything happens: no HSM call
/// on any device, no store row, no change to an existing store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_store_operation_makes_no_hsm_call_and_no_change() {
    let a = cluster("denied", "a", &softhsm(), true);
    let dir = data_dir("cks-denied");
    let server = start_with_clusters(&dir, std::slice::from_ref(&a)).await;
    let mut c = admin(server.addr).await;
    let store = create_store(&mut c, "a", &a).await.unwrap();
    let user = signed_as(server.addr, "AKIAUSER100000000001").await;
    let before = (
        server.kms.hsm().counters(),
        server.kms.store().list_key_stores().await.unwrap(),
    );
    let mut k = user.kms.clone();
    let create = pb::CreateCustomKeyStoreRequest {
        custom_key_store_name: "mine".into(),
        cloud_hsm_cluster_id: a.id.clone(),
        trust_anchor_certificate: a.anchor_pem.clone(),
        key_store_password: a.password.clone(),
        custom_key_store_type: String::new(),
        ..Default::default()
    };
    let id = || store.clone();
    let denied = [
        reason(
            k.create_custom_key_store(user.kms_req(create, "CreateCustomKeyStore"))
                .await,
        ),
        reason(
            k.connect_custom_key_store(user.kms_req(
                pb::ConnectCustomKeyStoreRequest {
                    custom_key_store_id: id(),
                },
                "ConnectCustomKeyStore",
            ))
            .await,
        ),
        reason(
            k.update_custom_key_store(user.kms_req(
                pb::UpdateCustomKeyStoreRequest {
                    custom_key_store_id: id(),
                    new_custom_key_store_name: "renamed".into(),
                    key_store_password: "another-password".into(),
                    ..Default::default()
                },
                "UpdateCustomKeyStore",
            ))
            .await,
        ),
        reason(
            k.delete_custom_key_store(user.kms_req(
                pb::DeleteCustomKeyStoreRequest {
                    custom_key_store_id: id(),
                },
                "DeleteCustomKeyStore",
            ))
            .await,
        ),
        reason(
            k.describe_custom_key_stores(user.kms_req(
                pb::DescribeCustomKeyStoresRequest::default(),
                "DescribeCustomKeyStores",
            ))
            .await,
        ),
    ];
    assert!(
        denied.iter().all(|r| r == "AccessDeniedException"),
        "{denied:?}"
    );
    let after = (
        server.kms.hsm().counters(),
        server.kms.store().list_key_stores().await.unwrap(),
    );
    assert_eq!(before, after);
    assert_eq!(
        describe_store(&mut c, &store).await.connection_state,
        "DISCONNECTED"
    );

    // `policy explain` (ExplainAccess) gives the same decisions, on `*`.
    let admin = signed_as(server.addr, "AKIAADMIN00000000001").await;
    let explain = |principal: &str| pb::ExplainAccessRequest {
        principal: principal.into(),
        action: "kms:CreateCustomKeyStore".into(),
        ..Default::default()
    };
    let mut decisions = Vec::new();
    for principal in [USER1, ADMIN] {
        let r = admin
            .admin
            .clone()
            .explain_access(admin.admin_req(explain(principal), "ExplainAccess"))
            .await
            .expect("explain")
            .into_inner();
        decisions.push((r.decision, r.resource));
    }
    assert_eq!(
        decisions,
        [
            ("Deny".to_string(), "*".to_string()),
            ("Allow".into(), "*".into())
        ]
    );
    let with_key = pb::ExplainAccessRequest {
        key_id: "alias/anything".into(),
        ..explain(ADMIN)
    };
    let refused = admin
        .admin
        .clone()
        .explain_access(admin.admin_req(with_key, "ExplainAccess"))
        .await;
    assert_eq!(reason(refused), "ValidationException");
    drop(c);
    server.shutdown().await.unwrap();
}

/// A store's device dying under load on another store neither fails nor holds up the other
/// store's requests: 4 clients encrypt and decrypt on the default store and on store a without
/// pause while store s's device (behind the fault shim) goes dead; every one of their requests
/// succeeds, and store s goes FAILED by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_store_never_fails_requests_on_another_store() {
    let Some((faults, s)) = shim().await else {
        return;
    };
    let a = cluster("isolation", "a", &softhsm(), true);
    let dir = data_dir("cks-isolation");
    let server = start_with_clusters(&dir, &[a.clone(), s.clone()]).await;
    let mut c = admin(server.addr).await;
    let store_a = create_store(&mut c, "a", &a).await.unwrap();
    let store_s = create_store(&mut c, "s", &s).await.unwrap();
    assert_eq!(connect(&mut c, &store_a).await.0, "CONNECTED");
    assert_eq!(connect(&mut c, &store_s).await.0, "CONNECTED");
    let keys = [
        create_key(&mut c).await,
        create_store_key(&mut c, &store_a).await.unwrap().key_id,
    ];
    let doomed = create_store_key(&mut c, &store_s).await.unwrap().key_id;
    assert!(encrypt_with(&mut c, &doomed, b"x", &[]).await.is_ok());

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..4 {
        let (mut c, key, stop) = (c.clone(), keys[i % 2].clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut done, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && done < 5_000 {
                let round = async {
                    let blob = encrypt_with(&mut c, &key, b"load", &[]).await?;
                    decrypt_with(&mut c, &blob, &[]).await
                };
                match round.await {
                    Ok(p) if p == b"load" => done += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (done, failed)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    faults.set("dead");
    let failed_state = eventually(&mut c, &store_s, "FAILED").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for task in load {
        let (done, failed) = task.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests on a healthy store failed: {failed:?}"
        );
        total += done;
    }
    assert_eq!(failed_state, ("FAILED".into(), "NETWORK_ERRORS".into()));
    assert!(total > 0);
    assert_eq!(
        reason(encrypt_with(&mut c, &doomed, b"x", &[]).await),
        "KMSInvalidStateException"
    );
    // Health and metrics show each store: the failed one is NOT_SERVING on its own name, the
    // daemon stays SERVING.
    let status_of = |store: Option<&str>| {
        let service = store.map(p11kms::server::key_store_health_service);
        let addr = server.addr;
        async move {
            let mut h = health_client(addr).await;
            let request = tonic_health::pb::HealthCheckRequest {
                service: service.unwrap_or_default(),
            };
            h.check(request).await.map(|r| r.into_inner().status)
        }
    };
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    assert!(wait_for(async || status_of(Some(&store_s)).await.ok() == Some(not_serving)).await);
    assert_eq!(status_of(Some(&store_a)).await.unwrap(), serving);
    assert_eq!(status_of(None).await.unwrap(), serving);
    let metrics = scrape(server.metrics_addr.unwrap()).await;
    for (store, state) in [(&store_s, "FAILED"), (&store_a, "CONNECTED")] {
        let line =
            format!("p11kms_custom_key_store_state{{store=\"{store}\",state=\"{state}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let calls = format!("p11kms_custom_key_store_hsm_calls_total{{store=\"{store_a}\"}}");
    assert!(metrics.contains(&calls), "{calls}");
    // The daemon goes before the shim is handed to the next test: its store on the shim's
    // token must not still be reconnecting then.
    drop(c);
    server.shutdown().await.unwrap();
    drop(faults);
}

/// Every refusal of the store operations and of CreateKey in a store, on the gRPC door, with
/// AWS's exception names (the AWS door's run of the same is the boto3 script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_error_on_the_grpc_door() {
    let a = cluster("errors", "a", &softhsm(), true);
    let related = ClusterFixture {
        id: "cluster-relatedabcde".into(),
        token: "cks-absent-related".into(),
        ..a.clone()
    };
    let mut fillers: Vec<ClusterFixture> = (0..10)
        .map(|i| cluster("errors", &format!("f{i}"), &softhsm(), false))
        .collect();
    let mut all = vec![a.clone(), related.clone()];
    all.append(&mut fillers.clone());
    let dir = data_dir("cks-errors");
    let server = start_with_clusters(&dir, &all).await;
    let mut c = admin(server.addr).await;
    let e = |r: Result<String, tonic::Status>| reason(r);

    let unconfigured = ClusterFixture {
        id: "cluster-notconfigured".into(),
        ..a.clone()
    };
    assert_eq!(
        e(create_store(&mut c, "x", &unconfigured).await),
        "CloudHsmClusterNotFoundException"
    );
    let wrong_anchor = ClusterFixture {
        anchor_pem: fillers[0].anchor_pem.clone(),
        ..a.clone()
    };
    assert_eq!(
        e(create_store(&mut c, "x", &wrong_anchor).await),
        "IncorrectTrustAnchorException"
    );
    let short = ClusterFixture {
        password: "abc".into(),
        ..a.clone()
    };
    let refused = create_store(&mut c, "x", &short).await.unwrap_err();
    assert_eq!(aws_reason(&refused).as_deref(), Some("ValidationException"));
    assert!(!refused.message().contains("abc"), "{}", refused.message());

    let store = create_store(&mut c, "a", &a).await.unwrap();
    assert_eq!(
        e(create_store(&mut c, "again", &a).await),
        "CloudHsmClusterInUseException"
    );
    assert_eq!(
        e(create_store(&mut c, "a", &related).await),
        "CustomKeyStoreNameInUseException"
    );
    let last = fillers.pop().unwrap();
    for (i, f) in fillers.iter().enumerate() {
        create_store(&mut c, &format!("filler-{i}"), f)
            .await
            .unwrap();
    }
    // 1 + 9 stores: the account's quota of 10 is reached.
    assert_eq!(
        e(create_store(&mut c, "eleventh", &last).await),
        "LimitExceededException"
    );

    let update = |cluster: &str| pb::UpdateCustomKeyStoreRequest {
        custom_key_store_id: store.clone(),
        cloud_hsm_cluster_id: cluster.into(),
        ..Default::default()
    };
    let in_use = c.update_custom_key_store(update(&fillers[0].id)).await;
    assert_eq!(reason(in_use), "CloudHsmClusterInUseException");
    let unrelated = c.update_custom_key_store(update(&last.id)).await;
    assert_eq!(reason(unrelated), "CloudHsmClusterNotRelatedException");
    c.update_custom_key_store(update(&related.id))
        .await
        .expect("a related cluster");
    c.update_custom_key_store(update(&a.id))
        .await
        .expect("and back");

    assert_eq!(connect(&mut c, &store).await.0, "CONNECTED");
    let rsa = c
        .create_key(pb::CreateKeyRequest {
            origin: "AWS_CLOUDHSM".into(),
            custom_key_store_id: store.clone(),
            key_spec: "RSA_2048".into(),
            key_usage: "SIGN_VERIFY".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(rsa), "UnsupportedOperationException");
    let key = create_store_key(&mut c, &store).await.unwrap().key_id;
    assert_eq!(
        reason(try_enable_rotation(&mut c, &key, None).await),
        "UnsupportedOperationException"
    );
    assert_eq!(
        reason(
            c.update_custom_key_store(pb::UpdateCustomKeyStoreRequest {
                custom_key_store_id: store.clone(),
                key_store_password: "another-password".into(),
                ..Default::default()
            })
            .await
        ),
        "CustomKeyStoreInvalidStateException"
    );
    let delete = pb::DeleteCustomKeyStoreRequest {
        custom_key_store_id: store.clone(),
    };
    assert_eq!(
        reason(c.delete_custom_key_store(delete.clone()).await),
        "CustomKeyStoreInvalidStateException"
    );
    disconnect(&mut c, &store).await.unwrap();
    assert_eq!(
        reason(disconnect(&mut c, &store).await),
        "CustomKeyStoreInvalidStateException"
    );
    assert_eq!(
        reason(create_store_key(&mut c, &store).await),
        "CustomKeyStoreInvalidStateException"
    );
    let random = pb::GenerateRandomRequest {
        number_of_bytes: Some(8),
        custom_key_store_id: store.clone(),
    };
    assert_eq!(
        reason(c.generate_random(random).await),
        "CustomKeyStoreInvalidStateException"
    );
    assert_eq!(
        reason(c.delete_custom_key_store(delete).await),
        "CustomKeyStoreHasCMKsException"
    );
    let unknown = pb::DescribeCustomKeyStoresRequest {
        custom_key_store_name: "no-such-store".into(),
        ..Default::default()
    };
    assert_eq!(
        reason(c.describe_custom_key_stores(unknown).await),
        "CustomKeyStoreNotFoundException"
    );
    drop(c);
    server.shutdown().await.unwrap();
}
