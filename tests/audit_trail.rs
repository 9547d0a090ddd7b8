//! The audit trail end to end: one event per request through the gRPC door (allowed, denied,
//! failed, unauthenticated), verification with the CLI, tampering and crash recovery, fail
//! closed, and no secret in audit files or daemon logs.

mod common;

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;
use p11kms::pb;
use serde_json::Value;

fn verify(dir: &Path) -> (i32, String) {
    let out = p11kms_command()
        .args(["audit", "verify", "--public-key"])
        .arg(dir.join("audit-public-key.pem"))
        .args(segments(dir))
        .output()
        .expect("run p11kms audit verify");
    code_and_output(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_audited_once_and_the_trail_verifies() {
    let (dir, server, mut admin_c) = start_admin("audit-coverage").await;
    let mut sent = 0usize;
    let key = create_key(&mut admin_c).await;
    sent += 1;
    let blob = admin_c
        .encrypt(encrypt_request_ctx(
            &key,
            b"payload",
            &[("dept", "finance")],
        ))
        .await
        .reply()
        .ciphertext_blob;
    sent += 1;
    // Denied (user2 has no KMS permissions).
    let mut user2 = client_as(server.addr, Some("user2")).await;
    let r = user2
        .decrypt(decrypt_request(&blob, &[("dept", "finance")]))
        .await;
    assert_eq!(reason(r), "AccessDeniedException");
    sent += 1;
    // Failed (validation) and failed (bad ciphertext).
    let r = admin_c.encrypt(encrypt_request(&key, &[])).await;
    assert_eq!(reason(r), "ValidationException");
    sent += 1;
    let r = admin_c
        .decrypt(decrypt_request(&blob, &[("dept", "hr")]))
        .await;
    assert_eq!(reason(r), "InvalidCiphertextException");
    sent += 1;
    // Failed authentication: no certificate, and a bad signature.
    let mut anon = client_as(server.addr, None).await;
    let _ = anon.list_keys(pb::ListKeysRequest::default()).await;
    sent += 1;
    let s = signed_as(server.addr, "AKIAADMIN00000000001").await;
    let mut req = s.kms_req(pb::ListKeysRequest::default(), "DescribeKey");
    req.get_mut().limit = Some(5);
    let mut kms = s.kms.clone();
    assert_eq!(
        reason(kms.list_keys(req).await),
        "InvalidSignatureException"
    );
    sent += 1;
    drop((admin_c, user2, anon, kms));
    server.shutdown().await.unwrap();

    // One outcome event per request; the one changing request (CreateKey) also wrote its
    // intent record first (same request id).
    let (intents, evs): (Vec<Value>, Vec<Value>) = events(&dir)
        .into_iter()
        .partition(|e| e["phase"] == "intent");
    assert_eq!(evs.len(), sent, "one event per request: {evs:#?}");
    assert_eq!(intents.len(), 1, "{intents:#?}");
    assert_eq!(intents[0]["eventName"], "CreateKey");
    let mut ids: Vec<&str> = evs.iter().filter_map(|e| e["requestID"].as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), sent, "request ids are unique");
    for e in &evs {
        for f in [
            "eventVersion",
            "eventTime",
            "eventSource",
            "eventName",
            "awsRegion",
            "userIdentity",
            "readOnly",
            "eventCategory",
            "latencyMicros",
            "door",
        ] {
            assert!(!e[f].is_null(), "{f} missing in {e}");
        }
    }
    let enc = evs
        .iter()
        .find(|e| e["eventName"] == "Encrypt" && e["errorCode"].is_null())
        .unwrap();
    assert_eq!(
        enc["requestParameters"]["encryptionContext"]["dept"],
        "finance"
    );
    assert_eq!(enc["keyVersion"], 1);
    assert_eq!(enc["resources"][0]["type"], "AWS::KMS::Key");
    assert_eq!(
        enc["userIdentity"]["arn"],
        format!("arn:aws:iam::{ACCOUNT}:user/admin")
    );
    assert_eq!(enc["decision"]["effect"], "Allow");
    // CloudTrail marks the cryptographic operations read-only.
    assert_eq!(enc["readOnly"], true);
    let created = evs.iter().find(|e| e["eventName"] == "CreateKey").unwrap();
    assert_eq!(created["readOnly"], false);

    // The denial carries its reason, without policy text.
    let denied = evs
        .iter()
        .find(|e| e["errorCode"] == "AccessDeniedException")
        .unwrap();
    assert_eq!(denied["eventName"], "Decrypt");
    assert_eq!(
        denied["userIdentity"]["arn"],
        format!("arn:aws:iam::{ACCOUNT}:user/user2")
    );
    assert_eq!(denied["decision"]["effect"], "Deny");
    let why = denied["decision"]["reason"].as_str().unwrap();
    assert!(
        why.contains("ImplicitDeny") && why.contains("no identity-based policy allows"),
        "{why}"
    );
    assert!(!denied.to_string().contains("\"Statement\""));
    // Failed authentication is audited too, with the access key id only.
    let unauth: Vec<&Value> = evs
        .iter()
        .filter(|e| {
            e["errorCode"] == "MissingAuthenticationTokenException"
                || e["errorCode"] == "InvalidSignatureException"
        })
        .collect();
    assert_eq!(unauth.len(), 2);
    let sig = unauth
        .iter()
        .find(|e| e["errorCode"] == "InvalidSignatureException")
        .unwrap();
    assert_eq!(sig["userIdentity"]["accessKeyId"], "AKIAADMIN00000000001");

    // The trail verifies offline with the exported public key, including a checkpoint.
    assert!(
        records(&dir)
            .iter()
            .any(|r| r["recordType"] == "checkpoint"),
        "shutdown writes a checkpoint"
    );
    let (code, out) = verify(&dir);
    assert_eq!(code, 0, "{out}");

    // Editing one field is caught, by sequence number.
    let seg = segments(&dir).pop().unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    let target = evs
        .iter()
        .find(|e| e["errorCode"] == "AccessDeniedException")
        .unwrap();
    let seq = target["sequence"].as_u64().unwrap();
    let edited = text.replacen("AccessDeniedException", "NotFoundException", 1);
    assert_ne!(edited, text);
    std::fs::write(&seg, edited).unwrap();
    let (code, out) = verify(&dir);
    assert_ne!(code, 0);
    assert!(
        out.contains(&seq.to_string()),
        "the report names sequence {seq}: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_write_is_reported_and_the_trail_continues() {
    let (dir, server, mut c) = start_admin("audit-crash").await;
    create_key(&mut c).await;
    create_key(&mut c).await;
    drop(c);
    server.shutdown().await.unwrap();
    // Tear the last line, as a crash mid-write would.
    let seg = segments(&dir).pop().unwrap();
    let text = std::fs::read_to_string(&seg).unwrap();
    let keep = text.trim_end_matches('\n').rfind('\n').unwrap() + 1;
    let torn = &text[..keep + (text.len() - keep) / 2];
    std::fs::write(&seg, torn).unwrap();
    let last_good: Value =
        serde_json::from_str(text[..keep].trim_end().rsplit('\n').next().unwrap()).unwrap();

    let server = start(&dir).await;
    let mut c = admin(server.addr).await;
    create_key(&mut c).await;
    drop(c);
    server.shutdown().await.unwrap();

    // Recovery sealed the torn line into the chain: reported as a note, and verify passes.
    let (code, out) = verify(&dir);
    assert_eq!(
        code, 0,
        "a torn line sealed at recovery is no problem: {out}"
    );
    assert!(
        out.contains("note:") && out.contains("torn by a crash"),
        "{out}"
    );
    // The new segment starts from the last good record.
    let recs = records(&dir);
    let start = recs
        .iter()
        .rev()
        .find(|r| r["recordType"] == "segment-start")
        .unwrap();
    assert_eq!(start["previousHash"], last_good["hash"], "{start}");
    assert_eq!(
        start["sequence"].as_u64().unwrap(),
        last_good["sequence"].as_u64().unwrap() + 1
    );
    assert_eq!(
        events(&dir)
            .iter()
            .filter(|e| e["eventName"] == "CreateKey" && e.get("phase").is_none())
            .count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_closed_when_the_trail_cannot_be_written() {
    let (dir, server, mut c) = start_admin("audit-closed").await;
    let key = create_key(&mut c).await;
    // Used once while the trail works, so the HSM work counted below is that of an Encrypt
    // alone (the first use also copies the key into a session object).
    c.encrypt(encrypt_request(&key, b"x")).await.unwrap();
    let audit = dir.join("audit");
    let aside = dir.join("audit-aside");
    // Take the directory away and put a file in its place: works even as root.
    std::fs::rename(&audit, &aside).unwrap();
    std::fs::write(&audit, b"not a directory").unwrap();
    let before = server.kms.hsm().total_ops();
    let mut failures = 0;
    for _ in 0..3 {
        let r = c.encrypt(encrypt_request(&key, b"x")).await;
        match r {
            Ok(_) => {}
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable);
                assert_eq!(
                    p11kms::api::grpc::status::aws_reason(&s).as_deref(),
                    Some("DependencyTimeoutException")
                );
                assert!(s.message().contains("audit trail"), "{}", s.message());
                failures += 1;
            }
        }
    }
    assert_eq!(
        failures, 3,
        "every request fails while the trail cannot be written"
    );
    assert!(!server.audit.healthy());
    // Only the first request can reach the HSM (before the writer learns of the failure; its
    // result is withheld): C_GenerateRandom + C_EncryptInit + C_Encrypt.
    assert!(
        server.kms.hsm().total_ops() - before <= 3,
        "requests kept running on the HSM while the trail was down"
    );
    assert_eq!(health_status(server.addr).await, 2, "NOT_SERVING");
    // Restore: the writer recovers and requests work again.
    std::fs::remove_file(&audit).unwrap();
    std::fs::rename(&aside, &audit).unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if c.encrypt(encrypt_request(&key, b"x")).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "requests work again once the trail is writable");
    for _ in 0..50 {
        if health_status(server.addr).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health_status(server.addr).await, 1, "SERVING again");
    drop(c);
    server.shutdown().await.unwrap();
}

async fn health_status(addr: std::net::SocketAddr) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    let mut h = health_client(addr).await;
    let mut last = -1;
    for _ in 0..30 {
        last = h
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1);
        if last == 2 || last == 1 {
            // Give the 500 ms health loop a chance to move before reporting.
            tokio::time::sleep(Duration::from_millis(600)).await;
            return h
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// Runs the real daemon binary with debug logging, drives encrypts, decrypts, data keys and
/// an AssumeRole through it, then scans every audit file and the whole log for the secrets
/// used: plaintexts, data keys, the PIN, access-key secrets and the session token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_audit_trail_or_the_logs() {
    let dir = data_dir("audit-secrets");
    let config = write_config(&dir);
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = p11kms_command()
        .args(["serve", "--config"])
        .arg(&config)
        .env(
            "RUST_LOG",
            "trace,h2=info,hyper=info,tower=info,rustls=info,tokio=info",
        )
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start p11kms serve");
    // The daemon logs the address it bound (port 0).
    let mut addr = None;
    for _ in 0..100 {
        if let Ok(f) = std::fs::File::open(&log_path) {
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                if line.contains("serving gRPC") {
                    addr = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr=127.0.0.1:"))
                        .and_then(|p| {
                            p.trim_matches(|c: char| !c.is_ascii_digit())
                                .parse::<u16>()
                                .ok()
                        });
                }
            }
        }
        if addr.is_some() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "daemon exited: {status}: {}",
                std::fs::read_to_string(&log_path).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let child = KillOnDrop(child);
    let port = addr.unwrap_or_else(|| {
        panic!(
            "no address in the log: {}",
            std::fs::read_to_string(&log_path).unwrap()
        )
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut secrets: Vec<Vec<u8>> = vec![USER_PIN.as_bytes().to_vec(), SO_PIN.as_bytes().to_vec()];
    let mut c = admin(addr).await;
    let key = create_key(&mut c).await;
    for i in 0..5 {
        let pt = format!("SECRET-PLAINTEXT-{i}-{}", uuid::Uuid::new_v4().simple());
        secrets.push(pt.as_bytes().to_vec());
        let blob = c
            .encrypt(encrypt_request_ctx(
                &key,
                pt.as_bytes(),
                &[("case", "secrets")],
            ))
            .await
            .reply()
            .ciphertext_blob;
        let back = c
            .decrypt(decrypt_request(&blob, &[("case", "secrets")]))
            .await
            .reply()
            .plaintext;
        assert_eq!(back, pt.as_bytes());
        let dk = c.generate_data_key(data_key_request(&key)).await.reply();
        secrets.push(dk.plaintext.clone());
        let r = c
            .generate_random(pb::GenerateRandomRequest {
                number_of_bytes: Some(32),
                custom_key_store_id: String::new(),
            })
            .await
            .reply();
        secrets.push(r.plaintext);
    }
    // Access-key secrets and a session token.
    let bob = fixture_credentials("AKIABOB0000000000001");
    secrets.push(bob.secret_access_key.as_bytes().to_vec());
    let s = signed_with(addr, bob).await;
    let mut sts = s.sts.clone();
    let creds = sts
        .assume_role(s.sts_req(
            pb::AssumeRoleRequest {
                role_arn: format!("arn:aws:iam::{ACCOUNT}:role/Engineering"),
                role_session_name: "secret-scan".into(),
                ..Default::default()
            },
            "AssumeRole",
        ))
        .await
        .reply()
        .credentials
        .unwrap();
    secrets.push(creds.secret_access_key.as_bytes().to_vec());
    secrets.push(creds.session_token.as_bytes().to_vec());
    let session = signed_with(
        addr,
        p11kms::client::AccessKeyCredentials {
            access_key_id: creds.access_key_id.clone(),
            secret_access_key: zeroize::Zeroizing::new(creds.secret_access_key.clone()),
            session_token: Some(zeroize::Zeroizing::new(creds.session_token.clone())),
        },
    )
    .await;
    let mut sts2 = session.sts.clone();
    sts2.get_caller_identity(session.sts_req(pb::GetCallerIdentityRequest {}, "GetCallerIdentity"))
        .await
        .unwrap();
    drop((c, sts, sts2));
    // Stop the daemon gracefully (SIGTERM) so the trail is flushed and checkpointed.
    let pid = child.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..100 {
        if segments(&dir).iter().any(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .contains("checkpoint")
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(child);

    let b64 = base64::engine::general_purpose::STANDARD;
    let mut haystacks: Vec<(String, Vec<u8>)> = segments(&dir)
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    haystacks.push(("daemon log".into(), std::fs::read(&log_path).unwrap()));
    let log_text = String::from_utf8_lossy(&haystacks.last().unwrap().1).into_owned();
    assert!(log_text.contains("serving gRPC"), "the log was captured");
    assert!(events(&dir).len() >= 20, "the audit trail was captured");
    for secret in &secrets {
        let forms = [
            secret.clone(),
            b64.encode(secret).into_bytes(),
            secret
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        ];
        for (name, hay) in &haystacks {
            for form in &forms {
                if form.len() >= 8 {
                    assert!(
                        !hay.windows(form.len()).any(|w| w == form.as_slice()),
                        "a secret ({} bytes) appears in {name}",
                        secret.len()
                    );
                }
            }
        }
    }
    let _ = std::io::stdout().flush();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_returned_request_id_names_the_audit_event() {
    let (dir, server, mut c) = start_admin("audit-request-id").await;
    let key = create_key(&mut c).await;
    let ok = c
        .describe_key(pb::DescribeKeyRequest {
            key_id: key.clone(),
            grant_tokens: vec![],
        })
        .await
        .unwrap();
    let ok_id = request_id(&ok);
    let err = try_disable_key(&mut c, &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap_err();
    let err_id = err
        .metadata()
        .get("x-amzn-requestid")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    drop(c);
    server.shutdown().await.unwrap();
    let evs = events(&dir);
    let ok_ev = evs
        .iter()
        .find(|e| e["requestID"] == ok_id.as_str())
        .expect("event for the id");
    assert_eq!(ok_ev["eventName"], "DescribeKey");
    assert!(ok_ev["errorCode"].is_null());
    let err_ev = evs
        .iter()
        .find(|e| e["requestID"] == err_id.as_str())
        .expect("event for the id");
    assert_eq!(err_ev["eventName"], "DisableKey");
    assert_eq!(err_ev["errorCode"], "NotFoundException");
}

/// Everything the metadata store holds, for "nothing changed" comparisons.
async fn store_snapshot(server: &p11kms::server::RunningServer) -> String {
    let s = server.kms.store();
    let mut aliases = s.list_aliases().await.unwrap();
    aliases.sort_by(|a, b| a.name.cmp(&b.name));
    let mut grants = s.list_grants().await.unwrap();
    grants.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
    format!(
        "{:?}\n{aliases:?}\n{grants:?}\n{:?}\n{:?}\n{:?}",
        s.load_all().await.unwrap(),
        s.deleted_key_ids().await.unwrap(),
        s.load_lifecycles().await.unwrap(),
        s.list_import_tokens().await.unwrap(),
    )
}

/// The policy every key of this test gets: the account may do anything.
const ACCOUNT_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"Enable IAM","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}"#;

/// Runs one changing request (`$call`, operation `$op`) twice: first with the trail broken between authorization
/// and commit (it must fail with DependencyTimeoutException and change nothing), then with
/// the trail working (it must succeed, with a durable intent record before its event).
macro_rules! broken_then_working {
    ($server:expr, $dir:expr, $op:literal, $call:expr) => {{
        let before = store_snapshot(&$server).await;
        let intents_before = intents(&$dir, $op);
        $server.audit.fail_after_authorization();
        let r = $call;
        assert_eq!(reason(r), "DependencyTimeoutException", "{}", $op);
        assert_eq!(
            store_snapshot(&$server).await,
            before,
            "{} changed the store although its intent record failed",
            $op
        );
        assert_eq!(intents(&$dir, $op), intents_before, "{}", $op);
        // The writer recovers in a new segment; then the same request goes through.
        assert!(
            wait_for(async || $server.audit.healthy()).await,
            "the trail did not recover"
        );
        let out = $call.unwrap_or_else(|e| panic!("{}: {e:?}", $op));
        assert_ne!(
            store_snapshot(&$server).await,
            before,
            "{} changed nothing",
            $op
        );
        assert_eq!(intents(&$dir, $op), intents_before + 1, "{}", $op);
        out
    }};
}

/// Number of intent records of operation `op`.
fn intents(dir: &Path, op: &str) -> usize {
    events(dir)
        .iter()
        .filter(|e| e["eventName"] == op && e["phase"] == "intent")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// `..Default::default()` on requests whose members are all set: DryRun members are being added.
#[allow(clippy::needless_update)]
async fn no_change_is_stored_without_a_durable_audit_record() {
    let (dir, server, mut c) = start_admin("audit-intent").await;
    let created = broken_then_working!(
        server,
        dir,
        "CreateKey",
        c.create_key(pb::CreateKeyRequest {
            description: "intent".into(),
            ..Default::default()
        })
        .await
    );
    let key = created.into_inner().key_metadata.unwrap().key_id;
    broken_then_working!(
        server,
        dir,
        "PutKeyPolicy",
        c.put_key_policy(pb::PutKeyPolicyRequest {
            key_id: key.clone(),
            policy: ACCOUNT_POLICY.into(),
            ..Default::default()
        })
        .await
    );
    let grant = broken_then_working!(
        server,
        dir,
        "CreateGrant",
        c.create_grant(pb::CreateGrantRequest {
            key_id: key.clone(),
            grantee_principal: "arn:aws:iam::111122223333:user/user1".into(),
            operations: vec!["Decrypt".into()],
            ..Default::default()
        })
        .await
    );
    let grant_id = grant.into_inner().grant_id;
    broken_then_working!(
        server,
        dir,
        "RevokeGrant",
        c.revoke_grant(pb::RevokeGrantRequest {
            key_id: key.clone(),
            grant_id: grant_id.clone(),
            ..Default::default()
        })
        .await
    );
    broken_then_working!(
        server,
        dir,
        "CreateAlias",
        try_create_alias(&mut c, "alias/intent", &key).await
    );
    broken_then_working!(
        server,
        dir,
        "TagResource",
        c.tag_resource(pb::TagResourceRequest {
            key_id: key.clone(),
            tags: vec![tag("team", "audit")],
        })
        .await
    );
    broken_then_working!(
        server,
        dir,
        "ScheduleKeyDeletion",
        try_schedule_deletion(&mut c, &key, Some(7)).await
    );

    // For every stored change there is a durable record: each successful changing request
    // has its intent record before its outcome event, with the same request id, caller and
    // key.
    let evs = events(&dir);
    for op in [
        "CreateKey",
        "PutKeyPolicy",
        "CreateGrant",
        "RevokeGrant",
        "CreateAlias",
        "TagResource",
        "ScheduleKeyDeletion",
    ] {
        let done: Vec<&Value> = evs
            .iter()
            .filter(|e| e["eventName"] == op && e.get("phase").is_none())
            .filter(|e| e.get("errorCode").is_none())
            .collect();
        assert_eq!(done.len(), 1, "{op}: {done:?}");
        let outcome = done[0];
        let intent = evs
            .iter()
            .find(|e| e["phase"] == "intent" && e["requestID"] == outcome["requestID"])
            .unwrap_or_else(|| panic!("{op}: no intent record for {outcome}"));
        assert!(intent["sequence"].as_u64() < outcome["sequence"].as_u64());
        assert_eq!(intent["userIdentity"], outcome["userIdentity"], "{op}");
        assert_eq!(intent["decision"]["effect"], "Allow", "{op}: {intent}");
        if op != "CreateKey" {
            assert_eq!(intent["resources"], outcome["resources"], "{op}");
        }
    }
    // Reads and cryptographic operations write no intent record.
    let n = evs.len();
    c.describe_key(pb::DescribeKeyRequest {
        key_id: key.clone(),
        grant_tokens: vec![],
    })
    .await
    .unwrap();
    assert_eq!(events(&dir).len(), n + 1);
    drop(c);
    server.shutdown().await.unwrap();
    // The trail, intent records and recovery segments included, verifies.
    let (code, out) = verify(&dir);
    assert_eq!(code, 0, "{out}");
}

/// Starts the daemon with the AWS door on plain HTTP (loopback) and more `[audit]` settings.
async fn start_with_audit(
    name: &str,
    audit: &str,
) -> (std::path::PathBuf, p11kms::server::RunningServer) {
    let dir = data_dir(name);
    let mut text = config_text(&dir);
    text.push_str(&format!(
        "\n[audit]\n{audit}\n\n[aws_json]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntls = false\n"
    ));
    let config = load_config_text(&dir.join("p11kms.toml"), text);
    let options = p11kms::server::ServerOptions {
        clock: std::sync::Arc::new(p11kms::core::SystemClock),
        sweep_interval: None,
    };
    let server = p11kms::server::start(&config, options)
        .await
        .expect("daemon starts");
    (dir, server)
}

/// How an AWS-door request of the flood is signed.
#[derive(Clone, Copy)]
enum Signing<'a> {
    Unsigned,
    /// SigV4 with this access key id and secret.
    With(&'a str, &'a str),
}

/// A kept-alive HTTP/1.1 connection to the AWS door.
struct AwsDoor {
    addr: std::net::SocketAddr,
    conn: Option<tokio::io::BufReader<tokio::net::TcpStream>>,
}

impl AwsDoor {
    fn new(addr: std::net::SocketAddr) -> AwsDoor {
        AwsDoor { addr, conn: None }
    }

    /// `TrentService.ListKeys` with an empty body: the status and the `__type` of an error.
    async fn list_keys(&mut self, signing: Signing<'_>) -> (u16, String) {
        use p11kms::core::Clock;
        let body = b"{}";
        let now = p11kms::core::SystemClock.now_ms() / 1000;
        let extra = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "TrentService.ListKeys"),
        ];
        let signer = match signing {
            Signing::With(akid, secret) => Some((akid, secret)),
            Signing::Unsigned => None,
        };
        let headers = aws_door_headers(self.addr, signer, "kms", now, &extra, body);
        let bytes = http_post_bytes(&headers, body, false);
        for _ in 0..2 {
            if let Some(answer) = self.exchange(&bytes).await {
                return answer;
            }
            self.conn = None;
        }
        panic!("the AWS door did not answer");
    }

    /// One request and its answer on the kept-alive connection; `None` if it was closed.
    async fn exchange(&mut self, bytes: &[u8]) -> Option<(u16, String)> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        if self.conn.is_none() {
            let tcp = tokio::net::TcpStream::connect(self.addr).await.ok()?;
            self.conn = Some(tokio::io::BufReader::new(tcp));
        }
        let conn = self.conn.as_mut()?;
        conn.get_mut().write_all(bytes).await.ok()?;
        let mut status = String::new();
        if conn.read_line(&mut status).await.ok()? == 0 {
            return None;
        }
        let code: u16 = status.split(' ').nth(1)?.parse().ok()?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).await.ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).await.ok()?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Some((code, v["__type"].as_str().unwrap_or("").to_string()))
    }
}

/// Bytes of records in the trail's segment files (the live segment's trailing NUL bytes are
/// preallocated space, not records).
fn trail_bytes(dir: &Path) -> u64 {
    segments(dir)
        .iter()
        .map(|p| {
            let data = std::fs::read(p).unwrap();
            data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1) as u64
        })
        .sum()
}

/// The refusals of `error` through `door` the trail accounts for (written in full plus
/// aggregated counts), and in how many records.
fn refusals_accounted(evs: &[Value], door: &str, error: &str) -> (u64, usize) {
    let of: Vec<&Value> = evs
        .iter()
        .filter(|e| e["door"] == door && e["errorCode"] == error)
        .collect();
    let n = of
        .iter()
        .map(|e| {
            e["additionalEventData"]["aggregatedCount"]
                .as_u64()
                .unwrap_or(1)
        })
        .sum();
    (n, of.len())
}

const ADMIN_AK: &str = "AKIAADMIN00000000001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_requests_costs_the_trail_a_handful_of_records() {
    // No aggregate falls due during the flood: shutdown writes them.
    let (dir, server) =
        start_with_audit("audit-flood", "refused_aggregate_interval_secs = 3600").await;
    let addr = server.aws_json_addr.expect("AWS door enabled");
    let secret = fixture_credentials(ADMIN_AK).secret_access_key;
    let mut door = AwsDoor::new(addr);
    assert_eq!(
        door.list_keys(Signing::With(ADMIN_AK, &secret)).await.0,
        200
    );
    let before = trail_bytes(&dir);

    const UNSIGNED: usize = 2000;
    const BAD: usize = 200;
    let mut authenticated = 1;
    let mut errors = std::collections::BTreeMap::<(&str, String), u64>::new();
    for i in 0..UNSIGNED {
        let (code, error) = door.list_keys(Signing::Unsigned).await;
        assert_eq!(code, 403, "{error}");
        *errors.entry(("aws-json", error)).or_default() += 1;
        if i < BAD {
            for signing in [
                Signing::With(ADMIN_AK, "not-the-secret-access-key-of-admin0000"),
                Signing::With("AKIAUNKNOWN000000000", "whatever"),
            ] {
                let (code, error) = door.list_keys(signing).await;
                assert!(code == 400 || code == 403, "{code} {error}");
                *errors.entry(("aws-json", error)).or_default() += 1;
            }
        }
        if i % 500 == 250 {
            // Authenticated requests in between keep a record each.
            assert_eq!(
                door.list_keys(Signing::With(ADMIN_AK, &secret)).await.0,
                200
            );
            authenticated += 1;
        }
    }
    assert_eq!(errors.len(), 3, "three kinds of refusal: {errors:?}");
    // The gRPC door: no client certificate, and a bad signature.
    let mut anon = client_as(server.addr, None).await;
    let s = signed_as(server.addr, ADMIN_AK).await;
    let mut kms = s.kms.clone();
    for _ in 0..BAD {
        let r = anon.list_keys(pb::ListKeysRequest::default()).await;
        *errors.entry(("grpc", reason(r))).or_default() += 1;
        let req = s.kms_req(pb::ListKeysRequest::default(), "DescribeKey");
        let r = kms.list_keys(req).await;
        *errors.entry(("grpc", reason(r))).or_default() += 1;
    }
    let grown = trail_bytes(&dir) - before;
    let refused: u64 = errors.values().sum();
    // A full record is about a kilobyte: one per kind of refusal and per authenticated
    // request, not one per refusal.
    assert!(
        grown < 24 * 1024,
        "the trail grew by {grown} bytes for {refused} refused requests: {errors:?}"
    );
    drop((anon, kms, s));
    server.shutdown().await.unwrap();

    let evs: Vec<Value> = events(&dir);
    for ((door, error), sent) in &errors {
        let (accounted, records) = refusals_accounted(&evs, door, error);
        assert_eq!(accounted, *sent, "{door} {error}: {evs:#?}");
        assert_eq!(
            records, 2,
            "{door} {error}: first in full, then one aggregate"
        );
    }
    let unsigned = evs
        .iter()
        .find(|e| {
            e["door"] == "aws-json"
                && e["additionalEventData"]["aggregatedCount"].as_u64() == Some(UNSIGNED as u64 - 1)
        })
        .expect("the aggregate of the unsigned requests");
    assert_eq!(unsigned["eventName"], "ListKeys");
    assert_eq!(unsigned["sourceIPAddress"], "127.0.0.1");
    assert!(unsigned["requestID"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    let data = &unsigned["additionalEventData"];
    assert!(data["firstEventTime"].as_str() <= data["lastEventTime"].as_str());
    let ok = evs
        .iter()
        .filter(|e| e["eventName"] == "ListKeys" && e["errorCode"].is_null())
        .count();
    assert_eq!(ok, authenticated, "one record per authenticated request");
    let (code, out) = verify(&dir);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_refusals_are_shed_and_real_requests_still_recorded() {
    // A floor above any disk's free space: the daemon is below it from the start.
    let floor = 1u64 << 62;
    let (dir, server) = start_with_audit(
        "audit-floor",
        &format!("min_free_bytes = {floor}\nwarn_free_bytes = {floor}"),
    )
    .await;
    let addr = server.aws_json_addr.expect("AWS door enabled");
    let secret = fixture_credentials(ADMIN_AK).secret_access_key;
    let mut door = AwsDoor::new(addr);
    for _ in 0..50 {
        let (code, error) = door.list_keys(Signing::Unsigned).await;
        assert_eq!(
            (code, error.as_str()),
            (403, "MissingAuthenticationTokenException")
        );
    }
    assert_eq!(
        door.list_keys(Signing::With(ADMIN_AK, &secret)).await.0,
        200
    );
    let mut anon = client_as(server.addr, None).await;
    assert!(anon
        .list_keys(pb::ListKeysRequest::default())
        .await
        .is_err());
    let text = scrape(server.metrics_addr.expect("metrics")).await;
    assert_eq!(sample(&text, "p11kms_audit_refused_shed_total"), 51.0);
    assert_eq!(sample(&text, "p11kms_audit_space_state"), 2.0);
    assert!(sample(&text, "p11kms_audit_free_bytes") < floor as f64);
    drop(anon);
    server.shutdown().await.unwrap();
    let evs = events(&dir);
    assert!(
        evs.iter().all(|e| e["errorCode"].is_null()),
        "no refusal written: {evs:#?}"
    );
    assert_eq!(
        evs.iter().filter(|e| e["eventName"] == "ListKeys").count(),
        1,
        "the authenticated request has its record"
    );
    let (code, out) = verify(&dir);
    assert_eq!(code, 0, "{out}");
}
