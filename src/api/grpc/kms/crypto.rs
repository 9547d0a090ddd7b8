//! Symmetric cryptography on the gRPC door: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
//! GenerateDataKeyWithoutPlaintext, GenerateRandom.
//!
//! Plaintext moves into a `Zeroizing` buffer without a copy, and out of it into the response
//! message only at the end ([`expose`]).

use zeroize::Zeroizing;

use super::super::{expose, opt, FromMessage};
use crate::core::algorithms::{parse_opt, UnknownValue};
use crate::core::crypto::{
    DataKeyRequest, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse,
    GenerateDataKeyRequest, GenerateDataKeyResponse, GenerateDataKeyWithoutPlaintextRequest,
    GenerateDataKeyWithoutPlaintextResponse, GenerateRandomRequest, GenerateRandomResponse,
    ReEncryptRequest, ReEncryptResponse,
};
use crate::core::KmsError;
use crate::pb;

/// An algorithm (or other AWS enum) member of a message: empty is "not set". A value outside
/// the enum was refused by the model check already; it is refused here too, never guessed.
pub(super) fn algorithm<T: std::str::FromStr<Err = UnknownValue>>(
    member: &str,
    value: &str,
) -> Result<Option<T>, KmsError> {
    parse_opt(value).map_err(|_| KmsError::validation(member, "Member must satisfy enum value set"))
}

impl FromMessage<pb::EncryptRequest> for EncryptRequest {
    fn from_message(m: pb::EncryptRequest) -> Result<Self, KmsError> {
        Ok(EncryptRequest {
            key_id: m.key_id,
            plaintext: Zeroizing::new(m.plaintext),
            encryption_context: m.encryption_context,
            grant_tokens: m.grant_tokens,
            encryption_algorithm: algorithm("encryptionAlgorithm", &m.encryption_algorithm)?,
            dry_run: m.dry_run,
        })
    }
}

impl FromMessage<pb::DecryptRequest> for DecryptRequest {
    fn from_message(m: pb::DecryptRequest) -> Result<Self, KmsError> {
        Ok(DecryptRequest {
            ciphertext_blob: m.ciphertext_blob,
            encryption_context: m.encryption_context,
            grant_tokens: m.grant_tokens,
            key_id: opt(m.key_id),
            encryption_algorithm: algorithm("encryptionAlgorithm", &m.encryption_algorithm)?,
            dry_run: m.dry_run,
        })
    }
}

impl FromMessage<pb::ReEncryptRequest> for ReEncryptRequest {
    fn from_message(m: pb::ReEncryptRequest) -> Result<Self, KmsError> {
        Ok(ReEncryptRequest {
            ciphertext_blob: m.ciphertext_blob,
            source_encryption_context: m.source_encryption_context,
            source_key_id: opt(m.source_key_id),
            destination_key_id: m.destination_key_id,
            destination_encryption_context: m.destination_encryption_context,
            source_encryption_algorithm: algorithm(
                "sourceEncryptionAlgorithm",
                &m.source_encryption_algorithm,
            )?,
            destination_encryption_algorithm: algorithm(
                "destinationEncryptionAlgorithm",
                &m.destination_encryption_algorithm,
            )?,
            grant_tokens: m.grant_tokens,
            dry_run: m.dry_run,
        })
    }
}

/// The members both GenerateDataKey messages carry.
macro_rules! data_key_request {
    ($m:expr) => {{
        let m = $m;
        DataKeyRequest {
            key_id: m.key_id,
            encryption_context: m.encryption_context,
            number_of_bytes: m.number_of_bytes,
            key_spec: algorithm("keySpec", &m.key_spec)?,
            grant_tokens: m.grant_tokens,
            dry_run: m.dry_run,
        }
    }};
}

impl FromMessage<pb::GenerateDataKeyRequest> for GenerateDataKeyRequest {
    fn from_message(m: pb::GenerateDataKeyRequest) -> Result<Self, KmsError> {
        Ok(GenerateDataKeyRequest(data_key_request!(m)))
    }
}

impl FromMessage<pb::GenerateDataKeyWithoutPlaintextRequest>
    for GenerateDataKeyWithoutPlaintextRequest
{
    fn from_message(m: pb::GenerateDataKeyWithoutPlaintextRequest) -> Result<Self, KmsError> {
        Ok(GenerateDataKeyWithoutPlaintextRequest(data_key_request!(m)))
    }
}

impl FromMessage<pb::GenerateRandomRequest> for GenerateRandomRequest {
    fn from_message(m: pb::GenerateRandomRequest) -> Result<Self, KmsError> {
        Ok(GenerateRandomRequest {
            number_of_bytes: m.number_of_bytes,
            custom_key_store_id: opt(m.custom_key_store_id),
        })
    }
}

impl From<EncryptResponse> for pb::EncryptResponse {
    fn from(out: EncryptResponse) -> Self {
        pb::EncryptResponse {
            ciphertext_blob: out.ciphertext_blob,
            key_id: out.key_id,
            encryption_algorithm: out.encryption_algorithm.as_str().into(),
        }
    }
}

impl From<DecryptResponse> for pb::DecryptResponse {
    fn from(out: DecryptResponse) -> Self {
        pb::DecryptResponse {
            key_id: out.key_id,
            plaintext: expose(out.plaintext),
            encryption_algorithm: out.encryption_algorithm.as_str().into(),
            key_material_id: out.key_material_id,
        }
    }
}

impl From<ReEncryptResponse> for pb::ReEncryptResponse {
    fn from(out: ReEncryptResponse) -> Self {
        pb::ReEncryptResponse {
            ciphertext_blob: out.ciphertext_blob,
            source_key_id: out.source_key_id,
            key_id: out.key_id,
            source_encryption_algorithm: out.source_encryption_algorithm.as_str().into(),
            destination_encryption_algorithm: out.destination_encryption_algorithm.as_str().into(),
            source_key_material_id: out.source_key_material_id,
            destination_key_material_id: out.destination_key_material_id,
        }
    }
}

impl From<GenerateDataKeyResponse> for pb::GenerateDataKeyResponse {
    fn from(out: GenerateDataKeyResponse) -> Self {
        pb::GenerateDataKeyResponse {
            ciphertext_blob: out.ciphertext_blob,
            plaintext: expose(out.plaintext),
            key_id: out.key_id,
            key_material_id: out.key_material_id,
        }
    }
}

impl From<GenerateDataKeyWithoutPlaintextResponse> for pb::GenerateDataKeyWithoutPlaintextResponse {
    fn from(out: GenerateDataKeyWithoutPlaintextResponse) -> Self {
        pb::GenerateDataKeyWithoutPlaintextResponse {
            ciphertext_blob: out.ciphertext_blob,
            key_id: out.key_id,
            key_material_id: out.key_material_id,
        }
    }
}

impl From<GenerateRandomResponse> for pb::GenerateRandomResponse {
    fn from(out: GenerateRandomResponse) -> Self {
        pb::GenerateRandomResponse {
            plaintext: expose(out.plaintext),
        }
    }
}
