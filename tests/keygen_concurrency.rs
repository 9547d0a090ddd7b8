//! Slow key-pair generation must not stall other tenants' traffic: while RSA-4096 key pairs
//! are generated (CreateKey, GetParametersForImport, GenerateDataKeyPair; seconds each on
//! SoftHSM2), Encrypt and Decrypt calls on a symmetric key keep succeeding. Before the fix
//! every key-pair job held the HSM's exclusive lock for the whole generation, and calls queued
//! behind it for longer than `acquire_timeout` (2 s) failed with DependencyTimeoutException.
//! Another tenant creating symmetric keys meanwhile (short exclusive jobs) must not bring the
//! stall back either.
//! The test asserts on errors, not on timings.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use p11kms::pb;

/// Encrypt + Decrypt in a loop until `stop`; every failure is recorded as its AWS reason.
async fn traffic(
    mut c: Client,
    key: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut errors = Vec::new();
    let context = ctx(&[("tenant", "other")]);
    while !stop.load(Ordering::Relaxed) {
        let r = c
            .encrypt(pb::EncryptRequest {
                key_id: key.clone(),
                plaintext: b"other tenant's traffic".to_vec(),
                encryption_context: context.clone(),
                ..Default::default()
            })
            .await;
        let blob = match r {
            Ok(r) => r.into_inner().ciphertext_blob,
            Err(s) => {
                errors.push(format!("Encrypt: {}", reason::<()>(Err(s))));
                continue;
            }
        };
        let r = c
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: blob,
                encryption_context: context.clone(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => assert_eq!(r.into_inner().plaintext, b"other tenant's traffic"),
            Err(s) => errors.push(format!("Decrypt: {}", reason::<()>(Err(s)))),
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rsa_4096_key_generation_does_not_stall_other_traffic() {
    let (_dir, server, mut c) = start_admin("keygen_concurrency").await;
    let symmetric = create_key(&mut c).await;
    let external = create_external_key(&mut c).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let client = admin(server.addr).await;
        loops.push(tokio::spawn(traffic(
            client,
            symmetric.clone(),
            stop.clone(),
            done.clone(),
        )));
    }

    // Another tenant creates symmetric keys meanwhile (each a short exclusive HSM job).
    let creator = {
        let mut c = admin(server.addr).await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut made, mut errors) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match c.create_key(pb::CreateKeyRequest::default()).await {
                    Ok(_) => made += 1,
                    Err(s) => errors.push(format!("CreateKey: {}", reason::<()>(Err(s)))),
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            (made, errors)
        })
    };

    // Two tenants create RSA-4096 keys at the same moment (the daemon lets at most
    // workers - 1 generations run at once, so one worker stays free for traffic).
    let create = |usage: &'static str| {
        let addr = server.addr;
        async move {
            let mut c = admin(addr).await;
            let m = c
                .create_key(key_request("RSA_4096", usage))
                .await
                .unwrap_or_else(|e| panic!("CreateKey RSA_4096 {usage}: {e}"))
                .into_inner()
                .key_metadata
                .unwrap();
            assert_eq!(m.key_state, "Enabled");
            // The pair is usable at once: its public key is on the token.
            let pk = c
                .get_public_key(pb::GetPublicKeyRequest {
                    key_id: m.key_id.clone(),
                    ..Default::default()
                })
                .await
                .expect("GetPublicKey")
                .into_inner();
            assert!(pk.public_key.len() > 500, "an RSA-4096 SPKI");
        }
    };
    tokio::join!(create("SIGN_VERIFY"), create("ENCRYPT_DECRYPT"));
    let p = c
        .get_parameters_for_import(pb::GetParametersForImportRequest {
            key_id: external.clone(),
            wrapping_algorithm: "RSAES_OAEP_SHA_1".into(),
            wrapping_key_spec: "RSA_4096".into(),
        })
        .await
        .expect("GetParametersForImport RSA_4096")
        .into_inner();
    assert!(p.public_key.len() > 500 && !p.import_token.is_empty());
    let pair = c
        .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
            key_id: symmetric.clone(),
            key_pair_spec: "RSA_4096".into(),
            encryption_context: ctx(&[("tenant", "slow")]),
            grant_tokens: vec![],
            dry_run: false,
        })
        .await
        .expect("GenerateDataKeyPair RSA_4096")
        .into_inner();
    assert!(!pair.private_key_ciphertext_blob.is_empty());

    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for l in loops {
        errors.extend(l.await.unwrap());
    }
    let (made, create_errors) = creator.await.unwrap();
    errors.extend(create_errors);
    let n = done.load(Ordering::Relaxed);
    eprintln!(
        "{n} Encrypt+Decrypt round trips and {made} symmetric CreateKey during the key-pair \
         generations, {} errors",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "other tenants' calls failed while key pairs were generated ({} errors of {n} round trips): {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert!(n > 10, "the traffic loops ran ({n} round trips)");
    assert!(made > 0, "the other tenant created keys ({made})");
    server.shutdown().await.unwrap();
}
