//! Residency migration (issue 19, item 8) against the real daemon, a real SoftHSM2 token, the
//! real SQLite store, the gRPC AdminService and the real `p11kms key-store
//! migrate-residency` command: keys made in wrapped residency move to token objects (the
//! blobs leave the rows) and back (the token objects go), and every ciphertext and MAC of
//! both eras still verifies; a key born in token residency is skipped with its reason and
//! keeps working; key pairs stay; a denied caller, a target other than the configured
//! residency and a custom key store are refused.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use p11kms::hsm::{ObjectId, TokenMove, WrappedBlob};
use p11kms::pb;
use p11kms::server::RunningServer;
use p11kms::store::StoredBlob;

const EC: &[(&str, &str)] = &[("app", "migrate")];

/// The security officer's ceremony, as an operator runs it: its own process.
fn trust_master(config: &Path) -> std::process::Output {
    p11kms_command()
        .args(["hsm", "trust-master", "--config"])
        .arg(config)
        .env("P11KMS_SO_PIN", SO_PIN)
        .output()
        .unwrap()
}

/// This binary's token gets its trusted master once: a first wrapped start makes the
/// untrusted one, the ceremony (a separate process) replaces it (the pattern of
/// tests/wrapped_residency.rs, on this binary's own token).
async fn trusted_token() {
    static TRUSTED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    TRUSTED
        .get_or_init(|| async {
            let config = wrapped_config(&data_dir("migrate-ceremony"));
            let server = start_from(&config).await;
            // Before the ceremony nothing can be wrapped: the call says what to run.
            let mut a = admin_service(server.addr, "admin").await;
            let r = a.migrate_residency(migrate_request(pb::Residency::Wrapped));
            let says = "`p11kms hsm trust-master`";
            assert_refused(
                r.await,
                "no trusted master",
                "KMSInvalidStateException",
                says,
            );
            let done = trust_master(&config);
            assert_succeeded(&done, "trust-master");
            server.shutdown().await.unwrap();
        })
        .await;
}

/// `p11kms key-store migrate-residency --to <to> --batch 2` as admin: exit code and output.
async fn migrate_cli(server: &RunningServer, to: &str) -> (i32, String) {
    let mut command = p11kms_command();
    command
        .args(["key-store", "migrate-residency", "--to", to, "--batch", "2"])
        .args(cli_connection(server.addr.port(), "admin"));
    tokio::task::spawn_blocking(move || code_and_output(&command.output().expect("run p11kms")))
        .await
        .unwrap()
}

/// [`migrate_cli`] while another client decrypts every ciphertext of `sealed` over and over
/// (at least once after the command ended): no request may fail during the migration.
async fn migrate_under_load(
    server: &RunningServer,
    to: &str,
    sealed: &[(String, Vec<u8>, Vec<u8>)],
) -> (i32, String) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut c = admin(server.addr).await;
    let (stop, work) = (done.clone(), sealed.to_vec());
    let load = tokio::spawn(async move {
        let mut failures = Vec::new();
        loop {
            let last = stop.load(std::sync::atomic::Ordering::SeqCst);
            for (key, pt, blob) in &work {
                match decrypt_with(&mut c, blob, EC).await {
                    Ok(out) if out == *pt => {}
                    other => failures.push(format!("{key}: {other:?}")),
                }
            }
            if last {
                return failures;
            }
        }
    });
    let out = migrate_cli(server, to).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let failures = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "requests failed during the migration: {failures:?}"
    );
    out
}

fn migrate_request(to: pb::Residency) -> pb::MigrateResidencyRequest {
    pb::MigrateResidencyRequest {
        to: to as i32,
        limit: Some(10),
        ..Default::default()
    }
}

/// Whether each version of `key` has a blob in its stored row, by version.
async fn blobs_in_rows(server: &RunningServer, key: &str) -> Vec<bool> {
    let bundle = server.kms.store().get_key(key).await.unwrap().unwrap();
    bundle
        .versions
        .iter()
        .map(|v| v.wrapped.is_some())
        .collect()
}

/// The versions of `key` that are token objects on the token.
async fn token_versions(server: &RunningServer, key: &str) -> Vec<u32> {
    let mut v: Vec<u32> = key_objects(server, key)
        .await
        .into_iter()
        .filter(|(_, token)| *token)
        .map(|(v, _)| v)
        .collect();
    v.sort();
    v
}

async fn verify_mac(c: &mut Client, key: &str, message: &[u8], mac: &[u8]) -> bool {
    c.verify_mac(pb::VerifyMacRequest {
        message: message.to_vec(),
        key_id: key.into(),
        mac_algorithm: "HMAC_SHA_256".into(),
        mac: mac.to_vec(),
        ..Default::default()
    })
    .await
    .reply()
    .mac_valid
}

async fn encrypt(c: &mut Client, key: &str, pt: &[u8]) -> Vec<u8> {
    encrypt_with(c, key, pt, EC).await.expect("encrypt")
}

/// Every ciphertext (key, plaintext, blob) decrypts to its plaintext.
async fn all_decrypt(c: &mut Client, sealed: &[(String, Vec<u8>, Vec<u8>)]) {
    for (key, pt, blob) in sealed {
        let out = decrypt_with(c, blob, EC).await;
        assert_eq!(out.expect("decrypt").as_slice(), pt.as_slice(), "{key}");
    }
}

/// The stored blob of version 1 of `key`.
async fn stored_blob(server: &RunningServer, key: &str) -> Arc<WrappedBlob> {
    let bundle = server.kms.store().get_key(key).await.unwrap().unwrap();
    let stored = bundle.versions[0].wrapped.clone().expect("a blob");
    Arc::new(WrappedBlob::from_bytes(&stored.bytes).unwrap())
}

fn uuid(key: &str) -> [u8; 16] {
    *uuid::Uuid::parse_str(key).unwrap().as_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_keys_move_to_the_token_and_back_and_every_ciphertext_decrypts() {
    trusted_token().await;
    let dir = data_dir("migrate");
    let server = start_from(&wrapped_config(&dir)).await;
    let mut c = admin(server.addr).await;
    let aes = create_key(&mut c).await;
    let rotated = create_key(&mut c).await;
    let mut sealed = vec![(
        rotated.clone(),
        b"v1".to_vec(),
        encrypt(&mut c, &rotated, b"v1").await,
    )];
    c.rotate_key_on_demand(pb::RotateKeyOnDemandRequest {
        key_id: rotated.clone(),
    })
    .await
    .reply();
    let hmac = create_key_from(&mut c, key_request("HMAC_256", "GENERATE_VERIFY_MAC")).await;
    let pair = create_key_from(&mut c, key_request("ECC_NIST_P256", "SIGN_VERIFY")).await;
    for key in [&aes, &rotated] {
        sealed.push((
            key.clone(),
            b"era 1".to_vec(),
            encrypt(&mut c, key, b"era 1").await,
        ));
    }
    let mac = hmac_sha256(&mut c, &hmac, b"era 1").await;
    assert_eq!(blobs_in_rows(&server, &rotated).await, [true, true]);
    drop(c);
    server.shutdown().await.unwrap();

    // Token residency: the CLI moves every secret key; the pair stays (exit code 1).
    let server = start_from(&write_config(&dir)).await;
    let mut c = admin(server.addr).await;
    // A run interrupted after the HMAC key's token object was made: both copies exist.
    let id = ObjectId::new(uuid(&hmac), 1);
    let hsm = server.kms.hsm();
    hsm.wrapped_to_token(id, stored_blob(&server, &hmac).await)
        .await
        .unwrap();
    assert_eq!(token_versions(&server, &hmac).await, [1]);
    assert!(verify_mac(&mut c, &hmac, b"era 1", &mac).await);
    let (code, out) = migrate_under_load(&server, "token", &sealed).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("skipped {pair}: KEY_PAIR")), "{out}");
    assert!(out.contains("(3 in all)"), "{out}");
    for key in [&aes, &rotated, &hmac] {
        assert!(
            blobs_in_rows(&server, key).await.iter().all(|b| !b),
            "{key}"
        );
    }
    assert_eq!(blobs_in_rows(&server, &pair).await, [true]);
    assert_eq!(token_versions(&server, &rotated).await, [1, 2]);
    assert_eq!(token_versions(&server, &hmac).await, [1]);
    for (key, v) in [(&aes, 1), (&rotated, 2), (&hmac, 1)] {
        let id = ObjectId::new(uuid(key), v);
        let a = hsm.key_attributes(id).await.unwrap();
        assert!(
            a.token && a.private && a.sensitive && !a.never_extractable,
            "{a:?}"
        );
        assert!(
            hsm.try_read_value(id).await.is_err(),
            "{key}: value readable"
        );
    }
    all_decrypt(&mut c, &sealed).await;
    assert!(verify_mac(&mut c, &hmac, b"era 1", &mac).await);
    for key in [&aes, &rotated] {
        sealed.push((
            key.clone(),
            b"era 2".to_vec(),
            encrypt(&mut c, key, b"era 2").await,
        ));
    }
    let mac2 = hmac_sha256(&mut c, &hmac, b"era 2").await;
    let born = create_key(&mut c).await;
    sealed.push((
        born.clone(),
        b"born".to_vec(),
        encrypt(&mut c, &born, b"born").await,
    ));
    // A run to wrapped interrupted after the AES key's blob was stored: both copies exist.
    let id = ObjectId::new(uuid(&aes), 1);
    let TokenMove::Wrapped(blob) = hsm.token_to_wrapped(id).await.unwrap() else {
        panic!("a key that came from a blob moves back");
    };
    let stored = StoredBlob {
        master: blob.master().0,
        bytes: blob.to_bytes(),
        public_key: None,
    };
    let store = server.kms.store();
    let row = store.get_key(&aes).await.unwrap().unwrap().key;
    store
        .set_version_blob(&row, 1, None, Some(&stored))
        .await
        .unwrap();
    drop(c);
    server.shutdown().await.unwrap();

    // Wrapped again: the token objects go, the blobs come back; the token-born key stays.
    let server = start_from(&wrapped_config(&dir)).await;
    let mut c = admin(server.addr).await;
    assert_eq!(token_versions(&server, &aes).await, [1]);
    all_decrypt(&mut c, &sealed).await;
    let (code, out) = migrate_under_load(&server, "wrapped", &sealed).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("destroyed 1 token object(s)"), "{out}");
    assert!(
        out.contains(&format!("skipped {born}: NEVER_EXTRACTABLE")),
        "{out}"
    );
    assert!(!out.contains(&pair), "the pair is wrapped already: {out}");
    assert!(out.contains("(2 in all)"), "{out}");
    for key in [&aes, &rotated, &hmac] {
        assert!(
            blobs_in_rows(&server, key).await.iter().all(|b| *b),
            "{key}"
        );
        assert!(token_versions(&server, key).await.is_empty(), "{key}");
    }
    assert_eq!(blobs_in_rows(&server, &born).await, [false]);
    assert_eq!(token_versions(&server, &born).await, [1]);
    all_decrypt(&mut c, &sealed).await;
    assert!(verify_mac(&mut c, &hmac, b"era 1", &mac).await);
    assert!(verify_mac(&mut c, &hmac, b"era 2", &mac2).await);

    // A rerun moves nothing and reports the same keys.
    let (code, out) = migrate_cli(&server, "wrapped").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("(0 in all)"), "{out}");
    assert!(
        out.contains(&format!("skipped {born}: NEVER_EXTRACTABLE")),
        "{out}"
    );
    drop(c);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_are_refused_and_change_nothing() {
    trusted_token().await;
    let dir = data_dir("migrate-refused");
    let server = start_from(&wrapped_config(&dir)).await;
    let mut c = admin(server.addr).await;
    let key = create_key(&mut c).await;

    let mut denied = admin_service(server.addr, "user2").await;
    let r = denied
        .migrate_residency(migrate_request(pb::Residency::Token))
        .await;
    assert_refused(
        r,
        "user2 has no p11kms:MigrateResidency",
        "AccessDeniedException",
        "p11kms:MigrateResidency",
    );

    let mut a = admin_service(server.addr, "admin").await;
    let r = a
        .migrate_residency(migrate_request(pb::Residency::Token))
        .await;
    assert_refused(
        r,
        "the daemon is configured wrapped",
        "ValidationException",
        "residency = \"token\"",
    );
    let r = a
        .migrate_residency(migrate_request(pb::Residency::Unspecified))
        .await;
    assert_refused(r, "no target", "ValidationException", "TOKEN or WRAPPED");
    let r = a
        .migrate_residency(pb::MigrateResidencyRequest {
            limit: Some(0),
            ..migrate_request(pb::Residency::Wrapped)
        })
        .await;
    assert_refused(r, "limit 0", "ValidationException", "between 1 and 1000");
    let r = a
        .migrate_residency(pb::MigrateResidencyRequest {
            custom_key_store_id: "cks-1234567890abcdef0".into(),
            ..migrate_request(pb::Residency::Wrapped)
        })
        .await;
    assert_refused(
        r,
        "a custom key store",
        "UnsupportedOperationException",
        "default key store",
    );
    assert_eq!(
        blobs_in_rows(&server, &key).await,
        [true],
        "a refused call changed a row"
    );

    // The CLI says the same and exits 1.
    let (code, out) = migrate_cli(&server, "token").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ValidationException"), "{out}");

    // Nothing to move: the call answers at once with nothing remaining.
    let done = a
        .migrate_residency(migrate_request(pb::Residency::Wrapped))
        .await
        .reply();
    assert!(
        done.moved_key_ids.is_empty() && done.skipped.is_empty(),
        "{done:?}"
    );
    assert_eq!(done.remaining, 0);
    drop(c);
    server.shutdown().await.unwrap();

    // Every call is audited, refused or not, with what it moved.
    let trail = events(&dir);
    let ours: Vec<_> = trail
        .iter()
        .filter(|e| e["eventName"] == "MigrateResidency")
        .collect();
    let denied = ours
        .iter()
        .find(|e| e["errorCode"] == "AccessDeniedException")
        .expect("the denied call is audited");
    assert_eq!(denied["requestParameters"]["to"], "TOKEN", "{denied}");
    let answered = ours
        .iter()
        .find(|e| e["errorCode"].is_null())
        .expect("the answered call is audited");
    assert_eq!(answered["responseElements"]["moved"], 0, "{answered}");
    assert_eq!(answered["responseElements"]["remaining"], 0, "{answered}");
}
