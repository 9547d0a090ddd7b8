//! Rotation on the gRPC door: EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus,
//! RotateKeyOnDemand, ListKeyRotations.

use super::super::convert::{each, from_message, to_message};
use crate::core::operation::Empty;
use crate::core::rotation::{
    DisableKeyRotationRequest, EnableKeyRotationRequest, GetKeyRotationStatusRequest,
    KeyRotationStatus, ListKeyRotationsRequest, ListKeyRotationsResponse, RotateKeyOnDemandRequest,
    RotateKeyOnDemandResponse, RotationsListEntry,
};
use crate::pb;

from_message!(pb::EnableKeyRotationRequest => EnableKeyRotationRequest {
    key_id, rotation_period_in_days
});
from_message!(pb::DisableKeyRotationRequest => DisableKeyRotationRequest { key_id });
from_message!(pb::GetKeyRotationStatusRequest => GetKeyRotationStatusRequest { key_id });
from_message!(pb::RotateKeyOnDemandRequest => RotateKeyOnDemandRequest { key_id });
from_message!(pb::ListKeyRotationsRequest => ListKeyRotationsRequest {
    key_id, page, include_key_material
});

to_message!(Empty => pb::EnableKeyRotationResponse {});
to_message!(Empty => pb::DisableKeyRotationResponse {});
to_message!(KeyRotationStatus => pb::GetKeyRotationStatusResponse {
    key_rotation_enabled, key_id, rotation_period_in_days,
    next_rotation_date: next_rotation_date_ms,
    on_demand_rotation_start_date: on_demand_rotation_start_date_ms
});
to_message!(RotateKeyOnDemandResponse => pb::RotateKeyOnDemandResponse { key_id });
to_message!(page: ListKeyRotationsResponse => pb::ListKeyRotationsResponse {
    truncated = page.next_marker.is_some(), rotations => each, next_marker
});
to_message!(RotationsListEntry => pb::RotationsListEntry {
    key_id, key_material_id, rotation_date: rotation_date_ms, rotation_type, key_material_state,
    import_state, expiration_model, valid_to: valid_to_ms
});
