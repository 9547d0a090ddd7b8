//! End-to-end authorization tests (issue 3): the real daemon on 127.0.0.1:0 with the identity
//! fixtures loaded from files, a real SoftHSM2 token, and real gRPC clients authenticating by
//! client certificate (mTLS) or by SigV4 access keys and AssumeRole session credentials.
//!
//! Cases (a)-(f) of the issue, key policies, ExplainAccess against live decisions, identity
//! reload, and the proof that a denied request makes no HSM call and changes no stored state.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use p11kms::api::grpc::status::aws_reason;
use p11kms::client::AccessKeyCredentials;
use p11kms::core::{Clock, ManualClock};
use p11kms::pb;
use p11kms::server::RunningServer;
use p11kms::store::GrantRecord;
use serde_json::json;
use tonic::Status;

const BOB: &str = "arn:aws:iam::111122223333:user/bob";
const NOPOLICY: &str = "arn:aws:iam::111122223333:user/nopolicy";
const CAROL: &str = "arn:aws:iam::111122223333:user/carol";
const KEYADMIN: &str = "arn:aws:iam::444455556666:user/keyadmin";
const ENGINEERING: &str = "arn:aws:iam::111122223333:role/Engineering";

const AK_ADMIN: &str = "AKIAADMIN00000000001";
const AK_USER1: &str = "AKIAUSER100000000001";
const AK_USER1_INACTIVE: &str = "AKIAUSER100000000002";
const AK_BOB: &str = "AKIABOB0000000000001";
const AK_NOPOLICY: &str = "AKIANOPOLICY00000001";
const AK_CAROL: &str = "AKIACAROL00000000001";

// ---------------------------------------------------------------------------------------------
// Helpers

fn session_arn(session: &str) -> String {
    format!("arn:aws:sts::{ACCOUNT}:assumed-role/Engineering/{session}")
}

/// A caller of the KMS service: by client certificate or by SigV4.
enum Who {
    Tls(Client),
    Sig(Box<Signed>),
}

impl Who {
    async fn cert(addr: std::net::SocketAddr, cn: &str) -> Who {
        Who::Tls(client_as(addr, Some(cn)).await)
    }

    async fn key(addr: std::net::SocketAddr, access_key_id: &str) -> Who {
        Who::Sig(Box::new(signed_as(addr, access_key_id).await))
    }

    async fn creds(addr: std::net::SocketAddr, creds: AccessKeyCredentials) -> Who {
        Who::Sig(Box::new(signed_with(addr, creds).await))
    }

    fn req<T: prost::Message>(&self, msg: T, method: &str) -> tonic::Request<T> {
        match self {
            Who::Tls(_) => tonic::Request::new(msg),
            Who::Sig(s) => s.kms_req(msg, method),
        }
    }

    fn kms(&mut self) -> &mut Client {
        match self {
            Who::Tls(c) => c,
            Who::Sig(s) => &mut s.kms,
        }
    }
}

/// Calls a KMS method as `who` (signing it when `who` uses SigV4).
macro_rules! kms {
    ($who:ident . $method:ident ( $rpc:literal, $msg:expr )) => {{
        let req = $who.req($msg, $rpc);
        $who.kms().$method(req).await.map(|r| r.into_inner())
    }};
}

/// Asserts an AccessDeniedException and returns its message.
fn denied<T: std::fmt::Debug>(r: Result<T, Status>) -> String {
    match r {
        Ok(v) => panic!("expected AccessDeniedException, got {v:?}"),
        Err(s) => {
            assert_eq!(
                aws_reason(&s).as_deref(),
                Some("AccessDeniedException"),
                "{s:?}"
            );
            assert_eq!(s.code(), tonic::Code::PermissionDenied);
            s.message().to_string()
        }
    }
}

fn implicit_deny_msg(principal: &str, action: &str, resource: &str, phrase: &str) -> String {
    format!(
        "User: {principal} is not authorized to perform: {action} on resource: {resource} because no {phrase} allows the {action} action"
    )
}

fn explicit_deny_msg(principal: &str, action: &str, resource: &str, phrase: &str) -> String {
    format!(
        "User: {principal} is not authorized to perform: {action} on resource: {resource} with an explicit deny in a {phrase}"
    )
}

async fn encrypt(
    who: &mut Who,
    key: &str,
    ec: &[(&str, &str)],
    tokens: &[String],
) -> Result<pb::EncryptResponse, Status> {
    kms!(who.encrypt(
        "Encrypt",
        pb::EncryptRequest {
            key_id: key.into(),
            plaintext: b"attack at dawn".to_vec(),
            encryption_context: ctx(ec),
            grant_tokens: tokens.to_vec(),
            ..Default::default()
        }
    ))
}

async fn decrypt(
    who: &mut Who,
    blob: &[u8],
    ec: &[(&str, &str)],
    key_id: &str,
) -> Result<pb::DecryptResponse, Status> {
    kms!(who.decrypt(
        "Decrypt",
        pb::DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            encryption_context: ctx(ec),
            key_id: key_id.into(),
            ..Default::default()
        }
    ))
}

async fn generate_data_key(
    who: &mut Who,
    key: &str,
    ec: &[(&str, &str)],
) -> Result<pb::GenerateDataKeyResponse, Status> {
    kms!(who.generate_data_key(
        "GenerateDataKey",
        pb::GenerateDataKeyRequest {
            key_id: key.into(),
            encryption_context: ctx(ec),
            number_of_bytes: Some(32),
            ..Default::default()
        }
    ))
}

async fn describe(who: &mut Who, key: &str) -> Result<pb::KeyMetadata, Status> {
    kms!(who.describe_key(
        "DescribeKey",
        pb::DescribeKeyRequest {
            key_id: key.into(),
            grant_tokens: vec![],
        }
    ))
    .map(|r| r.key_metadata.expect("metadata"))
}

async fn create_key_with(
    who: &mut Who,
    policy: Option<String>,
    bypass: bool,
) -> Result<pb::KeyMetadata, Status> {
    kms!(who.create_key(
        "CreateKey",
        pb::CreateKeyRequest {
            policy: policy.unwrap_or_default(),
            bypass_policy_lockout_safety_check: bypass,
            ..Default::default()
        }
    ))
    .map(|r| r.key_metadata.expect("metadata"))
}

async fn get_policy(who: &mut Who, key: &str) -> Result<String, Status> {
    kms!(who.get_key_policy(
        "GetKeyPolicy",
        pb::GetKeyPolicyRequest {
            key_id: key.into(),
            policy_name: "default".into(),
        }
    ))
    .map(|r| r.policy)
}

async fn put_policy(
    who: &mut Who,
    key: &str,
    policy: &str,
    bypass: bool,
) -> Result<pb::PutKeyPolicyResponse, Status> {
    kms!(who.put_key_policy(
        "PutKeyPolicy",
        pb::PutKeyPolicyRequest {
            key_id: key.into(),
            policy_name: "default".into(),
            policy: policy.into(),
            bypass_policy_lockout_safety_check: bypass,
        }
    ))
}

fn json_eq(a: &str, b: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(a).unwrap()
        == serde_json::from_str::<serde_json::Value>(b).unwrap()
}

/// Key policy of case (a): admin administers, user1 uses.
fn policy_a() -> String {
    let users = [
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:GenerateDataKey*",
        "kms:DescribeKey",
    ];
    let mut policy = admin_and_user_policy(ADMIN, USER1, &users, &[]);
    policy["Id"] = json!("key-users-a");
    policy.to_string()
}

/// Key policy of case (c): keyadmin administers; account 111122223333 may use the key (and
/// ScheduleKeyDeletion is listed, to prove it has no effect across accounts).
fn policy_c() -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "KeyAdministrator", "Effect": "Allow", "Principal": {"AWS": KEYADMIN},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "AllowAccount111122223333", "Effect": "Allow",
             "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey",
                        "kms:ScheduleKeyDeletion"],
             "Resource": "*"}
        ]
    })
    .to_string()
}

/// Key policy of case (d): user1 may encrypt and decrypt, except with dept=hr.
fn policy_d() -> String {
    let both = ["kms:Encrypt", "kms:Decrypt"];
    let deny_hr = json!({"Sid": "DenyHR", "Effect": "Deny", "Principal": "*",
        "Action": both, "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:dept": "hr"}}});
    admin_and_user_policy(ADMIN, USER1, &both, &[deny_hr]).to_string()
}

fn default_policy(account: &str) -> String {
    json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
            "Action": "kms:*",
            "Resource": "*"
        }]
    })
    .to_string()
}

/// bob assumes Engineering through the STS service, signed with his access key.
async fn assume_engineering(
    addr: std::net::SocketAddr,
    session: &str,
    duration: Option<i32>,
) -> (pb::AssumeRoleResponse, AccessKeyCredentials) {
    assume_engineering_with(addr, session, duration, "").await
}

/// As [`assume_engineering`], with a session policy (empty for none).
async fn assume_engineering_with(
    addr: std::net::SocketAddr,
    session: &str,
    duration: Option<i32>,
    session_policy: &str,
) -> (pb::AssumeRoleResponse, AccessKeyCredentials) {
    let mut bob = signed_as(addr, AK_BOB).await;
    let out = bob
        .sts
        .assume_role(bob.sts_req(
            pb::AssumeRoleRequest {
                role_arn: ENGINEERING.into(),
                role_session_name: session.into(),
                duration_seconds: duration,
                policy: session_policy.into(),
                ..Default::default()
            },
            "AssumeRole",
        ))
        .await
        .expect("bob assumes Engineering")
        .into_inner();
    let c = out.credentials.clone().expect("credentials");
    assert!(c.access_key_id.starts_with("ASIA"), "{}", c.access_key_id);
    let creds = AccessKeyCredentials {
        access_key_id: c.access_key_id,
        secret_access_key: zeroize::Zeroizing::new(c.secret_access_key),
        session_token: Some(zeroize::Zeroizing::new(c.session_token)),
    };
    (out, creds)
}

fn explain_req(
    principal: &str,
    action: &str,
    key: &str,
    ec: &[(&str, &str)],
) -> pb::ExplainAccessRequest {
    pb::ExplainAccessRequest {
        principal: principal.into(),
        action: action.into(),
        key_id: key.into(),
        encryption_context: ctx(ec),
        source_ip: String::new(),
        xks_request_metadata: Default::default(),
    }
}

fn statements(r: &pb::ExplainAccessResponse) -> Vec<(String, String, String)> {
    r.deciding_statements
        .iter()
        .map(|d| {
            (
                d.policy_type.clone(),
                d.policy_name.clone(),
                d.statement.clone(),
            )
        })
        .collect()
}

fn triple(t: &str, n: &str, s: &str) -> (String, String, String) {
    (t.to_string(), n.to_string(), s.to_string())
}

// ---------------------------------------------------------------------------------------------
// (a) A key policy that names key users

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_policy_gives_key_user_rights_to_user1_only() {
    let dir = data_dir("authz-a");
    let server = start(&dir).await;
    let mut admin = Who::cert(server.addr, "admin").await;
    let mut user1 = Who::cert(server.addr, "user1").await;
    let mut user2 = Who::cert(server.addr, "user2").await;

    // A policy that leaves the creator no way to change it fails the lockout safety check, and
    // creates nothing (no key, no HSM call).
    let keys_before = server.kms.key_count();
    let ops_before = server.kms.hsm().total_ops();
    let users_only = json!({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "KeyUsers", "Effect": "Allow", "Principal": {"AWS": USER1},
                       "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"}]
    })
    .to_string();
    let r = create_key_with(&mut admin, Some(users_only), false).await;
    let err = r.unwrap_err();
    assert_eq!(
        aws_reason(&err).as_deref(),
        Some("MalformedPolicyDocumentException")
    );
    assert!(
        err.message()
            .contains("will not allow you to update the key policy in the future"),
        "{}",
        err.message()
    );
    assert_eq!(server.kms.key_count(), keys_before);
    assert_eq!(server.kms.hsm().total_ops(), ops_before);

    let created = create_key_with(&mut admin, Some(policy_a()), false)
        .await
        .expect("create key with policy");
    let key = created.key_id.clone();
    let arn = created.arn.clone();
    assert!(json_eq(
        &get_policy(&mut admin, &key).await.unwrap(),
        &policy_a()
    ));

    // user1: encrypt, decrypt, data keys, describe.
    let ec = [("app", "payroll")];
    let blob = encrypt(&mut user1, &key, &ec, &[])
        .await
        .expect("user1 encrypts")
        .ciphertext_blob;
    let out = decrypt(&mut user1, &blob, &ec, "")
        .await
        .expect("user1 decrypts");
    assert_eq!(out.plaintext, b"attack at dawn");
    assert_eq!(out.key_id, arn);
    let dk = generate_data_key(&mut user1, &key, &ec)
        .await
        .expect("user1 generates a data key");
    assert_eq!(dk.plaintext.len(), 32);
    let back = decrypt(&mut user1, &dk.ciphertext_blob, &ec, &key)
        .await
        .unwrap();
    assert_eq!(back.plaintext, dk.plaintext);
    assert_eq!(describe(&mut user1, &key).await.unwrap().arn, arn);
    // ...but nothing beyond the key-user actions.
    denied(kms!(user1.disable_key(
        "DisableKey",
        pb::DisableKeyRequest {
            key_id: key.clone()
        }
    )));
    denied(get_policy(&mut user1, &key).await);

    // user2 (S3 read-only identity policy, not named by the key policy) is denied, and the
    // message names the policy type as AWS does, without policy text.
    let ops = server.kms.hsm().total_ops();
    let msg = denied(decrypt(&mut user2, &blob, &ec, "").await);
    assert_eq!(
        msg,
        implicit_deny_msg(USER2, "kms:Decrypt", &arn, "resource-based policy")
    );
    for secret in ["KeyUsers", "KeyAdministrators", "Statement", "user1"] {
        assert!(!msg.contains(secret), "message leaks policy text: {msg}");
    }
    denied(encrypt(&mut user2, &key, &ec, &[]).await);
    denied(generate_data_key(&mut user2, &key, &ec).await);
    denied(describe(&mut user2, &key).await);
    assert_eq!(
        server.kms.hsm().total_ops(),
        ops,
        "denied calls reached the HSM"
    );

    // The key administrator may use it too (kms:* for admin).
    let again = decrypt(&mut admin, &blob, &ec, "").await.unwrap();
    assert_eq!(again.plaintext, b"attack at dawn");
    assert_eq!(
        describe(&mut admin, &key).await.unwrap().key_state,
        "Enabled"
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// (b) The default key policy delegates to the account's IAM

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_default_policy_delegates_to_iam_and_no_identity_policy_is_denied() {
    let dir = data_dir("authz-b");
    let server = start(&dir).await;
    let mut admin = Who::key(server.addr, AK_ADMIN).await;
    let mut nopolicy = Who::key(server.addr, AK_NOPOLICY).await;
    let mut user1 = Who::cert(server.addr, "user1").await;
    let mut carol = Who::key(server.addr, AK_CAROL).await;

    let created = create_key_with(&mut admin, None, false).await.unwrap();
    let (key, arn) = (created.key_id, created.arn);
    assert_eq!(created.aws_account_id, ACCOUNT);

    // admin: KmsAdmin allows kms:*, and the key policy delegates to the account.
    let blob = encrypt(&mut admin, &key, &[("a", "b")], &[])
        .await
        .expect("admin encrypts")
        .ciphertext_blob;
    assert_eq!(
        decrypt(&mut admin, &blob, &[("a", "b")], "")
            .await
            .expect("admin decrypts")
            .plaintext,
        b"attack at dawn"
    );

    // nopolicy: authenticated, but no identity policy allows anything.
    if let Who::Sig(s) = &mut nopolicy {
        let who = s
            .sts
            .get_caller_identity(s.sts_req(pb::GetCallerIdentityRequest {}, "GetCallerIdentity"))
            .await
            .reply();
        assert_eq!(who.arn, NOPOLICY);
    }
    let ops = server.kms.hsm().total_ops();
    let msg = denied(encrypt(&mut nopolicy, &key, &[("a", "b")], &[]).await);
    assert_eq!(
        msg,
        implicit_deny_msg(NOPOLICY, "kms:Encrypt", &arn, "identity-based policy")
    );
    let msg = denied(decrypt(&mut nopolicy, &blob, &[("a", "b")], "").await);
    assert_eq!(
        msg,
        implicit_deny_msg(NOPOLICY, "kms:Decrypt", &arn, "identity-based policy")
    );
    denied(describe(&mut nopolicy, &key).await);
    // The same for user1 (no identity policy) over mTLS.
    denied(decrypt(&mut user1, &blob, &[("a", "b")], "").await);
    assert_eq!(server.kms.hsm().total_ops(), ops);

    // carol's group policy allows kms:Encrypt only: group policies count, and only for what
    // they name.
    encrypt(&mut carol, &key, &[("a", "b")], &[])
        .await
        .expect("carol encrypts through her group's policy");
    let msg = denied(decrypt(&mut carol, &blob, &[("a", "b")], "").await);
    assert_eq!(
        msg,
        implicit_deny_msg(CAROL, "kms:Decrypt", &arn, "identity-based policy")
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// (c) Cross-account use through an assumed role

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_cross_account_key_used_through_assumed_role() {
    let dir = data_dir("authz-c");
    let server = start(&dir).await;
    let mut keyadmin = Who::cert(server.addr, "keyadmin").await;
    let created = create_key_with(&mut keyadmin, Some(policy_c()), false)
        .await
        .expect("keyadmin creates the shared key");
    assert_eq!(created.aws_account_id, OTHER_ACCOUNT);
    let (key, arn) = (created.key_id.clone(), created.arn.clone());
    let ec = [("purpose", "xacct")];
    let blob = encrypt(&mut keyadmin, &key, &ec, &[])
        .await
        .unwrap()
        .ciphertext_blob;

    // bob without the role: the key policy trusts his account, but his identity policy
    // allows only sts:AssumeRole.
    let mut bob = Who::key(server.addr, AK_BOB).await;
    let ops = server.kms.hsm().total_ops();
    let msg = denied(decrypt(&mut bob, &blob, &ec, &arn).await);
    assert_eq!(
        msg,
        implicit_deny_msg(BOB, "kms:Decrypt", &arn, "identity-based policy")
    );
    denied(encrypt(&mut bob, &arn, &ec, &[]).await);
    // Nor may another user of the account (no KMS identity policy).
    let mut user2 = Who::cert(server.addr, "user2").await;
    denied(decrypt(&mut user2, &blob, &ec, &arn).await);
    assert_eq!(server.kms.hsm().total_ops(), ops);

    // Only bob may assume Engineering (its trust policy).
    let mut user1 = signed_as(server.addr, AK_USER1).await;
    let r = user1
        .sts
        .assume_role(user1.sts_req(
            pb::AssumeRoleRequest {
                role_arn: ENGINEERING.into(),
                role_session_name: "sneaky".into(),
                ..Default::default()
            },
            "AssumeRole",
        ))
        .await;
    denied(r);

    // bob assumes the role and decrypts with the session credentials, naming the key by ARN.
    let (out, creds) = assume_engineering(server.addr, "bob-session", None).await;
    let user = out.assumed_role_user.unwrap();
    assert_eq!(user.arn, session_arn("bob-session"));
    let expiration = out.credentials.unwrap().expiration.unwrap().seconds;
    let now = server.kms.now_ms() / 1000;
    assert!(
        (now + 3590..=now + 3610).contains(&expiration),
        "default duration is one hour: {expiration} vs {now}"
    );
    let mut session = Who::creds(server.addr, creds).await;
    if let Who::Sig(s) = &mut session {
        let who = s
            .sts
            .get_caller_identity(s.sts_req(pb::GetCallerIdentityRequest {}, "GetCallerIdentity"))
            .await
            .reply();
        assert_eq!(who.arn, session_arn("bob-session"));
        assert_eq!(who.account, ACCOUNT);
    }
    let plain = decrypt(&mut session, &blob, &ec, &arn)
        .await
        .expect("the role session decrypts across accounts");
    assert_eq!(plain.plaintext, b"attack at dawn");
    assert_eq!(plain.key_id, arn);
    let mine = encrypt(&mut session, &arn, &ec, &[])
        .await
        .expect("the role session encrypts by key ARN");
    assert_eq!(mine.key_id, arn);
    generate_data_key(&mut session, &arn, &ec)
        .await
        .expect("GenerateDataKey* is shared");
    assert_eq!(describe(&mut session, &arn).await.unwrap().key_id, key);
    // A bare key id names a key in the caller's own account, where there is none.
    let r = decrypt(&mut session, &blob, &ec, &key).await;
    assert_eq!(reason(r), "NotFoundException");
    // A key ARN of the other account that names no key is AccessDenied, not NotFound.
    let ghost = format!(
        "arn:aws:kms:us-east-1:{OTHER_ACCOUNT}:key/{}",
        uuid::Uuid::new_v4()
    );
    denied(describe(&mut session, &ghost).await);

    // A session policy narrows what the role may do: Encrypt only.
    let narrow = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*"}]})
    .to_string();
    let (_, narrow_creds) = assume_engineering_with(server.addr, "narrow", None, &narrow).await;
    let mut narrowed = Who::creds(server.addr, narrow_creds).await;
    encrypt(&mut narrowed, &arn, &ec, &[])
        .await
        .expect("the session policy allows Encrypt");
    let msg = denied(decrypt(&mut narrowed, &blob, &ec, &arn).await);
    assert_eq!(
        msg,
        implicit_deny_msg(
            &session_arn("narrow"),
            "kms:Decrypt",
            &arn,
            "session policy"
        )
    );

    // Management across accounts is out of scope even though the key policy lists
    // ScheduleKeyDeletion and the role's identity policy allows it (gate 0).
    let ops = server.kms.hsm().total_ops();
    let msg = denied(kms!(session.schedule_key_deletion(
        "ScheduleKeyDeletion",
        pb::ScheduleKeyDeletionRequest {
            key_id: arn.clone(),
            pending_window_in_days: Some(7),
        }
    )));
    assert!(
        msg.starts_with(&format!(
            "User: {} is not authorized to perform: kms:ScheduleKeyDeletion on resource: {arn}",
            session_arn("bob-session")
        )),
        "{msg}"
    );
    denied(kms!(session.disable_key(
        "DisableKey",
        pb::DisableKeyRequest {
            key_id: arn.clone()
        }
    )));
    denied(get_policy(&mut session, &arn).await);
    assert_eq!(server.kms.hsm().total_ops(), ops);
    let m = describe(&mut keyadmin, &key).await.unwrap();
    assert_eq!(m.key_state, "Enabled");
    assert!(m.deletion_date.is_none());
    // The key's own administrator can still do it (the denial was about scope, not the key).
    kms!(keyadmin.schedule_key_deletion(
        "ScheduleKeyDeletion",
        pb::ScheduleKeyDeletionRequest {
            key_id: key.clone(),
            pending_window_in_days: Some(7),
        }
    ))
    .expect("keyadmin schedules deletion");
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// (d) An explicit deny on one encryption-context value

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_explicit_deny_on_encryption_context_value_beats_allow() {
    let dir = data_dir("authz-d");
    let server = start(&dir).await;
    let mut admin = Who::cert(server.addr, "admin").await;
    let mut user1 = Who::cert(server.addr, "user1").await;
    let created = create_key_with(&mut admin, Some(policy_d()), false)
        .await
        .unwrap();
    let (key, arn) = (created.key_id, created.arn);

    let blob = encrypt(&mut user1, &key, &[("dept", "finance")], &[])
        .await
        .expect("dept=finance is allowed")
        .ciphertext_blob;
    decrypt(&mut user1, &blob, &[("dept", "finance")], "")
        .await
        .expect("and decrypts");

    let ops = server.kms.hsm().total_ops();
    let msg = denied(encrypt(&mut user1, &key, &[("dept", "hr")], &[]).await);
    assert_eq!(
        msg,
        explicit_deny_msg(USER1, "kms:Encrypt", &arn, "resource-based policy")
    );
    // Extra pairs do not help; the deny also beats the administrator's kms:* allows.
    denied(encrypt(&mut user1, &key, &[("dept", "hr"), ("x", "y")], &[]).await);
    let msg = denied(encrypt(&mut admin, &key, &[("dept", "hr")], &[]).await);
    assert!(msg.ends_with("with an explicit deny in a resource-based policy"));
    // Condition key names are case-insensitive; StringEquals values are not.
    denied(encrypt(&mut user1, &key, &[("Dept", "hr")], &[]).await);
    assert_eq!(server.kms.hsm().total_ops(), ops);
    encrypt(&mut user1, &key, &[("dept", "HR")], &[])
        .await
        .expect("StringEquals is case-sensitive: HR is not hr");
    encrypt(&mut user1, &key, &[], &[])
        .await
        .expect("no context, no deny");
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// (e) Grants

fn subset(pairs: &[(&str, &str)]) -> Option<pb::GrantConstraints> {
    Some(pb::GrantConstraints {
        encryption_context_subset: Some(pb::EncryptionContextConstraint { pairs: ctx(pairs) }),
        encryption_context_equals: None,
    })
}

async fn list_grants(who: &mut Who, key: &str) -> Vec<pb::GrantListEntry> {
    kms!(who.list_grants(
        "ListGrants",
        pb::ListGrantsRequest {
            key_id: key.into(),
            ..Default::default()
        }
    ))
    .expect("list grants")
    .grants
}

/// A grant stored with the bare account id as its issuing account (before IssuingAccount was
/// the root ARN) is listed with the root ARN, by ListGrants and ListRetirableGrants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_bare_issuing_account_is_listed_as_the_root_arn() {
    let dir = data_dir("authz-issuing-account");
    let server = start(&dir).await;
    let mut admin = Who::cert(server.addr, "admin").await;
    let created = create_key_with(&mut admin, None, false).await.unwrap();
    let legacy = GrantRecord {
        grant_id: "0".repeat(64),
        key_id: created.key_id.clone(),
        name: None,
        grantee_principal: USER1.into(),
        retiring_principal: Some(ADMIN.into()),
        operations: vec!["Decrypt".into()],
        constraint_equals: None,
        constraint_subset: None,
        issuing_account: ACCOUNT.into(),
        created_at_ms: 1,
    };
    server
        .kms
        .store()
        .insert_grant(&legacy, p11kms::core::grants::MAX_GRANTS_PER_KEY)
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let server = start(&dir).await;
    let mut admin = Who::cert(server.addr, "admin").await;
    let root = format!("arn:aws:iam::{ACCOUNT}:root");
    let grants = list_grants(&mut admin, &created.key_id).await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].issuing_account, root);
    let retirable = kms!(admin.list_retirable_grants(
        "ListRetirableGrants",
        pb::ListRetirableGrantsRequest {
            retiring_principal: ADMIN.into(),
            ..Default::default()
        }
    ))
    .unwrap()
    .grants;
    assert_eq!(retirable.len(), 1, "{retirable:?}");
    assert_eq!(retirable[0].issuing_account, root);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_grant_with_encryption_context_subset() {
    let dir = data_dir("authz-e");
    let server = start(&dir).await;
    let mut admin = Who::cert(server.addr, "admin").await;
    let mut user1 = Who::cert(server.addr, "user1").await;
    let mut user2 = Who::cert(server.addr, "user2").await;
    let mut carol = Who::key(server.addr, AK_CAROL).await;
    let created = create_key_with(&mut admin, None, false).await.unwrap();
    let (key, arn) = (created.key_id, created.arn);
    let alpha = [("project", "alpha")];

    // Before the grant user1 has nothing (default policy, no identity policy).
    denied(encrypt(&mut user1, &key, &alpha, &[]).await);

    let grant_req = pb::CreateGrantRequest {
        key_id: key.clone(),
        grantee_principal: USER1.into(),
        retiring_principal: CAROL.into(),
        operations: vec!["Encrypt".into(), "Decrypt".into()],
        constraints: subset(&alpha),
        grant_tokens: vec![],
        name: "user1-alpha".into(),
        dry_run: false,
    };
    let g = kms!(admin.create_grant("CreateGrant", grant_req.clone())).expect("create grant");
    assert_eq!(g.grant_id.len(), 64);
    assert!(!g.grant_token.is_empty());

    // ExplainAccess names the grant as what allows.
    let mut explainer = signed_as(server.addr, AK_ADMIN).await;
    let e = explain(
        &mut explainer,
        explain_req(USER1, "kms:Encrypt", &key, &alpha),
    )
    .await
    .unwrap();
    assert_eq!(e.decision, "Allow");
    assert_eq!(
        statements(&e),
        vec![triple("Grant", &g.grant_id, &g.grant_id)]
    );

    // A matching context (extra pairs allowed) works at once; another is denied.
    let blob = encrypt(
        &mut user1,
        &key,
        &[("project", "alpha"), ("stage", "prod")],
        &[],
    )
    .await
    .expect("grant allows a context that includes the constraint")
    .ciphertext_blob;
    let plain = decrypt(
        &mut user1,
        &blob,
        &[("project", "alpha"), ("stage", "prod")],
        "",
    )
    .await
    .expect("and decrypt");
    assert_eq!(plain.plaintext, b"attack at dawn");
    let ops = server.kms.hsm().total_ops();
    denied(encrypt(&mut user1, &key, &[("project", "beta")], &[]).await);
    denied(encrypt(&mut user1, &key, &[], &[]).await);
    denied(encrypt(&mut user1, &key, &[("Project", "alpha")], &[]).await);
    // Only the granted operations.
    denied(generate_data_key(&mut user1, &key, &alpha).await);
    denied(describe(&mut user1, &key).await);
    assert_eq!(server.kms.hsm().total_ops(), ops);

    // The grant token is accepted in GrantTokens; an unknown one is refused.
    encrypt(
        &mut user1,
        &key,
        &alpha,
        std::slice::from_ref(&g.grant_token),
    )
    .await
    .expect("grant token accepted");
    let r = encrypt(&mut user1, &key, &alpha, &["not-a-grant-token".to_string()]).await;
    assert_eq!(reason(r), "InvalidGrantTokenException");

    // Name idempotency: the same name and properties return the same grant, with a new token.
    let again = kms!(admin.create_grant("CreateGrant", grant_req.clone())).unwrap();
    assert_eq!(again.grant_id, g.grant_id);
    assert_ne!(again.grant_token, g.grant_token);
    encrypt(
        &mut user1,
        &key,
        &alpha,
        std::slice::from_ref(&again.grant_token),
    )
    .await
    .expect("the second token names the same grant");
    // The same name with other properties is another grant.
    let other = kms!(admin.create_grant(
        "CreateGrant",
        pb::CreateGrantRequest {
            operations: vec!["Encrypt".into()],
            ..grant_req.clone()
        }
    ))
    .unwrap();
    assert_ne!(other.grant_id, g.grant_id);

    // ListGrants shows both, with their properties.
    let grants = list_grants(&mut admin, &key).await;
    assert_eq!(grants.len(), 2, "{grants:?}");
    let mine = grants.iter().find(|e| e.grant_id == g.grant_id).unwrap();
    assert_eq!(mine.key_id, arn);
    assert_eq!(mine.name, "user1-alpha");
    assert_eq!(mine.grantee_principal, USER1);
    assert_eq!(mine.retiring_principal, CAROL);
    assert_eq!(mine.issuing_account, format!("arn:aws:iam::{ACCOUNT}:root"));
    assert_eq!(mine.operations, vec!["Decrypt", "Encrypt"]);
    let c = mine.constraints.clone().unwrap();
    assert_eq!(c.encryption_context_subset.unwrap().pairs, ctx(&alpha));
    assert!(c.encryption_context_equals.is_none());
    let filtered = kms!(admin.list_grants(
        "ListGrants",
        pb::ListGrantsRequest {
            key_id: key.clone(),
            grant_id: g.grant_id.clone(),
            ..Default::default()
        }
    ))
    .unwrap()
    .grants;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].grant_id, g.grant_id);
    let r = kms!(admin.list_grants(
        "ListGrants",
        pb::ListGrantsRequest {
            key_id: key.clone(),
            grant_id: "xyz".into(),
            ..Default::default()
        }
    ));
    assert_eq!(reason(r), "InvalidGrantIdException");
    // user1 (a grantee without ListGrants) may not list.
    denied(kms!(user1.list_grants(
        "ListGrants",
        pb::ListGrantsRequest {
            key_id: key.clone(),
            ..Default::default()
        }
    )));

    // ListRetirableGrants (IAM-only): admin may, carol (kms:Encrypt only) may not.
    let retirable = kms!(admin.list_retirable_grants(
        "ListRetirableGrants",
        pb::ListRetirableGrantsRequest {
            retiring_principal: CAROL.into(),
            ..Default::default()
        }
    ))
    .unwrap()
    .grants;
    let mut ids: Vec<_> = retirable.iter().map(|e| e.grant_id.clone()).collect();
    ids.sort();
    let mut want = vec![g.grant_id.clone(), other.grant_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    denied(kms!(carol.list_retirable_grants(
        "ListRetirableGrants",
        pb::ListRetirableGrantsRequest {
            retiring_principal: CAROL.into(),
            ..Default::default()
        }
    )));

    // RevokeGrant: not by the grantee, yes by the admin; malformed and unknown ids.
    denied(kms!(user1.revoke_grant(
        "RevokeGrant",
        pb::RevokeGrantRequest {
            key_id: key.clone(),
            grant_id: other.grant_id.clone(),
            dry_run: false,
        }
    )));
    kms!(admin.revoke_grant(
        "RevokeGrant",
        pb::RevokeGrantRequest {
            key_id: key.clone(),
            grant_id: other.grant_id.clone(),
            dry_run: false,
        }
    ))
    .expect("admin revokes");
    let r = kms!(admin.revoke_grant(
        "RevokeGrant",
        pb::RevokeGrantRequest {
            key_id: key.clone(),
            grant_id: "not-a-grant-id".into(),
            dry_run: false,
        }
    ));
    assert_eq!(reason(r), "InvalidGrantIdException");
    let r = kms!(admin.revoke_grant(
        "RevokeGrant",
        pb::RevokeGrantRequest {
            key_id: key.clone(),
            grant_id: "0".repeat(64),
            dry_run: false,
        }
    ));
    assert_eq!(reason(r), "NotFoundException");
    let grants = list_grants(&mut admin, &key).await;
    assert_eq!(
        grants
            .iter()
            .map(|e| e.grant_id.as_str())
            .collect::<Vec<_>>(),
        vec![g.grant_id.as_str()]
    );

    // RetireGrant: not by an unrelated user; by the retiring principal, by token.
    denied(kms!(user2.retire_grant(
        "RetireGrant",
        pb::RetireGrantRequest {
            grant_token: String::new(),
            key_id: arn.clone(),
            grant_id: g.grant_id.clone(),
            dry_run: false,
        }
    )));
    assert_eq!(list_grants(&mut admin, &key).await.len(), 1);
    kms!(carol.retire_grant(
        "RetireGrant",
        pb::RetireGrantRequest {
            grant_token: g.grant_token.clone(),
            ..Default::default()
        }
    ))
    .expect("the retiring principal retires by token");
    assert!(list_grants(&mut admin, &key).await.is_empty());

    // The grantee is denied again, and the token no longer names a grant.
    let msg = denied(encrypt(&mut user1, &key, &alpha, &[]).await);
    assert_eq!(
        msg,
        implicit_deny_msg(USER1, "kms:Encrypt", &arn, "identity-based policy")
    );
    denied(
        decrypt(
            &mut user1,
            &blob,
            &[("project", "alpha"), ("stage", "prod")],
            "",
        )
        .await,
    );
    let r = encrypt(
        &mut user1,
        &key,
        &alpha,
        std::slice::from_ref(&g.grant_token),
    )
    .await;
    assert_eq!(reason(r), "InvalidGrantTokenException");
    let r = kms!(carol.retire_grant(
        "RetireGrant",
        pb::RetireGrantRequest {
            grant_token: g.grant_token.clone(),
            ..Default::default()
        }
    ));
    assert_eq!(reason(r), "InvalidGrantTokenException");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_grant_across_accounts_and_retired_by_its_grantee() {
    let dir = data_dir("authz-e2");
    let server = start(&dir).await;
    let mut keyadmin = Who::cert(server.addr, "keyadmin").await;
    let mut user2 = Who::cert(server.addr, "user2").await;
    let created = create_key_with(&mut keyadmin, Some(policy_c()), false)
        .await
        .unwrap();
    let (key, arn) = (created.key_id, created.arn);
    let ec = [("purpose", "xacct")];
    let blob = encrypt(&mut keyadmin, &key, &ec, &[])
        .await
        .unwrap()
        .ciphertext_blob;
    // user2 has no KMS identity policy: the key policy's trust of the account is not enough.
    denied(decrypt(&mut user2, &blob, &ec, &arn).await);

    // A grant in the key's account is enough for a grantee in another account (spec 3.2).
    let g = kms!(keyadmin.create_grant(
        "CreateGrant",
        pb::CreateGrantRequest {
            key_id: key.clone(),
            grantee_principal: USER2.into(),
            operations: vec!["Decrypt".into(), "RetireGrant".into()],
            constraints: Some(pb::GrantConstraints {
                encryption_context_subset: None,
                encryption_context_equals: Some(pb::EncryptionContextConstraint {
                    pairs: ctx(&ec),
                }),
            }),
            ..Default::default()
        }
    ))
    .unwrap();
    let plain = decrypt(&mut user2, &blob, &ec, &arn)
        .await
        .expect("the grant allows the cross-account grantee");
    assert_eq!(plain.plaintext, b"attack at dawn");
    // EncryptionContextEquals: an extra pair is not equal.
    let extra = encrypt(
        &mut keyadmin,
        &key,
        &[("purpose", "xacct"), ("x", "y")],
        &[],
    )
    .await
    .unwrap()
    .ciphertext_blob;
    denied(
        decrypt(
            &mut user2,
            &extra,
            &[("purpose", "xacct"), ("x", "y")],
            &arn,
        )
        .await,
    );
    // Only the granted operation.
    denied(encrypt(&mut user2, &arn, &ec, &[]).await);

    // The grantee may retire a grant that includes RetireGrant.
    kms!(user2.retire_grant(
        "RetireGrant",
        pb::RetireGrantRequest {
            grant_token: String::new(),
            key_id: arn.clone(),
            grant_id: g.grant_id.clone(),
            dry_run: false,
        }
    ))
    .expect("grantee retires");
    assert!(list_grants(&mut keyadmin, &key).await.is_empty());
    denied(decrypt(&mut user2, &blob, &ec, &arn).await);
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// (f) Credentials that must be refused

fn flip_signature_digit<T>(req: &mut tonic::Request<T>) {
    let md = req.metadata_mut();
    let value = md
        .get("authorization")
        .expect("signed")
        .to_str()
        .unwrap()
        .to_string();
    let at = value.rfind("Signature=").expect("Signature=") + "Signature=".len();
    let mut bytes = value.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(bytes).unwrap();
    md.insert("authorization", tampered.parse().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_expired_tampered_unknown_and_skewed_credentials_are_refused() {
    let dir = data_dir("authz-f");
    let clock = Arc::new(ManualClock::default());
    let server = start_with(&dir, clock.clone()).await;
    let addr = server.addr;
    let now = || clock.now_ms() / 1000;
    const LIST_KEYS: &str = "/p11kms.v1.KeyManagementService/ListKeys";
    const WHOAMI: &str = "/p11kms.v1.SecurityTokenService/GetCallerIdentity";

    // A 15-minute session works (authenticated; the role has no ListKeys) ...
    let (out, creds) = assume_engineering(addr, "short", Some(900)).await;
    let exp = out.credentials.unwrap().expiration.unwrap().seconds;
    assert!((now() + 895..=now() + 905).contains(&exp), "{exp}");
    let mut session = signed_with(addr, creds.clone()).await;
    let who = session
        .sts
        .get_caller_identity(
            session
                .signer
                .sign_at(pb::GetCallerIdentityRequest {}, WHOAMI, now()),
        )
        .await
        .expect("session works")
        .into_inner();
    assert_eq!(who.arn, session_arn("short"));
    let r = session
        .kms
        .list_keys(
            session
                .signer
                .sign_at(pb::ListKeysRequest::default(), LIST_KEYS, now()),
        )
        .await;
    denied(r);

    // ... and is refused once expired, on every service.
    clock.advance_ms(16 * 60 * 1000);
    let r = session
        .sts
        .get_caller_identity(
            session
                .signer
                .sign_at(pb::GetCallerIdentityRequest {}, WHOAMI, now()),
        )
        .await;
    assert_eq!(reason(r), "ExpiredTokenException");
    let r = session
        .kms
        .list_keys(
            session
                .signer
                .sign_at(pb::ListKeysRequest::default(), LIST_KEYS, now()),
        )
        .await;
    assert_eq!(reason(r), "ExpiredTokenException");
    // bob's long-term key, signed at the same (advanced) time, still works.
    let mut bob = signed_as(addr, AK_BOB).await;
    let who = bob
        .sts
        .get_caller_identity(
            bob.signer
                .sign_at(pb::GetCallerIdentityRequest {}, WHOAMI, now()),
        )
        .await
        .expect("long-term key still valid")
        .into_inner();
    assert_eq!(who.arn, BOB);

    // A session token that is not the session's.
    let mut wrong = creds.clone();
    let mut token = wrong.session_token.take().unwrap().to_string();
    let last = token.pop().unwrap();
    token.push(if last == 'A' { 'B' } else { 'A' });
    wrong.session_token = Some(zeroize::Zeroizing::new(token));
    let mut w = signed_with(addr, wrong).await;
    let r = w
        .sts
        .get_caller_identity(
            w.signer
                .sign_at(pb::GetCallerIdentityRequest {}, WHOAMI, now()),
        )
        .await;
    assert_eq!(reason(r), "UnrecognizedClientException");

    let mut admin = signed_as(addr, AK_ADMIN).await;
    // Control: a correctly signed request passes.
    admin
        .kms
        .list_keys(
            admin
                .signer
                .sign_at(pb::ListKeysRequest::default(), LIST_KEYS, now()),
        )
        .await
        .expect("correct signature");
    // One hex digit of the signature changed.
    let mut req = admin
        .signer
        .sign_at(pb::ListKeysRequest::default(), LIST_KEYS, now());
    flip_signature_digit(&mut req);
    assert_eq!(
        reason(admin.kms.list_keys(req).await),
        "InvalidSignatureException"
    );
    // A different message than the one signed.
    let signed = admin.signer.sign_at(
        pb::ListKeysRequest {
            limit: Some(5),
            marker: String::new(),
        },
        LIST_KEYS,
        now(),
    );
    let (md, ext, _) = signed.into_parts();
    let swapped = tonic::Request::from_parts(
        md,
        ext,
        pb::ListKeysRequest {
            limit: Some(6),
            marker: String::new(),
        },
    );
    assert_eq!(
        reason(admin.kms.list_keys(swapped).await),
        "InvalidSignatureException"
    );
    // Outside the ±5 minute window, either way; inside it, fine.
    for skew in [-600, 600] {
        let r = admin
            .kms
            .list_keys(admin.signer.sign_at(
                pb::ListKeysRequest::default(),
                LIST_KEYS,
                now() + skew,
            ))
            .await;
        assert_eq!(reason(r), "InvalidSignatureException", "skew {skew}");
    }
    admin
        .kms
        .list_keys(
            admin
                .signer
                .sign_at(pb::ListKeysRequest::default(), LIST_KEYS, now() - 240),
        )
        .await
        .expect("4 minutes of skew is allowed");

    // Unknown and inactive access keys.
    let unknown = AccessKeyCredentials {
        access_key_id: "AKIAUNKNOWN000000001".into(),
        secret_access_key: zeroize::Zeroizing::new("x".repeat(40)),
        session_token: None,
    };
    let mut u = signed_with(addr, unknown).await;
    let r = u
        .kms
        .list_keys(
            u.signer
                .sign_at(pb::ListKeysRequest::default(), LIST_KEYS, now()),
        )
        .await;
    assert_eq!(reason(r), "UnrecognizedClientException");
    let mut inactive = signed_as(addr, AK_USER1_INACTIVE).await;
    let r = inactive
        .kms
        .list_keys(
            inactive
                .signer
                .sign_at(pb::ListKeysRequest::default(), LIST_KEYS, now()),
        )
        .await;
    assert_eq!(reason(r), "UnrecognizedClientException");

    // A certificate bound to no principal, and no credentials at all.
    let mut unbound = client_as(addr, Some("unbound")).await;
    let r = unbound.list_keys(pb::ListKeysRequest::default()).await;
    assert_eq!(reason(r), "UnrecognizedClientException");
    let mut anonymous = client_as(addr, None).await;
    let r = anonymous.list_keys(pb::ListKeysRequest::default()).await;
    assert_eq!(reason(r), "MissingAuthenticationTokenException");
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Denied requests: no HSM call, no stored change

#[derive(Debug, PartialEq)]
struct Snapshot {
    store: StoreSnapshot,
    list_keys: Vec<pb::KeyListEntry>,
    aliases: Vec<pb::AliasListEntry>,
    described: Vec<pb::KeyMetadata>,
    tags: Vec<Vec<pb::Tag>>,
    policies: Vec<String>,
    grants: Vec<Vec<pb::GrantListEntry>>,
}

async fn snapshot(server: &RunningServer, admin: &mut Who, keys: &[&str]) -> Snapshot {
    let mut described = Vec::new();
    let mut tags = Vec::new();
    let mut policies = Vec::new();
    let mut grants = Vec::new();
    for k in keys {
        described.push(describe(admin, k).await.unwrap());
        tags.push(
            kms!(admin.list_resource_tags(
                "ListResourceTags",
                pb::ListResourceTagsRequest {
                    key_id: k.to_string(),
                    ..Default::default()
                }
            ))
            .unwrap()
            .tags,
        );
        policies.push(get_policy(admin, k).await.unwrap());
        grants.push(list_grants(admin, k).await);
    }
    Snapshot {
        store: store_snapshot(server).await,
        list_keys: kms!(admin.list_keys("ListKeys", pb::ListKeysRequest::default()))
            .unwrap()
            .keys,
        aliases: kms!(admin.list_aliases("ListAliases", pb::ListAliasesRequest::default()))
            .unwrap()
            .aliases,
        described,
        tags,
        policies,
        grants,
    }
}

/// Every mutating and cryptographic operation, attempted by `who` on `key`; each must be
/// denied. Returns the number of attempts.
async fn attempt_everything(
    who: &mut Who,
    key: &str,
    other: &str,
    blob: &[u8],
    grant_id: &str,
    me: &str,
) -> usize {
    let ec = [("app", "x")];
    let mut n = 0;
    let mut check = |label: &str, r: Result<(), Status>| {
        n += 1;
        match r {
            Ok(()) => panic!("{label}: expected AccessDeniedException, got success"),
            Err(s) => assert_eq!(
                aws_reason(&s).as_deref(),
                Some("AccessDeniedException"),
                "{label}: {s:?}"
            ),
        }
    };
    check("Encrypt", encrypt(who, key, &ec, &[]).await.map(drop));
    check("Decrypt", decrypt(who, blob, &ec, "").await.map(drop));
    check(
        "GenerateDataKey",
        generate_data_key(who, key, &ec).await.map(drop),
    );
    check(
        "GenerateDataKeyWithoutPlaintext",
        kms!(who.generate_data_key_without_plaintext(
            "GenerateDataKeyWithoutPlaintext",
            pb::GenerateDataKeyWithoutPlaintextRequest {
                key_id: key.into(),
                encryption_context: ctx(&ec),
                key_spec: "AES_256".into(),
                ..Default::default()
            }
        ))
        .map(drop),
    );
    check(
        "ReEncrypt",
        kms!(who.re_encrypt(
            "ReEncrypt",
            pb::ReEncryptRequest {
                ciphertext_blob: blob.to_vec(),
                source_encryption_context: ctx(&ec),
                destination_key_id: other.into(),
                ..Default::default()
            }
        ))
        .map(drop),
    );
    check(
        "GenerateRandom",
        kms!(who.generate_random(
            "GenerateRandom",
            pb::GenerateRandomRequest {
                number_of_bytes: Some(16),
                custom_key_store_id: String::new(),
            }
        ))
        .map(drop),
    );
    check(
        "CreateKey",
        kms!(who.create_key(
            "CreateKey",
            pb::CreateKeyRequest {
                description: "should not exist".into(),
                tags: vec![tag("k", "v")],
                ..Default::default()
            }
        ))
        .map(drop),
    );
    check(
        "ScheduleKeyDeletion",
        kms!(who.schedule_key_deletion(
            "ScheduleKeyDeletion",
            pb::ScheduleKeyDeletionRequest {
                key_id: key.into(),
                pending_window_in_days: Some(7),
            }
        ))
        .map(drop),
    );
    check(
        "CancelKeyDeletion",
        kms!(who.cancel_key_deletion(
            "CancelKeyDeletion",
            pb::CancelKeyDeletionRequest { key_id: key.into() }
        ))
        .map(drop),
    );
    check(
        "DisableKey",
        kms!(who.disable_key("DisableKey", pb::DisableKeyRequest { key_id: key.into() })).map(drop),
    );
    check(
        "EnableKey",
        kms!(who.enable_key("EnableKey", pb::EnableKeyRequest { key_id: key.into() })).map(drop),
    );
    check(
        "UpdateKeyDescription",
        kms!(who.update_key_description(
            "UpdateKeyDescription",
            pb::UpdateKeyDescriptionRequest {
                key_id: key.into(),
                description: "defaced".into(),
            }
        ))
        .map(drop),
    );
    check(
        "CreateAlias",
        kms!(who.create_alias(
            "CreateAlias",
            pb::CreateAliasRequest {
                alias_name: "alias/evil".into(),
                target_key_id: key.into(),
            }
        ))
        .map(drop),
    );
    check(
        "UpdateAlias",
        kms!(who.update_alias(
            "UpdateAlias",
            pb::UpdateAliasRequest {
                alias_name: "alias/victim".into(),
                target_key_id: other.into(),
            }
        ))
        .map(drop),
    );
    check(
        "DeleteAlias",
        kms!(who.delete_alias(
            "DeleteAlias",
            pb::DeleteAliasRequest {
                alias_name: "alias/victim".into(),
            }
        ))
        .map(drop),
    );
    check(
        "TagResource",
        kms!(who.tag_resource(
            "TagResource",
            pb::TagResourceRequest {
                key_id: key.into(),
                tags: vec![tag("owner", "mallory")],
            }
        ))
        .map(drop),
    );
    check(
        "UntagResource",
        kms!(who.untag_resource(
            "UntagResource",
            pb::UntagResourceRequest {
                key_id: key.into(),
                tag_keys: vec!["team".into()],
            }
        ))
        .map(drop),
    );
    let takeover = json!({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "Mine", "Effect": "Allow", "Principal": {"AWS": me},
                       "Action": "kms:*", "Resource": "*"}]
    })
    .to_string();
    check(
        "PutKeyPolicy",
        put_policy(who, key, &takeover, true).await.map(drop),
    );
    check(
        "CreateGrant",
        kms!(who.create_grant(
            "CreateGrant",
            pb::CreateGrantRequest {
                key_id: key.into(),
                grantee_principal: me.into(),
                operations: vec!["Decrypt".into(), "Encrypt".into()],
                ..Default::default()
            }
        ))
        .map(drop),
    );
    check(
        "RevokeGrant",
        kms!(who.revoke_grant(
            "RevokeGrant",
            pb::RevokeGrantRequest {
                key_id: key.into(),
                grant_id: grant_id.into(),
                dry_run: false,
            }
        ))
        .map(drop),
    );
    check(
        "RetireGrant",
        kms!(who.retire_grant(
            "RetireGrant",
            pb::RetireGrantRequest {
                grant_token: String::new(),
                key_id: key.into(),
                grant_id: grant_id.into(),
                dry_run: false,
            }
        ))
        .map(drop),
    );
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_make_no_hsm_call_and_change_no_state() {
    let dir = data_dir("authz-nochange");
    let server = start(&dir).await;
    let mut admin = Who::cert(server.addr, "admin").await;

    let key = kms!(admin.create_key(
        "CreateKey",
        pb::CreateKeyRequest {
            description: "victim".into(),
            tags: vec![tag("team", "blue")],
            ..Default::default()
        }
    ))
    .unwrap()
    .key_metadata
    .unwrap()
    .key_id;
    let other = create_key_with(&mut admin, None, false)
        .await
        .unwrap()
        .key_id;
    kms!(admin.create_alias(
        "CreateAlias",
        pb::CreateAliasRequest {
            alias_name: "alias/victim".into(),
            target_key_id: key.clone(),
        }
    ))
    .unwrap();
    let grant_id = kms!(admin.create_grant(
        "CreateGrant",
        pb::CreateGrantRequest {
            key_id: key.clone(),
            grantee_principal: CAROL.into(),
            operations: vec!["Encrypt".into()],
            ..Default::default()
        }
    ))
    .unwrap()
    .grant_id;
    let blob = encrypt(&mut admin, &key, &[("app", "x")], &[])
        .await
        .unwrap()
        .ciphertext_blob;

    let before = snapshot(&server, &mut admin, &[&key, &other]).await;
    assert_eq!(before.store.keys.len(), 2);
    assert_eq!(before.store.grants.len(), 1);
    assert_eq!(before.store.aliases.len(), 1);
    let counters = server.kms.hsm().counters();
    let total = server.kms.hsm().total_ops();

    // nopolicy by SigV4 (key policy delegates, no identity policy) and user2 by mTLS.
    let mut nopolicy = Who::key(server.addr, AK_NOPOLICY).await;
    let n = attempt_everything(&mut nopolicy, &key, &other, &blob, &grant_id, NOPOLICY).await;
    let mut user2 = Who::cert(server.addr, "user2").await;
    let m = attempt_everything(&mut user2, &key, &other, &blob, &grant_id, USER2).await;
    assert_eq!(n, 21);
    assert_eq!(m, 21);

    assert_eq!(
        server.kms.hsm().total_ops(),
        total,
        "a denied request reached the HSM"
    );
    assert_eq!(server.kms.hsm().counters(), counters);
    let after = snapshot(&server, &mut admin, &[&key, &other]).await;
    assert_eq!(before, after, "a denied request changed stored state");

    // Control: the counter does count, and an allowed request changes state.
    encrypt(&mut admin, &key, &[], &[]).await.unwrap();
    assert!(server.kms.hsm().total_ops() > total);
    kms!(admin.tag_resource(
        "TagResource",
        pb::TagResourceRequest {
            key_id: key.clone(),
            tags: vec![tag("owner", "admin")],
        }
    ))
    .unwrap();
    assert_ne!(snapshot(&server, &mut admin, &[&key, &other]).await, before);
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Key policies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_policy_get_put_list_and_lockout_safety_check() {
    let dir = data_dir("authz-policy");
    let server = start(&dir).await;
    let mut admin = Who::cert(server.addr, "admin").await;
    let mut user1 = Who::cert(server.addr, "user1").await;
    let key = create_key_with(&mut admin, None, false)
        .await
        .unwrap()
        .key_id;

    // The default key policy of spec 3.3, verbatim.
    let got = kms!(admin.get_key_policy(
        "GetKeyPolicy",
        pb::GetKeyPolicyRequest {
            key_id: key.clone(),
            policy_name: String::new(),
        }
    ))
    .unwrap();
    assert_eq!(got.policy_name, "default");
    assert!(
        json_eq(&got.policy, &default_policy(ACCOUNT)),
        "{}",
        got.policy
    );
    let names = kms!(admin.list_key_policies(
        "ListKeyPolicies",
        pb::ListKeyPoliciesRequest {
            key_id: key.clone(),
            ..Default::default()
        }
    ))
    .unwrap();
    assert_eq!(names.policy_names, vec!["default"]);
    assert!(!names.truncated);

    // A valid replacement.
    put_policy(&mut admin, &key, &policy_a(), false)
        .await
        .expect("put a valid policy");
    assert!(json_eq(
        &get_policy(&mut admin, &key).await.unwrap(),
        &policy_a()
    ));

    let malformed = |r: Result<pb::PutKeyPolicyResponse, Status>| {
        let e = r.unwrap_err();
        assert_eq!(
            aws_reason(&e).as_deref(),
            Some("MalformedPolicyDocumentException"),
            "{e:?}"
        );
        e.message().to_string()
    };
    // Principals that do not exist.
    for ghost in [
        "arn:aws:iam::111122223333:user/ghost",
        "arn:aws:iam::999999999999:root",
    ] {
        let p = json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": ADMIN},
                 "Action": "kms:*", "Resource": "*"},
                {"Sid": "Ghost", "Effect": "Allow", "Principal": {"AWS": ghost},
                 "Action": "kms:Decrypt", "Resource": "*"}
            ]
        })
        .to_string();
        malformed(put_policy(&mut admin, &key, &p, false).await);
    }
    // Not JSON at all; a statement without Principal.
    malformed(put_policy(&mut admin, &key, "{\"Version\": ", false).await);
    let no_principal = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]})
    .to_string();
    malformed(put_policy(&mut admin, &key, &no_principal, false).await);

    // A policy that would lock the caller out.
    let lockout = json!({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "OnlyUser1", "Effect": "Allow", "Principal": {"AWS": USER1},
                       "Action": "kms:*", "Resource": "*"}]
    })
    .to_string();
    let msg = malformed(put_policy(&mut admin, &key, &lockout, false).await);
    assert!(
        msg.contains("will not allow you to update the key policy in the future"),
        "{msg}"
    );

    // Over 32 KB.
    let statements: Vec<serde_json::Value> = (0..400)
        .map(|i| {
            json!({"Sid": format!("Statement{i:04}"), "Effect": "Allow",
                   "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"})
        })
        .collect();
    let big = json!({"Version": "2012-10-17", "Statement": statements}).to_string();
    assert!(big.len() > 32 * 1024);
    let r = put_policy(&mut admin, &key, &big, false).await;
    assert_eq!(reason(r), "LimitExceededException");
    let r = create_key_with(&mut admin, Some(big), false).await;
    assert_eq!(reason(r), "LimitExceededException");

    // None of the refused documents took effect.
    assert!(json_eq(
        &get_policy(&mut admin, &key).await.unwrap(),
        &policy_a()
    ));

    // With the bypass flag the lockout policy is accepted, and the admin is locked out.
    put_policy(&mut admin, &key, &lockout, true)
        .await
        .expect("bypass the lockout check");
    denied(get_policy(&mut admin, &key).await);
    denied(put_policy(&mut admin, &key, &policy_a(), false).await);
    denied(kms!(admin.list_key_policies(
        "ListKeyPolicies",
        pb::ListKeyPoliciesRequest {
            key_id: key.clone(),
            ..Default::default()
        }
    )));
    assert!(json_eq(
        &get_policy(&mut user1, &key)
            .await
            .expect("user1 now owns the key"),
        &lockout
    ));

    // CreateKey with a Policy and the bypass flag creates a key its creator cannot manage.
    let orphan = create_key_with(&mut admin, Some(lockout.clone()), true)
        .await
        .expect("create with bypass");
    denied(describe(&mut admin, &orphan.key_id).await);
    assert_eq!(
        describe(&mut user1, &orphan.key_id).await.unwrap().key_id,
        orphan.key_id
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// ExplainAccess

async fn explain(
    s: &mut Signed,
    req: pb::ExplainAccessRequest,
) -> Result<pb::ExplainAccessResponse, Status> {
    s.admin
        .explain_access(s.admin_req(req, "ExplainAccess"))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_access_matches_live_decisions() {
    let dir = data_dir("authz-explain");
    let server = start(&dir).await;
    let mut admin = Who::cert(server.addr, "admin").await;
    let mut keyadmin = Who::cert(server.addr, "keyadmin").await;
    let mut user1 = Who::cert(server.addr, "user1").await;
    let mut user2 = Who::cert(server.addr, "user2").await;
    let mut nopolicy = Who::key(server.addr, AK_NOPOLICY).await;
    let mut explainer = signed_as(server.addr, AK_ADMIN).await;

    let a = create_key_with(&mut admin, Some(policy_a()), false)
        .await
        .unwrap();
    let d = create_key_with(&mut admin, Some(policy_d()), false)
        .await
        .unwrap();
    let dflt = create_key_with(&mut admin, None, false).await.unwrap();
    let x = create_key_with(&mut keyadmin, Some(policy_c()), false)
        .await
        .unwrap();
    let ec = [("app", "explain")];
    let blob_a = encrypt(&mut admin, &a.key_id, &ec, &[])
        .await
        .unwrap()
        .ciphertext_blob;
    let blob_x = encrypt(&mut keyadmin, &x.key_id, &ec, &[])
        .await
        .unwrap()
        .ciphertext_blob;

    // user2 + Decrypt on the (a) key: Deny, the same message a live request gets.
    let e = explain(
        &mut explainer,
        explain_req(USER2, "kms:Decrypt", &a.key_id, &ec),
    )
    .await
    .expect("explain");
    assert_eq!(e.decision, "Deny");
    assert_eq!(e.reason, "ImplicitDeny");
    assert_eq!(e.resource, a.arn);
    let live = denied(decrypt(&mut user2, &blob_a, &ec, "").await);
    assert_eq!(e.message, live);
    assert!(e.message.contains("no resource-based policy allows"));

    // user1 + Decrypt on the (a) key: Allow, decided by the key policy's KeyUsers statement.
    // Over mTLS this time.
    let mut admin_tls = admin_service(server.addr, "admin").await;
    let e = admin_tls
        .explain_access(explain_req(USER1, "kms:Decrypt", &a.arn, &ec))
        .await
        .expect("explain over mTLS")
        .into_inner();
    assert_eq!(e.decision, "Allow");
    assert_eq!(e.reason, "Allowed");
    assert_eq!(
        statements(&e),
        vec![triple("KeyPolicy", "default", "KeyUsers")]
    );
    decrypt(&mut user1, &blob_a, &ec, "")
        .await
        .expect("live: allowed");

    // An explicit deny: the deciding statement is the key policy's DenyHR.
    let hr = [("dept", "hr")];
    let e = explain(
        &mut explainer,
        explain_req(USER1, "kms:Encrypt", &d.key_id, &hr),
    )
    .await
    .unwrap();
    assert_eq!(e.decision, "Deny");
    assert_eq!(e.reason, "ExplicitDeny");
    assert_eq!(
        statements(&e),
        vec![triple("KeyPolicy", "default", "DenyHR")]
    );
    let live = denied(encrypt(&mut user1, &d.key_id, &hr, &[]).await);
    assert_eq!(e.message, live);
    let e = explain(
        &mut explainer,
        explain_req(USER1, "kms:Encrypt", &d.key_id, &[("dept", "finance")]),
    )
    .await
    .unwrap();
    assert_eq!(e.decision, "Allow");
    encrypt(&mut user1, &d.key_id, &[("dept", "finance")], &[])
        .await
        .expect("live: allowed");

    // A missing identity policy under the default key policy.
    let e = explain(
        &mut explainer,
        explain_req(NOPOLICY, "kms:Encrypt", &dflt.key_id, &[]),
    )
    .await
    .unwrap();
    assert_eq!(e.decision, "Deny");
    let live = denied(encrypt(&mut nopolicy, &dflt.key_id, &[], &[]).await);
    assert_eq!(e.message, live);
    assert!(e.message.contains("no identity-based policy allows"));
    // And the allow through the account delegation names both sides.
    let e = explain(
        &mut explainer,
        explain_req(ADMIN, "kms:Encrypt", &dflt.key_id, &[]),
    )
    .await
    .unwrap();
    assert_eq!(e.decision, "Allow");
    assert_eq!(
        statements(&e),
        vec![
            triple("KeyPolicy", "default", "Enable IAM User Permissions"),
            triple("IdentityPolicy", "KmsAdmin", "KmsAdministration"),
        ]
    );

    // A role session, across accounts.
    let (_, creds) = assume_engineering(server.addr, "explained", None).await;
    let mut session = Who::creds(server.addr, creds).await;
    let e = explain(
        &mut explainer,
        explain_req(&session_arn("explained"), "kms:Decrypt", &x.arn, &ec),
    )
    .await
    .unwrap();
    assert_eq!(e.decision, "Allow");
    assert_eq!(
        statements(&e),
        vec![
            triple("KeyPolicy", "default", "AllowAccount111122223333"),
            triple("IdentityPolicy", "EngineeringKms", "UseKeysIn444455556666"),
        ]
    );
    decrypt(&mut session, &blob_x, &ec, &x.arn)
        .await
        .expect("live: allowed");
    let e = explain(
        &mut explainer,
        explain_req(
            &session_arn("explained"),
            "kms:ScheduleKeyDeletion",
            &x.arn,
            &[],
        ),
    )
    .await
    .unwrap();
    assert_eq!(e.decision, "Deny");
    let live = denied(kms!(session.schedule_key_deletion(
        "ScheduleKeyDeletion",
        pb::ScheduleKeyDeletionRequest {
            key_id: x.arn.clone(),
            pending_window_in_days: Some(7),
        }
    )));
    assert_eq!(e.message, live);

    // Using ExplainAccess needs p11kms:ExplainAccess.
    let mut np = signed_as(server.addr, AK_NOPOLICY).await;
    let r = explain(&mut np, explain_req(USER1, "kms:Decrypt", &a.key_id, &ec)).await;
    denied(r);
    let mut user2_admin = admin_service(server.addr, "user2").await;
    denied(
        user2_admin
            .explain_access(explain_req(USER1, "kms:Decrypt", &a.key_id, &ec))
            .await,
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Identity reload

fn edit_account(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_reload_applies_changes_and_keeps_old_directory_on_error() {
    let dir = data_dir("authz-reload");
    let fixtures = copy_fixtures(&dir);
    let server = start_with_fixtures(&dir, &fixtures).await;
    let mut admin = Who::cert(server.addr, "admin").await;
    let key = create_key_with(&mut admin, None, false)
        .await
        .unwrap()
        .key_id;
    let mut nopolicy = Who::key(server.addr, AK_NOPOLICY).await;
    denied(encrypt(&mut nopolicy, &key, &[], &[]).await);

    // Give nopolicy an inline policy; add a user with an access key.
    let account_file = fixtures.join(format!("{ACCOUNT}.json"));
    let original = std::fs::read_to_string(&account_file).unwrap();
    let original_creds = std::fs::read_to_string(fixtures.join("credentials.json")).unwrap();
    edit_account(&account_file, |v| {
        user_mut(v, "nopolicy")["UserPolicyList"] = json!([{
            "PolicyName": "Reloaded",
            "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Sid": "UseKeys", "Effect": "Allow",
                 "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*"}]}
        }]);
        let mut dave = user_mut(v, "user1").clone();
        dave["UserName"] = json!("dave");
        dave["UserId"] = json!("AIDADAVE0000000000001");
        dave["Arn"] = json!(format!("arn:aws:iam::{ACCOUNT}:user/dave"));
        v["UserDetailList"].as_array_mut().unwrap().push(dave);
    });
    let dave_secret = "dAvEdAvEdAvEdAvEdAvEdAvEdAvEdAvEdAvEdAvE";
    edit_account(&fixtures.join("credentials.json"), |v| {
        v["AccessKeys"].as_array_mut().unwrap().push(json!({
            "AccessKeyId": "AKIADAVE000000000001",
            "SecretAccessKey": dave_secret,
            "UserArn": format!("arn:aws:iam::{ACCOUNT}:user/dave"),
            "Status": "Active"
        }));
    });
    let dave_creds = AccessKeyCredentials {
        access_key_id: "AKIADAVE000000000001".into(),
        secret_access_key: zeroize::Zeroizing::new(dave_secret.into()),
        session_token: None,
    };
    let whoami = |s: &mut Signed| {
        let req = s.sts_req(pb::GetCallerIdentityRequest {}, "GetCallerIdentity");
        let mut sts = s.sts.clone();
        async move { sts.get_caller_identity(req).await.map(|r| r.into_inner()) }
    };
    let mut dave = signed_with(server.addr, dave_creds).await;
    assert_eq!(
        reason(whoami(&mut dave).await),
        "UnrecognizedClientException"
    );
    // Nothing changes until the reload.
    denied(encrypt(&mut nopolicy, &key, &[], &[]).await);

    server.reload_identity().expect("reload");
    let blob = encrypt(&mut nopolicy, &key, &[], &[])
        .await
        .expect("nopolicy's new policy is in force")
        .ciphertext_blob;
    assert_eq!(
        whoami(&mut dave).await.unwrap().arn,
        format!("arn:aws:iam::{ACCOUNT}:user/dave")
    );

    // A malformed file: the reload fails and the previous directory stays in force.
    let good = std::fs::read_to_string(&account_file).unwrap();
    std::fs::write(&account_file, "{ \"UserDetailList\": [").unwrap();
    assert!(server.reload_identity().is_err());
    decrypt(&mut nopolicy, &blob, &[], "")
        .await
        .expect("still allowed after a failed reload");
    assert!(whoami(&mut dave).await.is_ok());
    // Well-formed JSON with an invalid policy in it: also refused as a whole.
    std::fs::write(&account_file, &good).unwrap();
    edit_account(&account_file, |v| {
        user_mut(v, "nopolicy")["UserPolicyList"][0]["PolicyDocument"]["Statement"][0]["Effect"] =
            json!("Perhaps");
    });
    assert!(server.reload_identity().is_err());
    encrypt(&mut nopolicy, &key, &[], &[])
        .await
        .expect("still allowed after a second failed reload");

    // Back to the original files: the change is undone.
    std::fs::write(&account_file, &original).unwrap();
    std::fs::write(fixtures.join("credentials.json"), &original_creds).unwrap();
    server.reload_identity().expect("reload the originals");
    denied(encrypt(&mut nopolicy, &key, &[], &[]).await);
    assert_eq!(
        reason(whoami(&mut dave).await),
        "UnrecognizedClientException"
    );
    server.shutdown().await.unwrap();
}
