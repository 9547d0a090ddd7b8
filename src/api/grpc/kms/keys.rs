//! Keys on the gRPC door: CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey,
//! ScheduleKeyDeletion, CancelKeyDeletion, UpdateKeyDescription, GetKeyLastUsage.
//!
//! KeySpec, KeyUsage and Origin are read into their enums here (proto3: empty is "not set");
//! the model check has already refused spellings that are not AWS values.

use super::super::convert::{each, from_message, some, to_message};
use crate::core::keys::{
    CancelKeyDeletionRequest, CancelKeyDeletionResponse, CreateKeyRequest, CreateKeyResponse,
    DescribeKeyRequest, DescribeKeyResponse, DisableKeyRequest, EnableKeyRequest, KeyListEntry,
    KeyMetadata, ListKeysRequest, ListKeysResponse, ScheduleKeyDeletionRequest,
    ScheduleKeyDeletionResponse, UpdateKeyDescriptionRequest,
};
use crate::core::operation::Empty;
use crate::core::usage::{GetKeyLastUsageRequest, KeyLastUsageOutput};
use crate::pb;
use crate::store::KeyUsageRecord;

from_message!(pb::CreateKeyRequest => CreateKeyRequest {
    policy, description, key_usage, key_spec, customer_master_key_spec, origin,
    bypass_policy_lockout_safety_check, tags, multi_region, custom_key_store_id, xks_key_id
});
from_message!(pb::DescribeKeyRequest => DescribeKeyRequest { key_id, grant_tokens });
from_message!(pb::ListKeysRequest => ListKeysRequest { page });
from_message!(pb::EnableKeyRequest => EnableKeyRequest { key_id });
from_message!(pb::DisableKeyRequest => DisableKeyRequest { key_id });
from_message!(pb::ScheduleKeyDeletionRequest => ScheduleKeyDeletionRequest {
    key_id, pending_window_in_days
});
from_message!(pb::CancelKeyDeletionRequest => CancelKeyDeletionRequest { key_id });
from_message!(pb::UpdateKeyDescriptionRequest => UpdateKeyDescriptionRequest {
    key_id, description
});
from_message!(pb::GetKeyLastUsageRequest => GetKeyLastUsageRequest { key_id });

to_message!(CreateKeyResponse => pb::CreateKeyResponse { key_metadata => some });
to_message!(DescribeKeyResponse => pb::DescribeKeyResponse { key_metadata => some });
to_message!(page: ListKeysResponse => pb::ListKeysResponse {
    truncated = page.next_marker.is_some(), keys => each, next_marker
});
to_message!(KeyListEntry => pb::KeyListEntry { key_id, key_arn });
to_message!(Empty => pb::EnableKeyResponse {});
to_message!(Empty => pb::DisableKeyResponse {});
to_message!(Empty => pb::UpdateKeyDescriptionResponse {});
to_message!(ScheduleKeyDeletionResponse => pb::ScheduleKeyDeletionResponse {
    key_id, deletion_date: deletion_date_ms, key_state, pending_window_in_days
});
to_message!(CancelKeyDeletionResponse => pb::CancelKeyDeletionResponse { key_id });
// A key never used has an empty KeyLastUsage, as AWS answers.
to_message!(out: KeyLastUsageOutput => pb::GetKeyLastUsageResponse {
    key_last_usage = Some(out.last_usage.map(Into::into).unwrap_or_default()), key_id,
    tracking_start_date: tracking_start_date_ms, key_creation_date: key_creation_date_ms
});
to_message!(KeyUsageRecord => pb::KeyLastUsage {
    operation, timestamp: used_at_ms, cloud_trail_event_id: event_id, kms_request_id: request_id
});
// CustomerMasterKeySpec is the deprecated spelling of KeySpec: the same value.
to_message!(r: KeyMetadata => pb::KeyMetadata {
    xks_key_id = r.xks_key_configuration.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
    multi_region_configuration = r.multi_region_configuration.clone().map(Into::into),
    aws_account_id, key_id, arn, creation_date: creation_date_ms, enabled, description,
    key_usage, key_state, deletion_date: deletion_date_ms, valid_to: valid_to_ms,
    expiration_model, origin, key_manager, customer_master_key_spec: key_spec, key_spec,
    encryption_algorithms, signing_algorithms, mac_algorithms, key_agreement_algorithms,
    multi_region, pending_deletion_window_in_days, current_key_material_id, custom_key_store_id,
    cloud_hsm_cluster_id
});
