//! Imported key material on the AWS door: GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial.

use serde_json::{json, Value};

use super::{b64, blob, parse, ts, Blob, FromJson, ToJson};
use crate::core::import::{
    DeleteImportedKeyMaterialRequest, GetParametersForImportRequest,
    GetParametersForImportResponse, ImportKeyMaterialRequest, KeyMaterialResponse,
};

input!(ParametersIn {
    key_id: Option<String>,
    wrapping_algorithm: Option<String>,
    wrapping_key_spec: Option<String>,
});

input!(ImportIn {
    key_id: Option<String>,
    import_token: Option<Blob>,
    encrypted_key_material: Option<Blob>,
    valid_to: Option<f64>,
    expiration_model: Option<String>,
    import_type: Option<String>,
    key_material_description: Option<String>,
    key_material_id: Option<String>,
});

input!(DeleteMaterialIn {
    key_id: Option<String>,
    key_material_id: Option<String>,
});

impl FromJson for GetParametersForImportRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: ParametersIn = parse(body)?;
        Ok(GetParametersForImportRequest {
            key_id: r.key_id.unwrap_or_default(),
            wrapping_algorithm: r.wrapping_algorithm.unwrap_or_default(),
            wrapping_key_spec: r.wrapping_key_spec.unwrap_or_default(),
        })
    }
}

impl ToJson for GetParametersForImportResponse {
    fn to_json(self) -> Value {
        json!({
            "KeyId": self.key_id,
            "ImportToken": b64(&self.import_token),
            "PublicKey": b64(&self.public_key),
            "ParametersValidTo": ts(self.parameters_valid_to_ms),
        })
    }
}

impl FromJson for ImportKeyMaterialRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: ImportIn = parse(body)?;
        Ok(ImportKeyMaterialRequest {
            key_id: r.key_id.unwrap_or_default(),
            import_token: blob(r.import_token),
            encrypted_key_material: blob(r.encrypted_key_material),
            valid_to_ms: r.valid_to.map(|s| (s * 1000.0).round() as i64),
            expiration_model: r.expiration_model,
            import_type: r.import_type,
            key_material_description: r.key_material_description,
            key_material_id: r.key_material_id,
        })
    }
}

impl ToJson for KeyMaterialResponse {
    fn to_json(self) -> Value {
        json!({"KeyId": self.key_id, "KeyMaterialId": self.key_material_id})
    }
}

impl FromJson for DeleteImportedKeyMaterialRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: DeleteMaterialIn = parse(body)?;
        Ok(DeleteImportedKeyMaterialRequest {
            key_id: r.key_id.unwrap_or_default(),
            key_material_id: r.key_material_id,
        })
    }
}
