//! DryRun (issue 12, item 2) on the gRPC door and in the CLI: each of the 15 operations whose
//! AWS input has `DryRun` checks everything a real call checks, then answers
//! DryRunOperationException (FAILED_PRECONDITION) with no HSM call and no stored change; a dry
//! run that would fail gets the real error; the audit event says it was a dry run. The AWS door
//! is covered by `aws_clients::boto3_dry_run_checks_and_changes_nothing`.

mod common;

use std::collections::BTreeMap;

use common::*;
use p11kms::pb;
use tonic::{Code, Status};

const DRY: &str = "DryRunOperationException";

/// Keys and inputs every operation needs.
struct Fixture {
    sym: String,
    other_sym: String,
    disabled: String,
    rsa: String,
    ecc: String,
    hmac: String,
    agree: String,
    blob: Vec<u8>,
    disabled_blob: Vec<u8>,
    rsa_blob: Vec<u8>,
    signature: Vec<u8>,
    mac: Vec<u8>,
    peer: Vec<u8>,
    grant_id: String,
    grant_token: String,
}

async fn create(c: &mut Client, spec: &str, usage: &str) -> String {
    create_key_from(c, key_request(spec, usage)).await
}

async fn encrypt_under(c: &mut Client, key: &str, alg: &str) -> Vec<u8> {
    c.encrypt(encrypt_request_alg(key, b"dry run", alg))
        .await
        .expect("encrypt")
        .into_inner()
        .ciphertext_blob
}

async fn fixture(c: &mut Client) -> Fixture {
    let sym = create(c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
    let other_sym = create(c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
    let disabled = create(c, "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").await;
    let rsa = create(c, "RSA_2048", "ENCRYPT_DECRYPT").await;
    let ecc = create(c, "ECC_NIST_P256", "SIGN_VERIFY").await;
    let hmac = create(c, "HMAC_256", "GENERATE_VERIFY_MAC").await;
    let agree = create(c, "ECC_NIST_P256", "KEY_AGREEMENT").await;
    let blob = encrypt_under(c, &sym, "").await;
    let disabled_blob = encrypt_under(c, &disabled, "").await;
    disable_key(c, &disabled).await;
    let rsa_blob = encrypt_under(c, &rsa, "RSAES_OAEP_SHA_256").await;
    let signature = c.sign(sign_req(&ecc, false)).await.reply().signature;
    let mac = c
        .generate_mac(pb::GenerateMacRequest {
            message: b"m".to_vec(),
            key_id: hmac.clone(),
            mac_algorithm: "HMAC_SHA_256".into(),
            ..Default::default()
        })
        .await
        .reply()
        .mac;
    let peer = public_key(c, &agree).await;
    let grant = c
        .create_grant(grant_req(&sym, &["Decrypt"], false))
        .await
        .reply();
    // user1 may encrypt under other_sym only with the context {"purpose": "x"}.
    c.create_grant(pb::CreateGrantRequest {
        constraints: Some(pb::GrantConstraints {
            encryption_context_equals: Some(pb::EncryptionContextConstraint {
                pairs: ctx(&[("purpose", "x")]),
            }),
            encryption_context_subset: None,
        }),
        ..grant_req(&other_sym, &["Encrypt"], false)
    })
    .await
    .unwrap();
    Fixture {
        sym,
        other_sym,
        disabled,
        rsa,
        ecc,
        hmac,
        agree,
        blob,
        disabled_blob,
        rsa_blob,
        signature,
        mac,
        peer,
        grant_id: grant.grant_id,
        grant_token: grant.grant_token,
    }
}

fn sign_req(key: &str, dry_run: bool) -> pb::SignRequest {
    pb::SignRequest {
        key_id: key.into(),
        message: b"m".to_vec(),
        signing_algorithm: "ECDSA_SHA_256".into(),
        dry_run,
        ..Default::default()
    }
}

fn grant_req(key: &str, ops: &[&str], dry_run: bool) -> pb::CreateGrantRequest {
    pb::CreateGrantRequest {
        key_id: key.into(),
        grantee_principal: USER1.into(),
        retiring_principal: ADMIN.into(),
        operations: ops.iter().map(|s| s.to_string()).collect(),
        dry_run,
        ..Default::default()
    }
}

fn decrypt_req(blob: &[u8], key: &str, dry_run: bool) -> pb::DecryptRequest {
    pb::DecryptRequest {
        ciphertext_blob: blob.to_vec(),
        key_id: key.into(),
        dry_run,
        ..Default::default()
    }
}

fn encrypt_req(key: &str, dry_run: bool) -> pb::EncryptRequest {
    pb::EncryptRequest {
        key_id: key.into(),
        plaintext: b"x".to_vec(),
        dry_run,
        ..Default::default()
    }
}

/// Asserts a dry run's answer: FAILED_PRECONDITION with DryRunOperationException and AWS's
/// message.
fn dry<T: std::fmt::Debug>(op: &str, r: Result<tonic::Response<T>, Status>) {
    let s = r.expect_err(op);
    assert_eq!(s.code(), Code::FailedPrecondition, "{op}: {s:?}");
    assert_eq!(reason::<()>(Err(s.clone())), DRY, "{op}");
    assert_eq!(
        s.message(),
        "The request would have succeeded, but the DryRun option is set.",
        "{op}"
    );
}

/// Every one of the 15 operations as a dry run that would succeed.
async fn dry_run_all(c: &mut Client, f: &Fixture) -> Vec<&'static str> {
    dry("Encrypt", c.encrypt(encrypt_req(&f.sym, true)).await);
    dry("Decrypt", c.decrypt(decrypt_req(&f.blob, "", true)).await);
    let r = c
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: f.blob.clone(),
            destination_key_id: f.other_sym.clone(),
            dry_run: true,
            ..Default::default()
        })
        .await;
    dry("ReEncrypt", r);
    let r = c
        .generate_data_key(pb::GenerateDataKeyRequest {
            key_id: f.sym.clone(),
            key_spec: "AES_256".into(),
            dry_run: true,
            ..Default::default()
        })
        .await;
    dry("GenerateDataKey", r);
    let r = c
        .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key_id: f.sym.clone(),
            key_spec: "AES_128".into(),
            dry_run: true,
            ..Default::default()
        })
        .await;
    dry("GenerateDataKeyWithoutPlaintext", r);
    let r = c
        .generate_data_key_pair(pb::GenerateDataKeyPairRequest {
            key_id: f.sym.clone(),
            key_pair_spec: "ECC_NIST_P256".into(),
            dry_run: true,
            ..Default::default()
        })
        .await;
    dry("GenerateDataKeyPair", r);
    let r = c
        .generate_data_key_pair_without_plaintext(pb::GenerateDataKeyPairWithoutPlaintextRequest {
            key_id: f.sym.clone(),
            key_pair_spec: "RSA_2048".into(),
            dry_run: true,
            ..Default::default()
        })
        .await;
    dry("GenerateDataKeyPairWithoutPlaintext", r);
    dry("Sign", c.sign(sign_req(&f.ecc, true)).await);
    // A dry run never verifies: a wrong signature is not looked at.
    let mut wrong = f.signature.clone();
    let last = wrong.len() - 1;
    wrong[last] ^= 1;
    for sig in [f.signature.clone(), wrong] {
        let r = c
            .verify(pb::VerifyRequest {
                key_id: f.ecc.clone(),
                message: b"m".to_vec(),
                signature: sig,
                signing_algorithm: "ECDSA_SHA_256".into(),
                dry_run: true,
                ..Default::default()
            })
            .await;
        dry("Verify", r);
    }
    let r = c
        .generate_mac(pb::GenerateMacRequest {
            message: b"m".to_vec(),
            key_id: f.hmac.clone(),
            mac_algorithm: "HMAC_SHA_256".into(),
            dry_run: true,
            ..Default::default()
        })
        .await;
    dry("GenerateMac", r);
    let r = c
        .verify_mac(pb::VerifyMacRequest {
            message: b"other message".to_vec(),
            key_id: f.hmac.clone(),
            mac_algorithm: "HMAC_SHA_256".into(),
            mac: f.mac.clone(),
            dry_run: true,
            ..Default::default()
        })
        .await;
    dry("VerifyMac", r);
    let r = c
        .derive_shared_secret(pb::DeriveSharedSecretRequest {
            key_id: f.agree.clone(),
            key_agreement_algorithm: "ECDH".into(),
            public_key: f.peer.clone(),
            dry_run: true,
            ..Default::default()
        })
        .await;
    dry("DeriveSharedSecret", r);
    // RSA-OAEP decrypt: the key is named, the blob's length checked, nothing decrypted.
    let r = c
        .decrypt(pb::DecryptRequest {
            encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            ..decrypt_req(&f.rsa_blob, &f.rsa, true)
        })
        .await;
    dry("Decrypt", r);
    dry(
        "CreateGrant",
        c.create_grant(grant_req(&f.sym, &["Encrypt"], true)).await,
    );
    // The same grant as an existing one (idempotent for a real call) is a dry run too.
    dry(
        "CreateGrant",
        c.create_grant(grant_req(&f.sym, &["Decrypt"], true)).await,
    );
    let r = c
        .retire_grant(pb::RetireGrantRequest {
            grant_token: f.grant_token.clone(),
            dry_run: true,
            ..Default::default()
        })
        .await;
    dry("RetireGrant", r);
    let r = c
        .revoke_grant(pb::RevokeGrantRequest {
            key_id: f.sym.clone(),
            grant_id: f.grant_id.clone(),
            dry_run: true,
        })
        .await;
    dry("RevokeGrant", r);
    // The engine's own list: an operation added there without a dry run here fails the
    // audit check below ("no dry-run event").
    p11kms::core::DRY_RUN_OPERATIONS.to_vec()
}

/// The error name of a call (success is a failure of the test).
async fn err_of<T: std::fmt::Debug>(
    r: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> String {
    reason(r.await)
}

/// An Encrypt under other_sym by its grantee, with or without the grant's context.
fn granted_encrypt(f: &Fixture, with_context: bool, dry_run: bool) -> pb::EncryptRequest {
    let pairs: &[(&str, &str)] = if with_context {
        &[("purpose", "x")]
    } else {
        &[("purpose", "y")]
    };
    pb::EncryptRequest {
        encryption_context: ctx(pairs),
        ..encrypt_req(&f.other_sym, dry_run)
    }
}

/// Dry runs that would fail get the real call's error, whatever it is.
async fn failing_dry_runs(c: &mut Client, user1: &mut Client, user2: &mut Client, f: &Fixture) {
    // (what, dry run's error, real call's error)
    let cases = [
        (
            "Encrypt by a user without permission",
            err_of(user2.encrypt(encrypt_req(&f.sym, true))).await,
            err_of(user2.encrypt(encrypt_req(&f.sym, false))).await,
        ),
        (
            "Decrypt by a user without permission",
            err_of(user2.decrypt(decrypt_req(&f.blob, "", true))).await,
            err_of(user2.decrypt(decrypt_req(&f.blob, "", false))).await,
        ),
        (
            "Encrypt by a grantee outside the grant's constraint",
            err_of(user1.encrypt(granted_encrypt(f, false, true))).await,
            err_of(user1.encrypt(granted_encrypt(f, false, false))).await,
        ),
        (
            "Encrypt under a disabled key",
            err_of(c.encrypt(encrypt_req(&f.disabled, true))).await,
            err_of(c.encrypt(encrypt_req(&f.disabled, false))).await,
        ),
        (
            "Decrypt checks the key the ciphertext names (disabled)",
            err_of(c.decrypt(decrypt_req(&f.disabled_blob, "", true))).await,
            err_of(c.decrypt(decrypt_req(&f.disabled_blob, "", false))).await,
        ),
        (
            "Decrypt with a KeyId that is not the ciphertext's key",
            err_of(c.decrypt(decrypt_req(&f.blob, &f.other_sym, true))).await,
            err_of(c.decrypt(decrypt_req(&f.blob, &f.other_sym, false))).await,
        ),
        (
            "Encrypt with a MAC key (wrong usage)",
            err_of(c.encrypt(encrypt_req(&f.hmac, true))).await,
            err_of(c.encrypt(encrypt_req(&f.hmac, false))).await,
        ),
        (
            "Sign with an encryption key (wrong usage)",
            err_of(c.sign(sign_req(&f.sym, true))).await,
            err_of(c.sign(sign_req(&f.sym, false))).await,
        ),
        (
            "CreateGrant of an operation the key cannot do",
            err_of(c.create_grant(grant_req(&f.sym, &["Sign"], true))).await,
            err_of(c.create_grant(grant_req(&f.sym, &["Sign"], false))).await,
        ),
        (
            "RevokeGrant by a user without permission",
            err_of(user2.revoke_grant(pb::RevokeGrantRequest {
                key_id: f.sym.clone(),
                grant_id: f.grant_id.clone(),
                dry_run: true,
            }))
            .await,
            err_of(user2.revoke_grant(pb::RevokeGrantRequest {
                key_id: f.sym.clone(),
                grant_id: f.grant_id.clone(),
                dry_run: false,
            }))
            .await,
        ),
    ];
    let expected = [
        "AccessDeniedException",
        "AccessDeniedException",
        "AccessDeniedException",
        "DisabledException",
        "DisabledException",
        "IncorrectKeyException",
        "InvalidKeyUsageException",
        "InvalidKeyUsageException",
        "ValidationException",
        "AccessDeniedException",
    ];
    for ((what, dry, real), want) in cases.iter().zip(expected) {
        assert_eq!(dry, real, "{what}: the dry run's error is the real one");
        assert_eq!(dry, want, "{what}");
    }
}

async fn grants_of(c: &mut Client, key: &str) -> Vec<String> {
    list_grants_of(c, key)
        .await
        .into_iter()
        .map(|g| g.grant_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_dry_runs_check_everything_and_change_nothing() {
    let (dir, server, mut c) = start_admin("dry-run-grpc").await;
    let mut user1 = client_as(server.addr, Some("user1")).await;
    let mut user2 = client_as(server.addr, Some("user2")).await;
    let f = fixture(&mut c).await;
    assert_eq!(grants_of(&mut c, &f.sym).await, vec![f.grant_id.clone()]);

    let before = store_snapshot(&server).await;
    let counters = server.kms.hsm().counters();
    let total = server.kms.hsm().total_ops();

    let ops = dry_run_all(&mut c, &f).await;
    // Within the grant's constraint, the grantee's dry run would succeed.
    dry(
        "Encrypt by a grantee",
        user1.encrypt(granted_encrypt(&f, true, true)).await,
    );
    failing_dry_runs(&mut c, &mut user1, &mut user2, &f).await;

    assert_eq!(
        server.kms.hsm().total_ops(),
        total,
        "a dry run reached the HSM"
    );
    assert_eq!(server.kms.hsm().counters(), counters);
    assert_eq!(
        store_snapshot(&server).await,
        before,
        "a dry run changed stored state"
    );
    assert_eq!(grants_of(&mut c, &f.sym).await, vec![f.grant_id.clone()]);

    // Control: the same calls without DryRun do reach the HSM and change the store.
    c.encrypt(encrypt_req(&f.sym, false)).await.unwrap();
    assert!(server.kms.hsm().total_ops() > total);
    c.revoke_grant(pb::RevokeGrantRequest {
        key_id: f.sym.clone(),
        grant_id: f.grant_id.clone(),
        dry_run: false,
    })
    .await
    .unwrap();
    assert!(grants_of(&mut c, &f.sym).await.is_empty());
    assert_ne!(store_snapshot(&server).await, before);
    drop((c, user1, user2));
    server.shutdown().await.unwrap();

    // The audit trail: each dry run's event says so, with its error code.
    let events = events(&dir);
    let dry_events: Vec<_> = events
        .iter()
        .filter(|e| e["requestParameters"]["dryRun"] == true)
        .collect();
    for op in &ops {
        assert!(
            dry_events
                .iter()
                .any(|e| e["eventName"] == *op && e["errorCode"] == DRY),
            "no dry-run event for {op}"
        );
    }
    let by_code: BTreeMap<String, usize> = dry_events.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["errorCode"].as_str().unwrap_or("none").to_string())
            .or_default() += 1;
        m
    });
    assert_eq!(by_code.get(DRY), Some(&19), "{by_code:?}");
    assert_eq!(
        by_code.get("AccessDeniedException"),
        Some(&4),
        "{by_code:?}"
    );
    assert_eq!(
        by_code.get("none"),
        None,
        "a dry run succeeded: {by_code:?}"
    );
    // A real call's event does not claim to be a dry run.
    assert!(events
        .iter()
        .filter(|e| e["eventName"] == "RevokeGrant" && e["errorCode"].is_null())
        .all(|e| e["requestParameters"].get("dryRun").is_none()));
}

/// Runs the real CLI binary with explicit connection flags, in an empty directory, with a
/// clean environment (no ambient client config or P11KMS_* variables).
fn cli(port: u16, cwd: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = hermetic_command(env!("CARGO_BIN_EXE_p11kms"), cwd)
        .args(args)
        .args(cli_connection(port, "admin"))
        .output()
        .expect("run p11kms");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_dry_run_encrypt_and_decrypt() {
    let (_dir, server, mut c) = start_admin("dry-run-cli").await;
    let key = create_key(&mut c).await;
    let port = server.addr.port();
    let scratch = tempfile::tempdir().unwrap();
    let cwd = scratch.path();
    std::fs::write(cwd.join("plain.txt"), b"secret words").unwrap();
    let blob = cwd.join("blob.bin");
    let (ok, _, err) = cli(
        port,
        cwd,
        &[
            "encrypt",
            "--key",
            &key,
            "--in",
            "plain.txt",
            "--out",
            "blob.bin",
        ],
    );
    assert!(ok, "{err}");
    assert!(blob.is_file());
    let other = create_key(&mut c).await;

    let before = store_snapshot(&server).await;
    let total = server.kms.hsm().total_ops();
    let (ok, out, err) = cli(
        port,
        cwd,
        &["encrypt", "--key", &key, "--in", "plain.txt", "--dry-run"],
    );
    assert!(!ok, "a dry run is not a success: {out}");
    assert!(out.trim().is_empty(), "no ciphertext printed: {out}");
    assert!(err.contains(DRY), "{err}");
    let (ok, out, err) = cli(port, cwd, &["decrypt", "--in", "blob.bin", "--dry-run"]);
    assert!(!ok && out.trim().is_empty(), "no plaintext printed: {out}");
    assert!(err.contains(DRY), "{err}");
    // A dry run that would fail: the real error.
    let (ok, _, err) = cli(
        port,
        cwd,
        &["decrypt", "--in", "blob.bin", "--key", &other, "--dry-run"],
    );
    assert!(!ok && err.contains("IncorrectKeyException"), "{err}");
    assert_eq!(store_snapshot(&server).await, before);
    assert_eq!(
        server.kms.hsm().total_ops(),
        total,
        "a CLI dry run reached the HSM"
    );

    // Control: without --dry-run, the plaintext comes back.
    let (ok, out, err) = cli(port, cwd, &["decrypt", "--in", "blob.bin"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "c2VjcmV0IHdvcmRz");
    drop(c);
    server.shutdown().await.unwrap();
}
