//! Keys on the AWS door: CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey,
//! ScheduleKeyDeletion, CancelKeyDeletion, UpdateKeyDescription, GetKeyLastUsage.
//!
//! KeySpec, KeyUsage and Origin are read into their enums here: the model check has already
//! refused spellings that are not AWS values.

use serde_json::{json, Value};

use super::tags::{tags_in, TagIn};
use super::{key_last_usage_body, metadata, parse, scheduled_deletion, FromJson, ToJson};
use crate::core::keys::{
    CancelKeyDeletionRequest, CancelKeyDeletionResponse, CreateKeyRequest, CreateKeyResponse,
    DescribeKeyRequest, DescribeKeyResponse, DisableKeyRequest, EnableKeyRequest, ListKeysRequest,
    ListKeysResponse, ScheduleKeyDeletionRequest, ScheduleKeyDeletionResponse,
    UpdateKeyDescriptionRequest,
};
use crate::core::usage::{GetKeyLastUsageRequest, KeyLastUsageOutput};

input!(CreateKeyIn {
    policy: Option<String>,
    description: Option<String>,
    key_usage: Option<String>,
    key_spec: Option<String>,
    customer_master_key_spec: Option<String>,
    origin: Option<String>,
    bypass_policy_lockout_safety_check: Option<bool>,
    tags: Option<Vec<TagIn>>,
    multi_region: Option<bool>,
});

input!(KeyIdIn {
    key_id: Option<String>,
    grant_tokens: Option<Vec<String>>,
});

input!(ListKeysIn {
    limit: Option<i32>,
    marker: Option<String>,
});

input!(ScheduleIn {
    key_id: Option<String>,
    pending_window_in_days: Option<i32>,
});

input!(DescriptionIn {
    key_id: Option<String>,
    description: Option<String>,
});

/// An enum member: absent is `None`, a spelling that is not a value a SerializationException
/// (the model check refuses those first, so this is a second line only).
fn member<T: std::str::FromStr>(v: Option<String>) -> Result<Option<T>, serde_json::Error>
where
    T::Err: std::fmt::Display,
{
    v.map(|s| s.parse::<T>().map_err(serde::de::Error::custom))
        .transpose()
}

impl FromJson for CreateKeyRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: CreateKeyIn = parse(body)?;
        Ok(CreateKeyRequest {
            policy: r.policy,
            description: r.description.unwrap_or_default(),
            key_usage: member(r.key_usage)?,
            key_spec: member(r.key_spec)?,
            customer_master_key_spec: member(r.customer_master_key_spec)?,
            origin: member(r.origin)?,
            bypass_policy_lockout_safety_check: r
                .bypass_policy_lockout_safety_check
                .unwrap_or(false),
            tags: tags_in(r.tags),
            multi_region: r.multi_region.unwrap_or(false),
        })
    }
}

impl FromJson for DescribeKeyRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: KeyIdIn = parse(body)?;
        Ok(DescribeKeyRequest {
            key_id: r.key_id.unwrap_or_default(),
            grant_tokens: r.grant_tokens.unwrap_or_default(),
        })
    }
}

impl FromJson for ListKeysRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: ListKeysIn = parse(body)?;
        Ok(ListKeysRequest {
            limit: r.limit,
            marker: r.marker,
        })
    }
}

/// The key id of a request that names only a key.
fn key_id(body: Value) -> Result<String, serde_json::Error> {
    let r: KeyIdIn = parse(body)?;
    Ok(r.key_id.unwrap_or_default())
}

impl FromJson for EnableKeyRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        Ok(EnableKeyRequest {
            key_id: key_id(body)?,
        })
    }
}

impl FromJson for DisableKeyRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        Ok(DisableKeyRequest {
            key_id: key_id(body)?,
        })
    }
}

impl FromJson for ScheduleKeyDeletionRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: ScheduleIn = parse(body)?;
        Ok(ScheduleKeyDeletionRequest {
            key_id: r.key_id.unwrap_or_default(),
            pending_window_in_days: r.pending_window_in_days,
        })
    }
}

impl FromJson for CancelKeyDeletionRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        Ok(CancelKeyDeletionRequest {
            key_id: key_id(body)?,
        })
    }
}

impl FromJson for UpdateKeyDescriptionRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: DescriptionIn = parse(body)?;
        Ok(UpdateKeyDescriptionRequest {
            key_id: r.key_id.unwrap_or_default(),
            description: r.description.unwrap_or_default(),
        })
    }
}

impl FromJson for GetKeyLastUsageRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        Ok(GetKeyLastUsageRequest {
            key_id: key_id(body)?,
        })
    }
}

impl ToJson for CreateKeyResponse {
    fn to_json(self) -> Value {
        json!({"KeyMetadata": metadata(&self.key_metadata)})
    }
}

impl ToJson for DescribeKeyResponse {
    fn to_json(self) -> Value {
        json!({"KeyMetadata": metadata(&self.key_metadata)})
    }
}

impl ToJson for ListKeysResponse {
    fn to_json(self) -> Value {
        json!({
            "Keys": self.keys.into_iter().map(|k| json!({"KeyId": k.key_id, "KeyArn": k.key_arn})).collect::<Vec<_>>(),
            "Truncated": self.next_marker.is_some(),
            "NextMarker": self.next_marker,
        })
    }
}

impl ToJson for ScheduleKeyDeletionResponse {
    fn to_json(self) -> Value {
        scheduled_deletion(&self)
    }
}

impl ToJson for CancelKeyDeletionResponse {
    fn to_json(self) -> Value {
        json!({"KeyId": self.key_id})
    }
}

impl ToJson for KeyLastUsageOutput {
    fn to_json(self) -> Value {
        key_last_usage_body(&self)
    }
}
