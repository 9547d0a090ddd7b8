//! Account guardrails (the role of SCPs) and permission boundaries, end to end over gRPC with
//! the identity directory loaded from files.

mod common;

use std::path::Path;

use common::*;
use p11kms::pb;
use serde_json::{json, Value};

/// Starts, on a fresh data directory `name`, a daemon whose account 111122223333 has a
/// guardrail and whose user `admin` has a permission boundary; connects an admin client.
async fn start_guarded(name: &str) -> (p11kms::server::RunningServer, Client) {
    let dir = data_dir(name);
    let server = start_guarded_in(&dir).await;
    let c = admin(server.addr).await;
    (server, c)
}

/// The daemon of [`start_guarded`] on the data directory `dir`.
async fn start_guarded_in(dir: &Path) -> p11kms::server::RunningServer {
    let ids = copy_fixtures(dir);
    // Guardrail: everything is allowed except scheduling key deletion.
    std::fs::write(
        ids.join("no-deletion.json"),
        json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "AllowAll", "Effect": "Allow", "Action": "*", "Resource": "*"},
            {"Sid": "NoKeyDeletion", "Effect": "Deny", "Action": "kms:ScheduleKeyDeletion", "Resource": "*"}
        ]})
        .to_string(),
    )
    .unwrap();
    // Boundary on admin: KMS key management and encryption, but never decryption.
    let path = ids.join(format!("{ACCOUNT}.json"));
    let mut details: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let boundary_arn = format!("arn:aws:iam::{ACCOUNT}:policy/NoDecryptBoundary");
    details["Policies"].as_array_mut().unwrap().push(json!({
        "PolicyName": "NoDecryptBoundary",
        "PolicyId": "ANPABOUNDARY00000001",
        "Arn": boundary_arn,
        "Path": "/",
        "DefaultVersionId": "v1",
        "PolicyVersionList": [{"VersionId": "v1", "IsDefaultVersion": true, "Document": {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "NotAction": "kms:Decrypt", "Resource": "*"}]
        }}]
    }));
    let admin = user_mut(&mut details, "admin");
    admin["PermissionsBoundary"] = json!({
        "PermissionsBoundaryType": "Policy",
        "PermissionsBoundaryArn": boundary_arn
    });
    std::fs::write(&path, details.to_string()).unwrap();

    let text = config_text(dir)
        .replace(&fixtures_dir().display().to_string(), &ids.display().to_string())
        .replacen(
            &format!("authorization_details = \"{}/{ACCOUNT}.json\"", ids.display()),
            &format!(
                "authorization_details = \"{}/{ACCOUNT}.json\"\nguardrails = [\"{}/no-deletion.json\"]",
                ids.display(),
                ids.display()
            ),
            1,
        );
    assert!(text.contains("guardrails"), "{text}");
    let config = load_config_text(&dir.join("p11kms.toml"), text);
    p11kms::server::start(&config, p11kms::server::ServerOptions::default())
        .await
        .expect("daemon starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardrail_deny_beats_every_allow() {
    let (server, mut c) = start_guarded("guardrail").await;
    let key = create_key(&mut c).await;
    // admin's identity policy allows kms:*, the default key policy delegates to the account:
    // only the guardrail stands in the way.
    let before = server.kms.hsm().total_ops();
    let r = try_schedule_deletion(&mut c, &key, Some(7)).await;
    // AWS names the SCP-like guardrail.
    assert_refused(
        r,
        "the guardrail must deny",
        "AccessDeniedException",
        "service control policy",
    );
    assert_eq!(server.kms.hsm().total_ops(), before);
    let m = describe_key(&mut c, &key).await;
    assert_eq!(m.key_state, "Enabled", "nothing changed");
    // Everything else the guardrail allows still works.
    disable_key(&mut c, &key).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permission_boundary_caps_identity_policies() {
    let (server, mut c) = start_guarded("boundary").await;
    let key = create_key(&mut c).await;
    let blob = c
        .encrypt(encrypt_request(&key, b"bounded"))
        .await
        .expect("the boundary allows Encrypt")
        .into_inner()
        .ciphertext_blob;
    // admin's identity policy allows kms:Decrypt, but the boundary does not.
    let r = c.decrypt(decrypt_request(&blob, &[])).await;
    let status = r.expect_err("the boundary must cap Decrypt");
    assert!(
        status.message().contains("permissions boundary"),
        "{}",
        status.message()
    );
    // A key policy that names the user directly is not capped by the boundary (AWS rule).
    let admin_arn = format!("arn:aws:iam::{ACCOUNT}:user/admin");
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "AdminDirect", "Effect": "Allow", "Principal": {"AWS": admin_arn}, "Action": "kms:*", "Resource": "*"}
    ]})
    .to_string();
    c.put_key_policy(pb::PutKeyPolicyRequest {
        key_id: key.clone(),
        policy_name: String::new(),
        policy,
        bypass_policy_lockout_safety_check: false,
    })
    .await
    .unwrap();
    let pt = c
        .decrypt(decrypt_request(&blob, &[]))
        .await
        .expect("a key policy naming the user directly is not capped")
        .into_inner()
        .plaintext;
    assert_eq!(pt, b"bounded");
    server.shutdown().await.unwrap();
}

/// A `NotPrincipal` Deny in a key policy denies every caller that has a permissions boundary,
/// whatever the element lists (IAM User Guide): `admin` (boundary from the directory) is
/// denied although listed; `user1`, listed and without a boundary, is exempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_principal_deny_always_applies_to_a_caller_with_a_boundary() {
    let (server, mut admin_c) = start_guarded("boundary-notprincipal").await;
    let mut user1 = client_as(server.addr, Some("user1")).await;
    let root = format!("arn:aws:iam::{ACCOUNT}:root");
    let admin_arn = format!("arn:aws:iam::{ACCOUNT}:user/admin");
    let user1_arn = format!("arn:aws:iam::{ACCOUNT}:user/user1");
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Root", "Effect": "Allow", "Principal": {"AWS": root}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Users", "Effect": "Allow", "Principal": {"AWS": [admin_arn, user1_arn]},
         "Action": "kms:Encrypt", "Resource": "*"},
        {"Sid": "OnlyListed", "Effect": "Deny", "NotPrincipal": {"AWS": [admin_arn, user1_arn, root]},
         "Action": "kms:Encrypt", "Resource": "*"}
    ]});
    let key = create_key_with_policy(&mut admin_c, policy.to_string()).await;
    let encrypt = |key: &str| encrypt_request(key, b"listed");
    user1
        .encrypt(encrypt(&key))
        .await
        .expect("user1 is listed and has no boundary");
    let before = server.kms.hsm().total_ops();
    assert_refused(
        admin_c.encrypt(encrypt(&key)).await,
        "admin has a boundary: the NotPrincipal Deny applies",
        "AccessDeniedException",
        "explicit deny",
    );
    assert_eq!(server.kms.hsm().total_ops(), before, "no HSM call");
    server.shutdown().await.unwrap();
}
