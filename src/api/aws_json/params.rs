//! What the audit trail records of each AWS-door request, from its JSON body (KMS) or form
//! (STS): CloudTrail's `requestParameters`, with CloudTrail's member names (camelCase).
//!
//! Each operation lists the members that are safe to log; everything else is dropped. So
//! plaintext, ciphertext blobs, data keys, grant tokens, secrets and session tokens are never
//! included, whatever the caller sends (grant tokens are logged as a count, a RetireGrant token
//! as `"(given)"`).

use serde_json::{Map, Value};

/// Members of each operation that may be logged, by AWS (PascalCase) name.
fn loggable(operation: &str) -> &'static [&'static str] {
    match operation {
        "CreateKey" => &[
            "Description",
            "KeyUsage",
            "KeySpec",
            "CustomerMasterKeySpec",
            "Origin",
            "BypassPolicyLockoutSafetyCheck",
            "Policy",
            "Tags",
            "MultiRegion",
        ],
        "DescribeKey" | "EnableKey" | "DisableKey" | "CancelKeyDeletion" | "ListKeyPolicies" => {
            &["KeyId", "GrantTokens"]
        }
        "ListKeys" => &["Limit", "Marker"],
        "ScheduleKeyDeletion" => &["KeyId", "PendingWindowInDays"],
        "UpdateKeyDescription" => &["KeyId", "Description"],
        "GetKeyLastUsage" => &["KeyId"],
        "TagResource" => &["KeyId", "Tags"],
        "UntagResource" => &["KeyId", "TagKeys"],
        "ListResourceTags" => &["KeyId", "Limit", "Marker"],
        "CreateAlias" | "UpdateAlias" => &["AliasName", "TargetKeyId"],
        "DeleteAlias" => &["AliasName"],
        "ListAliases" => &["KeyId", "Limit", "Marker"],
        "Encrypt" => &[
            "KeyId",
            "EncryptionContext",
            "EncryptionAlgorithm",
            "GrantTokens",
        ],
        "Decrypt" => &[
            "KeyId",
            "EncryptionContext",
            "EncryptionAlgorithm",
            "GrantTokens",
        ],
        "ReEncrypt" => &[
            "SourceKeyId",
            "DestinationKeyId",
            "SourceEncryptionContext",
            "DestinationEncryptionContext",
            "SourceEncryptionAlgorithm",
            "DestinationEncryptionAlgorithm",
            "GrantTokens",
        ],
        "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => &[
            "KeyId",
            "EncryptionContext",
            "KeySpec",
            "NumberOfBytes",
            "GrantTokens",
        ],
        "GenerateRandom" => &["NumberOfBytes", "CustomKeyStoreId"],
        // Asymmetric keys, signatures and MACs: never Message, Signature or Mac.
        "Sign" | "Verify" => &["KeyId", "MessageType", "SigningAlgorithm", "GrantTokens"],
        "GetPublicKey" => &["KeyId", "GrantTokens"],
        // Never the PublicKey of the peer (not secret, but large) nor the SharedSecret.
        "DeriveSharedSecret" => &["KeyId", "KeyAgreementAlgorithm", "GrantTokens"],
        "GenerateMac" | "VerifyMac" => &["KeyId", "MacAlgorithm", "GrantTokens"],
        "GenerateDataKeyPair" | "GenerateDataKeyPairWithoutPlaintext" => {
            &["KeyId", "EncryptionContext", "KeyPairSpec", "GrantTokens"]
        }
        "GetKeyPolicy" => &["KeyId", "PolicyName"],
        "PutKeyPolicy" => &[
            "KeyId",
            "PolicyName",
            "Policy",
            "BypassPolicyLockoutSafetyCheck",
        ],
        "CreateGrant" => &[
            "KeyId",
            "GranteePrincipal",
            "RetiringPrincipal",
            "Operations",
            "Constraints",
            "Name",
            "GrantTokens",
        ],
        "ListGrants" => &["KeyId", "GrantId", "GranteePrincipal", "Limit", "Marker"],
        "ListRetirableGrants" => &["RetiringPrincipal", "Limit", "Marker"],
        "RetireGrant" => &["KeyId", "GrantId", "GrantToken"],
        "RevokeGrant" => &["KeyId", "GrantId"],
        // Rotation and import: never the ImportToken, EncryptedKeyMaterial or public key.
        "EnableKeyRotation" => &["KeyId", "RotationPeriodInDays"],
        "DisableKeyRotation" | "GetKeyRotationStatus" | "RotateKeyOnDemand" => &["KeyId"],
        "ListKeyRotations" => &["KeyId", "Limit", "Marker", "IncludeKeyMaterial"],
        "GetParametersForImport" => &["KeyId", "WrappingAlgorithm", "WrappingKeySpec"],
        "ImportKeyMaterial" => &[
            "KeyId",
            "ValidTo",
            "ExpirationModel",
            "ImportType",
            "KeyMaterialId",
        ],
        "DeleteImportedKeyMaterial" => &["KeyId", "KeyMaterialId"],
        "ExplainAccess" => &[
            "Principal",
            "Action",
            "KeyId",
            "EncryptionContext",
            "SourceIp",
        ],
        "AssumeRole" => &[
            "RoleArn",
            "RoleSessionName",
            "DurationSeconds",
            "Policy",
            "Tags",
        ],
        _ => &[],
    }
}

/// `KeyId` -> `keyId`.
fn camel(name: &str) -> String {
    let mut c = name.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Renames the keys of an object (one level) to camelCase; leaves values alone.
fn camel_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (camel(k), v.clone())).collect()),
        other => other.clone(),
    }
}

/// The CloudTrail `requestParameters` of a KMS request body (`Null` when the body is not an
/// object).
pub fn request_parameters(operation: &str, body: &Value) -> Value {
    let Value::Object(m) = body else {
        return Value::Null;
    };
    let mut out = Map::new();
    for &member in loggable(operation) {
        let Some(v) = m.get(member).filter(|v| !v.is_null()) else {
            continue;
        };
        let logged = match member {
            // Capabilities: log that they were used, never their value.
            "GrantTokens" => match v {
                Value::Array(a) if a.is_empty() => continue,
                Value::Array(a) => Value::from(a.len()),
                _ => continue,
            },
            "GrantToken" => Value::from("(given)"),
            // Tags: [{TagKey, TagValue}] -> [{tagKey, tagValue}].
            "Tags" => match v {
                Value::Array(a) => Value::Array(a.iter().map(camel_keys).collect()),
                _ => continue,
            },
            // Constraint names renamed; the encryption-context maps inside keep their keys.
            "Constraints" => camel_keys(v),
            _ => v.clone(),
        };
        out.insert(camel(member), logged);
    }
    // CloudTrail logs DryRun as a request parameter of the operations that take it.
    if crate::core::DRY_RUN_OPERATIONS.contains(&operation) {
        if let Some(v @ Value::Bool(_)) = m.get("DryRun") {
            out.insert("dryRun".into(), v.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_never_logged() {
        let body = json!({
            "KeyId": "alias/a",
            "Plaintext": "VE9QLVNFQ1JFVA==",
            "EncryptionContext": {"Dept": "hr"},
            "GrantTokens": ["CAPABILITY-TOKEN"],
        });
        let p = request_parameters("Encrypt", &body);
        assert_eq!(
            p,
            json!({"keyId": "alias/a", "encryptionContext": {"Dept": "hr"}, "grantTokens": 1})
        );
        let p = request_parameters("Decrypt", &json!({"CiphertextBlob": "AAAA"})).to_string();
        assert!(!p.contains("AAAA"), "{p}");
        let p = request_parameters("RetireGrant", &json!({"GrantToken": "CAPABILITY"}));
        assert_eq!(p, json!({"grantToken": "(given)"}));
        let p = request_parameters("Unknown", &json!({"Plaintext": "x"}));
        assert_eq!(p, json!({}));
        let p = request_parameters(
            "CreateGrant",
            &json!({"KeyId": "k", "Constraints": {"EncryptionContextSubset": {"Dept": "IT"}}}),
        );
        assert_eq!(
            p,
            json!({"keyId": "k", "constraints": {"encryptionContextSubset": {"Dept": "IT"}}})
        );
    }

    #[test]
    fn dry_run_is_logged_where_the_operation_takes_it() {
        let p = request_parameters("Decrypt", &json!({"KeyId": "k", "DryRun": true}));
        assert_eq!(p, json!({"keyId": "k", "dryRun": true}));
        let p = request_parameters("RevokeGrant", &json!({"GrantId": "g", "DryRun": false}));
        assert_eq!(p, json!({"grantId": "g", "dryRun": false}));
        // Not a member of DescribeKey: not logged.
        let p = request_parameters("DescribeKey", &json!({"KeyId": "k", "DryRun": true}));
        assert_eq!(p, json!({"keyId": "k"}));
    }
}
