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

fn tags(t: &[pb::Tag]) -> Value {
    Value::Array(
        t.iter()
            .map(|t| json!({"tagKey": t.tag_key, "tagValue": t.tag_value}))
            .collect(),
    )
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

params!(pb::CreateKeyRequest, |r| json!({
    "description": r.description,
    "keyUsage": opt(&r.key_usage),
    "keySpec": opt(&r.key_spec),
    "customerMasterKeySpec": opt(&r.customer_master_key_spec),
    "origin": opt(&r.origin),
    "bypassPolicyLockoutSafetyCheck": r.bypass_policy_lockout_safety_check,
    "policy": opt(&r.policy),
    "tags": tags(&r.tags),
    "multiRegion": r.multi_region,
}));
params!(pb::DescribeKeyRequest, |r| json!({"keyId": r.key_id}));
params!(pb::GetKeyLastUsageRequest, |r| json!({"keyId": r.key_id}));
params!(
    pb::ListKeysRequest,
    |r| json!({"limit": r.limit, "marker": opt(&r.marker)})
);
params!(pb::EnableKeyRequest, |r| json!({"keyId": r.key_id}));
params!(pb::DisableKeyRequest, |r| json!({"keyId": r.key_id}));
params!(pb::ScheduleKeyDeletionRequest, |r| json!({
    "keyId": r.key_id,
    "pendingWindowInDays": r.pending_window_in_days,
}));
params!(pb::CancelKeyDeletionRequest, |r| json!({"keyId": r.key_id}));
params!(pb::UpdateKeyDescriptionRequest, |r| json!({
    "keyId": r.key_id,
    "description": r.description,
}));
params!(
    pb::TagResourceRequest,
    |r| json!({"keyId": r.key_id, "tags": tags(&r.tags)})
);
params!(
    pb::UntagResourceRequest,
    |r| json!({"keyId": r.key_id, "tagKeys": r.tag_keys})
);
params!(pb::ListResourceTagsRequest, |r| json!({
    "keyId": r.key_id,
    "limit": r.limit,
    "marker": opt(&r.marker),
}));
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
params!(pb::GetKeyPolicyRequest, |r| json!({
    "keyId": r.key_id,
    "policyName": if r.policy_name.is_empty() { "default" } else { r.policy_name.as_str() },
}));
params!(pb::PutKeyPolicyRequest, |r| json!({
    "keyId": r.key_id,
    "policyName": if r.policy_name.is_empty() { "default" } else { r.policy_name.as_str() },
    "policy": r.policy,
    "bypassPolicyLockoutSafetyCheck": r.bypass_policy_lockout_safety_check,
}));
params!(pb::ListKeyPoliciesRequest, |r| json!({"keyId": r.key_id}));

fn metadata(m: &Option<pb::KeyMetadata>) -> Value {
    m.as_ref()
        .map(|m| {
            json!({"keyMetadata": {
                "keyId": m.key_id,
                "arn": m.arn,
                "keyState": m.key_state,
                "keySpec": m.key_spec,
                "keyUsage": m.key_usage,
                "origin": m.origin,
            }})
        })
        .unwrap_or(Value::Null)
}

impl AuditResponse for pb::CreateKeyResponse {
    fn audit_response(&self) -> Value {
        metadata(&self.key_metadata)
    }
}
impl AuditResponse for pb::ScheduleKeyDeletionResponse {
    fn audit_response(&self) -> Value {
        json!({
            "keyId": self.key_id,
            "deletionDate": ts(&self.deletion_date),
            "keyState": self.key_state,
            "pendingWindowInDays": self.pending_window_in_days,
        })
    }
}
impl AuditResponse for pb::CancelKeyDeletionResponse {
    fn audit_response(&self) -> Value {
        json!({"keyId": self.key_id})
    }
}
// Rotation and import of key material. Never the import token, the wrapped key material or
// the public key.

macro_rules! null_response {
    ($($t:ty),* $(,)?) => { $(impl AuditResponse for $t {})* };
}

null_response!(
    pb::DescribeKeyResponse,
    pb::GetKeyLastUsageResponse,
    pb::ListKeysResponse,
    pb::EnableKeyResponse,
    pb::DisableKeyResponse,
    pb::UpdateKeyDescriptionResponse,
    pb::TagResourceResponse,
    pb::UntagResourceResponse,
    pb::ListResourceTagsResponse,
    pb::CreateAliasResponse,
    pb::UpdateAliasResponse,
    pb::DeleteAliasResponse,
    pb::ListAliasesResponse,
    pb::GetKeyPolicyResponse,
    pb::PutKeyPolicyResponse,
    pb::ListKeyPoliciesResponse,
);
