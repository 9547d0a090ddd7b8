//! Imported key material on the AWS door: GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial.

use super::members::{from_json, to_json, ts, Members};
use crate::core::import::{
    DeleteImportedKeyMaterialRequest, GetParametersForImportRequest,
    GetParametersForImportResponse, ImportKeyMaterialRequest, KeyMaterialResponse,
};

from_json! {
    GetParametersForImportRequest { key_id, wrapping_algorithm, wrapping_key_spec }
    ImportKeyMaterialRequest {
        key_id, import_token, encrypted_key_material, valid_to_ms => valid_to, expiration_model,
        import_type, key_material_description, key_material_id,
    }
    DeleteImportedKeyMaterialRequest { key_id, key_material_id }
}

to_json! {
    GetParametersForImportResponse {
        key_id, import_token, public_key, parameters_valid_to_ms: "ParametersValidTo" => ts
    }
    KeyMaterialResponse { key_id, key_material_id }
}

/// `ValidTo`: epoch seconds (a JSON number, possibly fractional), as Unix milliseconds.
fn valid_to(m: &mut Members) -> Result<Option<i64>, serde_json::Error> {
    let seconds: Option<f64> = m.read_member("ValidTo")?;
    Ok(seconds.map(|s| (s * 1000.0).round() as i64))
}
