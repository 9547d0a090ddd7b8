//! Keys on the AWS door: CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey,
//! ScheduleKeyDeletion, CancelKeyDeletion, UpdateKeyDescription, GetKeyLastUsage.
//!
//! KeySpec, KeyUsage and Origin are read into their enums here: the model check has already
//! refused spellings that are not AWS values.

use super::members::{from_json, non_empty, or_empty, to_json, ts};
use crate::core::external::XksKeyConfiguration;
use crate::core::keys::{
    CancelKeyDeletionRequest, CancelKeyDeletionResponse, CreateKeyRequest, CreateKeyResponse,
    DescribeKeyRequest, DescribeKeyResponse, DisableKeyRequest, EnableKeyRequest, KeyListEntry,
    KeyMetadata, ListKeysRequest, ListKeysResponse, ScheduleKeyDeletionRequest,
    ScheduleKeyDeletionResponse, UpdateKeyDescriptionRequest,
};
use crate::core::usage::{GetKeyLastUsageRequest, KeyLastUsageOutput};
use crate::store::KeyUsageRecord;

from_json! {
    CreateKeyRequest {
        policy, description, key_usage, key_spec, customer_master_key_spec, origin,
        bypass_policy_lockout_safety_check, tags, multi_region, custom_key_store_id,
        xks_key_id,
    }
    DescribeKeyRequest { key_id, grant_tokens }
    ListKeysRequest { page }
    EnableKeyRequest { key_id }
    DisableKeyRequest { key_id }
    ScheduleKeyDeletionRequest { key_id, pending_window_in_days }
    CancelKeyDeletionRequest { key_id }
    UpdateKeyDescriptionRequest { key_id, description }
    GetKeyLastUsageRequest { key_id }
}

to_json! {
    CreateKeyResponse { key_metadata }
    DescribeKeyResponse { key_metadata }
    ListKeysResponse { keys, next_marker; "Truncated" = |r| r.next_marker.is_some() }
    KeyListEntry { key_id, key_arn }
    ScheduleKeyDeletionResponse {
        key_id, deletion_date_ms: "DeletionDate" => ts, key_state, pending_window_in_days
    }
    CancelKeyDeletionResponse { key_id }
    // `KeyLastUsage` is `{}` when the key has not been used since tracking began.
    KeyLastUsageOutput {
        key_id, last_usage: "KeyLastUsage" => or_empty,
        tracking_start_date_ms: "TrackingStartDate" => ts,
        key_creation_date_ms: "KeyCreationDate" => ts,
    }
    KeyUsageRecord {
        operation, used_at_ms: "Timestamp" => ts, event_id: "CloudTrailEventId",
        request_id: "KmsRequestId",
    }
    // Empty algorithm lists and an empty key material id are left out, and AWS still sends
    // the deprecated CustomerMasterKeySpec beside KeySpec.
    KeyMetadata {
        aws_account_id: "AWSAccountId", key_id, arn, creation_date_ms: "CreationDate" => ts,
        enabled, description, key_usage, key_state, deletion_date_ms: "DeletionDate" => ts,
        origin, key_manager, key_spec, encryption_algorithms => non_empty,
        signing_algorithms => non_empty, mac_algorithms => non_empty,
        key_agreement_algorithms => non_empty, multi_region, multi_region_configuration,
        pending_deletion_window_in_days,
        current_key_material_id => non_empty, valid_to_ms: "ValidTo" => ts, expiration_model,
        custom_key_store_id, cloud_hsm_cluster_id: "CloudHsmClusterId", xks_key_configuration;
        "CustomerMasterKeySpec" = |m| m.key_spec,
    }
    XksKeyConfiguration { id }
}
