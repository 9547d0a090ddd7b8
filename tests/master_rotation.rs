//! Master-key rotation of wrapped residency (issue 19) against the real daemon, a real
//! SoftHSM2 token (this binary's own: a second trusted master must not reach the other
//! wrapped tests) and the real SQLite store: keys under master v1, the SO ceremony for v2,
//! the lead's rewrap duty in bounded rounds while a client keeps decrypting; every old
//! ciphertext, signature and MAC still verifies, no blob is left under v1, a cold restart
//! serves from the rewrapped blobs, `p11kms check` reports v1 as retired, and the
//! operator's `p11kms hsm destroy-master` removes it (and only it).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use p11kms::pb;

/// The SO ceremony for master `version`, in its own process.
fn trust_master(config: &Path, version: u32) -> String {
    let out = p11kms_command()
        .args([
            "hsm",
            "trust-master",
            "--version",
            &version.to_string(),
            "--config",
        ])
        .arg(config)
        .env("P11KMS_SO_PIN", SO_PIN)
        .output()
        .unwrap();
    assert_succeeded(&out, "trust-master");
    code_and_output(&out).1
}

/// `p11kms hsm destroy-master --version <version>`: exit code and output.
fn destroy_master(config: &Path, version: u32) -> (i32, String) {
    let out = p11kms_command()
        .args([
            "hsm",
            "destroy-master",
            "--version",
            &version.to_string(),
            "--config",
        ])
        .arg(config)
        .output()
        .unwrap();
    code_and_output(&out)
}

/// What the keys made under v1 produced, to be checked after the rotation.
struct Made {
    ciphertexts: Vec<(Vec<u8>, Vec<u8>)>,
    signer: String,
    signature: Vec<u8>,
    mac_key: String,
    mac: Vec<u8>,
}

async fn make_under_v1(c: &mut Client) -> Made {
    let mut ciphertexts = Vec::new();
    for i in 0..10u8 {
        let key = create_key(c).await;
        let ct = encrypt_with(c, &key, &[i; 16], &[]).await.unwrap();
        ciphertexts.push((ct, vec![i; 16]));
    }
    let signer = create_key_from(c, key_request("ECC_NIST_P256", "SIGN_VERIFY")).await;
    let signature = c
        .sign(pb::SignRequest {
            key_id: signer.clone(),
            message: b"signed under v1".to_vec(),
            message_type: "RAW".into(),
            signing_algorithm: "ECDSA_SHA_256".into(),
            grant_tokens: vec![],
            dry_run: false,
        })
        .await
        .reply()
        .signature;
    let mac_key = create_key_from(c, key_request("HMAC_256", "GENERATE_VERIFY_MAC")).await;
    let mac = hmac_sha256(c, &mac_key, b"m").await;
    Made {
        ciphertexts,
        signer,
        signature,
        mac_key,
        mac,
    }
}

/// Every ciphertext decrypts, the signature and the MAC verify (on the device).
async fn still_usable(c: &mut Client, m: &Made) {
    for (ct, pt) in &m.ciphertexts {
        assert_eq!(&decrypt_with(c, ct, &[]).await.unwrap(), pt);
    }
    let v = c
        .verify(pb::VerifyRequest {
            key_id: m.signer.clone(),
            message: b"signed under v1".to_vec(),
            message_type: "RAW".into(),
            signature: m.signature.clone(),
            signing_algorithm: "ECDSA_SHA_256".into(),
            grant_tokens: vec![],
            dry_run: false,
        })
        .await
        .reply();
    assert!(v.signature_valid);
    let v = c
        .verify_mac(pb::VerifyMacRequest {
            message: b"m".to_vec(),
            key_id: m.mac_key.clone(),
            mac_algorithm: "HMAC_SHA_256".into(),
            mac: m.mac.clone(),
            grant_tokens: vec![],
            dry_run: false,
        })
        .await
        .reply();
    assert!(v.mac_valid);
}

/// Decrypts every ciphertext over and over (at least once) until `stop`; the failures.
async fn decrypt_until(
    mut c: Client,
    cts: Vec<(Vec<u8>, Vec<u8>)>,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut failed = 0;
    loop {
        for (ct, pt) in &cts {
            if decrypt_with(&mut c, ct, &[]).await.ok().as_ref() != Some(pt) {
                failed += 1;
            }
        }
        if stop.load(Ordering::Acquire) {
            return failed;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_rotation_rewraps_every_blob_online() {
    let dir = data_dir("master-rotation");
    let config = wrapped_config(&dir);
    let server = start_from(&config).await;
    trust_master(&config, 1);
    let mut c = admin(server.addr).await;
    let made = make_under_v1(&mut c).await;
    let store = server.kms.store().clone();
    assert_eq!(
        store
            .blobs_under_master_in(None, 1, 100)
            .await
            .unwrap()
            .len(),
        12
    );

    let text = trust_master(&config, 2);
    assert!(text.contains("p11kms/master/v2: made, trusted"), "{text}");
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(decrypt_until(
        admin(server.addr).await,
        made.ciphertexts.clone(),
        stop.clone(),
    ));
    // Bounded rounds of 5, as the lead runs them; at most 3 rounds for 12 blobs.
    let (mut rounds, mut rewrapped) = (0, 0);
    while !store
        .blobs_under_master_in(None, 1, 1)
        .await
        .unwrap()
        .is_empty()
    {
        rounds += 1;
        assert!(rounds <= 3, "the duty makes no progress");
        let actions = server.kms.rewrap_round(5).await.unwrap();
        assert!(
            actions.len() <= 5,
            "a round exceeded its batch: {actions:?}"
        );
        for a in &actions {
            assert_eq!(a.event_name.as_str(), "RewrapKeyMaterial");
            assert!(a.succeeded(), "{a:?}");
        }
        rewrapped += actions.len();
    }
    assert_eq!((rounds, rewrapped), (3, 12), "12 blobs in rounds of 5");
    assert!(server.kms.rewrap_round(5).await.unwrap().is_empty());
    stop.store(true, Ordering::Release);
    assert_eq!(
        load.await.unwrap(),
        0,
        "requests failed during the rotation"
    );
    assert_eq!(
        store
            .blobs_under_master_in(None, 2, 100)
            .await
            .unwrap()
            .len(),
        12
    );
    let pair = store.get_key(&made.signer).await.unwrap().unwrap();
    let blob = pair.versions[0].wrapped.clone().unwrap();
    assert_eq!(blob.master, 2);
    assert!(
        blob.public_key.is_some(),
        "a pair's public key survives its rewrap"
    );
    still_usable(&mut c, &made).await;
    let fresh = create_key(&mut c).await;
    let fresh = store.get_key(&fresh).await.unwrap().unwrap();
    assert_eq!(fresh.versions[0].wrapped.as_ref().unwrap().master, 2);
    drop(c);
    server.shutdown().await.unwrap();

    // A cold start serves from the rewrapped blobs; check reports v1 as retired.
    let server = start_from(&config).await;
    let mut c = admin(server.addr).await;
    still_usable(&mut c, &made).await;
    drop(c);
    server.shutdown().await.unwrap();
    let (code, out) = run_check(&config).await;
    assert_eq!(code, 0, "{out}");
    for line in [
        "master key v1: trusted, retired",
        "master key v2: trusted; 13 wrapped versions",
    ] {
        assert!(out.contains(line), "no '{line}' in:\n{out}");
    }

    // The operator destroys the retired master; the newest, or one not there, is refused.
    for (version, why) in [
        (2, "not older than the newest trusted master"),
        (7, "is not on the token"),
    ] {
        let (code, out) = destroy_master(&config, version);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains(why), "{out}");
    }
    let (code, out) = destroy_master(&config, 1);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("master key p11kms/master/v1: destroyed"),
        "{out}"
    );
    let (code, out) = run_check(&config).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("master key v1"), "{out}");
    assert!(
        out.contains("master key v2: trusted; 13 wrapped versions"),
        "{out}"
    );
}
