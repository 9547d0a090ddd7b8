//! End-to-end tests of the gRPC door: the real daemon on 127.0.0.1:0, a real SoftHSM2 token,
//! real SQLite, real clients over mutual TLS.

mod common;

use common::*;
use p11kms::hsm::ObjectId;
use p11kms::pb;

fn uuid_bytes(key_id: &str) -> [u8; 16] {
    *uuid::Uuid::parse_str(key_id).unwrap().as_bytes()
}

async fn encrypt(c: &mut Client, key: &str, pt: &[u8], ec: &[(&str, &str)]) -> Vec<u8> {
    encrypt_with(c, key, pt, ec).await.expect("encrypt")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lifecycle_happy_path() {
    let (_dir, server, mut c) = start_admin("lifecycle").await;

    let created = create_key_meta(
        &mut c,
        pb::CreateKeyRequest {
            description: "payments".into(),
            tags: vec![tag("team", "pay")],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(created.key_state, "Enabled");
    assert!(created.enabled);
    assert_eq!(created.key_spec, "SYMMETRIC_DEFAULT");
    assert_eq!(created.key_usage, "ENCRYPT_DECRYPT");
    assert_eq!(created.aws_account_id, ACCOUNT);
    assert_eq!(
        created.arn,
        format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/{}", created.key_id)
    );
    assert_eq!(created.current_key_material_id.len(), 64);
    let id = created.key_id.clone();

    // Describe by id, ARN, alias name and alias ARN.
    create_alias(&mut c, "alias/payments", &id).await;
    for r in [
        id.clone(),
        created.arn.clone(),
        "alias/payments".to_string(),
        format!("arn:aws:kms:us-east-1:{ACCOUNT}:alias/payments"),
    ] {
        let m = try_describe(&mut c, &r)
            .await
            .unwrap_or_else(|e| panic!("describe {r}: {e}"));
        assert_eq!(m.key_id, id);
        assert_eq!(m.description, "payments");
    }

    c.update_key_description(pb::UpdateKeyDescriptionRequest {
        key_id: id.clone(),
        description: "payments v2".into(),
    })
    .await
    .unwrap();

    // Tags.
    tag_key(&mut c, &id, "env", "prod").await;
    let tags = list_tags(&mut c, &id).await;
    let keys: Vec<_> = tags.iter().map(|t| t.tag_key.as_str()).collect();
    assert_eq!(keys, vec!["env", "team"]);
    c.untag_resource(pb::UntagResourceRequest {
        key_id: id.clone(),
        tag_keys: vec!["team".into()],
    })
    .await
    .unwrap();
    let tags = list_tags(&mut c, &id).await;
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0].tag_value, "prod");

    // Using the key copies it into a session object on the HSM; disabling it destroys the copy
    // (the material is then only in the token object).
    let copies = || async {
        key_objects(&server, &id)
            .await
            .iter()
            .filter(|(_, token)| !*token)
            .count()
    };
    assert_eq!(copies().await, 0);
    encrypt(&mut c, &id, b"copy me", &[]).await;
    assert_eq!(copies().await, 1);

    // Disable / enable.
    disable_key(&mut c, &id).await;
    assert_eq!(copies().await, 0, "DisableKey destroys the session copy");
    let m = describe_key(&mut c, &id).await;
    assert_eq!(m.key_state, "Disabled");
    assert!(!m.enabled);
    try_enable_key(&mut c, &id).await.unwrap();
    encrypt(&mut c, &id, b"copy me again", &[]).await;
    assert_eq!(copies().await, 1);

    // Schedule and cancel deletion: default window 30, cancel leaves Disabled.
    let s = try_schedule_deletion(&mut c, &id, None).await.reply();
    assert_eq!(s.pending_window_in_days, 30);
    assert_eq!(s.key_state, "PendingDeletion");
    assert_eq!(s.key_id, created.arn);
    assert_eq!(
        copies().await,
        0,
        "ScheduleKeyDeletion destroys the session copy"
    );
    let cancelled = try_cancel_deletion(&mut c, &id).await.reply();
    assert_eq!(cancelled.key_id, created.arn);
    let m = describe_key(&mut c, &id).await;
    assert_eq!(m.key_state, "Disabled");
    assert!(m.deletion_date.is_none());

    // ListKeys pagination over three keys.
    create_key(&mut c).await;
    create_key(&mut c).await;
    let mut seen = Vec::new();
    let mut marker = String::new();
    loop {
        let page = c
            .list_keys(pb::ListKeysRequest {
                limit: Some(2),
                marker: marker.clone(),
            })
            .await
            .reply();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys.into_iter().map(|k| k.key_id));
        if !page.truncated {
            break;
        }
        marker = page.next_marker;
    }
    assert_eq!(seen.len(), 3);
    assert!(seen.contains(&id));
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);

    // Aliases: update, list, delete.
    let other = create_key(&mut c).await;
    c.update_alias(pb::UpdateAliasRequest {
        alias_name: "alias/payments".into(),
        target_key_id: other.clone(),
    })
    .await
    .unwrap();
    // Predefined alias/aws/<service> names without a key are listed too, as AWS lists them.
    let aliases: Vec<_> = list_alias_entries(&mut c, None)
        .await
        .into_iter()
        .filter(|a| !a.target_key_id.is_empty())
        .collect();
    assert_eq!(aliases.len(), 1);
    assert_eq!(aliases[0].target_key_id, other);
    assert_eq!(
        aliases[0].alias_arn,
        format!("arn:aws:kms:us-east-1:{ACCOUNT}:alias/payments")
    );
    let only = list_aliases_of(&mut c, &id).await;
    assert!(only.is_empty());
    c.delete_alias(pb::DeleteAliasRequest {
        alias_name: "alias/payments".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        reason(
            c.describe_key(pb::DescribeKeyRequest {
                key_id: "alias/payments".into(),
                grant_tokens: vec![],
            })
            .await
        ),
        "NotFoundException"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cryptographic_operations_happy_path() {
    let (_dir, server, mut c) = start_admin("crypto").await;
    let key = create_key(&mut c).await;
    let key2 = create_key(&mut c).await;
    create_alias(&mut c, "alias/app", &key).await;

    // Encrypt by alias, decrypt without KeyId and with the matching KeyId.
    let ec = [("tenant", "acme"), ("purpose", "test")];
    for size in [1usize, 32, 4096] {
        let pt: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let r = c
            .encrypt(encrypt_request_ctx("alias/app", &pt, &ec))
            .await
            .reply();
        assert_eq!(r.ciphertext_blob.len(), size + 49);
        assert!(r.ciphertext_blob.len() <= 6144);
        assert!(r.key_id.ends_with(&key) && r.key_id.starts_with("arn:aws:kms:"));
        assert_eq!(r.encryption_algorithm, "SYMMETRIC_DEFAULT");
        // Context order does not matter.
        let reversed = [("purpose", "test"), ("tenant", "acme")];
        let d = c
            .decrypt(decrypt_request(&r.ciphertext_blob, &reversed))
            .await
            .reply();
        assert_eq!(d.plaintext, pt);
        assert_eq!(d.key_id, r.key_id);
        assert_eq!(d.key_material_id.len(), 64);
        let mut with_key = decrypt_request(&r.ciphertext_blob, &ec);
        with_key.key_id = key.clone();
        assert_eq!(c.decrypt(with_key).await.reply().plaintext, pt);
    }

    // Two encryptions of the same plaintext differ (fresh IV from the HSM).
    let a = encrypt(&mut c, &key, b"same", &[]).await;
    let b = encrypt(&mut c, &key, b"same", &[]).await;
    assert_ne!(a, b);

    // ReEncrypt to another key and another context, without plaintext to the caller.
    let blob = encrypt(&mut c, &key, b"move me", &[("a", "1")]).await;
    let re = c
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob.clone(),
            source_encryption_context: ctx(&[("a", "1")]),
            destination_key_id: key2.clone(),
            destination_encryption_context: ctx(&[("b", "2")]),
            ..Default::default()
        })
        .await
        .reply();
    assert!(re.key_id.ends_with(&key2));
    assert!(re.source_key_id.ends_with(&key));
    let d = c
        .decrypt(decrypt_request(&re.ciphertext_blob, &[("b", "2")]))
        .await
        .reply();
    assert_eq!(d.plaintext, b"move me");
    assert!(d.key_id.ends_with(&key2));
    // ReEncrypt on the same key changes only the context.
    let same = c
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob,
            source_encryption_context: ctx(&[("a", "1")]),
            destination_key_id: key.clone(),
            destination_encryption_context: ctx(&[("a", "2")]),
            ..Default::default()
        })
        .await
        .reply();
    let d = c
        .decrypt(decrypt_request(&same.ciphertext_blob, &[("a", "2")]))
        .await
        .reply();
    assert_eq!(d.plaintext, b"move me");

    // Data keys: KeySpec and NumberOfBytes; the blob opens with Decrypt.
    for (spec, n, len) in [
        ("AES_256", None, 32usize),
        ("AES_128", None, 16),
        ("", Some(1), 1),
        ("", Some(1024), 1024),
    ] {
        let dk = c
            .generate_data_key(pb::GenerateDataKeyRequest {
                key_id: key.clone(),
                encryption_context: ctx(&[("file", "x")]),
                number_of_bytes: n,
                key_spec: spec.into(),
                grant_tokens: vec![],
                dry_run: false,
            })
            .await
            .reply();
        assert_eq!(dk.plaintext.len(), len);
        let d = c
            .decrypt(decrypt_request(&dk.ciphertext_blob, &[("file", "x")]))
            .await
            .reply();
        assert_eq!(d.plaintext, dk.plaintext);
    }
    let wp = c
        .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key_id: "alias/app".into(),
            key_spec: "AES_256".into(),
            ..Default::default()
        })
        .await
        .reply();
    let d = c
        .decrypt(decrypt_request(&wp.ciphertext_blob, &[]))
        .await
        .reply();
    assert_eq!(d.plaintext.len(), 32);

    // GenerateRandom.
    let r1 = c
        .generate_random(pb::GenerateRandomRequest {
            number_of_bytes: Some(1024),
            custom_key_store_id: String::new(),
        })
        .await
        .reply()
        .plaintext;
    let r2 = c
        .generate_random(pb::GenerateRandomRequest {
            number_of_bytes: Some(1024),
            custom_key_store_id: String::new(),
        })
        .await
        .reply()
        .plaintext;
    assert_eq!(r1.len(), 1024);
    assert_ne!(r1, r2);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_aws_errors() {
    let (_dir, server, mut c) = start_admin("bad-input").await;
    let key = create_key(&mut c).await;

    // Plaintext of 0 and 4097 bytes.
    for size in [0usize, 4097] {
        let r = c.encrypt(encrypt_request(&key, &vec![7; size])).await;
        assert_eq!(reason(r), "ValidationException", "plaintext {size}");
    }
    // NumberOfBytes 0 and 1025, both KeySpec and NumberOfBytes, neither.
    for (n, spec) in [
        (Some(0), ""),
        (Some(1025), ""),
        (Some(32), "AES_256"),
        (None, ""),
        (None, "AES_512"),
    ] {
        let r = c
            .generate_data_key(pb::GenerateDataKeyRequest {
                key_id: key.clone(),
                number_of_bytes: n,
                key_spec: spec.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(reason(r), "ValidationException", "{n:?} {spec}");
        let r = c
            .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
                key_id: key.clone(),
                number_of_bytes: n,
                key_spec: spec.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(reason(r), "ValidationException", "{n:?} {spec}");
    }
    for n in [0, 1025] {
        let r = c
            .generate_random(pb::GenerateRandomRequest {
                number_of_bytes: Some(n),
                custom_key_store_id: String::new(),
            })
            .await;
        assert_eq!(reason(r), "ValidationException");
    }

    // Unknown key, by id, ARN and alias.
    let unknown = uuid::Uuid::new_v4().to_string();
    for k in [
        unknown.clone(),
        format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/{unknown}"),
        "alias/nope".into(),
        "not-a-key".into(),
    ] {
        let r = c.encrypt(encrypt_request(&k, b"x")).await;
        assert_eq!(reason(r), "NotFoundException", "{k}");
    }
    assert_eq!(
        reason(try_enable_key(&mut c, &unknown).await),
        "NotFoundException"
    );

    // A wrong algorithm for a symmetric key.
    let r = c
        .encrypt(encrypt_request_alg(&key, b"x", "RSAES_OAEP_SHA_256"))
        .await;
    assert_eq!(reason(r), "InvalidKeyUsageException");

    // Disabled key.
    let blob = encrypt(&mut c, &key, b"secret", &[]).await;
    disable_key(&mut c, &key).await;
    let r = c.encrypt(encrypt_request(&key, b"x")).await;
    assert_eq!(reason(r), "DisabledException");
    assert_eq!(
        reason(c.decrypt(decrypt_request(&blob, &[])).await),
        "DisabledException"
    );
    try_enable_key(&mut c, &key).await.unwrap();

    // Pending deletion.
    schedule_deletion(&mut c, &key, 7).await;
    let r = c.encrypt(encrypt_request(&key, b"x")).await;
    assert_eq!(reason(r), "KMSInvalidStateException");
    assert_eq!(
        reason(c.decrypt(decrypt_request(&blob, &[])).await),
        "KMSInvalidStateException"
    );
    assert_eq!(
        reason(try_schedule_deletion(&mut c, &key, Some(7)).await),
        "KMSInvalidStateException"
    );
    assert_eq!(
        reason(try_enable_key(&mut c, &key).await),
        "KMSInvalidStateException"
    );
    try_cancel_deletion(&mut c, &key).await.unwrap();
    assert_eq!(
        reason(try_cancel_deletion(&mut c, &key).await),
        "KMSInvalidStateException"
    );
    try_enable_key(&mut c, &key).await.unwrap();
    for days in [6, 31] {
        let r = try_schedule_deletion(&mut c, &key, Some(days)).await;
        assert_eq!(reason(r), "ValidationException");
    }

    // Aliases: reserved prefix, malformed names, duplicates, management ops by alias. A name
    // outside the model's pattern is a ValidationException, checked first (as on AWS).
    for (bad, name) in [
        ("alias/aws/s3", "InvalidAliasNameException"),
        ("payments", "ValidationException"),
        ("alias/", "ValidationException"),
        ("alias/bad name", "ValidationException"),
        ("alias/ünï", "ValidationException"),
    ] {
        let r = try_create_alias(&mut c, bad, &key).await;
        assert_eq!(reason(r), name, "{bad}");
    }
    create_alias(&mut c, "alias/dup", &key).await;
    let r = try_create_alias(&mut c, "alias/dup", &key).await;
    assert_eq!(reason(r), "AlreadyExistsException");
    assert_eq!(
        reason(
            c.delete_alias(pb::DeleteAliasRequest {
                alias_name: "alias/missing".into()
            })
            .await
        ),
        "NotFoundException"
    );
    assert_eq!(
        reason(try_disable_key(&mut c, "alias/dup").await),
        "NotFoundException"
    );

    // Tags and descriptions.
    let r = c
        .tag_resource(pb::TagResourceRequest {
            key_id: key.clone(),
            tags: vec![tag("aws:reserved", "")],
        })
        .await;
    assert_eq!(reason(r), "TagException");
    let r = c
        .tag_resource(pb::TagResourceRequest {
            key_id: key.clone(),
            tags: vec![tag("k".repeat(129), "")],
        })
        .await;
    assert_refused(
        r,
        "a 129-character tag key",
        "ValidationException",
        "Value at 'tags.1.member.tagKey' failed to satisfy constraint",
    );
    let r = c
        .update_key_description(pb::UpdateKeyDescriptionRequest {
            key_id: key.clone(),
            description: "d".repeat(8193),
        })
        .await;
    assert_eq!(reason(r), "ValidationException");
    let bad_policy = pb::CreateKeyRequest {
        policy: "{not json".into(),
        ..Default::default()
    };
    for (req, expected) in [
        (bad_policy, "MalformedPolicyDocumentException"),
        (key_request("AES_999", ""), "ValidationException"),
    ] {
        assert_eq!(reason(c.create_key(req.clone()).await), expected, "{req:?}");
    }
    for (limit, marker, expected) in [
        (10, "%%%", "InvalidMarkerException"),
        (0, "", "ValidationException"),
    ] {
        let r = c
            .list_keys(pb::ListKeysRequest {
                limit: Some(limit),
                marker: marker.into(),
            })
            .await;
        assert_eq!(
            reason(r),
            expected,
            "ListKeys limit {limit} marker {marker:?}"
        );
    }

    // A failed request changes nothing: the key still has exactly one alias and its tags.
    let aliases = list_aliases_of(&mut c, &key).await;
    assert_eq!(aliases.len(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_ciphertext_and_wrong_context_are_invalid_ciphertext() {
    let (_dir, server, mut c) = start_admin("tamper").await;
    let key = create_key(&mut c).await;
    let other = create_key(&mut c).await;
    let ec = [("dept", "finance")];
    let blob = encrypt(&mut c, &key, b"the quarterly numbers", &ec).await;

    // Every single-byte change to the blob.
    for i in 0..blob.len() {
        for flip in [0x01u8, 0x80] {
            let mut m = blob.clone();
            m[i] ^= flip;
            let r = c.decrypt(decrypt_request(&m, &ec)).await;
            assert_eq!(
                reason(r),
                "InvalidCiphertextException",
                "byte {i} ^ {flip:#x}"
            );
        }
    }
    // Truncated and extended blobs.
    for m in [
        blob[..blob.len() - 1].to_vec(),
        [blob.clone(), vec![0]].concat(),
        blob[..10].to_vec(),
    ] {
        assert_eq!(
            reason(c.decrypt(decrypt_request(&m, &ec)).await),
            "InvalidCiphertextException"
        );
    }
    // Wrong, missing, extra, and case-changed context.
    for bad in [
        vec![("dept", "Finance")],
        vec![],
        vec![("dept", "finance"), ("x", "y")],
        vec![("Dept", "finance")],
    ] {
        let r = c.decrypt(decrypt_request(&blob, &bad)).await;
        assert_eq!(reason(r), "InvalidCiphertextException", "{bad:?}");
    }
    // The device still answers after all those failures.
    let d = c.decrypt(decrypt_request(&blob, &ec)).await.reply();
    assert_eq!(d.plaintext, b"the quarterly numbers");

    // Decrypt naming another key: IncorrectKeyException.
    let mut r = decrypt_request(&blob, &ec);
    r.key_id = other.clone();
    assert_eq!(reason(c.decrypt(r).await), "IncorrectKeyException");
    let r = c
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob.clone(),
            source_encryption_context: ctx(&ec),
            source_key_id: other.clone(),
            destination_key_id: other.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(reason(r), "IncorrectKeyException");
    // Oversized blob.
    assert_eq!(
        reason(c.decrypt(decrypt_request(&vec![1u8; 6145], &ec)).await),
        "ValidationException"
    );
    assert_eq!(
        reason(c.decrypt(decrypt_request(&[], &ec)).await),
        "ValidationException"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmk_custody_on_the_token() {
    let (_dir, server, mut c) = start_admin("custody").await;
    let key = create_key(&mut c).await;
    let hsm = server.kms.hsm().clone();
    let object = ObjectId::new(uuid_bytes(&key), 1);

    let attrs = hsm.key_attributes(object).await.expect("attributes");
    assert!(attrs.token, "CKA_TOKEN");
    assert!(attrs.private, "CKA_PRIVATE");
    assert!(attrs.sensitive, "CKA_SENSITIVE");
    assert!(attrs.always_sensitive, "CKA_ALWAYS_SENSITIVE");
    assert!(!attrs.extractable, "CKA_EXTRACTABLE");
    assert!(attrs.never_extractable, "CKA_NEVER_EXTRACTABLE");
    assert!(attrs.encrypt && attrs.decrypt, "CKA_ENCRYPT/CKA_DECRYPT");
    assert!(!attrs.wrap && !attrs.unwrap && !attrs.sign && !attrs.verify && !attrs.derive);
    assert_eq!(attrs.allowed_mechanisms, vec!["AES_GCM".to_string()]);

    let read = hsm.try_read_value(object).await;
    assert!(read.is_err(), "reading CKA_VALUE must fail");
    let wrapped = hsm.try_wrap_with_new_key(object).await;
    let err = wrapped.expect_err("wrapping must fail");
    assert!(err.to_string().contains("CKR_KEY_UNEXTRACTABLE"), "{err}");

    // The object is findable by its label for people using pkcs11-tool.
    let objects = hsm.list_objects().await.unwrap();
    assert!(objects
        .iter()
        .any(|o| o.label == format!("p11kms/{key}/v1") && o.id == object.0.to_vec()));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_is_required_and_accounts_are_isolated() {
    let (_dir, server, mut c) = start_admin("auth").await;
    let key = create_key(&mut c).await;
    let blob = encrypt(&mut c, &key, b"mine", &[]).await;

    // No client certificate at all.
    let mut anon = client_as(server.addr, None).await;
    let r = anon.list_keys(pb::ListKeysRequest::default()).await;
    let s = r.expect_err("no certificate must be refused");
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
    // A certificate from our CA that is bound to no principal.
    let mut unbound = client_as(server.addr, Some("unbound")).await;
    let s = unbound
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect_err("unbound certificate must be refused");
    assert_eq!(s.code(), tonic::Code::Unauthenticated);

    // A principal of another account cannot use or even see the key, and the denied
    // requests make no HSM call.
    let mut bob = client_as(server.addr, Some("keyadmin")).await;
    let before = server.kms.hsm().total_ops();
    let arn = format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/{key}");
    let r = bob.encrypt(encrypt_request(&arn, b"x")).await;
    assert_eq!(reason(r), "AccessDeniedException");
    assert_eq!(
        reason(bob.decrypt(decrypt_request(&blob, &[])).await),
        "AccessDeniedException"
    );
    assert_eq!(
        reason(
            bob.describe_key(pb::DescribeKeyRequest {
                key_id: arn.clone(),
                grant_tokens: vec![]
            })
            .await
        ),
        "AccessDeniedException"
    );
    // A bare id resolves in bob's own account, where it does not exist.
    assert_eq!(
        reason(try_disable_key(&mut bob, &key).await),
        "NotFoundException"
    );
    assert_eq!(
        server.kms.hsm().total_ops(),
        before,
        "denied requests reached the HSM"
    );
    let bobs_keys = bob
        .list_keys(pb::ListKeysRequest::default())
        .await
        .reply()
        .keys;
    assert!(bobs_keys.is_empty());
    // The admin's key is untouched.
    let m = describe_key(&mut c, &key).await;
    assert_eq!(m.key_state, "Enabled");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_signed_requests_are_authenticated() {
    let dir = data_dir("sigv4");
    let server = start(&dir).await;
    let mut s = signed_as(server.addr, "AKIAADMIN00000000001").await;
    let created = s
        .kms
        .create_key(s.kms_req(pb::CreateKeyRequest::default(), "CreateKey"))
        .await
        .expect("signed CreateKey")
        .into_inner()
        .key_metadata
        .unwrap();
    let who = s
        .sts
        .get_caller_identity(s.sts_req(pb::GetCallerIdentityRequest {}, "GetCallerIdentity"))
        .await
        .reply();
    assert_eq!(who.arn, format!("arn:aws:iam::{ACCOUNT}:user/admin"));
    assert_eq!(who.account, ACCOUNT);
    // A request signed for another method does not verify.
    let req = s.signer.sign(
        pb::DescribeKeyRequest {
            key_id: created.key_id.clone(),
            grant_tokens: vec![],
        },
        "/p11kms.v1.KeyManagementService/DisableKey",
    );
    assert_eq!(
        reason(s.kms.describe_key(req).await),
        "InvalidSignatureException"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_aliases_condition_follows_alias_changes() {
    let (_dir, server, mut c) = start_admin("resource-aliases").await;
    let admin_arn = format!("arn:aws:iam::{ACCOUNT}:user/admin");
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": admin_arn},
             "NotAction": "kms:Encrypt", "Resource": "*"},
            {"Sid": "EncryptWhenApproved", "Effect": "Allow", "Principal": {"AWS": admin_arn},
             "Action": "kms:Encrypt", "Resource": "*",
             "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/approved"}}}
        ]
    })
    .to_string();
    let key = create_key_with_policy(&mut c, policy).await;
    let other = create_key(&mut c).await;
    let encrypt = |c: &mut Client| {
        let mut c = c.clone();
        let key = key.clone();
        async move { c.encrypt(encrypt_request(&key, b"x")).await }
    };
    assert_eq!(reason(encrypt(&mut c).await), "AccessDeniedException");
    create_alias(&mut c, "alias/approved", &key).await;
    encrypt(&mut c)
        .await
        .expect("allowed once the key has the alias");
    // Repointing the alias away takes the permission with it.
    c.update_alias(pb::UpdateAliasRequest {
        alias_name: "alias/approved".into(),
        target_key_id: other.clone(),
    })
    .await
    .unwrap();
    assert_eq!(reason(encrypt(&mut c).await), "AccessDeniedException");
    c.update_alias(pb::UpdateAliasRequest {
        alias_name: "alias/approved".into(),
        target_key_id: key.clone(),
    })
    .await
    .unwrap();
    encrypt(&mut c).await.expect("allowed again");
    c.delete_alias(pb::DeleteAliasRequest {
        alias_name: "alias/approved".into(),
    })
    .await
    .unwrap();
    assert_eq!(reason(encrypt(&mut c).await), "AccessDeniedException");
    server.shutdown().await.unwrap();
}
