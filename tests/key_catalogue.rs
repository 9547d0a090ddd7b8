//! The key catalogue end to end (issue 7, items 1-3): asymmetric and HMAC keys generated on the
//! real SoftHSM2 token through the real daemon, used through our gRPC client and the AWS JSON
//! door (boto3), and checked by an independent implementation (pyca/cryptography, i.e.
//! OpenSSL) in tests/python/key_catalogue_checks.py: every signing algorithm of every spec in
//! RAW and DIGEST form, public keys, RSA-OAEP both ways, data key pairs, HMAC, custody
//! attributes read from the token, deletion of both halves of a key pair, reconciliation, and
//! bad input.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use p11kms::core::ManualClock;
use p11kms::hsm::ObjectId;
use p11kms::pb;
use p11kms::server::{RunningServer, ServerOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

const AK_ADMIN: &str = "AKIAADMIN00000000001";

/// A daemon with both doors, on a manual clock with a fast sweeper.
async fn start_both(name: &str, clock: Arc<ManualClock>) -> (RunningServer, PathBuf, String) {
    let dir = data_dir(name);
    let (server, endpoint) = start_aws_door(
        &dir,
        ServerOptions {
            clock,
            sweep_interval: Some(Duration::from_millis(50)),
        },
    )
    .await;
    (server, dir, endpoint)
}

fn venv_python() -> PathBuf {
    let p = manifest_dir().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "the Python venv is missing at {}: run scripts/python-venv.sh",
        p.display()
    );
    p
}

/// Runs the checks script with the venv's Python and fixture admin credentials (for boto3).
async fn python(dir: &Path, endpoint: &str, args: Vec<String>) {
    let mut c = aws_client_command(venv_python(), dir, AK_ADMIN, endpoint);
    c.arg(manifest_dir().join("tests/python/key_catalogue_checks.py"))
        .args(&args)
        .env(
            "P11KMS_FIXTURE_CREDENTIALS",
            fixtures_dir().join("credentials.json"),
        );
    run_ok(c, &format!("key_catalogue_checks.py {args:?}")).await;
}

async fn create(c: &mut Client, spec: &str, usage: &str) -> pb::KeyMetadata {
    c.create_key(key_request(spec, usage))
        .await
        .unwrap_or_else(|e| panic!("CreateKey {spec} {usage}: {e}"))
        .into_inner()
        .key_metadata
        .unwrap()
}

fn digest(algorithm: &str, m: &[u8]) -> Vec<u8> {
    match &algorithm[algorithm.len() - 3..] {
        "384" => Sha384::digest(m).to_vec(),
        "512" => Sha512::digest(m).to_vec(),
        _ => Sha256::digest(m).to_vec(),
    }
}

fn sign_req(key: &str, msg: &[u8], mtype: &str, alg: &str) -> pb::SignRequest {
    pb::SignRequest {
        key_id: key.into(),
        message: msg.to_vec(),
        message_type: mtype.into(),
        signing_algorithm: alg.into(),
        grant_tokens: vec![],
        dry_run: false,
    }
}

fn verify_req(key: &str, msg: &[u8], mtype: &str, sig: &[u8], alg: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        key_id: key.into(),
        message: msg.to_vec(),
        message_type: mtype.into(),
        signature: sig.to_vec(),
        signing_algorithm: alg.into(),
        grant_tokens: vec![],
        dry_run: false,
    }
}

fn object(key_id: &str) -> ObjectId {
    ObjectId::new(*uuid::Uuid::parse_str(key_id).unwrap().as_bytes(), 1)
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

const SIGNING_SPECS: &[&str] = &[
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_end_to_end() {
    let clock = Arc::new(ManualClock::default());
    let (server, dir, endpoint) = start_both("catalogue", clock.clone()).await;
    let mut c = admin(server.addr).await;
    let hsm = server.kms.hsm().clone();

    // ---- CreateKey for every spec, timed.
    let mut signing = Vec::new();
    for spec in SIGNING_SPECS {
        let t = Instant::now();
        let m = create(&mut c, spec, "SIGN_VERIFY").await;
        eprintln!("CreateKey {spec} SIGN_VERIFY: {:?}", t.elapsed());
        assert_eq!(m.key_spec, *spec);
        assert_eq!(m.customer_master_key_spec, *spec);
        assert_eq!(m.key_usage, "SIGN_VERIFY");
        assert!(m.encryption_algorithms.is_empty() && m.mac_algorithms.is_empty());
        let expected: Vec<&str> = match *spec {
            "ECC_NIST_P256" | "ECC_SECG_P256K1" => vec!["ECDSA_SHA_256"],
            "ECC_NIST_P384" => vec!["ECDSA_SHA_384"],
            "ECC_NIST_P521" => vec!["ECDSA_SHA_512"],
            _ => vec![
                "RSASSA_PSS_SHA_256",
                "RSASSA_PSS_SHA_384",
                "RSASSA_PSS_SHA_512",
                "RSASSA_PKCS1_V1_5_SHA_256",
                "RSASSA_PKCS1_V1_5_SHA_384",
                "RSASSA_PKCS1_V1_5_SHA_512",
            ],
        };
        assert_eq!(m.signing_algorithms, expected, "{spec}");
        signing.push(m);
    }
    let mut encrypting = Vec::new();
    for spec in ["RSA_2048", "RSA_3072", "RSA_4096"] {
        let t = Instant::now();
        let m = create(&mut c, spec, "ENCRYPT_DECRYPT").await;
        eprintln!("CreateKey {spec} ENCRYPT_DECRYPT: {:?}", t.elapsed());
        assert_eq!(
            m.encryption_algorithms,
            vec!["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
        );
        assert!(m.signing_algorithms.is_empty());
        encrypting.push(m);
    }
    let mut macs = Vec::new();
    for (spec, alg, len) in [
        ("HMAC_224", "HMAC_SHA_224", 28),
        ("HMAC_256", "HMAC_SHA_256", 32),
        ("HMAC_384", "HMAC_SHA_384", 48),
        ("HMAC_512", "HMAC_SHA_512", 64),
    ] {
        let m = create(&mut c, spec, "GENERATE_VERIFY_MAC").await;
        assert_eq!(m.mac_algorithms, vec![alg]);
        assert!(m.encryption_algorithms.is_empty() && m.signing_algorithms.is_empty());
        macs.push((m, alg, len));
    }
    let symmetric = create(&mut c, "", "").await;
    assert_eq!(symmetric.encryption_algorithms, vec!["SYMMETRIC_DEFAULT"]);
    // DescribeKey shows the same lists.
    let d = c
        .describe_key(pb::DescribeKeyRequest {
            key_id: signing[0].key_id.clone(),
            grant_tokens: vec![],
        })
        .await
        .reply()
        .key_metadata
        .unwrap();
    assert_eq!(d.signing_algorithms, signing[0].signing_algorithms);

    // ---- Custody: every private key and HMAC key as the token reports it.
    for m in signing.iter().chain(encrypting.iter()) {
        let a = hsm
            .key_pair_attributes(object(&m.key_id), true)
            .await
            .unwrap();
        assert!(
            a.token && a.private && a.sensitive && a.always_sensitive,
            "{}: {a:?}",
            m.key_spec
        );
        assert!(
            !a.extractable && a.never_extractable,
            "{}: {a:?}",
            m.key_spec
        );
        let signs = m.key_usage == "SIGN_VERIFY";
        assert_eq!(
            (a.sign, a.decrypt),
            (signs, !signs),
            "{}: {a:?}",
            m.key_spec
        );
        assert!(!a.unwrap && !a.derive && !a.encrypt && !a.wrap);
        assert!(!a.allowed_mechanisms.is_empty());
        let p = hsm
            .key_pair_attributes(object(&m.key_id), false)
            .await
            .unwrap();
        assert_eq!(
            (p.verify, p.encrypt),
            (signs, !signs),
            "{}: {p:?}",
            m.key_spec
        );
        assert!(p.token && !p.wrap && !p.derive);
    }
    for (m, _, _) in &macs {
        let a = hsm.key_attributes(object(&m.key_id)).await.unwrap();
        assert!(a.token && a.private && a.sensitive && !a.extractable && a.never_extractable);
        assert!(a.sign && a.verify && !a.encrypt && !a.decrypt && !a.wrap && !a.unwrap);
        assert_eq!(a.allowed_mechanisms.len(), 1);
        assert!(
            hsm.try_read_value(object(&m.key_id)).await.is_err(),
            "HMAC key value readable"
        );
    }

    // ---- Sign and Verify: every algorithm of every spec, RAW and DIGEST.
    let mut public_keys = Vec::new();
    let mut signatures = Vec::new();
    let message = b"the key catalogue: sign me".to_vec();
    for m in &signing {
        let pk = c
            .get_public_key(pb::GetPublicKeyRequest {
                key_id: m.key_id.clone(),
                grant_tokens: vec![],
            })
            .await
            .reply();
        assert_eq!(pk.key_spec, m.key_spec);
        assert_eq!(pk.key_usage, "SIGN_VERIFY");
        assert_eq!(pk.signing_algorithms, m.signing_algorithms);
        assert_eq!(pk.key_id, m.arn);
        public_keys
            .push(json!({"key_id": m.key_id, "spec": m.key_spec, "spki": b64(&pk.public_key)}));
        for alg in &m.signing_algorithms {
            for mtype in ["RAW", "DIGEST"] {
                let msg = if mtype == "RAW" {
                    message.clone()
                } else {
                    digest(alg, &message)
                };
                let t = Instant::now();
                let s = c
                    .sign(sign_req(&m.key_id, &msg, mtype, alg))
                    .await
                    .unwrap_or_else(|e| panic!("Sign {} {alg} {mtype}: {e}", m.key_spec))
                    .into_inner();
                let took = t.elapsed();
                assert_eq!(&s.signing_algorithm, alg);
                assert_eq!(s.key_id, m.arn);
                if alg.starts_with("ECDSA") {
                    assert_eq!(s.signature[0], 0x30, "ECDSA signatures are DER");
                }
                if mtype == "RAW" {
                    eprintln!("Sign {} {alg}: {took:?}", m.key_spec);
                }
                let v = c
                    .verify(verify_req(&m.key_id, &msg, mtype, &s.signature, alg))
                    .await
                    .unwrap_or_else(|e| panic!("Verify {} {alg} {mtype}: {e}", m.key_spec))
                    .into_inner();
                assert!(v.signature_valid);
                let mut other = msg.clone();
                other[0] ^= 1;
                assert_eq!(
                    reason(
                        c.verify(verify_req(&m.key_id, &other, mtype, &s.signature, alg))
                            .await
                    ),
                    "KMSInvalidSignatureException",
                    "{} {alg} {mtype}",
                    m.key_spec
                );
                // A RAW signature verifies as the DIGEST of the same message and back.
                if mtype == "RAW" {
                    c.verify(verify_req(
                        &m.key_id,
                        &digest(alg, &message),
                        "DIGEST",
                        &s.signature,
                        alg,
                    ))
                    .await
                    .unwrap();
                }
                signatures.push(json!({
                    "key_id": m.key_id, "spec": m.key_spec, "algorithm": alg,
                    "message_type": mtype, "message": b64(&msg), "signature": b64(&s.signature),
                }));
            }
        }
    }
    // A corrupted signature (not just another message) is refused too.
    let ec_key = &signing[3];
    let s = c
        .sign(sign_req(&ec_key.key_id, b"x", "RAW", "ECDSA_SHA_256"))
        .await
        .reply();
    let mut bad = s.signature.clone();
    bad[5] ^= 0x40;
    assert_eq!(
        reason(
            c.verify(verify_req(
                &ec_key.key_id,
                b"x",
                "RAW",
                &bad,
                "ECDSA_SHA_256"
            ))
            .await
        ),
        "KMSInvalidSignatureException"
    );
    assert_eq!(
        reason(
            c.verify(verify_req(
                &ec_key.key_id,
                b"x",
                "RAW",
                b"not DER",
                "ECDSA_SHA_256"
            ))
            .await
        ),
        "KMSInvalidSignatureException"
    );

    // ---- RSA-OAEP: p11kms both ways, limits, and the public key's ciphertexts (below).
    let mut rsa_encryption = Vec::new();
    for m in &encrypting {
        let bits: usize = m.key_spec[4..].parse().unwrap();
        let pk = c
            .get_public_key(pb::GetPublicKeyRequest {
                key_id: m.key_id.clone(),
                grant_tokens: vec![],
            })
            .await
            .reply();
        assert_eq!(
            pk.encryption_algorithms,
            vec!["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
        );
        assert!(pk.signing_algorithms.is_empty());
        public_keys
            .push(json!({"key_id": m.key_id, "spec": m.key_spec, "spki": b64(&pk.public_key)}));
        // The OpenSSL CLI encrypts with the public key (as AWS documents); p11kms decrypts.
        for (alg, md) in [
            ("RSAES_OAEP_SHA_1", "sha1"),
            ("RSAES_OAEP_SHA_256", "sha256"),
        ] {
            let pt = format!("openssl {md} to {}", m.key_spec).into_bytes();
            let d = c
                .decrypt(decrypt_request_alg(
                    &openssl_oaep_encrypt(&pk.public_key, md, &pt),
                    &m.key_id,
                    alg,
                ))
                .await
                .unwrap_or_else(|e| panic!("Decrypt of openssl {alg} {}: {e}", m.key_spec))
                .into_inner();
            assert_eq!(d.plaintext, pt, "{} {alg}", m.key_spec);
        }
        let mut ours = Vec::new();
        for (alg, hlen) in [("RSAES_OAEP_SHA_1", 20), ("RSAES_OAEP_SHA_256", 32)] {
            let max = bits / 8 - 2 * hlen - 2;
            for len in [1, max] {
                let pt = vec![0xa5u8; len];
                let e = c
                    .encrypt(encrypt_request_alg(&m.key_id, &pt, alg))
                    .await
                    .unwrap_or_else(|e| panic!("Encrypt {} {alg} {len}: {e}", m.key_spec))
                    .into_inner();
                assert_eq!(e.encryption_algorithm, alg);
                assert_eq!(e.ciphertext_blob.len(), bits / 8);
                let d = c
                    .decrypt(decrypt_request_alg(&e.ciphertext_blob, &m.key_id, alg))
                    .await
                    .reply();
                assert_eq!(d.plaintext, pt);
                assert_eq!(d.encryption_algorithm, alg);
                assert_eq!(d.key_id, m.arn);
                ours.push(b64(&e.ciphertext_blob));
                // The other OAEP hash does not open it.
                let other = if hlen == 20 {
                    "RSAES_OAEP_SHA_256"
                } else {
                    "RSAES_OAEP_SHA_1"
                };
                assert_eq!(
                    reason(
                        c.decrypt(decrypt_request_alg(&e.ciphertext_blob, &m.key_id, other))
                            .await
                    ),
                    "InvalidCiphertextException"
                );
            }
            assert_eq!(
                reason(
                    c.encrypt(encrypt_request_alg(&m.key_id, &vec![1; max + 1], alg))
                        .await
                ),
                "ValidationException",
                "{} {alg}: {} bytes",
                m.key_spec,
                max + 1
            );
        }
        rsa_encryption.push(json!({
            "key_id": m.key_id, "plaintext": b64(b"encrypted by OpenSSL"), "p11kms_ciphertexts": ours,
        }));
    }

    // ---- HMAC: lengths, VerifyMac, tampering.
    for (m, alg, len) in &macs {
        let g = c
            .generate_mac(pb::GenerateMacRequest {
                message: b"mac me".to_vec(),
                key_id: m.key_id.clone(),
                mac_algorithm: alg.to_string(),
                grant_tokens: vec![],
                dry_run: false,
            })
            .await
            .reply();
        assert_eq!(g.mac.len(), *len);
        assert_eq!(g.mac_algorithm, *alg);
        let again = c
            .generate_mac(pb::GenerateMacRequest {
                message: b"mac me".to_vec(),
                key_id: m.key_id.clone(),
                mac_algorithm: alg.to_string(),
                grant_tokens: vec![],
                dry_run: false,
            })
            .await
            .reply();
        assert_eq!(again.mac, g.mac, "HMAC is deterministic");
        let vm = |msg: &[u8], mac: &[u8]| pb::VerifyMacRequest {
            message: msg.to_vec(),
            key_id: m.key_id.clone(),
            mac_algorithm: alg.to_string(),
            mac: mac.to_vec(),
            grant_tokens: vec![],
            dry_run: false,
        };
        assert!(c.verify_mac(vm(b"mac me", &g.mac)).await.reply().mac_valid);
        let mut bad = g.mac.clone();
        bad[len - 1] ^= 1;
        assert_eq!(
            reason(c.verify_mac(vm(b"mac me", &bad)).await),
            "KMSInvalidMacException"
        );
        assert_eq!(
            reason(c.verify_mac(vm(b"mac me!", &g.mac)).await),
            "KMSInvalidMacException"
        );
        assert_eq!(
            reason(c.verify_mac(vm(b"mac me", &g.mac[..len - 1])).await),
            "KMSInvalidMacException"
        );
    }
    // Different HMAC keys give different MACs.
    let mac_of = |k: &str| pb::GenerateMacRequest {
        message: b"same".to_vec(),
        key_id: k.into(),
        mac_algorithm: "HMAC_SHA_256".into(),
        grant_tokens: vec![],
        dry_run: false,
    };
    let other256 = create(&mut c, "HMAC_256", "GENERATE_VERIFY_MAC").await;
    let a = c.generate_mac(mac_of(&macs[1].0.key_id)).await.reply().mac;
    let b = c.generate_mac(mac_of(&other256.key_id)).await.reply().mac;
    assert_ne!(a, b);

    // ---- Data key pairs under the symmetric key.
    let mut data_key_pairs = Vec::new();
    let ec_ctx = ctx(&[("purpose", "data-key-pair")]);
    for spec in [
        "RSA_2048",
        "RSA_3072",
        "RSA_4096",
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
        "ECC_NIST_EDWARDS25519",
    ] {
        let t = Instant::now();
        let out = c
            .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
                encryption_context: ec_ctx.clone(),
                key_id: symmetric.key_id.clone(),
                key_pair_spec: spec.into(),
                grant_tokens: vec![],
                dry_run: false,
            })
            .await
            .unwrap_or_else(|e| panic!("GenerateDataKeyPair {spec}: {e}"))
            .into_inner();
        eprintln!("GenerateDataKeyPair {spec}: {:?}", t.elapsed());
        assert_eq!(out.key_pair_spec, spec);
        assert_eq!(out.key_id, symmetric.arn);
        let d = c
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: out.private_key_ciphertext_blob.clone(),
                encryption_context: ec_ctx.clone(),
                ..Default::default()
            })
            .await
            .reply();
        assert_eq!(d.plaintext, out.private_key_plaintext, "{spec}");
        assert_eq!(
            reason(
                c.decrypt(decrypt_request(
                    &out.private_key_ciphertext_blob,
                    &[("purpose", "other")]
                ))
                .await
            ),
            "InvalidCiphertextException"
        );
        data_key_pairs.push(json!({
            "spec": spec, "pkcs8": b64(&out.private_key_plaintext), "spki": b64(&out.public_key),
        }));
    }
    let wp = c
        .generate_data_key_pair_without_plaintext(pb::GenerateDataKeyPairWithoutPlaintextRequest {
            encryption_context: ec_ctx.clone(),
            key_id: symmetric.key_id.clone(),
            key_pair_spec: "ECC_NIST_P384".into(),
            grant_tokens: vec![],
            dry_run: false,
        })
        .await
        .reply();
    let opened = c
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: wp.private_key_ciphertext_blob.clone(),
            encryption_context: ec_ctx.clone(),
            ..Default::default()
        })
        .await
        .reply();
    data_key_pairs.push(json!({
        "spec": "ECC_NIST_P384", "pkcs8": b64(&opened.plaintext), "spki": b64(&wp.public_key),
    }));
    // No data key pair object is left on the token.
    assert_eq!(
        labelled_objects(&hsm, |l| l == "p11kms/data-key-pair").await,
        0
    );

    // ---- The independent implementation.
    let input = dir.join("catalogue-in.json");
    let output = dir.join("catalogue-out.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&json!({
            "public_keys": public_keys, "signatures": signatures,
            "rsa_encryption": rsa_encryption, "data_key_pairs": data_key_pairs,
        }))
        .unwrap(),
    )
    .unwrap();
    python(
        &dir,
        &endpoint,
        vec![
            "local".into(),
            input.display().to_string(),
            output.display().to_string(),
        ],
    )
    .await;
    let out: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    let cts = out["ciphertexts"].as_array().unwrap();
    assert_eq!(cts.len(), 2 * encrypting.len());
    for ct in cts {
        let blob = B64.decode(ct["ciphertext"].as_str().unwrap()).unwrap();
        let d = c
            .decrypt(decrypt_request_alg(
                &blob,
                ct["key_id"].as_str().unwrap(),
                ct["algorithm"].as_str().unwrap(),
            ))
            .await
            .unwrap_or_else(|e| panic!("Decrypt of an OpenSSL ciphertext {ct}: {e}"))
            .into_inner();
        assert_eq!(d.plaintext, b"encrypted by OpenSSL");
        let mut bad = blob;
        bad[7] ^= 1;
        assert_eq!(
            reason(
                c.decrypt(decrypt_request_alg(
                    &bad,
                    ct["key_id"].as_str().unwrap(),
                    ct["algorithm"].as_str().unwrap()
                ))
                .await
            ),
            "InvalidCiphertextException"
        );
    }
    // The AWS JSON door, with boto3.
    python(
        &dir,
        &endpoint,
        vec![
            "boto3".into(),
            signing[3].key_id.clone(),
            signing[0].key_id.clone(),
        ],
    )
    .await;

    // ---- Reconciliation sees both halves and reports no drift for this daemon's keys (the
    // token is shared with the other test's daemon, whose keys it reports as orphans here).
    let ours: Vec<Vec<u8>> = signing
        .iter()
        .chain(&encrypting)
        .chain(macs.iter().map(|(m, _, _)| m))
        .map(|m| object(&m.key_id).as_bytes().to_vec())
        .collect();
    let no_drift = |report: &p11kms::core::reconcile::DriftReport| {
        assert!(report.missing_objects.is_empty(), "{report:?}");
        assert!(report.interrupted.is_empty(), "{report:?}");
        assert!(
            !report.orphan_objects.iter().any(|o| ours.contains(&o.id)),
            "{report:?}"
        );
    };
    no_drift(&server.kms.reconcile().await.unwrap());

    // ---- Deletion destroys both halves of a key pair and the HMAC object.
    let doomed = [&signing[3], &macs[0].0];
    for m in doomed {
        schedule_deletion(&mut c, &m.key_id, 7).await;
    }
    clock.advance_days(8);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids: Vec<Vec<u8>> = hsm
            .list_objects()
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect();
        let left = doomed
            .iter()
            .filter(|m| ids.contains(&object(&m.key_id).as_bytes().to_vec()))
            .count();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sweeper did not destroy the objects"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The sweeper removes the metadata right after the objects.
    loop {
        let r = reason(
            c.sign(sign_req(&signing[3].key_id, b"x", "RAW", "ECDSA_SHA_256"))
                .await,
        );
        if r == "NotFoundException" {
            break;
        }
        assert_eq!(r, "KMSInvalidStateException");
        assert!(Instant::now() < deadline, "the key was not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    no_drift(&server.kms.reconcile().await.unwrap());

    // ---- The audit trail: every new operation is recorded with safe parameters only.
    let sign_b64 = b64(&message);
    let wanted = [
        "Sign",
        "Verify",
        "GetPublicKey",
        "GenerateMac",
        "VerifyMac",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let evs = events(&dir);
        let all = wanted
            .iter()
            .all(|w| evs.iter().any(|e| e["eventName"] == *w));
        // boto3's Sign through the AWS door is among them.
        let door = evs
            .iter()
            .filter(|e| e["eventName"] == "Sign")
            .any(|e| e["requestParameters"]["signingAlgorithm"] == "RSASSA_PSS_SHA_256");
        if all && door {
            break evs;
        }
        assert!(Instant::now() < deadline, "audit events missing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for e in &events {
        let text = e.to_string();
        assert!(
            !text.contains(&sign_b64),
            "a message reached the audit trail: {text}"
        );
        assert!(
            !text.contains("c2lnbmVkIHRocm91Z2g"),
            "a boto3 message was logged: {text}"
        );
        let params = &e["requestParameters"];
        for secret in [
            "message",
            "signature",
            "mac",
            "plaintext",
            "privateKeyPlaintext",
        ] {
            assert!(params.get(secret).is_none(), "{secret} logged: {text}");
        }
    }
    let sign = events
        .iter()
        .find(|e| e["eventName"] == "Sign" && e["errorCode"].is_null())
        .unwrap();
    assert!(
        sign["requestParameters"]["signingAlgorithm"].is_string(),
        "{sign}"
    );
    assert!(
        sign["requestParameters"]["messageType"].is_string(),
        "{sign}"
    );
    let dkp = events
        .iter()
        .find(|e| e["eventName"] == "GenerateDataKeyPair")
        .unwrap();
    assert!(dkp["requestParameters"]["keyPairSpec"].is_string(), "{dkp}");
    drop((c, hsm));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_authorization() {
    let (server, _dir, _endpoint) =
        start_both("catalogue-bad", Arc::new(ManualClock::default())).await;
    let mut c = admin(server.addr).await;
    let ecc = create(&mut c, "ECC_NIST_P256", "SIGN_VERIFY").await;
    let rsa_sign = create(&mut c, "RSA_2048", "SIGN_VERIFY").await;
    let rsa_enc = create(&mut c, "RSA_2048", "ENCRYPT_DECRYPT").await;
    let hmac = create(&mut c, "HMAC_256", "GENERATE_VERIFY_MAC").await;
    let sym = create(&mut c, "", "").await;

    // CreateKey: usage must suit the spec; unknown and unsupported specs.
    for (spec, usage, want) in [
        ("ECC_NIST_P256", "ENCRYPT_DECRYPT", "ValidationException"),
        ("ECC_SECG_P256K1", "ENCRYPT_DECRYPT", "ValidationException"),
        ("HMAC_256", "SIGN_VERIFY", "ValidationException"),
        ("HMAC_256", "", "ValidationException"),
        ("RSA_2048", "GENERATE_VERIFY_MAC", "ValidationException"),
        ("SYMMETRIC_DEFAULT", "SIGN_VERIFY", "ValidationException"),
        ("RSA_1024", "SIGN_VERIFY", "ValidationException"),
        ("ML_DSA_44", "SIGN_VERIFY", "UnsupportedOperationException"),
        (
            "ECC_NIST_EDWARDS25519",
            "ENCRYPT_DECRYPT",
            "ValidationException",
        ),
    ] {
        let r = c.create_key(key_request(spec, usage)).await;
        assert_eq!(reason(r), want, "{spec} {usage}");
    }

    // Wrong algorithm for the spec, or wrong key usage.
    for (key, alg) in [
        (&ecc.key_id, "RSASSA_PSS_SHA_256"),
        (&ecc.key_id, "ECDSA_SHA_384"),
        (&rsa_sign.key_id, "ECDSA_SHA_256"),
        (&rsa_enc.key_id, "RSASSA_PSS_SHA_256"),
        (&sym.key_id, "ECDSA_SHA_256"),
        (&hmac.key_id, "ECDSA_SHA_256"),
    ] {
        assert_eq!(
            reason(c.sign(sign_req(key, b"m", "RAW", alg)).await),
            "InvalidKeyUsageException",
            "{key} {alg}"
        );
        assert_eq!(
            reason(c.verify(verify_req(key, b"m", "RAW", b"sig", alg)).await),
            "InvalidKeyUsageException",
            "{key} {alg}"
        );
    }
    assert_eq!(
        reason(
            c.encrypt(encrypt_request_alg(
                &rsa_sign.key_id,
                b"x",
                "RSAES_OAEP_SHA_256"
            ))
            .await
        ),
        "InvalidKeyUsageException"
    );
    assert_eq!(
        reason(
            c.encrypt(encrypt_request_alg(&sym.key_id, b"x", "RSAES_OAEP_SHA_1"))
                .await
        ),
        "InvalidKeyUsageException"
    );
    assert_eq!(
        reason(c.encrypt(encrypt_request(&rsa_enc.key_id, b"x")).await),
        "InvalidKeyUsageException",
        "SYMMETRIC_DEFAULT on an RSA key"
    );
    assert_eq!(
        reason(
            c.generate_mac(pb::GenerateMacRequest {
                message: b"m".to_vec(),
                key_id: hmac.key_id.clone(),
                mac_algorithm: "HMAC_SHA_512".into(),
                grant_tokens: vec![],
                dry_run: false,
            })
            .await
        ),
        "InvalidKeyUsageException"
    );
    assert_eq!(
        reason(
            c.generate_mac(pb::GenerateMacRequest {
                message: b"m".to_vec(),
                key_id: sym.key_id.clone(),
                mac_algorithm: "HMAC_SHA_256".into(),
                grant_tokens: vec![],
                dry_run: false,
            })
            .await
        ),
        "InvalidKeyUsageException"
    );
    assert_eq!(
        reason(
            c.generate_data_key_pair(pb::GenerateDataKeyPairRequest {
                key_id: ecc.key_id.clone(),
                key_pair_spec: "ECC_NIST_P256".into(),
                ..Default::default()
            })
            .await
        ),
        "InvalidKeyUsageException"
    );

    // Message sizes and DIGEST lengths.
    let d32 = Sha256::digest(b"m").to_vec();
    for (msg, mtype, alg) in [
        (vec![0u8; 4097], "RAW", "ECDSA_SHA_256"),
        (vec![], "RAW", "ECDSA_SHA_256"),
        (d32[..31].to_vec(), "DIGEST", "ECDSA_SHA_256"),
        (vec![0u8; 33], "DIGEST", "ECDSA_SHA_256"),
        (d32.clone(), "NOT_A_TYPE", "ECDSA_SHA_256"),
        (d32.clone(), "RAW", "NOT_AN_ALGORITHM"),
        (d32.clone(), "RAW", ""),
    ] {
        assert_eq!(
            reason(c.sign(sign_req(&ecc.key_id, &msg, mtype, alg)).await),
            "ValidationException",
            "{} bytes {mtype} {alg}",
            msg.len()
        );
    }
    assert_eq!(
        reason(
            c.sign(sign_req(
                &rsa_sign.key_id,
                &d32,
                "DIGEST",
                "RSASSA_PSS_SHA_512"
            ))
            .await
        ),
        "ValidationException"
    );
    // 4096 bytes RAW is fine.
    c.sign(sign_req(&ecc.key_id, &[7u8; 4096], "RAW", "ECDSA_SHA_256"))
        .await
        .unwrap();
    assert_eq!(
        reason(
            c.generate_mac(pb::GenerateMacRequest {
                message: vec![0; 4097],
                key_id: hmac.key_id.clone(),
                mac_algorithm: "HMAC_SHA_256".into(),
                grant_tokens: vec![],
                dry_run: false,
            })
            .await
        ),
        "ValidationException"
    );

    // Encryption context on asymmetric keys; Decrypt of RSA ciphertext needs the KeyId.
    assert_eq!(
        reason(
            c.encrypt(pb::EncryptRequest {
                key_id: rsa_enc.key_id.clone(),
                plaintext: b"x".to_vec(),
                encryption_context: ctx(&[("a", "b")]),
                encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
                ..Default::default()
            })
            .await
        ),
        "ValidationException"
    );
    let ct = c
        .encrypt(encrypt_request_alg(
            &rsa_enc.key_id,
            b"x",
            "RSAES_OAEP_SHA_256",
        ))
        .await
        .reply()
        .ciphertext_blob;
    for (key, ec) in [
        ("", ctx(&[])),
        (rsa_enc.key_id.as_str(), ctx(&[("a", "b")])),
    ] {
        assert_eq!(
            reason(
                c.decrypt(pb::DecryptRequest {
                    ciphertext_blob: ct.clone(),
                    key_id: key.into(),
                    encryption_context: ec,
                    encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
                    ..Default::default()
                })
                .await
            ),
            "ValidationException"
        );
    }
    assert_eq!(
        reason(
            c.decrypt(decrypt_request_alg(
                &ct[..100],
                &rsa_enc.key_id,
                "RSAES_OAEP_SHA_256"
            ))
            .await
        ),
        "InvalidCiphertextException"
    );

    // GetPublicKey is for asymmetric keys only.
    for key in [&sym.key_id, &hmac.key_id] {
        assert_eq!(
            reason(
                c.get_public_key(pb::GetPublicKeyRequest {
                    key_id: key.clone(),
                    grant_tokens: vec![],
                })
                .await
            ),
            "UnsupportedOperationException"
        );
    }
    // Data key pair specs.
    for (spec, want) in [
        ("RSA_1024", "ValidationException"),
        ("", "ValidationException"),
        ("ML_KEM_768", "UnsupportedOperationException"),
    ] {
        assert_eq!(
            reason(
                c.generate_data_key_pair(pb::GenerateDataKeyPairRequest {
                    key_id: sym.key_id.clone(),
                    key_pair_spec: spec.into(),
                    ..Default::default()
                })
                .await
            ),
            want,
            "{spec}"
        );
    }

    // Grants: operations must suit the key (kms-spec 1.5).
    let grant = |key: &str, ops: &[&str]| pb::CreateGrantRequest {
        key_id: key.into(),
        grantee_principal: "arn:aws:iam::111122223333:user/user1".into(),
        operations: ops.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    for (key, ops) in [
        (&ecc.key_id, &["Encrypt"][..]),
        (&ecc.key_id, &["GenerateMac"][..]),
        (&hmac.key_id, &["Sign"][..]),
        (&rsa_enc.key_id, &["Sign"][..]),
        (&sym.key_id, &["Sign"][..]),
    ] {
        assert_eq!(
            reason(c.create_grant(grant(key, ops)).await),
            "ValidationException",
            "{key} {ops:?}"
        );
    }
    c.create_grant(grant(&ecc.key_id, &["Sign", "Verify", "GetPublicKey"]))
        .await
        .unwrap();
    c.create_grant(grant(&hmac.key_id, &["GenerateMac", "VerifyMac"]))
        .await
        .unwrap();
    c.create_grant(grant(
        &rsa_enc.key_id,
        &["Encrypt", "Decrypt", "GetPublicKey"],
    ))
    .await
    .unwrap();

    // A caller without kms:Sign (user2: no KMS permissions; the key policy delegates to IAM)
    // is denied before any HSM call.
    let mut user2 = client_as(server.addr, Some("user2")).await;
    let ops = server.kms.hsm().total_ops();
    for r in [
        reason(
            user2
                .sign(sign_req(&ecc.key_id, b"m", "RAW", "ECDSA_SHA_256"))
                .await,
        ),
        reason(
            user2
                .get_public_key(pb::GetPublicKeyRequest {
                    key_id: ecc.key_id.clone(),
                    grant_tokens: vec![],
                })
                .await,
        ),
        reason(
            user2
                .generate_mac(pb::GenerateMacRequest {
                    message: b"m".to_vec(),
                    key_id: hmac.key_id.clone(),
                    mac_algorithm: "HMAC_SHA_256".into(),
                    grant_tokens: vec![],
                    dry_run: false,
                })
                .await,
        ),
        reason(
            user2
                .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
                    key_id: sym.key_id.clone(),
                    key_pair_spec: "ECC_NIST_P256".into(),
                    ..Default::default()
                })
                .await,
        ),
    ] {
        assert_eq!(r, "AccessDeniedException");
    }
    assert_eq!(
        server.kms.hsm().total_ops(),
        ops,
        "a denied request reached the HSM"
    );
    drop((c, user2));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_of_key_pairs() {
    use p11kms::core::InterruptCreate;
    let clock = Arc::new(ManualClock::default());
    let (server, _dir, _endpoint) = start_both("catalogue-drift", clock.clone()).await;
    let mut c = admin(server.addr).await;
    let hsm = server.kms.hsm().clone();

    // A key pair creation interrupted after the HSM objects exist: reported as interrupted
    // with its objects present (not as orphans).
    server
        .kms
        .hooks()
        .set_interrupt_create(InterruptCreate::AfterHsmObject);
    let r = c
        .create_key(key_request("ECC_NIST_P384", "SIGN_VERIFY"))
        .await;
    assert_eq!(reason(r), "KMSInternalException");
    server
        .kms
        .hooks()
        .set_interrupt_create(InterruptCreate::Never);
    let report = server.kms.reconcile().await.unwrap();
    assert_eq!(report.interrupted.len(), 1, "{report:?}");
    let interrupted = &report.interrupted[0];
    assert!(interrupted.hsm_object_present, "{report:?}");
    let id = object(&interrupted.key_id);
    assert!(!report.orphan_objects.iter().any(|o| o.id == id.as_bytes()));

    // A key pair whose objects vanished from the token is reported missing.
    let lost = create(&mut c, "ECC_NIST_P256", "SIGN_VERIFY").await;
    let kept = create(&mut c, "RSA_2048", "SIGN_VERIFY").await;
    hsm.destroy_key_pair(object(&lost.key_id)).await.unwrap();
    let report = server.kms.reconcile().await.unwrap();
    assert!(
        report.missing_objects.contains(&(lost.key_id.clone(), 1)),
        "{report:?}"
    );
    assert!(
        !report
            .missing_objects
            .iter()
            .any(|(k, _)| *k == kept.key_id),
        "{report:?}"
    );
    // Reconciliation may run while the daemon serves (at start-up it does): a key version made
    // after the token was listed is not judged. With the clock a minute before the lost key's
    // creation, the pass's listing comes before it.
    clock.advance_ms(-60_000);
    let report = server.kms.reconcile().await.unwrap();
    clock.advance_ms(60_000);
    let lost_reported = report
        .missing_objects
        .iter()
        .any(|(k, _)| *k == lost.key_id);
    assert!(!lost_reported, "{report:?}");
    // The lost key answers KeyUnavailable, never a wrong signature.
    assert_eq!(
        reason(
            c.sign(sign_req(&lost.key_id, b"m", "RAW", "ECDSA_SHA_256"))
                .await
        ),
        "KeyUnavailableException"
    );
    // The interrupted key's objects are cleaned up for the other tests sharing the token.
    hsm.destroy_key_pair(id).await.unwrap();
    drop((c, hsm));
    server.shutdown().await.unwrap();
}

/// ReEncrypt from and to RSA encryption keys (SourceEncryptionAlgorithm /
/// DestinationEncryptionAlgorithm), every direction, with the bad inputs and authorization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_encrypt_with_rsa_keys() {
    let server = start(&data_dir("catalogue-reencrypt")).await;
    let mut c = admin(server.addr).await;
    let a = create(&mut c, "RSA_2048", "ENCRYPT_DECRYPT").await;
    let b = create(&mut c, "RSA_3072", "ENCRYPT_DECRYPT").await;
    let sym = create(&mut c, "", "").await;
    let signer = create(&mut c, "RSA_2048", "SIGN_VERIFY").await;
    let ec = ctx(&[("purpose", "re-encrypt")]);
    let re =
        |blob: &[u8], src: Option<(&str, &str)>, dst: &str, dst_alg: &str| pb::ReEncryptRequest {
            ciphertext_blob: blob.to_vec(),
            source_key_id: src.map(|(k, _)| k.to_string()).unwrap_or_default(),
            source_encryption_algorithm: src.map(|(_, a)| a.to_string()).unwrap_or_default(),
            destination_key_id: dst.into(),
            destination_encryption_algorithm: dst_alg.into(),
            ..Default::default()
        };

    // RSA (SHA-256) -> symmetric, with a destination context.
    let from_a = c
        .encrypt(encrypt_request_alg(
            &a.key_id,
            b"rsa to aes",
            "RSAES_OAEP_SHA_256",
        ))
        .await
        .reply()
        .ciphertext_blob;
    let mut req = re(
        &from_a,
        Some((&a.key_id, "RSAES_OAEP_SHA_256")),
        &sym.key_id,
        "",
    );
    req.destination_encryption_context = ec.clone();
    let out = c.re_encrypt(req).await.reply();
    assert_eq!(out.source_key_id, a.arn);
    assert_eq!(out.key_id, sym.arn);
    assert_eq!(out.source_encryption_algorithm, "RSAES_OAEP_SHA_256");
    assert_eq!(out.destination_encryption_algorithm, "SYMMETRIC_DEFAULT");
    let d = c
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: out.ciphertext_blob.clone(),
            encryption_context: ec.clone(),
            ..Default::default()
        })
        .await
        .reply();
    assert_eq!(d.plaintext, b"rsa to aes");
    assert_eq!(d.key_id, sym.arn);

    // Symmetric (with its source context) -> RSA (SHA-1).
    let from_sym = c
        .encrypt(pb::EncryptRequest {
            key_id: sym.key_id.clone(),
            plaintext: b"aes to rsa".to_vec(),
            encryption_context: ec.clone(),
            ..Default::default()
        })
        .await
        .reply()
        .ciphertext_blob;
    let mut req = re(&from_sym, None, &b.key_id, "RSAES_OAEP_SHA_1");
    req.source_encryption_context = ec.clone();
    let out = c.re_encrypt(req).await.reply();
    assert_eq!(out.source_key_id, sym.arn);
    assert_eq!(out.key_id, b.arn);
    assert_eq!(out.ciphertext_blob.len(), 384, "an RSA-3072 ciphertext");
    assert_eq!(out.destination_encryption_algorithm, "RSAES_OAEP_SHA_1");
    let d = c
        .decrypt(decrypt_request_alg(
            &out.ciphertext_blob,
            &b.key_id,
            "RSAES_OAEP_SHA_1",
        ))
        .await
        .reply();
    assert_eq!(d.plaintext, b"aes to rsa");
    // Without the source context it does not open.
    assert_eq!(
        reason(
            c.re_encrypt(re(&from_sym, None, &b.key_id, "RSAES_OAEP_SHA_1"))
                .await
        ),
        "InvalidCiphertextException"
    );

    // RSA -> RSA (SHA-256 -> SHA-1), and onto the same key.
    for (dst, dst_alg) in [(&b, "RSAES_OAEP_SHA_1"), (&a, "RSAES_OAEP_SHA_256")] {
        let out = c
            .re_encrypt(re(
                &from_a,
                Some((&a.key_id, "RSAES_OAEP_SHA_256")),
                &dst.key_id,
                dst_alg,
            ))
            .await
            .unwrap_or_else(|e| panic!("to {}: {e}", dst.key_spec))
            .into_inner();
        assert_ne!(out.ciphertext_blob, from_a);
        let d = c
            .decrypt(decrypt_request_alg(
                &out.ciphertext_blob,
                &dst.key_id,
                dst_alg,
            ))
            .await
            .reply();
        assert_eq!(d.plaintext, b"rsa to aes");
    }

    // Bad inputs, each refused with AWS's exception name.
    let mut with_src_ctx = re(
        &from_a,
        Some((&a.key_id, "RSAES_OAEP_SHA_256")),
        &sym.key_id,
        "",
    );
    with_src_ctx.source_encryption_context = ec.clone();
    let mut with_dst_ctx = re(&from_sym, None, &b.key_id, "RSAES_OAEP_SHA_1");
    with_dst_ctx.source_encryption_context = ec.clone();
    with_dst_ctx.destination_encryption_context = ec.clone();
    let mut tampered = from_a.clone();
    tampered[10] ^= 1;
    let long = c
        .encrypt(encrypt_request(&sym.key_id, &[7; 300]))
        .await
        .reply()
        .ciphertext_blob;
    for (what, req, want) in [
        (
            "asymmetric source without SourceKeyId",
            re(&from_a, Some(("", "RSAES_OAEP_SHA_256")), &sym.key_id, ""),
            "ValidationException",
        ),
        (
            "source context with an asymmetric source",
            with_src_ctx,
            "ValidationException",
        ),
        (
            "destination context with an asymmetric destination",
            with_dst_ctx,
            "ValidationException",
        ),
        (
            "unknown destination algorithm",
            re(&from_sym, None, &b.key_id, "RSAES_PKCS1_V1_5"),
            "ValidationException",
        ),
        (
            "RSA algorithm on a symmetric source key",
            re(
                &from_a,
                Some((&sym.key_id, "RSAES_OAEP_SHA_256")),
                &b.key_id,
                "RSAES_OAEP_SHA_1",
            ),
            "InvalidKeyUsageException",
        ),
        (
            "RSA algorithm on a symmetric destination key",
            re(
                &from_a,
                Some((&a.key_id, "RSAES_OAEP_SHA_256")),
                &sym.key_id,
                "RSAES_OAEP_SHA_1",
            ),
            "InvalidKeyUsageException",
        ),
        (
            "RSA signing key as destination",
            re(
                &from_a,
                Some((&a.key_id, "RSAES_OAEP_SHA_256")),
                &signer.key_id,
                "RSAES_OAEP_SHA_1",
            ),
            "InvalidKeyUsageException",
        ),
        (
            "RSA destination without its algorithm",
            re(
                &from_a,
                Some((&a.key_id, "RSAES_OAEP_SHA_256")),
                &b.key_id,
                "",
            ),
            "InvalidKeyUsageException",
        ),
        (
            "tampered RSA ciphertext",
            re(
                &tampered,
                Some((&a.key_id, "RSAES_OAEP_SHA_256")),
                &sym.key_id,
                "",
            ),
            "InvalidCiphertextException",
        ),
        (
            "truncated RSA ciphertext",
            re(
                &from_a[..100],
                Some((&a.key_id, "RSAES_OAEP_SHA_256")),
                &sym.key_id,
                "",
            ),
            "InvalidCiphertextException",
        ),
        (
            "the other OAEP hash",
            re(
                &from_a,
                Some((&a.key_id, "RSAES_OAEP_SHA_1")),
                &sym.key_id,
                "",
            ),
            "InvalidCiphertextException",
        ),
        (
            "300 bytes into RSA-2048 OAEP SHA-256 (at most 190)",
            re(&long, None, &a.key_id, "RSAES_OAEP_SHA_256"),
            "ValidationException",
        ),
    ] {
        assert_eq!(reason(c.re_encrypt(req).await), want, "{what}");
    }

    // Authorization of both sides comes before any HSM call: user1 may re-encrypt from `a`
    // (a grant) but not to `sym`; user2 may do neither.
    c.create_grant(pb::CreateGrantRequest {
        key_id: a.key_id.clone(),
        grantee_principal: "arn:aws:iam::111122223333:user/user1".into(),
        operations: vec!["ReEncryptFrom".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut user1 = client_as(server.addr, Some("user1")).await;
    let mut user2 = client_as(server.addr, Some("user2")).await;
    let ops = server.kms.hsm().total_ops();
    for who in [&mut user1, &mut user2] {
        assert_eq!(
            reason(
                who.re_encrypt(re(
                    &from_a,
                    Some((&a.key_id, "RSAES_OAEP_SHA_256")),
                    &sym.key_id,
                    ""
                ))
                .await
            ),
            "AccessDeniedException"
        );
    }
    assert_eq!(
        server.kms.hsm().total_ops(),
        ops,
        "a denied ReEncrypt reached the HSM"
    );
    drop((c, user1, user2));
    server.shutdown().await.unwrap();
}

/// A fresh EC key pair made by the OpenSSL CLI on `curve` (`P-256`, ...): (its DER SPKI, and
/// the ECDH secret OpenSSL derives between it and `peer_spki`).
fn openssl_ecdh(curve: &str, peer_spki: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("mine.pem");
    let public = dir.path().join("mine.der");
    let peer = dir.path().join("peer.der");
    let secret = dir.path().join("secret.bin");
    std::fs::write(&peer, peer_spki).unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let out = hermetic_command("openssl", scratch_dir())
            .args(args)
            .output()
            .unwrap();
        assert_succeeded(&out, format_args!("openssl {args:?}"));
    };
    let s = |x: &'static str| std::ffi::OsStr::new(x);
    let curve_opt = format!("ec_paramgen_curve:{curve}");
    run(&[
        s("genpkey"),
        s("-algorithm"),
        s("EC"),
        s("-pkeyopt"),
        curve_opt.as_ref(),
        s("-out"),
        key.as_os_str(),
    ]);
    run(&[
        s("pkey"),
        s("-in"),
        key.as_os_str(),
        s("-pubout"),
        s("-outform"),
        s("DER"),
        s("-out"),
        public.as_os_str(),
    ]);
    run(&[
        s("pkeyutl"),
        s("-derive"),
        s("-inkey"),
        key.as_os_str(),
        s("-peerkey"),
        peer.as_os_str(),
        s("-peerform"),
        s("DER"),
        s("-out"),
        secret.as_os_str(),
    ]);
    (
        std::fs::read(&public).unwrap(),
        std::fs::read(&secret).unwrap(),
    )
}

/// DeriveSharedSecret (KEY_AGREEMENT keys, ECDH on the device) agrees with OpenSSL on every
/// NIST curve; bad inputs and unauthorized callers are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derive_shared_secret_agrees_with_openssl() {
    let (server, dir, endpoint) =
        start_both("catalogue-ecdh", Arc::new(ManualClock::default())).await;
    let mut c = admin(server.addr).await;
    let derive = |key: &str, alg: &str, spki: &[u8]| pb::DeriveSharedSecretRequest {
        key_id: key.into(),
        key_agreement_algorithm: alg.into(),
        public_key: spki.to_vec(),
        grant_tokens: vec![],
        dry_run: false,
    };
    let mut keys = Vec::new();
    for (spec, curve, len) in [
        ("ECC_NIST_P256", "P-256", 32),
        ("ECC_NIST_P384", "P-384", 48),
        ("ECC_NIST_P521", "P-521", 66),
    ] {
        let m = create(&mut c, spec, "KEY_AGREEMENT").await;
        assert_eq!(m.key_usage, "KEY_AGREEMENT");
        assert_eq!(m.key_agreement_algorithms, vec!["ECDH"]);
        assert!(m.signing_algorithms.is_empty() && m.encryption_algorithms.is_empty());
        let pk = c
            .get_public_key(pb::GetPublicKeyRequest {
                key_id: m.key_id.clone(),
                grant_tokens: vec![],
            })
            .await
            .reply();
        assert_eq!(pk.key_agreement_algorithms, vec!["ECDH"]);
        for _ in 0..2 {
            let (peer_spki, expected) = openssl_ecdh(curve, &pk.public_key);
            assert_eq!(expected.len(), len);
            let out = c
                .derive_shared_secret(derive(&m.key_id, "ECDH", &peer_spki))
                .await
                .unwrap_or_else(|e| panic!("DeriveSharedSecret {spec}: {e}"))
                .into_inner();
            assert_eq!(
                out.shared_secret, expected,
                "{spec}: p11kms and OpenSSL agree"
            );
            assert_eq!(out.key_id, m.arn);
            assert_eq!(out.key_agreement_algorithm, "ECDH");
            assert_eq!(out.key_origin, "AWS_KMS");
        }
        // The private half may derive and nothing else.
        let a = server
            .kms
            .hsm()
            .key_pair_attributes(object(&m.key_id), true)
            .await
            .unwrap();
        assert!(a.derive && !a.sign && !a.decrypt && !a.unwrap, "{a:?}");
        assert!(
            a.sensitive && !a.extractable && a.never_extractable,
            "{a:?}"
        );
        assert_eq!(a.allowed_mechanisms, vec!["ECDH1_DERIVE".to_string()]);
        keys.push((m, pk.public_key));
    }
    let (p256, p256_spki) = &keys[0];
    let (p384, _) = &keys[1];

    // Usages and specs.
    for (spec, usage) in [
        ("ECC_SECG_P256K1", "KEY_AGREEMENT"),
        ("RSA_2048", "KEY_AGREEMENT"),
    ] {
        let r = c.create_key(key_request(spec, usage)).await;
        assert_eq!(reason(r), "ValidationException", "{spec} {usage}");
    }
    let signer = create(&mut c, "ECC_NIST_P256", "SIGN_VERIFY").await;
    let sym = create(&mut c, "", "").await;
    assert_eq!(
        reason(
            c.sign(sign_req(&p256.key_id, b"m", "RAW", "ECDSA_SHA_256"))
                .await
        ),
        "InvalidKeyUsageException"
    );

    // Bad inputs.
    let (peer_spki, _) = openssl_ecdh("P-256", p256_spki);
    let (p384_peer, _) = openssl_ecdh("P-384", &keys[1].1);
    let mut off_curve = peer_spki.clone();
    *off_curve.last_mut().unwrap() ^= 1;
    for (what, req, want) in [
        (
            "unknown algorithm",
            derive(&p256.key_id, "ECDHE", &peer_spki),
            "ValidationException",
        ),
        (
            "no algorithm",
            derive(&p256.key_id, "", &peer_spki),
            "ValidationException",
        ),
        (
            "no public key",
            derive(&p256.key_id, "ECDH", &[]),
            "ValidationException",
        ),
        (
            "public key on another curve",
            derive(&p256.key_id, "ECDH", &p384_peer),
            "ValidationException",
        ),
        (
            "not DER",
            derive(&p256.key_id, "ECDH", b"not a public key"),
            "ValidationException",
        ),
        (
            "point not on the curve",
            derive(&p256.key_id, "ECDH", &off_curve),
            "ValidationException",
        ),
        (
            "a signing key",
            derive(&signer.key_id, "ECDH", &peer_spki),
            "InvalidKeyUsageException",
        ),
        (
            "a symmetric key",
            derive(&sym.key_id, "ECDH", &peer_spki),
            "InvalidKeyUsageException",
        ),
        (
            "an unknown key",
            derive("alias/nothing-here", "ECDH", &peer_spki),
            "NotFoundException",
        ),
    ] {
        assert_eq!(reason(c.derive_shared_secret(req).await), want, "{what}");
    }
    // After those refusals the key still works.
    c.derive_shared_secret(derive(
        &p384.key_id,
        "ECDH",
        &openssl_ecdh("P-384", &keys[1].1).0,
    ))
    .await
    .unwrap();

    // Disabled; and callers without permission never reach the device.
    disable_key(&mut c, &p384.key_id).await;
    assert_eq!(
        reason(
            c.derive_shared_secret(derive(&p384.key_id, "ECDH", &p384_peer))
                .await
        ),
        "DisabledException"
    );
    let mut user2 = client_as(server.addr, Some("user2")).await;
    let ops = server.kms.hsm().total_ops();
    assert_eq!(
        reason(
            user2
                .derive_shared_secret(derive(&p256.key_id, "ECDH", &peer_spki))
                .await
        ),
        "AccessDeniedException"
    );
    assert_eq!(
        server.kms.hsm().total_ops(),
        ops,
        "a denied request reached the HSM"
    );
    // A grant for DeriveSharedSecret lets user1 derive.
    c.create_grant(pb::CreateGrantRequest {
        key_id: p256.key_id.clone(),
        grantee_principal: "arn:aws:iam::111122223333:user/user1".into(),
        operations: vec!["DeriveSharedSecret".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut user1 = client_as(server.addr, Some("user1")).await;
    let (peer, expected) = openssl_ecdh("P-256", p256_spki);
    let out = user1
        .derive_shared_secret(derive(&p256.key_id, "ECDH", &peer))
        .await
        .reply();
    assert_eq!(out.shared_secret, expected);
    // The audit trail records the calls (the caller, key and algorithm), never the secret.
    let events = events(&dir);
    let derives: Vec<&Value> = events
        .iter()
        .filter(|e| e["eventName"] == "DeriveSharedSecret")
        .collect();
    assert!(
        derives.len() >= 8,
        "{} DeriveSharedSecret events",
        derives.len()
    );
    assert!(derives
        .iter()
        .any(|e| e["requestParameters"]["keyAgreementAlgorithm"] == "ECDH"));
    let trail = serde_json::to_string(&events).unwrap();
    assert!(
        !trail.contains(&b64(&expected)),
        "the shared secret is in the audit trail"
    );

    // The AWS JSON door, with boto3 and pyca/cryptography: ECDH, and ReEncrypt between an
    // RSA key and a symmetric key.
    let rsa = create(&mut c, "RSA_2048", "ENCRYPT_DECRYPT").await;
    python(
        &dir,
        &endpoint,
        vec![
            "boto3-ecdh".into(),
            p256.key_id.clone(),
            rsa.key_id.clone(),
            sym.key_id.clone(),
        ],
    )
    .await;
    drop((c, user1, user2));
    server.shutdown().await.unwrap();
}

/// Ed25519 keys (ECC_NIST_EDWARDS25519, pure EdDSA on the device): OpenSSL verifies the
/// signatures with the key from GetPublicKey; the refusals AWS gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_signatures_verify_with_openssl() {
    let (server, workdir, endpoint) =
        start_both("catalogue-ed25519", Arc::new(ManualClock::default())).await;
    let mut c = admin(server.addr).await;
    let m = create(&mut c, "ECC_NIST_EDWARDS25519", "SIGN_VERIFY").await;
    assert_eq!(m.signing_algorithms, vec!["ED25519_SHA_512"]);
    let pk = c
        .get_public_key(pb::GetPublicKeyRequest {
            key_id: m.key_id.clone(),
            grant_tokens: vec![],
        })
        .await
        .reply();
    // RFC 8410 SPKI: the Ed25519 OID, no parameters, a 32-byte key.
    assert_eq!(pk.public_key.len(), 44);
    assert_eq!(
        &pk.public_key[..12],
        &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]
    );
    let a = server
        .kms
        .hsm()
        .key_pair_attributes(object(&m.key_id), true)
        .await
        .unwrap();
    assert!(
        a.sign && !a.decrypt && !a.derive && a.sensitive && !a.extractable,
        "{a:?}"
    );
    assert_eq!(a.allowed_mechanisms, vec!["EDDSA".to_string()]);

    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("pub.der");
    std::fs::write(&public, &pk.public_key).unwrap();
    for message in [b"hello ed25519".to_vec(), vec![0x5a; 4096]] {
        let sig = c
            .sign(sign_req(&m.key_id, &message, "RAW", "ED25519_SHA_512"))
            .await
            .reply()
            .signature;
        assert_eq!(sig.len(), 64, "raw Ed25519 signature");
        let (msg_file, sig_file) = (dir.path().join("m"), dir.path().join("s"));
        std::fs::write(&msg_file, &message).unwrap();
        std::fs::write(&sig_file, &sig).unwrap();
        let out = hermetic_command("openssl", scratch_dir())
            .args([
                "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-rawin", "-inkey",
            ])
            .arg(&public)
            .arg("-in")
            .arg(&msg_file)
            .arg("-sigfile")
            .arg(&sig_file)
            .output()
            .unwrap();
        assert_succeeded(&out, "openssl did not verify the Ed25519 signature");
        let v = c
            .verify(verify_req(
                &m.key_id,
                &message,
                "RAW",
                &sig,
                "ED25519_SHA_512",
            ))
            .await
            .reply();
        assert!(v.signature_valid);
        let mut other = message.clone();
        other[0] ^= 1;
        assert_eq!(
            reason(
                c.verify(verify_req(
                    &m.key_id,
                    &other,
                    "RAW",
                    &sig,
                    "ED25519_SHA_512"
                ))
                .await
            ),
            "KMSInvalidSignatureException"
        );
        assert_eq!(
            reason(
                c.verify(verify_req(
                    &m.key_id,
                    &message,
                    "RAW",
                    &sig[..63],
                    "ED25519_SHA_512"
                ))
                .await
            ),
            "KMSInvalidSignatureException"
        );
    }
    for (what, req, want) in [
        (
            "DIGEST with pure Ed25519",
            sign_req(&m.key_id, &[0; 64], "DIGEST", "ED25519_SHA_512"),
            "ValidationException",
        ),
        (
            "Ed25519ph",
            sign_req(&m.key_id, b"m", "RAW", "ED25519_PH_SHA_512"),
            "InvalidKeyUsageException",
        ),
        (
            "ECDSA on an Ed25519 key",
            sign_req(&m.key_id, b"m", "RAW", "ECDSA_SHA_256"),
            "InvalidKeyUsageException",
        ),
        (
            "a message over 4096 bytes",
            sign_req(&m.key_id, &[0; 4097], "RAW", "ED25519_SHA_512"),
            "ValidationException",
        ),
    ] {
        assert_eq!(reason(c.sign(req).await), want, "{what}");
    }
    // Through the AWS JSON door: boto3 signs, pyca/cryptography verifies.
    python(
        &workdir,
        &endpoint,
        vec!["boto3-ed25519".into(), m.key_id.clone()],
    )
    .await;
    drop(c);
    server.shutdown().await.unwrap();
}
