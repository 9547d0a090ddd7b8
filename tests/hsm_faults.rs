//! Device-fault tests: the real daemon (in-process, gRPC over mutual TLS) in front of a PKCS#11
//! fault shim (`tests/fault-shim/shim.c`) that forwards to SoftHSM2 and fails chosen calls on
//! command. They check that a forged ciphertext is told apart from a sick device:
//! InvalidCiphertextException (INVALID_ARGUMENT) for the one, KeyUnavailableException
//! (UNAVAILABLE) for the other, and that the daemon recovers once the device does.
//!
//! - The shim is compiled at run time with the system C compiler (`cc`, or `$CC`). Without a
//!   compiler the tests print `SKIPPED: ...` and return. When `libp11-kit-dev`'s standard
//!   `pkcs11.h` is present, the shim's CK_FUNCTION_LIST layout is also checked against it.
//! - Only the shim is loaded in this process (never SoftHSM2 directly): one PKCS#11 instance.
//! - Faults are files in one control directory for the whole process, so the tests that flip
//!   them are serialised (`faults()`), and every test starts from no faults.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::shim::{faults_on, Faults, Shim};
use common::*;
use p11kms::api::grpc::status::aws_reason;
use p11kms::config::Config;
use p11kms::core::ManualClock;
use p11kms::hsm::{OaepSha256, ObjectId};
use p11kms::pb;
use p11kms::server::{self, RunningServer, ServerError, ServerOptions};
use tonic::Code;

const PLAINTEXT: &[u8] = b"attack at dawn";
const EC: &[(&str, &str)] = &[("purpose", "fault-test")];

// ------------------------------------------------------------------------- the shim

/// The shim in front of the system SoftHSM2 (only the shim is loaded in this process).
async fn faults() -> Option<Faults> {
    let target = p11kms::devsetup::find_softhsm_module().expect("SoftHSM2 module not found");
    faults_on(&target).await
}

/// A daemon config with `hsm.module` = the shim (everything else as the harness makes it).
fn shim_config(shim: &Shim, name: &str) -> Config {
    shim_config_with(shim, name, "")
}

/// [`shim_config`] with `hsm_lines` added to the `[hsm]` section.
fn shim_config_with(shim: &Shim, name: &str, hsm_lines: &str) -> Config {
    shim_config_more(shim, name, hsm_lines, |_| String::new())
}

/// [`shim_config_with`] plus the sections `more` gives for the data directory.
fn shim_config_more(
    shim: &Shim,
    name: &str,
    hsm_lines: &str,
    more: impl FnOnce(&std::path::Path) -> String,
) -> Config {
    let dir = data_dir(name);
    let softhsm = p11kms::devsetup::find_softhsm_module().unwrap();
    let text = config_text(&dir);
    let from = format!("module = \"{}\"", softhsm.display());
    assert!(
        text.contains(&from),
        "harness config has no `{from}` line:\n{text}"
    );
    let text = text.replace(
        &from,
        &format!("module = \"{}\"\n{hsm_lines}", shim.lib.display()),
    ) + &more(&dir);
    let config = load_config_text(&dir.join("p11kms.toml"), text);
    assert_eq!(config.hsm.module, shim.lib, "the daemon must use the shim");
    config
}

async fn start_config(config: &Config) -> Result<RunningServer, ServerError> {
    server::start(
        config,
        ServerOptions {
            clock: Arc::new(ManualClock::default()),
            sweep_interval: Some(Duration::from_millis(50)),
        },
    )
    .await
}

/// Starts the daemon with `config` (on the shim), with an admin client, a new key and a blob
/// of [`PLAINTEXT`] under it.
async fn start_with_blob(config: &Config) -> (RunningServer, Client, String, Vec<u8>) {
    let server = start_config(config)
        .await
        .expect("daemon starts on the shim");
    let mut c = admin(server.addr).await;
    let key = create_key(&mut c).await;
    let blob = encrypt(&mut c, &key, PLAINTEXT).await.expect("encrypt");
    (server, c, key, blob)
}

/// Starts the daemon on the shim.
async fn start_shimmed(shim: &Shim, name: &str) -> Result<RunningServer, ServerError> {
    start_config(&shim_config(shim, name)).await
}

// ------------------------------------------------------------------------- helpers

async fn encrypt(c: &mut Client, key: &str, pt: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    encrypt_with(c, key, pt, EC).await
}

async fn decrypt(c: &mut Client, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    decrypt_with(c, blob, EC).await
}

/// Checks that `blob` decrypts to [`PLAINTEXT`]; `what` names the step when it does not.
async fn assert_opens(c: &mut Client, blob: &[u8], what: &str) {
    let pt = decrypt(c, blob)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    assert_eq!(pt, PLAINTEXT, "{what}");
}

/// (gRPC code, AWS reason, message) of a call that must have failed.
#[track_caller]
fn failure<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) -> (Code, String, String) {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(s) => (
            s.code(),
            aws_reason(&s).unwrap_or_else(|| "<no ErrorInfo reason>".into()),
            s.message().to_string(),
        ),
    }
}

/// `r` failed with the gRPC `code` and the AWS exception `reason`.
#[track_caller]
fn assert_failed_as<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    (code, reason): (Code, &str),
) {
    let (got_code, got_reason, msg) = failure(what, r);
    assert_eq!(
        (got_code, got_reason.as_str()),
        (code, reason),
        "{what}: {msg}"
    );
}

#[track_caller]
fn assert_invalid_ciphertext<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    assert_failed_as(
        what,
        r,
        (Code::InvalidArgument, "InvalidCiphertextException"),
    );
}

/// A device failure: KeyUnavailableException / UNAVAILABLE (never InvalidCiphertext, never
/// Internal).
#[track_caller]
fn assert_unavailable<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    assert_failed_as(what, r, (Code::Unavailable, "KeyUnavailableException"));
}

type Counters = BTreeMap<&'static str, u64>;

fn counters(s: &RunningServer) -> Counters {
    s.kms.hsm().counters()
}

fn delta(before: &Counters, after: &Counters, f: &str) -> u64 {
    after.get(f).copied().unwrap_or(0) - before.get(f).copied().unwrap_or(0)
}

async fn key_count(c: &mut Client) -> usize {
    list_key_ids(c, Some(1000)).await.len()
}

/// `n` concurrent decrypts of `blob` and encrypts under `key`; every one must succeed (so
/// both HSM workers are exercised, whichever picks a job up).
async fn concurrent_round_trips(c: &Client, key: &str, blob: &[u8], n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = c.clone();
        let key = key.to_string();
        let blob = blob.to_vec();
        tasks.push(tokio::spawn(async move {
            let pt = decrypt(&mut c, &blob)
                .await
                .unwrap_or_else(|e| panic!("decrypt #{i}: {e:?}"));
            assert_eq!(pt, PLAINTEXT, "decrypt #{i}");
            let fresh = encrypt(&mut c, &key, PLAINTEXT)
                .await
                .unwrap_or_else(|e| panic!("encrypt #{i}: {e:?}"));
            assert_eq!(
                decrypt(&mut c, &fresh).await.unwrap(),
                PLAINTEXT,
                "round trip #{i}"
            );
        }));
    }
    for t in tasks {
        t.await.expect("round-trip task");
    }
}

// ------------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_blob_is_invalid_ciphertext_but_dead_device_is_unavailable() {
    let Some(f) = faults().await else { return };
    let (server, mut c, key, blob) = start_with_blob(&shim_config(&f, "forged")).await;
    assert_eq!(decrypt(&mut c, &blob).await.expect("decrypt"), PLAINTEXT);

    // (a) A flipped GCM tag bit on a healthy device: the device answers CKR_GENERAL_ERROR, the
    // probes succeed, the caller gets InvalidCiphertextException.
    let mut forged = blob.clone();
    *forged.last_mut().unwrap() ^= 0x01;
    let before = counters(&server);
    assert_invalid_ciphertext("forged tag", decrypt(&mut c, &forged).await);
    let after = counters(&server);
    assert!(
        delta(&before, &after, "C_Decrypt") >= 1,
        "the forged blob never reached the device"
    );
    assert!(
        delta(&before, &after, "C_GetSessionInfo") >= 1
            && delta(&before, &after, "C_GetAttributeValue") >= 1,
        "the decrypt failure was not classified by probing the device: {before:?} -> {after:?}"
    );

    // (b) The device answers a VALID blob like a tag failure while every probe succeeds: the
    // daemon cannot tell it from a forgery and must say InvalidCiphertextException.
    f.set("decrypt_general_error");
    let before = counters(&server);
    assert_invalid_ciphertext(
        "valid blob, C_Decrypt -> CKR_GENERAL_ERROR",
        decrypt(&mut c, &blob).await,
    );
    let after = counters(&server);
    assert!(
        delta(&before, &after, "C_GetSessionInfo") >= 1,
        "no session probe ran"
    );
    f.unset("decrypt_general_error");
    assert_opens(&mut c, &blob, "decrypt after (b)").await;

    // (c) Dead device: every call fails with CKR_DEVICE_ERROR. Several attempts, so both
    // workers see it.
    f.set("dead");
    for i in 0..4 {
        assert_unavailable(
            &format!("decrypt while dead #{i}"),
            decrypt(&mut c, &blob).await,
        );
        assert_unavailable(
            &format!("encrypt while dead #{i}"),
            encrypt(&mut c, &key, PLAINTEXT).await,
        );
    }
    // The forged blob too: a dead device must not turn a forgery into anything but
    // "unavailable" (and must never vouch for it).
    assert_unavailable("forged blob while dead", decrypt(&mut c, &forged).await);
    f.unset("dead");

    // (c') C_Decrypt answers like a tag failure but a probe fails: the device is sick, not the
    // blob. First the session probe, then the key probe.
    f.set("decrypt_general_error");
    for (probe, which) in [
        ("C_GetSessionInfo", "session"),
        ("C_GetAttributeValue", "key"),
    ] {
        let fault = format!("fail_{probe}");
        f.set(&fault);
        let before = counters(&server);
        assert_unavailable(
            &format!("tag-like failure, {which} probe fails"),
            decrypt(&mut c, &blob).await,
        );
        let after = counters(&server);
        assert!(delta(&before, &after, probe) >= 1, "no {which} probe ran");
        f.unset(&fault);
    }

    // A session probe that answers "session handle invalid" (device reset under us).
    f.fail_with("C_GetSessionInfo", 0xb3);
    assert_unavailable(
        "tag-like failure, session handle invalid",
        decrypt(&mut c, &blob).await,
    );
    f.unset("fail_C_GetSessionInfo");
    f.unset("decrypt_general_error");

    // (c'') C_Decrypt itself reports a device error: unavailable, whatever the probes say.
    f.set("fail_C_Decrypt");
    assert_unavailable(
        "C_Decrypt -> CKR_DEVICE_ERROR",
        decrypt(&mut c, &blob).await,
    );
    f.unset("fail_C_Decrypt");

    // (d) The device is back: the very first decrypt works (broken sessions are reopened
    // before the next job), and so does everything after it, on both workers.
    f.clear();
    let before = counters(&server);
    assert_opens(&mut c, &blob, "first decrypt after recovery").await;
    concurrent_round_trips(&c, &key, &blob, 8).await;
    let after = counters(&server);
    eprintln!(
        "recovery: C_OpenSession +{}, C_Login +{} after the faults were cleared",
        delta(&before, &after, "C_OpenSession"),
        delta(&before, &after, "C_Login")
    );
    // And a forgery is still a forgery.
    assert_invalid_ciphertext("forged tag after recovery", decrypt(&mut c, &forged).await);

    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_device_fails_every_hsm_operation_as_unavailable_and_recovers() {
    let Some(f) = faults().await else { return };
    let (server, mut c, key, blob) = start_with_blob(&shim_config(&f, "dead")).await;
    let keys_before = key_count(&mut c).await;

    f.set("dead");
    assert_unavailable(
        "GenerateRandom while dead",
        c.generate_random(pb::GenerateRandomRequest {
            number_of_bytes: Some(32),
            ..Default::default()
        })
        .await,
    );
    assert_unavailable(
        "GenerateDataKey while dead",
        c.generate_data_key(data_key_request(&key)).await,
    );
    assert_unavailable(
        "GenerateDataKeyWithoutPlaintext while dead",
        c.generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key_id: key.clone(),
            key_spec: "AES_256".into(),
            ..Default::default()
        })
        .await,
    );
    assert_unavailable(
        "ReEncrypt while dead",
        c.re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob.clone(),
            source_encryption_context: ctx(EC),
            destination_key_id: key.clone(),
            ..Default::default()
        })
        .await,
    );
    // CreateKey: an internal or unavailable error, and no half-created key left behind.
    let (code, reason, msg) = failure(
        "CreateKey while dead",
        c.create_key(pb::CreateKeyRequest::default()).await,
    );
    assert!(
        matches!(
            (code, reason.as_str()),
            (Code::Unavailable, "KeyUnavailableException")
                | (Code::Internal, "KMSInternalException")
        ),
        "CreateKey while dead: {code:?} {reason}: {msg}"
    );
    // Metadata-only operations do not need the device.
    let described = describe_key(&mut c, &key).await;
    assert_eq!(described.key_state, "Enabled");
    assert_eq!(
        key_count(&mut c).await,
        keys_before,
        "a failed CreateKey left a key behind"
    );

    // A daemon cannot start on a dead device: it must say so, promptly.
    let second = tokio::time::timeout(Duration::from_secs(30), start_shimmed(&f, "dead-start"))
        .await
        .expect("starting a daemon on a dead HSM hangs");
    assert!(second.is_err(), "a daemon started on a dead HSM");

    // Recovery.
    f.clear();
    let random = c
        .generate_random(pb::GenerateRandomRequest {
            number_of_bytes: Some(32),
            ..Default::default()
        })
        .await
        .expect("GenerateRandom after recovery")
        .into_inner()
        .plaintext;
    assert_eq!(random.len(), 32);
    let dk = c
        .generate_data_key(pb::GenerateDataKeyRequest {
            key_id: key.clone(),
            key_spec: "AES_256".into(),
            encryption_context: ctx(EC),
            ..Default::default()
        })
        .await
        .expect("GenerateDataKey after recovery")
        .into_inner();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(
        decrypt(&mut c, &dk.ciphertext_blob)
            .await
            .expect("decrypt data key"),
        dk.plaintext
    );
    let re = c
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob.clone(),
            source_encryption_context: ctx(EC),
            destination_key_id: key.clone(),
            destination_encryption_context: ctx(EC),
            ..Default::default()
        })
        .await
        .expect("ReEncrypt after recovery")
        .into_inner()
        .ciphertext_blob;
    assert_opens(&mut c, &re, "decrypt re-encrypted").await;
    let key2 = create_key(&mut c).await;
    assert_eq!(key_count(&mut c).await, keys_before + 1);
    let blob2 = encrypt(&mut c, &key2, PLAINTEXT)
        .await
        .expect("encrypt under a new key");
    assert_opens(&mut c, &blob2, "decrypt under a new key").await;
    concurrent_round_trips(&c, &key, &blob, 8).await;

    // A daemon can start again, and serves the keys created before the outage.
    let third = start_shimmed(&f, "after-outage")
        .await
        .expect("daemon starts after recovery");
    third.shutdown().await.expect("shutdown");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_reset_closes_every_session_and_the_daemon_recovers() {
    let Some(f) = faults().await else { return };
    let config = shim_config(&f, "reset");
    let workers = config.hsm.workers as u64;
    let (server, mut c, key, blob) = start_with_blob(&config).await;
    for _ in 0..4 {
        assert_eq!(decrypt(&mut c, &blob).await.unwrap(), PLAINTEXT);
    }

    // The next PKCS#11 call closes every session of the process on the token (the user is
    // logged out, every object handle becomes invalid), as a device reset does.
    f.set("reset");
    let before = counters(&server);
    // One request alone first, so that the reset (which closes sessions under SoftHSM2's
    // feet) happens while no other request is inside the library: SoftHSM2 itself is not
    // safe against C_CloseAllSessions racing a call on another thread, which once crashed
    // this test process. Then batches of concurrent decrypts until every worker has reopened
    // its session (so each has run at least one job since the reset), tolerating device
    // failures meanwhile.
    let mut failures: Vec<tonic::Status> = Vec::new();
    match decrypt(&mut c, &blob).await {
        Ok(pt) => assert_eq!(pt, PLAINTEXT),
        Err(s) => failures.push(s),
    }
    let mut batches = 0;
    while delta(&before, &counters(&server), "C_OpenSession") < workers && batches < 20 {
        batches += 1;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut c = c.clone();
            let blob = blob.clone();
            tasks.push(tokio::spawn(async move { decrypt(&mut c, &blob).await }));
        }
        for t in tasks {
            match t.await.unwrap() {
                Ok(pt) => assert_eq!(pt, PLAINTEXT),
                Err(s) => failures.push(s),
            }
        }
    }
    assert!(!f.is_set("reset"), "the reset was never triggered");
    let after = counters(&server);
    eprintln!(
        "device reset: {} failed request(s) in {} batch(es) of 4 until all {workers} workers \
         reopened their sessions (C_OpenSession +{}, C_Login +{}, C_FindObjects +{}): {:?}",
        failures.len(),
        batches,
        delta(&before, &after, "C_OpenSession"),
        delta(&before, &after, "C_Login"),
        delta(&before, &after, "C_FindObjects"),
        failures
            .iter()
            .map(|s| s.message().to_string())
            .collect::<Vec<_>>()
    );
    assert!(
        delta(&before, &counters(&server), "C_OpenSession") >= workers,
        "the workers did not all reopen their sessions after a device reset: {failures:?}"
    );
    for s in &failures {
        assert_eq!(
            (s.code(), aws_reason(s).as_deref()),
            (Code::Unavailable, Some("KeyUnavailableException")),
            "a device reset must look unavailable, never like a bad ciphertext: {s:?}"
        );
    }
    // At most one failed request per worker session.
    assert!(
        failures.len() as u64 <= workers,
        "{} requests failed after a device reset ({workers} workers)",
        failures.len()
    );

    // Every worker has a fresh session: everything works from now on.
    for i in 0..6 {
        assert_opens(&mut c, &blob, &format!("decrypt #{i} after reset")).await;
    }
    concurrent_round_trips(&c, &key, &blob, 8).await;
    let key2 = create_key(&mut c).await;
    let blob2 = encrypt(&mut c, &key2, PLAINTEXT)
        .await
        .expect("encrypt under a new key");
    assert_eq!(decrypt(&mut c, &blob2).await.unwrap(), PLAINTEXT);

    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_device_reset_only_one_request_fails() {
    let Some(f) = faults().await else { return };
    let config = shim_config(&f, "reset-seq");
    let (server, mut c, _key, blob) = start_with_blob(&config).await;
    // Warm every worker so each holds a session and a cached handle.
    for _ in 0..8 {
        assert_eq!(decrypt(&mut c, &blob).await.unwrap(), PLAINTEXT);
    }
    f.set("reset");
    // Sequential requests: the first one to hit the dead session fails; every other worker
    // learns of the reset from the shared epoch and reopens before its next job.
    let mut failures = 0;
    for _ in 0..12 {
        match decrypt(&mut c, &blob).await {
            Ok(pt) => assert_eq!(pt, PLAINTEXT),
            Err(s) => {
                assert_eq!(aws_reason(&s).as_deref(), Some("KeyUnavailableException"));
                failures += 1;
            }
        }
    }
    assert!(!f.is_set("reset"), "the reset was never triggered");
    assert!(
        failures <= 1,
        "{failures} sequential requests failed after one device reset"
    );
    server.shutdown().await.expect("shutdown");
}

/// The health status of the KMS service, polled until it equals `want` (bounded).
async fn wait_health(addr: std::net::SocketAddr, want: i32) -> i32 {
    let mut status = -1;
    for _ in 0..60 {
        status = health_now(addr).await;
        if status == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    status
}

/// The health status of the KMS service now (-1 if the check fails).
async fn health_now(addr: std::net::SocketAddr) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    health_client(addr)
        .await
        .check(HealthCheckRequest {
            service: "p11kms.v1.KeyManagementService".into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_device() {
    let Some(f) = faults().await else { return };
    let config = shim_config(&f, "health");
    let server = start_config(&config)
        .await
        .expect("daemon starts on the shim");
    // 1 = SERVING, 2 = NOT_SERVING (grpc.health.v1).
    assert_eq!(wait_health(server.addr, 1).await, 1);
    f.set("dead");
    assert_eq!(
        wait_health(server.addr, 2).await,
        2,
        "dead HSM must be NOT_SERVING"
    );
    f.clear();
    assert_eq!(
        wait_health(server.addr, 1).await,
        1,
        "recovered HSM must be SERVING"
    );
    server.shutdown().await.expect("shutdown");
}

// ------------------------------------------------------------- RSA-OAEP with SHA-256

/// (C_EncryptInit, C_DecryptInit) calls the shim passed on as OAEP with SHA-256.
fn oaep_sha256_calls(shim: &Shim) -> (usize, usize) {
    let log = std::fs::read_to_string(shim.control.join("oaep_sha256.log")).unwrap_or_default();
    let count = |f: &str| log.lines().filter(|l| *l == f).count();
    (count("C_EncryptInit"), count("C_DecryptInit"))
}

/// Raw RSA only where the device lacks RSA-OAEP with SHA-256 (issue 12, item 10). SoftHSM2
/// 2.6 does OAEP with SHA-1 only: the daemon's probe finds that, RSA decryption keys carry
/// `CKM_RSA_X_509` on the device, and an OpenSSL OAEP-SHA-256 ciphertext opens. With the shim
/// standing in for a device that does OAEP-SHA-256 (`oaep_sha256_as_sha1`), the probe finds
/// that, the keys carry `CKM_RSA_PKCS_OAEP` only (so the device refuses raw RSA with them),
/// and Encrypt and Decrypt with RSAES_OAEP_SHA_256 each ask the device for OAEP with SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_rsa_only_where_the_device_lacks_oaep_sha256() {
    let Some(f) = faults().await else { return };
    for device_has_it in [false, true] {
        if device_has_it {
            f.set("oaep_sha256_as_sha1");
        }
        let server = start_shimmed(&f, "oaep-sha256")
            .await
            .expect("daemon starts");
        let mut c = admin(server.addr).await;
        let key = create_key_from(&mut c, key_request("RSA_2048", "ENCRYPT_DECRYPT")).await;
        let hsm = server.kms.hsm();
        let (found, want) = if device_has_it {
            (OaepSha256::Device, vec!["RSA_PKCS_OAEP"])
        } else {
            (OaepSha256::RawRsa, vec!["RSA_PKCS_OAEP", "RSA_X_509"])
        };
        assert_eq!(hsm.oaep_sha256().await.unwrap(), found);
        let id = ObjectId::new(*uuid::Uuid::parse_str(&key).unwrap().as_bytes(), 1);
        for private in [true, false] {
            let mut got = hsm
                .key_pair_attributes(id, private)
                .await
                .unwrap()
                .allowed_mechanisms;
            got.sort();
            assert_eq!(got, want, "private half: {private}");
        }

        let before = oaep_sha256_calls(&f);
        for alg in ["RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1"] {
            let pt = format!("{alg} round trip").into_bytes();
            let sealed = c
                .encrypt(encrypt_request_alg(&key, &pt, alg))
                .await
                .unwrap_or_else(|e| panic!("Encrypt {alg}: {e}"))
                .into_inner()
                .ciphertext_blob;
            let opened = c
                .decrypt(decrypt_request_alg(&sealed, &key, alg))
                .await
                .unwrap_or_else(|e| panic!("Decrypt {alg}: {e}"))
                .into_inner()
                .plaintext;
            assert_eq!(opened, pt, "{alg}");
        }
        let (enc, dec) = oaep_sha256_calls(&f);
        if device_has_it {
            assert_eq!(
                (enc - before.0, dec - before.1),
                (1, 1),
                "OAEP-SHA-256 on the device"
            );
        } else {
            assert_eq!((enc, dec), (0, 0), "the shim was pass-through");
            // Raw RSA with the daemon's padding is real OAEP-SHA-256: OpenSSL's opens.
            let spki = public_key(&mut c, &key).await;
            let pt = b"sealed by openssl".to_vec();
            let opened = c
                .decrypt(decrypt_request_alg(
                    &openssl_oaep_encrypt(&spki, "sha256", &pt),
                    &key,
                    "RSAES_OAEP_SHA_256",
                ))
                .await
                .reply()
                .plaintext;
            assert_eq!(opened, pt);
        }
        // The probe's throwaway key pair is gone.
        let probe_objects = labelled_objects(hsm, |l| l.contains("oaep-sha256-probe")).await;
        assert_eq!(probe_objects, 0);
        drop(c);
        server.shutdown().await.unwrap();
        f.clear();
    }
}

// ------------------------------------------------------------- lost sessions (issue 14 item 5)

/// CKR_SESSION_HANDLE_INVALID.
const SESSION_HANDLE_INVALID: u64 = 0xb3;

async fn generate_random(c: &mut Client) -> Result<Vec<u8>, tonic::Status> {
    c.generate_random(pb::GenerateRandomRequest {
        number_of_bytes: Some(32),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().plaintext)
}

async fn generate_data_key(c: &mut Client, key: &str) -> Result<Vec<u8>, tonic::Status> {
    c.generate_data_key(pb::GenerateDataKeyRequest {
        key_id: key.into(),
        key_spec: "AES_256".into(),
        encryption_context: ctx(EC),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().ciphertext_blob)
}

/// A job whose session dies before it could have changed anything runs once more on a fresh
/// session: isolated CKR_SESSION_HANDLE_INVALID faults on every step of Encrypt, Decrypt,
/// GenerateRandom and GenerateDataKey never reach the client. Two failures in a row do, as
/// KeyUnavailableException; a job that creates a token object (CreateKey) is never retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_is_retried_once_invisibly() {
    let Some(f) = faults().await else { return };
    let (server, mut c, key, blob) = start_with_blob(&shim_config(&f, "retry")).await;
    let retries = |s: &RunningServer| s.kms.hsm().stats().retried_lost_session;

    // Isolated faults, one at a time, on every PKCS#11 step of the hot operations.
    let retries_before = retries(&server);
    let steps = [
        "C_EncryptInit",
        "C_Encrypt",
        "C_DecryptInit",
        "C_Decrypt",
        "C_GenerateRandom",
    ];
    let mut expected = 0;
    for round in 0..2 {
        for step in steps {
            f.burst(step, SESSION_HANDLE_INVALID, 1);
            let what = format!("round {round}, fault on {step}");
            let fresh = encrypt(&mut c, &key, PLAINTEXT)
                .await
                .unwrap_or_else(|e| panic!("Encrypt, {what}: {e:?}"));
            assert_opens(&mut c, &fresh, &format!("Decrypt, {what}")).await;
            assert_opens(&mut c, &blob, &format!("Decrypt old, {what}")).await;
            let dk = generate_data_key(&mut c, &key)
                .await
                .unwrap_or_else(|e| panic!("GenerateDataKey, {what}: {e:?}"));
            assert!(decrypt(&mut c, &dk).await.is_ok(), "{what}");
            generate_random(&mut c)
                .await
                .unwrap_or_else(|e| panic!("GenerateRandom, {what}: {e:?}"));
            assert!(!f.is_set(&format!("burst_{step}")), "{what}: never fired");
            expected += 1;
        }
    }
    assert_eq!(f.injected(), expected, "every fault fired exactly once");
    assert_eq!(
        retries(&server) - retries_before,
        expected as u64,
        "one retry per lost session"
    );

    // Isolated faults under concurrent load: still no client-visible failure.
    for _ in 0..4 {
        f.burst("C_Decrypt", SESSION_HANDLE_INVALID, 1);
        f.burst("C_Encrypt", SESSION_HANDLE_INVALID, 1);
        concurrent_round_trips(&c, &key, &blob, 6).await;
    }
    assert_eq!(f.injected(), expected + 8);

    // Two failures in a row: the retry fails too, and the client sees it.
    let before = counters(&server);
    f.burst("C_Decrypt", SESSION_HANDLE_INVALID, 2);
    assert_unavailable("two lost sessions in a row", decrypt(&mut c, &blob).await);
    let after = counters(&server);
    assert_eq!(
        delta(&before, &after, "C_Decrypt"),
        2,
        "one attempt and one retry"
    );
    assert_eq!(decrypt(&mut c, &blob).await.expect("after"), PLAINTEXT);

    // CreateKey creates a token object: never retried, whatever the failure.
    let keys_before = key_count(&mut c).await;
    let before = counters(&server);
    let retries_before = retries(&server);
    f.burst("C_GenerateKey", SESSION_HANDLE_INVALID, 1);
    let (code, reason, msg) = failure(
        "CreateKey on a lost session",
        c.create_key(pb::CreateKeyRequest::default()).await,
    );
    assert_eq!(
        (code, reason.as_str()),
        (Code::Unavailable, "KeyUnavailableException"),
        "{msg}"
    );
    let after = counters(&server);
    assert_eq!(
        delta(&before, &after, "C_GenerateKey"),
        1,
        "CreateKey was retried"
    );
    assert_eq!(retries(&server), retries_before);
    assert_eq!(key_count(&mut c).await, keys_before);
    create_key(&mut c).await;

    server.shutdown().await.expect("shutdown");
}

// ------------------------------------------------------------- stalled calls (issue 14 item 4)

/// Every C_Decrypt stalls (2 s per call; cryptoki calls it twice per decrypt) while as many
/// Decrypt streams as there are workers run beside an Encrypt load. Each stalled worker is
/// abandoned after `stall_limit_ms` and replaced by a new worker with a new session, so the
/// Encrypts keep succeeding (none times out), health stays SERVING, the degraded metric
/// shows, and the Decrypts themselves still complete. Once the device is well, the stuck
/// threads close their sessions and the degraded state clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_call_holds_up_its_own_request_only() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let Some(f) = faults().await else { return };
    let config = shim_config_with(&f, "stall", "stall_limit_ms = 500");
    let workers = config.hsm.workers;
    let (server, c, key, blob) = start_with_blob(&config).await;
    let maddr = server.metrics_addr.expect("metrics enabled");
    assert_eq!(sample(&scrape(maddr).await, "p11kms_hsm_degraded "), 0.0);
    let before = counters(&server);

    f.delay("C_Decrypt", 2000);
    let decrypts: Vec<_> = (0..workers)
        .map(|i| {
            let mut c = c.clone();
            let blob = blob.clone();
            tokio::spawn(async move {
                for round in 0..2 {
                    let pt = decrypt(&mut c, &blob)
                        .await
                        .unwrap_or_else(|e| panic!("stalled decrypt {i}/{round}: {e:?}"));
                    assert_eq!(pt, PLAINTEXT);
                }
            })
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let encrypts: Vec<_> = (0..4)
        .map(|_| {
            let mut c = c.clone();
            let key = key.clone();
            let (done, succeeded) = (Arc::clone(&done), Arc::clone(&succeeded));
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    match encrypt(&mut c, &key, PLAINTEXT).await {
                        Ok(_) => {
                            succeeded.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(s) => failures.push(format!("{:?} {}", s.code(), s.message())),
                    }
                }
                failures
            })
        })
        .collect();

    // A stuck worker is replaced; meanwhile the device is degraded but serving.
    let mut polls = 0;
    while server.kms.hsm().stats().workers_replaced == 0 {
        polls += 1;
        assert!(polls < 200, "no stalled worker was replaced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_degraded = succeeded.load(Ordering::SeqCst);
    let metrics = scrape(maddr).await;
    assert_eq!(sample(&metrics, "p11kms_hsm_degraded "), 1.0, "{metrics}");
    assert!(sample(&metrics, "p11kms_hsm_stuck_workers ") >= 1.0);
    assert!(sample(&metrics, "p11kms_hsm_workers_replaced_total ") >= 1.0);
    // Health stays SERVING (1) while other sessions answer: checked repeatedly, not polled
    // until it happens to be.
    for i in 0..10 {
        assert_eq!(
            health_now(server.addr).await,
            1,
            "health check {i} while degraded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for d in decrypts {
        d.await.expect("decrypt stream");
    }
    let at_decrypts_done = succeeded.load(Ordering::SeqCst);
    done.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for e in encrypts {
        failures.extend(e.await.expect("encrypt stream"));
    }
    let total = succeeded.load(Ordering::SeqCst);
    eprintln!(
        "stalled C_Decrypt: {total} Encrypts succeeded ({at_degraded} before the first \
         replacement, {at_decrypts_done} by the end of the stalled Decrypts), {} failed; \
         workers replaced: {}",
        failures.len(),
        server.kms.hsm().stats().workers_replaced
    );
    assert!(failures.is_empty(), "Encrypts failed: {failures:?}");
    assert!(
        at_decrypts_done > at_degraded,
        "no Encrypt succeeded while a worker was stuck"
    );

    // The device is well again: the stuck threads return, close their sessions, and the
    // degraded state clears.
    f.unset("delay_C_Decrypt");
    let mut polls = 0;
    while server.kms.hsm().stats().stuck_workers > 0 {
        polls += 1;
        assert!(polls < 200, "abandoned workers never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replaced = server.kms.hsm().stats().workers_replaced;
    assert!(
        replaced >= workers as u64,
        "every stalled stream should have cost one worker: {replaced}"
    );
    let after = counters(&server);
    assert!(delta(&before, &after, "C_CloseSession") >= replaced);
    assert!(delta(&before, &after, "C_OpenSession") >= replaced);
    assert_eq!(sample(&scrape(maddr).await, "p11kms_hsm_degraded "), 0.0);
    concurrent_round_trips(&c, &key, &blob, 8).await;
    server.shutdown().await.expect("shutdown");
}

/// One shared queue: while one worker is inside a slow call, every other request goes to the
/// idle worker, never into a line behind the busy one (issue 18, network HSMs). With
/// per-worker queues some of the Encrypts below would wait for the slow Decrypt and finish
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_never_holds_up_a_request_another_worker_could_take() {
    let Some(f) = faults().await else { return };
    let config = shim_config(&f, "idle-worker");
    assert!(config.hsm.workers >= 2, "the test needs two workers");
    let (server, c, key, blob) = start_with_blob(&config).await;
    let before = counters(&server);

    f.delay("C_Decrypt", 3000);
    let slow = {
        let mut c = c.clone();
        tokio::spawn(async move { decrypt(&mut c, &blob).await })
    };
    // The slow Decrypt holds a worker once its C_DecryptInit has run (the delayed C_Decrypt
    // follows in the same job).
    let mut polls = 0;
    while delta(&before, &counters(&server), "C_DecryptInit") == 0 {
        polls += 1;
        assert!(polls < 200, "the slow Decrypt never reached a worker");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c2 = c.clone();
    for i in 0..20 {
        encrypt(&mut c2, &key, PLAINTEXT)
            .await
            .unwrap_or_else(|e| panic!("encrypt #{i} beside the slow Decrypt: {e:?}"));
    }
    assert!(
        !slow.is_finished(),
        "every Encrypt should have been answered by the idle worker while the slow Decrypt \
         still held the other one"
    );
    let pt = slow
        .await
        .expect("slow decrypt task")
        .expect("slow decrypt");
    assert_eq!(pt, PLAINTEXT);
    f.unset("delay_C_Decrypt");
    server.shutdown().await.expect("shutdown");
}

/// With `hsm.dispatch = "inline"` a lone caller's jobs run on the request's own thread, and
/// keep the pool's guarantees there: a lost session is retried once invisibly, and a stalled
/// call on the inline session is abandoned past `stall_limit_ms` and its session replaced,
/// while other requests are served by the workers and the stalled one still gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_dispatch_keeps_the_retry_and_the_watchdog() {
    let Some(f) = faults().await else { return };
    let config = shim_config_with(
        &f,
        "inline-dispatch",
        "dispatch = \"inline\"\nstall_limit_ms = 500",
    );
    let (server, mut c, key, blob) = start_with_blob(&config).await;
    let stats = |s: &RunningServer| s.kms.hsm().stats();

    // Background jobs (health probes, audit checkpoints) run on the workers; a fast job runs
    // inline only when they are idle.
    let idle = || async {
        for _ in 0..500 {
            if server.kms.hsm().pool_idle() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("the HSM workers never went idle");
    };
    idle().await;
    let before = stats(&server);
    f.burst("C_Encrypt", SESSION_HANDLE_INVALID, 1);
    let fresh = encrypt(&mut c, &key, PLAINTEXT).await.expect("encrypt");
    assert_opens(&mut c, &fresh, "decrypt after a lost inline session").await;
    let after = stats(&server);
    assert_eq!(f.injected(), 1);
    assert_eq!(after.retried_lost_session - before.retried_lost_session, 1);
    assert!(
        after.inline_jobs > before.inline_jobs,
        "the Encrypt (and its retry) ran inline: {} -> {}",
        before.inline_jobs,
        after.inline_jobs
    );

    // A stalled C_Decrypt on the inline session.
    idle().await;
    let before = stats(&server);
    // 3 s: the watchdog (a 125 ms tick) must see the call past its 500 ms limit, and the five
    // Encrypts below must finish, while it is still stalled, on a loaded CI machine too.
    f.delay("C_Decrypt", 3000);
    let mut slow = {
        let mut c = c.clone();
        tokio::spawn(async move { decrypt(&mut c, &blob).await })
    };
    // Wait on the replacement count, which only grows: `stuck_workers` falls back to 0 when
    // the call returns, so a poll that sleeps past the stall would miss it.
    let mut polls = 0;
    while stats(&server).workers_replaced == before.workers_replaced {
        polls += 1;
        if slow.is_finished() {
            let done = (&mut slow).await;
            panic!("the Decrypt returned and was never abandoned: {done:?}");
        }
        assert!(polls < 300, "the stalled inline call was never abandoned");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stuck = stats(&server);
    assert_eq!(
        stuck.inline_jobs,
        before.inline_jobs + 1,
        "the Decrypt ran inline"
    );
    assert_eq!(stuck.workers_replaced, before.workers_replaced + 1);
    assert_eq!(
        stuck.stuck_workers, 1,
        "the abandoned call counts as stuck until it returns"
    );
    for i in 0..5 {
        encrypt(&mut c, &key, PLAINTEXT)
            .await
            .unwrap_or_else(|e| panic!("encrypt #{i} beside the stalled inline call: {e:?}"));
    }
    assert!(
        !slow.is_finished(),
        "the Encrypts waited for the stalled call"
    );
    f.unset("delay_C_Decrypt");
    let pt = slow.await.expect("task").expect("the stalled Decrypt");
    assert_eq!(pt, PLAINTEXT);
    assert_eq!(stats(&server).stuck_workers, 0);
    assert_opens(&mut c, &fresh, "decrypt on the replacement session").await;
    server.shutdown().await.expect("shutdown");
}

/// Each queued job keeps its own deadline: with the only worker inside a stalled C_Decrypt
/// (below the stall limit), an Encrypt that waits in the queue past `acquire_timeout_ms` fails
/// with DependencyTimeoutException and never reaches the device; the stalled Decrypt itself
/// still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_waits_past_its_deadline_never_runs() {
    let Some(f) = faults().await else { return };
    let config = shim_config_with(&f, "deadline", "workers = 1\nacquire_timeout_ms = 300");
    let (server, mut c, key, blob) = start_with_blob(&config).await;

    f.delay("C_Decrypt", 1000);
    let before = counters(&server);
    let stalled = {
        let mut c = c.clone();
        let blob = blob.clone();
        tokio::spawn(async move { decrypt(&mut c, &blob).await })
    };
    // Counted just before the call: the worker is now inside the stalled C_Decrypt.
    let mut polls = 0;
    while delta(&before, &counters(&server), "C_Decrypt") == 0 {
        polls += 1;
        assert!(polls < 500, "the Decrypt never reached the device");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, reason, msg) = failure(
        "Encrypt queued behind a stalled call",
        encrypt(&mut c, &key, PLAINTEXT).await,
    );
    assert_eq!(
        (code, reason.as_str()),
        (Code::Unavailable, "DependencyTimeoutException"),
        "{msg}"
    );
    assert_eq!(
        stalled
            .await
            .unwrap()
            .expect("the stalled Decrypt completes"),
        PLAINTEXT
    );
    let after = counters(&server);
    assert_eq!(
        delta(&before, &after, "C_Encrypt"),
        0,
        "the expired job ran"
    );
    assert_eq!(delta(&before, &after, "C_GenerateRandom"), 0);
    assert!(server.kms.hsm().stats().rejected_timeout >= 1);
    assert_eq!(server.kms.hsm().stats().workers_replaced, 0);
    f.unset("delay_C_Decrypt");
    let fresh = encrypt(&mut c, &key, PLAINTEXT)
        .await
        .expect("encrypt after");
    assert_eq!(decrypt(&mut c, &fresh).await.unwrap(), PLAINTEXT);
    server.shutdown().await.expect("shutdown");
}

/// The XKS door under HSM trouble answers as the specification says: health turns DEGRADED
/// when the device is slow and UNAVAILABLE when it fails (the answer itself stays 200); with
/// the only worker stalled in a C_Encrypt, a request waiting in the queue past its deadline
/// is 503 DependencyTimeoutException and one finding the queue full is 429
/// ThrottlingException; the stalled one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xks_door_reports_hsm_trouble_as_the_specification_says() {
    use common::xks::{encrypt_body, path, Door};
    let Some(f) = faults().await else { return };
    let hsm = "workers = 1\nqueue_depth = 1\nacquire_timeout_ms = 300";
    let config = shim_config_more(&f, "xks-faults", hsm, |dir| {
        common::xks::xks_section(dir, "health_cache_ms = 0\n", "")
    });
    let server = start_config(&config).await.expect("daemon starts");
    let addr = server.http_door_addr(p11kms::api::xks::DOOR).unwrap();
    let mut c = admin(server.addr).await;
    let actions = ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"];
    let policy = admin_and_user_policy(ADMIN, USER1, &actions, &[]).to_string();
    let key = create_key_with_policy(&mut c, policy).await;
    let door = Door {
        server: &server,
        addr,
    };
    let health_body = serde_json::json!({"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}});
    let health = async || {
        door.ok(&path("health"), &health_body).await["ekmFleetDetails"][0]["healthStatus"].clone()
    };
    assert_eq!(health().await, "ACTIVE");
    f.delay("C_GenerateRandom", 250);
    assert_eq!(health().await, "DEGRADED");
    f.unset("delay_C_GenerateRandom");
    f.fail_with("C_GenerateRandom", 0x6); // CKR_FUNCTION_FAILED
    assert_eq!(health().await, "UNAVAILABLE");
    f.clear();
    assert_eq!(health().await, "ACTIVE");

    let enc_path = path(&format!("keys/{key}/encrypt"));
    let body = encrypt_body(b"x", b"", "arn:aws:iam::123456789012:role/App");
    f.delay("C_Encrypt", 1500);
    let before = counters(&server);
    let (stalled, queued) = tokio::join!(door.post(&enc_path, &body), async {
        let mut polls = 0;
        while delta(&before, &counters(&server), "C_Encrypt") == 0 {
            polls += 1;
            assert!(polls < 500, "the Encrypt never reached the device");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::join!(door.post(&enc_path, &body), async {
            let mut polls = 0;
            while server.kms.hsm().queued() == 0 {
                polls += 1;
                assert!(polls < 400, "the second Encrypt never queued");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            door.post(&enc_path, &body).await
        })
    });
    let (waited, full) = queued;
    assert_eq!(
        stalled.0, 200,
        "the stalled Encrypt completes: {}",
        stalled.1
    );
    assert_eq!(
        (waited.0, waited.1["errorName"].as_str()),
        (503, Some("DependencyTimeoutException")),
        "{}",
        waited.1
    );
    assert_eq!(
        (full.0, full.1["errorName"].as_str()),
        (429, Some("ThrottlingException")),
        "{}",
        full.1
    );
    f.clear();
    server.shutdown().await.expect("shutdown");
}
