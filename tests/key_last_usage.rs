//! GetKeyLastUsage (issue 12, item 16) through the gRPC door, on the real daemon and token: a
//! new key has an empty KeyLastUsage and TrackingStartDate = its creation; each successful
//! cryptographic operation records its operation, time, audit event id and request id (the
//! very ones in the audit trail); failures and non-cryptographic operations do not count;
//! ReEncrypt counts for both keys; the usage survives a restart; and it costs no store write
//! per request (it is flushed in batches and at shutdown).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use p11kms::core::ManualClock;
use p11kms::pb;
use p11kms::server::{self, RunningServer, ServerOptions};
use p11kms::time::iso8601_ms;

/// Starts the daemon with `kms.key_usage_flush_interval_secs = flush_secs`.
async fn start_flushing_every(
    dir: &Path,
    clock: Arc<ManualClock>,
    flush_secs: u64,
) -> RunningServer {
    let text =
        config_text(dir) + &format!("\n[kms]\nkey_usage_flush_interval_secs = {flush_secs}\n");
    server::start(
        &load_config_text(&dir.join("p11kms.toml"), text),
        ServerOptions {
            clock,
            sweep_interval: None,
        },
    )
    .await
    .expect("daemon starts")
}

/// [`start_admin_clocked`] with [`start_flushing_every`]: the data directory, the clock, the
/// daemon and an admin client.
async fn start_admin_flushing_every(
    name: &str,
    flush_secs: u64,
) -> (PathBuf, Arc<ManualClock>, RunningServer, Client) {
    start_admin_clocked(name, async |d: &Path, k| {
        start_flushing_every(d, k, flush_secs).await
    })
    .await
}

/// GetKeyLastUsage of `key`: the answer, or the daemon's error.
async fn try_last_usage(
    c: &mut Client,
    key: &str,
) -> Result<pb::GetKeyLastUsageResponse, tonic::Status> {
    c.get_key_last_usage(pb::GetKeyLastUsageRequest {
        key_id: key.to_string(),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// GetKeyLastUsage of `key`, which must succeed.
async fn last_usage(c: &mut Client, key: &str) -> pb::GetKeyLastUsageResponse {
    try_last_usage(c, key).await.expect("GetKeyLastUsage")
}

fn ms(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp");
    t.seconds * 1000 + i64::from(t.nanos / 1_000_000)
}

/// Checks that the key's last usage is `operation`, naming the audit event of `request`.
fn assert_names_event(
    dir: &Path,
    got: &pb::GetKeyLastUsageResponse,
    operation: &str,
    request: &str,
) {
    let u = got.key_last_usage.as_ref().expect("KeyLastUsage");
    assert_eq!(u.operation, operation, "{got:?}");
    assert_eq!(u.kms_request_id, request, "{got:?}");
    let evs = events(dir);
    let ev = evs
        .iter()
        .find(|e| e["requestID"] == request)
        .expect("the request's audit event");
    assert_eq!(ev["eventName"], operation);
    assert_eq!(ev["eventID"], u.cloud_trail_event_id.as_str(), "{ev}");
    assert_eq!(
        ev["eventTime"],
        iso8601_ms(ms(&u.timestamp)).as_str(),
        "{ev}"
    );
}

async fn encrypt(c: &mut Client, key: &str) -> (Vec<u8>, String) {
    let r = c
        .encrypt(encrypt_request_ctx(
            key,
            b"last usage",
            &[("purpose", "last-usage")],
        ))
        .await
        .expect("encrypt");
    let id = request_id(&r);
    (r.into_inner().ciphertext_blob, id)
}

/// [`encrypt`]s under `key` `times` times, calling `before_each` before each one; the request
/// id of the last.
async fn encrypt_times(
    c: &mut Client,
    key: &str,
    times: usize,
    mut before_each: impl FnMut(),
) -> String {
    let mut last = String::new();
    for _ in 0..times {
        before_each();
        last = encrypt(c, key).await.1;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_cryptographic_operations_are_tracked_with_their_audit_event() {
    let (dir, clock, server, mut c) = start_admin_flushing_every("last-usage", 3600).await;
    let created = create_key_meta(&mut c, pb::CreateKeyRequest::default()).await;
    let key = created.key_id.clone();

    // A new key: empty KeyLastUsage, tracking from its creation.
    clock.advance_ms(1_000);
    let fresh = last_usage(&mut c, &key).await;
    assert_eq!(fresh.key_id, created.arn);
    assert_eq!(fresh.key_last_usage, Some(pb::KeyLastUsage::default()));
    assert_eq!(fresh.key_creation_date, created.creation_date);
    assert_eq!(fresh.tracking_start_date, created.creation_date);

    // Encrypt, then Decrypt: each is the last use, with its own audit event.
    clock.advance_ms(1_000);
    let (blob, enc_id) = encrypt(&mut c, &key).await;
    let after_encrypt = last_usage(&mut c, &created.arn).await;
    assert_names_event(&dir, &after_encrypt, "Encrypt", &enc_id);
    clock.advance_ms(1_000);
    let dec = c
        .decrypt(decrypt_request(&blob, &[("purpose", "last-usage")]))
        .await
        .unwrap();
    let dec_id = request_id(&dec);
    let after_decrypt = last_usage(&mut c, &key).await;
    assert_names_event(&dir, &after_decrypt, "Decrypt", &dec_id);
    assert_eq!(
        ms(&after_decrypt.key_last_usage.as_ref().unwrap().timestamp),
        ms(&after_encrypt.key_last_usage.as_ref().unwrap().timestamp) + 1_000
    );

    // Failures and non-cryptographic operations do not count.
    clock.advance_ms(1_000);
    let wrong_context = c
        .decrypt(decrypt_request(&blob, &[("purpose", "other")]))
        .await;
    assert_eq!(reason(wrong_context), "InvalidCiphertextException");
    let mut user1 = client_as(server.addr, Some("user1")).await;
    let denied = user1.encrypt(encrypt_request(&created.arn, b"x")).await;
    assert_eq!(reason(denied), "AccessDeniedException");
    describe_key(&mut c, &key).await;
    disable_key(&mut c, &key).await;
    let disabled = c.encrypt(encrypt_request(&key, b"x")).await;
    assert_eq!(reason(disabled), "DisabledException");
    // Any key state: a disabled key still answers, unchanged.
    assert_eq!(last_usage(&mut c, &key).await, after_decrypt);
    try_enable_key(&mut c, &key).await.unwrap();

    // ReEncrypt uses both keys: each records it, with the one audit event.
    let other = create_key(&mut c).await;
    let (blob, _) = encrypt(&mut c, &key).await;
    let re = c
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob,
            source_encryption_context: ctx(&[("purpose", "last-usage")]),
            destination_key_id: other.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let re_id = request_id(&re);
    let source = last_usage(&mut c, &key).await;
    let destination = last_usage(&mut c, &other).await;
    assert_names_event(&dir, &source, "ReEncrypt", &re_id);
    assert_names_event(&dir, &destination, "ReEncrypt", &re_id);

    // Data keys count too.
    let gdk = c.generate_data_key(data_key_request(&other)).await.unwrap();
    let gdk_id = request_id(&gdk);
    assert_names_event(
        &dir,
        &last_usage(&mut c, &other).await,
        "GenerateDataKey",
        &gdk_id,
    );

    // Key id or key ARN only; the key policy must allow it; never another account's key.
    let by_alias = try_create_alias(&mut c, "alias/last-usage", &key).await;
    assert!(by_alias.is_ok());
    let alias = try_last_usage(&mut c, "alias/last-usage").await;
    assert_eq!(reason(alias), "NotFoundException");
    let missing = try_last_usage(&mut c, &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(reason(missing), "NotFoundException");
    let not_allowed = try_last_usage(&mut user1, &key).await;
    assert_eq!(reason(not_allowed), "AccessDeniedException");
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "OtherAccount", "Effect": "Allow",
         "Principal": {"AWS": format!("arn:aws:iam::{OTHER_ACCOUNT}:root")},
         "Action": ["kms:DescribeKey", "kms:GetKeyLastUsage"], "Resource": "*"}
    ]});
    c.put_key_policy(pb::PutKeyPolicyRequest {
        key_id: key.clone(),
        policy_name: "default".into(),
        policy: policy.to_string(),
        bypass_policy_lockout_safety_check: false,
    })
    .await
    .unwrap();
    let mut keyadmin = client_as(server.addr, Some("keyadmin")).await;
    keyadmin
        .describe_key(pb::DescribeKeyRequest {
            key_id: created.arn.clone(),
            grant_tokens: vec![],
        })
        .await
        .expect("cross-account DescribeKey is allowed by the policy");
    let cross = try_last_usage(&mut keyadmin, &created.arn).await;
    assert_eq!(reason(cross), "AccessDeniedException");

    // The GetKeyLastUsage requests themselves are audited, read-only, with the key.
    let evs = events(&dir);
    let ev = evs
        .iter()
        .rev()
        .find(|e| {
            e["eventName"] == "GetKeyLastUsage"
                && e["errorCode"].is_null()
                && e["requestParameters"]["keyId"] == key.as_str()
        })
        .expect("a GetKeyLastUsage event");
    assert_eq!(ev["readOnly"], true);
    assert!(ev["resources"].to_string().contains(&key), "{ev}");
    drop((c, user1, keyadmin));
    server.shutdown().await.unwrap();
}

/// No store write per request: with a long flush interval, a hundred encryptions leave the
/// store untouched (the check fails if any request writes); shutdown flushes; a restart
/// serves the stored usage and keeps the tracking start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_flushed_in_batches_and_survives_a_restart() {
    let (dir, clock, server, mut c) = start_admin_flushing_every("last-usage-restart", 3600).await;
    let key = create_key(&mut c).await;
    let last = encrypt_times(&mut c, &key, 100, || clock.advance_ms(10)).await;
    let before = last_usage(&mut c, &key).await;
    assert_names_event(&dir, &before, "Encrypt", &last);
    let stored = server.kms.store().load_key_usage().await.unwrap();
    assert!(stored.is_empty(), "a request wrote the store: {stored:?}");
    assert_eq!(server.kms.key_usage().rows_written(), 0);
    drop(c);
    server.shutdown().await.unwrap();

    clock.advance_ms(60_000);
    let server = start_flushing_every(&dir, clock.clone(), 3600).await;
    let stored = server.kms.store().load_key_usage().await.unwrap();
    assert_eq!(
        stored.len(),
        1,
        "shutdown stores the last use once: {stored:?}"
    );
    let mut c = admin(server.addr).await;
    let after = last_usage(&mut c, &key).await;
    assert_eq!(after, before, "the last usage survives a restart");
    drop(c);
    server.shutdown().await.unwrap();
}

/// The periodic flush writes one row per key used, however many requests used it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_flush_writes_one_row_per_key() {
    let (_dir, _clock, server, mut c) = start_admin_flushing_every("last-usage-flush", 1).await;
    let key = create_key(&mut c).await;
    let last = encrypt_times(&mut c, &key, 20, || {}).await;
    let kms = server.kms.clone();
    let want = last.clone();
    assert!(
        wait_for(async || {
            let rows = kms.store().load_key_usage().await.unwrap();
            rows.iter().any(|r| r.key_id == key && r.request_id == want)
        })
        .await,
        "the flusher stored the last use"
    );
    assert!(
        kms.key_usage().rows_written() < 20,
        "{} rows for 20 requests on one key",
        kms.key_usage().rows_written()
    );
    drop(c);
    server.shutdown().await.unwrap();
}

/// Signatures and MACs count; a signature or MAC that does not verify, and GetPublicKey, do
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_and_macs_count_but_failed_verifications_do_not() {
    let (dir, _clock, server, mut c) = start_admin_flushing_every("last-usage-sign", 3600).await;
    let ecc = create_key_from(&mut c, key_request("ECC_NIST_P256", "SIGN_VERIFY")).await;
    let signed = c
        .sign(pb::SignRequest {
            key_id: ecc.clone(),
            message: b"card".to_vec(),
            signing_algorithm: "ECDSA_SHA_256".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sign_id = request_id(&signed);
    let signature = signed.into_inner().signature;
    assert_names_event(&dir, &last_usage(&mut c, &ecc).await, "Sign", &sign_id);
    let verify = |signature: Vec<u8>| pb::VerifyRequest {
        key_id: ecc.clone(),
        message: b"card".to_vec(),
        signature,
        signing_algorithm: "ECDSA_SHA_256".into(),
        ..Default::default()
    };
    let verified = c.verify(verify(signature.clone())).await.unwrap();
    let verify_id = request_id(&verified);
    let after_verify = last_usage(&mut c, &ecc).await;
    assert_names_event(&dir, &after_verify, "Verify", &verify_id);
    let mut bad = signature;
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let invalid = c.verify(verify(bad)).await;
    assert_eq!(reason(invalid), "KMSInvalidSignatureException");
    public_key(&mut c, &ecc).await;
    assert_eq!(last_usage(&mut c, &ecc).await, after_verify);

    let hmac = create_key_from(&mut c, key_request("HMAC_256", "GENERATE_VERIFY_MAC")).await;
    let mac = |mac: Vec<u8>| pb::VerifyMacRequest {
        message: b"m".to_vec(),
        key_id: hmac.clone(),
        mac_algorithm: "HMAC_SHA_256".into(),
        mac,
        grant_tokens: vec![],
        dry_run: false,
    };
    let generated = c
        .generate_mac(pb::GenerateMacRequest {
            message: b"m".to_vec(),
            key_id: hmac.clone(),
            mac_algorithm: "HMAC_SHA_256".into(),
            grant_tokens: vec![],
            dry_run: false,
        })
        .await
        .unwrap();
    let gen_id = request_id(&generated);
    let tag = generated.into_inner().mac;
    assert_names_event(
        &dir,
        &last_usage(&mut c, &hmac).await,
        "GenerateMac",
        &gen_id,
    );
    let ok = c.verify_mac(mac(tag.clone())).await.unwrap();
    let ok_id = request_id(&ok);
    let after = last_usage(&mut c, &hmac).await;
    assert_names_event(&dir, &after, "VerifyMac", &ok_id);
    let mut wrong = tag;
    wrong[0] ^= 1;
    assert_eq!(
        reason(c.verify_mac(mac(wrong)).await),
        "KMSInvalidMacException"
    );
    assert_eq!(last_usage(&mut c, &hmac).await, after);
    drop(c);
    server.shutdown().await.unwrap();
}
