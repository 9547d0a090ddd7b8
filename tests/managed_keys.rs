//! AWS managed keys (issue 12, item 15) end to end over gRPC: `alias/aws/<service>` is created
//! on first use with KeyManager AWS, AWS's managed-key policy and yearly rotation; every change
//! is refused with AWS's error; concurrent first uses create one key; `kms:ViaService` comes
//! from the caller's `p11kms:ViaService` principal tag (user `s3gateway` in the fixtures).

mod common;

use common::*;
use p11kms::pb;
use serde_json::Value;

const AK_S3GATEWAY: &str = "AKIAS3GATEWAY0000001";

async fn aliases(c: &mut Client) -> Vec<pb::AliasListEntry> {
    list_alias_entries(c, Some(1000)).await
}

async fn key_ids(c: &mut Client) -> Vec<String> {
    list_key_ids(c, Some(1000)).await
}

fn alias<'a>(list: &'a [pb::AliasListEntry], name: &str) -> &'a pb::AliasListEntry {
    list.iter()
        .find(|a| a.alias_name == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {list:?}"))
}

/// C_GenerateKey calls so far (one per symmetric key created on the device).
fn generate_key_calls(server: &p11kms::server::RunningServer) -> u64 {
    server
        .kms
        .hsm()
        .stats()
        .calls
        .iter()
        .find(|(f, _)| *f == "C_GenerateKey")
        .map_or(0, |(_, n)| *n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_use_creates_an_aws_managed_key() {
    let (dir, server, mut c) = start_admin("managed-first-use").await;
    let before = key_ids(&mut c).await;
    let listed = aliases(&mut c).await;
    // Predefined, not yet created: listed without a target, as AWS lists them.
    assert!(alias(&listed, "alias/aws/ebs").target_key_id.is_empty());
    assert!(alias(&listed, "alias/aws/ebs").creation_date.is_none());

    let m = describe_key(&mut c, "alias/aws/ebs").await;
    assert_eq!(m.key_manager, "AWS");
    assert_eq!(m.key_state, "Enabled");
    assert_eq!(m.key_spec, "SYMMETRIC_DEFAULT");
    assert_eq!(m.origin, "AWS_KMS");
    assert_eq!(
        m.description,
        "Default key that protects my EBS volumes when no other key is defined"
    );
    // The same key every time after that, by alias or alias ARN.
    assert_eq!(describe_key(&mut c, "alias/aws/ebs").await.key_id, m.key_id);
    let alias_arn = format!("arn:aws:kms:us-east-1:{ACCOUNT}:alias/aws/ebs");
    assert_eq!(describe_key(&mut c, &alias_arn).await.key_id, m.key_id);

    let policy: Value = serde_json::from_str(&key_policy(&mut c, &m.key_id).await).unwrap();
    let st = &policy["Statement"];
    assert_eq!(
        st[0]["Sid"],
        "Allow access through EBS for all principals in the account that are authorized to use EBS"
    );
    assert_eq!(st[0]["Principal"]["AWS"], "*");
    assert_eq!(
        st[0]["Condition"]["StringEquals"]["kms:ViaService"],
        "ec2.us-east-1.amazonaws.com"
    );
    assert_eq!(
        st[0]["Condition"]["StringEquals"]["kms:CallerAccount"],
        ACCOUNT
    );
    assert_eq!(
        st[1]["Sid"],
        "Allow direct access to key metadata to the account"
    );
    assert_eq!(
        st[1]["Principal"]["AWS"],
        format!("arn:aws:iam::{ACCOUNT}:root")
    );

    let rot = c
        .get_key_rotation_status(pb::GetKeyRotationStatusRequest {
            key_id: m.key_id.clone(),
        })
        .await
        .reply();
    assert!(rot.key_rotation_enabled);
    assert_eq!(rot.rotation_period_in_days, Some(365));
    let next = rot.next_rotation_date.expect("next rotation date").seconds;
    let created = m.creation_date.expect("creation date").seconds;
    assert!(
        (next - created - 365 * 86_400).abs() <= 1,
        "{next} {created}"
    );

    let listed = aliases(&mut c).await;
    let ebs = alias(&listed, "alias/aws/ebs");
    assert_eq!(ebs.target_key_id, m.key_id);
    assert!(ebs.creation_date.is_some());
    assert!(alias(&listed, "alias/aws/s3").target_key_id.is_empty());
    let after = key_ids(&mut c).await;
    assert_eq!(after.len(), before.len() + 1);
    assert!(after.contains(&m.key_id));

    // Still AWS managed after a restart.
    server.shutdown().await.unwrap();
    let events = common::events(&dir);
    let created_ev: Vec<_> = events
        .iter()
        .filter(|e| e["eventName"] == "CreateKey")
        .collect();
    assert_eq!(created_ev.len(), 1, "{created_ev:?}");
    assert_eq!(
        created_ev[0]["requestParameters"]["aliasName"],
        "alias/aws/ebs"
    );
    assert_eq!(
        created_ev[0]["requestParameters"]["createdOnFirstUseBy"],
        "DescribeKey"
    );
    assert_eq!(created_ev[0]["resources"][0]["ARN"], m.arn);
    let server = start(&dir).await;
    let mut c = admin(server.addr).await;
    let again = describe_key(&mut c, &m.key_id).await;
    assert_eq!(again.key_manager, "AWS");
    assert_eq!(describe_key(&mut c, "alias/aws/ebs").await.key_id, m.key_id);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_keys_stay_customer_managed_and_unknown_services_are_not_found() {
    let (_dir, server, mut c) = start_admin("managed-unknown").await;
    let key = create_key(&mut c).await;
    assert_eq!(describe_key(&mut c, &key).await.key_manager, "CUSTOMER");
    let before = key_ids(&mut c).await.len();
    let r = try_describe(&mut c, "alias/aws/made-up-service").await;
    assert_eq!(reason(r), "NotFoundException");
    assert_eq!(key_ids(&mut c).await.len(), before);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_managed_keys_refuse_every_change() {
    let (_dir, server, mut c) = start_admin("managed-refusals").await;
    let m = describe_key(&mut c, "alias/aws/s3").await;
    let id = m.key_id.clone();
    let mine = create_key(&mut c).await;
    let policy_before = key_policy(&mut c, &id).await;

    // The admin may do anything (kms:*) to customer keys; the managed key's policy refuses
    // every change, as AWS's does.
    let denied = "AccessDeniedException";
    let r = c
        .put_key_policy(pb::PutKeyPolicyRequest {
            key_id: id.clone(),
            policy_name: "default".into(),
            policy: p11kms::core::keys::default_key_policy("aws", ACCOUNT),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(r), denied, "PutKeyPolicy");
    let r = try_schedule_deletion(&mut c, &id, Some(7)).await;
    assert_eq!(reason(r), denied, "ScheduleKeyDeletion");
    let r = try_disable_key(&mut c, &id).await;
    assert_eq!(reason(r), denied, "DisableKey");
    let r = try_enable_rotation(&mut c, &id, Some(90)).await;
    assert_eq!(reason(r), denied, "EnableKeyRotation");
    let r = try_disable_rotation(&mut c, &id).await;
    assert_eq!(reason(r), denied, "DisableKeyRotation");
    let r = rotate_on_demand(&mut c, &id).await;
    assert_eq!(reason(r), denied, "RotateKeyOnDemand");
    let r = c
        .update_key_description(pb::UpdateKeyDescriptionRequest {
            key_id: id.clone(),
            description: "mine now".into(),
        })
        .await;
    assert_eq!(reason(r), denied, "UpdateKeyDescription");
    let r = c
        .tag_resource(pb::TagResourceRequest {
            key_id: id.clone(),
            tags: vec![tag("k", "v")],
        })
        .await;
    assert_eq!(reason(r), denied, "TagResource");
    let r = c
        .update_alias(pb::UpdateAliasRequest {
            alias_name: "alias/aws/s3".into(),
            target_key_id: mine.clone(),
        })
        .await;
    assert_eq!(reason(r), denied, "UpdateAlias of alias/aws/s3");
    let r = c
        .delete_alias(pb::DeleteAliasRequest {
            alias_name: "alias/aws/s3".into(),
        })
        .await;
    assert_eq!(reason(r), denied, "DeleteAlias of alias/aws/s3");
    let r = try_create_alias(&mut c, "alias/points-at-managed", &id).await;
    assert_eq!(reason(r), denied, "CreateAlias on the managed key");
    for name in ["alias/aws/sqs", "alias/aws/s3", "alias/aws/anything"] {
        let r = try_create_alias(&mut c, name, &mine).await;
        assert_eq!(reason(r), "InvalidAliasNameException", "CreateAlias {name}");
    }

    // Nothing changed.
    let after = describe_key(&mut c, "alias/aws/s3").await;
    assert_eq!(after, m);
    let policy_after = key_policy(&mut c, &id).await;
    assert_eq!(policy_after, policy_before);
    let rot = c
        .get_key_rotation_status(pb::GetKeyRotationStatusRequest { key_id: id.clone() })
        .await
        .reply();
    assert!(rot.key_rotation_enabled);
    assert_eq!(rot.rotation_period_in_days, Some(365));
    let listed = aliases(&mut c).await;
    assert_eq!(alias(&listed, "alias/aws/s3").target_key_id, id);
    assert!(alias(&listed, "alias/aws/sqs").target_key_id.is_empty());
    assert!(!listed
        .iter()
        .any(|a| a.alias_name == "alias/points-at-managed"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_service_allows_use_and_its_absence_is_denied() {
    let dir = data_dir("managed-via");
    let server = start(&dir).await;
    let gw = signed_as(server.addr, AK_S3GATEWAY).await;
    let mut gw_kms = gw.kms.clone();
    let mut c = admin(server.addr).await;
    let keys_before = key_ids(&mut c).await.len();
    let generated_before = generate_key_calls(&server);

    // Without kms:ViaService, first use is denied and creates nothing, on the device included.
    let r = c.encrypt(encrypt_request("alias/aws/s3", b"object")).await;
    assert_eq!(reason(r), "AccessDeniedException");
    assert_eq!(key_ids(&mut c).await.len(), keys_before);
    assert_eq!(generate_key_calls(&server), generated_before);
    assert!(alias(&aliases(&mut c).await, "alias/aws/s3")
        .target_key_id
        .is_empty());

    // The S3 service principal creates it by using it, and can use it.
    let enc = gw_kms
        .encrypt(gw.kms_req(
            encrypt_request_ctx("alias/aws/s3", b"object", &[("bucket", "b1")]),
            "Encrypt",
        ))
        .await
        .expect("s3 gateway encrypts through S3")
        .into_inner();
    let dec = gw_kms
        .decrypt(gw.kms_req(
            decrypt_request(&enc.ciphertext_blob, &[("bucket", "b1")]),
            "Decrypt",
        ))
        .await
        .expect("s3 gateway decrypts")
        .into_inner();
    assert_eq!(dec.plaintext, b"object");
    assert_eq!(key_ids(&mut c).await.len(), keys_before + 1);
    let m = describe_key(&mut c, "alias/aws/s3").await;
    assert_eq!(enc.key_id, m.arn);

    // A caller without the S3 ViaService: denied, the admin's kms:* notwithstanding.
    let r = c.encrypt(encrypt_request("alias/aws/s3", b"object")).await;
    assert_eq!(reason(r), "AccessDeniedException");
    let r = c
        .decrypt(decrypt_request(&enc.ciphertext_blob, &[("bucket", "b1")]))
        .await;
    assert_eq!(reason(r), "AccessDeniedException");
    // The S3 principal is not EBS's: another service's managed key refuses it, and its first
    // use creates nothing.
    let r = gw_kms
        .generate_data_key(gw.kms_req(data_key_request("alias/aws/ebs"), "GenerateDataKey"))
        .await;
    assert_eq!(reason(r), "AccessDeniedException");
    assert_eq!(key_ids(&mut c).await.len(), keys_before + 1);

    // A session tag cannot claim a service: only the directory's tags set kms:ViaService.
    let mut bob = signed_as(server.addr, "AKIABOB0000000000001").await;
    let creds = bob
        .sts
        .assume_role(bob.sts_req(
            pb::AssumeRoleRequest {
                role_arn: format!("arn:aws:iam::{ACCOUNT}:role/Engineering"),
                role_session_name: "claims-s3".into(),
                tags: vec![tag("p11kms:ViaService", "s3")],
                ..Default::default()
            },
            "AssumeRole",
        ))
        .await
        .expect("bob assumes Engineering with a session tag")
        .into_inner()
        .credentials
        .expect("credentials");
    let session = signed_with(
        server.addr,
        p11kms::client::AccessKeyCredentials {
            access_key_id: creds.access_key_id,
            secret_access_key: zeroize::Zeroizing::new(creds.secret_access_key),
            session_token: Some(zeroize::Zeroizing::new(creds.session_token)),
        },
    )
    .await;
    let r = session
        .kms
        .clone()
        .encrypt(session.kms_req(encrypt_request("alias/aws/s3", b"object"), "Encrypt"))
        .await;
    assert_eq!(reason(r), "AccessDeniedException");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_uses_create_exactly_one_key() {
    let (_dir, server, mut c) = start_admin("managed-race").await;
    let keys_before = key_ids(&mut c).await.len();
    let generated_before = generate_key_calls(&server);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut cc = c.clone();
        tasks.push(tokio::spawn(async move {
            describe_key(&mut cc, "alias/aws/dynamodb").await.key_id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(key_ids(&mut c).await.len(), keys_before + 1);
    assert_eq!(generate_key_calls(&server), generated_before + 1);
    let listed = aliases(&mut c).await;
    let dynamo: Vec<_> = listed
        .iter()
        .filter(|a| a.alias_name == "alias/aws/dynamodb")
        .collect();
    assert_eq!(dynamo.len(), 1);
    assert_eq!(dynamo[0].target_key_id, ids[0]);
    server.shutdown().await.unwrap();
}
