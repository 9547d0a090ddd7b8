//! Symmetric cryptography on the AWS door: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
//! GenerateDataKeyWithoutPlaintext, GenerateRandom.
//!
//! Plaintext is read into a `Zeroizing` buffer without a copy and leaves its zeroizing buffer
//! only when it is base64-encoded into the response body.

use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{b64, blob, non_empty, parse, Blob, Context, FromJson, ToJson};
use crate::core::algorithms::{DataKeySpec, EncryptionAlgorithm};
use crate::core::crypto::{
    DataKeyRequest, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse,
    GenerateDataKeyRequest, GenerateDataKeyResponse, GenerateDataKeyWithoutPlaintextRequest,
    GenerateDataKeyWithoutPlaintextResponse, GenerateRandomRequest, GenerateRandomResponse,
    ReEncryptRequest, ReEncryptResponse,
};

input!(EncryptIn {
    key_id: Option<String>,
    plaintext: Option<Blob>,
    encryption_context: Context,
    grant_tokens: Option<Vec<String>>,
    encryption_algorithm: Option<EncryptionAlgorithm>,
    dry_run: Option<bool>,
});

input!(DecryptIn {
    ciphertext_blob: Option<Blob>,
    encryption_context: Context,
    grant_tokens: Option<Vec<String>>,
    key_id: Option<String>,
    encryption_algorithm: Option<EncryptionAlgorithm>,
    dry_run: Option<bool>,
});

input!(ReEncryptIn {
    ciphertext_blob: Option<Blob>,
    source_encryption_context: Context,
    source_key_id: Option<String>,
    destination_key_id: Option<String>,
    destination_encryption_context: Context,
    source_encryption_algorithm: Option<EncryptionAlgorithm>,
    destination_encryption_algorithm: Option<EncryptionAlgorithm>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
});

input!(DataKeyIn {
    key_id: Option<String>,
    encryption_context: Context,
    number_of_bytes: Option<i32>,
    key_spec: Option<DataKeySpec>,
    grant_tokens: Option<Vec<String>>,
    dry_run: Option<bool>,
});

input!(RandomIn {
    number_of_bytes: Option<i32>,
    custom_key_store_id: Option<String>,
});

impl FromJson for EncryptRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: EncryptIn = parse(body)?;
        Ok(EncryptRequest {
            key_id: r.key_id.unwrap_or_default(),
            plaintext: Zeroizing::new(blob(r.plaintext)),
            encryption_context: r.encryption_context.unwrap_or_default(),
            grant_tokens: r.grant_tokens.unwrap_or_default(),
            encryption_algorithm: r.encryption_algorithm,
            dry_run: r.dry_run.unwrap_or(false),
        })
    }
}

impl FromJson for DecryptRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: DecryptIn = parse(body)?;
        Ok(DecryptRequest {
            ciphertext_blob: blob(r.ciphertext_blob),
            encryption_context: r.encryption_context.unwrap_or_default(),
            grant_tokens: r.grant_tokens.unwrap_or_default(),
            key_id: r.key_id,
            encryption_algorithm: r.encryption_algorithm,
            dry_run: r.dry_run.unwrap_or(false),
        })
    }
}

impl FromJson for ReEncryptRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: ReEncryptIn = parse(body)?;
        Ok(ReEncryptRequest {
            ciphertext_blob: blob(r.ciphertext_blob),
            source_encryption_context: r.source_encryption_context.unwrap_or_default(),
            source_key_id: r.source_key_id,
            destination_key_id: r.destination_key_id.unwrap_or_default(),
            destination_encryption_context: r.destination_encryption_context.unwrap_or_default(),
            source_encryption_algorithm: r.source_encryption_algorithm,
            destination_encryption_algorithm: r.destination_encryption_algorithm,
            grant_tokens: r.grant_tokens.unwrap_or_default(),
            dry_run: r.dry_run.unwrap_or(false),
        })
    }
}

fn data_key_request(body: Value) -> Result<DataKeyRequest, serde_json::Error> {
    let r: DataKeyIn = parse(body)?;
    Ok(DataKeyRequest {
        key_id: r.key_id.unwrap_or_default(),
        encryption_context: r.encryption_context.unwrap_or_default(),
        number_of_bytes: r.number_of_bytes,
        key_spec: r.key_spec,
        grant_tokens: r.grant_tokens.unwrap_or_default(),
        dry_run: r.dry_run.unwrap_or(false),
    })
}

impl FromJson for GenerateDataKeyRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        data_key_request(body).map(GenerateDataKeyRequest)
    }
}

impl FromJson for GenerateDataKeyWithoutPlaintextRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        data_key_request(body).map(GenerateDataKeyWithoutPlaintextRequest)
    }
}

impl FromJson for GenerateRandomRequest {
    fn from_json(body: Value) -> Result<Self, serde_json::Error> {
        let r: RandomIn = parse(body)?;
        Ok(GenerateRandomRequest {
            number_of_bytes: r.number_of_bytes,
            custom_key_store_id: r.custom_key_store_id,
        })
    }
}

impl ToJson for EncryptResponse {
    fn to_json(self) -> Value {
        json!({
            "CiphertextBlob": b64(&self.ciphertext_blob),
            "KeyId": self.key_id,
            "EncryptionAlgorithm": self.encryption_algorithm.as_str(),
        })
    }
}

impl ToJson for DecryptResponse {
    fn to_json(self) -> Value {
        json!({
            "KeyId": self.key_id,
            "Plaintext": b64(&self.plaintext),
            "EncryptionAlgorithm": self.encryption_algorithm.as_str(),
            "KeyMaterialId": non_empty(self.key_material_id),
        })
    }
}

impl ToJson for ReEncryptResponse {
    fn to_json(self) -> Value {
        json!({
            "CiphertextBlob": b64(&self.ciphertext_blob),
            "SourceKeyId": self.source_key_id,
            "KeyId": self.key_id,
            "SourceEncryptionAlgorithm": self.source_encryption_algorithm.as_str(),
            "DestinationEncryptionAlgorithm": self.destination_encryption_algorithm.as_str(),
            "SourceKeyMaterialId": non_empty(self.source_key_material_id),
            "DestinationKeyMaterialId": non_empty(self.destination_key_material_id),
        })
    }
}

impl ToJson for GenerateDataKeyResponse {
    fn to_json(self) -> Value {
        json!({
            "CiphertextBlob": b64(&self.ciphertext_blob),
            "Plaintext": b64(&self.plaintext),
            "KeyId": self.key_id,
            "KeyMaterialId": non_empty(self.key_material_id),
        })
    }
}

impl ToJson for GenerateDataKeyWithoutPlaintextResponse {
    fn to_json(self) -> Value {
        json!({
            "CiphertextBlob": b64(&self.ciphertext_blob),
            "KeyId": self.key_id,
            "KeyMaterialId": non_empty(self.key_material_id),
        })
    }
}

impl ToJson for GenerateRandomResponse {
    fn to_json(self) -> Value {
        json!({"Plaintext": b64(&self.plaintext)})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_follow_aws_json() {
        // Unknown members are ignored, null is absent, blobs are base64.
        let r: EncryptIn = parse(json!({
            "KeyId": "alias/a", "Plaintext": "aGVsbG8=", "EncryptionContext": {"a": "b"},
            "GrantTokens": null, "SomethingNew": 1
        }))
        .unwrap();
        assert_eq!(blob(r.plaintext), b"hello");
        assert!(r.grant_tokens.is_none());
        // Wrong member types and bad base64 are refused.
        assert!(parse::<EncryptIn>(json!({"KeyId": 5})).is_err());
        assert!(parse::<EncryptIn>(json!({"Plaintext": "***"})).is_err());
        // Algorithm names are read into their enums, once.
        let r = EncryptRequest::from_json(json!({"EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}))
            .unwrap();
        assert_eq!(
            r.encryption_algorithm,
            Some(EncryptionAlgorithm::RsaesOaepSha256)
        );
        let r = GenerateDataKeyRequest::from_json(json!({"KeySpec": "AES_128"})).unwrap();
        assert_eq!(r.0.key_spec, Some(DataKeySpec::Aes128));
    }

    #[test]
    fn a_data_key_without_plaintext_has_no_plaintext_member() {
        let out = GenerateDataKeyWithoutPlaintextResponse {
            ciphertext_blob: vec![1, 2],
            key_id: "arn".into(),
            key_material_id: String::new(),
        };
        assert_eq!(
            super::super::compact(out.to_json()),
            json!({"CiphertextBlob": "AQI=", "KeyId": "arn"})
        );
    }
}
