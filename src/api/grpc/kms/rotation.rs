//! Rotation on the gRPC door: EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus,
//! RotateKeyOnDemand, ListKeyRotations.

use super::super::{opt, ts, FromMessage};
use crate::core::operation::Empty;
use crate::core::rotation::{
    DisableKeyRotationRequest, EnableKeyRotationRequest, GetKeyRotationStatusRequest,
    KeyRotationStatus, ListKeyRotationsRequest, ListKeyRotationsResponse, RotateKeyOnDemandRequest,
    RotateKeyOnDemandResponse, RotationsListEntry,
};
use crate::core::KmsError;
use crate::pb;

impl FromMessage<pb::EnableKeyRotationRequest> for EnableKeyRotationRequest {
    fn from_message(m: pb::EnableKeyRotationRequest) -> Result<Self, KmsError> {
        Ok(EnableKeyRotationRequest {
            key_id: m.key_id,
            rotation_period_in_days: m.rotation_period_in_days,
        })
    }
}

/// The requests that name one key.
macro_rules! key_requests {
    ($($t:ident),*) => {$(
        impl FromMessage<pb::$t> for $t {
            fn from_message(m: pb::$t) -> Result<Self, KmsError> {
                Ok($t { key_id: m.key_id })
            }
        }
    )*};
}

key_requests!(
    DisableKeyRotationRequest,
    GetKeyRotationStatusRequest,
    RotateKeyOnDemandRequest
);

impl From<Empty> for pb::EnableKeyRotationResponse {
    fn from(_: Empty) -> Self {
        pb::EnableKeyRotationResponse {}
    }
}

impl From<Empty> for pb::DisableKeyRotationResponse {
    fn from(_: Empty) -> Self {
        pb::DisableKeyRotationResponse {}
    }
}

impl From<KeyRotationStatus> for pb::GetKeyRotationStatusResponse {
    fn from(s: KeyRotationStatus) -> Self {
        pb::GetKeyRotationStatusResponse {
            key_rotation_enabled: s.key_rotation_enabled,
            key_id: s.key_id,
            rotation_period_in_days: s.rotation_period_in_days,
            next_rotation_date: s.next_rotation_date_ms.map(ts),
            on_demand_rotation_start_date: s.on_demand_rotation_start_date_ms.map(ts),
        }
    }
}

impl From<RotateKeyOnDemandResponse> for pb::RotateKeyOnDemandResponse {
    fn from(r: RotateKeyOnDemandResponse) -> Self {
        pb::RotateKeyOnDemandResponse { key_id: r.key_id }
    }
}

impl FromMessage<pb::ListKeyRotationsRequest> for ListKeyRotationsRequest {
    fn from_message(m: pb::ListKeyRotationsRequest) -> Result<Self, KmsError> {
        Ok(ListKeyRotationsRequest {
            key_id: m.key_id,
            limit: m.limit,
            marker: opt(m.marker),
            include_key_material: opt(m.include_key_material),
        })
    }
}

fn rotation_entry(e: RotationsListEntry) -> pb::RotationsListEntry {
    pb::RotationsListEntry {
        key_id: e.key_id,
        key_material_id: e.key_material_id,
        rotation_date: e.rotation_date_ms.map(ts),
        rotation_type: e.rotation_type.unwrap_or_default(),
        key_material_state: e.key_material_state,
        import_state: e.import_state.unwrap_or_default(),
        expiration_model: e.expiration_model.unwrap_or_default(),
        valid_to: e.valid_to_ms.map(ts),
    }
}

impl From<ListKeyRotationsResponse> for pb::ListKeyRotationsResponse {
    fn from(page: ListKeyRotationsResponse) -> Self {
        pb::ListKeyRotationsResponse {
            rotations: page.rotations.into_iter().map(rotation_entry).collect(),
            truncated: page.next_marker.is_some(),
            next_marker: page.next_marker.unwrap_or_default(),
        }
    }
}
