//! Wrapped residency for custom key stores (issue 19, item 1: a residency per key store), on
//! real SoftHSM2 tokens and the real SQLite store: a store on a `[[hsm.cluster]] residency =
//! "wrapped"` cluster connects with an untrusted master and refuses CreateKey until the
//! security officer's ceremony runs on the cluster's token (`p11kms hsm trust-master
//! --cluster`, its own process, the store password from a file); its keys are blobs, not
//! token objects; a disconnected store's keys are unavailable, and a reconnect and a restart
//! with a cold cache serve them from their blobs; a store on a token-residency cluster still
//! makes token objects; and master-key rotation on the cluster's token rewraps that store's
//! blobs (only while it is connected) and leaves the default token's blobs alone; a wrapped
//! key deleted while its store is disconnected leaves no orphan (a token key does).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::stores::{cluster, cluster_sections, softhsm, ClusterFixture};
use common::*;
use p11kms::core::ManualClock;
use p11kms::hsm::{Hsm, ObjectId};
use p11kms::pb;
use p11kms::server::RunningServer;
use p11kms::store::KeyBundle;

/// A daemon config on `dir`: the default store in wrapped residency, cluster `wrapped` with
/// `residency = "wrapped"` and cluster `token` with the default residency.
fn write_config_file(dir: &Path, wrapped: &ClusterFixture, token: &ClusterFixture) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let text = config_text(dir).replace("[hsm]\n", "[hsm]\nresidency = \"wrapped\"\n")
        + &cluster_sections(std::slice::from_ref(wrapped))
        + "residency = \"wrapped\"\n"
        + &cluster_sections(std::slice::from_ref(token));
    let path = dir.join("p11kms.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `p11kms hsm trust-master` as the security officer runs it: its own process, the SO PIN
/// from the environment, `args` after the config.
fn trust_master(config: &Path, args: &[&str]) -> std::process::Output {
    p11kms_command()
        .args(["hsm", "trust-master", "--config"])
        .arg(config)
        .args(args)
        .env("P11KMS_SO_PIN", SO_PIN)
        .output()
        .unwrap()
}

/// `p11kms hsm destroy-master --version <v>` with `args` after the config: its exit code
/// and output.
fn destroy_master(config: &Path, v: &str, args: &[&str]) -> (i32, String) {
    let out = p11kms_command()
        .args(["hsm", "destroy-master", "--config"])
        .arg(config)
        .args(["--version", v])
        .args(args)
        .output()
        .unwrap();
    code_and_output(&out)
}

/// CreateCustomKeyStore of `cluster`.
async fn create_store(c: &mut Client, name: &str, cluster: &ClusterFixture) -> String {
    c.create_custom_key_store(pb::CreateCustomKeyStoreRequest {
        custom_key_store_name: name.into(),
        cloud_hsm_cluster_id: cluster.id.clone(),
        trust_anchor_certificate: cluster.anchor_pem.clone(),
        key_store_password: cluster.password.clone(),
        ..Default::default()
    })
    .await
    .expect("create the store")
    .into_inner()
    .custom_key_store_id
}

/// DisconnectCustomKeyStore.
async fn disconnect(c: &mut Client, id: &str) {
    c.disconnect_custom_key_store(pb::DisconnectCustomKeyStoreRequest {
        custom_key_store_id: id.into(),
    })
    .await
    .expect("disconnect");
}

/// CreateKey in store `id`.
async fn create_store_key(c: &mut Client, id: &str) -> Result<String, tonic::Status> {
    c.create_key(pb::CreateKeyRequest {
        origin: "AWS_CLOUDHSM".into(),
        custom_key_store_id: id.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().key_metadata.expect("metadata").key_id)
}

/// Store `id`'s device while it is connected.
fn device(server: &RunningServer, id: &str) -> Arc<Hsm> {
    let store = server.kms.key_stores().get(id).expect("the store");
    store.connected_hsm().expect("the store is connected")
}

/// The token objects (not session objects) on a device.
async fn token_objects(device: &Hsm) -> usize {
    let all = device.list_objects().await.unwrap();
    all.iter().filter(|o| o.token).count()
}

/// The object id of version 1 of `key_id`.
fn version_one(key_id: &str) -> ObjectId {
    let uuid = uuid::Uuid::parse_str(key_id).unwrap();
    ObjectId::new(*uuid.as_bytes(), 1)
}

/// The stored key `key_id` with its versions.
async fn stored(server: &RunningServer, key_id: &str) -> KeyBundle {
    let got = server.kms.store().get_key(key_id).await.unwrap();
    got.expect("the key is stored")
}

/// The master version of the blob of `key_id`'s version 1 (`None`: no blob).
async fn blob_master(server: &RunningServer, key_id: &str) -> Option<u32> {
    let bundle = stored(server, key_id).await;
    bundle.versions[0].wrapped.as_ref().map(|b| b.master)
}

/// How many blobs of store `store` (`None`: the default store) master `v` wraps.
async fn blobs_under(server: &RunningServer, store: Option<&str>, v: u32) -> usize {
    let rows = server.kms.store().blobs_under_master_in(store, v, 1000);
    rows.await.unwrap().len()
}

/// The full life of a wrapped cluster's store; see the module header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapped_cluster_store_keeps_its_keys_as_blobs_on_its_own_masters() {
    let w = cluster("cres", "w", &softhsm(), true);
    let t = cluster("cres", "t", &softhsm(), true);
    let dir = data_dir("cres-life");
    let config = write_config_file(&dir, &w, &t);
    let password_file = dir.join("w-password");
    write_secret(&password_file, &w.password);
    let password = password_file.to_str().unwrap();
    let server = start_config_swept_by_hand(&config, Arc::default()).await;
    let mut c = admin(server.addr).await;

    // The default token's own ceremony (the default store is wrapped too).
    assert_succeeded(&trust_master(&config, &[]), "trust-master (default)");
    let sw = create_store(&mut c, "wrapped-store", &w).await;
    let st = create_store(&mut c, "token-store", &t).await;
    // An untrusted master connects the store; its CreateKey fails as the default store's.
    assert_eq!(connect(&mut c, &sw).await.0, "CONNECTED");
    assert_eq!(connect(&mut c, &st).await.0, "CONNECTED");
    assert_refused(
        create_store_key(&mut c, &sw).await,
        "no trusted master on the cluster",
        "KMSInternalException",
        "trust ceremony",
    );
    let listed = c.list_keys(pb::ListKeysRequest::default()).await.unwrap();
    assert!(
        listed.into_inner().keys.is_empty(),
        "a refused CreateKey left a key"
    );

    // The ceremony on the cluster's token: a wrong store password fails (and is not echoed).
    let wrong_file = dir.join("wrong-password");
    write_secret(&wrong_file, "not-the-password");
    let wrong = trust_master(
        &config,
        &[
            "--cluster",
            &w.id,
            "--password-file",
            wrong_file.to_str().unwrap(),
        ],
    );
    assert!(
        !wrong.status.success(),
        "a wrong store password was accepted"
    );
    assert!(!code_and_output(&wrong).1.contains("not-the-password"));
    let done = trust_master(&config, &["--cluster", &w.id, "--password-file", password]);
    assert_succeeded(&done, "trust-master --cluster");
    let want = format!(
        "p11kms/master/v1 of cluster {}: replaced by a trusted one",
        w.id
    );
    assert!(code_and_output(&done).1.contains(&want), "{done:?}");

    // Keys in the wrapped store are blobs: the cluster token's object count stays.
    let device_w = device(&server, &sw);
    let before = token_objects(&device_w).await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(
            create_store_key(&mut c, &sw)
                .await
                .expect("key in the store"),
        );
    }
    assert_eq!(
        token_objects(&device_w).await,
        before,
        "a key made a token object"
    );
    for k in &keys {
        assert!(!device_w.exists(version_one(k)).await.unwrap());
        assert_eq!(
            blob_master(&server, k).await,
            Some(1),
            "the row has the blob"
        );
    }
    let ciphertext = encrypt_with(&mut c, &keys[0], b"in the wrapped store", &[])
        .await
        .expect("encrypt");
    let plain = decrypt_with(&mut c, &ciphertext, &[])
        .await
        .expect("decrypt");
    assert_eq!(plain, b"in the wrapped store");

    // A store on a token-residency cluster still makes token objects.
    let kt = create_store_key(&mut c, &st)
        .await
        .expect("key in the token store");
    assert!(device(&server, &st).exists(version_one(&kt)).await.unwrap());
    assert_eq!(blob_master(&server, &kt).await, None);
    // The default store's key: a blob under the default token's v1.
    let kd = create_key(&mut c).await;
    assert_eq!(blob_master(&server, &kd).await, Some(1));

    // Disconnected: the store's keys are unavailable; reconnected: they decrypt again.
    disconnect(&mut c, &sw).await;
    assert_refused(
        decrypt_with(&mut c, &ciphertext, &[]).await,
        "a disconnected store's key cannot decrypt",
        "KMSInvalidStateException",
        "unavailable",
    );
    assert_eq!(connect(&mut c, &sw).await.0, "CONNECTED");
    let plain = decrypt_with(&mut c, &ciphertext, &[])
        .await
        .expect("after reconnect");
    assert_eq!(plain, b"in the wrapped store");

    // A restart with the store disconnected: its blobs load with its keys; connected, the
    // store's new device (a cold cache) unwraps them.
    disconnect(&mut c, &sw).await;
    drop(c);
    server.shutdown().await.unwrap();
    let clock = Arc::new(ManualClock::default());
    let server = start_config_swept_by_hand(&config, clock.clone()).await;
    let mut c = admin(server.addr).await;
    assert_eq!(settled(&mut c, &sw).await.0, "DISCONNECTED");
    assert_eq!(
        describe_key(&mut c, &keys[0]).await.key_state,
        "Unavailable"
    );
    assert_eq!(connect(&mut c, &sw).await.0, "CONNECTED");
    let plain = decrypt_with(&mut c, &ciphertext, &[])
        .await
        .expect("after restart");
    assert_eq!(plain, b"in the wrapped store");
    let device_w = device(&server, &sw);
    assert!(
        device_w.stats().wrapped_cache_misses >= 1,
        "not unwrapped from its blob"
    );

    // Master rotation on the cluster's token: v2 there is not v2 of the default token.
    let v2 = trust_master(
        &config,
        &[
            "--cluster",
            &w.id,
            "--version",
            "2",
            "--password-file",
            password,
        ],
    );
    assert_succeeded(&v2, "trust-master --cluster --version 2");
    // The cluster's v1 still wraps the store's blobs: it cannot be destroyed yet.
    let cluster_args = ["--cluster", w.id.as_str(), "--password-file", password];
    let (code, text) = destroy_master(&config, "1", &cluster_args);
    assert_ne!(
        code, 0,
        "a master still wrapping blobs was destroyed: {text}"
    );
    assert!(text.contains("still wrapped"), "{text}");
    // A disconnected store is skipped; it is rewrapped once connected.
    disconnect(&mut c, &sw).await;
    server.kms.rewrap_round(256).await.unwrap();
    assert_eq!(
        blobs_under(&server, Some(&sw), 1).await,
        3,
        "rewrapped while disconnected"
    );
    assert_eq!(connect(&mut c, &sw).await.0, "CONNECTED");
    // The reconnected device knows v2: new keys are wrapped under it.
    let newer = create_store_key(&mut c, &sw).await.expect("key under v2");
    assert_eq!(blob_master(&server, &newer).await, Some(2));
    let rewrapped = server.kms.rewrap_round(256).await.unwrap();
    assert_eq!(rewrapped.len(), 3, "{rewrapped:?}");
    assert!(rewrapped.iter().all(|a| a.error.is_none()), "{rewrapped:?}");
    assert_eq!(blobs_under(&server, Some(&sw), 1).await, 0);
    assert_eq!(blobs_under(&server, Some(&sw), 2).await, 4);
    for k in &keys {
        assert_eq!(blob_master(&server, k).await, Some(2));
    }
    let plain = decrypt_with(&mut c, &ciphertext, &[])
        .await
        .expect("after rewrap");
    assert_eq!(plain, b"in the wrapped store");
    // The default store's blob stays under the default token's v1, its newest.
    assert_eq!(blob_master(&server, &kd).await, Some(1));
    assert_eq!(blobs_under(&server, None, 1).await, 1);
    let again = server.kms.rewrap_round(256).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    // Retired on the cluster only: the cluster's v1 goes; the default token's v1, its
    // newest, is refused.
    let (code, text) = destroy_master(&config, "1", &cluster_args);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("of cluster {}: destroyed", w.id)),
        "{text}"
    );
    let (code, text) = destroy_master(&config, "1", &[]);
    assert_ne!(
        code, 0,
        "the default token's newest master was destroyed: {text}"
    );
    assert_eq!(blob_master(&server, &kd).await, Some(1));
    let plain = decrypt_with(&mut c, &ciphertext, &[])
        .await
        .expect("after the cluster's v1 is destroyed");
    assert_eq!(plain, b"in the wrapped store");

    // Deleted while their stores are disconnected: the token store's key leaves its object
    // on the cluster token (an orphan); the wrapped store's leaves nothing (its blob goes
    // with its rows).
    schedule_deletion(&mut c, &keys[1], 7).await;
    schedule_deletion(&mut c, &kt, 7).await;
    disconnect(&mut c, &sw).await;
    disconnect(&mut c, &st).await;
    clock.advance_days(8);
    server.kms.sweep_deletions().await.unwrap();
    let orphans = server.kms.store().list_orphans().await.unwrap();
    let orphaned: Vec<&str> = orphans.iter().map(|o| o.key_id.as_str()).collect();
    assert_eq!(orphaned, [kt.as_str()]);
    assert_eq!(
        reason(try_describe(&mut c, &keys[1]).await),
        "NotFoundException"
    );
    assert_eq!(blobs_under(&server, Some(&sw), 2).await, 3);
    drop(c);
    server.shutdown().await.unwrap();
}

/// The cluster ceremony's arguments: the store password only from a file or a variable and
/// only with --cluster, a cluster the config names; each refused before any token is
/// touched, with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ceremony_refuses_bad_arguments() {
    let x = cluster("cres-cli", "x", &softhsm(), false);
    let y = cluster("cres-cli", "y", &softhsm(), false);
    let dir = data_dir("cres-cli");
    let config = write_config_file(&dir, &x, &y);
    let file = dir.join("pw");
    write_secret(&file, "pw");
    let file = file.to_str().unwrap();
    let refused = |args: &[&str], what: &str| {
        let out = trust_master(&config, args);
        let (code, text) = code_and_output(&out);
        assert_ne!(code, 0, "{args:?} accepted");
        assert!(text.contains(what), "{args:?}: {text}");
    };
    refused(&["--cluster", &x.id], "--password-file or --password-env");
    refused(&["--password-file", file], "go with --cluster");
    refused(
        &["--cluster", "cluster-abcdefghijk", "--password-file", file],
        "no [[hsm.cluster]] has this id",
    );
    refused(
        &[
            "--cluster",
            &x.id,
            "--password-env",
            "P11KMS_TEST_UNSET_STORE_PASSWORD",
        ],
        "P11KMS_TEST_UNSET_STORE_PASSWORD",
    );
    // A cluster whose token is not there: the ceremony fails on the device, not silently.
    refused(&["--cluster", &x.id, "--password-file", file], "");
}
