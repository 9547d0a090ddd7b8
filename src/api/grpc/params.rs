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

fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .map(|t| {
            json!(crate::core::authz::iso8601(
                t.seconds * 1000 + i64::from(t.nanos / 1_000_000)
            ))
        })
        .unwrap_or(Value::Null)
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
params!(pb::CreateGrantRequest, |r| json!({
    "keyId": r.key_id,
    "granteePrincipal": r.grantee_principal,
    "retiringPrincipal": opt(&r.retiring_principal),
    "operations": r.operations,
    "constraints": r.constraints.as_ref().map(|c| json!({
        "encryptionContextSubset": c.encryption_context_subset.as_ref().map(|m| &m.pairs),
        "encryptionContextEquals": c.encryption_context_equals.as_ref().map(|m| &m.pairs),
    })),
    "name": opt(&r.name),
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::ListGrantsRequest, |r| json!({
    "keyId": r.key_id,
    "grantId": opt(&r.grant_id),
    "granteePrincipal": opt(&r.grantee_principal),
    "limit": r.limit,
}));
params!(pb::ListRetirableGrantsRequest, |r| json!({
    "retiringPrincipal": r.retiring_principal,
    "limit": r.limit,
}));
// The grant token is a capability: log that one was used, never its value.
params!(pb::RetireGrantRequest, |r| json!({
    "keyId": opt(&r.key_id),
    "grantId": opt(&r.grant_id),
    "grantToken": (!r.grant_token.is_empty()).then_some("(given)"),
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::RevokeGrantRequest, |r| json!({
    "keyId": r.key_id,
    "grantId": r.grant_id,
    "dryRun": r.dry_run.then_some(true),
}));
params!(pb::AssumeRoleRequest, |r| json!({
    "roleArn": r.role_arn,
    "roleSessionName": r.role_session_name,
    "durationSeconds": r.duration_seconds,
    "policy": opt(&r.policy),
    "tags": r.tags.iter().map(|t| json!({"key": t.tag_key, "value": t.tag_value})).collect::<Vec<_>>(),
}));
params!(pb::GetCallerIdentityRequest, |_r| json!({}));
params!(pb::ExplainAccessRequest, |r| json!({
    "principal": r.principal,
    "action": r.action,
    "keyId": r.key_id,
    "encryptionContext": r.encryption_context,
    "sourceIp": opt(&r.source_ip),
}));

impl AuditResponse for pb::CreateGrantResponse {
    fn audit_response(&self) -> Value {
        json!({"grantId": self.grant_id})
    }
}
// Credentials: the access key id and expiry only; never the secret or the session token.
impl AuditResponse for pb::AssumeRoleResponse {
    fn audit_response(&self) -> Value {
        json!({
            "credentials": self.credentials.as_ref().map(|c| json!({
                "accessKeyId": c.access_key_id,
                "expiration": ts(&c.expiration),
            })),
            "assumedRoleUser": self.assumed_role_user.as_ref().map(|u| json!({
                "assumedRoleId": u.assumed_role_id,
                "arn": u.arn,
            })),
        })
    }
}
// Rotation and import of key material. Never the import token, the wrapped key material or
// the public key.
params!(pb::EnableKeyRotationRequest, |r| json!({
    "keyId": r.key_id,
    "rotationPeriodInDays": r.rotation_period_in_days,
}));
params!(
    pb::DisableKeyRotationRequest,
    |r| json!({"keyId": r.key_id})
);
params!(
    pb::GetKeyRotationStatusRequest,
    |r| json!({"keyId": r.key_id})
);
params!(pb::RotateKeyOnDemandRequest, |r| json!({"keyId": r.key_id}));
params!(pb::ListKeyRotationsRequest, |r| json!({
    "keyId": r.key_id,
    "limit": r.limit,
    "marker": opt(&r.marker),
    "includeKeyMaterial": opt(&r.include_key_material),
}));
params!(pb::GetParametersForImportRequest, |r| json!({
    "keyId": r.key_id,
    "wrappingAlgorithm": r.wrapping_algorithm,
    "wrappingKeySpec": r.wrapping_key_spec,
}));
params!(pb::ImportKeyMaterialRequest, |r| json!({
    "keyId": r.key_id,
    "validTo": ts(&r.valid_to),
    "expirationModel": opt(&r.expiration_model),
    "importType": opt(&r.import_type),
    "keyMaterialId": opt(&r.key_material_id),
}));
params!(pb::DeleteImportedKeyMaterialRequest, |r| json!({
    "keyId": r.key_id,
    "keyMaterialId": opt(&r.key_material_id),
}));
impl AuditResponse for pb::RotateKeyOnDemandResponse {
    fn audit_response(&self) -> Value {
        json!({"keyId": self.key_id})
    }
}
impl AuditResponse for pb::ImportKeyMaterialResponse {
    fn audit_response(&self) -> Value {
        json!({"keyId": self.key_id, "keyMaterialId": self.key_material_id})
    }
}
impl AuditResponse for pb::DeleteImportedKeyMaterialResponse {
    fn audit_response(&self) -> Value {
        json!({"keyId": self.key_id, "keyMaterialId": self.key_material_id})
    }
}
impl AuditResponse for pb::GetParametersForImportResponse {
    fn audit_response(&self) -> Value {
        json!({"keyId": self.key_id, "parametersValidTo": ts(&self.parameters_valid_to)})
    }
}

impl AuditResponse for pb::ExplainAccessResponse {
    fn audit_response(&self) -> Value {
        json!({"decision": self.decision, "reason": self.reason})
    }
}

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
    pb::ListGrantsResponse,
    pb::RetireGrantResponse,
    pb::RevokeGrantResponse,
    pb::GetCallerIdentityResponse,
    pb::SignResponse,
    pb::VerifyResponse,
    pb::GetPublicKeyResponse,
    pb::GenerateMacResponse,
    pb::VerifyMacResponse,
    pb::DeriveSharedSecretResponse,
    pb::GenerateDataKeyPairResponse,
    pb::GenerateDataKeyPairWithoutPlaintextResponse,
    pb::EnableKeyRotationResponse,
    pb::DisableKeyRotationResponse,
    pb::GetKeyRotationStatusResponse,
    pb::ListKeyRotationsResponse,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_secrets_are_never_in_params() {
        let r = pb::ImportKeyMaterialRequest {
            key_id: "k".into(),
            import_token: b"IMPORT-TOKEN-BYTES".to_vec(),
            encrypted_key_material: b"WRAPPED-MATERIAL".to_vec(),
            expiration_model: "KEY_MATERIAL_DOES_NOT_EXPIRE".into(),
            ..Default::default()
        };
        let p = r.audit_params().to_string();
        assert!(!p.contains("IMPORT-TOKEN") && !p.contains("WRAPPED"), "{p}");
        assert!(!p.contains("SU1QT1JU") && !p.contains("V1JBUFBF"), "{p}");
        let out = pb::GetParametersForImportResponse {
            key_id: "k".into(),
            import_token: b"IMPORT-TOKEN-BYTES".to_vec(),
            public_key: b"PUBLIC".to_vec(),
            parameters_valid_to: None,
        };
        let e = out.audit_response().to_string();
        assert!(!e.contains("IMPORT") && !e.contains("PUBLIC"), "{e}");
    }

    #[test]
    fn dry_run_is_logged_when_set() {
        let d = pb::DecryptRequest {
            dry_run: true,
            ..Default::default()
        };
        assert_eq!(d.audit_params()["dryRun"], json!(true));
        let r = pb::RevokeGrantRequest::default();
        assert!(r.audit_params().get("dryRun").is_none());
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
        let r = pb::RetireGrantRequest {
            grant_token: "CAPABILITY-TOKEN".into(),
            ..Default::default()
        };
        assert!(!r.audit_params().to_string().contains("CAPABILITY"));
        let a = pb::AssumeRoleResponse {
            credentials: Some(pb::Credentials {
                access_key_id: "ASIAX".into(),
                secret_access_key: "SECRET-KEY-VALUE".into(),
                session_token: "SESSION-TOKEN-VALUE".into(),
                expiration: None,
            }),
            assumed_role_user: None,
        };
        let s = a.audit_response().to_string();
        assert!(s.contains("ASIAX") && !s.contains("SECRET-KEY") && !s.contains("SESSION-TOKEN"));
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
