//! BYOK import (issue 7, item 5) against the real daemon, a real SoftHSM2 token, the gRPC
//! client, the `openssl` CLI (wrapping exactly as AWS documents it) and the AWS CLI (second
//! door). The right key arriving is proven by decrypting a p11kms ciphertext locally with the
//! known material (ring's AES-256-GCM, the blob layout of src/ciphertext.rs).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use p11kms::core::{Clock, ManualClock};
use p11kms::hsm::ObjectId;
use p11kms::pb;

const DAY_MS: i64 = 86_400_000;

fn key_uuid(key: &str) -> [u8; 16] {
    *uuid::Uuid::parse_str(key).unwrap().as_bytes()
}

fn ts_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: 0,
    }
}

// ------------------------------------------------------------------------------ openssl

/// RFC 5649 (AES key wrap with padding) with `openssl enc -id-aes256-wrap-pad`.
fn kwp(kek: &[u8], data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = hermetic_command("openssl", scratch_dir())
        .args(["enc", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K"])
        .arg(hex::encode(kek))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// The modulus size openssl reads from a DER SPKI.
fn modulus_bits(spki_der: &[u8]) -> u32 {
    let dir = tempfile::tempdir().unwrap();
    let der = dir.path().join("k.der");
    std::fs::write(&der, spki_der).unwrap();
    let out = hermetic_command("openssl", scratch_dir())
        .args(["pkey", "-pubin", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&der)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_default();
    line.split(['(', ' '])
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no modulus size in {line:?}"))
}

/// Wraps `material` for `alg` under the wrapping public key, exactly as AWS documents it.
fn wrap(alg: &str, spki: &[u8], material: &[u8]) -> Vec<u8> {
    let md = if alg.ends_with("SHA_256") {
        "sha256"
    } else {
        "sha1"
    };
    if alg.starts_with("RSAES_OAEP") {
        openssl_oaep_encrypt(spki, md, material)
    } else {
        let kek: Vec<u8> = (0..32u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        let mut w = openssl_oaep_encrypt(spki, md, &kek);
        w.extend(kwp(&kek, material));
        w
    }
}

// ------------------------------------------------------------------------------ p11kms

/// A CreateKey request for a key of `spec` and `usage` with origin EXTERNAL.
fn external_key_request(spec: &str, usage: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        origin: "EXTERNAL".into(),
        ..key_request(spec, usage)
    }
}

/// CreateKey of an EXTERNAL key of `spec` and `usage`, which must succeed; its id.
async fn create_external(c: &mut Client, spec: &str, usage: &str) -> String {
    create_key_from(c, external_key_request(spec, usage)).await
}

async fn params(
    c: &mut Client,
    key: &str,
    alg: &str,
    spec: &str,
) -> Result<pb::GetParametersForImportResponse, tonic::Status> {
    c.get_parameters_for_import(pb::GetParametersForImportRequest {
        key_id: key.into(),
        wrapping_algorithm: alg.into(),
        wrapping_key_spec: spec.into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn import(
    c: &mut Client,
    key: &str,
    token: &[u8],
    wrapped: &[u8],
    valid_to_ms: Option<i64>,
) -> Result<pb::ImportKeyMaterialResponse, tonic::Status> {
    c.import_key_material(pb::ImportKeyMaterialRequest {
        key_id: key.into(),
        import_token: token.to_vec(),
        encrypted_key_material: wrapped.to_vec(),
        valid_to: valid_to_ms.map(ts_ms),
        expiration_model: if valid_to_ms.is_some() {
            "KEY_MATERIAL_EXPIRES".into()
        } else {
            "KEY_MATERIAL_DOES_NOT_EXPIRE".into()
        },
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// GetParametersForImport + wrap + ImportKeyMaterial (SHA-1 OAEP, RSA_2048).
async fn import_material(c: &mut Client, key: &str, material: &[u8], valid_to_ms: Option<i64>) {
    let p = params(c, key, "RSAES_OAEP_SHA_1", "RSA_2048")
        .await
        .unwrap();
    let wrapped = wrap("RSAES_OAEP_SHA_1", &p.public_key, material);
    import(c, key, &p.import_token, &wrapped, valid_to_ms)
        .await
        .unwrap();
}

/// For the MAC tests after the merge (GenerateMac vs Python `hmac`): creates an EXTERNAL
/// HMAC key of `spec` (HMAC_224/256/384/512), imports the known `material` through the real
/// import path, and returns the key id.
pub async fn import_known_hmac_material(c: &mut Client, spec: &str, material: &[u8]) -> String {
    let key = create_external(c, spec, "GENERATE_VERIFY_MAC").await;
    let p = params(c, &key, "RSA_AES_KEY_WRAP_SHA_1", "RSA_2048")
        .await
        .unwrap();
    let wrapped = wrap("RSA_AES_KEY_WRAP_SHA_1", &p.public_key, material);
    import(c, &key, &p.import_token, &wrapped, None)
        .await
        .unwrap();
    key
}

/// The encryption context of every Encrypt and Decrypt here.
const BYOK_EC: &[(&str, &str)] = &[("tenant", "byok"), ("purpose", "proof")];

/// With fresh import parameters (RSAES_OAEP_SHA_1, RSA_2048), an import of `different`
/// material into `key`, which already has other material, is refused with
/// IncorrectKeyMaterialException; the parameters, still good for another import.
async fn refuse_different_material(
    c: &mut Client,
    key: &str,
    different: &[u8],
) -> pb::GetParametersForImportResponse {
    let p = params(c, key, "RSAES_OAEP_SHA_1", "RSA_2048")
        .await
        .unwrap();
    let wrapped = wrap("RSAES_OAEP_SHA_1", &p.public_key, different);
    assert_eq!(
        reason(import(c, key, &p.import_token, &wrapped, None).await),
        "IncorrectKeyMaterialException"
    );
    p
}

async fn encrypt(c: &mut Client, key: &str, pt: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    encrypt_with(c, key, pt, BYOK_EC).await
}

async fn decrypt(c: &mut Client, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    decrypt_with(c, blob, BYOK_EC).await
}

/// The attributes of `key`'s imported material (version 1), checked to be held as the CMK
/// template holds key material: a private, sensitive, never extractable token object.
async fn held_like_a_cmk(
    server: &p11kms::server::RunningServer,
    key: &str,
) -> p11kms::hsm::KeyAttributes {
    let id = ObjectId::new(key_uuid(key), 1);
    let a = server.kms.hsm().key_attributes(id).await.unwrap();
    assert!(
        a.token && a.private && a.sensitive && !a.extractable,
        "{a:?}"
    );
    a
}

/// Token objects of `key` (its material versions).
async fn material_objects(server: &p11kms::server::RunningServer, key: &str) -> usize {
    key_objects(server, key)
        .await
        .iter()
        .filter(|(_, token)| *token)
        .count()
}

/// Import wrapping keys (and temporary import objects) on the token.
async fn import_objects(server: &p11kms::server::RunningServer) -> usize {
    labelled_objects(server.kms.hsm(), |l| l.starts_with("p11kms/import")).await
}

/// The tests of this binary count import objects on one shared token: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ------------------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wrapping_algorithm_imports_the_right_key() {
    let _one = SERIAL.lock().await;
    let (_dir, server, mut c) = start_admin("byok").await;
    let ec = [("tenant", "byok"), ("purpose", "proof")];

    for (i, (alg, spec, bits)) in [
        ("RSAES_OAEP_SHA_1", "RSA_2048", 2048),
        ("RSA_AES_KEY_WRAP_SHA_1", "RSA_3072", 3072),
        ("RSAES_OAEP_SHA_256", "RSA_2048", 2048),
        ("RSA_AES_KEY_WRAP_SHA_256", "RSA_2048", 2048),
    ]
    .into_iter()
    .enumerate()
    {
        let key = create_external(&mut c, "SYMMETRIC_DEFAULT", "").await;
        let m = describe_key(&mut c, &key).await;
        assert_eq!(
            (m.key_state.as_str(), m.origin.as_str()),
            ("PendingImport", "EXTERNAL")
        );
        assert_eq!(
            material_objects(&server, &key).await,
            0,
            "no HSM object before import"
        );
        assert_eq!(
            reason(encrypt(&mut c, &key, b"x").await),
            "KMSInvalidStateException"
        );
        let before = import_objects(&server).await;
        let p = match params(&mut c, &key, alg, spec).await {
            Ok(p) => p,
            Err(s) => {
                // SoftHSM2 2.6 implements CKM_RSA_PKCS_OAEP with SHA-1 only: the SHA-256
                // algorithms are refused up front, by name, with nothing left on the token.
                assert!(alg.ends_with("SHA_256"), "{alg}: {s:?}");
                assert_eq!(
                    reason(Err::<(), _>(s.clone())),
                    "UnsupportedOperationException"
                );
                assert!(s.message().contains("SHA-256"), "{}", s.message());
                assert_eq!(import_objects(&server).await, before);
                assert_eq!(describe_key(&mut c, &key).await.key_state, "PendingImport");
                continue;
            }
        };
        assert!(p.key_id.ends_with(&key));
        assert_eq!(modulus_bits(&p.public_key), bits, "{alg}");
        let valid_to = p.parameters_valid_to.unwrap().seconds * 1000;
        let now = server.kms.now_ms();
        assert!((valid_to - now - DAY_MS).abs() < 2000, "valid for 24 h");
        assert_eq!(
            import_objects(&server).await,
            before + 1,
            "one wrapping key"
        );

        let material: Vec<u8> = (0..32u8).map(|b| b ^ (0x5a + i as u8)).collect();
        let wrapped = wrap(alg, &p.public_key, &material);
        let out = import(&mut c, &key, &p.import_token, &wrapped, None)
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e:?}"));
        assert_eq!(out.key_material_id.len(), 64);
        let m = describe_key(&mut c, &key).await;
        assert_eq!(m.key_state, "Enabled");
        assert_eq!(m.expiration_model, "KEY_MATERIAL_DOES_NOT_EXPIRE");
        assert!(m.valid_to.is_none());
        assert_eq!(m.current_key_material_id, out.key_material_id);
        assert_eq!(
            import_objects(&server).await,
            before,
            "wrapping key destroyed after use"
        );
        assert_eq!(material_objects(&server, &key).await, 1);

        // The right key arrived: a p11kms ciphertext opens locally with the known material.
        let blob = encrypt(&mut c, &key, b"bring your own key").await.unwrap();
        assert_eq!(
            open_locally(&material, &blob, &ec).as_deref(),
            Some(&b"bring your own key"[..]),
            "{alg}"
        );
        assert!(open_locally(&[0u8; 32], &blob, &ec).is_none());
        assert_eq!(decrypt(&mut c, &blob).await.unwrap(), b"bring your own key");

        // The material object: the CMK template, sensitive, never extractable.
        let a = held_like_a_cmk(&server, &key).await;
        assert!(
            a.encrypt && a.decrypt && !a.wrap && !a.unwrap && !a.sign,
            "{a:?}"
        );
        assert_eq!(a.allowed_mechanisms, vec!["AES_GCM".to_string()]);
        assert!(server
            .kms
            .hsm()
            .try_read_value(ObjectId::new(key_uuid(&key), 1))
            .await
            .is_err());

        // The token is single-use.
        assert_eq!(
            reason(import(&mut c, &key, &p.import_token, &wrapped, None).await),
            "InvalidImportTokenException"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_change_nothing() {
    let _one = SERIAL.lock().await;
    let (_dir, clock, server, mut c) = start_admin_clocked("byok-bad", start_with).await;
    let material = [0x31u8; 32];
    let key = create_external(&mut c, "SYMMETRIC_DEFAULT", "").await;
    let other = create_external(&mut c, "SYMMETRIC_DEFAULT", "").await;
    let unchanged = async |c: &mut Client, server: &p11kms::server::RunningServer, state: &str| {
        assert_eq!(describe_key(c, &key).await.key_state, state);
        assert_eq!(
            material_objects(server, &key).await,
            usize::from(state != "PendingImport")
        );
    };

    // A token for another key; a garbage token.
    let p_other = params(&mut c, &other, "RSAES_OAEP_SHA_1", "RSA_2048")
        .await
        .unwrap();
    let wrapped_other = wrap("RSAES_OAEP_SHA_1", &p_other.public_key, &material);
    assert_eq!(
        reason(import(&mut c, &key, &p_other.import_token, &wrapped_other, None).await),
        "InvalidImportTokenException"
    );
    assert_eq!(
        reason(import(&mut c, &key, b"not a token", &wrapped_other, None).await),
        "InvalidImportTokenException"
    );
    unchanged(&mut c, &server, "PendingImport").await;

    // A garbled wrapped blob: InvalidCiphertextException, nothing created.
    let p = params(&mut c, &key, "RSAES_OAEP_SHA_1", "RSA_2048")
        .await
        .unwrap();
    let mut garbled = wrap("RSAES_OAEP_SHA_1", &p.public_key, &material);
    garbled[40] ^= 0x01;
    let before = import_objects(&server).await;
    assert_eq!(
        reason(import(&mut c, &key, &p.import_token, &garbled, None).await),
        "InvalidCiphertextException"
    );
    // Garbled RSA_AES_KEY_WRAP (the AES part): also InvalidCiphertextException.
    let p2 = params(&mut c, &key, "RSA_AES_KEY_WRAP_SHA_1", "RSA_2048")
        .await
        .unwrap();
    let mut garbled2 = wrap("RSA_AES_KEY_WRAP_SHA_1", &p2.public_key, &material);
    let n = garbled2.len();
    garbled2[n - 3] ^= 0x80;
    assert_eq!(
        reason(import(&mut c, &key, &p2.import_token, &garbled2, None).await),
        "InvalidCiphertextException"
    );
    // Material of the wrong length (16 bytes for SYMMETRIC_DEFAULT): ValidationException.
    let short = wrap("RSA_AES_KEY_WRAP_SHA_1", &p2.public_key, &[7u8; 16]);
    assert_eq!(
        reason(import(&mut c, &key, &p2.import_token, &short, None).await),
        "ValidationException"
    );
    assert_eq!(
        import_objects(&server).await,
        before + 1,
        "only p2's wrapping key was added"
    );
    unchanged(&mut c, &server, "PendingImport").await;

    // Bad ValidTo / ExpirationModel: ValidationException before anything else.
    let wrapped = wrap("RSAES_OAEP_SHA_1", &p.public_key, &material);
    let now = clock.now_ms();
    assert_eq!(
        reason(
            import(
                &mut c,
                &key,
                &p.import_token,
                &wrapped,
                Some(now + 366 * DAY_MS)
            )
            .await
        ),
        "ValidationException"
    );
    assert_eq!(
        reason(import(&mut c, &key, &p.import_token, &wrapped, Some(now - 1000)).await),
        "ValidationException"
    );
    let r = c
        .import_key_material(pb::ImportKeyMaterialRequest {
            key_id: key.clone(),
            import_token: p.import_token.clone(),
            encrypted_key_material: wrapped.clone(),
            expiration_model: "KEY_MATERIAL_EXPIRES".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(r), "ValidationException");
    for (alg, spec) in [
        ("RSAES_PKCS1_V1_5_X", "RSA_2048"),
        ("RSAES_OAEP_SHA_1", "RSA_1024"),
    ] {
        assert_eq!(
            reason(params(&mut c, &key, alg, spec).await),
            "ValidationException"
        );
    }
    unchanged(&mut c, &server, "PendingImport").await;

    // Expired token (24 h on the ManualClock): ExpiredImportTokenException.
    clock.advance_ms(DAY_MS + 1000);
    assert_eq!(
        reason(import(&mut c, &key, &p.import_token, &wrapped, None).await),
        "ExpiredImportTokenException"
    );
    unchanged(&mut c, &server, "PendingImport").await;
    // The sweeper destroys expired wrapping keys.
    assert!(
        wait_for(async || import_objects(&server).await == 0).await,
        "expired wrapping keys stayed on the token"
    );

    // Now a good import, then a re-import of different material: IncorrectKeyMaterial.
    import_material(&mut c, &key, &material, None).await;
    unchanged(&mut c, &server, "Enabled").await;
    let p3 = refuse_different_material(&mut c, &key, &[0x32u8; 32]).await;
    unchanged(&mut c, &server, "Enabled").await;
    // The same material is accepted again (the key keeps its state and its object).
    let same = wrap("RSAES_OAEP_SHA_1", &p3.public_key, &material);
    import(&mut c, &key, &p3.import_token, &same, None)
        .await
        .unwrap();
    unchanged(&mut c, &server, "Enabled").await;

    // Import operations on an AWS_KMS key, and EXTERNAL for an unsupported spec.
    let native = create_key(&mut c).await;
    assert_eq!(
        reason(params(&mut c, &native, "RSAES_OAEP_SHA_1", "RSA_2048").await),
        "UnsupportedOperationException"
    );
    let r = c
        .delete_imported_key_material(pb::DeleteImportedKeyMaterialRequest {
            key_id: native.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(r), "UnsupportedOperationException");
    let r = c
        .create_key(external_key_request("RSA_2048", "SIGN_VERIFY"))
        .await;
    assert_eq!(reason(r), "UnsupportedOperationException");
    // Rotation of a key with imported material: UnsupportedOperationException.
    let r = rotate_on_demand(&mut c, &key).await;
    assert_eq!(reason(r), "UnsupportedOperationException");

    // A caller without kms:GetParametersForImport: AccessDenied and no HSM call.
    let mut user = client_as(server.addr, Some("user1")).await;
    let calls = server.kms.hsm().total_ops();
    assert_eq!(
        reason(params(&mut user, &other, "RSAES_OAEP_SHA_1", "RSA_2048").await),
        "AccessDeniedException"
    );
    assert_eq!(server.kms.hsm().total_ops(), calls);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_delete_and_reimport() {
    let _one = SERIAL.lock().await;
    let (dir, clock, server, mut c) = start_admin_clocked("byok-expiry", start_swept_by_hand).await;
    let material: Vec<u8> = (100..132u8).collect();
    let key = create_external(&mut c, "SYMMETRIC_DEFAULT", "").await;

    let valid_to = clock.now_ms() + 2 * DAY_MS;
    import_material(&mut c, &key, &material, Some(valid_to)).await;
    let m = describe_key(&mut c, &key).await;
    assert_eq!(m.key_state, "Enabled");
    assert_eq!(m.expiration_model, "KEY_MATERIAL_EXPIRES");
    assert_eq!(m.valid_to.unwrap().seconds, valid_to.div_euclid(1000));
    let blob = encrypt(&mut c, &key, b"expiring").await.unwrap();
    // ListKeyRotations with ALL_KEY_MATERIAL shows the imported material and its expiry.
    let material_entry = |c: &mut Client| {
        let key = key.clone();
        let mut c = c.clone();
        async move {
            let list = c
                .list_key_rotations(pb::ListKeyRotationsRequest {
                    key_id: key,
                    include_key_material: "ALL_KEY_MATERIAL".into(),
                    ..Default::default()
                })
                .await
                .reply()
                .rotations;
            assert_eq!(list.len(), 1, "{list:?}");
            list.into_iter().next().unwrap()
        }
    };
    let e = material_entry(&mut c).await;
    assert_eq!(
        (e.key_material_state.as_str(), e.import_state.as_str()),
        ("CURRENT", "IMPORTED")
    );
    assert_eq!(e.expiration_model, "KEY_MATERIAL_EXPIRES");
    assert_eq!(e.valid_to.unwrap().seconds, valid_to.div_euclid(1000));
    assert!(e.rotation_date.is_none() && e.rotation_type.is_empty());

    // One day on: still there.
    clock.advance_days(1);
    let done = server.kms.sweep_imports().await.unwrap();
    assert!(done.is_empty(), "expired before ValidTo: {done:?}");
    assert_eq!(describe_key(&mut c, &key).await.key_state, "Enabled");
    assert_eq!(material_objects(&server, &key).await, 1);
    assert!(service_events(&dir, "DeleteExpiredKeyMaterial", &key).is_empty());

    // ValidTo passes: material destroyed, PendingImport, Encrypt/Decrypt refused.
    clock.advance_days(2);
    let done = server.kms.sweep_imports().await.unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].succeeded() && done[0].key_id == key, "{done:?}");
    assert_eq!(describe_key(&mut c, &key).await.key_state, "PendingImport");
    let events = service_events(&dir, "DeleteExpiredKeyMaterial", &key);
    assert_eq!(events.len(), 1, "one expiry service event: {events:?}");
    assert_service_success(&events[0]);
    assert_eq!(material_objects(&server, &key).await, 0);
    assert_eq!(material_entry(&mut c).await.import_state, "PENDING_IMPORT");
    assert_eq!(
        reason(encrypt(&mut c, &key, b"x").await),
        "KMSInvalidStateException"
    );
    assert_eq!(
        reason(decrypt(&mut c, &blob).await),
        "KMSInvalidStateException"
    );
    let drift = server.kms.reconcile().await.unwrap();
    assert!(
        !drift.missing_objects.iter().any(|(k, _)| k == &key),
        "expired material is not drift: {drift:?}"
    );

    // Different material is refused even though the old object is gone.
    let p = refuse_different_material(&mut c, &key, &[9u8; 32]).await;
    assert_eq!(material_objects(&server, &key).await, 0);

    // Re-import the same material: old ciphertexts decrypt again.
    let same = wrap("RSAES_OAEP_SHA_1", &p.public_key, &material);
    import(&mut c, &key, &p.import_token, &same, None)
        .await
        .unwrap();
    assert_eq!(describe_key(&mut c, &key).await.key_state, "Enabled");
    assert_eq!(decrypt(&mut c, &blob).await.unwrap(), b"expiring");

    // DeleteImportedKeyMaterial: PendingImport, object gone; again: no effect.
    for _ in 0..2 {
        let out = c
            .delete_imported_key_material(pb::DeleteImportedKeyMaterialRequest {
                key_id: key.clone(),
                ..Default::default()
            })
            .await
            .reply();
        assert_eq!(out.key_material_id.len(), 64);
        assert_eq!(describe_key(&mut c, &key).await.key_state, "PendingImport");
        assert_eq!(material_objects(&server, &key).await, 0);
    }

    // Re-import into a Disabled key keeps it Disabled.
    import_material(&mut c, &key, &material, None).await;
    disable_key(&mut c, &key).await;
    import_material(&mut c, &key, &material, None).await;
    assert_eq!(describe_key(&mut c, &key).await.key_state, "Disabled");

    // State survives a restart (store), and deleting the key destroys the material and the
    // wrapping key of an outstanding import token.
    drop(c);
    server.shutdown().await.unwrap();
    let server = start_swept_by_hand(&dir, clock.clone()).await;
    let mut c = admin(server.addr).await;
    let m = describe_key(&mut c, &key).await;
    assert_eq!(
        (m.key_state.as_str(), m.expiration_model.as_str()),
        ("Disabled", "KEY_MATERIAL_DOES_NOT_EXPIRE")
    );
    let outstanding = params(&mut c, &key, "RSAES_OAEP_SHA_1", "RSA_2048")
        .await
        .unwrap();
    assert!(!outstanding.import_token.is_empty());
    assert_eq!(import_objects(&server).await, 1);
    schedule_deletion(&mut c, &key, 7).await;
    clock.advance_days(8);
    let done = server.kms.sweep_deletions().await.unwrap();
    assert!(done.len() == 1 && done[0].succeeded(), "{done:?}");
    assert!(
        material_objects(&server, &key).await == 0 && import_objects(&server).await == 0,
        "the deleted key left objects on the token"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_material_gets_the_contract_template() {
    let _one = SERIAL.lock().await;
    let (_dir, server, mut c) = start_admin("byok-hmac").await;
    for (spec, mech, len) in [
        ("HMAC_256", "SHA256_HMAC", 32usize),
        ("HMAC_512", "SHA512_HMAC", 64),
    ] {
        let material: Vec<u8> = (0..len as u8).collect();
        let key = import_known_hmac_material(&mut c, spec, &material).await;
        let m = describe_key(&mut c, &key).await;
        assert_eq!(m.key_state, "Enabled");
        assert_eq!(m.key_spec, spec);
        assert_eq!(m.key_usage, "GENERATE_VERIFY_MAC");
        let a = held_like_a_cmk(&server, &key).await;
        assert!(a.sign && a.verify, "{a:?}");
        assert!(
            !a.encrypt && !a.decrypt && !a.wrap && !a.unwrap && !a.derive,
            "{a:?}"
        );
        assert_eq!(a.allowed_mechanisms, vec![mech.to_string()]);
        // An HMAC key is no encryption key.
        assert_eq!(
            reason(encrypt(&mut c, &key, b"x").await),
            "InvalidKeyUsageException"
        );
        // HMAC material below the digest length is refused (RFC 5649 length bound).
        let short_key = create_external(&mut c, spec, "GENERATE_VERIFY_MAC").await;
        let p = params(&mut c, &short_key, "RSA_AES_KEY_WRAP_SHA_1", "RSA_2048")
            .await
            .unwrap();
        let short = wrap(
            "RSA_AES_KEY_WRAP_SHA_1",
            &p.public_key,
            &material[..len / 2],
        );
        assert_eq!(
            reason(import(&mut c, &short_key, &p.import_token, &short, None).await),
            "ValidationException"
        );
    }
    // HMAC keys need KeyUsage GENERATE_VERIFY_MAC.
    let r = c.create_key(external_key_request("HMAC_256", "")).await;
    assert_eq!(reason(r), "ValidationException");
    server.shutdown().await.unwrap();
}

// ------------------------------------------------------------------------------ AWS door

fn venv() -> std::path::PathBuf {
    let v = manifest_dir().join(".venv");
    assert!(
        v.join("bin/aws").is_file(),
        "the Python venv with awscli is missing at {}: run scripts/python-venv.sh",
        v.display()
    );
    v
}

fn aws(endpoint: &str, scratch: &Path, args: &[&str]) -> serde_json::Value {
    let out = aws_client_command(
        venv().join("bin/aws"),
        scratch,
        "AKIAADMIN00000000001",
        endpoint,
    )
    .env("AWS_PAGER", "")
    .args(args)
    .args(["--output", "json"])
    .output()
    .unwrap();
    assert_succeeded(&out, format_args!("aws {args:?}"));
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_imports_and_rotates() {
    let _one = SERIAL.lock().await;
    let dir = data_dir("byok-aws");
    let (server, endpoint) = start_aws_door(
        &dir,
        p11kms::server::ServerOptions {
            clock: Arc::new(ManualClock::default()),
            sweep_interval: None,
        },
    )
    .await;
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();

    let run = |args: Vec<String>| {
        let endpoint = endpoint.clone();
        let scratch = scratch.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            aws(&endpoint, &scratch, &a)
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // BYOK with the AWS CLI, as AWS's documentation walks through it.
    let created = run(s(&["kms", "create-key", "--origin", "EXTERNAL"]))
        .await
        .unwrap();
    let key = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created["KeyMetadata"]["KeyState"], "PendingImport");
    let p = run(s(&[
        "kms",
        "get-parameters-for-import",
        "--key-id",
        &key,
        "--wrapping-algorithm",
        "RSA_AES_KEY_WRAP_SHA_1",
        "--wrapping-key-spec",
        "RSA_4096",
    ]))
    .await
    .unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let public_key = b64.decode(p["PublicKey"].as_str().unwrap()).unwrap();
    assert_eq!(modulus_bits(&public_key), 4096);
    let token = b64.decode(p["ImportToken"].as_str().unwrap()).unwrap();
    let material = [0xa5u8; 32];
    std::fs::write(scratch.join("token.bin"), &token).unwrap();
    std::fs::write(
        scratch.join("wrapped.bin"),
        wrap("RSA_AES_KEY_WRAP_SHA_1", &public_key, &material),
    )
    .unwrap();
    let out = run(s(&[
        "kms",
        "import-key-material",
        "--key-id",
        &key,
        "--import-token",
        "fileb://token.bin",
        "--encrypted-key-material",
        "fileb://wrapped.bin",
        "--expiration-model",
        "KEY_MATERIAL_DOES_NOT_EXPIRE",
    ]))
    .await
    .unwrap();
    assert!(out["KeyId"].as_str().unwrap().ends_with(&key));
    let d = run(s(&["kms", "describe-key", "--key-id", &key]))
        .await
        .unwrap();
    assert_eq!(d["KeyMetadata"]["KeyState"], "Enabled");
    assert_eq!(
        d["KeyMetadata"]["ExpirationModel"],
        "KEY_MATERIAL_DOES_NOT_EXPIRE"
    );

    // The imported key encrypts (gRPC) and the blob opens with the known material.
    let mut c = admin(server.addr).await;
    let blob = encrypt(&mut c, &key, b"via the AWS door").await.unwrap();
    assert_eq!(
        open_locally(
            &material,
            &blob,
            &[("tenant", "byok"), ("purpose", "proof")]
        )
        .as_deref(),
        Some(&b"via the AWS door"[..])
    );

    // Rotation with the AWS CLI.
    let native = create_key(&mut c).await;
    run(s(&[
        "kms",
        "enable-key-rotation",
        "--key-id",
        &native,
        "--rotation-period-in-days",
        "180",
    ]))
    .await
    .unwrap();
    let st = run(s(&["kms", "get-key-rotation-status", "--key-id", &native]))
        .await
        .unwrap();
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["RotationPeriodInDays"], 180);
    assert!(st["NextRotationDate"].is_string() || st["NextRotationDate"].is_number());
    run(s(&["kms", "rotate-key-on-demand", "--key-id", &native]))
        .await
        .unwrap();
    let list = run(s(&["kms", "list-key-rotations", "--key-id", &native]))
        .await
        .unwrap();
    assert_eq!(list["Rotations"][0]["RotationType"], "ON_DEMAND");
    server.shutdown().await.unwrap();
}

// ------------------------------------------------------------------------------ MACs vs Python

/// HMAC of `message` under `key` computed by Python's standard `hmac` module (an independent
/// implementation), hex-decoded.
fn python_hmac(digest: &str, key: &[u8], message: &[u8]) -> Vec<u8> {
    let out = hermetic_command(venv().join("bin/python"), scratch_dir())
        .args([
            "-c",
            "import hmac,sys; print(hmac.new(bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3]).hexdigest())",
        ])
        .arg(hex::encode(key))
        .arg(hex::encode(message))
        .arg(digest)
        .output()
        .unwrap();
    assert_succeeded(&out, "python hmac failed");
    hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_hmac_keys_compute_the_same_macs_as_python_hmac() {
    let _one = SERIAL.lock().await;
    let (_dir, server, mut c) = start_admin("byok-hmac-python").await;
    for (spec, alg, digest, len) in [
        ("HMAC_224", "HMAC_SHA_224", "sha224", 28usize),
        ("HMAC_256", "HMAC_SHA_256", "sha256", 32),
        ("HMAC_384", "HMAC_SHA_384", "sha384", 48),
        ("HMAC_512", "HMAC_SHA_512", "sha512", 64),
    ] {
        // Known, spec-specific material (never all-equal bytes, so a wrong key shows).
        let material: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(37) ^ 0x5c)
            .collect();
        let key = import_known_hmac_material(&mut c, spec, &material).await;
        for message in [
            b"m".to_vec(),
            b"the quick brown fox".to_vec(),
            vec![0xA5; 4096],
        ] {
            let mac = c
                .generate_mac(pb::GenerateMacRequest {
                    message: message.clone(),
                    key_id: key.clone(),
                    mac_algorithm: alg.into(),
                    grant_tokens: vec![],
                    dry_run: false,
                })
                .await
                .reply()
                .mac;
            assert_eq!(
                mac,
                python_hmac(digest, &material, &message),
                "{spec}: the HSM's MAC differs from Python's hmac over the imported material"
            );
            // A MAC computed by Python verifies on the device; a changed one does not.
            let python = python_hmac(digest, &material, &message);
            let ok = c
                .verify_mac(pb::VerifyMacRequest {
                    message: message.clone(),
                    key_id: key.clone(),
                    mac_algorithm: alg.into(),
                    mac: python.clone(),
                    grant_tokens: vec![],
                    dry_run: false,
                })
                .await
                .reply();
            assert!(ok.mac_valid);
            let mut bad = python;
            bad[0] ^= 1;
            let r = c
                .verify_mac(pb::VerifyMacRequest {
                    message,
                    key_id: key.clone(),
                    mac_algorithm: alg.into(),
                    mac: bad,
                    grant_tokens: vec![],
                    dry_run: false,
                })
                .await;
            assert_eq!(reason(r), "KMSInvalidMacException");
        }
        // The wrong algorithm for the spec is a key-usage error, not a MAC.
        let other = if alg == "HMAC_SHA_256" {
            "HMAC_SHA_512"
        } else {
            "HMAC_SHA_256"
        };
        let r = c
            .generate_mac(pb::GenerateMacRequest {
                message: b"m".to_vec(),
                key_id: key.clone(),
                mac_algorithm: other.into(),
                grant_tokens: vec![],
                dry_run: false,
            })
            .await;
        assert_eq!(reason(r), "InvalidKeyUsageException");
    }
    server.shutdown().await.unwrap();
}
