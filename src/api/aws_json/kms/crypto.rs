//! Symmetric cryptography on the AWS door: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
//! GenerateDataKeyWithoutPlaintext, GenerateRandom.
//!
//! Plaintext is read into a `Zeroizing` buffer without a copy and leaves its zeroizing buffer
//! only when it is base64-encoded into the response body.

use super::members::{from_json, non_empty, to_json};
use crate::core::crypto::{
    DataKeyRequest, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse,
    GenerateDataKeyRequest, GenerateDataKeyResponse, GenerateDataKeyWithoutPlaintextRequest,
    GenerateDataKeyWithoutPlaintextResponse, GenerateRandomRequest, GenerateRandomResponse,
    ReEncryptRequest, ReEncryptResponse,
};

from_json! {
    EncryptRequest {
        key_id, plaintext, encryption_context, grant_tokens, encryption_algorithm, dry_run
    }
    DecryptRequest {
        ciphertext_blob, encryption_context, grant_tokens, key_id, encryption_algorithm, dry_run
    }
    ReEncryptRequest {
        ciphertext_blob, source_encryption_context, source_key_id, destination_key_id,
        destination_encryption_context, source_encryption_algorithm,
        destination_encryption_algorithm, grant_tokens, dry_run,
    }
    DataKeyRequest { key_id, encryption_context, number_of_bytes, key_spec, grant_tokens, dry_run }
    GenerateRandomRequest { number_of_bytes, custom_key_store_id }
}
from_json! {
    GenerateDataKeyRequest(DataKeyRequest)
    GenerateDataKeyWithoutPlaintextRequest(DataKeyRequest)
}

// A key material id is left out when it is empty.
to_json! {
    EncryptResponse { ciphertext_blob, key_id, encryption_algorithm }
    DecryptResponse { key_id, plaintext, encryption_algorithm, key_material_id => non_empty }
    ReEncryptResponse {
        ciphertext_blob, source_key_id, key_id, source_encryption_algorithm,
        destination_encryption_algorithm, source_key_material_id => non_empty,
        destination_key_material_id => non_empty,
    }
    GenerateDataKeyResponse { ciphertext_blob, plaintext, key_id, key_material_id => non_empty }
    GenerateDataKeyWithoutPlaintextResponse {
        ciphertext_blob, key_id, key_material_id => non_empty
    }
    GenerateRandomResponse { plaintext }
}

#[cfg(test)]
mod tests {
    use super::super::members::Render as _;
    use super::super::{compact, FromJson as _};
    use super::*;
    use crate::core::algorithms::{DataKeySpec, EncryptionAlgorithm};
    use serde_json::json;

    #[test]
    fn inputs_follow_aws_json() {
        // Unknown members are ignored, null is absent, blobs are base64.
        let r = EncryptRequest::from_json(json!({
            "KeyId": "alias/a", "Plaintext": "aGVsbG8=", "EncryptionContext": {"a": "b"},
            "GrantTokens": null, "SomethingNew": 1
        }))
        .unwrap();
        assert_eq!(r.plaintext.as_slice(), b"hello");
        assert_eq!(r.key_id, "alias/a");
        assert_eq!(r.encryption_context.get("a").map(String::as_str), Some("b"));
        assert!(r.grant_tokens.is_empty());
        // Wrong member types and bad base64 are refused.
        assert!(EncryptRequest::from_json(json!({"KeyId": 5})).is_err());
        assert!(EncryptRequest::from_json(json!({"Plaintext": "***"})).is_err());
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
            compact(out.render()),
            json!({"CiphertextBlob": "AQI=", "KeyId": "arn"})
        );
    }
}
