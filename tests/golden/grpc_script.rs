//! The gRPC door's script: every method of KeyManagementService, SecurityTokenService and
//! AdminService, SigV4-signed as fixture users. Each answer is recorded as the response
//! message (its `Debug` text) and the response metadata, or as the status: code, message,
//! the `google.rpc` error details (the AWS reason) and the metadata.

use std::fmt::Debug;
use std::net::SocketAddr;

use p11kms::client::AccessKeyCredentials;
use p11kms::pb;
use tonic::metadata::KeyAndValueRef;
use tonic_types::StatusExt;

use crate::common::{self, ctx, fixture_credentials, signed_as, signed_with, tag, Signed, ACCOUNT};
use crate::normalise::Normaliser;
use crate::{Transcript, MISSING_GRANT, MISSING_KEY};

/// The door's clients (as the fixture admin) and the transcript.
struct G {
    admin: Signed,
    bob: Signed,
    /// The admin's access key with a wrong secret.
    wrong: Signed,
    t: Transcript,
}

/// Calls `$method` of `$service` (`kms`, `sts` or `admin`) with `$req` signed by `$who`,
/// records the exchange and returns the response message, if any.
macro_rules! call {
    ($g:ident . $who:ident . $service:ident, $method:ident, $what:expr, $req:expr) => {{
        let req = $req;
        let summary = format!("{req:?}");
        let service = service_name(stringify!($service));
        let name = camel(stringify!($method));
        let signed = $g
            .$who
            .signer
            .sign(req, &format!("/p11kms.v1.{service}/{name}"));
        let r = $g.$who.$service.clone().$method(signed).await;
        $g.t.record(
            &format!("{service}/{name}: {}", $what),
            &summary,
            &render(&r),
        );
        r.ok().map(|r| r.into_inner())
    }};
}

/// The gRPC service behind a client field of [`Signed`].
fn service_name(field: &str) -> &'static str {
    match field {
        "kms" => "KeyManagementService",
        "sts" => "SecurityTokenService",
        "admin" => "AdminService",
        other => panic!("no service {other}"),
    }
}

/// `describe_key` → `DescribeKey`: a client method's gRPC method name.
fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The metadata of an answer, but `date` (and the binary status details, shown decoded).
fn metadata(m: &tonic::metadata::MetadataMap) -> String {
    let mut out = String::new();
    for kv in m.iter() {
        if let KeyAndValueRef::Ascii(k, v) = kv {
            if k.as_str() != "date" {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<not text>")));
            }
        }
    }
    out
}

/// An answer as the transcript shows it.
fn render<T: Debug>(r: &Result<tonic::Response<T>, tonic::Status>) -> String {
    match r {
        Ok(resp) => format!("ok\n{}{:?}", metadata(resp.metadata()), resp.get_ref()),
        Err(s) => format!(
            "status {:?}\nmessage: {}\ndetails: {:?}\n{}",
            s.code(),
            s.message(),
            s.get_error_details(),
            metadata(s.metadata()).trim_end()
        ),
    }
}

/// The admin's access key id with a secret that is not its own.
fn wrong_secret() -> AccessKeyCredentials {
    let mut c = fixture_credentials("AKIAADMIN00000000001");
    c.secret_access_key = zeroize::Zeroizing::new("not-the-secret-access-key-0000000000000".into());
    c
}

fn key_id(r: Option<pb::CreateKeyResponse>) -> String {
    r.expect("CreateKey succeeds")
        .key_metadata
        .expect("metadata")
        .key_id
}

/// Runs the gRPC door's script against the daemon at `addr`.
pub async fn run(addr: SocketAddr) -> String {
    let mut g = G {
        admin: signed_as(addr, "AKIAADMIN00000000001").await,
        bob: signed_as(addr, "AKIABOB0000000000001").await,
        wrong: signed_with(addr, wrong_secret()).await,
        t: Transcript::new(Normaliser::new()),
    };
    let k = keys(&mut g).await;
    lifecycle(&mut g, &k).await;
    aliases_and_tags(&mut g, &k).await;
    symmetric(&mut g, &k).await;
    asymmetric(&mut g, &k).await;
    policies_and_grants(&mut g, &k).await;
    rotation_and_import(&mut g, &k).await;
    admin_and_sts(&mut g, &k, addr).await;
    g.t.finish()
}

/// The keys of the script.
struct Keys {
    sym: String,
    sym2: String,
    rsa: String,
    ecc: String,
    ecc_ka: String,
    hmac: String,
    ext: String,
}

async fn create(g: &mut G, what: &str, spec: &str, usage: &str, origin: &str) -> String {
    key_id(call!(
        g.admin.kms,
        create_key,
        what,
        pb::CreateKeyRequest {
            key_spec: spec.into(),
            key_usage: usage.into(),
            origin: origin.into(),
            ..Default::default()
        }
    ))
}

async fn keys(g: &mut G) -> Keys {
    let sym = key_id(call!(
        g.admin.kms,
        create_key,
        "symmetric, with a description and tags",
        pb::CreateKeyRequest {
            description: "golden symmetric".into(),
            tags: vec![tag("team", "blue")],
            ..Default::default()
        }
    ));
    call!(
        g.admin.kms,
        list_keys,
        "the one key of the account",
        pb::ListKeysRequest::default()
    );
    call!(
        g.admin.kms,
        list_keys,
        "Limit 0",
        pb::ListKeysRequest {
            limit: Some(0),
            ..Default::default()
        }
    );
    call!(
        g.admin.kms,
        create_key,
        "unknown KeySpec",
        pb::CreateKeyRequest {
            key_spec: "AES_512".into(),
            ..Default::default()
        }
    );
    let sym2 = create(g, "second symmetric", "", "", "").await;
    let rsa = create(g, "RSA_2048 SIGN_VERIFY", "RSA_2048", "SIGN_VERIFY", "").await;
    let ecc = create(
        g,
        "ECC_NIST_P256 SIGN_VERIFY",
        "ECC_NIST_P256",
        "SIGN_VERIFY",
        "",
    )
    .await;
    let ecc_ka = create(
        g,
        "ECC_NIST_P256 KEY_AGREEMENT",
        "ECC_NIST_P256",
        "KEY_AGREEMENT",
        "",
    )
    .await;
    let hmac = create(g, "HMAC_256", "HMAC_256", "GENERATE_VERIFY_MAC", "").await;
    let ext = create(g, "Origin EXTERNAL", "", "", "EXTERNAL").await;
    Keys {
        sym,
        sym2,
        rsa,
        ecc,
        ecc_ka,
        hmac,
        ext,
    }
}

async fn lifecycle(g: &mut G, k: &Keys) {
    let describe = |key: &str| pb::DescribeKeyRequest {
        key_id: key.into(),
        ..Default::default()
    };
    call!(g.admin.kms, describe_key, "by id", describe(&k.sym));
    call!(
        g.admin.kms,
        describe_key,
        "no such key",
        describe(MISSING_KEY)
    );
    call!(g.admin.kms, describe_key, "KeyId empty", describe(""));
    let id = |key: &str| key.to_string();
    call!(
        g.admin.kms,
        disable_key,
        "symmetric",
        pb::DisableKeyRequest {
            key_id: id(&k.sym2)
        }
    );
    call!(
        g.admin.kms,
        encrypt,
        "under a disabled key",
        pb::EncryptRequest {
            key_id: id(&k.sym2),
            plaintext: b"hello".to_vec(),
            ..Default::default()
        }
    );
    call!(
        g.admin.kms,
        disable_key,
        "no such key",
        pb::DisableKeyRequest {
            key_id: id(MISSING_KEY)
        }
    );
    call!(
        g.admin.kms,
        enable_key,
        "symmetric",
        pb::EnableKeyRequest {
            key_id: id(&k.sym2)
        }
    );
    call!(
        g.admin.kms,
        enable_key,
        "no such key",
        pb::EnableKeyRequest {
            key_id: id(MISSING_KEY)
        }
    );
    call!(
        g.admin.kms,
        schedule_key_deletion,
        "7 days",
        pb::ScheduleKeyDeletionRequest {
            key_id: id(&k.sym2),
            pending_window_in_days: Some(7)
        }
    );
    call!(
        g.admin.kms,
        describe_key,
        "pending deletion",
        describe(&k.sym2)
    );
    call!(
        g.admin.kms,
        schedule_key_deletion,
        "3 days",
        pb::ScheduleKeyDeletionRequest {
            key_id: id(&k.sym2),
            pending_window_in_days: Some(3)
        }
    );
    call!(
        g.admin.kms,
        cancel_key_deletion,
        "pending deletion",
        pb::CancelKeyDeletionRequest {
            key_id: id(&k.sym2)
        }
    );
    call!(
        g.admin.kms,
        cancel_key_deletion,
        "not pending deletion",
        pb::CancelKeyDeletionRequest {
            key_id: id(&k.sym2)
        }
    );
    call!(
        g.admin.kms,
        enable_key,
        "after cancelling",
        pb::EnableKeyRequest {
            key_id: id(&k.sym2)
        }
    );
    call!(
        g.admin.kms,
        update_key_description,
        "symmetric",
        pb::UpdateKeyDescriptionRequest {
            key_id: id(&k.sym),
            description: "golden, renamed".into()
        }
    );
    call!(
        g.admin.kms,
        update_key_description,
        "no such key",
        pb::UpdateKeyDescriptionRequest {
            key_id: id(MISSING_KEY),
            description: "x".into()
        }
    );
}

async fn aliases_and_tags(g: &mut G, k: &Keys) {
    let alias = |name: &str, key: &str| pb::CreateAliasRequest {
        alias_name: name.into(),
        target_key_id: key.into(),
    };
    call!(
        g.admin.kms,
        create_alias,
        "alias/golden",
        alias("alias/golden", &k.sym)
    );
    call!(
        g.admin.kms,
        create_alias,
        "the same name again",
        alias("alias/golden", &k.sym)
    );
    call!(
        g.admin.kms,
        create_alias,
        "reserved aws/ prefix",
        alias("alias/aws/golden", &k.sym)
    );
    call!(
        g.admin.kms,
        create_alias,
        "alias/golden-2",
        alias("alias/golden-2", &k.sym2)
    );
    call!(
        g.admin.kms,
        update_alias,
        "alias/golden-2 to the first key",
        pb::UpdateAliasRequest {
            alias_name: "alias/golden-2".into(),
            target_key_id: k.sym.clone()
        }
    );
    call!(
        g.admin.kms,
        update_alias,
        "no such alias",
        pb::UpdateAliasRequest {
            alias_name: "alias/missing".into(),
            target_key_id: k.sym.clone()
        }
    );
    call!(
        g.admin.kms,
        describe_key,
        "by alias",
        pb::DescribeKeyRequest {
            key_id: "alias/golden".into(),
            ..Default::default()
        }
    );
    let list = |key: &str| pb::ListAliasesRequest {
        key_id: key.into(),
        ..Default::default()
    };
    call!(g.admin.kms, list_aliases, "all", list(""));
    call!(g.admin.kms, list_aliases, "of one key", list(&k.sym));
    call!(g.admin.kms, list_aliases, "no such key", list(MISSING_KEY));
    let delete = |name: &str| pb::DeleteAliasRequest {
        alias_name: name.into(),
    };
    call!(
        g.admin.kms,
        delete_alias,
        "alias/golden-2",
        delete("alias/golden-2")
    );
    call!(
        g.admin.kms,
        delete_alias,
        "no such alias",
        delete("alias/golden-2")
    );
    call!(
        g.admin.kms,
        tag_resource,
        "two tags",
        pb::TagResourceRequest {
            key_id: k.sym.clone(),
            tags: vec![tag("env", "test"), tag("cost", "42")]
        }
    );
    call!(
        g.admin.kms,
        tag_resource,
        "reserved aws: tag key",
        pb::TagResourceRequest {
            key_id: k.sym.clone(),
            tags: vec![tag("aws:x", "y")]
        }
    );
    let untag = |key: &str| pb::UntagResourceRequest {
        key_id: key.into(),
        tag_keys: vec!["cost".into()],
    };
    call!(g.admin.kms, untag_resource, "one tag", untag(&k.sym));
    call!(
        g.admin.kms,
        untag_resource,
        "no such key",
        untag(MISSING_KEY)
    );
    let tags = |limit: Option<i32>, marker: &str| pb::ListResourceTagsRequest {
        key_id: k.sym.clone(),
        limit,
        marker: marker.into(),
    };
    call!(g.admin.kms, list_resource_tags, "symmetric", tags(None, ""));
    call!(
        g.admin.kms,
        list_resource_tags,
        "first page",
        tags(Some(1), "")
    );
    call!(
        g.admin.kms,
        list_resource_tags,
        "bad marker",
        tags(None, "%%%")
    );
}

async fn symmetric(g: &mut G, k: &Keys) {
    let c = ctx(&[("purpose", "golden")]);
    let blob = call!(
        g.admin.kms,
        encrypt,
        "with an encryption context",
        pb::EncryptRequest {
            key_id: k.sym.clone(),
            plaintext: b"golden plaintext".to_vec(),
            encryption_context: c.clone(),
            ..Default::default()
        }
    )
    .expect("Encrypt succeeds")
    .ciphertext_blob;
    call!(
        g.admin.kms,
        encrypt,
        "dry run",
        pb::EncryptRequest {
            key_id: k.sym.clone(),
            plaintext: b"x".to_vec(),
            dry_run: true,
            ..Default::default()
        }
    );
    call!(
        g.admin.kms,
        encrypt,
        "empty plaintext",
        pb::EncryptRequest {
            key_id: k.sym.clone(),
            ..Default::default()
        }
    );
    let decrypt =
        |blob: &[u8], c: &std::collections::BTreeMap<String, String>| pb::DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            encryption_context: c.clone(),
            ..Default::default()
        };
    call!(g.admin.kms, decrypt, "with the context", decrypt(&blob, &c));
    call!(
        g.admin.kms,
        decrypt,
        "without the context",
        decrypt(&blob, &ctx(&[]))
    );
    call!(
        g.admin.kms,
        decrypt,
        "not a ciphertext",
        decrypt(&[1u8; 64], &ctx(&[]))
    );
    let re = |dest: &str| pb::ReEncryptRequest {
        ciphertext_blob: blob.clone(),
        source_encryption_context: c.clone(),
        destination_key_id: dest.into(),
        ..Default::default()
    };
    call!(g.admin.kms, re_encrypt, "to the second key", re(&k.sym2));
    call!(g.admin.kms, re_encrypt, "to a signing key", re(&k.rsa));
    let dk = call!(
        g.admin.kms,
        generate_data_key,
        "AES_256",
        pb::GenerateDataKeyRequest {
            key_id: k.sym.clone(),
            key_spec: "AES_256".into(),
            ..Default::default()
        }
    )
    .expect("GenerateDataKey succeeds");
    call!(
        g.admin.kms,
        decrypt,
        "the data key",
        decrypt(&dk.ciphertext_blob, &ctx(&[]))
    );
    call!(
        g.admin.kms,
        generate_data_key,
        "both KeySpec and NumberOfBytes",
        pb::GenerateDataKeyRequest {
            key_id: k.sym.clone(),
            key_spec: "AES_256".into(),
            number_of_bytes: Some(32),
            ..Default::default()
        }
    );
    call!(
        g.admin.kms,
        generate_data_key_without_plaintext,
        "16 bytes",
        pb::GenerateDataKeyWithoutPlaintextRequest {
            key_id: "alias/golden".into(),
            number_of_bytes: Some(16),
            ..Default::default()
        }
    );
    call!(
        g.admin.kms,
        generate_data_key_without_plaintext,
        "under an HMAC key",
        pb::GenerateDataKeyWithoutPlaintextRequest {
            key_id: k.hmac.clone(),
            key_spec: "AES_128".into(),
            ..Default::default()
        }
    );
    let random = |n: i32| pb::GenerateRandomRequest {
        number_of_bytes: Some(n),
        ..Default::default()
    };
    call!(g.admin.kms, generate_random, "32 bytes", random(32));
    call!(g.admin.kms, generate_random, "2000 bytes", random(2000));
    custom_key_stores(g).await;
    let usage = |key: &str| pb::GetKeyLastUsageRequest { key_id: key.into() };
    call!(g.admin.kms, get_key_last_usage, "after use", usage(&k.sym));
    call!(
        g.admin.kms,
        get_key_last_usage,
        "never used",
        usage(&k.ecc_ka)
    );
    call!(
        g.admin.kms,
        get_key_last_usage,
        "no such key",
        usage(MISSING_KEY)
    );
}

async fn asymmetric(g: &mut G, k: &Keys) {
    let msg = b"message to sign".to_vec();
    let sign = |key: &str, alg: &str| pb::SignRequest {
        key_id: key.into(),
        message: msg.clone(),
        signing_algorithm: alg.into(),
        ..Default::default()
    };
    let sig = call!(
        g.admin.kms,
        sign,
        "RSASSA_PSS_SHA_256",
        sign(&k.rsa, "RSASSA_PSS_SHA_256")
    )
    .expect("Sign succeeds")
    .signature;
    call!(
        g.admin.kms,
        sign,
        "ECDSA_SHA_256",
        sign(&k.ecc, "ECDSA_SHA_256")
    );
    call!(
        g.admin.kms,
        sign,
        "with a symmetric key",
        sign(&k.sym, "RSASSA_PSS_SHA_256")
    );
    let verify = |sig: Vec<u8>| pb::VerifyRequest {
        key_id: k.rsa.clone(),
        message: msg.clone(),
        signature: sig,
        signing_algorithm: "RSASSA_PSS_SHA_256".into(),
        ..Default::default()
    };
    call!(g.admin.kms, verify, "RSASSA_PSS_SHA_256", verify(sig));
    call!(
        g.admin.kms,
        verify,
        "a wrong signature",
        verify(vec![7u8; 256])
    );
    let public = |key: &str| pb::GetPublicKeyRequest {
        key_id: key.into(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        get_public_key,
        "RSA signing key",
        public(&k.rsa)
    );
    let peer = call!(
        g.admin.kms,
        get_public_key,
        "ECC signing key",
        public(&k.ecc)
    )
    .expect("GetPublicKey succeeds")
    .public_key;
    call!(
        g.admin.kms,
        get_public_key,
        "ECC key agreement key",
        public(&k.ecc_ka)
    );
    call!(g.admin.kms, get_public_key, "symmetric key", public(&k.sym));
    let derive = |key: &str| pb::DeriveSharedSecretRequest {
        key_id: key.into(),
        key_agreement_algorithm: "ECDH".into(),
        public_key: peer.clone(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        derive_shared_secret,
        "ECDH with a P-256 peer",
        derive(&k.ecc_ka)
    );
    call!(
        g.admin.kms,
        derive_shared_secret,
        "with a signing key",
        derive(&k.ecc)
    );
    let gen_mac = |alg: &str| pb::GenerateMacRequest {
        key_id: k.hmac.clone(),
        message: msg.clone(),
        mac_algorithm: alg.into(),
        ..Default::default()
    };
    let mac = call!(
        g.admin.kms,
        generate_mac,
        "HMAC_SHA_256",
        gen_mac("HMAC_SHA_256")
    )
    .expect("GenerateMac succeeds")
    .mac;
    call!(
        g.admin.kms,
        generate_mac,
        "HMAC_SHA_512 with an HMAC_256 key",
        gen_mac("HMAC_SHA_512")
    );
    let verify_mac = |mac: Vec<u8>| pb::VerifyMacRequest {
        key_id: k.hmac.clone(),
        message: msg.clone(),
        mac_algorithm: "HMAC_SHA_256".into(),
        mac,
        ..Default::default()
    };
    call!(g.admin.kms, verify_mac, "HMAC_SHA_256", verify_mac(mac));
    call!(
        g.admin.kms,
        verify_mac,
        "a wrong MAC",
        verify_mac(vec![9u8; 32])
    );
    let pair = |key: &str, spec: &str| pb::GenerateDataKeyPairRequest {
        key_id: key.into(),
        key_pair_spec: spec.into(),
        encryption_context: ctx(&[("pair", "1")]),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        generate_data_key_pair,
        "ECC_NIST_P256",
        pair(&k.sym, "ECC_NIST_P256")
    );
    call!(
        g.admin.kms,
        generate_data_key_pair,
        "unknown KeyPairSpec",
        pair(&k.sym, "RSA_1024")
    );
    let pair_np = |key: &str| pb::GenerateDataKeyPairWithoutPlaintextRequest {
        key_id: key.into(),
        key_pair_spec: "ECC_SECG_P256K1".into(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        generate_data_key_pair_without_plaintext,
        "ECC_SECG_P256K1",
        pair_np(&k.sym)
    );
    call!(
        g.admin.kms,
        generate_data_key_pair_without_plaintext,
        "under an RSA key",
        pair_np(&k.rsa)
    );
}

async fn policies_and_grants(g: &mut G, k: &Keys) {
    let get = |name: &str| pb::GetKeyPolicyRequest {
        key_id: k.sym.clone(),
        policy_name: name.into(),
    };
    let policy = call!(g.admin.kms, get_key_policy, "default", get("default"))
        .expect("GetKeyPolicy succeeds")
        .policy;
    call!(
        g.admin.kms,
        get_key_policy,
        "unknown policy name",
        get("other")
    );
    let put = |policy: &str| pb::PutKeyPolicyRequest {
        key_id: k.sym.clone(),
        policy_name: "default".into(),
        policy: policy.into(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        put_key_policy,
        "the same policy back",
        put(&policy)
    );
    call!(g.admin.kms, put_key_policy, "not JSON", put("{not json"));
    let list = |key: &str| pb::ListKeyPoliciesRequest {
        key_id: key.into(),
        ..Default::default()
    };
    call!(g.admin.kms, list_key_policies, "symmetric", list(&k.sym));
    call!(
        g.admin.kms,
        list_key_policies,
        "no such key",
        list(MISSING_KEY)
    );
    let user1 = format!("arn:aws:iam::{ACCOUNT}:user/user1");
    let user2 = format!("arn:aws:iam::{ACCOUNT}:user/user2");
    let grant = call!(
        g.admin.kms,
        create_grant,
        "Encrypt and Decrypt for user1, retirable by user2",
        pb::CreateGrantRequest {
            key_id: k.sym.clone(),
            grantee_principal: user1.clone(),
            retiring_principal: user2.clone(),
            operations: vec!["Encrypt".into(), "Decrypt".into()],
            name: "golden-grant".into(),
            constraints: Some(pb::GrantConstraints {
                encryption_context_subset: Some(pb::EncryptionContextConstraint {
                    pairs: ctx(&[("purpose", "golden")]),
                }),
                encryption_context_equals: None,
            }),
            ..Default::default()
        }
    )
    .expect("CreateGrant succeeds");
    call!(
        g.admin.kms,
        create_grant,
        "unknown operation",
        pb::CreateGrantRequest {
            key_id: k.sym.clone(),
            grantee_principal: user1.clone(),
            operations: vec!["Bogus".into()],
            ..Default::default()
        }
    );
    let sign_grant = call!(
        g.admin.kms,
        create_grant,
        "Sign for user1 on the RSA key",
        pb::CreateGrantRequest {
            key_id: k.rsa.clone(),
            grantee_principal: user1.clone(),
            operations: vec!["Sign".into()],
            ..Default::default()
        }
    )
    .expect("CreateGrant succeeds");
    call!(
        g.admin.kms,
        encrypt,
        "with the grant token",
        pb::EncryptRequest {
            key_id: k.sym.clone(),
            plaintext: b"granted".to_vec(),
            encryption_context: ctx(&[("purpose", "golden")]),
            grant_tokens: vec![grant.grant_token.clone()],
            ..Default::default()
        }
    );
    let grants = |key: &str| pb::ListGrantsRequest {
        key_id: key.into(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        list_grants,
        "of the symmetric key",
        grants(&k.sym)
    );
    call!(g.admin.kms, list_grants, "no such key", grants(MISSING_KEY));
    let retirable = |p: &str| pb::ListRetirableGrantsRequest {
        retiring_principal: p.into(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        list_retirable_grants,
        "retirable by user2",
        retirable(&user2)
    );
    call!(
        g.admin.kms,
        list_retirable_grants,
        "RetiringPrincipal empty",
        retirable("")
    );
    let retire = |id: &str| pb::RetireGrantRequest {
        key_id: k.sym.clone(),
        grant_id: id.into(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        retire_grant,
        "by key and grant id",
        retire(&grant.grant_id)
    );
    call!(
        g.admin.kms,
        retire_grant,
        "no such grant",
        retire(MISSING_GRANT)
    );
    let revoke = |id: &str| pb::RevokeGrantRequest {
        key_id: k.rsa.clone(),
        grant_id: id.into(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        revoke_grant,
        "the Sign grant",
        revoke(&sign_grant.grant_id)
    );
    call!(
        g.admin.kms,
        revoke_grant,
        "a malformed grant id",
        revoke("not-a-grant")
    );
}

async fn rotation_and_import(g: &mut G, k: &Keys) {
    let enable = |days: i32| pb::EnableKeyRotationRequest {
        key_id: k.sym.clone(),
        rotation_period_in_days: Some(days),
    };
    call!(
        g.admin.kms,
        enable_key_rotation,
        "every 90 days",
        enable(90)
    );
    call!(
        g.admin.kms,
        enable_key_rotation,
        "every 10 days",
        enable(10)
    );
    let status = |key: &str| pb::GetKeyRotationStatusRequest { key_id: key.into() };
    call!(
        g.admin.kms,
        get_key_rotation_status,
        "enabled",
        status(&k.sym)
    );
    call!(
        g.admin.kms,
        get_key_rotation_status,
        "no such key",
        status(MISSING_KEY)
    );
    let rotate = |key: &str| pb::RotateKeyOnDemandRequest { key_id: key.into() };
    call!(
        g.admin.kms,
        rotate_key_on_demand,
        "symmetric",
        rotate(&k.sym)
    );
    call!(g.admin.kms, rotate_key_on_demand, "RSA key", rotate(&k.rsa));
    let rotations = |key: &str, include: &str| pb::ListKeyRotationsRequest {
        key_id: key.into(),
        include_key_material: include.into(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        list_key_rotations,
        "after one rotation",
        rotations(&k.sym, "")
    );
    call!(
        g.admin.kms,
        list_key_rotations,
        "with the original material",
        rotations(&k.sym, "ALL_KEY_MATERIAL")
    );
    call!(
        g.admin.kms,
        list_key_rotations,
        "RSA key",
        rotations(&k.rsa, "")
    );
    let disable = |key: &str| pb::DisableKeyRotationRequest { key_id: key.into() };
    call!(
        g.admin.kms,
        disable_key_rotation,
        "symmetric",
        disable(&k.sym)
    );
    call!(
        g.admin.kms,
        disable_key_rotation,
        "HMAC key",
        disable(&k.hmac)
    );
    let params = |key: &str| pb::GetParametersForImportRequest {
        key_id: key.into(),
        wrapping_algorithm: "RSAES_OAEP_SHA_1".into(),
        wrapping_key_spec: "RSA_2048".into(),
    };
    let p = call!(
        g.admin.kms,
        get_parameters_for_import,
        "RSAES_OAEP_SHA_1, RSA_2048",
        params(&k.ext)
    )
    .expect("GetParametersForImport succeeds");
    call!(
        g.admin.kms,
        get_parameters_for_import,
        "a key of origin AWS_KMS",
        params(&k.sym)
    );
    let wrapped = common::openssl_oaep_encrypt(&p.public_key, "sha1", &[0x5a; 32]);
    g.t.random_blob(&wrapped);
    let import = |token: Vec<u8>| pb::ImportKeyMaterialRequest {
        key_id: k.ext.clone(),
        import_token: token,
        encrypted_key_material: wrapped.clone(),
        expiration_model: "KEY_MATERIAL_DOES_NOT_EXPIRE".into(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        import_key_material,
        "a bad import token",
        import(vec![3u8; 40])
    );
    call!(
        g.admin.kms,
        import_key_material,
        "32 bytes wrapped with openssl",
        import(p.import_token.clone())
    );
    call!(
        g.admin.kms,
        encrypt,
        "under the imported material",
        pb::EncryptRequest {
            key_id: k.ext.clone(),
            plaintext: b"imported".to_vec(),
            ..Default::default()
        }
    );
    let delete = |key: &str| pb::DeleteImportedKeyMaterialRequest {
        key_id: key.into(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        delete_imported_key_material,
        "imported",
        delete(&k.ext)
    );
    call!(
        g.admin.kms,
        delete_imported_key_material,
        "symmetric",
        delete(&k.sym)
    );
    call!(
        g.admin.kms,
        describe_key,
        "pending import",
        pb::DescribeKeyRequest {
            key_id: k.ext.clone(),
            ..Default::default()
        }
    );
}

async fn admin_and_sts(g: &mut G, k: &Keys, addr: SocketAddr) {
    let explain = |who: &str, action: &str, ip: &str| pb::ExplainAccessRequest {
        principal: format!("arn:aws:iam::{ACCOUNT}:user/{who}"),
        action: action.into(),
        key_id: k.sym.clone(),
        encryption_context: ctx(&[("purpose", "golden")]),
        source_ip: ip.into(),
        xks_request_metadata: Default::default(),
    };
    let (user1, admin) = ("user1 may Decrypt?", "admin may Encrypt?");
    let r = explain("user1", "kms:Decrypt", "");
    call!(g.admin.admin, explain_access, user1, r);
    let r = explain("admin", "kms:Encrypt", "");
    call!(g.admin.admin, explain_access, admin, r);
    call!(
        g.admin.admin,
        explain_access,
        "a bad SourceIp",
        explain("user1", "kms:Decrypt", "not-an-ip")
    );
    let migrate = |to: pb::Residency| pb::MigrateResidencyRequest {
        to: to as i32,
        limit: Some(10),
        ..Default::default()
    };
    let (nothing, wrong_target) = ("to token: nothing to move", "to wrapped on a token daemon");
    call!(
        g.admin.admin,
        migrate_residency,
        nothing,
        migrate(pb::Residency::Token)
    );
    call!(
        g.admin.admin,
        migrate_residency,
        wrong_target,
        migrate(pb::Residency::Wrapped)
    );
    call!(
        g.bob.admin,
        migrate_residency,
        "as bob",
        migrate(pb::Residency::Token)
    );
    call!(
        g.admin.sts,
        get_caller_identity,
        "as admin",
        pb::GetCallerIdentityRequest {}
    );
    call!(
        g.wrong.sts,
        get_caller_identity,
        "a wrong secret",
        pb::GetCallerIdentityRequest {}
    );
    let assume = |role: &str| pb::AssumeRoleRequest {
        role_arn: format!("arn:aws:iam::{ACCOUNT}:role/{role}"),
        role_session_name: "golden".into(),
        duration_seconds: Some(900),
        ..Default::default()
    };
    let creds = call!(
        g.bob.sts,
        assume_role,
        "bob assumes Engineering",
        assume("Engineering")
    )
    .expect("AssumeRole succeeds")
    .credentials
    .expect("credentials");
    call!(g.bob.sts, assume_role, "no such role", assume("NoSuchRole"));
    let session = AccessKeyCredentials {
        access_key_id: creds.access_key_id,
        secret_access_key: zeroize::Zeroizing::new(creds.secret_access_key),
        session_token: Some(zeroize::Zeroizing::new(creds.session_token)),
    };
    g.bob = signed_with(addr, session).await;
    call!(
        g.bob.sts,
        get_caller_identity,
        "as the assumed role",
        pb::GetCallerIdentityRequest {}
    );
    call!(
        g.bob.kms,
        describe_key,
        "as the assumed role",
        pb::DescribeKeyRequest {
            key_id: k.sym.clone(),
            ..Default::default()
        }
    );
}

/// The custom key store operations on a daemon with no `[[hsm.cluster]]`: their answers
/// and errors (the life cycle on real clusters is in tests/custom_key_stores.rs).
async fn custom_key_stores(g: &mut G) {
    let store = "cks-1234567890abcdef0".to_string();
    call!(
        g.admin.kms,
        describe_custom_key_stores,
        "none",
        pb::DescribeCustomKeyStoresRequest::default()
    );
    let create = |cluster: &str, password: &str| pb::CreateCustomKeyStoreRequest {
        custom_key_store_name: "golden".into(),
        cloud_hsm_cluster_id: cluster.into(),
        trust_anchor_certificate: "-----BEGIN CERTIFICATE-----".into(),
        key_store_password: password.into(),
        custom_key_store_type: String::new(),
        ..Default::default()
    };
    call!(
        g.admin.kms,
        create_custom_key_store,
        "a cluster that is not configured",
        create("cluster-abcdefghijk", "golden-password")
    );
    call!(
        g.admin.kms,
        create_custom_key_store,
        "a 3-character password",
        create("cluster-abcdefghijk", "abc")
    );
    let id = || store.clone();
    call!(
        g.admin.kms,
        connect_custom_key_store,
        "unknown store",
        pb::ConnectCustomKeyStoreRequest {
            custom_key_store_id: id()
        }
    );
    call!(
        g.admin.kms,
        disconnect_custom_key_store,
        "unknown store",
        pb::DisconnectCustomKeyStoreRequest {
            custom_key_store_id: id()
        }
    );
    call!(
        g.admin.kms,
        update_custom_key_store,
        "unknown store",
        pb::UpdateCustomKeyStoreRequest {
            custom_key_store_id: id(),
            new_custom_key_store_name: "renamed".into(),
            ..Default::default()
        }
    );
    call!(
        g.admin.kms,
        delete_custom_key_store,
        "unknown store",
        pb::DeleteCustomKeyStoreRequest {
            custom_key_store_id: id()
        }
    );
    call!(
        g.admin.kms,
        create_key,
        "in an unknown custom key store",
        pb::CreateKeyRequest {
            origin: "AWS_CLOUDHSM".into(),
            custom_key_store_id: id(),
            ..Default::default()
        }
    );
}
