//! Rotation on the AWS door: EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus,
//! RotateKeyOnDemand, ListKeyRotations.

use serde_json::{json, Value};

use super::{parse, rotation_entry, rotation_status, FromJson, ToJson};
use crate::core::rotation::{
    DisableKeyRotationRequest, EnableKeyRotationRequest, GetKeyRotationStatusRequest,
    KeyRotationStatus, ListKeyRotationsRequest, ListKeyRotationsResponse, RotateKeyOnDemandRequest,
    RotateKeyOnDemandResponse,
};

input!(RotationIn {
    key_id: Option<String>,
    rotation_period_in_days: Option<i32>,
});

input!(RotationKeyIn {
    key_id: Option<String>,
});

input!(RotationsIn {
    key_id: Option<String>,
    limit: Option<i32>,
    marker: Option<String>,
    include_key_material: Option<String>,
});

impl FromJson for EnableKeyRotationRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: RotationIn = parse(body)?;
        Ok(EnableKeyRotationRequest {
            key_id: r.key_id.unwrap_or_default(),
            rotation_period_in_days: r.rotation_period_in_days,
        })
    }
}

/// The requests that name one key.
macro_rules! key_requests {
    ($($t:ident),*) => {$(
        impl FromJson for $t {
            fn from_json(body: Value) -> Result<Self, serde_json::Error> {
                let r: RotationKeyIn = parse(body)?;
                Ok($t {
                    key_id: r.key_id.unwrap_or_default(),
                })
            }
        }
    )*};
}

key_requests!(
    DisableKeyRotationRequest,
    GetKeyRotationStatusRequest,
    RotateKeyOnDemandRequest
);

impl ToJson for KeyRotationStatus {
    fn to_json(self) -> Value {
        rotation_status(&self)
    }
}

impl ToJson for RotateKeyOnDemandResponse {
    fn to_json(self) -> Value {
        json!({"KeyId": self.key_id})
    }
}

impl FromJson for ListKeyRotationsRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: RotationsIn = parse(body)?;
        Ok(ListKeyRotationsRequest {
            key_id: r.key_id.unwrap_or_default(),
            limit: r.limit,
            marker: r.marker,
            include_key_material: r.include_key_material,
        })
    }
}

impl ToJson for ListKeyRotationsResponse {
    fn to_json(self) -> Value {
        json!({
            "Rotations": self.rotations.into_iter().map(rotation_entry).collect::<Vec<_>>(),
            "Truncated": self.next_marker.is_some(),
            "NextMarker": self.next_marker,
        })
    }
}
