//! Imported key material on the gRPC door: GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial.

use super::super::{opt, ts, FromMessage};
use crate::core::import::{
    DeleteImportedKeyMaterialRequest, GetParametersForImportRequest,
    GetParametersForImportResponse, ImportKeyMaterialRequest, KeyMaterialResponse,
};
use crate::core::KmsError;
use crate::pb;

impl FromMessage<pb::GetParametersForImportRequest> for GetParametersForImportRequest {
    fn from_message(m: pb::GetParametersForImportRequest) -> Result<Self, KmsError> {
        Ok(GetParametersForImportRequest {
            key_id: m.key_id,
            wrapping_algorithm: m.wrapping_algorithm,
            wrapping_key_spec: m.wrapping_key_spec,
        })
    }
}

impl From<GetParametersForImportResponse> for pb::GetParametersForImportResponse {
    fn from(p: GetParametersForImportResponse) -> Self {
        pb::GetParametersForImportResponse {
            key_id: p.key_id,
            import_token: p.import_token,
            public_key: p.public_key,
            parameters_valid_to: Some(ts(p.parameters_valid_to_ms)),
        }
    }
}

impl FromMessage<pb::ImportKeyMaterialRequest> for ImportKeyMaterialRequest {
    fn from_message(m: pb::ImportKeyMaterialRequest) -> Result<Self, KmsError> {
        Ok(ImportKeyMaterialRequest {
            key_id: m.key_id,
            import_token: m.import_token,
            encrypted_key_material: m.encrypted_key_material,
            valid_to_ms: m
                .valid_to
                .map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000)),
            expiration_model: opt(m.expiration_model),
            import_type: opt(m.import_type),
            key_material_description: opt(m.key_material_description),
            key_material_id: opt(m.key_material_id),
        })
    }
}

impl From<KeyMaterialResponse> for pb::ImportKeyMaterialResponse {
    fn from(r: KeyMaterialResponse) -> Self {
        pb::ImportKeyMaterialResponse {
            key_id: r.key_id,
            key_material_id: r.key_material_id,
        }
    }
}

impl FromMessage<pb::DeleteImportedKeyMaterialRequest> for DeleteImportedKeyMaterialRequest {
    fn from_message(m: pb::DeleteImportedKeyMaterialRequest) -> Result<Self, KmsError> {
        Ok(DeleteImportedKeyMaterialRequest {
            key_id: m.key_id,
            key_material_id: opt(m.key_material_id),
        })
    }
}

impl From<KeyMaterialResponse> for pb::DeleteImportedKeyMaterialResponse {
    fn from(r: KeyMaterialResponse) -> Self {
        pb::DeleteImportedKeyMaterialResponse {
            key_id: r.key_id,
            key_material_id: r.key_material_id,
        }
    }
}
