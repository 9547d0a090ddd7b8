//! Rotation on the AWS door: EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus,
//! RotateKeyOnDemand, ListKeyRotations.

use super::members::{from_json, to_json, ts};
use crate::core::rotation::{
    DisableKeyRotationRequest, EnableKeyRotationRequest, GetKeyRotationStatusRequest,
    KeyRotationStatus, ListKeyRotationsRequest, ListKeyRotationsResponse, RotateKeyOnDemandRequest,
    RotateKeyOnDemandResponse, RotationsListEntry,
};

from_json! {
    EnableKeyRotationRequest { key_id, rotation_period_in_days }
    DisableKeyRotationRequest { key_id }
    GetKeyRotationStatusRequest { key_id }
    RotateKeyOnDemandRequest { key_id }
    ListKeyRotationsRequest { key_id, page, include_key_material }
}

to_json! {
    KeyRotationStatus {
        key_rotation_enabled, key_id, rotation_period_in_days,
        next_rotation_date_ms: "NextRotationDate" => ts,
        on_demand_rotation_start_date_ms: "OnDemandRotationStartDate" => ts,
    }
    RotateKeyOnDemandResponse { key_id }
    ListKeyRotationsResponse { rotations, next_marker; "Truncated" = |r| r.next_marker.is_some() }
    RotationsListEntry {
        key_id, key_material_id, rotation_date_ms: "RotationDate" => ts, rotation_type,
        key_material_state, import_state, expiration_model, valid_to_ms: "ValidTo" => ts,
    }
}
