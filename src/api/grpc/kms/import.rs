//! Imported key material on the gRPC door: GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial.

use super::super::convert::{from_message, to_message};
use crate::core::import::{
    DeleteImportedKeyMaterialRequest, GetParametersForImportRequest,
    GetParametersForImportResponse, ImportKeyMaterialRequest, KeyMaterialResponse,
};
use crate::pb;

from_message!(pb::GetParametersForImportRequest => GetParametersForImportRequest {
    key_id, wrapping_algorithm, wrapping_key_spec
});
from_message!(pb::ImportKeyMaterialRequest => ImportKeyMaterialRequest {
    key_id, import_token, encrypted_key_material, valid_to_ms: valid_to, expiration_model,
    import_type, key_material_description, key_material_id
});
from_message!(pb::DeleteImportedKeyMaterialRequest => DeleteImportedKeyMaterialRequest {
    key_id, key_material_id
});

to_message!(GetParametersForImportResponse => pb::GetParametersForImportResponse {
    key_id, import_token, public_key, parameters_valid_to: parameters_valid_to_ms
});
to_message!(KeyMaterialResponse => pb::ImportKeyMaterialResponse { key_id, key_material_id });
to_message!(KeyMaterialResponse => pb::DeleteImportedKeyMaterialResponse {
    key_id, key_material_id
});
