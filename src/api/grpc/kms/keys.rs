//! Keys on the gRPC door: CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey,
//! ScheduleKeyDeletion, CancelKeyDeletion, UpdateKeyDescription, GetKeyLastUsage.
//!
//! KeySpec, KeyUsage and Origin are read into their enums here (proto3: empty is "not set");
//! the model check has already refused spellings that are not AWS values.

use std::str::FromStr;

use super::super::{metadata, opt, tags_in, ts, FromMessage};
use crate::core::domain::UnknownValue;
use crate::core::keys::{
    CancelKeyDeletionRequest, CancelKeyDeletionResponse, CreateKeyRequest, CreateKeyResponse,
    DescribeKeyRequest, DescribeKeyResponse, DisableKeyRequest, EnableKeyRequest, ListKeysRequest,
    ListKeysResponse, ScheduleKeyDeletionRequest, ScheduleKeyDeletionResponse,
    UpdateKeyDescriptionRequest,
};
use crate::core::operation::Empty;
use crate::core::usage::{GetKeyLastUsageRequest, KeyLastUsageOutput};
use crate::core::KmsError;
use crate::pb;

/// An enum field: empty is `None`; a spelling that is not a value is refused as the model
/// check refuses it (which runs first, so this is a second line only).
fn member<T: FromStr<Err = UnknownValue>>(field: &str, v: String) -> Result<Option<T>, KmsError> {
    opt(v)
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| KmsError::validation(field, &e.to_string()))
        })
        .transpose()
}

impl FromMessage<pb::CreateKeyRequest> for CreateKeyRequest {
    fn from_message(m: pb::CreateKeyRequest) -> Result<Self, KmsError> {
        Ok(CreateKeyRequest {
            policy: opt(m.policy),
            description: m.description,
            key_usage: member("keyUsage", m.key_usage)?,
            key_spec: member("keySpec", m.key_spec)?,
            customer_master_key_spec: member("customerMasterKeySpec", m.customer_master_key_spec)?,
            origin: member("origin", m.origin)?,
            bypass_policy_lockout_safety_check: m.bypass_policy_lockout_safety_check,
            tags: tags_in(m.tags),
            multi_region: m.multi_region,
        })
    }
}

impl FromMessage<pb::DescribeKeyRequest> for DescribeKeyRequest {
    fn from_message(m: pb::DescribeKeyRequest) -> Result<Self, KmsError> {
        Ok(DescribeKeyRequest {
            key_id: m.key_id,
            grant_tokens: m.grant_tokens,
        })
    }
}

impl FromMessage<pb::ListKeysRequest> for ListKeysRequest {
    fn from_message(m: pb::ListKeysRequest) -> Result<Self, KmsError> {
        Ok(ListKeysRequest {
            limit: m.limit,
            marker: opt(m.marker),
        })
    }
}

impl FromMessage<pb::EnableKeyRequest> for EnableKeyRequest {
    fn from_message(m: pb::EnableKeyRequest) -> Result<Self, KmsError> {
        Ok(EnableKeyRequest { key_id: m.key_id })
    }
}

impl FromMessage<pb::DisableKeyRequest> for DisableKeyRequest {
    fn from_message(m: pb::DisableKeyRequest) -> Result<Self, KmsError> {
        Ok(DisableKeyRequest { key_id: m.key_id })
    }
}

impl FromMessage<pb::ScheduleKeyDeletionRequest> for ScheduleKeyDeletionRequest {
    fn from_message(m: pb::ScheduleKeyDeletionRequest) -> Result<Self, KmsError> {
        Ok(ScheduleKeyDeletionRequest {
            key_id: m.key_id,
            pending_window_in_days: m.pending_window_in_days,
        })
    }
}

impl FromMessage<pb::CancelKeyDeletionRequest> for CancelKeyDeletionRequest {
    fn from_message(m: pb::CancelKeyDeletionRequest) -> Result<Self, KmsError> {
        Ok(CancelKeyDeletionRequest { key_id: m.key_id })
    }
}

impl FromMessage<pb::UpdateKeyDescriptionRequest> for UpdateKeyDescriptionRequest {
    fn from_message(m: pb::UpdateKeyDescriptionRequest) -> Result<Self, KmsError> {
        Ok(UpdateKeyDescriptionRequest {
            key_id: m.key_id,
            description: m.description,
        })
    }
}

impl FromMessage<pb::GetKeyLastUsageRequest> for GetKeyLastUsageRequest {
    fn from_message(m: pb::GetKeyLastUsageRequest) -> Result<Self, KmsError> {
        Ok(GetKeyLastUsageRequest { key_id: m.key_id })
    }
}

impl From<CreateKeyResponse> for pb::CreateKeyResponse {
    fn from(r: CreateKeyResponse) -> Self {
        pb::CreateKeyResponse {
            key_metadata: Some(metadata(r.key_metadata)),
        }
    }
}

impl From<DescribeKeyResponse> for pb::DescribeKeyResponse {
    fn from(r: DescribeKeyResponse) -> Self {
        pb::DescribeKeyResponse {
            key_metadata: Some(metadata(r.key_metadata)),
        }
    }
}

impl From<ListKeysResponse> for pb::ListKeysResponse {
    fn from(page: ListKeysResponse) -> Self {
        pb::ListKeysResponse {
            keys: page
                .keys
                .into_iter()
                .map(|k| pb::KeyListEntry {
                    key_id: k.key_id,
                    key_arn: k.key_arn,
                })
                .collect(),
            truncated: page.next_marker.is_some(),
            next_marker: page.next_marker.unwrap_or_default(),
        }
    }
}

impl From<Empty> for pb::EnableKeyResponse {
    fn from(_: Empty) -> Self {
        pb::EnableKeyResponse {}
    }
}

impl From<Empty> for pb::DisableKeyResponse {
    fn from(_: Empty) -> Self {
        pb::DisableKeyResponse {}
    }
}

impl From<Empty> for pb::UpdateKeyDescriptionResponse {
    fn from(_: Empty) -> Self {
        pb::UpdateKeyDescriptionResponse {}
    }
}

impl From<ScheduleKeyDeletionResponse> for pb::ScheduleKeyDeletionResponse {
    fn from(out: ScheduleKeyDeletionResponse) -> Self {
        pb::ScheduleKeyDeletionResponse {
            key_id: out.key_id,
            deletion_date: Some(ts(out.deletion_date_ms)),
            key_state: out.key_state.as_str().to_string(),
            pending_window_in_days: out.pending_window_in_days,
        }
    }
}

impl From<CancelKeyDeletionResponse> for pb::CancelKeyDeletionResponse {
    fn from(out: CancelKeyDeletionResponse) -> Self {
        pb::CancelKeyDeletionResponse { key_id: out.key_id }
    }
}

impl From<KeyLastUsageOutput> for pb::GetKeyLastUsageResponse {
    fn from(out: KeyLastUsageOutput) -> Self {
        let last = out.last_usage.map(|u| pb::KeyLastUsage {
            operation: u.operation.as_str().to_string(),
            timestamp: Some(ts(u.used_at_ms)),
            cloud_trail_event_id: u.event_id,
            kms_request_id: u.request_id,
        });
        pb::GetKeyLastUsageResponse {
            key_id: out.key_id,
            key_last_usage: Some(last.unwrap_or_default()),
            tracking_start_date: Some(ts(out.tracking_start_date_ms)),
            key_creation_date: Some(ts(out.key_creation_date_ms)),
        }
    }
}
