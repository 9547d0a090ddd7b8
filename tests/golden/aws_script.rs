//! The AWS door's script: raw SigV4-signed HTTP requests (AWS JSON 1.1 for KMS and
//! `P11kmsAdmin.ExplainAccess`, the Query protocol for STS), each answer recorded as status,
//! headers (but `date` and `content-length`), the error `__type` and the exact body.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use p11kms::client::AccessKeyCredentials;
use p11kms::core::{Clock, ManualClock};
use serde_json::{json, Value};

use crate::common::{self, aws_door_post, fixture_credentials, ACCOUNT};
use crate::normalise::Normaliser;
use crate::{Transcript, MISSING_GRANT, MISSING_KEY};

const JSON: &str = "application/x-amz-json-1.1";
const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// The AWS door of one daemon and the transcript of the script run against it.
struct Door {
    addr: SocketAddr,
    clock: Arc<ManualClock>,
    admin: AccessKeyCredentials,
    t: Transcript,
}

impl Door {
    /// `TrentService.<op>` as the fixture admin; the raw answer's JSON (Null if none).
    async fn kms(&mut self, op: &str, what: &str, body: Value) -> Value {
        let creds = self.admin.clone();
        self.kms_as(&creds, &format!("TrentService.{op}"), what, body)
            .await
    }

    async fn kms_as(
        &mut self,
        creds: &AccessKeyCredentials,
        target: &str,
        what: &str,
        body: Value,
    ) -> Value {
        let body = serde_json::to_vec(&body).unwrap();
        let mut headers = vec![("content-type", JSON), ("x-amz-target", target)];
        if let Some(t) = &creds.session_token {
            headers.push(("x-amz-security-token", t.as_str()));
        }
        let a = aws_door_post(self.addr, creds, "kms", self.now(), &headers, &body).await;
        self.t.record(
            &format!("{target}: {what}"),
            &String::from_utf8_lossy(&body),
            &render(&a),
        );
        serde_json::from_slice(&a.body).unwrap_or(Value::Null)
    }

    /// An STS Query-protocol request; the raw XML answer.
    async fn sts(&mut self, creds: &AccessKeyCredentials, what: &str, form: &str) -> String {
        let mut headers = vec![("content-type", FORM)];
        if let Some(t) = &creds.session_token {
            headers.push(("x-amz-security-token", t.as_str()));
        }
        let a = aws_door_post(
            self.addr,
            creds,
            "sts",
            self.now(),
            &headers,
            form.as_bytes(),
        )
        .await;
        let action = form.split('&').next().unwrap_or("");
        self.t
            .record(&format!("STS {action}: {what}"), form, &render(&a));
        String::from_utf8_lossy(&a.body).into_owned()
    }

    fn now(&self) -> i64 {
        self.clock.now_ms() / 1000
    }
}

/// An answer as the transcript shows it.
fn render(a: &common::HttpAnswer) -> String {
    let mut out = format!("status {}\n", a.status);
    for (k, v) in &a.headers {
        if k != "date" && k != "content-length" {
            out.push_str(&format!("{k}: {v}\n"));
        }
    }
    let body = String::from_utf8_lossy(&a.body);
    if let Ok(v) = serde_json::from_str::<Value>(&body) {
        if let Some(t) = v.get("__type").and_then(Value::as_str) {
            out.push_str(&format!("__type: {t}\n"));
        }
    }
    if let Some(code) = body
        .split_once("<Code>")
        .and_then(|(_, r)| r.split_once("</Code>"))
    {
        out.push_str(&format!("xml error code: {}\n", code.0));
    }
    out.push_str("body:\n");
    out.push_str(&body);
    out
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

fn key_id(created: &Value) -> String {
    s(&created["KeyMetadata"]["KeyId"])
}

/// Runs the AWS door's script against a daemon whose door listens on `addr`.
pub async fn run(addr: SocketAddr, clock: Arc<ManualClock>) -> String {
    let mut d = Door {
        addr,
        clock,
        admin: fixture_credentials("AKIAADMIN00000000001"),
        t: Transcript::new(Normaliser::new()),
    };
    let keys = keys(&mut d).await;
    aliases_and_tags(&mut d, &keys).await;
    symmetric(&mut d, &keys).await;
    asymmetric(&mut d, &keys).await;
    policies_and_grants(&mut d, &keys).await;
    rotation_and_import(&mut d, &keys).await;
    admin_and_sts(&mut d, &keys).await;
    d.t.finish()
}

/// The keys of the script.
struct Keys {
    sym: String,
    sym2: String,
    rsa: String,
    rsa_enc: String,
    ecc: String,
    ecc_ka: String,
    hmac: String,
    ext: String,
}

async fn keys(d: &mut Door) -> Keys {
    let sym = key_id(
        &d.kms(
            "CreateKey",
            "symmetric, with a description and tags",
            json!({"Description": "golden symmetric", "Tags": [{"TagKey": "team", "TagValue": "blue"}]}),
        )
        .await,
    );
    d.kms("ListKeys", "the one key of the account", json!({}))
        .await;
    d.kms("ListKeys", "Limit 0 (model check)", json!({"Limit": 0}))
        .await;
    d.kms(
        "CreateKey",
        "unknown KeySpec (model check)",
        json!({"KeySpec": "AES_512"}),
    )
    .await;
    d.kms(
        "CreateKey",
        "HMAC spec for ENCRYPT_DECRYPT",
        json!({"KeySpec": "HMAC_256", "KeyUsage": "ENCRYPT_DECRYPT"}),
    )
    .await;
    let sym2 = create(d, "second symmetric", json!({})).await;
    let rsa = create(
        d,
        "RSA_2048 SIGN_VERIFY",
        json!({"KeySpec": "RSA_2048", "KeyUsage": "SIGN_VERIFY"}),
    )
    .await;
    let rsa_enc = create(
        d,
        "RSA_2048 ENCRYPT_DECRYPT",
        json!({"KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT"}),
    )
    .await;
    let ecc = create(
        d,
        "ECC_NIST_P256 SIGN_VERIFY",
        json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}),
    )
    .await;
    let ecc_ka = create(
        d,
        "ECC_NIST_P256 KEY_AGREEMENT",
        json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "KEY_AGREEMENT"}),
    )
    .await;
    let hmac = create(
        d,
        "HMAC_256 GENERATE_VERIFY_MAC",
        json!({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}),
    )
    .await;
    let ext = create(d, "Origin EXTERNAL", json!({"Origin": "EXTERNAL"})).await;
    let k = Keys {
        sym,
        sym2,
        rsa,
        rsa_enc,
        ecc,
        ecc_ka,
        hmac,
        ext,
    };
    lifecycle(d, &k).await;
    k
}

async fn create(d: &mut Door, what: &str, body: Value) -> String {
    key_id(&d.kms("CreateKey", what, body).await)
}

async fn lifecycle(d: &mut Door, k: &Keys) {
    d.kms("DescribeKey", "by id", json!({"KeyId": k.sym})).await;
    d.kms("DescribeKey", "HMAC key", json!({"KeyId": k.hmac}))
        .await;
    d.kms("DescribeKey", "no such key", json!({"KeyId": MISSING_KEY}))
        .await;
    d.kms("DescribeKey", "KeyId missing (model check)", json!({}))
        .await;
    d.kms("DisableKey", "symmetric", json!({"KeyId": k.sym2}))
        .await;
    d.kms(
        "Encrypt",
        "under a disabled key",
        json!({"KeyId": k.sym2, "Plaintext": b64(b"hello")}),
    )
    .await;
    d.kms("DisableKey", "no such key", json!({"KeyId": MISSING_KEY}))
        .await;
    d.kms("EnableKey", "symmetric", json!({"KeyId": k.sym2}))
        .await;
    d.kms("EnableKey", "no such key", json!({"KeyId": MISSING_KEY}))
        .await;
    d.kms(
        "ScheduleKeyDeletion",
        "7 days",
        json!({"KeyId": k.sym2, "PendingWindowInDays": 7}),
    )
    .await;
    d.kms("DescribeKey", "pending deletion", json!({"KeyId": k.sym2}))
        .await;
    d.kms("EnableKey", "pending deletion", json!({"KeyId": k.sym2}))
        .await;
    d.kms(
        "ScheduleKeyDeletion",
        "3 days (model check)",
        json!({"KeyId": k.sym2, "PendingWindowInDays": 3}),
    )
    .await;
    d.kms(
        "CancelKeyDeletion",
        "pending deletion",
        json!({"KeyId": k.sym2}),
    )
    .await;
    d.kms(
        "CancelKeyDeletion",
        "not pending deletion",
        json!({"KeyId": k.sym2}),
    )
    .await;
    d.kms("EnableKey", "after cancelling", json!({"KeyId": k.sym2}))
        .await;
    d.kms(
        "UpdateKeyDescription",
        "symmetric",
        json!({"KeyId": k.sym, "Description": "golden, renamed"}),
    )
    .await;
    d.kms(
        "UpdateKeyDescription",
        "no such key",
        json!({"KeyId": MISSING_KEY, "Description": "x"}),
    )
    .await;
}

async fn aliases_and_tags(d: &mut Door, k: &Keys) {
    d.kms(
        "CreateAlias",
        "alias/golden to the symmetric key",
        json!({"AliasName": "alias/golden", "TargetKeyId": k.sym}),
    )
    .await;
    d.kms(
        "CreateAlias",
        "the same name again",
        json!({"AliasName": "alias/golden", "TargetKeyId": k.sym}),
    )
    .await;
    d.kms(
        "CreateAlias",
        "reserved aws/ prefix",
        json!({"AliasName": "alias/aws/golden", "TargetKeyId": k.sym}),
    )
    .await;
    d.kms(
        "CreateAlias",
        "alias/golden-2 to the second key",
        json!({"AliasName": "alias/golden-2", "TargetKeyId": k.sym2}),
    )
    .await;
    d.kms(
        "UpdateAlias",
        "alias/golden-2 to the first key",
        json!({"AliasName": "alias/golden-2", "TargetKeyId": k.sym}),
    )
    .await;
    d.kms(
        "UpdateAlias",
        "no such alias",
        json!({"AliasName": "alias/missing", "TargetKeyId": k.sym}),
    )
    .await;
    d.kms("DescribeKey", "by alias", json!({"KeyId": "alias/golden"}))
        .await;
    d.kms("ListAliases", "all", json!({})).await;
    d.kms("ListAliases", "of one key", json!({"KeyId": k.sym}))
        .await;
    d.kms("ListAliases", "no such key", json!({"KeyId": MISSING_KEY}))
        .await;
    d.kms(
        "DeleteAlias",
        "alias/golden-2",
        json!({"AliasName": "alias/golden-2"}),
    )
    .await;
    d.kms(
        "DeleteAlias",
        "no such alias",
        json!({"AliasName": "alias/golden-2"}),
    )
    .await;
    d.kms(
        "TagResource",
        "two tags",
        json!({"KeyId": k.sym, "Tags": [{"TagKey": "env", "TagValue": "test"}, {"TagKey": "cost", "TagValue": "42"}]}),
    )
    .await;
    d.kms(
        "TagResource",
        "reserved aws: tag key",
        json!({"KeyId": k.sym, "Tags": [{"TagKey": "aws:x", "TagValue": "y"}]}),
    )
    .await;
    d.kms(
        "UntagResource",
        "one tag",
        json!({"KeyId": k.sym, "TagKeys": ["cost"]}),
    )
    .await;
    d.kms(
        "UntagResource",
        "no such key",
        json!({"KeyId": MISSING_KEY, "TagKeys": ["cost"]}),
    )
    .await;
    d.kms("ListResourceTags", "symmetric", json!({"KeyId": k.sym}))
        .await;
    d.kms(
        "ListResourceTags",
        "first page",
        json!({"KeyId": k.sym, "Limit": 1}),
    )
    .await;
    d.kms(
        "ListResourceTags",
        "bad marker",
        json!({"KeyId": k.sym, "Marker": "%%%"}),
    )
    .await;
}

async fn symmetric(d: &mut Door, k: &Keys) {
    let ctx = json!({"purpose": "golden"});
    let e = d
        .kms(
            "Encrypt",
            "with an encryption context",
            json!({"KeyId": k.sym, "Plaintext": b64(b"golden plaintext"), "EncryptionContext": ctx}),
        )
        .await;
    let blob = s(&e["CiphertextBlob"]);
    d.kms(
        "Encrypt",
        "dry run",
        json!({"KeyId": k.sym, "Plaintext": b64(b"x"), "DryRun": true}),
    )
    .await;
    d.kms(
        "Encrypt",
        "empty plaintext (model check)",
        json!({"KeyId": k.sym, "Plaintext": ""}),
    )
    .await;
    d.kms(
        "Decrypt",
        "with the context",
        json!({"CiphertextBlob": blob, "EncryptionContext": ctx}),
    )
    .await;
    d.kms(
        "Decrypt",
        "without the context",
        json!({"CiphertextBlob": blob}),
    )
    .await;
    d.kms(
        "Decrypt",
        "not a ciphertext",
        json!({"CiphertextBlob": b64(&[1u8; 64])}),
    )
    .await;
    d.kms(
        "ReEncrypt",
        "to the second key",
        json!({"CiphertextBlob": blob, "SourceEncryptionContext": ctx, "DestinationKeyId": k.sym2}),
    )
    .await;
    d.kms(
        "ReEncrypt",
        "to a signing key",
        json!({"CiphertextBlob": blob, "SourceEncryptionContext": ctx, "DestinationKeyId": k.rsa}),
    )
    .await;
    let g = d
        .kms(
            "GenerateDataKey",
            "AES_256",
            json!({"KeyId": k.sym, "KeySpec": "AES_256"}),
        )
        .await;
    d.kms(
        "Decrypt",
        "the data key",
        json!({"CiphertextBlob": s(&g["CiphertextBlob"])}),
    )
    .await;
    d.kms(
        "GenerateDataKey",
        "both KeySpec and NumberOfBytes",
        json!({"KeyId": k.sym, "KeySpec": "AES_256", "NumberOfBytes": 32}),
    )
    .await;
    d.kms(
        "GenerateDataKeyWithoutPlaintext",
        "16 bytes",
        json!({"KeyId": "alias/golden", "NumberOfBytes": 16}),
    )
    .await;
    d.kms(
        "GenerateDataKeyWithoutPlaintext",
        "under an HMAC key",
        json!({"KeyId": k.hmac, "KeySpec": "AES_128"}),
    )
    .await;
    d.kms("GenerateRandom", "32 bytes", json!({"NumberOfBytes": 32}))
        .await;
    d.kms(
        "GenerateRandom",
        "2000 bytes (model check)",
        json!({"NumberOfBytes": 2000}),
    )
    .await;
    custom_key_stores(d).await;
    d.kms("GetKeyLastUsage", "after use", json!({"KeyId": k.sym}))
        .await;
    d.kms("GetKeyLastUsage", "never used", json!({"KeyId": k.ecc_ka}))
        .await;
    d.kms(
        "GetKeyLastUsage",
        "no such key",
        json!({"KeyId": MISSING_KEY}),
    )
    .await;
}

async fn asymmetric(d: &mut Door, k: &Keys) {
    let e = d
        .kms(
            "Encrypt",
            "RSAES_OAEP_SHA_256",
            json!({"KeyId": k.rsa_enc, "Plaintext": b64(b"to rsa"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
        )
        .await;
    d.kms(
        "Decrypt",
        "RSAES_OAEP_SHA_256",
        json!({"KeyId": k.rsa_enc, "CiphertextBlob": s(&e["CiphertextBlob"]), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
    )
    .await;
    let msg = b64(b"message to sign");
    let sig = d
        .kms(
            "Sign",
            "RSASSA_PSS_SHA_256",
            json!({"KeyId": k.rsa, "Message": msg, "SigningAlgorithm": "RSASSA_PSS_SHA_256"}),
        )
        .await;
    d.kms(
        "Sign",
        "ECDSA_SHA_256",
        json!({"KeyId": k.ecc, "Message": msg, "SigningAlgorithm": "ECDSA_SHA_256"}),
    )
    .await;
    d.kms(
        "Sign",
        "with a symmetric key",
        json!({"KeyId": k.sym, "Message": msg, "SigningAlgorithm": "RSASSA_PSS_SHA_256"}),
    )
    .await;
    d.kms(
        "Verify",
        "RSASSA_PSS_SHA_256",
        json!({"KeyId": k.rsa, "Message": msg, "Signature": s(&sig["Signature"]), "SigningAlgorithm": "RSASSA_PSS_SHA_256"}),
    )
    .await;
    d.kms(
        "Verify",
        "a wrong signature",
        json!({"KeyId": k.rsa, "Message": msg, "Signature": b64(&[7u8; 256]), "SigningAlgorithm": "RSASSA_PSS_SHA_256"}),
    )
    .await;
    d.kms("GetPublicKey", "RSA signing key", json!({"KeyId": k.rsa}))
        .await;
    let peer = d
        .kms("GetPublicKey", "ECC signing key", json!({"KeyId": k.ecc}))
        .await;
    d.kms(
        "GetPublicKey",
        "ECC key agreement key",
        json!({"KeyId": k.ecc_ka}),
    )
    .await;
    d.kms("GetPublicKey", "symmetric key", json!({"KeyId": k.sym}))
        .await;
    let peer = s(&peer["PublicKey"]);
    d.kms(
        "DeriveSharedSecret",
        "ECDH with a P-256 peer",
        json!({"KeyId": k.ecc_ka, "KeyAgreementAlgorithm": "ECDH", "PublicKey": peer}),
    )
    .await;
    d.kms(
        "DeriveSharedSecret",
        "with a signing key",
        json!({"KeyId": k.ecc, "KeyAgreementAlgorithm": "ECDH", "PublicKey": peer}),
    )
    .await;
    let mac = d
        .kms(
            "GenerateMac",
            "HMAC_SHA_256",
            json!({"KeyId": k.hmac, "Message": msg, "MacAlgorithm": "HMAC_SHA_256"}),
        )
        .await;
    d.kms(
        "GenerateMac",
        "HMAC_SHA_512 with an HMAC_256 key",
        json!({"KeyId": k.hmac, "Message": msg, "MacAlgorithm": "HMAC_SHA_512"}),
    )
    .await;
    d.kms(
        "VerifyMac",
        "HMAC_SHA_256",
        json!({"KeyId": k.hmac, "Message": msg, "Mac": s(&mac["Mac"]), "MacAlgorithm": "HMAC_SHA_256"}),
    )
    .await;
    d.kms(
        "VerifyMac",
        "a wrong MAC",
        json!({"KeyId": k.hmac, "Message": msg, "Mac": b64(&[9u8; 32]), "MacAlgorithm": "HMAC_SHA_256"}),
    )
    .await;
    d.kms(
        "GenerateDataKeyPair",
        "ECC_NIST_P256",
        json!({"KeyId": k.sym, "KeyPairSpec": "ECC_NIST_P256", "EncryptionContext": {"pair": "1"}}),
    )
    .await;
    d.kms(
        "GenerateDataKeyPair",
        "unknown KeyPairSpec (model check)",
        json!({"KeyId": k.sym, "KeyPairSpec": "RSA_1024"}),
    )
    .await;
    d.kms(
        "GenerateDataKeyPairWithoutPlaintext",
        "ECC_SECG_P256K1",
        json!({"KeyId": k.sym, "KeyPairSpec": "ECC_SECG_P256K1"}),
    )
    .await;
    d.kms(
        "GenerateDataKeyPairWithoutPlaintext",
        "under an RSA key",
        json!({"KeyId": k.rsa, "KeyPairSpec": "ECC_NIST_P256"}),
    )
    .await;
}

async fn policies_and_grants(d: &mut Door, k: &Keys) {
    let p = d
        .kms(
            "GetKeyPolicy",
            "default",
            json!({"KeyId": k.sym, "PolicyName": "default"}),
        )
        .await;
    d.kms(
        "GetKeyPolicy",
        "unknown policy name",
        json!({"KeyId": k.sym, "PolicyName": "other"}),
    )
    .await;
    d.kms(
        "PutKeyPolicy",
        "the same policy back",
        json!({"KeyId": k.sym, "PolicyName": "default", "Policy": s(&p["Policy"])}),
    )
    .await;
    d.kms(
        "PutKeyPolicy",
        "not JSON",
        json!({"KeyId": k.sym, "PolicyName": "default", "Policy": "{not json"}),
    )
    .await;
    d.kms("ListKeyPolicies", "symmetric", json!({"KeyId": k.sym}))
        .await;
    d.kms(
        "ListKeyPolicies",
        "no such key",
        json!({"KeyId": MISSING_KEY}),
    )
    .await;
    let user1 = format!("arn:aws:iam::{ACCOUNT}:user/user1");
    let user2 = format!("arn:aws:iam::{ACCOUNT}:user/user2");
    let g = d
        .kms(
            "CreateGrant",
            "Encrypt and Decrypt for user1, retirable by user2",
            json!({"KeyId": k.sym, "GranteePrincipal": user1, "RetiringPrincipal": user2,
                   "Operations": ["Encrypt", "Decrypt"], "Name": "golden-grant",
                   "Constraints": {"EncryptionContextSubset": {"purpose": "golden"}}}),
        )
        .await;
    d.kms(
        "CreateGrant",
        "unknown operation (model check)",
        json!({"KeyId": k.sym, "GranteePrincipal": user1, "Operations": ["Bogus"]}),
    )
    .await;
    let g2 = d
        .kms(
            "CreateGrant",
            "Sign for user1 on the RSA key",
            json!({"KeyId": k.rsa, "GranteePrincipal": user1, "Operations": ["Sign"]}),
        )
        .await;
    d.kms(
        "Encrypt",
        "with the grant token",
        json!({"KeyId": k.sym, "Plaintext": b64(b"granted"), "EncryptionContext": {"purpose": "golden"},
               "GrantTokens": [s(&g["GrantToken"])]}),
    )
    .await;
    d.kms(
        "ListGrants",
        "of the symmetric key",
        json!({"KeyId": k.sym}),
    )
    .await;
    d.kms("ListGrants", "no such key", json!({"KeyId": MISSING_KEY}))
        .await;
    d.kms(
        "ListRetirableGrants",
        "retirable by user2",
        json!({"RetiringPrincipal": user2}),
    )
    .await;
    d.kms(
        "ListRetirableGrants",
        "RetiringPrincipal missing (model check)",
        json!({}),
    )
    .await;
    d.kms(
        "RetireGrant",
        "by key and grant id",
        json!({"KeyId": k.sym, "GrantId": s(&g["GrantId"])}),
    )
    .await;
    d.kms(
        "RetireGrant",
        "no such grant",
        json!({"KeyId": k.sym, "GrantId": MISSING_GRANT}),
    )
    .await;
    d.kms(
        "RevokeGrant",
        "the Sign grant",
        json!({"KeyId": k.rsa, "GrantId": s(&g2["GrantId"])}),
    )
    .await;
    d.kms(
        "RevokeGrant",
        "a malformed grant id",
        json!({"KeyId": k.rsa, "GrantId": "not-a-grant"}),
    )
    .await;
}

async fn rotation_and_import(d: &mut Door, k: &Keys) {
    d.kms(
        "EnableKeyRotation",
        "every 90 days",
        json!({"KeyId": k.sym, "RotationPeriodInDays": 90}),
    )
    .await;
    d.kms(
        "EnableKeyRotation",
        "every 10 days (model check)",
        json!({"KeyId": k.sym, "RotationPeriodInDays": 10}),
    )
    .await;
    d.kms("GetKeyRotationStatus", "enabled", json!({"KeyId": k.sym}))
        .await;
    d.kms(
        "GetKeyRotationStatus",
        "no such key",
        json!({"KeyId": MISSING_KEY}),
    )
    .await;
    d.kms("RotateKeyOnDemand", "symmetric", json!({"KeyId": k.sym}))
        .await;
    d.kms("RotateKeyOnDemand", "RSA key", json!({"KeyId": k.rsa}))
        .await;
    d.kms(
        "ListKeyRotations",
        "after one rotation",
        json!({"KeyId": k.sym}),
    )
    .await;
    d.kms(
        "ListKeyRotations",
        "with the original material",
        json!({"KeyId": k.sym, "IncludeKeyMaterial": "ALL_KEY_MATERIAL"}),
    )
    .await;
    d.kms("ListKeyRotations", "RSA key", json!({"KeyId": k.rsa}))
        .await;
    d.kms("DisableKeyRotation", "symmetric", json!({"KeyId": k.sym}))
        .await;
    d.kms("DisableKeyRotation", "HMAC key", json!({"KeyId": k.hmac}))
        .await;
    let p = d
        .kms(
            "GetParametersForImport",
            "RSAES_OAEP_SHA_1, RSA_2048",
            json!({"KeyId": k.ext, "WrappingAlgorithm": "RSAES_OAEP_SHA_1", "WrappingKeySpec": "RSA_2048"}),
        )
        .await;
    d.kms(
        "GetParametersForImport",
        "a key of origin AWS_KMS",
        json!({"KeyId": k.sym, "WrappingAlgorithm": "RSAES_OAEP_SHA_1", "WrappingKeySpec": "RSA_2048"}),
    )
    .await;
    let spki = B64.decode(s(&p["PublicKey"])).unwrap();
    let wrapped = common::openssl_oaep_encrypt(&spki, "sha1", &[0x5a; 32]);
    d.t.random_blob(&wrapped);
    let token = s(&p["ImportToken"]);
    d.kms(
        "ImportKeyMaterial",
        "a bad import token",
        json!({"KeyId": k.ext, "ImportToken": b64(&[3u8; 40]), "EncryptedKeyMaterial": b64(&wrapped),
               "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}),
    )
    .await;
    d.kms(
        "ImportKeyMaterial",
        "32 bytes wrapped with openssl",
        json!({"KeyId": k.ext, "ImportToken": token, "EncryptedKeyMaterial": b64(&wrapped),
               "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}),
    )
    .await;
    d.kms(
        "Encrypt",
        "under the imported material",
        json!({"KeyId": k.ext, "Plaintext": b64(b"imported")}),
    )
    .await;
    d.kms("DescribeKey", "imported", json!({"KeyId": k.ext}))
        .await;
    d.kms(
        "DeleteImportedKeyMaterial",
        "imported",
        json!({"KeyId": k.ext}),
    )
    .await;
    d.kms(
        "DeleteImportedKeyMaterial",
        "symmetric",
        json!({"KeyId": k.sym}),
    )
    .await;
    d.kms("DescribeKey", "pending import", json!({"KeyId": k.ext}))
        .await;
}

async fn admin_and_sts(d: &mut Door, k: &Keys) {
    let admin = d.admin.clone();
    d.kms_as(
        &admin,
        "P11kmsAdmin.ExplainAccess",
        "user1 may Decrypt?",
        json!({"Principal": format!("arn:aws:iam::{ACCOUNT}:user/user1"), "Action": "kms:Decrypt",
               "KeyId": k.sym, "EncryptionContext": {"purpose": "golden"}}),
    )
    .await;
    d.kms_as(
        &admin,
        "P11kmsAdmin.ExplainAccess",
        "admin may Encrypt?",
        json!({"Principal": format!("arn:aws:iam::{ACCOUNT}:user/admin"), "Action": "kms:Encrypt",
               "KeyId": "alias/golden"}),
    )
    .await;
    d.kms_as(
        &admin,
        "P11kmsAdmin.ExplainAccess",
        "a bad SourceIp",
        json!({"Principal": format!("arn:aws:iam::{ACCOUNT}:user/user1"), "Action": "kms:Decrypt",
               "KeyId": k.sym, "SourceIp": "not-an-ip"}),
    )
    .await;
    d.kms_as(
        &admin,
        "TrentService.NoSuchOperation",
        "unknown operation",
        json!({}),
    )
    .await;
    d.sts(
        &admin,
        "as admin",
        "Action=GetCallerIdentity&Version=2011-06-15",
    )
    .await;
    let mut wrong = admin.clone();
    wrong.secret_access_key =
        zeroize::Zeroizing::new("not-the-secret-access-key-0000000000000".into());
    d.sts(
        &wrong,
        "a wrong secret",
        "Action=GetCallerIdentity&Version=2011-06-15",
    )
    .await;
    let bob = fixture_credentials("AKIABOB0000000000001");
    let role = format!("arn:aws:iam::{ACCOUNT}:role/Engineering");
    let form = |role: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRole")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", role)
            .append_pair("RoleSessionName", "golden")
            .append_pair("DurationSeconds", "900")
            .finish()
    };
    let xml = d.sts(&bob, "bob assumes Engineering", &form(&role)).await;
    d.sts(
        &bob,
        "no such role",
        &form(&format!("arn:aws:iam::{ACCOUNT}:role/NoSuchRole")),
    )
    .await;
    d.sts(
        &bob,
        "unknown action",
        "Action=GetSessionToken&Version=2011-06-15",
    )
    .await;
    // The session's credentials call KMS and STS.
    let field = |name: &str| {
        xml.split_once(&format!("<{name}>"))
            .and_then(|(_, r)| r.split_once(&format!("</{name}>")))
            .map(|(v, _)| v.to_string())
            .unwrap_or_else(|| panic!("no {name} in {xml}"))
    };
    let session = AccessKeyCredentials {
        access_key_id: field("AccessKeyId"),
        secret_access_key: zeroize::Zeroizing::new(field("SecretAccessKey")),
        session_token: Some(zeroize::Zeroizing::new(field("SessionToken"))),
    };
    d.sts(
        &session,
        "as the assumed role",
        "Action=GetCallerIdentity&Version=2011-06-15",
    )
    .await;
    d.kms_as(
        &session,
        "TrentService.DescribeKey",
        "as the assumed role",
        json!({"KeyId": k.sym}),
    )
    .await;
}

/// The custom key store operations on a daemon with no `[[hsm.cluster]]`: their answers and
/// errors (the life cycle on real clusters is in tests/custom_key_stores.rs).
async fn custom_key_stores(d: &mut Door) {
    let store = json!({"CustomKeyStoreId": "cks-1234567890abcdef0"});
    d.kms("DescribeCustomKeyStores", "none", json!({})).await;
    let create = |cluster: &str, password: &str| {
        json!({
            "CustomKeyStoreName": "golden",
            "CloudHsmClusterId": cluster,
            "TrustAnchorCertificate": "-----BEGIN CERTIFICATE-----",
            "KeyStorePassword": password,
        })
    };
    let unconfigured = create("cluster-abcdefghijk", "golden-password");
    d.kms(
        "CreateCustomKeyStore",
        "a cluster that is not configured",
        unconfigured,
    )
    .await;
    let short = create("cluster-abcdefghijk", "abc");
    d.kms(
        "CreateCustomKeyStore",
        "a 3-character password (model check)",
        short,
    )
    .await;
    for op in [
        "ConnectCustomKeyStore",
        "DisconnectCustomKeyStore",
        "DeleteCustomKeyStore",
        "UpdateCustomKeyStore",
    ] {
        d.kms(op, "unknown store", store.clone()).await;
    }
    let in_store = json!({"Origin": "AWS_CLOUDHSM", "CustomKeyStoreId": "cks-1234567890abcdef0"});
    d.kms("CreateKey", "in an unknown custom key store", in_store)
        .await;
}
