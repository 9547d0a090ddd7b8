//! What the audit trail records of each gRPC request and response, with CloudTrail's member
//! names (camelCase). Plaintext, data keys, ciphertext blobs, secrets, session tokens and grant
//! tokens are never included: each message lists what is safe, field by field.

use serde_json::{json, Value};

use crate::pb;

/// The CloudTrail `requestParameters` of a request message.
pub trait AuditParams {
    /// Request parameters, without secrets.
    fn audit_params(&self) -> Value;
}

/// The CloudTrail `responseElements` of a response message (`null` for most operations).
pub trait AuditResponse {
    /// Response elements, without secrets.
    fn audit_response(&self) -> Value {
        Value::Null
    }
}

fn opt(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

/// Removes nulls so events carry only what the request had.
fn compact(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

macro_rules! params {
    ($t:ty, |$r:ident| $body:expr) => {
        impl AuditParams for $t {
            fn audit_params(&self) -> Value {
                let $r = self;
                compact($body)
            }
        }
    };
}

params!(pb::CreateAliasRequest, |r| json!({
    "aliasName": r.alias_name,
    "targetKeyId": r.target_key_id,
}));
params!(pb::UpdateAliasRequest, |r| json!({
    "aliasName": r.alias_name,
    "targetKeyId": r.target_key_id,
}));
params!(
    pb::DeleteAliasRequest,
    |r| json!({"aliasName": r.alias_name})
);
params!(pb::ListAliasesRequest, |r| json!({
    "keyId": opt(&r.key_id),
    "limit": r.limit,
    "marker": opt(&r.marker),
}));
params!(pb::EncryptRequest, |r| json!({
    "keyId": r.key_id,
    "encryptionContext": r.encryption_context,
    "encryptionAlgorithm": opt(&r.encryption_algorithm).as_str().map(str::to_string).unwrap_or_else(|| "SYMMETRIC_DEFAULT".into()),
    "grantTokens": (!r.grant_tokens.is_empty()).then_some(r.grant_tokens.len()),
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::DecryptRequest, |r| json!({
    "keyId": opt(&r.key_id),
    "encryptionContext": r.encryption_context,
    "encryptionAlgorithm": opt(&r.encryption_algorithm).as_str().map(str::to_string).unwrap_or_else(|| "SYMMETRIC_DEFAULT".into()),
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::ReEncryptRequest, |r| json!({
    "sourceKeyId": opt(&r.source_key_id),
    "destinationKeyId": r.destination_key_id,
    "sourceEncryptionContext": r.source_encryption_context,
    "destinationEncryptionContext": r.destination_encryption_context,
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::GenerateDataKeyRequest, |r| json!({
    "keyId": r.key_id,
    "encryptionContext": r.encryption_context,
    "keySpec": opt(&r.key_spec),
    "numberOfBytes": r.number_of_bytes,
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::GenerateDataKeyWithoutPlaintextRequest, |r| json!({
    "keyId": r.key_id,
    "encryptionContext": r.encryption_context,
    "keySpec": opt(&r.key_spec),
    "numberOfBytes": r.number_of_bytes,
    "dryRun": r.dry_run.then_some(true),
}));
params!(
    pb::GenerateRandomRequest,
    |r| json!({"numberOfBytes": r.number_of_bytes})
);
// Asymmetric keys, signatures and MACs: messages, signatures, MACs and private keys are
// never logged.
params!(pb::SignRequest, |r| json!({
    "keyId": r.key_id,
    "messageType": if r.message_type.is_empty() { "RAW" } else { r.message_type.as_str() },
    "signingAlgorithm": opt(&r.signing_algorithm),
    "grantTokens": (!r.grant_tokens.is_empty()).then_some(r.grant_tokens.len()),
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::VerifyRequest, |r| json!({
    "keyId": r.key_id,
    "messageType": if r.message_type.is_empty() { "RAW" } else { r.message_type.as_str() },
    "signingAlgorithm": opt(&r.signing_algorithm),
    "grantTokens": (!r.grant_tokens.is_empty()).then_some(r.grant_tokens.len()),
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::GetPublicKeyRequest, |r| json!({
    "keyId": r.key_id,
    "grantTokens": (!r.grant_tokens.is_empty()).then_some(r.grant_tokens.len()),
}));
params!(pb::DeriveSharedSecretRequest, |r| json!({
    "keyId": r.key_id,
    "keyAgreementAlgorithm": opt(&r.key_agreement_algorithm),
    "grantTokens": (!r.grant_tokens.is_empty()).then_some(r.grant_tokens.len()),
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::GenerateMacRequest, |r| json!({
    "keyId": r.key_id,
    "macAlgorithm": opt(&r.mac_algorithm),
    "grantTokens": (!r.grant_tokens.is_empty()).then_some(r.grant_tokens.len()),
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::VerifyMacRequest, |r| json!({
    "keyId": r.key_id,
    "macAlgorithm": opt(&r.mac_algorithm),
    "grantTokens": (!r.grant_tokens.is_empty()).then_some(r.grant_tokens.len()),
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::GenerateDataKeyPairRequest, |r| json!({
    "keyId": r.key_id,
    "encryptionContext": r.encryption_context,
    "keyPairSpec": opt(&r.key_pair_spec),
    "grantTokens": (!r.grant_tokens.is_empty()).then_some(r.grant_tokens.len()),
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::GenerateDataKeyPairWithoutPlaintextRequest, |r| json!({
    "keyId": r.key_id,
    "encryptionContext": r.encryption_context,
    "keyPairSpec": opt(&r.key_pair_spec),
    "grantTokens": (!r.grant_tokens.is_empty()).then_some(r.grant_tokens.len()),
    "dryRun": r.dry_run.then_some(true),
}));
// Rotation and import of key material. Never the import token, the wrapped key material or
// the public key.

macro_rules! null_response {
    ($($t:ty),* $(,)?) => { $(impl AuditResponse for $t {})* };
}

null_response!(
    pb::CreateAliasResponse,
    pb::UpdateAliasResponse,
    pb::DeleteAliasResponse,
    pb::ListAliasesResponse,
    pb::EncryptResponse,
    pb::DecryptResponse,
    pb::ReEncryptResponse,
    pb::GenerateDataKeyResponse,
    pb::GenerateDataKeyWithoutPlaintextResponse,
    pb::GenerateRandomResponse,
    pb::SignResponse,
    pb::VerifyResponse,
    pb::GetPublicKeyResponse,
    pb::GenerateMacResponse,
    pb::VerifyMacResponse,
    pb::DeriveSharedSecretResponse,
    pb::GenerateDataKeyPairResponse,
    pb::GenerateDataKeyPairWithoutPlaintextResponse,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_is_logged_when_set() {
        let d = pb::DecryptRequest {
            dry_run: true,
            ..Default::default()
        };
        assert_eq!(d.audit_params()["dryRun"], json!(true));
    }

    #[test]
    fn secrets_are_never_in_params() {
        let e = pb::EncryptRequest {
            key_id: "alias/a".into(),
            plaintext: b"TOP-SECRET-PLAINTEXT".to_vec(),
            encryption_context: [("dept".to_string(), "hr".to_string())].into(),
            ..Default::default()
        };
        let p = e.audit_params().to_string();
        assert!(!p.contains("TOP-SECRET"));
        assert!(p.contains("\"encryptionContext\":{\"dept\":\"hr\"}"), "{p}");
        let sign = pb::SignRequest {
            key_id: "k".into(),
            message: b"SECRET-MESSAGE".to_vec(),
            signing_algorithm: "ECDSA_SHA_256".into(),
            ..Default::default()
        };
        let p = sign.audit_params().to_string();
        assert!(
            !p.contains("SECRET") && p.contains("\"messageType\":\"RAW\""),
            "{p}"
        );
        let v = pb::VerifyMacRequest {
            message: b"SECRET-MESSAGE".to_vec(),
            mac: b"SECRET-MAC".to_vec(),
            ..Default::default()
        };
        assert!(!v.audit_params().to_string().contains("SECRET"));
    }
}
